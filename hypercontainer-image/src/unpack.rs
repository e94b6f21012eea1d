//! Safe application of OCI layer tarballs onto a directory.
//!
//! [`apply_layer`] reads one layer (plain tar, gzip or zstd, detected from the
//! stream's magic bytes), and creates its entries under a root directory:
//! regular files, directories, symlinks, hardlinks and FIFOs, with modes,
//! ownership (when running as root; otherwise recorded in [`LayerMeta`]),
//! mtimes and xattrs. Device nodes are never created on the host: they are
//! recorded in [`LayerMeta::devices`].
//!
//! Whiteouts (`.wh.name`) and opaque markers (`.wh..wh..opq`) are handled
//! per [`WhiteoutMode`]: either applied (deleting from lower layers already
//! unpacked in the same root, producing a flattened root filesystem) or
//! converted to the overlayfs representation (a 0/0 character device, the
//! `trusted.overlay.opaque` xattr) so that each layer can be mounted as an
//! overlay lower directory.
//!
//! Hostile archives are refused: absolute paths, `..` components, paths whose
//! parent walks through a symlink that climbs above the root, hardlinks whose
//! target is not inside the root, entries that would replace the root with a
//! non-directory, PAX records that disagree with the ustar header, and
//! anything beyond the caps in [`Limits`]. Every path component is opened
//! with `O_NOFOLLOW` relative to its parent's descriptor; symlinks met in a
//! parent path are resolved by hand inside the root. On error the root may
//! hold a partial layer: callers unpack into a scratch directory and discard
//! it (the image store does).

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::CStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::digest::{Algorithm, Digest, Hasher};
use crate::limits::Limits;
use crate::sys;

/// Errors from layer application.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The (decompressed) stream could not be read or is not a valid tar.
    #[error("reading layer stream")]
    Read(#[source] io::Error),
    /// A filesystem operation failed.
    #[error("{op} {path:?}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The entry path inside the layer.
        path: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An entry path is absolute.
    #[error("absolute path {0:?} in layer")]
    AbsolutePath(String),
    /// An entry path has a `..` component.
    #[error("path {0:?} contains a '..' component")]
    DotDot(String),
    /// An entry path or link target is too long or too deep.
    #[error("path {0:?} exceeds the length or depth limit")]
    PathTooLong(String),
    /// An entry name is not usable (embedded NUL, reserved whiteout name).
    #[error("invalid entry name {0:?}")]
    InvalidName(String),
    /// Resolving a path went through a symlink that leads above the root.
    #[error("path {0:?} escapes the root through a symlink")]
    PathEscape(String),
    /// Too many symlinks met while resolving a path.
    #[error("too many symlinks resolving {0:?}")]
    SymlinkLoop(String),
    /// A parent path component exists and is not a directory.
    #[error("parent of {0:?} is not a directory")]
    NotADirectory(String),
    /// An entry other than a directory names the root itself.
    #[error("entry {0:?} would replace the root directory")]
    ReplaceRoot(String),
    /// A hardlink target is missing, a directory, or not inside the root.
    #[error("hardlink {path:?} has an invalid target {target:?}")]
    HardlinkTarget {
        /// The link entry.
        path: String,
        /// Its target.
        target: String,
    },
    /// A PAX or GNU extension record disagrees with the ustar header.
    #[error("{field} of {path:?} differs between the PAX/GNU record and the ustar header")]
    PaxMismatch {
        /// Which field disagrees.
        field: &'static str,
        /// The entry path.
        path: String,
    },
    /// A PAX record is malformed.
    #[error("malformed PAX record for {0:?}")]
    BadPax(String),
    /// An extension header (PAX, GNU long name) is larger than allowed.
    #[error("extension header of {size} bytes exceeds the limit of {limit}")]
    ExtensionTooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Two extension headers of the same kind precede one entry, or one precedes nothing.
    #[error("dangling or duplicate extension header")]
    BadExtension,
    /// The tar entry type is not supported (sparse files, unknown types).
    #[error("unsupported entry type {kind:?} for {path:?}")]
    UnsupportedType {
        /// The entry path.
        path: String,
        /// The tar type byte.
        kind: u8,
    },
    /// A file entry's data ended early.
    #[error("data of {0:?} is truncated")]
    Truncated(String),
    /// A uid or gid does not fit 32 bits.
    #[error("owner of {0:?} is out of range")]
    BadOwner(String),
    /// The uncompressed stream is larger than allowed.
    #[error("layer exceeds the limit of {limit} uncompressed bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The layer has more entries than allowed.
    #[error("layer exceeds the limit of {limit} entries")]
    TooManyEntries {
        /// The limit.
        limit: u64,
    },
    /// The uncompressed stream does not hash to the expected diff_id.
    #[error("layer diff_id mismatch: expected {expected}, computed {actual}")]
    DiffIdMismatch {
        /// The diff_id from the image config.
        expected: String,
        /// The digest of the uncompressed stream.
        actual: String,
    },
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, UnpackError>;

/// How whiteout entries are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WhiteoutMode {
    /// Delete the whited-out paths (and the contents of opaque directories)
    /// from what lower layers left in the same root: flattening.
    Apply,
    /// Convert to overlayfs whiteouts (0/0 character devices) and opaque
    /// markers (`trusted.overlay.opaque=y`), for one-tree-per-layer use as
    /// overlay lower directories. Needs root (CAP_MKNOD, CAP_SYS_ADMIN);
    /// otherwise they are only recorded in [`LayerMeta`].
    Overlay,
}

