//! Registry credentials and the `WWW-Authenticate` challenge flows.
//!
//! Credentials are looked up as podman and skopeo do (containers/image
//! `pkg/docker/config`): the first of these files that has an entry for the
//! registry wins:
//!
//! 1. `$REGISTRY_AUTH_FILE`, when set;
//! 2. `${XDG_RUNTIME_DIR}/containers/auth.json` (where `podman login` writes);
//! 3. `~/.config/containers/auth.json`;
//! 4. `~/.docker/config.json` (where `docker login` writes).
//!
//! In each file, `auths` keys are matched most specific first
//! (`registry/namespace/repo`, then `registry/namespace`, then `registry`),
//! with any `http(s)://` prefix and `/v1/` suffix dropped and Docker Hub's
//! old names (`index.docker.io`, `https://index.docker.io/v1/`) read as
//! `docker.io`. An entry's `auth` field is base64 of `user:password`.
//! Credential helpers (`credHelpers`, `credsStore`) are not run.
//!
//! A registry answers a request it wants authenticated with `401` and a
//! challenge. `Basic` is answered with the credentials; `Bearer realm=...,
//! service=..., scope=...` with a token fetched from the realm (sending the
//! credentials, if any, as Basic auth; anonymously otherwise).

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use super::RegistryError;

/// A user name and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password or personal access token.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// Credentials from a user name and a password.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials {
            username: username.into(),
            password: password.into(),
        }
    }

    /// The value of an `Authorization: Basic ...` header.
    pub(crate) fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// The auth files searched by default, in order (see the [module docs](self)).
pub fn default_auth_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|p| !p.is_empty()) {
        files.push(PathBuf::from(p));
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        files.push(Path::new(&d).join("containers/auth.json"));
    }
    if let Some(home) = std::env::var_os("HOME").filter(|p| !p.is_empty()) {
        let home = PathBuf::from(home);
        files.push(home.join(".config/containers/auth.json"));
        files.push(home.join(".docker/config.json"));
    }
    files
}

#[derive(Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: std::collections::HashMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// Largest auth file read.
const MAX_AUTH_FILE: u64 = 1 << 20;

fn normalise_key(key: &str) -> String {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let k = k.trim_end_matches('/');
    let k = k
        .strip_suffix("/v1")
        .or_else(|| k.strip_suffix("/v2"))
        .unwrap_or(k);
    match k.split_once('/') {
        Some((host, rest)) => format!("{}/{rest}", normalise_host(host)),
        None => normalise_host(k).to_owned(),
    }
}

fn normalise_host(h: &str) -> &str {
    match h {
        "index.docker.io" | "registry-1.docker.io" => "docker.io",
        h => h,
    }
}

/// Candidate keys for `registry/repository`, most specific first.
fn candidate_keys(registry: &str, repository: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut path = format!("{registry}/{repository}");
    loop {
        keys.push(path.clone());
        match path.rfind('/') {
            Some(i) => path.truncate(i),
            None => break,
        }
    }
    keys
}

fn read_auth_file(path: &Path) -> Result<Option<AuthFile>, RegistryError> {
    use std::io::Read as _;
    let bad = |reason: String| RegistryError::AuthFile {
        path: path.to_owned(),
        reason,
    };
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(e.to_string())),
    };
    let mut data = Vec::new();
    f.take(MAX_AUTH_FILE + 1)
        .read_to_end(&mut data)
        .map_err(|e| bad(e.to_string()))?;
    if data.len() as u64 > MAX_AUTH_FILE {
        return Err(bad("larger than 1 MiB".into()));
    }
    serde_json::from_slice(&data)
        .map(Some)
        .map_err(|e| bad(e.to_string()))
}

fn decode_entry(
    path: &Path,
    key: &str,
    e: &AuthEntry,
) -> Result<Option<Credentials>, RegistryError> {
    let bad = |reason: String| RegistryError::AuthFile {
        path: path.to_owned(),
        reason: format!("entry {key:?}: {reason}"),
    };
    if let Some(auth) = e.auth.as_deref().filter(|a| !a.is_empty()) {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|e| bad(format!("auth is not base64: {e}")))?;
        let raw = String::from_utf8(raw).map_err(|_| bad("auth is not UTF-8".into()))?;
        let (u, p) = raw
            .split_once(':')
            .ok_or_else(|| bad("auth is not user:password".into()))?;
        return Ok(Some(Credentials::new(u, p)));
    }
    match (&e.username, &e.password) {
        (Some(u), Some(p)) => Ok(Some(Credentials::new(u.clone(), p.clone()))),
        _ => Ok(None),
    }
}

