//! Writes a trace while recording: the journal and guest log as each interval arrives, then
//! the Parquet tables and final manifest when the recording ends (or `recover` runs).
//! It persists what it is given and computes nothing: rows come ready-made.

use super::bitmap;
use super::journal::{self, JournalReader};
use super::manifest::{DeadlineCounts, EndReason, HarvestTiming, Manifest, TraceStatus};
use super::records::{GuestEvent, IntervalRow, SlotBlob};
use super::tables;
use super::validate::{check_blob, invalid, Invalid, RowChecker};
use super::{TraceError, BITMAPS, CONSOLE, GUEST_LOG, JOURNAL, RATES};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

/// Why writing a trace failed. A full disk shows as [`WriteError::Io`].
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A file or directory operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done, as the start of the message.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// Writing a Parquet table failed.
    #[error("cannot write {}: {source}", path.display())]
    Parquet {
        /// The table.
        path: PathBuf,
        /// What the Parquet writer said.
        source: parquet::errors::ParquetError,
    },
    /// A record could not be turned into JSON.
    #[error("cannot write {what}: {source}")]
    Json {
        /// What was being written.
        what: &'static str,
        /// What serde_json said.
        source: serde_json::Error,
    },
    /// The output directory holds something already.
    #[error(
        "output directory {} already exists and is not empty; choose another --output (nothing was overwritten)",
        .0.display()
    )]
    NotEmpty(PathBuf),
    /// A recorder still holds the trace.
    #[error(
        "{} is being recorded right now (its recorder holds the journal's lock): let the recording end, or stop it \
         with Ctrl-C; `recover` is for a trace whose recorder was killed",
        .0.display()
    )]
    BeingRecorded(PathBuf),
    /// `recover` on a trace that has no journal left, because it was finalised.
    #[error("{} is already finalised: there is nothing to recover", .0.display())]
    AlreadyFinalised(PathBuf),
    /// The journal is not a dirtytrace journal, or is empty.
    #[error("cannot read journal {}: {source}", path.display())]
    Journal {
        /// The journal.
        path: PathBuf,
        /// What is wrong with it.
        source: std::io::Error,
    },
    /// The manifest could not be read back.
    #[error(transparent)]
    Manifest(#[from] TraceError),
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> WriteError + 'a {
    move |source| WriteError::Io { what, path: path.to_path_buf(), source }
}

/// Makes `dir` ready for a new trace: it may not exist yet, or be empty. Never overwrites.
pub fn prepare_dir(dir: &Path) -> Result<(), WriteError> {
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir).map_err(io_err("cannot read output directory", dir))?;
        if entries.next().is_some() {
            return Err(WriteError::NotEmpty(dir.to_path_buf()));
        }
    } else {
        std::fs::create_dir_all(dir).map_err(io_err("cannot create output directory", dir))?;
    }
    let probe = dir.join(super::WRITE_TEST);
    std::fs::write(&probe, b"").map_err(io_err("output directory is not writable:", dir))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// The trace being written: journal, guest log and console log.
pub struct TraceWriter {
    dir: PathBuf,
    manifest: Manifest,
    journal: File,
    guest_log: BufWriter<File>,
    console: Option<BufWriter<File>>,
    /// Frames not yet written, and when the journal was last written.
    pending: Vec<u8>,
    last_persist: Option<std::time::Instant>,
}

/// Frames are written at least this often, so a kill loses at most the last quarter second.
const PERSIST_EVERY: std::time::Duration = std::time::Duration::from_millis(250);
const PERSIST_BYTES: usize = 8 << 20;

