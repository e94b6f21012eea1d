//! The agent's event loop: one connection to the host, the processes of the
//! pod's containers and their stdio, and SIGCHLD; all on one thread with
//! `poll`. The pod's containers and their lifecycle are in [`pod`].

mod pod;

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use hypercontainer_protocol::{
    codec, BootStage, ContainerId, ErrorKind, FrameDecoder, Hello, Message, ProcessId,
    AGENT_OUTPUT_QUEUE, MAX_DATA_CHUNK, STDIN_WINDOW,
};

use crate::container::cgroups;
use crate::sys;

/// How the agent was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// PID 1 of a VM: power off at the end.
    Vm,
    /// A normal process (host-tier tests): exit at the end.
    Host,
}

/// Why the agent stopped serving.
#[derive(Debug)]
pub enum End {
    /// The pod ended: the main process of the container that ends it
    /// ended (or never started), or the host asked for a shutdown.
    MainExited,
    /// The connection failed or the host broke the protocol.
    Connection(String),
}

struct Proc {
    id: ProcessId,
    pid: libc::pid_t,
    container: ContainerId,
    /// The main process of its container.
    main: bool,
    stdin: Option<OwnedFd>,
    stdin_buf: Vec<u8>,
    stdin_closing: bool,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    pty: Option<OwnedFd>,
    status: Option<i32>,
}

/// The agent's state.
pub struct Agent {
    conn: OwnedFd,
    decoder: FrameDecoder,
    out: Vec<u8>,
    out_pos: usize,
    sigchld: OwnedFd,
    hello: bool,
    /// The pod's settings, once set up.
    pod: pod::PodState,
    /// The containers, by id.
    containers: BTreeMap<ContainerId, pod::Slot>,
    used_containers: HashSet<ContainerId>,
    /// The cgroup v2 hierarchy containers are limited in (a VM's own).
    cgroups: Option<cgroups::Hierarchy>,
    procs: Vec<Proc>,
    used_ids: HashSet<ProcessId>,
    /// The main process whose end ends the pod, and its status once it
    /// ended (reported last, by `finish`).
    main_id: Option<ProcessId>,
    main_container: Option<ContainerId>,
    main_status: Option<i32>,
    /// The host asked for the pod's end.
    shutdown: bool,
    mode: Mode,
}

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

impl Agent {
    /// An agent serving the connected stream `conn`.
    pub fn new(conn: OwnedFd, mode: Mode) -> io::Result<Self> {
        sys::set_cloexec(conn.as_raw_fd())?;
        sys::set_nonblocking(conn.as_raw_fd(), true)?;
        // A host-tier agent shares its host's cgroups and limits nothing.
        let cgroups = match mode {
            Mode::Vm => match cgroups::Hierarchy::mount_in_vm() {
                Ok(h) => Some(h),
                Err(e) => {
                    eprintln!(
                        "hypercontainer-agent: warning: no cgroup limits: {}",
                        error_chain(&e)
                    );
                    None
                }
            },
            Mode::Host => None,
        };
        Ok(Self {
            conn,
            decoder: FrameDecoder::new(),
            out: Vec::new(),
            out_pos: 0,
            sigchld: sys::sigchld_fd()?,
            hello: false,
            pod: pod::PodState::default(),
            containers: BTreeMap::new(),
            used_containers: HashSet::new(),
            cgroups,
            procs: Vec::new(),
            used_ids: HashSet::new(),
            main_id: None,
            main_container: None,
            main_status: None,
            shutdown: false,
            mode,
        })
    }

    fn send(&mut self, msg: &Message) {
        if let Err(e) = codec::encode_frame(msg, &mut self.out) {
            // Only oversized frames fail; our messages are bounded.
            eprintln!("hypercontainer-agent: cannot encode a message: {e}");
        }
    }

    fn send_error(&mut self, id: Option<ProcessId>, kind: ErrorKind, message: impl Into<String>) {
        let message = message.into();
        eprintln!("hypercontainer-agent: error: {message}");
        self.send(&Message::Error { id, kind, message });
    }

