//! Pulling images from OCI registries (Distribution API v2).
//!
//! [`Client::pull_layout`] resolves a [`Reference`] to one image manifest
//! (picking the platform from an OCI index or a Docker manifest list),
//! fetches its config, downloads its layers in parallel, and writes an OCI
//! image layout holding them. [`ImageStore::pull`](crate::ImageStore::pull)
//! then imports that layout exactly as it imports `oci:` images, so a pulled
//! image lands in the same store, verified and unpacked the same way.
//!
//! # Decisions
//!
//! - **A small blocking client on `ureq` and `oci-spec`, not `oci-client`.**
//!   `oci-client` is async (it brings tokio and reqwest into a crate that is
//!   otherwise synchronous), and its `pull()` keeps whole layers in memory;
//!   only its lower-level blob streaming avoids that, and then resuming,
//!   shared downloads and store integration are ours to write anyway. What
//!   is needed of the protocol is small: `GET /v2/`, manifests, blobs, the
//!   token endpoint. `ureq` is blocking, pools connections, follows blob
//!   redirects without leaking `Authorization` to other hosts, and adds
//!   rustls only; `oci-spec` (already a dependency) types every document.
//! - **rustls with `rustls-native-certs`, not `webpki-roots`.** Registries
//!   behind corporate or private CAs are trusted through the system store
//!   (`update-ca-certificates`), as podman and skopeo trust them; a compiled-in
//!   Mozilla list would ignore that. A caller-given CA
//!   ([`ClientOptions::ca_file`]) is added to it.
//! - **Plain HTTP** only for loopback registries and those marked
//!   [`ClientOptions::insecure`], and only after HTTPS failed. Certificate
//!   checks are never turned off: give the registry's CA instead.
//! - **Verification.** A digest-pinned reference must match the bytes of
//!   the manifest (or index) received; otherwise `Docker-Content-Digest`, when
//!   sent, must. Child manifests, config and layers are checked by size and
//!   digest against their descriptors; a layer is refused as soon as it
//!   grows past its size and deleted if its digest is wrong, before the
//!   store sees it. The store then verifies everything again on import.
//! - **Downloads** stream to disk and resume with `Range` (see `blob.rs`),
//!   at most [`ClientOptions::jobs`] at once (3 by default, as podman).
//!
//! Credentials: see [`auth`]. Schema 1 manifests and foreign layers (with
//! `urls`) are not supported.

pub mod auth;
mod blob;
mod error;
pub mod reference;
mod transport;

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use oci_spec::image::{Descriptor, ImageManifest};

pub use auth::Credentials;
pub use reference::{Reference, ReferenceError};

use crate::digest::{Digest, DigestError};
use crate::limits::Limits;
use crate::manifest::{self, ManifestError, Platform};
use blob::Downloads;
use transport::{Endpoint, Transport};

pub use error::{RegistryError, Result};

/// Locks a mutex, ignoring poisoning (the data are plain values).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where a layer's download stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerState {
    /// Not started.
    Waiting,
    /// Already in the image store: nothing to download.
    Cached,
    /// Bytes are arriving.
    Downloading,
    /// A broken download is being resumed from byte `from`.
    Resumed {
        /// Bytes already on disk.
        from: u64,
    },
    /// Another pull downloaded it; this one reused its bytes.
    Shared,
    /// Downloaded and verified.
    Verified,
}

/// One progress report: a layer and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerProgress {
    /// Layer position in the manifest, 0 = lowest.
    pub index: usize,
    /// The layer blob's digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub total: u64,
    /// Bytes on disk so far.
    pub done: u64,
    /// Where it stands.
    pub state: LayerState,
}

/// A progress callback; called from the download threads.
pub type ProgressFn = Arc<dyn Fn(&LayerProgress) + Send + Sync>;

/// How a [`Client`] reaches registries.
#[derive(Clone)]
pub struct ClientOptions {
    insecure: HashSet<String>,
    ca_files: Vec<PathBuf>,
    auth_files: Option<Vec<PathBuf>>,
    credentials: Option<Credentials>,
    jobs: usize,
    retries: u32,
    timeout: Duration,
    progress: Option<ProgressFn>,
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("insecure", &self.insecure)
            .field("ca_files", &self.ca_files)
            .field("auth_files", &self.auth_files)
            .field("credentials", &self.credentials)
            .field("jobs", &self.jobs)
            .field("retries", &self.retries)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            insecure: HashSet::new(),
            ca_files: Vec::new(),
            auth_files: None,
            credentials: None,
            jobs: 3,
            retries: 5,
            timeout: Duration::from_secs(60),
            progress: None,
        }
    }
}

