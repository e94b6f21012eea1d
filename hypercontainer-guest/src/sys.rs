//! Thin, checked wrappers over the system calls the agent uses.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// Result of a wrapper: the OS error as an `io::Error`.
pub type SysResult<T> = io::Result<T>;

fn check(ret: libc::c_int) -> SysResult<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A path as a C string; interior NUL bytes are an `InvalidInput` error.
pub fn cpath(p: &Path) -> SysResult<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// A string as a C string; interior NUL bytes are an `InvalidInput` error.
pub fn cstr(s: &str) -> SysResult<CString> {
    CString::new(s)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "string contains a NUL byte"))
}

/// `mount(2)`.
pub fn mount(
    source: &str,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> SysResult<()> {
    let source = cstr(source)?;
    let target = cpath(target)?;
    let fstype = fstype.map(cstr).transpose()?;
    let data = data.map(cstr).transpose()?;
    // SAFETY: all pointers are NUL-terminated strings (or null) that outlive the call.
    let ret = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            data.as_ref()
                .map_or(std::ptr::null(), |s| s.as_ptr().cast()),
        )
    };
    check(ret).map(drop)
}

/// `umount2(2)`.
pub fn umount2(target: &Path, flags: libc::c_int) -> SysResult<()> {
    let target = cpath(target)?;
    // SAFETY: target is a valid C string.
    check(unsafe { libc::umount2(target.as_ptr(), flags) }).map(drop)
}

