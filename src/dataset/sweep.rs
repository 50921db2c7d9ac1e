//! `dirtytrace sweep`: records a shard of a grid's runs into a dataset, each into
//! `DATASET/traces/NAME/` exactly as `dirtytrace record` would, and rewrites the index after
//! each run.
//!
//! Any number of sweeps and shards may write into one dataset at once:
//! - A sweep checks and creates the dataset (its directories and `dataset.json`) holding
//!   `DATASET/.dataset.lock`, so that sweeps starting together into a new directory create it
//!   once, and each checks it, under the lock, as it then is ([`plan`]'s check, made without
//!   the lock, accepts what a sweep may be creating).
//! - A sweep claims each run before it even looks at its directory: an exclusive `flock` on
//!   `DATASET/.claims/NAME.lock`, taken without waiting and held until the run is over
//!   (inspected, recovered or removed, and recorded). A sweep that finds the claim held leaves
//!   the run to its holder ([`Action::Busy`], not a failure). The kernel drops the lock when its
//!   holder dies, so a killed sweep blocks no run.
//!
//! So two sweeps never record, recover or remove the same run. Resuming: holding the claim,
//! the sweep looks at the run's directory ([`inspect`]):
//!
//! | found | what the sweep does |
//! | --- | --- |
//! | nothing, or an empty directory | records it |
//! | a trace with status `complete`, `recovered` or `guest_fault` whose tables are whole (both Parquet footers read, one row per interval and slot) | skips it |
//! | status `recording`, and a recorder holds the journal's lock | leaves it to that recorder |
//! | status `recording`, lock free (the recorder was killed) | recovers it from its journal (`recovered`); if the journal kept no interval or cannot be read, removes it and records again |
//! | status `interrupted` (Ctrl-C stopped an earlier sweep) | removes it and records again |
//! | anything else (no manifest, another tool's, a symlink, a damaged finished trace) | touches nothing, and reports the run as failed |
//!
//! Only a directory `DATASET/traces/NAME` holding a dirtytrace manifest is ever removed.

use super::grid::{Grid, Run, RunWorkload, Shard};
use super::index::{self, IndexReport};
use super::{io_err, open_lock, write_atomic, DatasetError, DatasetInfo, CLAIMS, DATASET_LOCK, INFO, SPECS, TRACES};
use crate::guest::synthetic::generate::{generate, GenerateOptions};
use crate::guest::synthetic::spec::{Quantity, SpecDocument};
use crate::record::{Progress, RecordOptions, RecordSummary, Recorder};
use crate::trace::{self, Manifest, Trace, TraceStatus, WriteError};
use crate::units::HumanDuration;
use serde::Serialize;
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How a run's trace is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// Recorded under KVM by the library's [`Recorder`], as `dirtytrace record` does.
    Record,
    /// Generated without KVM by [`generate`]: the exact pages the synthetic guest would write
    /// at its nominal rates. Deterministic; for tests and benchmarks of everything downstream
    /// of the recorder. Synthetic workloads without `rate = "max"` only.
    Generate,
}

/// What `sweep` is told.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// `GRID.toml`.
    pub grid: PathBuf,
    /// The dataset directory (`--output`).
    pub output: PathBuf,
    /// `--shard`.
    pub shard: Shard,
    /// `--jobs`: recordings at once.
    pub jobs: usize,
    /// `--max-runs`: the most runs the grid may expand to.
    pub max_runs: usize,
    /// How traces are made.
    pub engine: Engine,
    /// The KVM device, if not the default.
    pub kvm_device: Option<PathBuf>,
}

impl SweepOptions {
    /// The defaults: every run, one at a time, recorded under KVM.
    pub fn new(grid: PathBuf, output: PathBuf) -> SweepOptions {
        SweepOptions {
            grid,
            output,
            shard: Shard::ALL,
            jobs: 1,
            max_runs: super::grid::DEFAULT_MAX_RUNS,
            engine: Engine::Record,
            kvm_device: None,
        }
    }
}

/// A sweep ready to start: the grid expanded and every check that needs no writing done.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The grid.
    pub grid: Grid,
    /// Every run of the grid.
    pub runs: Vec<Run>,
    /// What `dataset.json` will say.
    pub info: DatasetInfo,
    /// The options.
    pub opts: SweepOptions,
}

/// Checks the options, loads and expands the grid and checks the output directory. Writes
/// nothing, so a refused sweep leaves nothing behind. [`run`] checks the directory again,
/// holding the dataset lock.
pub fn plan(opts: SweepOptions) -> Result<Plan, DatasetError> {
    check_options(&opts)?;
    let grid = Grid::load(&opts.grid)?;
    let runs = grid.expand(opts.max_runs)?;
    let info = DatasetInfo::new(&grid, &runs);
    info.check_size(&opts.output)?;
    if opts.output.is_dir() {
        check_output(&opts.output, &info.fingerprint, false)?;
    }
    Ok(Plan { grid, runs, info, opts })
}

