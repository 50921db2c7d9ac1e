//! A trace's invariants, checked once, where it is read (and where `recover` rebuilds one),
//! so that every tool downstream can trust what it is given. A violation names the row and
//! the field.

use super::limits::*;
use super::manifest::Manifest;
use super::records::{Encoding, IntervalRow, MemorySlot, SlotBlob};
use crate::units::PAGE_SIZE;

/// What is wrong with a trace's contents: the row (where there is one), the field and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}`{field}` {problem}", row.map(|r| format!("row {r}: ")).unwrap_or_default())]
pub struct Invalid {
    /// The row of the table (0-based), for a table.
    pub row: Option<u64>,
    /// The field or column.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

pub(crate) fn invalid(row: Option<u64>, field: impl Into<String>, problem: impl Into<String>) -> Invalid {
    Invalid { row, field: field.into(), problem: problem.into() }
}

/// What is wrong with a phase name or a `trace_id`, if anything: too long, or holding control
/// characters (a newline would split an error message, an escape sequence would reach the
/// terminal).
pub fn name_problem(name: &str) -> Option<String> {
    if name.len() > MAX_NAME_BYTES {
        return Some(format!("is {} bytes long; a name has at most {MAX_NAME_BYTES}", name.len()));
    }
    name.chars().any(char::is_control).then(|| "holds control characters (newlines, tabs, escapes)".to_string())
}

/// `name` made acceptable to [`name_problem`]: control characters become `?` and it is cut
/// to [`MAX_NAME_BYTES`] on a character boundary. For names a running guest reports, which
/// cannot be refused without losing the intervals they label.
pub fn sanitize_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len().min(MAX_NAME_BYTES));
    for c in name.chars().map(|c| if c.is_control() { '?' } else { c }) {
        if out.len() + c.len_utf8() > MAX_NAME_BYTES {
            break;
        }
        out.push(c);
    }
    out
}

fn finite_nonneg(v: f64) -> bool {
    v.is_finite() && v >= 0.0
}

