//! Running jobs in the emulated KVM host: packing its initramfs (kernel
//! modules, jobs and their libraries, the generated init) and following
//! its console, job by job, until it powers off or falls silent.

use super::*;
use crate::emulator::{emulator_state, read_lines, Heartbeat, KillOnDrop, Silence};

impl TestHost {
    /// Packs the emulated host's initramfs into `out` and returns the init
    /// script's nonce.
    pub(crate) fn pack(&self, assets: &HostAssets, out: &Path) -> Result<String> {
        let nonce = random_nonce()?;
        let mut tree = Tree::default();
        let env = self.common_env(Some(&mut tree))?;
        let mut script_jobs = Vec::new();
        for job in &self.jobs {
            let program = if job.program.is_absolute() {
                tree.add_executable(&job.program)?
            } else {
                path_str(&job.program)?
            };
            let mut argv = vec![program];
            for a in &job.args {
                argv.push(
                    a.to_str()
                        .ok_or_else(|| Error::Invalid(format!("argument {a:?} is not UTF-8")))?
                        .to_string(),
                );
            }
            script_jobs.push(script::ScriptJob {
                argv,
                env: job.env.clone(),
                timeout_secs: job.timeout.map(|t| t.as_secs().max(1)),
                stdout_port: job.passthrough.then(|| PASSTHROUGH_PORT.to_string()),
            });
        }
        for exe in &self.executables {
            tree.add_executable(exe)?;
        }
        for (host, inside) in &self.files {
            match inside {
                Some(inside) => {
                    let name =
                        hypercontainer::initramfs::normalize(inside).map_err(Error::Initramfs)?;
                    use std::os::unix::fs::PermissionsExt;
                    let perm = std::fs::metadata(host)
                        .map_err(io_err(format!("reading {}", host.display())))?
                        .permissions()
                        .mode();
                    tree.add(host, format!("/{name}"), perm & 0o7777);
                }
                None => {
                    tree.add_mirrored(host)?;
                }
            }
        }
        for fw in QEMU_FIRMWARE {
            let host = Path::new(QEMU_DATA_DIR).join(fw);
            if host.is_file() {
                tree.add(&host, format!("{QEMU_DATA_DIR}/{fw}"), 0o644);
            }
        }
        if Path::new("/etc/ld.so.cache").is_file() {
            tree.add(
                Path::new("/etc/ld.so.cache"),
                "/etc/ld.so.cache".into(),
                0o644,
            );
        }
        let mut modules = Vec::new();
        for (i, m) in assets.modules.iter().enumerate() {
            let name = m.file_name().unwrap_or_default().to_string_lossy();
            let inside = format!("/hc/modules/{i:02}-{name}");
            tree.add(m, inside.clone(), 0o644);
            modules.push(inside);
        }
        let init = script::init_script(&script::ScriptSpec {
            nonce: nonce.clone(),
            modules,
            mounts: self
                .shares
                .iter()
                .enumerate()
                .map(|(i, sh)| Ok((Share::tag(i), path_str(&sh.path)?, sh.read_only)))
                .collect::<Result<_>>()?,
            env: [
                ("HOME".to_string(), "/tmp".to_string()),
                ("TMPDIR".into(), "/tmp".into()),
            ]
            .into_iter()
            .chain(env)
            .collect(),
            jobs: script_jobs,
        });

        let file =
            std::fs::File::create(out).map_err(io_err(format!("creating {}", out.display())))?;
        let mut w = CpioWriter::new(std::io::BufWriter::new(file));
        let e = Error::Initramfs;
        // The host's top-level symlinks (merged /usr), so paths that go
        // through them resolve as on the host.
        for top in ["bin", "sbin", "lib", "lib64", "lib32", "libx32"] {
            if let Ok(target) = std::fs::read_link(Path::new("/").join(top)) {
                w.symlink(top, path_str(&target)?, Metadata::new(0o777))
                    .map_err(e)?;
            }
        }
        for d in ["proc", "sys", "dev", "tmp", "root", "etc"] {
            w.dir(d, Metadata::new(0o755)).map_err(e)?;
        }
        w.char_device("dev/console", Metadata::new(0o600), 5, 1)
            .map_err(e)?;
        w.file("init", Metadata::new(0o755), init.as_bytes())
            .map_err(e)?;
        for (inside, (host, perm)) in &tree.files {
            w.file_from_path(inside, Metadata::new(*perm), host)
                .map_err(e)?;
        }
        w.finish().map_err(e)?;
        Ok(nonce)
    }

