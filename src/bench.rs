//! `dirtytrace bench`: the recorder's costs, measured as ratios within one run. Every figure
//! comes from real recordings of the synthetic guest on this host.

use crate::guest::synthetic::DoneDetail;
use crate::record::{self, RecordOptions, RecordSummary};
use crate::trace::{SchedPolicy, Trace};
use crate::units::{HumanDuration, HumanSize};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// One row of the harvest-cost table.
#[derive(Debug, Serialize)]
pub struct HarvestCostRow {
    /// The fraction of pages the run meant to dirty per interval.
    pub dirty_fraction_target: f64,
    /// The fraction it dirtied.
    pub dirty_fraction_measured: f64,
    /// `KVM_GET_DIRTY_LOG` time per GiB of guest (median, s).
    pub ioctl_s_per_gib: f64,
    /// The recorder's own work per GiB: sampler and writer (s).
    pub own_s_per_gib: f64,
    /// The sampler's own work per GiB (s).
    pub sampler_own_s_per_gib: f64,
    /// Statistics, compression and journal append, measured by replaying the recorded bitmaps.
    pub writer_s_per_gib: f64,
    /// Own work over the ioctl's time.
    pub own_over_ioctl: f64,
}

/// One row of the deadline table: one recording of a random writer at 100 MiB/s.
#[derive(Debug, Serialize)]
pub struct DeadlineRow {
    /// Guest RAM (sparse: only what the guest touches is backed).
    pub guest_bytes: u64,
    /// How the sampler was scheduled, as the manifest records it: `other` or `fifo`, then
    /// `+spinNus` when it spun up to N µs before each deadline, `+mlock` with its memory locked.
    pub sampler: String,
    /// Which settings: `default` (what `record` does by default at that priority), `no spin`
    /// or `mlock` (the default plus the recorder's memory locked).
    pub settings: String,
    /// The harvest interval (s).
    pub interval_s: f64,
    /// Full intervals recorded.
    pub intervals: u64,
    /// Deadlines whose harvest began within a tenth of the interval, over all deadlines: a
    /// skipped deadline counts as missed.
    pub on_time_fraction: f64,
    /// Deadlines passed over because the sampler was more than an interval behind.
    pub skipped_deadlines: u64,
    /// Lateness, 99th percentile (s).
    pub lateness_p99_s: f64,
    /// Lateness, maximum (s).
    pub lateness_max_s: f64,
    /// `KVM_GET_DIRTY_LOG`, median (s).
    pub ioctl_p50_s: f64,
    /// Page-writes per second the guest achieved.
    pub guest_writes_per_s: f64,
    /// The sampler thread's CPU time over the recording's length.
    pub sampler_cpu_share: f64,
}

/// The shortest interval that kept its deadlines, per guest size, priority and settings.
#[derive(Debug, Serialize)]
pub struct DeadlineLimit {
    /// Guest RAM.
    pub guest_bytes: u64,
    /// `--realtime`: `off` or `on`.
    pub realtime: String,
    /// As in [`DeadlineRow::settings`].
    pub settings: String,
    /// The shortest interval tried with at least 99 % of harvests on time (s).
    pub shortest_99_s: Option<f64>,
    /// The shortest with at least 99.5 % on time and no deadline skipped (s).
    pub shortest_995_s: Option<f64>,
}

/// The host's own timer floor: a thread sleeping to the deadlines as the sampler does, on the
/// sampler's CPU, with no guest and no harvest.
#[derive(Debug, Serialize)]
pub struct TimerFloorRow {
    /// `fifo` or `other`, then `+spinNus` as in [`DeadlineRow::sampler`].
    pub sampler: String,
    /// The deadline interval (s).
    pub interval_s: f64,
    /// Deadlines met within a tenth of the interval, over all deadlines.
    pub on_time_fraction: f64,
    /// Deadlines passed over because a wake-up came more than an interval late.
    pub skipped_deadlines: u64,
    /// Lateness, median (s).
    pub lateness_p50_s: f64,
    /// Lateness, 99th percentile (s).
    pub lateness_p99_s: f64,
    /// Lateness, maximum (s).
    pub lateness_max_s: f64,
    /// The thread's CPU time over the run's length: what sleeping and spinning cost.
    pub cpu_share: f64,
}

/// One row of the slowdown table.
#[derive(Debug, Serialize)]
pub struct SlowdownRow {
    /// The run's working set.
    pub working_set_bytes: u64,
    /// `None`: untracked.
    pub interval_s: Option<f64>,
    /// Page-writes per second the guest achieved.
    pub writes_per_s: f64,
    /// Untracked writes per second over these.
    pub slowdown: f64,
    /// Write-protect faults per second: distinct pages per interval, summed, over time.
    pub faults_per_s: f64,
    /// Cost of one write-protect fault, from the most fault-bound run.
    pub implied_fault_cost_s: f64,
    /// Share of each second that writing at the untracked speed plus the faults account for
    /// (1.0: the slowdown is exactly the fault floor).
    pub floor_explains: f64,
}

