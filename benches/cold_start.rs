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
//! - `qemu_microvm` peer: the same guest stack (kernel, agent initramfs,
//!   EROFS layer disks, `echo hi`) booted by QEMU's microvm machine with
//!   KVM, from spawning QEMU to the first stdout byte. QEMU has no in-process
//!   vsock, so the agent speaks the same protocol over a virtio console
//!   (`hypercontainer.agent_console=hvc0`) on a QEMU chardev socket; the
//!   host side is the SDK's own `AgentClient`. Measured back to back as
//!   `qemu_microvm/spawn_to_first_stdout_byte` (like the sandbox group),
//!   then as `HYPERCONTAINER_COLD_PAIRS=N` (default 8) alternating
//!   (sandbox, QEMU) starts; the medians and their ratio are printed. Needs
//!   `HYPERCONTAINER_QEMU`. In the emulated host a start right after another
//!   VMM's run is faster than one right after a start of its own, so the
//!   two orders give different ratios; both are printed.
//!
//! - `runc` peer: `runc run` of a bundle of the same image (see
//!   `common/runc.rs`), `HYPERCONTAINER_RUNC_PAIRS=N` (default 8)
//!   alternating (sandbox, runc) starts, to the first stdout byte.
//!
//! The comparisons are groups of their own (`host_side`, `back_to_back`,
//! `alternating`, `runc`; see `hypercontainer_benches::Groups`), so that
//! `cargo xtask bench` runs each as a job and a lockup of the emulated host
//! costs only the group it hit. Each ends with a `summary:` line: ours,
//! the peer, the ratio and the sample counts.
//!
//! `HYPERCONTAINER_SHARE_PAIRS=N` adds N alternating pairs of starts that
//! copy the kernel and share its pages
//! (`SandboxBuilder::share_kernel_pages`), with the medians of each.
//!
//! Inputs: `HYPERCONTAINER_TEST_IMAGE` (the busybox oci-archive, made by
//! `cargo xtask`; default: the cached one), `HYPERCONTAINER_KERNEL`,
//! `HYPERCONTAINER_AGENT` (defaults: the SDK's cache).

#[path = "common/qemu.rs"]
mod qemu;
#[path = "common/runc.rs"]
mod runc;

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode};
use hypercontainer::agent_client::{AgentClient, Output as AgentOutput};
use hypercontainer::host::{detect_kvm, KvmKind};
use hypercontainer::sandbox::{BootTimings, ImageRef, ImageSource, ImageStore, Sandbox};
use hypercontainer::vmm::{BlockConfig, VmBuilder};
use hypercontainer_benches::{median, summary, Groups};
use hypercontainer_protocol::{Process, Rootfs, Start, Upper};

static STARTS: Mutex<Vec<(Duration, BootTimings)>> = Mutex::new(Vec::new());
static HOST: Mutex<Vec<(Duration, u64)>> = Mutex::new(Vec::new());
static PAIRS: Mutex<Vec<(bool, (Duration, BootTimings))>> = Mutex::new(Vec::new());
static PEER: Mutex<Vec<(Duration, Duration)>> = Mutex::new(Vec::new());
static PEER_SOLO: Mutex<Vec<Duration>> = Mutex::new(Vec::new());
static RUNC: Mutex<Vec<(Duration, Duration)>> = Mutex::new(Vec::new());

/// The groups of this benchmark, each one job of `cargo xtask bench`.
const GROUPS: &[&str] = &["host_side", "back_to_back", "alternating", "runc"];

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

/// The sandbox's guest stack, prepared as `start()` does: the kernel, the
/// agent initramfs and the image's EROFS layer disks (through the store).
struct GuestStack {
    kernel: PathBuf,
    initramfs: PathBuf,
    layers: Vec<PathBuf>,
}

fn store_root() -> PathBuf {
    hypercontainer::kernel::cache_dir().unwrap().join("images")
}

fn guest_stack(store_root: &std::path::Path) -> GuestStack {
    let store = ImageStore::open(store_root).unwrap();
    let ImageRef::Source { source, reference } = image_ref() else {
        unreachable!()
    };
    let image = store.import(&source, reference.as_deref()).unwrap();
    let agent = hypercontainer::guest::default_agent().unwrap();
    GuestStack {
        kernel: hypercontainer::kernel::default_kernel().unwrap(),
        initramfs: hypercontainer::guest::agent_initramfs(&agent).unwrap().path,
        layers: image
            .layers
            .iter()
            .map(|l| l.erofs_path.clone().expect("an EROFS layer disk"))
            .collect(),
    }
}