    pub(crate) fn run_emulated(&self, assets: &HostAssets) -> Result<Report> {
        let start = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("hc-testhost-")
            .tempdir()
            .map_err(io_err("creating a temporary directory"))?;
        let cpio = dir.path().join("host.cpio");
        let nonce = self.pack(assets, &cpio)?;
        let size = std::fs::metadata(&cpio).map(|m| m.len()).unwrap_or(0);
        self.echo(&format!(
            "--- packed {:.1} MiB initramfs in {:.1}s; booting the emulated KVM host",
            size as f64 / (1024.0 * 1024.0),
            start.elapsed().as_secs_f64()
        ));
        let monitor = dir.path().join("monitor.sock");
        // The passthrough jobs' stdout: the emulated host's second serial
        // port, written to a file that a thread copies to our stdout.
        let stdout_file = dir.path().join("job-stdout");
        std::fs::File::create(&stdout_file).map_err(io_err("creating the job stdout file"))?;
        let servers = share::serve(&self.shares, dir.path(), self.memory_mib)?;
        let mut cmd = Command::new(&self.qemu);
        cmd.args(&servers.qemu_args);
        cmd.args(["-accel", "tcg", "-cpu", "max"])
            .args(["-smp", &self.cpus.to_string()])
            .args(["-m", &self.memory_mib.to_string()])
            .args([
                "-nodefaults",
                "-nographic",
                "-serial",
                "stdio",
                "-no-reboot",
            ])
            .arg("-serial")
            .arg(format!("file:{}", stdout_file.display()))
            .arg("-kernel")
            .arg(&assets.kernel)
            .arg("-initrd")
            .arg(&cpio)
            .args(["-append", "console=ttyS0 quiet loglevel=3 panic=-1 nokaslr"])
            .arg("-monitor")
            .arg(format!("unix:{},server=on,wait=off", monitor.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawned = Instant::now();
        let mut child = KillOnDrop(
            cmd.spawn()
                .map_err(io_err(format!("starting {}", self.qemu.display())))?,
        );
        // Keep QEMU's stdin (the console's input) open for the whole run.
        let mut stdin = child.0.stdin.take();
        let _copier = StdoutCopier::start(&stdout_file);
        let (rx, readers) = read_lines(&mut child.0);
        let token = script::token(&nonce);
        let mut tail: Vec<String> = Vec::new();
        let mut host_boot = None;
        let mut kvm_setup = None;
        let mut results: Vec<JobResult> = Vec::new();
        let mut current: Option<(usize, Instant, String)> = None;
        let mut done = false;
        let mut pending_blank = false;
        let during = |current: &Option<(usize, Instant, String)>,
                      results: &Vec<JobResult>,
                      host_boot: Option<Duration>| {
            match current {
                Some((i, _, _)) => format!("job {}", self.jobs[*i].name),
                None if host_boot.is_none() => "booting the emulated host".to_string(),
                None if results.len() < self.jobs.len() => {
                    "setting up kvm or between jobs".to_string()
                }
                None => "powering off".to_string(),
            }
        };
        let deadline = start + self.timeout;
        let mut timed_out: Option<usize> = None;
        // Watched once the heartbeat runs (after /dev/kvm is ready).
        let mut heartbeat = Heartbeat::new(HOST_SILENCE);
        // What a silent emulated host looked like when the first line was
        // typed on its console.
        let mut first_state: Option<String> = None;
        loop {
            let now = Instant::now();
            let wake = heartbeat.next_check().map_or(deadline, |c| c.min(deadline));
            let left = wake.saturating_duration_since(now);
            let (_, line) = match rx.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(l) => l,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() >= deadline => {
                    return Err(Error::Timeout {
                        during: during(&current, &results, host_boot),
                        after: self.timeout,
                    })
                }
                Err(mpsc::RecvTimeoutError::Timeout) => match heartbeat.check(Instant::now()) {
                    Silence::Wait => continue,
                    Silence::Kick { silent, first } => {
                        // See `Heartbeat`: an idle host whose timer
                        // interrupt was lost wakes on console input.
                        if first {
                            let state = emulator_state(child.0.id(), &monitor);
                            self.echo(&format!(
                                "--- no heartbeat for {silent:.0?} ({state}); typing a line on the console"
                            ));
                            first_state = Some(state);
                        }
                        if let Some(i) = stdin.as_mut() {
                            let _ = i.write_all(b"\n").and_then(|()| i.flush());
                        }
                        continue;
                    }
                    Silence::GiveUp { silent } => {
                        let now = emulator_state(child.0.id(), &monitor);
                        let state = match first_state.take() {
                            Some(first) => format!(
                                "{first}; lines typed on its console did not wake it; at the end: {now}"
                            ),
                            None => now,
                        };
                        return Err(Error::HostUnresponsive {
                            during: during(&current, &results, host_boot),
                            silent,
                            state,
                            tail: tail.join("\n"),
                            completed: results,
                        });
                    }
                },
            };
            for ev in script::classify(&token, &line) {
                match ev {
                    script::Event::Output(text) => {
                        // Firmware noise before the kernel's init is kept
                        // for error reports only; a job's last blank line
                        // may be the one the init adds before END.
                        if host_boot.is_some() {
                            if current.is_some() && text.is_empty() {
                                pending_blank = true;
                            } else {
                                if std::mem::take(&mut pending_blank) {
                                    self.echo("");
                                }
                                self.echo(&text);
                            }
                        }
                        tail.push(text.clone());
                        if tail.len() > 40 {
                            tail.remove(0);
                        }
                        if let Some((_, _, out)) = current.as_mut() {
                            out.push_str(&text);
                            out.push('\n');
                        }
                    }
                    script::Event::Init => {
                        host_boot = Some(spawned.elapsed());
                        self.echo(&format!(
                            "--- emulated host up in {:.1}s; loading kvm",
                            spawned.elapsed().as_secs_f64()
                        ));
                    }
                    script::Event::KvmReady => {
                        kvm_setup = host_boot.map(|b| spawned.elapsed().saturating_sub(b));
                        heartbeat.beat(Instant::now());
                        self.echo("--- /dev/kvm ready");
                    }
                    script::Event::Tick => {
                        if let Some(silent) = heartbeat.beat(Instant::now()) {
                            first_state = None;
                            self.echo(&format!(
                                "--- the emulated host woke up when a line was typed on its console ({silent:.0?} without a heartbeat)"
                            ));
                        }
                    }
                    script::Event::Begin(i) if i < self.jobs.len() => {
                        self.echo(&format!("--- job {} started", self.jobs[i].name));
                        current = Some((i, Instant::now(), String::new()));
                    }
                    script::Event::End { idx, code } => {
                        pending_blank = false;
                        if let Some((i, began, mut out)) = current.take() {
                            if i == idx {
                                if out.ends_with('\n') {
                                    out.pop();
                                }
                                let duration = began.elapsed();
                                self.echo(&format!(
                                    "--- job {} exited {code} ({:.1}s)",
                                    self.jobs[i].name,
                                    duration.as_secs_f64()
                                ));
                                results.push(JobResult {
                                    name: self.jobs[i].name.clone(),
                                    exit_code: code,
                                    output: out,
                                    duration,
                                    timed_out: timed_out.take() == Some(i),
                                });
                            }
                        }
                    }
                    script::Event::Timeout(i) => {
                        self.echo(&format!(
                            "--- job {} timed out; killing it",
                            self.jobs.get(i).map_or("?", |j| j.name.as_str())
                        ));
                        timed_out = Some(i);
                    }
                    script::Event::Fatal(reason) => {
                        return Err(Error::HostStopped {
                            during: during(&current, &results, host_boot),
                            reason,
                            tail: tail.join("\n"),
                        })
                    }
                    script::Event::Done => done = true,
                    script::Event::Begin(_) => {}
                }
            }
        }
        for r in readers.into_iter().flatten() {
            let _ = r.join();
        }
        let status = child.0.wait().map_err(io_err("waiting for QEMU"))?;
        if !done || results.len() != self.jobs.len() {
            return Err(Error::HostStopped {
                during: during(&current, &results, host_boot),
                reason: format!("QEMU exited ({status}) before all jobs ran"),
                tail: tail.join("\n"),
            });
        }
        Ok(Report {
            mode: self.mode.name(),
            host_boot,
            kvm_setup,
            initramfs_bytes: Some(size),
            jobs: results,
            total: start.elapsed(),
        })
    }
}
