//! `GRID.toml`: a base workload, record options and axes, expanded into named, seeded runs
//! and split into shards. Everything here is pure (no file is written); [`Grid::load`] only
//! reads the grid and its base workload. `schemas/dataset.md` documents the file and the
//! naming and seeding schemes.
//!
//! Expansion: the runs are the product of the axes, taken in the canonical key order
//! ([`Key`]: spec keys, then per-phase keys phase by phase, then record options), the first
//! axis varying slowest and the repetition fastest. Run `k` (0-based, in that order) belongs
//! to shard `k mod N + 1` of `N`, so shards partition the runs exactly and evenly.

use crate::analysis::replay::{Precopy, ReplayOptions};
use crate::analysis::AnalysisError;
use crate::guest::linux::{initramfs, packages, BootInputs, LinuxInputs};
use crate::guest::synthetic::spec::{
    self, toml_error, Number, Pattern, PhaseDocument, Quantity, SpecDocument, DEFAULT_SPEC, MAX_SPEC_BYTES,
};
use crate::options::keys_of;
use crate::record::{self, RecordSettings, SettingError};
use crate::units::{hex, parse_rate, HumanDuration, HumanRate, HumanSize};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How many runs a grid may expand to unless `--max-runs` allows more.
pub const DEFAULT_MAX_RUNS: usize = 1000;
/// Names longer than this are cut and end with a hash of the whole name instead.
pub const MAX_NAME_LEN: usize = 200;
/// The largest grid file read.
pub const MAX_GRID_BYTES: u64 = 1 << 20;

/// Why a grid was refused. Every message names the grid file and the key or flag at fault.
#[derive(Debug, thiserror::Error)]
pub enum GridError {
    /// The grid or its workload could not be read.
    #[error("{0}")]
    File(#[from] crate::files::FileError),
    /// The grid is not valid TOML, or has a key no grid has.
    #[error("{}: {msg}", path.display())]
    Syntax {
        /// The grid file.
        path: PathBuf,
        /// What the TOML parser said (it names the key and line).
        msg: String,
    },
    /// A key has a value the grid cannot use.
    #[error("{}: `{key}`: {msg}", path.display())]
    Key {
        /// The grid file.
        path: PathBuf,
        /// The key, as written in the grid (`axes.rate`, `record.interval`).
        key: String,
        /// What is wrong and what to do.
        msg: String,
    },
    /// One expanded run's workload spec is invalid.
    #[error("{}: run `{run}`: {msg}", path.display())]
    Run {
        /// The grid file.
        path: PathBuf,
        /// The run's name.
        run: String,
        /// What the spec parser said (it names the spec key).
        msg: String,
    },
    /// The grid expands to more runs than allowed.
    #[error(
        "{}: the axes expand to {runs} runs, more than the limit of {limit}: check the axes, or pass --max-runs {runs} to record them all",
        path.display()
    )]
    TooManyRuns {
        /// The grid file.
        path: PathBuf,
        /// Runs in the product of the axes.
        runs: u128,
        /// The limit (`--max-runs`).
        limit: usize,
    },
    /// The grid expands to more runs than any sweep takes, whatever `--max-runs` says.
    #[error(
        "{}: the axes expand to {runs} runs, more than the {MAX_GRID_RUNS} a grid may have (schemas/dataset.md), \
         whatever --max-runs says: split the grid, or shorten its axes or repeat",
        path.display()
    )]
    TooLarge {
        /// The grid file.
        path: PathBuf,
        /// Runs in the product of the axes, or "more than 2^128 - 1" on overflow.
        runs: String,
    },
}

/// The most runs a grid may expand to, whatever `--max-runs` says: a sweep holds every run
/// (its spec, its settings, its row in `dataset.json`) in memory, about 1 KB each.
pub const MAX_GRID_RUNS: u64 = 1_000_000;

/// What an axis sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Key {
    /// Guest RAM (spec `mem`, or `--mem` for a Linux workload).
    Mem,
    /// vCPUs (spec `vcpus`, or `--vcpus`).
    Vcpus,
    /// A phase's `rate`.
    Rate,
    /// A phase's `working_set`.
    WorkingSet,
    /// A phase's `pattern`.
    Pattern,
    /// A phase's `hot_fraction`.
    HotFraction,
    /// A phase's `hot_share`.
    HotShare,
    /// A phase's `cpu`.
    Cpu,
    /// A phase's `duration` (only as `PHASE.duration`: plain `duration` is the record option).
    PhaseDuration,
    /// `--interval`.
    Interval,
    /// `--migration-speed`.
    MigrationSpeed,
    /// `--duration`.
    Duration,
}

impl Key {
    /// Every key, in canonical order.
    pub const ALL: [Key; 12] = [
        Key::Mem,
        Key::Vcpus,
        Key::Rate,
        Key::WorkingSet,
        Key::Pattern,
        Key::HotFraction,
        Key::HotShare,
        Key::Cpu,
        Key::PhaseDuration,
        Key::Interval,
        Key::MigrationSpeed,
        Key::Duration,
    ];

    /// The key as written in a grid (and in a spec, for phase keys).
    pub fn as_str(self) -> &'static str {
        match self {
            Key::Mem => "mem",
            Key::Vcpus => "vcpus",
            Key::Rate => "rate",
            Key::WorkingSet => "working_set",
            Key::Pattern => "pattern",
            Key::HotFraction => "hot_fraction",
            Key::HotShare => "hot_share",
            Key::Cpu => "cpu",
            Key::PhaseDuration | Key::Duration => "duration",
            Key::Interval => "interval",
            Key::MigrationSpeed => "migration_speed",
        }
    }

    /// The key's part of a run name.
    pub fn short(self) -> &'static str {
        match self {
            Key::WorkingSet => "ws",
            Key::HotFraction => "hot",
            Key::HotShare => "share",
            Key::MigrationSpeed => "mig",
            Key::Duration => "dur",
            k => k.as_str(),
        }
    }

    /// A key of a synthetic spec's `[[phase]]`.
    pub fn is_phase_key(self) -> bool {
        matches!(
            self,
            Key::Rate
                | Key::WorkingSet
                | Key::Pattern
                | Key::HotFraction
                | Key::HotShare
                | Key::Cpu
                | Key::PhaseDuration
        )
    }

    /// The unit suffix of the key's index column, and the column's type.
    fn column(self) -> (&'static str, ValueKind) {
        match self {
            Key::Mem | Key::WorkingSet => ("_bytes", ValueKind::U64),
            Key::Vcpus => ("", ValueKind::U32),
            Key::Rate | Key::MigrationSpeed => ("_bytes_per_s", ValueKind::F64),
            Key::Pattern => ("", ValueKind::Utf8),
            Key::HotFraction | Key::HotShare | Key::Cpu => ("", ValueKind::F64),
            Key::PhaseDuration | Key::Interval | Key::Duration => ("_s", ValueKind::F64),
        }
    }

    fn from_name(s: &str) -> Option<Key> {
        Key::ALL.into_iter().find(|k| k.as_str() == s && *k != Key::PhaseDuration)
    }
}

/// The type of an axis's index column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueKind {
    /// uint64.
    U64,
    /// uint32.
    U32,
    /// float64 (a `max` rate is null).
    F64,
    /// string.
    Utf8,
}

/// One value of an axis, parsed: the key it sets with its value, typed, so that a value is
/// never applied to a key of another type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AxisValue {
    /// Guest RAM, bytes.
    Mem(u64),
    /// vCPUs.
    Vcpus(u32),
    /// A phase's rate, bytes per second; `None` is `max`.
    Rate(Option<f64>),
    /// A phase's working set, bytes.
    WorkingSet(u64),
    /// A phase's write pattern.
    Pattern(Pattern),
    /// A phase's `hot_fraction`.
    HotFraction(f64),
    /// A phase's `hot_share`.
    HotShare(f64),
    /// A phase's `cpu`.
    Cpu(f64),
    /// A phase's length.
    PhaseDuration(Duration),
    /// `--interval`.
    Interval(Duration),
    /// `--migration-speed`, bytes per second.
    MigrationSpeed(f64),
    /// `--duration`.
    Duration(Duration),
}

