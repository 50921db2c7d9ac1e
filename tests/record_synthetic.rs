//! Recording the synthetic guest: exactness against ground truth, working sets, absolute deadlines.
//! Timings (rates reached, lateness) are `bench`'s, not these tests'.
//! These need /dev/kvm and fail, not skip, without it.

mod common;

use common::*;
use dirtytrace::guest::synthetic::verify::verify;
use std::time::Duration;

fn spec(pattern: &str, ws: &str, rate: &str, secs: f64) -> String {
    format!(
        "mem = \"1GiB\"\nseed = 7\n[[phase]]\nname = \"{pattern}\"\nduration = \"{secs}s\"\nworking_set = \"{ws}\"\nrate = \"{rate}\"\npattern = \"{pattern}\"\nhot_fraction = 0.1\nhot_share = 0.9\n"
    )
}

fn assert_exact(name: &str, spec_text: &str, interval_ms: u64, secs: f64) {
    let (summary, trace, _dir) = record_spec(name, spec_text, Duration::from_millis(interval_ms), None);
    // Half the intervals the phase lasts: a loaded host may skip deadlines, which merges intervals.
    assert_trace_exact(name, &trace, (secs * 1000.0 / interval_ms as f64 / 2.0) as usize);
    assert_eq!(summary.status, dirtytrace::trace::TraceStatus::Complete);
}

#[test]
fn exact_sequential_random_hotcold_at_10ms_100ms_1s() {
    let _g = kvm_lock();
    for pattern in ["sequential", "random", "hotcold"] {
        for (interval_ms, secs) in [(10, 0.6), (100, 1.5), (1000, 3.5)] {
            let name = format!("exact-{pattern}-{interval_ms}ms");
            assert_exact(&name, &spec(pattern, "64MiB", "40MiB/s", secs), interval_ms, secs);
        }
    }
}

#[test]
fn exact_with_two_vcpus_and_phases() {
    let _g = kvm_lock();
    let text = "mem = \"256MiB\"\nvcpus = 2\nseed = 3\n\
        [[phase]]\nname = \"a\"\nduration = \"0.5s\"\nworking_set = \"32MiB\"\nrate = \"40MiB/s\"\npattern = \"random\"\n\
        [[phase]]\nname = \"b\"\nduration = \"0.3s\"\nworking_set = \"8MiB\"\nrate = \"80MiB/s\"\npattern = \"sequential\"\ncpu = 0.5\n\
        [[phase]]\nname = \"c\"\nduration = \"0.4s\"\nworking_set = \"64MiB\"\nrate = \"20MiB/s\"\npattern = \"hotcold\"\n";
    assert_exact("exact-2vcpu", text, 50, 1.2);
}

/// The writes the guest certainly made in row `i` (between the previous harvest's end and this
/// harvest's start) and the most it can have made (between the previous harvest's start and
/// this one's end), from its progress words (one vCPU, one phase: the word is the write count).
fn writes_bounds(rows: &[dirtytrace::trace::IntervalRow], i: usize) -> (u64, u64) {
    let count = |w: &[u64]| w[0] & ((1 << 48) - 1);
    let (prev_after, prev_before) = if i == 0 {
        (0, 0)
    } else {
        (count(&rows[i - 1].guest_progress_after), count(&rows[i - 1].guest_progress_before))
    };
    (count(&rows[i].guest_progress_before) - prev_after, count(&rows[i].guest_progress_after) - prev_before)
}

/// A sequential sweep that never comes back to a page (300 MiB written in a 512 MiB working
/// set): the bitmaps hold exactly the guest's writes, one run of pages as long as its own count
/// of writes, plus its control page. (How close the guest keeps to its rate is a timing: it is
/// `bench`'s `guest_writes_per_s`.)
#[test]
fn a_sweep_that_never_returns_is_recorded_page_for_page() {
    let _g = kvm_lock();
    let (_, trace, _dir) =
        record_spec("sweep-once", &spec("sequential", "512MiB", "100MiB/s", 3.0), Duration::from_millis(100), None);
    assert_trace_exact("sweep-once", &trace, 30);
    let rows = trace.rates().unwrap();
    let mut union = std::collections::BTreeSet::new();
    for r in &rows {
        union.extend(trace.bitmap(r.interval).unwrap().pages());
    }
    let writes = rows.last().unwrap().guest_progress_after[0] & ((1 << 48) - 1);
    // The longest run of consecutive pages is the sweep; the one page outside it is the control page.
    let pages: Vec<u64> = union.into_iter().collect();
    let mut runs: Vec<&[u64]> = pages.chunk_by(|a, b| b == &(a + 1)).collect();
    runs.sort_by_key(|r| r.len());
    let sweep = runs.pop().unwrap();
    assert_eq!(sweep.len() as u64, writes, "the sweep's pages against the guest's own count of writes");
    assert_eq!(runs.iter().map(|r| r.len()).sum::<usize>(), 1, "pages outside the sweep: {runs:?}");
}

