//! The OCI runtime spec of a container as `docker run` would give it:
//! namespaces, mounts, masked and read-only paths, capabilities, seccomp,
//! cgroup limits and sysctls, from a [`ContainerOptions`].
//!
//! The defaults are Docker's (moby's `oci.DefaultSpec` plus what its daemon
//! adds), so that an image behaves here as under `docker run` with runc:
//!
//! - new PID, mount, UTS, IPC and cgroup namespaces (the VM itself is the
//!   network namespace);
//! - `/proc`, a `/dev` tmpfs with the default devices, `/dev/pts`,
//!   `/dev/shm` (64 MiB unless [`ContainerOptions::shm_size`]), `/dev/mqueue`,
//!   a read-only `/sys` and a read-only `/sys/fs/cgroup` of the container's
//!   own cgroup;
//! - Docker's masked paths (`/proc/kcore`, `/proc/keys`, `/sys/firmware`, ...)
//!   and read-only paths (`/proc/sys`, `/proc/sysrq-trigger`, ...);
//! - Docker's 14 default capabilities, changed by `cap_add`/`cap_drop`; for a
//!   non-root user only as the bounding set (see [`caps::process_capabilities`]);
//! - the default seccomp profile of the containers-common package (what
//!   podman uses), evaluated for those capabilities; see [`Seccomp`];
//! - rlimits: [`DEFAULT_ULIMITS`](super::DEFAULT_ULIMITS) changed by
//!   `--ulimit` (see [`super::ulimit`]).
//!
//! Whether the user is root is decided from the user string, as the host
//! sees it: empty, `root`, `0` and `0:GID` are root; any other name or uid
//! is not (the agent resolves names in the image's `/etc/passwd` later; a
//! name other than `root` that maps to uid 0 still gets the non-root
//! capability shape).

use std::collections::HashMap;
use std::path::PathBuf;

use hypercontainer_protocol::oci;

use super::{caps, seccomp};

/// Errors of building a container's spec. Each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A capability name in `cap_add`/`cap_drop` is unknown.
    #[error("invalid capability change")]
    Caps(#[from] caps::Error),
    /// The seccomp profile could not be loaded or evaluated.
    #[error("the seccomp profile")]
    Seccomp(#[from] seccomp::Error),
    /// A setting is invalid.
    #[error("{0}")]
    Invalid(String),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Which seccomp filter a container gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Seccomp {
    /// The default profile of the containers-common package, as podman
    /// reads it: `/etc/containers/seccomp.json`, else
    /// `/usr/share/containers/seccomp.json` (Debian's
    /// `golang-github-containers-common`). Missing, it is an error that says
    /// so: a container never runs unconfined by accident.
    #[default]
    Default,
    /// No filter (`--security-opt seccomp=unconfined`).
    Unconfined,
    /// A profile in Docker's JSON format (`--security-opt seccomp=FILE`).
    Profile(PathBuf),
}

/// A tmpfs mount (`docker run --tmpfs PATH[:size=N]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tmpfs {
    /// Where, inside the container (absolute).
    pub path: String,
    /// Size cap in bytes (`None`: the kernel's default, half of the VM's
    /// memory).
    pub size: Option<u64>,
    /// Mode of its root directory (default `1777`).
    pub mode: u32,
}

impl Tmpfs {
    /// A tmpfs at `path`, mode 1777, no size cap.
    pub fn new(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            size: None,
            mode: 0o1777,
        }
    }

    /// Caps its size.
    pub fn size(mut self, bytes: u64) -> Self {
        self.size = Some(bytes);
        self
    }

    /// Sets the mode of its root directory.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }
}

