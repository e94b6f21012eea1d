//! `cargo xtask test`: the project's one test command (README and CI).
//!
//! Stages: deps, kernel, testhost-assets, fmt, clippy, doc, `cargo test
//! --workspace`, the whole-VM tests, the main job (`cargo xtask run` with a
//! volume, checked as `docker run` behaves), the fuzz smoke run. Every stage runs
//! even when an earlier one failed (unless it needs its output); the last
//! line is `N passed, N failed` over all stages: each check stage counts
//! as one, test stages count their tests.

use crate::util::{cargo, report, IoContext, Result, Stage};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// Passed and failed counts of a stage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Passed checks or tests.
    pub passed: usize,
    /// Failed checks or tests.
    pub failed: usize,
}

impl Counts {
    fn add(&mut self, o: Counts) {
        self.passed += o.passed;
        self.failed += o.failed;
    }
}

/// Reads libtest's `test result: ok. 3 passed; 1 failed; ...` line.
pub fn parse_test_result(line: &str) -> Option<Counts> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let mut counts = Counts::default();
    for part in rest.split(';') {
        let mut words = part.split_whitespace().rev();
        let Some(what) = words.next() else {
            continue;
        };
        let n = words.next().and_then(|n| n.parse().ok());
        match (what, n) {
            ("passed", Some(n)) => counts.passed = n,
            ("failed", Some(n)) => counts.failed = n,
            _ => {}
        }
    }
    Some(counts)
}

/// Sums the libtest result lines of `text`.
pub fn sum_test_results(text: &str) -> Option<Counts> {
    let mut total: Option<Counts> = None;
    for c in text.lines().filter_map(parse_test_result) {
        total.get_or_insert_with(Counts::default).add(c);
    }
    total
}

struct Row {
    name: String,
    counts: Counts,
    secs: f64,
    note: String,
}

#[derive(Default)]
struct Tally {
    rows: Vec<Row>,
}

impl Tally {
    /// Runs a stage; an error counts as one failure unless the stage already
    /// reported counts.
    fn stage(&mut self, name: &str, f: impl FnOnce(&Stage) -> Result<Counts>) -> bool {
        let stage = Stage::start(name);
        let (counts, note) = match f(&stage) {
            Ok(c) => (c, String::new()),
            Err(e) => {
                let msg = report(&e);
                eprintln!("error: {msg}");
                (
                    Counts {
                        passed: 0,
                        failed: 1,
                    },
                    msg.lines().next().unwrap_or_default().to_string(),
                )
            }
        };
        let ok = counts.failed == 0;
        let secs = stage.finish(ok);
        self.rows.push(Row {
            name: name.into(),
            counts,
            secs,
            note,
        });
        ok
    }

    /// Like [`Tally::stage`] for steps that print their own stage lines.
    fn record(&mut self, name: &str, f: impl FnOnce() -> Result<()>) -> bool {
        let start = std::time::Instant::now();
        let (counts, note) = match f() {
            Ok(()) => (one(), String::new()),
            Err(e) => {
                let msg = report(&e);
                eprintln!("error: {msg}");
                let first = msg.lines().next().unwrap_or_default().to_string();
                (
                    Counts {
                        passed: 0,
                        failed: 1,
                    },
                    first,
                )
            }
        };
        let ok = counts.failed == 0;
        self.rows.push(Row {
            name: name.into(),
            counts,
            secs: start.elapsed().as_secs_f64(),
            note,
        });
        ok
    }

    fn skip(&mut self, name: &str, why: &str) {
        eprintln!("==> {name}: skipped ({why})");
        self.rows.push(Row {
            name: name.into(),
            counts: Counts::default(),
            secs: 0.0,
            note: format!("skipped: {why}"),
        });
    }
}

/// A check stage: one pass or one fail.
fn check(cmd: &mut Command) -> Result<Counts> {
    let ok = crate::util::status(cmd)?.success();
    Ok(Counts {
        passed: ok as usize,
        failed: (!ok) as usize,
    })
}

/// Runs a command that prints libtest output, echoing it, and counts.
fn tests(cmd: &mut Command) -> Result<Counts> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .ctx(|| format!("starting {}", crate::util::show(cmd)))?;
    let mut text = String::new();
    for line in BufReader::new(child.stdout.take().expect("piped"))
        .lines()
        .map_while(|l| l.ok())
    {
        println!("{line}");
        text.push_str(&line);
        text.push('\n');
    }
    let status = child.wait().ctx(|| "waiting for cargo test".into())?;
    let mut counts = sum_test_results(&text).unwrap_or_default();
    if !status.success() && counts.failed == 0 {
        // A build failure, or a test binary that crashed.
        counts.failed = 1;
    }
    Ok(counts)
}

