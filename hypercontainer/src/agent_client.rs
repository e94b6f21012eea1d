//! The host side of the agent protocol ([`hypercontainer_protocol`]).
//!
//! An [`AgentClient`] owns one connection to an agent (a vsock stream of a
//! VM, or any connected stream socket in tests). Creating it waits for the
//! agent's [`Message::Hello`] and answers with the host's; a thread then
//! reads every frame and demultiplexes it to per-process state: output
//! buffers (or callbacks), stdin credit, start and exit status. Processes are
//! driven through [`ProcessHandle`]s.
//!
//! Output that nobody reads is buffered without limit, as the protocol asks
//! the host to read the connection continuously; use [`Output::Null`] or
//! [`Output::Callback`] for processes whose output is not read.
//!
//! ```no_run
//! use std::io::Read;
//! use std::os::unix::net::UnixStream;
//! use std::time::Duration;
//! use hypercontainer::agent_client::{AgentClient, Output};
//! use hypercontainer_protocol::{Process, Rootfs, Start, Upper};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let conn = UnixStream::connect("/run/agent.sock")?;
//! let client = AgentClient::connect(conn, Duration::from_secs(10), None)?;
//! let main = client.start(
//!     Start {
//!         id: 0, // replaced by the client
//!         rootfs: Rootfs::Layers { layers: vec!["layer0".into()], upper: Upper::Tmpfs },
//!         shares: Vec::new(),
//!         process: Process { argv: vec!["echo".into(), "hi".into()], ..Process::default() },
//!         hostname: "box".into(),
//!         hosts: None,
//!         resolv_conf: None,
//!         network: Vec::new(),
//!         spec: hypercontainer_protocol::bare_spec(),
//!     },
//!     Output::Piped,
//!     Output::Piped,
//! )?;
//! main.close_stdin()?;
//! let mut out = String::new();
//! main.stdout().expect("piped").read_to_string(&mut out)?;
//! println!("{out} exit {}", main.wait()?);
//! # Ok(())
//! # }
//! ```

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hypercontainer_protocol::codec::{self, FrameDecoder};
use hypercontainer_protocol::{
    BootStage, ContainerId, ContainerStats, Create, ErrorKind, Hello, Message, Process, ProcessId,
    Setup, Start, WindowSize, MAX_DATA_CHUNK, PROTOCOL_VERSION, STDIN_WINDOW,
};

/// How often a blocked read wakes up to ask the liveness hook.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Errors of the agent connection.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The agent speaks another protocol version.
    #[error(
        "the agent speaks protocol version {theirs} and this SDK version {ours}: rebuild the \
         agent with `cargo xtask agent`, or point HYPERCONTAINER_AGENT at a build of this SDK's \
         version"
    )]
    VersionMismatch {
        /// This side's version.
        ours: u32,
        /// The agent's.
        theirs: u32,
    },
    /// A frame from the agent did not decode, or broke the conversation.
    #[error("agent protocol violation")]
    Codec(#[source] codec::Error),
    /// The agent's first message was not its hello.
    #[error("the agent's first message was {0}, not Hello")]
    NoHello(String),
    /// The agent did not say hello in time.
    #[error("the agent did not say hello within {0:?}")]
    HelloTimeout(Duration),
    /// The connection ended (or the liveness hook gave up) before the
    /// expected message.
    #[error("the agent connection ended: {0}")]
    Disconnected(String),
    /// The agent reported an error about the connection.
    #[error("the agent reported a {kind:?} error: {message}")]
    Agent {
        /// Its kind.
        kind: ErrorKind,
        /// The agent's message.
        message: String,
    },
    /// Reading or writing the connection failed.
    #[error("I/O error on the agent connection")]
    Io(#[source] io::Error),
    /// A process could not be started.
    #[error("{message}")]
    Spawn {
        /// What failed.
        kind: ErrorKind,
        /// The agent's message (like a container runtime's).
        message: String,
        /// The exit status the agent reported for it (125, 126 or 127).
        status: i32,
    },
    /// An output stream was already taken or is not piped.
    #[error("the {0} stream was not requested as piped or was already taken")]
    StreamUnavailable(&'static str),
    /// The agent did not answer in time.
    #[error("the agent did not answer within {0:?}")]
    Timeout(Duration),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Where a process's stdout or stderr goes.
pub enum Output {
    /// Buffered for a reader ([`ProcessHandle::stdout`] / [`ProcessHandle::stderr`]).
    Piped,
    /// Discarded.
    Null,
    /// Handed to a callback on the connection's reader thread, chunk by
    /// chunk, as it arrives. The callback must not block for long: it
    /// holds up every process of the connection.
    Callback(OutputFn),
}

/// An output callback: gets each chunk of output as it arrives.
pub type OutputFn = Box<dyn FnMut(&[u8]) + Send>;

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Output::Piped => "Piped",
            Output::Null => "Null",
            Output::Callback(_) => "Callback",
        })
    }
}

