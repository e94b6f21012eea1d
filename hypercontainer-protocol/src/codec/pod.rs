//! Encoding and decoding of the pod's requests, [`Setup`] and [`Create`],
//! each type's two halves side by side (the layouts are in
//! [`crate::pod`]).

use super::{Dec, Enc, Result};
use crate::pod::{ContainerStats, Create, Setup};

impl Enc<'_> {
    pub(super) fn setup(&mut self, s: &Setup) -> Result<()> {
        self.str(&s.hostname)?;
        self.opt_str(&s.hosts)?;
        self.opt_str(&s.resolv_conf)?;
        self.interfaces(&s.network)?;
        self.strs(&s.shares)
    }

    pub(super) fn create(&mut self, c: &Create) -> Result<()> {
        self.u32(c.container);
        self.u32(c.id);
        self.bool(c.ends_pod);
        self.rootfs(&c.rootfs)?;
        self.strs(&c.shares)?;
        self.process(&c.process)?;
        self.spec(&c.spec)?;
        self.opt_str(&c.hosts)
    }

    pub(super) fn container_stats(&mut self, s: &ContainerStats) {
        self.u32(s.container);
        self.bool(s.exists);
        self.u64(s.memory_bytes);
        self.u64(s.cpu_usec);
        self.u32(s.pids);
        self.u64(s.guest_memory_total_kib);
        self.u64(s.guest_memory_available_kib);
    }
}

impl Dec<'_> {
    pub(super) fn setup(&mut self) -> Result<Setup> {
        Ok(Setup {
            hostname: self.str("hostname")?,
            hosts: self.opt_str("hosts")?,
            resolv_conf: self.opt_str("resolv.conf")?,
            network: self.interfaces()?,
            shares: self.strs("share tags")?,
        })
    }

    pub(super) fn create(&mut self) -> Result<Create> {
        Ok(Create {
            container: self.u32("container")?,
            id: self.u32("id")?,
            ends_pod: self.bool("ends pod")?,
            rootfs: self.rootfs()?,
            shares: self.strs("share tags")?,
            process: self.process()?,
            spec: self.spec()?,
            hosts: self.opt_str("hosts")?,
        })
    }

    pub(super) fn container_stats(&mut self) -> Result<ContainerStats> {
        Ok(ContainerStats {
            container: self.u32("container")?,
            exists: self.bool("exists")?,
            memory_bytes: self.u64("memory")?,
            cpu_usec: self.u64("cpu time")?,
            pids: self.u32("pids")?,
            guest_memory_total_kib: self.u64("guest memory")?,
            guest_memory_available_kib: self.u64("guest memory available")?,
        })
    }
}
