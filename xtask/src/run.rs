//! `cargo xtask run [-- <example> [args]]`: the project's main job.
//!
//! Builds an example of the workspace and runs it where a guest can boot:
//! directly on hardware KVM, inside the emulated KVM host elsewhere, with
//! its output streamed. Without an example it runs [`default_payload`] (the
//! `run` example on the busybox test image); `guest-boot-demo` boots the
//! guest kernel with a busybox init under QEMU microvm instead.

use crate::kernel::BuiltKernel;
use crate::util::{cargo, fail, IoContext, Result};
use hypercontainer::initramfs::{CpioWriter, Metadata};
use hypercontainer_testhost::{Job, Mode, TestHost};
use std::io::{BufRead, BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// What `cargo xtask run` runs.
#[derive(Debug, Clone)]
pub enum Payload {
    /// Boots the guest kernel with a busybox initramfs under QEMU microvm
    /// and prints the guest's console.
    GuestBootDemo,
    /// An `[[example]]` of the `hypercontainer-examples` package.
    Example {
        /// The example's name.
        name: String,
        /// Its arguments.
        args: Vec<String>,
    },
}

/// The name that selects [`Payload::GuestBootDemo`]:
/// `cargo xtask run -- guest-boot-demo`.
pub const DEMO: &str = "guest-boot-demo";

/// The payload of a bare `cargo xtask run`: the SDK's `run` example on the
/// busybox test image.
pub fn default_payload() -> Result<Payload> {
    Ok(Payload::Example {
        name: "run".into(),
        args: vec![
            "--timings".into(),
            crate::agent::test_image_ref()?,
            "sh".into(),
            "-c".into(),
            "echo \"Hello from a HyperContainer sandbox: $(uname -sr), $(id -un) in $(pwd)\""
                .into(),
        ],
    })
}

/// Image archives named in an example's arguments
/// (`oci-archive:PATH[:TAG]`, `docker-archive:PATH[:REF]`), to pack into
/// the test host.
fn archives_in(args: &[String]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for a in args {
        let Some(rest) = a
            .strip_prefix("oci-archive:")
            .or_else(|| a.strip_prefix("docker-archive:"))
        else {
            continue;
        };
        let mut candidate = rest;
        loop {
            if Path::new(candidate).is_file() {
                out.push(PathBuf::from(candidate));
                break;
            }
            match candidate.rsplit_once(':') {
                Some((p, _)) => candidate = p,
                None => break,
            }
        }
    }
    out
}

/// Host directories an example's arguments name: Docker's bind volumes
/// (`-v HOST:GUEST[:OPTS]`, `--volume`, where HOST is a path: it starts
/// with `/` or `.`) and `dir:PATH` root filesystems. Each comes back with
/// the arguments rewritten to its absolute path, as it is shared into the
/// emulated host at that path.
fn shares_in(args: &[String]) -> Result<(Vec<String>, Vec<hypercontainer_testhost::Share>)> {
    let mut out = Vec::with_capacity(args.len());
    let mut shares = Vec::new();
    let mut named = false;
    let mut share = |dir: &str, ro: bool| -> Result<String> {
        if !Path::new(dir).is_dir() {
            // Not a directory here: the example reports it.
            return Ok(dir.to_string());
        }
        let s = hypercontainer_testhost::Share::new(dir, ro)?;
        let path = s.path.to_string_lossy().into_owned();
        if !shares.contains(&s) {
            shares.push(s);
        }
        Ok(path)
    };
    let mut volume_next = false;
    for a in args {
        if std::mem::take(&mut volume_next) {
            named |= is_named(a);
            out.push(bind_spec(a, &mut share)?);
            continue;
        }
        if a == "-v" || a == "--volume" {
            volume_next = true;
            out.push(a.clone());
        } else if let Some(v) = a.strip_prefix("--volume=") {
            named |= is_named(v);
            out.push(format!("--volume={}", bind_spec(v, &mut share)?));
        } else if let Some(p) = a.strip_prefix("dir:") {
            // The root filesystem is shared writable: the container may
            // write to it, as a runc bundle's may.
            out.push(format!("dir:{}", share(p, false)?));
        } else {
            out.push(a.clone());
        }
    }
    if named {
        // Named volumes live in this machine's data directory, shared in
        // writable at its own path, so that they outlive the emulated host.
        let data = match hypercontainer::volume::default_data_dir() {
            Ok(d) => d,
            Err(e) => return crate::util::fail(e.to_string()),
        };
        std::fs::create_dir_all(&data).ctx(|| format!("creating {}", data.display()))?;
        share(&data.to_string_lossy(), false)?;
    }
    Ok((out, shares))
}

/// Whether a `-v` value names a named volume (`NAME:DEST`).
fn is_named(spec: &str) -> bool {
    spec.split_once(':')
        .is_some_and(|(src, _)| !src.is_empty() && !src.contains('/') && src != ".")
}

/// A `-v` value with a host path made absolute (and shared); named volumes
/// pass unchanged.
fn bind_spec(spec: &str, share: &mut impl FnMut(&str, bool) -> Result<String>) -> Result<String> {
    // Without a `:` it is an anonymous volume at a guest path.
    let Some((host, rest)) = spec.split_once(':') else {
        return Ok(spec.to_string());
    };
    if !(host.starts_with('/') || host.starts_with('.')) {
        return Ok(spec.to_string());
    }
    // As `docker run -v` does, a missing host directory is created (here,
    // so that it is this machine's directory that is shared).
    if !Path::new(host).exists() {
        std::fs::create_dir_all(host).ctx(|| format!("creating {host}"))?;
    }
    let ro = rest
        .split(':')
        .nth(1)
        .is_some_and(|o| o.split(',').any(|o| o == "ro"));
    Ok(format!("{}:{rest}", share(host, ro)?))
}

/// Builds the examples with the dev profile instead of the release one
/// when set (the test command's main-job check reuses its test build).
pub const DEV_PROFILE_ENV: &str = "HYPERCONTAINER_RUN_DEV_PROFILE";

fn build_example(name: &str) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--package",
        "hypercontainer-examples",
        "--example",
        name,
    ]);
    if std::env::var_os(DEV_PROFILE_ENV).is_none() {
        // The VMM's device and vCPU threads, and the host side of the
        // agent protocol, are timed by the run: build them optimized.
        cmd.arg("--release");
    }
    let mut child = cmd
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped())
        .spawn()
        .ctx(|| "starting cargo build".into())?;
    let mut exe = None;
    for line in BufReader::new(child.stdout.take().expect("piped"))
        .lines()
        .map_while(|l| l.ok())
    {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if v["reason"] == "compiler-artifact" && v["target"]["name"] == name {
            if let Some(e) = v["executable"].as_str() {
                exe = Some(PathBuf::from(e));
            }
        }
    }
    let status = child.wait().ctx(|| "waiting for cargo build".into())?;
    if !status.success() {
        return fail(format!("building example {name} failed: {status}"));
    }
    exe.ok_or_else(|| {
        crate::util::Error::Failed(format!("cargo built no executable for example {name}"))
    })
}

