//! `dirtytrace bench`'s report, for people.

use crate::bench::BenchReport;

/// `dirtytrace bench`'s report, for people.
pub fn bench_text(r: &BenchReport) -> String {
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
    s.push_str(
        "  dirty   measured   ioctl µs/GiB   own µs/GiB  (sampler   writer)   own/ioctl   writer work vs 44c1d43\n",
    );
    for h in &r.harvest_cost {
        s.push_str(&format!(
            "  {:>5.1}%  {:>7.3}%   {:>12.1}   {:>10.1}  ({:>7.1}  {:>7.1})   {:>8.1}%   {:>21}\n",
            h.dirty_fraction_target * 100.0,
            h.dirty_fraction_measured * 100.0,
            h.ioctl_s_per_gib * 1e6,
            h.own_s_per_gib * 1e6,
            h.sampler_own_s_per_gib * 1e6,
            h.writer_s_per_gib * 1e6,
            h.own_over_ioctl * 100.0,
            h.writer_work_over_44c1d43.map_or("-".to_string(), |r| format!("{r:.2}x"))
        ));
    }
    if !r.writer_work.is_empty() {
        s.push_str(
            "\nThe writer's work per harvest on the same bitmaps, as 44c1d43 (format 1) did it and as now\n\
             (page list, encoding, working-set window; median thread CPU, alternating harvests)\n",
        );
        s.push_str("  pattern      dirty  encoding      before µs/GiB  now µs/GiB   now/before\n");
        for w in &r.writer_work {
            s.push_str(&format!(
                "  {:<10} {:>5.1}%  {:<12}  {:>13.1}  {:>10.1}   {:>9.2}\n",
                w.pattern,
                w.dirty_fraction * 100.0,
                w.encoding,
                w.before_s_per_gib * 1e6,
                w.now_s_per_gib * 1e6,
                w.ratio
            ));
        }
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
    if !r.compression.is_empty() {
        s.push_str(
            "\nBitmap bytes on disk per interval (as stored, each bitmap's encoding chosen by the writer, and as zstd\nalone, format version 1's only encoding; bound: the pattern's entropy bound, each of its regions uniformly random)\n",
        );
        if let Some(c) = r.compression.first() {
            s.push_str(&format!("  interval {:.0} ms\n", c.interval_s * 1e3));
        }
        s.push_str("     pattern    dirty     raw B  stored B   ratio  varint-gaps  zstd-only B   ratio   bound  stored/bound  encode µs (zstd-only)  decode µs (zstd-only)\n");
        for c in &r.compression {
            let bound = c.bound_ratio.map_or("—".to_string(), |b| format!("{b:.1}×"));
            let over = c.bound_ratio.map_or("—".to_string(), |b| format!("{:.2}×", b / c.ratio));
            s.push_str(&format!(
                "  {:>10}  {:>6.3}%  {:>8.0}  {:>8.0}  {:>6.1}×  {:>10.0}%  {:>11.0}  {:>6.1}×  {:>6}  {:>12}  {:>9.1} ({:>9.1})  {:>9.1} ({:>9.1})\n",
                c.pattern,
                c.dirty_fraction * 100.0,
                c.raw_bytes_per_interval,
                c.stored_bytes_per_interval,
                c.ratio,
                c.varint_gaps_share * 100.0,
                c.zstd_only_bytes_per_interval,
                c.zstd_only_ratio,
                bound,
                over,
                c.encode_s_per_interval * 1e6,
                c.zstd_only_encode_s_per_interval * 1e6,
                c.decode_s_per_interval * 1e6,
                c.zstd_only_decode_s_per_interval * 1e6
            ));
        }
    }
    s
}