impl TraceWriter {
    /// Starts a trace in `dir`, which [`prepare_dir`] must have accepted, and takes the lock
    /// that keeps `recover` away until the trace is finalised.
    pub fn create(dir: &Path, manifest: Manifest) -> Result<Self, WriteError> {
        manifest.store(dir).map_err(io_err("cannot write manifest in", dir))?;
        let jpath = dir.join(JOURNAL);
        let mut journal = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&jpath)
            .map_err(io_err("cannot create", &jpath))?;
        lock_journal(&journal, dir)?;
        journal::write_header(&mut journal).map_err(io_err("cannot write", &jpath))?;
        let lpath = dir.join(GUEST_LOG);
        let guest_log = BufWriter::new(File::create(&lpath).map_err(io_err("cannot create", &lpath))?);
        Ok(TraceWriter {
            dir: dir.to_path_buf(),
            manifest,
            journal,
            guest_log,
            console: None,
            pending: Vec::new(),
            last_persist: None,
        })
    }

    /// The trace's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest the trace was started with.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The manifest, to correct before [`TraceWriter::finish`] stores it again.
    pub fn manifest_mut(&mut self) -> &mut Manifest {
        &mut self.manifest
    }

    /// Appends one interval: its row and bitmaps to the journal, the guest's events to the
    /// guest log, and its console output to the console log.
    pub fn append(
        &mut self,
        row: &IntervalRow,
        blobs: &[SlotBlob],
        events: &[GuestEvent],
        console: &[u8],
    ) -> Result<(), WriteError> {
        for e in events {
            serde_json::to_writer(&mut self.guest_log, e)
                .map_err(|source| WriteError::Json { what: "the guest log", source })?;
            self.guest_log.write_all(b"\n").map_err(io_err("cannot write guest log in", &self.dir))?;
        }
        if !console.is_empty() {
            let console_log = match &mut self.console {
                Some(c) => c,
                None => {
                    let path = self.dir.join(CONSOLE);
                    let file = File::create(&path).map_err(io_err("cannot create", &path))?;
                    self.console.insert(BufWriter::new(file))
                }
            };
            console_log.write_all(console).map_err(io_err("cannot write console log in", &self.dir))?;
        }
        let frame =
            journal::encode_frame(row, blobs).map_err(|source| WriteError::Json { what: "the journal", source })?;
        self.pending.extend_from_slice(&frame);
        let due = self.last_persist.is_none_or(|t| t.elapsed() >= PERSIST_EVERY);
        if due || self.pending.len() >= PERSIST_BYTES {
            self.persist()?;
        }
        Ok(())
    }

    /// Writes the buffered frames, each whole, after the guest-log lines they refer to.
    fn persist(&mut self) -> Result<(), WriteError> {
        self.guest_log.flush().map_err(io_err("cannot write guest log in", &self.dir))?;
        if let Some(c) = self.console.as_mut() {
            c.flush().map_err(io_err("cannot write console log in", &self.dir))?;
        }
        self.journal.write_all(&self.pending).map_err(io_err("cannot write journal in", &self.dir))?;
        self.pending.clear();
        self.last_persist = Some(std::time::Instant::now());
        Ok(())
    }

    /// Ends the recording: builds the Parquet tables and the final manifest.
    pub fn finish(
        mut self,
        status: TraceStatus,
        end_reason: EndReason,
        error: Option<String>,
    ) -> Result<Finalized, WriteError> {
        self.persist()?;
        self.journal.sync_all().map_err(io_err("cannot sync journal in", &self.dir))?;
        self.manifest.end_reason = Some(end_reason);
        self.manifest.error = error;
        self.manifest.store(&self.dir).map_err(io_err("cannot write manifest in", &self.dir))?;
        // The journal stays locked through finalising, so `recover` cannot start in between.
        finalize_locked(&self.dir, status, self.journal)
    }
}

/// Takes the journal's lock, or says that a recorder still holds it.
fn lock_journal(journal: &File, dir: &Path) -> Result<(), WriteError> {
    match journal.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(WriteError::BeingRecorded(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(e)) => Err(io_err("cannot lock the journal in", dir)(e)),
    }
}

/// Harvest timing from the rows, so that a recovered trace gets the same figures, with the
/// sampler's own counts if it left some.
pub fn timing_of(rows: &[IntervalRow], interval_s: f64, sampler_counts: Option<DeadlineCounts>) -> HarvestTiming {
    let mut acc = TimingInputs::new(interval_s);
    rows.iter().for_each(|r| acc.push(r));
    acc.timing(sampler_counts)
}

/// What [`timing_of`] needs of each row, 25 bytes of it instead of the whole row, so that
/// finalising a long recording does not hold every row in memory.
struct TimingInputs {
    interval_s: f64,
    /// `(lateness, duration)` of the full intervals.
    full: Vec<(f64, f64)>,
    /// `harvest_ioctl_s` of every interval.
    ioctl: Vec<f64>,
    /// The most deadlines passed over before any full interval's harvest, from the rows.
    skipped: u64,
}