/// One row of the compression table.
#[derive(Debug, Serialize)]
pub struct CompressionRow {
    /// The workload's pattern.
    pub pattern: String,
    /// Fraction of pages dirty per interval.
    pub dirty_fraction: f64,
    /// Raw bitmap bytes per interval.
    pub raw_bytes_per_interval: f64,
    /// Stored (compressed) bytes per interval.
    pub stored_bytes_per_interval: f64,
    /// Raw over stored.
    pub ratio: f64,
}

/// One row of the Linux setup table.
#[derive(Debug, Serialize)]
pub struct LinuxSetupRow {
    /// Whether the initramfs came from the cache.
    pub initramfs_cached: bool,
    /// From the start of `record` to the guest's first instruction, initramfs build included.
    pub setup_s: f64,
    /// The initramfs's size.
    pub initramfs_bytes: u64,
    /// When the kernel's `Linux version` banner reached the console, from the first instruction.
    pub banner_s: Option<f64>,
}

/// One row of the exact-cut table.
#[derive(Debug, Serialize)]
pub struct ExactCutRow {
    /// The harvest interval (s).
    pub interval_s: f64,
    /// Wall time to take every vCPU out of the guest, per harvest.
    pub pause_mean_s: f64,
    /// Achieved page-writes per second with the exact cut, over without it.
    pub write_rate_ratio: f64,
}

/// Everything one `bench` run measured.
#[derive(Debug, Default, Serialize)]
pub struct BenchReport {
    /// What `--exact-cut` costs.
    pub exact_cut: Vec<ExactCutRow>,
    /// Linux guest setup times.
    pub linux_setup: Vec<LinuxSetupRow>,
    /// Harvest cost per GiB.
    pub harvest_cost: Vec<HarvestCostRow>,
    /// The host's timer floor at the shortest intervals, with no guest.
    pub timer_floor: Vec<TimerFloorRow>,
    /// Deadlines kept, per interval.
    pub deadlines: Vec<DeadlineRow>,
    /// The shortest intervals that kept their deadlines.
    pub deadline_limits: Vec<DeadlineLimit>,
    /// Guest slowdown from tracking.
    pub slowdown: Vec<SlowdownRow>,
    /// Bitmap bytes on disk.
    pub compression: Vec<CompressionRow>,
}

/// `--mem`'s default: guest RAM of the cost, slowdown and compression runs.
pub const DEFAULT_MEM: u64 = crate::units::GIB;
/// `--deadline-mem`'s default: guest sizes of the deadline runs (sparse: a 256 GiB guest fits a
/// machine with far less RAM).
pub const DEFAULT_DEADLINE_MEM: [u64; 3] = [4 * crate::units::GIB, 64 * crate::units::GIB, 256 * crate::units::GIB];
/// The intervals the deadline runs try, shortest first (ms).
pub const DEADLINE_INTERVALS_MS: [u64; 6] = [1, 2, 5, 10, 20, 50];
/// The longest `--seconds`: one day per recording.
pub const MAX_SECONDS: f64 = 86_400.0;
/// `--seconds`'s default: the length of each recording.
pub const DEFAULT_SECONDS: f64 = 3.0;
/// `--work-dir`'s default.
pub const DEFAULT_WORK_DIR: &str = "target/bench-traces";

/// What `bench` is told.
pub struct BenchOptions {
    /// The bench records into a fresh directory of its own inside this one, and removes only
    /// that directory when it ends.
    pub work_dir: PathBuf,
    /// Guest RAM of the cost, slowdown and compression runs.
    pub mem: u64,
    /// Guest sizes of the deadline runs.
    pub deadline_mem: Vec<u64>,
    /// Length of each recording (s).
    pub seconds: f64,
}

/// The measurements `bench` can make, in the order it makes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchStep {
    /// Linux guest: time from `record` to the guest's first instruction.
    Linux,
    /// What `--exact-cut` costs.
    Cut,
    /// Harvest cost per GiB.
    Cost,
    /// Deadlines kept at short intervals.
    Deadline,
    /// Guest slowdown from tracking.
    Slowdown,
    /// Bitmap bytes on disk.
    Compression,
}

impl BenchStep {
    /// Every step, in the order `bench` runs them.
    pub const ALL: [BenchStep; 6] = [
        BenchStep::Linux,
        BenchStep::Cut,
        BenchStep::Cost,
        BenchStep::Deadline,
        BenchStep::Slowdown,
        BenchStep::Compression,
    ];
}

/// A directory the bench created and alone removes: never the user's `--work-dir` itself,
/// nor anything that was in it.
struct Workspace {
    dir: PathBuf,
    /// `--work-dir` did not exist and the bench made it: removed too if it is empty at the end.
    made_parent: bool,
    parent: PathBuf,
}