/// A boot stage the agent reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageReport {
    /// Which stage.
    pub stage: BootStage,
    /// Guest time since kernel start (`CLOCK_BOOTTIME`).
    pub guest_time: Duration,
    /// When the host received the report.
    pub received: Instant,
}

type Callback = Arc<Mutex<OutputFn>>;

enum Stream {
    Buffer { data: VecDeque<u8>, taken: bool },
    Callback(Callback),
    Null,
}

impl Stream {
    fn new(o: Output) -> Self {
        match o {
            Output::Piped => Stream::Buffer {
                data: VecDeque::new(),
                taken: false,
            },
            Output::Null => Stream::Null,
            Output::Callback(f) => Stream::Callback(Arc::new(Mutex::new(f))),
        }
    }
}

struct Proc {
    pid: Option<u32>,
    started: Option<Instant>,
    first_output: Option<Instant>,
    exit: Option<i32>,
    oom_killed: bool,
    error: Option<(ErrorKind, String)>,
    streams: [Stream; 2],
    unacked: u32,
    stdin_closed: bool,
}

#[derive(Default)]
struct State {
    procs: HashMap<ProcessId, Proc>,
    next_id: ProcessId,
    stages: Vec<StageReport>,
    /// Why the connection ended, once it did.
    ended: Option<String>,
    /// Connection-level errors the agent reported.
    agent_errors: Vec<(ErrorKind, String)>,
    /// Containers the agent reported removed.
    removed: Vec<ContainerId>,
    /// The last [`Message::ContainerStats`] per container, with how many
    /// came for it so far.
    stats: HashMap<ContainerId, (u64, ContainerStats)>,
}

struct Shared {
    state: Mutex<State>,
    cond: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until `ready` answers from the state, or until `deadline`
    /// (`None` then).
    fn wait_for<T>(&self, deadline: Instant, ready: impl Fn(&State) -> Option<T>) -> Option<T> {
        let mut g = self.lock();
        loop {
            if let Some(v) = ready(&g) {
                return Some(v);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            g = self.wait(g, Some(deadline - now));
        }
    }

    fn wait<'a>(
        &self,
        g: MutexGuard<'a, State>,
        timeout: Option<Duration>,
    ) -> MutexGuard<'a, State> {
        match timeout {
            None => self.cond.wait(g).unwrap_or_else(|p| p.into_inner()),
            Some(t) => {
                self.cond
                    .wait_timeout(g, t)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
        }
    }
}

/// A hook the reader polls while the connection is quiet: it returns
/// `Some(reason)` when the peer is gone for good (e.g. the VM ended), which
/// ends the connection with that reason.
pub type LivenessHook = Box<dyn Fn() -> Option<String> + Send + Sync>;

/// One connection to an agent. See the [module docs](self).
///
/// `Send + Sync`: share it by reference or in an `Arc`; dropping it closes
/// the connection and joins its reader thread.
pub struct AgentClient {
    shared: Arc<Shared>,
    writer: Writer,
    conn: UnixStream,
    reader: Option<JoinHandle<()>>,
    peer: Hello,
}

/// The sending half; `None` once the client closed the connection (so that
/// process handles that outlive the client hold no descriptor).
type Writer = Arc<Mutex<Option<UnixStream>>>;

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// Reads frames with a short timeout so that a liveness hook can be asked.
struct FrameReader {
    conn: UnixStream,
    decoder: FrameDecoder,
    buf: Vec<u8>,
    hook: Option<LivenessHook>,
}

enum Read1 {
    Msg(Message),
    Eof,
    Quiet,
}