/// A rate as run names first wrote it ([`HumanRate`]'s display before it wrote extreme numbers
/// in scientific notation). Never edited: run names go into every dataset's fingerprint.
fn rate_text_as_first_written(bytes: f64) -> String {
    let bits = bytes * 8.0;
    let whole = |v: f64, unit: f64| v >= unit && (v / unit).fract() == 0.0;
    if whole(bits, 1e9) {
        format!("{}Gbit/s", bits / 1e9)
    } else if whole(bits, 1e6) {
        format!("{}Mbit/s", bits / 1e6)
    } else if whole(bytes, crate::units::MIB as f64) {
        format!("{}MiB/s", bytes / crate::units::MIB as f64)
    } else {
        format!("{bytes}B/s")
    }
}

impl AxisValue {
    /// The key it sets.
    pub fn key(&self) -> Key {
        match self {
            AxisValue::Mem(_) => Key::Mem,
            AxisValue::Vcpus(_) => Key::Vcpus,
            AxisValue::Rate(_) => Key::Rate,
            AxisValue::WorkingSet(_) => Key::WorkingSet,
            AxisValue::Pattern(_) => Key::Pattern,
            AxisValue::HotFraction(_) => Key::HotFraction,
            AxisValue::HotShare(_) => Key::HotShare,
            AxisValue::Cpu(_) => Key::Cpu,
            AxisValue::PhaseDuration(_) => Key::PhaseDuration,
            AxisValue::Interval(_) => Key::Interval,
            AxisValue::MigrationSpeed(_) => Key::MigrationSpeed,
            AxisValue::Duration(_) => Key::Duration,
        }
    }

    /// The value in a spec or a name: as people write it, and as the parsers read it back.
    pub fn text(&self) -> String {
        match *self {
            AxisValue::Mem(b) | AxisValue::WorkingSet(b) => HumanSize(b).to_string(),
            AxisValue::Rate(None) => "max".into(),
            AxisValue::Rate(Some(r)) | AxisValue::MigrationSpeed(r) => rate_text_as_first_written(r),
            AxisValue::PhaseDuration(d) | AxisValue::Interval(d) | AxisValue::Duration(d) => {
                HumanDuration(d).to_string()
            }
            AxisValue::Pattern(p) => p.name().into(),
            AxisValue::HotFraction(f) | AxisValue::HotShare(f) | AxisValue::Cpu(f) => f.to_string(),
            AxisValue::Vcpus(c) => c.to_string(),
        }
    }

    /// The value of the axis's index column, in the column's unit.
    pub fn column_value(&self) -> serde_json::Value {
        match *self {
            AxisValue::Mem(b) | AxisValue::WorkingSet(b) => b.into(),
            AxisValue::Rate(r) => r.into(),
            AxisValue::MigrationSpeed(r) => r.into(),
            AxisValue::PhaseDuration(d) | AxisValue::Interval(d) | AxisValue::Duration(d) => d.as_secs_f64().into(),
            AxisValue::Pattern(p) => p.name().into(),
            AxisValue::HotFraction(f) | AxisValue::HotShare(f) | AxisValue::Cpu(f) => f.into(),
            AxisValue::Vcpus(c) => c.into(),
        }
    }

    /// Sets the value in a run: a record option in its settings, a phase key in its phase of
    /// the spec (`phase`: the axis's phase, present for the phase keys; the grid refuses
    /// them for a workload without phases).
    fn apply(&self, record: &mut RecordSettings, phase: Option<&mut PhaseDocument>) {
        let phase = || phase.expect("a phase key's axis has its phase");
        let text = || Some(Quantity::Text(self.text()));
        match *self {
            AxisValue::Mem(b) => record.mem = Some(HumanSize(b)),
            AxisValue::Vcpus(c) => record.vcpus = Some(c),
            AxisValue::Interval(d) => record.interval = HumanDuration(d),
            AxisValue::Duration(d) => record.duration = Some(HumanDuration(d)),
            AxisValue::MigrationSpeed(r) => record.migration_speed = HumanRate(r),
            AxisValue::Rate(_) => phase().rate = text(),
            AxisValue::WorkingSet(_) => phase().working_set = text(),
            AxisValue::Pattern(p) => phase().pattern = Some(p.name().into()),
            AxisValue::HotFraction(f) => phase().hot_fraction = Some(Number::Float(f)),
            AxisValue::HotShare(f) => phase().hot_share = Some(Number::Float(f)),
            AxisValue::Cpu(f) => phase().cpu = Some(Number::Float(f)),
            AxisValue::PhaseDuration(_) => phase().duration = text(),
        }
    }
}

/// One axis of the grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    /// What it sets.
    pub key: Key,
    /// For a phase key: the phase's position in the spec.
    pub phase: Option<usize>,
    /// The axis as written under `[axes]` (`rate`, `serve.rate`).
    pub label: String,
    /// Its column in `index.parquet` (`axis_rate_bytes_per_s`, `axis_serve_rate_bytes_per_s`).
    pub column: String,
    /// Its values, in the order written.
    pub values: Vec<AxisValue>,
}

impl Axis {
    /// The type of the axis's index column.
    pub fn kind(&self) -> ValueKind {
        self.key.column().1
    }

    /// The axis's part of a run name: its short key, after `PHASE.` if written so.
    fn name_prefix(&self) -> String {
        match self.label.split_once('.') {
            Some((phase, _)) => format!("{}.{}", sanitize(phase), self.key.short()),
            None => self.key.short().to_string(),
        }
    }
}

/// The workload every run starts from.
#[derive(Debug, Clone, PartialEq)]
pub enum BaseWorkload {
    /// A synthetic spec (`workload = "x.toml"`, an inline `[spec]`, or the built-in default).
    Synthetic {
        /// The spec's text.
        text: String,
        /// Where it came from, for messages.
        origin: String,
    },
    /// A Linux workload script (`workload = "x.sh"`), by absolute path.
    Linux {
        /// The script.
        script: PathBuf,
        /// sha256 of its contents, so that an edited script is a different grid.
        sha256: String,
    },
}

/// `[replay]`: the migrations the index replays every trace with, one per bandwidth.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplaySettings {
    /// Bandwidths, bytes per second; empty: no replay.
    pub bandwidths: Vec<f64>,
    /// How each migration runs, as `replay`'s flags say.
    #[serde(flatten)]
    pub precopy: Precopy,
    /// `--start` (s), of the replays and the SimGrid fits. Left out of `dataset.json` at its
    /// default of 0, so that a dataset written before it existed keeps its file and its rows.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_s: f64,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

impl ReplaySettings {
    /// The options `dirtytrace replay` would be given for one bandwidth.
    pub fn options(&self, bandwidth: f64) -> ReplayOptions {
        ReplayOptions { precopy: self.precopy, start_s: self.start_s, ..ReplayOptions::new(bandwidth) }
    }
}

/// What a run records.
#[derive(Debug, Clone, PartialEq)]
pub enum RunWorkload {
    /// A synthetic spec, complete (mem, vcpus, seed and every axis applied).
    Synthetic {
        /// The spec's TOML text.
        spec: String,
    },
    /// A Linux workload script.
    Linux {
        /// The script.
        script: PathBuf,
    },
}

/// One run of the grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// Its position in the expansion (0-based).
    pub run: usize,
    /// Its stable name: the directory under `DATASET/traces/`.
    pub name: String,
    /// The repetition, 0 to `repeat - 1`.
    pub repeat: u32,
    /// The synthetic spec's seed; `None` for Linux workloads.
    pub seed: Option<u64>,
    /// One value per axis of the grid, in the grid's axis order.
    pub values: Vec<AxisValue>,
    /// What it records.
    pub workload: RunWorkload,
    /// How it records (a synthetic run has its `mem` and `vcpus` in its spec instead).
    pub record: RecordSettings,
}

/// Reads a file a grid names (relative to the grid): its resolved path and its contents.
pub type ReadFile<'a> = dyn Fn(&Path) -> Result<(PathBuf, Vec<u8>), crate::files::FileError> + 'a;

/// A parsed grid.
#[derive(Debug, Clone)]
pub struct Grid {
    /// The grid file.
    pub path: PathBuf,
    /// Its text.
    pub text: String,
    /// The base workload.
    pub workload: BaseWorkload,
    /// The base record options (`[record]`).
    pub record: RecordSettings,
    /// Linux inputs (`[record]`), paths resolved against the grid's directory.
    pub linux: LinuxInputs,
    /// The same as written in the grid, for the fingerprint.
    linux_as_written: LinuxInputs,
    /// A synthetic workload's spec, as written, and its seed.
    spec: Option<(SpecDocument, u64)>,
    /// The axes, in canonical order (not necessarily as written).
    pub axes: Vec<Axis>,
    /// `axes.repeat`: repetitions of every combination (1 when absent).
    pub repeat: u32,
    /// `[replay]`.
    pub replay: ReplaySettings,
}

