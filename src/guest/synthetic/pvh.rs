//! The synthetic guest under the QEMU engine: a PVH boot image, and the serial-port markers
//! that stand in for the own VMM's ports.
//!
//! QEMU's `-kernel` loads an ELF's `PT_LOAD` segments into guest RAM, and SeaBIOS's PVH option
//! ROM jumps to the entry its Xen note names (type 18, `XEN_ELFNOTE_PHYS32_ENTRY`) in 32-bit
//! protected mode with paging off. The firmware may use memory below 1 MiB, where the guest's
//! GDT and page tables live, so the image stages them at +1 MiB and a small trampoline copies
//! them into place, enters long mode, sets up the idle path (below), writes
//! `DIRTYTRACE:synthetic_ready:` to the serial port and spins on the go word ([`GO_ADDR`]). dirtytrace then pauses QEMU, harvests and discards
//! every page written so far (firmware, loader and trampoline), checks that guest RAM holds
//! the system area exactly as the own VMM would load it, and, once the recording's clock has
//! started, writes [`GO_VALUE`] to the go word and lets QEMU run: the trampoline `iretq`s to
//! the program's first instruction at CPL3 with the entry state the own VMM sets with
//! `KVM_SET_SREGS`/`KVM_SET_REGS`. So the first bitmap begins at the program's first
//! instruction, as under the own VMM; the go word is in the control page, a page of the
//! guest's own (`guest_own_pages`).
//!
//! Idle: TCG cannot sleep a vCPU at CPL3 (`hlt` faults there), so the program idles with
//! `syscall` (`rax`: TSC ticks). The handler, in the trampoline's page at CPL0, programs the
//! PIT's channel 0 for that long (one shot), `sti; hlt`s until its interrupt (IRQ 0, remapped
//! to vector 0x20 by the trampoline, the only one unmasked), and returns with `iretq` and the
//! program's own selectors. Its stack, and the interrupt's, is the top of the control page, so
//! idling writes no page but the guest's own. The trampoline checks once, before it says it is
//! ready, that the timer's interrupt arrives, and fails with a marker rather than hang.

