//! Boot benchmarks.
//!
//! - `vmm/setup_to_first_kvm_run`: host-side setup, from `build()` to the
//!   boot vCPU's first `KVM_RUN` (runs on any KVM host, PVM included: the
//!   guest is stopped right after it starts).
//! - `vmm/build_to_init_marker`: from `build()` to the init's marker line on
//!   the console (needs hardware KVM, e.g. inside the emulated test host).
//! - `qemu_microvm/spawn_to_init_marker`: the same kernel and initramfs
//!   booted by QEMU's microvm machine, from spawning QEMU to the marker
//!   (needs hardware KVM and `HYPERCONTAINER_QEMU`).
//!
//! Inputs: `HYPERCONTAINER_KERNEL` (a PVH vmlinux; default: the cached
//! kernel), `HYPERCONTAINER_BUSYBOX` (default `/bin/busybox`, must be
//! static), `HYPERCONTAINER_QEMU`. Both VMMs boot with the same command
//! line apart from the reboot method. At the end the medians of every
//! measured iteration and the ratio are printed.
//!
//! `HYPERCONTAINER_BOOT_PAIRS=N` adds N alternating (VMM, QEMU) boots after
//! the criterion groups, which gives a fairer ratio on a noisy machine;
//! with `HYPERCONTAINER_BENCH_KERNEL_B=VMLINUX` they are N alternating VMM
//! boots of the two kernels instead (a kernel config's boot cost: build the
//! variant with `HYPERCONTAINER_KERNEL_FRAGMENT=FILE cargo xtask kernel`;
//! a criterion filter matching nothing, e.g. `-- pairs-only`, skips the
//! groups);
//! `HYPERCONTAINER_BENCH_THP=0` turns off transparent hugepages for the
//! guest memory.

#[path = "common/qemu.rs"]
mod qemu;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, SamplingMode};
use hypercontainer::host::{detect_kvm, KvmKind};
use hypercontainer::initramfs::{CpioWriter, Metadata};
use hypercontainer::vmm::{ConsoleSink, VmBuilder};

const MARKER: &[u8] = b"HC-BOOT-MARKER";
const CMDLINE: &str = "console=ttyS0 panic=-1 quiet";
const MEMORY_MIB: u64 = 128;
const TIMEOUT: Duration = Duration::from_secs(120);

static SAMPLES: Mutex<Vec<(&'static str, Duration)>> = Mutex::new(Vec::new());

fn record(name: &'static str, d: Duration) {
    SAMPLES.lock().unwrap().push((name, d));
}

#[derive(Clone)]
struct Inputs {
    kernel: PathBuf,
    initramfs: Vec<u8>,
    initramfs_path: PathBuf,
    qemu: Option<PathBuf>,
}

fn inputs() -> Inputs {
    let kernel = std::env::var_os("HYPERCONTAINER_KERNEL")
        .map(PathBuf::from)
        .map_or_else(hypercontainer::kernel::default_kernel, Ok)
        .expect("a guest kernel (HYPERCONTAINER_KERNEL or `cargo xtask kernel`)");
    let busybox = std::env::var_os("HYPERCONTAINER_BUSYBOX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/bin/busybox"));
    let init = format!(
        "#!/bin/sh\necho {}\n/bin/busybox reboot -f\n",
        String::from_utf8_lossy(MARKER)
    );
    let mut cpio = CpioWriter::new(Vec::new());
    cpio.char_device("/dev/console", Metadata::new(0o600), 5, 1)
        .unwrap()
        .file_from_path("/bin/busybox", Metadata::new(0o755), &busybox)
        .unwrap()
        .symlink("/bin/sh", "busybox", Metadata::new(0o777))
        .unwrap()
        .file("/init", Metadata::new(0o755), init.as_bytes())
        .unwrap();
    let initramfs = cpio.finish().unwrap();
    let initramfs_path =
        std::env::temp_dir().join(format!("hc-boot-bench-{}.cpio", std::process::id()));
    std::fs::write(&initramfs_path, &initramfs).unwrap();
    Inputs {
        kernel,
        initramfs,
        initramfs_path,
        qemu: std::env::var_os("HYPERCONTAINER_QEMU").map(PathBuf::from),
    }
}

