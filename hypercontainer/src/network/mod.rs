//! A sandbox's network: [`Network::user`] (rootless, through `passt`),
//! [`Network::netns`] (a network namespace prepared by CNI, podman or
//! containerd), [`Network::tap`] (a tap the embedder wires up) or
//! [`Network::none`] (loopback only, the default).
//!
//! Every mode ends the same way in the guest: the VM gets one virtio-net
//! device, and the agent, before the container's root is built, finds the
//! NIC by its MAC address and gives it the MTU, IPv4 and IPv6 addresses and
//! routes the host chose (no DHCP runs in the guest).
//!
//! # User mode
//!
//! [`Network::user`] starts one `passt` process per sandbox (see
//! [`passt`] for its lifetime). The guest always sees the
//! same small network, whatever the host's:
//!
//! | | IPv4 | IPv6 |
//! |---|---|---|
//! | guest | [`USER_GUEST_IPV4`]`/24` | [`USER_GUEST_IPV6`]`/64` |
//! | gateway | [`USER_GATEWAY_IPV4`] | [`USER_GATEWAY_IPV6`] |
//! | DNS (forwarded to the host's resolver) | [`USER_DNS_IPV4`] | [`USER_DNS_IPV6`] |
//!
//! Outgoing connections leave from the host's own addresses, as from a
//! container on Docker's default bridge. IPv6 is offered when the host has
//! an IPv6 default route. The gateway address reaches the host's loopback
//! only when asked ([`UserNetwork::map_host_loopback`]): by default the
//! guest cannot talk to services bound to the host's `127.0.0.1`.
//! Published ports ([`UserNetwork::publish`], see [`PortMapping`] and its
//! default address) are bound by passt on the host. Two user-mode
//! sandboxes share nothing: each has its own passt, so one reaches another
//! only through the other's published ports.

mod netns;
pub mod passt;
mod ports;
mod tap;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::OwnedFd;
use std::time::Duration;

/// Addresses and routes of the guest's interface.
pub use hypercontainer_protocol::{IpPrefix, Route};
use hypercontainer_protocol::{MAX_ADDRESSES, MAX_ROUTES, MIN_MTU};
use hypercontainer_virtio::net::StreamBackend;

use crate::vmm::devices::NetConfig;

pub use netns::NetnsNetwork;
pub use passt::{passt_binary, PASST_ENV};
pub use ports::{ParsePortError, PortMapping, Protocol, PublishedPort, DEFAULT_PUBLISH_ADDRESS};
pub use tap::TapNetwork;

/// The guest's IPv4 address in user mode.
pub const USER_GUEST_IPV4: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
/// The guest's IPv4 gateway in user mode (the host's loopback when
/// [`UserNetwork::map_host_loopback`] is on).
pub const USER_GATEWAY_IPV4: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// The guest's IPv4 DNS server in user mode, forwarded to the host's.
pub const USER_DNS_IPV4: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
/// The guest's IPv6 address in user mode (a unique local address).
pub const USER_GUEST_IPV6: Ipv6Addr = Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 0x100);
/// The guest's IPv6 gateway in user mode.
pub const USER_GATEWAY_IPV6: Ipv6Addr = Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 2);
/// The guest's IPv6 DNS server in user mode, forwarded to the host's.
pub const USER_DNS_IPV6: Ipv6Addr = Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 3);
/// The MTU of a user-mode guest: what the virtio-net device carries
/// without offloads.
pub const USER_MTU: u16 = 1500;