/// Checks a manifest against itself and the limits.
pub fn check_manifest(m: &Manifest) -> Result<(), Invalid> {
    let bad = |field: &str, problem: String| Err(invalid(None, field, problem));
    if m.page_size != PAGE_SIZE {
        return bad("page_size", format!("is {}; this dirtytrace reads traces of {PAGE_SIZE}-byte pages", m.page_size));
    }
    if m.trace_id.is_empty() {
        return bad("trace_id", "is empty".into());
    }
    if let Some(problem) = name_problem(&m.trace_id) {
        return bad("trace_id", problem);
    }
    if m.slots.is_empty() || m.slots.len() > MAX_SLOTS {
        return bad("slots", format!("has {} slots; a trace has 1 to {MAX_SLOTS}", m.slots.len()));
    }
    let mut total = 0u64;
    let mut previous: Option<&MemorySlot> = None;
    for (i, s) in m.slots.iter().enumerate() {
        let field = format!("slots[{i}]");
        if s.size_bytes == 0 || s.size_bytes % PAGE_SIZE != 0 || s.guest_phys_addr % PAGE_SIZE != 0 {
            return bad(&field, "must start on a page and hold a whole, non-zero number of pages".into());
        }
        if s.size_bytes > MAX_GUEST_BYTES || s.guest_phys_addr.checked_add(s.size_bytes).is_none() {
            return bad(&field, format!("is larger than the largest guest a trace may hold ({MAX_GUEST_BYTES} bytes)"));
        }
        if let Some(p) = previous {
            if s.guest_phys_addr < p.guest_phys_addr + p.size_bytes {
                return bad(&field, "overlaps the slot before it, or is out of address order".into());
            }
        }
        if m.slots[..i].iter().any(|o| o.slot == s.slot) {
            return bad(&field, format!("repeats slot number {}", s.slot));
        }
        total += s.size_bytes;
        previous = Some(s);
    }
    if total > MAX_GUEST_BYTES {
        return bad(
            "slots",
            format!("add up to {total} bytes, more than the largest guest a trace may hold ({MAX_GUEST_BYTES})"),
        );
    }
    if m.ramsize_bytes != total {
        return bad("ramsize_bytes", format!("is {}, but the slots add up to {total}", m.ramsize_bytes));
    }
    if m.vcpus == 0 || m.vcpus > MAX_VCPUS {
        return bad("vcpus", format!("is {}; a trace has 1 to {MAX_VCPUS}", m.vcpus));
    }
    if !(m.interval_s.is_finite() && m.interval_s > 0.0 && m.interval_s <= MAX_INTERVAL_S) {
        return bad(
            "interval_s",
            format!("is {}; it must be more than 0 and at most {MAX_INTERVAL_S} s", m.interval_s),
        );
    }
    if m.duration_limit_s.is_some_and(|d| !(d.is_finite() && d > 0.0 && d <= MAX_TRACE_S)) {
        return bad("duration_limit_s", format!("must be more than 0 and at most {MAX_TRACE_S} s, or null"));
    }
    let speed = m.migration_speed_bytes_per_s;
    if !(speed.is_finite() && speed > 0.0 && speed <= MAX_SPEED_BYTES_PER_S) {
        return bad(
            "migration_speed_bytes_per_s",
            format!("is {speed}; it must be more than 0 and at most {MAX_SPEED_BYTES_PER_S}"),
        );
    }
    if !finite_nonneg(m.working_set_window_s) {
        return bad(
            "working_set_window_s",
            format!("is {}; it must be a finite number of seconds", m.working_set_window_s),
        );
    }
    if !m.start_unix_s.is_finite() {
        return bad("start_unix_s", "must be a finite number".into());
    }
    let in_a_slot = |first: u64, count: u64| {
        m.slots.iter().any(|s| first >= s.first_page() && first.saturating_add(count) <= s.first_page() + s.num_pages())
    };
    if m.guest_own_pages.len() > MAX_NAME_BYTES {
        return bad("guest_own_pages", format!("lists more than {MAX_NAME_BYTES} pages"));
    }
    if let Some(p) = m.guest_own_pages.iter().find(|&&p| !in_a_slot(p, 1)) {
        return bad("guest_own_pages", format!("lists page {p}, which no slot holds"));
    }
    let mut nonzero = 0u64;
    for (i, r) in m.initial_nonzero_pages.iter().enumerate() {
        if r.count == 0 || !in_a_slot(r.first, r.count) {
            return bad(&format!("initial_nonzero_pages[{i}]"), "is empty, or not inside one slot".into());
        }
        nonzero += r.count;
    }
    if nonzero > total / PAGE_SIZE {
        return bad("initial_nonzero_pages", "holds more pages than the guest has".into());
    }
    let t = &m.timing;
    let times = [
        ("timing.lateness_p50_s", t.lateness_p50_s),
        ("timing.lateness_p99_s", t.lateness_p99_s),
        ("timing.lateness_max_s", t.lateness_max_s),
        ("timing.ioctl_p50_s", t.ioctl_p50_s),
        ("timing.ioctl_p99_s", t.ioctl_p99_s),
        ("timing.ioctl_max_s", t.ioctl_max_s),
        ("timing.on_time_tolerance_s", t.on_time_tolerance_s),
        ("timing.mean_interval_s", t.mean_interval_s),
    ];
    if let Some((field, v)) = times.iter().find(|(_, v)| !finite_nonneg(*v)) {
        return bad(field, format!("is {v}; it must be a finite number of seconds"));
    }
    Ok(())
}

/// Checks `rates.parquet` rows one by one, in order, against the manifest and each other.
pub struct RowChecker {
    trace_id: String,
    total_pages: u64,
    ramsize: u64,
    vcpus: usize,
    row: u64,
    last: Option<(u64, f64)>,
    last_partial: bool,
}

