//! Queue processing over arbitrary descriptor tables and available rings:
//! virtio-queue's chain walking (loops, out-of-range indices, indirect
//! tables, overflowing addresses) as the devices use it, through the rng
//! and console devices' queue handlers.
#![no_main]

use std::sync::Arc;

use hypercontainer_virtio::console::Console;
use hypercontainer_virtio::rng::Rng;
use hypercontainer_virtio::{Activation, GuestMemoryMmap, Interrupt, InterruptType, VirtioDevice};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

struct NoIrq;
impl Interrupt for NoIrq {
    fn trigger(&self, _: InterruptType) -> std::io::Result<()> {
        Ok(())
    }
}

const MEM: usize = 64 * 1024;

fn queue(size: u16, base: u64) -> Option<Queue> {
    let mut q = Queue::new(size).ok()?;
    q.try_set_desc_table_address(GuestAddress(base)).ok()?;
    q.try_set_avail_ring_address(GuestAddress(base + 16 * u64::from(size)))
        .ok()?;
    q.try_set_used_ring_address(GuestAddress(base + 0x1000))
        .ok()?;
    q.set_ready(true);
    Some(q)
}

fn activation(mem: &Arc<GuestMemoryMmap>, queues: Vec<Queue>) -> Activation {
    let queue_events = queues.iter().map(|_| EventFd::new(0).unwrap()).collect();
    Activation {
        mem: mem.clone(),
        interrupt: Arc::new(NoIrq),
        queues,
        queue_events,
        acked_features: 0,
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let size = 1u16 << (data[0] % 9); // 1..=256
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap());
    let _ = mem.write_slice(&data[1..data.len().min(MEM)], GuestAddress(0));

    // Raw chain walking, as every device does it.
    if let Some(mut q) = queue(size, 0) {
        let mut budget = 4096;
        while let Ok(mut it) = q.iter(mem.as_ref()) {
            let Some(chain) = it.next() else { break };
            for d in chain {
                let _ = (d.addr(), d.len(), d.is_write_only());
                budget -= 1;
            }
            if budget <= 0 {
                break;
            }
        }
    }

    // The devices' queue handlers on the same memory.
    let Some(q) = queue(size, 0) else { return };
    let mut rng = Rng::new().unwrap();
    rng.activate(activation(&mem, vec![q])).unwrap();
    rng.process_queue();

    let (Some(rx), Some(tx)) = (queue(size, 0x2000), queue(size, 0)) else {
        return;
    };
    let mut console = Console::new(Box::new(std::io::sink())).unwrap();
    console.input().write(&data[..data.len().min(512)]);
    console.activate(activation(&mem, vec![rx, tx])).unwrap();
    console.process_tx();
    console.process_rx();
});
