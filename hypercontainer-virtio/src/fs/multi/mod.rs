//! Several shares behind one virtio-fs device: a [`MultiFs`] serves a
//! small virtual directory whose entries are the shares.
//!
//! ```text
//!  guest: mount -t virtiofs TAG /run/hypercontainer/shares/TAG
//!  /run/hypercontainer/shares/TAG/      virtual root: read-only, 0555, root's
//!      data/    -> share 0: PassthroughFs over its host directory
//!      config/  -> share 1: ReadOnly(PassthroughFs)
//!      ...         up to 255 shares
//! ```
//!
//! The SDK mounts the tag once and bind-mounts `TAG/<name>` into each
//! container that uses the volume. Each share keeps everything a
//! one-share device has: its own inode table, fd cap
//! ([`ShareConfig::max_open_fds`]), ownership mapping, timeouts and
//! read-only wrapper. What the shares have in common is the device: one
//! virtio-mmio slot, one interrupt line, one request queue, served on one
//! thread one request at a time.
//!
//! # Names
//!
//! The caller names each share: 1 to [`MAX_NAME`] bytes of `A-Z a-z 0-9
//! _ . -`, neither `.` nor `..`, unique within the device. A share is
//! built from a [`ShareConfig`] exactly as [`Fs::new`](super::Fs::new)
//! builds its one share; the config's `tag` and `queue_size` belong to the
//! device and are ignored here (the device's come from
//! [`MultiShareConfig`]).
//!
//! # Node ids, handles and inode numbers
//!
//! The virtual root is node 1 (`FUSE_ROOT_ID`). Every other node id and
//! every handle carries the share index in its top 8 bits and the share's
//! own id in the low 56 (see [`ids`] for the layout and the errors of ids
//! that do not decode). Requests are routed by their node id and every id,
//! handle and inode number in a reply is renumbered on the way out, so a
//! share never sees another share's numbers and the guest never sees a
//! share's raw ones. Inode numbers have the share's tag xor-ed into their
//! top 8 bits, so that two shares never report the same `st_ino` on the
//! one `st_dev` of the mount. A share's root is the inner `FUSE_ROOT_ID`;
//! its `..` stays at the share root (the passthrough clamps it), so the
//! guest cannot climb from one share into the virtual root or another
//! share through the device.
//!
//! # The virtual root
//!
//! It answers `lookup` (a share's root, `ENOENT` for other names),
//! `getattr` (a directory, mode 0555, owner 0:0, `nlink` 2 plus the
//! shares), `opendir`/`readdir`/`readdirplus` (`.`, `..`, then the shares
//! in the order they were added; readdirplus entries count as lookups),
//! `releasedir`, `statfs` (the first share's, zeros without shares),
//! `access` and the xattr reads (none). Every change to it (create, mkdir,
//! symlink, mknod, link into it, unlink, rmdir, rename into or out of it,
//! setattr, setxattr, removexattr) answers `EROFS`. A rename, link or
//! `copy_file_range` between two shares answers `EXDEV` (the guest's `mv`
//! and `cp` then copy). `init` and `destroy` reach every share.
//!
//! # Adding shares while the device runs
//!
//! [`SharesHandle::add`] (from [`MultiFs::handle`] or
//! [`Fs::shares`](super::Fs::shares), cloneable and usable from any
//! thread) validates the name and the share's settings, opens its
//! directory on the caller's thread, and queues it; the device picks it up
//! at its next request that needs it, and it shows in the virtual root
//! from then on. Indices are handed out in the order of `add`, so they
//! never change. Shares cannot be removed: a share lives as long as its
//! device (tear the device down, or stop using the name).
//!
//! ```
//! use hypercontainer_virtio::fs::{Fs, MultiShareConfig, ShareConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (data, config) = (tempfile::tempdir()?, tempfile::tempdir()?);
//! let fs = Fs::multi(
//!     MultiShareConfig::new("vols")
//!         .share("data", ShareConfig::new(data.path(), ""))
//!         .share("config", ShareConfig::new(config.path(), "").read_only(true)),
//! )?;
//! // Taken before the device moves to its event loop.
//! let shares = fs.shares().expect("a multi-share device");
//! let later = tempfile::tempdir()?;
//! shares.add("cache", ShareConfig::new(later.path(), ""))?;
//! assert_eq!(shares.names(), ["data", "config", "cache"]);
//! # Ok(())
//! # }
//! ```

