//! A passthrough filesystem: the guest sees one host directory.
//!
//! # Layout
//!
//! * `inode_store`: node ids, their `O_PATH` fds, lookup counts and the
//!   parent map.
//! * `open`: name rules and the one way files are opened (`openat2`).
//! * `sys`: the system calls (the only `unsafe` code of the device).
//! * `ids`: guest and host ownership ([`Ownership`], which explains the
//!   root and rootless behaviour).
//! * `entries`: operations on names (lookup, create, remove, rename,
//!   link, setattr); `files`: operations on open files and directories.
//! * `read_only`: a wrapper answering `EROFS` to every modifying call.
//!
//! # Path safety
//!
//! The share's root is opened once, as an `O_PATH` directory fd. Every
//! other object is reached from a parent fd with one name component
//! (never `/`, `.` or `..` from the guest) through `openat2` with
//! `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS` and `O_NOFOLLOW`. Nothing
//! follows a symlink: a link pointing at `/etc` is an inode whose target
//! the guest may read, and that is all. A directory swapped for a symlink
//! while the guest walks through it (the libkrun#329 race) ends the walk
//! with `ENOTDIR` (the link's own `O_PATH` fd is not a directory) instead
//! of continuing outside. `..` is answered from the parent map, which
//! stops at the root. Metadata calls that have no safe `*at` form
//! (`chmod`, `utimensat`, the xattr calls, `link`) go through
//! `/proc/self/fd/N` of the node's own `O_PATH` fd, which names exactly
//! that inode and cannot resolve anywhere else. Only regular files and
//! directories are ever opened for I/O; device nodes other than the
//! overlayfs whiteout (`c 0 0`) cannot be created.
//!
//! Directories are opened for reading as `"."` relative to their own
//! `O_PATH` fd. Regular files are opened by the parent and name they were
//! last seen under (the parent map, kept up to date by lookups and
//! renames), non-blocking and without `O_TRUNC`, and the result must be a
//! regular file with the node's device and inode number before it is
//! used, truncated or handed out. When the name no longer holds that file
//! (the host renamed it, or a FIFO or symlink took its place) the open
//! answers `ESTALE`; the guest's next lookup of the new name refreshes
//! the node. No `/proc/self/fd` magic link is ever opened.
//!
//! A write, a truncate and a chown clear setuid (and setgid when the group
//! may execute, as the kernel does) and remove `security.capability`, even
//! though the device usually runs with `CAP_FSETID`. The node table and
//! open handles together hold at most [`PassthroughConfig::max_open_fds`]
//! fds; past that, lookups and opens answer `EMFILE`. The process's own
//! `RLIMIT_NOFILE` must leave room for that many per share.
//!
//! # Trust
//!
//! The guest is not trusted: nothing it sends can make the device touch a
//! host object outside the share. Other host processes writing in the
//! share are trusted not to plant device nodes there: a node replaced
//! between the check and the open could be opened (non-blocking) before
//! its type is checked and it is closed again.
//!
//! # Caching
//!
//! Entries and attributes are given the configured timeouts (1 s by
//! default); with `keep_cache` the guest keeps file pages across opens.
//! Changes made on the host are seen by the guest once a timeout expires.

mod entries;
mod files;
mod ids;
mod inode_store;
mod open;
mod read_only;
pub(super) mod sys;

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use self::ids::{IdMap, IdRange, Ownership, OVERFLOW_ID};
use self::inode_store::{InodeData, InodeStore};
pub use self::read_only::ReadOnly;
use super::filesystem::{
    Context, DirSink, Entry, Errno, FileSystem, FsResult, Lock, ReadSink, SetAttr, Statfs,
    WriteSource, XattrReply,
};
use super::fuse::{self, Attr};

/// Default cap of fds (nodes plus open handles) per share.
pub const DEFAULT_MAX_OPEN_FDS: usize = 16384;
/// Default entry and attribute timeout.
pub const DEFAULT_CACHE_TIMEOUT: Duration = Duration::from_secs(1);

/// Settings of a [`PassthroughFs`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassthroughConfig {
    /// The host directory the guest sees.
    pub root: PathBuf,
    /// At most this many fds (nodes plus open handles) at a time.
    pub max_open_fds: usize,
    /// How guest ids relate to host ids.
    pub ownership: Ownership,
    /// How long the guest may cache names.
    pub entry_timeout: Duration,
    /// How long the guest may cache attributes.
    pub attr_timeout: Duration,
    /// Let the guest keep file pages across opens (`FOPEN_KEEP_CACHE`).
    pub keep_cache: bool,
}

