//! Volumes: host directories mounted into a container, as Docker's `-v`.
//!
//! A [`Volume`] is either a *bind* volume (a host directory the caller
//! names, [`Volume::bind`]) or a *named* volume ([`Volume::named`]), a
//! directory the SDK keeps under its data directory, created on first use
//! and kept after the sandbox ends, so that the next sandbox naming it
//! finds its files. Either way the guest sees the host directory through
//! the sandbox's one virtio-fs device (all volumes of a sandbox share it,
//! so volumes cost no extra device slot or interrupt line), and the agent
//! bind-mounts it at the destination before the container's process
//! starts. Writes go straight to the host directory; a read-only volume
//! is refused every write by the host side of the device (`EROFS`), not
//! only by the guest's mount flags.
//!
//! ```
//! use hypercontainer::volume::Volume;
//!
//! let logs = Volume::bind("/srv/logs", "/var/log/app");
//! let data: Volume = "pgdata:/var/lib/postgresql/data".parse().unwrap();
//! let config: Volume = "/etc/app:/etc/app:ro".parse().unwrap();
//! assert!(config.is_read_only() && !logs.is_read_only());
//! assert_eq!(data.destination(), "/var/lib/postgresql/data");
//! ```
//!
//! # On disk
//!
//! ```text
//! <data dir>/                       $HYPERCONTAINER_DATA_DIR, else
//!                                   $XDG_DATA_HOME/hypercontainer, else
//!                                   ~/.local/share/hypercontainer
//!   volumes/
//!     <name>/_data/                 what the container sees at the destination
//! ```
//!
//! The layout is Docker's (`/var/lib/docker/volumes/<name>/_data`), so a
//! volume's files are easy to find, back up or seed from the host. A named
//! volume's directory is created (mode 0755, with its parents) by the first
//! sandbox that names it; creating it twice at once is harmless
//! (`create_dir_all` accepts a directory that appeared meanwhile). Nothing
//! removes it: delete the directory to delete the volume. Two sandboxes may
//! use one volume at the same time, as with Docker; they see each other's
//! writes (each guest caches attributes and names for about a second).
//!
//! # Ownership
//!
//! When the SDK runs as root, the guest's uids and gids pass through: a
//! file the container's user 1000 creates belongs to host uid 1000. When it
//! does not (rootless), the host side can only create files as its own
//! user: every new file belongs to the SDK's user on the host, and the
//! guest sees the owner it asked for squashed to guest root (see
//! [`Ownership`](hypercontainer_virtio::fs::Ownership) in the device's
//! docs).
//!
//! # Open files
//!
//! Every file the guest holds open through a share, and every name it keeps
//! cached, holds an fd of the host process (at most
//! [`DEFAULT_MAX_OPEN_FDS`](hypercontainer_virtio::fs::passthrough::DEFAULT_MAX_OPEN_FDS)
//! per share; past it, the guest gets `EMFILE`). So a sandbox with host
//! directories raises the process's soft `RLIMIT_NOFILE` to its hard limit
//! when it starts, as Go's runtime and virtiofsd do, once per process (a
//! limit the embedder sets later is kept); the hard limit is left alone. An embedder that uses `select(2)` on fds above 1024 should
//! know this; one that wants more room raises the hard limit itself.
//!
//! # Differences from Docker
//!
//! * Docker copies the image's files at the destination into a new, empty
//!   named volume. The SDK does not: a new named volume starts empty.
//! * Docker's `-v /dest` (an anonymous volume) is not accepted: name it.
//! * A bind volume's host directory must exist when the sandbox starts
//!   (Docker's `-v` creates it; the `run` example does that too, the SDK
//!   does not create directories it was not asked to own).
//! * Only directories can be volumes, not single files.

use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

/// Longest name of a named volume.
pub const MAX_NAME_LEN: usize = 64;

