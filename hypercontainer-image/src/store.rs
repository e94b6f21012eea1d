//! The content-addressed image store.
//!
//! Layout under the store directory:
//!
//! ```text
//! store.lock                     shared by imports, exclusive for gc
//! layers/sha256/<diff_id hex>/   one entry per uncompressed layer:
//!     meta.json                    what unpacking recorded (LayerMeta)
//!     layer.erofs                  read-only filesystem image (overlay lower)
//!     tree/                        the unpacked tree, if kept
//! images/sha256/<config hex>.json  one record per image (config digest = image ID)
//! locks/<alg>-<hex>.lock           per-layer build locks
//! refs/<sha256 of name>.json       which image a pulled reference last named
//! downloads/                       registry pulls: partial and verified blobs, per-blob locks
//! tmp/                             scratch space; never read as cache entries
//! ```
//!
//! A registry pull ([`ImageStore::pull`]) downloads into `downloads/`, links
//! the blobs into an OCI layout in `tmp/`, imports that layout as any `oci:`
//! image, and then drops the downloaded layer blobs: the store keeps layers
//! unpacked, by diff_id, and a layer it has is never downloaded again.
//!
//! Every entry is built in `tmp/` and renamed into place only when it is
//! complete (after `syncfs` when durability is on), so a crash mid-import
//! leaves at most garbage in `tmp/`, which [`ImageStore::gc`] removes.
//! Processes coordinate with `flock`: an import holds `store.lock` shared and
//! a layer's lock exclusively while building it; gc holds `store.lock`
//! exclusively, so it never races an import.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use oci_spec::image::ImageConfiguration;
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::erofs::{ErofsBuilder, ErofsError};
use crate::limits::Limits;
use crate::manifest::Platform;
use crate::process::{self, ProcessDefaults, ProcessError, ProcessOverrides};
use crate::registry::{self, Client, PullTarget, Reference, RegistryError};
use crate::source::{ImageSource, SourceError, SourceImage};
use crate::sys;
use crate::unpack::{LayerMeta, UnpackOptions, WhiteoutMode};

/// Errors from the image store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A store file or directory operation failed.
    #[error("{op} {path:?}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Reading, verifying or unpacking the source failed.
    #[error("importing from the image source")]
    Source(#[from] SourceError),
    /// Pulling from a registry failed.
    #[error("pulling from the registry")]
    Registry(#[from] RegistryError),
    /// The reference was never pulled into this store and pulling is off.
    #[error("image {reference} is not in the image store and pulling is off: pull it first")]
    NotPulled {
        /// The reference.
        reference: String,
    },
    /// Building a layer's filesystem image failed.
    #[error("building the EROFS image of layer {diff_id}")]
    Erofs {
        /// The layer.
        diff_id: String,
        /// The build error.
        #[source]
        source: ErofsError,
    },
    /// A store record is corrupt.
    #[error("corrupt store record {path:?}")]
    Corrupt {
        /// The record.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, StoreError>;

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_owned();
    move |source| StoreError::Io { op, path, source }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A process-unique token for scratch names.
pub(crate) fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{nanos:x}-{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// An flock held until dropped.
struct Lock(#[allow(dead_code)] File);

impl Lock {
    fn acquire(path: &Path, exclusive: bool) -> Result<Lock> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io_err("opening lock", path))?;
        let op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        sys::flock(f.as_raw_fd(), op).map_err(io_err("locking", path))?;
        Ok(Lock(f))
    }
}

/// One layer of an imported image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// Digest of the uncompressed layer (the cache key).
    pub diff_id: Digest,
    /// Digest of the blob it was imported from (OCI sources).
    pub blob_digest: Option<Digest>,
    /// The read-only EROFS image of this layer (overlay representation:
    /// whiteouts as 0/0 character devices, opaque dirs by xattr), if built.
    pub erofs_path: Option<PathBuf>,
    /// The unpacked tree, if the store keeps trees.
    pub tree_path: Option<PathBuf>,
    /// What unpacking recorded (devices, ownership not applied, ...).
    pub meta: LayerMeta,
}

/// An imported image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The image ID: digest of the config blob (the same whichever format
    /// the image was imported from).
    pub id: Digest,
    /// Digest of the manifest it was imported from, for OCI sources.
    pub manifest_digest: Option<Digest>,
    /// The image config.
    pub config: ImageConfiguration,
    /// Layers, lowest first: mount as overlay lowers in reverse order.
    pub layers: Vec<Layer>,
}

impl Image {
    /// The process to start: the config's defaults merged with `overrides`.
    pub fn process_defaults(
        &self,
        overrides: &ProcessOverrides,
    ) -> std::result::Result<ProcessDefaults, ProcessError> {
        process::process_defaults(&self.config, overrides)
    }
}

#[derive(Serialize, Deserialize)]
struct LayerRecord {
    diff_id: Digest,
    blob_digest: Option<Digest>,
}

#[derive(Serialize, Deserialize)]
struct ImageRecord {
    id: Digest,
    manifest_digest: Option<Digest>,
    config: ImageConfiguration,
    layers: Vec<LayerRecord>,
}

#[derive(Serialize, Deserialize)]
struct RefRecord {
    reference: String,
    id: Digest,
    manifest_digest: Option<Digest>,
}

/// What [`ImageStore::gc`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Layers no image referenced.
    pub layers_removed: Vec<Digest>,
    /// Scratch entries left by interrupted imports.
    pub scratch_removed: usize,
}

