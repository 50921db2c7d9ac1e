//! `index.parquet` (one row per trace) and `replay.parquet` (one row per trace and
//! `[replay]` bandwidth), built from whatever traces are under `DATASET/traces/`. Their
//! columns are declared once, here, beside the code that fills them ([`index_columns`],
//! [`replay_columns`]); `schemas/dataset.md` documents them and a test keeps the two in step.
//!
//! Every figure comes from the same library calls as the command-line tools, with their
//! defaults: [`summary::summarize`], [`simgrid::fit`], [`replay::replay`] and
//! [`start::fit_start`], so an index value equals what `summarize`, `simgrid`, `replay --json`
//! and `simgrid --start --json` print for that trace.
//!
//! Rewrites hold `DATASET/.index.lock` (an `flock`) and replace the tables atomically. A row
//! whose trace has not changed since the last index (same `trace_id`, `status` and
//! `intervals`, same grid and `[replay]` settings and dirtytrace version) is copied from the
//! old table rather than computed again, unless a full rebuild is asked for.

use super::grid::{ReplaySettings, ValueKind};
use super::{io_err, temp_beside, AxisInfo, DatasetError, DatasetInfo, RunInfo, INDEX, INDEX_LOCK, REPLAY, TRACES};
use crate::analysis::replay::{self, ReplayResult, ZeroPages};
use crate::analysis::simgrid::model::{ModelMigration, MAX_DOWNTIME_S};
use crate::analysis::simgrid::start::{self, StartParams};
use crate::analysis::simgrid::{self, SimgridParams};
use crate::analysis::summary::{self, Summary};
use crate::trace::{Manifest, Trace, TraceStatus};
use arrow::array::{Array, ArrayRef, BooleanArray, Float64Array, StringArray, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use serde::Serialize;
use sha2::Digest;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The version of the index's columns: part of the key that decides whether a row is reused.
/// 2: `replay.parquet` gained the SimGrid columns.
pub const INDEX_FORMAT: u32 = 2;
/// The Parquet key-value metadata entry holding that key.
pub const KEY_METADATA: &str = "dirtytrace.index_key";

/// One replay of one trace at one bandwidth.
#[derive(Debug, Clone)]
pub struct ReplayEntry {
    /// The bandwidth, bytes per second.
    pub bandwidth_bytes_per_s: f64,
    /// What `replay` found, or `None` when it failed.
    pub result: Option<ReplayResult>,
    /// Why it failed (the trace ends before the migration does, …).
    pub error: Option<String>,
    /// `simgrid --start` at this bandwidth: SimGrid's parameters for the same migration and
    /// what SimGrid's model predicts with them; `None` when the fit failed.
    pub simgrid: Option<StartParams>,
    /// Why the fit failed, or why it is invalid.
    pub simgrid_error: Option<String>,
}

impl ReplayEntry {
    /// Replays `trace` at `bandwidth` with `settings`, and fits SimGrid's parameters to the
    /// same migration (reusing the replay when `settings` are the fit's own).
    fn compute(trace: &Trace, settings: &ReplaySettings, bandwidth: f64) -> ReplayEntry {
        let r = replay::replay(trace, &settings.options(bandwidth));
        let mut o = start::StartOptions::new(settings.start_s);
        o.migration_speed = Some(bandwidth);
        o.looped = settings.precopy.looped;
        o.max_rounds = settings.precopy.max_rounds;
        let fit = match &r {
            Ok(res)
                if settings.precopy.zero_pages == ZeroPages::Skip
                    && settings.precopy.max_downtime.0.as_secs_f64() == MAX_DOWNTIME_S =>
            {
                start::fit_to_replay(trace, &o, res)
            }
            _ => start::fit_start(trace, &o),
        };
        let simgrid_error = match &fit {
            Ok(p) if p.fit.valid => None,
            Ok(p) => Some(p.fit.errors.join("; ")),
            Err(e) => Some(e.to_string()),
        };
        ReplayEntry {
            bandwidth_bytes_per_s: bandwidth,
            error: r.as_ref().err().map(|e| e.to_string()),
            result: r.ok(),
            simgrid: fit.ok(),
            simgrid_error,
        }
    }
}

/// One trace as the index sees it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The directory's name under `traces/`.
    pub name: String,
    /// Its manifest.
    pub manifest: Manifest,
    /// The grid's run of that name, if any.
    pub run: Option<RunInfo>,
    /// Why it could not be analysed, else the manifest's `error`.
    pub error: Option<String>,
    /// `summarize` and `simgrid` with their defaults; `None` for a trace still recording or
    /// one that could not be read.
    pub figures: Option<(Summary, SimgridParams)>,
    /// One replay per `[replay]` bandwidth (none for a trace without figures).
    pub replays: Vec<ReplayEntry>,
}

