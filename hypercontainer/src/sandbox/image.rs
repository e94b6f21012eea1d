//! What a sandbox runs: an image reference, an imported image, or a
//! prepared root filesystem directory.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use hypercontainer_image::{Image, ImageSource};

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
///
/// ```
/// use hypercontainer::sandbox::ImageRef;
/// let r: ImageRef = "oci:/srv/images/busybox:latest".parse().unwrap();
/// assert!(matches!(r, ImageRef::Source { reference: Some(ref t), .. } if t == "latest"));
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
    /// An image already imported into a store.
    Imported(Box<Image>),
    /// A prepared root filesystem directory; it is packed into a read-only
    /// disk image for each start. It has no image config: give the command.
    Rootfs(PathBuf),
}

/// A string that is not an image reference.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid image reference {0:?}: use oci:PATH[:TAG], oci-archive:PATH[:TAG], \
     docker-archive:PATH[:REF] or dir:PATH"
)]
pub struct ParseImageRefError(pub String);

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
        let bad = || ParseImageRefError(s.to_string());
        let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
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
            ImageRef::Imported(i) => i.id.to_string(),
            ImageRef::Rootfs(p) => format!("dir:{}", p.display()),
        }
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
        for bad in ["busybox", "oci:", "tar:/x", ""] {
            assert!(bad.parse::<ImageRef>().is_err(), "{bad}");
        }
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
}
