//! virtio-blk over a raw file.
//!
//! Requests are bounds-checked against the disk size (with overflow checks
//! on the sector arithmetic); a request that fails gets `VIRTIO_BLK_S_IOERR`
//! and does not change the disk: every guest buffer of a write is checked
//! before the first byte reaches the file. A read-only disk offers
//! `VIRTIO_BLK_F_RO` and fails writes. `GET_ID` returns the serial (up to 20
//! bytes, zero padded), which Linux shows as `/sys/block/vdX/serial`.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::path::PathBuf;

use event_manager::{EventOps, Events, MutEventSubscriber};
use log::{debug, warn};
use virtio_bindings::virtio_blk::*;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use crate::device::{self, device_type, Activation, EventLoopLink, VirtioDevice, EVENT_IDX};
use crate::queue_util::{drain_queue, Chain};
use crate::GuestMemoryMmap;

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
/// Length of the `GET_ID` serial.
pub const SERIAL_LEN: usize = VIRTIO_BLK_ID_BYTES as usize;
/// Default queue size.
pub const DEFAULT_QUEUE_SIZE: u16 = 256;
/// Size of the request header (type, reserved, sector).
const HEADER_LEN: u32 = 16;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backing file could not be opened.
    #[error("cannot open disk image {path}")]
    Open {
        /// The image path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The backing file's size could not be read.
    #[error("cannot stat disk image")]
    Metadata(#[source] std::io::Error),
    /// The serial is longer than 20 bytes.
    #[error("serial is {0} bytes long, at most 20 allowed")]
    SerialTooLong(usize),
    /// The queue size is not a power of two in 2..=32768.
    #[error("queue size {0} is invalid")]
    QueueSize(u16),
    /// Device plumbing failed.
    #[error("device setup failed")]
    Device(#[source] device::Error),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, Error>;

enum Source {
    File(File),
    Path(PathBuf),
}

/// Builds a [`Block`] device: validates, then builds.
pub struct BlockBuilder {
    source: Source,
    read_only: bool,
    serial: Vec<u8>,
    queue_size: u16,
}

impl BlockBuilder {
    /// Expose the disk read-only (`VIRTIO_BLK_F_RO`; writes fail).
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// The serial returned by `GET_ID` (at most 20 bytes).
    pub fn serial(mut self, serial: impl Into<String>) -> Self {
        self.serial = serial.into().into_bytes();
        self
    }

    /// The queue size (a power of two, default 256).
    pub fn queue_size(mut self, size: u16) -> Self {
        self.queue_size = size;
        self
    }

    /// Validate and build the device.
    pub fn build(self) -> Result<Block> {
        if self.serial.len() > SERIAL_LEN {
            return Err(Error::SerialTooLong(self.serial.len()));
        }
        if self.queue_size < 2 || self.queue_size > 32768 || !self.queue_size.is_power_of_two() {
            return Err(Error::QueueSize(self.queue_size));
        }
        let file = match self.source {
            Source::File(f) => f,
            Source::Path(path) => OpenOptions::new()
                .read(true)
                .write(!self.read_only)
                .open(&path)
                .map_err(|source| Error::Open { path, source })?,
        };
        let len = file.metadata().map_err(Error::Metadata)?.len();
        let capacity = len / SECTOR_SIZE;
        let mut serial = [0u8; SERIAL_LEN];
        serial[..self.serial.len()].copy_from_slice(&self.serial);
        let mut features =
            device::VERSION_1 | EVENT_IDX | (1 << VIRTIO_BLK_F_FLUSH) | (1 << VIRTIO_BLK_F_SEG_MAX);
        if self.read_only {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        // virtio_blk_config: capacity (u64) at 0, size_max (u32) at 8,
        // seg_max (u32) at 12.
        let mut config = vec![0u8; 24];
        config[0..8].copy_from_slice(&capacity.to_le_bytes());
        let seg_max = u32::from(self.queue_size) - 2;
        config[12..16].copy_from_slice(&seg_max.to_le_bytes());
        Ok(Block {
            disk: Disk {
                file,
                size: capacity * SECTOR_SIZE,
                read_only: self.read_only,
                serial,
                stats: BlockStats::default(),
            },
            features,
            config,
            queue_sizes: [self.queue_size],
            link: EventLoopLink::new().map_err(Error::Device)?,
        })
    }
}

/// Request counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockStats {
    /// Requests completed with `VIRTIO_BLK_S_OK`.
    pub ok: u64,
    /// Requests completed with `VIRTIO_BLK_S_IOERR`.
    pub io_errors: u64,
    /// Requests completed with `VIRTIO_BLK_S_UNSUPP`.
    pub unsupported: u64,
    /// Chains returned unanswered (no place to write a status).
    pub dropped: u64,
    /// Bytes read from the disk.
    pub bytes_read: u64,
    /// Bytes written to the disk.
    pub bytes_written: u64,
}

/// A virtio block device backed by a raw image file.
pub struct Block {
    disk: Disk,
    features: u64,
    config: Vec<u8>,
    queue_sizes: [u16; 1],
    link: EventLoopLink,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("size", &self.disk.size)
            .field("read_only", &self.disk.read_only)
            .field("stats", &self.disk.stats)
            .finish_non_exhaustive()
    }
}

impl Block {
    /// Start building a device over an open image file. Open it read-write
    /// unless the device is read-only.
    pub fn builder(file: File) -> BlockBuilder {
        Self::builder_from(Source::File(file))
    }

    /// Start building a device over the image at `path` (opened read-only
    /// when the device is read-only).
    pub fn builder_path(path: impl Into<PathBuf>) -> BlockBuilder {
        Self::builder_from(Source::Path(path.into()))
    }

    fn builder_from(source: Source) -> BlockBuilder {
        BlockBuilder {
            source,
            read_only: false,
            serial: Vec::new(),
            queue_size: DEFAULT_QUEUE_SIZE,
        }
    }

    /// Disk size in bytes (whole sectors).
    pub fn size(&self) -> u64 {
        self.disk.size
    }

    /// Request counters.
    pub fn stats(&self) -> BlockStats {
        self.disk.stats
    }

    /// Process every available request of the queue (what a queue
    /// notification triggers).
    pub fn process_queue(&mut self) {
        let disk = &mut self.disk;
        if let Some(active) = self.link.active() {
            drain_queue(active, 0, |mem, chain| disk.execute(mem, chain));
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        device::read_config_bytes(&self.config, offset, data);
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

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        self.link.init(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if self
            .link
            .single_queue_event(events.data(), ops, "virtio-blk")
        {
            self.process_queue();
        }
    }
}

/// A contiguous piece of a descriptor chain.
#[derive(Clone, Copy, Debug)]
struct Segment {
    addr: GuestAddress,
    len: u64,
}

/// Remove the first `n` bytes of `segs`, returning them as segments.
fn take_front(segs: &mut Vec<Segment>, mut n: u64) -> Option<Vec<Segment>> {
    let mut out = Vec::new();
    while n > 0 {
        let first = segs.first_mut()?;
        let k = first.len.min(n);
        out.push(Segment {
            addr: first.addr,
            len: k,
        });
        first.addr = first.addr.checked_add(k)?;
        first.len -= k;
        n -= k;
        if first.len == 0 {
            segs.remove(0);
        }
    }
    segs.retain(|s| s.len > 0);
    Some(out)
}

fn total_len(segs: &[Segment]) -> Option<u64> {
    segs.iter().try_fold(0u64, |acc, s| acc.checked_add(s.len))
}

fn segments_valid(mem: &GuestMemoryMmap, segs: &[Segment]) -> bool {
    segs.iter().all(|s| {
        usize::try_from(s.len)
            .map(|len| GuestMemoryBackend::check_range(mem, s.addr, len))
            .unwrap_or(false)
    })
}

struct Disk {
    file: File,
    size: u64,
    read_only: bool,
    serial: [u8; SERIAL_LEN],
    stats: BlockStats,
}

/// Why a request failed (logged; the guest sees IOERR or UNSUPP).
#[derive(Debug)]
enum RequestError {
    Io(&'static str),
    Unsupported(u32),
}

impl Disk {
    /// Execute one request; returns the number of bytes written into the
    /// chain's device-writable buffers.
    fn execute(&mut self, mem: &GuestMemoryMmap, chain: Chain) -> u32 {
        // Split into the device-readable part, then the device-writable part.
        let mut readable = Vec::new();
        let mut writable = Vec::new();
        let mut order_ok = true;
        for d in &chain.descs {
            let seg = Segment {
                addr: d.addr(),
                len: u64::from(d.len()),
            };
            if d.is_write_only() {
                writable.push(seg);
            } else if writable.is_empty() {
                readable.push(seg);
            } else {
                order_ok = false;
            }
        }
        readable.retain(|s| s.len > 0);
        writable.retain(|s| s.len > 0);

        // The status byte is the last byte of the writable part.
        let Some(last) = writable.last_mut() else {
            debug!(
                "virtio-blk: chain {} has no status buffer, dropped",
                chain.head
            );
            self.stats.dropped += 1;
            return 0;
        };
        last.len -= 1;
        let Some(status_addr) = last.addr.checked_add(last.len) else {
            self.stats.dropped += 1;
            return 0;
        };
        writable.retain(|s| s.len > 0);
        if !GuestMemoryBackend::check_range(mem, status_addr, 1) {
            debug!(
                "virtio-blk: chain {} status outside guest memory, dropped",
                chain.head
            );
            self.stats.dropped += 1;
            return 0;
        }

        let result = if order_ok {
            self.run(mem, &mut readable, &writable)
        } else {
            Err(RequestError::Io("readable descriptor after a writable one"))
        };
        let (status, data_written) = match result {
            Ok(n) => {
                self.stats.ok += 1;
                (VIRTIO_BLK_S_OK, n)
            }
            Err(RequestError::Io(why)) => {
                debug!("virtio-blk: request failed: {why}");
                self.stats.io_errors += 1;
                (VIRTIO_BLK_S_IOERR, 0)
            }
            Err(RequestError::Unsupported(t)) => {
                debug!("virtio-blk: unsupported request type {t}");
                self.stats.unsupported += 1;
                (VIRTIO_BLK_S_UNSUPP, 0)
            }
        };
        if mem.write_obj(status as u8, status_addr).is_err() {
            self.stats.dropped += 1;
            return 0;
        }
        data_written.saturating_add(1)
    }

    /// Returns the number of data bytes written to guest memory.
    fn run(
        &mut self,
        mem: &GuestMemoryMmap,
        readable: &mut Vec<Segment>,
        writable: &[Segment],
    ) -> std::result::Result<u32, RequestError> {
        let header_segs = take_front(readable, u64::from(HEADER_LEN))
            .ok_or(RequestError::Io("chain shorter than the request header"))?;
        let mut header = [0u8; HEADER_LEN as usize];
        let mut pos = 0usize;
        for s in &header_segs {
            let end = pos + s.len as usize;
            mem.read_slice(&mut header[pos..end], s.addr)
                .map_err(|_| RequestError::Io("header outside guest memory"))?;
            pos = end;
        }
        let req_type = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let sector = u64::from_le_bytes([
            header[8], header[9], header[10], header[11], header[12], header[13], header[14],
            header[15],
        ]);
        match req_type {
            VIRTIO_BLK_T_IN => {
                if !readable.is_empty() {
                    return Err(RequestError::Io("read request with device-readable data"));
                }
                let len = self.check_range(sector, writable)?;
                if !segments_valid(mem, writable) {
                    return Err(RequestError::Io("data buffer outside guest memory"));
                }
                self.seek(sector)?;
                for s in writable {
                    mem.read_exact_volatile_from(s.addr, &mut self.file, s.len as usize)
                        .map_err(|_| RequestError::Io("disk read failed"))?;
                }
                self.stats.bytes_read += len;
                u32::try_from(len).map_err(|_| RequestError::Io("request too long"))
            }
            VIRTIO_BLK_T_OUT => {
                if self.read_only {
                    return Err(RequestError::Io("write to a read-only disk"));
                }
                if !writable.is_empty() {
                    return Err(RequestError::Io("write request with device-writable data"));
                }
                let len = self.check_range(sector, readable)?;
                // Check every buffer before the first byte reaches the disk.
                if !segments_valid(mem, readable) {
                    return Err(RequestError::Io("data buffer outside guest memory"));
                }
                self.seek(sector)?;
                for s in readable.iter() {
                    mem.write_all_volatile_to(s.addr, &mut self.file, s.len as usize)
                        .map_err(|_| RequestError::Io("disk write failed"))?;
                }
                self.stats.bytes_written += len;
                Ok(0)
            }
            VIRTIO_BLK_T_FLUSH => {
                if !self.read_only {
                    self.file
                        .sync_data()
                        .map_err(|_| RequestError::Io("flush failed"))?;
                }
                Ok(0)
            }
            VIRTIO_BLK_T_GET_ID => {
                let mut written = 0usize;
                for s in writable {
                    if written == SERIAL_LEN {
                        break;
                    }
                    let n = (SERIAL_LEN - written).min(s.len as usize);
                    mem.write_slice(&self.serial[written..written + n], s.addr)
                        .map_err(|_| RequestError::Io("id buffer outside guest memory"))?;
                    written += n;
                }
                Ok(written as u32)
            }
            other => Err(RequestError::Unsupported(other)),
        }
    }

    /// Check that `segs` at `sector` lie inside the disk; returns their length.
    fn check_range(&self, sector: u64, segs: &[Segment]) -> std::result::Result<u64, RequestError> {
        let len = total_len(segs).ok_or(RequestError::Io("data length overflows"))?;
        if len % SECTOR_SIZE != 0 {
            return Err(RequestError::Io("data length not a multiple of 512"));
        }
        let end = sector
            .checked_mul(SECTOR_SIZE)
            .and_then(|start| start.checked_add(len))
            .ok_or(RequestError::Io("sector arithmetic overflows"))?;
        if end > self.size {
            warn!("virtio-blk: access beyond the end of the disk (sector {sector}, {len} bytes)");
            return Err(RequestError::Io("access beyond the end of the disk"));
        }
        if len > u64::from(u32::MAX) {
            return Err(RequestError::Io("request too long"));
        }
        Ok(len)
    }

    fn seek(&mut self, sector: u64) -> std::result::Result<(), RequestError> {
        self.file
            .seek(SeekFrom::Start(sector * SECTOR_SIZE))
            .map(|_| ())
            .map_err(|_| RequestError::Io("seek failed"))
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::Arc;

    use virtio_queue::Queue;

    use super::*;
    use crate::test_utils::TestQueue;
    use crate::test_utils::{
        activation, add_chain, guest_memory, used_entry, MockInterrupt, TestDesc,
    };

    const HDR: u64 = 0x1_0000;
    const DATA: u64 = 0x2_0000;
    const STATUS: u64 = 0x3_0000;
    const DISK_SECTORS: u64 = 64;

    struct Fixture {
        mem: Arc<GuestMemoryMmap>,
        block: Block,
        irq: Arc<MockInterrupt>,
        disk: tempfile::NamedTempFile,
    }

    fn disk_pattern() -> Vec<u8> {
        (0..DISK_SECTORS * SECTOR_SIZE)
            .map(|i| (i % 251) as u8)
            .collect()
    }

    fn fixture(read_only: bool) -> Fixture {
        let mut disk = tempfile::NamedTempFile::new().unwrap();
        disk.write_all(&disk_pattern()).unwrap();
        let block = Block::builder_path(disk.path())
            .read_only(read_only)
            .serial("serial-0123")
            .queue_size(16)
            .build()
            .unwrap();
        disk.flush().unwrap();
        Fixture {
            mem: Arc::new(guest_memory(1 << 20)),
            block,
            irq: Arc::new(MockInterrupt::new()),
            disk,
        }
    }

    impl Fixture {
        fn activate(&mut self, vq: &TestQueue<'_>) {
            let q: Queue = vq.create_queue();
            let a = activation(&self.mem, vec![q], self.irq.clone(), self.block.features());
            self.block.activate(a).unwrap();
        }

        fn header(&self, addr: u64, req_type: u32, sector: u64) {
            let mut h = [0u8; 16];
            h[0..4].copy_from_slice(&req_type.to_le_bytes());
            h[8..16].copy_from_slice(&sector.to_le_bytes());
            self.mem.write_slice(&h, GuestAddress(addr)).unwrap();
        }

        fn status(&self) -> u8 {
            self.mem.read_obj(GuestAddress(STATUS)).unwrap()
        }

        fn disk_contents(&self) -> Vec<u8> {
            let mut v = Vec::new();
            File::open(self.disk.path())
                .unwrap()
                .read_to_end(&mut v)
                .unwrap();
            v
        }

        /// Run one chain through the device; returns (used len, status).
        fn run(&mut self, descs: &[TestDesc]) -> (Option<(u32, u32)>, u8) {
            self.mem.write_obj(0xaau8, GuestAddress(STATUS)).unwrap();
            let mem = self.mem.clone();
            let vq = TestQueue::new(mem.as_ref(), 16);
            add_chain(&vq, 0, descs);
            let q: Queue = vq.create_queue();
            let a = activation(&self.mem, vec![q], self.irq.clone(), 0);
            self.block.reset();
            self.block.activate(a).unwrap();
            self.block.process_queue();
            (used_entry(&vq, 0), self.status())
        }
    }

    #[test]
    fn config_space_reports_capacity_and_features() {
        let f = fixture(true);
        let mut cap = [0u8; 8];
        f.block.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), DISK_SECTORS);
        assert_ne!(f.block.features() & (1 << VIRTIO_BLK_F_RO), 0);
        assert_ne!(f.block.features() & (1 << VIRTIO_BLK_F_FLUSH), 0);
        let rw = fixture(false);
        assert_eq!(rw.block.features() & (1 << VIRTIO_BLK_F_RO), 0);
    }

    #[test]
    fn read_returns_disk_data() {
        let mut f = fixture(false);
        f.header(HDR, VIRTIO_BLK_T_IN, 3);
        let (used, status) = f.run(&[
            TestDesc::read(HDR, 16),
            TestDesc::write(DATA, 1024),
            TestDesc::write(STATUS, 1),
        ]);
        assert_eq!(status, VIRTIO_BLK_S_OK as u8);
        assert_eq!(used, Some((0, 1025)));
        let mut got = vec![0u8; 1024];
        f.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert_eq!(got, disk_pattern()[3 * 512..5 * 512]);
        assert_eq!(f.irq.used_ring_count(), 1);
    }

    #[test]
    fn write_reaches_the_file_and_flush_succeeds() {
        let mut f = fixture(false);
        f.header(HDR, VIRTIO_BLK_T_OUT, 1);
        f.mem.write_slice(&[0x5a; 512], GuestAddress(DATA)).unwrap();
        let (used, status) = f.run(&[
            TestDesc::read(HDR, 16),
            TestDesc::read(DATA, 512),
            TestDesc::write(STATUS, 1),
        ]);
        assert_eq!(status, VIRTIO_BLK_S_OK as u8);
        assert_eq!(used, Some((0, 1)));
        let mut expected = disk_pattern();
        expected[512..1024].fill(0x5a);
        assert_eq!(f.disk_contents(), expected);

        f.header(HDR, VIRTIO_BLK_T_FLUSH, 0);
        let (_, status) = f.run(&[TestDesc::read(HDR, 16), TestDesc::write(STATUS, 1)]);
        assert_eq!(status, VIRTIO_BLK_S_OK as u8);
        assert_eq!(f.block.stats().bytes_written, 512);
    }

    #[test]
    fn header_and_data_may_share_descriptors() {
        let mut f = fixture(false);
        // Header and data in one readable descriptor; status in its own.
        f.header(HDR, VIRTIO_BLK_T_OUT, 0);
        f.mem
            .write_slice(&[7u8; 512], GuestAddress(HDR + 16))
            .unwrap();
        let (_, status) = f.run(&[TestDesc::read(HDR, 528), TestDesc::write(STATUS, 1)]);
        assert_eq!(status, VIRTIO_BLK_S_OK as u8);
        assert_eq!(f.disk_contents()[..512], [7u8; 512]);
        // Read data and status in one writable descriptor.
        f.header(HDR, VIRTIO_BLK_T_IN, 0);
        let (used, _) = f.run(&[TestDesc::read(HDR, 16), TestDesc::write(DATA, 513)]);
        assert_eq!(used, Some((0, 513)));
        assert_eq!(f.mem.read_obj::<u8>(GuestAddress(DATA + 512)).unwrap(), 0);
    }

    #[test]
    fn write_to_read_only_disk_fails_and_leaves_disk_unchanged() {
        let mut f = fixture(true);
        f.header(HDR, VIRTIO_BLK_T_OUT, 0);
        f.mem.write_slice(&[0xff; 512], GuestAddress(DATA)).unwrap();
        let (used, status) = f.run(&[
            TestDesc::read(HDR, 16),
            TestDesc::read(DATA, 512),
            TestDesc::write(STATUS, 1),
        ]);
        assert_eq!(status, VIRTIO_BLK_S_IOERR as u8);
        assert_eq!(used, Some((0, 1)));
        assert_eq!(f.disk_contents(), disk_pattern());
        assert_eq!(f.block.stats().io_errors, 1);
    }

    #[test]
    fn out_of_bounds_and_overflowing_sectors_fail() {
        let mut f = fixture(false);
        for sector in [DISK_SECTORS, DISK_SECTORS - 1, u64::MAX, u64::MAX / 512] {
            f.header(HDR, VIRTIO_BLK_T_OUT, sector);
            let (_, status) = f.run(&[
                TestDesc::read(HDR, 16),
                TestDesc::read(DATA, 1024),
                TestDesc::write(STATUS, 1),
            ]);
            assert_eq!(status, VIRTIO_BLK_S_IOERR as u8, "sector {sector}");
            f.header(HDR, VIRTIO_BLK_T_IN, sector);
            let (_, status) = f.run(&[
                TestDesc::read(HDR, 16),
                TestDesc::write(DATA, 1024),
                TestDesc::write(STATUS, 1),
            ]);
            assert_eq!(status, VIRTIO_BLK_S_IOERR as u8, "sector {sector}");
        }
        assert_eq!(f.disk_contents(), disk_pattern());
    }

    #[test]
    fn write_with_a_buffer_outside_memory_changes_nothing() {
        let mut f = fixture(false);
        f.header(HDR, VIRTIO_BLK_T_OUT, 0);
        f.mem.write_slice(&[1u8; 512], GuestAddress(DATA)).unwrap();
        // The first data buffer is fine, the second lies past guest memory.
        let (_, status) = f.run(&[
            TestDesc::read(HDR, 16),
            TestDesc::read(DATA, 512),
            TestDesc::read((1 << 20) - 256, 512),
            TestDesc::write(STATUS, 1),
        ]);
        assert_eq!(status, VIRTIO_BLK_S_IOERR as u8);
        assert_eq!(f.disk_contents(), disk_pattern());
        // Addresses that overflow u64.
        let (_, status) = f.run(&[
            TestDesc::read(HDR, 16),
            TestDesc::read(u64::MAX - 100, 512),
            TestDesc::write(STATUS, 1),
        ]);
        assert_eq!(status, VIRTIO_BLK_S_IOERR as u8);
        assert_eq!(f.disk_contents(), disk_pattern());
    }

    #[test]
    fn hostile_chain_shapes_are_answered_or_dropped() {
        let mut f = fixture(false);
        f.header(HDR, VIRTIO_BLK_T_IN, 0);
        // Shorter than the header.
        let (used, status) = f.run(&[TestDesc::read(HDR, 8), TestDesc::write(STATUS, 1)]);
        assert_eq!((used, status), (Some((0, 1)), VIRTIO_BLK_S_IOERR as u8));
        // No writable status descriptor at all: dropped, status untouched.
        let (used, status) = f.run(&[TestDesc::read(HDR, 16), TestDesc::read(DATA, 512)]);
        assert_eq!((used, status), (Some((0, 0)), 0xaa));
        // Header in a writable descriptor.
        let (_, status) = f.run(&[TestDesc::write(HDR, 16), TestDesc::write(STATUS, 1)]);
        assert_eq!(status, VIRTIO_BLK_S_IOERR as u8);
        // Read request with device-readable data.
        let (_, status) = f.run(&[
            TestDesc::read(HDR, 16),
            TestDesc::read(DATA, 512),
            TestDesc::write(STATUS, 1),
        ]);
        assert_eq!(status, VIRTIO_BLK_S_IOERR as u8);
        // Readable after writable.
        let (_, status) = f.run(&[
            TestDesc::read(HDR, 16),
            TestDesc::write(DATA, 512),
            TestDesc::read(DATA, 512),
            TestDesc::write(STATUS, 1),
        ]);
        assert_eq!(status, VIRTIO_BLK_S_IOERR as u8);
        // Length not a multiple of the sector size.
        let (_, status) = f.run(&[
            TestDesc::read(HDR, 16),
            TestDesc::write(DATA, 100),
            TestDesc::write(STATUS, 1),
        ]);
        assert_eq!(status, VIRTIO_BLK_S_IOERR as u8);
        // Status outside guest memory: dropped.
        let (used, _) = f.run(&[TestDesc::read(HDR, 16), TestDesc::write(1 << 30, 1)]);
        assert_eq!(used, Some((0, 0)));
        // Header outside guest memory.
        let (_, status) = f.run(&[TestDesc::read(1 << 30, 16), TestDesc::write(STATUS, 1)]);
        assert_eq!(status, VIRTIO_BLK_S_IOERR as u8);
        // Unknown request type.
        f.header(HDR, 0x1234, 0);
        let (_, status) = f.run(&[TestDesc::read(HDR, 16), TestDesc::write(STATUS, 1)]);
        assert_eq!(status, VIRTIO_BLK_S_UNSUPP as u8);
        assert_eq!(f.disk_contents(), disk_pattern());
    }

    #[test]
    fn descriptor_loop_and_next_out_of_range_do_not_hang() {
        use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
        use virtio_queue::desc::split::Descriptor;
        let mut f = fixture(false);
        f.header(HDR, VIRTIO_BLK_T_IN, 0);
        let mem = f.mem.clone();
        let vq = TestQueue::new(mem.as_ref(), 16);
        let next = VRING_DESC_F_NEXT as u16;
        let write = VRING_DESC_F_WRITE as u16;
        // Chain 0 -> 1 -> 0 -> ... (a loop), chain 2 -> 40 (out of range).
        vq.store_desc(0, Descriptor::new(HDR, 16, next, 1));
        vq.store_desc(1, Descriptor::new(DATA, 512, next | write, 0));
        vq.push_avail(0);
        vq.store_desc(2, Descriptor::new(HDR, 16, next, 40));
        vq.push_avail(2);
        f.activate(&vq);
        f.block.process_queue();
        assert_eq!(vq.used_idx(), 2);
        assert_eq!(f.disk_contents(), disk_pattern());
    }

    #[test]
    fn get_id_returns_the_serial() {
        let mut f = fixture(false);
        f.header(HDR, VIRTIO_BLK_T_GET_ID, 0);
        let (used, status) = f.run(&[
            TestDesc::read(HDR, 16),
            TestDesc::write(DATA, 20),
            TestDesc::write(STATUS, 1),
        ]);
        assert_eq!(status, VIRTIO_BLK_S_OK as u8);
        assert_eq!(used, Some((0, 21)));
        let mut id = [0u8; 20];
        f.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id[..11], b"serial-0123");
        assert_eq!(&id[11..], &[0u8; 9]);
    }

    #[test]
    fn builder_rejects_bad_input() {
        let disk = tempfile::tempfile().unwrap();
        assert!(matches!(
            Block::builder(disk).serial("x".repeat(21)).build(),
            Err(Error::SerialTooLong(21))
        ));
        let disk = tempfile::tempfile().unwrap();
        assert!(matches!(
            Block::builder(disk).queue_size(100).build(),
            Err(Error::QueueSize(100))
        ));
        assert!(matches!(
            Block::builder_path("/nonexistent/disk.img").build(),
            Err(Error::Open { .. })
        ));
    }

    #[test]
    fn inactive_device_ignores_processing() {
        let mut f = fixture(false);
        f.block.process_queue();
        assert!(!f.block.is_active());
        let mem = f.mem.clone();
        let vq = TestQueue::new(mem.as_ref(), 16);
        f.activate(&vq);
        assert!(f.block.is_active());
        let q: Queue = vq.create_queue();
        let again = activation(&f.mem, vec![q], f.irq.clone(), 0);
        assert!(f.block.activate(again).is_err());
        f.block.reset();
        assert!(!f.block.is_active());
    }
}
