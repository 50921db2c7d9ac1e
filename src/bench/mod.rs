//! `dirtytrace bench`: the recorder's costs, measured as ratios within one run. Every figure
//! comes from real recordings of the synthetic guest on this host.

mod compression;
mod cost;
mod cut;
mod deadline;
mod linux;
mod slowdown;

pub use compression::{compression, CompressionRow};
pub use cost::{harvest_cost, writer_work, HarvestCostRow, WriterWorkRow};
pub use cut::{exact_cut, ExactCutRow};
pub use deadline::{deadlines, DeadlineLimit, DeadlineRow, TimerFloorRow};
pub use linux::{linux_setup, LinuxSetupRow};
pub use slowdown::{slowdown, SlowdownRow};

use crate::guest::synthetic::DoneDetail;
use crate::record::{self, RecordOptions, RecordSummary};
use crate::trace::Trace;
use crate::units::HumanDuration;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Everything one `bench` run measured.
#[derive(Debug, Default, Serialize)]
pub struct BenchReport {
    /// What `--exact-cut` costs.
    pub exact_cut: Vec<ExactCutRow>,
    /// Linux guest setup times.
    pub linux_setup: Vec<LinuxSetupRow>,
    /// Harvest cost per GiB.
    pub harvest_cost: Vec<HarvestCostRow>,
    /// The writer's work per harvest, as 44c1d43 did it and as today, on the same bitmaps.
    pub writer_work: Vec<WriterWorkRow>,
    /// The host's timer floor at the shortest intervals, with no guest.
    pub timer_floor: Vec<TimerFloorRow>,
    /// Deadlines kept, per interval.
    pub deadlines: Vec<DeadlineRow>,
    /// The shortest intervals that kept their deadlines.
    pub deadline_limits: Vec<DeadlineLimit>,
    /// Guest slowdown from tracking.
    pub slowdown: Vec<SlowdownRow>,
    /// Bitmap bytes on disk.
    pub compression: Vec<CompressionRow>,
}

/// `--mem`'s default: guest RAM of the cost, slowdown and compression runs.
pub const DEFAULT_MEM: u64 = crate::units::GIB;
/// `--deadline-mem`'s default: guest sizes of the deadline runs (sparse: a 256 GiB guest fits a
/// machine with far less RAM).
pub const DEFAULT_DEADLINE_MEM: [u64; 3] = [4 * crate::units::GIB, 64 * crate::units::GIB, 256 * crate::units::GIB];
/// The intervals the deadline runs try, shortest first (ms).
pub const DEADLINE_INTERVALS_MS: [u64; 6] = [1, 2, 5, 10, 20, 50];
/// The longest `--seconds`: one day per recording.
pub const MAX_SECONDS: f64 = 86_400.0;
/// `--seconds`'s default: the length of each recording.
pub const DEFAULT_SECONDS: f64 = 3.0;
/// `--work-dir`'s default.
pub const DEFAULT_WORK_DIR: &str = "target/bench-traces";

/// What `bench` is told.
pub struct BenchOptions {
    /// The bench records into a fresh directory of its own inside this one, and removes only
    /// that directory when it ends.
    pub work_dir: PathBuf,
    /// Guest RAM of the cost, slowdown and compression runs.
    pub mem: u64,
    /// Guest sizes of the deadline runs.
    pub deadline_mem: Vec<u64>,
    /// Length of each recording (s).
    pub seconds: f64,
}

/// The measurements `bench` can make, in the order it makes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchStep {
    /// Linux guest: time from `record` to the guest's first instruction.
    Linux,
    /// What `--exact-cut` costs.
    Cut,
    /// Harvest cost per GiB.
    Cost,
    /// Deadlines kept at short intervals.
    Deadline,
    /// Guest slowdown from tracking.
    Slowdown,
    /// Bitmap bytes on disk.
    Compression,
}

impl BenchStep {
    /// Every step, in the order `bench` runs them.
    pub const ALL: [BenchStep; 6] = [
        BenchStep::Linux,
        BenchStep::Cut,
        BenchStep::Cost,
        BenchStep::Deadline,
        BenchStep::Slowdown,
        BenchStep::Compression,
    ];
}

/// A directory the bench created and alone removes: never the user's `--work-dir` itself,
/// nor anything that was in it.
struct Workspace {
    dir: PathBuf,
    /// `--work-dir` did not exist and the bench made it: removed too if it is empty at the end.
    made_parent: bool,
    parent: PathBuf,
}

