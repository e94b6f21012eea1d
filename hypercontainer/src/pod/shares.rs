//! Host directories of a pod: volumes, `dir:` root filesystems and the
//! layer trees of images imported after boot, all behind one multi-share
//! virtio-fs device.
//!
//! ```text
//!  host                              guest (agent's namespace)
//!  -v /srv/logs:/logs   --share-->   /run/hypercontainer/shares/hcfs/vol0   (pod volume)
//!  dir:/srv/rootfs      --share-->   /run/hypercontainer/shares/hcfs/c3-root
//!  -v data:/data:ro     --share-->   /run/hypercontainer/shares/hcfs/d1-ro
//!  layer sha256:ab12..  --share-->   /run/hypercontainer/shares/hcfs/l-ab12...
//! ```
//!
//! The agent mounts the device (tag [`FS_TAG`]) at the pod's setup. The
//! pod's own volumes are shares from boot. What a container adds later
//! (its volumes, a `dir:` root, the layers of an image no one knew at
//! boot) is added to the running device ([`SharesHandle::add`]) before
//! the container is created. A share cannot be taken out of a running
//! device, so a host directory is shared once per pod and reused by every
//! container that names it again, and a layer's tree by every container of
//! an image with that layer. Each volume is an OCI bind mount from its
//! share to its destination, applied in the container's mount namespace
//! before `pivot_root`; a root is the share itself (writable when asked)
//! or an overlay with a tmpfs upper over the shares.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hypercontainer_protocol::{oci, share_mount_point};
use hypercontainer_virtio::fs::{MultiShareConfig, ShareConfig, SharesHandle};

use crate::sandbox::{Error, Result};
use crate::volume::Volume;

/// Tag of the pod's virtio-fs device.
pub const FS_TAG: &str = "hcfs";

/// The guest path of share `name`.
pub(crate) fn share_path(name: &str) -> String {
    format!("{}/{name}", share_mount_point(FS_TAG))
}

/// The pod's own volumes: the device's first shares and every
/// container's bind mounts.
#[derive(Debug, Default)]
pub(crate) struct PodShares {
    /// The device, when the pod has one.
    pub device: Option<MultiShareConfig>,
    /// Bind mounts of the pod's volumes, in the order given.
    pub mounts: Vec<oci::Mount>,
}

/// Opens (or creates, for named volumes) each pod volume's host directory
/// and lays out the device; `device` asks for one even without volumes
/// (for what containers add later).
pub(crate) fn plan(volumes: &[Volume], data_dir: &Path, device: bool) -> Result<PodShares> {
    let mut shares = PodShares::default();
    let mut config = MultiShareConfig::new(FS_TAG);
    for (i, v) in volumes.iter().enumerate() {
        let host = v.host_dir(data_dir)?;
        let name = format!("vol{i}");
        config = config.share(
            &name,
            ShareConfig::new(host, "").read_only(v.is_read_only()),
        );
        shares.mounts.push(bind_mount(v, &name)?);
    }
    if device || !config.shares.is_empty() {
        raise_open_file_limit();
        shares.device = Some(config);
    }
    Ok(shares)
}

/// The bind mount of volume `v` from share `name`.
pub(crate) fn bind_mount(v: &Volume, name: &str) -> Result<oci::Mount> {
    let options = [
        "rbind",
        "rprivate",
        if v.is_read_only() { "ro" } else { "rw" },
    ];
    oci::MountBuilder::default()
        .destination(crate::volume::normalize_destination(v.destination())?)
        .typ("bind")
        .source(share_path(name))
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(|e| Error::Config(format!("volume mount: {e}")))
}

/// The shares added to a running pod's device, by what they serve, so
/// that each host directory is shared once.
#[derive(Debug, Default)]
pub(crate) struct LateShares {
    by_dir: HashMap<(PathBuf, bool), String>,
    next: u32,
}

impl LateShares {
    /// The share of host directory `dir` (read-only or not), added under
    /// a name made of `prefix` unless it is already shared; its guest
    /// path.
    pub fn share(
        &mut self,
        handle: &SharesHandle,
        prefix: &str,
        dir: &Path,
        read_only: bool,
    ) -> Result<String> {
        let dir = dir.canonicalize().map_err(|source| Error::Io {
            what: format!("opening {} to share it with the pod", dir.display()),
            source,
        })?;
        let key = (dir, read_only);
        if let Some(name) = self.by_dir.get(&key) {
            return Ok(name.clone());
        }
        let name = if prefix.starts_with("l-") {
            prefix.to_string()
        } else {
            self.next += 1;
            format!("{prefix}{}", self.next)
        };
        handle
            .add(&name, ShareConfig::new(&key.0, "").read_only(read_only))
            .map_err(|e| {
                Error::Config(format!(
                    "sharing {} with the pod: {}",
                    key.0.display(),
                    crate::agent_client::error_chain(&e)
                ))
            })?;
        raise_open_file_limit();
        self.by_dir.insert(key, name.clone());
        Ok(name)
    }
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit, as Go's
/// runtime and virtiofsd do: each file the guest holds open through a
/// share, and each name it keeps cached, is an fd of the host process, and
/// the common soft limit of 1024 is soon reached by a guest that unpacks a
/// tree into a volume. The hard limit is never changed, and this runs once
/// per process: a limit the embedder sets afterwards stays as it is.
fn raise_open_file_limit() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(raise_soft_open_file_limit);
}

fn raise_soft_open_file_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0
        || lim.rlim_cur >= lim.rlim_max
    {
        return;
    }
    let old = lim.rlim_cur;
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: setrlimit reads one rlimit from the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0 {
        log::info!(
            "virtio-fs: raised the soft open-file limit from {old} to {}",
            lim.rlim_max
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_volumes_are_the_first_shares_and_no_volumes_no_device_unless_asked() {
        let (a, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let vols = [
            Volume::bind(a.path(), "/a/"),
            Volume::named("cache", "/var/cache").read_only(true),
        ];
        let s = plan(&vols, data.path(), false).unwrap();
        let dev = s.device.as_ref().unwrap();
        let names: Vec<_> = dev.shares.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["vol0", "vol1"]);
        assert!(!dev.shares[0].1.read_only && dev.shares[1].1.read_only);
        assert!(data.path().join("volumes/cache/_data").is_dir());
        assert_eq!(s.mounts[0].destination(), Path::new("/a"));
        assert_eq!(
            s.mounts[1].source().as_deref(),
            Some(Path::new("/run/hypercontainer/shares/hcfs/vol1"))
        );
        assert!(s.mounts[1]
            .options()
            .as_ref()
            .unwrap()
            .contains(&"ro".to_string()));
        assert!(plan(&[], data.path(), false).unwrap().device.is_none());
        let empty = plan(&[], data.path(), true).unwrap().device.unwrap();
        assert!(empty.shares.is_empty());
    }

    #[test]
    fn a_directory_is_shared_once_per_mode() {
        let dev = hypercontainer_virtio::fs::Fs::multi(MultiShareConfig::new(FS_TAG)).unwrap();
        let handle = dev.shares().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut late = LateShares::default();
        let a = late.share(&handle, "d", dir.path(), true).unwrap();
        let b = late.share(&handle, "d", dir.path(), true).unwrap();
        let c = late.share(&handle, "d", dir.path(), false).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(handle.names(), [a, c]);
        assert!(late
            .share(&handle, "d", Path::new("/nonexistent/x"), true)
            .is_err());
    }
}