/// Which share of the runs this host records: `I/N`, 1 ≤ I ≤ N.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Shard {
    /// I, 1-based.
    pub index: u32,
    /// N.
    pub count: u32,
}

impl Shard {
    /// Every run.
    pub const ALL: Shard = Shard { index: 1, count: 1 };

    /// Whether run `run` (its position in the expansion) is this shard's: `run mod N = I - 1`.
    pub fn contains(&self, run: usize) -> bool {
        run % self.count as usize == (self.index - 1) as usize
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Why `--shard` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--shard must be I/N with 1 <= I <= N (e.g. 1/4), got `{0}`")]
pub struct ShardError(String);

impl std::str::FromStr for Shard {
    type Err = ShardError;
    fn from_str(s: &str) -> Result<Shard, ShardError> {
        let err = || ShardError(s.to_string());
        let (i, n) = s.trim().split_once('/').ok_or_else(err)?;
        let (index, count): (u32, u32) = (i.trim().parse().map_err(|_| err())?, n.trim().parse().map_err(|_| err())?);
        if count == 0 || index == 0 || index > count {
            return Err(err());
        }
        Ok(Shard { index, count })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrid {
    workload: Option<String>,
    spec: Option<toml::Table>,
    record: Option<toml::Table>,
    axes: Option<toml::Table>,
    replay: Option<toml::Table>,
}

/// Reads one value of a key: what it expects (for the message that names what it got instead)
/// and how it reads a string, an integer and a float; a type without a reader is refused.
struct Expect<T> {
    what: String,
    text: Option<TextReader<T>>,
    int: Option<Reader<i64, T>>,
    float: Option<Reader<f64, T>>,
}

/// How [`Expect`] reads a number.
type Reader<V, T> = fn(V) -> Result<T, String>;
/// How [`Expect`] reads a string.
type TextReader<T> = fn(&str) -> Result<T, String>;

impl<'de, T> serde::de::Visitor<'de> for Expect<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.what)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
        match self.text {
            Some(read) => read(v).map_err(E::custom),
            None => Err(E::invalid_type(serde::de::Unexpected::Str(v), &self)),
        }
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<T, E> {
        match self.int {
            Some(read) => read(v).map_err(E::custom),
            None => Err(E::invalid_type(serde::de::Unexpected::Signed(v), &self)),
        }
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<T, E> {
        match i64::try_from(v) {
            Ok(v) => self.visit_i64(v),
            Err(_) => Err(E::invalid_type(serde::de::Unexpected::Unsigned(v), &self)),
        }
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<T, E> {
        match self.float {
            Some(read) => read(v).map_err(E::custom),
            None => Err(E::invalid_type(serde::de::Unexpected::Float(v), &self)),
        }
    }
}

/// Letters, digits and `.`, `-`, `+`, `=`; `/s` becomes `ps`; anything else `-`.
pub fn sanitize(s: &str) -> String {
    s.replace("/s", "ps")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+' | '=') { c } else { '-' })
        .collect()
}

/// The phase part of a column name: lower-case letters, digits and `_`.
fn column_part(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect()
}

/// The seed of repetition `k`: the spec's own seed for `k = 0`, so that a grid without
/// `repeat` records exactly its spec; for `k ≥ 1` the first 8 bytes (little-endian) of
/// `sha256("dirtytrace-sweep-seed:{base}:{k}")`, less the top bit (a spec's seed is a
/// non-negative TOML integer). A seed equal to an earlier repetition's is incremented.
pub fn repetition_seeds(base: u64, repeat: u32) -> Vec<u64> {
    make_distinct((0..repeat).map(|k| {
        if k == 0 {
            base
        } else {
            let d = sha2::Sha256::digest(format!("dirtytrace-sweep-seed:{base}:{k}").as_bytes());
            let mut b = [0u8; 8];
            b.copy_from_slice(&d[..8]);
            u64::from_le_bytes(b) & (u64::MAX >> 1)
        }
    }))
}

/// Each candidate, incremented (modulo 2⁶³) past the seeds already taken. A set of the seeds
/// taken keeps this linear; the result is the one the first, quadratic, scan gave.
fn make_distinct(candidates: impl ExactSizeIterator<Item = u64>) -> Vec<u64> {
    let mut seeds: Vec<u64> = Vec::with_capacity(candidates.len());
    let mut taken: std::collections::HashSet<u64> = std::collections::HashSet::with_capacity(candidates.len());
    for mut s in candidates {
        while !taken.insert(s) {
            s = (s + 1) & (u64::MAX >> 1);
        }
        seeds.push(s);
    }
    seeds
}

/// A run's name: `KEY=VALUE` per axis, in the grid's axis order, then `rK`, joined by `_`
/// and [`sanitize`]d. A name longer than [`MAX_NAME_LEN`] keeps its first 180 bytes and
/// ends with `~` and 16 hex digits of its sha256.
pub fn run_name(parts: &[(String, String)], repeat: u32) -> String {
    let mut name: String = parts.iter().map(|(k, v)| format!("{k}={}_", sanitize(v))).collect();
    name.push_str(&format!("r{repeat}"));
    if name.len() > MAX_NAME_LEN {
        let hash = hex(&sha2::Sha256::digest(name.as_bytes())[..8]);
        let mut cut = 180;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name = format!("{}~{hash}", &name[..cut]);
    }
    name
}

struct Ctx<'a> {
    path: &'a Path,
}

impl Ctx<'_> {
    fn key(&self, key: impl Into<String>, msg: impl Into<String>) -> GridError {
        GridError::Key { path: self.path.to_path_buf(), key: key.into(), msg: msg.into() }
    }

    /// A value of `key`, read as its type reads it.
    fn value<T: DeserializeOwned>(&self, key: &str, v: &toml::Value) -> Result<T, GridError> {
        v.clone().try_into().map_err(|e| self.key(key, e.message()))
    }

    /// A value of `key`, read by `expect`.
    fn expect<T>(&self, key: &str, v: &toml::Value, expect: Expect<T>) -> Result<T, GridError> {
        use serde::Deserializer;
        v.clone().deserialize_any(expect).map_err(|e| self.key(key, e.message()))
    }

    /// `record`'s check of a setting, its error under `key`.
    fn setting<T>(&self, key: &str, value: T, check: fn(T) -> Result<(), SettingError>) -> Result<T, GridError>
    where
        T: Copy,
    {
        check(value).map_err(|e| self.key(key, e.to_string()))?;
        Ok(value)
    }

    fn speed(&self, key: &str, v: &toml::Value) -> Result<f64, GridError> {
        self.setting(key, self.value::<HumanRate>(key, v)?.0, record::check_migration_speed)
    }

    /// A grid's vCPU count, for any workload: the synthetic guest's check.
    fn vcpus(&self, key: &str, n: u32) -> Result<u32, GridError> {
        spec::check_vcpus(n.into()).map_err(|e| self.key(key, e))
    }

    /// Takes the keys `T` reads out of `table`, the grid's `[section]`, and reads them. Each
    /// key is read alone first, so that an error names it (`record.interval`).
    fn take<T: DeserializeOwned>(&self, section: &str, table: &mut toml::Table) -> Result<T, GridError> {
        let mine: toml::Table = keys_of::<T>().iter().filter_map(|k| table.remove_entry(*k)).collect();
        for (k, v) in &mine {
            let alone = toml::Table::from_iter([(k.clone(), v.clone())]);
            toml::Value::Table(alone).try_into::<T>().map_err(|e| self.key(format!("{section}.{k}"), e.message()))?;
        }
        toml::Value::Table(mine).try_into().map_err(|e| self.key(section, e.message()))
    }

    /// Refuses the first key left in `table` once every struct of `[section]` took its own.
    fn refuse_rest(&self, section: &str, table: &toml::Table, keys: &[&str]) -> Result<(), GridError> {
        match table.keys().next() {
            Some(k) => Err(self.key(
                format!("{section}.{k}"),
                format!("is not a key of [{section}], whose keys are {}", keys.join(", ")),
            )),
            None => Ok(()),
        }
    }

    /// One value of an axis on `key`: read as the key's type reads it, and checked by the
    /// check `record` makes of that key (a spec's keys are checked again in each run's spec).
    fn axis_value(&self, label: &str, key: Key, v: &toml::Value) -> Result<AxisValue, GridError> {
        let fraction = || Expect {
            what: "a number between 0 and 1".into(),
            text: None,
            int: Some(|i| spec::check_fraction(i as f64)),
            float: Some(spec::check_fraction),
        };
        let time = |v: &toml::Value| self.value::<HumanDuration>(label, v).map(|d| d.0);
        Ok(match key {
            Key::Mem => AxisValue::Mem(self.value::<HumanSize>(label, v)?.0),
            Key::WorkingSet => AxisValue::WorkingSet(self.value::<HumanSize>(label, v)?.0),
            Key::Vcpus => AxisValue::Vcpus(self.expect(
                label,
                v,
                Expect {
                    what: format!("a whole number of vCPUs, 1 to {}", spec::MAX_VCPUS),
                    text: None,
                    int: Some(spec::check_vcpus),
                    float: None,
                },
            )?),
            Key::Rate => AxisValue::Rate(self.expect(
                label,
                v,
                Expect {
                    what: "a rate such as \"1Gbit/s\", or \"max\"".into(),
                    text: Some(|t| match t.trim() {
                        "max" => Ok(None),
                        t => parse_rate(t).map(Some).map_err(|e| e.to_string()),
                    }),
                    int: Some(|i| parse_rate(&i.to_string()).map(Some).map_err(|e| e.to_string())),
                    float: Some(|f| parse_rate(&f.to_string()).map(Some).map_err(|e| e.to_string())),
                },
            )?),
            Key::Pattern => AxisValue::Pattern(self.expect(
                label,
                v,
                Expect {
                    what: format!("a pattern: one of {}", Pattern::names()),
                    text: Some(|t| {
                        Pattern::from_name(t).ok_or_else(|| format!("`{t}` is not one of {}", Pattern::names()))
                    }),
                    int: None,
                    float: None,
                },
            )?),
            Key::HotFraction => AxisValue::HotFraction(self.expect(label, v, fraction())?),
            Key::HotShare => AxisValue::HotShare(self.expect(label, v, fraction())?),
            Key::Cpu => AxisValue::Cpu(self.expect(label, v, fraction())?),
            Key::PhaseDuration => AxisValue::PhaseDuration(time(v)?),
            Key::Interval => AxisValue::Interval(self.setting(label, time(v)?, record::check_interval)?),
            Key::Duration => AxisValue::Duration(self.setting(label, time(v)?, record::check_duration)?),
            Key::MigrationSpeed => AxisValue::MigrationSpeed(self.speed(label, v)?),
        })
    }
}

/// Where the phases of a spec are, by name.
struct Phases {
    names: Vec<String>,
    patterns: Vec<Pattern>,
}

impl Grid {
    /// Reads and parses `path` and its base workload (a `workload` path is relative to the
    /// grid's directory).
    pub fn load(path: &Path) -> Result<Grid, GridError> {
        let bytes = crate::files::read_regular(path, MAX_GRID_BYTES, "grid")?;
        let text = String::from_utf8(bytes)
            .map_err(|_| GridError::Syntax { path: path.to_path_buf(), msg: "is not UTF-8 text".into() })?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Grid::parse(path, &text, &|p| {
            let p = if p.is_absolute() { p.to_path_buf() } else { dir.join(p) };
            let limit =
                if p.extension().is_some_and(|e| e == "sh") { initramfs::MAX_SCRIPT_BYTES } else { MAX_SPEC_BYTES };
            let bytes = crate::files::read_regular(&p, limit, "workload")?;
            Ok((std::fs::canonicalize(&p).unwrap_or(p), bytes))
        })
    }

    /// Parses a grid's text. `read` reads a file the grid names (relative to the grid) and
    /// returns its resolved path and contents.
    pub fn parse(path: &Path, text: &str, read: &ReadFile<'_>) -> Result<Grid, GridError> {
        let cx = Ctx { path };
        let raw: RawGrid = toml::from_str(text)
            .map_err(|e| GridError::Syntax { path: path.to_path_buf(), msg: toml_error(text, &e) })?;
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let workload = match (&raw.workload, raw.spec) {
            (Some(_), Some(_)) => return Err(cx.key("spec", "give either `workload` or `[spec]`, not both")),
            (None, Some(table)) => BaseWorkload::Synthetic {
                text: toml::to_string(&table).map_err(|e| cx.key("spec", e.to_string()))?,
                origin: "[spec]".into(),
            },
            (None, None) => BaseWorkload::Synthetic { text: DEFAULT_SPEC.into(), origin: "the built-in spec".into() },
            (Some(w), None) => {
                let p = Path::new(w);
                let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
                if ext != "toml" && ext != "sh" {
                    return Err(cx.key(
                        "workload",
                        format!("`{w}` is neither a synthetic spec (.toml) nor a Linux workload script (.sh)"),
                    ));
                }
                let (resolved, bytes) = read(p).map_err(|e| cx.key("workload", e.to_string()))?;
                if ext == "sh" {
                    BaseWorkload::Linux { script: resolved, sha256: hex(&sha2::Sha256::digest(&bytes)) }
                } else {
                    let text =
                        String::from_utf8(bytes).map_err(|_| cx.key("workload", format!("{w} is not UTF-8 text")))?;
                    BaseWorkload::Synthetic { text, origin: w.clone() }
                }
            }
        };

        let mut section = raw.record.unwrap_or_default();
        let record: RecordSettings = cx.take("record", &mut section)?;
        record.check().map_err(|e| cx.key(format!("record.{}", e.key()), e.to_string()))?;
        if let Some(n) = record.vcpus {
            cx.vcpus("record.vcpus", n)?;
        }
        // The keys only a Linux workload takes.
        let linux_keys =
            [keys_of::<BootInputs>(), keys_of::<initramfs::Contents>(), keys_of::<crate::disk::DiskInputs>()].concat();
        let linux_given: Vec<String> = section.keys().filter(|k| linux_keys.contains(&k.as_str())).cloned().collect();
        let linux_as_written = LinuxInputs {
            boot: cx.take("record", &mut section)?,
            initramfs: cx.take("record", &mut section)?,
            disk: cx.take("record", &mut section)?,
        };
        cx.refuse_rest("record", &section, &[keys_of::<RecordSettings>(), &linux_keys].concat())?;
        if let (Some(k), BaseWorkload::Synthetic { .. }) = (linux_given.first(), &workload) {
            return Err(cx.key(format!("record.{k}"), "is a Linux-guest option, but the workload is a synthetic spec"));
        }
        if let Some(bad) = linux_as_written.initramfs.packages.iter().find(|n| !packages::is_package_name(n)) {
            return Err(cx.key("record.packages", format!("`{bad}` is not a Debian package name")));
        }
        let linux = linux_as_written.relative_to(&base_dir);

        let mut base_spec = None;
        let phases = match &workload {
            BaseWorkload::Synthetic { text, origin } => {
                let in_workload = |e: spec::SpecError| cx.key("workload", format!("{origin}: {e}"));
                let doc = SpecDocument::parse(text).map_err(in_workload)?;
                let spec = doc.check(record.mem.map(|m| m.0), record.vcpus).map_err(in_workload)?;
                base_spec = Some((doc, spec.seed));
                let names: Vec<String> = spec.phases.iter().map(|p| p.name.clone()).collect();
                if let Some(dup) = names.iter().enumerate().find(|(i, n)| names[..*i].contains(n)) {
                    return Err(cx.key(
                        "workload",
                        format!("{origin}: two phases are named `{}`; a grid needs unique phase names", dup.1),
                    ));
                }
                Some(Phases { names, patterns: spec.phases.iter().map(|p| p.pattern).collect() })
            }
            BaseWorkload::Linux { .. } => None,
        };

        let (axes, repeat) = parse_axes(&cx, raw.axes.unwrap_or_default(), phases.as_ref(), &workload)?;
        let replay = parse_replay(&cx, raw.replay.unwrap_or_default())?;
        Ok(Grid {
            path: path.to_path_buf(),
            text: text.to_string(),
            workload,
            record,
            linux,
            linux_as_written,
            spec: base_spec,
            axes,
            repeat,
            replay,
        })
    }

    /// How many runs the axes expand to; `None` if the product overflows.
    pub fn run_count(&self) -> Option<u128> {
        self.axes.iter().try_fold(self.repeat as u128, |n, a| n.checked_mul(a.values.len() as u128))
    }

    /// The runs, in order, generated one at a time as the iterator is read. Refuses a grid of
    /// more than [`MAX_GRID_RUNS`] or `max_runs` runs before generating any (the product is
    /// counted, not expanded); each run's spec is checked as `record` would as it is generated.
    /// Names are not checked to be distinct: [`NameCheck`] does that.
    pub fn runs(&self, max_runs: usize) -> Result<impl Iterator<Item = Result<Run, GridError>> + '_, GridError> {
        let total = match self.run_count() {
            Some(n) if n <= MAX_GRID_RUNS as u128 => n as usize,
            n => {
                let runs = n.map_or_else(|| format!("more than {}", u128::MAX), |n| n.to_string());
                return Err(GridError::TooLarge { path: self.path.clone(), runs });
            }
        };
        if total > max_runs {
            return Err(GridError::TooManyRuns { path: self.path.clone(), runs: total as u128, limit: max_runs });
        }
        let seeds = repetition_seeds(self.spec.as_ref().map_or(0, |(_, seed)| *seed), self.repeat);
        Ok((0..total).map(move |run| self.run_at(run, &seeds)))
    }

    /// The runs, in order: [`Grid::runs`] collected, their names checked to be distinct.
    pub fn expand(&self, max_runs: usize) -> Result<Vec<Run>, GridError> {
        let runs = self.runs(max_runs)?.collect::<Result<Vec<Run>, GridError>>()?;
        let mut names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(self.same_name(w[0]));
        }
        Ok(runs)
    }

