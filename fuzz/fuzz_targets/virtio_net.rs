//! virtio-net over arbitrary descriptor tables, available rings and guest
//! memory (transmit and receive queues), with frames of arbitrary size and
//! content arriving from the backend; with and without `virtio_net_hdr`
//! pass-through (offloads). Nothing may panic, and nothing larger than the
//! device's maximum may reach the backend.
#![no_main]

use std::io;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use hypercontainer_virtio::net::{Net, MAX_FRAME_LEN, MAX_GSO_FRAME_LEN, NET_HDR_LEN};
use hypercontainer_virtio::test_utils::DatagramBackend;
use hypercontainer_virtio::{Activation, GuestMemoryMmap, Interrupt, InterruptType, VirtioDevice};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

struct NoIrq;
impl Interrupt for NoIrq {
    fn trigger(&self, _: InterruptType) -> io::Result<()> {
        Ok(())
    }
}

const MEM: usize = 128 * 1024;
const QSIZE: u16 = 16;
// Receive queue, then transmit queue.
const RINGS: [(u64, u64, u64); 2] = [(0x0, 0x100, 0x200), (0x400, 0x500, 0x600)];

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let vnet = data[0] & 1 == 1;
    let rx_chains = data[1] % (QSIZE as u8 + 1);
    let tx_chains = data[2] % (QSIZE as u8 + 1);
    // Backend frames: up to 4, sizes from the input, content repeated.
    let frames: Vec<usize> = data[3..7]
        .iter()
        .map(|b| match b % 4 {
            0 => 0,
            1 => usize::from(*b),
            2 => MAX_FRAME_LEN + NET_HDR_LEN + usize::from(*b % 3),
            _ => MAX_GSO_FRAME_LEN + NET_HDR_LEN + usize::from(*b % 3) - 1,
        })
        .collect();
    let body = &data[7..];

    let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap());
    let _ = mem.write_slice(&body[..body.len().min(MEM)], GuestAddress(0));
    for (i, (_, avail, used)) in RINGS.iter().enumerate() {
        let n = if i == 0 { rx_chains } else { tx_chains };
        mem.write_obj(0u16, GuestAddress(*avail)).unwrap();
        mem.write_obj(u16::from(n), GuestAddress(avail + 2))
            .unwrap();
        mem.write_obj(0u32, GuestAddress(*used)).unwrap();
    }

    let (dev_end, peer) = UnixDatagram::pair().unwrap();
    peer.set_nonblocking(true).unwrap();
    let mut net = Net::builder(Box::new(DatagramBackend {
        socket: dev_end,
        vnet_hdr: vnet,
        offloads: Default::default(),
    }))
    .build()
    .unwrap();
    let queues: Vec<Queue> = RINGS
        .iter()
        .map(|(desc, avail, used)| {
            let mut q = Queue::new(QSIZE).unwrap();
            q.try_set_desc_table_address(GuestAddress(*desc)).unwrap();
            q.try_set_avail_ring_address(GuestAddress(*avail)).unwrap();
            q.try_set_used_ring_address(GuestAddress(*used)).unwrap();
            q.set_ready(true);
            q
        })
        .collect();
    let features = net.features();
    net.activate(Activation {
        mem: mem.clone(),
        interrupt: Arc::new(NoIrq),
        queues,
        queue_events: vec![EventFd::new(0).unwrap(), EventFd::new(0).unwrap()],
        acked_features: features,
    })
    .unwrap();

    for len in frames {
        let frame: Vec<u8> = body.iter().copied().cycle().take(len).collect();
        if frame.len() == len && peer.send(&frame).is_err() {
            break;
        }
    }
    net.process_tx();
    net.process_rx();

    let max = if vnet {
        NET_HDR_LEN + MAX_GSO_FRAME_LEN
    } else {
        MAX_FRAME_LEN
    };
    let mut buf = vec![0u8; 2 * MAX_GSO_FRAME_LEN];
    while let Ok(n) = peer.recv(&mut buf) {
        assert!(n <= max, "a {n}-byte frame reached the backend");
    }
    let s = net.stats();
    assert!(
        s.tx_frames + s.tx_oversized + s.tx_malformed + s.tx_backend_errors <= u64::from(tx_chains)
    );
    assert!(s.rx_frames + s.rx_no_room <= u64::from(rx_chains));
});
