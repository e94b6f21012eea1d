//! The inode table: node ids handed to the guest, each an `O_PATH` fd of
//! the host object, with its lookup count and its place in the tree.
//!
//! * Node ids are never reused within a device's life: a request naming a
//!   forgotten id gets `EBADF`, never someone else's inode.
//! * One host object (`st_dev`, `st_ino`) has one node id; a second lookup
//!   bumps the count.
//! * Each node remembers the parent and the name it was last seen under
//!   (the parent map). `..` is answered from it, and regular files are
//!   reopened by it. A node with a parent holds a reference on it, so
//!   that the chain up to the root stays known while a node lives; the
//!   root has no parent, which is what clamps `..` at the share root.
//! * A node leaves the table when the guest has forgotten every lookup and
//!   no child references it; its fd is closed then.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::OwnedFd;

use crate::fs::fuse::ROOT_ID;

/// `(st_dev, st_ino)` of a host object.
pub type InodeKey = (u64, u64);

/// One node.
#[derive(Debug)]
pub struct InodeData {
    /// `O_PATH` fd of the object.
    pub fd: OwnedFd,
    /// Its identity on the host.
    pub key: InodeKey,
    /// `st_mode & S_IFMT` when it was looked up.
    pub kind: u32,
    /// The parent it was last seen in (0 for the root).
    pub parent: u64,
    /// The name it was last seen under (empty for the root).
    pub name: CString,
    lookups: u64,
    children: u64,
}

impl InodeData {
    /// Whether it is a directory.
    pub fn is_dir(&self) -> bool {
        self.kind == libc::S_IFDIR
    }

    /// Whether it is a regular file.
    pub fn is_file(&self) -> bool {
        self.kind == libc::S_IFREG
    }
}

/// The table.
#[derive(Debug)]
pub struct InodeStore {
    by_id: HashMap<u64, InodeData>,
    by_key: HashMap<InodeKey, u64>,
    next_id: u64,
}

impl InodeStore {
    /// A table holding only the root.
    pub fn new(root: OwnedFd, key: InodeKey) -> Self {
        let mut s = Self {
            by_id: HashMap::new(),
            by_key: HashMap::new(),
            next_id: ROOT_ID + 1,
        };
        s.by_key.insert(key, ROOT_ID);
        s.by_id.insert(
            ROOT_ID,
            InodeData {
                fd: root,
                key,
                kind: libc::S_IFDIR,
                parent: 0,
                name: CString::default(),
                lookups: 1,
                children: 0,
            },
        );
        s
    }

    /// Nodes in the table (each holds one fd).
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// A node.
    pub fn get(&self, id: u64) -> Option<&InodeData> {
        self.by_id.get(&id)
    }

    /// The node of a host object, if known.
    pub fn find(&self, key: InodeKey) -> Option<u64> {
        self.by_key.get(&key).copied()
    }

    /// The lookup count of a node (0 when unknown).
    pub fn lookups(&self, id: u64) -> u64 {
        self.by_id.get(&id).map_or(0, |d| d.lookups)
    }

    /// The node `..` of `id` leads to: its parent, or itself for the root.
    pub fn parent_of(&self, id: u64) -> Option<u64> {
        let d = self.by_id.get(&id)?;
        if id == ROOT_ID {
            Some(ROOT_ID)
        } else {
            Some(d.parent)
        }
    }

    /// Count one more lookup of a known node.
    pub fn add_lookup(&mut self, id: u64) {
        if let Some(d) = self.by_id.get_mut(&id) {
            d.lookups = d.lookups.saturating_add(1);
        }
    }

    /// Count one more lookup of a known node, seen as `name` in `parent`.
    pub fn bump(&mut self, id: u64, parent: u64, name: &std::ffi::CStr) {
        self.add_lookup(id);
        self.moved(id, parent, name);
    }

