//! The offline half: what a modeller does with a finished trace. Every tool reads the trace
//! through [`crate::trace::Trace`] with [`for_each_interval`], which streams the bitmaps (a
//! second thread reads a few batches of intervals ahead, and both threads decode them), so
//! memory depends on the guest's size, not on the trace's length. `schemas/analysis.md` documents every estimate and model.
//!
//! - [`summary`]: rates, CPU, distinct pages, the working-set curve, hottest pages, phases.
//! - [`simgrid`]: SimGrid's live-migration parameters fitted to the trace.
//! - [`replay`]: a precopy live migration driven by the trace's exact page sets.
//! - [`plot`]: one figure with the rate, a page-by-time heatmap and the working-set curve.

mod pipeline;
pub mod plot;
mod quantile;
pub mod replay;
pub mod simgrid;
pub mod summary;

pub use crate::pagestats::PageSpace;
use crate::trace::{Trace, TraceError};
pub use pipeline::for_each_interval;
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

/// A set of dense pages, one bit each. It is counted when asked, not as pages are added: an
/// add is then one OR, and consecutive pages of one word do not wait on each other's counts.
#[derive(Debug, Clone)]
pub(crate) struct PageBits {
    words: Vec<u64>,
}

impl PageBits {
    pub fn new(pages: u64) -> Self {
        PageBits { words: vec![0; pages.div_ceil(64) as usize] }
    }
    /// Adds `p`.
    pub fn insert(&mut self, p: u32) {
        self.words[(p / 64) as usize] |= 1 << (p % 64);
    }
    /// Adds every page of `pages`.
    pub fn extend(&mut self, pages: &[u32]) {
        for &p in pages {
            self.words[(p / 64) as usize] |= 1 << (p % 64);
        }
    }
    /// Pages in the set: one pass over its words.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| w.count_ones() as u64).sum()
    }
    pub fn union_with(&mut self, other: &PageBits) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
    }
    pub fn clear(&mut self) {
        self.words.fill(0);
    }
}
