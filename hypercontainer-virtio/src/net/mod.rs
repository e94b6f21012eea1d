//! virtio-net over a tap device (or any [`NetBackend`]).
//!
//! Over a tap opened with `IFF_VNET_HDR` (what [`Tap::open`] does) the
//! device offers checksum and TCP segmentation offloads both ways: the
//! guest's `virtio_net_hdr` goes to the tap as is (the host kernel
//! validates it, and a write it refuses is dropped and counted), and the
//! tap's header comes back to the guest, so a TCP stream moves in segments
//! of up to 64 KiB instead of 1500-byte frames. The tap is told which
//! offloads the guest accepted (`TUNSETOFFLOAD`), so it never hands over a
//! segment the guest cannot take. Frames are then at most
//! [`MAX_GSO_FRAME_LEN`] bytes.
//!
//! Other backends carry plain frames: no offloads are negotiated, every
//! frame travels with a zeroed 12-byte header and is at most
//! [`MAX_FRAME_LEN`] bytes (Ethernet with a VLAN tag, 1500-byte MTU).
//!
//! Longer frames, in either direction, are dropped and counted, as are
//! frames the guest has no room for.
//!
//! The device offers `VIRTIO_NET_F_STATUS`: the link is up until the
//! backend reports its other end gone for good ([`NetBackend::is_closed`],
//! e.g. a user-mode network stack that exited); then the config space says
//! link down and the guest is told with a configuration-change interrupt,
//! so the guest's interface shows `NO-CARRIER`.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;

use event_manager::{EventOps, Events, MutEventSubscriber};
use log::{debug, error};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS,
    VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryBackend};
use vmm_sys_util::epoll::EventSet;

use crate::device::{
    self, device_type, Activation, EventLoopLink, LinkChange, VirtioDevice, CONTROL_TOKEN,
};
use crate::queue_util::Chain;
use crate::GuestMemoryMmap;

mod stream;
mod tap;

pub use stream::{StreamBackend, MAX_STREAM_FRAME_LEN};
pub use tap::{check_interface_name, Tap};

/// Size of the `virtio_net_hdr` (with `num_buffers`, as in virtio 1.x).
pub const NET_HDR_LEN: usize = 12;
/// Largest frame carried: 1500-byte payload, Ethernet header, VLAN tag.
pub const MAX_FRAME_LEN: usize = 1518;
/// Largest frame carried with offloads: a 64 KiB IP packet with its
/// Ethernet header and a VLAN tag.
pub const MAX_GSO_FRAME_LEN: usize = 65535 + 18;
/// Smallest frame accepted from the guest (an Ethernet header).
pub const MIN_FRAME_LEN: usize = 14;

/// The offloads offered over a backend with `virtio_net_hdr`s.
const OFFLOAD_FEATURES: u64 = (1 << VIRTIO_NET_F_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_TSO4)
    | (1 << VIRTIO_NET_F_GUEST_TSO6)
    | (1 << VIRTIO_NET_F_HOST_TSO4)
    | (1 << VIRTIO_NET_F_HOST_TSO6);
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

    /// Whether frames carry a 12-byte `virtio_net_hdr` in front, both ways
    /// (a tap with `IFF_VNET_HDR`); then checksum and segmentation offloads
    /// are offered to the guest. Default: no.
    fn vnet_hdr(&self) -> bool {
        false
    }

    /// Called at activation with the features the guest acknowledged, so
    /// that the backend hands over only what the guest can take. Default:
    /// nothing to do.
    fn set_offloads(&mut self, _acked_features: u64) -> io::Result<()> {
        Ok(())
    }

    /// Whether bytes of a frame already accepted by
    /// [`send_frame`](Self::send_frame) still wait to be written (a stream
    /// backend whose socket was full). The device then waits for the fd to
    /// become writable and calls [`flush`](Self::flush). Default: no.
    fn has_pending_output(&self) -> bool {
        false
    }

    /// Writes what [`has_pending_output`](Self::has_pending_output) holds,
    /// as far as the fd takes it. Default: nothing to do.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// Whether the other end is gone for good (a stream's peer closed):
    /// the device then stops polling the fd, which would otherwise stay
    /// readable forever. Default: never.
    fn is_closed(&self) -> bool {
        false
    }
}

pub(crate) fn set_nonblocking(fd: RawFd) -> io::Result<()> {
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
        let vnet_hdr = self.backend.vnet_hdr();
        let max_frame = if vnet_hdr {
            MAX_GSO_FRAME_LEN
        } else {
            MAX_FRAME_LEN
        };
        Ok(Net {
            backend: self.backend,
            mac: self.mac,
            link: EventLoopLink::new().map_err(Error::Device)?,
            queue_sizes: [QUEUE_SIZE; 2],
            vnet_hdr,
            max_frame,
            // Room for the header and one byte more than the largest frame,
            // to see an oversized one.
            rx_frame: vec![0; NET_HDR_LEN + max_frame + 1],
            rx_pending: None,
            backend_readable: true,
            registered: None,
            stats: NetStats::default(),
            link_up: true,
        })
    }
}