impl Entry {
    /// Reads and analyses the trace in `dir`, whose manifest is `manifest`.
    pub fn analyse(dir: &Path, manifest: Manifest, run: Option<RunInfo>, replay_settings: &ReplaySettings) -> Entry {
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut entry =
            Entry { name, error: manifest.error.clone(), manifest, run, figures: None, replays: Vec::new() };
        if entry.manifest.status == TraceStatus::Recording {
            return entry;
        }
        let figures = Trace::open(dir).map_err(anyhow::Error::from).and_then(|t| {
            let s = summary::summarize(&t, &summary::SummaryOptions::default())?;
            let p = simgrid::fit(&t, &simgrid::SimgridOptions::default())?;
            Ok((t, s, p))
        });
        match figures {
            Ok((t, s, p)) => {
                entry.figures = Some((s, p));
                for &bw in &replay_settings.bandwidths {
                    entry.replays.push(ReplayEntry::compute(&t, replay_settings, bw));
                }
            }
            Err(e) => entry.error = Some(crate::errors::causes(e.as_ref())),
        }
        entry
    }
}

type Column = (Field, ArrayRef);

fn utf8(name: &str, nullable: bool, v: impl Iterator<Item = Option<String>>) -> Column {
    (Field::new(name, DataType::Utf8, nullable), Arc::new(StringArray::from_iter(v)))
}

fn u64c(name: &str, nullable: bool, v: impl Iterator<Item = Option<u64>>) -> Column {
    (Field::new(name, DataType::UInt64, nullable), Arc::new(UInt64Array::from_iter(v)))
}

fn u32c(name: &str, nullable: bool, v: impl Iterator<Item = Option<u32>>) -> Column {
    (Field::new(name, DataType::UInt32, nullable), Arc::new(UInt32Array::from_iter(v)))
}

fn f64c(name: &str, nullable: bool, v: impl Iterator<Item = Option<f64>>) -> Column {
    (Field::new(name, DataType::Float64, nullable), Arc::new(Float64Array::from_iter(v)))
}

fn boolc(name: &str, nullable: bool, v: impl Iterator<Item = Option<bool>>) -> Column {
    (Field::new(name, DataType::Boolean, nullable), Arc::new(BooleanArray::from_iter(v)))
}