impl FrameReader {
    fn next(&mut self) -> std::result::Result<Read1, Error> {
        if let Some(m) = self.decoder.next_message().map_err(map_codec)? {
            return Ok(Read1::Msg(m));
        }
        match self.conn.read(&mut self.buf) {
            Ok(0) => {
                if self.decoder.pending() > 0 {
                    Err(Error::Codec(codec::Error::TruncatedFrame))
                } else {
                    Ok(Read1::Eof)
                }
            }
            Ok(n) => {
                self.decoder.feed(&self.buf[..n]);
                match self.decoder.next_message().map_err(map_codec)? {
                    Some(m) => Ok(Read1::Msg(m)),
                    None => Ok(Read1::Quiet),
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                if let Some(why) = self.hook.as_ref().and_then(|h| h()) {
                    return Err(Error::Disconnected(why));
                }
                Ok(Read1::Quiet)
            }
            Err(e) => Err(Error::Io(e)),
        }
    }
}

fn map_codec(e: codec::Error) -> Error {
    match e {
        codec::Error::VersionMismatch { ours, theirs } => Error::VersionMismatch { ours, theirs },
        e => Error::Codec(e),
    }
}

impl AgentClient {
    /// Takes over a connected stream to an agent: waits up to `timeout` for
    /// its hello (asking `liveness`, if given, while waiting), answers it and
    /// starts the reader thread.
    pub fn connect(
        conn: UnixStream,
        timeout: Duration,
        liveness: Option<LivenessHook>,
    ) -> Result<AgentClient> {
        conn.set_read_timeout(Some(POLL_INTERVAL))
            .map_err(Error::Io)?;
        let mut reader = FrameReader {
            conn: conn.try_clone().map_err(Error::Io)?,
            decoder: FrameDecoder::new(),
            buf: vec![0; 64 * 1024],
            hook: liveness,
        };
        let deadline = Instant::now() + timeout;
        let peer = loop {
            match reader.next()? {
                Read1::Msg(Message::Hello(h)) => break h,
                Read1::Msg(Message::Error { kind, message, .. }) => {
                    return Err(Error::Agent { kind, message })
                }
                Read1::Msg(m) => return Err(Error::NoHello(m.name().to_string())),
                Read1::Eof => {
                    return Err(Error::Disconnected(
                        "the agent closed the connection before its hello".into(),
                    ))
                }
                Read1::Quiet => {
                    if Instant::now() >= deadline {
                        return Err(Error::HelloTimeout(timeout));
                    }
                }
            }
        };
        if peer.version != PROTOCOL_VERSION {
            return Err(Error::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: peer.version,
            });
        }
        let writer = Arc::new(Mutex::new(Some(conn.try_clone().map_err(Error::Io)?)));
        let hello = Message::Hello(Hello::new(concat!(
            "hypercontainer ",
            env!("CARGO_PKG_VERSION")
        )));
        if let Some(w) = lock(&writer).as_mut() {
            codec::write_message(w, &hello).map_err(map_codec)?;
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                next_id: 1,
                ..State::default()
            }),
            cond: Condvar::new(),
        });
        let s = shared.clone();
        let reader = std::thread::Builder::new()
            .name("hc-agent-conn".into())
            .spawn(move || reader_main(reader, s))
            .map_err(Error::Io)?;
        Ok(AgentClient {
            shared,
            writer,
            conn,
            reader: Some(reader),
            peer,
        })
    }

    /// The agent's hello.
    pub fn peer(&self) -> &Hello {
        &self.peer
    }

    /// Sends a one-container sandbox's `Start` (its `id` is replaced by a
    /// fresh one) as its setup and container, and returns the main
    /// process's handle. The handle's [`ProcessHandle::wait_started`]
    /// tells whether it started.
    pub fn start(&self, mut start: Start, stdout: Output, stderr: Output) -> Result<ProcessHandle> {
        let id = self.register(stdout, stderr);
        start.id = id;
        for m in start.into_messages() {
            self.send(&m)?;
        }
        Ok(self.handle(id))
    }

    /// Sets the pod up (once, before any [`AgentClient::create`]).
    pub fn setup(&self, setup: Setup) -> Result<()> {
        self.send(&Message::Setup(Box::new(setup)))
    }

    /// Creates a container and starts its main process (`create.id` is
    /// replaced by a fresh one); returns the main process's handle.
    pub fn create(
        &self,
        mut create: Create,
        stdout: Output,
        stderr: Output,
    ) -> Result<ProcessHandle> {
        let id = self.register(stdout, stderr);
        create.id = id;
        self.send(&Message::Create(Box::new(create)))?;
        Ok(self.handle(id))
    }

    /// Starts another process in the running container of a one-container
    /// sandbox.
    pub fn exec(&self, process: Process, stdout: Output, stderr: Output) -> Result<ProcessHandle> {
        self.exec_in(Start::CONTAINER, process, stdout, stderr)
    }

    /// Starts another process in running container `container`.
    pub fn exec_in(
        &self,
        container: ContainerId,
        process: Process,
        stdout: Output,
        stderr: Output,
    ) -> Result<ProcessHandle> {
        let id = self.register(stdout, stderr);
        self.send(&Message::Exec {
            id,
            container,
            process: Box::new(process),
        })?;
        Ok(self.handle(id))
    }

    /// Asks the agent to remove container `container` (the answer,
    /// [`Message::Removed`], shows in [`AgentClient::removed`]).
    pub fn remove(&self, container: ContainerId) -> Result<()> {
        self.send(&Message::Remove { container })
    }

    /// Asks the agent for container `container`'s resource use and waits
    /// up to `timeout` for the answer.
    pub fn stats(&self, container: ContainerId, timeout: Duration) -> Result<ContainerStats> {
        let before = self.shared.lock().stats.get(&container).map_or(0, |s| s.0);
        self.send(&Message::Stats { container })?;
        let answer = self.shared.wait_for(Instant::now() + timeout, |g| {
            match g.stats.get(&container) {
                Some((n, s)) if *n > before => Some(Ok(*s)),
                _ => g.ended.clone().map(|why| Err(Error::Disconnected(why))),
            }
        });
        answer.unwrap_or(Err(Error::Timeout(timeout)))
    }

    /// Asks the agent to end the pod.
    pub fn shutdown(&self) -> Result<()> {
        self.send(&Message::Shutdown)
    }

    /// The boot stages reported so far.
    pub fn boot_stages(&self) -> Vec<StageReport> {
        self.shared.lock().stages.clone()
    }

    /// Connection-level errors the agent reported.
    pub fn agent_errors(&self) -> Vec<(ErrorKind, String)> {
        self.shared.lock().agent_errors.clone()
    }

    /// Containers the agent reported removed so far.
    pub fn removed(&self) -> Vec<ContainerId> {
        self.shared.lock().removed.clone()
    }

    /// Waits up to `timeout` until the agent reports container `container`
    /// removed.
    pub fn wait_removed(&self, container: ContainerId, timeout: Duration) -> Result<()> {
        let answer = self.shared.wait_for(Instant::now() + timeout, |g| {
            if g.removed.contains(&container) {
                Some(Ok(()))
            } else {
                g.ended.clone().map(|why| Err(Error::Disconnected(why)))
            }
        });
        answer.unwrap_or(Err(Error::Timeout(timeout)))
    }

    /// Drops what the client keeps about processes `ids` (their buffered
    /// output and exit status), e.g. once their container was removed;
    /// their handles then report that the process is unknown.
    pub fn forget(&self, ids: &[ProcessId]) {
        let mut g = self.shared.lock();
        for id in ids {
            g.procs.remove(id);
        }
    }

    /// Why the connection ended, if it did.
    pub fn ended(&self) -> Option<String> {
        self.shared.lock().ended.clone()
    }

    /// Waits up to `timeout` for the connection to end; returns why.
    pub fn wait_ended(&self, timeout: Duration) -> Option<String> {
        self.shared
            .wait_for(Instant::now() + timeout, |g| g.ended.clone())
    }

    /// Closes the connection (both directions); the reader thread ends.
    pub fn close(&self) {
        let _ = self.conn.shutdown(std::net::Shutdown::Both);
        lock(&self.writer).take();
    }

    fn register(&self, stdout: Output, stderr: Output) -> ProcessId {
        let mut g = self.shared.lock();
        let id = g.next_id;
        g.next_id += 1;
        g.procs.insert(
            id,
            Proc {
                pid: None,
                started: None,
                first_output: None,
                exit: None,
                oom_killed: false,
                error: None,
                streams: [Stream::new(stdout), Stream::new(stderr)],
                unacked: 0,
                stdin_closed: false,
            },
        );
        id
    }

    fn handle(&self, id: ProcessId) -> ProcessHandle {
        ProcessHandle {
            id,
            shared: self.shared.clone(),
            writer: self.writer.clone(),
        }
    }

    fn send(&self, m: &Message) -> Result<()> {
        send(&self.writer, &self.shared, m)
    }
}