/// Packs the demo's initramfs: busybox and an /init that greets and reboots.
fn demo_initramfs(path: &Path) -> Result<()> {
    let busybox = hypercontainer_testhost::which("busybox")
        .ok_or_else(|| crate::util::Error::Failed("busybox is not installed".into()))?;
    let file = std::fs::File::create(path).ctx(|| format!("creating {}", path.display()))?;
    let init = "#!/bin/busybox sh\n\
        /bin/busybox mount -t proc proc /proc\n\
        /bin/busybox echo \"Hello from the HyperContainer guest kernel $(/bin/busybox uname -r)\"\n\
        /bin/busybox echo \"uptime: $(/bin/busybox cut -d' ' -f1 /proc/uptime) s, memory: $(/bin/busybox grep MemTotal /proc/meminfo)\"\n\
        /bin/busybox reboot -f\n";
    let mut w = CpioWriter::new(BufWriter::new(file));
    let res = (|| {
        w.dir("proc", Metadata::new(0o755))?
            .char_device("dev/console", Metadata::new(0o600), 5, 1)?
            .file_from_path("bin/busybox", Metadata::new(0o755), &busybox)?
            .file("init", Metadata::new(0o755), init.as_bytes())?;
        Ok::<_, hypercontainer::initramfs::InitramfsError>(())
    })();
    res.and_then(|()| w.finish().map(drop)).map_err(|e| {
        crate::util::Error::Failed(format!(
            "packing the demo initramfs: {}",
            crate::util::report(&e)
        ))
    })
}

