//! Sandbox cold start.
//!
//! - `sandbox/start_to_first_stdout_byte`: `Sandbox::builder()...start()`
//!   until the first stdout byte of `echo hi` in the busybox test image
//!   arrives, with the image store and the agent initramfs warm (needs
//!   hardware KVM, e.g. inside the emulated test host). After the criterion
//!   group the median of every measured start is printed with a breakdown
//!   by boot stage.
//! - `host_side/prepare_to_first_kvm_run`: the host-side part alone, on any
//!   KVM host (PVM included): image resolution through the warm store, the
//!   agent initramfs, and a VM with the same devices built until its first
//!   `KVM_RUN`, then stopped. Also prints the VMM's resident memory outside
//!   guest RAM per VM.
//!
//! `HYPERCONTAINER_SHARE_PAIRS=N` adds N alternating pairs of starts that
//! copy the kernel and share its pages
//! (`SandboxBuilder::share_kernel_pages`), with the medians of each.
//!
//! Inputs: `HYPERCONTAINER_TEST_IMAGE` (the busybox oci-archive, made by
//! `cargo xtask`; default: the cached one), `HYPERCONTAINER_KERNEL`,
//! `HYPERCONTAINER_AGENT` (defaults: the SDK's cache).

use std::io::Read;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, SamplingMode};
use hypercontainer::host::{detect_kvm, KvmKind};
use hypercontainer::sandbox::{BootTimings, ImageRef, ImageSource, ImageStore, Sandbox};
use hypercontainer::vmm::{BlockConfig, VmBuilder};

static STARTS: Mutex<Vec<(Duration, BootTimings)>> = Mutex::new(Vec::new());
static HOST: Mutex<Vec<(Duration, u64)>> = Mutex::new(Vec::new());
static PAIRS: Mutex<Vec<(bool, (Duration, BootTimings))>> = Mutex::new(Vec::new());

fn image_archive() -> PathBuf {
    if let Some(p) = std::env::var_os("HYPERCONTAINER_TEST_IMAGE").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    hypercontainer::kernel::cache_dir()
        .expect("a cache directory")
        .join("test-images/busybox-v2.oci.tar")
}

fn image_ref() -> ImageRef {
    ImageRef::Source {
        source: ImageSource::OciArchive {
            path: image_archive(),
        },
        reference: Some("test".into()),
    }
}

/// Whether the criterion run shares kernel pages (the default;
/// `HYPERCONTAINER_BENCH_SHARE_KERNEL=0` copies instead).
fn share_kernel() -> bool {
    std::env::var("HYPERCONTAINER_BENCH_SHARE_KERNEL").as_deref() != Ok("0")
}

/// One cold start: `start()` to the first stdout byte.
fn cold_start(share_kernel_pages: bool) -> (Duration, BootTimings) {
    let t0 = Instant::now();
    let s = Sandbox::builder()
        .image(image_ref())
        .cmd(["echo", "hi"])
        .share_kernel_pages(share_kernel_pages)
        .start()
        .unwrap_or_else(|e| panic!("start: {e}"));
    let mut out = s.stdout().unwrap();
    let mut b = [0u8; 1];
    out.read_exact(&mut b).unwrap();
    let took = t0.elapsed();
    assert_eq!(s.wait().unwrap(), 0);
    (took, s.boot_timings())
}

fn sandbox_benches(c: &mut Criterion) {
    if detect_kvm() != KvmKind::Hardware {
        eprintln!("sandbox/start_to_first_stdout_byte: skipped (needs hardware KVM)");
        return;
    }
    // Warm the image store, the agent initramfs and the page cache.
    cold_start(share_kernel());
    let mut g = c.benchmark_group("sandbox");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(20));
    g.bench_function("start_to_first_stdout_byte", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (d, t) = cold_start(share_kernel());
                STARTS.lock().unwrap().push((d, t));
                total += d;
            }
            total
        })
    });
    g.finish();

    // Copying against sharing kernel pages, alternating starts in this one
    // host so that both see the same conditions.
    let pairs: usize = std::env::var("HYPERCONTAINER_SHARE_PAIRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    for _ in 0..pairs {
        for share in [false, true] {
            PAIRS.lock().unwrap().push((share, cold_start(share)));
        }
    }
}

