//! The agent as PID 1 of a real VM: QEMU (TCG, `microvm` machine) boots the
//! guest kernel with an initramfs holding only the static agent as `/init`;
//! the image's layers are EROFS disks on virtio-blk, found by their serials;
//! the protocol runs over a virtio console (`hypercontainer.agent_console=`)
//! because QEMU offers vsock only through a host vhost backend.
//!
//! Ignored by default. Run with `cargo test -p hypercontainer-guest --test
//! qemu_vm -- --ignored` and:
//! - `HYPERCONTAINER_AGENT`: the static agent (`guest` profile,
//!   `-C target-feature=+crt-static`);
//! - `HYPERCONTAINER_KERNEL`: the guest kernel as a PVH `vmlinux`;
//! - `qemu-system-x86_64`, `mkfs.erofs`, `mkfs.ext4`, `debugfs`, `cpio`,
//!   `umoci`, and root (for the image build).

mod common;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use hypercontainer_protocol::{BootStage, ErrorKind, Message, Process, Rootfs, Upper};

fn env_path(var: &str) -> PathBuf {
    let p = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("set {var} (see the module docs)"));
    assert!(p.exists(), "{var}={} does not exist", p.display());
    p
}

struct Disk {
    serial: &'static str,
    file: PathBuf,
    read_only: bool,
}

/// Builds the initramfs and the layer disks in `dir`.
fn prepare(dir: &Path) -> (PathBuf, Vec<Disk>) {
    let initrd = dir.join("initrd");
    std::fs::create_dir_all(&initrd).unwrap();
    std::fs::copy(env_path("HYPERCONTAINER_AGENT"), initrd.join("init")).unwrap();
    let cpio = dir.join("initrd.cpio");
    let out = std::fs::File::create(&cpio).unwrap();
    let status = Command::new("sh")
        .arg("-c")
        .arg("find . | cpio -o -H newc --quiet")
        .current_dir(&initrd)
        .stdout(out)
        .status()
        .unwrap();
    assert!(status.success());

    let layer0 = dir.join("layer0.erofs");
    run(Command::new("mkfs.erofs")
        .arg("--quiet")
        .arg(&layer0)
        .arg(image_rootfs()));
    let l1 = dir.join("layer1");
    std::fs::create_dir_all(l1.join("etc")).unwrap();
    std::fs::write(l1.join("etc/motd"), "from layer1\n").unwrap();
    std::fs::write(l1.join("layer1-file"), "").unwrap();
    let layer1 = dir.join("layer1.erofs");
    run(Command::new("mkfs.erofs")
        .arg("--quiet")
        .arg(&layer1)
        .arg(&l1));
    let disks = vec![
        Disk {
            serial: "layer0",
            file: layer0,
            read_only: true,
        },
        Disk {
            serial: "layer1",
            file: layer1,
            read_only: true,
        },
    ];
    (cpio, disks)
}

/// Boots the VM and connects to its agent.
fn boot(dir: &Path, initrd: &Path, disks: &[Disk], rootfs: Rootfs) -> (Session, Instant) {
    let sock = dir.join("agent.sock");
    let _ = std::fs::remove_file(&sock);
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-M",
        "microvm,acpi=off",
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-m",
        "256",
        "-smp",
        "1",
    ])
    .args([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ])
    .arg("-kernel")
    .arg(env_path("HYPERCONTAINER_KERNEL"))
    .arg("-initrd")
    .arg(initrd)
    .args([
        "-append",
        "console=ttyS0 reboot=k panic=-1 quiet hypercontainer.agent_console=hvc0",
    ])
    .arg("-serial")
    .arg(format!("file:{}", dir.join("console.log").display()))
    .args(["-device", "virtio-serial-device"])
    .arg("-chardev")
    .arg(format!(
        "socket,id=agent,path={},server=on,wait=off",
        sock.display()
    ))
    .args(["-device", "virtconsole,chardev=agent"]);
    for (i, d) in disks.iter().enumerate() {
        cmd.arg("-drive").arg(format!(
            "if=none,id=d{i},file={},format=raw,readonly={}",
            d.file.display(),
            if d.read_only { "on" } else { "off" }
        ));
        cmd.arg("-device")
            .arg(format!("virtio-blk-device,drive=d{i},serial={}", d.serial));
    }
    let t0 = Instant::now();
    let qemu = cmd
        .stdout(Stdio::null())
        .spawn()
        .expect("spawning qemu-system-x86_64");
    let conn = loop {
        match UnixStream::connect(&sock) {
            Ok(c) => break c,
            Err(_) if t0.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("connecting to the agent console: {e}"),
        }
    };
    (Session::over(conn, qemu, rootfs, None), t0)
}

fn console(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("console.log")).unwrap_or_default()
}

