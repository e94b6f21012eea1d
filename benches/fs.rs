//! File-sharing benchmarks: this VMM's in-process virtio-fs device against
//! QEMU microvm with the C virtiofsd (vhost-user-fs) and with virtio-9p,
//! on the same host directory, guest kernel and initramfs (needs hardware
//! KVM, e.g. inside the emulated test host: `cargo xtask bench fs`).
//!
//! The bench prepares one fresh directory per run holding `read.bin`
//! (256 MiB of non-zero data) and `files.tar` (3,000 files of 64 B to
//! 4 KiB in 30 directories). Every boot mounts it at `/mnt` (tag `hcfs`)
//! and its `/init` runs, once each, into a directory of its own:
//!
//! - `seq_write_256MiB`: `dd` of 256 MiB of zeros, 1 MiB blocks, then
//!   `fsync` (`conv=fsync`);
//! - `seq_read_256MiB`: `dd` of `read.bin` to `/dev/null`, 1 MiB blocks,
//!   after dropping the guest's caches (a file this guest never read);
//! - `untar_3000`: busybox `tar -x` of `files.tar`, then `sync`;
//! - `find_3000`: `find` over the unpacked tree, caches dropped first;
//! - `stat_3000`: busybox `stat` of every path `find` listed (through
//!   `xargs`), caches dropped first.
//!
//! Timing: each workload is framed by `HCSTART NAME` / `HCEND NAME RC`
//! console lines, and its time is the host's monotonic clock between the
//! arrivals of the two lines (as `devices.rs` does: the guests' own clocks
//! are not trusted under nested emulation). A console line costs well
//! under a millisecond; the workloads take seconds.
//!
//! Setups, one boot each per round, rounds alternating (ours, virtiofsd,
//! 9p) so that load from elsewhere on the machine hits all alike:
//!
//! - `ours`: [`VmBuilder::fs`] with the default [`ShareConfig`] (1 s entry
//!   and attribute timeouts, no page cache kept across opens).
//! - `virtiofsd`: Debian's C virtiofsd (`qemu-system-common`), `-o
//!   cache=auto` (1 s timeouts, page cache kept while the file is
//!   unchanged) and `-o sandbox=chroot` (the emulated host's root is a RAM
//!   filesystem, where its default `pivot_root` fails), behind
//!   `vhost-user-fs-device` with guest memory in a shared memfd.
//! - `9p`: `virtio-9p-device` on `-fsdev local,security_model=passthrough`,
//!   mounted with `trans=virtio,version=9p2000.L,msize=512000` (no cache).
//! - `erofs` (reference, read side only): the same `read.bin` and tree in
//!   an EROFS image (`mkfs.erofs`) on this VMM's virtio-blk.
//!
//! Each comparison ends with one summary line: medians, the ratio of
//! ours to the peer (below 1: ours is faster) and the sample counts.
//! `HYPERCONTAINER_BENCH_FS_ROUNDS=N` sets the rounds (default 4), after
//! one unmeasured boot of each setup.
//!
//! The guest kernel: the product kernel has no 9p, so `cargo xtask bench
//! fs` builds a variant, the repository's `guest/kernel/config.fragment`
//! plus `guest/kernel/bench-9p.fragment` (`CONFIG_NET_9P_VIRTIO`,
//! `CONFIG_9P_FS`), under its own cache key, and passes it as
//! `HYPERCONTAINER_BENCH_FS_KERNEL`. Every setup, ours and EROFS
//! included, boots that one kernel, so the comparison is between devices
//! and servers, not kernels.
//!
//! Inputs: `HYPERCONTAINER_BENCH_FS_KERNEL` (else `HYPERCONTAINER_KERNEL`,
//! else the cached default kernel, where the 9p peer fails to mount),
//! `HYPERCONTAINER_BUSYBOX` (default `/bin/busybox`, must be static),
//! `HYPERCONTAINER_QEMU` (the QEMU peers; skipped without it), virtiofsd
//! at [`VIRTIOFSD`] and `mkfs.erofs` on `PATH` (each skipped without).
//! The VMM holds an fd per guest inode: the soft `RLIMIT_NOFILE` is raised
//! to the hard one.

#[path = "common/qemu.rs"]
mod qemu;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use hypercontainer::host::{detect_kvm, KvmKind};
use hypercontainer::initramfs::{CpioWriter, Metadata};
use hypercontainer::vmm::{BlockConfig, ConsoleSink, VmBuilder};
use hypercontainer_virtio::fs::ShareConfig;

