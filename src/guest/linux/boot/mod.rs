//! Loading a Linux kernel and describing the machine to it, one file per concern: the memory
//! layout and E820 map ([`layout`]), what kernels dirtytrace boots ([`kernel`]), the command
//! line ([`cmdline`](mod@cmdline)), putting the kernel, initramfs and tables in memory
//! ([`loader`]), `boot_params` and PVH `start_info` ([`params`]), and the vCPUs' entry state
//! ([`vcpu`]).

pub mod cmdline;
pub mod kernel;
pub mod layout;
pub mod loader;
mod params;
pub mod vcpu;

pub use cmdline::{cmdline, qemu_cmdline, IDLE_AT_END_ARG};
pub use kernel::{check_kernel, is_bzimage, is_elf};
pub use layout::*;
pub use loader::load;
pub use vcpu::setup_vcpu;

/// How the kernel is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BootProtocol {
    /// ELF vmlinux with a PVH note: 32-bit protected-mode entry with `hvm_start_info`.
    Pvh,
    /// bzImage: 64-bit entry at load address + 0x200 with boot_params.
    BzImage,
    /// ELF vmlinux without PVH: 64-bit entry at its ELF entry with boot_params.
    Elf64,
}

/// Where the kernel and initramfs went, and how the kernel is entered.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BootInfo {
    /// The boot protocol.
    pub protocol: BootProtocol,
    /// The entry point.
    pub entry: u64,
    /// The kernel's first byte in guest memory.
    pub kernel_start: u64,
    /// Just past its last byte.
    pub kernel_end: u64,
    /// The initramfs's address.
    pub initrd_addr: u64,
    /// Its size.
    pub initrd_size: u64,
    /// The command line.
    pub cmdline: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_has_a_hole_for_the_apics() {
        assert_eq!(
            e820(512 * MIB),
            vec![(0, EBDA_START, 1), (EBDA_START, HIMEM_START - EBDA_START, 2), (HIMEM_START, 511 * MIB, 1)]
        );
        let big = e820(6 << 30);
        assert_eq!(big[2], (HIMEM_START, LOW_RAM_END - HIMEM_START, 1));
        assert_eq!(big[3], (HIGH_RAM_START, 3 << 30, 1));
        assert_eq!(ram_ranges(6 << 30), vec![(0, 3 << 30), (4 << 30, 3 << 30)]);
    }

    #[test]
    fn kernel_checks() {
        let err = |b: &[u8]| check_kernel(b, "k").unwrap_err().to_string();
        assert!(err(&[0x55; 8192]).contains("not a kernel"));
        let mut arm = vec![0u8; 128];
        arm[..4].copy_from_slice(b"\x7fELF");
        arm[4] = 2;
        arm[18] = 183; // EM_AARCH64
        assert!(err(&arm).contains("another architecture"));
        let mut bz = vec![0u8; 4096];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x1F1] = 4;
        bz[0x1F4..0x1F8].copy_from_slice(&0x10000u32.to_le_bytes());
        assert!(err(&bz).contains("truncated bzImage"));
    }
}
