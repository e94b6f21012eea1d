//! What the host asks of a pod: its setup ([`Setup`], once) and each
//! container ([`Create`]). A one-container sandbox sends both at once
//! ([`Start::into_messages`]).

use crate::message::{Message, Process, ProcessId, Rootfs};

/// Identifier of one container in a pod.
///
/// Chosen by the host in [`Create`]; unique for the life of the connection
/// (an id is never reused, even after [`Message::Removed`]).
pub type ContainerId = u32;

/// Set the pod up: what its containers share.
///
/// Wire, in order: `hostname: string`, `hosts: option<string>`,
/// `resolv_conf: option<string>`, `network: list<Interface>`,
/// `shares: [string]`.
///
/// Accepted once per connection, before any [`Create`]. The agent brings
/// the loopback and the given interfaces up and mounts the shares; a
/// failure is a [`Message::Error`] without id (of kind
/// [`crate::ErrorKind::Network`] or [`crate::ErrorKind::Rootfs`]), after
/// which the agent powers the VM off.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Setup {
    /// Host name of the pod (`sethostname` in each container's UTS
    /// namespace, and its `/etc/hostname`); empty leaves both unchanged.
    pub hostname: String,
    /// Contents written to each container's `/etc/hosts`; `None` keeps the
    /// image's file.
    pub hosts: Option<String>,
    /// Contents written to each container's `/etc/resolv.conf`; `None`
    /// keeps the image's file.
    pub resolv_conf: Option<String>,
    /// Network interfaces (at most [`crate::MAX_INTERFACES`]); the loopback
    /// interface is always brought up in a VM. All containers share the
    /// pod's network, so they reach each other on `localhost`.
    pub network: Vec<crate::Interface>,
    /// Tags of virtio-fs devices the agent mounts at
    /// [`crate::share_mount_point`]`(tag)`; root filesystems and bind
    /// mounts may then name paths under them.
    pub shares: Vec<String>,
}

/// Create a container and start its main process: build its root
/// filesystem, fork the main process into the container's namespaces,
/// set up its mounts and confinement there, and execute it.
///
/// Wire, in order: `container: u32`, `id: u32`, `ends_pod: bool`,
/// `rootfs: Rootfs`, `shares: [string]`, `process: Process`, `spec:
/// string` (the OCI runtime spec as JSON, `config.json`'s format),
/// `hosts: option<string>`.
///
/// Answered by [`Message::Started`] for `id`, or by [`Message::Error`] with
/// `id` and then [`Message::Exited`]. A container id already used is an
/// error without id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Create {
    /// The new container's id.
    pub container: ContainerId,
    /// Id of its main process.
    pub id: ProcessId,
    /// Whether the main process ending ends the pod, as a one-container
    /// sandbox's does: the agent then kills what is left, reports every
    /// exit, sends the main process's [`Message::Exited`] last, flushes
    /// and powers the VM off. Otherwise the container only stops: its
    /// processes' exits are reported and it stays until
    /// [`Message::Remove`].
    pub ends_pod: bool,
    /// The root filesystem.
    pub rootfs: Rootfs,
    /// virtio-fs tags to mount (as [`Setup::shares`]) before the root is
    /// built; a tag already mounted is left as it is.
    pub shares: Vec<String>,
    /// The main process.
    pub process: Process,
    /// How the container is confined, in the OCI runtime spec's own model
    /// (what `runc` reads from a bundle's `config.json`). The agent applies
    /// `process.capabilities`, `process.noNewPrivileges`,
    /// `process.oomScoreAdj`, `root.readonly`, `mounts`, and from `linux`:
    /// `namespaces`, `maskedPaths`, `readonlyPaths`, `seccomp`,
    /// `resources` (a cgroup per container), `sysctl` and `devices`; the
    /// same confinement applies to every [`Message::Exec`] process, which
    /// joins the container's namespaces and cgroup. `process.rlimits` and
    /// `process.user.umask` are defaults for every process: a process's own
    /// [`Process::rlimits`] replace them resource by resource, its
    /// [`Process::umask`] replaces the umask. What runs (argv, env, user,
    /// working directory, terminal) comes from [`Create::process`], and
    /// `spec.process` of those fields is ignored, as are `spec.hostname`
    /// (see [`Setup::hostname`]) and `spec.root.path` (see
    /// [`Create::rootfs`]). A mount namespace is always created; a
    /// network or user namespace cannot be asked for (the VM is the
    /// network boundary, shared by the pod's containers).
    /// [`crate::bare_spec`] confines nothing.
    pub spec: crate::oci::Spec,
    /// Contents of this container's `/etc/hosts`, in place of
    /// [`Setup::hosts`] (e.g. with the names of the pod's other containers,
    /// as Docker's links add them); `None` takes the pod's.
    pub hosts: Option<String>,
}

/// A one-container sandbox: the pod's [`Setup`] and its only container,
/// whose main process ending ends the VM. Not a message of its own: it
/// travels as the two messages of [`Start::into_messages`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    /// Id of the main process (the container's id is [`Start::CONTAINER`]).
    pub id: ProcessId,
    /// The root filesystem.
    pub rootfs: Rootfs,
    /// virtio-fs tags, see [`Setup::shares`].
    pub shares: Vec<String>,
    /// The main process.
    pub process: Process,
    /// See [`Setup::hostname`].
    pub hostname: String,
    /// See [`Setup::hosts`].
    pub hosts: Option<String>,
    /// See [`Setup::resolv_conf`].
    pub resolv_conf: Option<String>,
    /// See [`Setup::network`].
    pub network: Vec<crate::Interface>,
    /// See [`Create::spec`].
    pub spec: crate::oci::Spec,
}

impl Start {
    /// The container id of a one-container sandbox.
    pub const CONTAINER: ContainerId = 1;

    /// The [`Setup`] and [`Create`] (with [`Create::ends_pod`]) it stands
    /// for, in the order they are sent.
    pub fn into_messages(self) -> [Message; 2] {
        let setup = Setup {
            hostname: self.hostname,
            hosts: self.hosts,
            resolv_conf: self.resolv_conf,
            network: self.network,
            shares: self.shares,
        };
        let create = Create {
            container: Self::CONTAINER,
            id: self.id,
            ends_pod: true,
            rootfs: self.rootfs,
            shares: Vec::new(),
            process: self.process,
            spec: self.spec,
            hosts: None,
        };
        [
            Message::Setup(Box::new(setup)),
            Message::Create(Box::new(create)),
        ]
    }
}

/// A container's resource use, measured by the agent when asked
/// ([`Message::Stats`]), with the guest's memory as a whole.
///
/// Wire, in order: `container: u32`, `exists: bool`, `memory_bytes: u64`,
/// `cpu_usec: u64`, `pids: u32`, `guest_memory_total_kib: u64`,
/// `guest_memory_available_kib: u64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ContainerStats {
    /// The container asked about.
    pub container: ContainerId,
    /// Whether the agent knows it; when false, the other container fields
    /// are zero (the guest's are still filled in).
    pub exists: bool,
    /// Memory charged to the container's cgroup (`memory.current`): its
    /// processes' memory, page cache and tmpfs (its writable layer), and
    /// kernel memory.
    pub memory_bytes: u64,
    /// CPU time of the container's processes (`cpu.stat` `usage_usec`).
    pub cpu_usec: u64,
    /// Processes and threads in the container (`pids.current`).
    pub pids: u32,
    /// The guest's memory (`MemTotal` of `/proc/meminfo`).
    pub guest_memory_total_kib: u64,
    /// The guest's memory available to new work (`MemAvailable`).
    pub guest_memory_available_kib: u64,
}
