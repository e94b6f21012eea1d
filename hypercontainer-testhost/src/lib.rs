//! Runs whole-VM test binaries where a stock Linux guest can boot.
//!
//! Where `/dev/kvm` is hardware KVM, jobs run directly as child processes
//! ([`Mode::Direct`]). Elsewhere (no `/dev/kvm`, or PVM) they run inside an
//! *emulated KVM host* ([`Mode::Emulated`]): QEMU TCG with `-cpu max`
//! (which emulates AMD SVM) boots Debian's cloud kernel, loads `kvm-amd`,
//! and runs every job in one boot from an uncompressed `newc` initramfs
//! that holds busybox, the kvm modules, the jobs' executables with their
//! shared libraries, and `qemu-system-x86_64` with its x86 firmware (the
//! reference VMM). Each job's output is framed on the serial console by
//! marker lines carrying a random per-run token, and the runner returns
//! per-job exit codes, output and durations. Switching modes changes
//! nothing else: [`Mode::auto`] picks one.
//!
//! # Paths inside the emulated host
//!
//! Host files are placed at the same absolute path inside (after resolving
//! the symlinks of their parent directory, see [`inside_path`]), and the
//! host's top-level symlinks (`/bin -> usr/bin`, ...) are reproduced, so a
//! job's argv and environment read the same in both modes.
//!
//! # Environment of every job
//!
//! | variable | value |
//! |---|---|
//! | `HYPERCONTAINER_KERNEL` | the guest's PVH `vmlinux` (with [`TestHostBuilder::guest_kernel`]) |
//! | `HYPERCONTAINER_BZIMAGE` | the guest's `bzImage` (with [`TestHostBuilder::guest_kernel`]) |
//! | `HYPERCONTAINER_BUSYBOX` | a static busybox |
//! | `HYPERCONTAINER_QEMU` | `qemu-system-x86_64`, the reference VMM |
//! | `HYPERCONTAINER_TESTHOST` | `direct` or `emulated` |
//!
//! Inside the emulated host jobs run as root with cwd `/tmp` (on the RAM
//! root filesystem),
//! `HOME=/tmp`, stdin from `/dev/null`; repository files are not there
//! unless included with [`TestHostBuilder::include`].
//!
//! ```no_run
//! use hypercontainer_testhost::{HostAssets, Job, Mode, TestHost};
//!
//! let mode = Mode::auto(|| HostAssets::from_dir("/var/cache/testhost/6.1.0-99"))?;
//! let report = TestHost::builder()
//!     .mode(mode)
//!     .guest_kernel("/cache/vmlinux", "/cache/bzImage")
//!     .job(Job::new("smoke", "/target/debug/deps/whole_vm_smoke-0123").args(["--ignored"]))
//!     .build()?
//!     .run()?;
//! for job in &report.jobs {
//!     println!("{}: exit {}", job.name, job.exit_code);
//! }
//! # Ok::<(), hypercontainer_testhost::Error>(())
//! ```
#![warn(missing_docs)]

mod emulated;
mod emulator;
pub mod ldd;
pub mod passthrough;
pub mod script;
pub mod share;

use hypercontainer::initramfs::{CpioWriter, InitramfsError, Metadata};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{Read, Write};

use emulator::{read_lines, KillOnDrop};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use passthrough::{StdoutCopier, PASSTHROUGH_PORT};
pub use share::Share;
use std::time::{Duration, Instant};

/// The guest's PVH `vmlinux`.
pub const KERNEL_ENV: &str = hypercontainer::kernel::KERNEL_ENV;
/// The guest's `bzImage`.
pub const BZIMAGE_ENV: &str = "HYPERCONTAINER_BZIMAGE";
/// A static busybox.
pub const BUSYBOX_ENV: &str = "HYPERCONTAINER_BUSYBOX";
/// `qemu-system-x86_64`, the reference VMM.
pub const QEMU_ENV: &str = "HYPERCONTAINER_QEMU";
/// `direct` or `emulated`.
pub const MODE_ENV: &str = "HYPERCONTAINER_TESTHOST";

