//! Which kernel images dirtytrace boots: an x86-64 ELF `vmlinux` or a bzImage with a 64-bit
//! entry.

use anyhow::bail;

const EM_X86_64: u16 = 62;

/// Whether `image` starts like an ELF file.
pub fn is_elf(image: &[u8]) -> bool {
    image.starts_with(b"\x7fELF")
}

/// Whether `image` has a bzImage's `HdrS` boot header.
pub fn is_bzimage(image: &[u8]) -> bool {
    image.get(0x202..0x206) == Some(b"HdrS")
}

/// Checks that `image` is a kernel dirtytrace can boot, with a specific error if not.
pub fn check_kernel(image: &[u8], name: &str) -> anyhow::Result<()> {
    if is_elf(image) {
        if image.len() < 64 {
            bail!("{name}: truncated ELF file");
        }
        if image[4] != 2 {
            bail!("{name}: a 32-bit ELF; dirtytrace boots x86-64 kernels");
        }
        let machine = u16::from_le_bytes([image[18], image[19]]);
        if machine != EM_X86_64 {
            bail!("{name}: an ELF for another architecture (e_machine {machine}); dirtytrace boots x86-64 kernels");
        }
        return Ok(());
    }
    if is_bzimage(image) {
        let setup_sects = image[0x1F1].max(4) as usize;
        let syssize = u32::from_le_bytes(image[0x1F4..0x1F8].try_into().unwrap()) as usize;
        if image.len() < (setup_sects + 1) * 512 + syssize * 16 {
            bail!(
                "{name}: a truncated bzImage ({} bytes, its header promises {})",
                image.len(),
                (setup_sects + 1) * 512 + syssize * 16
            );
        }
        let xloadflags = u16::from_le_bytes([image[0x236], image[0x237]]);
        if xloadflags & 1 == 0 {
            bail!("{name}: this bzImage has no 64-bit entry point (XLF_KERNEL_64)");
        }
        return Ok(());
    }
    bail!("{name} is not a kernel: neither an ELF vmlinux nor a bzImage (no ELF magic, no `HdrS` boot header)")
}

/// The end of an ELF kernel's highest loadable segment, in guest-physical memory.
pub(super) fn elf_extent(image: &[u8]) -> Option<u64> {
    let u16_at = |o: usize| image.get(o..o + 2).map(|b| u16::from_le_bytes(b.try_into().unwrap()));
    let u64_at = |o: usize| image.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()));
    let (phoff, phentsize, phnum) = (u64_at(32)? as usize, u16_at(54)? as usize, u16_at(56)? as usize);
    (0..phnum)
        .filter_map(|i| {
            let ph = phoff + i * phentsize;
            let is_load = image.get(ph..ph + 4)? == [1, 0, 0, 0];
            is_load.then(|| Some(u64_at(ph + 24)? + u64_at(ph + 40)?)).flatten()
        })
        .max()
}
