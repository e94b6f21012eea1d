use super::*;
use crate::container::test_child::{run_in_child, Outcome};
use hypercontainer::spec::caps::CapabilitySet;
use hypercontainer::spec::seccomp::{load_default, KernelVersion};

/// Exit code of a child whose filter did not install.
const NOT_INSTALLED: i32 = 200;

/// A raw system call: 0 on success, else its errno.
fn errno_of(nr: libc::c_long, args: [u64; 6]) -> i32 {
    // SAFETY: the calls the tests make take no pointers, or NULL/-1 ones
    // the kernel checks.
    let r = unsafe { libc::syscall(nr, args[0], args[1], args[2], args[3], args[4], args[5]) };
    if r < 0 {
        io::Error::last_os_error().raw_os_error().unwrap_or(255)
    } else {
        0
    }
}

/// In a child: installs `filters`, then makes the call.
fn call(filters: &Filters, nr: libc::c_long, args: [u64; 6]) -> Outcome {
    run_in_child(|| {
        if filters.install().is_err() {
            return NOT_INSTALLED;
        }
        errno_of(nr, args)
    })
}

fn a0(v: u64) -> [u64; 6] {
    [v, 0, 0, 0, 0, 0]
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("note: not root; seccomp installation tests skipped");
    }
    root
}

/// The installed default profile evaluated for `caps` on the guest kernel,
/// or `None` (with a note) when it is not installed.
fn profile_spec(caps: &CapabilitySet) -> Option<LinuxSeccomp> {
    match load_default() {
        Ok(p) => Some(p.evaluate(caps, KernelVersion::new(6, 1))),
        Err(e) => {
            eprintln!("note: {e}; skipping");
            None
        }
    }
}

fn docker_caps(add: &[&str], drop: &[&str]) -> CapabilitySet {
    CapabilitySet::docker_default()
        .with_changes(add, drop)
        .unwrap()
}

fn mentions(spec: &LinuxSeccomp, name: &str) -> bool {
    spec.syscalls()
        .iter()
        .flatten()
        .any(|s| s.names().iter().any(|n| n == name))
}

fn spec(json: &str) -> LinuxSeccomp {
    decode(json.as_bytes()).unwrap()
}

const E: Outcome = Outcome::Exited(0);

#[test]
fn the_podman_profile_fits_the_kernels_limits() {
    let Some(s) = profile_spec(&docker_caps(&[], &[])) else {
        return;
    };
    let names: usize = s.syscalls().iter().flatten().map(|e| e.names().len()).sum();
    assert!(names > 350, "{names} names");
    let f = compile(&s).unwrap();
    let counts = f.instruction_counts();
    eprintln!("{names} names -> filters of {counts:?} instructions");
    assert!(counts.iter().all(|&n| n < MAX_FILTER_INSNS), "{counts:?}");
    // EPERM and the base filter (the EINVAL rule for audit sockets is
    // only there without CAP_AUDIT_WRITE).
    assert_eq!(f.filter_count(), 2);
    // The base filter holds every x86_64 call the profile names.
    assert!(*counts.last().unwrap() > 1500, "{counts:?}");
    let Some(s) = profile_spec(&docker_caps(&[], &["AUDIT_WRITE"])) else {
        return;
    };
    assert_eq!(compile(&s).unwrap().filter_count(), 3);
}

#[test]
fn the_podman_profile_allows_getpid_and_denies_unlisted_calls_with_enosys() {
    if !is_root() {
        return;
    }
    let Some(s) = profile_spec(&docker_caps(&[], &[])) else {
        return;
    };
    let f = compile(&s).unwrap();
    assert_eq!(call(&f, libc::SYS_getpid, [0; 6]), E);
    assert!(!mentions(&s, "add_key"), "the test needs an unlisted call");
    let add_key = call(&f, libc::SYS_add_key, [0; 6]);
    assert_eq!(add_key, Outcome::Exited(libc::ENOSYS));
}

