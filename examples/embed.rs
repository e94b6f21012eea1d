//! The smallest program using the SDK: run `echo` in a microVM.
//!
//! ```text
//! cargo run -p hypercontainer-examples --example embed -- oci-archive:busybox.oci.tar
//! ```

use clap::Parser;
use hypercontainer::Sandbox;

/// Runs `echo` in a microVM.
#[derive(Debug, Parser)]
#[command(name = "embed")]
struct Args {
    /// The image, e.g. oci-archive:busybox.oci.tar.
    image: String,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let image = Args::parse().image;
    let sandbox = Sandbox::builder()
        .image(image.parse()?)
        .cmd(["echo", "hello from a microVM"])
        .start()?;
    std::io::copy(&mut sandbox.stdout()?, &mut std::io::stdout())?;
    println!("exit status: {}", sandbox.wait()?);
    Ok(())
}
