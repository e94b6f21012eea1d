//! Sandboxes: an image's process running in its own microVM.
//!
//! [`Sandbox::builder`] takes an image ([`ImageRef`]) and the process's
//! overrides, VM size and stdio settings; [`SandboxBuilder::start`]
//! resolves the image through the [image store](hypercontainer_image),
//! boots a VM with one read-only virtio-blk disk per image layer (EROFS), a
//! vsock device and an entropy device, with the [agent](crate::guest) as
//! PID 1, and asks the agent to mount the layers under a writable tmpfs
//! upper and run the process. With [`SandboxBuilder::network`] the VM
//! also gets a virtio-net device on a host tap, configured in the guest by
//! the agent (see [`NetworkInterface`]). The returned [`Sandbox`] streams the
//! process's output, forwards stdin and signals, runs more processes
//! ([`Sandbox::exec`]) and reports the exit status.
//!
//! ```no_run
//! use std::io::Read;
//! use hypercontainer::sandbox::Sandbox;
//!
//! # fn main() -> Result<(), hypercontainer::sandbox::Error> {
//! let sandbox = Sandbox::builder()
//!     .image("oci:/srv/images/busybox:latest".parse()?)
//!     .cmd(["echo", "hello from a microVM"])
//!     .start()?;
//! let mut out = String::new();
//! sandbox.stdout()?.read_to_string(&mut out).expect("read");
//! assert_eq!(sandbox.wait()?, 0);
//! print!("{out}");
//! # Ok(())
//! # }
//! ```
//!
//! # Threads and resources
//!
//! Each sandbox has its VM's threads (one per vCPU and one device event
//! loop) and one thread reading the agent connection, which demultiplexes
//! output to per-process buffers or callbacks. Dropping a [`Sandbox`] stops
//! the VM, joins every thread, closes every descriptor and removes its
//! temporary files; [`Process`] and reader handles that outlive it only
//! report end of file or errors. Many sandboxes can run in one process;
//! one guest's failure ends only its own sandbox.
//!
//! [`Sandbox`] and [`Process`] are `Send + Sync`: wait in one thread while
//! another reads output or sends signals.

mod exit_status;
mod image;
mod network;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use hypercontainer_image::{ErofsBuilder, ProcessOverrides, SourceError, StoreError};
use hypercontainer_protocol::{
    BootStage, ErrorKind, Process as ProtoProcess, Rootfs, Start, Upper, WindowSize,
    AGENT_VSOCK_PORT,
};

use crate::agent_client::{
    self, error_chain, AgentClient, OutputReader, ProcessHandle, StdinWriter,
};
use crate::guest::{self, AgentError};
use crate::host::{self, KvmKind};
use crate::kernel::{self, KernelError};
use crate::spec::{self, ContainerOptions};
use crate::vmm::{self, BlockConfig, ConsoleSink, Vm, VmBuilder};

pub use crate::agent_client::Output;
pub use crate::spec::{Limits, Seccomp, Tmpfs};
/// The image store and image sources, re-exported for [`SandboxBuilder::image_store`]
/// and [`ImageRef::Source`].
pub use hypercontainer_image::{Image, ImageSource, ImageStore};
pub use image::{ImageRef, ParseImageRefError, PullOptions, PullPolicy};
pub use network::NetworkInterface;

/// Kernel command line of a sandbox VM (the VMM appends its devices).
///
/// `no_timer_check` skips the kernel's check that the timer interrupt
/// arrives through the IO-APIC, a busy wait of several timer ticks (about
/// 20 ms) that KVM's in-kernel IO-APIC and PIT never fail.
pub const SANDBOX_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 quiet no_timer_check";
/// Default guest memory of a sandbox.
pub const DEFAULT_MEMORY_MIB: u64 = 256;
/// Default time allowed from `start()` to the agent's hello.
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// The guest's vsock context id (each VM has its own vsock device).
pub const GUEST_CID: u64 = 3;

