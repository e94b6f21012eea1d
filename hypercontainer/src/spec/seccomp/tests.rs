use super::*;
use oci_spec::runtime::Capability;

const GUEST: KernelVersion = KernelVersion::new(6, 1);

/// The installed default profile, or `None` (with a note) when absent.
fn installed() -> Option<Profile> {
    match find_default() {
        Ok(path) => Some(Profile::load(&path).expect("the installed profile loads")),
        Err(e) => {
            eprintln!("note: {e}; skipping");
            None
        }
    }
}

/// The actions the evaluated spec gives `name`, entry by entry, with
/// whether the entry has argument conditions.
fn actions_for(spec: &LinuxSeccomp, name: &str) -> Vec<(LinuxSeccompAction, Option<u32>, bool)> {
    spec.syscalls()
        .iter()
        .flatten()
        .filter(|s| s.names().iter().any(|n| n == name))
        .map(|s| (s.action(), s.errno_ret(), s.args().is_some()))
        .collect()
}

fn unconditionally_allowed(spec: &LinuxSeccomp, name: &str) -> bool {
    actions_for(spec, name)
        .first()
        .is_some_and(|(a, _, cond)| *a == LinuxSeccompAction::ScmpActAllow && !cond)
}

fn with_sys_admin() -> CapabilitySet {
    CapabilitySet::docker_default()
        .with_changes(&["SYS_ADMIN"], &[] as &[&str])
        .unwrap()
}

#[test]
fn the_default_profile_is_found_where_podman_looks() {
    match find_default() {
        Ok(p) => assert!(DEFAULT_PROFILE_PATHS.contains(&p.to_str().unwrap())),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("golang-github-containers-common"), "{msg}");
            assert!(msg.contains("unconfined"), "{msg}");
        }
    }
}

#[test]
fn the_default_action_and_arches_are_taken_from_the_profile() {
    let Some(p) = installed() else { return };
    let spec = p.evaluate(&CapabilitySet::docker_default(), GUEST);
    assert_eq!(spec.default_action(), LinuxSeccompAction::ScmpActErrno);
    assert_eq!(spec.default_errno_ret(), Some(libc::ENOSYS as u32));
    assert_eq!(
        spec.architectures().as_deref(),
        Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32][..])
    );
}

#[test]
fn open_by_handle_at_needs_cap_dac_read_search() {
    let Some(p) = installed() else { return };
    let plain = p.evaluate(&CapabilitySet::docker_default(), GUEST);
    assert_eq!(
        actions_for(&plain, "open_by_handle_at"),
        vec![(LinuxSeccompAction::ScmpActErrno, Some(1), false)]
    );
    let caps = CapabilitySet::docker_default()
        .with_changes(&["DAC_READ_SEARCH"], &[] as &[&str])
        .unwrap();
    let with = p.evaluate(&caps, GUEST);
    assert!(unconditionally_allowed(&with, "open_by_handle_at"));
}

#[test]
fn sys_admin_calls_are_gated_on_cap_sys_admin() {
    let Some(p) = installed() else { return };
    let plain = p.evaluate(&CapabilitySet::docker_default(), GUEST);
    let admin = p.evaluate(&with_sys_admin(), GUEST);
    // `bpf` and `perf_event_open` are gated in every containers-common and
    // moby profile; `mount` and `unshare` are gated in moby's and in newer
    // containers-common ones, but allowed outright in older ones (0.50).
    for name in ["bpf", "perf_event_open", "mount", "unshare"] {
        assert!(
            unconditionally_allowed(&admin, name),
            "{name} with CAP_SYS_ADMIN"
        );
        let gated = actions_for(&plain, name).iter().all(|(a, e, _)| {
            *a == LinuxSeccompAction::ScmpActErrno && *e == Some(libc::EPERM as u32)
        });
        let listed_for_all = unconditionally_allowed(&plain, name);
        assert!(
            gated ^ listed_for_all,
            "{name}: {:?}",
            actions_for(&plain, name)
        );
        if ["bpf", "perf_event_open"].contains(&name) {
            assert!(gated, "{name} is denied without CAP_SYS_ADMIN");
        }
    }
}

#[test]
fn arch_specific_entries_follow_amd64() {
    let Some(p) = installed() else { return };
    let spec = p.evaluate(&CapabilitySet::docker_default(), GUEST);
    // x86 entries are kept, arm and s390 ones dropped.
    assert!(unconditionally_allowed(&spec, "arch_prctl"));
    assert!(unconditionally_allowed(&spec, "modify_ldt"));
    assert!(actions_for(&spec, "arm_fadvise64_64").is_empty());
    assert!(actions_for(&spec, "s390_runtime_instr").is_empty());
    // Names of other architectures inside shared lists are left for the
    // agent to skip.
    assert!(unconditionally_allowed(&spec, "_llseek"));
}

#[test]
fn netlink_audit_sockets_follow_cap_audit_write() {
    let Some(p) = installed() else { return };
    let with = p.evaluate(&CapabilitySet::docker_default(), GUEST);
    assert!(unconditionally_allowed(&with, "socket"));
    let caps = CapabilitySet::docker_default()
        .with_changes(&[] as &[&str], &["AUDIT_WRITE"])
        .unwrap();
    let without = p.evaluate(&caps, GUEST);
    let socket = actions_for(&without, "socket");
    assert!(socket.iter().all(|(_, _, cond)| *cond), "{socket:?}");
    assert!(socket.contains(&(LinuxSeccompAction::ScmpActErrno, Some(22), true)));
}

