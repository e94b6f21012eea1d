//! [`FileSystem`] for [`MultiFs`]: decode the ids of a request, answer it
//! at the virtual root or pass it to the owning share, and renumber what
//! comes back.

use std::ffi::CStr;
use std::time::Duration;

use super::ids::{self, ROOT_INO};
use super::root::{share_attr, EROFS, ESTALE};
use super::MultiFs;
use crate::fs::filesystem::{
    Context, DirSink, Entry, Errno, FileSystem, FsResult, Lock, ReadSink, SetAttr, Statfs,
    WriteSource, XattrReply,
};
use crate::fs::fuse::{Attr, ROOT_ID};

const EBADF: Errno = Errno(libc::EBADF);
const EXDEV: Errno = Errno(libc::EXDEV);

/// What a node id from the guest names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    Root,
    /// Share index (known to exist) and its own node id.
    Share(usize, u64),
}

/// The share's own handle of `fh`, which must belong to share `index`.
fn inner_fh(index: usize, fh: u64) -> FsResult<u64> {
    match ids::decode(fh) {
        Some((i, inner)) if i == index => Ok(inner),
        _ => Err(EBADF),
    }
}

impl MultiFs {
    fn node(&mut self, id: u64) -> FsResult<Node> {
        if id == ROOT_ID {
            return Ok(Node::Root);
        }
        let (index, inner) = ids::decode(id).ok_or(ESTALE)?;
        if index >= self.shares.len() {
            self.adopt();
        }
        if index >= self.shares.len() {
            return Err(ESTALE);
        }
        Ok(Node::Share(index, inner))
    }

    /// A node inside a share; the virtual root answers `at_root`.
    fn in_share(&mut self, id: u64, at_root: Errno) -> FsResult<(usize, u64)> {
        match self.node(id)? {
            Node::Root => Err(at_root),
            Node::Share(i, n) => Ok((i, n)),
        }
    }

    /// The filesystem of share `index` (checked by [`MultiFs::node`]).
    fn fs(&mut self, index: usize) -> &mut dyn FileSystem {
        self.shares[index].fs.as_mut()
    }

    /// Renumber an entry of share `index`; when its id does not fit, the
    /// share's lookup is given back and the request fails.
    fn entry(&mut self, index: usize, e: FsResult<Entry>) -> FsResult<Entry> {
        let mut e = e?;
        match ids::encode(index, e.nodeid) {
            Ok(id) => {
                e.nodeid = id;
                e.attr = share_attr(index, e.attr);
                Ok(e)
            }
            Err(err) => {
                self.fs(index).forget(e.nodeid, 1);
                Err(err)
            }
        }
    }

    /// Renumber a handle of share `index`; one that does not fit is
    /// released again.
    fn outer_fh(
        &mut self,
        ctx: Context,
        index: usize,
        node: u64,
        fh: u64,
        dir: bool,
    ) -> FsResult<u64> {
        ids::encode(index, fh).inspect_err(|_| {
            let fs = self.fs(index);
            let _ = if dir {
                fs.releasedir(ctx, node, fh)
            } else {
                fs.release(ctx, node, fh)
            };
        })
    }

    /// Two nodes of one share (rename, link): `EROFS` at the root,
    /// `EXDEV` across shares.
    fn same_share(&mut self, a: u64, b: u64, a_root: Errno) -> FsResult<(usize, u64, u64)> {
        let (i, a) = self.in_share(a, a_root)?;
        let (j, b) = self.in_share(b, EROFS)?;
        if i != j {
            return Err(EXDEV);
        }
        Ok((i, a, b))
    }

    fn share_readdir(
        &mut self,
        ctx: Context,
        (index, node): (usize, u64),
        fh: u64,
        offset: u64,
        sink: &mut DirSink,
    ) -> FsResult<()> {
        let fh = inner_fh(index, fh)?;
        let from = sink.len();
        self.fs(index).readdir(ctx, node, fh, offset, sink)?;
        let mut failed = None;
        let mut give_back = Vec::new();
        sink.rewrite_from(from, |pos, name, d, e| {
            let counted = e.as_ref().map_or(0, |e| e.nodeid);
            if failed.is_some() {
                if counted != 0 {
                    give_back.push(counted);
                }
                return;
            }
            // `..` of a share's root is the virtual root.
            d.ino = if node == ROOT_ID && name == b".." {
                ROOT_INO
            } else {
                ids::ino(index, d.ino)
            };
            let Some(e) = e.filter(|e| e.nodeid != 0) else {
                return;
            };
            match ids::encode(index, e.nodeid) {
                Ok(id) => {
                    e.nodeid = id;
                    e.attr.ino = ids::ino(index, e.attr.ino);
                }
                Err(_) => {
                    failed = Some(pos);
                    give_back.push(counted);
                }
            }
        });
        if let Some(at) = failed {
            sink.truncate(at);
            for id in give_back {
                self.fs(index).forget(id, 1);
            }
            if sink.len() == from {
                return Err(Errno(libc::EOVERFLOW));
            }
        }
        Ok(())
    }
}

