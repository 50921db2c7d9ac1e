//! Recording the synthetic guest: exactness against ground truth, rates, timing.
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
    assert_trace_exact(name, &trace, (secs * 1000.0 / interval_ms as f64) as usize);
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

#[test]
fn steady_rate_matches_spec_within_2_percent() {
    let _g = kvm_lock();
    let (_, trace, _dir) =
        record_spec("rate", &spec("sequential", "512MiB", "100MiB/s", 3.0), Duration::from_millis(100), None);
    let rows = trace.rates().unwrap();
    let steady: Vec<_> = rows.iter().filter(|r| !r.partial && r.t_start_s > 0.15 && r.t_end_s < 2.9).collect();
    assert!(steady.len() >= 20, "{} steady intervals", steady.len());
    let want = 100.0 * 1024.0 * 1024.0;
    // The control page is the guest's own, not part of the workload's rate.
    let rate = |r: &dirtytrace::trace::IntervalRow| (r.dirty_pages - 1) as f64 * 4096.0 / r.duration_s;
    let mean = steady.iter().map(|r| rate(r)).sum::<f64>() / steady.len() as f64;
    assert!((mean / want - 1.0).abs() < 0.02, "mean steady rate {mean} B/s vs {want}");
    // Each interval too, with room for the host preempting the guest across a boundary.
    for r in &steady {
        assert!((rate(r) / want - 1.0).abs() < 0.10, "interval {}: {} B/s vs {want}", r.interval, rate(r));
    }
}

#[test]
fn working_set_saturates_as_predicted() {
    let _g = kvm_lock();
    // 4 MiB = 1024 pages; at 100 MiB/s a 100 ms interval writes 2560 pages, a 10 ms one 256.
    for (interval_ms, expect) in [(100u64, 1024.0), (10, 256.0)] {
        let (_, trace, _dir) = record_spec(
            "saturation",
            &spec("sequential", "4MiB", "100MiB/s", 1.0),
            Duration::from_millis(interval_ms),
            None,
        );
        let rows = trace.rates().unwrap();
        let steady: Vec<_> = rows.iter().filter(|r| !r.partial && r.t_start_s > 0.05 && r.t_end_s < 0.95).collect();
        assert!(steady.len() >= 5);
        if expect == 1024.0 {
            for r in &steady {
                assert_eq!(r.dirty_pages - 1, 1024, "interval {} at {interval_ms} ms", r.interval);
            }
        } else {
            // Below saturation every write is a distinct page: rate x interval, summed over the
            // steady intervals so that one late harvest does not decide the test.
            let pages: u64 = steady.iter().map(|r| r.dirty_pages - 1).sum();
            let secs: f64 = steady.iter().map(|r| r.duration_s).sum();
            let predicted = 100.0 * 1024.0 * 1024.0 / 4096.0 * secs;
            assert!((pages as f64 / predicted - 1.0).abs() < 0.02, "{pages} pages vs {predicted}");
            assert!(steady.iter().all(|r| r.dirty_pages - 1 < 1024), "no 10 ms interval saturates");
        }
    }
}

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
    let mean: f64 = rows.iter().map(|r| r.duration_s).sum::<f64>() / rows.len() as f64;
    assert!((mean / 0.1 - 1.0).abs() < 0.01, "mean interval {mean}");
    for r in &rows {
        // Each harvest sits on its own absolute deadline: lateness does not accumulate.
        let deadline = (r.interval + 1) as f64 * 0.1;
        assert!(
            r.t_end_s >= deadline - 1e-6 && r.t_end_s - deadline < 0.02,
            "interval {} ends at {}",
            r.interval,
            r.t_end_s
        );
    }
    assert!((rows.last().unwrap().t_end_s - 30.0).abs() < 0.02);
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
    assert!(rows.len() >= 45);
    for r in &rows {
        assert_eq!(r.guest_progress_before, r.guest_progress_after, "interval {}", r.interval);
    }
    for c in verify(&trace).unwrap() {
        assert_eq!((c.missing, c.missing_cumulative, c.unexpected), (0, 0, 0), "{c:?}");
    }
}
