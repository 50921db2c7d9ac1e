//! Benchmark of datasets: `dirtytrace index` over many traces, and what a sweep costs per run
//! beyond the recording itself.
//!
//!     cargo run --release --example bench_sweep -- [DIR] [--traces N] [--runs M] [--seconds S] [--no-record]
//!
//! 1. Index: generates N traces (default 1000) into DIR/index-ds (default DIR
//!    target/bench-sweep) with `guest::synthetic::generate`, the exact writes of a small
//!    synthetic guest (64 MiB, 1 s at 100 ms: 10 intervals each), without KVM, then times
//!    `dirtytrace index --rebuild` (every trace analysed: summarize, simgrid and two replays),
//!    `dirtytrace index` with nothing changed, and one sweep-style rewrite after one trace was
//!    added to the N.
//! 2. Sweep overhead (needs /dev/kvm): records M runs (default 6) of S seconds (default 0.5) with
//!    `sweep::run` and reports, per run, the wall time outside the recorder (looking at the
//!    run's directory, writing its spec, rewriting the index) and the sweep's wall time less the
//!    recordings'.

use anyhow::{bail, Context};
use dirtytrace::dataset::sweep::{self, Engine, SweepOptions};
use dirtytrace::dataset::{index, TRACES};
use dirtytrace::guest::synthetic::generate::{generate, GenerateOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

/// `n` runs: 10 rates × 10 working sets × `n / 100` repetitions (n a multiple of 100), or
/// `n` rates when smaller.
fn index_grid(n: usize) -> String {
    let (rates, sets, repeat) = if n >= 100 && n.is_multiple_of(100) { (10, 10, n / 100) } else { (n, 1, 1) };
    let rates: Vec<String> = (1..=rates).map(|r| format!("\"{r}MiB/s\"")).collect();
    let sets: Vec<String> = (1..=sets).map(|w| format!("\"{}MiB\"", 4 * w)).collect();
    format!(
        "[spec]\nmem = \"64MiB\"\nseed = 1\n[[spec.phase]]\nname = \"w\"\nduration = \"1s\"\nworking_set = \"16MiB\"\n\
         rate = \"8MiB/s\"\npattern = \"random\"\n[record]\ninterval = \"100ms\"\n[axes]\nrate = [{}]\nworking_set = [{}]\n\
         repeat = {repeat}\n[replay]\nbandwidths = [\"256MiB/s\", \"1Gbit/s\"]\nloop = true\n",
        rates.join(", "),
        sets.join(", ")
    )
}

fn dirtytrace() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/release/examples/bench_sweep -> target/release/dirtytrace
    exe.parent().and_then(Path::parent).map(|d| d.join("dirtytrace")).unwrap_or_else(|| "dirtytrace".into())
}

