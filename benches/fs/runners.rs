//! Running one boot of a setup: this VMM (virtio-fs or the EROFS disk),
//! or QEMU microvm with virtiofsd or virtio-9p.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hypercontainer::vmm::{BlockConfig, VmBuilder};
use hypercontainer_virtio::fs::ShareConfig;

use crate::guest::{cmdline, text, workload_times, ClockSink, LineClock};
use crate::{qemu, Inputs, Setup, MEMORY_MIB, TAG, TIMEOUT};

/// Boots this VMM on the share (or the EROFS disk) and runs the workloads.
pub fn vmm_run(i: &Inputs, setup: Setup, run: u32) -> Vec<(String, Duration)> {
    let (tx, rx) = mpsc::channel();
    let mut b = VmBuilder::new()
        .kernel(&i.kernel)
        .initramfs_bytes(i.initramfs.clone())
        .memory_mib(MEMORY_MIB)
        .cmdline(format!("{} reboot=k", cmdline(setup, run)))
        .console(ClockSink {
            clock: LineClock::default(),
            done: tx,
        });
    b = match setup {
        Setup::Erofs => b.block(BlockConfig::new(i.erofs.as_ref().unwrap()).read_only(true)),
        _ => b.fs(ShareConfig::new(i.share(), TAG)),
    };
    let mut vm = b.build().expect("build");
    let outcome = vm.wait_timeout(TIMEOUT);
    drop(vm);
    let lines = rx.recv().expect("the console sink hands over its lines");
    assert!(
        matches!(outcome, Some(Ok(_))),
        "the guest did not end cleanly: {outcome:?}; console:\n{}",
        text(&lines)
    );
    workload_times(setup, &lines)
}

/// Kills and reaps a child when dropped.
pub struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts virtiofsd on the share; returns it once its socket exists.
pub fn start_virtiofsd(i: &Inputs, virtiofsd: &Path, socket: &Path) -> Reap {
    let _ = std::fs::remove_file(socket);
    let child = Command::new(virtiofsd)
        .arg(format!("--socket-path={}", socket.display()))
        .arg("-o")
        .arg(format!("source={}", i.share().display()))
        .args(["-o", "cache=auto", "-o", "sandbox=chroot", "-o", "xattr"])
        .args(["-o", "log_level=err"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start virtiofsd");
    let mut child = Reap(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("virtiofsd exited at start: {status}");
        }
        assert!(Instant::now() < deadline, "virtiofsd made no socket");
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

/// Boots QEMU microvm with the virtiofsd or 9p peer on the share and runs
/// the workloads.
pub fn qemu_run(i: &Inputs, qemu: &Path, setup: Setup, run: u32) -> Vec<(String, Duration)> {
    let mut cmd = qemu::microvm(
        qemu,
        MEMORY_MIB,
        &i.kernel,
        &i.initramfs_path,
        &format!("{} reboot=t", cmdline(setup, run)),
    );
    // Modern (virtio 1.0) virtio-mmio, as this VMM's devices are:
    // libvhost-user refuses legacy devices, and both peers then speak the
    // same transport revision as ours.
    cmd.args([
        "-serial",
        "stdio",
        "-global",
        "virtio-mmio.force-legacy=false",
    ]);
    let mut _daemon = None;
    match setup {
        Setup::Virtiofsd => {
            let socket = i.dir.path().join("virtiofsd.sock");
            _daemon = Some(start_virtiofsd(i, i.virtiofsd.as_ref().unwrap(), &socket));
            cmd.arg("-object")
                .arg(format!(
                    "memory-backend-memfd,id=hcmem,size={MEMORY_MIB}M,share=on"
                ))
                .args(["-machine", "memory-backend=hcmem"])
                .arg("-chardev")
                .arg(format!("socket,id=hcfs,path={}", socket.display()))
                .arg("-device")
                .arg(format!(
                    "vhost-user-fs-device,chardev=hcfs,tag={TAG},queue-size=1024"
                ));
        }
        Setup::NineP => {
            cmd.arg("-fsdev")
                .arg(format!(
                    "local,id=hcfs,path={},security_model=passthrough",
                    i.share().display()
                ))
                .arg("-device")
                .arg(format!("virtio-9p-device,fsdev=hcfs,mount_tag={TAG}"));
        }
        Setup::Ours | Setup::Erofs => unreachable!("not a QEMU setup"),
    }
    let mut child = Reap(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run QEMU"),
    );
    let mut out = child.0.stdout.take().unwrap();
    // The console is read on a thread of its own, so that a guest stuck
    // on its device ends the run after TIMEOUT instead of hanging it.
    let (tx, rx) = mpsc::channel::<(Vec<u8>, Instant)>();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match out.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send((buf[..n].to_vec(), Instant::now())).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut clock = LineClock::default();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((bytes, at)) => clock.feed_at(&bytes, at),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                drop(child);
                let _ = reader.join();
                panic!(
                    "{}: the guest did not finish in {TIMEOUT:?}; console:\n{}",
                    setup.name(),
                    text(&clock.lines)
                );
            }
        }
    }
    let _ = reader.join();
    let _ = child.0.wait();
    workload_times(setup, &clock.lines)
}
