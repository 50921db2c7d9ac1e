//! Human-readable output for the command line. Rates show in MiB/s, sizes in binary units.

mod bench;

pub use bench::bench_text;

use crate::record::RecordSummary;
use crate::units::{HumanBytes, MIB, PAGE_SIZE};

/// `dirtytrace record`'s summary, for people.
pub fn record_summary(s: &RecordSummary) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("  {k:<26} {v}\n"));
    line("trace", s.trace_dir.display().to_string());
    line("status", s.end_reason.map_or(s.status.to_string(), |r| format!("{} ({r})", s.status)));
    line(
        "intervals",
        format!("{} over {:.3} s (mean interval {:.3} ms)", s.intervals, s.duration_s, s.mean_interval_s * 1e3),
    );
    line("engine", s.engine_reason.as_ref().map_or(s.engine.clone(), |why| format!("{} ({why})", s.engine)));
    if let Some(setup) = s.setup_s {
        line("setup", format!("{:.3} s from start to the guest's first instruction", setup));
    }
    line("guest RAM", HumanBytes(s.ramsize_bytes as f64).to_string());
    line("dirty rate, mean", format!("{:.2} MiB/s", s.mean_dirty_rate_bytes_per_s / MIB as f64));
    line("dirty rate, max interval", format!("{:.2} MiB/s", s.max_dirty_rate_bytes_per_s / MIB as f64));
    line(
        "distinct pages dirtied",
        format!("{} ({})", s.distinct_pages, HumanBytes(s.distinct_pages as f64 * PAGE_SIZE as f64)),
    );
    line("vCPU utilisation, mean", format!("{:.3} cores", s.mean_cpu_util));
    line(
        "harvest lateness",
        format!(
            "p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; {} missed deadlines",
            s.harvest_lateness_p50_s * 1e3,
            s.harvest_lateness_p99_s * 1e3,
            s.harvest_lateness_max_s * 1e3,
            s.missed_deadlines
        ),
    );
    let harvest_call = if s.engine == "qemu" { "PAGEMAP_SCAN, p50" } else { "KVM_GET_DIRTY_LOG, p50" };
    line(harvest_call, format!("{:.3} ms", s.harvest_ioctl_p50_s * 1e3));
    if let Some(code) = s.guest_exit_status {
        line("guest exit status", code.to_string());
    }
    if let Some(e) = &s.error {
        out.push_str(&format!("\n{e}\n"));
    }
    out
}

// ---- Offline analysis (`summarize`, `simgrid`, `replay`) ----

use crate::analysis::replay::{ReplayResult, ZeroPages};
use crate::analysis::simgrid::start::StartParams;
use crate::analysis::simgrid::SimgridParams;
use crate::analysis::summary::{Stats, Summary};
use crate::units::HumanBytes as HB;

fn rate_stats(s: &Stats) -> String {
    format!(
        "mean {:.2}, p50 {:.2}, p95 {:.2}, max {:.2} MiB/s",
        s.mean / MIB as f64,
        s.p50 / MIB as f64,
        s.p95 / MIB as f64,
        s.max / MIB as f64
    )
}

fn cpu_stats(s: &Stats) -> String {
    format!("mean {:.3}, p50 {:.3}, p95 {:.3}, max {:.3} cores", s.mean, s.p50, s.p95, s.max)
}