/// The checks of the options that need neither the grid nor the dataset.
fn check_options(opts: &SweepOptions) -> Result<(), DatasetError> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if opts.jobs == 0 {
        return Err(DatasetError::Jobs { jobs: 0, msg: "must be at least 1".into() });
    }
    if opts.jobs > cores {
        return Err(DatasetError::Jobs {
            jobs: opts.jobs,
            msg: format!(
                "this machine has {cores} CPU(s): more recordings than CPUs would compete for them and skew every \
                 trace's timing; use at most --jobs {cores} (1 keeps recordings apart)"
            ),
        });
    }
    if opts.output.exists() && !opts.output.is_dir() {
        return Err(DatasetError::OutputIsFile(opts.output.clone()));
    }
    Ok(())
}

/// `--dry-run`: makes the checks [`plan`] makes, then writes the listing of [`render_plan`]
/// (or, with `json`, of [`plan_json`]) to `out` as the runs are generated, holding none of
/// them: one pass over the runs checks their names and the dataset's fingerprint, a second
/// lists them. A grid too large for a sweep is refused before either.
pub fn dry_run(opts: &SweepOptions, json: bool, out: &mut dyn std::io::Write) -> Result<(), DatasetError> {
    check_options(opts)?;
    let grid = Grid::load(&opts.grid)?;
    let (mut fingerprint, mut names) = (grid.fingerprinter(), super::grid::NameCheck::default());
    let (mut total, mut mine, mut width) = (0usize, 0usize, 4usize);
    for r in grid.runs(opts.max_runs)? {
        let r = r?;
        names.add(&grid, &r.name)?;
        fingerprint.feed(&r);
        total += 1;
        if opts.shard.contains(r.run) {
            mine += 1;
            width = width.max(r.name.len());
        }
    }
    drop(names);
    if opts.output.is_dir() {
        check_output(&opts.output, &fingerprint.finish(), false)?;
    }
    let write_err =
        |e: std::io::Error| DatasetError::Io { what: "cannot write the listing to", path: "stdout".into(), source: e };
    if json {
        out.write_all(b"[").map_err(write_err)?;
    } else {
        out.write_all(plan_header(&grid, opts, total, mine, width).as_bytes()).map_err(write_err)?;
    }
    let mut first = true;
    for r in grid.runs(opts.max_runs)? {
        let r = r?;
        if !opts.shard.contains(r.run) {
            continue;
        }
        let state = inspect(&trace_dir(opts, &r));
        let text = if json {
            let row = serde_json::to_string_pretty(&plan_row(&grid, opts, &r, &state)).unwrap_or_default();
            format!("{}\n  {}", if first { "" } else { "," }, row.replace('\n', "\n  "))
        } else {
            plan_line(width, &r, &state)
        };
        first = false;
        out.write_all(text.as_bytes()).map_err(write_err)?;
    }
    if json {
        out.write_all(if first { b"]\n" } else { b"\n]\n" }).map_err(write_err)?;
    }
    out.flush().map_err(write_err)
}

/// Whether `name` is a temporary `dataset.json` of [`write_atomic`]'s.
fn is_info_temporary(name: &str) -> bool {
    name.starts_with(&format!(".{INFO}.")) && name.ends_with(".tmp")
}

/// Checks that `out` holds a dataset of `info`'s grid, or only what a sweep makes before
/// `dataset.json`. Without the dataset lock (`locked` false), a concurrent sweep may be
/// creating the dataset right now: its entries are accepted by name, and a `dataset.json` that
/// appeared since the look defers the check to the lock. With the lock there is no such
/// sweep, and `traces/` and `specs/` must be empty.
fn check_output(out: &Path, fingerprint: &str, locked: bool) -> Result<(), DatasetError> {
    match DatasetInfo::load(out)? {
        Some(old) if old.fingerprint != fingerprint => {
            return Err(DatasetError::OtherGrid { dir: out.to_path_buf(), grid: old.grid_file });
        }
        Some(_) => return Ok(()),
        None => {}
    }
    let mut entries = Vec::new();
    for e in std::fs::read_dir(out).map_err(io_err("cannot read", out))? {
        let e = e.map_err(io_err("cannot read", out))?;
        let ft = e.file_type().map_err(io_err("cannot read", &e.path()))?;
        entries.push((e.file_name().to_string_lossy().into_owned(), ft, e.path()));
    }
    if !locked && entries.iter().any(|(name, _, _)| name == INFO) {
        return Ok(());
    }
    let empty = |dir: &Path| std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none());
    for (name, ft, path) in &entries {
        let made_by_a_sweep = match name.as_str() {
            DATASET_LOCK => ft.is_file(),
            CLAIMS => ft.is_dir(),
            TRACES | SPECS => ft.is_dir() && (!locked || empty(path)),
            n => is_info_temporary(n) && ft.is_file(),
        };
        if !made_by_a_sweep {
            return Err(DatasetError::NotADataset(out.to_path_buf()));
        }
    }
    Ok(())
}

