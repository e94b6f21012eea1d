//! `hypercontainer-agent`: the init (PID 1) of a HyperContainer VM.
//!
//! In a VM (no arguments, PID 1): moves off the initramfs onto a tmpfs root,
//! mounts /proc, /sys, /dev, /dev/pts, /dev/shm, /tmp and /run, connects to
//! the host over vsock (CID 2, port
//! [`hypercontainer_protocol::AGENT_VSOCK_PORT`]) and serves the protocol:
//! builds the container's root filesystem, runs its processes, streams their
//! stdio, and powers the VM off (`reboot(RESTART)`, the kernel runs with
//! `reboot=k`) when the main process has ended and everything is flushed.
//!
//! Where vsock is not available (e.g. a stock VMM without a vsock
//! backend), the kernel command line option
//! `hypercontainer.agent_console=<name>` makes the agent talk over the
//! virtio console `/dev/<name>` (put in raw mode) instead; the protocol is
//! the same.
//!
//! Host tier (`--fd N`): serves the protocol over the already connected
//! stream socket `N`, in the namespaces it was started in (the caller
//! provides private mount, pid, uts and ipc namespaces), and exits at the
//! end instead of powering off.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use hypercontainer_protocol::{AGENT_VSOCK_PORT, HOST_CID};

mod agent;
mod container;
mod net;
mod rootfs;
mod spawn;
mod sys;
mod trace;
mod user;

use agent::{Agent, End, Mode};

fn usage() -> ! {
    eprintln!("usage: hypercontainer-agent            (as PID 1 of a VM)");
    eprintln!("       hypercontainer-agent --fd <N>   (serve a connected socket)");
    std::process::exit(2)
}

fn parse_args() -> Option<i32> {
    let mut args = std::env::args().skip(1);
    let mut fd = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--fd" => {
                fd = Some(
                    args.next()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or_else(|| usage()),
                )
            }
            _ => usage(),
        }
    }
    fd
}

fn vsock_connect() -> io::Result<OwnedFd> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        // SAFETY: socket has no memory-safety preconditions.
        let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh socket we now own.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        let addr = libc::sockaddr_vm {
            svm_family: libc::AF_VSOCK as libc::sa_family_t,
            svm_reserved1: 0,
            svm_port: AGENT_VSOCK_PORT,
            svm_cid: HOST_CID,
            svm_zero: [0; 4],
        };
        // SAFETY: addr is a valid sockaddr_vm of the given size.
        let r = unsafe {
            libc::connect(
                fd,
                (&addr as *const libc::sockaddr_vm).cast(),
                std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
            )
        };
        if r == 0 {
            return Ok(sock);
        }
        let e = io::Error::last_os_error();
        if std::time::Instant::now() >= deadline {
            return Err(e);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The console named by `hypercontainer.agent_console=` on the kernel
/// command line, if any.
fn console_transport(cmdline: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .find_map(|a| a.strip_prefix("hypercontainer.agent_console="))
        .map(str::to_string)
}

/// Opens a virtio console as the connection, in raw mode.
fn console_connect(name: &str) -> io::Result<OwnedFd> {
    if name.is_empty() || name.contains('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad console name {name:?}"),
        ));
    }
    let path = sys::cpath(&std::path::Path::new("/dev").join(name))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    let fd = loop {
        // SAFETY: path is a valid C string.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            )
        };
        if fd >= 0 {
            break fd;
        }
        let e = io::Error::last_os_error();
        if std::time::Instant::now() >= deadline {
            return Err(e);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    // SAFETY: fd is a fresh descriptor we now own.
    let conn = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: termios is plain data, filled by tcgetattr.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open and t is a valid termios.
    if unsafe { libc::tcgetattr(fd, &mut t) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: t is a valid termios.
    unsafe { libc::cfmakeraw(&mut t) };
    // SAFETY: fd is open and t is a valid termios.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // Drop anything that arrived before raw mode (the host waits for our
    // hello before it sends, so this is never protocol data).
    // SAFETY: fd is an open terminal.
    unsafe { libc::tcflush(fd, libc::TCIOFLUSH) };
    Ok(conn)
}

/// Ends the VM: flush filesystems, then reset (the VMM's end-of-VM signal).
fn power_off() -> ! {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    // SAFETY: reboot with a valid command; as PID 1 this ends the VM.
    unsafe { libc::reboot(libc::LINUX_REBOOT_CMD_RESTART) };
    // Only reached without CAP_SYS_BOOT: PID 1 must never exit.
    loop {
        // SAFETY: pause has no preconditions.
        unsafe { libc::pause() };
    }
}

fn fatal(mode: Mode, what: &str, e: &dyn std::error::Error) -> ! {
    eprintln!("hypercontainer-agent: {what}: {}", agent::error_chain(e));
    match mode {
        Mode::Vm => power_off(),
        Mode::Host => std::process::exit(1),
    }
}

fn main() {
    let agent_start = sys::boottime_ns();
    let fd = parse_args();
    // SAFETY: getpid has no preconditions.
    let pid1 = unsafe { libc::getpid() } == 1;
    let mode = match fd {
        Some(_) => Mode::Host,
        None if pid1 => Mode::Vm,
        None => usage(),
    };

    let conn = match fd {
        Some(fd) => {
            sys::ensure_std_fds(c"/dev/null");
            if !pid1 {
                // Orphans of the container are reparented to us, not lost.
                // SAFETY: PR_SET_CHILD_SUBREAPER takes integer arguments only.
                unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
            }
            // SAFETY: the caller handed us this descriptor to own.
            unsafe { OwnedFd::from_raw_fd(fd) }
        }
        None => {
            if let Err(e) = rootfs::vm_early_mounts() {
                sys::ensure_std_fds(c"/dev/console");
                fatal(mode, "early mounts", &e);
            }
            sys::ensure_std_fds(c"/dev/console");
            let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
            trace::init_from_cmdline(&cmdline);
            trace::trace!("started; early mounts done");
            let conn = match console_transport(&cmdline) {
                Some(name) => console_connect(&name),
                None => vsock_connect(),
            };
            match conn {
                Ok(c) => c,
                Err(e) => fatal(mode, "connecting to the host", &e),
            }
        }
    };

    let mut agent = match Agent::new(conn, mode) {
        Ok(a) => a,
        Err(e) => fatal(mode, "setting up", &e),
    };
    trace::trace!("connected to the host");
    agent.greet(agent_start);
    let code = match agent.run() {
        End::MainExited => 0,
        End::Connection(why) => {
            eprintln!("hypercontainer-agent: connection ended: {why}");
            1
        }
    };
    agent.finish();
    if let Err(e) = agent.flush_all() {
        eprintln!("hypercontainer-agent: flushing the connection: {e}");
    }
    if mode == Mode::Vm {
        agent.linger(std::time::Duration::from_secs(3));
    }
    match mode {
        Mode::Vm => power_off(),
        Mode::Host => std::process::exit(code),
    }
}
