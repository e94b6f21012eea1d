use super::*;
use crate::pod::{Create, Setup};
use crate::MAX_DATA_CHUNK;

fn sample_process() -> Process {
    Process {
        argv: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
        env: vec!["PATH=/bin".into(), "A=b=c".into()],
        cwd: "/tmp".into(),
        user: "nobody:nogroup".into(),
        additional_groups: vec!["wheel".into(), "10".into()],
        rlimits: vec![Rlimit {
            resource: RlimitResource::Nofile,
            soft: 1024,
            hard: u64::MAX,
        }],
        umask: Some(0o027),
        no_new_privs: true,
        terminal: true,
        window: Some(WindowSize { rows: 24, cols: 80 }),
    }
}

fn all_messages() -> Vec<Message> {
    vec![
        Message::Hello(Hello::new("test 1.0")),
        Message::Setup(Box::new(Setup {
            hostname: "box".into(),
            hosts: Some("127.0.0.1 localhost\n".into()),
            resolv_conf: None,
            network: Vec::new(),
            shares: Vec::new(),
        })),
        Message::Create(Box::new(Create {
            container: 1,
            id: 1,
            ends_pod: true,
            rootfs: Rootfs::Layers {
                layers: vec!["layer0".into(), "layer1".into()],
                upper: Upper::Disk {
                    serial: "upper".into(),
                },
            },
            shares: Vec::new(),
            process: sample_process(),
            // The oci-spec crate's default: mounts, capabilities,
            // namespaces, masked paths, resources.
            spec: crate::oci::Spec::default(),
            hosts: Some("127.0.0.1\tlocalhost\n127.0.0.1\tweb\n".into()),
        })),
        Message::Setup(Box::new(Setup {
            shares: vec!["vols".into(), "root".into()],
            hostname: String::new(),
            hosts: None,
            resolv_conf: Some("nameserver 10.0.2.3\n".into()),
            network: vec![
                crate::Interface {
                    mac: [2, 0, 0, 0, 0, 1],
                    mtu: Some(65520),
                    addresses: vec![
                        "10.0.2.15/24".parse().unwrap(),
                        "fd00:2::15/64".parse().unwrap(),
                    ],
                    routes: vec![
                        crate::Route::default_via("10.0.2.2".parse().unwrap()),
                        crate::Route::default_via("fd00:2::2".parse().unwrap()),
                    ],
                },
                crate::Interface {
                    mac: [2, 0, 0, 0, 0, 2],
                    mtu: None,
                    addresses: vec!["192.168.1.9/32".parse().unwrap()],
                    routes: vec![crate::Route {
                        destination: "192.168.0.0/16".parse().unwrap(),
                        gateway: None,
                    }],
                },
            ],
        })),
        Message::Create(Box::new(Create {
            container: 2,
            id: 2,
            ends_pod: false,
            rootfs: Rootfs::Directory {
                path: "/srv/root".into(),
            },
            shares: vec!["more".into()],
            process: Process::default(),
            spec: crate::bare_spec(),
            hosts: None,
        })),
        Message::Create(Box::new(Create {
            container: 3,
            id: 3,
            ends_pod: false,
            rootfs: Rootfs::Overlay {
                lowers: vec![
                    "/run/hypercontainer/shares/root/layers/a/tree".into(),
                    "/run/hypercontainer/shares/root/layers/b/tree".into(),
                ],
                upper: Upper::Tmpfs,
            },
            shares: Vec::new(),
            process: Process::default(),
            spec: crate::bare_spec(),
            hosts: None,
        })),
        Message::Exec {
            id: 7,
            container: 2,
            process: Box::new(sample_process()),
        },
        Message::Remove { container: 2 },
        Message::Shutdown,
        Message::Removed { container: 2 },
        Message::Stats { container: 9 },
        Message::ContainerStats(Box::new(crate::pod::ContainerStats {
            container: 9,
            exists: true,
            memory_bytes: 3 << 20,
            cpu_usec: 1234,
            pids: 2,
            guest_memory_total_kib: 240_000,
            guest_memory_available_kib: 200_000,
        })),
        Message::Stdin {
            id: 7,
            data: b"input\n".to_vec(),
        },
        Message::CloseStdin { id: 7 },
        Message::Signal { id: 7, signal: 15 },
        Message::ResizeTty {
            id: 7,
            size: WindowSize {
                rows: 50,
                cols: 132,
            },
        },
        Message::BootStage {
            stage: BootStage::RootfsReady,
            boottime_ns: 123_456_789,
        },
        Message::BootStage {
            stage: BootStage::StartReceived,
            boottime_ns: 100_000_000,
        },
        Message::Started { id: 7, pid: 42 },
        Message::Stdout {
            id: 7,
            data: vec![0xff; MAX_DATA_CHUNK],
        },
        Message::Stderr {
            id: 7,
            data: vec![],
        },
        Message::StdinAck { id: 7, bytes: 6 },
        Message::Exited {
            id: 7,
            status: 137,
            oom_killed: true,
        },
        Message::Error {
            id: Some(7),
            kind: ErrorKind::NotFound,
            message: "exec: \"nope\": executable file not found in $PATH".into(),
        },
        Message::Error {
            id: None,
            kind: ErrorKind::Protocol,
            message: "bad".into(),
        },
    ]
}

