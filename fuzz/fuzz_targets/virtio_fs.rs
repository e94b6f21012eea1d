//! The virtio-fs FUSE server over a real passthrough share: arbitrary bytes
//! become a sequence of FUSE requests (after a valid INIT) against a fresh
//! temporary share holding a file, a directory and symlinks pointing
//! outside. Nothing may panic, every request with a header gets a reply
//! of the length its header claims, a read-only share must not change,
//! and the canary next to the share must stay untouched.
//!
//! Input: one flag byte (bit 0: read-only share), then records of
//! `[flags: u8][len: u16 le][len bytes]`; a record is one request, whose
//! header length is set to the record's size when flag bit 0 is set.
#![no_main]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use hypercontainer_virtio::fs::fuse::{self, opcode, InHeader, Reader, Wire};
use hypercontainer_virtio::fs::server::{Server, ServerOptions};
use hypercontainer_virtio::fs::{FileSystem, PassthroughConfig, PassthroughFs, ReadOnly};
use libfuzzer_sys::fuzz_target;

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
    let base = std::env::temp_dir().join(format!(
        "hc-fuzz-fs-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    ));
    let share = base.join("share");
    let outside = base.join("outside");
    fs::create_dir_all(share.join("dir/sub")).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("canary"), b"canary").unwrap();
    fs::write(share.join("file"), b"file contents").unwrap();
    std::os::unix::fs::symlink(&outside, share.join("out")).unwrap();
    std::os::unix::fs::symlink("../outside/canary", share.join("dir/rel")).unwrap();
    let outside_before = snapshot(&outside);
    let share_before = snapshot(&share);

    let pt = PassthroughFs::new(PassthroughConfig {
        max_open_fds: 64,
        ..PassthroughConfig::new(&share)
    })
    .unwrap();
    let fs: Box<dyn FileSystem> = if read_only {
        Box::new(ReadOnly(pt))
    } else {
        Box::new(pt)
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

    assert_eq!(snapshot(&outside), outside_before, "outside the share changed");
    if read_only {
        assert_eq!(snapshot(&share), share_before, "a read-only share changed");
    }
    let _ = fs::remove_dir_all(&base);
});
