//! Whole-VM tests of sandbox networking: user mode through a real passt
//! (egress to a server on the host's loopback, a published port fetched
//! from the host, ports(), a port conflict, isolation between sandboxes,
//! passt gone after teardown, passt killed mid-run), and tap mode with
//! IPv4 and IPv6 addresses, several routes and an MTU.
//!
//! Ignored by default: `cargo xtask whole-vm whole_vm_network` runs them
//! (inside the emulated KVM host where there is no hardware KVM), with the
//! test image, the kernel and agent set as for the other sandbox tests,
//! passt on `PATH` and iproute2's `ip`. A host without a default route
//! (the emulated host has no NIC) gets a tap with addresses and default
//! routes first, only so that passt finds an uplink; traffic to the host
//! itself does not need it.

mod sandbox_common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Once;
use std::time::{Duration, Instant};

use hypercontainer::network::{self, Network, PortMapping};
use hypercontainer::sandbox::{Error, Exec};

use sandbox_common::{run_to_end, sandbox};

/// Runs iproute2's `ip` (or busybox's) with `args`; panics on failure.
fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("run ip");
    assert!(st.success(), "ip {args:?}: {st}");
}

/// Brings the host's loopback up and gives the host a default route if it
/// has none (see the module docs). Busybox's `wget -T` crashes on a failed
/// connection, so the guest scripts call `wget` without it.
fn ensure_uplink() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The emulated host's init leaves its loopback down.
        ip(&["link", "set", "lo", "up"]);
        let route = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
        if route
            .lines()
            .skip(1)
            .any(|l| l.split_whitespace().nth(1) == Some("00000000"))
        {
            return;
        }
        ip(&["tuntap", "add", "dev", "hcup0", "mode", "tap"]);
        ip(&["link", "set", "hcup0", "up"]);
        ip(&["addr", "add", "10.99.0.1/24", "dev", "hcup0"]);
        ip(&[
            "route",
            "add",
            "default",
            "via",
            "10.99.0.2",
            "dev",
            "hcup0",
            "onlink",
        ]);
        ip(&["-6", "addr", "add", "fd99::1/64", "dev", "hcup0", "nodad"]);
        ip(&[
            "-6", "route", "add", "default", "via", "fd99::2", "dev", "hcup0", "onlink",
        ]);
    });
}

/// A one-shot HTTP server answering `body`; returns its address.
fn http_server(bind: &str, body: &'static str) -> (SocketAddr, std::thread::JoinHandle<String>) {
    let listener = TcpListener::bind(bind).unwrap();
    let addr = listener.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut request = String::new();
        let mut r = BufReader::new(conn.try_clone().unwrap());
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                break;
            }
            request.push_str(&line);
        }
        write!(
            conn,
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        request
    });
    (addr, t)
}

/// `GET /` on `addr`, retried until the guest's server answers.
fn fetch(addr: SocketAddr) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = (|| -> std::io::Result<String> {
            let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            c.set_read_timeout(Some(Duration::from_secs(10)))?;
            c.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut s = String::new();
            c.read_to_string(&mut s)?;
            Ok(s)
        })();
        match got {
            Ok(s) if s.starts_with("HTTP/1") => return s,
            other if Instant::now() > deadline => panic!("GET {addr}: {other:?}"),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Reads the sandbox's stdout up to a line `marker`; returns what came
/// before.
fn read_until(out: &mut impl BufRead, marker: &str) -> String {
    let mut text = String::new();
    loop {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "no {marker:?} in:\n{text}"
        );
        if line.trim_end() == marker {
            return text;
        }
        text.push_str(&line);
    }
}

