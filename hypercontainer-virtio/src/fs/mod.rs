//! virtio-fs (device type 26): a host directory shared with the guest,
//! served in-process by our own FUSE server.
//!
//! ```text
//!  guest: mount -t virtiofs TAG /path
//!        |  FUSE requests in descriptor chains
//!  Fs (this module)      VirtioDevice + MutEventSubscriber; queue 0 hiprio
//!        |                (forgets), queue 1 requests; chain: checks every
//!        |                buffer, copies requests out and replies in, file
//!        v                data straight between guest memory and files
//!  server::Server        decode (fuse: wire structs) -> validate -> call the
//!        |                FileSystem -> encode; errors become errnos in one
//!        v                place; INIT first (a phase table)
//!  multi::MultiFs       (multi-share devices) a virtual root; routes each
//!        |                request to its share by the id's top 8 bits
//!        v
//!  passthrough::PassthroughFs   O_PATH inode table, openat2 opens under the
//!        |                      share root, ownership mapping
//!  passthrough::ReadOnly        EROFS to every modifying call (read-only shares)
//! ```
//!
//! # Attaching a share
//!
//! An [`Fs`] device built from a [`ShareConfig`] serves one share: put
//! it behind the mmio transport and on the sandbox's event loop like any
//! other device of this crate, and declare it on the kernel command line
//! (`virtio_mmio.device=4K@ADDR:IRQ`; the guest kernel needs
//! `CONFIG_FUSE_FS` and `CONFIG_VIRTIO_FS`). The guest mounts it by its
//! tag:
//!
//! ```text
//! mount -t virtiofs data /mnt/data
//! ```
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use hypercontainer_virtio::fs::{Fs, ShareConfig};
//! use hypercontainer_virtio::VirtioDevice;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let share = ShareConfig::new(dir.path(), "data").read_only(true);
//! let fs = Arc::new(Mutex::new(Fs::new(share)?));
//! assert_eq!(fs.lock().unwrap().device_type(), 26);
//! // MmioTransport::new(mem, fs.clone(), irq) and
//! // event_manager.add_subscriber(fs.clone()), as for virtio-blk.
//! # Ok(())
//! # }
//! ```
//!
//! **One device per share, or one for many.** A device built by
//! [`Fs::new`] serves one share: its own device, tag and queue pair, and
//! so one virtio-mmio slot and one interrupt line. A VM has 19 of those
//! next to the block, vsock and net devices, so volumes cannot each have
//! one when there are many. A device built by [`Fs::multi`] serves
//! several shares (up to 255) behind one tag: its root is a small virtual,
//! read-only directory with one entry per share, named by the caller.
//! The guest mounts the tag once and bind-mounts `TAG/<name>` where each
//! volume belongs:
//!
//! ```text
//! mount -t virtiofs vols /run/hypercontainer/shares/vols
//! mount --bind /run/hypercontainer/shares/vols/data /ctr/rootfs/data
//! ```
//!
//! Either way each share keeps its own state (inode table, fd cap,
//! ownership, read-only wrapper), and a multi-share device can take new
//! shares while it runs ([`SharesHandle::add`], for containers created
//! later in a pod). Use one device per share for a single volume or one
//! that must be torn down on its own (with its device); use the
//! multi-share device for a pod's volumes, or whenever volumes would cost
//! more interrupt lines than the VM has. Its shares share one request
//! queue and one thread, and cannot be removed one by one; see [`multi`]
//! for how node ids and inode numbers stay apart.
//!
//! # Requests
//!
//! Requests are served one at a time, to completion, on the event-loop
//! thread (as virtio-blk serves its disk): there is no worker pool, so a
//! slow host filesystem delays the sandbox's other devices, and `SETLKW`
//! never blocks (a conflict answers `EAGAIN`). Every descriptor is checked
//! to lie in guest memory before anything is read; a request may be at
//! most [`server::MAX_REQUEST`] bytes (`E2BIG` otherwise). File data does
//! not pass through the device's own buffers: a WRITE's payload goes from
//! guest memory to the file and a READ's data from the file into the reply
//! buffers after the header. Everything else is copied out, served, and
//! the reply copied into the writable descriptors; a reply that does not
//! fit (or a READ larger than its buffers) is answered `EIO`. Chains with
//! no room even for a reply header are returned with nothing written.
//!
//! # Privileges
//!
//! The device clears setuid, setgid (when group-executable) and
//! `security.capability` on every write, truncate and chown itself, so it
//! negotiates `HANDLE_KILLPRIV_V2`: the guest kernel leaves that work to
//! it (no GETATTR before a chown, and `security.capability` asked for only
//! before an inode's first write, not every write).
//!
//! # Caching
//!
//! The guest may cache names and attributes for the configured timeouts
//! (1 s by default: host-side changes show up within a second) and, with
//! [`ShareConfig::keep_cache`], file pages across opens. There is no DAX
//! window: file data always goes through the queue.
//!
//! # Path safety, ownership
//!
//! See [`passthrough`]: every open is an `openat2` under the share root
//! that follows no symlink; `..` is clamped at the root; guest ids pass
//! through when the process runs as root, and are squashed (to guest
//! root by default) otherwise, or mapped by an [`IdMap`].
//!
//! # Host requirements
//!
//! Linux 5.6 or later (`openat2`), `/proc` mounted (metadata calls on
//! `/proc/self/fd/N`), and an `RLIMIT_NOFILE` leaving room for
//! [`ShareConfig::max_open_fds`] per share. A seccomp filter on the
//! event-loop thread must allow: `openat2`, `newfstatat`, `mkdirat`,
//! `mknodat`, `symlinkat`, `linkat`, `unlinkat`, `renameat2`,
//! `readlinkat`, `fchownat`, `fchmodat`, `fchmod`, `utimensat`,
//! `setxattr`, `getxattr`, `listxattr`, `removexattr`, `fremovexattr`,
//! `pread64`, `pwrite64`, `ftruncate`, `fallocate`, `lseek`,
//! `copy_file_range`, `syncfs`, `fcntl` (OFD locks, `F_DUPFD_CLOEXEC`,
//! `F_GETFL`/`F_SETFL`), `fstatfs`, `getdents64`, `fsync`, `fdatasync`,
//! `close`.
//!
//! # Left out
//!
//! DAX (`SETUPMAPPING`), `TMPFILE`, `ioctl`, `poll`, `flock`-style
//! locks (the guest kernel keeps those local), notifications to the guest,
//! submounts, security contexts, file handles (`name_to_handle_at`) in
//! place of `O_PATH` fds, a worker pool, and more than one request queue.
//! POSIX locks are open-file-description locks on the host: locks taken
//! through one guest open file do not conflict with each other whatever
//! their owner, and they last until the file is released.