    fn same_name(&self, name: &str) -> GridError {
        GridError::Key {
            path: self.path.clone(),
            key: "axes".into(),
            msg: format!("two runs would both be named `{name}`: make the axis values or phase names distinct"),
        }
    }

    /// Run `run` of the expansion.
    fn run_at(&self, run: usize, seeds: &[u64]) -> Result<Run, GridError> {
        // Odometer: the last axis fastest; the repetition inside it.
        let repeat = (run % self.repeat as usize) as u32;
        let mut rest = run / self.repeat as usize;
        let mut digits = vec![0usize; self.axes.len()];
        for (d, axis) in digits.iter_mut().zip(&self.axes).rev() {
            *d = rest % axis.values.len();
            rest /= axis.values.len();
        }
        let values: Vec<AxisValue> = digits.iter().zip(&self.axes).map(|(&d, a)| a.values[d]).collect();
        let parts: Vec<(String, String)> =
            self.axes.iter().zip(&values).map(|(a, v)| (a.name_prefix(), v.text())).collect();
        let name = run_name(&parts, repeat);
        let mut record = self.record.clone();
        let mut spec = self.spec.as_ref().map(|(doc, _)| doc.clone());
        for (a, v) in self.axes.iter().zip(&values) {
            let phase = match (spec.as_mut(), a.phase) {
                (Some(doc), Some(i)) => doc.phase.as_mut().and_then(|p| p.get_mut(i)),
                _ => None,
            };
            v.apply(&mut record, phase);
        }
        let (workload, seed) = match (&self.workload, spec) {
            (BaseWorkload::Linux { script, .. }, _) => (RunWorkload::Linux { script: script.clone() }, None),
            (BaseWorkload::Synthetic { .. }, Some(mut doc)) => {
                // A synthetic run carries mem, vcpus and its seed in its spec.
                let seed = seeds[repeat as usize];
                if let Some(m) = record.mem.take() {
                    doc.mem = Some(Quantity::Text(m.to_string()));
                }
                if let Some(v) = record.vcpus.take() {
                    doc.vcpus = Some(v.into());
                }
                doc.seed = Some(seed as i64);
                (RunWorkload::Synthetic { spec: self.run_spec(&doc, &name)? }, Some(seed))
            }
            (BaseWorkload::Synthetic { .. }, None) => unreachable!("a synthetic grid has a base spec"),
        };
        Ok(Run { run, name, repeat, seed, values, workload, record })
    }

