//! Datasets: many traces recorded from one parameter grid, with an index table.
//!
//! ```text
//! DATASET/
//!   dataset.json       the grid, its axes and every run's name, seed and axis values
//!   specs/NAME.toml    each synthetic run's workload spec, as recorded
//!   traces/NAME/       each run's trace, exactly as `dirtytrace record` writes it
//!   index.parquet      one row per trace: axis values, summary, SimGrid fit
//!   replay.parquet     one row per trace and [replay] bandwidth
//!   .dataset.lock      held while a sweep checks and creates the dataset
//!   .claims/NAME.lock  held by the sweep working on run NAME
//!   .index.lock        held while the two tables are rewritten
//! ```
//!
//! The three locks are `flock`s on empty regular files, which are never removed (a process
//! holding a removed file's lock would not exclude one locking its successor). A lock dies with
//! its holder, so a killed sweep blocks nothing.
//!
//! - [`grid`]: parses `GRID.toml`, expands it into named, seeded runs, splits them into shards.
//! - [`sweep`]: records a shard's runs into the dataset, resuming whatever an earlier sweep left.
//! - [`index`]: builds `index.parquet` and `replay.parquet` from the traces present.
//!
//! `schemas/dataset.md` documents the layout and every column.

pub mod grid;
pub mod index;
pub mod progress;
pub mod sweep;

use grid::{ReplaySettings, ValueKind};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The dataset's description, written by `sweep`.
pub const INFO: &str = "dataset.json";
/// The directory of the traces.
pub const TRACES: &str = "traces";
/// The directory of the synthetic runs' specs.
pub const SPECS: &str = "specs";
/// The index table.
pub const INDEX: &str = "index.parquet";
/// The replay table.
pub const REPLAY: &str = "replay.parquet";
/// The lock file that serialises rewrites of the index.
pub const INDEX_LOCK: &str = ".index.lock";
/// The lock file held while a sweep checks and creates the dataset.
pub const DATASET_LOCK: &str = ".dataset.lock";
/// The directory of the runs' claims: `NAME.lock`, locked by the sweep working on run NAME.
pub const CLAIMS: &str = ".claims";
/// The largest `dataset.json` read: one run takes about 200 bytes, so this holds a grid of
/// about 300,000 runs, and a larger file is refused before it is read.
pub const MAX_INFO_BYTES: u64 = 64 * crate::units::MIB;
/// `dataset.json`'s format version.
pub const INFO_VERSION: u32 = 1;

/// Why a dataset could not be made, read or indexed.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The grid was refused.
    #[error(transparent)]
    Grid(#[from] grid::GridError),
    /// A metadata file could not be read (its message names it).
    #[error(transparent)]
    File(#[from] crate::files::FileError),
    /// `--output` is a file.
    #[error("--output {}: is a file, not a directory: give a new or empty directory for the dataset", .0.display())]
    OutputIsFile(PathBuf),
    /// `--output` holds something that is not a dataset.
    #[error(
        "--output {}: is not empty and is not a dirtytrace dataset (no {INFO}): give a new or empty directory",
        .0.display()
    )]
    NotADataset(PathBuf),
    /// One of the dataset's own directories is not a plain directory inside it.
    #[error(
        "{}: is a symbolic link or not a directory; a sweep writes only inside its dataset: replace it with a \
         directory (move what it points to into it)",
        .0.display()
    )]
    NotOwnDirectory(PathBuf),
    /// `--output` holds a dataset of another grid.
    #[error(
        "--output {}: holds the dataset of another grid ({}; its runs or their settings differ): sweep into a new \
         directory, or restore the grid that made it",
        dir.display(), grid.display()
    )]
    OtherGrid {
        /// The dataset.
        dir: PathBuf,
        /// The grid its `dataset.json` names.
        grid: PathBuf,
    },
    /// `--jobs` is out of range.
    #[error("--jobs {jobs}: {msg}")]
    Jobs {
        /// The value given.
        jobs: usize,
        /// Why it is refused.
        msg: String,
    },
    /// A path given to an analysis tool is neither a trace nor a dataset.
    #[error("{}: is neither a trace (no manifest.json) nor a dataset (no traces/ directory)", .0.display())]
    NotATraceOrDataset(PathBuf),
    /// `dataset.json` cannot be read.
    #[error("{}: {msg}", path.display())]
    Info {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A file operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// Writing a table failed.
    #[error("cannot write {}: {msg}", path.display())]
    Table {
        /// The table.
        path: PathBuf,
        /// What the Parquet or Arrow writer said.
        msg: String,
    },
    /// A lock file is a FIFO, a directory, a symlink…: locking it could block forever or lock
    /// something else.
    #[error(
        "{}: is a {kind}, where dirtytrace keeps a lock file (an empty regular file): remove it, then run again \
         (dirtytrace creates the lock file anew)",
        path.display()
    )]
    NotALockFile {
        /// The lock file.
        path: PathBuf,
        /// What it is instead.
        kind: &'static str,
    },
}

