//! What the kernel reads about the machine at its entry: `boot_params` (the zero page) for the
//! 64-bit boot protocol, `hvm_start_info` for PVH.

use super::layout::*;
use crate::guest::linux::acpi;
use anyhow::bail;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use vm_memory::{GuestAddress, GuestMemoryMmap};

const XEN_HVM_START_MAGIC: u32 = 0x336E_C578;

pub(super) fn write_start_info(
    mem: &GuestMemoryMmap,
    map: &[(u64, u64, u32)],
    initrd: u64,
    initrd_size: u64,
) -> anyhow::Result<()> {
    let info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        nr_modules: 1,
        modlist_paddr: PVH_MODLIST_ADDR,
        cmdline_paddr: CMDLINE_ADDR,
        rsdp_paddr: acpi::RSDP_ADDR,
        memmap_paddr: PVH_MEMMAP_ADDR,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    let mut params = BootParams::new(&info, GuestAddress(PVH_INFO_ADDR));
    let entries: Vec<hvm_memmap_table_entry> =
        map.iter().map(|&(addr, size, type_)| hvm_memmap_table_entry { addr, size, type_, reserved: 0 }).collect();
    params.set_sections(&entries, GuestAddress(PVH_MEMMAP_ADDR));
    params.set_modules(
        &[hvm_modlist_entry { paddr: initrd, size: initrd_size, ..Default::default() }],
        GuestAddress(PVH_MODLIST_ADDR),
    );
    PvhBootConfigurator::write_bootparams(&params, mem).map_err(|e| anyhow::anyhow!("writing PVH start_info: {e}"))
}

pub(super) fn write_boot_params(
    mem: &GuestMemoryMmap,
    map: &[(u64, u64, u32)],
    header: Option<setup_header>,
    initrd: u64,
    initrd_size: u64,
    cmdline_len: usize,
) -> anyhow::Result<()> {
    let mut bp = boot_params::default();
    match header {
        Some(h) => bp.hdr = h,
        None => {
            // An ELF vmlinux has no setup header: describe a minimal 2.06 one.
            bp.hdr.boot_flag = 0xAA55;
            bp.hdr.header = 0x5372_6448;
            bp.hdr.version = 0x0206;
            bp.hdr.kernel_alignment = 0x0100_0000;
        }
    }
    bp.hdr.type_of_loader = 0xFF;
    bp.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    bp.hdr.cmdline_size = cmdline_len as u32 + 1;
    bp.hdr.ramdisk_image = initrd as u32;
    bp.hdr.ramdisk_size = initrd_size as u32;
    bp.acpi_rsdp_addr = acpi::RSDP_ADDR;
    if map.len() > bp.e820_table.len() {
        bail!("too many E820 entries");
    }
    for (i, &(addr, size, type_)) in map.iter().enumerate() {
        bp.e820_table[i] = boot_e820_entry { addr, size, r#type: type_ };
    }
    bp.e820_entries = map.len() as u8;
    let params = BootParams::new(&bp, GuestAddress(ZERO_PAGE_ADDR));
    LinuxBootConfigurator::write_bootparams(&params, mem).map_err(|e| anyhow::anyhow!("writing boot_params: {e}"))
}
