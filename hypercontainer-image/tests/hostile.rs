//! Hostile layers and image sources. Each case asserts the error and that
//! nothing outside the target directory was touched; store-level cases also
//! assert that a rejected layer leaves nothing in the store.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use hypercontainer_image::{
    apply_layer, DeviceKind, DigestError, ImageSource, ImageStore, LayerMeta, Limits,
    ManifestError, Platform, SourceError, StoreError, UnpackError, UnpackOptions, WhiteoutMode,
};
use tar::EntryType;

/// A sandbox: `root/` is the unpack target, `outside/` holds a canary.
struct Sandbox {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    root: PathBuf,
    before: BTreeMap<String, Node>,
}

impl Sandbox {
    fn new() -> Sandbox {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("a/b");
        let root = base.join("root");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(base.join("outside")).unwrap();
        fs::write(base.join("outside/canary"), b"canary").unwrap();
        fs::write(tmp.path().join("a/canary2"), b"canary2").unwrap();
        let mut s = Sandbox {
            base: tmp.path().to_owned(),
            _tmp: tmp,
            root,
            before: BTreeMap::new(),
        };
        s.before = s.outside();
        s
    }

    /// Everything in the sandbox except the target root.
    fn outside(&self) -> BTreeMap<String, Node> {
        snapshot(&self.base)
            .into_iter()
            .filter(|(k, _)| !k.starts_with("a/b/root/") && k != "a/b/root")
            .collect()
    }

    fn apply(&self, tar: &[u8], mode: WhiteoutMode) -> Result<LayerMeta, UnpackError> {
        self.apply_with(tar, UnpackOptions::new(mode))
    }

    fn apply_with(&self, tar: &[u8], opts: UnpackOptions) -> Result<LayerMeta, UnpackError> {
        let r = apply_layer(tar, &self.root, &opts, None);
        assert_eq!(
            self.outside(),
            self.before,
            "something outside the root changed"
        );
        let canary = self.base.join("a/b/outside/canary");
        assert_eq!(fs::read(&canary).unwrap(), b"canary");
        r
    }
}

fn both_modes(tar: &[u8], check: impl Fn(Result<LayerMeta, UnpackError>)) {
    for mode in [WhiteoutMode::Apply, WhiteoutMode::Overlay] {
        let s = Sandbox::new();
        check(s.apply(tar, mode));
    }
}

#[test]
fn dotdot_paths_are_rejected() {
    let t = tar_of(vec![file("../outside/canary", b"pwned")]);
    both_modes(&t, |r| {
        assert!(matches!(r, Err(UnpackError::DotDot(_))), "{r:?}")
    });
    let t = tar_of(vec![file("x/../../../outside/canary", b"pwned")]);
    both_modes(&t, |r| {
        assert!(matches!(r, Err(UnpackError::DotDot(_))), "{r:?}")
    });
}

#[test]
fn absolute_paths_are_rejected() {
    let t = tar_of(vec![file("/tmp/pwned", b"pwned")]);
    both_modes(&t, |r| {
        assert!(matches!(r, Err(UnpackError::AbsolutePath(_))), "{r:?}")
    });
}

#[test]
fn symlink_parent_escapes_are_rejected() {
    // A relative symlink climbing out of the root, then a file through it.
    let t = tar_of(vec![
        symlink("evil", "../../outside"),
        file("evil/pwned", b"x"),
    ]);
    both_modes(&t, |r| {
        assert!(matches!(r, Err(UnpackError::PathEscape(_))), "{r:?}")
    });
    // Deeper: a symlink in a subdirectory.
    let t = tar_of(vec![
        dir_entry("d/"),
        symlink("d/up", "../../.."),
        file("d/up/outside/pwned", b"x"),
    ]);
    both_modes(&t, |r| {
        assert!(matches!(r, Err(UnpackError::PathEscape(_))), "{r:?}")
    });
    // Whiteouts and opaque markers through an escaping symlink.
    let t = tar_of(vec![
        symlink("evil", "../../outside"),
        file("evil/.wh.canary", b""),
    ]);
    both_modes(&t, |r| {
        assert!(matches!(r, Err(UnpackError::PathEscape(_))), "{r:?}")
    });
    let t = tar_of(vec![
        symlink("evil", "../../outside"),
        file("evil/.wh..wh..opq", b""),
    ]);
    both_modes(&t, |r| {
        assert!(matches!(r, Err(UnpackError::PathEscape(_))), "{r:?}")
    });
    // Symlink loops.
    let t = tar_of(vec![
        symlink("a", "b"),
        symlink("b", "a"),
        file("a/x", b"x"),
    ]);
    both_modes(&t, |r| {
        assert!(matches!(r, Err(UnpackError::SymlinkLoop(_))), "{r:?}")
    });
}

