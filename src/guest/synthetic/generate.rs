//! A synthetic trace without KVM: the exact pages the synthetic guest would write, at its
//! nominal rates, cut into intervals and fed through the recorder's own accounting and trace
//! writer. It is for testing and benchmarking everything downstream of the recorder, on any
//! machine; a recorded trace of the same spec differs only in timing.

use super::plan::{GuestPlan, CONTROL_PAGE};
use super::spec::{WorkloadSpec, WriteRate};
use super::{DoneDetail, PhaseDetail};
use crate::accounting::IntervalAccounting;
use crate::sampler::Harvest;
use crate::trace::{
    self, DeadlineCounts, EndReason, GuestEvent, Manifest, MemorySlot, PageRange, TraceStatus, TraceWriter,
};
use crate::units::PAGE_SIZE;
use anyhow::{bail, Context};
use std::path::Path;
use std::time::Duration;

/// How to cut the spec's writes into a trace.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// The harvest interval.
    pub interval: Duration,
    /// The migration speed of the SimGrid columns, bytes per second.
    pub migration_speed: f64,
    /// The trace's id; default: derived from the spec, so the same spec gives the same trace.
    pub trace_id: Option<String>,
    /// Called every so many intervals with the count so far.
    pub progress: Option<fn(u64)>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            interval: super::spec::DEFAULT_INTERVAL,
            migration_speed: super::spec::DEFAULT_MIGRATION_SPEED_BYTES_PER_S,
            trace_id: None,
            progress: None,
        }
    }
}

