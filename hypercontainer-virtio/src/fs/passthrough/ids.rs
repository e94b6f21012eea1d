//! Guest and host ids: the [`Ownership`] policy of a share.

/// The id shown for host ids that have no guest id.
pub const OVERFLOW_ID: u32 = 65534;

/// One range of a map: `count` ids from `guest` stand for `count` ids
/// from `host`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRange {
    /// First guest id.
    pub guest: u32,
    /// First host id.
    pub host: u32,
    /// Number of ids.
    pub count: u32,
}

/// A uid map and a gid map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdMap {
    /// Uid ranges.
    pub uids: Vec<IdRange>,
    /// Gid ranges.
    pub gids: Vec<IdRange>,
}

fn to_host(ranges: &[IdRange], id: u32) -> Option<u32> {
    ranges.iter().find_map(|r| {
        let off = id.checked_sub(r.guest)?;
        (off < r.count).then(|| r.host.wrapping_add(off))
    })
}

fn to_guest(ranges: &[IdRange], id: u32) -> u32 {
    ranges
        .iter()
        .find_map(|r| {
            let off = id.checked_sub(r.host)?;
            (off < r.count).then(|| r.guest.wrapping_add(off))
        })
        .unwrap_or(OVERFLOW_ID)
}

/// Who owns what: how guest uids and gids relate to the host's.
///
/// * [`Ownership::Passthrough`] (the default when the process runs as
///   root): guest ids are host ids. Files the guest creates are given the
///   caller's ids with `fchownat` right after they are made (the device
///   never changes its own credentials, so other devices on the same
///   thread are not affected); `chown` from the guest is applied as is.
/// * [`Ownership::Squash`] (the default otherwise): every file appears
///   owned by one guest uid/gid (root, by default), whatever its host
///   owner; new files belong to the process's own host ids. A guest
///   `chown` is accepted and not applied: without privilege the host
///   cannot store it. Host permission checks still apply to the process,
///   so a host file it may not write stays unwritable.
/// * [`Ownership::Map`]: ranges of guest ids stand for ranges of host ids,
///   as a user namespace maps them. Ids outside the map show as 65534
///   (`nobody`) in the guest, and a `chown` to an unmapped guest id is
///   `EINVAL`. Creating and chowning to mapped ids needs `CAP_CHOWN` over
///   them (root, or a user namespace owning them).
///
/// Permission checks for guest callers are made by the guest kernel (the
/// Linux virtio-fs driver mounts with `default_permissions`).
///
/// Whatever the policy, a guest root may create setuid files and set file
/// capabilities (`security.capability`) in a writable share: the host
/// should not execute files from a share with privilege.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// Guest ids are host ids.
    Passthrough,
    /// Everything appears owned by `uid`/`gid`; chown is not applied.
    Squash {
        /// The owner every file shows.
        uid: u32,
        /// The group every file shows.
        gid: u32,
    },
    /// Ranges of guest ids stand for ranges of host ids.
    Map(IdMap),
}

impl Default for Ownership {
    /// `Passthrough` when the process runs as root, `Squash` to guest root
    /// otherwise.
    fn default() -> Self {
        if super::sys::geteuid() == 0 {
            Self::Passthrough
        } else {
            Self::Squash { uid: 0, gid: 0 }
        }
    }
}

/// `u32::MAX`: "leave this id alone" for `fchownat`.
pub const KEEP: u32 = u32::MAX;

impl Ownership {
    /// The guest's view of a host owner.
    pub fn guest_ids(&self, uid: u32, gid: u32) -> (u32, u32) {
        match self {
            Self::Passthrough => (uid, gid),
            Self::Squash { uid, gid } => (*uid, *gid),
            Self::Map(m) => (to_guest(&m.uids, uid), to_guest(&m.gids, gid)),
        }
    }

    /// The host ids to give a file for guest `uid`/`gid` (`KEEP` leaves
    /// one alone). `None`: the id cannot be stored (`EINVAL`).
    pub fn host_ids(&self, uid: Option<u32>, gid: Option<u32>) -> Option<(u32, u32)> {
        match self {
            Self::Passthrough => Some((uid.unwrap_or(KEEP), gid.unwrap_or(KEEP))),
            Self::Squash { .. } => Some((KEEP, KEEP)),
            Self::Map(m) => {
                let u = match uid {
                    Some(u) => to_host(&m.uids, u)?,
                    None => KEEP,
                };
                let g = match gid {
                    Some(g) => to_host(&m.gids, g)?,
                    None => KEEP,
                };
                Some((u, g))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_translates_both_ways_and_unmapped_ids_overflow() {
        let o = Ownership::Map(IdMap {
            uids: vec![IdRange {
                guest: 0,
                host: 100000,
                count: 65536,
            }],
            gids: vec![IdRange {
                guest: 0,
                host: 200000,
                count: 10,
            }],
        });
        assert_eq!(o.guest_ids(100005, 200003), (5, 3));
        assert_eq!(o.guest_ids(0, 0), (OVERFLOW_ID, OVERFLOW_ID));
        assert_eq!(o.host_ids(Some(7), None), Some((100007, KEEP)));
        assert_eq!(o.host_ids(None, Some(10)), None);
    }

    #[test]
    fn squash_shows_one_owner_and_stores_nothing() {
        let o = Ownership::Squash { uid: 0, gid: 0 };
        assert_eq!(o.guest_ids(1000, 1000), (0, 0));
        assert_eq!(o.host_ids(Some(5), Some(5)), Some((KEEP, KEEP)));
        assert_eq!(Ownership::Passthrough.guest_ids(5, 6), (5, 6));
    }
}
