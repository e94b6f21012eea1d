//! Boots a Linux kernel (and optionally an initramfs) and streams its
//! console to stdout.
//!
//! ```text
//! cargo run -p hypercontainer-examples --example boot -- \
//!     --kernel vmlinux [--initrd initramfs.cpio] [--cmdline "..."] \
//!     [--cpus N] [--memory MIB] [--timeout SECS] [--report] [--timestamps]
//! ```
//!
//! `--kernel` defaults to the SDK's cached kernel (`cargo xtask kernel`).
//! `--report` prints, on stderr, the host-side setup time (from `build()`
//! to the first `KVM_RUN`) and the process's resident memory outside guest
//! RAM. `--timestamps` starts every console line with the host time since
//! `build()` was called, to see where a boot spends its time (add
//! `earlyprintk=ttyS0` to the command line to see the kernel's first
//! messages as they happen).
//!
//! Exit codes: 0 the guest reset or powered off; 2 it triple-faulted or
//! crashed; 3 its kernel panicked; 4 timeout; 1 any other error (printed).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use hypercontainer::vmm::console::Timestamped;
use hypercontainer::vmm::{self, Error, ExitReason, SystemEvent, VmBuilder};

/// Boots a Linux kernel and streams its console to stdout.
#[derive(Debug, Parser)]
#[command(name = "boot")]
struct Args {
    /// The kernel (PVH vmlinux or bzImage; default: the SDK's cached one).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// An initramfs.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// The kernel command line.
    #[arg(long)]
    cmdline: Option<String>,
    /// vCPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = vmm::DEFAULT_MEMORY_MIB)]
    memory: u64,
    /// Give up after this many seconds (exit 4).
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
    /// Print the host-side setup time and the VMM's memory on stderr.
    #[arg(long)]
    report: bool,
    /// Start every console line with the host time since build().
    #[arg(long)]
    timestamps: bool,
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let help = !e.use_stderr();
            let _ = e.print();
            return ExitCode::from(if help { 0 } else { 1 });
        }
    };
    let kernel = match args
        .kernel
        .map_or_else(hypercontainer::kernel::default_kernel, Ok)
    {
        Ok(k) => k,
        Err(e) => {
            eprintln!("boot: {e}");
            return ExitCode::from(1);
        }
    };
    let builder = VmBuilder::new()
        .kernel(kernel)
        .vcpus(args.cpus)
        .memory_mib(args.memory);
    let mut builder = if args.timestamps {
        builder.console_writer(Timestamped::new(std::io::stdout()))
    } else {
        builder.console_writer(std::io::stdout())
    };
    if let Some(i) = args.initrd {
        builder = builder.initramfs(i);
    }
    if let Some(c) = args.cmdline {
        builder = builder.cmdline(c);
    }
    let mut vm = match builder.build() {
        Ok(vm) => vm,
        Err(e) => return fail(&e),
    };
    if args.report {
        report(&vm);
    }
    let outcome = match args.timeout {
        None => vm.wait(),
        Some(secs) => match vm.wait_timeout(Duration::from_secs(secs)) {
            Some(o) => o,
            None => {
                eprintln!("boot: timeout after {secs} s, stopping the guest");
                vm.stop();
                let _ = vm.wait();
                return ExitCode::from(4);
            }
        },
    };
    let _ = std::io::stdout().flush();
    if args.report {
        match vmm::rss_excluding_guest_kib(&[&vm]) {
            Ok(kib) => eprintln!("boot: after the run, RSS outside guest memory: {kib} KiB"),
            Err(e) => eprintln!("boot: cannot read RSS: {e}"),
        }
    }
    match outcome {
        Ok(reason) => {
            eprintln!("boot: guest ended: {reason:?}");
            match reason {
                ExitReason::Reset
                | ExitReason::Stopped
                | ExitReason::Halted
                | ExitReason::SystemEvent(SystemEvent::Shutdown | SystemEvent::Reset) => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(2),
            }
        }
        Err(e) => fail(&e),
    }
}

fn report(vm: &vmm::Vm) {
    // Wait (briefly) for the boot vCPU to enter the guest.
    let start = std::time::Instant::now();
    while vm.boot_times().first_run.is_none() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_micros(100));
    }
    let t = vm.boot_times();
    if let Some(first) = t.first_run {
        eprintln!(
            "boot: setup {:?} (build() {:?}, then first KVM_RUN after {:?})",
            first - t.build_started,
            t.build_finished - t.build_started,
            first - t.build_finished
        );
    }
    match vmm::rss_excluding_guest_kib(&[vm]) {
        Ok(kib) => eprintln!("boot: process RSS outside guest memory: {kib} KiB"),
        Err(e) => eprintln!("boot: cannot read RSS: {e}"),
    }
}

fn fail(e: &Error) -> ExitCode {
    eprintln!("boot: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        eprintln!("  caused by: {s}");
        source = s.source();
    }
    match e {
        Error::GuestPanic { .. } => ExitCode::from(3),
        _ => ExitCode::from(1),
    }
}