/// Writes the trace of the synthetic spec `spec_text` into `dir` (which must not exist or be
/// empty) and returns its manifest. Every phase needs a rate (not `max`): the writes are
/// spread evenly over the phase, split between the vCPUs, and each interval's progress words
/// are exact, so `verify` checks a generated trace as it checks a recorded one.
pub fn generate(dir: &Path, spec_text: &str, opts: &GenerateOptions) -> anyhow::Result<Manifest> {
    let spec = WorkloadSpec::parse(spec_text, None, None).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(i) = spec.phases.iter().position(|p| p.rate == WriteRate::Max) {
        bail!("phase[{i}].rate: a generated trace needs a rate, not `max`");
    }
    let plan = GuestPlan::new(&spec)?;
    let interval_ns = opts.interval.as_nanos() as u64;
    if interval_ns == 0 {
        bail!("the interval must be longer than 0");
    }
    let slot = MemorySlot { slot: 0, guest_phys_addr: 0, size_bytes: spec.mem_bytes };
    let trace_id = opts.trace_id.clone().unwrap_or_else(|| {
        let digest = crate::guest::linux::kit::sha256_hex(spec_text.as_bytes());
        digest[..32].to_string()
    });
    let mut manifest = Manifest::new(trace_id, opts.interval, vec![slot], spec.vcpus, opts.migration_speed);
    manifest.host_kernel = "generated".into();
    manifest.host_name = "generated".into();
    manifest.exact_cut = true;
    manifest.guest = serde_json::json!({
        "kind": "synthetic",
        "generated": true,
        "spec_toml": spec_text,
        "spec": spec,
        "control_page": CONTROL_PAGE,
        "system_area_bytes": super::spec::SYSTEM_AREA_BYTES,
    });
    manifest.guest_own_pages = GuestPlan::own_pages();
    manifest.initial_nonzero_pages = vec![PageRange { first: 0, count: super::spec::SYSTEM_AREA_BYTES / PAGE_SIZE }];
    trace::check_manifest(&manifest)?;
    trace::prepare_dir(dir)?;
    let mut writer = TraceWriter::create(dir, manifest)?;
    let mut accounting = IntervalAccounting::new(writer.manifest(), trace::ZSTD_LEVEL)?;

    let vcpus = spec.vcpus as usize;
    let words = spec.mem_bytes.div_ceil(PAGE_SIZE).div_ceil(64) as usize;
    let control = CONTROL_PAGE / PAGE_SIZE;
    // Phase `p` runs over [starts[p], starts[p + 1]) ns; a vCPU's writes in it are due at
    // (j + 1) / writes_per_s.
    let mut starts = vec![0u64];
    for p in &spec.phases {
        starts.push(starts.last().copied().unwrap_or(0) + p.duration.as_nanos() as u64);
    }
    let end_ns = *starts.last().unwrap_or(&0);
    let writes_by = |p: usize, v: usize, t: u64| -> u64 {
        let wps = plan.plans[v][p].writes_per_sec.unwrap_or(0.0);
        let into = t.clamp(starts[p], starts[p + 1]) - starts[p];
        (into as f64 / 1e9 * wps).floor() as u64
    };
    let phase_at = |t: u64| (0..spec.phases.len()).rfind(|&p| starts[p] <= t).unwrap_or(0);
    let progress_word = |t: u64, v: usize| -> u64 {
        let p = if t >= end_ns { spec.phases.len() - 1 } else { phase_at(t) };
        (p as u64) << 48 | writes_by(p, v, t)
    };
    let (mut k, mut t) = (0u64, 0u64);
    while t < end_ns {
        let end = (t + interval_ns).min(end_ns);
        let mut bitmap = vec![0u64; words];
        let mut events = Vec::new();
        for v in 0..vcpus {
            for p in phase_at(t)..=phase_at(end.saturating_sub(1)) {
                let (from, to) = (writes_by(p, v, t), writes_by(p, v, end));
                for j in from..to {
                    let page = plan.plans[v][p].page_of(j);
                    bitmap[(page / 64) as usize] |= 1 << (page % 64);
                }
                if to > from {
                    bitmap[(control / 64) as usize] |= 1 << (control % 64);
                }
            }
            // The phase marks and `done` that fall in this interval, as the guest logs them.
            for p in 0..spec.phases.len() {
                let at = if p + 1 < spec.phases.len() { starts[p + 1] } else { end_ns };
                if at <= t || at > end {
                    continue;
                }
                let writes = writes_by(p, v, at);
                events.push(if p + 1 < spec.phases.len() {
                    GuestEvent {
                        t_s: at as f64 / 1e9,
                        vcpu: Some(v as u32),
                        kind: "phase".into(),
                        name: spec.phases[p + 1].name.clone(),
                        detail: PhaseDetail { phase_index: p as u64 + 1, previous_phase_writes: Some(writes) }
                            .to_json(),
                    }
                } else {
                    GuestEvent {
                        t_s: at as f64 / 1e9,
                        vcpu: Some(v as u32),
                        kind: "done".into(),
                        name: "done".into(),
                        detail: DoneDetail { last_phase_writes: Some(writes) }.to_json(),
                    }
                });
            }
        }
        let mut h = Harvest::new(k, t, end, vec![bitmap]);
        // The phase of the interval's last instant: its writes are that phase's.
        let phase = &spec.phases[phase_at(end - 1)];
        h.phase = phase.name.clone();
        h.vcpu_cpu_ns = vec![((end - t) as f64 * phase.cpu) as u64; vcpus];
        h.progress_before = (0..vcpus).map(|v| progress_word(end, v)).collect();
        h.progress_after = h.progress_before.clone();
        h.events = events;
        h.partial = end - t < interval_ns;
        let i = accounting.account(h)?;
        writer.append(&i.row, &i.blobs, &i.events, &i.console)?;
        k += 1;
        t = end;
        if let Some(p) = opts.progress.filter(|_| k.is_multiple_of(6000)) {
            p(k);
        }
    }
    // No sampler: every harvest is on its deadline.
    writer.manifest_mut().timing.sampler_counts = Some(DeadlineCounts { harvests: k, skipped_deadlines: 0 });
    let done = writer
        .finish(TraceStatus::Complete, EndReason::WorkloadDone, None)
        .context("finalising the generated trace")?;
    Ok(done.manifest)
}
