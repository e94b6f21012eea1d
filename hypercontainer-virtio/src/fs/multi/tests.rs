//! A multi-share filesystem behind the FUSE server, driven by crafted
//! requests, over temporary host directories.

use std::fs;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::ids::{self, INNER_BITS};
use super::*;
use crate::fs::fuse::{self, encode, opcode, Reader, SetattrIn, Wire, ROOT_ID};
use crate::fs::test_client::Client;
use crate::fs::{Fs, MultiShareConfig};
use crate::VirtioDevice;

struct Dirs {
    _tmp: tempfile::TempDir,
    rw: PathBuf,
    ro: PathBuf,
}

fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().unwrap();
    let rw = tmp.path().join("rw");
    let ro = tmp.path().join("ro");
    fs::create_dir_all(rw.join("d")).unwrap();
    fs::create_dir(&ro).unwrap();
    fs::write(rw.join("f"), b"rw file").unwrap();
    fs::write(ro.join("f"), b"ro file").unwrap();
    Dirs { _tmp: tmp, rw, ro }
}

/// Shares `rw` (index 0, writable) and `ro` (index 1, read-only), after INIT.
fn client(d: &Dirs) -> Client<MultiFs> {
    let m = MultiFs::new();
    m.add("rw", ShareConfig::new(&d.rw, "ignored")).unwrap();
    m.add("ro", ShareConfig::new(&d.ro, "").read_only(true))
        .unwrap();
    Client::new(Box::new(m))
}

/// `(name, d_ino)` of every entry of a directory, by plain READDIR.
fn listing(c: &mut Client<MultiFs>, node: u64) -> Vec<(String, u64)> {
    let fh = c.opendir(node).unwrap();
    let body = encode(&fuse::ReadIn {
        fh,
        size: 4096,
        ..Default::default()
    });
    let r = c.call(opcode::READDIR, node, &body).unwrap();
    let mut rd = Reader::new(&r);
    let mut out = Vec::new();
    while rd.remaining() > 0 {
        let d: fuse::Dirent = rd.read().unwrap();
        let n = rd.take(d.namelen as usize, "name").unwrap();
        out.push((String::from_utf8_lossy(n).into_owned(), d.ino));
        let pad = fuse::dirent_size(d.namelen as usize, false) - fuse::Dirent::SIZE;
        rd.skip(pad - d.namelen as usize, "pad").unwrap();
    }
    c.release(node, fh, true).unwrap();
    out
}

#[test]
fn lookup_answers_each_share_root_and_enoent_for_other_names() {
    let d = dirs();
    let mut c = client(&d);
    let rw = c.lookup(ROOT_ID, "rw").unwrap();
    let ro = c.lookup(ROOT_ID, "ro").unwrap();
    assert_eq!(ids::decode(rw.nodeid), Some((0, ROOT_ID)));
    assert_eq!(ids::decode(ro.nodeid), Some((1, ROOT_ID)));
    assert_eq!(rw.attr.mode & libc::S_IFMT, libc::S_IFDIR);
    assert_eq!(c.lookup(ROOT_ID, "nope").unwrap_err(), libc::ENOENT);
    assert_eq!(c.lookup(ROOT_ID, "f").unwrap_err(), libc::ENOENT);
    let f = c.lookup(rw.nodeid, "f").unwrap();
    assert_eq!(f.attr.size, 7);
    assert_eq!(ids::decode(f.nodeid).unwrap().0, 0);
}

#[test]
fn the_virtual_root_is_a_read_only_directory_owned_by_root() {
    let d = dirs();
    let mut c = client(&d);
    let a = c.getattr(ROOT_ID).unwrap();
    assert_eq!(a.mode, libc::S_IFDIR | 0o555);
    assert_eq!((a.nlink, a.uid, a.gid, a.ino), (4, 0, 0, 1));
    let access = |c: &mut Client<MultiFs>, mask: i32| {
        c.call(
            opcode::ACCESS,
            ROOT_ID,
            &encode(&fuse::AccessIn {
                mask: mask as u32,
                padding: 0,
            }),
        )
        .map(drop)
    };
    assert_eq!(access(&mut c, libc::R_OK | libc::X_OK), Ok(()));
    assert_eq!(access(&mut c, libc::W_OK), Err(libc::EROFS));
    assert!(c.call(opcode::STATFS, ROOT_ID, &[]).is_ok());
}

