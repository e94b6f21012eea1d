//! A container's seccomp filter: an OCI `linux.seccomp` compiled to BPF
//! with `seccompiler` and installed on the calling thread before `execve`.
//!
//! # Semantics
//!
//! The filter gives each system call the action runc (through libseccomp)
//! would give it:
//!
//! - A call no rule matches gets `defaultAction` (`SCMP_ACT_ERRNO` returns
//!   `defaultErrnoRet`, `EPERM` when unset; `SCMP_ACT_TRACE` likewise).
//! - An entry names system calls, an action (`errnoRet` for `ERRNO` and
//!   `TRACE`, `EPERM` when unset) and optional argument conditions
//!   (`index` 0..=5, `op` `EQ`/`NE`/`LT`/`LE`/`GT`/`GE` on the full 64-bit
//!   value, unsigned, or `MASKED_EQ`: `(arg & value) == valueTwo`). The
//!   conditions of one entry are ANDed; several entries for one call are
//!   alternatives.
//! - An entry whose action equals the default action is skipped (runc does
//!   the same; it changes nothing but the merge below).
//! - Entries for the same call merge as libseccomp merges rules: the first
//!   unconditional entry wins over every later entry for that call; an
//!   unconditional entry replaces the conditional ones before it; later
//!   conditional entries of a call that already has an unconditional one
//!   are dropped. (Docker's and podman's profiles rely on this: podman's
//!   allows `setns` unconditionally and later denies it without
//!   `CAP_SYS_ADMIN`; the first entry wins, so `setns` is allowed, as with
//!   runc.)
//! - Conditional entries of one call with different actions that match
//!   the same arguments (no shipped profile has them; libseccomp's answer
//!   there depends on how it orders its decision tree) get the strictest of
//!   their actions in the kernel's order (`KILL_PROCESS`, `KILL_THREAD`,
//!   `TRAP`, `ERRNO`, `TRACE`, `LOG`, `ALLOW`); between two `ERRNO`s (or
//!   `TRACE`s) with different values, the action that appears first in the
//!   spec wins. Deterministic, and documented here.
//! - Names unknown on x86_64 (`_llseek`, `arm_fadvise64_64`, ...) are
//!   skipped, as runc skips names libseccomp cannot resolve. The names are
//!   resolved with the `syscalls` crate's x86_64 table.
//!
//! Two differences from runc, neither of which the shipped profiles touch:
//! runc splits an entry with two conditions on the same argument into
//! separate (ORed) rules, an old libseccomp workaround, where here they are
//! ANDed as the runtime spec reads; and runc patches its filter so that
//! system calls newer than its libseccomp's table get `ENOSYS` whatever the
//! default action, where here they get the default action.
//!
//! # Filters: one per action, stacked
//!
//! A `seccompiler` filter has one match action and one mismatch action,
//! so the spec becomes a stack of filters. The kernel runs every filter
//! of the thread and keeps the strictest result; among results of equal
//! strictness (two `ERRNO`s), the most recently installed filter's wins.
//!
//! - For each action `A` other than `ALLOW` used by a rule, a filter that
//!   returns `A` where one of `A`'s rules matches and `ALLOW` (the weakest
//!   result, which never overrides another filter) everywhere else.
//! - A base filter holding every rule, whatever its action, that returns
//!   `ALLOW` where any rule matches and the default action everywhere else
//!   (none when the default is `ALLOW`).
//!
//! Where no rule matches, only the base filter says something other than
//! `ALLOW`: the default. Where rules match, the base filter says `ALLOW`
//! and each matching action's filter says that action: the strictest wins,
//! which for one matching rule is its own action and for several is the
//! rule above. The action filters are installed in reverse order of their
//! action's first appearance, so the earliest one is the most recent among
//! them and wins ties. The base filter never ties with them (it returns
//! the default only where no rule matches) and goes last: until it is in
//! place nothing is denied that the spec does not name, so the later
//! `seccomp(2)` calls of the installation itself go through. A spec whose
//! rules deny `seccomp` itself is refused ([`Error::DeniesSeccomp`]) when
//! that would stop the stack from being installed.
//!
//! Each filter fits the kernel's limit of 4096 instructions (podman's
//! profile, about 350 x86_64 calls of its 434 names, makes a base filter
//! of about 1800), and
//! the stack the kernel's 32768-instruction total; [`compile`] checks
//! both. Filters that only look at the syscall number are folded into the
//! kernel's per-syscall cache (Linux 5.11+), so always-allowed calls cost
//! nothing per call.
//!
//! # Architectures
//!
//! The filter is built for x86_64 only; the spec's `architectures` list is
//! not used. `seccompiler` starts every filter with an architecture check
//! that returns `KILL_PROCESS` for any `seccomp_data.arch` other than
//! `AUDIT_ARCH_X86_64`, so 32-bit x86 system calls (`int 0x80`, i386
//! binaries) kill the process where runc would filter them by the x86
//! numbers; the guest kernel has no IA32 emulation, so they do not exist
//! there. x32 calls carry `AUDIT_ARCH_X86_64` with bit 30 set in the
//! number; they match no rule and get the default action.
//!
//! # Flags and installation
//!
//! `SECCOMP_FILTER_FLAG_LOG` and `SECCOMP_FILTER_FLAG_SPEC_ALLOW` are
//! passed to the kernel where it supports them (probed by [`compile`];
//! [`Filters::unsupported_flags`] lists the ones it does not).
//! `SECCOMP_FILTER_FLAG_TSYNC` is ignored: the filter goes on the calling
//! thread only, which in the forked child is the only thread.
//! `SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV` only concerns notifications;
//! `SCMP_ACT_NOTIFY` and `listenerPath` are refused (no seccomp agent).
//!
//! [`Filters::install`] does not set `no_new_privs` (the spec's
//! `process.noNewPrivileges` decides that): without it, installing needs
//! `CAP_SYS_ADMIN`, so runc's order applies: without `noNewPrivileges`
//! install before dropping capabilities, with it as late as possible.

