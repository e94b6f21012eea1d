//! Pulls from a real registry (Debian's `docker-registry`, distribution 2.8)
//! started on loopback by each test and seeded with `skopeo copy`; a proxy
//! in the test cuts, corrupts and logs traffic and plays a Bearer token
//! service. Without the registry binary the tests print why and pass.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use common::registry::*;
use common::*;
use hypercontainer_image::{
    registry::PullTarget, Client, ClientOptions, Credentials, Digest, ImageStore, LayerProgress,
    LayerState, Platform, Reference, RegistryError, StoreError,
};

macro_rules! need_registry {
    () => {
        if let Some(why) = unavailable() {
            eprintln!("skipping: {why}");
            return;
        }
    };
}

/// The three-layer test image, built once per test binary.
fn image() -> &'static TestImage {
    static IMAGE: OnceLock<TestImage> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        build_test_image(&dir)
    })
}

/// (digest, size) of the test image's layers, from its layout.
fn layers() -> Vec<(String, u64)> {
    let t = image();
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.layout.join("index.json")).unwrap()).unwrap();
    let m = &index["manifests"][0]["digest"].as_str().unwrap()[7..];
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.layout.join("blobs/sha256").join(m)).unwrap())
            .unwrap();
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["digest"].as_str().unwrap().to_owned(),
                l["size"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn store(dir: &Path) -> ImageStore {
    ImageStore::builder(dir.join("store"))
        .erofs(None)
        .durable(false)
        .open()
        .unwrap()
}

fn anonymous() -> ClientOptions {
    ClientOptions::new().auth_files(Vec::new())
}

fn reference(host: &str, repo: &str) -> Reference {
    format!("{host}/{repo}").parse().unwrap()
}

/// A started registry seeded with the test image as `test/img:t`.
fn seeded(dir: &Path) -> Registry {
    let reg = Registry::start(dir, None);
    let src = format!(
        "oci-archive:{}:{}",
        image().oci_archive.display(),
        image().tag
    );
    reg.seed(&src, "test/img:t", &[]);
    reg
}

/// Records every progress report.
fn recorder() -> (ClientOptions, Arc<Mutex<Vec<LayerProgress>>>) {
    let log: Arc<Mutex<Vec<LayerProgress>>> = Arc::default();
    let l = log.clone();
    let opts = anonymous().progress(move |p| l.lock().unwrap().push(p.clone()));
    (opts, log)
}

fn final_states(log: &[LayerProgress]) -> Vec<LayerState> {
    let mut by_index = std::collections::BTreeMap::new();
    for p in log {
        by_index.insert(p.index, p.state);
    }
    by_index.into_values().collect()
}

#[test]
fn an_anonymous_pull_imports_like_the_oci_archive_and_a_second_moves_no_layer_bytes() {
    need_registry!();
    let dir = tempfile::tempdir().unwrap();
    let reg = seeded(dir.path());
    let proxy = Proxy::start(reg.addr, Mode::Pass);
    let s = store(dir.path());
    let (opts, log) = recorder();
    let client = Client::new(opts).unwrap();
    let r = reference(&proxy.host(), "test/img:t");
    let pulled = s.pull(&r, &client).unwrap();

    let local = store(&dir.path().join("local"))
        .import(
            &hypercontainer_image::ImageSource::OciArchive {
                path: image().oci_archive.clone(),
            },
            Some(image().tag),
        )
        .unwrap();
    assert_eq!(pulled.id, local.id, "the image ID is the config digest");
    assert_eq!(
        pulled.layers.iter().map(|l| &l.diff_id).collect::<Vec<_>>(),
        local.layers.iter().map(|l| &l.diff_id).collect::<Vec<_>>()
    );
    assert_eq!(
        snapshot(pulled.layers[0].tree_path.as_ref().unwrap()),
        snapshot(local.layers[0].tree_path.as_ref().unwrap())
    );
    let seen = proxy.take_seen();
    for (d, size) in layers() {
        assert_eq!(Proxy::blob_bytes(&seen, &d), size, "{d} fetched once");
    }
    assert!(final_states(&log.lock().unwrap())
        .iter()
        .all(|s| *s == LayerState::Verified));
    // The store remembers what the reference named, without asking the registry.
    assert_eq!(s.lookup(&r).unwrap().map(|i| i.id), Some(pulled.id.clone()));
    assert_eq!(
        s.references().unwrap(),
        vec![(r.to_string(), pulled.id.clone())]
    );
    // Downloaded blobs are dropped once the store holds the layers.
    assert_eq!(
        names(&s.root().join("downloads/blobs")),
        Vec::<String>::new()
    );

    log.lock().unwrap().clear();
    let again = s.pull(&r, &client).unwrap();
    assert_eq!(again.id, pulled.id);
    let seen = proxy.take_seen();
    for (d, _) in layers() {
        assert_eq!(Proxy::blob_bytes(&seen, &d), 0, "{d} not fetched again");
    }
    assert!(final_states(&log.lock().unwrap())
        .iter()
        .all(|s| *s == LayerState::Cached));
}

#[test]
fn basic_auth_uses_the_auth_file_and_says_what_to_do_without_it() {
    need_registry!();
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(&htpasswd, format!("{HTPASSWD_LINE}\n")).unwrap();
    let reg = Registry::start(dir.path(), Some(&htpasswd));
    let src = format!(
        "oci-archive:{}:{}",
        image().oci_archive.display(),
        image().tag
    );
    let creds = format!("--dest-creds={HTPASSWD_USER}:{HTPASSWD_PASSWORD}");
    reg.seed(&src, "test/img:t", &[&creds]);
    let r = reference(&reg.host(), "test/img:t");
    let s = store(dir.path());

    let e = s.pull(&r, &Client::new(anonymous()).unwrap()).unwrap_err();
    assert!(
        matches!(e, StoreError::Registry(RegistryError::AuthRequired { .. })),
        "{e:?}"
    );
    let msg = error_chain(&e);
    assert!(
        msg.contains("podman login") && msg.contains("REGISTRY_AUTH_FILE"),
        "{msg}"
    );

    let wrong = auth_file(dir.path(), &reg.host(), HTPASSWD_USER, "wrong");
    let e = s
        .pull(
            &r,
            &Client::new(ClientOptions::new().auth_files(vec![wrong])).unwrap(),
        )
        .unwrap_err();
    assert!(
        matches!(e, StoreError::Registry(RegistryError::AuthRefused { ref username, .. }) if username == HTPASSWD_USER),
        "{e:?}"
    );

    let good = auth_file(dir.path(), &reg.host(), HTPASSWD_USER, HTPASSWD_PASSWORD);
    let client = Client::new(ClientOptions::new().auth_files(vec![good])).unwrap();
    let img = s.pull(&r, &client).unwrap();
    assert_eq!(img.layers.len(), 3);
}

#[test]
fn tls_with_a_given_ca_and_basic_auth() {
    need_registry!();
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(&htpasswd, format!("{HTPASSWD_LINE}\n")).unwrap();
    let reg = Registry::start_with(dir.path(), Some(&htpasswd), Some(&certs));
    let src = format!(
        "oci-archive:{}:{}",
        image().oci_archive.display(),
        image().tag
    );
    let creds = format!("--dest-creds={HTPASSWD_USER}:{HTPASSWD_PASSWORD}");
    reg.seed(&src, "test/img:t", &[&creds]);
    let r = reference(&reg.host(), "test/img:t");
    let s = store(dir.path());
    let login = || anonymous().credentials(Credentials::new(HTPASSWD_USER, HTPASSWD_PASSWORD));

    // Loopback may fall back to plain HTTP, but a TLS-only registry with an
    // unknown CA is reported as a TLS failure.
    let e = s.pull(&r, &Client::new(login()).unwrap()).unwrap_err();
    assert!(
        matches!(e, StoreError::Registry(RegistryError::Tls { .. })),
        "{e:?}"
    );
    assert!(error_chain(&e).contains("ca_file"), "{e}");

    let img = s
        .pull(&r, &Client::new(login().ca_file(&certs.ca)).unwrap())
        .unwrap();
    assert_eq!(img.layers.len(), 3);
    let e = store(&dir.path().join("2"))
        .pull(
            &r,
            &Client::new(
                anonymous()
                    .ca_file(&certs.ca)
                    .credentials(Credentials::new(HTPASSWD_USER, "nope")),
            )
            .unwrap(),
        )
        .unwrap_err();
    assert!(
        matches!(e, StoreError::Registry(RegistryError::AuthRefused { .. })),
        "{e:?}"
    );
}

#[test]
fn bearer_tokens_come_from_the_challenge_realm() {
    need_registry!();
    let dir = tempfile::tempdir().unwrap();
    let reg = seeded(dir.path());
    let proxy = Proxy::start(
        reg.addr,
        Mode::Bearer {
            token: "tok-123".into(),
            credentials: Some("alice:pw".into()),
        },
    );
    let r = reference(&proxy.host(), "test/img:t");
    let s = store(dir.path());
    let e = s.pull(&r, &Client::new(anonymous()).unwrap()).unwrap_err();
    assert!(
        matches!(e, StoreError::Registry(RegistryError::AuthRequired { .. })),
        "{e:?}"
    );
    let client = Client::new(anonymous().credentials(Credentials::new("alice", "pw"))).unwrap();
    let img = s.pull(&r, &client).unwrap();
    assert_eq!(img.layers.len(), 3);
    let seen = proxy.take_seen();
    let tokens: Vec<_> = seen
        .iter()
        .filter(|s| s.path.starts_with("/token"))
        .collect();
    assert!(!tokens.is_empty());
    assert!(
        tokens[0]
            .path
            .contains("scope=repository%3Atest%2Fimg%3Apull"),
        "{:?}",
        tokens[0]
    );
    assert!(tokens[0].path.contains("service=test-registry"));
    assert!(seen
        .iter()
        .filter(|s| s.path.contains("/blobs/"))
        .all(|s| s.authorization.as_deref() == Some("Bearer tok-123")));
}

/// An OCI layout whose tag `multi` is an index of the test image for
/// linux/amd64 and a copy of it (another config) for linux/arm64.
fn multi_platform_layout(dir: &Path) -> PathBuf {
    let t = image();
    let out = dir.join("multi");
    run(std::process::Command::new("cp")
        .arg("-a")
        .arg(&t.layout)
        .arg(&out));
    let blobs = out.join("blobs/sha256");
    let read = |d: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(blobs.join(&d[7..])).unwrap()).unwrap()
    };
    let put = |v: &serde_json::Value| -> (String, u64) {
        let data = serde_json::to_vec(v).unwrap();
        let d = sha256(&data);
        std::fs::write(blobs.join(&d[7..]), &data).unwrap();
        (d, data.len() as u64)
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    let amd = index["manifests"][0].clone();
    let mut manifest = read(amd["digest"].as_str().unwrap());
    let mut config = read(manifest["config"]["digest"].as_str().unwrap());
    config["architecture"] = "arm64".into();
    let (cd, cs) = put(&config);
    manifest["config"]["digest"] = cd.into();
    manifest["config"]["size"] = cs.into();
    let (md, ms) = put(&manifest);
    let entry = |d: &serde_json::Value, s: &serde_json::Value, arch: &str| {
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": d, "size": s,
            "platform": {"os": "linux", "architecture": arch},
        })
    };
    let list = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            entry(&md.clone().into(), &ms.into(), "arm64"),
            entry(&amd["digest"], &amd["size"], "amd64"),
        ],
    });
    let (ld, ls) = put(&list);
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": ld, "size": ls,
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }],
    });
    std::fs::write(out.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    out
}