impl Drop for AgentClient {
    fn drop(&mut self) {
        self.close();
        if let Some(h) = self.reader.take() {
            let _ = h.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn send(writer: &Mutex<Option<UnixStream>>, shared: &Shared, m: &Message) -> Result<()> {
    if let Some(why) = &shared.lock().ended {
        return Err(Error::Disconnected(why.clone()));
    }
    let mut w = lock(writer);
    let w = w
        .as_mut()
        .ok_or_else(|| Error::Disconnected("the connection was closed by the host".into()))?;
    codec::write_message(w, m).map_err(|e| match e {
        codec::Error::Io { source } => Error::Io(source),
        e => Error::Codec(e),
    })
}

fn reader_main(mut r: FrameReader, shared: Arc<Shared>) {
    let why = loop {
        match r.next() {
            Ok(Read1::Msg(m)) => {
                if let Some(why) = dispatch(&shared, m) {
                    break why;
                }
            }
            Ok(Read1::Quiet) => {}
            Ok(Read1::Eof) => break "the agent closed the connection".to_string(),
            Err(e) => break error_chain(&e),
        }
    };
    // Closing our side too tells an agent waiting to power off that
    // everything it sent has arrived.
    let _ = r.conn.shutdown(std::net::Shutdown::Both);
    let mut g = shared.lock();
    g.ended.get_or_insert(why);
    drop(g);
    shared.cond.notify_all();
}

/// `e` and its sources, joined by ": ".
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Applies one message; `Some(reason)` ends the connection.
fn dispatch(shared: &Shared, m: Message) -> Option<String> {
    let mut g = shared.lock();
    let mut callback = None;
    let mut end = None;
    match m {
        Message::BootStage { stage, boottime_ns } => g.stages.push(StageReport {
            stage,
            guest_time: Duration::from_nanos(boottime_ns),
            received: Instant::now(),
        }),
        Message::Started { id, pid } => {
            if let Some(p) = g.procs.get_mut(&id) {
                p.pid = Some(pid);
                p.started = Some(Instant::now());
            }
        }
        Message::Stdout { id, data } | Message::Stderr { id, data } if data.is_empty() => {
            let _ = id;
        }
        Message::Stdout { id, data } => callback = output(&mut g, id, 0, data),
        Message::Stderr { id, data } => callback = output(&mut g, id, 1, data),
        Message::StdinAck { id, bytes } => {
            if let Some(p) = g.procs.get_mut(&id) {
                p.unacked = p.unacked.saturating_sub(bytes);
            }
        }
        Message::Exited {
            id,
            status,
            oom_killed,
        } => {
            if let Some(p) = g.procs.get_mut(&id) {
                p.exit = Some(status);
                p.oom_killed = oom_killed;
            }
        }
        Message::Error {
            id: Some(id),
            kind,
            message,
        } => {
            if let Some(p) = g.procs.get_mut(&id) {
                p.error = Some((kind, message));
            }
        }
        Message::Error {
            id: None,
            kind,
            message,
        } => {
            if matches!(kind, ErrorKind::Protocol | ErrorKind::Version) {
                end = Some(format!("the agent reported a {kind:?} error: {message}"));
            }
            g.agent_errors.push((kind, message));
        }
        Message::Removed { container } => g.removed.push(container),
        Message::ContainerStats(stats) => {
            let e = g.stats.entry(stats.container).or_default();
            *e = (e.0 + 1, *stats);
        }
        other => {
            end = Some(format!(
                "the agent sent {}, which only the host sends",
                other.name()
            ))
        }
    }
    drop(g);
    if let Some((cb, data)) = callback {
        (lock(&cb))(&data);
    }
    shared.cond.notify_all();
    end
}

fn output(
    g: &mut State,
    id: ProcessId,
    which: usize,
    data: Vec<u8>,
) -> Option<(Callback, Vec<u8>)> {
    let p = g.procs.get_mut(&id)?;
    p.first_output.get_or_insert_with(Instant::now);
    match &mut p.streams[which] {
        Stream::Buffer { data: buf, .. } => {
            buf.extend(data);
            None
        }
        Stream::Callback(cb) => Some((cb.clone(), data)),
        Stream::Null => None,
    }
}

/// One process of a connection: its stdio, signals and exit status.
/// Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct ProcessHandle {
    id: ProcessId,
    shared: Arc<Shared>,
    writer: Writer,
}

impl std::fmt::Debug for ProcessHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessHandle")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl ProcessHandle {
    /// The protocol's id of this process.
    pub fn id(&self) -> ProcessId {
        self.id
    }

    fn with<T>(&self, f: impl FnOnce(&mut Proc) -> T) -> Option<T> {
        self.shared.lock().procs.get_mut(&self.id).map(f)
    }

    /// The process's pid in the guest, once it started.
    pub fn pid(&self) -> Option<u32> {
        self.with(|p| p.pid).flatten()
    }

    /// When the host learned that the process started.
    pub fn started_at(&self) -> Option<Instant> {
        self.with(|p| p.started).flatten()
    }

    /// When the first output byte of the process arrived.
    pub fn first_output_at(&self) -> Option<Instant> {
        self.with(|p| p.first_output).flatten()
    }

    /// The exit status, if the process ended.
    pub fn try_status(&self) -> Option<i32> {
        self.with(|p| p.exit).flatten()
    }

    /// Waits up to `timeout` (`None`: forever) until the process started
    /// (its pid) or failed to start ([`Error::Spawn`]).
    pub fn wait_started(&self, timeout: Option<Duration>) -> Result<Option<u32>> {
        self.wait_for(timeout, |p| {
            if let Some(pid) = p.pid {
                Some(Ok(pid))
            } else if let Some((kind, message)) = &p.error {
                Some(Err(Error::Spawn {
                    kind: *kind,
                    message: message.clone(),
                    status: p.exit.unwrap_or(kind.exit_status()),
                }))
            } else {
                p.exit.map(|status| {
                    Err(Error::Spawn {
                        kind: ErrorKind::Spawn,
                        message: format!("the process ended with {status} before starting"),
                        status,
                    })
                })
            }
        })
    }

    /// Waits for the process to end; returns its exit status (the exit
    /// code, 128 + signal, or 125-127 when it failed to start; see
    /// [`Self::start_error`]).
    pub fn wait(&self) -> Result<i32> {
        self.wait_for(None, |p| p.exit.map(Ok))
            .map(|s| s.expect("no timeout"))
    }

    /// Like [`wait`](Self::wait), giving up after `timeout` with `Ok(None)`.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<i32>> {
        self.wait_for(Some(timeout), |p| p.exit.map(Ok))
    }

