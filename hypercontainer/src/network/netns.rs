//! [`NetnsNetwork`]: a network namespace prepared by someone else (CNI,
//! podman, containerd), joined the way Kata Containers' `tcfilter` model
//! does.
//!
//! In the namespace the SDK finds the interface (the one holding the
//! default route, unless named), creates a tap beside it, and moves every
//! frame between the two with `tc` ingress filters (`u32 match u8 0 0
//! action mirred egress redirect`), both ways. The namespace's own stack
//! never sees the traffic: the guest takes the interface's place, with its
//! MAC address, MTU, IPv4 and IPv6 addresses and routes.
//!
//! Host tools: iproute2's `ip` and `tc` (on `PATH`), run inside the
//! namespace (`setns` in the child before exec), read the interface as
//! JSON (`ip -j`) and add the filters. The tap is created by a short-lived
//! thread that enters the namespace (a thread's namespace is its own).
//!
//! Teardown leaves the namespace as it was found: the tap goes when the
//! VM closes it, and the interface's ingress qdisc (with its filter) is
//! deleted when the sandbox is dropped.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use hypercontainer_protocol::{IpPrefix, Route};
use hypercontainer_virtio::net::Tap;
use serde_json::Value;

use super::{Error, GuestConfig, Result};
use crate::vmm::devices::NetConfig;

/// The tap's name pattern inside the namespace.
const TAP_NAME: &str = "hctap%d";

/// Settings of [`Network::netns`](super::Network::netns).
#[derive(Debug, Clone)]
pub struct NetnsNetwork {
    path: PathBuf,
    interface: Option<String>,
}

impl NetnsNetwork {
    pub(super) fn new(path: PathBuf) -> Self {
        Self {
            path,
            interface: None,
        }
    }

    /// The namespace's interface the guest takes over (default: the one
    /// holding the default route, else the only one besides `lo`).
    pub fn interface(mut self, name: impl Into<String>) -> Self {
        self.interface = Some(name.into());
        self
    }

    pub(super) fn validate(&self) -> Result<()> {
        if !self.path.exists() {
            return Err(Error::NetnsMissing {
                path: self.path.clone(),
            });
        }
        if let Some(n) = &self.interface {
            hypercontainer_virtio::net::check_interface_name(n).map_err(|e| Error::Tap {
                reason: e.to_string(),
            })?;
        }
        Ok(())
    }

    /// Reads the interface, creates the tap and the redirects; returns the
    /// VM's device, the guest's settings and the teardown guard.
    pub(super) fn start(self) -> Result<(NetConfig, GuestConfig, NetnsGuard)> {
        let (tap, guest, guard) = self.start_tap()?;
        let fd: OwnedFd = tap.into_fd();
        Ok((NetConfig::tap_fd(fd), guest, guard))
    }

    /// [`NetnsNetwork::start`] with the tap itself.
    fn start_tap(self) -> Result<(Tap, GuestConfig, NetnsGuard)> {
        let ns = File::open(&self.path).map_err(|source| Error::Netns {
            path: self.path.clone(),
            what: "opening the namespace".into(),
            source: source.into(),
        })?;
        let ctx = Ns {
            path: &self.path,
            fd: ns.as_raw_fd(),
        };
        let links = ctx.json(&["-j", "addr", "show"])?;
        let routes4 = ctx.json(&["-j", "-4", "route", "show", "table", "main"])?;
        let routes6 = ctx.json(&["-j", "-6", "route", "show", "table", "main"])?;
        let name = match self.interface {
            Some(n) => n,
            None => pick_interface(&links, &routes4, &routes6).ok_or_else(|| Error::Netns {
                path: self.path.clone(),
                what: "finding its interface".into(),
                source: "no interface holds the default route; name one with \
                         NetnsNetwork::interface"
                    .into(),
            })?,
        };
        let guest =
            guest_config(&name, &links, &routes4, &routes6).ok_or_else(|| Error::Netns {
                path: self.path.clone(),
                what: format!("reading interface {name}"),
                source: "no such interface in the namespace".into(),
            })?;
        let tap = open_tap_in(&ns).map_err(|source| Error::Netns {
            path: self.path.clone(),
            what: "creating a tap in it".into(),
            source,
        })?;
        let tap_name = tap.name().to_string();
        let txqlen = links
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["ifname"] == name.as_str())
            .and_then(|l| l["txqlen"].as_u64())
            .unwrap_or(0);
        let mut guard = NetnsGuard {
            ns,
            path: self.path.clone(),
            veth: name.clone(),
            txqlen,
            qdisc: false,
        };
        let mtu = guest.mtu.unwrap_or(1500).to_string();
        guard.run("ip", &["link", "set", &tap_name, "mtu", &mtu, "up"])?;
        for (from, to) in [(&name, &tap_name), (&tap_name, &name)] {
            guard.run("tc", &["qdisc", "add", "dev", from, "ingress"])?;
            if *from == name {
                guard.qdisc = true;
            }
            guard.run(
                "tc",
                &[
                    "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32",
                    "match", "u8", "0", "0", "action", "mirred", "egress", "redirect", "dev", to,
                ],
            )?;
        }
        Ok((tap, guest, guard))
    }
}