#[test]
fn every_message_round_trips() {
    for m in all_messages() {
        let frame = m.to_frame().unwrap();
        let (back, used) = decode_frame(&frame).unwrap().unwrap();
        assert_eq!(back, m);
        assert_eq!(used, frame.len());
        assert_eq!(frame[HEADER_LEN], m.type_code());
    }
}

#[test]
fn directions_partition_messages() {
    for m in all_messages() {
        let both = m.is_host_to_guest() && m.is_guest_to_host();
        assert_eq!(both, matches!(m, Message::Hello(_)), "{m:?}");
        assert!(m.is_host_to_guest() || m.is_guest_to_host());
    }
}

#[test]
fn every_type_has_its_own_code_and_name() {
    let mut seen = std::collections::BTreeMap::new();
    for m in all_messages() {
        if let Some(name) = seen.insert(m.type_code(), m.name()) {
            assert_eq!(
                name,
                m.name(),
                "code {:#04x} names two types",
                m.type_code()
            );
        }
    }
    let names: std::collections::BTreeSet<_> = seen.values().collect();
    assert_eq!(names.len(), seen.len());
    // Every variant is covered by the list.
    assert_eq!(seen.len(), 20);
}

#[test]
fn every_truncation_is_incomplete_or_error_never_a_message() {
    for m in all_messages() {
        let frame = m.to_frame().unwrap();
        for cut in 0..frame.len() {
            // A prefix of a frame is just "not yet".
            assert!(decode_frame(&frame[..cut]).unwrap().is_none());
            // A frame whose length claims fewer bytes than the payload
            // needs is an error, not a shorter message.
            if cut > HEADER_LEN {
                let mut short = frame[..cut].to_vec();
                let body_len = (cut - HEADER_LEN) as u32;
                short[..HEADER_LEN].copy_from_slice(&body_len.to_le_bytes());
                let err = decode_frame(&short).unwrap_err();
                assert!(
                    matches!(
                        err,
                        Error::ShortPayload(_)
                            | Error::InvalidUtf8(_)
                            | Error::VersionMismatch { .. }
                    ),
                    "{m:?} cut {cut}: {err}"
                );
            }
        }
    }
}

#[test]
fn truncated_stream_is_an_error() {
    let frame = Message::CloseStdin { id: 1 }.to_frame().unwrap();
    for cut in 1..frame.len() {
        let mut r = &frame[..cut];
        assert!(matches!(read_message(&mut r), Err(Error::TruncatedFrame)));
    }
    let mut empty: &[u8] = &[];
    assert!(read_message(&mut empty).unwrap().is_none());
}

#[test]
fn oversized_length_is_rejected_from_the_header_alone() {
    let len = (MAX_FRAME_LEN as u32 + 1).to_le_bytes();
    assert!(matches!(
        decode_frame(&len),
        Err(Error::FrameTooLarge { .. })
    ));
    let mut r: &[u8] = &u32::MAX.to_le_bytes();
    assert!(matches!(
        read_message(&mut r),
        Err(Error::FrameTooLarge { .. })
    ));
    let mut d = FrameDecoder::new();
    d.feed(&u32::MAX.to_le_bytes());
    assert!(d.next_message().is_err());
}

