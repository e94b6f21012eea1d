//! The device side of a virtio device: the [`VirtioDevice`] trait the
//! transport drives, what the transport hands over on activation, and the
//! plumbing shared by the devices of this crate to run on an
//! [`event_manager`] loop.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use event_manager::{EventOps, Events};
use log::{debug, error, warn};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::interrupt::{Interrupt, InterruptType};
use crate::GuestMemoryMmap;

/// Virtio device type identifiers (virtio 1.x, section 5).
pub mod device_type {
    /// Network card.
    pub const NET: u32 = 1;
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Console.
    pub const CONSOLE: u32 = 3;
    /// Entropy source.
    pub const RNG: u32 = 4;
    /// Socket device (vsock).
    pub const VSOCK: u32 = 19;
    /// Shared directory (virtio-fs).
    pub const FS: u32 = 26;
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The device is already active.
    #[error("device is already active")]
    AlreadyActive,
    /// The transport handed over a different number of queues than the device has.
    #[error("expected {expected} queues, got {got}")]
    QueueCount {
        /// Queues the device has.
        expected: usize,
        /// Queues handed over.
        got: usize,
    },
    /// An event fd could not be created or signalled.
    #[error("event fd operation failed")]
    EventFd(#[source] std::io::Error),
    /// The backend refused to start.
    #[error("backend failed to start")]
    Backend(#[source] std::io::Error),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything a device needs to run, handed over by the transport when the
/// driver sets `DRIVER_OK`.
pub struct Activation {
    /// Guest memory.
    pub mem: Arc<GuestMemoryMmap>,
    /// The device's interrupt (status bits are kept by the transport).
    pub interrupt: Arc<dyn Interrupt>,
    /// The configured, validated queues, one per entry of
    /// [`VirtioDevice::queue_max_sizes`].
    pub queues: Vec<Queue>,
    /// One notification event fd per queue, signalled when the driver
    /// writes the queue index to `QueueNotify` (the VMM registers the
    /// transport's originals as ioeventfds).
    pub queue_events: Vec<EventFd>,
    /// The features the driver acknowledged.
    pub acked_features: u64,
}

impl std::fmt::Debug for Activation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Activation")
            .field("queues", &self.queues)
            .field("queue_events", &self.queue_events.len())
            .field("acked_features", &self.acked_features)
            .finish_non_exhaustive()
    }
}

/// A virtio device as seen by its transport.
///
/// Implementations must never panic on guest-controlled input: the
/// configuration space, the queues and everything they point to come from
/// the guest.
pub trait VirtioDevice: Send {
    /// The virtio device type (see [`device_type`]).
    fn device_type(&self) -> u32;

    /// The feature bits the device offers. The transport always adds
    /// `VIRTIO_F_VERSION_1`.
    fn features(&self) -> u64;

    /// The maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// Read from the device configuration space at `offset`. Bytes past the
    /// end of the configuration space read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Write to the device configuration space. The default ignores writes.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        warn!(
            "device type {}: ignoring config write of {} bytes at {offset:#x}",
            self.device_type(),
            data.len()
        );
    }

    /// Start processing: take the queues, their notification event fds and
    /// the interrupt.
    fn activate(&mut self, activation: Activation) -> Result<()>;

    /// Stop processing and drop the queues (driver reset). The device must
    /// be able to be activated again afterwards.
    fn reset(&mut self);

    /// Whether the device is active.
    fn is_active(&self) -> bool;
}

/// Copy `config[offset..]` into `data`, zero-filling what lies past the end.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

/// Event-data tag of a device's control event fd.
pub(crate) const CONTROL_TOKEN: u32 = u32::MAX;

/// The active half of a device: what it was handed by the transport.
pub(crate) struct Active {
    pub mem: Arc<GuestMemoryMmap>,
    pub interrupt: Arc<dyn Interrupt>,
    pub queues: Vec<Queue>,
    pub queue_events: Vec<EventFd>,
}

impl Active {
    /// Signal a used-ring interrupt if the queue wants one.
    pub fn signal_used(&mut self, index: usize) {
        let Some(queue) = self.queues.get_mut(index) else {
            return;
        };
        match queue.needs_notification(self.mem.as_ref()) {
            Ok(true) => {
                if let Err(e) = self.interrupt.trigger(InterruptType::UsedRing) {
                    error!("failed to signal used ring: {e}");
                }
            }
            Ok(false) => {}
            Err(e) => error!("queue {index}: cannot read notification state: {e}"),
        }
    }
}

/// What a device's event loop must do after a control event.
pub(crate) enum LinkChange {
    /// Nothing changed.
    None,
    /// The device was activated: register backend fds.
    Activated,
    /// The device was reset: unregister backend fds.
    Reset,
}

