//! HyperContainer: run OCI/Docker container images inside KVM microVMs.
//!
//! "Secure as a VM, fast as a container": each [`Sandbox`] is a small VM
//! booting a minimal guest kernel whose PID 1 is the HyperContainer agent;
//! the image's layers are read-only disks, and the agent runs the image's
//! process with its stdio streamed back to the host.
//!
//! ```no_run
//! use std::io::Read;
//! use hypercontainer::Sandbox;
//!
//! # fn main() -> Result<(), hypercontainer::sandbox::Error> {
//! let sandbox = Sandbox::builder()
//!     .image("oci-archive:busybox.oci.tar".parse()?)
//!     .cmd(["echo", "hello from a microVM"])
//!     .start()?;
//! let mut out = String::new();
//! sandbox.stdout()?.read_to_string(&mut out).expect("read stdout");
//! print!("{out}");
//! std::process::exit(sandbox.wait()?);
//! # }
//! ```
//!
//! The guest kernel (`cargo xtask kernel`) and the agent
//! (`cargo xtask agent`) are built into the SDK's cache directory; see
//! [`kernel`] and [`guest`].
//!
//! The crate is layered as follows:
//!
//! - [`sandbox`]: the front door: [`SandboxBuilder`], [`Sandbox`],
//!   [`Process`]; image in, container process out.
//! - [`pod`] and [`container`]: one VM, several containers that come and
//!   go ([`Pod`], [`Container`]); a [`Sandbox`] is a pod of one.
//! - [`agent_client`]: the host side of the agent protocol.
//! - [`vmm`]: the VMM core: guest memory, vCPU threads and their run loop,
//!   kernel loading, the serial console, the device buses and the virtio
//!   device manager.
//! - [`kernel`] and [`guest`]: where the default guest kernel and the agent
//!   live; the agent's initramfs.
//! - [`initramfs`]: a writer for the `newc` cpio archives handed to the guest.
//! - [`host`]: what kind of KVM this host offers.
#![warn(missing_docs)]

pub mod agent_client;
pub mod container;
pub mod guest;
pub mod host;
pub mod initramfs;
pub mod kernel;
pub mod network;
pub mod pod;
pub mod sandbox;
pub mod spec;
pub mod vmm;
pub mod volume;

pub use container::{Container, ContainerSpec};
pub use pod::{Pod, PodBuilder};
pub use sandbox::{Exec, ImageRef, Output, Process, Sandbox, SandboxBuilder};