pub(crate) fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DatasetError + 'a {
    move |source| DatasetError::Io { what, path: path.to_path_buf(), source }
}

/// One axis as `dataset.json` keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AxisInfo {
    /// As written under `[axes]`.
    pub label: String,
    /// Its column in `index.parquet`.
    pub column: String,
    /// The column's type.
    pub kind: ValueKind,
}

/// One run as `dataset.json` keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// Its position in the grid's expansion.
    pub run: u64,
    /// Its name: the directory under `traces/`.
    pub name: String,
    /// Its repetition.
    pub repeat: u32,
    /// The synthetic spec's seed (null for Linux workloads).
    pub seed: Option<u64>,
    /// Its axis values, one per axis, in the axis column's unit.
    pub values: Vec<serde_json::Value>,
}

/// `dataset.json`: what the dataset is made of, so that `index` needs nothing but the dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetInfo {
    /// [`INFO_VERSION`].
    pub format_version: u32,
    /// The dirtytrace that wrote it.
    pub tool_version: String,
    /// The grid's fingerprint ([`grid::Grid::fingerprint`]): a sweep refuses a dataset of another.
    pub fingerprint: String,
    /// The grid file, as given to `sweep`.
    pub grid_file: PathBuf,
    /// The grid's text.
    pub grid_toml: String,
    /// The axes, in name order.
    pub axes: Vec<AxisInfo>,
    /// `[replay]`.
    pub replay: ReplaySettings,
    /// Every run of the grid (not only one shard's).
    pub runs: Vec<RunInfo>,
}

impl DatasetInfo {
    /// The description of `grid`'s dataset.
    pub fn new(grid: &grid::Grid, runs: &[grid::Run]) -> DatasetInfo {
        DatasetInfo {
            format_version: INFO_VERSION,
            tool_version: env!("CARGO_PKG_VERSION").into(),
            fingerprint: grid.fingerprint(runs),
            grid_file: grid.path.clone(),
            grid_toml: grid.text.clone(),
            axes: grid
                .axes
                .iter()
                .map(|a| AxisInfo { label: a.label.clone(), column: a.column.clone(), kind: a.kind() })
                .collect(),
            replay: grid.replay.clone(),
            runs: runs
                .iter()
                .map(|r| RunInfo {
                    run: r.run as u64,
                    name: r.name.clone(),
                    repeat: r.repeat,
                    seed: r.seed,
                    values: r.values.iter().map(|v| v.column_value()).collect(),
                })
                .collect(),
        }
    }

    /// Reads `DATASET/dataset.json`; `None` when there is none.
    pub fn load(dataset: &Path) -> Result<Option<DatasetInfo>, DatasetError> {
        let path = dataset.join(INFO);
        if !path.exists() {
            return Ok(None);
        }
        let bytes = crate::files::read_regular(&path, MAX_INFO_BYTES, "dataset description")?;
        let info: DatasetInfo = serde_json::from_slice(&bytes)
            .map_err(|e| DatasetError::Info { path: path.clone(), msg: e.to_string() })?;
        if info.format_version != INFO_VERSION {
            return Err(DatasetError::Info {
                path,
                msg: format!("has format_version {}, this dirtytrace reads {INFO_VERSION}", info.format_version),
            });
        }
        Ok(Some(info))
    }

    /// Writes `DATASET/dataset.json` atomically.
    pub fn store(&self, dataset: &Path) -> Result<(), DatasetError> {
        self.check_size(dataset)?;
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| DatasetError::Info { path: dataset.join(INFO), msg: e.to_string() })?;
        write_atomic(&dataset.join(INFO), (text + "\n").as_bytes())
    }

    /// Refuses a description larger than [`MAX_INFO_BYTES`], which [`DatasetInfo::load`] would
    /// not read back, before anything is written; measured without building the text.
    pub fn check_size(&self, dataset: &Path) -> Result<(), DatasetError> {
        struct Count(u64);
        impl std::io::Write for Count {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0 += b.len() as u64;
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut count = Count(1);
        serde_json::to_writer_pretty(&mut count, self)
            .map_err(|e| DatasetError::Info { path: dataset.join(INFO), msg: e.to_string() })?;
        if count.0 > MAX_INFO_BYTES {
            return Err(DatasetError::Info {
                path: dataset.join(INFO),
                msg: format!(
                    "would be {} bytes for the grid's {} runs, more than the {MAX_INFO_BYTES} bytes a dataset \
                     description may have: split the grid into several datasets (fewer runs each)",
                    count.0,
                    self.runs.len()
                ),
            });
        }
        Ok(())
    }
}