#[test]
fn absolute_symlinks_resolve_inside_the_root() {
    let s = Sandbox::new();
    let t = tar_of(vec![
        symlink("etc", "/real-etc"),
        dir_entry("real-etc/"),
        file("etc/passwd", b"root"),
    ]);
    s.apply(&t, WhiteoutMode::Apply).unwrap();
    assert_eq!(fs::read(s.root.join("real-etc/passwd")).unwrap(), b"root");
    let t = tar_of(vec![symlink("top", "/"), file("top/x", b"x")]);
    s.apply(&t, WhiteoutMode::Apply).unwrap();
    assert_eq!(fs::read(s.root.join("x")).unwrap(), b"x");
}

#[test]
fn final_symlinks_are_replaced_not_followed() {
    let s = Sandbox::new();
    let t = tar_of(vec![
        symlink("link", "../outside/canary"),
        file("link", b"pwned"),
    ]);
    s.apply(&t, WhiteoutMode::Apply).unwrap();
    assert!(fs::symlink_metadata(s.root.join("link")).unwrap().is_file());
    assert_eq!(fs::read(s.root.join("link")).unwrap(), b"pwned");
    let t = tar_of(vec![
        symlink("d", "../outside"),
        dir_entry("d/"),
        file("d/x", b"x"),
    ]);
    s.apply(&t, WhiteoutMode::Apply).unwrap();
    assert!(fs::symlink_metadata(s.root.join("d")).unwrap().is_dir());
}

#[test]
fn hardlinks_outside_the_root_are_rejected() {
    let t = tar_of(vec![hardlink("h", "../outside/canary")]);
    both_modes(&t, |r| {
        assert!(matches!(r, Err(UnpackError::DotDot(_))), "{r:?}")
    });
    let t = tar_of(vec![hardlink("h", "/etc/passwd")]);
    both_modes(&t, |r| {
        assert!(matches!(r, Err(UnpackError::AbsolutePath(_))), "{r:?}")
    });
    let t = tar_of(vec![
        symlink("evil", "../../outside"),
        hardlink("h", "evil/canary"),
    ]);
    both_modes(&t, |r| {
        assert!(matches!(r, Err(UnpackError::PathEscape(_))), "{r:?}")
    });
    let t = tar_of(vec![hardlink("h", "missing")]);
    both_modes(&t, |r| {
        assert!(
            matches!(r, Err(UnpackError::HardlinkTarget { .. })),
            "{r:?}"
        )
    });
    let t = tar_of(vec![dir_entry("d/"), hardlink("h", "d")]);
    both_modes(&t, |r| {
        assert!(
            matches!(r, Err(UnpackError::HardlinkTarget { .. })),
            "{r:?}"
        )
    });
    // The canary's link count is untouched.
    let s = Sandbox::new();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        fs::metadata(s.base.join("a/b/outside/canary"))
            .unwrap()
            .nlink(),
        1
    );
}

#[test]
fn entries_replacing_the_root_are_rejected() {
    let t = tar_of(vec![symlink(".", "/")]);
    both_modes(&t, |r| {
        assert!(matches!(r, Err(UnpackError::ReplaceRoot(_))), "{r:?}")
    });
    let t = tar_of(vec![file("./", b"x")]);
    both_modes(&t, |r| {
        assert!(matches!(r, Err(UnpackError::ReplaceRoot(_))), "{r:?}")
    });
    let t = tar_of(vec![file(".wh..", b"")]);
    both_modes(&t, |r| {
        assert!(matches!(r, Err(UnpackError::InvalidName(_))), "{r:?}")
    });
    let t = tar_of(vec![file("a/.wh...", b"")]);
    both_modes(&t, |r| {
        assert!(matches!(r, Err(UnpackError::InvalidName(_))), "{r:?}")
    });
    // A directory entry for the root is fine: it sets the root's metadata.
    let s = Sandbox::new();
    s.apply(&tar_of(vec![dir_entry("./")]), WhiteoutMode::Apply)
        .unwrap();
}

