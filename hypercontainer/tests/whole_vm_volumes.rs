//! Whole-VM tests of volumes and directory root filesystems: host
//! directories reach the container over the sandbox's virtio-fs device.
//!
//! Ignored by default: `cargo xtask whole-vm` (or `cargo xtask test`) runs
//! them where a stock guest kernel boots (inside the emulated KVM host
//! elsewhere), with the inputs of `whole_vm_sandbox.rs`. Cases are grouped
//! to keep the number of boots small.

mod sandbox_common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hypercontainer::sandbox::{ImageRef, Sandbox};
use hypercontainer::volume::Volume;

use sandbox_common::{read_all, run_to_end, sandbox, WAIT};

/// Every file under `dir` with its contents (symlinks as their targets),
/// to compare trees byte for byte.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(dir).unwrap().to_path_buf();
            if m.is_dir() {
                out.insert(rel, format!("dir {:o}", m.mode()).into_bytes());
                todo.push(p);
            } else if m.file_type().is_symlink() {
                out.insert(rel, fs::read_link(&p).unwrap().into_os_string().into_vec());
            } else {
                let mut v = fs::read(&p).unwrap();
                v.extend_from_slice(format!(" mode {:o}", m.mode()).as_bytes());
                out.insert(rel, v);
            }
        }
    }
    out
}

use std::os::unix::ffi::OsStringExt;

/// The script run in the container against its volumes; prints one line
/// per check.
const SCRIPT: &str = r#"
set -e
cat /vol/from-host
echo hello > /vol/new; echo more >> /vol/new
mkdir /vol/d
mv /vol/new /vol/d/moved
ln -s moved /vol/d/link
echo "link=$(readlink /vol/d/link) via=$(head -n1 /vol/d/link)"
ln /vol/d/moved /vol/d/hard
echo "links=$(stat -c %h /vol/d/moved)"
chmod 640 /vol/d/moved
chown 1234:5678 /vol/d/moved
echo "mode=$(stat -c %a /vol/d/moved) owner=$(stat -c %u:%g /vol/d/moved)"
printf 0123456789 > /vol/trunc; truncate -s 4 /vol/trunc
echo "trunc=$(cat /vol/trunc)"
mkdir /vol/gone; rmdir /vol/gone; rm /vol/d/link
dd if=/dev/zero of=/vol/big bs=1M count=64 conv=fsync 2>/tmp/dd.err || { cat /tmp/dd.err >&2; false; }
echo "big=$(stat -c %s /vol/big) sum=$(md5sum < /vol/big | cut -c1-8)"
mkdir /vol/many
i=0; while [ $i -lt 10000 ]; do echo $i > /vol/many/f$i; i=$((i+1)); done
echo "many=$(ls /vol/many | wc -l) f9999=$(cat /vol/many/f9999)"
mkdir /vol/untar; tar c -C / bin etc 2>/dev/null | tar x -C /vol/untar
echo "untar=$(ls /vol/untar/bin | wc -l)"
# Escape attempts: links pointing out of the share resolve in the guest.
ln -s ../../../../../canary /vol/up
echo pwned > /vol/up 2>/dev/null || true
ln -s / /vol/root-link
echo pwned > /vol/root-link/canary 2>/dev/null || true
# The read-only volume, through the guest's read-only bind mount.
ro=0
for op in "echo x > /ro/file" "touch /ro/new" "rm /ro/file" "mkdir /ro/d" "chmod 777 /ro/file" "mv /ro/file /ro/f2" "ln -s x /ro/l"; do
  if sh -c "$op" 2>/dev/null; then echo "ro write allowed: $op"; else ro=$((ro+1)); fi
done
echo "ro-refused=$ro"
# The same share bound writable again: now only the device refuses.
mount -o remount,bind,rw /ro
if echo x 2>/dev/null > /ro/file; then echo device-allowed; else echo "device-refused"; fi
if touch /ro/new 2>/tmp/err; then echo device-allowed; else cat /tmp/err; fi
cat /ro/file
echo named > /named/kept
n=0; for v in /v0 /v1 /v2 /v3 /v4 /v5 /v6; do cat $v/id >/dev/null && n=$((n+1)); done
echo "small-volumes=$n"
/vol/fs-check /vol
"#;