/// A 4 MiB (1024-page) working set swept at 100 MiB/s: each interval holds exactly
/// min(1024, the pages written in it) pages, bounded by the guest's own counts (one more at
/// the top: the write in flight when the count was read). At 100 ms
/// (2560 writes) intervals saturate; at 10 ms (256 writes) they do not.
#[test]
fn working_set_saturates_as_predicted() {
    let _g = kvm_lock();
    for interval_ms in [100u64, 10] {
        let (_, trace, _dir) = record_spec(
            "saturation",
            &spec("sequential", "4MiB", "100MiB/s", 1.0),
            Duration::from_millis(interval_ms),
            None,
        );
        let checks = assert_trace_exact("saturation", &trace, 10);
        let rows = trace.rates().unwrap();
        let (mut saturated, mut unsaturated) = (0, 0);
        for (i, r) in rows.iter().enumerate() {
            let (lo, hi) = writes_bounds(&rows, i);
            // The guest's own pages (its control page) are not part of the working set.
            assert_eq!(checks[i].interval, r.interval);
            let pages = checks[i].recorded_pages - checks[i].own_pages;
            assert!(
                (lo.min(1024)..=(hi + 1).min(1024)).contains(&pages),
                "interval {} at {interval_ms} ms: {pages} pages, the guest wrote {lo}..={hi}",
                r.interval
            );
            saturated += u32::from(lo >= 1024);
            unsaturated += u32::from(hi < 1024);
        }
        if interval_ms == 100 {
            assert!(saturated > 0, "no 100 ms interval saturated");
        } else {
            assert!(unsaturated > 0, "every 10 ms interval saturated");
        }
    }
}

/// Each harvest's deadline is absolute, k x 100 ms from the start, so lateness never
/// accumulates: after 300 intervals the deadline is still exactly 30 s. (How late harvests
/// are is a timing: `bench --only deadline`.)
#[test]
fn intervals_do_not_drift_over_30s() {
    let _g = kvm_lock();
    let (summary, trace, _dir) = record_spec(
        "drift",
        &spec("random", "64MiB", "20MiB/s", 31.0),
        Duration::from_millis(100),
        Some(Duration::from_secs(30)),
    );
    let rows = trace.rates().unwrap();
    assert_eq!(summary.end_reason, Some(dirtytrace::trace::EndReason::Duration));
    assert_eq!(rows.len(), 300);
    for (i, r) in rows.iter().enumerate() {
        let deadline = (r.interval + 1) as f64 * 0.1;
        assert!(r.harvest_lateness_s >= 0.0, "interval {} harvested early", r.interval);
        assert!(
            (r.t_end_s - r.harvest_lateness_s - deadline).abs() < 1e-9,
            "interval {}: deadline {} s, not {deadline} s",
            r.interval,
            r.t_end_s - r.harvest_lateness_s
        );
        let start = if i == 0 { 0.0 } else { rows[i - 1].t_end_s };
        assert_eq!(r.t_start_s, start, "interval {} does not begin where the last ended", r.interval);
    }
    // The sampler's own counts are in the manifest, and its skipped deadlines are the timing's.
    let timing = &trace.manifest.timing;
    let counts = timing.sampler_counts.expect("the recorder leaves the sampler's counts");
    assert_eq!((counts.harvests, counts.skipped_deadlines), (300, timing.skipped_deadlines));
}

#[test]
fn exact_cut_pauses_the_guest_around_each_harvest() {
    let _g = kvm_lock();
    let dir = Scratch::new("exact-cut");
    let spec_path = write(&dir, "s.toml", &spec("random", "64MiB", "40MiB/s", 1.0));
    let mut opts = dirtytrace::record::RecordOptions::new(dir.join("t"));
    opts.workload = Some(spec_path);
    opts.settings.interval = dirtytrace::units::HumanDuration(Duration::from_millis(20));
    opts.settings.exact_cut = true;
    let summary =
        dirtytrace::record::record(&opts, std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)), None)
            .unwrap();
    assert!(summary.cost.unwrap().pause_mean_s > 0.0);
    let trace = dirtytrace::trace::Trace::open(dir.join("t")).unwrap();
    assert!(trace.manifest.exact_cut);
    let rows = trace.rates().unwrap();
    // A 1 s phase at 20 ms: at least half its intervals, as a loaded host may skip deadlines.
    assert!(rows.len() >= 25, "{} intervals", rows.len());
    for r in &rows {
        assert_eq!(r.guest_progress_before, r.guest_progress_after, "interval {}", r.interval);
    }
    for c in verify(&trace).unwrap() {
        assert_eq!((c.missing, c.missing_cumulative, c.unexpected), (0, 0, 0), "{c:?}");
    }
}
