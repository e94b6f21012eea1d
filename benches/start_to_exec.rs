//! The agent's start-to-exec time in a VM, with and without Docker's
//! confinement: from the agent receiving `Start` (`BootStage::StartReceived`)
//! to the main process's `execve` (`BootStage::ProcessExec`), both on the
//! guest's clock, for `true` in the busybox test image as root.
//!
//! Three configurations, started in turn (so that drift of the emulated
//! host hits each alike), `HYPERCONTAINER_BENCH_ROUNDS` rounds (default 10):
//! - `unconfined`: no seccomp filter (`Seccomp::Unconfined`), no
//!   capabilities (`--cap-drop ALL`), no cgroup limits;
//! - `docker`: Docker's default capabilities and seccomp profile, no limits;
//! - `docker+limits`: the same with memory, CPU and pids limits (the agent
//!   makes and limits the container's cgroup).
//!
//! The namespaces and mounts are Docker's in all three. Prints the median
//! of each, with the part after the root filesystem is ready
//! (`RootfsReady` to `ProcessExec`) and `start()` to the exit. Needs
//! hardware KVM (`cargo xtask bench start_to_exec` runs it inside the
//! emulated host elsewhere). Inputs as for `cold_start.rs`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hypercontainer::host::{detect_kvm, KvmKind};
use hypercontainer::sandbox::{
    BootTimings, ImageRef, ImageSource, Limits, Sandbox, SandboxBuilder, Seccomp,
};

fn image_archive() -> PathBuf {
    if let Some(p) = std::env::var_os("HYPERCONTAINER_TEST_IMAGE").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    hypercontainer::kernel::cache_dir()
        .expect("a cache directory")
        .join("test-images/busybox-v2.oci.tar")
}

fn base() -> SandboxBuilder {
    Sandbox::builder()
        .image(ImageRef::Source {
            source: ImageSource::OciArchive {
                path: image_archive(),
            },
            reference: Some("test".into()),
        })
        .user("root")
        .cmd(["true"])
        .boot_timeout(Duration::from_secs(120))
}

type Config = (&'static str, fn() -> SandboxBuilder);

const CONFIGS: [Config; 3] = [
    ("unconfined", || {
        base().seccomp(Seccomp::Unconfined).cap_drop("ALL")
    }),
    ("docker", base),
    ("docker+limits", || {
        base().limits(Limits {
            memory: Some(64 << 20),
            cpus: Some(0.5),
            pids: Some(100),
            ..Limits::default()
        })
    }),
];

/// One start run to its end: (`start()` to exit, timings).
fn once(b: SandboxBuilder) -> (Duration, BootTimings) {
    let t0 = Instant::now();
    let s = b.start().unwrap_or_else(|e| panic!("start: {e}"));
    assert_eq!(s.wait().unwrap(), 0);
    (t0.elapsed(), s.boot_timings())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    // One job of `cargo xtask bench`: no groups of its own.
    hypercontainer_benches::Groups::declare(&[]);
    if detect_kvm() != KvmKind::Hardware {
        eprintln!("this host's KVM cannot boot Linux: nothing to measure");
        return;
    }
    let rounds: usize = std::env::var("HYPERCONTAINER_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    // One unmeasured start: the first in a fresh host is not representative.
    let _ = once(base());
    let mut runs: Vec<Vec<(Duration, BootTimings)>> = vec![Vec::new(); CONFIGS.len()];
    for _ in 0..rounds {
        for (i, (_, make)) in CONFIGS.iter().enumerate() {
            runs[i].push(once(make()));
        }
    }
    println!("start-to-exec in the VM, {rounds} starts each (guest clock):");
    for ((name, _), r) in CONFIGS.iter().zip(&runs) {
        let span = |from: fn(&BootTimings) -> Option<Duration>| {
            median(
                r.iter()
                    .filter_map(|(_, t)| Some(t.guest_process_exec? - from(t)?))
                    .collect(),
            )
        };
        println!(
            "summary: {name:<14} StartReceived to ProcessExec median {}, RootfsReady to \
             ProcessExec {}, start() to exit {}",
            ms(span(|t| t.guest_start_received)),
            ms(span(|t| t.guest_rootfs_ready)),
            ms(median(r.iter().map(|(d, _)| *d).collect()))
        );
    }
}
