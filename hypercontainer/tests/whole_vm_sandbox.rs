//! Whole-VM tests of the sandbox API: the real guest kernel, the static
//! agent as PID 1, the busybox test image (made with umoci) imported
//! through the image store, one VM per sandbox.
//!
//! Ignored by default: `cargo xtask whole-vm` (or `cargo xtask test`) runs
//! them where a stock guest kernel boots, inside the emulated KVM host on
//! other machines, with `HYPERCONTAINER_KERNEL`, `HYPERCONTAINER_AGENT` and
//! `HYPERCONTAINER_TEST_IMAGE` set and `mkfs.erofs` on `PATH` (networking
//! is tested in `whole_vm_network.rs`). Cases are grouped to keep the
//! number of boots small.

mod sandbox_common;

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use hypercontainer::sandbox::{Error, Exec, ImageRef, Sandbox, SandboxBuilder};

use sandbox_common::{read_all, sandbox, WAIT};

/// Runs to the end; returns (stdout, stderr, status).
fn run(b: SandboxBuilder) -> (String, String, i32) {
    let r = sandbox_common::run_to_end(b);
    (r.out, r.err, r.status)
}

#[test]
#[ignore = "whole-VM test: run by cargo xtask test"]
fn output_exit_codes_and_process_settings() {
    // The image's own Cmd, as the image's user in its WorkingDir.
    let t0 = Instant::now();
    let s = sandbox().start().unwrap_or_else(|e| panic!("start: {e}"));
    let out = read_all(s.stdout().unwrap());
    assert_eq!(out, "default-cmd\n");
    assert_eq!(s.wait().unwrap(), 0);
    let t = s.boot_timings();
    eprintln!(
        "first sandbox (image import included): {:?}; {t:?}",
        t0.elapsed()
    );
    assert!(t.vm_built <= t.agent_connected);
    assert!(t.guest_agent_start.is_some() && t.guest_rootfs_ready.is_some());
    assert!(t.first_output.is_some());
    assert_eq!(s.id().len(), 32);
    drop(s);

    // Env, WorkingDir and User from the image; exit code propagated.
    let (out, err, status) = run(sandbox().cmd([
        "sh",
        "-c",
        "echo $GREETING; pwd; id -u; echo to-stderr >&2; exit 42",
    ]));
    assert_eq!(out, "from-image\n/data\n1000\n");
    assert_eq!(err, "to-stderr\n");
    assert_eq!(status, 42);

    // The same, overridden.
    let (out, _, status) = run(sandbox()
        .cmd(["sh", "-c", "echo $GREETING $EXTRA; pwd; id -u; hostname"])
        .env("GREETING", "overridden")
        .env("EXTRA", "x")
        .workdir("/home/app")
        .user("root")
        .hostname("box1")
        .vcpus(2)
        .memory_mib(192));
    assert_eq!(out, "overridden x\n/home/app\n0\nbox1\n");
    assert_eq!(status, 0);

    // A prepared root filesystem directory instead of an image.
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    sandbox_common::unpack_test_rootfs(&rootfs);
    std::fs::write(rootfs.join("data/marker"), "from-dir\n").unwrap();
    let (out, _, status) = run(Sandbox::builder()
        .image(ImageRef::Rootfs(rootfs))
        .boot_timeout(Duration::from_secs(120))
        .cmd(["cat", "/data/marker"]));
    assert_eq!((out.as_str(), status), ("from-dir\n", 0));

    // An executable that does not exist.
    match sandbox().cmd(["no-such-program"]).start() {
        Err(Error::ProcessStart {
            status, message, ..
        }) => {
            assert_eq!(status, 127);
            assert!(message.contains("no-such-program"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
#[ignore = "whole-VM test: run by cargo xtask test"]
fn stdin_through_cat() {
    let s = sandbox()
        .cmd(["cat"])
        .stdin(true)
        .start()
        .unwrap_or_else(|e| panic!("start: {e}"));
    let data: Vec<u8> = (0..600_000u32).map(|i| (i % 253) as u8).collect();
    let mut w = s.stdin();
    let expect = data.clone();
    let writer = std::thread::spawn(move || {
        w.write_all(&data).unwrap();
        w.close().unwrap();
    });
    let mut got = Vec::new();
    s.stdout().unwrap().read_to_end(&mut got).unwrap();
    writer.join().unwrap();
    assert!(
        got == expect,
        "{} bytes back of {}",
        got.len(),
        expect.len()
    );
    assert_eq!(s.wait_timeout(WAIT).unwrap(), Some(0));
}

#[test]
#[ignore = "whole-VM test: run by cargo xtask test"]
fn exec_kill_and_stop() {
    // Exec twice while the main process runs, then SIGKILL: 137.
    let s = sandbox()
        .cmd(["sh", "-c", "echo ready; exec sleep 600"])
        .start()
        .unwrap_or_else(|e| panic!("start: {e}"));
    let mut out = s.stdout().unwrap();
    let mut buf = [0u8; 6];
    out.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ready\n");
    let p = s
        .exec(Exec::new(["sh", "-c", "echo $GREETING $MORE; pwd; id -u"]).env("MORE", "exec"))
        .unwrap();
    assert_eq!(
        read_all(p.stdout().unwrap()),
        "from-image exec\n/data\n1000\n"
    );
    assert_eq!(p.wait().unwrap(), 0);
    let c = s
        .exec(Exec::new(["sh", "-c", "cat; exit 5"]).stdin(true).user("0"))
        .unwrap();
    let mut w = c.stdin();
    w.write_all(b"through exec\n").unwrap();
    w.close().unwrap();
    assert_eq!(read_all(c.stdout().unwrap()), "through exec\n");
    assert_eq!(c.wait().unwrap(), 5);
    assert_eq!(s.wait_timeout(Duration::from_millis(200)).unwrap(), None);
    s.kill(libc::SIGKILL).unwrap();
    assert_eq!(s.wait_timeout(WAIT).unwrap(), Some(137));
    drop(s);

    // stop(): the image's StopSignal (SIGUSR1) first...
    let s = sandbox()
        .cmd([
            "sh",
            "-c",
            "trap 'echo got-usr1; exit 3' USR1; echo ready; while :; do sleep 0.1; done",
        ])
        .start()
        .unwrap_or_else(|e| panic!("start: {e}"));
    let mut out = s.stdout().unwrap();
    out.read_exact(&mut buf).unwrap();
    assert_eq!(s.stop(Duration::from_secs(30)).unwrap(), 3);
    assert_eq!(read_all(out), "got-usr1\n");
    drop(s);

    // ...then SIGKILL after the grace period.
    let s = sandbox()
        .cmd([
            "sh",
            "-c",
            "trap '' USR1; echo ready; while :; do sleep 0.1; done",
        ])
        .start()
        .unwrap_or_else(|e| panic!("start: {e}"));
    let mut out = s.stdout().unwrap();
    out.read_exact(&mut buf).unwrap();
    let t = Instant::now();
    assert_eq!(s.stop(Duration::from_secs(1)).unwrap(), 137);
    assert!(t.elapsed() >= Duration::from_secs(1));
}

/// Open descriptors, threads, our temporary directories, child processes.
fn resources() -> (usize, usize, usize, usize) {
    let count = |p: &Path| std::fs::read_dir(p).map(|d| d.count()).unwrap_or(0);
    let tmp = std::fs::read_dir(std::env::temp_dir())
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with("hypercontainer-")
                })
                .count()
        })
        .unwrap_or(0);
    let me = std::process::id().to_string();
    let children = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::read_to_string(e.path().join("stat"))
                .ok()
                .and_then(|s| {
                    let after = s.rsplit_once(')')?.1.to_string();
                    after.split_whitespace().nth(1).map(|p| p == me)
                })
                .unwrap_or(false)
        })
        .count();
    (
        count(Path::new("/proc/self/fd")),
        count(Path::new("/proc/self/task")),
        tmp,
        children,
    )
}

