//! The trace format: its files, the writer that fills a trace directory while recording, the
//! finaliser that turns the journal into Parquet, and the reader. It knows nothing of how a
//! trace is recorded, so a tool of one's own can read and write traces with it alone.
//! `schemas/` documents every file.

pub mod bitmap;
pub mod journal;
pub mod limits;
mod manifest;
mod reader;
mod records;
mod tables;
mod validate;
mod writer;

pub use bitmap::{BitmapEncoder, ZSTD_LEVEL};
pub use manifest::{EngineInfo, HarvestTiming, Manifest, TraceStatus};
pub use reader::{BitmapStream, IntervalBitmaps, IntervalStream, RatesStream, SlotBitmap, Trace, TraceError};
pub use records::{Encoding, GuestEvent, IntervalRow, MemorySlot, PageRange, SamplerScheduling, SlotBlob};
pub use tables::{bitmap_columns, rate_columns, ColumnError};
pub use validate::{check_manifest, name_problem, sanitize_name, Invalid, RowChecker};
pub use writer::{finalize, prepare_dir, timing_of, Finalized, TraceWriter, WriteError};

/// The format's version, in `manifest.json`: readers refuse others.
pub const FORMAT_VERSION: u32 = 1;
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
/// The console log's file name (Linux guests).
pub const CONSOLE: &str = "console.log";