fn gone(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// The guest's httpd on port 80, serving `body`; prints `ready` first.
fn httpd_script(before: &str, body: &str) -> String {
    format!(
        "{before} mkdir -p /tmp/www && echo {body} > /tmp/www/index.html && \
         httpd -p 80 -h /tmp/www && echo ready && exec sleep 600"
    )
}

#[test]
#[ignore = "whole-VM test: run by cargo xtask test"]
fn user_mode_egress_ports_isolation_and_teardown() {
    ensure_uplink();
    let (host_server, served) = http_server("127.0.0.1:0", "hello from the host\n");

    // Sandbox A: its address, routes, MTU, DNS, egress to the host's
    // loopback, and an httpd published on 127.0.0.1:0.
    let checks = format!(
        "ip -o addr show eth0 | grep -o 'inet6\\? [0-9a-f.:/]*'; \
         ip route | grep '^default'; ip -6 route | grep '^default'; \
         echo mtu=$(cat /sys/class/net/eth0/mtu); cat /etc/resolv.conf; \
         wget -q -O - http://10.0.2.2:{}/;",
        host_server.port()
    );
    let a = sandbox()
        .user("0")
        .network(
            Network::user()
                .map_host_loopback(true)
                .publish("127.0.0.1:0:80".parse().unwrap()),
        )
        .cmd(["sh", "-c", &httpd_script(&checks, "hello-from-a")])
        .start()
        .unwrap_or_else(|e| panic!("start a: {e}"));
    let mut out_a = BufReader::new(a.stdout().unwrap());
    let text = read_until(&mut out_a, "ready");
    assert!(text.contains("inet 10.0.2.100/24"), "{text}");
    assert!(text.contains("default via 10.0.2.2 dev eth0"), "{text}");
    assert!(text.contains("mtu=1500"), "{text}");
    assert!(text.contains("nameserver 10.0.2.3"), "{text}");
    assert!(text.contains("hello from the host"), "{text}");
    if text.contains("inet6 fd00:2::100/64") {
        assert!(text.contains("default via fd00:2::2 dev eth0"), "{text}");
    }
    assert!(served.join().unwrap().starts_with("GET / HTTP/1."));

    // The published port, with the port the kernel chose.
    let ports = a.ports().to_vec();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].guest_port, 80);
    assert_eq!(ports[0].host.ip(), network::DEFAULT_PUBLISH_ADDRESS);
    assert_ne!(ports[0].host.port(), 0);
    let page = fetch(ports[0].host);
    assert!(page.ends_with("hello-from-a\n"), "{page}");
    let passt_a = a.passt_pid().expect("user mode runs passt");

    // The same host port again: a clear error at start().
    let taken = PortMapping::tcp(ports[0].host.port(), 80);
    let e = sandbox()
        .network(Network::user().publish(taken))
        .cmd(["true"])
        .start()
        .unwrap_err();
    assert!(
        matches!(e, Error::Network(network::Error::PortInUse { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("pick another host port"), "{e}");

    // Sandbox B: the same guest address, but its own network. It reaches
    // A only through A's published port; A's httpd is not at B's
    // 10.0.2.100:80.
    let b_script = format!(
        "wget -q -O - http://10.0.2.2:{}/ && echo via-published-port; \
         wget -q -O - http://10.0.2.100:80/ || echo no-direct-route; echo ready; exec sleep 600",
        ports[0].host.port()
    );
    let b = sandbox()
        .network(Network::user().map_host_loopback(true))
        .cmd(["sh", "-c", &b_script])
        .start()
        .unwrap_or_else(|e| panic!("start b: {e}"));
    let mut out_b = BufReader::new(b.stdout().unwrap());
    let text = read_until(&mut out_b, "ready");
    assert!(text.contains("hello-from-a\nvia-published-port"), "{text}");
    assert!(text.contains("no-direct-route"), "{text}");

    // B's passt killed: B's network is down and says so; A is unaffected.
    let passt_b = b.passt_pid().unwrap();
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(passt_b as i32, libc::SIGKILL) };
    assert!(gone(passt_b));
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.network_error().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let down = b.network_error().expect("B's network error");
    assert!(down.to_string().contains("network is down"), "{down}");
    assert!(fetch(ports[0].host).ends_with("hello-from-a\n"));
    assert!(a.network_error().is_none());
    // The guest sees its link down.
    let p = b
        .exec(Exec::new(["cat", "/sys/class/net/eth0/carrier"]))
        .unwrap();
    let carrier = sandbox_common::read_all(p.stdout().unwrap());
    assert_eq!(carrier.trim(), "0", "B's NIC has no carrier");

    // Teardown: passt goes with its sandbox.
    drop(b);
    drop(a);
    assert!(gone(passt_a), "passt {passt_a} outlived its sandbox");
}

#[test]
#[ignore = "whole-VM test: run by cargo xtask test"]
fn bad_network_settings_fail_before_boot() {
    let e = sandbox()
        .network(
            Network::user()
                .publish(PortMapping::tcp(8080, 80))
                .publish(PortMapping::tcp(8080, 81)),
        )
        .start()
        .unwrap_err();
    assert!(
        matches!(e, Error::Network(network::Error::DuplicatePort(_))),
        "{e}"
    );
    let mut bad = network::IpPrefix::new("10.0.4.2".parse().unwrap(), 24).unwrap();
    bad.prefix_len = 40;
    let e = sandbox()
        .network(Network::tap("hcs-bad").address(bad))
        .start()
        .unwrap_err();
    assert!(
        matches!(e, Error::Network(network::Error::Interface(_))),
        "{e}"
    );
}

#[test]
#[ignore = "whole-VM test: run by cargo xtask test"]
fn tap_mode_dual_stack_routes_mtu_and_traffic() {
    // The embedder's side: a tap, configured, handed over open.
    let name = format!("hcs{}", std::process::id());
    let tap = hypercontainer_virtio::net::Tap::open(&name).expect("open a tap");
    ip(&["addr", "add", "10.0.3.1/24", "dev", &name]);
    ip(&["-6", "addr", "add", "fd00:3::1/64", "dev", &name, "nodad"]);
    ip(&["link", "set", &name, "up"]);
    let (server, served) = http_server("10.0.3.1:0", "hello over virtio-net\n");
    let script = format!(
        "ip -o addr show eth0 | grep -o 'inet6\\? [0-9a-f.:/]*'; \
         echo mac=$(cat /sys/class/net/eth0/address); echo mtu=$(cat /sys/class/net/eth0/mtu); \
         ip route; ip -6 route | grep -v '^fe80'; cat /etc/resolv.conf; \
         wget -q -O - http://10.0.3.1:{}/",
        server.port()
    );
    let net = Network::tap_fd(tap.into_fd())
        .address("10.0.3.2/24".parse().unwrap())
        .address("10.0.33.2/24".parse().unwrap())
        .address("fd00:3::2/64".parse().unwrap())
        .gateway("10.0.3.1".parse().unwrap())
        .gateway("fd00:3::1".parse().unwrap())
        .route(network::Route {
            destination: "192.168.50.0/24".parse().unwrap(),
            gateway: Some("10.0.3.1".parse().unwrap()),
        })
        .mtu(1400);
    let r = run_to_end(
        sandbox()
            .network(net)
            .dns("10.0.3.1".parse().unwrap())
            .cmd(["sh", "-c", &script]),
    );
    let out = &r.out;
    assert_eq!(r.status, 0, "stdout:\n{out}\nstderr:\n{}", r.err);
    for want in [
        "inet 10.0.3.2/24",
        "inet 10.0.33.2/24",
        "inet6 fd00:3::2/64",
        "mtu=1400",
        "default via 10.0.3.1 dev eth0",
        "192.168.50.0/24 via 10.0.3.1 dev eth0",
        "default via fd00:3::1 dev eth0",
        "nameserver 10.0.3.1",
        "hello over virtio-net",
    ] {
        assert!(out.contains(want), "no {want:?} in:\n{out}");
    }
    assert!(
        out.contains("mac=02:"),
        "a locally administered MAC:\n{out}"
    );
    assert!(served.join().unwrap().starts_with("GET / HTTP/1."));
}

/// Runs a CNI plugin as a runtime does: the command in the environment,
/// the network configuration on stdin; returns its JSON result.
fn cni(command: &str, plugin: &str, netns: &str, id: &str, config: &str) -> serde_json::Value {
    let mut child = Command::new(format!("/usr/lib/cni/{plugin}"))
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run the CNI plugin");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(config.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "CNI {command} {plugin}: {text}");
    serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
}

/// The `address` of the first IP of `family` ("4" or "6") in a CNI result,
/// without its prefix.
fn cni_ip(result: &serde_json::Value, v6: bool) -> String {
    result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["address"].as_str())
        .find(|a| a.contains(':') == v6)
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no IPv{} in {result}", if v6 { 6 } else { 4 }))
        .to_string()
}

