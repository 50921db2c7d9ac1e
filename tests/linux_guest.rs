//! The Linux guest, verified as far as this machine's KVM allows: the initramfs entry by
//! entry, boot_params / start_info / E820 / ACPI field by field, the loader's errors, tiny
//! test kernels that exercise the console markers, exit status, panics and triple faults,
//! and an end-to-end boot of Debian's cloud kernel from the kit (`.ci/run` fetches it).

mod common;

use common::*;
use dirtytrace::engine::EngineChoice;
use dirtytrace::guest::linux::{acpi, boot, initramfs, kit};
use dirtytrace::record::{self, RecordOptions};
use dirtytrace::trace::{EndReason, Trace, TraceStatus};
use dirtytrace::units::{HumanDuration, HumanSize};
use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MIB: u64 = 1 << 20;

/// The kit `.ci/run` fetched; these tests fail, not skip, without it.
fn kit_file(name: &str) -> PathBuf {
    let p = kit::kit_dir().join(name);
    assert!(p.exists(), "{} is missing: run `dirtytrace kit fetch` (.ci/run does)", p.display());
    p
}

#[test]
fn initramfs_reads_back_entry_by_entry() {
    let dir = Scratch::new("initramfs");
    let script = write(&dir, "work.sh", "#!/bin/sh\necho hi\n");
    let extra = write(&dir, "bench.bin", "BENCH");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&extra, std::fs::Permissions::from_mode(0o750)).unwrap();
    let extras = vec![format!("{}:/opt/tools/bench", extra.display())];
    let cache = dir.join("cache");
    let built = initramfs::build(&fake_busybox(), &script, &extras, Some(&cache)).unwrap();
    assert!(!built.cached);
    let entries = initramfs::read_back(&built.bytes).unwrap();
    let get = |name: &str| entries.iter().find(|e| e.0 == name).unwrap_or_else(|| panic!("no {name} in {entries:?}"));
    assert_eq!(get("bin/busybox").2, std::fs::read("/bin/true").unwrap());
    assert_eq!(get("bin/busybox").1, 0o100755);
    assert_eq!(get("bin/sh"), &("bin/sh".to_string(), 0o120777, b"busybox".to_vec()));
    assert_eq!(get("init").2, initramfs::INIT.as_bytes());
    assert_eq!(get("init").1, 0o100755);
    assert_eq!(get("workload.sh").2, b"#!/bin/sh\necho hi\n");
    assert_eq!(get("bin/dt-phase").2, initramfs::DT_PHASE.as_bytes());
    assert_eq!(get("bin/dt-mark").2, initramfs::DT_MARK.as_bytes());
    assert_eq!(get("dev/console").1, 0o020600);
    for d in ["proc", "sys", "dev", "tmp", "opt", "opt/tools"] {
        assert_eq!(get(d).1, 0o040755, "{d}");
    }
    assert_eq!(get("opt/tools/bench"), &("opt/tools/bench".to_string(), 0o100750, b"BENCH".to_vec()));
    // Directories come before what they hold.
    let pos = |n: &str| entries.iter().position(|e| e.0 == n).unwrap();
    assert!(pos("opt") < pos("opt/tools") && pos("opt/tools") < pos("opt/tools/bench"));
    assert!(initramfs::INIT.contains("/workload.sh") && initramfs::INIT.contains("reboot -f"));
    // Cached by content: the same inputs come back from the cache, a changed script does not.
    let again = initramfs::build(&fake_busybox(), &script, &extras, Some(&cache)).unwrap();
    assert!(again.cached);
    assert_eq!(again.bytes, built.bytes);
    write(&dir, "work.sh", "#!/bin/sh\necho changed\n");
    assert!(!initramfs::build(&fake_busybox(), &script, &extras, Some(&cache)).unwrap().cached);
    // A missing --file and bad guest paths are clear errors.
    let missing = vec!["/no/such/file:/x".to_string()];
    let e = initramfs::build(&fake_busybox(), &script, &missing, None).err().unwrap().to_string();
    assert!(e.contains("/no/such/file"), "{e}");
    assert!(initramfs::parse_extra("a:relative").is_err());
    assert!(initramfs::parse_extra("nocolon").is_err());
}

