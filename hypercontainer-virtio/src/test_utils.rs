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

/// A driver-side split queue for tests: virtio-queue's
/// [`MockSplitQueue`](virtio_queue::mock::MockSplitQueue) lays out the
/// descriptor table and the available ring; the used ring is placed right
/// after the available ring's real end (the mock's own used ring starts
/// inside the available ring for queue sizes above a few entries, which
/// lets the device's used-ring writes clobber pending available entries).
pub struct TestQueue<'a> {
    vq: virtio_queue::mock::MockSplitQueue<'a, GuestMemoryMmap>,
    mem: &'a GuestMemoryMmap,
    size: u16,
    used: GuestAddress,
}

impl<'a> TestQueue<'a> {
    /// A queue of `size` entries at guest address 0.
    pub fn new(mem: &'a GuestMemoryMmap, size: u16) -> Self {
        Self::create(mem, GuestAddress(0), size)
    }

    /// A queue of `size` entries at `start`.
    pub fn create(mem: &'a GuestMemoryMmap, start: GuestAddress, size: u16) -> Self {
        use vm_memory::Bytes;
        let vq = virtio_queue::mock::MockSplitQueue::create(mem, start, size);
        let avail_end = vq.avail_addr().0 + 6 + 2 * u64::from(size);
        let used = GuestAddress((avail_end + 3) & !3);
        let zeros = vec![0u8; 6 + 8 * usize::from(size)];
        mem.write_slice(&zeros, used)
            .expect("used ring inside test memory");
        Self {
            vq,
            mem,
            size,
            used,
        }
    }

    /// The device's view of the queue, ready to be handed over.
    pub fn create_queue(&self) -> virtio_queue::Queue {
        use virtio_queue::QueueT;
        let mut q: virtio_queue::Queue = self.vq.create_queue().expect("valid test queue");
        q.set_used_ring_address(Some(self.used.0 as u32), Some((self.used.0 >> 32) as u32));
        q
    }

    /// The underlying mock driver.
    pub fn mock(&self) -> &virtio_queue::mock::MockSplitQueue<'a, GuestMemoryMmap> {
        &self.vq
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Address of the descriptor table.
    pub fn desc_table_addr(&self) -> GuestAddress {
        self.vq.desc_table_addr()
    }

    /// Address of the available ring.
    pub fn avail_addr(&self) -> GuestAddress {
        self.vq.avail_addr()
    }

    /// Address of the used ring.
    pub fn used_addr(&self) -> GuestAddress {
        self.used
    }

    /// First address past the used ring.
    pub fn end(&self) -> GuestAddress {
        GuestAddress(self.used.0 + 6 + 8 * u64::from(self.size))
    }

    /// The used ring's index (chains the device has returned, wrapping).
    pub fn used_idx(&self) -> u16 {
        use vm_memory::Bytes;
        self.mem
            .read_obj::<u16>(GuestAddress(self.used.0 + 2))
            .map(u16::from_le)
            .unwrap_or(0)
    }

    /// Store a raw descriptor at `index` (wrapping at the queue size).
    pub fn store_desc(&self, index: u16, desc: virtio_queue::desc::split::Descriptor) {
        self.vq
            .desc_table()
            .store(
                index % self.size,
                virtio_queue::desc::RawDescriptor::from(desc),
            )
            .expect("descriptor index inside the table");
    }

    /// Make the chain starting at `head` available.
    pub fn push_avail(&self, head: u16) {
        let avail = self.vq.avail();
        let idx = avail.idx().load();
        avail
            .ring()
            .ref_at(usize::from(idx % self.size))
            .expect("avail ring slot")
            .store(head);
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        avail.idx().store(idx.wrapping_add(1));
    }
}

/// Place `descs` as one chain starting at descriptor-table index `first`
/// of `q` (indices wrap at the queue size) and make it available.
pub fn add_chain(q: &TestQueue<'_>, first: u16, descs: &[TestDesc]) {
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::split::Descriptor;
    let size = q.size;
    let n = descs.len();
    for (i, d) in descs.iter().enumerate() {
        let index = ((usize::from(first) + i) % usize::from(size)) as u16;
        let mut flags = if d.write {
            VRING_DESC_F_WRITE as u16
        } else {
            0
        };
        let mut next = 0;
        if i + 1 < n {
            flags |= VRING_DESC_F_NEXT as u16;
            next = ((usize::from(index) + 1) % usize::from(size)) as u16;
        }
        q.store_desc(index, Descriptor::new(d.addr, d.len, flags, next));
    }
    q.push_avail(first % size);
}

/// The `i`-th used-ring entry of `q` (counting from 0, wrapping) as
/// `(head index, length)`, or `None` when the device has not used that many
/// chains yet.
pub fn used_entry(q: &TestQueue<'_>, i: u16) -> Option<(u32, u32)> {
    use vm_memory::Bytes;
    let ahead = q.used_idx().wrapping_sub(i);
    if ahead == 0 || ahead > q.size {
        return None;
    }
    let addr = GuestAddress(q.used.0 + 4 + 8 * u64::from(i % q.size));
    let id = q.mem.read_obj::<u32>(addr).ok()?;
    let len = q.mem.read_obj::<u32>(GuestAddress(addr.0 + 4)).ok()?;
    Some((u32::from_le(id), u32::from_le(len)))
}

/// A net backend over one end of a datagram socket pair whose frames carry
/// a `virtio_net_hdr` when `vnet_hdr` is set (as a tap with
/// `IFF_VNET_HDR` does); records the offloads it is told.
#[derive(Debug)]
pub struct DatagramBackend {
    /// The device's end.
    pub socket: std::os::unix::net::UnixDatagram,
    /// Frames carry a header.
    pub vnet_hdr: bool,
    /// The features passed to the last `set_offloads`.
    pub offloads: std::sync::Arc<std::sync::Mutex<Option<u64>>>,
}

impl std::os::fd::AsRawFd for DatagramBackend {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.socket.as_raw_fd()
    }
}

impl crate::net::NetBackend for DatagramBackend {
    fn recv_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.socket.recv_frame(buf)
    }
    fn send_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        self.socket.send_frame(frame)
    }
    fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }
    fn set_offloads(&mut self, acked: u64) -> io::Result<()> {
        *self.offloads.lock().unwrap_or_else(|p| p.into_inner()) = Some(acked);
        Ok(())
    }
}
