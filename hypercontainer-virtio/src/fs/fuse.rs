//! The FUSE wire format: opcodes, flags and the request and reply
//! structures of the Linux uapi header `linux/fuse.h` (protocol 7.36, as
//! spoken by Linux 6.1), with a bounds-checked decoder.
//!
//! Every structure is little-endian and laid out without padding beyond
//! what the header declares, so each is written here as its list of fields
//! and encoded field by field: no `unsafe` casts of guest bytes. A request
//! is one [`InHeader`] (40 bytes) followed by the opcode's argument
//! structure and, for some opcodes, NUL-terminated names or raw data. A
//! reply is one [`OutHeader`] (16 bytes) followed by the opcode's reply
//! structure or data; an error reply is the header alone with a negative
//! errno.

use std::ffi::CStr;

/// Major version of the protocol.
pub const KERNEL_VERSION: u32 = 7;
/// The highest minor version this server speaks.
pub const KERNEL_MINOR_VERSION: u32 = 36;
/// The lowest minor version this server accepts (Linux 4.20 and later send 28+).
pub const MIN_KERNEL_MINOR_VERSION: u32 = 27;
/// The node id of the share's root.
pub const ROOT_ID: u64 = 1;
/// `init_in` as sent by kernels before 7.36 (without `flags2`).
pub const COMPAT_INIT_IN_SIZE: usize = 16;
/// `setxattr_in` without `FUSE_SETXATTR_EXT` (`size`, `flags`).
pub const COMPAT_SETXATTR_IN_SIZE: usize = 8;

/// Request opcodes.
#[allow(missing_docs)]
pub mod opcode {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const GETLK: u32 = 31;
    pub const SETLK: u32 = 32;
    pub const SETLKW: u32 = 33;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const DESTROY: u32 = 38;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
    pub const COPY_FILE_RANGE: u32 = 47;
    pub const SYNCFS: u32 = 50;
}

/// `INIT` flags (`fuse_init_in.flags` / `fuse_init_out.flags`).
#[allow(missing_docs)]
pub mod init_flags {
    pub const ASYNC_READ: u32 = 1 << 0;
    pub const POSIX_LOCKS: u32 = 1 << 1;
    pub const ATOMIC_O_TRUNC: u32 = 1 << 3;
    pub const BIG_WRITES: u32 = 1 << 5;
    pub const DO_READDIRPLUS: u32 = 1 << 13;
    pub const READDIRPLUS_AUTO: u32 = 1 << 14;
    pub const PARALLEL_DIROPS: u32 = 1 << 18;
    pub const MAX_PAGES: u32 = 1 << 22;
    pub const CACHE_SYMLINKS: u32 = 1 << 23;
    pub const HANDLE_KILLPRIV_V2: u32 = 1 << 28;
}

/// `setattr_in.valid` bits.
#[allow(missing_docs)]
pub mod fattr {
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
    pub const FH: u32 = 1 << 6;
    pub const ATIME_NOW: u32 = 1 << 7;
    pub const MTIME_NOW: u32 = 1 << 8;
    pub const LOCKOWNER: u32 = 1 << 9;
    pub const CTIME: u32 = 1 << 10;
    pub const KILL_SUIDGID: u32 = 1 << 11;
}

/// `open_out.open_flags`: keep the guest's page cache across opens.
pub const FOPEN_KEEP_CACHE: u32 = 1 << 1;
/// `getattr_in.getattr_flags`: `fh` is valid.
pub const GETATTR_FH: u32 = 1 << 0;
/// `write_in.write_flags`: the kernel asks to clear setuid/setgid.
pub const WRITE_KILL_SUIDGID: u32 = 1 << 2;
/// `open_in.open_flags`: the kernel asks to clear setuid/setgid.
pub const OPEN_KILL_SUIDGID: u32 = 1 << 0;
/// `fsync_in.fsync_flags`: data only.
pub const FSYNC_FDATASYNC: u32 = 1 << 0;
/// `lk_in.lk_flags`: a BSD `flock` rather than a POSIX lock.
pub const LK_FLOCK: u32 = 1 << 0;

/// Why a request could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The request ends before the named structure or string does.
    #[error("request too short for {0}")]
    Short(&'static str),
    /// A name is not NUL-terminated within the request.
    #[error("unterminated name")]
    Unterminated,
}

/// A cursor over request bytes; every read is bounds-checked.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next `n` bytes (`what` names them in the error).
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Short(what));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// Skip `n` bytes.
    pub fn skip(&mut self, n: usize, what: &'static str) -> Result<(), DecodeError> {
        self.take(n, what).map(|_| ())
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }

    /// A NUL-terminated string (the NUL is consumed, not returned).
    pub fn cstr(&mut self) -> Result<&'a CStr, DecodeError> {
        let rest = &self.buf[self.pos..];
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::Unterminated)?;
        let s = CStr::from_bytes_with_nul(&rest[..=nul]).map_err(|_| DecodeError::Unterminated)?;
        self.pos += nul + 1;
        Ok(s)
    }

    /// A fixed-size structure.
    pub fn read<T: Wire>(&mut self) -> Result<T, DecodeError> {
        T::get(self)
    }

    /// `count` fixed-size structures; the count is checked against the
    /// bytes left before anything is allocated.
    pub fn read_many<T: Wire>(&mut self, count: usize) -> Result<Vec<T>, DecodeError> {
        match count.checked_mul(T::SIZE) {
            Some(n) if n <= self.remaining() => {}
            _ => return Err(DecodeError::Short(T::NAME)),
        }
        (0..count).map(|_| T::get(self)).collect()
    }
}