#[test]
fn oversized_message_does_not_encode() {
    let m = Message::Stdout {
        id: 1,
        data: vec![0; MAX_FRAME_LEN],
    };
    let mut out = vec![1, 2, 3];
    assert!(matches!(
        encode_frame(&m, &mut out),
        Err(Error::FrameTooLarge { .. })
    ));
    assert_eq!(out, [1, 2, 3]);
    // The largest payload that fits does encode.
    let m = Message::Stdout {
        id: 1,
        data: vec![0; MAX_FRAME_LEN - 1 - 4 - 4],
    };
    let f = m.to_frame().unwrap();
    assert_eq!(decode_frame(&f).unwrap().unwrap().0, m);
}

#[test]
fn empty_frame_is_rejected() {
    assert!(matches!(
        decode_frame(&[0, 0, 0, 0]),
        Err(Error::EmptyFrame)
    ));
}

#[test]
fn unknown_types_are_rejected() {
    let known: Vec<u8> = all_messages().iter().map(Message::type_code).collect();
    for ty in 0..=u8::MAX {
        if known.contains(&ty) {
            continue;
        }
        let frame = [1, 0, 0, 0, ty];
        assert!(
            matches!(decode_frame(&frame), Err(Error::UnknownType(t)) if t == ty),
            "type {ty:#x}"
        );
    }
}

fn frame_of(ty: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = ((payload.len() + 1) as u32).to_le_bytes().to_vec();
    f.push(ty);
    f.extend_from_slice(payload);
    f
}

#[test]
fn bad_payloads_are_rejected() {
    // Trailing byte after a complete CloseStdin.
    assert!(matches!(
        decode_frame(&frame_of(0x13, &[1, 0, 0, 0, 9])),
        Err(Error::TrailingBytes(1))
    ));
    // Invalid UTF-8 in a string.
    let mut p = PROTOCOL_VERSION.to_le_bytes().to_vec();
    p.extend_from_slice(&[2, 0, 0, 0, 0xc3, 0x28]);
    assert!(matches!(
        decode_frame(&frame_of(0x01, &p)),
        Err(Error::InvalidUtf8(_))
    ));
    // A bytes length pointing past the end.
    let mut p = 1u32.to_le_bytes().to_vec();
    p.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        decode_frame(&frame_of(0x22, &p)),
        Err(Error::ShortPayload(_))
    ));
    // A huge list count must not allocate: it is checked against the rest.
    let mut p = 1u32.to_le_bytes().to_vec();
    p.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        decode_frame(&frame_of(0x11, &p)),
        Err(Error::ShortPayload(_))
    ));
    // Unknown enum values.
    assert!(matches!(
        decode_frame(&frame_of(0x20, &[9, 0, 0, 0, 0, 0, 0, 0, 0])),
        Err(Error::InvalidValue { .. })
    ));
    assert!(matches!(
        decode_frame(&frame_of(0x26, &[0, 200, 0, 0, 0, 0])),
        Err(Error::InvalidValue { .. })
    ));
    assert!(matches!(
        decode_frame(&frame_of(0x26, &[2, 0, 0, 0, 0, 0])),
        Err(Error::InvalidValue { .. })
    ));
    // Booleans are 0 or 1 only.
    let mut m = Message::Exec {
        id: 1,
        container: 1,
        process: Box::default(),
    }
    .to_frame()
    .unwrap();
    let n = m.len();
    // Layout ends with: no_new_privs, terminal, window tag.
    m[n - 3] = 2;
    assert!(matches!(
        decode_frame(&m),
        Err(Error::InvalidValue {
            what: "no_new_privs",
            ..
        })
    ));
    // Unknown rlimit resource.
    let mut p = Message::Exec {
        id: 1,
        container: 1,
        process: Box::new(Process {
            rlimits: vec![Rlimit {
                resource: RlimitResource::Cpu,
                soft: 1,
                hard: 1,
            }],
            ..Process::default()
        }),
    }
    .to_frame()
    .unwrap();
    let pos = p.len() - 4 - 17; // start of the one rlimit
    p[pos] = 99;
    assert!(matches!(
        decode_frame(&p),
        Err(Error::InvalidValue {
            what: "rlimit resource",
            ..
        })
    ));
}

