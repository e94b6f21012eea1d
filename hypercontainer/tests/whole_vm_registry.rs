//! Whole-VM test of registry images: the busybox test image is pushed to
//! Debian's `docker-registry` (distribution 2.8) started on 127.0.0.1 by
//! the test, and a sandbox runs `echo` from it by name, pulled through the
//! image store on first use.
//!
//! Ignored by default: `cargo xtask whole-vm whole_vm_registry` (or `cargo
//! xtask test`) runs it. Without `/usr/bin/docker-registry` or `skopeo` it
//! prints why and passes.

mod sandbox_common;

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hypercontainer::sandbox::{ImageStore, PullPolicy, Sandbox};
use hypercontainer_image::{ClientOptions, LayerState};

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

#[test]
#[ignore = "whole-VM test: run by cargo xtask test"]
fn echo_from_an_image_pulled_by_name() {
    for bin in ["/usr/bin/docker-registry", "/usr/bin/skopeo"] {
        if !Path::new(bin).exists() {
            eprintln!("skipping: {bin} is missing (cargo xtask deps installs it)");
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let (_reg, host) = start_registry(dir.path());
    let archive = sandbox_common::image_archive();
    let out = Command::new("skopeo")
        .args(["--insecure-policy", "copy", "-q", "--dest-tls-verify=false"])
        .arg(format!(
            "oci-archive:{}:{}",
            archive.display(),
            sandbox_common::TAG
        ))
        .arg(format!("docker://{host}/test/busybox:latest"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

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
