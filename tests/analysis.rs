//! summarize, replay and plot on a synthetic trace, checked against what the spec implies;
//! and every kind of bad input. The recorder is not under test here, so the trace is
//! generated without KVM (`guest::synthetic::generate`): these run on any machine, with
//! `DIRTYTRACE_KVM_DEVICE=/nonexistent` too.

mod common;

use common::*;
use dirtytrace::analysis::replay::{self, ReplayOptions, ZeroPages};
use dirtytrace::analysis::summary::{self, SummaryOptions};
use dirtytrace::analysis::{plot, simgrid, AnalysisError};
use dirtytrace::guest::synthetic::generate::{generate, GenerateOptions};
use dirtytrace::trace::Trace;
use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;
/// The workload: 16 MiB written sequentially at 32 MiB/s for 6 s (a sweep every 0.5 s),
/// then 2 s idle, in a 64 MiB guest, harvested every 100 ms.
const SPEC: &str = r#"mem = "64MiB"
seed = 3
[[phase]]
name = "seq"
duration = "6s"
working_set = "16MiB"
rate = "32MiB/s"
pattern = "sequential"
[[phase]]
name = "idle"
duration = "2s"
rate = "0"
cpu = 0.0
"#;
const WS_PAGES: u64 = 16 * MIB / PAGE;
const RAM: u64 = 64 * MIB;

/// [`SPEC`] generated into a fresh directory: each test generates its own (a fraction of a
/// second), so that it is removed with the test.
fn seq_idle() -> InScratch {
    let dir = Scratch::new("analysis-seq-idle");
    let trace = dir.join("trace");
    let opts = GenerateOptions { interval: Duration::from_millis(100), ..Default::default() };
    generate(&trace, SPEC, &opts).unwrap();
    InScratch::new(dir, trace)
}

fn trace(dir: &Path) -> Trace {
    Trace::open(dir).unwrap()
}

fn td(dir: &Path) -> &str {
    dir.to_str().unwrap()
}

#[test]
fn summarize_sequential_phase_matches_the_spec() {
    let base = seq_idle();
    let t = trace(&base);
    let own = t.manifest.guest_own_pages.clone();
    assert_eq!(own.len(), 1, "the synthetic guest has one own page, its control page");
    let s = summary::summarize(&t, &SummaryOptions { phase: Some("seq".into()), ..Default::default() }).unwrap();
    // Every page of the working set, plus the control page, and nothing else.
    assert_eq!(s.distinct_pages, WS_PAGES + 1);
    assert_eq!(s.distinct_bytes, (WS_PAGES + 1) * PAGE);
    // 6 s at 100 ms: the interval ending at 6.0 s holds the phase's last writes.
    assert_eq!(s.intervals, 60);
    let rows: Vec<_> = t.rates().unwrap().into_iter().filter(|r| r.phase == "seq").collect();
    assert_eq!(rows.len() as u64, s.intervals);
    assert_eq!(s.dirtied_bytes_total, rows.iter().map(|r| r.dirty_bytes).sum::<u64>());

    // Rate: 32 MiB/s of workload plus one control page per interval.
    let want = 32.0 * MIB as f64 + PAGE as f64 / 0.1;
    let p50 = s.dirty_rate_bytes_per_s.p50;
    assert!((p50 / want - 1.0).abs() < 0.01, "p50 {p50} B/s, spec {want} B/s");
    // Nearest-rank percentiles and the maximum over the full intervals, exactly.
    let mut full: Vec<f64> = rows.iter().filter(|r| !r.partial).map(|r| r.dirty_rate_bytes_per_s).collect();
    full.sort_by(f64::total_cmp);
    let rank = |q: f64| full[((q * full.len() as f64).ceil() as usize).clamp(1, full.len()) - 1];
    assert_eq!(s.dirty_rate_bytes_per_s.p50, rank(0.5));
    assert_eq!(s.dirty_rate_bytes_per_s.p95, rank(0.95));
    assert_eq!(s.dirty_rate_bytes_per_s.max, *full.last().unwrap());
    let mut cpus: Vec<f64> = rows.iter().filter(|r| !r.partial).map(|r| r.cpu_util).collect();
    cpus.sort_by(f64::total_cmp);
    assert_eq!(s.cpu_util_cores.p95, cpus[((0.95 * cpus.len() as f64).ceil() as usize) - 1]);
    // The guest spins between its writes: cpu = 1.0.
    assert_eq!(s.cpu_util_cores.p50, 1.0, "the guest was busy writing: {:?}", s.cpu_util_cores);

    // The working-set curve saturates at the working set (plus the control page): a sweep
    // takes 0.5 s, so every window of 1 s or more holds every page, and some 0.5 s one does.
    let windows: Vec<f64> = s.working_set_curve.iter().map(|p| p.window_s).collect();
    assert_eq!(windows, vec![0.1, 0.5, 1.0, 2.0, 5.0], "10 s and 30 s do not fit a 6 s phase");
    let full = (WS_PAGES + 1) * PAGE;
    for p in &s.working_set_curve {
        assert_eq!(p.intervals_per_window, (p.window_s / 0.1).round() as u64);
        assert!(p.max_bytes <= full, "{p:?}");
        if p.window_s >= 0.5 {
            assert_eq!(p.max_bytes, full, "{p:?}");
        }
        if p.window_s >= 1.0 {
            assert_eq!(p.mean_bytes, full as f64, "every window saturates: {p:?}");
        }
    }
    // The 0.1 s window is one interval: its mean is the mean distinct pages per interval.
    let p = &s.working_set_curve[0];
    assert_eq!(p.windows, s.intervals);
    let mean_pages = rows.iter().map(|r| r.dirty_pages).sum::<u64>() as f64 / rows.len() as f64;
    assert!((p.mean_bytes / PAGE as f64 - mean_pages).abs() < 1e-6);
    assert!((mean_pages / (0.1 * 32.0 * MIB as f64 / PAGE as f64 + 1.0) - 1.0).abs() < 0.02, "{mean_pages}");

    // Hottest: the control page, dirty in every interval of the phase; then workload pages,
    // each written 12 times in 6 s (a sweep per 0.5 s), in 12 or (at a harvest) up to 24.
    let hot = &s.hottest_pages;
    assert_eq!(hot.len(), 10);
    assert_eq!(hot[0].guest_page, own[0]);
    assert!(hot[0].guest_own);
    assert_eq!(hot[0].dirty_intervals, s.intervals);
    assert_eq!(hot[0].fraction_of_intervals, 1.0);
    for h in &hot[1..] {
        assert!(!h.guest_own);
        assert!((12..=24).contains(&h.dirty_intervals), "{h:?}");
        assert!(h.guest_page >= 512 && h.guest_page < 512 + WS_PAGES, "{h:?}");
    }
    assert!(hot.windows(2).all(|w| w[0].dirty_intervals >= w[1].dirty_intervals));
    assert_eq!(s.phases.len(), 1);
    assert_eq!(s.phases[0].distinct_pages, s.distinct_pages);
}

