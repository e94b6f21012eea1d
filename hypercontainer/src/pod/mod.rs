//! Pods: one microVM, several containers, each with its own lifecycle.
//!
//! [`Pod::builder`] takes what the containers share: the VM's size, the
//! network ([`crate::network`]), host name, DNS and `/etc/hosts`, the
//! pod's volumes, and the IPC and (optionally) PID namespace.
//! [`PodBuilder::start`] boots the VM and sets the pod up in the guest;
//! containers are then created and removed while it runs:
//! [`Pod::create`] gives a [`Container`] with its own image, process,
//! volumes, limits and stdio, its own mount namespace and root filesystem.
//! The containers of a pod reach each other on `localhost`.
//!
//! ```no_run
//! use std::io::Read;
//! use hypercontainer::container::ContainerSpec;
//! use hypercontainer::pod::Pod;
//!
//! # fn main() -> Result<(), hypercontainer::sandbox::Error> {
//! let busybox: hypercontainer::ImageRef = "oci:/srv/images/busybox:latest".parse()?;
//! let pod = Pod::builder()
//!     .hostname("web")
//!     .preload(busybox.clone())
//!     .start()?;
//! let server = pod.create(
//!     ContainerSpec::new(busybox.clone()).cmd(["httpd", "-f", "-p", "8080"]),
//! )?;
//! server.start()?;
//! let client = pod.create(
//!     ContainerSpec::new(busybox).cmd(["wget", "-qO-", "http://localhost:8080/"]),
//! )?;
//! client.start()?;
//! let mut page = String::new();
//! client.stdout()?.read_to_string(&mut page).expect("read");
//! client.wait()?;
//! client.remove()?;
//! server.stop(std::time::Duration::from_secs(5))?;
//! # Ok(())
//! # }
//! ```
//!
//! # Images known at boot and images that come later
//!
//! Linux does not hot-plug virtio-mmio devices, so a pod's block devices
//! are fixed when it boots. Images named with [`PodBuilder::preload`] are
//! imported first, and each of their distinct layers is a read-only EROFS
//! disk, mounted once in the guest and shared by every container of those
//! images: their files are read through one page cache, however many
//! containers run them. An image first named in [`Pod::create`] is
//! imported then, into a store that keeps each layer's unpacked tree, and
//! each of its layers is added as a read-only share of the pod's virtio-fs
//! device; the container's root is an overlay of those shares under a
//! tmpfs upper. What that costs: the file metadata of such a container
//! crosses the FUSE protocol (a round trip to the host per lookup the
//! guest does not have cached), the store holds each layer twice (tree and
//! EROFS image), and a share stays in the device for the pod's life (at
//! most 255 per pod, layers and volumes together; a layer or host
//! directory is shared once and reused by every container that needs it).
//! The guest sees only the layers its containers use, never the whole
//! store.
//!
//! # Threads and resources
//!
//! A pod has its VM's threads (one per vCPU and one device event loop)
//! and one thread reading the agent connection. Dropping the [`Pod`] stops
//! the VM and frees everything; [`Container`] handles that outlive it
//! report [`Error::PodGone`]. [`Pod`] and [`Container`] are
//! `Send + Sync`.

mod boot;
mod builder;
pub(crate) mod shares;
pub(crate) mod watch;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hypercontainer_image::{Digest, ImageStore};
use hypercontainer_protocol::oci;
use hypercontainer_virtio::fs::SharesHandle;

use crate::agent_client::AgentClient;
use crate::container::{Container, ContainerSpec};
use crate::sandbox::{PullOptions, Result};
use crate::vmm::{self, Vm};
use watch::{lock, Ended};

pub use crate::sandbox::Error;
pub use builder::PodBuilder;
pub use shares::FS_TAG;

/// How long a pod waits for the agent's answer to a stats request.
const STATS_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the images of a pod's containers come from.
pub(crate) struct Images {
    /// The caller's store, for both.
    given: Option<ImageStore>,
    /// The default store for preloaded images (EROFS layers).
    preload: std::sync::OnceLock<ImageStore>,
    /// The default store for images imported after boot (layer trees).
    late: std::sync::OnceLock<ImageStore>,
    late_allowed: bool,
    pull: PullOptions,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct HostTimes {
    pub(crate) image_ready: Duration,
    pub(crate) vm_built: Duration,
    pub(crate) first_run: Option<Duration>,
    pub(crate) agent_connected: Duration,
}

/// What changes while the pod runs.
#[derive(Debug, Default)]
pub(crate) struct PodState {
    /// The last container id handed out.
    pub(crate) last_container: u32,
    /// Container names in use.
    pub(crate) names: HashMap<String, u32>,
    /// Shares added after boot.
    pub(crate) late: shares::LateShares,
}

/// The pod itself, shared by its [`Pod`] handle and (weakly) its
/// containers.
pub(crate) struct PodInner {
    pub(crate) id: String,
    pub(crate) hostname: String,
    /// The pod's `/etc/hosts`, when it writes one.
    pub(crate) hosts: Option<String>,
    pub(crate) share_pid: bool,
    pub(crate) client: AgentClient,
    pub(crate) vm: Arc<Mutex<Vm>>,
    pub(crate) ended: Ended,
    pub(crate) t0: Instant,
    pub(crate) host: HostTimes,
    pub(crate) images: Images,
    /// Preloaded layers by diff id: their disks' serials.
    pub(crate) layer_serials: HashMap<Digest, String>,
    /// The preloaded images, as named and as imported.
    pub(crate) preloaded: Vec<(crate::ImageRef, hypercontainer_image::Image)>,
    /// The virtio-fs device's shares, when it has one.
    pub(crate) fs: Option<SharesHandle>,
    pub(crate) data_dir: PathBuf,
    /// Bind mounts of the pod's volumes, in every container.
    pub(crate) pod_mounts: Vec<oci::Mount>,
    pub(crate) state: Mutex<PodState>,
    /// Last: passt outlives the VM's end of its socket.
    pub(crate) network: crate::network::Running,
}

impl PodInner {
    pub(crate) fn stop(&self) {
        lock(&self.vm).stop();
        self.client.close();
    }

