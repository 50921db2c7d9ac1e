//! The documented format equals what the writer produces, and the documented Python snippet
//! reads the bitmaps exactly as the Rust reader does.

mod common;

use common::*;
use dirtytrace::trace::{bitmap_columns, rate_columns, Encoding};
use std::process::Command;
use std::time::Duration;

/// Column names from the first column of the first table in a schema document.
fn documented_columns(doc: &str) -> Vec<String> {
    let text = std::fs::read_to_string(format!("{}/schemas/{doc}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    text.lines()
        .skip_while(|l| !l.starts_with("| column"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| l.split('|').nth(1).unwrap().trim().trim_matches('`').to_string())
        .collect()
}

#[test]
fn documented_columns_match_the_writer() {
    assert_eq!(documented_columns("rates.md"), rate_columns());
    assert_eq!(documented_columns("bitmaps.md"), bitmap_columns());
}

/// The writer's choice of encoding, as `schemas/bitmaps.md` states it, is the code's.
#[test]
fn documented_encoding_choice_matches_the_writer() {
    use dirtytrace::trace::bitmap::{GAPS_WHATEVER_RUNS_ONE_IN, RUN_SAMPLE_PAGES, SPARSE_MAX_MEAN_RUN, SPARSE_ONE_IN};
    let text = std::fs::read_to_string(format!("{}/schemas/bitmaps.md", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    for said in [
        format!("when at most one page in {GAPS_WHATEVER_RUNS_ONE_IN} is dirty"),
        format!("when at most one page in {SPARSE_ONE_IN} is dirty"),
        format!("runs of fewer than {SPARSE_MAX_MEAN_RUN} consecutive pages"),
        format!("counted over its first {RUN_SAMPLE_PAGES} dirty pages"),
    ] {
        assert!(text.contains(&said), "schemas/bitmaps.md does not say \"{said}\"");
    }
}

fn python_snippet() -> String {
    let text = std::fs::read_to_string(format!("{}/schemas/bitmaps.md", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let start = text.find("## Reading a bitmap with pyarrow and numpy alone").unwrap();
    let block = &text[start..];
    let code_start = block.find("```python\n").unwrap() + "```python\n".len();
    let code_end = code_start + block[code_start..].find("```").unwrap();
    block[code_start..code_end].to_string()
}

/// The documented snippet's pages of every interval of the trace in `dir`.
fn pages_from_python(dir: &std::path::Path, intervals: u64) -> Vec<Vec<u64>> {
    let script = format!(
        "{}\nimport json, sys\nprint(json.dumps([dirty_pages(sys.argv[1], k).tolist() for k in range(int(sys.argv[2]))]))\n",
        python_snippet()
    );
    let out = Command::new("python3")
        .args(["-c", &script, dir.to_str().unwrap(), &intervals.to_string()])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python failed (pip install -r examples/requirements.txt?):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn documented_python_snippet_reads_bitmaps() {
    let _g = kvm_lock();
    // A sparse random phase (varint-gaps: under 1 page in 16, short runs) and a dense sequential one (zstd).
    let spec = "mem = \"256MiB\"\nseed = 9\n[[phase]]\nname = \"x\"\nduration = \"0.5s\"\nworking_set = \"64MiB\"\nrate = \"20MiB/s\"\npattern = \"random\"\n[[phase]]\nname = \"y\"\nduration = \"0.3s\"\nworking_set = \"128MiB\"\nrate = \"400MiB/s\"\npattern = \"sequential\"\n";
    let (_, trace, _dir) = record_spec("snippet", spec, Duration::from_millis(100), None);
    let parquet_fields: Vec<String> = {
        let f = std::fs::File::open(trace.dir.join("rates.parquet")).unwrap();
        let b = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f).unwrap();
        b.schema().fields().iter().map(|f| f.name().clone()).collect()
    };
    assert_eq!(parquet_fields, rate_columns());
    let n = trace.manifest.intervals;
    let from_python = pages_from_python(&trace.dir, n);
    let bitmaps: Vec<_> = trace.bitmaps().unwrap().map(Result::unwrap).collect();
    let encodings: Vec<Encoding> = bitmaps.iter().map(|b| b.slots[0].encoding).collect();
    assert!(encodings.contains(&Encoding::Zstd) && encodings.contains(&Encoding::VarintGaps), "{encodings:?}");
    let from_rust: Vec<Vec<u64>> = bitmaps.iter().map(|b| b.pages()).collect();
    assert_eq!(from_python.len(), n as usize);
    assert!(from_rust.iter().map(Vec::len).sum::<usize>() > 1000);
    assert_eq!(from_python, from_rust);
}

#[test]
fn documented_python_snippet_reads_a_version_1_trace() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/trace-v1");
    let trace = dirtytrace::trace::Trace::open(&dir).unwrap();
    let from_rust: Vec<Vec<u64>> = trace.bitmaps().unwrap().map(|b| b.unwrap().pages()).collect();
    assert_eq!(pages_from_python(&dir, trace.manifest.intervals), from_rust);
}