fn pax_entry(records: &[(&str, &[u8])]) -> (tar::Header, Vec<u8>) {
    let data = pax(records);
    (
        header(b"PaxHeaders/x", EntryType::XHeader, data.len() as u64),
        data,
    )
}

#[test]
fn pax_ustar_disagreement_is_rejected() {
    let t = tar_of(vec![
        pax_entry(&[("path", b"etc/passwd")]),
        file("etc/shadow", b"x"),
    ]);
    both_modes(&t, |r| {
        assert!(
            matches!(r, Err(UnpackError::PaxMismatch { field: "path", .. })),
            "{r:?}"
        )
    });
    let t = tar_of(vec![pax_entry(&[("size", b"100")]), file("f", b"x")]);
    both_modes(&t, |r| {
        assert!(
            matches!(r, Err(UnpackError::PaxMismatch { field: "size", .. })),
            "{r:?}"
        )
    });
    let t = tar_of(vec![
        pax_entry(&[("linkpath", b"/etc/shadow")]),
        symlink("l", "target"),
    ]);
    both_modes(&t, |r| {
        assert!(
            matches!(
                r,
                Err(UnpackError::PaxMismatch {
                    field: "linkpath",
                    ..
                })
            ),
            "{r:?}"
        )
    });
    // A PAX path hiding a '..' is still checked.
    let t = tar_of(vec![
        pax_entry(&[("path", b"../outside/canary")]),
        file("", b"x"),
    ]);
    both_modes(&t, |r| {
        assert!(matches!(r, Err(UnpackError::DotDot(_))), "{r:?}")
    });
    // Two PAX headers for one entry, or one for none.
    let t = tar_of(vec![
        pax_entry(&[("uid", b"1")]),
        pax_entry(&[("gid", b"1")]),
        file("f", b"x"),
    ]);
    both_modes(&t, |r| {
        assert!(matches!(r, Err(UnpackError::BadExtension)), "{r:?}")
    });
    let t = tar_of(vec![file("f", b"x"), pax_entry(&[("uid", b"1")])]);
    both_modes(&t, |r| {
        assert!(matches!(r, Err(UnpackError::BadExtension)), "{r:?}")
    });
    // A consistent long PAX path is accepted.
    let long = format!("{}/file", "d".repeat(120));
    let s = Sandbox::new();
    let t = tar_of(vec![
        pax_entry(&[("path", long.as_bytes())]),
        file(&"d".repeat(99), b"ok"),
    ]);
    s.apply(&t, WhiteoutMode::Apply).unwrap();
    assert_eq!(fs::read(s.root.join(&long)).unwrap(), b"ok");
}

#[test]
fn bombs_hit_the_caps() {
    // Uncompressed size: a gzip bomb of zeros.
    let big = tar_of(vec![file("zeros", &vec![0u8; 8 << 20])]);
    let gz = gzip(&big);
    assert!(gz.len() < 100_000);
    let limits = Limits {
        max_layer_bytes: 1 << 20,
        ..Limits::default()
    };
    let s = Sandbox::new();
    let r = s.apply_with(&gz, UnpackOptions::new(WhiteoutMode::Apply).limits(limits));
    assert!(
        matches!(r, Err(UnpackError::TooLarge { limit }) if limit == 1 << 20),
        "{r:?}"
    );
    // Entry count.
    let many = tar_of((0..50).map(|i| file(&format!("f{i}"), b"")).collect());
    let limits = Limits {
        max_entries: 10,
        ..Limits::default()
    };
    let r = s.apply_with(
        &many,
        UnpackOptions::new(WhiteoutMode::Apply).limits(limits),
    );
    assert!(
        matches!(r, Err(UnpackError::TooManyEntries { limit: 10 })),
        "{r:?}"
    );
    // Path length and depth.
    let long = "a/".repeat(3000);
    let t = tar_of(vec![
        pax_entry(&[("path", long.as_bytes())]),
        file(&long[..99], b""),
    ]);
    both_modes(&t, |r| {
        assert!(matches!(r, Err(UnpackError::PathTooLong(_))), "{r:?}")
    });
    let deep = "a/".repeat(300) + "f";
    let t = tar_of(vec![
        pax_entry(&[("path", deep.as_bytes())]),
        file(&deep[..99], b""),
    ]);
    both_modes(&t, |r| {
        assert!(matches!(r, Err(UnpackError::PathTooLong(_))), "{r:?}")
    });
    // Extension headers.
    let huge = vec![b'x'; 2 << 20];
    let t = tar_of(vec![pax_entry(&[("comment", &huge)]), file("f", b"")]);
    both_modes(&t, |r| {
        assert!(
            matches!(r, Err(UnpackError::ExtensionTooLarge { .. })),
            "{r:?}"
        )
    });
    // Symlink expansion growing the path without end.
    let t = tar_of(vec![symlink("a", "a/a/a/a/a/a/a/a"), file("a/x", b"")]);
    both_modes(&t, |r| {
        assert!(
            matches!(
                r,
                Err(UnpackError::PathTooLong(_) | UnpackError::SymlinkLoop(_))
            ),
            "{r:?}"
        )
    });
}

