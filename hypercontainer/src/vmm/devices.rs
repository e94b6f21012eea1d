//! The device manager: the virtio-mmio devices of a VM and the event loop
//! that runs them.
//!
//! [`VmBuilder`](super::VmBuilder) collects device configurations
//! ([`BlockConfig`], [`NetConfig`], vsock, rng, console) in the order they
//! are added; that order is the slot order, so a guest sees the same
//! `/dev/vdX` names for the same builder calls. At build time, once guest
//! memory exists, the manager:
//!
//! 1. builds each device from `hypercontainer-virtio` and puts it behind an
//!    [`MmioTransport`];
//! 2. hands the VMM one [`VirtioMmioDevice`] per slot: the transport as an
//!    MMIO bus device, an eventfd to register as the slot's irqfd, and the
//!    queue-notify eventfds to register as ioeventfds (the VMM also
//!    declares the slot on the kernel command line);
//! 3. subscribes every device to one [`EventManager`] and runs it on one
//!    thread per VM (`vm-devices`): queue notifications, backend fds and
//!    activation changes are all handled there.
//!
//! The event-loop thread stops when the VM is reaped or dropped (an exit
//! eventfd is part of the loop). A panic in a device handler is caught at
//! the thread boundary and ends that VM with [`Error::EventLoopPanic`]
//! (wrapped in [`super::Error::Devices`]); the process goes on.
//!
//! ```no_run
//! use std::io::Read;
//! use std::time::Duration;
//! use hypercontainer::vmm::{BlockConfig, VmBuilder};
//!
//! let mut vm = VmBuilder::new()
//!     .kernel("/path/to/vmlinux")
//!     .initramfs("/path/to/initramfs.cpio")
//!     // vda: a read-only layer the guest finds by its serial.
//!     .block(BlockConfig::new("/images/layer0.img").read_only(true).serial("layer0"))
//!     // vdb: a writable disk.
//!     .block(BlockConfig::new("/images/upper.img"))
//!     .vsock(3)
//!     .rng()
//!     .build()?;
//! // Connect to a guest service on vsock port 1024.
//! let mut stream = vm
//!     .vsock()
//!     .expect("configured above")
//!     .connect(1024, Duration::from_secs(5))?;
//! let mut greeting = String::new();
//! stream.read_to_string(&mut greeting)?;
//! vm.wait()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use hypercontainer_virtio::block::Block;
use hypercontainer_virtio::console::Console;
use hypercontainer_virtio::fs::{Fs, MultiShareConfig, ShareConfig, SharesHandle};
use hypercontainer_virtio::net::{Net, Tap};
use hypercontainer_virtio::rng::Rng;
use hypercontainer_virtio::transport::mmio::MmioTransport;
use hypercontainer_virtio::vsock::{Vsock, HOST_CID};
use hypercontainer_virtio::VirtioDevice;
use log::{debug, error};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::bus::BusDevice;
use super::{MmioSlot, VirtioMmioDevice};

pub use hypercontainer_virtio::console::ConsoleInput;
pub use hypercontainer_virtio::net::NetBackend;
pub use hypercontainer_virtio::vsock::{VsockHost, VsockListener};

/// Name of the event-loop thread.
pub const EVENT_LOOP_THREAD: &str = "vm-devices";

