//! The container's view of the filesystem, set up in its own mount
//! namespace: the spec's mounts inside the root, `/dev`'s default devices,
//! sysctls, masked and read-only paths, `pivot_root`, the files a runtime
//! writes in `/etc`, and a read-only root when asked.
//!
//! [`RootPlan::from_spec`] runs in the agent before the fork and checks
//! everything it can (option names, paths, sysctl names); [`RootPlan::enter`]
//! runs in the child, which only makes system calls. Every mount target is
//! resolved with `openat2(RESOLVE_IN_ROOT)` from a descriptor of the root and
//! mounted through its `/proc/self/fd/N` name, so an image's symlinks
//! (`/dev -> /host`, `/proc/sys -> ../..`) can never move a mount outside
//! the container's root. Missing targets are created the same way.

use std::ffi::OsStr;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use hypercontainer_protocol::oci;

use crate::sys;

/// Errors of the container's mount setup.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A spec entry is invalid (bad destination, unknown option, bad sysctl).
    #[error("invalid spec: {0}")]
    Spec(String),
    /// A system call failed.
    #[error("{what}")]
    Sys {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, Error>;

fn sys_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Sys { what, source }
}

/// One mount of the spec, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MountOp {
    /// Destination relative to the root, normalized (no `.`/`..`).
    dest: PathBuf,
    source: String,
    fstype: Option<String>,
    flags: libc::c_ulong,
    /// Propagation flags applied after the mount (`MS_SHARED`, ...).
    propagation: libc::c_ulong,
    data: String,
    /// A bind mount of something that is not a directory: its target is
    /// created as an empty file.
    file_target: bool,
}

/// A device node to create in the container's `/dev`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DeviceNode {
    path: PathBuf,
    kind: libc::mode_t,
    major: u32,
    minor: u32,
    mode: u32,
    uid: u32,
    gid: u32,
}

/// The files written into the container's `/etc`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcFiles {
    /// Host name (`sethostname` in the container's UTS namespace and
    /// `/etc/hostname`); empty leaves both unchanged.
    pub hostname: String,
    /// `/etc/hosts`, if given.
    pub hosts: Option<String>,
    /// `/etc/resolv.conf`, if given.
    pub resolv_conf: Option<String>,
}

/// Everything the child does to its mount namespace, prepared before fork.
#[derive(Debug, Clone)]
pub struct RootPlan {
    root: PathBuf,
    readonly: bool,
    mounts: Vec<MountOp>,
    devices: Vec<DeviceNode>,
    sysctl: Vec<(PathBuf, String)>,
    masked: Vec<PathBuf>,
    readonly_paths: Vec<PathBuf>,
    etc: EtcFiles,
}

/// Devices every container gets, as runc creates them: (name, major, minor).
const DEFAULT_DEVICES: [(&str, u32, u32); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Symlinks of a container's `/dev`.
const DEV_LINKS: [(&str, &str); 5] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
];

/// `dest` as a path relative to the root: absolute in the spec, no `..`
/// that would climb above the root.
fn relative_dest(dest: &Path) -> Result<PathBuf> {
    if !dest.is_absolute() {
        return Err(Error::Spec(format!(
            "mount destination {} is not absolute",
            dest.display()
        )));
    }
    let mut out = PathBuf::new();
    for c in dest.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                if !out.pop() {
                    return Err(Error::Spec(format!(
                        "path {} climbs above the root",
                        dest.display()
                    )));
                }
            }
            Component::Prefix(_) => unreachable!("no prefixes on Linux"),
        }
    }
    Ok(out)
}