/// Errors of sandboxes. Each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No image was given to the builder.
    #[error("no image given: call SandboxBuilder::image")]
    NoImage,
    /// An image reference string did not parse.
    #[error(transparent)]
    BadReference(#[from] ParseImageRefError),
    /// The image (or the tag in it) does not exist.
    #[error(
        "image {image} not found: check the name or path and the tag (NAME[:TAG], oci:PATH[:TAG], \
         oci-archive:PATH[:TAG], docker-archive:PATH[:REF])"
    )]
    ImageNotFound {
        /// The reference given.
        image: String,
        /// What the image store said.
        #[source]
        source: Box<StoreError>,
    },
    /// Importing the image failed (corrupt or hostile image, disk full...).
    #[error("importing image {image}")]
    Image {
        /// The reference given.
        image: String,
        /// What the image store said.
        #[source]
        source: Box<StoreError>,
    },
    /// An imported layer has no EROFS image (the store was opened without
    /// one); open the store with EROFS images enabled.
    #[error("layer {0} has no EROFS image: use an image store that builds them")]
    NoLayerImage(String),
    /// A prepared root filesystem could not be turned into a disk image.
    #[error("building a disk image of the root filesystem {path} (is mkfs.erofs installed?)")]
    RootfsDisk {
        /// The directory.
        path: PathBuf,
        /// What failed.
        #[source]
        source: hypercontainer_image::ErofsError,
    },
    /// The image and the overrides give no valid process.
    #[error("the process to run")]
    Process(#[source] hypercontainer_image::ProcessError),
    /// The guest kernel is missing (the message says how to build it).
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// The agent binary is missing or unusable (the message says how to
    /// build it).
    #[error(transparent)]
    AgentBinary(#[from] AgentError),
    /// KVM cannot run this sandbox here.
    #[error("KVM is not usable on this host: {reason}")]
    KvmUnusable {
        /// Why, and what to do.
        reason: String,
    },
    /// Building the VM failed.
    #[error("creating the sandbox VM")]
    Vm(#[source] vmm::Error),
    /// The guest died (kernel panic, fault, reset) before the process ended.
    #[error("the guest died {stage}: {reason}; last console lines:\n{}", console.join("\n"))]
    GuestDied {
        /// When: during boot, or while the process ran.
        stage: &'static str,
        /// What the VMM reported.
        reason: String,
        /// The guest console's last lines.
        console: Vec<String>,
    },
    /// The agent did not connect in time.
    #[error(
        "the guest agent did not connect within {timeout:?} (raise SandboxBuilder::boot_timeout \
         on slow hosts); last console lines:\n{}", console.join("\n")
    )]
    BootTimeout {
        /// The limit.
        timeout: Duration,
        /// The guest console's last lines.
        console: Vec<String>,
    },
    /// The agent connection failed, or the agent speaks another protocol
    /// version (then the message says how to rebuild it).
    #[error(transparent)]
    Agent(agent_client::Error),
    /// The process could not be started (executable not found, bad user or
    /// working directory...).
    #[error("{message}")]
    ProcessStart {
        /// What kind of failure.
        kind: ErrorKind,
        /// The agent's message.
        message: String,
        /// The conventional exit status for it (127, 126 or 125).
        status: i32,
    },
    /// A host file operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An invalid setting.
    #[error("invalid sandbox configuration: {0}")]
    Config(String),
    /// The container's confinement settings are invalid, or the seccomp
    /// profile is missing or malformed (the message says what to do).
    #[error("the container's confinement")]
    Spec(#[source] spec::Error),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, Error>;

fn agent_err(e: agent_client::Error) -> Error {
    match e {
        agent_client::Error::Spawn {
            kind,
            message,
            status,
        } => Error::ProcessStart {
            kind,
            message,
            status,
        },
        e => Error::Agent(e),
    }
}

/// An extra disk for the guest (the agent does not mount it; find it by
/// serial in `/sys/block/*/serial`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// The raw image file.
    pub path: PathBuf,
    /// Expose it read-only.
    pub read_only: bool,
    /// Its serial (at most 20 bytes; `layer*` is reserved).
    pub serial: String,
}

/// Configures and starts a [`Sandbox`]. See the [module docs](self).
pub struct SandboxBuilder {
    image: Option<ImageRef>,
    store: Option<ImageStore>,
    pull: PullOptions,
    overrides: ProcessOverrides,
    vcpus: u32,
    memory_mib: u64,
    share_kernel_pages: bool,
    hostname: Option<String>,
    stdin: bool,
    tty: Option<WindowSize>,
    disks: Vec<Disk>,
    kernel: Option<PathBuf>,
    agent: Option<PathBuf>,
    stdout: Output,
    stderr: Output,
    console: Option<Box<dyn ConsoleSink>>,
    kernel_args: Vec<String>,
    network: Vec<NetworkInterface>,
    dns: Vec<std::net::IpAddr>,
    boot_timeout: Duration,
    container: ContainerOptions,
}

impl std::fmt::Debug for SandboxBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxBuilder")
            .field("image", &self.image)
            .field("overrides", &self.overrides)
            .field("vcpus", &self.vcpus)
            .field("memory_mib", &self.memory_mib)
            .field("share_kernel_pages", &self.share_kernel_pages)
            .field("container", &self.container)
            .finish_non_exhaustive()
    }
}

impl Default for SandboxBuilder {
    fn default() -> Self {
        Self {
            image: None,
            store: None,
            pull: PullOptions::default(),
            overrides: ProcessOverrides::new(),
            vcpus: 1,
            memory_mib: DEFAULT_MEMORY_MIB,
            share_kernel_pages: true,
            hostname: None,
            stdin: false,
            tty: None,
            disks: Vec::new(),
            kernel: None,
            agent: None,
            stdout: Output::Piped,
            stderr: Output::Piped,
            console: None,
            kernel_args: Vec::new(),
            network: Vec::new(),
            dns: Vec::new(),
            boot_timeout: DEFAULT_BOOT_TIMEOUT,
            container: ContainerOptions::default(),
        }
    }
}

impl SandboxBuilder {
    /// The image to run (required).
    pub fn image(mut self, image: ImageRef) -> Self {
        self.image = Some(image);
        self
    }

    /// The image store to import into (default: `<cache>/images`, see
    /// [`crate::kernel::cache_dir`]).
    pub fn image_store(mut self, store: ImageStore) -> Self {
        self.store = Some(store);
        self
    }

    /// When registry images are pulled (default [`PullPolicy::Missing`]).
    pub fn pull_policy(mut self, policy: PullPolicy) -> Self {
        self.pull.policy = policy;
        self
    }

    /// How registries are reached: auth files, CAs, insecure registries
    /// (default: [`hypercontainer_image::ClientOptions::new`]).
    pub fn registry(mut self, options: hypercontainer_image::ClientOptions) -> Self {
        self.pull.client = options;
        self
    }

    /// Reports each layer's download progress while a registry image is pulled.
    pub fn pull_progress(
        mut self,
        f: impl Fn(&hypercontainer_image::LayerProgress) + Send + Sync + 'static,
    ) -> Self {
        self.pull.progress = Some(std::sync::Arc::new(f));
        self
    }

    /// Replaces the image's entrypoint (and drops its Cmd, as Docker does).
    pub fn entrypoint<I: IntoIterator<Item = S>, S: Into<String>>(mut self, argv: I) -> Self {
        self.overrides = self.overrides.entrypoint(argv);
        self
    }

    /// Replaces the image's Cmd (the command, or the entrypoint's arguments).
    pub fn cmd<I: IntoIterator<Item = S>, S: Into<String>>(mut self, argv: I) -> Self {
        self.overrides = self.overrides.cmd(argv);
        self
    }

    /// Sets an environment variable (wins over the image's).
    pub fn env(mut self, key: impl AsRef<str>, value: impl AsRef<str>) -> Self {
        self.overrides = self.overrides.env(key, value);
        self
    }

    /// Sets the working directory (absolute).
    pub fn workdir(mut self, dir: impl Into<String>) -> Self {
        self.overrides = self.overrides.working_dir(dir);
        self
    }

