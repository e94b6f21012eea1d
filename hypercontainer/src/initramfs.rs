//! `newc` cpio archives for the guest's initramfs.
//!
//! [`CpioWriter`] streams an archive in the "new ASCII" (`newc`, magic
//! `070701`) format the Linux kernel unpacks as its initramfs, into any
//! [`io::Write`]. Entries are written in the order they are added; the
//! archive ends with the `TRAILER!!!` entry written by
//! [`CpioWriter::finish`].
//!
//! Paths:
//! - are stored relative to the archive root: a leading `/` is accepted and
//!   dropped, repeated `/` are collapsed;
//! - must not be empty (or only `/`), contain NUL bytes, or have `.` or `..`
//!   components;
//! - parent directories are **created implicitly** (mode `0755`, owner
//!   `0:0`, the writer's default mtime) the first time a path below them is
//!   added; adding an explicit directory entry later is allowed and sets its
//!   metadata;
//! - a path below a file, symlink or device already in the archive is
//!   rejected, as is adding any non-directory path twice.
//!
//! The writer does not buffer: hand it a [`io::BufWriter`] for files.
//!
//! ```
//! use hypercontainer::initramfs::{CpioWriter, Metadata};
//!
//! let mut cpio = CpioWriter::new(Vec::new());
//! cpio.char_device("/dev/console", Metadata::new(0o600), 5, 1)?
//!     .file("/init", Metadata::new(0o755), b"#!/bin/sh\necho hello\n")?
//!     .symlink("/bin/sh", "busybox", Metadata::new(0o777))?;
//! let archive: Vec<u8> = cpio.finish()?;
//! assert!(archive.starts_with(b"070701"));
//! # Ok::<(), hypercontainer::initramfs::InitramfsError>(())
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;
const TRAILER: &str = "TRAILER!!!";
const HEADER_LEN: u64 = 110;

