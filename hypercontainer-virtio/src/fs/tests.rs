//! The device against virtio-queue's mock driver: chains in, replies out.

use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

use super::fuse::{self, encode, opcode, Reader, Wire, ROOT_ID};
use super::test_client::{init_request, request};
use super::*;
use crate::test_utils::{
    activation, add_chain, guest_memory, used_entry, MockInterrupt, TestDesc, TestQueue,
};
use crate::GuestMemoryMmap;

const MEM: usize = 4 << 20;
const HIPRIO_AT: u64 = 0x0;
const REQUEST_AT: u64 = 0x4000;
const REQ: u64 = 0x1_0000;
const REP: u64 = 0x2_0000;
const QSIZE: u16 = 16;

struct Fixture {
    mem: Arc<GuestMemoryMmap>,
    irq: Arc<MockInterrupt>,
    fs: Fs,
    dir: tempfile::TempDir,
    queues: [TestQueue<'static>; 2],
    pushed: [u16; 2],
}

fn driver_queues(mem: &'static GuestMemoryMmap) -> [TestQueue<'static>; 2] {
    let q = [
        TestQueue::create(mem, GuestAddress(HIPRIO_AT), QSIZE),
        TestQueue::create(mem, GuestAddress(REQUEST_AT), QSIZE),
    ];
    for vq in &q {
        vq.mock().avail().idx().store(0);
    }
    q
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hello"), b"hello, guest").unwrap();
        let fs = Fs::new(ShareConfig::new(dir.path(), "share0").queue_size(QSIZE)).unwrap();
        let mem = Arc::new(guest_memory(MEM));
        // The driver views borrow guest memory for the whole test.
        let view: &'static GuestMemoryMmap = Box::leak(Box::new(mem.clone()));
        Self {
            queues: driver_queues(view),
            mem,
            irq: Arc::new(MockInterrupt::new()),
            fs,
            dir,
            pushed: [0, 0],
        }
    }

    /// Activate with fresh rings (as a driver does after a reset).
    fn activate(&mut self) {
        let view: &'static GuestMemoryMmap = Box::leak(Box::new(self.mem.clone()));
        self.queues = driver_queues(view);
        self.pushed = [0, 0];
        let a = activation(
            &self.mem,
            vec![self.queues[0].create_queue(), self.queues[1].create_queue()],
            self.irq.clone(),
            self.fs.features(),
        );
        self.fs.activate(a).unwrap();
    }

    /// Put one chain on queue `q` and run the device; answers the used
    /// length of that chain (`u32::MAX` if it was not used).
    fn run(&mut self, q: usize, descs: &[TestDesc]) -> u32 {
        let i = self.pushed[q];
        self.pushed[q] += 1;
        add_chain(&self.queues[q], (i * 4) % QSIZE, descs);
        self.fs.process_queue(q);
        used_entry(&self.queues[q], i)
            .map(|(_, len)| len)
            .unwrap_or(u32::MAX)
    }

    /// Send `req` on the request queue with a reply buffer of `room` bytes;
    /// answers the reply's error and body.
    fn call(&mut self, req: &[u8], room: u32) -> (i32, Vec<u8>) {
        self.mem.write_slice(req, GuestAddress(REQ)).unwrap();
        let len = self.run(
            REQUEST_QUEUE,
            &[
                TestDesc::read(REQ, req.len() as u32),
                TestDesc::write(REP, room),
            ],
        );
        self.reply(len)
    }

    fn reply(&self, len: u32) -> (i32, Vec<u8>) {
        assert!(len as usize >= fuse::OutHeader::SIZE, "used length {len}");
        let mut buf = vec![0u8; len as usize];
        self.mem.read_slice(&mut buf, GuestAddress(REP)).unwrap();
        let mut r = Reader::new(&buf);
        let h: fuse::OutHeader = r.read().unwrap();
        assert_eq!(h.len, len);
        (h.error, r.rest().to_vec())
    }

    fn init(&mut self) {
        let (err, body) = self.call(&init_request(1), 4096);
        assert_eq!(err, 0);
        assert_eq!(body.len(), fuse::InitOut::SIZE);
    }
}

fn lookup(name: &str) -> Vec<u8> {
    let mut n = name.as_bytes().to_vec();
    n.push(0);
    request(opcode::LOOKUP, 7, ROOT_ID, &n)
}

