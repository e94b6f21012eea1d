//! Interrupts from a device to the driver.
//!
//! The VMM implements [`Interrupt`] (typically by writing an irqfd). The
//! transport wraps it so that the virtio interrupt-status bits are kept in
//! the transport's register window, and hands the wrapped handle to the
//! device on activation.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// Why a device raises its interrupt line (the bits of the virtio-mmio
/// `InterruptStatus` register).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum InterruptType {
    /// The device placed buffers in a used ring.
    UsedRing = 1,
    /// The device configuration space (or the device status) changed.
    ConfigChange = 2,
}

impl InterruptType {
    /// The bit this type sets in `InterruptStatus`.
    pub fn bit(self) -> u32 {
        self as u32
    }
}

/// Something that can signal the guest: implemented by the VMM with an
/// irqfd, by the transport (which records the status bits and forwards), and
/// by `test_utils::MockInterrupt` (feature `test-utils`) in tests.
pub trait Interrupt: Send + Sync {
    /// Raise the interrupt for `kind`.
    fn trigger(&self, kind: InterruptType) -> io::Result<()>;
}

/// A line driven by an event fd (the usual irqfd implementation).
impl Interrupt for vmm_sys_util::eventfd::EventFd {
    fn trigger(&self, _kind: InterruptType) -> io::Result<()> {
        self.write(1)
    }
}

/// The interrupt handle a transport gives its device: it sets the
/// interrupt-status bit (visible through the transport's registers), bumps the
/// configuration generation on a configuration change, then fires the line.
#[derive(Clone)]
pub struct TransportInterrupt {
    status: Arc<AtomicU32>,
    config_generation: Arc<AtomicU32>,
    line: Arc<dyn Interrupt>,
}

impl std::fmt::Debug for TransportInterrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportInterrupt")
            .field("status", &self.status.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl TransportInterrupt {
    /// Wrap `line`; the status bits live in `status`.
    pub fn new(
        status: Arc<AtomicU32>,
        config_generation: Arc<AtomicU32>,
        line: Arc<dyn Interrupt>,
    ) -> Self {
        Self {
            status,
            config_generation,
            line,
        }
    }

    /// The current interrupt-status bits.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::Acquire)
    }
}

impl Interrupt for TransportInterrupt {
    fn trigger(&self, kind: InterruptType) -> io::Result<()> {
        if kind == InterruptType::ConfigChange {
            self.config_generation.fetch_add(1, Ordering::AcqRel);
        }
        self.status.fetch_or(kind.bit(), Ordering::AcqRel);
        self.line.trigger(kind)
    }
}