#[test]
fn summarize_whole_trace_and_phase_breakdown() {
    let base = seq_idle();
    let t = trace(&base);
    let s = summary::summarize(&t, &SummaryOptions::default()).unwrap();
    let rows = t.rates().unwrap();
    assert_eq!(s.intervals, rows.len() as u64);
    assert_eq!(s.intervals, t.manifest.intervals);
    assert!((s.duration_s - rows.last().unwrap().t_end_s).abs() < 1e-9);
    let names: Vec<&str> = s.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["seq", "idle"]);
    assert_eq!(s.phases.iter().map(|p| p.intervals).sum::<u64>(), s.intervals);
    assert!(s.phases.iter().all(|p| p.runs == 1));
    // The idle phase writes nothing.
    assert_eq!(s.distinct_pages, WS_PAGES + 1);
    let idle = &s.phases[1];
    assert_eq!(idle.dirty_rate_bytes_per_s.max, 0.0);
    assert_eq!(idle.distinct_pages, 0, "{idle:?}");
    let total: u64 = rows.iter().map(|r| r.dirty_bytes).sum();
    assert_eq!(s.dirtied_bytes_total, total);
    assert!((s.dirty_rate_bytes_per_s.mean - total as f64 / s.duration_s).abs() < 1e-6);
    // 8 s: the 5 s window fits, 10 s and 30 s do not.
    assert_eq!(s.working_set_curve.last().unwrap().window_s, 5.0);

    // The CLI prints the same, as JSON and for people (with units).
    let j = cli_json(&["summarize", td(&base), "--json"]);
    assert_eq!(j["distinct_pages"], WS_PAGES + 1);
    assert_eq!(j["intervals"], s.intervals);
    let Run { code, stdout: text, .. } = cli(&["summarize", td(&base)]);
    assert_eq!(code, Some(0));
    assert!(text.contains("MiB/s") && text.contains("cores") && text.contains("guest's own page"), "{text}");
}