/// Errors writing a cpio archive.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// An entry's path is not acceptable.
    #[error("invalid archive path {path:?}: {reason}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A path is below an entry that is not a directory.
    #[error("{path:?} is below {parent:?}, which is not a directory")]
    NotADirectory {
        /// The path being added.
        path: String,
        /// Its ancestor that is a file, symlink or device.
        parent: String,
    },
    /// A non-directory path was added twice, or a directory over a file.
    #[error("{0:?} is already in the archive")]
    Duplicate(String),
    /// A file or symlink target does not fit the format's 32-bit size field.
    #[error("{path:?} is {size} bytes, over the 4 GiB newc limit")]
    TooLarge {
        /// The entry's path.
        path: String,
        /// Its size.
        size: u64,
    },
    /// A streamed file ended before or grew past its announced size.
    #[error("{path:?} changed size while being archived (announced {expected} bytes)")]
    SizeChanged {
        /// The entry's path.
        path: String,
        /// The size written in the header.
        expected: u64,
    },
    /// Reading a host file failed.
    #[error("reading {}", .path.display())]
    Source {
        /// The host file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Writing the archive failed.
    #[error("writing the archive")]
    Write(#[source] io::Error),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, InitramfsError>;

/// Permission bits, owner and modification time of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metadata {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Option<u32>,
}

impl Metadata {
    /// Permission bits (`0o7777` at most; the file type is set by the entry
    /// kind), owner `0:0`, the writer's default mtime.
    pub fn new(perm: u32) -> Self {
        Metadata {
            mode: perm & 0o7777,
            uid: 0,
            gid: 0,
            mtime: None,
        }
    }

    /// Sets the owner's user id.
    pub fn uid(mut self, uid: u32) -> Self {
        self.uid = uid;
        self
    }

    /// Sets the owner's group id.
    pub fn gid(mut self, gid: u32) -> Self {
        self.gid = gid;
        self
    }

    /// Sets the modification time (seconds since the epoch).
    pub fn mtime(mut self, mtime: u32) -> Self {
        self.mtime = Some(mtime);
        self
    }

    /// The permission bits.
    pub fn perm(&self) -> u32 {
        self.mode
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    Other,
}

/// A streaming writer of `newc` cpio archives. See the [module docs](self).
#[derive(Debug)]
pub struct CpioWriter<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
    default_mtime: u32,
    entries: HashMap<String, Kind>,
}

impl<W: Write> CpioWriter<W> {
    /// Starts an archive written to `out`. The default mtime is 0.
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            written: 0,
            next_ino: 1,
            default_mtime: 0,
            entries: HashMap::new(),
        }
    }

    /// Sets the mtime used for entries whose [`Metadata`] has none, and for
    /// implicitly created directories.
    pub fn default_mtime(mut self, mtime: u32) -> Self {
        self.default_mtime = mtime;
        self
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Adds a directory.
    pub fn dir(&mut self, path: impl AsRef<str>, meta: Metadata) -> Result<&mut Self> {
        let name = self.prepare(path.as_ref(), Kind::Dir)?;
        self.header(&name, S_IFDIR | meta.mode, &meta, 2, 0, (0, 0))?;
        self.entries.insert(name, Kind::Dir);
        Ok(self)
    }

    /// Adds a regular file with the given contents.
    pub fn file(
        &mut self,
        path: impl AsRef<str>,
        meta: Metadata,
        data: &[u8],
    ) -> Result<&mut Self> {
        self.file_from_reader(path, meta, data.len() as u64, data)
    }

    /// Adds a regular file whose contents are streamed from a host file.
    /// The host file's permission bits are not used: `meta` decides.
    pub fn file_from_path(
        &mut self,
        path: impl AsRef<str>,
        meta: Metadata,
        host: impl AsRef<Path>,
    ) -> Result<&mut Self> {
        let host = host.as_ref();
        let source = |source| InitramfsError::Source {
            path: host.to_path_buf(),
            source,
        };
        let file = File::open(host).map_err(source)?;
        let len = file.metadata().map_err(source)?.len();
        self.copy_in(path.as_ref(), meta, len, file, host)
    }

    /// Adds a regular file of exactly `len` bytes read from `reader`.
    ///
    /// The reader must deliver exactly `len` bytes, else the archive is
    /// left truncated and [`InitramfsError::SizeChanged`] is returned.
    pub fn file_from_reader(
        &mut self,
        path: impl AsRef<str>,
        meta: Metadata,
        len: u64,
        reader: impl Read,
    ) -> Result<&mut Self> {
        self.copy_in(path.as_ref(), meta, len, reader, Path::new("<reader>"))
    }

    fn copy_in(
        &mut self,
        path: &str,
        meta: Metadata,
        len: u64,
        mut reader: impl Read,
        source: &Path,
    ) -> Result<&mut Self> {
        let name = self.prepare(path, Kind::Other)?;
        let size = u32::try_from(len).map_err(|_| InitramfsError::TooLarge {
            path: name.clone(),
            size: len,
        })?;
        self.header(&name, S_IFREG | meta.mode, &meta, 1, size, (0, 0))?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = len;
        loop {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            // Read one byte past the end to notice a source that grew.
            let want = if left == 0 { 1 } else { want };
            let n = match reader.read(&mut buf[..want]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(InitramfsError::Source {
                        path: source.to_path_buf(),
                        source: e,
                    })
                }
            };
            if n == 0 && left == 0 {
                break;
            }
            if n == 0 || left == 0 {
                return Err(InitramfsError::SizeChanged {
                    path: name,
                    expected: len,
                });
            }
            self.put(&buf[..n])?;
            left -= n as u64;
        }
        self.pad()?;
        self.entries.insert(name, Kind::Other);
        Ok(self)
    }

    /// Adds a symbolic link pointing at `target` (stored as given).
    pub fn symlink(
        &mut self,
        path: impl AsRef<str>,
        target: impl AsRef<str>,
        meta: Metadata,
    ) -> Result<&mut Self> {
        let target = target.as_ref();
        if target.is_empty() || target.contains('\0') {
            return Err(InitramfsError::InvalidPath {
                path: target.to_string(),
                reason: "a symlink target must be non-empty and free of NUL bytes",
            });
        }
        let name = self.prepare(path.as_ref(), Kind::Other)?;
        let size = u32::try_from(target.len()).map_err(|_| InitramfsError::TooLarge {
            path: name.clone(),
            size: target.len() as u64,
        })?;
        self.header(&name, S_IFLNK | meta.mode, &meta, 1, size, (0, 0))?;
        self.put(target.as_bytes())?;
        self.pad()?;
        self.entries.insert(name, Kind::Other);
        Ok(self)
    }

    /// Adds a character device node (e.g. `/dev/console`, major 5 minor 1).
    pub fn char_device(
        &mut self,
        path: impl AsRef<str>,
        meta: Metadata,
        major: u32,
        minor: u32,
    ) -> Result<&mut Self> {
        let name = self.prepare(path.as_ref(), Kind::Other)?;
        self.header(&name, S_IFCHR | meta.mode, &meta, 1, 0, (major, minor))?;
        self.entries.insert(name, Kind::Other);
        Ok(self)
    }

    /// Writes the trailer and returns the underlying writer (flushed).
    pub fn finish(mut self) -> Result<W> {
        let meta = Metadata::new(0).mtime(0);
        self.write_header(TRAILER, 0, 0, &meta, 1, 0, (0, 0))?;
        self.out.flush().map_err(InitramfsError::Write)?;
        Ok(self.out)
    }

    /// Validates and normalizes `path`, creating missing parents.
    fn prepare(&mut self, path: &str, kind: Kind) -> Result<String> {
        let name = normalize(path)?;
        match (self.entries.get(&name), kind) {
            (None, _) | (Some(Kind::Dir), Kind::Dir) => {}
            (Some(_), _) => return Err(InitramfsError::Duplicate(name)),
        }
        let mut parent = String::new();
        let comps: Vec<&str> = name.split('/').collect();
        for comp in &comps[..comps.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(comp);
            match self.entries.get(&parent) {
                Some(Kind::Dir) => {}
                Some(Kind::Other) => {
                    return Err(InitramfsError::NotADirectory { path: name, parent })
                }
                None => {
                    let meta = Metadata::new(0o755);
                    self.header(&parent, S_IFDIR | 0o755, &meta, 2, 0, (0, 0))?;
                    self.entries.insert(parent.clone(), Kind::Dir);
                }
            }
        }
        Ok(name)
    }

    fn header(
        &mut self,
        name: &str,
        mode: u32,
        meta: &Metadata,
        nlink: u32,
        size: u32,
        rdev: (u32, u32),
    ) -> Result<()> {
        let ino = self.next_ino;
        self.next_ino = self.next_ino.wrapping_add(1).max(1);
        self.write_header(name, ino, mode, meta, nlink, size, rdev)
    }

    #[allow(clippy::too_many_arguments)]
    fn write_header(
        &mut self,
        name: &str,
        ino: u32,
        mode: u32,
        meta: &Metadata,
        nlink: u32,
        size: u32,
        rdev: (u32, u32),
    ) -> Result<()> {
        let mtime = meta.mtime.unwrap_or(self.default_mtime);
        let namesize = name.len() as u64 + 1;
        let fields = [
            ino,
            mode,
            meta.uid,
            meta.gid,
            nlink,
            mtime,
            size,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            namesize as u32,
            0, // check
        ];
        let mut header = String::with_capacity(HEADER_LEN as usize);
        header.push_str("070701");
        for f in fields {
            header.push_str(&format!("{f:08X}"));
        }
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).map_err(InitramfsError::Write)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> Result<()> {
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..pad])
    }
}