const CMDLINE: &str = "console=ttyS0 panic=-1 quiet";
const MEMORY_MIB: u64 = 256;
const FILE_MIB: u64 = 256;
const DIRS: usize = 30;
const FILES_PER_DIR: usize = 100;
const TAG: &str = "hcfs";
const TIMEOUT: Duration = Duration::from_secs(600);
/// The guest kernel every setup boots: the product fragment plus 9p
/// (`guest/kernel/bench-9p.fragment`), built and set by `cargo xtask bench fs`.
const FS_KERNEL_ENV: &str = "HYPERCONTAINER_BENCH_FS_KERNEL";
/// Where Debian's `qemu-system-common` installs the C virtiofsd.
const VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";

/// The workloads, in the order the init runs them.
const WORKLOADS: &[&str] = &[
    "seq_write_256MiB",
    "seq_read_256MiB",
    "untar_3000",
    "find_3000",
    "stat_3000",
];
/// What the EROFS reference runs (it is read-only).
const READ_ONLY_WORKLOADS: &[&str] = &["seq_read_256MiB", "find_3000", "stat_3000"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setup {
    Ours,
    Virtiofsd,
    NineP,
    Erofs,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::Ours => "ours",
            Setup::Virtiofsd => "virtiofsd",
            Setup::NineP => "9p",
            Setup::Erofs => "erofs",
        }
    }

    /// The init's `hcfs=` value: how it mounts `/mnt`.
    fn mount(self) -> &'static str {
        match self {
            Setup::Ours | Setup::Virtiofsd => "virtiofs",
            Setup::NineP => "9p",
            Setup::Erofs => "erofs",
        }
    }
}

static SAMPLES: Mutex<Vec<(Setup, String, Duration)>> = Mutex::new(Vec::new());

const INIT: &str = r#"#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t devtmpfs dev /dev
mkdir -p /mnt
case "$hcfs" in
virtiofs) mount -t virtiofs TAG /mnt ;;
9p) mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 TAG /mnt ;;
erofs) mount -t erofs -o ro /dev/vda /mnt ;;
esac || { echo "HCFAIL mount"; reboot -f; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
w=/mnt/out-$hcrun
t=/mnt/tree
if [ "$hcfs" != erofs ]; then
  mkdir $w || { echo "HCFAIL mkdir"; reboot -f; }
  t=$w/tree
  drop
  echo "HCSTART seq_write_256MiB"
  dd if=/dev/zero of=$w/big bs=1M count=FILE_MIB conv=fsync 2>/dev/null
  echo "HCEND seq_write_256MiB $?"
  rm $w/big
fi
drop
echo "HCSTART seq_read_256MiB"
dd if=/mnt/read.bin of=/dev/null bs=1M 2>/dev/null
echo "HCEND seq_read_256MiB $?"
if [ "$hcfs" != erofs ]; then
  drop
  echo "HCSTART untar_3000"
  tar -xf /mnt/files.tar -C $w && sync
  echo "HCEND untar_3000 $?"
fi
drop
echo "HCSTART find_3000"
find $t > /tmp/paths
echo "HCEND find_3000 $?"
echo "HCCOUNT $(wc -l < /tmp/paths)"
drop
echo "HCSTART stat_3000"
xargs stat -c '%s %Y' < /tmp/paths > /dev/null
echo "HCEND stat_3000 $?"
echo HCBENCH-DONE
reboot -f
"#;

struct Inputs {
    kernel: PathBuf,
    initramfs: Vec<u8>,
    initramfs_path: PathBuf,
    qemu: Option<PathBuf>,
    virtiofsd: Option<PathBuf>,
    /// The shared directory of this run.
    dir: tempfile::TempDir,
    /// The EROFS image of `read.bin` and the tree, when `mkfs.erofs` exists.
    erofs: Option<PathBuf>,
}

/// Writes `read.bin` and `files.tar` into `dir`; also unpacks the tar
/// into `tree_root` (the EROFS image's tree) when given.
fn prepare(dir: &Path, tree_root: Option<&Path>) {
    let mut f = std::fs::File::create(dir.join("read.bin")).unwrap();
    let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8 | 1).collect();
    for _ in 0..FILE_MIB {
        f.write_all(&chunk).unwrap();
    }
    f.sync_all().unwrap();
    let tar_path = dir.join("files.tar");
    let mut tar = tar::Builder::new(std::io::BufWriter::new(
        std::fs::File::create(&tar_path).unwrap(),
    ));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = |path: &str, size: u64, dir: bool| {
        let mut h = tar::Header::new_gnu();
        h.set_path(path).unwrap();
        h.set_size(size);
        h.set_mode(if dir { 0o755 } else { 0o644 });
        h.set_entry_type(if dir {
            tar::EntryType::Directory
        } else {
            tar::EntryType::Regular
        });
        h.set_mtime(now);
        h.set_cksum();
        h
    };
    tar.append(&header("tree/", 0, true), std::io::empty())
        .unwrap();
    for d in 0..DIRS {
        tar.append(
            &header(&format!("tree/d{d:02}/"), 0, true),
            std::io::empty(),
        )
        .unwrap();
        for i in 0..FILES_PER_DIR {
            let n = d * FILES_PER_DIR + i;
            let size = 64 + (n * 977) % 4033;
            let data: Vec<u8> = (0..size).map(|b| (b + n) as u8).collect();
            tar.append(
                &header(&format!("tree/d{d:02}/f{n:04}"), size as u64, false),
                &data[..],
            )
            .unwrap();
        }
    }
    tar.into_inner().unwrap().flush().unwrap();
    if let Some(root) = tree_root {
        tar::Archive::new(std::fs::File::open(&tar_path).unwrap())
            .unpack(root)
            .unwrap();
        std::fs::hard_link(dir.join("read.bin"), root.join("read.bin")).unwrap();
    }
}