#[test]
fn replay_of_an_idle_stretch_takes_ramsize_over_bandwidth() {
    let base = seq_idle();
    let t = trace(&base);
    // From 6.5 s the guest is idle; round 0 (64 MiB at 64 MiB/s) ends at 7.5 s, inside it.
    let mut o = ReplayOptions::new(64.0 * MIB as f64);
    o.start_s = 6.5;
    let r = replay::replay(&t, &o).unwrap();
    let own = t.manifest.guest_own_pages.len() as u64;
    assert_eq!(r.per_round[0].bytes, RAM);
    assert_eq!(r.per_round[0].duration_s, 1.0);
    assert!(r.converged);
    assert_eq!(r.rounds, 1);
    assert!(r.stop_and_copy.bytes <= own * PAGE, "{:?}", r.stop_and_copy);
    assert!(r.total_time_s >= 1.0 && r.total_time_s <= 1.0 + (own * PAGE) as f64 / (64 * MIB) as f64);
    assert_eq!(r.transferred_bytes, RAM + r.stop_and_copy.bytes);

    // zero-pages skip: round 0 sends in full only the pages loaded at the start or dirtied
    // before 6.5 s; every other page costs 9 bytes.
    o.precopy.zero_pages = ZeroPages::Skip;
    let r = replay::replay(&t, &o).unwrap();
    let mut nonzero: HashSet<u64> = HashSet::new();
    for pr in &t.manifest.initial_nonzero_pages {
        nonzero.extend(pr.first..pr.first + pr.count);
    }
    let rows = t.rates().unwrap();
    for (row, bm) in rows.iter().zip(t.bitmaps().unwrap()) {
        if row.t_end_s <= 6.5 {
            nonzero.extend(bm.unwrap().pages());
        }
    }
    let n = nonzero.len() as u64;
    assert!(n > WS_PAGES, "the working set and the loaded guest: {n} pages");
    assert_eq!(r.per_round[0].bytes, n * PAGE + (RAM / PAGE - n) * replay::ZERO_PAGE_BYTES);
    assert_eq!(r.per_round[0].pages, n);
    assert_eq!(r.zero_pages, ZeroPages::Skip);
}

#[test]
fn replay_faster_dirtying_than_bandwidth_stops_at_max_rounds() {
    let base = seq_idle();
    // 32 MiB/s of writes against 24 MiB/s: every round after the first lasts 0.67 s, longer
    // than a 0.5 s sweep, so it dirties the whole working set again: it never converges.
    let j = cli_json(&["replay", td(&base), "--bandwidth", "24MiB/s", "--max-rounds", "5", "--json"]);
    assert_eq!(j["rounds"], 5);
    assert_eq!(j["stop_reason"], "max_rounds");
    assert_eq!(j["converged"], false);
    let rounds = j["per_round"].as_array().unwrap();
    assert_eq!(rounds.len(), 5);
    assert_eq!(rounds[0]["bytes"], RAM);
    let ws = (WS_PAGES + 1) * PAGE;
    for r in &rounds[1..] {
        assert_eq!(r["bytes"], ws, "{r}");
    }
    assert_eq!(j["stop_and_copy"]["bytes"], ws);
    let bw = 24.0 * MIB as f64;
    let want = RAM as f64 / bw + 5.0 * ws as f64 / bw;
    assert!((j["total_time_s"].as_f64().unwrap() - want).abs() < 1e-9, "{j}");
    assert!((j["downtime_s"].as_f64().unwrap() - ws as f64 / bw).abs() < 1e-12);
    assert_eq!(j["transferred_bytes"], RAM + 5 * ws);
    for key in ["total_time_s", "downtime_s", "rounds", "transferred_bytes", "per_round"] {
        assert!(j.get(key).is_some(), "JSON lacks {key}");
    }
    let r0 = &rounds[0];
    assert!(r0.get("duration_s").is_some() && r0.get("bytes").is_some());
}

#[test]
fn replay_loop_repeats_a_short_trace() {
    let base = seq_idle();
    let t = trace(&base);
    // 64 MiB at 4 MiB/s: round 0 lasts 16 s, twice the trace.
    let mut o = ReplayOptions::new(4.0 * MIB as f64);
    let err = replay::replay(&t, &o).unwrap_err();
    assert!(matches!(err, AnalysisError::TraceTooShort(_)), "{err}");
    assert!(err.to_string().contains("--loop"), "{err}");
    o.precopy.looped = true;
    let r = replay::replay(&t, &o).unwrap();
    assert!(r.trace_passes >= 2, "{r:?}");
    assert_eq!(r.per_round[0].bytes, RAM);
    // Round 0 spans whole passes: round 1 sends every page the trace ever dirties.
    assert_eq!(r.per_round[1].bytes, (WS_PAGES + 1) * PAGE);
}