#[test]
fn the_result_round_trips_through_json() {
    let Some(p) = installed() else { return };
    for caps in [CapabilitySet::docker_default(), with_sys_admin()] {
        let spec = p.evaluate(&caps, GUEST);
        let json = serde_json::to_vec(&spec).unwrap();
        let back: LinuxSeccomp = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, spec);
    }
}

const SMALL: &str = r#"{
  "defaultAction": "SCMP_ACT_ERRNO",
  "architectures": ["SCMP_ARCH_X86_64"],
  "syscalls": [
    {"names": ["getpid"], "action": "SCMP_ACT_ALLOW"},
    {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
    {"names": ["old"], "action": "SCMP_ACT_ALLOW", "excludes": {"minKernel": "5.0"}},
    {"names": ["both"], "action": "SCMP_ACT_ALLOW",
     "includes": {"caps": ["CAP_SYS_ADMIN", "CAP_NET_ADMIN"]}},
    {"names": ["either"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
     "excludes": {"caps": ["CAP_SYS_ADMIN", "CAP_NET_ADMIN"]}},
    {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
     "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]}
  ]
}"#;

fn names(spec: &LinuxSeccomp) -> Vec<String> {
    spec.syscalls()
        .iter()
        .flatten()
        .flat_map(|s| s.names().clone())
        .collect()
}

#[test]
fn min_kernel_is_compared_with_the_guest_kernel() {
    let p = Profile::from_json(SMALL.as_bytes()).unwrap();
    let caps = CapabilitySet::docker_default();
    let new = names(&p.evaluate(&caps, GUEST));
    assert!(new.contains(&"ptrace".into()) && !new.contains(&"old".into()));
    let old = names(&p.evaluate(&caps, KernelVersion::new(4, 4)));
    assert!(!old.contains(&"ptrace".into()) && old.contains(&"old".into()));
}

#[test]
fn includes_need_every_cap_and_excludes_any() {
    let p = Profile::from_json(SMALL.as_bytes()).unwrap();
    let one: CapabilitySet = [Capability::SysAdmin].into_iter().collect();
    let two: CapabilitySet = [Capability::SysAdmin, Capability::NetAdmin]
        .into_iter()
        .collect();
    let none = names(&p.evaluate(&CapabilitySet::empty(), GUEST));
    assert!(!none.contains(&"both".into()) && none.contains(&"either".into()));
    let one = names(&p.evaluate(&one, GUEST));
    assert!(!one.contains(&"both".into()) && !one.contains(&"either".into()));
    let two = names(&p.evaluate(&two, GUEST));
    assert!(two.contains(&"both".into()) && !two.contains(&"either".into()));
}

#[test]
fn arguments_are_carried_over() {
    let p = Profile::from_json(SMALL.as_bytes()).unwrap();
    let spec = p.evaluate(&CapabilitySet::empty(), GUEST);
    let clone = spec
        .syscalls()
        .iter()
        .flatten()
        .find(|s| s.names() == &["clone".to_string()])
        .unwrap();
    let arg = clone.args().as_ref().unwrap()[0];
    assert_eq!(arg.op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
    assert_eq!(
        (arg.index(), arg.value(), arg.value_two()),
        (0, 2114060288, Some(0))
    );
}

#[test]
fn an_unknown_action_is_a_typed_error() {
    let json = SMALL.replace("\"SCMP_ACT_ALLOW\"}", "\"SCMP_ACT_FROB\"}");
    let e = Profile::from_json(json.as_bytes()).unwrap_err();
    assert!(
        matches!(&e, Error::UnknownAction { action, what } if action == "SCMP_ACT_FROB" && what == "getpid"),
        "{e:?}"
    );
}

#[test]
fn an_unknown_operator_is_a_typed_error() {
    let json = SMALL.replace("SCMP_CMP_MASKED_EQ", "SCMP_CMP_ALMOST");
    let e = Profile::from_json(json.as_bytes()).unwrap_err();
    assert!(matches!(e, Error::UnknownOperator { .. }), "{e:?}");
}

#[test]
fn malformed_json_reports_its_position() {
    let json = SMALL.replace("\"names\": [\"ptrace\"],", "\"names\": [\"ptrace\"]");
    let e = Profile::from_json(json.as_bytes()).unwrap_err();
    match e {
        Error::Malformed { line, column, .. } => assert_eq!((line, column), (6, 26), "{e:?}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_missing_file_is_unreadable_naming_it() {
    let e = Profile::load(Path::new("/nonexistent/seccomp.json")).unwrap_err();
    assert!(matches!(&e, Error::Unreadable { path, .. } if path.ends_with("seccomp.json")));
    assert!(e.to_string().contains("/nonexistent/seccomp.json"));
}

#[test]
fn kernel_versions_parse_releases() {
    let v: KernelVersion = "6.1.0-13-amd64".parse().unwrap();
    assert_eq!(
        v,
        KernelVersion {
            major: 6,
            minor: 1,
            patch: 0
        }
    );
    assert!("4.8".parse::<KernelVersion>().unwrap() < GUEST);
    assert!("six".parse::<KernelVersion>().is_err());
}
