//! Operations on names: lookup, the create family, remove, rename, link,
//! and setattr.

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use super::ids::{Ownership, KEEP};
use super::open::{self, LookupName};
use super::{sys, PassthroughFs};
use crate::fs::filesystem::{Context, Entry, Errno, FsResult, SetAttr, SetTime};
use crate::fs::fuse::Attr;

/// The xattr a write or chown removes.
const SECURITY_CAPABILITY: &CStr = c"security.capability";

/// The rename flags passed through.
const RENAME_FLAGS: u32 = libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE | libc::RENAME_WHITEOUT;

/// The mode bits to clear so that a changed file no longer grants
/// privileges: setuid always, setgid when the group may execute (setgid
/// without group execute marks mandatory locking, as in the kernel).
pub(super) fn privileged_bits(mode: u32) -> u32 {
    let mut bits = mode & libc::S_ISUID;
    if mode & libc::S_ISGID != 0 && mode & libc::S_IXGRP != 0 {
        bits |= libc::S_ISGID;
    }
    bits
}

/// Ignore "there is no such xattr" and "no xattrs here" when removing.
pub(super) fn ignore_absent(r: std::io::Result<()>) -> FsResult<()> {
    match r {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENODATA | libc::EOPNOTSUPP)) => Ok(()),
        other => Ok(other?),
    }
}

impl PassthroughFs {
    pub(super) fn do_lookup(&mut self, parent: u64, name: &CStr) -> FsResult<Entry> {
        let id = match open::lookup_name(name)? {
            LookupName::Dot => {
                if !self.node(parent)?.is_dir() {
                    return Err(Errno(libc::ENOTDIR));
                }
                parent
            }
            LookupName::DotDot => {
                if !self.node(parent)?.is_dir() {
                    return Err(Errno(libc::ENOTDIR));
                }
                self.inodes.parent_of(parent).ok_or(Errno(libc::ENOENT))?
            }
            LookupName::Entry(name) => return self.lookup_entry(parent, name),
        };
        let st = self.stat_node(id)?;
        self.inodes.add_lookup(id);
        Ok(self.entry(id, &st))
    }

    /// Look up one checked name: an `O_PATH`, `O_NOFOLLOW` open relative
    /// to the parent, then the existing node or a new one.
    pub(super) fn lookup_entry(&mut self, parent: u64, name: &CStr) -> FsResult<Entry> {
        self.lookup_stat(parent, name).map(|(entry, _)| entry)
    }

    /// [`Self::lookup_entry`], also answering the host's `stat` of it.
    fn lookup_stat(&mut self, parent: u64, name: &CStr) -> FsResult<(Entry, libc::stat64)> {
        let fd = open::open_path(self.node_fd(parent)?, name)?;
        let st = sys::stat_fd(fd.as_fd())?;
        let key = (st.st_dev, st.st_ino);
        let id = match self.inodes.find(key) {
            Some(id) => {
                self.inodes.bump(id, parent, name);
                id
            }
            None => {
                self.fd_budget()?;
                let kind = st.st_mode & libc::S_IFMT;
                self.inodes.insert(fd, key, kind, parent, name)
            }
        };
        Ok((self.entry(id, &st), st))
    }