#[test]
fn sys_admin_calls_need_cap_sys_admin_in_the_podman_profile() {
    if !is_root() {
        return;
    }
    let (Some(plain), Some(admin)) = (
        profile_spec(&docker_caps(&[], &[])),
        profile_spec(&docker_caps(&["SYS_ADMIN"], &[])),
    ) else {
        return;
    };
    let (plain, admin) = (compile(&plain).unwrap(), compile(&admin).unwrap());
    // bpf(-1, NULL, 0): the kernel itself says EINVAL once it is let through.
    let bpf = [u64::MAX, 0, 0, 0, 0, 0];
    assert_eq!(
        call(&plain, libc::SYS_bpf, bpf),
        Outcome::Exited(libc::EPERM)
    );
    assert_eq!(
        call(&admin, libc::SYS_bpf, bpf),
        Outcome::Exited(libc::EINVAL)
    );
    // open_by_handle_at needs CAP_DAC_READ_SEARCH.
    let obha = [u64::MAX, 0, 0, 0, 0, 0];
    assert_eq!(
        call(&plain, libc::SYS_open_by_handle_at, obha),
        Outcome::Exited(libc::EPERM)
    );
}

#[test]
fn unshare_of_a_user_namespace_follows_the_profile() {
    if !is_root() {
        return;
    }
    let Some(s) = profile_spec(&docker_caps(&[], &[])) else {
        return;
    };
    // Moby's profile (and newer containers-common ones) allow unshare only
    // with CAP_SYS_ADMIN; containers-common 0.50 allows it to everyone.
    let gated = !s.syscalls().iter().flatten().any(|e| {
        e.action() == LinuxSeccompAction::ScmpActAllow
            && e.args().is_none()
            && e.names().iter().any(|n| n == "unshare")
    });
    let f = compile(&s).unwrap();
    let got = call(&f, libc::SYS_unshare, a0(libc::CLONE_NEWUSER as u64));
    let want = if gated { libc::EPERM } else { 0 };
    assert_eq!(got, Outcome::Exited(want), "gated: {gated}");
}

#[test]
fn personality_is_allowed_only_for_the_listed_values() {
    if !is_root() {
        return;
    }
    let Some(s) = profile_spec(&docker_caps(&[], &[])) else {
        return;
    };
    let f = compile(&s).unwrap();
    // 0xffffffff only queries the persona; 0 sets the default one.
    assert_eq!(call(&f, libc::SYS_personality, a0(0xffff_ffff)), E);
    assert_eq!(call(&f, libc::SYS_personality, a0(0)), E);
    // ADDR_NO_RANDOMIZE is not listed: the default errno.
    let other = call(&f, libc::SYS_personality, a0(0x0040000));
    assert_eq!(other, Outcome::Exited(libc::ENOSYS));
    // The comparison is on all 64 bits.
    let high = call(&f, libc::SYS_personality, a0(0x1_0000_0000));
    assert_eq!(high, Outcome::Exited(libc::ENOSYS));
}

#[test]
fn netlink_audit_sockets_need_cap_audit_write() {
    if !is_root() {
        return;
    }
    let (Some(with), Some(without)) = (
        profile_spec(&docker_caps(&[], &[])),
        profile_spec(&docker_caps(&[], &["AUDIT_WRITE"])),
    ) else {
        return;
    };
    let (with, without) = (compile(&with).unwrap(), compile(&without).unwrap());
    let audit = [
        libc::AF_NETLINK as u64,
        libc::SOCK_RAW as u64,
        libc::NETLINK_AUDIT as u64,
        0,
        0,
        0,
    ];
    let route = [libc::AF_NETLINK as u64, libc::SOCK_RAW as u64, 0, 0, 0, 0];
    let got = call(&with, libc::SYS_socket, audit);
    // Let through: a socket, or the kernel's own answer without audit.
    assert!(
        got == E || got == Outcome::Exited(libc::EPROTONOSUPPORT),
        "{got:?}"
    );
    assert_eq!(
        call(&without, libc::SYS_socket, audit),
        Outcome::Exited(libc::EINVAL)
    );
    assert_eq!(call(&without, libc::SYS_socket, route), E);
}

#[test]
fn the_first_unconditional_entry_wins_as_in_libseccomp() {
    if !is_root() {
        return;
    }
    let Some(s) = profile_spec(&docker_caps(&[], &[])) else {
        return;
    };
    // containers-common 0.50 allows setns in its big list and later denies
    // it without CAP_SYS_ADMIN; runc lets the first entry win.
    let both = s
        .syscalls()
        .iter()
        .flatten()
        .filter(|e| e.names().iter().any(|n| n == "setns"))
        .count();
    let f = compile(&s).unwrap();
    let got = call(&f, libc::SYS_setns, [u64::MAX, 0, 0, 0, 0, 0]);
    if both == 2 {
        assert_eq!(got, Outcome::Exited(libc::EBADF));
    }
    let synthetic = spec(
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5},
            {"names": ["getppid"], "action": "SCMP_ACT_KILL_PROCESS"}]}"#,
    );
    let f = compile(&synthetic).unwrap();
    assert_eq!(call(&f, libc::SYS_getppid, [0; 6]), Outcome::Exited(5));
}

