//! Writes a trace while recording: the journal and guest log as each interval arrives, then
//! the Parquet tables and final manifest when the recording ends (or `recover` runs).

use super::bitmap;
use super::journal::{self, JournalReader, SlotBlob};
use super::manifest::{HarvestTiming, Manifest, TraceStatus};
use super::tables::{self, IntervalRow};
use super::{BITMAPS, CONSOLE, GUEST_LOG, JOURNAL, RATES};
use crate::pagestats::{for_each_set_bit, SlidingDistinct};
use crate::sampler::Harvest;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

pub struct WriterOptions {
    pub dir: PathBuf,
    pub zstd_level: i32,
}

/// What the writer tells whoever shows progress, after each interval.
pub type WriterProgress = Box<dyn FnMut(&IntervalRow) + Send>;

/// Where the recorder's own CPU time goes, per interval, in nanoseconds of thread CPU time
/// (so that time the machine gives to other threads is not counted as ours).
#[derive(Debug, Clone, Default)]
pub struct WriterStats {
    /// Inside KVM_GET_DIRTY_LOG.
    pub ioctl_ns: Vec<u64>,
    /// The sampler's work around the ioctl: progress words, CPU clocks, hand-off.
    pub sampler_own_ns: Vec<u64>,
    /// Counting, statistics and zstd compression of the bitmaps.
    pub compress_ns: Vec<u64>,
    /// Appending the frame to the journal.
    pub persist_ns: Vec<u64>,
    /// Holding the vCPUs for an exact cut (wall time).
    pub pause_ns: Vec<u64>,
}

pub struct TraceWriter {
    stats: WriterStats,
    dir: PathBuf,
    manifest: Manifest,
    journal: File,
    guest_log: BufWriter<File>,
    console: Option<BufWriter<File>>,
    compressor: zstd::bulk::Compressor<'static>,
    window: SlidingDistinct,
    progress: Option<WriterProgress>,
    pages: Vec<u64>,
    /// Frames not yet written, and when the journal was last written.
    pending: Vec<u8>,
    last_persist_ns: u64,
}

/// Frames are written at least this often, so a kill loses at most the last quarter second.
const PERSIST_EVERY_NS: u64 = 250_000_000;
const PERSIST_BYTES: usize = 8 << 20;

fn io_err(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> String {
    let msg = format!("{what} {}", path.display());
    move |e| format!("{msg}: {e}")
}

/// Makes `dir` ready for a new trace: it may not exist yet, or be empty. Never overwrites.
pub fn prepare_dir(dir: &Path) -> Result<(), String> {
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir).map_err(io_err("cannot read output directory", dir))?;
        if entries.next().is_some() {
            return Err(format!(
                "output directory {} already exists and is not empty; choose another --output (nothing was overwritten)",
                dir.display()
            ));
        }
    } else {
        std::fs::create_dir_all(dir).map_err(io_err("cannot create output directory", dir))?;
    }
    let probe = dir.join(".write-test");
    std::fs::write(&probe, b"").map_err(io_err("output directory is not writable:", dir))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

