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
    /// On this run's own bitmaps (a one-slot guest), the writer's per-harvest work (page list,
    /// encoding, window; median thread CPU) over 44c1d43's way of doing it: see [`WriterWorkRow`].
    pub writer_work_over_44c1d43: Option<f64>,
}

/// One row of the writer-work comparison: the recorder's per-harvest work on the same bitmaps
/// done as 44c1d43 (format version 1) did it and as this dirtytrace does, in one process.
#[derive(Debug, Serialize)]
pub struct WriterWorkRow {
    /// `sequential` (one run of pages, moving on by a third of its length each interval) or
    /// `random` (pages drawn uniformly).
    pub pattern: &'static str,
    /// The fraction of pages dirty per interval.
    pub dirty_fraction: f64,
    /// The encoding this dirtytrace chose for these bitmaps.
    pub encoding: &'static str,
    /// 44c1d43's work per harvest and GiB (s of thread CPU, median): the page list, zstd of the raw
    /// words, the working-set window page by page.
    pub before_s_per_gib: f64,
    /// This dirtytrace's: the page list, the chosen encoding, the window.
    pub now_s_per_gib: f64,
    /// `now / before`.
    pub ratio: f64,
}

/// Bitmaps the comparison cycles through, and harvests it times.
const WORK_BITMAPS: u64 = 64;
const WORK_HARVESTS: usize = 640;

/// Times the writer's per-harvest work on the same synthetic bitmaps of a `mem`-byte slot, the
/// way 44c1d43 did it and the way this dirtytrace does, alternating harvest by harvest and
/// taking each one's thread-CPU time, so that a busy machine slows both alike. Both ways must
/// count the same working set, and today's must decode to the same pages.
pub fn writer_work(opts: &BenchOptions, report: &mut BenchReport) -> anyhow::Result<()> {
    use crate::trace::MemorySlot;
    let n = opts.mem / 4096;
    let slot = MemorySlot { slot: 0, guest_phys_addr: 0, size_bytes: n * 4096 };
    let gib = opts.mem as f64 / GIB;
    // The working-set window of a 100 ms trace at 1 Gb/s of migration (as `record`'s default).
    let window_s = opts.mem as f64 / 125e6;
    for pattern in ["sequential", "random"] {
        for frac in [0.001, 0.01, 0.1] {
            let k = ((n as f64 * frac) as u64).max(1);
            let mut x = 0x9E37_79B9_7F4A_7C15u64;
            let bitmaps: Vec<Vec<u64>> = (0..WORK_BITMAPS)
                .map(|i| {
                    let mut w = vec![0u64; n.div_ceil(64) as usize];
                    for j in 0..k {
                        let p = if pattern == "sequential" {
                            (i * k / 3 + j) % n
                        } else {
                            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                            (x >> 33) % n
                        };
                        w[(p / 64) as usize] |= 1 << (p % 64);
                    }
                    w
                })
                .collect();
            let (before, now, encoding) = compare_ways(&slot, &bitmaps, window_s)?;
            let (before, now) = (before / 1e9 / gib, now / 1e9 / gib);
            report.writer_work.push(WriterWorkRow {
                pattern,
                dirty_fraction: frac,
                encoding,
                before_s_per_gib: before,
                now_s_per_gib: now,
                ratio: now / before,
            });
        }
    }
    Ok(())
}

