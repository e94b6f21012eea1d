//! A `docker run`-like command line over the SDK: runs an image's process
//! in its own microVM and exits with the process's exit code.
//!
//! ```text
//! cargo run -p hypercontainer-examples --example run -- \
//!     [--cpus N] [--memory MIB] [-e K=V]... [-w DIR] [-u USER] [-i] [-t] \
//!     IMAGE [CMD...]
//! ```
//!
//! IMAGE is a registry reference (`busybox`, `nginx:1.25`,
//! `registry.example:5000/team/app@sha256:...`, pulled on first use and
//! shown as `docker pull` does; `--pull always|missing|never`,
//! `--insecure-registry HOST[:PORT]`, `--registry-ca FILE`),
//! `oci:PATH[:TAG]` (an OCI image layout directory),
//! `oci-archive:PATH[:TAG]`, `docker-archive:PATH[:REF]` or `dir:PATH` (a
//! prepared root filesystem, shared read-only under a throw-away overlay,
//! or written in place with `--rootfs-writable`). `-v HOST_DIR:DEST[:ro]`
//! and `-v NAME:DEST[:ro]` (repeatable) mount volumes as `docker run -v`
//! does: a missing host directory is created, a named volume lives under
//! the SDK's data directory and outlives the container. `-i` forwards
//! stdin; `-t` runs the process on a terminal (the local terminal is put in
//! raw mode while it runs). `--timings` prints the boot-stage timings on
//! stderr at the end. `--console` copies the guest's serial console to
//! stderr, each line stamped with the host time since the start;
//! `--kernel-arg ARG` (repeatable) appends to the guest kernel's command
//! line (`--console --kernel-arg loglevel=7` traces a boot).
//! `--network user|none|ns:PATH|tap:NAME` picks the network (default
//! `none`, loopback only): `ns:PATH` joins the network namespace file PATH
//! prepared by CNI, podman or containerd (the guest takes over its
//! interface); `user` is rootless networking through a passt of the
//! sandbox's own, with `-p [IP:]HOST:GUEST[/tcp|udp]` (repeatable; the
//! address defaults to 127.0.0.1, host port 0 takes any free port, and the
//! ports bound are printed on stderr) and `--host-loopback` (the gateway
//! reaches the host's 127.0.0.1); `tap:NAME` is a NIC on the host tap NAME
//! (created if missing; its host side is yours to configure) with the
//! guest at each `--ip ADDR/PREFIX` (IPv4 or IPv6, repeatable), default
//! routes through each `--gateway IP` and `--mtu N`. `--dns IP`
//! (repeatable) writes `/etc/resolv.conf` (in user mode it defaults to
//! passt's DNS forwarder). Docker's confinement options are taken too:
//! `--cap-add`, `--cap-drop`, `--security-opt seccomp=unconfined|FILE`,
//! `--security-opt no-new-privileges`, `--read-only`, `--tmpfs
//! PATH[:size=N[k|m|g],mode=OCTAL]`, `--shm-size`, `--sysctl K=V`, `--ulimit
//! NAME=SOFT[:HARD]`, and cgroup limits
//! `--memory-limit BYTES`, `--cpu-limit CPUS`, `--pids-limit N`. Errors
//! print on stderr and exit as `docker run` does: 127 when the executable
//! is not found, 126 when it cannot be executed, 125 otherwise
//! (`Error::exit_status`). `--help` lists every option.

use std::io::{Read, Write};
use std::process::ExitCode;

use clap::Parser;
use hypercontainer::network::{IpPrefix, Network, PortMapping};
use hypercontainer::sandbox::{Error, Limits, Output, Sandbox, Seccomp, Tmpfs, Ulimit};
use hypercontainer::vmm::console::Timestamped;
use hypercontainer::volume::{Volume, VolumeSource};

