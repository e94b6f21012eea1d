//! Tests of the virtio-net device against the mock driver.

use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestAddress;

use super::*;
use crate::test_utils::TestQueue;
use crate::test_utils::{
    activation, add_chain, guest_memory, used_entry, DatagramBackend, MockInterrupt, TestDesc,
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
fn the_link_goes_down_when_a_stream_backend_closes() {
    let mem = Arc::new(guest_memory(1 << 20));
    let (dev_end, peer) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut net = Net::builder(Box::new(StreamBackend::new(dev_end).unwrap()))
        .build()
        .unwrap();
    assert_ne!(net.features() & (1 << VIRTIO_NET_F_STATUS), 0);
    let status = |net: &Net| {
        let mut s = [0u8; 2];
        net.read_config(6, &mut s);
        u16::from_le_bytes(s)
    };
    assert_eq!(status(&net), VIRTIO_NET_S_LINK_UP as u16);
    let rx = TestQueue::create(mem.as_ref(), GuestAddress(0), 16);
    let tx = TestQueue::create(mem.as_ref(), GuestAddress(0x4000), 16);
    let interrupt = Arc::new(MockInterrupt::new());
    net.activate(activation(
        &mem,
        vec![rx.create_queue(), tx.create_queue()],
        interrupt.clone(),
        0,
    ))
    .unwrap();
    drop(peer);
    net.process_rx();
    net.check_link();
    assert!(!net.link_up());
    assert_eq!(status(&net), 0);
    assert_eq!(interrupt.config_change_count(), 1);
    // Once.
    net.check_link();
    assert_eq!(interrupt.config_change_count(), 1);
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

/// A TCPv4 segmentation header: needs checksum, gso size 1448.
fn gso_header() -> [u8; NET_HDR_LEN] {
    let mut h = [0u8; NET_HDR_LEN];
    h[0] = 1; // VIRTIO_NET_HDR_F_NEEDS_CSUM
    h[1] = 1; // VIRTIO_NET_HDR_GSO_TCPV4
    h[2..4].copy_from_slice(&54u16.to_le_bytes()); // hdr_len
    h[4..6].copy_from_slice(&1448u16.to_le_bytes()); // gso_size
    h[6..8].copy_from_slice(&34u16.to_le_bytes()); // csum_start
    h[8..10].copy_from_slice(&16u16.to_le_bytes()); // csum_offset
    h
}

#[test]
fn offloads_pass_headers_and_64k_segments_both_ways() {
    let mem = Arc::new(guest_memory(1 << 20));
    let (dev_end, peer) = UnixDatagram::pair().unwrap();
    peer.set_nonblocking(true).unwrap();
    let told = Arc::new(std::sync::Mutex::new(None));
    let mut net = Net::builder(Box::new(DatagramBackend {
        socket: dev_end,
        vnet_hdr: true,
        offloads: told.clone(),
    }))
    .build()
    .unwrap();
    assert_eq!(net.features() & OFFLOAD_FEATURES, OFFLOAD_FEATURES);
    // Room for a chain of 17 descriptors.
    let rx = TestQueue::create(mem.as_ref(), GuestAddress(0), 32);
    let tx = TestQueue::create(mem.as_ref(), GuestAddress(0x4000), 16);
    let queues: Vec<Queue> = vec![rx.create_queue(), tx.create_queue()];
    let acked = device::VERSION_1 | OFFLOAD_FEATURES;
    net.activate(activation(
        &mem,
        queues,
        Arc::new(MockInterrupt::new()),
        acked,
    ))
    .unwrap();
    assert_eq!(*told.lock().unwrap(), Some(acked));

    // Guest to backend: the header goes along, a 60000-byte segment too.
    let seg = frame(60_000, 5);
    mem.write_slice(&gso_header(), GuestAddress(0x10000))
        .unwrap();
    mem.write_slice(&seg, GuestAddress(0x20000)).unwrap();
    add_chain(
        &tx,
        0,
        &[
            TestDesc::read(0x10000, NET_HDR_LEN as u32),
            TestDesc::read(0x20000, seg.len() as u32),
        ],
    );
    // One byte more than the largest segment.
    add_chain(
        &tx,
        2,
        &[
            TestDesc::read(0x10000, NET_HDR_LEN as u32),
            TestDesc::read(0x20000, MAX_GSO_FRAME_LEN as u32 + 1),
        ],
    );
    net.process_tx();
    let mut buf = vec![0u8; 70_000];
    let n = peer.recv(&mut buf).unwrap();
    assert_eq!(&buf[..NET_HDR_LEN], &gso_header());
    assert_eq!(&buf[NET_HDR_LEN..n], &seg[..]);
    assert!(peer.recv(&mut buf).is_err());
    assert_eq!((net.stats().tx_frames, net.stats().tx_oversized), (1, 1));

    // Backend to guest: a runt, an oversized segment, then a 65000-byte
    // one into a chain of pages; its header arrives with num_buffers 1.
    let big = frame(65_000, 7);
    peer.send(&[0u8; 5]).unwrap();
    let mut too_big = gso_header().to_vec();
    too_big.extend(frame(MAX_GSO_FRAME_LEN + 1, 0));
    peer.send(&too_big).unwrap();
    let mut msg = gso_header().to_vec();
    msg.extend(&big);
    peer.send(&msg).unwrap();
    let mut descs = vec![TestDesc::write(0x10000, NET_HDR_LEN as u32)];
    descs.extend((0..16).map(|i| TestDesc::write(0x40000 + i * 0x1000, 0x1000)));
    add_chain(&rx, 0, &descs);
    net.process_rx();
    assert_eq!(
        used_entry(&rx, 0),
        Some((0, (NET_HDR_LEN + big.len()) as u32))
    );
    let mut hdr = [0u8; NET_HDR_LEN];
    mem.read_slice(&mut hdr, GuestAddress(0x10000)).unwrap();
    let mut want = gso_header();
    want[10] = 1;
    assert_eq!(hdr, want);
    let mut got = vec![0u8; big.len()];
    mem.read_slice(&mut got, GuestAddress(0x40000)).unwrap();
    assert_eq!(got, big);
    let s = net.stats();
    assert_eq!((s.rx_frames, s.rx_oversized), (1, 2));
}

#[test]
fn tap_device_when_available() {
    // Creating a tap needs CAP_NET_ADMIN and /dev/net/tun.
    match Tap::open("hcvtest%d") {
        Ok(tap) => {
            assert!(tap.name().starts_with("hcvtest"));
            assert!(tap.vnet_hdr());
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
