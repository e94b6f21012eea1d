//! Content digests: grammar validation, hashing and verified reads.
//!
//! A [`Digest`] is only constructed from a string that matches the OCI
//! digest grammar (`algorithm ":" encoded`) and uses an algorithm this crate
//! can compute (`sha256`, `sha512`), with exactly the right number of
//! lowercase hex digits. That makes the two halves safe to use as path
//! components (`blobs/<algorithm>/<hex>`).

use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

use sha2::{Digest as _, Sha256, Sha512};

/// Errors about digests.
#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    /// The string does not match the OCI digest grammar.
    #[error("malformed digest {0:?}")]
    Malformed(String),
    /// The digest is well formed but uses an algorithm this crate does not compute.
    #[error("unsupported digest algorithm in {0:?}")]
    Unsupported(String),
    /// The content has a different size than its descriptor says.
    #[error("size mismatch for {digest}: expected {expected} bytes, found {actual}")]
    SizeMismatch {
        /// The digest of the content that was checked.
        digest: String,
        /// The size the descriptor announced.
        expected: u64,
        /// The size actually found.
        actual: u64,
    },
    /// The content hashes to a different digest.
    #[error("digest mismatch: expected {expected}, computed {actual}")]
    Mismatch {
        /// The digest the content should have.
        expected: String,
        /// The digest computed from the content.
        actual: String,
    },
    /// Reading the content failed.
    #[error("reading content for {digest}")]
    Io {
        /// The digest of the content being read.
        digest: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, DigestError>;

/// Longest digest string accepted (sha512 is 7 + 128).
const MAX_DIGEST_LEN: usize = 256;

/// A hash algorithm this crate can compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// SHA-256, the default for OCI content.
    Sha256,
    /// SHA-512.
    Sha512,
}

impl Algorithm {
    /// The algorithm's name as written in digests.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// A validated content digest such as `sha256:e3b0c442...`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

fn is_algorithm_component(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn is_encoded(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'=' || b == b'_' || b == b'-')
}

impl Digest {
    /// Parses and validates a digest string.
    ///
    /// The whole OCI grammar is checked first (so a malformed string is
    /// reported as [`DigestError::Malformed`]), then the algorithm must be
    /// one this crate computes and the encoded part must be lowercase hex of
    /// the algorithm's length.
    pub fn parse(s: &str) -> Result<Self> {
        if s.len() > MAX_DIGEST_LEN {
            return Err(DigestError::Malformed(s.chars().take(80).collect()));
        }
        let (alg, enc) = s
            .split_once(':')
            .ok_or_else(|| DigestError::Malformed(s.to_owned()))?;
        let alg_ok = alg.split(['+', '.', '_', '-']).all(is_algorithm_component);
        if !alg_ok || !is_encoded(enc) {
            return Err(DigestError::Malformed(s.to_owned()));
        }
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ => return Err(DigestError::Unsupported(s.to_owned())),
        };
        if enc.len() != algorithm.hex_len()
            || !enc
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(DigestError::Malformed(s.to_owned()));
        }
        Ok(Digest {
            algorithm,
            hex: enc.to_owned(),
        })
    }

    /// The SHA-256 digest of `data`.
    pub fn sha256_of(data: &[u8]) -> Self {
        let mut h = Hasher::new(Algorithm::Sha256);
        h.update(data);
        h.finish()
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The encoded (hex) part; safe to use as a file name.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// Verifies that `data` has this digest.
    pub fn verify_bytes(&self, data: &[u8]) -> Result<()> {
        let mut h = Hasher::new(self.algorithm);
        h.update(data);
        self.check(h.finish())
    }

    /// Compares a computed digest against this (expected) one.
    pub fn check(&self, actual: Digest) -> Result<()> {
        if &actual == self {
            Ok(())
        } else {
            Err(DigestError::Mismatch {
                expected: self.to_string(),
                actual: actual.to_string(),
            })
        }
    }

    /// Verifies a blob: first that `actual_size` (known before reading, for
    /// example from file metadata) equals `expected_size`, then that the
    /// reader yields exactly that many bytes hashing to this digest.
    pub fn verify_reader(
        &self,
        mut reader: impl Read,
        expected_size: u64,
        actual_size: u64,
    ) -> Result<()> {
        if expected_size != actual_size {
            return Err(DigestError::SizeMismatch {
                digest: self.to_string(),
                expected: expected_size,
                actual: actual_size,
            });
        }
        let mut hasher = Hasher::new(self.algorithm);
        let mut limited = (&mut reader).take(expected_size.saturating_add(1));
        let n = io::copy(&mut limited, &mut hasher).map_err(|source| DigestError::Io {
            digest: self.to_string(),
            source,
        })?;
        if n != expected_size {
            return Err(DigestError::SizeMismatch {
                digest: self.to_string(),
                expected: expected_size,
                actual: n,
            });
        }
        self.check(hasher.finish())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self> {
        Digest::parse(s)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An incremental hasher producing a [`Digest`]; also an [`io::Write`] sink.
#[derive(Clone)]
pub enum Hasher {
    /// SHA-256 state.
    Sha256(Sha256),
    /// SHA-512 state.
    Sha512(Sha512),
}

impl Hasher {
    /// A fresh hasher for `algorithm`.
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    /// The digest of everything fed so far.
    pub fn finish(self) -> Digest {
        let (algorithm, hex) = match self {
            Hasher::Sha256(h) => (Algorithm::Sha256, hex::encode(h.finalize())),
            Hasher::Sha512(h) => (Algorithm::Sha512, hex::encode(h.finalize())),
        };
        Digest { algorithm, hex }
    }
}

impl io::Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_formats() {
        let d = Digest::parse(EMPTY).unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(Digest::sha256_of(b""), d);
    }

    #[test]
    fn rejects_bad_grammar_and_path_tricks() {
        for bad in [
            "",
            "sha256",
            "sha256:",
            ":abc",
            "SHA256:abc",
            "sha256:../../etc/passwd",
            "sha256:abc/def",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855/..",
            "sha256+:abc",
        ] {
            assert!(
                matches!(Digest::parse(bad), Err(DigestError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            Digest::parse("md5:abcdef"),
            Err(DigestError::Unsupported(_))
        ));
    }

    #[test]
    fn verify_reader_checks_size_then_hash() {
        let d = Digest::sha256_of(b"hello");
        d.verify_reader(&b"hello"[..], 5, 5).unwrap();
        assert!(matches!(
            d.verify_reader(&b"hello"[..], 5, 6),
            Err(DigestError::SizeMismatch { .. })
        ));
        assert!(matches!(
            d.verify_reader(&b"hellooo"[..], 5, 5),
            Err(DigestError::SizeMismatch { actual: 6, .. })
        ));
        assert!(matches!(
            d.verify_reader(&b"hellx"[..], 5, 5),
            Err(DigestError::Mismatch { .. })
        ));
    }
}
