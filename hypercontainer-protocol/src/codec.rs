//! Framing and the binary encoding of [`Message`]s.
//!
//! A frame is `len: u32 LE`, then `len` bytes: `type: u8` and the payload.
//! `len` is at least 1 and at most [`MAX_FRAME_LEN`]; the length is checked
//! as soon as the four length bytes are in, before anything is buffered, so
//! a hostile peer cannot make the reader allocate more than one maximum
//! frame.
//!
//! Payload primitives (all integers little-endian):
//! - `u8`, `u16`, `u32`, `u64`, `i32`: fixed width;
//! - `bool`: one byte, `0` or `1` (anything else is an error);
//! - `bytes`: `u32` length, then the bytes;
//! - `string`: as `bytes`, and must be UTF-8;
//! - `option<T>`: a byte `0` (none) or `1` followed by `T`;
//! - `[T]`: `u32` count, then the elements.
//!
//! Decoding is strict: every length is checked against the bytes left in
//! the frame before anything is allocated, enum tags must be known, and the
//! payload must be consumed exactly (trailing bytes are an error). No input
//! makes the decoder panic.

use std::io::{self, Read, Write};

use crate::message::{
    code, BootStage, ErrorKind, Hello, Message, Process, Rlimit, RlimitResource, Rootfs, Upper,
    WindowSize,
};
use crate::{MAX_FRAME_LEN, PROTOCOL_VERSION};

mod net;
mod pod;

/// Length of the frame header (the `u32` length prefix).
pub const HEADER_LEN: usize = 4;