#[test]
fn indexes_and_manifest_lists_give_the_wanted_platform() {
    need_registry!();
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::start(dir.path(), None);
    let layout = multi_platform_layout(dir.path());
    let src = format!("oci:{}:multi", layout.display());
    reg.seed(&src, "test/multi:oci", &["--all"]);
    reg.seed(&src, "test/multi:docker", &["--all", "--format", "v2s2"]);
    let client = Client::new(anonymous()).unwrap();
    let amd64 = store(dir.path())
        .pull(&reference(&reg.host(), "test/multi:oci"), &client)
        .unwrap();
    let local = store(&dir.path().join("local"))
        .import(
            &hypercontainer_image::ImageSource::OciLayout {
                path: image().layout.clone(),
            },
            Some(image().tag),
        )
        .unwrap();
    assert_eq!(amd64.id, local.id, "linux/amd64 is picked by default");
    let listed = store(&dir.path().join("s2"))
        .pull(&reference(&reg.host(), "test/multi:docker"), &client)
        .unwrap();
    assert_eq!(listed.config.architecture().to_string(), "amd64");

    let arm = ImageStore::builder(dir.path().join("arm"))
        .erofs(None)
        .durable(false)
        .platform(Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
        })
        .open()
        .unwrap();
    let img = arm
        .pull(&reference(&reg.host(), "test/multi:docker"), &client)
        .unwrap();
    assert_eq!(img.config.architecture().to_string(), "arm64");
    assert_ne!(img.id, amd64.id);

    let s390 = ImageStore::builder(dir.path().join("s390"))
        .erofs(None)
        .platform(Platform {
            os: "linux".into(),
            architecture: "s390x".into(),
        })
        .open()
        .unwrap();
    let e = s390
        .pull(&reference(&reg.host(), "test/multi:oci"), &client)
        .unwrap_err();
    match e {
        StoreError::Registry(RegistryError::NoPlatform { available, .. }) => {
            assert!(available.contains("linux/amd64") && available.contains("linux/arm64"))
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn a_digest_pins_the_manifest_and_other_bytes_are_refused() {
    need_registry!();
    let dir = tempfile::tempdir().unwrap();
    let reg = seeded(dir.path());
    let proxy = Proxy::start(reg.addr, Mode::Pass);
    let client = Client::new(anonymous()).unwrap();
    let s = store(dir.path());
    let tagged = s
        .pull(&reference(&proxy.host(), "test/img:t"), &client)
        .unwrap();
    let digest = tagged.manifest_digest.clone().unwrap();
    let pinned = reference(&proxy.host(), &format!("test/img@{digest}"));
    let img = store(&dir.path().join("2")).pull(&pinned, &client).unwrap();
    assert_eq!(img.id, tagged.id);

    let unknown = reference(
        &proxy.host(),
        &format!("test/img@{}", Digest::sha256_of(b"no such manifest")),
    );
    let e = s.pull(&unknown, &client).unwrap_err();
    assert!(
        matches!(e, StoreError::Registry(RegistryError::NotFound { .. })),
        "{e:?}"
    );

    proxy.set_mode(Mode::CorruptManifests);
    let fresh = store(&dir.path().join("3"));
    let e = fresh.pull(&pinned, &client).unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::Registry(RegistryError::ManifestDigest { .. })
        ),
        "{e:?}"
    );
    // Unpinned, Docker-Content-Digest catches it too.
    let e = fresh
        .pull(&reference(&proxy.host(), "test/img:t"), &client)
        .unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::Registry(RegistryError::ManifestDigest { .. })
        ),
        "{e:?}"
    );
    assert!(fresh.list().unwrap().is_empty());
}