#[test]
fn an_unconditional_entry_replaces_earlier_conditional_ones() {
    if !is_root() {
        return;
    }
    let s = spec(
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5,
             "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]},
            {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 7},
            {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 9,
             "args": [{"index": 0, "value": 2, "op": "SCMP_CMP_EQ"}]}]}"#,
    );
    let f = compile(&s).unwrap();
    for v in [1, 2, 3] {
        assert_eq!(
            call(&f, libc::SYS_getppid, a0(v)),
            Outcome::Exited(7),
            "{v}"
        );
    }
}

#[test]
fn overlapping_rules_give_the_strictest_action_then_the_earliest() {
    if !is_root() {
        return;
    }
    let s = spec(
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 11,
             "args": [{"index": 0, "value": 10, "op": "SCMP_CMP_GE"}]},
            {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 22,
             "args": [{"index": 0, "value": 20, "op": "SCMP_CMP_GE"}]},
            {"names": ["getppid"], "action": "SCMP_ACT_TRAP",
             "args": [{"index": 0, "value": 30, "op": "SCMP_CMP_GE"}]}]}"#,
    );
    let f = compile(&s).unwrap();
    assert_eq!(call(&f, libc::SYS_getppid, a0(5)), E);
    assert_eq!(call(&f, libc::SYS_getppid, a0(15)), Outcome::Exited(11));
    assert_eq!(call(&f, libc::SYS_getppid, a0(25)), Outcome::Exited(11));
    assert_eq!(
        call(&f, libc::SYS_getppid, a0(35)),
        Outcome::Signaled(libc::SIGSYS)
    );
}

#[test]
fn each_operator_compares_unsigned_64_bit_values() {
    if !is_root() {
        return;
    }
    type Holds = fn(u64) -> bool;
    let ops: [(&str, Holds); 6] = [
        ("EQ", |a| a == 10),
        ("NE", |a| a != 10),
        ("LT", |a| a < 10),
        ("LE", |a| a <= 10),
        ("GT", |a| a > 10),
        ("GE", |a| a >= 10),
    ];
    for (op, holds) in ops {
        let s = spec(&format!(
            r#"{{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {{"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 33,
                 "args": [{{"index": 1, "value": 10, "op": "SCMP_CMP_{op}"}}]}}]}}"#
        ));
        let f = compile(&s).unwrap();
        for v in [9, 10, 11, 10 | 1 << 32, u64::MAX] {
            let want = if holds(v) { 33 } else { 0 };
            let got = call(&f, libc::SYS_getppid, [0, v, 0, 0, 0, 0]);
            assert_eq!(got, Outcome::Exited(want), "{op} {v:#x}");
        }
    }
}

#[test]
fn masked_eq_masks_with_value_and_compares_with_value_two() {
    if !is_root() {
        return;
    }
    let s = spec(
        r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38, "syscalls": [
            {"names": ["exit_group", "exit"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["getppid"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 240, "valueTwo": 16, "op": "SCMP_CMP_MASKED_EQ"}]}]}"#,
    );
    let f = compile(&s).unwrap();
    assert_eq!(call(&f, libc::SYS_getppid, a0(0x13)), E);
    assert_eq!(call(&f, libc::SYS_getppid, a0(0x23)), Outcome::Exited(38));
}

#[test]
fn unset_errnos_are_eperm_and_kill_is_kill_thread() {
    let s = spec(
        r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["getppid"], "action": "SCMP_ACT_KILL"},
            {"names": ["getpid"], "action": "SCMP_ACT_TRACE"}]}"#,
    );
    let f = compile(&s).unwrap();
    let actions: Vec<Action> = f.programs.iter().map(|p| p.action).collect();
    // Reverse order of first appearance, then the base filter.
    assert_eq!(
        actions,
        [
            Action::Trace(libc::EPERM as u32),
            Action::KillThread,
            Action::Allow
        ]
    );
    let base = &f.programs[2].bpf;
    let ret_eperm = 0x0005_0000 | libc::EPERM as u32;
    assert!(base.iter().any(|i| i.code == 0x06 && i.k == ret_eperm));
}