use super::plan::*;
use super::program::{MARK_DONE, MARK_PHASE, SERIAL_PORT};
use super::spec::{WorkloadSpec, PAGE_SIZE};
use crate::events::GuestLog;
use crate::guest::linux::console::{GuestMarkers, MarkerEffect, MARKER_PREFIX};
use crate::qemu::StartGate;
use crate::vmm::x86::gdt::{KERNEL_CODE, USER_CODE, USER_DATA};
use crate::vmm::x86::{msr, CR0_LONG_MODE_USER, CR4_PAE, EFER_LME, EFER_SCE, RFLAGS_IOPL3, RFLAGS_RESERVED};
use anyhow::{bail, ensure};
use iced_x86::code_asm::*;
use std::time::Duration;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// The staged copy of the low system area `[0x1000, 0x20000)` sits this far above it, in the
/// guest's own area above 1 MiB that the firmware leaves alone.
pub const STAGE_OFFSET: u64 = 0x10_0000;
/// The PVH entry: the trampoline's 32-bit code (the staged copy's page 0, which holds nothing).
pub const ENTRY_ADDR: u64 = 0x10_0000;
/// The trampoline's 64-bit code.
const LONG_MODE_ADDR: u64 = ENTRY_ADDR + 0x400;
/// The `syscall` handler that idles (`LSTAR`).
const IDLE_ADDR: u64 = ENTRY_ADDR + 0xA00;
/// The timer interrupt's handler.
const TIMER_ISR_ADDR: u64 = ENTRY_ADDR + 0xC00;
/// The pseudo-descriptor `lgdt` loads.
const GDTR_ADDR: u64 = ENTRY_ADDR + 0xF00;
/// The pseudo-descriptor `lidt` loads.
const IDTR_ADDR: u64 = ENTRY_ADDR + 0xF10;
/// The IDT, in a page of the system area the own VMM leaves empty: vectors 0 to
/// [`TIMER_VECTOR`], only the timer's present (any other would end in a triple fault, a reset).
pub const IDT_ADDR: u64 = 0x5000;
/// The PIT's interrupt (IRQ 0), where the trampoline remaps the PIC to.
const TIMER_VECTOR: u64 = 0x20;
/// The top of the CPL0 stack: the end of the control page (vCPU 63's slot, unused).
const STACK_TOP: u64 = CONTROL_PAGE + 0x1000;
/// Timer interrupts taken, counted by the handler (in the control page).
pub const TICKS_ADDR: u64 = CONTROL_PAGE + 0x810;
/// The PIT's input clock, Hz.
const PIT_HZ: f64 = 1_193_182.0;
/// The `iretq` frame that enters the program: rip, cs, rflags, rsp, ss.
const FRAME_ADDR: u64 = ENTRY_ADDR + 0xF40;
/// The word the trampoline spins on before entering the program: in the control page, in the
/// slot vCPU 32 would use (the QEMU engine runs the synthetic guest on one vCPU).
pub const GO_ADDR: u64 = CONTROL_PAGE + 0x800;
/// What dirtytrace writes to [`GO_ADDR`] to start the program ("DTGO!" and a version).
pub const GO_VALUE: u64 = 0x0001_214F_4754_4400;
/// The marker kind the trampoline writes when it waits for the go word.
pub const MARK_READY: &str = "synthetic_ready";
/// The most RAM the synthetic guest has under QEMU: QEMU's `pc` machine puts RAM beyond this
/// above 4 GiB, and the guest's arena is contiguous.
pub const MAX_MEM_BYTES: u64 = crate::qemu::LOW_RAM_END;
/// The marker kind the trampoline writes when it cannot go on.
pub const MARK_FAILED: &str = "synthetic_failed";
/// The low system area the trampoline copies: GDT, PML4, PDPT, the system page table and the IDT.
const LOW_TABLES: (u64, u64) = (GDT_ADDR, IDT_ADDR + 0x1000);

/// Refuses what the QEMU engine cannot run of this spec: more than one vCPU, or more than
/// 3 GiB.
pub fn check_fits(spec: &WorkloadSpec) -> anyhow::Result<()> {
    if spec.vcpus != 1 {
        bail!(
            "under the QEMU engine the synthetic guest runs on one vCPU (its PVH boot starts only the first), not {}: \
             record it with --vcpus 1, or under the own VMM (--engine kvm, which needs /dev/kvm)",
            spec.vcpus
        );
    }
    if spec.mem_bytes > MAX_MEM_BYTES {
        bail!(
            "under the QEMU engine the synthetic guest has at most 3 GiB of RAM (QEMU's pc machine maps the rest \
             above 4 GiB, and the guest's memory is one range), not {} bytes: record it with --mem 3GiB or less, or \
             under the own VMM (--engine kvm)",
            spec.mem_bytes
        );
    }
    Ok(())
}

/// The host's TSC rate, which the program paces itself with under TCG (its `rdtsc` reads the
/// host's TSC): measured against CLOCK_MONOTONIC over 50 ms. Needs an invariant TSC.
pub fn host_tsc_hz() -> anyhow::Result<f64> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if let Some(flags) = cpuinfo.lines().find(|l| l.starts_with("flags")) {
        ensure!(
            flags.split_whitespace().any(|f| f == "constant_tsc"),
            "this host's TSC does not tick at a constant rate (no constant_tsc in /proc/cpuinfo), and under QEMU \
             the synthetic guest paces itself with it: record it under the own VMM (--engine kvm)"
        );
    }
    let hz = measure_tsc_hz(Duration::from_millis(50));
    ensure!(hz.is_finite() && hz > 1e7, "measuring the host's TSC rate gave {hz} Hz");
    Ok(hz)
}

