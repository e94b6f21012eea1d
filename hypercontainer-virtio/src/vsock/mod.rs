//! virtio-vsock with an in-process backend (no vhost).
//!
//! The host side is [`VsockHost`]: [`VsockHost::connect`] opens a stream to
//! a guest port and [`VsockHost::listen`] accepts guest connections to a
//! host port. Each connection is a `UnixStream` pair: the caller gets one
//! end (plain `Read`/`Write`), the device polls the other on its event loop
//! and relays to the guest.
//!
//! Flow control follows the virtio-vsock credit scheme: the device never
//! sends the guest more than the guest's advertised buffer space, buffers at
//! most [`BUF_ALLOC`] bytes per connection of guest data the host has not
//! read yet (a guest that overruns its credit is reset), and reports its
//! forwarded count often enough that the guest never stalls. Packets for
//! unknown connections are answered with RST; the number of connections and
//! of queued control packets is capped.

mod host;

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use log::{debug, error, warn};
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use virtio_vsock::packet::VsockPacket;
use vm_memory::WriteVolatile;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use self::host::{lock, log_reply, ConnectRequest, HostShared};
pub use self::host::{VsockHost, VsockListener};
use crate::device::{
    self, device_type, Activation, EventLoopLink, LinkChange, VirtioDevice, CONTROL_TOKEN,
};
use crate::GuestMemoryMmap;

/// The host's CID.
pub const HOST_CID: u64 = 2;
/// Queue size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Per-connection buffer the device advertises to the guest (guest data
/// not yet read by the host side).
pub const BUF_ALLOC: u32 = 256 * 1024;
/// Largest payload of one packet.
pub const MAX_PKT_DATA: u32 = 64 * 1024;
/// Default cap on simultaneous connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Most control packets (responses, resets, credit updates) waiting for
/// guest receive buffers; further ones are dropped.
pub const MAX_PENDING_CONTROL: usize = 4096;
/// Forwarded bytes after which the device volunteers a credit update.
const CREDIT_UPDATE_THRESHOLD: u32 = BUF_ALLOC / 4;
/// First host port handed out for host-initiated connections.
const FIRST_EPHEMERAL_PORT: u32 = 0x4000_0000;

const RX: usize = 0;
const TX: usize = 1;
const EVQ: usize = 2;
const HOST_TOKEN: u32 = 0x1_0000;
const CONN_TOKEN_BASE: u32 = 0x100_0000;