/// Options for [`apply_layer`].
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    limits: Limits,
    whiteouts: WhiteoutMode,
    preserve_ownership: bool,
}

impl UnpackOptions {
    /// Default limits; ownership applied when running as root.
    pub fn new(whiteouts: WhiteoutMode) -> Self {
        UnpackOptions {
            limits: Limits::default(),
            whiteouts,
            preserve_ownership: sys::geteuid() == 0,
        }
    }

    /// Sets how whiteouts are handled.
    pub fn whiteouts(mut self, mode: WhiteoutMode) -> Self {
        self.whiteouts = mode;
        self
    }

    /// Sets the caps.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Whether to chown entries (needs root). When false, ownership other
    /// than 0:0 is recorded in [`LayerMeta::ownership`] instead.
    pub fn preserve_ownership(mut self, yes: bool) -> Self {
        self.preserve_ownership = yes;
        self
    }
}

/// The compression of a layer stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Compression {
    /// Plain tar.
    #[default]
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// Detects the compression from the first bytes of a stream.
    pub fn detect(magic: &[u8]) -> Self {
        if magic.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Kind of a recorded device node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceKind {
    /// Character device.
    Char,
    /// Block device.
    Block,
}

/// A device node found in a layer (never created on the host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceNode {
    /// Path inside the image, without a leading slash.
    pub path: String,
    /// Character or block.
    pub kind: DeviceKind,
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// Ownership that could not be applied (not running as root).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedOwner {
    /// Path inside the image.
    pub path: String,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// What applying a layer found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerMeta {
    /// Digest of the uncompressed stream.
    pub diff_id: Option<Digest>,
    /// Detected compression.
    pub compression: Compression,
    /// Tar entries read (extension headers included).
    pub entries: u64,
    /// Uncompressed bytes read.
    pub uncompressed_bytes: u64,
    /// Device nodes (recorded, not created).
    pub devices: Vec<DeviceNode>,
    /// Ownership not applied to the tree.
    pub ownership: Vec<RecordedOwner>,
    /// Whiteout paths (overlay mode).
    pub whiteouts: Vec<String>,
    /// Opaque directories (overlay mode).
    pub opaque_dirs: Vec<String>,
    /// `path: xattr-name` of xattrs not applied (disallowed namespace or unsupported).
    pub skipped_xattrs: Vec<String>,
}

/// Applies one layer stream onto `root`.
///
/// When `expected_diff_id` is given, the uncompressed stream must hash to it
/// or [`UnpackError::DiffIdMismatch`] is returned (after the tree was
/// written: unpack into a scratch directory).
pub fn apply_layer<R: Read>(
    reader: R,
    root: &Path,
    opts: &UnpackOptions,
    expected_diff_id: Option<&Digest>,
) -> Result<LayerMeta> {
    let mut reader = reader;
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        match reader.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(UnpackError::Read(e)),
        }
    }
    let compression = Compression::detect(&magic[..got]);
    let stream = io::Cursor::new(magic[..got].to_vec()).chain(reader);
    let decoder: Box<dyn Read> = match compression {
        Compression::None => Box::new(stream),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(stream)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::new(stream).map_err(UnpackError::Read)?)
        }
    };
    let algorithm = expected_diff_id.map_or(Algorithm::Sha256, Digest::algorithm);
    let mut metered = Metered {
        inner: decoder,
        hasher: Hasher::new(algorithm),
        count: 0,
        limit: opts.limits.max_layer_bytes,
        exceeded: false,
    };
    let mut unpacker = Unpacker::new(root, opts)?;
    let res = {
        let mut archive = tar::Archive::new(&mut metered);
        match archive.entries() {
            Ok(entries) => unpacker.run(entries.raw(true)),
            Err(e) => Err(UnpackError::Read(e)),
        }
    };
    let res = res.and_then(|()| {
        io::copy(&mut metered, &mut io::sink())
            .map(drop)
            .map_err(UnpackError::Read)
    });
    if metered.exceeded {
        return Err(UnpackError::TooLarge {
            limit: opts.limits.max_layer_bytes,
        });
    }
    res?;
    unpacker.finish()?;
    let mut meta = unpacker.meta;
    meta.compression = compression;
    meta.uncompressed_bytes = metered.count;
    let actual = metered.hasher.finish();
    if let Some(exp) = expected_diff_id {
        if *exp != actual {
            return Err(UnpackError::DiffIdMismatch {
                expected: exp.to_string(),
                actual: actual.to_string(),
            });
        }
    }
    meta.diff_id = Some(actual);
    Ok(meta)
}