/// The TSC ticks per second of CLOCK_MONOTONIC over about `span`.
pub fn measure_tsc_hz(span: Duration) -> f64 {
    // A TSC reading and the clock at that moment: the midpoint of the two clock reads that
    // bracket it most tightly, of a few tries.
    fn sample() -> (u64, u64) {
        let mut best = (u64::MAX, 0, 0);
        for _ in 0..32 {
            let a = crate::clock::now_ns();
            // SAFETY: rdtsc reads a counter; it has no memory effects.
            let t = unsafe { core::arch::x86_64::_rdtsc() };
            let b = crate::clock::now_ns();
            if b - a < best.0 {
                best = (b - a, t, a + (b - a) / 2);
            }
        }
        (best.1, best.2)
    }
    let (t0, n0) = sample();
    std::thread::sleep(span);
    let (t1, n1) = sample();
    t1.wrapping_sub(t0) as f64 * 1e9 / n1.saturating_sub(n0).max(1) as f64
}

/// The image QEMU boots, and what dirtytrace checks and writes before the program starts.
pub struct BootImage {
    /// The ELF file.
    pub elf: Vec<u8>,
    /// The go word, and what guest RAM must hold when the trampoline waits on it.
    pub gate: StartGate,
    /// The ELF's segments, kept for [`BootImage::standalone_elf`].
    segments: Vec<(u64, Vec<u8>)>,
}

impl BootImage {
    /// The image of the system area in `system` (loaded as for the own VMM, with the QEMU
    /// variant's code of `code_len` bytes), to which it adds the IDT.
    pub fn build(
        system: &GuestMemoryMmap,
        spec: &WorkloadSpec,
        plan: &GuestPlan,
        code_len: u64,
        tsc_hz: f64,
    ) -> anyhow::Result<BootImage> {
        let mut idt = vec![0u8; (TIMER_VECTOR as usize + 1) * 16];
        idt[TIMER_VECTOR as usize * 16..].copy_from_slice(&interrupt_gate(TIMER_ISR_ADDR));
        system.write_slice(&idt, GuestAddress(IDT_ADDR))?;
        let gib = spec.mem_bytes.div_ceil(1 << 30);
        let pds = (PD_ADDR, PD_ADDR + gib * PAGE_SIZE);
        ensure!(pds.1 + STAGE_OFFSET <= CODE_ADDR, "the page tables of {gib} GiB do not fit the boot image");
        let params = (PARAMS_ADDR, plan.params_addr(spec.vcpus));
        let code = (CODE_ADDR, CODE_ADDR + code_len);
        let read = |(start, end): (u64, u64)| -> anyhow::Result<Vec<u8>> {
            let mut b = vec![0u8; (end - start) as usize];
            system.read_slice(&mut b, GuestAddress(start))?;
            Ok(b)
        };
        let expect = vec![
            (LOW_TABLES.0, read(LOW_TABLES)?),
            (pds.0, read(pds)?),
            (code.0, read(code)?),
            (params.0, read(params)?),
        ];
        let trampoline =
            trampoline(plan.params_addr(0), gib, tsc_hz).map_err(|e| anyhow::anyhow!("assembling: {e}"))?;
        let segments = vec![
            (ENTRY_ADDR, trampoline),
            (LOW_TABLES.0 + STAGE_OFFSET, expect[0].1.clone()),
            (pds.0 + STAGE_OFFSET, expect[1].1.clone()),
            (code.0, expect[2].1.clone()),
            (params.0, expect[3].1.clone()),
        ];
        Ok(BootImage {
            elf: pvh_elf(ENTRY_ADDR, &segments),
            gate: StartGate { go_addr: GO_ADDR, go_value: GO_VALUE, expect },
            segments,
        })
    }

    /// The same image with its go word already set, for a QEMU that dirtytrace does not drive
    /// (a real migration, `examples/qemu_migration/`): the trampoline says it is ready and
    /// enters the program at once. Nothing is harvested or checked, so nothing tells the
    /// firmware's writes from the workload's; the program's `phase` markers on the serial
    /// console say when the workload began.
    pub fn standalone_elf(&self) -> Vec<u8> {
        let mut segments = self.segments.clone();
        segments.push((GO_ADDR, GO_VALUE.to_le_bytes().to_vec()));
        pvh_elf(ENTRY_ADDR, &segments)
    }
}

