//! Host-tier tests of the host side of the agent protocol
//! (`hypercontainer::agent_client`): the real static agent runs as a normal
//! process in private mount, pid, uts and ipc namespaces (util-linux
//! `unshare`), on a root filesystem unpacked by the SDK's image code from
//! the umoci-built busybox test image, and the client talks to it over a
//! socketpair.
//!
//! Needs root, `unshare`, `umoci` (or `HYPERCONTAINER_TEST_IMAGE`), a static
//! `/bin/busybox`, and the agent (`cargo xtask agent`, or
//! `HYPERCONTAINER_AGENT`).

mod sandbox_common;

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hypercontainer::agent_client::{AgentClient, Error, Output};
use hypercontainer_image::{ImageSource, Limits, Platform, UnpackOptions, WhiteoutMode};
use hypercontainer_protocol::{BootStage, ErrorKind, Process, Rootfs, Start};

const TIMEOUT: Duration = Duration::from_secs(30);

struct Agent {
    client: AgentClient,
    child: Child,
    _root: tempfile::TempDir,
    rootfs: String,
}

/// A fresh rootfs and an agent serving it in new namespaces.
fn agent() -> Agent {
    let root = tempfile::Builder::new()
        .prefix("hc-client-root")
        .tempdir()
        .unwrap();
    let rootfs = root.path().join("rootfs");
    let src = ImageSource::OciArchive {
        path: sandbox_common::image_archive().to_owned(),
    };
    src.open(
        Some(sandbox_common::TAG),
        &Platform::default(),
        &Limits::default(),
    )
    .unwrap()
    .unpack_rootfs(&rootfs, &UnpackOptions::new(WhiteoutMode::Apply))
    .unwrap();

    let agent = hypercontainer::guest::default_agent().unwrap_or_else(|e| panic!("{e}"));
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
    .arg(agent)
    .args(["--fd", "3"]);
    let place_fd = move || {
        let r = if gfd == 3 {
            // SAFETY: clearing close-on-exec of a descriptor we own;
            // fcntl is async-signal-safe.
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
    // SAFETY: the hook only makes async-signal-safe calls.
    unsafe { cmd.pre_exec(place_fd) };
    let child = cmd.spawn().expect("spawning the agent under unshare");
    drop(guest);
    let client = AgentClient::connect(conn, TIMEOUT, None).unwrap();
    Agent {
        client,
        child,
        rootfs: rootfs.to_string_lossy().into_owned(),
        _root: root,
    }
}

fn sh(script: &str) -> Process {
    Process {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        env: vec!["PATH=/bin".into()],
        ..Process::default()
    }
}

fn start(a: &Agent, p: Process) -> Start {
    let p_user = p.user.clone();
    Start {
        id: 0,
        rootfs: Rootfs::Directory {
            path: a.rootfs.clone(),
        },
        shares: Vec::new(),
        process: p,
        hostname: "client-test".into(),
        hosts: None,
        resolv_conf: None,
        network: Vec::new(),
        spec: sandbox_spec(&p_user),
    }
}

/// What a sandbox sends, Docker's confinement, but with the test host's own
/// resource limits: a host without `CAP_SYS_RESOURCE` cannot raise
/// `nofile` to the default hard limit as the guest's agent can.
fn sandbox_spec(user: &str) -> oci_spec::runtime::Spec {
    let mut spec =
        hypercontainer::spec::container_spec(&Default::default(), user).expect("the default spec");
    if let Some(p) = spec.process_mut() {
        p.set_rlimits(None);
    }
    spec
}

fn read_all(mut r: impl Read) -> String {
    let mut s = String::new();
    r.read_to_string(&mut s).unwrap();
    s
}

impl Agent {
    fn finish(mut self) {
        assert!(
            self.client.wait_ended(TIMEOUT).is_some(),
            "the agent ends the connection after the main process"
        );
        drop(self.client);
        assert!(self.child.wait().unwrap().success());
    }
}

#[test]
fn output_exit_code_and_boot_stages() {
    let a = agent();
    assert!(a.client.peer().software.starts_with("hypercontainer-agent"));
    let p = a
        .client
        .start(
            start(&a, sh("echo out; echo err >&2; hostname; exit 42")),
            Output::Piped,
            Output::Piped,
        )
        .unwrap();
    p.close_stdin().unwrap();
    assert!(p.wait_started(Some(TIMEOUT)).unwrap().is_some());
    let (out, err) = (p.stdout().unwrap(), p.stderr().unwrap());
    assert_eq!(read_all(out), "out\nclient-test\n");
    assert_eq!(read_all(err), "err\n");
    assert_eq!(p.wait().unwrap(), 42);
    assert!(p.first_output_at().is_some());
    let stages: Vec<BootStage> = a.client.boot_stages().iter().map(|s| s.stage).collect();
    assert_eq!(
        stages,
        [
            BootStage::AgentStart,
            BootStage::StartReceived,
            BootStage::RootfsReady,
            BootStage::ProcessExec
        ]
    );
    a.finish();
}

#[test]
fn stdin_beyond_the_window_through_cat() {
    let a = agent();
    let p = a
        .client
        .start(
            start(&a, sh("cat; echo done >&2")),
            Output::Piped,
            Output::Piped,
        )
        .unwrap();
    // More than the credit window, written while the output is read.
    let data: Vec<u8> = (0..1_500_000u32).map(|i| (i % 251) as u8).collect();
    let expect = data.clone();
    let mut w = p.stdin();
    let writer = std::thread::spawn(move || {
        w.write_all(&data).unwrap();
        w.close().unwrap();
    });
    let mut got = Vec::new();
    p.stdout().unwrap().read_to_end(&mut got).unwrap();
    writer.join().unwrap();
    assert_eq!(got.len(), expect.len());
    assert!(got == expect, "stdin came back changed");
    assert_eq!(read_all(p.stderr().unwrap()), "done\n");
    assert_eq!(p.wait().unwrap(), 0);
    a.finish();
}

#[test]
fn exec_tty_callbacks_errors_and_kill() {
    let a = agent();
    let main = a
        .client
        .start(start(&a, sh("exec sleep 600")), Output::Null, Output::Null)
        .unwrap();
    main.close_stdin().unwrap();
    main.wait_started(Some(TIMEOUT)).unwrap();

    // Exec while the main process runs, with its own env and output.
    let mut p = sh("echo $GREETING; pwd");
    p.env.push("GREETING=exec".into());
    p.cwd = "/data".into();
    let x = a.client.exec(p, Output::Piped, Output::Null).unwrap();
    x.close_stdin().unwrap();
    assert_eq!(read_all(x.stdout().unwrap()), "exec\n/data\n");
    assert_eq!(x.wait().unwrap(), 0);

    // On a terminal, with output to a callback.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let mut p = sh("tty; stty size");
    p.terminal = true;
    p.window = Some(hypercontainer_protocol::WindowSize { rows: 33, cols: 77 });
    let t = a
        .client
        .exec(
            p,
            Output::Callback(Box::new(move |d| s2.lock().unwrap().extend_from_slice(d))),
            Output::Null,
        )
        .unwrap();
    t.close_stdin().unwrap();
    assert_eq!(t.wait().unwrap(), 0);
    let out = String::from_utf8(seen.lock().unwrap().clone()).unwrap();
    assert!(out.starts_with("/dev/pts/"), "{out:?}");
    assert!(out.contains("33 77"), "{out:?}");

    // A process that cannot start.
    let n = a
        .client
        .exec(
            Process {
                argv: vec!["no-such-program".into()],
                env: vec!["PATH=/bin".into()],
                ..Process::default()
            },
            Output::Null,
            Output::Null,
        )
        .unwrap();
    match n.wait_started(Some(TIMEOUT)) {
        Err(Error::Spawn { kind, status, .. }) => {
            assert_eq!((kind, status), (ErrorKind::NotFound, 127))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(n.wait().unwrap(), 127);

    // Signals reach the main process; its end ends the session.
    assert_eq!(main.wait_timeout(Duration::from_millis(100)).unwrap(), None);
    main.signal(libc::SIGKILL).unwrap();
    assert_eq!(main.wait().unwrap(), 137);
    a.finish();
}

#[test]
fn handles_outliving_the_client_fail_cleanly() {
    let a = agent();
    let main = a
        .client
        .start(start(&a, sh("exec sleep 600")), Output::Piped, Output::Null)
        .unwrap();
    main.wait_started(Some(TIMEOUT)).unwrap();
    let Agent {
        client, mut child, ..
    } = a;
    let out = main.stdout().unwrap();
    drop(client);
    assert!(matches!(main.wait(), Err(Error::Disconnected(_))));
    assert_eq!(read_all(out), "");
    assert!(main.signal(libc::SIGTERM).is_err());
    assert!(main.stdin().write(b"x").is_err());
    // The agent sees the connection close and exits (killing its
    // processes) instead of lingering.
    child.wait().unwrap();
}

fn create(
    a: &Agent,
    container: u32,
    ends_pod: bool,
    p: Process,
) -> hypercontainer_protocol::Create {
    let s = start(a, p);
    hypercontainer_protocol::Create {
        container,
        id: 0,
        ends_pod,
        rootfs: s.rootfs,
        shares: Vec::new(),
        process: s.process,
        spec: s.spec,
        hosts: None,
    }
}

fn wait_error(a: &Agent, needle: &str) -> String {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        if let Some((_, m)) = a
            .client
            .agent_errors()
            .into_iter()
            .find(|(_, m)| m.contains(needle))
        {
            return m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no agent error with {needle:?}: {:?}",
            a.client.agent_errors()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn containers_of_a_pod_come_and_go_on_their_own() {
    let a = agent();
    a.client
        .setup(hypercontainer_protocol::Setup {
            hostname: "pod".into(),
            ..Default::default()
        })
        .unwrap();
    // One container exits with 3; the other keeps running.
    let one = a
        .client
        .create(
            create(&a, 1, false, sh("echo one; exit 3")),
            Output::Piped,
            Output::Null,
        )
        .unwrap();
    let two = a
        .client
        .create(
            create(&a, 2, false, sh("echo two $(hostname); cat; echo bye")),
            Output::Piped,
            Output::Null,
        )
        .unwrap();
    one.close_stdin().unwrap();
    assert_eq!(read_all(one.stdout().unwrap()), "one\n");
    assert_eq!(one.wait().unwrap(), 3);
    let mut out_two = io::BufReader::new(two.stdout().unwrap());
    let mut line = String::new();
    io::BufRead::read_line(&mut out_two, &mut line).unwrap();
    assert_eq!(line, "two pod\n");

    // Exec into the running one; not into the stopped one or one that
    // never was.
    let e = a
        .client
        .exec_in(2, sh("echo exec-two"), Output::Piped, Output::Null)
        .unwrap();
    e.close_stdin().unwrap();
    assert_eq!(read_all(e.stdout().unwrap()), "exec-two\n");
    assert_eq!(e.wait().unwrap(), 0);
    for (c, why) in [(1, "is not running"), (9, "no container with id 9")] {
        let e = a
            .client
            .exec_in(c, sh("true"), Output::Null, Output::Null)
            .unwrap();
        let err = e.wait_started(Some(TIMEOUT)).unwrap_err();
        assert!(err.to_string().contains(why), "{err}");
    }

    // A container id is never reused; removing twice or an unknown one is
    // an error, and the agent serves on.
    let again = a
        .client
        .create(create(&a, 1, false, sh("true")), Output::Null, Output::Null)
        .unwrap();
    let err = again.wait_started(Some(TIMEOUT)).unwrap_err();
    assert!(err.to_string().contains("already in use"), "{err}");
    a.client.remove(1).unwrap();
    a.client.wait_removed(1, TIMEOUT).unwrap();
    a.client.remove(1).unwrap();
    wait_error(&a, "container 1 is already removed");
    a.client.remove(77).unwrap();
    wait_error(&a, "no container with id 77");

    // Stats answer for a known container, and say so for an unknown one.
    let known = a.client.stats(2, TIMEOUT).unwrap();
    assert!(known.exists && known.container == 2, "{known:?}");
    assert!(known.guest_memory_total_kib > 0, "{known:?}");
    let unknown = a.client.stats(77, TIMEOUT).unwrap();
    assert!(!unknown.exists && unknown.memory_bytes == 0, "{unknown:?}");

    // Removing a running container kills what runs in it.
    a.client.remove(2).unwrap();
    a.client.wait_removed(2, TIMEOUT).unwrap();
    assert_eq!(two.wait().unwrap(), 128 + 9);

    // A container created now runs, and the pod ends on request.
    let three = a
        .client
        .create(
            create(&a, 3, false, sh("echo three")),
            Output::Piped,
            Output::Null,
        )
        .unwrap();
    three.close_stdin().unwrap();
    assert_eq!(read_all(three.stdout().unwrap()), "three\n");
    assert_eq!(three.wait().unwrap(), 0);
    a.client.shutdown().unwrap();
    a.finish();
}