impl PassthroughConfig {
    /// Defaults for the directory `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            max_open_fds: DEFAULT_MAX_OPEN_FDS,
            ownership: Ownership::default(),
            entry_timeout: DEFAULT_CACHE_TIMEOUT,
            attr_timeout: DEFAULT_CACHE_TIMEOUT,
            keep_cache: false,
        }
    }
}

/// An open file or directory.
#[derive(Debug)]
struct Handle {
    file: File,
    dir: bool,
}

/// The passthrough filesystem over one host directory.
#[derive(Debug)]
pub struct PassthroughFs {
    cfg: PassthroughConfig,
    inodes: InodeStore,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
    proc_fd: OwnedFd,
}

fn open_o_path_dir(path: &Path) -> std::io::Result<OwnedFd> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)
        .map(OwnedFd::from)
}

impl PassthroughFs {
    /// Open the share's root (and `/proc/self/fd`).
    pub fn new(cfg: PassthroughConfig) -> std::io::Result<Self> {
        let root = open_o_path_dir(&cfg.root)?;
        let st = sys::stat_fd(root.as_fd())?;
        let proc_fd = open_o_path_dir(Path::new("/proc/self/fd"))?;
        Ok(Self {
            inodes: InodeStore::new(root, (st.st_dev, st.st_ino)),
            handles: HashMap::new(),
            next_fh: 1,
            proc_fd,
            cfg,
        })
    }

    /// The settings.
    pub fn config(&self) -> &PassthroughConfig {
        &self.cfg
    }

    /// Fds held: nodes plus open handles.
    pub fn open_fds(&self) -> usize {
        self.inodes.len() + self.handles.len()
    }

    /// The lookup count of a node (0 when unknown).
    pub fn lookup_count(&self, nodeid: u64) -> u64 {
        self.inodes.lookups(nodeid)
    }

    fn node(&self, id: u64) -> FsResult<&InodeData> {
        self.inodes.get(id).ok_or(Errno(libc::EBADF))
    }

    fn node_fd(&self, id: u64) -> FsResult<BorrowedFd<'_>> {
        Ok(self.node(id)?.fd.as_fd())
    }

    fn fd_budget(&self) -> FsResult<()> {
        if self.open_fds() >= self.cfg.max_open_fds {
            return Err(Errno(libc::EMFILE));
        }
        Ok(())
    }

    fn handle(&self, fh: u64, dir: bool) -> FsResult<&Handle> {
        match self.handles.get(&fh) {
            Some(h) if h.dir == dir => Ok(h),
            _ => Err(Errno(libc::EBADF)),
        }
    }

    fn add_handle(&mut self, file: File, dir: bool) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, Handle { file, dir });
        fh
    }

    /// The `/proc/self/fd` entry naming `fd`.
    fn proc_name(fd: BorrowedFd<'_>) -> CString {
        CString::new(fd.as_raw_fd().to_string()).unwrap_or_default()
    }

    /// The absolute `/proc/self/fd/N` path of `fd`, for calls without an
    /// `*at` form.
    fn proc_path(fd: BorrowedFd<'_>) -> CString {
        CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
    }

    fn attr(&self, st: &libc::stat64) -> Attr {
        let (uid, gid) = self.cfg.ownership.guest_ids(st.st_uid, st.st_gid);
        Attr {
            ino: st.st_ino,
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            atime: st.st_atime as u64,
            mtime: st.st_mtime as u64,
            ctime: st.st_ctime as u64,
            atimensec: st.st_atime_nsec as u32,
            mtimensec: st.st_mtime_nsec as u32,
            ctimensec: st.st_ctime_nsec as u32,
            mode: st.st_mode,
            nlink: st.st_nlink as u32,
            uid,
            gid,
            rdev: st.st_rdev as u32,
            blksize: st.st_blksize as u32,
            flags: 0,
        }
    }

    fn entry(&self, nodeid: u64, st: &libc::stat64) -> Entry {
        Entry {
            nodeid,
            attr: self.attr(st),
            entry_timeout: self.cfg.entry_timeout,
            attr_timeout: self.cfg.attr_timeout,
        }
    }

    fn stat_node(&self, id: u64) -> FsResult<libc::stat64> {
        Ok(sys::stat_fd(self.node_fd(id)?)?)
    }
}