#[test]
fn config_space_holds_the_tag_and_one_request_queue() {
    let f = Fixture::new();
    assert_eq!(f.fs.device_type(), 26);
    let mut cfg = [0xffu8; 40];
    f.fs.read_config(0, &mut cfg);
    assert_eq!(&cfg[..6], b"share0");
    assert!(cfg[6..36].iter().all(|&b| b == 0));
    assert_eq!(u32::from_le_bytes(cfg[36..40].try_into().unwrap()), 1);
    assert_eq!(f.fs.queue_max_sizes(), &[HIPRIO_QUEUE_SIZE, QSIZE]);
    assert_eq!(f.fs.tag(), "share0");
}

#[test]
fn init_then_lookup_and_read_through_the_request_queue() {
    let mut f = Fixture::new();
    f.activate();
    f.init();
    let (err, body) = f.call(&lookup("hello"), 4096);
    assert_eq!(err, 0);
    let e: fuse::EntryOut = Reader::new(&body).read().unwrap();
    assert_eq!(e.attr.size, 12);
    let open = encode(&fuse::OpenIn {
        flags: libc::O_RDONLY as u32,
        open_flags: 0,
    });
    let (err, body) = f.call(&request(opcode::OPEN, 8, e.nodeid, &open), 4096);
    assert_eq!(err, 0);
    let fh = Reader::new(&body).read::<fuse::OpenOut>().unwrap().fh;
    let read = encode(&fuse::ReadIn {
        fh,
        size: 5,
        ..Default::default()
    });
    let (err, body) = f.call(&request(opcode::READ, 9, e.nodeid, &read), 4096);
    assert_eq!((err, body.as_slice()), (0, &b"hello"[..]));
    assert!(f.irq.used_ring_count() >= 1);
    let st = f.fs.stats();
    assert_eq!((st.chains, st.fuse.ok, st.fuse.bytes_read), (4, 4, 5));
}

/// Open `hello` through the queue; answers (node, fh).
fn open_hello(f: &mut Fixture, flags: i32) -> (u64, u64) {
    let (err, body) = f.call(&lookup("hello"), 4096);
    assert_eq!(err, 0);
    let node = Reader::new(&body).read::<fuse::EntryOut>().unwrap().nodeid;
    let open = encode(&fuse::OpenIn {
        flags: flags as u32,
        open_flags: 0,
    });
    let (err, body) = f.call(&request(opcode::OPEN, 8, node, &open), 4096);
    assert_eq!(err, 0);
    (node, Reader::new(&body).read::<fuse::OpenOut>().unwrap().fh)
}

fn write_head(node: u64, fh: u64, offset: u64, size: u32) -> Vec<u8> {
    let w = encode(&fuse::WriteIn {
        fh,
        offset,
        size,
        ..Default::default()
    });
    let mut req = request(opcode::WRITE, 11, node, &w);
    req[0..4].copy_from_slice(&(80 + size).to_le_bytes());
    req
}

#[test]
fn a_write_payload_goes_from_guest_memory_to_the_file() {
    let mut f = Fixture::new();
    f.activate();
    f.init();
    let (node, fh) = open_hello(&mut f, libc::O_RDWR);
    let head = write_head(node, fh, 7, 10);
    f.mem.write_slice(&head, GuestAddress(REQ)).unwrap();
    f.mem
        .write_slice(b"HOST!", GuestAddress(REQ + 0x1000))
        .unwrap();
    f.mem
        .write_slice(b"12345", GuestAddress(REQ + 0x2000))
        .unwrap();
    let len = f.run(
        REQUEST_QUEUE,
        &[
            TestDesc::read(REQ, 80),
            TestDesc::read(REQ + 0x1000, 5),
            TestDesc::read(REQ + 0x2000, 5),
            TestDesc::write(REP, 4096),
        ],
    );
    let (err, body) = f.reply(len);
    assert_eq!(err, 0);
    assert_eq!(
        Reader::new(&body).read::<fuse::WriteOut>().unwrap().size,
        10
    );
    assert_eq!(
        std::fs::read(f.dir.path().join("hello")).unwrap(),
        b"hello, HOST!12345"
    );
    assert_eq!(f.fs.stats().fuse.bytes_written, 10);
    // A size past the payload is refused before anything is written.
    let head = write_head(node, fh, 0, 4000);
    f.mem.write_slice(&head, GuestAddress(REQ)).unwrap();
    let len = f.run(
        REQUEST_QUEUE,
        &[
            TestDesc::read(REQ, 80),
            TestDesc::read(REQ + 0x1000, 5),
            TestDesc::write(REP, 4096),
        ],
    );
    assert_eq!(f.reply(len).0, -libc::EINVAL);
    assert_eq!(
        std::fs::read(f.dir.path().join("hello")).unwrap(),
        b"hello, HOST!12345"
    );
}

