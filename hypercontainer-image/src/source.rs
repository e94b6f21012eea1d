//! Readers for the image formats users have: an OCI image layout directory,
//! an OCI archive (the layout in a tar) and a docker archive (`docker save`,
//! `skopeo copy ... docker-archive:`).
//!
//! [`ImageSource::open`] resolves a reference to one linux/amd64 (or the
//! requested platform) image: the manifest and config are read with size
//! caps and verified by size then digest before they are parsed. Layer blobs
//! are verified by [`SourceImage::verify_layer`] before use.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageConfiguration};

use crate::digest::{Digest, DigestError, Hasher};
use crate::limits::Limits;
use crate::manifest::{self, ManifestError, Platform};
use crate::unpack::{self, Compression, LayerMeta, UnpackError, UnpackOptions, WhiteoutMode};

/// Errors from reading an image source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A file of the source could not be read.
    #[error("reading {path:?}")]
    Io {
        /// The file (inside the layout or archive).
        path: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A file the format requires is missing.
    #[error("{0:?} not found in the image source")]
    Missing(String),
    /// The layout or archive structure is invalid.
    #[error("invalid image source: {0}")]
    Invalid(String),
    /// A path inside the source is not acceptable (absolute, `..`).
    #[error("unsafe path {0:?} in image source")]
    UnsafePath(String),
    /// A JSON document is malformed or over its cap.
    #[error("parsing image metadata")]
    Manifest(#[source] ManifestError),
    /// A blob failed size or digest verification.
    #[error("verifying {what}")]
    Verify {
        /// Which blob.
        what: String,
        /// The verification error.
        #[source]
        source: DigestError,
    },
    /// No image matches the reference.
    #[error("no image matches reference {0:?}")]
    ReferenceNotFound(String),
    /// Several images match and no reference (or an ambiguous one) was given.
    #[error("{0} images match; give a reference")]
    Ambiguous(usize),
    /// No manifest is for the requested platform.
    #[error("no image for platform {os}/{architecture}")]
    NoPlatform {
        /// Wanted OS.
        os: String,
        /// Wanted architecture.
        architecture: String,
    },
    /// The config and the manifest disagree on the number of layers.
    #[error("{layers} layers but {diff_ids} diff_ids")]
    LayerCount {
        /// Layers in the manifest.
        layers: usize,
        /// diff_ids in the config.
        diff_ids: usize,
    },
    /// Indexes nest deeper than allowed.
    #[error("image indexes nest too deep")]
    TooDeep,
    /// Unpacking a layer failed.
    #[error("unpacking layer {index} ({diff_id})")]
    Unpack {
        /// Layer position, 0 = lowest.
        index: usize,
        /// Its diff_id.
        diff_id: String,
        /// The unpack error.
        #[source]
        source: UnpackError,
    },
    /// The destination for an unpacked root filesystem already exists.
    #[error("destination {0:?} already exists")]
    DestinationExists(PathBuf),
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, SourceError>;

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// An OCI image layout directory (`oci-layout`, `index.json`, `blobs/`).
    OciLayout {
        /// The layout directory.
        path: PathBuf,
    },
    /// An OCI image layout packed in an uncompressed tar.
    OciArchive {
        /// The tar file.
        path: PathBuf,
    },
    /// A docker-archive tar (`manifest.json`, config and layer tarballs).
    DockerArchive {
        /// The tar file.
        path: PathBuf,
    },
}

fn norm_path(p: &str) -> Result<String> {
    if p.starts_with('/') {
        return Err(SourceError::UnsafePath(p.into()));
    }
    let mut out = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(SourceError::UnsafePath(p.into())),
            c => out.push(c),
        }
    }
    if out.is_empty() {
        return Err(SourceError::UnsafePath(p.into()));
    }
    Ok(out.join("/"))
}

fn io_err(path: &str) -> impl FnOnce(io::Error) -> SourceError + '_ {
    move |source| SourceError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Most entries read from an archive's table of contents.
const MAX_ARCHIVE_ENTRIES: usize = 1_000_000;

