//! The busybox test image, built with umoci (feature `test-utils`).
//!
//! One recipe for every test that needs a small real image: the SDK's
//! sandbox tests, the agent's host-tier tests and `cargo xtask` (which
//! hands it to the whole-VM tests, examples and benchmarks).
//!
//! # Contents
//!
//! One layer holding:
//!
//! - a static busybox at `/bin/busybox` (copied from the host) and a
//!   symlink `/bin/<applet> -> busybox` for every applet it lists;
//! - directories `/etc`, `/home/app` (owned by 1000:1000), `/data`,
//!   `/data/sub` and `/tmp`;
//! - `/etc/passwd` with `root` (0:0, home `/root`) and `app` (1000:1000,
//!   home `/home/app`), both with shell `/bin/sh`;
//! - `/etc/group` with `root` (0), `wheel` (10, member `app`) and `app`
//!   (1000).
//!
//! Config: Env `PATH=/bin` and `GREETING=from-image`, WorkingDir `/data`,
//! User `app`, Cmd `sh -c "echo default-cmd"`, StopSignal `SIGUSR1`. The
//! image is tagged [`TAG`] in its layout.
//!
//! Building it needs `umoci`, GNU `tar` (for [`BusyboxLayout::write_archive`])
//! and root (the image holds files owned by other users).
//!
//! # Example
//!
//! ```no_run
//! use std::path::Path;
//! use hypercontainer_image::testimage;
//!
//! # fn main() -> std::io::Result<()> {
//! let image = testimage::build_busybox_layout(
//!     Path::new("image-build"),
//!     Path::new(testimage::DEFAULT_BUSYBOX),
//! )?;
//! image.write_archive(Path::new("busybox.oci.tar"))?;
//! # Ok(())
//! # }
//! ```

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The tag of the image in its layout (and in archives written from it).
pub const TAG: &str = "test";

/// Version of the recipe: bumped whenever the image's contents change, so
/// that callers caching the image can name their caches after it. (`cargo
/// xtask` caches `test-images/busybox-v<N>.oci.tar`, a name the
/// `cold_start` benchmark spells out.)
pub const RECIPE_VERSION: u32 = 2;

/// Where the recipe expects a static busybox on a test host.
pub const DEFAULT_BUSYBOX: &str = "/bin/busybox";

/// Directories created in the image (parents included).
const DIRS: [&str; 5] = ["bin", "etc", "home/app", "data/sub", "tmp"];
const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n";
const GROUP: &str = "root:x:0:\nwheel:x:10:app\napp:x:1000:\n";
/// `umoci config` arguments after `--image <ref>`.
const CONFIG: [&str; 16] = [
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
];

/// The busybox test image as an OCI image layout on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusyboxLayout {
    /// The OCI image layout directory.
    pub layout: PathBuf,
    /// The image's tag in the layout ([`TAG`]).
    pub tag: String,
}

impl BusyboxLayout {
    /// The image as umoci names it: `<layout>:<tag>`.
    pub fn umoci_ref(&self) -> String {
        format!("{}:{}", self.layout.display(), self.tag)
    }

    /// Writes the layout as an oci-archive (a tar of the layout directory)
    /// at `archive`, atomically: into a temporary file next to it, then
    /// renamed into place. The parent directory must exist.
    pub fn write_archive(&self, archive: &Path) -> io::Result<()> {
        let name = archive.file_name().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("archive path {} has no file name", archive.display()),
            )
        })?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp-{}", std::process::id()));
        let tmp = archive.with_file_name(tmp_name);
        let res = run(Command::new("tar")
            .arg("-C")
            .arg(&self.layout)
            .arg("-cf")
            .arg(&tmp)
            .arg("."))
        .and_then(|_| {
            fs::rename(&tmp, archive).map_err(|e| {
                context(
                    e,
                    format!("renaming {} to {}", tmp.display(), archive.display()),
                )
            })
        });
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res
    }

    /// Unpacks the image into a new runtime bundle at `bundle` with
    /// `umoci unpack`; returns its root filesystem (`<bundle>/rootfs`).
    pub fn unpack(&self, bundle: &Path) -> io::Result<PathBuf> {
        run(Command::new("umoci")
            .args(["unpack", "--image", &self.umoci_ref()])
            .arg(bundle))?;
        Ok(bundle.join("rootfs"))
    }
}