/// Creates the dataset (its directories and `dataset.json`), or checks the one there, holding
/// the dataset lock: sweeps starting together into one directory create it one at a time, and
/// each checks it as the one before left it.
fn create_dataset(plan: &Plan) -> Result<(), DatasetError> {
    let out = &plan.opts.output;
    std::fs::create_dir_all(out).map_err(io_err("cannot create", out))?;
    let lock_path = out.join(DATASET_LOCK);
    let lock = open_lock(&lock_path)?;
    lock.lock().map_err(io_err("cannot lock", &lock_path))?;
    check_output(out, &plan.info.fingerprint, true)?;
    // A sweep killed while storing dataset.json left its temporary file: none is written now.
    for e in std::fs::read_dir(out).map_err(io_err("cannot read", out))?.flatten() {
        if is_info_temporary(&e.file_name().to_string_lossy()) && e.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let mut dirs = vec![TRACES, CLAIMS];
    if plan.runs.iter().any(|r| matches!(r.workload, RunWorkload::Synthetic { .. }))
        && plan.opts.engine == Engine::Record
    {
        dirs.push(SPECS);
    }
    for d in dirs {
        let path = out.join(d);
        std::fs::create_dir_all(&path).map_err(io_err("cannot create", &path))?;
        // Through a symlink, runs would be recorded, recovered or removed outside the dataset.
        if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            return Err(DatasetError::NotOwnDirectory(path));
        }
    }
    if DatasetInfo::load(out)?.as_ref() != Some(&plan.info) {
        plan.info.store(out)?;
    }
    drop(lock);
    Ok(())
}

/// Claims a run: an exclusive `flock` on its lock file, held until the file is closed; `None`
/// when another sweep holds it. Never waits: a claimed run is left to its holder.
fn claim(path: &Path) -> Result<Option<std::fs::File>, DatasetError> {
    let lock = open_lock(path)?;
    match lock.try_lock() {
        Ok(()) => Ok(Some(lock)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(io_err("cannot lock", path)(e)),
    }
}

impl Plan {
    /// This shard's runs, in order.
    pub fn mine(&self) -> Vec<&Run> {
        self.runs.iter().filter(|r| self.opts.shard.contains(r.run)).collect()
    }

    /// A run's trace directory.
    pub fn trace_dir(&self, run: &Run) -> PathBuf {
        trace_dir(&self.opts, run)
    }

    /// What each of this shard's runs' directory holds now, read-only (`--dry-run`).
    pub fn states(&self) -> Vec<(&Run, RunState)> {
        self.mine().into_iter().map(|r| (r, inspect(&self.trace_dir(r)))).collect()
    }
}

/// What a run's directory holds.
#[derive(Debug, Clone, PartialEq)]
pub enum RunState {
    /// Nothing yet: to record.
    Pending,
    /// A finished trace (`complete`, `recovered` or `guest_fault`): kept.
    Finished(TraceStatus),
    /// A trace Ctrl-C cut short in an earlier sweep: to record again.
    Interrupted,
    /// A trace whose recorder was killed: to recover.
    Killed,
    /// A trace a recorder is writing right now (another sweep): left to it.
    Busy,
    /// Something the sweep will not touch, and why.
    Foreign(String),
}

impl RunState {
    /// One word for listings.
    pub fn word(&self) -> String {
        match self {
            RunState::Pending => "pending".into(),
            RunState::Finished(s) => s.to_string(),
            RunState::Interrupted => "interrupted".into(),
            RunState::Killed => "killed".into(),
            RunState::Busy => "busy".into(),
            RunState::Foreign(_) => "foreign".into(),
        }
    }
}

/// Files a recorder may leave in a directory before its manifest exists.
const STARTUP_FILES: [&str; 2] = [trace::WRITE_TEST, trace::MANIFEST_TMP];

/// Looks at a run's directory without changing it.
pub fn inspect(dir: &Path) -> RunState {
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return RunState::Pending,
        Err(e) => return RunState::Foreign(format!("cannot be read: {e}")),
    };
    if meta.file_type().is_symlink() {
        return RunState::Foreign("is a symbolic link, which a sweep does not follow".into());
    }
    if !meta.is_dir() {
        return RunState::Foreign("is not a directory".into());
    }
    if !dir.join(trace::MANIFEST).exists() {
        let names: Vec<String> = match std::fs::read_dir(dir) {
            Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
            Err(e) => return RunState::Foreign(format!("cannot be read: {e}")),
        };
        return if names.iter().all(|n| STARTUP_FILES.contains(&n.as_str())) {
            RunState::Pending
        } else {
            RunState::Foreign("holds files but no manifest.json".into())
        };
    }
    let m = match Manifest::load(dir) {
        Ok(m) if m.tool == "dirtytrace" => m,
        Ok(m) => return RunState::Foreign(format!("holds a trace written by `{}`", m.tool)),
        Err(e) => return RunState::Foreign(format!("has a manifest that cannot be read: {e}")),
    };
    match m.status {
        TraceStatus::Recording => {
            let journal = dir.join(trace::JOURNAL);
            match std::fs::File::open(&journal) {
                Err(_) => RunState::Killed,
                Ok(f) => match f.try_lock() {
                    Ok(()) => RunState::Killed,
                    Err(std::fs::TryLockError::WouldBlock) => RunState::Busy,
                    Err(std::fs::TryLockError::Error(e)) => {
                        RunState::Foreign(format!("its journal cannot be locked: {e}"))
                    }
                },
            }
        }
        TraceStatus::Interrupted => RunState::Interrupted,
        s => match Trace::open(dir).and_then(|t| t.check_tables()) {
            Ok(()) => RunState::Finished(s),
            Err(e) => RunState::Foreign(format!("is finalised but cannot be read: {e}")),
        },
    }
}

