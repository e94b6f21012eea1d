//! The steps of [`PodBuilder::start`]: boot files, preloaded images, the
//! VM, the agent, the pod's setup.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hypercontainer_image::{Digest, Image, ImageStore};
use hypercontainer_protocol::{ErrorKind, Interface, Setup};

use super::builder::PodBuilder;
use super::shares::{self, PodShares, FS_TAG};
use super::watch::{accept_agent, boot_failure, lock, vm_gone, Ended};
use super::{HostTimes, Images, Pod, PodInner};
use crate::agent_client::{error_chain, AgentClient};
use crate::guest;
use crate::host::{self, KvmKind};
use crate::kernel;
use crate::network;
use crate::sandbox::id::new_id;
use crate::sandbox::image::{image_err, import};
use crate::sandbox::{Error, ImageRef, Result, GUEST_CID, SANDBOX_CMDLINE};
use crate::vmm::{self, layout, BlockConfig, ConsoleSink, Vm, VmBuilder};

/// Device slots of a VM: one IRQ line each.
const MAX_DEVICES: usize = (layout::LAST_IRQ - layout::VIRTIO_MMIO_FIRST_IRQ + 1) as usize;

/// How long the agent may take to answer the check after the setup.
const SETUP_CHECK: Duration = Duration::from_secs(30);

/// The preloaded images' layers: one disk per distinct layer.
#[derive(Debug, Default)]
struct LayerDisks {
    paths: Vec<PathBuf>,
    serials: HashMap<Digest, String>,
}

/// The VM, booted, and what the agent needs to find its devices.
struct BuiltVm {
    vm: Vm,
    interfaces: Vec<Interface>,
    network: network::Running,
}

pub(super) fn start(mut b: PodBuilder) -> Result<Pod> {
    let t0 = Instant::now();
    b.validate()?;
    let kernel = match &b.kernel {
        Some(k) => k.clone(),
        None => kernel::default_kernel()?,
    };
    let agent = match &b.agent {
        Some(a) => a.clone(),
        None => guest::default_agent()?,
    };
    let initramfs = guest::agent_initramfs(&agent)?;
    check_kvm()?;

    let id = new_id();
    let images = Images::new(b.store.take(), std::mem::take(&mut b.pull), b.late_images);
    let (disks, preloaded) = preload(&b.preload, &images)?;
    let data_dir = match &b.data_dir {
        Some(d) => d.clone(),
        None if b.volumes.is_empty() => PathBuf::new(),
        None => crate::volume::default_data_dir()?,
    };
    let pod_shares = shares::plan(&b.volumes, &data_dir, b.late_images)?;
    check_device_budget(&b, disks.paths.len(), pod_shares.device.is_some())?;
    let image_ready = t0.elapsed();

    let hostname = b.hostname.clone().unwrap_or_else(|| id[..12].to_string());
    let dns = if b.dns.is_empty() {
        b.network.default_dns()
    } else {
        b.dns.clone()
    };
    let built = build_vm(&mut b, &kernel, &initramfs.path, &disks, &pod_shares, &id)?;
    let vm_built = t0.elapsed();
    let fs = pod_shares
        .device
        .as_ref()
        .and_then(|_| built.vm.fs_shares(FS_TAG));
    let vm = Arc::new(Mutex::new(built.vm));
    let ended: Ended = Arc::default();

    let deadline = t0 + b.boot_timeout;
    let conn = accept_agent(&vm, &ended, deadline, b.boot_timeout)?;
    let agent_connected = t0.elapsed();
    let hook_vm = Arc::downgrade(&vm);
    let hook_ended = ended.clone();
    let client = AgentClient::connect(
        conn,
        deadline.saturating_duration_since(Instant::now()),
        Some(Box::new(move || vm_gone(&hook_vm, &hook_ended))),
    )
    .map_err(|e| boot_failure(&vm, &ended, "during boot", e))?;

    let hosts = b
        .write_hosts
        .then(|| etc_hosts(&hostname, &built.interfaces, &b.hosts));
    client
        .setup(Setup {
            hostname: hostname.clone(),
            hosts: hosts.clone(),
            resolv_conf: (!dns.is_empty()).then(|| network::resolv_conf(&dns)),
            network: built.interfaces,
            shares: pod_shares.device.iter().map(|d| d.tag.clone()).collect(),
        })
        .map_err(|e| boot_failure(&vm, &ended, "during boot", e))?;

    let first_run = lock(&vm)
        .boot_times()
        .first_run
        .map(|t| t.saturating_duration_since(t0));
    let inner = PodInner {
        id,
        hostname,
        hosts,
        share_pid: b.share_pid,
        client,
        vm,
        ended,
        t0,
        host: HostTimes {
            image_ready,
            vm_built,
            first_run,
            agent_connected,
        },
        images,
        layer_serials: disks.serials,
        preloaded,
        fs,
        data_dir,
        pod_mounts: pod_shares.mounts,
        state: Mutex::default(),
        network: built.network,
    };
    if b.confirm_setup {
        check_setup(&inner)?;
    }
    Ok(Pod {
        inner: Arc::new(inner),
    })
}

