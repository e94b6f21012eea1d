//! vCPU threads: the `KVM_RUN` loop and host control (pause, resume, stop).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use kvm_ioctls::{VcpuExit, VcpuFd};

use super::bus::Bus;
use super::console::ConsoleState;
use super::{kick, Error, ExitReason, Result, SystemEvent};
use crate::host::{detect_kvm, KvmKind};

/// What one `KVM_RUN` ended with.
#[derive(Debug)]
pub enum VcpuEvent {
    /// A PIO or MMIO exit was dispatched (or another harmless exit); run on.
    Handled,
    /// `KVM_RUN` was interrupted by a kick (or another signal); the host
    /// may want this vCPU to pause or stop.
    Interrupted,
    /// The vCPU executed `hlt` and nothing in the kernel will wake it (no
    /// in-kernel irqchip): it stops.
    Halted,
    /// The guest ended the VM.
    Exit(ExitReason),
    /// The vCPU failed; the VM ends with this error.
    Error(Error),
}

/// One vCPU and the buses it dispatches to.
pub struct Vcpu {
    index: u32,
    fd: VcpuFd,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
}

impl Vcpu {
    /// Wraps a configured vCPU.
    pub fn new(index: u32, fd: VcpuFd, pio: Arc<Bus>, mmio: Arc<Bus>) -> Self {
        Self {
            index,
            fd,
            pio,
            mmio,
        }
    }

