//! The emulated host's `/init` script and the console markers it prints.
//!
//! Every marker line carries a random per-run token (`HCTH-<nonce>`), so
//! nothing a test prints can be mistaken for one by accident.

use std::fmt::Write as _;

/// Quotes `s` for a POSIX shell (single quotes, `'` spelled `'\''`).
pub fn sh_quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('\'');
    for c in s.chars() {
        if c == '\'' {
            q.push_str("'\\''");
        } else {
            q.push(c);
        }
    }
    q.push('\'');
    q
}

/// A job as the init script runs it: argv and env already in inside paths.
#[derive(Debug, Clone)]
pub struct ScriptJob {
    /// argv, program first.
    pub argv: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Kill the job after this many seconds (after printing where its
    /// threads are).
    pub timeout_secs: Option<u64>,
    /// Send the job's stdout to this device (put in raw mode) instead of
    /// the console, and keep the kernel log off the console after a
    /// failure: a passthrough job.
    pub stdout_port: Option<String>,
}

/// Everything the init script needs.
#[derive(Debug, Clone)]
pub struct ScriptSpec {
    /// The per-run token of the markers.
    pub nonce: String,
    /// Kernel modules, in load order (inside paths).
    pub modules: Vec<String>,
    /// virtio-fs tags to mount (tag, path, read-only) after the modules.
    pub mounts: Vec<(String, String, bool)>,
    /// Environment given to every job.
    pub env: Vec<(String, String)>,
    /// The jobs, run in order.
    pub jobs: Vec<ScriptJob>,
}

/// Seconds between two heartbeat markers of the emulated host.
pub const HEARTBEAT_SECS: u64 = 5;

/// The marker token of a run.
pub fn token(nonce: &str) -> String {
    format!("HCTH-{nonce}")
}

/// Writes the `/init` shell script (run by `/bin/busybox sh`).
pub fn init_script(spec: &ScriptSpec) -> String {
    let t = token(&spec.nonce);
    let mut s = String::new();
    s.push_str("#!/bin/busybox sh\n");
    s.push_str("# Emulated KVM host init: generated for one run.\n");
    // The initramfs root is the kernel's rootfs, which pivot_root(2)
    // refuses to leave (passt's own sandbox and runc pivot): PID 1 starts
    // again on a bind mount of it moved over `/`, as switch_root does
    // (without deleting anything). Being on top of the namespace's root,
    // it is not a chroot, so user namespaces can still be created.
    s.push_str(
        "if [ ! -e /.hc-bound ]; then /bin/busybox mkdir -p /.root && \
         /bin/busybox mount --bind / /.root && /bin/busybox touch /.hc-bound && \
         cd /.root && /bin/busybox mount --move . / && exec /bin/busybox chroot . /init; fi\n",
    );
    s.push_str("/bin/busybox --install -s /bin 2>/dev/null\n");
    s.push_str("export PATH=/usr/sbin:/usr/bin:/sbin:/bin\n");
    s.push_str("mount -t proc proc /proc\nmount -t sysfs sys /sys\n");
    s.push_str("mount -t devtmpfs dev /dev\n");
    // The root is already a RAM filesystem: /tmp stays on it, so files
    // packed below /tmp remain visible.
    s.push_str("mkdir -p /tmp && chmod 1777 /tmp\n");
    // The open-file limits of a systemd machine (1024 soft, 524288 hard)
    // rather than the kernel's 1024:4096 for init: a host running
    // sandboxes with shared directories needs the room.
    s.push_str("ulimit -Hn 524288\n");
    let _ = writeln!(s, "fatal() {{ echo \"{t} FATAL $*\"; poweroff -f; }}");
    let _ = writeln!(s, "echo \"{t} INIT $(cut -d' ' -f1 /proc/uptime)\"");
    for m in &spec.modules {
        let _ = writeln!(
            s,
            "insmod {q} || fatal \"insmod {m} failed\"",
            q = sh_quote(m),
            m = m.replace(['"', '$', '`', '\\'], "_")
        );
    }
    for (tag, path, ro) in &spec.mounts {
        let q = sh_quote(path);
        let opts = if *ro { " -o ro" } else { "" };
        let shown = path.replace(['"', '$', '`', '\\'], "_");
        let _ = writeln!(
            s,
            "mkdir -p {q} && mount -t virtiofs{opts} {tag} {q} || fatal \"mounting the share {shown} failed\""
        );
    }
    s.push_str("[ -c /dev/kvm ] || fatal \"no /dev/kvm after loading the modules\"\n");
    let _ = writeln!(s, "echo \"{t} KVM $(cut -d' ' -f1 /proc/uptime)\"");
    // A heartbeat: while it comes, the emulated host itself is alive, so
    // a job that stops progressing is the job's own hang (caught by its
    // watchdog), not a lockup of the emulator.
    let _ = writeln!(
        s,
        "( while sleep {HEARTBEAT_SECS}; do echo \"{t} TICK\"; done ) &"
    );
    s.push_str("cd /tmp\n");
    for (k, v) in &spec.env {
        let _ = writeln!(s, "export {k}={}", sh_quote(v));
    }
    for (i, job) in spec.jobs.iter().enumerate() {
        let _ = writeln!(s, "echo \"{t} BEGIN {i}\"");
        let mut line = String::from("(");
        for (k, v) in &job.env {
            let _ = write!(line, " export {k}={};", sh_quote(v));
        }
        line.push_str(" exec");
        for a in &job.argv {
            line.push(' ');
            line.push_str(&sh_quote(a));
        }
        line.push_str(" ) </dev/null");
        if let Some(port) = &job.stdout_port {
            let _ = writeln!(s, "stty -F {} raw -echo 2>/dev/null", sh_quote(port));
            line.push_str(" >");
            line.push_str(&sh_quote(port));
        }
        match job.timeout_secs {
            None => {
                s.push_str(&line);
                s.push('\n');
            }
            Some(secs) => {
                let _ = writeln!(s, "{line} &");
                s.push_str("job=$!\n");
                s.push_str(&watchdog(&t, i, secs));
                s.push_str("wd=$!\n");
                s.push_str("wait $job\n");
                // Keep $? of the job for the END line.
                s.push_str("rc=$?; kill $wd 2>/dev/null; (exit $rc)\n");
            }
        }
        // The newline before END ends a last output line that lacks one;
        // the parser removes it again.
        let _ = writeln!(s, "rc=$?; printf '\\n{t} END {i} %s\\n' \"$rc\"");
        // Kernel messages are kept off the console (loglevel=3) so they do
        // not cut into test output; show the latest after a failure.
        if job.stdout_port.is_none() {
            let _ = writeln!(
                s,
                "[ \"$rc\" = 0 ] || {{ echo 'kernel log (last 30 lines):'; dmesg | tail -n 30; }}"
            );
        }
    }
    let _ = writeln!(s, "echo \"{t} DONE\"");
    s.push_str("poweroff -f\n");
    s
}

/// A background shell that, after `secs` seconds, reports job `idx` (pid
/// in `$job`) as timed out, prints what every thread of it is blocked on
/// (state, kernel wait channel, system call, kernel stack) and kills it
/// and its children.
fn watchdog(t: &str, idx: usize, secs: u64) -> String {
    format!(
        r#"(
  sleep {secs}
  kill -0 $job 2>/dev/null || exit 0
  echo "{t} TIMEOUT {idx}"
  echo "job still running after {secs}s; its threads:"
  for d in /proc/$job/task/*; do
    echo "thread $(basename $d) $(cat $d/comm) $(grep State: $d/status) wchan=$(cat $d/wchan) syscall=$(cat $d/syscall)"
    cat $d/stack 2>/dev/null | sed 's/^/    /'
  done
  echo "processes:"; ps 2>/dev/null
  pkill -9 -P $job 2>/dev/null
  kill -9 $job
) &
"#
    )
}

/// What one console line means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Ordinary output.
    Output(String),
    /// The init script started.
    Init,
    /// The kvm modules are loaded and /dev/kvm exists.
    KvmReady,
    /// The emulated host's periodic heartbeat.
    Tick,
    /// Job `idx` starts.
    Begin(usize),
    /// Job `idx` ended with exit code `code`.
    End {
        /// Job index.
        idx: usize,
        /// Exit code.
        code: i32,
    },
    /// Job `idx` ran past its timeout and is being killed.
    Timeout(usize),
    /// The init script gave up.
    Fatal(String),
    /// All jobs ran.
    Done,
}

/// Classifies one console line (without its line ending). Text before a
/// marker on the same line is returned as output first.
pub fn classify(token: &str, line: &str) -> Vec<Event> {
    let line = line.trim_end_matches('\r');
    let Some(at) = line.find(token) else {
        return vec![Event::Output(line.to_string())];
    };
    let mut events = Vec::new();
    if at > 0 {
        events.push(Event::Output(line[..at].to_string()));
    }
    let rest = line[at + token.len()..].trim();
    let mut words = rest.split_whitespace();
    let ev = match words.next() {
        Some("INIT") => Some(Event::Init),
        Some("KVM") => Some(Event::KvmReady),
        Some("TICK") => Some(Event::Tick),
        Some("DONE") => Some(Event::Done),
        Some("BEGIN") => words.next().and_then(|i| i.parse().ok()).map(Event::Begin),
        Some("TIMEOUT") => words
            .next()
            .and_then(|i| i.parse().ok())
            .map(Event::Timeout),
        Some("END") => {
            let idx = words.next().and_then(|i| i.parse().ok());
            let code = words.next().and_then(|c| c.parse().ok());
            idx.zip(code).map(|(idx, code)| Event::End { idx, code })
        }
        Some("FATAL") => Some(Event::Fatal(
            rest.strip_prefix("FATAL")
                .unwrap_or_default()
                .trim()
                .to_string(),
        )),
        _ => None,
    };
    // A malformed marker is kept as output rather than dropped.
    events.push(ev.unwrap_or_else(|| Event::Output(line[at..].to_string())));
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("abc"), "'abc'");
        assert_eq!(sh_quote("a'b"), "'a'\\''b'");
        assert_eq!(sh_quote("$(x) `y` \"z\""), "'$(x) `y` \"z\"'");
        assert_eq!(sh_quote(""), "''");
    }

    #[test]
    fn markers() {
        let t = token("00ff");
        assert_eq!(classify(&t, "hello\r"), vec![Event::Output("hello".into())]);
        assert_eq!(classify(&t, "HCTH-00ff INIT 1.23"), vec![Event::Init]);
        assert_eq!(classify(&t, "HCTH-00ff KVM 1.9"), vec![Event::KvmReady]);
        assert_eq!(classify(&t, "HCTH-00ff BEGIN 3"), vec![Event::Begin(3)]);
        assert_eq!(
            classify(&t, "HCTH-00ff END 3 101\r"),
            vec![Event::End { idx: 3, code: 101 }]
        );
        assert_eq!(
            classify(&t, "partialHCTH-00ff END 0 0"),
            vec![
                Event::Output("partial".into()),
                Event::End { idx: 0, code: 0 }
            ]
        );
        assert_eq!(
            classify(&t, "HCTH-00ff FATAL no /dev/kvm"),
            vec![Event::Fatal("no /dev/kvm".into())]
        );
        assert_eq!(classify(&t, "HCTH-00ff DONE"), vec![Event::Done]);
        assert_eq!(classify(&t, "HCTH-00ff TICK"), vec![Event::Tick]);
        assert_eq!(classify(&t, "HCTH-00ff TIMEOUT 2"), vec![Event::Timeout(2)]);
        // Another run's token, or a malformed marker, is plain output.
        assert_eq!(
            classify(&t, "HCTH-1234 END 0 0"),
            vec![Event::Output("HCTH-1234 END 0 0".into())]
        );
        assert_eq!(
            classify(&t, "HCTH-00ff END x"),
            vec![Event::Output("HCTH-00ff END x".into())]
        );
    }

    #[test]
    fn script_runs_modules_then_jobs() {
        let spec = ScriptSpec {
            nonce: "abcd".into(),
            modules: vec![
                "/hc/modules/irqbypass.ko".into(),
                "/hc/modules/kvm.ko".into(),
            ],
            mounts: vec![("hcshare0".into(), "/srv/it's".into(), true)],
            env: vec![("HYPERCONTAINER_QEMU".into(), "/usr/bin/qemu".into())],
            jobs: vec![
                ScriptJob {
                    argv: vec!["/t/test bin".into(), "--ignored".into()],
                    env: vec![("A".into(), "it's".into())],
                    timeout_secs: None,
                    stdout_port: None,
                },
                ScriptJob {
                    argv: vec!["true".into()],
                    env: vec![],
                    timeout_secs: Some(90),
                    stdout_port: None,
                },
                ScriptJob {
                    argv: vec!["run".into()],
                    env: vec![],
                    timeout_secs: None,
                    stdout_port: Some("/dev/ttyS1".into()),
                },
            ],
        };
        let s = init_script(&spec);
        assert!(s.starts_with("#!/bin/busybox sh\n"));
        let irq = s.find("insmod '/hc/modules/irqbypass.ko'").unwrap();
        let kvm = s.find("insmod '/hc/modules/kvm.ko'").unwrap();
        let check = s.find("[ -c /dev/kvm ]").unwrap();
        let mount = s
            .find("mkdir -p '/srv/it'\\''s' && mount -t virtiofs -o ro hcshare0 '/srv/it'\\''s' ||")
            .unwrap();
        assert!(kvm < mount && mount < check);
        let job0 = s.find("echo \"HCTH-abcd BEGIN 0\"").unwrap();
        let job1 = s.find("echo \"HCTH-abcd BEGIN 1\"").unwrap();
        assert!(irq < kvm && kvm < check && check < job0 && job0 < job1);
        assert!(s.contains("export HYPERCONTAINER_QEMU='/usr/bin/qemu'\n"));
        assert!(s.contains("( export A='it'\\''s'; exec '/t/test bin' '--ignored' ) </dev/null\n"));
        // Job 1 runs in the background under a 90 s watchdog.
        assert!(s.contains("( exec 'true' ) </dev/null &\njob=$!\n(\n  sleep 90\n"));
        // A passthrough job: stdout on its own raw port, no kernel log dump.
        assert!(s.contains(
            "stty -F '/dev/ttyS1' raw -echo 2>/dev/null\n( exec 'run' ) </dev/null >'/dev/ttyS1'\n"
        ));
        assert_eq!(s.matches("kernel log (last 30 lines)").count(), 2);
        assert!(s.contains("echo \"HCTH-abcd TIMEOUT 1\""));
        assert!(s.contains("wait $job\nrc=$?; kill $wd 2>/dev/null; (exit $rc)\nrc=$?;"));
        assert!(s.contains("rc=$?; printf '\\nHCTH-abcd END 1 %s\\n' \"$rc\"\n"));
        assert!(s.trim_end().ends_with("poweroff -f"));
    }
}
