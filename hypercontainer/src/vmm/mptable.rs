//! Intel MultiProcessor Specification (1.4) table.
//!
//! The guest kernel is built without ACPI, so it learns how many CPUs it has
//! and how ISA interrupts reach the IOAPIC from an MP table: a floating
//! pointer structure (`_MP_`) in the BIOS area Linux scans
//! (0xF0000-0xFFFFF), pointing at a configuration table (`PCMP`) with one
//! processor entry per vCPU (local APIC id = vCPU index), one ISA bus, the
//! IOAPIC, an interrupt entry routing each ISA IRQ to the IOAPIC pin of the
//! same number (matching KVM's default GSI routing), and the local
//! interrupts (LINT0 = ExtINT, LINT1 = NMI).

use super::layout::{IOAPIC_ADDR, LAPIC_ADDR, LAST_IRQ};

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IOINT: u8 = 3;
const ENTRY_LINT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const FLOATING_LEN: usize = 16;
const HEADER_LEN: usize = 44;

/// Most vCPUs an MP table can describe: local APIC ids are 8 bits and one
/// id goes to the IOAPIC.
pub const MAX_CPUS: u32 = 254;

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |acc, b| acc.wrapping_sub(*b))
}

/// Builds the MP table for `cpus` processors as it must appear at guest
/// physical address `addr`. `cpu_signature` and `cpu_features` are CPUID
/// leaf 1 EAX and EDX.
///
/// Returns `None` if `cpus` is 0 or more than [`MAX_CPUS`].
pub fn build(addr: u64, cpus: u32, cpu_signature: u32, cpu_features: u32) -> Option<Vec<u8>> {
    if cpus == 0 || cpus > MAX_CPUS {
        return None;
    }
    let ioapic_id = cpus as u8;
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus {
        entries.push(ENTRY_PROCESSOR);
        entries.push(id as u8);
        entries.push(APIC_VERSION);
        entries.push(CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 });
        entries.extend_from_slice(&cpu_signature.to_le_bytes());
        entries.extend_from_slice(&cpu_features.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    count += 1;
    for irq in 0..=LAST_IRQ as u8 {
        // type, irq type, flags (conforming polarity/trigger), bus, bus irq,
        // destination IOAPIC, destination pin.
        entries.extend_from_slice(&[ENTRY_IOINT, INT_TYPE_INT, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    for (lint, kind) in [(0u8, INT_TYPE_EXTINT), (1, INT_TYPE_NMI)] {
        // Destination local APIC 0xff: every processor.
        entries.extend_from_slice(&[ENTRY_LINT, kind, 0, 0, 0, 0, 0xff, lint]);
        count += 1;
    }

    let table_addr = addr + FLOATING_LEN as u64;
    let table_len = HEADER_LEN + entries.len();
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&(table_len as u16).to_le_bytes());
    header.push(4); // specification revision 1.4
    header.push(0); // checksum, filled below
    header.extend_from_slice(b"HYPERCON"); // OEM id
    header.extend_from_slice(b"MICROVM     "); // product id
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    header.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&(LAPIC_ADDR as u32).to_le_bytes());
    header.extend_from_slice(&0u16.to_le_bytes()); // extended table length
    header.push(0); // extended table checksum
    header.push(0); // reserved
    debug_assert_eq!(header.len(), HEADER_LEN);

    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut floating = Vec::with_capacity(FLOATING_LEN);
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&(table_addr as u32).to_le_bytes());
    floating.push(1); // length in 16-byte units
    floating.push(4); // specification revision 1.4
    floating.push(0); // checksum, filled below
    floating.extend_from_slice(&[0; 5]); // feature bytes: a configuration table is present
    floating[10] = checksum(&floating);

    let mut out = floating;
    out.extend_from_slice(&table);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn well_formed_for_one_and_many_cpus() {
        for cpus in [1u32, 2, 64, MAX_CPUS] {
            let t = build(0xf0000, cpus, 0x800f12, 0x178bfbff).unwrap();
            assert_eq!(&t[..4], b"_MP_");
            assert_eq!(sum(&t[..16]), 0);
            let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap());
            assert_eq!(ptr, 0xf0010);
            let table = &t[16..];
            assert_eq!(&table[..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0);
            let count = u16::from_le_bytes([table[34], table[35]]) as u32;
            assert_eq!(count, cpus + 1 + 1 + 24 + 2);
            // Walk the entries and count processors, checking the BSP flag.
            let mut off = HEADER_LEN;
            let mut procs = 0;
            for _ in 0..count {
                let kind = table[off];
                if kind == ENTRY_PROCESSOR {
                    assert_eq!(table[off + 1] as u32, procs);
                    assert_eq!(table[off + 3] & CPU_BSP != 0, procs == 0);
                    procs += 1;
                    off += 20;
                } else {
                    off += 8;
                }
            }
            assert_eq!(off, len);
            assert_eq!(procs, cpus);
        }
        assert!(build(0xf0000, 0, 0, 0).is_none());
        assert!(build(0xf0000, MAX_CPUS + 1, 0, 0).is_none());
    }
}
