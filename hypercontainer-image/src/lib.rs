//! OCI and Docker images for HyperContainer: import, verify, unpack safely,
//! cache by content, build read-only filesystem images for the guest, and
//! derive the process to run from the image config.
//!
//! # Overview
//!
//! - [`ImageSource`] reads an OCI image layout directory, an OCI archive or
//!   a docker archive, selects linux/amd64 from indexes and picks an image
//!   by reference (`org.opencontainers.image.ref.name` or `RepoTags`).
//!   Every JSON document is size-capped, and every blob is verified by size
//!   then digest before it is used; digests are validated against the OCI
//!   grammar before they become paths ([`Digest`]).
//! - [`registry`] pulls images by name from OCI registries (Distribution
//!   API v2) with Docker's reference rules, podman's credential files,
//!   resumable verified downloads shared between pulls, and
//!   [`ImageStore::pull`] imports them like an OCI layout.
//! - [`apply_layer`] applies one layer (tar, gzip, zstd) safely onto a
//!   directory, refusing hostile archives, and checks its diff_id.
//! - [`ImageStore`] caches each layer once by diff_id (as an unpacked tree
//!   in overlay form and a read-only EROFS image built with `mkfs.erofs`)
//!   and each image by config digest; it is safe for concurrent use by
//!   several processes, crash-safe, and garbage-collected with
//!   [`ImageStore::gc`].
//! - [`Image::process_defaults`] merges Entrypoint/Cmd/Env/WorkingDir/User
//!   with caller overrides in Docker's precedence.
//! - With the `test-utils` feature, `testimage` builds the small busybox
//!   image the workspace's tests run (with umoci).
//!
//! The guest mounts each layer's EROFS image read-only and stacks them with
//! overlayfs (`lowerdir=` top layer first) under a writable upper layer.
//! Device nodes are never created on the host; they are listed in each
//! layer's [`LayerMeta::devices`] for the guest to create.
//!
//! # Example
//!
//! ```no_run
//! use hypercontainer_image::{ImageSource, ImageStore, ProcessOverrides};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = ImageStore::open("/var/lib/hypercontainer/images")?;
//! let image = store.import(
//!     &ImageSource::OciArchive { path: "busybox.oci.tar".into() },
//!     Some("latest"),
//! )?;
//! for layer in &image.layers {
//!     println!("{} -> {:?}", layer.diff_id, layer.erofs_path);
//! }
//! let process = image.process_defaults(
//!     &ProcessOverrides::new().cmd(["echo", "hello"]).env("DEBUG", "1"),
//! )?;
//! println!("run {:?} as {:?} in {}", process.args, process.user, process.working_dir);
//! # Ok(())
//! # }
//! ```
//!
//! Unpacking a flattened root filesystem without the store:
//!
//! ```no_run
//! use hypercontainer_image::{ImageSource, Limits, Platform, UnpackOptions, WhiteoutMode};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let src = ImageSource::OciLayout { path: "image-layout".into() };
//! let image = src.open(Some("v1"), &Platform::default(), &Limits::default())?;
//! image.unpack_rootfs("rootfs".as_ref(), &UnpackOptions::new(WhiteoutMode::Apply))?;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod digest;
pub mod erofs;
pub mod limits;
pub mod manifest;
pub mod process;
pub mod registry;
pub mod source;
pub mod store;
mod sys;
#[cfg(feature = "test-utils")]
pub mod testimage;
pub mod unpack;

pub use digest::{Digest, DigestError};
pub use erofs::{ErofsBuilder, ErofsError};
pub use limits::Limits;
pub use manifest::{ManifestError, Platform};
pub use process::{ProcessDefaults, ProcessError, ProcessOverrides, UserSpec};
pub use registry::{
    Client, ClientOptions, Credentials, LayerProgress, LayerState, Reference, ReferenceError,
    RegistryError,
};
pub use source::{ImageSource, LayerSource, SourceError, SourceImage};
pub use store::{GcReport, Image, ImageStore, ImageStoreBuilder, Layer, StoreError};
pub use unpack::{
    apply_layer, Compression, DeviceKind, DeviceNode, LayerMeta, RecordedOwner, UnpackError,
    UnpackOptions, WhiteoutMode,
};