#[test]
fn simgrid_parameters_of_the_sequential_phase() {
    let base = seq_idle();
    let t = trace(&base);
    let speed = 64.0 * MIB as f64;
    let p =
        simgrid::fit(&t, &simgrid::SimgridOptions { migration_speed: Some(speed), phase: Some("seq".into()) }).unwrap();
    let rows: Vec<_> = t.rates().unwrap().into_iter().filter(|r| r.phase == "seq").collect();
    let bytes: u64 = rows.iter().map(|r| r.dirty_bytes).sum();
    let cpu_s: f64 = rows.iter().map(|r| r.cpu_util * r.duration_s).sum();
    assert_eq!(p.ramsize_bytes, RAM);
    assert_eq!(p.migration_speed_bytes_per_s, speed);
    assert!((p.dp_intensity - bytes as f64 / (speed * cpu_s)).abs() < 1e-12);
    // A full-RAM round at 64 MiB/s lasts 1 s: longer than a sweep, so the whole working set.
    assert_eq!(p.working_set_window_s, 1.0);
    assert!(p.working_set_window_covered);
    assert_eq!(p.working_set_memory_bytes, (WS_PAGES + 1) * PAGE);
    // intensity × load × speed is the dirty rate.
    assert!((p.dp_intensity * p.cpu_util * speed / p.dirty_rate_bytes_per_s - 1.0).abs() < 1e-9);
    assert_eq!(p.create_migratable.ramsize_mib, 64);
    assert_eq!(p.create_migratable.mig_netspeed_mib_per_s, 64);
    assert_eq!(p.create_migratable.dp_intensity_percent, (p.dp_intensity * 100.0).round() as u64);

    let j = cli_json(&["simgrid", td(&base), "--migration-speed", "64MiB/s", "--phase", "seq", "--json"]);
    for key in ["ramsize_bytes", "dp_intensity", "working_set_memory_bytes", "migration_speed_bytes_per_s"] {
        assert!(j[key].is_number(), "{key}: {j}");
    }
    assert_eq!(j["working_set_memory_bytes"], p.working_set_memory_bytes);
    for (format, needle) in [("c", "sg_vm_set_dirty_page_intensity(vm, "), ("cpp", "simgrid::s4u::VirtualMachine* vm")]
    {
        let Run { code, stdout: out, .. } = cli(&["simgrid", td(&base), "--format", format]);
        assert_eq!(code, Some(0));
        for f in [
            "sg_vm_set_ramsize",
            "sg_vm_set_dirty_page_intensity",
            "sg_vm_set_working_set_memory",
            "sg_vm_set_migration_speed",
        ] {
            assert!(out.contains(f), "{format} snippet lacks {f}");
        }
        assert!(out.contains(needle), "{out}");
    }
}

