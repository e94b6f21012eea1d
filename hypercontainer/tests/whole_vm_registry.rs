//! Whole-VM test of registry images: the busybox test image is pushed
//! (Distribution API uploads, written here so no skopeo is needed inside
//! the emulated host) to Debian's `docker-registry` (distribution 2.8)
//! started on 127.0.0.1 by the test, and a sandbox runs `echo` from it by
//! name, pulled through the image store on first use.
//!
//! Ignored by default: `cargo xtask whole-vm whole_vm_registry` (or `cargo
//! xtask test`) runs it; xtask packs `docker-registry` into the emulated
//! host when it is installed. Without it the test prints why and passes.

mod sandbox_common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hypercontainer::sandbox::{ImageStore, PullPolicy, Sandbox};
use hypercontainer_image::{ClientOptions, ImageSource, LayerState, Limits, Platform};

struct Registry(Child);

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a plain HTTP registry on a free loopback port; returns it and `host:port`.
fn start_registry(dir: &Path) -> (Registry, String) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            dir.join("storage").display()
        ),
    )
    .unwrap();
    let child = Command::new("/usr/bin/docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting docker-registry");
    let reg = Registry(child);
    let host = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(&host).is_err() {
        assert!(Instant::now() < deadline, "docker-registry did not listen");
        std::thread::sleep(Duration::from_millis(100));
    }
    (reg, host)
}

/// Loopback may be down in a minimal host: bring it up (best effort).
fn loopback_up() {
    let busybox = std::env::var_os("HYPERCONTAINER_BUSYBOX").unwrap_or_else(|| "busybox".into());
    let _ = Command::new(busybox)
        .args(["ip", "link", "set", "lo", "up"])
        .stderr(Stdio::null())
        .status();
}

/// One HTTP/1.1 request; returns the status and the `Location` header.
fn http(host: &str, method: &str, path: &str, ctype: &str, body: &[u8]) -> (u16, Option<String>) {
    let mut c = TcpStream::connect(host).unwrap();
    write!(
        c,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {ctype}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    c.write_all(body).unwrap();
    let mut resp = Vec::new();
    c.read_to_end(&mut resp).unwrap();
    let text = String::from_utf8_lossy(&resp);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let location = text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("location")
            .then(|| v.trim().to_owned())
    });
    (status, location)
}

/// Pushes a blob with a POST + PUT upload.
fn push_blob(host: &str, repo: &str, digest: &str, data: &[u8]) {
    let (status, location) = http(
        host,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/"),
        "text/plain",
        b"",
    );
    assert_eq!(status, 202, "starting an upload");
    let location = location.expect("upload location");
    let path = match location.split_once("://") {
        Some((_, rest)) => rest[rest.find('/').unwrap_or(rest.len())..].to_owned(),
        None => location,
    };
    let sep = if path.contains('?') { '&' } else { '?' };
    let (status, _) = http(
        host,
        "PUT",
        &format!("{path}{sep}digest={digest}"),
        "application/octet-stream",
        data,
    );
    assert_eq!(status, 201, "uploading {digest}");
}

/// Pushes the test image (its config and layers, under an OCI manifest
/// made here) as `repo:latest`.
fn push_test_image(host: &str, repo: &str) {
    let archive = sandbox_common::image_archive();
    let img = ImageSource::OciArchive {
        path: archive.to_owned(),
    }
    .open(
        Some(sandbox_common::TAG),
        &Platform::default(),
        &Limits::default(),
    )
    .unwrap();
    let config = img.config_json();
    push_blob(host, repo, &img.config_digest().to_string(), config);
    let mut layers = Vec::new();
    for (i, l) in img.layers().iter().enumerate() {
        let mut data = Vec::new();
        img.open_layer(i).unwrap().read_to_end(&mut data).unwrap();
        let digest = l
            .blob_digest
            .clone()
            .expect("OCI layers have digests")
            .to_string();
        push_blob(host, repo, &digest, &data);
        let media_type = match data.get(..4) {
            Some([0x1f, 0x8b, ..]) => "application/vnd.oci.image.layer.v1.tar+gzip",
            Some([0x28, 0xb5, 0x2f, 0xfd]) => "application/vnd.oci.image.layer.v1.tar+zstd",
            _ => "application/vnd.oci.image.layer.v1.tar",
        };
        layers.push(format!(
            r#"{{"mediaType":"{media_type}","digest":"{digest}","size":{}}}"#,
            data.len()
        ));
    }
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{}]}}"#,
        img.config_digest(),
        config.len(),
        layers.join(",")
    );
    let (status, _) = http(
        host,
        "PUT",
        &format!("/v2/{repo}/manifests/latest"),
        "application/vnd.oci.image.manifest.v1+json",
        manifest.as_bytes(),
    );
    assert_eq!(status, 201, "pushing the manifest");
}

#[test]
#[ignore = "whole-VM test: run by cargo xtask test"]
fn echo_from_an_image_pulled_by_name() {
    if !Path::new("/usr/bin/docker-registry").exists() {
        eprintln!("skipping: /usr/bin/docker-registry is missing (cargo xtask deps installs it)");
        return;
    }
    loopback_up();
    let dir = tempfile::tempdir().unwrap();
    let (_reg, host) = start_registry(dir.path());
    push_test_image(&host, "test/busybox");

    let store = ImageStore::open(dir.path().join("store")).unwrap();
    let states: Arc<Mutex<Vec<LayerState>>> = Arc::default();
    let seen = states.clone();
    let image = format!("{host}/test/busybox");
    let b = Sandbox::builder()
        .image(image.parse().unwrap())
        .image_store(store.clone())
        .registry(ClientOptions::new().auth_files(Vec::new()))
        .pull_progress(move |p| seen.lock().unwrap().push(p.state))
        .boot_timeout(Duration::from_secs(120))
        .cmd(["echo", "pulled"]);
    let r = sandbox_common::run_to_end(b);
    assert_eq!((r.out.as_str(), r.status), ("pulled\n", 0), "{}", r.err);
    assert!(states.lock().unwrap().contains(&LayerState::Verified));

    // A second start uses the store without asking the registry.
    states.lock().unwrap().clear();
    drop(_reg);
    let b = Sandbox::builder()
        .image(image.parse().unwrap())
        .image_store(store)
        .pull_policy(PullPolicy::Never)
        .boot_timeout(Duration::from_secs(120))
        .cmd(["echo", "again"]);
    let r = sandbox_common::run_to_end(b);
    assert_eq!((r.out.as_str(), r.status), ("again\n", 0), "{}", r.err);
}
