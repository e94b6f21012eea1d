//! virtio-console with a single port: guest output goes to a sink the
//! caller provides, guest input comes from a [`ConsoleInput`] handle.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use log::{debug, error, warn};
use vm_memory::{Bytes, GuestMemoryBackend};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::device::{
    self, device_type, Activation, EventLoopLink, LinkChange, VirtioDevice, CONTROL_TOKEN,
};
use crate::queue_util::{drain_queue, Chain};
use crate::GuestMemoryMmap;

/// Queue size of both queues.
pub const QUEUE_SIZE: u16 = 64;
/// Input bytes buffered while the guest has no receive buffers.
pub const INPUT_CAPACITY: usize = 64 * 1024;
/// Receive queue (host to guest).
const RX: usize = 0;
/// Transmit queue (guest to host).
const TX: usize = 1;
const INPUT_TOKEN: u32 = 0x1_0000;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Device plumbing failed.
    #[error("device setup failed")]
    Device(#[source] device::Error),
    /// The input event fd could not be created.
    #[error("cannot create the input event fd")]
    EventFd(#[source] std::io::Error),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, Error>;

struct InputShared {
    buf: Mutex<VecDeque<u8>>,
    evt: EventFd,
}

/// Feeds bytes to the guest's console input; cheap to clone and usable
/// from any thread.
#[derive(Clone)]
pub struct ConsoleInput {
    shared: Arc<InputShared>,
}

impl std::fmt::Debug for ConsoleInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleInput").finish_non_exhaustive()
    }
}

impl ConsoleInput {
    /// Queue `data` for the guest. Returns how many bytes were accepted
    /// (fewer than `data.len()` when the input buffer is full).
    pub fn write(&self, data: &[u8]) -> usize {
        let accepted = {
            let mut buf = self.shared.buf.lock().unwrap_or_else(|p| p.into_inner());
            let n = data.len().min(INPUT_CAPACITY - buf.len());
            buf.extend(&data[..n]);
            n
        };
        if accepted > 0 {
            if let Err(e) = self.shared.evt.write(1) {
                error!("virtio-console: cannot signal input: {e}");
            }
        }
        accepted
    }
}

/// A virtio console device (one port, no multiport).
pub struct Console {
    link: EventLoopLink,
    queue_sizes: [u16; 2],
    output: Box<dyn Write + Send>,
    input: Arc<InputShared>,
    bytes_out: u64,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("bytes_out", &self.bytes_out)
            .finish_non_exhaustive()
    }
}

impl Console {
    /// A console whose guest output is written to `output`.
    pub fn new(output: Box<dyn Write + Send>) -> Result<Self> {
        Ok(Self {
            link: EventLoopLink::new().map_err(Error::Device)?,
            queue_sizes: [QUEUE_SIZE, QUEUE_SIZE],
            output,
            input: Arc::new(InputShared {
                buf: Mutex::new(VecDeque::new()),
                evt: EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?,
            }),
            bytes_out: 0,
        })
    }

    /// A handle that feeds the guest's console input.
    pub fn input(&self) -> ConsoleInput {
        ConsoleInput {
            shared: self.input.clone(),
        }
    }

    /// Bytes the guest has written so far.
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out
    }

    /// Forward everything the guest transmitted to the output sink.
    pub fn process_tx(&mut self) {
        let output = &mut self.output;
        let total = &mut self.bytes_out;
        if let Some(active) = self.link.active() {
            drain_queue(active, TX, |mem, chain| {
                *total += write_out(mem, &chain, output.as_mut());
                0
            });
        }
        if let Err(e) = self.output.flush() {
            warn!("virtio-console: output flush failed: {e}");
        }
    }

    /// Move pending input into the guest's receive buffers.
    pub fn process_rx(&mut self) {
        let Some(active) = self.link.active() else {
            return;
        };
        let mut buf = self.input.buf.lock().unwrap_or_else(|p| p.into_inner());
        if buf.is_empty() {
            return;
        }
        let mem = active.mem.clone();
        let mut used = false;
        {
            let queue = &mut active.queues[RX];
            use virtio_queue::QueueT;
            while !buf.is_empty() {
                let Some(chain) = queue.pop_descriptor_chain(mem.as_ref()) else {
                    break;
                };
                let chain = Chain::from_chain(chain);
                let n = fill_in(mem.as_ref(), &chain, &mut buf);
                if let Err(e) = queue.add_used(mem.as_ref(), chain.head, n) {
                    error!("virtio-console: add_used failed: {e}");
                }
                used = true;
            }
        }
        if used {
            active.signal_used(RX);
        }
    }
}