/// Runs an image's process in its own microVM, as `docker run` does.
#[derive(Debug, Parser)]
#[command(name = "run", trailing_var_arg = true)]
struct Args {
    /// vCPUs of the VM.
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Memory of the VM, in MiB.
    #[arg(long, short = 'm', default_value_t = hypercontainer::sandbox::DEFAULT_MEMORY_MIB)]
    memory: u64,
    /// Set an environment variable (`-e NAME` passes the local value).
    #[arg(long = "env", short = 'e', value_name = "K=V")]
    env: Vec<String>,
    /// Working directory inside the container.
    #[arg(long, short = 'w')]
    workdir: Option<String>,
    /// User (name, uid, user:group or uid:gid).
    #[arg(long, short = 'u')]
    user: Option<String>,
    /// Keep stdin open and forward it.
    #[arg(long, short = 'i')]
    interactive: bool,
    /// Run on a terminal (the local one is put in raw mode with -i).
    #[arg(long, short = 't')]
    tty: bool,
    /// Print the boot-stage timings on stderr at the end.
    #[arg(long)]
    timings: bool,
    /// Copy the guest's serial console to stderr, stamped with host time.
    #[arg(long)]
    console: bool,
    /// Append to the guest kernel's command line.
    #[arg(long = "kernel-arg", value_name = "ARG")]
    kernel_args: Vec<String>,
    /// The network: user (passt), none (loopback only), ns:PATH or tap:NAME.
    #[arg(
        long,
        value_name = "user|none|ns:PATH|tap:NAME",
        default_value = "none"
    )]
    network: String,
    /// Publish a guest port (user network): [IP:]HOST:GUEST[/tcp|udp].
    #[arg(short = 'p', long = "publish", value_name = "[IP:]HOST:GUEST[/PROTO]")]
    publish: Vec<PortMapping>,
    /// Let the user network's gateway reach the host's loopback.
    #[arg(long = "host-loopback")]
    host_loopback: bool,
    /// A guest address on the tap network: ADDR/PREFIX (IPv4 or IPv6).
    #[arg(long = "ip", value_name = "ADDR/PREFIX")]
    ips: Vec<IpPrefix>,
    /// A default route on the tap network through this gateway.
    #[arg(long = "gateway", value_name = "IP")]
    gateways: Vec<std::net::IpAddr>,
    /// The guest interface's MTU on the tap network.
    #[arg(long)]
    mtu: Option<u16>,
    /// A DNS server for /etc/resolv.conf.
    #[arg(long)]
    dns: Vec<std::net::IpAddr>,
    /// Add a capability (`ALL` for all).
    #[arg(long = "cap-add", value_name = "CAP")]
    cap_add: Vec<String>,
    /// Drop a capability (`ALL` for all).
    #[arg(long = "cap-drop", value_name = "CAP")]
    cap_drop: Vec<String>,
    /// `seccomp=unconfined`, `seccomp=FILE` or `no-new-privileges`.
    #[arg(long = "security-opt", value_name = "OPT")]
    security_opt: Vec<String>,
    /// Mount the container's root filesystem read-only.
    #[arg(long = "read-only")]
    read_only: bool,
    /// A tmpfs mount, `PATH[:size=N[k|m|g],mode=OCTAL]`.
    #[arg(long, value_name = "PATH[:size=N]")]
    tmpfs: Vec<String>,
    /// A volume: `HOST_DIR:GUEST_PATH[:ro]` (HOST_DIR absolute or `./...`,
    /// created when missing, as docker does) or `NAME:GUEST_PATH[:ro]` (a
    /// named volume, created on first use and kept).
    #[arg(long = "volume", short = 'v', value_name = "SRC:DEST[:ro]")]
    volume: Vec<String>,
    /// With a `dir:PATH` image: write to the directory itself (by default
    /// the container's writes go to a throw-away overlay).
    #[arg(long = "rootfs-writable")]
    rootfs_writable: bool,
    /// Size of /dev/shm in bytes.
    #[arg(long = "shm-size", value_name = "BYTES")]
    shm_size: Option<u64>,
    /// A namespaced sysctl, `KEY=VALUE`.
    #[arg(long, value_name = "KEY=VALUE")]
    sysctl: Vec<String>,
    /// A resource limit of the container's processes, NAME=SOFT[:HARD]
    /// (e.g. nofile=1024:2048; -1 for unlimited); repeatable.
    #[arg(long, value_name = "NAME=SOFT[:HARD]")]
    ulimit: Vec<Ulimit>,
    /// Memory limit of the container in bytes (a cgroup in the guest;
    /// exceeding it is an OOM kill, exit 137).
    #[arg(long = "memory-limit", value_name = "BYTES")]
    memory_limit: Option<u64>,
    /// CPU limit of the container, in CPUs (e.g. 0.5).
    #[arg(long = "cpu-limit", value_name = "CPUS")]
    cpu_limit: Option<f64>,
    /// Most processes and threads in the container.
    #[arg(long = "pids-limit", value_name = "N")]
    pids_limit: Option<i64>,
    /// When to pull registry images: always, missing (default) or never.
    #[arg(long, default_value = "missing")]
    pull: String,
    /// Allow plain HTTP to this registry (HOST[:PORT]); repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    insecure_registry: Vec<String>,
    /// Trust this CA (PEM) for registries, besides the system's; repeatable.
    #[arg(long = "registry-ca", value_name = "FILE")]
    registry_ca: Vec<std::path::PathBuf>,
    /// The image: NAME[:TAG][@DIGEST] (a registry), oci:PATH[:TAG],
    /// oci-archive:PATH[:TAG], docker-archive:PATH[:REF] or dir:PATH.
    image: String,
    /// The command and its arguments (default: the image's).
    #[arg(allow_hyphen_values = true)]
    cmd: Vec<String>,
}