#[test]
fn read_data_lands_after_the_header_across_descriptors_up_to_end_of_file() {
    let mut f = Fixture::new();
    f.activate();
    f.init();
    let (node, fh) = open_hello(&mut f, libc::O_RDONLY);
    let read = |size: u32| {
        request(
            opcode::READ,
            12,
            node,
            &encode(&fuse::ReadIn {
                fh,
                offset: 2,
                size,
                ..Default::default()
            }),
        )
    };
    let req = read(100);
    f.mem.write_slice(&req, GuestAddress(REQ)).unwrap();
    let len = f.run(
        REQUEST_QUEUE,
        &[
            TestDesc::read(REQ, req.len() as u32),
            TestDesc::write(REP, 16),
            TestDesc::write(REP + 0x1000, 4),
            TestDesc::write(REP + 0x2000, 96),
        ],
    );
    assert_eq!(len, 16 + 10);
    let mut h = [0u8; 16];
    f.mem.read_slice(&mut h, GuestAddress(REP)).unwrap();
    let h: fuse::OutHeader = Reader::new(&h).read().unwrap();
    assert_eq!((h.error, h.len), (0, 26));
    let mut a = [0u8; 4];
    let mut b = [0u8; 6];
    f.mem
        .read_slice(&mut a, GuestAddress(REP + 0x1000))
        .unwrap();
    f.mem
        .read_slice(&mut b, GuestAddress(REP + 0x2000))
        .unwrap();
    assert_eq!([&a[..], &b[..]].concat(), b"llo, guest");
    // More than the buffers hold: EIO, nothing read.
    let req = read(100);
    f.mem.write_slice(&req, GuestAddress(REQ)).unwrap();
    let len = f.run(
        REQUEST_QUEUE,
        &[
            TestDesc::read(REQ, req.len() as u32),
            TestDesc::write(REP, 16 + 50),
        ],
    );
    assert_eq!(f.reply(len).0, -libc::EIO);
}

#[test]
fn a_zero_copy_write_to_a_read_only_share_is_erofs() {
    let mut f = Fixture::new();
    f.fs = Fs::new(
        ShareConfig::new(f.dir.path(), "ro")
            .read_only(true)
            .queue_size(QSIZE),
    )
    .unwrap();
    f.activate();
    f.init();
    let (node, fh) = open_hello(&mut f, libc::O_RDONLY);
    let head = write_head(node, fh, 0, 5);
    f.mem.write_slice(&head, GuestAddress(REQ)).unwrap();
    f.mem.write_slice(b"XXXXX", GuestAddress(REQ + 80)).unwrap();
    let len = f.run(
        REQUEST_QUEUE,
        &[TestDesc::read(REQ, 85), TestDesc::write(REP, 4096)],
    );
    assert_eq!(f.reply(len).0, -libc::EROFS);
    assert_eq!(
        std::fs::read(f.dir.path().join("hello")).unwrap(),
        b"hello, guest"
    );
}

#[test]
fn requests_and_replies_may_be_split_across_descriptors() {
    let mut f = Fixture::new();
    f.activate();
    let req = init_request(1);
    f.mem.write_slice(&req[..10], GuestAddress(REQ)).unwrap();
    f.mem
        .write_slice(&req[10..], GuestAddress(REQ + 0x1000))
        .unwrap();
    let len = f.run(
        REQUEST_QUEUE,
        &[
            TestDesc::read(REQ, 10),
            TestDesc::read(REQ + 0x1000, (req.len() - 10) as u32),
            TestDesc::write(REP, 7),
            TestDesc::write(REP + 7, 100),
        ],
    );
    assert_eq!(len as usize, fuse::OutHeader::SIZE + fuse::InitOut::SIZE);
    assert_eq!(f.reply(len).0, 0);
}

#[test]
fn a_request_in_an_indirect_table_is_served() {
    use virtio_bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    let mut f = Fixture::new();
    f.activate();
    let req = init_request(1);
    f.mem.write_slice(&req, GuestAddress(REQ)).unwrap();
    let table = 0x3_0000u64;
    let raw = |addr: u64, len: u32, flags: u32, next: u16| {
        let mut d = addr.to_le_bytes().to_vec();
        d.extend(len.to_le_bytes());
        d.extend((flags as u16).to_le_bytes());
        d.extend(next.to_le_bytes());
        d
    };
    let mut t = raw(REQ, req.len() as u32, VRING_DESC_F_NEXT, 1);
    t.extend(raw(REP, 4096, VRING_DESC_F_WRITE, 0));
    f.mem.write_slice(&t, GuestAddress(table)).unwrap();
    let q = &f.queues[REQUEST_QUEUE];
    q.store_desc(
        0,
        virtio_queue::desc::split::Descriptor::new(table, 32, VRING_DESC_F_INDIRECT as u16, 0),
    );
    q.push_avail(0);
    f.fs.process_queue(REQUEST_QUEUE);
    let (_, len) = used_entry(&f.queues[REQUEST_QUEUE], 0).unwrap();
    assert_eq!(f.reply(len).0, 0);
    assert_ne!(f.fs.features() & INDIRECT_DESC, 0);
}

