//! The trace directory: its files, the writer that fills it while recording, the
//! finaliser that turns the journal into Parquet, and the reader. `schemas/` documents it.

pub mod bitmap;
mod journal;
mod manifest;
mod reader;
mod tables;
mod writer;

pub use journal::{JournalReader, SlotBlob};
pub use manifest::{HarvestTiming, Manifest, PageRange, TraceStatus};
pub use reader::{BitmapStream, IntervalBitmaps, RatesStream, SlotBitmap, Trace, TraceError};
pub use tables::{bitmap_columns, rate_columns, IntervalRow};
pub use writer::{
    finalize, percentile, prepare_dir as writer_prepare_dir, timing_of, TraceWriter, WriterOptions, WriterProgress,
    WriterStats,
};

pub const FORMAT_VERSION: u32 = 1;
pub const MANIFEST: &str = "manifest.json";
pub const RATES: &str = "rates.parquet";
pub const BITMAPS: &str = "bitmaps.parquet";
pub const JOURNAL: &str = "journal.dtj";
pub const GUEST_LOG: &str = "guest_log.jsonl";
pub const CONSOLE: &str = "console.log";
