//! Benchmark of the offline tools on a long trace: 1 hour at 100 ms of a 4 GiB guest.
//!
//!     cargo run --release --example bench_analysis -- [DIR] [--hours H] [--mem SIZE]
//!
//! Generates the trace in DIR (default target/bench-analysis-trace) unless it is there
//! already, by feeding the trace writer the exact page writes the synthetic guest would make
//! for a mixed workload (sequential load, hot/cold serving, random batch, idle), without KVM.
//! Then it times, each in a fresh process so that the peak RSS is its own:
//!   read      — read and decompress every bitmap (the reader alone; the baseline)
//!   summarize — `dirtytrace summarize`
//!   replay    — `dirtytrace replay` at a bandwidth whose round 0 lasts 99 % of the trace
//!   simgrid   — `dirtytrace simgrid`
//! and prints wall time, its ratio to `read`, CPU time (user + system, all threads), and peak
//! RSS (the child's VmHWM).

use dirtytrace::analysis::{replay, simgrid, summary};
use dirtytrace::guest::synthetic::plan::{GuestPlan, CONTROL_PAGE};
use dirtytrace::guest::synthetic::spec::{WorkloadSpec, WriteRate};
use dirtytrace::sampler::Harvest;
use dirtytrace::trace::{self, Manifest, PageRange, Trace, TraceStatus, TraceWriter, WriterOptions};
use dirtytrace::units::{parse_size, HumanBytes};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

const INTERVAL_NS: u64 = 100_000_000;

/// The workload for `hours` of trace, as a synthetic spec: phases scale with the length.
fn spec_text(mem: u64, hours: f64) -> String {
    let s = |f: f64| format!("{:.1}s", f * hours * 3600.0);
    format!(
        "mem = \"{mem}\"\nseed = 9\n\
         [[phase]]\nname = \"load\"\nduration = \"{}\"\nworking_set = \"3GiB\"\nrate = \"100MiB/s\"\npattern = \"sequential\"\n\
         [[phase]]\nname = \"serve\"\nduration = \"{}\"\nworking_set = \"2GiB\"\nrate = \"200MiB/s\"\npattern = \"hotcold\"\n\
         [[phase]]\nname = \"batch\"\nduration = \"{}\"\nworking_set = \"1GiB\"\nrate = \"50MiB/s\"\npattern = \"random\"\n\
         [[phase]]\nname = \"idle\"\nduration = \"{}\"\nrate = \"0\"\ncpu = 0.0\n\
         [[phase]]\nname = \"serve2\"\nduration = \"{}\"\nworking_set = \"2GiB\"\nrate = \"100MiB/s\"\npattern = \"hotcold\"\n",
        s(1.0 / 6.0),
        s(1.0 / 3.0),
        s(1.0 / 6.0),
        s(1.0 / 12.0),
        s(1.0 / 4.0),
    )
}

