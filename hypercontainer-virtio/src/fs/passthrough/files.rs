//! Operations on open files and directories: open, read, write, readdir,
//! fallocate, lseek, copy_file_range, locks; and the xattr and access
//! helpers.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

use super::entries::{ignore_absent, privileged_bits};
use super::open;
use super::{sys, PassthroughFs};
use crate::fs::filesystem::{
    Context, DirEntry, DirSink, Errno, FsResult, Lock, WriteSource, XattrReply,
};
use crate::fs::fuse::{Attr, FOPEN_KEEP_CACHE};

/// Largest getdents buffer per call.
const DIRENT_BUF: usize = 64 * 1024;
/// `OFFSET_MAX` of the FUSE lock protocol: "to the end of the file".
const OFFSET_MAX: u64 = i64::MAX as u64;

fn to_i64(v: u64) -> FsResult<i64> {
    i64::try_from(v).map_err(|_| Errno(libc::EINVAL))
}

/// Answer a getxattr/listxattr: the size when `size` is 0, else the data
/// (`ERANGE` when it does not fit, from the kernel).
pub(super) fn xattr_reply(
    size: u32,
    mut call: impl FnMut(&mut [u8]) -> std::io::Result<usize>,
) -> FsResult<XattrReply> {
    if size == 0 {
        let n = call(&mut [])?;
        return Ok(XattrReply::Size(
            u32::try_from(n).map_err(|_| Errno(libc::E2BIG))?,
        ));
    }
    let mut buf = vec![0u8; size as usize];
    let n = call(&mut buf)?;
    buf.truncate(n);
    Ok(XattrReply::Data(buf))
}

/// The permission check of `access(2)` against the attributes the guest
/// sees, for the guest caller.
pub(super) fn check_access(attr: &Attr, ctx: Context, mask: u32) -> FsResult<()> {
    let mask = mask & 7;
    if mask == 0 {
        return Ok(());
    }
    let mode = attr.mode;
    if ctx.uid == 0 {
        let any_exec = mode & 0o111 != 0 || mode & libc::S_IFMT == libc::S_IFDIR;
        if mask & libc::X_OK as u32 == 0 || any_exec {
            return Ok(());
        }
        return Err(Errno(libc::EACCES));
    }
    let bits = if ctx.uid == attr.uid {
        (mode >> 6) & 7
    } else if ctx.gid == attr.gid {
        (mode >> 3) & 7
    } else {
        mode & 7
    };
    if bits & mask == mask {
        Ok(())
    } else {
        Err(Errno(libc::EACCES))
    }
}

/// One `linux_dirent64` from a getdents buffer: `(ino, off, type, name,
/// record length)`, or `None` when the buffer holds no whole record.
fn parse_dirent(buf: &[u8]) -> Option<(u64, u64, u32, &[u8], usize)> {
    let ino = u64::from_ne_bytes(buf.get(0..8)?.try_into().ok()?);
    let off = u64::from_ne_bytes(buf.get(8..16)?.try_into().ok()?);
    let reclen = usize::from(u16::from_ne_bytes(buf.get(16..18)?.try_into().ok()?));
    let typ = u32::from(*buf.get(18)?);
    let name_area = buf.get(19..reclen)?;
    let len = name_area.iter().position(|&b| b == 0)?;
    Some((ino, off, typ, &name_area[..len], reclen))
}

impl PassthroughFs {
    pub(super) fn open_flags(&self) -> u32 {
        if self.cfg.keep_cache {
            FOPEN_KEEP_CACHE
        } else {
            0
        }
    }

    /// Open the regular file `nodeid` for I/O: `openat2` of its last known
    /// name in its parent, checked to be the same inode.
    pub(super) fn reopen(&self, nodeid: u64, flags: libc::c_int) -> FsResult<File> {
        let node = self.node(nodeid)?;
        if node.is_dir() {
            return Err(Errno(libc::EISDIR));
        }
        if !node.is_file() {
            return Err(Errno(libc::EACCES));
        }
        let parent = self.node_fd(node.parent)?;
        open::open_file(parent, &node.name, flags, 0, Some(node.key))
    }