impl Workspace {
    fn create(parent: &Path) -> anyhow::Result<Workspace> {
        use anyhow::Context;
        let made_parent = !parent.exists();
        std::fs::create_dir_all(parent).with_context(|| format!("--work-dir: cannot create {}", parent.display()))?;
        let dir = parent.join(format!("dirtytrace-bench-{}-{}", std::process::id(), crate::clock::now_ns()));
        // create_dir, not create_dir_all: it fails rather than adopt a directory that exists.
        std::fs::create_dir(&dir).with_context(|| format!("--work-dir: cannot create {}", dir.display()))?;
        Ok(Workspace { dir, made_parent, parent: parent.to_path_buf() })
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        if self.made_parent {
            let _ = std::fs::remove_dir(&self.parent);
        }
    }
}

/// Runs `steps` (every step when empty) and returns their report. Recordings go to a fresh
/// directory inside `opts.work_dir`, which is removed at the end; nothing else is touched.
pub fn run_steps(
    opts: &BenchOptions,
    steps: &[BenchStep],
    mut progress: impl FnMut(BenchStep),
) -> anyhow::Result<BenchReport> {
    // Checked here, before anything is made, so that the error names the flag.
    if !(opts.seconds.is_finite() && opts.seconds > 0.0 && opts.seconds <= MAX_SECONDS) {
        anyhow::bail!("--seconds: must be more than 0 and at most {MAX_SECONDS} (one day), got {}", opts.seconds);
    }
    let workspace = Workspace::create(&opts.work_dir)?;
    let inner = BenchOptions { work_dir: workspace.dir.clone(), deadline_mem: opts.deadline_mem.clone(), ..*opts };
    let mut report = BenchReport::default();
    for step in BenchStep::ALL.into_iter().filter(|s| steps.is_empty() || steps.contains(s)) {
        progress(step);
        match step {
            BenchStep::Linux => linux_setup(&inner, &mut report)?,
            BenchStep::Cut => exact_cut(&inner, &mut report)?,
            BenchStep::Cost => harvest_cost(&inner, &mut report)?,
            BenchStep::Deadline => deadlines(&inner, &mut report)?,
            BenchStep::Slowdown => slowdown(&inner, &mut report)?,
            BenchStep::Compression => compression(&inner, &mut report)?,
        }
    }
    Ok(report)
}

fn run(
    opts: &BenchOptions,
    name: &str,
    spec: &str,
    interval: Duration,
    untracked: bool,
) -> anyhow::Result<(RecordSummary, Trace)> {
    run_with(opts, name, spec, interval, |ro| {
        if untracked {
            ro.dirty_tracking = crate::vmm::DirtyTracking::Off;
        }
    })
}

fn run_with(
    opts: &BenchOptions,
    name: &str,
    spec: &str,
    interval: Duration,
    tweak: impl FnOnce(&mut RecordOptions),
) -> anyhow::Result<(RecordSummary, Trace)> {
    let dir = opts.work_dir.join(name);
    let spec_path = opts.work_dir.join(format!("{name}.toml"));
    std::fs::write(&spec_path, spec)?;
    let mut ro = RecordOptions::new(dir.clone());
    ro.workload = Some(spec_path);
    ro.settings.interval = HumanDuration(interval);
    tweak(&mut ro);
    let summary = record::record(&ro, Arc::new(AtomicBool::new(false)), None)?;
    let trace = Trace::open(&dir)?;
    Ok((summary, trace))
}

fn spec(mem: u64, ws_bytes: u64, rate: &str, pattern: &str, seconds: f64) -> String {
    format!(
        "mem = {mem}\nseed = 11\n[[phase]]\nname = \"bench\"\nduration = \"{seconds}s\"\nworking_set = {ws_bytes}\nrate = \"{rate}\"\npattern = \"{pattern}\"\n"
    )
}

fn pages(bytes: f64) -> u64 {
    ((bytes / 4096.0).round() as u64).max(1) * 4096
}

/// Total writes the guest made, from the phase-final counts in its log.
fn guest_writes(trace: &Trace) -> anyhow::Result<u64> {
    let log = trace.guest_log()?;
    Ok(log.iter().filter_map(|e| DoneDetail::of(e)?.last_phase_writes).sum())
}

fn steady(trace: &Trace) -> anyhow::Result<Vec<crate::trace::IntervalRow>> {
    Ok(trace.rates()?.into_iter().filter(|r| !r.partial && r.interval > 0).collect())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    crate::stats::percentile(&v, 0.5)
}

