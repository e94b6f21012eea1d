//! The store under concurrency (threads and processes importing and
//! collecting garbage at once) and crashes (an importing process killed at
//! random points): no partial entry is ever visible, and gc cleans up.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use hypercontainer_image::{Digest, ImageSource, ImageStore};

const BIN: &str = env!("CARGO_BIN_EXE_hc-image");

/// A layout with three layers of `files` small files each.
fn layout(dir: &Path, files: usize) -> PathBuf {
    let layers: Vec<(Vec<u8>, Vec<u8>)> = (0..3)
        .map(|l| {
            let mut entries = vec![dir_entry(&format!("l{l}/"))];
            for i in 0..files {
                entries.push(file(
                    &format!("l{l}/f{i}"),
                    format!("layer {l} file {i}").as_bytes(),
                ));
            }
            let t = tar_of(entries);
            let g = gzip(&t);
            (t, g)
        })
        .collect();
    write_layout(dir, &layers, |_, _| {})
}

/// Every published layer entry is complete and every image record's layers exist.
fn assert_consistent(root: &Path) {
    for name in names(&root.join("layers/sha256")) {
        let d = root.join("layers/sha256").join(&name);
        assert!(
            d.join("meta.json").is_file(),
            "partial layer entry {name} visible"
        );
        assert!(
            d.join("layer.erofs").is_file(),
            "layer entry {name} lacks its EROFS image"
        );
    }
    let store = ImageStore::open(root).unwrap();
    for id in store.list().unwrap() {
        let img = store
            .get(&id)
            .unwrap()
            .expect("image record without its layers");
        for l in &img.layers {
            assert!(l.erofs_path.as_ref().unwrap().is_file());
        }
    }
}

#[test]
fn concurrent_imports_and_gc_from_threads_and_processes() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = layout(&tmp.path().join("layout"), 300);
    let root = tmp.path().join("store");
    ImageStore::open(&root).unwrap();

    let src = ImageSource::OciLayout {
        path: layout.clone(),
    };
    let procs: Vec<_> = (0..3)
        .map(|_| {
            Command::new(BIN)
                .arg("import")
                .arg(&root)
                .arg("oci")
                .arg(&layout)
                .arg("latest")
                .spawn()
                .unwrap()
        })
        .collect();
    let ids: Vec<Digest> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    let store = ImageStore::open(&root).unwrap();
                    store.import(&src, Some("latest")).unwrap().id
                })
            })
            .collect();
        let gc = s.spawn(|| {
            let store = ImageStore::open(&root).unwrap();
            for _ in 0..5 {
                store.gc().unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        gc.join().unwrap();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for mut p in procs {
        assert!(p.wait().unwrap().success());
    }
    assert!(ids.windows(2).all(|w| w[0] == w[1]));
    assert_consistent(&root);
    let store = ImageStore::open(&root).unwrap();
    assert_eq!(names(&root.join("layers/sha256")).len(), 3);
    let img = store.get(&ids[0]).unwrap().unwrap();
    assert_eq!(img.layers.len(), 3);
    assert!(
        store.gc().unwrap().layers_removed.is_empty(),
        "gc removed referenced layers"
    );
}

#[test]
fn killed_imports_leave_no_partial_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = layout(&tmp.path().join("layout"), 1000);
    let root = tmp.path().join("store");
    let mut interrupted = 0;
    for (round, delay_ms) in [5u64, 50, 200, 500, 900, 1400, 2000]
        .into_iter()
        .enumerate()
    {
        let mut child = Command::new(BIN)
            .arg("import")
            .arg(&root)
            .arg("oci")
            .arg(&layout)
            .arg("latest")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let finished = child.try_wait().unwrap().is_some();
        // SAFETY: kill(2) on our own child's pid; harmless if it already exited.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
        if !finished && root.exists() {
            assert_consistent(&root);
        }
        let store = ImageStore::open(&root).unwrap();
        if store.list().unwrap().is_empty() {
            interrupted += 1;
        }
        eprintln!(
            "kill after {delay_ms} ms: finished={finished}, layers={}, scratch={}",
            names(&root.join("layers/sha256")).len(),
            names(&root.join("tmp")).len()
        );
        // Every other round, clean up in between.
        if round % 2 == 1 {
            store.gc().unwrap();
            assert!(names(&root.join("tmp")).is_empty());
            assert_consistent(&root);
        }
    }
    assert!(interrupted > 0, "no import was actually interrupted");
    let store = ImageStore::open(&root).unwrap();
    let img = store
        .import(&ImageSource::OciLayout { path: layout }, Some("latest"))
        .unwrap();
    store.gc().unwrap();
    assert!(names(&root.join("tmp")).is_empty());
    assert_consistent(&root);
    assert_eq!(store.get(&img.id).unwrap().unwrap().layers.len(), 3);
    let _ = fs::metadata(&root);
}

/// Imports as an unprivileged user: nothing needs root; ownership, whiteouts
/// and opaque markers that cannot be applied are recorded in the layer meta.
#[test]
fn unprivileged_import_records_what_it_cannot_apply() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let mut owned = header(b"home/u/f", tar::EntryType::Regular, 1);
    owned.set_uid(1000);
    owned.set_gid(1000);
    owned.set_cksum();
    let lower = tar_of(vec![
        dir_entry("home/"),
        dir_entry("home/u/"),
        (owned, b"x".to_vec()),
        file("gone", b""),
    ]);
    let upper = tar_of(vec![
        file(".wh.gone", b""),
        dir_entry("home/"),
        file("home/.wh..wh..opq", b""),
    ]);
    let layout = write_layout(
        &tmp.path().join("layout"),
        &[(lower.clone(), gzip(&lower)), (upper.clone(), gzip(&upper))],
        |_, _| {},
    );
    let root = tmp.path().join("store");
    fs::create_dir(&root).unwrap();
    std::os::unix::fs::chown(&root, Some(65534), Some(65534)).unwrap();
    run(Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            BIN,
            "import",
        ])
        .arg(&root)
        .arg("oci")
        .arg(&layout)
        .arg("latest"));
    let store = ImageStore::open(&root).unwrap();
    let id = store.list().unwrap().remove(0);
    let img = store.get(&id).unwrap().unwrap();
    let owners = &img.layers[0].meta.ownership;
    assert!(
        owners
            .iter()
            .any(|o| o.path == "home/u/f" && o.uid == 1000 && o.gid == 1000),
        "{owners:?}"
    );
    assert_eq!(img.layers[1].meta.whiteouts, vec!["gone".to_string()]);
    assert_eq!(img.layers[1].meta.opaque_dirs, vec!["home".to_string()]);
    assert!(img
        .layers
        .iter()
        .all(|l| l.erofs_path.as_ref().is_some_and(|p| p.is_file())));
}