use std::collections::BTreeMap;
use std::io;
use std::str::FromStr;

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};
use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};
use syscalls::x86_64::Sysno;

/// The kernel's limit on one filter (`BPF_MAXINSNS`).
pub const MAX_FILTER_INSNS: usize = 4096;
/// The kernel's limit on a thread's whole stack of filters, counting 4
/// instructions of overhead per filter (`MAX_INSNS_PER_PATH`).
pub const MAX_STACK_INSNS: usize = 32768;

const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;
const SECCOMP_FILTER_FLAG_LOG: libc::c_uint = 1 << 1;
const SECCOMP_FILTER_FLAG_SPEC_ALLOW: libc::c_uint = 1 << 2;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec's JSON could not be decoded.
    #[cfg_attr(not(test), allow(dead_code))]
    #[error(
        "the seccomp spec is not valid (line {line}, column {column}): \
         fix the profile on the host"
    )]
    Decode {
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What was wrong.
        #[source]
        source: serde_json::Error,
    },
    /// `SCMP_ACT_NOTIFY` needs a seccomp agent.
    #[error(
        "SCMP_ACT_NOTIFY ({what}) needs a seccomp agent, which this runtime does not \
         support: use another action"
    )]
    Notify {
        /// Where: `defaultAction` or the system call names.
        what: String,
    },
    /// `listenerPath` names a seccomp agent.
    #[error("listenerPath {path} asks for a seccomp agent, which this runtime does not support: remove it")]
    Listener {
        /// The path.
        path: String,
    },
    /// An argument condition names an argument past the sixth.
    #[error("seccomp rule for {syscall}: argument index {index} is out of range (0 to 5)")]
    ArgIndex {
        /// The system call(s) of the entry.
        syscall: String,
        /// The index given.
        index: usize,
    },
    /// An errno or trace value does not fit the 16 bits seccomp returns.
    #[error("seccomp return value {value} for {what} does not fit in 16 bits")]
    ReturnValue {
        /// Where.
        what: String,
        /// The value given.
        value: u32,
    },
    /// The rules deny `seccomp(2)`, which installing the stack needs.
    #[error(
        "the seccomp rules deny seccomp(2) itself, which installing the filter stack \
         needs: allow seccomp, or leave it to the default action"
    )]
    DeniesSeccomp,
    /// `seccompiler` could not build a filter (e.g. too large).
    #[error("building the seccomp filter for {action} failed: the profile has too many rules")]
    Build {
        /// The filter's action.
        action: String,
        /// What seccompiler said.
        #[source]
        source: seccompiler::BackendError,
    },
    /// The filters together pass the kernel's limit.
    #[error(
        "the seccomp filters need {insns} instructions, over the kernel's {MAX_STACK_INSNS}: \
         the profile has too many rules"
    )]
    TooLarge {
        /// Instructions with the kernel's per-filter overhead.
        insns: usize,
    },
    /// The kernel refused a filter.
    #[error("installing seccomp filter {index} of {count} failed")]
    Install {
        /// 1-based number of the filter.
        index: usize,
        /// Filters in the stack.
        count: usize,
        /// What the kernel said (`EACCES`: neither no_new_privs nor `CAP_SYS_ADMIN`).
        #[source]
        source: io::Error,
    },
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// A return action, with its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    KillProcess,
    KillThread,
    Trap,
    Errno(u32),
    Trace(u32),
    Log,
    Allow,
}

