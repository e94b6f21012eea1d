//! Mocks for tests of code that uses this crate (feature `test-utils`).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use vm_memory::GuestAddress;

use crate::interrupt::{Interrupt, InterruptType};
use crate::GuestMemoryMmap;

/// An [`Interrupt`] that counts how often each kind was triggered.
#[derive(Debug, Default)]
pub struct MockInterrupt {
    used_ring: AtomicU64,
    config_change: AtomicU64,
}

impl MockInterrupt {
    /// A fresh mock with zero counts.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many used-ring interrupts were triggered.
    pub fn used_ring_count(&self) -> u64 {
        self.used_ring.load(Ordering::Acquire)
    }

    /// How many configuration-change interrupts were triggered.
    pub fn config_change_count(&self) -> u64 {
        self.config_change.load(Ordering::Acquire)
    }
}

impl Interrupt for MockInterrupt {
    fn trigger(&self, kind: InterruptType) -> io::Result<()> {
        match kind {
            InterruptType::UsedRing => self.used_ring.fetch_add(1, Ordering::AcqRel),
            InterruptType::ConfigChange => self.config_change.fetch_add(1, Ordering::AcqRel),
        };
        Ok(())
    }
}

/// Guest memory of `size` bytes starting at guest address 0.
pub fn guest_memory(size: usize) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).expect("mapping anonymous test memory")
}

/// Build the [`crate::Activation`] a transport would hand over, from queues
/// set up by a test driver (e.g. `virtio_queue::mock::MockSplitQueue`).
pub fn activation(
    mem: &std::sync::Arc<GuestMemoryMmap>,
    queues: Vec<virtio_queue::Queue>,
    interrupt: std::sync::Arc<dyn Interrupt>,
    acked_features: u64,
) -> crate::Activation {
    let queue_events = queues
        .iter()
        .map(|_| {
            vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK)
                .expect("creating an event fd")
        })
        .collect();
    crate::Activation {
        mem: mem.clone(),
        interrupt,
        queues,
        queue_events,
        acked_features,
    }
}

/// One descriptor of a test chain: guest address, length, device-writable.
#[derive(Clone, Copy, Debug)]
pub struct TestDesc {
    /// Guest address of the buffer.
    pub addr: u64,
    /// Length of the buffer.
    pub len: u32,
    /// Whether the device writes to it (`VRING_DESC_F_WRITE`).
    pub write: bool,
}

impl TestDesc {
    /// A device-readable buffer.
    pub fn read(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            write: false,
        }
    }

    /// A device-writable buffer.
    pub fn write(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            write: true,
        }
    }
}

/// Place `descs` as one chain starting at descriptor-table index `first`
/// of `vq` (indices wrap at the queue size) and make it available.
pub fn add_chain<M: vm_memory::GuestMemory>(
    vq: &virtio_queue::mock::MockSplitQueue<'_, M>,
    first: u16,
    descs: &[TestDesc],
) {
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    let size = (vq.desc_table().total_size() / 16) as u16;
    let n = descs.len();
    for (i, d) in descs.iter().enumerate() {
        let index = (first as usize + i) % size as usize;
        let mut flags = if d.write {
            VRING_DESC_F_WRITE as u16
        } else {
            0
        };
        let mut next = 0;
        if i + 1 < n {
            flags |= VRING_DESC_F_NEXT as u16;
            next = ((index + 1) % size as usize) as u16;
        }
        let raw = RawDescriptor::from(Descriptor::new(d.addr, d.len, flags, next));
        vq.desc_table()
            .store(index as u16, raw)
            .expect("writing a test descriptor");
    }
    let idx = vq.avail().idx().load();
    vq.avail()
        .ring()
        .ref_at((idx % size) as usize)
        .expect("avail ring slot")
        .store(first % size);
    std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
    vq.avail().idx().store(idx.wrapping_add(1));
}

/// The `i`-th used-ring entry of `vq` (counting from 0, wrapping) as
/// `(head index, length)`, or `None` when the device has not used that many
/// chains yet.
pub fn used_entry<M: vm_memory::GuestMemory>(
    vq: &virtio_queue::mock::MockSplitQueue<'_, M>,
    i: u16,
) -> Option<(u32, u32)> {
    let size = (vq.desc_table().total_size() / 16) as u16;
    let used = vq.used().idx().load();
    let ahead = used.wrapping_sub(i);
    if ahead == 0 || ahead > size {
        return None;
    }
    let e = vq.used().ring().ref_at((i % size) as usize).ok()?.load();
    Some((e.id(), e.len()))
}
