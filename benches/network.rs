//! User-mode networking against QEMU's `-netdev user` (slirp).
//!
//! Both guests boot the same kernel and run the same busybox commands:
//! - throughput: the guest sends `HYPERCONTAINER_BENCH_NET_MIB` MiB (default 8: longer
//!   uploads through passt have been reset in the emulated host, see the
//!   README)
//!   of zeros with `nc` to a TCP sink on the host's loopback, reached
//!   through the gateway address (10.0.2.2 in both: passt with
//!   `map_host_loopback`, slirp by default); the sink times first byte to
//!   end of stream;
//! - latency: the host makes `HYPERCONTAINER_BENCH_NET_REQUESTS` (default 20)
//!   sequential HTTP/1.0 requests, one connection each, to the guest's
//!   busybox `httpd` on port 80 through a published port (`-p
//!   127.0.0.1:0:80`; QEMU's `hostfwd`); the median is taken.
//!
//! The SDK's guest is a sandbox of the busybox test image (agent, EROFS
//! layers); QEMU's is a busybox initramfs whose `/init` configures
//! `10.0.2.15/24` and runs the same commands (QEMU's microvm machine with a
//! virtio-mmio NIC, as the SDK's). `HYPERCONTAINER_NET_PAIRS` (default 3)
//! alternating runs; the medians and ratios are printed. Inputs:
//! `HYPERCONTAINER_KERNEL`, `HYPERCONTAINER_BUSYBOX`, `HYPERCONTAINER_QEMU`,
//! `HYPERCONTAINER_TEST_IMAGE` (as for the other benchmarks), passt and
//! iproute2's `ip`. On a host without a default route (the emulated host
//! has no NIC) the benchmark first brings up loopback and gives the host a
//! tap with addresses and default routes, only so that passt finds an
//! uplink; the traffic measured stays on the host.

#[path = "common/qemu.rs"]
mod qemu;

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use hypercontainer::host::{detect_kvm, KvmKind};
use hypercontainer::initramfs::{CpioWriter, Metadata};
use hypercontainer::network::Network;
use hypercontainer::sandbox::{ImageRef, ImageSource, Sandbox};

fn env_num(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn env_path(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

fn image_ref() -> ImageRef {
    let path = std::env::var_os("HYPERCONTAINER_TEST_IMAGE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            hypercontainer::kernel::cache_dir()
                .expect("a cache directory")
                .join("test-images/busybox-v2.oci.tar")
        });
    ImageRef::Source {
        source: ImageSource::OciArchive { path },
        reference: Some("test".into()),
    }
}

/// The guest's part, the same in both VMs: an httpd on port 80, then the
/// upload to the sink on the gateway, then `done`.
fn workload(sink_port: u16, mib: u64) -> String {
    format!(
        "mkdir -p /tmp/www && echo hello > /tmp/www/index.html && httpd -p 80 -h /tmp/www && \
         echo ready && dd if=/dev/zero bs=64k count={} 2>/dev/null | nc 10.0.2.2 {sink_port} 2>&1; \
         echo \"done: nc exited $?\"",
        mib * 16
    )
}

/// A sink that accepts one connection and times it: (bytes, first byte
/// to end of stream).
fn sink() -> (u16, std::thread::JoinHandle<Sunk>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let n = c.read(&mut buf).unwrap() as u64;
        let t0 = Instant::now();
        let mut total = n;
        let mut error = None;
        loop {
            match c.read(&mut buf) {
                Ok(0) => break,
                Err(e) => {
                    error = Some(e);
                    break;
                }
                Ok(n) => total += n as u64,
            }
        }
        Sunk {
            bytes: total,
            time: t0.elapsed(),
            error,
        }
    });
    (port, t)
}

/// What the sink received: bytes, the time from the first to the last,
/// and the error that ended the stream, if not its end.
struct Sunk {
    bytes: u64,
    time: Duration,
    error: Option<std::io::Error>,
}

