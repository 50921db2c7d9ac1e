//! Bitmap bytes on disk per interval, per write pattern.

use super::{is_steady, pages, run, spec, BenchOptions, BenchReport};
use serde::Serialize;
use std::time::Duration;

/// One row of the compression table.
#[derive(Debug, Serialize)]
pub struct CompressionRow {
    /// The workload's pattern.
    pub pattern: String,
    /// Fraction of pages dirty per interval.
    pub dirty_fraction: f64,
    /// Raw bitmap bytes per interval.
    pub raw_bytes_per_interval: f64,
    /// Stored (compressed) bytes per interval.
    pub stored_bytes_per_interval: f64,
    /// Raw over stored.
    pub ratio: f64,
}

/// Bitmap bytes on disk for three patterns at about 1 % dirty per interval.
pub fn compression(opts: &BenchOptions, report: &mut BenchReport) -> anyhow::Result<()> {
    // About 1% of memory dirtied per 100 ms interval.
    let per_interval = opts.mem as f64 * 0.01;
    let rate = format!("{}", per_interval * 10.0);
    for pattern in ["sequential", "random", "hotcold"] {
        let ws = match pattern {
            "sequential" => pages(opts.mem as f64 * 0.5),
            _ => pages(opts.mem as f64 * 0.9),
        };
        let text = spec(opts.mem, ws, &format!("{rate}B/s"), pattern, opts.seconds);
        let (_, trace) = run(opts, &format!("compress-{pattern}"), &text, Duration::from_millis(100), false)?;
        let (mut raw, mut stored, mut n) = (0.0, 0.0, 0.0);
        let total_pages = opts.mem as f64 / 4096.0;
        let mut dirty = 0.0;
        for item in trace.intervals()? {
            let (row, bitmaps) = item?;
            if !is_steady(&row) {
                continue;
            }
            for s in &bitmaps.slots {
                raw += (s.num_pages.div_ceil(64) * 8) as f64;
                stored += s.stored_bytes as f64;
            }
            dirty += row.dirty_pages as f64 / total_pages;
            n += 1.0;
        }
        report.compression.push(CompressionRow {
            pattern: pattern.into(),
            dirty_fraction: dirty / n,
            raw_bytes_per_interval: raw / n,
            stored_bytes_per_interval: stored / n,
            ratio: raw / stored,
        });
    }
    Ok(())
}