    /// Add a new node with one lookup; answers its id.
    pub fn insert(
        &mut self,
        fd: OwnedFd,
        key: InodeKey,
        kind: u32,
        parent: u64,
        name: &std::ffi::CStr,
    ) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.by_key.insert(key, id);
        self.by_id.insert(
            id,
            InodeData {
                fd,
                key,
                kind,
                parent,
                name: name.to_owned(),
                lookups: 1,
                children: 0,
            },
        );
        self.add_child_ref(parent);
        id
    }

    /// Record that `id` is now `name` in `parent` (after a rename or a
    /// lookup under another name); moves its reference on the parent.
    pub fn moved(&mut self, id: u64, parent: u64, name: &std::ffi::CStr) {
        if id == ROOT_ID || !self.by_id.contains_key(&parent) {
            return;
        }
        let old = self.by_id.get(&id).map(|d| d.parent);
        if old != Some(parent) && self.is_ancestor(id, parent) {
            // Only the host can move a directory under its own child (the
            // kernel refuses that to the guest); the map keeps its tree.
            return;
        }
        let Some(d) = self.by_id.get_mut(&id) else {
            return;
        };
        let old = d.parent;
        d.parent = parent;
        if d.name.as_c_str() != name {
            d.name = name.to_owned();
        }
        if old != parent {
            self.add_child_ref(parent);
            self.release(old, 0, 1);
        }
    }

    /// Whether `id` is `node` or one of its ancestors in the map.
    fn is_ancestor(&self, id: u64, mut node: u64) -> bool {
        for _ in 0..=self.by_id.len() {
            if node == id {
                return true;
            }
            match self.by_id.get(&node) {
                Some(d) if node != ROOT_ID => node = d.parent,
                _ => return false,
            }
        }
        true
    }

    fn add_child_ref(&mut self, parent: u64) {
        if let Some(p) = self.by_id.get_mut(&parent) {
            p.children += 1;
        }
    }

    /// Drop `count` lookups of `id`; the root is never dropped.
    pub fn forget(&mut self, id: u64, count: u64) {
        if id != ROOT_ID {
            self.release(id, count, 0);
        }
    }

    /// Drop lookups and child references, removing nodes (and, in turn,
    /// their parents' references) that reach zero. Iterative: a deep tree
    /// cannot overflow the stack.
    fn release(&mut self, mut id: u64, mut lookups: u64, mut children: u64) {
        loop {
            if id == ROOT_ID {
                if let Some(root) = self.by_id.get_mut(&id) {
                    root.children = root.children.saturating_sub(children);
                }
                return;
            }
            let Some(d) = self.by_id.get_mut(&id) else {
                return;
            };
            d.lookups = d.lookups.saturating_sub(lookups);
            d.children = d.children.saturating_sub(children);
            if d.lookups > 0 || d.children > 0 {
                return;
            }
            let Some(gone) = self.by_id.remove(&id) else {
                return;
            };
            if self.by_key.get(&gone.key) == Some(&id) {
                self.by_key.remove(&gone.key);
            }
            id = gone.parent;
            lookups = 0;
            children = 1;
        }
    }

    /// Drop every node but the root (end of a session).
    pub fn clear(&mut self) {
        self.by_id.retain(|&id, _| id == ROOT_ID);
        let root_key = self.by_id.get(&ROOT_ID).map(|d| d.key);
        self.by_key.retain(|k, _| Some(*k) == root_key);
        if let Some(root) = self.by_id.get_mut(&ROOT_ID) {
            root.children = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd() -> OwnedFd {
        OwnedFd::from(std::fs::File::open("/").unwrap())
    }

    #[test]
    fn forgotten_ids_are_never_reused() {
        let mut s = InodeStore::new(fd(), (0, 1));
        let a = s.insert(fd(), (0, 2), libc::S_IFREG, ROOT_ID, c"a");
        s.forget(a, 1);
        assert!(s.get(a).is_none());
        let b = s.insert(fd(), (0, 2), libc::S_IFREG, ROOT_ID, c"a");
        assert_ne!(a, b);
        assert_eq!(s.find((0, 2)), Some(b));
    }

    #[test]
    fn a_parent_lives_while_a_child_does_and_dotdot_stops_at_the_root() {
        let mut s = InodeStore::new(fd(), (0, 1));
        let d = s.insert(fd(), (0, 2), libc::S_IFDIR, ROOT_ID, c"d");
        let f = s.insert(fd(), (0, 3), libc::S_IFREG, d, c"f");
        s.forget(d, 1);
        assert!(s.get(d).is_some(), "the child keeps its parent");
        assert_eq!(s.parent_of(f), Some(d));
        assert_eq!(s.parent_of(d), Some(ROOT_ID));
        assert_eq!(s.parent_of(ROOT_ID), Some(ROOT_ID));
        s.forget(f, u64::MAX);
        assert!(s.get(f).is_none());
        assert!(s.get(d).is_none(), "released with its last child");
        assert_eq!(s.len(), 1);
        s.forget(ROOT_ID, 100);
        assert!(s.get(ROOT_ID).is_some());
    }

    #[test]
    fn the_parent_map_never_forms_a_cycle() {
        let mut s = InodeStore::new(fd(), (0, 1));
        let a = s.insert(fd(), (0, 2), libc::S_IFDIR, ROOT_ID, c"a");
        let b = s.insert(fd(), (0, 3), libc::S_IFDIR, a, c"b");
        // The host moved `a` under `b`, and the guest looks it up there.
        s.moved(a, b, c"a");
        assert_eq!(s.parent_of(a), Some(ROOT_ID));
        assert_eq!(s.parent_of(b), Some(a));
        s.forget(b, 1);
        s.forget(a, 1);
        assert_eq!(s.len(), 1, "no node is kept alive by a loop");
    }

    #[test]
    fn a_move_shifts_the_parent_reference() {
        let mut s = InodeStore::new(fd(), (0, 1));
        let a = s.insert(fd(), (0, 2), libc::S_IFDIR, ROOT_ID, c"a");
        let b = s.insert(fd(), (0, 3), libc::S_IFDIR, ROOT_ID, c"b");
        let f = s.insert(fd(), (0, 4), libc::S_IFREG, a, c"f");
        s.moved(f, b, c"g");
        s.forget(a, 1);
        assert!(s.get(a).is_none());
        s.forget(b, 1);
        assert_eq!(s.get(f).unwrap().name.as_c_str(), c"g");
        assert!(s.get(b).is_some());
    }
}
