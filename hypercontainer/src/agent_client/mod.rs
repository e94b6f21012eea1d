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
use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hypercontainer_protocol::codec::{self, FrameDecoder};
use hypercontainer_protocol::{
    BootStage, ContainerId, ContainerStats, Create, ErrorKind, Hello, Message, Process, ProcessId,
    Setup, Start, PROTOCOL_VERSION,
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

mod process;
#[cfg(test)]
mod tests;

pub use process::{OutputReader, ProcessHandle, StdinWriter};