/// The columns of `index.parquet` for `entries`, in order: identity, the grid's axes
/// (`axes`, in `dataset.json`'s order), the manifest, `summarize`, then `simgrid`.
pub fn index_columns(entries: &[&Entry], axes: &[AxisInfo]) -> Vec<Column> {
    let e = || entries.iter().copied();
    let sum = |f: fn(&Summary) -> f64| e().map(move |x| x.figures.as_ref().map(|(s, _)| f(s)));
    let sumu = |f: fn(&Summary) -> u64| e().map(move |x| x.figures.as_ref().map(|(s, _)| f(s)));
    let sg = |f: fn(&SimgridParams) -> f64| e().map(move |x| x.figures.as_ref().map(|(_, p)| f(p)));
    let m = |f: fn(&Manifest) -> f64| e().map(move |x| Some(f(&x.manifest)));
    let mu = |f: fn(&Manifest) -> u64| e().map(move |x| Some(f(&x.manifest)));
    let mut cols = vec![
        utf8("name", false, e().map(|x| Some(x.name.clone()))),
        utf8("trace_id", false, e().map(|x| Some(x.manifest.trace_id.clone()))),
        utf8("status", false, e().map(|x| Some(x.manifest.status.to_string()))),
        utf8("engine", false, e().map(|x| Some(x.manifest.engine.as_ref().map_or("kvm", |g| &g.name).to_string()))),
        u64c("run", true, e().map(|x| x.run.as_ref().map(|r| r.run))),
        u64c("seed", true, e().map(|x| x.run.as_ref().and_then(|r| r.seed))),
        u32c("axis_repeat", true, e().map(|x| x.run.as_ref().map(|r| r.repeat))),
    ];
    for (i, a) in axes.iter().enumerate() {
        let value = move |x: &Entry| x.run.as_ref().and_then(|r| r.values.get(i).cloned());
        cols.push(match a.kind {
            ValueKind::U64 => u64c(&a.column, true, e().map(|x| value(x).and_then(|v| v.as_u64()))),
            ValueKind::U32 => u32c(&a.column, true, e().map(|x| value(x).and_then(|v| v.as_u64()).map(|v| v as u32))),
            ValueKind::F64 => f64c(&a.column, true, e().map(|x| value(x).and_then(|v| v.as_f64()))),
            ValueKind::Utf8 => utf8(&a.column, true, e().map(|x| value(x).and_then(|v| v.as_str().map(String::from)))),
        });
    }
    cols.extend([
        utf8("end_reason", true, e().map(|x| x.manifest.end_reason.map(|r| r.to_string()))),
        utf8("error", true, e().map(|x| x.error.clone())),
        f64c("interval_s", false, m(|m| m.interval_s)),
        u32c("vcpus", false, e().map(|x| Some(x.manifest.vcpus))),
        u64c("ramsize_bytes", false, mu(|m| m.ramsize_bytes)),
        f64c("start_unix_s", false, m(|m| m.start_unix_s)),
        utf8("host_name", false, e().map(|x| Some(x.manifest.host_name.clone()))),
        u64c("intervals", false, mu(|m| m.intervals)),
        u64c("missed_deadlines", false, mu(|m| m.timing.missed_deadlines)),
        f64c("harvest_lateness_p99_s", false, m(|m| m.timing.lateness_p99_s)),
        f64c("duration_s", true, sum(|s| s.duration_s)),
        f64c("dirty_rate_mean_bytes_per_s", true, sum(|s| s.dirty_rate_bytes_per_s.mean)),
        f64c("dirty_rate_p50_bytes_per_s", true, sum(|s| s.dirty_rate_bytes_per_s.p50)),
        f64c("dirty_rate_p95_bytes_per_s", true, sum(|s| s.dirty_rate_bytes_per_s.p95)),
        f64c("dirty_rate_max_bytes_per_s", true, sum(|s| s.dirty_rate_bytes_per_s.max)),
        u64c("dirtied_bytes_total", true, sumu(|s| s.dirtied_bytes_total)),
        u64c("distinct_pages", true, sumu(|s| s.distinct_pages)),
        u64c("distinct_bytes", true, sumu(|s| s.distinct_bytes)),
        f64c("cpu_util_mean_cores", true, sum(|s| s.cpu_util_cores.mean)),
        f64c("cpu_util_p95_cores", true, sum(|s| s.cpu_util_cores.p95)),
        f64c("dp_intensity", true, sg(|p| p.dp_intensity)),
        u64c(
            "working_set_memory_bytes",
            true,
            e().map(|x| x.figures.as_ref().map(|(_, p)| p.working_set_memory_bytes)),
        ),
        f64c("migration_speed_bytes_per_s", true, sg(|p| p.migration_speed_bytes_per_s)),
        f64c("working_set_window_s", true, sg(|p| p.working_set_window_s)),
        boolc(
            "working_set_window_covered",
            true,
            e().map(|x| x.figures.as_ref().map(|(_, p)| p.working_set_window_covered)),
        ),
    ]);
    cols
}

/// SimGrid's model of the migration, where it converged: a migration stopped at a round limit
/// has no figures.
fn converged(x: &ReplayEntry) -> Option<&ModelMigration> {
    x.simgrid.as_ref().map(|p| &p.model).filter(|m| m.converged)
}