/// What the QEMU peer boots: the sandbox's own guest stack.
struct PeerInputs {
    qemu: PathBuf,
    stack: GuestStack,
}

fn peer_inputs() -> Option<PeerInputs> {
    let qemu = std::env::var_os("HYPERCONTAINER_QEMU").map(PathBuf::from)?;
    Some(PeerInputs {
        qemu,
        stack: guest_stack(&store_root()),
    })
}

/// One cold start of the same guest stack under QEMU microvm: spawning
/// QEMU to the first stdout byte of `echo hi`.
fn qemu_cold_start(p: &PeerInputs) -> Duration {
    let dir = std::env::temp_dir().join(format!("hc-cold-peer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("agent.sock");
    let _ = std::fs::remove_file(&sock);
    let t0 = Instant::now();
    let cmdline = format!(
        "{} hypercontainer.agent_console=hvc0",
        hypercontainer::sandbox::SANDBOX_CMDLINE
    );
    let mut cmd = qemu::microvm(
        &p.qemu,
        hypercontainer::sandbox::DEFAULT_MEMORY_MIB,
        &p.stack.kernel,
        &p.stack.initramfs,
        &cmdline,
    );
    cmd.args(["-serial", "null"])
        .args(["-device", "virtio-serial-device"])
        .arg("-chardev")
        .arg(format!(
            "socket,id=agent,path={},server=on,wait=off",
            sock.display()
        ))
        .args(["-device", "virtconsole,chardev=agent"])
        .args(["-device", "virtio-rng-device"]);
    for (i, l) in p.stack.layers.iter().enumerate() {
        cmd.arg("-drive").arg(format!(
            "if=none,id=d{i},file={},format=raw,readonly=on",
            l.display()
        ));
        cmd.arg("-device")
            .arg(format!("virtio-blk-device,drive=d{i},serial=layer{i}"));
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn QEMU");
    let conn = loop {
        match UnixStream::connect(&sock) {
            Ok(c) => break c,
            Err(e) if t0.elapsed() > Duration::from_secs(10) => {
                let _ = child.kill();
                panic!("QEMU's agent socket: {e}");
            }
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    };
    let client = AgentClient::connect(conn, Duration::from_secs(30), None)
        .unwrap_or_else(|e| panic!("agent under QEMU: {e}"));
    let main = client
        .start(
            Start {
                id: 0,
                rootfs: Rootfs::Layers {
                    layers: (0..p.stack.layers.len())
                        .map(|i| format!("layer{i}"))
                        .collect(),
                    upper: Upper::Tmpfs,
                },
                shares: Vec::new(),
                process: Process {
                    argv: vec!["echo".into(), "hi".into()],
                    env: vec![
                        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                    ],
                    cwd: "/".into(),
                    ..Process::default()
                },
                hostname: "peer".into(),
                hosts: None,
                resolv_conf: None,
                network: Vec::new(),
                spec: hypercontainer_protocol::bare_spec(),
            },
            AgentOutput::Piped,
            AgentOutput::Piped,
        )
        .unwrap_or_else(|e| panic!("start under QEMU: {e}"));
    main.close_stdin().unwrap();
    let mut out = main.stdout().unwrap();
    let mut b = [0u8; 1];
    out.read_exact(&mut b).unwrap();
    let took = t0.elapsed();
    assert_eq!(main.wait().unwrap(), 0);
    // The agent powers the VM off; QEMU exits on the reset (-no-reboot).
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = std::fs::remove_dir_all(&dir);
    took
}

fn pairs_env(name: &str) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8)
}

/// Whether a sandbox can boot here; says why not.
fn can_boot(group: &str) -> bool {
    let ok = detect_kvm() == KvmKind::Hardware;
    if !ok {
        eprintln!("{group}: skipped (needs hardware KVM)");
    }
    ok
}

/// The sandbox back to back (criterion), then the QEMU peer the same way.
fn back_to_back(c: &mut Criterion) {
    if !can_boot("back_to_back") {
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
    let Some(inputs) = peer_inputs() else {
        eprintln!("qemu_microvm peer: skipped (set HYPERCONTAINER_QEMU)");
        return;
    };
    // Warm QEMU's binary and the page cache.
    qemu_cold_start(&inputs);
    let mut g = c.benchmark_group("qemu_microvm");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(40));
    g.bench_function("spawn_to_first_stdout_byte", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let d = qemu_cold_start(&inputs);
                    PEER_SOLO.lock().unwrap().push(d);
                    d
                })
                .sum()
        })
    });
    g.finish();
}

