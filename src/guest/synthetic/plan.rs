//! Where the synthetic guest keeps things, and which page its write number `j` lands on.
//!
//! [`PhasePlan::page_of`] is the ground truth: the guest's machine code computes the
//! same function, and tests compare recorded bitmaps with it page for page.

use super::spec::{Pattern, WorkloadSpec, WriteRate, PAGE_SIZE, SYSTEM_AREA_BYTES};
use serde::Serialize;

// The system area, [0, 2 MiB): the guest's own pages.
/// The guest's GDT.
pub const GDT_ADDR: u64 = 0x1000;
/// The top-level page table.
pub const PML4_ADDR: u64 = 0x2000;
/// The page-directory-pointer table.
pub const PDPT_ADDR: u64 = 0x3000;
/// The 4 KiB page table of the system area.
pub const SYSTEM_PT_ADDR: u64 = 0x4000;
/// One page directory per GiB of memory, 256 at most.
pub const PD_ADDR: u64 = 0x10000;
/// The guest's code.
pub const CODE_ADDR: u64 = 0x120000;
/// Per-vCPU parameters: a header and one entry per phase.
pub const PARAMS_ADDR: u64 = 0x130000;
/// The end of the parameter area.
pub const PARAMS_END: u64 = 0x1F0000;
/// The only page the guest writes outside its working set: one 64-byte slot per vCPU.
pub const CONTROL_PAGE: u64 = 0x1F0000;
/// Bytes of the control page per vCPU.
pub const CONTROL_SLOT_BYTES: u64 = 64;

/// Port I/O the guest uses to talk to the VMM (data is 32-bit `eax`).
pub const PORT_PHASE: u16 = 0x0DA0;
/// Port: idle for `eax` TSC ticks.
pub const PORT_IDLE: u16 = 0x0DA1;
/// Port: this vCPU is done.
pub const PORT_DONE: u16 = 0x0DA2;

/// The pacing period: the vCPU is busy for `cpu` of each period and idles for the rest.
pub const PERIOD_NS: u64 = 1_000_000;

/// Bytes of a vCPU's parameter header.
pub const HEADER_BYTES: u64 = 64;
/// Bytes of one phase's parameters.
pub const PHASE_ENTRY_BYTES: u64 = 128;

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
const MIX1: u64 = 0xBF58_476D_1CE4_E5B9;
const MIX2: u64 = 0x94D0_49BB_1331_11EB;

/// splitmix64's finaliser; the guest computes exactly this.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(MIX1);
    z = (z ^ (z >> 27)).wrapping_mul(MIX2);
    z ^ (z >> 31)
}

/// The progress word a vCPU publishes after every write is `phase << 48 | writes_in_phase`.
pub fn decode_progress(word: u64) -> (u64, u64) {
    (word >> 48, word & ((1 << 48) - 1))
}

/// Where and how fast one vCPU writes in one phase.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PhasePlan {
    /// Which page each write goes to.
    pub pattern: Pattern,
    /// The PRNG key of the random patterns.
    pub key: u64,
    /// First page (guest-physical page number) of the working set.
    pub base_page: u64,
    /// Pages in this vCPU's share of the working set.
    pub ws_pages: u64,
    /// Pages in its hot part (hot/cold).
    pub hot_pages: u64,
    /// First page of its cold part.
    pub cold_base_page: u64,
    /// Pages in its cold part.
    pub cold_pages: u64,
    /// A write goes to the hot part when the low 32 bits of its random word are below this.
    pub hot_threshold: u64,
    /// Page-writes per second for this vCPU; `None` means as fast as it can.
    pub writes_per_sec: Option<f64>,
    /// Fraction of each pacing period the vCPU is busy.
    pub cpu: f64,
    /// The phase's length.
    pub duration_ns: u64,
}

impl PhasePlan {
    /// The guest-physical page number of this vCPU's write number `j` (from 0) in the phase.
    pub fn page_of(&self, j: u64) -> u64 {
        if self.pattern == Pattern::Sequential {
            return self.base_page + j % self.ws_pages;
        }
        let u = mix64(self.key.wrapping_add((j + 1).wrapping_mul(GAMMA)));
        let pick = |n: u64| ((u >> 32) * n) >> 32;
        match self.pattern {
            Pattern::Random => self.base_page + pick(self.ws_pages),
            _ if (u & 0xFFFF_FFFF) < self.hot_threshold => self.base_page + pick(self.hot_pages),
            _ => self.cold_base_page + pick(self.cold_pages),
        }
    }

    /// False for a phase that writes nothing.
    pub fn writes(&self) -> bool {
        self.writes_per_sec != Some(0.0)
    }
}

/// Every vCPU's plan for every phase: `plans[vcpu][phase]`.
#[derive(Debug, Clone, Serialize)]
pub struct GuestPlan {
    /// Guest RAM.
    pub mem_bytes: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Pages of the arena each vCPU owns.
    pub slice_pages: u64,
    /// `plans[vcpu][phase]`.
    pub plans: Vec<Vec<PhasePlan>>,
}

/// A spec whose plan does not fit the guest.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PlanError(pub String);

