//! Import + unpack of a larger image (a generated tree of a few thousand
//! files, packed with umoci) against `umoci unpack` and `umoci raw unpack`
//! of the same image. Prints the median ratios at the end.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use hypercontainer_image::{
    ImageSource, ImageStore, Limits, Platform, UnpackOptions, WhiteoutMode,
};

const DIRS: usize = 60;
const FILES_PER_DIR: usize = 50;

static TIMES: Mutex<Vec<(&'static str, Duration)>> = Mutex::new(Vec::new());

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

/// Deterministic pseudo-random bytes (xorshift), so files do not compress to nothing.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Half random, half text-like, like real files.
            if i % 2 == 0 {
                x as u8
            } else {
                b'a' + (x % 26) as u8
            }
        })
        .collect()
}

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    layout: PathBuf,
    files: usize,
    bytes: usize,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let layout = dir.join("layout");
    let img = format!("{}:bench", layout.display());
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &img]));
    let bundle = dir.join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image", &img])
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    let (mut files, mut total) = (0, 0);
    for d in 0..DIRS {
        let sub = rootfs.join(format!("usr/share/d{d:03}/sub"));
        fs::create_dir_all(&sub).unwrap();
        for f in 0..FILES_PER_DIR {
            let len = 64 + ((d * 7919 + f * 104_729) % 12_000);
            let p = sub.join(format!("file{f:03}.dat"));
            fs::write(&p, bytes((d * 1000 + f) as u64, len)).unwrap();
            files += 1;
            total += len;
            if f % 10 == 0 {
                std::os::unix::fs::symlink(
                    format!("file{f:03}.dat"),
                    sub.join(format!("link{f:03}")),
                )
                .unwrap();
                fs::hard_link(&p, sub.join(format!("hard{f:03}"))).unwrap();
            }
        }
    }
    run(Command::new("umoci")
        .args(["repack", "--image", &img])
        .arg(&bundle));
    fs::remove_dir_all(&bundle).unwrap();
    Fixture {
        _tmp: tmp,
        dir,
        layout,
        files,
        bytes: total,
    }
}

fn timed(name: &'static str, iters: u64, mut f: impl FnMut(&Path)) -> Duration {
    let mut total = Duration::ZERO;
    let scratch = std::env::temp_dir().join(format!("hc-bench-{}", std::process::id()));
    for _ in 0..iters {
        let _ = fs::remove_dir_all(&scratch);
        fs::create_dir_all(&scratch).unwrap();
        let t = Instant::now();
        f(&scratch);
        let d = t.elapsed();
        total += d;
        TIMES.lock().unwrap().push((name, d));
        fs::remove_dir_all(&scratch).unwrap();
    }
    total
}

/// Alternates the contenders round by round, so that load from elsewhere on
/// the machine hits them alike; prints the median ratios.
fn interleaved(fx: &Fixture, rounds: usize) {
    let src = ImageSource::OciLayout {
        path: fx.layout.clone(),
    };
    let image_ref = format!("{}:bench", fx.layout.display());
    let mut ours = Vec::new();
    let mut umoci = Vec::new();
    let mut raw = Vec::new();
    for _ in 0..rounds {
        ours.push(timed("interleaved hypercontainer", 1, |scratch| {
            let img = src
                .open(Some("bench"), &Platform::default(), &Limits::default())
                .unwrap();
            img.unpack_rootfs(
                &scratch.join("rootfs"),
                &UnpackOptions::new(WhiteoutMode::Apply),
            )
            .unwrap();
        }));
        umoci.push(timed("interleaved umoci unpack", 1, |scratch| {
            run(Command::new("umoci")
                .args(["unpack", "--image", &image_ref])
                .arg(scratch.join("bundle")));
        }));
        raw.push(timed("interleaved umoci raw unpack", 1, |scratch| {
            run(Command::new("umoci")
                .args(["raw", "unpack", "--image", &image_ref])
                .arg(scratch.join("rootfs")));
        }));
    }
    let med = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64()
    };
    let (o, u, r) = (med(&mut ours), med(&mut umoci), med(&mut raw));
    eprintln!(
        "interleaved, {rounds} rounds, medians: hypercontainer {:.1} ms, umoci unpack {:.1} ms ({:.2}x), umoci raw unpack {:.1} ms ({:.2}x)",
        o * 1e3,
        u * 1e3,
        u / o,
        r * 1e3,
        r / o
    );
}

fn bench(c: &mut Criterion) {
    let fx = fixture();
    eprintln!(
        "image: {} files ({} MiB) in {} dirs, plus symlinks and hardlinks; layout {}",
        fx.files,
        fx.bytes >> 20,
        DIRS,
        fx.dir.display()
    );
    let src = ImageSource::OciLayout {
        path: fx.layout.clone(),
    };
    let image_ref = format!("{}:bench", fx.layout.display());
    let mut g = c.benchmark_group("import_unpack");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.bench_function("hypercontainer_unpack_rootfs", |b| {
        b.iter_custom(|iters| {
            timed("hypercontainer", iters, |scratch| {
                let img = src
                    .open(Some("bench"), &Platform::default(), &Limits::default())
                    .unwrap();
                img.unpack_rootfs(
                    &scratch.join("rootfs"),
                    &UnpackOptions::new(WhiteoutMode::Apply),
                )
                .unwrap();
            })
        })
    });
    g.bench_function("umoci_unpack", |b| {
        b.iter_custom(|iters| {
            timed("umoci unpack", iters, |scratch| {
                run(Command::new("umoci")
                    .args(["unpack", "--image", &image_ref])
                    .arg(scratch.join("bundle")));
            })
        })
    });
    g.bench_function("umoci_raw_unpack", |b| {
        b.iter_custom(|iters| {
            timed("umoci raw unpack", iters, |scratch| {
                run(Command::new("umoci")
                    .args(["raw", "unpack", "--image", &image_ref])
                    .arg(scratch.join("rootfs")));
            })
        })
    });
    g.bench_function("hypercontainer_store_import_with_erofs", |b| {
        b.iter_custom(|iters| {
            timed("store import (+EROFS)", iters, |scratch| {
                let store = ImageStore::open(scratch.join("store")).unwrap();
                store.import(&src, Some("bench")).unwrap();
            })
        })
    });
    g.finish();
    interleaved(&fx, 9);
}

fn median(name: &str) -> Option<Duration> {
    let mut v: Vec<Duration> = TIMES
        .lock()
        .unwrap()
        .iter()
        .filter(|(n, _)| *n == name)
        .map(|(_, d)| *d)
        .collect();
    v.sort();
    v.get(v.len() / 2).copied()
}

fn report() {
    let ours = median("hypercontainer");
    eprintln!("\nmedian times per import+unpack:");
    for name in [
        "hypercontainer",
        "umoci unpack",
        "umoci raw unpack",
        "store import (+EROFS)",
    ] {
        if let Some(m) = median(name) {
            let ratio = ours
                .map(|o| m.as_secs_f64() / o.as_secs_f64())
                .unwrap_or(f64::NAN);
            eprintln!(
                "  {name:<24} {:>9.1} ms   ({ratio:.2}x hypercontainer's time)",
                m.as_secs_f64() * 1e3
            );
        }
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    report();
}
