//! Datasets: `sweep`, `index`, and the analysis tools over a dataset. The index, merge,
//! resume-logic and bad-input tests make their traces with the KVM-free generator (the sweep's
//! `Engine::Generate`); the sweep, kill, Ctrl-C and concurrent-sweep tests record real guests
//! under KVM.

mod common;

use arrow::array::{Array, BooleanArray, Float64Array, StringArray, UInt32Array, UInt64Array};
use arrow::datatypes::DataType;
use common::*;
use dirtytrace::dataset::grid::{Grid, ValueKind};
use dirtytrace::dataset::index::{self, index_column_names, replay_column_names};
use dirtytrace::dataset::sweep::{self, Action, Engine, SweepOptions, SweepReport};
use dirtytrace::dataset::{DatasetInfo, INDEX, REPLAY};
use dirtytrace::guest::synthetic::verify::verify;
use dirtytrace::trace::{Manifest, MemorySlot, Trace, TraceStatus, TraceWriter};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

type Row = Map<String, Value>;

/// A Parquet table as JSON objects, one per row (null for null).
fn table(path: &Path) -> Vec<Row> {
    let (batch, _) = index::read_table(path).unwrap();
    let mut rows = vec![Row::new(); batch.num_rows()];
    for (f, col) in batch.schema().fields().iter().zip(batch.columns()) {
        for (i, row) in rows.iter_mut().enumerate() {
            let v: Value = if col.is_null(i) {
                Value::Null
            } else {
                let any = col.as_any();
                match f.data_type() {
                    DataType::UInt64 => any.downcast_ref::<UInt64Array>().unwrap().value(i).into(),
                    DataType::UInt32 => any.downcast_ref::<UInt32Array>().unwrap().value(i).into(),
                    DataType::Float64 => any.downcast_ref::<Float64Array>().unwrap().value(i).into(),
                    DataType::Utf8 => any.downcast_ref::<StringArray>().unwrap().value(i).into(),
                    DataType::Boolean => any.downcast_ref::<BooleanArray>().unwrap().value(i).into(),
                    t => panic!("unexpected column type {t}"),
                }
            };
            row.insert(f.name().clone(), v);
        }
    }
    rows
}

/// An index value as the CLI's JSON would show it after parsing. serde_json prints an f64 in
/// its shortest exact form but, without its `float_roundtrip` feature, may parse one back a
/// unit in the last place off: so the index's value goes through the same print and parse.
fn as_printed(v: &Value) -> Value {
    serde_json::from_str(&serde_json::to_string(v).unwrap()).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Two phases, so the axes are `PHASE.KEY`; 1.5 s at 100 ms per trace.
const GRID: &str = r#"
[spec]
mem = "64MiB"
seed = 11
[[spec.phase]]
name = "load"
duration = "1s"
working_set = "16MiB"
rate = "32MiB/s"
[[spec.phase]]
name = "idle"
duration = "0.5s"
rate = "0"
cpu = 0.0

[record]
interval = "100ms"

[axes]
"load.rate" = ["16MiB/s", "48MiB/s"]
"load.pattern" = ["sequential", "random"]
repeat = 2

[replay]
bandwidths = ["32MiB/s", "1Gbit/s"]
start = "0.5s"
"#;

/// Sweeps `grid` into `out` with the generator.
fn generated(grid: &Path, out: &Path, shard: &str) -> SweepReport {
    let mut o = SweepOptions::new(grid.to_path_buf(), out.to_path_buf());
    o.engine = Engine::Generate;
    o.shard = shard.parse().unwrap();
    let plan = sweep::plan(o).unwrap();
    sweep::run(&plan, Arc::new(AtomicBool::new(false)), &sweep::Quiet).unwrap()
}

fn names(rows: &[Row]) -> Vec<String> {
    rows.iter().map(|r| r["name"].as_str().unwrap().to_string()).collect()
}

#[test]
fn index_values_equal_what_the_tools_print() {
    let dir = Scratch::new("ds-values");
    let grid = write(&dir, "grid.toml", GRID);
    let out = dir.join("ds");
    let report = generated(&grid, &out, "1/1");
    assert_eq!(report.outcomes.len(), 8);
    assert!(report.outcomes.iter().all(|o| o.action == Action::Recorded), "{report:?}");

    let rows = table(&out.join(INDEX));
    let replays = table(&out.join(REPLAY));
    assert_eq!(rows.len(), 8);
    assert_eq!(replays.len(), 16);
    let mut sorted = names(&rows);
    sorted.sort();
    assert_eq!(names(&rows), sorted, "rows are in name order");
    let info = DatasetInfo::load(&out).unwrap().unwrap();
    let cols: Vec<&str> = info.axes.iter().map(|a| a.column.as_str()).collect();
    assert_eq!(cols, ["axis_load_rate_bytes_per_s", "axis_load_pattern"]);

    for row in &rows {
        let name = row["name"].as_str().unwrap();
        let t = out.join("traces").join(name);
        // Axis values, typed, as the name says.
        let run = info.runs.iter().find(|r| r.name == name).unwrap();
        assert_eq!(row["run"], run.run);
        assert_eq!(row["axis_repeat"], run.repeat);
        assert_eq!(row["seed"], serde_json::json!(run.seed));
        let rate = row["axis_load_rate_bytes_per_s"].as_f64().unwrap();
        let pattern = row["axis_load_pattern"].as_str().unwrap();
        let want = format!("load.rate={}MiBps_load.pattern={pattern}_r{}", rate as u64 >> 20, run.repeat);
        assert_eq!(name, want);
        assert_eq!(row["status"], "complete");

        let sum = cli_json(&["summarize", s(&t), "--json"]);
        assert_eq!(row["trace_id"], sum["trace_id"]);
        for (col, key) in [
            ("duration_s", "/duration_s"),
            ("dirty_rate_mean_bytes_per_s", "/dirty_rate_bytes_per_s/mean"),
            ("dirty_rate_p50_bytes_per_s", "/dirty_rate_bytes_per_s/p50"),
            ("dirty_rate_p95_bytes_per_s", "/dirty_rate_bytes_per_s/p95"),
            ("dirty_rate_max_bytes_per_s", "/dirty_rate_bytes_per_s/max"),
            ("dirtied_bytes_total", "/dirtied_bytes_total"),
            ("distinct_pages", "/distinct_pages"),
            ("distinct_bytes", "/distinct_bytes"),
            ("cpu_util_mean_cores", "/cpu_util_cores/mean"),
            ("cpu_util_p95_cores", "/cpu_util_cores/p95"),
            ("ramsize_bytes", "/ramsize_bytes"),
            ("vcpus", "/vcpus"),
            ("intervals", "/intervals"),
        ] {
            assert_eq!(as_printed(&row[col]), sum.pointer(key).cloned().unwrap(), "{name}: {col}");
        }
        let sg = cli_json(&["simgrid", s(&t), "--json"]);
        for col in [
            "ramsize_bytes",
            "dp_intensity",
            "working_set_memory_bytes",
            "migration_speed_bytes_per_s",
            "working_set_window_s",
            "working_set_window_covered",
        ] {
            assert_eq!(as_printed(&row[col]), sg[col], "{name}: {col}");
        }
        assert!(row["dp_intensity"].as_f64().unwrap() > 0.0);

        let mine: Vec<&Row> = replays.iter().filter(|r| r["name"] == name).collect();
        let bws: Vec<f64> = mine.iter().map(|r| r["bandwidth_bytes_per_s"].as_f64().unwrap()).collect();
        assert_eq!(bws, [32.0 * 1048576.0, 125e6]);
        for r in mine {
            let bw = format!("{}B/s", r["bandwidth_bytes_per_s"].as_f64().unwrap());
            simgrid_columns_are_what_simgrid_start_prints(r, &t, &bw);
            let Run { code, stdout, stderr } = cli(&["replay", s(&t), "--bandwidth", &bw, "--start", "0.5s", "--json"]);
            match r["error"].as_str() {
                None => {
                    assert_eq!(code, Some(0), "{stderr}");
                    let rp: Value = serde_json::from_str(&stdout).unwrap();
                    for col in ["total_time_s", "downtime_s", "rounds", "transferred_bytes", "converged", "stop_reason"]
                    {
                        assert_eq!(as_printed(&r[col]), rp[col], "{name} at {bw}: {col}");
                    }
                }
                Some(e) => {
                    // 64 MiB at 32 MiB/s: round 0 lasts 2 s, the trace 1.5 s.
                    assert_eq!(bw, "33554432B/s");
                    assert_ne!(code, Some(0));
                    assert!(stderr.contains(e), "{stderr} vs {e}");
                    assert!(e.contains("--loop"), "{e}");
                    assert_eq!(r["total_time_s"], Value::Null);
                }
            }
        }
    }

    // The tools over the whole dataset: one row per trace, each the single-trace object.
    let all = cli_json(&["simgrid", s(&out), "--json"]);
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 8);
    for (row, obj) in rows.iter().zip(all) {
        let t = out.join("traces").join(row["name"].as_str().unwrap());
        assert_eq!(obj["dp_intensity"], as_printed(&row["dp_intensity"]));
        let mut one = cli_json(&["simgrid", s(&t), "--json"]);
        one["trace_dir"] = Value::from(s(&t));
        one["name"] = row["name"].clone();
        assert_eq!(*obj, one);
    }
    let Run { code, stdout, .. } = cli(&["replay", s(&out), "--bandwidth", "32MiB/s", "--json"]);
    assert_eq!(code, Some(1), "a trace too short for the migration fails, the others are still printed");
    let rows_out: Vec<Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(rows_out.len(), 8);
    assert!(rows_out.iter().all(|r| r["error"].as_str().is_some_and(|e| e.contains("--loop"))));
    let two: Vec<PathBuf> = (0..2).map(|i| out.join("traces").join(rows[i]["name"].as_str().unwrap())).collect();
    let both = cli_json(&["summarize", s(&two[0]), s(&two[1]), "--json"]);
    assert_eq!(both.as_array().unwrap().len(), 2);
    assert_eq!(both[1]["trace_id"], rows[1]["trace_id"]);
}

