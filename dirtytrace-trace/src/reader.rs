//! Reading a finished trace: the manifest, the rates table, and the bitmaps streamed in
//! order or fetched by interval. Everything read is checked against the manifest and the
//! trace's invariants ([`super::validate`]) before anyone sees it, so a damaged or lying
//! trace is refused with the file, row and field named, and never makes a reader allocate
//! or loop without bound.

use super::bitmap;
use super::limits::{MAX_GUEST_LOG_BYTES, MAX_GUEST_LOG_LINE};
use super::manifest::{Manifest, TraceStatus};
use super::records::{Encoding, GuestEvent, IntervalRow, SlotBlob};
use super::tables;
use super::validate::{check_blob, invalid, Invalid, RowChecker};
use super::{BITMAPS, GUEST_LOG, JOURNAL, MANIFEST, RATES};
use crate::files::FileError;
use parquet::arrow::arrow_reader::{
    ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder, RowSelection, RowSelector,
};
use std::fs::File;
use std::path::{Path, PathBuf};

/// Why a trace could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The directory has no manifest.
    #[error("{} is not a trace directory (no manifest.json)", .0.display())]
    NotATrace(PathBuf),
    /// The recorder never finalised the trace.
    #[error(
        "{} was never finalised (the recorder was killed?): run `dirtytrace recover {}` to rebuild it from its journal",
        .0.display(), .0.display()
    )]
    NotFinalised(PathBuf),
    /// A file is missing, unreadable, too large, or not a regular file.
    #[error(transparent)]
    File(#[from] FileError),
    /// `manifest.json` is not the JSON of a manifest.
    #[error("{} is not a valid manifest: {source}", path.display())]
    ManifestSyntax {
        /// The manifest.
        path: PathBuf,
        /// What serde_json said.
        source: serde_json::Error,
    },
    /// The trace was written by another version of the format.
    #[error(
        "{} has format_version {found}, this dirtytrace reads format_version {}: read it with the dirtytrace that wrote it, or a newer one",
        path.display(), super::readable_versions()
    )]
    FormatVersion {
        /// The manifest.
        path: PathBuf,
        /// The version it has.
        found: u32,
    },
    /// A file breaks the trace's invariants: the row and field say where.
    #[error("{}: {invalid}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        invalid: Invalid,
    },
    /// A file cannot be read as what it should be (not Parquet, a damaged page, …).
    #[error("{}: {msg}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
}

/// Runs `f`, a call into the Parquet decoder, turning a panic of the decoder (it has some on
/// damaged files: a bogus bit width in the schema, say) into a [`TraceError::Corrupt`] of
/// `path`. The panic's message is not printed: the error says what happened. Every reader of
/// Parquet files (the trace's tables, a dataset's index) calls the decoder through it.
pub fn guarded<T>(path: &Path, f: impl FnOnce() -> T) -> Result<T, TraceError> {
    use std::cell::Cell;
    thread_local!(static QUIET: Cell<bool> = const { Cell::new(false) });
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info)
            }
        }));
    });
    let was = QUIET.with(|q| q.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    result.map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("no message");
        corrupt(path, format!("damaged: the Parquet decoder failed on it ({})", msg.replace('\n', " ")))
    })
}

fn corrupt(path: &Path, msg: impl ToString) -> TraceError {
    TraceError::Corrupt { path: path.to_path_buf(), msg: msg.to_string() }
}

fn invalid_in(path: &Path) -> impl Fn(Invalid) -> TraceError + '_ {
    move |invalid| TraceError::Invalid { path: path.to_path_buf(), invalid }
}

/// One slot's dirty bitmap for one interval, decompressed.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotBitmap {
    /// The memory slot.
    pub slot: u32,
    /// Guest page number of the slot's first page.
    pub first_page: u64,
    /// Pages in the slot.
    pub num_pages: u64,
    /// Set bits in `words`.
    pub dirty_pages: u64,
    /// How the bitmap was stored (`bitmaps.parquet`'s `encoding`).
    pub encoding: Encoding,
    /// Bytes the bitmap took in `bitmaps.parquet`'s `data` column.
    pub stored_bytes: u64,
    /// KVM's layout: bit `i % 64` of word `i / 64` is page `first_page + i`.
    pub words: Vec<u64>,
}

impl SlotBitmap {
    /// Guest page numbers of the dirty pages.
    pub fn pages(&self) -> Vec<u64> {
        let mut v = Vec::new();
        bitmap::for_each_set_bit(&self.words, |b| v.push(self.first_page + b));
        v
    }
}

