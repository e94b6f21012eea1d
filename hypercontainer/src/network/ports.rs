//! Published ports: Docker's `-p [IP:]HOST:GUEST[/tcp|udp]`.
//!
//! Without an address a port is published on [`DEFAULT_PUBLISH_ADDRESS`],
//! `127.0.0.1`, not on Docker's `0.0.0.0`: an SDK is embedded in programs
//! that did not necessarily mean to open a port to the whole network, and
//! on a host whose firewall is managed elsewhere a port on every address is
//! reachable from outside as soon as it is bound. Ask for `0.0.0.0` (or
//! `[::]`) to get Docker's behaviour. Host port `0` takes any free port;
//! [`Sandbox::ports`](crate::sandbox::Sandbox::ports) tells which.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Where a port is published when its mapping names no address.
pub const DEFAULT_PUBLISH_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// TCP or UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    /// TCP (the default of a port mapping).
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// A port of the guest published on the host: connections to `host_ip`
/// and `host_port` reach `guest_port` of the guest.
///
/// ```
/// use hypercontainer::network::{PortMapping, Protocol};
///
/// let p: PortMapping = "127.0.0.1:0:80".parse().unwrap();
/// assert_eq!((p.host_port, p.guest_port, p.protocol), (0, 80, Protocol::Tcp));
/// let p: PortMapping = "[::1]:5353:53/udp".parse().unwrap();
/// assert_eq!(p.host_ip, Some("::1".parse().unwrap()));
/// assert!("8080:0".parse::<PortMapping>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortMapping {
    /// The host address bound; `None` is [`DEFAULT_PUBLISH_ADDRESS`].
    pub host_ip: Option<IpAddr>,
    /// The host port; 0 takes any free one.
    pub host_port: u16,
    /// The guest's port (not 0).
    pub guest_port: u16,
    /// TCP or UDP.
    pub protocol: Protocol,
}

impl PortMapping {
    /// TCP `host_port` on [`DEFAULT_PUBLISH_ADDRESS`] to the guest's
    /// `guest_port`.
    pub fn tcp(host_port: u16, guest_port: u16) -> Self {
        Self {
            host_ip: None,
            host_port,
            guest_port,
            protocol: Protocol::Tcp,
        }
    }

    /// UDP `host_port` on [`DEFAULT_PUBLISH_ADDRESS`] to the guest's
    /// `guest_port`.
    pub fn udp(host_port: u16, guest_port: u16) -> Self {
        Self {
            protocol: Protocol::Udp,
            ..Self::tcp(host_port, guest_port)
        }
    }

    /// Binds `ip` instead of [`DEFAULT_PUBLISH_ADDRESS`].
    pub fn on(mut self, ip: IpAddr) -> Self {
        self.host_ip = Some(ip);
        self
    }

    /// The host address and port asked for.
    pub fn host_addr(&self) -> SocketAddr {
        SocketAddr::new(
            self.host_ip.unwrap_or(DEFAULT_PUBLISH_ADDRESS),
            self.host_port,
        )
    }
}

impl std::fmt::Display for PortMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}/{}",
            self.host_addr(),
            self.guest_port,
            self.protocol
        )
    }
}