    /// Sets the user (`name`, `uid`, `name:group`, `uid:gid`).
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.overrides = self.overrides.user(user);
        self
    }

    /// Number of vCPUs (default 1).
    pub fn vcpus(mut self, n: u32) -> Self {
        self.vcpus = n;
        self
    }

    /// Guest memory in MiB (default [`DEFAULT_MEMORY_MIB`]).
    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Share the guest kernel's and agent initramfs's unmodified pages with
    /// the other sandboxes instead of copying them into this one's memory
    /// (default on); see [`VmBuilder::share_kernel_pages`].
    pub fn share_kernel_pages(mut self, on: bool) -> Self {
        self.share_kernel_pages = on;
        self
    }

    /// The container's host name (default: derived from the sandbox id).
    pub fn hostname(mut self, name: impl Into<String>) -> Self {
        self.hostname = Some(name.into());
        self
    }

    /// Keep the process's stdin open for [`Sandbox::stdin`] (default: the
    /// process sees end of file at once).
    pub fn stdin(mut self, open: bool) -> Self {
        self.stdin = open;
        self
    }

    /// Run the process on a terminal of `rows` x `cols` (stdout and stderr
    /// merge into stdout).
    pub fn tty(mut self, rows: u16, cols: u16) -> Self {
        self.tty = Some(WindowSize { rows, cols });
        self
    }

    /// Adds a disk.
    pub fn disk(mut self, disk: Disk) -> Self {
        self.disks.push(disk);
        self
    }

    /// The guest kernel (default: [`kernel::default_kernel`]).
    pub fn kernel(mut self, path: impl Into<PathBuf>) -> Self {
        self.kernel = Some(path.into());
        self
    }

    /// The agent binary (default: [`guest::default_agent`]).
    pub fn agent(mut self, path: impl Into<PathBuf>) -> Self {
        self.agent = Some(path.into());
        self
    }

    /// Where the main process's stdout goes (default [`Output::Piped`]).
    pub fn stdout(mut self, out: Output) -> Self {
        self.stdout = out;
        self
    }

    /// Where the main process's stderr goes (default [`Output::Piped`]).
    pub fn stderr(mut self, out: Output) -> Self {
        self.stderr = out;
        self
    }

    /// Sends the guest's serial console (kernel messages) to a writer
    /// (default: discarded; the last lines are kept for error reports).
    pub fn console_writer(mut self, w: impl Write + Send + 'static) -> Self {
        self.console = Some(Box::new(vmm::WriterSink(w)));
        self
    }

    /// Adds a network interface: a virtio-net device on a host tap, which
    /// the agent configures in the guest before the container starts (see
    /// [`NetworkInterface`]). At most
    /// [`MAX_INTERFACES`](hypercontainer_protocol::MAX_INTERFACES). Without
    /// one the sandbox has only its loopback interface.
    pub fn network(mut self, interface: NetworkInterface) -> Self {
        self.network.push(interface);
        self
    }

    /// Adds a DNS server written to the container's `/etc/resolv.conf`
    /// (default: the image's file is kept).
    pub fn dns(mut self, server: std::net::IpAddr) -> Self {
        self.dns.push(server);
        self
    }

    /// Appends an argument to the guest kernel's command line (after
    /// [`SANDBOX_CMDLINE`]), e.g. `loglevel=7` to see the kernel's boot
    /// messages on the console, or a module parameter.
    ///
    /// ```
    /// # use hypercontainer::sandbox::Sandbox;
    /// let b = Sandbox::builder().kernel_arg("loglevel=7");
    /// ```
    pub fn kernel_arg(mut self, arg: impl Into<String>) -> Self {
        self.kernel_args.push(arg.into());
        self
    }

    /// Time allowed from `start()` until the agent says hello (default
    /// [`DEFAULT_BOOT_TIMEOUT`]).
    pub fn boot_timeout(mut self, t: Duration) -> Self {
        self.boot_timeout = t;
        self
    }

    /// How the container is confined (capabilities, seccomp, read-only
    /// root, tmpfs mounts, `/dev/shm` size, sysctls, cgroup limits), all at
    /// once; the default is Docker's. The methods below change one setting
    /// each.
    pub fn container_options(mut self, options: ContainerOptions) -> Self {
        self.container = options;
        self
    }

    /// Adds a capability (`docker run --cap-add`; `ALL` for all).
    pub fn cap_add(mut self, cap: impl Into<String>) -> Self {
        self.container.cap_add.push(cap.into());
        self
    }

    /// Drops a capability (`docker run --cap-drop`; `ALL` for all).
    pub fn cap_drop(mut self, cap: impl Into<String>) -> Self {
        self.container.cap_drop.push(cap.into());
        self
    }

    /// The seccomp filter (default: [`Seccomp::Default`], the
    /// containers-common profile; [`Seccomp::Unconfined`] for none).
    pub fn seccomp(mut self, seccomp: Seccomp) -> Self {
        self.container.seccomp = seccomp;
        self
    }

    /// Sets `no_new_privs` for every process of the container.
    pub fn no_new_privileges(mut self, on: bool) -> Self {
        self.container.no_new_privileges = on;
        self
    }

    /// Mounts the root filesystem read-only (`docker run --read-only`).
    pub fn read_only(mut self, on: bool) -> Self {
        self.container.read_only = on;
        self
    }

    /// Adds a tmpfs mount (`docker run --tmpfs`).
    pub fn tmpfs(mut self, tmpfs: Tmpfs) -> Self {
        self.container.tmpfs.push(tmpfs);
        self
    }

    /// The size of `/dev/shm` in bytes (default 64 MiB).
    pub fn shm_size(mut self, bytes: u64) -> Self {
        self.container.shm_size = Some(bytes);
        self
    }

    /// Sets a namespaced sysctl (`docker run --sysctl`).
    pub fn sysctl(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.container.sysctls.insert(key.into(), value.into());
        self
    }

    /// cgroup limits of the container inside the VM (memory, CPU, pids).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.container.limits = limits;
        self
    }

    fn validate(&self) -> Result<()> {
        if self.image.is_none() {
            return Err(Error::NoImage);
        }
        if self.vcpus == 0 {
            return Err(Error::Config("a sandbox needs at least one vCPU".into()));
        }
        if self.memory_mib < 64 {
            return Err(Error::Config(format!(
                "{} MiB of memory is too little for a sandbox: give at least 64",
                self.memory_mib
            )));
        }
        for d in &self.disks {
            if d.serial.is_empty() || d.serial.len() > 20 || d.serial.starts_with("layer") {
                return Err(Error::Config(format!(
                    "disk serial {:?} must be 1 to 20 bytes and not start with \"layer\"",
                    d.serial
                )));
            }
        }
        if self.network.len() > hypercontainer_protocol::MAX_INTERFACES {
            return Err(Error::Config(format!(
                "{} network interfaces: at most {} are supported",
                self.network.len(),
                hypercontainer_protocol::MAX_INTERFACES
            )));
        }
        for n in &self.network {
            n.validate().map_err(Error::Config)?;
        }
        if let Some(h) = &self.hostname {
            if h.len() > 64 || h.contains(['/', '\0']) {
                return Err(Error::Config(format!("invalid host name {h:?}")));
            }
        }
        Ok(())
    }

    /// Validates the settings, prepares the image, boots the VM and starts
    /// the process. Returns once the process runs (or with the reason it
    /// could not be started).
    pub fn start(self) -> Result<Sandbox> {
        let t0 = Instant::now();
        self.validate()?;
        let kernel = match &self.kernel {
            Some(k) => k.clone(),
            None => kernel::default_kernel()?,
        };
        let agent = match &self.agent {
            Some(a) => a.clone(),
            None => guest::default_agent()?,
        };
        let initramfs = guest::agent_initramfs(&agent)?;
        check_kvm()?;

        let id = new_id();
        let scratch = Scratch::new(&id)?;
        let image = self.image.as_ref().ok_or(Error::NoImage)?;
        let (layers, defaults) = prepare_image(
            image,
            self.store.as_ref(),
            &self.pull,
            &scratch,
            &self.overrides,
        )?;
        let image_ready = t0.elapsed();

        let user = match &defaults.user.group {
            Some(g) => format!("{}:{g}", defaults.user.user),
            None => defaults.user.user.clone(),
        };
        let hostname = self
            .hostname
            .clone()
            .unwrap_or_else(|| id[..12].to_string());
        let spec = spec::container_spec(&self.container, &user).map_err(Error::Spec)?;
        let process = ProtoProcess {
            argv: defaults.args.clone(),
            env: spec::container_env(&defaults.env, &hostname, self.tty.is_some()),
            cwd: defaults.working_dir.clone(),
            user,
            terminal: self.tty.is_some(),
            window: self.tty,
            ..ProtoProcess::default()
        };
        let stop_signal = defaults
            .stop_signal
            .as_deref()
            .and_then(parse_signal)
            .unwrap_or(libc::SIGTERM);

        let mut b = VmBuilder::new()
            .kernel(&kernel)
            .initramfs(&initramfs.path)
            .cmdline(SANDBOX_CMDLINE)
            .memory_mib(self.memory_mib)
            .vcpus(self.vcpus)
            .share_kernel_pages(self.share_kernel_pages);
        if let Some(c) = self.console {
            b = b.console(BoxedSink(c));
        }
        let mut serials = Vec::new();
        for (i, path) in layers.iter().enumerate() {
            let serial = format!("layer{i}");
            b = b.block(BlockConfig::new(path).read_only(true).serial(&serial));
            serials.push(serial);
        }
        for d in &self.disks {
            b = b.block(
                BlockConfig::new(&d.path)
                    .read_only(d.read_only)
                    .serial(&d.serial),
            );
        }
        for a in &self.kernel_args {
            b = b.append_cmdline(a);
        }
        let mut interfaces = Vec::new();
        for (i, n) in self.network.into_iter().enumerate() {
            let (config, iface) = n.into_parts(network::sandbox_mac(&id, i));
            b = b.net(config);
            interfaces.push(iface);
        }
        let vm = b.vsock(GUEST_CID).rng().build().map_err(vm_build_err)?;
        let vm_built = t0.elapsed();
        let vm = Arc::new(Mutex::new(vm));
        let ended: Ended = Arc::default();

        let deadline = t0 + self.boot_timeout;
        let conn = accept_agent(&vm, &ended, deadline, self.boot_timeout)?;
        let agent_connected = t0.elapsed();
        let hook_vm = Arc::downgrade(&vm);
        let hook_ended = ended.clone();
        let client = AgentClient::connect(
            conn,
            deadline.saturating_duration_since(Instant::now()),
            Some(Box::new(move || vm_gone(&hook_vm, &hook_ended))),
        )
        .map_err(|e| boot_failure(&vm, &ended, "during boot", e))?;

        let main = client
            .start(
                Start {
                    id: 0,
                    rootfs: Rootfs::Layers {
                        layers: serials,
                        upper: Upper::Tmpfs,
                    },
                    process: process.clone(),
                    hostname,
                    hosts: None,
                    resolv_conf: (!self.dns.is_empty()).then(|| network::resolv_conf(&self.dns)),
                    network: interfaces,
                    spec,
                },
                self.stdout,
                self.stderr,
            )
            .map_err(|e| boot_failure(&vm, &ended, "during boot", e))?;
        if !self.stdin {
            main.close_stdin()
                .map_err(|e| boot_failure(&vm, &ended, "during boot", e))?;
        }
        main.wait_started(None)
            .map_err(|e| boot_failure(&vm, &ended, "while starting the process", e))?;

        let first_run = vm
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .boot_times()
            .first_run
            .map(|t| t.saturating_duration_since(t0));
        Ok(Sandbox {
            id,
            main,
            client,
            vm,
            ended,
            stop_signal,
            template: process,
            t0,
            host: HostTimes {
                image_ready,
                vm_built,
                first_run,
                agent_connected,
            },
            _scratch: scratch,
        })
    }
}

