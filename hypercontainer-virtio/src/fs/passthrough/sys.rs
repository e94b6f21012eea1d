//! System calls of the passthrough filesystem: the only `unsafe` code of
//! the virtio-fs device. Each wrapper takes borrowed fds and C strings,
//! checks the return value and answers an `io::Result`; none follows a
//! symlink unless its name says so.

use std::ffi::CStr;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_long(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// `struct open_how` of `linux/openat2.h` (libc's is non-exhaustive).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `openat2(dir, name, {flags, mode, resolve})`.
pub fn openat2(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: libc::c_int,
    mode: u32,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let how = OpenHow {
        flags: flags as u64,
        mode: u64::from(mode),
        resolve,
    };
    loop {
        // SAFETY: `name` is NUL-terminated and `how` is a live open_how
        // whose size is passed along; the kernel only reads both. The
        // returned fd, if any, is owned by nobody else yet.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                name.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        match cvt_long(ret) {
            Ok(fd) => {
                // SAFETY: `fd` is a fresh descriptor returned to us alone.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) });
            }
            // openat2 fails with EAGAIN when a rename raced the lookup
            // under RESOLVE_IN_ROOT; try again.
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// `fstatat(dir, name, flags)`; with an empty name and `AT_EMPTY_PATH`,
/// the stat of `dir` itself.
pub fn fstatat(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<libc::stat64> {
    let mut st = MaybeUninit::<libc::stat64>::zeroed();
    // SAFETY: `name` is NUL-terminated; `st` is writable memory of the
    // right type and size.
    cvt(unsafe { libc::fstatat64(dir.as_raw_fd(), name.as_ptr(), st.as_mut_ptr(), flags) })?;
    // SAFETY: fstatat succeeded and filled `st` (it was zeroed anyway).
    Ok(unsafe { st.assume_init() })
}

/// The stat of the object `fd` refers to (symlinks not followed).
pub fn stat_fd(fd: BorrowedFd<'_>) -> io::Result<libc::stat64> {
    fstatat(fd, c"", libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW)
}

/// `mkdirat`.
pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; the call only reads it.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
}

/// `mknodat`.
pub fn mknodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32, rdev: u64) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; the call only reads it.
    cvt(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, rdev) }).map(drop)
}

/// `symlinkat(target, dir, name)`.
pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated; the call only reads them.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

