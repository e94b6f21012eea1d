//! [`TapNetwork`]: a tap the embedder wires up itself, and the guest's
//! addresses, routes and MTU on it.

use std::net::IpAddr;
use std::os::fd::OwnedFd;

use hypercontainer_protocol::{IpPrefix, Route};

use super::{Error, GuestConfig, Result};
use crate::vmm::devices::NetConfig;

/// Where an interface's frames go on the host.
#[derive(Debug)]
enum TapSource {
    Name(String),
    Fd(OwnedFd),
}

/// A tap on the host, and what the guest's interface on it is: the
/// embedder builds the host side (bridge, NAT, firewall rules), the SDK
/// gives the VM a virtio-net device on the tap and the agent configures
/// the guest's end before the container starts.
///
/// ```
/// use hypercontainer::network::Network;
/// use hypercontainer::sandbox::Sandbox;
///
/// let net = Network::tap("tap-web")
///     .address("10.0.7.2/24".parse().unwrap())
///     .address("fd00:7::2/64".parse().unwrap())
///     .gateway("10.0.7.1".parse().unwrap())
///     .gateway("fd00:7::1".parse().unwrap())
///     .mtu(1400);
/// let builder = Sandbox::builder()
///     .network(net)
///     .dns("10.0.7.1".parse().unwrap());
/// ```
#[derive(Debug)]
pub struct TapNetwork {
    tap: TapSource,
    pub(super) guest: GuestConfig,
}

impl TapNetwork {
    /// The tap interface `name` (created if it does not exist; it then
    /// lives as long as the sandbox).
    pub(super) fn named(name: String) -> Self {
        Self {
            tap: TapSource::Name(name),
            guest: GuestConfig::default(),
        }
    }

    /// An open tap device (`IFF_TAP | IFF_NO_PI`).
    pub(super) fn fd(fd: OwnedFd) -> Self {
        Self {
            tap: TapSource::Fd(fd),
            guest: GuestConfig::default(),
        }
    }

    /// Adds an address of the guest's interface (IPv4 or IPv6, with its
    /// prefix length; the first IPv4 one is the interface's own, the
    /// others aliases).
    pub fn address(mut self, address: IpPrefix) -> Self {
        self.guest.addresses.push(address);
        self
    }

    /// Adds a route (after the addresses, in the order added).
    pub fn route(mut self, route: Route) -> Self {
        self.guest.routes.push(route);
        self
    }

    /// Adds a default route of `gateway`'s family through `gateway`.
    pub fn gateway(self, gateway: IpAddr) -> Self {
        self.route(Route::default_via(gateway))
    }

    /// The guest interface's MTU (default: 1500).
    pub fn mtu(mut self, mtu: u16) -> Self {
        self.guest.mtu = Some(mtu);
        self
    }

    /// The guest NIC's MAC address (default: a locally administered
    /// unicast address derived from the sandbox's id).
    pub fn mac(mut self, mac: [u8; 6]) -> Self {
        self.guest.mac = Some(mac);
        self
    }

    pub(super) fn validate(&self) -> Result<()> {
        if let TapSource::Name(n) = &self.tap {
            hypercontainer_virtio::net::check_interface_name(n).map_err(|e| Error::Tap {
                reason: e.to_string(),
            })?;
        }
        self.guest.validate()
    }

    /// The VM's device for this tap.
    pub(super) fn device(self) -> (NetConfig, GuestConfig) {
        let config = match self.tap {
            TapSource::Name(n) => NetConfig::tap(n),
            TapSource::Fd(fd) => NetConfig::tap_fd(fd),
        };
        (config, self.guest)
    }
}