/// Configures and opens an [`ImageStore`].
#[derive(Debug, Clone)]
pub struct ImageStoreBuilder {
    root: PathBuf,
    limits: Limits,
    platform: Platform,
    keep_trees: bool,
    erofs: Option<ErofsBuilder>,
    durable: bool,
    preserve_ownership: Option<bool>,
}

impl ImageStoreBuilder {
    /// Caps on untrusted input (defaults: [`Limits::default`]).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Platform to select from indexes (default linux/amd64).
    pub fn platform(mut self, platform: Platform) -> Self {
        self.platform = platform;
        self
    }

    /// Keep each layer's unpacked tree next to its EROFS image (default false).
    pub fn keep_trees(mut self, keep: bool) -> Self {
        self.keep_trees = keep;
        self
    }

    /// How to build EROFS images; `None` builds none (trees are then kept).
    pub fn erofs(mut self, erofs: Option<ErofsBuilder>) -> Self {
        self.erofs = erofs;
        self
    }

    /// `syncfs` each entry before publishing it (default true).
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// Force ownership handling (default: applied when running as root).
    pub fn preserve_ownership(mut self, yes: bool) -> Self {
        self.preserve_ownership = Some(yes);
        self
    }

    /// Validates the options, creates the store's directories and opens it.
    pub fn open(self) -> Result<ImageStore> {
        let mut s = ImageStore {
            root: self.root,
            limits: self.limits,
            platform: self.platform,
            keep_trees: self.keep_trees || self.erofs.is_none(),
            erofs: self.erofs,
            durable: self.durable,
            preserve_ownership: self.preserve_ownership,
        };
        for d in [
            "layers/sha256",
            "layers/sha512",
            "images/sha256",
            "images/sha512",
            "locks",
            "refs",
            "tmp",
        ] {
            let p = s.root.join(d);
            fs::create_dir_all(&p).map_err(io_err("creating", &p))?;
        }
        s.root = s
            .root
            .canonicalize()
            .map_err(io_err("resolving", &s.root))?;
        Ok(s)
    }
}

/// A content-addressed store of imported images, their unpacked layers and
/// the layers' read-only filesystem images. Safe to use from several
/// threads and processes at once.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
    limits: Limits,
    platform: Platform,
    keep_trees: bool,
    erofs: Option<ErofsBuilder>,
    durable: bool,
    preserve_ownership: Option<bool>,
}

impl ImageStore {
    /// Opens (creating if needed) a store with default options.
    pub fn open(root: impl Into<PathBuf>) -> Result<ImageStore> {
        Self::builder(root).open()
    }

