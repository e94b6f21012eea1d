//! The interface between the FUSE server and a filesystem.
//!
//! The server ([`super::server::Server`]) decodes requests and calls one
//! [`FileSystem`] method per operation with typed, already bounds-checked
//! arguments; the method answers a value or an [`Errno`]. Every method has
//! a default answering `ENOSYS`, so wrappers and test filesystems only
//! write what they support. Node ids and handles are the filesystem's own
//! numbers; the server passes them through unchanged.

use std::ffi::CStr;
use std::time::Duration;

use super::fuse::{self, Attr, Wire};

/// An errno to answer a request with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    /// The errno of the last failed system call.
    pub fn last() -> Self {
        Self::from(std::io::Error::last_os_error())
    }
}

impl From<std::io::Error> for Errno {
    fn from(e: std::io::Error) -> Self {
        Self(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "errno {}", self.0)
    }
}

/// What every operation answers.
pub type FsResult<T> = std::result::Result<T, Errno>;

/// Who asks: the guest caller's ids (as the guest sees them) and pid.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Context {
    /// fsuid in the guest.
    pub uid: u32,
    /// fsgid in the guest.
    pub gid: u32,
    /// pid in the guest.
    pub pid: u32,
}

/// A directory entry made known to the guest: it counts as one lookup of
/// `nodeid` until forgotten.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// The node id.
    pub nodeid: u64,
    /// Attributes (ids as the guest sees them).
    pub attr: Attr,
    /// How long the guest may cache the name.
    pub entry_timeout: Duration,
    /// How long the guest may cache the attributes.
    pub attr_timeout: Duration,
}

impl Entry {
    /// The wire form.
    pub fn to_wire(&self) -> fuse::EntryOut {
        fuse::EntryOut {
            nodeid: self.nodeid,
            generation: 0,
            entry_valid: self.entry_timeout.as_secs(),
            attr_valid: self.attr_timeout.as_secs(),
            entry_valid_nsec: self.entry_timeout.subsec_nanos(),
            attr_valid_nsec: self.attr_timeout.subsec_nanos(),
            attr: self.attr,
        }
    }
}

/// A time to set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetTime {
    /// The current time.
    Now,
    /// Seconds and nanoseconds since the epoch.
    At(i64, u32),
}

/// The changes of a setattr request; `None` leaves a field alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// New permission bits (the file type bits are ignored).
    pub mode: Option<u32>,
    /// New owner (guest id).
    pub uid: Option<u32>,
    /// New group (guest id).
    pub gid: Option<u32>,
    /// New size.
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<SetTime>,
    /// New modification time.
    pub mtime: Option<SetTime>,
    /// The open handle the change comes through, if any.
    pub fh: Option<u64>,
    /// The kernel asks to clear setuid and setgid.
    pub kill_suidgid: bool,
}

impl SetAttr {
    /// Whether the request changes anything at all.
    pub fn changes_anything(&self) -> bool {
        self.mode.is_some()
            || self.uid.is_some()
            || self.gid.is_some()
            || self.size.is_some()
            || self.atime.is_some()
            || self.mtime.is_some()
    }
}

/// The answer to getxattr and listxattr.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XattrReply {
    /// The size of the value or list (asked with a zero buffer size).
    Size(u32),
    /// The value or the NUL-separated list.
    Data(Vec<u8>),
}

/// A POSIX byte-range lock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lock {
    /// First byte.
    pub start: u64,
    /// Last byte, inclusive (`i64::MAX as u64` or more: to end of file).
    pub end: u64,
    /// `F_RDLCK`, `F_WRLCK` or `F_UNLCK`.
    pub typ: u32,
    /// Holder's pid (0 when unknown).
    pub pid: u32,
}

/// One directory entry for a readdir reply.
#[derive(Clone, Copy, Debug)]
pub struct DirEntry<'a> {
    /// Inode number.
    pub ino: u64,
    /// Offset to continue reading after this entry.
    pub offset: u64,
    /// `DT_*` type.
    pub typ: u32,
    /// The name.
    pub name: &'a [u8],
}