/// Runs programs in the namespace.
struct Ns<'a> {
    path: &'a Path,
    fd: RawFd,
}

impl Ns<'_> {
    fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        let fd = self.fd;
        let mut cmd = Command::new(program);
        cmd.args(args);
        // SAFETY: the closure runs in the child between fork and exec and
        // only calls setns(2), which is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || enter(fd));
        }
        let err = |source: Box<dyn std::error::Error + Send + Sync>| Error::Netns {
            path: self.path.to_path_buf(),
            what: format!("running {program} {}", args.join(" ")),
            source,
        };
        let out = cmd.output().map_err(|e| err(e.into()))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(err(format!("{}: {stderr}", out.status).into()));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn json(&self, args: &[&str]) -> Result<Value> {
        let text = self.run("ip", args)?;
        serde_json::from_str(&text).map_err(|e| Error::Netns {
            path: self.path.to_path_buf(),
            what: format!("reading `ip {}`", args.join(" ")),
            source: e.into(),
        })
    }
}

/// Joins the network namespace `fd` (the calling thread only).
fn enter(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: setns on an open namespace fd; no memory effects.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Creates a tap inside `ns`, from a thread that joins it and ends.
fn open_tap_in(ns: &File) -> std::result::Result<Tap, Box<dyn std::error::Error + Send + Sync>> {
    let fd = ns.as_raw_fd();
    let t = std::thread::Builder::new()
        .name("netns-tap".into())
        .spawn(move || {
            std::panic::catch_unwind(|| -> std::result::Result<Tap, String> {
                enter(fd).map_err(|e| format!("entering the namespace: {e}"))?;
                Tap::open(TAP_NAME).map_err(|e| crate::agent_client::error_chain(&e))
            })
            .unwrap_or_else(|_| Err("the tap thread panicked".into()))
        })?;
    let tap = t.join().map_err(|_| "the tap thread panicked")??;
    Ok(tap)
}

/// Undoes what [`NetnsNetwork::start`] added to the namespace.
#[derive(Debug)]
pub(crate) struct NetnsGuard {
    ns: File,
    path: PathBuf,
    veth: String,
    /// The interface's queue length as found (a veth's is 0; the kernel
    /// sets 1000 when a qdisc is added to it).
    txqlen: u64,
    qdisc: bool,
}

impl NetnsGuard {
    fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        Ns {
            path: &self.path,
            fd: self.ns.as_raw_fd(),
        }
        .run(program, args)
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if self.qdisc {
            if let Err(e) = self.run("tc", &["qdisc", "del", "dev", &self.veth, "ingress"]) {
                log::warn!("leaving the network namespace: {e}");
            }
            let qlen = self.txqlen.to_string();
            let args = ["link", "set", "dev", &self.veth, "txqueuelen", &qlen];
            if let Err(e) = self.run("ip", &args) {
                log::warn!("leaving the network namespace: {e}");
            }
        }
    }
}

/// The interface a default route goes through, else the only one that is
/// not loopback.
fn pick_interface(links: &Value, routes4: &Value, routes6: &Value) -> Option<String> {
    let via_default = [routes4, routes6]
        .into_iter()
        .flat_map(|r| r.as_array().into_iter().flatten())
        .find(|r| r["dst"] == "default")
        .and_then(|r| r["dev"].as_str());
    if let Some(d) = via_default {
        return Some(d.to_string());
    }
    let names: Vec<&str> = links
        .as_array()?
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .filter(|n| *n != "lo")
        .collect();
    match names.as_slice() {
        [one] => Some(one.to_string()),
        _ => None,
    }
}