fn write_out(mem: &GuestMemoryMmap, chain: &Chain, out: &mut dyn Write) -> u64 {
    let mut total = 0u64;
    let mut buf = [0u8; 4096];
    for d in chain.descs.iter().filter(|d| !d.is_write_only()) {
        let len = d.len() as usize;
        if !GuestMemoryBackend::check_range(mem, d.addr(), len) {
            debug!("virtio-console: tx buffer outside guest memory");
            break;
        }
        let mut off = 0usize;
        while off < len {
            let n = (len - off).min(buf.len());
            let Some(addr) = d.addr().0.checked_add(off as u64) else {
                return total;
            };
            if mem
                .read_slice(&mut buf[..n], vm_memory::GuestAddress(addr))
                .is_err()
            {
                return total;
            }
            if let Err(e) = out.write_all(&buf[..n]) {
                warn!("virtio-console: output sink failed: {e}");
                return total;
            }
            off += n;
            total += n as u64;
        }
    }
    total
}

fn fill_in(mem: &GuestMemoryMmap, chain: &Chain, input: &mut VecDeque<u8>) -> u32 {
    let mut written = 0u32;
    for d in chain.descs.iter().filter(|d| d.is_write_only()) {
        if input.is_empty() {
            break;
        }
        let n = (d.len() as usize).min(input.len());
        if !GuestMemoryBackend::check_range(mem, d.addr(), n) {
            debug!("virtio-console: rx buffer outside guest memory");
            break;
        }
        let bytes: Vec<u8> = input.drain(..n).collect();
        if mem.write_slice(&bytes, d.addr()).is_err() {
            break;
        }
        written += n as u32;
    }
    written
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        device_type::CONSOLE
    }

    fn features(&self) -> u64 {
        device::VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // cols, rows, max_nr_ports (1), emerg_wr.
        let mut config = [0u8; 12];
        config[4..8].copy_from_slice(&1u32.to_le_bytes());
        device::read_config_bytes(&config, offset, data);
    }

    fn activate(&mut self, activation: Activation) -> device::Result<()> {
        self.link.activate(activation, 2)
    }

    fn reset(&mut self) {
        self.link.reset();
    }

    fn is_active(&self) -> bool {
        self.link.is_active()
    }
}

impl MutEventSubscriber for Console {
    fn init(&mut self, ops: &mut EventOps) {
        self.link.init(ops);
        if let Err(e) = ops.add(Events::with_data(
            &self.input.evt,
            INPUT_TOKEN,
            EventSet::IN,
        )) {
            error!("virtio-console: cannot register the input event: {e:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            CONTROL_TOKEN => {
                if let LinkChange::Activated = self.link.sync(ops) {
                    self.process_tx();
                    self.process_rx();
                }
            }
            INPUT_TOKEN => {
                let _ = self.input.evt.read();
                self.process_rx();
            }
            q @ (0 | 1) => {
                if self.link.ack_queue_event(q) {
                    if q as usize == TX {
                        self.process_tx();
                    } else {
                        self.process_rx();
                    }
                }
            }
            other => debug!("virtio-console: unexpected event {other}"),
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

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_reaches_the_sink_and_input_reaches_the_guest() {
        let mem = Arc::new(guest_memory(1 << 20));
        let irq = Arc::new(MockInterrupt::new());
        let sink = Sink::default();
        let mut console = Console::new(Box::new(sink.clone())).unwrap();
        let rx = TestQueue::create(mem.as_ref(), GuestAddress(0), 16);
        let tx = TestQueue::create(mem.as_ref(), GuestAddress(0x4000), 16);
        mem.write_slice(b"hello, ", GuestAddress(0x10000)).unwrap();
        mem.write_slice(b"world\n", GuestAddress(0x11000)).unwrap();
        add_chain(
            &tx,
            0,
            &[TestDesc::read(0x10000, 7), TestDesc::read(0x11000, 6)],
        );
        // A writable descriptor in the tx queue and a bad address are ignored.
        add_chain(&tx, 2, &[TestDesc::write(0x12000, 8)]);
        add_chain(&tx, 3, &[TestDesc::read(u64::MAX - 2, 8)]);
        add_chain(&rx, 0, &[TestDesc::write(0x20000, 4)]);
        add_chain(&rx, 1, &[TestDesc::write(0x21000, 64)]);
        let queues: Vec<Queue> = vec![rx.create_queue(), tx.create_queue()];
        console
            .activate(activation(&mem, queues, irq.clone(), 0))
            .unwrap();
        console.process_tx();
        assert_eq!(sink.0.lock().unwrap().as_slice(), b"hello, world\n");
        assert_eq!(used_entry(&tx, 2), Some((3, 0)));

        let input = console.input();
        assert_eq!(input.write(b"input!"), 6);
        console.process_rx();
        assert_eq!(used_entry(&rx, 0), Some((0, 4)));
        assert_eq!(used_entry(&rx, 1), Some((1, 2)));
        let mut got = [0u8; 6];
        mem.read_slice(&mut got[..4], GuestAddress(0x20000))
            .unwrap();
        mem.read_slice(&mut got[4..], GuestAddress(0x21000))
            .unwrap();
        assert_eq!(&got, b"input!");
    }

    #[test]
    fn input_is_bounded() {
        let console = Console::new(Box::new(std::io::sink())).unwrap();
        let input = console.input();
        assert_eq!(input.write(&vec![0u8; INPUT_CAPACITY + 10]), INPUT_CAPACITY);
        assert_eq!(input.write(b"x"), 0);
    }
}
