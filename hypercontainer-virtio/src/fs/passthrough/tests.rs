//! The passthrough behind the FUSE server, against a temporary share with
//! canary files next to it.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::*;
use crate::fs::fuse::{self, SetattrIn, ROOT_ID};
use crate::fs::test_client::Client;

struct Share {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

impl Share {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("share");
        let outside = tmp.path().join("outside");
        fs::create_dir(&root).unwrap();
        fs::create_dir_all(outside.join("dir")).unwrap();
        fs::write(outside.join("canary"), b"do not touch").unwrap();
        fs::set_permissions(outside.join("canary"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(outside.join("dir/canary"), b"nor this").unwrap();
        Self {
            _tmp: tmp,
            root,
            outside,
        }
    }

    fn client(&self) -> Client<PassthroughFs> {
        self.client_with(|c| c)
    }

    fn client_with(
        &self,
        f: impl FnOnce(PassthroughConfig) -> PassthroughConfig,
    ) -> Client<PassthroughFs> {
        let cfg = f(PassthroughConfig::new(&self.root));
        Client::new(Box::new(PassthroughFs::new(cfg).unwrap()))
    }

    fn read_only_client(&self) -> Client<ReadOnly<PassthroughFs>> {
        let fs = PassthroughFs::new(PassthroughConfig::new(&self.root)).unwrap();
        Client::new(Box::new(ReadOnly(fs)))
    }

    fn path(&self, p: &str) -> PathBuf {
        self.root.join(p)
    }
}

/// Every entry under `dir` with its type, mode, owner, size, content
/// (files), target (symlinks) and mtime.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let detail = if m.file_type().is_symlink() {
                format!("-> {:?}", fs::read_link(&p).unwrap())
            } else if m.is_dir() {
                todo.push(p.clone());
                String::new()
            } else {
                format!("{:?}", fs::read(&p).unwrap())
            };
            let x = xattr_names(&p);
            let line = format!(
                "{:o} {}:{} {} {} {detail} {x:?}",
                m.mode(),
                m.uid(),
                m.gid(),
                m.len(),
                m.mtime()
            );
            out.insert(p, line);
        }
    }
    out
}

fn xattr_names(p: &Path) -> Vec<u8> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let mut buf = vec![0u8; 4096];
    // llistxattr is not wrapped: list through the /proc path of an O_PATH fd.
    let fd = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
        .open(p);
    let _ = c;
    match fd {
        Ok(f) => {
            let path = PassthroughFs::proc_path(f.as_fd());
            let n = sys::listxattr(&path, &mut buf).unwrap_or(0);
            buf.truncate(n);
            buf
        }
        Err(_) => Vec::new(),
    }
}

const S_IFMT: u32 = libc::S_IFMT;

#[test]
fn dotdot_at_the_root_is_the_root_and_below_it_the_parent() {
    let s = Share::new();
    fs::create_dir(s.path("a")).unwrap();
    let mut c = s.client();
    let up = c.lookup(ROOT_ID, "..").unwrap();
    assert_eq!(up.nodeid, ROOT_ID);
    let a = c.lookup(ROOT_ID, "a").unwrap();
    assert_eq!(c.lookup(a.nodeid, "..").unwrap().nodeid, ROOT_ID);
    assert_eq!(c.lookup(a.nodeid, ".").unwrap().nodeid, a.nodeid);
    // Ten `..` in a row never leave the root.
    let mut n = a.nodeid;
    for _ in 0..10 {
        n = c.lookup(n, "..").unwrap().nodeid;
    }
    assert_eq!(n, ROOT_ID);
}

#[test]
fn absolute_and_multi_component_names_are_refused() {
    let s = Share::new();
    let before = snapshot(&s.outside);
    let mut c = s.client();
    let outside = s.outside.to_str().unwrap().to_string();
    for n in [outside.as_str(), "/etc", "../outside", "a/b", "/", ""] {
        assert_eq!(c.lookup(ROOT_ID, n).unwrap_err(), libc::EINVAL, "{n:?}");
        assert_eq!(c.mkdir(ROOT_ID, n, 0o755).unwrap_err(), libc::EINVAL);
        assert_eq!(c.create(ROOT_ID, n, 0o644, 0).unwrap_err(), libc::EINVAL);
        assert_eq!(c.symlink(ROOT_ID, n, "x").unwrap_err(), libc::EINVAL);
    }
    for n in [".", ".."] {
        assert_eq!(c.mkdir(ROOT_ID, n, 0o755).unwrap_err(), libc::EINVAL);
        assert_eq!(c.unlink(ROOT_ID, n).unwrap_err(), libc::EINVAL);
        assert_eq!(c.rmdir(ROOT_ID, n).unwrap_err(), libc::EINVAL);
        assert_eq!(
            c.rename(ROOT_ID, n, ROOT_ID, "x", 0).unwrap_err(),
            libc::EINVAL
        );
    }
    assert_eq!(
        c.unlink(ROOT_ID, "../outside/canary").unwrap_err(),
        libc::EINVAL
    );
    assert_eq!(snapshot(&s.outside), before);
    assert_eq!(fs::read_dir(&s.root).unwrap().count(), 0);
}

