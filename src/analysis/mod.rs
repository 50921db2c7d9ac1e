//! The offline half: what a modeller does with a finished trace. Every tool reads the trace
//! through [`crate::trace::Trace`] with [`for_each_interval`], which streams the bitmaps (a
//! second thread decodes a few batches of intervals ahead), so memory depends on the guest's
//! size, not on the trace's length. `schemas/analysis.md` documents every estimate and model.
//!
//! - [`summary`]: rates, CPU, distinct pages, the working-set curve, hottest pages, phases.
//! - [`simgrid`]: SimGrid's live-migration parameters fitted to the trace.
//! - [`replay`]: a precopy live migration driven by the trace's exact page sets.
//! - [`plot`]: one figure with the rate, a page-by-time heatmap and the working-set curve.

pub mod plot;
mod quantile;
pub mod replay;
pub mod simgrid;
pub mod summary;

use crate::trace::{IntervalRow, Manifest, Trace, TraceError};
use std::ops::ControlFlow;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    #[error(transparent)]
    Trace(#[from] TraceError),
    /// A command-line value the analysis cannot use; `flag` names it (`--bandwidth`).
    #[error("{flag}: {msg}")]
    BadArgument { flag: &'static str, msg: String },
    #[error("--phase: {trace} has no phase `{phase}`; its phases are: {available}")]
    NoSuchPhase { trace: PathBuf, phase: String, available: String },
    #[error("{0}")]
    TraceTooShort(String),
    #[error("{path}: {msg}")]
    Output { path: PathBuf, msg: String },
}

pub type Result<T> = std::result::Result<T, AnalysisError>;

pub(crate) fn bad(flag: &'static str, msg: impl Into<String>) -> AnalysisError {
    AnalysisError::BadArgument { flag, msg: msg.into() }
}

/// The trace's pages numbered densely: slot by slot, in the manifest's order. Page state
/// (windows, counts, sets) is indexed by these numbers; [`PageSpace::guest_page`] maps back.
#[derive(Debug, Clone)]
pub struct PageSpace {
    /// Per slot: (slot id, first guest page, pages, first dense index).
    slots: Vec<(u32, u64, u64, u64)>,
    pub total_pages: u64,
}

impl PageSpace {
    pub fn new(m: &Manifest) -> Self {
        let mut base = 0;
        let slots = m
            .slots
            .iter()
            .map(|s| {
                let e = (s.slot, s.first_page(), s.num_pages(), base);
                base += s.num_pages();
                e
            })
            .collect();
        PageSpace { slots, total_pages: base }
    }

    /// The guest page number of dense page `i`.
    pub fn guest_page(&self, i: u64) -> u64 {
        self.slots.iter().find(|s| i >= s.3 && i < s.3 + s.2).map_or(i, |s| s.1 + (i - s.3))
    }

    /// The dense index of guest page `page`, if a slot holds it.
    pub fn dense(&self, page: u64) -> Option<u64> {
        self.slots.iter().find(|s| page >= s.1 && page < s.1 + s.2).map(|s| s.3 + (page - s.1))
    }

    fn slot_base(&self, slot: u32) -> Option<(u64, u64)> {
        self.slots.iter().find(|s| s.0 == slot).map(|s| (s.3, s.2))
    }
}

/// Intervals handed from the decoder to the consumer at a time, and batches decoded ahead:
/// together they bound the pipeline's memory.
const BATCH: usize = 16;
const BATCHES_AHEAD: usize = 2;

type Batch = Vec<(IntervalRow, Vec<u32>)>;

/// Calls `f` with every interval of the trace, in order: its `rates.parquet` row and the
/// dense indices of the pages dirtied in it (ascending within each slot). Reads the rates
/// and the bitmaps as two streams, checking that they agree. Stops early when `f` breaks.
/// Returns how many intervals `f` saw.
///
/// Reading and decompressing run on a second thread, a few batches of [`BATCH`] intervals
/// ahead, so that on a machine with two cores `f` costs little more wall time than reading.
pub fn for_each_interval(
    trace: &Trace,
    space: &PageSpace,
    mut f: impl FnMut(&IntervalRow, &[u32]) -> Result<ControlFlow<()>>,
) -> Result<u64> {
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Batch>>(BATCHES_AHEAD);
        let (spare_tx, spare_rx) = std::sync::mpsc::channel::<Vec<u32>>();
        scope.spawn(move || {
            if let Err(e) = decode_intervals(trace, space, &tx, &spare_rx) {
                let _ = tx.send(Err(e));
            }
        });
        let mut seen = 0u64;
        for batch in rx {
            for (row, pages) in batch? {
                seen += 1;
                if f(&row, &pages)?.is_break() {
                    // Dropping the receiver stops the decoder at its next batch.
                    return Ok(seen);
                }
                let _ = spare_tx.send(pages);
            }
        }
        Ok(seen)
    })
}

