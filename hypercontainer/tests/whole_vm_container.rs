//! Whole-VM tests of Docker's container semantics: the real guest kernel,
//! the agent applying the spec the SDK builds for a `docker run`, the
//! busybox test image. Each expectation is what `docker run` (runc) gives
//! for the same image and command.
//!
//! Ignored by default: `cargo xtask whole-vm` (or `cargo xtask test`) runs
//! them where a stock guest kernel boots, inside the emulated KVM host on
//! other machines (see `whole_vm_sandbox.rs` for the environment they
//! need; the default seccomp profile comes from containers-common).

mod sandbox_common;

use std::io::Read;
use std::time::{Duration, Instant};

use hypercontainer::sandbox::{Error, Limits, SandboxBuilder, Seccomp};

use sandbox_common::sandbox;

/// Runs to the end; returns (stdout, stderr, status, oom_killed).
fn run(b: SandboxBuilder) -> (String, String, i32, bool) {
    let r = sandbox_common::run_to_end(b);
    (r.out, r.err, r.status, r.oom_killed)
}

fn sh(b: SandboxBuilder, script: &str) -> (String, String, i32, bool) {
    run(b.cmd(["sh", "-c", script]))
}

/// Docker's default capabilities as a `/proc/PID/status` mask.
const DOCKER_CAPS: &str = "00000000a80425fb";

#[test]
#[ignore = "whole-VM test: run by cargo xtask test"]
fn docker_run_semantics_in_one_sandbox_each() {
    // PID 1 of its own namespace, root's capabilities, a seccomp filter,
    // HOSTNAME, masked paths, no mount for root.
    let t0 = Instant::now();
    let (out, err, status, _) = sh(
        sandbox().user("root").hostname("box1"),
        "echo pid=$$; kill -9 $$; echo alive; echo HOSTNAME=$HOSTNAME; \
         grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|Seccomp):' /proc/self/status; \
         for f in /proc/kcore /proc/keys /proc/timer_list; do [ -e $f ] && echo \"$f $(wc -c < $f)\"; done; \
         echo firmware=$(ls /sys/firmware | wc -l); \
         mount -t tmpfs none /mnt 2>/dev/null; echo mount=$?; \
         echo 1 > /proc/sys/kernel/domainname 2>/dev/null; echo procsys=$?; \
         ls /dev | tr '\\n' ' '",
    );
    eprintln!("confined sandbox: {:?}", t0.elapsed());
    assert_eq!(status, 0, "{err}");
    let want = format!(
        "pid=1\nalive\nHOSTNAME=box1\nCapInh:\t0000000000000000\nCapPrm:\t{DOCKER_CAPS}\n\
         CapEff:\t{DOCKER_CAPS}\nCapBnd:\t{DOCKER_CAPS}\nCapAmb:\t0000000000000000\nSeccomp:\t2\n"
    );
    assert!(out.starts_with(&want), "{out}");
    for line in out.lines().filter(|l| l.starts_with("/proc/")) {
        assert!(line.ends_with(" 0"), "masked paths read empty: {line}");
    }
    assert!(
        out.contains("firmware=0\nmount=255\nprocsys=1\n")
            || out.contains("firmware=0\nmount=1\nprocsys=1\n"),
        "{out}"
    );
    assert!(
        out.ends_with(
            "fd full mqueue null ptmx pts random shm stderr stdin stdout tty urandom zero "
        ),
        "{out}"
    );

    // A non-root user holds Docker's set only as its bounding set.
    let (out, _, _, _) = sh(
        sandbox(),
        "id -u; grep -E '^Cap(Prm|Eff|Bnd):' /proc/self/status",
    );
    assert_eq!(
        out,
        format!(
            "1000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nCapBnd:\t{DOCKER_CAPS}\n"
        )
    );

    // The default profile denies swapoff(2) even with CAP_SYS_ADMIN, which
    // the kernel alone would let through to a different error.
    let script = "swapoff /dev/null 2>&1; true";
    let (denied, _, _, _) = sh(sandbox().user("root").cap_add("SYS_ADMIN"), script);
    assert!(denied.contains("Operation not permitted"), "{denied}");
    let (allowed, _, _, _) = sh(
        sandbox()
            .user("root")
            .cap_add("SYS_ADMIN")
            .seccomp(Seccomp::Unconfined),
        script,
    );
    assert!(!allowed.contains("Operation not permitted"), "{allowed}");

    // Read-only root with a tmpfs, as `--read-only --tmpfs /scratch`.
    let (out, _, status, _) = sh(
        sandbox()
            .user("root")
            .read_only(true)
            .tmpfs(hypercontainer::sandbox::Tmpfs::new("/scratch").size(1 << 20)),
        "touch /data/x 2>/dev/null; echo root=$?; touch /scratch/x && echo scratch=ok",
    );
    assert_eq!((out.as_str(), status), ("root=1\nscratch=ok\n", 0));
}

