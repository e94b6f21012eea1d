//! The test command's check of the main job: `cargo xtask run -- run -v
//! DIR:/data IMAGE sh -c '...'`, run as a user runs it, must behave as
//! `docker run` does: the container's stdout on stdout, its stderr on
//! stderr, its exit code as ours, and its writes to the volume on the host.

use crate::util::{fail, IoContext, Result};
use std::process::Command;

/// What the container runs.
const SCRIPT: &str = "echo out; echo err >&2; echo kept > /data/file; exit 3";

/// Runs the check; an error says what differed.
pub fn check() -> Result<()> {
    let image = crate::agent::test_image_ref()?;
    let dir = std::env::temp_dir().join(format!("hc-main-job-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
    let res = run_in(&dir, &image);
    let _ = std::fs::remove_dir_all(&dir);
    res
}

fn run_in(dir: &std::path::Path, image: &str) -> Result<()> {
    let exe = std::env::current_exe().ctx(|| "finding the xtask executable".into())?;
    let volume = format!("{}:/data", dir.display());
    let mut cmd = Command::new(exe);
    cmd.args(["run", "--", "run", "--user", "root", "-v", &volume, image])
        .args(["sh", "-c", SCRIPT])
        .env(crate::run::DEV_PROFILE_ENV, "1");
    let shown: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    eprintln!("    cargo xtask {}", shown.join(" "));
    let out = cmd.output().ctx(|| "starting cargo xtask run".into())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut problems = Vec::new();
    if out.status.code() != Some(3) {
        problems.push(format!("exit status {} (want 3)", out.status));
    }
    if stdout != "out\n" {
        problems.push(format!("stdout {stdout:?} (want \"out\\n\")"));
    }
    if !stderr.lines().any(|l| l == "err") {
        problems.push("no line \"err\" on stderr".to_string());
    }
    if stderr.lines().any(|l| l == "out") {
        problems.push("the container's stdout reached stderr".to_string());
    }
    match std::fs::read_to_string(dir.join("file")) {
        Ok(s) if s == "kept\n" => {}
        other => problems.push(format!("the volume's file on the host: {other:?}")),
    }
    if problems.is_empty() {
        return Ok(());
    }
    eprintln!("{stderr}");
    fail(format!("cargo xtask run: {}", problems.join("; ")))
}
