//! Shared by the sandbox tests: the busybox test image, made with umoci
//! by `hypercontainer_image::testimage`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use hypercontainer_image::testimage;

/// Environment variable naming a prebuilt test image (an oci-archive tar
/// made by the same recipe), for hosts without umoci.
pub const TEST_IMAGE_ENV: &str = "HYPERCONTAINER_TEST_IMAGE";
/// The tag of the image in the archive.
pub const TAG: &str = testimage::TAG;

/// The busybox test image as an oci-archive: `$HYPERCONTAINER_TEST_IMAGE`,
/// else built once with [`testimage`] into cargo's test scratch directory
/// (its module docs list what the image holds).
pub fn image_archive() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| {
        if let Some(p) = std::env::var_os(TEST_IMAGE_ENV).filter(|v| !v.is_empty()) {
            return PathBuf::from(p);
        }
        let scratch = Path::new(env!("CARGO_TARGET_TMPDIR"));
        testimage::build_once(scratch, "sandbox-test-image", |dir, image| {
            image.write_archive(&dir.join("busybox.oci.tar"))
        })
        .unwrap_or_else(|e| panic!("building the test image: {e}"))
        .join("busybox.oci.tar")
    })
}

/// `oci-archive:<path>:test`.
pub fn image_ref() -> String {
    format!("oci-archive:{}:{TAG}", image_archive().display())
}