/// Feeds a recorded trace's bitmaps through fresh accounting and a fresh writer, alone on the
/// machine, and returns the median wall time of one interval (statistics, compression,
/// journal), in seconds.
fn writer_cost(trace: &Trace, scratch: &Path) -> anyhow::Result<f64> {
    crate::trace::prepare_dir(scratch)?;
    let mut manifest = trace.manifest.clone();
    manifest.status = crate::trace::TraceStatus::Recording;
    let mut writer = crate::trace::TraceWriter::create(scratch, manifest)?;
    let mut accounting = crate::accounting::IntervalAccounting::new(writer.manifest(), crate::trace::ZSTD_LEVEL)?;
    let mut times = Vec::new();
    for item in trace.intervals()? {
        let (row, bm) = item?;
        let mut h = crate::sampler::Harvest::new(
            row.interval,
            (row.t_start_s * 1e9) as u64,
            (row.t_end_s * 1e9) as u64,
            bm.slots.into_iter().map(|s| s.words).collect(),
        );
        h.vcpu_cpu_ns = vec![0; row.cpu_util_per_vcpu.len()];
        (h.progress_before, h.progress_after, h.phase, h.partial) =
            (row.guest_progress_before, row.guest_progress_after, row.phase, row.partial);
        let t = crate::clock::now_ns();
        let i = accounting.account(h)?;
        writer.append(&i.row, &i.blobs, &i.events, &i.console)?;
        times.push((crate::clock::now_ns() - t) as f64 / 1e9);
    }
    drop(writer);
    let _ = std::fs::remove_dir_all(scratch);
    Ok(median(times))
}

/// Harvest cost per GiB at three dirty fractions.
pub fn harvest_cost(opts: &BenchOptions, report: &mut BenchReport) -> anyhow::Result<()> {
    let gib = opts.mem as f64 / GIB;
    let arena = opts.mem as f64 - 2.0 * 1024.0 * 1024.0;
    for frac in [0.001, 0.01, 0.1] {
        let ws = pages(opts.mem as f64 * frac).min(arena as u64);
        let text = spec(opts.mem, ws, "max", "sequential", opts.seconds);
        let (summary, trace) = run(opts, &format!("cost-{frac}"), &text, Duration::from_millis(100), false)?;
        let rows = steady(&trace)?;
        let total_pages = opts.mem as f64 / 4096.0;
        let measured = rows.iter().map(|r| r.dirty_pages as f64).sum::<f64>() / rows.len().max(1) as f64 / total_pages;
        let ioctl = median(rows.iter().map(|r| r.harvest_ioctl_s).collect());
        let sampler_own = summary.cost.expect("record reports its costs").sampler_own_mean_s;
        let writer = writer_cost(&trace, &opts.work_dir.join("writer-scratch"))?;
        report.harvest_cost.push(HarvestCostRow {
            dirty_fraction_target: frac,
            dirty_fraction_measured: measured,
            ioctl_s_per_gib: ioctl / gib,
            own_s_per_gib: (sampler_own + writer) / gib,
            sampler_own_s_per_gib: sampler_own / gib,
            writer_s_per_gib: writer / gib,
            own_over_ioctl: (sampler_own + writer) / ioctl,
        });
    }
    Ok(())
}

