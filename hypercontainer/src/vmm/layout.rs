//! The guest physical address map.
//!
//! ```text
//! 0x0000_0500  GDT (boot code/data/TSS descriptors)
//! 0x0000_6000  PVH hvm_start_info, then its memory map and module list
//! 0x0000_7000  Linux boot_params ("zero page")
//! 0x0000_8ff0  boot stack top (64-bit Linux entry)
//! 0x0000_9000  identity page tables (PML4, PDPT, 4 PDs: 4 GiB in 2 MiB pages)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  start of the reserved area below 1 MiB (EBDA .. BIOS)
//! 0x000f_0000  MP table (floating pointer + configuration table)
//! 0x0010_0000  high memory: kernel (bzImage at 1 MiB, vmlinux at its p_paddr)
//!   ...        initramfs, at the top of low RAM
//! 0xc000_0000  MMIO hole: virtio-mmio windows at 0xd000_0000, IOAPIC, LAPIC
//! 0x1_0000_0000 RAM beyond the hole, when the guest has more than 3 GiB
//! ```

/// Global descriptor table used at boot.
pub const GDT_ADDR: u64 = 0x500;
/// PVH `hvm_start_info`.
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// PVH memory map (right after `hvm_start_info`).
pub const PVH_MEMMAP_ADDR: u64 = 0x6040;
/// PVH module list (the initramfs), after room for 16 memory map entries.
pub const PVH_MODLIST_ADDR: u64 = 0x6200;
/// Linux `boot_params`.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer of the 64-bit Linux entry.
pub const BOOT_STACK: u64 = 0x8ff0;
/// Top-level page table of the boot identity map.
pub const PML4_ADDR: u64 = 0x9000;
/// Page-directory-pointer table of the boot identity map.
pub const PDPT_ADDR: u64 = 0xa000;
/// First of the four page directories of the boot identity map.
pub const PD_ADDR: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Room for the command line (Linux's x86 `COMMAND_LINE_SIZE`).
pub const CMDLINE_MAX: usize = 2048;
/// Start of the reserved area below 1 MiB.
pub const EBDA_START: u64 = 0x9fc00;
/// Where the MP table is written (inside the BIOS area Linux scans).
pub const MPTABLE_ADDR: u64 = 0xf0000;
/// Start of high memory.
pub const HIGH_MEM: u64 = 0x10_0000;
/// Start of the MMIO hole below 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End of the MMIO hole.
pub const MMIO_HOLE_END: u64 = 1 << 32;
/// First virtio-mmio window.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Size of one virtio-mmio window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// First IRQ line handed to virtio-mmio devices.
pub const VIRTIO_MMIO_FIRST_IRQ: u32 = 5;
/// Last IRQ line (the IOAPIC has 24 pins).
pub const LAST_IRQ: u32 = 23;
/// IOAPIC MMIO base.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// Local APIC MMIO base.
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
/// KVM's TSS (three pages) for real-mode emulation on Intel.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
/// KVM's identity-map page for real-mode emulation on Intel.
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;

/// The serial console's I/O port base.
pub const SERIAL_PORT: u64 = 0x3f8;
/// The serial console's IRQ line.
pub const SERIAL_IRQ: u32 = 4;
/// The i8042 controller's I/O port base (data port; command/status is +4).
pub const I8042_PORT: u64 = 0x60;

// The command line and boot stack sit between the boot structures.
const _: () = assert!(CMDLINE_ADDR + (CMDLINE_MAX as u64) < EBDA_START);
const _: () = assert!(BOOT_STACK < PML4_ADDR && BOOT_STACK > ZERO_PAGE_ADDR + 0x1000);

/// The guest's RAM regions as `(start, size)`: everything below the MMIO
/// hole, then the rest above 4 GiB.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_HOLE_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_HOLE_START),
            (MMIO_HOLE_END, mem_size - MMIO_HOLE_START),
        ]
    }
}

/// End of the RAM below the MMIO hole.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_HOLE_START)
}

/// An e820-style memory map entry type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemType {
    /// Usable RAM.
    Ram = 1,
    /// Reserved.
    Reserved = 2,
}

/// The memory map handed to the guest, as `(start, size, type)`.
pub fn memory_map(mem_size: u64) -> Vec<(u64, u64, MemType)> {
    let mut map = vec![
        (0, EBDA_START, MemType::Ram),
        (EBDA_START, HIGH_MEM - EBDA_START, MemType::Reserved),
    ];
    let low_end = low_ram_end(mem_size);
    if low_end > HIGH_MEM {
        map.push((HIGH_MEM, low_end - HIGH_MEM, MemType::Ram));
    }
    if mem_size > MMIO_HOLE_START {
        map.push((MMIO_HOLE_END, mem_size - MMIO_HOLE_START, MemType::Ram));
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_split_around_the_hole() {
        assert_eq!(ram_regions(128 << 20), vec![(0, 128 << 20)]);
        assert_eq!(ram_regions(4 << 30), vec![(0, 3 << 30), (4 << 30, 1 << 30)]);
        let map = memory_map(4 << 30);
        assert_eq!(map.len(), 4);
        assert_eq!(map[2], (HIGH_MEM, (3 << 30) - HIGH_MEM, MemType::Ram));
        assert_eq!(map[3], (4 << 30, 1 << 30, MemType::Ram));
        let total: u64 = map
            .iter()
            .filter(|e| e.2 == MemType::Ram)
            .map(|e| e.1)
            .sum();
        assert_eq!(total, (4 << 30) - (HIGH_MEM - EBDA_START));
    }

    #[test]
    fn boot_structures_do_not_overlap() {
        let mut spans = [
            (GDT_ADDR, 5 * 8),
            (PVH_INFO_ADDR, 0x38),
            (PVH_MEMMAP_ADDR, 16 * 24),
            (PVH_MODLIST_ADDR, 32),
            (ZERO_PAGE_ADDR, 0x1000),
            (PML4_ADDR, 0x1000),
            (PDPT_ADDR, 0x1000),
            (PD_ADDR, 0x4000),
            (CMDLINE_ADDR, CMDLINE_MAX as u64),
        ];
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "{w:x?}");
        }
    }
}
