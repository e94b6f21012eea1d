//! Device benchmarks, measured by the guest (needs hardware KVM, e.g. inside
//! the emulated test host: `cargo xtask bench devices`).
//!
//! - `block/{vmm,qemu}/seq_read`: `dd` of 128 MiB from `/dev/vda` to
//!   `/dev/null`, 1 MiB blocks, `O_DIRECT`.
//! - `block/{vmm,qemu}/seq_write`: `dd` of 128 MiB of zeros to `/dev/vda`,
//!   1 MiB blocks, `O_DIRECT`, then `fsync`.
//! - `vsock/vmm/echo_16m`: the host connects to a guest echo server and
//!   sends 16 MiB while reading the echo back (each byte crosses the device
//!   twice). QEMU offers vsock only through the host's `vhost_vsock`
//!   module, so there is no peer here.
//! - `net/vmm/tcp_echo_8m`: the same echo over TCP through the
//!   virtio-net device on a host tap (checksum and segmentation offloads
//!   on both sides): the host connects to the guest's TCP echo server at
//!   10.0.5.2 from the tap's 10.0.5.1 and sends 8 MiB while reading the
//!   echo back. Needs root and `/dev/net/tun`; the host end is configured
//!   with busybox's `ip`. No QEMU peer: in the emulated host QEMU's
//!   `virtio-net-device` on a tap had its guest's connections reset at
//!   once with `vnet_hdr=on`, and stalled within a few boots with
//!   `vnet_hdr=off` (3.9 MiB/s while it ran).
//!
//! Both VMMs boot the same kernel and initramfs with the same command line
//! (apart from the reboot method) and the same raw image; QEMU runs its
//! `microvm` machine with `-device virtio-blk-device` (default cache mode,
//! i.e. the host page cache, as this VMM uses). Each criterion sample is
//! one boot whose `/init` runs the workload as many times as criterion
//! asks (`hcn=` on the command line); only the workload is timed, on the
//! host's clock: between the arrivals of the guest's console lines before
//! and after each `dd` (the guests' own clocks are not trusted to agree
//! under nested emulation), or around the vsock echo. At the end the
//! medians per iteration, the throughputs and the ratios are printed.
//!
//! `HYPERCONTAINER_DEVICE_PAIRS=N` adds N rounds of alternating boots
//! (this VMM, then QEMU, two runs of each block workload per boot) after the
//! criterion groups: a fairer ratio on a busy machine.
//!
//! Inputs: `HYPERCONTAINER_KERNEL` (default: the cached kernel),
//! `HYPERCONTAINER_BUSYBOX` (default `/bin/busybox`, must be static),
//! `HYPERCONTAINER_QEMU` (the peer; skipped without it),
//! `HYPERCONTAINER_VSOCK_ECHO` (the static guest helper of the whole-VM
//! tests; the vsock bench is skipped without it).

#[path = "common/qemu.rs"]
mod qemu;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, SamplingMode, Throughput};
use hypercontainer::host::{detect_kvm, KvmKind};
use hypercontainer::initramfs::{CpioWriter, Metadata};
use hypercontainer::vmm::{BlockConfig, ConsoleSink, VmBuilder};

const CMDLINE: &str = "console=ttyS0 panic=-1 quiet";
const MEMORY_MIB: u64 = 256;
const DISK_MIB: u64 = 128;
const BLOCK_MIB: u64 = 128;
const VSOCK_BYTES: u64 = 16 << 20;
const NET_BYTES: u64 = 8 << 20;
const HOST_IP: &str = "10.0.5.1";
const GUEST_IP: &str = "10.0.5.2";
const GUEST_TCP_PORT: u16 = 7000;
const GUEST_PORT: u32 = 5000;
const TIMEOUT: Duration = Duration::from_secs(600);

