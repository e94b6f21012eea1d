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
//!   `xargs`), caches dropped first. The list reaches `xargs` through a
//!   pipe: busybox runs `stat` forked without exec, and a child exiting
//!   with buffered input would move the offset of a shared regular-file
//!   stdin under `xargs` (seen as paths missing bytes).
//!
//! Timing: each workload is framed by `HCSTART NAME` / `HCEND NAME RC`
//! console lines, and its time is the host's monotonic clock between the
//! arrivals of the two lines (as `devices.rs` does: the guests' own clocks
//! are not trusted under nested emulation). A console line costs well
//! under a millisecond; the workloads take seconds.
//!
//! Setups, one boot each per round, rounds alternating (ours, virtiofsd,
//! erofs, 9p) so that load from elsewhere on the machine hits all alike:
//!
//! - `ours`: [`VmBuilder::fs`] with the default [`ShareConfig`] (1 s entry
//!   and attribute timeouts, no page cache kept across opens).
//! - `virtiofsd`: Debian's C virtiofsd (`qemu-system-common`), `-o
//!   cache=auto` (1 s timeouts, page cache kept while the file is
//!   unchanged) and `-o sandbox=chroot` (the emulated host's root is a RAM
//!   filesystem, where its default `pivot_root` fails) and `-o xattr`,
//!   behind `vhost-user-fs-device` with guest memory in a shared memfd.
//!   `-o xattr` gives it the feature set ours has (ours serves the xattr
//!   calls). It matters to the untar: a guest whose server serves
//!   xattrs asks it for `security.capability` before each file's first
//!   write (the VFS's `file_remove_privs`), one more round trip per file;
//!   without xattrs virtiofsd answers `ENOSYS` once and the guest stops
//!   asking.
//! - `9p`: `virtio-9p-device` on `-fsdev local,security_model=passthrough`,
//!   mounted with `trans=virtio,version=9p2000.L,msize=131072` (no cache).
//!   With `msize=512000` the 9p guest's untar never finished (once past
//!   the 10-minute limit, twice taking its emulated host down with it);
//!   the cause was not pinned down (a suspect: the 9p client allocates
//!   msize-sized buffers per request, order-7 pages in a 256 MiB guest).
//! - `erofs` (reference, read side only): the same `read.bin` and tree in
//!   an EROFS image (`mkfs.erofs`) on this VMM's virtio-blk.
//!
//! Each comparison ends with one summary line: medians, the ratio of
//! ours to the peer (below 1: ours is faster), its inverse (how many
//! times as fast ours is) and the sample counts. Besides the workloads,
//! two sums per boot are compared the same way: `metadata_3000` (untar,
//! find and stat: the metadata job) and `walk_3000` (find and stat, what
//! the EROFS reference runs too).
//! `HYPERCONTAINER_BENCH_FS_PEERS` lists the peers to run beside ours
//! (default `virtiofsd,erofs,9p`: all of them, when installed).
//! `HYPERCONTAINER_BENCH_FS_ROUNDS=N` sets the rounds (default 4), after
//! one unmeasured boot of the first setup (the first VM in a fresh
//! emulated host is not representative; the share lives in the emulated
//! host's RAM, so no setup's reads warm anything for another).
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

mod guest;
#[path = "../common/qemu.rs"]
mod qemu;
mod runners;
mod tree;

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use hypercontainer::host::{detect_kvm, KvmKind};
use hypercontainer::initramfs::{CpioWriter, Metadata};

use guest::INIT;
use runners::{qemu_run, vmm_run};
use tree::{erofs_image, prepare};

pub const CMDLINE: &str = "console=ttyS0 panic=-1 quiet";
pub const MEMORY_MIB: u64 = 256;
pub const FILE_MIB: u64 = 256;
pub const DIRS: usize = 30;
pub const FILES_PER_DIR: usize = 100;
pub const TAG: &str = "hcfs";
/// Longest one boot may take (9p's untar alone takes minutes on a loaded
/// emulated host).
pub const TIMEOUT: Duration = Duration::from_secs(1800);
/// The guest kernel every setup boots: the product fragment plus 9p
/// (`guest/kernel/bench-9p.fragment`), built and set by `cargo xtask bench fs`.
pub const FS_KERNEL_ENV: &str = "HYPERCONTAINER_BENCH_FS_KERNEL";
/// Where Debian's `qemu-system-common` installs the C virtiofsd.
pub const VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";

/// The workloads, in the order the init runs them.
pub const WORKLOADS: &[&str] = &[
    "seq_write_256MiB",
    "seq_read_256MiB",
    "untar_3000",
    "find_3000",
    "stat_3000",
];
/// What the EROFS reference runs (it is read-only).
pub const READ_ONLY_WORKLOADS: &[&str] = &["seq_read_256MiB", "find_3000", "stat_3000"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setup {
    Ours,
    Virtiofsd,
    NineP,
    Erofs,
}

impl Setup {
    pub fn name(self) -> &'static str {
        match self {
            Setup::Ours => "ours",
            Setup::Virtiofsd => "virtiofsd",
            Setup::NineP => "9p",
            Setup::Erofs => "erofs",
        }
    }

    /// The init's `hcfs=` value: how it mounts `/mnt`.
    pub fn mount(self) -> &'static str {
        match self {
            Setup::Ours | Setup::Virtiofsd => "virtiofs",
            Setup::NineP => "9p",
            Setup::Erofs => "erofs",
        }
    }
}

