//! The vCPUs' entry state: the boot GDT and (for the 64-bit entry) page tables in memory, and
//! the registers, segments, CPUID, MSRs, FPU and LAPIC of each vCPU.

use super::layout::*;
use super::{BootInfo, BootProtocol};
use crate::vmm::x86::gdt::{Gdt, Segment};
use crate::vmm::x86::paging::{self, flags::*};
use crate::vmm::x86::{enter_long_mode, msr, CR0_ET, CR0_PE, CR0_PG, RFLAGS_RESERVED};
use anyhow::Context;
use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, Msrs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd};
use vm_memory::GuestMemoryMmap;

/// The boot GDT of the 64-bit entry: code, data and a TSS.
const LONG_GDT: Gdt = Gdt(&[Segment::NULL, Segment::KERNEL_CODE64, Segment::KERNEL_DATA, Segment::KERNEL_TSS]);
/// The boot GDT of PVH's 32-bit entry.
const PVH_GDT: Gdt = Gdt(&[Segment::NULL, Segment::KERNEL_CODE32, Segment::KERNEL_DATA, Segment::KERNEL_TSS]);
/// The boot GDT's code segment.
const CODE: usize = 1;
/// The boot GDT's data segment.
const DATA: usize = 2;

fn gdt(protocol: BootProtocol) -> Gdt {
    if protocol == BootProtocol::Pvh {
        PVH_GDT
    } else {
        LONG_GDT
    }
}

/// Writes the boot GDT, and for the 64-bit entry an identity map of the first GiB with 2 MiB
/// pages (PVH enters with paging off).
pub(super) fn write_entry_tables(mem: &GuestMemoryMmap, protocol: BootProtocol) -> anyhow::Result<()> {
    if protocol != BootProtocol::Pvh {
        let tables = paging::Tables { pml4: PML4_ADDR, pdpt: PDPT_ADDR, pd: PD_ADDR };
        paging::identity_map(mem, tables, crate::units::GIB, PRESENT | WRITABLE, |a| a | PRESENT | WRITABLE | LARGE)?;
    }
    gdt(protocol).write(mem, GDT_ADDR)?;
    Ok(())
}

/// Registers, segments, CPUID, MSRs, FPU and LAPIC of one vCPU. vCPU 0 starts at the entry;
/// the others wait in KVM for the kernel's INIT/SIPI.
pub fn setup_vcpu(kvm: &Kvm, fd: &VcpuFd, index: u32, vcpus: u32, boot: &BootInfo) -> anyhow::Result<()> {
    let mut cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).context("KVM_GET_SUPPORTED_CPUID")?;
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_FFFF) | (index << 24) | (vcpus.min(255) << 16);
                e.ecx |= 1 << 31; // running under a hypervisor
            }
            0xB | 0x1F => e.edx = index,
            _ => {}
        }
    }
    fd.set_cpuid2(&cpuid).context("KVM_SET_CPUID2")?;
    let msr = |index: u32, data: u64| kvm_msr_entry { index, data, ..Default::default() };
    let msrs = Msrs::from_entries(&[
        msr(msr::SYSENTER_CS, 0),
        msr(msr::SYSENTER_ESP, 0),
        msr(msr::SYSENTER_EIP, 0),
        msr(msr::STAR, 0),
        msr(msr::LSTAR, 0),
        msr(msr::SYSCALL_MASK, 0),
        msr(msr::KERNEL_GS_BASE, 0),
        msr(msr::TSC, 0),
        msr(msr::MISC_ENABLE, 1),               // fast strings
        msr(msr::MTRR_DEF_TYPE, (1 << 11) | 6), // enabled, write-back
    ])
    .map_err(|e| anyhow::anyhow!("MSR list: {e:?}"))?;
    fd.set_msrs(&msrs).context("KVM_SET_MSRS")?;
    fd.set_fpu(&kvm_fpu { fcw: 0x37F, mxcsr: 0x1F80, ..Default::default() }).context("KVM_SET_FPU")?;
    let mut lapic = fd.get_lapic().context("KVM_GET_LAPIC")?;
    let set_lvt = |lapic: &mut kvm_bindings::kvm_lapic_state, off: usize, mode: u32| {
        let bytes: [u8; 4] = lapic.regs[off..off + 4].iter().map(|&b| b as u8).collect::<Vec<_>>().try_into().unwrap();
        let v = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
        for (i, b) in v.to_le_bytes().iter().enumerate() {
            lapic.regs[off + i] = *b as _;
        }
    };
    set_lvt(&mut lapic, 0x350, 7); // LINT0: ExtINT
    set_lvt(&mut lapic, 0x360, 4); // LINT1: NMI
    fd.set_lapic(&lapic).context("KVM_SET_LAPIC")?;
    if index != 0 {
        return Ok(());
    }
    let mut s = fd.get_sregs().context("KVM_GET_SREGS")?;
    let long = boot.protocol != BootProtocol::Pvh;
    gdt(boot.protocol).load(&mut s, GDT_ADDR, CODE, DATA);
    let mut regs = kvm_regs { rip: boot.entry, rflags: RFLAGS_RESERVED, ..Default::default() };
    if long {
        enter_long_mode(&mut s, PML4_ADDR, CR0_PG | CR0_ET | CR0_PE);
        regs.rsi = ZERO_PAGE_ADDR;
        regs.rsp = BOOT_STACK;
        regs.rbp = BOOT_STACK;
    } else {
        s.cr0 = CR0_ET | CR0_PE; // paging off
        s.cr4 = 0;
        s.efer = 0;
        regs.rbx = PVH_INFO_ADDR;
    }
    fd.set_sregs(&s).context("KVM_SET_SREGS")?;
    fd.set_regs(&regs).context("KVM_SET_REGS")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    /// The tables are the bytes the boot code wrote in raw hex before they were named: the
    /// 64-bit entry's identity map of the first GiB and both GDTs.
    #[test]
    fn entry_tables_are_the_ones_linux_always_booted_with() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let at = |a: u64| mem.read_obj::<u64>(GuestAddress(a)).unwrap();
        write_entry_tables(&mem, BootProtocol::BzImage).unwrap();
        assert_eq!((at(PML4_ADDR), at(PML4_ADDR + 8)), (PDPT_ADDR | 0x03, 0));
        assert_eq!((at(PDPT_ADDR), at(PDPT_ADDR + 8)), (PD_ADDR | 0x03, 0));
        for i in 0..512 {
            assert_eq!(at(PD_ADDR + i * 8), (i << 21) | 0x83);
        }
        let gdt: Vec<u64> = (0..5).map(|i| at(GDT_ADDR + i * 8)).collect();
        assert_eq!(gdt, [0, 0x00AF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF, 0x008F_8B00_0000_FFFF, 0]);
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_entry_tables(&mem, BootProtocol::Pvh).unwrap();
        let at = |a: u64| mem.read_obj::<u64>(GuestAddress(a)).unwrap();
        let gdt: Vec<u64> = (0..4).map(|i| at(GDT_ADDR + i * 8)).collect();
        assert_eq!(gdt, [0, 0x00CF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF, 0x008F_8B00_0000_FFFF]);
        assert_eq!(at(PML4_ADDR), 0, "PVH enters with paging off: no tables");
        assert_eq!((PVH_GDT.limit(), LONG_GDT.selector(CODE), LONG_GDT.selector(DATA)), (31, 0x08, 0x10));
    }
}
