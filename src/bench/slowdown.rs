//! Guest slowdown from tracking, against the write-protect fault floor.

use super::{guest_writes, run, spec, BenchOptions, BenchReport};
use serde::Serialize;
use std::time::Duration;

/// One row of the slowdown table.
#[derive(Debug, Serialize)]
pub struct SlowdownRow {
    /// The run's working set.
    pub working_set_bytes: u64,
    /// `None`: untracked.
    pub interval_s: Option<f64>,
    /// Page-writes per second the guest achieved.
    pub writes_per_s: f64,
    /// Untracked writes per second over these.
    pub slowdown: f64,
    /// Write-protect faults per second: distinct pages per interval, summed, over time.
    pub faults_per_s: f64,
    /// Cost of one write-protect fault, from the most fault-bound run.
    pub implied_fault_cost_s: f64,
    /// Share of each second that writing at the untracked speed plus the faults account for
    /// (1.0: the slowdown is exactly the fault floor).
    pub floor_explains: f64,
}

/// The guest's write rate untracked and tracked at 1 s, 100 ms and 10 ms, for a working set
/// that one interval rewrites many times (16 MiB) and one it cannot cover (256 MiB). The floor:
/// one write-protect fault per page per interval. Its cost is taken from the run with the most
/// faults, and each run's second is then split into writing and faulting to check the floor
/// accounts for the whole slowdown.
pub fn slowdown(opts: &BenchOptions, report: &mut BenchReport) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for ws in [16u64 << 20, 256 << 20] {
        let text = spec(opts.mem, ws.min(opts.mem / 2), "max", "sequential", opts.seconds);
        let mut base = None;
        for interval in [None, Some(1000u64), Some(100), Some(10)] {
            let iv = Duration::from_millis(interval.unwrap_or(100));
            let name = format!("slowdown-{}-{}", ws >> 20, interval.map_or("untracked".into(), |i| format!("{i}ms")));
            let (_, trace) = run(opts, &name, &text, iv, interval.is_none())?;
            let rates = trace.rates()?;
            let elapsed = rates.last().map_or(0.0, |r| r.t_end_s);
            let writes_per_s = guest_writes(&trace)? as f64 / elapsed;
            let faults: u64 = rates.iter().map(|r| r.dirty_pages.saturating_sub(1)).sum();
            let base_rate = *base.get_or_insert(writes_per_s);
            rows.push(SlowdownRow {
                working_set_bytes: ws,
                interval_s: interval.map(|i| i as f64 / 1e3),
                writes_per_s,
                slowdown: base_rate / writes_per_s,
                faults_per_s: faults as f64 / elapsed,
                implied_fault_cost_s: 0.0,
                floor_explains: 0.0,
            });
        }
    }
    // Per-fault cost from the most fault-bound run; then how much of each second it explains.
    let worst = rows
        .iter()
        .max_by(|a, b| a.faults_per_s.total_cmp(&b.faults_per_s))
        .map(|r| (r.working_set_bytes, r.faults_per_s, r.writes_per_s));
    let base_of = |ws: u64, rows: &[SlowdownRow]| {
        rows.iter().find(|r| r.working_set_bytes == ws && r.interval_s.is_none()).map_or(1.0, |r| r.writes_per_s)
    };
    if let Some((ws, faults, writes)) = worst {
        let cost = (1.0 - writes / base_of(ws, &rows)) / faults;
        let bases: Vec<f64> = rows.iter().map(|r| base_of(r.working_set_bytes, &rows)).collect();
        for (r, base) in rows.iter_mut().zip(bases) {
            r.implied_fault_cost_s = cost;
            r.floor_explains = r.writes_per_s / base + r.faults_per_s * cost;
        }
    }
    report.slowdown = rows;
    Ok(())
}
