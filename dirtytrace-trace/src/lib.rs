//! The trace format: its files, the writer that fills a trace directory while recording, the
//! finaliser that turns the journal into Parquet, and the reader. It knows nothing of how a
//! trace is recorded, so a tool of one's own can read and write traces with it alone.
//! `schemas/` documents every file.
//!
//! It is its own crate so that a reader of traces builds arrow, parquet, zstd and serde, not the
//! recorder's VMM, disassembler, plotting and command line. `dirtytrace::trace` is this crate,
//! and `dirtytrace::{units, files, stats}` are its modules of the same names.
//!
//! ```no_run
//! let trace = dirtytrace_trace::Trace::open("trace")?;
//! for row in trace.rates()? {
//!     let pages = trace.bitmap(row.interval)?.pages();
//!     println!("{} {} {}", row.t_end_s, row.dirty_rate_bytes_per_s, pages.len());
//! }
//! # Ok::<(), dirtytrace_trace::TraceError>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bitmap;
pub mod files;
pub mod journal;
pub mod limits;
mod manifest;
mod reader;
mod records;
pub mod stats;
mod tables;
pub mod units;
mod validate;
mod writer;

pub use bitmap::{push_set_bits, BitmapDecoder, BitmapEncoder, ZSTD_LEVEL};
pub use manifest::{
    DeadlineCounts, EndReason, EngineInfo, GuestClockInfo, HarvestTiming, Manifest, TraceStatus, ON_TIME_FRACTION,
};
pub use reader::{
    guarded, BitmapStream, IntervalBitmaps, IntervalPageStream, IntervalStream, PageDecoder, RatesStream, ReadInterval,
    SlotBitmap, Trace, TraceError,
};
pub use records::{Encoding, GuestEvent, IntervalRow, MemorySlot, PageRange, SamplerScheduling, SchedPolicy, SlotBlob};
pub use tables::{bitmap_columns, rate_columns, ColumnError};
pub use validate::{check_manifest, name_problem, sanitize_name, Invalid, RowChecker};
pub use writer::{finalize, prepare_dir, timing_of, Finalized, TraceWriter, WriteError};

/// Writes the name serde gives `value`, a unit variant of an enum: the word the trace's JSON
/// holds, so that listings and logs say what the files say.
pub fn write_serde_name<T: serde::Serialize + std::fmt::Debug>(
    f: &mut std::fmt::Formatter<'_>,
    value: &T,
) -> std::fmt::Result {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => f.write_str(&name),
        // Not a unit variant: there is no one word for it.
        _ => write!(f, "{value:?}"),
    }
}

/// The format's version, in `manifest.json`, that this dirtytrace writes. Version 2 added the
/// `varint-gaps` bitmap encoding (`schemas/trace.md`).
pub const FORMAT_VERSION: u32 = 2;
/// The versions this dirtytrace reads: readers refuse others, naming the version.
pub const READABLE_VERSIONS: [u32; 2] = [1, 2];

/// [`READABLE_VERSIONS`] in words: `1 and 2`.
pub(crate) fn readable_versions() -> String {
    let v: Vec<String> = READABLE_VERSIONS.iter().map(u32::to_string).collect();
    match v.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => v.concat(),
    }
}
/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";
/// The rates table's file name.
pub const RATES: &str = "rates.parquet";
/// The bitmaps table's file name.
pub const BITMAPS: &str = "bitmaps.parquet";
/// The journal's file name (present while recording, or after a kill).
pub const JOURNAL: &str = "journal.dtj";
/// The guest log's file name.
pub const GUEST_LOG: &str = "guest_log.jsonl";
/// The file [`prepare_dir`] writes, then removes, to learn that a new trace's directory is
/// writable.
pub const WRITE_TEST: &str = ".write-test";
/// The file a manifest is written to before it is renamed into place.
pub const MANIFEST_TMP: &str = ".manifest.json.tmp";
/// The console log's file name (Linux guests).
pub const CONSOLE: &str = "console.log";
