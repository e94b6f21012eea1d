//! Loading a Linux kernel and preparing its boot environment.
//!
//! Two boot paths, chosen by what the image is:
//! - an ELF `vmlinux` with a PVH note (`XEN_ELFNOTE_PHYS32_ENTRY`) starts in
//!   32-bit flat protected mode at that entry with `hvm_start_info` (memory
//!   map, command line, initramfs as module 0); this is the fastest path;
//! - a `bzImage` (and an ELF without a PVH note) starts at its 64-bit entry
//!   in long mode on identity-mapped page tables with `boot_params`
//!   (e820 map, command line, initramfs).
//!
//! The initramfs is placed at the top of low RAM, below the highest address
//! the kernel accepts.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::bootparam::boot_params;
use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::cpu::{self, EntryMode};
use super::layout::{self, MemType};
use super::{Error, Result};

const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
const HDRS_MAGIC: u32 = 0x5372_6448; // "HdrS"
const PT_LOAD: u32 = 1;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const BOOT_FLAG: u16 = 0xaa55;
/// Default highest initramfs address for old boot protocols.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;
/// RAM left free for the kernel to run in, beyond its image and initramfs.
pub const MIN_FREE_RAM: u64 = 16 << 20;
/// Where a non-relocatable kernel decompresses (`CONFIG_PHYSICAL_START`)
/// when the header does not say.
const DEFAULT_PHYSICAL_START: u64 = 0x100_0000;

/// The kind of kernel image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelKind {
    /// An uncompressed ELF `vmlinux`.
    Elf,
    /// A compressed `bzImage`.
    BzImage,
}

/// What a kernel image needs, read from its headers before loading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelInfo {
    /// The image kind.
    pub kind: KernelKind,
    /// End of the memory the kernel occupies once loaded (and, for a
    /// bzImage, decompressed).
    pub end: u64,
    /// Highest address the initramfs may reach.
    pub initrd_addr_max: u64,
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// Reads a kernel image's headers: its kind and the memory it needs.
/// Never trusts the file: malformed headers give [`Error::NotAKernel`].
pub fn inspect<F: Read + Seek>(image: &mut F, path: &Path) -> Result<KernelInfo> {
    let not = |why: &str| Error::NotAKernel {
        path: path.to_path_buf(),
        reason: why.to_string(),
    };
    let io = |e| Error::KernelRead {
        path: path.to_path_buf(),
        source: e,
    };
    let len = image.seek(SeekFrom::End(0)).map_err(io)?;
    image.rewind().map_err(io)?;
    let mut head = vec![0u8; 0x400.min(len as usize)];
    image.read_exact(&mut head).map_err(io)?;

    if head.starts_with(&ELF_MAGIC) {
        if head.get(4) != Some(&2) || head.get(5) != Some(&1) {
            return Err(not("not a 64-bit little-endian ELF"));
        }
        let phoff = u64_at(&head, 0x20).ok_or_else(|| not("truncated ELF header"))?;
        let phentsize = u16_at(&head, 0x36).ok_or_else(|| not("truncated ELF header"))?;
        let phnum = u16_at(&head, 0x38).ok_or_else(|| not("truncated ELF header"))?;
        if phentsize != 56 || phnum == 0 {
            return Err(not("no usable ELF program headers"));
        }
        let table_len = 56 * u64::from(phnum);
        if phoff.checked_add(table_len).is_none_or(|end| end > len) {
            return Err(not("ELF program headers past the end of the file"));
        }
        let mut table = vec![0u8; table_len as usize];
        image.seek(SeekFrom::Start(phoff)).map_err(io)?;
        image.read_exact(&mut table).map_err(io)?;
        let mut end = 0u64;
        for ph in table.chunks_exact(56) {
            if u32_at(ph, 0) != Some(PT_LOAD) {
                continue;
            }
            let paddr = u64_at(ph, 0x18).unwrap_or(0);
            let memsz = u64_at(ph, 0x28).unwrap_or(0);
            let seg_end = paddr
                .checked_add(memsz)
                .ok_or_else(|| not("ELF segment wraps around"))?;
            end = end.max(seg_end);
        }
        if end == 0 {
            return Err(not("no loadable ELF segments"));
        }
        return Ok(KernelInfo {
            kind: KernelKind::Elf,
            end,
            initrd_addr_max: layout::MMIO_HOLE_START - 1,
        });
    }

    // Linux boot protocol: the setup header starts at 0x1f1.
    if u32_at(&head, 0x202) == Some(HDRS_MAGIC) {
        let version = u16_at(&head, 0x206).unwrap_or(0);
        let loadflags = head.get(0x211).copied().unwrap_or(0);
        if version < 0x0206 || loadflags & 1 == 0 {
            return Err(not(
                "bzImage boot protocol too old (need 2.06+, loaded high)",
            ));
        }
        let setup_sects = match head.get(0x1f1).copied().unwrap_or(0) {
            0 => 4,
            n => u64::from(n),
        };
        let payload = len
            .checked_sub((setup_sects + 1) * 512)
            .ok_or_else(|| not("bzImage shorter than its setup code"))?;
        let code32_start = u64::from(u32_at(&head, 0x214).unwrap_or(0));
        let initrd_addr_max = match u32_at(&head, 0x22c).unwrap_or(0) {
            0 => DEFAULT_INITRD_ADDR_MAX,
            n => u64::from(n),
        };
        let pref_address = u64_at(&head, 0x258)
            .filter(|a| *a != 0)
            .unwrap_or(DEFAULT_PHYSICAL_START);
        let init_size = u64::from(u32_at(&head, 0x260).unwrap_or(0));
        let end = (code32_start.max(layout::HIGH_MEM) + payload).max(pref_address + init_size);
        return Ok(KernelInfo {
            kind: KernelKind::BzImage,
            end,
            initrd_addr_max,
        });
    }
    Err(not("neither an ELF vmlinux nor a bzImage"))
}

