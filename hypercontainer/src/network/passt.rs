//! One `passt` process per user-mode sandbox, and its lifetime.
//!
//! passt (Debian's `passt` package) is a user-mode network stack: it
//! terminates the guest's TCP, UDP and ICMP in its own sockets on the host,
//! so the guest's traffic leaves with the host's addresses, as a NATed
//! container's does, without root or host configuration. The VM's
//! virtio-net device and passt share a socketpair (`passt -F`), over which
//! frames travel with a 4-byte big-endian length in front
//! ([`StreamBackend`](hypercontainer_virtio::net::StreamBackend)).
//!
//! Lifetime: passt is started in the foreground with its end of the
//! socketpair as fd 3 and, while the SDK's process lives, `SIGKILL` as its
//! parent-death signal. passt leaves when the socket's other end closes,
//! which happens when the VM is dropped, or when the SDK's process dies in
//! any way; dropping the sandbox also kills and reaps it. A named
//! supervisor thread drains passt's standard error (the last lines are
//! kept for error messages) and reaps it; an exit it did not ask for is
//! kept as [`Error::PasstDied`] for
//! [`Sandbox::network_error`](crate::sandbox::Sandbox::network_error).
//!
//! passt writes its pid file once its configuration is applied and every
//! published port is bound: that file, in a private temporary directory,
//! is the readiness signal `start()` waits for.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Error, Result};

/// Environment variable naming the passt binary (default: `passt` on
/// `PATH`, else `/usr/bin/passt`).
pub const PASST_ENV: &str = "HYPERCONTAINER_PASST";
/// How long passt may take to apply its configuration and bind its ports.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How much of passt's standard error is kept for messages.
const STDERR_TAIL: usize = 4096;
/// The fd number passt finds its end of the socketpair at.
const PASST_FD: i32 = 3;

/// What the supervisor thread learned.
#[derive(Debug, Default)]
struct Shared {
    /// passt's last words.
    stderr: String,
    /// How it ended, once it did.
    exit: Option<String>,
}

/// A running passt.
pub(crate) struct Passt {
    child: Arc<Mutex<Child>>,
    shared: Arc<Mutex<Shared>>,
    stopping: Arc<AtomicBool>,
    supervisor: Option<JoinHandle<()>>,
    dir: PathBuf,
}

impl std::fmt::Debug for Passt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passt").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The passt binary: [`PASST_ENV`], else `passt` on `PATH`, else
/// `/usr/bin/passt`.
pub fn passt_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(PASST_ENV) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(Error::PasstMissing { looked_at: p })
        };
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("passt"))
        .find(|p| p.is_file());
    let p = on_path.unwrap_or_else(|| PathBuf::from("/usr/bin/passt"));
    if p.is_file() {
        Ok(p)
    } else {
        Err(Error::PasstMissing { looked_at: p })
    }
}