mod chain;
pub mod filesystem;
pub mod fuse;
pub mod multi;
pub mod passthrough;
pub mod server;
#[cfg(test)]
mod test_client;

use std::path::PathBuf;
use std::time::Duration;

use event_manager::{EventOps, Events, MutEventSubscriber};
use log::warn;

pub use self::filesystem::FileSystem;
pub use self::multi::{MultiFs, MultiShareConfig, SharesHandle};
pub use self::passthrough::{
    IdMap, IdRange, Ownership, PassthroughConfig, PassthroughFs, ReadOnly,
};
use self::server::{Server, ServerOptions, ServerStats};
use crate::device::{
    self, device_type, Activation, EventLoopLink, LinkChange, VirtioDevice, CONTROL_TOKEN,
    EVENT_IDX,
};
use crate::queue_util::drain_queue;

/// The virtio device type of virtio-fs.
pub const DEVICE_TYPE: u32 = 26;
/// Longest tag (the config space holds 36 bytes, NUL padded).
pub const TAG_LEN: usize = 36;
/// Default size of the request queue.
pub const DEFAULT_QUEUE_SIZE: u16 = 1024;
/// Size of the high-priority queue.
pub const HIPRIO_QUEUE_SIZE: u16 = 128;
/// Index of the high-priority queue.
pub const HIPRIO_QUEUE: usize = 0;
/// Index of the (only) request queue.
pub const REQUEST_QUEUE: usize = 1;
/// `VIRTIO_RING_F_INDIRECT_DESC`: large requests in one descriptor.
const INDIRECT_DESC: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The tag is empty, longer than 36 bytes or holds a NUL.
    #[error("tag {0:?} is invalid: 1 to 36 bytes without NUL")]
    Tag(String),
    /// The queue size is not a power of two in 2..=32768.
    #[error("queue size {0} is invalid")]
    QueueSize(u16),
    /// The fd cap is too small to hold the root and one open file.
    #[error("max_open_fds {0} is too small (at least 4)")]
    MaxOpenFds(usize),
    /// The shared directory cannot be opened.
    #[error("cannot open shared directory {path}")]
    Open {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Device plumbing failed.
    #[error("device setup failed")]
    Device(#[source] device::Error),
    /// A share of a multi-share device is refused (name, count, or its
    /// own settings or directory).
    #[error("multi-share device")]
    Multi(#[from] multi::Error),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything about one share. Build with [`ShareConfig::new`] and the
/// setters; [`Fs::new`] validates it before touching anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShareConfig {
    /// The host directory.
    pub host_dir: PathBuf,
    /// The tag the guest mounts (`mount -t virtiofs TAG /path`).
    pub tag: String,
    /// Refuse every change with `EROFS`.
    pub read_only: bool,
    /// At most this many fds (nodes plus open files) at a time; `EMFILE` past it.
    pub max_open_fds: usize,
    /// How guest ids relate to host ids.
    pub ownership: Ownership,
    /// How long the guest caches names.
    pub entry_timeout: Duration,
    /// How long the guest caches attributes.
    pub attr_timeout: Duration,
    /// Keep the guest's page cache across opens.
    pub keep_cache: bool,
    /// Size of the request queue.
    pub queue_size: u16,
}

impl ShareConfig {
    /// A writable share of `host_dir` as `tag`, with defaults: 16384 fds,
    /// [`Ownership::default`], 1 s timeouts, queue size 1024.
    pub fn new(host_dir: impl Into<PathBuf>, tag: impl Into<String>) -> Self {
        Self {
            host_dir: host_dir.into(),
            tag: tag.into(),
            read_only: false,
            max_open_fds: passthrough::DEFAULT_MAX_OPEN_FDS,
            ownership: Ownership::default(),
            entry_timeout: passthrough::DEFAULT_CACHE_TIMEOUT,
            attr_timeout: passthrough::DEFAULT_CACHE_TIMEOUT,
            keep_cache: false,
            queue_size: DEFAULT_QUEUE_SIZE,
        }
    }

    /// Make the share read-only (enforced by the device).
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Cap the fds the share holds.
    pub fn max_open_fds(mut self, n: usize) -> Self {
        self.max_open_fds = n;
        self
    }

    /// Set how guest ids relate to host ids.
    pub fn ownership(mut self, ownership: Ownership) -> Self {
        self.ownership = ownership;
        self
    }

    /// Set both the entry and the attribute timeout.
    pub fn cache_timeout(mut self, timeout: Duration) -> Self {
        self.entry_timeout = timeout;
        self.attr_timeout = timeout;
        self
    }

    /// Keep the guest's page cache across opens.
    pub fn keep_cache(mut self, keep: bool) -> Self {
        self.keep_cache = keep;
        self
    }

    /// Set the request queue size (a power of two).
    pub fn queue_size(mut self, size: u16) -> Self {
        self.queue_size = size;
        self
    }

    /// Check the settings without touching the host.
    pub fn validate(&self) -> Result<()> {
        let t = self.tag.as_bytes();
        if t.is_empty() || t.len() > TAG_LEN || t.contains(&0) {
            return Err(Error::Tag(self.tag.clone()));
        }
        let q = self.queue_size;
        if !(2..=32768).contains(&q) || !q.is_power_of_two() {
            return Err(Error::QueueSize(q));
        }
        self.validate_share()
    }

    /// Check the settings of the share itself (not the tag or queue size,
    /// which belong to the device): all a share of a multi-share device
    /// uses.
    fn validate_share(&self) -> Result<()> {
        if self.max_open_fds < 4 {
            return Err(Error::MaxOpenFds(self.max_open_fds));
        }
        Ok(())
    }

    /// Validate the share's own settings and open its directory: a
    /// [`PassthroughFs`], wrapped in [`ReadOnly`] for a read-only share.
    /// Both device modes build their shares here.
    fn open_filesystem(&self) -> Result<Box<dyn FileSystem>> {
        self.validate_share()?;
        let pt = PassthroughFs::new(self.passthrough()).map_err(|source| Error::Open {
            path: self.host_dir.clone(),
            source,
        })?;
        Ok(if self.read_only {
            Box::new(ReadOnly(pt))
        } else {
            Box::new(pt)
        })
    }

    fn passthrough(&self) -> PassthroughConfig {
        PassthroughConfig {
            root: self.host_dir.clone(),
            max_open_fds: self.max_open_fds,
            ownership: self.ownership.clone(),
            entry_timeout: self.entry_timeout,
            attr_timeout: self.attr_timeout,
            keep_cache: self.keep_cache,
        }
    }
}

/// Counters of the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FsStats {
    /// Descriptor chains taken from the queues.
    pub chains: u64,
    /// Chains returned with nothing written (no room for a reply header,
    /// buffers outside guest memory, or no reply due).
    pub dropped: u64,
    /// Requests longer than [`server::MAX_REQUEST`] (answered `E2BIG`).
    pub oversize: u64,
    /// Replies that did not fit their buffers (answered `EIO`).
    pub truncated: u64,
    /// The FUSE server's counters.
    pub fuse: ServerStats,
}

/// A virtio-fs device serving one share, or several behind a virtual root.
pub struct Fs {
    tag: String,
    server: Server<dyn FileSystem>,
    config: [u8; TAG_LEN + 4],
    queue_sizes: [u16; 2],
    link: EventLoopLink,
    stats: FsStats,
    shares: Option<SharesHandle>,
}

impl std::fmt::Debug for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs")
            .field("tag", &self.tag)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Fs {
    /// Validate `share`, open its directory and build the device.
    pub fn new(share: ShareConfig) -> Result<Self> {
        share.validate()?;
        let fs = share.open_filesystem()?;
        Self::with_filesystem(&share.tag, share.queue_size, fs)
    }

    /// Validate `config`, open every share's directory and build one
    /// device serving them all under a virtual root (see [`multi`]).
    /// [`Fs::shares`] answers the handle that adds shares later; `config`
    /// may start without any.
    pub fn multi(config: MultiShareConfig) -> Result<Self> {
        config.validate()?;
        let multi = MultiFs::new();
        for (name, share) in &config.shares {
            multi.add(name, share.clone())?;
        }
        let handle = multi.handle();
        let mut fs = Self::with_filesystem(&config.tag, config.queue_size, Box::new(multi))?;
        fs.shares = Some(handle);
        Ok(fs)
    }

    /// The handle adding shares to a device built by [`Fs::multi`] while
    /// it runs (`None` for a one-share device). Take it before the device
    /// moves to its event loop, or lock the device to get it.
    pub fn shares(&self) -> Option<SharesHandle> {
        self.shares.clone()
    }

    /// A device over any [`FileSystem`] (tests, other backends).
    pub fn with_filesystem(tag: &str, queue_size: u16, fs: Box<dyn FileSystem>) -> Result<Self> {
        ShareConfig::new("", tag)
            .queue_size(queue_size)
            .validate()?;
        let mut config = [0u8; TAG_LEN + 4];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
        Ok(Self {
            tag: tag.to_string(),
            server: Server::new(fs, ServerOptions::default()),
            config,
            queue_sizes: [HIPRIO_QUEUE_SIZE, queue_size],
            link: EventLoopLink::new().map_err(Error::Device)?,
            stats: FsStats::default(),
            shares: None,
        })
    }

    /// The tag the guest mounts.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Counters.
    pub fn stats(&self) -> FsStats {
        FsStats {
            fuse: self.server.stats(),
            ..self.stats
        }
    }

    /// Serve every available request of queue `index` (0: hiprio, 1: requests).
    pub fn process_queue(&mut self, index: usize) {
        let server = &mut self.server;
        let stats = &mut self.stats;
        if let Some(active) = self.link.active() {
            drain_queue(active, index, |mem, chain| {
                chain::execute(server, stats, mem, chain)
            });
        }
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        device_type::FS
    }

    fn features(&self) -> u64 {
        device::VERSION_1 | EVENT_IDX | INDIRECT_DESC
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        device::read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, activation: Activation) -> device::Result<()> {
        self.link.activate(activation, 2)
    }

    fn reset(&mut self) {
        self.link.reset();
        // The driver is gone: its lookups and open files are too.
        self.server.reset();
    }

    fn is_active(&self) -> bool {
        self.link.is_active()
    }
}

impl MutEventSubscriber for Fs {
    fn init(&mut self, ops: &mut EventOps) {
        self.link.init(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            CONTROL_TOKEN => {
                if let LinkChange::Activated = self.link.sync(ops) {
                    // Requests queued before the loop saw the activation.
                    self.process_queue(HIPRIO_QUEUE);
                    self.process_queue(REQUEST_QUEUE);
                }
            }
            q @ 0..=1 => {
                if self.link.ack_queue_event(q) {
                    self.process_queue(q as usize);
                }
            }
            other => warn!("virtio-fs {}: unexpected event {other}", self.tag),
        }
    }
}

#[cfg(test)]
mod tests;
