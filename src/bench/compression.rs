//! Bitmap bytes on disk per interval, per write pattern and density: as stored (each bitmap's
//! encoding chosen by the writer), as `zstd` alone would store them (every bitmap of a
//! version-1 trace), and against the pattern's entropy bound; and the time to decode each.

use super::{is_steady, pages, run, spec, BenchOptions, BenchReport};
use crate::guest::synthetic::plan::GuestPlan;
use crate::guest::synthetic::spec::Pattern;
use crate::guest::synthetic::spec::WorkloadSpec;
use crate::trace::{BitmapDecoder, BitmapEncoder, Encoding, MemorySlot, SlotBlob, ZSTD_LEVEL};
use serde::Serialize;
use std::time::Duration;

/// One row of the compression table.
#[derive(Debug, Serialize)]
pub struct CompressionRow {
    /// The workload's pattern.
    pub pattern: String,
    /// The harvest interval (s).
    pub interval_s: f64,
    /// The fraction of pages the run meant to dirty per interval.
    pub dirty_fraction_target: f64,
    /// Fraction of pages dirty per interval.
    pub dirty_fraction: f64,
    /// Raw bitmap bytes per interval.
    pub raw_bytes_per_interval: f64,
    /// Stored bytes per interval, as the trace holds them.
    pub stored_bytes_per_interval: f64,
    /// Raw over stored.
    pub ratio: f64,
    /// The share of bitmaps stored as `varint-gaps`.
    pub varint_gaps_share: f64,
    /// The same bitmaps, every one stored as `zstd` (format version 1's only encoding).
    pub zstd_only_bytes_per_interval: f64,
    /// Raw over `zstd` alone.
    pub zstd_only_ratio: f64,
    /// The pattern's entropy bound per interval (bytes): the pages it may write split into
    /// its regions (random: the working set; hot/cold: the hot part and the cold part; the rest
    /// of memory), each taken as uniformly random at its measured density. None for
    /// `sequential`, whose pages are not random.
    pub entropy_bound_bytes_per_interval: Option<f64>,
    /// Raw over the bound: the most any encoding can reach.
    pub bound_ratio: Option<f64>,
    /// Time to encode one interval's bitmaps as the writer does, choice included, from the
    /// list of dirty pages its accounting makes anyway (s, mean).
    pub encode_s_per_interval: f64,
    /// Time to encode them as `zstd` alone (s, mean).
    pub zstd_only_encode_s_per_interval: f64,
    /// Time to decode one interval's bitmaps as stored (s, mean).
    pub decode_s_per_interval: f64,
    /// Time to decode them stored as `zstd` alone (s, mean).
    pub zstd_only_decode_s_per_interval: f64,
}

/// The patterns and densities the step records.
const RUNS: [(&str, f64); 6] =
    [("sequential", 0.01), ("random", 0.001), ("random", 0.01), ("random", 0.1), ("hotcold", 0.001), ("hotcold", 0.01)];

/// Decoding is timed over this many passes of a run's bitmaps.
const DECODE_PASSES: u32 = 5;

/// Binary entropy, bits.
fn entropy(p: f64) -> f64 {
    if p <= 0.0 || p >= 1.0 {
        0.0
    } else {
        -(p * p.log2() + (1.0 - p) * (1.0 - p).log2())
    }
}

/// The regions of the guest pages the pattern writes (first page, pages), per vCPU.
fn regions(spec_text: &str) -> anyhow::Result<Vec<(u64, u64)>> {
    let spec = WorkloadSpec::parse(spec_text, None, None).map_err(|e| anyhow::anyhow!("{e}"))?;
    let plan = GuestPlan::new(&spec)?;
    let mut out = Vec::new();
    for p in plan.plans.iter().filter_map(|phases| phases.first()) {
        match p.pattern {
            Pattern::Random => out.push((p.base_page, p.ws_pages)),
            _ => out.extend([(p.base_page, p.hot_pages), (p.cold_base_page, p.cold_pages)]),
        }
    }
    Ok(out)
}

/// Bits of the entropy bound of one interval's `pages` (sorted guest pages) out of `total`.
fn bound_bits(pages: &[u64], total: u64, regions: &[(u64, u64)]) -> f64 {
    let (mut bits, mut inside, mut covered) = (0.0, 0u64, 0u64);
    for &(first, n) in regions {
        let k = pages.partition_point(|&p| p < first + n) - pages.partition_point(|&p| p < first);
        bits += n as f64 * entropy(k as f64 / n as f64);
        inside += k as u64;
        covered += n;
    }
    let rest = total.saturating_sub(covered).max(1);
    bits + rest as f64 * entropy((pages.len() as u64 - inside) as f64 / rest as f64)
}