/// Deadlines for each guest size, at normal and at real-time priority: for each, intervals
/// from 1 ms up until one keeps at least 99.5 % of deadlines with none skipped. At the shortest
/// intervals (those that spin by default) the real-time sampler is also tried without the spin
/// and with its own memory locked, and the host's timer floor is measured first, with no guest.
/// The guest writes random pages at 100 MiB/s throughout, so that its write rate shows whether
/// the sampler starves it.
pub fn deadlines(opts: &BenchOptions, report: &mut BenchReport) -> anyhow::Result<()> {
    use crate::record::RealtimeMode;
    let shortest = |ms: u64| Duration::from_millis(ms) <= record::SPIN_INTERVALS_UP_TO;
    for ms in DEADLINE_INTERVALS_MS.into_iter().filter(|&ms| shortest(ms)) {
        let interval = Duration::from_millis(ms);
        for spin in [record::default_spin(interval), Duration::ZERO] {
            report.timer_floor.push(timer_floor(interval, opts.seconds, spin)?);
        }
    }
    for &mem in &opts.deadline_mem {
        let ws = (mem / 4).min(1 << 30);
        let text = spec(mem, ws, "100MiB/s", "random", opts.seconds.max(3.0));
        for realtime in [RealtimeMode::Off, RealtimeMode::On] {
            for ms in DEADLINE_INTERVALS_MS {
                let interval = Duration::from_millis(ms);
                // (settings, spin, lock_memory): the defaults first; they decide whether to go on.
                let variants: &[(&str, Option<Duration>, bool)] = if realtime == RealtimeMode::On && shortest(ms) {
                    &[("default", None, false), ("no spin", Some(Duration::ZERO), false), ("mlock", None, true)]
                } else {
                    &[("default", None, false)]
                };
                let mut kept = false;
                for (v, &(settings, spin, lock)) in variants.iter().enumerate() {
                    let name = format!("deadline-{}g-{}-{ms}ms-{v}", mem >> 30, realtime.as_str());
                    let (summary, trace) = run_with(opts, &name, &text, interval, |ro| {
                        (ro.realtime, ro.spin, ro.lock_memory) = (realtime, spin, lock);
                    })?;
                    let rows: Vec<_> = trace.rates()?.into_iter().filter(|r| !r.partial).collect();
                    let t = &trace.manifest.timing;
                    let tolerance = interval.as_secs_f64() / 10.0;
                    let on_time = rows.iter().filter(|r| r.harvest_lateness_s <= tolerance).count() as f64
                        / (rows.len() as u64 + t.skipped_deadlines).max(1) as f64;
                    let elapsed = trace.rates()?.last().map_or(1.0, |r| r.t_end_s);
                    let row = DeadlineRow {
                        guest_bytes: mem,
                        sampler: scheduling_label(&trace, lock),
                        settings: settings.into(),
                        interval_s: interval.as_secs_f64(),
                        intervals: rows.len() as u64,
                        on_time_fraction: on_time,
                        skipped_deadlines: t.skipped_deadlines,
                        lateness_p99_s: t.lateness_p99_s,
                        lateness_max_s: t.lateness_max_s,
                        ioctl_p50_s: t.ioctl_p50_s,
                        guest_writes_per_s: guest_writes(&trace)? as f64 / elapsed,
                        sampler_cpu_share: summary.sampler_cpu_share.unwrap_or(0.0),
                    };
                    kept |= v == 0 && row.on_time_fraction >= 0.995 && row.skipped_deadlines == 0;
                    report.deadlines.push(row);
                    let _ = std::fs::remove_dir_all(opts.work_dir.join(&name));
                }
                if kept {
                    break;
                }
            }
        }
    }
    let fifo = SchedPolicy::Fifo.to_string();
    let realtime_of = |d: &DeadlineRow| if d.sampler.starts_with(&fifo) { "on" } else { "off" };
    let mut keys: Vec<(u64, &str, String)> = Vec::new();
    for d in &report.deadlines {
        let key = (d.guest_bytes, realtime_of(d), d.settings.clone());
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    for (mem, realtime, settings) in keys {
        let rows = || {
            report
                .deadlines
                .iter()
                .filter(|d| d.guest_bytes == mem && realtime_of(d) == realtime && d.settings == settings)
        };
        let shortest =
            |ok: &dyn Fn(&DeadlineRow) -> bool| rows().filter(|d| ok(d)).map(|d| d.interval_s).reduce(f64::min);
        let limit = DeadlineLimit {
            guest_bytes: mem,
            shortest_99_s: shortest(&|d| d.on_time_fraction >= 0.99),
            shortest_995_s: shortest(&|d| d.on_time_fraction >= 0.995 && d.skipped_deadlines == 0),
            realtime: realtime.into(),
            settings,
        };
        report.deadline_limits.push(limit);
    }
    Ok(())
}

/// `fifo+spin50us+mlock` and the like, from what the trace's manifest says the sampler got.
fn scheduling_label(trace: &Trace, locked: bool) -> String {
    let Some(s) = &trace.manifest.sampler else { return "unknown".into() };
    let spin = if s.spin_us > 0 { format!("+spin{}us", s.spin_us) } else { String::new() };
    format!("{}{spin}{}", s.policy, if locked { "+mlock" } else { "" })
}

/// Sleeps to `seconds` worth of deadlines `interval` apart as the sampler would (its
/// [`DeadlineSleeper`](crate::sampler::DeadlineSleeper), real-time where permitted, on the CPU a
/// real-time sampler gets), with nothing else to do: how late the host alone makes a wake-up.
fn timer_floor(interval: Duration, seconds: f64, spin: Duration) -> anyhow::Result<TimerFloorRow> {
    use crate::{clock, sampler};
    let interval_ns = interval.as_nanos() as u64;
    let spin = sampler::bounded_spin(spin, interval);
    let measure = move || {
        let realtime = sampler::make_current_thread_realtime().is_ok();
        if let Some(plan) = realtime.then(|| crate::cpus::plan(1)).flatten() {
            let _ = crate::cpus::pin_current_thread(&[plan.housekeeping]);
        }
        let mut sleeper = sampler::DeadlineSleeper::new(spin);
        let (t0, cpu0) = (clock::now_ns(), clock::this_thread_cpu_ns());
        let end = t0 + (seconds * 1e9) as u64;
        let (mut deadline, mut late, mut skipped) = (t0 + interval_ns, Vec::new(), 0);
        while deadline <= end {
            sleeper.sleep_until(deadline, || None::<()>);
            let now = clock::now_ns();
            late.push((now - deadline) as f64 / 1e9);
            let (next, passed_over) = sampler::next_deadline_after(deadline, now, interval_ns);
            (deadline, skipped) = (next, skipped + passed_over);
        }
        let cpu_share = (clock::this_thread_cpu_ns() - cpu0) as f64 / (clock::now_ns() - t0) as f64;
        (realtime, late, skipped, cpu_share)
    };
    let (realtime, mut late, skipped, cpu_share) =
        std::thread::spawn(measure).join().map_err(|_| anyhow::anyhow!("the timer-floor thread panicked"))?;
    late.sort_by(f64::total_cmp);
    let on_time = late.iter().filter(|&&l| l <= interval.as_secs_f64() / 10.0).count();
    let spin_label = if spin > Duration::ZERO { format!("+spin{}us", spin.as_micros()) } else { String::new() };
    Ok(TimerFloorRow {
        sampler: format!("{}{spin_label}", if realtime { SchedPolicy::Fifo } else { SchedPolicy::Other }),
        interval_s: interval.as_secs_f64(),
        on_time_fraction: on_time as f64 / (late.len() as u64 + skipped).max(1) as f64,
        skipped_deadlines: skipped,
        lateness_p50_s: crate::stats::percentile(&late, 0.5),
        lateness_p99_s: crate::stats::percentile(&late, 0.99),
        lateness_max_s: late.last().copied().unwrap_or(0.0),
        cpu_share,
    })
}

/// The guest's write rate untracked and tracked at 1 s, 100 ms and 10 ms, for a working set
/// that one interval rewrites many times (16 MiB) and one it cannot cover (256 MiB). The floor:
/// one write-protect fault per page per interval. Its cost is taken from the run with the most
/// faults, and each run's second is then split into writing and faulting to check the floor
/// accounts for the whole slowdown.
pub fn slowdown(opts: &BenchOptions, report: &mut BenchReport) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for ws in [16u64 << 20, 256 << 20] {
        let text = spec(opts.mem, ws.min(opts.mem / 2), "max", "sequential", opts.seconds);
        let mut base = None;
        for interval in [None, Some(1000u64), Some(100), Some(10)] {
            let iv = Duration::from_millis(interval.unwrap_or(100));
            let name = format!("slowdown-{}-{}", ws >> 20, interval.map_or("untracked".into(), |i| format!("{i}ms")));
            let (_, trace) = run(opts, &name, &text, iv, interval.is_none())?;
            let rates = trace.rates()?;
            let elapsed = rates.last().map_or(0.0, |r| r.t_end_s);
            let writes_per_s = guest_writes(&trace)? as f64 / elapsed;
            let faults: u64 = rates.iter().map(|r| r.dirty_pages.saturating_sub(1)).sum();
            let base_rate = *base.get_or_insert(writes_per_s);
            rows.push(SlowdownRow {
                working_set_bytes: ws,
                interval_s: interval.map(|i| i as f64 / 1e3),
                writes_per_s,
                slowdown: base_rate / writes_per_s,
                faults_per_s: faults as f64 / elapsed,
                implied_fault_cost_s: 0.0,
                floor_explains: 0.0,
            });
        }
    }
    // Per-fault cost from the most fault-bound run; then how much of each second it explains.
    let worst = rows
        .iter()
        .max_by(|a, b| a.faults_per_s.total_cmp(&b.faults_per_s))
        .map(|r| (r.working_set_bytes, r.faults_per_s, r.writes_per_s));
    let base_of = |ws: u64, rows: &[SlowdownRow]| {
        rows.iter().find(|r| r.working_set_bytes == ws && r.interval_s.is_none()).map_or(1.0, |r| r.writes_per_s)
    };
    if let Some((ws, faults, writes)) = worst {
        let cost = (1.0 - writes / base_of(ws, &rows)) / faults;
        let bases: Vec<f64> = rows.iter().map(|r| base_of(r.working_set_bytes, &rows)).collect();
        for (r, base) in rows.iter_mut().zip(bases) {
            r.implied_fault_cost_s = cost;
            r.floor_explains = r.writes_per_s / base + r.faults_per_s * cost;
        }
    }
    report.slowdown = rows;
    Ok(())
}

