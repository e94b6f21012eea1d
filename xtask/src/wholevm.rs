//! Finding and running the whole-VM tests: every integration test target
//! named `whole_vm_*` in any workspace crate, run with `--ignored
//! --test-threads=1`, directly on hardware KVM or in one boot of the
//! emulated KVM host elsewhere.

use crate::kernel::BuiltKernel;
use crate::util::{cargo, fail, IoContext, Result};
use hypercontainer_testhost::{Job, Mode, Report, TestHost, TestHostBuilder};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Prefix of the integration test targets that need a whole VM.
pub const TARGET_PREFIX: &str = "whole_vm_";

/// How long one whole-VM test binary may run in the emulated host before it
/// is killed (after showing where its threads are) and the next one runs.
/// The volume tests' 10,000 files take several minutes under emulation
/// on a busy machine.
const JOB_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// A test binary built by cargo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestBinary {
    /// `<package>/<target>`.
    pub name: String,
    /// Path of the executable.
    pub executable: PathBuf,
}

/// Picks the whole-VM test executables out of `cargo --message-format=json`
/// output.
pub fn parse_artifacts(json_lines: &str) -> Vec<TestBinary> {
    let mut out = Vec::new();
    for line in json_lines.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" {
            continue;
        }
        let target = &v["target"];
        let is_test = target["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"));
        let name = target["name"].as_str().unwrap_or_default();
        let Some(exe) = v["executable"].as_str() else {
            continue;
        };
        if !is_test || !name.starts_with(TARGET_PREFIX) {
            continue;
        }
        // package_id is like "path+file:///.../hypercontainer#0.1.0" or
        // "...#name@0.1.0"; the manifest path is simpler to read.
        let package = v["manifest_path"]
            .as_str()
            .and_then(|m| std::path::Path::new(m).parent()?.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.push(TestBinary {
            name: format!("{package}/{name}"),
            executable: PathBuf::from(exe),
        });
    }
    out
}

/// Builds the workspace's tests (same profile as `cargo test --workspace`)
/// and returns the whole-VM test binaries.
pub fn build() -> Result<Vec<TestBinary>> {
    let mut child = cargo()
        .args(["test", "--workspace", "--no-run", "--message-format=json"])
        .stdout(Stdio::piped())
        .spawn()
        .ctx(|| "starting cargo test --no-run".into())?;
    let mut text = String::new();
    for line in BufReader::new(child.stdout.take().expect("piped"))
        .lines()
        .map_while(|l| l.ok())
    {
        text.push_str(&line);
        text.push('\n');
    }
    let status = child.wait().ctx(|| "waiting for cargo".into())?;
    if !status.success() {
        return fail(format!("building the tests failed: {status}"));
    }
    Ok(parse_artifacts(&text))
}

/// Host tools the whole-VM tests run (packed into the emulated host with
/// their libraries), and the files those tools read.
const TOOLS: &[&str] = &["mke2fs", "debugfs"];
/// Files packed when present (passt, started as root, looks `nobody` up).
const TOOL_FILES: &[&str] = &["/etc/mke2fs.conf", "/etc/passwd", "/etc/group"];
/// Host programs packed when installed; the tests that need them skip
/// without (the registry pull test runs Debian's `docker-registry`, the
/// network tests passt, which runs `passt.avx2` where the CPU has AVX2,
/// iproute2's `ip` and `tc`, and the CNI plugins of Debian's
/// `containernetworking-plugins`; the file-sharing benchmark runs QEMU's C
/// virtiofsd as a peer and `mkfs.erofs` for its block reference, the
/// cold-start benchmark `runc`).
const OPTIONAL_TOOLS: &[&str] = &[
    "/usr/bin/docker-registry",
    "/usr/bin/passt",
    "/usr/bin/passt.avx2",
    "/usr/sbin/ip",
    "/usr/sbin/tc",
    "/usr/lib/cni/bridge",
    "/usr/lib/cni/host-local",
    "/usr/lib/cni/loopback",
    hypercontainer_testhost::share::VIRTIOFSD,
    "/usr/bin/mkfs.erofs",
    "/usr/sbin/runc",
];

