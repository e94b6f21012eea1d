//! Boot tracing into the kernel log.
//!
//! With `hypercontainer.trace` on the kernel command line, the agent writes
//! one line per step of its work to `/dev/kmsg` (at info level, so the
//! console shows them only with `loglevel=7`). Each line carries the
//! kernel's timestamp, so `dmesg` inside the sandbox (or the console)
//! places the agent's steps on the same clock as the kernel's own boot
//! messages and `initcall_debug` timings. Off by default: one check of a
//! flag per step.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns tracing on if the kernel command line asks for it.
pub fn init_from_cmdline(cmdline: &str) {
    if cmdline
        .split_whitespace()
        .any(|a| a == "hypercontainer.trace" || a == "hypercontainer.trace=1")
    {
        ENABLED.store(true, Ordering::Relaxed);
    }
}

/// Records a step (when tracing is on).
pub fn step(what: std::fmt::Arguments<'_>) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    if let Ok(mut kmsg) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        // One write per record: /dev/kmsg takes a whole line per write.
        let line = format!("<6>hypercontainer-agent: {what}\n");
        let _ = kmsg.write_all(line.as_bytes());
    }
}

/// `trace!("format", args)`: records a step when tracing is on.
macro_rules! trace {
    ($($arg:tt)*) => {
        $crate::trace::step(format_args!($($arg)*))
    };
}
pub(crate) use trace;
