//! The kernel-mode probe: a two-vCPU guest that times the same short `dec/jnz` loop with
//! `rdtsc`, at CPL0 (how a guest kernel runs) and at CPL3 (how the synthetic guest runs),
//! [`REPEATS`] times each, and reports every TSC delta through port I/O; the fastest counts,
//! so that one preemption of the vCPU cannot make native code look emulated. With VT-x or
//! AMD-V both run natively, at hundreds of millions of instructions a second or more; a KVM that
//! emulates guest kernel code (a nested shadow-paging backend without them) runs the CPL0 loop
//! at a few million. The probe takes tens of milliseconds on such a host, and less elsewhere.

use crate::vmm::x86::gdt::{self, LONG_MODE};
use crate::vmm::x86::paging::{self, flags::*};
use crate::vmm::x86::{enter_long_mode, CR0_LONG_MODE_USER, RFLAGS_IOPL3, RFLAGS_RESERVED};
use crate::vmm::{kvm_err, open_kvm, Bus, DirtyTracking, ExitAction, VcpuOutcome, Vm, VmSpec};
use anyhow::Context;
use kvm_bindings::kvm_regs;
use std::path::{Path, PathBuf};
use std::sync::PoisonError;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vm_memory::{Bytes, GuestAddress};

const MEM: u64 = 2 << 20;
const GDT_ADDR: u64 = 0x500;
const PML4_ADDR: u64 = 0x1000;
const PDPT_ADDR: u64 = 0x2000;
const PD_ADDR: u64 = 0x3000;
const CODE_ADDR: u64 = 0x4000;
const PORT_LO: u16 = 0x510;
const PORT_HI: u16 = 0x511;
const PORT_DONE: u16 = 0x512;

/// Loop iterations (two instructions each) at CPL0 and CPL3, and how often each loop runs.
/// Emulated at ~1.5 M instructions/s the CPL0 loops take about 27 ms in all; natively each
/// loop takes microseconds.
pub const KERNEL_ITERATIONS: u64 = 4_000;
/// Loop iterations at CPL3 (native everywhere, so many more).
pub const USER_ITERATIONS: u64 = 100_000;
/// How often each loop runs; the fastest run counts.
pub const REPEATS: u64 = 5;
/// A loop still running after this long is reported as slower than it allows.
pub const DEADLINE: Duration = Duration::from_millis(250);
/// Native execution runs hundreds of millions of these instructions a second or more; emulation
/// a few million. Anything above this counts as native.
pub const NATIVE_IPS: f64 = 30e6;

/// One loop's timing.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoopTiming {
    /// Iterations run.
    pub iterations: u64,
    /// Seconds of the fastest run, by the guest's TSC; `None` when none finished within [`DEADLINE`].
    pub seconds: Option<f64>,
    /// Loop instructions per second (at most `instructions / DEADLINE` when unfinished).
    pub instructions_per_s: f64,
    /// Fast enough to be native ([`NATIVE_IPS`]).
    pub native: bool,
}

/// The probe's verdict material: the same loop at CPL0 and at CPL3.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProbeResult {
    /// The loop at CPL0 (guest kernel mode).
    pub kernel_mode: LoopTiming,
    /// The loop at CPL3 (guest user mode).
    pub user_mode: LoopTiming,
    /// The guest's TSC rate, kHz.
    pub tsc_khz: u32,
    /// Wall time of the whole probe, VM creation included.
    pub elapsed_s: f64,
}

impl ProbeResult {
    /// Guest kernel code runs natively: Linux guests can run.
    pub fn kernel_native(&self) -> bool {
        self.kernel_mode.native
    }
}

/// `r8` times: `rdi` iterations between two `rdtsc`s, the delta out on two ports. Then done.
fn code() -> anyhow::Result<Vec<u8>> {
    use iced_x86::code_asm::*;
    let mut a = CodeAssembler::new(64)?;
    let mut again = a.create_label();
    let mut top = a.create_label();
    a.set_label(&mut again)?;
    a.rdtsc()?;
    a.shl(rdx, 32)?;
    a.or(rax, rdx)?;
    a.mov(rsi, rax)?;
    a.mov(rcx, rdi)?;
    a.set_label(&mut top)?;
    a.dec(rcx)?;
    a.jnz(top)?;
    a.rdtsc()?;
    a.shl(rdx, 32)?;
    a.or(rax, rdx)?;
    a.sub(rax, rsi)?;
    a.mov(dx, PORT_LO as u32)?;
    a.out(dx, eax)?;
    a.shr(rax, 32)?;
    a.mov(dx, PORT_HI as u32)?;
    a.out(dx, eax)?;
    a.dec(r8)?;
    a.jnz(again)?;
    a.mov(dx, PORT_DONE as u32)?;
    a.out(dx, al)?;
    let mut spin = a.create_label();
    a.set_label(&mut spin)?;
    a.jmp(spin)?;
    Ok(a.assemble(CODE_ADDR)?)
}

#[derive(Default)]
struct ProbeBus {
    /// Per vCPU: the low half of the last TSC delta, and the smallest whole delta.
    delta: Mutex<[(u32, Option<u64>); 2]>,
}

