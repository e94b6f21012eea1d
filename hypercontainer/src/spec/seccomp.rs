//! Seccomp profiles in Docker's / containers-common's JSON format, and
//! their evaluation for one container into the OCI `linux.seccomp` the
//! agent compiles.
//!
//! # The profile
//!
//! The profile is data read at run time, never built in. [`find_default`]
//! looks where podman does: `/etc/containers/seccomp.json`, then
//! `/usr/share/containers/seccomp.json` (Debian's
//! `golang-github-containers-common` package installs the latter).
//! [`Profile::load`] reads any file of that format: `defaultAction`,
//! `defaultErrnoRet`, `archMap` (or `architectures`), `flags`, and
//! `syscalls[]` entries with `names` (or `name`), `action`, `errnoRet`,
//! `args`, `includes` and `excludes`. Actions and operators are checked
//! when the profile loads.
//!
//! # Evaluation for one container ([`Profile::evaluate`])
//!
//! As Docker and podman do, for an x86_64 guest (Go's `amd64`):
//!
//! - Architectures: the `archMap` entry for `SCMP_ARCH_X86_64` gives it
//!   and its sub-architectures (`SCMP_ARCH_X86`, `SCMP_ARCH_X32`); a
//!   profile with `architectures` instead passes them through.
//! - An entry is kept only if its `includes` all hold and none of its
//!   `excludes` does:
//!   - `includes.caps`: **every** listed capability is in the container's
//!     capability set; `excludes.caps`: **any** listed one is. The set is
//!     the process's bounding set (Docker and podman look at
//!     `process.capabilities.bounding`), which for a root process is also
//!     its effective set.
//!   - `includes.arches`: the list names `amd64`; `excludes.arches`: it
//!     names `amd64`.
//!   - `includes.minKernel`: the guest kernel is at least that version;
//!     `excludes.minKernel`: it is at least that version (moby's rule).
//! - Kept entries keep their order, names, action, `errnoRet` and `args`.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompFilterFlag,
    LinuxSeccompOperator, LinuxSyscall,
};
use serde::Deserialize;

use super::caps::{parse_capability, CapabilitySet};

/// Where podman looks for the default profile, in order.
pub const DEFAULT_PROFILE_PATHS: [&str; 2] = [
    "/etc/containers/seccomp.json",
    "/usr/share/containers/seccomp.json",
];

/// Go's name of the guest architecture, as profiles' `arches` spell it.
const NATIVE_ARCH: &str = "amd64";
/// The `archMap` entry for the guest architecture.
const NATIVE_SECCOMP_ARCH: &str = "SCMP_ARCH_X86_64";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No default profile is installed.
    #[error(
        "no seccomp profile found (looked for {tried}): install the \
         golang-github-containers-common package (it ships \
         /usr/share/containers/seccomp.json), give a profile file, or run the \
         container unconfined (without seccomp)"
    )]
    ProfileMissing {
        /// The paths tried.
        tried: String,
    },
    /// The profile file could not be read.
    #[error("cannot read the seccomp profile {path}: check the path and its permissions")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The profile is not valid JSON of the expected shape.
    #[error("the seccomp profile {path} is malformed at line {line}, column {column}: fix or replace it")]
    Malformed {
        /// The file (empty for in-memory JSON).
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
    /// An action name seccomp does not know.
    #[error(
        "the seccomp profile uses unknown action {action:?} (for {what}): use an SCMP_ACT_* action"
    )]
    UnknownAction {
        /// The action as written.
        action: String,
        /// Where: `defaultAction` or the entry's names.
        what: String,
    },
    /// An argument operator seccomp does not know.
    #[error(
        "the seccomp profile uses unknown operator {op:?} (for {what}): use an SCMP_CMP_* operator"
    )]
    UnknownOperator {
        /// The operator as written.
        op: String,
        /// The entry's names.
        what: String,
    },
    /// An architecture name seccomp does not know.
    #[error("the seccomp profile uses unknown architecture {arch:?}: use an SCMP_ARCH_* name")]
    UnknownArch {
        /// The architecture as written.
        arch: String,
    },
    /// A flag name seccomp does not know.
    #[error("the seccomp profile uses unknown flag {flag:?}: use a SECCOMP_FILTER_FLAG_* name")]
    UnknownFlag {
        /// The flag as written.
        flag: String,
    },
    /// A `minKernel` that is not a version.
    #[error("the seccomp profile's minKernel {version:?} is not a kernel version like 4.8")]
    BadKernelVersion {
        /// The value as written.
        version: String,
    },
    /// Both `architectures` and `archMap`, or an entry with both `name` and `names`.
    #[error("the seccomp profile is ambiguous: {what}")]
    Ambiguous {
        /// What clashes.
        what: String,
    },
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// A kernel version, compared as `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion {
    /// The first number (6 in 6.1).
    pub major: u32,
    /// The second number (1 in 6.1).
    pub minor: u32,
    /// The third number, 0 when absent.
    pub patch: u32,
}