/// Files of a layout directory or an archive.
enum Container {
    Dir(PathBuf),
    Tar {
        path: PathBuf,
        entries: HashMap<String, (u64, u64)>,
    },
}

impl Container {
    fn open_tar(path: &Path, limits: &Limits) -> Result<Self> {
        let shown = path.display().to_string();
        let file = File::open(path).map_err(io_err(&shown))?;
        let mut archive = tar::Archive::new(io::BufReader::new(file));
        let mut entries = HashMap::new();
        let mut long_name: Option<Vec<u8>> = None;
        let mut pax_size: Option<Option<u64>> = None;
        let mut count = 0usize;
        for e in archive.entries().map_err(io_err(&shown))?.raw(true) {
            let mut e = e.map_err(io_err(&shown))?;
            count += 1;
            if count > MAX_ARCHIVE_ENTRIES {
                return Err(SourceError::Invalid("too many archive entries".into()));
            }
            let et = e.header().entry_type();
            if et.is_gnu_longname() || et.is_pax_local_extensions() {
                if e.size() > limits.max_extension_bytes {
                    return Err(SourceError::Invalid("oversized extension header".into()));
                }
                let mut data = Vec::new();
                e.read_to_end(&mut data).map_err(io_err(&shown))?;
                if et.is_gnu_longname() {
                    while data.last() == Some(&0) {
                        data.pop();
                    }
                    long_name = Some(data);
                } else {
                    for ext in tar::PaxExtensions::new(&data) {
                        let ext = ext.map_err(io_err(&shown))?;
                        match ext.key_bytes() {
                            b"path" => long_name = Some(ext.value_bytes().to_vec()),
                            b"size" => {
                                pax_size = Some(ext.value().ok().and_then(|v| v.parse().ok()))
                            }
                            _ => {}
                        }
                    }
                }
                continue;
            }
            if et.is_pax_global_extensions() || et.is_gnu_longlink() {
                continue;
            }
            if let Some(ps) = pax_size.take() {
                // Entries are framed by the ustar size: a PAX size that
                // differs would make other readers see another archive.
                if ps != e.header().entry_size().ok() {
                    return Err(SourceError::Invalid(
                        "PAX size disagrees with the ustar header".into(),
                    ));
                }
            }
            let name = long_name
                .take()
                .unwrap_or_else(|| e.header().path_bytes().into_owned());
            if !(et.is_file() || et.as_byte() == b'\0' || et.is_contiguous()) {
                continue;
            }
            let name = String::from_utf8_lossy(&name).into_owned();
            let Ok(key) = norm_path(&name) else {
                // Unsafe names are never looked up; skip them.
                continue;
            };
            entries.insert(key, (e.raw_file_position(), e.size()));
        }
        Ok(Container::Tar {
            path: path.to_owned(),
            entries,
        })
    }

    /// Opens a file; returns the reader and the file's size.
    fn open(&self, rel: &str) -> Result<(Box<dyn Read + Send>, u64)> {
        let rel = norm_path(rel)?;
        match self {
            Container::Dir(dir) => {
                let p = dir.join(&rel);
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&p)
                    .map_err(|e| {
                        if e.kind() == io::ErrorKind::NotFound {
                            SourceError::Missing(rel.clone())
                        } else {
                            SourceError::Io {
                                path: rel.clone(),
                                source: e,
                            }
                        }
                    })?;
                let md = f.metadata().map_err(io_err(&rel))?;
                if !md.is_file() {
                    return Err(SourceError::Invalid(format!(
                        "{rel:?} is not a regular file"
                    )));
                }
                Ok((Box::new(f), md.len()))
            }
            Container::Tar { path, entries } => {
                let &(off, size) = entries
                    .get(&rel)
                    .ok_or_else(|| SourceError::Missing(rel.clone()))?;
                let mut f = File::open(path).map_err(io_err(&rel))?;
                f.seek(SeekFrom::Start(off)).map_err(io_err(&rel))?;
                Ok((Box::new(f.take(size)), size))
            }
        }
    }

    fn exists(&self, rel: &str) -> bool {
        match self {
            Container::Dir(dir) => norm_path(rel)
                .map(|r| dir.join(r).exists())
                .unwrap_or(false),
            Container::Tar { entries, .. } => norm_path(rel)
                .map(|r| entries.contains_key(&r))
                .unwrap_or(false),
        }
    }

    /// Reads a small file whole, refusing it before reading if over `limit`.
    fn read_small(&self, rel: &str, limit: u64) -> Result<Vec<u8>> {
        let (r, size) = self.open(rel)?;
        if size > limit {
            return Err(SourceError::Manifest(ManifestError::TooLarge {
                what: "metadata file",
                size,
                limit,
            }));
        }
        let mut data = Vec::with_capacity(size as usize);
        r.take(limit + 1)
            .read_to_end(&mut data)
            .map_err(io_err(rel))?;
        Ok(data)
    }
}

