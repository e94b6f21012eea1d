//! vsock packet handling: arbitrary guest packets (headers, payloads,
//! descriptor layouts) on the TX queue, replies into RX buffers, with host
//! listeners so that connections get established and torn down.
#![no_main]

use std::sync::Arc;

use hypercontainer_virtio::vsock::Vsock;
use hypercontainer_virtio::{Activation, GuestMemoryMmap, Interrupt, InterruptType, VirtioDevice};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

struct NoIrq;
impl Interrupt for NoIrq {
    fn trigger(&self, _: InterruptType) -> std::io::Result<()> {
        Ok(())
    }
}

const MEM: usize = 256 * 1024;
const QSIZE: u16 = 16;

fn queue(base: u64, avail_idx: u16, mem: &GuestMemoryMmap) -> Queue {
    let mut q = Queue::new(QSIZE).unwrap();
    q.try_set_desc_table_address(GuestAddress(base)).unwrap();
    q.try_set_avail_ring_address(GuestAddress(base + 0x100))
        .unwrap();
    q.try_set_used_ring_address(GuestAddress(base + 0x200))
        .unwrap();
    q.set_ready(true);
    mem.write_obj(avail_idx, GuestAddress(base + 0x102))
        .unwrap();
    q
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap());
    let _ = mem.write_slice(&data[2..data.len().min(MEM)], GuestAddress(0));
    // RX queue at 0x0, TX at 0x1000, event queue at 0x2000.
    let rx = queue(0, u16::from(data[0] % 17), &mem);
    let tx = queue(0x1000, u16::from(data[1] % 17), &mem);
    let ev = queue(0x2000, 0, &mem);
    let mut vsock = Vsock::builder(3).max_connections(4).build().unwrap();
    let host = vsock.host();
    let _l1 = host.listen(1, 2).unwrap();
    let _l2 = host.listen(1024, 2).unwrap();
    vsock
        .activate(Activation {
            mem: mem.clone(),
            interrupt: Arc::new(NoIrq),
            queues: vec![rx, tx, ev],
            queue_events: (0..3).map(|_| EventFd::new(0).unwrap()).collect(),
            acked_features: vsock.features(),
        })
        .unwrap();
    vsock.process_tx();
    vsock.process_rx();
    assert!(vsock.connection_count() <= 4);
    vsock.reset();
    assert_eq!(vsock.connection_count(), 0);
});