/// The host-side part of a start, up to the first `KVM_RUN`, and the VMM's
/// memory outside guest RAM.
fn host_side() -> (Duration, u64) {
    let store_root = hypercontainer::kernel::cache_dir().unwrap().join("images");
    let t0 = Instant::now();
    let store = ImageStore::open(&store_root).unwrap();
    let ImageRef::Source { source, reference } = image_ref() else {
        unreachable!()
    };
    let image = store.import(&source, reference.as_deref()).unwrap();
    let agent = hypercontainer::guest::default_agent().unwrap();
    let initramfs = hypercontainer::guest::agent_initramfs(&agent).unwrap();
    let mut b = VmBuilder::new()
        .kernel(hypercontainer::kernel::default_kernel().unwrap())
        .initramfs(&initramfs.path)
        .cmdline(hypercontainer::sandbox::SANDBOX_CMDLINE)
        .memory_mib(hypercontainer::sandbox::DEFAULT_MEMORY_MIB);
    for (i, l) in image.layers.iter().enumerate() {
        b = b.block(
            BlockConfig::new(l.erofs_path.clone().unwrap())
                .read_only(true)
                .serial(format!("layer{i}")),
        );
    }
    let mut vm = b.vsock(3).rng().build().unwrap();
    let first = loop {
        if let Some(t) = vm.boot_times().first_run {
            break t;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            panic!("no KVM_RUN within 10 s");
        }
        std::thread::yield_now();
    };
    let rss = hypercontainer::vmm::rss_excluding_guest_kib(&[&vm]).unwrap_or(0);
    vm.stop();
    let _ = vm.wait();
    (first.saturating_duration_since(t0), rss)
}

fn host_side_benches(c: &mut Criterion) {
    if detect_kvm() == KvmKind::Missing {
        eprintln!("host_side: skipped (no /dev/kvm)");
        return;
    }
    host_side();
    let baseline = hypercontainer::vmm::rss_excluding_guest_kib(&[]).unwrap_or(0);
    let mut g = c.benchmark_group("host_side");
    g.sample_size(20);
    g.bench_function("prepare_to_first_kvm_run", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (d, rss) = host_side();
                HOST.lock().unwrap().push((d, rss.saturating_sub(baseline)));
                total += d;
            }
            total
        })
    });
    g.finish();
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Prints the median start and the median of every boot stage.
fn print_starts(label: &str, starts: &[(Duration, BootTimings)]) {
    if !starts.is_empty() {
        let t: Vec<&BootTimings> = starts.iter().map(|(_, t)| t).collect();
        let m = |f: &dyn Fn(&BootTimings) -> Option<Duration>| {
            median(t.iter().filter_map(|x| f(x)).collect())
        };
        println!(
            "{label}, {} starts: median start() to first stdout byte {}",
            starts.len(),
            ms(median(starts.iter().map(|(d, _)| *d).collect()))
        );
        println!("  medians by stage (host: since start(); guest: since kernel start):");
        println!(
            "    host  image ready            {}",
            ms(m(&|x| Some(x.image_ready)))
        );
        println!(
            "    host  VM built               {}",
            ms(m(&|x| Some(x.vm_built)))
        );
        println!(
            "    host  first KVM_RUN          {}",
            ms(m(&|x| x.first_kvm_run))
        );
        println!(
            "    guest agent start            {}",
            ms(m(&|x| x.guest_agent_start))
        );
        println!(
            "    host  agent connected        {}",
            ms(m(&|x| Some(x.agent_connected)))
        );
        println!(
            "    guest rootfs ready           {}",
            ms(m(&|x| x.guest_rootfs_ready))
        );
        println!(
            "    guest process exec           {}",
            ms(m(&|x| x.guest_process_exec))
        );
        println!(
            "    host  process started        {}",
            ms(m(&|x| x.process_started))
        );
        println!(
            "    host  first output byte      {}",
            ms(m(&|x| x.first_output))
        );
    }
}

fn report() {
    let starts = STARTS.lock().unwrap().clone();
    let mode = if share_kernel() {
        "sharing kernel pages"
    } else {
        "copying the kernel"
    };
    print_starts(&format!("cold start ({mode})"), &starts);
    let pairs = PAIRS.lock().unwrap().clone();
    for (share, label) in [
        (false, "copying the kernel"),
        (true, "sharing kernel pages"),
    ] {
        let runs: Vec<_> = pairs
            .iter()
            .filter(|(s, _)| *s == share)
            .map(|(_, r)| *r)
            .collect();
        print_starts(&format!("alternating pairs, {label}"), &runs);
    }
    let host = HOST.lock().unwrap().clone();
    if !host.is_empty() {
        let mut rss: Vec<u64> = host.iter().map(|(_, r)| *r).collect();
        rss.sort();
        println!(
            "host side, {} runs: median prepare to first KVM_RUN {}; VMM RSS outside guest RAM \
             per VM (above the process baseline): median {} KiB",
            host.len(),
            ms(median(host.iter().map(|(d, _)| *d).collect())),
            rss[rss.len() / 2]
        );
    }
}

criterion_group!(benches, host_side_benches, sandbox_benches);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    report();
}
