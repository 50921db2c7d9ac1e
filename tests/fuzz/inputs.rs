//! The fuzzer's second suite (issue 15): the inputs of `sweep`, `index` and `--rootfs`.
//!
//! - **Grids**: a valid grid whose keys, values, axes, sizes and workload are changed, or whose
//!   text is damaged, given to `sweep --dry-run` and to the sweep's plan (and, when the plan is
//!   small and short, swept with the KVM-free generator).
//! - **Dataset directories**: a generated dataset whose `dataset.json`, index tables, lock files,
//!   claims or traces are damaged, half-written, replaced by FIFOs, directories or symlinks to
//!   files outside it, or whose run is claimed (an `flock` held) by someone else; then `index`,
//!   a sweep or a dry run over it.
//! - **Rootfs tarballs**: a small tree plus deep paths, long and odd names, escaping names and
//!   links, huge declared sizes, device nodes, duplicates, then truncation, broken headers or
//!   compression; checked as `record` checks them, then packed.
//!
//! Each case must end, within the suite's bound per case, with a result or a one-line error
//! that names the input (the grid, the dataset, the tarball), and must lose nothing: the grid,
//! its workload, the tarball and files outside the dataset are byte for byte as they were, the
//! traces the case did not damage are unchanged, and every trace a sweep reports as done opens.

use super::{check_message, extreme_json, json_at, json_paths, mutate_bytes, short, Rng};
use dirtytrace::dataset::sweep::{self, Action, Engine, SweepOptions};
use dirtytrace::guest::linux::initramfs::{self, Contents, Inputs};
use dirtytrace::guest::synthetic::spec::WorkloadSpec;
use dirtytrace::trace::{self, Trace};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// The suite's classes, as the parent reports them.
pub const CLASSES: [&str; 3] = ["grid", "dataset", "rootfs"];

const WORKLOAD: &str = "mem = \"64MiB\"\nseed = 3\n[[phase]]\nname = \"load\"\nduration = \"0.3s\"\n\
working_set = \"4MiB\"\nrate = \"8MiB/s\"\n[[phase]]\nname = \"idle\"\nduration = \"0.2s\"\nrate = \"0\"\ncpu = 0.0\n";

/// A grid as sections of `key = value` lines, so that keys and values can be changed one by one.
type Sections = Vec<(String, Vec<(String, String)>)>;

fn base_grid() -> Sections {
    let s = |k: &str, v: &str| (k.to_string(), v.to_string());
    vec![
        (String::new(), vec![s("workload", "\"w.toml\"")]),
        ("record".into(), vec![s("interval", "\"100ms\""), s("migration_speed", "\"1Gbit/s\"")]),
        ("axes".into(), vec![s("\"load.rate\"", "[\"8MiB/s\", \"16MiB/s\"]"), s("repeat", "2")]),
        ("replay".into(), vec![s("bandwidths", "[\"1Gbit/s\", \"32MiB/s\"]"), s("start", "\"0.1s\"")]),
    ]
}

fn render(g: &Sections) -> String {
    let mut text = String::new();
    for (name, pairs) in g {
        if !name.is_empty() {
            text += &format!("[{name}]\n");
        }
        for (k, v) in pairs {
            text += &format!("{k} = {v}\n");
        }
    }
    text
}

const KEYS: [&str; 30] = [
    "rate",
    "\"load.rate\"",
    "\"idle.rate\"",
    "\"nope.rate\"",
    "\"load.nope\"",
    "\"a.b.c\"",
    "\"load.\"",
    "\".rate\"",
    "mem",
    "vcpus",
    "pattern",
    "\"load.pattern\"",
    "\"load.hot_fraction\"",
    "hot_share",
    "working_set",
    "\"load.working_set\"",
    "cpu",
    "repeat",
    "interval",
    "duration",
    "migration_speed",
    "packages",
    "engine",
    "exact_cut",
    "max_rounds",
    "bandwidths",
    "workload",
    "\"\"",
    "\"é\"",
    "RATE",
];

