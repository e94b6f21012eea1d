//! Host-tier tests: the real agent binary, run as a normal process in
//! private mount, pid, uts and ipc namespaces (util-linux `unshare`), talking
//! the real protocol over a socketpair, on a root filesystem unpacked by
//! umoci from an OCI image holding a static busybox.
//!
//! Needs root, `unshare`, `umoci` and a static `/bin/busybox`.

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

use hypercontainer_protocol::codec::{read_message, write_message};
use hypercontainer_protocol::{
    BootStage, ErrorKind, Hello, Message, Process, ProcessId, Rlimit, RlimitResource, Rootfs,
    Start, WindowSize, MAX_DATA_CHUNK, STDIN_WINDOW,
};

const TIMEOUT: Duration = Duration::from_secs(30);
const MAIN: ProcessId = 1;

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The image's rootfs, built once per test binary: umoci init/new/unpack,
/// add busybox and its applet links, users and groups, repack, and unpack
/// the new image into a bundle.
fn image_rootfs() -> &'static Path {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("hc-agent-image")
            .tempdir()
            .unwrap()
            .keep();
        let layout = dir.join("layout");
        let image = format!("{}:test", layout.display());
        run(Command::new("umoci")
            .args(["init", "--layout"])
            .arg(&layout));
        run(Command::new("umoci").args(["new", "--image", &image]));
        let work = dir.join("work");
        run(Command::new("umoci")
            .args(["unpack", "--image", &image])
            .arg(&work));
        let root = work.join("rootfs");
        for d in ["bin", "etc", "home/app", "data/sub"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        std::os::unix::fs::chown(root.join("home/app"), Some(1000), Some(1000)).unwrap();
        let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
        for applet in String::from_utf8(list.stdout).unwrap().lines() {
            if applet != "busybox" {
                std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
            }
        }
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            root.join("etc/group"),
            "root:x:0:\nwheel:x:10:app\napp:x:1000:\n",
        )
        .unwrap();
        run(Command::new("umoci")
            .args(["repack", "--image", &image])
            .arg(&work));
        let bundle = dir.join("bundle");
        run(Command::new("umoci")
            .args(["unpack", "--image", &image])
            .arg(&bundle));
        bundle.join("rootfs")
    })
}

fn process(argv: &[&str]) -> Process {
    Process {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/bin".into()],
        ..Process::default()
    }
}

fn sh(script: &str) -> Process {
    process(&["sh", "-c", script])
}

/// One agent and the host side of its connection.
struct Session {
    conn: UnixStream,
    rx: Receiver<Message>,
    agent: Child,
    log: Vec<Message>,
    unacked: HashMap<ProcessId, u32>,
    root: tempfile::TempDir,
}

