//! [`PodBuilder`]: a pod's VM-wide settings, checked, then the boot steps.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use hypercontainer_image::ImageStore;

use super::Pod;
use crate::network::Network;
use crate::sandbox::{
    Disk, Error, ImageRef, PullOptions, PullPolicy, Result, DEFAULT_BOOT_TIMEOUT,
    DEFAULT_MEMORY_MIB,
};
use crate::vmm::{self, ConsoleSink};
use crate::volume::Volume;

/// Configures and starts a [`Pod`]. See the [module docs](super).
pub struct PodBuilder {
    pub(crate) vcpus: u32,
    pub(crate) memory_mib: u64,
    pub(crate) share_kernel_pages: bool,
    pub(crate) hostname: Option<String>,
    pub(crate) network: Network,
    pub(crate) dns: Vec<IpAddr>,
    pub(crate) hosts: Vec<(String, IpAddr)>,
    pub(crate) write_hosts: bool,
    pub(crate) confirm_setup: bool,
    pub(crate) share_pid: bool,
    pub(crate) volumes: Vec<Volume>,
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) preload: Vec<ImageRef>,
    pub(crate) late_images: bool,
    pub(crate) store: Option<ImageStore>,
    pub(crate) pull: PullOptions,
    pub(crate) disks: Vec<Disk>,
    pub(crate) kernel: Option<PathBuf>,
    pub(crate) agent: Option<PathBuf>,
    pub(crate) console: Option<Box<dyn ConsoleSink>>,
    pub(crate) kernel_args: Vec<String>,
    pub(crate) boot_timeout: Duration,
}

impl std::fmt::Debug for PodBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodBuilder")
            .field("vcpus", &self.vcpus)
            .field("memory_mib", &self.memory_mib)
            .field("hostname", &self.hostname)
            .field("preload", &self.preload)
            .field("share_pid", &self.share_pid)
            .finish_non_exhaustive()
    }
}

impl Default for PodBuilder {
    fn default() -> Self {
        Self {
            vcpus: 1,
            memory_mib: DEFAULT_MEMORY_MIB,
            share_kernel_pages: true,
            hostname: None,
            network: Network::none(),
            dns: Vec::new(),
            hosts: Vec::new(),
            write_hosts: true,
            confirm_setup: true,
            share_pid: false,
            volumes: Vec::new(),
            data_dir: None,
            preload: Vec::new(),
            late_images: true,
            store: None,
            pull: PullOptions::default(),
            disks: Vec::new(),
            kernel: None,
            agent: None,
            console: None,
            kernel_args: Vec::new(),
            boot_timeout: DEFAULT_BOOT_TIMEOUT,
        }
    }
}

impl PodBuilder {
    /// Number of vCPUs (default 1).
    pub fn vcpus(mut self, n: u32) -> Self {
        self.vcpus = n;
        self
    }

    /// Guest memory in MiB, for all containers together (default
    /// [`DEFAULT_MEMORY_MIB`]).
    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Share the guest kernel's and agent initramfs's unmodified pages with
    /// other VMs (default on); see
    /// [`VmBuilder::share_kernel_pages`](crate::vmm::VmBuilder::share_kernel_pages).
    pub fn share_kernel_pages(mut self, on: bool) -> Self {
        self.share_kernel_pages = on;
        self
    }

    /// The pod's host name, which every container has (default: derived
    /// from the pod id).
    pub fn hostname(mut self, name: impl Into<String>) -> Self {
        self.hostname = Some(name.into());
        self
    }

    /// The pod's network, shared by all its containers (default
    /// [`Network::none`]); see [`crate::network`].
    pub fn network(mut self, network: impl Into<Network>) -> Self {
        self.network = network.into();
        self
    }

    /// Adds a DNS server to every container's `/etc/resolv.conf` (default:
    /// as [`SandboxBuilder::dns`](crate::SandboxBuilder::dns)).
    pub fn dns(mut self, server: IpAddr) -> Self {
        self.dns.push(server);
        self
    }

