//! The argument and reply structures of the FUSE operations.

use super::{DecodeError, Reader, Wire};

wire_struct!(
    /// `fuse_attr`.
    Attr {
        /// Inode number.
        ino: u64,
        /// Size in bytes.
        size: u64,
        /// 512-byte blocks.
        blocks: u64,
        /// Access time, seconds.
        atime: u64,
        /// Modification time, seconds.
        mtime: u64,
        /// Change time, seconds.
        ctime: u64,
        /// Access time, nanoseconds.
        atimensec: u32,
        /// Modification time, nanoseconds.
        mtimensec: u32,
        /// Change time, nanoseconds.
        ctimensec: u32,
        /// File type and permissions.
        mode: u32,
        /// Hard links.
        nlink: u32,
        /// Owner as the guest sees it.
        uid: u32,
        /// Group as the guest sees it.
        gid: u32,
        /// Device number.
        rdev: u32,
        /// Preferred I/O size.
        blksize: u32,
        /// Attribute flags.
        flags: u32,
    }
);

wire_struct!(
    /// `fuse_entry_out`: the reply to lookup and the create operations.
    EntryOut {
        /// Node id (0: negative entry).
        nodeid: u64,
        /// Inode generation.
        generation: u64,
        /// How long the name stays valid, seconds.
        entry_valid: u64,
        /// How long the attributes stay valid, seconds.
        attr_valid: u64,
        /// Nanoseconds of `entry_valid`.
        entry_valid_nsec: u32,
        /// Nanoseconds of `attr_valid`.
        attr_valid_nsec: u32,
        /// The attributes.
        attr: Attr,
    }
);

wire_struct!(
    /// `fuse_attr_out`: the reply to getattr and setattr.
    AttrOut {
        /// Validity, seconds.
        attr_valid: u64,
        /// Validity, nanoseconds.
        attr_valid_nsec: u32,
        /// Unused.
        dummy: u32,
        /// The attributes.
        attr: Attr,
    }
);

wire_struct!(
    /// `fuse_init_in` up to `flags` (the 7.36 tail is read separately).
    InitIn {
        /// Major version.
        major: u32,
        /// Minor version.
        minor: u32,
        /// Readahead the kernel wants.
        max_readahead: u32,
        /// Capabilities the kernel offers.
        flags: u32,
    }
);

wire_struct!(
    /// `fuse_init_out` (7.36 layout, 64 bytes).
    InitOut {
        /// Major version.
        major: u32,
        /// Minor version.
        minor: u32,
        /// Readahead granted.
        max_readahead: u32,
        /// Capabilities accepted.
        flags: u32,
        /// Background requests.
        max_background: u16,
        /// Congestion threshold.
        congestion_threshold: u16,
        /// Largest write payload.
        max_write: u32,
        /// Timestamp granularity, nanoseconds.
        time_gran: u32,
        /// Largest request, pages.
        max_pages: u16,
        /// DAX alignment (unused).
        map_alignment: u16,
        /// Extended flags.
        flags2: u32,
        /// Unused.
        unused0: u64,
        /// Unused.
        unused1: u64,
        /// Unused.
        unused2: u64,
        /// Unused.
        unused3: u32,
    }
);

wire_struct!(
    /// `fuse_forget_in`.
    ForgetIn {
        /// Lookups to drop.
        nlookup: u64,
    }
);

wire_struct!(
    /// `fuse_forget_one`, an entry of `BATCH_FORGET`.
    ForgetOne {
        /// The node.
        nodeid: u64,
        /// Lookups to drop.
        nlookup: u64,
    }
);

wire_struct!(
    /// `fuse_batch_forget_in`.
    BatchForgetIn {
        /// Entries that follow.
        count: u32,
        /// Unused.
        dummy: u32,
    }
);

wire_struct!(
    /// `fuse_getattr_in`.
    GetattrIn {
        /// `GETATTR_FH`.
        getattr_flags: u32,
        /// Unused.
        dummy: u32,
        /// File handle when `GETATTR_FH` is set.
        fh: u64,
    }
);