/// Connects a device's activation state with the event loop it runs on.
///
/// Activation and reset happen on a vCPU thread (through the transport),
/// while the event fds must be (un)registered from the event-loop thread.
/// The link keeps the handed-over state, signals a control event fd, and on
/// that event registers the queue event fds (or unregisters those of the
/// previous activation, which it keeps open until then so that no stale fd
/// number stays in the epoll set).
pub(crate) struct EventLoopLink {
    control: EventFd,
    active: Option<Active>,
    registered: Vec<RawFd>,
    retired: Vec<Active>,
    activated_since_sync: bool,
}

impl EventLoopLink {
    pub fn new() -> Result<Self> {
        Ok(Self {
            control: EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?,
            active: None,
            registered: Vec::new(),
            retired: Vec::new(),
            activated_since_sync: false,
        })
    }

    pub fn activate(&mut self, activation: Activation, num_queues: usize) -> Result<()> {
        if self.active.is_some() {
            return Err(Error::AlreadyActive);
        }
        if activation.queues.len() != num_queues || activation.queue_events.len() != num_queues {
            return Err(Error::QueueCount {
                expected: num_queues,
                got: activation.queues.len().min(activation.queue_events.len()),
            });
        }
        let mut queues = activation.queues;
        let event_idx = activation.acked_features
            & (1u64 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX)
            != 0;
        for q in &mut queues {
            q.set_event_idx(event_idx);
        }
        self.active = Some(Active {
            mem: activation.mem,
            interrupt: activation.interrupt,
            queues,
            queue_events: activation.queue_events,
        });
        self.activated_since_sync = true;
        self.control.write(1).map_err(Error::EventFd)
    }

    pub fn reset(&mut self) {
        if let Some(active) = self.active.take() {
            self.retired.push(active);
        }
        self.activated_since_sync = false;
        if let Err(e) = self.control.write(1) {
            error!("cannot signal device reset to the event loop: {e}");
        }
    }

    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    pub fn active(&mut self) -> Option<&mut Active> {
        self.active.as_mut()
    }

    /// Register the control event fd (from `MutEventSubscriber::init`).
    pub fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(
            &self.control,
            CONTROL_TOKEN,
            EventSet::IN,
        )) {
            error!("cannot register device control event: {e:?}");
        }
    }

    /// Handle the control event: bring the epoll registrations in line with
    /// the activation state.
    pub fn sync(&mut self, ops: &mut EventOps) -> LinkChange {
        let _ = self.control.read();
        let had_retired = !self.retired.is_empty();
        if had_retired || self.activated_since_sync {
            for fd in self.registered.drain(..) {
                if let Err(e) = ops.remove(Events::empty_raw(fd)) {
                    warn!("cannot unregister queue event fd {fd}: {e:?}");
                }
            }
        }
        self.retired.clear();
        let mut change = if had_retired {
            LinkChange::Reset
        } else {
            LinkChange::None
        };
        if self.activated_since_sync {
            self.activated_since_sync = false;
            if let Some(active) = &self.active {
                for (i, evt) in active.queue_events.iter().enumerate() {
                    let token = u32::try_from(i).unwrap_or(CONTROL_TOKEN - 1);
                    match ops.add(Events::with_data(evt, token, EventSet::IN)) {
                        Ok(()) => self.registered.push(evt.as_raw_fd()),
                        Err(e) => error!("cannot register queue {i} event fd: {e:?}"),
                    }
                }
                // A reset followed by a new activation before the loop ran:
                // the backend is unregistered and registered again.
                change = LinkChange::Activated;
            }
        }
        change
    }

    /// Handles an event of a single-queue device: the control event (sync
    /// the registrations) or queue 0's notification. Returns true when the
    /// device should process its queue now; `name` labels unexpected
    /// events in the log.
    pub fn single_queue_event(&mut self, data: u32, ops: &mut EventOps, name: &str) -> bool {
        match data {
            // Requests queued before the loop saw the activation count too.
            CONTROL_TOKEN => matches!(self.sync(ops), LinkChange::Activated),
            0 => self.ack_queue_event(0),
            other => {
                debug!("{name}: unexpected event {other}");
                false
            }
        }
    }

    /// Consume a queue notification. Returns false when the queue index is
    /// not one of the active device's queues.
    pub fn ack_queue_event(&mut self, index: u32) -> bool {
        let Some(active) = &self.active else {
            return false;
        };
        match active.queue_events.get(index as usize) {
            Some(evt) => {
                let _ = evt.read();
                true
            }
            None => false,
        }
    }
}

/// A `VIRTIO_F_VERSION_1` feature mask.
pub(crate) const VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
/// A `VIRTIO_RING_F_EVENT_IDX` feature mask.
pub(crate) const EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_bytes_zero_fill_and_offsets() {
        let config = [1u8, 2, 3, 4];
        let mut out = [0xffu8; 6];
        read_config_bytes(&config, 2, &mut out);
        assert_eq!(out, [3, 4, 0, 0, 0, 0]);
        read_config_bytes(&config, 100, &mut out);
        assert_eq!(out, [0; 6]);
        read_config_bytes(&config, u64::MAX, &mut out);
        assert_eq!(out, [0; 6]);
    }
}