/// Mount flags of an OCI mount option, as `mount(8)` names them:
/// (set, clear).
fn option_flag(opt: &str) -> Option<(libc::c_ulong, libc::c_ulong)> {
    use libc::*;
    Some(match opt {
        "ro" => (MS_RDONLY, 0),
        "rw" => (0, MS_RDONLY),
        "nosuid" => (MS_NOSUID, 0),
        "suid" => (0, MS_NOSUID),
        "nodev" => (MS_NODEV, 0),
        "dev" => (0, MS_NODEV),
        "noexec" => (MS_NOEXEC, 0),
        "exec" => (0, MS_NOEXEC),
        "sync" => (MS_SYNCHRONOUS, 0),
        "async" => (0, MS_SYNCHRONOUS),
        "dirsync" => (MS_DIRSYNC, 0),
        "remount" => (MS_REMOUNT, 0),
        "mand" => (MS_MANDLOCK, 0),
        "nomand" => (0, MS_MANDLOCK),
        "atime" => (0, MS_NOATIME),
        "noatime" => (MS_NOATIME, 0),
        "diratime" => (0, MS_NODIRATIME),
        "nodiratime" => (MS_NODIRATIME, 0),
        "relatime" => (MS_RELATIME, 0),
        "norelatime" => (0, MS_RELATIME),
        "strictatime" => (MS_STRICTATIME, 0),
        "nostrictatime" => (0, MS_STRICTATIME),
        "bind" => (MS_BIND, 0),
        "rbind" => (MS_BIND | MS_REC, 0),
        "defaults" => (0, 0),
        _ => return None,
    })
}

fn propagation_flag(opt: &str) -> Option<libc::c_ulong> {
    use libc::*;
    Some(match opt {
        "private" => MS_PRIVATE,
        "rprivate" => MS_PRIVATE | MS_REC,
        "shared" => MS_SHARED,
        "rshared" => MS_SHARED | MS_REC,
        "slave" => MS_SLAVE,
        "rslave" => MS_SLAVE | MS_REC,
        "unbindable" => MS_UNBINDABLE,
        "runbindable" => MS_UNBINDABLE | MS_REC,
        _ => return None,
    })
}

fn mount_op(m: &oci::Mount) -> Result<MountOp> {
    let dest = relative_dest(m.destination())?;
    let mut flags = 0;
    let mut propagation = 0;
    let mut data = Vec::new();
    for opt in m.options().iter().flatten() {
        if let Some((set, clear)) = option_flag(opt) {
            flags = (flags | set) & !clear;
        } else if let Some(p) = propagation_flag(opt) {
            propagation |= p;
        } else if opt.contains(',') || opt.contains('\0') {
            return Err(Error::Spec(format!("mount option {opt:?} is malformed")));
        } else {
            // Filesystem-specific (mode=755, size=64m, newinstance, ...).
            data.push(opt.as_str());
        }
    }
    let source = m
        .source()
        .as_ref()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "none".into());
    let mut fstype = m.typ().clone();
    if flags & libc::MS_BIND != 0 || fstype.as_deref() == Some("bind") {
        flags |= libc::MS_BIND;
        fstype = None;
        if !Path::new(&source).is_absolute() {
            return Err(Error::Spec(format!(
                "bind mount source {source:?} of {} is not absolute",
                m.destination().display()
            )));
        }
    }
    // The guest runs cgroup v2 only.
    if fstype.as_deref() == Some("cgroup") {
        fstype = Some("cgroup2".into());
    }
    if fstype.is_none() && flags & libc::MS_BIND == 0 {
        return Err(Error::Spec(format!(
            "mount at {} has neither a type nor a bind option",
            m.destination().display()
        )));
    }
    let file_target =
        flags & libc::MS_BIND != 0 && std::fs::metadata(&source).is_ok_and(|md| !md.is_dir());
    Ok(MountOp {
        dest,
        source,
        fstype,
        flags,
        propagation,
        data: data.join(","),
        file_target,
    })
}