/// A 64-bit interrupt gate to `handler` in the kernel code segment, DPL 0.
fn interrupt_gate(handler: u64) -> [u8; 16] {
    let mut g = [0u8; 16];
    g[0..2].copy_from_slice(&(handler as u16).to_le_bytes());
    g[2..4].copy_from_slice(&super::GDT.selector(KERNEL_CODE).to_le_bytes());
    g[5] = 0x8E; // present, DPL 0, 64-bit interrupt gate
    g[6..8].copy_from_slice(&((handler >> 16) as u16).to_le_bytes());
    g[8..12].copy_from_slice(&((handler >> 32) as u32).to_le_bytes());
    g
}

/// Writes `text` to the serial port (uses dx and al).
fn serial_text(a: &mut CodeAssembler, text: &str) -> Result<(), IcedError> {
    a.mov(dx, SERIAL_PORT as u32)?;
    for b in text.bytes() {
        a.mov(al, b as u32)?;
        a.out(dx, al)?;
    }
    Ok(())
}

/// Loads the PIT's channel 0 with `count` in mode 0 (one interrupt when it runs out); `count`
/// is in eax (uses al).
fn pit_one_shot(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.mov(esi, eax)?;
    a.mov(al, 0x30u32)?; // channel 0, low then high byte, mode 0, binary
    a.out(0x43u32, al)?;
    a.mov(eax, esi)?;
    a.out(0x40u32, al)?;
    a.shr(eax, 8)?;
    a.out(0x40u32, al)
}

