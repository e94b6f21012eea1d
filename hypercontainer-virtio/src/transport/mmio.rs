//! The virtio-mmio transport, version 2 ("modern") only.
//!
//! [`MmioTransport`] implements the 4 KiB register window of a virtio-mmio
//! device: the VMM routes guest MMIO reads and writes at `offset` within the
//! window to [`MmioTransport::read`] and [`MmioTransport::write`].
//!
//! Queue notifications: the VMM registers each event fd of
//! [`MmioTransport::queue_notify_events`] as an ioeventfd on
//! `base + QUEUE_NOTIFY_OFFSET` (4 bytes) with the queue index as datamatch.
//! Writes that still reach [`MmioTransport::write`] signal the same event fd.
//!
//! Interrupts: the VMM passes an [`Interrupt`] (an irqfd) to
//! [`MmioTransport::new`]; the transport keeps the `InterruptStatus` bits and
//! hands the device a [`TransportInterrupt`] on activation.
//!
//! The device status follows [`STATUS_TRANSITIONS`], a table of the valid
//! transitions; any other status write is logged and ignored.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use log::{debug, error, warn};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::device::{Activation, VirtioDevice, VERSION_1};
use crate::interrupt::{Interrupt, InterruptType, TransportInterrupt};
use crate::GuestMemoryMmap;

/// Size of the register window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// Offset of the `QueueNotify` register (the ioeventfd address).
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x50;
/// Offset of the device configuration space.
pub const CONFIG_SPACE_OFFSET: u64 = 0x100;
/// Value of the `MagicValue` register ("virt").
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// The only transport version implemented.
pub const MMIO_VERSION: u32 = 2;
/// Vendor id reported to the driver.
pub const VENDOR_ID: u32 = 0x4859_5052; // "HYPR"

/// Register offsets (virtio 1.x, 4.2.2).
mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_AVAIL_LOW: u64 = 0x090;
    pub const QUEUE_AVAIL_HIGH: u64 = 0x094;
    pub const QUEUE_USED_LOW: u64 = 0x0a0;
    pub const QUEUE_USED_HIGH: u64 = 0x0a4;
    pub const SHM_SEL: u64 = 0x0ac;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
}

/// Device status bits (virtio 1.x, 2.1).
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u8 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u8 = 2;
    /// The driver is set up and ready to drive the device.
    pub const DRIVER_OK: u8 = 4;
    /// The driver acknowledged all the features it understands.
    pub const FEATURES_OK: u8 = 8;
    /// The device experienced an error it cannot recover from.
    pub const DEVICE_NEEDS_RESET: u8 = 64;
    /// The driver gave up on the device.
    pub const FAILED: u8 = 128;
}

use status::*;

const S_ACK: u8 = ACKNOWLEDGE;
const S_DRV: u8 = ACKNOWLEDGE | DRIVER;
const S_FEAT: u8 = ACKNOWLEDGE | DRIVER | FEATURES_OK;
const S_OK: u8 = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK;

/// What the transport does when a transition is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusAction {
    /// Only record the new status.
    None,
    /// Check the negotiated features before accepting `FEATURES_OK`.
    CheckFeatures,
    /// Validate the queues and activate the device.
    Activate,
    /// The driver gave up: record it.
    Fail,
}

/// The valid device-status transitions, `(from, to, action)`. Writing 0
/// (reset) is valid from every state and handled separately; writing the
/// current value again is a no-op. Every other write is ignored.
pub const STATUS_TRANSITIONS: &[(u8, u8, StatusAction)] = &[
    (0, S_ACK, StatusAction::None),
    (0, FAILED, StatusAction::Fail),
    (S_ACK, S_DRV, StatusAction::None),
    (S_DRV, S_FEAT, StatusAction::CheckFeatures),
    (S_FEAT, S_OK, StatusAction::Activate),
    (S_ACK, S_ACK | FAILED, StatusAction::Fail),
    (S_DRV, S_DRV | FAILED, StatusAction::Fail),
    (S_FEAT, S_FEAT | FAILED, StatusAction::Fail),
    (S_OK, S_OK | FAILED, StatusAction::Fail),
];