/// Errors of framing and decoding. Every one of them, except
/// [`Error::Io`] of a would-block kind, ends the connection it came from.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the connection failed.
    #[error("I/O error on the agent connection")]
    Io {
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A frame announces (or an encoder would produce) more than
    /// [`MAX_FRAME_LEN`] bytes.
    #[error("frame length {len} exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// The announced length.
        len: u64,
        /// [`MAX_FRAME_LEN`].
        max: usize,
    },
    /// A frame of length zero (no type byte).
    #[error("empty frame")]
    EmptyFrame,
    /// The type byte names no message.
    #[error("unknown message type {0:#04x}")]
    UnknownType(u8),
    /// The stream ended inside a frame.
    #[error("connection closed in the middle of a frame")]
    TruncatedFrame,
    /// The payload ended before a field was complete.
    #[error("payload too short for {0}")]
    ShortPayload(&'static str),
    /// Bytes were left after the last field of the payload.
    #[error("{0} unexpected bytes after the payload")]
    TrailingBytes(usize),
    /// A string field is not UTF-8.
    #[error("{0} is not valid UTF-8")]
    InvalidUtf8(&'static str),
    /// A tag or enum field has a value that names nothing.
    #[error("invalid value {value} for {what}")]
    InvalidValue {
        /// The field.
        what: &'static str,
        /// The value found.
        value: u64,
    },
    /// The container spec is not a valid OCI runtime spec.
    #[error("the container spec is not a valid OCI runtime spec: {0}")]
    BadSpec(String),
    /// A `Hello` from a peer speaking another protocol version.
    #[error("peer speaks protocol version {theirs}, this side speaks {ours}")]
    VersionMismatch {
        /// [`PROTOCOL_VERSION`].
        ours: u32,
        /// The peer's version.
        theirs: u32,
    },
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, Error>;

// ---------------------------------------------------------------------------
// Encoding

struct Enc<'a>(&'a mut Vec<u8>);

impl Enc<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i32(&mut self, v: i32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }
    fn len(&mut self, n: usize) -> Result<()> {
        // Anything this long cannot fit a frame anyway.
        let n = u32::try_from(n).map_err(|_| Error::FrameTooLarge {
            len: n as u64,
            max: MAX_FRAME_LEN,
        })?;
        self.u32(n);
        Ok(())
    }
    fn bytes(&mut self, v: &[u8]) -> Result<()> {
        self.len(v.len())?;
        self.0.extend_from_slice(v);
        Ok(())
    }
    fn str(&mut self, v: &str) -> Result<()> {
        self.bytes(v.as_bytes())
    }
    fn strs(&mut self, v: &[String]) -> Result<()> {
        self.len(v.len())?;
        v.iter().try_for_each(|s| self.str(s))
    }
    fn opt_str(&mut self, v: &Option<String>) -> Result<()> {
        match v {
            None => self.u8(0),
            Some(s) => {
                self.u8(1);
                self.str(s)?;
            }
        }
        Ok(())
    }
    fn spec(&mut self, spec: &crate::oci::Spec) -> Result<()> {
        let json = serde_json::to_string(spec).map_err(|e| Error::BadSpec(e.to_string()))?;
        self.str(&json)
    }
    fn window(&mut self, w: WindowSize) {
        self.u16(w.rows);
        self.u16(w.cols);
    }
    fn process(&mut self, p: &Process) -> Result<()> {
        self.strs(&p.argv)?;
        self.strs(&p.env)?;
        self.str(&p.cwd)?;
        self.str(&p.user)?;
        self.strs(&p.additional_groups)?;
        self.len(p.rlimits.len())?;
        for r in &p.rlimits {
            self.u8(r.resource as u8);
            self.u64(r.soft);
            self.u64(r.hard);
        }
        match p.umask {
            None => self.u8(0),
            Some(m) => {
                self.u8(1);
                self.u32(m);
            }
        }
        self.bool(p.no_new_privs);
        self.bool(p.terminal);
        match p.window {
            None => self.u8(0),
            Some(w) => {
                self.u8(1);
                self.window(w);
            }
        }
        Ok(())
    }
    fn rootfs(&mut self, r: &Rootfs) -> Result<()> {
        match r {
            Rootfs::Directory { path } => {
                self.u8(0);
                self.str(path)
            }
            Rootfs::Layers { layers, upper } => {
                self.u8(1);
                self.strs(layers)?;
                self.upper(upper)
            }
            Rootfs::Overlay { lowers, upper } => {
                self.u8(2);
                self.strs(lowers)?;
                self.upper(upper)
            }
        }
    }
    fn upper(&mut self, u: &Upper) -> Result<()> {
        match u {
            Upper::Tmpfs => self.u8(0),
            Upper::Disk { serial } => {
                self.u8(1);
                self.str(serial)?;
            }
        }
        Ok(())
    }
    fn payload(&mut self, m: &Message) -> Result<()> {
        match m {
            Message::Hello(h) => {
                self.u32(h.version);
                self.str(&h.software)?;
            }
            Message::Setup(s) => self.setup(s)?,
            Message::Create(c) => self.create(c)?,
            Message::Exec {
                id,
                container,
                process,
            } => {
                self.u32(*id);
                self.u32(*container);
                self.process(process)?;
            }
            Message::Remove { container }
            | Message::Removed { container }
            | Message::Stats { container } => self.u32(*container),
            Message::ContainerStats(s) => self.container_stats(s),
            Message::Shutdown => {}
            Message::Stdin { id, data }
            | Message::Stdout { id, data }
            | Message::Stderr { id, data } => {
                self.u32(*id);
                self.bytes(data)?;
            }
            Message::CloseStdin { id } => self.u32(*id),
            Message::Signal { id, signal } => {
                self.u32(*id);
                self.i32(*signal);
            }
            Message::ResizeTty { id, size } => {
                self.u32(*id);
                self.window(*size);
            }
            Message::BootStage { stage, boottime_ns } => {
                self.u8(*stage as u8);
                self.u64(*boottime_ns);
            }
            Message::Started { id, pid } => {
                self.u32(*id);
                self.u32(*pid);
            }
            Message::StdinAck { id, bytes } => {
                self.u32(*id);
                self.u32(*bytes);
            }
            Message::Exited {
                id,
                status,
                oom_killed,
            } => {
                self.u32(*id);
                self.i32(*status);
                self.bool(*oom_killed);
            }
            Message::Error { id, kind, message } => {
                match id {
                    None => self.u8(0),
                    Some(id) => {
                        self.u8(1);
                        self.u32(*id);
                    }
                }
                self.u8(*kind as u8);
                self.str(message)?;
            }
        }
        Ok(())
    }
}

