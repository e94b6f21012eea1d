//! HyperContainer: run OCI/Docker container images inside KVM microVMs.
//!
//! The crate is layered as follows:
//!
//! - [`vmm`]: the VMM core: guest memory, vCPU threads and their run loop,
//!   kernel loading, the serial console and the device buses.
//! - [`kernel`]: where the default guest kernel lives.
//! - [`initramfs`]: a writer for the `newc` cpio archives handed to the guest.
//! - [`host`]: what kind of KVM this host offers.
#![warn(missing_docs)]

pub mod host;
pub mod initramfs;
pub mod kernel;
pub mod vmm;
