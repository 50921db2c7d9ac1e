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

pub use crate::pagestats::PageSpace;
use crate::trace::{IntervalRow, Trace, TraceError};
use std::ops::ControlFlow;
use std::path::PathBuf;

/// Why an analysis could not run.
#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    /// The trace could not be read.
    #[error(transparent)]
    Trace(#[from] TraceError),
    /// A command-line value the analysis cannot use; `flag` names it (`--bandwidth`).
    #[error("{flag}: {msg}")]
    BadArgument {
        /// The flag.
        flag: &'static str,
        /// What is wrong with its value.
        msg: String,
    },
    /// `--phase` names a phase the trace does not have.
    #[error("--phase: {} has no phase `{phase}`; its phases are: {available}", trace.display())]
    NoSuchPhase {
        /// The trace.
        trace: PathBuf,
        /// The phase asked for.
        phase: String,
        /// The phases the trace has, listed.
        available: String,
    },
    /// The trace ends before the analysis can.
    #[error("{0}")]
    TraceTooShort(String),
    /// SimGrid's model cannot run with these parameters.
    #[error(transparent)]
    Model(#[from] simgrid::model::ModelError),
    /// The output file cannot be written.
    #[error("{}: {msg}", path.display())]
    Output {
        /// The output file.
        path: PathBuf,
        /// What went wrong.
        msg: String,
    },
}

/// An analysis's result.
pub type Result<T> = std::result::Result<T, AnalysisError>;

pub(crate) fn bad(flag: &'static str, msg: impl Into<String>) -> AnalysisError {
    AnalysisError::BadArgument { flag, msg: msg.into() }
}

/// Intervals handed from the decoder to the consumer at a time, and batches decoded ahead:
/// together they bound the pipeline's memory.
const BATCH: usize = 16;
const BATCHES_AHEAD: usize = 2;

type Batch = Vec<(IntervalRow, Vec<u32>)>;

/// Calls `f` with every interval of the trace, in order: its `rates.parquet` row and the
/// dense indices of the pages dirtied in it, as [`PageSpace::new`] of the trace's slots numbers
/// them (ascending). Reads the rates
/// and the bitmaps as two streams, checking that they agree. Stops early when `f` breaks.
/// Returns how many intervals `f` saw.
///
/// Reading and decompressing run on a second thread, a few batches of [`BATCH`] intervals
/// ahead, so that on a machine with two cores `f` costs little more wall time than reading.
pub fn for_each_interval(
    trace: &Trace,
    mut f: impl FnMut(&IntervalRow, &[u32]) -> Result<ControlFlow<()>>,
) -> Result<u64> {
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Batch>>(BATCHES_AHEAD);
        let (spare_tx, spare_rx) = std::sync::mpsc::channel::<Vec<u32>>();
        scope.spawn(move || {
            if let Err(e) = decode_intervals(trace, &tx, &spare_rx) {
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

/// The decoding half of [`for_each_interval`]: sends every interval's row and pages, as the
/// trace's reader checked them ([`Trace::interval_pages`]).
fn decode_intervals(
    trace: &Trace,
    tx: &std::sync::mpsc::SyncSender<Result<Batch>>,
    spare: &std::sync::mpsc::Receiver<Vec<u32>>,
) -> Result<()> {
    let mut batch: Batch = Vec::with_capacity(BATCH);
    let mut stream = trace.interval_pages()?;
    loop {
        let mut pages = spare.try_recv().unwrap_or_default();
        pages.clear();
        let Some(row) = stream.next_into(&mut pages) else { break };
        batch.push((row?, pages));
        if batch.len() == BATCH && tx.send(Ok(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))).is_err() {
            return Ok(()); // the consumer is done
        }
    }
    if !batch.is_empty() {
        let _ = tx.send(Ok(batch));
    }
    Ok(())
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

/// Fails with a clear error when the trace has no intervals (a recording killed before its
/// first harvest, say): there is nothing to `what` (summarize, fit, draw), and figures over no
/// interval would only look like results.
pub fn require_intervals(trace: &Trace, what: &str) -> Result<()> {
    if trace.manifest.intervals > 0 {
        return Ok(());
    }
    Err(AnalysisError::TraceTooShort(format!(
        "{} has no intervals: nothing to {what}",
        trace.dir.join(crate::trace::RATES).display()
    )))
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
    /// Adds every page of `pages`. The count is kept in a register meanwhile: an insert at a
    /// time would read and write it in memory, one dependent step per page.
    pub fn extend(&mut self, pages: &[u32]) {
        let mut added = 0;
        for &p in pages {
            let w = &mut self.words[(p / 64) as usize];
            let bit = 1u64 << (p % 64);
            added += (*w & bit == 0) as u64;
            *w |= bit;
        }
        self.count += added;
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