/// Look a transition up in [`STATUS_TRANSITIONS`].
pub fn status_transition(from: u8, to: u8) -> Option<StatusAction> {
    STATUS_TRANSITIONS
        .iter()
        .find(|(f, t, _)| *f == from && *t == to)
        .map(|(_, _, a)| *a)
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The device has no queues or too many.
    #[error("device declares {0} queues (1..=1024 supported)")]
    QueueCount(usize),
    /// A queue maximum size is not a power of two in 1..=32768.
    #[error("queue {index} maximum size {size} is invalid")]
    QueueMaxSize {
        /// Queue index.
        index: usize,
        /// The declared maximum size.
        size: u16,
    },
    /// An event fd could not be created.
    #[error("cannot create queue notification event fd")]
    EventFd(#[source] std::io::Error),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Driver-written configuration of one queue, validated when the driver sets
/// `QueueReady` and again on `DRIVER_OK`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct QueueConfig {
    max_size: u16,
    size: u16,
    ready: bool,
    desc: u64,
    avail: u64,
    used: u64,
}

impl QueueConfig {
    fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: max_size,
            ..Default::default()
        }
    }

    fn reset(&mut self) {
        *self = Self::new(self.max_size);
    }

    /// Build a `virtio_queue::Queue` from this configuration, checking the
    /// size, alignment and that the rings lie in guest memory.
    fn build(&self, mem: &GuestMemoryMmap) -> std::result::Result<Queue, String> {
        let mut q = Queue::new(self.max_size).map_err(|e| e.to_string())?;
        q.try_set_size(self.size)
            .map_err(|e| format!("size {}: {e}", self.size))?;
        q.try_set_desc_table_address(GuestAddress(self.desc))
            .map_err(|e| format!("descriptor table {:#x}: {e}", self.desc))?;
        q.try_set_avail_ring_address(GuestAddress(self.avail))
            .map_err(|e| format!("available ring {:#x}: {e}", self.avail))?;
        q.try_set_used_ring_address(GuestAddress(self.used))
            .map_err(|e| format!("used ring {:#x}: {e}", self.used))?;
        q.set_ready(true);
        if !q.is_valid(mem) {
            return Err("rings are not inside guest memory".to_string());
        }
        Ok(q)
    }
}

fn set_low(v: &mut u64, low: u32) {
    *v = (*v & !0xffff_ffff) | u64::from(low);
}

fn set_high(v: &mut u64, high: u32) {
    *v = (*v & 0xffff_ffff) | (u64::from(high) << 32);
}

/// A virtio-mmio (version 2) transport in front of one device.
pub struct MmioTransport {
    mem: Arc<GuestMemoryMmap>,
    device: Arc<Mutex<dyn VirtioDevice>>,
    device_type: u32,
    device_features: u64,
    driver_features: u64,
    device_features_sel: u32,
    driver_features_sel: u32,
    queue_sel: u32,
    queues: Vec<QueueConfig>,
    queue_events: Vec<EventFd>,
    status: u8,
    interrupt_status: Arc<AtomicU32>,
    config_generation: Arc<AtomicU32>,
    interrupt: TransportInterrupt,
    ignored_writes: u64,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device_type)
            .field("status", &self.status)
            .field("driver_features", &self.driver_features)
            .field("queues", &self.queues)
            .finish_non_exhaustive()
    }
}