/// `pivot_root(2)`.
pub fn pivot_root(new_root: &Path, put_old: &Path) -> SysResult<()> {
    let n = cpath(new_root)?;
    let o = cpath(put_old)?;
    // SAFETY: both arguments are valid C strings; the syscall takes two pointers.
    let ret = unsafe { libc::syscall(libc::SYS_pivot_root, n.as_ptr(), o.as_ptr()) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `chroot(2)`.
pub fn chroot(p: &Path) -> SysResult<()> {
    let p = cpath(p)?;
    // SAFETY: p is a valid C string.
    check(unsafe { libc::chroot(p.as_ptr()) }).map(drop)
}

/// `mknod(2)` of a node of type `kind` (`S_IFCHR`, `S_IFBLK`, `S_IFIFO`).
pub fn mknod(p: &Path, kind: libc::mode_t, mode: u32, major: u32, minor: u32) -> SysResult<()> {
    let p = cpath(p)?;
    let dev = libc::makedev(major, minor);
    // SAFETY: p is a valid C string.
    check(unsafe { libc::mknod(p.as_ptr(), kind | (mode & 0o7777), dev) }).map(drop)
}

/// `sethostname(2)`.
pub fn sethostname(name: &str) -> SysResult<()> {
    // SAFETY: the pointer and length describe `name`'s bytes.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
}

/// `CLOCK_BOOTTIME` in nanoseconds.
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// `pipe2(O_CLOEXEC)`: (read end, write end).
pub fn pipe() -> SysResult<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 returned a fresh read descriptor we now own.
    let r = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    // SAFETY: and a fresh write descriptor we now own.
    let w = unsafe { OwnedFd::from_raw_fd(fds[1]) };
    Ok((r, w))
}

/// Sets or clears `O_NONBLOCK`.
pub fn set_nonblocking(fd: RawFd, on: bool) -> SysResult<()> {
    // SAFETY: F_GETFL on any descriptor number is harmless.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    let flags = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    // SAFETY: F_SETFL with flags derived from F_GETFL.
    check(unsafe { libc::fcntl(fd, libc::F_SETFL, flags) }).map(drop)
}

/// Sets `FD_CLOEXEC`.
pub fn set_cloexec(fd: RawFd) -> SysResult<()> {
    // SAFETY: F_SETFD on a descriptor we were given.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) }).map(drop)
}

/// `read(2)` into `buf`.
pub fn read(fd: RawFd, buf: &mut [u8]) -> SysResult<usize> {
    // SAFETY: buf is valid for writes of buf.len() bytes.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `write(2)` of `buf`.
pub fn write(fd: RawFd, buf: &[u8]) -> SysResult<usize> {
    // SAFETY: buf is valid for reads of buf.len() bytes.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Writes all of `buf` to a (possibly non-blocking) descriptor, waiting for
/// it to become writable when needed.
pub fn write_all(fd: RawFd, mut buf: &[u8]) -> SysResult<()> {
    while !buf.is_empty() {
        match write(fd, buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut p = [libc::pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                }];
                poll(&mut p, -1)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `poll(2)`; EINTR is reported as zero ready descriptors.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: libc::c_int) -> SysResult<usize> {
    // SAFETY: fds is a valid slice of pollfd structures.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(n as usize)
}

/// Blocks `SIGCHLD` and returns a non-blocking signalfd for it. `SIGPIPE`
/// is ignored so that writes to closed pipes fail with `EPIPE`.
pub fn sigchld_fd() -> SysResult<OwnedFd> {
    // SAFETY: sigset_t is plain data; it is initialized by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    // SAFETY: set is a valid, initialized sigset_t.
    unsafe { libc::sigaddset(&mut set, libc::SIGCHLD) };
    // SAFETY: set is valid; the old mask is not needed.
    check(unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) })?;
    // SAFETY: ignoring SIGPIPE is always sound.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    // SAFETY: set is valid; -1 asks for a new descriptor.
    let fd = check(unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) })?;
    // SAFETY: signalfd returned a fresh descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Empties a signalfd.
pub fn drain_signalfd(fd: &OwnedFd) {
    let mut buf = [0u8; std::mem::size_of::<libc::signalfd_siginfo>() * 8];
    while matches!(read(fd.as_raw_fd(), &mut buf), Ok(n) if n > 0) {}
}

/// Undoes, in a child, what [`sigchld_fd`] did to the signal state.
pub fn reset_signals_in_child() {
    // SAFETY: sigset_t is plain data; sigemptyset initializes it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    // SAFETY: an empty mask is valid.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) };
    // SAFETY: restoring the default disposition is always sound.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// What `waitpid` reported.
pub enum Wait {
    /// A child changed state: pid and exit status (code or 128 + signal).
    Exited(libc::pid_t, i32),
    /// Children exist but none has exited (only with `WNOHANG`).
    Running,
    /// No children left.
    NoChildren,
}

/// `waitpid(pid, flags)`, folding the status into a container exit status.
pub fn waitpid(pid: libc::pid_t, flags: libc::c_int) -> Wait {
    loop {
        let mut status = 0;
        // SAFETY: status is a valid int to write to.
        let r = unsafe { libc::waitpid(pid, &mut status, flags) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Wait::NoChildren;
        }
        if r == 0 {
            return Wait::Running;
        }
        return Wait::Exited(r, exit_status(status));
    }
}

/// A wait status as a container exit status: the code, or 128 + signal.
pub fn exit_status(status: libc::c_int) -> i32 {
    if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        libc::WEXITSTATUS(status)
    }
}

/// `kill(2)`.
pub fn kill(pid: libc::pid_t, sig: libc::c_int) -> SysResult<()> {
    // SAFETY: kill has no memory-safety preconditions.
    check(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// Sets a terminal's window size.
pub fn set_winsize(fd: RawFd, rows: u16, cols: u16) -> SysResult<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer.
    check(unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) }).map(drop)
}

/// Opens a new pseudo-terminal master (`/dev/ptmx`) and returns it with the
/// path of its slave.
pub fn open_pty() -> SysResult<(OwnedFd, CString)> {
    // SAFETY: posix_openpt has no memory-safety preconditions.
    let fd = check(unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) })?;
    // SAFETY: fd is a fresh descriptor we now own.
    let master = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: master is a pty master.
    check(unsafe { libc::grantpt(master.as_raw_fd()) })?;
    // SAFETY: master is a pty master.
    check(unsafe { libc::unlockpt(master.as_raw_fd()) })?;
    let mut buf = [0 as libc::c_char; 128];
    // SAFETY: buf is writable for buf.len() bytes.
    let r = unsafe { libc::ptsname_r(master.as_raw_fd(), buf.as_mut_ptr(), buf.len()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    // SAFETY: ptsname_r NUL-terminated the name inside buf.
    let name = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_owned();
    Ok((master, name))
}

/// Duplicates a descriptor (close-on-exec).
pub fn dup(fd: &OwnedFd) -> SysResult<OwnedFd> {
    fd.try_clone()
}

/// Makes sure descriptors 0, 1 and 2 are open (on `path`, else
/// `/dev/null`), so that no pipe or socket the agent opens later lands on
/// a standard descriptor of its children.
pub fn ensure_std_fds(path: &CStr) {
    for fd in 0..3 {
        // SAFETY: F_GETFD on any number is harmless.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0 {
            continue;
        }
        // SAFETY: path is a valid C string.
        let mut new = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NOCTTY) };
        if new < 0 {
            // SAFETY: the literal is a valid C string.
            new = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        }
        if new >= 0 && new != fd {
            // SAFETY: both descriptors are valid; fd is free.
            unsafe { libc::dup2(new, fd) };
            // SAFETY: new is ours and no longer needed.
            unsafe { libc::close(new) };
        }
    }
}

