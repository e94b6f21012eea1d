//! The messages exchanged by the host and the agent.
//!
//! Every message travels in one frame (see [`crate::codec`]); the type byte
//! of each variant is given by [`Message::type_code`]. Field order in the
//! docs below is also the order on the wire.

use crate::pod::{ContainerId, ContainerStats, Create, Setup};

/// Identifier of one process (and of its stdio streams) in a pod.
///
/// Chosen by the host in [`Create`] and [`Message::Exec`]; unique for the
/// life of the connection (an id is never reused, even after the process
/// exited), across all containers.
pub type ProcessId = u32;

/// Version handshake, sent once by each side as its first message.
///
/// Wire: `version: u32`, `software: string`.
///
/// The agent sends its `Hello` as soon as it is connected; the host answers
/// with its own before sending anything else. A frame whose version differs
/// from [`crate::PROTOCOL_VERSION`] does not decode (it is
/// [`crate::Error::VersionMismatch`]); the agent then reports a
/// [`ErrorKind::Version`] error and closes the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version of the sender.
    pub version: u32,
    /// Free-form name and version of the sending software, for logs.
    pub software: String,
}

impl Hello {
    /// A `Hello` for this crate's [`crate::PROTOCOL_VERSION`].
    pub fn new(software: impl Into<String>) -> Self {
        Self {
            version: crate::PROTOCOL_VERSION,
            software: software.into(),
        }
    }
}

/// Where the container's root filesystem comes from.
///
/// Wire: a tag byte, then the variant's fields: `0` [`Rootfs::Directory`]
/// (`path: string`); `1` [`Rootfs::Layers`] (`layers: [string]`,
/// `upper: Upper`); `2` [`Rootfs::Overlay`] (`lowers: [string]`,
/// `upper: Upper`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rootfs {
    /// An existing directory of the agent's filesystem, bind-mounted and used
    /// as the root as is (host-tier tests, or a rootfs shared into the VM).
    Directory {
        /// Absolute path of the directory.
        path: String,
    },
    /// Read-only layer disks merged by overlayfs under a writable upper
    /// directory.
    Layers {
        /// Block-device serials of the layer disks, lowest layer first (the
        /// order of an OCI manifest). Each disk holds an EROFS or ext4
        /// filesystem (detected by the agent) mounted read-only.
        layers: Vec<String>,
        /// Where writes go.
        upper: Upper,
    },
    /// Existing directories of the agent's filesystem (typically under a
    /// share of [`Setup::shares`]: a `dir:` root, or the unpacked layer
    /// trees of an image that no layer disk holds) used read-only as the
    /// lower layers of an overlay, so that the container's writes never
    /// reach them.
    Overlay {
        /// Absolute paths of the lower directories, lowest layer first (the
        /// order of an OCI manifest); 1 to [`crate::MAX_LOWERS`] of them.
        lowers: Vec<String>,
        /// Where writes go.
        upper: Upper,
    },
}

/// The writable upper layer of an overlay root.
///
/// Wire: a tag byte: `0` [`Upper::Tmpfs`]; `1` [`Upper::Disk`] (`serial: string`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upper {
    /// A tmpfs in guest memory: writes vanish with the VM.
    Tmpfs,
    /// An ext4 disk (by block-device serial); the agent uses directories
    /// `upper` and `work` at its root, creating them when missing.
    Disk {
        /// Block-device serial of the disk.
        serial: String,
    },
}