static SAMPLES: Mutex<Vec<(&'static str, Duration)>> = Mutex::new(Vec::new());

fn record(name: &'static str, d: Duration) {
    SAMPLES.lock().unwrap().push((name, d));
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Work {
    Read,
    Write,
    Vsock,
    Net,
}

impl Work {
    fn arg(self) -> &'static str {
        match self {
            Work::Read => "read",
            Work::Write => "write",
            Work::Vsock => "vsock",
            Work::Net => "net",
        }
    }
}

struct Inputs {
    kernel: PathBuf,
    initramfs: Vec<u8>,
    initramfs_path: PathBuf,
    disk: PathBuf,
    qemu: Option<PathBuf>,
    vsock: bool,
    busybox: PathBuf,
    tap: String,
}

const INIT: &str = r#"#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t devtmpfs dev /dev
i=0
while [ "$i" -lt "${hcn:-1}" ]; do
  case "$hcwork" in
  read) echo HCSTART; dd if=/dev/vda of=/dev/null bs=1M count=BLOCK_MIB iflag=direct; echo "HCEND $?" ;;
  write) echo HCSTART; dd if=/dev/zero of=/dev/vda bs=1M count=BLOCK_MIB oflag=direct conv=fsync; echo "HCEND $?" ;;
  vsock) vsock-echo serve GUEST_PORT >/dev/null ;;
  net) ip link set eth0 up 2>/dev/null; ip addr add GUEST_IP/24 dev eth0 2>/dev/null
       vsock-echo tcp-serve GUEST_TCP_PORT >/dev/null ;;
  esac
  i=$((i+1))
done
echo HCBENCH-DONE
reboot -f
"#;

fn inputs() -> Inputs {
    let kernel = std::env::var_os("HYPERCONTAINER_KERNEL")
        .map(PathBuf::from)
        .map_or_else(hypercontainer::kernel::default_kernel, Ok)
        .expect("a guest kernel (HYPERCONTAINER_KERNEL or `cargo xtask kernel`)");
    let busybox = std::env::var_os("HYPERCONTAINER_BUSYBOX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/bin/busybox"));
    let echo = std::env::var_os("HYPERCONTAINER_VSOCK_ECHO").map(PathBuf::from);
    let init = INIT
        .replace("BLOCK_MIB", &BLOCK_MIB.to_string())
        .replace("GUEST_TCP_PORT", &GUEST_TCP_PORT.to_string())
        .replace("GUEST_PORT", &GUEST_PORT.to_string())
        .replace("GUEST_IP", GUEST_IP);
    let mut cpio = CpioWriter::new(Vec::new());
    cpio.char_device("/dev/console", Metadata::new(0o600), 5, 1)
        .unwrap()
        .dir("/proc", Metadata::new(0o755))
        .unwrap()
        .file_from_path("/bin/busybox", Metadata::new(0o755), &busybox)
        .unwrap()
        .symlink("/bin/sh", "busybox", Metadata::new(0o777))
        .unwrap()
        .file("/init", Metadata::new(0o755), init.as_bytes())
        .unwrap();
    if let Some(echo) = &echo {
        cpio.file_from_path("/bin/vsock-echo", Metadata::new(0o755), echo)
            .unwrap();
    }
    let initramfs = cpio.finish().unwrap();
    let tmp = std::env::temp_dir();
    let initramfs_path = tmp.join(format!("hc-dev-bench-{}.cpio", std::process::id()));
    std::fs::write(&initramfs_path, &initramfs).unwrap();
    // A disk of non-zero data, so that reads are not served from holes.
    let disk = tmp.join(format!("hc-dev-bench-{}.img", std::process::id()));
    let mut f = std::fs::File::create(&disk).unwrap();
    let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8 | 1).collect();
    for _ in 0..DISK_MIB {
        f.write_all(&chunk).unwrap();
    }
    f.sync_all().unwrap();
    Inputs {
        kernel,
        initramfs,
        initramfs_path,
        disk,
        qemu: std::env::var_os("HYPERCONTAINER_QEMU").map(PathBuf::from),
        vsock: echo.is_some(),
        busybox,
        tap: format!("hcb{}", std::process::id()),
    }
}

fn cmdline(work: Work, n: u64) -> String {
    format!("{CMDLINE} hcn={n} hcwork={}", work.arg())
}

/// Console lines with the host time each arrived at.
type Lines = Vec<(String, Instant)>;

/// Splits console output into timestamped lines.
#[derive(Default)]
struct LineClock {
    partial: Vec<u8>,
    lines: Lines,
}

