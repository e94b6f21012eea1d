//! The pod: its setup, its table of containers, and each container's
//! lifecycle (create, exec, the main process's end, remove), plus the
//! pod's end.
//!
//! A container is `Running` while its main process runs, then `Stopped`
//! (its root stays, for the host to read its exit and remove it). The main
//! process is PID 1 of the container's PID namespace, so when it ends the
//! kernel kills what else ran in it.

use hypercontainer_protocol::{
    BootStage, ContainerId, ContainerStats, Create, ErrorKind, Interface, Message, Process,
    ProcessId, Setup,
};

use super::{error_chain, Agent, Mode, Proc};
use crate::container::Container;
use crate::{spawn, sys};

/// The pod's settings.
#[derive(Debug, Default)]
pub(super) enum PodState {
    /// No [`Setup`] yet.
    #[default]
    New,
    /// Set up; containers may come.
    Ready(Setup),
    /// The setup failed: every container fails to start with this.
    Failed(ErrorKind, String),
}

/// One container of the table.
#[derive(Debug)]
pub(super) struct Slot {
    container: Container,
    running: bool,
}

impl Agent {
    /// [`Message::Setup`]: the network and the shares.
    pub(super) fn setup(&mut self, s: Setup) {
        if !matches!(self.pod, PodState::New) {
            self.send_error(None, ErrorKind::InvalidRequest, "the pod is already set up");
            return;
        }
        crate::trace::trace!("setup received");
        self.send(&Message::BootStage {
            stage: BootStage::StartReceived,
            boottime_ns: sys::boottime_ns(),
        });
        let done = self.configure_network(&s.network).and_then(|()| {
            crate::rootfs::mount_shares(&s.shares).map_err(|e| {
                (
                    ErrorKind::Rootfs,
                    format!("mounting the pod's shares: {}", error_chain(&e)),
                )
            })
        });
        self.pod = match done {
            Ok(()) => PodState::Ready(s),
            Err((kind, message)) => {
                self.send_error(None, kind, message.clone());
                PodState::Failed(kind, message)
            }
        };
    }

    /// In a VM: loopback up, then the requested interfaces. A host-tier
    /// agent shares the host's network and refuses to touch it.
    fn configure_network(&self, ifaces: &[Interface]) -> Result<(), (ErrorKind, String)> {
        match self.mode {
            Mode::Vm => crate::net::configure(ifaces)
                .map_err(|e| (ErrorKind::Network, format!("configuring the network: {e}"))),
            Mode::Host if ifaces.is_empty() => Ok(()),
            Mode::Host => Err((
                ErrorKind::InvalidRequest,
                "network interfaces can only be configured in a VM".into(),
            )),
        }
    }

    /// [`Message::Create`]: a container and its main process.
    pub(super) fn create(&mut self, c: Create) {
        if !self.claim_id(c.id) {
            return;
        }
        let ends_pod = c.ends_pod && self.main_id.is_none();
        if ends_pod {
            self.main_id = Some(c.id);
            self.main_container = Some(c.container);
        } else if c.ends_pod {
            let m = "another container already ends the pod".to_string();
            return self.fail_start(c.id, false, ErrorKind::InvalidRequest, m);
        }
        if !self.used_containers.insert(c.container) {
            let m = format!("container id {} is already in use", c.container);
            return self.fail_start(c.id, ends_pod, ErrorKind::InvalidRequest, m);
        }
        let setup = match &self.pod {
            PodState::Ready(s) => s,
            PodState::New => {
                let m = "create before the pod's setup".to_string();
                return self.fail_start(c.id, c.ends_pod, ErrorKind::InvalidRequest, m);
            }
            PodState::Failed(kind, m) => {
                let (kind, m) = (*kind, m.clone());
                return self.fail_start(c.id, c.ends_pod, kind, m);
            }
        };
        let first = self.containers.is_empty();
        let container = match Container::create(&c, setup, self.cgroups.as_ref()) {
            Ok(container) => container,
            Err(e) => {
                return self.fail_start(c.id, c.ends_pod, ErrorKind::Rootfs, error_chain(&e));
            }
        };
        crate::trace::trace!("root filesystem of container {} ready", c.container);
        if first {
            self.send(&Message::BootStage {
                stage: BootStage::RootfsReady,
                boottime_ns: sys::boottime_ns(),
            });
        }
        let spawned = spawn::spawn(
            &c.process,
            &container.init_entry(),
            container.confinement(),
            container.root(),
        );
        let slot = self.containers.entry(c.container).or_insert(Slot {
            container,
            running: false,
        });
        if let Ok(sp) = &spawned {
            slot.running = true;
            if let Err(e) = slot.container.started(sp.pid) {
                // Execs will fail; the main process runs on.
                eprintln!("hypercontainer-agent: {}", error_chain(&e));
            }
        }
        self.spawned(c.id, c.container, spawned, true, first);
    }

