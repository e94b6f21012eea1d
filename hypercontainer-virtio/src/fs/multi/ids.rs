//! How node ids, handles and inode numbers of several shares share one
//! number space.
//!
//! ```text
//!  63        56 55                                             0
//! +------------+------------------------------------------------+
//! |    tag     |                 inner id                       |
//! +------------+------------------------------------------------+
//!  tag 0: the virtual root (node id 1, directory handle 0)
//!  tag t in 1..=255: share index t - 1, inner id its own (never 0)
//! ```
//!
//! Node ids and file or directory handles use the layout above. An inner
//! id that does not fit in 56 bits, or that is 0, is never encoded (the
//! request answers `EOVERFLOW`), so an id can never name a node of another
//! share. Decoding an id whose tag names no share, or whose inner id is 0,
//! fails; the caller answers `ESTALE` (nodes) or `EBADF` (handles).
//!
//! Inode numbers (`st_ino` of attributes and `d_ino` of directory
//! entries) are the host's, with the tag xor-ed into the top 8 bits. All
//! shares sit behind one guest mount, so one `st_dev`: without the tag, two
//! shares on one host filesystem, or on two, could report the same number
//! for different files, and `tar`, `find` or `cp -a` would take them for
//! hard links of each other. Within a share the mapping is one-to-one;
//! across shares numbers differ as long as host inode numbers stay below
//! 2^56 (true of ext4, xfs, btrfs and tmpfs). The virtual root reports
//! inode number 1, which a share reports only for a host inode number of
//! exactly its tag plus 1. Every share's numbers are 2^56 or more, so a
//! 32-bit program built without large-file support gets `EOVERFLOW` from
//! `stat` in a multi-share mount (64-bit programs are not affected).

use super::super::filesystem::{Errno, FsResult};

/// Bits of an id kept for the share's own number.
pub const INNER_BITS: u32 = 56;
/// The largest inner id (or handle) that can be encoded.
pub const MAX_INNER: u64 = (1 << INNER_BITS) - 1;
/// Most shares one device serves (tags 1 to 255).
pub const MAX_SHARES: usize = 255;
/// The inode number of the virtual root.
pub const ROOT_INO: u64 = 1;

fn tag(index: usize) -> FsResult<u64> {
    if index >= MAX_SHARES {
        return Err(Errno(libc::EOVERFLOW));
    }
    Ok((index as u64 + 1) << INNER_BITS)
}

/// The id the guest sees for inner id (or handle) `inner` of share `index`.
pub fn encode(index: usize, inner: u64) -> FsResult<u64> {
    if inner == 0 || inner > MAX_INNER {
        return Err(Errno(libc::EOVERFLOW));
    }
    Ok(tag(index)? | inner)
}

/// The share index and inner id of an id from the guest; `None` for the
/// virtual root's tag or a zero inner id.
pub fn decode(id: u64) -> Option<(usize, u64)> {
    let t = id >> INNER_BITS;
    let inner = id & MAX_INNER;
    if t == 0 || inner == 0 {
        return None;
    }
    Some(((t - 1) as usize, inner))
}

/// The inode number the guest sees for host inode number `ino` of share
/// `index`.
pub fn ino(index: usize, ino: u64) -> u64 {
    // index < MAX_SHARES for every share, so the tag always fits.
    ino ^ tag(index).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_for_every_share_and_the_extreme_inner_ids() {
        for index in [0, 1, 7, MAX_SHARES - 1] {
            for inner in [1, 2, 12345, MAX_INNER] {
                let id = encode(index, inner).unwrap();
                assert_eq!(decode(id), Some((index, inner)));
                assert_ne!(id, fuse_root());
            }
        }
    }

    fn fuse_root() -> u64 {
        crate::fs::fuse::ROOT_ID
    }

    #[test]
    fn inner_ids_that_do_not_fit_or_are_zero_are_never_encoded() {
        assert_eq!(encode(0, MAX_INNER + 1), Err(Errno(libc::EOVERFLOW)));
        assert_eq!(encode(0, u64::MAX), Err(Errno(libc::EOVERFLOW)));
        assert_eq!(encode(0, 0), Err(Errno(libc::EOVERFLOW)));
        assert_eq!(encode(MAX_SHARES, 1), Err(Errno(libc::EOVERFLOW)));
    }

    #[test]
    fn root_tag_and_zero_inner_ids_do_not_decode() {
        assert_eq!(decode(0), None);
        assert_eq!(decode(fuse_root()), None);
        assert_eq!(decode(MAX_INNER), None);
        assert_eq!(decode(1 << INNER_BITS), None);
        assert_eq!(decode(u64::MAX), Some((MAX_SHARES - 1, MAX_INNER)));
    }

    #[test]
    fn the_same_host_inode_differs_between_shares_and_from_the_root() {
        let a = ino(0, 2);
        let b = ino(1, 2);
        assert_ne!(a, b);
        assert_ne!(a, ROOT_INO);
        assert_eq!(ino(1, b), 2);
        assert_eq!(ino(0, ino(0, 77)), 77);
    }
}