/// Errors of networks. Each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A port specification did not parse.
    #[error(transparent)]
    Port(#[from] ParsePortError),
    /// Two published ports would bind the same host address and port.
    #[error("host port {0} is published twice: give each mapping its own host port (or 0)")]
    DuplicatePort(PortMapping),
    /// A published port's host address and port are taken on the host.
    #[error(
        "cannot publish {mapping}: host address {addr} is not free (another program or sandbox \
         uses it, or the address is not this host's); pick another host port, or 0 for any free one"
    )]
    PortInUse {
        /// The mapping asked for.
        mapping: PortMapping,
        /// The host address and port.
        addr: std::net::SocketAddr,
        /// What binding it said.
        #[source]
        source: std::io::Error,
    },
    /// passt is not installed.
    #[error(
        "user-mode networking needs passt, not found at {}: install Debian's passt package \
         (apt-get install passt) or set HYPERCONTAINER_PASST to its path", looked_at.display()
    )]
    PasstMissing {
        /// Where it was looked for last.
        looked_at: std::path::PathBuf,
    },
    /// The host has no default route for passt to send the guest's traffic
    /// through.
    #[error(
        "user-mode networking needs a host interface with a default route (IPv4 or IPv6); this \
         host has none: bring up its network, or use Network::none()"
    )]
    NoUplink,
    /// passt could not be started.
    #[error("starting passt")]
    PasstSpawn(#[source] std::io::Error),
    /// passt gave up while starting (the message is passt's own).
    #[error("passt exited at start ({status}): {stderr}")]
    PasstFailed {
        /// Its exit status.
        status: String,
        /// What it said on standard error.
        stderr: String,
    },
    /// passt did not get ready in time.
    #[error("passt was not ready within {timeout:?}; it said: {stderr}")]
    PasstTimeout {
        /// The limit.
        timeout: Duration,
        /// What it said on standard error.
        stderr: String,
    },
    /// passt ended while the sandbox ran: the sandbox's NIC has no other
    /// end any more (the sandbox itself runs on).
    #[error("passt ended ({status}), so the sandbox's network is down; its last words: {stderr}")]
    PasstDied {
        /// Its exit status.
        status: String,
        /// What it said on standard error.
        stderr: String,
    },
    /// The network namespace named does not exist.
    #[error(
        "network namespace {} does not exist: give the path of a namespace file \
         (/run/netns/NAME, /proc/PID/ns/net)", path.display()
    )]
    NetnsMissing {
        /// The path given.
        path: std::path::PathBuf,
    },
    /// Setting up (or reading) the network namespace failed.
    #[error("network namespace {}: {what}", path.display())]
    Netns {
        /// The namespace.
        path: std::path::PathBuf,
        /// The step.
        what: String,
        /// Why (a tool's own words when it failed).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The tap's name is invalid.
    #[error("invalid tap: {reason}")]
    Tap {
        /// Why.
        reason: String,
    },
    /// The guest's interface settings are invalid.
    #[error("invalid guest interface settings: {0}")]
    Interface(String),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// A sandbox's network; see the [module docs](self).
///
/// ```
/// use hypercontainer::network::{Network, PortMapping};
/// use hypercontainer::sandbox::Sandbox;
///
/// let web = Sandbox::builder()
///     .network(Network::user().publish("127.0.0.1:8080:80".parse().unwrap()));
/// let quiet = Sandbox::builder().network(Network::none());
/// ```
#[derive(Debug, Default)]
pub struct Network(Kind);

#[derive(Debug, Default)]
enum Kind {
    #[default]
    None,
    User(UserNetwork),
    Tap(TapNetwork),
    Netns(NetnsNetwork),
}

impl Network {
    /// Only the loopback interface (the default).
    pub fn none() -> Network {
        Network(Kind::None)
    }

    /// Rootless user-mode networking through a `passt` of the sandbox's own.
    pub fn user() -> UserNetwork {
        UserNetwork::default()
    }

    /// The tap interface `name` (created if it does not exist; it then
    /// lives as long as the sandbox); the guest's addresses are set on the
    /// returned [`TapNetwork`].
    pub fn tap(name: impl Into<String>) -> TapNetwork {
        TapNetwork::named(name.into())
    }

    /// An open tap device (`IFF_TAP | IFF_NO_PI`), e.g. one the caller
    /// created and configured before starting the sandbox.
    pub fn tap_fd(fd: OwnedFd) -> TapNetwork {
        TapNetwork::fd(fd)
    }

    /// The network namespace at `path` (e.g. `/run/netns/NAME`, made by
    /// CNI, podman or containerd): the guest takes over its interface (see
    /// [`NetnsNetwork`]). Needs `CAP_NET_ADMIN` over the namespace.
    pub fn netns(path: impl Into<std::path::PathBuf>) -> NetnsNetwork {
        NetnsNetwork::new(path.into())
    }

    /// Checks the settings, before anything is started.
    pub(crate) fn validate(&self) -> Result<()> {
        match &self.0 {
            Kind::None => Ok(()),
            Kind::User(u) => u.validate(),
            Kind::Tap(t) => t.validate(),
            Kind::Netns(n) => n.validate(),
        }
    }

    /// Whether the VM gets a NIC.
    pub(crate) fn has_nic(&self) -> bool {
        !matches!(self.0, Kind::None)
    }

    /// The DNS servers the guest uses unless the caller names its own.
    pub(crate) fn default_dns(&self) -> Vec<IpAddr> {
        match &self.0 {
            Kind::User(_) => vec![USER_DNS_IPV4.into()],
            _ => Vec::new(),
        }
    }

    /// Starts the host side (passt), and returns the VM's device, the
    /// agent's view of the NIC and what must live as long as the sandbox.
    pub(crate) fn attach(self, fallback_mac: [u8; 6]) -> Result<Attached> {
        let (device, guest, running) = match self.0 {
            Kind::None => return Ok(Attached::default()),
            Kind::Tap(t) => {
                let (device, guest) = t.device();
                (device, guest, Running::default())
            }
            Kind::User(u) => u.start()?,
            Kind::Netns(n) => {
                let (device, guest, guard) = n.start()?;
                let running = Running {
                    _netns: Some(guard),
                    ..Running::default()
                };
                (device, guest, running)
            }
        };
        let mac = guest.mac.unwrap_or(fallback_mac);
        Ok(Attached {
            device: Some(device.mac(mac)),
            interface: Some(guest.interface(mac)),
            running,
        })
    }
}

impl From<UserNetwork> for Network {
    fn from(u: UserNetwork) -> Self {
        Network(Kind::User(u))
    }
}

impl From<NetnsNetwork> for Network {
    fn from(n: NetnsNetwork) -> Self {
        Network(Kind::Netns(n))
    }
}

impl From<TapNetwork> for Network {
    fn from(t: TapNetwork) -> Self {
        Network(Kind::Tap(t))
    }
}

/// What [`Network::attach`] gives the sandbox.
#[derive(Debug, Default)]
pub(crate) struct Attached {
    pub(crate) device: Option<NetConfig>,
    pub(crate) interface: Option<hypercontainer_protocol::Interface>,
    pub(crate) running: Running,
}

/// The host side of a sandbox's network, for as long as it runs.
#[derive(Debug, Default)]
pub(crate) struct Running {
    passt: Option<passt::Passt>,
    ports: Vec<PublishedPort>,
    /// Held for its `Drop`: the namespace is restored after the VM closed the tap.
    _netns: Option<netns::NetnsGuard>,
}

impl Running {
    /// The ports published, as bound.
    pub(crate) fn ports(&self) -> &[PublishedPort] {
        &self.ports
    }

    /// Why the network is down, if it went down.
    pub(crate) fn failure(&self) -> Option<Error> {
        self.passt.as_ref().and_then(|p| p.failure())
    }

    /// passt's pid, in user mode.
    pub(crate) fn passt_pid(&self) -> Option<u32> {
        self.passt.as_ref().map(|p| p.pid())
    }
}

/// The guest's end of an interface: MAC, MTU, addresses, routes.
#[derive(Debug, Default, Clone)]
pub(crate) struct GuestConfig {
    pub(crate) mac: Option<[u8; 6]>,
    pub(crate) mtu: Option<u16>,
    pub(crate) addresses: Vec<IpPrefix>,
    pub(crate) routes: Vec<Route>,
}

impl GuestConfig {
    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Interface(m));
        if let Some(m) = self.mac {
            if m[0] & 1 != 0 {
                return bad(format!(
                    "MAC address {} is a multicast address",
                    hypercontainer_protocol::mac_to_string(&m)
                ));
            }
        }
        if let Some(mtu) = self.mtu.filter(|&m| m < MIN_MTU) {
            return bad(format!("MTU {mtu} is below the minimum of {MIN_MTU}"));
        }
        if self.addresses.len() > MAX_ADDRESSES || self.routes.len() > MAX_ROUTES {
            return bad(format!(
                "{} addresses and {} routes: at most {MAX_ADDRESSES} and {MAX_ROUTES}",
                self.addresses.len(),
                self.routes.len()
            ));
        }
        let prefixes = self
            .addresses
            .iter()
            .chain(self.routes.iter().map(|r| &r.destination));
        for p in prefixes {
            if IpPrefix::new(p.ip, p.prefix_len).is_none() {
                return bad(format!("prefix length of {p} is too long"));
            }
        }
        if let Some(r) = self.routes.iter().find(|r| !r.is_consistent()) {
            return bad(format!(
                "the route to {} has a gateway of the other address family",
                r.destination
            ));
        }
        Ok(())
    }

    fn interface(self, mac: [u8; 6]) -> hypercontainer_protocol::Interface {
        hypercontainer_protocol::Interface {
            mac,
            mtu: self.mtu,
            addresses: self.addresses,
            routes: self.routes,
        }
    }
}