/// How long the emulated host may go without a heartbeat
/// ([`script::HEARTBEAT_SECS`]) before it counts as locked up.
const HOST_SILENCE: Duration = Duration::from_secs(60);

/// x86 firmware QEMU may load from its data directory.
const QEMU_FIRMWARE: &[&str] = &[
    "bios-microvm.bin",
    "qboot.rom",
    "bios-256k.bin",
    "bios.bin",
    "pvh.bin",
    "linuxboot.bin",
    "linuxboot_dma.bin",
    "multiboot.bin",
    "multiboot_dma.bin",
    "kvmvapic.bin",
];
const QEMU_DATA_DIR: &str = "/usr/share/qemu";

/// Errors of the test host.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The builder was given something unusable.
    #[error("invalid test host setup: {0}")]
    Invalid(String),
    /// An I/O operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `ldd` could not list an executable's libraries.
    #[error("shared libraries of {}: {reason}", .exe.display())]
    Ldd {
        /// The executable.
        exe: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Packing the initramfs failed.
    #[error("packing the emulated host's initramfs")]
    Initramfs(#[source] InitramfsError),
    /// The run took longer than its timeout.
    #[error("timed out after {after:?} while {during}")]
    Timeout {
        /// What was running (`job NAME`, or a boot phase).
        during: String,
        /// The timeout.
        after: Duration,
    },
    /// The emulated host stopped answering: no heartbeat for `silent`.
    /// This is the emulator locking up (a job that hangs on its own is
    /// killed by its [`Job::timeout`] while the heartbeat goes on).
    #[error("the emulated host stopped responding (no heartbeat for {silent:?}) while {during}; emulator state: {state}; last console lines:\n{tail}")]
    HostUnresponsive {
        /// What was running.
        during: String,
        /// How long it was silent.
        silent: Duration,
        /// What the emulator was doing: its CPU use and the emulated CPU's
        /// registers, from the QEMU monitor.
        state: String,
        /// The last console lines.
        tail: String,
        /// The jobs that had finished before the lockup, in order: a caller
        /// may keep them and run only the rest in a fresh emulated host.
        completed: Vec<JobResult>,
    },
    /// The emulated host stopped before all jobs ran, or gave up.
    #[error("emulated host stopped while {during}: {reason}; last console lines:\n{tail}")]
    HostStopped {
        /// What was running.
        during: String,
        /// Why, as far as known.
        reason: String,
        /// The last console lines.
        tail: String,
    },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// The emulated host's kernel and kvm modules.
///
/// On disk (as `cargo xtask testhost-assets` leaves it): `<dir>/vmlinuz`,
/// `<dir>/modules/*.ko`, and `<dir>/modules.order` naming the module files
/// one per line in load order.
#[derive(Debug, Clone)]
pub struct HostAssets {
    /// The host kernel (Debian's cloud kernel).
    pub kernel: PathBuf,
    /// The kvm modules and their dependencies, in load order.
    pub modules: Vec<PathBuf>,
}

impl HostAssets {
    /// Reads the layout described on [`HostAssets`].
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let order = dir.join("modules.order");
        let text = std::fs::read_to_string(&order)
            .map_err(io_err(format!("reading {}", order.display())))?;
        let modules: Vec<PathBuf> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|l| dir.join("modules").join(l))
            .collect();
        let kernel = dir.join("vmlinuz");
        for f in modules.iter().chain([&kernel]) {
            if !f.is_file() {
                return Err(Error::Invalid(format!("missing {}", f.display())));
            }
        }
        if modules.is_empty() {
            return Err(Error::Invalid(format!(
                "{} lists no module",
                order.display()
            )));
        }
        Ok(HostAssets { kernel, modules })
    }
}

