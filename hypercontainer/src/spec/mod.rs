//! Building the OCI runtime spec the agent applies to each container.

pub mod caps;
pub mod seccomp;
