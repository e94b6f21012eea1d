//! Encoding and decoding of [`Interface`]s, each type's two halves side
//! by side (the layout is in [`crate::net`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{Dec, Enc, Error, Result};
use crate::net::{Interface, IpPrefix, Route, MAX_ADDRESSES, MAX_INTERFACES, MAX_ROUTES, MIN_MTU};

/// Smallest encoded sizes, for [`Dec::count`].
const MIN_INTERFACE: usize = 6 + 1 + 4 + 4;
const MIN_PREFIX: usize = 1 + 4 + 1;
const MIN_ROUTE: usize = MIN_PREFIX + 1;

impl Enc<'_> {
    pub(super) fn interfaces(&mut self, v: &[Interface]) -> Result<()> {
        self.len(v.len())?;
        for i in v {
            self.0.extend_from_slice(&i.mac);
            match i.mtu {
                None => self.u8(0),
                Some(m) => {
                    self.u8(1);
                    self.u16(m);
                }
            }
            self.len(i.addresses.len())?;
            for a in &i.addresses {
                self.prefix(a);
            }
            self.len(i.routes.len())?;
            for r in &i.routes {
                self.prefix(&r.destination);
                match r.gateway {
                    None => self.u8(0),
                    Some(g) => {
                        self.u8(1);
                        self.ip(g);
                    }
                }
            }
        }
        Ok(())
    }

    fn prefix(&mut self, p: &IpPrefix) {
        self.ip(p.ip);
        self.u8(p.prefix_len);
    }

    fn ip(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(a) => {
                self.u8(4);
                self.0.extend_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                self.u8(6);
                self.0.extend_from_slice(&a.octets());
            }
        }
    }
}

