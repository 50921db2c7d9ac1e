//! Deadlines kept at short intervals, and the host's own timer floor.

use super::{guest_writes, run_with, spec, BenchOptions, BenchReport, DEADLINE_INTERVALS_MS};
use crate::record;
use crate::trace::{SchedPolicy, Trace};
use serde::Serialize;
use std::time::Duration;

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
                    let tolerance = crate::trace::HarvestTiming::on_time_tolerance_s(interval.as_secs_f64());
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
    let spin = sampler::spin_for(Some(spin), interval);
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
    let tolerance = crate::trace::HarvestTiming::on_time_tolerance_s(interval.as_secs_f64());
    let on_time = late.iter().filter(|&&l| l <= tolerance).count();
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
