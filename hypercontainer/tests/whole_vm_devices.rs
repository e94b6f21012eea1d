//! Whole-VM device tests: a real guest kernel drives the VMM's virtio-mmio
//! devices (block, vsock, rng, console, net) through the device manager, in
//! one guest boot (boots are slow in the emulated KVM host).
//!
//! They need hardware KVM (directly or nested) and are run by `cargo xtask
//! test` / `cargo xtask whole-vm`, which provide:
//!
//! - `HYPERCONTAINER_KERNEL`: the guest's PVH `vmlinux`;
//! - `HYPERCONTAINER_BUSYBOX`: a static busybox (the guest's `/init` script);
//! - `HYPERCONTAINER_VSOCK_ECHO`: the static guest helper built from
//!   `tests/guest/vsock_echo.c` (busybox has no vsock tool, nor a TCP
//!   client that checks its echo);
//! - `/dev/net/tun` (the emulated host loads `tun`) and root, for the net
//!   device's tap, configured with busybox's `ip`;
//! - `mke2fs` and `debugfs` (e2fsprogs) on `PATH`, to make the guest's ext4
//!   disks and to read them after the VM ended.
//!
//! The tests that are not ignored run raw code instead of a kernel: they
//! need a `/dev/kvm` but no guest kernel, so they run on any KVM host (PVM
//! included).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hypercontainer::host::{detect_kvm, KvmKind};
use hypercontainer::initramfs::{CpioWriter, Metadata};
use hypercontainer::vmm::devices::DeviceKind;
use hypercontainer::vmm::{
    BlockConfig, BusDevice, Error, ExitReason, NetConfig, RawCode, RawMode, VmBuilder,
};

/// Guest port the guest's echo server listens on.
const GUEST_PORT: u32 = 5000;
/// Host port the guest's echo client connects to.
const HOST_PORT: u32 = 6000;
/// Bytes sent through each echo.
const ECHO_BYTES: u64 = 4 << 20;
const GUEST_CID: u64 = 3;
const TIMEOUT: Duration = Duration::from_secs(600);
/// The tap's (host) and the guest's addresses on the test network.
const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// Guest TCP port of the guest's echo server, host port of the host's.
const GUEST_TCP_PORT: u16 = 7000;
const HOST_TCP_PORT: u16 = 7001;
/// Bytes sent through each TCP echo.
const NET_ECHO_BYTES: u64 = 2 << 20;
const GUEST_MAC: [u8; 6] = [0x02, 0x48, 0x43, 0x00, 0x00, 0x01];

fn env_path(name: &str) -> PathBuf {
    let p = std::env::var_os(name)
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{name} must name a file (cargo xtask test sets it)"));
    assert!(p.is_file(), "{name}={} does not exist", p.display());
    p
}

/// The byte stream the guest helper generates and checks (xorshift32 of the
/// word index, little-endian bytes).
fn pattern_byte(i: u64) -> u8 {
    let mut x = ((i / 4) as u32)
        .wrapping_mul(2_654_435_761)
        .wrapping_add(0x9e37_79b9);
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    (x >> (8 * (i % 4))) as u8
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An ext4 image of `mib` MiB holding the files of `dir`.
fn ext4_image(image: &Path, dir: &Path, mib: u64) {
    std::fs::File::create(image)
        .unwrap()
        .set_len(mib << 20)
        .unwrap();
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(dir)
        .arg(image));
}

/// A file of an ext4 image, read with debugfs (no mount needed).
fn ext4_cat(image: &Path, file: &str) -> String {
    run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {file}"))
        .arg(image))
}

fn initramfs(init: &str) -> Vec<u8> {
    let busybox = env_path("HYPERCONTAINER_BUSYBOX");
    let echo = env_path("HYPERCONTAINER_VSOCK_ECHO");
    let mut cpio = CpioWriter::new(Vec::new());
    cpio.char_device("/dev/console", Metadata::new(0o600), 5, 1)
        .unwrap()
        .dir("/proc", Metadata::new(0o755))
        .unwrap()
        .dir("/sys", Metadata::new(0o755))
        .unwrap()
        .dir("/mnt", Metadata::new(0o755))
        .unwrap()
        .file_from_path("/bin/busybox", Metadata::new(0o755), &busybox)
        .unwrap()
        .symlink("/bin/sh", "busybox", Metadata::new(0o777))
        .unwrap()
        .file_from_path("/bin/vsock-echo", Metadata::new(0o755), &echo)
        .unwrap()
        .file("/init", Metadata::new(0o755), init.as_bytes())
        .unwrap();
    cpio.finish().unwrap()
}

