//! cgroup v2 limits per container (not applied yet: a container asking for
//! limits is refused with [`Error::NoHierarchy`] rather than run unlimited).

use std::path::{Path, PathBuf};

use hypercontainer_protocol::oci;

/// Errors of cgroup setup.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The agent has no cgroup hierarchy to enforce limits in.
    #[error("this agent cannot enforce cgroup limits (memory, CPU, pids)")]
    NoHierarchy,
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// The agent's cgroup hierarchy.
#[derive(Debug)]
pub struct Hierarchy;

/// One container's cgroup.
#[derive(Debug)]
pub struct Cgroup(PathBuf);

impl Hierarchy {
    /// The VM's hierarchy.
    pub fn mount_in_vm() -> Result<Self> {
        Err(Error::NoHierarchy)
    }

    /// A cgroup for container `name`.
    pub fn create(&self, _name: &str, _r: Option<&oci::LinuxResources>) -> Result<Cgroup> {
        Err(Error::NoHierarchy)
    }
}

impl Cgroup {
    /// Its directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Whether the OOM killer struck in it.
    pub fn oom_killed(&self) -> bool {
        false
    }

    /// Removes it.
    pub fn remove(self) -> Result<()> {
        Ok(())
    }
}