/// Where jobs run.
#[derive(Debug, Clone)]
pub enum Mode {
    /// As child processes of this process (hardware KVM).
    Direct,
    /// Inside an emulated KVM host booted from these assets.
    Emulated(HostAssets),
}

impl Mode {
    /// [`Mode::Direct`] on hardware KVM, else [`Mode::Emulated`] with the
    /// assets `load` returns.
    pub fn auto(load: impl FnOnce() -> Result<HostAssets>) -> Result<Mode> {
        if hypercontainer::host::detect_kvm() == hypercontainer::host::KvmKind::Hardware {
            Ok(Mode::Direct)
        } else {
            load().map(Mode::Emulated)
        }
    }

    /// `direct` or `emulated`.
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Emulated(_) => "emulated",
        }
    }
}

/// One program to run.
#[derive(Debug, Clone)]
pub struct Job {
    name: String,
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(String, String)>,
    timeout: Option<Duration>,
    passthrough: bool,
}

impl Job {
    /// A job named `name` running `program`: an absolute host path (packed
    /// with its shared libraries in emulated mode) or a command name
    /// looked up on `PATH` (busybox applets inside).
    pub fn new(name: impl Into<String>, program: impl Into<PathBuf>) -> Self {
        Job {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            timeout: None,
            passthrough: false,
        }
    }

    /// Passes the job's output through unchanged: its stdout goes to this
    /// process's stdout byte for byte (in the emulated host, over a second
    /// serial port of its own), its stderr to this process's stderr (the
    /// emulated host's console, which carries it, is echoed there). Such a
    /// job's output is neither echoed with a prefix nor kept in its
    /// [`JobResult`], and a failure does not dump the kernel log. For jobs
    /// that stand in for a command a user runs (`cargo xtask run`).
    pub fn passthrough(mut self, on: bool) -> Self {
        self.passthrough = on;
        self
    }

    /// Kills the job after `timeout` and goes on with the next one. In the
    /// emulated host the kernel stacks and system calls of the job's
    /// threads are printed into its output first, to show where it hung.
    /// The job's result then has `timed_out` set and exit code 137.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable for this job only.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The job's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The outcome of one job.
#[derive(Debug, Clone)]
pub struct JobResult {
    /// The job's name.
    pub name: String,
    /// Its exit code (128 + signal number when killed by a signal).
    pub exit_code: i32,
    /// Its stdout and stderr, interleaved as they arrived.
    pub output: String,
    /// Wall time from its start to its end, as seen by the runner.
    pub duration: Duration,
    /// It was killed by its own [`Job::timeout`].
    pub timed_out: bool,
}

impl JobResult {
    /// Whether the job exited with code 0.
    pub fn success(&self) -> bool {
        self.exit_code == 0
    }
}

/// The outcome of a run.
#[derive(Debug, Clone)]
pub struct Report {
    /// `direct` or `emulated`.
    pub mode: &'static str,
    /// Emulated: from starting QEMU to the host's `/init` running.
    pub host_boot: Option<Duration>,
    /// Emulated: from `/init` starting to `/dev/kvm` being ready.
    pub kvm_setup: Option<Duration>,
    /// Emulated: size of the host's initramfs in bytes.
    pub initramfs_bytes: Option<u64>,
    /// One result per job, in order.
    pub jobs: Vec<JobResult>,
    /// Wall time of the whole run.
    pub total: Duration,
}

/// Builder of a [`TestHost`].
#[derive(Debug, Clone)]
pub struct TestHostBuilder {
    mode: Option<Mode>,
    memory_mib: u32,
    cpus: u32,
    timeout: Duration,
    files: Vec<(PathBuf, Option<String>)>,
    executables: Vec<PathBuf>,
    env: Vec<(String, String)>,
    jobs: Vec<Job>,
    kernel: Option<(PathBuf, PathBuf)>,
    echo: Option<String>,
    qemu: Option<PathBuf>,
    busybox: Option<PathBuf>,
    shares: Vec<Share>,
}

impl Default for TestHostBuilder {
    fn default() -> Self {
        TestHostBuilder {
            mode: None,
            memory_mib: 2048,
            cpus: 1,
            timeout: Duration::from_secs(30 * 60),
            files: Vec::new(),
            executables: Vec::new(),
            env: Vec::new(),
            jobs: Vec::new(),
            kernel: None,
            echo: Some("  | ".into()),
            qemu: None,
            busybox: None,
            shares: Vec::new(),
        }
    }
}

impl TestHostBuilder {
    /// Where to run (required).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = Some(mode);
        self
    }

