//! `hc-image`: import or pull images into a store, list them, unpack root
//! filesystems, collect garbage. A thin command-line front end to the `hypercontainer-image` crate.

use std::path::PathBuf;
use std::process::ExitCode;

use std::collections::HashMap;
use std::sync::Mutex;

use hypercontainer_image::{
    Client, ClientOptions, ImageSource, ImageStore, LayerProgress, LayerState, Limits, Platform,
    Reference, UnpackOptions, WhiteoutMode,
};

const USAGE: &str = "usage:
  hc-image import <store-dir> <oci|oci-archive|docker-archive> <path> [reference]
  hc-image pull <store-dir> <reference> [--insecure REGISTRY] [--ca FILE]...
  hc-image images <store-dir>
  hc-image unpack <oci|oci-archive|docker-archive> <path> <reference|-> <dest-dir>
  hc-image gc <store-dir>";

fn source(kind: &str, path: &str) -> Result<ImageSource, String> {
    let path = PathBuf::from(path);
    match kind {
        "oci" => Ok(ImageSource::OciLayout { path }),
        "oci-archive" => Ok(ImageSource::OciArchive { path }),
        "docker-archive" => Ok(ImageSource::DockerArchive { path }),
        other => Err(format!("unknown source kind {other:?}")),
    }
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

fn mb(n: u64) -> String {
    format!("{:.1}MB", n as f64 / 1e6)
}

/// Prints each layer's progress on stderr as `docker pull` does, one line
/// per change of state and per tenth of the layer.
fn show_progress() -> impl Fn(&LayerProgress) + Send + Sync {
    let last: Mutex<HashMap<usize, (LayerState, u64)>> = Mutex::default();
    move |p: &LayerProgress| {
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        let tenth = (p.done * 10).checked_div(p.total).unwrap_or(10);
        let state = match p.state {
            LayerState::Resumed { .. } => LayerState::Downloading,
            s => s,
        };
        if last.get(&p.index) == Some(&(state, tenth)) {
            return;
        }
        last.insert(p.index, (state, tenth));
        let id = &p.digest.hex()[..12];
        let what = match p.state {
            LayerState::Waiting => "Waiting".to_string(),
            LayerState::Cached => "Already exists".to_string(),
            LayerState::Downloading => format!("Downloading {}/{}", mb(p.done), mb(p.total)),
            LayerState::Resumed { from } => format!("Resuming from {}", mb(from)),
            LayerState::Shared => "Download shared with another pull".to_string(),
            LayerState::Verified => "Pull complete".to_string(),
        };
        eprintln!("{id}: {what}");
    }
}

fn pull(store: &str, reference: &str, flags: &[&str]) -> Result<(), String> {
    let reference: Reference = reference.parse().map_err(|e| error_chain(&e))?;
    let mut opts = ClientOptions::new().progress(show_progress());
    let mut flags = flags.iter();
    while let Some(f) = flags.next() {
        let Some(v) = flags.next() else {
            return Err(USAGE.into());
        };
        opts = match *f {
            "--insecure" => opts.insecure(*v),
            "--ca" => opts.ca_file(v),
            _ => return Err(USAGE.into()),
        };
    }
    let client = Client::new(opts).map_err(|e| error_chain(&e))?;
    let store = ImageStore::open(store).map_err(|e| error_chain(&e))?;
    let img = store
        .pull(&reference, &client)
        .map_err(|e| error_chain(&e))?;
    if let Some(d) = &img.manifest_digest {
        eprintln!("Digest: {d}");
    }
    eprintln!("Status: pulled {}", reference.familiar());
    println!("{}", img.id);
    Ok(())
}

fn run(args: &[String]) -> Result<(), String> {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        ["import", store, kind, path, rest @ ..] if rest.len() <= 1 => {
            let store = ImageStore::open(store).map_err(|e| error_chain(&e))?;
            let img = store
                .import(&source(kind, path)?, rest.first().copied())
                .map_err(|e| error_chain(&e))?;
            println!("{}", img.id);
            for l in &img.layers {
                let erofs = l
                    .erofs_path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                println!("  {} {erofs}", l.diff_id);
            }
            Ok(())
        }
        ["pull", store, reference, flags @ ..] => pull(store, reference, flags),
        ["images", store] => {
            let store = ImageStore::open(store).map_err(|e| error_chain(&e))?;
            for (r, id) in store.references().map_err(|e| error_chain(&e))? {
                println!("{r}\t{id}");
            }
            Ok(())
        }
        ["unpack", kind, path, reference, dest] => {
            let reference = (*reference != "-").then_some(*reference);
            let img = source(kind, path)?
                .open(reference, &Platform::default(), &Limits::default())
                .map_err(|e| error_chain(&e))?;
            img.unpack_rootfs(dest.as_ref(), &UnpackOptions::new(WhiteoutMode::Apply))
                .map_err(|e| error_chain(&e))?;
            Ok(())
        }
        ["gc", store] => {
            let store = ImageStore::open(store).map_err(|e| error_chain(&e))?;
            let r = store.gc().map_err(|e| error_chain(&e))?;
            println!(
                "removed {} layers, {} scratch entries",
                r.layers_removed.len(),
                r.scratch_removed
            );
            Ok(())
        }
        _ => Err(USAGE.into()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hc-image: {e}");
            ExitCode::FAILURE
        }
    }
}
