//! What a sandbox runs: an image reference, an imported image, or a
//! prepared root filesystem directory.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::Error;
use hypercontainer_image::SourceError;
use hypercontainer_image::{
    registry::ProgressFn, Client, ClientOptions, Image, ImageSource, ImageStore, Reference,
    ReferenceError, StoreError,
};

/// The image of a sandbox.
///
/// Parsed from strings as the `run` example takes them:
///
/// | string | meaning |
/// |---|---|
/// | `oci:PATH[:TAG]` | an OCI image layout directory, optionally a tag in it |
/// | `oci-archive:PATH[:TAG]` | an OCI layout packed in a tar file |
/// | `docker-archive:PATH[:REPO:TAG]` | a `docker save` tar |
/// | `dir:PATH` | a prepared root filesystem directory |
/// | anything else | a registry reference with Docker's rules (`busybox`, `nginx:1.25`, `registry.example:5000/team/app@sha256:...`) |
///
/// ```
/// use hypercontainer::sandbox::ImageRef;
/// let r: ImageRef = "oci:/srv/images/busybox:latest".parse().unwrap();
/// assert!(matches!(r, ImageRef::Source { reference: Some(ref t), .. } if t == "latest"));
/// let r: ImageRef = "busybox".parse().unwrap();
/// assert_eq!(r.describe(), "docker.io/library/busybox:latest");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// An image to import through the image store (once; later starts reuse
    /// the cached layers).
    Source {
        /// Where the image is.
        source: ImageSource,
        /// Which image in it (tag or name), when it holds several.
        reference: Option<String>,
    },
    /// An image in a registry, pulled into the image store according to the
    /// builder's [`PullPolicy`] and imported like an `oci:` layout.
    Registry(Reference),
    /// An image already imported into a store.
    Imported(Box<Image>),
    /// A prepared root filesystem directory (`dir:PATH`), shared into the
    /// guest over virtio-fs: read-only under a tmpfs overlay by default,
    /// or written in place with
    /// [`SandboxBuilder::rootfs_writable`](super::SandboxBuilder::rootfs_writable)
    /// (what a runc bundle needs). It has no image config: give the command.
    Rootfs(PathBuf),
}

/// A string that is not an image reference.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid image reference {input:?}: use NAME[:TAG][@DIGEST], oci:PATH[:TAG], \
     oci-archive:PATH[:TAG], docker-archive:PATH[:REF] or dir:PATH"
)]
pub struct ParseImageRefError {
    /// The string given.
    pub input: String,
    /// Why it is not a registry reference, when it was read as one.
    #[source]
    pub source: Option<ReferenceError>,
}

/// When a [`ImageRef::Registry`] image is pulled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PullPolicy {
    /// Never ask the registry: the image must have been pulled before.
    Never,
    /// Pull when the store has no image for the reference (the default).
    #[default]
    Missing,
    /// Always ask the registry for the manifest; layers already in the
    /// store are still not downloaded again.
    Always,
}

/// How registry images are pulled: the policy and the client's options
/// (auth files, CAs, insecure registries, progress).
#[derive(Clone, Default)]
pub struct PullOptions {
    /// When to pull.
    pub policy: PullPolicy,
    /// How to reach registries.
    pub client: ClientOptions,
    /// Progress reports, besides any in `client`.
    pub progress: Option<ProgressFn>,
}

impl std::fmt::Debug for PullOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullOptions")
            .field("policy", &self.policy)
            .field("client", &self.client)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// Resolves a [`ImageRef::Source`] or [`ImageRef::Registry`] through `store`.
pub(crate) fn import(
    image: &ImageRef,
    store: &ImageStore,
    pull: &PullOptions,
) -> Result<Image, StoreError> {
    match image {
        ImageRef::Source { source, reference } => store.import(source, reference.as_deref()),
        ImageRef::Registry(r) => {
            if pull.policy != PullPolicy::Always {
                if let Some(img) = store.lookup(r)? {
                    return Ok(img);
                }
            }
            if pull.policy == PullPolicy::Never {
                return Err(StoreError::NotPulled {
                    reference: r.to_string(),
                });
            }
            let mut options = pull.client.clone();
            if let Some(f) = &pull.progress {
                options = options.progress_shared(f.clone());
            }
            let client = Client::new(options)?;
            store.pull(r, &client)
        }
        ImageRef::Imported(img) => Ok((**img).clone()),
        ImageRef::Rootfs(_) => Err(StoreError::NotPulled {
            reference: image.describe(),
        }),
    }
}

/// Splits `PATH[:REF]`: the whole string when it names an existing file,
/// else at the last `:` after the last `/`.
fn path_and_ref(s: &str) -> (PathBuf, Option<String>) {
    if Path::new(s).exists() {
        return (PathBuf::from(s), None);
    }
    let last_slash = s.rfind('/').map_or(0, |i| i + 1);
    match s[last_slash..].find(':') {
        Some(i) => {
            let (p, r) = s.split_at(last_slash + i);
            let r = &r[1..];
            // docker-archive references are REPO:TAG: split at the first
            // colon of the last path component.
            (
                PathBuf::from(p),
                Some(r.to_string()).filter(|r| !r.is_empty()),
            )
        }
        None => (PathBuf::from(s), None),
    }
}

