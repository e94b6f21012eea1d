//! vCPU threads: the `KVM_RUN` loop and host control (pause, resume, stop).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::GuestMemoryMmap;

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

/// What a vCPU thread is doing. Each thread keeps its own up to date, so a
/// vCPU that does not stop when asked can be reported precisely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// Not yet in its run loop.
    Starting,
    /// Inside `KVM_RUN`: the guest runs (or KVM handles an exit itself).
    InGuest,
    /// Handling a port I/O exit.
    Pio {
        /// The port.
        port: u16,
        /// A write (`out`) rather than a read (`in`).
        write: bool,
    },
    /// Handling an MMIO exit.
    Mmio {
        /// The guest physical address.
        addr: u64,
        /// A write rather than a read.
        write: bool,
    },
    /// On the host side of the loop, between two `KVM_RUN`s.
    Host,
    /// Parked by a pause.
    Paused,
    /// The thread left its loop.
    Gone,
}

const TAG_SHIFT: u32 = 56;
const WRITE_BIT: u64 = 1 << 48;
const ADDR_MASK: u64 = WRITE_BIT - 1;

impl Activity {
    fn encode(self) -> u64 {
        let (tag, write, addr) = match self {
            Self::Starting => (0, false, 0),
            Self::InGuest => (1, false, 0),
            Self::Pio { port, write } => (2, write, u64::from(port)),
            Self::Mmio { addr, write } => (3, write, addr & ADDR_MASK),
            Self::Host => (4, false, 0),
            Self::Paused => (5, false, 0),
            Self::Gone => (6, false, 0),
        };
        (tag << TAG_SHIFT) | if write { WRITE_BIT } else { 0 } | addr
    }

    fn decode(v: u64) -> Self {
        let write = v & WRITE_BIT != 0;
        let addr = v & ADDR_MASK;
        match v >> TAG_SHIFT {
            1 => Self::InGuest,
            2 => Self::Pio {
                port: addr as u16,
                write,
            },
            3 => Self::Mmio { addr, write },
            4 => Self::Host,
            5 => Self::Paused,
            6 => Self::Gone,
            _ => Self::Starting,
        }
    }
}

impl std::fmt::Display for Activity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dir = |write: bool| if write { "write to" } else { "read from" };
        match self {
            Self::Starting => f.write_str("starting"),
            Self::InGuest => f.write_str("inside KVM_RUN"),
            Self::Pio { port, write } => write!(f, "handling a {} port {port:#x}", dir(*write)),
            Self::Mmio { addr, write } => {
                write!(f, "handling an MMIO {} {addr:#x}", dir(*write))
            }
            Self::Host => f.write_str("between two KVM_RUNs"),
            Self::Paused => f.write_str("paused"),
            Self::Gone => f.write_str("gone"),
        }
    }
}

/// One vCPU and the buses it dispatches to.
pub struct Vcpu {
    index: u32,
    fd: VcpuFd,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    // Keeps guest memory mapped for as long as this vCPU can run, even when
    // its thread outlives the `Vm` (see `Control::wait_vcpus_gone`): the
    // guest must never see host memory mapped later at the same address.
    _memory: GuestMemoryMmap,
}

impl Vcpu {
    /// Wraps a configured vCPU of a VM with guest memory `memory`.
    pub fn new(
        index: u32,
        fd: VcpuFd,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        memory: GuestMemoryMmap,
    ) -> Self {
        Self {
            index,
            fd,
            pio,
            mmio,
            _memory: memory,
        }
    }