impl TraceWriter {
    /// Starts a trace in `opts.dir`, which [`prepare_dir`] must have accepted.
    pub fn create(opts: WriterOptions, manifest: Manifest, progress: Option<WriterProgress>) -> Result<Self, String> {
        let dir = opts.dir;
        manifest.store(&dir).map_err(io_err("cannot write manifest in", &dir))?;
        let jpath = dir.join(JOURNAL);
        let mut journal = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&jpath)
            .map_err(io_err("cannot create", &jpath))?;
        // Held until the trace is finalised: `recover` refuses a journal that is locked.
        lock_journal(&journal, &jpath)?;
        journal::write_header(&mut journal).map_err(io_err("cannot write", &jpath))?;
        let lpath = dir.join(GUEST_LOG);
        let guest_log = BufWriter::new(File::create(&lpath).map_err(io_err("cannot create", &lpath))?);
        let compressor = zstd::bulk::Compressor::new(opts.zstd_level).map_err(|e| format!("zstd: {e}"))?;
        let window = SlidingDistinct::new(manifest.total_pages(), manifest.working_set_window_s);
        Ok(TraceWriter {
            stats: WriterStats::default(),
            dir,
            manifest,
            journal,
            guest_log,
            console: None,
            compressor,
            window,
            progress,
            pages: Vec::new(),
            pending: Vec::new(),
            last_persist_ns: 0,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Turns one harvest into a row and compressed bitmaps, and appends them to the journal.
    pub fn append(&mut self, h: Harvest) -> Result<IntervalRow, String> {
        let cpu_begin = crate::clock::this_thread_cpu_ns();
        self.stats.ioctl_ns.push(h.ioctl_cpu_ns);
        self.stats.pause_ns.push(h.pause_ns);
        self.stats.sampler_own_ns.push(h.sampler_cpu_ns.saturating_sub(h.ioctl_cpu_ns));
        let m = &self.manifest;
        let mut blobs = Vec::with_capacity(h.bitmaps.len());
        let mut dirty_pages = 0;
        let mut page_base = 0u64;
        let t_end_s = h.t_end_ns as f64 / 1e9;
        let mut all_pages = std::mem::take(&mut self.pages);
        all_pages.clear();
        for (slot, words) in m.slots.iter().zip(&h.bitmaps) {
            let before = all_pages.len();
            for_each_set_bit(words, |b| all_pages.push(page_base + b));
            let n = (all_pages.len() - before) as u64;
            let (encoding, raw_bytes, data) =
                bitmap::encode(words, &mut self.compressor).map_err(|e| format!("zstd: {e}"))?;
            dirty_pages += n;
            page_base += slot.num_pages();
            blobs.push(SlotBlob {
                slot: slot.slot,
                first_page: slot.first_page(),
                num_pages: slot.num_pages(),
                encoding,
                raw_bytes,
                dirty_pages: n,
                data,
            });
        }
        let new_pages = self.window.push(t_end_s, all_pages.iter().copied());
        self.pages = all_pages;
        let duration_s = (h.t_end_ns - h.t_start_ns) as f64 / 1e9;
        let dirty_bytes = dirty_pages * m.page_size;
        let rate = if duration_s > 0.0 { dirty_bytes as f64 / duration_s } else { 0.0 };
        let per_vcpu: Vec<f64> =
            h.vcpu_cpu_ns.iter().map(|&c| if duration_s > 0.0 { c as f64 / 1e9 / duration_s } else { 0.0 }).collect();
        let cpu_util: f64 = per_vcpu.iter().sum();
        // SimGrid dirties memory in proportion to CPU work, so an interval without CPU work
        // has no defined intensity.
        let dp_intensity = (cpu_util > 1e-6).then(|| rate / (m.migration_speed_bytes_per_s * cpu_util));
        let row = IntervalRow {
            interval: h.index,
            t_start_s: h.t_start_ns as f64 / 1e9,
            t_end_s,
            duration_s,
            partial: h.partial,
            dirty_pages,
            dirty_bytes,
            dirty_rate_bytes_per_s: rate,
            new_pages,
            distinct_pages_total: self.window.ever(),
            working_set_memory_bytes: self.window.in_window() * m.page_size,
            cpu_util,
            cpu_util_per_vcpu: per_vcpu,
            phase: h.phase,
            trace_id: m.trace_id.clone(),
            ramsize_bytes: m.ramsize_bytes,
            migration_speed_bytes_per_s: m.migration_speed_bytes_per_s,
            dp_intensity,
            harvest_lateness_s: h.lateness_ns as f64 / 1e9,
            harvest_ioctl_s: h.ioctl_ns as f64 / 1e9,
            guest_progress_before: h.progress_before,
            guest_progress_after: h.progress_after,
        };
        let cpu_persist = crate::clock::this_thread_cpu_ns();
        self.stats.compress_ns.push(cpu_persist - cpu_begin);
        let t_persist = crate::clock::now_ns();
        for e in &h.events {
            serde_json::to_writer(&mut self.guest_log, e).map_err(|e| e.to_string())?;
            self.guest_log.write_all(b"\n").map_err(io_err("cannot write guest log in", &self.dir))?;
        }
        if !h.console.is_empty() {
            if self.console.is_none() {
                let path = self.dir.join(CONSOLE);
                self.console = Some(BufWriter::new(File::create(&path).map_err(io_err("cannot create", &path))?));
            }
            let c = self.console.as_mut().unwrap();
            c.write_all(&h.console).map_err(io_err("cannot write console log in", &self.dir))?;
        }
        self.pending.extend_from_slice(&journal::encode_frame(&row, &blobs));
        if t_persist - self.last_persist_ns >= PERSIST_EVERY_NS || self.pending.len() >= PERSIST_BYTES {
            self.persist()?;
        }
        self.stats.persist_ns.push(crate::clock::this_thread_cpu_ns() - cpu_persist);
        if let Some(p) = self.progress.as_mut() {
            p(&row);
        }
        Ok(row)
    }

    /// Writes the buffered frames, each whole, after the guest-log lines they refer to.
    fn persist(&mut self) -> Result<(), String> {
        self.guest_log.flush().map_err(io_err("cannot write guest log in", &self.dir))?;
        if let Some(c) = self.console.as_mut() {
            c.flush().map_err(io_err("cannot write console log in", &self.dir))?;
        }
        self.journal.write_all(&self.pending).map_err(io_err("cannot write journal in", &self.dir))?;
        self.pending.clear();
        self.last_persist_ns = crate::clock::now_ns();
        Ok(())
    }

    /// Ends the recording: builds the Parquet tables and the final manifest.
    pub fn finish(
        mut self,
        status: TraceStatus,
        end_reason: &str,
        error: Option<String>,
    ) -> Result<(Manifest, WriterStats), String> {
        self.persist()?;
        self.journal.sync_all().map_err(io_err("cannot sync journal in", &self.dir))?;
        self.manifest.end_reason = Some(end_reason.to_string());
        self.manifest.error = error;
        self.manifest.store(&self.dir).map_err(io_err("cannot write manifest in", &self.dir))?;
        // The journal stays locked through finalising, so `recover` cannot start in between.
        Ok((finalize_locked(&self.dir, status, self.journal)?, self.stats))
    }
}

pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[idx]
}

/// Harvest timing, derived from the rows so that a recovered trace gets the same figures.
pub fn timing_of(rows: &[IntervalRow], interval_s: f64) -> HarvestTiming {
    let full: Vec<&IntervalRow> = rows.iter().filter(|r| !r.partial).collect();
    let mut late: Vec<f64> = full.iter().map(|r| r.harvest_lateness_s).collect();
    let mut ioctl: Vec<f64> = rows.iter().map(|r| r.harvest_ioctl_s).collect();
    late.sort_by(f64::total_cmp);
    ioctl.sort_by(f64::total_cmp);
    let tolerance = interval_s / 10.0;
    let skipped = full.iter().map(|r| ((r.duration_s / interval_s).round() as u64).saturating_sub(1)).sum();
    HarvestTiming {
        intervals: rows.len() as u64,
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
            full.iter().map(|r| r.duration_s).sum::<f64>() / full.len() as f64
        },
    }
}