/// The decoding half of [`for_each_interval`]: sends every interval's row and pages.
fn decode_intervals(
    trace: &Trace,
    space: &PageSpace,
    tx: &std::sync::mpsc::SyncSender<Result<Batch>>,
    spare: &std::sync::mpsc::Receiver<Vec<u32>>,
) -> Result<()> {
    let bitmaps_path = trace.dir.join(crate::trace::BITMAPS);
    let corrupt = |msg: String| AnalysisError::Trace(TraceError::Corrupt { path: bitmaps_path.clone(), msg });
    let mut bitmaps = trace.bitmaps()?;
    let mut seen = 0u64;
    let mut batch: Batch = Vec::with_capacity(BATCH);
    for row in trace.rates_stream()? {
        let row = row?;
        let bm = match bitmaps.next() {
            Some(b) => b?,
            None => {
                return Err(corrupt(format!("has no bitmaps for interval {} (rates.parquet has it)", row.interval)))
            }
        };
        if bm.interval != row.interval {
            return Err(corrupt(format!(
                "holds interval {} where rates.parquet has interval {}",
                bm.interval, row.interval
            )));
        }
        let mut pages = spare.try_recv().unwrap_or_default();
        pages.clear();
        for s in &bm.slots {
            let (base, n) = space
                .slot_base(s.slot)
                .ok_or_else(|| corrupt(format!("interval {}: slot {} is not in the manifest", bm.interval, s.slot)))?;
            if s.num_pages != n || (s.words.len() as u64) < n.div_ceil(64) {
                return Err(corrupt(format!(
                    "interval {}: slot {} has {} pages, the manifest says {n}",
                    bm.interval, s.slot, s.num_pages
                )));
            }
            extract_pages(&s.words[..n.div_ceil(64) as usize], n, base as u32, &mut pages);
        }
        seen += 1;
        batch.push((row, pages));
        if batch.len() == BATCH && tx.send(Ok(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))).is_err() {
            return Ok(()); // the consumer is done
        }
    }
    if let Some(extra) = bitmaps.next() {
        let extra = extra?;
        return Err(corrupt(format!("has interval {}, which rates.parquet lacks", extra.interval)));
    }
    if seen != trace.manifest.intervals {
        return Err(AnalysisError::Trace(TraceError::Corrupt {
            path: trace.dir.join(crate::trace::RATES),
            msg: format!("has {seen} intervals, the manifest says {}", trace.manifest.intervals),
        }));
    }
    if !batch.is_empty() {
        let _ = tx.send(Ok(batch));
    }
    Ok(())
}

/// Appends `base + i` for every set bit `i < n` of `words` (KVM's layout) to `pages`.
#[inline(never)]
fn extract_pages(words: &[u64], n: u64, base: u32, pages: &mut Vec<u32>) {
    let push_word = |pages: &mut Vec<u32>, i: usize, mut bits: u64| {
        let first = base + (i as u32) * 64;
        while bits != 0 {
            pages.push(first + bits.trailing_zeros());
            bits &= bits - 1;
        }
    };
    let Some((&last, full)) = words.split_last() else { return };
    // Bitmaps are mostly zero: skip eight words at a time.
    let mut chunks = full.chunks_exact(8);
    for (c, chunk) in chunks.by_ref().enumerate() {
        if chunk.iter().fold(0, |a, w| a | w) != 0 {
            for (j, &w) in chunk.iter().enumerate() {
                push_word(pages, c * 8 + j, w);
            }
        }
    }
    let done = full.len() - chunks.remainder().len();
    for (j, &w) in chunks.remainder().iter().enumerate() {
        push_word(pages, done + j, w);
    }
    // Bits past the slot's last page, if its size is not a multiple of 64 pages, are not pages.
    let tail = n % 64;
    push_word(pages, words.len() - 1, if tail == 0 { last } else { last & ((1u64 << tail) - 1) });
}

/// The phases of a trace in order of first appearance, read from `rates.parquet` alone.
pub fn phase_names(trace: &Trace) -> Result<Vec<String>> {
    let mut names: Vec<String> = Vec::new();
    for row in trace.rates_stream()? {
        let row = row?;
        if names.last() != Some(&row.phase) && !names.contains(&row.phase) {
            names.push(row.phase);
        }
    }
    Ok(names)
}

/// Fails with a clear error when `phase` is given and the trace never has it.
pub fn check_phase(trace: &Trace, phase: Option<&str>) -> Result<()> {
    let Some(phase) = phase else { return Ok(()) };
    let names = phase_names(trace)?;
    if names.iter().any(|n| n == phase) {
        return Ok(());
    }
    Err(AnalysisError::NoSuchPhase {
        trace: trace.dir.clone(),
        phase: phase.to_string(),
        available: if names.is_empty() {
            "none (the trace has no intervals)".into()
        } else {
            names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
        },
    })
}

/// A set of dense pages, one bit each.
#[derive(Debug, Clone)]
pub(crate) struct PageBits {
    words: Vec<u64>,
    count: u64,
}

impl PageBits {
    pub fn new(pages: u64) -> Self {
        PageBits { words: vec![0; pages.div_ceil(64) as usize], count: 0 }
    }
    /// Adds `p`; true if it was not there.
    #[inline]
    pub fn insert(&mut self, p: u32) -> bool {
        let w = &mut self.words[(p / 64) as usize];
        let bit = 1u64 << (p % 64);
        let new = *w & bit == 0;
        *w |= bit;
        self.count += new as u64;
        new
    }
    pub fn count(&self) -> u64 {
        self.count
    }
    pub fn union_with(&mut self, other: &PageBits) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
        self.count = self.words.iter().map(|w| w.count_ones() as u64).sum();
    }
    pub fn clear(&mut self) {
        if self.count > 0 {
            self.words.fill(0);
            self.count = 0;
        }
    }
}
