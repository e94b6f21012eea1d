//! The virtio-fs FUSE server over a real passthrough share: arbitrary bytes
//! become a sequence of FUSE requests (after a valid INIT) against a fresh
//! temporary share holding a file, a directory and symlinks pointing
//! outside. Nothing may panic, every request with a header gets a reply
//! of the length its header claims, a read-only share must not change,
//! and the canary next to the share must stay untouched.
//!
//! Input: one flag byte (bit 0: read-only share; bit 1: through the
//! device; bit 2: the share is one of two behind a multi-share device, the
//! other a writable sibling directory, reached at node ids
//! `1 << 56 | n` and `2 << 56 | n`), then
//! * server mode: records of `[flags: u8][len: u16 le][len bytes]`; a
//!   record is one request, whose header length is set to the record's
//!   size when flag bit 0 is set;
//! * device mode: after a valid INIT chain, one byte each for the number of
//!   chains made available on the request and hiprio queues, then guest
//!   memory (descriptor tables, rings, buffers), as the block target does.
#![no_main]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hypercontainer_virtio::fs::fuse::{self, opcode, InHeader, Reader, Wire};
use hypercontainer_virtio::fs::server::{Server, ServerOptions};
use hypercontainer_virtio::fs::{
    FileSystem, Fs, MultiFs, MultiShareConfig, PassthroughConfig, PassthroughFs, ReadOnly,
    ShareConfig,
};
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
/// (descriptor table, available ring, used ring) of hiprio and requests.
const RINGS: [(u64, u64, u64); 2] = [(0x400, 0x500, 0x600), (0x0, 0x100, 0x200)];

/// The device over guest memory from the input, after a valid INIT.
fn run_device(share: &Path, read_only: bool, sibling: Option<&Path>, input: &[u8]) {
    if input.len() < 2 {
        return;
    }
    let cfg = ShareConfig::new(share, "fuzz")
        .read_only(read_only)
        .max_open_fds(64)
        .queue_size(QSIZE);
    let mut fs = match sibling {
        Some(other) => Fs::multi(
            MultiShareConfig::new("fuzz")
                .queue_size(QSIZE)
                .share("share", cfg)
                .share("other", ShareConfig::new(other, "").max_open_fds(64)),
        )
        .unwrap(),
        None => Fs::new(cfg).unwrap(),
    };
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap());
    let queues = RINGS
        .iter()
        .map(|&(d, a, u)| {
            let mut q = Queue::new(QSIZE).unwrap();
            q.try_set_desc_table_address(GuestAddress(d)).unwrap();
            q.try_set_avail_ring_address(GuestAddress(a)).unwrap();
            q.try_set_used_ring_address(GuestAddress(u)).unwrap();
            q.set_ready(true);
            q
        })
        .collect();
    let features = fs.features();
    fs.activate(Activation {
        mem: mem.clone(),
        interrupt: Arc::new(NoIrq),
        queues,
        queue_events: vec![EventFd::new(0).unwrap(), EventFd::new(0).unwrap()],
        acked_features: features,
    })
    .unwrap();
    // INIT: descriptors 0 (request) and 1 (reply) on the request queue.
    let init = init();
    mem.write_slice(&init, GuestAddress(0x1000)).unwrap();
    let desc = |addr: u64, len: u32, flags: u16, next: u16| {
        let mut d = addr.to_le_bytes().to_vec();
        d.extend(len.to_le_bytes());
        d.extend(flags.to_le_bytes());
        d.extend(next.to_le_bytes());
        d
    };
    let mut table = desc(0x1000, init.len() as u32, 1, 1);
    table.extend(desc(0x2000, 4096, 2, 0));
    mem.write_slice(&table, GuestAddress(0)).unwrap();
    mem.write_obj(0u16, GuestAddress(0x104)).unwrap();
    mem.write_obj(1u16, GuestAddress(0x102)).unwrap();
    fs.process_queue(1);
    assert_eq!(fs.stats().fuse.ok, 1, "INIT served");

    // Then whatever the input holds.
    let (requests, hiprio) = (input[0] % (QSIZE as u8 + 1), input[1] % (QSIZE as u8 + 1));
    let body = &input[2..];
    let _ = mem.write_slice(&body[..body.len().min(MEM)], GuestAddress(0));
    mem.write_obj(0u16, GuestAddress(0x100)).unwrap();
    mem.write_obj(1 + u16::from(requests), GuestAddress(0x102))
        .unwrap();
    mem.write_obj(0u16, GuestAddress(0x500)).unwrap();
    mem.write_obj(u16::from(hiprio), GuestAddress(0x502))
        .unwrap();
    fs.process_queue(0);
    fs.process_queue(1);
    let st = fs.stats();
    assert!(st.chains <= 1 + u64::from(requests) + u64::from(hiprio));
}