    /// Adds a line `IP NAME` to every container's `/etc/hosts` (`docker run
    /// --add-host`; a peer outside the pod by its address).
    ///
    /// Every container of a pod gets the pod's `/etc/hosts`: `localhost`
    /// (IPv4 and IPv6), the pod's host name on its first address (or
    /// `127.0.1.1` without a NIC), these entries in order, then
    /// `127.0.0.1 NAME` for each container of the pod created before it
    /// and itself: the containers share one network, so a container
    /// reaches the earlier ones by name, as Docker's links do.
    pub fn add_host(mut self, name: impl Into<String>, ip: IpAddr) -> Self {
        self.hosts.push((name.into(), ip));
        self
    }

    /// Whether the containers share one PID namespace, the agent's (as
    /// Kubernetes' `shareProcessNamespace`; default off: each container has
    /// its own and its main process is PID 1 there). The containers of a
    /// pod always share the IPC namespace, as in a Kubernetes pod.
    pub fn share_pid(mut self, on: bool) -> Self {
        self.share_pid = on;
        self
    }

    /// Adds a volume mounted in every container of the pod (virtio-mmio
    /// devices cannot be added to a running VM, but shares can: a
    /// container's own volumes are given in its
    /// [`ContainerSpec::volume`](crate::container::ContainerSpec::volume)).
    pub fn volume(mut self, volume: Volume) -> Self {
        self.volumes.push(volume);
        self
    }

    /// Where named volumes live (default [`crate::volume::default_data_dir`]).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// An image whose containers will run in the pod, imported (or pulled)
    /// before the VM boots: its layers become read-only EROFS disks,
    /// mounted once in the guest and shared by every container of the
    /// image, through the guest's page cache. Images first named in
    /// [`Pod::create`] reach the guest over virtio-fs instead (see the
    /// [module docs](super)).
    pub fn preload(mut self, image: ImageRef) -> Self {
        self.preload.push(image);
        self
    }

    /// Whether containers may use images the pod did not preload (default
    /// on): the pod then has a virtio-fs device from boot, and the image
    /// store keeps each layer's unpacked tree beside its EROFS image.
    pub fn late_images(mut self, on: bool) -> Self {
        self.late_images = on;
        self
    }

    /// The image store (default: `<cache>/images`, see
    /// [`crate::kernel::cache_dir`]). For images imported after boot it
    /// must keep layer trees ([`hypercontainer_image::ImageStoreBuilder::keep_trees`]);
    /// the default store is opened so.
    pub fn image_store(mut self, store: ImageStore) -> Self {
        self.store = Some(store);
        self
    }

    /// When registry images are pulled (default [`PullPolicy::Missing`]).
    pub fn pull_policy(mut self, policy: PullPolicy) -> Self {
        self.pull.policy = policy;
        self
    }

    /// How registries are reached (default:
    /// [`hypercontainer_image::ClientOptions::new`]).
    pub fn registry(mut self, options: hypercontainer_image::ClientOptions) -> Self {
        self.pull.client = options;
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

    /// Sends the guest's serial console to a writer (default: discarded;
    /// the last lines are kept for error reports).
    pub fn console_writer(mut self, w: impl Write + Send + 'static) -> Self {
        self.console = Some(Box::new(vmm::WriterSink(w)));
        self
    }

    /// Appends an argument to the guest kernel's command line.
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

    pub(crate) fn validate(&self) -> Result<()> {
        if self.vcpus == 0 {
            return Err(Error::Config("a VM needs at least one vCPU".into()));
        }
        if self.memory_mib < 64 {
            return Err(Error::Config(format!(
                "{} MiB of memory is too little for a VM: give at least 64",
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
            check_host_name(h)?;
        }
        for (name, _) in &self.hosts {
            if name.is_empty() || name.len() > 253 || name.contains(char::is_whitespace) {
                return Err(Error::Config(format!(
                    "host entry {name:?} must be a non-empty name without spaces"
                )));
            }
        }
        for v in &self.volumes {
            v.validate()?;
        }
        crate::volume::check_unique(self.volumes.iter().map(Volume::destination))?;
        Ok(())
    }

    /// Validates the settings, imports the preloaded images, boots the VM
    /// and sets the pod up in the guest. Returns once the agent has done so.
    pub fn start(self) -> Result<Pod> {
        super::boot::start(self)
    }
}

/// A host name the guest can take.
pub(crate) fn check_host_name(h: &str) -> Result<()> {
    if h.len() > 64 || h.contains(['/', '\0']) || h.contains(char::is_whitespace) {
        return Err(Error::Config(format!("invalid host name {h:?}")));
    }
    Ok(())
}
