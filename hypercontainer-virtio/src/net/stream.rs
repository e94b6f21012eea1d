//! Frames over a stream socket, each one preceded by its length.
//!
//! Wire format, both ways: a 4-byte big-endian length `n`, then `n` bytes
//! of Ethernet frame (no `virtio_net_hdr`). This is the framing of QEMU's
//! `stream` netdev, which user-mode network stacks such as passt speak over
//! a connected `AF_UNIX` stream socket.
//!
//! A stream has no frame boundaries of its own, so the backend keeps what
//! it has read until a frame is complete, and a frame it accepted must be
//! written to the end even when the socket fills up halfway: it then holds
//! the rest (one frame at most) and asks the device to wait until the
//! socket is writable again ([`NetBackend::has_pending_output`]). A frame
//! offered while one is still pending is refused with `WouldBlock` (the
//! device drops and counts it; TCP in the guest sends it again).
//!
//! A length above [`MAX_STREAM_FRAME_LEN`] cannot come from a well-behaved
//! peer: the stream is out of step and cannot be trusted again, so the
//! backend shuts it down and reports itself closed, as it does when the
//! peer hangs up.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

use super::{NetBackend, MAX_GSO_FRAME_LEN};

/// Largest frame accepted on a stream, either way: a 64 KiB IP packet with
/// its Ethernet header and a VLAN tag.
pub const MAX_STREAM_FRAME_LEN: usize = MAX_GSO_FRAME_LEN;
/// Bytes of the length prefix.
const LEN_BYTES: usize = 4;
/// Read buffer: room for two of the largest frames, so that one read
/// usually brings several small ones.
const RX_CAPACITY: usize = 2 * (LEN_BYTES + MAX_STREAM_FRAME_LEN);

/// A [`NetBackend`] over a connected stream socket carrying frames each
/// preceded by its length (4 bytes, big-endian), as QEMU's `stream` netdev
/// and passt frame them. A frame only partly written when the socket
/// fills is kept and finished once the socket is writable again; a length
/// above [`MAX_STREAM_FRAME_LEN`] or the peer hanging up closes the
/// backend for good.
#[derive(Debug)]
pub struct StreamBackend {
    socket: UnixStream,
    /// Bytes read but not yet handed over: `rx[rx_start..rx_end]`.
    rx: Box<[u8]>,
    rx_start: usize,
    rx_end: usize,
    /// The frame being written (prefix included): `tx[tx_start..]` is left.
    tx: Vec<u8>,
    tx_start: usize,
    closed: bool,
}

