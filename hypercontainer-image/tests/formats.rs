//! Images made by real tools (umoci, GNU tar, skopeo) read from an OCI
//! layout, an OCI archive and a docker archive must give identical trees,
//! identical to what `umoci unpack` produces, and EROFS images that hold
//! exactly the unpacked layer trees.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use hypercontainer_image::{
    ImageSource, ImageStore, Limits, Platform, ProcessOverrides, SourceError, UnpackOptions,
    UserSpec, WhiteoutMode,
};

fn sources(t: &TestImage) -> Vec<(ImageSource, &'static str)> {
    vec![
        (
            ImageSource::OciLayout {
                path: t.layout.clone(),
            },
            t.tag,
        ),
        (
            ImageSource::OciArchive {
                path: t.oci_archive.clone(),
            },
            t.tag,
        ),
        (
            ImageSource::DockerArchive {
                path: t.docker_archive.clone(),
            },
            t.docker_ref,
        ),
    ]
}

fn unpack(src: &ImageSource, reference: &str, dest: &Path) {
    let img = src
        .open(Some(reference), &Platform::default(), &Limits::default())
        .unwrap();
    assert_eq!(img.layers().len(), 3);
    img.unpack_rootfs(dest, &UnpackOptions::new(WhiteoutMode::Apply))
        .unwrap();
}

#[test]
fn three_formats_give_identical_trees_matching_umoci() {
    let tmp = tempfile::tempdir().unwrap();
    let t = build_test_image(tmp.path());

    // Reference: umoci's own unpacking.
    let bundle = tmp.path().join("umoci-bundle");
    run(Command::new("umoci")
        .args([
            "unpack",
            "--image",
            &format!("{}:{}", t.layout.display(), t.tag),
        ])
        .arg(&bundle));
    let reference = snapshot(&bundle.join("rootfs"));

    let mut trees = Vec::new();
    for (i, (src, r)) in sources(&t).into_iter().enumerate() {
        let dest = tmp.path().join(format!("rootfs{i}"));
        unpack(&src, r, &dest);
        trees.push(snapshot(&dest));
    }
    assert_eq!(trees[0], trees[1], "OCI layout vs OCI archive");
    assert_eq!(trees[0], trees[2], "OCI layout vs docker archive");
    assert_eq!(trees[0], reference, "ours vs umoci unpack");

    let tree = &trees[0];
    for gone in [
        "etc/deleteme",
        "gone",
        "gone/deep/x",
        "data/old",
        "data/old/a",
        "data/keep-not",
    ] {
        assert!(!tree.contains_key(gone), "{gone} should have been deleted");
    }
    assert_eq!(tree["data/fresh"].kind, "file");
    assert_eq!(tree["bin/sh"].kind, "symlink");
    assert_eq!(tree["bin/sh"].content, "busybox");
    assert_eq!(tree["etc/abs"].content, "/bin/busybox");
    assert_eq!(tree["bin/ls"].link_group.as_deref(), Some("bin/busybox"));
    assert_eq!(
        tree["etc/motd.link"].link_group.as_deref(),
        Some("etc/motd")
    );
    assert_eq!(tree["bin/suid"].mode, 0o4755);
    assert_eq!(
        (
            tree["home/user"].uid,
            tree["home/user"].gid,
            tree["home/user"].mode
        ),
        (1000, 1000, 0o750)
    );
    assert_eq!(tree["home/user/profile"].mode, 0o640);
    assert_eq!(
        tree["etc/motd"].xattrs.get("user.note").map(Vec::as_slice),
        Some(&b"kept"[..])
    );
}

