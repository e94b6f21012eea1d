//! The FUSE server: decode a request, validate it, call the
//! [`FileSystem`], and encode the reply, with every failure mapped to an
//! errno in one place (`RequestError::errno`).
//!
//! The session is a small state machine kept as a table
//! ([`PHASE_TRANSITIONS`]): nothing but `INIT` is served before the
//! handshake, a second `INIT` is refused, and `DESTROY` ends the session
//! (a new `INIT` may start another one). Requests the table does not allow
//! are answered `EIO` (or dropped, for the forgets that have no reply) and
//! counted in [`ServerStats::refused`].

use std::ffi::CStr;
use std::time::Duration;

use log::debug;

use super::filesystem::{
    Context, DirSink, Errno, FileSystem, Lock, ReadSink, SetAttr, SetTime, WriteSource, XattrReply,
};
use super::fuse::{self, encode, fattr, init_flags, opcode, DecodeError, InHeader, Reader, Wire};

/// Largest write payload the server accepts (`max_write`).
pub const MAX_WRITE: u32 = 1 << 20;
/// Largest request: a maximal write plus its headers.
pub const MAX_REQUEST: usize = MAX_WRITE as usize + 4096;
/// Largest read, readdir or xattr reply the server produces.
pub const MAX_READ: u32 = MAX_WRITE;
/// Longest name in a directory.
pub const NAME_MAX: usize = 255;
/// Longest symlink target.
pub const PATH_MAX: usize = 4096;
/// Longest xattr value.
pub const XATTR_SIZE_MAX: usize = 65536;

/// The session's phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for `INIT`.
    AwaitingInit,
    /// `INIT` done: requests are served.
    Running,
}

/// What a request is, for the phase table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// `INIT`.
    Init,
    /// `DESTROY`.
    Destroy,
    /// `FORGET`, `BATCH_FORGET`, `INTERRUPT`: no reply.
    NoReply,
    /// Everything else.
    Operation,
}

/// What the server does with a request in a phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PhaseAction {
    /// Negotiate and move to `Running`.
    Handshake,
    /// Serve the request.
    Serve,
    /// End the session and go back to `AwaitingInit`.
    EndSession,
}

/// The valid `(phase, request class)` pairs; anything else is refused.
pub const PHASE_TRANSITIONS: &[(Phase, Class, PhaseAction)] = &[
    (Phase::AwaitingInit, Class::Init, PhaseAction::Handshake),
    (Phase::Running, Class::Operation, PhaseAction::Serve),
    (Phase::Running, Class::NoReply, PhaseAction::Serve),
    (Phase::Running, Class::Destroy, PhaseAction::EndSession),
];

fn classify(op: u32) -> Class {
    match op {
        opcode::INIT => Class::Init,
        opcode::DESTROY => Class::Destroy,
        opcode::FORGET | opcode::BATCH_FORGET | opcode::INTERRUPT => Class::NoReply,
        _ => Class::Operation,
    }
}

/// Timing and size options of the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerOptions {
    /// Largest write payload offered in `INIT`.
    pub max_write: u32,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            max_write: MAX_WRITE,
        }
    }
}

/// Request counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Requests handled (including refused and malformed ones).
    pub requests: u64,
    /// Requests answered with success.
    pub ok: u64,
    /// Requests answered with an errno from the filesystem.
    pub errors: u64,
    /// Requests that could not be decoded.
    pub malformed: u64,
    /// Unknown or unsupported opcodes (`ENOSYS`).
    pub unsupported: u64,
    /// Requests the session phase did not allow.
    pub refused: u64,
    /// Lookups dropped by forgets.
    pub forgets: u64,
    /// Bytes read from files.
    pub bytes_read: u64,
    /// Bytes written to files.
    pub bytes_written: u64,
}

/// File data that stays in guest memory instead of passing through the
/// request or reply bytes.
pub enum Data<'a> {
    /// Everything is in the request bytes, and the reply carries its data.
    InRequest,
    /// The payload of a WRITE: it follows the request bytes (which end
    /// with `fuse_write_in`) in guest memory.
    Write(&'a mut dyn WriteSource),
    /// Where the data of a READ goes: guest memory after the reply header.
    /// The reply bytes are then the header alone, its `len` counting the
    /// data placed.
    Read(&'a mut dyn ReadSink),
}

impl Data<'_> {
    fn extra_len(&self) -> usize {
        match self {
            Self::Write(src) => src.len(),
            _ => 0,
        }
    }
}