impl LineClock {
    fn feed(&mut self, bytes: &[u8]) {
        let now = Instant::now();
        for &b in bytes {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&self.partial).trim().to_string();
                self.lines.push((line, now));
                self.partial.clear();
            } else {
                self.partial.push(b);
            }
        }
    }
}

/// Feeds a [`LineClock`] and hands it over when the VM is dropped.
struct ClockSink {
    clock: LineClock,
    done: mpsc::Sender<Lines>,
}

impl ConsoleSink for ClockSink {
    fn write(&mut self, bytes: &[u8]) {
        self.clock.feed(bytes);
    }
}

impl Drop for ClockSink {
    fn drop(&mut self) {
        let _ = self.done.send(std::mem::take(&mut self.clock.lines));
    }
}

/// Host time between each `HCSTART` line and the `HCEND <status>` line
/// after it; panics when the workload failed.
fn marker_times(lines: &Lines) -> Vec<Duration> {
    let mut out = Vec::new();
    let mut start = None;
    for (line, at) in lines {
        if line == "HCSTART" {
            start = Some(*at);
        } else if let Some(status) = line.strip_prefix("HCEND ") {
            assert_eq!(status, "0", "the workload failed:\n{}", text(lines));
            if let Some(s) = start.take() {
                out.push(*at - s);
            }
        }
    }
    out
}

