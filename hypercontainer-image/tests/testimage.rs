//! The busybox test image recipe (feature `test-utils`): the layout, its
//! oci-archive and its unpacked rootfs hold what the module docs promise.
//!
//! Needs root, `umoci`, GNU `tar` and a static `/bin/busybox`.
#![cfg(feature = "test-utils")]

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use hypercontainer_image::process::process_defaults;
use hypercontainer_image::testimage::{self, DEFAULT_BUSYBOX, TAG};
use hypercontainer_image::{ImageSource, Limits, Platform, ProcessOverrides, UserSpec};

#[test]
fn layout_archive_and_rootfs_hold_the_documented_image() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("build");
    let image = testimage::build_busybox_layout(&work, Path::new(DEFAULT_BUSYBOX)).unwrap();
    assert_eq!(image.layout, work.join("layout"));
    assert_eq!(image.tag, TAG);
    assert!(!work.join("scratch").exists(), "scratch bundle left behind");

    let archive = tmp.path().join("busybox.oci.tar");
    image.write_archive(&archive).unwrap();
    let names: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "no temporary file left: {names:?}");

    let src = ImageSource::OciArchive { path: archive };
    let img = src
        .open(Some(TAG), &Platform::default(), &Limits::default())
        .unwrap();
    assert_eq!(img.layers().len(), 1);
    let d = process_defaults(img.config(), &ProcessOverrides::new()).unwrap();
    assert_eq!(d.args, ["sh", "-c", "echo default-cmd"]);
    assert_eq!(d.env, ["PATH=/bin", "GREETING=from-image"]);
    assert_eq!(d.working_dir, "/data");
    assert_eq!(d.user, UserSpec::parse("app"));
    assert_eq!(d.stop_signal.as_deref(), Some("SIGUSR1"));

    let root = image.unpack(&tmp.path().join("bundle")).unwrap();
    assert_eq!(root, tmp.path().join("bundle/rootfs"));
    assert!(root.join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    for d in ["etc", "data/sub", "tmp"] {
        assert!(root.join(d).is_dir(), "{d}");
    }
    let home = std::fs::metadata(root.join("home/app")).unwrap();
    assert_eq!((home.uid(), home.gid()), (1000, 1000));
    assert_eq!(
        std::fs::read_to_string(root.join("etc/passwd")).unwrap(),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("etc/group")).unwrap(),
        "root:x:0:\nwheel:x:10:app\napp:x:1000:\n"
    );
}

#[test]
fn errors_name_the_failing_step() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-busybox");
    let err = testimage::build_busybox_layout(&tmp.path().join("a"), &missing).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("copying {}", missing.display())),
        "{msg}"
    );

    // The layout exists already: `umoci init` refuses, and says so.
    let err = testimage::build_busybox_layout(&tmp.path().join("a"), Path::new(DEFAULT_BUSYBOX))
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("umoci init --layout"), "{msg}");
}
