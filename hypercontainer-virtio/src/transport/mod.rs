//! Transports: how a driver reaches a [`crate::VirtioDevice`].

pub mod mmio;