/// The columns of `replay.parquet`: one row per trace and bandwidth, by name then bandwidth
/// in `[replay]`'s order.
pub fn replay_columns(rows: &[(&Entry, &ReplayEntry)]) -> Vec<Column> {
    let r = || rows.iter().copied();
    let res = |f: fn(&ReplayResult) -> f64| r().map(move |(_, x)| x.result.as_ref().map(f));
    let sg = |f: fn(&StartParams) -> f64| r().map(move |(_, x)| x.simgrid.as_ref().map(f));
    let model = |f: fn(&ModelMigration) -> f64| r().map(move |(_, x)| converged(x).map(f));
    vec![
        utf8("name", false, r().map(|(e, _)| Some(e.name.clone()))),
        utf8("trace_id", false, r().map(|(e, _)| Some(e.manifest.trace_id.clone()))),
        f64c("bandwidth_bytes_per_s", false, r().map(|(_, x)| Some(x.bandwidth_bytes_per_s))),
        f64c("total_time_s", true, res(|x| x.total_time_s)),
        f64c("downtime_s", true, res(|x| x.downtime_s)),
        u32c("rounds", true, r().map(|(_, x)| x.result.as_ref().map(|x| x.rounds))),
        u64c("transferred_bytes", true, r().map(|(_, x)| x.result.as_ref().map(|x| x.transferred_bytes))),
        boolc("converged", true, r().map(|(_, x)| x.result.as_ref().map(|x| x.converged))),
        utf8("stop_reason", true, r().map(|(_, x)| x.result.as_ref().map(|x| x.stop_reason.to_string()))),
        utf8("error", true, r().map(|(_, x)| x.error.clone())),
        f64c("simgrid_total_time_s", true, model(|m| m.total_time_s)),
        f64c("simgrid_downtime_s", true, model(|m| m.downtime_s)),
        u32c("simgrid_rounds", true, r().map(|(_, x)| converged(x).map(|m| m.rounds))),
        u64c("simgrid_transferred_bytes", true, r().map(|(_, x)| converged(x).map(|m| m.transferred_bytes))),
        boolc("simgrid_converged", true, r().map(|(_, x)| x.simgrid.as_ref().map(|p| p.model.converged))),
        u64c("simgrid_round0_bytes", true, r().map(|(_, x)| x.simgrid.as_ref().map(|p| p.round0_bytes))),
        f64c("simgrid_dp_intensity", true, sg(|p| p.dp_intensity)),
        u64c(
            "simgrid_working_set_memory_bytes",
            true,
            r().map(|(_, x)| x.simgrid.as_ref().map(|p| p.working_set_memory_bytes)),
        ),
        f64c("simgrid_cpu_util", true, sg(|p| p.cpu_util)),
        boolc("simgrid_fit_valid", true, r().map(|(_, x)| x.simgrid.as_ref().map(|p| p.fit.valid))),
        utf8("simgrid_fit_error", true, r().map(|(_, x)| x.simgrid_error.clone())),
    ]
}

/// The column names of `index.parquet` for a grid with these axes.
pub fn index_column_names(axes: &[AxisInfo]) -> Vec<String> {
    index_columns(&[], axes).into_iter().map(|(f, _)| f.name().clone()).collect()
}

/// The column names of `replay.parquet`.
pub fn replay_column_names() -> Vec<String> {
    replay_columns(&[]).into_iter().map(|(f, _)| f.name().clone()).collect()
}

fn batch(cols: Vec<Column>, path: &Path) -> Result<RecordBatch, DatasetError> {
    let (fields, arrays): (Vec<Field>, Vec<ArrayRef>) = cols.into_iter().unzip();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
        .map_err(|e| DatasetError::Table { path: path.to_path_buf(), msg: e.to_string() })
}