/// A [`ConsoleSink`] in a box.
struct BoxedSink(Box<dyn ConsoleSink>);

impl ConsoleSink for BoxedSink {
    fn write(&mut self, data: &[u8]) {
        self.0.write(data)
    }
}

fn check_kvm() -> Result<()> {
    match host::detect_kvm() {
        KvmKind::Hardware => Ok(()),
        KvmKind::Missing => Err(Error::KvmUnusable {
            reason: "/dev/kvm does not exist: load kvm-intel or kvm-amd, or enable nested \
                     virtualization for this VM"
                .into(),
        }),
        KvmKind::Pvm => Err(Error::KvmUnusable {
            reason: "/dev/kvm is served by PVM (Pagetable-based Virtual Machine), which cannot \
                     boot the stock guest kernel; run on hardware-assisted KVM (Intel VT-x or \
                     AMD-V, bare metal or nested), e.g. inside the emulated KVM host with \
                     `cargo xtask run -- run IMAGE`"
                .into(),
        }),
    }
}

fn vm_build_err(e: vmm::Error) -> Error {
    match e {
        vmm::Error::KvmMissing | vmm::Error::KvmPermission(_) | vmm::Error::PvmHost { .. } => {
            Error::KvmUnusable {
                reason: error_chain(&e),
            }
        }
        e => Error::Vm(e),
    }
}