impl KernelVersion {
    /// `major.minor.0`.
    pub const fn new(major: u32, minor: u32) -> Self {
        KernelVersion {
            major,
            minor,
            patch: 0,
        }
    }
}

impl std::str::FromStr for KernelVersion {
    type Err = Error;

    /// Parses `4.8`, `6.1.55` or a release like `6.1.0-13-amd64`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::BadKernelVersion {
            version: s.to_string(),
        };
        let numeric = s.split(['-', '+', ' ']).next().unwrap_or("");
        let mut parts = numeric.split('.').map(|p| p.parse::<u32>());
        let major = parts.next().and_then(|p| p.ok()).ok_or_else(bad)?;
        let minor = parts.next().and_then(|p| p.ok()).ok_or_else(bad)?;
        let patch = match parts.next() {
            None => 0,
            Some(p) => p.map_err(|_| bad())?,
        };
        Ok(KernelVersion {
            major,
            minor,
            patch,
        })
    }
}

/// The JSON shape of a profile (only what evaluation reads).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawProfile {
    default_action: String,
    default_errno_ret: Option<u32>,
    architectures: Option<Vec<String>>,
    arch_map: Option<Vec<RawArchMap>>,
    flags: Option<Vec<String>>,
    syscalls: Option<Vec<RawSyscall>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawArchMap {
    architecture: String,
    sub_architectures: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSyscall {
    name: Option<String>,
    names: Option<Vec<String>>,
    action: String,
    errno_ret: Option<u32>,
    args: Option<Vec<RawArg>>,
    includes: Option<RawFilter>,
    excludes: Option<RawFilter>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawArg {
    index: usize,
    value: u64,
    value_two: Option<u64>,
    op: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawFilter {
    caps: Option<Vec<String>>,
    arches: Option<Vec<String>>,
    min_kernel: Option<String>,
}

/// The conditions of `includes` or `excludes`.
#[derive(Debug, Clone, Default)]
struct Filter {
    /// Capability names as written (matched like Docker matches strings:
    /// a name no capability has never matches).
    caps: Vec<String>,
    arches: Vec<String>,
    min_kernel: Option<KernelVersion>,
}

#[derive(Debug, Clone)]
struct Entry {
    syscall: LinuxSyscall,
    includes: Filter,
    excludes: Filter,
}

/// A loaded, checked seccomp profile.
#[derive(Debug, Clone)]
pub struct Profile {
    default_action: LinuxSeccompAction,
    default_errno_ret: Option<u32>,
    architectures: Vec<Arch>,
    flags: Vec<LinuxSeccompFilterFlag>,
    entries: Vec<Entry>,
}

/// Parses an enum of oci-spec from its JSON string form.
fn from_name<T: serde::de::DeserializeOwned>(name: &str) -> Option<T> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
}

fn action(name: &str, what: impl Fn() -> String) -> Result<LinuxSeccompAction> {
    from_name(name).ok_or_else(|| Error::UnknownAction {
        action: name.to_string(),
        what: what(),
    })
}

fn arch(name: &str) -> Result<Arch> {
    from_name(name).ok_or_else(|| Error::UnknownArch {
        arch: name.to_string(),
    })
}

fn filter(raw: Option<RawFilter>) -> Result<Filter> {
    let raw = raw.unwrap_or_default();
    Ok(Filter {
        caps: raw.caps.unwrap_or_default(),
        arches: raw.arches.unwrap_or_default(),
        min_kernel: raw.min_kernel.map(|v| v.parse()).transpose()?,
    })
}

fn entry(raw: RawSyscall) -> Result<Entry> {
    let names = match (raw.name, raw.names) {
        (Some(_), Some(names)) if !names.is_empty() => {
            return Err(Error::Ambiguous {
                what: format!("an entry has both name and names ({})", names.join(",")),
            })
        }
        (Some(name), _) => vec![name],
        (None, names) => names.unwrap_or_default(),
    };
    let what = || names.join(",");
    let mut syscall = LinuxSyscall::default();
    syscall.set_action(action(&raw.action, what)?);
    syscall.set_errno_ret(raw.errno_ret);
    if let Some(args) = raw.args.filter(|a| !a.is_empty()) {
        let mut out = Vec::with_capacity(args.len());
        for a in args {
            let op: LinuxSeccompOperator =
                from_name(&a.op).ok_or_else(|| Error::UnknownOperator {
                    op: a.op.clone(),
                    what: what(),
                })?;
            let mut arg = LinuxSeccompArgBuilder::default()
                .index(a.index)
                .value(a.value)
                .op(op);
            if let Some(two) = a.value_two {
                arg = arg.value_two(two);
            }
            out.push(arg.build().expect("every field is set"));
        }
        syscall.set_args(Some(out));
    }
    syscall.set_names(names);
    Ok(Entry {
        syscall,
        includes: filter(raw.includes)?,
        excludes: filter(raw.excludes)?,
    })
}

/// The profile podman would use: the first of [`DEFAULT_PROFILE_PATHS`]
/// that exists.
pub fn find_default() -> Result<PathBuf> {
    DEFAULT_PROFILE_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| Error::ProfileMissing {
            tried: DEFAULT_PROFILE_PATHS.join(", "),
        })
}

/// Loads the default profile ([`find_default`]).
pub fn load_default() -> Result<Profile> {
    Profile::load(&find_default()?)
}

/// Whether the set holds the capability a profile names; names are
/// compared exactly (`CAP_SYS_ADMIN`), as Docker compares them.
fn has_cap(set: &CapabilitySet, name: &str) -> bool {
    name.starts_with("CAP_")
        && name.bytes().all(|b| !b.is_ascii_lowercase())
        && parse_capability(name).is_ok_and(|c| set.contains(c))
}

impl Profile {
    /// Reads and checks a profile file.
    pub fn load(path: &Path) -> Result<Profile> {
        let bytes = std::fs::read(path).map_err(|source| Error::Unreadable {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&bytes, path)
    }

    /// Checks a profile given as JSON.
    pub fn from_json(json: &[u8]) -> Result<Profile> {
        Self::parse(json, Path::new(""))
    }

    fn parse(json: &[u8], path: &Path) -> Result<Profile> {
        let raw: RawProfile = serde_json::from_slice(json).map_err(|source| Error::Malformed {
            path: path.to_path_buf(),
            line: source.line(),
            column: source.column(),
            source,
        })?;
        let architectures = match (raw.architectures, raw.arch_map) {
            (Some(a), Some(m)) if !a.is_empty() && !m.is_empty() => {
                return Err(Error::Ambiguous {
                    what: "it has both architectures and archMap".to_string(),
                })
            }
            (_, Some(map)) if !map.is_empty() => match map
                .into_iter()
                .find(|m| m.architecture == NATIVE_SECCOMP_ARCH)
            {
                Some(m) => std::iter::once(m.architecture)
                    .chain(m.sub_architectures.unwrap_or_default())
                    .map(|a| arch(&a))
                    .collect::<Result<_>>()?,
                None => Vec::new(),
            },
            (arches, _) => arches
                .unwrap_or_default()
                .iter()
                .map(|a| arch(a))
                .collect::<Result<_>>()?,
        };
        let flags = raw
            .flags
            .unwrap_or_default()
            .iter()
            .map(|f| from_name(f).ok_or_else(|| Error::UnknownFlag { flag: f.clone() }))
            .collect::<Result<_>>()?;
        Ok(Profile {
            default_action: action(&raw.default_action, || "defaultAction".to_string())?,
            default_errno_ret: raw.default_errno_ret,
            architectures,
            flags,
            entries: raw
                .syscalls
                .unwrap_or_default()
                .into_iter()
                .map(entry)
                .collect::<Result<_>>()?,
        })
    }

    /// The `linux.seccomp` for a container whose capability (bounding)
    /// set is `caps`, on a guest running `kernel` (see the module docs).
    pub fn evaluate(&self, caps: &CapabilitySet, kernel: KernelVersion) -> LinuxSeccomp {
        let kept = |e: &&Entry| {
            let inc = &e.includes;
            let exc = &e.excludes;
            let native = |arches: &[String]| arches.iter().any(|a| a == NATIVE_ARCH);
            (exc.arches.is_empty() || !native(&exc.arches))
                && !exc.caps.iter().any(|c| has_cap(caps, c))
                && exc.min_kernel.is_none_or(|v| kernel < v)
                && (inc.arches.is_empty() || native(&inc.arches))
                && inc.caps.iter().all(|c| has_cap(caps, c))
                && inc.min_kernel.is_none_or(|v| kernel >= v)
        };
        let syscalls: Vec<LinuxSyscall> = self
            .entries
            .iter()
            .filter(kept)
            .map(|e| e.syscall.clone())
            .collect();
        let mut out = LinuxSeccomp::default();
        out.set_default_action(self.default_action);
        out.set_default_errno_ret(self.default_errno_ret);
        out.set_architectures((!self.architectures.is_empty()).then(|| self.architectures.clone()));
        out.set_flags((!self.flags.is_empty()).then(|| self.flags.clone()));
        out.set_syscalls(Some(syscalls));
        out
    }
}

#[cfg(test)]
mod tests;
