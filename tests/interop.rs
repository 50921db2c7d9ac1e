//! The trace as a dataset for the Python stack and DuckDB: pyarrow, polars and DuckDB read
//! the same values the Rust reader does, a glob over two traces is one table, and
//! examples/analysis.py runs. Python packages missing is a failure (examples/requirements.txt;
//! `.ci/run` installs them). The traces are generated without KVM: the readers are under test
//! here, not the recorder.

mod common;

use common::*;
use dirtytrace::analysis::summary::{self, SummaryOptions};
use dirtytrace::guest::synthetic::generate::{generate, GenerateOptions};
use dirtytrace::trace::{IntervalRow, Trace};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn spec(seed: u32) -> String {
    format!(
        "mem = \"64MiB\"\nvcpus = 2\nseed = {seed}\n\
         [[phase]]\nname = \"random\"\nduration = \"0.5s\"\nworking_set = \"8MiB\"\nrate = \"20MiB/s\"\npattern = \"random\"\n\
         [[phase]]\nname = \"hotcold\"\nduration = \"0.5s\"\nworking_set = \"16MiB\"\nrate = \"40MiB/s\"\npattern = \"hotcold\"\ncpu = 0.5\n"
    )
}

/// Two short traces of the same workload with different seeds, in one dataset directory: each
/// test generates its own (milliseconds), removed with it.
fn dataset() -> InScratch {
    let dir = Scratch::new("interop");
    let data = dir.join("dataset");
    for (name, seed) in [("a", 11), ("b", 12)] {
        let opts = GenerateOptions { interval: Duration::from_millis(50), ..Default::default() };
        generate(&data.join(name), &spec(seed), &opts).unwrap_or_else(|e| panic!("generating {name}: {e:#}"));
    }
    InScratch::new(dir, data)
}

fn trace_a(data: &Path) -> Trace {
    Trace::open(data.join("a")).unwrap()
}