fn in_netns(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "whole-VM test: run by cargo xtask test"]
fn netns_mode_with_cni_bridge_and_host_local() {
    if !std::path::Path::new("/usr/lib/cni/bridge").exists() {
        eprintln!("skipped: no CNI plugins (containernetworking-plugins)");
        return;
    }
    ensure_uplink();
    // `ip netns` keeps its namespaces under /run/netns.
    std::fs::create_dir_all("/run/netns").unwrap();
    let pid = std::process::id();
    let (bridge, ns_vm, ns_srv) = ("hcbr0", format!("hcvm{pid}"), format!("hcsrv{pid}"));
    ip(&["link", "add", bridge, "type", "bridge"]);
    ip(&["link", "set", bridge, "up"]);
    let config = format!(
        r#"{{"cniVersion":"0.4.0","name":"hcnet","type":"bridge","bridge":"{bridge}",
            "isGateway":true,"ipMasq":false,
            "ipam":{{"type":"host-local","dataDir":"/tmp/hc-cni-{pid}",
              "ranges":[[{{"subnet":"10.89.0.0/24"}}],[{{"subnet":"fd89::/64"}}]],
              "routes":[{{"dst":"0.0.0.0/0"}},{{"dst":"::/0"}}]}}}}"#
    );
    let mut results = Vec::new();
    for ns in [&ns_vm, &ns_srv] {
        ip(&["netns", "add", ns]);
        let path = format!("/run/netns/{ns}");
        results.push(cni("ADD", "bridge", &path, ns, &config));
    }
    let (vm_ip4, vm_ip6) = (cni_ip(&results[0], false), cni_ip(&results[0], true));
    let (srv_ip4, srv_ip6) = (cni_ip(&results[1], false), cni_ip(&results[1], true));
    let links_before = in_netns(&ns_vm, &["ip", "-o", "link", "show"]);

    // A server in the other namespace on the bridge.
    let www = std::env::temp_dir().join(format!("hc-www-{pid}"));
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "hello from the bridge\n").unwrap();
    let busybox = std::env::var("HYPERCONTAINER_BUSYBOX").unwrap_or_else(|_| "busybox".into());
    let mut server = Command::new("ip")
        .args([
            "netns", "exec", &ns_srv, &busybox, "httpd", "-f", "-p", "8080", "-h",
        ])
        .arg(&www)
        .spawn()
        .unwrap();

    let script = format!(
        "ip -o addr show eth0 | grep -o 'inet6\\? [0-9a-f.:/]*'; ip route; ip -6 route; \
         echo mtu=$(cat /sys/class/net/eth0/mtu); \
         wget -q -O - http://{srv_ip4}:8080/ && wget -q -O - 'http://[{srv_ip6}]:8080/'"
    );
    let r = run_to_end(
        sandbox()
            .network(Network::netns(format!("/run/netns/{ns_vm}")))
            .cmd(["sh", "-c", &script]),
    );
    let _ = server.kill();
    let _ = server.wait();
    let out = &r.out;
    assert_eq!(r.status, 0, "stdout:\n{out}\nstderr:\n{}", r.err);
    for want in [
        format!("inet {vm_ip4}/24"),
        format!("inet6 {vm_ip6}/64"),
        "default via 10.89.0.1 dev eth0".to_string(),
        "default via fd89::1 dev eth0".to_string(),
        "hello from the bridge\nhello from the bridge".to_string(),
    ] {
        assert!(out.contains(&want), "no {want:?} in:\n{out}");
    }

    // The namespace is as CNI left it: no tap, no ingress qdisc.
    assert_eq!(
        in_netns(&ns_vm, &["ip", "-o", "link", "show"]),
        links_before
    );
    let qdiscs = in_netns(&ns_vm, &["tc", "qdisc", "show", "dev", "eth0"]);
    assert!(!qdiscs.contains("ingress"), "{qdiscs}");

    for ns in [&ns_vm, &ns_srv] {
        cni("DEL", "bridge", &format!("/run/netns/{ns}"), ns, &config);
        ip(&["netns", "del", ns]);
    }
    ip(&["link", "del", bridge]);
    let _ = std::fs::remove_dir_all(&www);
}

#[test]
#[ignore = "whole-VM test: run by cargo xtask test"]
fn a_namespace_that_does_not_exist_is_refused() {
    let e = sandbox()
        .network(Network::netns("/run/netns/hc-no-such-namespace"))
        .start()
        .unwrap_err();
    assert!(
        matches!(e, Error::Network(network::Error::NetnsMissing { .. })),
        "{e}"
    );
}