/// The median of `requests` sequential GETs to `addr`, after one that
/// waits for the server.
fn latency(addr: SocketAddr, requests: u64) -> Duration {
    let get = || -> std::io::Result<Duration> {
        let t0 = Instant::now();
        let mut c = TcpStream::connect(addr)?;
        c.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        let mut s = Vec::new();
        c.read_to_end(&mut s)?;
        if !s.starts_with(b"HTTP/1") {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
        Ok(t0.elapsed())
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while get().is_err() {
        assert!(
            Instant::now() < deadline,
            "the guest's httpd never answered"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut times: Vec<Duration> = (0..requests).map(|_| get().expect("GET")).collect();
    times.sort();
    times[times.len() / 2]
}

/// One measurement: (MiB/s, median request latency).
type Run = (f64, Duration);

fn mib_per_s(bytes: u64, t: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / t.as_secs_f64()
}

fn run_sandbox(mib: u64, requests: u64) -> Run {
    let (port, sink) = sink();
    let s = Sandbox::builder()
        .image(image_ref())
        .user("0")
        .boot_timeout(Duration::from_secs(120))
        .network(
            Network::user()
                .map_host_loopback(true)
                .publish("127.0.0.1:0:80".parse().unwrap()),
        )
        .cmd([
            "sh",
            "-c",
            &format!("{}; exec sleep 600", workload(port, mib)),
        ])
        .start()
        .expect("start the sandbox");
    let got = sink.join().unwrap();
    let mut out = BufReader::new(s.stdout().unwrap());
    let mut text = String::new();
    while out.read_line(&mut text).unwrap() > 0 && !text.contains("done") {}
    assert_eq!(
        got.bytes,
        mib << 20,
        "the sink got {} bytes (ended by {:?}); the sandbox's network: {:?}; its output: {text}",
        got.bytes,
        got.error,
        s.network_error()
    );
    let lat = latency(s.ports()[0].host, requests);
    (mib_per_s(got.bytes, got.time), lat)
}

fn pack_initramfs(path: &std::path::Path, sink_port: u16, mib: u64) {
    let init = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s /bin\n\
         mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t tmpfs tmp /tmp\n\
         mount -t devtmpfs dev /dev 2>/dev/null\n\
         ip link set lo up; ip link set eth0 up\n\
         ip addr add 10.0.2.15/24 dev eth0; ip route add default via 10.0.2.2\n\
         {}\n\
         exec sleep 600\n",
        workload(sink_port, mib)
    );
    let file = std::fs::File::create(path).unwrap();
    let mut cpio = CpioWriter::new(BufWriter::new(file));
    cpio.dir("/proc", Metadata::new(0o755))
        .unwrap()
        .dir("/sys", Metadata::new(0o755))
        .unwrap()
        .dir("/tmp", Metadata::new(0o1777))
        .unwrap()
        .char_device("/dev/console", Metadata::new(0o600), 5, 1)
        .unwrap()
        .file_from_path(
            "/bin/busybox",
            Metadata::new(0o755),
            env_path("HYPERCONTAINER_BUSYBOX", "/bin/busybox"),
        )
        .unwrap()
        .file("/init", Metadata::new(0o755), init.as_bytes())
        .unwrap();
    cpio.finish().unwrap();
}

fn run_qemu(mib: u64, requests: u64) -> Run {
    let (port, sink) = sink();
    let fwd = TcpListener::bind("127.0.0.1:0").unwrap();
    let fwd_port = fwd.local_addr().unwrap().port();
    drop(fwd);
    let dir = std::env::temp_dir().join(format!("hc-netbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let initrd = dir.join("initrd.cpio");
    pack_initramfs(&initrd, port, mib);
    let kernel = env_path("HYPERCONTAINER_KERNEL", "vmlinux");
    let mut child = qemu::microvm(
        &env_path("HYPERCONTAINER_QEMU", "qemu-system-x86_64"),
        256,
        &kernel,
        &initrd,
        "console=ttyS0 reboot=k panic=-1 quiet",
    )
    .args(["-serial", "null", "-netdev"])
    .arg(format!(
        "user,id=n0,net=10.0.2.0/24,hostfwd=tcp:127.0.0.1:{fwd_port}-:80"
    ))
    .args(["-device", "virtio-net-device,netdev=n0"])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .spawn()
    .expect("start QEMU");
    let got = sink.join().unwrap();
    assert_eq!(
        got.bytes,
        mib << 20,
        "QEMU's sink got {} bytes (ended by {:?})",
        got.bytes,
        got.error
    );
    let lat = latency(SocketAddr::from(([127, 0, 0, 1], fwd_port)), requests);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    (mib_per_s(got.bytes, got.time), lat)
}

/// Loopback up, and an uplink for passt where the host has none.
fn prepare_host() {
    let ip = |args: &[&str]| {
        let st = std::process::Command::new("ip").args(args).status();
        assert!(st.is_ok_and(|s| s.success()), "ip {args:?}");
    };
    // Best effort: it is up on any ordinary host.
    let _ = std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status();
    let route = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    if route
        .lines()
        .skip(1)
        .any(|l| l.split_whitespace().nth(1) == Some("00000000"))
    {
        return;
    }
    ip(&["tuntap", "add", "dev", "hcup0", "mode", "tap"]);
    ip(&["link", "set", "hcup0", "up"]);
    ip(&["addr", "add", "10.99.0.1/24", "dev", "hcup0"]);
    ip(&[
        "route",
        "add",
        "default",
        "via",
        "10.99.0.2",
        "dev",
        "hcup0",
        "onlink",
    ]);
}

fn median<T: PartialOrd + Copy>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
    v[v.len() / 2]
}

fn main() {
    // One job of `cargo xtask bench`: no groups of its own.
    hypercontainer_benches::Groups::declare(&[]);
    if detect_kvm() != KvmKind::Hardware {
        eprintln!(
            "network bench skipped: needs hardware KVM (run it with cargo xtask bench network)"
        );
        return;
    }
    prepare_host();
    // `cargo bench` passes `--bench`; nothing else is taken.
    let pairs = env_num("HYPERCONTAINER_NET_PAIRS", 3).max(1);
    let mib = env_num("HYPERCONTAINER_BENCH_NET_MIB", 8).max(1);
    let requests = env_num("HYPERCONTAINER_BENCH_NET_REQUESTS", 20).max(1);
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for i in 0..pairs {
        let a = run_sandbox(mib, requests);
        let b = run_qemu(mib, requests);
        println!(
            "pair {i}: passt {:.1} MiB/s, {:?}/request; QEMU slirp {:.1} MiB/s, {:?}/request",
            a.0, a.1, b.0, b.1
        );
        ours.push(a);
        theirs.push(b);
    }
    let (tp_a, tp_b) = (
        median(ours.iter().map(|r| r.0).collect()),
        median(theirs.iter().map(|r| r.0).collect()),
    );
    let (lat_a, lat_b) = (
        median(ours.iter().map(|r| r.1).collect()),
        median(theirs.iter().map(|r| r.1).collect()),
    );
    println!(
        "network/guest_to_host_tcp: sandbox (passt) {tp_a:.1} MiB/s, QEMU slirp {tp_b:.1} MiB/s, \
         ratio {:.2}x",
        tp_a / tp_b
    );
    println!(
        "network/published_port_http_request: sandbox (passt) {lat_a:?}, QEMU slirp {lat_b:?}, \
         ratio {:.2}x (below 1 is faster)",
        lat_a.as_secs_f64() / lat_b.as_secs_f64()
    );
}
