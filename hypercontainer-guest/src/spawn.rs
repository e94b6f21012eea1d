//! Starting one container process: user and path resolution, fork (into
//! the container's new namespaces, or joining them), the child's setup and
//! exec, with failures reported back through a close-on-exec status pipe.
//!
//! The child's steps, in runc's order: session and stdio; cgroup; the
//! container's namespaces and filesystem view ([`Entry`]); rlimits and OOM
//! score; seccomp (here when `no_new_privs` is off, since installing it
//! then needs the privileges about to be dropped); the capability
//! bounding set; user and groups; the other capability sets; umask and
//! working directory; `no_new_privs`; the executable's lookup; seccomp
//! (here when `no_new_privs` is on, as close to `execve` as possible); and
//! `execve`.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use hypercontainer_protocol::{ErrorKind, Process, RlimitResource};

use crate::container::{caps, Confinement, Entry};
use crate::sys;
use crate::user;

/// The `PATH` used to find the executable when the environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A process that could not be started.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    /// Protocol error kind (decides the exit status).
    pub kind: ErrorKind,
    /// Runtime-style description.
    pub message: String,
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, Error>;

fn err(kind: ErrorKind, message: impl Into<String>) -> Error {
    Error {
        kind,
        message: message.into(),
    }
}

/// A running process, as the agent sees it.
#[derive(Debug)]
pub struct Spawned {
    /// Its pid.
    pub pid: libc::pid_t,
    /// Our end of its stdin (a pipe, or a duplicate of the pty master).
    pub stdin: OwnedFd,
    /// Our end of its stdout (or the pty master).
    pub stdout: OwnedFd,
    /// Our end of its stderr (none on a terminal).
    pub stderr: Option<OwnedFd>,
    /// The pty master, on a terminal.
    pub pty: Option<OwnedFd>,
    /// `CLOCK_BOOTTIME` just before the child's `execve`.
    pub exec_ns: u64,
}

fn rlimit_number(r: RlimitResource) -> libc::__rlimit_resource_t {
    match r {
        RlimitResource::Cpu => libc::RLIMIT_CPU,
        RlimitResource::Fsize => libc::RLIMIT_FSIZE,
        RlimitResource::Data => libc::RLIMIT_DATA,
        RlimitResource::Stack => libc::RLIMIT_STACK,
        RlimitResource::Core => libc::RLIMIT_CORE,
        RlimitResource::Rss => libc::RLIMIT_RSS,
        RlimitResource::Nproc => libc::RLIMIT_NPROC,
        RlimitResource::Nofile => libc::RLIMIT_NOFILE,
        RlimitResource::Memlock => libc::RLIMIT_MEMLOCK,
        RlimitResource::As => libc::RLIMIT_AS,
        RlimitResource::Locks => libc::RLIMIT_LOCKS,
        RlimitResource::Sigpending => libc::RLIMIT_SIGPENDING,
        RlimitResource::Msgqueue => libc::RLIMIT_MSGQUEUE,
        RlimitResource::Nice => libc::RLIMIT_NICE,
        RlimitResource::Rtprio => libc::RLIMIT_RTPRIO,
        RlimitResource::Rttime => libc::RLIMIT_RTTIME,
    }
}

/// Everything the child needs, computed before fork so that the child only
/// makes system calls.
#[derive(Debug)]
struct Plan {
    argv0: String,
    argv: Vec<CString>,
    env: Vec<CString>,
    path_dirs: Vec<String>,
    cwd: String,
    cwd_c: CString,
    id: user::Identity,
    rlimits: Vec<(libc::__rlimit_resource_t, libc::rlimit)>,
    umask: u32,
    no_new_privs: bool,
}

/// A file of the container, read with every path step resolved inside
/// `root`; empty when missing.
fn read_in_root(root: &Path, rel: &str) -> String {
    let Ok(dir) = sys::open_dir_path(root) else {
        return String::new();
    };
    let Ok(fd) = sys::open_in_root(&dir, Path::new(rel), libc::O_RDONLY, 0, 0) else {
        return String::new();
    };
    let mut s = String::new();
    let _ = io::Read::read_to_string(&mut std::fs::File::from(fd), &mut s);
    s
}

