//! Sandboxes: an image's process running in its own microVM.
//!
//! [`Sandbox::builder`] takes an image ([`ImageRef`]) and the process's
//! overrides, VM size and stdio settings; [`SandboxBuilder::start`]
//! resolves the image through the [image store](hypercontainer_image),
//! boots a VM with one read-only virtio-blk disk per image layer (EROFS), a
//! vsock device and an entropy device, with the [agent](crate::guest) as
//! PID 1, and asks the agent to mount the layers under a writable tmpfs
//! upper and run the process. With [`SandboxBuilder::network`] the VM
//! also gets a virtio-net device, through a passt of its own or on a host
//! tap, configured in the guest by the agent (see [`crate::network`]). Volumes
//! ([`SandboxBuilder::volume`], see [`crate::volume`]) and a `dir:` root
//! filesystem are shares of one virtio-fs device, mounted by the agent
//! before the process starts. The returned [`Sandbox`] streams the
//! process's output, forwards stdin and signals, runs more processes
//! ([`Sandbox::exec`]) and reports the exit status.
//!
//! A sandbox is a [`Pod`](crate::pod) of one container whose end ends the
//! VM: [`Sandbox::pod`] and [`Sandbox::container`] give the two, for what
//! only they offer.
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

mod builder;
mod exit_status;
pub(crate) mod id;
pub(crate) mod image;
mod process;
pub(crate) mod signal;
mod start;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hypercontainer_image::StoreError;
use hypercontainer_protocol::{BootStage, ErrorKind};

use crate::agent_client::{self, OutputReader, ProcessHandle, StdinWriter};
use crate::container::Container;
use crate::guest::AgentError;
use crate::kernel::KernelError;
use crate::pod::Pod;
use crate::spec;
use crate::vmm;

pub use crate::agent_client::Output;
pub use crate::spec::{Limits, Seccomp, Tmpfs, Ulimit};
/// The image store and image sources, re-exported for [`SandboxBuilder::image_store`]
/// and [`ImageRef::Source`].
pub use hypercontainer_image::{Image, ImageSource, ImageStore};

