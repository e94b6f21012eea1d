//! One descriptor chain through the server: split it into the request
//! (device-readable) and reply (device-writable) buffers, check that all
//! of them lie in guest memory, and move the bytes.
//!
//! File data does not take a detour: the payload of a WRITE goes from
//! guest memory to the file, and the data of a READ from the file into
//! the reply buffers after the header ([`GuestSource`], [`GuestSink`]).
//! Everything else is copied out (at most [`server::MAX_REQUEST`] bytes)
//! and the reply copied back in.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};

use log::debug;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::filesystem::{FileSystem, ReadSink, WriteSource};
use super::fuse::{self, opcode, InHeader, Reader, Wire};
use super::server::{self, Data, Server};
use super::FsStats;
use crate::queue_util::Chain;
use crate::GuestMemoryMmap;

/// Header and arguments of a WRITE: what is copied out of a write request.
const WRITE_HEAD: usize = InHeader::SIZE + fuse::WriteIn::SIZE;

/// A run of guest memory.
#[derive(Clone, Copy, Debug)]
struct Segment {
    addr: GuestAddress,
    len: usize,
}

fn in_memory(mem: &GuestMemoryMmap, segs: &[Segment]) -> bool {
    segs.iter()
        .all(|s| GuestMemoryBackend::check_range(mem, s.addr, s.len))
}

fn total(segs: &[Segment]) -> usize {
    segs.iter().map(|s| s.len).fold(0, usize::saturating_add)
}

/// `segs` without their first `n` bytes.
fn skip(segs: &[Segment], mut n: usize) -> Vec<Segment> {
    let mut out = Vec::with_capacity(segs.len());
    for s in segs {
        if n >= s.len {
            n -= s.len;
            continue;
        }
        out.push(Segment {
            addr: s.addr.unchecked_add(n as u64),
            len: s.len - n,
        });
        n = 0;
    }
    out
}

fn mem_err(e: vm_memory::GuestMemoryError) -> io::Error {
    io::Error::other(e)
}

fn read_segments(mem: &GuestMemoryMmap, segs: &[Segment], out: &mut [u8]) -> io::Result<()> {
    let mut pos = 0;
    for s in segs {
        if pos == out.len() {
            break;
        }
        let n = s.len.min(out.len() - pos);
        mem.read_slice(&mut out[pos..pos + n], s.addr)
            .map_err(mem_err)?;
        pos += n;
    }
    Ok(())
}

fn write_segments(mem: &GuestMemoryMmap, segs: &[Segment], data: &[u8]) -> io::Result<usize> {
    let mut pos = 0;
    for s in segs {
        if pos == data.len() {
            break;
        }
        let n = s.len.min(data.len() - pos);
        mem.write_slice(&data[pos..pos + n], s.addr)
            .map_err(mem_err)?;
        pos += n;
    }
    Ok(pos)
}

/// The payload of a WRITE, in guest memory (already checked to lie in it).
pub(super) struct GuestSource<'a> {
    mem: &'a GuestMemoryMmap,
    segs: Vec<Segment>,
}

impl WriteSource for GuestSource<'_> {
    fn len(&self) -> usize {
        total(&self.segs)
    }

    fn write_file(&mut self, file: &File, offset: u64, len: usize) -> io::Result<usize> {
        let mut f = file;
        f.seek(SeekFrom::Start(offset))?;
        let mut left = len;
        for s in &self.segs {
            if left == 0 {
                break;
            }
            let n = s.len.min(left);
            self.mem
                .write_all_volatile_to(s.addr, &mut f, n)
                .map_err(mem_err)?;
            left -= n;
        }
        Ok(len - left)
    }

    fn to_vec(&mut self, len: usize) -> io::Result<Vec<u8>> {
        let mut v = vec![0u8; len.min(self.len())];
        read_segments(self.mem, &self.segs, &mut v)?;
        Ok(v)
    }
}

/// The reply buffers after the header, for READ data.
pub(super) struct GuestSink<'a> {
    mem: &'a GuestMemoryMmap,
    segs: Vec<Segment>,
}