/// Checks that the agent set the pod up: a stats round trip comes back
/// after the setup was handled, and a failed setup is reported before it.
fn check_setup(inner: &PodInner) -> Result<()> {
    let answer = inner.client.stats(u32::MAX, SETUP_CHECK);
    if let Some((kind, message)) = inner
        .client
        .agent_errors()
        .into_iter()
        .find(|(k, _)| matches!(k, ErrorKind::Network | ErrorKind::Rootfs))
    {
        return Err(Error::ProcessStart {
            kind,
            message,
            status: kind.exit_status(),
        });
    }
    answer
        .map(|_| ())
        .map_err(|e| boot_failure(&inner.vm, &inner.ended, "during the pod's setup", e))
}

/// The pod's `/etc/hosts`.
fn etc_hosts(hostname: &str, interfaces: &[Interface], extra: &[(String, IpAddr)]) -> String {
    let mut out = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n",
    );
    let own = interfaces
        .iter()
        .flat_map(|i| i.addresses.iter())
        .map(|a| a.ip.to_string())
        .next()
        .unwrap_or_else(|| "127.0.1.1".into());
    out.push_str(&format!("{own}\t{hostname}\n"));
    for (name, ip) in extra {
        out.push_str(&format!("{ip}\t{name}\n"));
    }
    out
}

/// Imports the preloaded images and lays their layers out as disks, one
/// per distinct layer.
fn preload(images: &[ImageRef], store: &Images) -> Result<(LayerDisks, Vec<(ImageRef, Image)>)> {
    let mut disks = LayerDisks::default();
    let mut preloaded = Vec::new();
    for r in images {
        let img = store.resolve(r, false)?;
        for l in &img.layers {
            if disks.serials.contains_key(&l.diff_id) {
                continue;
            }
            let path = l
                .erofs_path
                .clone()
                .ok_or_else(|| Error::NoLayerImage(l.diff_id.to_string()))?;
            let serial = format!("layer{}", disks.paths.len());
            disks.paths.push(path);
            disks.serials.insert(l.diff_id.clone(), serial);
        }
        preloaded.push((r.clone(), img));
    }
    Ok((disks, preloaded))
}

impl Images {
    fn new(store: Option<ImageStore>, pull: crate::sandbox::PullOptions, late: bool) -> Images {
        Images {
            given: store,
            preload: OnceLock::new(),
            late: OnceLock::new(),
            late_allowed: late,
            pull,
        }
    }

    /// The store for preloaded images (`late`: for images imported after
    /// boot, which keeps layer trees), opened on first use.
    fn store(&self, late: bool) -> Result<&ImageStore> {
        if let Some(s) = &self.given {
            return Ok(s);
        }
        let cell = if late { &self.late } else { &self.preload };
        if let Some(s) = cell.get() {
            return Ok(s);
        }
        let root = kernel::cache_dir()?.join("images");
        let store = ImageStore::builder(&root)
            .keep_trees(late)
            .open()
            .map_err(|e| Error::Image {
                image: root.display().to_string(),
                source: Box::new(e),
            })?;
        Ok(cell.get_or_init(|| store))
    }

    /// Imports (or pulls) `image`, through the store of late images when
    /// `late`.
    pub(crate) fn resolve(&self, image: &ImageRef, late: bool) -> Result<Image> {
        if late && !self.late_allowed {
            return Err(Error::Config(format!(
                "image {} was not preloaded and the pod takes no other images \
                 (PodBuilder::late_images is off): preload it",
                image.describe()
            )));
        }
        if let Some(p) = crate::sandbox::image::image_path(image) {
            if !p.exists() {
                return Err(Error::ImageNotFound {
                    image: image.describe(),
                    source: Box::new(hypercontainer_image::StoreError::Source(
                        hypercontainer_image::SourceError::Missing(p.display().to_string()),
                    )),
                });
            }
        }
        let store = self.store(late)?;
        import(image, store, &self.pull).map_err(|e| image_err(image, e))
    }
}