/// `cargo xtask test`.
pub fn cmd() -> Result<()> {
    let started = std::time::Instant::now();
    let mut t = Tally::default();

    let deps_ok = t.record("deps", crate::deps::ensure_apt);
    let mut kernel = None;
    if deps_ok {
        t.record("kernel", || {
            kernel = Some(crate::kernel::ensure()?);
            Ok(())
        });
    } else {
        t.skip("kernel", "deps failed");
    }
    if deps_ok {
        // The host-tier agent tests and the whole-VM sandbox tests need it.
        t.record("agent", || crate::agent::ensure().map(drop));
    } else {
        t.skip("agent", "deps failed");
    }
    let mut mode = None;
    if deps_ok {
        t.record("testhost-assets", || {
            mode = Some(mode_here()?);
            Ok(())
        });
    } else {
        t.skip("testhost-assets", "deps failed");
    }

    t.stage("fmt", |_| check(cargo().args(["fmt", "--all", "--check"])));
    t.stage("clippy", |_| {
        check(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    });
    t.stage("doc", |_| {
        check(
            cargo()
                .args(["doc", "--workspace", "--no-deps"])
                .env("RUSTDOCFLAGS", "-D warnings"),
        )
    });
    t.stage("unit, host and KVM plumbing tests", |_| {
        // Every test binary runs, so that all failures are counted.
        tests(cargo().args(["test", "--workspace", "--no-fail-fast"]))
    });

    match (kernel.as_ref(), mode) {
        (Some(kernel), Some(mode)) => {
            t.stage("whole-VM tests", |s| whole_vm(s, mode, kernel, &[]));
            t.record("main job (cargo xtask run)", crate::mainjob::check);
        }
        _ => {
            t.skip("whole-VM tests", "no guest kernel or test host");
            t.skip("main job (cargo xtask run)", "no guest kernel or test host");
        }
    }

    // ---- fuzz smoke hook -------------------------------------------------
    // Builds every target in fuzz/ and runs each for a short bounded time.
    t.stage("fuzz smoke", |s| {
        crate::fuzz::smoke(s, crate::fuzz::SMOKE_SECS)
    });
    // ----------------------------------------------------------------------

    let mut total = Counts::default();
    eprintln!();
    eprintln!("summary ({:.0}s):", started.elapsed().as_secs_f64());
    for r in &t.rows {
        total.add(r.counts);
        eprintln!(
            "  {:<36} {:>4} passed {:>3} failed {:>7.1}s  {}",
            r.name, r.counts.passed, r.counts.failed, r.secs, r.note
        );
    }
    println!("{} passed, {} failed", total.passed, total.failed);
    if total.failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// Builds and runs the whole-VM test binaries (only the targets named in
/// `only`, when not empty), counting their tests.
fn whole_vm(
    s: &Stage,
    mode: hypercontainer_testhost::Mode,
    kernel: &crate::kernel::BuiltKernel,
    only: &[String],
) -> Result<Counts> {
    let mut binaries = crate::wholevm::build()?;
    if !only.is_empty() {
        binaries.retain(|b| only.iter().any(|o| b.name.ends_with(&format!("/{o}"))));
    }
    if binaries.is_empty() {
        return crate::util::fail("no whole_vm_* test target found");
    }
    s.note(format!(
        "{} test binaries, run {}: {}",
        binaries.len(),
        mode.name(),
        binaries
            .iter()
            .map(|b| b.name.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    ));
    let rep = crate::wholevm::run(mode, kernel, &binaries)?;
    if let Some(b) = rep.host_boot {
        s.note(format!(
            "emulated host: {:.1} MiB initramfs, booted in {:.1}s, kvm ready {:.1}s later",
            rep.initramfs_bytes.unwrap_or(0) as f64 / 1048576.0,
            b.as_secs_f64(),
            rep.kvm_setup.unwrap_or_default().as_secs_f64()
        ));
    }
    let mut counts = Counts::default();
    for job in &rep.jobs {
        let mut c = sum_test_results(&job.output).unwrap_or_default();
        if !job.success() && c.failed == 0 {
            c.failed = 1;
        }
        s.note(format!(
            "{}: exit {}{}, {} passed, {} failed ({:.1}s)",
            job.name,
            job.exit_code,
            if job.timed_out { " (timed out)" } else { "" },
            c.passed,
            c.failed,
            job.duration.as_secs_f64()
        ));
        counts.add(c);
    }
    Ok(counts)
}

/// Mode chosen for whole-VM tests on this machine (fetches the emulated
/// host's assets when it is needed).
fn mode_here() -> Result<hypercontainer_testhost::Mode> {
    let kind = hypercontainer::host::detect_kvm();
    let m = if kind == hypercontainer::host::KvmKind::Hardware {
        hypercontainer_testhost::Mode::Direct
    } else {
        hypercontainer_testhost::Mode::Emulated(crate::assets::ensure()?)
    };
    eprintln!("    KVM here: {kind:?}; whole-VM tests run {}", m.name());
    Ok(m)
}

/// `cargo xtask whole-vm [TARGET...]`: only the whole-VM tests (only the
/// named test targets, e.g. `whole_vm_devices`, when given).
pub fn whole_vm_cmd(only: &[String]) -> Result<()> {
    crate::deps::ensure_apt()?;
    let kernel = crate::kernel::ensure()?;
    let mode = mode_here()?;
    let stage = Stage::start("whole-VM tests");
    let res = Ok(mode).and_then(|mode| whole_vm(&stage, mode, &kernel, only));
    let ok = matches!(res, Ok(c) if c.failed == 0);
    stage.finish(ok);
    let c = res?;
    println!("{} passed, {} failed", c.passed, c.failed);
    if c.failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

fn one() -> Counts {
    Counts {
        passed: 1,
        failed: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libtest_summaries() {
        let text = "running 3 tests\n\
            test a ... ok\n\
            test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s\n\
            test result: FAILED. 1 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out; finished in 1.00s\n";
        assert_eq!(
            sum_test_results(text),
            Some(Counts {
                passed: 4,
                failed: 2
            })
        );
        assert_eq!(sum_test_results("no tests here\n"), None);
        assert_eq!(
            parse_test_result("test result: garbage"),
            Some(Counts::default())
        );
    }
}
