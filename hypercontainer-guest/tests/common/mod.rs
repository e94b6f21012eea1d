//! Shared host side of the agent tests: the image, a protocol client, and
//! what a run produced.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::OnceLock;
use std::time::Duration;

use hypercontainer_image::testimage;
use hypercontainer_protocol::codec::{read_message, write_message};
use hypercontainer_protocol::{
    oci, ErrorKind, Hello, Message, Process, ProcessId, Rootfs, Start, MAX_DATA_CHUNK, STDIN_WINDOW,
};

pub const TIMEOUT: Duration = Duration::from_secs(60);
pub const MAIN: ProcessId = 1;

pub fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The image's rootfs: the busybox test image of
/// `hypercontainer_image::testimage` (its module docs list what it holds),
/// unpacked by umoci into a bundle. Built once into cargo's test scratch
/// directory and reused.
pub fn image_rootfs() -> &'static Path {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS.get_or_init(|| {
        let scratch = Path::new(env!("CARGO_TARGET_TMPDIR"));
        testimage::build_once(scratch, "agent-test-image", |dir, image| {
            image.unpack(&dir.join("bundle")).map(drop)
        })
        .unwrap_or_else(|e| panic!("building the test image: {e}"))
        .join("bundle/rootfs")
    })
}

pub fn agent_binary() -> PathBuf {
    std::env::var_os("HYPERCONTAINER_AGENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_hypercontainer-agent").into())
}

pub fn process(argv: &[&str]) -> Process {
    Process {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/bin".into()],
        ..Process::default()
    }
}

pub fn sh(script: &str) -> Process {
    process(&["sh", "-c", script])
}

/// The confinement the host-tier tests ask for: runc's namespaces and
/// basic mounts (a /proc of the container's PID namespace, a /dev tmpfs
/// with the default devices, devpts, /dev/shm, a read-only /sys).
pub fn test_spec() -> oci::Spec {
    let mount = |dest: &str, typ: &str, options: &[&str]| {
        let mut m = oci::Mount::default();
        m.set_destination(dest.into())
            .set_typ(Some(typ.into()))
            .set_source(Some(typ.into()))
            .set_options(Some(options.iter().map(|s| s.to_string()).collect()));
        m
    };
    let namespaces = [
        oci::LinuxNamespaceType::Pid,
        oci::LinuxNamespaceType::Ipc,
        oci::LinuxNamespaceType::Uts,
        oci::LinuxNamespaceType::Mount,
    ]
    .into_iter()
    .map(|t| {
        let mut ns = oci::LinuxNamespace::default();
        ns.set_typ(t);
        ns
    })
    .collect();
    let mut linux = oci::Linux::default();
    linux
        .set_namespaces(Some(namespaces))
        .set_resources(None)
        .set_masked_paths(None)
        .set_readonly_paths(None);
    let mut spec = hypercontainer_protocol::bare_spec();
    spec.set_linux(Some(linux)).set_mounts(Some(vec![
        mount("/proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
            ],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount("/sys", "sysfs", &["nosuid", "noexec", "nodev", "ro"]),
    ]));
    spec
}