    /// Whether the kernel's OOM killer ended the process (its exit status is
    /// then 137); `false` while it runs.
    pub fn oom_killed(&self) -> bool {
        self.with(|p| p.oom_killed).unwrap_or(false)
    }

    /// Why the process failed to start, if it did.
    pub fn start_error(&self) -> Option<(ErrorKind, String)> {
        self.with(|p| p.error.clone()).flatten()
    }

    fn wait_for<T>(
        &self,
        timeout: Option<Duration>,
        mut f: impl FnMut(&Proc) -> Option<Result<T>>,
    ) -> Result<Option<T>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut g = self.shared.lock();
        loop {
            let Some(p) = g.procs.get(&self.id) else {
                return Err(Error::Disconnected(format!("no process {}", self.id)));
            };
            if let Some(r) = f(p) {
                return r.map(Some);
            }
            if let Some(why) = &g.ended {
                return Err(Error::Disconnected(why.clone()));
            }
            let left = match deadline {
                None => None,
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Ok(None);
                    }
                    Some(d - now)
                }
            };
            g = self.shared.wait(g, left);
        }
    }

    /// Sends `signal` (a Linux signal number) to the process.
    pub fn signal(&self, signal: i32) -> Result<()> {
        send(
            &self.writer,
            &self.shared,
            &Message::Signal {
                id: self.id,
                signal,
            },
        )
    }

    /// Resizes the process's terminal.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        send(
            &self.writer,
            &self.shared,
            &Message::ResizeTty {
                id: self.id,
                size: WindowSize { rows, cols },
            },
        )
    }

    /// Ends the process's stdin (after what was written). Idempotent.
    pub fn close_stdin(&self) -> Result<()> {
        let first = self
            .with(|p| !std::mem::replace(&mut p.stdin_closed, true))
            .unwrap_or(false);
        if first {
            send(
                &self.writer,
                &self.shared,
                &Message::CloseStdin { id: self.id },
            )?;
        }
        Ok(())
    }

    /// A writer for the process's stdin (blocking on the protocol's credit
    /// window). Several writers of one process interleave their writes.
    pub fn stdin(&self) -> StdinWriter {
        StdinWriter {
            handle: self.clone(),
        }
    }

    fn take_stream(&self, which: usize) -> Result<OutputReader> {
        let name = if which == 0 { "stdout" } else { "stderr" };
        let ok = self
            .with(|p| match &mut p.streams[which] {
                Stream::Buffer { taken, .. } if !*taken => {
                    *taken = true;
                    true
                }
                _ => false,
            })
            .unwrap_or(false);
        if ok {
            Ok(OutputReader {
                handle: self.clone(),
                which,
            })
        } else {
            Err(Error::StreamUnavailable(name))
        }
    }

    /// The reader of a piped stdout; once.
    pub fn stdout(&self) -> Result<OutputReader> {
        self.take_stream(0)
    }

    /// The reader of a piped stderr; once.
    pub fn stderr(&self) -> Result<OutputReader> {
        self.take_stream(1)
    }

    /// Everything buffered so far on a piped stream (without taking it).
    pub fn drain(&self, stderr: bool) -> Vec<u8> {
        self.with(|p| match &mut p.streams[usize::from(stderr)] {
            Stream::Buffer { data, .. } => data.drain(..).collect(),
            _ => Vec::new(),
        })
        .unwrap_or_default()
    }
}

