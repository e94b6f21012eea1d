//! Host-tier tests: the real agent binary, run as a normal process in
//! private mount, pid, uts and ipc namespaces with its own /proc (util-linux
//! `unshare`), talking
//! the real protocol over a socketpair, on a root filesystem unpacked by
//! umoci from an OCI image holding a static busybox.
//!
//! Needs root, `unshare`, `umoci` and a static `/bin/busybox`. The agent
//! binary is the one cargo built for these tests, or the one named by the
//! `HYPERCONTAINER_AGENT` environment variable (e.g. the static `guest`
//! profile build).

mod common;

use std::io;

use common::*;
use hypercontainer_protocol::{
    BootStage, ErrorKind, Hello, Message, Process, Rlimit, RlimitResource, WindowSize,
};

fn run_main(p: Process) -> Outcome {
    let mut s = session();
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
    let (kind, msg) = o.error(MAIN).unwrap();
    assert_eq!(kind, ErrorKind::PermissionDenied);
    assert_eq!(msg, r#"exec: "/etc/passwd": permission denied"#);
    assert_eq!(o.status(MAIN), 126);

    // A directory, in runc's words.
    let o = run_main(process(&["/etc"]));
    let (kind, msg) = o.error(MAIN).unwrap();
    assert_eq!(kind, ErrorKind::PermissionDenied);
    assert_eq!(msg, r#"exec: "/etc": is a directory"#);
    assert_eq!(o.status(MAIN), 126);
}

#[test]
fn sigkill_is_137() {
    let mut s = session();
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
    let mut s = session();
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
    let mut s = session();
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
    let mut s = session();
    s.start(sh("read line; echo \"main got $line\""));
    s.until("main started", |m| {
        matches!(m, Message::Started { id: MAIN, .. })
    });
    s.send(&Message::Exec {
        container: 1,
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
        container: 1,
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
    let mut s = session();
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
    let mut s = session();
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
fn the_main_process_is_pid_1_of_its_own_namespace_and_reaps_orphans() {
    // Each inner shell leaves an orphan that exits later; reparented to the
    // main process (PID 1 of the container's PID namespace, as under runc),
    // a shell that waits reaps it.
    let o = run_main(sh(
        "for i in 1 2 3; do sh -c 'sleep 0.1 & exit 0'; done; sleep 0.6; \
         echo pid1=$(cut -d' ' -f2 /proc/1/stat); \
         for f in /proc/[0-9]*/stat; do cut -d' ' -f2,3 $f; done | grep -c ' Z$'; true",
    ));
    assert_eq!(o.stdout(MAIN), "pid1=(sh)\n0\n");
    assert_eq!(o.status(MAIN), 0);
}

#[test]
fn boot_stages_are_reported_in_order() {
    const RUNS: usize = 10;
    let mut exec_us = Vec::new();
    let mut rootfs_us = Vec::new();
    for _ in 0..RUNS {
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
                BootStage::StartReceived,
                BootStage::RootfsReady,
                BootStage::ProcessExec
            ]
        );
        assert!(stages.windows(2).all(|w| w[0].1 <= w[1].1));
        // Stage times come before the process's exit in the stream.
        let exec_pos = o.msgs.iter().position(|m| {
            matches!(
                m,
                Message::BootStage {
                    stage: BootStage::ProcessExec,
                    ..
                }
            )
        });
        let exit_pos = o
            .msgs
            .iter()
            .position(|m| matches!(m, Message::Exited { .. }));
        assert!(exec_pos < exit_pos);
        exec_us.push((stages[2].1 - stages[0].1) / 1000);
        rootfs_us.push((stages[1].1 - stages[0].1) / 1000);
    }
    exec_us.sort_unstable();
    rootfs_us.sort_unstable();
    eprintln!(
        "agent start to process exec over {RUNS} runs: min {} us, median {} us, max {} us \
         (of which to rootfs ready: median {} us)",
        exec_us[0],
        exec_us[RUNS / 2],
        exec_us[RUNS - 1],
        rootfs_us[RUNS / 2],
    );
}

#[test]
fn hostile_frames_close_the_connection_with_an_error() {
    // Garbage instead of a frame header: oversized length.
    let mut s = session();
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
    let mut s = session();
    s.send(&Message::Exited {
        id: 1,
        status: 0,
        oom_killed: false,
    });
    let o = s.finish();
    assert!(o.msgs.iter().any(|m| matches!(
        m,
        Message::Error {
            kind: ErrorKind::Protocol,
            ..
        }
    )));

    // Wrong protocol version in the host's hello (a fresh agent, no hello yet).
    let mut s = session();
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

#[test]
fn exec_processes_are_killed_and_reported_when_the_main_process_ends() {
    let mut s = session();
    s.start(sh("read x; exit 4"));
    s.until("main started", |m| {
        matches!(m, Message::Started { id: MAIN, .. })
    });
    s.send(&Message::Exec {
        container: 1,
        id: 2,
        process: Box::new(process(&["sleep", "60"])),
    });
    s.until("exec started", |m| {
        matches!(m, Message::Started { id: 2, .. })
    });
    s.stdin(MAIN, b"go\n");
    let o = s.finish();
    assert_eq!(o.status(2), 137);
    assert_eq!(o.status(MAIN), 4);
    let last_two: Vec<_> = o.msgs.iter().rev().take(2).collect();
    assert!(matches!(
        last_two[0],
        Message::Exited {
            id: MAIN,
            status: 4,
            ..
        }
    ));
    assert!(matches!(
        last_two[1],
        Message::Exited {
            id: 2,
            status: 137,
            ..
        }
    ));
}

#[test]
fn unread_stdin_does_not_block_the_connection() {
    // The process never reads stdin: a whole window of it stays queued in
    // the pipe and the agent, yet signals and other processes get through.
    let mut s = session();
    s.start(process(&["sleep", "60"]));
    s.until("main started", |m| {
        matches!(m, Message::Started { id: MAIN, .. })
    });
    s.stdin(
        MAIN,
        &vec![b'z'; hypercontainer_protocol::STDIN_WINDOW as usize],
    );
    s.send(&Message::Exec {
        container: 1,
        id: 2,
        process: Box::new(sh("echo still responsive")),
    });
    s.until("exec exit", |m| matches!(m, Message::Exited { id: 2, .. }));
    s.send(&Message::Signal {
        id: MAIN,
        signal: libc::SIGKILL,
    });
    let o = s.finish();
    assert_eq!(o.stdout(2), "still responsive\n");
    assert_eq!(o.status(MAIN), 137);
}

#[test]
fn overrunning_the_stdin_window_is_a_protocol_error() {
    let mut s = session();
    s.start(process(&["sleep", "60"]));
    s.until("main started", |m| {
        matches!(m, Message::Started { id: MAIN, .. })
    });
    // Ignore the credit: a pipe's worth, a window, and more, without waiting.
    let chunk = vec![b'z'; hypercontainer_protocol::MAX_DATA_CHUNK];
    let total = 64 * 1024 + hypercontainer_protocol::STDIN_WINDOW as usize * 2;
    for _ in 0..total / chunk.len() {
        s.stdin_ignoring_window(MAIN, &chunk);
    }
    let o = s.finish();
    assert!(o.msgs.iter().any(|m| matches!(
        m,
        Message::Error { id: None, kind: ErrorKind::Protocol, message } if message.contains("window")
    )));
    // The sandbox still ends properly: the main process is killed and reported.
    assert_eq!(o.status(MAIN), 137);
    assert!(!o.agent_ok);
}

#[test]
fn etc_files_replace_image_symlinks_instead_of_following_them() {
    let mut s = session();
    let root = s.root_dir().unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("etc/hosts")).unwrap();
    std::os::unix::fs::symlink("../../../../../../tmp/x", root.join("etc/resolv.conf")).unwrap();
    s.start_with(|st| {
        st.process = sh("cat /etc/hosts; grep -c app /etc/passwd; cat /etc/resolv.conf");
        st.hosts = Some("10.1.2.3 db\n".into());
        st.resolv_conf = Some("nameserver 1.1.1.1\n".into());
    });
    let o = s.finish();
    // /etc/passwd (the link's target) is intact: the link was replaced.
    assert_eq!(o.stdout(MAIN), "10.1.2.3 db\n1\nnameserver 1.1.1.1\n");
}

#[test]
fn network_interfaces_are_refused_outside_a_vm() {
    // A host-tier agent shares the host's network: it must not touch it.
    let mut s = session();
    s.start_with(|st| {
        st.process = process(&["true"]);
        st.network = vec![hypercontainer_protocol::Interface {
            mac: [2, 0, 0, 0, 0, 1],
            addresses: vec!["10.9.9.2/24".parse().unwrap()],
            ..Default::default()
        }];
    });
    let o = s.finish();
    let (kind, msg) = o.error(MAIN).unwrap();
    assert_eq!(kind, ErrorKind::InvalidRequest);
    assert!(msg.contains("only be configured in a VM"), "{msg}");
    assert!(!o.started(MAIN));
    assert_eq!(o.status(MAIN), 125);
}