fn text(lines: &Lines) -> String {
    lines
        .iter()
        .map(|(l, _)| l.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Echoes `bytes` through a connected stream; returns the time from the
/// first byte sent to the last byte of echo received.
fn echo_once<S: Read + Write + Send + 'static>(
    stream: S,
    mut writer: S,
    shutdown: impl FnOnce(&S) + Send + 'static,
    bytes: u64,
) -> Duration {
    let start = Instant::now();
    let sender = std::thread::spawn(move || {
        let buf = vec![0x5au8; 64 << 10];
        let mut sent = 0u64;
        while sent < bytes {
            let n = (bytes - sent).min(buf.len() as u64) as usize;
            writer.write_all(&buf[..n]).unwrap();
            sent += n as u64;
        }
        shutdown(&writer);
    });
    let mut reader = stream;
    let mut buf = vec![0u8; 64 << 10];
    let mut received = 0u64;
    while received < bytes {
        let n = reader.read(&mut buf).unwrap();
        assert!(n > 0, "echo ended after {received} bytes");
        received += n as u64;
    }
    let d = start.elapsed();
    sender.join().unwrap();
    d
}

/// Echoes `VSOCK_BYTES` through the guest's vsock echo server.
fn vsock_echo_once(host: &hypercontainer::vmm::devices::VsockHost) -> Duration {
    let deadline = Instant::now() + TIMEOUT;
    let stream = loop {
        match host.connect(GUEST_PORT, Duration::from_secs(10)) {
            Ok(s) => break s,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "cannot connect to the guest: {e}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    let writer = stream.try_clone().unwrap();
    echo_once(
        stream,
        writer,
        |w| w.shutdown(std::net::Shutdown::Write).unwrap(),
        VSOCK_BYTES,
    )
}

/// Gives the host end of the tap its address once it exists.
fn configure_tap(tap: &str, busybox: &Path) {
    let sys = PathBuf::from("/sys/class/net").join(tap);
    let deadline = Instant::now() + TIMEOUT;
    while !sys.exists() {
        assert!(Instant::now() < deadline, "tap {tap} never appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
    let cidr = format!("{HOST_IP}/24");
    for args in [
        vec!["ip", "addr", "add", &cidr, "dev", tap],
        vec!["ip", "link", "set", tap, "up"],
    ] {
        let st = std::process::Command::new(busybox)
            .args(&args)
            .status()
            .unwrap();
        assert!(st.success(), "busybox {args:?}: {st}");
    }
}

/// Echoes `NET_BYTES` through the guest's TCP echo server, `n` times.
fn net_echoes(n: u64) -> Vec<Duration> {
    let addr: std::net::SocketAddr = format!("{GUEST_IP}:{GUEST_TCP_PORT}").parse().unwrap();
    (0..n)
        .map(|_| {
            let deadline = Instant::now() + TIMEOUT;
            let stream = loop {
                match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                    Ok(s) => break s,
                    Err(e) => {
                        assert!(Instant::now() < deadline, "cannot connect to {addr}: {e}");
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            };
            // A stalled connection fails the run instead of hanging it.
            stream
                .set_read_timeout(Some(Duration::from_secs(120)))
                .unwrap();
            let writer = stream.try_clone().unwrap();
            echo_once(
                stream,
                writer,
                |w| w.shutdown(std::net::Shutdown::Write).unwrap(),
                NET_BYTES,
            )
        })
        .collect()
}

/// Boots this VMM running `n` iterations of `work`; returns their times.
fn vmm_run(i: &Inputs, work: Work, n: u64) -> Vec<Duration> {
    let (tx, rx) = mpsc::channel();
    let mut b = VmBuilder::new()
        .kernel(&i.kernel)
        .initramfs_bytes(i.initramfs.clone())
        .memory_mib(MEMORY_MIB)
        .cmdline(format!("{} reboot=k", cmdline(work, n)))
        .console(ClockSink {
            clock: LineClock::default(),
            done: tx,
        })
        .block(BlockConfig::new(&i.disk));
    if work == Work::Vsock {
        b = b.vsock(3);
    }
    if work == Work::Net {
        b = b.net(hypercontainer::vmm::NetConfig::tap(&i.tap));
    }
    let mut vm = b.build().expect("build");
    let mut times = Vec::new();
    if work == Work::Vsock {
        let host = vm.vsock().unwrap().clone();
        for _ in 0..n {
            times.push(vsock_echo_once(&host));
        }
    }
    if work == Work::Net {
        configure_tap(&i.tap, &i.busybox);
        times = net_echoes(n);
    }
    let outcome = vm.wait_timeout(TIMEOUT);
    drop(vm);
    let lines = rx.recv().expect("the console sink hands over its lines");
    let console = text(&lines);
    assert!(
        matches!(outcome, Some(Ok(_))) && console.contains("HCBENCH-DONE"),
        "the guest did not end cleanly: {outcome:?}; console:\n{console}"
    );
    if !matches!(work, Work::Vsock | Work::Net) {
        times = marker_times(&lines);
    }
    assert_eq!(times.len() as u64, n, "console:\n{console}");
    times
}

/// Boots QEMU microvm running `n` iterations of `work`; returns their times.
fn qemu_run(i: &Inputs, qemu: &Path, work: Work, n: u64) -> Vec<Duration> {
    let mut child = qemu::microvm(
        qemu,
        MEMORY_MIB,
        &i.kernel,
        &i.initramfs_path,
        &format!("{} reboot=t", cmdline(work, n)),
    )
    .args(["-serial", "stdio", "-device", "virtio-blk-device,drive=d0"])
    .arg("-drive")
    .arg(format!(
        "id=d0,if=none,format=raw,file={}",
        i.disk.display()
    ))
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit())
    .spawn()
    .expect("run QEMU");
    let mut out = child.stdout.take().unwrap();
    let mut clock = LineClock::default();
    let mut buf = [0u8; 4096];
    loop {
        match out.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => clock.feed(&buf[..n]),
        }
    }
    let status = child.wait().expect("wait for QEMU");
    let console = text(&clock.lines);
    assert!(
        console.contains("HCBENCH-DONE"),
        "QEMU's guest did not finish ({status}); console:\n{console}"
    );
    let times = marker_times(&clock.lines);
    assert_eq!(times.len() as u64, n, "console:\n{console}");
    times
}

fn measure(name: &'static str, times: Vec<Duration>) -> Duration {
    for &t in &times {
        record(name, t);
    }
    times.into_iter().sum()
}

fn benches(c: &mut Criterion) {
    if detect_kvm() != KvmKind::Hardware {
        eprintln!(
            "this host's KVM cannot boot Linux: nothing to measure (run `cargo xtask bench devices`)"
        );
        return;
    }
    let i = inputs();
    // One unmeasured boot: the first run in a fresh host is not representative.
    let _ = vmm_run(&i, Work::Read, 1);

    let mut g = c.benchmark_group("block");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(10))
        .throughput(Throughput::Bytes(BLOCK_MIB << 20));
    for (work, label) in [(Work::Read, "seq_read"), (Work::Write, "seq_write")] {
        let ours: &'static str = if work == Work::Read {
            "vmm/seq_read"
        } else {
            "vmm/seq_write"
        };
        g.bench_function(label_for("vmm", label), |b| {
            b.iter_custom(|n| measure(ours, vmm_run(&i, work, n)))
        });
        if let Some(qemu) = &i.qemu {
            let peer: &'static str = if work == Work::Read {
                "qemu/seq_read"
            } else {
                "qemu/seq_write"
            };
            g.bench_function(label_for("qemu", label), |b| {
                b.iter_custom(|n| measure(peer, qemu_run(&i, qemu, work, n)))
            });
        }
    }
    g.finish();

    if i.vsock {
        let mut g = c.benchmark_group("vsock");
        g.sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_millis(1))
            .measurement_time(Duration::from_secs(10))
            .throughput(Throughput::Bytes(VSOCK_BYTES));
        g.bench_function("vmm/echo_16m", |b| {
            b.iter_custom(|n| measure("vmm/vsock_echo_16m", vmm_run(&i, Work::Vsock, n)))
        });
        g.finish();
        let mut g = c.benchmark_group("net");
        g.sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_millis(1))
            .measurement_time(Duration::from_secs(10))
            .throughput(Throughput::Bytes(NET_BYTES));
        g.bench_function("vmm/tcp_echo_8m", |b| {
            b.iter_custom(|n| measure("vmm/tcp_echo_8m", vmm_run(&i, Work::Net, n)))
        });
        g.finish();
    } else {
        eprintln!("HYPERCONTAINER_VSOCK_ECHO is not set: no vsock or net benchmark");
    }
    let pairs: u64 = std::env::var("HYPERCONTAINER_DEVICE_PAIRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if let (Some(qemu), true) = (&i.qemu, pairs > 0) {
        // Alternating boots: load from elsewhere on the machine hits both
        // VMMs alike.
        for _ in 0..pairs {
            measure("pair_vmm/seq_read", vmm_run(&i, Work::Read, 2));
            measure("pair_qemu/seq_read", qemu_run(&i, qemu, Work::Read, 2));
            measure("pair_vmm/seq_write", vmm_run(&i, Work::Write, 2));
            measure("pair_qemu/seq_write", qemu_run(&i, qemu, Work::Write, 2));
        }
    }
    let _ = std::fs::remove_file(&i.initramfs_path);
    let _ = std::fs::remove_file(&i.disk);
}