/// Reads a process's piped stdout or stderr; end of file when the process
/// ended (or the connection did).
#[derive(Debug)]
pub struct OutputReader {
    handle: ProcessHandle,
    which: usize,
}

impl Read for OutputReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let shared = &self.handle.shared;
        let mut g = shared.lock();
        loop {
            let ended = g.ended.is_some();
            let Some(p) = g.procs.get_mut(&self.handle.id) else {
                return Ok(0);
            };
            let done = p.exit.is_some();
            if let Stream::Buffer { data, .. } = &mut p.streams[self.which] {
                if !data.is_empty() {
                    let n = buf.len().min(data.len());
                    for (dst, src) in buf.iter_mut().zip(data.drain(..n)) {
                        *dst = src;
                    }
                    return Ok(n);
                }
            } else {
                return Ok(0);
            }
            if done || ended {
                return Ok(0);
            }
            g = shared.wait(g, None);
        }
    }
}

/// Writes a process's stdin; see [`ProcessHandle::stdin`]. Dropping it does
/// not close stdin: call [`StdinWriter::close`].
#[derive(Debug)]
pub struct StdinWriter {
    handle: ProcessHandle,
}

impl StdinWriter {
    /// Ends the process's stdin.
    pub fn close(self) -> Result<()> {
        self.handle.close_stdin()
    }
}

