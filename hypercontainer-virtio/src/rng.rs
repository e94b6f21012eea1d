//! virtio-rng: entropy from the host's `getrandom(2)`.

use std::io;

use event_manager::{EventOps, Events, MutEventSubscriber};
use log::{debug, error};
use vm_memory::{Bytes, GuestMemoryBackend};

use crate::device::{self, device_type, Activation, EventLoopLink, VirtioDevice};
use crate::queue_util::{drain_queue, Chain};
use crate::GuestMemoryMmap;

/// Queue size of the request queue.
pub const QUEUE_SIZE: u16 = 64;
/// Most bytes given for one request (larger buffers are filled partially).
pub const MAX_BYTES_PER_REQUEST: usize = 64 * 1024;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Device plumbing failed.
    #[error("device setup failed")]
    Device(#[source] device::Error),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Fill `buf` from the kernel's entropy pool.
pub fn fill_random(buf: &mut [u8]) -> io::Result<()> {
    let mut off = 0;
    while off < buf.len() {
        let rest = &mut buf[off..];
        // SAFETY: the pointer and length describe `rest`, a live, writable
        // byte slice; getrandom writes at most that many bytes into it.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        off += n as usize;
    }
    Ok(())
}

/// A virtio entropy device.
pub struct Rng {
    link: EventLoopLink,
    queue_sizes: [u16; 1],
    buf: Vec<u8>,
    bytes_served: u64,
}

impl std::fmt::Debug for Rng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rng")
            .field("bytes_served", &self.bytes_served)
            .finish_non_exhaustive()
    }
}

impl Rng {
    /// A new, inactive device.
    pub fn new() -> Result<Self> {
        Ok(Self {
            link: EventLoopLink::new().map_err(Error::Device)?,
            queue_sizes: [QUEUE_SIZE],
            buf: Vec::new(),
            bytes_served: 0,
        })
    }

    /// Bytes of entropy handed to the guest so far.
    pub fn bytes_served(&self) -> u64 {
        self.bytes_served
    }

    /// Serve every pending request.
    pub fn process_queue(&mut self) {
        let buf = &mut self.buf;
        let served = &mut self.bytes_served;
        if let Some(active) = self.link.active() {
            drain_queue(active, 0, |mem, chain| {
                let n = serve(mem, chain, buf);
                *served += u64::from(n);
                n
            });
        }
    }
}

fn serve(mem: &GuestMemoryMmap, chain: Chain, buf: &mut Vec<u8>) -> u32 {
    let mut written = 0usize;
    for d in chain.descs.iter().filter(|d| d.is_write_only()) {
        let want = (d.len() as usize).min(MAX_BYTES_PER_REQUEST - written);
        if want == 0 {
            break;
        }
        if !GuestMemoryBackend::check_range(mem, d.addr(), want) {
            debug!("virtio-rng: buffer outside guest memory");
            break;
        }
        buf.resize(want, 0);
        if let Err(e) = fill_random(buf) {
            error!("virtio-rng: getrandom failed: {e}");
            break;
        }
        if mem.write_slice(buf, d.addr()).is_err() {
            break;
        }
        written += want;
    }
    written as u32
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn features(&self) -> u64 {
        device::VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, activation: Activation) -> device::Result<()> {
        self.link.activate(activation, 1)
    }

    fn reset(&mut self) {
        self.link.reset();
    }

    fn is_active(&self) -> bool {
        self.link.is_active()
    }
}

impl MutEventSubscriber for Rng {
    fn init(&mut self, ops: &mut EventOps) {
        self.link.init(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if self
            .link
            .single_queue_event(events.data(), ops, "virtio-rng")
        {
            self.process_queue();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use virtio_queue::Queue;
    use vm_memory::GuestAddress;

    use super::*;
    use crate::test_utils::TestQueue;
    use crate::test_utils::{
        activation, add_chain, guest_memory, used_entry, MockInterrupt, TestDesc,
    };

    fn setup() -> (Arc<GuestMemoryMmap>, Arc<MockInterrupt>, Rng) {
        (
            Arc::new(guest_memory(1 << 20)),
            Arc::new(MockInterrupt::new()),
            Rng::new().unwrap(),
        )
    }

    #[test]
    fn fills_writable_buffers_with_entropy() {
        let (mem, irq, mut rng) = setup();
        let vq = TestQueue::new(mem.as_ref(), 16);
        add_chain(
            &vq,
            0,
            &[TestDesc::write(0x10000, 256), TestDesc::write(0x20000, 256)],
        );
        let q: Queue = vq.create_queue();
        rng.activate(activation(&mem, vec![q], irq.clone(), 0))
            .unwrap();
        rng.process_queue();
        assert_eq!(used_entry(&vq, 0), Some((0, 512)));
        let mut a = [0u8; 256];
        let mut b = [0u8; 256];
        mem.read_slice(&mut a, GuestAddress(0x10000)).unwrap();
        mem.read_slice(&mut b, GuestAddress(0x20000)).unwrap();
        // 256 random bytes are all zero, or equal, with negligible probability.
        assert_ne!(a, [0u8; 256]);
        assert_ne!(a, b);
        assert_eq!(irq.used_ring_count(), 1);
        assert_eq!(rng.bytes_served(), 512);
    }

    #[test]
    fn hostile_requests_get_partial_or_no_data() {
        let (mem, irq, mut rng) = setup();
        let vq = TestQueue::new(mem.as_ref(), 16);
        // Readable only: nothing written.
        add_chain(&vq, 0, &[TestDesc::read(0x10000, 64)]);
        // Outside guest memory, and overflowing.
        add_chain(&vq, 1, &[TestDesc::write(1 << 30, 64)]);
        add_chain(&vq, 2, &[TestDesc::write(u64::MAX - 8, 64)]);
        // Huge buffer: capped.
        add_chain(&vq, 3, &[TestDesc::write(0x40000, u32::MAX)]);
        add_chain(&vq, 4, &[TestDesc::write(0x10000, 128 * 1024)]);
        let q: Queue = vq.create_queue();
        rng.activate(activation(&mem, vec![q], irq, 0)).unwrap();
        rng.process_queue();
        assert_eq!(used_entry(&vq, 0), Some((0, 0)));
        assert_eq!(used_entry(&vq, 1), Some((1, 0)));
        assert_eq!(used_entry(&vq, 2), Some((2, 0)));
        assert_eq!(used_entry(&vq, 3), Some((3, MAX_BYTES_PER_REQUEST as u32)));
        assert_eq!(used_entry(&vq, 4), Some((4, MAX_BYTES_PER_REQUEST as u32)));
    }
}
