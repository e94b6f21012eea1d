//! Per-container confinement applied in the forked child before `execve`,
//! one module per concern, as runc applies an OCI runtime spec.

pub mod caps;
pub mod seccomp;
#[cfg(test)]
mod test_child;
