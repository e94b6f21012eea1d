//! The steps of [`SandboxBuilder::start`]: boot files, image, the main
//! process, the VM, the agent, the process running.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use hypercontainer_protocol::{oci, Process as ProtoProcess, Rootfs, Start, Upper};

use super::builder::SandboxBuilder;
use super::id::new_id;
use super::image::{prepare_image, RootSource};
use super::shares::{self, Shares};
use super::signal::parse_signal;
use super::watch::{accept_agent, boot_failure, vm_gone, Ended};
use super::{Error, HostTimes, Result, Sandbox, GUEST_CID, SANDBOX_CMDLINE};
use crate::agent_client::{error_chain, AgentClient};
use crate::guest;
use crate::host::{self, KvmKind};
use crate::kernel;
use crate::network;
use crate::spec;
use crate::vmm::{self, layout, BlockConfig, ConsoleSink, Vm, VmBuilder};

/// Device slots of a sandbox VM: one IRQ line each.
const MAX_DEVICES: usize = (layout::LAST_IRQ - layout::VIRTIO_MMIO_FIRST_IRQ + 1) as usize;

/// What the agent is asked to run, worked out before the VM exists.
struct MainProcess {
    process: ProtoProcess,
    spec: oci::Spec,
    hostname: String,
    stop_signal: i32,
}

/// The VM, booted, and what the agent needs to find its devices.
struct BuiltVm {
    vm: Vm,
    layer_serials: Vec<String>,
    interfaces: Vec<hypercontainer_protocol::Interface>,
    network: network::Running,
}

pub(super) fn start(mut b: SandboxBuilder) -> Result<Sandbox> {
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
    let image = b.image.as_ref().ok_or(Error::NoImage)?;
    let (root, defaults) = prepare_image(image, b.store.as_ref(), &b.pull, &b.overrides)?;
    let (layers, root_dir) = match root {
        RootSource::Layers(l) => (l, None),
        RootSource::Directory(d) => (Vec::new(), Some(d)),
    };
    let shares = shares::plan(
        root_dir.as_deref(),
        b.rootfs_writable,
        &b.volumes,
        b.data_dir.as_deref(),
    )?;
    check_device_budget(&b, layers.len(), shares.device.is_some())?;
    let image_ready = t0.elapsed();

    let main = main_process(&b, &id, &defaults, &shares)?;
    let dns = if b.dns.is_empty() {
        b.network.default_dns()
    } else {
        b.dns.clone()
    };
    let built = build_vm(&mut b, &kernel, &initramfs.path, &layers, &shares, &id)?;
    let vm_built = t0.elapsed();
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

    let rootfs = shares.rootfs.clone().unwrap_or(Rootfs::Layers {
        layers: built.layer_serials,
        upper: Upper::Tmpfs,
    });
    let handle = client
        .start(
            Start {
                id: 0,
                rootfs,
                shares: shares.tags(),
                process: main.process.clone(),
                hostname: main.hostname,
                hosts: None,
                resolv_conf: (!dns.is_empty()).then(|| network::resolv_conf(&dns)),
                network: built.interfaces,
                spec: main.spec,
            },
            b.stdout,
            b.stderr,
        )
        .map_err(|e| boot_failure(&vm, &ended, "during boot", e))?;
    if !b.stdin {
        handle
            .close_stdin()
            .map_err(|e| boot_failure(&vm, &ended, "during boot", e))?;
    }
    handle
        .wait_started(None)
        .map_err(|e| boot_failure(&vm, &ended, "while starting the process", e))?;

    let first_run = super::watch::lock(&vm)
        .boot_times()
        .first_run
        .map(|t| t.saturating_duration_since(t0));
    Ok(Sandbox {
        id,
        main: handle,
        client,
        vm,
        ended,
        stop_signal: main.stop_signal,
        template: main.process,
        t0,
        host: HostTimes {
            image_ready,
            vm_built,
            first_run,
            agent_connected,
        },
        network: built.network,
    })
}

/// The main process and the container's spec, from the image's defaults
/// and the builder's settings; volumes become bind mounts.
fn main_process(
    b: &SandboxBuilder,
    id: &str,
    defaults: &hypercontainer_image::ProcessDefaults,
    shares: &Shares,
) -> Result<MainProcess> {
    let user = match &defaults.user.group {
        Some(g) => format!("{}:{g}", defaults.user.user),
        None => defaults.user.user.clone(),
    };
    let hostname = b.hostname.clone().unwrap_or_else(|| id[..12].to_string());
    let mut spec = spec::container_spec(&b.container, &user).map_err(Error::Spec)?;
    if !shares.mounts.is_empty() {
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        mounts.extend(shares.mounts.iter().cloned());
        spec.set_mounts(Some(mounts));
    }
    let process = ProtoProcess {
        argv: defaults.args.clone(),
        env: spec::container_env(&defaults.env, &hostname, b.tty.is_some()),
        cwd: defaults.working_dir.clone(),
        user,
        terminal: b.tty.is_some(),
        window: b.tty,
        ..ProtoProcess::default()
    };
    let stop_signal = defaults
        .stop_signal
        .as_deref()
        .and_then(parse_signal)
        .unwrap_or(libc::SIGTERM);
    Ok(MainProcess {
        process,
        spec,
        hostname,
        stop_signal,
    })
}

/// Refuses an image whose layers, with the other devices, need more slots
/// than a VM has, before anything is built.
fn check_device_budget(b: &SandboxBuilder, layers: usize, fs: bool) -> Result<()> {
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
    b: &mut SandboxBuilder,
    kernel: &std::path::Path,
    initramfs: &std::path::Path,
    layers: &[std::path::PathBuf],
    shares: &Shares,
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
    let mut layer_serials = Vec::new();
    for (i, path) in layers.iter().enumerate() {
        let serial = format!("layer{i}");
        vb = vb.block(BlockConfig::new(path).read_only(true).serial(&serial));
        layer_serials.push(serial);
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
        layer_serials,
        interfaces: attached.interface.into_iter().collect(),
        network: attached.running,
    })
}

/// A [`ConsoleSink`] in a box.
pub(super) struct BoxedSink(Box<dyn ConsoleSink>);

impl ConsoleSink for BoxedSink {
    fn write(&mut self, data: &[u8]) {
        self.0.write(data)
    }
}

pub(super) fn check_kvm() -> Result<()> {
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

pub(super) fn vm_build_err(e: vmm::Error) -> Error {
    match e {
        vmm::Error::KvmMissing | vmm::Error::KvmPermission(_) | vmm::Error::PvmHost { .. } => {
            Error::KvmUnusable {
                reason: error_chain(&e),
            }
        }
        e => Error::Vm(e),
    }
}