#[test]
fn a_corrupt_layer_is_refused_before_anything_enters_the_store() {
    need_registry!();
    let dir = tempfile::tempdir().unwrap();
    let reg = seeded(dir.path());
    let proxy = Proxy::start(reg.addr, Mode::CorruptBlobs { min: 100_000 });
    let s = store(dir.path());
    let e = s
        .pull(
            &reference(&proxy.host(), "test/img:t"),
            &Client::new(anonymous()).unwrap(),
        )
        .unwrap_err();
    assert!(
        matches!(e, StoreError::Registry(RegistryError::Verify { .. })),
        "{e:?}"
    );
    assert!(s.list().unwrap().is_empty());
    assert_eq!(names(&s.root().join("layers/sha256")), Vec::<String>::new());
    let big = layers().into_iter().max_by_key(|l| l.1).unwrap().0;
    let name = big.replace(':', "-");
    assert!(!s.root().join("downloads/partial").join(&name).exists());
    assert!(!s.root().join("downloads/blobs").join(&name).exists());
    // The next pull over a clean line fetches it whole again.
    proxy.set_mode(Mode::Pass);
    s.pull(
        &reference(&proxy.host(), "test/img:t"),
        &Client::new(anonymous()).unwrap(),
    )
    .unwrap();
}

#[test]
fn a_download_cut_mid_layer_resumes_with_range() {
    need_registry!();
    let dir = tempfile::tempdir().unwrap();
    let reg = seeded(dir.path());
    let proxy = Proxy::start(reg.addr, Mode::CutOnce { after: 100_000 });
    let s = store(dir.path());
    let (opts, log) = recorder();
    let img = s
        .pull(
            &reference(&proxy.host(), "test/img:t"),
            &Client::new(opts).unwrap(),
        )
        .unwrap();
    assert_eq!(img.layers.len(), 3);
    let seen = proxy.take_seen();
    let big = layers().into_iter().max_by_key(|l| l.1).unwrap();
    let gets: Vec<_> = seen
        .iter()
        .filter(|s| s.path.ends_with(&format!("/blobs/{}", big.0)))
        .collect();
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(gets[0].body_bytes, 100_000);
    assert_eq!(gets[1].range.as_deref(), Some("bytes=100000-"));
    assert_eq!(gets[1].body_bytes, big.1 - 100_000, "only the rest moved");
    assert!(log
        .lock()
        .unwrap()
        .iter()
        .any(|p| p.state == LayerState::Resumed { from: 100_000 }));
}