/// Errors of the device manager.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A block device could not be built.
    #[error("block device {index} ({path})")]
    Block {
        /// Position among the VM's virtio devices.
        index: usize,
        /// The image (or `<fd>` for an open file).
        path: String,
        /// Why.
        #[source]
        source: hypercontainer_virtio::block::Error,
    },
    /// The vsock device could not be built.
    #[error("vsock device")]
    Vsock(#[source] hypercontainer_virtio::vsock::Error),
    /// More than one vsock device was configured.
    #[error("a VM has at most one vsock device (one guest CID)")]
    DuplicateVsock,
    /// A virtio-fs share could not be set up (a bad setting, or its host
    /// directory cannot be opened).
    #[error("virtio-fs share {tag:?} (device {index})")]
    Fs {
        /// Position among the VM's virtio devices.
        index: usize,
        /// The share's tag.
        tag: String,
        /// Why.
        #[source]
        source: hypercontainer_virtio::fs::Error,
    },
    /// Two virtio-fs shares have the same tag (the guest mounts by tag).
    #[error("two virtio-fs shares are tagged {0:?}; tags must be unique")]
    DuplicateFsTag(String),
    /// The guest CID is reserved or out of range.
    #[error("invalid guest CID {0}: must be above 2 and below 2^32 - 1")]
    InvalidCid(u64),
    /// A block serial is longer than `GET_ID` allows.
    #[error("block serial {0:?} is longer than 20 bytes")]
    SerialTooLong(String),
    /// The rng device could not be built.
    #[error("rng device")]
    Rng(#[source] hypercontainer_virtio::rng::Error),
    /// The console device could not be built.
    #[error("virtio console device")]
    Console(#[source] hypercontainer_virtio::console::Error),
    /// A network device could not be built.
    #[error("network device {index}")]
    Net {
        /// Position among the VM's virtio devices.
        index: usize,
        /// Why.
        #[source]
        source: hypercontainer_virtio::net::Error,
    },
    /// A transport could not be built.
    #[error("virtio-mmio transport of device {index}")]
    Transport {
        /// Position among the VM's virtio devices.
        index: usize,
        /// Why.
        #[source]
        source: hypercontainer_virtio::transport::mmio::Error,
    },
    /// An eventfd could not be created or duplicated.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// The event manager could not be created.
    #[error("cannot create the device event loop")]
    EventManager(#[source] event_manager::Error),
    /// The event-loop thread could not be spawned.
    #[error("cannot spawn the device event-loop thread")]
    Thread(#[source] std::io::Error),
    /// Waiting for events failed; the devices stopped.
    #[error("the device event loop failed")]
    EventLoop(#[source] event_manager::Error),
    /// A device handler panicked; the devices stopped.
    #[error("a device handler panicked: {message}")]
    EventLoopPanic {
        /// The panic message.
        message: String,
    },
}

/// Result alias of the device manager.
pub type Result<T> = std::result::Result<T, Error>;

/// A virtio block device over a raw image file.
///
/// ```
/// use hypercontainer::vmm::devices::BlockConfig;
/// let layer = BlockConfig::new("/var/lib/images/layer0.img")
///     .read_only(true)
///     .serial("layer0");
/// # let _ = layer;
/// ```
#[derive(Debug)]
pub struct BlockConfig {
    source: BlockSource,
    read_only: bool,
    serial: Option<String>,
}

#[derive(Debug)]
enum BlockSource {
    Path(PathBuf),
    File(File),
}

impl BlockConfig {
    /// The image at `path`, opened read-write (or read-only with
    /// [`read_only`](Self::read_only)) when the VM is built.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            source: BlockSource::Path(path.into()),
            read_only: false,
            serial: None,
        }
    }

    /// An image file the caller already opened (read-write unless the
    /// device is read-only).
    pub fn file(file: File) -> Self {
        Self {
            source: BlockSource::File(file),
            read_only: false,
            serial: None,
        }
    }

    /// Expose the disk read-only: the guest sees a read-only disk and any
    /// write request fails.
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// The serial the guest finds in `/sys/block/vdX/serial` (at most 20
    /// bytes).
    pub fn serial(mut self, serial: impl Into<String>) -> Self {
        self.serial = Some(serial.into());
        self
    }

    fn describe(&self) -> String {
        match &self.source {
            BlockSource::Path(p) => p.display().to_string(),
            BlockSource::File(_) => "<fd>".into(),
        }
    }
}

/// A virtio network device over a tap interface (or any frame backend).
pub struct NetConfig {
    backend: NetSource,
    mac: Option<[u8; 6]>,
}

enum NetSource {
    TapName(String),
    TapFd(OwnedFd),
    Backend(Box<dyn NetBackend>),
}

impl std::fmt::Debug for NetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backend = match &self.backend {
            NetSource::TapName(n) => format!("tap {n}"),
            NetSource::TapFd(_) => "tap fd".into(),
            NetSource::Backend(_) => "custom backend".into(),
        };
        f.debug_struct("NetConfig")
            .field("backend", &backend)
            .field("mac", &self.mac)
            .finish()
    }
}

impl NetConfig {
    /// The tap interface `name`, opened (or created) when the VM is built.
    pub fn tap(name: impl Into<String>) -> Self {
        Self {
            backend: NetSource::TapName(name.into()),
            mac: None,
        }
    }

    /// An already configured tap fd.
    pub fn tap_fd(fd: OwnedFd) -> Self {
        Self {
            backend: NetSource::TapFd(fd),
            mac: None,
        }
    }

    /// Any frame backend (a datagram socket to a userspace network stack,
    /// for instance).
    pub fn backend(backend: Box<dyn NetBackend>) -> Self {
        Self {
            backend: NetSource::Backend(backend),
            mac: None,
        }
    }

    /// The guest's MAC address (default 52:54:00:12:34:56).
    pub fn mac(mut self, mac: [u8; 6]) -> Self {
        self.mac = Some(mac);
        self
    }
}

/// What kind of device occupies a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// virtio-blk.
    Block,
    /// virtio-vsock.
    Vsock,
    /// virtio-rng.
    Rng,
    /// virtio-console.
    Console,
    /// virtio-net.
    Net,
    /// virtio-fs (one share).
    Fs,
    /// virtio-fs with several shares behind one device.
    MultiFs,
    /// A transport the caller built itself
    /// ([`VmBuilder::virtio_mmio_device`](super::VmBuilder::virtio_mmio_device)).
    Custom,
}

