//! HTTP(S) to one repository of one registry: TLS set-up, the choice of
//! scheme, and requests that answer `401` challenges once.
//!
//! TLS uses rustls with the system's trust store (`rustls-native-certs`
//! reads `/etc/ssl/certs`, which the administrator manages, as podman's Go
//! TLS stack does) plus any CA files the caller gives. Plain HTTP is used
//! only for registries the caller marks insecure and for loopback hosts
//! (`localhost`, `127.0.0.0/8`, `::1`), and even then only after HTTPS
//! failed: a loopback registry serving TLS is still spoken to over TLS.

use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;

use super::auth::{self, Challenge, Credentials};
use super::{RegistryError, Result};

/// Builds the TLS client configuration: system roots plus `ca_files` (PEM).
pub(crate) fn tls_config(ca_files: &[PathBuf]) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for c in native.certs {
        // Certificates the store cannot parse are skipped, as browsers do.
        let _ = roots.add(c);
    }
    for path in ca_files {
        let bad = |reason: String| RegistryError::CaFile {
            path: path.clone(),
            reason,
        };
        let data = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let mut n = 0;
        for cert in CertificateDer::pem_slice_iter(&data) {
            let cert = cert.map_err(|e| bad(e.to_string()))?;
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
            n += 1;
        }
        if n == 0 {
            return Err(bad("no PEM certificate in it".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| RegistryError::CaFile {
            path: PathBuf::new(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Whether `registry` (host[:port]) is a loopback address.
pub(crate) fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        registry.split(':').next().unwrap_or_default()
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// What a transport needs to know to reach and authenticate to a registry.
pub(crate) struct Endpoint<'a> {
    /// The registry as named in the reference (for messages and auth keys).
    pub registry: &'a str,
    /// The host[:port] requests go to.
    pub api_host: &'a str,
    /// The repository path.
    pub repository: &'a str,
    /// Plain HTTP may be tried after HTTPS failed.
    pub plain_http_ok: bool,
    /// Credentials to answer challenges with, if any.
    pub credentials: Option<Credentials>,
    /// The TLS configuration.
    pub tls: Arc<rustls::ClientConfig>,
    /// Connect and per-read timeout.
    pub timeout: Duration,
}

/// A connection-pooling client for one repository, with its current
/// `Authorization` value shared by every thread of a pull.
pub(crate) struct Transport {
    agent: ureq::Agent,
    base: String,
    registry: String,
    repository: String,
    credentials: Option<Credentials>,
    plain_http_ok: bool,
    auth: Mutex<Option<String>>,
}

/// Largest error body or token response read.
const MAX_SMALL_BODY: u64 = 1 << 20;

impl Transport {
    /// Picks the scheme by pinging `/v2/`, and answers its challenge (so
    /// parallel requests start with a token).
    pub(crate) fn connect(ep: Endpoint<'_>) -> Result<Transport> {
        let agent = ureq::AgentBuilder::new()
            .tls_config(ep.tls.clone())
            .timeout_connect(ep.timeout)
            .timeout_read(ep.timeout)
            .redirects(8)
            .build();
        let mut t = Transport {
            agent,
            base: format!("https://{}", ep.api_host),
            registry: ep.registry.to_owned(),
            repository: ep.repository.to_owned(),
            credentials: ep.credentials,
            plain_http_ok: ep.plain_http_ok,
            auth: Mutex::new(None),
        };
        let ping = match t.agent.get(&format!("{}/v2/", t.base)).call() {
            Err(ureq::Error::Transport(tls_err)) if t.plain_http_ok => {
                log::debug!(
                    "HTTPS to {} failed ({tls_err}); trying plain HTTP",
                    t.registry
                );
                let https = std::mem::replace(&mut t.base, format!("http://{}", ep.api_host));
                match t.agent.get(&format!("{}/v2/", t.base)).call() {
                    // Not a plain HTTP registry either (a TLS server answers
                    // 400): the HTTPS error is the one to report.
                    Err(ureq::Error::Status(400, _)) | Err(ureq::Error::Transport(_)) => {
                        t.base = https;
                        Err(ureq::Error::Transport(tls_err))
                    }
                    r => r,
                }
            }
            r => r,
        };
        match ping {
            Ok(_) => Ok(t),
            Err(ureq::Error::Status(401, resp)) => {
                let header = t.authenticate(&resp)?;
                *crate::registry::lock(&t.auth) = Some(header);
                Ok(t)
            }
            // Some registries answer the ping with 404; the real requests decide.
            Err(ureq::Error::Status(_, _)) => Ok(t),
            Err(ureq::Error::Transport(e)) => Err(t.transport_error(e)),
        }
    }

    /// `scheme://host`, for messages and tests.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// GETs `/v2/<repository>/<path>` with `headers`; a `401` is answered
    /// once by authenticating from its challenge. `what` names the object
    /// for errors.
    // ureq's error is large; it never leaves this function.
    #[allow(clippy::result_large_err)]
    pub(crate) fn get(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        what: &str,
    ) -> Result<ureq::Response> {
        let url = format!("{}/v2/{}/{path}", self.base, self.repository);
        let send = |auth: Option<&str>| {
            let mut req = self.agent.get(&url);
            for (k, v) in headers {
                req = req.set(k, v);
            }
            if let Some(a) = auth {
                req = req.set("Authorization", a);
            }
            req.call()
        };
        let current = crate::registry::lock(&self.auth).clone();
        let resp = match send(current.as_deref()) {
            Err(ureq::Error::Status(401, resp)) => {
                let header = self.authenticate(&resp)?;
                *crate::registry::lock(&self.auth) = Some(header.clone());
                send(Some(&header))
            }
            r => r,
        };
        match resp {
            Ok(r) => Ok(r),
            Err(ureq::Error::Status(401, _)) => Err(self.refused()),
            Err(ureq::Error::Status(code, resp)) => Err(status_error(code, resp, what)),
            Err(ureq::Error::Transport(e)) => Err(self.transport_error(e)),
        }
    }

    fn refused(&self) -> RegistryError {
        match &self.credentials {
            Some(c) => RegistryError::AuthRefused {
                registry: self.registry.clone(),
                username: c.username.clone(),
            },
            None => RegistryError::AuthRequired {
                registry: self.registry.clone(),
            },
        }
    }

    /// The `Authorization` value answering the challenge of a 401 response.
    fn authenticate(&self, resp: &ureq::Response) -> Result<String> {
        let challenge = resp
            .all("www-authenticate")
            .into_iter()
            .find_map(auth::parse_challenge);
        match challenge {
            None => Err(self.refused()),
            Some(Challenge::Basic) => match &self.credentials {
                Some(c) => Ok(c.basic_header()),
                None => Err(self.refused()),
            },
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => self.fetch_token(&realm, service.as_deref(), scope.as_deref()),
        }
    }

    fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: Option<&str>,
    ) -> Result<String> {
        let token_err = |reason: String| RegistryError::Token {
            realm: realm.to_owned(),
            reason,
        };
        let plain = realm.starts_with("http://");
        if !realm.starts_with("https://") && !plain {
            return Err(token_err("the realm is not an http(s) URL".into()));
        }
        let realm_host = realm
            .split_once("://")
            .map(|(_, r)| r.split(['/', '?']).next().unwrap_or_default())
            .unwrap_or_default();
        if plain && !(self.plain_http_ok || is_loopback(realm_host)) {
            return Err(token_err(
                "the token service is plain HTTP; credentials are sent only over TLS \
                 unless the registry is marked insecure"
                    .into(),
            ));
        }
        let default_scope = format!("repository:{}:pull", self.repository);
        let mut req = self
            .agent
            .get(realm)
            .query("scope", scope.unwrap_or(&default_scope));
        if let Some(s) = service {
            req = req.query("service", s);
        }
        if let Some(c) = &self.credentials {
            req = req.set("Authorization", &c.basic_header());
        }
        let resp = match req.call() {
            Ok(r) => r,
            Err(ureq::Error::Status(401 | 403, _)) => return Err(self.refused()),
            Err(ureq::Error::Status(code, _)) => {
                return Err(token_err(format!("HTTP status {code}")))
            }
            Err(ureq::Error::Transport(e)) => return Err(self.transport_error(e)),
        };
        let mut body = Vec::new();
        resp.into_reader()
            .take(MAX_SMALL_BODY)
            .read_to_end(&mut body)
            .map_err(|e| token_err(e.to_string()))?;
        let token =
            auth::parse_token(&body).ok_or_else(|| token_err("the answer has no token".into()))?;
        Ok(format!("Bearer {token}"))
    }

    pub(crate) fn transport_error(&self, e: ureq::Transport) -> RegistryError {
        if is_tls_error(&e) {
            return RegistryError::Tls {
                registry: self.registry.clone(),
                reason: e.to_string(),
            };
        }
        RegistryError::Unreachable {
            registry: self.registry.clone(),
            reason: e.to_string(),
        }
    }
}

fn is_tls_error(e: &ureq::Transport) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.get_ref().is_some_and(|i| i.is::<rustls::Error>()) {
                return true;
            }
        }
        source = s.source();
    }
    false
}

/// The `code`s of a Distribution API error body.
fn error_codes(resp: ureq::Response) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(default)]
        errors: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        #[serde(default)]
        code: String,
    }
    let mut data = Vec::new();
    let _ = resp
        .into_reader()
        .take(MAX_SMALL_BODY)
        .read_to_end(&mut data);
    serde_json::from_slice::<Body>(&data)
        .map(|b| b.errors.into_iter().map(|i| i.code).collect())
        .unwrap_or_default()
}

fn status_error(code: u16, resp: ureq::Response, what: &str) -> RegistryError {
    let codes = error_codes(resp);
    match code {
        404 => RegistryError::NotFound {
            what: what.to_owned(),
        },
        403 => RegistryError::Denied {
            what: what.to_owned(),
        },
        _ => RegistryError::Status {
            what: what.to_owned(),
            status: code,
            codes: codes.join(", "),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:1",
            "127.9.9.9",
            "[::1]:5000",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["docker.io", "10.0.0.1:5000", "localhost.example", "[::2]"] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ca.pem");
        std::fs::write(&f, "not a certificate").unwrap();
        assert!(matches!(
            tls_config(&[f]),
            Err(RegistryError::CaFile { .. })
        ));
        assert!(tls_config(&[]).is_ok());
    }
}