/// Where the initramfs comes from.
pub enum InitramfsSource<'a> {
    /// Bytes in memory.
    Bytes(&'a [u8]),
    /// An open file of `len` bytes, read straight into guest memory.
    File {
        /// The open file.
        file: File,
        /// Its path (for errors).
        path: &'a Path,
        /// Its size.
        len: u64,
    },
}

impl InitramfsSource<'_> {
    fn len(&self) -> u64 {
        match self {
            Self::Bytes(b) => b.len() as u64,
            Self::File { len, .. } => *len,
        }
    }
}

/// Everything [`load`] needs.
pub struct BootConfig<'a> {
    /// Kernel image path.
    pub kernel: &'a Path,
    /// The initramfs, if any.
    pub initramfs: Option<InitramfsSource<'a>>,
    /// Full command line.
    pub cmdline: &'a Cmdline,
    /// Guest memory size in bytes.
    pub mem_size: u64,
    /// Number of vCPUs (for the MP table).
    pub vcpus: u32,
    /// CPUID leaf 1 EAX/EDX for the MP table.
    pub cpu_signature: (u32, u32),
}

/// Loads the kernel, initramfs, command line, boot parameters, page tables,
/// GDT and MP table into guest memory. Returns how the boot vCPU starts.
pub fn load(mem: &GuestMemoryMmap, cfg: BootConfig<'_>) -> Result<EntryMode> {
    let path = cfg.kernel;
    let mut file = File::open(path).map_err(|e| Error::KernelMissing {
        path: path.to_path_buf(),
        source: e,
    })?;
    let info = inspect(&mut file, path)?;
    let low_end = layout::low_ram_end(cfg.mem_size);
    let initrd_len = cfg.initramfs.as_ref().map_or(0, InitramfsSource::len);
    let needed = info
        .end
        .saturating_add(initrd_len)
        .saturating_add(MIN_FREE_RAM);
    if needed > low_end {
        return Err(Error::MemoryTooSmall {
            requested_mib: cfg.mem_size >> 20,
            minimum_mib: needed.div_ceil(1 << 20),
        });
    }

    let highmem = Some(GuestAddress(layout::HIGH_MEM));
    let result = match info.kind {
        KernelKind::Elf => Elf::load(mem, None, &mut file, highmem),
        KernelKind::BzImage => BzImage::load(mem, None, &mut file, highmem),
    }
    .map_err(|e| Error::KernelLoad {
        path: path.to_path_buf(),
        source: e,
    })?;

    // Initramfs at the top of low RAM, page aligned, below the kernel's limit.
    let initrd = match cfg.initramfs {
        Some(source) if initrd_len > 0 => {
            let top = low_end.min(info.initrd_addr_max.saturating_add(1));
            let addr = top.saturating_sub(initrd_len) & !0xfff;
            if addr < info.end.max(result.kernel_end) {
                return Err(Error::MemoryTooSmall {
                    requested_mib: cfg.mem_size >> 20,
                    minimum_mib: needed.div_ceil(1 << 20),
                });
            }
            match source {
                InitramfsSource::Bytes(data) => mem
                    .write_slice(data, GuestAddress(addr))
                    .map_err(Error::GuestMemory)?,
                InitramfsSource::File { mut file, path, .. } => mem
                    .read_exact_volatile_from(GuestAddress(addr), &mut file, initrd_len as usize)
                    .map_err(|e| Error::InitramfsMissing {
                        path: path.to_path_buf(),
                        source: std::io::Error::other(e),
                    })?,
            }
            Some((addr, initrd_len))
        }
        _ => None,
    };

    load_cmdline(mem, GuestAddress(layout::CMDLINE_ADDR), cfg.cmdline).map_err(|e| {
        Error::KernelLoad {
            path: path.to_path_buf(),
            source: e,
        }
    })?;
    let cmdline_len = cfg
        .cmdline
        .as_cstring()
        .map(|c| c.as_bytes().len())
        .unwrap_or(0);

    let map = layout::memory_map(cfg.mem_size);
    let mode = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(entry) => {
            write_pvh_params(mem, &map, initrd)?;
            write_gdt(mem, cpu::CODE32)?;
            EntryMode::Pvh { entry: entry.0 }
        }
        _ => {
            let (hdr, entry) = match result.setup_header {
                // The 64-bit entry of a bzImage is 0x200 past its load address.
                Some(hdr) => (hdr, result.kernel_load.0 + 0x200),
                None => {
                    let mut hdr = linux_loader::bootparam::setup_header {
                        boot_flag: BOOT_FLAG,
                        header: HDRS_MAGIC,
                        kernel_alignment: 0x100_0000,
                        ..Default::default()
                    };
                    hdr.cmdline_size = layout::CMDLINE_MAX as u32;
                    (hdr, result.kernel_load.0)
                }
            };
            write_linux_params(mem, hdr, &map, initrd, cmdline_len)?;
            write_gdt(mem, cpu::CODE64)?;
            write_page_tables(mem)?;
            EntryMode::Linux64 { entry }
        }
    };

    let (sig, features) = cfg.cpu_signature;
    let table = super::mptable::build(layout::MPTABLE_ADDR, cfg.vcpus, sig, features).ok_or(
        Error::TooManyVcpus {
            requested: cfg.vcpus,
            max: super::mptable::MAX_CPUS,
        },
    )?;
    mem.write_slice(&table, GuestAddress(layout::MPTABLE_ADDR))
        .map_err(Error::GuestMemory)?;
    Ok(mode)
}