/// Why a run's directory was not removed before recording it again.
#[derive(Debug, thiserror::Error)]
enum RemoveRefused {
    /// Its metadata cannot be read.
    #[error("cannot be read: {0}")]
    Unreadable(std::io::Error),
    /// It is a file or a symlink.
    #[error("is not a directory")]
    NotADirectory,
    /// It is not a trace of dirtytrace's, so it is not ours to remove.
    #[error("holds no dirtytrace manifest, so it was not removed")]
    NotATrace,
    /// Removing it failed.
    #[error("cannot be removed: {0}")]
    Remove(std::io::Error),
}

/// Removes a run's directory, after checking once more that it is a directory holding a
/// dirtytrace manifest (never a symlink, never anything else).
fn remove_trace(dir: &Path) -> Result<(), RemoveRefused> {
    let meta = std::fs::symlink_metadata(dir).map_err(RemoveRefused::Unreadable)?;
    if !meta.is_dir() || meta.file_type().is_symlink() {
        return Err(RemoveRefused::NotADirectory);
    }
    match Manifest::load(dir) {
        Ok(m) if m.tool == "dirtytrace" => {}
        _ => return Err(RemoveRefused::NotATrace),
    }
    std::fs::remove_dir_all(dir).map_err(RemoveRefused::Remove)
}

/// What the sweep did with a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Recorded.
    Recorded,
    /// Removed (interrupted, or killed before keeping an interval) and recorded again.
    Rerecorded,
    /// Recovered from the journal of a killed recording.
    Recovered,
    /// Already finished: skipped.
    Skipped,
    /// Being recorded by someone else: left alone.
    Busy,
    /// Failed: see `note`.
    Failed,
}

/// How one run went.
#[derive(Debug, Clone, Serialize)]
pub struct RunOutcome {
    /// The run's position in the grid.
    pub run: usize,
    /// Its name.
    pub name: String,
    /// What the sweep did.
    pub action: Action,
    /// The trace's status afterwards.
    pub status: Option<TraceStatus>,
    /// The trace's id.
    pub trace_id: Option<String>,
    /// The trace's intervals.
    pub intervals: Option<u64>,
    /// Seconds of trace.
    pub duration_s: Option<f64>,
    /// Wall time making the trace: building the recorder and recording (or generating).
    pub record_s: f64,
    /// Wall time of the rest of the run: looking at its directory, recovering or removing,
    /// writing its spec, and rewriting the index.
    pub overhead_s: f64,
    /// Why it was skipped, recorded again or failed.
    pub note: Option<String>,
}