/// Bitmap bytes on disk for three patterns at about 1 % dirty per interval.
pub fn compression(opts: &BenchOptions, report: &mut BenchReport) -> anyhow::Result<()> {
    // About 1% of memory dirtied per 100 ms interval.
    let per_interval = opts.mem as f64 * 0.01;
    let rate = format!("{}", per_interval * 10.0);
    for pattern in ["sequential", "random", "hotcold"] {
        let ws = match pattern {
            "sequential" => pages(opts.mem as f64 * 0.5),
            _ => pages(opts.mem as f64 * 0.9),
        };
        let text = spec(opts.mem, ws, &format!("{rate}B/s"), pattern, opts.seconds);
        let (_, trace) = run(opts, &format!("compress-{pattern}"), &text, Duration::from_millis(100), false)?;
        let rows = steady(&trace)?;
        let keep: Vec<u64> = rows.iter().map(|r| r.interval).collect();
        let (mut raw, mut stored, mut n) = (0.0, 0.0, 0.0);
        let total_pages = opts.mem as f64 / 4096.0;
        let mut dirty = 0.0;
        for k in &keep {
            let (r, s) = stored_sizes(&trace.dir, *k)?;
            raw += r;
            stored += s;
            n += 1.0;
        }
        for r in &rows {
            dirty += r.dirty_pages as f64 / total_pages;
        }
        report.compression.push(CompressionRow {
            pattern: pattern.into(),
            dirty_fraction: dirty / n,
            raw_bytes_per_interval: raw / n,
            stored_bytes_per_interval: stored / n,
            ratio: raw / stored,
        });
    }
    Ok(())
}