/// `cargo xtask run`.
pub fn cmd(args: &[String]) -> Result<()> {
    let args: Vec<String> = args.iter().skip_while(|a| *a == "--").cloned().collect();
    // Everything below needs the system packages (the test image needs
    // busybox, the emulated host QEMU): install them first.
    crate::deps::ensure_apt()?;
    let payload = match args.split_first() {
        Some((name, _)) if name == DEMO => Payload::GuestBootDemo,
        Some((name, rest)) => Payload::Example {
            name: name.clone(),
            args: rest.to_vec(),
        },
        None => default_payload()?,
    };
    let kernel: BuiltKernel = crate::kernel::ensure()?;
    let mode = if hypercontainer::host::detect_kvm() == hypercontainer::host::KvmKind::Hardware {
        Mode::Direct
    } else {
        Mode::Emulated(crate::assets::ensure()?)
    };
    let tmp = tempfile_dir()?;
    let mut builder = TestHost::builder()
        .mode(mode)
        .guest_kernel(&kernel.vmlinux, &kernel.bzimage)
        .echo(Some(""));
    let job = match payload {
        Payload::GuestBootDemo => {
            let initrd = tmp.join("demo.cpio");
            demo_initramfs(&initrd)?;
            let qemu = hypercontainer_testhost::which("qemu-system-x86_64").ok_or_else(|| {
                crate::util::Error::Failed("qemu-system-x86_64 is not installed".into())
            })?;
            let vmlinux = hypercontainer_testhost::inside_path(&kernel.vmlinux)?;
            let initrd_inside = hypercontainer_testhost::inside_path(&initrd)?;
            builder = builder.include(&initrd);
            Job::new("guest-boot-demo", qemu)
                .args(["-M", "microvm,x-option-roms=off,isa-serial=on,rtc=off"])
                .args(["-enable-kvm", "-cpu", "host", "-m", "128"])
                .args([
                    "-nodefaults",
                    "-no-user-config",
                    "-nographic",
                    "-serial",
                    "stdio",
                ])
                .arg("-kernel")
                .arg(vmlinux)
                .arg("-initrd")
                .arg(initrd_inside)
                .args([
                    "-append",
                    "console=ttyS0 reboot=t panic=-1 quiet",
                    "-no-reboot",
                ])
        }
        Payload::Example { name, args } => {
            let exe = build_example(&name)?;
            eprintln!("--- example: {name} {}", shell_words(&args));
            builder = crate::agent::with_sandbox_assets(builder)?;
            for a in archives_in(&args) {
                builder = builder.include(a);
            }
            let (args, shares) = shares_in(&args)?;
            for s in shares {
                builder = builder.share(s);
            }
            if let Ok(data) = hypercontainer::volume::default_data_dir() {
                builder = builder.env("HYPERCONTAINER_DATA_DIR", data.to_string_lossy());
            }
            // Its stdout and stderr reach ours unchanged, as `docker run`'s.
            Job::new(name, exe).args(args).passthrough(true)
        }
    };
    let report = builder.job(job).build()?.run();
    let _ = std::fs::remove_dir_all(&tmp);
    let report = report?;
    if let Some(b) = report.host_boot {
        eprintln!("(emulated KVM host booted in {:.1}s)", b.as_secs_f64());
    }
    let job = &report.jobs[0];
    if !job.success() {
        // The example's own exit code is ours, as `docker run` passes the
        // container's on.
        eprintln!("--- {} exited with {}", job.name, job.exit_code);
        std::process::exit(job.exit_code.clamp(1, 255));
    }
    Ok(())
}

/// `args` as one line a shell would split back into them.
fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("hc-xtask-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn bind_volumes_and_dir_roots_are_shared_at_absolute_paths() {
        let dir = tempfile::tempdir().unwrap();
        let d = std::fs::canonicalize(dir.path()).unwrap();
        let a = d.join("a");
        let b = d.join("b");
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        let (a, b) = (a.display().to_string(), b.display().to_string());
        let args = strings(&[
            "-v",
            &format!("{a}:/data:ro"),
            &format!("--volume={b}:/b"),
            "-v",
            "named:/n",
            "-v",
            &format!("{}:/x", d.join("missing").display()),
            &format!("dir:{b}"),
            "ls",
            "-v",
            "/etc",
        ]);
        std::env::set_var("HYPERCONTAINER_DATA_DIR", d.join("data"));
        let (out, shares) = shares_in(&args).unwrap();
        assert_eq!(out, args);
        let got: Vec<_> = shares
            .iter()
            .map(|s| (s.path.display().to_string(), s.read_only))
            .collect();
        let missing = d.join("missing").display().to_string();
        let data = d.join("data").display().to_string();
        assert_eq!(
            got,
            vec![(a, true), (b, false), (missing, false), (data, false)]
        );
    }
}