impl Action {
    fn from_spec(action: LinuxSeccompAction, ret: Option<u32>, what: &str) -> Result<Action> {
        let value = || {
            let v = ret.unwrap_or(libc::EPERM as u32);
            if v > u32::from(u16::MAX) {
                return Err(Error::ReturnValue {
                    what: what.to_string(),
                    value: v,
                });
            }
            Ok(v)
        };
        Ok(match action {
            LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
                Action::KillThread
            }
            LinuxSeccompAction::ScmpActKillProcess => Action::KillProcess,
            LinuxSeccompAction::ScmpActTrap => Action::Trap,
            LinuxSeccompAction::ScmpActErrno => Action::Errno(value()?),
            LinuxSeccompAction::ScmpActTrace => Action::Trace(value()?),
            LinuxSeccompAction::ScmpActLog => Action::Log,
            LinuxSeccompAction::ScmpActAllow => Action::Allow,
            LinuxSeccompAction::ScmpActNotify => {
                return Err(Error::Notify {
                    what: what.to_string(),
                })
            }
        })
    }

    fn to_seccompiler(self) -> SeccompAction {
        match self {
            Action::KillProcess => SeccompAction::KillProcess,
            Action::KillThread => SeccompAction::KillThread,
            Action::Trap => SeccompAction::Trap,
            Action::Errno(e) => SeccompAction::Errno(e),
            Action::Trace(v) => SeccompAction::Trace(v),
            Action::Log => SeccompAction::Log,
            Action::Allow => SeccompAction::Allow,
        }
    }
}

/// What the rules say about one system call, after libseccomp's merge.
#[derive(Debug, Clone)]
enum CallRules {
    /// An unconditional entry.
    Always(Action),
    /// Conditional entries, in spec order.
    When(Vec<(Action, Vec<SeccompCondition>)>),
}

/// One compiled filter.
#[derive(Debug, Clone)]
struct Program {
    /// What it returns on a match (`Allow` for the base filter).
    action: Action,
    bpf: BpfProgram,
}

/// A compiled seccomp spec: a stack of BPF filters ready to install.
#[derive(Debug, Clone)]
pub struct Filters {
    /// In installation order.
    programs: Vec<Program>,
    /// `SECCOMP_FILTER_FLAG_*` passed to every installation.
    flags: libc::c_uint,
    /// Flags the spec asks for that the kernel lacks.
    unsupported: Vec<LinuxSeccompFilterFlag>,
}

/// Decodes a `linux.seccomp` object from JSON (the agent gets the spec
/// decoded by the protocol; tests feed profiles directly).
#[cfg(test)]
pub fn decode(json: &[u8]) -> Result<LinuxSeccomp> {
    serde_json::from_slice(json).map_err(|source| Error::Decode {
        line: source.line(),
        column: source.column(),
        source,
    })
}