impl RowChecker {
    /// A checker for the rows of the trace `m` describes.
    pub fn new(m: &Manifest) -> Self {
        RowChecker {
            trace_id: m.trace_id.clone(),
            total_pages: m.total_pages(),
            ramsize: m.ramsize_bytes,
            vcpus: m.vcpus as usize,
            row: 0,
            last: None,
            last_partial: false,
        }
    }

    /// Rows checked so far.
    pub fn rows(&self) -> u64 {
        self.row
    }

    /// Checks the next row.
    pub fn check(&mut self, r: &IntervalRow) -> Result<(), Invalid> {
        let row = Some(self.row);
        let bad = |field: &str, problem: String| Err(invalid(row, field, problem));
        if !finite_nonneg(r.t_start_s) {
            return bad("t_start_s", format!("is {}; it must be a finite time of 0 s or later", r.t_start_s));
        }
        if let Some((interval, t_end)) = self.last {
            if self.last_partial {
                return bad(
                    "partial",
                    format!(
                        "row {} is partial (cut short by the end of the recording), yet this row follows it",
                        self.row - 1
                    ),
                );
            }
            if r.interval <= interval {
                return bad("interval", format!("is {}, not after the row before's {interval}", r.interval));
            }
            if r.t_start_s < t_end {
                return bad("t_start_s", format!("is {}, before the row before ends ({t_end})", r.t_start_s));
            }
        }
        if !(r.t_end_s.is_finite() && r.t_end_s > r.t_start_s) {
            return bad(
                "t_end_s",
                format!("is {}; it must be finite and after t_start_s ({})", r.t_end_s, r.t_start_s),
            );
        }
        if r.t_end_s > MAX_TRACE_S {
            return bad("t_end_s", format!("is {} s, later than a trace may last ({MAX_TRACE_S} s)", r.t_end_s));
        }
        let length = r.t_end_s - r.t_start_s;
        if length < MIN_INTERVAL_LENGTH_S {
            return bad(
                "t_end_s",
                format!("is {length:e} s after t_start_s; an interval lasts at least {MIN_INTERVAL_LENGTH_S:e} s"),
            );
        }
        if !(r.duration_s > 0.0 && (r.duration_s - length).abs() <= 1e-9 * r.t_end_s.max(1.0)) {
            return bad("duration_s", format!("is {}, but t_end_s - t_start_s is {length}", r.duration_s));
        }
        if r.dirty_pages > self.total_pages {
            return bad(
                "dirty_pages",
                format!("is {}, more than the guest's {} pages", r.dirty_pages, self.total_pages),
            );
        }
        if r.dirty_bytes != r.dirty_pages * PAGE_SIZE {
            return bad("dirty_bytes", format!("is {}, not dirty_pages × {PAGE_SIZE}", r.dirty_bytes));
        }
        if !finite_nonneg(r.dirty_rate_bytes_per_s) {
            return bad("dirty_rate_bytes_per_s", format!("is {}", r.dirty_rate_bytes_per_s));
        }
        if r.new_pages > r.dirty_pages {
            return bad("new_pages", format!("is {}, more than dirty_pages", r.new_pages));
        }
        if r.distinct_pages_total > self.total_pages {
            return bad("distinct_pages_total", format!("is {}, more than the guest's pages", r.distinct_pages_total));
        }
        if r.working_set_memory_bytes > self.ramsize {
            return bad(
                "working_set_memory_bytes",
                format!("is {}, more than the guest's RAM", r.working_set_memory_bytes),
            );
        }
        if !finite_nonneg(r.cpu_util) {
            return bad("cpu_util", format!("is {}", r.cpu_util));
        }
        if r.cpu_util_per_vcpu.len() != self.vcpus || !r.cpu_util_per_vcpu.iter().all(|&c| finite_nonneg(c)) {
            return bad("cpu_util_per_vcpu", format!("must hold {} finite values of 0 or more", self.vcpus));
        }
        if let Some(problem) = name_problem(&r.phase) {
            return bad("phase", problem);
        }
        if r.trace_id != self.trace_id {
            return bad("trace_id", format!("is {:?}, not the manifest's", r.trace_id));
        }
        if r.ramsize_bytes != self.ramsize {
            return bad("ramsize_bytes", format!("is {}, not the manifest's {}", r.ramsize_bytes, self.ramsize));
        }
        if !(r.migration_speed_bytes_per_s.is_finite() && r.migration_speed_bytes_per_s > 0.0) {
            return bad("migration_speed_bytes_per_s", format!("is {}", r.migration_speed_bytes_per_s));
        }
        if r.dp_intensity.is_some_and(|d| !finite_nonneg(d)) {
            return bad("dp_intensity", format!("is {:?}", r.dp_intensity));
        }
        if !finite_nonneg(r.harvest_lateness_s) || !finite_nonneg(r.harvest_ioctl_s) {
            return bad("harvest_lateness_s", "and harvest_ioctl_s must be finite times of 0 s or more".into());
        }
        if r.guest_progress_before.len() > self.vcpus || r.guest_progress_after.len() != r.guest_progress_before.len() {
            return bad(
                "guest_progress_before",
                format!("and guest_progress_after must hold one word per vCPU ({}) or none", self.vcpus),
            );
        }
        self.last = Some((r.interval, r.t_end_s));
        self.last_partial = r.partial;
        self.row += 1;
        Ok(())
    }
}