/// Applies the store's answer to a not-found check.
fn image_err(image: &ImageRef, e: StoreError) -> Error {
    let missing = match &e {
        StoreError::Source(SourceError::Missing(_) | SourceError::ReferenceNotFound(_))
        | StoreError::NotPulled { .. }
        | StoreError::Registry(hypercontainer_image::RegistryError::NotFound { .. }) => true,
        StoreError::Source(SourceError::Io { source, .. }) => {
            source.kind() == std::io::ErrorKind::NotFound
        }
        _ => false,
    };
    let image = image.describe();
    if missing {
        Error::ImageNotFound {
            image,
            source: Box::new(e),
        }
    } else {
        Error::Image {
            image,
            source: Box::new(e),
        }
    }
}

fn prepare_image(
    image: &ImageRef,
    store: Option<&ImageStore>,
    pull: &PullOptions,
    scratch: &Scratch,
    overrides: &ProcessOverrides,
) -> Result<(Vec<PathBuf>, hypercontainer_image::ProcessDefaults)> {
    let config;
    let layers = match image {
        ImageRef::Source { .. } | ImageRef::Registry(_) => {
            if let Some(p) = image_path(image) {
                if !p.exists() {
                    return Err(Error::ImageNotFound {
                        image: image.describe(),
                        source: Box::new(StoreError::Source(SourceError::Missing(
                            p.display().to_string(),
                        ))),
                    });
                }
            }
            let opened;
            let store = match store {
                Some(s) => s,
                None => {
                    let root = kernel::cache_dir()?.join("images");
                    opened = ImageStore::open(&root).map_err(|e| Error::Image {
                        image: image.describe(),
                        source: Box::new(e),
                    })?;
                    &opened
                }
            };
            let img = image::import(image, store, pull).map_err(|e| image_err(image, e))?;
            config = img.config.clone();
            layer_files(&img)?
        }
        ImageRef::Imported(img) => {
            config = img.config.clone();
            layer_files(img)?
        }
        ImageRef::Rootfs(dir) => {
            if !dir.is_dir() {
                return Err(Error::ImageNotFound {
                    image: image.describe(),
                    source: Box::new(StoreError::Source(SourceError::Missing(
                        dir.display().to_string(),
                    ))),
                });
            }
            let out = scratch.0.join("rootfs.erofs");
            ErofsBuilder::new()
                .build(dir, &out)
                .map_err(|source| Error::RootfsDisk {
                    path: dir.clone(),
                    source,
                })?;
            config = empty_config();
            vec![out]
        }
    };
    let defaults = hypercontainer_image::process::process_defaults(&config, overrides)
        .map_err(Error::Process)?;
    Ok((layers, defaults))
}

fn image_path(image: &ImageRef) -> Option<&Path> {
    use hypercontainer_image::ImageSource::*;
    match image {
        ImageRef::Source {
            source: OciLayout { path } | OciArchive { path } | DockerArchive { path },
            ..
        } => Some(path),
        _ => None,
    }
}

/// The config of a bare root filesystem: nothing but the defaults.
fn empty_config() -> oci_spec::image::ImageConfiguration {
    oci_spec::image::ImageConfiguration::default()
}

fn layer_files(img: &hypercontainer_image::Image) -> Result<Vec<PathBuf>> {
    img.layers
        .iter()
        .map(|l| {
            l.erofs_path
                .clone()
                .ok_or_else(|| Error::NoLayerImage(l.diff_id.to_string()))
        })
        .collect()
}

/// Why the VM ended, once it did (collected once from the VMM).
#[derive(Debug, Clone)]
struct VmEnd {
    reason: String,
    console: Vec<String>,
}

/// What the sandbox knows about the VM's end.
#[derive(Debug, Default)]
struct Watch {
    /// The outcome, once collected.
    end: Option<VmEnd>,
    /// When the VM was first seen finished.
    finished_at: Option<Instant>,
}

type Ended = Arc<Mutex<Watch>>;