/// Settings of [`Network::user`].
#[derive(Debug, Clone, Default)]
pub struct UserNetwork {
    ports: Vec<PortMapping>,
    map_host_loopback: bool,
    ipv6: Option<bool>,
}

impl UserNetwork {
    /// Publishes a guest port on the host (see [`PortMapping`] for the
    /// default address).
    pub fn publish(mut self, port: PortMapping) -> Self {
        self.ports.push(port);
        self
    }

    /// Lets the guest reach the host's loopback through its gateway
    /// address ([`USER_GATEWAY_IPV4`], [`USER_GATEWAY_IPV6`]), e.g. a
    /// service bound to `127.0.0.1` on the host (default: off).
    pub fn map_host_loopback(mut self, on: bool) -> Self {
        self.map_host_loopback = on;
        self
    }

    /// Offers IPv6 to the guest: `true` insists (an error without an IPv6
    /// default route on the host), `false` never does (default: when the
    /// host has an IPv6 default route).
    pub fn ipv6(mut self, on: bool) -> Self {
        self.ipv6 = Some(on);
        self
    }

    fn validate(&self) -> Result<()> {
        match ports::find_duplicate(&self.ports) {
            Some(p) => Err(Error::DuplicatePort(p)),
            None => Ok(()),
        }
    }

