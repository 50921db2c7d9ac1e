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
    assert!(err.contains("this dirtytrace reads 1"), "{err}");
    // The command line says the same.
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_dirtytrace")).arg("summarize").arg(&*dir).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("format_version 3"), "{stderr}");
}