/// Why a request failed; [`RequestError::errno`] is the only place
/// failures become errnos.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestError {
    Decode(DecodeError),
    BadHeader(&'static str),
    Invalid(&'static str),
    NameTooLong,
    TooLarge,
    Refused(Phase),
    NoRoom,
    Unsupported(u32),
    Fs(Errno),
}

impl RequestError {
    fn errno(self) -> i32 {
        match self {
            Self::Decode(_) | Self::BadHeader(_) | Self::Invalid(_) => libc::EINVAL,
            Self::NameTooLong => libc::ENAMETOOLONG,
            Self::TooLarge => libc::E2BIG,
            Self::Refused(_) | Self::NoRoom => libc::EIO,
            Self::Unsupported(_) => libc::ENOSYS,
            Self::Fs(e) => e.0,
        }
    }
}

impl From<DecodeError> for RequestError {
    fn from(e: DecodeError) -> Self {
        Self::Decode(e)
    }
}

impl From<Errno> for RequestError {
    fn from(e: Errno) -> Self {
        Self::Fs(e)
    }
}

type Reply = std::result::Result<Vec<u8>, RequestError>;

/// A FUSE session over one filesystem (`F` may be `dyn FileSystem`).
pub struct Server<F: ?Sized> {
    fs: Box<F>,
    phase: Phase,
    options: ServerOptions,
    stats: ServerStats,
    /// Reply data placed straight into guest memory by the last request.
    in_place: usize,
}

impl<F: ?Sized> std::fmt::Debug for Server<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("phase", &self.phase)
            .field("stats", &self.stats)
            .finish()
    }
}

fn attr_reply(attr: fuse::Attr, timeout: Duration) -> Vec<u8> {
    encode(&fuse::AttrOut {
        attr_valid: timeout.as_secs(),
        attr_valid_nsec: timeout.subsec_nanos(),
        dummy: 0,
        attr,
    })
}

/// A name from a request: NUL-terminated, at most `NAME_MAX` bytes. The
/// filesystem checks what a name may be (`/`, `.`, `..`).
fn name<'a>(r: &mut Reader<'a>) -> std::result::Result<&'a CStr, RequestError> {
    let n = r.cstr()?;
    if n.to_bytes().len() > NAME_MAX {
        return Err(RequestError::NameTooLong);
    }
    Ok(n)
}

fn time(set: bool, now: bool, secs: u64, nsecs: u32) -> Option<SetTime> {
    match (set, now) {
        (false, _) => None,
        (true, true) => Some(SetTime::Now),
        (true, false) => Some(SetTime::At(secs as i64, nsecs)),
    }
}

fn lock_from_wire(l: fuse::FileLock) -> Lock {
    Lock {
        start: l.start,
        end: l.end,
        typ: l.typ,
        pid: l.pid,
    }
}

/// The reply carrying only `errno` for request `unique`.
pub fn error_reply(unique: u64, errno: i32) -> Vec<u8> {
    encode(&fuse::OutHeader {
        len: fuse::OutHeader::SIZE as u32,
        error: -errno,
        unique,
    })
}

impl<F: FileSystem + ?Sized> Server<F> {
    /// A server over `fs`, waiting for `INIT`.
    pub fn new(fs: Box<F>, options: ServerOptions) -> Self {
        Self {
            fs,
            phase: Phase::AwaitingInit,
            options,
            stats: ServerStats::default(),
            in_place: 0,
        }
    }

    /// The session phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Request counters.
    pub fn stats(&self) -> ServerStats {
        self.stats
    }

    /// The filesystem.
    pub fn filesystem(&self) -> &F {
        &self.fs
    }

    /// The filesystem, mutably.
    pub fn filesystem_mut(&mut self) -> &mut F {
        &mut self.fs
    }

    /// The driver was reset: end the session as `DESTROY` would.
    pub fn reset(&mut self) {
        if self.phase == Phase::Running {
            self.fs.destroy();
        }
        self.phase = Phase::AwaitingInit;
    }

    /// Handle one request. Returns the reply bytes (header included), or
    /// `None` for requests without a reply. A request too short to carry a
    /// header gets no reply either: there is no id to answer.
    pub fn handle(&mut self, request: &[u8]) -> Option<Vec<u8>> {
        self.handle_with(request, Data::InRequest)
    }

