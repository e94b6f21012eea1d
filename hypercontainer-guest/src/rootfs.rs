//! Boot-time mounts and the container's root filesystem: layer disks found
//! by serial, an overlay with a writable upper, and the files a runtime
//! writes in /etc.

use std::fs;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hypercontainer_protocol::{share_mount_point, Rootfs, Upper, SHARES_DIR};

use crate::sys;

/// Errors of root filesystem setup.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed.
    #[error("{what}")]
    Sys {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// No block device has the requested serial.
    #[error("no disk with serial {0:?}")]
    NoDisk(String),
    /// A layer disk holds neither EROFS nor ext4.
    #[error("cannot mount disk {serial:?} ({device}) read-only as erofs or ext4")]
    BadLayer {
        /// Serial of the disk.
        serial: String,
        /// Its device node.
        device: String,
        /// The error of the last attempt.
        #[source]
        source: io::Error,
    },
    /// A rootfs path is not absolute.
    #[error("rootfs directory {0:?} is not an absolute path")]
    NotAbsolute(String),
    /// A share tag is empty, too long, or holds a character that cannot be
    /// part of a path component.
    #[error("virtio-fs tag {0:?} is not a valid share name")]
    BadShareTag(String),
    /// An overlay root names no lower directory, or more than
    /// [`hypercontainer_protocol::MAX_LOWERS`].
    #[error("an overlay root needs 1 to {max} lower directories, not {0}", max = hypercontainer_protocol::MAX_LOWERS)]
    LowerCount(usize),
    /// A lower directory is not absolute, or holds a character that
    /// overlayfs's option string cannot carry (`:`, `,`, `\\`).
    #[error("overlay lower directory {0:?} must be an absolute path without ':', ',' or '\\'")]
    BadLower(String),
    /// The overlay's options do not fit in the page the kernel reads them
    /// from (too many or too long lower paths).
    #[error("the overlay options are {0} bytes, more than the kernel's 4095: use fewer layers")]
    OverlayOptionsTooLong(usize),
    /// A layer's disk serial cannot name a directory.
    #[error("layer serial {0:?} cannot name a directory")]
    BadLayerSerial(String),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, Error>;

trait Ctx<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Ctx<T> for io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Sys {
            what: what(),
            source,
        })
    }
}

fn mount(
    src: &str,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<()> {
    sys::mount(src, target, fstype, flags, data)
        .ctx(|| format!("mounting {src} on {}", target.display()))
}

fn mkdir_p(p: &Path) -> Result<()> {
    fs::create_dir_all(p).ctx(|| format!("creating {}", p.display()))
}

/// Where the agent assembles each container's overlay: a tmpfs per
/// container at `CONTAINERS_DIR/<id>` (beside [`SHARES_DIR`]).
const CONTAINERS_DIR: &str = "/run/hypercontainer/containers";

/// Where each layer disk is mounted, once for all containers that use it
/// (`LAYERS_DIR/<serial>`): their overlays share its page cache.
const LAYERS_DIR: &str = "/run/hypercontainer/layers";

/// First steps of the agent as PID 1 of a VM: leave the initramfs for a
/// tmpfs root (so that `pivot_root` works later: the initramfs itself can
/// never be pivoted away from), then mount /proc, /sys, /dev, /dev/pts,
/// /dev/shm, /tmp and /run.
pub fn vm_early_mounts() -> Result<()> {
    let stage = Path::new("/stage");
    mkdir_p(stage)?;
    mount("tmpfs", stage, Some("tmpfs"), 0, Some("mode=755"))?;
    std::env::set_current_dir(stage).ctx(|| "entering the stage root".into())?;
    mount(".", Path::new("/"), None, libc::MS_MOVE, None)?;
    sys::chroot(Path::new(".")).ctx(|| "chroot into the stage root".into())?;
    std::env::set_current_dir("/").ctx(|| "chdir /".into())?;

    let nosuid = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    for (src, dir, fstype, flags, data) in [
        ("proc", "/proc", "proc", nosuid, None),
        ("sysfs", "/sys", "sysfs", nosuid, None),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            libc::MS_NOSUID,
            Some("mode=755"),
        ),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some("mode=620,ptmxmode=666"),
        ),
        (
            "shm",
            "/dev/shm",
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            Some("mode=1777"),
        ),
        (
            "tmpfs",
            "/tmp",
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            Some("mode=1777"),
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            Some("mode=755"),
        ),
    ] {
        mkdir_p(Path::new(dir))?;
        mount(src, Path::new(dir), Some(fstype), flags, data)?;
    }
    Ok(())
}

