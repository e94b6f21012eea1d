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
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{load_cmdline, KernelLoader, KernelLoaderResult};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use super::cpu::{self, EntryMode};
use super::layout::{self, MemType};
use super::{Error, Result};

const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
const HDRS_MAGIC: u32 = 0x5372_6448; // "HdrS"
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const EM_X86_64: u16 = 62;
/// `XEN_ELFNOTE_PHYS32_ENTRY`: the note holding the PVH entry point.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
const PAGE: u64 = 4096;
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

fn not_a_kernel(path: &Path, why: &str) -> Error {
    Error::NotAKernel {
        path: path.to_path_buf(),
        reason: why.to_string(),
    }
}

fn read_error(path: &Path) -> impl Fn(std::io::Error) -> Error + Copy + '_ {
    move |source| Error::KernelRead {
        path: path.to_path_buf(),
        source,
    }
}

/// One program header of an ELF image, checked against the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    kind: u32,
    offset: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

/// Reads the program headers of the ELF whose first bytes are `head`.
/// Every `PT_LOAD` and `PT_NOTE` segment is checked: its file range lies
/// inside the file, a loaded segment has `filesz <= memsz`, sits at or
/// above 1 MiB and does not wrap around.
fn elf_segments<F: Read + Seek>(
    image: &mut F,
    head: &[u8],
    len: u64,
    path: &Path,
) -> Result<Vec<Segment>> {
    let not = |why: &str| not_a_kernel(path, why);
    let io = read_error(path);
    if u16_at(head, 0x12) != Some(EM_X86_64) {
        return Err(not("not an x86-64 ELF"));
    }
    let phoff = u64_at(head, 0x20).ok_or_else(|| not("truncated ELF header"))?;
    let phentsize = u16_at(head, 0x36).ok_or_else(|| not("truncated ELF header"))?;
    let phnum = u16_at(head, 0x38).ok_or_else(|| not("truncated ELF header"))?;
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
    let mut out = Vec::new();
    for ph in table.chunks_exact(56) {
        let kind = u32_at(ph, 0).unwrap_or(0);
        if kind != PT_LOAD && kind != PT_NOTE {
            continue;
        }
        let seg = Segment {
            kind,
            offset: u64_at(ph, 0x08).unwrap_or(0),
            paddr: u64_at(ph, 0x18).unwrap_or(0),
            filesz: u64_at(ph, 0x20).unwrap_or(0),
            memsz: u64_at(ph, 0x28).unwrap_or(0),
        };
        if seg.offset.checked_add(seg.filesz).is_none_or(|e| e > len) {
            return Err(not("ELF segment past the end of the file"));
        }
        if kind == PT_LOAD {
            if seg.paddr.checked_add(seg.memsz).is_none() {
                return Err(not("ELF segment wraps around"));
            }
            if seg.filesz > seg.memsz {
                return Err(not("ELF segment larger in the file than in memory"));
            }
            if seg.paddr < layout::HIGH_MEM {
                return Err(not("ELF segment below 1 MiB"));
            }
        }
        out.push(seg);
    }
    Ok(out)
}