/// The reply buffer of readdir and readdirplus; it never grows past the
/// size the guest asked for.
#[derive(Debug)]
pub struct DirSink {
    buf: Vec<u8>,
    limit: usize,
    plus: bool,
}

impl DirSink {
    /// A sink of at most `limit` bytes (`plus`: readdirplus entries).
    pub fn new(limit: usize, plus: bool) -> Self {
        Self {
            buf: Vec::new(),
            limit,
            plus,
        }
    }

    /// Whether entries carry attributes (readdirplus).
    pub fn plus(&self) -> bool {
        self.plus
    }

    /// Whether an entry with a name of `namelen` bytes still fits. A
    /// readdirplus filesystem checks this before it looks the entry up,
    /// so that no lookup count is taken for an entry that is not sent.
    pub fn fits(&self, namelen: usize) -> bool {
        self.buf.len() + fuse::dirent_size(namelen, self.plus) <= self.limit
    }

    /// Append an entry; `entry` is required for readdirplus (a zeroed entry,
    /// which the guest does not count, is sent for `.` and `..`). Returns
    /// false, appending nothing, when it does not fit.
    pub fn push(&mut self, d: &DirEntry<'_>, entry: Option<&Entry>) -> bool {
        if !self.fits(d.name.len()) {
            return false;
        }
        let start = self.buf.len();
        if self.plus {
            let e = entry.map(Entry::to_wire).unwrap_or_default();
            e.put(&mut self.buf);
        }
        fuse::Dirent {
            ino: d.ino,
            off: d.offset,
            namelen: d.name.len() as u32,
            typ: d.typ,
        }
        .put(&mut self.buf);
        self.buf.extend_from_slice(d.name);
        let padded = start + fuse::dirent_size(d.name.len(), self.plus);
        self.buf.resize(padded, 0);
        true
    }

    /// Bytes encoded so far (a position for [`DirSink::rewrite_from`] and
    /// [`DirSink::truncate`]).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether no entry was pushed yet.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Drop every entry from byte `len` on (a position [`DirSink::len`]
    /// answered before they were pushed).
    pub fn truncate(&mut self, len: usize) {
        self.buf.truncate(len);
    }

    /// Rewrite in place the entries pushed since byte `from`: `f` gets
    /// each one's position, name, dirent and (readdirplus) entry, and its
    /// changes to the last two are written back. Names and sizes do not
    /// change. For wrappers that renumber an inner filesystem's entries.
    pub fn rewrite_from(
        &mut self,
        from: usize,
        mut f: impl FnMut(usize, &[u8], &mut fuse::Dirent, Option<&mut fuse::EntryOut>),
    ) {
        let mut pos = from;
        while pos < self.buf.len() {
            let mut r = fuse::Reader::new(&self.buf[pos..]);
            let mut entry = if self.plus {
                match r.read::<fuse::EntryOut>() {
                    Ok(e) => Some(e),
                    Err(_) => return,
                }
            } else {
                None
            };
            let Ok(mut d) = r.read::<fuse::Dirent>() else {
                return;
            };
            let namelen = d.namelen;
            let Ok(name) = r.take(namelen as usize, "name") else {
                return;
            };
            f(pos, name, &mut d, entry.as_mut());
            d.namelen = namelen;
            let mut head = Vec::with_capacity(fuse::EntryOut::SIZE + fuse::Dirent::SIZE);
            if let Some(e) = entry {
                e.put(&mut head);
            }
            d.put(&mut head);
            self.buf[pos..pos + head.len()].copy_from_slice(&head);
            pos += fuse::dirent_size(namelen as usize, self.plus);
        }
    }

