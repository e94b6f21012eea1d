use super::*;
use hypercontainer_protocol::codec::{read_message, write_message};
use hypercontainer_protocol::{Rootfs, Upper, MAX_DATA_CHUNK, STDIN_WINDOW};
use std::io::Write;

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