fn grid_value(rng: &mut Rng) -> String {
    let list = |n: usize, unit: &str| {
        format!("[{}]", (1..=n).map(|i| format!("\"{i}{unit}\"")).collect::<Vec<_>>().join(", "))
    };
    match rng.below(6) {
        0 => {
            let n = *rng.pick(&[1, 2, 3, 1000, 20000]);
            let unit = *rng.pick(&["KiB/s", "MiB", "ms", "s", ""]);
            list(n, unit)
        }
        1 => rng
            .pick(&[
                "[]",
                "[\"8MiB/s\", \"8MiB/s\"]",
                "[[1]]",
                "[1, \"a\"]",
                "[\"random\", \"sequential\", \"hotcold\"]",
                "[\"1e-300B/s\"]",
                "[\"1e400MiB/s\"]",
                "[0, 1, 2]",
                "[0.0, 0.5, 1.0, 1.5]",
                "[\"-1ms\", \"1ms\"]",
                "[\"kvm\", \"qemu\", \"nope\"]",
                "[true, false]",
            ])
            .to_string(),
        2 => rng
            .pick(&[
                "0",
                "-1",
                "1000000",
                "1000001",
                "18446744073709551615",
                "99999999999999999999",
                "4294967296",
                "\"3\"",
                "1e400",
                "nan",
                "inf",
            ])
            .to_string(),
        3 => rng
            .pick(&[
                "{ a = 1 }",
                "\"\"",
                "\"é😀\"",
                "\"1TiB\"",
                "\"1e30s\"",
                "\"300s\"",
                "\"1ms\"",
                "\"max\"",
                "[\"-oAPT::X=1\"]",
                "[\"stress-ng\", \"\"]",
                "\"qemu\"",
                "true",
            ])
            .to_string(),
        4 => format!("\"{}\"", "n".repeat(*rng.pick(&[300, 5000, 70000]))),
        _ => rng
            .pick(&[
                "\"missing.toml\"",
                "\"/dev/zero\"",
                "\"sub\"",
                "\"../outside.toml\"",
                "\"job.sh\"",
                "\"grid.toml\"",
                "\"w.toml\"",
                "\"sub/../w.toml\"",
                "\"w.toml\\u0000x\"",
            ])
            .to_string(),
    }
}

fn mutate_grid(rng: &mut Rng, g: &mut Sections) -> Vec<String> {
    let mut what = Vec::new();
    for _ in 0..rng.below(3) {
        let s = rng.below(g.len());
        match rng.below(6) {
            0 | 1 if !g[s].1.is_empty() => {
                let i = rng.below(g[s].1.len());
                let v = grid_value(rng);
                what.push(format!("[{}] {} = {}", g[s].0, g[s].1[i].0, short(&v)));
                g[s].1[i].1 = v;
            }
            2 if !g[s].1.is_empty() => {
                let i = rng.below(g[s].1.len());
                let k = rng.pick(&KEYS).to_string();
                what.push(format!("[{}] key {} renamed {k}", g[s].0, g[s].1[i].0));
                g[s].1[i].0 = k;
            }
            3 => {
                let (k, v) = (rng.pick(&KEYS).to_string(), grid_value(rng));
                what.push(format!("[{}] + {k} = {}", g[s].0, short(&v)));
                g[s].1.push((k, v));
            }
            4 if !g[s].1.is_empty() => {
                let i = rng.below(g[s].1.len());
                what.push(format!("[{}] - {}", g[s].0, g[s].1[i].0));
                g[s].1.remove(i);
            }
            _ => {
                if s > 0 && rng.chance(2) {
                    what.push(format!("- [{}]", g[s].0));
                    g.remove(s);
                } else {
                    let name = rng.pick(&["record", "axes", "replay", "spec", "nope", "axes.x", "record"]).to_string();
                    what.push(format!("+ [{name}]"));
                    g.push((name, vec![(rng.pick(&KEYS).to_string(), grid_value(rng))]));
                }
            }
        }
    }
    what
}

/// A file's bytes, or a note of what stands there instead.
fn snapshot(path: &Path) -> Vec<u8> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() && m.len() <= 64 << 20 => std::fs::read(path).unwrap_or_default(),
        Ok(m) => format!("{:?} {}", m.file_type(), m.len()).into_bytes(),
        Err(_) => b"absent".to_vec(),
    }
}

/// Every entry under `dir` (not following symlinks), with its bytes.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p.clone());
                out.insert(p, b"dir".to_vec());
            } else {
                out.insert(p.clone(), snapshot(&p));
            }
        }
    }
    out
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

fn fifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
}

/// Replaces whatever is at `path` with something hostile; returns what.
fn replace_with_odd(rng: &mut Rng, path: &Path, outside: &Path) -> String {
    if path.is_dir() {
        let _ = std::fs::remove_dir_all(path);
    } else {
        let _ = std::fs::remove_file(path);
    }
    match rng.below(6) {
        0 => {
            fifo(path);
            "a FIFO".into()
        }
        1 => {
            std::fs::create_dir(path).unwrap();
            "a directory".into()
        }
        2 => {
            std::os::unix::fs::symlink(outside, path).unwrap();
            "a symlink to a file outside".into()
        }
        3 => {
            std::fs::File::create(path).unwrap().set_len(1 << 30).unwrap();
            "1 GiB of zeros".into()
        }
        4 => {
            std::os::unix::fs::symlink("/dev/zero", path).unwrap();
            "a symlink to /dev/zero".into()
        }
        _ => "removed".into(),
    }
}