fn blob_path(d: &Digest) -> String {
    format!("blobs/{}/{}", d.algorithm().as_str(), d.hex())
}

/// One layer of a resolved image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerSource {
    /// Digest of the uncompressed layer, from the config.
    pub diff_id: Digest,
    /// Digest of the blob as stored, when the format records one (OCI).
    pub blob_digest: Option<Digest>,
    /// Blob size from the descriptor (OCI).
    pub blob_size: Option<u64>,
    path: String,
}

/// An image resolved inside a source, ready to be verified and unpacked.
pub struct SourceImage {
    container: Container,
    limits: Limits,
    manifest_digest: Option<Digest>,
    config_digest: Digest,
    config: ImageConfiguration,
    config_json: Vec<u8>,
    layers: Vec<LayerSource>,
}

impl std::fmt::Debug for SourceImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceImage")
            .field("manifest_digest", &self.manifest_digest)
            .field("config_digest", &self.config_digest)
            .field("layers", &self.layers)
            .finish_non_exhaustive()
    }
}

impl ImageSource {
    /// Resolves `reference` (a tag such as `latest`, or `name:tag`; `None`
    /// when the source holds exactly one image) for `platform`.
    pub fn open(
        &self,
        reference: Option<&str>,
        platform: &Platform,
        limits: &Limits,
    ) -> Result<SourceImage> {
        match self {
            ImageSource::OciLayout { path } => {
                let c = Container::Dir(path.clone());
                open_oci(c, reference, platform, limits)
            }
            ImageSource::OciArchive { path } => {
                let c = Container::open_tar(path, limits)?;
                open_oci(c, reference, platform, limits)
            }
            ImageSource::DockerArchive { path } => {
                let c = Container::open_tar(path, limits)?;
                open_docker(c, reference, platform, limits)
            }
        }
    }
}

/// Reads a JSON blob named by a descriptor: digest grammar, size cap, size, digest.
fn read_blob(
    c: &Container,
    d: &Descriptor,
    what: &'static str,
    limits: &Limits,
) -> Result<(Digest, Vec<u8>)> {
    let digest = manifest::descriptor_digest(what, d).map_err(SourceError::Manifest)?;
    if d.size() > limits.max_json_bytes {
        return Err(SourceError::Manifest(ManifestError::TooLarge {
            what,
            size: d.size(),
            limit: limits.max_json_bytes,
        }));
    }
    let (r, size) = c.open(&blob_path(&digest))?;
    let mut data = Vec::with_capacity(size.min(limits.max_json_bytes) as usize);
    let verify = |source| SourceError::Verify {
        what: format!("{what} {digest}"),
        source,
    };
    if size != d.size() {
        return Err(verify(DigestError::SizeMismatch {
            digest: digest.to_string(),
            expected: d.size(),
            actual: size,
        }));
    }
    r.take(d.size() + 1)
        .read_to_end(&mut data)
        .map_err(io_err(what))?;
    if data.len() as u64 != d.size() {
        return Err(verify(DigestError::SizeMismatch {
            digest: digest.to_string(),
            expected: d.size(),
            actual: data.len() as u64,
        }));
    }
    digest.verify_bytes(&data).map_err(verify)?;
    Ok((digest, data))
}