/// A `replay.parquet` row's SimGrid columns against `simgrid --start` (the grid's 0.5 s) at the
/// row's bandwidth: the parameters, and the model's figures where it converged.
fn simgrid_columns_are_what_simgrid_start_prints(r: &Row, t: &Path, bw: &str) {
    let Run { code, stdout, stderr } = cli(&["simgrid", s(t), "--start", "0.5s", "--migration-speed", bw, "--json"]);
    if code != Some(0) {
        assert!(stderr.contains(r["simgrid_fit_error"].as_str().unwrap()), "{stderr} vs {r:?}");
        assert_eq!(r["simgrid_round0_bytes"], Value::Null);
        return;
    }
    let p: Value = serde_json::from_str(&stdout).unwrap();
    for (col, key) in [
        ("simgrid_round0_bytes", "/round0_bytes"),
        ("simgrid_dp_intensity", "/dp_intensity"),
        ("simgrid_working_set_memory_bytes", "/working_set_memory_bytes"),
        ("simgrid_cpu_util", "/cpu_util"),
        ("simgrid_fit_valid", "/fit/valid"),
        ("simgrid_converged", "/model/converged"),
    ] {
        assert_eq!(as_printed(&r[col]), p.pointer(key).cloned().unwrap(), "{bw}: {col}");
    }
    let converged = p["model"]["converged"] == true;
    for (col, key) in [
        ("simgrid_total_time_s", "total_time_s"),
        ("simgrid_downtime_s", "downtime_s"),
        ("simgrid_rounds", "rounds"),
        ("simgrid_transferred_bytes", "transferred_bytes"),
    ] {
        let want = if converged { p["model"][key].clone() } else { Value::Null };
        assert_eq!(as_printed(&r[col]), want, "{bw}: {col}");
    }
    match r["simgrid_fit_error"].as_str() {
        None => assert_eq!(p["fit"]["valid"], true),
        Some(e) => assert_eq!(
            e,
            p["fit"]["errors"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect::<Vec<_>>().join("; ")
        ),
    }
}

/// Every column but the recording's wall-clock start, which differs between two generations,
/// and errors reduced to whether there is one (they name the trace's directory).
fn comparable(rows: Vec<Row>) -> Vec<Row> {
    rows.into_iter()
        .map(|mut r| {
            r.remove("start_unix_s");
            for col in ["error", "simgrid_fit_error"] {
                if let Some(e) = r.get_mut(col) {
                    *e = (!e.is_null()).into();
                }
            }
            r
        })
        .collect()
}

#[test]
fn shards_merged_by_index_equal_a_one_shard_run() {
    let dir = Scratch::new("ds-shards");
    let grid = write(&dir, "grid.toml", GRID);
    let whole = dir.join("whole");
    let (a, b, shared) = (dir.join("a"), dir.join("b"), dir.join("shared"));
    let r_whole = generated(&grid, &whole, "1/1");
    let r_a = generated(&grid, &a, "1/2");
    let r_b = generated(&grid, &b, "2/2");
    let mut union: Vec<String> = r_a.outcomes.iter().chain(&r_b.outcomes).map(|o| o.name.clone()).collect();
    union.sort();
    let mut all: Vec<String> = r_whole.outcomes.iter().map(|o| o.name.clone()).collect();
    all.sort();
    assert_eq!((r_a.outcomes.len(), r_b.outcomes.len()), (4, 4));
    assert_eq!(union, all, "the shards partition the runs");

    // Own directories: copy one shard's traces into the other's dataset, then `index`.
    copy_dir(&b.join("traces"), &a.join("traces"));
    let Run { code, stderr: err, .. } = cli(&["index", s(&a)]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("8 traces (4 analysed, 4 unchanged)"), "{err}");
    // One shared directory, the shards one after the other.
    generated(&grid, &shared, "2/2");
    generated(&grid, &shared, "1/2");

    let want = table(&whole.join(INDEX));
    assert_eq!(want.len(), 8);
    for merged in [&a, &shared] {
        let got = table(&merged.join(INDEX));
        assert_eq!(names(&got), names(&want));
        for (g, w) in got.iter().zip(&want) {
            for col in ["run", "seed", "axis_repeat", "axis_load_rate_bytes_per_s", "axis_load_pattern", "trace_id"] {
                assert_eq!(g[col], w[col], "{col}");
            }
        }
        assert_eq!(comparable(got), comparable(want.clone()));
        let replays = comparable(table(&merged.join(REPLAY)));
        assert_eq!(replays.len(), 16);
        assert_eq!(replays.iter().filter(|r| r["error"] == true).count(), 8, "32 MiB/s outlasts every trace");
        assert_eq!(replays, comparable(table(&whole.join(REPLAY))));
    }
    // `--rebuild` analyses everything again, to the same values.
    let before = comparable(table(&a.join(INDEX)));
    let Run { code, stderr: err, .. } = cli(&["index", s(&a), "--rebuild"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("8 traces (8 analysed, 0 unchanged)"), "{err}");
    assert_eq!(comparable(table(&a.join(INDEX))), before);

    // A rewriter killed before its rename left a temporary table: the next rewrite removes it.
    let stale = write(&a, ".index.parquet.4242-1.tmp", "half a table");
    // A copied trace is indexed, but the copy is pointed out.
    let some = names(&before)[0].clone();
    copy_dir(&a.join("traces").join(&some), &a.join("traces/copy"));
    let Run { code, stderr: err, .. } = cli(&["index", s(&a)]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("not a run of the dataset's grid"), "{err}");
    assert!(!stale.exists());
    assert!(err.contains(&format!("traces copy and {some} have the same trace_id")), "{err}");
    let rows = table(&a.join(INDEX));
    assert_eq!(rows.len(), 9);
    let copy = rows.iter().find(|r| r["name"] == "copy").unwrap();
    assert_eq!((&copy["run"], &copy["axis_load_pattern"]), (&Value::Null, &Value::Null));
}

/// A trace whose recorder died before its first interval: a manifest and an empty journal.
fn start_trace(dir: &Path) -> TraceWriter {
    let slot = MemorySlot { slot: 0, guest_phys_addr: 0, size_bytes: 64 << 20 };
    let m = Manifest::new("0123456789abcdef0123456789abcdef".into(), Duration::from_millis(100), vec![slot], 1, 1e8);
    dirtytrace::trace::prepare_dir(dir).unwrap();
    TraceWriter::create(dir, m).unwrap()
}

#[test]
fn resume_acts_on_what_each_run_directory_holds() {
    let dir = Scratch::new("ds-resume-logic");
    let grid = write(
        &dir,
        "grid.toml",
        "[spec]\nmem = \"64MiB\"\n[[spec.phase]]\nduration = \"0.5s\"\nworking_set = \"8MiB\"\nrate = \"8MiB/s\"\n\
         [axes]\nrate = [\"1MiB/s\", \"2MiB/s\", \"3MiB/s\", \"4MiB/s\", \"5MiB/s\"]\n",
    );
    let out = dir.join("ds");
    let first = generated(&grid, &out, "1/1");
    let ids: BTreeMap<String, String> =
        first.outcomes.iter().map(|o| (o.name.clone(), o.trace_id.clone().unwrap())).collect();
    let t = |r: u32| out.join("traces").join(format!("rate={r}MiBps_r0"));
    // 1: interrupted by Ctrl-C; 2: killed before its first interval; 3: someone else's files;
    // 4: being recorded right now; 5: finished.
    let mut m = Manifest::load(&t(1)).unwrap();
    m.status = TraceStatus::Interrupted;
    m.store(&t(1)).unwrap();
    std::fs::remove_dir_all(t(2)).unwrap();
    drop(start_trace(&t(2)));
    std::fs::remove_dir_all(t(3)).unwrap();
    std::fs::create_dir_all(t(3)).unwrap();
    std::fs::write(t(3).join("notes.txt"), "mine").unwrap();
    std::fs::remove_dir_all(t(4)).unwrap();
    let busy = start_trace(&t(4));

    let mut o = SweepOptions::new(grid.clone(), out.clone());
    o.engine = Engine::Generate;
    let plan = sweep::plan(o).unwrap();
    let states: Vec<String> = plan.states().iter().map(|(_, s)| s.word()).collect();
    assert_eq!(states, ["interrupted", "killed", "foreign", "busy", "complete"]);
    let again = sweep::run(&plan, Arc::new(AtomicBool::new(false)), &sweep::Quiet).unwrap();
    let by: BTreeMap<&str, (Action, Option<TraceStatus>, &str)> = again
        .outcomes
        .iter()
        .map(|o| (o.name.as_str(), (o.action, o.status, o.note.as_deref().unwrap_or(""))))
        .collect();
    assert_eq!(by["rate=1MiBps_r0"].0, Action::Rerecorded);
    assert!(by["rate=1MiBps_r0"].2.contains("interrupted by Ctrl-C"));
    assert_eq!(by["rate=2MiBps_r0"].0, Action::Rerecorded);
    assert!(by["rate=2MiBps_r0"].2.contains("before it kept an interval"), "{}", by["rate=2MiBps_r0"].2);
    assert_eq!(by["rate=3MiBps_r0"].0, Action::Failed);
    assert!(by["rate=3MiBps_r0"].2.contains("holds files but no manifest.json"));
    assert_eq!(std::fs::read_to_string(t(3).join("notes.txt")).unwrap(), "mine", "foreign files untouched");
    assert_eq!(by["rate=4MiBps_r0"].0, Action::Busy);
    assert_eq!(by["rate=5MiBps_r0"], (Action::Skipped, Some(TraceStatus::Complete), "already complete"));
    assert_eq!(Trace::open(t(5)).unwrap().manifest.trace_id, ids["rate=5MiBps_r0"]);
    for r in [1, 2] {
        assert_eq!(Trace::open(t(r)).unwrap().manifest.status, TraceStatus::Complete);
    }
    assert_eq!(again.failed, 1);

    let rows = table(&out.join(INDEX));
    let statuses: Vec<(&str, &str)> =
        rows.iter().map(|r| (r["name"].as_str().unwrap(), r["status"].as_str().unwrap())).collect();
    assert_eq!(
        statuses,
        [
            ("rate=1MiBps_r0", "complete"),
            ("rate=2MiBps_r0", "complete"),
            ("rate=4MiBps_r0", "recording"),
            ("rate=5MiBps_r0", "complete")
        ],
        "a directory without a manifest is left out"
    );
    assert_eq!(rows[2]["dirty_rate_mean_bytes_per_s"], Value::Null);

    // The recorder of 4 dies having kept nothing: the next sweep records it again.
    drop(busy);
    let third = sweep::run(&plan, Arc::new(AtomicBool::new(false)), &sweep::Quiet).unwrap();
    let actions: Vec<(String, Action)> = third.outcomes.iter().map(|o| (o.name.clone(), o.action)).collect();
    assert!(actions.contains(&("rate=4MiBps_r0".into(), Action::Rerecorded)), "{actions:?}");
    assert_eq!(actions.iter().filter(|a| a.1 == Action::Skipped).count(), 3);
    let rows = table(&out.join(INDEX));
    let mut ids: Vec<&str> = rows.iter().map(|r| r["trace_id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4);
}

#[test]
fn bad_input_is_refused_naming_the_key_or_flag_and_leaves_nothing() {
    let dir = Scratch::new("ds-bad");
    let spec = "[spec]\nmem = \"64MiB\"\n[[spec.phase]]\nname = \"w\"\nduration = \"1s\"\nworking_set = \"8MiB\"\nrate = \"8MiB/s\"\n";
    let good = write(&dir, "good.toml", &format!("{spec}[axes]\nrate = [\"1MiB/s\", \"2MiB/s\"]\n"));
    write(&dir, "job.sh", "#!/bin/sh\ntrue\n");
    let out = dir.join("out");
    let grids = [
        ("unknown.toml", format!("{spec}bogus = 1\n"), "bogus"),
        ("unknown-axis.toml", format!("{spec}[axes]\nspeed = [\"1MiB/s\"]\n"), "`axes.speed`"),
        ("empty.toml", format!("{spec}[axes]\nrate = []\n"), "`axes.rate`: is empty"),
        (
            "no-phase.toml",
            format!("{spec}[axes]\n\"serve.rate\" = [\"1MiB/s\"]\n"),
            "`axes.serve.rate`: the workload has no phase `serve`",
        ),
        ("linux.toml", "workload = \"job.sh\"\n[axes]\nrate = [\"1MiB/s\"]\n".to_string(), "`axes.rate`: the workload"),
        ("not-hotcold.toml", format!("{spec}[axes]\nhot_fraction = [0.2]\n"), "`axes.hot_fraction`"),
        ("big.toml", format!("{spec}[axes]\nrate = [\"1MiB/s\", \"2MiB/s\"]\nrepeat = 501\n"), "--max-runs 1002"),
        ("start.toml", format!("{spec}[replay]\nbandwidths = [\"1Gbit/s\"]\nstart = \"soon\"\n"), "`replay.start`"),
    ];
    for (file, text, want) in &grids {
        let g = write(&dir, file, text);
        let Run { code, stderr: err, .. } = cli(&["sweep", s(&g), "--output", s(&out)]);
        assert_eq!(code, Some(1), "{file}: {err}");
        assert!(err.contains(want), "{file}: {err}\n(wanted {want})");
        assert!(err.contains(file), "{file}: the error names the grid: {err}");
        assert!(!out.exists(), "{file}: nothing is left behind");
    }
    // Over the limit, but confirmed: listed (a dry run records nothing).
    let big = dir.join("big.toml");
    let Run { code, stdout, stderr: err } =
        cli(&["sweep", s(&big), "--output", s(&out), "--max-runs", "1002", "--dry-run"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(stdout.lines().count(), 2 + 1002);
    assert!(!out.exists());

    let cores = std::thread::available_parallelism().unwrap().get();
    let too_many = (cores + 1).to_string();
    for (args, want) in [
        (vec!["--shard", "0/2"], "--shard"),
        (vec!["--shard", "3/2"], "--shard"),
        (vec!["--shard", "1/0"], "--shard"),
        (vec!["--jobs", "0"], "--jobs 0"),
        (vec!["--jobs", too_many.as_str()], "--jobs"),
    ] {
        let mut all = vec!["sweep", s(&good), "--output", s(&out)];
        all.extend(&args);
        let Run { code, stderr: err, .. } = cli(&all);
        assert_eq!(code, Some(if want == "--shard" { 2 } else { 1 }), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!out.exists(), "{args:?}: nothing is left behind");
    }

    // An output that is a file, a directory of something else, a dataset of another grid.
    let file = write(&dir, "a-file", "x");
    let Run { code, stderr: err, .. } = cli(&["sweep", s(&good), "--output", s(&file)]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--output") && err.contains("is a file"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    write(&other, "keep.txt", "k");
    let Run { code, stderr: err, .. } = cli(&["sweep", s(&good), "--output", s(&other)]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--output") && err.contains("not a dirtytrace dataset"), "{err}");
    assert_eq!(std::fs::read_dir(&other).unwrap().count(), 1);
    let ds = dir.join("ds");
    generated(&good, &ds, "1/1");
    let changed = write(&dir, "changed.toml", &format!("{spec}[axes]\nrate = [\"1MiB/s\", \"3MiB/s\"]\n"));
    let Run { code, stderr: err, .. } = cli(&["sweep", s(&changed), "--output", s(&ds)]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--output") && err.contains("another grid"), "{err}");
    // Not a trace nor a dataset, for the analysis tools.
    let Run { code, stderr: err, .. } = cli(&["simgrid", s(&other)]);
    assert_eq!(code, Some(1));
    assert!(err.contains("neither a trace"), "{err}");
}

/// Issue 15, defect 6: a FIFO at `.index.lock` blocked `index` and `sweep` forever. A lock file
/// that is not a regular file is refused with the file named; a symlink is not followed.
#[test]
fn a_lock_file_that_is_not_a_regular_file_is_refused_naming_it() {
    let dir = Scratch::new("ds-lock-files");
    let grid = write(&dir, "grid.toml", GRID);
    let out = dir.join("ds");
    generated(&grid, &out, "1/1");
    let lock = out.join(".index.lock");
    std::fs::remove_file(&lock).unwrap();
    nix::unistd::mkfifo(&lock, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let Run { code, stderr: err, .. } = cli(&["index", s(&out)]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("{}: is a FIFO", lock.display())) && err.contains("remove it"), "{err}");
    // Every run is recorded already: the sweep skips them all, and fails on the index.
    let Run { code, stderr: err, .. } = cli(&["sweep", s(&grid), "--output", s(&out)]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("8 skipped") && err.contains("index: FAILED"), "{err}");
    assert!(err.contains(&format!("{}: is a FIFO", lock.display())), "{err}");

    std::fs::remove_file(&lock).unwrap();
    let elsewhere = write(&dir, "elsewhere", "");
    std::os::unix::fs::symlink(&elsewhere, &lock).unwrap();
    let Run { code, stderr: err, .. } = cli(&["index", s(&out)]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("{}: is a symbolic link", lock.display())), "{err}");
    // Removed, as the message says: `index` makes a new one.
    std::fs::remove_file(&lock).unwrap();
    let Run { code, stderr: err, .. } = cli(&["index", s(&out)]);
    assert_eq!(code, Some(0), "{err}");
    assert!(std::fs::symlink_metadata(&lock).unwrap().is_file());

    // A run's claim: that run fails, naming the file, and the sweep goes on.
    let first = names(&table(&out.join(INDEX)))[0].clone();
    let claim = out.join(".claims").join(format!("{first}.lock"));
    std::fs::remove_file(&claim).unwrap();
    nix::unistd::mkfifo(&claim, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let Run { code, stderr: err, .. } = cli(&["sweep", s(&grid), "--output", s(&out)]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("{first}: FAILED: {}: is a FIFO", claim.display())), "{err}");
    assert!(err.contains("7 skipped, 0 left to another recorder, 1 failed"), "{err}");
    std::fs::remove_file(&claim).unwrap();
    // The dataset's lock: the sweep stops before any run.
    let dataset_lock = out.join(".dataset.lock");
    std::fs::remove_file(&dataset_lock).unwrap();
    nix::unistd::mkfifo(&dataset_lock, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let Run { code, stderr: err, .. } = cli(&["sweep", s(&grid), "--output", s(&out)]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.starts_with(&format!("error: {}: is a FIFO", dataset_lock.display())), "{err}");
    assert!(!err.contains("[1/8]"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Issue 15: sweeps starting together into one directory each see the others' entries before
/// `dataset.json` exists. The plan accepts what a sweep makes; the sweep checks again under the
/// dataset lock, where only a half-made dataset's empty directories pass.
#[test]
fn a_directory_a_sweep_began_is_accepted_and_checked_again_under_the_lock() {
    let dir = Scratch::new("ds-half-made");
    let grid = write(&dir, "grid.toml", GRID);
    // What a sweep killed while creating the dataset leaves: its lock, empty directories and a
    // temporary dataset.json.
    let out = dir.join("ds");
    for d in ["traces", "specs", ".claims"] {
        std::fs::create_dir_all(out.join(d)).unwrap();
    }
    write(&out, ".dataset.lock", "");
    let tmp = write(&out, ".dataset.json.4242-1.tmp", "{\"half");
    let report = generated(&grid, &out, "1/1");
    assert_eq!(report.outcomes.iter().filter(|o| o.action == Action::Recorded).count(), 8, "{report:?}");
    assert!(!tmp.exists(), "the stale temporary file is removed under the lock");

    // Those names holding files, without dataset.json: a sweep could be filling them, so the
    // plan accepts them; under the lock no sweep is, and the directory is refused untouched.
    let other = dir.join("other");
    std::fs::create_dir_all(other.join("traces/x")).unwrap();
    let Run { code, stderr: err, .. } = cli(&["sweep", s(&grid), "--output", s(&other), "--dry-run"]);
    assert_eq!(code, Some(0), "{err}");
    let Run { code, stderr: err, .. } = cli(&["sweep", s(&grid), "--output", s(&other)]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not a dirtytrace dataset"), "{err}");
    assert!(other.join("traces/x").is_dir() && !other.join("dataset.json").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The rows of the first table after `heading` in a schema document: its first column, or all.
fn doc_table(doc: &str, heading: &str) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(format!("{}/schemas/{doc}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let from = text.find(heading).unwrap_or_else(|| panic!("{doc} has no {heading}"));
    text[from..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| l.split('|').skip(1).map(|c| c.trim().trim_matches('`').to_string()).collect())
        .collect()
}

#[test]
fn documented_columns_match_the_writer() {
    let index_doc: Vec<String> =
        doc_table("dataset.md", "## `index.parquet`").into_iter().map(|r| r[0].clone()).collect();
    let at = index_doc.iter().position(|c| c == "axis_…").expect("the axis columns' row");
    let mut fixed = index_doc.clone();
    fixed.remove(at);
    assert_eq!(fixed, index_column_names(&[]));
    let replay_doc: Vec<String> =
        doc_table("dataset.md", "## `replay.parquet`").into_iter().map(|r| r[0].clone()).collect();
    assert_eq!(replay_doc, replay_column_names());

    // Every axis, in the documented order, gives the documented column and type, inserted
    // where the document says.
    let axes_doc = doc_table("dataset.md", "| axis key |");
    let values = [
        ("mem", "[\"64MiB\"]"),
        ("vcpus", "[1]"),
        ("rate", "[\"1MiB/s\"]"),
        ("working_set", "[\"4MiB\"]"),
        ("pattern", "[\"hotcold\"]"),
        ("hot_fraction", "[0.2]"),
        ("hot_share", "[0.8]"),
        ("cpu", "[0.5]"),
        ("interval", "[\"50ms\"]"),
        ("migration_speed", "[\"1Gbit/s\"]"),
        ("duration", "[\"1s\"]"),
    ];
    let keys: Vec<&str> = axes_doc.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(keys, values.map(|v| v.0), "the axes documented, in order");
    let dir = Scratch::new("ds-doc");
    // Written in reverse: the order of the columns is the canonical one, not the file's.
    let axes: String = values.iter().rev().map(|(k, v)| format!("{k} = {v}\n")).collect();
    let g = write(
        &dir,
        "all.toml",
        &format!("[spec]\nmem = \"64MiB\"\n[[spec.phase]]\nduration = \"1s\"\nworking_set = \"8MiB\"\nrate = \"8MiB/s\"\n[axes]\n{axes}"),
    );
    let grid = Grid::load(&g).unwrap();
    assert_eq!(grid.expand(10).unwrap().len(), 1);
    for (a, row) in grid.axes.iter().zip(&axes_doc) {
        assert_eq!(a.column, row[2], "{}", row[0]);
        let kind = match row[3].as_str() {
            "uint64" => ValueKind::U64,
            "uint32" => ValueKind::U32,
            "float64" => ValueKind::F64,
            "string" => ValueKind::Utf8,
            t => panic!("undocumented type {t}"),
        };
        assert_eq!(a.kind(), kind, "{}", row[0]);
    }
    let info = DatasetInfo::new(&grid, &grid.expand(10).unwrap());
    let mut want = fixed.clone();
    for (i, a) in info.axes.iter().enumerate() {
        want.insert(at + i, a.column.clone());
    }
    assert_eq!(index_column_names(&info.axes), want);
    // And a written index has exactly those columns.
    let out = dir.join("ds");
    generated(&g, &out, "1/1");
    let rows = table(&out.join(INDEX));
    assert_eq!(rows[0].keys().cloned().collect::<Vec<_>>().len(), want.len());
    let (batch, _) = index::read_table(&out.join(INDEX)).unwrap();
    let written: Vec<String> = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
    assert_eq!(written, want);
    assert_eq!(rows[0]["axis_hot_fraction"], 0.2);
    assert_eq!(rows[0]["axis_duration_s"], 1.0);
    assert_eq!(rows[0]["axis_mem_bytes"], 64u64 << 20);
}

#[test]
fn the_python_example_plots_the_index_and_the_slurm_script_shards() {
    let dir = Scratch::new("ds-python");
    let grid = write(&dir, "grid.toml", GRID);
    let out = dir.join("ds");
    generated(&grid, &out, "1/1");
    let script = format!("{}/examples/sweeps/plot_index.py", env!("CARGO_MANIFEST_DIR"));
    let fig = dir.join("fig.png");
    let o = Command::new("python3").args([&script, s(&out), "-o", s(&fig), "--json"]).output().unwrap();
    assert!(
        o.status.success(),
        "python failed (pip install -r examples/requirements.txt?):\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(std::fs::metadata(&fig).unwrap().len() > 10_000);
    let index = table(&out.join(INDEX));
    let replays = table(&out.join(REPLAY));
    let points = v["points"].as_object().unwrap();
    // 32 MiB/s fails on every trace (too short): only the 1 Gbit/s line is drawn.
    assert_eq!(points.keys().collect::<Vec<_>>(), ["125000000"]);
    let line = points["125000000"].as_array().unwrap();
    assert_eq!(line.len(), 8);
    for p in line {
        let name = p[2].as_str().unwrap();
        let row = index.iter().find(|r| r["name"] == name).unwrap();
        let rp = replays.iter().find(|r| r["name"] == name && r["bandwidth_bytes_per_s"] == 125e6).unwrap();
        assert_eq!(p[0].as_f64().unwrap(), row["dirty_rate_mean_bytes_per_s"].as_f64().unwrap() / 1048576.0);
        assert_eq!(p[1], rp["total_time_s"]);
    }

    // The Slurm script turns an array task into its shard.
    let bin_dir = dir.join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let fake = write(&bin_dir, "fake-dirtytrace", "#!/bin/sh\necho \"$@\"\n");
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let o = Command::new("bash")
        .arg(format!("{}/examples/sweeps/slurm.sh", env!("CARGO_MANIFEST_DIR")))
        .env("DIRTYTRACE", &fake)
        .env("DATASET", "/shared/ds")
        .env("SLURM_ARRAY_TASK_ID", "5")
        .env("SLURM_ARRAY_TASK_MIN", "4")
        .env("SLURM_ARRAY_TASK_COUNT", "4")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "sweep examples/sweeps/grid.toml --output /shared/ds --shard 2/4"
    );
}

// ---- Real recordings under KVM ----

/// Three runs of 1 s at 50 ms in a 64 MiB guest.
fn kvm_grid(dir: &Path, rates: &[&str]) -> PathBuf {
    let rates: Vec<String> = rates.iter().map(|r| format!("\"{r}\"")).collect();
    write(
        dir,
        "grid.toml",
        &format!(
            "[spec]\nmem = \"64MiB\"\nseed = 4\n[[spec.phase]]\nname = \"w\"\nduration = \"1s\"\nworking_set = \"16MiB\"\n\
             rate = \"16MiB/s\"\npattern = \"random\"\n[record]\ninterval = \"50ms\"\n[axes]\nrate = [{}]\n",
            rates.join(", ")
        ),
    )
}

/// Starts `dirtytrace sweep`, its stderr in a file and its stdout (`--json`) beside it.
fn spawn_sweep(grid: &Path, out: &Path, log: &Path, extra: &[&str]) -> std::process::Child {
    Command::new(bin())
        .args(["sweep", s(grid), "--output", s(out)])
        .args(extra)
        .stdout(std::fs::File::create(log.with_extension("json")).unwrap())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// Waits until the journal of `trace` holds at least one whole frame.
fn wait_for_frames(trace: &Path) {
    let journal = trace.join("journal.dtj");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(&journal).map_or(true, |m| m.len() < 200) {
        assert!(Instant::now() < deadline, "{} never got a frame", journal.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `sweep --json` report's (name, action) pairs, by name.
fn actions(report: &Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = report["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["name"].as_str().unwrap().into(), o["action"].as_str().unwrap().into()))
        .collect();
    v.sort();
    v
}

fn unique(rows: &[Row], col: &str) -> usize {
    let mut v: Vec<&str> = rows.iter().map(|r| r[col].as_str().unwrap()).collect();
    v.sort();
    v.dedup();
    v.len()
}

#[test]
fn a_killed_sweep_resumes_and_records_every_run_once() {
    let _g = kvm_lock();
    let dir = Scratch::new("ds-kill");
    let grid = kvm_grid(&dir, &["8MiB/s", "16MiB/s", "24MiB/s"]);
    let out = dir.join("ds");
    let log = dir.join("first.log");
    let mut child = spawn_sweep(&grid, &out, &log, &[]);
    let second = out.join("traces/rate=16MiBps_r0");
    wait_for_frames(&second);
    signal(&child, nix::sys::signal::Signal::SIGKILL);
    child.wait().unwrap();
    let first_id = Trace::open(out.join("traces/rate=8MiBps_r0")).unwrap().manifest.trace_id;
    assert_eq!(Manifest::load(&second).unwrap().status, TraceStatus::Recording);
    assert!(!out.join("traces/rate=24MiBps_r0").exists());

    let Run { code, stderr: err, .. } = cli(&["sweep", s(&grid), "--output", s(&out)]);
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with('[')).collect();
    assert_eq!(lines.len(), 3, "one line per run:\n{err}");
    assert!(lines[0].starts_with("[1/3] rate=8MiBps_r0: skipped, complete"), "{err}");
    assert!(lines[1].starts_with("[2/3] rate=16MiBps_r0: recovered, recovered ("), "{err}");
    assert!(lines[1].contains("recovered") && lines[1].contains("intervals from the journal"), "{err}");
    assert!(lines[2].starts_with("[3/3] rate=24MiBps_r0: recorded, complete"), "{err}");

    let rows = table(&out.join(INDEX));
    assert_eq!(names(&rows), ["rate=16MiBps_r0", "rate=24MiBps_r0", "rate=8MiBps_r0"]);
    assert_eq!((unique(&rows, "name"), unique(&rows, "trace_id")), (3, 3));
    let statuses: Vec<&str> = rows.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["recovered", "complete", "complete"]);
    assert_eq!(rows[2]["trace_id"], first_id.as_str(), "a finished run is not recorded again");
    assert!(rows[0]["intervals"].as_u64().unwrap() >= 1);
    for r in &rows {
        assert!(r["dirty_rate_mean_bytes_per_s"].as_f64().unwrap() > 0.0);
    }

    // Once more: nothing left to do.
    let Run { code, stderr: err, .. } = cli(&["sweep", s(&grid), "--output", s(&out), "--json"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(err.matches(": skipped,").count(), 3, "{err}");
    assert_eq!(table(&out.join(INDEX)), rows);
}

#[test]
fn ctrl_c_finalises_the_current_trace_and_the_next_sweep_records_it_again() {
    let _g = kvm_lock();
    let dir = Scratch::new("ds-sigint");
    let grid = kvm_grid(&dir, &["8MiB/s", "16MiB/s"]);
    let out = dir.join("ds");
    let log = dir.join("first.log");
    let mut child = spawn_sweep(&grid, &out, &log, &[]);
    let first = out.join("traces/rate=8MiBps_r0");
    wait_for_frames(&first);
    signal(&child, nix::sys::signal::Signal::SIGINT);
    let status = child.wait().unwrap();
    let err = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("1 not started") && err.contains("interrupted: run the same command again"), "{err}");
    let t = Trace::open(&first).unwrap();
    assert_eq!(t.manifest.status, TraceStatus::Interrupted);
    let interrupted_id = t.manifest.trace_id.clone();
    assert!(!out.join("traces/rate=16MiBps_r0").exists(), "no run starts after Ctrl-C");
    let rows = table(&out.join(INDEX));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["status"], "interrupted");
    let plan = cli_json(&["sweep", s(&grid), "--output", s(&out), "--dry-run", "--json"]);
    let states: Vec<&str> = plan.as_array().unwrap().iter().map(|r| r["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["interrupted", "pending"]);

    // Both at once (on two CPUs): the interrupted one is recorded again.
    let jobs = std::thread::available_parallelism().unwrap().get().min(2).to_string();
    let Run { code, stdout, stderr: err } = cli(&["sweep", s(&grid), "--output", s(&out), "--jobs", &jobs, "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        actions(&report),
        [("rate=16MiBps_r0".to_string(), "recorded".to_string()), ("rate=8MiBps_r0".into(), "rerecorded".into())]
    );
    assert!(err.contains("interrupted by Ctrl-C in an earlier sweep"), "{err}");
    let rows = table(&out.join(INDEX));
    assert_eq!(rows.iter().map(|r| r["status"].as_str().unwrap()).collect::<Vec<_>>(), ["complete", "complete"]);
    assert_eq!(unique(&rows, "trace_id"), 2);
    assert!(rows.iter().all(|r| r["trace_id"] != interrupted_id.as_str()));
}

/// Children killed and reaped when dropped, so that a failing test leaves no sweep running.
struct Children(Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Issue 15, defect 1: four sweeps of one grid into one new dataset at once. Each run is
/// recorded by exactly one of them (the others leave it to its claimant or skip it once done),
/// none fails, every trace is whole and exact, and the index has one row per run. All four
/// must be done within three minutes together (6 s of guest time each, if alone).
#[test]
fn four_sweeps_of_one_grid_at_once_record_every_run_exactly_once() {
    let _g = kvm_lock();
    let dir = Scratch::new("ds-four-sweeps");
    let rates = ["8MiB/s", "16MiB/s", "24MiB/s", "32MiB/s", "40MiB/s", "48MiB/s"];
    let grid = kvm_grid(&dir, &rates);
    let mut want: Vec<String> = rates.iter().map(|r| format!("rate={}ps_r0", r.trim_end_matches("/s"))).collect();
    want.sort();
    let out = dir.join("ds");
    let started = Instant::now();
    let logs: Vec<PathBuf> = (0..4).map(|i| dir.join(format!("sweep{i}.log"))).collect();
    let mut sweeps = Children(logs.iter().map(|log| spawn_sweep(&grid, &out, log, &["--json"])).collect());
    let deadline = started + Duration::from_secs(180);
    let mut recorded_by: BTreeMap<String, String> = BTreeMap::new();
    for (child, log) in sweeps.0.iter_mut().zip(&logs) {
        let left = deadline.saturating_duration_since(Instant::now());
        let status = wait_within(child, left, "a concurrent sweep");
        let err = std::fs::read_to_string(log).unwrap();
        assert_eq!(status.code(), Some(0), "{err}");
        let report: Value = serde_json::from_str(&std::fs::read_to_string(log.with_extension("json")).unwrap())
            .unwrap_or_else(|e| panic!("{e}: {err}"));
        assert_eq!((report["failed"].as_u64(), report["interrupted"].as_bool()), (Some(0), Some(false)), "{err}");
        assert_eq!(report["index_error"], Value::Null, "{err}");
        let mine = actions(&report);
        assert_eq!(mine.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(), want, "every run gets an outcome: {err}");
        for (name, action) in mine {
            match action.as_str() {
                "recorded" => {
                    let o = report["outcomes"].as_array().unwrap().iter().find(|o| o["name"] == name.as_str());
                    let id = o.unwrap()["trace_id"].as_str().unwrap().to_string();
                    assert!(recorded_by.insert(name.clone(), id).is_none(), "{name} recorded twice: {err}");
                }
                "busy" | "skipped" => {}
                other => panic!("{name}: {other}, where only recorded, busy or skipped may be: {err}"),
            }
        }
    }
    let wall = started.elapsed();
    assert_eq!(recorded_by.keys().cloned().collect::<Vec<_>>(), want, "each run recorded once");

    // Every trace whole: complete, the recording sweep's, every interval there and exact.
    let mut dirs: Vec<String> = std::fs::read_dir(out.join("traces"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    assert_eq!(dirs, want);
    for name in &want {
        let path = out.join("traces").join(name);
        let t = Trace::open(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(t.manifest.status, TraceStatus::Complete, "{name}");
        assert_eq!(t.manifest.trace_id, recorded_by[name], "{name} holds another recording's manifest");
        assert!(!path.join("journal.dtj").exists(), "{name}: finalised");
        let rows = t.rates().unwrap();
        assert!(!rows.is_empty(), "{name}");
        assert_eq!(rows.len() as u64, t.manifest.intervals, "{name}");
        for (i, r) in rows.iter().enumerate() {
            assert_eq!(r.interval, i as u64, "{name}");
        }
        for c in verify(&t).unwrap() {
            assert_eq!((c.missing, c.missing_cumulative, c.unexpected), (0, 0, 0), "{name}: {c:?}");
        }
    }

    // The index: one row per run, each that trace's; the last rewrite left nothing to do.
    let rows = table(&out.join(INDEX));
    assert_eq!(names(&rows), want);
    for r in &rows {
        let name = r["name"].as_str().unwrap();
        assert_eq!(
            (r["status"].as_str(), r["trace_id"].as_str()),
            (Some("complete"), Some(recorded_by[name].as_str()))
        );
        assert!(r["dirty_rate_mean_bytes_per_s"].as_f64().unwrap() > 0.0, "{name}");
    }
    let Run { code, stderr: err, .. } = cli(&["index", s(&out)]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("6 traces (0 analysed, 6 unchanged)"), "{err}");
    eprintln!("four sweeps of 6 runs of 1 s: {:.1} s", wall.as_secs_f64());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Issue 15: a run claimed by a live process is left to it (busy, not a failure: exit 0). The
/// claim is an `flock`, so it dies with its holder: once the holder is SIGKILLed, the next sweep
/// records the run.
#[test]
fn a_claimed_run_is_left_to_its_holder_and_the_claim_dies_with_it() {
    let _g = kvm_lock();
    let dir = Scratch::new("ds-claim-holder");
    let grid = kvm_grid(&dir, &["8MiB/s", "16MiB/s"]);
    let out = dir.join("ds");
    let claim = out.join(".claims/rate=8MiBps_r0.lock");
    std::fs::create_dir_all(claim.parent().unwrap()).unwrap();
    // One process holding the claim as a sweep would: sh opens it, util-linux flock locks that
    // open file, and sh becomes sleep, keeping it.
    let mut holder = Command::new("sh")
        .args(["-c", "exec 9>>\"$0\" && flock --exclusive 9 && echo locked && exec sleep 120", s(&claim)])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(holder.stdout.take().unwrap()), &mut line).unwrap();
    assert_eq!(line.trim(), "locked");

    let Run { code, stdout, stderr: err } = cli(&["sweep", s(&grid), "--output", s(&out), "--json"]);
    let _ = holder.kill();
    assert_eq!(code, Some(0), "{err}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        actions(&report),
        [("rate=16MiBps_r0".to_string(), "recorded".to_string()), ("rate=8MiBps_r0".into(), "busy".into())]
    );
    assert_eq!(report["failed"], 0);
    assert!(err.contains("rate=8MiBps_r0: left alone: claimed by another sweep right now; left to it"), "{err}");
    assert!(err.contains("1 left to another recorder, 0 failed"), "{err}");
    assert!(!out.join("traces/rate=8MiBps_r0").exists(), "a claimed run is not touched");

    // SIGKILLed (above): the lock file stays, its lock is gone.
    holder.wait().unwrap();
    assert!(claim.exists());
    let Run { code, stdout, stderr: err } = cli(&["sweep", s(&grid), "--output", s(&out), "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        actions(&report),
        [("rate=16MiBps_r0".to_string(), "skipped".to_string()), ("rate=8MiBps_r0".into(), "recorded".into())]
    );
    let t = Trace::open(out.join("traces/rate=8MiBps_r0")).unwrap();
    assert_eq!(t.manifest.status, TraceStatus::Complete);
    assert_eq!(table(&out.join(INDEX)).len(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A finished trace damaged afterwards (`truncate -s 100 rates.parquet`, or a bitmaps table
/// cut short) is reported as failed, named, and left alone; it is not skipped as complete.
#[test]
fn a_finished_trace_damaged_later_is_reported_not_skipped() {
    let dir = Scratch::new("ds-damaged");
    let grid = write(&dir, "grid.toml", GRID);
    let out = dir.join("ds");
    let first = generated(&grid, &out, "1/1");
    assert_eq!(first.failed, 0);
    let names: Vec<String> = first.outcomes.iter().map(|o| o.name.clone()).collect();
    let rates = out.join("traces").join(&names[0]).join("rates.parquet");
    std::fs::OpenOptions::new().write(true).open(&rates).unwrap().set_len(100).unwrap();
    let bitmaps = out.join("traces").join(&names[1]).join("bitmaps.parquet");
    let len = std::fs::metadata(&bitmaps).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&bitmaps).unwrap().set_len(len / 2).unwrap();
    let again = generated(&grid, &out, "1/1");
    let by_name = |n: &str| again.outcomes.iter().find(|o| o.name == n).unwrap().clone();
    for (name, file) in [(&names[0], "rates.parquet"), (&names[1], "bitmaps.parquet")] {
        let o = by_name(name);
        assert_eq!(o.action, sweep::Action::Failed, "{o:?}");
        let note = o.note.unwrap_or_default();
        assert!(note.contains(file) && note.contains("move it away"), "{note}");
    }
    assert_eq!(again.failed, 2);
    assert_eq!(std::fs::metadata(&rates).unwrap().len(), 100, "the damaged trace is left as it was");
    assert!(names[2..].iter().all(|n| by_name(n).action == sweep::Action::Skipped));
}

/// A huge `dataset.json` is refused by its size, before it is read.
#[test]
fn a_huge_dataset_description_is_refused_before_it_is_read() {
    let dir = Scratch::new("ds-huge-info");
    let grid = write(&dir, "grid.toml", GRID);
    let out = dir.join("ds");
    generated(&grid, &out, "1/1");
    let info = out.join("dataset.json");
    std::fs::OpenOptions::new().write(true).open(&info).unwrap().set_len(1 << 30).unwrap();
    let mut cmd = Command::new("prlimit");
    cmd.args(["--as=536870912", "--"]).arg(bin()).args(["index", s(&out)]);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let o = output_within(&mut cmd, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("dataset.json") && stderr.contains("1073741824"), "{stderr}");
}

/// Issue 15, defect 4: grids of 10⁹ and 10¹² runs are refused at once, with their count,
/// whatever --max-runs says, rather than expanded until memory runs out.
#[test]
fn huge_grids_are_refused_before_expanding() {
    let dir = Scratch::new("ds-huge-grid");
    let spec = "mem = \"64MiB\"\nseed = 7\n[[phase]]\nname = \"w\"\nduration = \"1s\"\nworking_set = \"8MiB\"\nrate = \"16MiB/s\"\n";
    write(&dir, "w.toml", spec);
    let list = |unit: &str| (1..=1000).map(|i| format!("\"{i}{unit}\"")).collect::<Vec<_>>().join(", ");
    let out = dir.join("ds");
    for (repeat, count) in [("1000", "1000000000 runs"), ("1000000", "1000000000000 runs")] {
        let text = format!(
            "workload = \"w.toml\"\n[axes]\nrate = [{}]\nworking_set = [{}]\nrepeat = {repeat}\n",
            list("KiB/s"),
            list("KiB")
        );
        let g = write(&dir, "g.toml", &text);
        for dry in [true, false] {
            let mut args = vec!["sweep", s(&g), "--output", s(&out), "--max-runs", "18446744073709551615"];
            if dry {
                args.push("--dry-run");
            }
            let t = Instant::now();
            let Run { code, stdout, stderr: err } = cli(&args);
            assert_eq!(code, Some(1), "{args:?}: {err}");
            assert!(t.elapsed() < Duration::from_secs(10), "{args:?}: {:?}", t.elapsed());
            assert!(err.contains(count) && err.contains("1000000 a grid may have"), "{err}");
            assert!(err.contains("g.toml"), "{err}");
            assert!(stdout.is_empty() && !out.exists());
        }
    }
}

/// A large dry run that is allowed lists its runs as they are generated: its memory stays
/// far below what holding 10⁵ runs takes (about 80 MB), and its listing is the one a plan gives.
#[test]
fn a_large_dry_run_streams() {
    use std::io::BufRead;
    let dir = Scratch::new("ds-stream");
    let spec = "mem = \"64MiB\"\nseed = 7\n[[phase]]\nname = \"w\"\nduration = \"1s\"\nworking_set = \"8MiB\"\nrate = \"16MiB/s\"\n";
    write(&dir, "w.toml", spec);
    let g = write(&dir, "g.toml", "workload = \"w.toml\"\n[axes]\nrate = [\"1MiB/s\", \"2MiB/s\"]\nrepeat = 50000\n");
    let out = dir.join("ds");
    let mut child = Command::new(bin())
        .args(["sweep", s(&g), "--output", s(&out), "--max-runs", "100000", "--dry-run"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status = format!("/proc/{}/status", child.id());
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut n = 0;
    let mut peak_kb = None;
    for line in &mut lines {
        let line = line.unwrap();
        if n == 2 {
            assert!(line.contains(" r0 ") || line.contains("_r0 "), "{line}");
        }
        n += 1;
        if n == 50_000 {
            // Halfway through the listing, every run has been generated once (the names'
            // check), and the process is still writing.
            let text = std::fs::read_to_string(&status).unwrap();
            let hwm = text.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
            peak_kb = Some(hwm.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap());
        }
    }
    assert!(wait_within(&mut child, Duration::from_secs(120), "dry run").success());
    assert_eq!(n, 2 + 100_000);
    let peak_kb = peak_kb.unwrap();
    assert!(peak_kb < 40_000, "peak RSS {peak_kb} kB");
    assert!(!out.exists());

    // The streamed listing, text and JSON, is the one the plan renders.
    let small =
        write(&dir, "small.toml", "workload = \"w.toml\"\n[axes]\nrate = [\"1MiB/s\", \"2MiB/s\"]\nrepeat = 3\n");
    let mut o = SweepOptions::new(small.clone(), out.clone());
    o.shard = "2/3".parse().unwrap();
    let plan = sweep::plan(o.clone()).unwrap();
    for json in [false, true] {
        let mut buf = Vec::new();
        sweep::dry_run(&o, json, &mut buf).unwrap();
        let want = if json {
            serde_json::to_string_pretty(&sweep::plan_json(&plan)).unwrap() + "\n"
        } else {
            sweep::render_plan(&plan)
        };
        assert_eq!(String::from_utf8(buf).unwrap(), want);
    }
}

/// Issue 15, defect 11a: each cause is printed once (an oversized dataset.json, a missing journal).
#[test]
fn each_cause_is_printed_once() {
    let dir = Scratch::new("ds-causes");
    let ds = dir.join("DS");
    std::fs::create_dir_all(ds.join("traces")).unwrap();
    std::fs::File::create(ds.join("dataset.json")).unwrap().set_len(100 << 20).unwrap();
    let Run { code, stderr: err, .. } = cli(&["index", s(&ds)]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.matches("dataset.json").count(), 1, "{err}");
    assert!(err.contains("104857600 bytes"), "{err}");
    let t = dir.join("T");
    std::fs::create_dir_all(&t).unwrap();
    let Run { code, stderr: err, .. } = cli(&["recover", s(&t)]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
}

/// Issue 15, defect 11d: a grid's packages are checked when the grid is read, so `--dry-run`
/// refuses one that apt would take for an option.
#[test]
fn a_grid_s_packages_are_checked_when_read() {
    let dir = Scratch::new("ds-packages");
    write(&dir, "job.sh", "#!/bin/sh\necho hi\n");
    let g = write(&dir, "g.toml", "workload = \"job.sh\"\n[record]\npackages = [\"-oAPT::X=1\"]\n");
    let out = dir.join("ds");
    let Run { code, stdout, stderr: err } = cli(&["sweep", s(&g), "--output", s(&out), "--dry-run"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("`record.packages`: `-oAPT::X=1` is not a Debian package name"), "{err}");
    assert!(stdout.is_empty() && !out.exists());
}

/// A grid whose `dataset.json` could not be read back (over 64 MiB) is refused before anything
/// is written, with the size and what to do.
#[test]
fn a_grid_too_large_for_its_description_is_refused_before_writing() {
    let dir = Scratch::new("ds-too-large");
    let workload = format!("{}/examples/workloads/steady.toml", env!("CARGO_MANIFEST_DIR"));
    let grid = write(
        &dir,
        "g.toml",
        &format!(
            "workload = \"{workload}\"\n[record]\nduration = \"1s\"\n[axes]\nrate = [\"32MiB/s\", \"64MiB/s\"]\nrepeat = 200000\n"
        ),
    );
    let out = dir.join("ds");
    let Run { code, stderr: err, .. } = cli(&["sweep", s(&grid), "--output", s(&out), "--max-runs", "1000000"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("400000 runs") && err.contains("split the grid"), "{err}");
    assert!(!out.exists());
}

/// Issue 15, defect 11a: the errors that reach a person through a dataset (`summarize --json`'s
/// `error`, a sweep's FAILED line, `index`'s warning) give each cause once: a manifest that is not
/// JSON used to print serde's message twice in each.
#[test]
fn a_damaged_trace_s_errors_give_each_cause_once() {
    let dir = Scratch::new("ds-causes-once");
    let grid = write(&dir, "grid.toml", GRID);
    let out = dir.join("ds");
    let first = generated(&grid, &out, "1/1");
    let name = first.outcomes[0].name.clone();
    let t = out.join("traces").join(&name);
    std::fs::write(t.join("manifest.json"), "{\"format_version\": 1\n").unwrap();
    let bad = format!(
        "{}/manifest.json is not a valid manifest: EOF while parsing an object at line 2 column 0",
        t.display()
    );

    let Run { code, stdout, stderr: err } = cli(&["summarize", s(&out), "--json"]);
    assert_eq!(code, Some(1), "one trace failed: {err}");
    let rows: Value = serde_json::from_str(&stdout).unwrap();
    let row = rows.as_array().unwrap().iter().find(|r| r["name"] == name.as_str()).unwrap();
    assert_eq!(row["error"], bad.as_str());

    let Run { code, stderr: err, .. } = cli(&["sweep", s(&grid), "--output", s(&out)]);
    assert_eq!(code, Some(1), "{err}");
    let line = err.lines().find(|l| l.contains(&format!("{name}: FAILED"))).unwrap();
    assert_eq!(
        line.split_once(": FAILED: ").unwrap().1,
        format!("{} has a manifest that cannot be read: {bad}: move it away, then sweep again", t.display())
    );

    let Run { code, stderr: err, .. } = cli(&["index", s(&out)]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(err.lines().next().unwrap(), format!("warning: {}: left out: {bad}", t.display()));
}

/// A grid that is not valid TOML is refused on one line, naming the file, the line and the key,
/// as a workload spec is; the TOML parser's own message spanned several lines with a snippet
/// (found by the fuzzer's grid cases). A base workload that is not TOML is named as `workload`.
#[test]
fn a_grid_s_toml_errors_are_one_line() {
    let dir = Scratch::new("ds-toml-errors");
    let out = dir.join("ds");
    write(&dir, "w.toml", "mem = \n");
    for (text, want) in [
        (
            "workload = \"w.toml\"\n[record]\ninterval = \"100ms\"\n[record]\nduration = \"1s\"\n",
            "line 4: duplicate key",
        ),
        ("workload = \"w.toml\"\n[axes]\nrate = [\n", "line 3, `rate`: unclosed array, expected `]`"),
        (
            "workload = \"w.toml\"\n",
            "`workload`: w.toml: line 1, `mem`: string values must be quoted, expected literal string",
        ),
    ] {
        let g = write(&dir, "g.toml", text);
        let Run { code, stdout, stderr: err } = cli(&["sweep", s(&g), "--output", s(&out), "--dry-run"]);
        assert_eq!(code, Some(1), "{err}");
        assert_eq!(err, format!("error: {}: {want}\n", g.display()));
        assert!(stdout.is_empty() && !out.exists());
    }
}

/// A dataset whose `traces/` has been replaced by a symbolic link to a directory elsewhere is
/// refused before any run is looked at: through the link a sweep would recover, remove or
/// record runs outside the dataset. The linked directory is left exactly as it was.
#[test]
fn a_dataset_whose_traces_directory_is_a_symlink_is_refused() {
    let dir = Scratch::new("ds-linked-traces");
    let grid = write(&dir, "grid.toml", GRID);
    let out = dir.join("ds");
    generated(&grid, &out, "1/1");
    let elsewhere = dir.join("elsewhere");
    std::fs::rename(out.join("traces"), &elsewhere).unwrap();
    // One run looks killed mid-recording, so that a sweep would recover it in place.
    let victim = std::fs::read_dir(&elsewhere).unwrap().next().unwrap().unwrap().path();
    let manifest = victim.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap().replacen("\"complete\"", "\"recording\"", 1);
    std::fs::write(&manifest, &text).unwrap();
    std::os::unix::fs::symlink(&elsewhere, out.join("traces")).unwrap();
    let before = tree(&elsewhere);
    let Run { code, stderr, .. } = cli(&["sweep", s(&grid), "--output", s(&out)]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        format!(
            "error: {}: is a symbolic link or not a directory; a sweep writes only inside its dataset: replace it \
             with a directory (move what it points to into it)",
            out.join("traces").display()
        )
    );
    assert_eq!(tree(&elsewhere), before, "the linked directory was changed");
}

/// Every file under `dir` with its contents, sorted.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                todo.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}