/// Connects to the guest's echo server (retrying until it listens), sends
/// the pattern and checks the echo. Returns the bytes checked and the time
/// the echo took.
fn host_to_guest_echo(
    host: hypercontainer::vmm::devices::VsockHost,
) -> Result<(u64, Duration), String> {
    let deadline = Instant::now() + TIMEOUT;
    let stream = loop {
        match host.connect(GUEST_PORT, Duration::from_secs(10)) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(format!("connect to guest port {GUEST_PORT}: {e}")),
        }
    };
    let start = Instant::now();
    echo_check(stream, ECHO_BYTES).map(|n| (n, start.elapsed()))
}

/// A connected byte stream the echo helpers work over (vsock streams are
/// Unix sockets on the host side; the net test uses TCP).
trait EchoStream: Read + Write + Send + Sized + 'static {
    fn duplicate(&self) -> std::io::Result<Self>;
    fn shutdown_write(&self) -> std::io::Result<()>;
    fn read_timeout(&self, t: Duration) -> std::io::Result<()>;
}

/// The std socket streams have the same inherent methods.
macro_rules! echo_stream {
    ($($t:ty),*) => {$(
        impl EchoStream for $t {
            fn duplicate(&self) -> std::io::Result<Self> {
                self.try_clone()
            }
            fn shutdown_write(&self) -> std::io::Result<()> {
                self.shutdown(std::net::Shutdown::Write)
            }
            fn read_timeout(&self, t: Duration) -> std::io::Result<()> {
                self.set_read_timeout(Some(t))
            }
        }
    )*};
}
echo_stream!(UnixStream, TcpStream);

/// Sends `bytes` of the pattern on one thread, reads and compares the echo
/// on this one.
fn echo_check<S: EchoStream>(stream: S, bytes: u64) -> Result<u64, String> {
    stream
        .read_timeout(Duration::from_secs(120))
        .map_err(|e| e.to_string())?;
    let mut writer = stream.duplicate().map_err(|e| e.to_string())?;
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        let mut sent = 0u64;
        let mut buf = vec![0u8; 64 << 10];
        while sent < bytes {
            let n = (bytes - sent).min(buf.len() as u64) as usize;
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = pattern_byte(sent + i as u64);
            }
            writer.write_all(&buf[..n])?;
            sent += n as u64;
        }
        writer.shutdown_write()
    });
    let mut reader = stream;
    let mut received = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    while received < bytes {
        let n = reader
            .read(&mut buf)
            .map_err(|e| format!("reading the echo after {received} bytes: {e}"))?;
        if n == 0 {
            return Err(format!("echo ended after {received} of {bytes} bytes"));
        }
        for (i, &b) in buf[..n].iter().enumerate() {
            let at = received + i as u64;
            if b != pattern_byte(at) {
                return Err(format!("echo byte {at} differs"));
            }
        }
        received += n as u64;
    }
    sender
        .join()
        .map_err(|_| "sender panicked".to_string())?
        .map_err(|e| format!("sending: {e}"))?;
    // The guest closes after our shutdown: nothing more arrives.
    match reader.read(&mut buf) {
        Ok(0) => Ok(received),
        Ok(n) => Err(format!("{n} bytes more than sent")),
        Err(e) => Err(format!("waiting for the end of the echo: {e}")),
    }
}

/// Accepts the guest's connection and echoes everything back until the
/// guest shuts down its side. Returns the bytes echoed.
fn guest_to_host_echo(
    listener: hypercontainer::vmm::devices::VsockListener,
) -> Result<u64, String> {
    let (stream, _port) = listener
        .accept(TIMEOUT)
        .map_err(|e| format!("accept on host port {HOST_PORT}: {e}"))?;
    echo_back(stream)
}

/// Echoes everything back until the peer shuts down its side. Returns the
/// bytes echoed.
fn echo_back<S: EchoStream>(mut stream: S) -> Result<u64, String> {
    stream
        .read_timeout(Duration::from_secs(120))
        .map_err(|e| e.to_string())?;
    let mut total = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = stream
            .read(&mut buf)
            .map_err(|e| format!("reading after {total} bytes: {e}"))?;
        if n == 0 {
            break;
        }
        stream
            .write_all(&buf[..n])
            .map_err(|e| format!("echoing after {total} bytes: {e}"))?;
        total += n as u64;
    }
    Ok(total)
}

