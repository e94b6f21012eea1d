//! Queue-processing helpers shared by the devices.

use log::error;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};

use crate::device::Active;
use crate::GuestMemoryMmap;

/// A popped descriptor chain: its head index and its descriptors (at most
/// the queue size of them; loops and out-of-range `next` indices end the
/// chain early, as `virtio_queue::DescriptorChain` does).
pub(crate) struct Chain {
    pub head: u16,
    pub descs: Vec<Descriptor>,
}

impl Chain {
    pub fn from_chain(chain: DescriptorChain<&GuestMemoryMmap>) -> Self {
        let head = chain.head_index();
        Self {
            head,
            descs: chain.collect(),
        }
    }
}

/// Drain queue `index`: `handle` gets every available chain and returns the
/// number of bytes it wrote into it; the chain is then put on the used ring.
/// Notifications are suppressed while draining and the driver is
/// interrupted once at the end if it asked for it.
pub(crate) fn drain_queue<F>(active: &mut Active, index: usize, mut handle: F)
where
    F: FnMut(&GuestMemoryMmap, Chain) -> u32,
{
    let mem = active.mem.clone();
    let Some(queue) = active.queues.get_mut(index) else {
        return;
    };
    let mut used_any = false;
    let mut idle_rounds = 0;
    loop {
        if let Err(e) = queue.disable_notification(mem.as_ref()) {
            error!("queue {index}: cannot disable notifications: {e}");
            break;
        }
        let mut progressed = false;
        loop {
            // `iter` re-reads the available index and rejects one that runs
            // more than a queue size ahead (a broken or hostile driver).
            let next = match queue.iter(mem.as_ref()) {
                Ok(mut it) => it.next(),
                Err(e) => {
                    error!("queue {index}: {e}");
                    None
                }
            };
            let Some(chain) = next else { break };
            let chain = Chain::from_chain(chain);
            let head = chain.head;
            let len = handle(mem.as_ref(), chain);
            if let Err(e) = queue.add_used(mem.as_ref(), head, len) {
                error!("queue {index}: cannot add used entry for head {head}: {e}");
            }
            used_any = true;
            progressed = true;
        }
        match queue.enable_notification(mem.as_ref()) {
            // More chains arrived while notifications were off. Two rounds
            // in a row without progress mean the ring is unusable: stop.
            Ok(true) if idle_rounds < 1 || progressed => {
                idle_rounds = if progressed { 0 } else { idle_rounds + 1 };
                continue;
            }
            Ok(_) => break,
            Err(e) => {
                error!("queue {index}: cannot enable notifications: {e}");
                break;
            }
        }
    }
    if used_any {
        active.signal_used(index);
    }
}