/// Docker's `--tmpfs PATH[:OPTIONS]`, with options `size=N[k|m|g]` and
/// `mode=OCTAL`.
fn parse_tmpfs(v: &str) -> Result<Tmpfs, Error> {
    let bad = || {
        Error::Config(format!(
            "--tmpfs {v}: expected PATH[:size=N[k|m|g]][,mode=OCTAL]"
        ))
    };
    let Some((path, opts)) = v.split_once(':') else {
        return Ok(Tmpfs::new(v));
    };
    let mut t = Tmpfs::new(path);
    for opt in opts.split(',') {
        if let Some(n) = opt.strip_prefix("size=") {
            let (digits, unit) = match n.char_indices().last() {
                Some((i, c)) if c.is_ascii_alphabetic() => (&n[..i], c.to_ascii_lowercase()),
                _ => (n, 'b'),
            };
            let shift = match unit {
                'b' => 0,
                'k' => 10,
                'm' => 20,
                'g' => 30,
                _ => return Err(bad()),
            };
            let n: u64 = digits.parse().map_err(|_| bad())?;
            t = t.size(
                n.checked_shl(shift)
                    .filter(|b| b >> shift == n)
                    .ok_or_else(bad)?,
            );
        } else if let Some(m) = opt.strip_prefix("mode=") {
            t = t.mode(u32::from_str_radix(m, 8).map_err(|_| bad())?);
        } else {
            return Err(bad());
        }
    }
    Ok(t)
}

/// Docker's `-v SRC:DEST[:ro]`: a relative host directory (`./data`) is
/// taken from the current directory, and a missing one is created.
fn parse_volume(v: &str) -> Result<Volume, Error> {
    let vol: Volume = v.parse().map_err(Error::Volume)?;
    let VolumeSource::Bind(dir) = vol.source() else {
        return Ok(vol);
    };
    let dir = if dir.is_absolute() {
        dir.clone()
    } else {
        let cwd = std::env::current_dir().map_err(|source| Error::Io {
            what: "finding the current directory".into(),
            source,
        })?;
        cwd.join(dir)
    };
    std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
        what: format!("creating the volume directory {}", dir.display()),
        source,
    })?;
    let dir = dir.canonicalize().map_err(|source| Error::Io {
        what: format!("resolving {}", dir.display()),
        source,
    })?;
    Ok(Volume::bind(dir, vol.destination()).read_only(vol.is_read_only()))
}