/// Normalizes an archive path (see the module docs for the rules).
pub fn normalize(path: &str) -> Result<String> {
    let invalid = |reason| InitramfsError::InvalidPath {
        path: path.to_string(),
        reason,
    };
    if path.contains('\0') {
        return Err(invalid("contains a NUL byte"));
    }
    let mut comps = Vec::new();
    for comp in path.split('/') {
        match comp {
            "" => {}
            "." | ".." => return Err(invalid("`.` and `..` components are not allowed")),
            c => comps.push(c),
        }
    }
    if comps.is_empty() {
        return Err(invalid("empty path"));
    }
    let name = comps.join("/");
    if name == TRAILER {
        return Err(invalid("reserved for the archive trailer"));
    }
    Ok(name)
}

/// One entry read back from a `newc` archive (for tests and inspection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedEntry {
    /// Path inside the archive.
    pub name: String,
    /// Full mode (type and permission bits).
    pub mode: u32,
    /// Owner's user id.
    pub uid: u32,
    /// Owner's group id.
    pub gid: u32,
    /// Modification time.
    pub mtime: u32,
    /// Device numbers for device nodes.
    pub rdev: (u32, u32),
    /// File contents or symlink target.
    pub data: Vec<u8>,
}

impl ParsedEntry {
    /// Whether the entry is a directory.
    pub fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }
}