/// Sends the instant the marker shows up on the console.
struct MarkerSink {
    window: Vec<u8>,
    tx: Option<mpsc::Sender<Instant>>,
}

impl ConsoleSink for MarkerSink {
    fn write(&mut self, bytes: &[u8]) {
        if self.tx.is_none() {
            return;
        }
        self.window.extend_from_slice(bytes);
        if self.window.windows(MARKER.len()).any(|w| w == MARKER) {
            if let Some(tx) = self.tx.take() {
                let _ = tx.send(Instant::now());
            }
        }
        let keep = self.window.len().saturating_sub(MARKER.len());
        self.window.drain(..keep);
    }
}

fn builder(i: &Inputs) -> VmBuilder {
    VmBuilder::new()
        .kernel(&i.kernel)
        .initramfs_bytes(i.initramfs.clone())
        .memory_mib(MEMORY_MIB)
        .cmdline(format!("{CMDLINE} reboot=k"))
        .transparent_hugepages(std::env::var("HYPERCONTAINER_BENCH_THP").as_deref() != Ok("0"))
}

fn setup_once(i: &Inputs) -> Duration {
    let b = builder(i);
    let start = Instant::now();
    let vm = b.build().expect("build");
    let t = loop {
        if let Some(first) = vm.boot_times().first_run {
            break first - start;
        }
        assert!(start.elapsed() < TIMEOUT, "the vCPU never ran");
        std::hint::spin_loop();
    };
    drop(vm);
    t
}

fn vmm_boot_once(i: &Inputs) -> Duration {
    let (tx, rx) = mpsc::channel();
    let b = builder(i).console(MarkerSink {
        window: Vec::new(),
        tx: Some(tx),
    });
    let start = Instant::now();
    let mut vm = b.build().expect("build");
    let at = rx.recv_timeout(TIMEOUT).unwrap_or_else(|_| {
        panic!(
            "no marker from the guest; console:\n{}",
            vm.console_tail().join("\n")
        )
    });
    let outcome = vm.wait_timeout(TIMEOUT);
    assert!(
        matches!(outcome, Some(Ok(_))),
        "the guest did not end cleanly: {outcome:?}"
    );
    at - start
}

fn qemu_boot_once(i: &Inputs, qemu: &Path) -> Duration {
    let start = Instant::now();
    let mut child = qemu::microvm(
        qemu,
        MEMORY_MIB,
        &i.kernel,
        &i.initramfs_path,
        &format!("{CMDLINE} reboot=t"),
    )
    .args(["-serial", "stdio"])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .expect("spawn QEMU");
    let mut out = child.stdout.take().unwrap();
    let mut window = Vec::new();
    let mut buf = [0u8; 4096];
    let at = loop {
        let n = out.read(&mut buf).unwrap_or(0);
        if n == 0 {
            let _ = child.kill();
            panic!("QEMU ended without the marker");
        }
        window.extend_from_slice(&buf[..n]);
        if window.windows(MARKER.len()).any(|w| w == MARKER) {
            break Instant::now();
        }
        let keep = window.len().saturating_sub(MARKER.len());
        window.drain(..keep);
    };
    // Drain until QEMU exits (the guest resets through a triple fault).
    let _ = std::io::copy(&mut out, &mut std::io::sink());
    let _ = child.wait();
    at - start
}