/// Builds the image once into `<scratch>/<name>-v<RECIPE_VERSION>` and
/// returns that directory: as it is when it already exists; otherwise the
/// layout is built ([`build_busybox_layout`]) in a temporary sibling,
/// `finish` adds what the caller needs next to it (an archive, an unpacked
/// bundle), and the sibling is renamed into place. Several processes may
/// race; the first rename wins and every copy is equally good, so a
/// complete directory is all anyone ever sees.
pub fn build_once(
    scratch: &Path,
    name: &str,
    finish: impl FnOnce(&Path, &BusyboxLayout) -> io::Result<()>,
) -> io::Result<PathBuf> {
    let done = scratch.join(format!("{name}-v{RECIPE_VERSION}"));
    if done.is_dir() {
        return Ok(done);
    }
    let tmp = scratch.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let res = build_busybox_layout(&tmp, Path::new(DEFAULT_BUSYBOX))
        .and_then(|image| finish(&tmp, &image));
    if res.is_ok() && fs::rename(&tmp, &done).is_ok() {
        return Ok(done);
    }
    let _ = fs::remove_dir_all(&tmp);
    res.and_then(|()| {
        if done.is_dir() {
            Ok(done)
        } else {
            Err(io::Error::other(format!(
                "could not move the test image into {}",
                done.display()
            )))
        }
    })
}

/// Builds the busybox test image (see the [module docs](self)) as an OCI
/// layout at `<work>/layout`, copying the static busybox at `busybox`
/// (usually [`DEFAULT_BUSYBOX`]).
///
/// `work` is created if needed and must not already hold `layout` or
/// `scratch`; the scratch bundle used to build the layer is removed again.
/// Errors name the step or command that failed, with the command's stderr.
pub fn build_busybox_layout(work: &Path, busybox: &Path) -> io::Result<BusyboxLayout> {
    fs::create_dir_all(work).map_err(|e| context(e, format!("creating {}", work.display())))?;
    let image = BusyboxLayout {
        layout: work.join("layout"),
        tag: TAG.to_owned(),
    };
    let umoci_ref = image.umoci_ref();
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&image.layout))?;
    run(Command::new("umoci").args(["new", "--image", &umoci_ref]))?;
    let scratch = work.join("scratch");
    let root = image.unpack(&scratch)?;
    fill_rootfs(&root, busybox)?;
    run(Command::new("umoci")
        .args(["repack", "--image", &umoci_ref])
        .arg(&scratch))?;
    fs::remove_dir_all(&scratch)
        .map_err(|e| context(e, format!("removing {}", scratch.display())))?;
    run(Command::new("umoci")
        .args(["config", "--image", &umoci_ref])
        .args(CONFIG))?;
    run(Command::new("umoci")
        .args(["gc", "--layout"])
        .arg(&image.layout))?;
    Ok(image)
}

/// Adds the image's files to the unpacked root filesystem `root`.
fn fill_rootfs(root: &Path, busybox: &Path) -> io::Result<()> {
    for d in DIRS {
        let p = root.join(d);
        fs::create_dir_all(&p).map_err(|e| context(e, format!("creating {}", p.display())))?;
    }
    let bin = root.join("bin");
    fs::copy(busybox, bin.join("busybox"))
        .map_err(|e| context(e, format!("copying {} into the image", busybox.display())))?;
    let home = root.join("home/app");
    std::os::unix::fs::chown(&home, Some(1000), Some(1000))
        .map_err(|e| context(e, format!("chown 1000:1000 {}", home.display())))?;
    let list = run(Command::new(busybox).arg("--list"))?;
    let list = String::from_utf8(list).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("`{} --list` printed non-UTF-8", busybox.display()),
        )
    })?;
    for applet in list.lines().filter(|a| !a.is_empty() && *a != "busybox") {
        std::os::unix::fs::symlink("busybox", bin.join(applet))
            .map_err(|e| context(e, format!("linking applet {applet}")))?;
    }
    for (file, text) in [("etc/passwd", PASSWD), ("etc/group", GROUP)] {
        fs::write(root.join(file), text).map_err(|e| context(e, format!("writing /{file}")))?;
    }
    Ok(())
}