    fn queued(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Writes what the connection takes now.
    fn flush_some(&mut self) -> io::Result<()> {
        while self.out_pos < self.out.len() {
            match sys::write(self.conn.as_raw_fd(), &self.out[self.out_pos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.out_pos += n,
                Err(e) if would_block(&e) => break,
                Err(e) => return Err(e),
            }
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        } else if self.out_pos > AGENT_OUTPUT_QUEUE {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
        Ok(())
    }

    /// Writes everything queued, waiting as needed.
    pub fn flush_all(&mut self) -> io::Result<()> {
        let r = sys::write_all(self.conn.as_raw_fd(), &self.out[self.out_pos..]);
        self.out.clear();
        self.out_pos = 0;
        r
    }

    /// Ends the connection gracefully before the VM powers off: no more
    /// output (`SHUT_WR`), then waits up to `timeout` for the host to close
    /// its side. A vsock transport sends asynchronously (from a kernel
    /// worker), so without this wait the last frames, the main process's
    /// exit among them, can be lost with the VM.
    pub fn linger(&mut self, timeout: std::time::Duration) {
        let fd = self.conn.as_raw_fd();
        // SAFETY: fd is the open connection; shutdown takes no pointers.
        unsafe { libc::shutdown(fd, libc::SHUT_WR) };
        let deadline = std::time::Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            let mut fds = [pollfd(fd, libc::POLLIN)];
            let ms = left.as_millis().clamp(1, 60_000) as libc::c_int;
            match sys::poll(&mut fds, ms) {
                Ok(0) | Err(_) => return,
                Ok(_) => match sys::read(fd, &mut buf) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) if would_block(&e) => {}
                    Err(_) => return,
                },
            }
        }
    }

    /// Sends the agent's hello and its start timestamp.
    pub fn greet(&mut self, agent_start_ns: u64) {
        self.send(&Message::Hello(Hello::new(concat!(
            "hypercontainer-agent ",
            env!("CARGO_PKG_VERSION")
        ))));
        self.send(&Message::BootStage {
            stage: BootStage::AgentStart,
            boottime_ns: agent_start_ns,
        });
    }

