//! The shared tree: a 256 MiB file, a tar of 3,000 small files, and the
//! EROFS image of the same for the block reference.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{DIRS, FILES_PER_DIR, FILE_MIB};

/// Writes `read.bin` and `files.tar` into `dir`; also unpacks the tar
/// into `tree_root` (the EROFS image's tree) when given.
pub fn prepare(dir: &Path, tree_root: Option<&Path>) {
    let mut f = std::fs::File::create(dir.join("read.bin")).unwrap();
    let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8 | 1).collect();
    for _ in 0..FILE_MIB {
        f.write_all(&chunk).unwrap();
    }
    f.sync_all().unwrap();
    let tar_path = dir.join("files.tar");
    let mut tar = tar::Builder::new(std::io::BufWriter::new(
        std::fs::File::create(&tar_path).unwrap(),
    ));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = |path: &str, size: u64, dir: bool| {
        let mut h = tar::Header::new_gnu();
        h.set_path(path).unwrap();
        h.set_size(size);
        h.set_mode(if dir { 0o755 } else { 0o644 });
        h.set_entry_type(if dir {
            tar::EntryType::Directory
        } else {
            tar::EntryType::Regular
        });
        h.set_mtime(now);
        h.set_cksum();
        h
    };
    tar.append(&header("tree/", 0, true), std::io::empty())
        .unwrap();
    for d in 0..DIRS {
        tar.append(
            &header(&format!("tree/d{d:02}/"), 0, true),
            std::io::empty(),
        )
        .unwrap();
        for i in 0..FILES_PER_DIR {
            let n = d * FILES_PER_DIR + i;
            let size = 64 + (n * 977) % 4033;
            let data: Vec<u8> = (0..size).map(|b| (b + n) as u8).collect();
            tar.append(
                &header(&format!("tree/d{d:02}/f{n:04}"), size as u64, false),
                &data[..],
            )
            .unwrap();
        }
    }
    tar.into_inner().unwrap().flush().unwrap();
    if let Some(root) = tree_root {
        tar::Archive::new(std::fs::File::open(&tar_path).unwrap())
            .unpack(root)
            .unwrap();
        std::fs::hard_link(dir.join("read.bin"), root.join("read.bin")).unwrap();
    }
}

/// Makes an EROFS image of `tree` with `mkfs.erofs`, if it is installed.
pub fn erofs_image(tree: &Path, image: &Path) -> Option<PathBuf> {
    let out = Command::new("mkfs.erofs")
        .arg(image)
        .arg(tree)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    match out {
        Ok(o) if o.status.success() => Some(image.to_path_buf()),
        Ok(o) => {
            eprintln!(
                "erofs reference skipped: mkfs.erofs failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            None
        }
        Err(e) => {
            eprintln!("erofs reference skipped: cannot run mkfs.erofs: {e}");
            None
        }
    }
}
