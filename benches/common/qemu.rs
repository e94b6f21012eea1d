//! The peer every benchmark compares against: QEMU's `microvm` machine
//! with KVM, one vCPU, no firmware option ROMs, no ACPI (QEMU then lists
//! its virtio-mmio devices on the kernel command line, as this SDK's VMM
//! does), and a kernel plus initramfs booted directly.

use std::path::Path;
use std::process::Command;

/// A QEMU command booting `kernel` and `initramfs` with `cmdline` in
/// `memory_mib` MiB; the caller adds the serial port and devices.
pub fn microvm(
    qemu: &Path,
    memory_mib: u64,
    kernel: &Path,
    initramfs: &Path,
    cmdline: &str,
) -> Command {
    let mut cmd = Command::new(qemu);
    cmd.args([
        "-M",
        "microvm,x-option-roms=off,isa-serial=on,rtc=off,acpi=off",
        "-enable-kvm",
        "-cpu",
        "host",
        "-m",
        &memory_mib.to_string(),
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ])
    .arg("-kernel")
    .arg(kernel)
    .arg("-initrd")
    .arg(initramfs)
    .arg("-append")
    .arg(cmdline);
    cmd
}