fn device_node(d: &oci::LinuxDevice) -> Result<DeviceNode> {
    let kind = match d.typ() {
        oci::LinuxDeviceType::C | oci::LinuxDeviceType::U => libc::S_IFCHR,
        oci::LinuxDeviceType::B => libc::S_IFBLK,
        oci::LinuxDeviceType::P => libc::S_IFIFO,
        other => {
            return Err(Error::Spec(format!(
                "device {} has unsupported type {other:?}",
                d.path().display()
            )))
        }
    };
    let rel = relative_dest(d.path())?;
    if !rel.starts_with("dev") {
        return Err(Error::Spec(format!(
            "device {} is not under /dev",
            d.path().display()
        )));
    }
    Ok(DeviceNode {
        path: rel,
        kind,
        major: d.major() as u32,
        minor: d.minor() as u32,
        mode: d.file_mode().unwrap_or(0o666) & 0o7777,
        uid: d.uid().unwrap_or(0),
        gid: d.gid().unwrap_or(0),
    })
}

/// A sysctl key as its `/proc/sys` path (`net.ipv4.ip_forward` ->
/// `proc/sys/net/ipv4/ip_forward`), refusing anything that could name
/// another file.
fn sysctl_path(key: &str) -> Result<PathBuf> {
    let ok = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
        && key
            .split(['.', '/'])
            .all(|part| !part.is_empty() && part != "..");
    if !ok {
        return Err(Error::Spec(format!("invalid sysctl name {key:?}")));
    }
    Ok(Path::new("proc/sys").join(key.replace('.', "/")))
}

impl RootPlan {
    /// Checks the spec's filesystem settings for a container whose root is
    /// `root` (an absolute path in the agent's view).
    pub fn from_spec(root: &Path, spec: &oci::Spec, etc: EtcFiles) -> Result<Self> {
        let mounts = spec
            .mounts()
            .iter()
            .flatten()
            .map(mount_op)
            .collect::<Result<Vec<_>>>()?;
        let linux = spec.linux().as_ref();
        let mut devices = DEFAULT_DEVICES
            .iter()
            .map(|(name, major, minor)| DeviceNode {
                path: Path::new("dev").join(name),
                kind: libc::S_IFCHR,
                major: *major,
                minor: *minor,
                mode: 0o666,
                uid: 0,
                gid: 0,
            })
            .collect::<Vec<_>>();
        for d in linux
            .and_then(|l| l.devices().as_ref())
            .into_iter()
            .flatten()
        {
            let node = device_node(d)?;
            devices.retain(|old| old.path != node.path);
            devices.push(node);
        }
        let mut sysctl = Vec::new();
        for (k, v) in linux
            .and_then(|l| l.sysctl().as_ref())
            .into_iter()
            .flatten()
        {
            if v.contains('\0') {
                return Err(Error::Spec(format!("sysctl {k} has a NUL byte")));
            }
            sysctl.push((sysctl_path(k)?, v.clone()));
        }
        sysctl.sort();
        let paths = |list: Option<&Vec<String>>| -> Result<Vec<PathBuf>> {
            list.into_iter()
                .flatten()
                .map(|p| relative_dest(Path::new(p)))
                .collect()
        };
        Ok(Self {
            root: root.to_path_buf(),
            readonly: spec
                .root()
                .as_ref()
                .and_then(|r| r.readonly())
                .unwrap_or(false),
            mounts,
            devices,
            sysctl,
            masked: paths(linux.and_then(|l| l.masked_paths().as_ref()))?,
            readonly_paths: paths(linux.and_then(|l| l.readonly_paths().as_ref()))?,
            etc,
        })
    }