    /// After the host made `name` in `parent` for the guest: take its node,
    /// give it the caller's ids and the mode asked for (the process's
    /// umask must not change what the guest sees). Only what differs is
    /// changed, and the entry is stat'ed again only after a change.
    fn finish_create(
        &mut self,
        ctx: Context,
        parent: u64,
        name: &CStr,
        mode: Option<u32>,
    ) -> FsResult<Entry> {
        let parent_st = self.stat_node(parent)?;
        let (mut entry, mut st) = self.lookup_stat(parent, name)?;
        let fd = self.node_fd(entry.nodeid)?;
        // A setgid directory gives new entries its group, as the host did.
        let gid = (parent_st.st_mode & libc::S_ISGID == 0).then_some(ctx.gid);
        let ids = match self.cfg.ownership {
            Ownership::Squash { .. } => None,
            _ => self.cfg.ownership.host_ids(Some(ctx.uid), gid),
        };
        let mut changed = false;
        if let Some((uid, gid)) = ids {
            let differs = |want: u32, have: u32| want != KEEP && want != have;
            if differs(uid, st.st_uid) || differs(gid, st.st_gid) {
                match sys::chown_fd(fd, uid, gid) {
                    // A chown may clear setuid and setgid: look again.
                    Ok(()) => st = sys::stat_fd(fd)?,
                    // Without CAP_CHOWN the file stays the process's own.
                    Err(e) => {
                        log::debug!("virtio-fs: cannot give a new entry the caller's ids: {e}")
                    }
                }
                changed = true;
            }
        }
        if let Some(mode) = mode {
            let mut want = mode & 0o7777;
            if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                want |= st.st_mode & libc::S_ISGID;
            }
            if st.st_mode & 0o7777 != want {
                sys::fchmodat(self.proc_fd.as_fd(), &Self::proc_name(fd), want)?;
                changed = true;
            }
        }
        if changed {
            entry.attr = self.attr(&self.stat_node(entry.nodeid)?);
        }
        Ok(entry)
    }

    pub(super) fn do_symlink(
        &mut self,
        ctx: Context,
        target: &CStr,
        parent: u64,
        name: &CStr,
    ) -> FsResult<Entry> {
        let name = open::entry_name(name)?;
        self.fd_budget()?;
        sys::symlinkat(target, self.node_fd(parent)?, name)?;
        self.finish_create(ctx, parent, name, None)
    }

    pub(super) fn do_mknod(
        &mut self,
        ctx: Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
    ) -> FsResult<Entry> {
        let name = open::entry_name(name)?;
        match mode & libc::S_IFMT {
            libc::S_IFREG | libc::S_IFIFO | libc::S_IFSOCK => {}
            // The overlayfs whiteout is the only device node allowed.
            libc::S_IFCHR if rdev == 0 => {}
            _ => return Err(Errno(libc::EPERM)),
        }
        self.fd_budget()?;
        sys::mknodat(self.node_fd(parent)?, name, mode, u64::from(rdev))?;
        self.finish_create(ctx, parent, name, Some(mode))
    }

    pub(super) fn do_mkdir(
        &mut self,
        ctx: Context,
        parent: u64,
        name: &CStr,
        mode: u32,
    ) -> FsResult<Entry> {
        let name = open::entry_name(name)?;
        self.fd_budget()?;
        sys::mkdirat(self.node_fd(parent)?, name, mode & 0o7777)?;
        self.finish_create(ctx, parent, name, Some(mode))
    }

    pub(super) fn do_create(
        &mut self,
        ctx: Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        flags: u32,
    ) -> FsResult<(Entry, u64, u32)> {
        let name = open::entry_name(name)?;
        // Two fds: the node's and the handle's.
        if self.open_fds() + 2 > self.cfg.max_open_fds {
            return Err(Errno(libc::EMFILE));
        }
        let guest = open::guest_open_flags(flags);
        let dir = self.node_fd(parent)?;
        let excl = guest | libc::O_CREAT | libc::O_EXCL;
        let (file, created) = match open::open_file(dir, name, excl, mode & 0o7777, None) {
            Ok(f) => (f, true),
            // The name appeared on the host: open it, as O_CREAT would.
            Err(Errno(libc::EEXIST)) if flags as libc::c_int & libc::O_EXCL == 0 => {
                (open::open_file(dir, name, guest, 0, None)?, false)
            }
            Err(e) => return Err(e),
        };
        let entry = if created {
            self.finish_create(ctx, parent, name, Some(mode))?
        } else {
            // An existing file truncated by the open loses its privileges,
            // as with OPEN.
            if guest & libc::O_TRUNC != 0 {
                self.drop_privileges(&file)?;
            }
            self.lookup_entry(parent, name)?
        };
        let fh = self.add_handle(file, false);
        Ok((entry, fh, self.open_flags()))
    }

    pub(super) fn do_remove(&mut self, parent: u64, name: &CStr, flags: i32) -> FsResult<()> {
        let name = open::entry_name(name)?;
        Ok(sys::unlinkat(self.node_fd(parent)?, name, flags)?)
    }

    /// The node now at `name` in `dir`, if we know it: record where it is.
    fn note_moved(&mut self, dir: u64, name: &CStr) {
        let Ok(fd) = self.node_fd(dir) else { return };
        let flags = libc::AT_SYMLINK_NOFOLLOW;
        if let Ok(st) = sys::fstatat(fd, name, flags) {
            if let Some(id) = self.inodes.find((st.st_dev, st.st_ino)) {
                self.inodes.moved(id, dir, name);
            }
        }
    }

    pub(super) fn do_rename(
        &mut self,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> FsResult<()> {
        let oldname = open::entry_name(oldname)?;
        let newname = open::entry_name(newname)?;
        if flags & !RENAME_FLAGS != 0 {
            return Err(Errno(libc::EINVAL));
        }
        let old = self.node_fd(olddir)?;
        let new = self.node_fd(newdir)?;
        sys::renameat2(old, oldname, new, newname, flags)?;
        self.note_moved(newdir, newname);
        if flags & libc::RENAME_EXCHANGE != 0 {
            self.note_moved(olddir, oldname);
        }
        Ok(())
    }

    pub(super) fn do_link(
        &mut self,
        nodeid: u64,
        newparent: u64,
        newname: &CStr,
    ) -> FsResult<Entry> {
        let newname = open::entry_name(newname)?;
        let node = self.node(nodeid)?;
        if node.is_dir() {
            return Err(Errno(libc::EPERM));
        }
        // linkat(AT_EMPTY_PATH) needs CAP_DAC_READ_SEARCH; the /proc entry
        // of the node's own fd names the same inode without it.
        let name = Self::proc_name(node.fd.as_fd());
        let dir = self.node_fd(newparent)?;
        sys::linkat(
            self.proc_fd.as_fd(),
            &name,
            dir,
            newname,
            libc::AT_SYMLINK_FOLLOW,
        )?;
        self.lookup_entry(newparent, newname)
    }

    /// Clear setuid/setgid and `security.capability` on the node.
    pub(super) fn drop_privileges_of_node(&self, fd: BorrowedFd<'_>) -> FsResult<()> {
        let st = sys::stat_fd(fd)?;
        let kind = st.st_mode & libc::S_IFMT;
        if kind != libc::S_IFREG && kind != libc::S_IFDIR {
            return Ok(());
        }
        let bits = privileged_bits(st.st_mode);
        if bits != 0 && kind == libc::S_IFREG {
            let mode = st.st_mode & 0o7777 & !bits;
            sys::fchmodat(self.proc_fd.as_fd(), &Self::proc_name(fd), mode)?;
        }
        ignore_absent(sys::removexattr(&Self::proc_path(fd), SECURITY_CAPABILITY))
    }

    pub(super) fn do_setattr(
        &mut self,
        _ctx: Context,
        nodeid: u64,
        a: SetAttr,
    ) -> FsResult<(Attr, Duration)> {
        let fd = self.node_fd(nodeid)?;
        if a.uid.is_some() || a.gid.is_some() {
            let (uid, gid) = self
                .cfg
                .ownership
                .host_ids(a.uid, a.gid)
                .ok_or(Errno(libc::EINVAL))?;
            if (uid, gid) != (KEEP, KEEP) {
                sys::chown_fd(fd, uid, gid)?;
            }
            self.drop_privileges_of_node(fd)?;
        }
        if let Some(mode) = a.mode {
            sys::fchmodat(self.proc_fd.as_fd(), &Self::proc_name(fd), mode & 0o7777)?;
        }
        if let Some(size) = a.size {
            match a.fh.and_then(|fh| self.handle(fh, false).ok()) {
                Some(h) => h.file.set_len(size)?,
                None => self.reopen(nodeid, libc::O_WRONLY)?.set_len(size)?,
            }
            self.drop_privileges_of_node(fd)?;
        }
        if a.atime.is_some() || a.mtime.is_some() {
            let ts = |t: Option<SetTime>| match t {
                None => libc::timespec {
                    tv_sec: 0,
                    tv_nsec: libc::UTIME_OMIT,
                },
                Some(SetTime::Now) => libc::timespec {
                    tv_sec: 0,
                    tv_nsec: libc::UTIME_NOW,
                },
                Some(SetTime::At(s, ns)) => libc::timespec {
                    tv_sec: s,
                    tv_nsec: i64::from(ns.min(999_999_999)),
                },
            };
            let times = [ts(a.atime), ts(a.mtime)];
            sys::utimensat(self.proc_fd.as_fd(), &Self::proc_name(fd), &times)?;
        }
        let st = self.stat_node(nodeid)?;
        Ok((self.attr(&st), self.cfg.attr_timeout))
    }
}