    /// Memory of the emulated host in MiB (default 2048).
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// vCPUs of the emulated host (default 1).
    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }

    /// Limit for the whole run (default 30 minutes).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Packs a host file at `inside` (emulated mode only; in direct mode the
    /// file is where it is on the host).
    pub fn file(mut self, host: impl Into<PathBuf>, inside: impl Into<String>) -> Self {
        self.files.push((host.into(), Some(inside.into())));
        self
    }

    /// Packs a host file at its [`inside_path`].
    pub fn include(mut self, host: impl Into<PathBuf>) -> Self {
        self.files.push((host.into(), None));
        self
    }

    /// Makes a host directory visible inside the emulated host at its own
    /// path, read-write or read-only, so that jobs' writes reach the host
    /// (see [`share`]). Direct mode needs nothing for it.
    pub fn share(mut self, share: Share) -> Self {
        self.shares.push(share);
        self
    }

    /// Packs an executable and the shared libraries `ldd` lists for it.
    pub fn executable(mut self, host: impl Into<PathBuf>) -> Self {
        self.executables.push(host.into());
        self
    }

    /// Packs the guest kernel and sets `HYPERCONTAINER_KERNEL` and
    /// `HYPERCONTAINER_BZIMAGE`.
    pub fn guest_kernel(
        mut self,
        vmlinux: impl Into<PathBuf>,
        bzimage: impl Into<PathBuf>,
    ) -> Self {
        self.kernel = Some((vmlinux.into(), bzimage.into()));
        self
    }

    /// Sets an environment variable for every job.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Adds a job; jobs run one after the other, in order.
    pub fn job(mut self, job: Job) -> Self {
        self.jobs.push(job);
        self
    }

    /// Streams console and job output to stderr, each line prefixed
    /// (default `"  | "`); `None` keeps quiet.
    pub fn echo(mut self, prefix: Option<&str>) -> Self {
        self.echo = prefix.map(str::to_string);
        self
    }

    /// The `qemu-system-x86_64` to use (default: found on `PATH`).
    pub fn qemu(mut self, path: impl Into<PathBuf>) -> Self {
        self.qemu = Some(path.into());
        self
    }

    /// The static busybox to use (default: `busybox` on `PATH`).
    pub fn busybox(mut self, path: impl Into<PathBuf>) -> Self {
        self.busybox = Some(path.into());
        self
    }

    /// Validates the setup.
    pub fn build(self) -> Result<TestHost> {
        let mode = self
            .mode
            .ok_or_else(|| Error::Invalid("no mode chosen (see Mode::auto)".into()))?;
        if self.jobs.is_empty() {
            return Err(Error::Invalid("no job to run".into()));
        }
        if self.memory_mib < 256 || self.cpus == 0 {
            return Err(Error::Invalid(format!(
                "{} MiB and {} vCPUs: need at least 256 MiB and 1 vCPU",
                self.memory_mib, self.cpus
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for job in &self.jobs {
            if job.name.is_empty() || !seen.insert(job.name.clone()) {
                return Err(Error::Invalid(format!(
                    "job names must be unique and non-empty: {:?}",
                    job.name
                )));
            }
        }
        let all_env = self.env.iter().chain(self.jobs.iter().flat_map(|j| &j.env));
        for (k, v) in all_env {
            let valid = !k.is_empty()
                && !k.starts_with(|c: char| c.is_ascii_digit())
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid || v.contains('\0') {
                return Err(Error::Invalid(format!("bad environment variable {k:?}")));
            }
        }
        let qemu = match self.qemu {
            Some(q) => q,
            None => which("qemu-system-x86_64")
                .ok_or_else(|| Error::Invalid("qemu-system-x86_64 is not on PATH".into()))?,
        };
        let busybox = match self.busybox {
            Some(b) => b,
            None => {
                which("busybox").ok_or_else(|| Error::Invalid("busybox is not on PATH".into()))?
            }
        };
        Ok(TestHost {
            mode,
            memory_mib: self.memory_mib,
            cpus: self.cpus,
            timeout: self.timeout,
            files: self.files,
            executables: self.executables,
            env: self.env,
            jobs: self.jobs,
            kernel: self.kernel,
            echo: self.echo,
            qemu,
            busybox,
            shares: self.shares,
        })
    }
}

/// A validated set of jobs and where to run them. See the crate docs.
#[derive(Debug)]
pub struct TestHost {
    mode: Mode,
    memory_mib: u32,
    cpus: u32,
    timeout: Duration,
    files: Vec<(PathBuf, Option<String>)>,
    executables: Vec<PathBuf>,
    env: Vec<(String, String)>,
    jobs: Vec<Job>,
    kernel: Option<(PathBuf, PathBuf)>,
    echo: Option<String>,
    qemu: PathBuf,
    busybox: PathBuf,
    shares: Vec<Share>,
}

/// Where a host file is placed inside the emulated host: its parent
/// directory with all symlinks resolved, joined with its own name (so a
/// library's soname link keeps its name but gets the real file's bytes).
pub fn inside_path(host: &Path) -> Result<PathBuf> {
    let name = host
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("{} has no file name", host.display())))?;
    let parent = match host.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let parent = parent
        .canonicalize()
        .map_err(io_err(format!("resolving {}", parent.display())))?;
    Ok(parent.join(name))
}

/// Finds an executable on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn path_str(p: &Path) -> Result<String> {
    p.to_str()
        .map(str::to_string)
        .ok_or_else(|| Error::Invalid(format!("{} is not UTF-8", p.display())))
}

