//! Host directories inside the emulated host, at the same paths.
//!
//! A job that works on a host directory (`run -v HOST:GUEST`, a `dir:`
//! root filesystem) needs that directory, not a copy packed into the
//! initramfs: the job's writes must reach the host. Each [`Share`] is
//! served by the virtiofsd of QEMU's `qemu-system-common` package, one
//! process per share, over a vhost-user socket; the emulated host's QEMU
//! gets a `vhost-user-fs-pci` device for it (and its memory as a shared
//! memfd, which vhost-user needs), and the init script mounts the tag at
//! the directory's host path before the first job starts.
//!
//! In direct mode a share needs nothing: the job runs on the host.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{io_err, Error, KillOnDrop, Result};

/// Where Debian's `qemu-system-common` installs virtiofsd.
pub const VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";

/// A host directory shared into the emulated host at its own path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// The directory (absolute, symlinks resolved).
    pub path: PathBuf,
    /// Mounted read-only inside.
    pub read_only: bool,
}

impl Share {
    /// Shares `dir` (made absolute and resolved; it must exist).
    pub fn new(dir: impl AsRef<Path>, read_only: bool) -> Result<Self> {
        let dir = dir.as_ref();
        let path = std::fs::canonicalize(dir)
            .map_err(io_err(format!("resolving share {}", dir.display())))?;
        if !path.is_dir() {
            return Err(Error::Invalid(format!(
                "share {} is not a directory",
                path.display()
            )));
        }
        Ok(Share { path, read_only })
    }

    /// The virtio-fs tag of the `index`th share.
    pub fn tag(index: usize) -> String {
        format!("hcshare{index}")
    }
}

/// The virtiofsd processes of one run; they are killed when dropped.
pub(crate) struct Servers {
    _children: Vec<KillOnDrop>,
    /// Arguments for the emulated host's QEMU.
    pub qemu_args: Vec<OsString>,
}

/// Starts one virtiofsd per share with its socket in `dir`, and waits for
/// the sockets to appear.
pub(crate) fn serve(shares: &[Share], dir: &Path, memory_mib: u32) -> Result<Servers> {
    let mut servers = Servers {
        _children: Vec::new(),
        qemu_args: Vec::new(),
    };
    if shares.is_empty() {
        return Ok(servers);
    }
    if !Path::new(VIRTIOFSD).is_file() {
        return Err(Error::Invalid(format!(
            "{VIRTIOFSD} is missing: install qemu-system-common (it ships virtiofsd)"
        )));
    }
    let push = |args: &mut Vec<OsString>, a: &str, b: String| {
        args.push(a.into());
        args.push(b.into());
    };
    push(
        &mut servers.qemu_args,
        "-object",
        format!("memory-backend-memfd,id=hcmem,size={memory_mib}M,share=on"),
    );
    push(&mut servers.qemu_args, "-numa", "node,memdev=hcmem".into());
    let mut sockets = Vec::new();
    for (i, share) in shares.iter().enumerate() {
        let socket = dir.join(format!("virtiofsd-{i}.sock"));
        // Its log stays in the run's directory (it reports QEMU's normal
        // disconnect at power-off as an error); it is shown when it fails
        // to start.
        let log = dir.join(format!("virtiofsd-{i}.log"));
        let log_file =
            std::fs::File::create(&log).map_err(io_err(format!("creating {}", log.display())))?;
        let child = Command::new(VIRTIOFSD)
            .arg(format!("--socket-path={}", socket.display()))
            .arg("-o")
            .arg(format!("source={}", share.path.display()))
            .args(["-o", "cache=auto", "-o", "xattr", "-o", "log_level=err"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(io_err(format!("starting {VIRTIOFSD}")))?;
        servers._children.push(KillOnDrop(child));
        push(
            &mut servers.qemu_args,
            "-chardev",
            format!("socket,id=hcfs{i},path={}", socket.display()),
        );
        push(
            &mut servers.qemu_args,
            "-device",
            format!(
                "vhost-user-fs-pci,queue-size=1024,chardev=hcfs{i},tag={}",
                Share::tag(i)
            ),
        );
        sockets.push((socket, log));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for ((socket, log), child) in sockets.iter().zip(&mut servers._children) {
        while !socket.exists() {
            if let Ok(Some(status)) = child.0.try_wait() {
                let said = std::fs::read_to_string(log).unwrap_or_default();
                return Err(Error::Invalid(format!(
                    "{VIRTIOFSD} for {} exited at start: {status} (it must run as root): {}",
                    socket.display(),
                    said.trim()
                )));
            }
            if Instant::now() > deadline {
                return Err(Error::Invalid(format!(
                    "{VIRTIOFSD} did not create {} within 10 s",
                    socket.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(servers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_resolved_directories() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(Share::new(&file, false), Err(Error::Invalid(_))));
        assert!(Share::new(dir.path().join("missing"), false).is_err());
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        let share = Share::new(&link, true).unwrap();
        assert_eq!(share.path, std::fs::canonicalize(dir.path()).unwrap());
        assert!(share.read_only);
        assert_eq!(Share::tag(3), "hcshare3");
    }

    #[test]
    fn no_share_starts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let servers = serve(&[], dir.path(), 1024).unwrap();
        assert!(servers.qemu_args.is_empty());
    }
}
