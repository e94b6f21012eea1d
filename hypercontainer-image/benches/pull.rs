//! Pull of a ~100 MiB four-layer image from a loopback registry (Debian's
//! `docker-registry`) into an OCI layout, against `skopeo copy
//! docker://... oci:DIR` of the same image from the same registry, in
//! alternating pairs. Prints the median times and their ratio (the goal is
//! at most 0.8x skopeo's time), then the time of a whole `ImageStore::pull`
//! (download, verify, unpack) for reference.
//!
//! `cargo bench -p hypercontainer-image --bench pull` (`PULL_BENCH_PAIRS`
//! sets the number of pairs, default 7).

use std::fs;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hypercontainer_image::registry::PullTarget;
use hypercontainer_image::{Client, ClientOptions, Digest, ImageStore, Platform, Reference};

const LAYERS: usize = 4;
const LAYER_BYTES: usize = 25 << 20;

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Incompressible pseudo-random bytes (xorshift).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

fn put(blobs: &Path, data: &[u8]) -> (String, usize) {
    let d = Digest::sha256_of(data);
    fs::write(blobs.join(d.hex()), data).unwrap();
    (d.to_string(), data.len())
}

/// An OCI layout with LAYERS uncompressed layers of one big file each.
fn layout(dir: &Path) -> PathBuf {
    let out = dir.join("layout");
    let blobs = out.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let mut layers = Vec::new();
    for i in 0..LAYERS {
        let mut b = tar::Builder::new(Vec::new());
        let data = noise(i as u64 + 1, LAYER_BYTES);
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append_data(&mut h, format!("layer{i}.bin"), &data[..])
            .unwrap();
        layers.push(put(&blobs, &b.into_inner().unwrap()));
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| &l.0).collect::<Vec<_>>()},
        "config": {},
    });
    let (cd, cs) = put(&blobs, &serde_json::to_vec(&config).unwrap());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": layers.iter().map(|(d, s)| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": s,
        })).collect::<Vec<_>>(),
    });
    let (md, ms) = put(&blobs, &serde_json::to_vec(&manifest).unwrap());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
            "annotations": {"org.opencontainers.image.ref.name": "1"},
        }],
    });
    fs::write(out.join("index.json"), index.to_string()).unwrap();
    fs::write(out.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    out
}

struct Registry(Child);

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_registry(dir: &Path) -> (Registry, String) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.join("config.yml");
    let mut f = fs::File::create(&config).unwrap();
    write!(
        f,
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n\
         http:\n  addr: 127.0.0.1:{port}\n",
        dir.join("storage").display()
    )
    .unwrap();
    let child = Command::new("/usr/bin/docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let host = format!("127.0.0.1:{port}");
    while TcpStream::connect(&host).is_err() {
        std::thread::sleep(Duration::from_millis(50));
    }
    (Registry(child), host)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    // `cargo test --benches` runs benches with `--bench` absent: stay quick.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    for bin in ["/usr/bin/docker-registry", "/usr/bin/skopeo"] {
        if !Path::new(bin).exists() {
            eprintln!("skipping the pull bench: {bin} is missing (cargo xtask deps)");
            return;
        }
    }
    let pairs: usize = std::env::var("PULL_BENCH_PAIRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let dir = tempfile::tempdir().unwrap();
    let src = layout(dir.path());
    let (_reg, host) = start_registry(dir.path());
    run(Command::new("skopeo")
        .args(["--insecure-policy", "copy", "-q", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:1", src.display()))
        .arg(format!("docker://{host}/bench/img:1")));
    let r: Reference = format!("{host}/bench/img:1").parse().unwrap();
    let client = Client::new(ClientOptions::new().auth_files(Vec::new())).unwrap();
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for i in 0..pairs {
        let work = dir.path().join(format!("run{i}"));
        let layout = work.join("ours");
        fs::create_dir_all(&layout).unwrap();
        let t = Instant::now();
        client
            .pull_layout(
                &r,
                &PullTarget {
                    layout: &layout,
                    downloads: &work.join("downloads"),
                    platform: &Platform::default(),
                    limits: &Default::default(),
                    have_layer: &|_| false,
                },
            )
            .unwrap();
        ours.push(t.elapsed());
        let t = Instant::now();
        run(Command::new("skopeo")
            .args(["--insecure-policy", "copy", "-q", "--src-tls-verify=false"])
            .arg(format!("docker://{host}/bench/img:1"))
            .arg(format!("oci:{}:1", work.join("skopeo").display())));
        theirs.push(t.elapsed());
        fs::remove_dir_all(&work).unwrap();
    }
    let (o, s) = (median(&mut ours), median(&mut theirs));
    println!(
        "pull of {} MiB in {LAYERS} layers, median of {pairs} pairs: pull_layout {:.0} ms, \
         skopeo copy {:.0} ms, ratio {:.2}x (goal <= 0.80x)",
        (LAYERS * LAYER_BYTES) >> 20,
        o.as_secs_f64() * 1e3,
        s.as_secs_f64() * 1e3,
        o.as_secs_f64() / s.as_secs_f64()
    );
    let store = ImageStore::builder(dir.path().join("store"))
        .durable(false)
        .open()
        .unwrap();
    let t = Instant::now();
    store.pull(&r, &client).unwrap();
    println!(
        "ImageStore::pull (download, verify, unpack, EROFS): {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
}
