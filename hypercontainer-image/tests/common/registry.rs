//! A real registry (Debian's `docker-registry`, distribution 2.8) on
//! loopback, and a small HTTP proxy in front of it that logs requests and
//! can cut, corrupt or demand Bearer tokens (it also serves the tokens).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// Why the registry tests cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    for bin in [
        REGISTRY_BIN,
        "/usr/bin/skopeo",
        "/usr/bin/umoci",
        "/usr/bin/openssl",
    ] {
        if !Path::new(bin).exists() {
            return Some(format!(
                "{bin} is missing (cargo xtask deps installs docker-registry, skopeo, umoci and openssl)"
            ));
        }
    }
    None
}

/// A running registry; killed on drop.
pub struct Registry {
    child: Child,
    pub addr: SocketAddr,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Registry {
    /// Starts a plain HTTP registry storing under `dir`; with `htpasswd`, Basic auth.
    pub fn start(dir: &Path, htpasswd: Option<&Path>) -> Registry {
        Self::start_with(dir, htpasswd, None)
    }

    /// Starts a registry; with `tls` (certificate, key), over TLS only.
    pub fn start_with(dir: &Path, htpasswd: Option<&Path>, tls: Option<&TestCerts>) -> Registry {
        let port = free_port();
        let storage = dir.join("storage");
        std::fs::create_dir_all(&storage).unwrap();
        let auth = match htpasswd {
            Some(p) => format!(
                "auth:\n  htpasswd:\n    realm: test-realm\n    path: {}\n",
                p.display()
            ),
            None => String::new(),
        };
        let tls = match tls {
            Some(c) => format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                c.server_cert.display(),
                c.server_key.display()
            ),
            None => String::new(),
        };
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: 127.0.0.1:{port}\n{tls}{auth}",
                storage.display()
            ),
        )
        .unwrap();
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting docker-registry");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let reg = Registry { child, addr };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        reg
    }

    /// `host:port`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Copies `src` (a skopeo source such as `oci-archive:PATH:TAG`) to
    /// `repo_tag` (`team/app:tag`) in this registry.
    pub fn seed(&self, src: &str, repo_tag: &str, extra: &[&str]) {
        super::run(
            Command::new("skopeo")
                .args(["--insecure-policy", "copy", "-q", "--dest-tls-verify=false"])
                .args(extra)
                .arg(src)
                .arg(format!("docker://{}/{repo_tag}", self.host())),
        );
    }
}

/// An htpasswd user; its bcrypt line (cost 4) was made once with Python's
/// `crypt`, so the tests need no htpasswd tool.
pub const HTPASSWD_USER: &str = "tester";
pub const HTPASSWD_PASSWORD: &str = "secret";
pub const HTPASSWD_LINE: &str =
    "tester:$2y$04$ZdK2oDCtypD7WhVRkJmbFe5J/J2i/5EKZfKsKwHKdd2z1DFsSmurC";

/// One request the proxy saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
    /// Response body bytes passed to the client.
    pub body_bytes: u64,
}

/// What the proxy does besides passing bytes.
#[derive(Debug, Clone)]
pub enum Mode {
    Pass,
    /// Cut the first blob response whose body is larger than `after`, after `after` bytes.
    CutOnce {
        after: u64,
    },
    /// Flip a byte in blob responses with bodies larger than `min`.
    CorruptBlobs {
        min: u64,
    },
    /// Flip a byte in manifest responses.
    CorruptManifests,
    /// Demand `Authorization: Bearer <token>`, handing tokens out at
    /// `/token` for Basic `credentials` (`user:password`; any when `None`).
    Bearer {
        token: String,
        credentials: Option<String>,
    },
}

pub struct Proxy {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub mode: Arc<Mutex<Mode>>,
    cut_done: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(upstream: SocketAddr, mode: Mode) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let p = Proxy {
            addr,
            seen: Arc::default(),
            mode: Arc::new(Mutex::new(mode)),
            cut_done: Arc::default(),
        };
        let (seen, mode, cut) = (p.seen.clone(), p.mode.clone(), p.cut_done.clone());
        std::thread::spawn(move || {
            for c in listener.incoming().flatten() {
                let (seen, mode, cut) = (seen.clone(), mode.clone(), cut.clone());
                std::thread::spawn(move || {
                    let _ = handle(c, upstream, addr, &seen, &mode, &cut);
                });
            }
        });
        p
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn set_mode(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
    }

    pub fn take_seen(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }

    /// Body bytes of blob responses for `digest`.
    pub fn blob_bytes(seen: &[Seen], digest: &str) -> u64 {
        seen.iter()
            .filter(|s| s.path.ends_with(&format!("/blobs/{digest}")))
            .map(|s| s.body_bytes)
            .sum()
    }
}

fn respond(c: &mut TcpStream, status: &str, extra: &str, body: &str) -> std::io::Result<()> {
    write!(
        c,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n{extra}\r\n{body}",
        body.len()
    )
}

