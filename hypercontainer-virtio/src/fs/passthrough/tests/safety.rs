//! Escapes, stale handles, read-only shares, privilege clearing, the fd cap.

use std::fs;
use std::os::unix::fs::MetadataExt;

use super::*;

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
fn a_create_that_truncates_an_existing_file_clears_setuid() {
    let s = Share::new();
    fs::write(s.path("bin"), b"0123").unwrap();
    fs::set_permissions(s.path("bin"), fs::Permissions::from_mode(0o4755)).unwrap();
    let mut c = s.client();
    let (_, _) = c
        .create(ROOT_ID, "bin", 0o755, libc::O_RDWR | libc::O_TRUNC)
        .unwrap();
    let m = fs::metadata(s.path("bin")).unwrap();
    assert_eq!((m.len(), m.mode() & 0o7777), (0, 0o755));
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
fn a_file_swapped_after_lookup_is_not_opened() {
    let s = Share::new();
    fs::write(s.path("f"), b"inside").unwrap();
    fs::write(s.path("g"), b"other").unwrap();
    let before = snapshot(&s.outside);
    let mut c = s.client();
    let f = c.lookup(ROOT_ID, "f").unwrap();
    // Swapped for a link to the canary: the open refuses to follow it.
    fs::remove_file(s.path("f")).unwrap();
    std::os::unix::fs::symlink(s.outside.join("canary"), s.path("f")).unwrap();
    let trunc = libc::O_RDWR | libc::O_TRUNC;
    assert_eq!(c.open(f.nodeid, trunc).unwrap_err(), libc::ESTALE);
    let truncate = SetattrIn {
        valid: fuse::fattr::SIZE,
        ..Default::default()
    };
    assert_eq!(c.setattr(f.nodeid, truncate).unwrap_err(), libc::ESTALE);
    // Swapped for another file of the share: not the same inode either.
    fs::remove_file(s.path("f")).unwrap();
    fs::rename(s.path("g"), s.path("f")).unwrap();
    assert_eq!(c.open(f.nodeid, trunc).unwrap_err(), libc::ESTALE);
    assert_eq!(fs::read(s.path("f")).unwrap(), b"other");
    assert_eq!(snapshot(&s.outside), before);
}

#[test]
fn a_fifo_renamed_over_a_looked_up_file_does_not_block_the_open() {
    let s = Share::new();
    fs::write(s.path("f"), b"inside").unwrap();
    let mut c = s.client();
    let f = c.lookup(ROOT_ID, "f").unwrap();
    c.mknod(ROOT_ID, "p", libc::S_IFIFO | 0o666, 0).unwrap();
    c.rename(ROOT_ID, "p", ROOT_ID, "f", 0).unwrap();
    // Without a reader, a blocking open for writing would never return.
    assert_eq!(c.open(f.nodeid, libc::O_WRONLY).unwrap_err(), libc::ESTALE);
    assert_eq!(c.open(f.nodeid, libc::O_RDONLY).unwrap_err(), libc::ESTALE);
    assert_eq!(
        c.create(ROOT_ID, "f", 0o644, libc::O_WRONLY).unwrap_err(),
        libc::ENXIO
    );
}