/// What the sweep tells whoever shows progress.
#[derive(Debug)]
pub enum Event<'a> {
    /// The sweep starts: runs in the grid, in this shard, and still to do.
    Start {
        /// Runs in the grid.
        grid_runs: usize,
        /// Runs in this shard.
        shard_runs: usize,
    },
    /// A run is about to be recorded (`note`: why again, for a re-recording).
    Begin {
        /// The run.
        run: &'a Run,
        /// Why it is recorded again, if it is.
        note: Option<&'a str>,
    },
    /// A run is over, and the index rewritten; `done` runs of the shard are over.
    End {
        /// How it went.
        outcome: &'a RunOutcome,
        /// Runs over so far.
        done: usize,
    },
    /// Rewriting the index failed (the sweep goes on).
    IndexFailed {
        /// Why.
        error: String,
    },
}

/// Shows a sweep's progress.
pub trait Observer: Sync {
    /// Called at each step of the sweep, from the worker threads.
    fn event(&self, event: Event<'_>);
    /// A per-interval callback for a run about to be recorded, if wanted.
    fn run_progress(&self, _run: &Run, _expected: Option<Duration>) -> Option<Progress> {
        None
    }
}

/// An observer that shows nothing.
pub struct Quiet;

impl Observer for Quiet {
    fn event(&self, _event: Event<'_>) {}
}

/// How a sweep went.
#[derive(Debug, Clone, Serialize)]
pub struct SweepReport {
    /// The dataset.
    pub dataset: PathBuf,
    /// The shard.
    pub shard: String,
    /// Runs in the grid.
    pub grid_runs: usize,
    /// Runs in this shard.
    pub shard_runs: usize,
    /// Every run this sweep got to, in the order they ended.
    pub outcomes: Vec<RunOutcome>,
    /// Runs not started because Ctrl-C stopped the sweep.
    pub not_started: usize,
    /// Ctrl-C (or SIGTERM) stopped the sweep.
    pub interrupted: bool,
    /// Runs that failed.
    pub failed: usize,
    /// The last index rewrite.
    pub index: Option<IndexReport>,
    /// Why the last index rewrite failed.
    pub index_error: Option<String>,
    /// Wall time of the whole sweep.
    pub wall_s: f64,
}

/// Records this shard's runs. `interrupt` (Ctrl-C) ends the current recordings with
/// finalised traces and starts no more.
pub fn run(plan: &Plan, interrupt: Arc<AtomicBool>, observer: &dyn Observer) -> Result<SweepReport, DatasetError> {
    let started = Instant::now();
    let out = &plan.opts.output;
    create_dataset(plan)?;
    let mine = plan.mine();
    observer.event(Event::Start { grid_runs: plan.runs.len(), shard_runs: mine.len() });
    let next = AtomicUsize::new(0);
    let outcomes: Mutex<Vec<RunOutcome>> = Mutex::new(Vec::new());
    let index_error: Mutex<Option<String>> = Mutex::new(None);
    let workers = plan.opts.jobs.min(mine.len()).max(1);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                if interrupt.load(Ordering::SeqCst) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(&run) = mine.get(i) else { break };
                let t0 = Instant::now();
                let mut outcome = one_run(plan, run, &interrupt, observer);
                let index_result = index::update(out, false);
                outcome.overhead_s = (t0.elapsed().as_secs_f64() - outcome.record_s).max(0.0);
                let mut all = outcomes.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = index_result {
                    let msg = e.to_string();
                    observer.event(Event::IndexFailed { error: msg.clone() });
                    *index_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg);
                }
                all.push(outcome);
                let done = all.len();
                observer.event(Event::End { outcome: &all[done - 1], done });
            });
        }
    });
    let outcomes = outcomes.into_inner().unwrap_or_else(|e| e.into_inner());
    let (index, index_error) = match index::update(out, false) {
        Ok(r) => (Some(r), None),
        Err(e) => (None, Some(e.to_string()).or(index_error.into_inner().unwrap_or_else(|e| e.into_inner()))),
    };
    let interrupted = interrupt.load(Ordering::SeqCst);
    Ok(SweepReport {
        dataset: out.clone(),
        shard: plan.opts.shard.to_string(),
        grid_runs: plan.runs.len(),
        shard_runs: mine.len(),
        not_started: mine.len() - outcomes.len(),
        failed: outcomes.iter().filter(|o| o.action == Action::Failed).count(),
        outcomes,
        interrupted,
        index,
        index_error,
        wall_s: started.elapsed().as_secs_f64(),
    })
}