impl TimingInputs {
    fn new(interval_s: f64) -> Self {
        TimingInputs { interval_s, full: Vec::new(), ioctl: Vec::new(), skipped: 0 }
    }

    fn push(&mut self, r: &IntervalRow) {
        if !r.partial {
            self.full.push((r.harvest_lateness_s, r.duration_s));
            // A full interval's harvest began `harvest_lateness_s` after its deadline, which is
            // a whole number of intervals from the start; the deadlines before it that had no
            // harvest of their own were passed over. (Exact to the clock's nanosecond; a
            // recovered trace missing frames loses none of the count.)
            let deadline = ((r.t_end_s - r.harvest_lateness_s) / self.interval_s).round();
            let passed_over = (deadline as u64).saturating_sub(r.interval + 1);
            self.skipped = self.skipped.max(passed_over);
        }
        self.ioctl.push(r.harvest_ioctl_s);
    }

    fn timing(self, sampler_counts: Option<DeadlineCounts>) -> HarvestTiming {
        use crate::stats::percentile;
        let TimingInputs { interval_s, full, mut ioctl, skipped } = self;
        let mut late: Vec<f64> = full.iter().map(|f| f.0).collect();
        late.sort_by(f64::total_cmp);
        ioctl.sort_by(f64::total_cmp);
        let tolerance = HarvestTiming::on_time_tolerance_s(interval_s);
        let skipped = sampler_counts.map_or(skipped, |c| c.skipped_deadlines);
        HarvestTiming {
            intervals: ioctl.len() as u64,
            lateness_p50_s: percentile(&late, 0.5),
            lateness_p99_s: percentile(&late, 0.99),
            lateness_max_s: late.last().copied().unwrap_or(0.0),
            ioctl_p50_s: percentile(&ioctl, 0.5),
            ioctl_p99_s: percentile(&ioctl, 0.99),
            ioctl_max_s: ioctl.last().copied().unwrap_or(0.0),
            missed_deadlines: late.iter().filter(|&&l| l > tolerance).count() as u64,
            on_time_tolerance_s: tolerance,
            skipped_deadlines: skipped,
            mean_interval_s: if full.is_empty() {
                0.0
            } else {
                full.iter().map(|f| f.1).sum::<f64>() / full.len() as f64
            },
            sampler_counts,
        }
    }
}

fn parquet_props(uncompressed: Option<&str>, row_group: usize) -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("zstd level 3 exists")))
        .set_max_row_group_size(row_group);
    if let Some(c) = uncompressed {
        b = b.set_column_compression(ColumnPath::from(c), Compression::UNCOMPRESSED);
    }
    b.build()
}

/// What finalising found in the journal.
#[derive(Debug, Clone)]
pub struct Finalized {
    /// The final manifest.
    pub manifest: Manifest,
    /// Damaged regions of the journal that were skipped: `(offset, bytes)`.
    pub damaged_regions: Vec<(u64, u64)>,
    /// Frames whose checksum held but whose contents broke the trace's invariants, and why.
    pub invalid_frames: Vec<Invalid>,
    /// The journal ended inside a frame, which was dropped.
    pub torn_tail: bool,
}

