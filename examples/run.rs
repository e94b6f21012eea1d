//! A `docker run`-like command line over the SDK: runs an image's process
//! in its own microVM and exits with the process's exit code.
//!
//! ```text
//! cargo run -p hypercontainer-examples --example run -- \
//!     [--cpus N] [--memory MIB] [-e K=V]... [-w DIR] [-u USER] [-i] [-t] \
//!     IMAGE [CMD...]
//! ```
//!
//! IMAGE is `oci:PATH[:TAG]` (an OCI image layout directory),
//! `oci-archive:PATH[:TAG]` or `docker-archive:PATH[:REF]`. `-i` forwards
//! stdin; `-t` runs the process on a terminal (the local terminal is put in
//! raw mode while it runs). `--timings` prints the boot-stage timings on
//! stderr at the end. `--console` copies the guest's serial console to
//! stderr, each line stamped with the host time since the start;
//! `--kernel-arg ARG` (repeatable) appends to the guest kernel's command
//! line (`--console --kernel-arg loglevel=7` traces a boot).
//! `--net TAP,ADDR/PREFIX[,GATEWAY]` (repeatable) gives the sandbox a NIC on
//! the host tap TAP (created if missing; its host side is yours to
//! configure) with the guest at ADDR; `--dns IP` (repeatable) writes
//! `/etc/resolv.conf`. Errors print on stderr and exit with 125, as
//! `docker run` does.

use std::io::{Read, Write};
use std::process::ExitCode;

use hypercontainer::sandbox::{NetworkInterface, Output, Sandbox};
use hypercontainer::vmm::console::Timestamped;

struct Args {
    cpus: u32,
    memory: u64,
    env: Vec<(String, String)>,
    workdir: Option<String>,
    user: Option<String>,
    interactive: bool,
    tty: bool,
    timings: bool,
    console: bool,
    kernel_args: Vec<String>,
    nets: Vec<NetworkInterface>,
    dns: Vec<std::net::IpAddr>,
    image: String,
    cmd: Vec<String>,
}

const USAGE: &str = "usage: run [--cpus N] [--memory MIB] [-e K=V] [-w DIR] [-u USER] [-i] [-t] \
                     [--timings] [--console] [--kernel-arg ARG] \
                     [--net TAP,ADDR/PREFIX[,GATEWAY]] [--dns IP] IMAGE [CMD...]";

fn parse() -> Result<Args, String> {
    let mut a = Args {
        cpus: 1,
        memory: hypercontainer::sandbox::DEFAULT_MEMORY_MIB,
        env: Vec::new(),
        workdir: None,
        user: None,
        interactive: false,
        tty: false,
        timings: false,
        console: false,
        kernel_args: Vec::new(),
        nets: Vec::new(),
        dns: Vec::new(),
        image: String::new(),
        cmd: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    let value = |it: &mut dyn Iterator<Item = String>, flag: &str| {
        it.next().ok_or(format!("{flag} needs a value"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--cpus" => {
                a.cpus = value(&mut it, "--cpus")?
                    .parse()
                    .map_err(|_| "--cpus takes a number")?
            }
            "--memory" | "-m" => {
                a.memory = value(&mut it, "--memory")?
                    .parse()
                    .map_err(|_| "--memory takes MiB")?
            }
            "-e" | "--env" => {
                let kv = value(&mut it, "-e")?;
                let (k, v) = match kv.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    // `-e NAME` passes the local value, as docker does.
                    None => (kv.clone(), std::env::var(&kv).unwrap_or_default()),
                };
                a.env.push((k, v));
            }
            "-w" | "--workdir" => a.workdir = Some(value(&mut it, "-w")?),
            "-u" | "--user" => a.user = Some(value(&mut it, "-u")?),
            "-i" | "--interactive" => a.interactive = true,
            "-t" | "--tty" => a.tty = true,
            "-it" | "-ti" => {
                a.interactive = true;
                a.tty = true
            }
            "--timings" => a.timings = true,
            "--console" => a.console = true,
            "--kernel-arg" => a.kernel_args.push(value(&mut it, "--kernel-arg")?),
            "--net" => a.nets.push(parse_net(&value(&mut it, "--net")?)?),
            "--dns" => a.dns.push(
                value(&mut it, "--dns")?
                    .parse()
                    .map_err(|_| "--dns takes an IP address")?,
            ),
            "-h" | "--help" => return Err(USAGE.into()),
            s if s.starts_with('-') => return Err(format!("unknown option {s}\n{USAGE}")),
            _ => {
                a.image = arg;
                a.cmd = it.collect();
                return Ok(a);
            }
        }
    }
    Err(USAGE.into())
}

