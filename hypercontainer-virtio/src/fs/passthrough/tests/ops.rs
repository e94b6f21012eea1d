//! Each group of operations doing its ordinary work.

use std::fs;
use std::os::unix::fs::MetadataExt;

use super::*;

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
fn statfs_syncfs_access_fallocate_lseek_and_copy_file_range_work() {
    let s = Share::new();
    let mut c = s.client();
    let st = c.call(fuse::opcode::STATFS, ROOT_ID, &[]).unwrap();
    c.call(fuse::opcode::SYNCFS, ROOT_ID, &[0u8; 8]).unwrap();
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
fn a_new_entry_keeps_the_asked_mode_after_its_chown_and_shows_what_the_host_has() {
    if sys::geteuid() != 0 {
        return;
    }
    let s = Share::new();
    let mut c = s.client_with(|cfg| PassthroughConfig {
        ownership: Ownership::Passthrough,
        ..cfg
    });
    // Already the process's ids: nothing to change, the first stat stands.
    let (same, _) = c.create(ROOT_ID, "same", 0o644, 0).unwrap();
    let m = fs::metadata(s.path("same")).unwrap();
    assert_eq!((same.attr.uid, same.attr.mode), (m.uid(), m.mode()));
    // Another owner and setgid with group execute: the chown would clear
    // the bit, the mode is set after it.
    c.uid = 1234;
    c.gid = 5678;
    let (f, _) = c.create(ROOT_ID, "f", 0o2755, 0).unwrap();
    let m = fs::metadata(s.path("f")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1234, 5678, 0o2755));
    assert_eq!((f.attr.uid, f.attr.mode), (1234, libc::S_IFREG | 0o2755));
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

#[test]
fn batch_forget_drops_several_nodes_and_fsyncdir_flushes_a_directory() {
    let s = Share::new();
    fs::write(s.path("a"), b"").unwrap();
    fs::write(s.path("b"), b"").unwrap();
    let mut c = s.client();
    let a = c.lookup(ROOT_ID, "a").unwrap().nodeid;
    let b = c.lookup(ROOT_ID, "b").unwrap().nodeid;
    c.lookup(ROOT_ID, "b").unwrap();
    let mut body = encode(&fuse::BatchForgetIn { count: 2, dummy: 0 });
    body.extend(encode(&fuse::ForgetOne {
        nodeid: a,
        nlookup: 1,
    }));
    body.extend(encode(&fuse::ForgetOne {
        nodeid: b,
        nlookup: 1,
    }));
    let req = crate::fs::test_client::request(fuse::opcode::BATCH_FORGET, 99, 0, &body);
    assert!(c.server.handle(&req).is_none(), "no reply to a forget");
    assert_eq!(c.getattr(a).unwrap_err(), libc::EBADF);
    assert_eq!(c.server.filesystem().lookup_count(b), 1);
    let fh = c.opendir(ROOT_ID).unwrap();
    let fsync = encode(&fuse::FsyncIn {
        fh,
        fsync_flags: fuse::FSYNC_FDATASYNC,
        padding: 0,
    });
    c.call(fuse::opcode::FSYNCDIR, ROOT_ID, &fsync).unwrap();
    // A file handle is not a directory handle, and the other way round.
    assert_eq!(
        c.call(fuse::opcode::FSYNC, ROOT_ID, &fsync).unwrap_err(),
        libc::EBADF
    );
    assert_eq!(c.release(ROOT_ID, fh, false).unwrap_err(), libc::EBADF);
    c.release(ROOT_ID, fh, true).unwrap();
}