impl FileSystem for PassthroughFs {
    fn destroy(&mut self) {
        self.handles.clear();
        self.inodes.clear();
    }
    fn lookup(&mut self, _ctx: Context, parent: u64, name: &CStr) -> FsResult<Entry> {
        self.do_lookup(parent, name)
    }
    fn forget(&mut self, nodeid: u64, count: u64) {
        self.inodes.forget(nodeid, count);
    }
    fn getattr(&mut self, _: Context, nodeid: u64, fh: Option<u64>) -> FsResult<(Attr, Duration)> {
        let st = match fh.and_then(|fh| self.handles.get(&fh)) {
            Some(h) => sys::stat_fd(h.file.as_fd())?,
            None => self.stat_node(nodeid)?,
        };
        Ok((self.attr(&st), self.cfg.attr_timeout))
    }
    fn setattr(&mut self, ctx: Context, nodeid: u64, a: SetAttr) -> FsResult<(Attr, Duration)> {
        self.do_setattr(ctx, nodeid, a)
    }
    fn readlink(&mut self, _: Context, nodeid: u64) -> FsResult<Vec<u8>> {
        let n = self.node(nodeid)?;
        if n.kind != libc::S_IFLNK {
            return Err(Errno(libc::EINVAL));
        }
        Ok(sys::readlink_fd(n.fd.as_fd())?)
    }
    fn symlink(
        &mut self,
        ctx: Context,
        target: &CStr,
        parent: u64,
        name: &CStr,
    ) -> FsResult<Entry> {
        self.do_symlink(ctx, target, parent, name)
    }
    fn mknod(
        &mut self,
        ctx: Context,
        p: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
    ) -> FsResult<Entry> {
        self.do_mknod(ctx, p, name, mode, rdev)
    }
    fn mkdir(&mut self, ctx: Context, parent: u64, name: &CStr, mode: u32) -> FsResult<Entry> {
        self.do_mkdir(ctx, parent, name, mode)
    }
    fn unlink(&mut self, _: Context, parent: u64, name: &CStr) -> FsResult<()> {
        self.do_remove(parent, name, 0)
    }
    fn rmdir(&mut self, _: Context, parent: u64, name: &CStr) -> FsResult<()> {
        self.do_remove(parent, name, libc::AT_REMOVEDIR)
    }
    fn rename(
        &mut self,
        _: Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> FsResult<()> {
        self.do_rename(olddir, oldname, newdir, newname, flags)
    }
    fn link(&mut self, _: Context, nodeid: u64, newparent: u64, newname: &CStr) -> FsResult<Entry> {
        self.do_link(nodeid, newparent, newname)
    }
    fn open(&mut self, _: Context, nodeid: u64, flags: u32, _kill: bool) -> FsResult<(u64, u32)> {
        self.do_open(nodeid, flags)
    }
    fn create(
        &mut self,
        ctx: Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        flags: u32,
    ) -> FsResult<(Entry, u64, u32)> {
        self.do_create(ctx, parent, name, mode, flags)
    }
    fn read(&mut self, _: Context, _: u64, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        self.do_read(fh, offset, size)
    }
    fn write(
        &mut self,
        _: Context,
        _: u64,
        fh: u64,
        offset: u64,
        data: &[u8],
        _kill: bool,
    ) -> FsResult<u32> {
        self.do_write(fh, offset, data)
    }
    fn read_into(
        &mut self,
        _: Context,
        _: u64,
        fh: u64,
        offset: u64,
        size: u32,
        sink: &mut dyn ReadSink,
    ) -> FsResult<usize> {
        let file = &self.handle(fh, false)?.file;
        Ok(sink.read_file(file, offset, (size as usize).min(sink.capacity()))?)
    }
    fn write_from(
        &mut self,
        _: Context,
        _: u64,
        fh: u64,
        offset: u64,
        src: &mut dyn WriteSource,
        len: usize,
        _kill: bool,
    ) -> FsResult<u32> {
        self.do_write_from(fh, offset, src, len)
    }
    fn flush(&mut self, _: Context, _: u64, fh: u64, _lock_owner: u64) -> FsResult<()> {
        self.handle(fh, false).map(drop)
    }
    fn release(&mut self, _: Context, _: u64, fh: u64) -> FsResult<()> {
        self.handle(fh, false)?;
        self.handles.remove(&fh);
        Ok(())
    }
    fn fsync(&mut self, _: Context, _: u64, fh: u64, datasync: bool) -> FsResult<()> {
        let f = &self.handle(fh, false)?.file;
        Ok(if datasync {
            f.sync_data()
        } else {
            f.sync_all()
        }?)
    }
    fn opendir(&mut self, _: Context, nodeid: u64, _flags: u32) -> FsResult<(u64, u32)> {
        self.do_opendir(nodeid)
    }
    fn readdir(
        &mut self,
        _: Context,
        nodeid: u64,
        fh: u64,
        offset: u64,
        sink: &mut DirSink,
    ) -> FsResult<()> {
        self.do_readdir(nodeid, fh, offset, sink)
    }
    fn releasedir(&mut self, _: Context, _: u64, fh: u64) -> FsResult<()> {
        self.handle(fh, true)?;
        self.handles.remove(&fh);
        Ok(())
    }
    fn fsyncdir(&mut self, _: Context, _: u64, fh: u64, datasync: bool) -> FsResult<()> {
        let f = &self.handle(fh, true)?.file;
        Ok(if datasync {
            f.sync_data()
        } else {
            f.sync_all()
        }?)
    }
    fn statfs(&mut self, _: Context, nodeid: u64) -> FsResult<Statfs> {
        let s = sys::fstatvfs(self.node_fd(nodeid)?)?;
        Ok(Statfs {
            blocks: s.f_blocks,
            bfree: s.f_bfree,
            bavail: s.f_bavail,
            files: s.f_files,
            ffree: s.f_ffree,
            bsize: s.f_bsize as u32,
            namelen: s.f_namemax as u32,
            frsize: s.f_frsize as u32,
            ..Default::default()
        })
    }
    fn setxattr(&mut self, _: Context, n: u64, name: &CStr, v: &[u8], flags: u32) -> FsResult<()> {
        let path = Self::proc_path(self.node_fd(n)?);
        Ok(sys::setxattr(&path, name, v, flags as libc::c_int)?)
    }
    fn getxattr(&mut self, _: Context, n: u64, name: &CStr, size: u32) -> FsResult<XattrReply> {
        let path = Self::proc_path(self.node_fd(n)?);
        files::xattr_reply(size, |buf| sys::getxattr(&path, name, buf))
    }
    fn listxattr(&mut self, _: Context, n: u64, size: u32) -> FsResult<XattrReply> {
        let path = Self::proc_path(self.node_fd(n)?);
        files::xattr_reply(size, |buf| sys::listxattr(&path, buf))
    }
    fn removexattr(&mut self, _: Context, n: u64, name: &CStr) -> FsResult<()> {
        let path = Self::proc_path(self.node_fd(n)?);
        Ok(sys::removexattr(&path, name)?)
    }
    fn access(&mut self, ctx: Context, nodeid: u64, mask: u32) -> FsResult<()> {
        let st = self.stat_node(nodeid)?;
        files::check_access(&self.attr(&st), ctx, mask)
    }
    fn fallocate(
        &mut self,
        _: Context,
        _: u64,
        fh: u64,
        mode: u32,
        off: u64,
        len: u64,
    ) -> FsResult<()> {
        self.do_fallocate(fh, mode, off, len)
    }
    fn lseek(&mut self, _: Context, _: u64, fh: u64, offset: u64, whence: u32) -> FsResult<u64> {
        self.do_lseek(fh, offset, whence)
    }
    fn copy_file_range(
        &mut self,
        _: Context,
        _: u64,
        fh_in: u64,
        off_in: u64,
        _: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> FsResult<u32> {
        self.do_copy_file_range(fh_in, off_in, fh_out, off_out, len)
    }
    fn syncfs(&mut self, _: Context, nodeid: u64) -> FsResult<()> {
        let node = self.node(nodeid)?;
        let fd = if node.is_dir() {
            open::open_dir(node.fd.as_fd())?
        } else {
            open::open_dir(self.node_fd(fuse::ROOT_ID)?)?
        };
        Ok(sys::syncfs(fd.as_fd())?)
    }
    fn getlk(&mut self, _: Context, _: u64, fh: u64, _owner: u64, lock: Lock) -> FsResult<Lock> {
        self.do_getlk(fh, lock)
    }
    fn setlk(
        &mut self,
        _: Context,
        _: u64,
        fh: u64,
        _owner: u64,
        lock: Lock,
        _wait: bool,
    ) -> FsResult<()> {
        self.do_setlk(fh, lock)
    }
}

#[cfg(test)]
mod tests;
