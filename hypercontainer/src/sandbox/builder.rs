//! [`SandboxBuilder`]: a sandbox's settings, checked, then the start steps.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use hypercontainer_image::{ImageStore, ProcessOverrides};
use hypercontainer_protocol::WindowSize;

use super::image::{ImageRef, PullOptions, PullPolicy};
use super::{
    Disk, Error, Limits, Output, Result, Sandbox, Seccomp, Tmpfs, DEFAULT_BOOT_TIMEOUT,
    DEFAULT_MEMORY_MIB,
};
use crate::network::Network;
use crate::spec::ContainerOptions;
use crate::vmm::{self, ConsoleSink};
use crate::volume::Volume;

/// Configures and starts a [`Sandbox`]. See the [module docs](super).
pub struct SandboxBuilder {
    pub(super) image: Option<ImageRef>,
    pub(super) store: Option<ImageStore>,
    pub(super) pull: PullOptions,
    pub(super) overrides: ProcessOverrides,
    pub(super) vcpus: u32,
    pub(super) memory_mib: u64,
    pub(super) share_kernel_pages: bool,
    pub(super) hostname: Option<String>,
    pub(super) stdin: bool,
    pub(super) tty: Option<WindowSize>,
    pub(super) disks: Vec<Disk>,
    pub(super) kernel: Option<PathBuf>,
    pub(super) agent: Option<PathBuf>,
    pub(super) stdout: Output,
    pub(super) stderr: Output,
    pub(super) console: Option<Box<dyn ConsoleSink>>,
    pub(super) kernel_args: Vec<String>,
    pub(super) network: Network,
    pub(super) dns: Vec<std::net::IpAddr>,
    pub(super) boot_timeout: Duration,
    pub(super) container: ContainerOptions,
    pub(super) volumes: Vec<Volume>,
    pub(super) data_dir: Option<PathBuf>,
    pub(super) rootfs_writable: bool,
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
            network: Network::none(),
            dns: Vec::new(),
            boot_timeout: DEFAULT_BOOT_TIMEOUT,
            container: ContainerOptions::default(),
            volumes: Vec::new(),
            data_dir: None,
            rootfs_writable: false,
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
    /// (default on); see [`VmBuilder::share_kernel_pages`](crate::vmm::VmBuilder::share_kernel_pages).
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

    /// The guest kernel (default: [`kernel::default_kernel`](crate::kernel::default_kernel)).
    pub fn kernel(mut self, path: impl Into<PathBuf>) -> Self {
        self.kernel = Some(path.into());
        self
    }

    /// The agent binary (default: [`guest::default_agent`](crate::guest::default_agent)).
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

    /// The sandbox's network (default: [`Network::none`], loopback only):
    /// [`Network::user`] for rootless networking through passt, with
    /// published ports, or [`Network::tap`] for a tap wired up by the
    /// caller. See [`crate::network`].
    pub fn network(mut self, network: impl Into<Network>) -> Self {
        self.network = network.into();
        self
    }

    /// Adds a DNS server written to the container's `/etc/resolv.conf`
    /// (default: in user mode [`USER_DNS_IPV4`](crate::network::USER_DNS_IPV4),
    /// forwarded to the host's resolver; otherwise the image's file is
    /// kept).
    pub fn dns(mut self, server: std::net::IpAddr) -> Self {
        self.dns.push(server);
        self
    }

    /// Appends an argument to the guest kernel's command line (after
    /// [`SANDBOX_CMDLINE`](super::SANDBOX_CMDLINE)), e.g. `loglevel=7` to see the kernel's boot
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

    /// Mounts a host directory or a named volume into the container
    /// (`docker run -v`); see [`crate::volume`]. Any number of volumes
    /// share one virtio-fs device.
    pub fn volume(mut self, volume: Volume) -> Self {
        self.volumes.push(volume);
        self
    }

    /// Where named volumes live (default [`crate::volume::default_data_dir`]).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// With a `dir:` image ([`ImageRef::Rootfs`]): let the container write
    /// to the directory itself, as runc does with a bundle's rootfs. By
    /// default the directory is shared read-only and the container's
    /// writes go to a tmpfs overlay that vanishes with the sandbox. Has no
    /// effect on images made of layers.
    pub fn rootfs_writable(mut self, on: bool) -> Self {
        self.rootfs_writable = on;
        self
    }

    pub(super) fn validate(&self) -> Result<()> {
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
        self.network.validate()?;
        if let Some(h) = &self.hostname {
            if h.len() > 64 || h.contains(['/', '\0']) {
                return Err(Error::Config(format!("invalid host name {h:?}")));
            }
        }
        for v in &self.volumes {
            v.validate()?;
        }
        crate::volume::check_unique(
            self.volumes
                .iter()
                .map(Volume::destination)
                .chain(self.container.tmpfs.iter().map(|t| t.path.as_str()))
                // A bad tmpfs path is the spec's error, reported at start.
                .filter(|p| crate::volume::normalize_destination(p).is_ok()),
        )?;
        Ok(())
    }

    /// Validates the settings, prepares the image, boots the VM and starts
    /// the process. Returns once the process runs (or with the reason it
    /// could not be started).
    pub fn start(self) -> Result<Sandbox> {
        super::start::start(self)
    }

    /// Sets a resource limit of every process of the container (`docker
    /// run --ulimit nofile=1024:2048`; parse one with `"nofile=1024:2048"
    /// .parse::<Ulimit>()`). It replaces the default of that resource
    /// ([`crate::spec::DEFAULT_ULIMITS`]: `nofile` 1024:524288, what
    /// current Docker gives; every other limit is the guest kernel's
    /// default); a later call for the same resource wins.
    pub fn ulimit(mut self, ulimit: crate::spec::Ulimit) -> Self {
        self.container.ulimits.push(ulimit);
        self
    }
}