/// One configured device and the slot it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The device kind.
    pub kind: DeviceKind,
    /// Its MMIO window and IRQ.
    pub slot: MmioSlot,
}

/// A device waiting for guest memory to exist.
pub(crate) enum DeviceSpec {
    Block(BlockConfig),
    Vsock(u64),
    Rng,
    Console(Box<dyn Write + Send>),
    Net(NetConfig),
    Fs(ShareConfig),
    MultiFs(MultiShareConfig),
    Custom(VirtioMmioDevice),
}

impl DeviceSpec {
    fn kind(&self) -> DeviceKind {
        match self {
            Self::Block(_) => DeviceKind::Block,
            Self::Vsock(_) => DeviceKind::Vsock,
            Self::Rng => DeviceKind::Rng,
            Self::Console(_) => DeviceKind::Console,
            Self::Net(_) => DeviceKind::Net,
            Self::Fs(_) => DeviceKind::Fs,
            Self::MultiFs(_) => DeviceKind::MultiFs,
            Self::Custom(_) => DeviceKind::Custom,
        }
    }
}

/// The virtio devices of a VM being built, in slot order.
#[derive(Default)]
pub(crate) struct DeviceList {
    specs: Vec<DeviceSpec>,
    /// Subscribers without a slot (test helpers).
    extra: Vec<Subscriber>,
}

impl std::fmt::Debug for DeviceList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.specs.iter().map(DeviceSpec::kind))
            .finish()
    }
}

/// Called from the event-loop thread when the devices fail; ends the VM.
pub(crate) type FailureHook = Box<dyn FnOnce(Error) + Send>;

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

impl DeviceList {
    pub fn push(&mut self, spec: DeviceSpec) {
        self.specs.push(spec);
    }

    pub fn len(&self) -> usize {
        self.specs.len()
    }

