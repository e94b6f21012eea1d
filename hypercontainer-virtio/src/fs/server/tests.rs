//! The session table, INIT and request validation.

use super::*;

struct Null;
impl FileSystem for Null {}

fn request(op: u32, unique: u64, body: &[u8]) -> Vec<u8> {
    let mut v = encode(&InHeader {
        len: (InHeader::SIZE + body.len()) as u32,
        opcode: op,
        unique,
        nodeid: fuse::ROOT_ID,
        ..Default::default()
    });
    v.extend_from_slice(body);
    v
}

fn init_body(minor: u32) -> Vec<u8> {
    encode(&fuse::InitIn {
        major: 7,
        minor,
        max_readahead: 1 << 17,
        flags: u32::MAX,
    })
}

fn error_of(reply: &[u8]) -> i32 {
    Reader::new(reply).read::<fuse::OutHeader>().unwrap().error
}

fn example(class: Class) -> Vec<u8> {
    match class {
        Class::Init => request(opcode::INIT, 1, &init_body(36)),
        Class::Destroy => request(opcode::DESTROY, 2, &[]),
        Class::NoReply => request(opcode::FORGET, 3, &encode(&fuse::ForgetIn { nlookup: 1 })),
        Class::Operation => request(opcode::GETATTR, 4, &[0u8; 16]),
    }
}

#[test]
fn every_table_transition_is_accepted_and_others_refused() {
    let classes = [
        Class::Init,
        Class::Destroy,
        Class::NoReply,
        Class::Operation,
    ];
    for phase in [Phase::AwaitingInit, Phase::Running] {
        for class in classes {
            let mut s = Server::new(Box::new(Null), ServerOptions::default());
            if phase == Phase::Running {
                s.handle(&example(Class::Init)).unwrap();
            }
            let before = s.stats();
            let reply = s.handle(&example(class));
            let allowed = PHASE_TRANSITIONS
                .iter()
                .any(|&(p, c, _)| p == phase && c == class);
            let refused = s.stats().refused - before.refused;
            assert_eq!(refused, u64::from(!allowed), "{phase:?} {class:?}");
            if let (false, Some(r)) = (allowed, reply) {
                assert_eq!(error_of(&r), -libc::EIO);
            }
        }
    }
}

#[test]
fn init_negotiates_the_minor_version_and_max_write() {
    let mut s = Server::new(Box::new(Null), ServerOptions::default());
    let reply = s.handle(&request(opcode::INIT, 9, &init_body(38))).unwrap();
    let mut r = Reader::new(&reply);
    let h: fuse::OutHeader = r.read().unwrap();
    assert_eq!((h.error, h.unique, h.len as usize), (0, 9, 16 + 64));
    let out: fuse::InitOut = r.read().unwrap();
    assert_eq!((out.major, out.minor, out.max_write), (7, 36, MAX_WRITE));
    assert_eq!(out.flags & init_flags::POSIX_LOCKS, init_flags::POSIX_LOCKS);
    // The device clears privileges itself on write, truncate and chown.
    assert_ne!(out.flags & init_flags::HANDLE_KILLPRIV_V2, 0);
    assert_eq!(s.phase(), Phase::Running);
    let old = Server::new(Box::new(Null), ServerOptions::default())
        .handle(&request(opcode::INIT, 1, &init_body(20)))
        .unwrap();
    assert_eq!(error_of(&old), -libc::EINVAL);
}

#[test]
fn unknown_opcodes_are_enosys_and_short_requests_einval() {
    let mut s = Server::new(Box::new(Null), ServerOptions::default());
    s.handle(&example(Class::Init)).unwrap();
    let r = s.handle(&request(4242, 5, &[])).unwrap();
    assert_eq!(error_of(&r), -libc::ENOSYS);
    // A write whose data is shorter than it claims.
    let mut w = encode(&fuse::WriteIn {
        size: 100,
        ..Default::default()
    });
    w.extend_from_slice(&[1, 2, 3]);
    let r = s.handle(&request(opcode::WRITE, 6, &w)).unwrap();
    assert_eq!(error_of(&r), -libc::EINVAL);
    // A header claiming more bytes than were received.
    let mut lie = request(opcode::GETATTR, 7, &[0u8; 16]);
    lie[0..4].copy_from_slice(&1000u32.to_le_bytes());
    assert_eq!(error_of(&s.handle(&lie).unwrap()), -libc::EINVAL);
    // Not even a header: no reply, counted.
    assert!(s.handle(&[0u8; 12]).is_none());
    assert_eq!(s.stats().malformed, 3);
    assert_eq!(s.stats().unsupported, 1);
}

#[test]
fn a_batch_forget_with_a_huge_count_is_refused_without_allocating() {
    let mut s = Server::new(Box::new(Null), ServerOptions::default());
    s.handle(&example(Class::Init)).unwrap();
    let b = encode(&fuse::BatchForgetIn {
        count: u32::MAX,
        dummy: 0,
    });
    assert!(s.handle(&request(opcode::BATCH_FORGET, 1, &b)).is_none());
    assert_eq!(s.stats().malformed, 1);
    assert_eq!(s.stats().forgets, 0);
}

#[test]
fn overlong_names_are_enametoolong() {
    let mut s = Server::new(Box::new(Null), ServerOptions::default());
    s.handle(&example(Class::Init)).unwrap();
    let mut n = vec![b'a'; NAME_MAX + 1];
    n.push(0);
    let r = s.handle(&request(opcode::LOOKUP, 1, &n)).unwrap();
    assert_eq!(error_of(&r), -libc::ENAMETOOLONG);
}
