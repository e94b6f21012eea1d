//! Unit tests: the device on a real event loop, the guest played through
//! virtio-queue's mock driver.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventManager, SubscriberOps};
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::test_utils::{
    activation, add_chain, guest_memory, used_entry, MockInterrupt, TestDesc, TestQueue,
};

const GUEST_CID: u64 = 3;
const HDR_LEN: u32 = 44;
const RX_BASE: u64 = 0x10_0000;
const TX_BASE: u64 = 0x100_0000;
const SLOT: u64 = 0x1_1000;
const SLOTS: u16 = 100;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Pkt {
    src_cid: u64,
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    type_: u16,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
    data: Vec<u8>,
}

impl Pkt {
    fn guest(src_port: u32, dst_port: u32, op: u16) -> Self {
        Self {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            type_: TYPE_STREAM,
            op,
            buf_alloc: 1 << 20,
            ..Default::default()
        }
    }

    fn encode(&self) -> [u8; 44] {
        let mut h = [0u8; 44];
        h[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        h[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        h[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        h[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        h[24..28].copy_from_slice(&(self.data.len() as u32).to_le_bytes());
        h[28..30].copy_from_slice(&self.type_.to_le_bytes());
        h[30..32].copy_from_slice(&self.op.to_le_bytes());
        h[32..36].copy_from_slice(&self.flags.to_le_bytes());
        h[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        h[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        h
    }

    fn decode(h: &[u8; 44], data: Vec<u8>) -> Self {
        let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().unwrap());
        let u16_at = |o: usize| u16::from_le_bytes(h[o..o + 2].try_into().unwrap());
        Self {
            src_cid: u64::from_le_bytes(h[0..8].try_into().unwrap()),
            dst_cid: u64::from_le_bytes(h[8..16].try_into().unwrap()),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
            data,
        }
    }
}

/// The device on an event loop, and a guest driver for it.
struct Harness<'m> {
    mem: &'m Arc<GuestMemoryMmap>,
    dev: Arc<Mutex<Vsock>>,
    em: EventManager<Arc<Mutex<Vsock>>>,
    rx: TestQueue<'m>,
    tx: TestQueue<'m>,
    tx_evt: EventFd,
    rx_evt: EventFd,
    rx_given: u16,
    rx_seen: u16,
    tx_sent: u16,
}

fn memory() -> Arc<GuestMemoryMmap> {
    Arc::new(guest_memory(32 << 20))
}

impl<'m> Harness<'m> {
    fn new(mem: &'m Arc<GuestMemoryMmap>, max_connections: usize) -> Self {
        let dev = Arc::new(Mutex::new(
            Vsock::builder(GUEST_CID)
                .max_connections(max_connections)
                .build()
                .unwrap(),
        ));
        let mut em = EventManager::new().unwrap();
        em.add_subscriber(dev.clone());
        let rx = TestQueue::create(mem.as_ref(), GuestAddress(0), 256);
        let tx = TestQueue::create(mem.as_ref(), GuestAddress(0x1_0000), 256);
        let ev = TestQueue::create(mem.as_ref(), GuestAddress(0x2_0000), 256);
        let queues: Vec<Queue> = vec![rx.create_queue(), tx.create_queue(), ev.create_queue()];
        let a = activation(
            mem,
            queues,
            Arc::new(MockInterrupt::new()),
            VERSION_1_FEATURE,
        );
        let rx_evt = a.queue_events[RX].try_clone().unwrap();
        let tx_evt = a.queue_events[TX].try_clone().unwrap();
        dev.lock().unwrap().activate(a).unwrap();
        let mut h = Self {
            mem,
            dev,
            em,
            rx,
            tx,
            tx_evt,
            rx_evt,
            rx_given: 0,
            rx_seen: 0,
            tx_sent: 0,
        };
        h.pump();
        h
    }

    fn pump(&mut self) {
        for _ in 0..100 {
            if self.em.run_with_timeout(0).unwrap() == 0 {
                break;
            }
        }
    }

    fn give_rx(&mut self, n: u16) {
        for _ in 0..n {
            // Never more buffers outstanding than slots: a slot is reused
            // only after the device has returned it and it has been read.
            if self.rx_given.wrapping_sub(self.rx_seen) >= SLOTS {
                break;
            }
            let slot = self.rx_given % SLOTS;
            let hdr = RX_BASE + u64::from(slot) * SLOT;
            add_chain(
                &self.rx,
                slot * 2,
                &[
                    TestDesc::write(hdr, HDR_LEN),
                    TestDesc::write(hdr + 0x1000, 0x1_0000),
                ],
            );
            self.rx_given += 1;
        }
        self.rx_evt.write(1).unwrap();
        self.pump();
    }

    fn send_raw(&mut self, descs: &[TestDesc]) {
        let slot = self.tx_sent % SLOTS;
        add_chain(&self.tx, slot * 2, descs);
        self.tx_sent += 1;
        self.tx_evt.write(1).unwrap();
        self.pump();
    }

    fn tx_slot_addr(&self) -> u64 {
        TX_BASE + u64::from(self.tx_sent % SLOTS) * SLOT
    }

    fn send(&mut self, p: &Pkt) {
        let hdr = self.tx_slot_addr();
        self.mem
            .write_slice(&p.encode(), GuestAddress(hdr))
            .unwrap();
        self.mem
            .write_slice(&p.data, GuestAddress(hdr + 0x1000))
            .unwrap();
        let mut descs = vec![TestDesc::read(hdr, HDR_LEN)];
        if !p.data.is_empty() {
            descs.push(TestDesc::read(hdr + 0x1000, p.data.len() as u32));
        }
        self.send_raw(&descs);
    }

    fn recv(&mut self) -> Vec<Pkt> {
        self.pump();
        let mut out = Vec::new();
        while let Some((head, len)) = used_entry(&self.rx, self.rx_seen) {
            self.rx_seen = self.rx_seen.wrapping_add(1);
            let hdr_addr = RX_BASE + u64::from(head as u16 / 2) * SLOT;
            let mut h = [0u8; 44];
            self.mem.read_slice(&mut h, GuestAddress(hdr_addr)).unwrap();
            let data_len = len.saturating_sub(HDR_LEN) as usize;
            let mut data = vec![0u8; data_len];
            self.mem
                .read_slice(&mut data, GuestAddress(hdr_addr + 0x1000))
                .unwrap();
            let p = Pkt::decode(&h, data);
            let declared = u32::from_le_bytes(h[24..28].try_into().unwrap());
            assert_eq!(declared as usize, p.data.len());
            out.push(p);
        }
        out
    }

    fn stats(&self) -> VsockStats {
        self.dev.lock().unwrap().stats()
    }

    /// Guest connects to a host listener on `port`; returns the host stream.
    fn guest_connect(&mut self, listener: &VsockListener, guest_port: u32) -> UnixStream {
        self.send(&Pkt::guest(guest_port, listener.port(), op::REQUEST));
        let pkts = self.recv();
        assert_eq!(pkts.len(), 1, "{pkts:?}");
        assert_eq!(pkts[0].op, op::RESPONSE);
        let (stream, port) = listener.accept(Duration::from_secs(1)).unwrap();
        assert_eq!(port, guest_port);
        stream
    }
}

const VERSION_1_FEATURE: u64 = device::VERSION_1;

#[test]
fn config_space_holds_the_guest_cid() {
    let dev = Vsock::builder(42).build().unwrap();
    let mut cid = [0u8; 8];
    dev.read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), 42);
    assert!(matches!(
        Vsock::builder(2).build(),
        Err(Error::InvalidCid(2))
    ));
    assert!(matches!(
        Vsock::builder(u64::from(u32::MAX)).build(),
        Err(Error::InvalidCid(_))
    ));
}

#[test]
fn guest_connection_to_host_listener_carries_data_both_ways() {
    let mem = memory();
    let mut h = Harness::new(&mem, 16);
    let host = h.dev.lock().unwrap().host();
    let listener = host.listen(1234, 4).unwrap();
    assert_eq!(
        host.listen(1234, 4).unwrap_err().kind(),
        io::ErrorKind::AddrInUse
    );
    h.give_rx(8);
    let mut stream = h.guest_connect(&listener, 5000);

    // Guest to host.
    let mut p = Pkt::guest(5000, 1234, op::RW);
    p.data = b"hello from the guest".to_vec();
    h.send(&p);
    let mut buf = [0u8; 20];
    stream.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello from the guest");

    // Host to guest.
    stream.write_all(b"hello from the host").unwrap();
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    let r = &pkts[0];
    assert_eq!(
        (r.src_cid, r.dst_cid, r.src_port, r.dst_port),
        (HOST_CID, GUEST_CID, 1234, 5000)
    );
    assert_eq!(r.op, op::RW);
    assert_eq!(r.data, b"hello from the host");
    assert_eq!(r.buf_alloc, BUF_ALLOC);
    assert_eq!(r.fwd_cnt, 20);
    assert_eq!(h.dev.lock().unwrap().connection_count(), 1);

    // Guest closes: the host reads EOF and the device answers with RST.
    let mut p = Pkt::guest(5000, 1234, op::SHUTDOWN);
    p.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    h.send(&p);
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    let pkts = h.recv();
    assert_eq!(pkts.iter().map(|p| p.op).collect::<Vec<_>>(), vec![op::RST]);
    assert_eq!(h.dev.lock().unwrap().connection_count(), 0);
}

#[test]
fn unknown_ports_and_bad_packets_get_rst_or_are_dropped() {
    let mem = memory();
    let mut h = Harness::new(&mem, 16);
    h.give_rx(8);
    // Request to a port nobody listens on.
    h.send(&Pkt::guest(5000, 999, op::REQUEST));
    // Data for a connection that does not exist.
    let mut p = Pkt::guest(5001, 999, op::RW);
    p.data = vec![1; 10];
    h.send(&p);
    // A non-stream type.
    let mut p = Pkt::guest(5002, 999, op::REQUEST);
    p.type_ = 2;
    h.send(&p);
    let pkts = h.recv();
    assert_eq!(pkts.len(), 3);
    for (p, port) in pkts.iter().zip([5000, 5001, 5002]) {
        assert_eq!((p.op, p.dst_port, p.src_port), (op::RST, port, 999));
    }
    // RST for an unknown connection is not answered; misaddressed packets
    // (wrong source or destination CID) are dropped.
    h.send(&Pkt::guest(5000, 999, op::RST));
    let mut p = Pkt::guest(5000, 999, op::REQUEST);
    p.src_cid = 77;
    h.send(&p);
    let mut p = Pkt::guest(5000, 999, op::REQUEST);
    p.dst_cid = 5;
    h.send(&p);
    assert!(h.recv().is_empty());
    assert_eq!(h.stats().dropped_packets, 2);
}

#[test]
fn hostile_tx_chains_are_dropped() {
    let mem = memory();
    let mut h = Harness::new(&mem, 16);
    h.give_rx(8);
    let addr = h.tx_slot_addr();
    let mut p = Pkt::guest(5000, 999, op::RW);
    p.data = vec![0; 16];
    mem.write_slice(&p.encode(), GuestAddress(addr)).unwrap();
    // Header shorter than 44 bytes.
    h.send_raw(&[TestDesc::read(addr, 20)]);
    // Header in a device-writable buffer.
    h.send_raw(&[TestDesc::write(addr, HDR_LEN)]);
    // Header outside guest memory, and at an overflowing address.
    h.send_raw(&[TestDesc::read(1 << 40, HDR_LEN)]);
    h.send_raw(&[TestDesc::read(u64::MAX - 10, HDR_LEN)]);
    // Declared data longer than the data buffer.
    h.send_raw(&[
        TestDesc::read(addr, HDR_LEN),
        TestDesc::read(addr + 0x1000, 8),
    ]);
    // Data buffer outside guest memory.
    h.send_raw(&[TestDesc::read(addr, HDR_LEN), TestDesc::read(1 << 40, 16)]);
    // Data missing.
    h.send_raw(&[TestDesc::read(addr, HDR_LEN)]);
    // Oversized payload.
    let mut big = Pkt::guest(5000, 999, op::RW);
    big.data = vec![0; MAX_PKT_DATA as usize + 1];
    let a = h.tx_slot_addr();
    mem.write_slice(&big.encode(), GuestAddress(a)).unwrap();
    h.send_raw(&[
        TestDesc::read(a, HDR_LEN),
        TestDesc::read(a + 0x1000, MAX_PKT_DATA + 1),
    ]);
    assert_eq!(h.stats().dropped_packets, 8);
    assert!(h.recv().is_empty());
    // The device still works.
    h.send(&Pkt::guest(5000, 999, op::REQUEST));
    assert_eq!(h.recv()[0].op, op::RST);
}

#[test]
fn host_connects_to_a_guest_port() {
    let mem = memory();
    let mut h = Harness::new(&mem, 16);
    h.give_rx(8);
    let host = h.dev.lock().unwrap().host();
    let connector = std::thread::spawn(move || host.connect(52, Duration::from_secs(5)));
    // Play the guest: wait for the REQUEST, accept it.
    let mut req = None;
    for _ in 0..500 {
        if let Some(p) = h.recv().into_iter().next() {
            req = Some(p);
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let req = req.expect("no connection request reached the guest");
    assert_eq!(
        (req.op, req.dst_port, req.dst_cid),
        (op::REQUEST, 52, GUEST_CID)
    );
    let host_port = req.src_port;
    let mut resp = Pkt::guest(52, host_port, op::RESPONSE);
    resp.buf_alloc = 4096;
    h.send(&resp);
    let mut stream = connector.join().unwrap().unwrap();
    let mut p = Pkt::guest(52, host_port, op::RW);
    p.data = b"ping".to_vec();
    h.send(&p);
    let mut b = [0u8; 4];
    stream.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping");

    // Host closes: the guest sees SHUTDOWN, answers RST, the connection goes.
    drop(stream);
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!(pkts[0].op, op::SHUTDOWN);
    assert_eq!(pkts[0].flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
    h.send(&Pkt::guest(52, host_port, op::RST));
    assert_eq!(h.dev.lock().unwrap().connection_count(), 0);
}

#[test]
fn host_connect_refused_or_inactive() {
    let mem = memory();
    let mut h = Harness::new(&mem, 16);
    h.give_rx(8);
    let host = h.dev.lock().unwrap().host();
    let connector = std::thread::spawn(move || host.connect(53, Duration::from_secs(5)));
    let mut req = None;
    for _ in 0..500 {
        if let Some(p) = h.recv().into_iter().next() {
            req = Some(p);
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let req = req.unwrap();
    h.send(&Pkt::guest(53, req.src_port, op::RST));
    let err = connector.join().unwrap().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);

    // After a reset the device is inactive: connect fails at once.
    h.dev.lock().unwrap().reset();
    h.pump();
    let host = h.dev.lock().unwrap().host();
    let connector = std::thread::spawn(move || host.connect(53, Duration::from_secs(5)));
    let mut result = None;
    for _ in 0..500 {
        h.pump();
        if connector.is_finished() {
            result = Some(connector.join().unwrap());
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(
        result.unwrap().unwrap_err().kind(),
        io::ErrorKind::NotConnected
    );
}

#[test]
fn host_to_guest_data_respects_guest_credit() {
    let mem = memory();
    let mut h = Harness::new(&mem, 16);
    let host = h.dev.lock().unwrap().host();
    let listener = host.listen(1, 1).unwrap();
    h.give_rx(64);
    let mut req = Pkt::guest(7, 1, op::REQUEST);
    req.buf_alloc = 100_000;
    h.send(&req);
    assert_eq!(h.recv()[0].op, op::RESPONSE);
    let (stream, _) = listener.accept(Duration::from_secs(1)).unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let writer = {
        let data = data.clone();
        let mut s = stream.try_clone().unwrap();
        std::thread::spawn(move || s.write_all(&data).unwrap())
    };
    let mut got = Vec::new();
    for _ in 0..200 {
        got.extend(h.recv().into_iter().flat_map(|p| p.data));
        std::thread::sleep(Duration::from_millis(2));
    }
    // Exactly the guest's buffer, not a byte more.
    assert_eq!(got.len(), 100_000);
    // The guest consumed it all: credit for another 100 000 bytes.
    let mut upd = Pkt::guest(7, 1, op::CREDIT_UPDATE);
    upd.buf_alloc = 100_000;
    upd.fwd_cnt = 100_000;
    h.send(&upd);
    for _ in 0..200 {
        got.extend(h.recv().into_iter().flat_map(|p| p.data));
        if got.len() >= 200_000 {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(got.len(), 200_000);
    upd.buf_alloc = 1 << 20;
    h.send(&upd);
    for _ in 0..500 {
        got.extend(h.recv().into_iter().flat_map(|p| p.data));
        if got.len() >= data.len() {
            break;
        }
        h.give_rx(8);
        std::thread::sleep(Duration::from_millis(2));
    }
    writer.join().unwrap();
    assert_eq!(got, data);
}

#[test]
fn guest_to_host_credit_is_reported_and_enforced() {
    let mem = memory();
    let mut h = Harness::new(&mem, 16);
    let host = h.dev.lock().unwrap().host();
    let listener = host.listen(1, 1).unwrap();
    h.give_rx(32);
    let mut stream = h.guest_connect(&listener, 9);
    // The host reads everything: the device volunteers credit updates.
    let mut sent = 0u32;
    for _ in 0..8 {
        let mut p = Pkt::guest(9, 1, op::RW);
        p.data = vec![0xab; 60_000];
        h.send(&p);
        sent += 60_000;
        let mut buf = vec![0u8; 60_000];
        stream.read_exact(&mut buf).unwrap();
    }
    h.pump();
    let updates: Vec<Pkt> = h
        .recv()
        .into_iter()
        .filter(|p| p.op == op::CREDIT_UPDATE)
        .collect();
    assert!(!updates.is_empty());
    let last = updates.last().unwrap();
    assert!(sent - last.fwd_cnt < CREDIT_UPDATE_THRESHOLD);
    // A credit request is answered with the exact forwarded count.
    h.send(&Pkt::guest(9, 1, op::CREDIT_REQUEST));
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!((pkts[0].op, pkts[0].fwd_cnt), (op::CREDIT_UPDATE, sent));

    // The host stops reading; once the socket buffer and the device's
    // buffer are full, the guest overruns the advertised credit.
    for _ in 0..16 {
        let mut p = Pkt::guest(9, 1, op::RW);
        p.data = vec![0xcd; 60_000];
        h.send(&p);
    }
    let pkts = h.recv();
    assert!(
        pkts.iter().any(|p| p.op == op::RST),
        "{:?}",
        pkts.iter().map(|p| p.op).collect::<Vec<_>>()
    );
    assert_eq!(h.dev.lock().unwrap().connection_count(), 0);
}

#[test]
fn connection_count_is_capped() {
    let mem = memory();
    let mut h = Harness::new(&mem, 2);
    let host = h.dev.lock().unwrap().host();
    let listener = host.listen(1, 8).unwrap();
    h.give_rx(8);
    let _a = h.guest_connect(&listener, 100);
    let _b = h.guest_connect(&listener, 101);
    h.send(&Pkt::guest(102, 1, op::REQUEST));
    let pkts = h.recv();
    assert_eq!((pkts[0].op, pkts[0].dst_port), (op::RST, 102));
    assert_eq!(h.stats().refused_connections, 1);
}

#[test]
fn control_packets_wait_for_rx_buffers() {
    let mem = memory();
    let mut h = Harness::new(&mem, 16);
    for port in 0..5 {
        h.send(&Pkt::guest(port, 999, op::REQUEST));
    }
    assert!(h.recv().is_empty());
    h.give_rx(2);
    assert_eq!(h.recv().len(), 2);
    h.give_rx(8);
    assert_eq!(h.recv().len(), 3);
}

#[test]
fn reset_closes_host_streams() {
    let mem = memory();
    let mut h = Harness::new(&mem, 16);
    let host = h.dev.lock().unwrap().host();
    let listener = host.listen(1, 1).unwrap();
    h.give_rx(4);
    let mut stream = h.guest_connect(&listener, 9);
    h.dev.lock().unwrap().reset();
    h.pump();
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).unwrap();
    assert!(buf.is_empty());
    assert_eq!(h.dev.lock().unwrap().connection_count(), 0);
}

#[test]
fn echo_a_few_mib_both_ways() {
    const TOTAL: usize = 4 << 20;
    let mem = memory();
    let mut h = Harness::new(&mem, 16);
    let host = h.dev.lock().unwrap().host();
    let listener = host.listen(7, 1).unwrap();
    h.give_rx(16);
    let mut req = Pkt::guest(4000, 7, op::REQUEST);
    req.buf_alloc = 256 * 1024;
    h.send(&req);
    assert_eq!(h.recv()[0].op, op::RESPONSE);
    let (stream, _) = listener.accept(Duration::from_secs(1)).unwrap();
    let data: Vec<u8> = (0..TOTAL).map(|i| (i * 7 % 251) as u8).collect();

    // Host echoes everything it reads back to the guest.
    let echo = {
        let mut r = stream.try_clone().unwrap();
        let mut w = stream;
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            let mut n_total = 0;
            while n_total < TOTAL {
                let n = r.read(&mut buf).unwrap();
                assert!(n > 0);
                w.write_all(&buf[..n]).unwrap();
                n_total += n;
            }
            // Handed back so the connection stays open until the checks
            // below: closing it ends the connection (SHUTDOWN, then RST).
            w
        })
    };

    // Guest: send in 60 000-byte packets within the device's credit, read
    // the echo, return credit as it consumes.
    let mut sent = 0usize;
    let mut peer_fwd = 0u32;
    let mut got = Vec::with_capacity(TOTAL);
    let mut consumed = 0u32;
    for _ in 0..20_000 {
        if sent < TOTAL {
            let credit = BUF_ALLOC - (sent as u32 - peer_fwd);
            let n = (TOTAL - sent).min(60_000).min(credit as usize);
            if n > 0 {
                let mut p = Pkt::guest(4000, 7, op::RW);
                p.buf_alloc = 256 * 1024;
                p.fwd_cnt = consumed;
                p.data = data[sent..sent + n].to_vec();
                h.send(&p);
                sent += n;
            }
        }
        let pkts = h.recv();
        let mut read_now = 0;
        for p in pkts {
            peer_fwd = p.fwd_cnt;
            if p.op == op::RW {
                read_now += p.data.len();
                got.extend(p.data);
            }
        }
        if read_now > 0 {
            consumed += read_now as u32;
            let mut upd = Pkt::guest(4000, 7, op::CREDIT_UPDATE);
            upd.buf_alloc = 256 * 1024;
            upd.fwd_cnt = consumed;
            h.send(&upd);
            h.give_rx(read_now.div_ceil(65536) as u16 + 1);
        }
        if got.len() >= TOTAL {
            break;
        }
        if read_now == 0 {
            std::thread::sleep(Duration::from_micros(200));
            h.give_rx(1);
        }
    }
    let stream = echo.join().unwrap();
    assert_eq!(got.len(), TOTAL);
    assert!(got == data, "echoed data differs");
    let stats = h.stats();
    assert_eq!(stats.rst_sent, 0, "{stats:?}");
    assert_eq!(stats.bytes_from_guest, TOTAL as u64);
    drop(stream);
}