    /// [`Message::Exec`]: another process in a running container.
    pub(super) fn exec(&mut self, id: ProcessId, container: ContainerId, p: &Process) {
        if !self.claim_id(id) {
            return;
        }
        let Some(slot) = self.containers.get(&container) else {
            let m = if self.used_containers.contains(&container) {
                format!("exec: container {container} was removed")
            } else {
                format!("exec: no container with id {container}")
            };
            return self.fail_start(id, false, ErrorKind::InvalidRequest, m);
        };
        let entry = match slot.container.exec_entry() {
            Some(entry) if slot.running => entry,
            _ => {
                let m = format!("exec: the main process of container {container} is not running");
                return self.fail_start(id, false, ErrorKind::InvalidRequest, m);
            }
        };
        let r = spawn::spawn(
            p,
            &entry,
            slot.container.confinement(),
            &slot.container.process_root(),
        );
        self.spawned(id, container, r, false, false);
    }

    /// [`Message::Remove`]: kills what runs in the container, reports
    /// those exits, frees the container, then [`Message::Removed`].
    pub(super) fn remove(&mut self, container: ContainerId) {
        if !self.containers.contains_key(&container) {
            let m = if self.used_containers.contains(&container) {
                format!("container {container} is already removed")
            } else {
                format!("no container with id {container}")
            };
            self.send_error(None, ErrorKind::InvalidRequest, m);
            return;
        }
        let pids: Vec<_> = self
            .procs
            .iter()
            .filter(|p| p.container == container && p.status.is_none())
            .map(|p| p.pid)
            .collect();
        self.kill_and_wait(&pids);
        self.reap();
        if let Some(mut slot) = self.containers.remove(&container) {
            slot.container.remove();
        }
        self.send(&Message::Removed { container });
    }