impl Finalized {
    /// One line on what was lost, if anything was.
    pub fn losses(&self) -> Option<String> {
        let mut parts = Vec::new();
        if !self.damaged_regions.is_empty() {
            let bytes: u64 = self.damaged_regions.iter().map(|d| d.1).sum();
            parts.push(format!(
                "{} damaged region(s) of the journal ({bytes} bytes, from offset {}) were skipped",
                self.damaged_regions.len(),
                self.damaged_regions[0].0
            ));
        }
        if let Some(first) = self.invalid_frames.first() {
            parts.push(format!(
                "{} frame(s) broke the trace's invariants and were dropped (first: {first})",
                self.invalid_frames.len()
            ));
        }
        if self.torn_tail {
            parts.push("the journal ended in a torn frame, which was dropped".into());
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// Builds `rates.parquet` and `bitmaps.parquet` from the journal of a trace whose recorder
/// died, and rewrites the manifest: `dirtytrace recover`. Refuses while a recorder holds the
/// trace.
pub fn finalize(dir: &Path, status: TraceStatus) -> Result<Finalized, WriteError> {
    let jpath = dir.join(JOURNAL);
    if !jpath.exists() && dir.join(RATES).exists() {
        return Err(WriteError::AlreadyFinalised(dir.to_path_buf()));
    }
    let jfile = crate::files::open_regular(&jpath, u64::MAX, "journal")
        .map_err(|e| WriteError::Journal { path: jpath.clone(), source: std::io::Error::other(e) })?;
    lock_journal(&jfile, dir)?;
    finalize_locked(dir, status, jfile)
}

/// [`finalize`] with the journal already open and locked by the caller. Every frame is checked
/// as a reader would check its row, so the trace it builds always opens.
fn finalize_locked(dir: &Path, status: TraceStatus, mut jfile: File) -> Result<Finalized, WriteError> {
    use std::io::Seek;
    let mut manifest = Manifest::load(dir)?;
    let jpath = dir.join(JOURNAL);
    jfile.seek(std::io::SeekFrom::Start(0)).map_err(io_err("cannot read journal", &jpath))?;
    let mut reader = JournalReader::new(BufReader::new(jfile))
        .map_err(|source| WriteError::Journal { path: jpath.clone(), source })?;
    let tmp_bitmaps = dir.join(".bitmaps.parquet.tmp");
    let bfile = File::create(&tmp_bitmaps).map_err(io_err("cannot create", &tmp_bitmaps))?;
    let parquet_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| WriteError::Parquet { path, source }
    };
    let mut bw = ArrowWriter::try_new(bfile, tables::bitmaps_schema(), Some(parquet_props(Some("data"), 1024)))
        .map_err(parquet_err(&tmp_bitmaps))?;
    // Rows go to the rates table in chunks as the journal is read: only what the harvest
    // timing needs of each stays in memory.
    let tmp_rates = dir.join(".rates.parquet.tmp");
    let rfile = File::create(&tmp_rates).map_err(io_err("cannot create", &tmp_rates))?;
    let mut rw = ArrowWriter::try_new(rfile, tables::rates_schema(), Some(parquet_props(None, 65536)))
        .map_err(parquet_err(&tmp_rates))?;
    let mut rows: Vec<IntervalRow> = Vec::new();
    let mut timing = TimingInputs::new(manifest.interval_s);
    let mut pending = Vec::new();
    let mut checker = RowChecker::new(&manifest);
    let mut invalid_frames = Vec::new();
    let mut verify = match status {
        TraceStatus::Recovered => {
            Some(bitmap::BitmapDecoder::new().map_err(|e| WriteError::Journal { path: jpath.clone(), source: e })?)
        }
        _ => None,
    };
    for frame in &mut reader {
        let (row, blobs) = frame.map_err(io_err("cannot read journal", &jpath))?;
        let frame_no = Some(checker.rows());
        let blobs_ok = if blobs.len() != manifest.slots.len() {
            Err(invalid(
                frame_no,
                "blob_count",
                format!("is {}, the manifest has {} slots", blobs.len(), manifest.slots.len()),
            ))
        } else {
            blobs.iter().enumerate().try_for_each(|(i, b)| check_blob(&manifest, i, b, frame_no))
        };
        let sum: u64 = blobs.iter().map(|b| b.dirty_pages).sum();
        let counts_ok = if sum == row.dirty_pages {
            Ok(())
        } else {
            Err(invalid(frame_no, "dirty_pages", format!("is {}, its bitmaps hold {sum}", row.dirty_pages)))
        };
        // A journal that outlived its recorder may hold anything with a valid checksum: its
        // bitmaps are decoded too (capped at their size), so the trace built always reads.
        let mut data_ok = || match verify.as_mut() {
            Some(dec) => blobs.iter().try_for_each(|b| {
                dec.decode(b).map(drop).map_err(|e| {
                    invalid(frame_no, "data", format!("(interval {}, slot {}): {e}", row.interval, b.slot))
                })
            }),
            None => Ok(()),
        };
        if let Err(e) = blobs_ok.and(counts_ok).and_then(|_| checker.check(&row)).and_then(|_| data_ok()) {
            invalid_frames.push(e);
            continue;
        }
        pending.extend(blobs.into_iter().map(|b| (row.interval, b)));
        timing.push(&row);
        rows.push(row);
        if pending.len() >= 64 {
            bw.write(&tables::bitmaps_batch(&pending)).map_err(parquet_err(&tmp_bitmaps))?;
            pending.clear();
        }
        if rows.len() >= 8192 {
            rw.write(&tables::rates_batch(&rows)).map_err(parquet_err(&tmp_rates))?;
            rows.clear();
        }
    }
    if !pending.is_empty() {
        bw.write(&tables::bitmaps_batch(&pending)).map_err(parquet_err(&tmp_bitmaps))?;
    }
    bw.close().map_err(parquet_err(&tmp_bitmaps))?;
    if !rows.is_empty() {
        rw.write(&tables::rates_batch(&rows)).map_err(parquet_err(&tmp_rates))?;
    }
    rw.close().map_err(parquet_err(&tmp_rates))?;

    std::fs::rename(&tmp_bitmaps, dir.join(BITMAPS)).map_err(io_err("cannot rename into", dir))?;
    std::fs::rename(&tmp_rates, dir.join(RATES)).map_err(io_err("cannot rename into", dir))?;
    let done = Finalized {
        damaged_regions: reader.damage().iter().map(|d| (d.offset, d.bytes)).collect(),
        invalid_frames,
        torn_tail: reader.torn_tail(),
        manifest: Manifest::clone(&manifest),
    };
    manifest.timing = timing.timing(manifest.timing.sampler_counts);
    manifest.intervals = manifest.timing.intervals;
    manifest.status = status;
    if status == TraceStatus::Recovered {
        manifest.end_reason.get_or_insert(EndReason::RecoveredFromJournal);
    }
    // Whatever was lost is said, whoever finalised: never silently.
    if let Some(losses) = done.losses() {
        manifest.error = Some(match manifest.error.take() {
            Some(e) => format!("{e}\n{losses}"),
            None => losses,
        });
    }
    manifest.store(dir).map_err(io_err("cannot write manifest in", dir))?;
    let _ = std::fs::remove_file(&jpath);
    Ok(Finalized { manifest, ..done })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ON_TIME_FRACTION;

    /// A row of interval `index` whose harvest began `late` s after deadline number `deadline`
    /// (of 100 ms intervals), the previous one at `start`.
    fn row(index: u64, start: f64, deadline: u64, late: f64) -> IntervalRow {
        let t_end_s = deadline as f64 * 0.1 + late;
        IntervalRow {
            interval: index,
            t_start_s: start,
            t_end_s,
            duration_s: t_end_s - start,
            partial: false,
            dirty_pages: 0,
            dirty_bytes: 0,
            dirty_rate_bytes_per_s: 0.0,
            new_pages: 0,
            distinct_pages_total: 0,
            working_set_memory_bytes: 0,
            cpu_util: 0.0,
            cpu_util_per_vcpu: vec![],
            phase: String::new(),
            trace_id: String::new(),
            ramsize_bytes: 0,
            migration_speed_bytes_per_s: 1.0,
            dp_intensity: None,
            harvest_lateness_s: late,
            harvest_ioctl_s: 0.0,
            guest_progress_before: vec![],
            guest_progress_after: vec![],
        }
    }

    /// Deadlines 1, 2 (60 ms late), 3, then 5 and 6 (4 passed over): one skipped. Rounding the
    /// durations (1.6 and 0.4 intervals, then 2.0) counted two.
    #[test]
    fn skipped_deadlines_are_the_samplers_or_counted_from_the_deadlines() {
        let rows = [row(0, 0.0, 1, 0.0), row(1, 0.1, 2, 0.06), row(2, 0.26, 3, 0.0), row(3, 0.3, 5, 0.0)];
        let t = timing_of(&rows, 0.1, None);
        assert_eq!((t.skipped_deadlines, t.sampler_counts, t.intervals), (1, None, 4));
        assert_eq!((t.missed_deadlines, t.on_time_tolerance_s), (1, 0.1 * ON_TIME_FRACTION));
        // A recovered trace that lost interval 2's frame still counts one.
        let t = timing_of(&[rows[0].clone(), rows[1].clone(), rows[3].clone()], 0.1, None);
        assert_eq!(t.skipped_deadlines, 1);
        // The sampler's count, where it left one, is the count.
        let counts = DeadlineCounts { harvests: 5, skipped_deadlines: 3 };
        let t = timing_of(&rows, 0.1, Some(counts));
        assert_eq!((t.skipped_deadlines, t.sampler_counts), (3, Some(counts)));
    }
}