impl ClientOptions {
    /// Default options: system roots, default auth files, 3 parallel downloads.
    pub fn new() -> Self {
        Self::default()
    }

    /// Allows plain HTTP to `registry` (`host[:port]` as in references).
    pub fn insecure(mut self, registry: impl Into<String>) -> Self {
        self.insecure.insert(registry.into());
        self
    }

    /// Trusts the CA certificates (PEM) in `path` besides the system's.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_files.push(path.into());
        self
    }

    /// Searches these auth files instead of the default ones
    /// ([`auth::default_auth_files`]).
    pub fn auth_files(mut self, files: Vec<PathBuf>) -> Self {
        self.auth_files = Some(files);
        self
    }

    /// Uses these credentials for every registry instead of auth files.
    pub fn credentials(mut self, c: Credentials) -> Self {
        self.credentials = Some(c);
        self
    }

    /// Most layers downloaded at once (at least 1; default 3).
    pub fn jobs(mut self, n: usize) -> Self {
        self.jobs = n.max(1);
        self
    }

    /// Times a broken layer download is resumed before giving up (default 5).
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    /// Connect and read timeout (default 60 s).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Reports each layer's progress to `f`.
    pub fn progress(self, f: impl Fn(&LayerProgress) + Send + Sync + 'static) -> Self {
        self.progress_shared(Arc::new(f))
    }

    /// Reports each layer's progress to a shared callback.
    pub fn progress_shared(mut self, f: ProgressFn) -> Self {
        self.progress = Some(f);
        self
    }
}

/// A registry client. Cheap to clone; holds the TLS configuration.
#[derive(Clone)]
pub struct Client {
    opts: ClientOptions,
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("opts", &self.opts).finish()
    }
}

/// Where [`Client::pull_layout`] puts things and what it may skip.
pub struct PullTarget<'a> {
    /// A new, empty directory that becomes an OCI image layout.
    pub layout: &'a Path,
    /// The shared download directory (partial and complete blobs, locks).
    pub downloads: &'a Path,
    /// The platform to pick from indexes.
    pub platform: &'a Platform,
    /// Caps on documents and layer counts.
    pub limits: &'a Limits,
    /// True for diff_ids whose layer is already unpacked: they are not fetched.
    pub have_layer: &'a (dyn Fn(&Digest) -> bool + Sync),
}

/// What [`Client::pull_layout`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledLayout {
    /// The reference pinned to the digest that was resolved (the index's
    /// when the reference named one).
    pub resolved: Reference,
    /// Digest of the platform's image manifest.
    pub manifest_digest: Digest,
    /// Digest of the config (the image ID).
    pub config_digest: Digest,
    /// Layer blob digests downloaded or reused by this pull (to release once imported).
    pub fetched: Vec<Digest>,
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

impl Client {
    /// A client with `opts`; loads the system's CA certificates.
    pub fn new(opts: ClientOptions) -> Result<Client> {
        let tls = transport::tls_config(&opts.ca_files)?;
        Ok(Client { opts, tls })
    }

    fn connect(&self, r: &Reference) -> Result<Transport> {
        let credentials = match &self.opts.credentials {
            Some(c) => Some(c.clone()),
            None => {
                let files = match &self.opts.auth_files {
                    Some(f) => f.clone(),
                    None => auth::default_auth_files(),
                };
                auth::lookup(&files, r.registry(), r.repository())?
            }
        };
        Transport::connect(Endpoint {
            registry: r.registry(),
            api_host: r.api_host(),
            repository: r.repository(),
            plain_http_ok: self.opts.insecure.contains(r.registry())
                || transport::is_loopback(r.registry()),
            credentials,
            tls: self.tls.clone(),
            timeout: self.opts.timeout,
        })
    }