fn plan(p: &Process, conf: &Confinement, root: &Path) -> Result<Plan> {
    let argv0 = p
        .argv
        .first()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| err(ErrorKind::InvalidRequest, "process argv is empty"))?
        .clone();
    let nul = |_| err(ErrorKind::InvalidRequest, "argv or env contains a NUL byte");
    let argv = p
        .argv
        .iter()
        .map(|a| sys::cstr(a).map_err(nul))
        .collect::<Result<Vec<_>>>()?;
    let id = user::resolve(
        &p.user,
        &p.additional_groups,
        &read_in_root(root, "etc/passwd"),
        &read_in_root(root, "etc/group"),
    )
    .map_err(|e| err(ErrorKind::BadUser, e.to_string()))?;
    let mut env = p.env.clone();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", id.home));
    }
    let path = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    let path_dirs = path.split(':').map(str::to_string).collect();
    let env = env
        .iter()
        .map(|e| sys::cstr(e).map_err(nul))
        .collect::<Result<Vec<_>>>()?;
    let cwd = if p.cwd.is_empty() { "/" } else { &p.cwd }.to_string();
    let cwd_c = sys::cstr(&cwd).map_err(nul)?;
    // The spec's rlimits, each replaced by the process's own of its resource.
    let rlimits = conf
        .rlimits
        .iter()
        .filter(|c| !p.rlimits.iter().any(|r| r.resource == c.resource))
        .chain(&p.rlimits)
        .map(|r| {
            (
                rlimit_number(r.resource),
                libc::rlimit {
                    rlim_cur: r.soft,
                    rlim_max: r.hard,
                },
            )
        })
        .collect();
    Ok(Plan {
        argv0,
        argv,
        env,
        path_dirs,
        cwd,
        cwd_c,
        id,
        rlimits,
        umask: p.umask.or(conf.umask).unwrap_or(0o022),
        no_new_privs: p.no_new_privs,
    })
}

