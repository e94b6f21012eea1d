use super::*;

#[test]
fn macs_are_local_unicast_and_distinct() {
    let a = sandbox_mac("0123456789abcdef");
    let b = sandbox_mac("1123456789abcdef");
    assert_eq!(a, [0x02, 0x01, 0x23, 0x45, 0x67, 0x89]);
    assert_ne!(a, b);
    assert_eq!(a[0] & 0b11, 0b10);
}

#[test]
fn bad_tap_settings_are_refused() {
    let ok = || Network::tap("t0").address("10.0.0.2/24".parse().unwrap());
    assert!(ok().validate().is_ok());
    assert!(matches!(
        Network::tap("").validate(),
        Err(Error::Tap { .. })
    ));
    assert!(matches!(
        Network::tap("a-name-too-long-x").validate(),
        Err(Error::Tap { .. })
    ));
    let interface_err = |t: TapNetwork| matches!(t.validate(), Err(Error::Interface(_)));
    assert!(interface_err(ok().mac([1, 0, 0, 0, 0, 1])));
    assert!(interface_err(ok().mtu(67)));
    let mut long = ok();
    long.guest.addresses[0].prefix_len = 33;
    assert!(interface_err(long));
    assert!(interface_err(ok().route(Route {
        destination: "10.1.0.0/16".parse().unwrap(),
        gateway: Some("fd00::1".parse().unwrap()),
    })));
}

#[test]
fn a_port_published_twice_is_refused() {
    let u = Network::user()
        .publish(PortMapping::tcp(8080, 80))
        .publish(PortMapping::tcp(8080, 81));
    assert!(matches!(
        Network::from(u).validate(),
        Err(Error::DuplicatePort(p)) if p.guest_port == 81
    ));
}

#[test]
fn passt_gets_addresses_dns_and_ports() {
    let u = Network::user();
    let port = PublishedPort {
        protocol: Protocol::Udp,
        host: "[::1]:5353".parse().unwrap(),
        guest_port: 53,
    };
    let args = passt_args(&u, true, false, &[port]).join(" ");
    assert!(args.contains("--no-map-gw"), "{args}");
    assert!(args.contains(" -4 "), "{args}");
    assert!(args.contains("-a 10.0.2.100 -n 24 -g 10.0.2.2"), "{args}");
    assert!(args.contains("--dns-forward 10.0.2.3"), "{args}");
    assert!(args.ends_with("-u ::1/5353:53"), "{args}");
    let args = passt_args(&u.map_host_loopback(true), true, true, &[]).join(" ");
    assert!(
        !args.contains("--no-map-gw") && !args.contains(" -4"),
        "{args}"
    );
    assert!(args.contains("-a fd00:2::100 -g fd00:2::2"), "{args}");
}

#[test]
fn ports_are_checked_and_port_zero_is_chosen() {
    let p = resolve_port(&PortMapping::tcp(0, 80)).unwrap();
    assert_ne!(p.host.port(), 0);
    assert_eq!(p.host.ip(), DEFAULT_PUBLISH_ADDRESS);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    assert!(matches!(
        resolve_port(&PortMapping::tcp(port, 80)),
        Err(Error::PortInUse { addr, .. }) if addr.port() == port
    ));
    // UDP on the same number is another port.
    assert!(resolve_port(&PortMapping::udp(port, 80)).is_ok());
}

#[test]
fn default_routes_are_found_in_proc() {
    let route = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n\
                 eth0\t00000000\t0102000A\t0003\t0\t0\t0\t00000000\n";
    let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 \
              fd000000000000000000000000000001 00000400 00000001 00000000 00000003 eth0\n";
    let v6_lo = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 \
                 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200 lo\n";
    assert_eq!(
        Uplink::parse(route, v6),
        Uplink {
            ipv4: true,
            ipv6: true
        }
    );
    assert_eq!(
        Uplink::parse("Iface\n", v6_lo),
        Uplink {
            ipv4: false,
            ipv6: false
        }
    );
}

/// Whether this host cannot run passt for a sandbox (no passt, or no
/// default route for it); says so.
fn no_passt_here() -> bool {
    let none = Uplink {
        ipv4: false,
        ipv6: false,
    };
    let missing = passt_binary().is_err() || Uplink::of_host() == none;
    if missing {
        eprintln!("skipped: no passt or no default route");
    }
    missing
}

/// passt as the SDK runs it, on this host: ready, ports bound, gone when
/// dropped (skipped where passt or a default route is missing).
#[test]
fn real_passt_binds_ports_and_leaves_with_its_handle() {
    if no_passt_here() {
        return;
    }
    let user = Network::user().publish(PortMapping::tcp(0, 80));
    let (_device, guest, running) = user.start().expect("start passt");
    assert!(guest
        .addresses
        .iter()
        .any(|a| a.ip == IpAddr::from(USER_GUEST_IPV4)));
    let port = running.ports()[0];
    let pid = running.passt_pid().unwrap();
    // passt listens on the chosen port.
    std::net::TcpStream::connect(port.host).expect("passt listens");
    assert!(running.failure().is_none());
    drop(running);
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "passt is gone"
    );
    // Taken by someone else: a clear error.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().port();
    let err = Network::user()
        .publish(PortMapping::tcp(busy, 80))
        .start()
        .unwrap_err();
    assert!(matches!(err, Error::PortInUse { .. }), "{err}");
}

#[test]
fn a_passt_that_dies_is_reported() {
    if no_passt_here() {
        return;
    }
    let (_device, _guest, running) = Network::user().start().expect("start passt");
    let pid = running.passt_pid().unwrap();
    // SAFETY: kill has no memory effects; the pid is our child's, not yet
    // reaped (the supervisor reaps it after this).
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while running.failure().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let err = running.failure().expect("the death is reported");
    assert!(err.to_string().contains("network is down"), "{err}");
}

/// An ARP request from the user-mode guest for `target`.
fn arp_request(mac: [u8; 6], target: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&USER_GUEST_IPV4.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

/// The framing against the real thing: passt answers an ARP request for
/// the gateway sent through the stream backend.
#[test]
fn real_passt_answers_arp_through_the_stream_backend() {
    use hypercontainer_virtio::net::NetBackend;
    let uplink = Uplink::of_host();
    if passt_binary().is_err() || !uplink.ipv4 {
        eprintln!("skipped: no passt or no IPv4 default route");
        return;
    }
    let args = passt_args(&Network::user(), true, uplink.ipv6, &[]);
    let (_passt, socket) = passt::Passt::spawn(&args).expect("start passt");
    let mut backend = StreamBackend::new(socket).unwrap();
    let mac = [0x02, 0, 0, 0, 0, 7];
    backend
        .send_frame(&arp_request(mac, USER_GATEWAY_IPV4))
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 2048];
    loop {
        match backend.recv_frame(&mut buf) {
            Ok(n) if n >= 42 && buf[12..14] == [0x08, 0x06] && buf[20..22] == [0, 2] => {
                assert_eq!(&buf[0..6], &mac, "the reply is for us");
                assert_eq!(&buf[28..32], &USER_GATEWAY_IPV4.octets());
                return;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("{e}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no ARP reply from passt"
        );
    }
}