#[test]
fn device_nodes_are_recorded_not_created() {
    let mut h = header(b"dev/sda", EntryType::Block, 0);
    h.set_device_major(8).unwrap();
    h.set_device_minor(0).unwrap();
    h.set_mode(0o660);
    h.set_cksum();
    let mut c = header(b"dev/mem", EntryType::Char, 0);
    c.set_device_major(1).unwrap();
    c.set_device_minor(1).unwrap();
    c.set_cksum();
    let t = tar_of(vec![dir_entry("dev/"), (h, vec![]), (c, vec![])]);
    both_modes(&t, |r| {
        let meta = r.unwrap();
        assert_eq!(meta.devices.len(), 2);
        assert_eq!(meta.devices[0].path, "dev/sda");
        assert_eq!(meta.devices[0].kind, DeviceKind::Block);
        assert_eq!(
            (
                meta.devices[0].major,
                meta.devices[0].minor,
                meta.devices[0].mode
            ),
            (8, 0, 0o660)
        );
        assert_eq!(meta.devices[1].kind, DeviceKind::Char);
    });
    let s = Sandbox::new();
    s.apply(&t, WhiteoutMode::Apply).unwrap();
    assert_eq!(names(&s.root.join("dev")), Vec::<String>::new());
}

#[test]
fn unsupported_types_and_truncation_are_errors() {
    let t = tar_of(vec![(header(b"sparse", EntryType::GNUSparse, 0), vec![])]);
    both_modes(&t, |r| {
        assert!(
            matches!(r, Err(UnpackError::UnsupportedType { .. })),
            "{r:?}"
        )
    });
    let mut t = tar_of(vec![file("f", &[7u8; 5000])]);
    t.truncate(2048);
    both_modes(&t, |r| {
        assert!(
            matches!(r, Err(UnpackError::Truncated(_) | UnpackError::Read(_))),
            "{r:?}"
        )
    });
    let garbage = vec![0x42u8; 4096];
    both_modes(&garbage, |r| {
        assert!(matches!(r, Err(UnpackError::Read(_))), "{r:?}")
    });
}

#[test]
fn diff_id_is_checked() {
    let s = Sandbox::new();
    let t = tar_of(vec![file("f", b"x")]);
    let wrong = hypercontainer_image::Digest::sha256_of(b"other");
    let r = apply_layer(
        &t[..],
        &s.root,
        &UnpackOptions::new(WhiteoutMode::Apply),
        Some(&wrong),
    );
    assert!(
        matches!(r, Err(UnpackError::DiffIdMismatch { .. })),
        "{r:?}"
    );
    let right = hypercontainer_image::Digest::sha256_of(&t);
    let meta = apply_layer(
        &t[..],
        &s.root,
        &UnpackOptions::new(WhiteoutMode::Apply),
        Some(&right),
    )
    .unwrap();
    assert_eq!(meta.diff_id, Some(right));
    // zstd layers are read too.
    let z = zstd::encode_all(&t[..], 3).unwrap();
    let meta = apply_layer(
        &z[..],
        &s.root,
        &UnpackOptions::new(WhiteoutMode::Apply),
        None,
    )
    .unwrap();
    assert_eq!(meta.compression, hypercontainer_image::Compression::Zstd);
}

#[test]
fn whiteouts_apply_only_to_lower_layers() {
    let s = Sandbox::new();
    s.apply(
        &tar_of(vec![dir_entry("d/"), file("d/low", b"1"), file("f", b"1")]),
        WhiteoutMode::Apply,
    )
    .unwrap();
    let upper = tar_of(vec![
        file("g", b"same layer"),
        file(".wh.g", b""),
        file(".wh.f", b""),
        file("d/.wh..wh..opq", b""),
        file("d/new", b"2"),
    ]);
    s.apply(&upper, WhiteoutMode::Apply).unwrap();
    assert!(!s.root.join("f").exists());
    assert!(
        s.root.join("g").exists(),
        "a whiteout does not hide its own layer's file"
    );
    assert_eq!(names(&s.root.join("d")), vec!["new".to_string()]);
}