#[test]
#[ignore = "needs QEMU, a guest kernel and a static agent; see the module docs"]
fn container_runs_as_pid1_of_a_vm_on_layer_disks() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (initrd, disks) = prepare(dir);
    let rootfs = Rootfs::Layers {
        layers: vec!["layer0".into(), "layer1".into()],
        upper: Upper::Tmpfs,
    };
    let (mut s, t0) = boot(dir, &initrd, &disks, rootfs);
    s.start_with(|st| {
        st.hostname = "vm1".into();
        st.process = sh(
            "cat /etc/motd; ls /layer1-file; echo written > /new; cat /new; \
             hostname; grep -c ' / overlay ' /proc/mounts; id -u; read x; echo \"got $x\"; exit 5",
        );
    });
    s.until("main started", |m| {
        matches!(m, Message::Started { id: MAIN, .. })
    });
    let host_exec = t0.elapsed();
    s.until_output(MAIN, "written\n");
    s.send(&Message::Exec {
        container: 1,
        id: 2,
        process: Box::new(Process {
            user: "app".into(),
            ..sh("id -un; cat /new")
        }),
    });
    s.until("exec exit", |m| matches!(m, Message::Exited { id: 2, .. }));
    s.stdin(MAIN, b"input\n");
    let o = s.finish();
    let log = console(dir);
    assert_eq!(
        o.stdout(MAIN),
        "from layer1\n/layer1-file\nwritten\nvm1\n1\n0\ngot input\n",
        "console:\n{log}"
    );
    assert_eq!(o.status(MAIN), 5);
    assert_eq!(o.stdout(2), "app\nwritten\n");
    assert_eq!(o.status(2), 0);
    assert!(o.agent_ok, "QEMU ends cleanly on the agent's reset:\n{log}");

    let stage = |want: BootStage| {
        o.msgs.iter().find_map(|m| match m {
            Message::BootStage { stage, boottime_ns } if *stage == want => Some(*boottime_ns),
            _ => None,
        })
    };
    let (a, r, e) = (
        stage(BootStage::AgentStart).unwrap(),
        stage(BootStage::RootfsReady).unwrap(),
        stage(BootStage::ProcessExec).unwrap(),
    );
    assert!(a <= r && r <= e);
    eprintln!(
        "VM (TCG): kernel start to agent {} ms, to rootfs ready {} ms, to exec {} ms; \
         agent start to exec {} ms; QEMU spawn to Started seen by the host {} ms",
        a / 1_000_000,
        r / 1_000_000,
        e / 1_000_000,
        (e - a) / 1_000_000,
        host_exec.as_millis()
    );
}

#[test]
#[ignore = "needs QEMU, a guest kernel and a static agent; see the module docs"]
fn writable_upper_disk_keeps_the_containers_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (initrd, mut disks) = prepare(dir.path());
    let upper = dir.path().join("upper.ext4");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&upper)
        .arg("32M"));
    disks.push(Disk {
        serial: "upper",
        file: upper.clone(),
        read_only: false,
    });
    let rootfs = Rootfs::Layers {
        layers: vec!["layer0".into()],
        upper: Upper::Disk {
            serial: "upper".into(),
        },
    };
    let (mut s, _) = boot(dir.path(), &initrd, &disks, rootfs);
    s.start(sh("echo kept > /data/kept; rm /etc/group; ls /etc"));
    let o = s.finish();
    assert_eq!(o.status(MAIN), 0, "console:\n{}", console(dir.path()));
    assert!(!o.stdout(MAIN).contains("group"));
    // The write and the whiteout are on the disk after the VM is gone.
    let cat = Command::new("debugfs")
        .args(["-R", "cat /upper/data/kept"])
        .arg(&upper)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&cat.stdout), "kept\n");
    let stat = Command::new("debugfs")
        .args(["-R", "stat /upper/etc/group"])
        .arg(&upper)
        .output()
        .unwrap();
    let stat = String::from_utf8_lossy(&stat.stdout);
    assert!(stat.contains("Type: character special"), "{stat}");
}

#[test]
#[ignore = "needs QEMU, a guest kernel and a static agent; see the module docs"]
fn missing_layer_disk_is_a_rootfs_error_and_the_vm_ends() {
    let dir = tempfile::tempdir().unwrap();
    let (initrd, disks) = prepare(dir.path());
    let rootfs = Rootfs::Layers {
        layers: vec!["layer0".into(), "no-such-disk".into()],
        upper: Upper::Tmpfs,
    };
    let (mut s, _) = boot(dir.path(), &initrd, &disks, rootfs);
    s.start(process(&["true"]));
    let o = s.finish();
    let (kind, msg) = o.error(MAIN).unwrap();
    assert_eq!(kind, ErrorKind::Rootfs);
    assert!(msg.contains("no-such-disk"), "{msg}");
    assert_eq!(o.status(MAIN), 125);
    assert!(o.agent_ok);
}
