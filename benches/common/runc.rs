//! The "fast as a container" peer: `runc run` of an OCI bundle made from
//! the same image, on the same host (inside the emulated KVM host where
//! there is no hardware KVM).
//!
//! The bundle is made once, as the SDK's image store is warm when it is
//! timed: the image unpacked by the SDK's own unpacker, and the
//! `config.json` that `runc spec` writes (runc's defaults: new PID, mount,
//! network, IPC, UTS and cgroup namespaces, its default capabilities, a
//! read-only root) with the command and `terminal: false` set. The
//! emulated host's root is its initramfs, where `pivot_root` is refused,
//! so runc runs with `--no-pivot` there (an `MS_MOVE` and `chroot`). cgroup2
//! is mounted at `/sys/fs/cgroup` when nothing is.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A runc and a bundle for one command.
pub struct Runc {
    runc: PathBuf,
    state: tempfile::TempDir,
    bundle: tempfile::TempDir,
    no_pivot: bool,
    next: std::cell::Cell<u32>,
}

/// Where runc may be: `HYPERCONTAINER_RUNC`, else Debian's paths.
fn find_runc() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HYPERCONTAINER_RUNC").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(p));
    }
    ["/usr/sbin/runc", "/usr/bin/runc"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{cmd:?}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

/// Mounts cgroup2 at `/sys/fs/cgroup` unless a hierarchy is there.
fn ensure_cgroup2() -> Result<(), String> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        return Ok(());
    }
    std::fs::create_dir_all(root).map_err(|e| format!("creating {}: {e}", root.display()))?;
    run(Command::new("mount")
        .args(["-t", "cgroup2", "none"])
        .arg(root))
}

impl Runc {
    /// A bundle of the `tag` image of oci-archive `archive` running `argv`,
    /// or why there can be none (no runc, no cgroup2).
    pub fn new(archive: &Path, tag: &str, argv: &[&str]) -> Result<Runc, String> {
        use hypercontainer_image::{ImageSource, Limits, Platform, UnpackOptions, WhiteoutMode};
        let runc = find_runc().ok_or("runc is not installed (set HYPERCONTAINER_RUNC)")?;
        ensure_cgroup2()?;
        let bundle = tempfile::Builder::new()
            .prefix("hc-runc-bundle")
            .tempdir()
            .map_err(|e| e.to_string())?;
        ImageSource::OciArchive {
            path: archive.to_owned(),
        }
        .open(Some(tag), &Platform::default(), &Limits::default())
        .map_err(|e| format!("opening {}: {e}", archive.display()))?
        .unpack_rootfs(
            &bundle.path().join("rootfs"),
            &UnpackOptions::new(WhiteoutMode::Apply),
        )
        .map_err(|e| format!("unpacking the image: {e}"))?;
        run(Command::new(&runc)
            .arg("spec")
            .arg("--bundle")
            .arg(bundle.path()))?;
        let path = bundle.path().join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
        let mut config: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| e.to_string())?;
        config["process"]["terminal"] = serde_json::json!(false);
        config["process"]["args"] = serde_json::json!(argv);
        config["root"]["path"] = serde_json::json!("rootfs");
        std::fs::write(&path, config.to_string()).map_err(|e| e.to_string())?;
        let no_pivot = std::fs::read_to_string("/proc/mounts")
            .map(|m| m.lines().any(|l| l.starts_with("rootfs / ")))
            .unwrap_or(false);
        Ok(Runc {
            runc,
            state: tempfile::Builder::new()
                .prefix("hc-runc-state")
                .tempdir()
                .map_err(|e| e.to_string())?,
            bundle,
            no_pivot,
            next: std::cell::Cell::new(0),
        })
    }

    /// One `runc run` to its first stdout byte (then to its exit).
    pub fn cold_start(&self) -> Duration {
        let n = self.next.get();
        self.next.set(n + 1);
        let id = format!("hc-bench-{}-{n}", std::process::id());
        let t0 = Instant::now();
        let mut cmd = Command::new(&self.runc);
        cmd.arg("--root").arg(self.state.path()).arg("run");
        if self.no_pivot {
            cmd.arg("--no-pivot");
        }
        let mut child = cmd
            .arg("--bundle")
            .arg(self.bundle.path())
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning runc");
        let mut b = [0u8; 1];
        child
            .stdout
            .take()
            .expect("piped")
            .read_exact(&mut b)
            .expect("runc run printed nothing");
        let took = t0.elapsed();
        let status = child.wait().expect("waiting for runc");
        assert!(status.success(), "runc run: {status}");
        took
    }
}
