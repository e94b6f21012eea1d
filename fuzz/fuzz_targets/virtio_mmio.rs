//! The virtio-mmio register interface under an arbitrary sequence of guest
//! reads, writes and guest-memory stores, with the device running on its
//! event loop between accesses (so queues set up through the registers,
//! however broken, are processed).
#![no_main]

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use hypercontainer_virtio::console::Console;
use hypercontainer_virtio::rng::Rng;
use hypercontainer_virtio::transport::mmio::MmioTransport;
use hypercontainer_virtio::vsock::Vsock;
use hypercontainer_virtio::{GuestMemoryMmap, Interrupt, InterruptType, VirtioDevice};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

struct NoIrq;
impl Interrupt for NoIrq {
    fn trigger(&self, _: InterruptType) -> std::io::Result<()> {
        Ok(())
    }
}

const MEM: usize = 64 * 1024;

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

fn run<D: VirtioDevice + MutEventSubscriber + Send + 'static>(device: D, mut ops: &[u8]) {
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap());
    let device = Arc::new(Mutex::new(device));
    let Ok(mut transport) = MmioTransport::new(mem.clone(), device.clone(), Arc::new(NoIrq)) else {
        return;
    };
    let mut em = EventManager::<Subscriber>::new().unwrap();
    em.add_subscriber(device);

    // Each op: [kind, offset lo, offset hi, size, value x8]
    while ops.len() >= 12 {
        let (op, rest) = ops.split_at(12);
        ops = rest;
        let offset = u64::from(u16::from_le_bytes([op[1], op[2]])) % 0x1100;
        let size = [1usize, 2, 4, 8, 4, 4, 4, 4][usize::from(op[3] % 8)];
        match op[0] % 4 {
            0 => {
                let mut buf = [0u8; 8];
                transport.read(offset, &mut buf[..size]);
            }
            1 | 2 => transport.write(offset, &op[4..4 + size]),
            _ => {
                // Guest memory store (rings and buffers the driver builds).
                let addr = u64::from(u16::from_le_bytes([op[1], op[2]])) % MEM as u64;
                let _ = mem.write_slice(&op[4..12], GuestAddress(addr));
            }
        }
        let _ = em.run_with_timeout(0);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, ops)) = data.split_first() else {
        return;
    };
    match kind % 3 {
        0 => run(Rng::new().unwrap(), ops),
        1 => run(Console::new(Box::new(std::io::sink())).unwrap(), ops),
        _ => run(Vsock::builder(3).build().unwrap(), ops),
    }
});
