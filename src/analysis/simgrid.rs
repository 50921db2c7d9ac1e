//! `dirtytrace simgrid`: SimGrid's live-migration parameters, fitted to a trace.
//!
//! SimGrid's model (`VmLiveMigration.cpp`): a VM dirties
//! `flops × migration_speed × dp_intensity / host_speed` bytes per precopy round, at most
//! `working_set_memory` bytes. Dirtying is proportional to CPU work: a VM keeping `u` cores
//! busy dirties `u × dp_intensity × migration_speed` bytes per second. The estimates, exactly
//! as `schemas/analysis.md` states them:
//!
//! - `ramsize_bytes`: the manifest's guest RAM.
//! - `dp_intensity = Σ dirty_bytes / (migration_speed × Σ cpu_util × duration_s)` over the
//!   selected intervals: the dirty rate per core-second of CPU work, as a fraction of the
//!   migration speed.
//! - `working_set_memory_bytes`: the most distinct bytes dirtied within any window as long as
//!   one full-RAM precopy round at the migration speed (`ramsize / migration_speed` seconds).
//!
//! [`model`] computes SimGrid's rounds for given parameters; [`start`] fits the parameters of
//! one migration that starts at a given time, rather than of the whole trace.

pub mod model;
pub mod start;

use super::summary::SummaryBuilder;
use super::{bad, check_phase, for_each_interval, PageSpace, Result};
use crate::pagestats::SlidingDistinct;
use crate::trace::Trace;
use crate::units::MIB;
use serde::Serialize;
use std::ops::ControlFlow;

/// What `simgrid` is asked for.
#[derive(Debug, Clone, Default)]
pub struct SimgridOptions {
    /// Bytes/s; `None`: the speed the trace was recorded with (`manifest.json`).
    pub migration_speed: Option<f64>,
    /// Fit to this phase's intervals only.
    pub phase: Option<String>,
}

/// The integer arguments of `sg_vm_create_migratable(pm, name, cores, ramsize, mig_netspeed,
/// dp_intensity)`. That call also sets the working set to 90 % of RAM, not the fitted value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CreateMigratable {
    /// `ramsize`, MiB.
    pub ramsize_mib: u64,
    /// `mig_netspeed`, MiB/s.
    pub mig_netspeed_mib_per_s: u64,
    /// `dp_intensity`, percent.
    pub dp_intensity_percent: u64,
}

/// SimGrid's live-migration parameters, fitted to a trace (`schemas/analysis.md`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimgridParams {
    /// SimGrid's `ramsize`: guest RAM in bytes.
    pub ramsize_bytes: u64,
    /// Fraction of the migration speed dirtied per second per core of CPU load.
    pub dp_intensity: f64,
    /// SimGrid's working-set memory, bytes.
    pub working_set_memory_bytes: u64,
    /// SimGrid's migration speed, bytes per second.
    pub migration_speed_bytes_per_s: f64,
    /// The load to run the VM at in SimGrid: mean cores busy over the selected intervals.
    pub cpu_util: f64,
    /// The guest's vCPUs.
    pub vcpus: u32,
    /// `Σ dirty_bytes / Σ duration_s`: what the VM dirties per second at `cpu_util`.
    pub dirty_rate_bytes_per_s: f64,
    /// `ramsize_bytes / migration_speed_bytes_per_s`: the working set's window.
    pub working_set_window_s: f64,
    /// False when no window of that length fits inside the trace (or a run of the phase):
    /// the working set is then the most dirtied in the longest stretch there is.
    pub working_set_window_covered: bool,
    /// The same, as `sg_vm_create_migratable`'s integers.
    pub create_migratable: CreateMigratable,
    /// The trace's id.
    pub trace_id: String,
    /// The phase fitted to, if one was chosen.
    pub phase: Option<String>,
    /// Intervals fitted to.
    pub intervals: u64,
    /// Their total length, in seconds.
    pub duration_s: f64,
    /// Anything a modeller should know about these numbers.
    pub notes: Vec<String>,
}