/// Parses a `newc` archive up to its trailer. Hostile input gives an error,
/// never a panic.
pub fn parse(archive: &[u8]) -> std::result::Result<BTreeMap<String, ParsedEntry>, String> {
    let mut pos = 0usize;
    let mut out = BTreeMap::new();
    let field = |buf: &[u8], i: usize| -> std::result::Result<u32, String> {
        let s = std::str::from_utf8(&buf[6 + i * 8..14 + i * 8]).map_err(|e| e.to_string())?;
        u32::from_str_radix(s, 16).map_err(|e| format!("bad header field {s:?}: {e}"))
    };
    let align = |n: usize| n.div_ceil(4) * 4;
    loop {
        let hdr = archive
            .get(pos..pos + HEADER_LEN as usize)
            .ok_or("truncated header")?;
        if &hdr[..6] != b"070701" {
            return Err(format!("bad magic at offset {pos}"));
        }
        let namesize = field(hdr, 11)? as usize;
        let size = field(hdr, 6)? as usize;
        let name_start = pos + HEADER_LEN as usize;
        let name_bytes = archive
            .get(name_start..name_start + namesize)
            .ok_or("truncated name")?;
        let name = std::str::from_utf8(name_bytes.strip_suffix(b"\0").ok_or("name lacks NUL")?)
            .map_err(|e| e.to_string())?
            .to_string();
        let data_start = align(name_start + namesize);
        let data = archive
            .get(data_start..data_start + size)
            .ok_or("truncated data")?
            .to_vec();
        pos = align(data_start + size);
        if name == TRAILER {
            return Ok(out);
        }
        let entry = ParsedEntry {
            name: name.clone(),
            mode: field(hdr, 1)?,
            uid: field(hdr, 2)?,
            gid: field(hdr, 3)?,
            mtime: field(hdr, 5)?,
            rdev: (field(hdr, 9)?, field(hdr, 10)?),
            data,
        };
        out.insert(name, entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    use std::process::{Command, Stdio};

    fn sample() -> Vec<u8> {
        let mut w = CpioWriter::new(Vec::new()).default_mtime(1_700_000_000);
        w.dir("/dev", Metadata::new(0o755))
            .unwrap()
            .char_device("/dev/console", Metadata::new(0o600), 5, 1)
            .unwrap()
            .file(
                "/bin/hello.sh",
                Metadata::new(0o755).uid(1000).gid(100).mtime(42),
                b"#!/bin/sh\necho hi\n",
            )
            .unwrap()
            .symlink("/bin/sh", "busybox", Metadata::new(0o777))
            .unwrap()
            .file("etc/empty", Metadata::new(0o644), b"")
            .unwrap()
            .dir("etc/deep/er", Metadata::new(0o700))
            .unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn layout_is_newc() {
        let a = sample();
        assert_eq!(a.len() % 4, 0);
        assert!(a.starts_with(b"070701"));
        let t = a
            .windows(TRAILER.len())
            .rposition(|w| w == TRAILER.as_bytes())
            .unwrap();
        // The trailer name starts right after a 110-byte header.
        assert_eq!(
            &a[t - HEADER_LEN as usize..t - HEADER_LEN as usize + 6],
            b"070701"
        );
    }

    #[test]
    fn round_trip_through_parser() {
        let entries = parse(&sample()).unwrap();
        let names: Vec<&str> = entries.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/hello.sh",
                "bin/sh",
                "dev",
                "dev/console",
                "etc",
                "etc/deep",
                "etc/deep/er",
                "etc/empty"
            ]
        );
        let hello = &entries["bin/hello.sh"];
        assert_eq!(hello.mode, S_IFREG | 0o755);
        assert_eq!((hello.uid, hello.gid, hello.mtime), (1000, 100, 42));
        assert_eq!(hello.data, b"#!/bin/sh\necho hi\n");
        let console = &entries["dev/console"];
        assert_eq!(console.mode, S_IFCHR | 0o600);
        assert_eq!(console.rdev, (5, 1));
        assert_eq!(entries["bin/sh"].data, b"busybox");
        assert_eq!(entries["bin/sh"].mode & S_IFMT, S_IFLNK);
        assert!(entries["etc/deep"].is_dir());
        assert_eq!(entries["etc/deep"].mtime, 1_700_000_000);
        assert_eq!(entries["etc/deep/er"].mode, S_IFDIR | 0o700);
    }

    #[test]
    fn rejects_bad_names() {
        let mut w = CpioWriter::new(Vec::new());
        for bad in ["", "/", "//", "a/../b", "./a", "a\0b", "TRAILER!!!"] {
            assert!(
                matches!(
                    w.file(bad, Metadata::new(0o644), b""),
                    Err(InitramfsError::InvalidPath { .. })
                ),
                "{bad:?}"
            );
        }
        assert_eq!(normalize("//a///b/").unwrap(), "a/b");
        assert!(w.symlink("x", "", Metadata::new(0o777)).is_err());
    }

    #[test]
    fn rejects_duplicates_and_paths_below_files() {
        let mut w = CpioWriter::new(Vec::new());
        w.file("a", Metadata::new(0o644), b"x").unwrap();
        assert!(matches!(
            w.file("/a", Metadata::new(0o644), b"y"),
            Err(InitramfsError::Duplicate(_))
        ));
        assert!(matches!(
            w.dir("a", Metadata::new(0o755)),
            Err(InitramfsError::Duplicate(_))
        ));
        assert!(matches!(
            w.file("a/b", Metadata::new(0o644), b""),
            Err(InitramfsError::NotADirectory { .. })
        ));
        // Directories may be re-declared to set their metadata.
        w.file("d/f", Metadata::new(0o644), b"").unwrap();
        w.dir("d", Metadata::new(0o700)).unwrap();
        assert!(matches!(
            w.file("d", Metadata::new(0o644), b""),
            Err(InitramfsError::Duplicate(_))
        ));
    }

    #[test]
    fn reader_size_mismatch_is_an_error() {
        let mut w = CpioWriter::new(Vec::new());
        let short: &[u8] = b"abc";
        assert!(matches!(
            w.file_from_reader("f", Metadata::new(0o644), 4, short),
            Err(InitramfsError::SizeChanged { .. })
        ));
        let mut w = CpioWriter::new(Vec::new());
        let long: &[u8] = b"abcde";
        assert!(matches!(
            w.file_from_reader("f", Metadata::new(0o644), 4, long),
            Err(InitramfsError::SizeChanged { .. })
        ));
    }

    #[test]
    fn streams_host_files() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("blob");
        let data: Vec<u8> = (0..10_001u32).map(|i| (i * 7) as u8).collect();
        std::fs::write(&host, &data).unwrap();
        let mut w = CpioWriter::new(Vec::new());
        w.file_from_path("x/blob", Metadata::new(0o640), &host)
            .unwrap();
        assert!(matches!(
            w.file_from_path("y", Metadata::new(0o640), dir.path().join("missing")),
            Err(InitramfsError::Source { .. })
        ));
        let entries = parse(&w.finish().unwrap()).unwrap();
        assert_eq!(entries["x/blob"].data, data);
    }

    #[test]
    fn parser_rejects_garbage_without_panicking() {
        assert!(parse(b"").is_err());
        assert!(parse(b"070701zzzz").is_err());
        let mut a = sample();
        a.truncate(a.len() - 20);
        assert!(parse(&a).is_err());
        let mut a = sample();
        a[0] = b'1';
        assert!(parse(&a).is_err());
    }

    /// Extracts the archive with the system `cpio` (when installed) and
    /// compares the tree with what was written.
    #[test]
    fn system_cpio_extracts_the_same_tree() {
        let Ok(version) = Command::new("cpio").arg("--version").output() else {
            eprintln!("cpio is not installed: skipping the extraction check");
            return;
        };
        assert!(version.status.success());
        let dir = tempfile::tempdir().unwrap();
        let mut w = CpioWriter::new(Vec::new()).default_mtime(1_600_000_000);
        w.file(
            "bin/tool",
            Metadata::new(0o751).mtime(1_234_567_890),
            b"binary",
        )
        .unwrap()
        .symlink("bin/alias", "tool", Metadata::new(0o777))
        .unwrap()
        .file("srv/data/big", Metadata::new(0o600), &vec![0xa5; 70_001])
        .unwrap()
        .dir("empty", Metadata::new(0o710))
        .unwrap();
        let archive = w.finish().unwrap();
        let mut child = Command::new("cpio")
            .args(["-idm", "--quiet", "--no-absolute-filenames"])
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&archive).unwrap();
        assert!(child.wait().unwrap().success());

        let root = dir.path();
        let tool = std::fs::metadata(root.join("bin/tool")).unwrap();
        assert_eq!(std::fs::read(root.join("bin/tool")).unwrap(), b"binary");
        assert_eq!(tool.permissions().mode() & 0o7777, 0o751);
        assert_eq!(tool.mtime(), 1_234_567_890);
        assert_eq!(
            std::fs::read_link(root.join("bin/alias")).unwrap(),
            Path::new("tool")
        );
        assert_eq!(
            std::fs::read(root.join("srv/data/big")).unwrap(),
            vec![0xa5; 70_001]
        );
        let empty = std::fs::metadata(root.join("empty")).unwrap();
        assert!(empty.is_dir());
        assert_eq!(empty.permissions().mode() & 0o7777, 0o710);
        assert!(std::fs::metadata(root.join("srv/data")).unwrap().is_dir());
        assert!(!std::fs::metadata(root.join("bin/tool"))
            .unwrap()
            .file_type()
            .is_char_device());
    }
}