impl Workspace {
    fn create(parent: &Path) -> anyhow::Result<Workspace> {
        use anyhow::Context;
        let made_parent = !parent.exists();
        std::fs::create_dir_all(parent).with_context(|| format!("--work-dir: cannot create {}", parent.display()))?;
        let dir = parent.join(format!("dirtytrace-bench-{}-{}", std::process::id(), crate::clock::now_ns()));
        // create_dir, not create_dir_all: it fails rather than adopt a directory that exists.
        std::fs::create_dir(&dir).with_context(|| format!("--work-dir: cannot create {}", dir.display()))?;
        Ok(Workspace { dir, made_parent, parent: parent.to_path_buf() })
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        if self.made_parent {
            let _ = std::fs::remove_dir(&self.parent);
        }
    }
}

/// Runs `steps` (every step when empty) and returns their report. Recordings go to a fresh
/// directory inside `opts.work_dir`, which is removed at the end; nothing else is touched.
pub fn run_steps(
    opts: &BenchOptions,
    steps: &[BenchStep],
    mut progress: impl FnMut(BenchStep),
) -> anyhow::Result<BenchReport> {
    // Checked here, before anything is made, so that the error names the flag.
    if !(opts.seconds.is_finite() && opts.seconds > 0.0 && opts.seconds <= MAX_SECONDS) {
        anyhow::bail!("--seconds: must be more than 0 and at most {MAX_SECONDS} (one day), got {}", opts.seconds);
    }
    let workspace = Workspace::create(&opts.work_dir)?;
    let inner = BenchOptions { work_dir: workspace.dir.clone(), deadline_mem: opts.deadline_mem.clone(), ..*opts };
    let mut report = BenchReport::default();
    for step in BenchStep::ALL.into_iter().filter(|s| steps.is_empty() || steps.contains(s)) {
        progress(step);
        match step {
            BenchStep::Linux => linux_setup(&inner, &mut report)?,
            BenchStep::Cut => exact_cut(&inner, &mut report)?,
            BenchStep::Cost => harvest_cost(&inner, &mut report)?,
            BenchStep::Deadline => deadlines(&inner, &mut report)?,
            BenchStep::Slowdown => slowdown(&inner, &mut report)?,
            BenchStep::Compression => compression(&inner, &mut report)?,
        }
    }
    Ok(report)
}

fn run(
    opts: &BenchOptions,
    name: &str,
    spec: &str,
    interval: Duration,
    untracked: bool,
) -> anyhow::Result<(RecordSummary, Trace)> {
    run_with(opts, name, spec, interval, |ro| {
        if untracked {
            ro.dirty_tracking = crate::vmm::DirtyTracking::Off;
        }
    })
}

fn run_with(
    opts: &BenchOptions,
    name: &str,
    spec: &str,
    interval: Duration,
    tweak: impl FnOnce(&mut RecordOptions),
) -> anyhow::Result<(RecordSummary, Trace)> {
    let dir = opts.work_dir.join(name);
    let spec_path = opts.work_dir.join(format!("{name}.toml"));
    std::fs::write(&spec_path, spec)?;
    let mut ro = RecordOptions::new(dir.clone());
    ro.workload = Some(spec_path);
    ro.settings.interval = HumanDuration(interval);
    tweak(&mut ro);
    let summary = record::record(&ro, Arc::new(AtomicBool::new(false)), None)?;
    let trace = Trace::open(&dir)?;
    Ok((summary, trace))
}

fn spec(mem: u64, ws_bytes: u64, rate: &str, pattern: &str, seconds: f64) -> String {
    format!(
        "mem = {mem}\nseed = 11\n[[phase]]\nname = \"bench\"\nduration = \"{seconds}s\"\nworking_set = {ws_bytes}\nrate = \"{rate}\"\npattern = \"{pattern}\"\n"
    )
}

fn pages(bytes: f64) -> u64 {
    ((bytes / 4096.0).round() as u64).max(1) * 4096
}

/// Total writes the guest made, from the phase-final counts in its log.
fn guest_writes(trace: &Trace) -> anyhow::Result<u64> {
    let log = trace.guest_log()?;
    Ok(log.iter().filter_map(|e| DoneDetail::of(e)?.last_phase_writes).sum())
}

/// An interval of the steady state: neither the first (which holds the guest's setup) nor a
/// partial last one.
fn is_steady(row: &crate::trace::IntervalRow) -> bool {
    !row.partial && row.interval > 0
}

/// The steady-state rows of `trace`.
fn steady(trace: &Trace) -> anyhow::Result<Vec<crate::trace::IntervalRow>> {
    Ok(trace.rates()?.into_iter().filter(is_steady).collect())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    crate::stats::percentile(&v, 0.5)
}