/// Every slot's bitmap for one interval, in the manifest's slot order.
#[derive(Debug, Clone, PartialEq)]
pub struct IntervalBitmaps {
    /// The interval (`rates.parquet`'s `interval`).
    pub interval: u64,
    /// One bitmap per slot.
    pub slots: Vec<SlotBitmap>,
}

impl IntervalBitmaps {
    /// Guest page numbers of the dirty pages, slot by slot.
    pub fn pages(&self) -> Vec<u64> {
        self.slots.iter().flat_map(|s| s.pages()).collect()
    }
}

/// A finished trace, opened for reading.
pub struct Trace {
    /// Its directory.
    pub dir: PathBuf,
    /// Its manifest, checked.
    pub manifest: Manifest,
}

/// Rows per batch a reader asks Parquet for: bitmaps, rates.
const BITMAP_BATCH: usize = 64;
const RATES_BATCH: usize = 1024;
/// The most a rates row can take uncompressed, for the sanity check of Parquet's metadata.
const MAX_RATES_ROW_BYTES: u64 = 64 * 1024;

impl Trace {
    /// Opens a finished trace and checks its manifest.
    pub fn open(dir: impl AsRef<Path>) -> Result<Trace, TraceError> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.join(MANIFEST).exists() {
            return Err(TraceError::NotATrace(dir));
        }
        let manifest = Manifest::load(&dir)?;
        if manifest.status == TraceStatus::Recording || !dir.join(RATES).exists() {
            if dir.join(JOURNAL).exists() {
                return Err(TraceError::NotFinalised(dir));
            }
            return Err(corrupt(&dir.join(RATES), "missing, and there is no journal to rebuild it from"));
        }
        for f in [RATES, BITMAPS] {
            if !dir.join(f).exists() {
                return Err(corrupt(&dir.join(f), "missing"));
            }
        }
        Ok(Trace { dir, manifest })
    }

    /// A Parquet reader of one of the trace's tables, whose metadata promises no more data
    /// than `max_row_bytes` per row.
    fn builder(&self, name: &str, max_row_bytes: u64) -> Result<ParquetRecordBatchReaderBuilder<File>, TraceError> {
        let path = self.dir.join(name);
        let f = crate::files::open_regular(&path, u64::MAX, "Parquet table")?;
        let b = guarded(&path, || ParquetRecordBatchReaderBuilder::try_new(f))?
            .map_err(|e| corrupt(&path, format!("not a readable Parquet file ({e})")))?;
        for rg in b.metadata().row_groups() {
            let cap = (rg.num_rows().max(0) as u64).saturating_mul(max_row_bytes).saturating_add(1 << 20);
            if rg.columns().iter().any(|c| c.uncompressed_size().max(0) as u64 > cap) {
                return Err(corrupt(&path, "its metadata claims more data per row than any valid trace has"));
            }
        }
        Ok(b)
    }

    /// Checks, cheaply, that both tables are whole: each Parquet footer reads, and they hold one
    /// rates row per interval and one bitmaps row per interval and slot, as the manifest says.
    /// Reads no data pages: a sweep calls it before it skips a finished trace.
    pub fn check_tables(&self) -> Result<(), TraceError> {
        let intervals = self.manifest.intervals;
        let slots = self.manifest.slots.len() as u64;
        for (name, max_row, rows) in [
            (RATES, MAX_RATES_ROW_BYTES, intervals),
            (BITMAPS, self.max_bitmap_row_bytes(), intervals.saturating_mul(slots)),
        ] {
            let found = self.builder(name, max_row)?.metadata().file_metadata().num_rows().max(0) as u64;
            if found != rows {
                return Err(corrupt(
                    &self.dir.join(name),
                    format!("holds {found} rows where the manifest's {intervals} intervals make {rows}"),
                ));
            }
        }
        Ok(())
    }

    /// The most a bitmaps row can take uncompressed: the largest slot's raw bitmap, and slack.
    fn max_bitmap_row_bytes(&self) -> u64 {
        self.manifest.slots.iter().map(|s| s.bitmap_bytes()).max().unwrap_or(0) * 2 + 1024
    }

    /// Every row of `rates.parquet`, in interval order.
    pub fn rates(&self) -> Result<Vec<IntervalRow>, TraceError> {
        self.rates_stream()?.collect()
    }

    /// Streams `rates.parquet` in interval order, one batch of rows in memory at a time.
    pub fn rates_stream(&self) -> Result<RatesStream, TraceError> {
        let path = self.dir.join(RATES);
        let builder = self.builder(RATES, MAX_RATES_ROW_BYTES)?.with_batch_size(RATES_BATCH);
        let reader = guarded(&path, || builder.build())?.map_err(|e| corrupt(&path, e))?;
        Ok(RatesStream {
            checker: RowChecker::new(&self.manifest),
            expected: self.manifest.intervals,
            path,
            reader,
            buffered: Vec::new().into_iter(),
            done: false,
        })
    }

    /// The guest's own log: phase marks and whatever else it reported.
    pub fn guest_log(&self) -> Result<Vec<GuestEvent>, TraceError> {
        use std::io::BufRead;
        let path = self.dir.join(GUEST_LOG);
        let file = crate::files::open_regular(&path, MAX_GUEST_LOG_BYTES, "guest log")?;
        let mut reader = std::io::BufReader::new(file);
        let mut events = Vec::new();
        let mut line = Vec::new();
        for n in 0u64.. {
            line.clear();
            let got = std::io::Read::take(&mut reader, MAX_GUEST_LOG_LINE as u64 + 1)
                .read_until(b'\n', &mut line)
                .map_err(|source| FileError::Io { path: path.clone(), source })?;
            if got == 0 {
                break;
            }
            if line.len() > MAX_GUEST_LOG_LINE {
                return Err(invalid_in(&path)(invalid(
                    Some(n),
                    "line",
                    format!("is longer than {MAX_GUEST_LOG_LINE} bytes"),
                )));
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let event = serde_json::from_slice(&line)
                .map_err(|e| invalid_in(&path)(invalid(Some(n), "line", e.to_string())))?;
            events.push(event);
        }
        Ok(events)
    }

    /// Streams the bitmaps in interval order, a few intervals in memory at a time.
    pub fn bitmaps(&self) -> Result<BitmapStream<'_>, TraceError> {
        let path = self.dir.join(BITMAPS);
        let builder = self.builder(BITMAPS, self.max_bitmap_row_bytes())?.with_batch_size(BITMAP_BATCH);
        let reader = guarded(&path, || builder.build())?.map_err(|e| corrupt(&path, e))?;
        BitmapStream::new(self, path, reader, 0)
    }

    /// The bitmaps of one interval, read without touching the others' data pages.
    pub fn bitmap(&self, interval: u64) -> Result<IntervalBitmaps, TraceError> {
        let path = self.dir.join(BITMAPS);
        // Row `k` of the rates is the interval's position; a recovered trace may skip numbers.
        let mut position = None;
        for (k, row) in self.rates_stream()?.enumerate() {
            if row?.interval == interval {
                position = Some(k);
                break;
            }
        }
        let Some(k) = position else {
            return Err(corrupt(&self.dir.join(RATES), format!("has no interval {interval}")));
        };
        let per = self.manifest.slots.len();
        let sel = RowSelection::from(vec![RowSelector::skip(k * per), RowSelector::select(per)]);
        let builder = self.builder(BITMAPS, self.max_bitmap_row_bytes())?.with_row_selection(sel);
        let reader = guarded(&path, || builder.build())?.map_err(|e| corrupt(&path, e))?;
        let mut stream = BitmapStream::new(self, path.clone(), reader, k as u64 * per as u64)?;
        match stream.next() {
            Some(Ok(b)) if b.interval == interval => Ok(b),
            Some(Err(e)) => Err(e),
            _ => Err(corrupt(&path, format!("interval {interval} is not where rates.parquet says"))),
        }
    }

    /// Streams every interval: its `rates.parquet` row with its dirty pages, densely numbered
    /// ([`IntervalPageStream`]), with the checks of [`Trace::intervals`].
    pub fn interval_pages(&self) -> Result<IntervalPageStream<'_>, TraceError> {
        let mut base = 0u64;
        let bases = self
            .manifest
            .slots
            .iter()
            .map(|s| {
                let b = base as u32;
                base += s.num_pages();
                b
            })
            .collect::<Vec<u32>>();
        let path = self.dir.join(BITMAPS);
        Ok(IntervalPageStream {
            rates: self.rates_stream()?,
            bitmaps: self.bitmaps()?,
            decoder: PageDecoder::new(&path, &bases)?,
            path,
            bases,
        })
    }

    /// Streams every interval: its `rates.parquet` row with its bitmaps, checking that the
    /// two tables line up and that every bitmap agrees with its row.
    pub fn intervals(&self) -> Result<IntervalStream<'_>, TraceError> {
        Ok(IntervalStream { rates: self.rates_stream()?, bitmaps: self.bitmaps()?, path: self.dir.join(BITMAPS) })
    }
}