fn parquet_props(uncompressed: Option<&str>, row_group: usize) -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap()))
        .set_max_row_group_size(row_group);
    if let Some(c) = uncompressed {
        b = b.set_column_compression(ColumnPath::from(c), Compression::UNCOMPRESSED);
    }
    b.build()
}

/// Takes the journal's lock, or says that a recorder still holds it.
fn lock_journal(journal: &File, path: &Path) -> Result<(), String> {
    match journal.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(format!(
            "{} is being recorded right now (its recorder holds the journal's lock): let the recording end, or stop \
             it with Ctrl-C; `recover` is for a trace whose recorder was killed",
            path.parent().unwrap_or(path).display()
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(format!("cannot lock journal {}: {e}", path.display())),
    }
}

/// Builds `rates.parquet` and `bitmaps.parquet` from the journal of a trace whose recorder
/// died, and rewrites the manifest: `dirtytrace recover`. Refuses while a recorder holds the
/// trace.
pub fn finalize(dir: &Path, status: TraceStatus) -> Result<Manifest, String> {
    let jpath = dir.join(JOURNAL);
    if !jpath.exists() && dir.join(RATES).exists() {
        return Err(format!("{} is already finalised: there is nothing to recover", dir.display()));
    }
    let jfile = File::open(&jpath).map_err(io_err("cannot open journal", &jpath))?;
    lock_journal(&jfile, &jpath)?;
    finalize_locked(dir, status, jfile)
}

/// [`finalize`] with the journal already open and locked by the caller.
fn finalize_locked(dir: &Path, status: TraceStatus, mut jfile: File) -> Result<Manifest, String> {
    use std::io::Seek;
    let mut manifest = Manifest::load(dir)?;
    let jpath = dir.join(JOURNAL);
    jfile.seek(std::io::SeekFrom::Start(0)).map_err(io_err("cannot read journal", &jpath))?;
    let mut reader = JournalReader::new(BufReader::new(jfile)).map_err(io_err("cannot read journal", &jpath))?;
    let tmp_bitmaps = dir.join(".bitmaps.parquet.tmp");
    let bfile = File::create(&tmp_bitmaps).map_err(io_err("cannot create", &tmp_bitmaps))?;
    let mut bw = ArrowWriter::try_new(bfile, tables::bitmaps_schema(), Some(parquet_props(Some("data"), 1024)))
        .map_err(|e| format!("parquet: {e}"))?;
    let mut rows = Vec::new();
    let mut pending = Vec::new();
    for frame in &mut reader {
        let (row, blobs) = frame.map_err(io_err("cannot read journal", &jpath))?;
        pending.extend(blobs.into_iter().map(|b| (row.interval, b)));
        rows.push(row);
        if pending.len() >= 64 {
            bw.write(&tables::bitmaps_batch(&pending)).map_err(|e| format!("cannot write bitmaps: {e}"))?;
            pending.clear();
        }
    }
    if !pending.is_empty() {
        bw.write(&tables::bitmaps_batch(&pending)).map_err(|e| format!("cannot write bitmaps: {e}"))?;
    }
    bw.close().map_err(|e| format!("cannot write bitmaps: {e}"))?;
    let torn = reader.torn_tail();

    let tmp_rates = dir.join(".rates.parquet.tmp");
    let rfile = File::create(&tmp_rates).map_err(io_err("cannot create", &tmp_rates))?;
    let mut rw = ArrowWriter::try_new(rfile, tables::rates_schema(), Some(parquet_props(None, 65536)))
        .map_err(|e| format!("parquet: {e}"))?;
    for chunk in rows.chunks(8192) {
        rw.write(&tables::rates_batch(chunk)).map_err(|e| format!("cannot write rates: {e}"))?;
    }
    rw.close().map_err(|e| format!("cannot write rates: {e}"))?;

    std::fs::rename(&tmp_bitmaps, dir.join(BITMAPS)).map_err(io_err("cannot rename into", dir))?;
    std::fs::rename(&tmp_rates, dir.join(RATES)).map_err(io_err("cannot rename into", dir))?;
    manifest.timing = timing_of(&rows, manifest.interval_s);
    manifest.intervals = rows.len() as u64;
    manifest.status = status;
    if status == TraceStatus::Recovered {
        manifest.end_reason.get_or_insert_with(|| "recovered_from_journal".into());
        if torn {
            manifest.error.get_or_insert_with(|| "the journal ended in a torn frame, which was dropped".into());
        }
    }
    manifest.store(dir).map_err(io_err("cannot write manifest in", dir))?;
    let _ = std::fs::remove_file(&jpath);
    Ok(manifest)
}
