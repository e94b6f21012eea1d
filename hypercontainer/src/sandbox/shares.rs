//! Host directories of a sandbox: its volumes and a `dir:` root
//! filesystem, all behind one multi-share virtio-fs device.
//!
//! ```text
//!  host                              guest (agent's namespace)
//!  dir:/srv/rootfs      --share-->   /run/hypercontainer/shares/hcfs/rootfs
//!  -v /srv/logs:/logs   --share-->   /run/hypercontainer/shares/hcfs/vol0
//!  -v data:/data:ro     --share-->   /run/hypercontainer/shares/hcfs/vol1
//! ```
//!
//! The agent mounts the device (tag [`FS_TAG`]) before it builds the root
//! filesystem; the root is the `rootfs` share (writable when asked) or an
//! overlay with a tmpfs upper over it; each volume is an OCI bind mount
//! from its share to its destination, applied in the container's mount
//! namespace before `pivot_root`.

use std::path::{Path, PathBuf};

use hypercontainer_protocol::{oci, share_mount_point, Rootfs, Upper};
use hypercontainer_virtio::fs::{MultiShareConfig, ShareConfig};

use super::{Error, Result};
use crate::volume::Volume;

/// Tag of the sandbox's virtio-fs device.
pub const FS_TAG: &str = "hcfs";
/// Name of the share holding a `dir:` root filesystem.
const ROOTFS_SHARE: &str = "rootfs";

/// What goes into the VM and the agent's `Start` for a sandbox's host
/// directories.
#[derive(Debug, Default)]
pub(super) struct Shares {
    /// The device, when there is any share.
    pub device: Option<MultiShareConfig>,
    /// The root filesystem, when it is a share.
    pub rootfs: Option<Rootfs>,
    /// Bind mounts of the volumes, in the order given.
    pub mounts: Vec<oci::Mount>,
}

impl Shares {
    /// The device tags the agent must mount.
    pub fn tags(&self) -> Vec<String> {
        self.device.iter().map(|d| d.tag.clone()).collect()
    }
}

fn share_path(name: &str) -> String {
    format!("{}/{name}", share_mount_point(FS_TAG))
}

/// Opens (or creates, for named volumes) each volume's host directory and
/// lays out the shares: `root` is the directory of a `dir:` image,
/// writable when `root_writable`.
pub(super) fn plan(
    root: Option<&Path>,
    root_writable: bool,
    volumes: &[Volume],
    data_dir: Option<&Path>,
) -> Result<Shares> {
    let mut shares = Shares::default();
    let mut device = MultiShareConfig::new(FS_TAG);
    if let Some(dir) = root {
        device = device.share(
            ROOTFS_SHARE,
            ShareConfig::new(dir, "").read_only(!root_writable),
        );
        let path = share_path(ROOTFS_SHARE);
        shares.rootfs = Some(if root_writable {
            Rootfs::Directory { path }
        } else {
            Rootfs::Overlay {
                lowers: vec![path],
                upper: Upper::Tmpfs,
            }
        });
    }
    let mut default_data: Option<PathBuf> = None;
    for (i, v) in volumes.iter().enumerate() {
        let data = match data_dir {
            Some(d) => d,
            None => {
                if default_data.is_none() {
                    default_data = Some(crate::volume::default_data_dir()?);
                }
                default_data.as_deref().unwrap_or(Path::new("."))
            }
        };
        let host = v.host_dir(data)?;
        let name = format!("vol{i}");
        device = device.share(
            &name,
            ShareConfig::new(host, "").read_only(v.is_read_only()),
        );
        let options = [
            "rbind",
            "rprivate",
            if v.is_read_only() { "ro" } else { "rw" },
        ];
        let mount = oci::MountBuilder::default()
            .destination(crate::volume::normalize_destination(v.destination())?)
            .typ("bind")
            .source(share_path(&name))
            .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
            .build()
            .map_err(|e| Error::Config(format!("volume mount: {e}")))?;
        shares.mounts.push(mount);
    }
    if !device.shares.is_empty() {
        raise_open_file_limit();
        shares.device = Some(device);
    }
    Ok(shares)
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
    fn volumes_and_a_directory_root_share_one_device() {
        let (root, a, data) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let vols = [
            Volume::bind(a.path(), "/a/"),
            Volume::named("cache", "/var/cache").read_only(true),
        ];
        let s = plan(Some(root.path()), false, &vols, Some(data.path())).unwrap();
        let dev = s.device.as_ref().unwrap();
        let names: Vec<_> = dev.shares.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["rootfs", "vol0", "vol1"]);
        assert!(dev.shares[0].1.read_only && !dev.shares[1].1.read_only);
        assert!(dev.shares[2].1.read_only);
        assert!(data.path().join("volumes/cache/_data").is_dir());
        assert!(
            matches!(&s.rootfs, Some(Rootfs::Overlay { lowers, .. }) if lowers[0].ends_with("/hcfs/rootfs"))
        );
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
        assert_eq!(s.tags(), ["hcfs"]);
    }

    #[test]
    fn a_writable_root_is_the_share_itself_and_no_shares_no_device() {
        let root = tempfile::tempdir().unwrap();
        let s = plan(Some(root.path()), true, &[], None).unwrap();
        assert!(matches!(s.rootfs, Some(Rootfs::Directory { .. })));
        assert!(!s.device.unwrap().shares[0].1.read_only);
        let none = plan(None, false, &[], None).unwrap();
        assert!(none.device.is_none() && none.rootfs.is_none() && none.tags().is_empty());
    }
}
