//! `dirtytrace replay`: a precopy live migration driven by the trace's exact page sets.
//!
//! The model (`schemas/analysis.md`, *replay*):
//! - The migration starts at trace time `start_s`. Round 0 sends all RAM at the bandwidth
//!   (`zero_pages = skip`: a page still zero costs [`ZERO_PAGE_BYTES`] instead of a page).
//! - Round `r` runs over `(s_r, e_r]`, `e_r = s_r + bytes_r / bandwidth`. An interval belongs
//!   to the round in which its end time falls. Round `r + 1` sends the union of the pages
//!   dirtied by the intervals of round `r`.
//! - After each round: when the bytes to send next fit within `max_downtime` at the bandwidth
//!   (`bytes ≤ bandwidth × max_downtime`, SimGrid's test), or `max_rounds` rounds have run,
//!   the VM stops and the rest is sent (stop-and-copy): that is the downtime.

use super::{bad, for_each_interval, AnalysisError, PageBits, PageSpace, Result};
use crate::trace::Trace;
use crate::units::HumanDuration;
use serde::{Deserialize, Serialize};
use std::ops::ControlFlow;

/// The most passes over the trace `--loop` counts: beyond 2^53, pass numbers lose precision
/// as times.
const MAX_PASSES: f64 = 9_007_199_254_740_992.0;

/// What QEMU sends for a page that is all zeroes: an 8-byte page header and one byte.
pub const ZERO_PAGE_BYTES: u64 = 9;

/// `--max-downtime`'s default.
pub const DEFAULT_MAX_DOWNTIME: std::time::Duration = std::time::Duration::from_millis(30);
/// `--max-rounds`'s default.
pub const DEFAULT_MAX_ROUNDS: u32 = 30;
/// `--max-time`'s default: one day of migration time. A migration that would last longer
/// (a tiny `--bandwidth`, say) is refused rather than replayed over countless trace passes.
pub const DEFAULT_MAX_TIME: std::time::Duration = std::time::Duration::from_secs(86_400);

/// How round 0 counts pages that were never written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ZeroPages {
    /// Round 0 sends every page in full (SimGrid's convention).
    Send,
    /// Round 0 sends a page that is still zero as [`ZERO_PAGE_BYTES`] (QEMU's behaviour).
    Skip,
}

/// How the precopy migration runs and when it stops, at whatever bandwidth: flags of `replay`
/// and keys of a grid's `[replay]`, with one validator ([`Precopy::check`]). A dataset's
/// `dataset.json` keeps them as `max_downtime_s` (seconds) and `looped`, and reads them back.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default)]
pub struct Precopy {
    /// Stop-and-copy starts once the rest can be sent within this long.
    #[arg(long, default_value_t = HumanDuration(DEFAULT_MAX_DOWNTIME), allow_hyphen_values = true)]
    #[serde(rename(serialize = "max_downtime_s"), alias = "max_downtime_s", serialize_with = "as_seconds")]
    pub max_downtime: HumanDuration,
    /// Precopy rounds (round 0 included) before a forced stop-and-copy.
    #[arg(long, default_value_t = DEFAULT_MAX_ROUNDS, allow_hyphen_values = true)]
    pub max_rounds: u32,
    /// Repeat the trace when the migration outlasts it.
    #[arg(long = "loop")]
    #[serde(rename(serialize = "looped", deserialize = "loop"), alias = "looped")]
    pub looped: bool,
    /// send: round 0 sends every page (SimGrid); skip: a still-zero page costs 9 bytes (QEMU).
    #[arg(long, value_enum, default_value_t = ZeroPages::Send)]
    pub zero_pages: ZeroPages,
}

fn as_seconds<S: serde::Serializer>(d: &HumanDuration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.0.as_secs_f64())
}

impl Default for Precopy {
    fn default() -> Self {
        crate::options::defaults()
    }
}

impl Precopy {
    /// The one check of these settings, for `replay` and grids alike.
    pub fn check(&self) -> Result<()> {
        if self.max_rounds == 0 {
            return Err(bad("--max-rounds", "must be at least 1 (round 0 sends all RAM)"));
        }
        Ok(())
    }
}