/// Resource limits of a container, enforced by a cgroup in the guest.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// Memory limit in bytes (`docker run --memory`); exceeding it is an
    /// OOM kill, exit status 137.
    pub memory: Option<u64>,
    /// CPU limit in CPUs (`docker run --cpus`, e.g. 0.5): a quota per
    /// 100 ms period.
    pub cpus: Option<f64>,
    /// Relative CPU weight (`docker run --cpu-shares`, 2..262144).
    pub cpu_shares: Option<u64>,
    /// Most processes and threads (`docker run --pids-limit`).
    pub pids: Option<i64>,
}

/// How a container is confined: Docker's `run` options that shape its
/// spec. The default is Docker's default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerOptions {
    /// Capabilities to add (`--cap-add`; `ALL` for all).
    pub cap_add: Vec<String>,
    /// Capabilities to drop (`--cap-drop`; `ALL` for all).
    pub cap_drop: Vec<String>,
    /// The seccomp filter.
    pub seccomp: Seccomp,
    /// `no_new_privs` (`--security-opt no-new-privileges`).
    pub no_new_privileges: bool,
    /// A read-only root filesystem (`--read-only`).
    pub read_only: bool,
    /// Extra tmpfs mounts (`--tmpfs`).
    pub tmpfs: Vec<Tmpfs>,
    /// Size of `/dev/shm` in bytes (`--shm-size`; default 64 MiB).
    pub shm_size: Option<u64>,
    /// Namespaced sysctls (`--sysctl`).
    pub sysctls: HashMap<String, String>,
    /// cgroup limits.
    pub limits: Limits,
    /// Resource limits of every process (`--ulimit`), replacing
    /// [`DEFAULT_ULIMITS`](super::DEFAULT_ULIMITS) of the same resource.
    pub ulimits: Vec<super::Ulimit>,
}

/// Docker's default `/dev/shm` size.
pub const DEFAULT_SHM_SIZE: u64 = 64 * 1024 * 1024;

/// Paths Docker masks (read as empty).
pub const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths Docker makes read-only.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The guest kernel's version, for the seccomp profile's `minKernel`
/// entries.
pub const GUEST_KERNEL_VERSION: seccomp::KernelVersion = seccomp::KernelVersion::new(6, 1);

/// Whether `user` (`user[:group]` as given to the agent) names root.
pub fn is_root_user(user: &str) -> bool {
    let u = user.split(':').next().unwrap_or_default();
    u.is_empty() || u == "root" || u == "0"
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> oci::Mount {
    let mut m = oci::Mount::default();
    m.set_destination(dest.into())
        .set_typ(Some(typ.into()))
        .set_source(Some(source.into()))
        .set_options(Some(options.iter().map(|s| s.to_string()).collect()));
    m
}

fn default_mounts(opts: &ContainerOptions) -> Vec<oci::Mount> {
    let shm = format!("size={}", opts.shm_size.unwrap_or(DEFAULT_SHM_SIZE));
    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", &shm],
        ),
    ];
    for t in &opts.tmpfs {
        let mode = format!("mode={:o}", t.mode);
        let mut o = vec!["nosuid", "nodev", "noexec", mode.as_str()];
        let size = t.size.map(|s| format!("size={s}"));
        if let Some(s) = &size {
            o.push(s);
        }
        mounts.push(mount(&t.path, "tmpfs", "tmpfs", &o));
    }
    mounts
}

fn namespaces() -> Vec<oci::LinuxNamespace> {
    use oci::LinuxNamespaceType::*;
    [Pid, Ipc, Uts, Mount, Cgroup]
        .into_iter()
        .map(|t| {
            let mut ns = oci::LinuxNamespace::default();
            ns.set_typ(t);
            ns
        })
        .collect()
}