/// Appends the frame of `msg` to `out`.
///
/// On error (the frame would exceed [`MAX_FRAME_LEN`]) `out` is left as it
/// was.
pub fn encode_frame(msg: &Message, out: &mut Vec<u8>) -> Result<()> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    out.push(msg.type_code());
    let res = Enc(out).payload(msg);
    let len = out.len() - start - HEADER_LEN;
    match res {
        Ok(()) if len <= MAX_FRAME_LEN => {
            // len <= MAX_FRAME_LEN fits in u32.
            out[start..start + HEADER_LEN].copy_from_slice(&(len as u32).to_le_bytes());
            Ok(())
        }
        Ok(()) => {
            out.truncate(start);
            Err(Error::FrameTooLarge {
                len: len as u64,
                max: MAX_FRAME_LEN,
            })
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

impl Message {
    /// The frame of this message as a new vector.
    pub fn to_frame(&self) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        encode_frame(self, &mut v)?;
        Ok(v)
    }
}

// ---------------------------------------------------------------------------
// Decoding

struct Dec<'a> {
    buf: &'a [u8],
}

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(Error::ShortPayload(what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    fn i32(&mut self, what: &'static str) -> Result<i32> {
        Ok(i32::from_le_bytes(self.array(what)?))
    }
    fn bool(&mut self, what: &'static str) -> Result<bool> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(Error::InvalidValue {
                what,
                value: v.into(),
            }),
        }
    }
    fn tag(&mut self, what: &'static str, max: u8) -> Result<u8> {
        let v = self.u8(what)?;
        if v > max {
            return Err(Error::InvalidValue {
                what,
                value: v.into(),
            });
        }
        Ok(v)
    }
    fn bytes(&mut self, what: &'static str) -> Result<Vec<u8>> {
        let n = self.u32(what)? as usize;
        Ok(self.take(n, what)?.to_vec())
    }
    fn str(&mut self, what: &'static str) -> Result<String> {
        String::from_utf8(self.bytes(what)?).map_err(|_| Error::InvalidUtf8(what))
    }
    /// Element count of a list whose elements take at least `min_size` bytes,
    /// checked against what is left so that no hostile count allocates.
    fn count(&mut self, what: &'static str, min_size: usize) -> Result<usize> {
        let n = self.u32(what)? as usize;
        if n.saturating_mul(min_size) > self.buf.len() {
            return Err(Error::ShortPayload(what));
        }
        Ok(n)
    }
    fn strs(&mut self, what: &'static str) -> Result<Vec<String>> {
        let n = self.count(what, 4)?;
        (0..n).map(|_| self.str(what)).collect()
    }
    fn opt_str(&mut self, what: &'static str) -> Result<Option<String>> {
        Ok(match self.tag(what, 1)? {
            0 => None,
            _ => Some(self.str(what)?),
        })
    }
    fn spec(&mut self) -> Result<crate::oci::Spec> {
        let json = self.str("spec")?;
        serde_json::from_str(&json).map_err(|e| Error::BadSpec(e.to_string()))
    }
    fn window(&mut self) -> Result<WindowSize> {
        Ok(WindowSize {
            rows: self.u16("window rows")?,
            cols: self.u16("window columns")?,
        })
    }
    fn process(&mut self) -> Result<Process> {
        let argv = self.strs("argv")?;
        let env = self.strs("env")?;
        let cwd = self.str("cwd")?;
        let user = self.str("user")?;
        let additional_groups = self.strs("additional groups")?;
        let n = self.count("rlimits", 17)?;
        let mut rlimits = Vec::with_capacity(n);
        for _ in 0..n {
            let r = self.u8("rlimit resource")?;
            let resource = RlimitResource::from_u8(r).ok_or(Error::InvalidValue {
                what: "rlimit resource",
                value: r.into(),
            })?;
            rlimits.push(Rlimit {
                resource,
                soft: self.u64("rlimit soft")?,
                hard: self.u64("rlimit hard")?,
            });
        }
        let umask = match self.tag("umask", 1)? {
            0 => None,
            _ => Some(self.u32("umask")?),
        };
        let no_new_privs = self.bool("no_new_privs")?;
        let terminal = self.bool("terminal")?;
        let window = match self.tag("window", 1)? {
            0 => None,
            _ => Some(self.window()?),
        };
        Ok(Process {
            argv,
            env,
            cwd,
            user,
            additional_groups,
            rlimits,
            umask,
            no_new_privs,
            terminal,
            window,
        })
    }
    fn rootfs(&mut self) -> Result<Rootfs> {
        Ok(match self.tag("rootfs kind", 2)? {
            0 => Rootfs::Directory {
                path: self.str("rootfs path")?,
            },
            1 => Rootfs::Layers {
                layers: self.strs("layer serials")?,
                upper: self.upper()?,
            },
            _ => Rootfs::Overlay {
                lowers: self.strs("overlay lowers")?,
                upper: self.upper()?,
            },
        })
    }
    fn upper(&mut self) -> Result<Upper> {
        Ok(match self.tag("upper kind", 1)? {
            0 => Upper::Tmpfs,
            _ => Upper::Disk {
                serial: self.str("upper serial")?,
            },
        })
    }
}

