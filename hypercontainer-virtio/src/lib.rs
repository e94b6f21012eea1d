//! Virtio devices for HyperContainer microVMs.
//!
//! This crate holds the device half of the VMM: a virtio-mmio transport and
//! the devices a container sandbox needs. It knows guest memory
//! ([`vm_memory`]), queues ([`virtio_queue`]), an [`Interrupt`] trait and
//! event fds, but nothing about KVM: the VMM wires the pieces into a VM.
//!
//! * [`transport::mmio::MmioTransport`]: the register window (virtio-mmio
//!   version 2), feature negotiation, the device-status state machine (a
//!   table of valid transitions), queue validation and device activation.
//! * [`VirtioDevice`]: what a device implements for the transport.
//! * Devices: [`block::Block`], [`vsock::Vsock`], [`net::Net`],
//!   [`console::Console`], [`rng::Rng`], [`fs::Fs`] (virtio-fs: a host
//!   directory, or several behind one tag, served by our own FUSE server). Each also implements
//!   [`event_manager::MutEventSubscriber`]: the VMM adds it to the
//!   sandbox's [`event_manager::EventManager`] and runs the loop on one
//!   thread; the device registers its queue and backend fds itself when the
//!   driver activates it.
//!
//! # Wiring a device
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
//! use hypercontainer_virtio::block::Block;
//! use hypercontainer_virtio::transport::mmio::{MmioTransport, QUEUE_NOTIFY_OFFSET};
//! use hypercontainer_virtio::{GuestMemoryMmap, VirtioDevice};
//! use vm_memory::GuestAddress;
//! use vmm_sys_util::eventfd::EventFd;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)])?);
//! let disk = tempfile::tempfile()?;
//! disk.set_len(1 << 20)?;
//!
//! // The device, shared by the transport (vCPU side) and the event loop.
//! let block = Arc::new(Mutex::new(
//!     Block::builder(disk).read_only(true).serial("disk0").build()?,
//! ));
//!
//! // The VMM's irqfd (any `Interrupt` will do).
//! let irq = Arc::new(EventFd::new(0)?);
//! let mut transport = MmioTransport::new(mem, block.clone(), irq)?;
//!
//! // The VMM registers these as ioeventfds at base + 0x50, datamatch = index.
//! for (index, evt) in transport.queue_notify_events() {
//!     let _ = (QUEUE_NOTIFY_OFFSET, index, evt);
//! }
//!
//! // The sandbox's event loop runs the device.
//! let mut event_manager =
//!     EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new()?;
//! event_manager.add_subscriber(block.clone());
//!
//! // Guest MMIO accesses go to the transport.
//! let mut magic = [0u8; 4];
//! transport.read(0, &mut magic);
//! assert_eq!(&magic, b"virt");
//! assert_eq!(block.lock().unwrap().device_type(), 2);
//! # Ok(())
//! # }
//! ```
//!
//! Nothing here panics on guest input: malformed descriptor chains, bad
//! addresses and invalid register writes are answered with an error status,
//! dropped, or ignored and logged.

#![warn(missing_docs)]

pub mod block;
pub mod console;
pub mod device;
pub mod fs;
pub mod interrupt;
pub mod net;
pub mod rng;
pub mod transport;
pub mod vsock;

mod queue_util;

#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;

pub use device::{Activation, VirtioDevice};
pub use interrupt::{Interrupt, InterruptType};

/// The guest memory type devices work on.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;