/// Reads a kernel image's headers: its kind and the memory it needs.
/// Never trusts the file: malformed headers give [`Error::NotAKernel`].
pub fn inspect<F: Read + Seek>(image: &mut F, path: &Path) -> Result<KernelInfo> {
    let not = |why: &str| not_a_kernel(path, why);
    let io = read_error(path);
    let len = image.seek(SeekFrom::End(0)).map_err(io)?;
    image.rewind().map_err(io)?;
    let mut head = vec![0u8; 0x400.min(len as usize)];
    image.read_exact(&mut head).map_err(io)?;

    if head.starts_with(&ELF_MAGIC) {
        if head.get(4) != Some(&2) || head.get(5) != Some(&1) {
            return Err(not("not a 64-bit little-endian ELF"));
        }
        let mut end = 0u64;
        for seg in elf_segments(image, &head, len, path)? {
            if seg.kind == PT_LOAD {
                end = end.max(seg.paddr + seg.memsz);
            }
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

/// Finds the PVH entry (`XEN_ELFNOTE_PHYS32_ENTRY`, name `Xen`) in the
/// notes `notes` (one `PT_NOTE` segment's bytes).
fn pvh_entry(notes: &[u8]) -> Option<u64> {
    let align4 = |n: usize| n.checked_add(3).map(|n| n & !3);
    let mut at = 0usize;
    while at.checked_add(12)? <= notes.len() {
        let namesz = u32_at(notes, at)? as usize;
        let descsz = u32_at(notes, at + 4)? as usize;
        let kind = u32_at(notes, at + 8)?;
        let name_at = at + 12;
        let desc_at = name_at.checked_add(align4(namesz)?)?;
        let next = desc_at.checked_add(align4(descsz)?)?;
        if next > notes.len() {
            return None;
        }
        if kind == XEN_ELFNOTE_PHYS32_ENTRY && notes[name_at..name_at + namesz] == *b"Xen\0" {
            return (descsz >= 4).then(|| u64::from(u32_at(notes, desc_at).unwrap_or(0)));
        }
        at = next;
    }
    None
}

/// Whether `seg` (index `i` of `loads`) can be mapped from the file: its
/// file offset and address are page aligned, and no other segment touches
/// the pages it would map.
fn mappable(loads: &[Segment], i: usize) -> bool {
    let seg = loads[i];
    if seg.filesz == 0 || seg.offset % PAGE != 0 || seg.paddr % PAGE != 0 {
        return false;
    }
    let start = seg.paddr;
    let end = (seg.paddr + seg.filesz).next_multiple_of(PAGE);
    loads.iter().enumerate().all(|(j, o)| {
        j == i || o.memsz == 0 || {
            let o_start = o.paddr & !(PAGE - 1);
            let o_end = o.paddr + o.memsz;
            o_end <= start || o_start >= end
        }
    })
}

/// Maps `filesz` bytes of `file` from `file_offset` (page aligned) over the
/// guest pages from `paddr` (page aligned), copy-on-write; the last page is
/// mapped whole. Returns `false` (nothing changed) when the range is not
/// inside one memory region or the kernel refuses the mapping.
fn map_file(
    mem: &GuestMemoryMmap,
    file: &File,
    file_offset: u64,
    paddr: u64,
    filesz: u64,
) -> Result<bool> {
    let len = filesz.next_multiple_of(PAGE);
    let Some((region, offset)) = mem.to_region_addr(GuestAddress(paddr)) else {
        return Ok(false);
    };
    if offset
        .raw_value()
        .checked_add(len)
        .is_none_or(|e| e > region.len())
    {
        return Ok(false);
    }
    let Ok(host) = region.get_host_address(offset) else {
        return Ok(false);
    };
    let Ok(file_offset) = libc::off_t::try_from(file_offset) else {
        return Ok(false);
    };
    // SAFETY: `host..host + len` lies inside one guest memory region, a
    // private anonymous mapping this VM owns. No vCPU runs yet and no
    // reference into the range is held; KVM knows the memory only by its
    // host address and follows the new mapping (MMU notifiers). MAP_FIXED
    // replaces those pages with a private copy-on-write mapping of the file,
    // readable and writable like the rest of guest memory; the region's own
    // munmap on drop covers it.
    let ret = unsafe {
        libc::mmap(
            host.cast(),
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
            std::os::fd::AsRawFd::as_raw_fd(file),
            file_offset,
        )
    };
    if ret == libc::MAP_FAILED {
        // A failed MAP_FIXED may have unmapped the range: put anonymous
        // memory back so guest memory has no hole.
        // SAFETY: the same range as above, again inside the region.
        let back = unsafe {
            libc::mmap(
                host.cast(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if back == libc::MAP_FAILED {
            return Err(Error::MemoryAlloc(
                Box::new(std::io::Error::last_os_error()),
            ));
        }
        return Ok(false);
    }
    Ok(true)
}

/// Loads an ELF `vmlinux`.
///
/// With `map`, each loaded segment whose file pages line up with guest
/// pages is mapped into guest memory copy-on-write (`MAP_PRIVATE`) rather
/// than copied: no kernel byte is copied at boot, and the pages the guest
/// never writes (most of the kernel's text) stay shared, through the page
/// cache, by every VM that boots the same file. Other segments, and all of
/// them without `map` (guest memory on hugetlbfs cannot be remapped in
/// 4 KiB pages), are copied. Written by hand: linux-loader only copies.
fn load_elf(
    mem: &GuestMemoryMmap,
    file: &mut File,
    path: &Path,
    map: bool,
) -> Result<KernelLoaderResult> {
    let not = |why: &str| not_a_kernel(path, why);
    let io = read_error(path);
    let len = file.metadata().map_err(io)?.len();
    let mut head = [0u8; 0x40];
    file.rewind().map_err(io)?;
    file.read_exact(&mut head).map_err(io)?;
    let entry = u64_at(&head, 0x18).unwrap_or(0);
    let segments = elf_segments(file, &head, len, path)?;
    let loads: Vec<Segment> = segments
        .iter()
        .filter(|s| s.kind == PT_LOAD)
        .copied()
        .collect();
    let mut kernel_end = 0;
    for (i, seg) in loads.iter().enumerate() {
        if !mem.check_range(GuestAddress(seg.paddr), seg.memsz as usize) {
            return Err(not("ELF segment outside guest memory"));
        }
        let mapped =
            map && mappable(&loads, i) && map_file(mem, file, seg.offset, seg.paddr, seg.filesz)?;
        let zero_from = seg.paddr + seg.filesz;
        let zero_to = if mapped {
            // The rest of the last mapped page holds whatever follows in
            // the file; past it is fresh (zero) anonymous memory.
            zero_from.next_multiple_of(PAGE)
        } else {
            file.seek(SeekFrom::Start(seg.offset)).map_err(io)?;
            mem.read_exact_volatile_from(GuestAddress(seg.paddr), file, seg.filesz as usize)
                .map_err(|e| io(std::io::Error::other(e)))?;
            seg.paddr + seg.memsz
        };
        if zero_to > zero_from {
            let zeros = vec![0u8; (zero_to - zero_from) as usize];
            mem.write_slice(&zeros, GuestAddress(zero_from))
                .map_err(Error::GuestMemory)?;
        }
        kernel_end = kernel_end.max(seg.paddr + seg.memsz);
    }
    let mut pvh = PvhBootCapability::PvhEntryNotPresent;
    for note in segments.iter().filter(|s| s.kind == PT_NOTE) {
        const MAX_NOTES: u64 = 64 << 10;
        let mut bytes = vec![0u8; note.filesz.min(MAX_NOTES) as usize];
        file.seek(SeekFrom::Start(note.offset)).map_err(io)?;
        file.read_exact(&mut bytes).map_err(io)?;
        if let Some(e) = pvh_entry(&bytes) {
            pvh = PvhBootCapability::PvhEntryPresent(GuestAddress(e));
            break;
        }
    }
    Ok(KernelLoaderResult {
        kernel_load: GuestAddress(entry),
        kernel_end,
        setup_header: None,
        pvh_boot_cap: pvh,
    })
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
    /// Map an ELF kernel's segments and an initramfs file into guest
    /// memory instead of copying them (not possible on hugetlbfs guest
    /// memory).
    pub map_kernel: bool,
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
        KernelKind::Elf => load_elf(mem, &mut file, path, cfg.map_kernel)?,
        KernelKind::BzImage => {
            BzImage::load(mem, None, &mut file, highmem).map_err(|e| Error::KernelLoad {
                path: path.to_path_buf(),
                source: e,
            })?
        }
    };

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
                // Mapped like the kernel when possible: the pages past the
                // end of the file in the last one read as zeros.
                InitramfsSource::File { file, .. }
                    if cfg.map_kernel && map_file(mem, &file, 0, addr, initrd_len)? => {}
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

    /// An ELF with one `PT_LOAD` segment (nothing in the file) at `paddr`,
    /// `memsz` bytes long.
    fn elf_with_segment(paddr: u64, memsz: u64) -> Vec<u8> {
        elf(&[(PT_LOAD, 0, paddr, 0, memsz)], 0x200)
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

    /// An ELF with the given program headers `(type, offset, paddr,
    /// filesz, memsz)`, `len` bytes long, every byte past the headers
    /// non-zero.
    fn elf(phdrs: &[(u32, u64, u64, u64, u64)], len: usize) -> Vec<u8> {
        let mut f: Vec<u8> = (0..len).map(|i| (i % 251) as u8 | 1).collect();
        f[..0x40].fill(0);
        f[..4].copy_from_slice(&ELF_MAGIC);
        f[4] = 2;
        f[5] = 1;
        f[0x12..0x14].copy_from_slice(&EM_X86_64.to_le_bytes());
        f[0x18..0x20].copy_from_slice(&0x20_0000u64.to_le_bytes());
        f[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        f[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        f[0x38..0x3a].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
        for (i, &(kind, offset, paddr, filesz, memsz)) in phdrs.iter().enumerate() {
            let ph = 0x40 + 56 * i;
            f[ph..ph + 56].fill(0);
            f[ph..ph + 4].copy_from_slice(&kind.to_le_bytes());
            f[ph + 0x08..ph + 0x10].copy_from_slice(&offset.to_le_bytes());
            f[ph + 0x18..ph + 0x20].copy_from_slice(&paddr.to_le_bytes());
            f[ph + 0x20..ph + 0x28].copy_from_slice(&filesz.to_le_bytes());
            f[ph + 0x28..ph + 0x30].copy_from_slice(&memsz.to_le_bytes());
        }
        f
    }

    fn note(kind: u32, name: &[u8], desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend_from_slice(&(name.len() as u32).to_le_bytes());
        n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        n.extend_from_slice(&kind.to_le_bytes());
        n.extend_from_slice(name);
        n.resize(n.len().next_multiple_of(4), 0);
        n.extend_from_slice(desc);
        n.resize(n.len().next_multiple_of(4), 0);
        n
    }

    #[test]
    fn elf_segments_are_mapped_copy_on_write_and_equal_a_copy() {
        let mut notes = note(1, b"GNU\0", &[1, 2, 3, 4, 5]);
        notes.extend(note(
            XEN_ELFNOTE_PHYS32_ENTRY,
            b"Xen\0",
            &0x20_0040u32.to_le_bytes(),
        ));
        let phdrs = [
            // Page aligned: mapped; its last page is partly file, then bss.
            (PT_LOAD, 0x1000, 0x20_0000, 0x1800, 0x3000),
            // Not page aligned: copied.
            (PT_LOAD, 0x3010, 0x30_0010, 0x100, 0x180),
            (PT_NOTE, 0x4000, 0, notes.len() as u64, notes.len() as u64),
        ];
        let mut img = elf(&phdrs, 0x6000);
        img[0x4000..0x4000 + notes.len()].copy_from_slice(&notes);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmlinux-test");
        std::fs::write(&path, &img).unwrap();

        let load = |map: bool| {
            let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
            let mut file = File::open(&path).unwrap();
            let r = load_elf(&mem, &mut file, &path, map).unwrap();
            (mem, r)
        };
        let (mapped, r) = load(true);
        let (copied, r2) = load(false);
        assert_eq!(r, r2);
        assert_eq!(r.kernel_load, GuestAddress(0x20_0000));
        assert_eq!(r.kernel_end, 0x30_0190);
        assert_eq!(
            r.pvh_boot_cap,
            PvhBootCapability::PvhEntryPresent(GuestAddress(0x20_0040))
        );
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        assert_eq!(
            maps.lines()
                .filter(|l| l.ends_with(path.to_str().unwrap()))
                .count(),
            1,
            "exactly the aligned segment is mapped from the file:\n{maps}"
        );

        let read = |mem: &GuestMemoryMmap, at: u64, len: usize| {
            let mut b = vec![0u8; len];
            mem.read_slice(&mut b, GuestAddress(at)).unwrap();
            b
        };
        for mem in [&mapped, &copied] {
            assert_eq!(read(mem, 0x20_0000, 0x1800), img[0x1000..0x2800]);
            assert!(read(mem, 0x20_1800, 0x1800).iter().all(|&b| b == 0));
            assert_eq!(read(mem, 0x30_0010, 0x100), img[0x3010..0x3110]);
            assert!(read(mem, 0x30_0110, 0x80).iter().all(|&b| b == 0));
        }
        assert_eq!(read(&mapped, 0, 4 << 20), read(&copied, 0, 4 << 20));
        // The guest writes to its private copy, never to the file.
        mapped
            .write_slice(&[0xee; 64], GuestAddress(0x20_0000))
            .unwrap();
        drop(mapped);
        assert_eq!(std::fs::read(&path).unwrap(), img);
    }

    #[test]
    fn hostile_elf_segments_and_notes_are_rejected() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for (i, phdrs) in [
            // Larger in the file than in memory.
            vec![(PT_LOAD, 0x1000, 0x20_0000, 0x2000, 0x1000)],
            // File range past the end of the file.
            vec![(PT_LOAD, 0x1000, 0x20_0000, 0x10_0000, 0x10_0000)],
            vec![(PT_NOTE, u64::MAX - 4, 0, 0x10, 0x10)],
            // Below 1 MiB, and past guest memory.
            vec![(PT_LOAD, 0x1000, 0x1000, 0x100, 0x100)],
            vec![(PT_LOAD, 0x1000, 0x3f_f000, 0x100, 0x2000)],
            // Wrapping around.
            vec![(PT_LOAD, 0x1000, u64::MAX - 0xfff, 0x100, 0x2000)],
        ]
        .into_iter()
        .enumerate()
        {
            let path = dir.path().join(format!("k{i}"));
            std::fs::write(&path, elf(&phdrs, 0x3000)).unwrap();
            for map in [true, false] {
                let err = load_elf(&mem, &mut File::open(&path).unwrap(), &path, map).unwrap_err();
                assert!(matches!(err, Error::NotAKernel { .. }), "{i}: {err}");
            }
        }
        // Notes: truncated, sizes that overflow, a short descriptor.
        assert_eq!(pvh_entry(&[]), None);
        assert_eq!(pvh_entry(&[1, 0, 0, 0]), None);
        let mut huge = note(XEN_ELFNOTE_PHYS32_ENTRY, b"Xen\0", &[0; 4]);
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(pvh_entry(&huge), None);
        huge[..4].copy_from_slice(&4u32.to_le_bytes());
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(pvh_entry(&huge), None);
        assert_eq!(
            pvh_entry(&note(XEN_ELFNOTE_PHYS32_ENTRY, b"Xen\0", &[1, 2])),
            None
        );
        assert_eq!(
            pvh_entry(&note(XEN_ELFNOTE_PHYS32_ENTRY, b"Xe\0", &[1, 2, 3, 4])),
            None
        );
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
