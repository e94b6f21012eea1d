//! Arbitrary bytes applied as an image layer (plain, gzip or zstd tar) into a
//! scratch root: it must never panic, and nothing next to the root may be
//! created, changed or removed, whatever the archive says.
#![no_main]

use std::fs;
use std::path::{Path, PathBuf};

use hypercontainer_image::{apply_layer, Limits, UnpackOptions, WhiteoutMode};
use libfuzzer_sys::fuzz_target;

fn base() -> PathBuf {
    std::env::temp_dir().join(format!("hc-fuzz-image-layer-{}", std::process::id()))
}

fn listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let p = e.path();
            let data = if p.is_file() {
                fs::read(&p).unwrap()
            } else {
                Vec::new()
            };
            (e.file_name().to_string_lossy().into_owned(), data)
        })
        .collect();
    v.sort();
    v
}

fuzz_target!(|data: &[u8]| {
    let base = base();
    let _ = fs::remove_dir_all(&base);
    let root = base.join("a/root");
    fs::create_dir_all(&root).unwrap();
    fs::create_dir_all(base.join("a/outside")).unwrap();
    fs::write(base.join("a/outside/canary"), b"canary").unwrap();
    let before = (
        listing(&base),
        listing(&base.join("a")),
        listing(&base.join("a/outside")),
    );

    let limits = Limits {
        max_layer_bytes: 8 << 20,
        max_entries: 4096,
        max_extension_bytes: 64 << 10,
        ..Limits::default()
    };
    let mode = if data.len() % 2 == 0 {
        WhiteoutMode::Apply
    } else {
        WhiteoutMode::Overlay
    };
    let opts = UnpackOptions::new(mode).limits(limits);
    let _ = apply_layer(data, &root, &opts, None);

    let after = (
        listing(&base),
        listing(&base.join("a")),
        listing(&base.join("a/outside")),
    );
    assert_eq!(
        before, after,
        "the layer touched something outside its root"
    );
    let _ = fs::remove_dir_all(&base);
});