/// `linkat(olddir, oldname, newdir, newname, flags)`.
pub fn linkat(
    olddir: BorrowedFd<'_>,
    oldname: &CStr,
    newdir: BorrowedFd<'_>,
    newname: &CStr,
    flags: libc::c_int,
) -> io::Result<()> {
    // SAFETY: both names are NUL-terminated; the call only reads them.
    cvt(unsafe {
        libc::linkat(
            olddir.as_raw_fd(),
            oldname.as_ptr(),
            newdir.as_raw_fd(),
            newname.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

/// `unlinkat` (`AT_REMOVEDIR` for directories).
pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; the call only reads it.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

/// `renameat2`.
pub fn renameat2(
    olddir: BorrowedFd<'_>,
    oldname: &CStr,
    newdir: BorrowedFd<'_>,
    newname: &CStr,
    flags: u32,
) -> io::Result<()> {
    // SAFETY: both names are NUL-terminated; the call only reads them.
    cvt(unsafe {
        libc::renameat2(
            olddir.as_raw_fd(),
            oldname.as_ptr(),
            newdir.as_raw_fd(),
            newname.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

/// The target of the symlink `fd` (an `O_PATH` fd of the link itself).
pub fn readlink_fd(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: the pointer and length describe `buf`, which readlinkat
    // fills with at most that many bytes; the empty name is NUL-terminated.
    let n = cvt_size(unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })?;
    buf.truncate(n);
    Ok(buf)
}

/// `fchownat(fd, "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW)`:
/// change the owner of what `fd` refers to. `u32::MAX` leaves an id alone.
pub fn chown_fd(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    let flags = libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW;
    // SAFETY: the empty name is NUL-terminated; the call only reads it.
    cvt(unsafe { libc::fchownat(fd.as_raw_fd(), c"".as_ptr(), uid, gid, flags) }).map(drop)
}

/// `fchmodat(dir, name, mode, 0)`: used on `/proc/self/fd` entries, whose
/// magic links lead to the inode of an `O_PATH` fd.
pub fn fchmodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; the call only reads it.
    cvt(unsafe { libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), mode, 0) }).map(drop)
}

/// `utimensat(dir, name, times, 0)` (on `/proc/self/fd` entries).
pub fn utimensat(dir: BorrowedFd<'_>, name: &CStr, times: &[libc::timespec; 2]) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated and `times` points at two timespecs;
    // the call only reads them.
    cvt(unsafe { libc::utimensat(dir.as_raw_fd(), name.as_ptr(), times.as_ptr(), 0) }).map(drop)
}

/// `setxattr(path, name, value, flags)`.
pub fn setxattr(path: &CStr, name: &CStr, value: &[u8], flags: libc::c_int) -> io::Result<()> {
    // SAFETY: strings are NUL-terminated, `value` is a live slice whose
    // length is passed; the call only reads them.
    cvt(unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
    .map(drop)
}

/// `getxattr(path, name, buf)`; an empty `buf` asks for the size.
pub fn getxattr(path: &CStr, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: strings are NUL-terminated; the kernel writes at most
    // `buf.len()` bytes into `buf`.
    cvt_size(unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })
}

/// `listxattr(path, buf)`; an empty `buf` asks for the size.
pub fn listxattr(path: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `path` is NUL-terminated; the kernel writes at most
    // `buf.len()` bytes into `buf`.
    cvt_size(unsafe { libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })
}

/// `removexattr(path, name)`.
pub fn removexattr(path: &CStr, name: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated; the call only reads them.
    cvt(unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) }).map(drop)
}

/// `fremovexattr(fd, name)`.
pub fn fremovexattr(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; the call only reads it.
    cvt(unsafe { libc::fremovexattr(fd.as_raw_fd(), name.as_ptr()) }).map(drop)
}

/// `fallocate`.
pub fn fallocate(fd: BorrowedFd<'_>, mode: i32, offset: i64, len: i64) -> io::Result<()> {
    // SAFETY: plain integer arguments; no memory is shared with the kernel.
    cvt(unsafe { libc::fallocate64(fd.as_raw_fd(), mode, offset, len) }).map(drop)
}

/// `lseek`.
pub fn lseek(fd: BorrowedFd<'_>, offset: i64, whence: i32) -> io::Result<u64> {
    // SAFETY: plain integer arguments; no memory is shared with the kernel.
    let ret = unsafe { libc::lseek64(fd.as_raw_fd(), offset, whence) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as u64)
    }
}

/// `copy_file_range` between explicit offsets.
pub fn copy_file_range(
    fd_in: BorrowedFd<'_>,
    off_in: i64,
    fd_out: BorrowedFd<'_>,
    off_out: i64,
    len: usize,
) -> io::Result<usize> {
    let mut off_in = off_in;
    let mut off_out = off_out;
    // SAFETY: the offset pointers point at live locals the kernel updates;
    // no other memory is shared.
    cvt_size(unsafe {
        libc::copy_file_range(
            fd_in.as_raw_fd(),
            &mut off_in,
            fd_out.as_raw_fd(),
            &mut off_out,
            len,
            0,
        )
    })
}

/// Most buffers one `preadv`/`pwritev` call takes (the kernel's `UIO_MAXIOV`).
pub const IOV_MAX: usize = 1024;

/// The `iovec`s of (at most [`IOV_MAX`] of) `bufs`. The pointers stay
/// valid while `bufs` is borrowed: a `VolatileSlice` is a live mapping.
fn iovecs<B: BitmapSlice>(bufs: &[VolatileSlice<'_, B>]) -> Vec<libc::iovec> {
    bufs.iter()
        .take(IOV_MAX)
        .map(|b| libc::iovec {
            iov_base: b.ptr_guard_mut().as_ptr().cast(),
            iov_len: b.len(),
        })
        .collect()
}

/// `preadv(fd, bufs, offset)`: file bytes straight into (guest) memory
/// slices, in order, in one call; answers the bytes read (short at the end
/// of the file, or past the first [`IOV_MAX`] buffers).
pub fn preadv<B: BitmapSlice>(
    fd: BorrowedFd<'_>,
    bufs: &[VolatileSlice<'_, B>],
    offset: u64,
) -> io::Result<usize> {
    let iov = iovecs(bufs);
    let offset = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: each iovec covers exactly one slice of `bufs`, memory that
    // stays mapped while `bufs` is borrowed (for this whole call); the
    // kernel writes at most `iov_len` bytes into each. `iov` itself is a
    // live array of `iov.len()` entries.
    let n = cvt_size(unsafe {
        libc::preadv64(
            fd.as_raw_fd(),
            iov.as_ptr(),
            iov.len() as libc::c_int,
            offset,
        )
    })?;
    let mut left = n;
    for b in bufs {
        if left == 0 {
            break;
        }
        let k = b.len().min(left);
        b.bitmap().mark_dirty(0, k);
        left -= k;
    }
    Ok(n)
}

/// `pwritev(fd, bufs, offset)`: (guest) memory slices straight into the
/// file, in one call; answers the bytes written (possibly short).
pub fn pwritev<B: BitmapSlice>(
    fd: BorrowedFd<'_>,
    bufs: &[VolatileSlice<'_, B>],
    offset: u64,
) -> io::Result<usize> {
    let iov = iovecs(bufs);
    let offset = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: each iovec covers exactly one slice of `bufs`, memory that
    // stays mapped while `bufs` is borrowed; the kernel only reads it.
    cvt_size(unsafe {
        libc::pwritev64(
            fd.as_raw_fd(),
            iov.as_ptr(),
            iov.len() as libc::c_int,
            offset,
        )
    })
}

/// `fcntl(fd, cmd, &mut flock)` for the open-file-description lock commands.
pub fn ofd_lock(fd: BorrowedFd<'_>, cmd: libc::c_int, lock: &mut libc::flock64) -> io::Result<()> {
    // SAFETY: `lock` is a live flock64 the kernel reads and, for
    // F_OFD_GETLK, writes.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), cmd, lock as *mut libc::flock64) }).map(drop)
}

/// Clear `O_NONBLOCK` from the status flags of `fd`.
pub fn clear_nonblock(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_GETFL takes no argument and shares no memory.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    // SAFETY: F_SETFL takes an integer argument and shares no memory.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) }).map(drop)
}

/// `fstatvfs` of the filesystem holding `fd`.
pub fn fstatvfs(fd: BorrowedFd<'_>) -> io::Result<libc::statvfs64> {
    let mut st = MaybeUninit::<libc::statvfs64>::zeroed();
    // SAFETY: `st` is writable memory of the right type and size.
    cvt(unsafe { libc::fstatvfs64(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstatvfs succeeded and filled `st` (it was zeroed anyway).
    Ok(unsafe { st.assume_init() })
}

/// `getdents64` into `buf`; answers the bytes filled (0 at the end).
pub fn getdents64(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            fd.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    cvt_long(ret).map(|n| n as usize)
}

/// `syncfs` of the filesystem holding `fd`.
pub fn syncfs(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain fd argument; no memory is shared with the kernel.
    cvt(unsafe { libc::syncfs(fd.as_raw_fd()) }).map(drop)
}

/// The effective uid of the process.
pub fn geteuid() -> u32 {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() }
}
