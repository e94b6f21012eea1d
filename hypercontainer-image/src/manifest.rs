//! Parsing of image indexes, manifests, configs and docker-archive
//! `manifest.json`, with size caps, plus platform and reference selection.

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};
use serde::Deserialize;

use crate::digest::{Digest, DigestError};

/// Errors from parsing image metadata.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The document is larger than allowed.
    #[error("{what} of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Which document.
        what: &'static str,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The JSON does not parse as the expected document.
    #[error("malformed {what}")]
    Json {
        /// Which document.
        what: &'static str,
        /// The parser error.
        #[source]
        source: serde_json::Error,
    },
    /// A digest in the document is not usable.
    #[error("bad digest in {what}")]
    Digest {
        /// Which document.
        what: &'static str,
        /// The digest error.
        #[source]
        source: DigestError,
    },
    /// The document is structurally invalid.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// Which document.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, ManifestError>;

fn cap(what: &'static str, data: &[u8], limit: u64) -> Result<()> {
    if data.len() as u64 > limit {
        return Err(ManifestError::TooLarge {
            what,
            size: data.len() as u64,
            limit,
        });
    }
    Ok(())
}

fn json<T: for<'de> Deserialize<'de>>(what: &'static str, data: &[u8], limit: u64) -> Result<T> {
    cap(what, data, limit)?;
    serde_json::from_slice(data).map_err(|source| ManifestError::Json { what, source })
}

/// Validates a descriptor's digest against this crate's grammar and algorithms.
pub fn descriptor_digest(what: &'static str, d: &Descriptor) -> Result<Digest> {
    Digest::parse(d.digest().as_ref()).map_err(|source| ManifestError::Digest { what, source })
}

/// Parses an image index (`index.json` or a nested index blob).
pub fn parse_index(data: &[u8], limit: u64) -> Result<ImageIndex> {
    let idx: ImageIndex = json("image index", data, limit)?;
    if idx.schema_version() != 2 {
        return Err(ManifestError::Invalid {
            what: "image index",
            reason: format!("schemaVersion {}", idx.schema_version()),
        });
    }
    for d in idx.manifests() {
        descriptor_digest("image index", d)?;
    }
    Ok(idx)
}

/// Parses an image manifest; checks its digests and that it has a config.
pub fn parse_manifest(data: &[u8], limit: u64) -> Result<ImageManifest> {
    let m: ImageManifest = json("image manifest", data, limit)?;
    if m.schema_version() != 2 {
        return Err(ManifestError::Invalid {
            what: "image manifest",
            reason: format!("schemaVersion {}", m.schema_version()),
        });
    }
    descriptor_digest("image manifest", m.config())?;
    for l in m.layers() {
        descriptor_digest("image manifest", l)?;
        if !is_layer_type(l.media_type()) {
            return Err(ManifestError::Invalid {
                what: "image manifest",
                reason: format!("unsupported layer media type {}", l.media_type()),
            });
        }
    }
    Ok(m)
}