    /// Binds nothing itself but checks and picks the host ports, starts
    /// passt, and returns the VM's device over passt's socket.
    fn start(self) -> Result<(NetConfig, GuestConfig, Running)> {
        let uplink = Uplink::of_host();
        let v4 = uplink.ipv4;
        let v6 = match self.ipv6 {
            Some(true) if !uplink.ipv6 => return Err(Error::NoUplink),
            Some(on) => on && uplink.ipv6,
            None => uplink.ipv6,
        };
        if !v4 && !v6 {
            return Err(Error::NoUplink);
        }
        let published = self
            .ports
            .iter()
            .map(resolve_port)
            .collect::<Result<Vec<_>>>()?;
        let args = passt_args(&self, v4, v6, &published);
        let (passt, socket) = passt::Passt::spawn(&args)?;
        let backend = StreamBackend::new(socket).map_err(Error::PasstSpawn)?;
        let mut guest = GuestConfig {
            mtu: Some(USER_MTU),
            ..GuestConfig::default()
        };
        if v4 {
            guest.addresses.push(prefix(USER_GUEST_IPV4.into(), 24));
            guest
                .routes
                .push(Route::default_via(USER_GATEWAY_IPV4.into()));
        }
        if v6 {
            guest.addresses.push(prefix(USER_GUEST_IPV6.into(), 64));
            guest
                .routes
                .push(Route::default_via(USER_GATEWAY_IPV6.into()));
        }
        let running = Running {
            passt: Some(passt),
            ports: published,
            _netns: None,
        };
        Ok((NetConfig::backend(Box::new(backend)), guest, running))
    }
}

fn prefix(ip: IpAddr, len: u8) -> IpPrefix {
    IpPrefix::new(ip, len).expect("a valid prefix")
}