/// `rates.parquet`, row by row, each checked.
pub struct RatesStream {
    checker: RowChecker,
    expected: u64,
    path: PathBuf,
    reader: ParquetRecordBatchReader,
    buffered: std::vec::IntoIter<IntervalRow>,
    done: bool,
}

impl Iterator for RatesStream {
    type Item = Result<IntervalRow, TraceError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = loop {
            if let Some(row) = self.buffered.next() {
                break match self.checker.check(&row) {
                    Ok(()) => Some(Ok(row)),
                    Err(e) => Some(Err(invalid_in(&self.path)(e))),
                };
            }
            let next = match guarded(&self.path, || self.reader.next()) {
                Ok(next) => next,
                Err(e) => break Some(Err(e)),
            };
            match next {
                Some(Ok(batch)) => match tables::rows_from_batch(&batch) {
                    Ok(rows) => self.buffered = rows.into_iter(),
                    Err(e) => break Some(Err(corrupt(&self.path, e))),
                },
                Some(Err(e)) => break Some(Err(corrupt(&self.path, e))),
                None if self.checker.rows() != self.expected => {
                    break Some(Err(corrupt(
                        &self.path,
                        format!("has {} rows, the manifest says {}", self.checker.rows(), self.expected),
                    )))
                }
                None => break None,
            }
        };
        self.done = !matches!(item, Some(Ok(_)));
        item
    }
}

