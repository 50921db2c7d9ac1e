//! The soak test of issue 7: one long recording at 10 ms intervals, with the recorder's RSS
//! sampled as it runs. Ignored in the normal suite (it lasts 30 minutes); run it with
//!
//! ```sh
//! cargo test --release --test soak -- --ignored --nocapture
//! DIRTYTRACE_SOAK_SECS=120 cargo test --release --test soak -- --ignored --nocapture   # shorter
//! ```
//!
//! It reports the RSS over time and its slope, the deadline figures (on-time fraction, lateness
//! p99 and max, skipped deadlines) and the trace's bytes per interval, and fails when memory
//! grows with the recording's length or intervals are lost. Timing depends on the machine's
//! load, so the deadline figures are reported, not asserted.

mod common;

use common::*;
use dirtytrace::trace::{Trace, TraceStatus};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Least-squares slope of `y` over `x`.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    sxy / sxx
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
#[ignore = "30 minutes: run by hand (see the file's comment)"]
fn soak_record_at_10ms() {
    let _g = kvm_lock();
    let secs: u64 = std::env::var("DIRTYTRACE_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(1800);
    let dir = Scratch::new("soak");
    // Sequential writes touch the whole working set within its first 2 s sweep, so that the
    // guest's own pages (part of the recorder's RSS) are all resident before the slope is taken.
    let spec = format!(
        "mem = \"256MiB\"\nvcpus = 1\nseed = 3\n[[phase]]\nname = \"soak\"\nduration = \"{secs}s\"\n\
         working_set = \"64MiB\"\nrate = \"32MiB/s\"\npattern = \"sequential\"\n"
    );
    let spec_path = write(&dir, "soak.toml", &spec);
    let out = dir.join("trace");
    let mut child = Command::new(bin())
        .args(["record", "--interval", "10ms", "--workload", spec_path.to_str().unwrap(), "--json"])
        .args(["--output", out.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let start = Instant::now();
    let mut samples: Vec<(f64, f64)> = Vec::new(); // (seconds, RSS in MiB)
    let mut loads: Vec<String> = Vec::new();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if let Some(kib) = rss_kib(pid) {
            let t = start.elapsed().as_secs_f64();
            samples.push((t, kib as f64 / 1024.0));
            if samples.len() % 30 == 1 {
                loads.push(format!("{t:.0}s: {}", load_average()));
                eprintln!("soak: {t:6.0} s  RSS {:7.1} MiB  load {}", kib as f64 / 1024.0, load_average());
            }
        }
        assert!(start.elapsed() < Duration::from_secs(secs + 600), "the recording outlasted its workload by 10 min");
        std::thread::sleep(Duration::from_secs(10));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{status}: {stderr}");

    let trace = Trace::open(&out).unwrap();
    let m = &trace.manifest;
    assert_eq!(m.status, TraceStatus::Complete);
    let rows = trace.rates().unwrap();
    let t = &m.timing;
    let full = rows.iter().filter(|r| !r.partial).count() as u64;
    let on_time = 1.0 - t.missed_deadlines as f64 / full.max(1) as f64;
    let files: u64 = ["rates.parquet", "bitmaps.parquet", "manifest.json", "guest_log.jsonl"]
        .iter()
        .map(|f| std::fs::metadata(out.join(f)).map_or(0, |m| m.len()))
        .sum();
    // The slope over the steady state: from the end of the first minute (allocators and
    // buffers warmed up) to the last sample while recording. Samples taken while finalising
    // (the guest's memory already released) are left out.
    let warm = 60.0_f64.min(secs as f64 / 4.0);
    let steady: Vec<(f64, f64)> = samples.iter().copied().filter(|&(t, _)| t >= warm && t < secs as f64).collect();
    let per_hour = if steady.len() >= 3 { slope(&steady) * 3600.0 } else { f64::NAN };
    let first = steady.first().map_or(f64::NAN, |s| s.1);
    let last = steady.last().map_or(f64::NAN, |s| s.1);
    let peak = samples.iter().map(|s| s.1).fold(0.0, f64::max);
    eprintln!(
        "soak: {secs} s at 10 ms: {} intervals ({full} full), {} skipped deadlines, {} missed (on time: {:.4}), \
         lateness p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; RSS {first:.1} MiB after warm-up, {last:.1} MiB at the end, \
         peak {peak:.1} MiB, slope {per_hour:.3} MiB/h over {} samples; trace {files} bytes = {:.0} bytes/interval; \
         load averages: {}",
        rows.len(),
        t.skipped_deadlines,
        t.missed_deadlines,
        on_time,
        t.lateness_p50_s * 1e3,
        t.lateness_p99_s * 1e3,
        t.lateness_max_s * 1e3,
        steady.len(),
        files as f64 / rows.len().max(1) as f64,
        loads.join(", ")
    );
    // Every deadline is accounted for: harvested, or skipped and folded into the next interval.
    let expected = secs * 100;
    assert!(
        rows.len() as u64 + t.skipped_deadlines >= expected - 2 && rows.len() as u64 <= expected + 1,
        "{} intervals and {} skipped deadlines for {expected} deadlines",
        rows.len(),
        t.skipped_deadlines
    );
    // Memory does not grow with the recording's length: under 4 MiB over the whole run.
    assert!(last - first < 4.0, "RSS grew from {first:.1} to {last:.1} MiB");
}
