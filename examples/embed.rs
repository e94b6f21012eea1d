//! The smallest program using the SDK: run `echo` in a microVM.
//!
//! ```text
//! cargo run -p hypercontainer-examples --example embed -- oci-archive:busybox.oci.tar
//! ```
//!
//! Exits with the container's exit status, or with Docker's status for a
//! failed start (127, 126, 125; `Error::exit_status`).

use std::process::ExitCode;

use clap::Parser;
use hypercontainer::{sandbox::Error, Sandbox};

/// Runs `echo` in a microVM.
#[derive(Debug, Parser)]
#[command(name = "embed")]
struct Args {
    /// The image, e.g. oci-archive:busybox.oci.tar.
    image: String,
}

fn run(image: &str) -> Result<i32, Box<dyn std::error::Error>> {
    let sandbox = Sandbox::builder()
        .image(image.parse()?)
        .cmd(["echo", "hello from a microVM"])
        .start()?;
    std::io::copy(&mut sandbox.stdout()?, &mut std::io::stdout())?;
    Ok(sandbox.wait()?)
}

fn main() -> ExitCode {
    let status = run(&Args::parse().image).unwrap_or_else(|e| {
        eprintln!("embed: {e}");
        e.downcast_ref::<Error>().map_or(125, Error::exit_status)
    });
    ExitCode::from(status.clamp(0, 255) as u8)
}