/// One interval's blobs, per slot in the manifest's order, each with its row in the file.
type RowBlobs = Vec<(u64, SlotBlob)>;

/// `bitmaps.parquet`, interval by interval, each checked against the manifest.
pub struct BitmapStream<'a> {
    trace: &'a Trace,
    dec: bitmap::BitmapDecoder,
    path: PathBuf,
    reader: ParquetRecordBatchReader,
    buffered: std::vec::IntoIter<(u64, SlotBlob)>,
    /// The next row's number in the file.
    row: u64,
    done: bool,
}

impl<'a> BitmapStream<'a> {
    fn new(
        trace: &'a Trace,
        path: PathBuf,
        reader: ParquetRecordBatchReader,
        first_row: u64,
    ) -> Result<Self, TraceError> {
        let dec = bitmap::BitmapDecoder::new().map_err(|e| corrupt(&path, format!("zstd: {e}")))?;
        Ok(BitmapStream { trace, dec, path, reader, buffered: Vec::new().into_iter(), row: first_row, done: false })
    }

    fn next_blob(&mut self) -> Option<Result<(u64, SlotBlob), TraceError>> {
        loop {
            if let Some(b) = self.buffered.next() {
                return Some(Ok(b));
            }
            let next = match guarded(&self.path, || self.reader.next()) {
                Ok(next) => next?,
                Err(e) => return Some(Err(e)),
            };
            match next {
                Ok(batch) => match tables::blobs_from_batch(&batch) {
                    Ok(rows) => self.buffered = rows.into_iter(),
                    // The batch starts at row `self.row` of the file: every row before it was
                    // taken.
                    Err(tables::ColumnError::UnknownEncoding { row, value }) => {
                        let row = self.row + row as u64;
                        return Some(Err(corrupt(
                            &self.path,
                            format!("row {row}: `encoding` is {value:?}, which this dirtytrace does not know (a newer dirtytrace?)"),
                        )));
                    }
                    Err(e) => return Some(Err(corrupt(&self.path, e))),
                },
                Err(e) => return Some(Err(corrupt(&self.path, e))),
            }
        }
    }