/// What goes into the emulated host's initramfs: inside path -> source.
#[derive(Debug, Default)]
struct Tree {
    files: BTreeMap<String, (PathBuf, u32)>,
}

impl Tree {
    fn add(&mut self, host: &Path, inside: String, perm: u32) {
        self.files
            .entry(inside)
            .or_insert((host.to_path_buf(), perm));
    }

    fn add_mirrored(&mut self, host: &Path) -> Result<String> {
        let inside = path_str(&inside_path(host)?)?;
        let perm =
            std::fs::metadata(host).map_err(io_err(format!("reading {}", host.display())))?;
        use std::os::unix::fs::PermissionsExt;
        self.add(host, inside.clone(), perm.permissions().mode() & 0o7777);
        Ok(inside)
    }

    fn add_executable(&mut self, host: &Path) -> Result<String> {
        let inside = self.add_mirrored(host)?;
        for lib in ldd::shared_libraries(host)? {
            self.add_mirrored(&lib)?;
        }
        Ok(inside)
    }
}

impl TestHost {
    /// Starts a builder.
    pub fn builder() -> TestHostBuilder {
        TestHostBuilder::default()
    }

    /// Runs every job, in order, and reports their outcomes. A job that
    /// fails is reported, not an error; the run is an error only when the
    /// jobs could not all be run.
    pub fn run(&self) -> Result<Report> {
        match &self.mode {
            Mode::Direct => self.run_direct(),
            Mode::Emulated(assets) => self.run_emulated(assets),
        }
    }

    fn echo(&self, line: &str) {
        if let Some(prefix) = &self.echo {
            eprintln!("{prefix}{line}");
        }
    }