pub use crate::pod::FS_TAG;
pub use builder::SandboxBuilder;
pub use image::{ImageRef, ParseImageRefError, PullOptions, PullPolicy};
pub use process::{Exec, Process};
pub use signal::parse_signal;

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
    /// An imported layer has no unpacked tree, which an image the pod did
    /// not preload needs: open the store with
    /// [`keep_trees`](hypercontainer_image::ImageStoreBuilder::keep_trees),
    /// or preload the image.
    #[error(
        "layer {0} has no unpacked tree: preload the image (PodBuilder::preload) or give the pod \
         an image store that keeps trees"
    )]
    NoLayerTree(String),
    /// The pod was dropped or its VM ended; the container is gone with it.
    #[error("the pod is gone (dropped, or its VM ended)")]
    PodGone,
    /// The container is not in a state that allows the call.
    #[error("container {container} {state}")]
    ContainerState {
        /// The container's name.
        container: String,
        /// Its state, and what to do (e.g. "is not started: call start").
        state: &'static str,
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
    /// A volume is invalid, or its host directory is missing or cannot be
    /// created (the message says which).
    #[error(transparent)]
    Volume(#[from] crate::volume::VolumeError),
    /// The image has more layers than the VM has device slots beside the
    /// sandbox's other devices.
    #[error(
        "{needed} virtio devices are needed ({layers} image layers and {others} others) but a VM          has {max}: use an image with fewer layers (e.g. squash it), or fewer disks and NICs"
    )]
    TooManyDevices {
        /// Devices needed.
        needed: usize,
        /// Of which image layers.
        layers: usize,
        /// Of which the others (vsock, rng, virtio-fs, disks, NICs).
        others: usize,
        /// Device slots of a VM.
        max: usize,
    },
    /// The network's settings are invalid, or its host side could not be
    /// set up (the message says what to do).
    #[error(transparent)]
    Network(#[from] crate::network::Error),
    /// The container's confinement settings are invalid, or the seccomp
    /// profile is missing or malformed (the message says what to do).
    #[error("the container's confinement")]
    Spec(#[source] spec::Error),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn agent_err(e: agent_client::Error) -> Error {
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
    /// The agent received the start request (guest clock); from here to
    /// [`BootTimings::guest_process_exec`] is the agent's start-to-exec
    /// work (root filesystem, namespaces, mounts, capabilities, seccomp,
    /// cgroup).
    pub guest_start_received: Option<Duration>,
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

/// A running sandbox: one VM running one container, a [`Pod`] whose only
/// container's end ends the VM. See the [module docs](self).
pub struct Sandbox {
    handle: ProcessHandle,
    main: Container,
    pod: Pod,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("id", &self.pod.id())
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
        self.pod.id()
    }

    /// The pod the sandbox is: its VM-wide calls.
    pub fn pod(&self) -> &Pod {
        &self.pod
    }

    /// The sandbox's container.
    pub fn container(&self) -> &Container {
        &self.main
    }

    /// The main process's pid in the guest.
    pub fn pid(&self) -> Option<u32> {
        self.handle.pid()
    }

    /// The ports published on the host ([`UserNetwork::publish`]), as
    /// bound: a host port 0 shows the port chosen.
    ///
    /// [`UserNetwork::publish`]: crate::network::UserNetwork::publish
    pub fn ports(&self) -> &[crate::network::PublishedPort] {
        self.pod.ports()
    }

    /// Why the sandbox's network went down while it ran, if it did (in
    /// user mode: passt ended, e.g. killed). The sandbox runs on; only its
    /// NIC has no other end.
    pub fn network_error(&self) -> Option<crate::network::Error> {
        self.pod.network_error()
    }

    /// The pid of the sandbox's passt on the host (user mode), e.g. to
    /// account for its resources.
    pub fn passt_pid(&self) -> Option<u32> {
        self.pod.passt_pid()
    }

    /// The main process's stdout (when [`Output::Piped`]); once.
    pub fn stdout(&self) -> Result<OutputReader> {
        self.handle.stdout().map_err(agent_err)
    }

    /// The main process's stderr (when [`Output::Piped`]); once.
    pub fn stderr(&self) -> Result<OutputReader> {
        self.handle.stderr().map_err(agent_err)
    }

    /// A writer for the main process's stdin (see
    /// [`SandboxBuilder::stdin`]).
    pub fn stdin(&self) -> StdinWriter {
        self.handle.stdin()
    }

    /// Ends the main process's stdin.
    pub fn close_stdin(&self) -> Result<()> {
        self.handle.close_stdin().map_err(agent_err)
    }

    /// Resizes the main process's terminal.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        self.handle.resize(rows, cols).map_err(agent_err)
    }

    /// Waits for the main process to end: its exit code, or 128 + the
    /// signal that killed it. An error if the guest died first.
    pub fn wait(&self) -> Result<i32> {
        self.main.wait()
    }

    /// Like [`wait`](Self::wait), giving up after `timeout` with `Ok(None)`.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<i32>> {
        self.main.wait_timeout(timeout)
    }

    /// The exit status, if the main process ended.
    pub fn try_wait(&self) -> Option<i32> {
        self.handle.try_status()
    }

    /// Whether the main process was ended by the kernel's OOM killer (the
    /// container exceeded its memory limit, [`Limits::memory`]); its exit
    /// status is then 137. Docker reports this as `OOMKilled`.
    pub fn oom_killed(&self) -> bool {
        self.handle.oom_killed()
    }

    /// Sends a signal (Linux number, e.g. `libc::SIGTERM`) to the main process.
    pub fn kill(&self, signal: i32) -> Result<()> {
        self.main.kill(signal)
    }

    /// Stops the main process: the image's StopSignal (default SIGTERM),
    /// then SIGKILL after `grace`. Returns its exit status. If even SIGKILL
    /// gets no answer in 10 s, the VM is stopped and an error returned.
    pub fn stop(&self, grace: Duration) -> Result<i32> {
        self.main.stop(grace)
    }

    /// Runs another process in the container; returns once it started.
    pub fn exec(&self, cmd: Exec) -> Result<Process> {
        self.main.exec(cmd)
    }

    /// The container's resource use and the guest's memory, from the agent.
    pub fn stats(&self) -> Result<crate::container::ContainerStats> {
        self.main.stats()
    }

    /// Start timings: host stages, the agent's boot stages, first output.
    pub fn boot_timings(&self) -> BootTimings {
        let inner = &self.pod.inner;
        let stages = inner.client.boot_stages();
        let stage = |s: BootStage| stages.iter().find(|r| r.stage == s).map(|r| r.guest_time);
        let since = |t: Option<Instant>| t.map(|t| t.saturating_duration_since(inner.t0));
        let (started, first_output) = self.main.main_times();
        BootTimings {
            image_ready: inner.host.image_ready,
            vm_built: inner.host.vm_built,
            first_kvm_run: inner.host.first_run,
            agent_connected: inner.host.agent_connected,
            guest_agent_start: stage(BootStage::AgentStart),
            guest_start_received: stage(BootStage::StartReceived),
            guest_rootfs_ready: stage(BootStage::RootfsReady),
            guest_process_exec: stage(BootStage::ProcessExec),
            process_started: since(started),
            first_output: since(first_output),
        }
    }

    /// The last lines of the guest's serial console.
    pub fn console_tail(&self) -> Vec<String> {
        self.pod.console_tail()
    }

    /// Host memory the VMM uses beyond guest RAM, in KiB, for this process
    /// as a whole (see [`vmm::rss_excluding_guest_kib`]).
    pub fn vmm_rss_kib(&self) -> std::io::Result<u64> {
        self.pod.vmm_rss_kib()
    }

    /// Whether the VM ended.
    pub fn is_finished(&self) -> bool {
        self.pod.is_finished()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        use crate::volume::{Volume, VolumeError};
        let v = || Volume::bind("/srv", "/data");
        assert!(matches!(
            b().volume(v()).tmpfs(Tmpfs::new("/data/")).start(),
            Err(Error::Volume(VolumeError::DuplicateDestination(_)))
        ));
        assert!(matches!(
            b().volume(Volume::bind("srv", "/data")).start(),
            Err(Error::Volume(VolumeError::RelativeSource(_)))
        ));
        assert!(matches!(
            b().volume(Volume::named("x", "/data")).start(),
            Err(Error::Volume(VolumeError::Name(_)))
        ));
    }

    #[test]
    fn handles_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Sandbox>();
        check::<Process>();
        check::<OutputReader>();
        check::<StdinWriter>();
        check::<crate::agent_client::AgentClient>();
        check::<Error>();
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