#[test]
fn an_oversize_request_is_answered_e2big_unread() {
    let mut f = Fixture::new();
    f.activate();
    f.init();
    let mut w = encode(&fuse::WriteIn {
        size: (server::MAX_REQUEST) as u32,
        ..Default::default()
    });
    w.extend_from_slice(&[0u8; 64]);
    let req = request(opcode::WRITE, 5, ROOT_ID, &w);
    f.mem.write_slice(&req, GuestAddress(REQ)).unwrap();
    let big = (server::MAX_REQUEST + 1) as u32;
    let len = f.run(
        REQUEST_QUEUE,
        &[TestDesc::read(REQ, big), TestDesc::write(0x3f_0000, 64)],
    );
    let mut h = [0u8; 16];
    f.mem.read_slice(&mut h, GuestAddress(0x3f_0000)).unwrap();
    let h: fuse::OutHeader = Reader::new(&h).read().unwrap();
    assert_eq!((len, h.error, h.unique), (16, -libc::E2BIG, 5));
    assert_eq!(f.fs.stats().oversize, 1);
}

#[test]
fn a_reply_larger_than_its_buffer_becomes_eio() {
    let mut f = Fixture::new();
    f.activate();
    f.init();
    // Lookup replies 16 + 128 bytes; give it 40.
    let (err, body) = f.call(&lookup("hello"), 40);
    assert_eq!((err, body.len()), (-libc::EIO, 0));
    assert_eq!(f.fs.stats().truncated, 1);
}

#[test]
fn chains_without_room_for_a_reply_or_outside_memory_are_dropped() {
    let mut f = Fixture::new();
    f.activate();
    f.init();
    let req = lookup("hello");
    f.mem.write_slice(&req, GuestAddress(REQ)).unwrap();
    let n = req.len() as u32;
    let shapes: [&[TestDesc]; 4] = [
        &[TestDesc::read(REQ, n)],
        &[TestDesc::read(REQ, n), TestDesc::write(REP, 8)],
        &[TestDesc::read(REQ, n), TestDesc::write(MEM as u64 - 8, 200)],
        &[TestDesc::read(u64::MAX - 16, n), TestDesc::write(REP, 200)],
    ];
    for (i, descs) in shapes.iter().enumerate() {
        assert_eq!(f.run(REQUEST_QUEUE, descs), 0, "shape {i}");
    }
    assert_eq!(f.fs.stats().dropped, 4);
    // Short requests: no header (no reply possible), or a short body.
    f.mem.write_slice(&req, GuestAddress(REQ)).unwrap();
    assert_eq!(
        f.run(
            REQUEST_QUEUE,
            &[TestDesc::read(REQ, 20), TestDesc::write(REP, 200)]
        ),
        0
    );
    let mut short = req.clone();
    short[0..4].copy_from_slice(&40u32.to_le_bytes());
    let (err, _) = f.call(&short[..40], 200);
    assert_eq!(err, -libc::EINVAL);
    // The device still works.
    assert_eq!(f.call(&lookup("hello"), 4096).0, 0);
}

#[test]
fn a_readable_descriptor_after_a_writable_one_is_einval() {
    let mut f = Fixture::new();
    f.activate();
    f.init();
    let req = lookup("hello");
    f.mem.write_slice(&req, GuestAddress(REQ)).unwrap();
    let len = f.run(
        REQUEST_QUEUE,
        &[
            TestDesc::read(REQ, 40),
            TestDesc::write(REP, 200),
            TestDesc::read(REQ + 40, req.len() as u32 - 40),
        ],
    );
    assert_eq!(f.reply(len).0, -libc::EINVAL);
}

