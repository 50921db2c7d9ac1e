//! Loading a Linux kernel and describing the machine to it: memory layout, E820 map,
//! boot_params (bzImage / 64-bit entry) or PVH start_info, command line, initramfs, ACPI, and
//! the vCPUs' entry state.

use super::acpi;
use crate::vmm::x86::flat_segment;
use anyhow::{bail, Context};
use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, Msrs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use linux_loader::loader::{self, BzImage, Elf, KernelLoader, PvhBootCapability};
use std::io::Cursor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

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
const XEN_HVM_START_MAGIC: u32 = 0x336E_C578;
const EM_X86_64: u16 = 62;

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
fn elf_extent(image: &[u8]) -> Option<u64> {
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

/// The kernel command line dirtytrace passes, plus the user's extra.
pub fn cmdline(extra: Option<&str>) -> String {
    join_args(&[COMMON_ARGS, OWN_MACHINE_ARGS], extra)
}

/// Kernel arguments for every machine dirtytrace boots.
const COMMON_ARGS: &str = "console=ttyS0 reboot=k panic=1 nokaslr tsc=reliable no_timer_check rdinit=/init";
/// Kernel arguments for the own VMM's machine alone: early serial output, no PCI bus and a
/// minimal i8042.
const OWN_MACHINE_ARGS: &str = "earlyprintk=serial,ttyS0 pci=off i8042.noaux i8042.nomux i8042.dumbkbd";

/// The kernel command line under the QEMU engine's `pc` machine (which has PCI and a full i8042).
pub fn qemu_cmdline(extra: Option<&str>) -> String {
    join_args(&[COMMON_ARGS], extra)
}

fn join_args(base: &[&str], extra: Option<&str>) -> String {
    let mut c = base.join(" ");
    if let Some(e) = extra.filter(|e| !e.trim().is_empty()) {
        c.push(' ');
        c.push_str(e.trim());
    }
    c
}

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
        BootProtocol::Pvh => write_start_info(mem, &map, initrd_addr, initrd_size)?,
        _ => write_boot_params(mem, &map, result.setup_header, initrd_addr, initrd_size, cmdline_text.len())?,
    }
    if protocol != BootProtocol::Pvh {
        write_page_tables(mem)?;
    }
    write_gdt(mem, protocol)?;
    Ok(BootInfo { protocol, entry, kernel_start, kernel_end, initrd_addr, initrd_size, cmdline: cmdline_text.into() })
}

