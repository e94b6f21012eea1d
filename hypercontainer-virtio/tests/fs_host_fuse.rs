//! The virtio-fs FUSE server under the host kernel's own FUSE client
//! (`/dev/fuse`): the protocol exactly as Linux speaks it, without a VM.
//! The transport differs (a character device instead of virtqueues), the
//! requests and replies are the same. Skipped when `/dev/fuse` or the
//! right to mount is missing.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use hypercontainer_virtio::fs::server::{Server, ServerOptions};
use hypercontainer_virtio::fs::{FileSystem, PassthroughConfig, PassthroughFs};

/// A mounted session; unmounts (lazily) and joins the server on drop.
struct Mount {
    point: PathBuf,
    server: Option<JoinHandle<u64>>,
}

impl Drop for Mount {
    fn drop(&mut self) {
        let p = CString::new(self.point.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `p` is a NUL-terminated path; umount2 only reads it.
        unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
        if let Some(t) = self.server.take() {
            let _ = t.join();
        }
    }
}

fn mount(share: &Path, point: &Path) -> Option<Mount> {
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .ok()?;
    let opts = CString::new(format!(
        "fd={},rootmode=40000,user_id=0,group_id=0,default_permissions,allow_other",
        dev.as_raw_fd()
    ))
    .unwrap();
    let target = CString::new(point.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: all strings are NUL-terminated and outlive the call, which
    // only reads them.
    let r = unsafe {
        libc::mount(
            c"hypercontainer-test".as_ptr(),
            target.as_ptr(),
            c"fuse".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            opts.as_ptr().cast(),
        )
    };
    if r != 0 {
        eprintln!("skipped: mount: {}", std::io::Error::last_os_error());
        return None;
    }
    let fs: Box<dyn FileSystem> =
        Box::new(PassthroughFs::new(PassthroughConfig::new(share)).unwrap());
    let server = std::thread::spawn(move || serve(dev, Server::new(fs, ServerOptions::default())));
    Some(Mount {
        point: point.to_path_buf(),
        server: Some(server),
    })
}

/// Serve requests until the kernel ends the session; answers the count.
fn serve(mut dev: File, mut server: Server<dyn FileSystem>) -> u64 {
    let mut buf = vec![0u8; 2 << 20];
    let mut n = 0;
    loop {
        let len = match dev.read(&mut buf) {
            Ok(len) => len,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::ENOENT)) => continue,
            Err(_) => return n,
        };
        n += 1;
        if let Some(reply) = server.handle(&buf[..len]) {
            // ENOENT: the request was interrupted meanwhile.
            let _ = dev.write(&reply);
        }
    }
}

#[test]
fn the_host_kernel_fuse_client_works_through_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let share = tmp.path().join("share");
    let point = tmp.path().join("mnt");
    fs::create_dir(&share).unwrap();
    fs::create_dir(&point).unwrap();
    fs::write(share.join("host.txt"), b"from the host").unwrap();
    let Some(_mount) = mount(&share, &point) else {
        return;
    };
    let m = |p: &str| point.join(p);

    // Files: write, read, append, truncate, seek.
    assert_eq!(fs::read(m("host.txt")).unwrap(), b"from the host");
    fs::write(m("a.txt"), b"hello").unwrap();
    assert_eq!(fs::read(share.join("a.txt")).unwrap(), b"hello");
    let mut f = OpenOptions::new().append(true).open(m("a.txt")).unwrap();
    f.write_all(b", world").unwrap();
    drop(f);
    assert_eq!(fs::read_to_string(m("a.txt")).unwrap(), "hello, world");
    let f = OpenOptions::new().write(true).open(m("a.txt")).unwrap();
    f.set_len(5).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(fs::read(share.join("a.txt")).unwrap(), b"hello");

    // A big file crosses many max_write-sized requests.
    let big: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
    fs::write(m("big"), &big).unwrap();
    assert_eq!(fs::read(share.join("big")).unwrap(), big);
    let mut f = File::open(m("big")).unwrap();
    f.seek(SeekFrom::Start(5 << 20)).unwrap();
    let mut part = vec![0u8; 4096];
    f.read_exact(&mut part).unwrap();
    assert_eq!(part, big[5 << 20..(5 << 20) + 4096]);

    // Directories, many entries, `..`.
    fs::create_dir_all(m("d/e/f")).unwrap();
    for i in 0..500 {
        fs::write(m(&format!("d/file-{i}")), i.to_string()).unwrap();
    }
    assert_eq!(fs::read_dir(m("d")).unwrap().count(), 501);
    assert_eq!(fs::read(m("d/e/f/../../file-7")).unwrap(), b"7");
    assert_eq!(fs::read(m("../mnt/d/file-8")).unwrap(), b"8");

    // Names: rename, link, symlink, unlink, rmdir.
    fs::rename(m("d/file-1"), m("d/e/moved")).unwrap();
    assert!(share.join("d/e/moved").exists());
    fs::hard_link(m("d/e/moved"), m("hard")).unwrap();
    assert_eq!(fs::metadata(m("hard")).unwrap().nlink(), 2);
    std::os::unix::fs::symlink("d/e/moved", m("soft")).unwrap();
    assert_eq!(fs::read_link(m("soft")).unwrap(), Path::new("d/e/moved"));
    assert_eq!(fs::read(m("soft")).unwrap(), b"1");
    fs::remove_file(m("hard")).unwrap();
    fs::remove_dir(m("d/e/f")).unwrap();
    assert!(fs::remove_dir(m("d")).is_err());

    // Metadata: chmod, sizes, times.
    fs::set_permissions(m("a.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        fs::metadata(share.join("a.txt")).unwrap().mode() & 0o777,
        0o600
    );
    assert_eq!(fs::metadata(m("big")).unwrap().len(), 8 << 20);
    let f = File::options().write(true).open(m("a.txt")).unwrap();
    f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000))
        .unwrap();
    assert_eq!(
        fs::metadata(share.join("a.txt")).unwrap().mtime(),
        1_000_000
    );

    // Extended attributes.
    let path = CString::new(m("a.txt").into_os_string().into_encoded_bytes()).unwrap();
    let value = b"v1";
    // SAFETY: the strings are NUL-terminated and `value` is a live slice
    // whose length is passed; the call only reads them.
    let r = unsafe {
        libc::setxattr(
            path.as_ptr(),
            c"user.test".as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    let mut got = [0u8; 16];
    // SAFETY: the kernel writes at most `got.len()` bytes into `got`.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            c"user.test".as_ptr(),
            got.as_mut_ptr().cast(),
            got.len(),
        )
    };
    assert_eq!(&got[..n as usize], value);

    // Host-side changes show up (after the cache timeout).
    fs::write(share.join("late"), b"late").unwrap();
    assert_eq!(fs::read(m("late")).unwrap(), b"late");
}