wire_struct!(
    /// `fuse_setattr_in`.
    SetattrIn {
        /// Which fields are set (`fattr`).
        valid: u32,
        /// Unused.
        padding: u32,
        /// File handle (`fattr::FH`).
        fh: u64,
        /// New size.
        size: u64,
        /// Lock owner.
        lock_owner: u64,
        /// Access time, seconds.
        atime: u64,
        /// Modification time, seconds.
        mtime: u64,
        /// Change time, seconds.
        ctime: u64,
        /// Access time, nanoseconds.
        atimensec: u32,
        /// Modification time, nanoseconds.
        mtimensec: u32,
        /// Change time, nanoseconds.
        ctimensec: u32,
        /// New mode.
        mode: u32,
        /// Unused.
        unused4: u32,
        /// New owner.
        uid: u32,
        /// New group.
        gid: u32,
        /// Unused.
        unused5: u32,
    }
);

wire_struct!(
    /// `fuse_mknod_in`, followed by the name.
    MknodIn {
        /// Type and permissions.
        mode: u32,
        /// Device number.
        rdev: u32,
        /// Caller's umask.
        umask: u32,
        /// Unused.
        padding: u32,
    }
);

wire_struct!(
    /// `fuse_mkdir_in`, followed by the name.
    MkdirIn {
        /// Permissions.
        mode: u32,
        /// Caller's umask.
        umask: u32,
    }
);

wire_struct!(
    /// `fuse_rename2_in`, followed by the old and the new name.
    Rename2In {
        /// New parent.
        newdir: u64,
        /// `RENAME_*` flags.
        flags: u32,
        /// Unused.
        padding: u32,
    }
);

wire_struct!(
    /// `fuse_link_in`, followed by the new name.
    LinkIn {
        /// The inode to link.
        oldnodeid: u64,
    }
);

wire_struct!(
    /// `fuse_open_in`.
    OpenIn {
        /// `open(2)` flags.
        flags: u32,
        /// `OPEN_KILL_SUIDGID`.
        open_flags: u32,
    }
);

wire_struct!(
    /// `fuse_create_in`, followed by the name.
    CreateIn {
        /// `open(2)` flags.
        flags: u32,
        /// Permissions.
        mode: u32,
        /// Caller's umask.
        umask: u32,
        /// `OPEN_KILL_SUIDGID`.
        open_flags: u32,
    }
);

wire_struct!(
    /// `fuse_open_out`.
    OpenOut {
        /// File handle.
        fh: u64,
        /// `FOPEN_*`.
        open_flags: u32,
        /// Unused.
        padding: u32,
    }
);

wire_struct!(
    /// `fuse_release_in`.
    ReleaseIn {
        /// File handle.
        fh: u64,
        /// Open flags.
        flags: u32,
        /// Release flags.
        release_flags: u32,
        /// Lock owner.
        lock_owner: u64,
    }
);

wire_struct!(
    /// `fuse_flush_in`.
    FlushIn {
        /// File handle.
        fh: u64,
        /// Unused.
        unused: u32,
        /// Unused.
        padding: u32,
        /// Lock owner.
        lock_owner: u64,
    }
);

wire_struct!(
    /// `fuse_read_in` (also the argument of readdir).
    ReadIn {
        /// File handle.
        fh: u64,
        /// Offset.
        offset: u64,
        /// Bytes wanted.
        size: u32,
        /// Read flags.
        read_flags: u32,
        /// Lock owner.
        lock_owner: u64,
        /// Open flags.
        flags: u32,
        /// Unused.
        padding: u32,
    }
);

wire_struct!(
    /// `fuse_write_in`, followed by the data.
    WriteIn {
        /// File handle.
        fh: u64,
        /// Offset.
        offset: u64,
        /// Bytes that follow.
        size: u32,
        /// `WRITE_KILL_SUIDGID`, ...
        write_flags: u32,
        /// Lock owner.
        lock_owner: u64,
        /// Open flags.
        flags: u32,
        /// Unused.
        padding: u32,
    }
);

wire_struct!(
    /// `fuse_write_out`.
    WriteOut {
        /// Bytes written.
        size: u32,
        /// Unused.
        padding: u32,
    }
);