/// Alternating (sandbox, QEMU peer) cold starts, and sandbox starts that
/// copy against share the kernel's pages.
fn alternating() {
    if !can_boot("alternating") {
        return;
    }
    cold_start(share_kernel());
    for _ in 0..std::env::var("HYPERCONTAINER_SHARE_PAIRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
    {
        for share in [false, true] {
            PAIRS.lock().unwrap().push((share, cold_start(share)));
        }
    }
    let Some(inputs) = peer_inputs() else {
        eprintln!("qemu_microvm peer: skipped (set HYPERCONTAINER_QEMU)");
        return;
    };
    qemu_cold_start(&inputs);
    for _ in 0..pairs_env("HYPERCONTAINER_COLD_PAIRS") {
        let (ours, _) = cold_start(share_kernel());
        let peer = qemu_cold_start(&inputs);
        PEER.lock().unwrap().push((ours, peer));
    }
}

/// Alternating (sandbox, `runc run`) cold starts of the same image.
fn runc_pairs() {
    if !can_boot("runc") {
        return;
    }
    let peer = match runc::Runc::new(&image_archive(), "test", &["echo", "hi"]) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("runc peer: skipped ({e})");
            return;
        }
    };
    cold_start(share_kernel());
    peer.cold_start();
    for _ in 0..pairs_env("HYPERCONTAINER_RUNC_PAIRS") {
        let (ours, _) = cold_start(share_kernel());
        let theirs = peer.cold_start();
        RUNC.lock().unwrap().push((ours, theirs));
    }
}

/// The host-side part of a start, up to the first `KVM_RUN`, and the VMM's
/// memory outside guest RAM.
fn host_side() -> (Duration, u64) {
    let store_root = store_root();
    let t0 = Instant::now();
    let stack = guest_stack(&store_root);
    let mut b = VmBuilder::new()
        .kernel(&stack.kernel)
        .initramfs(&stack.initramfs)
        .cmdline(hypercontainer::sandbox::SANDBOX_CMDLINE)
        .memory_mib(hypercontainer::sandbox::DEFAULT_MEMORY_MIB);
    for (i, l) in stack.layers.iter().enumerate() {
        b = b.block(
            BlockConfig::new(l)
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
            "    guest start received         {}",
            ms(m(&|x| x.guest_start_received))
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

/// Prints the summary line of sandbox against peer cold starts.
fn print_peer_ratio(order: &str, peer: &str, ours: Vec<Duration>, theirs: Vec<Duration>) {
    let ms = |v: &Vec<Duration>| median(v.clone()).as_secs_f64() * 1e3;
    summary(
        &format!("cold start, {order}: start() (peer: spawn) to first stdout byte of echo hi"),
        (ms(&ours), ours.len()),
        (peer, ms(&theirs), theirs.len()),
        "ms",
    );
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
    let solo = PEER_SOLO.lock().unwrap().clone();
    if !solo.is_empty() && !starts.is_empty() {
        print_peer_ratio(
            "back to back",
            "QEMU microvm",
            starts.iter().map(|(d, _)| *d).collect(),
            solo,
        );
    }
    let peer = PEER.lock().unwrap().clone();
    if !peer.is_empty() {
        print_peer_ratio(
            "alternating pairs",
            "QEMU microvm",
            peer.iter().map(|(o, _)| *o).collect(),
            peer.iter().map(|(_, q)| *q).collect(),
        );
    }
    let runc = RUNC.lock().unwrap().clone();
    if !runc.is_empty() {
        print_peer_ratio(
            "alternating pairs",
            "runc run",
            runc.iter().map(|(o, _)| *o).collect(),
            runc.iter().map(|(_, r)| *r).collect(),
        );
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

fn main() {
    let groups = Groups::declare(GROUPS);
    let mut c = Criterion::default().configure_from_args();
    if groups.enabled("host_side") {
        host_side_benches(&mut c);
    }
    if groups.enabled("back_to_back") {
        back_to_back(&mut c);
    }
    if groups.enabled("alternating") {
        alternating();
    }
    if groups.enabled("runc") {
        runc_pairs();
    }
    c.final_summary();
    report();
}
