//! Flat segments: their GDT descriptors and the segment registers KVM loads with them. Both
//! come from one [`Segment`], so a GDT in guest memory and the `KVM_SET_SREGS` state that
//! points into it cannot disagree. Every descriptor has base 0, a 4 GiB limit and its accessed
//! bit preset, so the CPU never writes the GDT (which would dirty its page).

use kvm_bindings::{kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// What a descriptor describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The null descriptor every GDT starts with.
    Null,
    /// 64-bit code (L = 1).
    Code64,
    /// 32-bit code (D = 1).
    Code32,
    /// Writable data, also the stack (B = 1).
    Data,
    /// A busy 64-bit TSS (a system descriptor).
    Tss,
}

/// The type field of code: execute, read, accessed.
const TYPE_CODE: u8 = 0xB;
/// The type field of data: read, write, accessed.
const TYPE_DATA: u8 = 0x3;
/// The type field of a system descriptor for a busy 64-bit TSS.
const TYPE_TSS_BUSY: u8 = 0xB;

// Descriptor bits (Intel SDM vol. 3, 3.4.5).
const ACCESS_SHIFT: u32 = 40;
const ACCESS_PRESENT: u64 = 1 << 7;
const ACCESS_DPL_SHIFT: u32 = 5;
const ACCESS_CODE_OR_DATA: u64 = 1 << 4;
const FLAG_LONG: u64 = 1 << 53;
const FLAG_DEFAULT_32: u64 = 1 << 54;
const FLAG_4K_GRANULES: u64 = 1 << 55;
/// The limit 0xFFFFF (in 4 KiB granules: 4 GiB), split as the descriptor keeps it.
const LIMIT_4G: u64 = 0xFFFF | (0xF << 48);

/// One flat segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// What it is.
    pub kind: Kind,
    /// Its privilege level: 0 (kernel) or 3 (user).
    pub dpl: u8,
}

impl Segment {
    /// The null descriptor.
    pub const NULL: Segment = Segment { kind: Kind::Null, dpl: 0 };
    /// 64-bit kernel code.
    pub const KERNEL_CODE64: Segment = Segment { kind: Kind::Code64, dpl: 0 };
    /// 32-bit kernel code (PVH's entry).
    pub const KERNEL_CODE32: Segment = Segment { kind: Kind::Code32, dpl: 0 };
    /// Kernel data.
    pub const KERNEL_DATA: Segment = Segment { kind: Kind::Data, dpl: 0 };
    /// 64-bit user code.
    pub const USER_CODE64: Segment = Segment { kind: Kind::Code64, dpl: 3 };
    /// User data.
    pub const USER_DATA: Segment = Segment { kind: Kind::Data, dpl: 3 };
    /// A kernel TSS.
    pub const KERNEL_TSS: Segment = Segment { kind: Kind::Tss, dpl: 0 };

    /// The 8-byte descriptor.
    pub const fn descriptor(self) -> u64 {
        let (type_, code_or_data, flags) = match self.kind {
            Kind::Null => return 0,
            Kind::Code64 => (TYPE_CODE, true, FLAG_4K_GRANULES | FLAG_LONG),
            Kind::Code32 => (TYPE_CODE, true, FLAG_4K_GRANULES | FLAG_DEFAULT_32),
            Kind::Data => (TYPE_DATA, true, FLAG_4K_GRANULES | FLAG_DEFAULT_32),
            Kind::Tss => (TYPE_TSS_BUSY, false, FLAG_4K_GRANULES),
        };
        let access = ACCESS_PRESENT
            | ((self.dpl as u64 & 3) << ACCESS_DPL_SHIFT)
            | if code_or_data { ACCESS_CODE_OR_DATA } else { 0 }
            | type_ as u64;
        LIMIT_4G | (access << ACCESS_SHIFT) | flags
    }

    /// The segment register KVM loads for this segment, selected by `selector`.
    pub fn register(self, selector: u16) -> kvm_segment {
        let d = self.descriptor();
        let bit = |mask: u64| (d & mask != 0) as u8;
        kvm_segment {
            base: 0,
            limit: 0xFFFF_FFFF,
            selector,
            type_: ((d >> ACCESS_SHIFT) & 0xF) as u8,
            present: bit(ACCESS_PRESENT << ACCESS_SHIFT),
            dpl: self.dpl,
            db: bit(FLAG_DEFAULT_32),
            s: bit(ACCESS_CODE_OR_DATA << ACCESS_SHIFT),
            l: bit(FLAG_LONG),
            g: bit(FLAG_4K_GRANULES),
            ..Default::default()
        }
    }
}

