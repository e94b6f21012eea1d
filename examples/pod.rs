//! A pod of two containers: a web server, and a client that fetches its
//! page on `localhost`, then each removed while the pod runs.
//!
//! ```text
//! cargo run -p hypercontainer-examples --example pod -- oci-archive:busybox.oci.tar:test
//! ```
//!
//! The image needs busybox's `httpd` and `wget`. Exits with the client's
//! exit status.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use hypercontainer::{ContainerSpec, ImageRef, Pod};

/// Runs a server and a client in one microVM.
#[derive(Debug, Parser)]
#[command(name = "pod")]
struct Args {
    /// The image, e.g. oci-archive:busybox.oci.tar:test.
    image: String,
}

const SERVE: &str = "mkdir -p /tmp/www && echo hello from the pod > /tmp/www/index.html && \
                     exec httpd -f -p 8080 -h /tmp/www";
const FETCH: &str = "for i in 1 2 3 4 5; do wget -qO- http://localhost:8080/ && exit 0; \
                     sleep 1; done; exit 1";

fn run(image: ImageRef) -> Result<i32, Box<dyn std::error::Error>> {
    let t0 = Instant::now();
    let pod = Pod::builder()
        .hostname("example")
        .preload(image.clone())
        .start()?;
    eprintln!("pod {} up in {:?}", &pod.id()[..12], t0.elapsed());
    let spec = |script: &str| {
        ContainerSpec::new(image.clone())
            .user("root")
            .cmd(["sh", "-c", script])
    };
    let server = pod.create(spec(SERVE).name("server"))?;
    server.start()?;
    let t = Instant::now();
    let client = pod.create(spec(FETCH).name("client"))?;
    client.start()?;
    eprintln!("client container started in {:?}", t.elapsed());
    std::io::copy(&mut client.stdout()?, &mut std::io::stdout())?;
    let status = client.wait()?;
    let stats = server.stats()?;
    eprintln!(
        "server: {} KiB of memory, {} pids; guest: {} of {} KiB available",
        stats.memory_bytes / 1024,
        stats.pids,
        stats.guest_memory_available_kib,
        stats.guest_memory_total_kib
    );
    client.remove()?;
    server.stop(Duration::from_secs(5))?;
    server.remove()?;
    Ok(status)
}

fn main() -> ExitCode {
    let status = Args::parse()
        .image
        .parse()
        .map_err(Into::into)
        .and_then(run)
        .unwrap_or_else(|e| {
            eprintln!("pod: {e}");
            125
        });
    ExitCode::from(status.clamp(0, 255) as u8)
}
