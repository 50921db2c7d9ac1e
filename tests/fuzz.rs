//! Structure-aware fuzzing on stable Rust (issue 7). Each case takes a valid generated trace
//! (or its journal, or a workload spec, or command-line values), changes it the way a lying,
//! damaged or hostile input would, and runs the library's readers, `recover` and the analysis
//! tools over it. A case passes when it ends, in bounded time and memory, with either a result
//! or an error: no panic, no abort, no hang.
//!
//! The cases run in a child process (this same test binary, `fuzz_child`) that caps its own
//! address space, so that an allocation trusting a lying size field fails the case instead of
//! taking the machine's memory. The parent watches the child: a child that dies (abort, signal)
//! or stops making progress is a crash or a hang of the case it was running; the parent records
//! it and starts a new child at the next case.
//!
//! - `DIRTYTRACE_FUZZ_SECS`: how long to fuzz (default 45 s, so that the suite's run stays
//!   within 2 minutes; the README's *Hardening* section describes the long run).
//! - `DIRTYTRACE_FUZZ_SEED`: the seed (default: from the clock; always printed). Case `n` of
//!   seed `s` is the same input on every run, so `DIRTYTRACE_FUZZ_SEED=s DIRTYTRACE_FUZZ_FROM=n
//!   DIRTYTRACE_FUZZ_CASES=1` replays it.
//! - `DIRTYTRACE_FUZZ_BIN`: the `dirtytrace` binary of the command-line cases (default: the one
//!   cargo built).

mod common;
#[path = "fuzz/inputs.rs"]
mod inputs;

use arrow::array::*;
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use common::*;
use dirtytrace::analysis::{replay, simgrid, summary};
use dirtytrace::guest::synthetic::generate::{generate, GenerateOptions};
use dirtytrace::guest::synthetic::plan::GuestPlan;
use dirtytrace::guest::synthetic::spec::WorkloadSpec;
use dirtytrace::trace::{self, journal, Trace, TraceStatus};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The child's address-space cap: far above what the small base trace needs, far below what a
/// trusted lying size (2^36 bytes and up) would take.
const CHILD_ADDRESS_SPACE: u64 = 16 << 30;
/// A case that takes longer than this without finishing is a hang.
const HANG: Duration = Duration::from_secs(120);
/// The same for the inputs suite (grids, datasets, tarballs), whose cases are small.
const INPUTS_HANG: Duration = Duration::from_secs(30);
/// The inputs suite's seed and number of cases unless told otherwise (`DIRTYTRACE_FUZZ_SEED`,
/// `DIRTYTRACE_FUZZ_CASES`): the same cases on every run.
const INPUTS_SEED: u64 = 15;
const INPUTS_CASES: u64 = 300;

/// splitmix64: small, seedable, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

const BASE_SPEC: &str = r#"mem = "8MiB"
vcpus = 2
seed = 7
[[phase]]
name = "seq"
duration = "0.4s"
working_set = "2MiB"
rate = "8MiB/s"
pattern = "sequential"
[[phase]]
name = "hot"
duration = "0.4s"
working_set = "4MiB"
rate = "16MiB/s"
pattern = "hotcold"
[[phase]]
name = "sparse"
duration = "0.3s"
working_set = "6MiB"
rate = "2MiB/s"
pattern = "random"
[[phase]]
name = "idle"
duration = "0.2s"
rate = "0"
cpu = 0.0
"#;

/// What every case starts from: a generated trace and the journal that recorded it.
struct Base {
    dir: PathBuf,
    journal: Vec<u8>,
    /// Where each frame starts in `journal`, and its length.
    frames: Vec<(usize, usize)>,
}

fn base(work: &Path) -> Base {
    let dir = work.join("base");
    generate_trace(&dir, BASE_SPEC, Duration::from_millis(50));
    let trace = Trace::open(&dir).unwrap();
    // Both encodings, so that mutations reach both decoders.
    let encodings: Vec<trace::Encoding> =
        trace.bitmaps().unwrap().flat_map(|b| b.unwrap().slots).map(|s| s.encoding).collect();
    assert!(encodings.contains(&trace::Encoding::Zstd) && encodings.contains(&trace::Encoding::VarintGaps));
    let (journal, frames) = journal_of(&trace);
    Base { dir, journal, frames }
}

// ---------------------------------------------------------------------------------------------
// Values a liar would write.

fn extreme_json(rng: &mut Rng, old: &Value) -> Value {
    use serde_json::json;
    let big = "x".repeat(1 + rng.below(200_000));
    let multibyte = "é€😀".repeat(1 + rng.below(3000));
    let near = match old.as_u64() {
        Some(v) => json!(rng.pick(&[v.wrapping_add(1), v.wrapping_sub(1), v.wrapping_mul(2), v / 2, v ^ 1 << 40])),
        None => match old.as_f64() {
            Some(f) => json!(rng.pick(&[f * 2.0, -f, f + 1e-9, f / 3.0, f * 1e12])),
            None => json!(0),
        },
    };
    let choices: Vec<Value> = vec![
        json!(0),
        json!(-1),
        json!(1),
        json!(4294967295u64),
        json!(4294967296u64),
        json!(1u64 << 36),
        json!(1u64 << 40),
        json!(1u64 << 45),
        json!(1u64 << 53),
        json!(1u64 << 62),
        json!(1u64 << 63),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(1e308),
        json!(-1e308),
        json!(5e-324),
        json!(0.5),
        json!("NaN"),
        json!("inf"),
        json!(""),
        json!(big),
        json!(multibyte),
        json!(true),
        Value::Null,
        json!([]),
        json!([1, 2, 3]),
        json!({}),
        near.clone(),
        near,
    ];
    rng.pick(&choices).clone()
}

/// Every path to a leaf (or a small container) of a JSON value.
fn json_paths(v: &Value, here: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match v {
        Value::Object(m) => {
            out.push(here.clone());
            for (k, x) in m {
                here.push(k.clone());
                json_paths(x, here, out);
                here.pop();
            }
        }
        Value::Array(a) => {
            out.push(here.clone());
            for (i, x) in a.iter().enumerate().take(8) {
                here.push(i.to_string());
                json_paths(x, here, out);
                here.pop();
            }
        }
        _ => out.push(here.clone()),
    }
}

fn json_at<'a>(v: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, k| match v {
        Value::Object(m) => m.get_mut(k),
        Value::Array(a) => a.get_mut(k.parse::<usize>().ok()?),
        _ => None,
    })
}