/// Gives the host end of the tap its address and brings it up.
fn configure_tap(name: &str) {
    let busybox = env_path("HYPERCONTAINER_BUSYBOX");
    let cidr = format!("{HOST_IP}/24");
    run(Command::new(&busybox).args(["ip", "addr", "add", &cidr, "dev", name]));
    run(Command::new(&busybox).args(["ip", "link", "set", name, "up"]));
}

/// Host to guest over the net device: connects to the guest's TCP echo
/// server (retrying until it listens) and checks the echo.
fn tcp_host_to_guest_echo() -> Result<(u64, Duration), String> {
    let addr = SocketAddr::from((GUEST_IP, GUEST_TCP_PORT));
    let deadline = Instant::now() + TIMEOUT;
    let stream = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => return Err(format!("connect to {addr}: {e}")),
        }
    };
    let start = Instant::now();
    echo_check(stream, NET_ECHO_BYTES).map(|n| (n, start.elapsed()))
}

/// Guest to host over the net device: accepts the guest's connection on the
/// tap's address and echoes it back.
fn tcp_guest_to_host_echo(listener: TcpListener) -> Result<u64, String> {
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + TIMEOUT;
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => return Err(format!("accept on {HOST_IP}:{HOST_TCP_PORT}: {e}")),
        }
    };
    stream.set_nonblocking(false).map_err(|e| e.to_string())?;
    echo_back(stream)
}

/// Collects what a `Write` receives (the virtio console's output).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn line_value<'a>(console: &'a str, key: &str) -> Option<&'a str> {
    console
        .lines()
        .rev()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix(key))
}

