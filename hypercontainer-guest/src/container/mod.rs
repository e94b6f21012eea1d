//! One container of the pod, run the way runc runs an OCI runtime spec:
//! its root filesystem, namespaces, cgroup, capabilities, seccomp filter
//! and the rest of [`Create::spec`](hypercontainer_protocol::Create::spec),
//! one module per concern.
//!
//! [`Container::create`] checks and compiles everything once, before the
//! first fork; each process (the main one and every exec'd one) then gets
//! the same [`Confinement`] in its child (see [`crate::spawn`]).

pub mod caps;
pub mod cgroups;
pub mod mounts;
pub mod namespaces;
pub mod seccomp;
#[cfg(test)]
mod test_child;

use std::path::{Path, PathBuf};

use hypercontainer_protocol::{oci, ContainerId, Create, Rlimit, RlimitResource, Setup};

use crate::rootfs;

/// Errors of container setup.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The root filesystem could not be built.
    #[error("building the root filesystem")]
    Rootfs(#[source] rootfs::Error),
    /// A filesystem setting of the spec is invalid.
    #[error("the container's mounts")]
    Mounts(#[source] mounts::Error),
    /// The spec's namespaces cannot be made.
    #[error("the container's namespaces")]
    Namespaces(#[source] namespaces::Error),
    /// The capabilities are invalid.
    #[error("the container's capabilities")]
    Caps(#[source] caps::Error),
    /// The seccomp profile does not compile.
    #[error("the container's seccomp profile")]
    Seccomp(#[source] seccomp::Error),
    /// The cgroup could not be made or limited.
    #[error("the container's cgroup")]
    Cgroup(#[source] cgroups::Error),
    /// An rlimit of the spec names no resource this agent knows.
    #[error("the container's rlimits: unknown type {0}")]
    Rlimit(String),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// What every process of a container gets in its child before `execve`,
/// prepared before the fork.
#[derive(Debug, Default)]
pub struct Confinement {
    /// The five capability sets; `None` keeps the agent's (all of them).
    pub caps: Option<caps::CapSets>,
    /// The seccomp filters; `None` installs none.
    pub seccomp: Option<seccomp::Filters>,
    /// `noNewPrivileges` of the spec.
    pub no_new_privs: bool,
    /// `oomScoreAdj` of the spec.
    pub oom_score_adj: Option<i32>,
    /// The container cgroup's `cgroup.procs`, joined first.
    pub cgroup_procs: Option<PathBuf>,
    /// `process.rlimits` of the spec: set for each process, unless its own
    /// [`Process::rlimits`](hypercontainer_protocol::Process::rlimits)
    /// names the same resource.
    pub rlimits: Vec<Rlimit>,
    /// `process.user.umask` of the spec, for a process whose own
    /// [`Process::umask`](hypercontainer_protocol::Process::umask) is
    /// `None`.
    pub umask: Option<u32>,
}

/// How a child enters the container.
#[derive(Debug)]
pub enum Entry<'a> {
    /// The main process: it was forked into new namespaces and builds the
    /// container's filesystem view.
    Init {
        /// The namespaces it was forked into.
        ns: namespaces::NewNamespaces,
        /// Its filesystem setup.
        root: &'a mounts::RootPlan,
    },
    /// An exec'd process: joins the main process's namespaces.
    Join(&'a namespaces::Joined),
}

/// A container of the pod.
#[derive(Debug)]
pub struct Container {
    /// The agent's scratch for it (layers' overlay, upper).
    work: PathBuf,
    root: PathBuf,
    plan: mounts::RootPlan,
    ns: namespaces::NewNamespaces,
    confinement: Confinement,
    cgroup: Option<cgroups::Cgroup>,
    joined: Option<namespaces::Joined>,
    init_pid: Option<libc::pid_t>,
}

/// The cgroup name of container `id`.
fn cgroup_name(id: ContainerId) -> String {
    format!("container-{id}")
}

impl Container {
    /// Builds the root filesystem, checks and compiles the spec, and makes
    /// the cgroup (under `cgroups`, when the agent has a hierarchy), with
    /// the pod's settings (`pod`: host name and /etc files). On failure
    /// nothing of it is left mounted.
    pub fn create(c: &Create, pod: &Setup, cgroups: Option<&cgroups::Hierarchy>) -> Result<Self> {
        let spec = &c.spec;
        let ns = namespaces::NewNamespaces::from_spec(spec).map_err(Error::Namespaces)?;
        let process = spec.process().as_ref();
        let caps = process
            .and_then(|p| p.capabilities().as_ref())
            .map(caps::CapSets::from_spec)
            .transpose()
            .map_err(Error::Caps)?;
        let linux = spec.linux().as_ref();
        let seccomp = linux
            .and_then(|l| l.seccomp().as_ref())
            .map(seccomp::compile)
            .transpose()
            .map_err(Error::Seccomp)?;
        if let Some(f) = &seccomp {
            for flag in f.unsupported_flags() {
                eprintln!("hypercontainer-agent: warning: seccomp flag {flag:?} is not supported by this kernel; ignored");
            }
        }
        let rlimits = process.map(spec_rlimits).transpose()?.unwrap_or_default();
        rootfs::mount_shares(&c.shares).map_err(Error::Rootfs)?;
        let work = rootfs::work_dir(c.container).map_err(Error::Rootfs)?;
        let built = (|| {
            let root = rootfs::prepare(&c.rootfs, &work).map_err(Error::Rootfs)?;
            let etc = mounts::EtcFiles {
                hostname: pod.hostname.clone(),
                hosts: c.hosts.clone().or_else(|| pod.hosts.clone()),
                resolv_conf: pod.resolv_conf.clone(),
            };
            let plan = mounts::RootPlan::from_spec(&root, spec, etc).map_err(Error::Mounts)?;
            let resources = linux.and_then(|l| l.resources().as_ref());
            let cgroup = match cgroups {
                Some(h) => Some(
                    h.create(&cgroup_name(c.container), resources)
                        .map_err(Error::Cgroup)?,
                ),
                None if resources.is_some_and(has_limits) => {
                    return Err(Error::Cgroup(cgroups::Error::NoHierarchy))
                }
                None => None,
            };
            Ok((root, plan, cgroup))
        })();
        let (root, plan, cgroup) = match built {
            Ok(b) => b,
            Err(e) => {
                rootfs::release(&work);
                return Err(e);
            }
        };
        let confinement = Confinement {
            caps,
            seccomp,
            no_new_privs: process.and_then(|p| p.no_new_privileges()).unwrap_or(false),
            oom_score_adj: process.and_then(|p| p.oom_score_adj()),
            cgroup_procs: cgroup.as_ref().map(|c| c.path().join("cgroup.procs")),
            rlimits,
            umask: process.and_then(|p| p.user().umask()),
        };
        Ok(Self {
            work,
            root,
            plan,
            ns,
            confinement,
            cgroup,
            joined: None,
            init_pid: None,
        })
    }

    /// The root filesystem, in the agent's view.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What each process gets before `execve`.
    pub fn confinement(&self) -> &Confinement {
        &self.confinement
    }

    /// How the main process enters the container.
    pub fn init_entry(&self) -> Entry<'_> {
        Entry::Init {
            ns: self.ns,
            root: &self.plan,
        }
    }

    /// Records the main process, opening its namespaces for later execs.
    pub fn started(&mut self, pid: libc::pid_t) -> Result<()> {
        self.init_pid = Some(pid);
        self.joined = Some(namespaces::Joined::open(pid, self.ns).map_err(Error::Namespaces)?);
        Ok(())
    }

    /// How an exec'd process enters the container (`None` before the main
    /// process started).
    pub fn exec_entry(&self) -> Option<Entry<'_>> {
        self.joined.as_ref().map(Entry::Join)
    }

    /// The main process's root directory, as the agent sees it (to read the
    /// container's `/etc/passwd` for an exec).
    pub fn process_root(&self) -> PathBuf {
        match self.init_pid {
            Some(pid) => PathBuf::from(format!("/proc/{pid}/root")),
            None => self.root.clone(),
        }
    }

    /// Whether the kernel's OOM killer struck in the container's cgroup.
    pub fn oom_killed(&self) -> bool {
        self.cgroup.as_ref().is_some_and(|c| c.oom_killed())
    }

    /// What the container's cgroup says its processes use (memory bytes,
    /// CPU microseconds, pids); zeros without a cgroup.
    pub fn usage(&self) -> (u64, u64, u32) {
        self.cgroup.as_ref().map_or((0, 0, 0), |c| c.usage())
    }

    /// Frees the container: its cgroup (what is left in it is killed) and
    /// its root filesystem's mounts.
    pub fn remove(&mut self) {
        if let Some(c) = self.cgroup.take() {
            if let Err(e) = c.remove() {
                eprintln!(
                    "hypercontainer-agent: removing the container's cgroup: {}",
                    crate::agent::error_chain(&e)
                );
            }
        }
        self.joined = None;
        rootfs::release(&self.work);
    }
}

/// The rlimits of `process.rlimits`.
fn spec_rlimits(p: &oci::Process) -> Result<Vec<Rlimit>> {
    let Some(rlimits) = p.rlimits() else {
        return Ok(Vec::new());
    };
    rlimits
        .iter()
        .map(|r| {
            let name = r.typ().to_string();
            let resource = RlimitResource::from_oci_name(&name).ok_or(Error::Rlimit(name))?;
            Ok(Rlimit {
                resource,
                soft: r.soft(),
                hard: r.hard(),
            })
        })
        .collect()
}

/// Whether `r` asks for any limit a cgroup enforces.
fn has_limits(r: &oci::LinuxResources) -> bool {
    r.memory().is_some() || r.cpu().is_some() || r.pids().is_some() || r.unified().is_some()
}