impl Session {
    fn new() -> Self {
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
        cmd.args(["--mount", "--pid", "--fork", "--uts", "--ipc", "--"])
            .arg(env!("CARGO_BIN_EXE_hypercontainer-agent"))
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

        let (tx, rx) = mpsc::channel();
        let mut reader = conn.try_clone().unwrap();
        std::thread::spawn(move || {
            while let Ok(Some(m)) = read_message(&mut reader) {
                if tx.send(m).is_err() {
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
            root,
        };
        s.send(&Message::Hello(Hello::new("host-tier test")));
        s
    }

    fn send(&mut self, m: &Message) {
        write_message(&mut self.conn, m).unwrap();
    }

    fn start_with(&mut self, f: impl FnOnce(&mut Start)) {
        let mut start = Start {
            id: MAIN,
            rootfs: Rootfs::Directory {
                path: self.root.path().to_string_lossy().into_owned(),
            },
            process: Process::default(),
            hostname: "sandbox".into(),
            hosts: None,
            resolv_conf: None,
        };
        f(&mut start);
        self.send(&Message::Start(Box::new(start)));
    }

    fn start(&mut self, p: Process) {
        self.start_with(|s| s.process = p);
    }

    /// Next message (logged), or `None` at end of stream.
    fn next(&mut self) -> Option<Message> {
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

    fn until(&mut self, what: &str, f: impl Fn(&Message) -> bool) -> Message {
        loop {
            match self.next() {
                Some(m) if f(&m) => return m,
                Some(_) => {}
                None => panic!("connection ended waiting for {what}; got {:?}", self.log),
            }
        }
    }

    fn output_so_far(&self, id: ProcessId) -> String {
        stream(&self.log, id, false)
    }

    fn until_output(&mut self, id: ProcessId, needle: &str) {
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
    fn stdin(&mut self, id: ProcessId, data: &[u8]) {
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

    /// Reads to the end of the connection and waits for the agent to exit.
    fn finish(mut self) -> Outcome {
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

struct Outcome {
    msgs: Vec<Message>,
    agent_ok: bool,
}

impl Outcome {
    fn stdout(&self, id: ProcessId) -> String {
        stream(&self.msgs, id, false)
    }
    fn stderr(&self, id: ProcessId) -> String {
        stream(&self.msgs, id, true)
    }
    fn status(&self, want: ProcessId) -> i32 {
        let exits: Vec<i32> = self
            .msgs
            .iter()
            .filter_map(|m| match m {
                Message::Exited { id, status } if *id == want => Some(*status),
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
    fn error(&self, want: ProcessId) -> Option<(ErrorKind, String)> {
        self.msgs.iter().find_map(|m| match m {
            Message::Error {
                id: Some(id),
                kind,
                message,
            } if *id == want => Some((*kind, message.clone())),
            _ => None,
        })
    }
    fn started(&self, want: ProcessId) -> bool {
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

fn run_main(p: Process) -> Outcome {
    let mut s = Session::new();
    s.start(p);
    s.finish()
}

#[test]
fn output_and_exit_code() {
    let o = run_main(sh("echo out; echo err >&2; exit 42"));
    assert!(o.agent_ok);
    assert!(o.started(MAIN));
    assert_eq!(o.stdout(MAIN), "out\n");
    assert_eq!(o.stderr(MAIN), "err\n");
    assert_eq!(o.status(MAIN), 42);
    assert!(o.error(MAIN).is_none());

    let o = run_main(process(&["true"]));
    assert_eq!(o.status(MAIN), 0);
}

#[test]
fn missing_executable_is_127() {
    let o = run_main(process(&["no-such-program", "x"]));
    let (kind, msg) = o.error(MAIN).expect("an error for the process");
    assert_eq!(kind, ErrorKind::NotFound);
    assert!(msg.contains("executable file not found in $PATH"), "{msg}");
    assert!(!o.started(MAIN));
    assert_eq!(o.status(MAIN), 127);

    let o = run_main(process(&["/bin/not-there"]));
    assert_eq!(o.error(MAIN).unwrap().0, ErrorKind::NotFound);
    assert_eq!(o.status(MAIN), 127);

    // A file that is not executable.
    let o = run_main(process(&["/etc/passwd"]));
    assert_eq!(o.error(MAIN).unwrap().0, ErrorKind::PermissionDenied);
    assert_eq!(o.status(MAIN), 126);
}

#[test]
fn sigkill_is_137() {
    let mut s = Session::new();
    s.start(process(&["sleep", "60"]));
    s.until("started", |m| matches!(m, Message::Started { .. }));
    s.send(&Message::Signal {
        id: MAIN,
        signal: libc::SIGKILL,
    });
    let o = s.finish();
    assert_eq!(o.status(MAIN), 137);
}

#[test]
fn signals_are_forwarded() {
    let mut s = Session::new();
    s.start(sh(
        "trap 'echo got TERM; exit 3' TERM; echo ready; while :; do sleep 0.05; done",
    ));
    s.until_output(MAIN, "ready\n");
    s.send(&Message::Signal {
        id: MAIN,
        signal: libc::SIGTERM,
    });
    let o = s.finish();
    assert_eq!(o.stdout(MAIN), "ready\ngot TERM\n");
    assert_eq!(o.status(MAIN), 3);
}

#[test]
fn env_cwd_and_hostname() {
    let mut s = Session::new();
    s.start_with(|st| {
        st.process = Process {
            env: vec!["PATH=/bin".into(), "GREETING=hello world".into()],
            cwd: "/data/sub".into(),
            ..sh("echo \"$GREETING\"; pwd; echo $HOME; hostname; cat /etc/hostname /etc/hosts /etc/resolv.conf; umask")
        };
        st.hostname = "box1".into();
        st.hosts = Some("127.0.0.1 localhost box1\n".into());
        st.resolv_conf = Some("nameserver 10.0.2.3\n".into());
        st.process.umask = Some(0o027);
    });
    let o = s.finish();
    assert_eq!(
        o.stdout(MAIN),
        "hello world\n/data/sub\n/root\nbox1\nbox1\n127.0.0.1 localhost box1\nnameserver 10.0.2.3\n0027\n"
    );
    assert_eq!(o.status(MAIN), 0);
}

#[test]
fn bad_cwd_is_an_error_before_exec() {
    let o = run_main(Process {
        cwd: "/does/not/exist".into(),
        ..process(&["true"])
    });
    let (kind, msg) = o.error(MAIN).unwrap();
    assert_eq!(kind, ErrorKind::BadCwd);
    assert!(msg.contains("/does/not/exist"), "{msg}");
    assert!(!o.started(MAIN));
    assert_eq!(o.status(MAIN), 125);
}

#[test]
fn user_switch_through_the_images_passwd() {
    let o = run_main(Process {
        user: "app".into(),
        additional_groups: vec!["root".into()],
        ..sh("id -u; id -g; id -G; echo $HOME; touch /home/app/ok && echo can-write; touch /etc/x 2>/dev/null || echo no-write")
    });
    assert_eq!(
        o.stdout(MAIN),
        "1000\n1000\n1000 0 10\n/home/app\ncan-write\nno-write\n"
    );
    assert_eq!(o.status(MAIN), 0);

    let o = run_main(Process {
        user: "1234:4321".into(),
        ..sh("id -u; id -g")
    });
    assert_eq!(o.stdout(MAIN), "1234\n4321\n");

    let o = run_main(Process {
        user: "ghost".into(),
        ..process(&["true"])
    });
    let (kind, msg) = o.error(MAIN).unwrap();
    assert_eq!(kind, ErrorKind::BadUser);
    assert!(msg.contains("unable to find user ghost"), "{msg}");
    assert_eq!(o.status(MAIN), 125);
}

#[test]
fn rlimits_and_no_new_privs() {
    let o = run_main(Process {
        rlimits: vec![Rlimit {
            resource: RlimitResource::Nofile,
            soft: 123,
            hard: 456,
        }],
        no_new_privs: true,
        ..sh("ulimit -n; ulimit -Hn; grep NoNewPrivs /proc/self/status")
    });
    assert_eq!(o.stdout(MAIN), "123\n456\nNoNewPrivs:\t1\n");
}

#[test]
fn exec_runs_extra_processes_with_their_own_stdio() {
    let mut s = Session::new();
    s.start(sh("read line; echo \"main got $line\""));
    s.until("main started", |m| {
        matches!(m, Message::Started { id: MAIN, .. })
    });
    s.send(&Message::Exec {
        id: 2,
        process: Box::new(sh("echo from exec; echo exec-err >&2; cat; exit 7")),
    });
    s.until("exec started", |m| {
        matches!(m, Message::Started { id: 2, .. })
    });
    s.stdin(2, b"piped to exec\n");
    s.send(&Message::CloseStdin { id: 2 });
    s.until("exec exit", |m| matches!(m, Message::Exited { id: 2, .. }));
    // An exec of a missing program fails on its own.
    s.send(&Message::Exec {
        id: 3,
        process: Box::new(process(&["nope"])),
    });
    s.until("exec 3 exit", |m| {
        matches!(m, Message::Exited { id: 3, .. })
    });
    s.stdin(MAIN, b"bye\n");
    let o = s.finish();
    assert_eq!(o.stdout(2), "from exec\npiped to exec\n");
    assert_eq!(o.stderr(2), "exec-err\n");
    assert_eq!(o.status(2), 7);
    assert_eq!(o.status(3), 127);
    assert_eq!(o.stdout(MAIN), "main got bye\n");
    assert_eq!(o.status(MAIN), 0);
    // The main process's exit is the last thing the agent says.
    assert!(matches!(
        o.msgs.last(),
        Some(Message::Exited { id: MAIN, .. })
    ));
}

#[test]
fn large_stdin_and_stdout_respect_flow_control() {
    let mut s = Session::new();
    // Echo everything back and count it.
    s.start(sh("cat; echo; head -c 3000000 /dev/zero | tr '\\0' x"));
    let input: Vec<u8> = (0..1_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    s.stdin(MAIN, &input);
    s.send(&Message::CloseStdin { id: MAIN });
    let o = s.finish();
    let out = o.stdout(MAIN);
    assert_eq!(out.len(), 1_000_000 + 1 + 3_000_000);
    assert_eq!(out.as_bytes()[..1_000_000], input[..]);
    assert!(out[1_000_001..].bytes().all(|b| b == b'x'));
    assert_eq!(o.status(MAIN), 0);
}

#[test]
fn terminal_mode_and_resize() {
    let mut s = Session::new();
    s.start(Process {
        terminal: true,
        window: Some(WindowSize {
            rows: 30,
            cols: 100,
        }),
        ..sh("tty; stty size; read x; stty size; echo \"[$x]\" >&2")
    });
    s.until_output(MAIN, "30 100");
    s.send(&Message::ResizeTty {
        id: MAIN,
        size: WindowSize {
            rows: 50,
            cols: 120,
        },
    });
    s.stdin(MAIN, b"typed\n");
    let o = s.finish();
    let out = o.stdout(MAIN);
    // The terminal echoes input and turns \n into \r\n; stderr is merged.
    assert_eq!(
        out,
        "/dev/pts/0\r\n30 100\r\ntyped\r\n50 120\r\n[typed]\r\n"
    );
    assert_eq!(o.stderr(MAIN), "");
    assert_eq!(o.status(MAIN), 0);
}

#[test]
fn orphans_are_reaped() {
    // Each inner shell leaves an orphan that exits later; reparented to the
    // agent (PID 1 of the namespace), it must not stay a zombie.
    let o = run_main(sh(
        "for i in 1 2 3; do sh -c 'sleep 0.1 & exit 0'; done; sleep 0.6; \
         echo pid1=$(cut -d' ' -f2 /proc/1/stat); \
         for f in /proc/[0-9]*/stat; do cut -d' ' -f2,3 $f; done | grep -c ' Z$'; true",
    ));
    assert_eq!(o.stdout(MAIN), "pid1=(hypercontainer-)\n0\n");
    assert_eq!(o.status(MAIN), 0);
}

#[test]
fn boot_stages_are_reported_in_order() {
    let o = run_main(process(&["true"]));
    let stages: Vec<(BootStage, u64)> = o
        .msgs
        .iter()
        .filter_map(|m| match m {
            Message::BootStage { stage, boottime_ns } => Some((*stage, *boottime_ns)),
            _ => None,
        })
        .collect();
    let kinds: Vec<BootStage> = stages.iter().map(|s| s.0).collect();
    assert_eq!(
        kinds,
        [
            BootStage::AgentStart,
            BootStage::RootfsReady,
            BootStage::ProcessExec
        ]
    );
    assert!(stages.windows(2).all(|w| w[0].1 <= w[1].1));
    let us = (stages[2].1 - stages[0].1) / 1000;
    eprintln!("agent start to process exec: {us} us");
}

#[test]
fn hostile_frames_close_the_connection_with_an_error() {
    // Garbage instead of a frame header: oversized length.
    let mut s = Session::new();
    io::Write::write_all(&mut s.conn, &[0xff, 0xff, 0xff, 0x7f, 0]).unwrap();
    let o = s.finish();
    assert!(o.msgs.iter().any(|m| matches!(
        m,
        Message::Error {
            id: None,
            kind: ErrorKind::Protocol,
            ..
        }
    )));
    assert!(!o.agent_ok);

    // A guest-to-host message sent by the host.
    let mut s = Session::new();
    s.send(&Message::Exited { id: 1, status: 0 });
    let o = s.finish();
    assert!(o.msgs.iter().any(|m| matches!(
        m,
        Message::Error {
            kind: ErrorKind::Protocol,
            ..
        }
    )));

    // Wrong protocol version in the host's hello (a fresh agent, no hello yet).
    let mut s = Session::new();
    s.log.clear();
    let mut bad = Message::Hello(Hello::new("x")).to_frame().unwrap();
    bad[5..9].copy_from_slice(&99u32.to_le_bytes());
    // The session already sent a good hello; this second one is the bad frame.
    io::Write::write_all(&mut s.conn, &bad).unwrap();
    let o = s.finish();
    assert!(o.msgs.iter().any(|m| matches!(
        m,
        Message::Error {
            kind: ErrorKind::Version,
            ..
        }
    )));
}
