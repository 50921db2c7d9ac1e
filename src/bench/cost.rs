//! Harvest cost per GiB of guest memory: the sampler's own work and the writer's.

use super::{median, pages, run, spec, steady, BenchOptions, BenchReport, GIB};
use crate::trace::Trace;
use serde::Serialize;
use std::path::Path;
use std::time::Duration;

/// One row of the harvest-cost table.
#[derive(Debug, Serialize)]
pub struct HarvestCostRow {
    /// The fraction of pages the run meant to dirty per interval.
    pub dirty_fraction_target: f64,
    /// The fraction it dirtied.
    pub dirty_fraction_measured: f64,
    /// `KVM_GET_DIRTY_LOG` time per GiB of guest (median, s).
    pub ioctl_s_per_gib: f64,
    /// The recorder's own work per GiB: sampler and writer (s).
    pub own_s_per_gib: f64,
    /// The sampler's own work per GiB (s).
    pub sampler_own_s_per_gib: f64,
    /// Statistics, compression and journal append, measured by replaying the recorded bitmaps.
    pub writer_s_per_gib: f64,
    /// Own work over the ioctl's time.
    pub own_over_ioctl: f64,
}

/// Feeds a recorded trace's bitmaps through fresh accounting and a fresh writer, alone on the
/// machine, and returns the median wall time of one interval (statistics, compression,
/// journal), in seconds.
fn writer_cost(trace: &Trace, scratch: &Path) -> anyhow::Result<f64> {
    crate::trace::prepare_dir(scratch)?;
    let mut manifest = trace.manifest.clone();
    manifest.status = crate::trace::TraceStatus::Recording;
    let mut writer = crate::trace::TraceWriter::create(scratch, manifest)?;
    let mut accounting = crate::accounting::IntervalAccounting::new(writer.manifest(), crate::trace::ZSTD_LEVEL)?;
    let mut times = Vec::new();
    for item in trace.intervals()? {
        let (row, bm) = item?;
        let mut h = crate::sampler::Harvest::new(
            row.interval,
            (row.t_start_s * 1e9) as u64,
            (row.t_end_s * 1e9) as u64,
            bm.slots.into_iter().map(|s| s.words).collect(),
        );
        h.vcpu_cpu_ns = vec![0; row.cpu_util_per_vcpu.len()];
        (h.progress_before, h.progress_after, h.phase, h.partial) =
            (row.guest_progress_before, row.guest_progress_after, row.phase, row.partial);
        let t = crate::clock::now_ns();
        let i = accounting.account(h)?;
        writer.append(&i.row, &i.blobs, &i.events, &i.console)?;
        times.push((crate::clock::now_ns() - t) as f64 / 1e9);
    }
    drop(writer);
    let _ = std::fs::remove_dir_all(scratch);
    Ok(median(times))
}

/// Harvest cost per GiB at three dirty fractions.
pub fn harvest_cost(opts: &BenchOptions, report: &mut BenchReport) -> anyhow::Result<()> {
    let gib = opts.mem as f64 / GIB;
    let arena = opts.mem as f64 - 2.0 * 1024.0 * 1024.0;
    for frac in [0.001, 0.01, 0.1] {
        let ws = pages(opts.mem as f64 * frac).min(arena as u64);
        let text = spec(opts.mem, ws, "max", "sequential", opts.seconds);
        let (summary, trace) = run(opts, &format!("cost-{frac}"), &text, Duration::from_millis(100), false)?;
        let rows = steady(&trace)?;
        let total_pages = opts.mem as f64 / 4096.0;
        let measured = rows.iter().map(|r| r.dirty_pages as f64).sum::<f64>() / rows.len().max(1) as f64 / total_pages;
        let ioctl = median(rows.iter().map(|r| r.harvest_ioctl_s).collect());
        let sampler_own = summary.cost.expect("record reports its costs").sampler_own_mean_s;
        let writer = writer_cost(&trace, &opts.work_dir.join("writer-scratch"))?;
        report.harvest_cost.push(HarvestCostRow {
            dirty_fraction_target: frac,
            dirty_fraction_measured: measured,
            ioctl_s_per_gib: ioctl / gib,
            own_s_per_gib: (sampler_own + writer) / gib,
            sampler_own_s_per_gib: sampler_own / gib,
            writer_s_per_gib: writer / gib,
            own_over_ioctl: (sampler_own + writer) / ioctl,
        });
    }
    Ok(())
}