fn handle(
    mut client: TcpStream,
    upstream: SocketAddr,
    me: SocketAddr,
    seen: &Mutex<Vec<Seen>>,
    mode: &Mutex<Mode>,
    cut_done: &AtomicBool,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        if reader.read_line(&mut l)? == 0 || l == "\r\n" {
            break;
        }
        headers.push(l.trim_end().to_owned());
    }
    let header = |name: &str| {
        headers.iter().find_map(|h| {
            let (k, v) = h.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    let mut entry = Seen {
        path: path.clone(),
        range: header("range"),
        authorization: header("authorization"),
        body_bytes: 0,
    };
    let mode = mode.lock().unwrap().clone();
    if let Mode::Bearer { token, credentials } = &mode {
        if path.starts_with("/token") {
            let ok = match credentials {
                None => true,
                Some(c) => {
                    use base64::Engine as _;
                    let want = format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(c)
                    );
                    entry.authorization.as_deref() == Some(want.as_str())
                }
            };
            seen.lock().unwrap().push(entry);
            return if ok {
                respond(
                    &mut client,
                    "200 OK",
                    "",
                    &format!(r#"{{"token":"{token}"}}"#),
                )
            } else {
                respond(&mut client, "401 Unauthorized", "", "{}")
            };
        }
        if entry.authorization.as_deref() != Some(format!("Bearer {token}").as_str()) {
            seen.lock().unwrap().push(entry);
            let challenge = format!(
                "WWW-Authenticate: Bearer realm=\"http://{me}/token\",service=\"test-registry\",\
                 scope=\"repository:test/img:pull\"\r\n"
            );
            return respond(&mut client, "401 Unauthorized", &challenge, "{}");
        }
    }
    let mut up = TcpStream::connect(upstream)?;
    let mut head = format!("{}\r\n", request_line.trim_end());
    for h in &headers {
        let k = h.split(':').next().unwrap_or_default();
        let bearer = matches!(mode, Mode::Bearer { .. });
        if k.eq_ignore_ascii_case("connection")
            || (bearer && k.eq_ignore_ascii_case("authorization"))
        {
            continue;
        }
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("Connection: close\r\n\r\n");
    up.write_all(head.as_bytes())?;
    let is_blob = path.contains("/blobs/");
    let is_manifest = path.contains("/manifests/");
    // Pump the response, finding where its body starts.
    let mut buf = vec![0u8; 64 << 10];
    let mut head_buf: Vec<u8> = Vec::new();
    let mut body_len: Option<u64> = None;
    let mut in_body = false;
    let mut cut_at: Option<u64> = None;
    let mut flipped = false;
    let result = loop {
        let n = match up.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) => break Err(e),
        };
        let mut chunk = buf[..n].to_vec();
        if !in_body {
            head_buf.extend_from_slice(&chunk);
            let Some(end) = head_buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let text = String::from_utf8_lossy(&head_buf[..end]).to_lowercase();
            body_len = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok());
            let body_start = head_buf[end + 4..].to_vec();
            client.write_all(&head_buf[..end + 4])?;
            in_body = true;
            let big = |min: u64| body_len.is_some_and(|l| l > min);
            if let Mode::CutOnce { after } = &mode {
                if is_blob && big(*after) && !cut_done.swap(true, Ordering::SeqCst) {
                    cut_at = Some(*after);
                }
            }
            chunk = body_start;
        }
        let flip = match &mode {
            Mode::CorruptBlobs { min } => is_blob && body_len.is_some_and(|l| l > *min),
            Mode::CorruptManifests => is_manifest,
            _ => false,
        };
        if flip && !flipped && !chunk.is_empty() {
            let i = chunk.len() / 2;
            chunk[i] ^= 0x20;
            flipped = true;
        }
        if let Some(at) = cut_at {
            let room = at.saturating_sub(entry.body_bytes) as usize;
            if chunk.len() >= room {
                client.write_all(&chunk[..room])?;
                entry.body_bytes += room as u64;
                let _ = client.flush();
                let _ = client.shutdown(Shutdown::Both);
                break Ok(());
            }
        }
        client.write_all(&chunk)?;
        entry.body_bytes += chunk.len() as u64;
    };
    seen.lock().unwrap().push(entry);
    let _ = client.shutdown(Shutdown::Write);
    result
}

/// An auth file for `host` with `user:password`.
pub fn auth_file(dir: &Path, host: &str, user: &str, password: &str) -> PathBuf {
    use base64::Engine as _;
    let p = dir.join("auth.json");
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    std::fs::write(
        &p,
        format!(r#"{{"auths":{{"{host}":{{"auth":"{b64}"}}}}}}"#),
    )
    .unwrap();
    p
}

/// A CA and a server certificate for 127.0.0.1 signed by it, made with openssl.
pub struct TestCerts {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

pub fn make_certs(dir: &Path) -> TestCerts {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let ca = dir.join("ca.pem");
    let ca_key = dir.join("ca.key");
    super::run(
        Command::new("openssl")
            .args(["req", "-x509"])
            .args(ec)
            .arg("-keyout")
            .arg(&ca_key)
            .arg("-out")
            .arg(&ca)
            .args(["-days", "2", "-subj", "/CN=hypercontainer test CA"])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign"]),
    );
    let key = dir.join("server.key");
    let csr = dir.join("server.csr");
    super::run(
        Command::new("openssl")
            .arg("req")
            .args(ec)
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr)
            .args(["-subj", "/CN=127.0.0.1"]),
    );
    let ext = dir.join("ext.cnf");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let cert = dir.join("server.pem");
    super::run(
        Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
            .arg("-in")
            .arg(&csr)
            .arg("-CA")
            .arg(&ca)
            .arg("-CAkey")
            .arg(&ca_key)
            .arg("-out")
            .arg(&cert)
            .arg("-extfile")
            .arg(&ext),
    );
    TestCerts {
        ca,
        server_cert: cert,
        server_key: key,
    }
}