#[test]
fn plot_draws_png_and_svg() {
    let base = seq_idle();
    let t = trace(&base);
    let dir = Scratch::new("plot");
    let png = dir.join("figure.png");
    let Run { code, stderr: err, .. } = cli(&["plot", td(&base), "-o", png.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(u32::from_be_bytes(bytes[16..20].try_into().unwrap()), 1200);
    assert_eq!(u32::from_be_bytes(bytes[20..24].try_into().unwrap()), 1150);
    let svg = dir.join("figure.svg");
    let d = plot::plot(&t, &plot::PlotOptions::new(&svg)).unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") && text.contains("working-set curve") && text.contains("seq"));

    // The heatmap holds what the spec wrote: nothing above the working set, every page bin
    // of the working set dirtied during the sequential phase.
    let total = d.total_pages as f64;
    let bins = d.heat_page_bins;
    let bin_of = |page: u64| (page as f64 * bins as f64 / total) as usize;
    let (ws_lo, ws_hi) = (bin_of(512), bin_of(512 + WS_PAGES - 1));
    let ctrl = bin_of(t.manifest.guest_own_pages[0]);
    for tb in 0..d.heat_time_bins {
        for pb in 0..bins {
            let v = d.heat_at(tb, pb);
            if pb > ws_hi + 1 || (pb < ws_lo && pb != ctrl) {
                assert_eq!(v, 0.0, "time bin {tb}, page bin {pb}");
            }
        }
    }
    let seq_bins = d.heat_time_bins * 5 / 8; // the first 5 s of 8
    for pb in ws_lo + 1..ws_hi {
        assert!((0..seq_bins).any(|tb| d.heat_at(tb, pb) > 0.0), "page bin {pb} never dirty");
    }
    assert_eq!(d.summary.distinct_pages, WS_PAGES + 1);
    assert_eq!(d.phase_runs.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(), ["seq", "idle"]);
}

/// A copy of the trace at `src` to damage.
fn copy_trace(src: &Path, name: &str) -> InScratch {
    let dir = Scratch::new(name);
    let dst = dir.join("trace");
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    InScratch::new(dir, dst)
}

/// `simgrid --start` in the idle phase: nothing is dirtied, so the migration is round 0 alone,
/// the pages written before it in full and every other page as a 9-byte zero page, and
/// SimGrid's model reproduces it exactly.
#[test]
fn simgrid_start_in_an_idle_stretch_is_round_0_alone() {
    let base = seq_idle();
    let j = cli_json(&["simgrid", td(&base), "--start", "6.5s", "--migration-speed", "64MiB/s", "--json"]);
    // The working set, and the 2 MiB system area the guest starts with (its control page in it).
    let nonzero = WS_PAGES + 512;
    assert_eq!(j["round0_nonzero_pages"], nonzero);
    assert_eq!(j["round0_bytes"], nonzero * PAGE + (RAM / PAGE - nonzero) * 9);
    assert_eq!(j["guest_ram_bytes"], RAM);
    assert!(j.get("ramsize_bytes").is_none(), "the guest's RAM is not SimGrid's ramsize here: {j}");
    assert_eq!((j["dp_intensity"].as_f64(), j["cpu_util"].as_f64()), (Some(0.0), Some(0.0)));
    assert_eq!(j["fit"]["valid"], true, "{j}");
    assert_eq!(j["fit"]["curve_error"], 0.0);
    let t0 = j["round0_bytes"].as_f64().unwrap() / (64.0 * MIB as f64);
    for m in ["replay", "model"] {
        assert_eq!(j[m]["rounds"], 1, "{m}");
        assert_eq!(j[m]["transferred_bytes"], j["round0_bytes"], "{m}");
        assert!((j[m]["total_time_s"].as_f64().unwrap() - t0).abs() < 1e-12, "{m}");
    }
    assert_eq!(j["difference"]["total_time_pct"], 0.0);
    let r = cli_json(&[
        "replay",
        td(&base),
        "--start",
        "6.5s",
        "--bandwidth",
        "64MiB/s",
        "--zero-pages",
        "skip",
        "--max-downtime",
        "30ms",
        "--json",
    ]);
    assert_eq!(r["total_time_s"], j["replay"]["total_time_s"]);
    // The snippets set round 0's bytes as SimGrid's ramsize, and say so.
    let Run { code, stdout: out, .. } =
        cli(&["simgrid", td(&base), "--start", "6.5s", "--migration-speed", "64MiB/s", "--format", "c"]);
    assert_eq!(code, Some(0));
    assert!(out.contains(&format!("sg_vm_set_ramsize(vm, {});", j["round0_bytes"])), "{out}");
    assert!(out.contains("not the guest's RAM"), "{out}");
}

#[test]
fn bad_input_gets_a_clear_error_naming_the_file_or_flag() {
    let base = seq_idle();
    let t = td(&base);
    // Missing trace, missing file, truncated and corrupt files.
    assert_fails(&["summarize", "/nonexistent/trace"], &[], &["/nonexistent/trace", "manifest.json"], &[]);
    let no_bitmaps = copy_trace(&base, "bad-missing");
    std::fs::remove_file(no_bitmaps.join("bitmaps.parquet")).unwrap();
    assert_fails(&["summarize", no_bitmaps.to_str().unwrap()], &[], &["bitmaps.parquet", "missing"], &[]);
    let truncated = copy_trace(&base, "bad-truncated");
    let b = truncated.join("bitmaps.parquet");
    let len = std::fs::metadata(&b).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&b).unwrap().set_len(len / 2).unwrap();
    for cmd in [&["summarize"][..], &["replay", "--bandwidth", "1Gbit/s"], &["simgrid"], &["plot"]] {
        let mut args = cmd.to_vec();
        args.insert(1, truncated.to_str().unwrap());
        assert_fails(&args, &[], &["bitmaps.parquet"], &[]);
    }
    let corrupt = copy_trace(&base, "bad-corrupt");
    std::fs::write(corrupt.join("rates.parquet"), b"PAR1 this is not parquet PAR1").unwrap();
    assert_fails(&["summarize", corrupt.to_str().unwrap()], &[], &["rates.parquet"], &[]);
    let manifest = copy_trace(&base, "bad-manifest");
    std::fs::write(manifest.join("manifest.json"), b"{\"format_version\": 1, \"trace_id\": ").unwrap();
    assert_fails(&["replay", manifest.to_str().unwrap(), "--bandwidth", "1Gbit/s"], &[], &["manifest.json"], &[]);

    // A phase that does not exist.
    assert_fails(&["summarize", t, "--phase", "nosuch"], &[], &["--phase", "nosuch", "`seq`", "`idle`"], &[]);
    assert_fails(&["simgrid", t, "--phase", "nosuch"], &[], &["--phase", "nosuch"], &[]);
    // Bandwidths of 0 and below, and other flags out of range.
    assert_fails(&["replay", t, "--bandwidth", "0"], &[], &["--bandwidth"], &[]);
    assert_fails(&["replay", t, "--bandwidth", "0MiB/s"], &[], &["--bandwidth"], &[]);
    assert_fails(&["replay", t, "--bandwidth", "-1Gbit/s"], &[], &["--bandwidth", "negative"], &[]);
    assert_fails(&["replay", t, "--bandwidth=-5MiB/s"], &[], &["--bandwidth", "negative"], &[]);
    assert_fails(&["replay", t, "--bandwidth", "fast"], &[], &["--bandwidth"], &[]);
    assert_fails(&["replay", t, "--bandwidth", "1Gbit/s", "--max-rounds", "0"], &[], &["--max-rounds"], &[]);
    assert_fails(&["replay", t, "--bandwidth", "1Gbit/s", "--start", "100s"], &[], &["--start"], &[]);
    assert_fails(&["replay", t, "--bandwidth", "1Gbit/s", "--max-downtime", "-1ms"], &[], &["--max-downtime"], &[]);
    assert_fails(&["simgrid", t, "--migration-speed", "0"], &[], &["--migration-speed"], &[]);
    assert_fails(&["simgrid", t, "--migration-speed", "0", "--start", "1s"], &[], &["--migration-speed"], &[]);
    assert_fails(&["simgrid", t, "--start", "100s"], &[], &["--start", "100"], &[]);
    assert_fails(&["simgrid", t, "--start", "-1s"], &[], &["--start"], &[]);
    assert_fails(&["simgrid", t, "--start", "1s", "--max-rounds", "0"], &[], &["--max-rounds"], &[]);
    assert_fails(&["simgrid", t, "--start", "1s", "--phase", "seq"], &[], &["--start", "--phase"], &[]);
    assert_fails(&["simgrid", t, "--loop"], &[], &["--loop", "--start"], &[]);
    // A trace too short for the migration, without --loop.
    assert_fails(&["replay", t, "--bandwidth", "4MiB/s"], &[], &["--loop", t], &[]);
    assert_fails(&["simgrid", t, "--start", "1s", "--migration-speed", "4MiB/s"], &[], &["--loop", t], &[]);
    // A figure format we do not write.
    let figure = base.with_file_name("figure.jpg");
    assert_fails(&["plot", t, "-o", figure.to_str().unwrap()], &[], &["-o", "figure.jpg"], &[]);
}

/// A mixed workload over 64 MiB in 100 ms intervals: a sequential load (`zstd` bitmaps), a
/// hot/cold and a random phase (`varint-gaps`), an idle stretch, and hot/cold again, so that
/// the tools see both encodings, phase runs that restart, and every window of the curve.
const MIXED: &str = r#"mem = "64MiB"
vcpus = 2
seed = 11
[[phase]]
name = "load"
duration = "2.5s"
working_set = "40MiB"
rate = "24MiB/s"
pattern = "sequential"
[[phase]]
name = "serve"
duration = "4s"
working_set = "32MiB"
rate = "12MiB/s"
pattern = "hotcold"
[[phase]]
name = "batch"
duration = "3s"
working_set = "16MiB"
rate = "3MiB/s"
pattern = "random"
[[phase]]
name = "idle"
duration = "1s"
rate = "0"
cpu = 0.0
[[phase]]
name = "serve"
duration = "2.5s"
working_set = "32MiB"
rate = "6MiB/s"
pattern = "hotcold"
"#;

/// The pinned outputs of the offline tools on [`MIXED`]: `tests/fixtures/analysis-pinned.txt`,
/// one line per output, its name, a tab and its compact JSON. Compared as text: serde_json
/// writes the shortest text that reads back as the same f64, so equal text is equal bits
/// (reading the floats back would not be, without serde_json's `float_roundtrip`).
fn pinned() -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/analysis-pinned.txt");
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().map(|l| l.split_once('\t').map(|(k, v)| (k.to_string(), v.to_string())).unwrap()).collect()
}

