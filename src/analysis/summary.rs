//! `dirtytrace summarize`: what a trace says about its guest, in one streaming pass.
//! Definitions: `schemas/analysis.md`, *summarize*.

use super::quantile::{self, Query};
use super::{check_phase, for_each_interval, PageBits, PageSpace, Result};
use crate::pagestats::{CountedSlot, SlidingDistinct};
use crate::trace::{IntervalRow, Trace};
use serde::Serialize;
use std::collections::BinaryHeap;
use std::ops::ControlFlow;
use std::path::PathBuf;

/// The working-set curve's windows, in seconds; those shorter than the trace's interval or
/// longer than the trace (or phase run) are left out.
pub const DEFAULT_WINDOWS_S: [f64; 7] = [0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0];

/// `--top`'s default: how many of the hottest pages `summarize` lists.
pub const DEFAULT_TOP_PAGES: usize = 10;

/// What `summarize` is asked for.
#[derive(Debug, Clone)]
pub struct SummaryOptions {
    /// Only the intervals of this phase.
    pub phase: Option<String>,
    /// How many of the hottest pages to list.
    pub top_pages: usize,
    /// The working-set curve's windows, in seconds.
    pub windows_s: Vec<f64>,
}

impl Default for SummaryOptions {
    fn default() -> Self {
        SummaryOptions { phase: None, top_pages: DEFAULT_TOP_PAGES, windows_s: DEFAULT_WINDOWS_S.to_vec() }
    }
}

/// Statistics of a per-interval quantity. `mean` is weighted by interval length; the
/// percentiles and `max` are over full intervals (a last, partial interval is left out,
/// unless it is the only one).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    /// Mean, weighted by interval length.
    pub mean: f64,
    /// Median (nearest rank).
    pub p50: f64,
    /// 95th percentile (nearest rank).
    pub p95: f64,
    /// Maximum.
    pub max: f64,
}

/// One point of the working-set curve.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkingSetPoint {
    /// The window's length, in seconds.
    pub window_s: f64,
    /// Whole intervals in one window: `round(window_s / interval_s)`.
    pub intervals_per_window: u64,
    /// Window positions: one per interval whose window lies entirely inside the trace (or
    /// inside a run of the selected phase).
    pub windows: u64,
    /// The most distinct bytes dirtied within one window.
    pub max_bytes: u64,
    /// The mean over the window positions.
    pub mean_bytes: f64,
}

/// A page dirtied in many intervals.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HotPage {
    /// Its guest page number.
    pub guest_page: u64,
    /// Its guest-physical address.
    pub guest_phys_addr: u64,
    /// Intervals in which the page was dirty.
    pub dirty_intervals: u64,
    /// `dirty_intervals` / the intervals summarized.
    pub fraction_of_intervals: f64,
    /// One of the guest's own pages (`manifest.json` `guest_own_pages`), not its workload.
    pub guest_own: bool,
}

/// One phase's share of a summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseSummary {
    /// The phase's name.
    pub name: String,
    /// Separate stretches of consecutive intervals in this phase.
    pub runs: u64,
    /// Intervals in this phase.
    pub intervals: u64,
    /// Their total length, in seconds.
    pub duration_s: f64,
    /// When the phase's first interval starts.
    pub first_start_s: f64,
    /// When its last interval ends.
    pub last_end_s: f64,
    /// Dirty rate, bytes per second.
    pub dirty_rate_bytes_per_s: Stats,
    /// vCPU utilisation, cores.
    pub cpu_util_cores: Stats,
    /// Distinct pages dirtied in this phase's intervals.
    pub distinct_pages: u64,
    /// `distinct_pages` in bytes.
    pub distinct_bytes: u64,
}

/// What `summarize` says of a trace (`schemas/analysis.md`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// The trace directory.
    pub trace_dir: PathBuf,
    /// The trace's id.
    pub trace_id: String,
    /// The `--phase` the summary is restricted to.
    pub phase: Option<String>,
    /// Intervals summarized.
    pub intervals: u64,
    /// Sum of the summarized intervals' lengths.
    pub duration_s: f64,
    /// When the first summarized interval starts.
    pub start_s: f64,
    /// When the last one ends.
    pub end_s: f64,
    /// The requested harvest interval.
    pub interval_s: f64,
    /// Bytes per page.
    pub page_size_bytes: u64,
    /// Guest RAM in bytes.
    pub ramsize_bytes: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Dirty rate, bytes per second.
    pub dirty_rate_bytes_per_s: Stats,
    /// Summed over vCPUs: 1.0 is one full core.
    pub cpu_util_cores: Stats,
    /// Per vCPU, mean over time.
    pub cpu_util_per_vcpu_mean: Vec<f64>,
    /// Sum of every interval's dirty bytes (a page dirty in k intervals counts k times).
    pub dirtied_bytes_total: u64,
    /// Distinct pages dirtied in the summarized intervals.
    pub distinct_pages: u64,
    /// `distinct_pages` in bytes.
    pub distinct_bytes: u64,
    /// Distinct bytes dirtied within sliding windows of several lengths.
    pub working_set_curve: Vec<WorkingSetPoint>,
    /// The pages dirty in the most intervals.
    pub hottest_pages: Vec<HotPage>,
    /// Per phase, in order of first appearance.
    pub phases: Vec<PhaseSummary>,
}

