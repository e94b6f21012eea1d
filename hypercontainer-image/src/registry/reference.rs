//! Image references by name, normalised with Docker's rules (the
//! `reference` package of docker/distribution, `ParseNormalizedNamed`).
//!
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [ domain "/" ] path-component { "/" path-component }
//! domain     := host [ ":" port ]      host: dot-separated DNS labels or [IPv6]
//! path-comp  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
//! tag        := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
//! ```
//!
//! The first component is a registry only if it contains a `.` or a `:`,
//! or is `localhost`, or has an upper-case letter; otherwise the
//! reference is on Docker Hub (`docker.io`), and a one-component name there
//! gets `library/`. `index.docker.io` is spelled `docker.io`. Without a tag
//! or a digest the tag is `latest`; with a digest, the digest pins the image
//! and a tag, if also given, is only informative.

use std::fmt;
use std::str::FromStr;

use crate::digest::{Digest, DigestError};

/// Docker Hub's canonical domain.
pub const DOCKER_HUB: &str = "docker.io";
/// The host serving Docker Hub's registry API.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// The tag used when a reference names none.
pub const DEFAULT_TAG: &str = "latest";
/// Longest repository name (domain included), as in docker/distribution.
const MAX_NAME_LEN: usize = 255;

/// Why a string is not an image reference.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// The string is empty.
    #[error("empty image reference")]
    Empty,
    /// The string does not follow the reference grammar.
    #[error("invalid image reference {reference:?}: {reason}")]
    Invalid {
        /// The reference as given.
        reference: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The repository path has upper-case letters.
    #[error("invalid image reference {0:?}: repository name must be lowercase")]
    Uppercase(String),
    /// The name is longer than 255 characters.
    #[error("invalid image reference: repository name is longer than {MAX_NAME_LEN} characters")]
    NameTooLong,
    /// The name is a 64-digit hex string, which Docker reserves for image IDs.
    #[error(
        "invalid image reference {0:?}: a 64-digit hexadecimal name is an image ID, not a repository"
    )]
    HexName(String),
    /// The digest after `@` is malformed or of an unsupported algorithm.
    #[error("invalid digest in image reference {reference:?}")]
    Digest {
        /// The reference as given.
        reference: String,
        /// The digest error.
        #[source]
        source: DigestError,
    },
}

/// A parsed, normalised image reference such as
/// `docker.io/library/busybox:latest`.
///
/// ```
/// use hypercontainer_image::registry::Reference;
/// let r: Reference = "busybox".parse().unwrap();
/// assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
/// assert_eq!(r.registry(), "docker.io");
/// assert_eq!(r.repository(), "library/busybox");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses and normalises `s` (see the [module docs](self)).
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let invalid = |reason| ReferenceError::Invalid {
            reference: s.to_owned(),
            reason,
        };
        let (rest, digest) = match s.split_once('@') {
            Some((rest, d)) => {
                let digest = Digest::parse(d).map_err(|source| ReferenceError::Digest {
                    reference: s.to_owned(),
                    source,
                })?;
                (rest, Some(digest))
            }
            None => (s, None),
        };
        // A tag follows the last ':' that comes after the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let (n, t) = rest.split_at(last_slash + i);
                (n, Some(&t[1..]))
            }
            None => (rest, None),
        };
        if name.is_empty() {
            return Err(invalid("missing repository name"));
        }
        if let Some(t) = tag {
            if !is_tag(t) {
                return Err(invalid("tag must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"));
            }
        }
        if name.len() > MAX_NAME_LEN {
            return Err(ReferenceError::NameTooLong);
        }
        let (registry, path) = split_domain(name);
        if let Some(d) = registry {
            if !is_domain(d) {
                return Err(invalid("invalid registry host"));
            }
        }
        if path.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ReferenceError::Uppercase(s.to_owned()));
        }
        if !path.split('/').all(is_path_component) {
            return Err(invalid(
                "repository path components must be lowercase letters, digits and separators (. _ __ -)",
            ));
        }
        if registry.is_none()
            && path.len() == 64
            && path.bytes().all(|b| b.is_ascii_hexdigit())
            && tag.is_none()
            && digest.is_none()
        {
            return Err(ReferenceError::HexName(s.to_owned()));
        }
        let mut registry = registry.unwrap_or(DOCKER_HUB).to_owned();
        if registry == "index.docker.io" {
            registry = DOCKER_HUB.to_owned();
        }
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_owned()
        };
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_owned()),
            (None, None) => Some(DEFAULT_TAG.to_owned()),
            (None, Some(_)) => None,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The registry's domain as written (`docker.io`, `localhost:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The host and port requests go to: Docker Hub's API host for
    /// `docker.io`, the registry domain otherwise.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// The repository path (`library/busybox`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if any (always one unless a digest pins the image).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest that pins the image, if any.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// What to ask the registry's manifest endpoint for: the digest when
    /// pinned, else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_owned(),
        }
    }

    /// The same reference pinned to `digest` (the tag is kept for display).
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The shortest form Docker would print (`busybox:latest`,
    /// `example/app:1`, `localhost:5000/app@sha256:...`).
    pub fn familiar(&self) -> String {
        let mut s = if self.registry == DOCKER_HUB {
            self.repository
                .strip_prefix("library/")
                .unwrap_or(&self.repository)
                .to_owned()
        } else {
            self.name()
        };
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(&d.to_string());
        }
        s
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

/// docker/distribution's `splitDockerDomain`.
fn split_domain(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

fn is_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn is_label(l: &str) -> bool {
    let b = l.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
}

fn is_domain(d: &str) -> bool {
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        // [IPv6]:port
        let Some((addr, after)) = rest.split_once(']') else {
            return false;
        };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(p) => ("", Some(p)),
                None => return false,
            },
        }
    } else {
        match d.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (d, None),
        }
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let host_ok = host.is_empty() && d.starts_with('[') || host.split('.').all(is_label);
    port_ok && host_ok
}