fn condition(arg: &LinuxSeccompArg, names: &[String]) -> Result<SeccompCondition> {
    let index = arg.index();
    let bad_index = || Error::ArgIndex {
        syscall: names.join(","),
        index,
    };
    let idx = u8::try_from(index)
        .ok()
        .filter(|i| *i <= 5)
        .ok_or_else(bad_index)?;
    let (op, value) = match arg.op() {
        LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, arg.value()),
        LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, arg.value()),
        LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, arg.value()),
        LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, arg.value()),
        LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, arg.value()),
        LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, arg.value()),
        LinuxSeccompOperator::ScmpCmpMaskedEq => (
            SeccompCmpOp::MaskedEq(arg.value()),
            arg.value_two().unwrap_or(0),
        ),
    };
    SeccompCondition::new(idx, SeccompCmpArgLen::Qword, op, value).map_err(|_| bad_index())
}

/// Adds one entry's rule for one call, as libseccomp merges rules.
fn merge(
    calls: &mut BTreeMap<i64, CallRules>,
    nr: i64,
    action: Action,
    conds: &[SeccompCondition],
) {
    let rules = calls
        .entry(nr)
        .or_insert_with(|| CallRules::When(Vec::new()));
    match rules {
        // The first unconditional entry wins.
        CallRules::Always(_) => {}
        // An unconditional entry replaces the conditional ones before it.
        CallRules::When(_) if conds.is_empty() => *rules = CallRules::Always(action),
        CallRules::When(list) => list.push((action, conds.to_vec())),
    }
}

/// The kernel supports a `SECCOMP_FILTER_FLAG_*` value: with a NULL
/// program it then fails with `EFAULT`, not `EINVAL`.
fn flag_supported(flag: libc::c_uint) -> bool {
    matches!(
        set_mode_filter(std::ptr::null(), flag),
        Err(e) if e.raw_os_error() == Some(libc::EFAULT)
    )
}

/// The kernel's `struct sock_fprog`.
#[repr(C)]
struct SockFprog {
    len: libc::c_ushort,
    filter: *const sock_filter,
}