fn timed_index(ds: &Path, extra: &[&str]) -> anyhow::Result<f64> {
    let t = Instant::now();
    let out = Command::new(dirtytrace()).arg("index").arg(ds).args(extra).output().context("run dirtytrace index")?;
    if !out.status.success() {
        bail!("dirtytrace index failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    eprint!("  {}", String::from_utf8_lossy(&out.stderr));
    Ok(t.elapsed().as_secs_f64())
}

fn bench_index(dir: &Path, n: usize) -> anyhow::Result<()> {
    let ds = dir.join("index-ds");
    let grid = dir.join("index-grid.toml");
    std::fs::create_dir_all(dir)?;
    std::fs::write(&grid, index_grid(n))?;
    let mut opts = SweepOptions::new(grid, ds.clone());
    opts.engine = Engine::Generate;
    opts.max_runs = n.max(1);
    let plan = sweep::plan(opts)?;
    let runs = plan.mine();
    if dirtytrace::dataset::DatasetInfo::load(&ds)?.is_none()
        || dirtytrace::dataset::dataset_traces(&ds)?.len() != runs.len()
    {
        eprintln!("generating {} traces into {} ...", runs.len(), ds.display());
        std::fs::create_dir_all(ds.join(TRACES))?;
        plan.info.store(&ds)?;
        let t = Instant::now();
        for r in &runs {
            let dir = ds.join(TRACES).join(&r.name);
            if dir.exists() {
                continue;
            }
            let dirtytrace::dataset::grid::RunWorkload::Synthetic { spec } = &r.workload else { bail!("synthetic") };
            let o = GenerateOptions {
                interval: r.record.interval.0,
                migration_speed: r.record.migration_speed.0,
                trace_id: Some(format!("{:032x}", r.run)),
                progress: None,
            };
            generate(&dir, spec, &o)?;
        }
        eprintln!("  generated in {:.1} s", t.elapsed().as_secs_f64());
    }
    let bytes: u64 = walk_size(&ds.join(TRACES));
    println!("index over {} traces ({:.1} MiB of traces):", runs.len(), bytes as f64 / (1 << 20) as f64);
    let full = timed_index(&ds, &["--rebuild"])?;
    println!(
        "  dirtytrace index --rebuild (all analysed)   {full:.2} s  ({:.2} ms per trace)",
        full * 1e3 / runs.len() as f64
    );
    let same = timed_index(&ds, &[])?;
    println!("  dirtytrace index (nothing changed)          {same:.2} s");
    // What a sweep pays after each run: one new trace among n (the last one, made again).
    let last = runs[runs.len() - 1];
    let dir = ds.join(TRACES).join(&last.name);
    std::fs::remove_dir_all(&dir)?;
    let dirtytrace::dataset::grid::RunWorkload::Synthetic { spec } = &last.workload else { bail!("synthetic") };
    let o = GenerateOptions {
        interval: last.record.interval.0,
        migration_speed: last.record.migration_speed.0,
        trace_id: Some(format!("{:032x}", u128::MAX - now_tag())),
        progress: None,
    };
    generate(&dir, spec, &o)?;
    let t = Instant::now();
    let r = index::update(&ds, false)?;
    let one = t.elapsed().as_secs_f64();
    println!(
        "  rewrite after one new trace (in process)    {one:.3} s  ({} analysed, {} reused)",
        r.analysed, r.reused
    );
    Ok(())
}

/// A number that differs between runs of the benchmark.
fn now_tag() -> u128 {
    dirtytrace::clock::now_ns() as u128
}

fn walk_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => walk_size(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

fn bench_sweep(dir: &Path, runs: usize, seconds: f64) -> anyhow::Result<()> {
    let ds = dir.join("sweep-ds");
    if ds.exists() {
        std::fs::remove_dir_all(&ds)?;
    }
    let grid = dir.join("sweep-grid.toml");
    let rates: Vec<String> = (1..=runs).map(|r| format!("\"{}MiB/s\"", 4 * r)).collect();
    std::fs::write(
        &grid,
        format!(
            "[spec]\nmem = \"64MiB\"\n[[spec.phase]]\nname = \"w\"\nduration = \"{seconds}s\"\nworking_set = \"16MiB\"\n\
             rate = \"8MiB/s\"\n[record]\ninterval = \"50ms\"\n[axes]\nrate = [{}]\n[replay]\nbandwidths = [\"1Gbit/s\"]\nloop = true\n",
            rates.join(", ")
        ),
    )?;
    let plan = sweep::plan(SweepOptions::new(grid, ds.clone()))?;
    let r = sweep::run(&plan, Arc::new(AtomicBool::new(false)), &sweep::Quiet)?;
    if r.failed > 0 {
        bail!("{} runs failed: {:?}", r.failed, r.outcomes.iter().filter_map(|o| o.note.as_ref()).collect::<Vec<_>>());
    }
    let n = r.outcomes.len() as f64;
    let rec: f64 = r.outcomes.iter().map(|o| o.record_s).sum();
    let over: Vec<f64> = r.outcomes.iter().map(|o| o.overhead_s).collect();
    let traced: f64 = r.outcomes.iter().filter_map(|o| o.duration_s).sum();
    println!("sweep of {} runs of {seconds} s (64 MiB guest, 50 ms):", r.outcomes.len());
    println!("  wall {:.2} s; recorder (build + run) {:.2} s; trace time {:.2} s", r.wall_s, rec, traced);
    println!(
        "  per run outside the recorder: mean {:.1} ms, max {:.1} ms (directory check, spec, index rewrite)",
        over.iter().sum::<f64>() / n * 1e3,
        over.iter().cloned().fold(0.0, f64::max) * 1e3
    );
    println!("  per run, sweep wall less recorder: {:.1} ms", (r.wall_s - rec) / n * 1e3);
    println!("  per run, recorder less trace time (VM setup, finalising): {:.1} ms", (rec - traced) / n * 1e3);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut dir, mut n, mut runs, mut seconds, mut record) =
        (PathBuf::from("target/bench-sweep"), 1000usize, 6usize, 0.5f64, true);
    while let Some(a) = args.next() {
        let mut value = |what: &str| args.next().with_context(|| format!("{what} needs a value"));
        match a.as_str() {
            "--traces" => n = value("--traces")?.parse()?,
            "--runs" => runs = value("--runs")?.parse()?,
            "--seconds" => seconds = value("--seconds")?.parse()?,
            "--no-record" => record = false,
            d if !d.starts_with('-') => dir = PathBuf::from(d),
            other => bail!("unknown argument {other}"),
        }
    }
    bench_index(&dir, n)?;
    if record {
        bench_sweep(&dir, runs, seconds)?;
    }
    Ok(())
}
