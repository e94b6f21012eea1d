//! Kicking vCPU threads out of `KVM_RUN`.
//!
//! The host interrupts a vCPU by sending its thread a signal (by default
//! `SIGRTMIN()`, configurable with `VmBuilder::kick_signal`). The handler is
//! installed once per signal number, lazily, the first time a VM is built
//! with it; it does one thing: set `immediate_exit` in the `kvm_run`
//! structure of the vCPU running on the interrupted thread (if any). A
//! signal that lands while the thread is inside `KVM_RUN` makes it return
//! `EINTR`; one that lands just before makes the next `KVM_RUN` return
//! immediately, so no kick is ever lost.
//!
//! The handler replaces whatever handler the process had for that signal:
//! pick a signal the embedding program does not use.

use std::cell::Cell;
use std::ptr;
use std::sync::Mutex;

use kvm_bindings::kvm_run;
use libc::{c_int, c_void, siginfo_t};
use vmm_sys_util::signal::{register_signal_handler, unblock_signal, SIGRTMIN};

thread_local! {
    /// The `kvm_run` of the vCPU owned by this thread, or null.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(ptr::null_mut()) };
}

static INSTALLED: Mutex<Vec<c_int>> = Mutex::new(Vec::new());

/// The default kick signal: `SIGRTMIN()`.
pub fn default_signal() -> c_int {
    SIGRTMIN()
}

extern "C" fn on_kick(_num: c_int, _info: *mut siginfo_t, _ctx: *mut c_void) {
    // Only a const-initialised, destructor-free thread local is touched
    // here, which is async-signal-safe.
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: the pointer is set by `attach` to the live kvm_run mapping
        // of the vCPU owned by this very thread and cleared by `detach`
        // before that vCPU is dropped; the signal runs on this thread, so
        // the mapping cannot go away underneath it.
        let field = unsafe { ptr::addr_of_mut!((*run).immediate_exit) };
        // SAFETY: `field` points into that live mapping; immediate_exit is a
        // plain byte KVM reads on entry to KVM_RUN.
        unsafe { ptr::write_volatile(field, 1) };
    }
}

/// Installs the handler for `signal` unless it already is.
pub fn ensure_handler(signal: c_int) -> vmm_sys_util::errno::Result<()> {
    let mut installed = INSTALLED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !installed.contains(&signal) {
        register_signal_handler(signal, on_kick)?;
        installed.push(signal);
    }
    Ok(())
}

/// Binds the calling thread to `run` (its vCPU's `kvm_run`) and makes sure
/// `signal` is not blocked on it.
pub fn attach(run: *mut kvm_run, signal: c_int) -> vmm_sys_util::signal::SignalResult<()> {
    KVM_RUN.with(|c| c.set(run));
    unblock_signal(signal)
}

/// Unbinds the calling thread from its vCPU.
pub fn detach() {
    KVM_RUN.with(|c| c.set(ptr::null_mut()));
}

/// Sends `signal` to `thread`.
pub fn kick(thread: libc::pthread_t, signal: c_int) {
    // SAFETY: the caller only passes threads that are registered as live
    // (they unregister, under the same lock the caller holds, before they
    // exit), so the pthread_t is valid.
    let _ = unsafe { libc::pthread_kill(thread, signal) };
}