    /// Handle one request whose file data stays in guest memory (see
    /// [`Data`]); otherwise as [`Server::handle`]. A sink or source that
    /// does not match the opcode is ignored.
    pub fn handle_with(&mut self, request: &[u8], mut data: Data<'_>) -> Option<Vec<u8>> {
        self.stats.requests += 1;
        self.in_place = 0;
        let mut r = Reader::new(request);
        let Ok(header) = r.read::<InHeader>() else {
            debug!(
                "virtio-fs: request of {} bytes has no header",
                request.len()
            );
            self.stats.malformed += 1;
            return None;
        };
        let class = classify(header.opcode);
        let received = request.len().saturating_add(data.extra_len());
        let result = self.check_header(&header, received).and_then(|end| {
            let mut body = Reader::new(&request[InHeader::SIZE..end.min(request.len())]);
            let extra = end.saturating_sub(request.len());
            self.route(&header, class, &mut body, &mut data, extra)
        });
        if class == Class::NoReply {
            if let Err(e) = result {
                self.count(e);
            }
            return None;
        }
        Some(self.reply(header.unique, result))
    }

    /// Check the header's length against the bytes received; returns the
    /// end of the request body.
    fn check_header(
        &self,
        h: &InHeader,
        received: usize,
    ) -> std::result::Result<usize, RequestError> {
        let len = h.len as usize;
        if len < InHeader::SIZE {
            return Err(RequestError::BadHeader("length shorter than the header"));
        }
        if len > received {
            return Err(RequestError::BadHeader("length past the received bytes"));
        }
        if len > MAX_REQUEST {
            return Err(RequestError::TooLarge);
        }
        Ok(len)
    }

    fn route(
        &mut self,
        h: &InHeader,
        class: Class,
        body: &mut Reader<'_>,
        data: &mut Data<'_>,
        extra: usize,
    ) -> Reply {
        let action = PHASE_TRANSITIONS
            .iter()
            .find(|(p, c, _)| *p == self.phase && *c == class)
            .map(|&(_, _, a)| a);
        match action {
            Some(PhaseAction::Handshake) => self.init(body),
            Some(PhaseAction::EndSession) => {
                self.fs.destroy();
                self.phase = Phase::AwaitingInit;
                Ok(Vec::new())
            }
            Some(PhaseAction::Serve) => self.dispatch(h, body, data, extra),
            None => Err(RequestError::Refused(self.phase)),
        }
    }

    fn count(&mut self, e: RequestError) {
        match e {
            RequestError::Decode(_)
            | RequestError::BadHeader(_)
            | RequestError::Invalid(_)
            | RequestError::NameTooLong
            | RequestError::TooLarge
            | RequestError::NoRoom => self.stats.malformed += 1,
            RequestError::Refused(_) => self.stats.refused += 1,
            RequestError::Unsupported(_) => self.stats.unsupported += 1,
            RequestError::Fs(_) => self.stats.errors += 1,
        }
    }

    fn reply(&mut self, unique: u64, result: Reply) -> Vec<u8> {
        let mut in_place = 0;
        let (error, body) = match result {
            Ok(body) => {
                self.stats.ok += 1;
                in_place = self.in_place;
                (0, body)
            }
            Err(e) => {
                debug!("virtio-fs: request {unique} failed: {e:?}");
                self.count(e);
                (-e.errno(), Vec::new())
            }
        };
        let mut out = Vec::with_capacity(fuse::OutHeader::SIZE + body.len());
        fuse::OutHeader {
            len: (fuse::OutHeader::SIZE + body.len() + in_place) as u32,
            error,
            unique,
        }
        .put(&mut out);
        out.extend_from_slice(&body);
        out
    }

