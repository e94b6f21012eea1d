//! Whole-VM boot tests: the guest kernel boots to a busybox /init, whose
//! line arrives through the console sink, and the VM ends the way the guest
//! asked. They need hardware KVM (directly or nested) and are run by
//! `cargo xtask test`, which provides:
//!
//! - `HYPERCONTAINER_KERNEL`: the guest's PVH `vmlinux`;
//! - `HYPERCONTAINER_BZIMAGE`: the same kernel as a `bzImage`;
//! - `HYPERCONTAINER_BUSYBOX`: a static busybox.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use hypercontainer::initramfs::{CpioWriter, Metadata};
use hypercontainer::vmm::{Error, ExitReason, VmBuilder};

const MARKER: &str = "HC-INIT-OK";

fn env_path(name: &str) -> PathBuf {
    let p = std::env::var_os(name)
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{name} must name a file (cargo xtask test sets it)"));
    assert!(p.is_file(), "{name}={} does not exist", p.display());
    p
}

/// An initramfs with busybox and the given /init script.
fn initramfs(init: &str) -> Vec<u8> {
    let busybox = env_path("HYPERCONTAINER_BUSYBOX");
    let mut cpio = CpioWriter::new(Vec::new());
    cpio.char_device("/dev/console", Metadata::new(0o600), 5, 1)
        .unwrap()
        .dir("/proc", Metadata::new(0o755))
        .unwrap()
        .file_from_path("/bin/busybox", Metadata::new(0o755), &busybox)
        .unwrap()
        .symlink("/bin/sh", "busybox", Metadata::new(0o777))
        .unwrap()
        .file("/init", Metadata::new(0o755), init.as_bytes())
        .unwrap();
    cpio.finish().unwrap()
}

fn good_init() -> Vec<u8> {
    initramfs(&format!(
        "#!/bin/sh\n\
         echo \"{MARKER} nproc=$(/bin/busybox nproc)\"\n\
         /bin/busybox reboot -f\n"
    ))
}

struct Run {
    outcome: hypercontainer::vmm::Result<ExitReason>,
    console: String,
}

fn boot(kernel: PathBuf, vcpus: u32, initramfs: Vec<u8>) -> Run {
    boot_with(VmBuilder::new().initramfs_bytes(initramfs), kernel, vcpus)
}

/// Like [`boot`], with the initramfs read from a file.
fn boot_from_file(kernel: PathBuf, vcpus: u32, initramfs: Vec<u8>) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("initramfs.cpio");
    std::fs::write(&path, initramfs).unwrap();
    boot_with(VmBuilder::new().initramfs(path), kernel, vcpus)
}

fn boot_with(builder: VmBuilder, kernel: PathBuf, vcpus: u32) -> Run {
    let (tx, rx) = mpsc::channel();
    let mut vm = builder
        .kernel(kernel)
        .vcpus(vcpus)
        .memory_mib(128)
        .console_channel(tx)
        .build()
        .expect("build the VM");
    let outcome = match vm.wait_timeout(Duration::from_secs(180)) {
        Some(o) => o,
        None => {
            vm.stop();
            panic!(
                "the guest did not finish in 180 s; console tail:\n{}",
                vm.console_tail().join("\n")
            );
        }
    };
    drop(vm);
    let console: Vec<u8> = rx.try_iter().flatten().collect();
    Run {
        outcome,
        console: String::from_utf8_lossy(&console).into_owned(),
    }
}

fn expect_init_line(run: Run, vcpus: u32) {
    let line = format!("{MARKER} nproc={vcpus}");
    assert!(
        run.console.contains(&line),
        "no '{line}' on the console:\n{}",
        run.console
    );
    match run.outcome {
        Ok(ExitReason::Reset) => {}
        other => panic!("expected a reset, got {other:?}\nconsole:\n{}", run.console),
    }
}

#[test]
#[ignore = "whole-VM test: run by cargo xtask test"]
fn vmlinux_pvh_one_vcpu_runs_init_and_resets() {
    let run = boot(env_path("HYPERCONTAINER_KERNEL"), 1, good_init());
    expect_init_line(run, 1);
}

#[test]
#[ignore = "whole-VM test: run by cargo xtask test"]
fn vmlinux_pvh_two_vcpus_are_both_seen() {
    let run = boot_from_file(env_path("HYPERCONTAINER_KERNEL"), 2, good_init());
    expect_init_line(run, 2);
}

#[test]
#[ignore = "whole-VM test: run by cargo xtask test"]
fn bzimage_one_vcpu_runs_init_and_resets() {
    let run = boot_from_file(env_path("HYPERCONTAINER_BZIMAGE"), 1, good_init());
    expect_init_line(run, 1);
}

#[test]
#[ignore = "whole-VM test: run by cargo xtask test"]
fn bzimage_two_vcpus_are_both_seen() {
    let run = boot(env_path("HYPERCONTAINER_BZIMAGE"), 2, good_init());
    expect_init_line(run, 2);
}

#[test]
#[ignore = "whole-VM test: run by cargo xtask test"]
fn init_exiting_panics_the_kernel_and_ends_the_vm_with_an_error() {
    let bad = initramfs("#!/bin/sh\necho about to exit\nexit 3\n");
    let run = boot(env_path("HYPERCONTAINER_KERNEL"), 1, bad);
    match run.outcome {
        Err(Error::GuestPanic { console }) => {
            assert!(
                console
                    .iter()
                    .any(|l| l.contains("Kernel panic - not syncing")),
                "{console:?}"
            );
        }
        other => panic!("expected a guest panic, got {other:?}\n{}", run.console),
    }
    // The test process lives on and can boot another VM.
    let run = boot(env_path("HYPERCONTAINER_KERNEL"), 1, good_init());
    expect_init_line(run, 1);
}