#[test]
#[ignore = "whole-VM test: run by cargo xtask test"]
fn volumes_read_write_refuse_and_outlive_the_sandbox() {
    let top = tempfile::tempdir().unwrap();
    let (rw, ro, data) = (
        top.path().join("rw"),
        top.path().join("ro"),
        top.path().join("data"),
    );
    for d in [&rw, &ro, &data] {
        fs::create_dir(d).unwrap();
    }
    let canary = top.path().join("canary");
    fs::write(&canary, "untouched\n").unwrap();
    fs::write(rw.join("from-host"), "written on the host\n").unwrap();
    fs::write(ro.join("file"), "read-only content\n").unwrap();
    fs::create_dir(ro.join("sub")).unwrap();
    fs::write(ro.join("sub/x"), "x").unwrap();
    let ro_before = snapshot(&ro);
    // A static helper for what busybox cannot do (mmap, xattrs, fsync).
    let helper = std::env::var_os("HYPERCONTAINER_FS_CHECK").expect("HYPERCONTAINER_FS_CHECK");
    fs::copy(&helper, rw.join("fs-check")).unwrap();

    let mut b = sandbox()
        .user("root")
        .cap_add("SYS_ADMIN")
        .data_dir(&data)
        .volume(Volume::bind(&rw, "/vol"))
        .volume(Volume::bind(&ro, "/ro").read_only(true))
        .volume(Volume::named("data", "/named"))
        .cmd(["sh", "-c", SCRIPT]);
    // Seven more: ten volumes in all, on one device.
    for i in 0..7 {
        let d = top.path().join(format!("small{i}"));
        fs::create_dir(&d).unwrap();
        fs::write(d.join("id"), format!("{i}")).unwrap();
        b = b.volume(Volume::bind(&d, format!("/v{i}")).read_only(i % 2 == 0));
    }
    let r = run_to_end(b.memory_mib(256));
    // As root the guest's ids pass through; rootless, they are squashed.
    let owner_line = if nix_is_root() {
        "mode=640 owner=1234:5678"
    } else {
        "mode=640 owner=0:0"
    }
    .to_string();
    eprintln!("{}", r.err);
    assert_eq!(r.status, 0, "stdout: {}\nstderr: {}", r.out, r.err);
    let lines: Vec<&str> = r.out.lines().collect();
    assert_eq!(
        lines,
        [
            "written on the host",
            "link=moved via=hello",
            "links=2",
            owner_line.as_str(),
            "trunc=0123",
            "big=67108864 sum=7f614da9",
            "many=10000 f9999=9999",
            lines[7],
            "ro-refused=7",
            "device-refused",
            "touch: /ro/new: Read-only file system",
            "read-only content",
            "small-volumes=7",
            "mmap=ok",
            "fsync=ok",
            "xattr=xattr-value listed=1 removed=1",
        ],
        "stderr: {}",
        r.err
    );
    assert!(lines[7].starts_with("untar=") && lines[7] != "untar=0");

    // The host sees every change.
    assert_eq!(
        fs::read_to_string(rw.join("d/moved")).unwrap(),
        "hello\nmore\n"
    );
    let m = fs::metadata(rw.join("d/moved")).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o640);
    assert_eq!(m.nlink(), 2);
    if nix_is_root() {
        assert_eq!((m.uid(), m.gid()), (1234, 5678));
    }
    assert!(!rw.join("d/link").exists() && !rw.join("gone").exists());
    assert_eq!(fs::read(rw.join("trunc")).unwrap(), b"0123");
    assert_eq!(fs::metadata(rw.join("big")).unwrap().len(), 64 << 20);
    assert_eq!(fs::read_dir(rw.join("many")).unwrap().count(), 10000);
    assert!(rw.join("untar/bin/busybox").is_file());
    assert_eq!(
        fs::read_link(rw.join("up")).unwrap(),
        Path::new("../../../../../canary")
    );
    // Nothing outside the shares changed, and the read-only tree is
    // byte for byte what it was.
    let mapped = fs::read(rw.join("mapped")).unwrap();
    assert_eq!(&mapped[4096..4109], b"through mmap\n");
    assert_eq!(fs::read_to_string(&canary).unwrap(), "untouched\n");
    assert_eq!(snapshot(&ro), ro_before);
    let named = data.join("volumes/data/_data/kept");
    assert_eq!(fs::read_to_string(&named).unwrap(), "named\n");

    // The named volume outlives its sandbox: the next one finds the file.
    let r = run_to_end(
        sandbox()
            .data_dir(&data)
            .volume(Volume::named("data", "/named").read_only(true))
            .cmd(["cat", "/named/kept"]),
    );
    assert_eq!((r.out.as_str(), r.status), ("named\n", 0), "{}", r.err);
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Waits in the guest for `file` (60 s at most, then lists its
/// directory and fails), then prints it.
fn await_file(file: &str) -> String {
    format!(
        "i=0; while [ ! -e {file} ]; do i=$((i+1)); \
         if [ $i -gt 600 ]; then echo \"no {file}:\"; ls -la $(dirname {file}); \
         grep shared /proc/mounts; exit 9; fi; sleep 0.1; done; cat {file}"
    )
}

/// The lines `r` gives, through a channel, to wait for them with a
/// deadline.
fn lines_of(r: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(r).lines() {
            if tx.send(l.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    rx
}

#[test]
#[ignore = "whole-VM test: run by cargo xtask test"]
fn two_sandboxes_and_the_host_share_one_volume() {
    let dir = tempfile::tempdir().unwrap();
    // The image's user (`app`, not root) writes there, as under Docker
    // only into a directory it may write.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o1777)).unwrap();
    let vol = || Volume::bind(dir.path(), "/shared");
    let a = sandbox()
        .volume(vol())
        .cmd([
            "sh",
            "-c",
            &format!(
                "set -e; echo started; echo from-a > /shared/a; echo wrote; {}; {}",
                await_file("/shared/b"),
                await_file("/shared/host")
            ),
        ])
        .start()
        .unwrap_or_else(|e| panic!("start a: {e}"));
    let a_lines = lines_of(a.stdout().unwrap());
    let a_err = lines_of(a.stderr().unwrap());
    let next = |what: &str| {
        a_lines.recv_timeout(WAIT).unwrap_or_else(|_| {
            let err: Vec<String> = a_err.try_iter().collect();
            panic!(
                "a: no {what} line; host dir: {:?}; a's stderr: {err:?}",
                fs::read_dir(dir.path())
                    .unwrap()
                    .map(|e| e.unwrap().file_name())
                    .collect::<Vec<_>>()
            )
        })
    };
    assert_eq!(next("first"), "started");
    assert_eq!(next("second"), "wrote");
    // The host sees the guest's file at once.
    assert_eq!(
        fs::read_to_string(dir.path().join("a")).unwrap(),
        "from-a\n"
    );
    let b = sandbox()
        .volume(vol())
        .cmd([
            "sh",
            "-c",
            &format!(
                // Written under another name and renamed, as a careful
                // writer does: the reader never sees a half-written file.
                "set -e; {}; echo from-b > /shared/.b; mv /shared/.b /shared/b",
                await_file("/shared/a")
            ),
        ])
        .start()
        .unwrap_or_else(|e| panic!("start b: {e}"));
    let b_out = read_all(b.stdout().unwrap());
    assert_eq!(
        (b.wait_timeout(WAIT).unwrap(), b_out.as_str()),
        (Some(0), "from-a\n"),
        "b's stderr: {}",
        read_all(b.stderr().unwrap())
    );
    assert_eq!(next("third"), "from-b");
    // A change made on the host while the sandbox runs.
    fs::write(dir.path().join(".host"), "from-host\n").unwrap();
    fs::rename(dir.path().join(".host"), dir.path().join("host")).unwrap();
    assert_eq!(next("fourth"), "from-host");
    assert_eq!(a.wait_timeout(WAIT).unwrap(), Some(0));
}

#[test]
#[ignore = "whole-VM test: run by cargo xtask test"]
fn a_directory_rootfs_is_shared_and_written_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    sandbox_common::unpack_test_rootfs(&rootfs);
    let before = snapshot(&rootfs);
    let script =
        "echo in-container > /written; rm /data/.keep 2>/dev/null; cat /written; echo PATH=$PATH";
    let run = |writable: bool| {
        run_to_end(
            Sandbox::builder()
                .image(ImageRef::Rootfs(rootfs.clone()))
                .rootfs_writable(writable)
                .boot_timeout(Duration::from_secs(120))
                .cmd(["sh", "-c", script]),
        )
    };
    // By default the directory stays as it was: writes go to an overlay.
    let r = run(false);
    assert_eq!(r.status, 0, "{}", r.err);
    // A directory has no image config: Docker's default PATH.
    assert_eq!(
        r.out,
        "in-container\nPATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
    );
    assert_eq!(snapshot(&rootfs), before);
    // Writable: the container writes the directory itself, as runc does.
    let r = run(true);
    assert_eq!(r.status, 0, "{}", r.err);
    assert_eq!(
        fs::read_to_string(rootfs.join("written")).unwrap(),
        "in-container\n"
    );
}