pub mod ids;
mod ops;
mod root;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

pub use self::ids::{MAX_INNER, MAX_SHARES};
use super::filesystem::FileSystem;
use super::ShareConfig;

/// Longest share name.
pub const MAX_NAME: usize = 64;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The name is empty, too long, `.`, `..`, or holds a byte other than
    /// `A-Z a-z 0-9 _ . -`.
    #[error("share name {0:?} is invalid: 1 to 64 bytes of A-Z a-z 0-9 _ . -, not . or ..")]
    Name(String),
    /// Two shares have one name.
    #[error("share name {0:?} is used twice")]
    Duplicate(String),
    /// The device already serves [`MAX_SHARES`] shares.
    #[error("share {0:?} is one too many: a device serves at most 255 shares")]
    TooMany(String),
    /// The share's own settings or directory are refused.
    #[error("share {name:?} cannot be served")]
    Share {
        /// The share's name.
        name: String,
        /// Why.
        #[source]
        source: Box<super::Error>,
    },
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Check a share name (see the module docs).
pub fn check_name(name: &str) -> Result<()> {
    let ok_byte = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-');
    let b = name.as_bytes();
    if b.is_empty() || b.len() > MAX_NAME || name == "." || name == ".." || !b.iter().all(ok_byte) {
        return Err(Error::Name(name.to_string()));
    }
    Ok(())
}

/// Everything about a multi-share device: its tag, queue size and first
/// shares. Build with [`MultiShareConfig::new`] and the setters;
/// [`Fs::multi`](super::Fs::multi) validates it before touching anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultiShareConfig {
    /// The tag the guest mounts.
    pub tag: String,
    /// Size of the request queue.
    pub queue_size: u16,
    /// The shares, by name, in index order (their `tag` and `queue_size`
    /// are ignored).
    pub shares: Vec<(String, ShareConfig)>,
}

impl MultiShareConfig {
    /// A device mounted as `tag` with no shares yet, queue size 1024.
    pub fn new(tag: impl Into<String>) -> Self {
        Self {
            tag: tag.into(),
            queue_size: super::DEFAULT_QUEUE_SIZE,
            shares: Vec::new(),
        }
    }

    /// Set the request queue size (a power of two).
    pub fn queue_size(mut self, size: u16) -> Self {
        self.queue_size = size;
        self
    }

    /// Add a share named `name`.
    pub fn share(mut self, name: impl Into<String>, share: ShareConfig) -> Self {
        self.shares.push((name.into(), share));
        self
    }

    /// Check the settings without touching the host: the tag and queue
    /// size, every name, the count, and every share's own settings.
    pub fn validate(&self) -> super::Result<()> {
        ShareConfig::new("", self.tag.as_str())
            .queue_size(self.queue_size)
            .validate()?;
        for (i, (name, share)) in self.shares.iter().enumerate() {
            check_name(name)?;
            if self.shares[..i].iter().any(|(n, _)| n == name) {
                return Err(Error::Duplicate(name.clone()).into());
            }
            if i >= MAX_SHARES {
                return Err(Error::TooMany(name.clone()).into());
            }
            share.validate_share().map_err(|e| Error::Share {
                name: name.clone(),
                source: Box::new(e),
            })?;
        }
        Ok(())
    }
}

/// One share as the device serves it.
struct Share {
    name: String,
    fs: Box<dyn FileSystem>,
    entry_timeout: Duration,
}

/// What [`SharesHandle`]s and the device share.
#[derive(Default)]
struct Registry {
    /// Every name handed out, in index order.
    names: Vec<String>,
    /// Shares opened but not yet taken by the device.
    pending: Vec<Share>,
}

#[derive(Default)]
struct Shared {
    registry: Mutex<Registry>,
    /// Set when `pending` may hold shares.
    dirty: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding the lock leaves the lists consistent
        // (each change is one push).
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Adds shares to a [`MultiFs`], also after it moved into its device and
/// thread. Cheap to clone.
#[derive(Clone)]
pub struct SharesHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SharesHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharesHandle")
            .field("names", &self.names())
            .finish()
    }
}