    /// Runs the vCPU until its next exit and handles that exit.
    pub fn run_once(&mut self) -> VcpuEvent {
        let index = self.index;
        match self.fd.run() {
            Ok(exit) => match exit {
                VcpuExit::IoOut(port, data) => {
                    self.pio.write(u64::from(port), data);
                    VcpuEvent::Handled
                }
                VcpuExit::IoIn(port, data) => {
                    self.pio.read(u64::from(port), data);
                    VcpuEvent::Handled
                }
                VcpuExit::MmioRead(addr, data) => {
                    self.mmio.read(addr, data);
                    VcpuEvent::Handled
                }
                VcpuExit::MmioWrite(addr, data) => {
                    self.mmio.write(addr, data);
                    VcpuEvent::Handled
                }
                VcpuExit::Hlt => VcpuEvent::Halted,
                VcpuExit::Shutdown => VcpuEvent::Exit(ExitReason::TripleFault),
                VcpuExit::SystemEvent(kind, _) => {
                    VcpuEvent::Exit(ExitReason::SystemEvent(SystemEvent::from_kvm(kind)))
                }
                VcpuExit::Intr | VcpuExit::IrqWindowOpen => VcpuEvent::Handled,
                VcpuExit::FailEntry(reason, cpu) => {
                    VcpuEvent::Error(Error::FailEntry { reason, cpu })
                }
                VcpuExit::InternalError => {
                    let run = self.fd.get_kvm_run();
                    // SAFETY: KVM filled the `internal` member of the exit
                    // union for KVM_EXIT_INTERNAL_ERROR; it is plain data.
                    let suberror = unsafe { run.__bindgen_anon_1.internal.suberror };
                    VcpuEvent::Error(Error::InternalError {
                        vcpu: index,
                        suberror,
                    })
                }
                other => VcpuEvent::Error(Error::UnexpectedExit {
                    vcpu: index,
                    exit: format!("{other:?}"),
                }),
            },
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.fd.set_kvm_immediate_exit(0);
                VcpuEvent::Interrupted
            }
            Err(e) => VcpuEvent::Error(Error::Kvm {
                op: "KVM_RUN",
                source: e,
            }),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    pause: bool,
    paused: usize,
    live: usize,
    outcome: Option<Result<ExitReason>>,
    done: bool,
}

/// Host-side control of a VM's vCPU threads.
pub struct Control {
    attention: AtomicBool,
    state: Mutex<State>,
    cv: Condvar,
    threads: Mutex<Vec<Option<libc::pthread_t>>>,
    signal: libc::c_int,
    first_run: OnceLock<Instant>,
    console: Arc<ConsoleState>,
    boots_linux: bool,
}

fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Control {
    /// Control for `vcpus` threads kicked with `signal`.
    pub fn new(
        vcpus: usize,
        signal: libc::c_int,
        console: Arc<ConsoleState>,
        boots_linux: bool,
    ) -> Self {
        Self {
            attention: AtomicBool::new(false),
            state: Mutex::new(State {
                live: vcpus,
                ..Default::default()
            }),
            cv: Condvar::new(),
            threads: Mutex::new(vec![None; vcpus]),
            signal,
            first_run: OnceLock::new(),
            console,
            boots_linux,
        }
    }

    /// When the first `KVM_RUN` was entered.
    pub fn first_run(&self) -> Option<Instant> {
        self.first_run.get().copied()
    }

    fn kick_all(&self) {
        let threads = relock(&self.threads);
        for t in threads.iter().flatten() {
            kick::kick(*t, self.signal);
        }
    }

    /// Ends the VM with `outcome` unless it already ended.
    pub fn finish(&self, outcome: Result<ExitReason>) {
        let outcome = self.explain(outcome);
        {
            let mut st = relock(&self.state);
            if st.outcome.is_none() {
                st.outcome = Some(outcome);
            }
            st.done = true;
            self.attention.store(true, Ordering::SeqCst);
            self.cv.notify_all();
        }
        self.kick_all();
    }

    /// Turns raw outcomes into what the user should see: a reset after a
    /// kernel panic is the panic; an emulation failure on a PVM host is
    /// the host's limitation.
    fn explain(&self, outcome: Result<ExitReason>) -> Result<ExitReason> {
        match outcome {
            Ok(reason)
                if reason != ExitReason::Stopped
                    && self.console.panicked.load(Ordering::SeqCst) =>
            {
                Err(Error::GuestPanic {
                    console: self.console.lines(),
                })
            }
            Err(
                e @ (Error::InternalError { .. }
                | Error::FailEntry { .. }
                | Error::UnexpectedExit { .. }),
            ) if self.boots_linux && detect_kvm() == KvmKind::Pvm => Err(Error::PvmHost {
                source: Box::new(e),
                console: self.console.lines(),
            }),
            Err(Error::InternalError { vcpu, suberror }) => Err(Error::GuestFault {
                vcpu,
                suberror,
                console: self.console.lines(),
            }),
            other => other,
        }
    }

    /// Asks every vCPU to pause and waits until they all did (or ended).
    pub fn pause(&self) {
        {
            let mut st = relock(&self.state);
            if st.done {
                return;
            }
            st.pause = true;
            self.attention.store(true, Ordering::SeqCst);
        }
        self.kick_all();
        let mut st = relock(&self.state);
        while !st.done && st.paused < st.live {
            st = self.cv.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Lets paused vCPUs run again.
    pub fn resume(&self) {
        let mut st = relock(&self.state);
        st.pause = false;
        self.attention.store(st.done, Ordering::SeqCst);
        self.cv.notify_all();
    }

    /// Whether the VM ended.
    pub fn is_done(&self) -> bool {
        relock(&self.state).done
    }

    /// Waits up to `timeout` (forever if `None`) for the VM to end; returns
    /// whether it did.
    pub fn wait_done(&self, timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = relock(&self.state);
        while !st.done {
            match deadline {
                None => st = self.cv.wait(st).unwrap_or_else(PoisonError::into_inner),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return false;
                    }
                    st = self
                        .cv
                        .wait_timeout(st, d - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        }
        true
    }

    /// Takes the outcome (once).
    pub fn take_outcome(&self) -> Option<Result<ExitReason>> {
        relock(&self.state).outcome.take()
    }

    /// Called at every stop point of a vCPU: parks it while paused.
    /// Returns `false` when the vCPU must leave its loop.
    fn checkpoint(&self) -> bool {
        let mut st = relock(&self.state);
        if st.pause && !st.done {
            st.paused += 1;
            self.cv.notify_all();
            while st.pause && !st.done {
                st = self.cv.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
            st.paused -= 1;
        }
        !st.done
    }

    /// A vCPU left its loop (halted, failed, or the VM ended).
    fn vcpu_gone(&self, halted: bool) {
        let all_gone = {
            let mut st = relock(&self.state);
            st.live = st.live.saturating_sub(1);
            self.cv.notify_all();
            st.live == 0 && !st.done
        };
        if all_gone {
            self.finish(if halted {
                Ok(ExitReason::Halted)
            } else {
                Ok(ExitReason::Stopped)
            });
        }
    }

    fn register(&self, index: usize) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        if let Some(slot) = relock(&self.threads).get_mut(index) {
            *slot = Some(me);
        }
    }

    fn unregister(&self, index: usize) {
        if let Some(slot) = relock(&self.threads).get_mut(index) {
            *slot = None;
        }
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// The body of a vCPU thread: runs until the VM ends, the vCPU halts or
/// fails. A panic is caught here and ends the VM with an error.
pub fn thread_main(mut vcpu: Vcpu, control: Arc<Control>) {
    let index = vcpu.index;
    let slot = index as usize;
    let run = vcpu.fd.get_kvm_run() as *mut kvm_bindings::kvm_run;
    if let Err(e) = kick::attach(run, control.signal) {
        control.finish(Err(Error::Signal(format!("{e:?}").into())));
        control.vcpu_gone(false);
        return;
    }
    control.register(slot);

    let result = catch_unwind(AssertUnwindSafe(|| {
        let mut halted = false;
        loop {
            if control.attention.load(Ordering::SeqCst) && !control.checkpoint() {
                break;
            }
            if index == 0 {
                control.first_run.get_or_init(Instant::now);
            }
            match vcpu.run_once() {
                VcpuEvent::Handled | VcpuEvent::Interrupted => {}
                VcpuEvent::Halted => {
                    halted = true;
                    break;
                }
                VcpuEvent::Exit(reason) => {
                    control.finish(Ok(reason));
                    break;
                }
                VcpuEvent::Error(e) => {
                    control.finish(Err(e));
                    break;
                }
            }
        }
        halted
    }));

    control.unregister(slot);
    kick::detach();
    let halted = match result {
        Ok(halted) => halted,
        Err(payload) => {
            control.finish(Err(Error::VcpuPanic {
                vcpu: index,
                message: panic_message(&*payload),
            }));
            false
        }
    };
    control.vcpu_gone(halted);
    drop(vcpu);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn control(vcpus: usize) -> (Control, Arc<ConsoleState>) {
        let console = Arc::new(ConsoleState::new(8));
        (
            Control::new(vcpus, kick::default_signal(), console.clone(), true),
            console,
        )
    }

    #[test]
    fn the_first_outcome_wins() {
        let (c, _) = control(1);
        assert!(!c.wait_done(Some(Duration::from_millis(1))));
        c.finish(Ok(ExitReason::Reset));
        c.finish(Ok(ExitReason::Stopped));
        assert!(c.wait_done(Some(Duration::from_millis(1))));
        assert!(matches!(c.take_outcome(), Some(Ok(ExitReason::Reset))));
        assert!(c.take_outcome().is_none());
    }

    #[test]
    fn a_reset_after_a_kernel_panic_is_a_panic_error() {
        let (c, console) = control(1);
        console.panicked.store(true, Ordering::SeqCst);
        c.finish(Ok(ExitReason::Reset));
        assert!(matches!(
            c.take_outcome(),
            Some(Err(Error::GuestPanic { .. }))
        ));
        // A host stop is still a stop.
        let (c, console) = control(1);
        console.panicked.store(true, Ordering::SeqCst);
        c.finish(Ok(ExitReason::Stopped));
        assert!(matches!(c.take_outcome(), Some(Ok(ExitReason::Stopped))));
    }

    #[test]
    fn pause_returns_once_vcpus_are_gone_and_last_halt_ends_the_vm() {
        let (c, _) = control(2);
        c.vcpu_gone(true);
        assert!(!c.is_done());
        c.vcpu_gone(true);
        assert!(c.is_done());
        // Pausing a finished VM does not block.
        c.pause();
        c.resume();
        assert!(matches!(c.take_outcome(), Some(Ok(ExitReason::Halted))));
    }

    #[test]
    fn panic_payloads_become_messages() {
        let p = std::panic::catch_unwind(|| panic!("boom {}", 1)).unwrap_err();
        assert_eq!(panic_message(&*p), "boom 1");
        let p = std::panic::catch_unwind(|| std::panic::panic_any(7u8)).unwrap_err();
        assert_eq!(panic_message(&*p), "non-string panic payload");
    }
}
