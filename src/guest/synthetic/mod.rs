//! The built-in micro-guest: a CPL3 program that writes pages on a known schedule.
//! Its ground truth is exact: see [`plan::GuestPlan::pages_between`].

pub mod generate;
pub mod plan;
pub mod program;
pub mod pvh;
pub mod spec;
pub mod verify;

use crate::events::GuestLog;
use crate::guest::Guest;
use crate::vmm::x86::gdt::{self, LONG_MODE};
use crate::vmm::x86::paging::{self, flags::*};
use crate::vmm::x86::{enter_long_mode, CR0_LONG_MODE_USER, RFLAGS_IOPL3, RFLAGS_RESERVED};
use crate::vmm::{kvm_err, Bus, ExitAction, Vm, VmSpec};
use anyhow::Context;
use kvm_bindings::kvm_regs;
use plan::*;
use spec::WorkloadSpec;
use std::sync::PoisonError;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// The `detail` of the synthetic guest's `phase` events in `guest_log.jsonl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PhaseDetail {
    /// The phase that begins, by its position in the spec.
    pub phase_index: u64,
    /// The writes this vCPU made in the phase before (none before the first).
    pub previous_phase_writes: Option<u64>,
}

/// The `detail` of the synthetic guest's `done` events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DoneDetail {
    /// The writes this vCPU made in the last phase.
    pub last_phase_writes: Option<u64>,
}

/// The detail as the guest log holds it (a struct of numbers always serialises).
fn detail_json(detail: impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(detail).unwrap_or_default()
}

impl PhaseDetail {
    /// As the guest log holds it.
    pub fn to_json(self) -> serde_json::Value {
        detail_json(self)
    }

    /// The detail of `event`, if it has one of this kind.
    pub fn of(event: &crate::trace::GuestEvent) -> Option<PhaseDetail> {
        serde::Deserialize::deserialize(&event.detail).ok()
    }
}

impl DoneDetail {
    /// As the guest log holds it.
    pub fn to_json(self) -> serde_json::Value {
        detail_json(self)
    }

    /// The detail of `event`, if it has one of this kind.
    pub fn of(event: &crate::trace::GuestEvent) -> Option<DoneDetail> {
        serde::Deserialize::deserialize(&event.detail).ok()
    }
}

/// The synthetic guest, ready to load.
pub struct SyntheticGuest {
    /// Its workload, parsed.
    pub spec: WorkloadSpec,
    /// The workload as written.
    pub spec_text: String,
    /// Where each vCPU writes, phase by phase.
    pub plan: GuestPlan,
    tsc_hz: f64,
    /// Where `tsc_hz` came from: `kvm` (`KVM_GET_TSC_KHZ`) or `host_measured` (QEMU).
    tsc_source: &'static str,
}

impl SyntheticGuest {
    /// The guest of `spec`; `spec_text` is kept for the manifest.
    pub fn new(spec: WorkloadSpec, spec_text: String) -> anyhow::Result<Self> {
        let plan = GuestPlan::new(&spec)?;
        Ok(SyntheticGuest { spec, spec_text, plan, tsc_hz: 0.0, tsc_source: "kvm" })
    }
}

/// Tables: present, writable, user, accessed.
const PT_TABLE: u64 = PRESENT | WRITABLE | USER | ACCESSED;
/// The workload's 2 MiB pages: writable, accessed and dirty.
const PT_LEAF_2M: u64 = PT_TABLE | DIRTY | LARGE;
/// The system area's 4 KiB pages: read-only, accessed.
const PT_LEAF_RO: u64 = PRESENT | USER | ACCESSED;
/// The control page: writable, accessed and dirty.
const PT_LEAF_RW: u64 = PT_TABLE | DIRTY;

/// Identity map of `mem_bytes`, reachable from CPL3: 2 MiB pages for the workload, 4 KiB pages
/// for the system area. Accessed and dirty bits are preset so the CPU never writes the tables.
/// The system area is read-only but for the control page: under shadow paging KVM marks a
/// page dirty when it first maps it writable, even for a read, and the guest's code and
/// parameters must stay out of the dirty log.
fn write_page_tables(mem: &GuestMemoryMmap, mem_bytes: u64) -> anyhow::Result<()> {
    let tables = paging::Tables { pml4: PML4_ADDR, pdpt: PDPT_ADDR, pd: PD_ADDR };
    paging::identity_map(mem, tables, mem_bytes, PT_TABLE, |a| {
        if a == 0 {
            SYSTEM_PT_ADDR | PT_TABLE
        } else {
            a | PT_LEAF_2M
        }
    })?;
    let system = (0..paging::ENTRIES).map(|i| i * crate::units::PAGE_SIZE).map(|a| {
        if a == CONTROL_PAGE {
            a | PT_LEAF_RW
        } else {
            a | PT_LEAF_RO
        }
    });
    paging::write_entries(mem, SYSTEM_PT_ADDR, system)?;
    Ok(())
}

