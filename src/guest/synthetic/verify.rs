//! Checks a recorded synthetic trace against the guest's exact ground truth.
//!
//! The harvest races with the running guest, so the truth of interval `k` is bounded by the
//! progress words read just before (`b_k`) and just after (`a_k`) its harvest. A vCPU
//! publishes write `j`'s progress after the write itself, and that store can itself take a
//! write-protect fault (the harvest just protected the control page), so write `a_k` may
//! already be done, and in bitmap `k`, when `a_k` is read: one write per vCPU is in flight.
//! - pages written in `(a_{k-1}, b_k)` must all be in bitmap `k` (nothing missing);
//! - every page of bitmap `k` was written in `[b_{k-1}, a_k]` (the write in flight when
//!   `a_k` was read included), or is one of the guest's own pages;
//! - cumulatively, every page written before `b_k` is in bitmap `k` or an earlier one.

use super::plan::{decode_progress, GuestPlan};
use super::spec::WorkloadSpec;
use crate::trace::Trace;

/// One interval of a synthetic trace against the guest's ground truth.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct IntervalCheck {
    /// The interval.
    pub interval: u64,
    /// Pages its bitmap holds.
    pub recorded_pages: u64,
    /// Pages certainly written in the interval but absent from its bitmap.
    pub missing: u64,
    /// Pages written before the interval's start that no bitmap so far holds.
    pub missing_cumulative: u64,
    /// Pages in the bitmap the guest cannot have written in the interval.
    pub unexpected: u64,
    /// The guest's own pages present in the bitmap.
    pub own_pages: u64,
    /// A few of the unexpected and missing pages, for diagnosis.
    pub examples: Vec<u64>,
    /// Pages written with certainty in the interval (the lower bound's size).
    pub certain_pages: u64,
}

struct PageSet {
    bits: Vec<u64>,
}

impl PageSet {
    fn new(pages: u64) -> Self {
        PageSet { bits: vec![0; pages.div_ceil(64) as usize] }
    }
    fn insert(&mut self, p: u64) {
        if let Some(w) = self.bits.get_mut((p / 64) as usize) {
            *w |= 1 << (p % 64);
        }
    }
    fn contains(&self, p: u64) -> bool {
        self.bits.get((p / 64) as usize).is_some_and(|w| w & (1 << (p % 64)) != 0)
    }
    fn clear(&mut self) {
        self.bits.fill(0);
    }
    fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.bits
            .iter()
            .enumerate()
            .flat_map(|(i, &w)| (0..64).filter(move |b| w & (1 << b) != 0).map(move |b| i as u64 * 64 + b))
    }
}

/// Checks every interval of a synthetic trace against the ground truth.
pub fn verify(trace: &Trace) -> anyhow::Result<Vec<IntervalCheck>> {
    let m = &trace.manifest;
    anyhow::ensure!(m.guest["kind"] == "synthetic", "{} is not a synthetic-guest trace", trace.dir.display());
    let spec: WorkloadSpec = serde_json::from_value(m.guest["spec"].clone())?;
    let plan = GuestPlan::new(&spec)?;
    let counts = super::final_counts_from_log(&trace.guest_log()?, spec.vcpus as usize, spec.phases.len());
    let rows = trace.rates()?;
    let total_pages = m.total_pages();
    let own: Vec<u64> = m.guest_own_pages.clone();
    let vcpus = spec.vcpus as usize;

    let mut ever = PageSet::new(total_pages);
    let mut lower = PageSet::new(total_pages);
    let mut upper = PageSet::new(total_pages);
    let mut written_before = PageSet::new(total_pages);
    let mut prev_before = vec![0u64; vcpus];
    let mut prev_after = vec![0u64; vcpus];
    let mut checks = Vec::new();
    for (row, bm) in rows.iter().zip(trace.bitmaps()?) {
        let bm = bm?;
        anyhow::ensure!(bm.interval == row.interval, "bitmap and rate rows disagree at interval {}", row.interval);
        lower.clear();
        upper.clear();
        for v in 0..vcpus {
            let (b, a) = (row.guest_progress_before[v], row.guest_progress_after[v]);
            // The write in flight at a_{k-1} may have landed in bitmap k-1.
            let after_in_flight = if row.interval == 0 { 0 } else { (prev_after[v] + 1).min(b) };
            plan.pages_between(v, after_in_flight, b, &counts[v], &mut |p| lower.insert(p));
            plan.pages_between(v, prev_before[v], a, &counts[v], &mut |p| upper.insert(p));
            let (phase, j) = decode_progress(a);
            if let Some(pp) = plan.plans[v].get(phase as usize).filter(|pp| pp.writes()) {
                upper.insert(pp.page_of(j));
            }
            plan.pages_between(v, prev_before[v], b, &counts[v], &mut |p| written_before.insert(p));
            prev_before[v] = b;
            prev_after[v] = a;
        }
        let recorded = bm.pages();
        let mut check =
            IntervalCheck { interval: row.interval, recorded_pages: recorded.len() as u64, ..Default::default() };
        let mut in_bitmap = PageSet::new(total_pages);
        for &p in &recorded {
            in_bitmap.insert(p);
            ever.insert(p);
            if own.contains(&p) {
                check.own_pages += 1;
            } else if !upper.contains(p) {
                check.unexpected += 1;
                if check.examples.len() < 8 {
                    check.examples.push(p);
                }
            }
        }
        for p in lower.iter() {
            check.certain_pages += 1;
            if !in_bitmap.contains(p) {
                check.missing += 1;
                if check.examples.len() < 8 {
                    check.examples.push(p);
                }
            }
        }
        check.missing_cumulative = written_before.iter().filter(|&p| !ever.contains(p)).count() as u64;
        checks.push(check);
    }
    Ok(checks)
}