/// The median thread-CPU time (ns) of one harvest's page list, encoding and working-set window
/// over `bitmaps` of `slot`, in turn: 44c1d43's way, today's way, and the encoding today's chose
/// last. The ways alternate harvest by harvest ([`WORK_HARVESTS`] of them, cycling through the
/// bitmaps), each going first every other harvest; both must give the same pages and window.
fn compare_ways(
    slot: &crate::trace::MemorySlot,
    bitmaps: &[Vec<u64>],
    window_s: f64,
) -> anyhow::Result<(f64, f64, &'static str)> {
    use crate::clock::this_thread_cpu_ns;
    use crate::pagestats::{PageSpace, SlidingDistinct};
    use crate::trace::{BitmapDecoder, BitmapEncoder, Encoding, SlotBlob, ZSTD_LEVEL};
    let n = slot.num_pages();
    let space = PageSpace::new(std::slice::from_ref(slot));
    let (mut old_c, mut new_enc) = (zstd::bulk::Compressor::new(ZSTD_LEVEL)?, BitmapEncoder::new(ZSTD_LEVEL)?);
    let mut old_win: SlidingDistinct = SlidingDistinct::new(n, window_s);
    let mut new_win: SlidingDistinct = SlidingDistinct::new(n, window_s);
    let (mut old_pages, mut new_pages) = (Vec::new(), Vec::new());
    let (mut before, mut now) = (Vec::new(), Vec::new());
    let mut encoding = "";
    let mut dec = BitmapDecoder::new()?;
    let (mut old_blob, mut new_blob) = (None, None);
    for h in 0..WORK_HARVESTS {
        let words = &bitmaps[h % bitmaps.len()];
        let t = (h + 1) as f64 * 0.1;
        // Each way goes first every other harvest: the second finds the words cached.
        for old_way in [h % 2 == 0, h % 2 == 1] {
            let c0 = this_thread_cpu_ns();
            if old_way {
                old_pages.clear();
                space.push_dirty(0, words, &mut old_pages);
                // 44c1d43's BitmapEncoder::encode, as it was.
                old_blob = Some(SlotBlob {
                    slot: slot.slot,
                    first_page: slot.first_page(),
                    num_pages: n,
                    encoding: Encoding::Zstd,
                    raw_bytes: n.div_ceil(64) * 8,
                    dirty_pages: old_pages.len() as u64,
                    data: old_c.compress(bytemuck::cast_slice(words))?,
                });
                old_win.push_page_by_page(t, old_pages.iter().map(|&p| p as u64));
                before.push((this_thread_cpu_ns() - c0) as f64);
            } else {
                new_pages.clear();
                space.push_dirty(0, words, &mut new_pages);
                new_blob = Some(new_enc.encode_pages(slot, words, &new_pages, 0)?);
                // As `accounting::IntervalAccounting::account` counts the window.
                new_win.push(t, new_pages.iter().map(|&p| p as u64));
                now.push((this_thread_cpu_ns() - c0) as f64);
            }
        }
        let (old_blob, new_blob) = (old_blob.take().expect("made above"), new_blob.take().expect("made above"));
        if old_win.in_window() != new_win.in_window() || dec.decode(&new_blob)? != dec.decode(&old_blob)? {
            anyhow::bail!("the writer's work differs from 44c1d43's at harvest {h}");
        }
        encoding = new_blob.encoding.as_str();
    }
    // Medians: a harvest the scheduler interrupted counts as one harvest, not its delay.
    Ok((median(before), median(now), encoding))
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
    // Every interval is decoded first, so that the reader's work and memory do not mix with
    // the timed work; each bitmap is then copied just before its harvest is timed, as the
    // recorder's harvest finds its bitmap freshly written by the dirty-log ioctl.
    let decoded = trace.intervals()?.collect::<Result<Vec<_>, _>>()?;
    for (row, bm) in decoded {
        let fresh: Vec<Vec<u64>> = bm.slots.iter().map(|s| s.words.clone()).collect();
        let mut h =
            crate::sampler::Harvest::new(row.interval, (row.t_start_s * 1e9) as u64, (row.t_end_s * 1e9) as u64, fresh);
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
        let work = match trace.manifest.slots.as_slice() {
            [slot] => {
                let bitmaps: Vec<Vec<u64>> =
                    trace.bitmaps()?.map(|b| b.map(|mut b| b.slots.remove(0).words)).collect::<Result<_, _>>()?;
                let (before, now, _) = compare_ways(slot, &bitmaps, trace.manifest.working_set_window_s)?;
                Some(now / before)
            }
            _ => None,
        };
        report.harvest_cost.push(HarvestCostRow {
            dirty_fraction_target: frac,
            dirty_fraction_measured: measured,
            ioctl_s_per_gib: ioctl / gib,
            own_s_per_gib: (sampler_own + writer) / gib,
            sampler_own_s_per_gib: sampler_own / gib,
            writer_s_per_gib: writer / gib,
            own_over_ioctl: (sampler_own + writer) / ioctl,
            writer_work_over_44c1d43: work,
        });
    }
    writer_work(opts, report)
}