impl GuestPlan {
    /// Every vCPU's plan for `spec`.
    pub fn new(spec: &WorkloadSpec) -> Result<Self, PlanError> {
        let vcpus = spec.vcpus as u64;
        let params_bytes = vcpus * (HEADER_BYTES + spec.phases.len() as u64 * PHASE_ENTRY_BYTES);
        if params_bytes > PARAMS_END - PARAMS_ADDR {
            return Err(PlanError(format!(
                "`phase`: {} phases on {} vCPUs do not fit the guest's parameter area; use fewer phases or vCPUs",
                spec.phases.len(),
                vcpus
            )));
        }
        let arena_pages = (spec.mem_bytes - SYSTEM_AREA_BYTES) / PAGE_SIZE;
        let slice_pages = arena_pages / vcpus;
        let mut plans = Vec::new();
        for v in 0..vcpus {
            let slice_base = SYSTEM_AREA_BYTES / PAGE_SIZE + v * slice_pages;
            let mut row = Vec::new();
            for (p, phase) in spec.phases.iter().enumerate() {
                let ws_pages = (phase.working_set_bytes / PAGE_SIZE / vcpus).max(1);
                let hot_pages = ((ws_pages as f64 * phase.hot_fraction).round() as u64).clamp(1, ws_pages.max(2) - 1);
                let hot_threshold = ((phase.hot_share * 4294967296.0).round() as u64).min(1 << 32);
                let writes_per_sec = match phase.rate {
                    WriteRate::Max => None,
                    WriteRate::BytesPerSec(b) => Some(b / PAGE_SIZE as f64 / vcpus as f64),
                };
                row.push(PhasePlan {
                    pattern: phase.pattern,
                    key: mix64(spec.seed.wrapping_mul(GAMMA) ^ (v << 32 | p as u64)),
                    base_page: slice_base,
                    ws_pages,
                    hot_pages,
                    cold_base_page: slice_base + hot_pages,
                    cold_pages: ws_pages.saturating_sub(hot_pages).max(1),
                    hot_threshold,
                    writes_per_sec,
                    cpu: phase.cpu,
                    duration_ns: phase.duration.as_nanos() as u64,
                });
            }
            plans.push(row);
        }
        Ok(GuestPlan { mem_bytes: spec.mem_bytes, vcpus: spec.vcpus, slice_pages, plans })
    }

    /// Where vCPU `vcpu`'s parameters are.
    pub fn params_addr(&self, vcpu: u32) -> u64 {
        let phases = self.plans[0].len() as u64;
        PARAMS_ADDR + vcpu as u64 * (HEADER_BYTES + phases * PHASE_ENTRY_BYTES)
    }

    /// Where vCPU `vcpu` publishes its progress word.
    pub fn control_addr(vcpu: u32) -> u64 {
        CONTROL_PAGE + vcpu as u64 * CONTROL_SLOT_BYTES
    }

    /// Pages the guest may dirty besides its working sets: the control page.
    pub fn own_pages() -> Vec<u64> {
        vec![CONTROL_PAGE / PAGE_SIZE]
    }

    /// Adds to `out` the pages vCPU `vcpu` wrote between two progress words (`from` inclusive,
    /// `to` exclusive), given each phase's final write count (`None` if not yet known).
    pub fn pages_between(
        &self,
        vcpu: usize,
        from: u64,
        to: u64,
        final_counts: &[Option<u64>],
        out: &mut impl FnMut(u64),
    ) {
        let (p0, j0) = decode_progress(from);
        let (p1, j1) = decode_progress(to);
        for p in p0..=p1 {
            let plan = &self.plans[vcpu][p as usize];
            let start = if p == p0 { j0 } else { 0 };
            let end = if p == p1 {
                j1
            } else {
                final_counts.get(p as usize).copied().flatten().expect("final write count of a finished phase")
            };
            if plan.pattern == Pattern::Sequential && end.saturating_sub(start) >= plan.ws_pages {
                (0..plan.ws_pages).for_each(|k| out(plan.base_page + k));
            } else {
                (start..end).for_each(|j| out(plan.page_of(j)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::synthetic::spec::WorkloadSpec;

    #[test]
    fn mix_matches_reference_splitmix64() {
        // splitmix64 seeded with 0: its first output.
        assert_eq!(mix64(GAMMA), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn pages_stay_in_the_working_set() {
        let spec = WorkloadSpec::parse(
            "mem=\"64MiB\"\nvcpus=2\n[[phase]]\nduration=\"1s\"\nworking_set=\"8MiB\"\nrate=\"max\"\npattern=\"hotcold\"\nhot_fraction=0.25\nhot_share=0.75",
            None,
            None,
        )
        .unwrap();
        let plan = GuestPlan::new(&spec).unwrap();
        for v in 0..2 {
            let pp = &plan.plans[v][0];
            assert_eq!(pp.ws_pages, 1024);
            assert_eq!(pp.hot_pages, 256);
            let mut hot = 0;
            for j in 0..100_000 {
                let page = pp.page_of(j);
                assert!(page >= pp.base_page && page < pp.base_page + pp.ws_pages);
                hot += (page < pp.cold_base_page) as u32;
            }
            assert!((hot as f64 / 100_000.0 - 0.75).abs() < 0.01, "{hot}");
        }
        assert!(plan.plans[1][0].base_page >= plan.plans[0][0].base_page + 1024);
    }
}