/// The error's text as people see it, checked: one line, naming one of `names`.
fn named_error(e: &(dyn std::error::Error + 'static), names: &[&str]) -> Result<(), String> {
    let msg = dirtytrace::errors::causes(e);
    check_message(&msg)?;
    if !names.iter().any(|n| msg.contains(n)) {
        return Err(format!("the error names none of {names:?}: {msg}"));
    }
    Ok(())
}

/// Whether every run of `plan` is small and short enough to generate in a case.
fn cheap(plan: &sweep::Plan) -> bool {
    plan.runs.len() <= 4
        && plan.runs.iter().all(|r| match &r.workload {
            dirtytrace::dataset::grid::RunWorkload::Synthetic { spec } => {
                let Ok(s) = WorkloadSpec::parse(spec, None, None) else { return false };
                let total = r.record.duration.map_or(s.total_duration(), |d| d.0.min(s.total_duration()));
                s.mem_bytes <= 256 << 20
                    && total <= Duration::from_millis(1500)
                    && r.record.interval.0 >= Duration::from_millis(50)
                    && s.phases.iter().all(|p| p.rate != dirtytrace::guest::synthetic::spec::WriteRate::Max)
            }
            _ => false,
        })
}

/// Every trace the report says is done opens and reads.
fn done_traces_open(ds: &Path, report: &sweep::SweepReport) -> Result<(), String> {
    for o in &report.outcomes {
        if matches!(o.action, Action::Recorded | Action::Rerecorded | Action::Recovered | Action::Skipped) {
            let dir = ds.join(dirtytrace::dataset::TRACES).join(&o.name);
            let t = Trace::open(&dir).map_err(|e| format!("{}: {:?} but does not open: {e}", o.name, o.action))?;
            t.check_tables().map_err(|e| format!("{}: {:?} but its tables are damaged: {e}", o.name, o.action))?;
        }
        if let Some(n) = &o.note {
            check_message(n)?;
        }
    }
    Ok(())
}

/// What the child sets up once: the workload, the base dataset, the base tarball's pieces.
pub struct Base {
    grid_dir: PathBuf,
    dataset: PathBuf,
    /// The base dataset's run names.
    runs: Vec<String>,
    journal: Vec<u8>,
}

pub fn base(work: &Path) -> Base {
    let grid_dir = work.join("inputs-base");
    std::fs::create_dir_all(&grid_dir).unwrap();
    std::fs::write(grid_dir.join("w.toml"), WORKLOAD).unwrap();
    let grid = grid_dir.join("grid.toml");
    std::fs::write(&grid, render(&base_grid())).unwrap();
    let dataset = grid_dir.join("ds");
    let mut o = SweepOptions::new(grid, dataset.clone());
    o.engine = Engine::Generate;
    let report = sweep::run(&sweep::plan(o).unwrap(), Arc::new(AtomicBool::new(false)), &sweep::Quiet).unwrap();
    assert_eq!(report.failed, 0);
    let runs: Vec<String> = report.outcomes.iter().map(|o| o.name.clone()).collect();
    let t = Trace::open(dataset.join(dirtytrace::dataset::TRACES).join(&runs[0])).unwrap();
    let (journal, _) = super::journal_of(&t);
    Base { grid_dir, dataset, runs, journal }
}

/// One case of the suite: (class, what was done, Ok(accepted) or a failed property).
pub fn run_case(rng: &mut Rng, base: &Base, dir: &Path) -> (usize, String, Result<bool, String>) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let class = rng.below(CLASSES.len());
    let (what, result) = match class {
        0 => grid_case(rng, dir),
        1 => dataset_case(rng, base, dir),
        _ => rootfs_case(rng, dir),
    };
    (class, what, result)
}

// ---------------------------------------------------------------------------------------------
// Grids.