    /// The text of one run's spec (the base spec with mem, vcpus, the seed and the axes' phase
    /// keys set), checked by the check `record` makes of a spec.
    fn run_spec(&self, doc: &SpecDocument, name: &str) -> Result<String, GridError> {
        let error = |msg: String| GridError::Run { path: self.path.clone(), run: name.into(), msg };
        let toml = doc.to_toml().map_err(|e| error(e.to_string()))?;
        doc.check(None, None).map_err(|e| error(e.to_string()))?;
        Ok(format!("# Run `{name}` of a dirtytrace sweep: the base workload with this run's axis values.\n{toml}"))
    }

    /// A digest of everything that decides what each run records: two grids with the same
    /// fingerprint make the same dataset.
    pub fn fingerprint(&self, runs: &[Run]) -> String {
        let mut f = self.fingerprinter();
        runs.iter().for_each(|r| f.feed(r));
        f.finish()
    }

    /// [`Grid::fingerprint`], fed one run at a time.
    pub fn fingerprinter(&self) -> Fingerprinter {
        let mut f = Fingerprinter(sha2::Sha256::new());
        if let BaseWorkload::Linux { sha256, .. } = &self.workload {
            f.put(sha256);
        }
        // The Linux options as written, not as resolved: hosts may mount the grid elsewhere.
        f.put(&linux_fingerprint(&self.linux_as_written));
        f
    }
}

/// A grid's fingerprint being computed, run by run ([`Grid::fingerprinter`]).
pub struct Fingerprinter(sha2::Sha256);

impl Fingerprinter {
    fn put(&mut self, s: &str) {
        self.0.update((s.len() as u64).to_le_bytes());
        self.0.update(s.as_bytes());
    }

    /// Adds the next run, in order.
    pub fn feed(&mut self, r: &Run) {
        self.put(&r.name);
        self.put(&serde_json::to_string(&r.record).unwrap_or_default());
        match &r.workload {
            RunWorkload::Synthetic { spec } => self.put(spec),
            RunWorkload::Linux { .. } => {}
        }
    }

    /// The fingerprint.
    pub fn finish(self) -> String {
        hex(&self.0.finalize())[..32].to_string()
    }
}

/// Checks, run by run, that no two of a grid's runs have one name (what [`Grid::expand`]
/// checks at once).
#[derive(Default)]
pub struct NameCheck(std::collections::HashSet<String>);

impl NameCheck {
    /// Adds a run of `grid`; refuses a name already added.
    pub fn add(&mut self, grid: &Grid, name: &str) -> Result<(), GridError> {
        if self.0.insert(name.to_string()) {
            Ok(())
        } else {
            Err(grid.same_name(name))
        }
    }
}

/// The keys of the Linux inputs in the order the first datasets hashed them. Never edited:
/// changing it would change every dataset's fingerprint.
const LINUX_KEYS_AS_FIRST_HASHED: [&str; 7] =
    ["kernel", "files", "cmdline", "bzimage", "rootfs", "packages", "allow_emulated_kernel"];

/// The Linux inputs as the fingerprint hashes them: a JSON object of the keys the first datasets
/// hashed, in their order, then any key added since that is not at its default. So neither
/// regrouping the inputs nor adding one changes the fingerprint of a dataset that began before.
fn linux_fingerprint(linux: &LinuxInputs) -> String {
    let object = |l: &LinuxInputs| match serde_json::to_value(l) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    let (set, default) = (object(linux), object(&LinuxInputs::default()));
    let first = LINUX_KEYS_AS_FIRST_HASHED.iter().filter_map(|k| set.get_key_value(*k));
    let added =
        set.iter().filter(|(k, v)| !LINUX_KEYS_AS_FIRST_HASHED.contains(&k.as_str()) && default.get(*k) != Some(v));
    let fields: Vec<String> =
        first.chain(added).map(|(k, v)| format!("{}:{v}", serde_json::Value::from(k.as_str()))).collect();
    format!("{{{}}}", fields.join(","))
}

/// The keys of `[axes]`, as messages list them.
fn axis_keys() -> String {
    let keys: Vec<&str> = Key::ALL.iter().filter(|k| **k != Key::PhaseDuration).map(|k| k.as_str()).collect();
    format!("{}, repeat (a phase's keys may be written PHASE.KEY, and its length PHASE.duration)", keys.join(", "))
}

/// The axes of a Linux workload, as messages list them.
fn linux_axis_keys() -> String {
    let keys: Vec<&str> = Key::ALL.iter().filter(|k| !k.is_phase_key()).map(|k| k.as_str()).collect();
    format!("{} and repeat", keys.join(", "))
}

