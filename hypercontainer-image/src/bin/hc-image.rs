//! `hc-image`: import images into a store, unpack root filesystems, collect
//! garbage. A thin command-line front end to the `hypercontainer-image` crate.

use std::path::PathBuf;
use std::process::ExitCode;

use hypercontainer_image::{
    ImageSource, ImageStore, Limits, Platform, UnpackOptions, WhiteoutMode,
};

const USAGE: &str = "usage:
  hc-image import <store-dir> <oci|oci-archive|docker-archive> <path> [reference]
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
