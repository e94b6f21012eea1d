//! Capabilities of a container process, from the spec's
//! `process.capabilities` (bounding, effective, permitted, inheritable,
//! ambient), applied with the `caps` crate.
//!
//! The sets are resolved before `fork` ([`CapSets::from_spec`]); the child
//! then only makes system calls, in this order (as runc does):
//!
//! 1. [`CapSets::drop_bounding`] while still fully privileged: every
//!    capability outside the bounding set leaves it (`PR_CAPBSET_DROP`
//!    needs `CAP_SETPCAP`).
//! 2. [`keep_across_setuid`] (`PR_SET_KEEPCAPS`), so that switching to a
//!    non-root uid keeps the permitted set instead of clearing it.
//! 3. The caller's `setgroups`/`setgid`/`setuid`. Leaving uid 0 clears the
//!    effective set; the permitted set survives thanks to step 2.
//! 4. [`CapSets::apply`]: the inheritable set first (while the old
//!    permitted set still covers it), then the effective and the permitted
//!    sets exactly as configured (the effective set must be a subset of the
//!    permitted set, as the kernel requires), then the ambient set (cleared,
//!    then each configured capability raised; each one must also be
//!    permitted and inheritable), and finally keepcaps off again.
//!
//! Afterwards `/proc/self/status` shows exactly the configured masks in
//! `CapBnd`, `CapEff`, `CapPrm`, `CapInh` and `CapAmb`, for root and for
//! any other uid.
//!
//! A set the spec leaves out (`None`) is empty, as in runc. Capabilities
//! beyond the running kernel's last one (`/proc/sys/kernel/cap_last_cap`)
//! are skipped, as runc does, so a spec written for a newer kernel still
//! starts.
//!
//! Nothing in [`CapSets::drop_bounding`], [`keep_across_setuid`] or
//! [`CapSets::apply`] allocates unless it fails, so they are safe to call
//! between `fork` and `execve`.

use std::str::FromStr;

use caps::{CapSet, Capability, CapsHashSet};
use oci_spec::runtime::{Capabilities, LinuxCapabilities};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec names a capability this agent does not know.
    #[error(
        "unknown capability {name}: remove it from the container's capabilities \
         or update the agent"
    )]
    UnknownCapability {
        /// The name, as `CAP_...`.
        name: String,
    },
    /// The kernel's capability range could not be read.
    #[error("cannot tell which capabilities the kernel supports (is /proc mounted?)")]
    KernelRange {
        /// What failed.
        #[source]
        source: caps::errors::CapsError,
    },
    /// A capability system call failed.
    #[error("{op} failed while setting the container's capabilities")]
    Apply {
        /// The step that failed (`"PR_CAPBSET_DROP CAP_..."`, `"capset effective"`, ...).
        op: String,
        /// What the kernel said.
        #[source]
        source: caps::errors::CapsError,
    },
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// The five capability sets of one process, resolved against the running
/// kernel and ready to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapSets {
    /// Capabilities to drop from the bounding set: every one the kernel
    /// supports that the bounding set does not name.
    drop_from_bounding: Vec<Capability>,
    effective: CapsHashSet,
    permitted: CapsHashSet,
    inheritable: CapsHashSet,
    ambient: Vec<Capability>,
}

/// Maps one spec capability to the `caps` crate's, by its `CAP_` name.
fn resolve(cap: &oci_spec::runtime::Capability) -> Result<Capability> {
    by_name(&format!("CAP_{cap}"))
}

/// Looks a `CAP_...` name up in the `caps` crate.
fn by_name(name: &str) -> Result<Capability> {
    Capability::from_str(name).map_err(|_| Error::UnknownCapability {
        name: name.to_string(),
    })
}

/// The capabilities the running kernel knows (up to `cap_last_cap`).
fn kernel_supported() -> Result<CapsHashSet> {
    caps::runtime::procfs_all_supported(None).map_err(|source| Error::KernelRange { source })
}

impl CapSets {
    /// Resolves the spec's sets against the running kernel.
    pub fn from_spec(spec: &LinuxCapabilities) -> Result<CapSets> {
        Self::with_kernel_caps(spec, &kernel_supported()?)
    }

    /// [`CapSets::from_spec`] for a kernel that supports `supported`.
    fn with_kernel_caps(spec: &LinuxCapabilities, supported: &CapsHashSet) -> Result<CapSets> {
        let set = |s: &Option<Capabilities>| -> Result<Vec<Capability>> {
            let mut out = Vec::new();
            for c in s.iter().flatten() {
                let c = resolve(c)?;
                if supported.contains(&c) {
                    out.push(c);
                }
            }
            out.sort_by_key(|c| c.index());
            Ok(out)
        };
        let bounding = set(spec.bounding())?;
        let mut drop_from_bounding: Vec<Capability> = supported
            .iter()
            .filter(|c| !bounding.contains(c))
            .copied()
            .collect();
        drop_from_bounding.sort_by_key(|c| c.index());
        Ok(CapSets {
            drop_from_bounding,
            effective: set(spec.effective())?.into_iter().collect(),
            permitted: set(spec.permitted())?.into_iter().collect(),
            inheritable: set(spec.inheritable())?.into_iter().collect(),
            ambient: set(spec.ambient())?,
        })
    }

