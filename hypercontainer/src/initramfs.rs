//! `newc` cpio archives for the guest's initramfs.