impl SharesHandle {
    /// Validate `name` and `share`, open the share's directory and make it
    /// visible in the virtual root (its `tag` and `queue_size` are
    /// ignored). The device takes it at its next request.
    pub fn add(&self, name: &str, share: ShareConfig) -> Result<()> {
        check_name(name)?;
        let wrap = |e: super::Error| Error::Share {
            name: name.to_string(),
            source: Box::new(e),
        };
        share.validate_share().map_err(wrap)?;
        self.insert(name, share.entry_timeout, || {
            share.open_filesystem().map_err(wrap)
        })
    }

    /// Register `name` and the filesystem `open` answers, unless the name
    /// is taken or there are enough shares.
    fn insert(
        &self,
        name: &str,
        entry_timeout: Duration,
        open: impl FnOnce() -> Result<Box<dyn FileSystem>>,
    ) -> Result<()> {
        // Held while the directory opens, so that one name cannot be
        // added twice by racing callers.
        let mut reg = self.shared.lock();
        if reg.names.iter().any(|n| n == name) {
            return Err(Error::Duplicate(name.to_string()));
        }
        if reg.names.len() >= MAX_SHARES {
            return Err(Error::TooMany(name.to_string()));
        }
        let fs = open()?;
        reg.names.push(name.to_string());
        reg.pending.push(Share {
            name: name.to_string(),
            fs,
            entry_timeout,
        });
        self.shared.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// The names of the shares, in index order.
    pub fn names(&self) -> Vec<String> {
        self.shared.lock().names.clone()
    }

    /// How many shares there are.
    pub fn len(&self) -> usize {
        self.shared.lock().names.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The filesystem of a multi-share device (see the module docs).
pub struct MultiFs {
    shares: Vec<Share>,
    shared: Arc<Shared>,
    /// Between `init` and `destroy`: shares taken now are initialized.
    running: bool,
    /// The virtual root's times.
    created: SystemTime,
}

impl std::fmt::Debug for MultiFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.shares.iter().map(|s| s.name.as_str()).collect();
        f.debug_struct("MultiFs")
            .field("shares", &names)
            .field("running", &self.running)
            .finish_non_exhaustive()
    }
}

impl Default for MultiFs {
    fn default() -> Self {
        Self::new()
    }
}

impl MultiFs {
    /// A virtual root without shares.
    pub fn new() -> Self {
        Self {
            shares: Vec::new(),
            shared: Arc::default(),
            running: false,
            created: SystemTime::now(),
        }
    }

    /// A handle adding shares from anywhere.
    pub fn handle(&self) -> SharesHandle {
        SharesHandle {
            shared: self.shared.clone(),
        }
    }

    /// Add a share (as [`SharesHandle::add`]).
    pub fn add(&self, name: &str, share: ShareConfig) -> Result<()> {
        self.handle().add(name, share)
    }

    /// Shares served so far (taken from the handles).
    pub fn len(&mut self) -> usize {
        self.adopt();
        self.shares.len()
    }

    /// Whether there are none.
    pub fn is_empty(&mut self) -> bool {
        self.len() == 0
    }

    /// Take the shares added since the last call.
    fn adopt(&mut self) {
        if !self.shared.dirty.swap(false, Ordering::Acquire) {
            return;
        }
        let added = std::mem::take(&mut self.shared.lock().pending);
        for mut share in added {
            if self.running {
                if let Err(e) = share.fs.init() {
                    log::warn!("virtio-fs share {:?}: init failed: {e}", share.name);
                }
            }
            self.shares.push(share);
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn names_follow_the_documented_rule() {
        for ok in ["a", "data", "A-b_c.9", "..a", &"x".repeat(64)] {
            assert!(check_name(ok).is_ok(), "{ok:?}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "é", "a\0", &"x".repeat(65)] {
            assert!(matches!(check_name(bad), Err(Error::Name(_))), "{bad:?}");
        }
    }

    #[test]
    fn handles_are_send_and_sync() {
        fn is<T: Send + Sync>() {}
        fn is_send<T: Send>() {}
        is::<SharesHandle>();
        is_send::<MultiFs>();
    }
}
