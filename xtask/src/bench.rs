//! `cargo xtask bench [NAME[/GROUP]...] [-- ARGS]`: runs the benchmarks of the
//! `hypercontainer-benches` package (all, or the named `[[bench]]` targets,
//! or only some groups of one: `cold_start/runc`)
//! where a guest can boot: directly on hardware KVM, inside the emulated KVM
//! host elsewhere, with the same inputs as the whole-VM tests (guest kernel,
//! busybox, QEMU, guest helpers). `ARGS` go to each benchmark binary (a
//! criterion filter, for instance); the benchmarks' environment knobs
//! (`HYPERCONTAINER_BENCH_*`, `HYPERCONTAINER_*_PAIRS`) are passed on. Their output, summaries included, is
//! streamed. When the file-sharing benchmark (`fs`) is among them, a
//! variant guest kernel with 9p (`guest/kernel/bench-9p.fragment` over the
//! repository's fragment) is built too and handed to it alone.

use crate::util::{cargo, fail, IoContext, Result};
use hypercontainer_testhost::{Job, Mode, TestHost};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

const PACKAGE: &str = "hypercontainer-benches";

/// A second guest kernel for the boot benchmark's pairs (see
/// `benches/boot.rs`), packed into the emulated host at its own path.
const KERNEL_B_ENV: &str = "HYPERCONTAINER_BENCH_KERNEL_B";

/// The file-sharing benchmark's guest kernel (`benches/fs/`): the
/// repository's fragment plus [`FS_FRAGMENT`], built when `fs` runs and
/// packed at its own path. Every setup of that benchmark boots it, so the
/// product kernel needs no 9p.
const FS_KERNEL_ENV: &str = "HYPERCONTAINER_BENCH_FS_KERNEL";
/// The additive fragment of [`FS_KERNEL_ENV`]'s kernel: 9p for the
/// QEMU virtio-9p peer.
const FS_FRAGMENT: &str = "guest/kernel/bench-9p.fragment";

/// Builds the bench executables (release profile); returns (name, path).
fn build(names: &[String]) -> Result<Vec<(String, PathBuf)>> {
    let mut cmd = cargo();
    cmd.args(["bench", "--package", PACKAGE, "--no-run"]);
    for n in names {
        cmd.args(["--bench", n.split('/').next().unwrap_or(n)]);
    }
    let mut child = cmd
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped())
        .spawn()
        .ctx(|| "starting cargo bench --no-run".into())?;
    let mut out = Vec::new();
    for line in BufReader::new(child.stdout.take().expect("piped"))
        .lines()
        .map_while(|l| l.ok())
    {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let is_bench = v["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "bench"));
        if v["reason"] == "compiler-artifact" && is_bench {
            if let (Some(name), Some(exe)) =
                (v["target"]["name"].as_str(), v["executable"].as_str())
            {
                out.push((name.to_string(), PathBuf::from(exe)));
            }
        }
    }
    let status = child.wait().ctx(|| "waiting for cargo bench".into())?;
    if !status.success() {
        return fail(format!("building the benchmarks failed: {status}"));
    }
    if out.is_empty() {
        return fail("no benchmark was built");
    }
    Ok(out)
}

/// The variable that picks one group of a benchmark binary (see the
/// `hypercontainer-benches` crate docs).
const GROUP_ENV: &str = "HYPERCONTAINER_BENCH_ONLY";

/// The groups a benchmark binary declares (`--groups`), if it declares
/// any; asked natively, where it answers before touching anything.
fn groups(exe: &std::path::Path) -> Option<Vec<String>> {
    let out = std::process::Command::new(exe)
        .arg("--groups")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    parse_groups(&String::from_utf8_lossy(&out.stdout))
}

fn parse_groups(stdout: &str) -> Option<Vec<String>> {
    let line = stdout.lines().find_map(|l| l.strip_prefix("groups: "))?;
    let g: Vec<String> = line.split_whitespace().map(str::to_string).collect();
    (!g.is_empty()).then_some(g)
}

/// Every `summary:` line of the jobs' output, each with its job's name.
fn summary_lines<'a>(jobs: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<String> {
    let mut out = Vec::new();
    for (name, output) in jobs {
        for l in output.lines() {
            if let Some(rest) = l.trim_start().strip_prefix("summary: ") {
                out.push(format!("summary [{name}]: {rest}"));
            }
        }
    }
    out
}

