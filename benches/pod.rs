//! Containers added to a running pod, against the cold start of a
//! one-container sandbox, in the same (emulated) host.
//!
//! Measured, `HYPERCONTAINER_BENCH_ROUNDS` rounds (default 10), in turn so
//! that drift of the emulated host hits each alike, all running
//! `echo hi` in the busybox test image, from the call to the first byte of
//! stdout on the host:
//! - `cold`: `Sandbox::builder()...start()` (boot, agent, root, process);
//! - `warm`: `pod.create(spec)` + `Container::start` in a running pod that
//!   preloaded the image (its layers are EROFS disks already mounted);
//! - `late`: the same for an image the pod did not preload, imported
//!   before the first round (its layers are virtio-fs shares; the first
//!   container of it adds the shares, the rounds measure later ones).
//!
//! Then the memory each extra container costs the guest: 5 containers
//! running `sleep`, the guest's `MemAvailable` before and after, and the
//! containers' own cgroup memory (`memory.current`).
//!
//! Prints one summary line per comparison. Needs hardware KVM (`cargo
//! xtask bench pod` runs it inside the emulated host elsewhere).

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hypercontainer::container::ContainerSpec;
use hypercontainer::host::{detect_kvm, KvmKind};
use hypercontainer::pod::Pod;
use hypercontainer::sandbox::{ImageRef, ImageStore, Sandbox};

fn image_archive() -> PathBuf {
    if let Some(p) = std::env::var_os("HYPERCONTAINER_TEST_IMAGE").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    hypercontainer::kernel::cache_dir()
        .expect("a cache directory")
        .join("test-images/busybox-v2.oci.tar")
}

fn busybox() -> ImageRef {
    format!("oci-archive:{}:test", image_archive().display())
        .parse()
        .unwrap()
}

/// Reads until the first byte; returns when it came.
fn first_byte(mut r: impl Read) -> Instant {
    let mut b = [0u8; 1];
    r.read_exact(&mut b).expect("a first byte of output");
    Instant::now()
}

fn cold(store: &ImageStore) -> Duration {
    let t0 = Instant::now();
    let s = Sandbox::builder()
        .image(busybox())
        .image_store(store.clone())
        .cmd(["echo", "hi"])
        .boot_timeout(Duration::from_secs(120))
        .start()
        .unwrap_or_else(|e| panic!("start: {e}"));
    let t = first_byte(s.stdout().unwrap()) - t0;
    assert_eq!(s.wait().unwrap(), 0);
    t
}

fn warm(pod: &Pod, image: ImageRef) -> Duration {
    let t0 = Instant::now();
    let c = pod
        .create(ContainerSpec::new(image).cmd(["echo", "hi"]))
        .unwrap_or_else(|e| panic!("create: {e}"));
    c.start().unwrap_or_else(|e| panic!("start: {e}"));
    let t = first_byte(c.stdout().unwrap()) - t0;
    assert_eq!(c.wait().unwrap(), 0);
    c.remove().unwrap();
    t
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    // One job of `cargo xtask bench`: no groups of its own.
    hypercontainer_benches::Groups::declare(&[]);
    if detect_kvm() != KvmKind::Hardware {
        eprintln!("this host's KVM cannot boot Linux: nothing to measure");
        return;
    }
    let rounds: usize = std::env::var("HYPERCONTAINER_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::builder(dir.path().join("store"))
        .keep_trees(true)
        .open()
        .unwrap();
    let layout = dir.path().join("second");
    hypercontainer_image::testimage::write_derived_layout(
        &image_archive(),
        &layout,
        &[("etc/second-image", b"second\n")],
        &["echo", "hi"],
    )
    .unwrap();
    let second: ImageRef = format!("oci:{}:test", layout.display()).parse().unwrap();
    let pod = Pod::builder()
        .image_store(store.clone())
        .preload(busybox())
        .boot_timeout(Duration::from_secs(120))
        .start()
        .unwrap_or_else(|e| panic!("pod: {e}"));
    // Unmeasured: the first sandbox in a fresh host, the first container
    // (mounts the layers), the first of the late image (imports it, adds
    // its shares).
    let _ = cold(&store);
    let _ = warm(&pod, busybox());
    let _ = warm(&pod, second.clone());

    let (mut c, mut w, mut l) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        c.push(cold(&store));
        w.push(warm(&pod, busybox()));
        l.push(warm(&pod, second.clone()));
    }
    let (c, w, l) = (median(c), median(w), median(l));
    let ratio = |a: Duration| a.as_secs_f64() / c.as_secs_f64();
    println!(
        "summary: add and start a container in a running pod (first stdout byte) {} vs cold \
         start of a one-container sandbox {}: ratio {:.3} ({rounds} samples each)",
        ms(w),
        ms(c),
        ratio(w)
    );
    println!(
        "summary: the same from an image imported after boot (virtio-fs layers) {} vs cold {}: \
         ratio {:.3} ({rounds} samples each)",
        ms(l),
        ms(c),
        ratio(l)
    );

    const N: usize = 5;
    let before = pod.stats().unwrap().guest_memory_available_kib;
    let running: Vec<_> = (0..N)
        .map(|_| {
            let c = pod
                .create(ContainerSpec::new(busybox()).cmd(["sleep", "100000"]))
                .unwrap();
            c.start().unwrap();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let after = pod.stats().unwrap().guest_memory_available_kib;
    let cgroup_kib: Vec<u64> = running
        .iter()
        .map(|c| c.stats().unwrap().memory_bytes / 1024)
        .collect();
    println!(
        "summary: guest memory per extra running container: {} KiB of MemAvailable ({N} \
         containers, {before} -> {after} KiB); cgroup memory.current per container {:?} KiB",
        before.saturating_sub(after) / N as u64,
        cgroup_kib
    );
    for c in &running {
        c.remove().unwrap();
    }
}