    /// Drops every capability outside the bounding set from it. Call while
    /// still privileged (it needs `CAP_SETPCAP`), before the uid change.
    pub fn drop_bounding(&self) -> Result<()> {
        for &c in &self.drop_from_bounding {
            caps::drop(None, CapSet::Bounding, c).map_err(|source| Error::Apply {
                op: format!("PR_CAPBSET_DROP {c}"),
                source,
            })?;
        }
        Ok(())
    }

    /// Sets the inheritable, effective and permitted sets exactly, then the
    /// ambient set, then turns keepcaps off. Call after
    /// `setgroups`/`setgid`/`setuid` (and after [`keep_across_setuid`]
    /// when the uid is not 0).
    pub fn apply(&self) -> Result<()> {
        let base = [
            (CapSet::Inheritable, &self.inheritable, "capset inheritable"),
            (CapSet::Effective, &self.effective, "capset effective"),
            (CapSet::Permitted, &self.permitted, "capset permitted"),
        ];
        for (set, value, op) in base {
            caps::set(None, set, value).map_err(|source| Error::Apply {
                op: op.to_string(),
                source,
            })?;
        }
        caps::clear(None, CapSet::Ambient).map_err(|source| Error::Apply {
            op: "PR_CAP_AMBIENT_CLEAR_ALL".to_string(),
            source,
        })?;
        for &c in &self.ambient {
            caps::raise(None, CapSet::Ambient, c).map_err(|source| Error::Apply {
                op: format!("PR_CAP_AMBIENT_RAISE {c}"),
                source,
            })?;
        }
        caps::securebits::set_keepcaps(false).map_err(|source| Error::Apply {
            op: "PR_SET_KEEPCAPS 0".to_string(),
            source,
        })
    }
}