fn write_gdt(mem: &GuestMemoryMmap, code: u64) -> Result<()> {
    for (i, entry) in cpu::boot_gdt(code).iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(layout::GDT_ADDR + 8 * i as u64))
            .map_err(Error::GuestMemory)?;
    }
    Ok(())
}

/// Identity-maps the first 4 GiB with 2 MiB pages.
fn write_page_tables(mem: &GuestMemoryMmap) -> Result<()> {
    const PRESENT_RW: u64 = 0x3;
    const HUGE: u64 = 0x80;
    let w = |val: u64, addr: u64| {
        mem.write_obj(val, GuestAddress(addr))
            .map_err(Error::GuestMemory)
    };
    w(layout::PDPT_ADDR | PRESENT_RW, layout::PML4_ADDR)?;
    for pd in 0..4u64 {
        let pd_addr = layout::PD_ADDR + pd * 0x1000;
        w(pd_addr | PRESENT_RW, layout::PDPT_ADDR + pd * 8)?;
        for i in 0..512u64 {
            let phys = ((pd * 512 + i) << 21) | PRESENT_RW | HUGE;
            w(phys, pd_addr + i * 8)?;
        }
    }
    Ok(())
}

fn write_pvh_params(
    mem: &GuestMemoryMmap,
    map: &[(u64, u64, MemType)],
    initrd: Option<(u64, u64)>,
) -> Result<()> {
    let memmap: Vec<hvm_memmap_table_entry> = map
        .iter()
        .map(|&(addr, size, kind)| hvm_memmap_table_entry {
            addr,
            size,
            type_: kind as u32,
            reserved: 0,
        })
        .collect();
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: layout::CMDLINE_ADDR,
        memmap_paddr: layout::PVH_MEMMAP_ADDR,
        memmap_entries: memmap.len() as u32,
        nr_modules: u32::from(initrd.is_some()),
        modlist_paddr: if initrd.is_some() {
            layout::PVH_MODLIST_ADDR
        } else {
            0
        },
        ..Default::default()
    };
    let mut params = BootParams::new(&start_info, GuestAddress(layout::PVH_INFO_ADDR));
    params.set_sections(&memmap, GuestAddress(layout::PVH_MEMMAP_ADDR));
    if let Some((paddr, size)) = initrd {
        let module = hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        };
        params.set_modules(&[module], GuestAddress(layout::PVH_MODLIST_ADDR));
    }
    PvhBootConfigurator::write_bootparams(&params, mem).map_err(Error::BootParams)
}