/// Decodes the body of one frame (type byte and payload, without the length
/// prefix).
pub fn decode_body(body: &[u8]) -> Result<Message> {
    let (&ty, payload) = body.split_first().ok_or(Error::EmptyFrame)?;
    let mut d = Dec { buf: payload };
    let msg = match ty {
        code::HELLO => {
            let version = d.u32("version")?;
            if version != PROTOCOL_VERSION {
                return Err(Error::VersionMismatch {
                    ours: PROTOCOL_VERSION,
                    theirs: version,
                });
            }
            Message::Hello(Hello {
                version,
                software: d.str("software")?,
            })
        }
        code::SETUP => Message::Setup(Box::new(d.setup()?)),
        code::CREATE => Message::Create(Box::new(d.create()?)),
        code::EXEC => Message::Exec {
            id: d.u32("id")?,
            container: d.u32("container")?,
            process: Box::new(d.process()?),
        },
        code::REMOVE => Message::Remove {
            container: d.u32("container")?,
        },
        code::SHUTDOWN => Message::Shutdown,
        code::STATS => Message::Stats {
            container: d.u32("container")?,
        },
        code::STDIN => Message::Stdin {
            id: d.u32("id")?,
            data: d.bytes("data")?,
        },
        code::CLOSE_STDIN => Message::CloseStdin { id: d.u32("id")? },
        code::SIGNAL => Message::Signal {
            id: d.u32("id")?,
            signal: d.i32("signal")?,
        },
        code::RESIZE_TTY => Message::ResizeTty {
            id: d.u32("id")?,
            size: d.window()?,
        },
        code::BOOT_STAGE => {
            let s = d.u8("boot stage")?;
            Message::BootStage {
                stage: BootStage::from_u8(s).ok_or(Error::InvalidValue {
                    what: "boot stage",
                    value: s.into(),
                })?,
                boottime_ns: d.u64("boot time")?,
            }
        }
        code::STARTED => Message::Started {
            id: d.u32("id")?,
            pid: d.u32("pid")?,
        },
        code::STDOUT => Message::Stdout {
            id: d.u32("id")?,
            data: d.bytes("data")?,
        },
        code::STDERR => Message::Stderr {
            id: d.u32("id")?,
            data: d.bytes("data")?,
        },
        code::STDIN_ACK => Message::StdinAck {
            id: d.u32("id")?,
            bytes: d.u32("bytes")?,
        },
        code::EXITED => Message::Exited {
            id: d.u32("id")?,
            status: d.i32("status")?,
            oom_killed: d.bool("oom killed")?,
        },
        code::ERROR => {
            let id = match d.tag("error id", 1)? {
                0 => None,
                _ => Some(d.u32("error id")?),
            };
            let k = d.u8("error kind")?;
            Message::Error {
                id,
                kind: ErrorKind::from_u8(k).ok_or(Error::InvalidValue {
                    what: "error kind",
                    value: k.into(),
                })?,
                message: d.str("error message")?,
            }
        }
        code::REMOVED => Message::Removed {
            container: d.u32("container")?,
        },
        code::CONTAINER_STATS => Message::ContainerStats(Box::new(d.container_stats()?)),
        other => return Err(Error::UnknownType(other)),
    };
    if !d.buf.is_empty() {
        return Err(Error::TrailingBytes(d.buf.len()));
    }
    Ok(msg)
}