/// A fixed-size little-endian wire item.
pub trait Wire: Sized {
    /// Encoded size in bytes.
    const SIZE: usize;
    /// Name for errors.
    const NAME: &'static str;
    /// Decode from `r`.
    fn get(r: &mut Reader<'_>) -> Result<Self, DecodeError>;
    /// Append the encoding to `out`.
    fn put(&self, out: &mut Vec<u8>);
}

macro_rules! wire_int {
    ($($t:ty),*) => {$(
        impl Wire for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            const NAME: &'static str = stringify!($t);
            fn get(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
                let b = r.take(Self::SIZE, Self::NAME)?;
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a.copy_from_slice(b);
                Ok(<$t>::from_le_bytes(a))
            }
            fn put(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
wire_int!(u16, u32, u64, i32);

macro_rules! wire_struct {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $f:ident: $t:ty,)* }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name { $($(#[$fm])* pub $f: $t,)* }
        impl Wire for $name {
            const SIZE: usize = 0 $(+ <$t as Wire>::SIZE)*;
            const NAME: &'static str = stringify!($name);
            fn get(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
                if r.remaining() < Self::SIZE {
                    return Err(DecodeError::Short(Self::NAME));
                }
                Ok(Self { $($f: <$t as Wire>::get(r)?,)* })
            }
            fn put(&self, out: &mut Vec<u8>) {
                $(<$t as Wire>::put(&self.$f, out);)*
            }
        }
    };
}

mod args;
pub use self::args::*;

wire_struct!(
    /// `fuse_in_header`: every request starts with it.
    InHeader {
        /// Length of the whole request, header included.
        len: u32,
        /// The operation.
        opcode: u32,
        /// Request id, echoed in the reply.
        unique: u64,
        /// The inode the request is about.
        nodeid: u64,
        /// Caller's fsuid in the guest.
        uid: u32,
        /// Caller's fsgid in the guest.
        gid: u32,
        /// Caller's pid in the guest.
        pid: u32,
        /// Padding (7.36).
        padding: u32,
    }
);

wire_struct!(
    /// `fuse_out_header`: every reply starts with it.
    OutHeader {
        /// Length of the whole reply, header included.
        len: u32,
        /// Zero or a negative errno.
        error: i32,
        /// The request's id.
        unique: u64,
    }
);

/// Size of a directory entry with a name of `namelen` bytes, padded to 8.
pub fn dirent_size(namelen: usize, plus: bool) -> usize {
    let base = Dirent::SIZE + if plus { EntryOut::SIZE } else { 0 };
    (base + namelen + 7) & !7
}

/// Encode `item` into a fresh vector.
pub fn encode<T: Wire>(item: &T) -> Vec<u8> {
    let mut v = Vec::with_capacity(T::SIZE);
    item.put(&mut v);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structure_sizes_match_the_uapi_header() {
        assert_eq!(InHeader::SIZE, 40);
        assert_eq!(OutHeader::SIZE, 16);
        assert_eq!(Attr::SIZE, 88);
        assert_eq!(EntryOut::SIZE, 128);
        assert_eq!(AttrOut::SIZE, 104);
        assert_eq!(InitOut::SIZE, 64);
        assert_eq!(SetattrIn::SIZE, 88);
        assert_eq!(ReadIn::SIZE, 40);
        assert_eq!(WriteIn::SIZE, 40);
        assert_eq!(StatfsOut::SIZE, 80);
        assert_eq!(LkIn::SIZE, 48);
        assert_eq!(CopyFileRangeIn::SIZE, 56);
        assert_eq!(Dirent::SIZE, 24);
        assert_eq!(dirent_size(1, false), 32);
        assert_eq!(dirent_size(8, true), 160);
    }

    #[test]
    fn every_truncation_of_a_structure_is_a_short_error() {
        let mut bytes = Vec::new();
        SetattrIn {
            valid: 3,
            size: 9,
            gid: 7,
            ..Default::default()
        }
        .put(&mut bytes);
        for n in 0..bytes.len() {
            let mut r = Reader::new(&bytes[..n]);
            assert_eq!(r.read::<SetattrIn>(), Err(DecodeError::Short("SetattrIn")));
        }
        let back: SetattrIn = Reader::new(&bytes).read().unwrap();
        assert_eq!((back.valid, back.size, back.gid), (3, 9, 7));
    }

    #[test]
    fn counts_are_checked_before_allocating() {
        let bytes = [0u8; 32];
        let mut r = Reader::new(&bytes);
        assert!(r.read_many::<ForgetOne>(usize::MAX).is_err());
        assert!(r.read_many::<ForgetOne>(3).is_err());
        assert_eq!(r.read_many::<ForgetOne>(2).unwrap().len(), 2);
    }

    #[test]
    fn names_must_be_nul_terminated() {
        let mut r = Reader::new(b"abc\0def");
        assert_eq!(r.cstr().unwrap().to_bytes(), b"abc");
        assert_eq!(r.cstr(), Err(DecodeError::Unterminated));
    }
}
