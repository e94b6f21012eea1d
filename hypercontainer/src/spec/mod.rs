//! The container's OCI runtime spec, built the way Docker builds it: what
//! the agent applies in the guest (see
//! [`Start::spec`](hypercontainer_protocol::Start::spec)).
//!
//! - [`docker`]: the spec and environment of a `docker run`
//!   ([`container_spec`], [`container_env`]) from [`ContainerOptions`];
//! - [`caps`]: Docker's default capabilities, `--cap-add` / `--cap-drop`;
//! - [`seccomp`]: seccomp profiles in Docker's format, evaluated for one
//!   container;
//! - [`ulimit`]: `--ulimit` resource limits and the defaults a container
//!   gets.

pub mod caps;
pub mod docker;
pub mod seccomp;
pub mod ulimit;

pub use docker::{container_env, container_spec, ContainerOptions, Error, Limits, Seccomp, Tmpfs};
pub use ulimit::{Ulimit, DEFAULT_ULIMITS};