    /// Reads the next interval's rows, one per slot, each checked against the manifest: its
    /// number and its blobs with their rows in the file, or `None` at the end of the file.
    fn next_interval_blobs(&mut self) -> Option<Result<(u64, RowBlobs), TraceError>> {
        let m = &self.trace.manifest;
        let mut blobs = Vec::with_capacity(m.slots.len());
        let mut out: Option<u64> = None;
        for i in 0..m.slots.len() {
            let (interval, blob) = match self.next_blob() {
                None if i == 0 => return None,
                None => return Some(Err(corrupt(&self.path, format!("ends inside interval {out:?}")))),
                Some(Err(e)) => return Some(Err(e)),
                Some(Ok(x)) => x,
            };
            let row = self.row;
            self.row += 1;
            let bad = invalid_in(&self.path);
            if let Err(e) = check_blob(m, i, &blob, Some(row)) {
                return Some(Err(bad(e)));
            }
            if out.is_some_and(|o| o != interval) {
                return Some(Err(bad(invalid(
                    Some(row),
                    "interval",
                    format!("is {interval}, but the interval before lacks a bitmap for some slot"),
                ))));
            }
            blobs.push((row, blob));
            out = Some(interval);
        }
        out.map(|interval| Ok((interval, blobs)))
    }

    fn next_interval(&mut self) -> Option<Result<IntervalBitmaps, TraceError>> {
        let (interval, blobs) = match self.next_interval_blobs()? {
            Ok(x) => x,
            Err(e) => return Some(Err(e)),
        };
        let mut slots = Vec::with_capacity(blobs.len());
        for (row, blob) in &blobs {
            let words = match self.dec.decode(blob) {
                Ok(words) => words,
                Err(e) => return Some(Err(decode_error(&self.path, *row, interval, blob, e))),
            };
            slots.push(SlotBitmap {
                slot: blob.slot,
                first_page: blob.first_page,
                num_pages: blob.num_pages,
                dirty_pages: blob.dirty_pages,
                encoding: blob.encoding,
                stored_bytes: blob.data.len() as u64,
                words,
            });
        }
        Some(Ok(IntervalBitmaps { interval, slots }))
    }
}

/// The error for a blob at `row` of `path` that `decode` could not decode.
fn decode_error(path: &Path, row: u64, interval: u64, blob: &SlotBlob, e: bitmap::DecodeError) -> TraceError {
    invalid_in(path)(invalid(Some(row), "data", format!("(interval {interval}, slot {}): {e}", blob.slot)))
}

impl Iterator for BitmapStream<'_> {
    type Item = Result<IntervalBitmaps, TraceError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.next_interval();
        self.done = !matches!(item, Some(Ok(_)));
        item
    }
}

/// Every interval's row and bitmaps, the two tables checked against each other.
pub struct IntervalStream<'a> {
    rates: RatesStream,
    bitmaps: BitmapStream<'a>,
    path: PathBuf,
}

/// The next row of `rates` paired with the next interval of the bitmaps, which `bitmaps`
/// reads (its number and dirty pages): the checks that the two tables line up.
fn next_pair(
    rates: &mut RatesStream,
    path: &Path,
    bitmaps: impl FnOnce() -> Option<Result<(u64, u64), TraceError>>,
) -> Option<Result<IntervalRow, TraceError>> {
    let row = match rates.next() {
        Some(Ok(r)) => r,
        Some(Err(e)) => return Some(Err(e)),
        None => {
            return match bitmaps() {
                None => None,
                Some(Err(e)) => Some(Err(e)),
                Some(Ok((extra, _))) => {
                    Some(Err(corrupt(path, format!("has interval {extra}, which rates.parquet lacks"))))
                }
            }
        }
    };
    let (interval, dirty) = match bitmaps() {
        Some(Ok(b)) => b,
        Some(Err(e)) => return Some(Err(e)),
        None => {
            return Some(Err(corrupt(
                path,
                format!("has no bitmaps for interval {} (rates.parquet has it)", row.interval),
            )))
        }
    };
    if interval != row.interval {
        return Some(Err(corrupt(
            path,
            format!("holds interval {interval} where rates.parquet has interval {}", row.interval),
        )));
    }
    if dirty != row.dirty_pages {
        return Some(Err(corrupt(
            path,
            format!(
                "interval {}: the bitmaps hold {dirty} dirty pages, rates.parquet says {}",
                row.interval, row.dirty_pages
            ),
        )));
    }
    Some(Ok(row))
}

impl Iterator for IntervalStream<'_> {
    type Item = Result<(IntervalRow, IntervalBitmaps), TraceError>;
    fn next(&mut self) -> Option<Self::Item> {
        let mut got = None;
        let bitmaps = &mut self.bitmaps;
        let row = next_pair(&mut self.rates, &self.path, || {
            let bm = match bitmaps.next()? {
                Ok(bm) => bm,
                Err(e) => return Some(Err(e)),
            };
            let key = (bm.interval, bm.slots.iter().map(|s| s.dirty_pages).sum());
            got = Some(bm);
            Some(Ok(key))
        });
        Some(row?.map(|row| (row, got.expect("a row comes with its bitmaps"))))
    }
}