/// Raw and compressed bytes of one interval's bitmaps, from the `data` column itself.
fn stored_sizes(dir: &Path, interval: u64) -> anyhow::Result<(f64, f64)> {
    use arrow::array::{Array, BinaryArray, UInt64Array};
    let f = std::fs::File::open(dir.join(crate::trace::BITMAPS))?;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)?.build()?;
    let (mut raw, mut stored) = (0.0, 0.0);
    for batch in reader {
        let batch = batch?;
        let iv = batch.column_by_name("interval").unwrap().as_any().downcast_ref::<UInt64Array>().unwrap();
        let np = batch.column_by_name("num_pages").unwrap().as_any().downcast_ref::<UInt64Array>().unwrap();
        let data = batch.column_by_name("data").unwrap().as_any().downcast_ref::<BinaryArray>().unwrap();
        for i in 0..batch.num_rows() {
            if iv.value(i) == interval {
                raw += (np.value(i).div_ceil(64) * 8) as f64;
                stored += data.value(i).len() as f64;
            }
        }
    }
    Ok((raw, stored))
}

/// What `--exact-cut` costs: the pause per harvest, and the guest's write rate with it.
pub fn exact_cut(opts: &BenchOptions, report: &mut BenchReport) -> anyhow::Result<()> {
    let text = spec(opts.mem, pages(opts.mem as f64 / 4.0), "max", "random", opts.seconds);
    for ms in [10u64, 100] {
        let interval = Duration::from_millis(ms);
        let mut rates = Vec::new();
        let mut pause = 0.0;
        for cut in [false, true] {
            let (summary, trace) =
                run_with(opts, &format!("cut-{ms}-{cut}"), &text, interval, |ro| ro.settings.exact_cut = cut)?;
            let elapsed = trace.rates()?.last().map_or(1.0, |r| r.t_end_s);
            rates.push(guest_writes(&trace)? as f64 / elapsed);
            if cut {
                pause = summary.cost.map_or(0.0, |c| c.pause_mean_s);
            }
        }
        report.exact_cut.push(ExactCutRow {
            interval_s: interval.as_secs_f64(),
            pause_mean_s: pause,
            write_rate_ratio: rates[1] / rates[0],
        });
    }
    Ok(())
}

/// Time to the Linux guest's first instruction, with the initramfs built cold and cached.
pub fn linux_setup(opts: &BenchOptions, report: &mut BenchReport) -> anyhow::Result<()> {
    let script = opts.work_dir.join("linux-bench.sh");
    // A script no earlier run has seen, so the first build misses the initramfs cache; the
    // one archive this adds to the cache is removed at the end.
    std::fs::write(&script, format!("#!/bin/sh\n# bench {}\ndt-phase bench\nsleep 1\n", crate::clock::now_ns()))?;
    let mut cached_archive = None;
    for (i, seconds) in [8.0, 1.0].into_iter().enumerate() {
        let dir = opts.work_dir.join(format!("linux-{i}"));
        let mut ro = RecordOptions::new(dir.clone());
        ro.workload = Some(script.clone());
        ro.settings.mem = Some(HumanSize(512 << 20));
        ro.settings.duration = Some(HumanDuration(Duration::from_secs_f64(seconds)));
        ro.linux.boot.allow_emulated_kernel = true;
        let summary = record::record(&ro, Arc::new(AtomicBool::new(false)), None)?;
        let trace = Trace::open(&dir)?;
        let g = &trace.manifest.guest;
        let banner = trace.guest_log()?.iter().find(|e| e.name == "kernel banner").map(|e| e.t_s);
        cached_archive = g["initramfs_sha256"].as_str().map(|sha| format!("{sha}.cpio.gz"));
        report.linux_setup.push(LinuxSetupRow {
            initramfs_cached: g["initramfs_cached"].as_bool().unwrap_or(false),
            setup_s: summary.setup_s.unwrap_or(0.0),
            initramfs_bytes: g["initramfs_bytes"].as_u64().unwrap_or(0),
            banner_s: banner,
        });
    }
    if let Some(name) = cached_archive {
        let _ = std::fs::remove_file(crate::guest::linux::kit::cache_dir().join("initramfs").join(name));
    }
    Ok(())
}