/// One run: claim it, look at its directory, act on what is there, record if needed.
fn one_run(plan: &Plan, run: &Run, interrupt: &Arc<AtomicBool>, observer: &dyn Observer) -> RunOutcome {
    let dir = plan.trace_dir(run);
    let mut o = RunOutcome {
        run: run.run,
        name: run.name.clone(),
        action: Action::Failed,
        status: None,
        trace_id: None,
        intervals: None,
        duration_s: None,
        record_s: 0.0,
        overhead_s: 0.0,
        note: None,
    };
    let finished = |o: &mut RunOutcome, action: Action| {
        o.action = action;
        if let Ok(m) = Manifest::load(&dir) {
            o.status = Some(m.status);
            o.trace_id = Some(m.trace_id);
            o.intervals = Some(m.intervals);
        }
    };
    let claim_path = plan.opts.output.join(CLAIMS).join(format!("{}.lock", run.name));
    // Held to the end of the run: no other sweep looks at, removes or records it meanwhile.
    let _claim = match claim(&claim_path) {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            o.note = Some("claimed by another sweep right now; left to it".into());
            finished(&mut o, Action::Busy);
            return o;
        }
        Err(e) => {
            o.note = Some(e.to_string());
            return o;
        }
    };
    let mut again: Option<String> = None;
    match inspect(&dir) {
        RunState::Pending => {
            // Under the claim, no sweep is starting here: these are a killed recorder's.
            for f in STARTUP_FILES {
                let _ = std::fs::remove_file(dir.join(f));
            }
        }
        RunState::Finished(s) => {
            o.note = Some(format!("already {}", RunState::Finished(s).word()));
            finished(&mut o, Action::Skipped);
            return o;
        }
        RunState::Busy => {
            o.note = Some("being recorded by another process right now; left to it".into());
            finished(&mut o, Action::Busy);
            return o;
        }
        RunState::Interrupted => {
            if let Err(e) = remove_trace(&dir) {
                o.note = Some(format!("{}: {e}", dir.display()));
                return o;
            }
            again = Some("interrupted by Ctrl-C in an earlier sweep: removed, recording again".into());
        }
        RunState::Killed => match trace::finalize(&dir, TraceStatus::Recovered) {
            Ok(f) if f.manifest.intervals > 0 => {
                o.note = Some(format!(
                    "its recorder was killed: recovered {} intervals from the journal{}",
                    f.manifest.intervals,
                    f.losses().map(|l| format!(" ({l})")).unwrap_or_default()
                ));
                finished(&mut o, Action::Recovered);
                return o;
            }
            Ok(_) => {
                again = Some("its recorder was killed before it kept an interval: removed, recording again".into())
            }
            Err(WriteError::BeingRecorded(_)) => {
                o.note = Some("being recorded by another process right now; left to it".into());
                finished(&mut o, Action::Busy);
                return o;
            }
            Err(e) => {
                again = Some(format!(
                    "its recorder was killed and its journal cannot be used ({e}): removed, recording again"
                ))
            }
        },
        RunState::Foreign(why) => {
            o.note = Some(format!("{} {why}: move it away, then sweep again", dir.display()));
            return o;
        }
    }
    if again.is_some() && dir.exists() {
        if let Err(e) = remove_trace(&dir) {
            o.note = Some(format!("{}: {e}", dir.display()));
            return o;
        }
    }
    observer.event(Event::Begin { run, note: again.as_deref() });
    let t0 = Instant::now();
    let result = make_trace(plan, run, &dir, interrupt, observer);
    o.record_s = t0.elapsed().as_secs_f64();
    match result {
        Ok(s) => {
            o.action = if again.is_some() { Action::Rerecorded } else { Action::Recorded };
            o.status = Some(s.status);
            o.trace_id = Some(s.trace_id);
            o.intervals = Some(s.intervals);
            o.duration_s = Some(s.duration_s);
            o.note = again;
        }
        Err(e) => o.note = Some(crate::errors::causes(e.as_ref())),
    }
    o
}