impl Dec<'_> {
    pub(super) fn interfaces(&mut self) -> Result<Vec<Interface>> {
        let n = self.limited_count("interface count", MIN_INTERFACE, MAX_INTERFACES)?;
        (0..n).map(|_| self.interface()).collect()
    }

    fn interface(&mut self) -> Result<Interface> {
        let mac = self.array::<6>("interface mac")?;
        let mtu = match self.tag("interface mtu", 1)? {
            0 => None,
            _ => {
                let m = self.u16("interface mtu")?;
                if m < MIN_MTU {
                    return Err(Error::InvalidValue {
                        what: "interface mtu",
                        value: m.into(),
                    });
                }
                Some(m)
            }
        };
        let n = self.limited_count("interface address count", MIN_PREFIX, MAX_ADDRESSES)?;
        let addresses = (0..n)
            .map(|_| self.prefix("interface address"))
            .collect::<Result<_>>()?;
        let n = self.limited_count("interface route count", MIN_ROUTE, MAX_ROUTES)?;
        let routes = (0..n).map(|_| self.route()).collect::<Result<_>>()?;
        Ok(Interface {
            mac,
            mtu,
            addresses,
            routes,
        })
    }

    fn route(&mut self) -> Result<Route> {
        let destination = self.prefix("route destination")?;
        let gateway = match self.tag("route gateway", 1)? {
            0 => None,
            _ => Some(self.ip("route gateway")?),
        };
        let route = Route {
            destination,
            gateway,
        };
        if !route.is_consistent() {
            return Err(Error::InvalidValue {
                what: "route gateway family",
                value: 0,
            });
        }
        Ok(route)
    }

    fn prefix(&mut self, what: &'static str) -> Result<IpPrefix> {
        let ip = self.ip(what)?;
        let prefix_len = self.u8(what)?;
        IpPrefix::new(ip, prefix_len).ok_or(Error::InvalidValue {
            what,
            value: prefix_len.into(),
        })
    }

    fn ip(&mut self, what: &'static str) -> Result<IpAddr> {
        match self.u8(what)? {
            4 => Ok(Ipv4Addr::from(self.array::<4>(what)?).into()),
            6 => Ok(Ipv6Addr::from(self.array::<16>(what)?).into()),
            v => Err(Error::InvalidValue {
                what,
                value: v.into(),
            }),
        }
    }

    /// A [`Dec::count`] that is also at most `max`.
    fn limited_count(&mut self, what: &'static str, min_size: usize, max: usize) -> Result<usize> {
        let n = self.count(what, min_size)?;
        if n > max {
            return Err(Error::InvalidValue {
                what,
                value: n as u64,
            });
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::decode_frame;
    use crate::{Message, Setup};

    fn start(network: Vec<Interface>) -> Vec<u8> {
        Message::Setup(Box::new(Setup {
            network,
            ..Setup::default()
        }))
        .to_frame()
        .unwrap()
    }

    fn decoded(f: &[u8]) -> Result<Vec<Interface>> {
        match decode_frame(f)? {
            Some((Message::Setup(s), _)) => Ok(s.network),
            m => panic!("decoded {m:?}"),
        }
    }

    /// Byte offset of the interface list: after the empty host name
    /// (4) and the two absent files (1 + 1), behind the 5-byte frame head.
    fn list_offset() -> usize {
        5 + 4 + 1 + 1
    }

    fn one() -> Interface {
        Interface {
            mac: [2, 0, 0, 0, 0, 1],
            mtu: Some(1500),
            addresses: vec!["10.0.0.2/24".parse().unwrap()],
            routes: vec![Route::default_via("10.0.0.1".parse().unwrap())],
        }
    }

    fn invalid(r: Result<Vec<Interface>>) -> &'static str {
        match r {
            Err(Error::InvalidValue { what, .. }) => what,
            r => panic!("expected an invalid value, got {r:?}"),
        }
    }

    #[test]
    fn dual_stack_interfaces_round_trip() {
        let v6 = Interface {
            mac: [2, 0, 0, 0, 0, 2],
            mtu: None,
            addresses: vec![
                "192.168.7.9/32".parse().unwrap(),
                "fd00:1::9/64".parse().unwrap(),
            ],
            routes: vec![
                Route {
                    destination: "10.8.0.0/16".parse().unwrap(),
                    gateway: None,
                },
                Route::default_via("fd00:1::1".parse().unwrap()),
            ],
        };
        let list = vec![one(), v6, Interface::default()];
        assert_eq!(decoded(&start(list.clone())).unwrap(), list);
    }

    #[test]
    fn bad_values_are_rejected_by_name() {
        let at = list_offset() + 4;
        // mac (6), mtu tag, mtu (2), address count (4), then the address.
        let mut f = start(vec![one()]);
        f[at + 6] = 2;
        assert_eq!(invalid(decoded(&f)), "interface mtu");
        let mut f = start(vec![one()]);
        f[at + 7..at + 9].copy_from_slice(&67u16.to_le_bytes());
        assert_eq!(invalid(decoded(&f)), "interface mtu");
        let addr = at + 9 + 4;
        let mut f = start(vec![one()]);
        f[addr] = 5;
        assert_eq!(invalid(decoded(&f)), "interface address");
        let mut f = start(vec![one()]);
        f[addr + 5] = 33;
        assert_eq!(invalid(decoded(&f)), "interface address");
        // The route: count (4), destination (6), gateway tag, gateway.
        let route = addr + 6 + 4;
        let mut f = start(vec![one()]);
        f[route + 6] = 2;
        assert_eq!(invalid(decoded(&f)), "route gateway");
        let mut v4_to_v6 = one();
        v4_to_v6.routes[0].gateway = Some("fd00::1".parse().unwrap());
        assert_eq!(
            invalid(decoded(&start(vec![v4_to_v6]))),
            "route gateway family"
        );
    }

    #[test]
    fn counts_are_capped() {
        assert_eq!(
            invalid(decoded(&start(vec![one(); MAX_INTERFACES + 1]))),
            "interface count"
        );
        assert!(decoded(&start(vec![one(); MAX_INTERFACES])).is_ok());
        let mut many = one();
        many.addresses = vec![many.addresses[0]; MAX_ADDRESSES + 1];
        assert_eq!(
            invalid(decoded(&start(vec![many]))),
            "interface address count"
        );
        let mut many = one();
        many.routes = vec![many.routes[0]; MAX_ROUTES + 1];
        assert_eq!(
            invalid(decoded(&start(vec![many]))),
            "interface route count"
        );
    }
}