/// The guest's settings from interface `name`: its MAC, MTU, global
/// addresses, and the routes through it that the kernel did not add for
/// an address.
fn guest_config(
    name: &str,
    links: &Value,
    routes4: &Value,
    routes6: &Value,
) -> Option<GuestConfig> {
    let link = links.as_array()?.iter().find(|l| l["ifname"] == name)?;
    let mac = parse_mac(link["address"].as_str()?)?;
    let mtu = link["mtu"].as_u64().and_then(|m| u16::try_from(m).ok());
    let addresses = link["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["scope"] == "global")
        .filter_map(|a| {
            let ip: IpAddr = a["local"].as_str()?.parse().ok()?;
            IpPrefix::new(ip, u8::try_from(a["prefixlen"].as_u64()?).ok()?)
        })
        .collect();
    let routes = [(routes4, false), (routes6, true)]
        .into_iter()
        .flat_map(|(r, v6)| r.as_array().into_iter().flatten().map(move |r| (r, v6)))
        .filter(|(r, _)| r["dev"] == name && r["protocol"] != "kernel")
        .filter_map(|(r, v6)| parse_route(r, v6))
        .collect();
    Some(GuestConfig {
        mac: Some(mac),
        mtu,
        addresses,
        routes,
    })
}

fn parse_route(r: &Value, v6: bool) -> Option<Route> {
    let dst = r["dst"].as_str()?;
    let destination = if dst == "default" {
        let any: IpAddr = if v6 {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        };
        IpPrefix::default_for(any)
    } else if let Some((ip, len)) = dst.split_once('/') {
        IpPrefix::new(ip.parse().ok()?, len.parse().ok()?)?
    } else {
        let ip: IpAddr = dst.parse().ok()?;
        IpPrefix::new(ip, hypercontainer_protocol::net::max_prefix_len(ip))?
    };
    let link_local = destination.ip.is_ipv6() && dst.starts_with("fe80");
    let unicast = r["type"].as_str().is_none_or(|t| t == "unicast");
    if link_local || !unicast {
        return None;
    }
    let gateway = match r["gateway"].as_str() {
        Some(g) => Some(g.parse().ok()?),
        None => None,
    };
    Some(Route {
        destination,
        gateway,
    })
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINKS: &str = r#"[
      {"ifindex":1,"ifname":"lo","mtu":65536,"address":"00:00:00:00:00:00","addr_info":[
        {"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host"}]},
      {"ifindex":2,"ifname":"eth0","mtu":1450,"address":"5a:1b:2c:3d:4e:5f","addr_info":[
        {"family":"inet","local":"10.88.0.5","prefixlen":16,"scope":"global"},
        {"family":"inet6","local":"fd88::5","prefixlen":64,"scope":"global"},
        {"family":"inet6","local":"fe80::581b:2cff:fe3d:4e5f","prefixlen":64,"scope":"link"}]}]"#;
    const ROUTES4: &str = r#"[
      {"dst":"default","gateway":"10.88.0.1","dev":"eth0","flags":[]},
      {"dst":"10.88.0.0/16","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"10.88.0.5","flags":[]},
      {"dst":"172.30.0.0/16","gateway":"10.88.0.1","dev":"eth0","flags":[]}]"#;
    const ROUTES6: &str = r#"[
      {"dst":"fd88::/64","dev":"eth0","protocol":"kernel","metric":256,"flags":[]},
      {"dst":"fe80::/64","dev":"eth0","protocol":"kernel","metric":256,"flags":[]},
      {"dst":"default","gateway":"fd88::1","dev":"eth0","metric":1024,"flags":[]}]"#;

    fn parsed() -> (Value, Value, Value) {
        let p = |s| serde_json::from_str(s).unwrap();
        (p(LINKS), p(ROUTES4), p(ROUTES6))
    }

    #[test]
    fn the_default_route_names_the_interface() {
        let (l, r4, r6) = parsed();
        assert_eq!(pick_interface(&l, &r4, &r6).as_deref(), Some("eth0"));
        let none = Value::Array(Vec::new());
        assert_eq!(pick_interface(&l, &none, &none).as_deref(), Some("eth0"));
    }

    #[test]
    fn the_guest_gets_the_interfaces_mac_mtu_addresses_and_routes() {
        let (l, r4, r6) = parsed();
        let g = guest_config("eth0", &l, &r4, &r6).unwrap();
        assert_eq!(g.mac, Some([0x5a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f]));
        assert_eq!(g.mtu, Some(1450));
        let addrs: Vec<String> = g.addresses.iter().map(|a| a.to_string()).collect();
        assert_eq!(addrs, ["10.88.0.5/16", "fd88::5/64"]);
        assert_eq!(
            g.routes,
            [
                Route::default_via("10.88.0.1".parse().unwrap()),
                Route {
                    destination: "172.30.0.0/16".parse().unwrap(),
                    gateway: Some("10.88.0.1".parse().unwrap()),
                },
                Route::default_via("fd88::1".parse().unwrap()),
            ]
        );
        assert!(guest_config("eth9", &l, &r4, &r6).is_none());
    }

    /// As the guest would: an ARP request for 10.77.0.1 written to the tap
    /// reaches the veth's peer through the redirects, and its reply comes
    /// back on the tap.
    fn arp_through(tap: &Tap, mac: [u8; 6]) {
        use std::io::{Read, Write};
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0xff; 6]);
        f.extend_from_slice(&mac);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&mac);
        f.extend_from_slice(&[10, 77, 0, 2]);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&[10, 77, 0, 1]);
        let fd = tap.as_raw_fd();
        // SAFETY: `fd` stays open (the tap outlives the File, which is
        // forgotten, not closed).
        let mut file = std::mem::ManuallyDrop::new(unsafe {
            <File as std::os::fd::FromRawFd>::from_raw_fd(fd)
        });
        file.write_all(&f).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut buf = [0u8; 2048];
        loop {
            match file.read(&mut buf) {
                Ok(n) if n >= 12 + 42 && buf[12 + 12..12 + 14] == [8, 6] && buf[12 + 21] == 2 => {
                    assert_eq!(&buf[12..18], &mac);
                    return;
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                Err(e) => panic!("{e}"),
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no ARP reply through the tap"
            );
        }
    }

    fn ip(args: &[&str]) -> bool {
        Command::new("ip")
            .args(args)
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The whole setup on this host's kernel, in a namespace made with
    /// `ip netns` and a veth pair, as CNI would leave it (skipped without
    /// root, iproute2 or veth).
    #[test]
    fn a_veth_namespace_is_joined_and_left_as_found() {
        let ns = format!("hcns{}", std::process::id());
        let host_end = format!("hcv{}", std::process::id() % 100_000);
        if !ip(&["netns", "add", &ns]) {
            eprintln!("skipped: cannot add a network namespace");
            return;
        }
        let in_ns = |args: &[&str]| {
            let mut a = vec!["-n", ns.as_str()];
            a.extend_from_slice(args);
            assert!(ip(&a), "ip {a:?}");
        };
        let made = ip(&[
            "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        if made {
            in_ns(&["addr", "add", "10.77.0.2/24", "dev", "eth0"]);
            in_ns(&["-6", "addr", "add", "fd77::2/64", "dev", "eth0", "nodad"]);
            in_ns(&["link", "set", "eth0", "mtu", "1400", "up"]);
            in_ns(&[
                "route",
                "add",
                "default",
                "via",
                "10.77.0.1",
                "dev",
                "eth0",
                "onlink",
            ]);
            in_ns(&[
                "-6", "route", "add", "default", "via", "fd77::1", "dev", "eth0", "onlink",
            ]);
            let path = PathBuf::from(format!("/run/netns/{ns}"));
            let tc_show = |dev: &str| {
                let out = Command::new("ip")
                    .args([
                        "netns", "exec", &ns, "tc", "filter", "show", "dev", dev, "ingress",
                    ])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).into_owned()
            };
            assert!(ip(&["addr", "add", "10.77.0.1/24", "dev", &host_end]));
            assert!(ip(&["link", "set", &host_end, "up"]));
            let links = || {
                let out = Command::new("ip")
                    .args(["-n", &ns, "-o", "link", "show"])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).into_owned()
            };
            let before = links();
            let net = NetnsNetwork::new(path);
            net.validate().unwrap();
            let (tap, guest, guard) = net.start_tap().expect("join the namespace");
            arp_through(&tap, guest.mac.unwrap());
            assert_eq!(guest.mtu, Some(1400));
            let addrs: Vec<String> = guest.addresses.iter().map(|a| a.to_string()).collect();
            assert_eq!(addrs, ["10.77.0.2/24", "fd77::2/64"]);
            assert!(guest
                .routes
                .contains(&Route::default_via("10.77.0.1".parse().unwrap())));
            assert!(guest
                .routes
                .contains(&Route::default_via("fd77::1".parse().unwrap())));
            assert!(tc_show("eth0").contains("mirred"), "{}", tc_show("eth0"));
            assert!(tc_show("hctap0").contains("mirred"));
            drop(tap);
            drop(guard);
            assert!(!tc_show("eth0").contains("mirred"), "the filter is gone");
            assert!(
                !ip(&["-n", &ns, "link", "show", "hctap0"]),
                "the tap is gone"
            );
            assert_eq!(links(), before, "the links are as found");
        }
        assert!(ip(&["netns", "del", &ns]));
        if !made {
            eprintln!("skipped: no veth");
        }
    }

    #[test]
    fn a_missing_namespace_is_refused_before_anything_starts() {
        let n = NetnsNetwork::new("/nonexistent/netns".into());
        assert!(matches!(n.validate(), Err(Error::NetnsMissing { .. })));
    }
}