/// `v` as JSON, without what differs from one generated trace to the next (its directory and id).
fn anonymous(v: impl serde::Serialize) -> serde_json::Value {
    let mut v = serde_json::to_value(v).unwrap();
    if let Some(o) = v.as_object_mut() {
        o.remove("trace_dir");
        o.remove("trace_id");
    }
    v
}

/// summarize, replay and simgrid on a trace with both encodings give exactly the outputs
/// pinned from main at b8a026f (before the offline tools' speed-ups of issue 21): every
/// figure, bit for bit, including the floats. The pages the tools see are each interval's
/// bitmaps, page by page.
#[test]
fn the_tools_outputs_on_a_mixed_trace_are_pinned_bit_exact() {
    use dirtytrace::analysis::{for_each_interval, PageSpace};
    use dirtytrace::trace::Encoding;
    use std::ops::ControlFlow;
    let dir = Scratch::new("analysis-pinned");
    let path = dir.join("trace");
    let opts = GenerateOptions { interval: Duration::from_millis(100), ..Default::default() };
    generate(&path, MIXED, &opts).unwrap();
    let t = trace(&path);
    // Both encodings, and what the tools are handed is every bitmap's pages, densely numbered.
    let space = PageSpace::new(&t.manifest.slots);
    let mut want = Vec::new();
    let mut encodings = HashSet::new();
    for item in t.intervals().unwrap() {
        let (row, bm) = item.unwrap();
        encodings.extend(bm.slots.iter().map(|s| s.encoding.as_str()));
        let dense: Vec<u32> = bm.pages().iter().map(|&p| space.dense(p).unwrap() as u32).collect();
        want.push((row.interval, dense));
    }
    assert_eq!(encodings, HashSet::from([Encoding::Zstd.as_str(), Encoding::VarintGaps.as_str()]));
    let mut got = Vec::new();
    let seen = for_each_interval(&t, |row, pages| {
        got.push((row.interval, pages.to_vec()));
        Ok(ControlFlow::Continue(()))
    })
    .unwrap();
    assert_eq!(seen, want.len() as u64);
    assert!(got == want, "for_each_interval's pages differ from the bitmaps'");

    let mut out = serde_json::Map::new();
    out.insert("summary".into(), anonymous(summary::summarize(&t, &SummaryOptions::default()).unwrap()));
    let serve = SummaryOptions { phase: Some("serve".into()), ..Default::default() };
    out.insert("summary_serve".into(), anonymous(summary::summarize(&t, &serve).unwrap()));
    let mut o = ReplayOptions::new(24.0 * MIB as f64);
    o.start_s = 1.05;
    out.insert("replay".into(), anonymous(replay::replay(&t, &o).unwrap()));
    let mut o = ReplayOptions::new(40.0 * MIB as f64);
    (o.start_s, o.precopy.zero_pages, o.precopy.looped) = (9.0, ZeroPages::Skip, true);
    out.insert("replay_skip_loop".into(), anonymous(replay::replay(&t, &o).unwrap()));
    out.insert("simgrid".into(), anonymous(simgrid::fit(&t, &simgrid::SimgridOptions::default()).unwrap()));
    let o = simgrid::SimgridOptions { phase: Some("batch".into()), migration_speed: Some(32.0 * MIB as f64) };
    out.insert("simgrid_batch".into(), anonymous(simgrid::fit(&t, &o).unwrap()));
    let got: Vec<(String, String)> = out.into_iter().map(|(k, v)| (k, v.to_string())).collect();
    let want = pinned();
    assert_eq!(got.len(), want.len());
    for ((k, v), (wk, wv)) in got.iter().zip(&want) {
        assert_eq!(k, wk);
        assert!(v == wv, "{k} differs from the pinned output; now:\n{v}\npinned:\n{wv}");
    }
}