fn write_start_info(
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

fn write_boot_params(
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

/// Identity map of the first GiB with 2 MiB pages, for the 64-bit entry.
fn write_page_tables(mem: &GuestMemoryMmap) -> anyhow::Result<()> {
    mem.write_obj(PDPT_ADDR | 0x03, GuestAddress(PML4_ADDR))?;
    mem.write_obj(PD_ADDR | 0x03, GuestAddress(PDPT_ADDR))?;
    let pd: Vec<u8> = (0..512u64).flat_map(|i| ((i << 21) | 0x83).to_le_bytes()).collect();
    mem.write_slice(&pd, GuestAddress(PD_ADDR))?;
    Ok(())
}

/// The boot GDT's code segment.
pub const CODE_SELECTOR: u16 = 0x08;
/// The boot GDT's data segment.
pub const DATA_SELECTOR: u16 = 0x10;

fn gdt(protocol: BootProtocol) -> [u64; 4] {
    let code = if protocol == BootProtocol::Pvh { 0x00CF_9B00_0000_FFFF } else { 0x00AF_9B00_0000_FFFF };
    [0, code, 0x00CF_9300_0000_FFFF, 0x008F_8B00_0000_FFFF]
}

fn write_gdt(mem: &GuestMemoryMmap, protocol: BootProtocol) -> anyhow::Result<()> {
    let bytes: Vec<u8> = gdt(protocol).iter().flat_map(|d| d.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(GDT_ADDR))?;
    Ok(())
}

/// Registers, segments, CPUID, MSRs, FPU and LAPIC of one vCPU. vCPU 0 starts at the entry;
/// the others wait in KVM for the kernel's INIT/SIPI.
pub fn setup_vcpu(kvm: &Kvm, fd: &VcpuFd, index: u32, vcpus: u32, boot: &BootInfo) -> anyhow::Result<()> {
    let mut cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).context("KVM_GET_SUPPORTED_CPUID")?;
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_FFFF) | (index << 24) | (vcpus.min(255) << 16);
                e.ecx |= 1 << 31; // running under a hypervisor
            }
            0xB | 0x1F => e.edx = index,
            _ => {}
        }
    }
    fd.set_cpuid2(&cpuid).context("KVM_SET_CPUID2")?;
    let msr = |index: u32, data: u64| kvm_msr_entry { index, data, ..Default::default() };
    let msrs = Msrs::from_entries(&[
        msr(0x174, 0),             // SYSENTER_CS
        msr(0x175, 0),             // SYSENTER_ESP
        msr(0x176, 0),             // SYSENTER_EIP
        msr(0xC000_0081, 0),       // STAR
        msr(0xC000_0082, 0),       // LSTAR
        msr(0xC000_0084, 0),       // SYSCALL_MASK
        msr(0xC000_0102, 0),       // KERNEL_GS_BASE
        msr(0x10, 0),              // TSC
        msr(0x1A0, 1),             // MISC_ENABLE: fast strings
        msr(0x2FF, (1 << 11) | 6), // MTRR default type: enabled, write-back
    ])
    .map_err(|e| anyhow::anyhow!("MSR list: {e:?}"))?;
    fd.set_msrs(&msrs).context("KVM_SET_MSRS")?;
    fd.set_fpu(&kvm_fpu { fcw: 0x37F, mxcsr: 0x1F80, ..Default::default() }).context("KVM_SET_FPU")?;
    let mut lapic = fd.get_lapic().context("KVM_GET_LAPIC")?;
    let set_lvt = |lapic: &mut kvm_bindings::kvm_lapic_state, off: usize, mode: u32| {
        let bytes: [u8; 4] = lapic.regs[off..off + 4].iter().map(|&b| b as u8).collect::<Vec<_>>().try_into().unwrap();
        let v = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
        for (i, b) in v.to_le_bytes().iter().enumerate() {
            lapic.regs[off + i] = *b as _;
        }
    };
    set_lvt(&mut lapic, 0x350, 7); // LINT0: ExtINT
    set_lvt(&mut lapic, 0x360, 4); // LINT1: NMI
    fd.set_lapic(&lapic).context("KVM_SET_LAPIC")?;
    if index != 0 {
        return Ok(());
    }
    let mut s = fd.get_sregs().context("KVM_GET_SREGS")?;
    let long = boot.protocol != BootProtocol::Pvh;
    s.cs = flat_segment(CODE_SELECTOR, 0xB, 0, long);
    let data = flat_segment(DATA_SELECTOR, 0x3, 0, false);
    (s.ds, s.es, s.fs, s.gs, s.ss) = (data, data, data, data, data);
    s.gdt.base = GDT_ADDR;
    s.gdt.limit = (gdt(boot.protocol).len() * 8 - 1) as u16;
    let mut regs = kvm_regs { rip: boot.entry, rflags: 0x2, ..Default::default() };
    if long {
        s.cr0 = 0x8000_0011; // PG | ET | PE
        s.cr3 = PML4_ADDR;
        s.cr4 = 0x20; // PAE
        s.efer = 0x500; // LME | LMA
        regs.rsi = ZERO_PAGE_ADDR;
        regs.rsp = BOOT_STACK;
        regs.rbp = BOOT_STACK;
    } else {
        s.cr0 = 0x11; // ET | PE, paging off
        s.cr4 = 0;
        s.efer = 0;
        regs.rbx = PVH_INFO_ADDR;
    }
    fd.set_sregs(&s).context("KVM_SET_SREGS")?;
    fd.set_regs(&regs).context("KVM_SET_REGS")?;
    Ok(())
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
