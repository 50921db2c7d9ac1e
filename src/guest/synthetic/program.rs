//! The synthetic guest's machine code, assembled at run time with iced-x86.
//!
//! It runs at CPL3 with identity-mapped memory, no stack and no interrupts. On entry
//! `rdi` points at its vCPU's parameter block (see [`write_params`]).
//!
//! It comes in two variants from the same source ([`Target`]): under the own VMM it reports
//! phases, idle time and its end with `out` to ports the VMM answers; under QEMU, where those
//! ports reach no device, it writes marker lines to the serial port instead, idles through its
//! boot code's `syscall` handler (which sleeps the vCPU until a timer interrupt:
//! [`super::pvh`]), and ends with a reset that QEMU turns into a pause. Writes, pacing and
//! progress words are the same instructions in both.

use super::plan::*;
use super::spec::{Pattern, PAGE_SIZE};
use iced_x86::code_asm::*;

// Parameter block header.
const H_CONTROL: i32 = 0;
const H_NPHASES: i32 = 8;
const H_PHASES: i32 = 16;
const H_PERIOD: i32 = 24;
// Phase entry.
const P_DUR: i32 = 0;
const P_TPW_INT: i32 = 8;
const P_TPW_FRAC: i32 = 16;
const P_BUSY: i32 = 24;
const P_PATTERN: i32 = 32;
const P_KEY: i32 = 40;
const P_BASE: i32 = 48;
const P_WS: i32 = 56;
const P_HOT: i32 = 64;
const P_COLD_BASE: i32 = 72;
const P_COLD: i32 = 80;
const P_THRESH: i32 = 88;

/// Writes between two reads of the TSC.
const BATCH: u32 = 16;

/// The serial port (COM1's data register) the QEMU variant writes its markers to.
pub const SERIAL_PORT: u16 = 0x3F8;
/// The keyboard controller's command port: 0xFE there resets the machine, which QEMU, run
/// with `-action reboot=shutdown,shutdown=pause`, turns into a pause and a `SHUTDOWN` event.
pub const RESET_PORT: u16 = 0x64;
/// Marker kinds of the QEMU variant (`DIRTYTRACE:KIND:PHASE:WRITES`, both 16 hex digits).
pub const MARK_PHASE: &str = "synthetic_phase";
/// The vCPU is done: `DIRTYTRACE:synthetic_done:PHASES:LAST_PHASE_WRITES`.
pub const MARK_DONE: &str = "synthetic_done";

/// Which VMM the program talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// dirtytrace's own VMM: port writes to [`PORT_PHASE`], [`PORT_IDLE`] and [`PORT_DONE`].
    OwnVmm,
    /// QEMU: marker lines on the serial port, `syscall` to idle (`rax`: TSC ticks), a reset
    /// at the end.
    Qemu,
}

/// The guest's machine code for the own VMM, assembled.
pub fn assemble() -> Result<Vec<u8>, IcedError> {
    assemble_for(Target::OwnVmm)
}

/// Writes `DIRTYTRACE:{kind}:` then `first` and `second` as 16 hex digits each, and a newline,
/// to the serial port. Uses rax, rcx, rdx and rsi.
fn serial_marker(
    a: &mut CodeAssembler,
    kind: &str,
    first: AsmRegister64,
    second: AsmRegister64,
) -> Result<(), IcedError> {
    a.mov(dx, SERIAL_PORT as u32)?;
    let text = format!("{}{kind}:", crate::guest::linux::console::MARKER_PREFIX);
    let put = |a: &mut CodeAssembler, b: u8| -> Result<(), IcedError> {
        a.mov(al, b as u32)?;
        a.out(dx, al)
    };
    for b in text.bytes() {
        put(a, b)?;
    }
    for (i, reg) in [first, second].into_iter().enumerate() {
        if i > 0 {
            put(a, b':')?;
        }
        let mut digit = a.create_label();
        let mut decimal = a.create_label();
        a.mov(rsi, reg)?;
        a.mov(ecx, 16u32)?;
        a.set_label(&mut digit)?;
        a.rol(rsi, 4)?;
        a.mov(eax, esi)?;
        a.and(eax, 0xF)?;
        a.cmp(eax, 10)?;
        a.jb(decimal)?;
        a.add(eax, (b'a' - b'0' - 10) as i32)?;
        a.set_label(&mut decimal)?;
        a.add(eax, b'0' as i32)?;
        a.out(dx, al)?;
        a.dec(ecx)?;
        a.jnz(digit)?;
    }
    put(a, b'\n')
}

