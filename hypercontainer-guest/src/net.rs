//! Network setup inside the VM, before the container's root is built:
//! the loopback interface comes up, and each requested interface, found by
//! its MAC address under `/sys/class/net`, gets its MTU, its IPv4
//! addresses (the first as the interface's own, the others as `NAME:N`
//! aliases), is brought up, gets its IPv6 addresses (without duplicate
//! address detection or router advertisements: the host said what the
//! addresses are), and then its routes, in the order given.
//!
//! Also, as Docker does, `net.ipv4.ping_group_range` admits every group,
//! so that a non-root container user can ping.
//!
//! Plain `ioctl`s on `AF_INET` and `AF_INET6` sockets (`SIOCSIFMTU`,
//! `SIOCSIFADDR`, `SIOCSIFNETMASK`, `SIOCSIFFLAGS`, `SIOCADDRT`): the agent
//! carries no netlink library.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use hypercontainer_protocol::{Interface, IpPrefix, Route};

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
        what: String,
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
    /// IPv6 was asked for and the guest kernel has none.
    #[error("IPv6 address or route asked for, but the guest kernel has no IPv6 (CONFIG_IPV6)")]
    NoIpv6,
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

fn in6_addr(a: Ipv6Addr) -> libc::in6_addr {
    libc::in6_addr {
        s6_addr: a.octets(),
    }
}

/// The netmask of an IPv4 prefix length.
fn netmask(prefix_len: u8) -> Ipv4Addr {
    let len = u32::from(prefix_len.min(32));
    Ipv4Addr::from(u32::MAX.checked_shl(32 - len).unwrap_or(0))
}

/// `struct in6_rtmsg` of `<linux/ipv6_route.h>` (libc's has private fields).
#[repr(C)]
struct In6Rtmsg {
    dst: libc::in6_addr,
    src: libc::in6_addr,
    gateway: libc::in6_addr,
    kind: u32,
    dst_len: u16,
    src_len: u16,
    metric: u32,
    info: libc::c_ulong,
    flags: u32,
    ifindex: libc::c_int,
}

/// A socket of one address family, for interface ioctls.
struct Ctl(OwnedFd);