/// The trampoline's page: 32-bit code at the PVH entry, 64-bit code, the idle handler, the
/// timer's interrupt handler, the GDT and IDT pointers and the `iretq` frame. Until the go word
/// is set it writes only the system area it copies and the control page; after that, only the
/// control page (idle stacks).
fn trampoline(params: u64, gib: u64, tsc_hz: f64) -> Result<Vec<u8>, IcedError> {
    let mut page = vec![0u8; (FRAME_ADDR + 40 - ENTRY_ADDR) as usize];
    let at = |addr: u64| (addr - ENTRY_ADDR) as usize;
    let place = |page: &mut Vec<u8>, addr: u64, end: u64, code: Vec<u8>| {
        assert!(addr + code.len() as u64 <= end, "trampoline code at {addr:#x} overlaps what follows it");
        page[at(addr)..at(addr) + code.len()].copy_from_slice(&code);
    };

    // 32-bit protected mode, paging off, flat segments (the PVH boot ABI).
    let mut a = CodeAssembler::new(32)?;
    a.cli()?;
    a.cld()?;
    for (from, to, bytes) in [
        (LOW_TABLES.0 + STAGE_OFFSET, LOW_TABLES.0, LOW_TABLES.1 - LOW_TABLES.0),
        (PD_ADDR + STAGE_OFFSET, PD_ADDR, gib * PAGE_SIZE),
    ] {
        a.mov(esi, from as u32)?;
        a.mov(edi, to as u32)?;
        a.mov(ecx, (bytes / 4) as u32)?;
        a.rep().movsd()?;
    }
    a.lgdt(ptr(GDTR_ADDR))?;
    a.mov(eax, CR4_PAE as u32)?;
    a.mov(cr4, eax)?;
    a.mov(eax, PML4_ADDR as u32)?;
    a.mov(cr3, eax)?;
    a.mov(ecx, msr::EFER)?;
    a.xor(edx, edx)?;
    a.mov(eax, (EFER_LME | EFER_SCE) as u32)?; // SCE for the idle `syscall`
    a.wrmsr()?;
    a.mov(eax, CR0_LONG_MODE_USER as u32)?; // the own VMM's CR0
    a.mov(cr0, eax)?;
    a.jmp_far(super::GDT.selector(KERNEL_CODE), LONG_MODE_ADDR as u32)?;
    place(&mut page, ENTRY_ADDR, LONG_MODE_ADDR, a.assemble(ENTRY_ADDR)?);

    // 64-bit, CPL0: the idle path, then say it is ready, wait for the go word, enter the program.
    let mut a = CodeAssembler::new(64)?;
    a.mov(ax, super::GDT.selector(USER_DATA) as u32)?;
    for seg in [ds, es, fs, gs] {
        a.mov(seg, ax)?;
    }
    a.mov(rsp, STACK_TOP)?;
    a.lidt(ptr(IDTR_ADDR))?;
    for (index, value) in [
        // syscall enters with the kernel's code, and its data next to it
        (msr::STAR, (super::GDT.selector(KERNEL_CODE) as u64) << 32),
        (msr::LSTAR, IDLE_ADDR),
        (msr::SYSCALL_MASK, 0x4700), // IF, TF, DF and NT clear in the handler
    ] {
        a.mov(ecx, index)?;
        a.mov(eax, value as u32)?;
        a.mov(edx, (value >> 32) as u32)?;
        a.wrmsr()?;
    }
    // The PIC: IRQ 0 to TIMER_VECTOR, every other IRQ masked.
    for (port, value) in
        [(0x20u32, 0x11u32), (0x21, TIMER_VECTOR as u32), (0x21, 0x04), (0x21, 0x01), (0x21, 0xFE), (0xA1, 0xFF)]
    {
        a.mov(al, value)?;
        a.out(port, al)?;
    }
    // Does the timer's interrupt arrive? One shot of about 1 ms, waited for up to 50 ms.
    let mut ticked = a.create_label();
    let mut wait = a.create_label();
    a.mov(eax, (PIT_HZ / 1000.0) as u32)?;
    pit_one_shot(&mut a)?;
    a.rdtsc()?;
    a.shl(rdx, 32)?;
    a.or(rax, rdx)?;
    a.mov(rdi, (tsc_hz * 0.05) as u64)?;
    a.add(rdi, rax)?;
    a.sti()?;
    a.set_label(&mut wait)?;
    a.cmp(qword_ptr(TICKS_ADDR), 0)?;
    a.jne(ticked)?;
    a.rdtsc()?;
    a.shl(rdx, 32)?;
    a.or(rax, rdx)?;
    a.cmp(rax, rdi)?;
    a.jb(wait)?;
    a.cli()?;
    serial_text(&mut a, &format!("{MARKER_PREFIX}{MARK_FAILED}:the PIT's interrupt did not reach the vCPU\n"))?;
    a.mov(al, 0xFEu32)?;
    a.out(super::program::RESET_PORT as u32, al)?;
    let mut halt = a.create_label();
    a.set_label(&mut halt)?;
    a.hlt()?;
    a.jmp(halt)?;
    a.set_label(&mut ticked)?;
    a.cli()?;
    serial_text(&mut a, &format!("{MARKER_PREFIX}{MARK_READY}:\n"))?;
    a.mov(rax, GO_VALUE)?;
    let mut go = a.create_label();
    a.set_label(&mut go)?;
    a.pause()?;
    a.cmp(qword_ptr(GO_ADDR), rax)?;
    a.jne(go)?;
    a.mov(rsp, FRAME_ADDR)?;
    // Every register but rip, rflags and rdi zero, as the own VMM leaves them. (A 32-bit xor
    // clears the whole register.)
    for r in [eax, ebx, ecx, edx, esi, ebp, r8d, r9d, r10d, r11d, r12d, r13d, r14d, r15d] {
        a.xor(r, r)?;
    }
    a.mov(rdi, params)?;
    a.iretq()?;
    place(&mut page, LONG_MODE_ADDR, IDLE_ADDR, a.assemble(LONG_MODE_ADDR)?);

    // The idle `syscall`: CPL0, interrupts off, rcx the program's rip, r11 its rflags, rax
    // the TSC ticks to sleep. Clobbers rax, rdx and rsi.
    let mut a = CodeAssembler::new(64)?;
    let mut back = a.create_label();
    let mut fits = a.create_label();
    a.mov(rsp, STACK_TOP)?;
    a.xor(edx, edx)?;
    a.mov(esi, (tsc_hz / PIT_HZ).round().max(1.0) as u32)?;
    a.div(rsi)?;
    a.cmp(rax, 0xFFFF)?;
    a.jbe(fits)?;
    a.mov(eax, 0xFFFFu32)?;
    a.set_label(&mut fits)?;
    a.test(eax, eax)?;
    a.jz(back)?;
    pit_one_shot(&mut a)?;
    // No interrupt between sti and hlt; one already pending wakes the hlt at once.
    a.sti()?;
    a.hlt()?;
    a.cli()?;
    a.set_label(&mut back)?;
    // Back to the program with its own selectors (sysret would load others).
    a.push(super::GDT.selector(USER_DATA) as i32)?;
    a.push(0)?;
    a.push(r11)?;
    a.push(super::GDT.selector(USER_CODE) as i32)?;
    a.push(rcx)?;
    a.iretq()?;
    place(&mut page, IDLE_ADDR, TIMER_ISR_ADDR, a.assemble(IDLE_ADDR)?);

    // The timer's interrupt: acknowledge it at the PIC and count it.
    let mut a = CodeAssembler::new(64)?;
    a.push(rax)?;
    a.mov(al, 0x20u32)?;
    a.out(0x20u32, al)?;
    a.inc(qword_ptr(TICKS_ADDR))?;
    a.pop(rax)?;
    a.iretq()?;
    place(&mut page, TIMER_ISR_ADDR, GDTR_ADDR, a.assemble(TIMER_ISR_ADDR)?);

    let limit = super::GDT.limit();
    page[at(GDTR_ADDR)..at(GDTR_ADDR) + 2].copy_from_slice(&limit.to_le_bytes());
    page[at(GDTR_ADDR) + 2..at(GDTR_ADDR) + 10].copy_from_slice(&GDT_ADDR.to_le_bytes());
    let limit = ((TIMER_VECTOR + 1) * 16 - 1) as u16;
    page[at(IDTR_ADDR)..at(IDTR_ADDR) + 2].copy_from_slice(&limit.to_le_bytes());
    page[at(IDTR_ADDR) + 2..at(IDTR_ADDR) + 10].copy_from_slice(&IDT_ADDR.to_le_bytes());
    // The own VMM's entry state: rip, user code (CPL3), rflags with IOPL 3 and IF 0, rsp 0, user data.
    let (user_cs, user_ss) = (super::GDT.selector(USER_CODE) as u64, super::GDT.selector(USER_DATA) as u64);
    let frame: [u64; 5] = [CODE_ADDR, user_cs, RFLAGS_IOPL3 | RFLAGS_RESERVED, 0, user_ss];
    for (i, v) in frame.iter().enumerate() {
        page[at(FRAME_ADDR) + i * 8..at(FRAME_ADDR) + i * 8 + 8].copy_from_slice(&v.to_le_bytes());
    }
    Ok(page)
}