/// `seccomp(SECCOMP_SET_MODE_FILTER, flags, prog)`.
fn set_mode_filter(prog: *const SockFprog, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: the kernel only reads `prog` (copy_from_user), which is NULL
    // (a probe, answered with EFAULT) or points to a live SockFprog whose
    // `filter` covers `len` instructions.
    let r = unsafe { libc::syscall(libc::SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, prog) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Compiles a spec into a stack of filters (see the module docs).
pub fn compile(spec: &LinuxSeccomp) -> Result<Filters> {
    if let Some(path) = spec.listener_path() {
        return Err(Error::Listener {
            path: path.display().to_string(),
        });
    }
    let default = Action::from_spec(
        spec.default_action(),
        spec.default_errno_ret(),
        "defaultAction",
    )?;
    let mut calls = BTreeMap::new();
    // Actions other than ALLOW, in order of first appearance.
    let mut actions: Vec<Action> = Vec::new();
    for entry in spec.syscalls().iter().flatten() {
        let names = entry.names();
        let action = Action::from_spec(entry.action(), entry.errno_ret(), &names.join(","))?;
        let conds = entry
            .args()
            .iter()
            .flatten()
            .map(|a| condition(a, names))
            .collect::<Result<Vec<_>>>()?;
        if action == default {
            continue;
        }
        for name in names {
            let Ok(sysno) = Sysno::from_str(name) else {
                continue;
            };
            merge(&mut calls, i64::from(sysno.id()), action, &conds);
        }
        if action != Action::Allow && !actions.contains(&action) {
            actions.push(action);
        }
    }
    let mut programs = Vec::new();
    for &action in actions.iter().rev() {
        if let Some(bpf) = build(&calls, Some(action), action, Action::Allow)? {
            programs.push(Program { action, bpf });
        }
    }
    if default != Action::Allow {
        let bpf = build(&calls, None, Action::Allow, default)?.expect("the base filter");
        programs.push(Program {
            action: Action::Allow,
            bpf,
        });
    }
    if programs.is_empty() {
        // Allow everything, still killing foreign architectures.
        let bpf = build(&BTreeMap::new(), None, Action::KillProcess, Action::Allow)?
            .expect("the base filter");
        programs.push(Program {
            action: Action::Allow,
            bpf,
        });
    }
    check_seccomp_stays_allowed(&calls, &programs)?;
    let insns: usize = programs.iter().map(|p| p.bpf.len() + 4).sum();
    if insns > MAX_STACK_INSNS {
        return Err(Error::TooLarge { insns });
    }
    let mut flags = 0;
    let mut unsupported = Vec::new();
    for flag in spec.flags().iter().flatten() {
        let bit = match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => SECCOMP_FILTER_FLAG_SPEC_ALLOW,
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync
            | LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => continue,
        };
        if flag_supported(bit) {
            flags |= bit;
        } else {
            unsupported.push(*flag);
        }
    }
    Ok(Filters {
        programs,
        flags,
        unsupported,
    })
}

/// Builds one filter: `only` picks the rules of one action (all rules for
/// the base filter). `None` when no rule is left.
fn build(
    calls: &BTreeMap<i64, CallRules>,
    only: Option<Action>,
    on_match: Action,
    on_mismatch: Action,
) -> Result<Option<BpfProgram>> {
    let wanted = |a: Action| only.is_none_or(|o| o == a);
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (&nr, call) in calls {
        match call {
            CallRules::Always(a) if wanted(*a) => {
                rules.insert(nr, Vec::new());
            }
            CallRules::Always(_) => {}
            CallRules::When(list) => {
                let chain: Vec<SeccompRule> = list
                    .iter()
                    .filter(|(a, _)| wanted(*a))
                    .map(|(_, c)| SeccompRule::new(c.clone()).expect("conditions are non-empty"))
                    .collect();
                if !chain.is_empty() {
                    rules.insert(nr, chain);
                }
            }
        }
    }
    if rules.is_empty() && only.is_some() {
        return Ok(None);
    }
    let err = |source| Error::Build {
        action: format!("{on_match:?}"),
        source,
    };
    let filter = SeccompFilter::new(
        rules,
        on_mismatch.to_seccompiler(),
        on_match.to_seccompiler(),
        TargetArch::x86_64,
    )
    .map_err(err)?;
    let bpf = BpfProgram::try_from(filter).map_err(err)?;
    debug_assert!(bpf.len() < MAX_FILTER_INSNS);
    Ok(Some(bpf))
}

/// Every filter but the last must let `seccomp(2)` through, or the stack
/// cannot be installed.
fn check_seccomp_stays_allowed(
    calls: &BTreeMap<i64, CallRules>,
    programs: &[Program],
) -> Result<()> {
    let Some(rules) = calls.get(&i64::from(Sysno::seccomp.id())) else {
        return Ok(());
    };
    let early: Vec<Action> = programs[..programs.len() - 1]
        .iter()
        .map(|p| p.action)
        .collect();
    let denied = match rules {
        CallRules::Always(a) => early.contains(a),
        CallRules::When(list) => list.iter().any(|(a, _)| early.contains(a)),
    };
    if denied {
        Err(Error::DeniesSeccomp)
    } else {
        Ok(())
    }
}

impl Filters {
    /// Installs the stack on the calling thread (no TSYNC), in order.
    /// Does not set no_new_privs: without it the caller needs
    /// `CAP_SYS_ADMIN`. Allocates nothing: safe between `fork` and `execve`.
    pub fn install(&self) -> Result<()> {
        let count = self.programs.len();
        for (i, p) in self.programs.iter().enumerate() {
            let prog = SockFprog {
                // compile checked every program is under 4096 instructions.
                len: p.bpf.len() as libc::c_ushort,
                filter: p.bpf.as_ptr(),
            };
            set_mode_filter(&prog, self.flags).map_err(|source| Error::Install {
                index: i + 1,
                count,
                source,
            })?;
        }
        Ok(())
    }

    /// How many filters the stack has.
    #[cfg(test)]
    pub fn filter_count(&self) -> usize {
        self.programs.len()
    }

    /// Instructions of each filter, in installation order.
    #[cfg(test)]
    pub fn instruction_counts(&self) -> Vec<usize> {
        self.programs.iter().map(|p| p.bpf.len()).collect()
    }

    /// Flags the spec asks for that the running kernel does not support
    /// (left out of the installation).
    pub fn unsupported_flags(&self) -> &[LinuxSeccompFilterFlag] {
        &self.unsupported
    }
}

#[cfg(test)]
mod tests;