#[test]
fn a_spec_that_is_not_an_oci_spec_is_rejected() {
    let good = Message::Create(Box::new(Create {
        container: 1,
        id: 1,
        ends_pod: true,
        rootfs: Rootfs::Directory { path: "/r".into() },
        shares: Vec::new(),
        process: Process::default(),
        spec: crate::bare_spec(),
        hosts: None,
    }))
    .to_frame()
    .unwrap();
    let json = serde_json::to_string(&crate::bare_spec()).unwrap();
    // The spec, then `hosts` (one byte: none).
    let head = &good[HEADER_LEN..good.len() - 1 - 4 - json.len()];
    for bad in [
        "",
        "{",
        "null",
        r#"{"ociVersion": 7}"#,
        r#"{"linux": {"namespaces": [{"type": "bogus"}]}}"#,
    ] {
        let mut payload = head[1..].to_vec();
        payload.extend_from_slice(&(bad.len() as u32).to_le_bytes());
        payload.extend_from_slice(bad.as_bytes());
        payload.push(0);
        assert!(
            matches!(
                decode_frame(&frame_of(code::CREATE, &payload)),
                Err(Error::BadSpec(_))
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn wrong_version_is_rejected() {
    let mut p = (PROTOCOL_VERSION + 1).to_le_bytes().to_vec();
    p.extend_from_slice(&[0, 0, 0, 0]);
    assert!(matches!(
        decode_frame(&frame_of(0x01, &p)),
        Err(Error::VersionMismatch { ours, theirs })
            if ours == PROTOCOL_VERSION && theirs == PROTOCOL_VERSION + 1
    ));
    // Even with a payload this version would not understand.
    let p = 0u32.to_le_bytes();
    assert!(matches!(
        decode_frame(&frame_of(0x01, &p)),
        Err(Error::VersionMismatch { theirs: 0, .. })
    ));
}

#[test]
fn incremental_decoder_handles_byte_by_byte_input() {
    let msgs = all_messages();
    let mut stream = Vec::new();
    for m in &msgs {
        encode_frame(m, &mut stream).unwrap();
    }
    let mut d = FrameDecoder::new();
    let mut out = Vec::new();
    for chunk in stream.chunks(7) {
        d.feed(chunk);
        while let Some(m) = d.next_message().unwrap() {
            out.push(m);
        }
    }
    assert_eq!(out, msgs);
    assert_eq!(d.pending(), 0);
    // A partial frame stays pending.
    d.feed(&stream[..3]);
    assert!(d.next_message().unwrap().is_none());
    assert_eq!(d.pending(), 3);
}

#[test]
fn blocking_reader_reads_a_stream() {
    let msgs = all_messages();
    let mut stream = Vec::new();
    for m in &msgs {
        write_message(&mut stream, m).unwrap();
    }
    let mut r = &stream[..];
    let mut out = Vec::new();
    while let Some(m) = read_message(&mut r).unwrap() {
        out.push(m);
    }
    assert_eq!(out, msgs);
}

#[test]
fn rlimit_names_and_error_statuses() {
    for r in RlimitResource::ALL {
        assert_eq!(RlimitResource::from_u8(r as u8), Some(r));
        assert_eq!(RlimitResource::from_oci_name(r.oci_name()), Some(r));
    }
    assert_eq!(RlimitResource::from_oci_name("RLIMIT_BOGUS"), None);
    assert_eq!(ErrorKind::NotFound.exit_status(), 127);
    assert_eq!(ErrorKind::PermissionDenied.exit_status(), 126);
    assert_eq!(ErrorKind::BadCwd.exit_status(), 125);
    for k in 0..=u8::MAX {
        if let Some(kind) = ErrorKind::from_u8(k) {
            assert_eq!(kind as u8, k);
        }
    }
}