/// How to replay a migration over a trace.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// The migration stream's bandwidth, bytes per second.
    pub bandwidth_bytes_per_s: f64,
    /// How the migration runs and when it stops.
    pub precopy: Precopy,
    /// Trace time at which the migration starts (s).
    pub start_s: f64,
    /// The longest migration replayed, in seconds of migration time (`--max-time`): a round
    /// that would end later is an error naming the flag.
    pub max_time_s: f64,
}

impl ReplayOptions {
    /// The defaults, at `bandwidth_bytes_per_s`.
    pub fn new(bandwidth_bytes_per_s: f64) -> Self {
        ReplayOptions {
            bandwidth_bytes_per_s,
            precopy: Precopy::default(),
            start_s: 0.0,
            max_time_s: DEFAULT_MAX_TIME.as_secs_f64(),
        }
    }
}

/// One precopy round.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Round {
    /// 0 for the full-RAM round.
    pub round: u32,
    /// Seconds since the migration started.
    pub start_s: f64,
    /// Its length: `bytes / bandwidth`.
    pub duration_s: f64,
    /// Bytes sent.
    pub bytes: u64,
    /// Pages sent in full (round 0 with `skip`: the non-zero ones).
    pub pages: u64,
    /// Intervals whose end fell in this round.
    pub intervals: u64,
}

/// The last round, with the VM paused.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StopAndCopy {
    /// Bytes sent.
    pub bytes: u64,
    /// Pages sent.
    pub pages: u64,
    /// Its length: the downtime.
    pub duration_s: f64,
}

/// Why precopy stopped and stop-and-copy began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The rest fit within `max_downtime`.
    Converged,
    /// `max_rounds` rounds had run.
    MaxRounds,
}

impl std::fmt::Display for StopReason {
    /// The reason as `replay --json` and `replay.parquet` write it (`max_rounds`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        crate::trace::write_serde_name(f, self)
    }
}

/// How the replayed migration went (`schemas/analysis.md`, *replay*).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplayResult {
    /// From the start of round 0 to the end of stop-and-copy.
    pub total_time_s: f64,
    /// The stop-and-copy: the VM is paused this long.
    pub downtime_s: f64,
    /// Precopy rounds, round 0 included (stop-and-copy not counted).
    pub rounds: u32,
    /// All rounds plus stop-and-copy.
    pub transferred_bytes: u64,
    /// Why precopy stopped.
    pub stop_reason: StopReason,
    /// The rest fit within `max_downtime` before `max_rounds`.
    pub converged: bool,
    /// Every precopy round.
    pub per_round: Vec<Round>,
    /// The stop-and-copy.
    pub stop_and_copy: StopAndCopy,
    /// The bandwidth replayed, bytes per second.
    pub bandwidth_bytes_per_s: f64,
    /// The `--max-downtime` replayed (s).
    pub max_downtime_s: f64,
    /// `bandwidth × max_downtime`: stop-and-copy starts once the rest is at most this.
    pub threshold_bytes: f64,
    /// The `--max-rounds` replayed.
    pub max_rounds: u32,
    /// The `--start` replayed (s).
    pub start_s: f64,
    /// Whether the trace could be repeated (`--loop`).
    pub looped: bool,
    /// How many times the trace was read (more than 1 only with `--loop`).
    pub trace_passes: u64,
    /// How round 0 counted pages never written.
    pub zero_pages: ZeroPages,
    /// Guest RAM in bytes.
    pub ramsize_bytes: u64,
    /// Bytes per page.
    pub page_size_bytes: u64,
    /// The trace's id.
    pub trace_id: String,
    /// Anything that limits these numbers.
    pub notes: Vec<String>,
}

fn validate(trace: &Trace, o: &ReplayOptions, end_s: f64) -> Result<()> {
    crate::units::check_speed(o.bandwidth_bytes_per_s).map_err(|e| bad("--bandwidth", e.to_string()))?;
    o.precopy.check()?;
    if !(o.max_time_s.is_finite() && o.max_time_s > 0.0) {
        return Err(bad("--max-time", format!("must be longer than 0 s, got {}", o.max_time_s)));
    }
    if !o.start_s.is_finite() || o.start_s < 0.0 {
        return Err(bad("--start", format!("must be 0 s or more, got {}", o.start_s)));
    }
    if end_s <= 0.0 {
        return Err(AnalysisError::TraceTooShort(format!(
            "{} has no intervals to replay",
            trace.dir.join(crate::trace::RATES).display()
        )));
    }
    if o.start_s >= end_s {
        return Err(bad(
            "--start",
            format!("{} s is not before the end of {} ({end_s:.3} s)", o.start_s, trace.dir.display()),
        ));
    }
    Ok(())
}