/// `TAP,ADDR/PREFIX[,GATEWAY]`.
fn parse_net(v: &str) -> Result<NetworkInterface, String> {
    let bad = || format!("--net {v}: expected TAP,ADDR/PREFIX[,GATEWAY]");
    let mut parts = v.split(',');
    let tap = parts.next().filter(|t| !t.is_empty()).ok_or_else(bad)?;
    let (addr, prefix) = parts
        .next()
        .and_then(|a| a.split_once('/'))
        .ok_or_else(bad)?;
    let addr: std::net::Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    let mut n = NetworkInterface::tap(tap, addr, prefix);
    if let Some(gw) = parts.next() {
        n = n.gateway(gw.parse().map_err(|_| bad())?);
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(n)
}

/// The local terminal's size, or 24x80.
fn window_size() -> (u16, u16) {
    // SAFETY: winsize is plain data, filled by the ioctl.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes a winsize into the pointed-to struct.
    let r = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    if r == 0 && ws.ws_row > 0 && ws.ws_col > 0 {
        (ws.ws_row, ws.ws_col)
    } else {
        (24, 80)
    }
}

/// Puts stdin's terminal in raw mode until dropped.
struct RawMode(Option<libc::termios>);

impl RawMode {
    fn enter() -> Self {
        // SAFETY: isatty has no preconditions.
        if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
            return RawMode(None);
        }
        // SAFETY: termios is plain data, filled by tcgetattr.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: stdin is a terminal; t is a valid termios.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut t) } != 0 {
            return RawMode(None);
        }
        let saved = t;
        // SAFETY: t is a valid termios.
        unsafe { libc::cfmakeraw(&mut t) };
        // SAFETY: stdin is a terminal; t is a valid termios.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) };
        RawMode(Some(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            // SAFETY: restoring the attributes read in `enter`.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, t) };
        }
    }
}

fn to(mut w: impl Write + Send + 'static) -> Output {
    Output::Callback(Box::new(move |data| {
        let _ = w.write_all(data);
        let _ = w.flush();
    }))
}

fn run(a: Args) -> Result<i32, hypercontainer::sandbox::Error> {
    let mut b = Sandbox::builder()
        .image(a.image.parse()?)
        .vcpus(a.cpus)
        .memory_mib(a.memory)
        .stdin(a.interactive)
        .stdout(to(std::io::stdout()))
        .stderr(to(std::io::stderr()));
    if !a.cmd.is_empty() {
        b = b.cmd(a.cmd);
    }
    for (k, v) in &a.env {
        b = b.env(k, v);
    }
    if let Some(w) = a.workdir {
        b = b.workdir(w);
    }
    if let Some(u) = a.user {
        b = b.user(u);
    }
    if a.tty {
        let (rows, cols) = window_size();
        b = b.tty(rows, cols);
    }
    if a.console {
        b = b.console_writer(Timestamped::new(std::io::stderr()));
    }
    for arg in a.kernel_args {
        b = b.kernel_arg(arg);
    }
    for n in a.nets {
        b = b.network(n);
    }
    for d in a.dns {
        b = b.dns(d);
    }
    let sandbox = b.start()?;
    let _raw = (a.tty && a.interactive).then(RawMode::enter);
    if a.interactive {
        // Forward stdin; the thread ends with the process (its writes
        // fail) or at end of input.
        let mut w = sandbox.stdin();
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            let mut stdin = std::io::stdin().lock();
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if w.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = w.close();
        });
    }
    let status = sandbox.wait()?;
    if a.timings {
        print_timings(&sandbox.boot_timings());
    }
    Ok(status)
}

/// Prints the boot stages, one per line, in milliseconds.
fn print_timings(t: &hypercontainer::sandbox::BootTimings) {
    let stages = [
        ("host ", "image ready", Some(t.image_ready)),
        ("host ", "VM built", Some(t.vm_built)),
        ("host ", "first KVM_RUN", t.first_kvm_run),
        ("guest", "agent started", t.guest_agent_start),
        ("guest", "rootfs ready", t.guest_rootfs_ready),
        ("guest", "process exec", t.guest_process_exec),
        ("host ", "agent connected", Some(t.agent_connected)),
        ("host ", "process started", t.process_started),
        ("host ", "first output byte", t.first_output),
    ];
    eprintln!("boot stages (host: since start(); guest: since the guest kernel's clock began):");
    for (clock, name, at) in stages {
        if let Some(at) = at {
            eprintln!("  {clock} {name:<18} {:>9.1} ms", at.as_secs_f64() * 1e3);
        }
    }
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(125);
        }
    };
    match run(args) {
        Ok(status) => ExitCode::from(status.clamp(0, 255) as u8),
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("run: {msg}");
            ExitCode::from(125)
        }
    }
}