/// Makes an EROFS image of `tree` with `mkfs.erofs`, if it is installed.
fn erofs_image(tree: &Path, image: &Path) -> Option<PathBuf> {
    let out = Command::new("mkfs.erofs")
        .arg(image)
        .arg(tree)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    match out {
        Ok(o) if o.status.success() => Some(image.to_path_buf()),
        Ok(o) => {
            eprintln!(
                "erofs reference skipped: mkfs.erofs failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            None
        }
        Err(e) => {
            eprintln!("erofs reference skipped: cannot run mkfs.erofs: {e}");
            None
        }
    }
}

/// Raises the soft fd limit to the hard one: the device holds an fd per
/// inode the guest knows (3,000 after the untar).
fn raise_fd_limit() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

fn inputs() -> Inputs {
    let kernel = std::env::var_os(FS_KERNEL_ENV)
        .or_else(|| std::env::var_os("HYPERCONTAINER_KERNEL"))
        .map(PathBuf::from)
        .map_or_else(hypercontainer::kernel::default_kernel, Ok)
        .expect("a guest kernel (HYPERCONTAINER_KERNEL or `cargo xtask kernel`)");
    let busybox = std::env::var_os("HYPERCONTAINER_BUSYBOX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/bin/busybox"));
    let init = INIT
        .replace("TAG", TAG)
        .replace("FILE_MIB", &FILE_MIB.to_string());
    let mut cpio = CpioWriter::new(Vec::new());
    cpio.char_device("/dev/console", Metadata::new(0o600), 5, 1)
        .unwrap()
        .dir("/proc", Metadata::new(0o755))
        .unwrap()
        .dir("/tmp", Metadata::new(0o1777))
        .unwrap()
        .file_from_path("/bin/busybox", Metadata::new(0o755), &busybox)
        .unwrap()
        .symlink("/bin/sh", "busybox", Metadata::new(0o777))
        .unwrap()
        .file("/init", Metadata::new(0o755), init.as_bytes())
        .unwrap();
    let initramfs = cpio.finish().unwrap();
    let dir = tempfile::Builder::new()
        .prefix("hc-fs-bench-")
        .tempdir()
        .unwrap();
    let initramfs_path = dir.path().join("init.cpio");
    std::fs::write(&initramfs_path, &initramfs).unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir(&share).unwrap();
    let tree = dir.path().join("erofs-tree");
    std::fs::create_dir(&tree).unwrap();
    prepare(&share, Some(&tree));
    let erofs = erofs_image(&tree, &dir.path().join("tree.erofs"));
    let _ = std::fs::remove_dir_all(&tree);
    let virtiofsd = Some(PathBuf::from(VIRTIOFSD)).filter(|p| p.is_file());
    if virtiofsd.is_none() {
        eprintln!("virtiofsd peer skipped: {VIRTIOFSD} is missing (qemu-system-common)");
    }
    Inputs {
        kernel,
        initramfs,
        initramfs_path,
        qemu: std::env::var_os("HYPERCONTAINER_QEMU").map(PathBuf::from),
        virtiofsd,
        dir,
        erofs,
    }
}