/// A GDT: its segments by index, the null descriptor first.
#[derive(Debug, Clone, Copy)]
pub struct Gdt(pub &'static [Segment]);

/// The GDT of guests that run 64-bit code at CPL0 and CPL3 (the synthetic guest, the probe):
/// kernel code 0x08, kernel data 0x10, user code 0x1b, user data 0x23.
pub const LONG_MODE: Gdt =
    Gdt(&[Segment::NULL, Segment::KERNEL_CODE64, Segment::KERNEL_DATA, Segment::USER_CODE64, Segment::USER_DATA]);
/// [`LONG_MODE`]'s kernel code.
pub const KERNEL_CODE: usize = 1;
/// [`LONG_MODE`]'s kernel data.
pub const KERNEL_DATA: usize = 2;
/// [`LONG_MODE`]'s user code.
pub const USER_CODE: usize = 3;
/// [`LONG_MODE`]'s user data.
pub const USER_DATA: usize = 4;

impl Gdt {
    /// The descriptors, in order.
    pub fn descriptors(&self) -> Vec<u64> {
        self.0.iter().map(|s| s.descriptor()).collect()
    }

    /// The limit `lgdt` and `KVM_SET_SREGS` take: the table's size less one.
    pub const fn limit(&self) -> u16 {
        (self.0.len() * 8 - 1) as u16
    }

    /// The selector of entry `index`, its requested privilege level the segment's own.
    pub const fn selector(&self, index: usize) -> u16 {
        ((index as u16) << 3) | self.0[index].dpl as u16
    }

    /// Writes the table at `addr`.
    pub fn write(&self, mem: &GuestMemoryMmap, addr: u64) -> Result<(), vm_memory::GuestMemoryError> {
        let bytes: Vec<u8> = self.descriptors().iter().flat_map(|d| d.to_le_bytes()).collect();
        mem.write_slice(&bytes, GuestAddress(addr))
    }

    /// Points `s` at this table (written at `addr`) and loads its entry `code` into CS and its
    /// entry `data` into DS, ES, FS, GS and SS.
    pub fn load(&self, s: &mut kvm_sregs, addr: u64, code: usize, data: usize) {
        s.gdt.base = addr;
        s.gdt.limit = self.limit();
        s.cs = self.0[code].register(self.selector(code));
        let d = self.0[data].register(self.selector(data));
        (s.ds, s.es, s.fs, s.gs, s.ss) = (d, d, d, d, d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The descriptors the guests were written with in raw hex.
    #[test]
    fn descriptors_are_the_ones_the_guests_always_used() {
        assert_eq!(
            LONG_MODE.descriptors(),
            [0, 0x00AF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF, 0x00AF_FB00_0000_FFFF, 0x00CF_F300_0000_FFFF]
        );
        assert_eq!(Segment::KERNEL_CODE32.descriptor(), 0x00CF_9B00_0000_FFFF);
        assert_eq!(Segment::KERNEL_TSS.descriptor(), 0x008F_8B00_0000_FFFF);
        assert_eq!(LONG_MODE.limit(), 39);
        let selectors: Vec<u16> = (1..5).map(|i| LONG_MODE.selector(i)).collect();
        assert_eq!(selectors, [0x08, 0x10, 0x1B, 0x23]);
    }

    /// The registers are the ones the guests set by hand before: type 11 code and type 3 data,
    /// present, 4 GiB granular, L for 64-bit code and D/B otherwise.
    #[test]
    fn registers_match_their_descriptors() {
        let cs = Segment::USER_CODE64.register(0x1B);
        assert_eq!((cs.type_, cs.present, cs.dpl, cs.db, cs.s, cs.l, cs.g), (11, 1, 3, 0, 1, 1, 1));
        assert_eq!((cs.base, cs.limit, cs.selector), (0, 0xFFFF_FFFF, 0x1B));
        let ds = Segment::KERNEL_DATA.register(0x10);
        assert_eq!((ds.type_, ds.present, ds.dpl, ds.db, ds.s, ds.l, ds.g), (3, 1, 0, 1, 1, 0, 1));
        let cs32 = Segment::KERNEL_CODE32.register(0x08);
        assert_eq!((cs32.type_, cs32.db, cs32.l), (11, 1, 0));
    }
}
