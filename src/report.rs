//! Human-readable output for the command line. Rates show in MiB/s, sizes in binary units.

use crate::record::RecordSummary;
use crate::units::{HumanBytes, MIB};

pub fn record_summary(s: &RecordSummary) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("  {k:<26} {v}\n"));
    line("trace", s.trace_dir.display().to_string());
    line("status", format!("{:?} ({})", s.status, s.end_reason).to_lowercase());
    line(
        "intervals",
        format!("{} over {:.3} s (mean interval {:.3} ms)", s.intervals, s.duration_s, s.mean_interval_s * 1e3),
    );
    line("guest RAM", HumanBytes(s.ramsize_bytes as f64).to_string());
    line("dirty rate, mean", format!("{:.2} MiB/s", s.mean_dirty_rate_bytes_per_s / MIB));
    line("dirty rate, max interval", format!("{:.2} MiB/s", s.max_dirty_rate_bytes_per_s / MIB));
    line("distinct pages dirtied", format!("{} ({})", s.distinct_pages, HumanBytes(s.distinct_pages as f64 * 4096.0)));
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
    line("KVM_GET_DIRTY_LOG, p50", format!("{:.3} ms", s.harvest_ioctl_p50_s * 1e3));
    if let Some(code) = s.guest_exit_status {
        line("guest exit status", code.to_string());
    }
    if let Some(e) = &s.error {
        out.push_str(&format!("\n{e}\n"));
    }
    out
}
