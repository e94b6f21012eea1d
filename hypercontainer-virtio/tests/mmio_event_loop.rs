//! The wiring a VMM does: a device behind the MMIO transport, driven
//! through its registers like a guest driver would, with the device running
//! on an event-manager loop, notified through the queue event fds and
//! interrupting through an event fd (an irqfd stand-in).

use std::io::Write;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use hypercontainer_virtio::block::Block;
use hypercontainer_virtio::fs::fuse::{self, opcode, InHeader, Reader, Wire};
use hypercontainer_virtio::fs::{Fs, ShareConfig};
use hypercontainer_virtio::test_utils::{add_chain, guest_memory, used_entry, TestDesc, TestQueue};
use hypercontainer_virtio::transport::mmio::{status, MmioTransport, QUEUE_NOTIFY_OFFSET};
use hypercontainer_virtio::VirtioDevice;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

fn r(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn w(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

/// Initialise the device the way Linux's virtio-mmio driver does.
fn driver_init(t: &mut MmioTransport, vq: &TestQueue<'_>) {
    driver_init_queues(t, &[vq]);
}

/// The same, for a device with several queues.
fn driver_init_queues(t: &mut MmioTransport, queues: &[&TestQueue<'_>]) {
    w(t, 0x70, 0);
    w(t, 0x70, u32::from(status::ACKNOWLEDGE));
    w(t, 0x70, u32::from(status::ACKNOWLEDGE | status::DRIVER));
    w(t, 0x14, 0);
    let low = r(t, 0x10);
    w(t, 0x14, 1);
    let high = r(t, 0x10);
    assert_eq!(high & 1, 1, "VIRTIO_F_VERSION_1 offered");
    w(t, 0x24, 0);
    w(t, 0x20, low);
    w(t, 0x24, 1);
    w(t, 0x20, high);
    let feat = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    w(t, 0x70, u32::from(feat));
    assert_eq!(r(t, 0x70), u32::from(feat));
    for (i, vq) in queues.iter().enumerate() {
        w(t, 0x30, i as u32);
        assert!(r(t, 0x34) >= u32::from(vq.size()));
        w(t, 0x38, u32::from(vq.size()));
        let split = |a: GuestAddress| (a.0 as u32, (a.0 >> 32) as u32);
        let (lo, hi) = split(vq.desc_table_addr());
        w(t, 0x80, lo);
        w(t, 0x84, hi);
        let (lo, hi) = split(vq.avail_addr());
        w(t, 0x90, lo);
        w(t, 0x94, hi);
        let (lo, hi) = split(vq.used_addr());
        w(t, 0xa0, lo);
        w(t, 0xa4, hi);
        w(t, 0x44, 1);
        assert_eq!(r(t, 0x44), 1);
    }
    w(t, 0x70, u32::from(feat | status::DRIVER_OK));
    assert!(t.is_activated());
}

fn run(em: &mut EventManager<Subscriber>) {
    for _ in 0..10 {
        if em.run_with_timeout(0).unwrap() == 0 {
            break;
        }
    }
}

#[test]
fn block_read_through_transport_and_event_loop() {
    let mem = Arc::new(guest_memory(4 << 20));
    let mut disk = tempfile::NamedTempFile::new().unwrap();
    let pattern: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 239) as u8).collect();
    disk.write_all(&pattern).unwrap();
    let block = Arc::new(Mutex::new(
        Block::builder_path(disk.path())
            .queue_size(16)
            .serial("it-disk")
            .build()
            .unwrap(),
    ));
    let irq = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let mut t = MmioTransport::new(mem.clone(), block.clone(), irq.clone()).unwrap();
    let mut em = EventManager::<Subscriber>::new().unwrap();
    em.add_subscriber(block.clone());

    let capacity = {
        let mut b = [0u8; 8];
        t.read(0x100, &mut b);
        u64::from_le_bytes(b)
    };
    assert_eq!(capacity, (1 << 20) / 512);

    for round in 0..2u64 {
        let vq = TestQueue::new(mem.as_ref(), 16);
        driver_init(&mut t, &vq);
        run(&mut em);

        let mut hdr = [0u8; 16];
        hdr[8..16].copy_from_slice(&(round * 8).to_le_bytes());
        mem.write_slice(&hdr, GuestAddress(0x10_0000)).unwrap();
        add_chain(
            &vq,
            0,
            &[
                TestDesc::read(0x10_0000, 16),
                TestDesc::write(0x20_0000, 4096),
                TestDesc::write(0x30_0000, 1),
            ],
        );
        // A KVM ioeventfd would signal this event fd on a QueueNotify write
        // with datamatch 0; the register path must do the same.
        let (index, _evt) = t.queue_notify_events().next().unwrap();
        assert_eq!(index, 0);
        w(&mut t, QUEUE_NOTIFY_OFFSET, 0);
        run(&mut em);

        assert_eq!(used_entry(&vq, 0), Some((0, 4097)));
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x30_0000)).unwrap(), 0);
        let mut data = vec![0u8; 4096];
        mem.read_slice(&mut data, GuestAddress(0x20_0000)).unwrap();
        let start = (round * 4096) as usize;
        assert_eq!(data, pattern[start..start + 4096]);
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(r(&mut t, 0x60), 1);
        w(&mut t, 0x64, 1);
        assert_eq!(r(&mut t, 0x60), 0);

        // Driver reset; the next round activates again.
        w(&mut t, 0x70, 0);
        run(&mut em);
        assert!(!block.lock().unwrap().is_active());
    }
}