/// The `--network` and its options.
fn network(a: &Args) -> Result<Network, String> {
    let user_only = !a.publish.is_empty() || a.host_loopback;
    let tap_only = !a.ips.is_empty() || !a.gateways.is_empty() || a.mtu.is_some();
    match a.network.as_str() {
        "none" if user_only || tap_only => {
            Err("-p, --host-loopback, --ip, --gateway and --mtu need a --network".into())
        }
        "none" => Ok(Network::none()),
        "user" if tap_only => Err("--ip, --gateway and --mtu are for --network tap:NAME".into()),
        "user" => {
            let mut u = Network::user().map_host_loopback(a.host_loopback);
            for p in &a.publish {
                u = u.publish(*p);
            }
            Ok(u.into())
        }
        n if n.starts_with("ns:") => {
            if user_only || tap_only {
                return Err("--network ns:PATH takes its settings from the namespace".into());
            }
            Ok(Network::netns(&n[3..]).into())
        }
        n => {
            let Some(name) = n.strip_prefix("tap:") else {
                return Err(format!(
                    "--network {n}: expected user, none, ns:PATH or tap:NAME"
                ));
            };
            if user_only {
                return Err("-p and --host-loopback are for --network user".into());
            }
            let mut t = Network::tap(name);
            for ip in &a.ips {
                t = t.address(*ip);
            }
            for gw in &a.gateways {
                t = t.gateway(*gw);
            }
            if let Some(m) = a.mtu {
                t = t.mtu(m);
            }
            Ok(t.into())
        }
    }
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

/// Prints layer progress on stderr as `docker pull` does: a line per layer
/// and change of state.
fn pull_progress(p: &hypercontainer_image::LayerProgress) {
    use hypercontainer_image::LayerState::*;
    let what = match p.state {
        Waiting => "Waiting".to_string(),
        Cached => "Already exists".to_string(),
        Downloading if p.done == 0 => "Pulling fs layer".to_string(),
        Downloading => return,
        Resumed { from } => format!("Resuming at {from} of {} bytes", p.total),
        Shared | Verified => "Pull complete".to_string(),
    };
    eprintln!("{}: {what}", &p.digest.hex()[..12]);
}

fn registry_options(a: &Args) -> hypercontainer_image::ClientOptions {
    let mut o = hypercontainer_image::ClientOptions::new();
    for r in &a.insecure_registry {
        o = o.insecure(r.clone());
    }
    for c in &a.registry_ca {
        o = o.ca_file(c.clone());
    }
    o
}

fn run(a: Args) -> Result<i32, hypercontainer::sandbox::Error> {
    use hypercontainer::sandbox::PullPolicy;
    let policy = match a.pull.as_str() {
        "always" => PullPolicy::Always,
        "never" => PullPolicy::Never,
        _ => PullPolicy::Missing,
    };
    let net = network(&a).map_err(Error::Config)?;
    let mut b = Sandbox::builder()
        .network(net)
        .image(a.image.parse()?)
        .pull_policy(policy)
        .registry(registry_options(&a))
        .pull_progress(pull_progress)
        .vcpus(a.cpus)
        .memory_mib(a.memory)
        .stdin(a.interactive)
        .stdout(to(std::io::stdout()))
        .stderr(to(std::io::stderr()));
    if !a.cmd.is_empty() {
        b = b.cmd(a.cmd);
    }
    for kv in &a.env {
        b = match kv.split_once('=') {
            Some((k, v)) => b.env(k, v),
            // `-e NAME` passes the local value, as docker does.
            None => b.env(kv, std::env::var(kv).unwrap_or_default()),
        };
    }
    for c in &a.cap_add {
        b = b.cap_add(c);
    }
    for c in &a.cap_drop {
        b = b.cap_drop(c);
    }
    for o in &a.security_opt {
        b = match o.as_str() {
            "no-new-privileges" | "no-new-privileges=true" => b.no_new_privileges(true),
            "seccomp=unconfined" => b.seccomp(Seccomp::Unconfined),
            other => match other.strip_prefix("seccomp=") {
                Some(file) => b.seccomp(Seccomp::Profile(file.into())),
                None => return Err(Error::Config(format!("unknown --security-opt {other:?}"))),
            },
        };
    }
    for t in &a.tmpfs {
        b = b.tmpfs(parse_tmpfs(t)?);
    }
    for v in &a.volume {
        b = b.volume(parse_volume(v)?);
    }
    b = b.rootfs_writable(a.rootfs_writable);
    for kv in &a.sysctl {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| Error::Config(format!("--sysctl {kv}: expected KEY=VALUE")))?;
        b = b.sysctl(k, v);
    }
    if let Some(s) = a.shm_size {
        b = b.shm_size(s);
    }
    for u in &a.ulimit {
        b = b.ulimit(*u);
    }
    b = b.read_only(a.read_only).limits(Limits {
        memory: a.memory_limit,
        cpus: a.cpu_limit,
        cpu_shares: None,
        pids: a.pids_limit,
    });

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
    for d in a.dns {
        b = b.dns(d);
    }
    let sandbox = b.start()?;
    for p in sandbox.ports() {
        eprintln!("published {p}");
    }
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
        ("guest", "start received", t.guest_start_received),
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
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let help = !e.use_stderr();
            let _ = e.print();
            // Bad usage is 125, as with `docker run`.
            return ExitCode::from(if help { 0 } else { 125 });
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
            ExitCode::from(e.exit_status() as u8)
        }
    }
}