    fn init(&mut self, body: &mut Reader<'_>) -> Reply {
        let init: fuse::InitIn = body.read()?;
        if init.major != fuse::KERNEL_VERSION {
            // Answer with our major so that the kernel can retry or give up.
            return Ok(encode(&fuse::InitOut {
                major: fuse::KERNEL_VERSION,
                minor: fuse::KERNEL_MINOR_VERSION,
                ..Default::default()
            }));
        }
        if init.minor < fuse::MIN_KERNEL_MINOR_VERSION {
            return Err(RequestError::Invalid("protocol minor version too old"));
        }
        self.fs.init()?;
        // HANDLE_KILLPRIV_V2: the device clears setuid, setgid and
        // `security.capability` on every write, truncate and chown (whether
        // or not the kernel's KILL_SUIDGID flags ask), so the guest may
        // leave that to it. The guest then skips a GETATTR before each
        // chown, and (SB_NOSEC) asks for `security.capability` only before
        // an inode's first write instead of before every write.
        let wanted = init_flags::ASYNC_READ
            | init_flags::POSIX_LOCKS
            | init_flags::ATOMIC_O_TRUNC
            | init_flags::BIG_WRITES
            | init_flags::DO_READDIRPLUS
            | init_flags::READDIRPLUS_AUTO
            | init_flags::PARALLEL_DIROPS
            | init_flags::MAX_PAGES
            | init_flags::CACHE_SYMLINKS
            | init_flags::HANDLE_KILLPRIV_V2;
        let max_write = self.options.max_write.clamp(4096, MAX_WRITE);
        self.phase = Phase::Running;
        Ok(encode(&fuse::InitOut {
            major: fuse::KERNEL_VERSION,
            minor: init.minor.min(fuse::KERNEL_MINOR_VERSION),
            max_readahead: init.max_readahead,
            flags: init.flags & wanted,
            max_background: 64,
            congestion_threshold: 48,
            max_write,
            time_gran: 1,
            max_pages: (max_write / 4096) as u16,
            ..Default::default()
        }))
    }