/// passt's options for `u`'s settings and the resolved ports.
fn passt_args(u: &UserNetwork, v4: bool, v6: bool, ports: &[PublishedPort]) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |args: &[&str]| a.extend(args.iter().map(|s| s.to_string()));
    // The agent configures the guest: no DHCP, DHCPv6 or router adverts.
    push(&["--no-dhcp", "--no-dhcpv6", "--no-ra"]);
    // What the guest's interface is set to (the frames the device carries).
    push(&["-m", &USER_MTU.to_string()]);
    if !u.map_host_loopback {
        push(&["--no-map-gw"]);
    }
    if !v6 {
        push(&["-4"]);
    }
    if !v4 {
        push(&["-6"]);
    }
    if v4 {
        let (ip, gw, dns) = (USER_GUEST_IPV4, USER_GATEWAY_IPV4, USER_DNS_IPV4);
        push(&["-a", &ip.to_string(), "-n", "24", "-g", &gw.to_string()]);
        push(&["--dns-forward", &dns.to_string()]);
    }
    if v6 {
        let (ip, gw, dns) = (USER_GUEST_IPV6, USER_GATEWAY_IPV6, USER_DNS_IPV6);
        push(&["-a", &ip.to_string(), "-g", &gw.to_string()]);
        push(&["--dns-forward", &dns.to_string()]);
    }
    for p in ports {
        let flag = match p.protocol {
            Protocol::Tcp => "-t",
            Protocol::Udp => "-u",
        };
        let spec = format!("{}/{}:{}", p.host.ip(), p.host.port(), p.guest_port);
        push(&[flag, &spec]);
    }
    a
}

/// Checks that `p`'s host address and port are free, and picks a free
/// port for port 0, by binding it for a moment (passt binds it next).
fn resolve_port(p: &PortMapping) -> Result<PublishedPort> {
    let addr = p.host_addr();
    let bound = match p.protocol {
        Protocol::Tcp => std::net::TcpListener::bind(addr).and_then(|l| l.local_addr()),
        Protocol::Udp => std::net::UdpSocket::bind(addr).and_then(|s| s.local_addr()),
    };
    let host = bound.map_err(|source| Error::PortInUse {
        mapping: *p,
        addr,
        source,
    })?;
    Ok(PublishedPort {
        protocol: p.protocol,
        host,
        guest_port: p.guest_port,
    })
}

/// Which families the host has a default route for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Uplink {
    ipv4: bool,
    ipv6: bool,
}

impl Uplink {
    fn of_host() -> Self {
        let read = |p| std::fs::read_to_string(p).unwrap_or_default();
        Self::parse(&read("/proc/net/route"), &read("/proc/net/ipv6_route"))
    }

    /// From `/proc/net/route` (a header line, then `Iface Destination
    /// Gateway ...` in hex) and `/proc/net/ipv6_route` (`dest dest_len src
    /// src_len next_hop metric refcnt use flags iface`).
    fn parse(route: &str, ipv6_route: &str) -> Self {
        let ipv4 = route.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 7 && f[1] == "00000000" && f[7] == "00000000" && f[0] != "lo"
        });
        let ipv6 = ipv6_route.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 9 && f[0].bytes().all(|b| b == b'0') && f[1] == "00" && f[9] != "lo"
        });
        Self { ipv4, ipv6 }
    }
}

/// A locally administered unicast MAC for the sandbox `id` (hex).
pub(crate) fn sandbox_mac(id: &str) -> [u8; 6] {
    let mut mac = [0x02, 0, 0, 0, 0, 0];
    let bytes = hex::decode(id.get(..10).unwrap_or("0000000000")).unwrap_or_default();
    for (m, b) in mac[1..].iter_mut().zip(bytes) {
        *m = b;
    }
    mac
}

/// `/etc/resolv.conf` naming `servers`.
pub(crate) fn resolv_conf(servers: &[IpAddr]) -> String {
    servers
        .iter()
        .map(|s| format!("nameserver {s}\n"))
        .collect()
}

#[cfg(test)]
mod tests;