fn collect_manifests(
    c: &Container,
    descs: Vec<Descriptor>,
    platform: &Platform,
    limits: &Limits,
    depth: usize,
    out: &mut Vec<Descriptor>,
) -> Result<()> {
    if depth > limits.max_index_depth {
        return Err(SourceError::TooDeep);
    }
    for d in descs {
        if !platform.matches_descriptor(&d) {
            continue;
        }
        if manifest::is_index_type(d.media_type()) {
            let (_, data) = read_blob(c, &d, "image index", limits)?;
            let idx = manifest::parse_index(&data, limits.max_json_bytes)
                .map_err(SourceError::Manifest)?;
            collect_manifests(c, idx.manifests().clone(), platform, limits, depth + 1, out)?;
        } else if manifest::is_manifest_type(d.media_type()) {
            out.push(d);
        }
    }
    Ok(())
}

fn load_config(
    c: &Container,
    d: &Descriptor,
    limits: &Limits,
) -> Result<(Digest, Vec<u8>, ImageConfiguration, Vec<Digest>)> {
    let (digest, data) = read_blob(c, d, "image config", limits)?;
    let (config, diff_ids) =
        manifest::parse_config(&data, limits.max_json_bytes).map_err(SourceError::Manifest)?;
    Ok((digest, data, config, diff_ids))
}