/// Records (or generates) one run's trace into `dir`.
fn make_trace(
    plan: &Plan,
    run: &Run,
    dir: &Path,
    interrupt: &Arc<AtomicBool>,
    observer: &dyn Observer,
) -> anyhow::Result<RecordSummary> {
    let rec = &run.record;
    match plan.opts.engine {
        Engine::Record => {
            let workload = match &run.workload {
                RunWorkload::Synthetic { spec } => {
                    let path = plan.opts.output.join(SPECS).join(format!("{}.toml", run.name));
                    if std::fs::read_to_string(&path).ok().as_deref() != Some(spec.as_str()) {
                        write_atomic(&path, spec.as_bytes())?;
                    }
                    path
                }
                RunWorkload::Linux { script } => script.clone(),
            };
            let mut opts = RecordOptions::new(dir.to_path_buf());
            opts.workload = Some(workload);
            opts.settings = rec.clone();
            if let Some(k) = &plan.opts.kvm_device {
                opts.kvm_device = k.clone();
            }
            opts.linux = plan.grid.linux.clone();
            let recorder = Recorder::try_from(opts)?;
            let progress = observer.run_progress(run, recorder.expected_duration());
            recorder.run(interrupt.clone(), progress)
        }
        Engine::Generate => {
            let RunWorkload::Synthetic { spec } = &run.workload else {
                anyhow::bail!("the generate engine makes synthetic traces only; {} is a Linux workload", run.name);
            };
            let spec = match rec.duration {
                Some(d) => cap_spec(spec, d.0)?,
                None => spec.clone(),
            };
            let id = sha2::Sha256::digest(format!("{}:{}", plan.info.fingerprint, run.name).as_bytes());
            let opts = GenerateOptions {
                interval: rec.interval.0,
                migration_speed: rec.migration_speed.0,
                trace_id: Some(crate::units::hex(&id[..16])),
                progress: None,
            };
            generate(dir, &spec, &opts)?;
            RecordSummary::of_trace(dir, None)
        }
    }
}

/// The spec cut to `limit`: what a recording with `--duration` would run.
fn cap_spec(text: &str, limit: Duration) -> anyhow::Result<String> {
    let mut doc = SpecDocument::parse(text).map_err(|e| anyhow::anyhow!("{e}"))?;
    let spec = doc.check(None, None).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut left = limit;
    let mut keep = 0;
    if let Some(phases) = doc.phase.as_mut() {
        for (p, written) in spec.phases.iter().zip(phases.iter_mut()) {
            if left.is_zero() {
                break;
            }
            let d = p.duration.min(left);
            left -= d;
            keep += 1;
            written.duration = Some(Quantity::Text(HumanDuration(d).to_string()));
        }
        phases.truncate(keep);
    }
    Ok(doc.to_toml()?)
}

/// The dry run's listing.
pub fn render_plan(plan: &Plan) -> String {
    let states = plan.states();
    let width = states.iter().map(|(r, _)| r.name.len()).max().unwrap_or(4).max(4);
    let mut out = plan_header(&plan.grid, &plan.opts, plan.runs.len(), states.len(), width);
    for (r, s) in &states {
        out.push_str(&plan_line(width, r, s));
    }
    out
}

/// The listing's first lines: the counts, then the columns' titles.
fn plan_header(grid: &Grid, opts: &SweepOptions, runs: usize, mine: usize, width: usize) -> String {
    let mut out = format!(
        "{}: {runs} runs in the grid; shard {}: {mine} runs; dataset {}\n",
        grid.path.display(),
        opts.shard,
        opts.output.display()
    );
    out.push_str(&format!("  {:>5}  {:<width$}  {:>20}  state\n", "run", "name", "seed"));
    out
}

/// One run's line in the listing, its name padded to `width`.
fn plan_line(width: usize, r: &Run, s: &RunState) -> String {
    let seed = r.seed.map_or("-".to_string(), |s| s.to_string());
    let why = match s {
        RunState::Foreign(w) => format!(" ({w})"),
        _ => String::new(),
    };
    format!("  {:>5}  {:<width$}  {seed:>20}  {}{why}\n", r.run, r.name, s.word())
}

/// A run's trace directory in the dataset `opts` name.
fn trace_dir(opts: &SweepOptions, run: &Run) -> PathBuf {
    opts.output.join(TRACES).join(&run.name)
}

/// The dry run's listing as JSON: one object per run of the shard.
pub fn plan_json(plan: &Plan) -> serde_json::Value {
    let rows = plan.states().into_iter().map(|(r, s)| plan_row(&plan.grid, &plan.opts, r, &s)).collect();
    serde_json::Value::Array(rows)
}

/// One run's object in the JSON listing.
fn plan_row(grid: &Grid, opts: &SweepOptions, r: &Run, s: &RunState) -> serde_json::Value {
    let axes: serde_json::Map<String, serde_json::Value> =
        grid.axes.iter().zip(&r.values).map(|(a, v)| (a.label.clone(), v.text().into())).collect();
    serde_json::json!({
        "run": r.run,
        "name": r.name,
        "repeat": r.repeat,
        "seed": r.seed,
        "axes": axes,
        "trace_dir": trace_dir(opts, r),
        "state": s.word(),
    })
}

