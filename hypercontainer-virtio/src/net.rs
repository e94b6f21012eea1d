//! virtio-net over a tap device (or any [`NetBackend`]).
//!
//! No offloads are negotiated: every frame travels with a zeroed 12-byte
//! `virtio_net_hdr` and is at most [`MAX_FRAME_LEN`] bytes (Ethernet with a
//! VLAN tag, 1500-byte MTU). Longer frames, in either direction, are dropped
//! and counted, as are frames the guest has no room for.

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixDatagram;

use event_manager::{EventOps, Events, MutEventSubscriber};
use log::{debug, error};
use virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryBackend};
use vmm_sys_util::epoll::EventSet;

use crate::device::{
    self, device_type, Activation, EventLoopLink, LinkChange, VirtioDevice, CONTROL_TOKEN,
};
use crate::queue_util::Chain;
use crate::GuestMemoryMmap;

/// Size of the `virtio_net_hdr` (with `num_buffers`, as in virtio 1.x).
pub const NET_HDR_LEN: usize = 12;
/// Largest frame carried: 1500-byte payload, Ethernet header, VLAN tag.
pub const MAX_FRAME_LEN: usize = 1518;
/// Smallest frame accepted from the guest (an Ethernet header).
pub const MIN_FRAME_LEN: usize = 14;
/// Queue size of both queues.
pub const QUEUE_SIZE: u16 = 256;