#[test]
fn readdir_of_the_root_lists_dot_dotdot_and_the_share_names() {
    let d = dirs();
    let mut c = client(&d);
    let names: Vec<String> = c
        .readdir(ROOT_ID, false)
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, [".", "..", "rw", "ro"]);
    let plus = c.readdir(ROOT_ID, true).unwrap();
    let rw = c.lookup(ROOT_ID, "rw").unwrap().nodeid;
    let ro = c.lookup(ROOT_ID, "ro").unwrap().nodeid;
    assert_eq!(plus[2], ("rw".to_string(), rw));
    assert_eq!(plus[3], ("ro".to_string(), ro));
    // d_ino of a share matches its st_ino.
    let inos = listing(&mut c, ROOT_ID);
    assert_eq!(inos[2].1, c.getattr(rw).unwrap().ino);
    assert_eq!(inos[0].1, 1);
}

#[test]
fn a_write_in_a_read_only_share_is_erofs_while_its_writable_sibling_changes_the_file() {
    let d = dirs();
    let mut c = client(&d);
    let rw = c.lookup(ROOT_ID, "rw").unwrap().nodeid;
    let ro = c.lookup(ROOT_ID, "ro").unwrap().nodeid;
    let f = c.lookup(rw, "f").unwrap().nodeid;
    let fh = c.open(f, libc::O_RDWR).unwrap();
    assert_eq!(ids::decode(fh).unwrap().0, 0);
    assert_eq!(c.write(f, fh, 0, b"RW").unwrap(), 2);
    assert_eq!(fs::read(d.rw.join("f")).unwrap(), b"RW file");
    let g = c.lookup(ro, "f").unwrap().nodeid;
    assert_eq!(c.open(g, libc::O_RDWR).unwrap_err(), libc::EROFS);
    let gh = c.open(g, libc::O_RDONLY).unwrap();
    assert_eq!(c.write(g, gh, 0, b"RO").unwrap_err(), libc::EROFS);
    assert_eq!(c.read(g, gh, 0, 100).unwrap(), b"ro file");
    assert_eq!(
        c.create(ro, "new", 0o644, libc::O_RDWR).unwrap_err(),
        libc::EROFS
    );
    assert_eq!(fs::read(d.ro.join("f")).unwrap(), b"ro file");
    // A file created in the writable share gets a handle of that share.
    let (e, h) = c.create(rw, "new", 0o644, libc::O_RDWR).unwrap();
    assert_eq!(ids::decode(h).unwrap().0, 0);
    assert_eq!(c.write(e.nodeid, h, 0, b"x").unwrap(), 1);
    assert_eq!(fs::read(d.rw.join("new")).unwrap(), b"x");
}

#[test]
fn rename_link_and_copy_across_shares_are_exdev() {
    let d = dirs();
    let m = MultiFs::new();
    m.add("a", ShareConfig::new(&d.rw, "")).unwrap();
    m.add("b", ShareConfig::new(&d.ro, "")).unwrap();
    let mut c = Client::new(Box::new(m));
    let a = c.lookup(ROOT_ID, "a").unwrap().nodeid;
    let b = c.lookup(ROOT_ID, "b").unwrap().nodeid;
    assert_eq!(c.rename(a, "f", b, "moved", 0).unwrap_err(), libc::EXDEV);
    let f = c.lookup(a, "f").unwrap().nodeid;
    assert_eq!(c.link(f, b, "linked").unwrap_err(), libc::EXDEV);
    let g = c.lookup(b, "f").unwrap().nodeid;
    let (fh, gh) = (
        c.open(f, libc::O_RDONLY).unwrap(),
        c.open(g, libc::O_RDWR).unwrap(),
    );
    let copy = encode(&fuse::CopyFileRangeIn {
        fh_in: fh,
        nodeid_out: g,
        fh_out: gh,
        len: 4,
        ..Default::default()
    });
    assert_eq!(
        c.call(opcode::COPY_FILE_RANGE, f, &copy).unwrap_err(),
        libc::EXDEV
    );
    assert!(!d.ro.join("moved").exists() && !d.ro.join("linked").exists());
    assert_eq!(fs::read(d.ro.join("f")).unwrap(), b"ro file");
    // Within one share both work.
    c.rename(a, "f", a, "g", 0).unwrap();
    assert!(d.rw.join("g").exists());
}