fn mutate_manifest(rng: &mut Rng, dir: &Path) -> String {
    let path = dir.join(trace::MANIFEST);
    let mut m: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let mut what = Vec::new();
    if rng.chance(4) {
        // Sizes that agree with each other, so the lie reaches past the first check.
        let size = *rng.pick(&[1u64 << 36, 1 << 40, 1 << 45, (1 << 40) + 4096, 4096, 8192, 1 << 62, u64::MAX - 4095]);
        m["slots"][0]["size_bytes"] = size.into();
        m["ramsize_bytes"] = size.into();
        what.push(format!("slot+ramsize={size}"));
        if rng.chance(2) {
            let v = *rng.pick(&[0u64, 2, 3, 1024, 1025, 4294967295]);
            m["vcpus"] = v.into();
            what.push(format!("vcpus={v}"));
        }
    }
    if rng.chance(6) {
        let count = *rng.pick(&[1u64 << 40, 2049, 2048, 1, u64::MAX]);
        m["initial_nonzero_pages"] = serde_json::json!([{"first": 0, "count": count}]);
        what.push(format!("initial_nonzero_pages count={count}"));
    }
    for _ in 0..1 + rng.below(3) {
        let mut paths = Vec::new();
        json_paths(&m, &mut Vec::new(), &mut paths);
        let p = rng.pick(&paths).clone();
        let Some((last, parent)) = p.split_last() else { continue };
        if rng.chance(8) {
            // Remove the field (or array element) altogether.
            match json_at(&mut m, parent) {
                Some(Value::Object(o)) => {
                    o.remove(last);
                }
                Some(Value::Array(a)) => {
                    a.remove(last.parse::<usize>().unwrap());
                }
                _ => {}
            }
            what.push(format!("remove {}", p.join(".")));
            continue;
        }
        let slot = json_at(&mut m, &p).unwrap();
        let new = extreme_json(rng, slot);
        what.push(format!("{}={}", p.join("."), short(&new.to_string())));
        *slot = new;
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    format!("manifest {}", what.join(", "))
}

fn short(s: &str) -> String {
    if s.len() > 40 {
        format!("{}…({} bytes)", s.chars().take(40).collect::<String>(), s.len())
    } else {
        s.to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// Parquet cells.

const U64S: [u64; 12] = [0, 1, 4294967295, 1 << 32, 1 << 36, 1 << 40, 1 << 45, 1 << 53, 1 << 62, 1 << 63, u64::MAX, 7];
const F64S: [f64; 13] =
    [0.0, -0.0, -1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e-300, 1e300, f64::MAX, 5e-324, 1e-9, 3600.0, 1e15];

fn zstd_bomb() -> Vec<u8> {
    zstd::bulk::compress(&vec![0u8; 64 << 20], 19).unwrap()
}

/// Replaces cell `row` of column `c` with a hostile value of the same type (or changes the
/// column's type, or makes the cell null).
fn mutate_cell(rng: &mut Rng, b: &RecordBatch, c: usize, row: usize, bomb: &[u8]) -> (RecordBatch, String) {
    let col = b.column(c);
    let name = b.schema().field(c).name().clone();
    let n = b.num_rows();
    let mut nullable = false;
    let new: ArrayRef = if rng.chance(25) {
        nullable = true;
        // A null where the schema says there is none.
        let mask = BooleanArray::from_iter((0..n).map(|i| Some(i != row)));
        arrow::compute::nullif(col, &arrow::compute::not(&mask).unwrap()).unwrap()
    } else if rng.chance(25) {
        // The wrong type altogether.
        Arc::new(StringArray::from_iter_values((0..n).map(|i| format!("{i}"))))
    } else {
        match col.data_type() {
            DataType::UInt64 => {
                let a = col.as_any().downcast_ref::<UInt64Array>().unwrap();
                let mut v = a.values().to_vec();
                v[row] = if rng.chance(3) {
                    v[row].wrapping_add(rng.below(3) as u64).wrapping_sub(1)
                } else {
                    *rng.pick(&U64S)
                };
                Arc::new(UInt64Array::from(v))
            }
            DataType::UInt32 => {
                let a = col.as_any().downcast_ref::<UInt32Array>().unwrap();
                let mut v = a.values().to_vec();
                v[row] = *rng.pick(&[0, 1, u32::MAX, v[row].wrapping_add(1)]);
                Arc::new(UInt32Array::from(v))
            }
            DataType::Float64 => {
                let a = col.as_any().downcast_ref::<Float64Array>().unwrap();
                let mut v: Vec<Option<f64>> = a.iter().collect();
                v[row] = Some(if rng.chance(3) { v[row].unwrap_or(0.0) * (1.0 + 1e-6) } else { *rng.pick(&F64S) });
                Arc::new(Float64Array::from(v))
            }
            DataType::Boolean => {
                let a = col.as_any().downcast_ref::<BooleanArray>().unwrap();
                let mut v: Vec<bool> = a.iter().map(|x| x.unwrap_or(false)).collect();
                v[row] = !v[row];
                Arc::new(BooleanArray::from(v))
            }
            DataType::Utf8 => {
                let a = col.as_any().downcast_ref::<StringArray>().unwrap();
                let mut v: Vec<String> = a.iter().map(|x| x.unwrap_or("").to_string()).collect();
                let reps = 1 + rng.below(2000);
                v[row] = rng
                    .pick(&[
                        String::new(),
                        "é€😀".repeat(reps),
                        "x".repeat(4097),
                        "\n".into(),
                        "a\0b".into(),
                        "zstd2".into(),
                        "varint-gaps".into(),
                        format!("{}é", v[row]),
                    ])
                    .clone();
                Arc::new(StringArray::from_iter_values(v))
            }
            DataType::Binary => {
                let a = col.as_any().downcast_ref::<BinaryArray>().unwrap();
                let mut v: Vec<Vec<u8>> = a.iter().map(|x| x.unwrap_or(&[]).to_vec()).collect();
                let cell = &mut v[row];
                match rng.below(6) {
                    0 => cell.clear(),
                    1 if !cell.is_empty() => {
                        let i = rng.below(cell.len());
                        cell[i] ^= 1 << rng.below(8);
                    }
                    2 => cell.truncate(rng.below(cell.len() + 1)),
                    3 => *cell = bomb.to_vec(),
                    4 => *cell = zstd::bulk::compress(&vec![0xffu8; 8 * (1 + rng.below(64))], 1).unwrap(),
                    _ => *cell = (0..rng.below(100)).map(|_| rng.next() as u8).collect(),
                }
                Arc::new(BinaryArray::from_iter_values(v.iter().map(|x| x.as_slice())))
            }
            DataType::List(_) => {
                let a = col.as_any().downcast_ref::<ListArray>().unwrap();
                let float = matches!(a.value_type(), DataType::Float64);
                let pick_len = rng.below(4);
                if float {
                    let mut bld = ListBuilder::new(Float64Builder::new());
                    for i in 0..n {
                        let vals = a.value(i);
                        let vals = vals.as_any().downcast_ref::<Float64Array>().unwrap();
                        if i == row {
                            for _ in 0..pick_len {
                                bld.values().append_value(*rng.pick(&F64S));
                            }
                        } else {
                            bld.values().append_slice(vals.values());
                        }
                        bld.append(true);
                    }
                    Arc::new(bld.finish())
                } else {
                    let mut bld = ListBuilder::new(UInt64Builder::new());
                    for i in 0..n {
                        let vals = a.value(i);
                        let vals = vals.as_any().downcast_ref::<UInt64Array>().unwrap();
                        if i == row {
                            for _ in 0..pick_len {
                                bld.values().append_value(*rng.pick(&U64S));
                            }
                        } else {
                            bld.values().append_slice(vals.values());
                        }
                        bld.append(true);
                    }
                    Arc::new(bld.finish())
                }
            }
            other => panic!("a column of type {other}"),
        }
    };
    let mut fields: Vec<Field> = b.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    fields[c] = Field::new(name.clone(), new.data_type().clone(), nullable || fields[c].is_nullable());
    let mut cols = b.columns().to_vec();
    cols[c] = new;
    (RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap(), format!("{name}[{row}]"))
}

/// Row `row` of `bitmaps.parquet` becomes a `varint-gaps` bitmap a liar would write: gaps that
/// repeat a page or pass the slot's end, too many pages, a number cut off or longer than 64
/// bits, a `dirty_pages` or `raw_bytes` that disagrees, or a valid-looking stream of other pages.
/// `None` when an earlier mutation of the case left no such columns to write.
fn hostile_gaps(rng: &mut Rng, b: &RecordBatch, row: usize) -> Option<(RecordBatch, String)> {
    let schema = b.schema();
    for (n, t) in [
        ("num_pages", DataType::UInt64),
        ("dirty_pages", DataType::UInt64),
        ("raw_bytes", DataType::UInt64),
        ("encoding", DataType::Utf8),
        ("data", DataType::Binary),
    ] {
        if schema.field_with_name(n).ok()?.data_type() != &t {
            return None;
        }
    }
    let col = |n: &str| b.schema().index_of(n).unwrap();
    let u64s = |n: &str| b.column(col(n)).as_any().downcast_ref::<UInt64Array>().unwrap().values().to_vec();
    let num_pages = u64s("num_pages")[row];
    let mut nums: Vec<u64> = (0..1 + rng.below(200)).map(|_| 1 + rng.below(64) as u64).collect();
    let mut what = vec![];
    match rng.below(5) {
        0 => {
            let i = rng.below(nums.len());
            nums[i] = 0;
            what.push(format!("gap {i} zero"));
        }
        1 => {
            let i = rng.below(nums.len());
            nums[i] = *rng.pick(&[num_pages, num_pages.wrapping_sub(1), u64::MAX, 1 << 63, 1 << 32]);
            what.push(format!("gap {i} = {}", nums[i]));
        }
        2 => {
            nums = vec![1; num_pages as usize + 1 + rng.below(100)];
            what.push(format!("{} pages", nums.len()));
        }
        _ => what.push(format!("{} gaps", nums.len())),
    }
    let mut stream = varints(&nums);
    match rng.below(6) {
        0 => {
            stream.push(0x80);
            what.push("cut off".into());
        }
        1 => {
            stream.extend([0xFF; 11]);
            what.push("a number of 11 bytes".into());
        }
        2 => {
            stream.extend([0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x02]);
            what.push("a number past 64 bits".into());
        }
        _ => {}
    }
    let count = nums.len() as u64;
    let dirty = *rng.pick(&[count, count, count + 1, count.saturating_sub(1), 0, u64::MAX]);
    let len = stream.len() as u64;
    let raw = *rng.pick(&[len, len, len + 1, len.saturating_sub(1), 0, num_pages.div_ceil(64) * 8, u64::MAX]);
    what.push(format!("dirty_pages {dirty}, raw_bytes {raw} of {len}"));
    let mut cols = b.columns().to_vec();
    let mut set_u64 = |n: &str, v: u64| {
        let mut vals = u64s(n);
        vals[row] = v;
        cols[col(n)] = Arc::new(UInt64Array::from(vals));
    };
    set_u64("dirty_pages", dirty);
    set_u64("raw_bytes", raw);
    let enc = b.column(col("encoding")).as_any().downcast_ref::<StringArray>().unwrap();
    let mut e: Vec<String> = enc.iter().map(|x| x.unwrap_or("").to_string()).collect();
    e[row] = "varint-gaps".into();
    cols[col("encoding")] = Arc::new(StringArray::from_iter_values(e));
    let data = b.column(col("data")).as_any().downcast_ref::<BinaryArray>().unwrap();
    let mut d: Vec<Vec<u8>> = data.iter().map(|x| x.unwrap_or(&[]).to_vec()).collect();
    d[row] = zstd::bulk::compress(&stream, 1).unwrap();
    cols[col("data")] = Arc::new(BinaryArray::from_iter_values(d.iter().map(|x| x.as_slice())));
    Some((RecordBatch::try_new(b.schema(), cols).unwrap(), format!("varint-gaps row {row}: {}", what.join(", "))))
}

fn mutate_table(rng: &mut Rng, dir: &Path, file: &str, bomb: &[u8]) -> String {
    let path = dir.join(file);
    let mut b = read_table(&path);
    let mut what = Vec::new();
    for _ in 0..1 + rng.below(2) {
        let n = b.num_rows();
        match rng.below(10) {
            0 => {
                // Rows out of order, repeated or missing.
                let mut idx: Vec<u32> = (0..n as u32).collect();
                match rng.below(3) {
                    0 => idx.swap(rng.below(n), rng.below(n)),
                    1 => idx.insert(rng.below(n), rng.below(n) as u32),
                    _ => {
                        idx.remove(rng.below(n));
                    }
                }
                let cols = b
                    .columns()
                    .iter()
                    .map(|c| arrow::compute::take(c, &UInt32Array::from(idx.clone()), None).unwrap())
                    .collect();
                b = RecordBatch::try_new(b.schema(), cols).unwrap();
                what.push("rows reordered".to_string());
            }
            2 if file == trace::BITMAPS => {
                let row = rng.below(n);
                if let Some((nb, w)) = hostile_gaps(rng, &b, row) {
                    b = nb;
                    what.push(w);
                }
            }
            1 => {
                // A column missing.
                let c = rng.below(b.num_columns());
                what.push(format!("drop column {}", b.schema().field(c).name()));
                b.remove_column(c);
            }
            _ => {
                let (c, r) = (rng.below(b.num_columns()), rng.below(n));
                let (nb, w) = mutate_cell(rng, &b, c, r, bomb);
                b = nb;
                what.push(w);
            }
        }
        if b.num_rows() == 0 {
            break;
        }
    }
    write_table(&path, &b);
    format!("{file} {}", what.join(", "))
}

/// Replaces column `name` of the table at `path` with `f(old column)`.
fn map_column(path: &Path, name: &str, f: impl FnOnce(&ArrayRef) -> ArrayRef) {
    let b = read_table(path);
    let c = b.schema().index_of(name).unwrap();
    let mut cols = b.columns().to_vec();
    cols[c] = f(&cols[c]);
    write_table(path, &RecordBatch::try_new(b.schema(), cols).unwrap());
}

fn map_f64(path: &Path, name: &str, f: impl Fn(f64) -> f64) {
    map_column(path, name, |c| {
        let a = c.as_any().downcast_ref::<Float64Array>().unwrap();
        Arc::new(Float64Array::from_iter_values(a.values().iter().map(|&x| f(x))))
    });
}

fn map_u64(path: &Path, name: &str, f: impl Fn(u64) -> u64) {
    map_column(path, name, |c| {
        let a = c.as_any().downcast_ref::<UInt64Array>().unwrap();
        Arc::new(UInt64Array::from_iter_values(a.values().iter().map(|&x| f(x))))
    });
}

/// Changes that keep the tables consistent with each other, so that they reach past the
/// reader's cross-checks: times scaled or shifted, intervals renumbered in both tables, every
/// phase renamed.
fn mutate_consistently(rng: &mut Rng, dir: &Path) -> String {
    let rates = dir.join(trace::RATES);
    match rng.below(4) {
        0 => {
            let k = *rng.pick(&[1e300, 1e-300, 1e12, 1e-12, 3.0, 1e9, 1e-6, 0.5]);
            for c in ["t_start_s", "t_end_s", "duration_s"] {
                map_f64(&rates, c, |x| x * k);
            }
            map_f64(&rates, "dirty_rate_bytes_per_s", |x| x / k);
            if rng.chance(2) {
                let mpath = dir.join(trace::MANIFEST);
                let mut m: Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
                m["interval_s"] = (m["interval_s"].as_f64().unwrap() * k).into();
                std::fs::write(&mpath, serde_json::to_vec(&m).unwrap()).unwrap();
            }
            format!("times scaled by {k}")
        }
        1 => {
            let off = *rng.pick(&[1e15, 3e8, 3.16e8, 1e-9, 86400.0, 1e300]);
            for c in ["t_start_s", "t_end_s"] {
                map_f64(&rates, c, |x| x + off);
            }
            format!("times shifted by {off}")
        }
        2 => {
            let (mul, add) =
                *rng.pick(&[(2u64, 0u64), (1000, 0), (1, 1), (1, 1 << 62), (1, u64::MAX - 200), (1 << 40, 7)]);
            let f = move |i: u64| i.wrapping_mul(mul).wrapping_add(add);
            map_u64(&rates, "interval", f);
            map_u64(&dir.join(trace::BITMAPS), "interval", f);
            format!("intervals renumbered i * {mul} + {add}")
        }
        _ => {
            let name =
                rng.pick(&[String::new(), "é".repeat(2048), "x".repeat(4096), "😀".repeat(1024), "a b".into()]).clone();
            map_column(&rates, "phase", |c| {
                Arc::new(StringArray::from_iter_values((0..c.len()).map(|_| name.as_str())))
            });
            format!("every phase named {}", short(&name))
        }
    }
}

/// Raw damage to a file's bytes: bit flips, truncation.
fn mutate_bytes(rng: &mut Rng, path: &Path) -> String {
    let mut bytes = std::fs::read(path).unwrap();
    let what = if rng.chance(3) {
        let cut = rng.below(bytes.len());
        bytes.truncate(cut);
        format!("truncated at {cut}")
    } else {
        let k = 1 + rng.below(8);
        for _ in 0..k {
            let i = rng.below(bytes.len());
            bytes[i] ^= 1 << rng.below(8);
        }
        format!("{k} bit flips")
    };
    std::fs::write(path, bytes).unwrap();
    format!("{} {what}", path.file_name().unwrap().to_string_lossy())
}

// ---------------------------------------------------------------------------------------------
// Journals.

/// Offsets, within a payload, of the first blob's fields.
fn blob_offsets(payload: &[u8]) -> usize {
    let row_len = u32::from_le_bytes(payload[..4].try_into().unwrap()) as usize;
    4 + row_len + 4
}

fn mutate_journal(rng: &mut Rng, base: &Base, bomb: &[u8]) -> (Vec<u8>, String) {
    let mut j = base.journal.clone();
    let (at, len) = *rng.pick(&base.frames);
    let what = match rng.below(13) {
        0 => {
            let i = rng.below(j.len());
            j[i] ^= 1 << rng.below(8);
            format!("bit flip at {i}")
        }
        1 => {
            let cut = rng.below(j.len() + 1);
            j.truncate(cut);
            format!("truncated at {cut}")
        }
        2 => {
            let from = rng.below(j.len());
            let to = (from + rng.below(4000)).min(j.len());
            let piece = j[from..to].to_vec();
            let at = rng.below(j.len());
            j.splice(at..at, piece);
            format!("splice {from}..{to} at {at}")
        }
        3 => {
            let garbage: Vec<u8> =
                (0..rng.below(300)).map(|_| if rng.chance(20) { b'D' } else { rng.next() as u8 }).collect();
            j.splice(at..at, garbage.iter().copied());
            format!("{} bytes of garbage before the frame at {at}", garbage.len())
        }
        4 => {
            let v = *rng.pick(&[0u32, 1, 11, u32::MAX, (len as u32).wrapping_sub(11), len as u32 + 1, 256 << 20]);
            j[at + 4..at + 8].copy_from_slice(&v.to_le_bytes());
            format!("payload_len {v} at {at}")
        }
        5 => {
            let v = *rng.pick(&[0u32, 2, u32::MAX, 0x7fff_ffff]);
            rewrite_frame(&mut j, at, len, |p| {
                let o = blob_offsets(p) - 4;
                p[o..o + 4].copy_from_slice(&v.to_le_bytes());
            });
            format!("blob_count {v}, valid CRC, at {at}")
        }
        6 => {
            // A lying size field of the first blob, with a valid CRC.
            let field = rng.below(5);
            let v = *rng.pick(&U64S);
            rewrite_frame(&mut j, at, len, |p| {
                let o = blob_offsets(p);
                let (off, width) = [(0, 4), (4, 8), (12, 8), (21, 8), (29, 8)][field];
                p[o + off..o + off + width].copy_from_slice(&v.to_le_bytes()[..width]);
            });
            format!(
                "blob field {} = {v}, valid CRC, at {at}",
                ["slot", "first_page", "num_pages", "raw_bytes", "dirty_pages"][field]
            )
        }
        7 => {
            let v = *rng.pick(&[0u32, u32::MAX, 1 << 30]);
            rewrite_frame(&mut j, at, len, |p| {
                let o = blob_offsets(p) + 37;
                p[o..o + 4].copy_from_slice(&v.to_le_bytes());
            });
            format!("data_len {v}, valid CRC, at {at}")
        }
        8 => {
            rewrite_frame(&mut j, at, len, |p| {
                let o = blob_offsets(p);
                let data_len = u32::from_le_bytes(p[o + 37..o + 41].try_into().unwrap()) as usize;
                let mut np = p[..o + 37].to_vec();
                np.extend_from_slice(&(bomb.len() as u32).to_le_bytes());
                np.extend_from_slice(bomb);
                np.extend_from_slice(&p[o + 41 + data_len..]);
                *p = np;
            });
            format!("zstd bomb as data, valid CRC, at {at}")
        }
        9 => {
            // A field of the row's JSON, with a valid CRC.
            let mut desc = String::new();
            rewrite_frame(&mut j, at, len, |p| {
                let row_len = u32::from_le_bytes(p[..4].try_into().unwrap()) as usize;
                let mut row: Value = serde_json::from_slice(&p[4..4 + row_len]).unwrap();
                let keys: Vec<String> = row.as_object().unwrap().keys().cloned().collect();
                let k = rng.pick(&keys).clone();
                let new = extreme_json(rng, &row[&k]);
                desc = format!("{k}={}", short(&new.to_string()));
                row[&k] = new;
                let json = serde_json::to_vec(&row).unwrap();
                let mut np = (json.len() as u32).to_le_bytes().to_vec();
                np.extend_from_slice(&json);
                np.extend_from_slice(&p[4 + row_len..]);
                *p = np;
            });
            format!("row {desc}, valid CRC, at {at}")
        }
        11 => {
            // The first blob's encoding byte (1: varint-gaps over a zstd frame of raw words),
            // with a valid CRC.
            let v = *rng.pick(&[1u8, 2, 0xFF]);
            rewrite_frame(&mut j, at, len, |p| {
                let o = blob_offsets(p);
                p[o + 20] = v;
            });
            format!("blob encoding {v}, valid CRC, at {at}")
        }
        10 => {
            let v = *rng.pick(&[0u32, u32::MAX, 1 << 28]);
            rewrite_frame(&mut j, at, len, |p| p[..4].copy_from_slice(&v.to_le_bytes()));
            format!("row_len {v}, valid CRC, at {at}")
        }
        _ => {
            let which = rng.below(4);
            j = match which {
                0 => Vec::new(),
                1 => journal::FILE_MAGIC.to_vec(),
                2 => b"DTJOURN2".to_vec(),
                _ => journal::FILE_MAGIC[..3].to_vec(),
            };
            format!("journal replaced ({which})")
        }
    };
    (j, what)
}

// ---------------------------------------------------------------------------------------------
// Specs and command-line values.

fn spec_value(rng: &mut Rng, key: &str) -> String {
    let values: &[&str] = &[
        "0",
        "-1",
        "\"0\"",
        "\"-1s\"",
        "18446744073709551615",
        "9223372036854775807",
        "1e400",
        "nan",
        "inf",
        "-inf",
        "\"NaN\"",
        "\"inf\"",
        "\"1e400MiB\"",
        "\"1e-12B/s\"",
        "\"1B/s\"",
        "\"max\"",
        "\"\"",
        "\"é\"",
        "true",
        "[1, 2]",
        "{ a = 1 }",
        "\"18446744073709551615\"",
        "\"36028797018963968s\"",
        "\"1e30s\"",
        "\"3650days\"",
        "\"10000000h\"",
        "\"4GiB\"",
        "\"256GiB\"",
        "\"1TiB\"",
        "\"4097\"",
        "\"1PB/s\"",
        "\"1.5\"",
        "0.5",
        "1.0000001",
    ];
    let long_name = format!("\"{}\"", "n".repeat(5000));
    let mb_name = format!("\"{}\"", "é😀".repeat(1 + rng.below(2000)));
    if key == "name" && rng.chance(2) {
        return rng.pick(&[long_name, mb_name]).clone();
    }
    rng.pick(values).to_string()
}

fn mutate_spec(rng: &mut Rng) -> (String, Option<u64>, Option<u32>) {
    let mut top = vec![("mem", "\"16MiB\"".to_string()), ("vcpus", "2".into()), ("seed", "3".into())];
    let mut phases = Vec::new();
    for i in 0..1 + rng.below(3) {
        phases.push(vec![
            ("name", format!("\"p{i}\"")),
            ("duration", "\"0.3s\"".into()),
            ("working_set", "\"4MiB\"".into()),
            ("rate", "\"8MiB/s\"".into()),
            ("pattern", if i == 1 { "\"hotcold\"" } else { "\"random\"" }.into()),
            ("hot_fraction", "0.2".into()),
            ("hot_share", "0.8".into()),
            ("cpu", "1.0".into()),
        ]);
    }
    for _ in 0..1 + rng.below(3) {
        if rng.chance(4) {
            let i = rng.below(top.len());
            top[i].1 = spec_value(rng, top[i].0);
        } else {
            let p = rng.below(phases.len());
            let i = rng.below(phases[p].len());
            phases[p][i].1 = spec_value(rng, phases[p][i].0);
        }
    }
    if rng.chance(10) {
        let p = rng.below(phases.len());
        let i = rng.below(phases[p].len());
        phases[p].remove(i);
    }
    let mut text = String::new();
    for (k, v) in &top {
        text += &format!("{k} = {v}\n");
    }
    for p in &phases {
        text += "[[phase]]\n";
        for (k, v) in p {
            text += &format!("{k} = {v}\n");
        }
    }
    let mem = rng.chance(8).then(|| *rng.pick(&[0u64, 4096, 1 << 40, u64::MAX, 4 << 20]));
    let vcpus = rng.chance(8).then(|| *rng.pick(&[0u32, 65, u32::MAX, 4]));
    (text, mem, vcpus)
}

fn cli_value(rng: &mut Rng, units: &[&str]) -> String {
    let numbers = [
        "0",
        "1",
        "1.5",
        "1e-12",
        "1e308",
        "1e400",
        "-1",
        "NaN",
        "inf",
        "18446744073709551615",
        "36028797018963968",
        "0.000000001",
        "",
        "1e",
        "--1",
        "3e9",
        "86401",
    ];
    format!("{}{}", rng.pick(&numbers), rng.pick(units))
}

const DURATION_UNITS: [&str; 11] = ["", "s", "ms", "us", "µs", "ns", "min", "h", "d", "é", " s"];
const RATE_UNITS: [&str; 10] = ["B/s", "bit/s", "Gbit/s", "TB/s", "MiB/s", "", "kb/s", "Mbps", "B", "x/s"];
const SIZE_UNITS: [&str; 8] = ["", "B", "KiB", "MiB", "GiB", "TiB", "TB", "PiB"];

// ---------------------------------------------------------------------------------------------
// Running a case.

/// Reads all of the trace in `dir` with the library's reader.
fn read_trace(rng: &mut Rng, dir: &Path) -> Result<Trace, String> {
    let t = Trace::open(dir).map_err(|e| e.to_string())?;
    let rows = t.rates().map_err(|e| e.to_string())?;
    for item in t.intervals().map_err(|e| e.to_string())? {
        item.map_err(|e| e.to_string())?;
    }
    if let Some(r) = rows.get(rng.below(rows.len() + 1)) {
        t.bitmap(r.interval).map_err(|e| e.to_string())?;
    }
    Ok(t)
}

/// Runs every reader over `dir`. Errors are fine; panics, aborts and hangs are not.
fn read_everything(rng: &mut Rng, dir: &Path) -> Result<(), String> {
    let t = read_trace(rng, dir)?;
    let _ = t.guest_log();
    let mut so = summary::SummaryOptions::default();
    if rng.chance(4) {
        so.phase = Some(rng.pick(&["seq", "hot", "idle", "nope", ""]).to_string());
        so.top_pages = *rng.pick(&[0, 1, usize::MAX]);
    }
    summary::summarize(&t, &so).map_err(|e| e.to_string())?;
    if rng.chance(8) {
        let out = dir.join(if rng.chance(2) { "p.svg" } else { "p.png" });
        dirtytrace::analysis::plot::plot(&t, &dirtytrace::analysis::plot::PlotOptions::new(out))
            .map_err(|e| e.to_string())?;
    }
    simgrid::fit(&t, &simgrid::SimgridOptions::default()).map_err(|e| e.to_string())?;
    let mut o = replay::ReplayOptions::new(*rng.pick(&[1e-12, 1.0, 1e6, 64e6, 1e9, 1e15]));
    o.precopy.looped = rng.chance(2);
    o.precopy.zero_pages = if rng.chance(2) { replay::ZeroPages::Skip } else { replay::ZeroPages::Send };
    replay::replay(&t, &o).map_err(|e| e.to_string())?;
    Ok(())
}

/// One error message: not empty, one line.
fn check_message(msg: &str) -> Result<(), String> {
    if msg.trim().is_empty() || msg.contains('\n') {
        return Err(format!("error message is empty or spans lines: {msg:?}"));
    }
    Ok(())
}

/// Runs case `n` of `seed`; `Err` is a failed property (not a reader's error).
fn run_case(seed: u64, n: u64, base: &Base, work: &Path, bomb: &[u8]) -> (usize, String, Result<bool, String>) {
    let mut rng = Rng::new(seed ^ n.wrapping_mul(0xD1B5_4A32_D192_ED03));
    let class = rng.below(9);
    let dir = work.join("case");
    // Each case starts from nothing: the copies of the base trace are made into an empty `dir`.
    let _ = std::fs::remove_dir_all(&dir);
    let (what, result) = match class {
        0 | 1 => {
            copy_dir(&base.dir, &dir);
            let what = mutate_manifest(&mut rng, &dir);
            (what, read_everything(&mut rng, &dir))
        }
        2 => {
            copy_dir(&base.dir, &dir);
            let what = mutate_table(&mut rng, &dir, trace::RATES, bomb);
            (what, read_everything(&mut rng, &dir))
        }
        3 => {
            copy_dir(&base.dir, &dir);
            let what = mutate_table(&mut rng, &dir, trace::BITMAPS, bomb);
            (what, read_everything(&mut rng, &dir))
        }
        4 => {
            copy_dir(&base.dir, &dir);
            let f = *rng.pick(&[trace::RATES, trace::BITMAPS, trace::GUEST_LOG]);
            let what = mutate_bytes(&mut rng, &dir.join(f));
            (what, read_everything(&mut rng, &dir))
        }
        5 => {
            copy_dir(&base.dir, &dir);
            let (j, what) = mutate_journal(&mut rng, base, bomb);
            let mpath = dir.join(trace::MANIFEST);
            let mut m: Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
            m["status"] = "recording".into();
            m["intervals"] = 0.into();
            std::fs::write(&mpath, serde_json::to_vec(&m).unwrap()).unwrap();
            std::fs::remove_file(dir.join(trace::RATES)).unwrap();
            std::fs::remove_file(dir.join(trace::BITMAPS)).unwrap();
            std::fs::write(dir.join(trace::JOURNAL), &j).unwrap();
            let result = match trace::finalize(&dir, TraceStatus::Recovered) {
                Err(e) => Err(e.to_string()),
                // What `recover` builds must always open and read.
                Ok(_) => match read_trace(&mut rng, &dir) {
                    Err(e) => return (class, what, Err(format!("recover built a trace its reader refuses: {e}"))),
                    Ok(_) => read_everything(&mut rng, &dir),
                },
            };
            (what, result)
        }
        6 => {
            let (text, mem, vcpus) = mutate_spec(&mut rng);
            let what = format!("spec {} (mem {mem:?}, vcpus {vcpus:?})", short(&text.replace('\n', "; ")));
            let result = match WorkloadSpec::parse(&text, mem, vcpus) {
                Err(e) => Err(e.to_string()),
                Ok(spec) => match GuestPlan::new(&spec) {
                    Err(e) => Err(e.to_string()),
                    Ok(_) => {
                        let total = spec.total_duration();
                        let small = spec.mem_bytes <= 64 << 20 && total <= Duration::from_secs(2);
                        if small
                            && spec.phases.iter().all(|p| p.rate != dirtytrace::guest::synthetic::spec::WriteRate::Max)
                        {
                            let _ = std::fs::remove_dir_all(&dir);
                            let opts = GenerateOptions { interval: Duration::from_millis(100), ..Default::default() };
                            match generate(&dir, &text, &opts) {
                                // Checks belong before recording: once intervals are harvested,
                                // none may be dropped at finalisation.
                                Ok(m) => {
                                    let want = total.as_nanos().div_ceil(100_000_000) as u64;
                                    if m.intervals != want {
                                        return (
                                            class,
                                            what,
                                            Err(format!("generated {} intervals, not {want}", m.intervals)),
                                        );
                                    }
                                    read_everything(&mut rng, &dir)
                                }
                                Err(e) => Err(format!("{e:#}")),
                            }
                        } else {
                            Ok(())
                        }
                    }
                },
            };
            (what, result)
        }
        8 => {
            copy_dir(&base.dir, &dir);
            let what = mutate_consistently(&mut rng, &dir);
            (what, read_everything(&mut rng, &dir))
        }
        _ => {
            let d = cli_value(&mut rng, &DURATION_UNITS);
            let r = cli_value(&mut rng, &RATE_UNITS);
            let s = cli_value(&mut rng, &SIZE_UNITS);
            let _ = dirtytrace::units::parse_duration(&d);
            let _ = dirtytrace::units::parse_rate(&r);
            let _ = dirtytrace::units::parse_size(&s);
            let what = format!("cli duration {d:?} rate {r:?} size {s:?}");
            if rng.chance(3) {
                (what, cli_case(&mut rng, &base.dir, &d, &r))
            } else {
                (what, Ok(()))
            }
        }
    };
    // A case whose input every reader accepted is counted apart from one refused with an error.
    let result = match result {
        Ok(()) => Ok(true),
        Err(e) if e.starts_with("recover built") || e.starts_with("generated") => Err(e),
        Err(e) => check_message(&e).map(|()| false),
    };
    (class, what, result)
}

/// The CLI in a subprocess, with hostile flag values.
fn cli_case(rng: &mut Rng, trace_dir: &Path, d: &str, r: &str) -> Result<(), String> {
    let t = trace_dir.to_str().unwrap();
    let args: Vec<String> = match rng.below(3) {
        0 => {
            let mut a = vec!["replay", t, "--bandwidth", r].into_iter().map(String::from).collect::<Vec<_>>();
            let flag = *rng.pick(&["--max-downtime", "--start", "--max-time", "--max-rounds"]);
            let v = if flag == "--max-rounds" {
                rng.pick(&["0", "1", "4294967295", "4294967296", "-1"]).to_string()
            } else {
                d.to_string()
            };
            a.extend([flag.to_string(), v]);
            if rng.chance(2) {
                a.push("--loop".into());
            }
            a
        }
        1 => vec!["simgrid".into(), t.into(), "--migration-speed".into(), r.into()],
        _ => vec![
            "summarize".into(),
            t.into(),
            "--top".into(),
            rng.pick(&["0", "18446744073709551615", "-1", "5"]).to_string(),
        ],
    };
    // The long run may use a copy of the binary (`DIRTYTRACE_FUZZ_BIN`), so rebuilds meanwhile
    // do not pull it from under the run.
    let exe = std::env::var_os("DIRTYTRACE_FUZZ_BIN").map_or_else(bin, PathBuf::from);
    let mut child = Command::new(exe).args(&args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            let code = status.code();
            if code.is_none() || code == Some(101) || code == Some(134) || err.contains("panicked") {
                return Err(format!("crash: {args:?} exit {code:?}: {err}"));
            }
            return match code {
                Some(0) => Ok(()),
                _ => check_message(err.trim_end()),
            };
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("hang: {args:?} ran 60 s"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------------------
// The child and the parent.

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// The child: runs cases `FROM..` until told to stop, printing `case N` before each and
/// `ok N CLASS`, `err N CLASS` or `FAIL N ...` after.
#[test]
fn fuzz_child() {
    let Some(seed) = env_u64("DIRTYTRACE_FUZZ_CHILD_SEED") else { return };
    let from = env_u64("DIRTYTRACE_FUZZ_CHILD_FROM").unwrap_or(0);
    let until = env_u64("DIRTYTRACE_FUZZ_CHILD_UNTIL").unwrap_or(u64::MAX);
    let deadline_unix = env_u64("DIRTYTRACE_FUZZ_CHILD_DEADLINE").unwrap_or(u64::MAX);
    let work = PathBuf::from(std::env::var("DIRTYTRACE_FUZZ_CHILD_WORK").unwrap());
    let suite = std::env::var("DIRTYTRACE_FUZZ_CHILD_SUITE").unwrap_or_default();
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_AS, CHILD_ADDRESS_SPACE, CHILD_ADDRESS_SPACE)
        .unwrap();
    let inputs_base = (suite == "inputs").then(|| inputs::base(&work));
    let base = inputs_base.is_none().then(|| (base(&work), zstd_bomb()));
    let mut out = std::io::stdout().lock();
    for n in from..until {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        if now >= deadline_unix {
            break;
        }
        writeln!(out, "case {n}").unwrap();
        out.flush().unwrap();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match &inputs_base {
            Some(ib) => {
                inputs::run_case(&mut Rng::new(seed ^ n.wrapping_mul(0xD1B5_4A32_D192_ED03)), ib, &work.join("icase"))
            }
            None => {
                let (base, bomb) = base.as_ref().unwrap();
                run_case(seed, n, base, &work, bomb)
            }
        }));
        match caught {
            Ok((class, _, Ok(accepted))) => writeln!(out, "done {n} {class} {}", accepted as u8).unwrap(),
            Ok((class, what, Err(e))) => writeln!(out, "FAIL {n} class {class}: {what}: {}", short_line(&e)).unwrap(),
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                writeln!(out, "FAIL {n} panic: {}", short_line(&msg)).unwrap();
            }
        }
        out.flush().unwrap();
    }
    writeln!(out, "finished").unwrap();
}

fn short_line(s: &str) -> String {
    s.replace('\n', " | ").chars().take(400).collect()
}

/// The parent: runs children until the time is up, and fails on any crash, hang or failed
/// property, naming the seed and case.
#[test]
fn fuzz_traces_journals_specs_and_flags() {
    let secs = env_u64("DIRTYTRACE_FUZZ_SECS").unwrap_or(45);
    let seed =
        env_u64("DIRTYTRACE_FUZZ_SEED").unwrap_or_else(|| dirtytrace::clock::now_ns() ^ std::process::id() as u64);
    let next = env_u64("DIRTYTRACE_FUZZ_FROM").unwrap_or(0);
    let until = env_u64("DIRTYTRACE_FUZZ_CASES").map_or(u64::MAX, |c| next + c);
    let classes = [
        "manifest",
        "manifest",
        "rates cells",
        "bitmaps cells",
        "file bytes",
        "journal",
        "spec",
        "flags",
        "consistent",
    ];
    fuzz("traces", &classes, seed, secs, next, until, HANG);
}

/// The inputs of `sweep`, `index` and `--rootfs` (`fuzz/inputs.rs`): a fixed seed and number of
/// cases by default, so that every run tries the same cases, each bounded by [`INPUTS_HANG`];
/// `DIRTYTRACE_FUZZ_SEED`, `_FROM`, `_CASES` and `_SECS` (a cap on the whole, default 45 s) as above.
#[test]
fn fuzz_grids_datasets_and_rootfs_tarballs() {
    let secs = env_u64("DIRTYTRACE_FUZZ_SECS").unwrap_or(45);
    let seed = env_u64("DIRTYTRACE_FUZZ_SEED").unwrap_or(INPUTS_SEED);
    let next = env_u64("DIRTYTRACE_FUZZ_FROM").unwrap_or(0);
    let until = next + env_u64("DIRTYTRACE_FUZZ_CASES").unwrap_or(INPUTS_CASES);
    fuzz("inputs", &inputs::CLASSES, seed, secs, next, until, INPUTS_HANG);
}

/// Runs cases `next..until` of `suite` in children, for `secs` at most.
fn fuzz(suite: &str, classes: &[&str], seed: u64, secs: u64, mut next: u64, until: u64, hang: Duration) {
    let work = Scratch::new(&format!("fuzz-{suite}"));
    let unix_now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let deadline = unix_now() + secs;
    eprintln!("fuzz {suite}: seed {seed}, {secs} s, from case {next} (DIRTYTRACE_FUZZ_SEED={seed} DIRTYTRACE_FUZZ_FROM=N DIRTYTRACE_FUZZ_CASES=1 replays case N)");
    let mut failures: Vec<String> = Vec::new();
    let (mut done, mut children) = (0u64, 0u64);
    let mut per_class = vec![0u64; classes.len()];
    let mut accepted = vec![0u64; classes.len()];
    let mut slowest = (0u64, Duration::ZERO);
    let started = Instant::now();
    while next < until && unix_now() < deadline {
        children += 1;
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["fuzz_child", "--exact", "--nocapture", "--test-threads=1"])
            .env("DIRTYTRACE_FUZZ_CHILD_SEED", seed.to_string())
            .env("DIRTYTRACE_FUZZ_CHILD_FROM", next.to_string())
            .env("DIRTYTRACE_FUZZ_CHILD_UNTIL", until.to_string())
            .env("DIRTYTRACE_FUZZ_CHILD_DEADLINE", deadline.to_string())
            .env("DIRTYTRACE_FUZZ_CHILD_WORK", work.join(format!("child{children}")))
            .env("DIRTYTRACE_FUZZ_CHILD_SUITE", suite)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // The child's stderr (panic messages) is kept for the report, the last few KiB of it.
        let stderr = child.stderr.take().unwrap();
        let tail = Arc::new(std::sync::Mutex::new(String::new()));
        let tail2 = tail.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut t = tail2.lock().unwrap();
                t.push_str(&line);
                t.push('\n');
                if t.len() > 8192 {
                    *t = t.chars().rev().take(4096).collect::<Vec<_>>().into_iter().rev().collect();
                }
            }
        });
        let mut current: Option<u64> = None;
        let mut since = Instant::now();
        let mut finished = false;
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    if let Some(n) = line.strip_prefix("case ") {
                        current = n.parse().ok();
                        since = Instant::now();
                    } else if let Some(rest) = line.strip_prefix("done ") {
                        let mut it = rest.split(' ');
                        let n: u64 = it.next().unwrap().parse().unwrap();
                        let class: usize = it.next().unwrap().parse().unwrap();
                        per_class[class] += 1;
                        accepted[class] += u64::from(it.next() == Some("1"));
                        if since.elapsed() > slowest.1 {
                            slowest = (n, since.elapsed());
                        }
                        done += 1;
                        next = n + 1;
                        current = None;
                    } else if line.starts_with("FAIL ") {
                        eprintln!("fuzz: {line}");
                        failures.push(line.clone());
                        done += 1;
                        next = current.map_or(next, |c| c + 1);
                        current = None;
                    } else if line == "finished" {
                        finished = true;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(n) = current.filter(|_| since.elapsed() > hang) {
                        let _ = child.kill();
                        failures.push(format!("HANG case {n}: no result after {} s", hang.as_secs()));
                        eprintln!("fuzz: {}", failures.last().unwrap());
                        done += 1;
                        next = n + 1;
                        break;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let status = child.wait().unwrap();
        if !finished && !status.success() {
            if let Some(n) = current {
                let t = tail.lock().unwrap().clone();
                failures.push(format!("CRASH case {n}: child {status}; its stderr ended:\n{t}"));
                eprintln!("fuzz: {}", failures.last().unwrap());
                done += 1;
                next = n + 1;
            }
        } else if finished {
            break;
        }
    }
    eprintln!(
        "fuzz {suite}: seed {seed}: {done} cases in {:.0} s ({children} child process(es)); per class \
         {classes:?} = {per_class:?}, of which accepted without error {accepted:?}; slowest case {} ({:.1} s); \
         {} failure(s)",
        started.elapsed().as_secs_f64(),
        slowest.0,
        slowest.1.as_secs_f64(),
        failures.len()
    );
    let _ = std::fs::remove_dir_all(&work);
    assert!(done > 0, "no case ran");
    assert!(failures.is_empty(), "seed {seed}: {} failure(s):\n{}", failures.len(), failures.join("\n"));
}