    /// In the child, in a fresh mount namespace: mounts, devices, sysctls,
    /// masked and read-only paths, then `pivot_root` into the root, the
    /// `/etc` files and host name, and the read-only root.
    pub fn enter(&self) -> Result<()> {
        sys::mount_flags(Path::new("/"), libc::MS_REC | libc::MS_SLAVE)
            .map_err(sys_err("making the mounts private to the container"))?;
        let root_s = self.root.to_string_lossy();
        // A bind mount makes the root a mount point pivot_root accepts.
        sys::mount(
            &root_s,
            &self.root,
            None,
            libc::MS_BIND | libc::MS_REC,
            None,
        )
        .map_err(sys_err(format!("binding the root {root_s}")))?;
        let root = sys::open_dir_path(&self.root).map_err(sys_err("opening the root"))?;
        for m in &self.mounts {
            self.mount_one(&root, m)?;
        }
        for (path, value) in &self.sysctl {
            let full = self.root.join(path);
            std::fs::write(&full, value)
                .map_err(sys_err(format!("setting sysctl {}", path.display())))?;
        }
        for p in &self.masked {
            mask(&root, p)?;
        }
        for p in &self.readonly_paths {
            make_readonly(&root, p)?;
        }
        std::env::set_current_dir(&self.root).map_err(sys_err("entering the root"))?;
        sys::pivot_root(Path::new("."), Path::new(".")).map_err(sys_err("pivot_root"))?;
        // The old root is now stacked under the new one at "/": detach it.
        sys::umount2(Path::new("."), libc::MNT_DETACH)
            .map_err(sys_err("detaching the old root"))?;
        std::env::set_current_dir("/").map_err(sys_err("chdir /"))?;
        crate::rootfs::write_identity(
            &self.etc.hostname,
            self.etc.hosts.as_deref(),
            self.etc.resolv_conf.as_deref(),
        )
        .map_err(|e| Error::Sys {
            what: "writing the container's identity files".into(),
            source: io::Error::other(crate::agent::error_chain(&e)),
        })?;
        if self.readonly {
            let keep = sys::mount_flags_of(Path::new("/")).map_err(sys_err("statfs /"))?
                & (libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC);
            sys::mount_flags(
                Path::new("/"),
                libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | keep,
            )
            .map_err(sys_err("making the root read-only"))?;
        }
        Ok(())
    }

    fn mount_one(&self, root: &OwnedFd, m: &MountOp) -> Result<()> {
        let what = || {
            format!(
                "mounting {} on {}",
                m.source,
                Path::new("/").join(&m.dest).display()
            )
        };
        let target = resolve_create(root, &m.dest, m.file_target).map_err(sys_err(what()))?;
        let target_path = sys::fd_path(&target);
        let data = (!m.data.is_empty()).then_some(m.data.as_str());
        let base = m.flags & !(libc::MS_RDONLY | libc::MS_REMOUNT);
        if m.flags & libc::MS_BIND != 0 {
            sys::mount(&m.source, &target_path, None, base, None).map_err(sys_err(what()))?;
            // A bind mount takes its flags only from a remount.
            let extra = m.flags & !(libc::MS_BIND | libc::MS_REC);
            if extra != 0 {
                let again =
                    resolve_create(root, &m.dest, m.file_target).map_err(sys_err(what()))?;
                sys::mount_flags(
                    &sys::fd_path(&again),
                    libc::MS_REMOUNT | libc::MS_BIND | extra,
                )
                .map_err(sys_err(what()))?;
            }
        } else {
            sys::mount(&m.source, &target_path, m.fstype.as_deref(), m.flags, data)
                .map_err(sys_err(what()))?;
        }
        if m.propagation != 0 {
            let again = resolve_create(root, &m.dest, m.file_target).map_err(sys_err(what()))?;
            sys::mount_flags(&sys::fd_path(&again), m.propagation).map_err(sys_err(what()))?;
        }
        if m.dest == Path::new("dev") && m.fstype.as_deref() == Some("tmpfs") {
            self.populate_dev(root)?;
        }
        Ok(())
    }

