//! Shared helpers for the integration tests: tree snapshots, tar crafting,
//! OCI layouts written by hand, and images built with umoci/skopeo.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest as _, Sha256};

pub mod registry;

/// One file's observable state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub content: String,
    pub mtime: Option<i64>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// First path (sorted) sharing this inode, for hardlinked files.
    pub link_group: Option<String>,
}

fn xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; 65536];
    // SAFETY: `c` is NUL-terminated and `buf` is writable for its length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    let mut out = BTreeMap::new();
    if n <= 0 {
        return out;
    }
    for name in buf[..n as usize]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
    {
        let cname = CString::new(name).unwrap();
        let mut val = vec![0u8; 65536];
        // SAFETY: both strings are NUL-terminated and `val` is writable for its length.
        let m = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                val.as_mut_ptr().cast(),
                val.len(),
            )
        };
        if m >= 0 {
            val.truncate(m as usize);
            out.insert(String::from_utf8_lossy(name).into_owned(), val);
        }
    }
    out
}

/// Snapshot of a tree: relative path -> node. Directory mtimes are left out
/// (they depend on when later layers removed entries).
pub fn snapshot(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<String>> = BTreeMap::new();
    walk(root, root, &mut out, &mut inodes);
    for paths in inodes.values() {
        if paths.len() > 1 {
            let first = paths.iter().min().unwrap().clone();
            for p in paths {
                out.get_mut(p).unwrap().link_group = Some(first.clone());
            }
        }
    }
    out
}

fn walk(
    root: &Path,
    dir: &Path,
    out: &mut BTreeMap<String, Node>,
    inodes: &mut BTreeMap<(u64, u64), Vec<String>>,
) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let md = fs::symlink_metadata(&p).unwrap();
        let ft = md.file_type();
        let (kind, content, mtime) = if ft.is_dir() {
            ("dir", String::new(), None)
        } else if ft.is_symlink() {
            (
                "symlink",
                fs::read_link(&p).unwrap().to_string_lossy().into_owned(),
                Some(md.mtime()),
            )
        } else if ft.is_file() {
            let data = fs::read(&p).unwrap();
            ("file", hex::encode(Sha256::digest(&data)), Some(md.mtime()))
        } else if ft.is_char_device() {
            ("char", format!("{}", md.rdev()), Some(md.mtime()))
        } else if ft.is_block_device() {
            ("block", format!("{}", md.rdev()), Some(md.mtime()))
        } else {
            ("fifo", String::new(), Some(md.mtime()))
        };
        if ft.is_file() && md.nlink() > 1 {
            inodes
                .entry((md.dev(), md.ino()))
                .or_default()
                .push(rel.clone());
        }
        out.insert(
            rel,
            Node {
                kind: kind.into(),
                mode: if ft.is_symlink() {
                    0
                } else {
                    md.mode() & 0o7777
                },
                uid: md.uid(),
                gid: md.gid(),
                content,
                mtime,
                xattrs: xattrs(&p),
                link_group: None,
            },
        );
        if ft.is_dir() {
            walk(root, &p, out, inodes);
        }
    }
}

/// Runs a command, panicking with its output if it fails or is missing.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (the test needs umoci, skopeo, tar, erofs-utils)")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: both strings are NUL-terminated and `value` is readable for its length.
    let rc = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "setxattr {name} on {p:?}: {}",
        std::io::Error::last_os_error()
    );
}

pub fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

pub fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// The test image built with real tools.
pub struct TestImage {
    pub dir: PathBuf,
    pub layout: PathBuf,
    pub oci_archive: PathBuf,
    pub docker_archive: PathBuf,
    pub tag: &'static str,
    pub docker_ref: &'static str,
}

