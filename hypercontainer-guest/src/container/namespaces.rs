//! The container's namespaces: which ones its first process creates (from
//! the spec's `linux.namespaces`), and how later processes join them.
//!
//! The main process is forked straight into new PID, mount, UTS and IPC
//! namespaces (`clone(2)` flags), so it is PID 1 of its own PID namespace
//! with PID 1's signal semantics, while the agent stays the VM's init and
//! the reaper of everything. A cgroup namespace is made after the child has
//! joined its cgroup (`unshare`), so the container sees its own cgroup as
//! the root. An exec'd process joins the same namespaces by `setns(2)` on
//! descriptors of the main process's `/proc/PID/ns/*`: the agent itself
//! enters the PID namespace for its children before forking (and returns to
//! its own right after), the child enters the others.

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use hypercontainer_protocol::oci;

use crate::sys;

/// Errors of namespace setup.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec asks for something the agent cannot do.
    #[error("{0}")]
    Unsupported(String),
    /// A namespace of a running container could not be opened or entered.
    #[error("{what}")]
    Sys {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// The namespaces a container's first process creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewNamespaces {
    /// `clone(2)` flags: `CLONE_NEWNS` always, plus PID, UTS and IPC when
    /// the spec lists them.
    pub clone_flags: libc::c_int,
    /// Whether to make a cgroup namespace after joining the cgroup.
    pub cgroup: bool,
}

impl NewNamespaces {
    /// The namespaces of `spec`. A mount namespace is always created (the
    /// agent keeps its own root); a network, user or time namespace, or a
    /// namespace given by path, is refused: the VM is the network and user
    /// boundary, and containers of one VM do not join foreign namespaces.
    pub fn from_spec(spec: &oci::Spec) -> Result<Self> {
        let mut clone_flags = libc::CLONE_NEWNS;
        let mut cgroup = false;
        let list = spec.linux().as_ref().and_then(|l| l.namespaces().as_ref());
        for ns in list.into_iter().flatten() {
            if let Some(p) = ns.path() {
                return Err(Error::Unsupported(format!(
                    "joining the {:?} namespace at {} is not supported: the agent creates each \
                     container's namespaces",
                    ns.typ(),
                    p.display()
                )));
            }
            match ns.typ() {
                oci::LinuxNamespaceType::Mount => {}
                oci::LinuxNamespaceType::Pid => clone_flags |= libc::CLONE_NEWPID,
                oci::LinuxNamespaceType::Uts => clone_flags |= libc::CLONE_NEWUTS,
                oci::LinuxNamespaceType::Ipc => clone_flags |= libc::CLONE_NEWIPC,
                oci::LinuxNamespaceType::Cgroup => cgroup = true,
                // The VM's network belongs to the whole sandbox.
                oci::LinuxNamespaceType::Network => {}
                other => {
                    return Err(Error::Unsupported(format!(
                        "a {other:?} namespace is not supported in a sandbox VM"
                    )))
                }
            }
        }
        Ok(Self {
            clone_flags,
            cgroup,
        })
    }
}

/// Descriptors of a running container's namespaces, for exec'd processes.
#[derive(Debug)]
pub struct Joined {
    pid: Option<OwnedFd>,
    /// (descriptor, `CLONE_NEW*` type), in the order the child enters them
    /// (the mount namespace last: it changes the root).
    others: Vec<(OwnedFd, libc::c_int)>,
    /// The agent's own PID namespace, to return to after forking.
    own_pid: Option<OwnedFd>,
}

impl Joined {
    /// Opens the namespaces of process `pid` that `made` created.
    pub fn open(pid: libc::pid_t, made: NewNamespaces) -> Result<Self> {
        let open = |name: &str| {
            let path = format!("/proc/{pid}/ns/{name}");
            std::fs::File::open(&path)
                .map(OwnedFd::from)
                .map_err(|source| Error::Sys {
                    what: format!("opening {path}"),
                    source,
                })
        };
        let mut others = Vec::new();
        for (flag, name) in [(libc::CLONE_NEWIPC, "ipc"), (libc::CLONE_NEWUTS, "uts")] {
            if made.clone_flags & flag != 0 {
                others.push((open(name)?, flag));
            }
        }
        if made.cgroup {
            others.push((open("cgroup")?, libc::CLONE_NEWCGROUP));
        }
        others.push((open("mnt")?, libc::CLONE_NEWNS));
        let (pid_fd, own_pid) = if made.clone_flags & libc::CLONE_NEWPID != 0 {
            let own = std::fs::File::open("/proc/self/ns/pid")
                .map(OwnedFd::from)
                .map_err(|source| Error::Sys {
                    what: "opening the agent's PID namespace".into(),
                    source,
                })?;
            (Some(open("pid")?), Some(own))
        } else {
            (None, None)
        };
        Ok(Self {
            pid: pid_fd,
            others,
            own_pid,
        })
    }

    /// In the agent, right before forking: children go into the
    /// container's PID namespace.
    pub fn enter_pid_for_children(&self) -> io::Result<()> {
        match &self.pid {
            Some(fd) => sys::setns(fd, libc::CLONE_NEWPID),
            None => Ok(()),
        }
    }

    /// In the agent, right after forking: back to its own PID namespace
    /// for later children.
    pub fn leave_pid_for_children(&self) -> io::Result<()> {
        match &self.own_pid {
            Some(fd) => sys::setns(fd, libc::CLONE_NEWPID),
            None => Ok(()),
        }
    }

    /// In the child: joins the other namespaces, the mount namespace last
    /// (which puts the child at the container's root).
    pub fn enter(&self) -> io::Result<()> {
        for (fd, flag) in &self.others {
            sys::setns(fd, *flag)?;
        }
        std::env::set_current_dir(Path::new("/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with(types: &[oci::LinuxNamespaceType]) -> oci::Spec {
        let mut linux = oci::Linux::default();
        linux.set_namespaces(Some(
            types
                .iter()
                .map(|t| {
                    let mut ns = oci::LinuxNamespace::default();
                    ns.set_typ(*t);
                    ns
                })
                .collect(),
        ));
        let mut spec = hypercontainer_protocol::bare_spec();
        spec.set_linux(Some(linux));
        spec
    }

    #[test]
    fn a_mount_namespace_is_always_made() {
        let ns = NewNamespaces::from_spec(&hypercontainer_protocol::bare_spec()).unwrap();
        assert_eq!(ns.clone_flags, libc::CLONE_NEWNS);
        assert!(!ns.cgroup);
    }

    #[test]
    fn docker_namespaces_become_clone_flags() {
        use oci::LinuxNamespaceType::*;
        let ns =
            NewNamespaces::from_spec(&spec_with(&[Pid, Network, Ipc, Uts, Mount, Cgroup])).unwrap();
        assert_eq!(
            ns.clone_flags,
            libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC
        );
        assert!(ns.cgroup);
    }

    #[test]
    fn user_namespaces_and_paths_are_refused() {
        assert!(NewNamespaces::from_spec(&spec_with(&[oci::LinuxNamespaceType::User])).is_err());
        let mut spec = spec_with(&[oci::LinuxNamespaceType::Pid]);
        let linux = spec.linux_mut().as_mut().unwrap();
        linux.namespaces_mut().as_mut().unwrap()[0].set_path(Some("/proc/1/ns/pid".into()));
        assert!(NewNamespaces::from_spec(&spec).is_err());
    }
}