    /// Device nodes and symlinks of a fresh `/dev` tmpfs.
    fn populate_dev(&self, root: &OwnedFd) -> Result<()> {
        for d in &self.devices {
            let parent = d.path.parent().unwrap_or(Path::new("dev"));
            let dir = resolve_create(root, parent, false)
                .map_err(sys_err(format!("creating /{}", parent.display())))?;
            let name = d.path.file_name().unwrap_or_default();
            let full = sys::fd_path(&dir).join(name);
            let what = format!("creating device /{}", d.path.display());
            sys::mknod(&full, d.kind, d.mode, d.major, d.minor).map_err(sys_err(what.clone()))?;
            // mknod is subject to the umask; make the mode exact.
            std::fs::set_permissions(&full, std::os::unix::fs::PermissionsExt::from_mode(d.mode))
                .map_err(sys_err(what.clone()))?;
            std::os::unix::fs::chown(&full, Some(d.uid), Some(d.gid)).map_err(sys_err(what))?;
        }
        let dev = resolve_create(root, Path::new("dev"), false).map_err(sys_err("opening /dev"))?;
        for (link, target) in DEV_LINKS {
            let p = sys::fd_path(&dev).join(link);
            match std::os::unix::fs::symlink(target, &p) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(sys_err(format!("linking /dev/{link}"))(e))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Opens `rel` below `root` (`O_PATH`), creating missing components as
/// directories (the last one as an empty file when `file`), every step
/// resolved inside the root.
fn resolve_create(root: &OwnedFd, rel: &Path, file: bool) -> io::Result<OwnedFd> {
    let mut prefix = PathBuf::new();
    let mut fd = sys::open_in_root(root, Path::new("."), libc::O_PATH, 0, 0)?;
    let comps: Vec<&OsStr> = rel.iter().collect();
    for (i, comp) in comps.iter().enumerate() {
        prefix.push(comp);
        match sys::open_in_root(root, &prefix, libc::O_PATH, 0, 0) {
            Ok(next) => fd = next,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let name = Path::new(comp);
                if comp.as_bytes().contains(&b'/') {
                    return Err(io::ErrorKind::InvalidInput.into());
                }
                if file && i + 1 == comps.len() {
                    sys::touch_at(&fd, name, 0o644)?;
                } else {
                    match sys::mkdirat(&fd, name, 0o755) {
                        Err(e) if e.raw_os_error() != Some(libc::EEXIST) => return Err(e),
                        _ => {}
                    }
                }
                fd = sys::open_in_root(root, &prefix, libc::O_PATH, 0, 0)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(fd)
}

/// Hides `rel`: a read-only empty tmpfs over a directory, `/dev/null` over
/// anything else; a path that does not exist is skipped.
fn mask(root: &OwnedFd, rel: &Path) -> Result<()> {
    let what = || format!("masking /{}", rel.display());
    let target = match sys::open_in_root(root, rel, libc::O_PATH, 0, 0) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(sys_err(what())(e)),
    };
    let path = sys::fd_path(&target);
    let is_dir = std::fs::metadata(&path).map_err(sys_err(what()))?.is_dir();
    if is_dir {
        sys::mount(
            "tmpfs",
            &path,
            Some("tmpfs"),
            libc::MS_RDONLY,
            Some("size=0"),
        )
    } else {
        sys::mount("/dev/null", &path, None, libc::MS_BIND, None)
    }
    .map_err(sys_err(what()))
}

/// Makes `rel` read-only (a bind mount onto itself, remounted read-only); a
/// path that does not exist is skipped.
fn make_readonly(root: &OwnedFd, rel: &Path) -> Result<()> {
    let what = || format!("making /{} read-only", rel.display());
    let target = match sys::open_in_root(root, rel, libc::O_PATH, 0, 0) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(sys_err(what())(e)),
    };
    let path = sys::fd_path(&target);
    sys::mount(
        &path.to_string_lossy(),
        &path,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )
    .map_err(sys_err(what()))?;
    let again = sys::open_in_root(root, rel, libc::O_PATH, 0, 0).map_err(sys_err(what()))?;
    let again = sys::fd_path(&again);
    let keep = sys::mount_flags_of(&again).map_err(sys_err(what()))?
        & (libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC);
    sys::mount_flags(
        &again,
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | keep,
    )
    .map_err(sys_err(what()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> oci::Mount {
        let mut m = oci::Mount::default();
        m.set_destination(dest.into())
            .set_typ(Some(typ.into()))
            .set_source(Some(source.into()))
            .set_options(Some(options.iter().map(|s| s.to_string()).collect()));
        m
    }

    #[test]
    fn destinations_stay_below_the_root() {
        assert_eq!(
            relative_dest(Path::new("/a/./b/../c")).unwrap(),
            Path::new("a/c")
        );
        assert_eq!(relative_dest(Path::new("/")).unwrap(), Path::new(""));
        assert!(relative_dest(Path::new("/a/../../etc")).is_err());
        assert!(relative_dest(Path::new("relative")).is_err());
    }

    #[test]
    fn options_become_flags_and_data() {
        let op = mount_op(&mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ))
        .unwrap();
        assert_eq!(op.flags, libc::MS_NOSUID | libc::MS_STRICTATIME);
        assert_eq!(op.data, "mode=755,size=65536k");
        assert_eq!(op.fstype.as_deref(), Some("tmpfs"));
        let op = mount_op(&mount("/sys", "sysfs", "sysfs", &["ro", "rw", "rslave"])).unwrap();
        assert_eq!(op.flags, 0, "a later rw clears ro");
        assert_eq!(op.propagation, libc::MS_SLAVE | libc::MS_REC);
        let op = mount_op(&mount("/sys/fs/cgroup", "cgroup", "cgroup", &["ro"])).unwrap();
        assert_eq!(op.fstype.as_deref(), Some("cgroup2"));
    }

    #[test]
    fn bind_mounts_need_an_absolute_source() {
        let op = mount_op(&mount("/data", "bind", "/etc/hostname", &["rbind", "ro"])).unwrap();
        assert_eq!(op.flags, libc::MS_BIND | libc::MS_REC | libc::MS_RDONLY);
        assert_eq!(op.fstype, None);
        assert!(op.file_target, "a file's bind target is a file");
        assert!(mount_op(&mount("/data", "none", "rel/dir", &["bind"])).is_err());
        assert!(mount_op(&mount("/data", "tmpfs", "tmpfs", &["a,b"])).is_err());
    }

    #[test]
    fn sysctl_names_cannot_name_other_files() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward").unwrap(),
            Path::new("proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            sysctl_path("net/ipv4/conf/eth0.1/forwarding").unwrap(),
            Path::new("proc/sys/net/ipv4/conf/eth0/1/forwarding")
        );
        for bad in [
            "",
            "..",
            "kernel..x",
            "a/../../b",
            "/etc/passwd",
            "a b",
            "x\0y",
        ] {
            assert!(sysctl_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn plan_keeps_default_devices_and_lets_the_spec_override_them() {
        let mut dev = oci::LinuxDevice::default();
        dev.set_path("/dev/fuse".into())
            .set_typ(oci::LinuxDeviceType::C)
            .set_major(10)
            .set_minor(229);
        let mut linux = oci::Linux::default();
        linux
            .set_devices(Some(vec![dev]))
            .set_masked_paths(Some(vec!["/proc/kcore".into()]))
            .set_readonly_paths(Some(vec!["/proc/sys".into()]));
        let mut spec = hypercontainer_protocol::bare_spec();
        spec.set_linux(Some(linux));
        let plan = RootPlan::from_spec(Path::new("/r"), &spec, EtcFiles::default()).unwrap();
        assert_eq!(plan.devices.len(), DEFAULT_DEVICES.len() + 1);
        assert_eq!(plan.masked, [PathBuf::from("proc/kcore")]);
        assert_eq!(plan.readonly_paths, [PathBuf::from("proc/sys")]);
        assert!(!plan.readonly);
    }
}
