//! Watching the VM while the host talks to its agent: the VM's end,
//! collected once, and the agent's connection during boot.

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use hypercontainer_protocol::AGENT_VSOCK_PORT;

use crate::agent_client::{self, error_chain};
use crate::sandbox::{agent_err, Error, Result};
use crate::vmm::{self, Vm};

/// Why the VM ended, once it did (collected once from the VMM).
#[derive(Debug, Clone)]
pub(crate) struct VmEnd {
    pub(crate) reason: String,
    pub(crate) console: Vec<String>,
}

/// What the sandbox knows about the VM's end.
#[derive(Debug, Default)]
pub(crate) struct Watch {
    /// The outcome, once collected.
    end: Option<VmEnd>,
    /// When the VM was first seen finished.
    finished_at: Option<Instant>,
}

pub(crate) type Ended = Arc<Mutex<Watch>>;

/// How long the connection may still deliver after the VM ended: the
/// device loop may still hold the guest's last output (the process's exit
/// among it), and reaping the VM stops that loop.
const DRAIN: Duration = Duration::from_secs(1);

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Collects the VM's outcome if it ended.
pub(crate) fn collect_end(vm: &Mutex<Vm>, ended: &Mutex<Watch>) -> Option<VmEnd> {
    if let Some(e) = lock(ended).end.clone() {
        return Some(e);
    }
    let mut vm = lock(vm);
    if !vm.is_finished() {
        return None;
    }
    let console = vm.console_tail();
    let reason = match vm.wait_timeout(Duration::ZERO) {
        Some(Ok(r)) => format!("the VM ended ({r:?})"),
        // Its console lines are reported separately.
        Some(Err(vmm::Error::GuestPanic { .. })) => "the guest kernel panicked".into(),
        Some(Err(vmm::Error::GuestFault { vcpu, suberror, .. })) => {
            format!("KVM internal error on vCPU {vcpu} (suberror {suberror})")
        }
        Some(Err(e)) => error_chain(&e),
        None => "the VM ended".into(),
    };
    let end = VmEnd { reason, console };
    lock(ended).end = Some(end.clone());
    Some(end)
}

/// The reader's liveness hook: the VM's end, once it has been over for
/// [`DRAIN`].
pub(crate) fn vm_gone(vm: &Weak<Mutex<Vm>>, ended: &Ended) -> Option<String> {
    let vm = vm.upgrade()?;
    if let Some(e) = &lock(ended).end {
        return Some(e.reason.clone());
    }
    if !lock(&vm).is_finished() {
        return None;
    }
    let since = *lock(ended).finished_at.get_or_insert_with(Instant::now);
    if since.elapsed() < DRAIN {
        return None;
    }
    collect_end(&vm, ended).map(|e| e.reason)
}

pub(crate) fn boot_failure(
    vm: &Mutex<Vm>,
    ended: &Mutex<Watch>,
    stage: &'static str,
    e: agent_client::Error,
) -> Error {
    if matches!(e, agent_client::Error::Spawn { .. }) {
        return agent_err(e);
    }
    // Give a dying guest a moment to finish dying, so that the error names
    // the real cause (a kernel panic) rather than a closed connection.
    let until = Instant::now() + Duration::from_secs(2);
    loop {
        if let Some(end) = collect_end(vm, ended) {
            return Error::GuestDied {
                stage,
                reason: end.reason,
                console: end.console,
            };
        }
        if Instant::now() >= until {
            return agent_err(e);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for the agent's vsock connection while watching the VM.
pub(crate) fn accept_agent(
    vm: &Mutex<Vm>,
    ended: &Mutex<Watch>,
    deadline: Instant,
    timeout: Duration,
) -> Result<std::os::unix::net::UnixStream> {
    let listener = {
        let g = lock(vm);
        let host = g
            .vsock()
            .ok_or_else(|| Error::Config("the VM has no vsock device".into()))?;
        host.listen(AGENT_VSOCK_PORT, 1)
            .map_err(|source| Error::Io {
                what: "listening for the agent on vsock".into(),
                source,
            })?
    };
    loop {
        match listener.accept(Duration::from_millis(50)) {
            Ok((s, _port)) => return Ok(s),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(source) => {
                return Err(Error::Io {
                    what: "accepting the agent's vsock connection".into(),
                    source,
                })
            }
        }
        if let Some(end) = collect_end(vm, ended) {
            return Err(Error::GuestDied {
                stage: "during boot",
                reason: end.reason,
                console: end.console,
            });
        }
        if Instant::now() >= deadline {
            return Err(Error::BootTimeout {
                timeout,
                console: lock(vm).console_tail(),
            });
        }
    }
}