#[test]
fn symlinks_pointing_outside_are_never_followed() {
    let s = Share::new();
    std::os::unix::fs::symlink(&s.outside, s.path("out")).unwrap();
    std::os::unix::fs::symlink(s.outside.join("canary"), s.path("file")).unwrap();
    std::os::unix::fs::symlink("../outside/canary", s.path("rel")).unwrap();
    let before = snapshot(&s.outside);
    let mut c = s.client();
    let out = c.lookup(ROOT_ID, "out").unwrap();
    assert_eq!(out.attr.mode & S_IFMT, libc::S_IFLNK);
    assert_eq!(
        c.readlink(out.nodeid).unwrap(),
        s.outside.as_os_str().as_encoded_bytes()
    );
    // Through the link: not a directory.
    assert_eq!(c.lookup(out.nodeid, "canary").unwrap_err(), libc::ENOTDIR);
    assert_eq!(
        c.create(out.nodeid, "new", 0o644, 0).unwrap_err(),
        libc::ENOTDIR
    );
    assert_eq!(
        c.mkdir(out.nodeid, "new", 0o755).unwrap_err(),
        libc::ENOTDIR
    );
    assert_eq!(c.unlink(out.nodeid, "canary").unwrap_err(), libc::ENOTDIR);
    assert!(c.opendir(out.nodeid).is_err());
    for n in ["file", "rel"] {
        let l = c.lookup(ROOT_ID, n).unwrap();
        assert_eq!(l.attr.mode & S_IFMT, libc::S_IFLNK);
        assert!(c.open(l.nodeid, libc::O_RDWR | libc::O_TRUNC).is_err());
        let chmod = SetattrIn {
            valid: fuse::fattr::MODE,
            mode: 0o777,
            ..Default::default()
        };
        assert!(c.setattr(l.nodeid, chmod).is_err());
        let truncate = SetattrIn {
            valid: fuse::fattr::SIZE,
            ..Default::default()
        };
        assert!(c.setattr(l.nodeid, truncate).is_err());
        assert!(c.setxattr(l.nodeid, "user.x", b"1").is_err());
        let times = SetattrIn {
            valid: fuse::fattr::MTIME,
            mtime: 1,
            ..Default::default()
        };
        // Times of the link itself may change; the target's never.
        let _ = c.setattr(l.nodeid, times);
        // A hard link to the symlink is a symlink inside the share.
        let hl = c.link(l.nodeid, ROOT_ID, &format!("{n}-hard")).unwrap();
        assert_eq!(hl.attr.mode & S_IFMT, libc::S_IFLNK);
    }
    assert_eq!(snapshot(&s.outside), before);
}

#[test]
fn a_directory_swapped_for_a_symlink_mid_walk_never_leads_outside() {
    let s = Share::new();
    fs::create_dir_all(s.path("a/b")).unwrap();
    let before = snapshot(&s.outside);
    let mut c = s.client();
    let a = c.lookup(ROOT_ID, "a").unwrap();
    // The host (or another guest) swaps `a` for a link to the outside.
    fs::rename(s.path("a"), s.path("a-old")).unwrap();
    std::os::unix::fs::symlink(&s.outside, s.path("a")).unwrap();
    // The walk goes on from the node it holds: the moved directory.
    let b = c.lookup(a.nodeid, "b").unwrap();
    c.create(b.nodeid, "made", 0o644, 0).unwrap();
    assert!(s.path("a-old/b/made").exists());
    // A fresh walk meets the link, and stops there.
    let a2 = c.lookup(ROOT_ID, "a").unwrap();
    assert_eq!(a2.attr.mode & S_IFMT, libc::S_IFLNK);
    assert_eq!(c.lookup(a2.nodeid, "dir").unwrap_err(), libc::ENOTDIR);
    assert_eq!(
        c.create(a2.nodeid, "x", 0o644, 0).unwrap_err(),
        libc::ENOTDIR
    );
    assert_eq!(snapshot(&s.outside), before);
}