impl Write for StdinWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let h = &self.handle;
        let n = {
            let mut g = h.shared.lock();
            loop {
                if let Some(why) = &g.ended {
                    return Err(io::Error::new(io::ErrorKind::BrokenPipe, why.clone()));
                }
                let Some(p) = g.procs.get_mut(&h.id) else {
                    return Err(io::ErrorKind::BrokenPipe.into());
                };
                if p.exit.is_some() || p.stdin_closed {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the process ended or its stdin is closed",
                    ));
                }
                let credit = STDIN_WINDOW.saturating_sub(p.unacked) as usize;
                if credit > 0 {
                    let n = buf.len().min(credit).min(MAX_DATA_CHUNK);
                    p.unacked += n as u32;
                    break n;
                }
                g = h.shared.wait(g, None);
            }
        };
        send(
            &h.writer,
            &h.shared,
            &Message::Stdin {
                id: h.id,
                data: buf[..n].to_vec(),
            },
        )
        .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, error_chain(&e)))?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hypercontainer_protocol::codec::{read_message, write_message};
    use hypercontainer_protocol::{Rootfs, Upper};

    fn start() -> Start {
        Start {
            id: 0,
            rootfs: Rootfs::Layers {
                layers: vec![],
                upper: Upper::Tmpfs,
            },
            shares: Vec::new(),
            process: Process {
                argv: vec!["x".into()],
                ..Process::default()
            },
            hostname: String::new(),
            hosts: None,
            resolv_conf: None,
            network: Vec::new(),
            spec: hypercontainer_protocol::bare_spec(),
        }
    }

    /// A scripted fake agent on the other end of a socketpair.
    fn fake(script: impl FnOnce(&mut UnixStream) + Send + 'static) -> (UnixStream, JoinHandle<()>) {
        let (host, mut agent) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || script(&mut agent));
        (host, t)
    }

    #[test]
    fn demultiplexes_output_and_exit() {
        let (host, t) = fake(|a| {
            write_message(a, &Message::Hello(Hello::new("fake"))).unwrap();
            assert!(matches!(read_message(a).unwrap(), Some(Message::Hello(_))));
            assert!(matches!(read_message(a).unwrap(), Some(Message::Setup(_))));
            let Some(Message::Create(s)) = read_message(a).unwrap() else {
                panic!("no create")
            };
            let id = s.id;
            for m in [
                Message::BootStage {
                    stage: BootStage::RootfsReady,
                    boottime_ns: 5_000_000,
                },
                Message::Started { id, pid: 7 },
                Message::Stdout {
                    id,
                    data: b"out".to_vec(),
                },
                Message::Stderr {
                    id,
                    data: b"err".to_vec(),
                },
                Message::Exited {
                    id,
                    status: 3,
                    oom_killed: false,
                },
            ] {
                write_message(a, &m).unwrap();
            }
            // The host closes stdin at some point.
            assert!(matches!(
                read_message(a).unwrap(),
                Some(Message::CloseStdin { .. })
            ));
        });
        let c = AgentClient::connect(host, Duration::from_secs(5), None).unwrap();
        assert_eq!(c.peer().software, "fake");
        let p = c.start(start(), Output::Piped, Output::Piped).unwrap();
        assert_eq!(p.wait_started(None).unwrap(), Some(7));
        let mut out = String::new();
        p.stdout().unwrap().read_to_string(&mut out).unwrap();
        let mut err = String::new();
        p.stderr().unwrap().read_to_string(&mut err).unwrap();
        assert_eq!((out.as_str(), err.as_str()), ("out", "err"));
        assert!(p.stdout().is_err(), "a stream is taken once");
        assert_eq!(p.wait().unwrap(), 3);
        p.close_stdin().unwrap();
        p.close_stdin().unwrap();
        t.join().unwrap();
        let stages = c.boot_stages();
        assert_eq!(stages.len(), 1);
        assert_eq!(stages[0].guest_time, Duration::from_millis(5));
        assert!(c.wait_ended(Duration::from_secs(5)).is_some());
    }

    #[test]
    fn version_mismatch_is_reported_with_a_remedy() {
        let (host, t) = fake(|a| {
            let mut frame = Message::Hello(Hello::new("old")).to_frame().unwrap();
            frame[5..9].copy_from_slice(&(PROTOCOL_VERSION + 1).to_le_bytes());
            a.write_all(&frame).unwrap();
        });
        let e = AgentClient::connect(host, Duration::from_secs(5), None).unwrap_err();
        t.join().unwrap();
        assert!(matches!(e, Error::VersionMismatch { .. }), "{e}");
        assert!(e.to_string().contains("cargo xtask agent"));
    }

    #[test]
    fn hello_must_come_first_and_in_time() {
        let (host, t) = fake(|a| {
            write_message(a, &Message::Started { id: 1, pid: 1 }).unwrap();
        });
        let e = AgentClient::connect(host, Duration::from_secs(5), None).unwrap_err();
        t.join().unwrap();
        assert!(matches!(e, Error::NoHello(ref s) if s == "Started"), "{e}");

        let (host, _agent) = UnixStream::pair().unwrap();
        let e = AgentClient::connect(host, Duration::from_millis(200), None).unwrap_err();
        assert!(matches!(e, Error::HelloTimeout(_)), "{e}");

        // The liveness hook ends the wait early.
        let (host, _agent) = UnixStream::pair().unwrap();
        let e = AgentClient::connect(
            host,
            Duration::from_secs(60),
            Some(Box::new(|| Some("the VM ended".into()))),
        )
        .unwrap_err();
        assert!(
            matches!(e, Error::Disconnected(ref s) if s == "the VM ended"),
            "{e}"
        );
    }

    #[test]
    fn spawn_errors_and_disconnects_reach_waiters() {
        let (host, t) = fake(|a| {
            write_message(a, &Message::Hello(Hello::new("fake"))).unwrap();
            read_message(a).unwrap();
            assert!(matches!(read_message(a).unwrap(), Some(Message::Setup(_))));
            let Some(Message::Create(s)) = read_message(a).unwrap() else {
                panic!()
            };
            write_message(
                a,
                &Message::Error {
                    id: Some(s.id),
                    kind: ErrorKind::NotFound,
                    message: "nope: not found".into(),
                },
            )
            .unwrap();
            write_message(
                a,
                &Message::Exited {
                    id: s.id,
                    status: 127,
                    oom_killed: false,
                },
            )
            .unwrap();
            let Some(Message::Exec { id, .. }) = read_message(a).unwrap() else {
                panic!()
            };
            let _ = id;
            // Hang up without answering the exec.
        });
        let c = AgentClient::connect(host, Duration::from_secs(5), None).unwrap();
        let p = c.start(start(), Output::Null, Output::Null).unwrap();
        let e = p.wait_started(None).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Spawn {
                    kind: ErrorKind::NotFound,
                    status: 127,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(p.wait().unwrap(), 127);
        let x = c
            .exec(
                Process {
                    argv: vec!["y".into()],
                    ..Process::default()
                },
                Output::Piped,
                Output::Null,
            )
            .unwrap();
        t.join().unwrap();
        assert!(matches!(x.wait(), Err(Error::Disconnected(_))));
        let mut s = String::new();
        x.stdout().unwrap().read_to_string(&mut s).unwrap();
        assert!(x.stdin().write(b"late").is_err());
    }

    #[test]
    fn stdin_respects_the_credit_window() {
        let (host, t) = fake(|a| {
            write_message(a, &Message::Hello(Hello::new("fake"))).unwrap();
            read_message(a).unwrap();
            assert!(matches!(read_message(a).unwrap(), Some(Message::Setup(_))));
            let Some(Message::Create(s)) = read_message(a).unwrap() else {
                panic!()
            };
            // Read until the host stops at the window; then ack it all.
            let mut got = 0usize;
            while got < STDIN_WINDOW as usize {
                match read_message(a).unwrap() {
                    Some(Message::Stdin { data, .. }) => {
                        assert!(data.len() <= MAX_DATA_CHUNK);
                        got += data.len();
                    }
                    m => panic!("{m:?}"),
                }
            }
            assert_eq!(got, STDIN_WINDOW as usize, "never beyond the window");
            write_message(
                a,
                &Message::StdinAck {
                    id: s.id,
                    bytes: got as u32,
                },
            )
            .unwrap();
            let mut rest = 0;
            loop {
                match read_message(a).unwrap() {
                    Some(Message::Stdin { data, .. }) => rest += data.len(),
                    Some(Message::CloseStdin { .. }) => break,
                    m => panic!("{m:?}"),
                }
            }
            assert_eq!(rest, 1000);
            write_message(
                a,
                &Message::Exited {
                    id: s.id,
                    status: 0,
                    oom_killed: false,
                },
            )
            .unwrap();
        });
        let c = AgentClient::connect(host, Duration::from_secs(5), None).unwrap();
        let p = c.start(start(), Output::Null, Output::Null).unwrap();
        let mut w = p.stdin();
        w.write_all(&vec![b'x'; STDIN_WINDOW as usize + 1000])
            .unwrap();
        w.close().unwrap();
        assert_eq!(p.wait().unwrap(), 0);
        t.join().unwrap();
    }

    #[test]
    fn callbacks_get_output_in_order() {
        let (host, t) = fake(|a| {
            write_message(a, &Message::Hello(Hello::new("fake"))).unwrap();
            read_message(a).unwrap();
            assert!(matches!(read_message(a).unwrap(), Some(Message::Setup(_))));
            let Some(Message::Create(s)) = read_message(a).unwrap() else {
                panic!()
            };
            for i in 0..100u8 {
                write_message(
                    a,
                    &Message::Stdout {
                        id: s.id,
                        data: vec![i],
                    },
                )
                .unwrap();
            }
            write_message(
                a,
                &Message::Exited {
                    id: s.id,
                    status: 0,
                    oom_killed: false,
                },
            )
            .unwrap();
        });
        let c = AgentClient::connect(host, Duration::from_secs(5), None).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let p = c
            .start(
                start(),
                Output::Callback(Box::new(move |d| s2.lock().unwrap().extend_from_slice(d))),
                Output::Null,
            )
            .unwrap();
        assert_eq!(p.wait().unwrap(), 0);
        t.join().unwrap();
        assert_eq!(*seen.lock().unwrap(), (0..100u8).collect::<Vec<_>>());
    }
}