/// What the child sets up as its stdio.
enum ChildStdio {
    Pipes {
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    /// A pseudo-terminal the child opens in the container's own devpts
    /// (so that `tty` names it inside); the master goes back to the agent
    /// over `sock`.
    Pty {
        window: Option<hypercontainer_protocol::WindowSize>,
        sock: OwnedFd,
    },
}

/// In the child, inside the container: a new pty, its slave as the
/// controlling terminal and stdio, its master sent to the agent.
fn child_terminal(
    plan: &Plan,
    window: Option<hypercontainer_protocol::WindowSize>,
    sock: &OwnedFd,
) -> io::Result<()> {
    let (master, slave_name) = sys::open_pty()?;
    if let Some(w) = window {
        sys::set_winsize(master.as_raw_fd(), w.rows, w.cols)?;
    }
    let slave = sys::open_pty_slave(&slave_name)?;
    let fd = slave.as_raw_fd();
    // SAFETY: fd is a terminal; this session has no controlling terminal yet.
    if unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a valid descriptor; the process owns it.
    unsafe { libc::fchown(fd, plan.id.uid, plan.id.gid) };
    for target in 0..3 {
        // SAFETY: both descriptors are valid.
        if unsafe { libc::dup2(fd, target) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    sys::send_fd(sock.as_raw_fd(), master.as_raw_fd())
}

/// Status-pipe records: `0` + `u64` exec timestamp, or `1` + kind + message.
const REC_EXEC: u8 = 0;
const REC_ERROR: u8 = 1;

fn child_fail(status: RawFd, kind: ErrorKind, message: &str) -> ! {
    let mut rec = vec![REC_ERROR, kind as u8];
    rec.extend_from_slice(message.as_bytes());
    let _ = sys::write_all(status, &rec);
    // SAFETY: _exit ends the child without running the parent's destructors.
    unsafe { libc::_exit(kind.exit_status()) }
}

fn os_msg(e: &io::Error) -> String {
    // "No such file or directory (os error 2)" -> "no such file or directory"
    let s = e.to_string();
    let s = s.split(" (os error").next().unwrap_or(&s).to_string();
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().collect::<String>() + c.as_str(),
        None => s,
    }
}

fn is_executable_file(path: &CString) -> bool {
    // SAFETY: stat is plain data, filled by stat(2).
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: path is a valid C string and st a valid stat buffer.
    if unsafe { libc::stat(path.as_ptr(), &mut st) } != 0 {
        return false;
    }
    // SAFETY: access has no memory-safety preconditions beyond the C string.
    (st.st_mode & libc::S_IFMT) == libc::S_IFREG
        && unsafe { libc::access(path.as_ptr(), libc::X_OK) } == 0
}

/// Runs in the child after fork: never returns.
/// Joins the cgroup, then enters the container (new namespaces' view, or
/// the running container's namespaces).
fn enter_container(entry: &Entry<'_>, conf: &Confinement) -> std::result::Result<(), String> {
    if let Some(procs) = &conf.cgroup_procs {
        std::fs::write(procs, "0").map_err(|e| format!("joining the container's cgroup: {e}"))?;
    }
    match entry {
        Entry::Init { ns, root } => {
            if ns.cgroup {
                sys::unshare(libc::CLONE_NEWCGROUP)
                    .map_err(|e| format!("creating the cgroup namespace: {e}"))?;
            }
            root.enter().map_err(|e| crate::agent::error_chain(&e))
        }
        Entry::Join(joined) => joined
            .enter()
            .map_err(|e| format!("joining the container's namespaces: {e}")),
    }
}

fn install_seccomp(conf: &Confinement, status: RawFd) {
    if let Some(f) = &conf.seccomp {
        if let Err(e) = f.install() {
            child_fail(
                status,
                ErrorKind::Spawn,
                &format!(
                    "installing the seccomp filter: {}",
                    crate::agent::error_chain(&e)
                ),
            );
        }
    }
}

fn caps_step(r: caps::Result<()>, status: RawFd) {
    if let Err(e) = r {
        child_fail(
            status,
            ErrorKind::Spawn,
            &format!("setting capabilities: {}", crate::agent::error_chain(&e)),
        );
    }
}

fn child(
    plan: &Plan,
    entry: &Entry<'_>,
    conf: &Confinement,
    stdio: ChildStdio,
    status: RawFd,
) -> ! {
    sys::reset_signals_in_child();
    // SAFETY: setsid has no preconditions; a fresh child is not a group leader.
    unsafe { libc::setsid() };

    match &stdio {
        ChildStdio::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            for (fd, target) in [(stdin, 0), (stdout, 1), (stderr, 2)] {
                // SAFETY: both descriptors are valid; dup2 clears close-on-exec.
                if unsafe { libc::dup2(fd.as_raw_fd(), target) } < 0 {
                    let e = io::Error::last_os_error();
                    child_fail(status, ErrorKind::Spawn, &format!("setting up stdio: {e}"));
                }
            }
        }
        // Made after entering the container, in its own devpts.
        ChildStdio::Pty { .. } => {}
    }

    if let Err(e) = enter_container(entry, conf) {
        child_fail(status, ErrorKind::Rootfs, &e);
    }
    if let ChildStdio::Pty { window, sock } = &stdio {
        if let Err(e) = child_terminal(plan, *window, sock) {
            child_fail(
                status,
                ErrorKind::Spawn,
                &format!("setting up the terminal: {e}"),
            );
        }
    }

    for (res, lim) in &plan.rlimits {
        // SAFETY: lim is a valid rlimit.
        if unsafe { libc::setrlimit(*res, lim) } < 0 {
            let e = io::Error::last_os_error();
            child_fail(
                status,
                ErrorKind::Spawn,
                &format!("setting rlimit {res}: {}", os_msg(&e)),
            );
        }
    }

    if let Some(adj) = conf.oom_score_adj {
        if let Err(e) = std::fs::write("/proc/self/oom_score_adj", adj.to_string()) {
            child_fail(
                status,
                ErrorKind::Spawn,
                &format!("setting oom_score_adj: {e}"),
            );
        }
    }
    let no_new_privs = plan.no_new_privs || conf.no_new_privs;
    if !no_new_privs {
        install_seccomp(conf, status);
    }
    if let Some(c) = &conf.caps {
        caps_step(c.drop_bounding(), status);
        caps_step(caps::keep_across_setuid(), status);
    }

    let id = &plan.id;
    // SAFETY: the slice pointer and length describe id.groups.
    if unsafe { libc::setgroups(id.groups.len(), id.groups.as_ptr()) } < 0
        // SAFETY: setgid/setuid take plain integers.
        || unsafe { libc::setgid(id.gid) } < 0
        // SAFETY: as above.
        || unsafe { libc::setuid(id.uid) } < 0
    {
        let e = io::Error::last_os_error();
        child_fail(
            status,
            ErrorKind::BadUser,
            &format!(
                "cannot switch to user {}:{}: {}",
                id.uid,
                id.gid,
                os_msg(&e)
            ),
        );
    }
    if let Some(c) = &conf.caps {
        caps_step(c.apply(), status);
    }
    // SAFETY: umask takes a plain integer.
    unsafe { libc::umask(plan.umask as libc::mode_t) };

    // SAFETY: cwd_c is a valid C string.
    if unsafe { libc::chdir(plan.cwd_c.as_ptr()) } < 0 {
        let e = io::Error::last_os_error();
        child_fail(
            status,
            ErrorKind::BadCwd,
            &format!(
                "cannot change to working directory {:?}: {}",
                plan.cwd,
                os_msg(&e)
            ),
        );
    }

    if no_new_privs {
        // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
            let e = io::Error::last_os_error();
            child_fail(
                status,
                ErrorKind::Spawn,
                &format!("setting no_new_privs: {e}"),
            );
        }
    }