impl StreamBackend {
    /// Uses `socket` (made non-blocking), e.g. one end of
    /// `UnixStream::pair()` whose other end a network stack holds.
    pub fn new(socket: UnixStream) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        Ok(Self {
            socket,
            rx: vec![0; RX_CAPACITY].into_boxed_slice(),
            rx_start: 0,
            rx_end: 0,
            tx: Vec::with_capacity(LEN_BYTES + super::MAX_FRAME_LEN),
            tx_start: 0,
            closed: false,
        })
    }

    /// The next complete frame in the read buffer, copied into `buf` (cut
    /// to fit); its full length, or `None` when no frame is complete.
    fn take_frame(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            let avail = &self.rx[self.rx_start..self.rx_end];
            let Some(prefix) = avail.get(..LEN_BYTES) else {
                return Ok(None);
            };
            let n = u32::from_be_bytes(prefix.try_into().expect("4 bytes")) as usize;
            if n > MAX_STREAM_FRAME_LEN {
                self.hang_up();
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("frame length {n} on the stream: the peer is out of step"),
                ));
            }
            let Some(frame) = avail.get(LEN_BYTES..LEN_BYTES + n) else {
                return Ok(None);
            };
            let copied = n.min(buf.len());
            buf[..copied].copy_from_slice(&frame[..copied]);
            self.rx_start += LEN_BYTES + n;
            if self.rx_start == self.rx_end {
                self.rx_start = 0;
                self.rx_end = 0;
            }
            // An empty frame carries nothing: skip it.
            if n > 0 {
                return Ok(Some(n));
            }
        }
    }

    /// Reads what the socket has into the free end of the buffer, first
    /// moving a partial frame to the front if the end is short of room.
    fn fill(&mut self) -> io::Result<usize> {
        if self.rx.len() - self.rx_end < LEN_BYTES + MAX_STREAM_FRAME_LEN {
            self.rx.copy_within(self.rx_start..self.rx_end, 0);
            self.rx_end -= self.rx_start;
            self.rx_start = 0;
        }
        loop {
            match self.socket.read(&mut self.rx[self.rx_end..]) {
                Ok(n) => {
                    self.rx_end += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn hang_up(&mut self) {
        self.closed = true;
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }

    fn closed_error() -> io::Error {
        io::Error::new(io::ErrorKind::BrokenPipe, "the stream's peer is gone")
    }
}

/// `send(2)` without `SIGPIPE` when the peer is gone.
fn send(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: the pointer and length describe `data`, which outlives
        // the call; send only reads it.
        let n = unsafe {
            libc::send(
                fd,
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

impl AsRawFd for StreamBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

impl NetBackend for StreamBackend {
    fn recv_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(n) = self.take_frame(buf)? {
                return Ok(n);
            }
            if self.closed {
                return Err(Self::closed_error());
            }
            match self.fill() {
                Ok(0) => self.hang_up(),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
                Err(e) => {
                    self.hang_up();
                    return Err(e);
                }
            }
        }
    }

    fn send_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        if self.closed {
            return Err(Self::closed_error());
        }
        if frame.len() > MAX_STREAM_FRAME_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a {}-byte frame is too long for the stream", frame.len()),
            ));
        }
        self.flush()?;
        if self.has_pending_output() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.tx.clear();
        self.tx_start = 0;
        self.tx
            .extend_from_slice(&(frame.len() as u32).to_be_bytes());
        self.tx.extend_from_slice(frame);
        // Accepted: what the socket does not take now waits for `flush`.
        self.flush()
    }

    fn has_pending_output(&self) -> bool {
        self.tx_start < self.tx.len()
    }

    fn flush(&mut self) -> io::Result<()> {
        while self.has_pending_output() {
            match send(self.socket.as_raw_fd(), &self.tx[self.tx_start..]) {
                Ok(n) => self.tx_start += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => {
                    self.hang_up();
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn is_closed(&self) -> bool {
        self.closed
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn pair() -> (StreamBackend, UnixStream) {
        let (dev, peer) = UnixStream::pair().unwrap();
        (StreamBackend::new(dev).unwrap(), peer)
    }

    fn framed(frames: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            out.extend_from_slice(&(f.len() as u32).to_be_bytes());
            out.extend_from_slice(f);
        }
        out
    }

    fn would_block<T: std::fmt::Debug>(r: io::Result<T>) -> bool {
        matches!(r, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    #[test]
    fn frames_written_together_come_out_one_by_one() {
        let (mut b, mut peer) = pair();
        let big = vec![7u8; 1514];
        peer.write_all(&framed(&[b"first frame", &[], &big, b"x"]))
            .unwrap();
        let mut buf = vec![0u8; 2048];
        assert_eq!(b.recv_frame(&mut buf).unwrap(), 11);
        assert_eq!(&buf[..11], b"first frame");
        // The empty frame is skipped.
        assert_eq!(b.recv_frame(&mut buf).unwrap(), 1514);
        assert_eq!(&buf[..1514], &big[..]);
        assert_eq!(b.recv_frame(&mut buf).unwrap(), 1);
        assert!(would_block(b.recv_frame(&mut buf)));
        assert!(!b.is_closed());
    }

    #[test]
    fn a_frame_split_across_reads_waits_until_complete() {
        let (mut b, mut peer) = pair();
        let bytes = framed(&[b"split into single bytes"]);
        let mut buf = [0u8; 64];
        for (i, byte) in bytes.iter().enumerate() {
            assert!(would_block(b.recv_frame(&mut buf)), "at byte {i}");
            peer.write_all(&[*byte]).unwrap();
        }
        assert_eq!(b.recv_frame(&mut buf).unwrap(), 23);
        assert_eq!(&buf[..23], b"split into single bytes");
    }

    #[test]
    fn many_large_frames_cross_the_buffer_boundary_intact() {
        let (mut b, peer) = pair();
        let frames: Vec<Vec<u8>> = (0..40u8)
            .map(|i| vec![i; 20_000 + usize::from(i) * 997])
            .collect();
        let wire = framed(&frames.iter().map(|f| f.as_slice()).collect::<Vec<_>>());
        let writer = std::thread::spawn(move || {
            let mut peer = peer;
            peer.write_all(&wire).unwrap();
            peer
        });
        let mut buf = vec![0u8; MAX_STREAM_FRAME_LEN];
        let mut got = Vec::new();
        while got.len() < frames.len() {
            match b.recv_frame(&mut buf) {
                Ok(n) => got.push(buf[..n].to_vec()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        let _peer = writer.join().unwrap();
        assert_eq!(got, frames);
    }

    #[test]
    fn a_frame_longer_than_the_buffer_is_cut_and_reports_its_length() {
        let (mut b, mut peer) = pair();
        let long = vec![3u8; 3000];
        peer.write_all(&framed(&[&long, b"next"])).unwrap();
        let mut buf = [0u8; 100];
        assert_eq!(b.recv_frame(&mut buf).unwrap(), 3000);
        assert_eq!(buf, [3u8; 100]);
        assert_eq!(b.recv_frame(&mut buf).unwrap(), 4);
        assert_eq!(&buf[..4], b"next");
    }

    #[test]
    fn an_impossible_length_closes_the_stream() {
        let (mut b, mut peer) = pair();
        peer.write_all(&u32::MAX.to_be_bytes()).unwrap();
        let mut buf = [0u8; 100];
        let e = b.recv_frame(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(b.is_closed());
        assert!(b.send_frame(b"frame").is_err());
        // The peer sees the stream end.
        let mut rest = Vec::new();
        peer.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }

    #[test]
    fn the_peer_hanging_up_closes_the_backend_after_the_last_frame() {
        let (mut b, mut peer) = pair();
        peer.write_all(&framed(&[b"last"])).unwrap();
        drop(peer);
        let mut buf = [0u8; 100];
        assert_eq!(b.recv_frame(&mut buf).unwrap(), 4);
        let e = b.recv_frame(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
        assert!(b.is_closed());
        assert_eq!(
            b.send_frame(b"frame").unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );
    }

    #[test]
    fn sent_frames_carry_their_length() {
        let (mut b, mut peer) = pair();
        b.send_frame(b"hello").unwrap();
        b.send_frame(&[9u8; 1500]).unwrap();
        let mut got = vec![0u8; 4 + 5 + 4 + 1500];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(got, framed(&[b"hello", &[9u8; 1500]]));
        assert!(!b.has_pending_output());
        assert!(b.send_frame(&vec![0; MAX_STREAM_FRAME_LEN + 1]).is_err());
    }

    #[test]
    fn a_full_socket_keeps_one_frame_pending_and_refuses_the_next() {
        let (mut b, mut peer) = pair();
        // Fill the socket until a frame is only partly taken.
        let frame = vec![5u8; 1500];
        let mut accepted = 0usize;
        while !b.has_pending_output() {
            b.send_frame(&frame).unwrap();
            accepted += 1;
        }
        assert!(would_block(b.send_frame(b"refused")));
        // The reader drains everything; a flush completes the pending frame.
        peer.set_nonblocking(true).unwrap();
        let mut wire = Vec::new();
        let mut chunk = vec![0u8; 1 << 16];
        loop {
            match peer.read(&mut chunk) {
                Ok(n) => wire.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !b.has_pending_output() {
                        break;
                    }
                    b.flush().unwrap();
                }
                Err(e) => panic!("{e}"),
            }
        }
        let want: Vec<&[u8]> = (0..accepted).map(|_| frame.as_slice()).collect();
        assert_eq!(wire, framed(&want));
        b.send_frame(b"accepted again").unwrap();
    }
}
