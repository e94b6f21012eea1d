//! A read-only share: every call that could change the tree is answered
//! `EROFS` here, on the host side, before it reaches the filesystem, so a
//! guest that ignores its own mount flags changes nothing.

use std::ffi::CStr;
use std::time::Duration;

use super::open;
use crate::fs::filesystem::{
    Context, DirSink, Entry, Errno, FileSystem, FsResult, Lock, ReadSink, SetAttr, Statfs,
    WriteSource, XattrReply,
};
use crate::fs::fuse::Attr;

const EROFS: Errno = Errno(libc::EROFS);

/// Wraps a filesystem and refuses every modifying call with `EROFS`.
#[derive(Debug)]
pub struct ReadOnly<F>(pub F);

impl<F> ReadOnly<F> {
    /// The wrapped filesystem.
    pub fn inner(&self) -> &F {
        &self.0
    }
}

impl<F: FileSystem> FileSystem for ReadOnly<F> {
    fn init(&mut self) -> FsResult<()> {
        self.0.init()
    }
    fn destroy(&mut self) {
        self.0.destroy()
    }
    fn lookup(&mut self, ctx: Context, parent: u64, name: &CStr) -> FsResult<Entry> {
        self.0.lookup(ctx, parent, name)
    }
    fn forget(&mut self, nodeid: u64, count: u64) {
        self.0.forget(nodeid, count)
    }
    fn getattr(&mut self, ctx: Context, n: u64, fh: Option<u64>) -> FsResult<(Attr, Duration)> {
        self.0.getattr(ctx, n, fh)
    }
    fn setattr(&mut self, _: Context, _: u64, _: SetAttr) -> FsResult<(Attr, Duration)> {
        Err(EROFS)
    }
    fn readlink(&mut self, ctx: Context, nodeid: u64) -> FsResult<Vec<u8>> {
        self.0.readlink(ctx, nodeid)
    }
    fn symlink(&mut self, _: Context, _: &CStr, _: u64, _: &CStr) -> FsResult<Entry> {
        Err(EROFS)
    }
    fn mknod(&mut self, _: Context, _: u64, _: &CStr, _: u32, _: u32) -> FsResult<Entry> {
        Err(EROFS)
    }
    fn mkdir(&mut self, _: Context, _: u64, _: &CStr, _: u32) -> FsResult<Entry> {
        Err(EROFS)
    }
    fn unlink(&mut self, _: Context, _: u64, _: &CStr) -> FsResult<()> {
        Err(EROFS)
    }
    fn rmdir(&mut self, _: Context, _: u64, _: &CStr) -> FsResult<()> {
        Err(EROFS)
    }
    fn rename(&mut self, _: Context, _: u64, _: &CStr, _: u64, _: &CStr, _: u32) -> FsResult<()> {
        Err(EROFS)
    }
    fn link(&mut self, _: Context, _: u64, _: u64, _: &CStr) -> FsResult<Entry> {
        Err(EROFS)
    }
    fn open(&mut self, ctx: Context, n: u64, flags: u32, kill: bool) -> FsResult<(u64, u32)> {
        if open::writes(flags) {
            return Err(EROFS);
        }
        self.0.open(ctx, n, flags, kill)
    }
    fn create(
        &mut self,
        _: Context,
        _: u64,
        _: &CStr,
        _: u32,
        _: u32,
    ) -> FsResult<(Entry, u64, u32)> {
        Err(EROFS)
    }
    fn read(&mut self, ctx: Context, n: u64, fh: u64, off: u64, size: u32) -> FsResult<Vec<u8>> {
        self.0.read(ctx, n, fh, off, size)
    }
    fn write(&mut self, _: Context, _: u64, _: u64, _: u64, _: &[u8], _: bool) -> FsResult<u32> {
        Err(EROFS)
    }
    fn read_into(
        &mut self,
        ctx: Context,
        n: u64,
        fh: u64,
        off: u64,
        size: u32,
        sink: &mut dyn ReadSink,
    ) -> FsResult<usize> {
        self.0.read_into(ctx, n, fh, off, size, sink)
    }
    fn write_from(
        &mut self,
        _: Context,
        _: u64,
        _: u64,
        _: u64,
        _: &mut dyn WriteSource,
        _: usize,
        _: bool,
    ) -> FsResult<u32> {
        Err(EROFS)
    }
    fn flush(&mut self, ctx: Context, n: u64, fh: u64, owner: u64) -> FsResult<()> {
        self.0.flush(ctx, n, fh, owner)
    }
    fn release(&mut self, ctx: Context, n: u64, fh: u64) -> FsResult<()> {
        self.0.release(ctx, n, fh)
    }
    fn fsync(&mut self, ctx: Context, n: u64, fh: u64, datasync: bool) -> FsResult<()> {
        self.0.fsync(ctx, n, fh, datasync)
    }
    fn opendir(&mut self, ctx: Context, n: u64, flags: u32) -> FsResult<(u64, u32)> {
        self.0.opendir(ctx, n, flags)
    }
    fn readdir(
        &mut self,
        ctx: Context,
        n: u64,
        fh: u64,
        off: u64,
        s: &mut DirSink,
    ) -> FsResult<()> {
        self.0.readdir(ctx, n, fh, off, s)
    }
    fn releasedir(&mut self, ctx: Context, n: u64, fh: u64) -> FsResult<()> {
        self.0.releasedir(ctx, n, fh)
    }
    fn fsyncdir(&mut self, ctx: Context, n: u64, fh: u64, datasync: bool) -> FsResult<()> {
        self.0.fsyncdir(ctx, n, fh, datasync)
    }
    fn statfs(&mut self, ctx: Context, n: u64) -> FsResult<Statfs> {
        self.0.statfs(ctx, n)
    }
    fn setxattr(&mut self, _: Context, _: u64, _: &CStr, _: &[u8], _: u32) -> FsResult<()> {
        Err(EROFS)
    }
    fn getxattr(&mut self, ctx: Context, n: u64, name: &CStr, size: u32) -> FsResult<XattrReply> {
        self.0.getxattr(ctx, n, name, size)
    }
    fn listxattr(&mut self, ctx: Context, n: u64, size: u32) -> FsResult<XattrReply> {
        self.0.listxattr(ctx, n, size)
    }
    fn removexattr(&mut self, _: Context, _: u64, _: &CStr) -> FsResult<()> {
        Err(EROFS)
    }
    fn access(&mut self, ctx: Context, n: u64, mask: u32) -> FsResult<()> {
        if mask & libc::W_OK as u32 != 0 {
            return Err(EROFS);
        }
        self.0.access(ctx, n, mask)
    }
    fn fallocate(&mut self, _: Context, _: u64, _: u64, _: u32, _: u64, _: u64) -> FsResult<()> {
        Err(EROFS)
    }
    fn lseek(&mut self, ctx: Context, n: u64, fh: u64, off: u64, whence: u32) -> FsResult<u64> {
        self.0.lseek(ctx, n, fh, off, whence)
    }
    fn copy_file_range(
        &mut self,
        _: Context,
        _: u64,
        _: u64,
        _: u64,
        _: u64,
        _: u64,
        _: u64,
        _: u64,
    ) -> FsResult<u32> {
        Err(EROFS)
    }
    fn syncfs(&mut self, ctx: Context, n: u64) -> FsResult<()> {
        self.0.syncfs(ctx, n)
    }
    fn getlk(&mut self, ctx: Context, n: u64, fh: u64, owner: u64, l: Lock) -> FsResult<Lock> {
        self.0.getlk(ctx, n, fh, owner, l)
    }
    fn setlk(
        &mut self,
        ctx: Context,
        n: u64,
        fh: u64,
        owner: u64,
        l: Lock,
        wait: bool,
    ) -> FsResult<()> {
        self.0.setlk(ctx, n, fh, owner, l, wait)
    }
}