/// Runs a Python program with arguments; its stdout must be JSON.
fn python(code: &str, args: &[&str]) -> Value {
    let out = Command::new("python3")
        .arg("-c")
        .arg(code)
        .args(args)
        .output()
        .expect("python3 must be installed (see examples/requirements.txt)");
    assert!(
        out.status.success(),
        "python failed (are pyarrow, pandas, polars, duckdb, numpy installed? pip install -r examples/requirements.txt):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// A float as Python's numpy exported it: its IEEE bits, so that equality is exact.
fn bits(v: &Value) -> Option<u64> {
    v.as_u64()
}

fn f(x: f64) -> Option<u64> {
    Some(x.to_bits())
}

/// Python that prints a float column as IEEE bit patterns (None for null).
const PY_BITS: &str = r#"
import numpy as np
def fbits(values):
    return [None if v is None else int(np.array(v, dtype="<f8").view("<u8")) for v in values]
"#;

#[test]
fn pyarrow_reads_the_same_rates_and_bitmaps() {
    let data = dataset();
    let t = trace_a(&data);
    let dir = t.dir.to_str().unwrap();
    let code = format!(
        r#"{PY_BITS}
import json, sys
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
d = sys.argv[1]
t = pq.read_table(f"{{d}}/rates.parquet")
out = {{}}
for name in t.column_names:
    typ = t.schema.field(name).type
    vals = t.column(name).to_pylist()
    if pa.types.is_floating(typ):
        out[name] = fbits(vals)
    elif pa.types.is_list(typ) and pa.types.is_floating(typ.value_type):
        out[name] = [fbits(v) for v in vals]
    else:
        out[name] = vals
pages = {{}}
for row in pq.read_table(f"{{d}}/bitmaps.parquet").to_pylist():
    raw = pa.decompress(row["data"], decompressed_size=row["raw_bytes"], codec="zstd", asbytes=True)
    if row["encoding"] == "zstd":
        bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little")[: row["num_pages"]]
        offsets = np.flatnonzero(bits)
    else:
        assert row["encoding"] == "varint-gaps", row["encoding"]
        b = np.frombuffer(raw, dtype=np.uint8)
        last = b < 0x80
        number = np.cumsum(last) - last
        start = np.flatnonzero(np.r_[True, last[:-1]])
        shift = (7 * (np.arange(len(b)) - start[number])).astype(np.uint64)
        values = np.zeros(int(last.sum()), dtype=np.uint64)
        np.add.at(values, number, (b & 0x7F).astype(np.uint64) << shift)
        offsets = np.cumsum(values)
    pages.setdefault(row["interval"], []).extend(int(p) for p in row["first_page"] + offsets.astype(np.uint64))
out["pages"] = [sorted(pages[k]) for k in sorted(pages)]
print(json.dumps(out))
"#
    );
    let py = python(&code, &[dir]);
    let rows = t.rates().unwrap();
    let n = rows.len();
    assert!(n >= 15, "{n} intervals");
    let col = |name: &str| py[name].as_array().unwrap_or_else(|| panic!("pyarrow has no column {name}")).clone();
    assert_eq!(py.as_object().unwrap().len() - 1, dirtytrace::trace::rate_columns().len());
    let u = |name: &str, get: fn(&IntervalRow) -> u64| {
        let c = col(name);
        assert_eq!(c.len(), n);
        for (r, v) in rows.iter().zip(&c) {
            assert_eq!(v.as_u64(), Some(get(r)), "{name} at interval {}", r.interval);
        }
    };
    u("interval", |r| r.interval);
    u("dirty_pages", |r| r.dirty_pages);
    u("dirty_bytes", |r| r.dirty_bytes);
    u("new_pages", |r| r.new_pages);
    u("distinct_pages_total", |r| r.distinct_pages_total);
    u("working_set_memory_bytes", |r| r.working_set_memory_bytes);
    u("ramsize_bytes", |r| r.ramsize_bytes);
    let fl = |name: &str, get: fn(&IntervalRow) -> Option<f64>| {
        for (r, v) in rows.iter().zip(&col(name)) {
            assert_eq!(bits(v), get(r).and_then(f), "{name} at interval {}", r.interval);
        }
    };
    fl("t_start_s", |r| Some(r.t_start_s));
    fl("t_end_s", |r| Some(r.t_end_s));
    fl("duration_s", |r| Some(r.duration_s));
    fl("dirty_rate_bytes_per_s", |r| Some(r.dirty_rate_bytes_per_s));
    fl("cpu_util", |r| Some(r.cpu_util));
    fl("migration_speed_bytes_per_s", |r| Some(r.migration_speed_bytes_per_s));
    fl("dp_intensity", |r| r.dp_intensity);
    fl("harvest_lateness_s", |r| Some(r.harvest_lateness_s));
    for (r, v) in rows.iter().zip(&col("cpu_util_per_vcpu")) {
        let want: Vec<Value> = r.cpu_util_per_vcpu.iter().map(|x| Value::from(x.to_bits())).collect();
        assert_eq!(v.as_array().unwrap(), &want);
        assert_eq!(want.len(), 2);
    }
    for (r, v) in rows.iter().zip(&col("phase")) {
        assert_eq!(v.as_str(), Some(r.phase.as_str()));
    }
    for (r, v) in rows.iter().zip(&col("trace_id")) {
        assert_eq!(v.as_str(), Some(t.manifest.trace_id.as_str()));
        assert_eq!(r.trace_id, t.manifest.trace_id);
    }
    for (r, v) in rows.iter().zip(&col("partial")) {
        assert_eq!(v.as_bool(), Some(r.partial));
    }
    for (r, v) in rows.iter().zip(&col("guest_progress_after")) {
        let want: Vec<Value> = r.guest_progress_after.iter().map(|&x| Value::from(x)).collect();
        assert_eq!(v.as_array().unwrap(), &want);
    }
    // Bitmaps: the same pages, interval by interval.
    let pages = py["pages"].as_array().unwrap();
    assert_eq!(pages.len(), n);
    let mut total = 0;
    for (bm, p) in t.bitmaps().unwrap().zip(pages) {
        let mut want = bm.unwrap().pages();
        want.sort_unstable();
        let got: Vec<u64> = p.as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(got, want);
        total += got.len();
    }
    assert!(total > 1000, "{total} dirty pages: the comparison is not empty");
}

#[test]
fn polars_reads_the_same_rates_and_bitmap_counts() {
    let data = dataset();
    let t = trace_a(&data);
    let code = format!(
        r#"{PY_BITS}
import json, sys
import polars as pl
d = sys.argv[1]
r = pl.read_parquet(f"{{d}}/rates.parquet")
b = pl.read_parquet(f"{{d}}/bitmaps.parquet", columns=["interval", "slot", "dirty_pages"])
per = b.group_by("interval").agg(pl.col("dirty_pages").sum()).sort("interval")
print(json.dumps({{
    "interval": r["interval"].to_list(),
    "t_end_s": fbits(r["t_end_s"].to_list()),
    "dirty_pages": r["dirty_pages"].to_list(),
    "dp_intensity": fbits(r["dp_intensity"].to_list()),
    "phase": r["phase"].to_list(),
    "trace_id": r["trace_id"].unique().to_list(),
    "cpu_util_per_vcpu": [fbits(v) for v in r["cpu_util_per_vcpu"].to_list()],
    "bitmap_dirty_pages": per["dirty_pages"].to_list(),
    "bitmap_rows": b.height,
}}))
"#
    );
    let py = python(&code, &[t.dir.to_str().unwrap()]);
    let rows = t.rates().unwrap();
    let arr = |k: &str| py[k].as_array().unwrap().clone();
    assert_eq!(arr("interval").len(), rows.len());
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(arr("interval")[i].as_u64(), Some(r.interval));
        assert_eq!(arr("t_end_s")[i].as_u64(), Some(r.t_end_s.to_bits()));
        assert_eq!(arr("dirty_pages")[i].as_u64(), Some(r.dirty_pages));
        assert_eq!(arr("bitmap_dirty_pages")[i].as_u64(), Some(r.dirty_pages));
        assert_eq!(arr("dp_intensity")[i].as_u64(), r.dp_intensity.map(f64::to_bits));
        assert_eq!(arr("phase")[i].as_str(), Some(r.phase.as_str()));
        let cpu: Vec<u64> =
            arr("cpu_util_per_vcpu")[i].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(cpu, r.cpu_util_per_vcpu.iter().map(|c| c.to_bits()).collect::<Vec<_>>());
    }
    assert_eq!(py["trace_id"], serde_json::json!([t.manifest.trace_id]));
    assert_eq!(py["bitmap_rows"].as_u64(), Some(rows.len() as u64 * t.manifest.slots.len() as u64));
}

#[test]
fn duckdb_queries_match_the_rust_reader() {
    let data = dataset();
    let t = trace_a(&data);
    let code = format!(
        r#"{PY_BITS}
import json, sys
import duckdb
d = sys.argv[1]
con = duckdb.connect()
phases = con.execute(f"""
    SELECT phase, count(*), sum(dirty_bytes), max(dirty_rate_bytes_per_s), min(t_start_s), max(t_end_s)
    FROM read_parquet('{{d}}/rates.parquet') GROUP BY phase ORDER BY min(interval)""").fetchall()
per = con.execute(f"""
    SELECT interval, sum(dirty_pages) FROM read_parquet('{{d}}/bitmaps.parquet')
    GROUP BY interval ORDER BY interval""").fetchall()
print(json.dumps({{
    "phases": [[p, int(n), int(b), fbits([m])[0], fbits([s])[0], fbits([e])[0]] for p, n, b, m, s, e in phases],
    "per_interval": [[int(i), int(n)] for i, n in per],
}}))
"#
    );
    let py = python(&code, &[t.dir.to_str().unwrap()]);
    let rows = t.rates().unwrap();
    let mut phases: Vec<(String, Vec<&IntervalRow>)> = Vec::new();
    for r in &rows {
        match phases.iter_mut().find(|p| p.0 == r.phase) {
            Some(p) => p.1.push(r),
            None => phases.push((r.phase.clone(), vec![r])),
        }
    }
    let got = py["phases"].as_array().unwrap();
    assert_eq!(got.len(), phases.len());
    assert_eq!(phases.iter().map(|p| p.0.as_str()).collect::<Vec<_>>(), ["random", "hotcold"]);
    for (g, (name, rs)) in got.iter().zip(&phases) {
        assert_eq!(g[0].as_str(), Some(name.as_str()));
        assert_eq!(g[1].as_u64(), Some(rs.len() as u64));
        assert_eq!(g[2].as_u64(), Some(rs.iter().map(|r| r.dirty_bytes).sum::<u64>()));
        let max = rs.iter().map(|r| r.dirty_rate_bytes_per_s).fold(f64::MIN, f64::max);
        assert_eq!(g[3].as_u64(), Some(max.to_bits()));
        assert_eq!(g[4].as_u64(), Some(rs[0].t_start_s.to_bits()));
        assert_eq!(g[5].as_u64(), Some(rs.last().unwrap().t_end_s.to_bits()));
    }
    let per = py["per_interval"].as_array().unwrap();
    assert_eq!(per.len(), rows.len());
    for ((p, r), bm) in per.iter().zip(&rows).zip(t.bitmaps().unwrap()) {
        assert_eq!(p[0].as_u64(), Some(r.interval));
        assert_eq!(p[1].as_u64(), Some(bm.unwrap().pages().len() as u64));
    }
}

#[test]
fn a_glob_over_two_traces_is_one_table() {
    let data = dataset();
    let code = r#"
import json, sys
import duckdb, polars as pl
d = sys.argv[1]
q = f"""SELECT trace_id, count(*) AS intervals, sum(dirty_bytes) AS bytes, count(DISTINCT phase) AS phases
        FROM read_parquet('{d}/*/rates.parquet') GROUP BY trace_id ORDER BY trace_id"""
rows = duckdb.sql(q).fetchall()
pl_rows = (pl.scan_parquet(f"{d}/*/rates.parquet").group_by("trace_id")
           .agg(pl.len().alias("intervals"), pl.col("dirty_bytes").sum().alias("bytes"))
           .sort("trace_id").collect())
print(json.dumps({"duckdb": [[t, int(n), int(b), int(p)] for t, n, b, p in rows],
                  "polars": [[t, int(n), int(b)] for t, n, b in pl_rows.iter_rows()]}))
"#;
    let py = python(code, &[data.to_str().unwrap()]);
    let mut want: Vec<(String, u64, u64)> = ["a", "b"]
        .iter()
        .map(|n| {
            let t = Trace::open(data.join(n)).unwrap();
            let rows = t.rates().unwrap();
            (t.manifest.trace_id.clone(), rows.len() as u64, rows.iter().map(|r| r.dirty_bytes).sum())
        })
        .collect();
    want.sort();
    assert_ne!(want[0].0, want[1].0, "two recordings, two trace ids");
    let duck = py["duckdb"].as_array().unwrap();
    let pol = py["polars"].as_array().unwrap();
    assert_eq!(duck.len(), 2, "{py}");
    for ((d, p), (id, n, bytes)) in duck.iter().zip(pol).zip(&want) {
        assert_eq!(d[0].as_str(), Some(id.as_str()));
        assert_eq!(d[1].as_u64(), Some(*n));
        assert_eq!(d[2].as_u64(), Some(*bytes));
        assert_eq!(d[3].as_u64(), Some(2));
        assert_eq!(p, &serde_json::json!([id, n, bytes]));
    }
}

#[test]
fn the_pandas_example_runs_and_agrees_with_summarize() {
    let data = dataset();
    let t = trace_a(&data);
    let figures = Scratch::new("pandas-example");
    let fig = figures.join("figure.png");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/analysis.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&t.dir)
        .arg("-o")
        .arg(&fig)
        .arg("--json")
        .output()
        .expect("python3 must be installed");
    assert!(out.status.success(), "examples/analysis.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let py: Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = summary::summarize(&t, &SummaryOptions { top_pages: 1, ..Default::default() }).unwrap();
    assert_eq!(py["trace_id"], t.manifest.trace_id.as_str());
    assert_eq!(py["intervals"].as_u64(), Some(s.intervals));
    assert_eq!(py["distinct_pages"].as_u64(), Some(s.distinct_pages));
    let rel = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs().max(1.0);
    assert!(rel(py["duration_s"].as_f64().unwrap(), s.duration_s));
    assert!(rel(py["mean_dirty_rate_bytes_per_s"].as_f64().unwrap(), s.dirty_rate_bytes_per_s.mean));
    assert_eq!(py["max_dirty_rate_bytes_per_s"].as_f64(), Some(s.dirty_rate_bytes_per_s.max));
    assert!(rel(py["mean_cpu_util"].as_f64().unwrap(), s.cpu_util_cores.mean));
    assert_eq!(py["hottest_page_intervals"].as_u64(), Some(s.hottest_pages[0].dirty_intervals));
    for p in &s.phases {
        assert_eq!(py["phases"][&p.name].as_u64(), Some(p.intervals), "phase {}", p.name);
    }
    let png = std::fs::read(&fig).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(png.len() > 10_000, "a real figure: {} bytes", png.len());
}
