//! Starts a sandbox whose main process idles, runs two more processes in it
//! with `exec`, then stops it.
//!
//! ```text
//! cargo run -p hypercontainer-examples --example exec -- IMAGE
//! ```
//!
//! IMAGE as for the `run` example (default: `$HYPERCONTAINER_TEST_IMAGE`,
//! the busybox test image, when set). Exits with the main process's exit
//! status, or with Docker's status for a failed start (127, 126, 125;
//! `Error::exit_status`).

use std::io::Read;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use hypercontainer::sandbox::{Error, Exec, Sandbox};

/// Starts a sandbox, runs two more processes in it with exec, stops it.
#[derive(Debug, Parser)]
#[command(name = "exec")]
struct Args {
    /// The image (default: the busybox test image named by
    /// $HYPERCONTAINER_TEST_IMAGE).
    image: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let status = run(args).unwrap_or_else(|e| {
        eprintln!("exec: {e}");
        e.downcast_ref::<Error>().map_or(125, Error::exit_status)
    });
    ExitCode::from(status.clamp(0, 255) as u8)
}

fn run(args: Args) -> Result<i32, Box<dyn std::error::Error>> {
    let image = match args.image {
        Some(i) => i,
        None => match std::env::var("HYPERCONTAINER_TEST_IMAGE") {
            Ok(p) => format!("oci-archive:{p}:test"),
            Err(_) => return Err("usage: exec IMAGE".into()),
        },
    };
    let sandbox = Sandbox::builder()
        .image(image.parse()?)
        .cmd(["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"])
        .start()?;
    println!("sandbox {} started", sandbox.id());

    for argv in [
        vec!["uname", "-srm"],
        vec![
            "sh",
            "-c",
            "echo \"$(hostname): $(ps | wc -l) lines of ps\"",
        ],
    ] {
        let p = sandbox.exec(Exec::new(argv.clone()))?;
        let mut out = String::new();
        p.stdout()?.read_to_string(&mut out)?;
        let status = p.wait()?;
        print!("exec {argv:?} -> {status}: {out}");
    }

    let status = sandbox.stop(Duration::from_secs(5))?;
    println!("stopped: main process exited with {status}");
    let t = sandbox.boot_timings();
    println!(
        "started in {:?} (VM built {:?}, agent connected {:?})",
        t.process_started.unwrap_or_default(),
        t.vm_built,
        t.agent_connected
    );
    Ok(status)
}