/// Counts, caps and hashes the uncompressed stream.
struct Metered<R> {
    inner: R,
    hasher: Hasher,
    count: u64,
    limit: u64,
    exceeded: bool,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if self.count > self.limit {
            self.exceeded = true;
            return Err(io::Error::other("layer size limit exceeded"));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

type Comps = Vec<Vec<u8>>;

fn display(comps: &[Vec<u8>]) -> String {
    let v: Vec<_> = comps.iter().map(|c| String::from_utf8_lossy(c)).collect();
    v.join("/")
}

/// A printable, bounded rendering of untrusted bytes for errors and records.
fn lossy(b: &[u8]) -> String {
    const MAX: usize = 1024;
    if b.len() > MAX {
        format!("{}...", String::from_utf8_lossy(&b[..MAX]))
    } else {
        String::from_utf8_lossy(b).into_owned()
    }
}

/// Splits and validates an entry path (or hardlink target).
fn split_path(raw: &[u8], limits: &Limits) -> Result<Comps> {
    let shown = || lossy(raw);
    if raw.len() > limits.max_path_len {
        return Err(UnpackError::PathTooLong(shown()));
    }
    if raw.first() == Some(&b'/') {
        return Err(UnpackError::AbsolutePath(shown()));
    }
    let mut comps = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => continue,
            b".." => return Err(UnpackError::DotDot(shown())),
            _ => {}
        }
        if c.len() > 255 {
            return Err(UnpackError::PathTooLong(shown()));
        }
        if c.contains(&0) {
            return Err(UnpackError::InvalidName(shown()));
        }
        comps.push(c.to_vec());
    }
    if comps.len() > limits.max_path_depth {
        return Err(UnpackError::PathTooLong(shown()));
    }
    Ok(comps)
}

/// Whether a PAX/GNU full value is consistent with the ustar field it extends.
fn consistent(ustar: &[u8], full: &[u8]) -> bool {
    fn trim(b: &[u8]) -> &[u8] {
        let b = b.strip_suffix(b"/").unwrap_or(b);
        b.strip_prefix(b"./").unwrap_or(b)
    }
    let (u, f) = (trim(ustar), trim(full));
    if u.is_empty() || u == f {
        return true;
    }
    // Writers store an ASCII-only and/or truncated copy in the ustar field.
    let ascii: Vec<u8> = f.iter().copied().filter(u8::is_ascii).collect();
    if u == ascii.as_slice() {
        return true;
    }
    ustar.len() >= 99 && (f.starts_with(u) || ascii.starts_with(u))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
    Hardlink,
    Char,
    Block,
    Fifo,
}

struct Entry {
    comps: Comps,
    kind: Kind,
    size: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, u32),
    link: Option<Vec<u8>>,
    dev: (u32, u32),
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

fn parse_mtime(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (sec, frac) = s.split_once('.').unwrap_or((s, ""));
    let sec: i64 = sec.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    let nsec: u32 = digits.parse().ok()?;
    if sec < 0 && nsec > 0 {
        // "-1.5" means 1.5 s before the epoch.
        return Some((sec - 1, 1_000_000_000 - nsec));
    }
    Some((sec, nsec))
}

fn parse_u64(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Only these xattr namespaces are taken from layers.
fn xattr_allowed(name: &[u8]) -> bool {
    name.starts_with(b"user.") || (name.starts_with(b"security.") && name != b"security.selinux")
}

const OPAQUE: &[u8] = b".wh..wh..opq";
const WH_PREFIX: &[u8] = b".wh.";

struct Unpacker<'a> {
    root: OwnedFd,
    opts: &'a UnpackOptions,
    privileged: bool,
    meta: LayerMeta,
    created: HashSet<Comps>,
    deferred: Vec<(Comps, u32, (i64, u32))>,
    cache: Option<(Comps, OwnedFd)>,
    dirty: bool,
    buf: Vec<u8>,
}

impl<'a> Unpacker<'a> {
    fn new(root: &Path, opts: &'a UnpackOptions) -> Result<Self> {
        let root = sys::open_dir_path(root).map_err(|source| UnpackError::Io {
            op: "opening root",
            path: root.display().to_string(),
            source,
        })?;
        Ok(Unpacker {
            root,
            opts,
            privileged: sys::geteuid() == 0,
            meta: LayerMeta::default(),
            created: HashSet::new(),
            deferred: Vec::new(),
            cache: None,
            dirty: false,
            buf: vec![0u8; 128 * 1024],
        })
    }

    fn limits(&self) -> &Limits {
        &self.opts.limits
    }

    fn run<R: Read>(&mut self, entries: tar::Entries<'_, R>) -> Result<()> {
        let mut pax: Option<Vec<u8>> = None;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        for e in entries {
            let mut e = e.map_err(UnpackError::Read)?;
            self.meta.entries += 1;
            if self.meta.entries > self.limits().max_entries {
                return Err(UnpackError::TooManyEntries {
                    limit: self.limits().max_entries,
                });
            }
            let hdr = e.header().clone();
            let et = hdr.entry_type();
            let slot = if et.is_pax_local_extensions() {
                Some(&mut pax)
            } else if et.is_gnu_longname() {
                Some(&mut long_name)
            } else if et.is_gnu_longlink() {
                Some(&mut long_link)
            } else {
                None
            };
            if let Some(slot) = slot {
                if slot.is_some() {
                    return Err(UnpackError::BadExtension);
                }
                let mut data = self.read_extension(&mut e)?;
                if !et.is_pax_local_extensions() {
                    while data.last() == Some(&0) {
                        data.pop();
                    }
                }
                *slot = Some(data);
                continue;
            }
            if et.is_pax_global_extensions() {
                self.read_extension(&mut e)?;
                continue;
            }
            let entry = self.parse_entry(&hdr, pax.take(), long_name.take(), long_link.take())?;
            self.dirty = false;
            self.apply(entry, &mut e)?;
        }
        if pax.is_some() || long_name.is_some() || long_link.is_some() {
            return Err(UnpackError::BadExtension);
        }
        Ok(())
    }

