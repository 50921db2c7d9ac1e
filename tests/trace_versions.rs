//! Format versions: a version-1 trace written by an old dirtytrace (`tests/fixtures/trace-v1`)
//! is read, summarised and replayed exactly as that dirtytrace did, and a trace of a version this
//! dirtytrace does not know is refused with the version named.

mod common;

use common::*;
use dirtytrace::analysis::replay::{replay, ReplayOptions};
use dirtytrace::analysis::summary::{summarize, SummaryOptions};
use dirtytrace::trace::{Encoding, Trace};
use serde_json::json;
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/trace-v1")
}

/// splitmix64, as `tests/fixtures/make_trace_v1.rs` has it.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The ground truth of the fixture: the slot-relative pages interval `k` dirtied in slot 0 and
/// slot 1, as `make_trace_v1.rs` wrote them.
fn truth(k: u64) -> (Vec<u64>, Vec<u64>) {
    let s0 = (0..40).map(|j| (k * 40 + j) % 1024).collect();
    let mut s1: Vec<u64> = (0..(3 + k % 5)).map(|j| mix(k * 100 + j) % 520).collect();
    s1.sort();
    s1.dedup();
    (s0, s1)
}

fn listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap())
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_version_1_trace_reads_summarises_and_replays_as_version_1_did() {
    let before = listing(&fixture());
    let trace = Trace::open(fixture()).unwrap();
    assert_eq!(trace.manifest.format_version, 1);
    assert_eq!(trace.manifest.intervals, 12);
    let mut n = 0;
    for item in trace.intervals().unwrap() {
        let (row, bm) = item.unwrap();
        let (s0, s1) = truth(row.interval);
        assert_eq!(bm.slots.len(), 2);
        let got0: Vec<u64> = bm.slots[0].pages();
        let got1: Vec<u64> = bm.slots[1].pages().iter().map(|p| p - (1 << 32) / 4096).collect();
        let mut want0 = s0.clone();
        want0.sort();
        assert_eq!((got0, got1), (want0, s1.clone()), "interval {}", row.interval);
        assert_eq!(row.dirty_pages, (s0.len() + s1.len()) as u64);
        assert!(bm.slots.iter().all(|s| s.encoding == Encoding::Zstd));
        assert_eq!(row.partial, row.interval == 11);
        n += 1;
    }
    assert_eq!(n, 12);

    // `summarize --json` and `replay --json --bandwidth 16MiB/s` of b816b44 on this fixture.
    let s = serde_json::to_value(summarize(&trace, &SummaryOptions::default()).unwrap()).unwrap();
    assert_eq!(s["intervals"], json!(12));
    assert_eq!(s["duration_s"], json!(0.575));
    assert_eq!(s["ramsize_bytes"], json!(6324224));
    assert_eq!(
        s["dirty_rate_bytes_per_s"],
        json!({"mean": 3825307.826086957, "p50": 3686400.0, "p95": 3850240.0, "max": 3850240.0})
    );
    assert_eq!(s["cpu_util_per_vcpu_mean"], json!([0.5, 0.25]));
    assert_eq!(s["dirtied_bytes_total"], json!(2199552));
    assert_eq!(s["distinct_pages"], json!(535));
    assert_eq!(s["distinct_bytes"], json!(2191360));
    assert_eq!(s["working_set_curve"][0]["max_bytes"], json!(380928));
    assert_eq!(s["working_set_curve"][0]["mean_bytes"], json!(367522.9090909091));
    assert_eq!(s["working_set_curve"][1]["max_bytes"], json!(1839104));
    assert_eq!(s["hottest_pages"][0]["guest_page"], json!(1048700));
    assert_eq!(s["hottest_pages"][1]["guest_page"], json!(1048876));
    assert_eq!(s["hottest_pages"][1]["dirty_intervals"], json!(2));

    let r = serde_json::to_value(replay(&trace, &ReplayOptions::new(16.0 * 1024.0 * 1024.0)).unwrap()).unwrap();
    assert_eq!(r["total_time_s"], json!(0.475341796875));
    assert_eq!(r["downtime_s"], json!(0.022216796875));
    assert_eq!(r["rounds"], json!(2));
    assert_eq!(r["transferred_bytes"], json!(7974912));
    assert_eq!(r["converged"], json!(true));
    let rounds: Vec<_> =
        r["per_round"].as_array().unwrap().iter().map(|x| (x["bytes"].clone(), x["pages"].clone())).collect();
    assert_eq!(rounds, [(json!(6324224), json!(1544)), (json!(1277952), json!(312))]);
    assert_eq!(r["stop_and_copy"]["pages"], json!(91));

    // Reading wrote nothing into the fixture.
    assert_eq!(listing(&fixture()), before);
}