fn resources(l: &Limits) -> Result<Option<oci::LinuxResources>> {
    if *l == Limits::default() {
        return Ok(None);
    }
    let mut r = oci::LinuxResources::default();
    r.set_devices(None);
    if let Some(m) = l.memory {
        if m < 6 * 1024 * 1024 {
            return Err(Error::Invalid(format!(
                "a memory limit of {m} bytes is below Docker's minimum of 6 MiB"
            )));
        }
        let mut mem = oci::LinuxMemory::default();
        mem.set_limit(Some(m as i64));
        r.set_memory(Some(mem));
    }
    if l.cpus.is_some() || l.cpu_shares.is_some() {
        let mut cpu = oci::LinuxCpu::default();
        if let Some(c) = l.cpus {
            if !(c > 0.0 && c.is_finite()) {
                return Err(Error::Invalid(format!(
                    "a CPU limit of {c} is not positive"
                )));
            }
            cpu.set_period(Some(100_000))
                .set_quota(Some((c * 100_000.0).round() as i64));
        }
        if let Some(s) = l.cpu_shares {
            if !(2..=262_144).contains(&s) {
                return Err(Error::Invalid(format!(
                    "CPU shares of {s} are outside 2..=262144"
                )));
            }
            cpu.set_shares(Some(s));
        }
        r.set_cpu(Some(cpu));
    }
    if let Some(p) = l.pids {
        let mut pids = oci::LinuxPids::default();
        pids.set_limit(p);
        r.set_pids(Some(pids));
    }
    Ok(Some(r))
}

/// The spec of a container run as `user` with `opts`.
pub fn container_spec(opts: &ContainerOptions, user: &str) -> Result<oci::Spec> {
    for t in &opts.tmpfs {
        if !t.path.starts_with('/') || t.path.contains(['\0', ',']) {
            return Err(Error::Invalid(format!(
                "tmpfs path {:?} must be absolute, without commas",
                t.path
            )));
        }
    }
    let set = caps::CapabilitySet::docker_default().with_changes(&opts.cap_add, &opts.cap_drop)?;
    let root = is_root_user(user);
    let mut process = oci::Process::default();
    process
        .set_capabilities(Some(caps::process_capabilities(&set, root)))
        .set_no_new_privileges(Some(opts.no_new_privileges))
        .set_rlimits(Some(super::ulimit::spec_rlimits(&opts.ulimits)?))
        .set_apparmor_profile(None);
    let mut root_fs = oci::Root::default();
    root_fs.set_readonly(Some(opts.read_only));

    let mut linux = oci::Linux::default();
    linux
        .set_namespaces(Some(namespaces()))
        .set_masked_paths(Some(MASKED_PATHS.iter().map(|s| s.to_string()).collect()))
        .set_readonly_paths(Some(READONLY_PATHS.iter().map(|s| s.to_string()).collect()))
        .set_resources(resources(&opts.limits)?)
        .set_sysctl((!opts.sysctls.is_empty()).then(|| opts.sysctls.clone()))
        .set_seccomp(match &opts.seccomp {
            Seccomp::Unconfined => None,
            Seccomp::Default => Some(seccomp::load_default()?.evaluate(&set, GUEST_KERNEL_VERSION)),
            Seccomp::Profile(p) => {
                Some(seccomp::Profile::load(p)?.evaluate(&set, GUEST_KERNEL_VERSION))
            }
        });

    let mut spec = hypercontainer_protocol::bare_spec();
    spec.set_process(Some(process))
        .set_root(Some(root_fs))
        .set_mounts(Some(default_mounts(opts)))
        .set_linux(Some(linux));
    Ok(spec)
}

/// The environment Docker gives a container: `PATH` (when the image and
/// the caller give none), `HOSTNAME`, and `TERM=xterm` on a terminal, each
/// overridden by the same variable in `env` (the image's and the caller's,
/// in that order, later entries winning).
pub fn container_env(env: &[String], hostname: &str, tty: bool) -> Vec<String> {
    let mut out: Vec<String> = vec![
        format!("PATH={}", DEFAULT_PATH),
        format!("HOSTNAME={hostname}"),
    ];
    if tty {
        out.push("TERM=xterm".into());
    }
    for e in env {
        let key = e.split('=').next().unwrap_or_default();
        match out.iter_mut().find(|o| o.split('=').next() == Some(key)) {
            Some(slot) => *slot = e.clone(),
            None => out.push(e.clone()),
        }
    }
    out
}