/// Errors of volume settings.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A `-v` string is not `SRC:DEST[:OPTIONS]`.
    #[error(
        "invalid volume {0:?}: use HOST_DIR:GUEST_PATH[:ro|rw] or NAME:GUEST_PATH[:ro|rw] \
         (HOST_DIR absolute or starting with ./)"
    )]
    Syntax(String),
    /// An option after the destination that is not `ro` or `rw`.
    #[error("volume {volume:?}: unknown option {option:?} (use ro or rw)")]
    Option {
        /// The volume string.
        volume: String,
        /// The option.
        option: String,
    },
    /// A volume name that Docker would not accept either.
    #[error(
        "invalid volume name {0:?}: use 2 to 64 characters of [A-Za-z0-9_.-], starting with a \
         letter or digit"
    )]
    Name(String),
    /// The destination is not an absolute path inside the container, or is
    /// its root.
    #[error("volume destination {0:?} must be an absolute path other than /, without ..")]
    Destination(String),
    /// A bind volume's source is not absolute.
    #[error("volume source {0:?} must be an absolute path")]
    RelativeSource(PathBuf),
    /// A bind volume's host directory does not exist or is not a
    /// directory.
    #[error("volume source {0:?} is not an existing directory: create it first")]
    NotADirectory(PathBuf),
    /// Two volumes (or a volume and a tmpfs) mount at one destination.
    #[error("two mounts at {0:?}: give each destination once")]
    DuplicateDestination(String),
    /// The data directory cannot be found: `$HOME` is not set.
    #[error("no data directory for named volumes: set HYPERCONTAINER_DATA_DIR or HOME")]
    NoDataDir,
    /// A named volume's directory could not be created.
    #[error("creating the directory of volume {name:?} at {path:?}")]
    Create {
        /// The volume name.
        name: String,
        /// Its directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Where a volume's files live on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSource {
    /// A host directory given by the caller.
    Bind(PathBuf),
    /// A named volume under the SDK's data directory.
    Named(String),
}

/// A host directory mounted into the container. See the
/// [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    source: VolumeSource,
    destination: String,
    read_only: bool,
}

impl Volume {
    /// Mounts the host directory `host_dir` (absolute) at `guest_path`,
    /// writable.
    pub fn bind(host_dir: impl Into<PathBuf>, guest_path: impl Into<String>) -> Self {
        Self {
            source: VolumeSource::Bind(host_dir.into()),
            destination: guest_path.into(),
            read_only: false,
        }
    }

    /// Mounts the named volume `name` at `guest_path`, writable; it is
    /// created on first use.
    pub fn named(name: impl Into<String>, guest_path: impl Into<String>) -> Self {
        Self {
            source: VolumeSource::Named(name.into()),
            destination: guest_path.into(),
            read_only: false,
        }
    }

    /// Mounts it read-only (refused writes get `EROFS`).
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Where its files live.
    pub fn source(&self) -> &VolumeSource {
        &self.source
    }

    /// Where the container sees it.
    pub fn destination(&self) -> &str {
        &self.destination
    }

    /// Whether it is read-only.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Checks the settings without touching the host: the name, the
    /// destination, and that a bind source is absolute.
    pub fn validate(&self) -> Result<(), VolumeError> {
        match &self.source {
            VolumeSource::Bind(p) if !p.is_absolute() => {
                return Err(VolumeError::RelativeSource(p.clone()))
            }
            VolumeSource::Named(n) => check_name(n)?,
            VolumeSource::Bind(_) => {}
        }
        normalize_destination(&self.destination)?;
        Ok(())
    }

    /// The host directory to share: a bind volume's directory (which must
    /// exist), or a named volume's `_data` directory under `data_dir`,
    /// created when missing.
    pub fn host_dir(&self, data_dir: &Path) -> Result<PathBuf, VolumeError> {
        self.validate()?;
        match &self.source {
            VolumeSource::Bind(p) => {
                if !p.is_dir() {
                    return Err(VolumeError::NotADirectory(p.clone()));
                }
                Ok(p.clone())
            }
            VolumeSource::Named(name) => {
                let path = data_dir.join("volumes").join(name).join("_data");
                std::fs::create_dir_all(&path).map_err(|source| VolumeError::Create {
                    name: name.clone(),
                    path: path.clone(),
                    source,
                })?;
                Ok(path)
            }
        }
    }
}

impl FromStr for Volume {
    type Err = VolumeError;

    /// Docker's `-v SRC:DEST[:ro|rw]`: SRC is a host directory when it
    /// holds a `/` (absolute, or `./`-relative, which the caller must
    /// resolve before starting), a volume name otherwise.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(':');
        let (Some(src), Some(dest)) = (parts.next(), parts.next()) else {
            return Err(VolumeError::Syntax(s.into()));
        };
        if src.is_empty() || dest.is_empty() {
            return Err(VolumeError::Syntax(s.into()));
        }
        let mut read_only = false;
        if let Some(opts) = parts.next() {
            for option in opts.split(',') {
                match option {
                    "ro" | "readonly" => read_only = true,
                    "rw" => read_only = false,
                    _ => {
                        return Err(VolumeError::Option {
                            volume: s.into(),
                            option: option.into(),
                        })
                    }
                }
            }
        }
        if parts.next().is_some() {
            return Err(VolumeError::Syntax(s.into()));
        }
        let v = if src.contains('/') || src == "." {
            Volume::bind(src, dest)
        } else {
            check_name(src)?;
            Volume::named(src, dest)
        };
        normalize_destination(dest)?;
        Ok(v.read_only(read_only))
    }
}

/// Checks a named volume's name (Docker's rule: `[A-Za-z0-9][A-Za-z0-9_.-]+`).
pub fn check_name(name: &str) -> Result<(), VolumeError> {
    let b = name.as_bytes();
    let ok = (2..=MAX_NAME_LEN).contains(&b.len())
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(VolumeError::Name(name.into()))
    }
}