    // Find the executable as a container runtime does.
    let program = if plan.argv0.contains('/') {
        plan.argv[0].clone()
    } else {
        let found = plan.path_dirs.iter().find_map(|dir| {
            let dir = if dir.is_empty() { "." } else { dir };
            let c = sys::cstr(&format!("{dir}/{}", plan.argv0)).ok()?;
            is_executable_file(&c).then_some(c)
        });
        match found {
            Some(c) => c,
            None => child_fail(
                status,
                ErrorKind::NotFound,
                &format!("exec: {:?}: executable file not found in $PATH", plan.argv0),
            ),
        }
    };

    if no_new_privs {
        install_seccomp(conf, status);
    }

    let mut argv: Vec<*const libc::c_char> = plan.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = plan.env.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());

    let mut rec = [0u8; 9];
    rec[0] = REC_EXEC;
    rec[1..].copy_from_slice(&sys::boottime_ns().to_le_bytes());
    let _ = sys::write_all(status, &rec);
    // SAFETY: program, argv and envp are NUL-terminated and outlive the call.
    unsafe { libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    let e = io::Error::last_os_error();
    let kind = match e.raw_os_error() {
        Some(libc::ENOENT) => ErrorKind::NotFound,
        Some(libc::EACCES | libc::ENOEXEC | libc::EPERM | libc::EISDIR) => {
            ErrorKind::PermissionDenied
        }
        _ => ErrorKind::Spawn,
    };
    // runc's wording: a directory is "is a directory" even though
    // execve(2) says EACCES for it.
    let why = if e.raw_os_error() == Some(libc::EACCES)
        && std::fs::metadata(std::ffi::OsStr::from_bytes(program.as_bytes()))
            .is_ok_and(|m| m.is_dir())
    {
        "is a directory".to_string()
    } else {
        os_msg(&e)
    };
    child_fail(status, kind, &format!("exec: {:?}: {why}", plan.argv0))
}

