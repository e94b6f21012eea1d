//! The emulated host's QEMU process: a handle that kills it when dropped,
//! its console read line by line, and, when it falls silent, what its
//! process and its CPUs are doing (from the QEMU monitor).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Kills and reaps the child if it is still running when dropped.
pub(crate) struct KillOnDrop(pub(crate) Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

pub(crate) type Reader = Option<std::thread::JoinHandle<()>>;

/// Reads the child's stdout and stderr line by line into one channel.
pub(crate) fn read_lines(child: &mut Child) -> (mpsc::Receiver<(Instant, String)>, [Reader; 2]) {
    let (tx, rx) = mpsc::channel();
    let out = child
        .stdout
        .take()
        .map(|s| Box::new(s) as Box<dyn Read + Send>);
    let err = child
        .stderr
        .take()
        .map(|s| Box::new(s) as Box<dyn Read + Send>);
    (rx, [spawn_reader(out, tx.clone()), spawn_reader(err, tx)])
}

/// Reads lines (lossy UTF-8, `\r` stripped) and sends them with their
/// arrival time.
fn spawn_reader(src: Option<Box<dyn Read + Send>>, tx: mpsc::Sender<(Instant, String)>) -> Reader {
    let src = src?;
    Some(std::thread::spawn(move || {
        let mut r = BufReader::new(src);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    while matches!(buf.last(), Some(b'\n' | b'\r')) {
                        buf.pop();
                    }
                    let line = String::from_utf8_lossy(&buf).into_owned();
                    if tx.send((Instant::now(), line)).is_err() {
                        break;
                    }
                }
            }
        }
    }))
}

/// Describes a silent emulator: how busy its process is (CPU time over
/// one second) and, from its monitor, where the emulated CPUs are, whether
/// they halted, and their local APIC's timer and pending and in-service
/// interrupts (an idle CPU whose timer interrupt never comes looks like a
/// lockup).
pub(crate) fn emulator_state(pid: u32, monitor: &Path) -> String {
    let cpu_ticks = || -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
    };
    let busy = match (cpu_ticks(), {
        std::thread::sleep(Duration::from_secs(1));
        cpu_ticks()
    }) {
        // Clock ticks are 1/100 s on Linux.
        (Some(a), Some(b)) => format!("QEMU used {}% CPU over 1 s", b.saturating_sub(a)),
        _ => "QEMU CPU use unknown".to_string(),
    };
    let regs = monitor_lines(
        monitor,
        "info registers -a",
        &["CPU#", "RIP=", "EFL=", "CS =", "CR0=", "EFER="],
    );
    let lapic = monitor_lines(
        monitor,
        "info lapic",
        &["LVTT", "Timer", "ISR", "IRR", "APR"],
    );
    format!("{busy}; {regs}; local APIC: {lapic}")
}

/// The lines of a monitor command's answer that contain one of `keep`,
/// joined with ` | `.
fn monitor_lines(monitor: &Path, command: &str, keep: &[&str]) -> String {
    monitor_command(monitor, command)
        .map(|text| {
            text.lines()
                .filter(|l| keep.iter().any(|k| l.contains(k)))
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" | ")
        })
        .unwrap_or_else(|e| format!("monitor unavailable: {e}"))
}

/// Sends one command to the QEMU monitor and reads its answer for up to
/// two seconds.
fn monitor_command(monitor: &Path, command: &str) -> std::io::Result<String> {
    let mut s = UnixStream::connect(monitor)?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    s.write_all(format!("{command}\n").as_bytes())?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => break,
            Err(e) => return Err(e),
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}