/// Reads a whole Parquet table, with its key-value metadata entry [`KEY_METADATA`].
pub fn read_table(path: &Path) -> Result<(RecordBatch, Option<String>), DatasetError> {
    let bad = |msg: String| DatasetError::Table { path: path.to_path_buf(), msg };
    let f = crate::files::open_regular(path, u64::MAX, "Parquet table").map_err(|e| bad(e.to_string()))?;
    let read = move || {
        let b = ParquetRecordBatchReaderBuilder::try_new(f).map_err(|e| bad(e.to_string()))?;
        let key = b
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .and_then(|kv| kv.iter().find(|k| k.key == KEY_METADATA).and_then(|k| k.value.clone()));
        let schema = b.schema().clone();
        let batches = b
            .build()
            .map_err(|e| bad(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        let all = arrow::compute::concat_batches(&schema, &batches).map_err(|e| bad(e.to_string()))?;
        Ok((all, key))
    };
    // The decoder panics on some damaged files: guarded, that is an error naming the table.
    match crate::trace::guarded(path, read) {
        Ok(r) => r,
        Err(crate::trace::TraceError::Corrupt { msg, .. }) => Err(bad(msg)),
        Err(e) => Err(bad(e.to_string())),
    }
}

fn write_table(path: &Path, batch: &RecordBatch, key: &str) -> Result<(), DatasetError> {
    let bad = |msg: String| DatasetError::Table { path: path.to_path_buf(), msg };
    let tmp = temp_beside(path);
    let props = WriterProperties::builder()
        .set_compression(parquet::basic::Compression::ZSTD(parquet::basic::ZstdLevel::default()))
        .set_key_value_metadata(Some(vec![KeyValue::new(KEY_METADATA.to_string(), key.to_string())]))
        .build();
    let result = (|| {
        let file = std::fs::File::create(&tmp).map_err(io_err("cannot create", &tmp))?;
        let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(|e| bad(e.to_string()))?;
        w.write(batch).map_err(|e| bad(e.to_string()))?;
        w.close().map_err(|e| bad(e.to_string()))?;
        std::fs::rename(&tmp, path).map_err(io_err("cannot rename into", path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// What an index rewrite did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IndexReport {
    /// `index.parquet`.
    pub index: PathBuf,
    /// `replay.parquet`.
    pub replay: PathBuf,
    /// Rows of `index.parquet`: one per trace.
    pub traces: usize,
    /// Rows of `replay.parquet`.
    pub replay_rows: usize,
    /// Traces read and analysed this time.
    pub analysed: usize,
    /// Rows copied from the previous index, their traces unchanged.
    pub reused: usize,
    /// Traces per status.
    pub statuses: BTreeMap<String, usize>,
    /// Directories under `traces/` left out, and traces that are not runs of the grid.
    pub warnings: Vec<String>,
    /// Wall time of the rewrite, lock wait included.
    pub seconds: f64,
}

/// The key that decides whether an old row may be reused.
fn index_key(info: Option<&DatasetInfo>, replay: &ReplaySettings) -> String {
    let v = serde_json::json!({
        "format": INDEX_FORMAT,
        "tool_version": env!("CARGO_PKG_VERSION"),
        "fingerprint": info.map(|i| i.fingerprint.as_str()),
        "axes": info.map(|i| &i.axes),
        "replay": replay,
    });
    crate::units::hex(&sha2::Sha256::digest(v.to_string().as_bytes()))
}

/// The rows of an old table usable now: by name, the row, and the row's trace_id, status and
/// intervals (index) or its rows (replay).
struct Old {
    index: RecordBatch,
    rows: HashMap<String, (usize, String, String, u64)>,
    replay: RecordBatch,
    replay_rows: HashMap<String, Vec<usize>>,
}

fn string_col<'a>(b: &'a RecordBatch, name: &str) -> Option<&'a StringArray> {
    b.column_by_name(name)?.as_any().downcast_ref::<StringArray>()
}

fn load_old(dataset: &Path, key: &str, index_schema: &Schema) -> Option<Old> {
    let (index, k1) = read_table(&dataset.join(INDEX)).ok()?;
    let (replay, k2) = read_table(&dataset.join(REPLAY)).ok()?;
    if k1.as_deref() != Some(key) || k2.as_deref() != Some(key) {
        return None;
    }
    let same = |a: &Schema, b: &Schema| {
        a.fields().len() == b.fields().len()
            && a.fields().iter().zip(b.fields()).all(|(x, y)| x.name() == y.name() && x.data_type() == y.data_type())
    };
    if !same(index.schema().as_ref(), index_schema) {
        return None;
    }
    let names = string_col(&index, "name")?;
    let ids = string_col(&index, "trace_id")?;
    let statuses = string_col(&index, "status")?;
    let intervals = index.column_by_name("intervals")?.as_any().downcast_ref::<UInt64Array>()?;
    let rows = (0..index.num_rows())
        .map(|i| {
            (
                names.value(i).to_string(),
                (i, ids.value(i).to_string(), statuses.value(i).to_string(), intervals.value(i)),
            )
        })
        .collect();
    let rnames = string_col(&replay, "name")?;
    let mut replay_rows: HashMap<String, Vec<usize>> = HashMap::new();
    for i in 0..replay.num_rows() {
        replay_rows.entry(rnames.value(i).to_string()).or_default().push(i);
    }
    Some(Old { index, rows, replay, replay_rows })
}

/// Removes the temporary tables a rewriter killed before its rename left behind. Only called
/// with the index lock held, so no live rewriter is writing one.
fn remove_stale_temporaries(dataset: &Path) {
    let Ok(entries) = std::fs::read_dir(dataset) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = [INDEX, REPLAY].iter().any(|t| name.starts_with(&format!(".{t}.")));
        if ours && name.ends_with(".tmp") && e.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Where each row of a rewritten table comes from: the old table (0) or the new rows (1).
fn assemble(
    old: Option<&RecordBatch>,
    new: RecordBatch,
    order: &[(usize, usize)],
    path: &Path,
) -> Result<RecordBatch, DatasetError> {
    let Some(old) = old else { return Ok(new) };
    let bad = |e: arrow::error::ArrowError| DatasetError::Table { path: path.to_path_buf(), msg: e.to_string() };
    let cols = (0..new.num_columns())
        .map(|c| arrow::compute::interleave(&[old.column(c).as_ref(), new.column(c).as_ref()], order).map_err(bad))
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(new.schema(), cols).map_err(bad)
}

/// Analyses the traces, one per CPU at a time; the entries come back in the order given.
fn analyse_all(todo: Vec<(PathBuf, Manifest, Option<RunInfo>)>, settings: &ReplaySettings) -> Vec<Entry> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(todo.len());
    if workers <= 1 {
        return todo.into_iter().map(|(d, m, r)| Entry::analyse(&d, m, r, settings)).collect();
    }
    let n = todo.len();
    let queue = std::sync::Mutex::new(todo.into_iter().enumerate());
    let done = std::sync::Mutex::new(Vec::with_capacity(n));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
                let Some((i, (d, m, r))) = next else { break };
                let e = Entry::analyse(&d, m, r, settings);
                done.lock().unwrap_or_else(|e| e.into_inner()).push((i, e));
            });
        }
    });
    let mut done = done.into_inner().unwrap_or_else(|e| e.into_inner());
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, e)| e).collect()
}

