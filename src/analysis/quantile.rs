//! Exact percentiles of per-interval values in bounded memory. Storing every interval's value
//! would make memory grow with the trace; instead each percentile is found by narrowing a
//! histogram over a few passes of `rates.parquet` (the small table): a pass counts the values
//! of the current range in [`BINS`] bins, the bin holding the wanted rank becomes the range,
//! and once that range holds at most [`COLLECT`] values (or only one distinct value) a last
//! pass collects them and picks the rank exactly. Usually two passes after the main one.

use super::Result;
use crate::trace::{IntervalRow, Trace};

const BINS: usize = 4096;
const COLLECT: u64 = 1 << 16;
const MAX_LEVELS: usize = 12;

/// One percentile to find: of the values a query is fed, the one of rank `rank` (1-based,
/// ascending).
#[derive(Debug, Clone)]
pub(crate) struct Query {
    rank: u64,
    /// The chosen bin at each narrowing level: (lo, hi, bin).
    levels: Vec<(f64, f64, usize)>,
    lo: f64,
    hi: f64,
    /// Values below the current range.
    below: u64,
    collecting: bool,
    pub answer: Option<f64>,
}

fn bin_of(v: f64, lo: f64, hi: f64) -> usize {
    if hi > lo {
        (((v - lo) / (hi - lo) * BINS as f64).floor().max(0.0) as usize).min(BINS - 1)
    } else {
        0
    }
}

impl Query {
    /// The nearest-rank `q` percentile (the smallest value with at least `q` of the values at
    /// or below it) of `count` values spanning `min..=max`. 0 when there are none.
    pub fn percentile(q: f64, count: u64, min: f64, max: f64) -> Query {
        let rank = ((q * count as f64).ceil() as u64).clamp(1, count.max(1));
        let answer = if count == 0 {
            Some(0.0)
        } else if min == max || rank == 1 {
            Some(min)
        } else if rank == count {
            Some(max)
        } else {
            None
        };
        Query { rank, levels: Vec::new(), lo: min, hi: max, below: 0, collecting: false, answer }
    }

    fn in_range(&self, v: f64) -> bool {
        self.levels.iter().all(|&(lo, hi, b)| bin_of(v, lo, hi) == b)
    }
}

/// Per query during one pass: a histogram (count, min, max per bin), or the collected values.
enum PassState {
    Hist(Vec<(u64, f64, f64)>),
    Collect(Vec<f64>),
    Done,
}

/// Answers every query, reading `rates.parquet` as often as needed. `value_of(row, i)` is the
/// value query `i` takes from the row, if the row is one of its intervals.
pub(crate) fn solve(
    trace: &Trace,
    queries: &mut [Query],
    value_of: impl Fn(&IntervalRow, usize) -> Option<f64>,
) -> Result<()> {
    let n = queries.len();
    narrow(queries, COLLECT, |feed| {
        for row in trace.rates_stream()? {
            let row = row?;
            for i in 0..n {
                if let Some(v) = value_of(&row, i) {
                    feed(i, v);
                }
            }
        }
        Ok(())
    })
}

/// The narrowing itself: `pass(feed)` goes over the data once, calling `feed(i, v)` with each
/// value `v` of query `i`; it is called until every query has its answer.
fn narrow(
    queries: &mut [Query],
    collect: u64,
    mut pass: impl FnMut(&mut dyn FnMut(usize, f64)) -> Result<()>,
) -> Result<()> {
    while queries.iter().any(|q| q.answer.is_none()) {
        let mut states: Vec<PassState> = queries
            .iter()
            .map(|q| match (q.answer, q.collecting) {
                (Some(_), _) => PassState::Done,
                (None, true) => PassState::Collect(Vec::new()),
                (None, false) => PassState::Hist(vec![(0, f64::INFINITY, f64::NEG_INFINITY); BINS]),
            })
            .collect();
        pass(&mut |i, v| {
            let q = &queries[i];
            if !q.in_range(v) {
                return;
            }
            match &mut states[i] {
                PassState::Hist(h) => {
                    let b = &mut h[bin_of(v, q.lo, q.hi)];
                    b.0 += 1;
                    b.1 = b.1.min(v);
                    b.2 = b.2.max(v);
                }
                PassState::Collect(c) => c.push(v),
                PassState::Done => {}
            }
        })?;
        for (q, st) in queries.iter_mut().zip(states) {
            match st {
                PassState::Done => {}
                PassState::Collect(mut c) => {
                    c.sort_by(f64::total_cmp);
                    let k = (q.rank - q.below) as usize;
                    q.answer = Some(c.get(k.saturating_sub(1)).copied().unwrap_or(q.lo));
                }
                PassState::Hist(h) => {
                    let want = q.rank - q.below;
                    let mut before = 0;
                    let mut chosen = BINS - 1;
                    for (b, &(n, _, _)) in h.iter().enumerate() {
                        if before + n >= want {
                            chosen = b;
                            break;
                        }
                        before += n;
                    }
                    let (n, lo, hi) = h[chosen];
                    q.levels.push((q.lo, q.hi, chosen));
                    q.below += before;
                    (q.lo, q.hi) = (lo, hi);
                    if n == 0 {
                        // Only if the data changed between passes: answer what is known.
                        q.answer = Some(q.lo);
                    } else if lo == hi {
                        q.answer = Some(lo);
                    } else if n <= collect || q.levels.len() >= MAX_LEVELS {
                        q.collecting = true;
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn percentiles(values: &[f64], qs: &[f64], collect: u64) -> (Vec<f64>, usize) {
        let (min, max) = values.iter().fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        let mut queries: Vec<Query> = qs.iter().map(|&q| Query::percentile(q, values.len() as u64, min, max)).collect();
        let mut passes = 0;
        narrow(&mut queries, collect, |feed| {
            passes += 1;
            for &v in values {
                for i in 0..qs.len() {
                    feed(i, v);
                }
            }
            Ok(())
        })
        .unwrap();
        (queries.iter().map(|q| q.answer.unwrap()).collect(), passes)
    }

    #[test]
    fn narrowing_finds_the_exact_nearest_rank() {
        let mut x = 7u64;
        let mut values: Vec<f64> = (0..20000)
            .map(|i| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                match i % 5 {
                    0 => 0.0,
                    1 => 1e8 + (x >> 40) as f64,
                    _ => ((x >> 11) as f64).sqrt(),
                }
            })
            .collect();
        values.push(1e12);
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        let qs = [0.01, 0.2, 0.5, 0.95, 0.999, 1.0];
        // A tiny collect threshold forces several narrowing levels; the default, two passes.
        for collect in [3, COLLECT] {
            let (got, passes) = percentiles(&values, &qs, collect);
            for (q, g) in qs.iter().zip(got) {
                let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
                assert_eq!(g, sorted[rank - 1], "q = {q}, collect {collect}");
            }
            assert!(passes >= 2, "{passes}");
        }
        assert_eq!(percentiles(&[3.0, 3.0, 3.0], &[0.5], COLLECT).0, vec![3.0]);
        assert_eq!(percentiles(&[5.0], &[0.95], COLLECT).0, vec![5.0]);
    }
}
