//! Address buses that route port I/O and MMIO exits to devices.
//!
//! A [`Bus`] is an ordered set of non-overlapping address ranges, each owned
//! by one [`BusDevice`]. The vCPU run loop hands every PIO or MMIO exit to the
//! matching bus; the device sees the offset of the access inside its own
//! range. Accesses to addresses no device claims are ignored (reads return
//! zeros) and counted, never a panic: the guest decides which addresses it
//! touches.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Errors building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The range is empty or wraps around the address space.
    #[error("invalid bus range: base {base:#x}, length {len:#x}")]
    InvalidRange {
        /// First address of the range.
        base: u64,
        /// Length of the range in bytes.
        len: u64,
    },
    /// The range overlaps one that is already registered.
    #[error(
        "bus range {base:#x}+{len:#x} overlaps the registered range {other_base:#x}+{other_len:#x}"
    )]
    Overlap {
        /// First address of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
        /// First address of the range it collides with.
        other_base: u64,
        /// Length of the range it collides with.
        other_len: u64,
    },
}

/// Result alias for bus operations.
pub type Result<T> = std::result::Result<T, BusError>;

/// A device reachable through a [`Bus`].
///
/// `offset` is relative to the start of the range the device was registered
/// at, so a device does not need to know where it lives. A virtio-mmio
/// transport registered at a 4 KiB window implements exactly this.
///
/// Implementations must not panic on any offset or data length: both are
/// chosen by the guest.
pub trait BusDevice: Send {
    /// The guest reads `data.len()` bytes at `offset`; fill `data`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the bus and its owner.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Clone)]
struct Entry {
    len: u64,
    device: SharedDevice,
}

/// An address bus: ordered ranges mapped to devices.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use hypercontainer::vmm::bus::{Bus, BusDevice};
///
/// struct Scratch(u8);
/// impl BusDevice for Scratch {
///     fn read(&mut self, _offset: u64, data: &mut [u8]) { data.fill(self.0) }
///     fn write(&mut self, _offset: u64, data: &[u8]) { self.0 = data[0] }
/// }
///
/// let mut bus = Bus::new();
/// bus.insert(0x80, 1, Arc::new(Mutex::new(Scratch(0)))).unwrap();
/// assert!(bus.write(0x80, &[7]));
/// let mut b = [0u8; 1];
/// assert!(bus.read(0x80, &mut b));
/// assert_eq!(b, [7]);
/// assert!(!bus.read(0x81, &mut b)); // nobody there: ignored, counted
/// assert_eq!(bus.unhandled(), 1);
/// ```
#[derive(Default)]
pub struct Bus {
    ranges: BTreeMap<u64, Entry>,
    unhandled: AtomicU64,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<_> = self
            .ranges
            .iter()
            .map(|(b, e)| format!("{b:#x}+{:#x}", e.len))
            .collect();
        f.debug_struct("Bus")
            .field("ranges", &ranges)
            .field("unhandled", &self.unhandled())
            .finish()
    }
}

fn lock(device: &SharedDevice) -> MutexGuard<'_, dyn BusDevice + 'static> {
    // A device that panicked while holding its lock leaves it poisoned; the
    // panic itself is reported by the vCPU thread boundary. Keep serving so
    // other vCPUs do not cascade into more panics while the VM winds down.
    device.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `device` for `[base, base + len)`.
    ///
    /// Fails if the range is empty, wraps, or overlaps a registered range.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<()> {
        if len == 0 || base.checked_add(len - 1).is_none() {
            return Err(BusError::InvalidRange { base, len });
        }
        let last = base + (len - 1);
        // The closest range starting at or before our last byte is the only
        // one that can overlap (ranges are disjoint and ordered).
        if let Some((&other_base, other)) = self.ranges.range(..=last).next_back() {
            if other_base + (other.len - 1) >= base {
                return Err(BusError::Overlap {
                    base,
                    len,
                    other_base,
                    other_len: other.len,
                });
            }
        }
        self.ranges.insert(base, Entry { len, device });
        Ok(())
    }

    /// The device covering `addr` and the offset of `addr` inside its range.
    ///
    /// An access of `size` bytes must fit entirely inside the range.
    fn resolve(&self, addr: u64, size: usize) -> Option<(&Entry, u64)> {
        let (&base, entry) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        let end = offset.checked_add(size as u64)?;
        (end <= entry.len).then_some((entry, offset))
    }

    /// Dispatches a read. Returns whether a device handled it; if none did,
    /// `data` is zeroed and the access counted.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((entry, offset)) => {
                lock(&entry.device).read(offset, data);
                true
            }
            None => {
                data.fill(0);
                self.unhandled.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Dispatches a write. Returns whether a device handled it; if none did,
    /// the access is dropped and counted.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((entry, offset)) => {
                lock(&entry.device).write(offset, data);
                true
            }
            None => {
                self.unhandled.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// How many accesses hit no device so far.
    pub fn unhandled(&self) -> u64 {
        self.unhandled.load(Ordering::Relaxed)
    }

    /// The registered ranges as `(base, len)`, in address order.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        self.ranges.iter().map(|(b, e)| (*b, e.len)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = (offset as u8).wrapping_add(i as u8);
            }
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    fn dev() -> Arc<Mutex<Recorder>> {
        Arc::new(Mutex::new(Recorder::default()))
    }

    #[test]
    fn rejects_overlaps_and_bad_ranges() {
        let mut bus = Bus::new();
        bus.insert(0x100, 0x10, dev()).unwrap();
        bus.insert(0x120, 0x10, dev()).unwrap();
        for (base, len) in [(0x10f, 1), (0xf8, 0x9), (0x110, 0x11), (0x100, 0x100)] {
            assert!(
                matches!(bus.insert(base, len, dev()), Err(BusError::Overlap { .. })),
                "{base:#x}+{len:#x}"
            );
        }
        bus.insert(0x110, 0x10, dev()).unwrap();
        bus.insert(0xf0, 0x10, dev()).unwrap();
        assert_eq!(
            bus.insert(5, 0, dev()),
            Err(BusError::InvalidRange { base: 5, len: 0 })
        );
        assert!(bus.insert(u64::MAX, 2, dev()).is_err());
        bus.insert(u64::MAX, 1, dev()).unwrap();
        assert_eq!(bus.ranges().len(), 5);
    }

    #[test]
    fn dispatches_with_offsets_and_counts_misses() {
        let mut bus = Bus::new();
        let d = dev();
        bus.insert(0x3f8, 8, d.clone()).unwrap();
        assert!(bus.write(0x3fb, &[0x80]));
        let mut b = [0u8; 2];
        assert!(bus.read(0x3fc, &mut b));
        assert_eq!(b, [4, 5]);
        assert_eq!(d.lock().unwrap().writes, vec![(3, vec![0x80])]);
        // Straddling the end of the range is not handled.
        let mut b = [0xaau8; 4];
        assert!(!bus.read(0x3fe, &mut b));
        assert_eq!(b, [0; 4]);
        assert!(!bus.write(0x3f7, &[1]));
        assert!(!bus.write(u64::MAX, &[1, 2]));
        assert_eq!(bus.unhandled(), 3);
    }
}