impl Inputs {
    fn share(&self) -> PathBuf {
        self.dir.path().join("share")
    }
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

fn text(lines: &Lines) -> String {
    lines
        .iter()
        .map(|(l, _)| l.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The workloads' times (host clock between `HCSTART` and `HCEND`);
/// panics when the guest did not finish or a workload failed.
fn workload_times(setup: Setup, lines: &Lines) -> Vec<(String, Duration)> {
    let console = text(lines);
    assert!(
        console.contains("HCBENCH-DONE") && !console.contains("HCFAIL"),
        "{}: the guest did not finish; console:\n{console}",
        setup.name()
    );
    let entries = DIRS * FILES_PER_DIR + DIRS + 1;
    assert!(
        console.contains(&format!("HCCOUNT {entries}")),
        "{}: find did not list {entries} paths; console:\n{console}",
        setup.name()
    );
    let mut out = Vec::new();
    let mut start: Option<(&str, Instant)> = None;
    for (line, at) in lines {
        if let Some(name) = line.strip_prefix("HCSTART ") {
            start = Some((name, *at));
        } else if let Some(rest) = line.strip_prefix("HCEND ") {
            let (name, rc) = rest.split_once(' ').unwrap_or((rest, "?"));
            assert_eq!(
                rc,
                "0",
                "{}: {name} failed; console:\n{console}",
                setup.name()
            );
            if let Some((s, began)) = start.take() {
                assert_eq!(s, name, "console:\n{console}");
                out.push((name.to_string(), *at - began));
            }
        }
    }
    let want = if setup == Setup::Erofs {
        READ_ONLY_WORKLOADS
    } else {
        WORKLOADS
    };
    let got: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(got, want, "console:\n{console}");
    out
}

fn cmdline(setup: Setup, run: u32) -> String {
    format!("{CMDLINE} hcfs={} hcrun={run}", setup.mount())
}

/// Boots this VMM on the share (or the EROFS disk) and runs the workloads.
fn vmm_run(i: &Inputs, setup: Setup, run: u32) -> Vec<(String, Duration)> {
    let (tx, rx) = mpsc::channel();
    let mut b = VmBuilder::new()
        .kernel(&i.kernel)
        .initramfs_bytes(i.initramfs.clone())
        .memory_mib(MEMORY_MIB)
        .cmdline(format!("{} reboot=k", cmdline(setup, run)))
        .console(ClockSink {
            clock: LineClock::default(),
            done: tx,
        });
    b = match setup {
        Setup::Erofs => b.block(BlockConfig::new(i.erofs.as_ref().unwrap()).read_only(true)),
        _ => b.fs(ShareConfig::new(i.share(), TAG)),
    };
    let mut vm = b.build().expect("build");
    let outcome = vm.wait_timeout(TIMEOUT);
    drop(vm);
    let lines = rx.recv().expect("the console sink hands over its lines");
    assert!(
        matches!(outcome, Some(Ok(_))),
        "the guest did not end cleanly: {outcome:?}; console:\n{}",
        text(&lines)
    );
    workload_times(setup, &lines)
}

/// Kills and reaps a child when dropped.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts virtiofsd on the share; returns it once its socket exists.
fn start_virtiofsd(i: &Inputs, virtiofsd: &Path, socket: &Path) -> Reap {
    let _ = std::fs::remove_file(socket);
    let child = Command::new(virtiofsd)
        .arg(format!("--socket-path={}", socket.display()))
        .arg("-o")
        .arg(format!("source={}", i.share().display()))
        .args(["-o", "cache=auto", "-o", "sandbox=chroot"])
        .args(["-o", "log_level=err"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start virtiofsd");
    let mut child = Reap(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("virtiofsd exited at start: {status}");
        }
        assert!(Instant::now() < deadline, "virtiofsd made no socket");
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

/// Boots QEMU microvm with the virtiofsd or 9p peer on the share and runs
/// the workloads.
fn qemu_run(i: &Inputs, qemu: &Path, setup: Setup, run: u32) -> Vec<(String, Duration)> {
    let mut cmd = qemu::microvm(
        qemu,
        MEMORY_MIB,
        &i.kernel,
        &i.initramfs_path,
        &format!("{} reboot=t", cmdline(setup, run)),
    );
    cmd.args(["-serial", "stdio"]);
    let mut _daemon = None;
    match setup {
        Setup::Virtiofsd => {
            let socket = i.dir.path().join("virtiofsd.sock");
            _daemon = Some(start_virtiofsd(i, i.virtiofsd.as_ref().unwrap(), &socket));
            cmd.arg("-object")
                .arg(format!(
                    "memory-backend-memfd,id=hcmem,size={MEMORY_MIB}M,share=on"
                ))
                .args(["-machine", "memory-backend=hcmem"])
                .arg("-chardev")
                .arg(format!("socket,id=hcfs,path={}", socket.display()))
                .arg("-device")
                .arg(format!(
                    "vhost-user-fs-device,chardev=hcfs,tag={TAG},queue-size=1024"
                ));
        }
        Setup::NineP => {
            cmd.arg("-fsdev")
                .arg(format!(
                    "local,id=hcfs,path={},security_model=passthrough",
                    i.share().display()
                ))
                .arg("-device")
                .arg(format!("virtio-9p-device,fsdev=hcfs,mount_tag={TAG}"));
        }
        Setup::Ours | Setup::Erofs => unreachable!("not a QEMU setup"),
    }
    let mut child = Reap(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run QEMU"),
    );
    let mut out = child.0.stdout.take().unwrap();
    let mut clock = LineClock::default();
    let mut buf = [0u8; 4096];
    loop {
        match out.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => clock.feed(&buf[..n]),
        }
    }
    let _ = child.0.wait();
    workload_times(setup, &clock.lines)
}

/// One boot of `setup`; `run` names its output directory, removed after.
fn run_once(i: &Inputs, setup: Setup, run: u32) -> Vec<(String, Duration)> {
    let times = match setup {
        Setup::Ours | Setup::Erofs => vmm_run(i, setup, run),
        Setup::Virtiofsd | Setup::NineP => qemu_run(i, i.qemu.as_ref().unwrap(), setup, run),
    };
    let _ = std::fs::remove_dir_all(i.share().join(format!("out-{run}")));
    times
}

fn benches(_c: &mut Criterion) {
    if detect_kvm() != KvmKind::Hardware {
        eprintln!(
            "this host's KVM cannot boot Linux: nothing to measure (run `cargo xtask bench fs`)"
        );
        return;
    }
    raise_fd_limit();
    let i = inputs();
    let mut setups = vec![Setup::Ours];
    match &i.qemu {
        Some(_) => {
            if i.virtiofsd.is_some() {
                setups.push(Setup::Virtiofsd);
            }
            setups.push(Setup::NineP);
        }
        None => eprintln!("QEMU peers skipped: set HYPERCONTAINER_QEMU"),
    }
    if i.erofs.is_some() {
        setups.push(Setup::Erofs);
    }
    let rounds: u32 = std::env::var("HYPERCONTAINER_BENCH_FS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let mut run = 0;
    // One unmeasured boot each: the first run in a fresh host, and the
    // first reads of the share's files, are not representative.
    for &s in &setups {
        run += 1;
        run_once(&i, s, run);
    }
    for round in 0..rounds {
        for &s in &setups {
            run += 1;
            let started = Instant::now();
            let times = run_once(&i, s, run);
            eprintln!(
                "round {}: {} {:.1}s: {}",
                round + 1,
                s.name(),
                started.elapsed().as_secs_f64(),
                times
                    .iter()
                    .map(|(n, d)| format!("{n} {:.3}s", d.as_secs_f64()))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let mut samples = SAMPLES.lock().unwrap();
            samples.extend(times.into_iter().map(|(n, d)| (s, n, d)));
        }
    }
}

fn median(setup: Setup, work: &str) -> Option<(Duration, usize)> {
    let mut v: Vec<Duration> = SAMPLES
        .lock()
        .unwrap()
        .iter()
        .filter(|(s, n, _)| *s == setup && n == work)
        .map(|(_, _, d)| *d)
        .collect();
    if v.is_empty() {
        return None;
    }
    v.sort();
    Some((v[v.len() / 2], v.len()))
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn summary() {
    for work in WORKLOADS {
        let Some((ours, n_ours)) = median(Setup::Ours, work) else {
            continue;
        };
        for peer in [Setup::Virtiofsd, Setup::NineP, Setup::Erofs] {
            if let Some((theirs, n_theirs)) = median(peer, work) {
                println!(
                    "fs/{work}: ours {}, {} {}, ratio {:.2} (n={n_ours}/{n_theirs})",
                    secs(ours),
                    peer.name(),
                    secs(theirs),
                    ours.as_secs_f64() / theirs.as_secs_f64()
                );
            }
        }
    }
    for (work, mib) in [
        ("seq_write_256MiB", FILE_MIB),
        ("seq_read_256MiB", FILE_MIB),
    ] {
        let rates: Vec<String> = [Setup::Ours, Setup::Virtiofsd, Setup::NineP, Setup::Erofs]
            .iter()
            .filter_map(|&s| {
                median(s, work)
                    .map(|(d, _)| format!("{} {:.0} MiB/s", s.name(), mib as f64 / d.as_secs_f64()))
            })
            .collect();
        if !rates.is_empty() {
            println!("fs/{work} throughput: {}", rates.join(", "));
        }
    }
}

criterion_group!(fs_benches, benches);

fn main() {
    fs_benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