#[test]
fn a_rename_race_between_directory_and_symlink_leaves_the_outside_untouched() {
    let s = Share::new();
    fs::create_dir_all(s.path("d/sub")).unwrap();
    std::os::unix::fs::symlink(&s.outside, s.path("evil")).unwrap();
    let before = snapshot(&s.outside);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flipper = {
        let (root, stop) = (s.root.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Swap `d` and `evil` atomically, back and forth.
                let d =
                    std::ffi::CString::new(root.join("d").into_os_string().into_encoded_bytes())
                        .unwrap();
                let e =
                    std::ffi::CString::new(root.join("evil").into_os_string().into_encoded_bytes())
                        .unwrap();
                let cwd = fs::File::open("/").unwrap();
                let _ = sys::renameat2(cwd.as_fd(), &d, cwd.as_fd(), &e, libc::RENAME_EXCHANGE);
            }
        })
    };
    let mut c = s.client();
    for i in 0..2000 {
        let Ok(d) = c.lookup(ROOT_ID, "d") else {
            continue;
        };
        let name = format!("f{i}");
        // Whatever `d` is right now, nothing may land outside.
        let _ = c.lookup(d.nodeid, "sub");
        let _ = c.lookup(d.nodeid, "canary");
        let _ = c.create(d.nodeid, &name, 0o644, 0);
        let _ = c.mkdir(d.nodeid, &format!("m{i}"), 0o755);
        let _ = c.unlink(d.nodeid, "canary");
        if let Ok(dc) = c.lookup(d.nodeid, "dir") {
            let _ = c.create(dc.nodeid, &name, 0o644, 0);
        }
        c.forget(d.nodeid, 1);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flipper.join().unwrap();
    assert_eq!(snapshot(&s.outside), before);
}

#[test]
fn forgotten_nodes_and_released_handles_are_stale() {
    let s = Share::new();
    fs::write(s.path("f"), b"data").unwrap();
    let mut c = s.client();
    let f = c.lookup(ROOT_ID, "f").unwrap();
    let again = c.lookup(ROOT_ID, "f").unwrap();
    assert_eq!(f.nodeid, again.nodeid);
    assert_eq!(c.server.filesystem().lookup_count(f.nodeid), 2);
    let fh = c.open(f.nodeid, libc::O_RDONLY).unwrap();
    c.release(f.nodeid, fh, false).unwrap();
    assert_eq!(c.read(f.nodeid, fh, 0, 4).unwrap_err(), libc::EBADF);
    assert_eq!(c.release(f.nodeid, fh, false).unwrap_err(), libc::EBADF);
    c.forget(f.nodeid, 2);
    assert_eq!(c.getattr(f.nodeid).unwrap_err(), libc::EBADF);
    assert_eq!(c.open(f.nodeid, libc::O_RDONLY).unwrap_err(), libc::EBADF);
    assert_eq!(c.lookup(f.nodeid, "x").unwrap_err(), libc::EBADF);
    let fresh = c.lookup(ROOT_ID, "f").unwrap();
    assert_ne!(fresh.nodeid, f.nodeid, "ids are not reused");
    // Forgetting more than was looked up, or the root, is harmless.
    c.forget(fresh.nodeid, u64::MAX);
    c.forget(ROOT_ID, u64::MAX);
    assert!(c.getattr(ROOT_ID).is_ok());
    assert_eq!(c.server.filesystem().open_fds(), 1);
}

#[test]
fn a_read_only_share_answers_erofs_and_the_tree_is_unchanged() {
    let s = Share::new();
    fs::create_dir(s.path("d")).unwrap();
    fs::write(s.path("d/f"), b"content").unwrap();
    std::os::unix::fs::symlink("f", s.path("d/l")).unwrap();
    let before = snapshot(&s.root);
    let mut c = s.read_only_client();
    let d = c.lookup(ROOT_ID, "d").unwrap();
    let f = c.lookup(d.nodeid, "f").unwrap();
    let rofs = Err(libc::EROFS);
    assert_eq!(c.create(d.nodeid, "n", 0o644, 0).map(drop), rofs);
    assert_eq!(c.mkdir(d.nodeid, "n", 0o755).map(drop), rofs);
    assert_eq!(
        c.mknod(d.nodeid, "n", libc::S_IFIFO | 0o644, 0).map(drop),
        rofs
    );
    assert_eq!(c.symlink(d.nodeid, "n", "f").map(drop), rofs);
    assert_eq!(c.link(f.nodeid, d.nodeid, "n").map(drop), rofs);
    assert_eq!(c.unlink(d.nodeid, "f"), rofs);
    assert_eq!(c.rmdir(ROOT_ID, "d"), rofs);
    assert_eq!(c.rename(d.nodeid, "f", d.nodeid, "g", 0), rofs);
    assert_eq!(c.setxattr(f.nodeid, "user.x", b"1"), rofs);
    assert_eq!(c.removexattr(f.nodeid, "user.x"), rofs);
    for valid in [
        fuse::fattr::MODE,
        fuse::fattr::UID,
        fuse::fattr::SIZE,
        fuse::fattr::MTIME,
    ] {
        let set = SetattrIn {
            valid,
            ..Default::default()
        };
        assert_eq!(c.setattr(f.nodeid, set).map(drop), rofs);
    }
    for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_TRUNC] {
        assert_eq!(c.open(f.nodeid, flags).map(drop), rofs);
    }
    // Reading works, writing through a read handle does not.
    let fh = c.open(f.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(c.read(f.nodeid, fh, 0, 100).unwrap(), b"content");
    assert_eq!(c.write(f.nodeid, fh, 0, b"x").map(drop), rofs);
    let mut fa = encode(&fuse::FallocateIn {
        fh,
        length: 10,
        ..Default::default()
    });
    assert_eq!(
        c.call(fuse::opcode::FALLOCATE, f.nodeid, &fa).map(drop),
        rofs
    );
    fa = encode(&fuse::CopyFileRangeIn {
        fh_in: fh,
        nodeid_out: f.nodeid,
        fh_out: fh,
        len: 3,
        ..Default::default()
    });
    assert_eq!(
        c.call(fuse::opcode::COPY_FILE_RANGE, f.nodeid, &fa)
            .map(drop),
        rofs
    );
    assert_eq!(c.readdir(d.nodeid, true).unwrap().len(), 4);
    assert_eq!(snapshot(&s.root), before);
}