/// The GDT: null, kernel code/data (for the QEMU variant's boot code), user code 0x1b, user
/// data 0x23; accessed bits preset so the CPU never writes it.
const GDT: gdt::Gdt = LONG_MODE;

/// Loads the system area into `mem`: page tables, GDT, `code` and every vCPU's parameters.
fn load_system_area(
    mem: &GuestMemoryMmap,
    spec: &WorkloadSpec,
    plan: &GuestPlan,
    tsc_hz: f64,
    code: &[u8],
) -> anyhow::Result<()> {
    write_page_tables(mem, spec.mem_bytes)?;
    GDT.write(mem, GDT_ADDR)?;
    mem.write_slice(code, GuestAddress(CODE_ADDR))?;
    for v in 0..spec.vcpus {
        let params = program::write_params(plan, v, tsc_hz);
        mem.write_slice(&params, GuestAddress(plan.params_addr(v)))?;
    }
    Ok(())
}

impl SyntheticGuest {
    /// The PVH boot image QEMU runs this guest from, paced by the host's TSC (measured now).
    pub fn pvh_image(&mut self) -> anyhow::Result<pvh::BootImage> {
        pvh::check_fits(&self.spec)?;
        self.tsc_hz = pvh::host_tsc_hz()?;
        self.tsc_source = "host_measured";
        let code =
            program::assemble_for(program::Target::Qemu).map_err(|e| anyhow::anyhow!("assembling the guest: {e}"))?;
        let system = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), spec::SYSTEM_AREA_BYTES as usize)])
            .context("cannot allocate memory to build the guest's boot image")?;
        load_system_area(&system, &self.spec, &self.plan, self.tsc_hz, &code)?;
        pvh::BootImage::build(&system, &self.spec, &self.plan, code.len() as u64, self.tsc_hz)
    }
}

impl Guest for SyntheticGuest {
    fn vm_spec(&self) -> VmSpec {
        VmSpec {
            ram: vec![(0, self.spec.mem_bytes)],
            vcpus: self.spec.vcpus,
            irqchip: false,
            dirty_tracking: Default::default(),
        }
    }

    fn prepare(&mut self, vm: &mut Vm, log: Arc<GuestLog>) -> anyhow::Result<Arc<dyn Bus>> {
        self.tsc_hz = tsc_hz(vm)?;
        self.tsc_source = "kvm";
        let code = program::assemble().map_err(|e| anyhow::anyhow!("assembling the guest: {e}"))?;
        load_system_area(&vm.memory, &self.spec, &self.plan, self.tsc_hz, &code)?;
        for (i, fd) in vm.vcpus.iter().enumerate() {
            let mut s = fd.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
            // TR keeps KVM's default: a TR loaded here made this host's KVM fail the first `out`.
            GDT.load(&mut s, GDT_ADDR, gdt::USER_CODE, gdt::USER_DATA);
            enter_long_mode(&mut s, PML4_ADDR, CR0_LONG_MODE_USER);
            fd.set_sregs(&s).map_err(kvm_err("KVM_SET_SREGS"))?;
            let regs = kvm_regs {
                rip: CODE_ADDR,
                rflags: RFLAGS_IOPL3 | RFLAGS_RESERVED,
                rdi: self.plan.params_addr(i as u32),
                ..Default::default()
            };
            fd.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;
        }
        let phases = self.spec.phases.len();
        Ok(Arc::new(SyntheticBus {
            memory: vm.memory.clone(),
            log,
            phase_names: self.spec.phases.iter().map(|p| p.name.clone()).collect(),
            tsc_hz: self.tsc_hz,
            final_counts: Mutex::new(vec![vec![None; phases]; self.spec.vcpus as usize]),
        }))
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "synthetic",
            "spec_toml": self.spec_text,
            "spec": self.spec,
            "tsc_hz": self.tsc_hz,
            "tsc_source": self.tsc_source,
            "control_page": CONTROL_PAGE,
            "system_area_bytes": spec::SYSTEM_AREA_BYTES,
        })
    }

    fn expected_duration(&self) -> Option<Duration> {
        Some(self.spec.total_duration())
    }

    fn initial_phase(&self) -> String {
        self.spec.phases[0].name.clone()
    }

    fn progress_words(&self) -> Vec<u64> {
        (0..self.spec.vcpus).map(GuestPlan::control_addr).collect()
    }

    fn own_pages(&self) -> Vec<u64> {
        GuestPlan::own_pages()
    }

    fn loaded_ranges(&self) -> Vec<(u64, u64)> {
        vec![(0, spec::SYSTEM_AREA_BYTES)]
    }

    fn qemu_boot(&mut self) -> anyhow::Result<Option<crate::qemu::QemuBoot>> {
        let image = self.pvh_image()?;
        Ok(Some(crate::qemu::QemuBoot {
            kernel: Some(crate::qemu::QemuKernel::Image(image.elf)),
            initramfs: Vec::new(),
            cmdline: String::new(),
            mem: self.spec.mem_bytes,
            vcpus: 1,
            echo_console: false,
            gate: Some(image.gate),
            markers: Some(Arc::new(pvh::SerialMarkers {
                phase_names: self.spec.phases.iter().map(|p| p.name.clone()).collect(),
            })),
            disk: None,
        }))
    }
}