/// `dirtytrace summarize`, for people.
pub fn summary_text(s: &Summary) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("  {k:<24} {v}\n"));
    line("trace", format!("{} ({})", s.trace_dir.display(), s.trace_id));
    if let Some(p) = &s.phase {
        line("phase", p.clone());
    }
    line(
        "duration",
        format!(
            "{:.3} s in {} intervals ({:.3} s to {:.3} s; interval {} ms)",
            s.duration_s,
            s.intervals,
            s.start_s,
            s.end_s,
            s.interval_s * 1e3
        ),
    );
    line(
        "guest RAM",
        format!("{} ({} vCPU{})", HB(s.ramsize_bytes as f64), s.vcpus, if s.vcpus == 1 { "" } else { "s" }),
    );
    line("dirty rate", rate_stats(&s.dirty_rate_bytes_per_s));
    line("CPU utilisation", cpu_stats(&s.cpu_util_cores));
    line("distinct pages dirtied", format!("{} ({})", s.distinct_pages, HB(s.distinct_bytes as f64)));
    line("dirtied, all intervals", HB(s.dirtied_bytes_total as f64).to_string());
    out.push_str("\n  working-set curve: distinct bytes dirtied within a sliding window\n");
    out.push_str(&format!("  {:>10} {:>10} {:>14} {:>14}\n", "window", "positions", "max", "mean"));
    for p in &s.working_set_curve {
        out.push_str(&format!(
            "  {:>8.1} s {:>10} {:>10.1} MiB {:>10.1} MiB\n",
            p.window_s,
            p.windows,
            p.max_bytes as f64 / MIB as f64,
            p.mean_bytes / MIB as f64
        ));
    }
    if s.working_set_curve.is_empty() {
        out.push_str("  (no window fits: the trace is shorter than the smallest window)\n");
    }
    out.push_str("\n  hottest pages: intervals in which each was dirty\n");
    for h in &s.hottest_pages {
        out.push_str(&format!(
            "  page {:>10} (0x{:09x}) {:>8} intervals ({:5.1} %){}\n",
            h.guest_page,
            h.guest_phys_addr,
            h.dirty_intervals,
            h.fraction_of_intervals * 100.0,
            if h.guest_own { "  guest's own page" } else { "" }
        ));
    }
    out.push_str("\n  phases\n");
    for p in &s.phases {
        out.push_str(&format!(
            "  {:<16} {:>6} intervals, {:8.3} s, {} run{}; distinct {}\n  {:<16} dirty rate {}; CPU {:.3} cores\n",
            p.name,
            p.intervals,
            p.duration_s,
            p.runs,
            if p.runs == 1 { "" } else { "s" },
            HB(p.distinct_bytes as f64),
            "",
            rate_stats(&p.dirty_rate_bytes_per_s),
            p.cpu_util_cores.mean,
        ));
    }
    out
}

/// `dirtytrace simgrid`, for people.
pub fn simgrid_text(p: &SimgridParams) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("  {k:<28} {v}\n"));
    line("trace", p.trace_id.clone());
    if let Some(ph) = &p.phase {
        line("phase", ph.clone());
    }
    line("fitted over", format!("{} intervals, {:.3} s", p.intervals, p.duration_s));
    line("ramsize", format!("{} bytes ({})", p.ramsize_bytes, HB(p.ramsize_bytes as f64)));
    line("migration speed", format!("{:.2} MiB/s", p.migration_speed_bytes_per_s / MIB as f64));
    line("dirty page intensity", format!("{:.6} (of the migration speed, per core of load)", p.dp_intensity));
    line(
        "working set memory",
        format!(
            "{} ({} window{})",
            HB(p.working_set_memory_bytes as f64),
            format_args!("{:.3} s", p.working_set_window_s),
            if p.working_set_window_covered { "" } else { ", longer than the trace" }
        ),
    );
    line("VM load", format!("{:.3} cores (mean)", p.cpu_util));
    line("dirty rate", format!("{:.2} MiB/s (mean)", p.dirty_rate_bytes_per_s / MIB as f64));
    line(
        "sg_vm_create_migratable",
        format!(
            "ramsize {} MiB, mig_netspeed {} MiB/s, dp_intensity {} %",
            p.create_migratable.ramsize_mib,
            p.create_migratable.mig_netspeed_mib_per_s,
            p.create_migratable.dp_intensity_percent
        ),
    );
    for n in &p.notes {
        out.push_str(&format!("  note: {n}\n"));
    }
    out
}