    /// Checks what can be checked without opening anything.
    pub fn validate(&self) -> Result<()> {
        let mut vsock = false;
        let mut tags = std::collections::HashSet::new();
        for (index, spec) in self.specs.iter().enumerate() {
            match spec {
                DeviceSpec::Fs(share) => {
                    share.validate().map_err(|source| Error::Fs {
                        index,
                        tag: share.tag.clone(),
                        source,
                    })?;
                    if !tags.insert(share.tag.as_str()) {
                        return Err(Error::DuplicateFsTag(share.tag.clone()));
                    }
                }
                DeviceSpec::MultiFs(config) => {
                    config.validate().map_err(|source| Error::Fs {
                        index,
                        tag: config.tag.clone(),
                        source,
                    })?;
                    if !tags.insert(config.tag.as_str()) {
                        return Err(Error::DuplicateFsTag(config.tag.clone()));
                    }
                }
                DeviceSpec::Vsock(cid) => {
                    if std::mem::replace(&mut vsock, true) {
                        return Err(Error::DuplicateVsock);
                    }
                    if *cid <= HOST_CID || *cid >= u64::from(u32::MAX) {
                        return Err(Error::InvalidCid(*cid));
                    }
                }
                DeviceSpec::Block(BlockConfig {
                    serial: Some(s), ..
                }) if s.len() > hypercontainer_virtio::block::SERIAL_LEN => {
                    return Err(Error::SerialTooLong(s.clone()));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Builds every device on `memory`, starts the event loop, and returns
    /// the transports for the VMM to wire (in slot order) and the running
    /// devices.
    pub fn realize(
        self,
        memory: &GuestMemoryMmap,
        slot: impl Fn(u32) -> MmioSlot,
        on_failure: FailureHook,
    ) -> Result<(Vec<VirtioMmioDevice>, Devices)> {
        self.validate()?;
        let mem = Arc::new(memory.clone());
        let mut wired = Vec::with_capacity(self.specs.len());
        let mut subscribers: Vec<Subscriber> = self.extra;
        let mut info = Vec::with_capacity(self.specs.len());
        let mut vsock_host = None;
        let mut fs_shares = Vec::new();
        let mut console_input = None;
        for (index, spec) in self.specs.into_iter().enumerate() {
            info.push(DeviceInfo {
                kind: spec.kind(),
                slot: slot(index as u32),
            });
            let (device, subscriber): (Arc<Mutex<dyn VirtioDevice>>, Subscriber) = match spec {
                DeviceSpec::Custom(dev) => {
                    wired.push(dev);
                    continue;
                }
                DeviceSpec::Block(cfg) => {
                    let path = cfg.describe();
                    let builder = match cfg.source {
                        BlockSource::Path(p) => Block::builder_path(p),
                        BlockSource::File(f) => Block::builder(f),
                    };
                    let builder = builder.read_only(cfg.read_only);
                    let builder = match cfg.serial {
                        Some(s) => builder.serial(s),
                        None => builder,
                    };
                    let dev = builder.build().map_err(|source| Error::Block {
                        index,
                        path,
                        source,
                    })?;
                    let dev = Arc::new(Mutex::new(dev));
                    (dev.clone(), dev)
                }
                DeviceSpec::Vsock(cid) => {
                    let dev = Vsock::builder(cid).build().map_err(Error::Vsock)?;
                    vsock_host = Some(dev.host());
                    let dev = Arc::new(Mutex::new(dev));
                    (dev.clone(), dev)
                }
                DeviceSpec::Rng => {
                    let dev = Arc::new(Mutex::new(Rng::new().map_err(Error::Rng)?));
                    (dev.clone(), dev)
                }
                DeviceSpec::Console(output) => {
                    let dev = Console::new(output).map_err(Error::Console)?;
                    console_input = Some(dev.input());
                    let dev = Arc::new(Mutex::new(dev));
                    (dev.clone(), dev)
                }
                DeviceSpec::Fs(share) => {
                    let tag = share.tag.clone();
                    let dev = Fs::new(share).map_err(|source| Error::Fs { index, tag, source })?;
                    let dev = Arc::new(Mutex::new(dev));
                    (dev.clone(), dev)
                }
                DeviceSpec::MultiFs(config) => {
                    let tag = config.tag.clone();
                    let dev = Fs::multi(config).map_err(|source| Error::Fs {
                        index,
                        tag: tag.clone(),
                        source,
                    })?;
                    if let Some(handle) = dev.shares() {
                        fs_shares.push((tag, handle));
                    }
                    let dev = Arc::new(Mutex::new(dev));
                    (dev.clone(), dev)
                }
                DeviceSpec::Net(cfg) => {
                    let net_err = |source| Error::Net { index, source };
                    let backend: Box<dyn NetBackend> = match cfg.backend {
                        NetSource::TapName(name) => Box::new(Tap::open(&name).map_err(net_err)?),
                        NetSource::TapFd(fd) => Box::new(Tap::from_fd(fd).map_err(net_err)?),
                        NetSource::Backend(b) => b,
                    };
                    let builder = Net::builder(backend);
                    let builder = match cfg.mac {
                        Some(mac) => builder.mac(mac),
                        None => builder,
                    };
                    let dev = Arc::new(Mutex::new(builder.build().map_err(net_err)?));
                    (dev.clone(), dev)
                }
            };
            let irq = EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?;
            let interrupt = irq.try_clone().map_err(Error::EventFd)?;
            let transport = MmioTransport::new(mem.clone(), device, Arc::new(irq))
                .map_err(|source| Error::Transport { index, source })?;
            let queue_notify = transport
                .queue_notify_events()
                .map(|(q, evt)| evt.try_clone().map(|e| (u32::from(q), e)))
                .collect::<std::io::Result<Vec<_>>>()
                .map_err(Error::EventFd)?;
            wired.push(VirtioMmioDevice {
                device: Arc::new(Mutex::new(TransportDevice(transport))),
                interrupt,
                queue_notify,
            });
            subscribers.push(subscriber);
        }
        let event_loop = if subscribers.is_empty() {
            None
        } else {
            Some(EventLoop::start(subscribers, on_failure)?)
        };
        Ok((
            wired,
            Devices {
                info,
                vsock: vsock_host,
                fs_shares,
                console_input,
                event_loop,
            },
        ))
    }
}

#[cfg(feature = "test-utils")]
impl super::VmBuilder {
    /// Test helper: runs `subscriber` on the VM's device event loop as if it
    /// were a device (it gets no slot). Lets tests make a device handler
    /// misbehave.
    pub fn device_loop_subscriber(
        mut self,
        subscriber: Arc<Mutex<dyn MutEventSubscriber + Send>>,
    ) -> Self {
        self.devices.extra.push(subscriber);
        self
    }
}

/// A transport on the MMIO bus.
struct TransportDevice(MmioTransport);

impl BusDevice for TransportDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.0.read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.0.write(offset, data);
    }
}

/// The running devices of a VM: their slots, the host-side handles, and
/// the event-loop thread.
pub struct Devices {
    info: Vec<DeviceInfo>,
    vsock: Option<VsockHost>,
    fs_shares: Vec<(String, SharesHandle)>,
    console_input: Option<ConsoleInput>,
    event_loop: Option<EventLoop>,
}

impl std::fmt::Debug for Devices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Devices")
            .field("info", &self.info)
            .field("event_loop", &self.event_loop.is_some())
            .finish_non_exhaustive()
    }
}

