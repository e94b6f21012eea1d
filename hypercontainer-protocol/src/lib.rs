//! The protocol between a HyperContainer host and its in-VM agent.
//!
//! One module shared by both sides, so that they cannot drift: the
//! [`Message`] types, their binary [`codec`], the framing and the
//! [`PROTOCOL_VERSION`].
//!
//! # Transport
//!
//! Inside a VM, the agent (PID 1) connects over `AF_VSOCK` to the host
//! (CID [`HOST_CID`]) on port [`AGENT_VSOCK_PORT`]; one stream connection
//! carries everything. Where the VMM has no vsock, the kernel command line
//! option `hypercontainer.agent_console=<name>` makes the agent use the
//! virtio console `/dev/<name>` in raw mode instead. In host-tier tests the
//! agent is given an already connected stream socket. All processes and their stdio streams
//! are multiplexed over that one connection, keyed by a [`ProcessId`] the
//! host chooses.
//!
//! # Frames
//!
//! `len: u32 LE`, then `len` bytes: a type byte and the payload. `len` is
//! between 1 and [`MAX_FRAME_LEN`] (1 MiB); see [`codec`] for the payload
//! encoding. A frame that is oversized, truncated, of unknown type or with a
//! malformed payload is a [`codec::Error`]: the receiver reports it (the
//! agent sends [`Message::Error`] of kind [`ErrorKind::Protocol`]) and
//! closes the connection. Decoding never panics on any input.
//!
//! Why a hand-written binary payload rather than JSON: the hot messages are
//! stdio chunks, which stay raw bytes (no escaping or base64), and every
//! length is checked against the frame before allocation, so the decoder's
//! cost is bounded by the frame size and easy to fuzz. The one exception is
//! the container's confinement in [`Create::spec`]: it is the OCI runtime
//! spec ([`oci::Spec`], the `oci-spec` crate's model of runc's
//! `config.json`), carried as its standard JSON inside a `string` field, so
//! that what an OCI bundle, a containerd shim or the SDK asks for reaches
//! the agent in one well-known format.
//!
//! # Conversation
//!
//! 1. The agent connects and sends [`Message::Hello`], then a
//!    [`Message::BootStage`] for [`BootStage::AgentStart`]. The host sends
//!    nothing before it has received the agent's hello (on a console
//!    transport, earlier bytes may be mangled by the terminal and are
//!    discarded), then answers with its own [`Message::Hello`]; the agent
//!    accepts nothing else first. A version mismatch ends the connection
//!    with an [`ErrorKind::Version`] error.
//! 2. The host sends [`Message::Setup`] (once): the agent reports
//!    [`BootStage::StartReceived`], brings the pod's network up and mounts
//!    its shares. A failure is a [`Message::Error`] without id, and the
//!    agent powers the VM off.
//! 3. For each container, the host sends [`Message::Create`] with a new
//!    [`ContainerId`] and the main process's id. The agent builds the root
//!    filesystem and checks the container's spec
//!    ([`BootStage::RootfsReady`], for the first container), then forks
//!    the main process into the container's namespaces, where it sets up
//!    its mounts and confinement and executes: [`BootStage::ProcessExec`]
//!    (first container) and [`Message::Started`], or [`Message::Error`]
//!    with the process id followed by [`Message::Exited`] with
//!    [`ErrorKind::exit_status`] (127 for an executable not found, 126
//!    when not executable, 125 for a bad user, working directory, root
//!    filesystem or other setup failure). A one-container sandbox sends
//!    its [`Start`] as the two messages of [`Start::into_messages`].
//! 4. While containers run, the host may send [`Message::Exec`] (another
//!    process in a running container, same lifecycle as a main one),
//!    [`Message::Stdin`], [`Message::CloseStdin`], [`Message::Signal`],
//!    [`Message::ResizeTty`], more [`Message::Create`]s and
//!    [`Message::Remove`]; the agent sends [`Message::Stdout`],
//!    [`Message::Stderr`], [`Message::StdinAck`] and, when a process ends
//!    and its output has been sent, [`Message::Exited`] (exit code, or
//!    128 + signal number). Messages for a process that already ended are
//!    ignored; for a process or container id never used they get an
//!    [`ErrorKind::InvalidRequest`] error without id.
//! 5. A container's main process ending stops that container (its other
//!    processes are killed and their exits reported); the container keeps
//!    its root until [`Message::Remove`], answered by
//!    [`Message::Removed`]. When the main process of a container created
//!    with [`Create::ends_pod`] ends, or on [`Message::Shutdown`], the
//!    agent kills every remaining process, reports their exits (that main
//!    process's last), flushes the connection, syncs the filesystems and
//!    powers the VM off.
//!
//! # Back-pressure
//!
//! - Agent to host: the agent keeps a bounded output queue
//!   ([`AGENT_OUTPUT_QUEUE`]); while it is full, it stops reading the
//!   processes' output, so a host that reads slowly slows the processes
//!   down (they block writing to their pipe) instead of growing memory.
//!   The host must read the connection continuously (it may buffer per
//!   process, or apply its own limits).
//! - Host to agent: stdin is credit-based, per process. The host may have
//!   at most [`STDIN_WINDOW`] bytes of a process's stdin sent and not yet
//!   acknowledged by [`Message::StdinAck`]; the agent acknowledges bytes as
//!   they are written into the process. A process that does not read its
//!   stdin therefore never blocks the connection (signals and other
//!   processes still get through). Exceeding the window is a protocol error.
//!
//! # Example
//!
//! ```
//! use hypercontainer_protocol::{codec, Message, Hello};
//!
//! let mut wire = Vec::new();
//! codec::write_message(&mut wire, &Message::Hello(Hello::new("host"))).unwrap();
//! codec::write_message(&mut wire, &Message::Signal { id: 1, signal: 15 }).unwrap();
//!
//! let mut reader = &wire[..];
//! assert!(matches!(codec::read_message(&mut reader).unwrap(), Some(Message::Hello(_))));
//! assert_eq!(
//!     codec::read_message(&mut reader).unwrap(),
//!     Some(Message::Signal { id: 1, signal: 15 })
//! );
//! assert_eq!(codec::read_message(&mut reader).unwrap(), None);
//! ```