#[test]
fn a_trace_of_an_unknown_version_is_refused_naming_it() {
    let dir = Scratch::new("unknown-version");
    for (name, bytes) in listing(&fixture()) {
        std::fs::write(dir.join(&name), bytes).unwrap();
    }
    let path = dir.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    m["format_version"] = json!(3);
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let err = Trace::open(&*dir).err().expect("a version-3 trace is refused").to_string();
    assert!(err.contains("format_version 3"), "{err}");
    assert!(err.contains("this dirtytrace reads format_version 1 and 2"), "{err}");
    // The command line says the same.
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_dirtytrace")).arg("summarize").arg(&*dir).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("format_version 3"), "{stderr}");
}

/// A sparse random phase (about 1 % of pages per interval: `varint-gaps`) and a dense
/// sequential one (`zstd`), over 8 MiB in 50 ms intervals.
const BOTH_ENCODINGS: &str = r#"mem = "8MiB"
vcpus = 2
seed = 5
[[phase]]
name = "sparse"
duration = "0.5s"
working_set = "6MiB"
rate = "2MiB/s"
pattern = "random"
[[phase]]
name = "dense"
duration = "0.3s"
working_set = "4MiB"
rate = "40MiB/s"
pattern = "sequential"
"#;

fn generated(dir: &Path) -> Trace {
    use dirtytrace::guest::synthetic::generate::{generate, GenerateOptions};
    let opts = GenerateOptions { interval: std::time::Duration::from_millis(50), ..Default::default() };
    generate(dir, BOTH_ENCODINGS, &opts).unwrap();
    Trace::open(dir).unwrap()
}

#[test]
fn a_version_2_trace_holds_both_encodings_chosen_per_bitmap_and_reads_exactly() {
    let dir = Scratch::new("v2-both");
    let trace = generated(&dir.join("t"));
    assert_eq!(trace.manifest.format_version, 2);
    let mut seen = Vec::new();
    for item in trace.intervals().unwrap() {
        let (row, bm) = item.unwrap();
        let s = &bm.slots[0];
        // Sparse scattered intervals are varint-gaps, dense ones zstd.
        let sparse = s.dirty_pages * 16 <= s.num_pages && row.phase == "sparse";
        let dense = s.dirty_pages * 16 > s.num_pages;
        if sparse {
            assert_eq!(s.encoding, Encoding::VarintGaps, "interval {}: {} pages", row.interval, s.dirty_pages);
        }
        if dense {
            assert_eq!(s.encoding, Encoding::Zstd, "interval {}: {} pages", row.interval, s.dirty_pages);
        }
        seen.push(s.encoding);
    }
    assert!(seen.contains(&Encoding::VarintGaps) && seen.contains(&Encoding::Zstd), "{seen:?}");
    // Every page of every interval, against the guest's ground truth.
    assert_trace_exact("v2-both", &trace, 16);
}

/// Replaces row `row` of `bitmaps.parquet`'s columns `encoding`, `raw_bytes` and `data`.
fn set_blob(dir: &Path, row: usize, encoding: &str, raw_bytes: u64, data: &[u8]) {
    use arrow::array::*;
    use std::sync::Arc;
    let path = dir.join("bitmaps.parquet");
    let b = read_table(&path);
    let mut cols = b.columns().to_vec();
    let i = |n: &str| b.schema().index_of(n).unwrap();
    let enc = cols[i("encoding")].as_any().downcast_ref::<StringArray>().unwrap();
    let mut v: Vec<String> = enc.iter().map(|x| x.unwrap().to_string()).collect();
    v[row] = encoding.into();
    cols[i("encoding")] = Arc::new(StringArray::from_iter_values(v));
    let raw = cols[i("raw_bytes")].as_any().downcast_ref::<UInt64Array>().unwrap();
    let mut v = raw.values().to_vec();
    v[row] = raw_bytes;
    cols[i("raw_bytes")] = Arc::new(UInt64Array::from(v));
    let d = cols[i("data")].as_any().downcast_ref::<BinaryArray>().unwrap();
    let mut v: Vec<Vec<u8>> = d.iter().map(|x| x.unwrap().to_vec()).collect();
    v[row] = data.to_vec();
    cols[i("data")] = Arc::new(BinaryArray::from_iter_values(v.iter().map(|x| x.as_slice())));
    write_table(&path, &arrow::record_batch::RecordBatch::try_new(b.schema(), cols).unwrap());
}

