//! Resource limits of a container's processes, as `docker run --ulimit`
//! takes them (`nofile=1024:2048`), and the defaults a container gets.
//!
//! Docker itself puts no rlimit into a container's spec unless asked
//! (`--ulimit`, or the daemon's `default-ulimits`): the container inherits
//! those of `dockerd`, which come from its service manager. Those have
//! moved: `docker.service` set `LimitNOFILE=1048576`, then `infinity`, and
//! since Docker 25 sets none, so that on a systemd host a container starts
//! with systemd's default, `RLIMIT_NOFILE` 1024 soft / 524288 hard. Here
//! the agent is PID 1 of a fresh kernel, whose own default (1024 / 4096)
//! would cap what a program may raise its limit to far below Docker's; so
//! a container gets [`DEFAULT_ULIMITS`] (that current Docker `nofile`),
//! and every other limit is the guest kernel's default, as under Docker it
//! is the daemon's. A [`Ulimit`] of the same resource replaces a default.

use std::str::FromStr;

use hypercontainer_protocol::{oci, RlimitResource};

use super::Error;

/// `RLIM_INFINITY`: no limit (`-1` or `unlimited` in a `--ulimit` value).
pub const UNLIMITED: u64 = u64::MAX;

/// One resource limit (`docker run --ulimit NAME=SOFT[:HARD]`).
///
/// ```
/// use hypercontainer::spec::Ulimit;
/// use hypercontainer_protocol::RlimitResource;
///
/// let u: Ulimit = "nofile=1024:2048".parse().unwrap();
/// assert_eq!(u, Ulimit::new(RlimitResource::Nofile, 1024, 2048));
/// // Without a hard limit, it is the soft one.
/// assert_eq!("nproc=64".parse::<Ulimit>().unwrap().hard, 64);
/// assert!("nofile=2048:1024".parse::<Ulimit>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ulimit {
    /// Which limit.
    pub resource: RlimitResource,
    /// Soft limit ([`UNLIMITED`] for none).
    pub soft: u64,
    /// Hard limit ([`UNLIMITED`] for none); at least `soft`.
    pub hard: u64,
}

/// What a container gets unless a [`Ulimit`] of the same resource says
/// otherwise: `RLIMIT_NOFILE` 1024 soft / 524288 hard (see the module docs).
pub const DEFAULT_ULIMITS: &[Ulimit] = &[Ulimit::new(RlimitResource::Nofile, 1024, 524_288)];

impl Ulimit {
    /// A limit of `resource`.
    pub const fn new(resource: RlimitResource, soft: u64, hard: u64) -> Self {
        Self {
            resource,
            soft,
            hard,
        }
    }

    /// Docker's name of the resource: the OCI name, lowercase, without
    /// `RLIMIT_` (`nofile`, `nproc`, `core`, ...).
    pub fn name(&self) -> String {
        resource_name(self.resource)
    }

    fn check(self) -> Result<Self, Error> {
        if self.soft > self.hard {
            return Err(Error::Invalid(format!(
                "ulimit {}: the soft limit {} exceeds the hard limit {}",
                self.name(),
                self.soft,
                self.hard
            )));
        }
        Ok(self)
    }
}

fn resource_name(r: RlimitResource) -> String {
    r.oci_name()
        .trim_start_matches("RLIMIT_")
        .to_ascii_lowercase()
}

fn parse_value(name: &str, v: &str) -> Result<u64, Error> {
    match v {
        "-1" | "unlimited" => Ok(UNLIMITED),
        _ => v.parse().map_err(|_| {
            Error::Invalid(format!(
                "ulimit {name}: {v:?} is not a number, -1 or unlimited"
            ))
        }),
    }
}

impl FromStr for Ulimit {
    type Err = Error;

    /// `NAME=SOFT[:HARD]`, Docker's `--ulimit` syntax.
    fn from_str(s: &str) -> Result<Self, Error> {
        let (name, value) = s
            .split_once('=')
            .ok_or_else(|| Error::Invalid(format!("ulimit {s:?}: expected NAME=SOFT[:HARD]")))?;
        let resource = RlimitResource::ALL
            .into_iter()
            .find(|r| resource_name(*r) == name)
            .ok_or_else(|| Error::Invalid(format!("ulimit {s:?}: unknown limit {name:?}")))?;
        let (soft, hard) = match value.split_once(':') {
            Some((soft, hard)) => (parse_value(name, soft)?, parse_value(name, hard)?),
            None => {
                let v = parse_value(name, value)?;
                (v, v)
            }
        };
        Self::new(resource, soft, hard).check()
    }
}

/// The spec's `process.rlimits`: [`DEFAULT_ULIMITS`] replaced, resource by
/// resource, by `ulimits` (the last of a resource wins).
pub(crate) fn spec_rlimits(ulimits: &[Ulimit]) -> Result<Vec<oci::PosixRlimit>, Error> {
    let mut out: Vec<Ulimit> = DEFAULT_ULIMITS.to_vec();
    for u in ulimits {
        let u = u.check()?;
        match out.iter_mut().find(|o| o.resource == u.resource) {
            Some(slot) => *slot = u,
            None => out.push(u),
        }
    }
    out.iter()
        .map(|u| {
            let typ = u.resource.oci_name().parse().map_err(|_| {
                Error::Invalid(format!("{} has no OCI rlimit type", u.resource.oci_name()))
            })?;
            oci::PosixRlimitBuilder::default()
                .typ::<oci::PosixRlimitType>(typ)
                .soft(u.soft)
                .hard(u.hard)
                .build()
                .map_err(|e| Error::Invalid(format!("ulimit {}: {e}", u.name())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockers_ulimit_syntax() {
        let u: Ulimit = "nofile=1024:2048".parse().unwrap();
        assert_eq!(u, Ulimit::new(RlimitResource::Nofile, 1024, 2048));
        assert_eq!(u.name(), "nofile");
        let u: Ulimit = "core=-1".parse().unwrap();
        assert_eq!((u.soft, u.hard), (UNLIMITED, UNLIMITED));
        let u: Ulimit = "memlock=64:unlimited".parse().unwrap();
        assert_eq!((u.soft, u.hard), (64, UNLIMITED));
        for bad in [
            "nofile",
            "nofiles=1",
            "NOFILE=1",
            "nofile=x",
            "nofile=2:1",
            "nofile=1:",
        ] {
            assert!(bad.parse::<Ulimit>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ulimits_replace_the_defaults_per_resource() {
        let r = spec_rlimits(&[]).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].typ(), oci::PosixRlimitType::RlimitNofile);
        assert_eq!((r[0].soft(), r[0].hard()), (1024, 524_288));

        let r = spec_rlimits(&[
            "nproc=10".parse().unwrap(),
            "nofile=1024:2048".parse().unwrap(),
            "nofile=64".parse().unwrap(),
        ])
        .unwrap();
        let got: Vec<(String, u64, u64)> = r
            .iter()
            .map(|r| (r.typ().to_string(), r.soft(), r.hard()))
            .collect();
        assert_eq!(
            got,
            [
                ("RLIMIT_NOFILE".to_string(), 64, 64),
                ("RLIMIT_NPROC".to_string(), 10, 10)
            ]
        );
        let bad = Ulimit::new(RlimitResource::Nofile, 2, 1);
        assert!(spec_rlimits(&[bad]).is_err());
    }
}
