//! Reading a finished trace: the manifest, the rates table, and the bitmaps streamed in
//! order or fetched by interval.

use super::manifest::{Manifest, TraceStatus};
use super::tables::{self, IntervalRow};
use super::{BITMAPS, GUEST_LOG, JOURNAL, MANIFEST, RATES};
use crate::events::GuestEvent;
use crate::pagestats::for_each_set_bit;
use parquet::arrow::arrow_reader::{
    ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder, RowSelection, RowSelector,
};
use std::fs::File;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("{0} is not a trace directory (no manifest.json)")]
    NotATrace(PathBuf),
    #[error("{0} was never finalised (the recorder was killed?): run `dirtytrace recover {0}` to rebuild it from its journal")]
    NotFinalised(PathBuf),
    #[error("{path}: {msg}")]
    Corrupt { path: PathBuf, msg: String },
    #[error("{0}")]
    Manifest(String),
}

fn corrupt(path: &Path, msg: impl ToString) -> TraceError {
    TraceError::Corrupt { path: path.to_path_buf(), msg: msg.to_string() }
}

/// One slot's dirty bitmap for one interval, decompressed.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotBitmap {
    pub slot: u32,
    pub first_page: u64,
    pub num_pages: u64,
    /// KVM's layout: bit `i % 64` of word `i / 64` is page `first_page + i`.
    pub words: Vec<u64>,
}

impl SlotBitmap {
    /// Guest page numbers of the dirty pages.
    pub fn pages(&self) -> Vec<u64> {
        let mut v = Vec::new();
        for_each_set_bit(&self.words, |b| v.push(self.first_page + b));
        v
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct IntervalBitmaps {
    pub interval: u64,
    pub slots: Vec<SlotBitmap>,
}

impl IntervalBitmaps {
    pub fn pages(&self) -> Vec<u64> {
        self.slots.iter().flat_map(|s| s.pages()).collect()
    }
}

pub struct Trace {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Trace {
    pub fn open(dir: impl AsRef<Path>) -> Result<Trace, TraceError> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.join(MANIFEST).exists() {
            return Err(TraceError::NotATrace(dir));
        }
        let manifest = Manifest::load(&dir).map_err(TraceError::Manifest)?;
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

    fn builder(&self, name: &str) -> Result<ParquetRecordBatchReaderBuilder<File>, TraceError> {
        let path = self.dir.join(name);
        let f = File::open(&path).map_err(|e| corrupt(&path, e))?;
        ParquetRecordBatchReaderBuilder::try_new(f)
            .map_err(|e| corrupt(&path, format!("not a readable Parquet file ({e})")))
    }

    /// Every row of `rates.parquet`, in interval order.
    pub fn rates(&self) -> Result<Vec<IntervalRow>, TraceError> {
        let path = self.dir.join(RATES);
        let reader = self.builder(RATES)?.build().map_err(|e| corrupt(&path, e))?;
        let mut rows = Vec::new();
        for batch in reader {
            let batch = batch.map_err(|e| corrupt(&path, e))?;
            rows.extend(tables::rows_from_batch(&batch).map_err(|e| corrupt(&path, e))?);
        }
        Ok(rows)
    }

    /// Streams `rates.parquet` in interval order, one batch of rows in memory at a time.
    pub fn rates_stream(&self) -> Result<RatesStream, TraceError> {
        let path = self.dir.join(RATES);
        let reader = self.builder(RATES)?.with_batch_size(1024).build().map_err(|e| corrupt(&path, e))?;
        Ok(RatesStream { path, reader, buffered: Vec::new().into_iter() })
    }

    /// The guest's own log: phase marks and whatever else it reported.
    pub fn guest_log(&self) -> Result<Vec<GuestEvent>, TraceError> {
        let path = self.dir.join(GUEST_LOG);
        let text = std::fs::read_to_string(&path).map_err(|e| corrupt(&path, e))?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(|e| corrupt(&path, e)))
            .collect()
    }

    /// Streams the bitmaps in interval order, a few intervals in memory at a time.
    pub fn bitmaps(&self) -> Result<BitmapStream, TraceError> {
        let path = self.dir.join(BITMAPS);
        let reader = self.builder(BITMAPS)?.with_batch_size(64).build().map_err(|e| corrupt(&path, e))?;
        BitmapStream::new(path, reader)
    }

    /// The bitmaps of one interval, read without touching the others' data pages.
    pub fn bitmap(&self, interval: u64) -> Result<IntervalBitmaps, TraceError> {
        let path = self.dir.join(BITMAPS);
        if interval >= self.manifest.intervals {
            return Err(corrupt(&path, format!("no interval {interval}: the trace has {}", self.manifest.intervals)));
        }
        let per = self.manifest.slots.len();
        let sel = RowSelection::from(vec![RowSelector::skip(interval as usize * per), RowSelector::select(per)]);
        let reader = self.builder(BITMAPS)?.with_row_selection(sel).build().map_err(|e| corrupt(&path, e))?;
        let mut stream = BitmapStream::new(path.clone(), reader)?;
        match stream.next() {
            Some(Ok(b)) if b.interval == interval => Ok(b),
            Some(Err(e)) => Err(e),
            _ => Err(corrupt(&path, format!("interval {interval} is not where the manifest says"))),
        }
    }
}

pub struct RatesStream {
    path: PathBuf,
    reader: ParquetRecordBatchReader,
    buffered: std::vec::IntoIter<IntervalRow>,
}

impl Iterator for RatesStream {
    type Item = Result<IntervalRow, TraceError>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(row) = self.buffered.next() {
                return Some(Ok(row));
            }
            match self.reader.next()? {
                Ok(batch) => match tables::rows_from_batch(&batch) {
                    Ok(rows) => self.buffered = rows.into_iter(),
                    Err(e) => return Some(Err(corrupt(&self.path, e))),
                },
                Err(e) => return Some(Err(corrupt(&self.path, e))),
            }
        }
    }
}

