//! `cargo xtask deps`: installs the system packages and cargo tools the
//! project needs, only when something is missing.

use crate::util::{fail, output, run, status, which, Result, Stage};
use std::process::Command;

/// Debian packages the build and the tests need.
///
/// Add a package here when a build step or a test starts to need one.
pub const APT_PACKAGES: &[&str] = &[
    // guest kernel build
    "linux-source-6.1",
    "build-essential",
    "flex",
    "bison",
    "bc",
    "libelf-dev",
    "libssl-dev",
    "xz-utils",
    // emulated KVM host and reference VMM
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "kmod",
    // image tooling used by the image tests
    "erofs-utils",
    "e2fsprogs",
    "umoci",
    "skopeo",
    // a real registry on loopback for the registry pull tests (distribution 2.8)
    "docker-registry",
    "openssl",
    // the default seccomp profile of containers (/usr/share/containers/seccomp.json)
    "golang-github-containers-common",
    // user-mode networking (passt), network namespaces and tc redirects
    // (ip, tc), and the CNI plugins the network namespace tests run
    "passt",
    "iproute2",
    "containernetworking-plugins",
    // the cold-start benchmark's container peer (`runc run`)
    "runc",
    // HTTPS to crates.io for the fuzz workspace (which has no lock file of
    // its own) and to the registries; a bare Debian has no CA bundle
    "ca-certificates",
];

/// Packages of `wanted` that dpkg does not report as installed.
pub fn missing_packages(wanted: &[&str]) -> Result<Vec<String>> {
    let mut missing = Vec::new();
    for pkg in wanted {
        let out = Command::new("dpkg-query")
            .args(["-W", "-f=${db:Status-Abbrev}", pkg])
            .output();
        let installed = match out {
            Ok(o) => o.status.success() && String::from_utf8_lossy(&o.stdout).starts_with("ii"),
            Err(e) => return fail(format!("cannot run dpkg-query (is this Debian?): {e}")),
        };
        if !installed {
            missing.push(pkg.to_string());
        }
    }
    Ok(missing)
}

/// Runs `apt-get update` (quietly).
pub fn apt_update() -> Result<()> {
    run(Command::new("apt-get").args(["-q", "update"]))
}

/// Installs the given packages with `apt-get update` + `apt-get install -y`.
pub fn apt_install(pkgs: &[String]) -> Result<()> {
    if pkgs.is_empty() {
        return Ok(());
    }
    apt_update()?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(pkgs)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Ensures every package of [`APT_PACKAGES`] is installed.
pub fn ensure_apt() -> Result<()> {
    let stage = Stage::start("deps: system packages");
    let missing = missing_packages(APT_PACKAGES)?;
    let res = if missing.is_empty() {
        stage.note(format!("all {} packages present", APT_PACKAGES.len()));
        Ok(())
    } else {
        stage.note(format!("installing {}", missing.join(" ")));
        apt_install(&missing)
    };
    stage.finish(res.is_ok());
    res
}

/// Ensures `cargo-fuzz` is installed (used by `cargo xtask fuzz`).
pub fn ensure_cargo_fuzz() -> Result<()> {
    let have = Command::new(crate::util::cargo().get_program())
        .args(["fuzz", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if have {
        return Ok(());
    }
    let stage = Stage::start("deps: cargo install cargo-fuzz");
    let res = run(crate::util::cargo().args(["install", "--locked", "cargo-fuzz"]));
    stage.finish(res.is_ok());
    res
}

/// Whether the nightly toolchain is usable (cargo-fuzz needs it).
pub fn have_nightly() -> bool {
    which("rustup").is_some()
        && Command::new("rustup")
            .args(["run", "nightly", "rustc", "--version"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
}

/// `cargo xtask deps`.
pub fn cmd() -> Result<()> {
    ensure_apt()?;
    // Print what the tools are, as a record in CI logs.
    let qemu = output(Command::new("qemu-system-x86_64").arg("--version"))?;
    eprintln!("    {}", qemu.lines().next().unwrap_or_default());
    let st = status(Command::new("busybox").arg("true"))?;
    if !st.success() {
        return fail("busybox does not run");
    }
    Ok(())
}