/// A resource limit kind (`setrlimit(2)`), independent of any libc's numbering.
///
/// Wire: one byte, the discriminant below.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RlimitResource {
    /// `RLIMIT_CPU`
    Cpu = 0,
    /// `RLIMIT_FSIZE`
    Fsize = 1,
    /// `RLIMIT_DATA`
    Data = 2,
    /// `RLIMIT_STACK`
    Stack = 3,
    /// `RLIMIT_CORE`
    Core = 4,
    /// `RLIMIT_RSS`
    Rss = 5,
    /// `RLIMIT_NPROC`
    Nproc = 6,
    /// `RLIMIT_NOFILE`
    Nofile = 7,
    /// `RLIMIT_MEMLOCK`
    Memlock = 8,
    /// `RLIMIT_AS`
    As = 9,
    /// `RLIMIT_LOCKS`
    Locks = 10,
    /// `RLIMIT_SIGPENDING`
    Sigpending = 11,
    /// `RLIMIT_MSGQUEUE`
    Msgqueue = 12,
    /// `RLIMIT_NICE`
    Nice = 13,
    /// `RLIMIT_RTPRIO`
    Rtprio = 14,
    /// `RLIMIT_RTTIME`
    Rttime = 15,
}

impl RlimitResource {
    /// Every resource, in wire order.
    pub const ALL: [RlimitResource; 16] = [
        Self::Cpu,
        Self::Fsize,
        Self::Data,
        Self::Stack,
        Self::Core,
        Self::Rss,
        Self::Nproc,
        Self::Nofile,
        Self::Memlock,
        Self::As,
        Self::Locks,
        Self::Sigpending,
        Self::Msgqueue,
        Self::Nice,
        Self::Rtprio,
        Self::Rttime,
    ];

    /// The resource of a wire byte, if it names one.
    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.get(usize::from(v)).copied()
    }

    /// The OCI runtime-spec name (`RLIMIT_NOFILE`, ...).
    pub fn oci_name(self) -> &'static str {
        match self {
            Self::Cpu => "RLIMIT_CPU",
            Self::Fsize => "RLIMIT_FSIZE",
            Self::Data => "RLIMIT_DATA",
            Self::Stack => "RLIMIT_STACK",
            Self::Core => "RLIMIT_CORE",
            Self::Rss => "RLIMIT_RSS",
            Self::Nproc => "RLIMIT_NPROC",
            Self::Nofile => "RLIMIT_NOFILE",
            Self::Memlock => "RLIMIT_MEMLOCK",
            Self::As => "RLIMIT_AS",
            Self::Locks => "RLIMIT_LOCKS",
            Self::Sigpending => "RLIMIT_SIGPENDING",
            Self::Msgqueue => "RLIMIT_MSGQUEUE",
            Self::Nice => "RLIMIT_NICE",
            Self::Rtprio => "RLIMIT_RTPRIO",
            Self::Rttime => "RLIMIT_RTTIME",
        }
    }

    /// The resource of an OCI runtime-spec name, if it names one.
    pub fn from_oci_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.oci_name() == name)
    }
}

/// One resource limit. `u64::MAX` means unlimited (`RLIM_INFINITY`).
///
/// Wire: `resource: u8`, `soft: u64`, `hard: u64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    /// Which limit.
    pub resource: RlimitResource,
    /// Soft limit.
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

/// A terminal window size.
///
/// Wire: `rows: u16`, `cols: u16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WindowSize {
    /// Rows (lines).
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// Everything the agent needs to start one process.
///
/// Wire, in order: `argv: [string]`, `env: [string]`, `cwd: string`,
/// `user: string`, `additional_groups: [string]`, `rlimits: [Rlimit]`,
/// `umask: option<u32>`, `no_new_privs: bool`, `terminal: bool`,
/// `window: option<WindowSize>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Process {
    /// Program and arguments; `argv[0]` without a `/` is looked up in the
    /// `PATH` of `env` (or a default `PATH`), as a container runtime does.
    /// Must not be empty.
    pub argv: Vec<String>,
    /// Environment, `KEY=value` entries. `HOME` is added from the user's
    /// passwd entry when missing.
    pub env: Vec<String>,
    /// Working directory (absolute, inside the container). Empty means `/`.
    /// A missing directory is an [`ErrorKind::BadCwd`] error before exec.
    pub cwd: String,
    /// `user`, `uid`, `user:group` or `uid:gid`, resolved through the
    /// container's `/etc/passwd` and `/etc/group`. Empty means root. An
    /// unknown name is an [`ErrorKind::BadUser`] error before exec.
    pub user: String,
    /// Extra supplementary groups (names or numeric gids), added to the
    /// groups the user belongs to in `/etc/group`.
    pub additional_groups: Vec<String>,
    /// Resource limits set before exec (besides those of the spec's
    /// `process.rlimits`, which these replace for the same resource).
    pub rlimits: Vec<Rlimit>,
    /// File-mode creation mask; `None` takes the spec's
    /// `process.user.umask`, else `0o022`.
    pub umask: Option<u32>,
    /// Set `PR_SET_NO_NEW_PRIVS` before exec.
    pub no_new_privs: bool,
    /// Run on a pseudo-terminal: stdout and stderr are merged into
    /// [`Message::Stdout`], and [`Message::ResizeTty`] applies.
    pub terminal: bool,
    /// Initial window size of the terminal (ignored without `terminal`).
    pub window: Option<WindowSize>,
}