/// Where the migration stands.
struct State {
    bw: f64,
    threshold: f64,
    page_size: u64,
    max_rounds: u32,
    max_time: f64,
    /// Pages dirtied before round 0 starts (`skip` only) and the initially non-zero ones.
    nonzero: Option<PageBits>,
    /// Pages dirtied in the current round.
    dirty: PageBits,
    rounds: Vec<Round>,
    /// End of the current round, in the replay's (looped) time; `None` before round 0.
    round_end: Option<f64>,
    round_intervals: u64,
    done: Option<(StopAndCopy, bool)>,
}

impl State {
    fn begin_round0(&mut self, start: f64, total_pages: u64) -> Result<()> {
        let (bytes, pages) = match &self.nonzero {
            None => (total_pages * self.page_size, total_pages),
            Some(nz) => {
                let n = nz.count();
                (n * self.page_size + (total_pages - n) * ZERO_PAGE_BYTES, n)
            }
        };
        self.push_round(start, bytes, pages)
    }

    fn push_round(&mut self, start: f64, bytes: u64, pages: u64) -> Result<()> {
        let duration = bytes as f64 / self.bw;
        if start + duration > self.max_time {
            return Err(bad(
                "--max-time",
                format!(
                    "the migration would last longer than {} s: round {} would end {:.6e} s after it starts \
                     ({bytes} bytes at {} bytes/s); raise --max-time, or the --bandwidth",
                    self.max_time,
                    self.rounds.len(),
                    start + duration,
                    crate::units::Number(self.bw)
                ),
            ));
        }
        self.rounds.push(Round {
            round: self.rounds.len() as u32,
            start_s: start,
            duration_s: duration,
            bytes,
            pages,
            intervals: 0,
        });
        self.round_end = Some(start + duration);
        self.round_intervals = 0;
        Ok(())
    }

    /// Closes the current round: either starts the next one or ends the migration.
    fn close_round(&mut self) -> Result<()> {
        let end = self.round_end.expect("a round is running");
        self.rounds.last_mut().expect("a round is running").intervals = self.round_intervals;
        let pages = self.dirty.count();
        let bytes = pages * self.page_size;
        self.dirty.clear();
        let converged = bytes as f64 <= self.threshold;
        if converged || self.rounds.len() as u32 >= self.max_rounds {
            self.done = Some((StopAndCopy { bytes, pages, duration_s: bytes as f64 / self.bw }, converged));
            Ok(())
        } else {
            self.push_round(end, bytes, pages)
        }
    }
}

