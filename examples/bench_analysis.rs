//! Benchmark of the offline tools on a long trace: 1 hour at 100 ms of a 4 GiB guest.
//!
//!     cargo run --release --example bench_analysis -- [DIR] [--hours H] [--mem SIZE] [--rounds N]
//!
//! Generates the trace in DIR (default target/bench-analysis-trace) unless it is there
//! already, with `guest::synthetic::generate`: the exact page writes the synthetic guest would
//! make for a mixed workload (sequential load, hot/cold serving, random batch, idle), fed
//! through the recorder's accounting and trace writer, without KVM.
//! Then it times, each in a fresh process so that the peak RSS is its own:
//!   read      — read and decompress every bitmap into words (the reader alone; the baseline)
//!   pipeline  — read every interval as the tools do (`analysis::for_each_interval`: both
//!               tables, pages decoded on two threads) and do nothing with it
//!   summarize — `dirtytrace summarize`
//!   replay    — `dirtytrace replay` at a bandwidth whose round 0 lasts 99 % of the trace
//!   simgrid   — `dirtytrace simgrid`
//! in N rounds (default 5), each round every step once, and prints the medians of wall time,
//! of its ratio to the same round's `read` (with the lowest and highest) and of CPU time (user
//! + system, all threads), and the highest peak RSS (the child's VmHWM).

use anyhow::{anyhow, bail, Context};
use dirtytrace::analysis::{replay, simgrid, summary};
use dirtytrace::guest::synthetic::{self, generate::GenerateOptions};
use dirtytrace::trace::{self, Trace};
use dirtytrace::units::{parse_size, HumanBytes};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The workload for `hours` of trace, as a synthetic spec: phases scale with the length.
fn spec_text(mem: u64, hours: f64) -> String {
    let s = |f: f64| format!("{:.1}s", f * hours * 3600.0);
    format!(
        "mem = \"{mem}\"\nseed = 9\n\
         [[phase]]\nname = \"load\"\nduration = \"{}\"\nworking_set = \"3GiB\"\nrate = \"100MiB/s\"\npattern = \"sequential\"\n\
         [[phase]]\nname = \"serve\"\nduration = \"{}\"\nworking_set = \"2GiB\"\nrate = \"200MiB/s\"\npattern = \"hotcold\"\n\
         [[phase]]\nname = \"batch\"\nduration = \"{}\"\nworking_set = \"1GiB\"\nrate = \"50MiB/s\"\npattern = \"random\"\n\
         [[phase]]\nname = \"idle\"\nduration = \"{}\"\nrate = \"0\"\ncpu = 0.0\n\
         [[phase]]\nname = \"serve2\"\nduration = \"{}\"\nworking_set = \"2GiB\"\nrate = \"100MiB/s\"\npattern = \"hotcold\"\n",
        s(1.0 / 6.0),
        s(1.0 / 3.0),
        s(1.0 / 6.0),
        s(1.0 / 12.0),
        s(1.0 / 4.0),
    )
}

fn generate(dir: &Path, mem: u64, hours: f64) -> anyhow::Result<()> {
    let opts = GenerateOptions {
        interval: std::time::Duration::from_millis(100),
        progress: Some(|k| eprintln!("  generated {k} intervals")),
        ..Default::default()
    };
    synthetic::generate::generate(dir, &spec_text(mem, hours), &opts)?;
    Ok(())
}

/// One measurement, in this (child) process: prints `{"wall_s": …, …}`.
fn child(mode: &str, dir: &Path) -> anyhow::Result<()> {
    let t = Trace::open(dir)?;
    let start = Instant::now();
    let detail = match mode {
        "read" => {
            // Only what the reader does: the words are decompressed, and not looked at again.
            let (mut intervals, mut words) = (0u64, 0u64);
            for bm in t.bitmaps()? {
                let bm = std::hint::black_box(bm?);
                intervals += 1;
                words += bm.slots.iter().map(|s| s.words.len() as u64).sum::<u64>();
            }
            serde_json::json!({"intervals": intervals, "decoded_words": words})
        }
        "pipeline" => {
            let (mut intervals, mut pages) = (0u64, 0u64);
            dirtytrace::analysis::for_each_interval(&t, |_, p| {
                intervals += 1;
                pages += p.len() as u64;
                Ok(std::ops::ControlFlow::Continue(()))
            })?;
            serde_json::json!({"intervals": intervals, "pages": pages})
        }
        "summarize" => {
            let s = summary::summarize(&t, &summary::SummaryOptions::default())?;
            serde_json::json!({"intervals": s.intervals, "distinct_pages": s.distinct_pages})
        }
        "replay" => {
            let mut end = 1.0;
            for row in t.rates_stream()? {
                end = row?.t_end_s;
            }
            let mut o = replay::ReplayOptions::new(t.manifest.ramsize_bytes as f64 / (0.99 * end));
            o.precopy.max_rounds = 1;
            let r = replay::replay(&t, &o)?;
            serde_json::json!({"total_time_s": r.total_time_s, "intervals_in_round_0": r.per_round[0].intervals,
                               "stop_and_copy_bytes": r.stop_and_copy.bytes})
        }
        "simgrid" => {
            let p = simgrid::fit(&t, &simgrid::SimgridOptions::default())?;
            serde_json::json!({"dp_intensity": p.dp_intensity, "working_set_memory_bytes": p.working_set_memory_bytes})
        }
        _ => bail!("unknown mode {mode}"),
    };
    let wall_s = start.elapsed().as_secs_f64();
    // This process's own peak RSS. (getrusage's ru_maxrss of a child would also count the
    // parent's memory at the fork: Linux carries the high-water mark across exec.)
    let status = std::fs::read_to_string("/proc/self/status")?;
    let hwm_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/self/status")?;
    let ru = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)?;
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    let cpu_s = secs(ru.user_time()) + secs(ru.system_time());
    println!(
        "{}",
        serde_json::json!({"wall_s": wall_s, "cpu_s": cpu_s, "peak_rss_bytes": hwm_kib * 1024, "detail": detail})
    );
    Ok(())
}

