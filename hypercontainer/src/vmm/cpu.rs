//! x86-64 vCPU state for boot: CPUID, MSRs, FPU, LAPIC, registers and
//! segments.

use kvm_bindings::{
    kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, CpuId, Msrs,
};

use super::layout::{BOOT_STACK, GDT_ADDR, PML4_ADDR, PVH_INFO_ADDR, ZERO_PAGE_ADDR};

// ---------------------------------------------------------------------------
// Descriptors

/// Packs a GDT descriptor from its access/flags word (access byte in bits
/// 0-7, flags nibble in bits 12-15), base and 20-bit limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    ((base & 0xff00_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
        | ((limit & 0xf_0000) << 32)
        | (((flags as u64) & 0xf0ff) << 40)
}

/// 64-bit code segment (L=1), present, DPL 0, execute/read, accessed.
pub const CODE64: u64 = gdt_entry(0xa09b, 0, 0xfffff);
/// 32-bit code segment (D=1, G=1), flat.
pub const CODE32: u64 = gdt_entry(0xc09b, 0, 0xfffff);
/// Flat read/write data segment (D=1, G=1).
pub const DATA: u64 = gdt_entry(0xc093, 0, 0xfffff);
/// 64-bit busy TSS.
pub const TSS: u64 = gdt_entry(0x808b, 0, 0xfffff);

/// Selector of the boot code segment (`__BOOT_CS`).
pub const BOOT_CS: u16 = 0x10;
/// Selector of the boot data segment (`__BOOT_DS`).
pub const BOOT_DS: u16 = 0x18;
/// Selector of the boot TSS.
pub const BOOT_TSS: u16 = 0x20;

/// The boot GDT: null, null, code, data, TSS.
pub fn boot_gdt(code: u64) -> [u64; 5] {
    [0, 0, code, DATA, TSS]
}

/// The KVM segment register matching a GDT descriptor.
pub fn segment(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base,
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

// ---------------------------------------------------------------------------
// Registers

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// How the boot vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// PVH: 32-bit flat protected mode, paging off, `ebx` = `hvm_start_info`.
    Pvh {
        /// The PVH entry point (physical).
        entry: u64,
    },
    /// Linux 64-bit boot protocol: long mode with identity page tables,
    /// `rsi` = `boot_params`.
    Linux64 {
        /// The 64-bit entry point.
        entry: u64,
    },
    /// 32-bit flat protected mode, paging off, at `entry`; `rax` holds the
    /// vCPU index (raw code).
    Flat32 {
        /// Instruction pointer.
        entry: u64,
    },
    /// Real mode, CS base 0, at `entry`; `rax` holds the vCPU index.
    RealMode {
        /// Instruction pointer (below 64 KiB).
        entry: u16,
    },
}

/// General-purpose registers for `mode`.
pub fn regs(mode: EntryMode, vcpu_index: u32) -> kvm_regs {
    let mut r = kvm_regs {
        rflags: 0x2,
        ..Default::default()
    };
    match mode {
        EntryMode::Pvh { entry } => {
            r.rip = entry;
            r.rbx = PVH_INFO_ADDR;
        }
        EntryMode::Linux64 { entry } => {
            r.rip = entry;
            r.rsp = BOOT_STACK;
            r.rbp = BOOT_STACK;
            r.rsi = ZERO_PAGE_ADDR;
        }
        EntryMode::Flat32 { entry } => {
            r.rip = entry;
            r.rax = u64::from(vcpu_index);
        }
        EntryMode::RealMode { entry } => {
            r.rip = u64::from(entry);
            r.rax = u64::from(vcpu_index);
        }
    }
    r
}