/// An ELF64 executable for x86-64 with one `PT_LOAD` per segment (physical address = virtual
/// address) and a Xen `PHYS32_ENTRY` note naming `entry`, as QEMU's PVH loader reads it: a
/// 4-aligned note whose 8-byte descriptor is the entry.
pub fn pvh_elf(entry: u64, segments: &[(u64, Vec<u8>)]) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    const PT_LOAD: u32 = 1;
    const PT_NOTE: u32 = 4;
    const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
    let mut note = Vec::new();
    for v in [4u32, 8, XEN_ELFNOTE_PHYS32_ENTRY] {
        note.extend_from_slice(&v.to_le_bytes());
    }
    note.extend_from_slice(b"Xen\0");
    note.extend_from_slice(&entry.to_le_bytes());
    let phnum = 1 + segments.len();
    let note_off = EHDR + PHDR * phnum;
    let mut data_off = (note_off + note.len()).next_multiple_of(PAGE_SIZE as usize);

    let mut out = Vec::new();
    out.extend_from_slice(&[0x7F, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    out.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&entry.to_le_bytes());
    out.extend_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    out.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    out.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    for v in [EHDR as u16, PHDR as u16, phnum as u16, 64, 0, 0] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    let phdr = |out: &mut Vec<u8>, kind: u32, flags: u32, off: usize, addr: u64, len: usize, align: u64| {
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&flags.to_le_bytes());
        for v in [off as u64, addr, addr, len as u64, len as u64, align] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    };
    phdr(&mut out, PT_NOTE, 4, note_off, 0, note.len(), 4);
    let mut offsets = Vec::new();
    for (addr, bytes) in segments {
        phdr(&mut out, PT_LOAD, 7, data_off, *addr, bytes.len(), PAGE_SIZE);
        offsets.push(data_off);
        data_off = (data_off + bytes.len()).next_multiple_of(PAGE_SIZE as usize);
    }
    out.extend_from_slice(&note);
    for ((_, bytes), off) in segments.iter().zip(offsets) {
        out.resize(off, 0);
        out.extend_from_slice(bytes);
    }
    out
}