#[test]
#[ignore = "whole-VM test: run by cargo xtask test"]
fn guest_uses_block_vsock_rng_console_and_net() {
    let dir = tempfile::tempdir().unwrap();
    let token = format!("token-{:x}", std::process::id() as u64 * 2_654_435_761);

    // Disk 0 (vda): read-write ext4 holding hello.txt.
    let rw_tree = dir.path().join("rw");
    std::fs::create_dir(&rw_tree).unwrap();
    std::fs::write(rw_tree.join("hello.txt"), format!("{token}\n")).unwrap();
    let rw_image = dir.path().join("rw.ext4");
    ext4_image(&rw_image, &rw_tree, 16);
    // Disk 1 (vdb): read-only ext4 holding ro.txt.
    let ro_tree = dir.path().join("ro");
    std::fs::create_dir(&ro_tree).unwrap();
    std::fs::write(ro_tree.join("ro.txt"), "read-only content\n").unwrap();
    let ro_image = dir.path().join("ro.ext4");
    ext4_image(&ro_image, &ro_tree, 8);
    let ro_before = std::fs::read(&ro_image).unwrap();

    let init = format!(
        r#"#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "serial-a=$(cat /sys/block/vda/serial)"
echo "serial-b=$(cat /sys/block/vdb/serial)"
echo "ro-flag=$(cat /sys/block/vdb/ro)"
mkdir -p /mnt/rw /mnt/ro
mount -t ext4 /dev/vda /mnt/rw; echo "mount-rw-rc=$?"
echo "rw-read=$(cat /mnt/rw/hello.txt)"
echo "guest-wrote-$(cat /mnt/rw/hello.txt)" > /mnt/rw/from-guest.txt; echo "write-rc=$?"
sync
umount /mnt/rw; echo "umount-rw-rc=$?"
mount -t ext4 -o ro /dev/vdb /mnt/ro; echo "mount-ro-rc=$?"
echo "ro-read=$(cat /mnt/ro/ro.txt)"
mount -o remount,rw /mnt/ro 2>/dev/null; echo "remount-rw-rc=$?"
umount /mnt/ro
dd if=/dev/zero of=/dev/vdb bs=4096 count=16 conv=fsync 2>/dev/null; echo "raw-write-ro-rc=$?"
echo "rng-current=$(cat /sys/class/misc/hw_random/rng_current)"
echo "hwrng-bytes=$(head -c 4096 /dev/hwrng | wc -c)"
echo "hwrng-distinct=$(head -c 4096 /dev/hwrng | od -An -v -tx1 | tr -s ' ' '\n' | sort -u | grep -c .)"
echo "virtio console says hi" > /dev/hvc0; echo "hvc-rc=$?"
vsock-echo serve {GUEST_PORT}; echo "serve-rc=$?"
vsock-echo client 2 {HOST_PORT} {ECHO_BYTES}; echo "client-rc=$?"
ip link set eth0 up && ip addr add {GUEST_IP}/24 dev eth0; echo "net-up-rc=$?"
echo "net-mac=$(cat /sys/class/net/eth0/address)"
n=0; until ping -c 1 -W 1 {HOST_IP} >/dev/null 2>&1 || [ $n -ge 60 ]; do n=$((n+1)); done
ping -c 1 -W 5 {HOST_IP} >/dev/null 2>&1; echo "ping-rc=$?"
vsock-echo tcp-serve {GUEST_TCP_PORT}; echo "tcp-serve-rc=$?"
vsock-echo tcp-client {HOST_IP} {HOST_TCP_PORT} {NET_ECHO_BYTES}; echo "tcp-client-rc=$?"
echo "eth0-counters=$(grep eth0: /proc/net/dev | cut -d: -f2)"
echo "init-done"
reboot -f
"#
    );

    // Unique per process: tap names are global to the host.
    let tap = format!("hct{}", std::process::id());
    let (tx, rx) = mpsc::channel();
    let hvc = Captured::default();
    let mut vm = VmBuilder::new()
        .kernel(env_path("HYPERCONTAINER_KERNEL"))
        .initramfs_bytes(initramfs(&init))
        .memory_mib(256)
        .append_cmdline("quiet")
        .console_channel(tx)
        .block(BlockConfig::new(&rw_image).serial("rw-disk"))
        .block(BlockConfig::new(&ro_image).read_only(true).serial("layer0"))
        .vsock(GUEST_CID)
        .rng()
        .virtio_console(hvc.clone())
        .net(NetConfig::tap(&tap).mac(GUEST_MAC))
        .build()
        .expect("build the VM");
    let kinds: Vec<DeviceKind> = vm.devices().info().iter().map(|d| d.kind).collect();
    assert_eq!(
        kinds,
        [
            DeviceKind::Block,
            DeviceKind::Block,
            DeviceKind::Vsock,
            DeviceKind::Rng,
            DeviceKind::Console,
            DeviceKind::Net
        ]
    );

    let host = vm.vsock().expect("the VM has a vsock device").clone();
    let listener = host.listen(HOST_PORT, 1).unwrap();
    let started = Instant::now();
    let h2g = std::thread::spawn(move || host_to_guest_echo(host));
    let g2h = std::thread::spawn(move || guest_to_host_echo(listener));
    configure_tap(&tap);
    let tcp_listener = TcpListener::bind((HOST_IP, HOST_TCP_PORT)).expect("listen on the tap");
    let tcp_h2g = std::thread::spawn(tcp_host_to_guest_echo);
    let tcp_g2h = std::thread::spawn(move || tcp_guest_to_host_echo(tcp_listener));

    let outcome = match vm.wait_timeout(TIMEOUT) {
        Some(o) => o,
        None => {
            vm.stop();
            panic!(
                "the guest did not finish in {TIMEOUT:?}; console tail:\n{}",
                vm.console_tail().join("\n")
            );
        }
    };
    let elapsed = started.elapsed();
    drop(vm);
    let console =
        String::from_utf8_lossy(&rx.try_iter().flatten().collect::<Vec<u8>>()).into_owned();
    eprintln!("guest console:\n{console}\n(VM ran {elapsed:.1?})");
    assert!(
        matches!(outcome, Ok(ExitReason::Reset)),
        "expected the guest to reset, got {outcome:?}"
    );
    let v = |key: &str| {
        line_value(&console, key)
            .unwrap_or_else(|| panic!("no '{key}' line on the console"))
            .to_string()
    };
    assert_eq!(v("init-done"), "");

    // Block: serials, read-write ext4, read-only disk.
    assert_eq!(v("serial-a="), "rw-disk");
    assert_eq!(v("serial-b="), "layer0");
    assert_eq!(v("ro-flag="), "1");
    assert_eq!(v("mount-rw-rc="), "0");
    assert_eq!(v("rw-read="), token);
    assert_eq!(v("write-rc="), "0");
    assert_eq!(v("umount-rw-rc="), "0");
    assert_eq!(
        ext4_cat(&rw_image, "/from-guest.txt").trim_end(),
        format!("guest-wrote-{token}"),
        "the host sees the guest's file after the VM ended"
    );
    assert_eq!(v("mount-ro-rc="), "0");
    assert_eq!(v("ro-read="), "read-only content");
    assert_ne!(
        v("remount-rw-rc="),
        "0",
        "a read-only disk was remounted rw"
    );
    assert_ne!(
        v("raw-write-ro-rc="),
        "0",
        "a raw write to the read-only disk succeeded"
    );
    assert!(
        std::fs::read(&ro_image).unwrap() == ro_before,
        "the read-only image changed"
    );

    // Rng.
    assert!(v("rng-current=").starts_with("virtio_rng"), "{console}");
    assert_eq!(v("hwrng-bytes="), "4096");
    let distinct: u32 = v("hwrng-distinct=").parse().unwrap();
    assert!(
        distinct > 200,
        "4 KiB of /dev/hwrng has only {distinct} distinct byte values"
    );

    // Console.
    assert_eq!(v("hvc-rc="), "0");
    let hvc = String::from_utf8_lossy(&hvc.0.lock().unwrap()).into_owned();
    assert!(
        hvc.contains("virtio console says hi"),
        "virtio console got {hvc:?}"
    );

    // Vsock, both directions.
    assert_eq!(v("serve-rc="), "0");
    assert_eq!(v("client-rc="), "0");
    assert_eq!(v("vsock-echo client ok "), ECHO_BYTES.to_string());
    check_echoes("vsock", h2g, g2h, ECHO_BYTES);

    // Net: the MAC, ICMP to the tap, TCP echo both ways.
    assert_eq!(v("net-up-rc="), "0");
    assert_eq!(v("net-mac="), "02:48:43:00:00:01");
    assert_eq!(v("ping-rc="), "0");
    assert_eq!(v("tcp-serve-rc="), "0");
    assert_eq!(v("tcp-client-rc="), "0");
    assert_eq!(v("tcp-echo client ok "), NET_ECHO_BYTES.to_string());
    check_echoes("net (TCP)", tcp_h2g, tcp_g2h, NET_ECHO_BYTES);
}

