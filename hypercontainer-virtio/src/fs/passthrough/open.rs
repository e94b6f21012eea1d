//! Names and opens: the path-safety rules of the passthrough.
//!
//! * A name from the guest is one path component: never empty, never
//!   holding `/`. `.` and `..` are refused wherever they would name
//!   something new (create, remove, rename, link); in a lookup they are
//!   answered from the inode store, never from the host's `..`.
//! * Every open is `openat2(parent, name, flags | O_NOFOLLOW | O_CLOEXEC,
//!   RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` relative to the parent's
//!   `O_PATH` fd: the last component is never followed, and the parent
//!   itself is treated as the root, so nothing can resolve above it even
//!   if the kernel were handed a longer path.
//! * Only regular files and directories are opened for I/O; the object
//!   opened is checked (file type, device and inode number) against the
//!   inode it stands for, so a name swapped for something else between
//!   lookup and open is refused with `ESTALE` instead of being used.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::sys;
use crate::fs::filesystem::{Errno, FsResult};

/// The resolve flags of every open.
pub const RESOLVE: u64 = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;

/// What a lookup name means.
#[derive(Debug, PartialEq, Eq)]
pub enum LookupName<'a> {
    /// `.`: the directory itself.
    Dot,
    /// `..`: the parent, from the inode store, clamped at the share root.
    DotDot,
    /// An ordinary entry.
    Entry(&'a CStr),
}

fn check_component(name: &CStr) -> FsResult<()> {
    let b = name.to_bytes();
    if b.is_empty() || b.contains(&b'/') {
        return Err(Errno(libc::EINVAL));
    }
    Ok(())
}

/// Classify a name of a lookup; `/` or an empty name is `EINVAL`.
pub fn lookup_name(name: &CStr) -> FsResult<LookupName<'_>> {
    check_component(name)?;
    Ok(match name.to_bytes() {
        b"." => LookupName::Dot,
        b".." => LookupName::DotDot,
        _ => LookupName::Entry(name),
    })
}

/// Check a name that creates, removes or renames an entry: one component,
/// not `.` or `..`.
pub fn entry_name(name: &CStr) -> FsResult<&CStr> {
    check_component(name)?;
    match name.to_bytes() {
        b"." | b".." => Err(Errno(libc::EINVAL)),
        _ => Ok(name),
    }
}

/// An `O_PATH` fd of the entry `name` of `parent`, not following it.
pub fn open_path(parent: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    sys::openat2(
        parent,
        name,
        libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        0,
        RESOLVE,
    )
}

/// A directory fd for reading, from the directory's own `O_PATH` fd
/// (`"."` relative to itself: with `RESOLVE_IN_ROOT` it cannot leave it).
pub fn open_dir(dir: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    sys::openat2(
        dir,
        c".",
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        0,
        RESOLVE,
    )
}

/// The `open(2)` flags a guest may pass through; everything else (`O_PATH`,
/// `O_CREAT`, `O_TMPFILE`, `O_NOATIME`, ...) is dropped.
pub fn guest_open_flags(flags: u32) -> libc::c_int {
    let allowed = libc::O_ACCMODE
        | libc::O_APPEND
        | libc::O_TRUNC
        | libc::O_NONBLOCK
        | libc::O_SYNC
        | libc::O_DSYNC
        | libc::O_DIRECT
        | libc::O_LARGEFILE;
    (flags as libc::c_int) & allowed
}

/// Whether the flags open for writing (or truncate).
pub fn writes(flags: u32) -> bool {
    let f = flags as libc::c_int;
    f & libc::O_ACCMODE != libc::O_RDONLY || f & libc::O_TRUNC != 0
}

/// Open the regular file `name` of `parent` for I/O with the guest's
/// `flags` (plus `extra`, e.g. `O_CREAT | O_EXCL`), checking that it is a
/// regular file and, when `expect` is given, that it is that
/// `(st_dev, st_ino)`.
///
/// The open itself is non-blocking and never truncates: a FIFO swapped in
/// for the file cannot stall the device thread, and nothing is truncated
/// before it is known to be the right file. `O_TRUNC` is applied with
/// `ftruncate` after the checks, and `O_NONBLOCK` dropped again unless
/// the guest asked for it.
pub fn open_file(
    parent: BorrowedFd<'_>,
    name: &CStr,
    flags: libc::c_int,
    mode: u32,
    expect: Option<(u64, u64)>,
) -> FsResult<std::fs::File> {
    let open_flags = (flags & !libc::O_TRUNC)
        | libc::O_NONBLOCK
        | libc::O_NOFOLLOW
        | libc::O_CLOEXEC
        | libc::O_NOCTTY;
    let fd = sys::openat2(parent, name, open_flags, mode, RESOLVE).map_err(|e| {
        match e.raw_os_error() {
            // O_NOFOLLOW on a symlink (ELOOP) or a FIFO without a reader
            // (ENXIO): the name no longer holds the file.
            Some(libc::ELOOP) | Some(libc::ENXIO) if expect.is_some() => Errno(libc::ESTALE),
            _ => Errno::from(e),
        }
    })?;
    let st = sys::stat_fd(fd.as_fd())?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(Errno(if expect.is_some() {
            libc::ESTALE
        } else {
            libc::EACCES
        }));
    }
    if let Some(key) = expect {
        if (st.st_dev, st.st_ino) != key {
            return Err(Errno(libc::ESTALE));
        }
    }
    if flags & libc::O_NONBLOCK == 0 {
        sys::clear_nonblock(fd.as_fd())?;
    }
    let file = std::fs::File::from(fd);
    if flags & libc::O_TRUNC != 0 && flags & libc::O_ACCMODE != libc::O_RDONLY {
        file.set_len(0)?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_names_are_single_components() {
        assert_eq!(lookup_name(c".").unwrap(), LookupName::Dot);
        assert_eq!(lookup_name(c"..").unwrap(), LookupName::DotDot);
        assert_eq!(lookup_name(c"a").unwrap(), LookupName::Entry(c"a"));
        for bad in [c"", c"/", c"/etc", c"a/b", c"../x"] {
            assert_eq!(lookup_name(bad), Err(Errno(libc::EINVAL)), "{bad:?}");
        }
    }

    #[test]
    fn dot_names_cannot_be_created_or_removed() {
        for bad in [c"", c".", c"..", c"a/b", c"/abs"] {
            assert_eq!(entry_name(bad), Err(Errno(libc::EINVAL)), "{bad:?}");
        }
        assert!(entry_name(c"...").is_ok());
    }

    #[test]
    fn open_flags_drop_what_the_guest_may_not_ask_for() {
        let f = guest_open_flags((libc::O_PATH | libc::O_CREAT | libc::O_RDWR) as u32);
        assert_eq!(f, libc::O_RDWR);
        assert!(writes(libc::O_WRONLY as u32));
        assert!(writes((libc::O_RDONLY | libc::O_TRUNC) as u32));
        assert!(!writes(libc::O_RDONLY as u32));
    }
}