fn is_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator: ".", "_", "__" or one or more "-".
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if b.get(i) == Some(&b'_') {
                    i += 1;
                }
            }
            b'-' => {
                while b.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || !b.get(i).copied().is_some_and(is_alnum) {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    /// Docker's normalisation cases (docker/distribution
    /// `reference/normalize_test.go` and `reference_test.go`).
    #[test]
    fn normalises_like_docker() {
        let pinned = format!("docker.io/library/busybox@{D}");
        let tagged_pinned = format!("localhost:5000/app:v1@{D}");
        let cases: &[(&str, &str)] = &[
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("library/busybox", "docker.io/library/busybox:latest"),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            (
                "docker.io/library/busybox",
                "docker.io/library/busybox:latest",
            ),
            (
                "index.docker.io/busybox",
                "docker.io/library/busybox:latest",
            ),
            ("index.docker.io/user/app:2", "docker.io/user/app:2"),
            ("dmcgowan/myapp", "docker.io/dmcgowan/myapp:latest"),
            ("dmcgowan/myapp/foo:x", "docker.io/dmcgowan/myapp/foo:x"),
            ("localhost/app", "localhost/app:latest"),
            ("localhost:5000/app:v1", "localhost:5000/app:v1"),
            ("127.0.0.1:5000/team/app", "127.0.0.1:5000/team/app:latest"),
            (
                "registry.example/team/app:1.0",
                "registry.example/team/app:1.0",
            ),
            ("Docker.IO/foo", "Docker.IO/foo:latest"),
            ("a.b-c.d/x__y/z-w--v.q", "a.b-c.d/x__y/z-w--v.q:latest"),
            ("[::1]:5000/app", "[::1]:5000/app:latest"),
            ("ubuntu:_x-1.2", "docker.io/library/ubuntu:_x-1.2"),
        ];
        for (input, want) in cases {
            let r = Reference::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.to_string(), *want, "{input}");
            // Normalising is idempotent.
            assert_eq!(Reference::parse(want).unwrap(), r, "{want}");
        }
        let r = Reference::parse(&format!("busybox@{D}")).unwrap();
        assert_eq!(r.to_string(), pinned);
        assert_eq!(r.tag(), None);
        assert_eq!(r.manifest_reference(), D);
        let r = Reference::parse(&tagged_pinned).unwrap();
        assert_eq!(r.tag(), Some("v1"));
        assert_eq!(r.manifest_reference(), D);
        assert_eq!(r.to_string(), tagged_pinned);
    }

    #[test]
    fn hub_api_host_and_familiar_names() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.api_host(), DOCKER_HUB_API);
        assert_eq!(r.familiar(), "busybox:latest");
        let r = Reference::parse("localhost:5000/a/b:c").unwrap();
        assert_eq!(r.api_host(), "localhost:5000");
        assert_eq!(r.familiar(), "localhost:5000/a/b:c");
        assert_eq!(r.name(), "localhost:5000/a/b");
    }

    #[test]
    fn refuses_what_docker_refuses() {
        let hex = "a".repeat(64);
        let long = format!("x/{}", "a".repeat(260));
        let bad_digest = format!("busybox@sha256:{}", "z".repeat(64));
        for (input, kind) in [
            ("", "empty"),
            ("Busybox", "upper"),
            ("docker.io/Library/busybox", "upper"),
            ("busybox:", "invalid"),
            (":latest", "invalid"),
            ("busybox:-x", "invalid"),
            ("busybox:a/b", "invalid"),
            ("-busybox", "invalid"),
            ("busy..box", "invalid"),
            ("busy___box", "invalid"),
            ("busybox/", "invalid"),
            ("/busybox", "invalid"),
            ("a//b", "invalid"),
            ("example.com:port/x", "invalid"),
            ("foo_bar.com:8080/x", "invalid"),
            ("-example.com/x", "invalid"),
            ("busybox@sha256:abc", "digest"),
            (bad_digest.as_str(), "digest"),
            ("busybox@md5:d41d8cd98f00b204e9800998ecf8427e", "digest"),
            (hex.as_str(), "hex"),
            (long.as_str(), "long"),
        ] {
            let e = Reference::parse(input).expect_err(input);
            let ok = match kind {
                "empty" => matches!(e, ReferenceError::Empty),
                "upper" => matches!(e, ReferenceError::Uppercase(_)),
                "invalid" => matches!(e, ReferenceError::Invalid { .. }),
                "digest" => matches!(e, ReferenceError::Digest { .. }),
                "hex" => matches!(e, ReferenceError::HexName(_)),
                _ => matches!(e, ReferenceError::NameTooLong),
            };
            assert!(ok, "{input:?} gave {e:?}");
        }
        // A 64-hex name with a tag is a repository again.
        assert!(Reference::parse(&format!("{hex}:v1")).is_ok());
    }
}