    /// [`Message::Stats`]: the container's cgroup figures and the guest's
    /// memory, answered even for an unknown container (`exists` false).
    pub(super) fn stats(&mut self, container: ContainerId) {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kib = |key: &str| {
            meminfo
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        let mut stats = ContainerStats {
            container,
            guest_memory_total_kib: kib("MemTotal:"),
            guest_memory_available_kib: kib("MemAvailable:"),
            ..ContainerStats::default()
        };
        if let Some(slot) = self.containers.get(&container) {
            (stats.memory_bytes, stats.cpu_usec, stats.pids) = slot.container.usage();
            stats.exists = true;
        }
        self.send(&Message::ContainerStats(Box::new(stats)));
    }

    /// A process that could not start: its error, then its exit (for the
    /// process that ends the pod, its exit comes last, from `finish`).
    fn fail_start(&mut self, id: ProcessId, ends_pod: bool, kind: ErrorKind, message: String) {
        self.send_error(Some(id), kind, message);
        let status = kind.exit_status();
        if ends_pod {
            self.main_status = Some(status);
        } else {
            self.send(&Message::Exited {
                id,
                status,
                oom_killed: false,
            });
        }
    }

    fn spawned(
        &mut self,
        id: ProcessId,
        container: ContainerId,
        r: spawn::Result<spawn::Spawned>,
        main: bool,
        first: bool,
    ) {
        match r {
            Ok(s) => {
                crate::trace::trace!("process {id} started (pid {})", s.pid);
                if first {
                    self.send(&Message::BootStage {
                        stage: BootStage::ProcessExec,
                        boottime_ns: s.exec_ns,
                    });
                }
                self.send(&Message::Started {
                    id,
                    pid: s.pid as u32,
                });
                self.procs.push(Proc {
                    id,
                    pid: s.pid,
                    container,
                    main,
                    stdin: Some(s.stdin),
                    stdin_buf: Vec::new(),
                    stdin_closing: false,
                    stdout: Some(s.stdout),
                    stderr: s.stderr,
                    pty: s.pty,
                    status: None,
                });
                // It may have exited already; its SIGCHLD is pending.
            }
            Err(e) => {
                let ends_pod = main && self.main_id == Some(id);
                self.fail_start(id, ends_pod, e.kind, e.message)
            }
        }
    }

    /// Reaps every exited child; reports the exits of our processes after
    /// their remaining output. A main process's end stops its container.
    pub(super) fn reap(&mut self) {
        while let sys::Wait::Exited(pid, status) = sys::waitpid(-1, libc::WNOHANG) {
            self.set_status(pid, status);
            // Anything else was an orphan (we are PID 1 or a subreaper).
        }
        let mut buf = vec![0u8; hypercontainer_protocol::MAX_DATA_CHUNK];
        let mut i = 0;
        while i < self.procs.len() {
            let Some(status) = self.procs[i].status else {
                i += 1;
                continue;
            };
            self.read_output(i, false, &mut buf, true);
            self.read_output(i, true, &mut buf, true);
            let p = self.procs.remove(i);
            if p.main {
                if let Some(slot) = self.containers.get_mut(&p.container) {
                    slot.running = false;
                }
            }
            if self.main_id == Some(p.id) {
                // Reported last, by `finish`.
                self.main_status = Some(status);
            } else {
                let oom_killed = self.oom_killed(p.container, status);
                self.send(&Message::Exited {
                    id: p.id,
                    status,
                    oom_killed,
                });
            }
        }
    }

    /// Ends the pod: kills every process left, reaps them, reports their
    /// exits and then that of the main process that ends the pod (if it
    /// was started), and frees every container.
    pub fn finish(&mut self) {
        // SAFETY: getpid has no preconditions.
        if unsafe { libc::getpid() } == 1 {
            // PID 1 of its namespace: everything else in it goes.
            let _ = sys::kill(-1, libc::SIGKILL);
            while let sys::Wait::Exited(pid, status) = sys::waitpid(-1, 0) {
                self.set_status(pid, status);
            }
        } else {
            // A subreaper among other processes: only what we started.
            let pids: Vec<_> = self.procs.iter().map(|p| p.pid).collect();
            self.kill_and_wait(&pids);
        }
        self.reap();
        if let (Some(id), Some(status)) = (self.main_id, self.main_status) {
            let oom_killed = self
                .main_container
                .is_some_and(|c| self.oom_killed(c, status));
            self.send(&Message::Exited {
                id,
                status,
                oom_killed,
            });
        }
        for slot in self.containers.values_mut() {
            slot.container.remove();
        }
        self.containers.clear();
    }

    /// Kills each of our processes `pids` and waits for it, recording its
    /// status (reported by the next `reap`).
    fn kill_and_wait(&mut self, pids: &[libc::pid_t]) {
        for &pid in pids {
            let _ = sys::kill(pid, libc::SIGKILL);
            if let sys::Wait::Exited(pid, status) = sys::waitpid(pid, 0) {
                self.set_status(pid, status);
            }
        }
    }

    /// Whether a process of `container` that ended with `status` was the
    /// OOM killer's doing: killed by SIGKILL while the container's cgroup
    /// recorded an OOM kill.
    fn oom_killed(&self, container: ContainerId, status: i32) -> bool {
        status == 128 + libc::SIGKILL
            && self
                .containers
                .get(&container)
                .is_some_and(|s| s.container.oom_killed())
    }
}