#[test]
fn ownership_is_recorded_when_not_applied() {
    let s = Sandbox::new();
    let mut h = header(b"owned", EntryType::Regular, 1);
    h.set_uid(1234);
    h.set_gid(5678);
    h.set_cksum();
    let t = tar_of(vec![(h, b"x".to_vec())]);
    let meta = s
        .apply_with(
            &t,
            UnpackOptions::new(WhiteoutMode::Apply).preserve_ownership(false),
        )
        .unwrap();
    assert_eq!(meta.ownership.len(), 1);
    assert_eq!((meta.ownership[0].uid, meta.ownership[0].gid), (1234, 5678));
    let meta = s
        .apply_with(
            &t,
            UnpackOptions::new(WhiteoutMode::Apply).preserve_ownership(true),
        )
        .unwrap();
    assert!(meta.ownership.is_empty());
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(s.root.join("owned")).unwrap().uid(), 1234);
}

#[test]
fn disallowed_xattrs_are_skipped() {
    let s = Sandbox::new();
    let t = tar_of(vec![
        pax_entry(&[
            ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
            ("SCHILY.xattr.user.ok", b"1"),
        ]),
        file("f", b"x"),
    ]);
    let meta = s.apply(&t, WhiteoutMode::Overlay).unwrap();
    assert_eq!(
        meta.skipped_xattrs,
        vec!["f: trusted.overlay.redirect".to_string()]
    );
    let snap = snapshot(&s.root);
    assert!(snap["f"].xattrs.contains_key("user.ok"));
    assert!(!snap["f"].xattrs.contains_key("trusted.overlay.redirect"));
}

// ---- store level: rejected input leaves nothing behind ----

fn store_is_clean(store: &ImageStore) {
    assert!(
        names(&store.root().join("layers/sha256")).is_empty(),
        "a layer entry was published"
    );
    assert!(
        names(&store.root().join("images/sha256")).is_empty(),
        "an image record was published"
    );
    assert!(
        names(&store.root().join("tmp")).is_empty(),
        "scratch left behind"
    );
}

fn import(dir: &Path, store: &ImageStore) -> Result<hypercontainer_image::Image, StoreError> {
    store.import(
        &ImageSource::OciLayout {
            path: dir.to_owned(),
        },
        Some("latest"),
    )
}

#[test]
fn store_rejects_hostile_layers_and_keeps_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(tmp.path().join("store")).unwrap();
    // A good lower layer and an escaping upper one.
    let good = tar_of(vec![file("ok", b"ok")]);
    let evil = tar_of(vec![
        file("fine", b"1"),
        symlink("evil", "../../../../.."),
        file("evil/tmp/pwned", b"x"),
    ]);
    let layout = write_layout(
        &tmp.path().join("layout"),
        &[(good.clone(), gzip(&good)), (evil.clone(), gzip(&evil))],
        |_, _| {},
    );
    let err = import(&layout, &store).unwrap_err();
    assert!(
        matches!(
            &err,
            StoreError::Source(SourceError::Unpack {
                index: 1,
                source: UnpackError::PathEscape(_),
                ..
            })
        ),
        "{err:?}"
    );
    // The good layer was published (it is complete); no image; no scratch.
    assert_eq!(names(&store.root().join("layers/sha256")).len(), 1);
    assert!(names(&store.root().join("tmp")).is_empty());
    assert!(names(&store.root().join("images/sha256")).is_empty());
    store.gc().unwrap();
    store_is_clean(&store);
}