/// The report, for people.
pub fn render(r: &BenchReport) -> String {
    let mut s = String::new();
    if !r.linux_setup.is_empty() {
        s.push_str("Linux guest: record → first guest instruction\n");
        for l in &r.linux_setup {
            s.push_str(&format!(
                "  initramfs {:>6}: {:>7.1} ms to first instruction, initramfs {:.2} MiB{}\n",
                if l.initramfs_cached { "cached" } else { "built" },
                l.setup_s * 1e3,
                l.initramfs_bytes as f64 / (1 << 20) as f64,
                l.banner_s.map_or(String::new(), |b| format!(", kernel banner after {b:.2} s"))
            ));
        }
        s.push('\n');
    }
    s.push_str("Harvest cost per GiB of guest memory (100 ms interval; own = sampler + writer)\n");
    s.push_str("  dirty   measured   ioctl µs/GiB   own µs/GiB  (sampler   writer)   own/ioctl\n");
    for h in &r.harvest_cost {
        s.push_str(&format!(
            "  {:>5.1}%  {:>7.3}%   {:>12.1}   {:>10.1}  ({:>7.1}  {:>7.1})   {:>8.1}%\n",
            h.dirty_fraction_target * 100.0,
            h.dirty_fraction_measured * 100.0,
            h.ioctl_s_per_gib * 1e6,
            h.own_s_per_gib * 1e6,
            h.sampler_own_s_per_gib * 1e6,
            h.writer_s_per_gib * 1e6,
            h.own_over_ioctl * 100.0
        ));
    }
    if !r.timer_floor.is_empty() {
        s.push_str("\nThe host's timer floor (a thread sleeping to the deadlines on the sampler's CPU; no guest)\n");
        s.push_str("  sampler            interval  on time  skipped  late p50   late p99   late max  CPU\n");
        for f in &r.timer_floor {
            s.push_str(&format!(
                "  {:<17} {:>5.0} ms  {:>6.2}%  {:>7}  {:>5.1} µs  {:>6.1} µs  {:>5.2} ms  {:>5.2}%\n",
                f.sampler,
                f.interval_s * 1e3,
                f.on_time_fraction * 100.0,
                f.skipped_deadlines,
                f.lateness_p50_s * 1e6,
                f.lateness_p99_s * 1e6,
                f.lateness_max_s * 1e3,
                f.cpu_share * 100.0
            ));
        }
    }
    s.push_str(
        "\nDeadlines (on time = the harvest begins within a tenth of the interval; a skipped deadline counts as\nmissed; random writer at 100 MiB/s)\n",
    );
    s.push_str("   guest  sampler              interval  on time  skipped  late p99  late max  ioctl p50  guest writes/s  sampler CPU\n");
    for d in &r.deadlines {
        s.push_str(&format!(
            "  {:>4} GiB  {:<19} {:>5.0} ms  {:>6.2}%  {:>7}  {:>5.3} ms  {:>5.3} ms  {:>6.3} ms  {:>14.0}  {:>10.2}%\n",
            d.guest_bytes >> 30,
            d.sampler,
            d.interval_s * 1e3,
            d.on_time_fraction * 100.0,
            d.skipped_deadlines,
            d.lateness_p99_s * 1e3,
            d.lateness_max_s * 1e3,
            d.ioctl_p50_s * 1e3,
            d.guest_writes_per_s,
            d.sampler_cpu_share * 100.0
        ));
    }
    let ms = |v: Option<f64>| v.map_or("none of those tried".to_string(), |i| format!("{:.0} ms", i * 1e3));
    for l in &r.deadline_limits {
        s.push_str(&format!(
            "  {:>4} GiB, realtime {:<3} {:<8} shortest interval with ≥ 99% on time: {}; with ≥ 99.5% and none skipped: {}\n",
            l.guest_bytes >> 30,
            l.realtime,
            l.settings,
            ms(l.shortest_99_s),
            ms(l.shortest_995_s)
        ));
    }
    s.push_str("\nGuest slowdown from tracking (rate = max, sequential; floor = one fault per page per interval)\n");
    if let Some(c) = r.slowdown.first().map(|w| w.implied_fault_cost_s) {
        s.push_str(&format!("  write-protect fault cost on this host: {:.2} µs\n", c * 1e6));
    }
    for w in &r.slowdown {
        let name = w.interval_s.map_or("untracked".to_string(), |i| format!("{:.0} ms", i * 1e3));
        s.push_str(&format!(
            "  ws {:>3} MiB {name:>10}: {:>11.0} writes/s, slowdown {:>7.2}×, {:>7.0} faults/s, floor explains {:>5.1}% of the time\n",
            w.working_set_bytes >> 20,
            w.writes_per_s,
            w.slowdown,
            w.faults_per_s,
            w.floor_explains * 100.0
        ));
    }
    if !r.exact_cut.is_empty() {
        s.push_str("\nExact cut (--exact-cut: vCPUs held outside the guest during each harvest)\n");
        for c in &r.exact_cut {
            s.push_str(&format!(
                "  {:>5.0} ms: pause {:.1} µs per harvest, guest write rate ×{:.3} of uncut\n",
                c.interval_s * 1e3,
                c.pause_mean_s * 1e6,
                c.write_rate_ratio
            ));
        }
    }
    s.push_str("\nBitmap bytes on disk per interval (≈1% of pages dirty)\n");
    for c in &r.compression {
        s.push_str(&format!(
            "  {:>10}: {:.2}% dirty, raw {:.0} B, stored {:.0} B, {:.1}× smaller\n",
            c.pattern,
            c.dirty_fraction * 100.0,
            c.raw_bytes_per_interval,
            c.stored_bytes_per_interval,
            c.ratio
        ));
    }
    s
}
