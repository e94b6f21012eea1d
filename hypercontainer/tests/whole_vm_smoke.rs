//! Whole-VM smoke test: boots the project's guest kernel with a tiny
//! busybox initramfs (packed with `hypercontainer::initramfs`) under QEMU
//! microvm, and checks the line its init prints. QEMU stays here as the
//! reference peer for boot benchmarks.
//!
//! Needs hardware KVM: `cargo xtask test` runs it directly there, or inside
//! the emulated KVM host elsewhere. Inputs come from the environment the
//! test host sets (`HYPERCONTAINER_KERNEL`, `HYPERCONTAINER_BZIMAGE`,
//! `HYPERCONTAINER_BUSYBOX`, `HYPERCONTAINER_QEMU`), with the SDK's default
//! kernel, `/bin/busybox` and `qemu-system-x86_64` as fallbacks.

use hypercontainer::initramfs::{CpioWriter, Metadata};
use std::io::{BufRead, BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn vmlinux() -> PathBuf {
    env_path("HYPERCONTAINER_KERNEL").unwrap_or_else(|| {
        hypercontainer::kernel::default_kernel().unwrap_or_else(|e| panic!("guest kernel: {e}"))
    })
}

fn bzimage() -> PathBuf {
    env_path("HYPERCONTAINER_BZIMAGE").unwrap_or_else(|| {
        hypercontainer::kernel::default_kernel_dir()
            .unwrap_or_else(|e| panic!("guest kernel: {e}"))
            .join("bzImage")
    })
}

fn busybox() -> PathBuf {
    env_path("HYPERCONTAINER_BUSYBOX").unwrap_or_else(|| PathBuf::from("/bin/busybox"))
}

fn qemu() -> PathBuf {
    env_path("HYPERCONTAINER_QEMU").unwrap_or_else(|| PathBuf::from("qemu-system-x86_64"))
}

/// Packs `/dev/console`, busybox and an `/init` that prints `marker`.
fn pack_initramfs(path: &Path, marker: &str) {
    let file = std::fs::File::create(path).unwrap();
    let mut cpio = CpioWriter::new(BufWriter::new(file));
    let init = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox echo \"{marker} $(/bin/busybox uname -r)\"\n\
         /bin/busybox reboot -f\n"
    );
    cpio.dir("/proc", Metadata::new(0o755))
        .unwrap()
        .char_device("/dev/console", Metadata::new(0o600), 5, 1)
        .unwrap()
        .file_from_path("/bin/busybox", Metadata::new(0o755), busybox())
        .unwrap()
        .file("/init", Metadata::new(0o755), init.as_bytes())
        .unwrap();
    cpio.finish().unwrap();
}

/// Boots `kernel` under QEMU microvm and returns (time to the marker line,
/// time to QEMU's exit).
fn boot(kernel: &Path) -> (Duration, Duration) {
    assert!(kernel.is_file(), "no guest kernel at {}", kernel.display());
    let dir = tempfile::tempdir().unwrap();
    let nonce = format!(
        "{:x}-{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let marker = format!("HC-SMOKE-OK {nonce}");
    let initrd = dir.path().join("initrd.cpio");
    pack_initramfs(&initrd, &marker);

    let start = Instant::now();
    let mut child = Command::new(qemu())
        .args(["-M", "microvm,x-option-roms=off,isa-serial=on,rtc=off"])
        .args(["-enable-kvm", "-cpu", "host", "-m", "128"])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args([
            "-append",
            "console=ttyS0 reboot=t panic=-1 quiet",
            "-no-reboot",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting qemu-system-x86_64");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
            let line = String::from_utf8_lossy(&line).trim_end().to_string();
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    let mut seen = None;
    let mut console = Vec::new();
    loop {
        let left = BOOT_TIMEOUT.saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok((at, line)) => {
                println!("guest| {line}");
                if seen.is_none() && line.contains(&marker) {
                    seen = Some(at - start);
                }
                console.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "guest did not finish within {BOOT_TIMEOUT:?}; console:\n{}",
                    console.join("\n")
                );
            }
        }
    }
    reader.join().unwrap();
    let status = child.wait().unwrap();
    let exited = start.elapsed();
    let to_marker = seen.unwrap_or_else(|| {
        panic!(
            "the init's line never arrived (QEMU {status}); console:\n{}",
            console.join("\n")
        )
    });
    assert!(status.success(), "QEMU exited with {status}");
    println!(
        "{}: init line after {} ms, QEMU exited after {} ms",
        kernel.display(),
        to_marker.as_millis(),
        exited.as_millis()
    );
    (to_marker, exited)
}

#[test]
#[ignore = "whole-VM test: run by cargo xtask test"]
fn pvh_vmlinux_boots_to_init() {
    boot(&vmlinux());
}

#[test]
#[ignore = "whole-VM test: run by cargo xtask test"]
fn bzimage_boots_to_init() {
    boot(&bzimage());
}
