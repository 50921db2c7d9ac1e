//! Identity-mapped 4-level page tables: one PML4 entry, one page-directory-pointer entry per
//! GiB and one page directory per GiB, whose entries the guest chooses (usually 2 MiB pages).

use crate::units::{GIB, PAGE_SIZE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Page-table entry bits (Intel SDM vol. 3, 4.5).
pub mod flags {
    /// The entry is valid.
    pub const PRESENT: u64 = 1 << 0;
    /// Writes allowed.
    pub const WRITABLE: u64 = 1 << 1;
    /// Reachable from CPL3.
    pub const USER: u64 = 1 << 2;
    /// Accessed: preset, so the CPU never writes the entry.
    pub const ACCESSED: u64 = 1 << 5;
    /// Dirty (leaves only): preset, so the CPU never writes the entry.
    pub const DIRTY: u64 = 1 << 6;
    /// In a page directory: the entry maps a 2 MiB page rather than pointing to a page table.
    pub const LARGE: u64 = 1 << 7;
}

/// Entries per table.
pub const ENTRIES: u64 = 512;
/// The size of a page a page-directory entry maps.
pub const LARGE_PAGE_SIZE: u64 = 2 << 20;

/// Where the tables go: the PML4, the page-directory-pointer table, and the first of the
/// consecutive page directories (one per GiB).
#[derive(Debug, Clone, Copy)]
pub struct Tables {
    /// The top level (CR3).
    pub pml4: u64,
    /// The page-directory-pointer table.
    pub pdpt: u64,
    /// The first page directory; GiB `g`'s is at `pd + g * 4096`.
    pub pd: u64,
}

/// Writes `entries`, 8 bytes each, from `addr`.
pub fn write_entries(
    mem: &GuestMemoryMmap,
    addr: u64,
    entries: impl IntoIterator<Item = u64>,
) -> Result<(), vm_memory::GuestMemoryError> {
    let bytes: Vec<u8> = entries.into_iter().flat_map(|e| e.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(addr))
}

/// Identity-maps `[0, bytes)` from `tables`: the PML4's first entry and one page-directory-
/// pointer entry per GiB point to the next level with `table_flags`; page-directory entry
/// `i` of GiB `g` (for each 2 MiB address `a = g GiB + i 2 MiB` below `bytes`) is `leaf(a)`.
pub fn identity_map(
    mem: &GuestMemoryMmap,
    tables: Tables,
    bytes: u64,
    table_flags: u64,
    leaf: impl Fn(u64) -> u64,
) -> Result<(), vm_memory::GuestMemoryError> {
    write_entries(mem, tables.pml4, [tables.pdpt | table_flags])?;
    for g in 0..bytes.div_ceil(GIB) {
        let pd = tables.pd + g * PAGE_SIZE;
        write_entries(mem, tables.pdpt + g * 8, [pd | table_flags])?;
        let addrs = (0..ENTRIES).map(|i| g * GIB + i * LARGE_PAGE_SIZE).take_while(|&a| a < bytes);
        write_entries(mem, pd, addrs.map(&leaf))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::flags::*;
    use super::*;

    /// The flags the guests were written with in raw hex.
    #[test]
    fn flags_are_the_values_the_guests_always_used() {
        assert_eq!(PRESENT | WRITABLE | USER | ACCESSED, 0x27);
        assert_eq!(PRESENT | WRITABLE | USER | ACCESSED | DIRTY | LARGE, 0xE7);
        assert_eq!(PRESENT | USER | ACCESSED, 0x25);
        assert_eq!(PRESENT | WRITABLE | USER | ACCESSED | DIRTY, 0x67);
        assert_eq!(PRESENT | WRITABLE | LARGE, 0x83);
    }

    #[test]
    fn identity_map_of_a_gib_and_a_half() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let t = Tables { pml4: 0x1000, pdpt: 0x2000, pd: 0x3000 };
        identity_map(&mem, t, GIB + GIB / 2, 3, |a| a | 0x83).unwrap();
        let at = |a: u64| mem.read_obj::<u64>(GuestAddress(a)).unwrap();
        assert_eq!((at(0x1000), at(0x1008)), (0x2003, 0));
        assert_eq!((at(0x2000), at(0x2008), at(0x2010)), (0x3003, 0x4003, 0));
        assert_eq!((at(0x3000), at(0x3008), at(0x3000 + 511 * 8)), (0x83, 0x20_0083, 0x3FE0_0083));
        assert_eq!((at(0x4000), at(0x4000 + 255 * 8), at(0x4000 + 256 * 8)), (0x4000_0083, 0x5FE0_0083, 0));
    }
}