impl Passt {
    /// Starts passt with `args` (its address, port and DNS options) on
    /// one end of a new socketpair, waits until it is ready, and returns
    /// it with the other end.
    pub(super) fn spawn(args: &[String]) -> Result<(Passt, UnixStream)> {
        let binary = passt_binary()?;
        let (ours, theirs) = UnixStream::pair().map_err(Error::PasstSpawn)?;
        let dir = private_dir()?;
        let pid_file = prepare_pid_file(&dir).inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&dir);
        })?;
        let mut cmd = Command::new(&binary);
        cmd.args(["-f", "-q", "-e", "-F"])
            .arg(PASST_FD.to_string())
            .arg("-P")
            .arg(&pid_file)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let fd = theirs.as_raw_fd();
        // SAFETY: the closure runs in the child between fork and exec and
        // only makes async-signal-safe system calls (see `in_child`).
        unsafe {
            cmd.pre_exec(move || in_child(fd));
        }
        let mut child = cmd.spawn().map_err(|e| {
            let _ = std::fs::remove_dir_all(&dir);
            Error::PasstSpawn(e)
        })?;
        drop(theirs);
        let stderr = child.stderr.take().expect("stderr is piped");
        let child = Arc::new(Mutex::new(child));
        let shared = Arc::new(Mutex::new(Shared::default()));
        let stopping = Arc::new(AtomicBool::new(false));
        let supervisor = spawn_supervisor(stderr, child.clone(), shared.clone(), stopping.clone())
            .map_err(Error::PasstSpawn)?;
        let mut passt = Passt {
            child,
            shared,
            stopping,
            supervisor: Some(supervisor),
            dir,
        };
        passt.wait_ready(&pid_file)?;
        Ok((passt, ours))
    }

    /// Waits for the pid file, or for passt to give up.
    fn wait_ready(&mut self, pid_file: &Path) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if std::fs::metadata(pid_file).is_ok_and(|m| m.len() > 0) {
                return Ok(());
            }
            let exited = lock(&self.child).try_wait().ok().flatten();
            if let Some(status) = exited {
                // Let the supervisor read the rest of standard error.
                if let Some(t) = self.supervisor.take() {
                    let _ = t.join();
                }
                return Err(Error::PasstFailed {
                    status: status.to_string(),
                    stderr: lock(&self.shared).stderr.trim().to_string(),
                });
            }
            if Instant::now() > deadline {
                return Err(Error::PasstTimeout {
                    timeout: READY_TIMEOUT,
                    stderr: lock(&self.shared).stderr.trim().to_string(),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// passt's exit, if it ended without being asked to.
    pub(crate) fn failure(&self) -> Option<Error> {
        if self.stopping.load(Ordering::Acquire) {
            return None;
        }
        let shared = lock(&self.shared);
        shared.exit.as_ref().map(|status| Error::PasstDied {
            status: status.clone(),
            stderr: shared.stderr.trim().to_string(),
        })
    }

    /// passt's pid (for tests that check it is gone).
    pub(crate) fn pid(&self) -> u32 {
        lock(&self.child).id()
    }
}

impl Drop for Passt {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        // Under the lock the supervisor reaps with, so the pid cannot have
        // been reused: std's kill does nothing once the child is reaped.
        let _ = lock(&self.child).kill();
        if let Some(t) = self.supervisor.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// In passt's child before exec: its end of the socketpair at
/// [`PASST_FD`] (without close-on-exec), and `SIGKILL` when the SDK's
/// process dies. Only async-signal-safe calls (`fcntl`, `dup2`, `prctl`).
fn in_child(fd: i32) -> std::io::Result<()> {
    let rc = if fd == PASST_FD {
        // SAFETY: F_SETFD on an fd open in this process; no memory effects.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }
    } else {
        // SAFETY: dup2 of an open fd; no memory effects.
        unsafe { libc::dup2(fd, PASST_FD) }
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: PR_SET_PDEATHSIG takes a signal number; no memory effects.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A directory only this process uses, for passt's pid file.
fn private_dir() -> Result<PathBuf> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("hypercontainer-passt-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).map_err(Error::PasstSpawn)?;
    Ok(dir)
}

/// An empty pid file passt can write: passt started as root runs as
/// `nobody` before it writes the file, so the file is then given to
/// `nobody` and the directory made searchable (not listable) for it.
fn prepare_pid_file(dir: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("passt.pid");
    std::fs::File::create(&path).map_err(Error::PasstSpawn)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let (uid, gid) = nobody();
        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(Error::PasstSpawn)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
            .map_err(Error::PasstSpawn)?;
    }
    Ok(path)
}

/// The uid and gid of `nobody`, whom passt runs as when started as root
/// (65534 where the user database has no such user).
fn nobody() -> (u32, u32) {
    // SAFETY: passwd is plain data; all-zero is a valid value.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: the name is NUL-terminated, `pw`, `buf` and `out` outlive the
    // call and `buf`'s length is passed along.
    let rc = unsafe {
        libc::getpwnam_r(
            c"nobody".as_ptr(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut out,
        )
    };
    if rc == 0 && !out.is_null() {
        (pw.pw_uid, pw.pw_gid)
    } else {
        (65534, 65534)
    }
}

/// Drains passt's standard error until it ends, then reaps passt and
/// records how it ended.
fn spawn_supervisor(
    mut stderr: std::process::ChildStderr,
    child: Arc<Mutex<Child>>,
    shared: Arc<Mutex<Shared>>,
    stopping: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("passt-supervisor".into())
        .spawn(move || {
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = stderr.read(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]);
                    let mut s = lock(&shared);
                    for line in text.lines().filter(|l| !is_syslog_noise(l)) {
                        log::debug!("passt: {line}");
                        s.stderr.push_str(line);
                        s.stderr.push('\n');
                    }
                    let len = s.stderr.len();
                    if len > STDERR_TAIL {
                        let mut cut = len - STDERR_TAIL;
                        while !s.stderr.is_char_boundary(cut) {
                            cut += 1;
                        }
                        s.stderr.drain(..cut);
                    }
                }
                let status = lock(&child).wait();
                let status = match status {
                    Ok(s) => s.to_string(),
                    Err(e) => format!("unknown ({e})"),
                };
                if !stopping.load(Ordering::Acquire) {
                    log::warn!("passt ended ({status}): the sandbox's network is down");
                }
                lock(&shared).exit = Some(status);
            }));
            if run.is_err() {
                log::error!("the passt supervisor thread panicked");
            }
        })
}

/// passt tries the system log first and says so when there is none.
fn is_syslog_noise(line: &str) -> bool {
    line.starts_with("Failed to send") && line.ends_with("to syslog")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syslog_complaints_are_not_kept() {
        assert!(is_syslog_noise("Failed to send 47 bytes to syslog"));
        assert!(!is_syslog_noise(
            "Failed to bind any port for '-t 1', exiting"
        ));
    }
}