fn grid_case(rng: &mut Rng, dir: &Path) -> (String, Result<bool, String>) {
    std::fs::write(dir.join("w.toml"), WORKLOAD).unwrap();
    std::fs::write(dir.join("job.sh"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::fs::write(dir.parent().unwrap().join("outside.toml"), WORKLOAD).unwrap();
    let mut g = base_grid();
    let mut what = mutate_grid(rng, &mut g);
    let mut text = render(&g).into_bytes();
    let grid = dir.join("grid.toml");
    match rng.below(12) {
        0 => {
            let cut = rng.below(text.len() + 1);
            text.truncate(cut);
            what.push(format!("text cut at {cut}"));
        }
        1 => {
            let at = rng.below(text.len() + 1);
            let junks: [&[u8]; 6] = [b"\xff\xfe", b"\0", b"[axes]\n", b"\n[[axes]]\n", b"=", b"\"\"\""];
            let junk = *rng.pick(&junks);
            text.splice(at..at, junk.iter().copied());
            what.push(format!("{junk:?} inserted at {at}"));
        }
        2 => {
            text.extend_from_slice(format!("# {}\n", "c".repeat(3 << 20)).as_bytes());
            what.push("3 MiB comment".into());
        }
        _ => {}
    }
    std::fs::write(&grid, &text).unwrap();
    if rng.chance(40) {
        std::fs::File::options().write(true).open(&grid).unwrap().set_len(1 << 30).unwrap();
        what.push("grid padded to 1 GiB".into());
    }
    if rng.chance(20) {
        std::fs::write(dir.join("w.toml"), b"mem = \"1TiB\"\n[[phase]]\nduration = \"1e30s\"\n").unwrap();
        what.push("workload damaged".into());
    }
    let out = dir.join("ds");
    let mut o = SweepOptions::new(grid.clone(), out.clone());
    o.engine = Engine::Generate;
    o.max_runs = *rng.pick(&[0, 1, 3, 1000, 20000]);
    let shard = *rng.pick(&["1/1", "1/1", "2/3", "1/2", "3/3"]);
    o.shard = shard.parse().unwrap();
    what.push(format!("max_runs {} shard {shard}", o.max_runs));
    let what = format!("grid {}", what.join(", "));
    let before = tree(dir.parent().unwrap());
    let names = [grid.to_str().unwrap(), "w.toml", "job.sh", "missing.toml", "outside.toml", "sub", "/dev/zero"];
    let result = (|| {
        let mut sink = std::io::sink();
        let dry = sweep::dry_run(&o, rng.chance(2), &mut sink);
        if out.exists() {
            return Err("the dry run wrote the dataset directory".to_string());
        }
        let plan = match sweep::plan(o.clone()) {
            Err(e) => {
                named_error(&e, &names)?;
                if let Err(d) = dry {
                    named_error(&d, &names)?;
                }
                return Ok(false);
            }
            Ok(p) => p,
        };
        if let Err(d) = dry {
            return Err(format!("the dry run refused what the plan accepts: {}", dirtytrace::errors::causes(&d)));
        }
        if out.exists() {
            return Err("planning wrote the dataset directory".to_string());
        }
        if cheap(&plan) && rng.chance(2) {
            match sweep::run(&plan, Arc::new(AtomicBool::new(false)), &sweep::Quiet) {
                Err(e) => named_error(&e, &names)?,
                Ok(r) => done_traces_open(&out, &r)?,
            }
        }
        Ok(true)
    })();
    // The grid, its workload and everything beside them are as they were; only the dataset is new.
    let mut after = tree(dir.parent().unwrap());
    after.retain(|p, _| !p.starts_with(&out));
    if result.is_ok() && after != before {
        let changed: Vec<_> = after.keys().filter(|k| before.get(*k) != after.get(*k)).collect();
        return (what, Err(format!("the case changed files it was only to read: {changed:?}")));
    }
    (what, result)
}

// ---------------------------------------------------------------------------------------------
// Dataset directories.

fn dataset_case(rng: &mut Rng, base: &Base, dir: &Path) -> (String, Result<bool, String>) {
    let grid = dir.join("grid.toml");
    std::fs::copy(base.grid_dir.join("grid.toml"), &grid).unwrap();
    std::fs::copy(base.grid_dir.join("w.toml"), dir.join("w.toml")).unwrap();
    let ds = dir.join("ds");
    copy_tree(&base.dataset, &ds);
    let outside = dir.join("outside.txt");
    std::fs::write(&outside, "not the dataset's").unwrap();
    let traces = ds.join(dirtytrace::dataset::TRACES);
    let mut touched: Vec<String> = Vec::new();
    let mut what = Vec::new();
    let mut held: Option<(String, std::fs::File)> = None;
    for _ in 0..1 + rng.below(2) {
        let run = rng.pick(&base.runs).clone();
        let t = traces.join(&run);
        match rng.below(9) {
            0 => {
                let p = ds.join(dirtytrace::dataset::INFO);
                if !p.is_file() || p.is_symlink() {
                    continue;
                }
                let mut m: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap_or(Value::Null);
                let mut paths = Vec::new();
                json_paths(&m, &mut Vec::new(), &mut paths);
                let path = rng.pick(&paths).clone();
                if let Some(slot) = json_at(&mut m, &path) {
                    let new = extreme_json(rng, slot);
                    what.push(format!("dataset.json {}={}", path.join("."), short(&new.to_string())));
                    *slot = new;
                }
                std::fs::write(&p, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
            }
            1 => {
                let p = ds.join(dirtytrace::dataset::INFO);
                if p.is_file() && rng.chance(2) {
                    what.push(mutate_bytes(rng, &p));
                } else {
                    what.push(format!("dataset.json {}", replace_with_odd(rng, &p, &outside)));
                }
            }
            2 => {
                let f = *rng.pick(&[dirtytrace::dataset::INDEX, dirtytrace::dataset::REPLAY]);
                let p = ds.join(f);
                if p.is_file() && rng.chance(2) {
                    what.push(mutate_bytes(rng, &p));
                } else {
                    what.push(format!("{f} {}", replace_with_odd(rng, &p, &outside)));
                }
            }
            3 => {
                let f = *rng.pick(&[
                    dirtytrace::dataset::INDEX_LOCK,
                    dirtytrace::dataset::DATASET_LOCK,
                    dirtytrace::dataset::CLAIMS,
                    dirtytrace::dataset::SPECS,
                    dirtytrace::dataset::TRACES,
                ]);
                if f == dirtytrace::dataset::TRACES {
                    touched.extend(base.runs.iter().cloned());
                }
                what.push(format!("{f} {}", replace_with_odd(rng, &ds.join(f), &outside)));
            }
            4 => {
                let claims = ds.join(dirtytrace::dataset::CLAIMS);
                if claims.is_file() || claims.is_symlink() {
                    continue;
                }
                std::fs::create_dir_all(&claims).unwrap();
                let claim = claims.join(format!("{run}.lock"));
                if held.is_none() && rng.chance(2) {
                    let f = std::fs::OpenOptions::new().create(true).append(true).open(&claim).unwrap();
                    f.try_lock().unwrap();
                    what.push(format!("{run} claimed by a live holder"));
                    held = Some((run.clone(), f));
                } else if held.as_ref().is_none_or(|(r, _)| *r != run) {
                    what.push(format!("claim of {run}: {}", replace_with_odd(rng, &claim, &outside)));
                    touched.push(run.clone());
                }
            }
            5 | 6 => {
                // Once per run: what it holds is then the base trace's.
                if !t.is_dir() || t.is_symlink() || touched.contains(&run) {
                    continue;
                }
                touched.push(run.clone());
                let f = *rng.pick(&[trace::MANIFEST, trace::RATES, trace::BITMAPS, trace::GUEST_LOG]);
                match rng.below(4) {
                    0 => {
                        let _ = std::fs::remove_file(t.join(f));
                        what.push(format!("{run}: {f} removed"));
                    }
                    1 => what.push(format!("{run}: {}", mutate_bytes(rng, &t.join(f)))),
                    2 => what.push(format!("{run}: {}", super::mutate_manifest(rng, &t))),
                    _ => {
                        // Half-written: a recorder killed with what the journal held.
                        let mp = t.join(trace::MANIFEST);
                        let Some(mut m) =
                            std::fs::read(&mp).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                        else {
                            continue;
                        };
                        if !m.is_object() {
                            continue;
                        }
                        m["status"] = (*rng.pick(&["recording", "interrupted", "complete", "nope"])).into();
                        m["intervals"] = 0.into();
                        std::fs::write(&mp, serde_json::to_vec(&m).unwrap()).unwrap();
                        let mut j = base.journal.clone();
                        let cut = rng.below(j.len() + 1);
                        j.truncate(cut);
                        if rng.chance(3) {
                            let i = rng.below(j.len().max(1));
                            if let Some(b) = j.get_mut(i) {
                                *b ^= 0x40;
                            }
                        }
                        if rng.chance(2) {
                            let _ = std::fs::remove_file(t.join(trace::RATES));
                            let _ = std::fs::remove_file(t.join(trace::BITMAPS));
                        }
                        std::fs::write(t.join(trace::JOURNAL), &j).unwrap();
                        what.push(format!("{run}: status {}, journal of {cut} bytes", m["status"]));
                    }
                }
            }
            7 => {
                if !t.exists() {
                    continue;
                }
                touched.push(run.clone());
                let r = rng.below(3);
                if t.is_dir() && !t.is_symlink() {
                    std::fs::remove_dir_all(&t).unwrap();
                } else {
                    std::fs::remove_file(&t).unwrap();
                }
                match r {
                    0 => {
                        std::fs::write(&t, "a file where a trace was").unwrap();
                        what.push(format!("{run}: a file"));
                    }
                    1 => {
                        // A symlink to a trace outside the dataset, which must stay as it is.
                        let away = dir.join("away");
                        copy_tree(&base.dataset.join(dirtytrace::dataset::TRACES).join(&run), &away);
                        std::os::unix::fs::symlink(&away, &t).unwrap();
                        what.push(format!("{run}: a symlink to a trace outside"));
                    }
                    _ => {
                        std::fs::create_dir(&t).unwrap();
                        what.push(format!("{run}: an empty directory"));
                    }
                }
            }
            _ => {
                if !traces.is_dir() || traces.is_symlink() {
                    continue;
                }
                let stranger = traces.join(rng.pick(&["zzz", ".hidden", "é😀", "a b", "x.lock"]));
                std::fs::create_dir_all(&stranger).unwrap();
                std::fs::write(stranger.join(trace::MANIFEST), rng.pick(&["{}", "", "{\"tool\": \"other\"}"])).unwrap();
                what.push(format!("stranger {}", stranger.file_name().unwrap().to_string_lossy()));
            }
        }
    }
    // What must not change: traces the case left alone, and everything outside the dataset.
    let keep = |run: &String| !touched.contains(run);
    let kept_before: BTreeMap<String, BTreeMap<PathBuf, Vec<u8>>> =
        base.runs.iter().filter(|r| keep(r)).map(|r| (r.clone(), tree(&traces.join(r)))).collect();
    let mut outside_before = tree(dir);
    outside_before.retain(|p, _| !p.starts_with(&ds));
    let op = rng.below(3);
    // For a case that panics, whose description is not returned.
    eprintln!("case: dataset {}, then op {op}", what.join(", "));
    let ds_s = ds.to_str().unwrap();
    let names = [ds_s, grid.to_str().unwrap()];
    let result = (|| {
        match op {
            0 => {
                let rebuild = rng.chance(2);
                what.push(format!("index (rebuild {rebuild})"));
                if let Err(e) = dirtytrace::dataset::index::update(&ds, rebuild) {
                    named_error(&e, &names)?;
                    return Ok(false);
                }
            }
            1 => {
                what.push("sweep".into());
                let mut o = SweepOptions::new(grid.clone(), ds.clone());
                o.engine = Engine::Generate;
                let plan = match sweep::plan(o) {
                    Err(e) => {
                        named_error(&e, &names)?;
                        return Ok(false);
                    }
                    Ok(p) => p,
                };
                match sweep::run(&plan, Arc::new(AtomicBool::new(false)), &sweep::Quiet) {
                    Err(e) => {
                        named_error(&e, &names)?;
                        return Ok(false);
                    }
                    Ok(r) => {
                        done_traces_open(&ds, &r)?;
                        if r.outcomes.len() != plan.runs.len() {
                            return Err(format!("{} outcomes for {} runs", r.outcomes.len(), plan.runs.len()));
                        }
                        for o in &r.outcomes {
                            let mine = held.as_ref().is_some_and(|(h, _)| *h == o.name);
                            if mine != (o.action == Action::Busy) {
                                return Err(format!("{}: {:?}, held by a live claim: {mine}", o.name, o.action));
                            }
                            if keep(&o.name) && !mine && o.action != Action::Skipped && o.action != Action::Failed {
                                return Err(format!("{}: an untouched, finished run was {:?}", o.name, o.action));
                            }
                        }
                    }
                }
            }
            _ => {
                what.push("dry run".into());
                let o = SweepOptions::new(grid.clone(), ds.clone());
                if let Err(e) = sweep::dry_run(&o, rng.chance(2), &mut std::io::sink()) {
                    named_error(&e, &names)?;
                    return Ok(false);
                }
            }
        }
        Ok(true)
    })();
    drop(held);
    let what = format!("dataset {}", what.join(", "));
    if result.is_err() {
        return (what, result);
    }
    for (run, before) in &kept_before {
        if &tree(&traces.join(run)) != before {
            return (what, Err(format!("{run}, which the case left alone, changed")));
        }
    }
    let mut outside_after = tree(dir);
    outside_after.retain(|p, _| !p.starts_with(&ds));
    if outside_after != outside_before {
        let changed: Vec<_> =
            outside_after.keys().filter(|k| outside_before.get(*k) != outside_after.get(*k)).collect();
        return (what, Err(format!("files outside the dataset changed: {changed:?}")));
    }
    (what, result)
}

// ---------------------------------------------------------------------------------------------
// Rootfs tarballs.

/// One tar entry as written, whatever a valid archive allows.
struct Ent {
    name: Vec<u8>,
    kind: u8,
    data: Vec<u8>,
    /// The size the header claims, if not the data's.
    size: Option<u64>,
    link: Vec<u8>,
    mode: u32,
}

fn ent(name: &str, kind: u8, data: &[u8], link: &str) -> Ent {
    let mode = if kind == b'5' { 0o755 } else { 0o644 };
    Ent { name: name.as_bytes().to_vec(), kind, data: data.to_vec(), size: None, link: link.as_bytes().to_vec(), mode }
}

fn octal(field: &mut [u8], v: u64) {
    let w = field.len() - 1;
    if v < 1u64.checked_shl(3 * w as u32).unwrap_or(u64::MAX) {
        let s = format!("{v:0w$o}");
        field[..w].copy_from_slice(s.as_bytes());
        field[w] = 0;
    } else {
        // GNU's base-256 for what octal cannot hold.
        field.fill(0);
        field[0] = 0x80;
        let be = v.to_be_bytes();
        let n = field.len();
        field[n - 8..].copy_from_slice(&be);
    }
}

fn header(name: &[u8], kind: u8, size: u64, link: &[u8], mode: u32) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    octal(&mut h[100..108], mode as u64);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 1_700_000_000);
    h[156] = kind;
    let l = link.len().min(100);
    h[157..157 + l].copy_from_slice(&link[..l]);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

fn push_block(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn tar_bytes(rng: &mut Rng, ents: &[Ent]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in ents {
        if e.name.len() > 100 || e.link.len() > 100 || e.name.contains(&0) {
            if rng.chance(2) || e.name.contains(&0) {
                // A pax header with the long name (and link).
                let mut recs = Vec::new();
                for (k, v) in [("path", &e.name), ("linkpath", &e.link)] {
                    if v.is_empty() {
                        continue;
                    }
                    let body = [format!(" {k}=").as_bytes(), v, b"\n"].concat();
                    let mut len = body.len() + 1;
                    while format!("{len}").len() + body.len() != len {
                        len = format!("{len}").len() + body.len();
                    }
                    recs.extend_from_slice(format!("{len}").as_bytes());
                    recs.extend_from_slice(&body);
                }
                out.extend_from_slice(&header(b"././@PaxHeader", b'x', recs.len() as u64, b"", 0o644));
                push_block(&mut out, &recs);
            } else {
                for (kind, v) in [(b'L', &e.name), (b'K', &e.link)] {
                    if v.len() > 100 {
                        let data = [v.as_slice(), b"\0"].concat();
                        out.extend_from_slice(&header(b"././@LongLink", kind, data.len() as u64, b"", 0o644));
                        push_block(&mut out, &data);
                    }
                }
            }
        }
        let size = e.size.unwrap_or(e.data.len() as u64);
        out.extend_from_slice(&header(&e.name, e.kind, size, &e.link, e.mode));
        push_block(&mut out, &e.data);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn hostile_entries(rng: &mut Rng, ents: &mut Vec<Ent>) -> String {
    let what;
    match rng.below(10) {
        0 => {
            let n = *rng.pick(&[50usize, 500, 1023, 1024, 1025, 3000]);
            ents.push(ent(&format!("{}f", "d/".repeat(n)), b'0', b"deep", ""));
            what = format!("a path {n} deep");
        }
        1 => {
            let n = *rng.pick(&[255usize, 256, 4095, 4096, 70000]);
            ents.push(ent(&format!("etc/{}", "a".repeat(n)), b'0', b"long", ""));
            what = format!("a component of {n} bytes");
        }
        2 => {
            let name = *rng.pick(&["../escape", "/abs/file", "a/../../b", ".", "", "a//b", "./a/./b", "..", "etc/.."]);
            ents.push(ent(name, *rng.pick(b"052"), b"x", "etc"));
            what = format!("a name {name:?}");
        }
        3 => {
            let e = match rng.below(8) {
                0 => ent("with\nnewline", b'0', b"x", ""),
                1 => Ent { name: b"bad\xff\xfe".to_vec(), ..ent("", b'0', b"x", "") },
                2 => Ent { name: b"nul\0inside".to_vec(), ..ent("", b'0', b"x", "") },
                3 => ent("init", b'0', b"not ours", ""),
                4 => ent("workload.sh", *rng.pick(b"052"), b"x", "/etc/motd"),
                5 => ent("bin/busybox", b'2', b"", "/etc/motd"),
                6 => ent("dev/console", b'0', b"x", ""),
                _ => ent("é😀 ", b'0', b"x", ""),
            };
            what = format!("an odd name {:?}", String::from_utf8_lossy(&e.name));
            ents.push(e);
        }
        4 => {
            let target = match rng.below(6) {
                0 => "../../../../etc/passwd".to_string(),
                1 => "/".into(),
                2 => "loop".into(),
                3 => String::new(),
                4 => "t".repeat(5000),
                _ => "..".into(),
            };
            ents.push(ent("loop", b'2', b"", &target));
            if rng.chance(2) {
                ents.push(ent("loop/file", b'0', b"through a link", ""));
            }
            what = format!("a symlink to {}", short(&target));
        }
        5 => {
            let target = *rng.pick(&["missing", "hl", "etc", "../x", "/etc/motd", "usr/bin/tool"]);
            ents.push(ent("hl", b'1', b"", target));
            what = format!("a hard link to {target}");
        }
        6 => {
            let size = *rng.pick(&[1u64 << 33, 1 << 40, 1 << 62, u64::MAX, 4_000_000_000]);
            let n = *rng.pick(&[1usize, 10]);
            for i in 0..n {
                let mut e = ent(&format!("big{i}"), *rng.pick(b"0S7"), b"", "");
                e.size = Some(size);
                ents.push(e);
            }
            what = format!("{n} entries claiming {size} bytes");
        }
        7 => {
            let kind = *rng.pick(&[b'3', b'4', b'6', b'Z', b'g', b'V', b'x', 0u8]);
            ents.push(ent("node", kind, b"k=v\n", ""));
            what = format!("an entry of type {kind:?}");
        }
        8 => {
            let (a, b) = *rng.pick(&[(b'0', b'0'), (b'0', b'5'), (b'5', b'0'), (b'2', b'5'), (b'5', b'2')]);
            ents.push(ent("etc/motd", a, b"one", "usr"));
            ents.push(ent("etc/motd", b, b"two", "usr"));
            what = format!("etc/motd twice ({} then {})", a as char, b as char);
        }
        _ => {
            let mode = *rng.pick(&[0o7777u32, 0, 0o170777, 0o4777, u32::MAX >> 11]);
            ents.push(Ent { mode, ..ent("usr/bin/odd", b'0', b"x", "") });
            what = format!("mode {mode:o}");
        }
    }
    what
}

fn rootfs_case(rng: &mut Rng, dir: &Path) -> (String, Result<bool, String>) {
    let mut ents = vec![
        ent("etc", b'5', b"", ""),
        ent("usr", b'5', b"", ""),
        ent("usr/bin", b'5', b"", ""),
        ent("bin", b'2', b"", "usr/bin"),
        ent("etc/motd", b'0', b"hello\n", ""),
        ent("usr/bin/tool", b'0', &[7u8; 3000], ""),
        ent("usr/bin/tool2", b'1', b"", "usr/bin/tool"),
    ];
    let mut what = Vec::new();
    for _ in 0..1 + rng.below(3) {
        what.push(hostile_entries(rng, &mut ents));
    }
    if rng.chance(3) {
        let i = rng.below(ents.len());
        let e = ents.remove(i);
        let at = rng.below(ents.len() + 1);
        ents.insert(at, e);
    }
    let mut bytes = tar_bytes(rng, &ents);
    match rng.below(8) {
        0 => {
            let cut = 512 + rng.below(bytes.len() - 511);
            bytes.truncate(cut);
            what.push(format!("cut at {cut}"));
        }
        1 => {
            let i = 512 * rng.below(bytes.len() / 512) + rng.below(512);
            bytes[i] ^= 1 << rng.below(8);
            what.push(format!("bit flip at {i}"));
        }
        2 => {
            bytes.truncate(bytes.len() - 1024);
            what.push("no end blocks".into());
        }
        _ => {}
    }
    let (ext, data) = match rng.below(4) {
        0 => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(&bytes).unwrap();
            ("tar.gz", enc.finish().unwrap())
        }
        1 => ("tar.zst", zstd::encode_all(&bytes[..], 1).unwrap()),
        _ => ("tar", bytes),
    };
    let data = if ext != "tar" && rng.chance(4) {
        let cut = rng.below(data.len());
        what.push(format!("compressed stream cut at {cut}"));
        data[..cut].to_vec()
    } else {
        data
    };
    let tarball = dir.join(format!("root.{ext}"));
    std::fs::write(&tarball, &data).unwrap();
    let script = dir.join("w.sh");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    let mem = *rng.pick(&[64u64 << 20, 2 << 30, 1 << 40]);
    let what = format!("rootfs {ext}, mem {mem}: {}", what.join(", "));
    let before = tree(dir);
    let inputs = Inputs {
        busybox: PathBuf::from("/bin/true"),
        script: script.clone(),
        contents: Contents { rootfs: Some(tarball.clone()), ..Default::default() },
        disk: None,
    };
    let names = [tarball.to_str().unwrap()];
    let result = (|| {
        let built = inputs.check(mem).and_then(|_| {
            let a = initramfs::build_with(&inputs, None, &mut |_| {})?;
            a.check_fits(mem, "the rootfs")?;
            Ok(a)
        });
        let archive = match built {
            Err(e) => {
                named_error(e.as_ref(), &names)?;
                return Ok(false);
            }
            Ok(a) => a,
        };
        let entries =
            initramfs::read_entries(&archive.bytes).map_err(|e| format!("the archive does not read back: {e:#}"))?;
        for e in &entries {
            let clean = !e.name.starts_with('/')
                && e.name.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
                && initramfs::check_name(&e.name).is_ok();
            if !clean {
                return Err(format!("the archive holds an entry named {:?}", short(&e.name)));
            }
        }
        let last = |n: &str| entries.iter().rev().find(|e| e.name == n).map(|e| (e.mode & 0o170000, e.data.clone()));
        if last("init") != Some((0o100000, initramfs::INIT.as_bytes().to_vec())) {
            return Err("the archive's /init is not dirtytrace's".into());
        }
        if last("workload.sh") != Some((0o100000, b"#!/bin/sh\necho hi\n".to_vec())) {
            return Err("the archive's /workload.sh is not the script".into());
        }
        Ok(true)
    })();
    if result.is_ok() && tree(dir) != before {
        return (what, Err("the case changed its inputs or wrote beside them".into()));
    }
    (what, result)
}