pub struct BitmapStream {
    dec: zstd::bulk::Decompressor<'static>,
    path: PathBuf,
    reader: ParquetRecordBatchReader,
    buffered: std::vec::IntoIter<(u64, super::SlotBlob)>,
    current: Option<IntervalBitmaps>,
}

fn decode(
    dec: &mut zstd::bulk::Decompressor<'static>,
    path: &Path,
    blob: super::SlotBlob,
) -> Result<SlotBitmap, TraceError> {
    let words = super::bitmap::decode(dec, blob.encoding, &blob.data, blob.raw_bytes, blob.num_pages)
        .map_err(|e| corrupt(path, format!("interval slot {}: {e}", blob.slot)))?;
    Ok(SlotBitmap { slot: blob.slot, first_page: blob.first_page, num_pages: blob.num_pages, words })
}

impl BitmapStream {
    fn new(path: PathBuf, reader: ParquetRecordBatchReader) -> Result<Self, TraceError> {
        let dec = zstd::bulk::Decompressor::new().map_err(|e| corrupt(&path, format!("zstd: {e}")))?;
        Ok(BitmapStream { path, reader, buffered: Vec::new().into_iter(), current: None, dec })
    }
}

impl Iterator for BitmapStream {
    type Item = Result<IntervalBitmaps, TraceError>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let Some((interval, blob)) = self.buffered.next() else {
                match self.reader.next() {
                    Some(Ok(batch)) => match tables::blobs_from_batch(&batch) {
                        Ok(rows) => {
                            self.buffered = rows.into_iter();
                            continue;
                        }
                        Err(e) => return Some(Err(corrupt(&self.path, e))),
                    },
                    Some(Err(e)) => return Some(Err(corrupt(&self.path, e))),
                    None => return self.current.take().map(Ok),
                }
            };
            let bitmap = match decode(&mut self.dec, &self.path, blob) {
                Ok(b) => b,
                Err(e) => return Some(Err(e)),
            };
            match &mut self.current {
                Some(cur) if cur.interval == interval => cur.slots.push(bitmap),
                _ => {
                    let done = self.current.replace(IntervalBitmaps { interval, slots: vec![bitmap] });
                    if done.is_some() {
                        return done.map(Ok);
                    }
                }
            }
        }
    }
}