#[test]
fn changes_to_the_virtual_root_are_refused() {
    let d = dirs();
    let mut c = client(&d);
    let rw = c.lookup(ROOT_ID, "rw").unwrap().nodeid;
    let f = c.lookup(rw, "f").unwrap().nodeid;
    let erofs = Err(libc::EROFS);
    assert_eq!(c.mkdir(ROOT_ID, "x", 0o755).map(drop), erofs);
    assert_eq!(c.create(ROOT_ID, "x", 0o644, libc::O_RDWR).map(drop), erofs);
    assert_eq!(c.symlink(ROOT_ID, "x", "rw").map(drop), erofs);
    assert_eq!(
        c.mknod(ROOT_ID, "x", libc::S_IFREG | 0o644, 0).map(drop),
        erofs
    );
    assert_eq!(c.unlink(ROOT_ID, "rw"), erofs);
    assert_eq!(c.rmdir(ROOT_ID, "rw"), erofs);
    assert_eq!(c.rename(ROOT_ID, "rw", rw, "x", 0), erofs);
    assert_eq!(c.rename(rw, "f", ROOT_ID, "f", 0), erofs);
    assert_eq!(c.link(f, ROOT_ID, "x").map(drop), erofs);
    assert_eq!(c.link(ROOT_ID, rw, "x").unwrap_err(), libc::EPERM);
    let chmod = SetattrIn {
        valid: fuse::fattr::MODE,
        mode: 0o777,
        ..Default::default()
    };
    assert_eq!(c.setattr(ROOT_ID, chmod).map(drop), erofs);
    assert_eq!(c.setxattr(ROOT_ID, "user.x", b"1"), erofs);
    assert_eq!(c.removexattr(ROOT_ID, "user.x"), erofs);
    assert_eq!(c.open(ROOT_ID, libc::O_RDONLY).unwrap_err(), libc::EISDIR);
    assert_eq!(
        c.getxattr(ROOT_ID, "user.x", 64).unwrap_err(),
        libc::ENODATA
    );
    assert_eq!(c.readdir(ROOT_ID, false).unwrap().len(), 4);
    assert!(d.rw.join("f").exists() && !d.rw.join("x").exists());
}

#[test]
fn dotdot_of_a_share_root_stays_at_that_share_root() {
    let d = dirs();
    let mut c = client(&d);
    let rw = c.lookup(ROOT_ID, "rw").unwrap();
    let up = c.lookup(rw.nodeid, "..").unwrap();
    assert_eq!((up.nodeid, up.attr.ino), (rw.nodeid, rw.attr.ino));
    let sub = c.lookup(rw.nodeid, "d").unwrap().nodeid;
    assert_eq!(c.lookup(sub, "..").unwrap().nodeid, rw.nodeid);
    // Its listing points `..` at the virtual root, `.` at itself.
    let l = listing(&mut c, rw.nodeid);
    let ino = |n: &str| l.iter().find(|(m, _)| m == n).unwrap().1;
    assert_eq!(ino(".."), 1);
    assert_eq!(ino("."), rw.attr.ino);
    assert_eq!(ino("f"), c.lookup(rw.nodeid, "f").unwrap().attr.ino);
    // readdirplus entries carry ids of the share.
    for (name, node) in c.readdir(rw.nodeid, true).unwrap() {
        if name != "." && name != ".." {
            assert_eq!(ids::decode(node).unwrap().0, 0, "{name}");
        }
    }
}