/// The credentials for `registry/repository` from the first of `files`
/// with a matching entry; `None` when no file has one.
pub fn lookup(
    files: &[PathBuf],
    registry: &str,
    repository: &str,
) -> Result<Option<Credentials>, RegistryError> {
    let wanted = candidate_keys(registry, repository);
    for path in files {
        let Some(file) = read_auth_file(path)? else {
            continue;
        };
        let entries: Vec<(String, &AuthEntry)> = file
            .auths
            .iter()
            .map(|(k, v)| (normalise_key(k), v))
            .collect();
        for want in &wanted {
            for (key, entry) in entries.iter().filter(|(k, _)| k == want) {
                if let Some(c) = decode_entry(path, key, entry)? {
                    return Ok(Some(c));
                }
            }
        }
    }
    Ok(None)
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    /// `Basic realm="..."`.
    Basic,
    /// `Bearer realm="...",service="...",scope="..."`.
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses the first challenge of a `WWW-Authenticate` value (RFC 7235
/// auth-params: `key=token` or `key="quoted, with \"escapes\""`).
pub(crate) fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let params = parse_params(rest);
    let get = |k: &str| {
        params
            .iter()
            .find(|(pk, _)| pk.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    if scheme.eq_ignore_ascii_case("basic") {
        Some(Challenge::Basic)
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Some(Challenge::Bearer {
            realm: get("realm")?,
            service: get("service"),
            scope: get("scope"),
        })
    } else {
        None
    }
}

fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',')).collect();
        if key.is_empty() || chars.next() != Some('=') {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect();
        }
        out.push((key.trim().to_owned(), value.trim().to_owned()));
    }
    out
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

/// Extracts the token from a token endpoint's JSON answer.
pub(crate) fn parse_token(body: &[u8]) -> Option<String> {
    let r: TokenResponse = serde_json::from_slice(body).ok()?;
    r.token
        .filter(|t| !t.is_empty())
        .or(r.access_token.filter(|t| !t.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge("bearer realm=http://x/t, scope=a"),
            Some(Challenge::Bearer {
                realm: "http://x/t".into(),
                service: None,
                scope: Some("a".into()),
            })
        );
        assert_eq!(parse_challenge("Bearer service=x"), None);
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn tokens_come_from_either_field() {
        assert_eq!(parse_token(br#"{"token":"a"}"#).as_deref(), Some("a"));
        assert_eq!(
            parse_token(br#"{"access_token":"b","expires_in":60}"#).as_deref(),
            Some("b")
        );
        assert_eq!(parse_token(br#"{"token":""}"#), None);
        assert_eq!(parse_token(b"nope"), None);
    }

    #[test]
    fn credentials_follow_the_search_order_and_key_forms() {
        let dir = tempfile::tempdir().unwrap();
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let first = dir.path().join("auth.json");
        std::fs::write(
            &first,
            format!(
                r#"{{"auths":{{"registry.example:5000/team":{{"auth":"{}"}},"registry.example:5000":{{"auth":"{}"}}}}}}"#,
                b64("team:t"),
                b64("any:a")
            ),
        )
        .unwrap();
        let docker = dir.path().join("config.json");
        std::fs::write(
            &docker,
            format!(
                r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{}"}},"registry.example:5000":{{"auth":"{}"}}}}}}"#,
                b64("hub:h:with:colons"),
                b64("late:l")
            ),
        )
        .unwrap();
        let files = [dir.path().join("missing.json"), first, docker];
        let c = lookup(&files, "registry.example:5000", "team/app").unwrap();
        assert_eq!(c, Some(Credentials::new("team", "t")));
        let c = lookup(&files, "registry.example:5000", "other/app").unwrap();
        assert_eq!(c, Some(Credentials::new("any", "a")));
        let c = lookup(&files, "docker.io", "library/busybox").unwrap();
        assert_eq!(c, Some(Credentials::new("hub", "h:with:colons")));
        assert_eq!(lookup(&files, "quay.io", "x/y").unwrap(), None);
        assert!(format!("{:?}", Credentials::new("u", "secret")).contains("redacted"));
    }

    #[test]
    fn a_broken_auth_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("auth.json");
        std::fs::write(&f, r#"{"auths":{"r.example":{"auth":"%%%"}}}"#).unwrap();
        let e = lookup(std::slice::from_ref(&f), "r.example", "a").unwrap_err();
        assert!(
            matches!(e, RegistryError::AuthFile { ref path, .. } if *path == f),
            "{e}"
        );
    }
}
