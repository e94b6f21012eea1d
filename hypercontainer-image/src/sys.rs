//! Thin, safe wrappers over the `*at` system calls used to write inside a
//! root directory without ever following a symlink by accident.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub(crate) fn cstr(name: &[u8]) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn retry<F: FnMut() -> libc::c_int>(mut f: F) -> io::Result<libc::c_int> {
    loop {
        match check(f()) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// `openat(2)`; the returned descriptor is owned.
pub(crate) fn openat(
    dir: RawFd,
    name: &CStr,
    flags: libc::c_int,
    mode: u32,
) -> io::Result<OwnedFd> {
    let fd = retry(|| {
        // SAFETY: `name` is a valid NUL-terminated string; the kernel only reads it.
        unsafe {
            libc::openat(
                dir,
                name.as_ptr(),
                flags | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        }
    })?;
    // SAFETY: `fd` was just returned by a successful openat and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens a path (following symlinks: the caller trusts it) as an `O_PATH` directory.
pub(crate) fn open_dir_path(path: &Path) -> io::Result<OwnedFd> {
    let c = cstr(path.as_os_str().as_bytes())?;
    openat(libc::AT_FDCWD, &c, libc::O_PATH | libc::O_DIRECTORY, 0)
}

/// Opens `name` in `dir` as an `O_PATH` directory, never following a symlink.
pub(crate) fn open_subdir(dir: RawFd, name: &CStr) -> io::Result<OwnedFd> {
    openat(
        dir,
        name,
        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )
}

/// Opens `name` in `dir` as a readable directory, never following a symlink.
pub(crate) fn open_subdir_rd(dir: RawFd, name: &CStr) -> io::Result<OwnedFd> {
    openat(
        dir,
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )
}

/// Re-opens an `O_PATH` directory descriptor for reading.
pub(crate) fn reopen_dir_rd(dir: RawFd) -> io::Result<OwnedFd> {
    openat(dir, c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)
}

pub(crate) fn lstatat(dir: RawFd, name: &CStr) -> io::Result<libc::stat> {
    // SAFETY: all-zero bytes are a valid `struct stat`.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    retry(|| {
        // SAFETY: `name` is NUL-terminated and `st` is a valid, writable stat buffer.
        unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) }
    })?;
    Ok(st)
}

pub(crate) fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: all-zero bytes are a valid `struct stat`.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid, writable stat buffer; an invalid fd only yields EBADF.
    retry(|| unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
}

pub(crate) fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

pub(crate) fn is_symlink(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFLNK
}

pub(crate) fn mkdirat(dir: RawFd, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: `name` is a valid NUL-terminated string.
    retry(|| unsafe { libc::mkdirat(dir, name.as_ptr(), mode as libc::mode_t) }).map(drop)
}

pub(crate) fn unlinkat(dir: RawFd, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: `name` is a valid NUL-terminated string.
    retry(|| unsafe { libc::unlinkat(dir, name.as_ptr(), flags) }).map(drop)
}

pub(crate) fn symlinkat(target: &CStr, dir: RawFd, name: &CStr) -> io::Result<()> {
    // SAFETY: both strings are valid and NUL-terminated.
    retry(|| unsafe { libc::symlinkat(target.as_ptr(), dir, name.as_ptr()) }).map(drop)
}

/// `linkat(2)` without `AT_SYMLINK_FOLLOW`: a symlink source is linked itself.
pub(crate) fn linkat(odir: RawFd, oname: &CStr, ndir: RawFd, nname: &CStr) -> io::Result<()> {
    // SAFETY: both strings are valid and NUL-terminated.
    retry(|| unsafe { libc::linkat(odir, oname.as_ptr(), ndir, nname.as_ptr(), 0) }).map(drop)
}

pub(crate) fn mknodat(dir: RawFd, name: &CStr, mode: u32, dev: libc::dev_t) -> io::Result<()> {
    // SAFETY: `name` is a valid NUL-terminated string.
    retry(|| unsafe { libc::mknodat(dir, name.as_ptr(), mode as libc::mode_t, dev) }).map(drop)
}

