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

/// How long a test waits for a sandbox's process to end.
pub const WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// A builder on the busybox test image, with a boot timeout for slow
/// (emulated) hosts.
pub fn sandbox() -> hypercontainer::sandbox::SandboxBuilder {
    hypercontainer::sandbox::Sandbox::builder()
        .image(image_ref().parse().unwrap())
        .boot_timeout(std::time::Duration::from_secs(120))
}

/// Everything a reader gives, as text.
pub fn read_all(mut r: impl std::io::Read) -> String {
    let mut s = String::new();
    r.read_to_string(&mut s).unwrap();
    s
}

/// What a sandbox run to its end gave.
pub struct Ran {
    /// Its stdout.
    pub out: String,
    /// Its stderr.
    pub err: String,
    /// Its exit status.
    pub status: i32,
    /// Whether the OOM killer ended it.
    pub oom_killed: bool,
}

/// Starts `b` and runs it to the end.
pub fn run_to_end(b: hypercontainer::sandbox::SandboxBuilder) -> Ran {
    let s = b.start().unwrap_or_else(|e| panic!("start: {e:?}"));
    let (out, err) = (s.stdout().unwrap(), s.stderr().unwrap());
    let err = std::thread::spawn(move || read_all(err));
    let out = read_all(out);
    let status = s
        .wait_timeout(WAIT)
        .unwrap()
        .expect("the process ends in time");
    Ran {
        out,
        err: err.join().unwrap(),
        status,
        oom_killed: s.oom_killed(),
    }
}

/// Unpacks the busybox test image into `dir` (a `dir:` root filesystem).
pub fn unpack_test_rootfs(dir: &Path) {
    hypercontainer::sandbox::ImageSource::OciArchive {
        path: image_archive().to_owned(),
    }
    .open(
        Some(TAG),
        &hypercontainer_image::Platform::default(),
        &hypercontainer_image::Limits::default(),
    )
    .unwrap()
    .unpack_rootfs(
        dir,
        &hypercontainer_image::UnpackOptions::new(hypercontainer_image::WhiteoutMode::Apply),
    )
    .unwrap();
}