/// Joins the host's two echo threads of one transport, checks that both
/// carried `bytes`, and prints the host-to-guest throughput.
fn check_echoes(
    what: &str,
    host_to_guest: std::thread::JoinHandle<Result<(u64, Duration), String>>,
    guest_to_host: std::thread::JoinHandle<Result<u64, String>>,
    bytes: u64,
) {
    let (n, t) = host_to_guest
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("{what} host -> guest echo: {e}"));
    assert_eq!(n, bytes);
    let g = guest_to_host
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("{what} guest -> host echo: {e}"));
    assert_eq!(g, bytes);
    eprintln!(
        "{what} host->guest echo: {} MiB each way in {t:.2?} ({:.1} MiB/s)",
        bytes >> 20,
        (bytes >> 20) as f64 / t.as_secs_f64()
    );
}

/// Records what the raw-code guest writes to its port.
#[derive(Default)]
struct Port(Vec<Vec<u8>>);

impl BusDevice for Port {
    fn read(&mut self, _: u64, _: &mut [u8]) {}
    fn write(&mut self, _: u64, data: &[u8]) {
        self.0.push(data.to_vec());
    }
}

/// The raw-code tests count this process's event-loop threads: they run
/// one at a time.
static ONE_VM_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_vm_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_VM_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn device_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.trim() == hypercontainer::vmm::devices::EVENT_LOOP_THREAD)
        .count()
}

#[test]
fn devices_are_wired_into_the_mmio_bus_in_slot_order() {
    if detect_kvm() == KvmKind::Missing {
        eprintln!("skipping: no /dev/kvm on this host");
        return;
    }
    let _one = one_vm_at_a_time();
    let disk = tempfile::NamedTempFile::new().unwrap();
    disk.as_file().set_len(1 << 20).unwrap();
    // 32-bit flat code: read DeviceID of slots 0..3 and the magic of slot 0,
    // write each to port 0x510, then reset through the i8042.
    #[rustfmt::skip]
    let code = [
        0x66, 0xba, 0x10, 0x05,       // mov dx, 0x510
        0xa1, 0x08, 0x00, 0x00, 0xd0, // mov eax, [0xd0000008]
        0xef,                         // out dx, eax
        0xa1, 0x08, 0x10, 0x00, 0xd0, // mov eax, [0xd0001008]
        0xef,                         // out dx, eax
        0xa1, 0x08, 0x20, 0x00, 0xd0, // mov eax, [0xd0002008]
        0xef,                         // out dx, eax
        0xa1, 0x00, 0x00, 0x00, 0xd0, // mov eax, [0xd0000000]
        0xef,                         // out dx, eax
        0xb0, 0xfe,                   // mov al, 0xfe
        0xe6, 0x64,                   // out 0x64, al (reset)
        0xeb, 0xfe,                   // jmp $
    ];
    let port = Arc::new(Mutex::new(Port::default()));
    let mut vm = VmBuilder::new()
        .memory_mib(1)
        .raw_code(RawCode {
            mode: RawMode::Protected32,
            irqchip: true,
            ..RawCode::real(&code, 0x1000)
        })
        .pio_device(0x510, 4, port.clone())
        .block(BlockConfig::new(disk.path()).read_only(true))
        .vsock(GUEST_CID)
        .rng()
        .build()
        .unwrap();
    // The thread names itself once it runs.
    let deadline = Instant::now() + Duration::from_secs(5);
    while device_threads() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(device_threads(), 1, "one event-loop thread per VM");
    let outcome = vm.wait_timeout(Duration::from_secs(20));
    assert!(
        matches!(outcome, Some(Ok(ExitReason::Reset))),
        "unexpected outcome {outcome:?}"
    );
    // The loop was stopped and joined when the VM's outcome was collected.
    assert_eq!(device_threads(), 0);
    let writes = port.lock().unwrap().0.clone();
    assert_eq!(
        writes,
        [
            2u32.to_le_bytes().to_vec(),
            19u32.to_le_bytes().to_vec(),
            4u32.to_le_bytes().to_vec(),
            b"virt".to_vec(),
        ]
    );
}