/// The directory under which the agent mounts the virtio-fs shares of
/// [`Setup::shares`] and [`Create::shares`].
pub const SHARES_DIR: &str = "/run/hypercontainer/shares";

/// Where the agent mounts the virtio-fs device tagged `tag`.
///
/// ```
/// assert_eq!(hypercontainer_protocol::share_mount_point("vols"), "/run/hypercontainer/shares/vols");
/// ```
pub fn share_mount_point(tag: &str) -> String {
    format!("{SHARES_DIR}/{tag}")
}

/// A spec that confines nothing: no new namespaces but the mount namespace
/// the agent always creates, no mounts, capabilities, seccomp, cgroup or
/// masked paths (the container runs with the agent's privileges).
pub fn bare_spec() -> crate::oci::Spec {
    let mut s = crate::oci::Spec::default();
    s.set_process(None)
        .set_root(None)
        .set_hostname(None)
        .set_mounts(None)
        .set_annotations(None)
        .set_linux(None);
    s
}

/// `mac` as Linux shows it (`/sys/class/net/*/address`): lowercase hex
/// pairs joined by colons.
///
/// ```
/// assert_eq!(hypercontainer_protocol::mac_to_string(&[2, 0x48, 0x43, 0, 0xab, 1]), "02:48:43:00:ab:01");
/// ```
pub fn mac_to_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Boot stages reported by the agent, in the order they happen:
/// [`BootStage::AgentStart`], [`BootStage::StartReceived`],
/// [`BootStage::RootfsReady`], [`BootStage::ProcessExec`].
///
/// Wire: one byte, the discriminant below (a stage added later gets the
/// next free value, whatever its place in time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum BootStage {
    /// The agent's `main` began.
    AgentStart = 0,
    /// The root filesystem is mounted and the container's spec checked and
    /// compiled (the main process is forked next).
    RootfsReady = 1,
    /// The main process is about to `execve` (taken in the child, after all
    /// its setup).
    ProcessExec = 2,
    /// The agent received [`Message::Setup`], before anything of it is
    /// applied: from here to [`BootStage::ProcessExec`] is the agent's whole
    /// start-to-exec work (network, root filesystem, the spec's namespaces,
    /// mounts, capabilities, seccomp compilation and cgroup).
    StartReceived = 3,
}

impl BootStage {
    /// The stage of a wire byte, if it names one.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::AgentStart),
            1 => Some(Self::RootfsReady),
            2 => Some(Self::ProcessExec),
            3 => Some(Self::StartReceived),
            _ => None,
        }
    }
}