/// How long the connection may still deliver after the VM ended: the
/// device loop may still hold the guest's last output (the process's exit
/// among it), and reaping the VM stops that loop.
const DRAIN: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Collects the VM's outcome if it ended.
fn collect_end(vm: &Mutex<Vm>, ended: &Mutex<Watch>) -> Option<VmEnd> {
    if let Some(e) = lock(ended).end.clone() {
        return Some(e);
    }
    let mut vm = lock(vm);
    if !vm.is_finished() {
        return None;
    }
    let console = vm.console_tail();
    let reason = match vm.wait_timeout(Duration::ZERO) {
        Some(Ok(r)) => format!("the VM ended ({r:?})"),
        // Its console lines are reported separately.
        Some(Err(vmm::Error::GuestPanic { .. })) => "the guest kernel panicked".into(),
        Some(Err(vmm::Error::GuestFault { vcpu, suberror, .. })) => {
            format!("KVM internal error on vCPU {vcpu} (suberror {suberror})")
        }
        Some(Err(e)) => error_chain(&e),
        None => "the VM ended".into(),
    };
    let end = VmEnd { reason, console };
    lock(ended).end = Some(end.clone());
    Some(end)
}

/// The reader's liveness hook: the VM's end, once it has been over for
/// [`DRAIN`].
fn vm_gone(vm: &Weak<Mutex<Vm>>, ended: &Ended) -> Option<String> {
    let vm = vm.upgrade()?;
    if let Some(e) = &lock(ended).end {
        return Some(e.reason.clone());
    }
    if !lock(&vm).is_finished() {
        return None;
    }
    let since = *lock(ended).finished_at.get_or_insert_with(Instant::now);
    if since.elapsed() < DRAIN {
        return None;
    }
    collect_end(&vm, ended).map(|e| e.reason)
}