#[test]
fn store_verifies_blobs_before_use() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(tmp.path().join("store")).unwrap();
    let good = tar_of(vec![file("ok", b"ok")]);

    // Blob content replaced (same size): digest mismatch.
    let l1 = write_layout(
        &tmp.path().join("l1"),
        &[(good.clone(), gzip(&good))],
        |_, _| {},
    );
    let blob = l1.join("blobs/sha256").join(&sha256(&gzip(&good))[7..]);
    let mut data = fs::read(&blob).unwrap();
    let n = data.len();
    data[n - 5] ^= 0xff;
    fs::write(&blob, &data).unwrap();
    let err = import(&l1, &store).unwrap_err();
    assert!(
        matches!(
            &err,
            StoreError::Source(SourceError::Verify {
                source: DigestError::Mismatch { .. },
                ..
            })
        ),
        "{err:?}"
    );
    store_is_clean(&store);

    // Blob larger than its descriptor says: size mismatch, caught before hashing.
    fs::write(&blob, [gzip(&good), vec![0u8; 10]].concat()).unwrap();
    let err = import(&l1, &store).unwrap_err();
    assert!(
        matches!(
            &err,
            StoreError::Source(SourceError::Verify {
                source: DigestError::SizeMismatch { .. },
                ..
            })
        ),
        "{err:?}"
    );
    store_is_clean(&store);

    // diff_id in the config does not match the layer.
    let other = tar_of(vec![file("other", b"x")]);
    let l2 = write_layout(
        &tmp.path().join("l2"),
        &[(good.clone(), gzip(&good))],
        |_, cfg| {
            cfg["rootfs"]["diff_ids"][0] = sha256(&other).into();
        },
    );
    let err = import(&l2, &store).unwrap_err();
    assert!(
        matches!(
            &err,
            StoreError::Source(SourceError::Unpack {
                source: UnpackError::DiffIdMismatch { .. },
                ..
            })
        ),
        "{err:?}"
    );
    store_is_clean(&store);

    // Digest used as a path must match the grammar.
    let l3 = write_layout(
        &tmp.path().join("l3"),
        &[(good.clone(), gzip(&good))],
        |m, _| {
            m["layers"][0]["digest"] = "sha256:../../../../etc/passwd".into();
        },
    );
    let err = import(&l3, &store).unwrap_err();
    assert!(
        matches!(&err, StoreError::Source(SourceError::Manifest(_))),
        "{err:?}"
    );
    store_is_clean(&store);

    // Oversized JSON is refused before it is read.
    let l4 = write_layout(
        &tmp.path().join("l4"),
        &[(good.clone(), gzip(&good))],
        |_, cfg| {
            cfg["padding"] = "x".repeat(64 << 10).into();
        },
    );
    let small = ImageStore::builder(tmp.path().join("store2"))
        .limits(Limits {
            max_json_bytes: 16 << 10,
            ..Limits::default()
        })
        .open()
        .unwrap();
    let err = import(&l4, &small).unwrap_err();
    assert!(
        matches!(
            &err,
            StoreError::Source(SourceError::Manifest(ManifestError::TooLarge { .. }))
        ),
        "{err:?}"
    );
    store_is_clean(&small);

    // Layer count and diff_id count disagree.
    let l5 = write_layout(
        &tmp.path().join("l5"),
        &[(good.clone(), gzip(&good))],
        |_, cfg| {
            cfg["rootfs"]["diff_ids"] = serde_json::json!([]);
        },
    );
    let err = import(&l5, &store).unwrap_err();
    assert!(
        matches!(
            &err,
            StoreError::Source(SourceError::LayerCount {
                layers: 1,
                diff_ids: 0
            })
        ),
        "{err:?}"
    );
    store_is_clean(&store);

    // The intact layout imports.
    let l6 = write_layout(
        &tmp.path().join("l6"),
        &[(good.clone(), gzip(&good))],
        |_, _| {},
    );
    import(&l6, &store).unwrap();
}

#[test]
fn failed_rootfs_unpack_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tar_of(vec![file("ok", b"ok")]);
    let evil = tar_of(vec![file("fine", b"1"), hardlink("h", "../../outside")]);
    let layout = write_layout(
        &tmp.path().join("layout"),
        &[(good.clone(), gzip(&good)), (evil.clone(), gzip(&evil))],
        |_, _| {},
    );
    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    let img = ImageSource::OciLayout { path: layout }
        .open(None, &Platform::default(), &Limits::default())
        .unwrap();
    let err = img
        .unpack_rootfs(
            &out.join("rootfs"),
            &UnpackOptions::new(WhiteoutMode::Apply),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            SourceError::Unpack {
                index: 1,
                source: UnpackError::DotDot(_),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        names(&out).is_empty(),
        "partial rootfs or scratch left: {:?}",
        names(&out)
    );
    // An existing destination is never written into.
    fs::create_dir(out.join("rootfs")).unwrap();
    let err = img
        .unpack_rootfs(
            &out.join("rootfs"),
            &UnpackOptions::new(WhiteoutMode::Apply),
        )
        .unwrap_err();
    assert!(matches!(err, SourceError::DestinationExists(_)), "{err:?}");
}