/// Replays a precopy migration over the trace. Reads only as much of the trace as the
/// migration lasts (and the trace again from its start with `looped`).
pub fn replay(trace: &Trace, o: &ReplayOptions) -> Result<ReplayResult> {
    let m = &trace.manifest;
    let mut end_s = 0.0f64;
    for row in trace.rates_stream()? {
        end_s = row?.t_end_s;
    }
    validate(trace, o, end_s)?;
    let space = PageSpace::new(&m.slots);
    let nonzero = match o.precopy.zero_pages {
        ZeroPages::Send => None,
        ZeroPages::Skip => {
            let mut nz = PageBits::new(space.total_pages);
            for r in &m.initial_nonzero_pages {
                for p in r.first..r.first + r.count {
                    if let Some(d) = space.dense(p) {
                        nz.insert(d as u32);
                    }
                }
            }
            Some(nz)
        }
    };
    let mut st = State {
        bw: o.bandwidth_bytes_per_s,
        threshold: o.bandwidth_bytes_per_s * o.precopy.max_downtime.0.as_secs_f64(),
        page_size: m.page_size,
        max_rounds: o.precopy.max_rounds,
        max_time: o.max_time_s,
        nonzero,
        dirty: PageBits::new(space.total_pages),
        rounds: Vec::new(),
        round_end: None,
        round_intervals: 0,
        done: None,
    };
    // Replay time: trace time plus `pass × end_s`. Migration time: replay time − start.
    let mut passes = 0u64;
    let mut last_t = 0.0f64;
    while st.done.is_none() {
        if let (Some(r), Some(re)) = (st.rounds.last(), st.round_end) {
            // A round that already spans a whole pass has every page the trace dirties: the
            // passes that lie entirely inside it add nothing, so skip them without reading.
            let ps = passes as f64 * end_s - o.start_s;
            if r.start_s <= ps - end_s && ps + end_s <= re {
                let k = ((re - ps) / end_s).floor().max(1.0);
                if passes as f64 + k > MAX_PASSES {
                    return Err(bad(
                        "--max-time",
                        format!(
                            "{} lasts {end_s:e} s: replaying a migration of up to {} s would take more than \
                             {MAX_PASSES:e} passes over it; lower --max-time",
                            trace.dir.display(),
                            o.max_time_s
                        ),
                    ));
                }
                let k = k as u64;
                passes += k;
                st.round_intervals = st.round_intervals.saturating_add(k.saturating_mul(m.intervals));
                continue;
            }
        }
        let offset = passes as f64 * end_s;
        passes += 1;
        for_each_interval(trace, |row, pages| {
            let t = row.t_end_s + offset - o.start_s;
            last_t = t;
            if t <= 0.0 {
                // Before the migration: only which pages are non-zero matters.
                if let Some(nz) = st.nonzero.as_mut() {
                    nz.extend(pages);
                }
                return Ok(ControlFlow::Continue(()));
            }
            if st.round_end.is_none() {
                st.begin_round0(0.0, space.total_pages)?;
            }
            while t > st.round_end.expect("round 0 has begun") {
                st.close_round()?;
                if st.done.is_some() {
                    return Ok(ControlFlow::Break(()));
                }
            }
            st.round_intervals += 1;
            st.dirty.extend(pages);
            Ok(ControlFlow::Continue(()))
        })?;
        if st.done.is_none() {
            // The trace ended: a round that ends exactly at its end is complete.
            if st.round_end.is_some_and(|e| last_t >= e) {
                st.close_round()?;
            }
        }
        if st.done.is_none() && !o.precopy.looped {
            let r = st.rounds.last().map_or(0, |r| r.round);
            let need = st.round_end.unwrap_or(0.0) + o.start_s;
            return Err(AnalysisError::TraceTooShort(format!(
                "{} ends at {end_s:.3} s, before the migration does: round {r} runs until {need:.3} s of trace time \
                 (--start {} s, --bandwidth {:.2} MiB/s). Record a longer trace, or pass --loop to repeat this one",
                trace.dir.display(),
                o.start_s,
                o.bandwidth_bytes_per_s / crate::units::MIB as f64,
            )));
        }
    }
    let (sc, converged) = st.done.take().expect("the loop ran until done");
    let mut notes = Vec::new();
    let short = st.rounds.iter().filter(|r| r.duration_s < m.interval_s).count();
    if short > 0 {
        notes.push(format!(
            "{short} round(s) lasted less than the trace's {:.0} ms interval: a round's page set is made of whole \
             intervals (each belongs to the round its end falls in), so these rounds, and the downtime after \
             them, are coarse; a trace recorded with a shorter --interval resolves them",
            m.interval_s * 1e3
        ));
    }
    let precopy: f64 = st.rounds.iter().map(|r| r.duration_s).sum();
    let transferred = st.rounds.iter().map(|r| r.bytes).sum::<u64>() + sc.bytes;
    Ok(ReplayResult {
        total_time_s: precopy + sc.duration_s,
        downtime_s: sc.duration_s,
        rounds: st.rounds.len() as u32,
        transferred_bytes: transferred,
        stop_reason: if converged { StopReason::Converged } else { StopReason::MaxRounds },
        converged,
        per_round: st.rounds,
        stop_and_copy: sc,
        bandwidth_bytes_per_s: o.bandwidth_bytes_per_s,
        max_downtime_s: o.precopy.max_downtime.0.as_secs_f64(),
        threshold_bytes: st.threshold,
        max_rounds: o.precopy.max_rounds,
        start_s: o.start_s,
        looped: o.precopy.looped,
        trace_passes: passes,
        zero_pages: o.precopy.zero_pages,
        ramsize_bytes: m.ramsize_bytes,
        page_size_bytes: m.page_size,
        trace_id: m.trace_id.clone(),
        notes,
    })
}