    /// `extra`: bytes of the request that stay in guest memory (a WRITE
    /// payload in `data`).
    fn dispatch(
        &mut self,
        h: &InHeader,
        r: &mut Reader<'_>,
        data: &mut Data<'_>,
        extra: usize,
    ) -> Reply {
        let ctx = Context {
            uid: h.uid,
            gid: h.gid,
            pid: h.pid,
        };
        let node = h.nodeid;
        let fs = &mut self.fs;
        let empty = |res: Result<(), Errno>| res.map(|()| Vec::new()).map_err(RequestError::from);
        match h.opcode {
            opcode::LOOKUP => {
                let n = name(r)?;
                Ok(encode(&fs.lookup(ctx, node, n)?.to_wire()))
            }
            opcode::FORGET => {
                let f: fuse::ForgetIn = r.read()?;
                fs.forget(node, f.nlookup);
                self.stats.forgets += 1;
                Ok(Vec::new())
            }
            opcode::BATCH_FORGET => {
                let b: fuse::BatchForgetIn = r.read()?;
                let all = r.read_many::<fuse::ForgetOne>(b.count as usize)?;
                for f in all {
                    fs.forget(f.nodeid, f.nlookup);
                    self.stats.forgets += 1;
                }
                Ok(Vec::new())
            }
            opcode::INTERRUPT => {
                // Requests are served to completion one at a time: there is
                // never one in flight to interrupt.
                let _: fuse::InterruptIn = r.read()?;
                Ok(Vec::new())
            }
            opcode::GETATTR => {
                let g: fuse::GetattrIn = r.read()?;
                let fh = (g.getattr_flags & fuse::GETATTR_FH != 0).then_some(g.fh);
                let (attr, t) = fs.getattr(ctx, node, fh)?;
                Ok(attr_reply(attr, t))
            }
            opcode::SETATTR => {
                let s: fuse::SetattrIn = r.read()?;
                let v = s.valid;
                let set = SetAttr {
                    mode: (v & fattr::MODE != 0).then_some(s.mode),
                    uid: (v & fattr::UID != 0).then_some(s.uid),
                    gid: (v & fattr::GID != 0).then_some(s.gid),
                    size: (v & fattr::SIZE != 0).then_some(s.size),
                    atime: time(
                        v & fattr::ATIME != 0,
                        v & fattr::ATIME_NOW != 0,
                        s.atime,
                        s.atimensec,
                    ),
                    mtime: time(
                        v & fattr::MTIME != 0,
                        v & fattr::MTIME_NOW != 0,
                        s.mtime,
                        s.mtimensec,
                    ),
                    fh: (v & fattr::FH != 0).then_some(s.fh),
                    kill_suidgid: v & fattr::KILL_SUIDGID != 0,
                };
                let (attr, t) = fs.setattr(ctx, node, set)?;
                Ok(attr_reply(attr, t))
            }
            opcode::READLINK => Ok(fs.readlink(ctx, node)?),
            opcode::SYMLINK => {
                let n = name(r)?;
                let target = r.cstr()?;
                if target.to_bytes().len() >= PATH_MAX {
                    return Err(RequestError::NameTooLong);
                }
                Ok(encode(&fs.symlink(ctx, target, node, n)?.to_wire()))
            }
            opcode::MKNOD => {
                let m: fuse::MknodIn = r.read()?;
                let n = name(r)?;
                Ok(encode(&fs.mknod(ctx, node, n, m.mode, m.rdev)?.to_wire()))
            }
            opcode::MKDIR => {
                let m: fuse::MkdirIn = r.read()?;
                let n = name(r)?;
                Ok(encode(&fs.mkdir(ctx, node, n, m.mode)?.to_wire()))
            }
            opcode::UNLINK => {
                let n = name(r)?;
                empty(fs.unlink(ctx, node, n))
            }
            opcode::RMDIR => {
                let n = name(r)?;
                empty(fs.rmdir(ctx, node, n))
            }
            opcode::RENAME | opcode::RENAME2 => {
                let (newdir, flags) = if h.opcode == opcode::RENAME {
                    (r.read::<u64>()?, 0)
                } else {
                    let x: fuse::Rename2In = r.read()?;
                    (x.newdir, x.flags)
                };
                let old = name(r)?;
                let new = name(r)?;
                empty(fs.rename(ctx, node, old, newdir, new, flags))
            }
            opcode::LINK => {
                let l: fuse::LinkIn = r.read()?;
                let n = name(r)?;
                Ok(encode(&fs.link(ctx, l.oldnodeid, node, n)?.to_wire()))
            }
            opcode::OPEN | opcode::OPENDIR => {
                let o: fuse::OpenIn = r.read()?;
                let (fh, open_flags) = if h.opcode == opcode::OPEN {
                    let kill = o.open_flags & fuse::OPEN_KILL_SUIDGID != 0;
                    fs.open(ctx, node, o.flags, kill)?
                } else {
                    fs.opendir(ctx, node, o.flags)?
                };
                Ok(encode(&fuse::OpenOut {
                    fh,
                    open_flags,
                    padding: 0,
                }))
            }
            opcode::CREATE => {
                let c: fuse::CreateIn = r.read()?;
                let n = name(r)?;
                let (entry, fh, open_flags) = fs.create(ctx, node, n, c.mode, c.flags)?;
                let mut out = encode(&entry.to_wire());
                fuse::OpenOut {
                    fh,
                    open_flags,
                    padding: 0,
                }
                .put(&mut out);
                Ok(out)
            }
            opcode::READ => {
                let x: fuse::ReadIn = r.read()?;
                let size = x.size.min(MAX_READ);
                if let Data::Read(sink) = data {
                    if size as usize > sink.capacity() {
                        return Err(RequestError::NoRoom);
                    }
                    let n = fs.read_into(ctx, node, x.fh, x.offset, size, &mut **sink)?;
                    self.stats.bytes_read += n as u64;
                    self.in_place = n.min(size as usize);
                    return Ok(Vec::new());
                }
                let data = fs.read(ctx, node, x.fh, x.offset, size)?;
                self.stats.bytes_read += data.len() as u64;
                Ok(data)
            }
            opcode::WRITE => {
                let w: fuse::WriteIn = r.read()?;
                let kill = w.write_flags & fuse::WRITE_KILL_SUIDGID != 0;
                let n = match data {
                    Data::Write(src) if r.remaining() == 0 => {
                        let len = w.size as usize;
                        if len > extra || len > src.len() {
                            return Err(DecodeError::Short("write data").into());
                        }
                        fs.write_from(ctx, node, w.fh, w.offset, &mut **src, len, kill)?
                    }
                    _ => {
                        let bytes = r.take(w.size as usize, "write data")?;
                        fs.write(ctx, node, w.fh, w.offset, bytes, kill)?
                    }
                };
                self.stats.bytes_written += u64::from(n);
                Ok(encode(&fuse::WriteOut {
                    size: n,
                    padding: 0,
                }))
            }
            opcode::FLUSH => {
                let f: fuse::FlushIn = r.read()?;
                empty(fs.flush(ctx, node, f.fh, f.lock_owner))
            }
            opcode::RELEASE | opcode::RELEASEDIR => {
                let x: fuse::ReleaseIn = r.read()?;
                if h.opcode == opcode::RELEASE {
                    empty(fs.release(ctx, node, x.fh))
                } else {
                    empty(fs.releasedir(ctx, node, x.fh))
                }
            }
            opcode::FSYNC | opcode::FSYNCDIR => {
                let x: fuse::FsyncIn = r.read()?;
                let datasync = x.fsync_flags & fuse::FSYNC_FDATASYNC != 0;
                if h.opcode == opcode::FSYNC {
                    empty(fs.fsync(ctx, node, x.fh, datasync))
                } else {
                    empty(fs.fsyncdir(ctx, node, x.fh, datasync))
                }
            }
            opcode::READDIR | opcode::READDIRPLUS => {
                let x: fuse::ReadIn = r.read()?;
                let plus = h.opcode == opcode::READDIRPLUS;
                let mut sink = DirSink::new(x.size.min(MAX_READ) as usize, plus);
                fs.readdir(ctx, node, x.fh, x.offset, &mut sink)?;
                Ok(sink.into_bytes())
            }
            opcode::STATFS => Ok(encode(&fs.statfs(ctx, node)?)),
            opcode::SETXATTR => {
                let s: fuse::SetxattrIn = r.read()?;
                let n = name(r)?;
                if s.size as usize > XATTR_SIZE_MAX {
                    return Err(RequestError::TooLarge);
                }
                let value = r.take(s.size as usize, "xattr value")?;
                empty(fs.setxattr(ctx, node, n, value, s.flags))
            }
            opcode::GETXATTR | opcode::LISTXATTR => {
                let g: fuse::GetxattrIn = r.read()?;
                let size = g.size.min(MAX_READ);
                let reply = if h.opcode == opcode::GETXATTR {
                    let n = name(r)?;
                    fs.getxattr(ctx, node, n, size)?
                } else {
                    fs.listxattr(ctx, node, size)?
                };
                Ok(match reply {
                    XattrReply::Size(size) => encode(&fuse::GetxattrOut { size, padding: 0 }),
                    XattrReply::Data(d) if d.len() > size as usize => {
                        return Err(RequestError::Fs(Errno(libc::ERANGE)))
                    }
                    XattrReply::Data(d) => d,
                })
            }
            opcode::REMOVEXATTR => {
                let n = name(r)?;
                empty(fs.removexattr(ctx, node, n))
            }
            opcode::ACCESS => {
                let a: fuse::AccessIn = r.read()?;
                empty(fs.access(ctx, node, a.mask))
            }
            opcode::FALLOCATE => {
                let f: fuse::FallocateIn = r.read()?;
                empty(fs.fallocate(ctx, node, f.fh, f.mode, f.offset, f.length))
            }
            opcode::LSEEK => {
                let l: fuse::LseekIn = r.read()?;
                let offset = fs.lseek(ctx, node, l.fh, l.offset, l.whence)?;
                Ok(encode(&fuse::LseekOut { offset }))
            }
            opcode::COPY_FILE_RANGE => {
                let c: fuse::CopyFileRangeIn = r.read()?;
                if c.flags != 0 {
                    return Err(RequestError::Invalid("copy_file_range flags"));
                }
                let n = fs.copy_file_range(
                    ctx,
                    node,
                    c.fh_in,
                    c.off_in,
                    c.nodeid_out,
                    c.fh_out,
                    c.off_out,
                    c.len.min(u64::from(MAX_WRITE)),
                )?;
                self.stats.bytes_written += u64::from(n);
                Ok(encode(&fuse::WriteOut {
                    size: n,
                    padding: 0,
                }))
            }
            opcode::GETLK | opcode::SETLK | opcode::SETLKW => {
                let l: fuse::LkIn = r.read()?;
                if l.lk_flags & fuse::LK_FLOCK != 0 {
                    // flock() is not negotiated; the kernel keeps those local.
                    return Err(RequestError::Unsupported(h.opcode));
                }
                let lock = lock_from_wire(l.lk);
                if h.opcode == opcode::GETLK {
                    let got = fs.getlk(ctx, node, l.fh, l.owner, lock)?;
                    Ok(encode(&fuse::FileLock {
                        start: got.start,
                        end: got.end,
                        typ: got.typ,
                        pid: got.pid,
                    }))
                } else {
                    let wait = h.opcode == opcode::SETLKW;
                    empty(fs.setlk(ctx, node, l.fh, l.owner, lock, wait))
                }
            }
            opcode::SYNCFS => {
                // fuse_syncfs_in: one padding u64.
                let _: u64 = r.read()?;
                empty(fs.syncfs(ctx, node))
            }
            other => Err(RequestError::Unsupported(other)),
        }
    }
}

#[cfg(test)]
mod tests;