    /// Serves until the main process ends or the connection fails.
    pub fn run(&mut self) -> End {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if self.main_status.is_some() || self.shutdown {
                return End::MainExited;
            }
            // Build the poll set: [conn, sigchld, per process: stdout, stderr, stdin].
            let mut fds = vec![
                pollfd(
                    self.conn.as_raw_fd(),
                    libc::POLLIN | if self.queued() > 0 { libc::POLLOUT } else { 0 },
                ),
                pollfd(self.sigchld.as_raw_fd(), libc::POLLIN),
            ];
            let read_output = self.queued() < AGENT_OUTPUT_QUEUE;
            let mut slots = Vec::new();
            for (i, p) in self.procs.iter().enumerate() {
                if read_output {
                    for (which, fd) in [(0u8, &p.stdout), (1, &p.stderr)] {
                        if let Some(fd) = fd {
                            fds.push(pollfd(fd.as_raw_fd(), libc::POLLIN));
                            slots.push((i, which));
                        }
                    }
                }
                if let Some(fd) = &p.stdin {
                    if !p.stdin_buf.is_empty() {
                        fds.push(pollfd(fd.as_raw_fd(), libc::POLLOUT));
                        slots.push((i, 2));
                    }
                }
            }
            if let Err(e) = sys::poll(&mut fds, -1) {
                return End::Connection(format!("poll: {e}"));
            }

            // Process output first, so it precedes an exit seen in this round.
            for (pfd, &(i, which)) in fds[2..].iter().zip(&slots) {
                if pfd.revents == 0 {
                    continue;
                }
                match which {
                    0 | 1 => self.read_output(i, which == 1, &mut buf, false),
                    _ => self.write_stdin(i),
                }
            }
            if fds[1].revents != 0 {
                sys::drain_signalfd(&self.sigchld);
                self.reap();
            }
            let conn = fds[0].revents;
            if conn & libc::POLLOUT != 0 {
                if let Err(e) = self.flush_some() {
                    return End::Connection(format!("writing to the host: {e}"));
                }
            }
            if conn & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                match sys::read(self.conn.as_raw_fd(), &mut buf) {
                    Ok(0) => {
                        let how = if self.decoder.pending() > 0 {
                            codec::Error::TruncatedFrame.to_string()
                        } else {
                            "the host closed the connection".to_string()
                        };
                        return End::Connection(how);
                    }
                    Ok(n) => {
                        self.decoder.feed(&buf[..n]);
                        if let Err(e) = self.handle_input() {
                            return End::Connection(e);
                        }
                    }
                    Err(e) if would_block(&e) => {}
                    Err(e) => return End::Connection(format!("reading from the host: {e}")),
                }
            }
            if let Err(e) = self.flush_some() {
                return End::Connection(format!("writing to the host: {e}"));
            }
        }
    }

    /// Decodes and handles every whole message received; an error string
    /// means the connection must be closed.
    fn handle_input(&mut self) -> Result<(), String> {
        loop {
            let msg = match self.decoder.next_message() {
                Ok(Some(m)) => m,
                Ok(None) => return Ok(()),
                Err(e) => {
                    let kind = match e {
                        codec::Error::VersionMismatch { .. } => ErrorKind::Version,
                        _ => ErrorKind::Protocol,
                    };
                    let m = format!("malformed frame from the host: {e}");
                    self.send_error(None, kind, m.clone());
                    return Err(m);
                }
            };
            self.handle(msg)?;
            if self.main_status.is_some() || self.shutdown {
                return Ok(());
            }
        }
    }

    fn protocol_error(&mut self, m: String) -> Result<(), String> {
        self.send_error(None, ErrorKind::Protocol, m.clone());
        Err(m)
    }

    fn handle(&mut self, msg: Message) -> Result<(), String> {
        if !self.hello {
            return match msg {
                Message::Hello(_) => {
                    self.hello = true;
                    Ok(())
                }
                other => self.protocol_error(format!("expected Hello, got {}", other.name())),
            };
        }
        if !msg.is_host_to_guest() || matches!(msg, Message::Hello(_)) {
            return self.protocol_error(format!("unexpected {} from the host", msg.name()));
        }
        match msg {
            Message::Setup(setup) => self.setup(*setup),
            Message::Create(create) => self.create(*create),
            Message::Exec {
                id,
                container,
                process,
            } => self.exec(id, container, &process),
            Message::Remove { container } => self.remove(container),
            Message::Stats { container } => self.stats(container),
            Message::Shutdown => self.shutdown = true,
            Message::Stdin { id, data } => return self.stdin(id, data),
            Message::CloseStdin { id } => {
                if let Some(i) = self.lookup(id) {
                    self.procs[i].stdin_closing = true;
                    self.write_stdin(i);
                }
            }
            Message::Signal { id, signal } => {
                if let Some(i) = self.lookup(id) {
                    let p = &self.procs[i];
                    if p.status.is_none() {
                        if let Err(e) = sys::kill(p.pid, signal) {
                            self.send_error(
                                None,
                                ErrorKind::InvalidRequest,
                                format!("signal {signal} to process {id}: {e}"),
                            );
                        }
                    }
                }
            }
            Message::ResizeTty { id, size } => {
                if let Some(i) = self.lookup(id) {
                    let r = match &self.procs[i].pty {
                        Some(pty) => sys::set_winsize(pty.as_raw_fd(), size.rows, size.cols)
                            .map_err(|e| e.to_string()),
                        None => Err("it has no terminal".to_string()),
                    };
                    if let Err(e) = r {
                        self.send_error(
                            None,
                            ErrorKind::InvalidRequest,
                            format!("resizing the terminal of process {id}: {e}"),
                        );
                    }
                }
            }
            other => {
                // Filtered by direction above; never trust that here.
                return self.protocol_error(format!("unexpected {} from the host", other.name()));
            }
        }
        Ok(())
    }

    /// The index of a live process; reports ids never used. Ids of ended
    /// processes are silently ignored (the host may race with an exit).
    fn lookup(&mut self, id: ProcessId) -> Option<usize> {
        let i = self.procs.iter().position(|p| p.id == id);
        if i.is_none() && !self.used_ids.contains(&id) {
            self.send_error(
                None,
                ErrorKind::InvalidRequest,
                format!("no process with id {id}"),
            );
        }
        i
    }

    fn claim_id(&mut self, id: ProcessId) -> bool {
        if !self.used_ids.insert(id) {
            self.send_error(
                None,
                ErrorKind::InvalidRequest,
                format!("process id {id} is already in use"),
            );
            return false;
        }
        true
    }

    fn stdin(&mut self, id: ProcessId, data: Vec<u8>) -> Result<(), String> {
        let Some(i) = self.lookup(id) else {
            return Ok(());
        };
        let p = &mut self.procs[i];
        if p.stdin_buf.len() + data.len() > STDIN_WINDOW as usize {
            return self.protocol_error(format!(
                "stdin of process {id} exceeds the window of {STDIN_WINDOW} bytes"
            ));
        }
        if p.stdin.is_none() || p.stdin_closing {
            // Nowhere to go: consumed.
            let bytes = data.len() as u32;
            self.send(&Message::StdinAck { id, bytes });
            return Ok(());
        }
        p.stdin_buf.extend_from_slice(&data);
        self.write_stdin(i);
        Ok(())
    }

    /// Moves queued stdin into the process, acknowledging what it took.
    fn write_stdin(&mut self, i: usize) {
        let p = &mut self.procs[i];
        let id = p.id;
        let mut consumed = 0usize;
        let mut broken = false;
        if let Some(fd) = &p.stdin {
            while consumed < p.stdin_buf.len() {
                match sys::write(fd.as_raw_fd(), &p.stdin_buf[consumed..]) {
                    Ok(n) => consumed += n,
                    Err(e) if would_block(&e) => break,
                    Err(_) => {
                        // EPIPE and the like: the process closed its stdin.
                        broken = true;
                        consumed = p.stdin_buf.len();
                        break;
                    }
                }
            }
        }
        p.stdin_buf.drain(..consumed);
        if broken {
            p.stdin = None;
        }
        if p.stdin_closing && p.stdin_buf.is_empty() {
            if let Some(fd) = p.stdin.take() {
                if p.pty.is_some() {
                    // On a terminal, end of input is the EOF character.
                    let _ = sys::write(fd.as_raw_fd(), &[0x04]);
                }
            }
        }
        if consumed > 0 {
            self.send(&Message::StdinAck {
                id,
                bytes: consumed as u32,
            });
        }
    }

    /// Reads available output of process `i`; with `drain`, until nothing is
    /// left (after the process ended).
    fn read_output(&mut self, i: usize, stderr: bool, buf: &mut [u8], drain: bool) {
        let p = &mut self.procs[i];
        let id = p.id;
        let slot = if stderr { &mut p.stderr } else { &mut p.stdout };
        let Some(fd) = slot.as_ref() else {
            return;
        };
        let fd: RawFd = fd.as_raw_fd();
        let mut chunks = Vec::new();
        let mut closed = false;
        loop {
            match sys::read(fd, &mut buf[..MAX_DATA_CHUNK]) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => {
                    chunks.push(buf[..n].to_vec());
                    if !drain {
                        break;
                    }
                }
                Err(e) if would_block(&e) => break,
                // EIO on a pty master: every slave is closed.
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        if closed {
            *slot = None;
        }
        for data in chunks {
            let m = if stderr {
                Message::Stderr { id, data }
            } else {
                Message::Stdout { id, data }
            };
            self.send(&m);
        }
    }

    fn set_status(&mut self, pid: libc::pid_t, status: i32) {
        if let Some(p) = self.procs.iter_mut().find(|p| p.pid == pid) {
            p.status = Some(status);
        }
    }
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// An error and its sources, "a: b: c".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