/// Parses an image configuration and returns it with its validated diff_ids.
pub fn parse_config(data: &[u8], limit: u64) -> Result<(ImageConfiguration, Vec<Digest>)> {
    let c: ImageConfiguration = json("image config", data, limit)?;
    if c.rootfs().typ() != "layers" {
        return Err(ManifestError::Invalid {
            what: "image config",
            reason: format!("rootfs type {:?}", c.rootfs().typ()),
        });
    }
    let diff_ids = c
        .rootfs()
        .diff_ids()
        .iter()
        .map(|s| {
            Digest::parse(s).map_err(|source| ManifestError::Digest {
                what: "image config",
                source,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((c, diff_ids))
}

/// One entry of a docker-archive `manifest.json`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct DockerManifestEntry {
    /// Path of the config JSON inside the archive.
    pub config: String,
    /// Tags (`name:tag`) this entry is known by.
    #[serde(default)]
    pub repo_tags: Option<Vec<String>>,
    /// Paths of the layer tarballs, lowest first.
    pub layers: Vec<String>,
}

/// Parses a docker-archive `manifest.json`.
pub fn parse_docker_manifest(data: &[u8], limit: u64) -> Result<Vec<DockerManifestEntry>> {
    let v: Vec<DockerManifestEntry> = json("docker manifest.json", data, limit)?;
    if v.is_empty() {
        return Err(ManifestError::Invalid {
            what: "docker manifest.json",
            reason: "no images".into(),
        });
    }
    Ok(v)
}

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Whether a media type names an image manifest (OCI or Docker schema 2).
pub fn is_manifest_type(m: &MediaType) -> bool {
    match m {
        MediaType::ImageManifest => true,
        MediaType::Other(s) => s == DOCKER_MANIFEST,
        _ => false,
    }
}

/// Whether a media type names an image index (OCI or Docker manifest list).
pub fn is_index_type(m: &MediaType) -> bool {
    match m {
        MediaType::ImageIndex => true,
        MediaType::Other(s) => s == DOCKER_LIST,
        _ => false,
    }
}

/// Whether a media type names a layer this crate can apply.
pub fn is_layer_type(m: &MediaType) -> bool {
    match m {
        MediaType::ImageLayer
        | MediaType::ImageLayerGzip
        | MediaType::ImageLayerZstd
        | MediaType::ImageLayerNonDistributable
        | MediaType::ImageLayerNonDistributableGzip
        | MediaType::ImageLayerNonDistributableZstd => true,
        MediaType::Other(s) => matches!(
            s.as_str(),
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
                | "application/vnd.docker.image.rootfs.diff.tar"
                | "application/vnd.docker.image.rootfs.diff.tar.zstd"
        ),
        _ => false,
    }
}

/// A target platform (`os`/`architecture`, optional variant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// GOOS value, e.g. `linux`.
    pub os: String,
    /// GOARCH value, e.g. `amd64`.
    pub architecture: String,
}

impl Default for Platform {
    /// linux/amd64.
    fn default() -> Self {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
        }
    }
}

impl Platform {
    /// Whether a descriptor's platform (if any) matches. Descriptors without
    /// a platform match; the config is checked later.
    pub fn matches_descriptor(&self, d: &Descriptor) -> bool {
        match d.platform() {
            None => true,
            Some(p) => {
                p.os().to_string() == self.os && p.architecture().to_string() == self.architecture
            }
        }
    }

    /// Whether an image config is for this platform.
    pub fn matches_config(&self, c: &ImageConfiguration) -> bool {
        c.os().to_string() == self.os && c.architecture().to_string() == self.architecture
    }
}

/// Annotation holding a tag in an OCI layout's index.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Whether a layout index entry's ref name matches the wanted reference.
/// `wanted` may be the bare tag (`latest`) or a full `name:tag`.
pub fn ref_name_matches(ref_name: &str, wanted: &str) -> bool {
    if ref_name == wanted {
        return true;
    }
    match split_tag(wanted) {
        (_, Some(tag)) => tag == ref_name,
        _ => false,
    }
}

fn split_tag(r: &str) -> (&str, Option<&str>) {
    let r = r.split('@').next().unwrap_or(r);
    match r.rfind(':') {
        Some(i) if !r[i..].contains('/') => (&r[..i], Some(&r[i + 1..])),
        _ => (r, None),
    }
}

fn normalize_docker_ref(r: &str) -> String {
    let (name, tag) = split_tag(r);
    let mut name = name;
    for p in [
        "docker.io/library/",
        "docker.io/",
        "index.docker.io/library/",
        "index.docker.io/",
    ] {
        if let Some(rest) = name.strip_prefix(p) {
            name = rest;
            break;
        }
    }
    let name = name.strip_prefix("library/").unwrap_or(name);
    format!("{name}:{}", tag.unwrap_or("latest"))
}

/// Whether a docker-archive `RepoTags` entry matches the wanted reference
/// (`busybox` = `busybox:latest` = `docker.io/library/busybox:latest`).
pub fn repo_tag_matches(tag: &str, wanted: &str) -> bool {
    normalize_docker_ref(tag) == normalize_docker_ref(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs() {
        assert!(ref_name_matches("t", "t"));
        assert!(ref_name_matches("t", "example/img:t"));
        assert!(ref_name_matches("t", "localhost:5000/img:t"));
        assert!(!ref_name_matches("t", "localhost:5000/img"));
        assert!(repo_tag_matches("docker.io/example/img:t", "example/img:t"));
        assert!(repo_tag_matches(
            "docker.io/library/busybox:latest",
            "busybox"
        ));
        assert!(!repo_tag_matches(
            "docker.io/example/img:t",
            "example/img:u"
        ));
    }

    #[test]
    fn size_caps_and_digests() {
        let big = vec![b' '; 100];
        assert!(matches!(
            parse_index(&big, 10),
            Err(ManifestError::TooLarge { .. })
        ));
        let bad = br#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:../../../etc/passwd","size":1}]}"#;
        assert!(parse_index(bad, 1 << 20).is_err());
        let md5 = br#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"md5:d41d8cd98f00b204e9800998ecf8427e","size":1}]}"#;
        assert!(matches!(
            parse_index(md5, 1 << 20),
            Err(ManifestError::Digest { .. })
        ));
        let cfg = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:nothex"]}}"#;
        assert!(matches!(
            parse_config(cfg, 1 << 20),
            Err(ManifestError::Digest { .. })
        ));
    }
}