/// A port specification that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "bad port specification {spec:?}: {reason}; expected [IP:]HOST_PORT:GUEST_PORT[/tcp|udp], \
     e.g. 8080:80, 127.0.0.1:0:80 or [::1]:5353:53/udp"
)]
pub struct ParsePortError {
    /// What was given.
    pub spec: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl std::str::FromStr for PortMapping {
    type Err = ParsePortError;

    fn from_str(spec: &str) -> Result<Self, ParsePortError> {
        let err = |reason| ParsePortError {
            spec: spec.to_string(),
            reason,
        };
        let (ports, protocol) = match spec.rsplit_once('/') {
            Some((p, "tcp")) => (p, Protocol::Tcp),
            Some((p, "udp")) => (p, Protocol::Udp),
            Some(_) => return Err(err("the protocol must be tcp or udp")),
            None => (spec, Protocol::Tcp),
        };
        let (rest, guest) = ports
            .rsplit_once(':')
            .ok_or_else(|| err("both a host and a guest port are needed"))?;
        let (ip, host) = match rest.rsplit_once(':') {
            Some((ip, host)) => (Some(ip), host),
            None => (None, rest),
        };
        let host_ip = match ip {
            None => None,
            Some(ip) => {
                let ip = ip
                    .strip_prefix('[')
                    .and_then(|i| i.strip_suffix(']'))
                    .unwrap_or(ip);
                Some(
                    ip.parse::<IpAddr>()
                        .map_err(|_| err("the host address is not an IP address"))?,
                )
            }
        };
        let host_port = host
            .parse::<u16>()
            .map_err(|_| err("the host port is not a number from 0 to 65535"))?;
        let guest_port = guest
            .parse::<u16>()
            .map_err(|_| err("the guest port is not a number from 1 to 65535"))?;
        if guest_port == 0 {
            return Err(err("the guest port cannot be 0"));
        }
        Ok(Self {
            host_ip,
            host_port,
            guest_port,
            protocol,
        })
    }
}

/// A port the sandbox published, as bound: [`PortMapping::host_port`] 0
/// became the port the kernel chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublishedPort {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The host address and port bound.
    pub host: SocketAddr,
    /// The guest's port.
    pub guest_port: u16,
}

impl std::fmt::Display for PublishedPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} -> {}/{}", self.host, self.guest_port, self.protocol)
    }
}

/// Two mappings that would bind the same host port.
pub(super) fn find_duplicate(ports: &[PortMapping]) -> Option<PortMapping> {
    let mut seen = std::collections::HashSet::new();
    ports
        .iter()
        .filter(|p| p.host_port != 0)
        .find(|p| !seen.insert((p.host_addr(), p.protocol)))
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<PortMapping, ParsePortError> {
        s.parse()
    }

    #[test]
    fn docker_forms_parse() {
        assert_eq!(parse("8080:80").unwrap(), PortMapping::tcp(8080, 80));
        assert_eq!(parse("53:53/udp").unwrap(), PortMapping::udp(53, 53));
        assert_eq!(
            parse("0.0.0.0:80:8080/tcp").unwrap(),
            PortMapping::tcp(80, 8080).on("0.0.0.0".parse().unwrap())
        );
        assert_eq!(
            parse("[fd00::1]:1:2").unwrap().host_ip,
            Some("fd00::1".parse().unwrap())
        );
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let reason = |s| parse(s).unwrap_err().reason;
        assert_eq!(reason("80"), "both a host and a guest port are needed");
        assert_eq!(reason("80:80/sctp"), "the protocol must be tcp or udp");
        assert_eq!(
            reason("host:80:80"),
            "the host address is not an IP address"
        );
        assert_eq!(
            reason("70000:80"),
            "the host port is not a number from 0 to 65535"
        );
        assert_eq!(
            reason("80:x"),
            "the guest port is not a number from 1 to 65535"
        );
        assert_eq!(reason("80:0"), "the guest port cannot be 0");
        assert!(parse("80")
            .unwrap_err()
            .to_string()
            .contains("127.0.0.1:0:80"));
    }

    #[test]
    fn the_default_address_is_loopback() {
        assert_eq!(
            PortMapping::tcp(0, 80).host_addr(),
            "127.0.0.1:0".parse().unwrap()
        );
        assert_eq!(PortMapping::udp(5, 6).to_string(), "127.0.0.1:5:6/udp");
    }

    #[test]
    fn duplicates_are_found_but_port_zero_repeats() {
        let a = PortMapping::tcp(8080, 80);
        assert_eq!(find_duplicate(&[a, PortMapping::udp(8080, 80)]), None);
        assert_eq!(
            find_duplicate(&[a, PortMapping::tcp(8080, 81)]),
            Some(PortMapping::tcp(8080, 81))
        );
        assert_eq!(
            find_duplicate(&[PortMapping::tcp(0, 80), PortMapping::tcp(0, 81)]),
            None
        );
    }
}