/// Static programs the whole-VM tests put into their guests, built from C
/// with the system compiler: (environment variable naming the binary,
/// source relative to the repository, binary name).
const GUEST_HELPERS: &[(&str, &str, &str)] = &[
    (
        "HYPERCONTAINER_VSOCK_ECHO",
        "hypercontainer/tests/guest/vsock_echo.c",
        "vsock-echo",
    ),
    (
        "HYPERCONTAINER_FS_CHECK",
        "hypercontainer/tests/guest/fs_check.c",
        "fs-check",
    ),
];

/// Builds [`GUEST_HELPERS`] into the target directory; returns
/// (environment variable, binary).
pub fn guest_helpers() -> Result<Vec<(&'static str, PathBuf)>> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::util::repo_root().join("target"));
    let dir = target.join("guest-helpers");
    std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
    let mut out = Vec::new();
    for (var, src, name) in GUEST_HELPERS {
        let bin = dir.join(name);
        crate::util::run(
            Command::new("cc")
                .args(["-static", "-O2", "-s", "-Wall", "-o"])
                .arg(&bin)
                .arg(crate::util::repo_root().join(src)),
        )?;
        out.push((*var, bin));
    }
    Ok(out)
}

fn tool(name: &str) -> Option<PathBuf> {
    crate::util::which(name).or_else(|| {
        ["/usr/sbin", "/sbin"]
            .iter()
            .map(|d| Path::new(d).join(name))
            .find(|p| p.is_file())
    })
}

/// Memory of the emulated host of a whole-VM run. Its root is a RAM file
/// system holding every whole-VM test binary (debug builds without their
/// DWARF, about 25 MiB each), the tools and the files the tests write
/// (the volume tests' trees); Linux lets it grow to half the memory.
const WHOLE_VM_HOST_MIB: u32 = 3072;

/// Runs the given test binaries' ignored tests through the test host
/// ([`resuming`] over lockups of the emulated host).
pub fn run(mode: Mode, kernel: &BuiltKernel, binaries: &[TestBinary]) -> Result<Report> {
    let jobs: Vec<Job> = binaries
        .iter()
        .map(|b| {
            Job::new(&b.name, without_debug_info(&b.executable))
                .args(["--ignored", "--test-threads=1", "--show-output"])
                .timeout(JOB_TIMEOUT)
        })
        .collect();
    resuming(&jobs, LOCKUP_RETRIES, |rest| {
        let mut builder = with_test_tools(
            TestHost::builder()
                .mode(mode.clone())
                .guest_kernel(&kernel.vmlinux, &kernel.bzimage)
                .env("RUST_BACKTRACE", "1")
                .timeout(Duration::from_secs(40 * 60))
                .cpus(testhost_cpus())
                .memory_mib(WHOLE_VM_HOST_MIB)
                .echo(Some("  vm| ")),
        )?;
        for j in rest {
            builder = builder.job(j.clone());
        }
        Ok(builder.build()?.run()?)
    })
}

/// A copy of a test binary without its DWARF sections, beside it in
/// `whole-vm/`, when `objcopy` can make one: a debug test binary shrinks
/// to about a quarter, and the emulated host holds its packed files in
/// RAM. Panic messages keep their file and line (they are in the code);
/// backtraces keep function names. Else the binary itself.
fn without_debug_info(exe: &Path) -> PathBuf {
    let (Some(dir), Some(name)) = (exe.parent(), exe.file_name()) else {
        return exe.to_path_buf();
    };
    let out = dir.join("whole-vm").join(name);
    let fresh = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if out.is_file() && fresh(&out) >= fresh(exe) {
        return out;
    }
    let made = std::fs::create_dir_all(out.parent().unwrap_or(dir)).is_ok()
        && std::process::Command::new("objcopy")
            .arg("--strip-debug")
            .arg(exe)
            .arg(&out)
            .status()
            .is_ok_and(|s| s.success());
    if made {
        out
    } else {
        exe.to_path_buf()
    }
}