fn parse_axes(
    cx: &Ctx,
    table: toml::Table,
    phases: Option<&Phases>,
    workload: &BaseWorkload,
) -> Result<(Vec<Axis>, u32), GridError> {
    let mut repeat = 1u32;
    let mut axes: Vec<Axis> = Vec::new();
    for (label, value) in table {
        let full = format!("axes.{label}");
        if label == "repeat" {
            repeat = match value.as_integer() {
                Some(n) if (1..=1_000_000).contains(&n) => n as u32,
                _ => return Err(cx.key(full, "must be an integer of at least 1 (repetitions of every combination)")),
            };
            continue;
        }
        let (phase_part, key_part) = match label.split_once('.') {
            Some((p, k)) => (Some(p), k),
            None => (None, label.as_str()),
        };
        let key = match (phase_part, key_part) {
            (Some(_), "duration") => Key::PhaseDuration,
            (_, k) => {
                Key::from_name(k).ok_or_else(|| cx.key(&full, format!("is not an axis; axes are {}", axis_keys())))?
            }
        };
        if phase_part.is_some() && !key.is_phase_key() {
            return Err(cx.key(&full, format!("`{key_part}` is not a phase key, so it takes no PHASE. prefix")));
        }
        let phase = if key.is_phase_key() {
            let Some(ph) = phases else {
                let script = match workload {
                    BaseWorkload::Linux { script, .. } => script.display().to_string(),
                    BaseWorkload::Synthetic { .. } => String::new(),
                };
                return Err(cx.key(
                    &full,
                    format!(
                        "the workload {script} is a Linux script, which has no `{key_part}`: its axes can be {}",
                        linux_axis_keys()
                    ),
                ));
            };
            let list = || ph.names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
            Some(match phase_part {
                Some(p) => ph.names.iter().position(|n| n == p).ok_or_else(|| {
                    cx.key(&full, format!("the workload has no phase `{p}`; its phases are {}", list()))
                })?,
                None if ph.names.len() == 1 => 0,
                None => {
                    return Err(cx.key(
                        &full,
                        format!(
                            "the workload has {} phases ({}): say which, as \"PHASE.{key_part}\" = [...]",
                            ph.names.len(),
                            list()
                        ),
                    ))
                }
            })
        } else {
            None
        };
        let items = match value {
            toml::Value::Array(a) => a,
            v => vec![v],
        };
        if items.is_empty() {
            return Err(cx.key(&full, "is empty: give it at least one value, or remove it"));
        }
        let values = items.iter().map(|v| cx.axis_value(&full, key, v)).collect::<Result<Vec<_>, _>>()?;
        let texts: Vec<String> = values.iter().map(AxisValue::text).collect();
        if let Some((i, t)) = texts.iter().enumerate().find(|(i, t)| texts[..*i].contains(t)) {
            return Err(cx.key(&full, format!("value {} (`{t}`) is given twice", i + 1)));
        }
        let column = match (phase_part, phase) {
            (Some(_), Some(i)) => {
                let names = phases.map(|p| p.names.as_slice()).unwrap_or_default();
                format!("axis_{}_{}{}", column_part(&names[i]), key.as_str(), key.column().0)
            }
            _ => format!("axis_{}{}", key.as_str(), key.column().0),
        };
        if axes.iter().any(|a| a.column == column) {
            return Err(cx.key(&full, format!("sets the same column, {column}, as another axis")));
        }
        axes.push(Axis { key, phase, label: label.clone(), column, values });
    }
    // hot_fraction and hot_share act only on hot/cold phases.
    if let Some(ph) = phases {
        for a in &axes {
            if !matches!(a.key, Key::HotFraction | Key::HotShare) {
                continue;
            }
            let i = a.phase.unwrap_or(0);
            let hotcold = ph.patterns[i] == Pattern::Hotcold
                || axes.iter().any(|p| {
                    p.key == Key::Pattern
                        && p.phase == a.phase
                        && p.values.contains(&AxisValue::Pattern(Pattern::Hotcold))
                });
            if !hotcold {
                return Err(cx.key(
                    format!("axes.{}", a.label),
                    format!(
                        "phase `{}` has pattern {}, which has no {}: only hotcold phases do (sweep pattern too, or \
                         set pattern = \"hotcold\" in the workload)",
                        ph.names[i],
                        ph.patterns[i].name(),
                        a.key.as_str()
                    ),
                ));
            }
        }
    }
    axes.sort_by_key(|a| {
        let group = if a.key.is_phase_key() {
            1
        } else if matches!(a.key, Key::Mem | Key::Vcpus) {
            0
        } else {
            2
        };
        (group, a.phase.unwrap_or(0), a.key)
    });
    Ok((axes, repeat))
}