const RX: usize = 0;
const TX: usize = 1;
const BACKEND_TOKEN: u32 = 0x1_0000;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The tap device could not be opened or configured.
    #[error("cannot open tap device {name}")]
    Tap {
        /// Interface name asked for.
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The interface name is empty or longer than 15 bytes.
    #[error("invalid interface name {0:?}")]
    InterfaceName(String),
    /// The backend fd could not be made non-blocking.
    #[error("cannot configure the backend fd")]
    Backend(#[source] io::Error),
    /// Device plumbing failed.
    #[error("device setup failed")]
    Device(#[source] device::Error),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Where frames go: a tap device, or anything else that moves whole frames
/// over a pollable, non-blocking fd.
pub trait NetBackend: AsRawFd + Send {
    /// Receive one frame into `buf`; `WouldBlock` when none is waiting.
    /// Returns the frame's length (which may exceed `buf.len()` for
    /// truncated frames on backends that report it).
    fn recv_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Send one frame.
    fn send_frame(&mut self, frame: &[u8]) -> io::Result<()>;
}

/// A tap device (`IFF_TAP | IFF_NO_PI`), non-blocking.
#[derive(Debug)]
pub struct Tap {
    file: std::fs::File,
    name: String,
}

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

impl Tap {
    /// Open (or create) the tap interface `name` (`%d` patterns allowed).
    /// Needs `CAP_NET_ADMIN` unless the interface exists and belongs to the
    /// caller.
    pub fn open(name: &str) -> Result<Self> {
        if name.is_empty() || name.len() > 15 || name.contains('\0') {
            return Err(Error::InterfaceName(name.to_string()));
        }
        let tap_err = |source| Error::Tap {
            name: name.to_string(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(tap_err)?;
        let mut req = IfReq {
            name: [0; 16],
            flags: IFF_TAP | IFF_NO_PI,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` has its
        // layout (16-byte name, flags, padding to 40 bytes) and outlives the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req) };
        if rc < 0 {
            return Err(tap_err(io::Error::last_os_error()));
        }
        let end = req.name.iter().position(|&b| b == 0).unwrap_or(16);
        let name = String::from_utf8_lossy(&req.name[..end]).into_owned();
        Ok(Self { file, name })
    }

    /// Use an already configured tap fd (e.g. handed over by a network
    /// manager). It is made non-blocking.
    pub fn from_fd(fd: OwnedFd) -> Result<Self> {
        set_nonblocking(fd.as_raw_fd()).map_err(Error::Backend)?;
        Ok(Self {
            file: std::fs::File::from(fd),
            name: String::new(),
        })
    }

    /// The interface name (empty when built from an fd).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tap's descriptor, e.g. to configure the interface first and hand
    /// the open tap to a VM or sandbox afterwards (the interface lives as
    /// long as the descriptor is open, unless made persistent).
    pub fn into_fd(self) -> OwnedFd {
        self.file.into()
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL on a caller-owned fd has no memory effects.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFL on a caller-owned fd has no memory effects.
    let rc = unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl NetBackend for Tap {
    fn recv_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }

    fn send_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        self.file.write(frame).map(|_| ())
    }
}

/// A datagram socket carries one frame per datagram (e.g. one end of a
/// `UnixDatagram::pair()`, or a userspace network stack's socket).
impl NetBackend for UnixDatagram {
    fn recv_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // MSG_TRUNC: report the real length of a frame larger than `buf`.
        // SAFETY: the pointer and length describe `buf`, which is writable
        // and outlives the call.
        let n = unsafe {
            libc::recv(
                self.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn send_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        self.send(frame).map(|_| ())
    }
}

/// Frame counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Frames sent by the guest to the backend.
    pub tx_frames: u64,
    /// Backend frames longer than the maximum, dropped.
    pub rx_oversized: u64,
    /// Backend frames dropped because the guest buffer was too small.
    pub rx_no_room: u64,
    /// Guest frames longer than the maximum, dropped.
    pub tx_oversized: u64,
    /// Guest frames dropped as malformed (too short, bad buffers).
    pub tx_malformed: u64,
    /// Guest frames the backend did not take.
    pub tx_backend_errors: u64,
}

/// Builds a [`Net`] device.
pub struct NetBuilder {
    backend: Box<dyn NetBackend>,
    mac: [u8; 6],
}

impl NetBuilder {
    /// The guest's MAC address (default 52:54:00:12:34:56).
    pub fn mac(mut self, mac: [u8; 6]) -> Self {
        self.mac = mac;
        self
    }

    /// Validate and build.
    pub fn build(self) -> Result<Net> {
        set_nonblocking(self.backend.as_raw_fd()).map_err(Error::Backend)?;
        Ok(Net {
            backend: self.backend,
            mac: self.mac,
            link: EventLoopLink::new().map_err(Error::Device)?,
            queue_sizes: [QUEUE_SIZE; 2],
            rx_frame: vec![0; MAX_FRAME_LEN + 1],
            rx_pending: None,
            backend_readable: true,
            registered: None,
            stats: NetStats::default(),
        })
    }
}

/// A virtio network device.
pub struct Net {
    backend: Box<dyn NetBackend>,
    mac: [u8; 6],
    link: EventLoopLink,
    queue_sizes: [u16; 2],
    rx_frame: Vec<u8>,
    rx_pending: Option<usize>,
    backend_readable: bool,
    registered: Option<EventSet>,
    stats: NetStats,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("mac", &self.mac)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Net {
    /// Start building a device over `backend`.
    pub fn builder(backend: Box<dyn NetBackend>) -> NetBuilder {
        NetBuilder {
            backend,
            mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x56],
        }
    }

    /// Counters.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// Send every frame the guest queued.
    pub fn process_tx(&mut self) {
        let Some(active) = self.link.active() else {
            return;
        };
        let mem = active.mem.clone();
        let mut frame = Vec::with_capacity(NET_HDR_LEN + MAX_FRAME_LEN);
        let mut used = false;
        {
            let queue = &mut active.queues[TX];
            loop {
                let chain = match queue.iter(mem.as_ref()) {
                    Ok(mut it) => it.next(),
                    Err(e) => {
                        error!("virtio-net: tx queue: {e}");
                        None
                    }
                };
                let Some(chain) = chain else { break };
                let chain = Chain::from_chain(chain);
                match gather_tx(mem.as_ref(), &chain, &mut frame) {
                    Ok(()) => match self.backend.send_frame(&frame[NET_HDR_LEN..]) {
                        Ok(()) => self.stats.tx_frames += 1,
                        Err(e) => {
                            debug!("virtio-net: backend send failed: {e}");
                            self.stats.tx_backend_errors += 1;
                        }
                    },
                    Err(TxError::Oversized) => self.stats.tx_oversized += 1,
                    Err(TxError::Malformed) => self.stats.tx_malformed += 1,
                }
                if let Err(e) = queue.add_used(mem.as_ref(), chain.head, 0) {
                    error!("virtio-net: tx add_used: {e}");
                }
                used = true;
            }
        }
        if used {
            active.signal_used(TX);
        }
    }

    /// Move frames from the backend into guest receive buffers until either
    /// runs out.
    pub fn process_rx(&mut self) {
        let Some(active) = self.link.active() else {
            return;
        };
        let mem = active.mem.clone();
        let mut used = false;
        loop {
            let len = match self.rx_pending {
                Some(len) => len,
                None => {
                    if !self.backend_readable {
                        break;
                    }
                    match self.backend.recv_frame(&mut self.rx_frame) {
                        Ok(n) if n > MAX_FRAME_LEN => {
                            self.stats.rx_oversized += 1;
                            continue;
                        }
                        Ok(0) => {
                            self.backend_readable = false;
                            break;
                        }
                        Ok(n) => n,
                        Err(e) => {
                            if e.kind() != io::ErrorKind::WouldBlock {
                                debug!("virtio-net: backend receive failed: {e}");
                            }
                            self.backend_readable = false;
                            break;
                        }
                    }
                }
            };
            let queue = &mut active.queues[RX];
            let chain = match queue.iter(mem.as_ref()) {
                Ok(mut it) => it.next(),
                Err(e) => {
                    error!("virtio-net: rx queue: {e}");
                    None
                }
            };
            let Some(chain) = chain else {
                self.rx_pending = Some(len);
                break;
            };
            self.rx_pending = None;
            let chain = Chain::from_chain(chain);
            let written = scatter_rx(mem.as_ref(), &chain, &self.rx_frame[..len]);
            if written == 0 {
                self.stats.rx_no_room += 1;
            } else {
                self.stats.rx_frames += 1;
            }
            if let Err(e) = queue.add_used(mem.as_ref(), chain.head, written) {
                error!("virtio-net: rx add_used: {e}");
            }
            used = true;
        }
        if used {
            active.signal_used(RX);
        }
    }

    fn reconcile(&mut self, ops: &mut EventOps) {
        let desired = if self.link.is_active() {
            let mut set = EventSet::empty();
            if !self.backend_readable && self.rx_pending.is_none() {
                set |= EventSet::IN;
            }
            Some(set)
        } else {
            None
        };
        if desired == self.registered {
            return;
        }
        let fd = self.backend.as_raw_fd();
        let result = match (self.registered, desired) {
            (Some(_), None) => ops.remove(Events::empty_raw(fd)),
            (None, Some(set)) => ops.add(Events::with_data_raw(fd, BACKEND_TOKEN, set)),
            (Some(_), Some(set)) => ops.modify(Events::with_data_raw(fd, BACKEND_TOKEN, set)),
            (None, None) => Ok(()),
        };
        match result {
            Ok(()) => self.registered = desired,
            Err(e) => error!("virtio-net: epoll update failed: {e:?}"),
        }
    }
}

enum TxError {
    Oversized,
    Malformed,
}

fn gather_tx(
    mem: &GuestMemoryMmap,
    chain: &Chain,
    frame: &mut Vec<u8>,
) -> std::result::Result<(), TxError> {
    frame.clear();
    let mut total = 0usize;
    for d in &chain.descs {
        if d.is_write_only() {
            return Err(TxError::Malformed);
        }
        total = total.saturating_add(d.len() as usize);
    }
    if total > NET_HDR_LEN + MAX_FRAME_LEN {
        return Err(TxError::Oversized);
    }
    if total < NET_HDR_LEN + MIN_FRAME_LEN {
        return Err(TxError::Malformed);
    }
    frame.resize(total, 0);
    let mut off = 0usize;
    for d in &chain.descs {
        let len = d.len() as usize;
        if !GuestMemoryBackend::check_range(mem, d.addr(), len)
            || mem
                .read_slice(&mut frame[off..off + len], d.addr())
                .is_err()
        {
            return Err(TxError::Malformed);
        }
        off += len;
    }
    Ok(())
}

/// Write header and frame into the chain's writable buffers; 0 if they do
/// not fit.
fn scatter_rx(mem: &GuestMemoryMmap, chain: &Chain, frame: &[u8]) -> u32 {
    let mut hdr = [0u8; NET_HDR_LEN];
    // num_buffers = 1
    hdr[10] = 1;
    let total = NET_HDR_LEN + frame.len();
    let mut room = 0usize;
    for d in chain.descs.iter() {
        if !d.is_write_only() {
            return 0;
        }
        if !GuestMemoryBackend::check_range(mem, d.addr(), d.len() as usize) {
            return 0;
        }
        room = room.saturating_add(d.len() as usize);
    }
    if room < total {
        return 0;
    }
    let mut src = hdr.iter().chain(frame.iter()).copied();
    let mut buf = Vec::with_capacity(total);
    for d in chain.descs.iter() {
        buf.clear();
        buf.extend(src.by_ref().take(d.len() as usize));
        if buf.is_empty() {
            break;
        }
        if mem.write_slice(&buf, d.addr()).is_err() {
            return 0;
        }
    }
    total as u32
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn features(&self) -> u64 {
        device::VERSION_1 | (1 << VIRTIO_NET_F_MAC)
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        device::read_config_bytes(&self.mac, offset, data);
    }

    fn activate(&mut self, activation: Activation) -> device::Result<()> {
        self.link.activate(activation, 2)
    }

    fn reset(&mut self) {
        self.rx_pending = None;
        self.link.reset();
    }

    fn is_active(&self) -> bool {
        self.link.is_active()
    }
}

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        self.link.init(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            CONTROL_TOKEN => {
                if let LinkChange::Activated = self.link.sync(ops) {
                    self.backend_readable = true;
                    self.process_tx();
                }
            }
            BACKEND_TOKEN => self.backend_readable = true,
            q @ (0 | 1) => {
                if self.link.ack_queue_event(q) && q as usize == TX {
                    self.process_tx();
                }
            }
            other => debug!("virtio-net: unexpected event {other}"),
        }
        self.process_rx();
        self.reconcile(ops);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use virtio_queue::Queue;
    use vm_memory::GuestAddress;

    use super::*;
    use crate::test_utils::TestQueue;
    use crate::test_utils::{
        activation, add_chain, guest_memory, used_entry, MockInterrupt, TestDesc,
    };

    fn frame(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_add(seed)).collect()
    }

    struct Fixture<'m> {
        net: Net,
        peer: UnixDatagram,
        rx: TestQueue<'m>,
        tx: TestQueue<'m>,
        mem: &'m Arc<GuestMemoryMmap>,
    }

    fn fixture(mem: &Arc<GuestMemoryMmap>) -> Fixture<'_> {
        let (dev_end, peer) = UnixDatagram::pair().unwrap();
        peer.set_nonblocking(true).unwrap();
        let mut net = Net::builder(Box::new(dev_end))
            .mac([2, 0, 0, 0, 0, 1])
            .build()
            .unwrap();
        let rx = TestQueue::create(mem.as_ref(), GuestAddress(0), 16);
        let tx = TestQueue::create(mem.as_ref(), GuestAddress(0x4000), 16);
        let queues: Vec<Queue> = vec![rx.create_queue(), tx.create_queue()];
        net.activate(activation(mem, queues, Arc::new(MockInterrupt::new()), 0))
            .unwrap();
        Fixture {
            net,
            peer,
            rx,
            tx,
            mem,
        }
    }

    #[test]
    fn mac_is_in_config_space() {
        let mem = Arc::new(guest_memory(1 << 20));
        let f = fixture(&mem);
        let mut mac = [0u8; 6];
        f.net.read_config(0, &mut mac);
        assert_eq!(mac, [2, 0, 0, 0, 0, 1]);
        assert_ne!(f.net.features() & (1 << VIRTIO_NET_F_MAC), 0);
    }

    #[test]
    fn guest_frames_reach_the_backend_and_oversized_are_dropped() {
        let mem = Arc::new(guest_memory(1 << 20));
        let mut f = fixture(&mem);
        let full = frame(MAX_FRAME_LEN, 1);
        f.mem
            .write_slice(&[0u8; NET_HDR_LEN], GuestAddress(0x10000))
            .unwrap();
        f.mem.write_slice(&full, GuestAddress(0x20000)).unwrap();
        // Largest frame, header in its own buffer.
        add_chain(
            &f.tx,
            0,
            &[
                TestDesc::read(0x10000, NET_HDR_LEN as u32),
                TestDesc::read(0x20000, MAX_FRAME_LEN as u32),
            ],
        );
        // One byte too long.
        add_chain(
            &f.tx,
            2,
            &[
                TestDesc::read(0x10000, NET_HDR_LEN as u32),
                TestDesc::read(0x20000, MAX_FRAME_LEN as u32 + 1),
            ],
        );
        // Huge, runt, writable, outside memory.
        add_chain(&f.tx, 4, &[TestDesc::read(0x10000, u32::MAX)]);
        add_chain(&f.tx, 5, &[TestDesc::read(0x10000, 20)]);
        add_chain(&f.tx, 6, &[TestDesc::write(0x10000, 100)]);
        add_chain(&f.tx, 7, &[TestDesc::read(u64::MAX - 50, 100)]);
        f.net.process_tx();
        let mut buf = vec![0u8; 4096];
        let n = f.peer.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &full[..]);
        assert!(f.peer.recv(&mut buf).is_err());
        let s = f.net.stats();
        assert_eq!((s.tx_frames, s.tx_oversized, s.tx_malformed), (1, 2, 3));
        assert_eq!(f.tx.used_idx(), 6);
    }

    #[test]
    fn backend_frames_reach_the_guest_and_oversized_are_dropped() {
        let mem = Arc::new(guest_memory(1 << 20));
        let mut f = fixture(&mem);
        let big = frame(MAX_FRAME_LEN + 1, 0);
        let a = frame(MAX_FRAME_LEN, 3);
        let b = frame(60, 9);
        f.peer.send(&big).unwrap();
        f.peer.send(&a).unwrap();
        f.peer.send(&b).unwrap();
        // No buffers yet: the frame waits.
        f.net.process_rx();
        assert_eq!(f.net.stats().rx_frames, 0);
        add_chain(
            &f.rx,
            0,
            &[TestDesc::write(0x10000, 12), TestDesc::write(0x20000, 2048)],
        );
        // Too small for the next frame.
        add_chain(&f.rx, 2, &[TestDesc::write(0x30000, 40)]);
        f.net.process_rx();
        assert_eq!(
            used_entry(&f.rx, 0),
            Some((0, (NET_HDR_LEN + a.len()) as u32))
        );
        assert_eq!(used_entry(&f.rx, 1), Some((2, 0)));
        let mut got = vec![0u8; a.len()];
        f.mem.read_slice(&mut got, GuestAddress(0x20000)).unwrap();
        assert_eq!(got, a);
        let s = f.net.stats();
        assert_eq!((s.rx_frames, s.rx_oversized, s.rx_no_room), (1, 1, 1));
        // Header and frame in one buffer.
        f.peer.send(&b).unwrap();
        add_chain(&f.rx, 3, &[TestDesc::write(0x40000, 2048)]);
        f.net.backend_readable = true;
        f.net.process_rx();
        assert_eq!(
            used_entry(&f.rx, 2),
            Some((3, (NET_HDR_LEN + b.len()) as u32))
        );
        let mut got = vec![0u8; NET_HDR_LEN + b.len()];
        f.mem.read_slice(&mut got, GuestAddress(0x40000)).unwrap();
        assert_eq!(got[10], 1);
        assert_eq!(&got[NET_HDR_LEN..], &b[..]);
    }

    #[test]
    fn tap_device_when_available() {
        // Creating a tap needs CAP_NET_ADMIN and /dev/net/tun.
        match Tap::open("hcvtest%d") {
            Ok(tap) => {
                assert!(tap.name().starts_with("hcvtest"));
                let net = Net::builder(Box::new(tap)).build().unwrap();
                assert_eq!(net.device_type(), device_type::NET);
            }
            Err(Error::Tap { source, .. }) => {
                eprintln!("tap unavailable here: {source}");
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
        assert!(matches!(Tap::open(""), Err(Error::InterfaceName(_))));
        assert!(matches!(
            Tap::open("a-name-that-is-too-long"),
            Err(Error::InterfaceName(_))
        ));
    }
}