impl Bus for ProbeBus {
    fn io_out(&self, vcpu: u32, port: u16, data: &[u8]) -> ExitAction {
        let mut v = [0u8; 4];
        v[..data.len().min(4)].copy_from_slice(&data[..data.len().min(4)]);
        let value = u32::from_le_bytes(v);
        let mut d = self.delta.lock().unwrap_or_else(PoisonError::into_inner);
        match (port, d.get_mut(vcpu as usize)) {
            (PORT_LO, Some(slot)) => slot.0 = value,
            (PORT_HI, Some(slot)) => {
                let delta = (value as u64) << 32 | slot.0 as u64;
                slot.1 = Some(slot.1.map_or(delta, |m| m.min(delta)));
            }
            (PORT_DONE, _) => return ExitAction::Done,
            _ => {}
        }
        ExitAction::Continue
    }
}

/// Runs the probe on the KVM device `kvm_path`.
pub fn run(kvm_path: &Path) -> anyhow::Result<ProbeResult> {
    let t0 = std::time::Instant::now();
    let kvm = open_kvm(kvm_path)?;
    let vm =
        Vm::create(kvm, &VmSpec { ram: vec![(0, MEM)], vcpus: 2, irqchip: false, dirty_tracking: DirtyTracking::Off })?;
    let mem = &vm.memory;
    // Identity map of the first 2 MiB, reachable from CPL3; accessed and dirty bits preset.
    let tables = paging::Tables { pml4: PML4_ADDR, pdpt: PDPT_ADDR, pd: PD_ADDR };
    let table = PRESENT | WRITABLE | USER | ACCESSED;
    paging::identity_map(mem, tables, MEM, table, |a| a | table | DIRTY | LARGE)?;
    LONG_MODE.write(mem, GDT_ADDR)?;
    mem.write_slice(&code().map_err(|e| anyhow::anyhow!("assembling the probe: {e}"))?, GuestAddress(CODE_ADDR))?;
    let tsc_khz = vm.vcpus[0].get_tsc_khz().context("KVM_GET_TSC_KHZ")?;
    for (i, fd) in vm.vcpus.iter().enumerate() {
        // vCPU 0 runs at CPL0, vCPU 1 at CPL3.
        let (code, data, iterations) = if i == 0 {
            (gdt::KERNEL_CODE, gdt::KERNEL_DATA, KERNEL_ITERATIONS)
        } else {
            (gdt::USER_CODE, gdt::USER_DATA, USER_ITERATIONS)
        };
        let mut s = fd.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
        LONG_MODE.load(&mut s, GDT_ADDR, code, data);
        enter_long_mode(&mut s, PML4_ADDR, CR0_LONG_MODE_USER);
        fd.set_sregs(&s).map_err(kvm_err("KVM_SET_SREGS"))?;
        let regs = kvm_regs {
            rip: CODE_ADDR,
            rflags: RFLAGS_IOPL3 | RFLAGS_RESERVED,
            rdi: iterations,
            r8: REPEATS,
            ..Default::default()
        };
        fd.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;
    }
    let bus = Arc::new(ProbeBus::default());
    let mut running = vm.start(bus.clone(), None)?;
    let started = std::time::Instant::now();
    while !running.all_finished() && started.elapsed() < DEADLINE {
        std::thread::sleep(Duration::from_millis(1));
    }
    let outcomes = running.stop();
    if let Some(VcpuOutcome::Fault(f)) = outcomes.iter().find(|o| matches!(o, VcpuOutcome::Fault(_))) {
        anyhow::bail!("the probe guest failed: {f}");
    }
    let delta = *bus.delta.lock().unwrap_or_else(PoisonError::into_inner);
    let timing = |i: usize, iterations: u64| {
        let instructions = 2.0 * iterations as f64;
        let seconds = delta[i].1.filter(|_| tsc_khz > 0).map(|d| d as f64 / (tsc_khz as f64 * 1e3));
        let ips = instructions / seconds.unwrap_or(DEADLINE.as_secs_f64()).max(1e-9);
        LoopTiming { iterations, seconds, instructions_per_s: ips, native: seconds.is_some() && ips >= NATIVE_IPS }
    };
    Ok(ProbeResult {
        kernel_mode: timing(0, KERNEL_ITERATIONS),
        user_mode: timing(1, USER_ITERATIONS),
        tsc_khz,
        elapsed_s: t0.elapsed().as_secs_f64(),
    })
}

/// [`run`], once per process and device: `record` may ask more than once.
pub fn cached(kvm_path: &Path) -> Result<ProbeResult, std::sync::Arc<anyhow::Error>> {
    type Outcome = Result<ProbeResult, std::sync::Arc<anyhow::Error>>;
    static DONE: Mutex<Vec<(PathBuf, Outcome)>> = Mutex::new(Vec::new());
    let mut done = DONE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, r)) = done.iter().find(|(p, _)| p == kvm_path) {
        return r.clone();
    }
    let r = run(kvm_path).map_err(std::sync::Arc::new);
    done.push((kvm_path.to_path_buf(), r.clone()));
    r
}