/// Kind of an error reported by the agent.
///
/// Wire: one byte, the discriminant below; unknown values do not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ErrorKind {
    /// The peer broke the protocol (malformed frame, message out of order);
    /// the connection is closed after this error.
    Protocol = 0,
    /// The peer speaks another protocol version; the connection is closed.
    Version = 1,
    /// A request was not valid in the current state (unknown or reused
    /// process or container id, `Exec` before `Create`, second `Setup`, empty argv); the
    /// connection stays open.
    InvalidRequest = 2,
    /// The root filesystem could not be built (missing disk, mount failure).
    Rootfs = 3,
    /// The user or a group could not be resolved or switched to.
    BadUser = 4,
    /// The working directory does not exist or is not a directory.
    BadCwd = 5,
    /// The executable was not found (exit status 127).
    NotFound = 6,
    /// The executable exists but could not be executed (exit status 126).
    PermissionDenied = 7,
    /// Another failure while setting the process up (rlimits, terminal,
    /// fork, ...).
    Spawn = 8,
    /// A network interface could not be configured (no NIC with the MAC,
    /// address or route refused).
    Network = 9,
}

impl ErrorKind {
    /// The kind of a wire byte, if it names one.
    pub fn from_u8(v: u8) -> Option<Self> {
        use ErrorKind::*;
        [
            Protocol,
            Version,
            InvalidRequest,
            Rootfs,
            BadUser,
            BadCwd,
            NotFound,
            PermissionDenied,
            Spawn,
            Network,
        ]
        .get(usize::from(v))
        .copied()
    }

    /// The exit status the agent reports (in the [`Message::Exited`] that
    /// follows the error) when a process fails to start with this kind:
    /// 127 for [`ErrorKind::NotFound`], 126 for
    /// [`ErrorKind::PermissionDenied`], 125 for every other failure, as
    /// container runtimes do.
    pub fn exit_status(self) -> i32 {
        match self {
            Self::NotFound => 127,
            Self::PermissionDenied => 126,
            _ => 125,
        }
    }
}

