//! Puts the kernel, the initramfs, the command line, the ACPI tables, the boot parameters and
//! the entry state's tables into guest memory.

use super::kernel::{check_kernel, elf_extent, is_elf};
use super::layout::*;
use super::{params, vcpu, BootInfo, BootProtocol};
use crate::guest::linux::acpi;
use anyhow::{bail, Context};
use linux_loader::loader::{self, BzImage, Elf, KernelLoader, PvhBootCapability};
use std::io::Cursor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

fn load_error(name: &str, e: loader::Error, mem: u64) -> anyhow::Error {
    let text = e.to_string();
    if text.to_lowercase().contains("memory") || text.contains("past") || text.contains("Overflow") {
        anyhow::anyhow!("{name} does not fit in {} MiB of guest memory ({text}); give more with --mem", mem / MIB)
    } else {
        anyhow::anyhow!("{name} cannot be loaded: {text}")
    }
}

/// Loads the kernel, initramfs, command line, ACPI tables and boot parameters into `mem`.
pub fn load(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    vcpus: u32,
    kernel: &[u8],
    kernel_name: &str,
    initrd: &[u8],
    cmdline_text: &str,
) -> anyhow::Result<BootInfo> {
    check_kernel(kernel, kernel_name)?;
    if cmdline_text.len() >= CMDLINE_MAX {
        bail!("the kernel command line is {} bytes; the limit is {}", cmdline_text.len(), CMDLINE_MAX - 1);
    }
    let mut image = Cursor::new(kernel);
    let (protocol, result) = if is_elf(kernel) {
        let end = elf_extent(kernel).unwrap_or(0);
        if end > mem_bytes.min(LOW_RAM_END) {
            bail!(
                "{kernel_name} loads up to {} MiB of guest memory; --mem gives {} MiB",
                end.div_ceil(MIB),
                mem_bytes / MIB
            );
        }
        let r = Elf::load(mem, None, &mut image, Some(GuestAddress(HIMEM_START)))
            .map_err(|e| load_error(kernel_name, e, mem_bytes))?;
        let p = match r.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(_) => BootProtocol::Pvh,
            _ => BootProtocol::Elf64,
        };
        (p, r)
    } else {
        let hdr_init_size = u32::from_le_bytes(kernel[0x260..0x264].try_into().unwrap()) as u64;
        let pref = u64::from_le_bytes(kernel[0x258..0x260].try_into().unwrap());
        let need = pref.max(HIMEM_START) + hdr_init_size;
        if need > mem_bytes.min(LOW_RAM_END) {
            bail!(
                "{kernel_name} needs {} MiB of RAM to decompress itself (pref_address + init_size); --mem gives {} MiB",
                need.div_ceil(MIB),
                mem_bytes / MIB
            );
        }
        let r = BzImage::load(mem, Some(GuestAddress(pref)), &mut image, Some(GuestAddress(HIMEM_START)))
            .map_err(|e| load_error(kernel_name, e, mem_bytes))?;
        (BootProtocol::BzImage, r)
    };
    let kernel_start = result.kernel_load.0;
    let kernel_end = match protocol {
        BootProtocol::BzImage => {
            let init_size = result.setup_header.map_or(0, |h| h.init_size as u64);
            (kernel_start + init_size).max(result.kernel_end)
        }
        _ => result.kernel_end,
    };
    let entry = match (protocol, result.pvh_boot_cap) {
        (BootProtocol::Pvh, PvhBootCapability::PvhEntryPresent(a)) => a.0,
        (BootProtocol::BzImage, _) => kernel_start + 0x200,
        _ => kernel_start,
    };

    // The initramfs goes as high as it can below 3 GiB (and below the kernel's limit).
    let addr_max = result.setup_header.map_or(0x7FFF_FFFF, |h| h.initrd_addr_max as u64).max(0x37FF_FFFF);
    let top = mem_bytes.min(LOW_RAM_END).min(addr_max + 1);
    let initrd_size = initrd.len() as u64;
    let initrd_addr = top.checked_sub(initrd_size).map(|a| a & !0xFFF).unwrap_or(0);
    if initrd_addr < kernel_end || initrd_size == 0 {
        bail!(
            "the kernel ({} MiB) and initramfs ({} MiB) do not fit in --mem {} MiB",
            (kernel_end - kernel_start).div_ceil(MIB),
            initrd_size.div_ceil(MIB),
            mem_bytes / MIB
        );
    }
    mem.write_slice(initrd, GuestAddress(initrd_addr)).context("writing the initramfs")?;
    let cmdline = loader::Cmdline::try_from(cmdline_text, CMDLINE_MAX)
        .map_err(|e| anyhow::anyhow!("kernel command line: {e}"))?;
    loader::load_cmdline(mem, GuestAddress(CMDLINE_ADDR), &cmdline)
        .map_err(|e| anyhow::anyhow!("kernel command line: {e}"))?;
    for (addr, table) in acpi::tables(vcpus) {
        mem.write_slice(&table, GuestAddress(addr)).context("writing the ACPI tables")?;
    }
    let map = e820(mem_bytes);
    match protocol {
        BootProtocol::Pvh => params::write_start_info(mem, &map, initrd_addr, initrd_size)?,
        _ => params::write_boot_params(mem, &map, result.setup_header, initrd_addr, initrd_size, cmdline_text.len())?,
    }
    vcpu::write_entry_tables(mem, protocol)?;
    Ok(BootInfo { protocol, entry, kernel_start, kernel_end, initrd_addr, initrd_size, cmdline: cmdline_text.into() })
}