use crate::fs::fuse::encode;

fn chmod(mode: u32) -> SetattrIn {
    SetattrIn {
        valid: fuse::fattr::MODE,
        mode,
        ..Default::default()
    }
}

/// A v2 `security.capability` value granting `CAP_NET_BIND_SERVICE`.
const FILE_CAPS: [u8; 20] = [1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

#[test]
fn a_write_clears_setuid_setgid_and_file_capabilities() {
    let s = Share::new();
    let mut c = s.client();
    let (f, fh) = c.create(ROOT_ID, "bin", 0o755, libc::O_RDWR).unwrap();
    c.setattr(f.nodeid, chmod(0o6755)).unwrap();
    assert_eq!(fs::metadata(s.path("bin")).unwrap().mode() & 0o7777, 0o6755);
    let caps = c
        .setxattr(f.nodeid, "security.capability", &FILE_CAPS)
        .is_ok();
    assert!(
        caps || sys::geteuid() != 0,
        "root may set file capabilities"
    );
    assert_eq!(c.write(f.nodeid, fh, 0, b"#!/bin/sh\n").unwrap(), 10);
    assert_eq!(fs::metadata(s.path("bin")).unwrap().mode() & 0o7777, 0o755);
    if caps {
        assert_eq!(
            c.getxattr(f.nodeid, "security.capability", 0).unwrap_err(),
            libc::ENODATA
        );
    }
    // Setgid without group execute is not a privilege: it stays.
    c.setattr(f.nodeid, chmod(0o2644)).unwrap();
    c.write(f.nodeid, fh, 0, b"x").unwrap();
    assert_eq!(fs::metadata(s.path("bin")).unwrap().mode() & 0o7777, 0o2644);
}

#[test]
fn chown_and_truncate_clear_setuid() {
    let s = Share::new();
    let mut c = s.client();
    let (f, fh) = c.create(ROOT_ID, "bin", 0o755, libc::O_RDWR).unwrap();
    c.write(f.nodeid, fh, 0, b"0123456789").unwrap();
    c.setattr(f.nodeid, chmod(0o4755)).unwrap();
    let truncate = SetattrIn {
        valid: fuse::fattr::SIZE,
        size: 3,
        ..Default::default()
    };
    let attr = c.setattr(f.nodeid, truncate).unwrap();
    assert_eq!((attr.size, attr.mode & 0o7777), (3, 0o755));
    c.setattr(f.nodeid, chmod(0o4755)).unwrap();
    let chown = SetattrIn {
        valid: fuse::fattr::UID | fuse::fattr::GID,
        uid: sys::geteuid(),
        gid: fs::metadata(s.path("bin")).unwrap().gid(),
        ..Default::default()
    };
    let attr = c.setattr(f.nodeid, chown).unwrap();
    assert_eq!(attr.mode & 0o7777, 0o755);
}

#[test]
fn the_fd_cap_answers_emfile_until_fds_are_given_back() {
    let s = Share::new();
    for n in ["a", "b", "c", "d"] {
        fs::write(s.path(n), n).unwrap();
    }
    let mut c = s.client_with(|cfg| PassthroughConfig {
        max_open_fds: 4,
        ..cfg
    });
    let a = c.lookup(ROOT_ID, "a").unwrap();
    c.lookup(ROOT_ID, "b").unwrap();
    let fh = c.open(a.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(c.lookup(ROOT_ID, "c").unwrap_err(), libc::EMFILE);
    assert_eq!(c.open(a.nodeid, libc::O_RDONLY).unwrap_err(), libc::EMFILE);
    assert_eq!(c.opendir(ROOT_ID).unwrap_err(), libc::EMFILE);
    assert_eq!(c.create(ROOT_ID, "e", 0o644, 0).unwrap_err(), libc::EMFILE);
    assert_eq!(c.mkdir(ROOT_ID, "e", 0o755).unwrap_err(), libc::EMFILE);
    assert!(!s.path("e").exists());
    // A known node needs no new fd.
    assert!(c.lookup(ROOT_ID, "a").is_ok());
    c.release(a.nodeid, fh, false).unwrap();
    assert!(c.lookup(ROOT_ID, "c").is_ok());
    assert_eq!(c.server.filesystem().open_fds(), 4);
}

#[test]
fn create_write_read_and_append_round_trip() {
    let s = Share::new();
    let mut c = s.client();
    let (f, fh) = c.create(ROOT_ID, "f", 0o640, libc::O_RDWR).unwrap();
    assert_eq!(
        f.attr.mode,
        libc::S_IFREG | 0o640,
        "the process umask does not apply"
    );
    assert_eq!(f.entry_valid, 1);
    c.write(f.nodeid, fh, 0, b"hello ").unwrap();
    c.write(f.nodeid, fh, 6, b"world").unwrap();
    assert_eq!(c.read(f.nodeid, fh, 0, 100).unwrap(), b"hello world");
    assert_eq!(c.read(f.nodeid, fh, 6, 3).unwrap(), b"wor");
    assert_eq!(c.read(f.nodeid, fh, 1000, 3).unwrap(), b"");
    c.release(f.nodeid, fh, false).unwrap();
    let fh = c.open(f.nodeid, libc::O_WRONLY | libc::O_APPEND).unwrap();
    c.write(f.nodeid, fh, 0, b"!").unwrap();
    assert_eq!(fs::read(s.path("f")).unwrap(), b"hello world!");
    let fsync = encode(&fuse::FsyncIn {
        fh,
        ..Default::default()
    });
    c.call(fuse::opcode::FSYNC, f.nodeid, &fsync).unwrap();
    let flush = encode(&fuse::FlushIn {
        fh,
        ..Default::default()
    });
    c.call(fuse::opcode::FLUSH, f.nodeid, &flush).unwrap();
    // O_TRUNC on open, and an existing name on create without O_EXCL.
    let fh2 = c.open(f.nodeid, libc::O_WRONLY | libc::O_TRUNC).unwrap();
    assert_eq!(fs::read(s.path("f")).unwrap(), b"");
    let (again, _) = c.create(ROOT_ID, "f", 0o600, libc::O_RDWR).unwrap();
    assert_eq!(again.nodeid, f.nodeid);
    assert_eq!(fs::metadata(s.path("f")).unwrap().mode() & 0o777, 0o640);
    assert_eq!(
        c.create(ROOT_ID, "f", 0o600, libc::O_EXCL).unwrap_err(),
        libc::EEXIST
    );
    c.release(f.nodeid, fh2, false).unwrap();
}

#[test]
fn directories_are_made_listed_and_removed() {
    let s = Share::new();
    let mut c = s.client();
    let d = c.mkdir(ROOT_ID, "d", 0o750).unwrap();
    assert_eq!(d.attr.mode, libc::S_IFDIR | 0o750);
    for i in 0..100 {
        let (_, fh) = c
            .create(d.nodeid, &format!("file-with-a-long-name-{i:03}"), 0o644, 0)
            .unwrap();
        c.release(d.nodeid, fh, false).unwrap();
    }
    let names = c.readdir(d.nodeid, false).unwrap();
    assert_eq!(names.len(), 102, "100 files, . and ..");
    let plus = c.readdir(d.nodeid, true).unwrap();
    assert_eq!(plus.len(), 102);
    for (n, id) in &plus {
        if n == "." || n == ".." {
            assert_eq!(*id, 0, "no lookup is counted for {n}");
        } else {
            // create counted one lookup, readdirplus one more.
            assert_eq!(c.server.filesystem().lookup_count(*id), 2, "{n}");
        }
    }
    assert_eq!(c.rmdir(ROOT_ID, "d").unwrap_err(), libc::ENOTEMPTY);
    for i in 0..100 {
        c.unlink(d.nodeid, &format!("file-with-a-long-name-{i:03}"))
            .unwrap();
    }
    assert_eq!(c.unlink(ROOT_ID, "d").unwrap_err(), libc::EISDIR);
    c.rmdir(ROOT_ID, "d").unwrap();
    assert!(!s.path("d").exists());
    assert_eq!(
        c.opendir(d.nodeid).map(drop),
        Ok(()),
        "an unlinked dir stays open-able"
    );
}

#[test]
fn renames_move_exchange_and_refuse_to_replace() {
    let s = Share::new();
    fs::create_dir(s.path("a")).unwrap();
    fs::create_dir(s.path("b")).unwrap();
    fs::write(s.path("a/f"), b"f").unwrap();
    fs::write(s.path("b/g"), b"g").unwrap();
    let mut c = s.client();
    let a = c.lookup(ROOT_ID, "a").unwrap().nodeid;
    let b = c.lookup(ROOT_ID, "b").unwrap().nodeid;
    let f = c.lookup(a, "f").unwrap().nodeid;
    c.rename(a, "f", b, "f2", 0).unwrap();
    assert_eq!(fs::read(s.path("b/f2")).unwrap(), b"f");
    // The moved node is reopened under its new name.
    let fh = c.open(f, libc::O_RDONLY).unwrap();
    assert_eq!(c.read(f, fh, 0, 10).unwrap(), b"f");
    assert_eq!(
        c.rename(b, "f2", b, "g", libc::RENAME_NOREPLACE)
            .unwrap_err(),
        libc::EEXIST
    );
    c.rename(b, "f2", b, "g", libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(fs::read(s.path("b/g")).unwrap(), b"f");
    assert_eq!(fs::read(s.path("b/f2")).unwrap(), b"g");
    assert_eq!(c.rename(b, "g", b, "h", 0x100).unwrap_err(), libc::EINVAL);
    // A directory moved under another: `..` follows it.
    c.rename(ROOT_ID, "a", b, "a", 0).unwrap();
    assert_eq!(c.lookup(a, "..").unwrap().nodeid, b);
}

#[test]
fn links_symlinks_and_special_files() {
    let s = Share::new();
    let mut c = s.client();
    let (f, fh) = c.create(ROOT_ID, "f", 0o644, libc::O_RDWR).unwrap();
    c.write(f.nodeid, fh, 0, b"x").unwrap();
    let l = c.link(f.nodeid, ROOT_ID, "hard").unwrap();
    assert_eq!(l.nodeid, f.nodeid);
    assert_eq!(l.attr.nlink, 2);
    let sl = c.symlink(ROOT_ID, "soft", "/nowhere/../f").unwrap();
    assert_eq!(sl.attr.mode & S_IFMT, libc::S_IFLNK);
    assert_eq!(c.readlink(sl.nodeid).unwrap(), b"/nowhere/../f");
    assert_eq!(c.readlink(f.nodeid).unwrap_err(), libc::EINVAL);
    let fifo = c.mknod(ROOT_ID, "fifo", libc::S_IFIFO | 0o600, 0).unwrap();
    assert_eq!(fifo.attr.mode, libc::S_IFIFO | 0o600);
    assert_eq!(
        c.open(fifo.nodeid, libc::O_RDONLY).unwrap_err(),
        libc::EACCES
    );
    let whiteout = c.mknod(ROOT_ID, "wh", libc::S_IFCHR, 0).unwrap();
    assert_eq!(whiteout.attr.rdev, 0);
    let sda = libc::makedev(8, 0) as u32;
    assert_eq!(
        c.mknod(ROOT_ID, "sda", libc::S_IFBLK | 0o600, sda)
            .unwrap_err(),
        libc::EPERM
    );
    assert_eq!(
        c.mknod(ROOT_ID, "mem", libc::S_IFCHR | 0o600, 0x101)
            .unwrap_err(),
        libc::EPERM
    );
    assert!(!s.path("sda").exists());
    // Unlink one name; the node reopens through the other after a lookup.
    c.unlink(ROOT_ID, "f").unwrap();
    c.lookup(ROOT_ID, "hard").unwrap();
    assert!(c.open(f.nodeid, libc::O_RDONLY).is_ok());
}

#[test]
fn xattrs_are_set_read_listed_and_removed() {
    let s = Share::new();
    let mut c = s.client();
    let (f, _) = c.create(ROOT_ID, "f", 0o644, 0).unwrap();
    c.setxattr(f.nodeid, "user.one", b"1").unwrap();
    c.setxattr(f.nodeid, "user.two", b"22").unwrap();
    let size = c.getxattr(f.nodeid, "user.two", 0).unwrap();
    assert_eq!(
        crate::fs::test_client::parse::<fuse::GetxattrOut>(&size).size,
        2
    );
    assert_eq!(c.getxattr(f.nodeid, "user.two", 64).unwrap(), b"22");
    assert_eq!(
        c.getxattr(f.nodeid, "user.two", 1).unwrap_err(),
        libc::ERANGE
    );
    let list = c.listxattr(f.nodeid, 1024).unwrap();
    assert!(list.windows(9).any(|w| w == b"user.one\0"));
    c.removexattr(f.nodeid, "user.one").unwrap();
    assert_eq!(
        c.getxattr(f.nodeid, "user.one", 64).unwrap_err(),
        libc::ENODATA
    );
}

#[test]
fn setattr_changes_mode_times_and_size() {
    let s = Share::new();
    let mut c = s.client();
    let (f, _) = c.create(ROOT_ID, "f", 0o644, 0).unwrap();
    let attr = c.setattr(f.nodeid, chmod(0o600)).unwrap();
    assert_eq!(attr.mode & 0o7777, 0o600);
    let times = SetattrIn {
        valid: fuse::fattr::MTIME | fuse::fattr::ATIME,
        mtime: 1_000_000,
        atime: 2_000_000,
        ..Default::default()
    };
    let attr = c.setattr(f.nodeid, times).unwrap();
    assert_eq!((attr.mtime, attr.atime), (1_000_000, 2_000_000));
    let grow = SetattrIn {
        valid: fuse::fattr::SIZE,
        size: 4096,
        ..Default::default()
    };
    assert_eq!(c.setattr(f.nodeid, grow).unwrap().size, 4096);
    assert_eq!(c.getattr(f.nodeid).unwrap().size, 4096);
}

#[test]
fn statfs_access_fallocate_lseek_and_copy_file_range_work() {
    let s = Share::new();
    let mut c = s.client();
    let st = c.call(fuse::opcode::STATFS, ROOT_ID, &[]).unwrap();
    assert!(crate::fs::test_client::parse::<fuse::StatfsOut>(&st).bsize > 0);
    let (f, fh) = c.create(ROOT_ID, "f", 0o644, libc::O_RDWR).unwrap();
    let fa = encode(&fuse::FallocateIn {
        fh,
        offset: 0,
        length: 8192,
        mode: 0,
        padding: 0,
    });
    c.call(fuse::opcode::FALLOCATE, f.nodeid, &fa).unwrap();
    assert_eq!(fs::metadata(s.path("f")).unwrap().len(), 8192);
    c.write(f.nodeid, fh, 0, b"abcdef").unwrap();
    let seek = |whence: i32| {
        encode(&fuse::LseekIn {
            fh,
            offset: 0,
            whence: whence as u32,
            padding: 0,
        })
    };
    let r = c
        .call(fuse::opcode::LSEEK, f.nodeid, &seek(libc::SEEK_DATA))
        .unwrap();
    assert_eq!(
        crate::fs::test_client::parse::<fuse::LseekOut>(&r).offset,
        0
    );
    let r = c
        .call(fuse::opcode::LSEEK, f.nodeid, &seek(libc::SEEK_HOLE))
        .unwrap();
    assert!(crate::fs::test_client::parse::<fuse::LseekOut>(&r).offset > 0);
    assert_eq!(
        c.call(fuse::opcode::LSEEK, f.nodeid, &seek(99))
            .unwrap_err(),
        libc::EINVAL
    );
    let (g, gh) = c.create(ROOT_ID, "g", 0o644, libc::O_RDWR).unwrap();
    let cfr = encode(&fuse::CopyFileRangeIn {
        fh_in: fh,
        off_in: 2,
        nodeid_out: g.nodeid,
        fh_out: gh,
        off_out: 0,
        len: 3,
        flags: 0,
    });
    let r = c
        .call(fuse::opcode::COPY_FILE_RANGE, f.nodeid, &cfr)
        .unwrap();
    assert_eq!(crate::fs::test_client::parse::<fuse::WriteOut>(&r).size, 3);
    assert_eq!(fs::read(s.path("g")).unwrap(), b"cde");
    let access = |mask: i32| {
        encode(&fuse::AccessIn {
            mask: mask as u32,
            padding: 0,
        })
    };
    c.call(
        fuse::opcode::ACCESS,
        f.nodeid,
        &access(libc::R_OK | libc::W_OK),
    )
    .unwrap();
    assert_eq!(
        c.call(fuse::opcode::ACCESS, f.nodeid, &access(libc::X_OK))
            .unwrap_err(),
        libc::EACCES
    );
    c.uid = 4242;
    c.gid = 4242;
    assert_eq!(
        c.call(fuse::opcode::ACCESS, f.nodeid, &access(libc::W_OK))
            .unwrap_err(),
        libc::EACCES
    );
    c.call(fuse::opcode::ACCESS, f.nodeid, &access(libc::R_OK))
        .unwrap();
}

#[test]
fn posix_locks_conflict_between_open_files() {
    let s = Share::new();
    let mut c = s.client();
    let (f, fh1) = c.create(ROOT_ID, "f", 0o644, libc::O_RDWR).unwrap();
    let fh2 = c.open(f.nodeid, libc::O_RDWR).unwrap();
    let lk = |fh: u64, typ: i32, start: u64, end: u64| {
        encode(&fuse::LkIn {
            fh,
            owner: fh,
            lk: fuse::FileLock {
                start,
                end,
                typ: typ as u32,
                pid: 1,
            },
            lk_flags: 0,
            padding: 0,
        })
    };
    c.call(
        fuse::opcode::SETLK,
        f.nodeid,
        &lk(fh1, libc::F_WRLCK, 0, 99),
    )
    .unwrap();
    let r = c
        .call(
            fuse::opcode::GETLK,
            f.nodeid,
            &lk(fh2, libc::F_WRLCK, 50, u64::MAX),
        )
        .unwrap();
    let got: fuse::FileLock = crate::fs::test_client::parse(&r);
    assert_eq!((got.typ as i32, got.start, got.end), (libc::F_WRLCK, 0, 99));
    let err = c
        .call(
            fuse::opcode::SETLKW,
            f.nodeid,
            &lk(fh2, libc::F_RDLCK, 10, 10),
        )
        .unwrap_err();
    assert_eq!(err, libc::EAGAIN, "SETLKW never blocks the device thread");
    c.call(
        fuse::opcode::SETLK,
        f.nodeid,
        &lk(fh2, libc::F_RDLCK, 100, 200),
    )
    .unwrap();
    c.call(
        fuse::opcode::SETLK,
        f.nodeid,
        &lk(fh1, libc::F_UNLCK, 0, u64::MAX),
    )
    .unwrap();
    let r = c
        .call(
            fuse::opcode::GETLK,
            f.nodeid,
            &lk(fh1, libc::F_WRLCK, 0, 50),
        )
        .unwrap();
    assert_eq!(
        crate::fs::test_client::parse::<fuse::FileLock>(&r).typ as i32,
        libc::F_UNLCK
    );
    assert_eq!(
        c.call(fuse::opcode::SETLK, f.nodeid, &lk(fh1, libc::F_WRLCK, 9, 3))
            .unwrap_err(),
        libc::EINVAL
    );
}

#[test]
fn new_entries_get_the_callers_ids_when_running_as_root() {
    if sys::geteuid() != 0 {
        return;
    }
    let s = Share::new();
    let mut c = s.client_with(|cfg| PassthroughConfig {
        ownership: Ownership::Passthrough,
        ..cfg
    });
    c.uid = 1234;
    c.gid = 5678;
    let (f, _) = c.create(ROOT_ID, "f", 0o644, 0).unwrap();
    assert_eq!((f.attr.uid, f.attr.gid), (1234, 5678));
    let m = fs::metadata(s.path("f")).unwrap();
    assert_eq!((m.uid(), m.gid()), (1234, 5678));
    let d = c.mkdir(ROOT_ID, "d", 0o755).unwrap();
    assert_eq!(d.attr.uid, 1234);
    let l = c.symlink(ROOT_ID, "l", "f").unwrap();
    assert_eq!(fs::symlink_metadata(s.path("l")).unwrap().uid(), 1234);
    assert_eq!(l.attr.uid, 1234);
}

#[test]
fn squashed_ownership_shows_one_owner_and_ignores_chown() {
    let s = Share::new();
    fs::write(s.path("f"), b"").unwrap();
    let mut c = s.client_with(|cfg| PassthroughConfig {
        ownership: Ownership::Squash { uid: 7, gid: 8 },
        ..cfg
    });
    let f = c.lookup(ROOT_ID, "f").unwrap();
    assert_eq!((f.attr.uid, f.attr.gid), (7, 8));
    let before = fs::metadata(s.path("f")).unwrap().uid();
    let chown = SetattrIn {
        valid: fuse::fattr::UID,
        uid: 999,
        ..Default::default()
    };
    c.setattr(f.nodeid, chown).unwrap();
    assert_eq!(fs::metadata(s.path("f")).unwrap().uid(), before);
    c.uid = 1000;
    let (n, _) = c.create(ROOT_ID, "n", 0o644, 0).unwrap();
    assert_eq!(n.attr.uid, 7);
    assert_eq!(fs::metadata(s.path("n")).unwrap().uid(), sys::geteuid());
}

#[test]
fn destroy_drops_every_node_and_handle() {
    let s = Share::new();
    fs::write(s.path("f"), b"").unwrap();
    let mut c = s.client();
    let f = c.lookup(ROOT_ID, "f").unwrap();
    let fh = c.open(f.nodeid, libc::O_RDONLY).unwrap();
    c.call(fuse::opcode::DESTROY, 0, &[]).unwrap();
    assert_eq!(c.server.filesystem().open_fds(), 1);
    assert_eq!(
        c.call(fuse::opcode::GETATTR, ROOT_ID, &[0; 16])
            .unwrap_err(),
        libc::EIO
    );
    c.call(
        fuse::opcode::INIT,
        0,
        &crate::fs::test_client::init_request(0)[40..],
    )
    .unwrap();
    assert_eq!(c.read(f.nodeid, fh, 0, 1).unwrap_err(), libc::EBADF);
    assert!(c.getattr(ROOT_ID).is_ok());
}