fn label_for(vmm: &str, work: &str) -> String {
    format!("{vmm}/{work}")
}

fn median(name: &str) -> Option<(Duration, usize)> {
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
    Some((v[v.len() / 2], v.len()))
}

fn summary() {
    let mib_s = |mib: u64, d: Duration| mib as f64 / d.as_secs_f64();
    for (name, mib) in [
        ("vmm/seq_read", BLOCK_MIB),
        ("qemu/seq_read", BLOCK_MIB),
        ("vmm/seq_write", BLOCK_MIB),
        ("qemu/seq_write", BLOCK_MIB),
        ("vmm/vsock_echo_16m", VSOCK_BYTES >> 20),
        ("vmm/tcp_echo_8m", NET_BYTES >> 20),
        ("pair_vmm/seq_read", BLOCK_MIB),
        ("pair_qemu/seq_read", BLOCK_MIB),
        ("pair_vmm/seq_write", BLOCK_MIB),
        ("pair_qemu/seq_write", BLOCK_MIB),
    ] {
        if let Some((m, count)) = median(name) {
            println!(
                "summary: {name}: median {m:.3?} over {count} runs = {:.1} MiB/s",
                mib_s(mib, m)
            );
        }
    }
    for prefix in ["", "pair_"] {
        for work in ["seq_read", "seq_write"] {
            if let (Some((ours, _)), Some((qemu, _))) = (
                median(&format!("{prefix}vmm/{work}")),
                median(&format!("{prefix}qemu/{work}")),
            ) {
                println!(
                    "summary: {prefix}{work} throughput ratio vmm/qemu = {:.2}",
                    qemu.as_secs_f64() / ours.as_secs_f64()
                );
            }
        }
    }
}

criterion_group!(devices, benches);

fn main() {
    // One job of `cargo xtask bench`: no groups of its own.
    hypercontainer_benches::Groups::declare(&[]);
    devices();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
