//! Shared by the sandbox tests: the busybox test image, made with umoci.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Environment variable naming a prebuilt test image (an oci-archive tar
/// made by the same recipe), for hosts without umoci.
pub const TEST_IMAGE_ENV: &str = "HYPERCONTAINER_TEST_IMAGE";
/// The tag of the image in the archive.
pub const TAG: &str = "test";

pub fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The busybox test image as an oci-archive: `$HYPERCONTAINER_TEST_IMAGE`,
/// else built once with umoci into cargo's test scratch directory.
///
/// Contents: a static busybox at /bin/busybox with its applet links,
/// users root and app (1000:1000, home /home/app), a /data directory.
/// Config: Env PATH and GREETING=from-image, WorkingDir /data, User app,
/// Cmd `sh -c "echo default-cmd"`, StopSignal SIGUSR1.
pub fn image_archive() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| {
        if let Some(p) = std::env::var_os(TEST_IMAGE_ENV).filter(|v| !v.is_empty()) {
            return PathBuf::from(p);
        }
        let scratch = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let done = scratch.join("sandbox-test-image-v1");
        let archive = done.join("busybox.oci.tar");
        if archive.is_file() {
            return archive;
        }
        let dir = tempfile::Builder::new()
            .prefix("sandbox-test-image.")
            .tempdir_in(scratch)
            .unwrap();
        build_image(dir.path());
        if std::fs::rename(dir.path(), &done).is_ok() {
            let _ = dir.keep();
        }
        archive
    })
}

/// `oci-archive:<path>:test`.
pub fn image_ref() -> String {
    format!("oci-archive:{}:{TAG}", image_archive().display())
}

fn build_image(dir: &Path) {
    let layout = dir.join("layout");
    let image = format!("{}:{TAG}", layout.display());
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &image]));
    let work = dir.join("work");
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&work));
    let root = work.join("rootfs");
    for d in ["bin", "etc", "home/app", "data", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    std::os::unix::fs::chown(root.join("home/app"), Some(1000), Some(1000)).unwrap();
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\napp:x:1000:\n").unwrap();
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&work));
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.env",
        "PATH=/bin",
        "--config.env",
        "GREETING=from-image",
        "--config.workingdir",
        "/data",
        "--config.user",
        "app",
        "--config.cmd",
        "sh",
        "--config.cmd",
        "-c",
        "--config.cmd",
        "echo default-cmd",
        "--config.stopsignal",
        "SIGUSR1",
    ]));
    run(Command::new("umoci").args(["gc", "--layout"]).arg(&layout));
    run(Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .args(["-cf"])
        .arg(dir.join("busybox.oci.tar"))
        .arg("."));
}
