//! Project automation: `cargo xtask <command>`.
//!
//! - `deps`: installs the missing system packages.
//! - `kernel`: builds the guest kernel into the cache (cached by key).
//! - `agent`: builds the static in-VM agent and installs it into the cache.
//! - `testhost-assets`: fetches the emulated KVM host's kernel and modules.
//! - `test`: the whole test suite (what CI runs).
//! - `run [-- <example> [args]]`: the main job, on hardware KVM or inside
//!   the emulated KVM host.
//! - `whole-vm`: only the whole-VM tests.
//! - `fuzz [SECONDS]`: builds the fuzz targets and runs each briefly.
//! - `bench [NAME...]`: the criterion benchmarks, where a guest can boot.

mod agent;
mod assets;
mod bench;
mod ci;
mod deps;
mod fuzz;
mod kernel;
mod mainjob;
mod run;
mod util;
mod wholevm;

const USAGE: &str = "usage: cargo xtask <command>

commands:
  deps              install missing system packages (apt)
  kernel            build the guest kernel into the cache
  agent             build the static guest agent and install it into the cache
  testhost-assets   fetch the emulated KVM host's kernel and kvm modules
  test              run every check and test (what CI runs)
  run [-- EXAMPLE [ARGS]]
                    run an example (default: the run example on the
                    busybox test image; guest-boot-demo: the guest kernel
                    with a busybox init under QEMU microvm), inside the
                    emulated KVM host when this machine has no hardware KVM
  whole-vm [TARGET...]
                    run only the whole-VM tests (only the named
                    whole_vm_* test targets, when given)
  fuzz [SECONDS]    build all fuzz targets and run each for SECONDS (20)
  bench [NAME...] [-- ARGS]
                    run the criterion benchmarks (or the named ones) where
                    a guest can boot, inside the emulated KVM host when
                    this machine has no hardware KVM; ARGS go to each
                    benchmark (e.g. a criterion filter)";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = args.get(1..).unwrap_or_default();
    let res = match args.first().map(String::as_str) {
        Some("deps") => deps::cmd(),
        Some("kernel") => kernel::cmd(),
        Some("agent") => agent::cmd(),
        Some("testhost-assets") => assets::cmd(),
        Some("test") => ci::cmd(),
        Some("whole-vm") => ci::whole_vm_cmd(rest),
        Some("run") => run::cmd(rest),
        Some("fuzz") => fuzz::cmd(rest),
        Some("bench") => bench::cmd(rest),
        Some("help" | "-h" | "--help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(e) = res {
        eprintln!("error: {}", util::report(&e));
        std::process::exit(1);
    }
}