/// The synthetic guest's markers on QEMU's serial console, turned into the events its own
/// VMM's port handler logs: `phase` with `phase_index` and `previous_phase_writes`, `done`
/// with `last_phase_writes` (always vCPU 0: the only one under QEMU).
#[derive(Debug)]
pub struct SerialMarkers {
    /// The spec's phase names, by index.
    pub phase_names: Vec<String>,
}

fn two_hex(value: &str) -> Option<(u64, u64)> {
    let (a, b) = value.trim().split_once(':')?;
    Some((u64::from_str_radix(a, 16).ok()?, u64::from_str_radix(b, 16).ok()?))
}

impl GuestMarkers for SerialMarkers {
    fn apply(&self, kind: &str, value: &str, log: &GuestLog) -> MarkerEffect {
        match (kind, two_hex(value)) {
            (MARK_READY, _) => MarkerEffect::Ready,
            (MARK_FAILED, _) => MarkerEffect::Failed,
            (MARK_PHASE, Some((index, writes))) => {
                let name = self.phase_names.get(index as usize).cloned().unwrap_or_else(|| format!("phase{index}"));
                let detail = serde_json::json!({
                    "phase_index": index,
                    "previous_phase_writes": (index > 0).then_some(writes),
                });
                log.mark_phase(Some(0), &name, detail);
                MarkerEffect::Logged
            }
            (MARK_DONE, Some((_, writes))) => {
                log.record(Some(0), "done", "done", serde_json::json!({ "last_phase_writes": writes }));
                MarkerEffect::Done
            }
            _ => MarkerEffect::NotMine,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_elf_holds_the_note_and_the_segments() {
        let elf = pvh_elf(0x10_0000, &[(0x10_0000, vec![1, 2, 3]), (0x12_0000, vec![4; 5000])]);
        assert_eq!(&elf[..4], b"\x7fELF");
        assert_eq!(u16::from_le_bytes([elf[56], elf[57]]), 3, "phnum");
        // The note: namesz 4, descsz 8, type 18, "Xen\0", the entry.
        let note_off = u64::from_le_bytes(elf[64 + 8..64 + 16].try_into().unwrap()) as usize;
        assert_eq!(&elf[note_off..note_off + 16], b"\x04\0\0\0\x08\0\0\0\x12\0\0\0Xen\0");
        assert_eq!(u64::from_le_bytes(elf[note_off + 16..note_off + 24].try_into().unwrap()), 0x10_0000);
        // The second PT_LOAD: at 0x120000, 5000 bytes of 4.
        let ph = 64 + 2 * 56;
        let off = u64::from_le_bytes(elf[ph + 8..ph + 16].try_into().unwrap()) as usize;
        assert_eq!(u64::from_le_bytes(elf[ph + 24..ph + 32].try_into().unwrap()), 0x12_0000, "p_paddr");
        assert_eq!(u64::from_le_bytes(elf[ph + 32..ph + 40].try_into().unwrap()), 5000, "p_filesz");
        assert!(elf[off..off + 5000].iter().all(|&b| b == 4));
    }

    /// `(p_paddr, contents)` of every `PT_LOAD` of an ELF that `pvh_elf` wrote.
    fn loads(elf: &[u8]) -> Vec<(u64, Vec<u8>)> {
        let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap());
        let phnum = u16::from_le_bytes([elf[56], elf[57]]) as usize;
        (0..phnum)
            .map(|i| 64 + i * 56)
            .filter(|&ph| u32::from_le_bytes(elf[ph..ph + 4].try_into().unwrap()) == 1)
            .map(|ph| {
                let (off, len) = (u64_at(ph + 8) as usize, u64_at(ph + 32) as usize);
                (u64_at(ph + 24), elf[off..off + len].to_vec())
            })
            .collect()
    }

    #[test]
    fn the_standalone_image_is_the_gated_one_with_its_go_word_set() {
        let spec = WorkloadSpec::parse(super::super::spec::DEFAULT_SPEC, None, None).unwrap();
        let mut guest = super::super::SyntheticGuest::new(spec, String::new()).unwrap();
        let image = guest.pvh_image().unwrap();
        let gated = loads(&image.elf);
        let standalone = loads(&image.standalone_elf());
        assert_eq!(standalone.len(), gated.len() + 1);
        assert_eq!(standalone[..gated.len()], gated[..], "the gated image's segments, unchanged");
        assert_eq!(standalone[gated.len()], (GO_ADDR, GO_VALUE.to_le_bytes().to_vec()));
        assert!(gated.iter().all(|(a, b)| GO_ADDR + 8 <= *a || a + b.len() as u64 <= GO_ADDR), "no go word");
    }

    #[test]
    fn markers_become_the_own_vmm_s_events() {
        let m = SerialMarkers { phase_names: vec!["a".into(), "b".into()] };
        let log = GuestLog::new("a");
        let w = |a: u64, b: u64| format!("{a:016x}:{b:016x}");
        assert_eq!(m.apply(MARK_READY, "", &log), MarkerEffect::Ready);
        assert_eq!(m.apply(MARK_PHASE, &w(0, 0xdead), &log), MarkerEffect::Logged);
        assert_eq!(m.apply(MARK_PHASE, &w(1, 0x1234), &log), MarkerEffect::Logged);
        assert_eq!(m.apply(MARK_DONE, &w(2, 7), &log), MarkerEffect::Done);
        assert_eq!(m.apply(MARK_PHASE, "zz", &log), MarkerEffect::NotMine);
        assert_eq!(m.apply("other", "", &log), MarkerEffect::NotMine);
        let events = log.take().0;
        let got: Vec<_> = events.iter().map(|e| (e.vcpu, e.kind.as_str(), e.name.as_str(), e.detail.clone())).collect();
        use serde_json::json;
        assert_eq!(
            got,
            vec![
                (Some(0), "phase", "a", json!({"phase_index": 0, "previous_phase_writes": null})),
                (Some(0), "phase", "b", json!({"phase_index": 1, "previous_phase_writes": 0x1234})),
                (Some(0), "done", "done", json!({"last_phase_writes": 7})),
            ]
        );
        let counts = super::super::final_counts_from_log(&events, 1, 2);
        assert_eq!(counts, vec![vec![Some(0x1234), Some(7)]]);
    }

    #[test]
    fn the_tsc_rate_is_measured() {
        let hz = measure_tsc_hz(Duration::from_millis(20));
        assert!(hz > 1e8 && hz < 1e10, "{hz}");
    }
}