/// Count and range of a per-interval value.
#[derive(Debug, Clone, Copy)]
struct Extent {
    n: u64,
    min: f64,
    max: f64,
}

impl Default for Extent {
    fn default() -> Self {
        Extent { n: 0, min: f64::INFINITY, max: f64::NEG_INFINITY }
    }
}

impl Extent {
    fn push(&mut self, v: f64) {
        self.n += 1;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }
}

/// Interval-level accumulators shared by the whole selection and each phase. Percentiles
/// are not kept here: [`quantile`] finds them afterwards in bounded memory.
#[derive(Default)]
struct Acc {
    intervals: u64,
    duration_s: f64,
    bytes: u64,
    cpu_s: f64,
    /// Rate and CPU of the full intervals, and of all of them.
    rate_full: Extent,
    rate_all: Extent,
    cpu_full: Extent,
    cpu_all: Extent,
    first_start_s: Option<f64>,
    last_end_s: f64,
}

impl Acc {
    fn push(&mut self, r: &IntervalRow) {
        self.intervals += 1;
        self.duration_s += r.duration_s;
        self.bytes += r.dirty_bytes;
        self.cpu_s += r.cpu_util * r.duration_s;
        if !r.partial {
            self.rate_full.push(r.dirty_rate_bytes_per_s);
            self.cpu_full.push(r.cpu_util);
        }
        self.rate_all.push(r.dirty_rate_bytes_per_s);
        self.cpu_all.push(r.cpu_util);
        self.first_start_s.get_or_insert(r.t_start_s);
        self.last_end_s = r.t_end_s;
    }

    /// Percentiles and the maximum are over the full intervals, or all if none is full.
    fn full_only(&self) -> bool {
        self.rate_full.n > 0
    }

    fn extent(&self, cpu: bool) -> Extent {
        match (cpu, self.full_only()) {
            (false, true) => self.rate_full,
            (false, false) => self.rate_all,
            (true, true) => self.cpu_full,
            (true, false) => self.cpu_all,
        }
    }

    fn mean(&self, cpu: bool) -> f64 {
        match (self.duration_s > 0.0, cpu) {
            (false, _) => 0.0,
            (true, false) => self.bytes as f64 / self.duration_s,
            (true, true) => self.cpu_s / self.duration_s,
        }
    }
}

struct PhaseAcc {
    name: String,
    runs: u64,
    acc: Acc,
    distinct: PageBits,
}

struct WindowAcc {
    window_s: f64,
    positions: u64,
    max: u64,
    sum: f64,
}

/// One pass of `summarize`, fed interval by interval; `plot` drives it too.
pub(crate) struct SummaryBuilder {
    opts: SummaryOptions,
    space: PageSpace,
    page_size: u64,
    interval_s: f64,
    acc: Acc,
    vcpu_cpu_s: Vec<f64>,
    windows: Vec<WindowAcc>,
    /// The sliding windows of the current run of selected intervals, restarted at each run,
    /// and each page's count of dirty intervals (kept across runs).
    tracker: SlidingDistinct<CountedSlot>,
    started: bool,
    run_start_s: f64,
    last_selected: bool,
    phases: Vec<PhaseAcc>,
    last_phase: Option<usize>,
}

impl SummaryBuilder {
    pub fn new(trace: &Trace, opts: SummaryOptions) -> Self {
        let m = &trace.manifest;
        let space = PageSpace::new(&m.slots);
        let interval_s = m.interval_s;
        let windows: Vec<WindowAcc> = opts
            .windows_s
            .iter()
            .filter(|&&w| w >= interval_s * (1.0 - 1e-9))
            .map(|&w| WindowAcc { window_s: w, positions: 0, max: 0, sum: 0.0 })
            .collect();
        let eff: Vec<f64> = windows.iter().map(|w| Self::effective_window(w.window_s, interval_s)).collect();
        SummaryBuilder {
            page_size: m.page_size,
            interval_s,
            acc: Acc::default(),
            vcpu_cpu_s: vec![0.0; m.vcpus as usize],
            windows,
            tracker: SlidingDistinct::with_windows(space.total_pages, &eff),
            started: false,
            run_start_s: 0.0,
            last_selected: false,
            phases: Vec::new(),
            last_phase: None,
            space,
            opts,
        }
    }

