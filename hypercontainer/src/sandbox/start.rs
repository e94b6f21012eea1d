//! [`SandboxBuilder::start`]: a pod with the sandbox's image preloaded,
//! and one container in it whose end ends the VM.

use super::builder::SandboxBuilder;
use super::{Error, Result, Sandbox};
use crate::container::{self, ContainerSpec};
use crate::pod::PodBuilder;
use crate::ImageRef;

pub(super) fn start(b: SandboxBuilder) -> Result<Sandbox> {
    b.validate()?;
    let image = b.image.clone().ok_or(Error::NoImage)?;
    let dir_image = matches!(image, ImageRef::Rootfs(_));
    let pod = PodBuilder {
        vcpus: b.vcpus,
        memory_mib: b.memory_mib,
        share_kernel_pages: b.share_kernel_pages,
        hostname: b.hostname,
        network: b.network,
        dns: b.dns,
        hosts: Vec::new(),
        // The image's own /etc/hosts, as before pods.
        write_hosts: false,
        confirm_setup: false,
        share_pid: false,
        volumes: b.volumes,
        data_dir: b.data_dir,
        preload: if dir_image {
            Vec::new()
        } else {
            vec![image.clone()]
        },
        // The only other directory is a `dir:` root.
        late_images: dir_image,
        store: b.store,
        pull: b.pull,
        disks: b.disks,
        kernel: b.kernel,
        agent: b.agent,
        console: b.console,
        kernel_args: b.kernel_args,
        boot_timeout: b.boot_timeout,
    }
    .start()?;
    let spec = ContainerSpec {
        image,
        name: None,
        overrides: b.overrides,
        stdin: b.stdin,
        tty: b.tty,
        stdout: b.stdout,
        stderr: b.stderr,
        options: b.container,
        volumes: Vec::new(),
        rootfs_writable: b.rootfs_writable,
    };
    let main = container::create(&pod.inner, spec, true)?;
    main.start()?;
    let handle = main.main()?;
    Ok(Sandbox { handle, main, pod })
}