/// The guest's machine code for `target`, assembled.
pub fn assemble_for(target: Target) -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    let mut phase_loop = a.create_label();
    let mut period_loop = a.create_label();
    let mut busy_loop = a.create_label();
    let mut write_one = a.create_label();
    let mut seq_ok = a.create_label();
    let mut not_seq = a.create_label();
    let mut hotcold = a.create_label();
    let mut cold = a.create_label();
    let mut do_write = a.create_label();
    let mut spin = a.create_label();
    let mut busy_over = a.create_label();
    let mut no_clamp = a.create_label();
    let mut next_phase = a.create_label();
    let mut done = a.create_label();

    // r15 params, r14 phase, r13 now, r12 j, r11 phase end, r10 period start,
    // r9:r8 next due time (integer : fraction << 32), rbp sequential cursor, rbx phase entry,
    // rsi end of this period's busy time, rcx batch count.
    a.mov(r15, rdi)?;
    a.xor(r14, r14)?;
    a.rdtsc()?;
    a.shl(rdx, 32)?;
    a.or(rax, rdx)?;
    a.mov(r11, rax)?;

    a.set_label(&mut phase_loop)?;
    a.cmp(r14, qword_ptr(r15 + H_NPHASES))?;
    a.jae(done)?;
    match target {
        // The VMM reads the previous phase's final count at this exit.
        Target::OwnVmm => {
            a.mov(eax, r14d)?;
            a.mov(dx, PORT_PHASE as u32)?;
            a.out(dx, eax)?;
        }
        // r12 still holds the previous phase's final count (meaningless before phase 0).
        Target::Qemu => serial_marker(&mut a, MARK_PHASE, r14, r12)?,
    }
    a.mov(rbx, r14)?;
    a.shl(rbx, 7)?;
    a.add(rbx, qword_ptr(r15 + H_PHASES))?;
    a.mov(rax, r14)?;
    a.shl(rax, 48)?;
    a.mov(rdi, qword_ptr(r15 + H_CONTROL))?;
    a.mov(qword_ptr(rdi), rax)?;
    a.xor(r12, r12)?;
    a.xor(ebp, ebp)?;
    a.mov(r10, r11)?;
    a.mov(r9, r11)?;
    a.add(r9, qword_ptr(rbx + P_TPW_INT))?;
    a.mov(r8, qword_ptr(rbx + P_TPW_FRAC))?;
    a.add(r11, qword_ptr(rbx + P_DUR))?;

    a.set_label(&mut period_loop)?;
    a.mov(rsi, r10)?;
    a.add(rsi, qword_ptr(rbx + P_BUSY))?;
    a.cmp(rsi, r11)?;
    a.cmova(rsi, r11)?;

    a.set_label(&mut busy_loop)?;
    a.rdtsc()?;
    a.shl(rdx, 32)?;
    a.or(rax, rdx)?;
    a.mov(r13, rax)?;
    a.cmp(r13, rsi)?;
    a.jae(busy_over)?;
    a.cmp(r9, r13)?;
    a.ja(spin)?;
    a.mov(ecx, BATCH)?;

    a.set_label(&mut write_one)?;
    a.cmp(qword_ptr(rbx + P_PATTERN), 0)?;
    a.jne(not_seq)?;
    a.mov(rdi, rbp)?;
    a.inc(rbp)?;
    a.cmp(rbp, qword_ptr(rbx + P_WS))?;
    a.jb(seq_ok)?;
    a.xor(ebp, ebp)?;
    a.set_label(&mut seq_ok)?;
    a.shl(rdi, 12)?;
    a.add(rdi, qword_ptr(rbx + P_BASE))?;
    a.jmp(do_write)?;

    a.set_label(&mut not_seq)?;
    // u = mix64(key + (j + 1) * GAMMA)
    a.lea(rax, qword_ptr(r12 + 1))?;
    a.mov(rdx, 0x9E37_79B9_7F4A_7C15u64)?;
    a.imul_2(rax, rdx)?;
    a.add(rax, qword_ptr(rbx + P_KEY))?;
    for (shift, mul) in [(30, 0xBF58_476D_1CE4_E5B9u64), (27, 0x94D0_49BB_1331_11EB)] {
        a.mov(rdx, rax)?;
        a.shr(rdx, shift)?;
        a.xor(rax, rdx)?;
        a.mov(rdx, mul)?;
        a.imul_2(rax, rdx)?;
    }
    a.mov(rdx, rax)?;
    a.shr(rdx, 31)?;
    a.xor(rax, rdx)?;
    a.mov(rdi, rax)?;
    a.shr(rdi, 32)?;
    a.cmp(qword_ptr(rbx + P_PATTERN), 1)?;
    a.jne(hotcold)?;
    a.imul_2(rdi, qword_ptr(rbx + P_WS))?;
    a.shr(rdi, 32)?;
    a.shl(rdi, 12)?;
    a.add(rdi, qword_ptr(rbx + P_BASE))?;
    a.jmp(do_write)?;
    a.set_label(&mut hotcold)?;
    a.mov(edx, eax)?;
    a.cmp(rdx, qword_ptr(rbx + P_THRESH))?;
    a.jae(cold)?;
    a.imul_2(rdi, qword_ptr(rbx + P_HOT))?;
    a.shr(rdi, 32)?;
    a.shl(rdi, 12)?;
    a.add(rdi, qword_ptr(rbx + P_BASE))?;
    a.jmp(do_write)?;
    a.set_label(&mut cold)?;
    a.imul_2(rdi, qword_ptr(rbx + P_COLD))?;
    a.shr(rdi, 32)?;
    a.shl(rdi, 12)?;
    a.add(rdi, qword_ptr(rbx + P_COLD_BASE))?;

    a.set_label(&mut do_write)?;
    a.mov(qword_ptr(rdi), r12)?;
    a.inc(r12)?;
    // Publish progress after the write, so a counter the VMM sees implies the page was written.
    a.mov(rax, r14)?;
    a.shl(rax, 48)?;
    a.or(rax, r12)?;
    a.mov(rdx, qword_ptr(r15 + H_CONTROL))?;
    a.mov(qword_ptr(rdx), rax)?;
    a.add(r8, qword_ptr(rbx + P_TPW_FRAC))?;
    a.adc(r9, qword_ptr(rbx + P_TPW_INT))?;
    a.dec(ecx)?;
    a.jz(busy_loop)?;
    a.cmp(r9, r13)?;
    a.jbe(write_one)?;
    a.jmp(busy_loop)?;

    a.set_label(&mut spin)?;
    a.pause()?;
    a.jmp(busy_loop)?;

    a.set_label(&mut busy_over)?;
    a.cmp(r13, r11)?;
    a.jae(next_phase)?;
    // Idle until the end of the period (or of the phase), by asking the VMM to sleep.
    a.mov(rax, r10)?;
    a.add(rax, qword_ptr(r15 + H_PERIOD))?;
    a.cmp(rax, r11)?;
    a.cmova(rax, r11)?;
    a.mov(r10, rax)?;
    a.sub(rax, r13)?;
    a.jbe(period_loop)?;
    match target {
        Target::OwnVmm => {
            a.mov(edx, 0xFFFF_FFFFu32)?;
            a.cmp(rax, rdx)?;
            a.jbe(no_clamp)?;
            a.mov(rax, rdx)?;
            a.set_label(&mut no_clamp)?;
            a.mov(dx, PORT_IDLE as u32)?;
            a.out(dx, eax)?;
        }
        // Sleep for `rax` TSC ticks in the boot code's `syscall` handler (which clobbers rcx,
        // r11, rdx, rsi and rax); woken early, sleep again until the period's start.
        Target::Qemu => {
            let mut idle = a.create_label();
            a.set_label(&mut idle)?;
            a.mov(rdi, r11)?;
            a.syscall()?;
            a.mov(r11, rdi)?;
            a.rdtsc()?;
            a.shl(rdx, 32)?;
            a.or(rax, rdx)?;
            a.mov(rdx, r10)?;
            a.sub(rdx, rax)?;
            a.mov(rax, rdx)?;
            a.ja(idle)?;
        }
    }
    a.jmp(period_loop)?;

    a.set_label(&mut next_phase)?;
    a.inc(r14)?;
    a.jmp(phase_loop)?;

    a.set_label(&mut done)?;
    match target {
        Target::OwnVmm => {
            a.mov(eax, r14d)?;
            a.mov(dx, PORT_DONE as u32)?;
            a.out(dx, eax)?;
            a.jmp(done)?;
        }
        Target::Qemu => {
            serial_marker(&mut a, MARK_DONE, r14, r12)?;
            a.mov(dx, RESET_PORT as u32)?;
            a.mov(al, 0xFEu32)?;
            a.out(dx, al)?;
            let mut halt = a.create_label();
            a.set_label(&mut halt)?;
            a.pause()?;
            a.jmp(halt)?;
        }
    }

    a.assemble(CODE_ADDR)
}