/// Runs `jobs` with `run_some` (which runs the jobs it is given in one
/// test host), surviving lockups of the emulated host.
///
/// When the emulated host itself locks up (its heartbeat stops: an
/// emulator failure, not a job's hang, which its timeout catches while the
/// heartbeat goes on), the jobs that had finished keep their results and
/// the rest run again in a fresh emulated host, starting with the one that
/// was running, saying so. A job that locks up the host `retries` + 1
/// times fails the run with its name ([`LOCKUP_RETRIES`] for tests; a
/// benchmark group gets one retry, so that its numbers come from at most
/// two hosts).
pub fn resuming(
    jobs: &[Job],
    retries: u32,
    mut run_some: impl FnMut(&[Job]) -> Result<Report>,
) -> Result<Report> {
    let mut done: Vec<hypercontainer_testhost::JobResult> = Vec::new();
    let mut lockups_of: std::collections::HashMap<String, u32> = Default::default();
    let started = std::time::Instant::now();
    loop {
        let rest = &jobs[done.len()..];
        match run_some(rest) {
            Err(crate::util::Error::TestHost(
                hypercontainer_testhost::Error::HostUnresponsive {
                    during,
                    silent,
                    state,
                    tail,
                    completed,
                },
            )) => {
                let stuck = rest
                    .get(completed.len())
                    .map(|j| j.name().to_string())
                    .unwrap_or_default();
                done.extend(completed);
                let n = lockups_of.entry(stuck.clone()).or_default();
                *n += 1;
                let err = crate::util::Error::TestHost(
                    hypercontainer_testhost::Error::HostUnresponsive {
                        during,
                        silent,
                        state,
                        tail,
                        completed: Vec::new(),
                    },
                );
                if *n > retries {
                    return crate::util::fail(format!(
                        "{stuck} locked up the emulated host {n} times; the last time: {}",
                        crate::util::report(&err)
                    ));
                }
                eprintln!(
                    "warning: {}\nwarning: the emulated host locked up during {stuck} ({n} of {} \
                     allowed); keeping the {} finished jobs and running the other {} in a fresh \
                     emulated host",
                    crate::util::report(&err),
                    retries,
                    done.len(),
                    jobs.len() - done.len(),
                );
            }
            Err(e) => return Err(e),
            Ok(mut rep) => {
                done.append(&mut rep.jobs);
                rep.jobs = done;
                rep.total = started.elapsed();
                return Ok(rep);
            }
        }
    }
}

/// How many times one job may lock up the emulated host before
/// the run fails.
pub const LOCKUP_RETRIES: u32 = 2;