/// Fits SimGrid's parameters in one pass over the trace's bitmaps.
pub fn fit(trace: &Trace, opts: &SimgridOptions) -> Result<SimgridParams> {
    let m = &trace.manifest;
    let speed = opts.migration_speed.unwrap_or(m.migration_speed_bytes_per_s);
    crate::units::check_speed(speed).map_err(|e| bad("--migration-speed", e.to_string()))?;
    super::require_intervals(trace, "fit")?;
    check_phase(trace, opts.phase.as_deref())?;
    let space = PageSpace::new(&m.slots);
    let window_s = m.ramsize_bytes as f64 / speed;
    let interval_s = m.interval_s;
    let eff = SummaryBuilder::effective_window(window_s, interval_s);
    let (mut bytes, mut cpu_s, mut duration_s, mut intervals) = (0u64, 0.0f64, 0.0f64, 0u64);
    let mut tracker: Option<SlidingDistinct> = None;
    let (mut run_start, mut best, mut covered) = (0.0f64, 0u64, false);
    let mut last_selected = false;
    for_each_interval(trace, |row, pages| {
        if opts.phase.as_ref().is_some_and(|p| *p != row.phase) {
            last_selected = false;
            return Ok(ControlFlow::Continue(()));
        }
        intervals += 1;
        bytes += row.dirty_bytes;
        cpu_s += row.cpu_util * row.duration_s;
        duration_s += row.duration_s;
        if !last_selected || tracker.is_none() {
            tracker = Some(SlidingDistinct::new(space.total_pages, eff));
            run_start = row.t_start_s;
        }
        last_selected = true;
        let t = tracker.as_mut().expect("created above");
        t.push_slice(row.t_end_s, pages);
        best = best.max(t.in_window());
        covered |= row.t_end_s - window_s >= run_start - interval_s / 2.0 - 1e-9;
        Ok(ControlFlow::Continue(()))
    })?;

    let mut notes = Vec::new();
    let dirty_rate = if duration_s > 0.0 { bytes as f64 / duration_s } else { 0.0 };
    let cpu_util = if duration_s > 0.0 { cpu_s / duration_s } else { 0.0 };
    let dp_intensity = if cpu_s > 0.0 { bytes as f64 / (speed * cpu_s) } else { 0.0 };
    if cpu_s <= 0.0 && bytes > 0 {
        notes.push(
            "the vCPUs used no CPU time, yet pages were dirtied: SimGrid dirties memory only in proportion to CPU work, so it cannot model this (dp_intensity set to 0)"
                .into(),
        );
    }
    if dp_intensity > 1.0 {
        notes.push(format!(
            "dp_intensity {dp_intensity:.3} > 1: at full load the VM dirties memory faster than the migration speed, so SimGrid's precopy cannot converge before the working-set cap"
        ));
    }
    if !covered {
        notes.push(format!(
            "the working-set window ({window_s:.3} s) is longer than the trace{}: working_set_memory_bytes is the most dirtied in the longest stretch recorded, a lower bound",
            if opts.phase.is_some() { " phase's runs" } else { "" }
        ));
    }
    if window_s < interval_s {
        notes.push(format!(
            "the working-set window ({window_s:.4} s) is shorter than one interval ({interval_s} s): working_set_memory_bytes is one interval's distinct bytes, an overestimate"
        ));
    }
    let working_set = best * m.page_size;
    Ok(SimgridParams {
        ramsize_bytes: m.ramsize_bytes,
        dp_intensity,
        working_set_memory_bytes: working_set,
        migration_speed_bytes_per_s: speed,
        cpu_util,
        vcpus: m.vcpus,
        dirty_rate_bytes_per_s: dirty_rate,
        working_set_window_s: window_s,
        working_set_window_covered: covered,
        create_migratable: CreateMigratable {
            ramsize_mib: (m.ramsize_bytes as f64 / MIB as f64).round() as u64,
            mig_netspeed_mib_per_s: (speed / MIB as f64).round() as u64,
            dp_intensity_percent: (dp_intensity * 100.0).round() as u64,
        },
        trace_id: m.trace_id.clone(),
        phase: opts.phase.clone(),
        intervals,
        duration_s,
        notes,
    })
}

/// What a C or C++ snippet sets, from either fit.
struct Snippet<'a> {
    /// What the parameters were fitted to.
    fitted_to: String,
    ramsize: u64,
    /// What `ramsize` is.
    ramsize_is: &'static str,
    dp_intensity: f64,
    working_set: u64,
    speed: f64,
    cpu_util: f64,
    vcpus: u32,
    create_migratable: Option<&'a CreateMigratable>,
    notes: Vec<String>,
}

impl<'a> From<&'a SimgridParams> for Snippet<'a> {
    fn from(p: &'a SimgridParams) -> Self {
        Snippet {
            fitted_to: format!(
                "trace {}{}",
                p.trace_id,
                p.phase.as_ref().map(|ph| format!(", phase `{ph}`")).unwrap_or_default()
            ),
            ramsize: p.ramsize_bytes,
            ramsize_is: "guest RAM",
            dp_intensity: p.dp_intensity,
            working_set: p.working_set_memory_bytes,
            speed: p.migration_speed_bytes_per_s,
            cpu_util: p.cpu_util,
            vcpus: p.vcpus,
            create_migratable: Some(&p.create_migratable),
            notes: p.notes.clone(),
        }
    }
}