/// One message, in either direction. See the crate documentation for the
/// conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Both directions (type `0x01`): version handshake, see [`Hello`].
    Hello(Hello),

    /// Host to agent (type `0x10`): set the pod up (network, shares, host
    /// name, `/etc/hosts`, `/etc/resolv.conf`), see [`Setup`].
    Setup(Box<Setup>),
    /// Host to agent (type `0x16`): create a container and start its main
    /// process, see [`Create`].
    Create(Box<Create>),
    /// Host to agent (type `0x11`): start another process in a running
    /// container. Wire: `id: u32`, `container: u32`, `process: Process`.
    Exec {
        /// Id of the new process.
        id: ProcessId,
        /// The container it joins.
        container: ContainerId,
        /// What to run.
        process: Box<Process>,
    },
    /// Host to agent (type `0x17`): remove a container: kill what still
    /// runs in it (`SIGKILL`), report those exits, then unmount its root
    /// and volumes and delete its cgroup; answered by
    /// [`Message::Removed`]. Wire: `container: u32`.
    Remove {
        /// The container.
        container: ContainerId,
    },
    /// Host to agent (type `0x19`): report a container's resource use;
    /// answered by [`Message::ContainerStats`] (with
    /// [`ContainerStats::exists`] false for a container the agent does not
    /// know). Wire: `container: u32`.
    Stats {
        /// The container.
        container: ContainerId,
    },
    /// Host to agent (type `0x18`): end the pod: kill every process,
    /// report every exit, flush and power the VM off. Wire: empty.
    Shutdown,
    /// Host to agent (type `0x12`): bytes for a process's stdin. Wire:
    /// `id: u32`, `data: bytes`. The host keeps at most
    /// [`crate::STDIN_WINDOW`] bytes per process unacknowledged (see
    /// [`Message::StdinAck`]); exceeding it is a protocol error.
    Stdin {
        /// The process.
        id: ProcessId,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Host to agent (type `0x13`): end of a process's stdin (after the
    /// queued bytes are written). On a terminal, sends the EOF character
    /// (`^D`). Wire: `id: u32`.
    CloseStdin {
        /// The process.
        id: ProcessId,
    },
    /// Host to agent (type `0x14`): send a signal to a process. Wire:
    /// `id: u32`, `signal: i32` (Linux signal number).
    Signal {
        /// The process.
        id: ProcessId,
        /// Linux signal number.
        signal: i32,
    },
    /// Host to agent (type `0x15`): set the window size of a process's
    /// terminal. Wire: `id: u32`, `size: WindowSize`.
    ResizeTty {
        /// The process.
        id: ProcessId,
        /// New size.
        size: WindowSize,
    },

    /// Agent to host (type `0x20`): a boot stage was reached. Wire:
    /// `stage: u8`, `boottime_ns: u64`: the guest's `CLOCK_BOOTTIME`, which
    /// starts at zero when the kernel starts, so the value is the time since
    /// kernel start.
    BootStage {
        /// Which stage.
        stage: BootStage,
        /// `CLOCK_BOOTTIME` at that stage, in nanoseconds.
        boottime_ns: u64,
    },
    /// Agent to host (type `0x21`): a process was executed successfully.
    /// Wire: `id: u32`, `pid: u32` (in the guest's pid namespace).
    Started {
        /// The process.
        id: ProcessId,
        /// Its pid in the guest.
        pid: u32,
    },
    /// Agent to host (type `0x22`): output of a process (stdout; on a
    /// terminal, all output). Wire: `id: u32`, `data: bytes` (at most
    /// [`crate::MAX_DATA_CHUNK`] bytes per frame).
    Stdout {
        /// The process.
        id: ProcessId,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Agent to host (type `0x23`): stderr output of a process. Wire as
    /// [`Message::Stdout`].
    Stderr {
        /// The process.
        id: ProcessId,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Agent to host (type `0x24`): `bytes` more stdin bytes of a process
    /// were written to it (or dropped because it closed its stdin or ended),
    /// returning that much of the host's window. Wire: `id: u32`,
    /// `bytes: u32`.
    StdinAck {
        /// The process.
        id: ProcessId,
        /// Bytes consumed.
        bytes: u32,
    },
    /// Agent to host (type `0x25`): a process ended; always the last message
    /// about that id, sent after all its output. Wire: `id: u32`,
    /// `status: i32`: the exit code, or 128 + signal number when killed by a
    /// signal, or [`ErrorKind::exit_status`] when it failed to start;
    /// `oom_killed: bool`: the container's cgroup recorded an out-of-memory
    /// kill before the process ended (its status is then 137, as Docker
    /// reports `OOMKilled`).
    Exited {
        /// The process.
        id: ProcessId,
        /// Exit status.
        status: i32,
        /// Whether the kernel's OOM killer ended it (or its container).
        oom_killed: bool,
    },
    /// Agent to host (type `0x27`): a container is gone; its id may not be
    /// used again. Wire: `container: u32`.
    Removed {
        /// The container.
        container: ContainerId,
    },
    /// Agent to host (type `0x28`): the answer to [`Message::Stats`], see
    /// [`ContainerStats`].
    ContainerStats(Box<ContainerStats>),
    /// Agent to host (type `0x26`): something failed. Wire: `id: option<u32>`,
    /// `kind: u8`, `message: string`. With an id, the failure is that
    /// process's (it failed to start; an [`Message::Exited`] follows);
    /// without, it concerns the connection ([`ErrorKind::Protocol`] and
    /// [`ErrorKind::Version`] close it, others do not).
    Error {
        /// The process concerned, if any.
        id: Option<ProcessId>,
        /// What kind of failure.
        kind: ErrorKind,
        /// Human-readable description, like a container runtime's.
        message: String,
    },
}

/// The type byte of each message: the one table both directions of the
/// codec use. Host-to-agent messages are below [`code::FIRST_FROM_AGENT`]
/// ([`Message::Hello`] goes both ways).
pub mod code {
    /// [`super::Message::Hello`]
    pub const HELLO: u8 = 0x01;
    /// [`super::Message::Setup`]
    pub const SETUP: u8 = 0x10;
    /// [`super::Message::Exec`]
    pub const EXEC: u8 = 0x11;
    /// [`super::Message::Stdin`]
    pub const STDIN: u8 = 0x12;
    /// [`super::Message::CloseStdin`]
    pub const CLOSE_STDIN: u8 = 0x13;
    /// [`super::Message::Signal`]
    pub const SIGNAL: u8 = 0x14;
    /// [`super::Message::ResizeTty`]
    pub const RESIZE_TTY: u8 = 0x15;
    /// [`super::Message::Create`]
    pub const CREATE: u8 = 0x16;
    /// [`super::Message::Remove`]
    pub const REMOVE: u8 = 0x17;
    /// [`super::Message::Shutdown`]
    pub const SHUTDOWN: u8 = 0x18;
    /// [`super::Message::Stats`]
    pub const STATS: u8 = 0x19;
    /// The first type byte of the agent's messages.
    pub const FIRST_FROM_AGENT: u8 = 0x20;
    /// [`super::Message::BootStage`]
    pub const BOOT_STAGE: u8 = 0x20;
    /// [`super::Message::Started`]
    pub const STARTED: u8 = 0x21;
    /// [`super::Message::Stdout`]
    pub const STDOUT: u8 = 0x22;
    /// [`super::Message::Stderr`]
    pub const STDERR: u8 = 0x23;
    /// [`super::Message::StdinAck`]
    pub const STDIN_ACK: u8 = 0x24;
    /// [`super::Message::Exited`]
    pub const EXITED: u8 = 0x25;
    /// [`super::Message::Error`]
    pub const ERROR: u8 = 0x26;
    /// [`super::Message::Removed`]
    pub const REMOVED: u8 = 0x27;
    /// [`super::Message::ContainerStats`]
    pub const CONTAINER_STATS: u8 = 0x28;
}

impl Message {
    /// The frame type byte of this message (one of [`code`]'s).
    pub fn type_code(&self) -> u8 {
        self.kind().0
    }

    /// The name of this message's type, for logs and errors.
    pub fn name(&self) -> &'static str {
        self.kind().1
    }

    fn kind(&self) -> (u8, &'static str) {
        match self {
            Self::Hello(_) => (code::HELLO, "Hello"),
            Self::Setup(_) => (code::SETUP, "Setup"),
            Self::Exec { .. } => (code::EXEC, "Exec"),
            Self::Stdin { .. } => (code::STDIN, "Stdin"),
            Self::CloseStdin { .. } => (code::CLOSE_STDIN, "CloseStdin"),
            Self::Signal { .. } => (code::SIGNAL, "Signal"),
            Self::ResizeTty { .. } => (code::RESIZE_TTY, "ResizeTty"),
            Self::Create(_) => (code::CREATE, "Create"),
            Self::Remove { .. } => (code::REMOVE, "Remove"),
            Self::Shutdown => (code::SHUTDOWN, "Shutdown"),
            Self::BootStage { .. } => (code::BOOT_STAGE, "BootStage"),
            Self::Started { .. } => (code::STARTED, "Started"),
            Self::Stdout { .. } => (code::STDOUT, "Stdout"),
            Self::Stderr { .. } => (code::STDERR, "Stderr"),
            Self::StdinAck { .. } => (code::STDIN_ACK, "StdinAck"),
            Self::Exited { .. } => (code::EXITED, "Exited"),
            Self::Error { .. } => (code::ERROR, "Error"),
            Self::Removed { .. } => (code::REMOVED, "Removed"),
            Self::Stats { .. } => (code::STATS, "Stats"),
            Self::ContainerStats(_) => (code::CONTAINER_STATS, "ContainerStats"),
        }
    }

    /// Whether the host sends this message (the agent sends the others;
    /// both send [`Message::Hello`]).
    pub fn is_host_to_guest(&self) -> bool {
        self.type_code() < code::FIRST_FROM_AGENT
    }

    /// Whether the agent sends this message.
    pub fn is_guest_to_host(&self) -> bool {
        matches!(self, Self::Hello(_)) || !self.is_host_to_guest()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn mac_strings_match_sysfs() {
        assert_eq!(
            super::mac_to_string(&[2, 0x48, 0x43, 0, 0xab, 1]),
            "02:48:43:00:ab:01"
        );
    }
}
