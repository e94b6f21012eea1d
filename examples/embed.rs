//! The smallest program using the SDK: run `echo` in a microVM.
//!
//! ```text
//! cargo run -p hypercontainer-examples --example embed -- oci-archive:busybox.oci.tar
//! ```

use hypercontainer::Sandbox;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let image = std::env::args().nth(1).ok_or("usage: embed IMAGE")?;
    let sandbox = Sandbox::builder()
        .image(image.parse()?)
        .cmd(["echo", "hello from a microVM"])
        .start()?;
    std::io::copy(&mut sandbox.stdout()?, &mut std::io::stdout())?;
    println!("exit status: {}", sandbox.wait()?);
    Ok(())
}