impl<'a> From<&'a start::StartParams> for Snippet<'a> {
    fn from(p: &'a start::StartParams) -> Self {
        let mut notes: Vec<String> = p.fit.errors.iter().map(|e| format!("FIT INVALID: {e}")).collect();
        notes.extend(p.notes.iter().cloned());
        Snippet {
            fitted_to: format!("the migration starting at {} s of trace {}", p.start_s, p.trace_id),
            ramsize: p.round0_bytes,
            ramsize_is: "round 0's bytes, not the guest's RAM",
            dp_intensity: p.dp_intensity,
            working_set: p.working_set_memory_bytes,
            speed: p.migration_speed_bytes_per_s,
            cpu_util: p.cpu_util,
            vcpus: p.vcpus,
            create_migratable: None,
            notes,
        }
    }
}

fn header(p: &Snippet, lang: &str) -> String {
    let mut lines = vec![
        format!("/* SimGrid live-migration parameters fitted by dirtytrace to {} ({lang}).", p.fitted_to),
        " * Call sg_vm_live_migration_plugin_init() before loading the platform.".to_string(),
        format!(" * Load the VM at {:.4} cores: sg_vm_set_bound(vm, {:.4} * host_speed), with", p.cpu_util, p.cpu_util),
        " * enough work to keep it busy: SimGrid dirties memory in proportion to CPU work.".to_string(),
    ];
    if let Some(c) = p.create_migratable {
        lines.push(format!(
            " * Integer form: sg_vm_create_migratable(pm, \"vm\", {}, {}, {}, {}), which sets the",
            p.vcpus.max(1),
            c.ramsize_mib,
            c.mig_netspeed_mib_per_s,
            c.dp_intensity_percent
        ));
        lines.push(" * working set to 90 % of RAM instead of the fitted value.".to_string());
    }
    lines.extend(p.notes.iter().map(|n| format!(" * Note: {n}")));
    lines.push(" */".to_string());
    lines.join("\n") + "\n"
}

fn body(p: &Snippet) -> String {
    format!(
        "  sg_vm_set_ramsize(vm, {}); /* bytes ({:.1} MiB): {} */\n  \
         sg_vm_set_dirty_page_intensity(vm, {:.9}); /* fraction of the migration speed per core of load */\n  \
         sg_vm_set_working_set_memory(vm, {}); /* bytes ({:.1} MiB) */\n  \
         sg_vm_set_migration_speed(vm, {:.1}); /* bytes/s ({:.2} MiB/s) */\n",
        p.ramsize,
        p.ramsize as f64 / MIB as f64,
        p.ramsize_is,
        p.dp_intensity,
        p.working_set,
        p.working_set as f64 / MIB as f64,
        p.speed,
        p.speed / MIB as f64,
    )
}

fn c_code(p: &Snippet) -> String {
    format!(
        "{}#include <stddef.h> /* simgrid/vm.h uses size_t */\n#include <simgrid/vm.h>\n#include <simgrid/plugins/live_migration.h>\n\n\
         void dirtytrace_configure_vm(sg_vm_t vm)\n{{\n{}}}\n",
        header(p, "C"),
        body(p)
    )
}

fn cpp_code(p: &Snippet) -> String {
    format!(
        "{}#include <simgrid/s4u/VirtualMachine.hpp>\n#include <simgrid/vm.h>\n#include <simgrid/plugins/live_migration.h>\n\n\
         void dirtytrace_configure_vm(simgrid::s4u::VirtualMachine* vm)\n{{\n{}}}\n",
        header(p, "C++"),
        body(p)
    )
}

/// A C function that applies the parameters to a VM (SimGrid's C API).
pub fn c_snippet(p: &SimgridParams) -> String {
    c_code(&p.into())
}

/// The same for C++ (s4u): the C functions take an `s4u::VirtualMachine*`.
pub fn cpp_snippet(p: &SimgridParams) -> String {
    cpp_code(&p.into())
}

/// [`c_snippet`] for the parameters of one migration (`--start`): `ramsize` is round 0's bytes.
pub fn start_c_snippet(p: &start::StartParams) -> String {
    c_code(&p.into())
}

/// [`cpp_snippet`] for the parameters of one migration (`--start`).
pub fn start_cpp_snippet(p: &start::StartParams) -> String {
    cpp_code(&p.into())
}
