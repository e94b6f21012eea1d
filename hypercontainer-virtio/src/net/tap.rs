//! Tap devices (`/dev/net/tun`, `IFF_TAP | IFF_NO_PI`) as a [`NetBackend`],
//! with `IFF_VNET_HDR` so that checksum and segmentation offloads reach
//! the host kernel.

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
};

use super::{set_nonblocking, Error, NetBackend, Result, NET_HDR_LEN};

/// A tap device (`IFF_TAP | IFF_NO_PI`), non-blocking.
#[derive(Debug)]
pub struct Tap {
    file: std::fs::File,
    name: String,
    vnet_hdr: bool,
}

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;

impl Tap {
    /// Open (or create) the tap interface `name` (`%d` patterns allowed).
    /// Needs `CAP_NET_ADMIN` unless the interface exists and belongs to the
    /// caller.
    pub fn open(name: &str) -> Result<Self> {
        check_interface_name(name)?;
        let tap_err = |source| Error::Tap {
            name: name.to_string(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(tap_err)?;
        let mut req = IfReq {
            name: [0; 16],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` has its
        // layout (16-byte name, flags, padding to 40 bytes) and outlives the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req) };
        if rc < 0 {
            return Err(tap_err(io::Error::last_os_error()));
        }
        let end = req.name.iter().position(|&b| b == 0).unwrap_or(16);
        let name = String::from_utf8_lossy(&req.name[..end]).into_owned();
        set_vnet_hdr_len(file.as_raw_fd()).map_err(tap_err)?;
        Ok(Self {
            file,
            name,
            vnet_hdr: true,
        })
    }

    /// Use an already configured tap fd (e.g. handed over by a network
    /// manager). It is made non-blocking. Offloads are used when it was
    /// opened with `IFF_VNET_HDR`.
    pub fn from_fd(fd: OwnedFd) -> Result<Self> {
        set_nonblocking(fd.as_raw_fd()).map_err(Error::Backend)?;
        let mut req = IfReq {
            name: [0; 16],
            flags: 0,
            _pad: [0; 22],
        };
        // SAFETY: TUNGETIFF writes a `struct ifreq` into `req`, which has
        // its layout and outlives the call. On a descriptor that is not a
        // tun/tap it fails and `req` stays zeroed.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNGETIFF as _, &mut req) };
        let vnet_hdr = rc == 0 && req.flags & IFF_VNET_HDR != 0;
        if vnet_hdr {
            set_vnet_hdr_len(fd.as_raw_fd()).map_err(Error::Backend)?;
        }
        let end = req.name.iter().position(|&b| b == 0).unwrap_or(16);
        Ok(Self {
            file: std::fs::File::from(fd),
            name: String::from_utf8_lossy(&req.name[..end]).into_owned(),
            vnet_hdr,
        })
    }

    /// The interface name (empty when built from an fd).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tap's descriptor, e.g. to configure the interface first and hand
    /// the open tap to a VM or sandbox afterwards (the interface lives as
    /// long as the descriptor is open, unless made persistent).
    pub fn into_fd(self) -> OwnedFd {
        self.file.into()
    }
}

/// Checks `name` against what Linux accepts as an interface name: 1 to 15
/// bytes, no `/`, NUL or white space (a `%d` pattern is fine).
pub fn check_interface_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 15
        || name.contains(|c: char| c == '/' || c == '\0' || c.is_whitespace())
    {
        return Err(Error::InterfaceName(name.to_string()));
    }
    Ok(())
}

/// Headers of [`NET_HDR_LEN`] bytes on a tap with `IFF_VNET_HDR` (the
/// virtio 1.x layout, with `num_buffers`).
fn set_vnet_hdr_len(fd: RawFd) -> io::Result<()> {
    let len: libc::c_int = NET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads an int through the pointer, which
    // points at `len` for the duration of the call.
    if unsafe { libc::ioctl(fd, TUNSETVNETHDRSZ as _, &len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl NetBackend for Tap {
    fn recv_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }

    fn send_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        self.file.write(frame).map(|_| ())
    }

    fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    fn set_offloads(&mut self, acked: u64) -> io::Result<()> {
        if !self.vnet_hdr {
            return Ok(());
        }
        let has = |bit: u32| acked & (1 << bit) != 0;
        let mut flags: libc::c_uint = 0;
        if has(VIRTIO_NET_F_GUEST_CSUM) {
            flags |= TUN_F_CSUM;
            if has(VIRTIO_NET_F_GUEST_TSO4) {
                flags |= TUN_F_TSO4;
            }
            if has(VIRTIO_NET_F_GUEST_TSO6) {
                flags |= TUN_F_TSO6;
            }
        }
        // SAFETY: TUNSETOFFLOAD takes its flags as the integer argument.
        if unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETOFFLOAD as _,
                flags as libc::c_ulong,
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