    /// Runs the vCPU until its next exit and handles that exit, keeping
    /// `activity` (an encoded [`Activity`]) up to date.
    pub fn run_once(&mut self, activity: &AtomicU64) -> VcpuEvent {
        let index = self.index;
        let set = |a: Activity| activity.store(a.encode(), Ordering::Relaxed);
        set(Activity::InGuest);
        let event = match self.fd.run() {
            Ok(exit) => match exit {
                VcpuExit::IoOut(port, data) => {
                    set(Activity::Pio { port, write: true });
                    self.pio.write(u64::from(port), data);
                    VcpuEvent::Handled
                }
                VcpuExit::IoIn(port, data) => {
                    set(Activity::Pio { port, write: false });
                    self.pio.read(u64::from(port), data);
                    VcpuEvent::Handled
                }
                VcpuExit::MmioRead(addr, data) => {
                    set(Activity::Mmio { addr, write: false });
                    self.mmio.read(addr, data);
                    VcpuEvent::Handled
                }
                VcpuExit::MmioWrite(addr, data) => {
                    set(Activity::Mmio { addr, write: true });
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
        };
        set(Activity::Host);
        event
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
    activity: Box<[AtomicU64]>,
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
            activity: (0..vcpus)
                .map(|_| AtomicU64::new(Activity::Starting.encode()))
                .collect(),
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
            // The first outcome wins, even after it was taken.
            if !st.done {
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

    /// What vCPU `index` is doing now.
    pub fn activity(&self, index: usize) -> Option<Activity> {
        self.activity
            .get(index)
            .map(|a| Activity::decode(a.load(Ordering::Relaxed)))
    }

    fn set_activity(&self, index: usize, a: Activity) {
        if let Some(cell) = self.activity.get(index) {
            cell.store(a.encode(), Ordering::Relaxed);
        }
    }

    /// After the VM ended: waits up to `grace` for every vCPU thread to
    /// leave its loop, kicking the ones still in it again every few
    /// milliseconds (a kick can only be missed by a thread that is not in
    /// `KVM_RUN`, so repeating it covers every window). Returns the vCPUs
    /// still in their loop after `grace`, with what they are doing.
    pub fn wait_vcpus_gone(&self, grace: Duration) -> Vec<(u32, Activity)> {
        const RETRY: Duration = Duration::from_millis(20);
        let deadline = Instant::now() + grace;
        loop {
            {
                let st = relock(&self.state);
                if st.live == 0 {
                    return Vec::new();
                }
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                let (st, _) = self
                    .cv
                    .wait_timeout(st, RETRY.min(deadline - now))
                    .unwrap_or_else(PoisonError::into_inner);
                if st.live == 0 {
                    return Vec::new();
                }
            }
            self.kick_all();
        }
        (0..self.activity.len())
            .filter_map(|i| match self.activity(i) {
                Some(Activity::Gone) | None => None,
                Some(a) => Some((i as u32, a)),
            })
            .collect()
    }

    /// Takes the outcome (once).
    pub fn take_outcome(&self) -> Option<Result<ExitReason>> {
        relock(&self.state).outcome.take()
    }

    /// Called at every stop point of a vCPU: parks it while paused.
    /// Returns `false` when the vCPU must leave its loop.
    fn checkpoint(&self, index: usize) -> bool {
        let mut st = relock(&self.state);
        if st.pause && !st.done {
            self.set_activity(index, Activity::Paused);
            st.paused += 1;
            self.cv.notify_all();
            while st.pause && !st.done {
                st = self.cv.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
            st.paused -= 1;
            self.set_activity(index, Activity::Host);
        }
        !st.done
    }

    /// A vCPU left its loop (halted, failed, or the VM ended).
    fn vcpu_gone(&self, index: usize, halted: bool) {
        self.set_activity(index, Activity::Gone);
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
        control.vcpu_gone(slot, false);
        return;
    }
    control.register(slot);

    let result = catch_unwind(AssertUnwindSafe(|| {
        let mut halted = false;
        loop {
            if control.attention.load(Ordering::SeqCst) && !control.checkpoint(slot) {
                break;
            }
            if index == 0 {
                control.first_run.get_or_init(Instant::now);
            }
            match vcpu.run_once(&control.activity[slot]) {
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
    control.vcpu_gone(slot, halted);
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
        c.finish(Ok(ExitReason::Stopped));
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
        c.vcpu_gone(0, true);
        assert!(!c.is_done());
        assert_eq!(c.activity(0), Some(Activity::Gone));
        assert_eq!(c.activity(1), Some(Activity::Starting));
        c.vcpu_gone(1, true);
        assert!(c.is_done());
        // Pausing a finished VM does not block.
        c.pause();
        c.resume();
        assert!(matches!(c.take_outcome(), Some(Ok(ExitReason::Halted))));
    }

    #[test]
    fn activities_survive_their_encoding() {
        for a in [
            Activity::Starting,
            Activity::InGuest,
            Activity::Pio {
                port: 0x3f8,
                write: true,
            },
            Activity::Pio {
                port: 0xffff,
                write: false,
            },
            Activity::Mmio {
                addr: 0xd000_0000,
                write: false,
            },
            Activity::Mmio {
                addr: 0xffff_ffff_fff0,
                write: true,
            },
            Activity::Host,
            Activity::Paused,
            Activity::Gone,
        ] {
            assert_eq!(Activity::decode(a.encode()), a);
        }
        assert_eq!(
            Activity::Mmio {
                addr: 0xd000_0050,
                write: true
            }
            .to_string(),
            "handling an MMIO write to 0xd0000050"
        );
    }

    #[test]
    fn waiting_for_vcpus_reports_the_ones_that_stay() {
        let (c, _) = control(2);
        c.finish(Ok(ExitReason::Stopped));
        c.set_activity(1, Activity::InGuest);
        c.vcpu_gone(0, false);
        let stuck = c.wait_vcpus_gone(Duration::from_millis(50));
        assert_eq!(stuck, [(1, Activity::InGuest)]);
        c.vcpu_gone(1, false);
        assert!(c.wait_vcpus_gone(Duration::from_secs(5)).is_empty());
    }

    #[test]
    fn panic_payloads_become_messages() {
        let p = std::panic::catch_unwind(|| panic!("boom {}", 1)).unwrap_err();
        assert_eq!(panic_message(&*p), "boom 1");
        let p = std::panic::catch_unwind(|| std::panic::panic_any(7u8)).unwrap_err();
        assert_eq!(panic_message(&*p), "non-string panic payload");
    }
}