fn parse_replay(cx: &Ctx, mut table: toml::Table) -> Result<ReplaySettings, GridError> {
    let mut bandwidths = Vec::new();
    if let Some(b) = table.remove("bandwidths") {
        let toml::Value::Array(b) = b else {
            return Err(cx.key("replay.bandwidths", "must be a list of rates, such as [\"1Gbit/s\"]"));
        };
        if b.is_empty() {
            return Err(cx.key("replay.bandwidths", "is empty: give at least one bandwidth, or remove [replay]"));
        }
        for v in &b {
            bandwidths.push(cx.speed("replay.bandwidths", v)?);
        }
        let mut sorted = bandwidths.clone();
        sorted.sort_by(f64::total_cmp);
        if sorted.windows(2).any(|w| w[0] == w[1]) {
            return Err(cx.key("replay.bandwidths", "lists a bandwidth twice"));
        }
    }
    let start_s = match table.remove("start") {
        Some(v) => cx.value::<HumanDuration>("replay.start", &v)?.0.as_secs_f64(),
        None => 0.0,
    };
    let precopy: Precopy = cx.take("replay", &mut table)?;
    cx.refuse_rest("replay", &table, &[&["bandwidths"], keys_of::<Precopy>()].concat())?;
    precopy.check().map_err(|e| match e {
        AnalysisError::BadArgument { flag, msg } => {
            cx.key(format!("replay.{}", flag.trim_start_matches("--").replace('-', "_")), msg)
        }
        e => cx.key("replay", e.to_string()),
    })?;
    Ok(ReplaySettings { bandwidths, precopy, start_s })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::synthetic::spec::WorkloadSpec;

    const SPEC: &str = "mem = \"64MiB\"\nseed = 7\n[[phase]]\nname = \"w\"\nduration = \"1s\"\nworking_set = \"8MiB\"\nrate = \"16MiB/s\"\n";

    fn grid(text: &str) -> Result<Grid, GridError> {
        Grid::parse(Path::new("/g/grid.toml"), text, &|p| {
            let data = match p.to_str() {
                Some("w.toml") => SPEC.as_bytes().to_vec(),
                Some("two.toml") => {
                    format!("{SPEC}[[phase]]\nname = \"idle\"\nduration = \"1s\"\nrate = \"0\"\ncpu = 0\n").into_bytes()
                }
                Some("x.sh") => b"#!/bin/sh\necho hi\n".to_vec(),
                _ => {
                    return Err(crate::files::FileError::Io {
                        path: p.to_path_buf(),
                        source: std::io::Error::from(std::io::ErrorKind::NotFound),
                    })
                }
            };
            Ok((Path::new("/g").join(p), data))
        })
    }

    fn err(text: &str) -> String {
        grid(text).and_then(|g| g.expand(DEFAULT_MAX_RUNS)).unwrap_err().to_string()
    }

    #[test]
    fn expands_the_product_with_stable_names_and_seeds() {
        let g = grid(
            "workload = \"w.toml\"\n[axes]\nworking_set = [\"8MiB\", \"16MiB\"]\nrate = [\"16MiB/s\", \"1Gbit/s\", \"max\"]\n\
             interval = [\"50ms\"]\nrepeat = 2\n",
        )
        .unwrap();
        // Canonical order, whatever the order written: rate before working_set, interval last.
        let labels: Vec<&str> = g.axes.iter().map(|a| a.label.as_str()).collect();
        assert_eq!(labels, ["rate", "working_set", "interval"]);
        let runs = g.expand(100).unwrap();
        assert_eq!(runs.len(), 3 * 2 * 2);
        let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "rate=16MiBps_ws=8MiB_interval=50ms_r0",
                "rate=16MiBps_ws=8MiB_interval=50ms_r1",
                "rate=16MiBps_ws=16MiB_interval=50ms_r0",
                "rate=16MiBps_ws=16MiB_interval=50ms_r1",
                "rate=1Gbitps_ws=8MiB_interval=50ms_r0",
                "rate=1Gbitps_ws=8MiB_interval=50ms_r1",
                "rate=1Gbitps_ws=16MiB_interval=50ms_r0",
                "rate=1Gbitps_ws=16MiB_interval=50ms_r1",
                "rate=max_ws=8MiB_interval=50ms_r0",
                "rate=max_ws=8MiB_interval=50ms_r1",
                "rate=max_ws=16MiB_interval=50ms_r0",
                "rate=max_ws=16MiB_interval=50ms_r1",
            ]
        );
        // r0 keeps the spec's seed; r1's is derived from it, the same in every combination.
        let seeds = repetition_seeds(7, 2);
        assert_eq!(seeds[0], 7);
        assert_eq!(seeds[1], 0x5269_5778_8704_3966, "{:#x}", seeds[1]);
        for r in &runs {
            assert_eq!(r.seed, Some(seeds[r.repeat as usize]));
            assert_eq!(r.record.interval, HumanDuration(Duration::from_millis(50)));
            let RunWorkload::Synthetic { spec } = &r.workload else { panic!() };
            let s = WorkloadSpec::parse(spec, None, None).unwrap();
            assert_eq!(s.seed, seeds[r.repeat as usize]);
            assert_eq!(s.mem_bytes, 64 << 20);
            let AxisValue::WorkingSet(ws) = r.values[1] else { panic!() };
            assert_eq!(s.phases[0].working_set_bytes, ws);
        }
        // The same grid, written in another order, gives the same runs.
        let again = grid(
            "workload = \"w.toml\"\n[axes]\nrepeat = 2\ninterval = \"50ms\"\nrate = [\"16MiB/s\", \"125MB/s\", \"max\"]\n\
             working_set = [\"8MiB\", \"16MiB\"]\n",
        )
        .unwrap();
        let again_runs = again.expand(100).unwrap();
        assert_eq!(again_runs, runs);
        assert_eq!(again.fingerprint(&again_runs), g.fingerprint(&runs));
        // Hosts that mount the grid elsewhere make the same dataset.
        let text = "workload = \"w.toml\"\n[axes]\nrate = [\"1MiB/s\"]\n";
        let elsewhere =
            Grid::parse(Path::new("/mnt/x/grid.toml"), text, &|p| Ok((Path::new("/mnt/x").join(p), SPEC.into())));
        let here = grid(text).unwrap();
        let (a, b) = (elsewhere.unwrap(), here);
        assert_eq!(a.fingerprint(&a.expand(1).unwrap()), b.fingerprint(&b.expand(1).unwrap()));
        assert_ne!(a.fingerprint(&a.expand(1).unwrap()), g.fingerprint(&runs));
    }

    #[test]
    fn shards_partition_the_runs() {
        let g =
            grid("workload = \"w.toml\"\n[axes]\nrate = [\"1MiB/s\", \"2MiB/s\", \"3MiB/s\"]\nrepeat = 3\n").unwrap();
        let runs = g.expand(100).unwrap();
        assert_eq!(runs.len(), 9);
        for n in 1..=11u32 {
            let mut seen = vec![0u32; runs.len()];
            let mut sizes = Vec::new();
            for i in 1..=n {
                let shard: Shard = format!("{i}/{n}").parse().unwrap();
                let mine: Vec<usize> = runs.iter().filter(|r| shard.contains(r.run)).map(|r| r.run).collect();
                sizes.push(mine.len());
                for r in mine {
                    seen[r] += 1;
                }
            }
            assert!(seen.iter().all(|&c| c == 1), "N = {n}: {seen:?}");
            let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(max - min <= 1, "N = {n}: {sizes:?}");
        }
        let two: Shard = "2/3".parse().unwrap();
        assert_eq!(runs.iter().filter(|r| two.contains(r.run)).map(|r| r.run).collect::<Vec<_>>(), [1, 4, 7]);
    }

    #[test]
    fn bad_shards_name_the_flag() {
        for s in ["0/2", "3/2", "1/0", "1", "a/b", "-1/2", ""] {
            let e = s.parse::<Shard>().unwrap_err().to_string();
            assert!(e.starts_with("--shard"), "{s}: {e}");
        }
        assert_eq!("2/2".parse::<Shard>().unwrap(), Shard { index: 2, count: 2 });
    }

    #[test]
    fn phase_keys_and_linux_workloads() {
        let g = grid("workload = \"two.toml\"\n[axes]\n\"w.pattern\" = [\"random\", \"hotcold\"]\n\"w.hot_fraction\" = [0.1, 0.2]\n\"idle.duration\" = [\"1s\", \"2s\"]\n").unwrap();
        let cols: Vec<&str> = g.axes.iter().map(|a| a.column.as_str()).collect();
        assert_eq!(cols, ["axis_w_pattern", "axis_w_hot_fraction", "axis_idle_duration_s"]);
        let runs = g.expand(100).unwrap();
        assert_eq!(runs[0].name, "w.pattern=random_w.hot=0.1_idle.duration=1s_r0");
        let RunWorkload::Synthetic { spec } = &runs[7].workload else { panic!() };
        let s = WorkloadSpec::parse(spec, None, None).unwrap();
        assert_eq!((s.phases[0].pattern, s.phases[0].hot_fraction), (Pattern::Hotcold, 0.2));
        assert_eq!(s.phases[1].duration, Duration::from_secs(2));

        let l = grid("workload = \"x.sh\"\n[record]\nmem = \"1GiB\"\n[axes]\nvcpus = [1, 2]\n").unwrap();
        let runs = l.expand(10).unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[1].record.vcpus, Some(2));
        assert_eq!(runs[1].record.mem, Some(HumanSize(1 << 30)));
        assert_eq!(runs[1].seed, None);
        assert_eq!(runs[1].name, "vcpus=2_r0");
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("workload = \"w.toml\"\nbogus = 1\n", "bogus"),
            ("workload = \"w.toml\"\n[axes]\nspeed = [1]\n", "`axes.speed`"),
            ("workload = \"w.toml\"\n[axes]\nrate = []\n", "`axes.rate`: is empty"),
            ("workload = \"w.toml\"\n[axes]\nrepeat = 0\n", "`axes.repeat`"),
            ("workload = \"two.toml\"\n[axes]\nrate = [\"1MiB/s\"]\n", "`axes.rate`: the workload has 2 phases"),
            ("workload = \"two.toml\"\n[axes]\n\"nope.rate\" = [\"1MiB/s\"]\n", "no phase `nope`"),
            (
                "workload = \"x.sh\"\n[axes]\nrate = [\"1MiB/s\"]\n",
                "`axes.rate`: the workload /g/x.sh is a Linux script",
            ),
            (
                "workload = \"w.toml\"\n[axes]\nhot_fraction = [0.1]\n",
                "`axes.hot_fraction`: phase `w` has pattern sequential",
            ),
            ("workload = \"w.toml\"\n[axes]\nrate = [\"1MiB/s\", \"1048576B/s\"]\n", "`axes.rate`: value 2"),
            ("workload = \"w.toml\"\n[axes]\ninterval = [\"0.5ms\"]\n", "`axes.interval`"),
            ("workload = \"w.toml\"\n[record]\ninterval = \"2h\"\n", "`record.interval`"),
            ("workload = \"w.toml\"\n[record]\nkernel = \"k\"\n", "`record.kernel`"),
            ("workload = \"w.toml\"\n[axes]\nworking_set = [\"1GiB\"]\n", "phase[0].working_set"),
            ("workload = \"missing.toml\"\n", "`workload`"),
            ("workload = \"w.toml\"\n[replay]\nbandwidths = []\n", "`replay.bandwidths`"),
            ("workload = \"w.toml\"\n[replay]\nmax_rounds = 0\n", "`replay.max_rounds`"),
            (
                "workload = \"x.sh\"\n[record]\npackages = [\"stress-ng\", \"-oAPT::X=1\"]\n",
                "`record.packages`: `-oAPT::X=1` is not a Debian package name",
            ),
        ];
        for (text, want) in cases {
            let e = err(text);
            assert!(e.contains(want), "{text}\n=> {e}\n(wanted {want})");
            assert!(e.starts_with("/g/grid.toml"), "{e}");
        }
        let g = grid("workload = \"w.toml\"\n[axes]\nrate = [\"1MiB/s\", \"2MiB/s\"]\nrepeat = 600\n").unwrap();
        let e = g.expand(DEFAULT_MAX_RUNS).unwrap_err().to_string();
        assert!(e.contains("1200 runs") && e.contains("--max-runs 1200"), "{e}");
        assert_eq!(g.expand(1200).unwrap().len(), 1200);
    }

    /// A key whose value has the wrong type is refused with a message that names the key, the
    /// type it takes and what it got.
    #[test]
    fn wrong_types_name_the_key_and_the_type() {
        let cases = [
            (
                "[axes]\npattern = 3\n",
                "`axes.pattern`: invalid type: integer `3`, expected a pattern: one of sequential, random, hotcold",
            ),
            ("[axes]\npattern = [\"zigzag\"]\n", "`axes.pattern`: `zigzag` is not one of sequential, random, hotcold"),
            (
                "[axes]\ninterval = true\n",
                "`axes.interval`: invalid type: boolean `true`, expected a duration such as \"250ms\"",
            ),
            (
                "[axes]\nduration = [{ a = 1 }]\n",
                "`axes.duration`: invalid type: map, expected a duration such as \"250ms\"",
            ),
            (
                "[axes]\n\"w.duration\" = [[1]]\n",
                "`axes.w.duration`: invalid type: sequence, expected a duration such as \"250ms\"",
            ),
            (
                "[axes]\ncpu = \"half\"\n",
                "`axes.cpu`: invalid type: string \"half\", expected a number between 0 and 1",
            ),
            ("[axes]\ncpu = 2\n", "`axes.cpu`: must be between 0 and 1, got 2"),
            ("[axes]\nmem = true\n", "`axes.mem`: invalid type: boolean `true`, expected a size such as \"64MiB\""),
            ("[axes]\nworking_set = 1.5e300\n", "`axes.working_set`: "),
            (
                "[axes]\nvcpus = \"2\"\n",
                "`axes.vcpus`: invalid type: string \"2\", expected a whole number of vCPUs, 1 to 64",
            ),
            ("[axes]\nvcpus = 65\n", "`axes.vcpus`: must be between 1 and 64, got 65"),
            (
                "[axes]\nrate = true\n",
                "`axes.rate`: invalid type: boolean `true`, expected a rate such as \"1Gbit/s\", or \"max\"",
            ),
            (
                "[axes]\nmigration_speed = false\n",
                "`axes.migration_speed`: invalid type: boolean `false`, expected a rate such as \"1Gbit/s\"",
            ),
            ("[record]\nvcpus = 0\n", "`record.vcpus`: must be between 1 and 64, got 0"),
            (
                "[replay]\nbandwidths = [true]\n",
                "`replay.bandwidths`: invalid type: boolean `true`, expected a rate such as \"1Gbit/s\"",
            ),
            (
                "[replay]\nstart = true\n",
                "`replay.start`: invalid type: boolean `true`, expected a duration such as \"250ms\"",
            ),
        ];
        for (body, want) in cases {
            let e = err(&format!("workload = \"w.toml\"\n{body}"));
            assert!(e.starts_with(&format!("/g/grid.toml: {want}")), "{body}\n=> {e}\n(wanted {want})");
        }
    }

    /// A dataset keeps its fingerprint and its `dataset.json` across versions, so that a sweep
    /// resumes a dataset an earlier dirtytrace began: these values were computed by the first.
    #[test]
    fn fingerprints_and_replay_settings_stay_as_first_written() {
        let linux = grid(
            "workload = \"x.sh\"\n[record]\ninterval = \"20ms\"\nduration = \"2s\"\nmigration_speed = \"1Gbit/s\"\n\
             mem = \"1GiB\"\nvcpus = 2\nexact_cut = true\nkernel = \"k/bzImage\"\nfiles = [\"b:/usr/bin/b\"]\n\
             cmdline = \"quiet\"\nbzimage = true\nrootfs = \"r.tar\"\npackages = [\"stress-ng\"]\n\
             allow_emulated_kernel = true\n[axes]\nvcpus = [1, 2]\n[replay]\nbandwidths = [\"1Gbit/s\", \"64MiB/s\"]\n\
             max_downtime = \"50ms\"\nmax_rounds = 5\nloop = true\nzero_pages = \"skip\"\n",
        )
        .unwrap();
        assert_eq!(linux.fingerprint(&linux.expand(10).unwrap()), "157c8a1867c8a524a57b905f56b0b91c");
        // Paths are relative to the grid's directory.
        assert_eq!(linux.linux.boot.kernel.as_deref(), Some(Path::new("/g/k/bzImage")));
        assert_eq!(linux.linux.initramfs.files, ["/g/b:/usr/bin/b"]);
        assert_eq!(linux.linux.initramfs.rootfs.as_deref(), Some(Path::new("/g/r.tar")));
        let json = r#"{"bandwidths":[125000000.0,67108864.0],"max_downtime_s":0.05,"max_rounds":5,"looped":true,"zero_pages":"skip"}"#;
        assert_eq!(serde_json::to_string(&linux.replay).unwrap(), json);
        // `index` reads them back from dataset.json.
        assert_eq!(serde_json::from_str::<ReplaySettings>(json).unwrap(), linux.replay);
        let synthetic =
            grid("workload = \"w.toml\"\n[axes]\nrate = [\"1MiB/s\", \"2MiB/s\"]\ninterval = [\"10ms\"]\n").unwrap();
        assert_eq!(synthetic.fingerprint(&synthetic.expand(10).unwrap()), "2ab25bc01e922f52ecffd7f1c06f9851");
        assert_eq!(
            serde_json::to_string(&synthetic.replay).unwrap(),
            r#"{"bandwidths":[],"max_downtime_s":0.03,"max_rounds":30,"looped":false,"zero_pages":"send"}"#
        );
    }

    /// sha256 of the seeds, little-endian, first 16 hex digits.
    fn seeds_digest(seeds: &[u64]) -> String {
        let mut h = sha2::Sha256::new();
        for s in seeds {
            h.update(s.to_le_bytes());
        }
        hex(&h.finalize())[..16].to_string()
    }

    /// A resumed dataset keeps its seeds: these were computed by the quadratic code that
    /// first wrote datasets, before it was made linear.
    #[test]
    fn repetition_seeds_stay_as_first_computed() {
        let pins: [(u64, u32, u64, &str); 5] = [
            (0, 1, 0x0, "af5570f5a1810b7a"),
            (7, 3, 0x5ea6_1814_7816_9d72, "2c3defd23958bd2d"),
            (42, 1000, 0x51b7_22fa_4b57_229d, "3446514b41dde25b"),
            (u64::MAX >> 1, 50, 0x5dd1_7ec2_8b36_3e6d, "559625a0c18bb4cd"),
            (123_456_789, 100_000, 0x3dff_3271_2183_436c, "97e04ec89a672ed6"),
        ];
        for (base, repeat, last, digest) in pins {
            let s = repetition_seeds(base, repeat);
            assert_eq!(s.len(), repeat as usize);
            assert_eq!(s[0], base);
            assert_eq!((s[s.len() - 1], seeds_digest(&s).as_str()), (last, digest), "base {base}, repeat {repeat}");
        }
        // A grid's runs carry them, in every combination (the digest is of the seeds the
        // first code's `sweep --dry-run --json` listed for this spec with repeat = 1000).
        let g = grid("workload = \"w.toml\"\n[axes]\nrate = [\"1MiB/s\", \"2MiB/s\"]\nrepeat = 1000\n").unwrap();
        let runs = g.expand(2000).unwrap();
        let seeds = repetition_seeds(7, 1000);
        assert_eq!(seeds_digest(&seeds), "7d1991b46984fd75");
        for r in &runs {
            assert_eq!(r.seed, Some(seeds[r.repeat as usize]), "{}", r.name);
        }
    }

    /// The quadratic rule as first written, for the collision case no real seed reaches.
    fn distinct_as_first_written(candidates: &[u64]) -> Vec<u64> {
        let mut seeds: Vec<u64> = Vec::new();
        for &c in candidates {
            let mut s = c;
            while seeds.contains(&s) {
                s = (s + 1) & (u64::MAX >> 1);
            }
            seeds.push(s);
        }
        seeds
    }

    #[test]
    fn colliding_seeds_are_incremented_as_first_written() {
        let top = u64::MAX >> 1;
        let cases: [&[u64]; 4] = [&[5, 5, 6, 5, 7, 9, 8], &[top, top, 0, top, 1], &[3, 2, 2, 2, 3, 1], &[0; 20]];
        for c in cases {
            assert_eq!(make_distinct(c.iter().copied()), distinct_as_first_written(c), "{c:?}");
        }
    }

    #[test]
    fn long_names_are_cut_and_hashed() {
        let parts = vec![("k".to_string(), "x".repeat(300))];
        let n = run_name(&parts, 0);
        assert_eq!(n.len(), 180 + 1 + 16);
        assert!(n.starts_with("k=xxx"));
        assert_ne!(n, run_name(&[("k".to_string(), "x".repeat(301))], 0));
        assert_eq!(sanitize("a b/s:ç"), "a-bps--");
    }
}