/// A fresh copy of the image's rootfs and an agent serving it in new
/// namespaces.
pub fn session() -> Session {
    let src = image_rootfs();
    let root = tempfile::Builder::new()
        .prefix("hc-agent-root")
        .tempdir()
        .unwrap();
    run(Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", src.display()))
        .arg(root.path()));

    let (conn, guest) = UnixStream::pair().unwrap();
    let gfd = guest.as_raw_fd();
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--pid",
        "--fork",
        "--mount-proc",
        "--uts",
        "--ipc",
        "--",
    ])
    .arg(agent_binary())
    .args(["--fd", "3"]);
    let place_fd = move || {
        let r = if gfd == 3 {
            // SAFETY: clearing close-on-exec of a descriptor we own.
            unsafe { libc::fcntl(3, libc::F_SETFD, 0) }
        } else {
            // SAFETY: both descriptors are valid; dup2 is async-signal-safe.
            unsafe { libc::dup2(gfd, 3) }
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the hook only makes async-signal-safe calls (dup2, fcntl).
    unsafe { cmd.pre_exec(place_fd) };
    let agent = cmd.spawn().expect("spawning the agent under unshare");
    drop(guest);

    let rootfs = Rootfs::Directory {
        path: root.path().to_string_lossy().into_owned(),
    };
    Session::over(conn, agent, rootfs, Some(root))
}

/// One agent and the host side of its connection.
pub struct Session {
    pub conn: UnixStream,
    rx: Receiver<Message>,
    agent: Child,
    pub log: Vec<Message>,
    unacked: HashMap<ProcessId, u32>,
    rootfs: Rootfs,
    _keep: Option<tempfile::TempDir>,
}

impl Session {
    /// A session over a connected stream to an agent run by `agent`; Start
    /// messages use `rootfs`; `keep` is deleted when the session ends.
    pub fn over(
        conn: UnixStream,
        agent: Child,
        rootfs: Rootfs,
        keep: Option<tempfile::TempDir>,
    ) -> Self {
        let (tx, rx) = mpsc::channel();
        let mut reader = conn.try_clone().unwrap();
        std::thread::spawn(move || loop {
            match read_message(&mut reader) {
                Ok(Some(m)) => {
                    if tx.send(m).is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    eprintln!("test host: reading from the agent: {e}");
                    break;
                }
            }
        });
        let mut s = Session {
            conn,
            rx,
            agent,
            log: Vec::new(),
            unacked: HashMap::new(),
            rootfs,
            _keep: keep,
        };
        // The agent speaks first; the host answers its hello.
        let first = s.next();
        assert!(
            matches!(first, Some(Message::Hello(_))),
            "the agent's first message must be Hello: {first:?}"
        );
        s.send(&Message::Hello(Hello::new("agent test host")));
        s
    }

    pub fn send(&mut self, m: &Message) {
        write_message(&mut self.conn, m).unwrap();
    }

    pub fn start_with(&mut self, f: impl FnOnce(&mut Start)) {
        let mut start = Start {
            id: MAIN,
            rootfs: self.rootfs.clone(),
            shares: Vec::new(),
            process: Process::default(),
            hostname: "sandbox".into(),
            hosts: None,
            resolv_conf: None,
            network: Vec::new(),
            spec: test_spec(),
        };
        f(&mut start);
        for m in start.into_messages() {
            self.send(&m);
        }
    }

    pub fn start(&mut self, p: Process) {
        self.start_with(|s| s.process = p);
    }

    /// Next message (logged), or `None` at end of stream.
    pub fn next(&mut self) -> Option<Message> {
        match self.rx.recv_timeout(TIMEOUT) {
            Ok(m) => {
                if let Message::StdinAck { id, bytes } = m {
                    let u = self.unacked.entry(id).or_default();
                    *u = u.checked_sub(bytes).expect("ack of more than was sent");
                }
                self.log.push(m.clone());
                Some(m)
            }
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => {
                panic!("no message in {TIMEOUT:?}; got {:?}", self.log)
            }
        }
    }

    pub fn until(&mut self, what: &str, f: impl Fn(&Message) -> bool) -> Message {
        loop {
            match self.next() {
                Some(m) if f(&m) => return m,
                Some(_) => {}
                None => panic!("connection ended waiting for {what}; got {:?}", self.log),
            }
        }
    }

    pub fn output_so_far(&self, id: ProcessId) -> String {
        stream(&self.log, id, false)
    }

    pub fn until_output(&mut self, id: ProcessId, needle: &str) {
        while !self.output_so_far(id).contains(needle) {
            if self.next().is_none() {
                panic!(
                    "connection ended waiting for {needle:?}; got {:?}",
                    self.log
                );
            }
        }
    }

    /// Sends stdin within the credit window, waiting for acks as needed.
    pub fn stdin(&mut self, id: ProcessId, data: &[u8]) {
        for chunk in data.chunks(MAX_DATA_CHUNK) {
            while self.unacked.get(&id).copied().unwrap_or(0) + chunk.len() as u32 > STDIN_WINDOW {
                assert!(
                    self.next().is_some(),
                    "connection ended while sending stdin"
                );
            }
            *self.unacked.entry(id).or_default() += chunk.len() as u32;
            self.send(&Message::Stdin {
                id,
                data: chunk.to_vec(),
            });
        }
    }

    /// The root directory, for a [`Rootfs::Directory`] session.
    pub fn root_dir(&self) -> Option<PathBuf> {
        match &self.rootfs {
            Rootfs::Directory { path } => Some(PathBuf::from(path)),
            Rootfs::Layers { .. } | Rootfs::Overlay { .. } => None,
        }
    }

    /// Sends stdin without waiting for credit (to test the agent's limit).
    pub fn stdin_ignoring_window(&mut self, id: ProcessId, data: &[u8]) {
        *self.unacked.entry(id).or_default() += data.len() as u32;
        // The agent may close the connection midway.
        let _ = write_message(
            &mut self.conn,
            &Message::Stdin {
                id,
                data: data.to_vec(),
            },
        );
    }

    /// Reads to the end of the connection and waits for the agent to exit.
    pub fn finish(mut self) -> Outcome {
        while self.next().is_some() {}
        let status = self.agent.wait().unwrap();
        Outcome {
            msgs: self.log,
            agent_ok: status.success(),
        }
    }
}

fn stream(msgs: &[Message], want: ProcessId, stderr: bool) -> String {
    let mut out = Vec::new();
    for m in msgs {
        match m {
            Message::Stdout { id, data } if *id == want && !stderr => out.extend(data),
            Message::Stderr { id, data } if *id == want && stderr => out.extend(data),
            _ => {}
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub struct Outcome {
    pub msgs: Vec<Message>,
    pub agent_ok: bool,
}

impl Outcome {
    pub fn stdout(&self, id: ProcessId) -> String {
        stream(&self.msgs, id, false)
    }
    pub fn stderr(&self, id: ProcessId) -> String {
        stream(&self.msgs, id, true)
    }
    pub fn status(&self, want: ProcessId) -> i32 {
        let exits: Vec<i32> = self
            .msgs
            .iter()
            .filter_map(|m| match m {
                Message::Exited { id, status, .. } if *id == want => Some(*status),
                _ => None,
            })
            .collect();
        assert_eq!(
            exits.len(),
            1,
            "exactly one Exited for {want}: {:?}",
            self.msgs
        );
        // Nothing about the process after its exit.
        let last = self.msgs.iter().rposition(|m| message_id(m) == Some(want));
        assert!(matches!(self.msgs[last.unwrap()], Message::Exited { .. }));
        exits[0]
    }
    pub fn error(&self, want: ProcessId) -> Option<(ErrorKind, String)> {
        self.msgs.iter().find_map(|m| match m {
            Message::Error {
                id: Some(id),
                kind,
                message,
            } if *id == want => Some((*kind, message.clone())),
            _ => None,
        })
    }
    pub fn started(&self, want: ProcessId) -> bool {
        self.msgs
            .iter()
            .any(|m| matches!(m, Message::Started { id, .. } if *id == want))
    }
}

fn message_id(m: &Message) -> Option<ProcessId> {
    match m {
        Message::Started { id, .. }
        | Message::Stdout { id, .. }
        | Message::Stderr { id, .. }
        | Message::Exited { id, .. } => Some(*id),
        Message::Error { id, .. } => *id,
        _ => None,
    }
}