    fn read_extension<R: Read>(&self, e: &mut tar::Entry<'_, R>) -> Result<Vec<u8>> {
        let size = e.size();
        let limit = self.limits().max_extension_bytes;
        if size > limit {
            return Err(UnpackError::ExtensionTooLarge { size, limit });
        }
        let mut data = Vec::with_capacity(size as usize);
        e.read_to_end(&mut data).map_err(UnpackError::Read)?;
        if data.len() as u64 != size {
            return Err(UnpackError::BadExtension);
        }
        Ok(data)
    }

    fn parse_entry(
        &self,
        hdr: &tar::Header,
        pax: Option<Vec<u8>>,
        long_name: Option<Vec<u8>>,
        long_link: Option<Vec<u8>>,
    ) -> Result<Entry> {
        let ustar_path = hdr.path_bytes().into_owned();
        let ustar_link = hdr.link_name_bytes().map(|c| c.into_owned());
        let mut path = ustar_path.clone();
        let mut link = ustar_link.clone();
        let shown = lossy(&ustar_path);
        let bad = |_| UnpackError::BadPax(shown.clone());
        let mut size = hdr.entry_size().map_err(UnpackError::Read)?;
        let mode = hdr.mode().map_err(UnpackError::Read)? & 0o7777;
        let mut uid = hdr.uid().map_err(UnpackError::Read)?;
        let mut gid = hdr.gid().map_err(UnpackError::Read)?;
        let mut mtime = (
            i64::try_from(hdr.mtime().map_err(UnpackError::Read)?).unwrap_or(i64::MAX),
            0u32,
        );
        let mut xattrs = Vec::new();
        if let Some(ln) = long_name {
            if !consistent(&ustar_path, &ln) {
                return Err(UnpackError::PaxMismatch {
                    field: "path",
                    path: lossy(&ln),
                });
            }
            path = ln;
        }
        if let Some(ll) = long_link {
            if !consistent(ustar_link.as_deref().unwrap_or_default(), &ll) {
                return Err(UnpackError::PaxMismatch {
                    field: "linkpath",
                    path: lossy(&path),
                });
            }
            link = Some(ll);
        }
        if let Some(pax) = pax {
            for ext in tar::PaxExtensions::new(&pax) {
                let ext = ext.map_err(bad)?;
                let key = ext.key_bytes();
                let value = ext.value_bytes();
                match key {
                    b"path" => {
                        if !consistent(&ustar_path, value) {
                            return Err(UnpackError::PaxMismatch {
                                field: "path",
                                path: lossy(value),
                            });
                        }
                        path = value.to_vec();
                    }
                    b"linkpath" => {
                        if !consistent(ustar_link.as_deref().unwrap_or_default(), value) {
                            return Err(UnpackError::PaxMismatch {
                                field: "linkpath",
                                path: lossy(&path),
                            });
                        }
                        link = Some(value.to_vec());
                    }
                    b"size" => {
                        if parse_u64(value).ok_or_else(|| UnpackError::BadPax(shown.clone()))?
                            != size
                        {
                            return Err(UnpackError::PaxMismatch {
                                field: "size",
                                path: lossy(&path),
                            });
                        }
                    }
                    b"uid" => {
                        uid = parse_u64(value).ok_or_else(|| UnpackError::BadPax(shown.clone()))?
                    }
                    b"gid" => {
                        gid = parse_u64(value).ok_or_else(|| UnpackError::BadPax(shown.clone()))?
                    }
                    b"mtime" => {
                        mtime =
                            parse_mtime(value).ok_or_else(|| UnpackError::BadPax(shown.clone()))?
                    }
                    _ => {
                        if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                            if name.is_empty() || name.contains(&0) {
                                return Err(UnpackError::BadPax(shown.clone()));
                            }
                            xattrs.push((name.to_vec(), value.to_vec()));
                        }
                    }
                }
            }
        }
        let et = hdr.entry_type();
        let kind = match et.as_byte() {
            b'0' | b'\0' | b'7' => Kind::File,
            b'1' => Kind::Hardlink,
            b'2' => Kind::Symlink,
            b'3' => Kind::Char,
            b'4' => Kind::Block,
            b'5' => Kind::Dir,
            b'6' => Kind::Fifo,
            other => {
                return Err(UnpackError::UnsupportedType {
                    path: lossy(&path),
                    kind: other,
                })
            }
        };
        let comps = split_path(&path, self.limits())?;
        if !matches!(kind, Kind::File) {
            size = 0;
        }
        let uid = u32::try_from(uid).map_err(|_| UnpackError::BadOwner(lossy(&path)))?;
        let gid = u32::try_from(gid).map_err(|_| UnpackError::BadOwner(lossy(&path)))?;
        let dev = if matches!(kind, Kind::Char | Kind::Block) {
            (
                hdr.device_major().ok().flatten().unwrap_or(0),
                hdr.device_minor().ok().flatten().unwrap_or(0),
            )
        } else {
            (0, 0)
        };
        if let Some(l) = &link {
            if l.len() > self.limits().max_path_len {
                return Err(UnpackError::PathTooLong(lossy(l)));
            }
        }
        Ok(Entry {
            comps,
            kind,
            size,
            mode,
            uid,
            gid,
            mtime,
            link,
            dev,
            xattrs,
        })
    }

    fn io_err(op: &'static str, comps: &[Vec<u8>]) -> impl FnOnce(io::Error) -> UnpackError {
        let path = display(comps);
        move |source| UnpackError::Io { op, path, source }
    }

    fn dup_root(&self) -> Result<OwnedFd> {
        self.root
            .try_clone()
            .map_err(Self::io_err("duplicating root", &[]))
    }

    /// Opens the real directories named by `logical` (no symlinks among them).
    fn walk_plain(&self, logical: &[Vec<u8>]) -> Result<OwnedFd> {
        let mut cur = self.dup_root()?;
        for c in logical {
            let cc = sys::cstr(c).map_err(Self::io_err("opening", logical))?;
            cur =
                sys::open_subdir(cur.as_raw_fd(), &cc).map_err(Self::io_err("opening", logical))?;
        }
        Ok(cur)
    }

    /// Resolves `comps` as a directory inside the root. Symlinks are followed
    /// inside the root (absolute targets restart at the root); climbing
    /// above the root is an error. Missing directories are created when
    /// `create`, otherwise `None` is returned.
    fn resolve_dir(&self, comps: &[Vec<u8>], create: bool) -> Result<Option<OwnedFd>> {
        let mut queue: VecDeque<Vec<u8>> = comps.iter().cloned().collect();
        let mut logical: Comps = Vec::new();
        let mut cur = self.dup_root()?;
        let mut hops = 0;
        let max_depth = self.limits().max_path_depth * 2;
        while let Some(c) = queue.pop_front() {
            if c.is_empty() || c == b"." {
                continue;
            }
            if c == b".." {
                if logical.pop().is_none() {
                    return Err(UnpackError::PathEscape(display(comps)));
                }
                cur = self.walk_plain(&logical)?;
                continue;
            }
            let cc = sys::cstr(&c).map_err(Self::io_err("resolving", comps))?;
            match sys::open_subdir(cur.as_raw_fd(), &cc) {
                Ok(fd) => {
                    cur = fd;
                    logical.push(c);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !create {
                        return Ok(None);
                    }
                    match sys::mkdirat(cur.as_raw_fd(), &cc, 0o755) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(Self::io_err("creating parent", comps)(e)),
                    }
                    cur = sys::open_subdir(cur.as_raw_fd(), &cc)
                        .map_err(Self::io_err("opening parent", comps))?;
                    logical.push(c);
                }
                Err(e)
                    if e.raw_os_error() == Some(libc::ENOTDIR)
                        || e.raw_os_error() == Some(libc::ELOOP) =>
                {
                    let st = sys::lstatat(cur.as_raw_fd(), &cc)
                        .map_err(Self::io_err("inspecting", comps))?;
                    if !sys::is_symlink(&st) {
                        return Err(UnpackError::NotADirectory(display(comps)));
                    }
                    hops += 1;
                    if hops > 40 {
                        return Err(UnpackError::SymlinkLoop(display(comps)));
                    }
                    let target = sys::readlinkat(cur.as_raw_fd(), &cc)
                        .map_err(Self::io_err("reading link", comps))?;
                    if target.first() == Some(&b'/') {
                        logical.clear();
                        cur = self.dup_root()?;
                    }
                    for t in target.rsplit(|&b| b == b'/') {
                        queue.push_front(t.to_vec());
                    }
                    if queue.len() + logical.len() > max_depth {
                        return Err(UnpackError::PathTooLong(display(comps)));
                    }
                }
                Err(e) => return Err(Self::io_err("resolving", comps)(e)),
            }
        }
        Ok(Some(cur))
    }

    fn parent_of(&mut self, comps: &[Vec<u8>]) -> Result<OwnedFd> {
        let key = &comps[..comps.len() - 1];
        if let Some((k, fd)) = self.cache.take() {
            if k.as_slice() == key {
                return Ok(fd);
            }
        }
        match self.resolve_dir(key, true)? {
            Some(fd) => Ok(fd),
            None => Err(UnpackError::NotADirectory(display(comps))),
        }
    }

    /// Makes room for a new entry; returns true if an existing directory was kept.
    fn clear_slot(
        &mut self,
        dir: RawFd,
        name: &CStr,
        keep_dir: bool,
        comps: &[Vec<u8>],
    ) -> Result<bool> {
        match sys::lstatat(dir, name) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Self::io_err("inspecting", comps)(e)),
            Ok(st) if keep_dir && sys::is_dir(&st) => Ok(true),
            Ok(_) => {
                self.invalidate();
                sys::remove_all_at(dir, name).map_err(Self::io_err("replacing", comps))?;
                Ok(false)
            }
        }
    }

    fn invalidate(&mut self) {
        self.cache = None;
        self.dirty = true;
    }

    fn owner(&mut self, comps: &[Vec<u8>], uid: u32, gid: u32) -> bool {
        if self.opts.preserve_ownership {
            return true;
        }
        if uid != 0 || gid != 0 {
            self.meta.ownership.push(RecordedOwner {
                path: display(comps),
                uid,
                gid,
            });
        }
        false
    }

    fn set_xattrs(&mut self, fd: RawFd, e: &Entry) -> Result<()> {
        for (name, value) in &e.xattrs {
            let label = || format!("{}: {}", display(&e.comps), lossy(name));
            if !xattr_allowed(name) {
                self.meta.skipped_xattrs.push(label());
                continue;
            }
            let cname = sys::cstr(name).map_err(Self::io_err("setting xattr", &e.comps))?;
            match sys::fsetxattr(fd, &cname, value) {
                Ok(()) => {}
                Err(err)
                    if matches!(err.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::EPERM)) =>
                {
                    self.meta.skipped_xattrs.push(label());
                }
                Err(err) => return Err(Self::io_err("setting xattr", &e.comps)(err)),
            }
        }
        Ok(())
    }

    fn apply<R: Read>(&mut self, e: Entry, data: &mut R) -> Result<()> {
        if e.comps.is_empty() {
            if e.kind != Kind::Dir {
                return Err(UnpackError::ReplaceRoot(".".into()));
            }
            if self.owner(&[], e.uid, e.gid) {
                sys::fchown_empty(self.root.as_raw_fd(), e.uid, e.gid)
                    .map_err(Self::io_err("chown", &[]))?;
            }
            self.deferred.push((Vec::new(), e.mode, e.mtime));
            return Ok(());
        }
        let name = e.comps[e.comps.len() - 1].clone();
        if name.starts_with(WH_PREFIX) {
            return self.whiteout(&e, &name);
        }
        let parent = self.parent_of(&e.comps)?;
        let pfd = parent.as_raw_fd();
        let cname = sys::cstr(&name).map_err(Self::io_err("creating", &e.comps))?;
        let comps = &e.comps;
        match e.kind {
            Kind::Dir => {
                if !self.clear_slot(pfd, &cname, true, comps)? {
                    sys::mkdirat(pfd, &cname, 0o700).map_err(Self::io_err("mkdir", comps))?;
                }
                if self.owner(comps, e.uid, e.gid) {
                    sys::lchownat(pfd, &cname, e.uid, e.gid)
                        .map_err(Self::io_err("chown", comps))?;
                }
                if !e.xattrs.is_empty() {
                    let fd =
                        sys::open_subdir_rd(pfd, &cname).map_err(Self::io_err("opening", comps))?;
                    self.set_xattrs(fd.as_raw_fd(), &e)?;
                }
                self.deferred.push((comps.clone(), e.mode, e.mtime));
            }
            Kind::File => {
                self.clear_slot(pfd, &cname, false, comps)?;
                let fd = sys::openat(
                    pfd,
                    &cname,
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                    0o600,
                )
                .map_err(Self::io_err("creating", comps))?;
                let mut f = File::from(fd);
                let mut left = e.size;
                while left > 0 {
                    let want = left.min(self.buf.len() as u64) as usize;
                    let n = match data.read(&mut self.buf[..want]) {
                        Ok(0) => return Err(UnpackError::Truncated(display(comps))),
                        Ok(n) => n,
                        Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                        Err(err) => return Err(UnpackError::Read(err)),
                    };
                    f.write_all(&self.buf[..n])
                        .map_err(Self::io_err("writing", comps))?;
                    left -= n as u64;
                }
                let raw = f.as_raw_fd();
                if self.owner(comps, e.uid, e.gid) {
                    sys::fchown(raw, e.uid, e.gid).map_err(Self::io_err("chown", comps))?;
                }
                sys::fchmod(raw, e.mode).map_err(Self::io_err("chmod", comps))?;
                self.set_xattrs(raw, &e)?;
                sys::futimens(raw, e.mtime.0, e.mtime.1).map_err(Self::io_err("utimens", comps))?;
            }
            Kind::Symlink => {
                let target = e.link.clone().unwrap_or_default();
                let ctarget = sys::cstr(&target).map_err(Self::io_err("symlink", comps))?;
                self.clear_slot(pfd, &cname, false, comps)?;
                sys::symlinkat(&ctarget, pfd, &cname).map_err(Self::io_err("symlink", comps))?;
                if self.owner(comps, e.uid, e.gid) {
                    sys::lchownat(pfd, &cname, e.uid, e.gid)
                        .map_err(Self::io_err("chown", comps))?;
                }
                for (n, _) in &e.xattrs {
                    self.meta
                        .skipped_xattrs
                        .push(format!("{}: {}", display(comps), lossy(n)));
                }
                sys::lutimensat(pfd, &cname, e.mtime.0, e.mtime.1)
                    .map_err(Self::io_err("utimens", comps))?;
            }
            Kind::Hardlink => self.hardlink(&e, pfd, &cname)?,
            Kind::Char | Kind::Block => {
                self.clear_slot(pfd, &cname, false, comps)?;
                self.meta.devices.push(DeviceNode {
                    path: display(comps),
                    kind: if e.kind == Kind::Char {
                        DeviceKind::Char
                    } else {
                        DeviceKind::Block
                    },
                    major: e.dev.0,
                    minor: e.dev.1,
                    mode: e.mode,
                    uid: e.uid,
                    gid: e.gid,
                });
            }
            Kind::Fifo => {
                self.clear_slot(pfd, &cname, false, comps)?;
                sys::mknodat(pfd, &cname, libc::S_IFIFO | 0o600, 0)
                    .map_err(Self::io_err("mkfifo", comps))?;
                let fd = sys::openat(pfd, &cname, libc::O_PATH | libc::O_NOFOLLOW, 0)
                    .map_err(Self::io_err("opening", comps))?;
                let st = sys::fstat(fd.as_raw_fd()).map_err(Self::io_err("inspecting", comps))?;
                if st.st_mode & libc::S_IFMT != libc::S_IFIFO {
                    return Err(UnpackError::NotADirectory(display(comps)));
                }
                if self.owner(comps, e.uid, e.gid) {
                    sys::lchownat(pfd, &cname, e.uid, e.gid)
                        .map_err(Self::io_err("chown", comps))?;
                }
                // SAFETY: `cname` is NUL-terminated; the entry was just created as a FIFO by us.
                let rc = unsafe { libc::fchmodat(pfd, cname.as_ptr(), e.mode as libc::mode_t, 0) };
                if rc < 0 {
                    return Err(Self::io_err("chmod", comps)(io::Error::last_os_error()));
                }
                sys::lutimensat(pfd, &cname, e.mtime.0, e.mtime.1)
                    .map_err(Self::io_err("utimens", comps))?;
            }
        }
        if self.opts.whiteouts == WhiteoutMode::Apply {
            self.created.insert(e.comps.clone());
        }
        if !self.dirty {
            self.cache = Some((e.comps[..e.comps.len() - 1].to_vec(), parent));
        }
        Ok(())
    }

    fn hardlink(&mut self, e: &Entry, pfd: RawFd, cname: &CStr) -> Result<()> {
        let comps = &e.comps;
        let target = e.link.clone().unwrap_or_default();
        let bad = || UnpackError::HardlinkTarget {
            path: display(comps),
            target: lossy(&target),
        };
        let tcomps = match split_path(&target, self.limits()) {
            Ok(t) if !t.is_empty() => t,
            Ok(_) => return Err(bad()),
            Err(err @ (UnpackError::AbsolutePath(_) | UnpackError::DotDot(_))) => return Err(err),
            Err(_) => return Err(bad()),
        };
        if &tcomps == comps {
            return Ok(());
        }
        let tparent = self
            .resolve_dir(&tcomps[..tcomps.len() - 1], false)?
            .ok_or_else(bad)?;
        let tname = sys::cstr(&tcomps[tcomps.len() - 1]).map_err(|_| bad())?;
        match sys::lstatat(tparent.as_raw_fd(), &tname) {
            Ok(st) if !sys::is_dir(&st) => {}
            _ => return Err(bad()),
        }
        self.clear_slot(pfd, cname, false, comps)?;
        sys::linkat(tparent.as_raw_fd(), &tname, pfd, cname).map_err(Self::io_err("link", comps))
    }

    fn whiteout(&mut self, e: &Entry, name: &[u8]) -> Result<()> {
        let parent = &e.comps[..e.comps.len() - 1];
        if name == OPAQUE {
            return self.opaque(parent);
        }
        let target = &name[WH_PREFIX.len()..];
        if target.is_empty() || target == b"." || target == b".." || target.starts_with(WH_PREFIX) {
            return Err(UnpackError::InvalidName(display(&e.comps)));
        }
        let mut tcomps = parent.to_vec();
        tcomps.push(target.to_vec());
        let ctarget = sys::cstr(target).map_err(Self::io_err("whiteout", &e.comps))?;
        self.invalidate();
        match self.opts.whiteouts {
            WhiteoutMode::Apply => {
                if self.created.contains(&tcomps) {
                    return Ok(());
                }
                if let Some(dir) = self.resolve_dir(parent, false)? {
                    sys::remove_all_at(dir.as_raw_fd(), &ctarget)
                        .map_err(Self::io_err("whiting out", &tcomps))?;
                }
            }
            WhiteoutMode::Overlay => {
                self.meta.whiteouts.push(display(&tcomps));
                if self.privileged {
                    let dir = self
                        .resolve_dir(parent, true)?
                        .ok_or_else(|| UnpackError::NotADirectory(display(&e.comps)))?;
                    match sys::lstatat(dir.as_raw_fd(), &ctarget) {
                        Ok(_) => {}
                        Err(err) if err.kind() == io::ErrorKind::NotFound => {
                            sys::mknodat(dir.as_raw_fd(), &ctarget, libc::S_IFCHR, 0)
                                .map_err(Self::io_err("creating whiteout", &tcomps))?;
                        }
                        Err(err) => return Err(Self::io_err("inspecting", &tcomps)(err)),
                    }
                }
            }
        }
        Ok(())
    }

    fn opaque(&mut self, dir_comps: &[Vec<u8>]) -> Result<()> {
        self.invalidate();
        match self.opts.whiteouts {
            WhiteoutMode::Apply => {
                let Some(dir) = self.resolve_dir(dir_comps, false)? else {
                    return Ok(());
                };
                let rd = sys::reopen_dir_rd(dir.as_raw_fd())
                    .map_err(Self::io_err("opening", dir_comps))?;
                for child in sys::list_dir(&rd).map_err(Self::io_err("listing", dir_comps))? {
                    use std::os::unix::ffi::OsStrExt;
                    let mut c = dir_comps.to_vec();
                    c.push(child.as_bytes().to_vec());
                    if self.created.contains(&c) {
                        continue;
                    }
                    let cc = sys::cstr(child.as_bytes()).map_err(Self::io_err("opaque", &c))?;
                    sys::remove_all_at(rd.as_raw_fd(), &cc).map_err(Self::io_err("opaque", &c))?;
                }
            }
            WhiteoutMode::Overlay => {
                self.meta.opaque_dirs.push(display(dir_comps));
                if self.privileged {
                    let dir = self
                        .resolve_dir(dir_comps, true)?
                        .ok_or_else(|| UnpackError::NotADirectory(display(dir_comps)))?;
                    let rd = sys::reopen_dir_rd(dir.as_raw_fd())
                        .map_err(Self::io_err("opening", dir_comps))?;
                    sys::fsetxattr(rd.as_raw_fd(), c"trusted.overlay.opaque", b"y")
                        .map_err(Self::io_err("marking opaque", dir_comps))?;
                }
            }
        }
        Ok(())
    }

    /// Applies directory modes and mtimes, deepest first, last entry wins.
    fn finish(&mut self) -> Result<()> {
        let mut last: HashMap<Comps, (u32, (i64, u32))> = HashMap::new();
        for (c, mode, mtime) in self.deferred.drain(..) {
            last.insert(c, (mode, mtime));
        }
        let mut dirs: Vec<_> = last.into_iter().collect();
        dirs.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        for (comps, (mode, mtime)) in dirs {
            let fd = match self.open_real_dir_rd(&comps) {
                Ok(Some(fd)) => fd,
                Ok(None) => continue,
                Err(e) => return Err(Self::io_err("opening", &comps)(e)),
            };
            sys::fchmod(fd.as_raw_fd(), mode).map_err(Self::io_err("chmod", &comps))?;
            sys::futimens(fd.as_raw_fd(), mtime.0, mtime.1)
                .map_err(Self::io_err("utimens", &comps))?;
        }
        Ok(())
    }

    /// Opens a directory by its literal path, without following any symlink;
    /// `None` if it no longer exists as a directory.
    fn open_real_dir_rd(&self, comps: &[Vec<u8>]) -> io::Result<Option<OwnedFd>> {
        let mut cur = self.root.try_clone()?;
        for c in comps {
            let cc = sys::cstr(c)?;
            match sys::open_subdir(cur.as_raw_fd(), &cc) {
                Ok(fd) => cur = fd,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ELOOP)
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            }
        }
        sys::reopen_dir_rd(cur.as_raw_fd()).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_path_rules() {
        let l = Limits::default();
        assert_eq!(
            split_path(b"./a//b/./c/", &l).unwrap(),
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
        assert!(split_path(b"./", &l).unwrap().is_empty());
        assert!(matches!(
            split_path(b"/etc/passwd", &l),
            Err(UnpackError::AbsolutePath(_))
        ));
        assert!(matches!(
            split_path(b"a/../../b", &l),
            Err(UnpackError::DotDot(_))
        ));
        let long = vec![b'a'; 256];
        assert!(matches!(
            split_path(&long, &l),
            Err(UnpackError::PathTooLong(_))
        ));
    }

    #[test]
    fn pax_consistency() {
        assert!(consistent(b"a/b", b"a/b"));
        assert!(consistent(b"", b"anything"));
        assert!(consistent(b"caf", "café".as_bytes()));
        assert!(!consistent(b"etc/shadow", b"etc/passwd"));
        assert!(!consistent(b"etc", b"etc/passwd"));
        let long = vec![b'x'; 99];
        let mut full = long.clone();
        full.extend_from_slice(b"/more");
        assert!(consistent(&long, &full));
    }

    #[test]
    fn mtime_parsing() {
        assert_eq!(parse_mtime(b"12"), Some((12, 0)));
        assert_eq!(parse_mtime(b"12.5"), Some((12, 500_000_000)));
        assert_eq!(parse_mtime(b"-1.5"), Some((-2, 500_000_000)));
        assert_eq!(parse_mtime(b"x"), None);
        assert_eq!(parse_mtime(b"1.x"), None);
    }

    #[test]
    fn compression_detection() {
        assert_eq!(Compression::detect(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(
            Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(Compression::detect(b"etc/"), Compression::None);
    }
}