/// Starts `p` in a container: `entry` says whether it makes the
/// container's namespaces (the main process) or joins them, `root` is the
/// container's root as the agent sees it (for the user lookup). The parent
/// blocks only until the child has exec'd (or failed); a failed child is
/// reaped here.
pub fn spawn(p: &Process, entry: &Entry<'_>, conf: &Confinement, root: &Path) -> Result<Spawned> {
    let plan = plan(p, conf, root)?;
    let io_err = |what: &str, e: io::Error| err(ErrorKind::Spawn, format!("{what}: {e}"));

    let (child_stdio, mut stdio_fds, pty_sock) = if p.terminal {
        let (ours, theirs) = sys::socketpair().map_err(|e| io_err("opening a terminal", e))?;
        (
            ChildStdio::Pty {
                window: p.window,
                sock: theirs,
            },
            None,
            Some(ours),
        )
    } else {
        let pipes = (|| {
            let (in_r, in_w) = sys::pipe()?;
            let (out_r, out_w) = sys::pipe()?;
            let (err_r, err_w) = sys::pipe()?;
            for fd in [&in_w, &out_r, &err_r] {
                sys::set_nonblocking(fd.as_raw_fd(), true)?;
            }
            Ok((in_r, in_w, out_r, out_w, err_r, err_w))
        })()
        .map_err(|e| io_err("creating stdio pipes", e))?;
        let (in_r, in_w, out_r, out_w, err_r, err_w) = pipes;
        (
            ChildStdio::Pipes {
                stdin: in_r,
                stdout: out_w,
                stderr: err_w,
            },
            Some((in_w, out_r, Some(err_r), None)),
            None,
        )
    };
    let (status_r, status_w) = sys::pipe().map_err(|e| io_err("creating a pipe", e))?;

    let flags = match entry {
        Entry::Init { ns, .. } => ns.clone_flags,
        Entry::Join(joined) => {
            joined
                .enter_pid_for_children()
                .map_err(|e| io_err("entering the container's PID namespace", e))?;
            0
        }
    };
    // SAFETY: the agent is single-threaded, so the child may allocate and
    // use any state; it only returns through exec or _exit.
    let forked = unsafe { sys::fork_into(flags) };
    if let Ok(0) = forked {
        drop(status_r);
        child(&plan, entry, conf, child_stdio, status_w.as_raw_fd());
    }
    if let Entry::Join(joined) = entry {
        if let Err(e) = joined.leave_pid_for_children() {
            // Later children would land in this container: never go on.
            eprintln!("hypercontainer-agent: cannot return to its own PID namespace: {e}");
            std::process::abort();
        }
    }
    let pid = forked.map_err(|e| io_err("fork", e))?;
    drop(child_stdio);
    drop(status_w);
    if let Some(sock) = pty_sock {
        // The child sends the master once its terminal is set up; a child
        // that fails first closes the socket and reports on the status pipe.
        if let Ok(Some(master)) = sys::recv_fd(sock.as_raw_fd()) {
            let fds = (|| {
                sys::set_nonblocking(master.as_raw_fd(), true)?;
                let input = sys::dup(&master)?;
                let output = sys::dup(&master)?;
                Ok::<_, io::Error>((input, output, None, Some(master)))
            })();
            match fds {
                Ok(f) => stdio_fds = Some(f),
                Err(e) => {
                    let _ = sys::kill(pid, libc::SIGKILL);
                    let _ = sys::waitpid(pid, 0);
                    return Err(io_err("terminal", e));
                }
            }
        }
    }

    // Read the status records until the pipe closes (exec or exit).
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        match sys::read(status_r.as_raw_fd(), &mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err("reading the child's status", e)),
        }
    }
    let mut exec_ns = 0;
    let mut rest = &buf[..];
    while let Some((&tag, tail)) = rest.split_first() {
        match tag {
            REC_EXEC if tail.len() >= 8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&tail[..8]);
                exec_ns = u64::from_le_bytes(b);
                rest = &tail[8..];
            }
            REC_ERROR if !tail.is_empty() => {
                let kind = ErrorKind::from_u8(tail[0]).unwrap_or(ErrorKind::Spawn);
                let message = String::from_utf8_lossy(&tail[1..]).into_owned();
                // The child exits right after reporting; reap it here.
                let _ = sys::waitpid(pid, 0);
                return Err(err(kind, message));
            }
            _ => break,
        }
    }
    let stdio = match stdio_fds {
        Some(s) if exec_ns != 0 => s,
        _ => {
            let _ = sys::kill(pid, libc::SIGKILL);
            let _ = sys::waitpid(pid, 0);
            return Err(err(ErrorKind::Spawn, "the process ended before exec"));
        }
    };
    let (stdin, stdout, stderr, pty) = stdio;
    Ok(Spawned {
        pid,
        stdin,
        stdout,
        stderr,
        pty,
        exec_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_rejects_bad_requests() {
        let e = plan(&Process::default(), &Confinement::default(), Path::new("/")).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidRequest);
        let p = Process {
            argv: vec!["a\0b".into()],
            ..Process::default()
        };
        assert_eq!(
            plan(&p, &Confinement::default(), Path::new("/"))
                .unwrap_err()
                .kind,
            ErrorKind::InvalidRequest
        );
    }

    #[test]
    fn plan_uses_path_from_env_and_adds_home() {
        let p = Process {
            argv: vec!["ls".into()],
            env: vec!["PATH=/a:/b".into()],
            user: "0".into(),
            ..Process::default()
        };
        let pl = plan(&p, &Confinement::default(), Path::new("/")).unwrap();
        assert_eq!(pl.path_dirs, ["/a", "/b"]);
        assert!(pl.env.iter().any(|e| e.to_bytes().starts_with(b"HOME=")));
        assert_eq!(pl.cwd, "/");
        let p = Process {
            argv: vec!["ls".into()],
            ..Process::default()
        };
        assert_eq!(
            plan(&p, &Confinement::default(), Path::new("/"))
                .unwrap()
                .path_dirs
                .len(),
            6
        );
    }

    #[test]
    fn os_messages_are_runtime_style() {
        let e = io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(os_msg(&e), "no such file or directory");
    }
}