fn boot_failure(
    vm: &Mutex<Vm>,
    ended: &Mutex<Watch>,
    stage: &'static str,
    e: agent_client::Error,
) -> Error {
    if matches!(e, agent_client::Error::Spawn { .. }) {
        return agent_err(e);
    }
    // Give a dying guest a moment to finish dying, so that the error names
    // the real cause (a kernel panic) rather than a closed connection.
    let until = Instant::now() + Duration::from_secs(2);
    loop {
        if let Some(end) = collect_end(vm, ended) {
            return Error::GuestDied {
                stage,
                reason: end.reason,
                console: end.console,
            };
        }
        if Instant::now() >= until {
            return agent_err(e);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for the agent's vsock connection while watching the VM.
fn accept_agent(
    vm: &Mutex<Vm>,
    ended: &Mutex<Watch>,
    deadline: Instant,
    timeout: Duration,
) -> Result<std::os::unix::net::UnixStream> {
    let listener = {
        let g = lock(vm);
        let host = g
            .vsock()
            .ok_or_else(|| Error::Config("the VM has no vsock device".into()))?;
        host.listen(AGENT_VSOCK_PORT, 1)
            .map_err(|source| Error::Io {
                what: "listening for the agent on vsock".into(),
                source,
            })?
    };
    loop {
        match listener.accept(Duration::from_millis(50)) {
            Ok((s, _port)) => return Ok(s),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(source) => {
                return Err(Error::Io {
                    what: "accepting the agent's vsock connection".into(),
                    source,
                })
            }
        }
        if let Some(end) = collect_end(vm, ended) {
            return Err(Error::GuestDied {
                stage: "during boot",
                reason: end.reason,
                console: end.console,
            });
        }
        if Instant::now() >= deadline {
            return Err(Error::BootTimeout {
                timeout,
                console: lock(vm).console_tail(),
            });
        }
    }
}

/// A sandbox's temporary directory, removed on drop.
#[derive(Debug)]
struct Scratch(PathBuf);

impl Scratch {
    fn new(id: &str) -> Result<Self> {
        let p = std::env::temp_dir().join(format!("hypercontainer-{id}"));
        std::fs::create_dir(&p).map_err(|source| Error::Io {
            what: format!("creating {}", p.display()),
            source,
        })?;
        Ok(Scratch(p))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh random sandbox id (32 hex digits).
fn new_id() -> String {
    let mut b = [0u8; 16];
    // SAFETY: getrandom writes at most `b.len()` bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        // Fall back to time, pid and a counter, hashed.
        use sha2::{Digest, Sha256};
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let mut h = Sha256::new();
        h.update(format!(
            "{:?}{}{}",
            std::time::SystemTime::now(),
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        b.copy_from_slice(&h.finalize()[..16]);
    }
    hex::encode(b)
}

/// Parses a signal as an image's StopSignal gives it: `SIGTERM`, `TERM`
/// or `15`.
pub fn parse_signal(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let name = s.strip_prefix("SIG").unwrap_or(s).to_ascii_uppercase();
    let table: HashMap<&str, i32> = [
        ("HUP", libc::SIGHUP),
        ("INT", libc::SIGINT),
        ("QUIT", libc::SIGQUIT),
        ("KILL", libc::SIGKILL),
        ("USR1", libc::SIGUSR1),
        ("USR2", libc::SIGUSR2),
        ("PIPE", libc::SIGPIPE),
        ("ALRM", libc::SIGALRM),
        ("TERM", libc::SIGTERM),
        ("CHLD", libc::SIGCHLD),
        ("CONT", libc::SIGCONT),
        ("STOP", libc::SIGSTOP),
        ("TSTP", libc::SIGTSTP),
        ("WINCH", libc::SIGWINCH),
        ("PWR", libc::SIGPWR),
        ("SYS", libc::SIGSYS),
    ]
    .into_iter()
    .collect();
    if let Some(n) = table.get(name.as_str()) {
        return Some(*n);
    }
    let rt = name.strip_prefix("RTMIN")?;
    let base = libc::SIGRTMIN();
    if rt.is_empty() {
        return Some(base);
    }
    let off: i32 = rt.strip_prefix('+')?.parse().ok()?;
    (base + off <= libc::SIGRTMAX()).then_some(base + off)
}

#[derive(Debug, Clone, Copy)]
struct HostTimes {
    image_ready: Duration,
    vm_built: Duration,
    first_run: Option<Duration>,
    agent_connected: Duration,
}

/// How long each stage of a sandbox's start took.
///
/// Host times are measured from the `start()` call; guest times are the
/// guest's `CLOCK_BOOTTIME`, i.e. since the guest kernel started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootTimings {
    /// Image resolved, layers ready (host).
    pub image_ready: Duration,
    /// The VM built: memory, vCPUs, devices, kernel loaded (host).
    pub vm_built: Duration,
    /// The first `KVM_RUN` (host).
    pub first_kvm_run: Option<Duration>,
    /// The agent's vsock connection accepted (host).
    pub agent_connected: Duration,
    /// The agent's `main` began (guest clock).
    pub guest_agent_start: Option<Duration>,
    /// The container root filesystem was ready (guest clock).
    pub guest_rootfs_ready: Option<Duration>,
    /// The main process was about to `execve` (guest clock).
    pub guest_process_exec: Option<Duration>,
    /// The host learned that the process started (host).
    pub process_started: Option<Duration>,
    /// The first byte of output of the main process arrived (host), if any
    /// arrived yet.
    pub first_output: Option<Duration>,
}

/// A running sandbox: one VM running one container. See the
/// [module docs](self).
pub struct Sandbox {
    id: String,
    main: ProcessHandle,
    client: AgentClient,
    vm: Arc<Mutex<Vm>>,
    ended: Ended,
    stop_signal: i32,
    template: ProtoProcess,
    t0: Instant,
    host: HostTimes,
    _scratch: Scratch,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Sandbox {
    /// A builder.
    pub fn builder() -> SandboxBuilder {
        SandboxBuilder::default()
    }

    /// The sandbox's id (32 hex digits, random).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The main process's pid in the guest.
    pub fn pid(&self) -> Option<u32> {
        self.main.pid()
    }

    /// The main process's stdout (when [`Output::Piped`]); once.
    pub fn stdout(&self) -> Result<OutputReader> {
        self.main.stdout().map_err(agent_err)
    }

    /// The main process's stderr (when [`Output::Piped`]); once.
    pub fn stderr(&self) -> Result<OutputReader> {
        self.main.stderr().map_err(agent_err)
    }

    /// A writer for the main process's stdin (see
    /// [`SandboxBuilder::stdin`]).
    pub fn stdin(&self) -> StdinWriter {
        self.main.stdin()
    }

    /// Ends the main process's stdin.
    pub fn close_stdin(&self) -> Result<()> {
        self.main.close_stdin().map_err(agent_err)
    }

    /// Resizes the main process's terminal.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        self.main.resize(rows, cols).map_err(agent_err)
    }

    /// Waits for the main process to end: its exit code, or 128 + the
    /// signal that killed it. An error if the guest died first.
    pub fn wait(&self) -> Result<i32> {
        self.main.wait().map_err(|e| self.died(e))
    }

    /// Like [`wait`](Self::wait), giving up after `timeout` with `Ok(None)`.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<i32>> {
        self.main.wait_timeout(timeout).map_err(|e| self.died(e))
    }

    /// The exit status, if the main process ended.
    pub fn try_wait(&self) -> Option<i32> {
        self.main.try_status()
    }

    /// Whether the main process was ended by the kernel's OOM killer (the
    /// container exceeded its memory limit, [`Limits::memory`]); its exit
    /// status is then 137. Docker reports this as `OOMKilled`.
    pub fn oom_killed(&self) -> bool {
        self.main.oom_killed()
    }

    fn died(&self, e: agent_client::Error) -> Error {
        boot_failure(&self.vm, &self.ended, "while the process ran", e)
    }

    /// Sends a signal (Linux number, e.g. `libc::SIGTERM`) to the main process.
    pub fn kill(&self, signal: i32) -> Result<()> {
        self.main.signal(signal).map_err(|e| self.died(e))
    }

    /// Stops the main process: the image's StopSignal (default SIGTERM),
    /// then SIGKILL after `grace`. Returns its exit status. If even SIGKILL
    /// gets no answer in 10 s, the VM is stopped and an error returned.
    pub fn stop(&self, grace: Duration) -> Result<i32> {
        if let Some(s) = self.main.try_status() {
            return Ok(s);
        }
        self.kill(self.stop_signal)?;
        if let Some(s) = self.wait_timeout(grace)? {
            return Ok(s);
        }
        self.kill(libc::SIGKILL)?;
        match self.wait_timeout(Duration::from_secs(10))? {
            Some(s) => Ok(s),
            None => {
                lock(&self.vm).stop();
                Err(Error::GuestDied {
                    stage: "while stopping",
                    reason: "the agent did not report the process's end after SIGKILL; the VM \
                             was stopped"
                        .into(),
                    console: lock(&self.vm).console_tail(),
                })
            }
        }
    }

    /// Runs another process in the container; returns once it started.
    pub fn exec(&self, cmd: Exec) -> Result<Process> {
        let mut p = self.template.clone();
        p.argv = cmd.argv;
        if p.argv.is_empty() {
            return Err(Error::Config("exec needs a command".into()));
        }
        for e in cmd.env {
            let key = e.split_once('=').map_or(e.as_str(), |(k, _)| k).to_string();
            p.env
                .retain(|x| x.split_once('=').map_or(x.as_str(), |(k, _)| k) != key);
            p.env.push(e);
        }
        if let Some(c) = cmd.cwd {
            p.cwd = c;
        }
        if let Some(u) = cmd.user {
            p.user = u;
        }
        p.terminal = cmd.tty.is_some();
        p.window = cmd.tty;
        let h = self
            .client
            .exec(p, cmd.stdout, cmd.stderr)
            .map_err(|e| self.died(e))?;
        if !cmd.stdin {
            h.close_stdin().map_err(|e| self.died(e))?;
        }
        h.wait_started(None).map_err(|e| self.died(e))?;
        Ok(Process { handle: h })
    }

    /// Start timings: host stages, the agent's boot stages, first output.
    pub fn boot_timings(&self) -> BootTimings {
        let stages = self.client.boot_stages();
        let stage = |s: BootStage| stages.iter().find(|r| r.stage == s).map(|r| r.guest_time);
        let since = |t: Option<Instant>| t.map(|t| t.saturating_duration_since(self.t0));
        BootTimings {
            image_ready: self.host.image_ready,
            vm_built: self.host.vm_built,
            first_kvm_run: self.host.first_run,
            agent_connected: self.host.agent_connected,
            guest_agent_start: stage(BootStage::AgentStart),
            guest_rootfs_ready: stage(BootStage::RootfsReady),
            guest_process_exec: stage(BootStage::ProcessExec),
            process_started: since(self.main.started_at()),
            first_output: since(self.main.first_output_at()),
        }
    }

    /// The last lines of the guest's serial console.
    pub fn console_tail(&self) -> Vec<String> {
        lock(&self.vm).console_tail()
    }

    /// Host memory the VMM uses beyond guest RAM, in KiB, for this process
    /// as a whole (see [`vmm::rss_excluding_guest_kib`]).
    pub fn vmm_rss_kib(&self) -> std::io::Result<u64> {
        let vm = lock(&self.vm);
        vmm::rss_excluding_guest_kib(&[&vm])
    }

    /// Whether the VM ended.
    pub fn is_finished(&self) -> bool {
        lock(&self.vm).is_finished()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        lock(&self.vm).stop();
        self.client.close();
        // Fields drop next: the client joins its reader thread, the VM its
        // vCPU and device threads, the scratch directory is removed.
    }
}

/// A process to run in a running sandbox ([`Sandbox::exec`]). Defaults
/// come from the main process: environment, working directory, user.
#[derive(Debug)]
pub struct Exec {
    argv: Vec<String>,
    env: Vec<String>,
    cwd: Option<String>,
    user: Option<String>,
    tty: Option<WindowSize>,
    stdin: bool,
    stdout: Output,
    stderr: Output,
}

impl Exec {
    /// `argv[0]` is looked up in the container's `PATH`.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(argv: I) -> Self {
        Exec {
            argv: argv.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            cwd: None,
            user: None,
            tty: None,
            stdin: false,
            stdout: Output::Piped,
            stderr: Output::Piped,
        }
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl AsRef<str>, value: impl AsRef<str>) -> Self {
        self.env
            .push(format!("{}={}", key.as_ref(), value.as_ref()));
        self
    }

    /// Sets the working directory.
    pub fn workdir(mut self, dir: impl Into<String>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Sets the user.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// Runs on a terminal of `rows` x `cols`.
    pub fn tty(mut self, rows: u16, cols: u16) -> Self {
        self.tty = Some(WindowSize { rows, cols });
        self
    }

    /// Keeps stdin open for [`Process::stdin`].
    pub fn stdin(mut self, open: bool) -> Self {
        self.stdin = open;
        self
    }

    /// Where stdout goes (default piped).
    pub fn stdout(mut self, out: Output) -> Self {
        self.stdout = out;
        self
    }

    /// Where stderr goes (default piped).
    pub fn stderr(mut self, out: Output) -> Self {
        self.stderr = out;
        self
    }
}

/// A process started by [`Sandbox::exec`]. `Send + Sync`.
#[derive(Debug, Clone)]
pub struct Process {
    handle: ProcessHandle,
}

impl Process {
    /// Its pid in the guest.
    pub fn pid(&self) -> Option<u32> {
        self.handle.pid()
    }

    /// Its stdout (when piped); once.
    pub fn stdout(&self) -> Result<OutputReader> {
        self.handle.stdout().map_err(agent_err)
    }

    /// Its stderr (when piped); once.
    pub fn stderr(&self) -> Result<OutputReader> {
        self.handle.stderr().map_err(agent_err)
    }

    /// A writer for its stdin.
    pub fn stdin(&self) -> StdinWriter {
        self.handle.stdin()
    }

    /// Ends its stdin.
    pub fn close_stdin(&self) -> Result<()> {
        self.handle.close_stdin().map_err(agent_err)
    }

    /// Sends a signal.
    pub fn kill(&self, signal: i32) -> Result<()> {
        self.handle.signal(signal).map_err(agent_err)
    }

    /// Resizes its terminal.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        self.handle.resize(rows, cols).map_err(agent_err)
    }

    /// Waits for it to end: exit code or 128 + signal.
    pub fn wait(&self) -> Result<i32> {
        self.handle.wait().map_err(agent_err)
    }

    /// Like [`wait`](Self::wait), giving up after `timeout` with `Ok(None)`.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<i32>> {
        self.handle.wait_timeout(timeout).map_err(agent_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_like_stop_signals() {
        assert_eq!(parse_signal("SIGTERM"), Some(libc::SIGTERM));
        assert_eq!(parse_signal("quit"), Some(libc::SIGQUIT));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal("SIGRTMIN+2"), Some(libc::SIGRTMIN() + 2));
        assert_eq!(parse_signal("0"), None);
        assert_eq!(parse_signal("SIGBOGUS"), None);
    }

    #[test]
    fn builder_validates_before_touching_anything() {
        assert!(matches!(Sandbox::builder().start(), Err(Error::NoImage)));
        let b = || Sandbox::builder().image(ImageRef::Rootfs("/nonexistent".into()));
        assert!(matches!(b().vcpus(0).start(), Err(Error::Config(_))));
        assert!(matches!(b().memory_mib(8).start(), Err(Error::Config(_))));
        let d = Disk {
            path: "/x".into(),
            read_only: true,
            serial: "layer9".into(),
        };
        assert!(matches!(b().disk(d).start(), Err(Error::Config(_))));
    }

    #[test]
    fn handles_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Sandbox>();
        check::<Process>();
        check::<OutputReader>();
        check::<StdinWriter>();
        check::<AgentClient>();
        check::<Error>();
    }

    #[test]
    fn ids_are_unique_hex() {
        let a = new_id();
        let b = new_id();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn missing_kernel_and_agent_say_what_to_run() {
        let dir = tempfile::tempdir().unwrap();
        let e = Sandbox::builder()
            .image(ImageRef::Rootfs(dir.path().into()))
            .kernel(dir.path().join("vmlinux"))
            .agent(dir.path().join("agent"))
            .start()
            .unwrap_err();
        assert!(e.to_string().contains("cargo xtask agent"), "{e}");
    }
}
