//! ACPI tables for SMP: RSDP → XSDT → {FADT → DSDT, MADT}. Debian's cloud kernel has no
//! MP-table parsing, so ACPI's MADT is how it finds its CPUs. The platform is "hardware
//! reduced" (no PM timer or SCI): the guest stops through the i8042 reset instead.

/// Where the RSDP goes (in the BIOS area the kernel scans).
pub const RSDP_ADDR: u64 = 0xE0000;
/// Where the XSDT goes.
pub const XSDT_ADDR: u64 = 0xE0040;
/// Where the MADT goes.
pub const MADT_ADDR: u64 = 0xE0100;
/// Where the FADT goes.
pub const FADT_ADDR: u64 = 0xE0800;
/// Where the (empty) DSDT goes.
pub const DSDT_ADDR: u64 = 0xE0A00;
/// The local APICs' MMIO base.
pub const LAPIC_ADDR: u32 = 0xFEE0_0000;
/// The IOAPIC's MMIO base.
pub const IOAPIC_ADDR: u32 = 0xFEC0_0000;

const OEM_ID: &[u8; 6] = b"DRTYTR";
const OEM_TABLE_ID: &[u8; 8] = b"DTVMM   ";

/// The byte that makes `bytes` sum to zero, as ACPI tables need.
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)).wrapping_neg()
}

/// A system description table: 36-byte header, then `body`; length and checksum filled in.
fn sdt(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(36 + body.len());
    t.extend_from_slice(signature);
    t.extend_from_slice(&((36 + body.len()) as u32).to_le_bytes());
    t.push(revision);
    t.push(0); // checksum
    t.extend_from_slice(OEM_ID);
    t.extend_from_slice(OEM_TABLE_ID);
    t.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
    t.extend_from_slice(b"DTRT"); // creator id
    t.extend_from_slice(&1u32.to_le_bytes()); // creator revision
    t.extend_from_slice(body);
    t[9] = checksum(&t);
    t
}

/// The RSDP (ACPI 2.0), pointing at the XSDT at `xsdt`.
pub fn rsdp(xsdt: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(36);
    r.extend_from_slice(b"RSD PTR ");
    r.push(0); // checksum of the first 20 bytes
    r.extend_from_slice(OEM_ID);
    r.push(2); // revision: ACPI 2.0+, so XSDT
    r.extend_from_slice(&0u32.to_le_bytes()); // RSDT: none
    r.extend_from_slice(&36u32.to_le_bytes());
    r.extend_from_slice(&xsdt.to_le_bytes());
    r.push(0); // extended checksum
    r.extend_from_slice(&[0; 3]);
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    r
}

/// The XSDT, listing the tables at `entries`.
pub fn xsdt(entries: &[u64]) -> Vec<u8> {
    let body: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
    sdt(b"XSDT", 1, &body)
}

/// One local APIC per vCPU (APIC id = vCPU index) and the I/O APIC, with id `vcpus`.
pub fn madt(vcpus: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes()); // PCAT_COMPAT: there are 8259 PICs too
    for i in 0..vcpus {
        b.extend_from_slice(&[0, 8, i as u8, i as u8]); // type, length, ACPI processor uid, APIC id
        b.extend_from_slice(&1u32.to_le_bytes()); // enabled
    }
    b.extend_from_slice(&[1, 12, vcpus as u8, 0]); // I/O APIC: type, length, id, reserved
    b.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes()); // GSI base
    sdt(b"APIC", 4, &b)
}

/// FADT flag: a hardware-reduced ACPI platform (no PM timer, no legacy ports).
pub const FADT_FLAG_HW_REDUCED: u32 = 1 << 20;