/// [`MIXED`] generated into a fresh directory, with every interval's dense pages as the
/// sequential reader gives them.
fn mixed_with_pages(name: &str) -> (InScratch, Vec<(u64, Vec<u32>)>) {
    let dir = Scratch::new(name);
    let path = dir.join("trace");
    let opts = GenerateOptions { interval: Duration::from_millis(100), ..Default::default() };
    generate(&path, MIXED, &opts).unwrap();
    let t = trace(&path);
    let mut stream = t.interval_pages().unwrap();
    let (mut want, mut pages) = (Vec::new(), Vec::new());
    while let Some(row) = stream.next_into(&mut pages) {
        want.push((row.unwrap().interval, std::mem::take(&mut pages)));
    }
    (InScratch::new(dir, path), want)
}

/// Rewrites `bitmaps.parquet` in `dir` with row `row`'s `data` as `data`, and with 1 added to
/// `num_pages` of row `bigger`, if given.
fn corrupt_bitmaps(dir: &Path, row: usize, data: &[u8], bigger: Option<usize>) {
    use arrow::array::{Array, BinaryArray, UInt64Array};
    use std::sync::Arc;
    let path = dir.join("bitmaps.parquet");
    let b = read_table(&path);
    let (d, n) = (b.schema().index_of("data").unwrap(), b.schema().index_of("num_pages").unwrap());
    let old = b.column(d).as_any().downcast_ref::<BinaryArray>().unwrap();
    let vals: Vec<&[u8]> = (0..old.len()).map(|i| if i == row { data } else { old.value(i) }).collect();
    let num = b.column(n).as_any().downcast_ref::<UInt64Array>().unwrap();
    let nums: Vec<u64> = (0..num.len()).map(|i| num.value(i) + (Some(i) == bigger) as u64).collect();
    let mut cols = b.columns().to_vec();
    cols[d] = Arc::new(BinaryArray::from_iter_values(vals));
    cols[n] = Arc::new(UInt64Array::from(nums));
    write_table(&path, &arrow::record_batch::RecordBatch::try_new(b.schema(), cols).unwrap());
}

