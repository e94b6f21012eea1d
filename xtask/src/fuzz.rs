//! `cargo xtask fuzz [SECONDS]`: builds every cargo-fuzz target in `fuzz/`
//! and runs each for a short bounded time (nightly + cargo-fuzz).

use crate::ci::Counts;
use crate::util::{fail, repo_root, IoContext, Result, Stage};
use std::process::Command;

/// Seconds each target runs in the smoke step of `cargo xtask test`.
pub const SMOKE_SECS: u64 = 20;

/// The `[[bin]]` target names of a cargo-fuzz manifest.
pub fn targets(manifest: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_bin = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin {
            if let Some(v) = line.strip_prefix("name") {
                let v = v
                    .trim_start()
                    .trim_start_matches('=')
                    .trim()
                    .trim_matches('"');
                if !v.is_empty() {
                    out.push(v.to_string());
                }
            }
        }
    }
    out
}

fn nightly_cargo() -> Command {
    // Through rustup's proxy so that `+nightly` works.
    let mut cmd = Command::new("cargo");
    cmd.arg("+nightly").current_dir(repo_root().join("fuzz"));
    cmd.env_remove("RUSTUP_TOOLCHAIN");
    // The instrumented build of the dependencies takes minutes: keep it in
    // the cache, next to the guest kernel, so that a fresh checkout only
    // rebuilds the workspace's own crates.
    if let Ok(cache) = hypercontainer::kernel::cache_dir() {
        cmd.env("CARGO_TARGET_DIR", cache.join("fuzz-target"));
    }
    cmd
}

/// Builds all targets and runs each for `secs` seconds.
pub fn smoke(stage: &Stage, secs: u64) -> Result<Counts> {
    let manifest_path = repo_root().join("fuzz/Cargo.toml");
    let manifest = std::fs::read_to_string(&manifest_path)
        .ctx(|| format!("reading {}", manifest_path.display()))?;
    let names = targets(&manifest);
    if names.is_empty() {
        stage.note("no fuzz target yet");
        return Ok(Counts::default());
    }
    if !crate::deps::have_nightly() {
        return fail("the nightly toolchain is missing (rustup toolchain install nightly)");
    }
    crate::deps::ensure_cargo_fuzz()?;
    stage.note(format!(
        "building {} targets: {}",
        names.len(),
        names.join(" ")
    ));
    crate::util::run(nightly_cargo().args(["fuzz", "build"]))?;
    let mut counts = Counts::default();
    for name in &names {
        // libFuzzer is chatty: its output goes to a log, shown on failure.
        let log_dir = repo_root().join("fuzz/artifacts");
        std::fs::create_dir_all(&log_dir).ctx(|| format!("creating {}", log_dir.display()))?;
        let log_path = log_dir.join(format!("smoke-{name}.log"));
        let log =
            std::fs::File::create(&log_path).ctx(|| format!("creating {}", log_path.display()))?;
        let log2 = log.try_clone().ctx(|| "duplicating the log fd".into())?;
        stage.note(format!(
            "running {name} for {secs}s (log: {})",
            log_path.display()
        ));
        let ok = crate::util::status(
            nightly_cargo()
                .args(["fuzz", "run", name, "--"])
                .arg(format!("-max_total_time={secs}"))
                .stdout(log)
                .stderr(log2),
        )?
        .success();
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if ok {
            let done = text
                .lines()
                .rfind(|l| l.starts_with("Done "))
                .unwrap_or("done");
            stage.note(format!("{name}: {done}"));
            counts.passed += 1;
        } else {
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("{}", lines[lines.len().saturating_sub(40)..].join("\n"));
            stage.note(format!(
                "{name}: FAILED (crash inputs in fuzz/artifacts/{name})"
            ));
            counts.failed += 1;
        }
    }
    Ok(counts)
}

/// `cargo xtask fuzz [SECONDS]`.
pub fn cmd(args: &[String]) -> Result<()> {
    let secs = match args.first() {
        Some(s) => s
            .parse()
            .map_err(|_| crate::util::Error::Failed(format!("not a number of seconds: {s}")))?,
        None => SMOKE_SECS,
    };
    let stage = Stage::start("fuzz");
    let res = smoke(&stage, secs);
    let ok = matches!(res, Ok(c) if c.failed == 0);
    stage.finish(ok);
    let c = res?;
    println!("{} passed, {} failed", c.passed, c.failed);
    if c.failed > 0 {
        return fail("fuzz targets failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_bin_names() {
        let m = "[package]\nname = \"hypercontainer-fuzz\"\n\n[[bin]]\nname = \"a\"\npath = \"x\"\n\n[dependencies]\nname = \"no\"\n[[bin]]\nname=\"b\"\n";
        assert_eq!(targets(m), ["a", "b"]);
        assert!(targets("[package]\nname = \"p\"\n").is_empty());
    }
}