fn put(buf: &mut [u8], off: i32, v: u64) {
    buf[off as usize..off as usize + 8].copy_from_slice(&v.to_le_bytes());
}

/// The parameter block of one vCPU: header, then one entry per phase.
pub fn write_params(plan: &GuestPlan, vcpu: u32, tsc_hz: f64) -> Vec<u8> {
    let phases = &plan.plans[vcpu as usize];
    let mut buf = vec![0u8; (HEADER_BYTES + phases.len() as u64 * PHASE_ENTRY_BYTES) as usize];
    let base = plan.params_addr(vcpu);
    let period_tsc = (tsc_hz * PERIOD_NS as f64 / 1e9).round() as u64;
    put(&mut buf, H_CONTROL, GuestPlan::control_addr(vcpu));
    put(&mut buf, H_NPHASES, phases.len() as u64);
    put(&mut buf, H_PHASES, base + HEADER_BYTES);
    put(&mut buf, H_PERIOD, period_tsc);
    for (i, pp) in phases.iter().enumerate() {
        let e = &mut buf[(HEADER_BYTES + i as u64 * PHASE_ENTRY_BYTES) as usize..];
        // Ticks per write as 32.32 fixed point; a rate of 0 puts the first write beyond any phase.
        let (tpw_int, tpw_frac) = match pp.writes_per_sec {
            None => (0, 0),
            Some(0.0) => (1u64 << 62, 0),
            Some(w) => {
                let fixed = (tsc_hz / w * 4294967296.0).round() as u128;
                ((fixed >> 32) as u64, ((fixed & 0xFFFF_FFFF) as u64) << 32)
            }
        };
        put(e, P_DUR, (pp.duration_ns as f64 * tsc_hz / 1e9).round() as u64);
        put(e, P_TPW_INT, tpw_int);
        put(e, P_TPW_FRAC, tpw_frac);
        put(e, P_BUSY, (period_tsc as f64 * pp.cpu).round() as u64);
        let pattern = match pp.pattern {
            Pattern::Sequential => 0,
            Pattern::Random => 1,
            Pattern::Hotcold => 2,
        };
        put(e, P_PATTERN, pattern);
        put(e, P_KEY, pp.key);
        put(e, P_BASE, pp.base_page * PAGE_SIZE);
        put(e, P_WS, pp.ws_pages);
        put(e, P_HOT, pp.hot_pages);
        put(e, P_COLD_BASE, pp.cold_base_page * PAGE_SIZE);
        put(e, P_COLD, pp.cold_pages);
        put(e, P_THRESH, pp.hot_threshold);
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assembles_into_one_page() {
        for target in [Target::OwnVmm, Target::Qemu] {
            let code = assemble_for(target).unwrap();
            assert!(!code.is_empty() && code.len() < 4096, "{target:?}: {}", code.len());
        }
    }

    /// The own VMM's program is the one its exactness tests have always checked: the QEMU
    /// variant changes none of its bytes. (A deliberate change to the program updates this.)
    #[test]
    fn the_own_vmm_s_program_is_unchanged() {
        use sha2::Digest;
        let code = assemble().unwrap();
        let hash: String = crate::units::hex(&sha2::Sha256::digest(&code));
        assert_eq!(
            (code.len(), hash.as_str()),
            (454, "bb8c338dca240f5444eda0b6c4acdc31e21ff3d0272eacbf7f1ae369f499a231")
        );
    }
}
