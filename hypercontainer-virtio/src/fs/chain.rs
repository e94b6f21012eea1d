//! One descriptor chain through the server: split it into the request
//! (device-readable) and reply (device-writable) buffers, check that all
//! of them lie in guest memory, and move the bytes.
//!
//! File data does not take a detour: the payload of a WRITE goes from
//! guest memory to the file, and the data of a READ from the file into
//! the reply buffers after the header ([`GuestSource`], [`GuestSink`]),
//! each in one `pwritev`/`preadv` over all the chain's buffers (a guest
//! hands one descriptor per page: 256 for a 1 MiB request).
//! Everything else is copied out (at most [`server::MAX_REQUEST`] bytes)
//! and the reply copied back in.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;

use log::debug;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, VolatileSlice};

use super::filesystem::{FileSystem, ReadSink, WriteSource};
use super::fuse::{self, opcode, InHeader, Reader, Wire};
use super::passthrough::sys;
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

/// The guest memory of the first `len` bytes of `segs` as slices, one
/// `preadv`/`pwritev` buffer each (a segment spanning two memory regions
/// gives two).
fn slices<'m>(
    mem: &'m GuestMemoryMmap,
    segs: &[Segment],
    len: usize,
) -> io::Result<Vec<VolatileSlice<'m>>> {
    let mut out = Vec::with_capacity(segs.len());
    let mut left = len;
    for s in segs {
        if left == 0 {
            break;
        }
        let n = s.len.min(left);
        for slice in mem.get_slices(s.addr, n) {
            out.push(slice.map_err(mem_err)?);
        }
        left -= n;
    }
    Ok(out)
}

/// Drop the first `n` bytes of `bufs` (after a call moved them).
fn advance(bufs: &mut Vec<VolatileSlice<'_>>, mut n: usize) {
    let mut whole = 0;
    for b in bufs.iter() {
        if n < b.len() {
            break;
        }
        n -= b.len();
        whole += 1;
    }
    bufs.drain(..whole);
    if let (true, Some(first)) = (n > 0, bufs.first_mut()) {
        // `n` is less than the first slice's length here.
        if let Ok(rest) = first.offset(n) {
            *first = rest;
        }
    }
}

fn overflow() -> io::Error {
    io::Error::from_raw_os_error(libc::EFBIG)
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
        let mut bufs = slices(self.mem, &self.segs, len)?;
        let mut done = 0;
        while !bufs.is_empty() {
            let at = offset.checked_add(done as u64).ok_or_else(overflow)?;
            match sys::pwritev(file.as_fd(), &bufs, at) {
                Ok(0) => break,
                Ok(n) => {
                    done += n;
                    advance(&mut bufs, n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
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
        let mut bufs = slices(self.mem, &self.segs, len.min(self.capacity()))?;
        let mut done = 0;
        while !bufs.is_empty() {
            let at = offset.checked_add(done as u64).ok_or_else(overflow)?;
            match sys::preadv(file.as_fd(), &bufs, at) {
                // The end of the file.
                Ok(0) => break,
                Ok(n) => {
                    done += n;
                    advance(&mut bufs, n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::guest_memory;

    /// `n` segments of `len` bytes, `gap` bytes apart from the start of each.
    fn segments(n: usize, len: usize, gap: u64) -> Vec<Segment> {
        (0..n)
            .map(|i| Segment {
                addr: GuestAddress(0x1000 + i as u64 * gap),
                len,
            })
            .collect()
    }

    #[test]
    fn advance_drops_whole_slices_then_part_of_the_next() {
        let mem = guest_memory(1 << 20);
        let segs = segments(3, 100, 0x1000);
        let mut bufs = slices(&mem, &segs, 250).unwrap();
        assert_eq!(
            bufs.iter().map(|b| b.len()).collect::<Vec<_>>(),
            [100, 100, 50]
        );
        advance(&mut bufs, 130);
        assert_eq!(bufs.iter().map(|b| b.len()).collect::<Vec<_>>(), [70, 50]);
        advance(&mut bufs, 120);
        assert!(bufs.is_empty());
    }

    #[test]
    fn reads_and_writes_span_more_buffers_than_one_call_takes() {
        let mem = guest_memory(4 << 20);
        let n = sys::IOV_MAX + 100;
        let segs = segments(n, 16, 32);
        let data: Vec<u8> = (0..n * 16).map(|i| (i % 251) as u8).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        let mut sink = GuestSink {
            mem: &mem,
            segs: segs.clone(),
        };
        // From offset 5: the last segment is short, at the end of the file.
        assert_eq!(
            sink.read_file(&file, 5, usize::MAX).unwrap(),
            data.len() - 5
        );
        let mut seg = [0u8; 16];
        mem.read_slice(&mut seg, segs[n - 2].addr).unwrap();
        assert_eq!(&seg[..], &data[5 + (n - 2) * 16..5 + (n - 1) * 16]);
        let out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("g"))
            .unwrap();
        let mut src = GuestSource { mem: &mem, segs };
        assert_eq!(src.write_file(&out, 3, n * 16).unwrap(), n * 16);
        let written = std::fs::read(dir.path().join("g")).unwrap();
        assert_eq!(written.len(), 3 + n * 16);
        assert_eq!(&written[3..3 + n * 16 - 5], &data[5..]);
    }
}
