//! `cargo xtask agent`: builds the static in-VM agent and installs it where
//! the SDK finds it (`<cache>/agent/hypercontainer-agent`, see
//! `hypercontainer::guest`); plus the inputs sandbox tests, examples and
//! benchmarks need inside the test host: the agent, the busybox test image
//! (made with umoci) and `mkfs.erofs`.

use crate::util::{cargo, fail, IoContext, Result, Stage};
use hypercontainer_image::testimage;
use hypercontainer_testhost::TestHostBuilder;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// The target the agent is built for (static, with `+crt-static`).
const TARGET: &str = "x86_64-unknown-linux-gnu";
/// Environment variable the sandbox tests read the test image from.
pub const TEST_IMAGE_ENV: &str = "HYPERCONTAINER_TEST_IMAGE";
/// Tag of the test image in its archive.
pub const TEST_IMAGE_TAG: &str = testimage::TAG;

/// `cargo xtask agent`.
pub fn cmd() -> Result<()> {
    let p = ensure()?;
    println!("{}", p.display());
    Ok(())
}

/// Builds the agent (cargo skips an up-to-date build) and installs it into
/// the cache when it changed; returns the installed path.
pub fn ensure() -> Result<PathBuf> {
    let stage = Stage::start("agent: static guest agent");
    let res = ensure_inner(&stage);
    stage.finish(res.is_ok());
    res
}

fn ensure_inner(stage: &Stage) -> Result<PathBuf> {
    let built = build()?;
    let dir = hypercontainer::kernel::cache_dir()?.join("agent");
    std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
    let dest = dir.join(hypercontainer::guest::AGENT_NAME);
    let new = std::fs::read(&built).ctx(|| format!("reading {}", built.display()))?;
    if std::fs::read(&dest).ok().as_deref() != Some(&new[..]) {
        let tmp = dir.join(format!(".agent-{}", std::process::id()));
        std::fs::write(&tmp, &new).ctx(|| format!("writing {}", tmp.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .ctx(|| format!("chmod {}", tmp.display()))?;
        std::fs::rename(&tmp, &dest).ctx(|| format!("installing {}", dest.display()))?;
        stage.note(format!(
            "installed {} ({} KiB)",
            dest.display(),
            new.len() / 1024
        ));
    } else {
        stage.note(format!("up to date: {}", dest.display()));
    }
    // The SDK refuses an agent the guest cannot run; check it here too.
    if let Err(e) = hypercontainer::guest::check_static_elf(&dest, &new) {
        return fail(format!("{e}"));
    }
    Ok(dest)
}

fn build() -> Result<PathBuf> {
    let mut child = cargo()
        .args(["build", "-p", "hypercontainer-guest", "--profile", "guest"])
        .args(["--target", TARGET])
        .arg("--message-format=json-render-diagnostics")
        .env(
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
            "-C target-feature=+crt-static",
        )
        .stdout(Stdio::piped())
        .spawn()
        .ctx(|| "starting cargo build of the agent".into())?;
    let mut exe = None;
    for line in BufReader::new(child.stdout.take().expect("piped"))
        .lines()
        .map_while(|l| l.ok())
    {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if v["reason"] == "compiler-artifact" && v["target"]["name"] == "hypercontainer-agent" {
            if let Some(e) = v["executable"].as_str() {
                exe = Some(PathBuf::from(e));
            }
        }
    }
    let status = child.wait().ctx(|| "waiting for cargo build".into())?;
    if !status.success() {
        return fail(format!("building the agent failed: {status}"));
    }
    exe.ok_or_else(|| crate::util::Error::Failed("cargo built no agent executable".into()))
}

/// The busybox test image as an image reference the SDK takes:
/// `oci-archive:PATH:TAG`, with [`test_image`]'s archive.
pub fn test_image_ref() -> Result<String> {
    let image = test_image()?;
    Ok(format!("oci-archive:{}:{TEST_IMAGE_TAG}", image.display()))
}

/// The busybox test image as an oci-archive in the cache
/// (`test-images/busybox-v<N>.oci.tar`, `N` the recipe version), built on
/// first use by `hypercontainer_image::testimage` (its module docs list
/// what the image holds). Tag [`TEST_IMAGE_TAG`].
pub fn test_image() -> Result<PathBuf> {
    let dir = hypercontainer::kernel::cache_dir()?.join("test-images");
    let archive = dir.join(format!("busybox-v{}.oci.tar", testimage::RECIPE_VERSION));
    if archive.is_file() {
        return Ok(archive);
    }
    std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
    let work = dir.join(format!(".build-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let res = build_image(&work, &archive);
    let _ = std::fs::remove_dir_all(&work);
    res.map(|()| archive)
}

fn build_image(work: &Path, archive: &Path) -> Result<()> {
    let busybox = Path::new(testimage::DEFAULT_BUSYBOX);
    if !busybox.is_file() {
        return fail("/bin/busybox is missing (cargo xtask deps installs busybox-static)");
    }
    testimage::build_busybox_layout(work, busybox)
        .and_then(|image| image.write_archive(archive))
        .ctx(|| format!("building the test image {}", archive.display()))
}

/// The containers-common seccomp profile (see `hypercontainer::spec::seccomp`).
const SECCOMP_PROFILE: &str = "/usr/share/containers/seccomp.json";

/// Adds the agent (`HYPERCONTAINER_AGENT`), the busybox test image
/// (`HYPERCONTAINER_TEST_IMAGE`), `mkfs.erofs` (the image store builds
/// layer images with it) and the default seccomp profile to a test host.
pub fn with_sandbox_assets(builder: TestHostBuilder) -> Result<TestHostBuilder> {
    let agent = ensure()?;
    let image = test_image()?;
    let Some(mkfs) = crate::util::which("mkfs.erofs") else {
        return fail("mkfs.erofs is not installed (cargo xtask deps installs erofs-utils)");
    };
    let inside = |p: &Path| -> Result<String> {
        Ok(hypercontainer_testhost::inside_path(p)?
            .to_string_lossy()
            .into_owned())
    };
    // The default seccomp profile the SDK gives containers, at its path.
    let profile = Path::new(SECCOMP_PROFILE);
    if !profile.is_file() {
        return fail(format!(
            "{SECCOMP_PROFILE} is missing (cargo xtask deps installs golang-github-containers-common)"
        ));
    }
    Ok(builder
        .include(profile)
        .include(&agent)
        .env(hypercontainer::guest::AGENT_ENV, inside(&agent)?)
        .include(&image)
        .env(TEST_IMAGE_ENV, inside(&image)?)
        .executable(mkfs))
}