pub static SAMPLES: Mutex<Vec<(Setup, String, Duration)>> = Mutex::new(Vec::new());

pub struct Inputs {
    pub kernel: PathBuf,
    pub initramfs: Vec<u8>,
    pub initramfs_path: PathBuf,
    pub qemu: Option<PathBuf>,
    pub virtiofsd: Option<PathBuf>,
    /// The shared directory of this run.
    pub dir: tempfile::TempDir,
    /// The EROFS image of `read.bin` and the tree, when `mkfs.erofs` exists.
    pub erofs: Option<PathBuf>,
}

/// Raises the soft fd limit to the hard one: the device holds an fd per
/// inode the guest knows (3,000 after the untar).
fn raise_fd_limit() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0 && r.rlim_cur < r.rlim_max {
        r.rlim_cur = r.rlim_max;
        // SAFETY: setrlimit only reads the struct passed.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) };
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
    pub fn share(&self) -> PathBuf {
        self.dir.path().join("share")
    }
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
    // 9p last in each round: it is the slowest, and the setup during
    // which emulated hosts have locked up.
    let mut setups = vec![Setup::Ours];
    let qemu = i.qemu.is_some();
    if !qemu {
        eprintln!("QEMU peers skipped: set HYPERCONTAINER_QEMU");
    }
    if qemu && i.virtiofsd.is_some() {
        setups.push(Setup::Virtiofsd);
    }
    if i.erofs.is_some() {
        setups.push(Setup::Erofs);
    }
    if qemu {
        setups.push(Setup::NineP);
    }
    // `HYPERCONTAINER_BENCH_FS_PEERS=virtiofsd,erofs,9p` (the default):
    // the peers to run beside ours.
    if let Ok(peers) = std::env::var("HYPERCONTAINER_BENCH_FS_PEERS") {
        let wanted: Vec<&str> = peers.split(',').map(str::trim).collect();
        setups.retain(|s| *s == Setup::Ours || wanted.contains(&s.name()));
    }
    let rounds: u32 = std::env::var("HYPERCONTAINER_BENCH_FS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let mut run = 0;
    // One unmeasured boot: the first run in a fresh host is not
    // representative.
    for &s in &setups[..1] {
        run += 1;
        let started = Instant::now();
        let times = run_once(&i, s, run);
        eprintln!(
            "warm-up: {} {:.1}s: {}",
            s.name(),
            started.elapsed().as_secs_f64(),
            show(&times)
        );
    }
    for round in 0..rounds {
        for &s in &setups {
            run += 1;
            let started = Instant::now();
            let mut times = run_once(&i, s, run);
            times.extend(totals(&times));
            eprintln!(
                "round {}: {} {:.1}s: {}",
                round + 1,
                s.name(),
                started.elapsed().as_secs_f64(),
                show(&times)
            );
            let mut samples = SAMPLES.lock().unwrap();
            samples.extend(times.into_iter().map(|(n, d)| (s, n, d)));
        }
    }
}

fn show(times: &[(String, Duration)]) -> String {
    times
        .iter()
        .map(|(n, d)| format!("{n} {:.3}s", d.as_secs_f64()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Sums over one boot's workloads, compared like the workloads: (name,
/// parts). `metadata_3000` is the metadata job (untar, then find
/// and stat); `walk_3000` its read side, which the EROFS reference runs.
const TOTALS: &[(&str, &[&str])] = &[
    ("metadata_3000", &["untar_3000", "find_3000", "stat_3000"]),
    ("walk_3000", &["find_3000", "stat_3000"]),
];

/// The [`TOTALS`] whose parts all ran in `times`.
fn totals(times: &[(String, Duration)]) -> Vec<(String, Duration)> {
    TOTALS
        .iter()
        .filter_map(|(name, parts)| {
            let sum = parts.iter().try_fold(Duration::ZERO, |acc, p| {
                times.iter().find(|(n, _)| n == p).map(|(_, d)| acc + *d)
            })?;
            Some((name.to_string(), sum))
        })
        .collect()
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
    let names = WORKLOADS
        .iter()
        .copied()
        .chain(TOTALS.iter().map(|(n, _)| *n));
    for work in names {
        let Some((ours, n_ours)) = median(Setup::Ours, work) else {
            continue;
        };
        for peer in [Setup::Virtiofsd, Setup::NineP, Setup::Erofs] {
            if let Some((theirs, n_theirs)) = median(peer, work) {
                let ratio = ours.as_secs_f64() / theirs.as_secs_f64();
                println!(
                    "fs/{work}: ours {}, {} {}, ratio {ratio:.2} (ours {:.2}x as fast) (n={n_ours}/{n_theirs})",
                    secs(ours),
                    peer.name(),
                    secs(theirs),
                    1.0 / ratio
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
    // One job of `cargo xtask bench`: no groups of its own.
    hypercontainer_benches::Groups::declare(&[]);
    fs_benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