/// `dirtytrace simgrid --start`, for people.
pub fn simgrid_start_text(p: &StartParams) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("  {k:<28} {v}\n"));
    line("trace", p.trace_id.clone());
    line(
        "migration",
        format!(
            "from {:.3} s at {:.2} MiB/s, max downtime {:.0} ms, zero pages skipped",
            p.start_s,
            p.migration_speed_bytes_per_s / MIB as f64,
            p.max_downtime_s * 1e3
        ),
    );
    line(
        "round0 (SimGrid's ramsize)",
        format!(
            "{} bytes ({}; {} pages with data; guest RAM {})",
            p.round0_bytes,
            HB(p.round0_bytes as f64),
            p.round0_nonzero_pages,
            HB(p.guest_ram_bytes as f64)
        ),
    );
    line("dirty page intensity", format!("{:.6} (of the migration speed, per core of load)", p.dp_intensity));
    line(
        "working set memory",
        format!(
            "{} ({})",
            HB(p.working_set_memory_bytes as f64),
            if p.fit.working_set_from_rounds { "fitted cap" } else { "no round reached a cap" }
        ),
    );
    line("VM load", format!("{:.3} cores (mean over {} intervals)", p.cpu_util, p.migration_intervals));
    line("dirty rate", format!("{:.2} MiB/s", p.dirty_rate_bytes_per_s / MIB as f64));
    line(
        "fit",
        format!(
            "{}; the line misses the rounds' dirtied bytes by {:.1} % ({:.1} % beyond one interval)",
            if p.fit.valid { "valid" } else { "INVALID" },
            p.fit.curve_error * 100.0,
            p.fit.curve_error_beyond_resolution * 100.0
        ),
    );
    out.push_str(&format!("  {:<10} {:>10} {:>12} {:>7} {:>10}\n", "", "total", "sent", "rounds", "converged"));
    let (r, m) = (&p.replay, &p.model);
    for (name, t, b, n, c) in [
        ("replay", r.total_time_s, r.transferred_bytes, r.rounds, r.converged),
        ("SimGrid", m.total_time_s, m.transferred_bytes, m.rounds, m.converged),
    ] {
        out.push_str(&format!(
            "  {name:<10} {t:>8.3} s {:>8.2} MiB {n:>7} {:>10}\n",
            b as f64 / MIB as f64,
            if c { "yes" } else { "no" }
        ));
    }
    match (p.difference.total_time_pct, p.difference.transferred_bytes_pct, p.difference.rounds) {
        (Some(t), Some(b), Some(n)) => {
            out.push_str(&format!("  {:<10} {t:>+8.2} % {b:>+8.2} %   {n:>+5}\n", "difference"))
        }
        _ => out.push_str("  difference: none to compare; a migration that does not converge has no total time\n"),
    }
    for e in &p.fit.errors {
        out.push_str(&format!("  fit error: {e}\n"));
    }
    for n in &p.notes {
        out.push_str(&format!("  note: {n}\n"));
    }
    out
}

/// `dirtytrace replay`, for people.
pub fn replay_text(r: &ReplayResult) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "  precopy migration at {:.2} MiB/s, max downtime {:.1} ms, at most {} rounds, from {:.3} s{}{}\n",
        r.bandwidth_bytes_per_s / MIB as f64,
        r.max_downtime_s * 1e3,
        r.max_rounds,
        r.start_s,
        if r.zero_pages == ZeroPages::Skip { ", zero pages skipped" } else { "" },
        if r.trace_passes > 1 { format!(", trace looped ({} passes)", r.trace_passes) } else { String::new() },
    ));
    out.push_str(&format!("  {:>5} {:>10} {:>10} {:>12}\n", "round", "start", "duration", "sent"));
    for x in &r.per_round {
        out.push_str(&format!(
            "  {:>5} {:>8.3} s {:>8.3} s {:>8.2} MiB\n",
            x.round,
            x.start_s,
            x.duration_s,
            x.bytes as f64 / MIB as f64
        ));
    }
    out.push_str(&format!(
        "  {:>5} {:>8.3} s {:>8.3} s {:>8.2} MiB  (stop-and-copy)\n",
        "stop",
        r.total_time_s - r.downtime_s,
        r.downtime_s,
        r.stop_and_copy.bytes as f64 / MIB as f64
    ));
    let downtime =
        if r.downtime_s < 1.0 { format!("{:.1} ms", r.downtime_s * 1e3) } else { format!("{:.3} s", r.downtime_s) };
    out.push_str(&format!(
        "  total {:.3} s, downtime {downtime}, {} rounds, {} sent; {}\n",
        r.total_time_s,
        r.rounds,
        HB(r.transferred_bytes as f64),
        if r.converged { "converged" } else { "stopped at --max-rounds without converging" }
    ));
    for n in &r.notes {
        out.push_str(&format!("  note: {n}\n"));
    }
    out
}