#[test]
fn forged_node_ids_and_handles_get_errors_and_never_reach_another_share() {
    let d = dirs();
    let mut c = client(&d);
    let ro = c.lookup(ROOT_ID, "ro").unwrap().nodeid;
    let g = c.lookup(ro, "f").unwrap().nodeid;
    let gh = c.open(g, libc::O_RDONLY).unwrap();
    let rw = c.lookup(ROOT_ID, "rw").unwrap().nodeid;
    let f = c.lookup(rw, "f").unwrap().nodeid;
    let unknown_share = (9u64 << INNER_BITS) | 1;
    for forged in [unknown_share, 1 << INNER_BITS, 2, 0, u64::MAX] {
        assert_eq!(c.getattr(forged).unwrap_err(), libc::ESTALE, "{forged:#x}");
        assert_eq!(c.lookup(forged, "f").unwrap_err(), libc::ESTALE);
        c.forget(forged, 1);
    }
    // A huge inner id in a real share is unknown to that share.
    assert_eq!(
        c.getattr(ids::encode(0, ids::MAX_INNER).unwrap())
            .unwrap_err(),
        libc::EBADF
    );
    // A handle of `ro` used on a node of `rw`, a handle of no share, 0.
    let inner_of_gh = gh & ids::MAX_INNER;
    let same_number_in_rw = ids::encode(0, inner_of_gh).unwrap();
    for fh in [gh, 0, unknown_share, inner_of_gh] {
        assert_eq!(c.read(f, fh, 0, 10).unwrap_err(), libc::EBADF, "{fh:#x}");
        assert_eq!(c.write(f, fh, 0, b"x").unwrap_err(), libc::EBADF);
    }
    assert_eq!(
        c.read(f, same_number_in_rw, 0, 10).unwrap_err(),
        libc::EBADF
    );
    assert_eq!(c.read(ROOT_ID, gh, 0, 10).unwrap_err(), libc::EBADF);
    assert_eq!(fs::read(d.rw.join("f")).unwrap(), b"rw file");
    // The real handle still works where it belongs.
    assert_eq!(c.read(g, gh, 0, 2).unwrap(), b"ro");
}

#[test]
fn st_ino_of_two_shares_of_one_host_directory_differ() {
    let d = dirs();
    let m = MultiFs::new();
    m.add("one", ShareConfig::new(&d.rw, "")).unwrap();
    m.add("two", ShareConfig::new(&d.rw, "")).unwrap();
    let mut c = Client::new(Box::new(m));
    let one = c.lookup(ROOT_ID, "one").unwrap();
    let two = c.lookup(ROOT_ID, "two").unwrap();
    assert_ne!(one.attr.ino, two.attr.ino);
    assert_ne!(one.nodeid, two.nodeid);
    let a = c.lookup(one.nodeid, "f").unwrap();
    let b = c.lookup(two.nodeid, "f").unwrap();
    assert_ne!(a.attr.ino, b.attr.ino);
    assert_eq!(c.getattr(a.nodeid).unwrap().ino, a.attr.ino);
}

#[test]
fn a_share_added_after_init_is_visible_to_a_later_lookup() {
    let d = dirs();
    let m = MultiFs::new();
    let handle = m.handle();
    let mut c = Client::new(Box::new(m));
    assert_eq!(c.readdir(ROOT_ID, false).unwrap().len(), 2);
    assert_eq!(c.lookup(ROOT_ID, "late").unwrap_err(), libc::ENOENT);
    let _kept =
        std::thread::spawn(move || handle.add("late", ShareConfig::new(&d.rw, "")).map(|()| d))
            .join()
            .unwrap()
            .unwrap();
    let late = c.lookup(ROOT_ID, "late").unwrap().nodeid;
    assert_eq!(c.lookup(late, "f").unwrap().attr.size, 7);
    assert_eq!(c.getattr(ROOT_ID).unwrap().nlink, 3);
    assert_eq!(c.server.filesystem_mut().len(), 1);
}

#[test]
fn too_many_duplicate_and_invalid_shares_are_typed_errors() {
    let d = dirs();
    let m = MultiFs::new();
    m.add("rw", ShareConfig::new(&d.rw, "")).unwrap();
    assert!(matches!(
        m.add("rw", ShareConfig::new(&d.ro, "")),
        Err(Error::Duplicate(_))
    ));
    assert!(matches!(
        m.add("a/b", ShareConfig::new(&d.ro, "")),
        Err(Error::Name(_))
    ));
    assert!(matches!(
        m.add("..", ShareConfig::new(&d.ro, "")),
        Err(Error::Name(_))
    ));
    assert!(matches!(
        m.add("gone", ShareConfig::new(d.rw.join("missing"), "")),
        Err(Error::Share { .. })
    ));
    assert!(matches!(
        m.add("tiny", ShareConfig::new(&d.ro, "").max_open_fds(1)),
        Err(Error::Share { .. })
    ));
    assert_eq!(m.handle().names(), ["rw"]);
    for i in 1..MAX_SHARES {
        m.add(&format!("s{i}"), ShareConfig::new(&d.ro, ""))
            .unwrap();
    }
    assert!(matches!(
        m.add("last", ShareConfig::new(&d.ro, "")),
        Err(Error::TooMany(_))
    ));
    assert_eq!(m.handle().len(), MAX_SHARES);
}