/// One line per run, for a log.
pub fn outcome_line(o: &RunOutcome, done: usize, total: usize) -> String {
    let what = match o.action {
        Action::Recorded => "recorded",
        Action::Rerecorded => "recorded again",
        Action::Recovered => "recovered",
        Action::Skipped => "skipped",
        Action::Busy => "left alone",
        Action::Failed => "FAILED",
    };
    let mut line = format!("[{done}/{total}] {}: {what}", o.name);
    if let (Some(s), Some(n)) = (o.status, o.intervals) {
        line.push_str(&format!(", {s} ({n} intervals"));
        if let Some(d) = o.duration_s {
            line.push_str(&format!(", {d:.2} s"));
        }
        line.push(')');
    }
    if matches!(o.action, Action::Recorded | Action::Rerecorded) {
        line.push_str(&format!(" in {:.2} s + {:.3} s", o.record_s, o.overhead_s));
    }
    if let Some(n) = &o.note {
        line.push_str(&format!(": {n}"));
    }
    line
}

/// The closing summary of a sweep.
pub fn render_report(r: &SweepReport) -> String {
    let count = |a: Action| r.outcomes.iter().filter(|o| o.action == a).count();
    let mut out = format!(
        "sweep {} (shard {}): {} of {} runs: {} recorded, {} recorded again, {} recovered, {} skipped, {} left to another recorder, {} failed",
        r.dataset.display(),
        r.shard,
        r.outcomes.len(),
        r.shard_runs,
        count(Action::Recorded),
        count(Action::Rerecorded),
        count(Action::Recovered),
        count(Action::Skipped),
        count(Action::Busy),
        r.failed,
    );
    if r.not_started > 0 {
        out.push_str(&format!(", {} not started", r.not_started));
    }
    out.push_str(&format!(" in {:.1} s\n", r.wall_s));
    match (&r.index, &r.index_error) {
        (Some(i), _) => out.push_str(&format!(
            "index: {} traces in {}, {} replay rows in {}\n",
            i.traces,
            i.index.display(),
            i.replay_rows,
            i.replay.display()
        )),
        (None, Some(e)) => out.push_str(&format!("index: FAILED: {e}\n")),
        (None, None) => {}
    }
    if r.interrupted {
        out.push_str("interrupted: run the same command again to resume\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cap_spec` as first written, editing the spec's TOML table by string keys.
    fn cap_spec_as_first_written(text: &str, limit: Duration) -> String {
        let spec = crate::guest::synthetic::spec::WorkloadSpec::parse(text, None, None).unwrap();
        let mut table: toml::Table = toml::from_str(text).unwrap();
        let mut left = limit;
        let mut keep = 0;
        if let Some(phases) = table.get_mut("phase").and_then(|p| p.as_array_mut()) {
            for (i, p) in spec.phases.iter().enumerate() {
                if left.is_zero() {
                    break;
                }
                let d = p.duration.min(left);
                left -= d;
                keep = i + 1;
                if let Some(t) = phases.get_mut(i).and_then(|t| t.as_table_mut()) {
                    t.insert("duration".into(), toml::Value::String(HumanDuration(d).to_string()));
                }
            }
            phases.truncate(keep);
        }
        toml::to_string(&table).unwrap()
    }

    /// A run's spec cut to `[record] duration` is the spec the table-editing code wrote.
    #[test]
    fn capped_specs_are_as_first_written() {
        let numbers =
            "# a run\nseed = 3\nmem = 67108864\n[[phase]]\nname = \"a\"\nrate = \"1MiB/s\"\nworking_set = 8388608\n\
                       duration = 2\ncpu = 1\n[[phase]]\nname = \"b\"\nduration = \"500ms\"\nrate = \"0\"\ncpu = 0\n";
        for text in [numbers, crate::guest::synthetic::spec::DEFAULT_SPEC] {
            for ms in [1, 500, 2000, 2300, 3000, 6500, 9000, 60_000] {
                let limit = Duration::from_millis(ms);
                assert_eq!(cap_spec(text, limit).unwrap(), cap_spec_as_first_written(text, limit), "{ms} ms");
            }
        }
        assert!(cap_spec(numbers, Duration::from_millis(2300)).unwrap().contains("duration = \"300ms\""));
    }

    /// Listings and logs call a status what the manifest and the index call it.
    #[test]
    fn statuses_are_written_as_the_manifest_writes_them() {
        assert_eq!(RunState::Finished(TraceStatus::GuestFault).word(), "guest_fault");
        let o = RunOutcome {
            run: 0,
            name: "r".into(),
            action: Action::Recorded,
            status: Some(TraceStatus::GuestFault),
            trace_id: None,
            intervals: Some(3),
            duration_s: None,
            record_s: 0.0,
            overhead_s: 0.0,
            note: None,
        };
        let line = outcome_line(&o, 1, 1);
        assert!(line.starts_with("[1/1] r: recorded, guest_fault (3 intervals)"), "{line}");
    }
}
