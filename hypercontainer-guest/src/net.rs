//! Network setup inside the VM, before the container's root is built:
//! the loopback interface comes up, and each requested interface, found by
//! its MAC address under `/sys/class/net`, gets its IPv4 address and
//! netmask, is brought up, and gets a default route through its gateway.
//!
//! Also, as Docker does, `net.ipv4.ping_group_range` admits every group,
//! so that a non-root container user can ping.
//!
//! Plain `ioctl`s on an `AF_INET` socket (`SIOCSIFADDR`, `SIOCSIFNETMASK`,
//! `SIOCSIFFLAGS`, `SIOCADDRT`): the agent carries no netlink library.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use hypercontainer_protocol::Interface;

/// What went wrong, with the interface concerned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No interface has the MAC address.
    #[error("no network interface has MAC address {0}")]
    NoSuchMac(String),
    /// A configuration step failed.
    #[error("{what} on {ifname}: {source}")]
    Ioctl {
        /// The step.
        what: &'static str,
        /// The interface.
        ifname: String,
        /// The cause.
        source: io::Error,
    },
    /// The interfaces could not be listed.
    #[error("listing /sys/class/net: {0}")]
    ListInterfaces(io::Error),
    /// The control socket could not be created.
    #[error("creating a socket for interface configuration: {0}")]
    Socket(io::Error),
}

/// The name of the interface with `mac`.
fn find_by_mac(mac: &[u8; 6]) -> Result<String, Error> {
    let want = hypercontainer_protocol::mac_to_string(mac);
    let entries = std::fs::read_dir("/sys/class/net").map_err(Error::ListInterfaces)?;
    for e in entries.flatten() {
        let addr = std::fs::read_to_string(e.path().join("address")).unwrap_or_default();
        if addr.trim().eq_ignore_ascii_case(&want) {
            return Ok(e.file_name().to_string_lossy().into_owned());
        }
    }
    Err(Error::NoSuchMac(want))
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in r
        .ifr_name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *d = s as libc::c_char;
    }
    r
}

fn sockaddr_in(a: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size on Linux and
    // sockaddr is plain data.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

struct Ctl(OwnedFd);

impl Ctl {
    fn new() -> Result<Self, Error> {
        // SAFETY: socket has no memory-safety preconditions.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(Error::Socket(io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh socket we now own.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Runs one interface ioctl.
    fn ioctl<T>(
        &self,
        req: libc::Ioctl,
        arg: &mut T,
        what: &'static str,
        ifname: &str,
    ) -> Result<(), Error> {
        // SAFETY: every request used here takes a pointer to the struct
        // type passed (ifreq or rtentry), which outlives the call.
        let r = unsafe { libc::ioctl(self.0.as_raw_fd(), req, arg as *mut T) };
        if r < 0 {
            return Err(Error::Ioctl {
                what,
                ifname: ifname.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    fn up(&self, name: &str) -> Result<(), Error> {
        let mut r = ifreq(name);
        self.ioctl(libc::SIOCGIFFLAGS, &mut r, "reading the flags", name)?;
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        let flags = unsafe { r.ifr_ifru.ifru_flags };
        r.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        self.ioctl(
            libc::SIOCSIFFLAGS,
            &mut r,
            "bringing the interface up",
            name,
        )
    }

    fn address(&self, name: &str, addr: Ipv4Addr, prefix_len: u8) -> Result<(), Error> {
        let mut r = ifreq(name);
        r.ifr_ifru.ifru_addr = sockaddr_in(addr);
        self.ioctl(libc::SIOCSIFADDR, &mut r, "setting the address", name)?;
        let mask = u32::MAX
            .checked_shl(32 - u32::from(prefix_len.min(32)))
            .unwrap_or(0);
        let mut r = ifreq(name);
        r.ifr_ifru.ifru_netmask = sockaddr_in(Ipv4Addr::from(mask));
        self.ioctl(libc::SIOCSIFNETMASK, &mut r, "setting the netmask", name)
    }

    fn default_route(&self, name: &str, gateway: Ipv4Addr) -> Result<(), Error> {
        // SAFETY: rtentry is plain data; all-zero is a valid value.
        let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
        rt.rt_dst = sockaddr_in(Ipv4Addr::UNSPECIFIED);
        rt.rt_genmask = sockaddr_in(Ipv4Addr::UNSPECIFIED);
        rt.rt_gateway = sockaddr_in(gateway);
        rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        self.ioctl(libc::SIOCADDRT, &mut rt, "adding the default route", name)
    }
}

/// Brings up `lo` and configures every interface in `ifaces`. Like Docker,
/// lets every group send ICMP echo over ping sockets, so that `ping` works
/// for a non-root container user without raw sockets.
pub fn configure(ifaces: &[Interface]) -> Result<(), Error> {
    let ctl = Ctl::new()?;
    ctl.up("lo")?;
    if let Err(e) = std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647") {
        // Not fatal: only unprivileged ping depends on it.
        eprintln!("hypercontainer-agent: setting net.ipv4.ping_group_range: {e}");
    }
    for i in ifaces {
        let name = find_by_mac(&i.mac)?;
        ctl.address(&name, i.address, i.prefix_len)?;
        ctl.up(&name)?;
        if let Some(gw) = i.gateway {
            ctl.default_route(&name, gw)?;
        }
        crate::trace::trace!("{name} is {}/{}", i.address, i.prefix_len);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_names_are_cut_to_fit() {
        let r = ifreq("a-very-long-interface-name");
        assert_eq!(r.ifr_name[libc::IFNAMSIZ - 1], 0);
        assert_eq!(r.ifr_name[0], b'a' as libc::c_char);
    }
}