/// A virtio network device.
pub struct Net {
    backend: Box<dyn NetBackend>,
    mac: [u8; 6],
    link: EventLoopLink,
    queue_sizes: [u16; 2],
    /// The backend's frames carry a `virtio_net_hdr`.
    vnet_hdr: bool,
    /// Largest frame (without header) carried.
    max_frame: usize,
    /// The frame being delivered; with `vnet_hdr` it starts with the header.
    rx_frame: Vec<u8>,
    rx_pending: Option<usize>,
    backend_readable: bool,
    registered: Option<EventSet>,
    stats: NetStats,
    /// What the config space's status says; down once the backend closed.
    link_up: bool,
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
        let mut frame = Vec::with_capacity(NET_HDR_LEN + self.max_frame);
        let skip = backend_offset(self.vnet_hdr);
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
                match gather_tx(mem.as_ref(), &chain, &mut frame, self.max_frame) {
                    Ok(()) => match self.backend.send_frame(&frame[skip..]) {
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
            // `rx_frame[..len]` holds header and frame; a plain backend's
            // frame lands after a header that stays zeroed.
            let len = match self.rx_pending {
                Some(len) => len,
                None => {
                    if !self.backend_readable {
                        break;
                    }
                    let offset = backend_offset(self.vnet_hdr);
                    match self.backend.recv_frame(&mut self.rx_frame[offset..]) {
                        Ok(n) if offset + n > NET_HDR_LEN + self.max_frame => {
                            self.stats.rx_oversized += 1;
                            continue;
                        }
                        Ok(0) => {
                            self.backend_readable = false;
                            break;
                        }
                        Ok(n) if offset + n < NET_HDR_LEN => {
                            self.stats.rx_oversized += 1;
                            continue;
                        }
                        Ok(n) => offset + n,
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
            let written = scatter_rx(mem.as_ref(), &chain, &mut self.rx_frame[..len]);
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

    /// Whether the guest is told the link is up.
    pub fn link_up(&self) -> bool {
        self.link_up
    }

    /// Takes the link down, once, when the backend closed for good.
    fn check_link(&mut self) {
        if !self.link_up || !self.backend.is_closed() {
            return;
        }
        self.link_up = false;
        log::warn!("virtio-net: the backend closed; the guest's link is down");
        if let Some(active) = self.link.active() {
            if let Err(e) = active
                .interrupt
                .trigger(crate::interrupt::InterruptType::ConfigChange)
            {
                error!("virtio-net: cannot signal the link change: {e}");
            }
        }
    }

    fn reconcile(&mut self, ops: &mut EventOps) {
        let desired = if self.link.is_active() && !self.backend.is_closed() {
            let mut set = EventSet::empty();
            if !self.backend_readable && self.rx_pending.is_none() {
                set |= EventSet::IN;
            }
            if self.backend.has_pending_output() {
                set |= EventSet::OUT;
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
    max_frame: usize,
) -> std::result::Result<(), TxError> {
    frame.clear();
    let mut total = 0usize;
    for d in &chain.descs {
        if d.is_write_only() {
            return Err(TxError::Malformed);
        }
        total = total.saturating_add(d.len() as usize);
    }
    if total > NET_HDR_LEN + max_frame {
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

/// Where the backend's bytes start in a header-and-frame buffer: after the
/// header for a plain backend (the device writes or drops the header
/// itself), at 0 for one that carries headers.
fn backend_offset(vnet_hdr: bool) -> usize {
    if vnet_hdr {
        0
    } else {
        NET_HDR_LEN
    }
}

/// Write `packet` (header and frame) into the chain's writable buffers; 0
/// if it does not fit. The header's `num_buffers` is set to 1.
fn scatter_rx(mem: &GuestMemoryMmap, chain: &Chain, packet: &mut [u8]) -> u32 {
    packet[10..12].copy_from_slice(&1u16.to_le_bytes());
    let total = packet.len();
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
    let mut rest: &[u8] = packet;
    for d in chain.descs.iter() {
        if rest.is_empty() {
            break;
        }
        let (now, later) = rest.split_at(rest.len().min(d.len() as usize));
        if mem.write_slice(now, d.addr()).is_err() {
            return 0;
        }
        rest = later;
    }
    total as u32
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn features(&self) -> u64 {
        let offloads = if self.vnet_hdr { OFFLOAD_FEATURES } else { 0 };
        device::VERSION_1 | (1 << VIRTIO_NET_F_MAC) | (1 << VIRTIO_NET_F_STATUS) | offloads
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_net_config: mac[6], then status (le16).
        let status = if self.link_up {
            VIRTIO_NET_S_LINK_UP as u16
        } else {
            0
        };
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&self.mac);
        config[6..].copy_from_slice(&status.to_le_bytes());
        device::read_config_bytes(&config, offset, data);
    }

    fn activate(&mut self, activation: Activation) -> device::Result<()> {
        if let Err(e) = self.backend.set_offloads(activation.acked_features) {
            // The backend keeps handing over plain frames: still correct.
            error!("virtio-net: cannot set the backend's offloads: {e}");
        }
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
            BACKEND_TOKEN => {
                if events.event_set().contains(EventSet::OUT) {
                    if let Err(e) = self.backend.flush() {
                        debug!("virtio-net: backend flush failed: {e}");
                    }
                }
                self.backend_readable = true;
            }
            q @ (0 | 1) => {
                if self.link.ack_queue_event(q) && q as usize == TX {
                    self.process_tx();
                }
            }
            other => debug!("virtio-net: unexpected event {other}"),
        }
        self.process_rx();
        self.check_link();
        self.reconcile(ops);
    }
}

#[cfg(test)]
mod tests;