/// Checks one bitmap row against the manifest's slot `index`, before anything is decoded.
pub fn check_blob(m: &Manifest, index: usize, blob: &SlotBlob, row: Option<u64>) -> Result<(), Invalid> {
    let Some(s) = m.slots.get(index) else {
        return Err(invalid(
            row,
            "slot",
            format!("{}: the interval has more bitmaps than the manifest has slots", blob.slot),
        ));
    };
    let bad = |field: &str, problem: String| Err(invalid(row, field, problem));
    if blob.slot != s.slot {
        return bad("slot", format!("is {}, where the manifest has slot {}", blob.slot, s.slot));
    }
    if blob.first_page != s.first_page() || blob.num_pages != s.num_pages() {
        return bad(
            "num_pages",
            format!(
                "slot {} covers pages {}+{}, the manifest says {}+{}",
                s.slot,
                blob.first_page,
                blob.num_pages,
                s.first_page(),
                s.num_pages()
            ),
        );
    }
    if blob.dirty_pages > blob.num_pages {
        return bad("dirty_pages", format!("is {}, more than the slot's {} pages", blob.dirty_pages, blob.num_pages));
    }
    if blob.encoding.since_version() > m.format_version {
        return bad(
            "encoding",
            format!("is {}, which format_version {} does not have", blob.encoding.as_str(), m.format_version),
        );
    }
    match blob.encoding {
        Encoding::Zstd if blob.raw_bytes != s.bitmap_bytes() => {
            return bad(
                "raw_bytes",
                format!("is {}, not ceil(num_pages / 64) × 8 = {}", blob.raw_bytes, s.bitmap_bytes()),
            );
        }
        // A gap stream takes at least a byte per page and, as writers keep it, no more than
        // the raw bitmap: this bounds a decoder's buffer.
        Encoding::VarintGaps if blob.raw_bytes > s.bitmap_bytes() || blob.raw_bytes < blob.dirty_pages => {
            return bad(
                "raw_bytes",
                format!(
                    "is {}; a varint-gaps stream of {} dirty pages takes from {} bytes to the raw bitmap's {}",
                    blob.raw_bytes,
                    blob.dirty_pages,
                    blob.dirty_pages,
                    s.bitmap_bytes()
                ),
            );
        }
        _ => {}
    }
    Ok(())
}