/// Sets `PR_SET_KEEPCAPS`, so that a switch from uid 0 to another uid
/// keeps the permitted set ([`CapSets::apply`] turns it off again).
pub fn keep_across_setuid() -> Result<()> {
    caps::securebits::set_keepcaps(true).map_err(|source| Error::Apply {
        op: "PR_SET_KEEPCAPS 1".to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::test_child::{in_child, read_proc_status};
    use oci_spec::runtime::Capability as Oci;

    /// Docker's default set (`CHOWN`, `DAC_OVERRIDE`, ... `AUDIT_WRITE`).
    const DOCKER_DEFAULT: [Oci; 14] = [
        Oci::Chown,
        Oci::DacOverride,
        Oci::Fsetid,
        Oci::Fowner,
        Oci::Mknod,
        Oci::NetRaw,
        Oci::Setgid,
        Oci::Setuid,
        Oci::Setfcap,
        Oci::Setpcap,
        Oci::NetBindService,
        Oci::SysChroot,
        Oci::Kill,
        Oci::AuditWrite,
    ];
    const DOCKER_DEFAULT_MASK: u64 = 0x0000_0000_a804_25fb;

    fn set(caps: &[Oci]) -> Option<Capabilities> {
        Some(caps.iter().copied().collect())
    }

    fn spec(
        bounding: &[Oci],
        effective: &[Oci],
        permitted: &[Oci],
        inheritable: &[Oci],
        ambient: &[Oci],
    ) -> LinuxCapabilities {
        let mut s = LinuxCapabilities::default();
        s.set_bounding(set(bounding));
        s.set_effective(set(effective));
        s.set_permitted(set(permitted));
        s.set_inheritable(set(inheritable));
        s.set_ambient(set(ambient));
        s
    }

    fn mask(caps: &[Oci]) -> u64 {
        caps.iter().map(|c| resolve(c).unwrap().bitmask()).sum()
    }

    /// The masks of `/proc/self/status` in the order Inh, Prm, Eff, Bnd, Amb.
    #[derive(Debug, PartialEq, Eq)]
    struct Masks {
        inh: u64,
        prm: u64,
        eff: u64,
        bnd: u64,
        amb: u64,
    }

    fn masks(status: &str) -> Masks {
        let field = |name: &str| {
            let line = status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or_else(|| panic!("{name} missing from /proc/self/status"));
            u64::from_str_radix(line.trim(), 16).unwrap()
        };
        Masks {
            inh: field("CapInh:"),
            prm: field("CapPrm:"),
            eff: field("CapEff:"),
            bnd: field("CapBnd:"),
            amb: field("CapAmb:"),
        }
    }

    /// In a child: the runc sequence for `sets` and `uid`, then returns
    /// the child's `/proc/self/status` (or panics with the failing step).
    fn confined_status(sets: &CapSets, uid: u32) -> String {
        let out = read_proc_status(|| {
            if sets.drop_bounding().is_err() {
                return 1;
            }
            if keep_across_setuid().is_err() {
                return 2;
            }
            // SAFETY: setgroups with an empty list reads no memory.
            if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
                return 3;
            }
            // SAFETY: setgid has no memory-safety preconditions.
            if unsafe { libc::setgid(uid) } != 0 {
                return 4;
            }
            // SAFETY: setuid has no memory-safety preconditions.
            if unsafe { libc::setuid(uid) } != 0 {
                return 5;
            }
            if sets.apply().is_err() {
                return 6;
            }
            0
        });
        match out {
            Ok(status) => status,
            Err(step) => panic!("the child failed at step {step}"),
        }
    }

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if !root {
            eprintln!("note: not root; capability tests skipped");
        }
        root
    }

    #[test]
    fn dockers_default_mask_matches_its_fourteen_capabilities() {
        assert_eq!(mask(&DOCKER_DEFAULT), DOCKER_DEFAULT_MASK);
    }

    #[test]
    fn every_spec_capability_is_known() {
        for c in caps::all() {
            let name = c.to_string();
            let oci: Oci = serde_json::from_value(serde_json::Value::String(name.clone())).unwrap();
            assert_eq!(resolve(&oci).unwrap(), c, "{name}");
        }
    }

    #[test]
    fn an_unknown_name_is_an_error_naming_it() {
        let err = by_name("CAP_FROBNICATE").unwrap_err();
        assert!(err.to_string().contains("CAP_FROBNICATE"), "{err}");
    }

    #[test]
    fn capabilities_beyond_the_kernels_last_are_skipped() {
        let all: Vec<Oci> = caps::all()
            .into_iter()
            .map(|c| serde_json::from_value(serde_json::Value::String(c.to_string())).unwrap())
            .collect();
        // A kernel whose last capability is CAP_AUDIT_READ (37).
        let old: CapsHashSet = caps::all()
            .into_iter()
            .filter(|c| c.index() <= 37)
            .collect();
        let sets = CapSets::with_kernel_caps(&spec(&all, &all, &all, &[], &[]), &old).unwrap();
        assert!(sets.drop_from_bounding.is_empty());
        assert_eq!(sets.effective, old);
        assert!(!sets.permitted.contains(&Capability::CAP_BPF));
    }

    #[test]
    fn missing_sets_are_empty() {
        let s = LinuxCapabilities::default();
        let mut none = s.clone();
        none.set_bounding(None);
        none.set_effective(None);
        none.set_permitted(None);
        none.set_inheritable(None);
        none.set_ambient(None);
        let sets = CapSets::with_kernel_caps(&none, &caps::all()).unwrap();
        assert_eq!(sets.drop_from_bounding.len(), caps::all().len());
        assert!(sets.effective.is_empty() && sets.ambient.is_empty());
    }

    #[test]
    fn root_gets_exactly_dockers_default_sets() {
        if !is_root() {
            return;
        }
        let d = &DOCKER_DEFAULT;
        let sets = CapSets::from_spec(&spec(d, d, d, &[], &[])).unwrap();
        let got = masks(&confined_status(&sets, 0));
        let m = DOCKER_DEFAULT_MASK;
        assert_eq!(
            got,
            Masks {
                inh: 0,
                prm: m,
                eff: m,
                bnd: m,
                amb: 0
            }
        );
    }

    #[test]
    fn a_non_root_user_gets_dockers_default_only_as_its_bounding_set() {
        if !is_root() {
            return;
        }
        let sets = CapSets::from_spec(&spec(&DOCKER_DEFAULT, &[], &[], &[], &[])).unwrap();
        let got = masks(&confined_status(&sets, 1000));
        assert_eq!(
            got,
            Masks {
                inh: 0,
                prm: 0,
                eff: 0,
                bnd: DOCKER_DEFAULT_MASK,
                amb: 0
            }
        );
    }

    #[test]
    fn a_non_root_user_keeps_configured_caps_through_the_uid_change() {
        if !is_root() {
            return;
        }
        let keep = [Oci::NetBindService, Oci::Kill];
        let sets = CapSets::from_spec(&spec(&DOCKER_DEFAULT, &keep, &keep, &keep, &keep)).unwrap();
        let got = masks(&confined_status(&sets, 1000));
        let m = mask(&keep);
        assert_eq!(
            got,
            Masks {
                inh: m,
                prm: m,
                eff: m,
                bnd: DOCKER_DEFAULT_MASK,
                amb: m
            }
        );
    }

    #[test]
    fn an_effective_cap_outside_the_permitted_set_is_refused() {
        if !is_root() {
            return;
        }
        let sets = CapSets::from_spec(&spec(
            &DOCKER_DEFAULT,
            &[Oci::Chown, Oci::Kill],
            &[Oci::Kill],
            &[],
            &[],
        ))
        .unwrap();
        let code = in_child(|| match sets.apply() {
            Ok(()) => 0,
            Err(_) => 1,
        });
        assert_eq!(code, 1);
    }
}