fn open_oci(
    c: Container,
    reference: Option<&str>,
    platform: &Platform,
    limits: &Limits,
) -> Result<SourceImage> {
    let layout = c.read_small("oci-layout", 4096)?;
    let v: serde_json::Value = serde_json::from_slice(&layout)
        .map_err(|_| SourceError::Invalid("oci-layout is not JSON".into()))?;
    match v.get("imageLayoutVersion").and_then(|v| v.as_str()) {
        Some(ver) if ver.starts_with("1.") => {}
        _ => {
            return Err(SourceError::Invalid(
                "unsupported imageLayoutVersion".into(),
            ))
        }
    }
    let index = c.read_small("index.json", limits.max_json_bytes)?;
    let index =
        manifest::parse_index(&index, limits.max_json_bytes).map_err(SourceError::Manifest)?;
    let mut top: Vec<Descriptor> = index.manifests().clone();
    if let Some(r) = reference {
        top.retain(|d| {
            d.annotations()
                .as_ref()
                .and_then(|a| a.get(manifest::REF_NAME))
                .is_some_and(|n| manifest::ref_name_matches(n, r))
        });
        if top.is_empty() {
            return Err(SourceError::ReferenceNotFound(r.into()));
        }
    }
    let mut found = Vec::new();
    collect_manifests(&c, top, platform, limits, 0, &mut found)?;
    // Resolve candidates that had no platform on their descriptor by their config.
    let mut chosen = Vec::new();
    for d in found {
        let (mdigest, data) = read_blob(&c, &d, "image manifest", limits)?;
        let m = manifest::parse_manifest(&data, limits.max_json_bytes)
            .map_err(SourceError::Manifest)?;
        let cfg = load_config(&c, m.config(), limits)?;
        if platform.matches_config(&cfg.2) {
            chosen.push((mdigest, m, cfg));
        }
    }
    let (mdigest, m, (cdigest, cjson, config, diff_ids)) = match chosen.len() {
        0 => {
            return Err(SourceError::NoPlatform {
                os: platform.os.clone(),
                architecture: platform.architecture.clone(),
            })
        }
        1 => chosen.remove(0),
        n => return Err(SourceError::Ambiguous(n)),
    };
    if m.layers().len() != diff_ids.len() {
        return Err(SourceError::LayerCount {
            layers: m.layers().len(),
            diff_ids: diff_ids.len(),
        });
    }
    if m.layers().len() > limits.max_layers {
        return Err(SourceError::Invalid(format!("{} layers", m.layers().len())));
    }
    let layers = m
        .layers()
        .iter()
        .zip(diff_ids)
        .map(|(d, diff_id)| {
            let digest =
                manifest::descriptor_digest("image manifest", d).map_err(SourceError::Manifest)?;
            Ok(LayerSource {
                diff_id,
                path: blob_path(&digest),
                blob_digest: Some(digest),
                blob_size: Some(d.size()),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(SourceImage {
        container: c,
        limits: limits.clone(),
        manifest_digest: Some(mdigest),
        config_digest: cdigest,
        config,
        config_json: cjson,
        layers,
    })
}

fn open_docker(
    c: Container,
    reference: Option<&str>,
    platform: &Platform,
    limits: &Limits,
) -> Result<SourceImage> {
    let data = c.read_small("manifest.json", limits.max_json_bytes)?;
    let mut entries = manifest::parse_docker_manifest(&data, limits.max_json_bytes)
        .map_err(SourceError::Manifest)?;
    if let Some(r) = reference {
        entries.retain(|e| {
            e.repo_tags
                .as_ref()
                .is_some_and(|tags| tags.iter().any(|t| manifest::repo_tag_matches(t, r)))
        });
        if entries.is_empty() {
            return Err(SourceError::ReferenceNotFound(r.into()));
        }
    }
    if entries.len() != 1 {
        return Err(SourceError::Ambiguous(entries.len()));
    }
    let entry = entries.remove(0);
    let cjson = c.read_small(&entry.config, limits.max_json_bytes)?;
    let cdigest = Digest::sha256_of(&cjson);
    // Config files are named after their digest: check the name when it is one.
    let base = entry.config.rsplit('/').next().unwrap_or_default();
    let stem = base.strip_suffix(".json").unwrap_or(base);
    if stem.len() == 64 && stem.bytes().all(|b| b.is_ascii_hexdigit()) && stem != cdigest.hex() {
        return Err(SourceError::Verify {
            what: format!("config {}", entry.config),
            source: DigestError::Mismatch {
                expected: format!("sha256:{stem}"),
                actual: cdigest.to_string(),
            },
        });
    }
    let (config, diff_ids) =
        manifest::parse_config(&cjson, limits.max_json_bytes).map_err(SourceError::Manifest)?;
    if !platform.matches_config(&config) {
        return Err(SourceError::NoPlatform {
            os: platform.os.clone(),
            architecture: platform.architecture.clone(),
        });
    }
    if entry.layers.len() != diff_ids.len() {
        return Err(SourceError::LayerCount {
            layers: entry.layers.len(),
            diff_ids: diff_ids.len(),
        });
    }
    if entry.layers.len() > limits.max_layers {
        return Err(SourceError::Invalid(format!(
            "{} layers",
            entry.layers.len()
        )));
    }
    let layers = entry
        .layers
        .iter()
        .zip(diff_ids)
        .map(|(p, diff_id)| {
            let path = norm_path(p)?;
            if !c.exists(&path) {
                return Err(SourceError::Missing(path));
            }
            Ok(LayerSource {
                diff_id,
                blob_digest: None,
                blob_size: None,
                path,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(SourceImage {
        container: c,
        limits: limits.clone(),
        manifest_digest: None,
        config_digest: cdigest,
        config,
        config_json: cjson,
        layers,
    })
}

impl SourceImage {
    /// Digest of the manifest (OCI sources only).
    pub fn manifest_digest(&self) -> Option<&Digest> {
        self.manifest_digest.as_ref()
    }

    /// Digest of the config blob: the image ID, the same for every format.
    pub fn config_digest(&self) -> &Digest {
        &self.config_digest
    }

    /// The parsed image config.
    pub fn config(&self) -> &ImageConfiguration {
        &self.config
    }

    /// The config blob as stored.
    pub fn config_json(&self) -> &[u8] {
        &self.config_json
    }

    /// The layers, lowest first.
    pub fn layers(&self) -> &[LayerSource] {
        &self.layers
    }

    fn layer(&self, index: usize) -> Result<&LayerSource> {
        self.layers
            .get(index)
            .ok_or_else(|| SourceError::Missing(format!("layer {index}")))
    }

    /// Opens a layer blob as stored (possibly compressed).
    pub fn open_layer(&self, index: usize) -> Result<Box<dyn Read + Send + '_>> {
        let l = self.layer(index)?;
        Ok(self.container.open(&l.path)?.0)
    }

    /// Verifies a layer blob before use: for OCI, its size against the
    /// descriptor and then its digest; for docker archives (which record no
    /// blob digest), the digest of its uncompressed stream against the
    /// config's diff_id.
    pub fn verify_layer(&self, index: usize) -> Result<()> {
        let l = self.layer(index)?;
        let (mut r, size) = self.container.open(&l.path)?;
        let what = format!("layer {index}");
        let verify = |source| SourceError::Verify {
            what: what.clone(),
            source,
        };
        if let (Some(d), Some(expected)) = (&l.blob_digest, l.blob_size) {
            return d.verify_reader(r, expected, size).map_err(verify);
        }
        let mut magic = [0u8; 4];
        let n = read_prefix(&mut r, &mut magic).map_err(io_err(&l.path))?;
        let stream = io::Cursor::new(magic[..n].to_vec()).chain(r);
        let decoded: Box<dyn Read> = match Compression::detect(&magic[..n]) {
            Compression::None => Box::new(stream),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(stream)),
            Compression::Zstd => {
                Box::new(zstd::stream::read::Decoder::new(stream).map_err(io_err(&l.path))?)
            }
        };
        let limit = self.limits.max_layer_bytes;
        let mut hasher = Hasher::new(l.diff_id.algorithm());
        let copied =
            io::copy(&mut decoded.take(limit + 1), &mut hasher).map_err(io_err(&l.path))?;
        if copied > limit {
            return Err(SourceError::Unpack {
                index,
                diff_id: l.diff_id.to_string(),
                source: UnpackError::TooLarge { limit },
            });
        }
        l.diff_id.check(hasher.finish()).map_err(verify)
    }

    /// Verifies then applies one layer onto `root`, checking its diff_id.
    pub fn apply_layer(
        &self,
        index: usize,
        root: &Path,
        opts: &UnpackOptions,
    ) -> Result<LayerMeta> {
        self.verify_layer(index)?;
        let l = self.layer(index)?;
        let r = self.open_layer(index)?;
        unpack::apply_layer(r, root, opts, Some(&l.diff_id)).map_err(|source| SourceError::Unpack {
            index,
            diff_id: l.diff_id.to_string(),
            source,
        })
    }

    /// Unpacks the whole image, flattened, into a new directory `dest`
    /// (which must not exist). Layers are applied into a scratch directory
    /// next to `dest` that is renamed into place only when all succeeded;
    /// on error nothing is left behind.
    pub fn unpack_rootfs(&self, dest: &Path, opts: &UnpackOptions) -> Result<Vec<LayerMeta>> {
        if dest.symlink_metadata().is_ok() {
            return Err(SourceError::DestinationExists(dest.to_owned()));
        }
        let parent = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let scratch = parent.join(format!(
            ".{name}.unpack-{}-{}",
            std::process::id(),
            crate::store::unique()
        ));
        let shown = scratch.display().to_string();
        std::fs::create_dir(&scratch).map_err(io_err(&shown))?;
        let opts = opts.clone().whiteouts(WhiteoutMode::Apply);
        let result = (|| {
            let mut metas = Vec::new();
            for i in 0..self.layers.len() {
                metas.push(self.apply_layer(i, &scratch, &opts)?);
            }
            std::fs::rename(&scratch, dest).map_err(io_err(&shown))?;
            Ok(metas)
        })();
        if result.is_err() {
            let _ = crate::sys::remove_tree(&scratch);
        }
        result
    }
}

fn read_prefix(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_paths_are_normalized_and_checked() {
        assert_eq!(norm_path("./blobs//sha256/ab").unwrap(), "blobs/sha256/ab");
        assert!(norm_path("../x").is_err());
        assert!(norm_path("/etc/passwd").is_err());
        assert!(norm_path("a/../../b").is_err());
        assert!(norm_path("").is_err());
    }
}