impl Devices {
    /// Every virtio device with its slot, in slot order.
    pub fn info(&self) -> &[DeviceInfo] {
        &self.info
    }

    /// The host side of the vsock device, if the VM has one.
    pub fn vsock(&self) -> Option<&VsockHost> {
        self.vsock.as_ref()
    }

    /// The handle that adds shares to the multi-share virtio-fs device
    /// mounted as `tag`, while the VM runs, if it has one.
    pub fn fs_shares(&self, tag: &str) -> Option<&SharesHandle> {
        self.fs_shares
            .iter()
            .find(|(t, _)| t == tag)
            .map(|(_, h)| h)
    }

    /// The input of the virtio console, if the VM has one.
    pub fn console_input(&self) -> Option<&ConsoleInput> {
        self.console_input.as_ref()
    }

    /// Stops the event loop and joins its thread (idempotent).
    pub(crate) fn stop(&mut self) {
        if let Some(l) = self.event_loop.take() {
            l.stop();
        }
    }
}

impl Drop for Devices {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Wakes the loop so that it sees the stop flag.
struct ExitSubscriber {
    evt: EventFd,
}

impl MutEventSubscriber for ExitSubscriber {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            error!("cannot register the device loop's exit event: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evt.read();
    }
}

/// One thread running an [`EventManager`] until told to stop.
pub(crate) struct EventLoop {
    exit: EventFd,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EventLoop {
    /// Subscribes `subscribers` to a new event manager and runs it on the
    /// `vm-devices` thread. `on_failure` is called (from that thread) if
    /// the loop fails or a handler panics; the loop then ends.
    pub fn start(subscribers: Vec<Subscriber>, on_failure: FailureHook) -> Result<Self> {
        let exit = EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?;
        let mut em = EventManager::<Subscriber>::new().map_err(Error::EventManager)?;
        em.add_subscriber(Arc::new(Mutex::new(ExitSubscriber {
            evt: exit.try_clone().map_err(Error::EventFd)?,
        })));
        for s in subscribers {
            em.add_subscriber(s);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(EVENT_LOOP_THREAD.into())
            .spawn(move || run_loop(em, &flag, on_failure))
            .map_err(Error::Thread)?;
        Ok(Self {
            exit,
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the loop and joins the thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Err(e) = self.exit.write(1) {
            error!("cannot wake the device event loop: {e}");
        }
        if let Some(t) = self.thread.take() {
            // The loop catches its panics; a join error carries nothing more.
            let _ = t.join();
        }
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn run_loop(mut em: EventManager<Subscriber>, stop: &AtomicBool, on_failure: FailureHook) {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        while !stop.load(Ordering::SeqCst) {
            if let Err(e) = em.run() {
                return Err(Error::EventLoop(e));
            }
        }
        Ok(())
    }));
    let failure = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(payload) => Some(Error::EventLoopPanic {
            message: panic_message(payload.as_ref()),
        }),
    };
    match failure {
        Some(e) => {
            error!("device event loop ended: {e}");
            on_failure(e);
        }
        None => debug!("device event loop stopped"),
    }
    // The subscribers (and with them the devices and their fds) are
    // dropped here, on the loop's thread, after the loop ended.
    drop(em);
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;
    use vm_memory::GuestAddress;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn slot(i: u32) -> MmioSlot {
        super::super::slot(i)
    }

    fn read32(dev: &VirtioMmioDevice, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        dev.device.lock().unwrap().read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn no_failure() -> FailureHook {
        Box::new(|e| panic!("unexpected device failure: {e}"))
    }

    #[test]
    fn devices_get_slots_in_the_order_they_were_added() {
        let disk = tempfile::NamedTempFile::new().unwrap();
        disk.as_file().set_len(1 << 20).unwrap();
        let mut list = DeviceList::default();
        list.push(DeviceSpec::Block(
            BlockConfig::new(disk.path()).read_only(true).serial("d0"),
        ));
        list.push(DeviceSpec::Vsock(3));
        list.push(DeviceSpec::Rng);
        list.push(DeviceSpec::Console(Box::new(std::io::sink())));
        let (frames, _peer) = std::os::unix::net::UnixDatagram::pair().unwrap();
        list.push(DeviceSpec::Net(
            NetConfig::backend(Box::new(frames)).mac([2, 0, 0, 0, 0, 1]),
        ));
        let (wired, devices) = list.realize(&memory(), slot, no_failure()).unwrap();
        let kinds: Vec<_> = devices.info().iter().map(|i| i.kind).collect();
        assert_eq!(
            kinds,
            [
                DeviceKind::Block,
                DeviceKind::Vsock,
                DeviceKind::Rng,
                DeviceKind::Console,
                DeviceKind::Net
            ]
        );
        for (i, info) in devices.info().iter().enumerate() {
            assert_eq!(info.slot, slot(i as u32));
        }
        // Magic, version 2, device IDs in slot order.
        let ids: Vec<u32> = wired.iter().map(|d| read32(d, 0x8)).collect();
        assert_eq!(ids, [2, 19, 4, 3, 1]);
        // The MAC reaches the net device's config space.
        let mut mac = [0u8; 6];
        wired[4].device.lock().unwrap().read(0x100, &mut mac);
        assert_eq!(mac, [2, 0, 0, 0, 0, 1]);
        for d in &wired {
            assert_eq!(read32(d, 0), u32::from_le_bytes(*b"virt"));
            assert_eq!(read32(d, 4), 2);
        }
        // One notify eventfd per queue: block 1, vsock 3, rng 1, console 2,
        // net 2.
        let queues: Vec<Vec<u32>> = wired
            .iter()
            .map(|d| d.queue_notify.iter().map(|(q, _)| *q).collect())
            .collect();
        assert_eq!(
            queues,
            [vec![0], vec![0, 1, 2], vec![0], vec![0, 1], vec![0, 1]]
        );
        assert!(devices.vsock().is_some());
        assert!(devices.console_input().is_some());
    }

    #[test]
    fn validation_rejects_bad_configurations() {
        let mut list = DeviceList::default();
        list.push(DeviceSpec::Vsock(2));
        assert!(matches!(list.validate(), Err(Error::InvalidCid(2))));
        let mut list = DeviceList::default();
        list.push(DeviceSpec::Vsock(3));
        list.push(DeviceSpec::Vsock(4));
        assert!(matches!(list.validate(), Err(Error::DuplicateVsock)));
        let mut list = DeviceList::default();
        list.push(DeviceSpec::Block(
            BlockConfig::new("/nonexistent").serial("a".repeat(21)),
        ));
        assert!(matches!(list.validate(), Err(Error::SerialTooLong(_))));
    }

    #[test]
    fn fs_shares_need_valid_unique_tags() {
        let dir = tempfile::tempdir().unwrap();
        let mut list = DeviceList::default();
        list.push(DeviceSpec::Rng);
        list.push(DeviceSpec::Fs(ShareConfig::new(dir.path(), "")));
        assert!(matches!(list.validate(), Err(Error::Fs { index: 1, .. })));
        let mut list = DeviceList::default();
        list.push(DeviceSpec::Fs(ShareConfig::new(dir.path(), "data")));
        list.push(DeviceSpec::Fs(ShareConfig::new(dir.path(), "data")));
        assert!(matches!(list.validate(), Err(Error::DuplicateFsTag(t)) if t == "data"));
    }

    #[test]
    fn an_fs_share_gets_a_slot_and_a_missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut list = DeviceList::default();
        list.push(DeviceSpec::Fs(ShareConfig::new(dir.path(), "data")));
        let (wired, devices) = list.realize(&memory(), slot, no_failure()).unwrap();
        assert_eq!(wired.len(), 1);
        assert_eq!(read32(&wired[0], 0x8), 26);
        drop(devices);
        let mut list = DeviceList::default();
        list.push(DeviceSpec::Fs(ShareConfig::new(
            "/nonexistent/share",
            "gone",
        )));
        match list.realize(&memory(), slot, no_failure()) {
            Err(Error::Fs { index: 0, tag, .. }) => assert_eq!(tag, "gone"),
            Err(other) => panic!("unexpected error {other:?}"),
            Ok(_) => panic!("a missing share directory was accepted"),
        }
    }

    #[test]
    fn a_missing_image_is_an_error_naming_it() {
        let mut list = DeviceList::default();
        list.push(DeviceSpec::Rng);
        list.push(DeviceSpec::Block(BlockConfig::new("/nonexistent/disk.img")));
        match list.realize(&memory(), slot, no_failure()) {
            Err(Error::Block { index: 1, path, .. }) => assert_eq!(path, "/nonexistent/disk.img"),
            Err(other) => panic!("unexpected error {other:?}"),
            Ok(_) => panic!("a missing image was accepted"),
        }
    }

    #[test]
    fn no_thread_without_managed_devices() {
        let (_, devices) = DeviceList::default()
            .realize(&memory(), slot, no_failure())
            .unwrap();
        assert!(devices.event_loop.is_none());
    }

    /// A subscriber whose handler panics when its eventfd fires.
    struct Bomb {
        evt: EventFd,
    }

    impl MutEventSubscriber for Bomb {
        fn init(&mut self, ops: &mut EventOps) {
            ops.add(Events::new(&self.evt, EventSet::IN)).unwrap();
        }
        fn process(&mut self, _: Events, _: &mut EventOps) {
            panic!("device bug");
        }
    }

    #[test]
    fn a_panicking_handler_ends_the_loop_with_an_error() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let bomb = Arc::new(Mutex::new(Bomb {
            evt: evt.try_clone().unwrap(),
        }));
        let (tx, rx) = mpsc::channel();
        let hook: FailureHook = Box::new(move |e| tx.send(e.to_string()).unwrap());
        let l = EventLoop::start(vec![bomb], hook).unwrap();
        // Nothing happens until the event fires.
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        evt.write(1).unwrap();
        let msg = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(msg, "a device handler panicked: device bug");
        // Stopping a loop that already ended just joins it.
        l.stop();
    }

    #[test]
    fn stop_joins_an_idle_loop_without_failure() {
        let (tx, rx) = mpsc::channel::<String>();
        let hook: FailureHook = Box::new(move |e| tx.send(e.to_string()).unwrap());
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let bomb = Arc::new(Mutex::new(Bomb { evt }));
        let l = EventLoop::start(vec![bomb], hook).unwrap();
        l.stop();
        // The hook was dropped unused with the thread.
        assert!(matches!(
            rx.recv_timeout(Duration::from_millis(10)),
            Err(mpsc::RecvTimeoutError::Disconnected)
        ));
    }
}