static RUN: AtomicU64 = AtomicU64::new(0);

/// Requests that could fill the host disk are skipped: a fallocate of
/// more than 1 MiB.
fn too_costly(req: &[u8]) -> bool {
    let mut r = Reader::new(req);
    let Ok(h) = r.read::<InHeader>() else {
        return false;
    };
    if h.opcode != opcode::FALLOCATE {
        return false;
    }
    match r.read::<fuse::FallocateIn>() {
        Ok(f) => f.length > 1 << 20 || f.offset > 1 << 30,
        Err(_) => false,
    }
}

fn snapshot(dir: &Path) -> Vec<(PathBuf, u32, u64, Vec<u8>)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = fs::symlink_metadata(&p) else {
                continue;
            };
            let content = if m.is_file() {
                fs::read(&p).unwrap_or_default()
            } else {
                Vec::new()
            };
            if m.is_dir() {
                todo.push(p.clone());
            }
            out.push((p, m.mode(), m.len(), content));
        }
    }
    out.sort();
    out
}

fn init() -> Vec<u8> {
    let mut v = Vec::new();
    InHeader {
        len: (InHeader::SIZE + fuse::InitIn::SIZE) as u32,
        opcode: opcode::INIT,
        unique: 1,
        ..Default::default()
    }
    .put(&mut v);
    fuse::InitIn {
        major: 7,
        minor: 36,
        max_readahead: 1 << 17,
        flags: u32::MAX,
    }
    .put(&mut v);
    v
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let read_only = flags & 1 == 1;
    let device = flags & 2 == 2;
    let multi = flags & 4 == 4;
    let base = std::env::temp_dir().join(format!(
        "hc-fuzz-fs-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    ));
    let share = base.join("share");
    let outside = base.join("outside");
    let other = base.join("other");
    fs::create_dir_all(share.join("dir/sub")).unwrap();
    fs::create_dir_all(&other).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("canary"), b"canary").unwrap();
    fs::write(share.join("file"), b"file contents").unwrap();
    std::os::unix::fs::symlink(&outside, share.join("out")).unwrap();
    std::os::unix::fs::symlink("../outside/canary", share.join("dir/rel")).unwrap();
    let outside_before = snapshot(&outside);
    let share_before = snapshot(&share);

    if device {
        run_device(&share, read_only, multi.then_some(other.as_path()), rest);
        rest = &[];
    }
    let fs: Box<dyn FileSystem> = if multi {
        let m = MultiFs::new();
        let cfg = ShareConfig::new(&share, "").read_only(read_only);
        m.add("share", cfg.max_open_fds(64)).unwrap();
        m.add("other", ShareConfig::new(&other, "").max_open_fds(64))
            .unwrap();
        Box::new(m)
    } else {
        let pt = PassthroughFs::new(PassthroughConfig {
            max_open_fds: 64,
            ..PassthroughConfig::new(&share)
        })
        .unwrap();
        if read_only {
            Box::new(ReadOnly(pt))
        } else {
            Box::new(pt)
        }
    };
    let mut server = Server::new(fs, ServerOptions::default());
    assert!(server.handle(&init()).is_some());

    while rest.len() >= 3 {
        let rflags = rest[0];
        let len = usize::from(u16::from_le_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let mut req = rest[3..3 + len].to_vec();
        rest = &rest[3 + len..];
        if rflags & 1 == 1 && req.len() >= 4 {
            let n = req.len() as u32;
            req[..4].copy_from_slice(&n.to_le_bytes());
        }
        if too_costly(&req) {
            continue;
        }
        if let Some(reply) = server.handle(&req) {
            let h: fuse::OutHeader = Reader::new(&reply).read().expect("reply header");
            assert_eq!(h.len as usize, reply.len());
            assert!(h.error <= 0);
        }
    }
    drop(server);

    assert_eq!(
        snapshot(&outside),
        outside_before,
        "outside the share changed"
    );
    if read_only {
        assert_eq!(snapshot(&share), share_before, "a read-only share changed");
    }
    let _ = fs::remove_dir_all(&base);
});