/// The error the sequential reader gives on the trace in `dir`; it must give one.
fn sequential_error(dir: &Path) -> String {
    let t = trace(dir);
    let mut stream = t.interval_pages().unwrap();
    let mut pages = Vec::new();
    loop {
        match stream.next_into(&mut pages) {
            Some(Ok(_)) => pages.clear(),
            Some(Err(e)) => return e.to_string(),
            None => panic!("the sequential reader took the bad blob"),
        }
    }
}

/// The tools' reader decodes on two threads: whatever the timing, the tool gets every interval
/// once, in order, with its pages, and stops reading where it breaks, at batch boundaries
/// (16 intervals) and between them. 130 intervals: more than the batches in flight, and not a
/// whole number of batches.
#[test]
fn for_each_interval_hands_every_interval_in_order_and_stops_where_asked() {
    use dirtytrace::analysis::for_each_interval;
    use std::ops::ControlFlow;
    let (t, want) = mixed_with_pages("analysis-pipeline-order");
    let t = trace(&t);
    assert_eq!(want.len(), 130);
    for _ in 0..20 {
        let mut got = Vec::new();
        let seen = for_each_interval(&t, |row, pages| {
            got.push((row.interval, pages.to_vec()));
            Ok(ControlFlow::Continue(()))
        })
        .unwrap();
        assert_eq!(seen, 130);
        assert!(got == want, "for_each_interval's intervals differ from the sequential reader's");
    }
    for stop in [0usize, 1, 15, 16, 17, 63, 64, 65, 100, 128, 129] {
        let mut got = Vec::new();
        let seen = for_each_interval(&t, |row, pages| {
            got.push((row.interval, pages.to_vec()));
            Ok(if got.len() == stop + 1 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) })
        })
        .unwrap();
        assert_eq!(seen, stop as u64 + 1);
        assert!(got[..] == want[..=stop], "stopping after interval {stop}");
    }
}

/// A blob that cannot be decoded ends the tool with the error the sequential reader gives,
/// naming its row, after the tool has seen only intervals before it, in order; whichever thread
/// decoded it. An error of the tool's own ends the reading too (the test returns).
#[test]
fn for_each_interval_reports_a_bad_blob_in_order_and_a_tools_error_ends_it() {
    use dirtytrace::analysis::for_each_interval;
    use std::ops::ControlFlow;
    let (dir, want) = mixed_with_pages("analysis-pipeline-error");
    let t = trace(&dir);
    assert_eq!(t.manifest.slots.len(), 1);
    for bad_row in [3usize, 40, 100, 129] {
        let path = dir.join("bitmaps.parquet");
        let saved = std::fs::read(&path).unwrap();
        corrupt_bitmaps(&dir, bad_row, b"not zstd", None);
        let t = trace(&dir);
        let sequential = sequential_error(&dir);
        assert!(sequential.contains(&format!("row {bad_row}")), "{sequential}");
        for _ in 0..10 {
            let mut got = Vec::new();
            let err = for_each_interval(&t, |row, pages| {
                got.push((row.interval, pages.to_vec()));
                Ok(ControlFlow::Continue(()))
            })
            .unwrap_err();
            assert_eq!(err.to_string(), sequential);
            assert!(got.len() <= bad_row && got[..] == want[..got.len()], "row {bad_row}: saw {}", got.len());
        }
        std::fs::write(&path, saved).unwrap();
    }
    let err = for_each_interval(&t, |row, _| {
        if row.interval == 70 {
            return Err(dirtytrace::analysis::AnalysisError::TraceTooShort("the tool's own".into()));
        }
        Ok(ControlFlow::Continue(()))
    })
    .unwrap_err();
    assert_eq!(err.to_string(), "the tool's own");
}

/// A blob that cannot be decoded, followed in the same batch by a row that cannot even be read:
/// the tool gets the sequential reader's error, the first in order (the blob's), not the
/// later read error in its batch's place.
#[test]
fn for_each_interval_reports_a_bad_blob_before_a_later_read_error_in_its_batch() {
    use dirtytrace::analysis::for_each_interval;
    use std::ops::ControlFlow;
    let (dir, _) = mixed_with_pages("analysis-pipeline-two-errors");
    corrupt_bitmaps(&dir, 3, b"not zstd", Some(10));
    let t = trace(&dir);
    let sequential = sequential_error(&dir);
    assert!(sequential.contains("row 3:"), "{sequential}");
    for _ in 0..10 {
        let err = for_each_interval(&t, |_, _| Ok(ControlFlow::Continue(()))).unwrap_err();
        assert_eq!(err.to_string(), sequential);
    }
}