#[test]
fn a_multi_share_config_is_validated_before_touching_the_host() {
    let missing = PathBuf::from("/nonexistent/hypercontainer");
    let many = (0..=MAX_SHARES).fold(MultiShareConfig::new("vols"), |c, i| {
        c.share(format!("s{i}"), ShareConfig::new(&missing, ""))
    });
    let err = |c: MultiShareConfig| Fs::multi(c).unwrap_err();
    assert!(matches!(
        err(many),
        crate::fs::Error::Multi(Error::TooMany(_))
    ));
    let dup = MultiShareConfig::new("vols")
        .share("a", ShareConfig::new(&missing, ""))
        .share("a", ShareConfig::new(&missing, ""));
    assert!(matches!(
        err(dup),
        crate::fs::Error::Multi(Error::Duplicate(_))
    ));
    let bad = MultiShareConfig::new("vols").share("", ShareConfig::new(&missing, ""));
    assert!(matches!(err(bad), crate::fs::Error::Multi(Error::Name(_))));
    let tag = MultiShareConfig::new("");
    assert!(matches!(err(tag), crate::fs::Error::Tag(_)));
    let queue = MultiShareConfig::new("vols").queue_size(3);
    assert!(matches!(err(queue), crate::fs::Error::QueueSize(3)));
    let open = MultiShareConfig::new("vols").share("a", ShareConfig::new(&missing, ""));
    assert!(matches!(
        err(open),
        crate::fs::Error::Multi(Error::Share { .. })
    ));
}

#[test]
fn a_multi_share_device_carries_its_tag_and_a_handle_to_add_shares() {
    let d = dirs();
    let cfg = MultiShareConfig::new("vols")
        .queue_size(16)
        .share("rw", ShareConfig::new(&d.rw, "ignored").queue_size(3));
    let dev = Fs::multi(cfg).unwrap();
    assert_eq!(dev.device_type(), 26);
    assert_eq!(dev.tag(), "vols");
    let mut cfg = [0u8; 40];
    dev.read_config(0, &mut cfg);
    assert_eq!(&cfg[..5], b"vols\0");
    let shares = dev.shares().unwrap();
    shares.add("ro", ShareConfig::new(&d.ro, "")).unwrap();
    assert_eq!(shares.names(), ["rw", "ro"]);
    assert!(Fs::new(ShareConfig::new(&d.rw, "one"))
        .unwrap()
        .shares()
        .is_none());
}

#[test]
fn destroy_and_a_new_session_keep_every_share() {
    let d = dirs();
    let mut c = client(&d);
    let rw = c.lookup(ROOT_ID, "rw").unwrap().nodeid;
    let f = c.lookup(rw, "f").unwrap().nodeid;
    c.server.reset();
    assert!(c
        .server
        .handle(&crate::fs::test_client::init_request(99))
        .is_some());
    // The share dropped its nodes with the old session.
    assert_eq!(c.getattr(f).unwrap_err(), libc::EBADF);
    let rw = c.lookup(ROOT_ID, "rw").unwrap().nodeid;
    assert!(c.lookup(rw, "f").is_ok());
    assert!(c.lookup(ROOT_ID, "ro").is_ok());
}

#[test]
fn a_root_listing_continues_at_the_offset_of_its_last_entry() {
    let d = dirs();
    let mut c = client(&d);
    let fh = c.opendir(ROOT_ID).unwrap();
    let page = |c: &mut Client<MultiFs>, offset: u64, size: u32| {
        let body = encode(&fuse::ReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        });
        let r = c.call(opcode::READDIR, ROOT_ID, &body).unwrap();
        let mut rd = Reader::new(&r);
        let mut out = Vec::new();
        while rd.remaining() > 0 {
            let e: fuse::Dirent = rd.read().unwrap();
            let n = rd.take(e.namelen as usize, "name").unwrap().to_vec();
            let pad = fuse::dirent_size(e.namelen as usize, false) - fuse::Dirent::SIZE;
            rd.skip(pad - e.namelen as usize, "pad").unwrap();
            out.push((String::from_utf8(n).unwrap(), e.off));
        }
        out
    };
    // Room for three 32-byte entries.
    let first = page(&mut c, 0, 96);
    assert_eq!(first.len(), 3);
    let rest = page(&mut c, first[2].1, 96);
    assert_eq!(rest, [("ro".to_string(), 4)]);
    assert!(page(&mut c, 4, 96).is_empty());
    c.release(ROOT_ID, fh, true).unwrap();
}