/// The device node of the block device with serial `serial`, waiting up to
/// a second for it to appear.
fn find_disk(serial: &str) -> Result<PathBuf> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        if let Ok(entries) = fs::read_dir("/sys/block") {
            for e in entries.flatten() {
                let s = fs::read_to_string(e.path().join("serial")).unwrap_or_default();
                if s.trim_end_matches(['\n', '\0']) == serial {
                    let dev = Path::new("/dev").join(e.file_name());
                    if dev.exists() {
                        return Ok(dev);
                    }
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(Error::NoDisk(serial.to_string()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn mount_layer(serial: &str, target: &Path) -> Result<()> {
    let dev = find_disk(serial)?;
    crate::trace::trace!("layer {serial} is {}", dev.display());
    let dev_s = dev.to_string_lossy().into_owned();
    let flags = libc::MS_RDONLY | libc::MS_NODEV | libc::MS_NOSUID;
    let mut last = None;
    for (fstype, data) in [("erofs", None), ("ext4", Some("noload"))] {
        match sys::mount(&dev_s, target, Some(fstype), flags, data) {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(Error::BadLayer {
        serial: serial.to_string(),
        device: dev_s,
        source: last.unwrap_or_else(|| io::ErrorKind::Other.into()),
    })
}

/// Container `id`'s work directory: a fresh tmpfs at
/// `CONTAINERS_DIR/<id>`. [`release`] undoes it with everything below.
pub fn work_dir(id: u32) -> Result<PathBuf> {
    let work = Path::new(CONTAINERS_DIR).join(id.to_string());
    mkdir_p(&work)?;
    mount("tmpfs", &work, Some("tmpfs"), 0, Some("mode=700"))?;
    Ok(work)
}

/// Detaches a container's work directory and every mount below it (its
/// overlay root, its upper disk), then removes the directory. Shared
/// layer mounts stay.
pub fn release(work: &Path) {
    if let Err(e) = sys::umount2(work, libc::MNT_DETACH) {
        eprintln!("hypercontainer-agent: unmounting {}: {e}", work.display());
    }
    let _ = fs::remove_dir(work);
}

/// Mounts the layer disks (each once per pod, under [`LAYERS_DIR`]);
/// returns their mount points, lowest first (an empty directory of `work`
/// when there are none).
fn mount_layers(work: &Path, layers: &[String]) -> Result<Vec<PathBuf>> {
    let mut lower = Vec::new();
    for serial in layers {
        if serial.is_empty() || serial.contains('/') || serial == "." || serial == ".." {
            return Err(Error::BadLayerSerial(serial.clone()));
        }
        let dir = Path::new(LAYERS_DIR).join(serial);
        mkdir_p(&dir)?;
        if !is_mount_point(&dir) {
            mount_layer(serial, &dir)?;
            crate::trace::trace!("layer {serial} mounted");
        }
        lower.push(dir);
    }
    if lower.is_empty() {
        let empty = work.join("empty");
        mkdir_p(&empty)?;
        lower.push(empty);
    }
    Ok(lower)
}

/// Mounts an overlay of `lower` (lowest first) under `upper` at
/// `work/root`, and returns that path.
fn overlay(work: &Path, lower: &[PathBuf], upper: &Upper) -> Result<PathBuf> {
    let upper_base = match upper {
        Upper::Tmpfs => work.join("tmp-upper"),
        Upper::Disk { serial } => {
            let dir = work.join("upper-disk");
            mkdir_p(&dir)?;
            let dev = find_disk(serial)?;
            mount(
                &dev.to_string_lossy(),
                &dir,
                Some("ext4"),
                libc::MS_NODEV,
                None,
            )?;
            dir
        }
    };
    let (upperdir, workdir) = (upper_base.join("upper"), upper_base.join("work"));
    mkdir_p(&upperdir)?;
    mkdir_p(&workdir)?;
    // overlayfs lists the top layer first.
    let lowerdir = lower
        .iter()
        .rev()
        .map(|p| p.to_string_lossy())
        .collect::<Vec<_>>()
        .join(":");
    let root = work.join("root");
    mkdir_p(&root)?;
    let opts = format!(
        "lowerdir={lowerdir},upperdir={},workdir={}",
        upperdir.display(),
        workdir.display()
    );
    if opts.len() > 4095 {
        return Err(Error::OverlayOptionsTooLong(opts.len()));
    }
    mount("overlay", &root, Some("overlay"), 0, Some(&opts))?;
    crate::trace::trace!("overlay mounted");
    Ok(root)
}

/// Whether `p` is the root of a mount (its device differs from its
/// parent's).
fn is_mount_point(p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(me), Some(Ok(parent))) = (fs::metadata(p), p.parent().map(fs::metadata)) else {
        return false;
    };
    me.dev() != parent.dev()
}

/// Mounts each virtio-fs device of `tags` at its
/// [`share_mount_point`], before the root filesystem is built. A tag that
/// is already mounted there is left alone (an exec or a second container
/// of the same VM).
pub fn mount_shares(tags: &[String]) -> Result<()> {
    for tag in tags {
        let ok = !tag.is_empty()
            && tag.len() <= 36
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && tag != "."
            && tag != "..";
        if !ok {
            return Err(Error::BadShareTag(tag.clone()));
        }
        let dir = PathBuf::from(share_mount_point(tag));
        mkdir_p(Path::new(SHARES_DIR))?;
        mkdir_p(&dir)?;
        if is_mount_point(&dir) {
            continue;
        }
        mount(
            tag,
            &dir,
            Some("virtiofs"),
            libc::MS_NODEV | libc::MS_NOSUID,
            None,
        )?;
        crate::trace::trace!("share {tag} mounted");
    }
    Ok(())
}

/// Creates `p` as a directory if nothing is there; a symlink or other entry
/// from the image is replaced, so that writes never follow image symlinks.
fn ensure_dir(p: &Path) -> Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => {
            fs::remove_file(p).ctx(|| format!("removing {}", p.display()))?;
            mkdir_p(p)
        }
        Err(_) => mkdir_p(p),
    }
}

/// Builds the root filesystem described by `spec` in the agent's own mount
/// namespace, under the container's `work` directory, and returns its path: the overlay of the layer disks, the
/// given directory, or an overlay over it. The container's mounts and `pivot_root` come later, in
/// its own mount namespace (see [`crate::container::mounts`]).
pub fn prepare(spec: &Rootfs, work: &Path) -> Result<PathBuf> {
    match spec {
        Rootfs::Directory { path } => {
            let p = PathBuf::from(path);
            if !p.is_absolute() {
                return Err(Error::NotAbsolute(path.clone()));
            }
            Ok(p)
        }
        Rootfs::Layers { layers, upper } => {
            let lower = mount_layers(work, layers)?;
            overlay(work, &lower, upper)
        }
        Rootfs::Overlay { lowers, upper } => {
            if lowers.is_empty() || lowers.len() > hypercontainer_protocol::MAX_LOWERS {
                return Err(Error::LowerCount(lowers.len()));
            }
            let mut dirs = Vec::with_capacity(lowers.len());
            for lower in lowers {
                let p = PathBuf::from(lower);
                if !p.is_absolute() || lower.contains([':', ',', '\\']) {
                    return Err(Error::BadLower(lower.clone()));
                }
                dirs.push(p);
            }
            overlay(work, &dirs, upper)
        }
    }
}

/// Writes a file of /etc the way a runtime does: replaces symlinks from the
/// image instead of following them.
fn write_etc(name: &str, contents: &str) -> Result<()> {
    let etc = Path::new("/etc");
    // After pivot_root, following an image's /etc symlink stays inside the
    // container; only the files themselves are never followed.
    if !fs::metadata(etc).is_ok_and(|m| m.is_dir()) {
        ensure_dir(etc)?;
    }
    let p = etc.join(name);
    if fs::symlink_metadata(&p).is_ok_and(|m| !m.is_file()) {
        fs::remove_file(&p).ctx(|| format!("removing {}", p.display()))?;
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&p)
        .ctx(|| format!("writing {}", p.display()))?;
    io::Write::write_all(&mut f, contents.as_bytes()).ctx(|| format!("writing {}", p.display()))
}

/// Sets the host name and writes /etc/hostname, /etc/hosts and
/// /etc/resolv.conf (in the container's namespaces, after `pivot_root`).
pub fn write_identity(hostname: &str, hosts: Option<&str>, resolv: Option<&str>) -> Result<()> {
    if !hostname.is_empty() {
        sys::sethostname(hostname).ctx(|| format!("setting the host name to {hostname:?}"))?;
        write_etc("hostname", &format!("{hostname}\n"))?;
    }
    if let Some(h) = hosts {
        write_etc("hosts", h)?;
    }
    if let Some(r) = resolv {
        write_etc("resolv.conf", r)?;
    }
    Ok(())
}