    /// Environment of every job, with paths as they are in `tree` (or on the
    /// host when `tree` is `None`).
    fn common_env(&self, mut tree: Option<&mut Tree>) -> Result<Vec<(String, String)>> {
        let mut env = vec![(MODE_ENV.to_string(), self.mode.name().to_string())];
        let mut place = |host: &Path, exe: bool| -> Result<String> {
            match tree.as_deref_mut() {
                Some(t) if exe => t.add_executable(host),
                Some(t) => t.add_mirrored(host),
                None => path_str(&inside_path(host)?),
            }
        };
        if let Some((vmlinux, bzimage)) = &self.kernel {
            env.push((KERNEL_ENV.into(), place(vmlinux, false)?));
            env.push((BZIMAGE_ENV.into(), place(bzimage, false)?));
        }
        env.push((BUSYBOX_ENV.into(), place(&self.busybox, true)?));
        env.push((QEMU_ENV.into(), place(&self.qemu, true)?));
        env.extend(self.env.iter().cloned());
        Ok(env)
    }

    fn run_direct(&self) -> Result<Report> {
        let start = Instant::now();
        let env = self.common_env(None)?;
        let mut results = Vec::new();
        for job in &self.jobs {
            let remaining = self.timeout.saturating_sub(start.elapsed());
            results.push(self.run_direct_job(job, &env, remaining)?);
        }
        Ok(Report {
            mode: self.mode.name(),
            host_boot: None,
            kvm_setup: None,
            initramfs_bytes: None,
            jobs: results,
            total: start.elapsed(),
        })
    }

    fn run_direct_job(
        &self,
        job: &Job,
        env: &[(String, String)],
        timeout: Duration,
    ) -> Result<JobResult> {
        self.echo(&format!("--- job {} started", job.name));
        let start = Instant::now();
        let mut cmd = Command::new(&job.program);
        cmd.args(&job.args)
            .envs(env.iter().cloned())
            .envs(job.env.iter().cloned())
            .stdin(Stdio::null());
        if job.passthrough {
            let status = cmd
                .status()
                .map_err(io_err(format!("running {}", job.program.display())))?;
            use std::os::unix::process::ExitStatusExt;
            let exit_code = status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
            return Ok(JobResult {
                name: job.name.clone(),
                exit_code,
                output: String::new(),
                duration: start.elapsed(),
                timed_out: false,
            });
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = KillOnDrop(
            cmd.spawn()
                .map_err(io_err(format!("starting {}", job.program.display())))?,
        );
        let (rx, readers) = read_lines(&mut child.0);
        let mut output = String::new();
        let own_limit = job.timeout.filter(|t| *t < timeout);
        let limit = own_limit.unwrap_or(timeout);
        let mut timed_out = false;
        loop {
            let left = limit.saturating_sub(start.elapsed());
            match rx.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok((_, line)) => {
                    self.echo(&line);
                    output.push_str(&line);
                    output.push('\n');
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) if own_limit.is_some() => {
                    let line = format!("job {} timed out after {limit:?}; killed", job.name);
                    self.echo(&line);
                    output.push_str(&line);
                    output.push('\n');
                    let _ = child.0.kill();
                    timed_out = true;
                    break;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(Error::Timeout {
                        during: format!("job {}", job.name),
                        after: timeout,
                    })
                }
            }
        }
        if !timed_out {
            for r in readers.into_iter().flatten() {
                let _ = r.join();
            }
        }
        let status = child
            .0
            .wait()
            .map_err(io_err(format!("waiting for {}", job.name)))?;
        use std::os::unix::process::ExitStatusExt;
        let exit_code = status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        let duration = start.elapsed();
        self.echo(&format!(
            "--- job {} exited {exit_code} ({:.1}s)",
            job.name,
            duration.as_secs_f64()
        ));
        Ok(JobResult {
            name: job.name.clone(),
            exit_code,
            output,
            duration,
            timed_out,
        })
    }
}

fn random_nonce() -> Result<String> {
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(io_err("reading /dev/urandom"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests;