    /// The preloaded image `image` names, if any.
    pub(crate) fn preloaded(
        &self,
        image: &crate::ImageRef,
    ) -> Option<&hypercontainer_image::Image> {
        self.preloaded.iter().find_map(|(r, img)| {
            let same =
                r == image || matches!(image, crate::ImageRef::Imported(i) if i.id == img.id);
            same.then_some(img)
        })
    }

    /// The error for an agent failure while the pod runs: the guest's
    /// death when it died.
    pub(crate) fn died(&self, e: crate::agent_client::Error) -> Error {
        watch::boot_failure(&self.vm, &self.ended, "while the pod ran", e)
    }
}

impl Drop for PodInner {
    fn drop(&mut self) {
        self.stop();
        // Fields drop next: the client joins its reader thread, the VM its
        // vCPU and device threads.
    }
}

/// A running pod. See the [module docs](self).
pub struct Pod {
    pub(crate) inner: Arc<PodInner>,
}

impl std::fmt::Debug for Pod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pod")
            .field("id", &self.inner.id)
            .finish_non_exhaustive()
    }
}

/// Memory of a pod's guest, as its kernel counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodStats {
    /// `MemTotal` of the guest.
    pub guest_memory_total_kib: u64,
    /// `MemAvailable` of the guest.
    pub guest_memory_available_kib: u64,
}

impl Pod {
    /// A builder.
    pub fn builder() -> PodBuilder {
        PodBuilder::default()
    }

    /// The pod's id (32 hex digits, random).
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The host name of every container of the pod.
    pub fn hostname(&self) -> &str {
        &self.inner.hostname
    }

    /// Prepares a container: imports its image when needed (see the
    /// [module docs](self)), shares its volumes, and works out its process
    /// and confinement. [`Container::start`] runs it.
    pub fn create(&self, spec: ContainerSpec) -> Result<Container> {
        crate::container::create(&self.inner, spec, false)
    }

    /// The ports published on the host, as bound.
    pub fn ports(&self) -> &[crate::network::PublishedPort] {
        self.inner.network.ports()
    }

    /// Why the pod's network went down while it ran, if it did.
    pub fn network_error(&self) -> Option<crate::network::Error> {
        self.inner.network.failure()
    }

    /// The pid of the pod's passt on the host (user mode).
    pub fn passt_pid(&self) -> Option<u32> {
        self.inner.network.passt_pid()
    }

    /// The guest's memory, from its agent.
    pub fn stats(&self) -> Result<PodStats> {
        let s = self
            .inner
            .client
            .stats(u32::MAX, STATS_TIMEOUT)
            .map_err(|e| self.inner.died(e))?;
        Ok(PodStats {
            guest_memory_total_kib: s.guest_memory_total_kib,
            guest_memory_available_kib: s.guest_memory_available_kib,
        })
    }

    /// The last lines of the guest's serial console.
    pub fn console_tail(&self) -> Vec<String> {
        lock(&self.inner.vm).console_tail()
    }

    /// Host memory the VMM uses beyond guest RAM, in KiB, for this process
    /// as a whole (see [`vmm::rss_excluding_guest_kib`]).
    pub fn vmm_rss_kib(&self) -> std::io::Result<u64> {
        let vm = lock(&self.inner.vm);
        vmm::rss_excluding_guest_kib(&[&vm])
    }

    /// Whether the VM ended.
    pub fn is_finished(&self) -> bool {
        lock(&self.inner.vm).is_finished()
    }

    /// Ends the pod: every container's processes are killed and the VM
    /// powers off; waits up to `timeout` for that, then stops the VM.
    pub fn shutdown(&self, timeout: Duration) {
        if self.inner.client.shutdown().is_ok() {
            self.inner.client.wait_ended(timeout);
        }
        self.inner.stop();
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.inner.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_validates_before_touching_anything() {
        assert!(matches!(
            Pod::builder().vcpus(0).start(),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            Pod::builder().memory_mib(8).start(),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            Pod::builder().hostname("a b").start(),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            Pod::builder()
                .add_host("", "10.0.0.1".parse().unwrap())
                .start(),
            Err(Error::Config(_))
        ));
    }

    #[test]
    fn handles_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Pod>();
        check::<Container>();
    }
}
