//! Block request handling over arbitrary descriptor tables, available
//! rings and guest memory. A read-only disk must never change.
#![no_main]

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::FromRawFd;
use std::sync::Arc;

use hypercontainer_virtio::block::Block;
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

const MEM: usize = 64 * 1024;
const QSIZE: u16 = 16;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x100;
const USED: u64 = 0x200;
const DISK: usize = 32 * 512;

fn disk_file() -> std::fs::File {
    // SAFETY: memfd_create with a valid NUL-terminated name has no memory
    // effects beyond returning a new fd, which the File below takes over.
    let fd = unsafe { libc::memfd_create(c"disk".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: `fd` is a fresh, valid fd owned by nobody else.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    let pattern: Vec<u8> = (0..DISK).map(|i| (i % 251) as u8).collect();
    f.write_all(&pattern).unwrap();
    f
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let read_only = data[0] & 1 == 1;
    let chains = data[1] % (QSIZE as u8 + 1);
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap());
    // Guest memory from the input: descriptor table, rings, buffers.
    let body = &data[2..];
    let _ = mem.write_slice(&body[..body.len().min(MEM)], GuestAddress(0));
    // A sane available ring header so that chains get processed.
    mem.write_obj(0u16, GuestAddress(AVAIL)).unwrap();
    mem.write_obj(u16::from(chains), GuestAddress(AVAIL + 2))
        .unwrap();
    mem.write_obj(0u32, GuestAddress(USED)).unwrap();

    let file = disk_file();
    let mut check = file.try_clone().unwrap();
    let mut block = Block::builder(file)
        .read_only(read_only)
        .queue_size(QSIZE)
        .build()
        .unwrap();
    let mut q = Queue::new(QSIZE).unwrap();
    q.try_set_desc_table_address(GuestAddress(DESC)).unwrap();
    q.try_set_avail_ring_address(GuestAddress(AVAIL)).unwrap();
    q.try_set_used_ring_address(GuestAddress(USED)).unwrap();
    q.set_ready(true);
    let features = block.features();
    block
        .activate(Activation {
            mem: mem.clone(),
            interrupt: Arc::new(NoIrq),
            queues: vec![q],
            queue_events: vec![EventFd::new(0).unwrap()],
            acked_features: features,
        })
        .unwrap();
    block.process_queue();

    if read_only {
        let mut after = Vec::new();
        check.seek(SeekFrom::Start(0)).unwrap();
        check.read_to_end(&mut after).unwrap();
        let pattern: Vec<u8> = (0..DISK).map(|i| (i % 251) as u8).collect();
        assert_eq!(after, pattern, "read-only disk changed");
    }
    let stats = block.stats();
    assert!(stats.ok + stats.io_errors + stats.unsupported + stats.dropped <= u64::from(chains));
});