impl FromStr for ImageRef {
    type Err = ParseImageRefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseImageRefError {
            input: s.to_string(),
            source: None,
        };
        let registry = || {
            Reference::parse(s)
                .map(ImageRef::Registry)
                .map_err(|e| ParseImageRefError {
                    input: s.to_string(),
                    source: Some(e),
                })
        };
        let Some((kind, rest)) = s.split_once(':') else {
            return registry();
        };
        if !matches!(kind, "oci" | "oci-archive" | "docker-archive" | "dir") {
            return registry();
        }
        if rest.is_empty() {
            return Err(bad());
        }
        if kind == "dir" {
            return Ok(ImageRef::Rootfs(PathBuf::from(rest)));
        }
        let (path, reference) = path_and_ref(rest);
        let source = match kind {
            "oci" => ImageSource::OciLayout { path },
            "oci-archive" => ImageSource::OciArchive { path },
            "docker-archive" => ImageSource::DockerArchive { path },
            _ => return Err(bad()),
        };
        Ok(ImageRef::Source { source, reference })
    }
}

impl From<Image> for ImageRef {
    fn from(i: Image) -> Self {
        ImageRef::Imported(Box::new(i))
    }
}

impl ImageRef {
    /// A short description for messages.
    pub fn describe(&self) -> String {
        match self {
            ImageRef::Source { source, reference } => {
                let (kind, path) = match source {
                    ImageSource::OciLayout { path } => ("oci", path),
                    ImageSource::OciArchive { path } => ("oci-archive", path),
                    ImageSource::DockerArchive { path } => ("docker-archive", path),
                };
                match reference {
                    Some(r) => format!("{kind}:{}:{r}", path.display()),
                    None => format!("{kind}:{}", path.display()),
                }
            }
            ImageRef::Registry(r) => r.to_string(),
            ImageRef::Imported(i) => i.id.to_string(),
            ImageRef::Rootfs(p) => format!("dir:{}", p.display()),
        }
    }
}

/// Applies the store's answer to a not-found check.
pub(crate) fn image_err(image: &ImageRef, e: StoreError) -> Error {
    let missing = match &e {
        StoreError::Source(SourceError::Missing(_) | SourceError::ReferenceNotFound(_))
        | StoreError::NotPulled { .. }
        | StoreError::Registry(hypercontainer_image::RegistryError::NotFound { .. }) => true,
        StoreError::Source(SourceError::Io { source, .. }) => {
            source.kind() == std::io::ErrorKind::NotFound
        }
        _ => false,
    };
    let image = image.describe();
    if missing {
        Error::ImageNotFound {
            image,
            source: Box::new(e),
        }
    } else {
        Error::Image {
            image,
            source: Box::new(e),
        }
    }
}

pub(crate) fn image_path(image: &ImageRef) -> Option<&Path> {
    use hypercontainer_image::ImageSource::*;
    match image {
        ImageRef::Source {
            source: OciLayout { path } | OciArchive { path } | DockerArchive { path },
            ..
        } => Some(path),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references() {
        let r: ImageRef = "oci:/no/such/layout:v1".parse().unwrap();
        assert_eq!(
            r,
            ImageRef::Source {
                source: ImageSource::OciLayout {
                    path: "/no/such/layout".into()
                },
                reference: Some("v1".into())
            }
        );
        let r: ImageRef = "oci-archive:/no/such/img.tar".parse().unwrap();
        assert!(matches!(
            r,
            ImageRef::Source {
                source: ImageSource::OciArchive { .. },
                reference: None
            }
        ));
        let r: ImageRef = "docker-archive:/x/save.tar:busybox:latest".parse().unwrap();
        assert_eq!(
            r,
            ImageRef::Source {
                source: ImageSource::DockerArchive {
                    path: "/x/save.tar".into()
                },
                reference: Some("busybox:latest".into())
            }
        );
        assert_eq!(
            "dir:/srv/root".parse::<ImageRef>().unwrap(),
            ImageRef::Rootfs("/srv/root".into())
        );
        assert_eq!(r.describe(), "docker-archive:/x/save.tar:busybox:latest");
        for bad in ["Busybox", "oci:", "tar:/x", "", "busybox:", "a//b"] {
            assert!(bad.parse::<ImageRef>().is_err(), "{bad}");
        }
        for (input, want) in [
            ("busybox", "docker.io/library/busybox:latest"),
            ("nginx:1.25", "docker.io/library/nginx:1.25"),
            ("localhost:5000/app", "localhost:5000/app:latest"),
            (
                "registry.example:5000/team/app:v2",
                "registry.example:5000/team/app:v2",
            ),
        ] {
            let r: ImageRef = input.parse().unwrap();
            assert!(matches!(r, ImageRef::Registry(_)), "{input}");
            assert_eq!(r.describe(), want);
        }
        let e = "Busybox".parse::<ImageRef>().unwrap_err();
        assert!(std::error::Error::source(&e).is_some());
        // An existing path with a colon is taken whole.
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join("a:b");
        std::fs::create_dir(&odd).unwrap();
        let r: ImageRef = format!("oci:{}", odd.display()).parse().unwrap();
        assert!(matches!(
            r,
            ImageRef::Source {
                reference: None,
                ..
            }
        ));
    }

    #[test]
    fn never_pulling_an_unpulled_image_says_so_without_a_registry() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::builder(dir.path()).erofs(None).open().unwrap();
        let r: ImageRef = "registry.invalid/app:1".parse().unwrap();
        let pull = PullOptions {
            policy: PullPolicy::Never,
            ..Default::default()
        };
        let e = import(&r, &store, &pull).unwrap_err();
        assert!(
            matches!(e, StoreError::NotPulled { ref reference } if reference == "registry.invalid/app:1"),
            "{e:?}"
        );
    }
}