/// Runs `cmd` with stdin closed, returning its stdout; an error names the
/// command and carries its stderr.
fn run(cmd: &mut Command) -> io::Result<Vec<u8>> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| context(e, format!("running `{}`", show(cmd))))?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    Err(io::Error::other(format!(
        "`{}` failed ({}): {}",
        show(cmd),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// Renders a command for messages.
fn show(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Prefixes an I/O error's message with what was being done, keeping its
/// kind.
fn context(e: io::Error, what: String) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Writes, as an OCI image layout at `out` tagged [`TAG`], an image
/// derived from the [`TAG`] image of the oci-archive `base`: its layers,
/// then one more layer holding `files` (path, contents; mode 0644, owned
/// by root; parent directories must exist below), with the config's Cmd
/// set to `cmd`. The new image has a config, and so an id, of its own,
/// and shares the base's layers; no tool beyond this crate is needed.
pub fn write_derived_layout(
    base: &Path,
    out: &Path,
    files: &[(&str, &[u8])],
    cmd: &[&str],
) -> io::Result<()> {
    use sha2::{Digest as _, Sha256};
    let other = |e: crate::SourceError| io::Error::other(e.to_string());
    let img = crate::ImageSource::OciArchive {
        path: base.to_owned(),
    }
    .open(
        Some(TAG),
        &crate::Platform::default(),
        &crate::Limits::default(),
    )
    .map_err(other)?;
    let blobs = out.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(|e| context(e, format!("creating {}", blobs.display())))?;
    let put = |data: &[u8]| -> io::Result<(String, usize)> {
        let hex = hex::encode(Sha256::digest(data));
        fs::write(blobs.join(&hex), data).map_err(|e| context(e, format!("writing blob {hex}")))?;
        Ok((format!("sha256:{hex}"), data.len()))
    };
    let mut layers = Vec::new();
    for i in 0..img.layers().len() {
        let mut data = Vec::new();
        io::Read::read_to_end(&mut img.open_layer(i).map_err(other)?, &mut data)?;
        let media = match data.get(..2) {
            Some([0x1f, 0x8b]) => "application/vnd.oci.image.layer.v1.tar+gzip",
            _ => "application/vnd.oci.image.layer.v1.tar",
        };
        let (digest, size) = put(&data)?;
        layers.push(serde_json::json!({"mediaType": media, "digest": digest, "size": size}));
    }
    let mut tar = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, path.trim_start_matches('/'), *data)?;
    }
    let layer = tar.into_inner()?;
    let (layer_digest, layer_size) = put(&layer)?;
    layers.push(serde_json::json!({
        "mediaType": "application/vnd.oci.image.layer.v1.tar",
        "digest": layer_digest,
        "size": layer_size,
    }));
    let mut config: serde_json::Value = serde_json::from_slice(img.config_json())
        .map_err(|e| io::Error::other(format!("the base image's config: {e}")))?;
    config["config"]["Cmd"] = serde_json::json!(cmd);
    if let Some(ids) = config["rootfs"]["diff_ids"].as_array_mut() {
        ids.push(serde_json::json!(layer_digest));
    }
    let (config_digest, config_size) = put(&serde_json::to_vec(&config)?)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": layers,
    });
    let (manifest_digest, manifest_size) = put(&serde_json::to_vec(&manifest)?)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": TAG},
        }],
    });
    fs::write(out.join("index.json"), serde_json::to_vec(&index)?)?;
    fs::write(out.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(())
}