fn memory(bytes: u64) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(
        &boot::ram_ranges(bytes).iter().map(|&(a, s)| (GuestAddress(a), s as usize)).collect::<Vec<_>>(),
    )
    .unwrap()
}

fn cstring_at(mem: &GuestMemoryMmap, addr: u64) -> String {
    let mut buf = vec![0u8; boot::CMDLINE_MAX];
    mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    String::from_utf8(buf[..buf.iter().position(|&b| b == 0).unwrap()].to_vec()).unwrap()
}

fn check_acpi(mem: &GuestMemoryMmap, vcpus: u32) {
    for (addr, table) in acpi::tables(vcpus) {
        let mut buf = vec![0u8; table.len()];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        assert_eq!(buf, table);
        assert_eq!(acpi::checksum(if addr == acpi::RSDP_ADDR { &buf[..20] } else { &buf }), 0);
    }
    let mut madt = vec![0u8; 44 + vcpus as usize * 8 + 12];
    mem.read_slice(&mut madt, GuestAddress(acpi::MADT_ADDR)).unwrap();
    assert_eq!(madt[44 + (vcpus as usize - 1) * 8 + 3], vcpus as u8 - 1, "last CPU's APIC id");
}

#[test]
fn bzimage_boot_params_field_by_field() {
    let kernel = std::fs::read(kit_file("bzImage")).unwrap();
    let mem_bytes = 512 * MIB;
    let mem = memory(mem_bytes);
    let initrd = vec![0xA5u8; 3 * 4096 + 17];
    let cmdline = boot::cmdline(Some("loglevel=8"));
    let info = boot::load(&mem, mem_bytes, 2, &kernel, "bzImage", &initrd, &cmdline).unwrap();
    assert_eq!(info.protocol, boot::BootProtocol::BzImage);
    assert_eq!(info.kernel_start, 0x100_0000, "loaded at pref_address");
    assert_eq!(info.entry, 0x100_0200, "64-bit entry is load address + 0x200");
    let bp: boot_params = mem.read_obj(GuestAddress(boot::ZERO_PAGE_ADDR)).unwrap();
    let hdr = bp.hdr;
    assert_eq!({ hdr.boot_flag }, 0xAA55);
    assert_eq!({ hdr.header }, 0x5372_6448);
    assert_eq!({ hdr.type_of_loader }, 0xFF);
    assert_eq!({ hdr.cmd_line_ptr }, boot::CMDLINE_ADDR as u32);
    assert_eq!({ hdr.ramdisk_image } as u64, info.initrd_addr);
    assert_eq!({ hdr.ramdisk_size } as usize, initrd.len());
    assert_eq!({ bp.acpi_rsdp_addr }, acpi::RSDP_ADDR);
    let map = boot::e820(mem_bytes);
    assert_eq!(bp.e820_entries as usize, map.len());
    for (i, &(addr, size, type_)) in map.iter().enumerate() {
        let e = bp.e820_table[i];
        assert_eq!(({ e.addr }, { e.size }, { e.r#type }), (addr, size, type_), "e820 entry {i}");
    }
    assert_eq!(map[2], (0x10_0000, mem_bytes - 0x10_0000, 1));
    assert_eq!(cstring_at(&mem, boot::CMDLINE_ADDR), cmdline);
    assert!(cmdline.contains("reboot=k") && cmdline.contains("panic=1") && cmdline.ends_with("loglevel=8"));
    let mut back = vec![0u8; initrd.len()];
    mem.read_slice(&mut back, GuestAddress(info.initrd_addr)).unwrap();
    assert_eq!(back, initrd);
    assert_eq!(info.initrd_addr % 4096, 0);
    assert!(info.initrd_addr >= info.kernel_end && info.initrd_addr + initrd.len() as u64 <= mem_bytes);
    check_acpi(&mem, 2);
}

#[test]
fn pvh_start_info_field_by_field() {
    let kernel = std::fs::read(kit_file("vmlinux")).unwrap();
    let mem_bytes = 5 << 30; // above 3 GiB, so the map has a hole and two RAM ranges
    let mem = memory(mem_bytes);
    let initrd = vec![0x5Au8; 8192];
    let cmdline = boot::cmdline(None);
    let info = boot::load(&mem, mem_bytes, 4, &kernel, "vmlinux", &initrd, &cmdline).unwrap();
    assert_eq!(info.protocol, boot::BootProtocol::Pvh);
    let si: hvm_start_info = mem.read_obj(GuestAddress(boot::PVH_INFO_ADDR)).unwrap();
    assert_eq!(si.magic, 0x336E_C578);
    assert_eq!(si.version, 1);
    assert_eq!(si.nr_modules, 1);
    assert_eq!(si.cmdline_paddr, boot::CMDLINE_ADDR);
    assert_eq!(si.rsdp_paddr, acpi::RSDP_ADDR);
    let module: hvm_modlist_entry = mem.read_obj(GuestAddress(si.modlist_paddr)).unwrap();
    assert_eq!((module.paddr, module.size), (info.initrd_addr, initrd.len() as u64));
    let map = boot::e820(mem_bytes);
    assert_eq!(si.memmap_entries as usize, map.len());
    for (i, &(addr, size, type_)) in map.iter().enumerate() {
        let e: hvm_memmap_table_entry = mem.read_obj(GuestAddress(si.memmap_paddr + i as u64 * 24)).unwrap();
        assert_eq!((e.addr, e.size, e.type_), (addr, size, type_), "memmap entry {i}");
    }
    assert_eq!(map.last().unwrap(), &(4 << 30, 2 << 30, 1));
    assert!(info.initrd_addr + 8192 <= 3 << 30, "the initramfs stays below the MMIO hole");
    assert_eq!(cstring_at(&mem, boot::CMDLINE_ADDR), cmdline);
    // The PVH entry is the note's address, inside the loaded kernel, not the ELF entry.
    assert!(info.entry >= info.kernel_start && info.entry < info.kernel_end);
    check_acpi(&mem, 4);
}

#[test]
fn loader_errors_are_specific() {
    let mem = memory(256 * MIB);
    let load = |k: &[u8], mem_bytes: u64| {
        boot::load(&mem, mem_bytes, 1, k, "K", &[1; 4096], "console=ttyS0").unwrap_err().to_string()
    };
    let random: Vec<u8> = (0..100_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    assert!(load(&random, 256 * MIB).contains("not a kernel"));
    let bz = std::fs::read(kit_file("bzImage")).unwrap();
    assert!(load(&bz[..bz.len() / 2], 256 * MIB).contains("truncated bzImage"));
    let mut arm = std::fs::read(kit_file("vmlinux")).unwrap()[..4096].to_vec();
    arm[18..20].copy_from_slice(&183u16.to_le_bytes());
    assert!(load(&arm, 256 * MIB).contains("another architecture"));
    // Too big for the memory: Debian's kernel decompresses into ~68 MiB.
    let small = memory(48 * MIB);
    let e = boot::load(&small, 48 * MIB, 1, &bz, "bzImage", &[1; 4096], "console=ttyS0").unwrap_err().to_string();
    assert!(e.contains("--mem"), "{e}");
    let vmlinux = std::fs::read(kit_file("vmlinux")).unwrap();
    let e = boot::load(&small, 48 * MIB, 1, &vmlinux, "vmlinux", &[1; 4096], "console=ttyS0").unwrap_err().to_string();
    assert!(e.contains("--mem"), "{e}");
}

/// A minimal x86-64 ELF "kernel" without a PVH note: it enters in 64-bit mode at 1 MiB.
fn tiny_kernel(code: &[u8]) -> Vec<u8> {
    let mut elf = vec![0u8; 0x1000];
    elf[..16].copy_from_slice(&[0x7F, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let put = |b: &mut Vec<u8>, off: usize, v: &[u8]| b[off..off + v.len()].copy_from_slice(v);
    put(&mut elf, 16, &2u16.to_le_bytes()); // ET_EXEC
    put(&mut elf, 18, &62u16.to_le_bytes()); // EM_X86_64
    put(&mut elf, 20, &1u32.to_le_bytes());
    put(&mut elf, 24, &0x10_0000u64.to_le_bytes()); // entry
    put(&mut elf, 32, &64u64.to_le_bytes()); // phoff
    put(&mut elf, 52, &64u16.to_le_bytes()); // ehsize
    put(&mut elf, 54, &56u16.to_le_bytes()); // phentsize
    put(&mut elf, 56, &1u16.to_le_bytes()); // phnum
    put(&mut elf, 58, &64u16.to_le_bytes()); // shentsize
    let ph = 64;
    put(&mut elf, ph, &1u32.to_le_bytes()); // PT_LOAD
    put(&mut elf, ph + 4, &5u32.to_le_bytes()); // R+X
    put(&mut elf, ph + 8, &0x1000u64.to_le_bytes()); // offset
    put(&mut elf, ph + 16, &0x10_0000u64.to_le_bytes()); // vaddr
    put(&mut elf, ph + 24, &0x10_0000u64.to_le_bytes()); // paddr
    put(&mut elf, ph + 32, &(code.len() as u64).to_le_bytes());
    put(&mut elf, ph + 40, &(code.len() as u64).to_le_bytes());
    put(&mut elf, ph + 48, &0x1000u64.to_le_bytes());
    elf.extend_from_slice(code);
    elf
}

/// Code that prints `text` on the UART, then resets the machine through the i8042.
fn print_then_reset(text: &str) -> Vec<u8> {
    use iced_x86::code_asm::*;
    let mut a = CodeAssembler::new(64).unwrap();
    a.mov(dx, 0x3F8u32).unwrap();
    for b in text.bytes() {
        a.mov(al, b as u32).unwrap();
        a.out(dx, al).unwrap();
    }
    a.mov(al, 0xFEu32).unwrap();
    a.out(0x64, al).unwrap();
    a.hlt().unwrap();
    a.assemble(0x10_0000).unwrap()
}

/// Code that prints `text` on the UART with one `rep outsb` (a string I/O instruction, which
/// KVM may hand over several bytes at a time), then resets the machine.
fn print_with_rep_outsb_then_reset(text: &str) -> Vec<u8> {
    use iced_x86::code_asm::*;
    let mut a = CodeAssembler::new(64).unwrap();
    let mut data = a.create_label();
    a.lea(rsi, ptr(data)).unwrap();
    a.mov(rcx, text.len() as u64).unwrap();
    a.mov(dx, 0x3F8u32).unwrap();
    a.rep().outsb().unwrap();
    a.mov(al, 0xFEu32).unwrap();
    a.out(0x64, al).unwrap();
    a.hlt().unwrap();
    a.set_label(&mut data).unwrap();
    a.db(text.as_bytes()).unwrap();
    a.assemble(0x10_0000).unwrap()
}

fn record_tiny(name: &str, code: &[u8]) -> (anyhow::Result<record::RecordSummary>, InScratch) {
    let dir = Scratch::new(name);
    let kernel = dir.join("tiny.elf");
    std::fs::write(&kernel, tiny_kernel(code)).unwrap();
    let script = write(&dir, "w.sh", "#!/bin/sh\ntrue\n");
    let out = dir.join("trace");
    let mut opts = RecordOptions::new(out.clone());
    opts.linux.initramfs.busybox = Some(fake_busybox());
    opts.workload = Some(script);
    opts.settings.mem = Some(HumanSize(128 * MIB));
    opts.settings.interval = HumanDuration(Duration::from_millis(20));
    opts.settings.duration = Some(HumanDuration(Duration::from_secs(20)));
    opts.linux.boot.kernel = Some(kernel);
    opts.settings.engine = EngineChoice::Kvm;
    (record::record(&opts, Arc::new(AtomicBool::new(false)), None), InScratch::new(dir, out))
}

#[test]
fn markers_phases_and_exit_status_through_the_console() {
    let _g = kvm_lock();
    let text = "booting\nDIRTYTRACE:workload_start:\nDIRTYTRACE:phase:alpha\nwork\nDIRTYTRACE:workload_end:3\n";
    let (summary, out) = record_tiny("markers", &print_then_reset(text));
    let summary = summary.unwrap();
    assert_eq!(summary.guest_exit_status, Some(3));
    assert_eq!(summary.end_reason, Some(EndReason::GuestPowerOff));
    assert_eq!(summary.status, TraceStatus::Complete);
    let trace = Trace::open(&out).unwrap();
    assert_eq!(std::fs::read_to_string(out.join("console.log")).unwrap(), text);
    let log = trace.guest_log().unwrap();
    let kinds: Vec<(&str, &str)> = log.iter().map(|e| (e.kind.as_str(), e.name.as_str())).collect();
    assert_eq!(
        kinds,
        [
            ("workload_start", "workload_start"),
            ("phase", "workload"),
            ("phase", "alpha"),
            ("workload_end", "workload_end"),
            ("phase", "shutdown")
        ]
    );
    assert_eq!(log[3].detail["status"], 3);
    assert_eq!(trace.manifest.guest["kind"], "linux");
    assert_eq!(trace.manifest.guest["boot"]["protocol"], "elf64");
    let rows = trace.rates().unwrap();
    assert!(!rows.is_empty());
    assert_eq!(rows.last().unwrap().phase, "shutdown");
    // The process exit status is the workload's.
    let dir = Scratch::new("markers-cli");
    let kernel = dir.join("tiny.elf");
    std::fs::write(&kernel, tiny_kernel(&print_then_reset(text))).unwrap();
    let script = write(&dir, "w.sh", "true\n");
    let status = std::process::Command::new(bin())
        .args([
            "record",
            "--busybox",
            fake_busybox().to_str().unwrap(),
            "--engine",
            "kvm",
            "--mem",
            "128MiB",
            "--kernel",
            kernel.to_str().unwrap(),
            "--workload",
            script.to_str().unwrap(),
        ])
        .arg("--output")
        .arg(dir.join("t"))
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(3));
}

/// Every byte of a string `outs` reaches the console, however many bytes one exit carries.
#[test]
fn rep_outsb_prints_every_byte() {
    let _g = kvm_lock();
    let text = "DIRTYTRACE:workload_start:\nfrom rep outsb, every byte\nDIRTYTRACE:workload_end:0\n";
    let (summary, out) = record_tiny("rep-outsb", &print_with_rep_outsb_then_reset(text));
    assert_eq!(summary.unwrap().guest_exit_status, Some(0));
    assert_eq!(std::fs::read_to_string(out.join("console.log")).unwrap(), text);
}

#[test]
fn guest_panic_and_triple_fault_keep_the_trace() {
    let _g = kvm_lock();
    let panic_text = "[ 1.0] Kernel panic - not syncing: VFS: Unable to mount root fs\n";
    let (summary, out) = record_tiny("panic", &print_then_reset(panic_text));
    let summary = summary.unwrap();
    assert_eq!(summary.status, TraceStatus::GuestFault);
    assert!(summary.error.as_deref().unwrap().contains("Kernel panic - not syncing: VFS"), "{summary:?}");
    assert_eq!(std::fs::read_to_string(out.join("console.log")).unwrap(), panic_text);
    let trace = Trace::open(&out).unwrap();
    assert!(trace.guest_log().unwrap().iter().any(|e| e.kind == "panic"));

    // ud2 with no IDT: #UD, then #DF, then a triple fault.
    let (summary, out) = record_tiny("triple", &[0x0F, 0x0B]);
    let summary = summary.unwrap();
    assert_eq!(summary.status, TraceStatus::GuestFault);
    let err = summary.error.unwrap();
    assert!(err.contains("KVM_EXIT_SHUTDOWN") && err.contains("rip=0x100000") && err.contains("0f 0b"), "{err}");
    assert_eq!(Trace::open(&out).unwrap().manifest.status, TraceStatus::GuestFault);
}

/// `lock cmpxchg16b` at CPL0: this CI's KVM emulates guest kernel code and cannot emulate it
/// (Debian's kernel dies on it too), so the recording must end with KVM_EXIT_INTERNAL_ERROR,
/// the registers and the instruction bytes; with VT-x/AMD-V the instruction just runs.
#[test]
fn emulation_failure_is_reported_with_registers_and_bytes() {
    let _g = kvm_lock();
    use iced_x86::code_asm::*;
    let mut a = CodeAssembler::new(64).unwrap();
    a.mov(rdi, 0x20_0000u64).unwrap();
    a.xor(eax, eax).unwrap();
    a.xor(edx, edx).unwrap();
    a.lock().cmpxchg16b(xmmword_ptr(rdi)).unwrap();
    let mut code = a.assemble(0x10_0000).unwrap();
    let cx16_at = code.len() - 5; // lock cmpxchg16b [rdi] is f0 48 0f c7 0f
    code.extend(&print_then_reset("DIRTYTRACE:workload_end:0\n")[..]);
    let (summary, out) = record_tiny("emulation", &code);
    let summary = summary.unwrap();
    let trace = Trace::open(&out).unwrap();
    if hardware_virtualisation() {
        assert_eq!(summary.guest_exit_status, Some(0));
    } else {
        assert_eq!(summary.status, TraceStatus::GuestFault);
        let err = summary.error.unwrap();
        assert!(err.contains("KVM_EXIT_INTERNAL_ERROR") && err.contains("emulation failed"), "{err}");
        assert!(err.contains(&format!("rip={:#x}", 0x10_0000 + cx16_at)), "{err}");
        assert!(err.contains("instruction bytes at rip: f0 48 0f c7 0f"), "{err}");
        assert_eq!(trace.manifest.status, TraceStatus::GuestFault);
        assert!(trace.manifest.error.unwrap().contains("KVM_EXIT_INTERNAL_ERROR"));
    }
}

#[test]
fn no_kit_says_which_command_to_run() {
    let dir = Scratch::new("nokit");
    let script = write(&dir, "w.sh", "true\n");
    let out = std::process::Command::new(bin())
        .env("DIRTYTRACE_CACHE", dir.join("empty-cache"))
        .env_remove("DIRTYTRACE_KERNEL")
        .env_remove("DIRTYTRACE_BUSYBOX")
        .args(["record", "--workload", script.to_str().unwrap(), "--output"])
        .arg(dir.join("t"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("dirtytrace kit fetch") && stderr.contains("--kernel"), "{stderr}");
    assert!(!dir.join("t").exists());
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/linux").join(name)
}

/// Records `opts`; where guest kernel code is emulated, ends the recording (as Ctrl-C would)
/// once `console.log` holds every one of `lines`: how long that takes follows the emulator's
/// speed, which varies with the host and its load. `opts.duration` stays the upper bound.
fn record_until(opts: &RecordOptions, lines: &'static [&'static str]) -> record::RecordSummary {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let watcher = (!hardware_virtualisation()).then(|| {
        let (stop, done, console) = (stop.clone(), done.clone(), opts.output.join("console.log"));
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                let text = std::fs::read_to_string(&console).unwrap_or_default();
                if lines.iter().all(|l| text.contains(l)) {
                    stop.store(true, std::sync::atomic::Ordering::Release);
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    });
    let summary = record::record(opts, stop, None);
    done.store(true, std::sync::atomic::Ordering::Release);
    if let Some(w) = watcher {
        w.join().unwrap();
    }
    summary.unwrap()
}

/// Debian's cloud kernel through PVH. On a host with VT-x/AMD-V the whole workload runs;
/// on this project's CI (nested KVM, emulated CPL0) the kernel prints its banner and early
/// boot (after 14-40 s, with the emulator's speed), and the recording ends there, long before
/// the emulator gives up.
#[test]
fn debian_kernel_boots_and_its_dirty_pages_are_recorded() {
    let _g = kvm_lock();
    kit_file("vmlinux");
    let dir = Scratch::new("debian");
    let out = dir.join("trace");
    let hw = hardware_virtualisation();
    let mut opts = RecordOptions::new(out.clone());
    opts.workload = Some(example("hello.sh"));
    opts.settings.mem = Some(HumanSize(512 * MIB));
    opts.settings.vcpus = Some(2);
    opts.settings.duration = Some(HumanDuration(Duration::from_secs(if hw { 60 } else { 180 })));
    opts.linux.boot.allow_emulated_kernel = true;
    let summary = record_until(
        &opts,
        &[
            "Linux version 6.1",
            "ACPI: Using ACPI (MADT) for SMP configuration information",
            "smpboot: Allowing 2 CPUs",
            "BIOS-e820: [mem 0x0000000000100000-0x000000001fffffff] usable",
        ],
    );
    let console = std::fs::read_to_string(out.join("console.log")).unwrap();
    assert!(console.contains("Linux version 6.1"), "no banner in:\n{console}");
    // The kernel found its second CPU in our MADT, and our E820 map.
    assert!(console.contains("ACPI: Using ACPI (MADT) for SMP configuration information"), "{console}");
    assert!(console.contains("smpboot: Allowing 2 CPUs"), "{console}");
    assert!(console.contains("BIOS-e820: [mem 0x0000000000100000-0x000000001fffffff] usable"), "{console}");
    let trace = Trace::open(&out).unwrap();
    assert_eq!(trace.manifest.guest["boot"]["protocol"], "pvh");
    let rows = trace.rates().unwrap();
    assert!(rows.iter().map(|r| r.dirty_pages).sum::<u64>() > 1000, "booting dirties memory");
    assert_eq!(trace.bitmaps().unwrap().count(), rows.len());
    if hw {
        assert_eq!(summary.guest_exit_status, Some(0));
        let phases: Vec<String> =
            trace.guest_log().unwrap().iter().filter(|e| e.kind == "phase").map(|e| e.name.clone()).collect();
        assert_eq!(phases, ["workload", "fill", "idle", "shutdown"]);
        assert!(console.contains("workload done"));
    } else if summary.status == TraceStatus::Interrupted {
        // Ended once the lines above were there: a valid trace, every interval labelled boot.
        assert_eq!(summary.end_reason, Some(EndReason::Interrupted));
        assert_eq!(rows.len() as u64, trace.manifest.intervals);
        assert!(rows.iter().all(|r| r.phase == "boot"), "boot intervals are labelled boot");
    } else {
        // A faster host may reach the instruction its KVM cannot emulate first.
        assert_eq!(summary.status, TraceStatus::GuestFault);
        assert!(summary.error.as_deref().unwrap_or("").contains("KVM_EXIT_INTERNAL_ERROR"), "{summary:?}");
        assert!(rows.iter().all(|r| r.phase == "boot"));
    }
}

/// The bzImage through the 64-bit boot protocol: its decompressor reads boot_params and the
/// command line (it honours `nokaslr`). Here the decompressor itself is emulated, so the
/// recording ends at that line; with VT-x/AMD-V the workload completes.
#[test]
fn debian_bzimage_reads_our_boot_params() {
    let _g = kvm_lock();
    kit_file("bzImage");
    let dir = Scratch::new("debian-bz");
    let out = dir.join("trace");
    let hw = hardware_virtualisation();
    let mut opts = RecordOptions::new(out.clone());
    opts.workload = Some(example("hello.sh"));
    opts.settings.mem = Some(HumanSize(512 * MIB));
    opts.settings.duration = Some(HumanDuration(Duration::from_secs(if hw { 60 } else { 120 })));
    opts.linux.boot.bzimage = true;
    opts.linux.boot.allow_emulated_kernel = true;
    let summary = record_until(&opts, &["KASLR disabled: 'nokaslr' on cmdline."]);
    let console = std::fs::read_to_string(out.join("console.log")).unwrap();
    assert!(console.contains("KASLR disabled: 'nokaslr' on cmdline."), "{console}");
    let trace = Trace::open(&out).unwrap();
    assert_eq!(trace.manifest.guest["boot"]["protocol"], "bz_image");
    if hw {
        assert_eq!(summary.guest_exit_status, Some(0));
    } else {
        assert_eq!((summary.status, summary.end_reason), (TraceStatus::Interrupted, Some(EndReason::Interrupted)));
        assert_eq!(trace.rates().unwrap().len() as u64, trace.manifest.intervals);
    }
}

/// On a host whose KVM emulates guest kernel code, `record` refuses the kit's kernel at once,
/// says why and names the flag that tries anyway, and leaves no output directory; a kernel of
/// the user's own gets a warning and boots. With VT-x/AMD-V the probe says so.
#[test]
fn record_refuses_the_kit_kernel_where_kernel_code_is_emulated() {
    let _g = kvm_lock();
    kit_file("vmlinux");
    let probe = dirtytrace::guest::probe::run(&dirtytrace::vmm::kvm_device_path()).unwrap();
    if hardware_virtualisation() {
        assert!(probe.kernel_native(), "{probe:?}");
        return;
    }
    assert!(!probe.kernel_native(), "{probe:?}");
    assert!(probe.kernel_mode.instructions_per_s < 50e6, "{probe:?}");
    assert!(probe.user_mode.native, "{probe:?}");
    let dir = Scratch::new("refuse");
    let out = dir.join("trace");
    let t = std::time::Instant::now();
    let o = std::process::Command::new(bin())
        .env_remove("DIRTYTRACE_KERNEL")
        .env_remove("DIRTYTRACE_BUSYBOX")
        .args(["record", "--engine", "kvm", "--workload", example("hello.sh").to_str().unwrap(), "--output"])
        .arg(&out)
        .output()
        .unwrap();
    let elapsed = t.elapsed();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("this host's KVM emulates guest kernel code"), "{stderr}");
    assert!(stderr.contains("pass --allow-emulated-kernel to boot the kit's kernel anyway"), "{stderr}");
    assert!(!out.exists(), "no output directory");
    assert!(elapsed < Duration::from_secs(3), "stops at once, took {elapsed:?}");

    // The user's own kernel: a warning, then the recording (this one exits with status 3).
    let text = "DIRTYTRACE:workload_start:\nDIRTYTRACE:workload_end:3\n";
    let kernel = dir.join("tiny.elf");
    std::fs::write(&kernel, tiny_kernel(&print_then_reset(text))).unwrap();
    let o = std::process::Command::new(bin())
        .args(["record", "--busybox", fake_busybox().to_str().unwrap(), "--engine", "kvm", "--mem", "128MiB"])
        .args(["--kernel", kernel.to_str().unwrap()])
        .args(["--workload", write(&dir, "w.sh", "true\n").to_str().unwrap(), "--output"])
        .arg(dir.join("own"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("warning: this host's KVM emulates guest kernel code")
            && stderr.contains("going on with your kernel"),
        "{stderr}"
    );
    assert!(dir.join("own/manifest.json").exists());
}