pub(crate) fn readlinkat(dir: RawFd, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: `buf` is writable for `buf.len()` bytes; `name` is NUL-terminated.
    let n = unsafe { libc::readlinkat(dir, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// `fchownat(2)` with `AT_SYMLINK_NOFOLLOW`.
pub(crate) fn lchownat(dir: RawFd, name: &CStr, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: `name` is a valid NUL-terminated string.
    retry(|| unsafe { libc::fchownat(dir, name.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) })
        .map(drop)
}

/// `fchownat(2)` on the descriptor itself (`AT_EMPTY_PATH`), works on `O_PATH` fds.
pub(crate) fn fchown_empty(fd: RawFd, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: the empty string literal is NUL-terminated.
    retry(|| unsafe { libc::fchownat(fd, c"".as_ptr(), uid, gid, libc::AT_EMPTY_PATH) }).map(drop)
}

pub(crate) fn fchmod(fd: RawFd, mode: u32) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor.
    retry(|| unsafe { libc::fchmod(fd, mode as libc::mode_t) }).map(drop)
}

pub(crate) fn fchown(fd: RawFd, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor.
    retry(|| unsafe { libc::fchown(fd, uid, gid) }).map(drop)
}

fn timespecs(sec: i64, nsec: u32) -> [libc::timespec; 2] {
    let t = libc::timespec {
        tv_sec: sec as libc::time_t,
        tv_nsec: nsec.min(999_999_999) as _,
    };
    [t, t]
}

pub(crate) fn futimens(fd: RawFd, sec: i64, nsec: u32) -> io::Result<()> {
    let ts = timespecs(sec, nsec);
    // SAFETY: `ts` points to two valid timespecs.
    retry(|| unsafe { libc::futimens(fd, ts.as_ptr()) }).map(drop)
}

/// `utimensat(2)` with `AT_SYMLINK_NOFOLLOW`.
pub(crate) fn lutimensat(dir: RawFd, name: &CStr, sec: i64, nsec: u32) -> io::Result<()> {
    let ts = timespecs(sec, nsec);
    // SAFETY: `ts` points to two valid timespecs and `name` is NUL-terminated.
    retry(|| unsafe { libc::utimensat(dir, name.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
        .map(drop)
}

pub(crate) fn fsetxattr(fd: RawFd, name: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated and `value` is readable for its length.
    retry(|| unsafe { libc::fsetxattr(fd, name.as_ptr(), value.as_ptr().cast(), value.len(), 0) })
        .map(drop)
}

/// Lists a directory's entries (without `.` and `..`) from a readable descriptor.
pub(crate) fn list_dir(fd: &OwnedFd) -> io::Result<Vec<OsString>> {
    let dup = fd.try_clone()?;
    let raw = dup.as_raw_fd();
    // SAFETY: `raw` is a valid descriptor we own; on success fdopendir takes it over.
    let dirp = unsafe { libc::fdopendir(raw) };
    if dirp.is_null() {
        return Err(io::Error::last_os_error());
    }
    std::mem::forget(dup);
    // SAFETY: `dirp` is a valid DIR* we just created.
    unsafe { libc::rewinddir(dirp) };
    let mut out = Vec::new();
    loop {
        // SAFETY: __errno_location has no preconditions and returns this thread's errno slot.
        let errno = unsafe { libc::__errno_location() };
        // SAFETY: `errno` points to this thread's errno; reset it to detect readdir errors.
        unsafe { *errno = 0 };
        // SAFETY: `dirp` is a valid DIR* stream.
        let ent = unsafe { libc::readdir64(dirp) };
        if ent.is_null() {
            let err = io::Error::last_os_error();
            // SAFETY: `dirp` is valid and closed exactly once.
            unsafe { libc::closedir(dirp) };
            if err.raw_os_error().unwrap_or(0) != 0 {
                return Err(err);
            }
            return Ok(out);
        }
        // SAFETY: readdir returned a valid, non-null entry that stays valid until the next call.
        let d_name = unsafe { &(*ent).d_name };
        // SAFETY: d_name is NUL-terminated within its array.
        let name = unsafe { CStr::from_ptr(d_name.as_ptr()) };
        let b = name.to_bytes();
        if b != b"." && b != b".." {
            out.push(OsStr::from_bytes(b).to_owned());
        }
    }
}

/// Removes `name` in `dir`, recursing into directories without following symlinks.
pub(crate) fn remove_all_at(dir: RawFd, name: &CStr) -> io::Result<()> {
    let st = match lstatat(dir, name) {
        Ok(st) => st,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if is_dir(&st) {
        let sub = open_subdir_rd(dir, name)?;
        clear_dir(&sub)?;
        unlinkat(dir, name, libc::AT_REMOVEDIR)
    } else {
        unlinkat(dir, name, 0)
    }
}

/// Removes everything inside a readable directory descriptor.
pub(crate) fn clear_dir(fd: &OwnedFd) -> io::Result<()> {
    for child in list_dir(fd)? {
        let c = cstr(child.as_bytes())?;
        remove_all_at(fd.as_raw_fd(), &c)?;
    }
    Ok(())
}

/// Removes a directory tree given by path (the last component is not followed).
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let pfd = open_dir_path(if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    })?;
    remove_all_at(pfd.as_raw_fd(), &cstr(name.as_bytes())?)
}

pub(crate) fn geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// `syncfs(2)` on the filesystem holding `fd`.
pub(crate) fn syncfs(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor.
    check(unsafe { libc::syncfs(fd) }).map(drop)
}

/// `flock(2)`.
pub(crate) fn flock(fd: RawFd, op: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor.
    retry(|| unsafe { libc::flock(fd, op) }).map(drop)
}
