//! The passthrough behind the FUSE server, against a temporary share with
//! canary files next to it.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::*;
use crate::fs::fuse::encode;
use crate::fs::fuse::{self, SetattrIn, ROOT_ID};
use crate::fs::test_client::Client;

pub(super) struct Share {
    _tmp: tempfile::TempDir,
    pub(super) root: PathBuf,
    pub(super) outside: PathBuf,
}

impl Share {
    pub(super) fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("share");
        let outside = tmp.path().join("outside");
        fs::create_dir(&root).unwrap();
        fs::create_dir_all(outside.join("dir")).unwrap();
        fs::write(outside.join("canary"), b"do not touch").unwrap();
        fs::set_permissions(outside.join("canary"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(outside.join("dir/canary"), b"nor this").unwrap();
        Self {
            _tmp: tmp,
            root,
            outside,
        }
    }

    pub(super) fn client(&self) -> Client<PassthroughFs> {
        self.client_with(|c| c)
    }

    pub(super) fn client_with(
        &self,
        f: impl FnOnce(PassthroughConfig) -> PassthroughConfig,
    ) -> Client<PassthroughFs> {
        let cfg = f(PassthroughConfig::new(&self.root));
        Client::new(Box::new(PassthroughFs::new(cfg).unwrap()))
    }

    pub(super) fn read_only_client(&self) -> Client<ReadOnly<PassthroughFs>> {
        let fs = PassthroughFs::new(PassthroughConfig::new(&self.root)).unwrap();
        Client::new(Box::new(ReadOnly(fs)))
    }

    pub(super) fn path(&self, p: &str) -> PathBuf {
        self.root.join(p)
    }
}

/// Every entry under `dir` with its type, mode, owner, size, content
/// (files), target (symlinks) and mtime.
pub(super) fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let detail = if m.file_type().is_symlink() {
                format!("-> {:?}", fs::read_link(&p).unwrap())
            } else if m.is_dir() {
                todo.push(p.clone());
                String::new()
            } else {
                format!("{:?}", fs::read(&p).unwrap())
            };
            let x = xattr_names(&p);
            let line = format!(
                "{:o} {}:{} {} {} {detail} {x:?}",
                m.mode(),
                m.uid(),
                m.gid(),
                m.len(),
                m.mtime()
            );
            out.insert(p, line);
        }
    }
    out
}

fn xattr_names(p: &Path) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    // There is no llistxattr wrapper: list through the /proc entry of an
    // O_PATH fd of the entry itself.
    let fd = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
        .open(p);
    match fd {
        Ok(f) => {
            let path = PassthroughFs::proc_path(f.as_fd());
            let n = sys::listxattr(&path, &mut buf).unwrap_or(0);
            buf.truncate(n);
            buf
        }
        Err(_) => Vec::new(),
    }
}

pub(super) const S_IFMT: u32 = libc::S_IFMT;

pub(super) fn chmod(mode: u32) -> SetattrIn {
    SetattrIn {
        valid: fuse::fattr::MODE,
        mode,
        ..Default::default()
    }
}

/// A v2 `security.capability` value granting `CAP_NET_BIND_SERVICE`.
pub(super) const FILE_CAPS: [u8; 20] = [1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

mod ops;
mod safety;