/// Special registers for `mode`, starting from the vCPU's reset state.
pub fn sregs(mode: EntryMode, mut s: kvm_sregs) -> kvm_sregs {
    let flat = |s: &mut kvm_sregs, code: u64| {
        let gdt = boot_gdt(code);
        s.gdt.base = GDT_ADDR;
        s.gdt.limit = (gdt.len() * 8 - 1) as u16;
        s.idt.base = 0;
        s.idt.limit = 0;
        s.cs = segment(code, BOOT_CS);
        let data = segment(DATA, BOOT_DS);
        s.ds = data;
        s.es = data;
        s.fs = data;
        s.gs = data;
        s.ss = data;
        s.tr = segment(TSS, BOOT_TSS);
    };
    match mode {
        EntryMode::Pvh { .. } | EntryMode::Flat32 { .. } => {
            flat(&mut s, CODE32);
            s.cr0 = CR0_PE | CR0_ET;
            s.cr4 = 0;
            s.efer = 0;
        }
        EntryMode::Linux64 { .. } => {
            flat(&mut s, CODE64);
            s.cr3 = PML4_ADDR;
            s.cr4 = CR4_PAE;
            s.cr0 = CR0_PE | CR0_ET | CR0_PG;
            s.efer = EFER_LME | EFER_LMA;
        }
        EntryMode::RealMode { .. } => {
            s.cs.base = 0;
            s.cs.selector = 0;
        }
    }
    s
}

/// x87/SSE state Linux expects at boot.
pub fn fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------
// MSRs

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default memory type write-back.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

/// The boot MSR values: syscall/sysenter state cleared, TSC at zero, fast
/// strings on, MTRRs enabled with write-back as the default type.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        entry(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
}

/// [`boot_msrs`] as the FAM wrapper KVM takes.
pub fn boot_msrs_fam() -> Option<Msrs> {
    Msrs::from_entries(&boot_msrs()).ok()
}

// ---------------------------------------------------------------------------
// LAPIC

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const DELIVERY_EXTINT: u32 = 0x7;
const DELIVERY_NMI: u32 = 0x4;

fn lapic_reg(state: &kvm_lapic_state, offset: usize) -> u32 {
    let b = &state.regs[offset..offset + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(state: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        state.regs[offset + i] = *byte as _;
    }
}

/// Sets LINT0 to ExtINT and LINT1 to NMI delivery, as on a PC where the
/// 8259 is wired to LINT0 (what Linux's virtual-wire mode expects).
pub fn set_lint(state: &mut kvm_lapic_state) {
    for (reg, mode) in [(APIC_LVT0, DELIVERY_EXTINT), (APIC_LVT1, DELIVERY_NMI)] {
        let v = lapic_reg(state, reg);
        set_lapic_reg(state, reg, (v & !0x700) | (mode << 8));
    }
}

// ---------------------------------------------------------------------------
// CPUID

/// What the guest's CPUID should say about its topology and platform.
#[derive(Debug, Clone, Copy)]
pub struct CpuidConfig {
    /// This vCPU's index, which is also its APIC id.
    pub index: u32,
    /// How many vCPUs the VM has.
    pub count: u32,
    /// KVM can emulate the TSC-deadline timer mode of the LAPIC.
    pub tsc_deadline: bool,
}

const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF1_EDX_HTT: u32 = 1 << 28;

/// Bits needed to number `count` things.
fn id_bits(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

/// Filters what `KVM_GET_SUPPORTED_CPUID` reported for one vCPU: APIC ids,
/// a one-socket topology with one core per vCPU, the hypervisor bit. KVM's
/// paravirtual leaves (0x4000_0000..) are passed through as reported.
pub fn filter_cpuid(cpuid: &mut CpuId, cfg: CpuidConfig) {
    let CpuidConfig {
        index,
        count,
        tsc_deadline,
    } = cfg;
    let shift = id_bits(count);
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (index << 24) | (count.min(255) << 16);
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                if tsc_deadline {
                    e.ecx |= LEAF1_ECX_TSC_DEADLINE;
                }
                if count > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
            }
            4 => {
                // Cores per package - 1 in bits 31..26; one thread per core.
                e.eax = (e.eax & 0x03ff_ffff) | ((count - 1).min(63) << 26);
                e.eax &= !(0xfff << 14);
            }
            0xb | 0x1f => {
                e.edx = index;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8; // SMT level
                    }
                    1 => {
                        e.eax = shift;
                        e.ebx = count;
                        e.ecx = (2 << 8) | 1; // core level
                    }
                    n => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = n; // invalid level type ends the enumeration
                    }
                }
            }
            0x8000_0008 => {
                e.ecx = (e.ecx & !0xf0ff) | (shift << 12) | (count - 1).min(255);
            }
            0x8000_001e => {
                e.eax = index;
                e.ebx = index & 0xff; // one thread per core
                e.ecx = 0;
            }
            _ => {}
        }
    }
}