impl FileSystem for MultiFs {
    fn init(&mut self) -> FsResult<()> {
        self.adopt();
        self.running = true;
        let mut first = Ok(());
        for s in &mut self.shares {
            let r = s.fs.init();
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
    fn destroy(&mut self) {
        for s in &mut self.shares {
            s.fs.destroy();
        }
        self.running = false;
    }
    fn lookup(&mut self, ctx: Context, parent: u64, name: &CStr) -> FsResult<Entry> {
        match self.node(parent)? {
            Node::Root => self.root_lookup(ctx, name),
            Node::Share(i, p) => {
                let e = self.fs(i).lookup(ctx, p, name);
                self.entry(i, e)
            }
        }
    }
    fn forget(&mut self, nodeid: u64, count: u64) {
        if let Ok(Node::Share(i, n)) = self.node(nodeid) {
            self.fs(i).forget(n, count);
        }
    }
    fn getattr(
        &mut self,
        ctx: Context,
        nodeid: u64,
        fh: Option<u64>,
    ) -> FsResult<(Attr, Duration)> {
        match self.node(nodeid)? {
            Node::Root => Ok(self.root_getattr()),
            Node::Share(i, n) => {
                let fh = fh.map(|fh| inner_fh(i, fh)).transpose()?;
                let (attr, t) = self.fs(i).getattr(ctx, n, fh)?;
                Ok((share_attr(i, attr), t))
            }
        }
    }
    fn setattr(&mut self, ctx: Context, nodeid: u64, a: SetAttr) -> FsResult<(Attr, Duration)> {
        let (i, n) = self.in_share(nodeid, EROFS)?;
        let a = SetAttr {
            fh: a.fh.map(|fh| inner_fh(i, fh)).transpose()?,
            ..a
        };
        let (attr, t) = self.fs(i).setattr(ctx, n, a)?;
        Ok((share_attr(i, attr), t))
    }
    fn readlink(&mut self, ctx: Context, nodeid: u64) -> FsResult<Vec<u8>> {
        let (i, n) = self.in_share(nodeid, Errno(libc::EINVAL))?;
        self.fs(i).readlink(ctx, n)
    }
    fn symlink(
        &mut self,
        ctx: Context,
        target: &CStr,
        parent: u64,
        name: &CStr,
    ) -> FsResult<Entry> {
        let (i, p) = self.in_share(parent, EROFS)?;
        let e = self.fs(i).symlink(ctx, target, p, name);
        self.entry(i, e)
    }
    fn mknod(
        &mut self,
        ctx: Context,
        p: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
    ) -> FsResult<Entry> {
        let (i, p) = self.in_share(p, EROFS)?;
        let e = self.fs(i).mknod(ctx, p, name, mode, rdev);
        self.entry(i, e)
    }
    fn mkdir(&mut self, ctx: Context, parent: u64, name: &CStr, mode: u32) -> FsResult<Entry> {
        let (i, p) = self.in_share(parent, EROFS)?;
        let e = self.fs(i).mkdir(ctx, p, name, mode);
        self.entry(i, e)
    }
    fn unlink(&mut self, ctx: Context, parent: u64, name: &CStr) -> FsResult<()> {
        let (i, p) = self.in_share(parent, EROFS)?;
        self.fs(i).unlink(ctx, p, name)
    }
    fn rmdir(&mut self, ctx: Context, parent: u64, name: &CStr) -> FsResult<()> {
        let (i, p) = self.in_share(parent, EROFS)?;
        self.fs(i).rmdir(ctx, p, name)
    }
    fn rename(
        &mut self,
        ctx: Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> FsResult<()> {
        let (i, old, new) = self.same_share(olddir, newdir, EROFS)?;
        self.fs(i).rename(ctx, old, oldname, new, newname, flags)
    }
    fn link(
        &mut self,
        ctx: Context,
        nodeid: u64,
        newparent: u64,
        newname: &CStr,
    ) -> FsResult<Entry> {
        // The target is checked first: a link into the root is EROFS.
        self.in_share(newparent, EROFS)?;
        let (i, n, p) = self.same_share(nodeid, newparent, Errno(libc::EPERM))?;
        let e = self.fs(i).link(ctx, n, p, newname);
        self.entry(i, e)
    }
    fn open(&mut self, ctx: Context, nodeid: u64, flags: u32, kill: bool) -> FsResult<(u64, u32)> {
        let (i, n) = self.in_share(nodeid, Errno(libc::EISDIR))?;
        let (fh, open_flags) = self.fs(i).open(ctx, n, flags, kill)?;
        Ok((self.outer_fh(ctx, i, n, fh, false)?, open_flags))
    }
    fn create(
        &mut self,
        ctx: Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        flags: u32,
    ) -> FsResult<(Entry, u64, u32)> {
        let (i, p) = self.in_share(parent, EROFS)?;
        let (e, fh, open_flags) = self.fs(i).create(ctx, p, name, mode, flags)?;
        let inner_node = e.nodeid;
        let outer = match ids::encode(i, fh) {
            Ok(outer) => outer,
            Err(err) => {
                let _ = self.fs(i).release(ctx, inner_node, fh);
                self.fs(i).forget(inner_node, 1);
                return Err(err);
            }
        };
        match self.entry(i, Ok(e)) {
            Ok(e) => Ok((e, outer, open_flags)),
            Err(err) => {
                let _ = self.fs(i).release(ctx, inner_node, fh);
                Err(err)
            }
        }
    }
    fn read(&mut self, ctx: Context, n: u64, fh: u64, off: u64, size: u32) -> FsResult<Vec<u8>> {
        let (i, n) = self.in_share(n, EBADF)?;
        let fh = inner_fh(i, fh)?;
        self.fs(i).read(ctx, n, fh, off, size)
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
        let (i, n) = self.in_share(n, EBADF)?;
        let fh = inner_fh(i, fh)?;
        self.fs(i).read_into(ctx, n, fh, off, size, sink)
    }
    fn write_from(
        &mut self,
        ctx: Context,
        n: u64,
        fh: u64,
        off: u64,
        src: &mut dyn WriteSource,
        len: usize,
        kill: bool,
    ) -> FsResult<u32> {
        let (i, n) = self.in_share(n, EBADF)?;
        let fh = inner_fh(i, fh)?;
        self.fs(i).write_from(ctx, n, fh, off, src, len, kill)
    }
    fn write(
        &mut self,
        ctx: Context,
        n: u64,
        fh: u64,
        off: u64,
        data: &[u8],
        kill: bool,
    ) -> FsResult<u32> {
        let (i, n) = self.in_share(n, EBADF)?;
        let fh = inner_fh(i, fh)?;
        self.fs(i).write(ctx, n, fh, off, data, kill)
    }
    fn flush(&mut self, ctx: Context, n: u64, fh: u64, owner: u64) -> FsResult<()> {
        let (i, n) = self.in_share(n, EBADF)?;
        let fh = inner_fh(i, fh)?;
        self.fs(i).flush(ctx, n, fh, owner)
    }
    fn release(&mut self, ctx: Context, n: u64, fh: u64) -> FsResult<()> {
        let (i, n) = self.in_share(n, EBADF)?;
        let fh = inner_fh(i, fh)?;
        self.fs(i).release(ctx, n, fh)
    }
    fn fsync(&mut self, ctx: Context, n: u64, fh: u64, datasync: bool) -> FsResult<()> {
        let (i, n) = self.in_share(n, EBADF)?;
        let fh = inner_fh(i, fh)?;
        self.fs(i).fsync(ctx, n, fh, datasync)
    }
    fn opendir(&mut self, ctx: Context, nodeid: u64, flags: u32) -> FsResult<(u64, u32)> {
        match self.node(nodeid)? {
            // The root's listing needs no state: its handle is 0.
            Node::Root => Ok((0, 0)),
            Node::Share(i, n) => {
                let (fh, open_flags) = self.fs(i).opendir(ctx, n, flags)?;
                Ok((self.outer_fh(ctx, i, n, fh, true)?, open_flags))
            }
        }
    }
    fn readdir(
        &mut self,
        ctx: Context,
        nodeid: u64,
        fh: u64,
        offset: u64,
        sink: &mut DirSink,
    ) -> FsResult<()> {
        match self.node(nodeid)? {
            Node::Root => self.root_readdir(ctx, offset, sink),
            Node::Share(i, n) => self.share_readdir(ctx, (i, n), fh, offset, sink),
        }
    }
    fn releasedir(&mut self, ctx: Context, nodeid: u64, fh: u64) -> FsResult<()> {
        match self.node(nodeid)? {
            Node::Root => Ok(()),
            Node::Share(i, n) => {
                let fh = inner_fh(i, fh)?;
                self.fs(i).releasedir(ctx, n, fh)
            }
        }
    }
    fn fsyncdir(&mut self, ctx: Context, nodeid: u64, fh: u64, datasync: bool) -> FsResult<()> {
        match self.node(nodeid)? {
            Node::Root => Ok(()),
            Node::Share(i, n) => {
                let fh = inner_fh(i, fh)?;
                self.fs(i).fsyncdir(ctx, n, fh, datasync)
            }
        }
    }
    fn statfs(&mut self, ctx: Context, nodeid: u64) -> FsResult<Statfs> {
        match self.node(nodeid)? {
            Node::Root => self.root_statfs(ctx),
            Node::Share(i, n) => self.fs(i).statfs(ctx, n),
        }
    }
    fn setxattr(
        &mut self,
        ctx: Context,
        n: u64,
        name: &CStr,
        v: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        let (i, n) = self.in_share(n, EROFS)?;
        self.fs(i).setxattr(ctx, n, name, v, flags)
    }
    fn getxattr(&mut self, ctx: Context, n: u64, name: &CStr, size: u32) -> FsResult<XattrReply> {
        let (i, n) = self.in_share(n, Errno(libc::ENODATA))?;
        self.fs(i).getxattr(ctx, n, name, size)
    }
    fn listxattr(&mut self, ctx: Context, nodeid: u64, size: u32) -> FsResult<XattrReply> {
        match self.node(nodeid)? {
            Node::Root if size == 0 => Ok(XattrReply::Size(0)),
            Node::Root => Ok(XattrReply::Data(Vec::new())),
            Node::Share(i, n) => self.fs(i).listxattr(ctx, n, size),
        }
    }
    fn removexattr(&mut self, ctx: Context, n: u64, name: &CStr) -> FsResult<()> {
        let (i, n) = self.in_share(n, EROFS)?;
        self.fs(i).removexattr(ctx, n, name)
    }
    fn access(&mut self, ctx: Context, nodeid: u64, mask: u32) -> FsResult<()> {
        match self.node(nodeid)? {
            Node::Root => self.root_access(mask),
            Node::Share(i, n) => self.fs(i).access(ctx, n, mask),
        }
    }
    fn fallocate(
        &mut self,
        ctx: Context,
        n: u64,
        fh: u64,
        mode: u32,
        off: u64,
        len: u64,
    ) -> FsResult<()> {
        let (i, n) = self.in_share(n, EBADF)?;
        let fh = inner_fh(i, fh)?;
        self.fs(i).fallocate(ctx, n, fh, mode, off, len)
    }
    fn lseek(&mut self, ctx: Context, n: u64, fh: u64, off: u64, whence: u32) -> FsResult<u64> {
        let (i, n) = self.in_share(n, EBADF)?;
        let fh = inner_fh(i, fh)?;
        self.fs(i).lseek(ctx, n, fh, off, whence)
    }
    fn copy_file_range(
        &mut self,
        ctx: Context,
        nodeid_in: u64,
        fh_in: u64,
        off_in: u64,
        nodeid_out: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> FsResult<u32> {
        let (i, n_in) = self.in_share(nodeid_in, EBADF)?;
        let (j, n_out) = self.in_share(nodeid_out, EBADF)?;
        if i != j {
            return Err(EXDEV);
        }
        let (fh_in, fh_out) = (inner_fh(i, fh_in)?, inner_fh(i, fh_out)?);
        self.fs(i)
            .copy_file_range(ctx, n_in, fh_in, off_in, n_out, fh_out, off_out, len)
    }
    fn syncfs(&mut self, ctx: Context, nodeid: u64) -> FsResult<()> {
        match self.node(nodeid)? {
            Node::Root => self.sync_all(ctx),
            Node::Share(i, n) => self.fs(i).syncfs(ctx, n),
        }
    }
    fn getlk(&mut self, ctx: Context, n: u64, fh: u64, owner: u64, l: Lock) -> FsResult<Lock> {
        let (i, n) = self.in_share(n, EBADF)?;
        let fh = inner_fh(i, fh)?;
        self.fs(i).getlk(ctx, n, fh, owner, l)
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
        let (i, n) = self.in_share(n, EBADF)?;
        let fh = inner_fh(i, fh)?;
        self.fs(i).setlk(ctx, n, fh, owner, l, wait)
    }
}