fn write_linux_params(
    mem: &GuestMemoryMmap,
    mut hdr: linux_loader::bootparam::setup_header,
    map: &[(u64, u64, MemType)],
    initrd: Option<(u64, u64)>,
    cmdline_len: usize,
) -> Result<()> {
    let mut params = boot_params::default();
    hdr.type_of_loader = KERNEL_LOADER_OTHER;
    hdr.boot_flag = BOOT_FLAG;
    hdr.cmd_line_ptr = layout::CMDLINE_ADDR as u32;
    hdr.cmdline_size = cmdline_len as u32;
    if let Some((addr, size)) = initrd {
        hdr.ramdisk_image = addr as u32;
        hdr.ramdisk_size = size as u32;
    }
    params.hdr = hdr;
    for (i, &(addr, size, kind)) in map.iter().enumerate() {
        params.e820_table[i].addr = addr;
        params.e820_table[i].size = size;
        params.e820_table[i].r#type = kind as u32;
    }
    params.e820_entries = map.len() as u8;
    let bp = BootParams::new(&params, GuestAddress(layout::ZERO_PAGE_ADDR));
    LinuxBootConfigurator::write_bootparams(&bp, mem).map_err(Error::BootParams)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn elf_with_segment(paddr: u64, memsz: u64) -> Vec<u8> {
        let mut f = vec![0u8; 0x200];
        f[..4].copy_from_slice(&ELF_MAGIC);
        f[4] = 2;
        f[5] = 1;
        f[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        f[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        f[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        let ph = 0x40;
        f[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
        f[ph + 0x18..ph + 0x20].copy_from_slice(&paddr.to_le_bytes());
        f[ph + 0x28..ph + 0x30].copy_from_slice(&memsz.to_le_bytes());
        f
    }

    #[test]
    fn inspects_elf_extent() {
        let img = elf_with_segment(0x100_0000, 0x80_0000);
        let info = inspect(&mut Cursor::new(img), Path::new("k")).unwrap();
        assert_eq!(info.kind, KernelKind::Elf);
        assert_eq!(info.end, 0x180_0000);
    }

    #[test]
    fn rejects_garbage_and_hostile_headers() {
        for img in [
            vec![],
            b"#!/bin/sh\necho hi\n".to_vec(),
            vec![0u8; 4096],
            {
                let mut e = elf_with_segment(u64::MAX, 2);
                e.truncate(0x200);
                e
            },
            {
                let mut e = elf_with_segment(0, 0);
                e[0x38] = 0xff; // phnum past the end of the file
                e
            },
            {
                let mut e = elf_with_segment(0x1000, 0x1000);
                e[0x40] = 4; // not PT_LOAD
                e
            },
        ] {
            let err = inspect(&mut Cursor::new(img), Path::new("k")).unwrap_err();
            assert!(matches!(err, Error::NotAKernel { .. }), "{err}");
        }
    }

    #[test]
    fn inspects_bzimage_header() {
        let mut img = vec![0u8; 0x1000 + 5 * 512];
        img[0x1f1] = 4;
        img[0x202..0x206].copy_from_slice(&HDRS_MAGIC.to_le_bytes());
        img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        img[0x211] = 1;
        img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
        img[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        img[0x260..0x264].copy_from_slice(&0x200_0000u32.to_le_bytes());
        let info = inspect(&mut Cursor::new(img.clone()), Path::new("k")).unwrap();
        assert_eq!(info.kind, KernelKind::BzImage);
        assert_eq!(info.end, 0x100_0000 + 0x200_0000);
        assert_eq!(info.initrd_addr_max, 0x7fff_ffff);
        img[0x206] = 0; // protocol 2.00
        img[0x207] = 2;
        assert!(inspect(&mut Cursor::new(img), Path::new("k")).is_err());
    }

    #[test]
    fn page_tables_identity_map_4g() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_page_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(layout::PML4_ADDR)).unwrap();
        assert_eq!(pml4 & !0xfff, layout::PDPT_ADDR);
        let last_pd: u64 = mem.read_obj(GuestAddress(layout::PDPT_ADDR + 24)).unwrap();
        let last: u64 = mem
            .read_obj(GuestAddress((last_pd & !0xfff) + 511 * 8))
            .unwrap();
        assert_eq!(last & !0xfff, (4u64 << 30) - (2 << 20));
    }
}