#[test]
#[ignore = "whole-VM test: run by cargo xtask test"]
fn sequential_and_concurrent_sandboxes_release_everything() {
    // Warm up: image import, agent initramfs, lazily set up process state.
    let (out, _, status) = run(sandbox().cmd(["echo", "warm"]));
    assert_eq!((out.as_str(), status), ("warm\n", 0));
    let before = resources();

    let t = Instant::now();
    for i in 0..10 {
        let (out, _, status) = run(sandbox().cmd(["sh", "-c", &format!("echo seq-{i}")]));
        assert_eq!(out, format!("seq-{i}\n"));
        assert_eq!(status, 0);
    }
    eprintln!("10 sequential sandboxes: {:?}", t.elapsed());

    let t = Instant::now();
    let threads: Vec<_> = (0..3)
        .map(|i| {
            std::thread::spawn(move || {
                run(sandbox().cmd(["sh", "-c", &format!("sleep 1; echo par-{i}; exit {i}")]))
            })
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        let (out, _, status) = t.join().unwrap();
        assert_eq!(out, format!("par-{i}\n"));
        assert_eq!(status, i as i32);
    }
    eprintln!("3 concurrent sandboxes: {:?}", t.elapsed());

    // Threads of finished sandboxes may take a moment to be reaped.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let after = resources();
        if after == before || Instant::now() > deadline {
            assert_eq!(
                after, before,
                "(fds, threads, temp dirs, children) back to the starting count"
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A static x86-64 executable that exits with status 1 at once: as a
/// VM's init, it makes the guest kernel panic.
fn exiting_init(path: &Path) {
    let code: &[u8] = &[
        0xbf, 0x01, 0x00, 0x00, 0x00, // mov edi, 1
        0xb8, 0x3c, 0x00, 0x00, 0x00, // mov eax, 60 (exit)
        0x0f, 0x05, // syscall
    ];
    let base = 0x40_0000u64;
    let hdr = 64 + 56;
    let total = (hdr + code.len()) as u64;
    let mut b = Vec::new();
    b.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    b.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    b.extend_from_slice(&62u16.to_le_bytes()); // x86-64
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&(base + hdr as u64).to_le_bytes()); // entry
    b.extend_from_slice(&64u64.to_le_bytes()); // phoff
    b.extend_from_slice(&0u64.to_le_bytes()); // shoff
    b.extend_from_slice(&0u32.to_le_bytes()); // flags
    for v in [64u16, 56, 1, 0, 0, 0] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    b.extend_from_slice(&5u32.to_le_bytes()); // R+X
    for v in [0, base, base, total, total, 0x1000u64] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(code);
    std::fs::write(path, b).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
#[ignore = "whole-VM test: run by cargo xtask test"]
fn a_panicking_guest_is_an_error_and_others_keep_running() {
    let alive = sandbox()
        .cmd(["sh", "-c", "echo up; exec sleep 600"])
        .start()
        .unwrap_or_else(|e| panic!("start: {e}"));
    let mut out = alive.stdout().unwrap();
    let mut buf = [0u8; 3];
    out.read_exact(&mut buf).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("init");
    exiting_init(&bad);
    let e = sandbox()
        .agent(&bad)
        .cmd(["true"])
        .start()
        .expect_err("a guest whose init dies cannot start");
    match &e {
        Error::GuestDied { console, .. } => {
            assert!(
                console.iter().any(|l| l.contains("Kernel panic")),
                "{console:#?}"
            );
        }
        other => panic!("expected GuestDied, got {other}"),
    }
    eprintln!("panicking guest: {e}");

    // The other sandbox is unaffected.
    let p = alive
        .exec(Exec::new(["echo", "still-here"]))
        .unwrap_or_else(|e| panic!("exec: {e}"));
    assert_eq!(read_all(p.stdout().unwrap()), "still-here\n");
    alive.kill(libc::SIGKILL).unwrap();
    assert_eq!(alive.wait_timeout(WAIT).unwrap(), Some(137));
}