    /// A builder for a store at `root`.
    pub fn builder(root: impl Into<PathBuf>) -> ImageStoreBuilder {
        ImageStoreBuilder {
            root: root.into(),
            limits: Limits::default(),
            platform: Platform::default(),
            keep_trees: false,
            erofs: Some(ErofsBuilder::new()),
            durable: true,
            preserve_ownership: None,
        }
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn layer_dir(&self, d: &Digest) -> PathBuf {
        self.root
            .join("layers")
            .join(d.algorithm().as_str())
            .join(d.hex())
    }

    fn image_file(&self, d: &Digest) -> PathBuf {
        self.root
            .join("images")
            .join(d.algorithm().as_str())
            .join(format!("{}.json", d.hex()))
    }

    fn global_lock(&self, exclusive: bool) -> Result<Lock> {
        Lock::acquire(&self.root.join("store.lock"), exclusive)
    }

    fn scratch(&self, what: &str) -> Result<PathBuf> {
        let p = self
            .root
            .join("tmp")
            .join(format!("{what}-{}-{}", std::process::id(), unique()));
        fs::create_dir(&p).map_err(io_err("creating", &p))?;
        Ok(p)
    }

    fn unpack_options(&self) -> UnpackOptions {
        let o = UnpackOptions::new(WhiteoutMode::Overlay).limits(self.limits.clone());
        match self.preserve_ownership {
            Some(p) => o.preserve_ownership(p),
            None => o,
        }
    }

    /// Resolves `reference` in `source` (see [`ImageSource::open`]), then
    /// imports it.
    pub fn import(&self, source: &ImageSource, reference: Option<&str>) -> Result<Image> {
        let img = source.open(reference, &self.platform, &self.limits)?;
        self.import_resolved(&img)
    }

    /// Imports an already resolved image: every layer not yet in the store
    /// is verified, unpacked (overlay representation), turned into an EROFS
    /// image and published atomically; then the image record is written.
    pub fn import_resolved(&self, img: &SourceImage) -> Result<Image> {
        let _shared = self.global_lock(false)?;
        for (i, l) in img.layers().iter().enumerate() {
            self.ensure_layer(img, i, &l.diff_id)?;
        }
        let record = ImageRecord {
            id: img.config_digest().clone(),
            manifest_digest: img.manifest_digest().cloned(),
            config: img.config().clone(),
            layers: img
                .layers()
                .iter()
                .map(|l| LayerRecord {
                    diff_id: l.diff_id.clone(),
                    blob_digest: l.blob_digest.clone(),
                })
                .collect(),
        };
        let data = serde_json::to_vec_pretty(&record).map_err(|source| StoreError::Corrupt {
            path: self.image_file(&record.id),
            source,
        })?;
        self.write_atomic(&self.image_file(&record.id), &data)?;
        self.load(record)
    }

    /// Pulls `reference` with `client` and imports it (see the module
    /// docs). Layers already in the store are not downloaded; pulls of the
    /// same layer at once (threads or processes) download it once.
    pub fn pull(&self, reference: &Reference, client: &Client) -> Result<Image> {
        let layout = self.scratch("pull")?;
        let downloads = self.root.join("downloads");
        let have = |diff_id: &Digest| self.layer_complete(&self.layer_dir(diff_id));
        let result = (|| {
            let _shared = self.global_lock(false)?;
            let pulled = client.pull_layout(
                reference,
                &PullTarget {
                    layout: &layout,
                    downloads: &downloads,
                    platform: &self.platform,
                    limits: &self.limits,
                    have_layer: &have,
                },
            )?;
            let img = self.import(
                &ImageSource::OciLayout {
                    path: layout.clone(),
                },
                None,
            )?;
            registry::release_downloads(&downloads, &pulled.fetched)?;
            self.write_ref(reference, &img)?;
            Ok(img)
        })();
        let _ = sys::remove_tree(&layout);
        result
    }

    fn ref_file(&self, reference: &Reference) -> PathBuf {
        let key = Digest::sha256_of(reference.to_string().as_bytes());
        self.root.join("refs").join(format!("{}.json", key.hex()))
    }

    fn write_ref(&self, reference: &Reference, img: &Image) -> Result<()> {
        let rec = RefRecord {
            reference: reference.to_string(),
            id: img.id.clone(),
            manifest_digest: img.manifest_digest.clone(),
        };
        let path = self.ref_file(reference);
        let data = serde_json::to_vec_pretty(&rec).map_err(|source| StoreError::Corrupt {
            path: path.clone(),
            source,
        })?;
        self.write_atomic(&path, &data)
    }

    /// The image `reference` named when it was last pulled into this store,
    /// if it is still here (no registry is asked).
    pub fn lookup(&self, reference: &Reference) -> Result<Option<Image>> {
        let path = self.ref_file(reference);
        let rec: RefRecord = match read_capped(&path, 64 << 10) {
            Ok(data) => serde_json::from_slice(&data)
                .map_err(|source| StoreError::Corrupt { path, source })?,
            Err(StoreError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        self.get(&rec.id)
    }

    /// The references pulled into this store and the image ID each names,
    /// sorted by reference.
    pub fn references(&self) -> Result<Vec<(String, Digest)>> {
        let dir = self.root.join("refs");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(io_err("listing", &dir))? {
            let e = e.map_err(io_err("listing", &dir))?;
            let Ok(data) = read_capped(&e.path(), 64 << 10) else {
                continue;
            };
            if let Ok(rec) = serde_json::from_slice::<RefRecord>(&data) {
                out.push((rec.reference, rec.id));
            }
        }
        out.sort();
        Ok(out)
    }

    fn layer_complete(&self, dir: &Path) -> bool {
        dir.join("meta.json").is_file()
            && (self.erofs.is_none() || dir.join("layer.erofs").is_file())
            && (!self.keep_trees || dir.join("tree").is_dir())
    }

    fn ensure_layer(&self, img: &SourceImage, index: usize, diff_id: &Digest) -> Result<()> {
        let dir = self.layer_dir(diff_id);
        if self.layer_complete(&dir) {
            return Ok(());
        }
        let lock_path = self.root.join("locks").join(format!(
            "{}-{}.lock",
            diff_id.algorithm().as_str(),
            diff_id.hex()
        ));
        let _lock = Lock::acquire(&lock_path, true)?;
        if self.layer_complete(&dir) {
            return Ok(());
        }
        let scratch = self.scratch("layer")?;
        let result = self.build_layer(img, index, diff_id, &scratch, &dir);
        if result.is_err() {
            let _ = sys::remove_tree(&scratch);
        }
        result
    }

    fn build_layer(
        &self,
        img: &SourceImage,
        index: usize,
        diff_id: &Digest,
        scratch: &Path,
        dir: &Path,
    ) -> Result<()> {
        let tree = scratch.join("tree");
        fs::create_dir(&tree).map_err(io_err("creating", &tree))?;
        let meta = img.apply_layer(index, &tree, &self.unpack_options())?;
        if let Some(erofs) = &self.erofs {
            erofs
                .build(&tree, &scratch.join("layer.erofs"))
                .map_err(|source| StoreError::Erofs {
                    diff_id: diff_id.to_string(),
                    source,
                })?;
        }
        if !self.keep_trees {
            sys::remove_tree(&tree).map_err(io_err("removing", &tree))?;
        }
        let meta_json = serde_json::to_vec_pretty(&meta).map_err(|source| StoreError::Corrupt {
            path: scratch.join("meta.json"),
            source,
        })?;
        let meta_path = scratch.join("meta.json");
        fs::write(&meta_path, meta_json).map_err(io_err("writing", &meta_path))?;
        if self.durable {
            let f = File::open(scratch).map_err(io_err("opening", scratch))?;
            sys::syncfs(f.as_raw_fd()).map_err(io_err("syncing", scratch))?;
        }
        // An incomplete entry (built with other options) is replaced.
        if dir.exists() {
            let trash = self.root.join("tmp").join(format!("trash-{}", unique()));
            fs::rename(dir, &trash).map_err(io_err("replacing", dir))?;
            let _ = sys::remove_tree(&trash);
        }
        fs::rename(scratch, dir).map_err(io_err("publishing", dir))?;
        self.sync_parent(dir)
    }

    fn sync_parent(&self, p: &Path) -> Result<()> {
        if !self.durable {
            return Ok(());
        }
        if let Some(parent) = p.parent() {
            let f = File::open(parent).map_err(io_err("opening", parent))?;
            f.sync_all().map_err(io_err("syncing", parent))?;
        }
        Ok(())
    }

    fn write_atomic(&self, path: &Path, data: &[u8]) -> Result<()> {
        let tmp = self
            .root
            .join("tmp")
            .join(format!("record-{}-{}", std::process::id(), unique()));
        let res = (|| {
            let mut f = File::create(&tmp).map_err(io_err("writing", &tmp))?;
            f.write_all(data).map_err(io_err("writing", &tmp))?;
            if self.durable {
                f.sync_all().map_err(io_err("syncing", &tmp))?;
            }
            fs::rename(&tmp, path).map_err(io_err("publishing", path))?;
            self.sync_parent(path)
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res
    }

    fn load(&self, rec: ImageRecord) -> Result<Image> {
        let mut layers = Vec::with_capacity(rec.layers.len());
        for l in rec.layers {
            let dir = self.layer_dir(&l.diff_id);
            let meta_path = dir.join("meta.json");
            let data = read_capped(&meta_path, 256 << 20)?;
            let meta: LayerMeta =
                serde_json::from_slice(&data).map_err(|source| StoreError::Corrupt {
                    path: meta_path.clone(),
                    source,
                })?;
            let erofs = dir.join("layer.erofs");
            let tree = dir.join("tree");
            layers.push(Layer {
                erofs_path: erofs.is_file().then_some(erofs),
                tree_path: tree.is_dir().then_some(tree),
                diff_id: l.diff_id,
                blob_digest: l.blob_digest,
                meta,
            });
        }
        Ok(Image {
            id: rec.id,
            manifest_digest: rec.manifest_digest,
            config: rec.config,
            layers,
        })
    }

    fn read_record(&self, path: &Path) -> Result<Option<ImageRecord>> {
        let data = match read_capped(path, self.limits.max_json_bytes * 2) {
            Ok(d) => d,
            Err(StoreError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        serde_json::from_slice(&data)
            .map(Some)
            .map_err(|source| StoreError::Corrupt {
                path: path.to_owned(),
                source,
            })
    }

    /// The image with this ID, if imported (and all its layers present).
    pub fn get(&self, id: &Digest) -> Result<Option<Image>> {
        let _shared = self.global_lock(false)?;
        match self.read_record(&self.image_file(id))? {
            Some(rec)
                if rec
                    .layers
                    .iter()
                    .all(|l| self.layer_dir(&l.diff_id).join("meta.json").is_file()) =>
            {
                self.load(rec).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// IDs of all imported images.
    pub fn list(&self) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        for alg in ["sha256", "sha512"] {
            let dir = self.root.join("images").join(alg);
            for e in fs::read_dir(&dir).map_err(io_err("listing", &dir))? {
                let e = e.map_err(io_err("listing", &dir))?;
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(hex) = name.strip_suffix(".json") {
                    if let Ok(d) = Digest::parse(&format!("{alg}:{hex}")) {
                        out.push(d);
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Forgets an image; its layers go at the next [`gc`](Self::gc) if no
    /// other image uses them. Returns whether it was there.
    pub fn remove(&self, id: &Digest) -> Result<bool> {
        let _shared = self.global_lock(false)?;
        let p = self.image_file(id);
        match fs::remove_file(&p) {
            Ok(()) => {
                self.sync_parent(&p)?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("removing", &p)(e)),
        }
    }

    /// Removes layers no image references, scratch left by interrupted
    /// imports, and the download directory's leftovers (partial downloads
    /// of failed pulls are not resumed after a gc). Waits for running
    /// imports and pulls to finish and blocks new ones meanwhile.
    pub fn gc(&self) -> Result<GcReport> {
        let _excl = self.global_lock(true)?;
        let mut referenced = std::collections::HashSet::new();
        for id in self.list()? {
            if let Some(rec) = self.read_record(&self.image_file(&id))? {
                referenced.extend(rec.layers.into_iter().map(|l| l.diff_id));
            }
        }
        let mut report = GcReport::default();
        let tmp = self.root.join("tmp");
        for alg in ["sha256", "sha512"] {
            let dir = self.root.join("layers").join(alg);
            for e in fs::read_dir(&dir).map_err(io_err("listing", &dir))? {
                let e = e.map_err(io_err("listing", &dir))?;
                let name = e.file_name().to_string_lossy().into_owned();
                let keep = Digest::parse(&format!("{alg}:{name}"))
                    .map(|d| referenced.contains(&d))
                    .unwrap_or(false);
                if keep {
                    continue;
                }
                // Unpublish atomically first, then delete.
                let trash = tmp.join(format!("gc-{}", unique()));
                fs::rename(e.path(), &trash).map_err(io_err("removing", &e.path()))?;
                if let Ok(d) = Digest::parse(&format!("{alg}:{name}")) {
                    report.layers_removed.push(d);
                }
            }
        }
        for e in fs::read_dir(&tmp).map_err(io_err("listing", &tmp))? {
            let e = e.map_err(io_err("listing", &tmp))?;
            sys::remove_tree(&e.path()).map_err(io_err("removing", &e.path()))?;
            report.scratch_removed += 1;
        }
        report.scratch_removed -= report.layers_removed.len().min(report.scratch_removed);
        for sub in ["blobs", "partial", "locks"] {
            let d = self.root.join("downloads").join(sub);
            if let Ok(entries) = fs::read_dir(&d) {
                for e in entries.flatten() {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        let locks = self.root.join("locks");
        for e in fs::read_dir(&locks).map_err(io_err("listing", &locks))? {
            let e = e.map_err(io_err("listing", &locks))?;
            let _ = fs::remove_file(e.path());
        }
        if self.durable {
            let f = File::open(&self.root).map_err(io_err("opening", &self.root))?;
            sys::syncfs(f.as_raw_fd()).map_err(io_err("syncing", &self.root))?;
        }
        Ok(report)
    }
}

fn read_capped(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let f = File::open(path).map_err(io_err("reading", path))?;
    let mut data = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut data)
        .map_err(io_err("reading", path))?;
    if data.len() as u64 > limit {
        return Err(StoreError::Io {
            op: "reading",
            path: path.to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidData, "record too large"),
        });
    }
    Ok(data)
}