#![warn(missing_docs)]

pub mod codec;
pub mod message;
pub mod net;
pub mod pod;

/// The OCI runtime spec types ([`oci_spec::runtime`]) used by [`Create::spec`].
pub use oci_spec::runtime as oci;

pub use codec::{Error, FrameDecoder, Result};
pub use message::{bare_spec, mac_to_string, share_mount_point, SHARES_DIR};
pub use message::{
    BootStage, ErrorKind, Hello, Message, Process, ProcessId, Rlimit, RlimitResource, Rootfs,
    Upper, WindowSize,
};
pub use net::{Interface, IpPrefix, Route, MAX_ADDRESSES, MAX_INTERFACES, MAX_ROUTES, MIN_MTU};
pub use pod::{ContainerId, ContainerStats, Create, Setup, Start};

/// Version of this protocol; both sides must speak the same one (2: `Start`
/// carries network interfaces; 3: `Start` carries the OCI runtime spec and
/// `Exited` the OOM flag; 4: `Start` carries virtio-fs shares, and
/// [`Rootfs::Overlay`]; 5: an [`Interface`] has an MTU, IPv4 and IPv6
/// addresses and routes; 6: pods, [`Message::Setup`] once and a
/// [`Message::Create`] per container, [`Message::Exec`] names its
/// container, [`Message::Remove`] and [`Message::Shutdown`]; 7:
/// [`Rootfs::Overlay`] takes several lower directories, [`Message::Stats`];
/// 8: [`Create::hosts`]).
pub const PROTOCOL_VERSION: u32 = 8;

/// The most lower directories of a [`Rootfs::Overlay`].
pub const MAX_LOWERS: usize = 128;

/// The vsock port the agent connects to on the host.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// The vsock context id of the host (`VMADDR_CID_HOST`).
pub const HOST_CID: u32 = 2;

/// Maximum length of a frame body (type byte and payload).
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// Largest data chunk the agent puts in one [`Message::Stdout`] or
/// [`Message::Stderr`]; hosts should use it for [`Message::Stdin`] too.
pub const MAX_DATA_CHUNK: usize = 32 * 1024;

/// Per-process stdin credit: bytes the host may have in flight before an
/// acknowledgement.
pub const STDIN_WINDOW: u32 = 256 * 1024;

/// Bytes of encoded output the agent queues for the connection before it
/// stops reading process output.
pub const AGENT_OUTPUT_QUEUE: usize = 256 * 1024;
