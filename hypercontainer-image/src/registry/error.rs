//! The registry client's errors; each says what to do.

use std::path::PathBuf;

use crate::digest::DigestError;
use crate::manifest::ManifestError;

/// Errors from talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry could not be reached (DNS, connection, timeout, broken transfer).
    #[error(
        "cannot reach registry {registry}: {reason}; check the name, the network and any proxy"
    )]
    Unreachable {
        /// The registry.
        registry: String,
        /// What failed.
        reason: String,
    },
    /// The TLS handshake failed (unknown CA, wrong name, plain HTTP server).
    #[error(
        "TLS with registry {registry} failed: {reason}; give its CA with ClientOptions::ca_file, \
         or mark it insecure if it only speaks plain HTTP"
    )]
    Tls {
        /// The registry.
        registry: String,
        /// What failed.
        reason: String,
    },
    /// The registry wants credentials and none were found.
    #[error(
        "authentication required by {registry}: run `podman login {registry}` or set REGISTRY_AUTH_FILE"
    )]
    AuthRequired {
        /// The registry.
        registry: String,
    },
    /// The registry refused the credentials.
    #[error(
        "registry {registry} refused the credentials of {username:?}: check them with \
         `podman login {registry}`"
    )]
    AuthRefused {
        /// The registry.
        registry: String,
        /// The user name tried.
        username: String,
    },
    /// The token service could not give a token.
    #[error("getting a token from {realm}: {reason}")]
    Token {
        /// The token service URL.
        realm: String,
        /// What failed.
        reason: String,
    },
    /// The name, tag, digest or blob does not exist (or is private).
    #[error(
        "{what} not found: check the repository name and tag (private repositories need a login)"
    )]
    NotFound {
        /// What was asked for.
        what: String,
    },
    /// The registry denied access.
    #[error("access to {what} denied: the credentials lack pull rights")]
    Denied {
        /// What was asked for.
        what: String,
    },
    /// Another HTTP error status.
    #[error("registry answered {status} for {what} ({codes})")]
    Status {
        /// What was asked for.
        what: String,
        /// HTTP status.
        status: u16,
        /// Distribution API error codes from the body.
        codes: String,
    },
    /// A pinned manifest (or one with `Docker-Content-Digest`) has other bytes.
    #[error("manifest of {reference} has digest {actual}, not {expected}: refusing it")]
    ManifestDigest {
        /// The reference.
        reference: String,
        /// The digest it should have.
        expected: String,
        /// The digest of what was received.
        actual: String,
    },
    /// A blob or manifest failed size or digest verification.
    #[error("verifying {what}")]
    Verify {
        /// Which blob.
        what: String,
        /// The verification error.
        #[source]
        source: DigestError,
    },
    /// The index has no image for the wanted platform.
    #[error("{reference} has no image for {wanted}; it has: {available}")]
    NoPlatform {
        /// The reference.
        reference: String,
        /// The platform asked for.
        wanted: String,
        /// The platforms in the index.
        available: String,
    },
    /// The manifest's media type is not one this client can use.
    #[error("{reference}: unsupported manifest type {media_type:?}{hint}")]
    UnsupportedManifest {
        /// The reference.
        reference: String,
        /// The media type received.
        media_type: String,
        /// What to do.
        hint: &'static str,
    },
    /// A document is malformed or over its cap.
    #[error("parsing {what}")]
    Manifest {
        /// Which document.
        what: String,
        /// The parse error.
        #[source]
        source: Box<ManifestError>,
    },
    /// An auth file could not be used.
    #[error("auth file {path:?}: {reason}")]
    AuthFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A CA file could not be used.
    #[error("CA file {path:?}: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A local file operation failed.
    #[error("{op} {path:?}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, RegistryError>;
