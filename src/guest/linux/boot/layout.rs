//! Where everything goes in guest-physical memory, and the E820 map that tells the kernel.

pub use crate::units::MIB;
/// Where RAM above the legacy area starts, and the kernel is loaded.
pub const HIMEM_START: u64 = 0x10_0000;
/// RAM stops here below 4 GiB; the rest of the 32-bit space is for the APICs and MMIO.
pub const LOW_RAM_END: u64 = 3 << 30;
/// Where RAM continues above the 32-bit hole.
pub const HIGH_RAM_START: u64 = 4 << 30;
/// The extended BIOS data area: reserved in the E820 map.
pub const EBDA_START: u64 = 0x9_FC00;

/// The boot GDT.
pub const GDT_ADDR: u64 = 0x500;
/// PVH `hvm_start_info`.
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// PVH module list (the initramfs).
pub const PVH_MODLIST_ADDR: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP_ADDR: u64 = 0x6100;
/// `boot_params` (the zero page) of the 64-bit boot protocol.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// The boot stack's top.
pub const BOOT_STACK: u64 = 0x8FF0;
/// The boot page tables' top level.
pub const PML4_ADDR: u64 = 0x9000;
/// The boot page-directory-pointer table.
pub const PDPT_ADDR: u64 = 0xA000;
/// The boot page directory (identity map of the first GiB).
pub const PD_ADDR: u64 = 0xB000;
/// The kernel command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// The longest command line, with its NUL.
pub const CMDLINE_MAX: usize = 2048;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;

/// Guest RAM ranges for `mem` bytes: below 3 GiB, then from 4 GiB.
pub fn ram_ranges(mem: u64) -> Vec<(u64, u64)> {
    if mem <= LOW_RAM_END {
        vec![(0, mem)]
    } else {
        vec![(0, LOW_RAM_END), (HIGH_RAM_START, mem - LOW_RAM_END)]
    }
}

/// The E820 map: `(address, size, type)`.
pub fn e820(mem: u64) -> Vec<(u64, u64, u32)> {
    let mut map = vec![(0, EBDA_START, E820_RAM), (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED)];
    for (start, size) in ram_ranges(mem) {
        let start = start.max(HIMEM_START);
        let end = if start == HIMEM_START { size } else { start + size };
        map.push((start, end - start, E820_RAM));
    }
    map
}