impl MmioTransport {
    /// Put `device` behind a virtio-mmio register window. `interrupt` is the
    /// device's interrupt line (an irqfd in the VMM).
    pub fn new(
        mem: Arc<GuestMemoryMmap>,
        device: Arc<Mutex<dyn VirtioDevice>>,
        interrupt: Arc<dyn Interrupt>,
    ) -> Result<Self> {
        let (device_type, device_features, max_sizes) = {
            let d = lock(&device);
            (d.device_type(), d.features(), d.queue_max_sizes().to_vec())
        };
        if max_sizes.is_empty() || max_sizes.len() > 1024 {
            return Err(Error::QueueCount(max_sizes.len()));
        }
        for (index, &size) in max_sizes.iter().enumerate() {
            if size == 0 || size > 32768 || !size.is_power_of_two() {
                return Err(Error::QueueMaxSize { index, size });
            }
        }
        let queue_events = max_sizes
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd))
            .collect::<Result<Vec<_>>>()?;
        let interrupt_status = Arc::new(AtomicU32::new(0));
        let config_generation = Arc::new(AtomicU32::new(0));
        let interrupt = TransportInterrupt::new(
            interrupt_status.clone(),
            config_generation.clone(),
            interrupt,
        );
        Ok(Self {
            mem,
            device,
            device_type,
            device_features: device_features | VERSION_1,
            driver_features: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            queue_sel: 0,
            queues: max_sizes.into_iter().map(QueueConfig::new).collect(),
            queue_events,
            status: 0,
            interrupt_status,
            config_generation,
            interrupt,
            ignored_writes: 0,
        })
    }

    /// The queue notification event fds, by queue index: register each as an
    /// ioeventfd at `QUEUE_NOTIFY_OFFSET` with the index as datamatch.
    pub fn queue_notify_events(&self) -> impl Iterator<Item = (u16, &EventFd)> {
        self.queue_events
            .iter()
            .enumerate()
            .map(|(i, e)| (i as u16, e))
    }

    /// The device behind this transport.
    pub fn device(&self) -> &Arc<Mutex<dyn VirtioDevice>> {
        &self.device
    }

    /// The virtio device type.
    pub fn device_type(&self) -> u32 {
        self.device_type
    }

    /// The current device status byte.
    pub fn status(&self) -> u8 {
        self.status
    }

    /// The features acknowledged by the driver.
    pub fn acked_features(&self) -> u64 {
        self.driver_features
    }

    /// The current `InterruptStatus` bits.
    pub fn interrupt_status(&self) -> u32 {
        self.interrupt_status.load(Ordering::Acquire)
    }

    /// How many driver writes were ignored as invalid (for diagnostics).
    pub fn ignored_writes(&self) -> u64 {
        self.ignored_writes
    }

    /// Whether the device was activated (`DRIVER_OK` accepted).
    pub fn is_activated(&self) -> bool {
        self.status & DRIVER_OK != 0 && self.status & DEVICE_NEEDS_RESET == 0
    }

    fn selected_queue(&self) -> Option<&QueueConfig> {
        self.queues.get(self.queue_sel as usize)
    }

    fn ignore(&mut self, what: &str) {
        self.ignored_writes += 1;
        warn!("virtio-mmio (device type {}): {what}", self.device_type);
    }

    /// Handle a guest read of `data.len()` bytes at `offset` in the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            let cfg_offset = offset - CONFIG_SPACE_OFFSET;
            if offset.saturating_add(data.len() as u64) > MMIO_WINDOW_SIZE {
                data.fill(0);
                return;
            }
            lock(&self.device).read_config(cfg_offset, data);
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            debug!("virtio-mmio: unaligned register read at {offset:#x}");
            data.fill(0);
            return;
        }
        let value: u32 = match offset {
            reg::MAGIC => MAGIC_VALUE,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device_type,
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device_features as u32,
                1 => (self.device_features >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size)),
            reg::QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready)),
            reg::INTERRUPT_STATUS => self.interrupt_status.load(Ordering::Acquire),
            reg::STATUS => u32::from(self.status),
            reg::CONFIG_GENERATION => self.config_generation.load(Ordering::Acquire),
            // No shared memory regions: SHMLen reads as all ones.
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH => u32::MAX,
            reg::SHM_BASE_LOW | reg::SHM_BASE_HIGH => u32::MAX,
            _ => {
                debug!("virtio-mmio: read of write-only or unknown register {offset:#x}");
                0
            }
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// Handle a guest write of `data` at `offset` in the window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            if offset.saturating_add(data.len() as u64) > MMIO_WINDOW_SIZE {
                self.ignore(&format!("config write past the window at {offset:#x}"));
                return;
            }
            if self.status & DRIVER == 0 || self.status & FAILED != 0 {
                self.ignore("config write before DRIVER or after FAILED");
                return;
            }
            lock(&self.device).write_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            self.ignore(&format!(
                "register write of {} bytes at {offset:#x}",
                data.len()
            ));
            return;
        };
        if offset % 4 != 0 {
            self.ignore(&format!("unaligned register write at {offset:#x}"));
            return;
        }
        let value = u32::from_le_bytes(bytes);
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::DRIVER_FEATURES => self.write_driver_features(value),
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NUM
            | reg::QUEUE_READY
            | reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_AVAIL_LOW
            | reg::QUEUE_AVAIL_HIGH
            | reg::QUEUE_USED_LOW
            | reg::QUEUE_USED_HIGH => self.write_queue_register(offset, value),
            reg::QUEUE_NOTIFY => self.notify(value),
            reg::INTERRUPT_ACK => {
                self.interrupt_status.fetch_and(!value, Ordering::AcqRel);
            }
            reg::STATUS => self.write_status(value),
            reg::SHM_SEL => {}
            _ => self.ignore(&format!(
                "write to read-only or unknown register {offset:#x}"
            )),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status != S_DRV {
            self.ignore(&format!(
                "driver features written in status {:#x}",
                self.status
            ));
            return;
        }
        let (shift, offered) = match self.driver_features_sel {
            0 => (0, self.device_features as u32),
            1 => (32, (self.device_features >> 32) as u32),
            sel => {
                self.ignore(&format!("driver features page {sel} does not exist"));
                return;
            }
        };
        if value & !offered != 0 {
            warn!(
                "virtio-mmio (device type {}): driver acked unoffered features {:#x} (page {}), dropped",
                self.device_type,
                value & !offered,
                self.driver_features_sel
            );
        }
        let mask = 0xffff_ffffu64 << shift;
        self.driver_features =
            (self.driver_features & !mask) | (u64::from(value & offered) << shift);
    }

    fn write_queue_register(&mut self, offset: u64, value: u32) {
        if self.status & FEATURES_OK == 0 || self.status & (DRIVER_OK | FAILED) != 0 {
            self.ignore(&format!(
                "queue register {offset:#x} written in status {:#x}",
                self.status
            ));
            return;
        }
        let sel = self.queue_sel;
        let mem = self.mem.clone();
        let Some(q) = self.queues.get_mut(sel as usize) else {
            self.ignore(&format!("queue {sel} selected but does not exist"));
            return;
        };
        if offset == reg::QUEUE_READY {
            match value {
                0 => q.ready = false,
                1 => match q.build(&mem) {
                    Ok(_) => q.ready = true,
                    Err(e) => {
                        self.ignore(&format!("queue {sel} not made ready: {e}"));
                    }
                },
                v => self.ignore(&format!("queue {sel}: QueueReady value {v}")),
            }
            return;
        }
        if q.ready {
            self.ignore(&format!(
                "queue {sel} register {offset:#x} written while ready"
            ));
            return;
        }
        match offset {
            reg::QUEUE_NUM => match u16::try_from(value) {
                Ok(v) => q.size = v,
                Err(_) => self.ignore(&format!("queue {sel}: size {value}")),
            },
            reg::QUEUE_DESC_LOW => set_low(&mut q.desc, value),
            reg::QUEUE_DESC_HIGH => set_high(&mut q.desc, value),
            reg::QUEUE_AVAIL_LOW => set_low(&mut q.avail, value),
            reg::QUEUE_AVAIL_HIGH => set_high(&mut q.avail, value),
            reg::QUEUE_USED_LOW => set_low(&mut q.used, value),
            reg::QUEUE_USED_HIGH => set_high(&mut q.used, value),
            _ => {}
        }
    }

    fn notify(&mut self, value: u32) {
        if !self.is_activated() {
            self.ignore("queue notify before DRIVER_OK");
            return;
        }
        match self.queue_events.get(value as usize) {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    error!("cannot signal queue {value}: {e}");
                }
            }
            None => self.ignore(&format!("notify of queue {value} that does not exist")),
        }
    }

    fn write_status(&mut self, value: u32) {
        let Ok(new) = u8::try_from(value) else {
            self.ignore(&format!("status value {value:#x}"));
            return;
        };
        if new == 0 {
            self.reset();
            return;
        }
        // DEVICE_NEEDS_RESET is owned by the device; drivers echo it back.
        let current = self.status & !DEVICE_NEEDS_RESET;
        let requested = new & !DEVICE_NEEDS_RESET;
        if requested == current {
            return;
        }
        let Some(action) = status_transition(current, requested) else {
            self.ignore(&format!(
                "invalid status transition {current:#x} -> {requested:#x}"
            ));
            return;
        };
        match action {
            StatusAction::None | StatusAction::Fail => {}
            StatusAction::CheckFeatures => {
                if self.driver_features & VERSION_1 == 0 {
                    // Not setting FEATURES_OK tells the driver we refuse.
                    self.ignore("FEATURES_OK without VIRTIO_F_VERSION_1");
                    return;
                }
            }
            StatusAction::Activate => {
                if !self.activate() {
                    self.status |= DEVICE_NEEDS_RESET;
                    if let Err(e) = self.interrupt.trigger(InterruptType::ConfigChange) {
                        error!("cannot signal DEVICE_NEEDS_RESET: {e}");
                    }
                    return;
                }
            }
        }
        self.status = requested | (self.status & DEVICE_NEEDS_RESET);
    }

    /// Validate every queue and hand them to the device. Returns false if the
    /// device was not activated.
    fn activate(&mut self) -> bool {
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, cfg) in self.queues.iter().enumerate() {
            if !cfg.ready {
                warn!(
                    "virtio-mmio (device type {}): DRIVER_OK with queue {i} not ready",
                    self.device_type
                );
                return false;
            }
            match cfg.build(&self.mem) {
                Ok(q) => queues.push(q),
                Err(e) => {
                    warn!("virtio-mmio: queue {i} invalid at DRIVER_OK: {e}");
                    return false;
                }
            }
        }
        let mut queue_events = Vec::with_capacity(self.queue_events.len());
        for evt in &self.queue_events {
            match evt.try_clone() {
                Ok(e) => queue_events.push(e),
                Err(e) => {
                    error!("cannot clone queue event fd: {e}");
                    return false;
                }
            }
        }
        let activation = Activation {
            mem: self.mem.clone(),
            interrupt: Arc::new(self.interrupt.clone()),
            queues,
            queue_events,
            acked_features: self.driver_features,
        };
        match lock(&self.device).activate(activation) {
            Ok(()) => true,
            Err(e) => {
                error!(
                    "virtio-mmio: device type {} failed to activate: {e}",
                    self.device_type
                );
                false
            }
        }
    }

    /// Device reset (driver wrote 0 to `Status`): queues back to their
    /// initial state, features and interrupt status cleared, device told.
    pub fn reset(&mut self) {
        if self.status != 0 {
            lock(&self.device).reset();
        }
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        for q in &mut self.queues {
            q.reset();
        }
        for evt in &self.queue_events {
            let _ = evt.read();
        }
        self.interrupt_status.store(0, Ordering::Release);
    }
}

