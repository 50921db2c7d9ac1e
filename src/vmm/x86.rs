//! x86 state both guests need.

use kvm_bindings::kvm_segment;

/// A flat 4 GiB segment: 64-bit code when `long`, else 32-bit (`db`) code or data.
pub fn flat_segment(selector: u16, type_: u8, dpl: u8, long: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xFFFF_FFFF,
        selector,
        type_,
        present: 1,
        dpl,
        db: (!long) as u8,
        s: 1,
        l: long as u8,
        g: 1,
        ..Default::default()
    }
}