/// Builds a three-layer image with umoci (two `repack`ed layers, one
/// `raw add-layer` tar made by GNU tar holding an opaque marker), converts it
/// with skopeo to an OCI archive and a docker archive.
///
/// Layer 1: busybox, a symlink, a hardlink, an absolute symlink, a setuid
/// file, an xattr, a non-root home; files to be deleted later.
/// Layer 2: deletes a file and a whole directory, adds a file and a
/// hardlink to a lower-layer file.
/// Layer 3: makes `data` opaque (dropping `data/old`) and adds `data/fresh`.
pub fn build_test_image(dir: &Path) -> TestImage {
    let layout = dir.join("layout");
    let tag = "t";
    let img = format!("{}:{tag}", layout.display());
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &img]));

    let b1 = dir.join("b1");
    run(Command::new("umoci")
        .args(["unpack", "--image", &img])
        .arg(&b1));
    let r = b1.join("rootfs");
    for d in ["bin", "etc", "data/old", "home/user", "gone/deep"] {
        fs::create_dir_all(r.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", r.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", r.join("bin/sh")).unwrap();
    fs::hard_link(r.join("bin/busybox"), r.join("bin/ls")).unwrap();
    std::os::unix::fs::symlink("/bin/busybox", r.join("etc/abs")).unwrap();
    fs::write(r.join("bin/suid"), b"#!/bin/sh\n").unwrap();
    chmod(&r.join("bin/suid"), 0o4755);
    fs::write(r.join("etc/motd"), b"hello\n").unwrap();
    set_xattr(&r.join("etc/motd"), "user.note", b"kept");
    fs::write(r.join("etc/deleteme"), b"bye\n").unwrap();
    fs::write(r.join("data/old/a"), b"a\n").unwrap();
    fs::write(r.join("data/keep-not"), b"k\n").unwrap();
    fs::write(r.join("gone/deep/x"), b"x\n").unwrap();
    fs::write(r.join("home/user/profile"), b"export X=1\n").unwrap();
    chown(&r.join("home/user"), 1000, 1000);
    chown(&r.join("home/user/profile"), 1000, 1000);
    chmod(&r.join("home/user"), 0o750);
    chmod(&r.join("home/user/profile"), 0o640);
    run(Command::new("umoci")
        .args(["repack", "--image", &img])
        .arg(&b1));

    let b2 = dir.join("b2");
    run(Command::new("umoci")
        .args(["unpack", "--image", &img])
        .arg(&b2));
    let r = b2.join("rootfs");
    fs::remove_file(r.join("etc/deleteme")).unwrap();
    fs::remove_dir_all(r.join("gone")).unwrap();
    fs::write(r.join("etc/new"), b"new\n").unwrap();
    fs::hard_link(r.join("etc/motd"), r.join("etc/motd.link")).unwrap();
    run(Command::new("umoci")
        .args(["repack", "--image", &img])
        .arg(&b2));

    let l3 = dir.join("l3");
    fs::create_dir_all(l3.join("data")).unwrap();
    fs::write(l3.join("data/.wh..wh..opq"), b"").unwrap();
    fs::write(l3.join("data/fresh"), b"fresh\n").unwrap();
    let l3tar = dir.join("l3.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&l3)
        .args([
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--no-recursion",
            "-cf",
        ])
        .arg(&l3tar)
        .args(["data", "data/.wh..wh..opq", "data/fresh"]));
    run(Command::new("umoci")
        .args(["raw", "add-layer", "--image", &img])
        .arg(&l3tar));

    run(Command::new("umoci").args([
        "config",
        "--image",
        &img,
        "--config.user",
        "1000:1000",
        "--config.workingdir",
        "/home/user",
        "--config.entrypoint",
        "/bin/sh",
        "--config.cmd",
        "-c",
        "--config.cmd",
        "echo hi",
        "--config.env",
        "GREETING=hello",
        "--config.exposedports",
        "8080/tcp",
        "--config.volume",
        "/data",
        "--config.stopsignal",
        "SIGQUIT",
    ]));

    let oci_archive = dir.join("img.oci.tar");
    let docker_archive = dir.join("img.docker.tar");
    let docker_ref = "example/img:t";
    run(Command::new("skopeo")
        .args(["--insecure-policy", "copy", "-q", &format!("oci:{img}")])
        .arg(format!("oci-archive:{}:{tag}", oci_archive.display())));
    run(Command::new("skopeo")
        .args(["--insecure-policy", "copy", "-q", &format!("oci:{img}")])
        .arg(format!(
            "docker-archive:{}:{docker_ref}",
            docker_archive.display()
        )));
    TestImage {
        dir: dir.to_owned(),
        layout,
        oci_archive,
        docker_archive,
        tag,
        docker_ref,
    }
}