#[test]
fn a_partial_download_left_by_a_failed_pull_is_resumed_by_the_next() {
    need_registry!();
    let dir = tempfile::tempdir().unwrap();
    let reg = seeded(dir.path());
    let proxy = Proxy::start(reg.addr, Mode::CutOnce { after: 100_000 });
    let s = store(dir.path());
    let r = reference(&proxy.host(), "test/img:t");
    let e = s
        .pull(&r, &Client::new(anonymous().retries(0)).unwrap())
        .unwrap_err();
    assert!(
        matches!(e, StoreError::Registry(RegistryError::Unreachable { .. })),
        "{e:?}"
    );
    s.pull(&r, &Client::new(anonymous()).unwrap()).unwrap();
    let big = layers().into_iter().max_by_key(|l| l.1).unwrap();
    let seen = proxy.take_seen();
    let last = seen
        .iter()
        .rfind(|s| s.path.ends_with(&format!("/blobs/{}", big.0)))
        .unwrap();
    assert_eq!(last.range.as_deref(), Some("bytes=100000-"));
}

#[test]
fn concurrent_pulls_of_one_image_share_one_download() {
    need_registry!();
    let dir = tempfile::tempdir().unwrap();
    let reg = seeded(dir.path());
    let proxy = Proxy::start(reg.addr, Mode::Pass);
    let s = store(dir.path());
    let r = reference(&proxy.host(), "test/img:t");
    let client = Client::new(anonymous()).unwrap();
    let ids: Vec<Digest> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..3)
            .map(|_| {
                let s = s.clone();
                let (r, client) = (&r, &client);
                sc.spawn(move || s.pull(r, client).unwrap().id)
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(ids.windows(2).all(|w| w[0] == w[1]));
    let seen = proxy.take_seen();
    for (d, size) in layers() {
        assert_eq!(Proxy::blob_bytes(&seen, &d), size, "{d} downloaded once");
    }
}

#[test]
fn pull_layout_writes_an_oci_layout_skopeo_can_read() {
    need_registry!();
    let dir = tempfile::tempdir().unwrap();
    let reg = seeded(dir.path());
    let layout = dir.path().join("layout");
    std::fs::create_dir(&layout).unwrap();
    let client = Client::new(anonymous()).unwrap();
    let pulled = client
        .pull_layout(
            &reference(&reg.host(), "test/img:t"),
            &PullTarget {
                layout: &layout,
                downloads: &dir.path().join("downloads"),
                platform: &Platform::default(),
                limits: &Default::default(),
                have_layer: &|_| false,
            },
        )
        .unwrap();
    assert_eq!(pulled.fetched.len(), 3);
    assert_eq!(pulled.resolved.digest(), Some(&pulled.manifest_digest));
    let out = run(std::process::Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(format!("oci:{}", layout.display())));
    assert!(out.contains(&pulled.config_digest.to_string()));
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[test]
fn hc_image_pulls_with_docker_like_progress_and_lists_images() {
    need_registry!();
    let dir = tempfile::tempdir().unwrap();
    let reg = seeded(dir.path());
    let store_dir = dir.path().join("store");
    let bin = env!("CARGO_BIN_EXE_hc-image");
    let out = std::process::Command::new(bin)
        .arg("pull")
        .arg(&store_dir)
        .arg(format!("{}/test/img:t", reg.host()))
        .env("REGISTRY_AUTH_FILE", dir.path().join("none.json"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("Pull complete"), "{stderr}");
    assert!(stderr.contains("Digest: sha256:"), "{stderr}");
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let out = run(std::process::Command::new(bin)
        .arg("images")
        .arg(&store_dir));
    assert_eq!(out, format!("{}/test/img:t\t{id}\n", reg.host()));
}

#[test]
fn a_layer_over_the_size_cap_is_refused_before_downloading() {
    need_registry!();
    let dir = tempfile::tempdir().unwrap();
    let reg = seeded(dir.path());
    let proxy = Proxy::start(reg.addr, Mode::Pass);
    let s = ImageStore::builder(dir.path().join("store"))
        .erofs(None)
        .limits(hypercontainer_image::Limits {
            max_layer_bytes: 10_000,
            ..Default::default()
        })
        .open()
        .unwrap();
    let e = s
        .pull(
            &reference(&proxy.host(), "test/img:t"),
            &Client::new(anonymous()).unwrap(),
        )
        .unwrap_err();
    assert!(
        matches!(e, StoreError::Registry(RegistryError::Manifest { .. })),
        "{e:?}"
    );
    let seen = proxy.take_seen();
    for (d, _) in layers() {
        assert_eq!(Proxy::blob_bytes(&seen, &d), 0);
    }
}

#[test]
fn concurrent_pulls_from_two_processes_share_one_download() {
    need_registry!();
    let dir = tempfile::tempdir().unwrap();
    let reg = seeded(dir.path());
    let proxy = Proxy::start(reg.addr, Mode::Pass);
    let store_dir = dir.path().join("store");
    let bin = env!("CARGO_BIN_EXE_hc-image");
    let spawn = || {
        std::process::Command::new(bin)
            .arg("pull")
            .arg(&store_dir)
            .arg(format!("{}/test/img:t", proxy.host()))
            .env("REGISTRY_AUTH_FILE", dir.path().join("none.json"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    assert_eq!(a.stdout, b.stdout, "the same image ID");
    let seen = proxy.take_seen();
    for (d, size) in layers() {
        assert_eq!(Proxy::blob_bytes(&seen, &d), size, "{d} downloaded once");
    }
}

#[test]
fn gc_clears_what_failed_pulls_left_in_downloads() {
    need_registry!();
    let dir = tempfile::tempdir().unwrap();
    let reg = seeded(dir.path());
    let proxy = Proxy::start(reg.addr, Mode::CutOnce { after: 100_000 });
    let s = store(dir.path());
    let r = reference(&proxy.host(), "test/img:t");
    s.pull(&r, &Client::new(anonymous().retries(0)).unwrap())
        .unwrap_err();
    assert!(!names(&s.root().join("downloads/partial")).is_empty());
    s.gc().unwrap();
    for sub in ["partial", "blobs", "locks"] {
        assert_eq!(
            names(&s.root().join("downloads").join(sub)),
            Vec::<String>::new()
        );
    }
}