    /// The window a tracker uses for a nominal window `w`: half an interval less, so that a
    /// window holds `round(w / interval)` whole intervals whatever the harvest jitter.
    pub fn effective_window(w: f64, interval_s: f64) -> f64 {
        (w - interval_s / 2.0).max(interval_s / 2.0)
    }

    pub fn push(&mut self, row: &IntervalRow, pages: &[u32]) {
        // Phase breakdown: every interval (of the selected phase, if one is selected).
        let selected = self.opts.phase.as_ref().is_none_or(|p| *p == row.phase);
        if !selected {
            self.last_selected = false;
            self.last_phase = None;
            return;
        }
        let pi = match self.last_phase.filter(|&i| self.phases[i].name == row.phase) {
            Some(i) => i,
            None => {
                let i = match self.phases.iter().position(|p| p.name == row.phase) {
                    Some(i) => i,
                    None => {
                        self.phases.push(PhaseAcc {
                            name: row.phase.clone(),
                            runs: 0,
                            acc: Acc::default(),
                            distinct: PageBits::new(self.space.total_pages),
                        });
                        self.phases.len() - 1
                    }
                };
                self.phases[i].runs += 1;
                i
            }
        };
        self.last_phase = Some(pi);
        let phase = &mut self.phases[pi];
        phase.acc.push(row);
        self.acc.push(row);
        for (acc, c) in self.vcpu_cpu_s.iter_mut().zip(&row.cpu_util_per_vcpu) {
            *acc += c * row.duration_s;
        }
        phase.distinct.extend(pages);

        // Working-set windows, over runs of consecutive selected intervals.
        if !self.last_selected {
            if self.started {
                self.tracker.restart();
            }
            self.started = true;
            self.run_start_s = row.t_start_s;
        }
        self.last_selected = true;
        let tracker = &mut self.tracker;
        tracker.push_slice(row.t_end_s, pages);
        for (i, w) in self.windows.iter_mut().enumerate() {
            if row.t_end_s - w.window_s >= self.run_start_s - self.interval_s / 2.0 - 1e-9 {
                let v = tracker.in_window_of(i) * self.page_size;
                w.positions += 1;
                w.max = w.max.max(v);
                w.sum += v as f64;
            }
        }
    }

    /// The rate and CPU statistics of the selection (`None`) and of each phase, finding the
    /// percentiles with extra passes over `rates.parquet`.
    fn stats(&self, trace: &Trace) -> Result<Vec<(Stats, Stats)>> {
        // Query 4·s + 2·k + j: selection s (0: all selected, 1 + i: phase i), quantity k
        // (0: rate, 1: CPU), percentile j (0: p50, 1: p95).
        let accs: Vec<&Acc> = std::iter::once(&self.acc).chain(self.phases.iter().map(|p| &p.acc)).collect();
        let mut queries = Vec::new();
        for acc in &accs {
            for cpu in [false, true] {
                let e = acc.extent(cpu);
                for q in [0.5, 0.95] {
                    queries.push(Query::percentile(q, e.n, e.min, e.max));
                }
            }
        }
        let names: Vec<&str> = self.phases.iter().map(|p| p.name.as_str()).collect();
        let full_only: Vec<bool> = accs.iter().map(|a| a.full_only()).collect();
        let filter = self.opts.phase.as_deref();
        quantile::solve(trace, &mut queries, |row, i| {
            let (sel, cpu) = (i / 4, (i / 2) % 2 == 1);
            let member = match sel {
                0 => filter.is_none_or(|p| p == row.phase),
                s => names[s - 1] == row.phase,
            };
            (member && !(full_only[sel] && row.partial)).then_some(if cpu {
                row.cpu_util
            } else {
                row.dirty_rate_bytes_per_s
            })
        })?;
        Ok(accs
            .iter()
            .enumerate()
            .map(|(s, acc)| {
                let st = |cpu: bool| {
                    let k = 4 * s + 2 * cpu as usize;
                    let e = acc.extent(cpu);
                    Stats {
                        mean: acc.mean(cpu),
                        p50: queries[k].answer.unwrap_or(0.0),
                        p95: queries[k + 1].answer.unwrap_or(0.0),
                        max: if e.n > 0 { e.max } else { 0.0 },
                    }
                };
                (st(false), st(true))
            })
            .collect())
    }