    /// Clear setuid/setgid and `security.capability` after a change
    /// through an open file.
    pub(super) fn drop_privileges(&self, file: &File) -> FsResult<()> {
        let st = sys::stat_fd(file.as_fd())?;
        let bits = privileged_bits(st.st_mode);
        if bits != 0 {
            use std::os::unix::fs::PermissionsExt;
            let mode = st.st_mode & 0o7777 & !bits;
            file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        ignore_absent(sys::fremovexattr(file.as_fd(), c"security.capability"))
    }

    pub(super) fn do_open(&mut self, nodeid: u64, flags: u32) -> FsResult<(u64, u32)> {
        self.fd_budget()?;
        let file = self.reopen(nodeid, open::guest_open_flags(flags))?;
        if flags as libc::c_int & libc::O_TRUNC != 0 {
            self.drop_privileges(&file)?;
        }
        let fh = self.add_handle(file, false);
        Ok((fh, self.open_flags()))
    }

    pub(super) fn do_read(&mut self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let file = &self.handle(fh, false)?.file;
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            let at = offset.checked_add(done as u64).ok_or(Errno(libc::EINVAL))?;
            match file.read_at(&mut buf[done..], at) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        buf.truncate(done);
        Ok(buf)
    }

    pub(super) fn do_write(&mut self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let file = &self.handle(fh, false)?.file;
        to_i64(
            offset
                .checked_add(data.len() as u64)
                .ok_or(Errno(libc::EFBIG))?,
        )?;
        file.write_all_at(data, offset)?;
        self.drop_privileges(file)?;
        Ok(data.len() as u32)
    }

    pub(super) fn do_write_from(
        &mut self,
        fh: u64,
        offset: u64,
        src: &mut dyn WriteSource,
        len: usize,
    ) -> FsResult<u32> {
        let file = &self.handle(fh, false)?.file;
        to_i64(offset.checked_add(len as u64).ok_or(Errno(libc::EFBIG))?)?;
        let n = src.write_file(file, offset, len)?;
        self.drop_privileges(file)?;
        Ok(n as u32)
    }

    pub(super) fn do_opendir(&mut self, nodeid: u64) -> FsResult<(u64, u32)> {
        self.fd_budget()?;
        let node = self.node(nodeid)?;
        if !node.is_dir() {
            return Err(Errno(libc::ENOTDIR));
        }
        let file = File::from(open::open_dir(node.fd.as_fd())?);
        Ok((self.add_handle(file, true), 0))
    }

    pub(super) fn do_readdir(
        &mut self,
        nodeid: u64,
        fh: u64,
        offset: u64,
        sink: &mut DirSink,
    ) -> FsResult<()> {
        let dir = self.handle(fh, true)?.file.try_clone()?;
        sys::lseek(dir.as_fd(), to_i64(offset)?, libc::SEEK_SET)?;
        let mut buf = vec![0u8; DIRENT_BUF];
        let mut sent = 0usize;
        'fill: loop {
            let n = sys::getdents64(dir.as_fd(), &mut buf)?;
            if n == 0 {
                break;
            }
            let mut pos = 0;
            while let Some((ino, off, typ, name, reclen)) = buf.get(pos..n).and_then(parse_dirent) {
                pos += reclen.max(1);
                if !sink.fits(name.len()) {
                    break 'fill;
                }
                let d = DirEntry {
                    ino,
                    offset: off,
                    typ,
                    name,
                };
                if !sink.plus() || name == b"." || name == b".." {
                    sink.push(&d, None);
                    sent += 1;
                    continue;
                }
                let Ok(cname) = std::ffi::CString::new(name) else {
                    continue;
                };
                match self.lookup_entry(nodeid, &cname) {
                    Ok(e) => {
                        sink.push(&d, Some(&e));
                        sent += 1;
                    }
                    // Out of fds: send what fits so far, or the error.
                    Err(e) if e.0 == libc::EMFILE && sent > 0 => break 'fill,
                    Err(e) if e.0 == libc::EMFILE => return Err(e),
                    // Removed since getdents saw it.
                    Err(_) => {}
                }
            }
        }
        Ok(())
    }

    pub(super) fn do_fallocate(&mut self, fh: u64, mode: u32, off: u64, len: u64) -> FsResult<()> {
        let file = &self.handle(fh, false)?.file;
        sys::fallocate(file.as_fd(), mode as i32, to_i64(off)?, to_i64(len)?)?;
        Ok(())
    }

    pub(super) fn do_lseek(&mut self, fh: u64, offset: u64, whence: u32) -> FsResult<u64> {
        let file = &self.handle(fh, false)?.file;
        let whence = whence as i32;
        if ![
            libc::SEEK_SET,
            libc::SEEK_END,
            libc::SEEK_DATA,
            libc::SEEK_HOLE,
        ]
        .contains(&whence)
        {
            return Err(Errno(libc::EINVAL));
        }
        Ok(sys::lseek(file.as_fd(), to_i64(offset)?, whence)?)
    }

    pub(super) fn do_copy_file_range(
        &mut self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> FsResult<u32> {
        let src = &self.handle(fh_in, false)?.file;
        let dst = &self.handle(fh_out, false)?.file;
        let n = sys::copy_file_range(
            src.as_fd(),
            to_i64(off_in)?,
            dst.as_fd(),
            to_i64(off_out)?,
            len.min(u64::from(u32::MAX)) as usize,
        )?;
        self.drop_privileges(dst)?;
        Ok(n as u32)
    }

    fn flock(lock: &Lock) -> FsResult<libc::flock64> {
        if lock.end < lock.start {
            return Err(Errno(libc::EINVAL));
        }
        let len = if lock.end >= OFFSET_MAX {
            0
        } else {
            to_i64(lock.end - lock.start + 1)?
        };
        let typ = lock.typ as i32;
        if ![libc::F_RDLCK, libc::F_WRLCK, libc::F_UNLCK].contains(&typ) {
            return Err(Errno(libc::EINVAL));
        }
        Ok(libc::flock64 {
            l_type: typ as i16,
            l_whence: libc::SEEK_SET as i16,
            l_start: to_i64(lock.start)?,
            l_len: len,
            // Must be 0 for the OFD commands.
            l_pid: 0,
        })
    }

    pub(super) fn do_getlk(&mut self, fh: u64, lock: Lock) -> FsResult<Lock> {
        let file = &self.handle(fh, false)?.file;
        let mut fl = Self::flock(&lock)?;
        sys::ofd_lock(file.as_fd(), libc::F_OFD_GETLK, &mut fl)?;
        let start = fl.l_start.max(0) as u64;
        let end = if fl.l_len == 0 {
            OFFSET_MAX
        } else {
            start.saturating_add(fl.l_len.max(1) as u64 - 1)
        };
        Ok(Lock {
            start,
            end,
            typ: fl.l_type as u32,
            pid: 0,
        })
    }

    /// Locks never block the device thread: a conflicting `SETLKW` is
    /// answered like `SETLK`, with `EAGAIN`.
    pub(super) fn do_setlk(&mut self, fh: u64, lock: Lock) -> FsResult<()> {
        let file = &self.handle(fh, false)?.file;
        let mut fl = Self::flock(&lock)?;
        Ok(sys::ofd_lock(file.as_fd(), libc::F_OFD_SETLK, &mut fl)?)
    }
}