#[test]
fn forgets_on_the_hiprio_queue_get_no_reply_and_drop_the_node() {
    let mut f = Fixture::new();
    f.activate();
    f.init();
    let (_, body) = f.call(&lookup("hello"), 4096);
    let node = Reader::new(&body).read::<fuse::EntryOut>().unwrap().nodeid;
    let forget = request(
        opcode::FORGET,
        0,
        node,
        &encode(&fuse::ForgetIn { nlookup: 1 }),
    );
    f.mem.write_slice(&forget, GuestAddress(REQ)).unwrap();
    let used = f.run(HIPRIO_QUEUE, &[TestDesc::read(REQ, forget.len() as u32)]);
    assert_eq!(used, 0);
    let (err, _) = f.call(&request(opcode::GETATTR, 3, node, &[0u8; 16]), 4096);
    assert_eq!(err, -libc::EBADF);
    assert_eq!(f.fs.stats().fuse.forgets, 1);
}

#[test]
fn a_reset_ends_the_session_until_the_next_init() {
    let mut f = Fixture::new();
    f.activate();
    f.init();
    f.fs.reset();
    assert!(!f.fs.is_active());
    f.activate();
    let (err, _) = f.call(&request(opcode::GETATTR, 3, ROOT_ID, &[0u8; 16]), 4096);
    assert_eq!(err, -libc::EIO);
    f.init();
    let (err, _) = f.call(&request(opcode::GETATTR, 4, ROOT_ID, &[0u8; 16]), 4096);
    assert_eq!(err, 0);
}

#[test]
fn share_settings_are_validated_before_the_directory_is_opened() {
    let missing = "/nonexistent/share";
    let bad_tag = |t: &str| matches!(Fs::new(ShareConfig::new(missing, t)), Err(Error::Tag(_)));
    assert!(bad_tag(""));
    assert!(bad_tag(&"t".repeat(37)));
    assert!(bad_tag("a\0b"));
    assert!(matches!(
        Fs::new(ShareConfig::new(missing, "t").queue_size(100)),
        Err(Error::QueueSize(100))
    ));
    assert!(matches!(
        Fs::new(ShareConfig::new(missing, "t").max_open_fds(1)),
        Err(Error::MaxOpenFds(1))
    ));
    assert!(matches!(
        Fs::new(ShareConfig::new(missing, "t")),
        Err(Error::Open { .. })
    ));
    let file = tempfile::NamedTempFile::new().unwrap();
    assert!(matches!(
        Fs::new(ShareConfig::new(file.path(), "t")),
        Err(Error::Open { .. })
    ));
    let f = Fixture::new();
    assert!(Fs::new(ShareConfig::new(f.dir.path(), "t".repeat(36))).is_ok());
}

#[test]
fn a_read_only_share_refuses_writes_from_the_queue() {
    let mut f = Fixture::new();
    f.fs = Fs::new(
        ShareConfig::new(f.dir.path(), "ro")
            .read_only(true)
            .queue_size(QSIZE),
    )
    .unwrap();
    f.activate();
    f.init();
    let mut body = encode(&fuse::MkdirIn {
        mode: 0o755,
        umask: 0,
    });
    body.extend_from_slice(b"new\0");
    let (err, _) = f.call(&request(opcode::MKDIR, 2, ROOT_ID, &body), 4096);
    assert_eq!(err, -libc::EROFS);
    assert!(!f.dir.path().join("new").exists());
}

#[test]
fn handles_are_send() {
    fn is_send<T: Send>() {}
    is_send::<Fs>();
    is_send::<Queue>();
}

#[test]
fn a_multi_share_device_serves_its_shares_through_the_request_queue() {
    let mut f = Fixture::new();
    let cfg = MultiShareConfig::new("vols")
        .queue_size(QSIZE)
        .share("data", ShareConfig::new(f.dir.path(), ""));
    f.fs = Fs::multi(cfg).unwrap();
    f.activate();
    f.init();
    // The file lives in the share, not in the virtual root.
    assert_eq!(f.call(&lookup("hello"), 4096).0, -libc::ENOENT);
    let (err, body) = f.call(&lookup("data"), 4096);
    assert_eq!(err, 0);
    let data = Reader::new(&body).read::<fuse::EntryOut>().unwrap().nodeid;
    let (err, body) = f.call(&request(opcode::LOOKUP, 8, data, b"hello\0"), 4096);
    assert_eq!(err, 0);
    assert_eq!(
        Reader::new(&body)
            .read::<fuse::EntryOut>()
            .unwrap()
            .attr
            .size,
        12
    );
    // A share added while the device runs answers the next request.
    let shares = f.fs.shares().unwrap();
    shares
        .add("more", ShareConfig::new(f.dir.path(), ""))
        .unwrap();
    assert_eq!(f.call(&lookup("more"), 4096).0, 0);
}