#[test]
#[ignore = "whole-VM test: run by cargo xtask test"]
fn confinement_options_and_environment_as_docker_sets_them() {
    // `docker run --security-opt no-new-privileges --cap-drop CHOWN
    // --shm-size 1m --sysctl kernel.shmmax=65536 --cpus 0.5 -u root`.
    let (out, err, status, _) = sh(
        sandbox()
            .user("root")
            .no_new_privileges(true)
            .cap_drop("CHOWN")
            .shm_size(1 << 20)
            .sysctl("kernel.shmmax", "65536")
            .limits(Limits {
                cpus: Some(0.5),
                ..Limits::default()
            }),
        "grep -E '^(NoNewPrivs|CapEff):' /proc/self/status; \
         df -k /dev/shm | tail -n 1 | awk '{print \"shm=\" $2}'; \
         echo shmmax=$(cat /proc/sys/kernel/shmmax); \
         echo cpu.max=$(cat /sys/fs/cgroup/cpu.max); \
         echo \"HOME=$HOME PATH=$PATH TERM=${TERM-unset}\"; \
         chown 1:1 /etc/passwd 2>/dev/null; echo chown=$?; \
         for p in /proc/kcore /proc/keys /proc/timer_list /proc/sched_debug /sys/firmware; do \
           [ -e $p ] || continue; \
           if grep -q \" $p \" /proc/self/mountinfo; then echo \"masked $p\"; else echo \"visible $p\"; fi; \
         done",
    );
    assert_eq!(status, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    // CHOWN is bit 0 of Docker's set.
    assert_eq!(
        &lines[..7],
        [
            "CapEff:\t00000000a80425fa",
            "NoNewPrivs:\t1",
            "shm=1024",
            "shmmax=65536",
            "cpu.max=50000 100000",
            "HOME=/root PATH=/bin TERM=unset",
            "chown=1",
        ],
        "{out}"
    );
    // /sys/firmware always exists; every masked path that exists is
    // covered by a mount, as runc does it.
    assert!(lines.contains(&"masked /sys/firmware"), "{out}");
    assert!(!out.contains("visible "), "{out}");

    // Without the options: Docker's defaults.
    let (out, _, _, _) = sh(
        sandbox(),
        "grep NoNewPrivs /proc/self/status; df -k /dev/shm | tail -n 1 | awk '{print $2}'; \
         echo \"HOME=$HOME\"",
    );
    assert_eq!(out, "NoNewPrivs:\t0\n65536\nHOME=/home/app\n");

    // On a terminal, and only there, TERM is xterm.
    let (out, _, status, _) = sh(
        sandbox().tty(24, 80),
        "[ -t 1 ] && echo \"TERM=$TERM on a tty\"",
    );
    assert_eq!(status, 0, "{out}");
    assert!(out.contains("TERM=xterm on a tty"), "{out:?}");
}

#[test]
#[ignore = "whole-VM test: run by cargo xtask test"]
fn sigterm_without_a_handler_is_ignored_and_stop_kills() {
    let s = sandbox()
        .cmd(["sh", "-c", "echo ready; while :; do sleep 1; done"])
        .start()
        .unwrap_or_else(|e| panic!("start: {e:?}"));
    let mut out = s.stdout().unwrap();
    let mut buf = [0u8; 6];
    out.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ready\n");
    s.kill(libc::SIGTERM).unwrap();
    assert_eq!(
        s.wait_timeout(Duration::from_secs(2)).unwrap(),
        None,
        "PID 1 ignores SIGTERM"
    );
    // The image's StopSignal (SIGUSR1) is ignored too; the grace ends in SIGKILL.
    let t = Instant::now();
    assert_eq!(s.stop(Duration::from_secs(1)).unwrap(), 137);
    assert!(t.elapsed() >= Duration::from_secs(1));
}

#[test]
#[ignore = "whole-VM test: run by cargo xtask test"]
fn start_errors_are_127_and_126() {
    for (cmd, want, words) in [
        ("no-such-program", 127, "executable file not found"),
        ("/etc", 126, "is a directory"),
    ] {
        match sandbox().cmd([cmd]).start() {
            Err(e @ Error::ProcessStart { .. }) => {
                let Error::ProcessStart {
                    status, message, ..
                } = &e
                else {
                    unreachable!()
                };
                assert_eq!(*status, want, "{message}");
                assert_eq!(e.exit_status(), want, "{message}");
                assert!(message.contains(words), "{message}");
            }
            other => panic!("{cmd}: {other:?}"),
        }
    }
}

#[test]
#[ignore = "whole-VM test: run by cargo xtask test"]
fn cgroup_limits_oom_and_pids() {
    // Exceeding the memory limit is an OOM kill: 137, flagged.
    let (_, err, status, oom) = sh(
        sandbox().user("root").memory_mib(256).limits(Limits {
            memory: Some(32 << 20),
            ..Limits::default()
        }),
        "cat /sys/fs/cgroup/memory.max; head -c 100000000 /dev/zero | tail > /dev/null; echo survived",
    );
    assert_eq!((status, oom), (137, true), "{err}");

    // The pids limit holds: forks beyond it fail (the forking subshell
    // gives up, as busybox sh does on a failed fork), the container goes
    // on (only shell builtins after the forks).
    let (out, err, status, oom) = sh(
        sandbox().user("root").limits(Limits {
            pids: Some(8),
            ..Limits::default()
        }),
        "(for i in 1 2 3 4 5 6 7 8 9 10; do sleep 5 & done) 2>/dev/null; \
         read m < /sys/fs/cgroup/pids.max; read n < /sys/fs/cgroup/pids.current; \
         echo max=$m current=$n",
    );
    assert_eq!((status, oom), (0, false), "{err}");
    let current: usize = out
        .trim()
        .strip_prefix("max=8 current=")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(current <= 8, "{out}");
}