#[test]
fn store_imports_all_formats_to_one_image_with_erofs_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let t = build_test_image(tmp.path());
    let store = ImageStore::builder(tmp.path().join("store"))
        .keep_trees(true)
        .open()
        .unwrap();

    let mut images = Vec::new();
    for (src, r) in sources(&t) {
        images.push(store.import(&src, Some(r)).unwrap());
    }
    let img = &images[0];
    assert_eq!(
        img.id, images[1].id,
        "config digest is the image ID in every format"
    );
    assert_eq!(img.id, images[2].id);
    assert!(img.manifest_digest.is_some());
    assert!(images[2].manifest_digest.is_none());
    let diff_ids = |i: &hypercontainer_image::Image| {
        i.layers
            .iter()
            .map(|l| l.diff_id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(diff_ids(img), diff_ids(&images[2]));
    assert_eq!(store.list().unwrap(), vec![img.id.clone()]);
    assert_eq!(
        hypercontainer_image::manifest::REF_NAME,
        "org.opencontainers.image.ref.name"
    );

    // Overlay representation of the upper layers.
    assert!(img.layers[1]
        .meta
        .whiteouts
        .contains(&"etc/deleteme".to_string()));
    assert!(img.layers[1].meta.whiteouts.contains(&"gone".to_string()));
    assert_eq!(img.layers[2].meta.opaque_dirs, vec!["data".to_string()]);

    for (i, layer) in img.layers.iter().enumerate() {
        let tree = layer.tree_path.as_ref().unwrap();
        let erofs = layer.erofs_path.as_ref().unwrap();
        let want = snapshot(tree);
        let mnt = Mount::erofs(erofs, &tmp.path().join(format!("mnt{i}")));
        let got = snapshot(&mnt.0);
        assert_eq!(got, want, "EROFS image of layer {i} differs from its tree");
    }
    let l2 = snapshot(img.layers[1].tree_path.as_ref().unwrap());
    assert_eq!(
        l2["gone"].kind, "char",
        "whiteout is an overlay 0/0 char device"
    );
    assert_eq!(l2["gone"].content, "0");
    let l3 = snapshot(img.layers[2].tree_path.as_ref().unwrap());
    assert_eq!(
        l3["data"]
            .xattrs
            .get("trusted.overlay.opaque")
            .map(Vec::as_slice),
        Some(&b"y"[..])
    );

    // Process defaults from the config umoci wrote.
    let p = img.process_defaults(&ProcessOverrides::new()).unwrap();
    assert_eq!(p.args, ["/bin/sh", "-c", "echo hi"]);
    assert_eq!(
        p.user,
        UserSpec {
            user: "1000".into(),
            group: Some("1000".into())
        }
    );
    assert_eq!(p.working_dir, "/home/user");
    assert!(p.env.contains(&"GREETING=hello".to_string()));
    assert_eq!(p.exposed_ports, ["8080/tcp"]);
    assert_eq!(p.volumes, ["/data"]);
    assert_eq!(p.stop_signal.as_deref(), Some("SIGQUIT"));
    let p = img
        .process_defaults(
            &ProcessOverrides::new()
                .entrypoint(["/bin/busybox", "true"])
                .env("GREETING", "hi"),
        )
        .unwrap();
    assert_eq!(p.args, ["/bin/busybox", "true"]);
    assert!(p.env.contains(&"GREETING=hi".to_string()));
    assert!(!p.env.contains(&"GREETING=hello".to_string()));

    // Reopening finds the same image; re-import is a cache hit.
    let again = ImageStore::builder(store.root())
        .keep_trees(true)
        .open()
        .unwrap();
    // The record reflects the latest import (the docker archive: no manifest digest).
    assert_eq!(again.get(&img.id).unwrap().as_ref(), Some(&images[2]));

    // GC: nothing to drop while referenced; everything once removed.
    assert!(store.gc().unwrap().layers_removed.is_empty());
    assert!(store.remove(&img.id).unwrap());
    let report = store.gc().unwrap();
    assert_eq!(report.layers_removed.len(), 3);
    assert!(names(&store.root().join("layers/sha256")).is_empty());
    assert!(names(&store.root().join("tmp")).is_empty());
    assert_eq!(store.get(&img.id).unwrap(), None);
}

#[test]
fn references_and_platforms_are_selected() {
    let tmp = tempfile::tempdir().unwrap();
    let t = build_test_image(tmp.path());
    let limits = Limits::default();
    let amd64 = Platform::default();
    let layout = ImageSource::OciLayout {
        path: t.layout.clone(),
    };
    // Exactly one image: no reference needed.
    layout.open(None, &amd64, &limits).unwrap();
    // Full name:tag picks by tag.
    layout.open(Some("example/img:t"), &amd64, &limits).unwrap();
    assert!(matches!(
        layout.open(Some("nope"), &amd64, &limits),
        Err(SourceError::ReferenceNotFound(_))
    ));
    let arm = Platform {
        os: "linux".into(),
        architecture: "arm64".into(),
    };
    assert!(matches!(
        layout.open(None, &arm, &limits),
        Err(SourceError::NoPlatform { .. })
    ));
    let docker = ImageSource::DockerArchive {
        path: t.docker_archive.clone(),
    };
    docker
        .open(Some("docker.io/example/img:t"), &amd64, &limits)
        .unwrap();
    assert!(matches!(
        docker.open(Some("example/img:u"), &amd64, &limits),
        Err(SourceError::ReferenceNotFound(_))
    ));
    // A second tag on the same layout makes the reference mandatory.
    run(Command::new("umoci").args(["tag", "--image", &format!("{}:t", t.layout.display()), "t2"]));
    assert!(matches!(
        layout.open(None, &amd64, &limits),
        Err(SourceError::Ambiguous(2))
    ));
    layout.open(Some("t2"), &amd64, &limits).unwrap();
}
