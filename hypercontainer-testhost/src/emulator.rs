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

/// What the run loop does when its wait for a console line times out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Silence {
    /// Nothing yet: wait on.
    Wait,
    /// Type a line on the console; `first` when this silence had none yet.
    Kick {
        /// How long the heartbeat has been missing.
        silent: Duration,
        /// The first line typed during this silence.
        first: bool,
    },
    /// The host is locked up.
    GiveUp {
        /// How long the heartbeat has been missing.
        silent: Duration,
    },
}

/// The emulated host's heartbeat, watched.
///
/// QEMU's TCG sometimes leaves the emulated host halted with its timer
/// interrupt pending: the local APIC shows the vector in IRR, none in ISR,
/// interrupts enabled, and the CPU never wakes (seen with QEMU 7.2 while
/// the nested guests run, more often on a loaded machine). Any other
/// interrupt, such as a byte arriving on the serial console, wakes it, and
/// the pending timer interrupt is taken with it. So after
/// [`Heartbeat::KICK_AFTER`] without a heartbeat a line is typed on the
/// console, again every `KICK_AFTER`, and only `give_up_after` without a
/// heartbeat counts as a lockup.
#[derive(Debug)]
pub(crate) struct Heartbeat {
    give_up_after: Duration,
    last: Option<Instant>,
    kicked: Option<Instant>,
    /// Silences that ended after lines were typed.
    pub(crate) woken: u32,
}

impl Heartbeat {
    /// Missing heartbeats (of [`crate::script::HEARTBEAT_SECS`]) before a
    /// line is typed.
    pub(crate) const KICK_AFTER: Duration = Duration::from_secs(15);

    /// A watch that gives up after `give_up_after` of silence; it starts
    /// with the first [`Heartbeat::beat`].
    pub(crate) fn new(give_up_after: Duration) -> Self {
        Self {
            give_up_after,
            last: None,
            kicked: None,
            woken: 0,
        }
    }

    /// A heartbeat arrived at `now`; answers how long the host had been
    /// silent when lines typed on its console woke it.
    pub(crate) fn beat(&mut self, now: Instant) -> Option<Duration> {
        let woke = self
            .kicked
            .take()
            .and(self.last)
            .map(|l| now.saturating_duration_since(l));
        self.woken += u32::from(woke.is_some());
        self.last = Some(now);
        woke
    }

    /// When [`Heartbeat::check`] has something to do next, if watching.
    pub(crate) fn next_check(&self) -> Option<Instant> {
        let last = self.last?;
        let kick = self.kicked.unwrap_or(last) + Self::KICK_AFTER;
        Some(kick.min(last + self.give_up_after))
    }

    /// What to do at `now`, a wait having timed out.
    pub(crate) fn check(&mut self, now: Instant) -> Silence {
        let Some(last) = self.last else {
            return Silence::Wait;
        };
        let silent = now.saturating_duration_since(last);
        if silent >= self.give_up_after {
            return Silence::GiveUp { silent };
        }
        let since_kick = self.kicked.map(|k| now.saturating_duration_since(k));
        if silent < Self::KICK_AFTER || since_kick.is_some_and(|d| d < Self::KICK_AFTER) {
            return Silence::Wait;
        }
        let first = self.kicked.is_none();
        self.kicked = Some(now);
        Silence::Kick { silent, first }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_is_kicked_every_interval_and_given_up_at_the_limit() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut h = Heartbeat::new(Duration::from_secs(60));
        assert_eq!(
            h.check(at(100)),
            Silence::Wait,
            "not watching before a beat"
        );
        assert_eq!(h.next_check(), None);
        assert_eq!(h.beat(at(0)), None);
        assert_eq!(h.next_check(), Some(at(15)));
        assert_eq!(h.check(at(10)), Silence::Wait);
        let kick = |s, first| Silence::Kick {
            silent: Duration::from_secs(s),
            first,
        };
        assert_eq!(h.check(at(15)), kick(15, true));
        assert_eq!(h.next_check(), Some(at(30)));
        assert_eq!(h.check(at(20)), Silence::Wait);
        assert_eq!(h.check(at(30)), kick(30, false));
        assert_eq!(h.check(at(45)), kick(45, false));
        assert_eq!(h.next_check(), Some(at(60)));
        assert_eq!(
            h.check(at(60)),
            Silence::GiveUp {
                silent: Duration::from_secs(60)
            }
        );
    }

    #[test]
    fn a_beat_after_a_kick_counts_as_woken() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut h = Heartbeat::new(Duration::from_secs(60));
        h.beat(at(0));
        assert_eq!(h.beat(at(5)), None, "an ordinary beat");
        assert!(matches!(h.check(at(20)), Silence::Kick { first: true, .. }));
        assert_eq!(h.beat(at(21)), Some(Duration::from_secs(16)));
        assert_eq!(h.woken, 1);
        assert_eq!(h.next_check(), Some(at(36)));
        assert!(matches!(h.check(at(36)), Silence::Kick { first: true, .. }));
    }
}