/// Mounts an EROFS image read-only on a fresh directory; unmounts on drop.
pub struct Mount(pub PathBuf);

impl Mount {
    pub fn erofs(image: &Path, at: &Path) -> Mount {
        fs::create_dir_all(at).unwrap();
        run(Command::new("mount")
            .args(["-t", "erofs", "-o", "loop,ro"])
            .arg(image)
            .arg(at));
        Mount(at.to_owned())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

// ---- hand-made tars and layouts ----

/// A ustar header with a raw name (no validation), for crafting hostile entries.
pub fn header(name: &[u8], kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    {
        let u = h.as_ustar_mut().unwrap();
        u.name = [0; 100];
        u.name[..name.len()].copy_from_slice(name);
    }
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_mtime(1_000_000);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    h
}

/// A link header (symlink or hardlink) with raw name and target.
pub fn link_header(name: &[u8], kind: tar::EntryType, target: &[u8]) -> tar::Header {
    let mut h = header(name, kind, 0);
    {
        let u = h.as_ustar_mut().unwrap();
        u.linkname = [0; 100];
        u.linkname[..target.len()].copy_from_slice(target);
    }
    h.set_cksum();
    h
}

/// PAX extended header data from records.
pub fn pax(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in records {
        let body_len = 1 + k.len() + 1 + v.len() + 1;
        let mut len = body_len + 1;
        while len.to_string().len() + body_len != len {
            len = len.to_string().len() + body_len;
        }
        out.extend_from_slice(format!("{len} {k}=").as_bytes());
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    out
}

/// Builds a tar from (header, data) pairs.
pub fn tar_of(entries: Vec<(tar::Header, Vec<u8>)>) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (h, d) in entries {
        b.append(&h, &d[..]).unwrap();
    }
    b.into_inner().unwrap()
}

pub fn file(name: &str, data: &[u8]) -> (tar::Header, Vec<u8>) {
    (
        header(name.as_bytes(), tar::EntryType::Regular, data.len() as u64),
        data.to_vec(),
    )
}

pub fn dir_entry(name: &str) -> (tar::Header, Vec<u8>) {
    (
        header(name.as_bytes(), tar::EntryType::Directory, 0),
        Vec::new(),
    )
}

pub fn symlink(name: &str, target: &str) -> (tar::Header, Vec<u8>) {
    (
        link_header(name.as_bytes(), tar::EntryType::Symlink, target.as_bytes()),
        Vec::new(),
    )
}

pub fn hardlink(name: &str, target: &str) -> (tar::Header, Vec<u8>) {
    (
        link_header(name.as_bytes(), tar::EntryType::Link, target.as_bytes()),
        Vec::new(),
    )
}

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Writes a one-image OCI layout holding the given (uncompressed-digest,
/// blob) layers; returns the layout path. `tweak` may edit the manifest
/// and config JSON before they are written.
pub fn write_layout(
    dir: &Path,
    layers: &[(Vec<u8>, Vec<u8>)],
    tweak: impl FnOnce(&mut serde_json::Value, &mut serde_json::Value),
) -> PathBuf {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| {
        let d = sha256(data);
        fs::write(blobs.join(&d[7..]), data).unwrap();
        d
    };
    let mut config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|(plain, _)| sha256(plain)).collect::<Vec<_>>()}
    });
    let mut manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "", "size": 0},
        "layers": layers.iter().map(|(_, blob)| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": put(blob), "size": blob.len()})).collect::<Vec<_>>()
    });
    tweak(&mut manifest, &mut config);
    let cfg = serde_json::to_vec(&config).unwrap();
    if manifest["config"]["digest"] == "" {
        manifest["config"]["digest"] = put(&cfg).into();
        manifest["config"]["size"] = cfg.len().into();
    }
    let man = serde_json::to_vec(&manifest).unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": put(&man), "size": man.len(),
            "annotations": {"org.opencontainers.image.ref.name": "latest"}}]
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    dir.to_owned()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Names of entries in a directory (sorted), empty if it does not exist.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}
