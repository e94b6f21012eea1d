//! Queue-processing throughput of the block device, natively: requests are
//! placed in a mock split queue and the device drains it (as a queue
//! notification would make it do), against a disk image in the page cache.

use std::io::Write;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hypercontainer_virtio::block::Block;
use hypercontainer_virtio::test_utils::{
    activation, add_chain, guest_memory, MockInterrupt, TestDesc, TestQueue,
};
use hypercontainer_virtio::{GuestMemoryMmap, VirtioDevice};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

const DISK: u64 = 64 << 20;
const BATCH: u64 = 32;
const QUEUE: u16 = 256;

fn bench_block(c: &mut Criterion) {
    let mut group = c.benchmark_group("block_queue");
    for (name, req_type) in [("read", VIRTIO_BLK_T_IN), ("write", VIRTIO_BLK_T_OUT)] {
        for size in [4096u32, 65536] {
            let mem: Arc<GuestMemoryMmap> = Arc::new(guest_memory(64 << 20));
            let mut disk = tempfile::tempfile().unwrap();
            disk.write_all(&vec![0x5a; DISK as usize]).unwrap();
            let mut block = Block::builder(disk).queue_size(QUEUE).build().unwrap();
            let vq = TestQueue::new(mem.as_ref(), QUEUE);
            let q: Queue = vq.create_queue();
            block
                .activate(activation(&mem, vec![q], Arc::new(MockInterrupt::new()), 0))
                .unwrap();
            // One header, data buffer and status byte per request slot.
            for i in 0..BATCH {
                let mut h = [0u8; 16];
                h[0..4].copy_from_slice(&req_type.to_le_bytes());
                let sector = (i * u64::from(size) / 512) % (DISK / 512 - 128);
                h[8..16].copy_from_slice(&sector.to_le_bytes());
                mem.write_slice(&h, GuestAddress(0x10_0000 + i * 0x100))
                    .unwrap();
            }
            let write = req_type == VIRTIO_BLK_T_IN;
            let mut next_desc = 0u16;
            group.throughput(Throughput::Bytes(BATCH * u64::from(size)));
            group.bench_function(BenchmarkId::new(name, size), |b| {
                b.iter(|| {
                    for i in 0..BATCH {
                        let data = TestDesc {
                            addr: 0x20_0000 + i * 0x1_0000,
                            len: size,
                            write,
                        };
                        add_chain(
                            &vq,
                            next_desc,
                            &[
                                TestDesc::read(0x10_0000 + i * 0x100, 16),
                                data,
                                TestDesc::write(0x10_0000 + i * 0x100 + 0x80, 1),
                            ],
                        );
                        next_desc = next_desc.wrapping_add(3) % QUEUE;
                    }
                    block.process_queue();
                });
            });
            let stats = block.stats();
            assert_eq!(stats.io_errors, 0, "{stats:?}");
        }
    }
    group.finish();
}

criterion_group!(benches, bench_block);
criterion_main!(benches);