/// `dest` with `.` components and repeated or trailing slashes removed;
/// an error when it is relative, the root, or holds `..`.
pub fn normalize_destination(dest: &str) -> Result<String, VolumeError> {
    let p = Path::new(dest);
    if !p.is_absolute() || dest.contains('\0') {
        return Err(VolumeError::Destination(dest.into()));
    }
    let mut out = String::new();
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => {
                out.push('/');
                out.push_str(&n.to_string_lossy());
            }
            Component::ParentDir | Component::Prefix(_) => {
                return Err(VolumeError::Destination(dest.into()))
            }
        }
    }
    if out.is_empty() {
        return Err(VolumeError::Destination(dest.into()));
    }
    Ok(out)
}

/// Checks that no two of `destinations` name the same path (after
/// normalizing).
pub fn check_unique<'a>(
    destinations: impl IntoIterator<Item = &'a str>,
) -> Result<(), VolumeError> {
    let mut seen = std::collections::HashSet::new();
    for d in destinations {
        let n = normalize_destination(d)?;
        if !seen.insert(n.clone()) {
            return Err(VolumeError::DuplicateDestination(n));
        }
    }
    Ok(())
}

/// The SDK's data directory: `$HYPERCONTAINER_DATA_DIR`, else
/// `$XDG_DATA_HOME/hypercontainer`, else `~/.local/share/hypercontainer`.
pub fn default_data_dir() -> Result<PathBuf, VolumeError> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(d) = env("HYPERCONTAINER_DATA_DIR") {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = env("XDG_DATA_HOME") {
        return Ok(PathBuf::from(d).join("hypercontainer"));
    }
    let home = env("HOME").ok_or(VolumeError::NoDataDir)?;
    Ok(PathBuf::from(home).join(".local/share/hypercontainer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_volume_strings_parse() {
        let v: Volume = "/srv/a:/data".parse().unwrap();
        assert_eq!(v.source(), &VolumeSource::Bind("/srv/a".into()));
        assert!(!v.is_read_only());
        let v: Volume = "./rel:/data:ro".parse().unwrap();
        assert_eq!(v.source(), &VolumeSource::Bind("./rel".into()));
        assert!(v.is_read_only());
        let v: Volume = "cache:/var/cache:rw".parse().unwrap();
        assert_eq!(v.source(), &VolumeSource::Named("cache".into()));
        for bad in [
            "",
            "/a",
            ":/b",
            "/a:",
            "/a:/b:zz",
            "/a:/b:ro:x",
            "x:/b",
            "n:rel",
            "n:/",
        ] {
            assert!(bad.parse::<Volume>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn destinations_are_absolute_and_normalized() {
        assert_eq!(normalize_destination("/a//b/./c/").unwrap(), "/a/b/c");
        for bad in ["a", "/", "/a/../b", "//", ""] {
            assert!(normalize_destination(bad).is_err(), "{bad:?}");
        }
        assert!(check_unique(["/a", "/b"]).is_ok());
        assert!(matches!(
            check_unique(["/a/", "/b", "/a"]),
            Err(VolumeError::DuplicateDestination(d)) if d == "/a"
        ));
    }

    #[test]
    fn names_follow_dockers_rule() {
        for good in ["ab", "data", "my-vol_1.2", &"a".repeat(64)] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
        for bad in ["a", "-ab", ".ab", "a/b", "a b", "..", &"a".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn named_volumes_are_created_once_and_kept() {
        let data = tempfile::tempdir().unwrap();
        let v = Volume::named("data", "/data");
        let dir = v.host_dir(data.path()).unwrap();
        assert_eq!(dir, data.path().join("volumes/data/_data"));
        std::fs::write(dir.join("f"), b"kept").unwrap();
        assert_eq!(v.host_dir(data.path()).unwrap(), dir);
        assert_eq!(std::fs::read(dir.join("f")).unwrap(), b"kept");
    }

    #[test]
    fn bind_sources_must_be_existing_absolute_directories() {
        let data = tempfile::tempdir().unwrap();
        let rel = Volume::bind("rel", "/d");
        assert!(matches!(
            rel.host_dir(data.path()),
            Err(VolumeError::RelativeSource(_))
        ));
        let gone = Volume::bind(data.path().join("gone"), "/d");
        assert!(matches!(
            gone.host_dir(data.path()),
            Err(VolumeError::NotADirectory(_))
        ));
        let file = data.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(Volume::bind(&file, "/d").host_dir(data.path()).is_err());
        let ok = Volume::bind(data.path(), "/d");
        assert_eq!(ok.host_dir(data.path()).unwrap(), data.path());
    }
}