fn generate(dir: &Path, mem: u64, hours: f64) -> Result<(), String> {
    let text = spec_text(mem, hours);
    let spec = WorkloadSpec::parse(&text, None, None).map_err(|e| e.to_string())?;
    let plan = GuestPlan::new(&spec).map_err(|e| e.to_string())?;
    trace::writer_prepare_dir(dir)?;
    let slot = dirtytrace::vmm::Slot { slot: 0, guest_phys_addr: 0, size_bytes: mem };
    let speed = 125_000_000.0;
    let manifest = Manifest {
        format_version: trace::FORMAT_VERSION,
        trace_id: format!("{:032x}", 0xbe_c4u128 << 64 | mem as u128),
        status: TraceStatus::Recording,
        exact_cut: false,
        end_reason: None,
        error: None,
        tool: "dirtytrace".into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        host_kernel: "generated".into(),
        host_name: "generated".into(),
        start_unix_s: 0.0,
        interval_s: INTERVAL_NS as f64 / 1e9,
        duration_limit_s: None,
        page_size: 4096,
        ramsize_bytes: mem,
        vcpus: 1,
        migration_speed_bytes_per_s: speed,
        working_set_window_s: mem as f64 / speed,
        slots: vec![slot],
        guest: serde_json::json!({"kind": "synthetic", "generated_by": "examples/bench_analysis.rs", "spec_toml": text, "spec": spec}),
        guest_own_pages: vec![CONTROL_PAGE / 4096],
        initial_nonzero_pages: vec![PageRange { first: 0, count: 512 }],
        timing: Default::default(),
        intervals: 0,
    };
    let mut writer = TraceWriter::create(WriterOptions { dir: dir.to_path_buf(), zstd_level: 1 }, manifest, None)?;
    let words = (mem / 4096).div_ceil(64) as usize;
    let mut phase_start_ns = 0u64;
    let mut k = 0u64;
    let started = Instant::now();
    for (p, phase) in spec.phases.iter().enumerate() {
        let pp = &plan.plans[0][p];
        let wps = match phase.rate {
            WriteRate::BytesPerSec(b) => b / 4096.0,
            WriteRate::Max => unreachable!("the benchmark's phases have rates"),
        };
        let phase_ns = phase.duration.as_nanos() as u64;
        // Writes done by `t` ns into the phase: write j is due at (j + 1) / wps.
        let done = |t: u64| (t as f64 / 1e9 * wps).floor() as u64;
        let mut t = 0;
        while t < phase_ns {
            let end = (t + INTERVAL_NS).min(phase_ns);
            let mut bm = vec![0u64; words];
            for j in done(t)..done(end) {
                let page = pp.page_of(j);
                bm[(page / 64) as usize] |= 1 << (page % 64);
            }
            if wps > 0.0 {
                let c = CONTROL_PAGE / 4096;
                bm[(c / 64) as usize] |= 1 << (c % 64);
            }
            let h = Harvest {
                index: k,
                t_start_ns: phase_start_ns + t,
                t_end_ns: phase_start_ns + end,
                lateness_ns: 0,
                ioctl_ns: 0,
                ioctl_cpu_ns: 0,
                pause_ns: 0,
                sampler_cpu_ns: 0,
                bitmaps: vec![bm],
                vcpu_cpu_ns: vec![((end - t) as f64 * phase.cpu) as u64],
                progress_before: vec![],
                progress_after: vec![],
                phase: phase.name.clone(),
                events: vec![],
                console: vec![],
                partial: false,
            };
            writer.append(h)?;
            k += 1;
            t = end;
            if k.is_multiple_of(6000) {
                eprintln!("  generated {k} intervals ({:.0} s)", started.elapsed().as_secs_f64());
            }
        }
        phase_start_ns += phase_ns;
    }
    writer.finish(TraceStatus::Complete, "workload_done", None)?;
    Ok(())
}

/// One measurement, in this (child) process: prints `{"wall_s": …, …}`.
fn child(mode: &str, dir: &Path) -> Result<(), String> {
    let t = Trace::open(dir).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let detail = match mode {
        "read" => {
            // Only what the reader does: the words are decompressed, and not looked at again.
            let (mut intervals, mut words) = (0u64, 0u64);
            for bm in t.bitmaps().map_err(|e| e.to_string())? {
                let bm = std::hint::black_box(bm.map_err(|e| e.to_string())?);
                intervals += 1;
                words += bm.slots.iter().map(|s| s.words.len() as u64).sum::<u64>();
            }
            serde_json::json!({"intervals": intervals, "decoded_words": words})
        }
        "summarize" => {
            let s = summary::summarize(&t, &summary::SummaryOptions::default()).map_err(|e| e.to_string())?;
            serde_json::json!({"intervals": s.intervals, "distinct_pages": s.distinct_pages})
        }
        "replay" => {
            let mut end = 1.0;
            for row in t.rates_stream().map_err(|e| e.to_string())? {
                end = row.map_err(|e| e.to_string())?.t_end_s;
            }
            let mut o = replay::ReplayOptions::new(t.manifest.ramsize_bytes as f64 / (0.99 * end));
            o.max_rounds = 1;
            let r = replay::replay(&t, &o).map_err(|e| e.to_string())?;
            serde_json::json!({"total_time_s": r.total_time_s, "intervals_in_round_0": r.per_round[0].intervals,
                               "stop_and_copy_bytes": r.stop_and_copy.bytes})
        }
        "simgrid" => {
            let p = simgrid::fit(&t, &simgrid::SimgridOptions::default()).map_err(|e| e.to_string())?;
            serde_json::json!({"dp_intensity": p.dp_intensity, "working_set_memory_bytes": p.working_set_memory_bytes})
        }
        _ => return Err(format!("unknown mode {mode}")),
    };
    let wall_s = start.elapsed().as_secs_f64();
    // This process's own peak RSS. (getrusage's ru_maxrss of a child would also count the
    // parent's memory at the fork: Linux carries the high-water mark across exec.)
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
    let hwm_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or("no VmHWM in /proc/self/status")?;
    let ru = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).map_err(|e| e.to_string())?;
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    let cpu_s = secs(ru.user_time()) + secs(ru.system_time());
    println!(
        "{}",
        serde_json::json!({"wall_s": wall_s, "cpu_s": cpu_s, "peak_rss_bytes": hwm_kib * 1024, "detail": detail})
    );
    Ok(())
}

