//! Test helpers: run a closure in a forked child that only makes system
//! calls, and collect its exit status (and, optionally, its
//! `/proc/self/status`).

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `_exit(code)`.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
}

fn wait(pid: libc::pid_t) -> Outcome {
    let mut status = 0;
    // SAFETY: status is a valid out-pointer; pid is our child.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid, "waitpid: {}", std::io::Error::last_os_error());
    if libc::WIFEXITED(status) {
        Outcome::Exited(libc::WEXITSTATUS(status))
    } else {
        Outcome::Signaled(libc::WTERMSIG(status))
    }
}

/// Runs `f` in a forked child and returns how the child ended; the child
/// exits with `f`'s value (101 if it panicked).
pub fn run_in_child(f: impl FnOnce() -> i32) -> Outcome {
    // SAFETY: the child only runs `f` (system calls) and then `_exit`s; it
    // never returns into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
        // SAFETY: ends the child without running the parent's atexit handlers.
        unsafe { libc::_exit(code) };
    }
    wait(pid)
}

/// [`run_in_child`] for a child that must exit: returns its exit code.
pub fn in_child(f: impl FnOnce() -> i32) -> i32 {
    match run_in_child(f) {
        Outcome::Exited(code) => code,
        Outcome::Signaled(sig) => panic!("the child was killed by signal {sig}"),
    }
}

/// Runs `f` in a child; when it returns 0, the child sends its
/// `/proc/self/status` back. `Err(code)` is `f`'s nonzero value.
pub fn read_proc_status(f: impl FnOnce() -> i32) -> Result<String, i32> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: the read end is fresh and ours.
    let rd = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    // SAFETY: the write end is fresh and ours.
    let wr = unsafe { OwnedFd::from_raw_fd(fds[1]) };
    let wr_fd = fds[1];
    let outcome = {
        let child = move || {
            let code = f();
            if code != 0 {
                return code;
            }
            let mut buf = [0u8; 8192];
            // SAFETY: the path is NUL-terminated; open has no other preconditions.
            let fd = unsafe { libc::open(c"/proc/self/status".as_ptr(), libc::O_RDONLY) };
            if fd < 0 {
                return 90;
            }
            // SAFETY: buf is writable for its whole length.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return 91;
            }
            // SAFETY: buf holds n initialised bytes; wr_fd is the pipe's write end.
            if unsafe { libc::write(wr_fd, buf.as_ptr().cast(), n as usize) } != n {
                return 92;
            }
            0
        };
        // SAFETY: see run_in_child; the child only makes system calls.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(child)).unwrap_or(101);
            // SAFETY: ends the child.
            unsafe { libc::_exit(code) };
        }
        drop(wr);
        let mut text = String::new();
        std::fs::File::from(rd)
            .read_to_string(&mut text)
            .expect("reading the child's status");
        (wait(pid), text)
    };
    match outcome {
        (Outcome::Exited(0), text) => Ok(text),
        (Outcome::Exited(code), _) => Err(code),
        (Outcome::Signaled(sig), _) => panic!("the child was killed by signal {sig}"),
    }
}