    pub fn finish(self, trace: &Trace) -> Result<Summary> {
        let stats = self.stats(trace)?;
        let m = &trace.manifest;
        let intervals = self.acc.intervals;
        let own: Vec<u64> = m.guest_own_pages.clone();
        // The hottest pages: most dirty intervals first, then the lowest page.
        let n = self.opts.top_pages;
        let mut heap: BinaryHeap<std::cmp::Reverse<(u32, std::cmp::Reverse<u64>)>> = BinaryHeap::new();
        if n > 0 {
            for (p, slot) in self.tracker.slots().iter().enumerate() {
                let c = slot.dirty_intervals;
                if c == 0 {
                    continue;
                }
                let item = std::cmp::Reverse((c, std::cmp::Reverse(p as u64)));
                if heap.len() < n {
                    heap.push(item);
                } else if heap.peek().is_some_and(|top| item < *top) {
                    heap.pop();
                    heap.push(item);
                }
            }
        }
        let mut hot: Vec<(u32, u64)> =
            heap.into_iter().map(|std::cmp::Reverse((c, std::cmp::Reverse(p)))| (c, p)).collect();
        hot.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let hottest_pages = hot
            .into_iter()
            .map(|(c, p)| {
                let gp = self.space.guest_page(p);
                HotPage {
                    guest_page: gp,
                    guest_phys_addr: gp * self.page_size,
                    dirty_intervals: c as u64,
                    fraction_of_intervals: if intervals > 0 { c as f64 / intervals as f64 } else { 0.0 },
                    guest_own: own.contains(&gp),
                }
            })
            .collect();
        // Distinct pages of the whole selection: the union of its phases'.
        let mut distinct = PageBits::new(self.space.total_pages);
        for p in &self.phases {
            distinct.union_with(&p.distinct);
        }
        let duration_s = self.acc.duration_s;
        let page_size = self.page_size;
        let phases = self
            .phases
            .iter()
            .zip(&stats[1..])
            .map(|(p, st)| PhaseSummary {
                name: p.name.clone(),
                runs: p.runs,
                intervals: p.acc.intervals,
                duration_s: p.acc.duration_s,
                first_start_s: p.acc.first_start_s.unwrap_or(0.0),
                last_end_s: p.acc.last_end_s,
                dirty_rate_bytes_per_s: st.0.clone(),
                cpu_util_cores: st.1.clone(),
                distinct_pages: p.distinct.count(),
                distinct_bytes: p.distinct.count() * page_size,
            })
            .collect();
        Ok(Summary {
            trace_dir: trace.dir.clone(),
            trace_id: m.trace_id.clone(),
            phase: self.opts.phase.clone(),
            intervals,
            duration_s,
            start_s: self.acc.first_start_s.unwrap_or(0.0),
            end_s: self.acc.last_end_s,
            interval_s: m.interval_s,
            page_size_bytes: page_size,
            ramsize_bytes: m.ramsize_bytes,
            vcpus: m.vcpus,
            dirty_rate_bytes_per_s: stats[0].0.clone(),
            cpu_util_cores: stats[0].1.clone(),
            cpu_util_per_vcpu_mean: self
                .vcpu_cpu_s
                .iter()
                .map(|c| if duration_s > 0.0 { c / duration_s } else { 0.0 })
                .collect(),
            dirtied_bytes_total: self.acc.bytes,
            distinct_pages: distinct.count(),
            distinct_bytes: distinct.count() * page_size,
            working_set_curve: self
                .windows
                .iter()
                .filter(|w| w.positions > 0)
                .map(|w| WorkingSetPoint {
                    window_s: w.window_s,
                    intervals_per_window: (w.window_s / m.interval_s).round() as u64,
                    windows: w.positions,
                    max_bytes: w.max,
                    mean_bytes: w.sum / w.positions as f64,
                })
                .collect(),
            hottest_pages,
            phases,
        })
    }
}

/// Summarizes a trace (or one of its phases) in one pass over its bitmaps.
pub fn summarize(trace: &Trace, opts: &SummaryOptions) -> Result<Summary> {
    super::require_intervals(trace, "summarize")?;
    check_phase(trace, opts.phase.as_deref())?;
    let mut b = SummaryBuilder::new(trace, opts.clone());
    for_each_interval(trace, |row, pages| {
        b.push(row, pages);
        Ok(ControlFlow::Continue(()))
    })?;
    b.finish(trace)
}