/// The `PATH` of a container whose image sets none (Docker's).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_users_by_name_or_id() {
        for u in ["", "root", "0", "0:0", "root:wheel"] {
            assert!(is_root_user(u), "{u:?}");
        }
        for u in ["app", "1000", "1000:0", "nobody"] {
            assert!(!is_root_user(u), "{u:?}");
        }
    }

    #[test]
    fn env_has_dockers_defaults_overridden_by_the_image_and_caller() {
        let env = container_env(
            &["PATH=/bin".into(), "A=1".into(), "A=2".into()],
            "box",
            true,
        );
        assert_eq!(env, ["PATH=/bin", "HOSTNAME=box", "TERM=xterm", "A=2"]);
        let env = container_env(&[], "h", false);
        assert_eq!(env, [format!("PATH={DEFAULT_PATH}"), "HOSTNAME=h".into()]);
        let env = container_env(&["HOSTNAME=mine".into()], "h", false);
        assert_eq!(env[1], "HOSTNAME=mine");
    }

    #[test]
    fn unconfined_spec_has_dockers_shape() {
        let opts = ContainerOptions {
            seccomp: Seccomp::Unconfined,
            shm_size: Some(1 << 20),
            tmpfs: vec![Tmpfs::new("/run").size(1 << 20)],
            read_only: true,
            ..ContainerOptions::default()
        };
        let spec = container_spec(&opts, "app").unwrap();
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux.seccomp().is_none());
        assert_eq!(linux.namespaces().as_ref().unwrap().len(), 5);
        assert!(linux
            .masked_paths()
            .as_ref()
            .unwrap()
            .contains(&"/proc/kcore".to_string()));
        assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
        let mounts = spec.mounts().as_ref().unwrap();
        let shm = mounts
            .iter()
            .find(|m| m.destination() == std::path::Path::new("/dev/shm"));
        assert!(shm
            .unwrap()
            .options()
            .as_ref()
            .unwrap()
            .contains(&"size=1048576".to_string()));
        assert!(mounts
            .iter()
            .any(|m| m.destination() == std::path::Path::new("/run")));
        let caps = spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .as_ref()
            .unwrap();
        assert!(
            caps.effective().as_ref().is_none_or(|e| e.is_empty()),
            "non-root: bounding only"
        );
        assert_eq!(caps.bounding().as_ref().unwrap().len(), 14);
        // The spec travels to the agent as JSON.
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<oci::Spec>(&json).unwrap(), spec);
    }

    #[test]
    fn limits_become_cgroup_resources() {
        let l = Limits {
            memory: Some(64 << 20),
            cpus: Some(0.5),
            cpu_shares: None,
            pids: Some(10),
        };
        let r = resources(&l).unwrap().unwrap();
        assert_eq!(r.memory().as_ref().unwrap().limit(), Some(64 << 20));
        assert_eq!(r.cpu().as_ref().unwrap().quota(), Some(50_000));
        assert_eq!(r.pids().as_ref().unwrap().limit(), 10);
        assert!(resources(&Limits::default()).unwrap().is_none());
        assert!(resources(&Limits {
            memory: Some(1024),
            ..Limits::default()
        })
        .is_err());
        assert!(resources(&Limits {
            cpus: Some(-1.0),
            ..Limits::default()
        })
        .is_err());
    }

    #[test]
    fn bad_tmpfs_paths_are_refused() {
        let opts = ContainerOptions {
            seccomp: Seccomp::Unconfined,
            tmpfs: vec![Tmpfs::new("relative")],
            ..ContainerOptions::default()
        };
        assert!(matches!(container_spec(&opts, ""), Err(Error::Invalid(_))));
    }
}