#[test]
fn x32_calls_get_the_default_action_and_i386_calls_kill() {
    if !is_root() {
        return;
    }
    let s = spec(
        r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 77, "syscalls": [
            {"names": ["exit_group", "exit", "getpid", "seccomp"], "action": "SCMP_ACT_ALLOW"}]}"#,
    );
    let f = compile(&s).unwrap();
    let x32_getpid = 0x4000_0000 | 39;
    assert_eq!(call(&f, x32_getpid, [0; 6]), Outcome::Exited(77));
    let i386 = run_in_child(|| {
        if f.install().is_err() {
            return NOT_INSTALLED;
        }
        let mut eax: u32 = 20; // getpid in the i386 table
                               // SAFETY: `int 0x80` enters the kernel's 32-bit entry point; getpid
                               // takes no arguments and only eax is written back.
        unsafe { std::arch::asm!("int 0x80", inout("eax") eax) };
        i32::from(eax == 0)
    });
    assert_eq!(i386, Outcome::Signaled(libc::SIGSYS));
}

#[test]
fn install_leaves_no_new_privs_alone_and_honours_flags() {
    if !is_root() {
        return;
    }
    let s = spec(
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
                      "SECCOMP_FILTER_FLAG_TSYNC"],
            "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 3}]}"#,
    );
    let f = compile(&s).unwrap();
    assert!(f.unsupported_flags().is_empty(), "this kernel has both");
    assert_eq!(
        f.flags,
        SECCOMP_FILTER_FLAG_LOG | SECCOMP_FILTER_FLAG_SPEC_ALLOW
    );
    let got = run_in_child(|| {
        if f.install().is_err() {
            return NOT_INSTALLED;
        }
        // SAFETY: PR_GET_NO_NEW_PRIVS reads no memory.
        let nnp = unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) };
        // SAFETY: PR_GET_SECCOMP reads no memory.
        let mode = unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) };
        if nnp != 0 {
            return 1;
        }
        // SECCOMP_MODE_FILTER.
        if mode != 2 {
            return 2;
        }
        errno_of(libc::SYS_getppid, [0; 6])
    });
    assert_eq!(got, Outcome::Exited(3));
}

#[test]
fn an_unknown_action_is_a_decode_error_with_its_position() {
    let e = decode(br#"{"defaultAction": "SCMP_ACT_FROB"}"#).unwrap_err();
    match &e {
        Error::Decode { line, column, .. } => assert_eq!((*line, *column), (1, 33)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn notify_and_listeners_are_refused() {
    let e = compile(&spec(r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#)).unwrap_err();
    assert!(
        matches!(&e, Error::Notify { what } if what == "defaultAction"),
        "{e:?}"
    );
    let e = compile(&spec(
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["openat", "open"], "action": "SCMP_ACT_NOTIFY"}]}"#,
    ))
    .unwrap_err();
    assert!(
        matches!(&e, Error::Notify { what } if what == "openat,open"),
        "{e:?}"
    );
    let e = compile(&spec(
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/agent.sock"}"#,
    ))
    .unwrap_err();
    assert!(e.to_string().contains("/run/agent.sock"), "{e}");
}

#[test]
fn an_argument_index_past_five_is_refused() {
    let e = compile(&spec(
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["getppid"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 6, "value": 0, "op": "SCMP_CMP_EQ"}]}]}"#,
    ))
    .unwrap_err();
    assert!(
        matches!(&e, Error::ArgIndex { index: 6, syscall } if syscall == "getppid"),
        "{e:?}"
    );
}

#[test]
fn an_errno_past_16_bits_is_refused() {
    let e = compile(&spec(
        r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 70000}"#,
    ))
    .unwrap_err();
    assert!(
        matches!(e, Error::ReturnValue { value: 70000, .. }),
        "{e:?}"
    );
}

#[test]
fn names_unknown_on_x86_64_are_skipped() {
    let s = spec(
        r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["_llseek", "arm_fadvise64_64", "getpid"], "action": "SCMP_ACT_ALLOW"}]}"#,
    );
    let f = compile(&s).unwrap();
    assert_eq!(f.filter_count(), 1);
    // One syscall: arch check (3), load (1), 5 for getpid, final return.
    assert_eq!(f.instruction_counts(), [3 + 1 + 5 + 1]);
}

#[test]
fn rules_denying_seccomp_itself_before_the_last_filter_are_refused() {
    let e = compile(&spec(
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 2},
            {"names": ["seccomp"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}"#,
    ))
    .unwrap_err();
    assert!(matches!(e, Error::DeniesSeccomp), "{e:?}");
    // Denied by the filter installed last, it is fine.
    compile(&spec(
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["seccomp"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
            {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 2}]}"#,
    ))
    .unwrap();
}