/// The guest's TSC frequency, which its pacing depends on.
fn tsc_hz(vm: &Vm) -> anyhow::Result<f64> {
    let khz = vm.vcpus[0].get_tsc_khz().context("KVM_GET_TSC_KHZ: cannot learn the guest's TSC frequency")?;
    Ok(khz as f64 * 1000.0)
}

struct SyntheticBus {
    memory: GuestMemoryMmap,
    log: Arc<GuestLog>,
    phase_names: Vec<String>,
    tsc_hz: f64,
    /// Writes each vCPU made in each finished phase, learned at the phase-change exits.
    final_counts: Mutex<Vec<Vec<Option<u64>>>>,
}

impl SyntheticBus {
    /// Reads the vCPU's progress word; at a phase-change exit it holds the last phase's final count.
    fn close_phase(&self, vcpu: u32) -> Option<(u64, u64)> {
        let word: u64 = self.memory.read_obj(GuestAddress(GuestPlan::control_addr(vcpu))).ok()?;
        let (phase, writes) = decode_progress(word);
        let mut counts = self.final_counts.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = counts.get_mut(vcpu as usize)?.get_mut(phase as usize)?;
        slot.get_or_insert(writes);
        Some((phase, writes))
    }
}

impl Bus for SyntheticBus {
    fn io_out(&self, vcpu: u32, port: u16, data: &[u8]) -> ExitAction {
        let mut v = [0u8; 4];
        v[..data.len().min(4)].copy_from_slice(&data[..data.len().min(4)]);
        let value = u32::from_le_bytes(v) as u64;
        match port {
            PORT_IDLE => ExitAction::Sleep(Duration::from_secs_f64(value as f64 / self.tsc_hz)),
            PORT_PHASE => {
                let previous = if value > 0 { self.close_phase(vcpu) } else { None };
                let name = self.phase_names.get(value as usize).cloned().unwrap_or_else(|| format!("phase{value}"));
                let detail = PhaseDetail { phase_index: value, previous_phase_writes: previous.map(|p| p.1) };
                self.log.mark_phase(Some(vcpu), &name, detail.to_json());
                ExitAction::Continue
            }
            PORT_DONE => {
                let last = self.close_phase(vcpu);
                self.log.record(
                    Some(vcpu),
                    "done",
                    "done",
                    DoneDetail { last_phase_writes: last.map(|p| p.1) }.to_json(),
                );
                ExitAction::Done
            }
            _ => {
                self.log.record(
                    Some(vcpu),
                    "note",
                    "unexpected port write",
                    serde_json::json!({ "port": port, "value": value }),
                );
                ExitAction::Continue
            }
        }
    }
}

/// Reconstructs the phase-final write counts per vCPU from a trace's guest log.
pub fn final_counts_from_log(
    events: &[crate::trace::GuestEvent],
    vcpus: usize,
    phases: usize,
) -> Vec<Vec<Option<u64>>> {
    let mut counts = vec![vec![None; phases]; vcpus];
    for e in events {
        let Some(v) = e.vcpu.map(|v| v as usize).filter(|&v| v < vcpus) else { continue };
        match e.kind.as_str() {
            "phase" => {
                let Some(d) = PhaseDetail::of(e) else { continue };
                let idx = d.phase_index as usize;
                if let (Some(w), true) = (d.previous_phase_writes, idx > 0 && idx <= phases) {
                    counts[v][idx - 1] = Some(w);
                }
            }
            "done" => {
                if let Some(w) = DoneDetail::of(e).and_then(|d| d.last_phase_writes) {
                    counts[v][phases - 1] = Some(w);
                }
            }
            _ => {}
        }
    }
    counts
}
