//! A container's capabilities, as `docker run` resolves them: Docker's
//! default set, `--cap-add`/`--cap-drop`, and the five sets of the
//! process's `LinuxCapabilities` for root or another user.
//!
//! # `--cap-add` and `--cap-drop`
//!
//! Names are case-insensitive, with or without the `CAP_` prefix, and
//! `ALL` stands for every capability; any other name is an
//! [`Error::UnknownCapability`]. They combine as Docker (moby's
//! `TweakCapabilities`, Docker 20.10 and later) combines them:
//!
//! 1. `ALL` among the additions: every capability except the dropped ones.
//! 2. Otherwise `ALL` among the drops: exactly the added capabilities.
//! 3. Otherwise the base set minus the drops, then plus the additions, so
//!    a capability both added and dropped ends up present.
//!
//! (Podman differs in case 3: there a capability both added and dropped is
//! dropped.)
//!
//! # Root and other users
//!
//! [`process_capabilities`] follows Docker: for uid 0 the set is the
//! bounding, permitted and effective set (inheritable and ambient empty);
//! for any other uid it is only the bounding set, and the process starts
//! with no capabilities, as `execve` of a non-root program would leave it.

use std::fmt;
use std::str::FromStr;

use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A name that is neither a capability nor `ALL`.
    #[error(
        "unknown capability {name:?}: use a name from capabilities(7) \
         (e.g. NET_ADMIN or CAP_NET_ADMIN) or ALL"
    )]
    UnknownCapability {
        /// The name as given.
        name: String,
    },
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Docker's default capabilities.
pub const DOCKER_DEFAULT: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// A set of capabilities, kept as the kernel's 64-bit mask.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CapabilitySet {
    mask: u64,
}

/// The `caps` crate's view of a capability (its number), by name.
fn number(cap: Capability) -> caps::Capability {
    caps::Capability::from_str(&format!("CAP_{cap}"))
        .expect("oci-spec and caps know the same capabilities")
}

/// The OCI view of a capability, by name.
fn oci(cap: caps::Capability) -> Capability {
    serde_json::from_value(serde_json::Value::String(cap.to_string()))
        .expect("oci-spec and caps know the same capabilities")
}

/// Parses a `docker run --cap-add` style name (not `ALL`).
pub fn parse_capability(name: &str) -> Result<Capability> {
    caps::Capability::from_str(&caps::to_canonical(name))
        .map(oci)
        .map_err(|_| Error::UnknownCapability {
            name: name.to_string(),
        })
}

/// A parsed `--cap-add`/`--cap-drop` list.
struct Names {
    all: bool,
    set: CapabilitySet,
}

fn parse_list<S: AsRef<str>>(names: &[S]) -> Result<Names> {
    let mut out = Names {
        all: false,
        set: CapabilitySet::empty(),
    };
    for n in names {
        let n = n.as_ref();
        if n.eq_ignore_ascii_case("ALL") {
            out.all = true;
        } else {
            out.set.insert(parse_capability(n)?);
        }
    }
    Ok(out)
}

impl CapabilitySet {
    /// No capabilities.
    pub const fn empty() -> Self {
        CapabilitySet { mask: 0 }
    }

    /// Docker's default set ([`DOCKER_DEFAULT`], mask `0xa80425fb`).
    pub fn docker_default() -> Self {
        DOCKER_DEFAULT.into_iter().collect()
    }

    /// Every capability (what `ALL` means).
    pub fn all() -> Self {
        caps::all().into_iter().map(oci).collect()
    }

    /// The kernel's mask (bit N is capability N).
    pub fn mask(&self) -> u64 {
        self.mask
    }

    /// Adds one capability.
    pub fn insert(&mut self, cap: Capability) {
        self.mask |= number(cap).bitmask();
    }

    /// Whether `cap` is in the set.
    pub fn contains(&self, cap: Capability) -> bool {
        self.mask & number(cap).bitmask() != 0
    }

    /// The members, in capability number order.
    pub fn iter(&self) -> impl Iterator<Item = Capability> {
        let mut members: Vec<caps::Capability> = caps::all()
            .into_iter()
            .filter(|c| self.mask & c.bitmask() != 0)
            .collect();
        members.sort_by_key(|c| c.index());
        members.into_iter().map(oci)
    }

    /// The set as oci-spec's `Capabilities`.
    pub fn to_capabilities(&self) -> Capabilities {
        self.iter().collect()
    }

    /// This set changed by `docker run --cap-add`/`--cap-drop` (see the
    /// module docs for the order).
    pub fn with_changes<A: AsRef<str>, D: AsRef<str>>(
        &self,
        add: &[A],
        drop: &[D],
    ) -> Result<Self> {
        let add = parse_list(add)?;
        let drop = parse_list(drop)?;
        Ok(if add.all {
            CapabilitySet {
                mask: Self::all().mask & !drop.set.mask,
            }
        } else if drop.all {
            add.set
        } else {
            CapabilitySet {
                mask: (self.mask & !drop.set.mask) | add.set.mask,
            }
        })
    }
}

