//! `GRID.toml`: a base workload, record options and axes, expanded into named, seeded runs
//! and split into shards. Everything here is pure (no file is written); [`Grid::load`] only
//! reads the grid and its base workload. `schemas/dataset.md` documents the file and the
//! naming and seeding schemes.
//!
//! Expansion: the runs are the product of the axes, taken in the canonical key order
//! ([`Key`]: spec keys, then per-phase keys phase by phase, then record options), the first
//! axis varying slowest and the repetition fastest. Run `k` (0-based, in that order) belongs
//! to shard `k mod N + 1` of `N`, so shards partition the runs exactly and evenly.
//!
//! Here: the grid file, its `[record]` and its base workload. Beside: the axes' keys and typed
//! values ([`keys`]), how values are read ([`read`]), names and seeds ([`naming`]), the
//! expansion into runs ([`expand`]), the fingerprint ([`fingerprint`]), `[replay]`
//! ([`replay`]) and shards ([`shard`]).

mod expand;
mod fingerprint;
mod keys;
mod naming;
mod read;
mod replay;
mod shard;

pub use expand::NameCheck;
pub use fingerprint::Fingerprinter;
pub use keys::{Axis, AxisValue, Key, ValueKind};
pub use naming::{repetition_seeds, run_name, sanitize, MAX_NAME_LEN};
pub use replay::ReplaySettings;
pub use shard::{Shard, ShardError};

use keys::parse_axes;
use read::Ctx;
use replay::parse_replay;

use crate::guest::linux::{initramfs, packages, BootInputs, LinuxInputs};
use crate::guest::synthetic::spec::{self, toml_error, Pattern, SpecDocument, DEFAULT_SPEC, MAX_SPEC_BYTES};
use crate::options::keys_of;
use crate::record::RecordSettings;
use crate::units::hex;
use serde::Deserialize;
use sha2::Digest;
use std::path::{Path, PathBuf};

/// How many runs a grid may expand to unless `--max-runs` allows more.
pub const DEFAULT_MAX_RUNS: usize = 1000;
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrid {
    workload: Option<String>,
    spec: Option<toml::Table>,
    record: Option<toml::Table>,
    axes: Option<toml::Table>,
    replay: Option<toml::Table>,
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
        record
            .check_workload(matches!(workload, BaseWorkload::Linux { .. }))
            .map_err(|e| cx.key(format!("record.{}", e.key()), e.to_string()))?;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::synthetic::spec::WorkloadSpec;
    use crate::units::{HumanDuration, HumanSize};
    use sha2::Digest;
    use std::time::Duration;

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
    /// What `record` refuses before booting for the guest clock, a grid refuses when it is read:
    /// the clock with a synthetic spec, and an interval, in `[record]` or on an axis, that the
    /// guest clock cannot keep (a sweep recorded the first and failed every run of the others).
    #[test]
    fn the_guest_clock_is_checked_with_the_workload_and_every_interval() {
        let err = |text: &str| match grid(text) {
            Err(e) => e.to_string(),
            Ok(g) => g.expand(10).expect_err("refused").to_string(),
        };
        let e = err("workload = \"w.toml\"\n[record]\nclock = \"guest\"\n");
        assert!(e.contains("`record.clock`") && e.contains("Linux guests (.sh workloads) only"), "{e}");
        let e = err("workload = \"x.sh\"\n[record]\nclock = \"guest\"\ninterval = \"300ms\"\n");
        assert!(e.contains("`record.interval`") && e.contains("300ms under --clock guest"), "{e}");
        let e = err("workload = \"x.sh\"\n[record]\nclock = \"guest\"\n[axes]\ninterval = [\"100ms\", \"1500ms\"]\n");
        assert!(e.contains("run `interval=1.5s_r0`") && e.contains("1.5s under --clock guest"), "{e}");
        let ok = grid("workload = \"x.sh\"\n[record]\nclock = \"guest\"\n[axes]\ninterval = [\"250ms\", \"2s\"]\n");
        assert_eq!(ok.unwrap().expand(10).unwrap().len(), 2);
    }

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
}