/// `openat2(2)` of `path` below `dir` with `RESOLVE_IN_ROOT |
/// RESOLVE_NO_MAGICLINKS` (plus `resolve`): symlinks and `..` are resolved
/// as if `dir` were the root, so the result never lies outside it.
pub fn open_in_root(
    dir: &OwnedFd,
    path: &Path,
    flags: libc::c_int,
    mode: u32,
    resolve: u64,
) -> SysResult<OwnedFd> {
    let p = cpath(path)?;
    // SAFETY: open_how is plain data; all-zero is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = u64::from(mode);
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS | resolve;
    // SAFETY: p is a valid C string and how a valid open_how of the given size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            p.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat2 returned a fresh descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Opens a directory (`O_PATH | O_DIRECTORY`) by an absolute path.
pub fn open_dir_path(path: &Path) -> SysResult<OwnedFd> {
    let p = cpath(path)?;
    // SAFETY: p is a valid C string.
    let fd = check(unsafe {
        libc::open(
            p.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: open returned a fresh descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `mkdirat(2)` of one name under `dir`.
pub fn mkdirat(dir: &OwnedFd, name: &Path, mode: u32) -> SysResult<()> {
    let n = cpath(name)?;
    // SAFETY: n is a valid C string.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), n.as_ptr(), mode as libc::mode_t) }).map(drop)
}

/// Creates an empty regular file `name` under `dir` if nothing is there.
pub fn touch_at(dir: &OwnedFd, name: &Path, mode: u32) -> SysResult<()> {
    let n = cpath(name)?;
    // SAFETY: n is a valid C string.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            n.as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::EEXIST) {
            Ok(())
        } else {
            Err(e)
        };
    }
    // SAFETY: fd is a fresh descriptor we own.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(())
}

/// The `/proc/self/fd/N` path of a descriptor, to name an `O_PATH` fd in
/// `mount(2)`.
pub fn fd_path(fd: &OwnedFd) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// `setns(2)`.
pub fn setns(fd: &OwnedFd, nstype: libc::c_int) -> SysResult<()> {
    // SAFETY: setns has no memory-safety preconditions.
    check(unsafe { libc::setns(fd.as_raw_fd(), nstype) }).map(drop)
}

/// `unshare(2)`.
pub fn unshare(flags: libc::c_int) -> SysResult<()> {
    // SAFETY: unshare has no memory-safety preconditions.
    check(unsafe { libc::unshare(flags) }).map(drop)
}

/// `fork(2)` with new namespaces (`clone(2)` with `flags | SIGCHLD` and no
/// new stack): returns 0 in the child, its pid in the parent.
///
/// # Safety
///
/// As for `fork`: the calling process must be single-threaded, and the
/// child must only return through `execve` or `_exit`.
pub unsafe fn fork_into(flags: libc::c_int) -> SysResult<libc::pid_t> {
    let clone_flags = (flags as libc::c_ulong) | libc::SIGCHLD as libc::c_ulong;
    // SAFETY: with a null stack the child runs on a copy of the caller's
    // stack, exactly as after fork; the caller guarantees single-threading.
    let r = unsafe { libc::syscall(libc::SYS_clone, clone_flags, 0usize, 0usize, 0usize, 0usize) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as libc::pid_t)
    }
}

/// `mount(2)` with no source and no data: a propagation change or a
/// remount of `target`.
pub fn mount_flags(target: &Path, flags: libc::c_ulong) -> SysResult<()> {
    let t = cpath(target)?;
    // SAFETY: t is a valid C string; null source, type and data are allowed.
    let ret = unsafe {
        libc::mount(
            std::ptr::null(),
            t.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    check(ret).map(drop)
}

/// The mount flags of the mount holding `path` (`statvfs(3)`'s `ST_*`
/// bits, which equal the `MS_*` bits for read-only, nosuid, nodev and
/// noexec).
pub fn mount_flags_of(path: &Path) -> SysResult<libc::c_ulong> {
    let p = cpath(path)?;
    // SAFETY: statvfs is plain data filled by the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: p is a valid C string and st a valid buffer.
    check(unsafe { libc::statvfs(p.as_ptr(), &mut st) })?;
    Ok(st.f_flag as libc::c_ulong)
}

/// Opens a pty slave by path, without making it the controlling terminal.
pub fn open_pty_slave(path: &CStr) -> SysResult<OwnedFd> {
    // SAFETY: path is a valid C string.
    let fd = check(unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: open returned a fresh descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A connected `AF_UNIX` stream socket pair (close-on-exec).
pub fn socketpair() -> SysResult<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors.
    check(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: socketpair returned two fresh descriptors we now own.
    let a = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    // SAFETY: as above.
    let b = unsafe { OwnedFd::from_raw_fd(fds[1]) };
    Ok((a, b))
}

/// Space for one descriptor in a control message.
const FD_CMSG_SPACE: usize = 64;

fn one_byte_iov(byte: &mut [u8; 1]) -> libc::iovec {
    libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    }
}

/// A message header over one iovec and a control buffer (its whole length).
fn fd_msghdr(iov: &mut libc::iovec, space: &mut [u8; FD_CMSG_SPACE]) -> libc::msghdr {
    // SAFETY: msghdr is plain data; zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = space.as_mut_ptr().cast();
    msg.msg_controllen = space.len();
    msg
}

/// Sends one descriptor (and one byte) over a Unix socket (`SCM_RIGHTS`).
pub fn send_fd(sock: RawFd, fd: RawFd) -> SysResult<()> {
    let mut byte = [0u8; 1];
    let mut iov = one_byte_iov(&mut byte);
    let mut space = [0u8; FD_CMSG_SPACE];
    let mut msg = fd_msghdr(&mut iov, &mut space);
    // SAFETY: CMSG_SPACE only computes a size.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    // SAFETY: the control buffer is large enough for one header.
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    if cmsg.is_null() {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    // SAFETY: CMSG_LEN only computes a size.
    let len = unsafe { libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) } as usize;
    // SAFETY: cmsg points at a header inside `space`, which nothing else uses.
    let hdr = unsafe { &mut *cmsg };
    hdr.cmsg_level = libc::SOL_SOCKET;
    hdr.cmsg_type = libc::SCM_RIGHTS;
    hdr.cmsg_len = len;
    // SAFETY: CMSG_DATA points inside `space`, past the header.
    let data = unsafe { libc::CMSG_DATA(cmsg) };
    // SAFETY: `space` has room for one descriptor after the header.
    unsafe { std::ptr::write_unaligned(data.cast::<RawFd>(), fd) };
    // SAFETY: msg describes valid buffers that outlive the call.
    let r = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Receives one descriptor sent by [`send_fd`]; `None` when the peer
/// closed without sending one.
pub fn recv_fd(sock: RawFd) -> SysResult<Option<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut iov = one_byte_iov(&mut byte);
    let mut space = [0u8; FD_CMSG_SPACE];
    let mut msg = fd_msghdr(&mut iov, &mut space);
    let r = loop {
        // SAFETY: msg describes valid buffers that outlive the call.
        let r = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if r < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        break r;
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled msg's control area (possibly empty).
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    if r == 0 || cmsg.is_null() {
        return Ok(None);
    }
    // SAFETY: cmsg points at a header inside `space`, filled by the kernel.
    let hdr = unsafe { &*cmsg };
    let (level, ty) = (hdr.cmsg_level, hdr.cmsg_type);
    if level != libc::SOL_SOCKET || ty != libc::SCM_RIGHTS {
        return Ok(None);
    }
    // SAFETY: CMSG_DATA points inside `space`, past the header.
    let data = unsafe { libc::CMSG_DATA(cmsg) };
    // SAFETY: an SCM_RIGHTS message carries at least one descriptor.
    let fd = unsafe { std::ptr::read_unaligned(data.cast::<RawFd>()) };
    // SAFETY: the kernel installed this descriptor for us.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}