/// Opens the lock file at `path`, creating it if needed, and checks that it is a regular file:
/// opening a FIFO for writing blocks until a reader comes, and a symlink could point anywhere.
pub(crate) fn open_lock(path: &Path) -> Result<std::fs::File, DatasetError> {
    use std::os::unix::fs::OpenOptionsExt;
    let not_a_lock = |kind| DatasetError::NotALockFile { path: path.to_path_buf(), kind };
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_file() => return Err(not_a_lock(crate::files::kind_of(m.file_type()))),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err("cannot read", path)(e)),
        _ => {}
    }
    // Checked again on the open file, in case it was replaced meanwhile: O_NONBLOCK so that a
    // FIFO cannot block the open, O_NOFOLLOW so that a symlink is refused.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => not_a_lock("symbolic link"),
            _ => io_err("cannot open", path)(e),
        })?;
    let ft = file.metadata().map_err(io_err("cannot read", path))?.file_type();
    if !ft.is_file() {
        return Err(not_a_lock(crate::files::kind_of(ft)));
    }
    Ok(file)
}

/// A name for a temporary file beside `path` that no other process picks.
pub(crate) fn temp_beside(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{}-{}.tmp", std::process::id(), crate::clock::now_ns()))
}

/// Writes `path` through a temporary file and a rename, so readers see the old or the new.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DatasetError> {
    let tmp = temp_beside(path);
    std::fs::write(&tmp, bytes).map_err(io_err("cannot write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        DatasetError::Io { what: "cannot rename into", path: path.to_path_buf(), source: e }
    })
}

/// Whether `dir` is a trace directory (it has a `manifest.json`).
pub fn is_trace(dir: &Path) -> bool {
    dir.join(crate::trace::MANIFEST).exists()
}

/// Whether `dir` is a dataset (it has a `traces/` directory and is not a trace).
pub fn is_dataset(dir: &Path) -> bool {
    !is_trace(dir) && dir.join(TRACES).is_dir()
}

/// The trace directories of a dataset, by name.
pub fn dataset_traces(dataset: &Path) -> Result<Vec<PathBuf>, DatasetError> {
    let dir = dataset.join(TRACES);
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).map_err(io_err("cannot read", &dir))? {
        let e = e.map_err(io_err("cannot read", &dir))?;
        if e.file_type().map_err(io_err("cannot read", &dir))?.is_dir() {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

/// The traces the analysis tools' arguments stand for: a trace directory is itself; a
/// dataset is every directory under its `traces/`, by name.
pub fn expand_inputs(paths: &[PathBuf]) -> Result<Vec<PathBuf>, DatasetError> {
    let mut out = Vec::new();
    for p in paths {
        if is_trace(p) {
            out.push(p.clone());
        } else if is_dataset(p) {
            out.extend(dataset_traces(p)?);
        } else {
            return Err(DatasetError::NotATraceOrDataset(p.clone()));
        }
    }
    Ok(out)
}

/// One row of an analysis tool's `--json` over several traces: the tool's object for one
/// trace with `trace_dir` and `name` (the directory's name) first, or those two and `error`.
pub fn json_row<T: Serialize>(dir: &Path, result: &anyhow::Result<T>) -> serde_json::Value {
    let mut row = serde_json::Map::new();
    row.insert("trace_dir".into(), dir.display().to_string().into());
    row.insert("name".into(), dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default().into());
    match result.as_ref().map(serde_json::to_value) {
        Ok(Ok(serde_json::Value::Object(fields))) => row.extend(fields),
        Ok(Ok(other)) => {
            row.insert("value".into(), other);
        }
        Ok(Err(e)) => {
            row.insert("error".into(), e.to_string().into());
        }
        Err(e) => {
            row.insert("error".into(), crate::errors::causes(e.as_ref()).into());
        }
    }
    serde_json::Value::Object(row)
}