/// Refuses layers that, with the other devices, need more slots than a VM
/// has, before anything is built.
fn check_device_budget(b: &PodBuilder, layers: usize, fs: bool) -> Result<()> {
    // vsock and rng, the virtio-fs device, disks and NICs.
    let others = 2 + usize::from(fs) + b.disks.len() + usize::from(b.network.has_nic());
    let needed = layers + others;
    if needed > MAX_DEVICES {
        return Err(Error::TooManyDevices {
            needed,
            layers,
            others,
            max: MAX_DEVICES,
        });
    }
    Ok(())
}

/// Builds and boots the VM: layer disks, extra disks, the virtio-fs
/// device, NICs, vsock and rng.
fn build_vm(
    b: &mut PodBuilder,
    kernel: &Path,
    initramfs: &Path,
    disks: &LayerDisks,
    shares: &PodShares,
    id: &str,
) -> Result<BuiltVm> {
    let mut vb = VmBuilder::new()
        .kernel(kernel)
        .initramfs(initramfs)
        .cmdline(SANDBOX_CMDLINE)
        .memory_mib(b.memory_mib)
        .vcpus(b.vcpus)
        .share_kernel_pages(b.share_kernel_pages);
    if let Some(c) = b.console.take() {
        vb = vb.console(BoxedSink(c));
    }
    for (i, path) in disks.paths.iter().enumerate() {
        let serial = format!("layer{i}");
        vb = vb.block(BlockConfig::new(path).read_only(true).serial(&serial));
    }
    for d in &b.disks {
        vb = vb.block(
            BlockConfig::new(&d.path)
                .read_only(d.read_only)
                .serial(&d.serial),
        );
    }
    if let Some(device) = &shares.device {
        vb = vb.fs_multi(device.clone());
    }
    for a in &b.kernel_args {
        vb = vb.append_cmdline(a);
    }
    let attached = std::mem::take(&mut b.network).attach(network::sandbox_mac(id))?;
    if let Some(device) = attached.device {
        vb = vb.net(device);
    }
    let vm = vb.vsock(GUEST_CID).rng().build().map_err(vm_build_err)?;
    Ok(BuiltVm {
        vm,
        interfaces: attached.interface.into_iter().collect(),
        network: attached.running,
    })
}

/// A [`ConsoleSink`] in a box.
struct BoxedSink(Box<dyn ConsoleSink>);

impl ConsoleSink for BoxedSink {
    fn write(&mut self, data: &[u8]) {
        self.0.write(data)
    }
}

pub(crate) fn check_kvm() -> Result<()> {
    match host::detect_kvm() {
        KvmKind::Hardware => Ok(()),
        KvmKind::Missing => Err(Error::KvmUnusable {
            reason: "/dev/kvm does not exist: load kvm-intel or kvm-amd, or enable nested \
                     virtualization for this VM"
                .into(),
        }),
        KvmKind::Pvm => Err(Error::KvmUnusable {
            reason: "/dev/kvm is served by PVM (Pagetable-based Virtual Machine), which cannot \
                     boot the stock guest kernel; run on hardware-assisted KVM (Intel VT-x or \
                     AMD-V, bare metal or nested), e.g. inside the emulated KVM host with \
                     `cargo xtask run -- run IMAGE`"
                .into(),
        }),
    }
}

fn vm_build_err(e: vmm::Error) -> Error {
    match e {
        vmm::Error::KvmMissing | vmm::Error::KvmPermission(_) | vmm::Error::PvmHost { .. } => {
            Error::KvmUnusable {
                reason: error_chain(&e),
            }
        }
        e => Error::Vm(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etc_hosts_names_localhost_the_pod_and_the_extra_entries() {
        let h = etc_hosts("web", &[], &[("db".into(), "10.0.0.5".parse().unwrap())]);
        assert!(h.starts_with("127.0.0.1\tlocalhost\n"), "{h}");
        assert!(h.contains("127.0.1.1\tweb\n"), "{h}");
        assert!(h.ends_with("10.0.0.5\tdb\n"), "{h}");
    }
}
