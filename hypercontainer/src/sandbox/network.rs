//! Sandbox networking: a tap on the host, an IPv4 address in the guest.
//!
//! The SDK does not build the host side of a network (bridges, NAT,
//! firewall rules): the embedding program creates and configures a tap
//! (or hands over an open one) and tells the sandbox which address, prefix
//! and gateway the guest uses. The VM gets a virtio-net device on that tap;
//! the agent finds the NIC by its MAC address and configures it before the
//! container's root is built. Without any interface the guest has only its
//! loopback interface (always up).

use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;

use crate::vmm::devices::NetConfig;

/// Where an interface's frames go on the host.
#[derive(Debug)]
enum TapSource {
    Name(String),
    Fd(OwnedFd),
}

/// One network interface of a sandbox: a tap on the host, an IPv4 address
/// in the guest.
///
/// The SDK does not build the host side (bridges, NAT, firewall rules):
/// the embedding program names a tap (or hands over an open one, e.g.
/// already configured) and says which address, prefix and gateway the
/// guest uses. The VM gets a virtio-net device on that tap; the agent finds
/// the NIC by its MAC address and configures it before the container's
/// root is built.
///
/// ```
/// use std::net::Ipv4Addr;
/// use hypercontainer::sandbox::{NetworkInterface, Sandbox};
///
/// let eth0 = NetworkInterface::tap("tap-web", Ipv4Addr::new(10, 0, 7, 2), 24)
///     .gateway(Ipv4Addr::new(10, 0, 7, 1));
/// let builder = Sandbox::builder()
///     .network(eth0)
///     .dns(Ipv4Addr::new(10, 0, 7, 1).into());
/// ```
#[derive(Debug)]
pub struct NetworkInterface {
    tap: TapSource,
    mac: Option<[u8; 6]>,
    address: Ipv4Addr,
    prefix_len: u8,
    gateway: Option<Ipv4Addr>,
}

impl NetworkInterface {
    /// The tap interface `name` (created if it does not exist; it then
    /// lives as long as the sandbox), with the guest at `address/prefix_len`.
    pub fn tap(name: impl Into<String>, address: Ipv4Addr, prefix_len: u8) -> Self {
        Self::with(TapSource::Name(name.into()), address, prefix_len)
    }

    /// An open tap device (`IFF_TAP | IFF_NO_PI`), e.g. one the caller
    /// created and configured before starting the sandbox.
    pub fn tap_fd(fd: OwnedFd, address: Ipv4Addr, prefix_len: u8) -> Self {
        Self::with(TapSource::Fd(fd), address, prefix_len)
    }

    fn with(tap: TapSource, address: Ipv4Addr, prefix_len: u8) -> Self {
        Self {
            tap,
            mac: None,
            address,
            prefix_len,
            gateway: None,
        }
    }

    /// The guest NIC's MAC address (default: a random locally
    /// administered unicast address).
    pub fn mac(mut self, mac: [u8; 6]) -> Self {
        self.mac = Some(mac);
        self
    }

    /// Routes everything outside the interface's subnet through `gateway`.
    pub fn gateway(mut self, gateway: Ipv4Addr) -> Self {
        self.gateway = Some(gateway);
        self
    }

    /// Checks what the caller gave.
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.prefix_len > 32 {
            return Err(format!(
                "network prefix length {} is more than 32",
                self.prefix_len
            ));
        }
        if let TapSource::Name(n) = &self.tap {
            hypercontainer_virtio::net::check_interface_name(n).map_err(|e| e.to_string())?;
        }
        if let Some(m) = self.mac {
            if m[0] & 1 != 0 {
                return Err(format!(
                    "MAC address {} is a multicast address",
                    hypercontainer_protocol::mac_to_string(&m)
                ));
            }
        }
        Ok(())
    }

    /// The VM's device and the agent's view of it; `fallback_mac` is used
    /// when no MAC was set.
    pub(super) fn into_parts(
        self,
        fallback_mac: [u8; 6],
    ) -> (NetConfig, hypercontainer_protocol::Interface) {
        let mac = self.mac.unwrap_or(fallback_mac);
        let config = match self.tap {
            TapSource::Name(n) => NetConfig::tap(n),
            TapSource::Fd(fd) => NetConfig::tap_fd(fd),
        }
        .mac(mac);
        let iface = hypercontainer_protocol::Interface {
            mac,
            address: self.address,
            prefix_len: self.prefix_len,
            gateway: self.gateway,
        };
        (config, iface)
    }
}

/// A locally administered unicast MAC for interface `index` of the sandbox
/// `id` (hex).
pub(super) fn sandbox_mac(id: &str, index: usize) -> [u8; 6] {
    let mut mac = [0x02, 0, 0, 0, 0, 0];
    let bytes = hex::decode(id.get(..8).unwrap_or("00000000")).unwrap_or_default();
    for (m, b) in mac[1..5].iter_mut().zip(bytes) {
        *m = b;
    }
    mac[5] = index as u8;
    mac
}

/// `/etc/resolv.conf` naming `servers`.
pub(super) fn resolv_conf(servers: &[std::net::IpAddr]) -> String {
    servers
        .iter()
        .map(|s| format!("nameserver {s}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_local_unicast_and_distinct() {
        let a = sandbox_mac("0123456789abcdef", 0);
        let b = sandbox_mac("0123456789abcdef", 1);
        assert_eq!(a, [0x02, 0x01, 0x23, 0x45, 0x67, 0]);
        assert_ne!(a, b);
        assert_eq!(a[0] & 0b11, 0b10);
    }

    #[test]
    fn bad_settings_are_refused() {
        let ip = Ipv4Addr::new(10, 0, 0, 2);
        assert!(NetworkInterface::tap("t0", ip, 33).validate().is_err());
        assert!(NetworkInterface::tap("", ip, 24).validate().is_err());
        assert!(NetworkInterface::tap("a-name-too-long-x", ip, 24)
            .validate()
            .is_err());
        assert!(NetworkInterface::tap("t0", ip, 24)
            .mac([1, 0, 0, 0, 0, 1])
            .validate()
            .is_err());
        assert!(NetworkInterface::tap("t0", ip, 24).validate().is_ok());
    }

    #[test]
    fn resolv_conf_lists_servers() {
        assert_eq!(
            resolv_conf(&["10.0.0.1".parse().unwrap(), "::1".parse().unwrap()]),
            "nameserver 10.0.0.1\nnameserver ::1\n"
        );
    }
}