/// Every interval's row and its dirty pages, numbered densely (slot by slot in the manifest's
/// order, the first slot's first page 0), the two tables checked against each other as
/// [`IntervalStream`] checks them, without building bitmap words where a blob has none.
///
/// Reading and decoding are two steps, so that threads can share the decoding: the stream
/// yields each interval as read ([`IntervalPageStream::next_read`]), and any [`PageDecoder`]
/// of the stream turns it into pages. [`IntervalPageStream::next_into`] does both.
pub struct IntervalPageStream<'a> {
    rates: RatesStream,
    bitmaps: BitmapStream<'a>,
    path: PathBuf,
    /// Per slot in the manifest's order: the dense number of its first page.
    bases: Vec<u32>,
    /// The decoder of [`IntervalPageStream::next_into`].
    decoder: PageDecoder,
}

/// One interval as read: its `rates.parquet` row and its blobs, checked against the manifest
/// and against each other, but not yet decoded.
#[derive(Debug)]
pub struct ReadInterval {
    /// The interval's `rates.parquet` row.
    pub row: IntervalRow,
    /// Per slot in the manifest's order: the blob's row in `bitmaps.parquet`, and the blob.
    blobs: RowBlobs,
}

/// Decodes the [`ReadInterval`]s of one [`IntervalPageStream`] into dense page numbers, with
/// every check of [`crate::BitmapDecoder`]. Each thread that decodes has its own.
pub struct PageDecoder {
    dec: bitmap::BitmapDecoder,
    path: PathBuf,
    bases: Vec<u32>,
}

impl PageDecoder {
    fn new(path: &Path, bases: &[u32]) -> Result<Self, TraceError> {
        let dec = bitmap::BitmapDecoder::new().map_err(|e| corrupt(path, format!("zstd: {e}")))?;
        Ok(PageDecoder { dec, path: path.to_path_buf(), bases: bases.to_vec() })
    }

    /// Appends the dirty pages of `read` (ascending) to `pages`. On an error, `pages` may
    /// hold some of them; the error names the blob's row.
    pub fn decode_into(&mut self, read: &ReadInterval, pages: &mut Vec<u32>) -> Result<(), TraceError> {
        for (i, (row, blob)) in read.blobs.iter().enumerate() {
            if let Err(e) = self.dec.decode_pages(blob, self.bases[i], pages) {
                return Err(decode_error(&self.path, *row, read.row.interval, blob, e));
            }
        }
        Ok(())
    }
}

impl IntervalPageStream<'_> {
    /// The next interval as read, checked but not decoded; `None` after the last one or an
    /// error.
    pub fn next_read(&mut self) -> Option<Result<ReadInterval, TraceError>> {
        let bitmaps = &mut self.bitmaps;
        let mut got = None;
        let row = next_pair(&mut self.rates, &self.path, || {
            if bitmaps.done {
                return None;
            }
            let item = bitmaps.next_interval_blobs();
            bitmaps.done = !matches!(item, Some(Ok(_)));
            let (interval, blobs) = match item? {
                Ok(x) => x,
                Err(e) => return Some(Err(e)),
            };
            let dirty = blobs.iter().map(|(_, b)| b.dirty_pages).sum();
            got = Some(blobs);
            Some(Ok((interval, dirty)))
        });
        Some(row?.map(|row| ReadInterval { row, blobs: got.expect("a row comes with its bitmaps") }))
    }

    /// A decoder for this stream's intervals, for any thread.
    pub fn decoder(&self) -> Result<PageDecoder, TraceError> {
        PageDecoder::new(&self.bitmaps.path, &self.bases)
    }

    /// The next interval's row, with its dirty pages appended to `pages` (ascending); `None`
    /// after the last one or an error.
    pub fn next_into(&mut self, pages: &mut Vec<u32>) -> Option<Result<IntervalRow, TraceError>> {
        let read = match self.next_read()? {
            Ok(read) => read,
            Err(e) => return Some(Err(e)),
        };
        Some(self.decoder.decode_into(&read, pages).map(|()| read.row))
    }
}