#[test]
fn fs_init_and_lookup_through_transport_and_event_loop() {
    let mem = Arc::new(guest_memory(4 << 20));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"x").unwrap();
    let fs = Arc::new(Mutex::new(
        Fs::new(ShareConfig::new(dir.path(), "vol0").queue_size(16)).unwrap(),
    ));
    let irq = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let mut t = MmioTransport::new(mem.clone(), fs.clone(), irq.clone()).unwrap();
    let mut em = EventManager::<Subscriber>::new().unwrap();
    em.add_subscriber(fs.clone());
    assert_eq!(r(&mut t, 0x08), 26);
    let mut tag = [0u8; 36];
    t.read(0x100, &mut tag);
    assert_eq!(&tag[..5], b"vol0\0");

    let hiprio = TestQueue::create(mem.as_ref(), GuestAddress(0), 16);
    let requests = TestQueue::create(mem.as_ref(), GuestAddress(0x8000), 16);
    driver_init_queues(&mut t, &[&hiprio, &requests]);
    run(&mut em);

    let request = |op: u32, unique: u64, body: &[u8]| {
        let mut v = Vec::new();
        InHeader {
            len: (InHeader::SIZE + body.len()) as u32,
            opcode: op,
            unique,
            nodeid: fuse::ROOT_ID,
            ..Default::default()
        }
        .put(&mut v);
        v.extend_from_slice(body);
        v
    };
    let mut init = Vec::new();
    fuse::InitIn {
        major: 7,
        minor: 36,
        max_readahead: 0,
        flags: 0,
    }
    .put(&mut init);
    for (i, req) in [
        request(opcode::INIT, 1, &init),
        request(opcode::LOOKUP, 2, b"f\0"),
    ]
    .iter()
    .enumerate()
    {
        mem.write_slice(req, GuestAddress(0x10_0000)).unwrap();
        add_chain(
            &requests,
            (i * 2) as u16,
            &[
                TestDesc::read(0x10_0000, req.len() as u32),
                TestDesc::write(0x20_0000, 4096),
            ],
        );
        w(&mut t, QUEUE_NOTIFY_OFFSET, 1);
        run(&mut em);
        let (_, len) = used_entry(&requests, i as u16).expect("request served");
        let mut reply = vec![0u8; len as usize];
        mem.read_slice(&mut reply, GuestAddress(0x20_0000)).unwrap();
        let h: fuse::OutHeader = Reader::new(&reply).read().unwrap();
        assert_eq!((h.error, h.unique), (0, i as u64 + 1));
    }
    assert!(irq.read().unwrap() >= 1);
    assert_eq!(fs.lock().unwrap().stats().fuse.ok, 2);

    w(&mut t, 0x70, 0);
    run(&mut em);
    assert!(!fs.lock().unwrap().is_active());
}