    /// Reads a manifest or index; returns its media type, digest and bytes.
    fn fetch_manifest(
        &self,
        t: &Transport,
        r: &Reference,
        at: &str,
        expected: Option<&Digest>,
        limits: &Limits,
    ) -> Result<(String, Digest, Vec<u8>)> {
        let accept = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].join(", ");
        let what = format!("manifest {}", r.familiar());
        let resp = t.get(&format!("manifests/{at}"), &[("Accept", &accept)], &what)?;
        let media_type = resp
            .header("content-type")
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let header_digest = resp
            .header("docker-content-digest")
            .and_then(|d| Digest::parse(d).ok());
        let mut data = Vec::new();
        resp.into_reader()
            .take(limits.max_json_bytes + 1)
            .read_to_end(&mut data)
            .map_err(|e| RegistryError::Unreachable {
                registry: r.registry().to_owned(),
                reason: format!("reading {what}: {e}"),
            })?;
        if data.len() as u64 > limits.max_json_bytes {
            return Err(RegistryError::Manifest {
                what,
                source: Box::new(ManifestError::TooLarge {
                    what: "manifest",
                    size: data.len() as u64,
                    limit: limits.max_json_bytes,
                }),
            });
        }
        let algorithm = expected
            .map(|d| d.algorithm())
            .unwrap_or(crate::digest::Algorithm::Sha256);
        let mut h = crate::digest::Hasher::new(algorithm);
        h.update(&data);
        let actual = h.finish();
        if let Some(want) = expected.or(header_digest.as_ref()) {
            if *want != actual && want.algorithm() == actual.algorithm() {
                return Err(RegistryError::ManifestDigest {
                    reference: r.familiar(),
                    expected: want.to_string(),
                    actual: actual.to_string(),
                });
            }
        }
        Ok((media_type, actual, data))
    }

    /// Resolves `r` to a platform manifest, downloads config and layers,
    /// and writes an OCI layout at `target.layout` naming that manifest.
    pub fn pull_layout(&self, r: &Reference, target: &PullTarget<'_>) -> Result<PulledLayout> {
        let t = self.connect(r)?;
        let limits = target.limits;
        let (mut media_type, top_digest, mut data) =
            self.fetch_manifest(&t, r, &r.manifest_reference(), r.digest(), limits)?;
        let mut digest = top_digest.clone();
        let mut depth = 0;
        while media_type == OCI_INDEX
            || media_type == DOCKER_LIST
            || is_untyped_index(&media_type, &data)
        {
            depth += 1;
            if depth > limits.max_index_depth {
                return Err(RegistryError::UnsupportedManifest {
                    reference: r.familiar(),
                    media_type,
                    hint: ": indexes nest too deep",
                });
            }
            let d = pick_platform(r, &data, target.platform, limits)?;
            let want = manifest::descriptor_digest("image index", &d).map_err(|source| {
                RegistryError::Manifest {
                    what: format!("index of {}", r.familiar()),
                    source: Box::new(source),
                }
            })?;
            let (mt, got, bytes) =
                self.fetch_manifest(&t, r, &want.to_string(), Some(&want), limits)?;
            if bytes.len() as u64 != d.size() {
                return Err(RegistryError::Verify {
                    what: format!("manifest {want}"),
                    source: DigestError::SizeMismatch {
                        digest: want.to_string(),
                        expected: d.size(),
                        actual: bytes.len() as u64,
                    },
                });
            }
            (media_type, digest, data) = (mt, got, bytes);
        }
        if media_type != OCI_MANIFEST && media_type != DOCKER_MANIFEST && !media_type.is_empty() {
            let hint = if media_type.contains("distribution.manifest.v1") {
                ": schema 1 manifests are not supported; push the image again with a current client"
            } else {
                ""
            };
            return Err(RegistryError::UnsupportedManifest {
                reference: r.familiar(),
                media_type,
                hint,
            });
        }
        let m = manifest::parse_manifest(&data, limits.max_json_bytes).map_err(|source| {
            RegistryError::Manifest {
                what: format!("manifest of {}", r.familiar()),
                source: Box::new(source),
            }
        })?;
        let blobs = target.layout.join("blobs");
        write_blob(&blobs, &digest, &data)?;
        let (config_digest, diff_ids) = self.fetch_config(&t, r, &m, &blobs, target)?;
        let fetched = self.fetch_layers(&t, &m, &diff_ids, &blobs, target)?;
        write_layout(target.layout, &media_type, &digest, data.len() as u64)?;
        Ok(PulledLayout {
            resolved: r.with_digest(top_digest),
            manifest_digest: digest,
            config_digest,
            fetched,
        })
    }

    fn fetch_config(
        &self,
        t: &Transport,
        r: &Reference,
        m: &ImageManifest,
        blobs: &Path,
        target: &PullTarget<'_>,
    ) -> Result<(Digest, Vec<Digest>)> {
        let d = m.config();
        let what = format!("config of {}", r.familiar());
        let digest = manifest::descriptor_digest("image manifest", d).map_err(|source| {
            RegistryError::Manifest {
                what: what.clone(),
                source: Box::new(source),
            }
        })?;
        let max = target.limits.max_json_bytes;
        if d.size() > max {
            return Err(RegistryError::Manifest {
                what,
                source: Box::new(ManifestError::TooLarge {
                    what: "image config",
                    size: d.size(),
                    limit: max,
                }),
            });
        }
        let resp = t.get(&format!("blobs/{digest}"), &[], &what)?;
        let mut data = Vec::new();
        resp.into_reader()
            .take(d.size() + 1)
            .read_to_end(&mut data)
            .map_err(|e| RegistryError::Unreachable {
                registry: r.registry().to_owned(),
                reason: format!("reading {what}: {e}"),
            })?;
        digest
            .verify_reader(&data[..], d.size(), data.len() as u64)
            .map_err(|source| RegistryError::Verify { what, source })?;
        let (config, diff_ids) =
            manifest::parse_config(&data, max).map_err(|source| RegistryError::Manifest {
                what: format!("config of {}", r.familiar()),
                source: Box::new(source),
            })?;
        if !target.platform.matches_config(&config) {
            return Err(RegistryError::NoPlatform {
                reference: r.familiar(),
                wanted: format!("{}/{}", target.platform.os, target.platform.architecture),
                available: format!("{}/{}", config.os(), config.architecture()),
            });
        }
        if diff_ids.len() != m.layers().len() || m.layers().len() > target.limits.max_layers {
            return Err(RegistryError::Manifest {
                what: format!("manifest of {}", r.familiar()),
                source: Box::new(ManifestError::Invalid {
                    what: "image manifest",
                    reason: format!(
                        "{} layers and {} diff_ids",
                        m.layers().len(),
                        diff_ids.len()
                    ),
                }),
            });
        }
        write_blob(blobs, &digest, &data)?;
        Ok((digest, diff_ids))
    }

    /// Downloads the layers not yet in the store, `jobs` at a time, each
    /// once even if the manifest lists it twice.
    fn fetch_layers(
        &self,
        t: &Transport,
        m: &ImageManifest,
        diff_ids: &[Digest],
        blobs: &Path,
        target: &PullTarget<'_>,
    ) -> Result<Vec<Digest>> {
        let mut todo: Vec<blob::Job> = Vec::new();
        let mut seen = HashSet::new();
        for (i, (d, diff_id)) in m.layers().iter().zip(diff_ids).enumerate() {
            if d.urls().as_ref().is_some_and(|u| !u.is_empty()) {
                return Err(RegistryError::UnsupportedManifest {
                    reference: format!("layer {i}"),
                    media_type: d.media_type().to_string(),
                    hint: ": foreign layers (with urls) are not supported",
                });
            }
            let digest = manifest::descriptor_digest("image manifest", d).map_err(|source| {
                RegistryError::Manifest {
                    what: format!("layer {i}"),
                    source: Box::new(source),
                }
            })?;
            // Compressed bytes never exceed the uncompressed cap by much;
            // refuse a hostile size before downloading anything.
            if d.size() > target.limits.max_layer_bytes {
                return Err(RegistryError::Manifest {
                    what: format!("layer {i}"),
                    source: Box::new(ManifestError::TooLarge {
                        what: "layer blob",
                        size: d.size(),
                        limit: target.limits.max_layer_bytes,
                    }),
                });
            }
            if seen.insert(digest.clone()) {
                todo.push((i, digest, d.size(), diff_id.clone()));
            }
        }
        blob::fetch_parallel(
            &Downloads::open(target.downloads)?,
            t,
            &todo,
            blobs,
            target,
            &self.opts,
        )
    }
}