    /// The encoded entries.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

/// Where the data of a READ goes when it is placed straight into guest
/// memory (the reply's buffers, after the reply header).
pub trait ReadSink {
    /// How many bytes fit.
    fn capacity(&self) -> usize;
    /// Read up to `len` bytes (at most the capacity) of `file` at `offset`
    /// into the reply; answers the bytes read, fewer only at end of file.
    fn read_file(
        &mut self,
        file: &std::fs::File,
        offset: u64,
        len: usize,
    ) -> std::io::Result<usize>;
    /// Put bytes already in memory into the reply (for filesystems without
    /// a file to read from); answers the bytes placed.
    fn put(&mut self, data: &[u8]) -> std::io::Result<usize>;
}

/// The payload of a WRITE left in guest memory.
pub trait WriteSource {
    /// Bytes available.
    fn len(&self) -> usize;
    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Write the first `len` bytes to `file` at `offset` (for a file opened
    /// with `O_APPEND`, at its end); answers the bytes written.
    fn write_file(
        &mut self,
        file: &std::fs::File,
        offset: u64,
        len: usize,
    ) -> std::io::Result<usize>;
    /// The first `len` bytes, copied out.
    fn to_vec(&mut self, len: usize) -> std::io::Result<Vec<u8>>;
}

/// Statistics of the filesystem (`statfs`).
pub type Statfs = fuse::StatfsOut;

/// A filesystem served over FUSE. Implementations must not panic on any
/// argument: all of them come from the guest.
#[allow(unused_variables)]
pub trait FileSystem: Send {
    /// The session starts (after `INIT`).
    fn init(&mut self) -> FsResult<()> {
        Ok(())
    }
    /// The session ends (`DESTROY`): drop every node but the root and every handle.
    fn destroy(&mut self) {}
    /// Look `name` up in `parent`.
    fn lookup(&mut self, ctx: Context, parent: u64, name: &CStr) -> FsResult<Entry> {
        Err(Errno(libc::ENOSYS))
    }
    /// Drop `count` lookups of `nodeid`.
    fn forget(&mut self, nodeid: u64, count: u64) {}
    /// Attributes of `nodeid`, read through `fh` when given.
    fn getattr(
        &mut self,
        ctx: Context,
        nodeid: u64,
        fh: Option<u64>,
    ) -> FsResult<(Attr, Duration)> {
        Err(Errno(libc::ENOSYS))
    }
    /// Change attributes.
    fn setattr(&mut self, ctx: Context, nodeid: u64, attr: SetAttr) -> FsResult<(Attr, Duration)> {
        Err(Errno(libc::ENOSYS))
    }
    /// The target of a symlink.
    fn readlink(&mut self, ctx: Context, nodeid: u64) -> FsResult<Vec<u8>> {
        Err(Errno(libc::ENOSYS))
    }
    /// Create a symlink `name` in `parent` pointing at `target`.
    fn symlink(
        &mut self,
        ctx: Context,
        target: &CStr,
        parent: u64,
        name: &CStr,
    ) -> FsResult<Entry> {
        Err(Errno(libc::ENOSYS))
    }
    /// Create a node that is not a directory or a symlink.
    fn mknod(
        &mut self,
        ctx: Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
    ) -> FsResult<Entry> {
        Err(Errno(libc::ENOSYS))
    }
    /// Create a directory.
    fn mkdir(&mut self, ctx: Context, parent: u64, name: &CStr, mode: u32) -> FsResult<Entry> {
        Err(Errno(libc::ENOSYS))
    }
    /// Remove a non-directory.
    fn unlink(&mut self, ctx: Context, parent: u64, name: &CStr) -> FsResult<()> {
        Err(Errno(libc::ENOSYS))
    }
    /// Remove an empty directory.
    fn rmdir(&mut self, ctx: Context, parent: u64, name: &CStr) -> FsResult<()> {
        Err(Errno(libc::ENOSYS))
    }
    /// Rename (`flags`: `RENAME_NOREPLACE`, `RENAME_EXCHANGE`, `RENAME_WHITEOUT`).
    fn rename(
        &mut self,
        ctx: Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> FsResult<()> {
        Err(Errno(libc::ENOSYS))
    }
    /// Make a hard link to `nodeid` as `newname` in `newparent`.
    fn link(
        &mut self,
        ctx: Context,
        nodeid: u64,
        newparent: u64,
        newname: &CStr,
    ) -> FsResult<Entry> {
        Err(Errno(libc::ENOSYS))
    }
    /// Open a regular file; answers the handle and `FOPEN_*` flags.
    fn open(
        &mut self,
        ctx: Context,
        nodeid: u64,
        flags: u32,
        kill_suidgid: bool,
    ) -> FsResult<(u64, u32)> {
        Err(Errno(libc::ENOSYS))
    }
    /// Create and open a regular file.
    fn create(
        &mut self,
        ctx: Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        flags: u32,
    ) -> FsResult<(Entry, u64, u32)> {
        Err(Errno(libc::ENOSYS))
    }
    /// Read up to `size` bytes at `offset`.
    fn read(
        &mut self,
        ctx: Context,
        nodeid: u64,
        fh: u64,
        offset: u64,
        size: u32,
    ) -> FsResult<Vec<u8>> {
        Err(Errno(libc::ENOSYS))
    }
    /// Read into guest memory directly. The default reads into a vector
    /// with [`FileSystem::read`] and copies it.
    fn read_into(
        &mut self,
        ctx: Context,
        nodeid: u64,
        fh: u64,
        offset: u64,
        size: u32,
        sink: &mut dyn ReadSink,
    ) -> FsResult<usize> {
        let data = self.read(ctx, nodeid, fh, offset, size)?;
        Ok(sink.put(&data)?)
    }
    /// Write `len` bytes straight from guest memory. The default copies
    /// them out and calls [`FileSystem::write`].
    #[allow(clippy::too_many_arguments)]
    fn write_from(
        &mut self,
        ctx: Context,
        nodeid: u64,
        fh: u64,
        offset: u64,
        src: &mut dyn WriteSource,
        len: usize,
        kill_suidgid: bool,
    ) -> FsResult<u32> {
        let data = src.to_vec(len)?;
        self.write(ctx, nodeid, fh, offset, &data, kill_suidgid)
    }
    /// Write `data` at `offset`; answers the bytes written.
    fn write(
        &mut self,
        ctx: Context,
        nodeid: u64,
        fh: u64,
        offset: u64,
        data: &[u8],
        kill_suidgid: bool,
    ) -> FsResult<u32> {
        Err(Errno(libc::ENOSYS))
    }
    /// `close(2)` of one descriptor of the handle.
    fn flush(&mut self, ctx: Context, nodeid: u64, fh: u64, lock_owner: u64) -> FsResult<()> {
        Err(Errno(libc::ENOSYS))
    }
    /// The last reference to the handle is gone.
    fn release(&mut self, ctx: Context, nodeid: u64, fh: u64) -> FsResult<()> {
        Err(Errno(libc::ENOSYS))
    }
    /// Flush file data (and metadata unless `datasync`).
    fn fsync(&mut self, ctx: Context, nodeid: u64, fh: u64, datasync: bool) -> FsResult<()> {
        Err(Errno(libc::ENOSYS))
    }
    /// Open a directory.
    fn opendir(&mut self, ctx: Context, nodeid: u64, flags: u32) -> FsResult<(u64, u32)> {
        Err(Errno(libc::ENOSYS))
    }
    /// Fill `sink` with entries from `offset` on.
    fn readdir(
        &mut self,
        ctx: Context,
        nodeid: u64,
        fh: u64,
        offset: u64,
        sink: &mut DirSink,
    ) -> FsResult<()> {
        Err(Errno(libc::ENOSYS))
    }
    /// Close a directory handle.
    fn releasedir(&mut self, ctx: Context, nodeid: u64, fh: u64) -> FsResult<()> {
        Err(Errno(libc::ENOSYS))
    }
    /// Flush a directory.
    fn fsyncdir(&mut self, ctx: Context, nodeid: u64, fh: u64, datasync: bool) -> FsResult<()> {
        Err(Errno(libc::ENOSYS))
    }
    /// Filesystem statistics.
    fn statfs(&mut self, ctx: Context, nodeid: u64) -> FsResult<Statfs> {
        Err(Errno(libc::ENOSYS))
    }
    /// Set an extended attribute.
    fn setxattr(
        &mut self,
        ctx: Context,
        nodeid: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        Err(Errno(libc::ENOSYS))
    }
    /// Read an extended attribute (`size` 0: its size).
    fn getxattr(
        &mut self,
        ctx: Context,
        nodeid: u64,
        name: &CStr,
        size: u32,
    ) -> FsResult<XattrReply> {
        Err(Errno(libc::ENOSYS))
    }
    /// List extended attributes (`size` 0: the list's size).
    fn listxattr(&mut self, ctx: Context, nodeid: u64, size: u32) -> FsResult<XattrReply> {
        Err(Errno(libc::ENOSYS))
    }
    /// Remove an extended attribute.
    fn removexattr(&mut self, ctx: Context, nodeid: u64, name: &CStr) -> FsResult<()> {
        Err(Errno(libc::ENOSYS))
    }
    /// Check access (`mask`: `R_OK | W_OK | X_OK`, or `F_OK`).
    fn access(&mut self, ctx: Context, nodeid: u64, mask: u32) -> FsResult<()> {
        Err(Errno(libc::ENOSYS))
    }
    /// Allocate or punch file space.
    fn fallocate(
        &mut self,
        ctx: Context,
        nodeid: u64,
        fh: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> FsResult<()> {
        Err(Errno(libc::ENOSYS))
    }
    /// `SEEK_DATA` / `SEEK_HOLE`.
    fn lseek(
        &mut self,
        ctx: Context,
        nodeid: u64,
        fh: u64,
        offset: u64,
        whence: u32,
    ) -> FsResult<u64> {
        Err(Errno(libc::ENOSYS))
    }
    /// Copy a byte range between two open files.
    #[allow(clippy::too_many_arguments)]
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
        Err(Errno(libc::ENOSYS))
    }
    /// Flush the whole filesystem holding `nodeid` (`syncfs(2)`).
    fn syncfs(&mut self, ctx: Context, nodeid: u64) -> FsResult<()> {
        Err(Errno(libc::ENOSYS))
    }
    /// Test for a conflicting lock.
    fn getlk(
        &mut self,
        ctx: Context,
        nodeid: u64,
        fh: u64,
        owner: u64,
        lock: Lock,
    ) -> FsResult<Lock> {
        Err(Errno(libc::ENOSYS))
    }
    /// Take or release a lock (`wait`: `SETLKW`).
    fn setlk(
        &mut self,
        ctx: Context,
        nodeid: u64,
        fh: u64,
        owner: u64,
        lock: Lock,
        wait: bool,
    ) -> FsResult<()> {
        Err(Errno(libc::ENOSYS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::fuse::Reader;

    fn entry(ino: u64, name: &[u8]) -> DirEntry<'_> {
        DirEntry {
            ino,
            offset: ino,
            typ: 4,
            name,
        }
    }

    #[test]
    fn rewrite_from_changes_ids_of_later_entries_only_and_truncate_drops_them() {
        let mut sink = DirSink::new(4096, true);
        let e = |nodeid| Entry {
            nodeid,
            ..Entry::default()
        };
        assert!(sink.push(&entry(1, b"first"), Some(&e(10))));
        let from = sink.len();
        assert!(sink.push(&entry(2, b"second"), Some(&e(20))));
        assert!(sink.push(&entry(3, b"x"), Some(&e(30))));
        let mut seen = Vec::new();
        sink.rewrite_from(from, |pos, name, d, e| {
            seen.push((pos, name.to_vec()));
            d.ino += 100;
            d.namelen = 0; // ignored: names do not change
            if let Some(e) = e {
                e.nodeid += 1000;
            }
        });
        assert_eq!(seen[0], (from, b"second".to_vec()));
        assert_eq!(seen.len(), 2);
        let third = seen[1].0;
        let bytes = sink.buf.clone();
        let mut r = Reader::new(&bytes);
        let mut got = Vec::new();
        while r.remaining() > 0 {
            let e: fuse::EntryOut = r.read().unwrap();
            let d: fuse::Dirent = r.read().unwrap();
            let pad = fuse::dirent_size(d.namelen as usize, true) - fuse::EntryOut::SIZE;
            r.skip(pad - fuse::Dirent::SIZE, "name").unwrap();
            got.push((e.nodeid, d.ino, d.namelen));
        }
        assert_eq!(got, [(10, 1, 5), (1020, 102, 6), (1030, 103, 1)]);
        sink.truncate(third);
        assert_eq!(sink.len(), third);
        assert!(!sink.is_empty());
    }
}