/// A share whose own ids do not fit in 56 bits; records what it is given
/// back.
struct Huge {
    given_back: Arc<Mutex<Vec<u64>>>,
}

const TOO_BIG: u64 = ids::MAX_INNER + 1;

impl FileSystem for Huge {
    fn getattr(
        &mut self,
        _: crate::fs::filesystem::Context,
        _: u64,
        _: Option<u64>,
    ) -> crate::fs::filesystem::FsResult<(fuse::Attr, Duration)> {
        let attr = fuse::Attr {
            ino: 5,
            mode: libc::S_IFDIR | 0o755,
            ..Default::default()
        };
        Ok((attr, Duration::from_secs(1)))
    }
    fn lookup(
        &mut self,
        _: crate::fs::filesystem::Context,
        _: u64,
        _: &std::ffi::CStr,
    ) -> crate::fs::filesystem::FsResult<crate::fs::filesystem::Entry> {
        Ok(crate::fs::filesystem::Entry {
            nodeid: TOO_BIG,
            ..Default::default()
        })
    }
    fn forget(&mut self, nodeid: u64, _: u64) {
        self.given_back.lock().unwrap().push(nodeid);
    }
    fn opendir(
        &mut self,
        _: crate::fs::filesystem::Context,
        _: u64,
        _: u32,
    ) -> crate::fs::filesystem::FsResult<(u64, u32)> {
        Ok((TOO_BIG, 0))
    }
    fn releasedir(
        &mut self,
        _: crate::fs::filesystem::Context,
        _: u64,
        fh: u64,
    ) -> crate::fs::filesystem::FsResult<()> {
        self.given_back.lock().unwrap().push(fh);
        Ok(())
    }
    fn readdir(
        &mut self,
        _: crate::fs::filesystem::Context,
        _: u64,
        _: u64,
        offset: u64,
        sink: &mut crate::fs::filesystem::DirSink,
    ) -> crate::fs::filesystem::FsResult<()> {
        let names: [(&[u8], u64); 2] = [(b"fits", 7), (b"big", TOO_BIG)];
        for (i, (name, nodeid)) in names.into_iter().enumerate().skip(offset as usize) {
            let d = crate::fs::filesystem::DirEntry {
                ino: 9,
                offset: i as u64 + 1,
                typ: 8,
                name,
            };
            let e = crate::fs::filesystem::Entry {
                nodeid,
                ..Default::default()
            };
            sink.push(&d, Some(&e));
        }
        Ok(())
    }
}

#[test]
fn inner_ids_too_large_to_encode_are_eoverflow_and_given_back() {
    let given_back = Arc::new(Mutex::new(Vec::new()));
    let m = MultiFs::new();
    let huge = Huge {
        given_back: given_back.clone(),
    };
    m.handle()
        .insert("huge", Duration::from_secs(1), || Ok(Box::new(huge)))
        .unwrap();
    let mut c = Client::new(Box::new(m));
    let root = c.lookup(ROOT_ID, "huge").unwrap().nodeid;
    assert_eq!(c.lookup(root, "x").unwrap_err(), libc::EOVERFLOW);
    assert_eq!(c.opendir(root).unwrap_err(), libc::EOVERFLOW);
    assert_eq!(*given_back.lock().unwrap(), [TOO_BIG, TOO_BIG]);
    given_back.lock().unwrap().clear();
    // readdirplus keeps the entries before the first that does not fit.
    let fh = ids::encode(0, 1).unwrap();
    let plus = |c: &mut Client<MultiFs>, offset| {
        let body = encode(&fuse::ReadIn {
            fh,
            offset,
            size: 4096,
            ..Default::default()
        });
        c.call(opcode::READDIRPLUS, root, &body)
    };
    let r = plus(&mut c, 0).unwrap();
    let e: fuse::EntryOut = Reader::new(&r).read().unwrap();
    assert_eq!(ids::decode(e.nodeid), Some((0, 7)));
    assert_eq!(r.len(), fuse::dirent_size(4, true));
    assert_eq!(*given_back.lock().unwrap(), [TOO_BIG]);
    assert_eq!(plus(&mut c, 1).unwrap_err(), libc::EOVERFLOW);
}