/// `cargo xtask bench`.
pub fn cmd(args: &[String]) -> Result<()> {
    let (names, bench_args) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &[][..]),
    };
    crate::deps::ensure_apt()?;
    let kernel = crate::kernel::ensure()?;
    let mode = if hypercontainer::host::detect_kvm() == hypercontainer::host::KvmKind::Hardware {
        Mode::Direct
    } else {
        Mode::Emulated(crate::assets::ensure()?)
    };
    let benches = build(names)?;
    // Guest kernels packed beside the default one: (variable, vmlinux).
    let mut kernels: Vec<(&str, PathBuf)> = Vec::new();
    if let Some(k) = std::env::var_os(KERNEL_B_ENV) {
        let k = PathBuf::from(k);
        if !k.is_file() {
            return fail(format!("{KERNEL_B_ENV}: {} is not a file", k.display()));
        }
        kernels.push((KERNEL_B_ENV, k));
    }
    if benches.iter().any(|(name, _)| name == "fs") {
        let extra = crate::util::repo_root().join(FS_FRAGMENT);
        kernels.push((FS_KERNEL_ENV, crate::kernel::ensure_with(&extra)?.vmlinux));
    }
    let mut jobs: Vec<Job> = Vec::new();
    for (name, exe) in &benches {
        match groups(exe) {
            // One job per group: a lockup costs only the group it hit.
            Some(groups) => {
                // `NAME/GROUP` asks for some groups only.
                let asked: Vec<&str> = names
                    .iter()
                    .filter_map(|n| n.strip_prefix(&format!("{name}/")))
                    .collect();
                for g in groups {
                    if !asked.is_empty() && !asked.contains(&g.as_str()) {
                        continue;
                    }
                    jobs.push(
                        Job::new(format!("{name}/{g}"), exe)
                            .arg("--bench")
                            .args(bench_args)
                            .env(GROUP_ENV, &g),
                    );
                }
            }
            None => jobs.push(Job::new(name, exe).arg("--bench").args(bench_args)),
        }
    }
    // A benchmark whose emulated host locks up runs again in a fresh one.
    // A group that locks the host up twice fails the run, named.
    let report = crate::wholevm::resuming(&jobs, 1, |rest| {
        let mut builder = crate::wholevm::with_test_tools(
            TestHost::builder()
                .mode(mode.clone())
                .guest_kernel(&kernel.vmlinux, &kernel.bzimage)
                .timeout(Duration::from_secs(90 * 60))
                // Room for the file-sharing benchmark's share (two 256 MiB
                // files and an EROFS image of one) beside a guest's memory.
                .memory_mib(3072)
                .echo(Some("")),
        )?;
        // Knobs of the benchmarks (`HYPERCONTAINER_BENCH_*`,
        // `HYPERCONTAINER_*_PAIRS`) reach them inside the emulated host too.
        for (k, v) in std::env::vars() {
            let packed = kernels.iter().any(|(env, _)| *env == k);
            if (k.starts_with("HYPERCONTAINER_BENCH_") && !packed)
                || (k.starts_with("HYPERCONTAINER_") && k.ends_with("_PAIRS"))
            {
                builder = builder.env(k, v);
            }
        }
        // Further guest kernels go in with the first, at their own paths.
        for (env, k) in &kernels {
            let inside = hypercontainer_testhost::inside_path(k)?;
            builder = builder.include(k).env(*env, inside.to_string_lossy());
        }
        for j in rest {
            builder = builder.job(j.clone());
        }
        Ok(builder.build()?.run()?)
    })?;
    if let Some(b) = report.host_boot {
        eprintln!("(emulated KVM host booted in {:.1}s)", b.as_secs_f64());
    }
    let summaries = summary_lines(
        report
            .jobs
            .iter()
            .map(|j| (j.name.as_str(), j.output.as_str())),
    );
    if !summaries.is_empty() {
        eprintln!("\nsummary of every comparison:");
        for l in summaries {
            println!("{l}");
        }
    }
    let failed: Vec<&str> = report
        .jobs
        .iter()
        .filter(|j| !j.success())
        .map(|j| j.name.as_str())
        .collect();
    if !failed.is_empty() {
        return fail(format!("benchmarks failed: {}", failed.join(", ")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_and_summaries_are_read_from_the_output() {
        assert_eq!(
            parse_groups("noise\ngroups: a b\n"),
            Some(vec!["a".to_string(), "b".to_string()])
        );
        assert_eq!(parse_groups("criterion output\n"), None);
        assert_eq!(parse_groups("groups: \n"), None);
        let jobs = [
            (
                "cold_start/runc",
                "x\nsummary: cold start: ours 1 ms\n  summary: two\n",
            ),
            ("boot", "nothing\n"),
        ];
        assert_eq!(
            summary_lines(jobs.into_iter()),
            [
                "summary [cold_start/runc]: cold start: ours 1 ms",
                "summary [cold_start/runc]: two"
            ]
        );
    }
}