/// CPUID leaf 1 EAX and EDX (for the MP table's processor entries).
pub fn signature(cpuid: &CpuId) -> (u32, u32) {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 1)
        .map_or((0x600, 0), |e| (e.eax, e.edx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn descriptors_round_trip_to_segments() {
        let cs = segment(CODE64, BOOT_CS);
        assert_eq!(
            (cs.base, cs.limit, cs.l, cs.db, cs.g),
            (0, 0xffff_ffff, 1, 0, 1)
        );
        assert_eq!((cs.type_, cs.s, cs.present, cs.unusable), (0xb, 1, 1, 0));
        let cs32 = segment(CODE32, BOOT_CS);
        assert_eq!((cs32.l, cs32.db), (0, 1));
        let ds = segment(DATA, BOOT_DS);
        assert_eq!((ds.type_, ds.db, ds.s), (3, 1, 1));
        let tr = segment(TSS, BOOT_TSS);
        assert_eq!((tr.type_, tr.s, tr.present), (0xb, 0, 1));
        assert_eq!(gdt_entry(0xc093, 0x1234_5678, 0xabcde) >> 56, 0x12);
        assert_eq!(
            segment(gdt_entry(0x0093, 0x1234_5678, 0xabcde), 0).base,
            0x1234_5678
        );
        assert_eq!(segment(gdt_entry(0x0093, 0, 0xabcde), 0).limit, 0xabcde);
    }

    #[test]
    fn long_mode_sregs() {
        let s = sregs(EntryMode::Linux64 { entry: 0x100200 }, kvm_sregs::default());
        assert_eq!(s.efer, EFER_LME | EFER_LMA);
        assert_eq!(s.cr3, PML4_ADDR);
        assert!(s.cr0 & CR0_PG != 0 && s.cr4 & CR4_PAE != 0);
        let p = sregs(EntryMode::Pvh { entry: 0x1000000 }, kvm_sregs::default());
        assert_eq!((p.cr0 & CR0_PG, p.efer, p.cs.db, p.cs.l), (0, 0, 1, 0));
        let r = regs(EntryMode::Pvh { entry: 0x1234 }, 0);
        assert_eq!((r.rip, r.rbx), (0x1234, PVH_INFO_ADDR));
    }

    #[test]
    fn lapic_lint_modes() {
        let mut st = kvm_lapic_state::default();
        set_lapic_reg(&mut st, APIC_LVT0, 0x0001_0700);
        set_lint(&mut st);
        assert_eq!(lapic_reg(&st, APIC_LVT0), 0x0001_0700);
        assert_eq!(lapic_reg(&st, APIC_LVT1), 0x400);
    }

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0xffff_ffff,
            edx: 0xffff_ffff,
            ..Default::default()
        }
    }

    #[test]
    fn cpuid_topology_and_apic_ids() {
        let entries = [
            leaf(1, 0),
            leaf(0xb, 0),
            leaf(0xb, 1),
            leaf(0xb, 2),
            leaf(0x4000_0001, 0),
        ];
        let mut c = CpuId::from_entries(&entries).unwrap();
        filter_cpuid(
            &mut c,
            CpuidConfig {
                index: 2,
                count: 3,
                tsc_deadline: true,
            },
        );
        let e = c.as_slice();
        assert_eq!(e[0].ebx >> 24, 2);
        assert_eq!((e[0].ebx >> 16) & 0xff, 3);
        assert!(e[0].ecx & LEAF1_ECX_HYPERVISOR != 0 && e[0].ecx & LEAF1_ECX_TSC_DEADLINE != 0);
        assert!(e[0].edx & LEAF1_EDX_HTT != 0);
        assert_eq!((e[1].edx, e[1].ebx), (2, 1));
        assert_eq!((e[2].eax, e[2].ebx, e[2].ecx), (2, 3, 0x201));
        assert_eq!(e[3].ebx, 0);
        assert_eq!(e[4], entries[4]);
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(5), 3);
    }
}