impl FromIterator<Capability> for CapabilitySet {
    fn from_iter<I: IntoIterator<Item = Capability>>(iter: I) -> Self {
        let mut s = CapabilitySet::empty();
        for c in iter {
            s.insert(c);
        }
        s
    }
}

impl fmt::Debug for CapabilitySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.iter().map(|c| format!("CAP_{c}")))
            .finish()
    }
}

/// The process's capability sets for `set`, as Docker writes them: for
/// root (`root`, uid 0) bounding = permitted = effective = `set`; for
/// another user `set` is only the bounding set. Inheritable and ambient
/// are empty either way.
pub fn process_capabilities(set: &CapabilitySet, root: bool) -> LinuxCapabilities {
    let caps = set.to_capabilities();
    let none = || Some(Capabilities::new());
    let mut out = LinuxCapabilities::default();
    out.set_bounding(Some(caps.clone()));
    out.set_inheritable(none());
    out.set_ambient(none());
    if root {
        out.set_permitted(Some(caps.clone()));
        out.set_effective(Some(caps));
    } else {
        out.set_permitted(none());
        out.set_effective(none());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT_MASK: u64 = 0x0000_0000_a804_25fb;

    fn with(add: &[&str], drop: &[&str]) -> Result<CapabilitySet> {
        CapabilitySet::docker_default().with_changes(add, drop)
    }

    #[test]
    fn dockers_default_set_has_dockers_mask() {
        assert_eq!(CapabilitySet::docker_default().mask(), DEFAULT_MASK);
    }

    #[test]
    fn all_is_every_capability_up_to_checkpoint_restore() {
        assert_eq!(CapabilitySet::all().mask(), (1u64 << 41) - 1);
        assert_eq!(CapabilitySet::all().iter().count(), 41);
    }

    #[test]
    fn names_are_case_insensitive_with_or_without_the_prefix() {
        for n in ["NET_ADMIN", "net_admin", "CAP_NET_ADMIN", "cap_Net_Admin"] {
            assert_eq!(parse_capability(n).unwrap(), Capability::NetAdmin, "{n}");
        }
    }

    #[test]
    fn an_unknown_name_is_a_typed_error() {
        let e = with(&["NET_FROB"], &[]).unwrap_err();
        assert!(matches!(&e, Error::UnknownCapability { name } if name == "NET_FROB"));
        assert!(with(&[], &["CAP_CAP_CHOWN"]).is_err());
    }

    #[test]
    fn add_and_drop_change_the_default() {
        let s = with(&["sys_admin"], &["CAP_NET_RAW", "mknod"]).unwrap();
        assert!(s.contains(Capability::SysAdmin));
        assert!(!s.contains(Capability::NetRaw) && !s.contains(Capability::Mknod));
        assert!(s.contains(Capability::Chown));
    }

    #[test]
    fn a_capability_both_added_and_dropped_is_kept_as_docker_does() {
        let s = with(&["CHOWN", "SYS_ADMIN"], &["CHOWN", "SYS_ADMIN"]).unwrap();
        assert!(s.contains(Capability::Chown) && s.contains(Capability::SysAdmin));
    }

    #[test]
    fn add_all_keeps_everything_but_the_drops() {
        let s = with(&["all"], &["SYS_ADMIN"]).unwrap();
        assert_eq!(
            s.mask(),
            CapabilitySet::all().mask() & !number(Capability::SysAdmin).bitmask()
        );
    }

    #[test]
    fn drop_all_keeps_only_the_additions() {
        let s = with(&["NET_BIND_SERVICE"], &["ALL"]).unwrap();
        assert_eq!(s, [Capability::NetBindService].into_iter().collect());
        assert_eq!(with(&[], &["ALL"]).unwrap(), CapabilitySet::empty());
    }

    #[test]
    fn root_gets_the_set_as_bounding_permitted_and_effective() {
        let set = CapabilitySet::docker_default();
        let c = process_capabilities(&set, true);
        let expect = Some(set.to_capabilities());
        assert_eq!(c.bounding(), &expect);
        assert_eq!(c.permitted(), &expect);
        assert_eq!(c.effective(), &expect);
        assert_eq!(c.inheritable(), &Some(Capabilities::new()));
        assert_eq!(c.ambient(), &Some(Capabilities::new()));
    }

    #[test]
    fn another_user_gets_the_set_only_as_bounding() {
        let set = CapabilitySet::docker_default();
        let c = process_capabilities(&set, false);
        assert_eq!(c.bounding(), &Some(set.to_capabilities()));
        for s in [c.permitted(), c.effective(), c.inheritable(), c.ambient()] {
            assert_eq!(s, &Some(Capabilities::new()));
        }
    }

    #[test]
    fn the_sets_round_trip_through_json() {
        let c = process_capabilities(&CapabilitySet::docker_default(), true);
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains("\"CAP_AUDIT_WRITE\""), "{json}");
        let back: LinuxCapabilities = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
    }
}