/// Runs one measurement in a child process; returns its JSON.
fn measure(mode: &str, dir: &Path) -> Result<serde_json::Value, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = Command::new(exe)
        .arg("--child")
        .arg(mode)
        .arg(dir)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("{mode} failed"));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("{mode}: {e}"))
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        return child(&args[2], Path::new(&args[3]));
    }
    let mut dir = PathBuf::from("target/bench-analysis-trace");
    let (mut hours, mut mem) = (1.0f64, 4u64 << 30);
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--hours" => {
                hours = args.get(i + 1).and_then(|h| h.parse().ok()).ok_or("--hours needs a number")?;
                i += 1;
            }
            "--mem" => {
                mem = parse_size(args.get(i + 1).ok_or("--mem needs a size")?).map_err(|e| e.to_string())?;
                i += 1;
            }
            d => dir = PathBuf::from(d),
        }
        i += 1;
    }
    if !dir.join(trace::MANIFEST).exists() {
        eprintln!("generating {} h at 100 ms of a {} guest into {}", hours, HumanBytes(mem as f64), dir.display());
        let t0 = Instant::now();
        generate(&dir, mem, hours)?;
        eprintln!("generated in {:.1} s", t0.elapsed().as_secs_f64());
    }
    let t = Trace::open(&dir).map_err(|e| e.to_string())?;
    let file = std::fs::metadata(dir.join(trace::BITMAPS)).map_err(|e| e.to_string())?.len();
    let raw = t.manifest.intervals * t.manifest.total_pages().div_ceil(64) * 8;
    println!(
        "trace: {} intervals of {} ms, {} guest; bitmaps.parquet {} on disk, {} raw",
        t.manifest.intervals,
        t.manifest.interval_s * 1e3,
        HumanBytes(t.manifest.ramsize_bytes as f64),
        HumanBytes(file as f64),
        HumanBytes(raw as f64)
    );
    // A first read warms the page cache, so that every measurement reads from memory.
    measure("read", &dir)?;
    let mut base = 0.0;
    println!("{:<10} {:>9} {:>8} {:>9} {:>10}  detail", "step", "wall", "vs read", "CPU", "peak RSS");
    for mode in ["read", "summarize", "replay", "simgrid"] {
        let v = measure(mode, &dir)?;
        let rss = v["peak_rss_bytes"].as_u64().unwrap_or(0);
        let wall = v["wall_s"].as_f64().unwrap_or(0.0);
        if mode == "read" {
            base = wall;
        }
        println!(
            "{mode:<10} {wall:>7.2} s {:>7.2}x {:>7.2} s {:>10}  {}",
            wall / base,
            v["cpu_s"].as_f64().unwrap_or(0.0),
            HumanBytes(rss as f64).to_string(),
            v["detail"]
        );
    }
    Ok(())
}