/// Mean time to decode `blobs`, `intervals` intervals' worth, per interval (s).
fn decode_time(blobs: &[SlotBlob], intervals: f64) -> anyhow::Result<f64> {
    let mut dec = BitmapDecoder::new()?;
    let t = crate::clock::now_ns();
    for _ in 0..DECODE_PASSES {
        for b in blobs {
            std::hint::black_box(dec.decode(b)?);
        }
    }
    Ok((crate::clock::now_ns() - t) as f64 / 1e9 / DECODE_PASSES as f64 / intervals)
}

/// Bitmap bytes on disk, and decoding time, for each of [`RUNS`].
pub fn compression(opts: &BenchOptions, report: &mut BenchReport) -> anyhow::Result<()> {
    for (pattern, frac) in RUNS {
        // About `frac` of memory dirtied per interval. The interval is long enough (up to
        // 500 ms) that the guest reaches that density on a busy host, and short enough that
        // the recording holds several full intervals.
        let interval = Duration::from_secs_f64((opts.seconds / 6.0).min(0.5));
        let rate = opts.mem as f64 * frac / interval.as_secs_f64();
        let ws = match pattern {
            "sequential" => pages(opts.mem as f64 * 0.5),
            _ => pages(opts.mem as f64 * 0.9),
        };
        let text = spec(opts.mem, ws, &format!("{rate}B/s"), pattern, opts.seconds);
        let name = format!("compress-{pattern}-{frac}");
        let (_, trace) = run(opts, &name, &text, interval, false)?;
        let regions = (pattern != "sequential").then(|| regions(&text)).transpose()?;
        let total_pages = trace.manifest.total_pages();
        let mut zstd_only = BitmapEncoder::new(ZSTD_LEVEL)?;
        let (mut raw, mut stored, mut only, mut bound, mut n, mut dirty) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
        let (mut gaps, mut bitmaps) = (0.0, 0.0);
        let (mut as_stored, mut as_zstd) = (Vec::new(), Vec::new());
        let mut encoder = BitmapEncoder::new(ZSTD_LEVEL)?;
        let (mut encode_ns, mut zstd_encode_ns) = (0u64, 0u64);
        for item in trace.intervals()? {
            let (row, bm) = item?;
            if !is_steady(&row) {
                continue;
            }
            for s in &bm.slots {
                let slot =
                    MemorySlot { slot: s.slot, guest_phys_addr: s.first_page * 4096, size_bytes: s.num_pages * 4096 };
                raw += slot.bitmap_bytes() as f64;
                stored += s.stored_bytes as f64;
                gaps += (s.encoding == Encoding::VarintGaps) as u8 as f64;
                bitmaps += 1.0;
                let t = crate::clock::now_ns();
                let z = zstd_only.encode_zstd(&slot, &s.words, s.dirty_pages)?;
                zstd_encode_ns += crate::clock::now_ns() - t;
                only += z.data.len() as f64;
                as_zstd.push(z);
                // The writer's own choice again, timed as the writer makes it (given the page
                // list its accounting has made), and to time decoding what it stores.
                let listed: Vec<u32> = s.pages().iter().map(|p| (p - s.first_page) as u32).collect();
                let t = crate::clock::now_ns();
                let chosen = encoder.encode_pages(&slot, &s.words, &listed, 0)?;
                encode_ns += crate::clock::now_ns() - t;
                as_stored.push(chosen);
            }
            if let Some(r) = &regions {
                bound += bound_bits(&bm.pages(), total_pages, r) / 8.0;
            }
            dirty += row.dirty_pages as f64 / total_pages as f64;
            n += 1.0;
        }
        let _ = std::fs::remove_dir_all(&trace.dir);
        if n == 0.0 {
            anyhow::bail!("the {pattern} run recorded no full interval after the first: pass a longer --seconds");
        }
        report.compression.push(CompressionRow {
            pattern: pattern.into(),
            interval_s: interval.as_secs_f64(),
            dirty_fraction_target: frac,
            dirty_fraction: dirty / n,
            raw_bytes_per_interval: raw / n,
            stored_bytes_per_interval: stored / n,
            ratio: raw / stored,
            varint_gaps_share: gaps / bitmaps,
            zstd_only_bytes_per_interval: only / n,
            zstd_only_ratio: raw / only,
            entropy_bound_bytes_per_interval: regions.as_ref().map(|_| bound / n),
            bound_ratio: regions.as_ref().map(|_| raw / bound),
            encode_s_per_interval: encode_ns as f64 / 1e9 / n,
            zstd_only_encode_s_per_interval: zstd_encode_ns as f64 / 1e9 / n,
            decode_s_per_interval: decode_time(&as_stored, n)?,
            zstd_only_decode_s_per_interval: decode_time(&as_zstd, n)?,
        });
    }
    Ok(())
}
