//! `cargo xtask agent`: builds the static in-VM agent and installs it where
//! the SDK finds it (`<cache>/agent/hypercontainer-agent`, see
//! `hypercontainer::guest`); plus the inputs sandbox tests, examples and
//! benchmarks need inside the test host: the agent, the busybox test image
//! (made with umoci) and `mkfs.erofs`.

use crate::util::{cargo, fail, IoContext, Result, Stage};
use hypercontainer_testhost::TestHostBuilder;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The target the agent is built for (static, with `+crt-static`).
const TARGET: &str = "x86_64-unknown-linux-gnu";
/// Environment variable the sandbox tests read the test image from.
pub const TEST_IMAGE_ENV: &str = "HYPERCONTAINER_TEST_IMAGE";
/// Tag of the test image in its archive.
pub const TEST_IMAGE_TAG: &str = "test";
/// Recipe version of the test image (bump when the recipe changes).
const TEST_IMAGE_NAME: &str = "busybox-v1.oci.tar";

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

fn run(cmd: &mut Command) -> Result<()> {
    crate::util::run(cmd.stdout(Stdio::null()))
}

/// The busybox test image as an oci-archive in the cache, built with umoci
/// on first use: static busybox at /bin/busybox with its applet links,
/// users root and app (1000:1000), /data; config Env `PATH=/bin`,
/// `GREETING=from-image`, WorkingDir /data, User app,
/// Cmd `sh -c "echo default-cmd"`, StopSignal SIGUSR1. Tag `test`.
pub fn test_image() -> Result<PathBuf> {
    let dir = hypercontainer::kernel::cache_dir()?.join("test-images");
    let archive = dir.join(TEST_IMAGE_NAME);
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
    let busybox = Path::new("/bin/busybox");
    if !busybox.is_file() {
        return fail("/bin/busybox is missing (cargo xtask deps installs busybox-static)");
    }
    let layout = work.join("layout");
    let image = format!("{}:{TEST_IMAGE_TAG}", layout.display());
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout))?;
    run(Command::new("umoci").args(["new", "--image", &image]))?;
    let bundle = work.join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle))?;
    let root = bundle.join("rootfs");
    for d in ["bin", "etc", "home/app", "data", "tmp"] {
        let p = root.join(d);
        std::fs::create_dir_all(&p).ctx(|| format!("creating {}", p.display()))?;
    }
    std::fs::copy(busybox, root.join("bin/busybox")).ctx(|| "copying busybox".into())?;
    std::os::unix::fs::chown(root.join("home/app"), Some(1000), Some(1000))
        .ctx(|| "chown home/app".into())?;
    let list = crate::util::output(Command::new(busybox).arg("--list"))?;
    for applet in list.lines().filter(|a| *a != "busybox" && !a.is_empty()) {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))
            .ctx(|| format!("linking {applet}"))?;
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n",
    )
    .ctx(|| "writing /etc/passwd".into())?;
    std::fs::write(root.join("etc/group"), "root:x:0:\napp:x:1000:\n")
        .ctx(|| "writing /etc/group".into())?;
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle))?;
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.env",
        "PATH=/bin",
        "--config.env",
        "GREETING=from-image",
        "--config.workingdir",
        "/data",
        "--config.user",
        "app",
        "--config.cmd",
        "sh",
        "--config.cmd",
        "-c",
        "--config.cmd",
        "echo default-cmd",
        "--config.stopsignal",
        "SIGUSR1",
    ]))?;
    run(Command::new("umoci").args(["gc", "--layout"]).arg(&layout))?;
    let tmp = archive.with_extension("tmp");
    run(Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&tmp)
        .arg("."))?;
    std::fs::rename(&tmp, archive).ctx(|| format!("renaming {}", tmp.display()))
}

/// Adds the agent (`HYPERCONTAINER_AGENT`), the busybox test image
/// (`HYPERCONTAINER_TEST_IMAGE`) and `mkfs.erofs` (the image store builds
/// layer images with it) to a test host.
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
    Ok(builder
        .include(&agent)
        .env(hypercontainer::guest::AGENT_ENV, inside(&agent)?)
        .include(&image)
        .env(TEST_IMAGE_ENV, inside(&image)?)
        .executable(mkfs))
}