#[test]
fn a_device_that_cannot_be_built_fails_the_build() {
    if detect_kvm() == KvmKind::Missing {
        eprintln!("skipping: no /dev/kvm on this host");
        return;
    }
    let _one = one_vm_at_a_time();
    let e = VmBuilder::new()
        .memory_mib(1)
        .raw_code(RawCode {
            irqchip: true,
            ..RawCode::real(&[0xf4], 0x1000)
        })
        .rng()
        .block(BlockConfig::new("/nonexistent/disk.img"))
        .build()
        .unwrap_err();
    match e {
        Error::Devices(hypercontainer::vmm::devices::Error::Block { index: 1, path, .. }) => {
            assert_eq!(path, "/nonexistent/disk.img")
        }
        other => panic!("unexpected error: {other}"),
    }
    // Validation happens before KVM is touched.
    let e = VmBuilder::new().vsock(2).build().unwrap_err();
    assert!(matches!(
        e,
        Error::Devices(hypercontainer::vmm::devices::Error::InvalidCid(2))
    ));
}

/// A device-loop subscriber whose handler panics when its eventfd fires.
struct Bomb {
    evt: vmm_sys_util::eventfd::EventFd,
}

impl event_manager::MutEventSubscriber for Bomb {
    fn init(&mut self, ops: &mut event_manager::EventOps) {
        ops.add(event_manager::Events::new(
            &self.evt,
            vmm_sys_util::epoll::EventSet::IN,
        ))
        .unwrap();
    }
    fn process(&mut self, _: event_manager::Events, _: &mut event_manager::EventOps) {
        panic!("device handler bug");
    }
}

#[test]
fn a_panicking_device_handler_ends_the_vm_with_an_error() {
    if detect_kvm() == KvmKind::Missing {
        eprintln!("skipping: no /dev/kvm on this host");
        return;
    }
    let _one = one_vm_at_a_time();
    let evt = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let mut vm = VmBuilder::new()
        .memory_mib(1)
        .raw_code(RawCode {
            irqchip: true,
            // jmp $
            ..RawCode::real(&[0xeb, 0xfe], 0x1000)
        })
        .rng()
        .device_loop_subscriber(Arc::new(Mutex::new(Bomb {
            evt: evt.try_clone().unwrap(),
        })))
        .build()
        .unwrap();
    assert!(vm.wait_timeout(Duration::from_millis(200)).is_none());
    evt.write(1).unwrap();
    match vm.wait_timeout(Duration::from_secs(20)) {
        Some(Err(Error::Devices(hypercontainer::vmm::devices::Error::EventLoopPanic {
            message,
        }))) => assert_eq!(message, "device handler bug"),
        other => panic!("unexpected outcome {other:?}"),
    }
    // The process goes on: another VM builds and runs.
    let mut again = VmBuilder::new()
        .memory_mib(1)
        .raw_code(RawCode {
            irqchip: true,
            // mov al, 0xfe; out 0x64, al
            ..RawCode::real(&[0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe], 0x1000)
        })
        .rng()
        .build()
        .unwrap();
    assert!(matches!(
        again.wait_timeout(Duration::from_secs(20)),
        Some(Ok(ExitReason::Reset))
    ));
}