/// CPUs of the emulated host: `HYPERCONTAINER_TESTHOST_CPUS`, else 1.
fn testhost_cpus() -> u32 {
    std::env::var("HYPERCONTAINER_TESTHOST_CPUS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(1)
}

/// Adds what whole-VM tests and benchmarks use besides the guest kernel:
/// the agent and test image of the sandbox tests
/// ([`crate::agent::with_sandbox_assets`]), the host tools ([`TOOLS`]) and
/// the guest helpers ([`GUEST_HELPERS`], each named by its environment
/// variable).
pub fn with_test_tools(mut builder: TestHostBuilder) -> Result<TestHostBuilder> {
    builder = crate::agent::with_sandbox_assets(builder)?;
    for name in TOOLS {
        match tool(name) {
            Some(p) => builder = builder.executable(p),
            None => return fail(format!("{name} is not installed (cargo xtask deps)")),
        }
    }
    for f in TOOL_FILES.iter().map(Path::new).filter(|f| f.is_file()) {
        builder = builder.include(f);
    }
    for p in OPTIONAL_TOOLS.iter().map(Path::new).filter(|p| p.is_file()) {
        builder = builder.executable(p);
    }
    for (var, bin) in guest_helpers()? {
        builder = builder.include(&bin).env(
            var,
            hypercontainer_testhost::inside_path(&bin)?.to_string_lossy(),
        );
    }
    Ok(builder)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_whole_vm_test_targets() {
        let lines = [
            r#"{"reason":"compiler-artifact","manifest_path":"/r/hypercontainer/Cargo.toml","target":{"kind":["test"],"name":"whole_vm_smoke"},"executable":"/t/debug/deps/whole_vm_smoke-1"}"#,
            r#"{"reason":"compiler-artifact","manifest_path":"/r/hypercontainer/Cargo.toml","target":{"kind":["test"],"name":"kvm_plumbing"},"executable":"/t/debug/deps/kvm_plumbing-2"}"#,
            r#"{"reason":"compiler-artifact","manifest_path":"/r/hypercontainer/Cargo.toml","target":{"kind":["lib"],"name":"whole_vm_lib"},"executable":null}"#,
            r#"{"reason":"build-finished","success":true}"#,
            "not json",
        ]
        .join("\n");
        assert_eq!(
            parse_artifacts(&lines),
            [TestBinary {
                name: "hypercontainer/whole_vm_smoke".into(),
                executable: "/t/debug/deps/whole_vm_smoke-1".into()
            }]
        );
    }

    fn result(name: &str) -> hypercontainer_testhost::JobResult {
        hypercontainer_testhost::JobResult {
            name: name.into(),
            exit_code: 0,
            output: String::new(),
            duration: Duration::ZERO,
            timed_out: false,
        }
    }

    fn lockup(completed: Vec<hypercontainer_testhost::JobResult>) -> crate::util::Error {
        crate::util::Error::TestHost(hypercontainer_testhost::Error::HostUnresponsive {
            during: "job".into(),
            silent: Duration::from_secs(60),
            state: String::new(),
            tail: String::new(),
            completed,
        })
    }

    fn report(jobs: Vec<hypercontainer_testhost::JobResult>) -> Report {
        Report {
            mode: "emulated",
            host_boot: None,
            kvm_setup: None,
            initramfs_bytes: None,
            jobs,
            total: Duration::ZERO,
        }
    }

    #[test]
    fn a_lockup_keeps_finished_jobs_and_runs_the_rest_in_a_fresh_host() {
        let jobs = [
            Job::new("a", "/a"),
            Job::new("b", "/b"),
            Job::new("c", "/c"),
        ];
        let mut calls: Vec<Vec<String>> = Vec::new();
        let rep = resuming(&jobs, LOCKUP_RETRIES, |rest| {
            calls.push(rest.iter().map(|j| j.name().to_string()).collect());
            match calls.len() {
                1 => Err(lockup(vec![result("a")])),
                _ => Ok(report(rest.iter().map(|j| result(j.name())).collect())),
            }
        })
        .unwrap();
        assert_eq!(calls, [vec!["a", "b", "c"], vec!["b", "c"]]);
        let names: Vec<&str> = rep.jobs.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
    }

    #[test]
    fn a_job_that_keeps_locking_up_the_host_fails_with_its_name() {
        let jobs = [Job::new("a", "/a"), Job::new("b", "/b")];
        let mut calls = 0;
        let err = resuming(&jobs, LOCKUP_RETRIES, |rest| {
            calls += 1;
            match rest.len() {
                2 => Err(lockup(vec![result("a")])),
                _ => Err(lockup(Vec::new())),
            }
        })
        .unwrap_err();
        assert_eq!(calls, LOCKUP_RETRIES as usize + 1);
        let text = crate::util::report(&err);
        assert!(
            text.contains("b locked up the emulated host 3 times"),
            "{text}"
        );
    }
}