/// Lock a device, recovering from a poisoned mutex (a panic elsewhere must
/// not take the transport down with it).
fn lock<'a>(
    device: &'a Mutex<dyn VirtioDevice + 'static>,
) -> std::sync::MutexGuard<'a, dyn VirtioDevice + 'static> {
    device.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{self, read_config_bytes};
    use crate::test_utils::{guest_memory, MockInterrupt};

    /// A device that records what the transport does to it.
    #[derive(Default)]
    struct Recorder {
        activations: Vec<(usize, u64)>,
        resets: usize,
        active: Option<Activation>,
        config: Vec<u8>,
        fail_activation: bool,
    }

    impl VirtioDevice for Recorder {
        fn device_type(&self) -> u32 {
            42
        }
        fn features(&self) -> u64 {
            (1 << 3) | (1 << 40)
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            read_config_bytes(&self.config, offset, data);
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            let end = offset as usize + data.len();
            if end <= self.config.len() {
                self.config[offset as usize..end].copy_from_slice(data);
            }
        }
        fn activate(&mut self, a: Activation) -> device::Result<()> {
            if self.fail_activation {
                return Err(device::Error::AlreadyActive);
            }
            self.activations.push((a.queues.len(), a.acked_features));
            self.active = Some(a);
            Ok(())
        }
        fn reset(&mut self) {
            self.resets += 1;
            self.active = None;
        }
        fn is_active(&self) -> bool {
            self.active.is_some()
        }
    }

    struct T {
        t: MmioTransport,
        dev: Arc<Mutex<Recorder>>,
        irq: Arc<MockInterrupt>,
    }

    fn transport() -> T {
        let mem = Arc::new(guest_memory(1 << 20));
        let dev = Arc::new(Mutex::new(Recorder {
            config: vec![1, 2, 3, 4, 5, 6, 7, 8],
            ..Default::default()
        }));
        let irq = Arc::new(MockInterrupt::new());
        let t = MmioTransport::new(mem, dev.clone(), irq.clone()).unwrap();
        T { t, dev, irq }
    }

    impl T {
        fn r(&mut self, off: u64) -> u32 {
            let mut b = [0u8; 4];
            self.t.read(off, &mut b);
            u32::from_le_bytes(b)
        }
        fn w(&mut self, off: u64, v: u32) {
            self.t.write(off, &v.to_le_bytes());
        }
        fn negotiate(&mut self, low: u32, high: u32) {
            self.w(reg::STATUS, u32::from(S_ACK));
            self.w(reg::STATUS, u32::from(S_DRV));
            self.w(reg::DRIVER_FEATURES_SEL, 0);
            self.w(reg::DRIVER_FEATURES, low);
            self.w(reg::DRIVER_FEATURES_SEL, 1);
            self.w(reg::DRIVER_FEATURES, high);
            self.w(reg::STATUS, u32::from(S_FEAT));
        }
        fn setup_queue(&mut self, sel: u32, size: u32, base: u64) {
            self.w(reg::QUEUE_SEL, sel);
            self.w(reg::QUEUE_NUM, size);
            self.w(reg::QUEUE_DESC_LOW, base as u32);
            self.w(reg::QUEUE_DESC_HIGH, (base >> 32) as u32);
            self.w(reg::QUEUE_AVAIL_LOW, base.wrapping_add(0x1000) as u32);
            self.w(
                reg::QUEUE_AVAIL_HIGH,
                (base.wrapping_add(0x1000) >> 32) as u32,
            );
            self.w(reg::QUEUE_USED_LOW, base.wrapping_add(0x2000) as u32);
            self.w(
                reg::QUEUE_USED_HIGH,
                (base.wrapping_add(0x2000) >> 32) as u32,
            );
            self.w(reg::QUEUE_READY, 1);
        }
        fn bring_up(&mut self) {
            self.negotiate(1 << 3, 1);
            self.setup_queue(0, 16, 0x10000);
            self.setup_queue(1, 8, 0x20000);
            self.w(reg::STATUS, u32::from(S_OK));
        }
    }

    #[test]
    fn identification_registers() {
        let mut t = transport();
        assert_eq!(t.r(reg::MAGIC), MAGIC_VALUE);
        assert_eq!(t.r(reg::VERSION), 2);
        assert_eq!(t.r(reg::DEVICE_ID), 42);
        assert_eq!(t.r(reg::VENDOR_ID), VENDOR_ID);
        assert_eq!(t.r(reg::DEVICE_FEATURES), 1 << 3);
        t.w(reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(t.r(reg::DEVICE_FEATURES), 1 | (1 << 8));
        t.w(reg::DEVICE_FEATURES_SEL, 7);
        assert_eq!(t.r(reg::DEVICE_FEATURES), 0);
    }

    #[test]
    fn full_bring_up_activates_with_queues_and_features() {
        let mut t = transport();
        t.bring_up();
        assert_eq!(t.r(reg::STATUS), u32::from(S_OK));
        assert!(t.t.is_activated());
        let dev = t.dev.lock().unwrap();
        assert_eq!(dev.activations, vec![(2, (1 << 3) | VERSION_1)]);
        let a = dev.active.as_ref().unwrap();
        assert_eq!(a.queues[0].size(), 16);
        assert_eq!(a.queues[1].size(), 8);
        assert_eq!(a.queues[1].desc_table(), 0x20000);
    }

    #[test]
    fn driver_cannot_ack_unoffered_features() {
        let mut t = transport();
        t.negotiate(0xffff_ffff, 0xffff_ffff);
        assert_eq!(t.t.acked_features(), (1 << 3) | (1 << 40) | VERSION_1);
    }

    #[test]
    fn features_ok_requires_version_1() {
        let mut t = transport();
        t.negotiate(1 << 3, 0);
        assert_eq!(t.r(reg::STATUS), u32::from(S_DRV));
        // Features cannot be written after FEATURES_OK.
        let mut t = transport();
        t.negotiate(0, 1);
        t.w(reg::DRIVER_FEATURES_SEL, 0);
        t.w(reg::DRIVER_FEATURES, 1 << 3);
        assert_eq!(t.t.acked_features(), VERSION_1);
    }

    #[test]
    fn every_table_transition_is_accepted_and_others_ignored() {
        let all = [0u8, S_ACK, S_DRV, S_FEAT, S_OK];
        for &from in &all {
            for to in 1..=255u8 {
                if to & DEVICE_NEEDS_RESET != 0 || to == from {
                    continue;
                }
                let mut t = transport();
                // Walk to `from` through valid steps.
                match from {
                    0 => {}
                    S_ACK => t.w(reg::STATUS, S_ACK.into()),
                    S_DRV => {
                        t.w(reg::STATUS, S_ACK.into());
                        t.w(reg::STATUS, S_DRV.into());
                        t.w(reg::DRIVER_FEATURES_SEL, 1);
                        t.w(reg::DRIVER_FEATURES, 1);
                    }
                    S_FEAT => {
                        t.negotiate(0, 1);
                        t.setup_queue(0, 16, 0x10000);
                        t.setup_queue(1, 8, 0x20000);
                    }
                    _ => t.bring_up(),
                }
                assert_eq!(t.t.status(), from);
                t.w(reg::STATUS, to.into());
                let expected = if status_transition(from, to).is_some() {
                    to
                } else {
                    from
                };
                assert_eq!(t.t.status(), expected, "{from:#x} -> {to:#x}");
            }
        }
    }

    #[test]
    fn driver_ok_skipping_steps_is_ignored() {
        let mut t = transport();
        t.w(reg::STATUS, u32::from(S_OK));
        assert_eq!(t.t.status(), 0);
        assert!(t.dev.lock().unwrap().activations.is_empty());
        t.w(reg::STATUS, 0x1_0000);
        assert_eq!(t.t.status(), 0);
        assert!(t.t.ignored_writes() >= 2);
    }

    #[test]
    fn queue_select_out_of_range_is_ignored() {
        let mut t = transport();
        t.negotiate(0, 1);
        t.w(reg::QUEUE_SEL, 2);
        assert_eq!(t.r(reg::QUEUE_NUM_MAX), 0);
        t.w(reg::QUEUE_NUM, 4);
        t.w(reg::QUEUE_READY, 1);
        assert_eq!(t.r(reg::QUEUE_READY), 0);
        t.w(reg::QUEUE_SEL, u32::MAX);
        t.w(reg::QUEUE_READY, 1);
        assert_eq!(t.r(reg::QUEUE_READY), 0);
        t.w(reg::QUEUE_SEL, 1);
        assert_eq!(t.r(reg::QUEUE_NUM_MAX), 8);
    }

    #[test]
    fn invalid_queue_setups_are_refused() {
        let mut t = transport();
        t.negotiate(0, 1);
        // Not a power of two.
        t.setup_queue(0, 12, 0x10000);
        assert_eq!(t.r(reg::QUEUE_READY), 0);
        // Larger than the maximum.
        t.setup_queue(0, 32, 0x10000);
        assert_eq!(t.r(reg::QUEUE_READY), 0);
        // Zero.
        t.setup_queue(0, 0, 0x10000);
        assert_eq!(t.r(reg::QUEUE_READY), 0);
        // Misaligned descriptor table.
        t.setup_queue(0, 16, 0x10008);
        assert_eq!(t.r(reg::QUEUE_READY), 0);
        // Rings outside guest memory, and overflowing the address space.
        t.setup_queue(0, 16, 1 << 20);
        assert_eq!(t.r(reg::QUEUE_READY), 0);
        t.setup_queue(0, 16, u64::MAX - 0xfff);
        assert_eq!(t.r(reg::QUEUE_READY), 0);
        // Fine.
        t.setup_queue(0, 16, 0x10000);
        assert_eq!(t.r(reg::QUEUE_READY), 1);
        // Registers of a ready queue cannot change.
        t.w(reg::QUEUE_NUM, 2);
        t.w(reg::QUEUE_READY, 0);
        t.w(reg::QUEUE_READY, 1);
        assert_eq!(t.r(reg::QUEUE_READY), 1);
    }

    #[test]
    fn driver_ok_with_missing_queue_sets_needs_reset() {
        let mut t = transport();
        t.negotiate(0, 1);
        t.setup_queue(0, 16, 0x10000);
        t.w(reg::STATUS, u32::from(S_OK));
        assert_eq!(t.t.status(), S_FEAT | DEVICE_NEEDS_RESET);
        assert_eq!(t.irq.config_change_count(), 1);
        assert_eq!(
            t.r(reg::INTERRUPT_STATUS),
            InterruptType::ConfigChange.bit()
        );
        assert_eq!(t.r(reg::CONFIG_GENERATION), 1);
        assert!(t.dev.lock().unwrap().activations.is_empty());
        // The driver may give up.
        t.w(reg::STATUS, u32::from(S_FEAT | FAILED | DEVICE_NEEDS_RESET));
        assert_eq!(t.t.status(), S_FEAT | FAILED | DEVICE_NEEDS_RESET);
    }

    #[test]
    fn failed_device_activation_sets_needs_reset() {
        let mut t = transport();
        t.dev.lock().unwrap().fail_activation = true;
        t.bring_up();
        assert_eq!(t.t.status() & DEVICE_NEEDS_RESET, DEVICE_NEEDS_RESET);
        assert!(!t.t.is_activated());
    }

    #[test]
    fn reset_restores_queues_and_tells_the_device() {
        let mut t = transport();
        t.bring_up();
        t.w(reg::STATUS, 0);
        assert_eq!(t.t.status(), 0);
        assert_eq!(t.t.acked_features(), 0);
        assert_eq!(t.dev.lock().unwrap().resets, 1);
        assert!(t.dev.lock().unwrap().active.is_none());
        t.w(reg::QUEUE_SEL, 0);
        assert_eq!(t.r(reg::QUEUE_READY), 0);
        // A second bring-up works.
        t.bring_up();
        assert_eq!(t.dev.lock().unwrap().activations.len(), 2);
    }

    #[test]
    fn notify_signals_the_queue_event_and_interrupts_are_acked() {
        let mut t = transport();
        // Before DRIVER_OK, notifications are ignored.
        t.w(reg::QUEUE_NOTIFY, 0);
        t.bring_up();
        t.w(reg::QUEUE_NOTIFY, 1);
        t.w(reg::QUEUE_NOTIFY, 9);
        let evts: Vec<_> = t.t.queue_notify_events().collect();
        assert_eq!(evts.len(), 2);
        assert!(evts[0].1.read().is_err()); // nothing pending (non-blocking)
        assert_eq!(evts[1].1.read().unwrap(), 1);
        // The device's clone of the event fd shares the counter.
        t.w(reg::QUEUE_NOTIFY, 0);
        {
            let dev = t.dev.lock().unwrap();
            let a = dev.active.as_ref().unwrap();
            assert_eq!(a.queue_events[0].read().unwrap(), 1);
            a.interrupt.trigger(InterruptType::UsedRing).unwrap();
        }
        assert_eq!(t.irq.used_ring_count(), 1);
        assert_eq!(t.r(reg::INTERRUPT_STATUS), 1);
        t.w(reg::INTERRUPT_ACK, 1);
        assert_eq!(t.r(reg::INTERRUPT_STATUS), 0);
    }

    #[test]
    fn config_space_and_odd_accesses() {
        let mut t = transport();
        let mut b = [0u8; 2];
        t.t.read(0x102, &mut b);
        assert_eq!(b, [3, 4]);
        // Config writes before DRIVER are ignored.
        t.t.write(0x100, &[9]);
        t.t.read(0x100, &mut b);
        assert_eq!(b, [1, 2]);
        t.negotiate(0, 1);
        t.t.write(0x100, &[9]);
        t.t.read(0x100, &mut b);
        assert_eq!(b, [9, 2]);
        // Past the window.
        let mut big = [0xffu8; 8];
        t.t.read(0xffc, &mut big);
        assert_eq!(big, [0; 8]);
        t.t.write(u64::MAX, &[1, 2]);
        // Wrong sizes and alignment on registers.
        let mut one = [0xffu8; 1];
        t.t.read(0, &mut one);
        assert_eq!(one, [0]);
        let mut four = [0xffu8; 4];
        t.t.read(2, &mut four);
        assert_eq!(four, [0; 4]);
        t.t.write(reg::STATUS, &[0, 0]);
        t.t.write(reg::STATUS + 1, &[0, 0, 0, 0]);
        assert_eq!(t.t.status(), S_FEAT);
        assert_eq!(t.r(0x0f0), 0);
    }
}