impl Ctl {
    fn new(family: libc::c_int) -> io::Result<Self> {
        // SAFETY: socket has no memory-safety preconditions.
        let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh socket we now own.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Runs one interface ioctl.
    fn ioctl<T>(
        &self,
        req: libc::Ioctl,
        arg: &mut T,
        what: impl FnOnce() -> String,
        ifname: &str,
    ) -> Result<(), Error> {
        // SAFETY: every request used here takes a pointer to the struct
        // type passed (ifreq, in6_ifreq, rtentry or in6_rtmsg), which
        // outlives the call.
        let r = unsafe { libc::ioctl(self.0.as_raw_fd(), req, arg as *mut T) };
        if r < 0 {
            return Err(Error::Ioctl {
                what: what(),
                ifname: ifname.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    fn up(&self, name: &str) -> Result<(), Error> {
        let mut r = ifreq(name);
        self.ioctl(
            libc::SIOCGIFFLAGS,
            &mut r,
            || "reading the flags".into(),
            name,
        )?;
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        let flags = unsafe { r.ifr_ifru.ifru_flags };
        r.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        self.ioctl(
            libc::SIOCSIFFLAGS,
            &mut r,
            || "bringing the interface up".into(),
            name,
        )
    }

    fn mtu(&self, name: &str, mtu: u16) -> Result<(), Error> {
        let mut r = ifreq(name);
        r.ifr_ifru.ifru_mtu = mtu.into();
        self.ioctl(
            libc::SIOCSIFMTU,
            &mut r,
            || format!("setting the MTU to {mtu}"),
            name,
        )
    }

    fn index(&self, name: &str) -> Result<libc::c_int, Error> {
        let mut r = ifreq(name);
        self.ioctl(
            libc::SIOCGIFINDEX,
            &mut r,
            || "reading the index".into(),
            name,
        )?;
        // SAFETY: SIOCGIFINDEX filled the ifindex member of the union.
        Ok(unsafe { r.ifr_ifru.ifru_ifindex })
    }

    /// Sets an IPv4 address; `label` is the interface or one of its
    /// `NAME:N` aliases.
    fn address4(&self, label: &str, addr: Ipv4Addr, prefix_len: u8) -> Result<(), Error> {
        let mut r = ifreq(label);
        r.ifr_ifru.ifru_addr = sockaddr_in(addr);
        self.ioctl(
            libc::SIOCSIFADDR,
            &mut r,
            || format!("setting the address {addr}"),
            label,
        )?;
        let mut r = ifreq(label);
        r.ifr_ifru.ifru_netmask = sockaddr_in(netmask(prefix_len));
        self.ioctl(
            libc::SIOCSIFNETMASK,
            &mut r,
            || format!("setting the netmask /{prefix_len}"),
            label,
        )
    }

    fn address6(&self, name: &str, ifindex: libc::c_int, p: IpPrefix) -> Result<(), Error> {
        let IpAddr::V6(addr) = p.ip else {
            unreachable!("an IPv6 socket is only given IPv6 addresses")
        };
        let mut r = libc::in6_ifreq {
            ifr6_addr: in6_addr(addr),
            ifr6_prefixlen: p.prefix_len.into(),
            ifr6_ifindex: ifindex,
        };
        self.ioctl(
            libc::SIOCSIFADDR,
            &mut r,
            || format!("setting the address {p}"),
            name,
        )
    }

    fn route4(
        &self,
        name: &str,
        dest: Ipv4Addr,
        len: u8,
        gw: Option<Ipv4Addr>,
    ) -> Result<(), Error> {
        let mut dev: Vec<libc::c_char> = name.bytes().map(|b| b as libc::c_char).collect();
        dev.push(0);
        // SAFETY: rtentry is plain data; all-zero is a valid value.
        let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
        rt.rt_dst = sockaddr_in(dest);
        rt.rt_genmask = sockaddr_in(netmask(len));
        rt.rt_flags = libc::RTF_UP;
        if let Some(g) = gw {
            rt.rt_gateway = sockaddr_in(g);
            rt.rt_flags |= libc::RTF_GATEWAY;
        }
        if len == 32 {
            rt.rt_flags |= libc::RTF_HOST;
        }
        // The kernel reads the name through this pointer during the call;
        // `dev` outlives it.
        rt.rt_dev = dev.as_mut_ptr();
        self.ioctl(
            libc::SIOCADDRT,
            &mut rt,
            || route_what(dest.into(), len, gw.map(Into::into)),
            name,
        )
    }

    fn route6(
        &self,
        name: &str,
        ifindex: libc::c_int,
        dest: Ipv6Addr,
        len: u8,
        gw: Option<Ipv6Addr>,
    ) -> Result<(), Error> {
        let mut rt = In6Rtmsg {
            dst: in6_addr(dest),
            src: in6_addr(Ipv6Addr::UNSPECIFIED),
            gateway: in6_addr(gw.unwrap_or(Ipv6Addr::UNSPECIFIED)),
            kind: 0,
            dst_len: len.into(),
            src_len: 0,
            metric: 1,
            info: 0,
            flags: (libc::RTF_UP | if gw.is_some() { libc::RTF_GATEWAY } else { 0 }).into(),
            ifindex,
        };
        if len == 128 {
            rt.flags |= u32::from(libc::RTF_HOST);
        }
        self.ioctl(
            libc::SIOCADDRT,
            &mut rt,
            || route_what(dest.into(), len, gw.map(Into::into)),
            name,
        )
    }
}

fn route_what(dest: IpAddr, len: u8, gw: Option<IpAddr>) -> String {
    match gw {
        Some(g) => format!("adding the route to {dest}/{len} via {g}"),
        None => format!("adding the route to {dest}/{len}"),
    }
}

/// Sets an IPv6 sysctl of `name`; failures only weaken the setup, so they
/// are reported and passed over.
fn ipv6_sysctl(name: &str, key: &str, value: &str) {
    let path = format!("/proc/sys/net/ipv6/conf/{name}/{key}");
    if let Err(e) = std::fs::write(&path, value) {
        eprintln!("hypercontainer-agent: setting {path}: {e}");
    }
}

/// The two control sockets; the IPv6 one only when something needs it.
struct Ctls {
    v4: Ctl,
    v6: Option<Ctl>,
}

impl Ctls {
    fn v6(&mut self) -> Result<&Ctl, Error> {
        if self.v6.is_none() {
            let ctl = Ctl::new(libc::AF_INET6).map_err(|e| match e.raw_os_error() {
                Some(libc::EAFNOSUPPORT) => Error::NoIpv6,
                _ => Error::Socket(e),
            })?;
            self.v6 = Some(ctl);
        }
        Ok(self.v6.as_ref().expect("just set"))
    }
}

fn configure_one(ctls: &mut Ctls, i: &Interface) -> Result<(), Error> {
    let name = find_by_mac(&i.mac)?;
    let has_v6 = i.addresses.iter().any(|a| a.ip.is_ipv6())
        || i.routes.iter().any(|r| r.destination.ip.is_ipv6());
    if let Some(mtu) = i.mtu {
        ctls.v4.mtu(&name, mtu)?;
    }
    if has_v6 {
        ctls.v6()?;
        ipv6_sysctl(&name, "accept_dad", "0");
        ipv6_sysctl(&name, "accept_ra", "0");
    }
    let v4 = i.addresses.iter().filter(|a| a.ip.is_ipv4());
    for (n, a) in v4.enumerate() {
        let IpAddr::V4(ip) = a.ip else { continue };
        let label = if n == 0 {
            name.clone()
        } else {
            format!("{name}:{n}")
        };
        ctls.v4.address4(&label, ip, a.prefix_len)?;
    }
    ctls.v4.up(&name)?;
    let ifindex = ctls.v4.index(&name)?;
    for a in i.addresses.iter().filter(|a| a.ip.is_ipv6()) {
        ctls.v6()?.address6(&name, ifindex, *a)?;
    }
    for r in &i.routes {
        add_route(ctls, &name, ifindex, r)?;
    }
    crate::trace::trace!(
        "{name}: mtu {:?}, {} addresses, {} routes",
        i.mtu,
        i.addresses.len(),
        i.routes.len()
    );
    Ok(())
}

fn add_route(ctls: &mut Ctls, name: &str, ifindex: libc::c_int, r: &Route) -> Result<(), Error> {
    let len = r.destination.prefix_len;
    match (r.destination.ip, r.gateway) {
        (IpAddr::V4(d), None) => ctls.v4.route4(name, d, len, None),
        (IpAddr::V4(d), Some(IpAddr::V4(g))) => ctls.v4.route4(name, d, len, Some(g)),
        (IpAddr::V6(d), None) => ctls.v6()?.route6(name, ifindex, d, len, None),
        (IpAddr::V6(d), Some(IpAddr::V6(g))) => ctls.v6()?.route6(name, ifindex, d, len, Some(g)),
        // The decoder refuses a gateway of the other family.
        _ => Ok(()),
    }
}

/// Brings up `lo` and configures every interface in `ifaces`. Like Docker,
/// lets every group send ICMP echo over ping sockets, so that `ping` works
/// for a non-root container user without raw sockets.
pub fn configure(ifaces: &[Interface]) -> Result<(), Error> {
    let mut ctls = Ctls {
        v4: Ctl::new(libc::AF_INET).map_err(Error::Socket)?,
        v6: None,
    };
    ctls.v4.up("lo")?;
    if let Err(e) = std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647") {
        // Not fatal: only unprivileged ping depends on it.
        eprintln!("hypercontainer-agent: setting net.ipv4.ping_group_range: {e}");
    }
    for i in ifaces {
        configure_one(&mut ctls, i)?;
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

    #[test]
    fn netmasks_of_prefix_lengths() {
        assert_eq!(netmask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(32), Ipv4Addr::BROADCAST);
    }

    #[test]
    fn in6_rtmsg_has_the_kernel_layout() {
        // 3 * 16 + 4 + 2 + 2 + 4, padded to 8, + 8 + 4 + 4.
        assert_eq!(std::mem::size_of::<In6Rtmsg>(), 80);
    }
}
