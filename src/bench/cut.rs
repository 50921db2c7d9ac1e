//! What `--exact-cut` costs.

use super::{guest_writes, pages, run_with, spec, BenchOptions, BenchReport};
use serde::Serialize;
use std::time::Duration;

/// One row of the exact-cut table.
#[derive(Debug, Serialize)]
pub struct ExactCutRow {
    /// The harvest interval (s).
    pub interval_s: f64,
    /// Wall time to take every vCPU out of the guest, per harvest.
    pub pause_mean_s: f64,
    /// Achieved page-writes per second with the exact cut, over without it.
    pub write_rate_ratio: f64,
}

/// What `--exact-cut` costs: the pause per harvest, and the guest's write rate with it.
pub fn exact_cut(opts: &BenchOptions, report: &mut BenchReport) -> anyhow::Result<()> {
    let text = spec(opts.mem, pages(opts.mem as f64 / 4.0), "max", "random", opts.seconds);
    for ms in [10u64, 100] {
        let interval = Duration::from_millis(ms);
        let mut rates = Vec::new();
        let mut pause = 0.0;
        for cut in [false, true] {
            let (summary, trace) =
                run_with(opts, &format!("cut-{ms}-{cut}"), &text, interval, |ro| ro.settings.exact_cut = cut)?;
            let elapsed = trace.rates()?.last().map_or(1.0, |r| r.t_end_s);
            rates.push(guest_writes(&trace)? as f64 / elapsed);
            if cut {
                pause = summary.cost.map_or(0.0, |c| c.pause_mean_s);
            }
        }
        report.exact_cut.push(ExactCutRow {
            interval_s: interval.as_secs_f64(),
            pause_mean_s: pause,
            write_rate_ratio: rates[1] / rates[0],
        });
    }
    Ok(())
}