/// Drops downloaded blobs whose layers the store now holds.
pub(crate) fn release_downloads(dir: &Path, digests: &[Digest]) -> Result<()> {
    let downloads = Downloads::open(dir)?;
    for d in digests {
        downloads.release(d)?;
    }
    Ok(())
}

/// Whether an untyped document (no Content-Type) is an index.
fn is_untyped_index(media_type: &str, data: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(default)]
        manifests: Option<serde_json::Value>,
    }
    media_type.is_empty()
        && serde_json::from_slice::<Probe>(data).is_ok_and(|p| p.manifests.is_some())
}

/// Picks the manifest for `platform` from an index or manifest list.
fn pick_platform(
    r: &Reference,
    data: &[u8],
    platform: &Platform,
    limits: &Limits,
) -> Result<Descriptor> {
    let idx = manifest::parse_index(data, limits.max_json_bytes).map_err(|source| {
        RegistryError::Manifest {
            what: format!("index of {}", r.familiar()),
            source: Box::new(source),
        }
    })?;
    let usable = |d: &&Descriptor| {
        manifest::is_manifest_type(d.media_type()) || manifest::is_index_type(d.media_type())
    };
    // Entries with a platform that matches first; then untyped ones.
    let found = idx
        .manifests()
        .iter()
        .filter(usable)
        .find(|d| d.platform().is_some() && platform.matches_descriptor(d))
        .or_else(|| {
            idx.manifests()
                .iter()
                .filter(usable)
                .find(|d| d.platform().is_none())
        });
    match found {
        Some(d) => Ok(d.clone()),
        None => Err(RegistryError::NoPlatform {
            reference: r.familiar(),
            wanted: format!("{}/{}", platform.os, platform.architecture),
            available: idx
                .manifests()
                .iter()
                .filter_map(|d| d.platform().as_ref())
                .map(|p| format!("{}/{}", p.os(), p.architecture()))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// `<layout>/blobs/<alg>/<hex>`, its directory created.
pub(crate) fn layout_blob_path(blobs: &Path, digest: &Digest) -> Result<PathBuf> {
    let dir = blobs.join(digest.algorithm().as_str());
    std::fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
    Ok(dir.join(digest.hex()))
}

fn write_blob(blobs: &Path, digest: &Digest, data: &[u8]) -> Result<()> {
    let p = layout_blob_path(blobs, digest)?;
    std::fs::write(&p, data).map_err(io_err("writing", &p))
}

/// Writes `oci-layout` and an `index.json` naming the one manifest.
fn write_layout(layout: &Path, media_type: &str, digest: &Digest, size: u64) -> Result<()> {
    let media_type = if media_type.is_empty() {
        OCI_MANIFEST
    } else {
        media_type
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": media_type,
            "digest": digest.to_string(),
            "size": size,
        }],
    });
    let p = layout.join("index.json");
    std::fs::write(&p, index.to_string()).map_err(io_err("writing", &p))?;
    let p = layout.join("oci-layout");
    std::fs::write(&p, r#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io_err("writing", &p))
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError {
    let path = path.to_owned();
    move |source| RegistryError::Io { op, path, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const M2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn list(entries: &[(&str, Option<(&str, &str)>)]) -> Vec<u8> {
        let manifests: Vec<_> = entries
            .iter()
            .map(|(d, p)| {
                let mut e = serde_json::json!({
                    "mediaType": DOCKER_MANIFEST, "digest": d, "size": 10,
                });
                if let Some((os, arch)) = p {
                    e["platform"] = serde_json::json!({"os": os, "architecture": arch});
                }
                e
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": manifests,
        }))
        .unwrap()
    }

    fn pick(data: &[u8], arch: &str) -> Result<String> {
        let r: Reference = "example.com/app".parse().unwrap();
        let p = Platform {
            os: "linux".into(),
            architecture: arch.into(),
        };
        pick_platform(&r, data, &p, &Limits::default()).map(|d| d.digest().to_string())
    }

    #[test]
    fn the_wanted_platform_is_picked_from_a_list() {
        let data = list(&[
            (M1, Some(("linux", "arm64"))),
            (M2, Some(("linux", "amd64"))),
        ]);
        assert_eq!(pick(&data, "amd64").unwrap(), M2);
        assert_eq!(pick(&data, "arm64").unwrap(), M1);
        match pick(&data, "s390x") {
            Err(RegistryError::NoPlatform {
                wanted, available, ..
            }) => {
                assert_eq!(wanted, "linux/s390x");
                assert_eq!(available, "linux/arm64, linux/amd64");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn entries_without_a_platform_are_a_fallback() {
        let data = list(&[(M1, None), (M2, Some(("linux", "amd64")))]);
        assert_eq!(pick(&data, "amd64").unwrap(), M2);
        assert_eq!(pick(&data, "riscv64").unwrap(), M1);
    }

    #[test]
    fn untyped_documents_are_told_apart_by_their_fields() {
        assert!(is_untyped_index("", &list(&[(M1, None)])));
        assert!(!is_untyped_index("", br#"{"schemaVersion":2,"layers":[]}"#));
        assert!(!is_untyped_index(OCI_MANIFEST, &list(&[(M1, None)])));
    }
}