/// Runs one measurement in a child process; returns its JSON.
fn measure(mode: &str, dir: &Path) -> anyhow::Result<serde_json::Value> {
    let exe = std::env::current_exe()?;
    let out = Command::new(exe).arg("--child").arg(mode).arg(dir).stderr(Stdio::inherit()).output()?;
    if !out.status.success() {
        bail!("{mode} failed");
    }
    serde_json::from_slice(&out.stdout).with_context(|| mode.to_string())
}

/// The steps, in the order each round runs them.
const MODES: [&str; 5] = ["read", "pipeline", "summarize", "replay", "simgrid"];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        return child(&args[2], Path::new(&args[3]));
    }
    let mut dir = PathBuf::from("target/bench-analysis-trace");
    let (mut hours, mut mem, mut rounds) = (1.0f64, 4u64 << 30, 5u32);
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--hours" => {
                hours =
                    args.get(i + 1).and_then(|h| h.parse().ok()).ok_or_else(|| anyhow!("--hours needs a number"))?;
                i += 1;
            }
            "--rounds" => {
                rounds = args
                    .get(i + 1)
                    .and_then(|r| r.parse().ok())
                    .filter(|&r| r > 0)
                    .ok_or_else(|| anyhow!("--rounds needs a whole number of at least 1"))?;
                i += 1;
            }
            "--mem" => {
                mem = parse_size(args.get(i + 1).ok_or_else(|| anyhow!("--mem needs a size"))?)?;
                i += 1;
            }
            d => dir = PathBuf::from(d),
        }
        i += 1;
    }
    if !dir.join(trace::MANIFEST).exists() {
        eprintln!("generating {} h at 100 ms of a {} guest into {}", hours, HumanBytes(mem as f64), dir.display());
        let t0 = Instant::now();
        generate(&dir, mem, hours)?;
        eprintln!("generated in {:.1} s", t0.elapsed().as_secs_f64());
    }
    let t = Trace::open(&dir)?;
    let file = std::fs::metadata(dir.join(trace::BITMAPS))?.len();
    let raw = t.manifest.intervals * t.manifest.total_pages().div_ceil(64) * 8;
    println!(
        "trace: {} intervals of {} ms, {} guest; bitmaps.parquet {} on disk, {} raw",
        t.manifest.intervals,
        t.manifest.interval_s * 1e3,
        HumanBytes(t.manifest.ramsize_bytes as f64),
        HumanBytes(file as f64),
        HumanBytes(raw as f64)
    );
    // A first read warms the page cache, so that every measurement reads from memory.
    measure("read", &dir)?;
    // Round after round, each step once, so that a slow spell of the machine falls on every
    // step alike; each ratio is to the same round's `read`.
    let mut runs: Vec<Vec<serde_json::Value>> = vec![Vec::new(); MODES.len()];
    for round in 1..=rounds {
        for (i, mode) in MODES.iter().enumerate() {
            runs[i].push(measure(mode, &dir)?);
        }
        eprintln!("  round {round} of {rounds} done");
    }
    let wall = |v: &serde_json::Value| v["wall_s"].as_f64().unwrap_or(0.0);
    println!(
        "medians of {rounds} rounds (ratio: median of each round's wall / that round's read; range: lowest–highest)"
    );
    println!("{:<10} {:>9} {:>8} {:>13} {:>9} {:>10}  detail", "step", "wall", "vs read", "range", "CPU", "peak RSS");
    for (i, mode) in MODES.iter().enumerate() {
        let ratios: Vec<f64> = runs[i].iter().zip(&runs[0]).map(|(v, r)| wall(v) / wall(r)).collect();
        let rss = runs[i].iter().filter_map(|v| v["peak_rss_bytes"].as_u64()).max().unwrap_or(0);
        let (lo, hi) = ratios.iter().fold((f64::MAX, 0.0f64), |(l, h), &r| (l.min(r), h.max(r)));
        println!(
            "{mode:<10} {:>7.2} s {:>7.2}x {:>6.2}–{:<5.2} {:>7.2} s {:>10}  {}",
            median(runs[i].iter().map(wall).collect()),
            median(ratios),
            lo,
            hi,
            median(runs[i].iter().map(|v| v["cpu_s"].as_f64().unwrap_or(0.0)).collect()),
            HumanBytes(rss as f64).to_string(),
            runs[i][0]["detail"]
        );
    }
    Ok(())
}