/// Checks a frame's length prefix and returns the body length it announces.
pub fn check_header(header: [u8; HEADER_LEN]) -> Result<usize> {
    let len = u32::from_le_bytes(header);
    if len == 0 {
        return Err(Error::EmptyFrame);
    }
    if len as usize > MAX_FRAME_LEN {
        return Err(Error::FrameTooLarge {
            len: len.into(),
            max: MAX_FRAME_LEN,
        });
    }
    Ok(len as usize)
}

/// Decodes the first frame of `buf`.
///
/// Returns `Ok(None)` when `buf` does not hold a whole frame yet (but its
/// header, if complete, is valid), or the message and the number of bytes
/// the frame took.
pub fn decode_frame(buf: &[u8]) -> Result<Option<(Message, usize)>> {
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let len = check_header(*header)?;
    let Some(body) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
        return Ok(None);
    };
    Ok(Some((decode_body(body)?, HEADER_LEN + len)))
}

/// An incremental decoder for non-blocking readers: feed it the bytes as
/// they come, take out whole messages.
///
/// It never holds more than one maximum frame plus what one
/// [`FrameDecoder::feed`] call added.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    pos: usize,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next whole message, if any. An error means the stream is broken
    /// and must be closed; the decoder should not be used after it.
    pub fn next_message(&mut self) -> Result<Option<Message>> {
        let pending = self.buf.get(self.pos..).unwrap_or_default();
        match decode_frame(pending)? {
            None => {
                // Compact so the buffer does not grow with consumed bytes.
                if self.pos > 0 {
                    self.buf.drain(..self.pos);
                    self.pos = 0;
                }
                Ok(None)
            }
            Some((msg, used)) => {
                self.pos += used;
                Ok(Some(msg))
            }
        }
    }

    /// Bytes received but not yet decoded. Non-zero at end of stream means
    /// the peer closed it mid-frame ([`Error::TruncatedFrame`]).
    pub fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }
}

/// Reads one message from a blocking reader.
///
/// `Ok(None)` at a clean end of stream (between frames); a stream ending
/// inside a frame is [`Error::TruncatedFrame`].
pub fn read_message<R: Read + ?Sized>(r: &mut R) -> Result<Option<Message>> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(Error::TruncatedFrame),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => return Err(Error::Io { source }),
        }
    }
    let len = check_header(header)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(|source| {
        if source.kind() == io::ErrorKind::UnexpectedEof {
            Error::TruncatedFrame
        } else {
            Error::Io { source }
        }
    })?;
    decode_body(&body).map(Some)
}

/// Writes one message to a blocking writer (one `write_all` of the frame).
pub fn write_message<W: Write + ?Sized>(w: &mut W, msg: &Message) -> Result<()> {
    let frame = msg.to_frame()?;
    w.write_all(&frame).map_err(|source| Error::Io { source })
}

#[cfg(test)]
mod tests;