fn benches(c: &mut Criterion) {
    let kind = detect_kvm();
    if kind == KvmKind::Missing {
        eprintln!("no /dev/kvm: nothing to measure");
        return;
    }
    let i = inputs();
    let mut g = c.benchmark_group("vmm");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1));
    g.bench_function("setup_to_first_kvm_run", |b| {
        b.iter_custom(|n| {
            (0..n)
                .map(|_| {
                    let d = setup_once(&i);
                    record("setup_to_first_kvm_run", d);
                    d
                })
                .sum()
        })
    });
    if kind == KvmKind::Hardware {
        // One unmeasured boot each: the first run in a fresh host is not
        // representative.
        let _ = vmm_boot_once(&i);
        g.measurement_time(Duration::from_secs(30));
        g.bench_function("build_to_init_marker", |b| {
            b.iter_custom(|n| {
                (0..n)
                    .map(|_| {
                        let d = vmm_boot_once(&i);
                        record("vmm_build_to_init_marker", d);
                        d
                    })
                    .sum()
            })
        });
    } else {
        eprintln!("this host's KVM cannot boot Linux: only the setup time is measured");
    }
    g.finish();
    if let (KvmKind::Hardware, Some(qemu)) = (kind, &i.qemu) {
        let _ = qemu_boot_once(&i, qemu);
        let mut g = c.benchmark_group("qemu_microvm");
        g.sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_millis(1))
            .measurement_time(Duration::from_secs(30));
        g.bench_function("spawn_to_init_marker", |b| {
            b.iter_custom(|n| {
                (0..n)
                    .map(|_| {
                        let d = qemu_boot_once(&i, qemu);
                        record("qemu_spawn_to_init_marker", d);
                        d
                    })
                    .sum()
            })
        });
        g.finish();
    }
    let pairs: usize = std::env::var("HYPERCONTAINER_BOOT_PAIRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let kernel_b = std::env::var_os("HYPERCONTAINER_BENCH_KERNEL_B").map(PathBuf::from);
    if let (KvmKind::Hardware, Some(b), true) = (kind, kernel_b, pairs > 0) {
        let i_b = Inputs {
            kernel: b,
            ..i.clone()
        };
        let _ = vmm_boot_once(&i_b);
        for _ in 0..pairs {
            record("pair_kernel_a_build_to_init_marker", vmm_boot_once(&i));
            record("pair_kernel_b_build_to_init_marker", vmm_boot_once(&i_b));
        }
    } else if let (KvmKind::Hardware, Some(qemu), true) = (kind, &i.qemu, pairs > 0) {
        for _ in 0..pairs {
            record("pair_vmm_build_to_init_marker", vmm_boot_once(&i));
            record("pair_qemu_spawn_to_init_marker", qemu_boot_once(&i, qemu));
        }
    }
    let _ = std::fs::remove_file(&i.initramfs_path);
}

fn median(name: &str) -> Option<Duration> {
    let mut v: Vec<Duration> = SAMPLES
        .lock()
        .unwrap()
        .iter()
        .filter(|(n, _)| *n == name)
        .map(|(_, d)| *d)
        .collect();
    if v.is_empty() {
        return None;
    }
    v.sort();
    Some(v[v.len() / 2])
}

fn summary() {
    let count = |name: &str| {
        SAMPLES
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| *n == name)
            .count()
    };
    for name in [
        "setup_to_first_kvm_run",
        "vmm_build_to_init_marker",
        "qemu_spawn_to_init_marker",
        "pair_vmm_build_to_init_marker",
        "pair_qemu_spawn_to_init_marker",
        "pair_kernel_a_build_to_init_marker",
        "pair_kernel_b_build_to_init_marker",
    ] {
        if let Some(m) = median(name) {
            println!("summary: {name}: median {m:?} over {} runs", count(name));
        }
    }
    let a = median("pair_kernel_a_build_to_init_marker");
    let b = median("pair_kernel_b_build_to_init_marker");
    if let (Some(a), Some(b)) = (a, b) {
        println!(
            "summary: ratio kernel b/kernel a = {:.3}",
            b.as_secs_f64() / a.as_secs_f64()
        );
    }
    for prefix in ["", "pair_"] {
        let ours = median(&format!("{prefix}vmm_build_to_init_marker"));
        let qemu = median(&format!("{prefix}qemu_spawn_to_init_marker"));
        if let (Some(ours), Some(qemu)) = (ours, qemu) {
            println!(
                "summary: {prefix}ratio vmm/qemu = {:.3}",
                ours.as_secs_f64() / qemu.as_secs_f64()
            );
        }
    }
}

criterion_group!(boot, benches);

fn main() {
    // One job of `cargo xtask bench`: no groups of its own.
    hypercontainer_benches::Groups::declare(&[]);
    boot();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