/// The error of reading every bitmap of the trace in `dir`, through the library and the CLI.
fn refusal(dir: &Path) -> String {
    let err = Trace::open(dir).unwrap().bitmaps().unwrap().find_map(Result::err).expect("refused").to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dirtytrace")).arg("summarize").arg(dir).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&err), "{stderr}\n{err}");
    err
}

#[test]
fn a_lying_varint_gaps_bitmap_is_refused_naming_the_row() {
    let work = Scratch::new("v2-lies");
    let base = work.join("base");
    let trace = generated(&base);
    // Row 3 (interval 3): a sparse interval of the random phase.
    let bm = trace.bitmap(3).unwrap();
    let s = &bm.slots[0];
    assert_eq!(s.encoding, Encoding::VarintGaps);
    let (d, n) = (s.dirty_pages, s.num_pages);
    let pages = s.pages();
    let gaps: Vec<u64> = pages.iter().enumerate().map(|(i, &p)| if i == 0 { p } else { p - pages[i - 1] }).collect();
    let mut cases: Vec<(&str, Vec<u64>, u64, String)> = Vec::new();
    // Beyond num_pages: the last gap pushed past the slot's end.
    let mut beyond = gaps.clone();
    *beyond.last_mut().unwrap() += n;
    cases.push(("beyond", beyond, d, format!("past the slot's {n} pages")));
    // Out of order: a repeated page (a zero gap).
    let mut repeat = gaps.clone();
    repeat[5] = 0;
    cases.push(("order", repeat, d, "(page".into()));
    // Disagreeing with dirty_pages: one page fewer than the row says.
    cases.push(("count", gaps[..gaps.len() - 1].to_vec(), d, format!("the row says {d}")));
    for (name, numbers, dirty, needle) in cases {
        let dir = work.join(name);
        std::fs::create_dir(&dir).unwrap();
        for e in std::fs::read_dir(&base).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
        let stream = varints(&numbers);
        assert_eq!(dirty, d);
        set_blob(&dir, 3, "varint-gaps", stream.len() as u64, &zstd::bulk::compress(&stream, 1).unwrap());
        let err = refusal(&dir);
        eprintln!("{name}: {err}");
        assert!(err.contains("bitmaps.parquet: row 3: `data` (interval 3, slot 0)"), "{name}: {err}");
        assert!(err.contains(&needle), "{name}: {err}");
    }
    // raw_bytes beyond the raw bitmap's size is refused before any allocation.
    let dir = work.join("raw");
    std::fs::create_dir(&dir).unwrap();
    for e in std::fs::read_dir(&base).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    set_blob(&dir, 3, "varint-gaps", 1 << 40, &[0]);
    let err = refusal(&dir);
    assert!(err.contains("row 3: `raw_bytes` is 1099511627776"), "{err}");
}

#[test]
fn a_version_1_trace_may_not_hold_varint_gaps() {
    let dir = Scratch::new("v1-gaps");
    for (name, bytes) in listing(&fixture()) {
        std::fs::write(dir.join(&name), bytes).unwrap();
    }
    // Row 3 is interval 1's slot 1: pages as varint-gaps, valid in a version-2 trace.
    let (_, s1) = truth(1);
    let gaps: Vec<u64> = s1.iter().enumerate().map(|(i, &p)| if i == 0 { p } else { p - s1[i - 1] }).collect();
    let stream = varints(&gaps);
    set_blob(&dir, 3, "varint-gaps", stream.len() as u64, &zstd::bulk::compress(&stream, 1).unwrap());
    let err = refusal(&dir);
    assert!(err.contains("row 3: `encoding` is varint-gaps, which format_version 1 does not have"), "{err}");
    // The same row in a version-2 trace reads, to the same pages.
    let path = dir.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    m["format_version"] = json!(2);
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let bm = Trace::open(&*dir).unwrap().bitmap(1).unwrap();
    assert_eq!(bm.slots[1].encoding, Encoding::VarintGaps);
    assert_eq!(bm.slots[1].pages(), s1.iter().map(|p| p + (1 << 32) / 4096).collect::<Vec<_>>());
}