const TYPE_STREAM: u16 = 1;
/// Packet operations.
mod op {
    pub const REQUEST: u16 = 1;
    pub const RESPONSE: u16 = 2;
    pub const RST: u16 = 3;
    pub const SHUTDOWN: u16 = 4;
    pub const RW: u16 = 5;
    pub const CREDIT_UPDATE: u16 = 6;
    pub const CREDIT_REQUEST: u16 = 7;
}
/// `SHUTDOWN` flags.
const SHUTDOWN_RCV: u32 = 1;
const SHUTDOWN_SEND: u32 = 2;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The guest CID is reserved (0, 1, 2 and `u32::MAX` are).
    #[error("guest CID {0} is reserved")]
    InvalidCid(u64),
    /// Device plumbing failed.
    #[error("device setup failed")]
    Device(#[source] device::Error),
    /// The host request event fd could not be created.
    #[error("cannot create the host request event fd")]
    EventFd(#[source] io::Error),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Builds a [`Vsock`] device.
#[derive(Debug)]
pub struct VsockBuilder {
    guest_cid: u64,
    max_connections: usize,
}

impl VsockBuilder {
    /// Cap on simultaneous connections (default 1024).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// Validate and build.
    pub fn build(self) -> Result<Vsock> {
        if self.guest_cid <= HOST_CID || self.guest_cid >= u64::from(u32::MAX) {
            return Err(Error::InvalidCid(self.guest_cid));
        }
        Ok(Vsock {
            guest_cid: self.guest_cid,
            max_connections: self.max_connections,
            link: EventLoopLink::new().map_err(Error::Device)?,
            queue_sizes: [QUEUE_SIZE; 3],
            host: Arc::new(HostShared {
                requests: Mutex::new(VecDeque::new()),
                listeners: Mutex::new(HashMap::new()),
                evt: EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?,
            }),
            conns: HashMap::new(),
            tokens: HashMap::new(),
            next_token: CONN_TOKEN_BASE,
            next_port: FIRST_EPHEMERAL_PORT,
            control: VecDeque::new(),
            dead: Vec::new(),
            rr: VecDeque::new(),
            stats: VsockStats::default(),
        })
    }
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VsockStats {
    /// Resets sent to the guest.
    pub rst_sent: u64,
    /// Malformed or misaddressed guest packets dropped.
    pub dropped_packets: u64,
    /// Control packets dropped because too many were waiting.
    pub dropped_control: u64,
    /// Connections refused because of the connection cap.
    pub refused_connections: u64,
    /// Payload bytes guest to host.
    pub bytes_from_guest: u64,
    /// Payload bytes host to guest.
    pub bytes_to_guest: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    /// Host-initiated, waiting for the guest's RESPONSE.
    Connecting,
    Established,
    /// The device sent SHUTDOWN(both); waiting for the guest's RST.
    Closing,
}

/// Connection key: (host port, guest port).
type Key = (u32, u32);

struct Conn {
    key: Key,
    token: u32,
    stream: UnixStream,
    state: State,
    connect_reply: Option<mpsc::Sender<io::Result<()>>>,
    // Guest to host.
    tx_buf: VecDeque<u8>,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    credit_update_queued: bool,
    peer_shutdown_send: bool,
    peer_shutdown_rcv: bool,
    write_shut: bool,
    // Host to guest.
    rx_pending: Vec<u8>,
    rx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    host_readable: bool,
    host_eof: bool,
    host_hup: bool,
    // Epoll registration.
    registered: Option<EventSet>,
}

impl Conn {
    fn new(key: Key, token: u32, stream: UnixStream, state: State) -> Self {
        Self {
            key,
            token,
            stream,
            state,
            connect_reply: None,
            tx_buf: VecDeque::new(),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            credit_update_queued: false,
            peer_shutdown_send: false,
            peer_shutdown_rcv: false,
            write_shut: false,
            rx_pending: Vec::new(),
            rx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            host_readable: false,
            host_eof: false,
            host_hup: false,
            registered: None,
        }
    }

    /// Bytes the guest can still take.
    fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Push buffered guest data into the host stream. Returns false when
    /// the host end is gone.
    fn flush_tx(&mut self) -> bool {
        while !self.tx_buf.is_empty() {
            let (a, _) = self.tx_buf.as_slices();
            match self.stream.write(a) {
                Ok(0) => return false,
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.fwd_cnt += Wrapping(n as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        if self.tx_buf.is_empty() && self.peer_shutdown_send && !self.write_shut {
            let _ = self.stream.shutdown(Shutdown::Write);
            self.write_shut = true;
        }
        true
    }

    fn wants_credit_update(&self) -> bool {
        (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD
    }

    fn desired_interest(&self) -> Option<EventSet> {
        if self.host_hup || self.state == State::Connecting {
            return None;
        }
        let mut set = EventSet::empty();
        if !self.host_readable && !self.host_eof && self.rx_pending.is_empty() {
            set |= EventSet::IN;
        }
        if !self.tx_buf.is_empty() {
            set |= EventSet::OUT;
        }
        Some(set)
    }
}

/// A control packet waiting for a guest receive buffer.
#[derive(Clone, Copy, Debug)]
struct Control {
    key: Key,
    op: u16,
    flags: u32,
}

/// Header fields of a guest packet, copied out of guest memory once.
#[derive(Clone, Copy, Debug)]
struct Header {
    src_cid: u64,
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    len: u32,
    type_: u16,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
}

/// A virtio socket device.
pub struct Vsock {
    guest_cid: u64,
    max_connections: usize,
    link: EventLoopLink,
    queue_sizes: [u16; 3],
    host: Arc<HostShared>,
    conns: HashMap<Key, Conn>,
    tokens: HashMap<u32, Key>,
    next_token: u32,
    next_port: u32,
    control: VecDeque<Control>,
    /// Connections closed but maybe still in the epoll set.
    dead: Vec<Conn>,
    /// Round-robin order of connections with host data to send.
    rr: VecDeque<Key>,
    stats: VsockStats,
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("guest_cid", &self.guest_cid)
            .field("connections", &self.conns.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Vsock {
    /// Start building a device for a guest with CID `guest_cid` (3 or more).
    pub fn builder(guest_cid: u64) -> VsockBuilder {
        VsockBuilder {
            guest_cid,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }

    /// The host-side handle (connect, listen).
    pub fn host(&self) -> VsockHost {
        VsockHost {
            shared: self.host.clone(),
        }
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Counters.
    pub fn stats(&self) -> VsockStats {
        self.stats
    }

    fn queue_control(&mut self, key: Key, op: u16, flags: u32) {
        if self.control.len() >= MAX_PENDING_CONTROL {
            self.stats.dropped_control += 1;
            warn!("vsock: control packet queue full, dropping op {op} for {key:?}");
            return;
        }
        if op == op::RST {
            self.stats.rst_sent += 1;
        }
        self.control.push_back(Control { key, op, flags });
    }

    /// Close a connection: it leaves the table now, its fd leaves the epoll
    /// set on the next reconcile.
    fn close(&mut self, key: Key, send_rst: bool) {
        if let Some(mut conn) = self.conns.remove(&key) {
            self.tokens.remove(&conn.token);
            if let Some(reply) = conn.connect_reply.take() {
                log_reply(
                    &reply,
                    Err(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        "guest refused the connection",
                    )),
                );
            }
            self.dead.push(conn);
        }
        if send_rst {
            self.queue_control(key, op::RST, 0);
        }
    }

    fn alloc_token(&mut self) -> u32 {
        loop {
            let t = self.next_token;
            self.next_token = if t == u32::MAX - 1 {
                CONN_TOKEN_BASE
            } else {
                t + 1
            };
            if !self.tokens.contains_key(&t) {
                return t;
            }
        }
    }

    fn insert_conn(&mut self, key: Key, stream: UnixStream, state: State) -> &mut Conn {
        let token = self.alloc_token();
        self.tokens.insert(token, key);
        self.conns
            .entry(key)
            .or_insert_with(|| Conn::new(key, token, stream, state))
    }

    /// Handle host connect requests.
    fn process_host_requests(&mut self) {
        let _ = self.host.evt.read();
        let requests: Vec<ConnectRequest> = lock(&self.host.requests).drain(..).collect();
        for req in requests {
            if !self.link.is_active() {
                log_reply(
                    &req.reply,
                    Err(io::Error::new(
                        io::ErrorKind::NotConnected,
                        "vsock device is not active",
                    )),
                );
                continue;
            }
            if self.conns.len() >= self.max_connections {
                self.stats.refused_connections += 1;
                log_reply(
                    &req.reply,
                    Err(io::Error::other("too many vsock connections")),
                );
                continue;
            }
            let mut local = self.next_port;
            while self.conns.keys().any(|(l, _)| *l == local) {
                local = local.wrapping_add(1).max(FIRST_EPHEMERAL_PORT);
            }
            self.next_port = local.wrapping_add(1).max(FIRST_EPHEMERAL_PORT);
            let key = (local, req.port);
            let conn = self.insert_conn(key, req.stream, State::Connecting);
            conn.connect_reply = Some(req.reply);
            self.queue_control(key, op::REQUEST, 0);
        }
    }

    /// Handle every packet the guest transmitted.
    pub fn process_tx(&mut self) {
        let Some(active) = self.link.active() else {
            return;
        };
        let mem = active.mem.clone();
        let mut packets = Vec::new();
        {
            let queue = &mut active.queues[TX];
            loop {
                let chain = match queue.iter(mem.as_ref()) {
                    Ok(mut it) => it.next(),
                    Err(e) => {
                        error!("vsock: tx queue: {e}");
                        None
                    }
                };
                let Some(mut chain) = chain else { break };
                let head = chain.head_index();
                packets.push(parse_tx(mem.as_ref(), &mut chain));
                if let Err(e) = queue.add_used(mem.as_ref(), head, 0) {
                    error!("vsock: tx add_used: {e}");
                }
            }
        }
        if !packets.is_empty() {
            active.signal_used(TX);
        }
        for p in packets {
            match p {
                Some((hdr, data)) => self.handle_guest_packet(hdr, data),
                None => self.stats.dropped_packets += 1,
            }
        }
    }

    fn handle_guest_packet(&mut self, h: Header, data: Vec<u8>) {
        if h.src_cid != self.guest_cid || h.dst_cid != HOST_CID {
            debug!("vsock: misaddressed packet {}->{}", h.src_cid, h.dst_cid);
            self.stats.dropped_packets += 1;
            return;
        }
        let key = (h.dst_port, h.src_port);
        if h.type_ != TYPE_STREAM {
            if h.op != op::RST {
                self.queue_control(key, op::RST, 0);
            }
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            match h.op {
                op::REQUEST => self.accept_guest_connection(key, &h),
                op::RST => {}
                _ => self.queue_control(key, op::RST, 0),
            }
            return;
        };
        conn.peer_buf_alloc = h.buf_alloc;
        conn.peer_fwd_cnt = Wrapping(h.fwd_cnt);
        match h.op {
            op::RESPONSE if conn.state == State::Connecting => {
                conn.state = State::Established;
                if let Some(reply) = conn.connect_reply.take() {
                    log_reply(&reply, Ok(()));
                }
            }
            op::RST => self.close(key, false),
            op::SHUTDOWN => {
                conn.peer_shutdown_send |= h.flags & SHUTDOWN_SEND != 0;
                conn.peer_shutdown_rcv |= h.flags & SHUTDOWN_RCV != 0;
                if !conn.flush_tx() {
                    self.close(key, true);
                    return;
                }
                if conn.peer_shutdown_rcv && conn.peer_shutdown_send && conn.tx_buf.is_empty() {
                    self.close(key, true);
                }
            }
            op::RW if conn.state != State::Connecting => {
                if conn.peer_shutdown_send || conn.write_shut {
                    return;
                }
                let free = BUF_ALLOC as usize - conn.tx_buf.len();
                if data.len() > free {
                    warn!("vsock: guest overran its credit on {key:?}, resetting");
                    self.close(key, true);
                    return;
                }
                self.stats.bytes_from_guest += data.len() as u64;
                conn.tx_buf.extend(&data);
                if !conn.flush_tx() {
                    self.close(key, true);
                    return;
                }
                if conn.wants_credit_update() && !conn.credit_update_queued {
                    conn.credit_update_queued = true;
                    self.queue_control(key, op::CREDIT_UPDATE, 0);
                }
            }
            op::CREDIT_UPDATE => {}
            op::CREDIT_REQUEST => {
                if !conn.credit_update_queued {
                    conn.credit_update_queued = true;
                    self.queue_control(key, op::CREDIT_UPDATE, 0);
                }
            }
            other => {
                debug!("vsock: unexpected op {other} on {key:?}, resetting");
                self.close(key, true);
            }
        }
    }

    fn accept_guest_connection(&mut self, key: Key, h: &Header) {
        let listener = lock(&self.host.listeners).get(&key.0).cloned();
        let Some(listener) = listener else {
            self.queue_control(key, op::RST, 0);
            return;
        };
        if self.conns.len() >= self.max_connections {
            self.stats.refused_connections += 1;
            self.queue_control(key, op::RST, 0);
            return;
        }
        let pair = UnixStream::pair().and_then(|(user, dev)| {
            dev.set_nonblocking(true)?;
            Ok((user, dev))
        });
        let (user, dev) = match pair {
            Ok(p) => p,
            Err(e) => {
                error!("vsock: cannot create a stream pair: {e}");
                self.queue_control(key, op::RST, 0);
                return;
            }
        };
        if listener.try_send((user, key.1)).is_err() {
            debug!("vsock: listener on port {} is full or gone", key.0);
            self.queue_control(key, op::RST, 0);
            return;
        }
        let conn = self.insert_conn(key, dev, State::Established);
        conn.peer_buf_alloc = h.buf_alloc;
        conn.peer_fwd_cnt = Wrapping(h.fwd_cnt);
        self.queue_control(key, op::RESPONSE, 0);
    }

    /// A connection's host stream became ready.
    fn process_conn_event(&mut self, token: u32, set: EventSet) {
        let Some(&key) = self.tokens.get(&token) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if set.contains(EventSet::IN) {
            conn.host_readable = true;
        }
        if set.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            if conn.host_eof {
                // The guest already saw EOF; the host end is gone entirely.
                self.close(key, true);
                return;
            }
            conn.host_hup = true;
            conn.host_readable = true;
            // Nobody reads guest data any more.
            conn.tx_buf.clear();
        }
        if set.contains(EventSet::OUT) && !conn.flush_tx() {
            self.close(key, true);
            return;
        }
        if conn.wants_credit_update() && !conn.credit_update_queued {
            conn.credit_update_queued = true;
            self.queue_control(key, op::CREDIT_UPDATE, 0);
        }
    }

    /// Fill guest receive buffers: control packets first, then host data,
    /// round robin over the connections, within each guest's credit.
    pub fn process_rx(&mut self) {
        let Some(active) = self.link.active() else {
            return;
        };
        let mem = active.mem.clone();
        let mut used_any = false;
        while let Some(item) = next_rx_item(
            &mut self.control,
            &mut self.conns,
            &mut self.rr,
            &mut self.stats,
        ) {
            let queue = &mut active.queues[RX];
            let chain = match queue.iter(mem.as_ref()) {
                Ok(mut it) => it.next(),
                Err(e) => {
                    error!("vsock: rx queue: {e}");
                    None
                }
            };
            let Some(mut chain) = chain else {
                // No buffers: put the item back and wait for the guest.
                if let RxItem::Control(c) = item {
                    self.control.push_front(c);
                }
                break;
            };
            let head = chain.head_index();
            let len = write_rx(
                mem.as_ref(),
                &mut chain,
                self.guest_cid,
                &item,
                &mut self.conns,
                &mut self.stats,
            );
            if let Err(e) = queue.add_used(mem.as_ref(), head, len) {
                error!("vsock: rx add_used: {e}");
            }
            used_any = true;
        }
        if used_any {
            active.signal_used(RX);
        }
    }

    /// Bring the epoll set in line with what each connection waits for.
    fn reconcile(&mut self, ops: &mut EventOps) {
        for conn in self.dead.drain(..) {
            if conn.registered.is_some() {
                let _ = ops.remove(Events::empty(&conn.stream));
            }
        }
        let mut to_close = Vec::new();
        for conn in self.conns.values_mut() {
            let desired = conn.desired_interest();
            if desired == conn.registered {
                continue;
            }
            let result = match (conn.registered, desired) {
                (Some(_), None) => ops.remove(Events::empty(&conn.stream)),
                (None, Some(set)) => ops.add(Events::with_data(&conn.stream, conn.token, set)),
                (Some(_), Some(set)) => {
                    ops.modify(Events::with_data(&conn.stream, conn.token, set))
                }
                (None, None) => Ok(()),
            };
            match result {
                Ok(()) => conn.registered = desired,
                Err(e) => {
                    error!(
                        "vsock: epoll update for fd {} failed: {e:?}",
                        conn.stream.as_raw_fd()
                    );
                    to_close.push(conn.key);
                }
            }
        }
        for key in to_close {
            self.close(key, true);
        }
        // Closed connections whose fds were registered in this pass.
        for conn in self.dead.drain(..) {
            if conn.registered.is_some() {
                let _ = ops.remove(Events::empty(&conn.stream));
            }
        }
    }

    fn reset_connections(&mut self) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for key in keys {
            self.close(key, false);
        }
        self.control.clear();
        self.rr.clear();
    }
}

enum RxItem {
    Control(Control),
    Data(Key),
}

/// Pick what to send next: a control packet, or data from a connection
/// (reading from its host stream as needed).
fn next_rx_item(
    control: &mut VecDeque<Control>,
    conns: &mut HashMap<Key, Conn>,
    rr: &mut VecDeque<Key>,
    stats: &mut VsockStats,
) -> Option<RxItem> {
    if let Some(c) = control.pop_front() {
        return Some(RxItem::Control(c));
    }
    // Refresh the round-robin list with connections that may have data.
    for (key, conn) in conns.iter() {
        let may_send = conn.state == State::Established
            && (!conn.rx_pending.is_empty() || (conn.host_readable && !conn.host_eof));
        if may_send && !rr.contains(key) {
            rr.push_back(*key);
        }
    }
    let rounds = rr.len();
    for _ in 0..rounds {
        let key = rr.pop_front()?;
        let Some(conn) = conns.get_mut(&key) else {
            continue;
        };
        if conn.state != State::Established {
            continue;
        }
        let credit = conn.peer_credit() as usize;
        if conn.rx_pending.is_empty() && conn.host_readable && !conn.host_eof {
            let want = credit.min(MAX_PKT_DATA as usize);
            if want == 0 {
                // Waits for a credit update from the guest.
                continue;
            }
            conn.rx_pending.resize(want, 0);
            match conn.stream.read(&mut conn.rx_pending) {
                Ok(0) => {
                    conn.rx_pending.clear();
                    conn.host_eof = true;
                    conn.host_readable = false;
                    let flags = if conn.host_hup {
                        SHUTDOWN_SEND | SHUTDOWN_RCV
                    } else {
                        SHUTDOWN_SEND
                    };
                    if conn.host_hup {
                        conn.state = State::Closing;
                    }
                    return Some(RxItem::Control(Control {
                        key,
                        op: op::SHUTDOWN,
                        flags,
                    }));
                }
                Ok(n) => conn.rx_pending.truncate(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.rx_pending.clear();
                    conn.host_readable = false;
                    continue;
                }
                Err(e) => {
                    debug!("vsock: host stream read failed: {e}");
                    conn.rx_pending.clear();
                    conn.host_readable = false;
                    conn.host_eof = true;
                    stats.rst_sent += 1;
                    return Some(RxItem::Control(Control {
                        key,
                        op: op::RST,
                        flags: 0,
                    }));
                }
            }
        }
        if !conn.rx_pending.is_empty() && credit > 0 {
            rr.push_back(key);
            return Some(RxItem::Data(key));
        }
    }
    None
}

/// Write one packet into an RX chain; returns the used length.
fn write_rx(
    mem: &GuestMemoryMmap,
    chain: &mut DescriptorChain<&GuestMemoryMmap>,
    guest_cid: u64,
    item: &RxItem,
    conns: &mut HashMap<Key, Conn>,
    stats: &mut VsockStats,
) -> u32 {
    let mut pkt = match VsockPacket::from_rx_virtq_chain(mem, chain, MAX_PKT_DATA) {
        Ok(p) => p,
        Err(e) => {
            debug!("vsock: unusable rx buffer: {e}");
            return 0;
        }
    };
    let (key, op, flags) = match item {
        RxItem::Control(c) => (c.key, c.op, c.flags),
        RxItem::Data(key) => (*key, op::RW, 0),
    };
    pkt.set_src_cid(HOST_CID)
        .set_dst_cid(guest_cid)
        .set_src_port(key.0)
        .set_dst_port(key.1)
        .set_type(TYPE_STREAM)
        .set_op(op)
        .set_flags(flags)
        .set_len(0)
        .set_buf_alloc(0)
        .set_fwd_cnt(0);
    let Some(conn) = conns.get_mut(&key) else {
        // RST for a connection that does not (or no longer) exist.
        return virtio_vsock::packet::PKT_HEADER_SIZE as u32;
    };
    pkt.set_buf_alloc(BUF_ALLOC).set_fwd_cnt(conn.fwd_cnt.0);
    conn.last_fwd_cnt_sent = conn.fwd_cnt;
    conn.credit_update_queued = false;
    let mut data_len = 0u32;
    if op == op::RW {
        if let Some(slice) = pkt.data_slice() {
            let n = slice.len().min(conn.rx_pending.len());
            slice.copy_from(&conn.rx_pending[..n]);
            conn.rx_pending.drain(..n);
            data_len = n as u32;
        }
        conn.rx_cnt += Wrapping(data_len);
        stats.bytes_to_guest += u64::from(data_len);
        pkt.set_len(data_len);
    }
    virtio_vsock::packet::PKT_HEADER_SIZE as u32 + data_len
}

/// Parse a TX chain into a header and its payload. `None` drops it.
fn parse_tx(
    mem: &GuestMemoryMmap,
    chain: &mut DescriptorChain<&GuestMemoryMmap>,
) -> Option<(Header, Vec<u8>)> {
    let pkt = match VsockPacket::from_tx_virtq_chain(mem, chain, MAX_PKT_DATA) {
        Ok(p) => p,
        Err(e) => {
            debug!("vsock: malformed tx packet: {e}");
            return None;
        }
    };
    let h = Header {
        src_cid: pkt.src_cid(),
        dst_cid: pkt.dst_cid(),
        src_port: pkt.src_port(),
        dst_port: pkt.dst_port(),
        len: pkt.len(),
        type_: pkt.type_(),
        op: pkt.op(),
        flags: pkt.flags(),
        buf_alloc: pkt.buf_alloc(),
        fwd_cnt: pkt.fwd_cnt(),
    };
    let mut data = Vec::new();
    if h.op == op::RW && h.len > 0 {
        let slice = pkt.data_slice()?;
        data.resize(slice.len(), 0);
        let mut cursor: &mut [u8] = &mut data;
        if cursor.write_volatile(slice).ok()? != slice.len() {
            return None;
        }
    }
    Some((h, data))
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn features(&self) -> u64 {
        device::VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        device::read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, activation: Activation) -> device::Result<()> {
        self.link.activate(activation, 3)
    }

    fn reset(&mut self) {
        self.reset_connections();
        self.link.reset();
    }

    fn is_active(&self) -> bool {
        self.link.is_active()
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        self.link.init(ops);
        if let Err(e) = ops.add(Events::with_data(&self.host.evt, HOST_TOKEN, EventSet::IN)) {
            error!("vsock: cannot register the host request event: {e:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            CONTROL_TOKEN => {
                if let LinkChange::Reset = self.link.sync(ops) {
                    self.reset_connections();
                }
                if self.link.is_active() {
                    self.process_tx();
                }
            }
            HOST_TOKEN => self.process_host_requests(),
            q @ 0..=2 => {
                if !self.link.ack_queue_event(q) {
                    return;
                }
                match q as usize {
                    TX => self.process_tx(),
                    RX | EVQ => {}
                    _ => {}
                }
            }
            token if token >= CONN_TOKEN_BASE => {
                self.process_conn_event(token, events.event_set());
            }
            other => debug!("vsock: unexpected event {other}"),
        }
        self.process_rx();
        self.reconcile(ops);
    }
}

#[cfg(test)]
mod tests;