wire_struct!(
    /// `fuse_kstatfs` (the whole of `fuse_statfs_out`).
    StatfsOut {
        /// Total blocks.
        blocks: u64,
        /// Free blocks.
        bfree: u64,
        /// Blocks available to unprivileged users.
        bavail: u64,
        /// Total inodes.
        files: u64,
        /// Free inodes.
        ffree: u64,
        /// Block size.
        bsize: u32,
        /// Longest name.
        namelen: u32,
        /// Fragment size.
        frsize: u32,
        /// Unused.
        padding: u32,
        /// Unused.
        spare0: u64,
        /// Unused.
        spare1: u64,
        /// Unused.
        spare2: u64,
    }
);

wire_struct!(
    /// `fuse_fsync_in` (also fsyncdir).
    FsyncIn {
        /// File handle.
        fh: u64,
        /// `FSYNC_FDATASYNC`.
        fsync_flags: u32,
        /// Unused.
        padding: u32,
    }
);

wire_struct!(
    /// `fuse_setxattr_in` without `FUSE_SETXATTR_EXT`; name and value follow.
    SetxattrIn {
        /// Value length.
        size: u32,
        /// `XATTR_CREATE` / `XATTR_REPLACE`.
        flags: u32,
    }
);

wire_struct!(
    /// `fuse_getxattr_in` (also listxattr), followed by the name.
    GetxattrIn {
        /// Buffer size (0: ask for the size).
        size: u32,
        /// Unused.
        padding: u32,
    }
);

wire_struct!(
    /// `fuse_getxattr_out`: the size, when asked with a zero size.
    GetxattrOut {
        /// Size of the value or list.
        size: u32,
        /// Unused.
        padding: u32,
    }
);

wire_struct!(
    /// `fuse_file_lock`.
    FileLock {
        /// First byte.
        start: u64,
        /// Last byte (inclusive; `OFFSET_MAX` for end of file).
        end: u64,
        /// `F_RDLCK`, `F_WRLCK` or `F_UNLCK`.
        typ: u32,
        /// Holder's pid.
        pid: u32,
    }
);

wire_struct!(
    /// `fuse_lk_in`.
    LkIn {
        /// File handle.
        fh: u64,
        /// Lock owner.
        owner: u64,
        /// The lock.
        lk: FileLock,
        /// `LK_FLOCK`.
        lk_flags: u32,
        /// Unused.
        padding: u32,
    }
);

wire_struct!(
    /// `fuse_access_in`.
    AccessIn {
        /// `R_OK | W_OK | X_OK`.
        mask: u32,
        /// Unused.
        padding: u32,
    }
);

wire_struct!(
    /// `fuse_fallocate_in`.
    FallocateIn {
        /// File handle.
        fh: u64,
        /// Offset.
        offset: u64,
        /// Length.
        length: u64,
        /// `fallocate(2)` mode.
        mode: u32,
        /// Unused.
        padding: u32,
    }
);

wire_struct!(
    /// `fuse_lseek_in`.
    LseekIn {
        /// File handle.
        fh: u64,
        /// Offset.
        offset: u64,
        /// `SEEK_DATA` / `SEEK_HOLE` (the others are answered by the kernel).
        whence: u32,
        /// Unused.
        padding: u32,
    }
);

wire_struct!(
    /// `fuse_lseek_out`.
    LseekOut {
        /// Resulting offset.
        offset: u64,
    }
);

wire_struct!(
    /// `fuse_copy_file_range_in`.
    CopyFileRangeIn {
        /// Source handle.
        fh_in: u64,
        /// Source offset.
        off_in: u64,
        /// Destination node.
        nodeid_out: u64,
        /// Destination handle.
        fh_out: u64,
        /// Destination offset.
        off_out: u64,
        /// Bytes to copy.
        len: u64,
        /// Flags (must be 0).
        flags: u64,
    }
);

wire_struct!(
    /// `fuse_dirent` without the name: `readdir` entries.
    Dirent {
        /// Inode number.
        ino: u64,
        /// Offset of the next entry.
        off: u64,
        /// Name length.
        namelen: u32,
        /// `DT_*` type.
        typ: u32,
    }
);

wire_struct!(
    /// `fuse_interrupt_in`.
    InterruptIn {
        /// The request to interrupt.
        unique: u64,
    }
);