impl ReadSink for GuestSink<'_> {
    fn capacity(&self) -> usize {
        total(&self.segs)
    }

    fn read_file(&mut self, file: &File, offset: u64, len: usize) -> io::Result<usize> {
        let mut f = file;
        f.seek(SeekFrom::Start(offset))?;
        let mut done = 0;
        let mut left = len.min(self.capacity());
        for s in &self.segs {
            let mut pos = 0;
            while pos < s.len && left > 0 {
                let want = (s.len - pos).min(left);
                let at = s.addr.unchecked_add(pos as u64);
                let n = self
                    .mem
                    .read_volatile_from(at, &mut f, want)
                    .map_err(mem_err)?;
                if n == 0 {
                    return Ok(done);
                }
                pos += n;
                done += n;
                left -= n;
            }
        }
        Ok(done)
    }

    fn put(&mut self, data: &[u8]) -> io::Result<usize> {
        write_segments(
            self.mem,
            &self.segs,
            &data[..data.len().min(self.capacity())],
        )
    }
}

/// Serve one chain; answers the bytes written into it.
pub(super) fn execute(
    server: &mut Server<dyn FileSystem>,
    stats: &mut FsStats,
    mem: &GuestMemoryMmap,
    chain: Chain,
) -> u32 {
    stats.chains += 1;
    let mut readable = Vec::new();
    let mut writable = Vec::new();
    let mut order_ok = true;
    for d in &chain.descs {
        let seg = Segment {
            addr: d.addr(),
            len: d.len() as usize,
        };
        if d.is_write_only() {
            writable.push(seg);
        } else if writable.is_empty() {
            readable.push(seg);
        } else {
            order_ok = false;
        }
    }
    if !in_memory(mem, &readable) || !in_memory(mem, &writable) {
        debug!("virtio-fs: chain {} outside guest memory", chain.head);
        stats.dropped += 1;
        return 0;
    }
    let in_len = total(&readable);
    let out_len = total(&writable);
    let oversize = in_len > server::MAX_REQUEST;
    // Look at the header (and a write's arguments) first.
    let mut head = vec![0u8; in_len.min(WRITE_HEAD)];
    if read_segments(mem, &readable, &mut head).is_err() {
        stats.dropped += 1;
        return 0;
    }
    let op = Reader::new(&head).read::<InHeader>().map(|h| h.opcode);
    let reply = if oversize || !order_ok {
        let unique = Reader::new(&head).read::<InHeader>().map(|h| h.unique);
        let errno = if oversize {
            stats.oversize += 1;
            libc::E2BIG
        } else {
            libc::EINVAL
        };
        unique.ok().map(|u| server::error_reply(u, errno))
    } else if op == Ok(opcode::WRITE) && in_len > WRITE_HEAD {
        let mut src = GuestSource {
            mem,
            segs: skip(&readable, WRITE_HEAD),
        };
        server.handle_with(&head, Data::Write(&mut src))
    } else {
        let mut request = head;
        if in_len > request.len() {
            request.resize(in_len, 0);
            if read_segments(mem, &readable, &mut request).is_err() {
                stats.dropped += 1;
                return 0;
            }
        }
        if op == Ok(opcode::READ) && out_len >= fuse::OutHeader::SIZE {
            let mut sink = GuestSink {
                mem,
                segs: skip(&writable, fuse::OutHeader::SIZE),
            };
            server.handle_with(&request, Data::Read(&mut sink))
        } else {
            server.handle(&request)
        }
    };
    let Some(mut reply) = reply else {
        stats.dropped += 1;
        return 0;
    };
    if reply.len() > out_len {
        let unique = Reader::new(&reply)
            .read::<fuse::OutHeader>()
            .map(|h| h.unique)
            .unwrap_or(0);
        reply = server::error_reply(unique, libc::EIO);
        stats.truncated += 1;
        if reply.len() > out_len {
            stats.dropped += 1;
            return 0;
        }
    }
    // A READ's data is already in place: the header's length counts it.
    let claimed = Reader::new(&reply)
        .read::<fuse::OutHeader>()
        .map(|h| h.len as usize)
        .unwrap_or(0);
    match write_segments(mem, &writable, &reply) {
        Ok(_) => claimed.max(reply.len()).min(out_len) as u32,
        Err(_) => {
            stats.dropped += 1;
            0
        }
    }
}