/// Rebuilds `DATASET/index.parquet` and `DATASET/replay.parquet` from the traces under
/// `DATASET/traces/`, holding the index lock. `rebuild` analyses every trace again;
/// otherwise unchanged traces keep their rows. A directory whose manifest cannot be read is
/// left out, with a warning.
pub fn update(dataset: &Path, rebuild: bool) -> Result<IndexReport, DatasetError> {
    let started = std::time::Instant::now();
    let traces_dir = dataset.join(TRACES);
    if !traces_dir.is_dir() {
        return Err(DatasetError::NotATraceOrDataset(dataset.to_path_buf()));
    }
    let lock_path = dataset.join(INDEX_LOCK);
    let lock = super::open_lock(&lock_path)?;
    lock.lock().map_err(io_err("cannot lock", &lock_path))?;
    remove_stale_temporaries(dataset);

    let info = DatasetInfo::load(dataset)?;
    let settings = info.as_ref().map(|i| i.replay.clone()).unwrap_or_default();
    let axes = info.as_ref().map(|i| i.axes.clone()).unwrap_or_default();
    let runs: HashMap<&str, &RunInfo> =
        info.as_ref().map(|i| i.runs.iter().map(|r| (r.name.as_str(), r)).collect()).unwrap_or_default();
    let key = index_key(info.as_ref(), &settings);
    let index_path = dataset.join(INDEX);
    let replay_path = dataset.join(REPLAY);
    let schema = Schema::new(index_columns(&[], &axes).into_iter().map(|(f, _)| f).collect::<Vec<_>>());
    let old = if rebuild { None } else { load_old(dataset, &key, &schema) };

    let mut report = IndexReport { index: index_path.clone(), replay: replay_path.clone(), ..Default::default() };
    let mut todo: Vec<(PathBuf, Manifest, Option<RunInfo>)> = Vec::new();
    let mut seen_ids: Vec<(String, String)> = Vec::new();
    // Per trace, in name order: where its index row comes from, and its replay rows'.
    let mut plan: Vec<(bool, usize, Vec<usize>)> = Vec::new();
    for dir in super::dataset_traces(dataset)? {
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let manifest = match Manifest::load(&dir) {
            Ok(m) => m,
            Err(e) => {
                report.warnings.push(format!("{}: left out: {e}", dir.display()));
                continue;
            }
        };
        let run = runs.get(name.as_str()).map(|r| (*r).clone());
        if run.is_none() && info.is_some() {
            report.warnings.push(format!("{}: not a run of the dataset's grid (no axis values)", dir.display()));
        }
        *report.statuses.entry(manifest.status.to_string()).or_default() += 1;
        seen_ids.push((manifest.trace_id.clone(), name.clone()));
        let reusable = old.as_ref().and_then(|o| {
            let (row, id, status, intervals) = o.rows.get(&name)?;
            (*id == manifest.trace_id && *status == manifest.status.to_string() && *intervals == manifest.intervals)
                .then(|| (*row, o.replay_rows.get(&name).cloned().unwrap_or_default()))
        });
        match reusable {
            Some((row, replay_rows)) => {
                report.reused += 1;
                plan.push((true, row, replay_rows));
            }
            None => {
                report.analysed += 1;
                todo.push((dir, manifest, run));
                plan.push((false, todo.len() - 1, Vec::new()));
            }
        }
    }
    let new_entries = analyse_all(todo, &settings);
    let mut ids: Vec<(&str, &str)> = seen_ids.iter().map(|(id, n)| (id.as_str(), n.as_str())).collect();
    ids.sort_unstable();
    for w in ids.windows(2).filter(|w| w[0].0 == w[1].0) {
        report
            .warnings
            .push(format!("traces {} and {} have the same trace_id {}: one is a copy", w[0].1, w[1].1, w[0].0));
    }

    let new_refs: Vec<&Entry> = new_entries.iter().collect();
    let new_index = batch(index_columns(&new_refs, &axes), &index_path)?;
    let new_replay_rows: Vec<(&Entry, &ReplayEntry)> =
        new_entries.iter().flat_map(|e| e.replays.iter().map(move |r| (e, r))).collect();
    let new_replay = batch(replay_columns(&new_replay_rows), &replay_path)?;
    let (mut index_order, mut replay_order) = (Vec::new(), Vec::new());
    let mut new_replay_start = vec![0usize; new_entries.len() + 1];
    for (i, e) in new_entries.iter().enumerate() {
        new_replay_start[i + 1] = new_replay_start[i] + e.replays.len();
    }
    for (from_old, row, replay_rows) in &plan {
        if *from_old {
            index_order.push((0, *row));
            replay_order.extend(replay_rows.iter().map(|&r| (0, r)));
        } else {
            index_order.push((1, *row));
            replay_order.extend((new_replay_start[*row]..new_replay_start[*row + 1]).map(|r| (1, r)));
        }
    }
    let index = assemble(old.as_ref().map(|o| &o.index), new_index, &index_order, &index_path)?;
    let replay = assemble(old.as_ref().map(|o| &o.replay), new_replay, &replay_order, &replay_path)?;
    report.traces = index.num_rows();
    report.replay_rows = replay.num_rows();
    write_table(&index_path, &index, &key)?;
    write_table(&replay_path, &replay, &key)?;
    drop(lock);
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