/// A hardware-reduced FADT pointing at the DSDT at `dsdt`.
pub fn fadt(dsdt: u64) -> Vec<u8> {
    // ACPI 6.x FADT: 276 bytes in all, 240 after the header.
    let mut b = vec![0u8; 276 - 36];
    let at = |off: usize| off - 36;
    b[at(40)..at(44)].copy_from_slice(&(dsdt as u32).to_le_bytes());
    b[at(112)..at(116)].copy_from_slice(&FADT_FLAG_HW_REDUCED.to_le_bytes());
    b[at(131)] = 5; // FADT minor version
    b[at(140)..at(148)].copy_from_slice(&dsdt.to_le_bytes()); // X_DSDT
    b[at(268)..at(276)].copy_from_slice(b"DRTYTRCE"); // hypervisor vendor identity
    sdt(b"FACP", 6, &b)
}

/// An empty DSDT: the guest has no devices that need AML.
pub fn dsdt() -> Vec<u8> {
    sdt(b"DSDT", 2, &[])
}

/// Every table with its guest-physical address.
pub fn tables(vcpus: u32) -> Vec<(u64, Vec<u8>)> {
    vec![
        (RSDP_ADDR, rsdp(XSDT_ADDR)),
        (XSDT_ADDR, xsdt(&[FADT_ADDR, MADT_ADDR])),
        (MADT_ADDR, madt(vcpus)),
        (FADT_ADDR, fadt(DSDT_ADDR)),
        (DSDT_ADDR, dsdt()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }

    #[test]
    fn rsdp_fields() {
        let r = rsdp(XSDT_ADDR);
        assert_eq!(r.len(), 36);
        assert_eq!(&r[0..8], b"RSD PTR ");
        assert_eq!(r[15], 2);
        assert_eq!(u32_at(&r, 20), 36);
        assert_eq!(u64_at(&r, 24), XSDT_ADDR);
        assert_eq!(checksum(&r[..20]), 0);
        assert_eq!(checksum(&r), 0);
    }

    #[test]
    fn madt_lists_every_cpu_and_the_ioapic() {
        let m = madt(3);
        assert_eq!(&m[0..4], b"APIC");
        assert_eq!(u32_at(&m, 4) as usize, m.len());
        assert_eq!(m.len(), 44 + 3 * 8 + 12);
        assert_eq!(checksum(&m), 0);
        assert_eq!(u32_at(&m, 36), LAPIC_ADDR);
        assert_eq!(u32_at(&m, 40), 1);
        for i in 0..3 {
            let e = &m[44 + i * 8..52 + i * 8];
            assert_eq!((e[0], e[1], e[2], e[3], u32_at(e, 4)), (0, 8, i as u8, i as u8, 1));
        }
        let io = &m[68..80];
        assert_eq!((io[0], io[1], io[2]), (1, 12, 3));
        assert_eq!(u32_at(io, 4), IOAPIC_ADDR);
        assert_eq!(u32_at(io, 8), 0);
    }

    #[test]
    fn fadt_xsdt_dsdt_fields() {
        let f = fadt(DSDT_ADDR);
        assert_eq!((&f[0..4], f.len(), f[8]), (&b"FACP"[..], 276, 6));
        assert_eq!(u32_at(&f, 4), 276);
        assert_eq!(u32_at(&f, 40), DSDT_ADDR as u32);
        assert_eq!(u64_at(&f, 140), DSDT_ADDR);
        assert_eq!(u32_at(&f, 112), FADT_FLAG_HW_REDUCED);
        assert_eq!(checksum(&f), 0);
        let x = xsdt(&[FADT_ADDR, MADT_ADDR]);
        assert_eq!((&x[0..4], x.len()), (&b"XSDT"[..], 52));
        assert_eq!((u64_at(&x, 36), u64_at(&x, 44)), (FADT_ADDR, MADT_ADDR));
        assert_eq!(checksum(&x), 0);
        let d = dsdt();
        assert_eq!((&d[0..4], d.len(), checksum(&d)), (&b"DSDT"[..], 36, 0));
        // The tables do not overlap.
        let t = tables(64);
        for w in t.windows(2) {
            assert!(w[0].0 + w[0].1.len() as u64 <= w[1].0, "{:#x} overlaps {:#x}", w[0].0, w[1].0);
        }
    }
}
