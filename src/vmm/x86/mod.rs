//! x86-64 state the guests set up before their first instruction: the GDT and the segment
//! registers that point into it ([`gdt`]), identity-mapped page tables ([`paging`]), and the
//! control-register, flag and MSR bits they name.

pub mod gdt;
pub mod paging;

use kvm_bindings::kvm_sregs;

/// CR0: protected mode.
pub const CR0_PE: u64 = 1 << 0;
/// CR0: monitor coprocessor.
pub const CR0_MP: u64 = 1 << 1;
/// CR0: extension type (always 1 on modern CPUs).
pub const CR0_ET: u64 = 1 << 4;
/// CR0: native x87 error reporting.
pub const CR0_NE: u64 = 1 << 5;
/// CR0: write protection also at CPL0.
pub const CR0_WP: u64 = 1 << 16;
/// CR0: alignment checks allowed (at CPL3, with RFLAGS.AC).
pub const CR0_AM: u64 = 1 << 18;
/// CR0: paging.
pub const CR0_PG: u64 = 1 << 31;
/// CR4: physical address extension (needed for long mode).
pub const CR4_PAE: u64 = 1 << 5;
/// EFER: `syscall`/`sysret` enabled.
pub const EFER_SCE: u64 = 1 << 0;
/// EFER: long mode enabled.
pub const EFER_LME: u64 = 1 << 8;
/// EFER: long mode active.
pub const EFER_LMA: u64 = 1 << 10;
/// RFLAGS bit 1, which always reads 1.
pub const RFLAGS_RESERVED: u64 = 1 << 1;
/// RFLAGS: I/O privilege level 3, so that `in`/`out` work at CPL3.
pub const RFLAGS_IOPL3: u64 = 3 << 12;

/// The MSRs the guests set.
pub mod msr {
    /// The time-stamp counter.
    pub const TSC: u32 = 0x10;
    /// `sysenter`'s code segment.
    pub const SYSENTER_CS: u32 = 0x174;
    /// `sysenter`'s stack.
    pub const SYSENTER_ESP: u32 = 0x175;
    /// `sysenter`'s entry point.
    pub const SYSENTER_EIP: u32 = 0x176;
    /// Miscellaneous features (bit 0: fast strings).
    pub const MISC_ENABLE: u32 = 0x1A0;
    /// The MTRRs' default memory type.
    pub const MTRR_DEF_TYPE: u32 = 0x2FF;
    /// Extended features: [`super::EFER_LME`] and friends.
    pub const EFER: u32 = 0xC000_0080;
    /// `syscall`'s and `sysret`'s segment selectors.
    pub const STAR: u32 = 0xC000_0081;
    /// `syscall`'s 64-bit entry point.
    pub const LSTAR: u32 = 0xC000_0082;
    /// The RFLAGS bits `syscall` clears.
    pub const SYSCALL_MASK: u32 = 0xC000_0084;
    /// The kernel's GS base that `swapgs` exchanges.
    pub const KERNEL_GS_BASE: u32 = 0xC000_0102;
}

/// The CR0 of a CPL3 guest that runs in long mode from its first instruction (the synthetic
/// guest, the probe): paging, write protection and alignment checks on, native FPU errors.
pub const CR0_LONG_MODE_USER: u64 = CR0_PG | CR0_AM | CR0_WP | CR0_NE | CR0_ET | CR0_MP | CR0_PE;

/// Puts `s` in 64-bit long mode with paging from the PML4 at `pml4` and control register 0 `cr0`.
pub fn enter_long_mode(s: &mut kvm_sregs, pml4: u64, cr0: u64) {
    s.cr0 = cr0;
    s.cr3 = pml4;
    s.cr4 = CR4_PAE;
    s.efer = EFER_LME | EFER_LMA;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values the guests were written with in raw hex, which their recorded traces depend on.
    #[test]
    fn named_bits_are_the_values_the_guests_always_used() {
        assert_eq!(CR0_LONG_MODE_USER, 0x8005_0033);
        assert_eq!(CR0_PG | CR0_ET | CR0_PE, 0x8000_0011);
        assert_eq!(CR4_PAE, 0x20);
        assert_eq!(EFER_LME | EFER_LMA, 0x500);
        assert_eq!(EFER_LME | EFER_SCE, 0x101);
        assert_eq!(RFLAGS_IOPL3 | RFLAGS_RESERVED, 0x3002);
    }
}
