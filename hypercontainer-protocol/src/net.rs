//! Network interfaces of the VM as [`crate::Start`] describes them: each
//! NIC, found by its MAC address, gets its MTU, addresses (IPv4 and IPv6)
//! and routes, in that order.
//!
//! Wire (see [`crate::codec`] for the primitives):
//! - `Interface`: `mac: [u8; 6]`, `mtu: option<u16>`, `addresses:
//!   [IpPrefix]` (at most [`MAX_ADDRESSES`]), `routes: [Route]` (at most
//!   [`MAX_ROUTES`]);
//! - `IpPrefix`: `ip: Ip`, `prefix_len: u8` (at most 32 for IPv4, 128 for
//!   IPv6);
//! - `Route`: `destination: IpPrefix`, `gateway: option<Ip>` (of the
//!   destination's family);
//! - `Ip`: a byte `4` then 4 bytes, or a byte `6` then 16 bytes.

use std::net::IpAddr;

/// Most interfaces one [`crate::Start`] configures.
pub const MAX_INTERFACES: usize = 8;
/// Most addresses of one [`Interface`].
pub const MAX_ADDRESSES: usize = 16;
/// Most routes of one [`Interface`].
pub const MAX_ROUTES: usize = 32;
/// Smallest MTU accepted: IPv4's minimum (IPv6 needs 1280; the agent
/// leaves IPv6 off an interface whose MTU is below that, as Linux does).
pub const MIN_MTU: u16 = 68;

/// A network interface of the VM, found by its MAC address.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Interface {
    /// MAC address of the guest's NIC.
    pub mac: [u8; 6],
    /// MTU set before the addresses; `None` keeps the driver's (1500).
    pub mtu: Option<u16>,
    /// Addresses with their prefix lengths, IPv4 and IPv6 in any order.
    pub addresses: Vec<IpPrefix>,
    /// Routes added after the addresses, in order (a gateway must be
    /// reachable by then: on one of the addresses' subnets, or through an
    /// earlier route).
    pub routes: Vec<Route>,
}

/// An address and the length of its network prefix, e.g. `10.0.2.15/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpPrefix {
    /// The address.
    pub ip: IpAddr,
    /// The prefix length: at most 32 for IPv4, 128 for IPv6.
    pub prefix_len: u8,
}

impl IpPrefix {
    /// `ip/prefix_len`, or `None` when the prefix is too long for the
    /// address family.
    ///
    /// ```
    /// use hypercontainer_protocol::IpPrefix;
    /// assert!(IpPrefix::new("10.0.0.2".parse().unwrap(), 24).is_some());
    /// assert!(IpPrefix::new("10.0.0.2".parse().unwrap(), 33).is_none());
    /// assert!(IpPrefix::new("fd00::2".parse().unwrap(), 64).is_some());
    /// ```
    pub fn new(ip: IpAddr, prefix_len: u8) -> Option<Self> {
        (prefix_len <= max_prefix_len(ip)).then_some(Self { ip, prefix_len })
    }

    /// The default route's destination of `ip`'s family: `0.0.0.0/0` or
    /// `::/0`.
    pub fn default_for(ip: IpAddr) -> Self {
        let ip = match ip {
            IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        };
        Self { ip, prefix_len: 0 }
    }
}

impl std::fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix_len)
    }
}

/// Parses `ADDR/LEN` (IPv4 or IPv6).
///
/// ```
/// use hypercontainer_protocol::IpPrefix;
/// let p: IpPrefix = "fd00::2/64".parse().unwrap();
/// assert_eq!(p.prefix_len, 64);
/// assert!("10.0.0.2".parse::<IpPrefix>().is_err());
/// ```
impl std::str::FromStr for IpPrefix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not ADDRESS/PREFIX_LENGTH (e.g. 10.0.2.15/24, fd00::2/64)");
        let (ip, len) = s.split_once('/').ok_or_else(bad)?;
        let ip: IpAddr = ip.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().map_err(|_| bad())?;
        Self::new(ip, len).ok_or_else(bad)
    }
}

/// The longest prefix of `ip`'s family.
pub fn max_prefix_len(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// A route: to `destination`, through `gateway` or, without one, directly
/// on the interface's link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Route {
    /// Where the route leads (`0.0.0.0/0` or `::/0` for a default route).
    pub destination: IpPrefix,
    /// The next hop, of the destination's family.
    pub gateway: Option<IpAddr>,
}

impl Route {
    /// A default route of `gateway`'s family through `gateway`.
    pub fn default_via(gateway: IpAddr) -> Self {
        Self {
            destination: IpPrefix::default_for(gateway),
            gateway: Some(gateway),
        }
    }

    /// Whether the gateway (if any) is of the destination's family.
    pub fn is_consistent(&self) -> bool {
        self.gateway
            .is_none_or(|g| g.is_ipv4() == self.destination.ip.is_ipv4())
    }
}
