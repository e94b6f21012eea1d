//! The virtual root: a read-only directory listing the shares.

use std::ffi::CStr;
use std::time::{Duration, UNIX_EPOCH};

use super::ids::{self, ROOT_INO};
use super::MultiFs;
use crate::fs::filesystem::{Context, DirEntry, DirSink, Entry, Errno, FsResult, Statfs};
use crate::fs::fuse::{Attr, ROOT_ID};

/// How long the guest caches the root's attributes and its `.`/`..`.
const ROOT_TIMEOUT: Duration = Duration::from_secs(1);
/// Mode of the virtual root.
const ROOT_MODE: u32 = libc::S_IFDIR | 0o555;

pub(super) const ESTALE: Errno = Errno(libc::ESTALE);
pub(super) const EROFS: Errno = Errno(libc::EROFS);

/// `attr` of share `index` with its inode number renumbered.
pub(super) fn share_attr(index: usize, mut attr: Attr) -> Attr {
    attr.ino = ids::ino(index, attr.ino);
    attr
}

impl MultiFs {
    pub(super) fn root_attr(&self) -> Attr {
        let t = self.created.duration_since(UNIX_EPOCH).unwrap_or_default();
        Attr {
            ino: ROOT_INO,
            mode: ROOT_MODE,
            nlink: 2u32.saturating_add(self.shares.len() as u32),
            blksize: 4096,
            atime: t.as_secs(),
            mtime: t.as_secs(),
            ctime: t.as_secs(),
            atimensec: t.subsec_nanos(),
            mtimensec: t.subsec_nanos(),
            ctimensec: t.subsec_nanos(),
            ..Attr::default()
        }
    }

    fn root_entry(&self) -> Entry {
        Entry {
            nodeid: ROOT_ID,
            attr: self.root_attr(),
            entry_timeout: ROOT_TIMEOUT,
            attr_timeout: ROOT_TIMEOUT,
        }
    }

    pub(super) fn root_getattr(&mut self) -> (Attr, Duration) {
        self.adopt();
        (self.root_attr(), ROOT_TIMEOUT)
    }

    /// The entry of share `index`'s root. It takes no count of its own:
    /// forgets of a share root reach the share, which never drops its root.
    pub(super) fn share_root_entry(&mut self, ctx: Context, index: usize) -> FsResult<Entry> {
        let s = self.shares.get_mut(index).ok_or(ESTALE)?;
        let (attr, attr_timeout) = s.fs.getattr(ctx, ROOT_ID, None)?;
        Ok(Entry {
            nodeid: ids::encode(index, ROOT_ID)?,
            attr: share_attr(index, attr),
            entry_timeout: s.entry_timeout,
            attr_timeout,
        })
    }

    pub(super) fn root_lookup(&mut self, ctx: Context, name: &CStr) -> FsResult<Entry> {
        self.adopt();
        match name.to_bytes() {
            b"." | b".." => Ok(self.root_entry()),
            n => {
                let index = self
                    .shares
                    .iter()
                    .position(|s| s.name.as_bytes() == n)
                    .ok_or(Errno(libc::ENOENT))?;
                self.share_root_entry(ctx, index)
            }
        }
    }

    /// `.`, `..`, then the shares; offset `n` continues after the `n`th
    /// entry (shares are only ever appended, so offsets stay valid).
    pub(super) fn root_readdir(
        &mut self,
        ctx: Context,
        offset: u64,
        sink: &mut DirSink,
    ) -> FsResult<()> {
        self.adopt();
        let total = 2 + self.shares.len() as u64;
        for pos in offset..total {
            let dir = u32::from(libc::DT_DIR);
            if pos < 2 {
                let name: &[u8] = if pos == 0 { b"." } else { b".." };
                let d = DirEntry {
                    ino: ROOT_INO,
                    offset: pos + 1,
                    typ: dir,
                    name,
                };
                if !sink.push(&d, None) {
                    break;
                }
                continue;
            }
            let index = (pos - 2) as usize;
            let name = self.shares[index].name.clone();
            if !sink.fits(name.len()) {
                break;
            }
            let Ok(e) = self.share_root_entry(ctx, index) else {
                // A share whose root cannot be read is left out.
                continue;
            };
            let d = DirEntry {
                ino: e.attr.ino,
                offset: pos + 1,
                typ: dir,
                name: name.as_bytes(),
            };
            sink.push(&d, sink.plus().then_some(&e));
        }
        Ok(())
    }

    pub(super) fn root_statfs(&mut self, ctx: Context) -> FsResult<Statfs> {
        self.adopt();
        match self.shares.first_mut() {
            Some(s) => s.fs.statfs(ctx, ROOT_ID),
            None => Ok(Statfs {
                bsize: 4096,
                frsize: 4096,
                namelen: 255,
                ..Statfs::default()
            }),
        }
    }

    pub(super) fn root_access(&self, mask: u32) -> FsResult<()> {
        if mask & libc::W_OK as u32 != 0 {
            return Err(EROFS);
        }
        Ok(())
    }

    /// `syncfs` of the whole mount: every share; the first error wins.
    pub(super) fn sync_all(&mut self, ctx: Context) -> FsResult<()> {
        self.adopt();
        let mut first = Ok(());
        for s in &mut self.shares {
            let r = s.fs.syncfs(ctx, ROOT_ID);
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}
