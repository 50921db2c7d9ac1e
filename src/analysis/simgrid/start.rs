//! `dirtytrace simgrid TRACE --start T`: SimGrid's parameters for one precopy migration that
//! starts at trace time `T`, chosen so that SimGrid's model ([`super::model`]) reproduces the
//! migration that `replay --start T --zero-pages skip --max-downtime 30ms` computes
//! (`schemas/analysis.md`, *simgrid --start*). SimGrid's maximum downtime is fixed at 30 ms.
//!
//! - `round0_bytes` (SimGrid's `ramsize`, not the guest's RAM): what replay's round 0 sends,
//!   the pages holding data at `T` in full and the others as QEMU's 9-byte zero-page header.
//! - The dirtying: each replay round's length and the distinct bytes dirtied during it (which
//!   the next round sends) are points of the trace's distinct-page curve, at exactly the round
//!   lengths this migration has. `min(rate × length, cap)` is fitted to them by least squares;
//!   the rate becomes `dp_intensity × migration_speed × cpu_util`, the cap the working set.
//! - The check: [`super::model`] runs SimGrid's rounds with the parameters, beside replay's.
//!   The fit is invalid, and says why, when the points are no capped line, when the model
//!   strays from replay, or when replay never converges (the parameters then make SimGrid
//!   not converge either).

use super::model::{ModelMigration, VmModel, MAX_DOWNTIME_S, MAX_STAGE2_ROUNDS};
use crate::analysis::replay::{self, ReplayOptions, ReplayResult, ZeroPages};
use crate::analysis::{bad, for_each_interval, PageBits, PageSpace, Result};
use crate::trace::Trace;
use crate::units::MIB;
use serde::Serialize;
use std::ops::ControlFlow;

/// The fit is invalid when the capped line misses the rounds' dirtied bytes, beyond a round's
/// resolution, by more than this fraction of them (`fit.curve_error_beyond_resolution`).
pub const CURVE_TOLERANCE: f64 = 0.10;
/// The fit is invalid when SimGrid's model, run with the parameters, takes a total time this
/// far from replay's, as a fraction of it.
pub const REPRODUCTION_TOLERANCE: f64 = 0.10;
/// A round's page set is whole intervals (each belongs to the round its end falls in), so its
/// bytes may be off by an interval's dirtying at either edge: a cap is fitted only where the
/// longest rounds fall short of the line by more than this many intervals' dirtying.
const CAP_RESOLUTION_INTERVALS: f64 = 2.0;
/// Where replay never converges, SimGrid must not either: the dirty rate is raised to at least
/// this multiple of the migration speed, so that no round is shorter than the one before.
const NON_CONVERGING_MARGIN: f64 = 1.01;

/// What `simgrid --start` is asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct StartOptions {
    /// Trace time at which the migration starts (s).
    pub start_s: f64,
    /// Bytes/s; `None`: the speed the trace was recorded with (`manifest.json`).
    pub migration_speed: Option<f64>,
    /// Repeat the trace when the migration outlasts it (`replay --loop`).
    pub looped: bool,
    /// Replay's round limit (`replay --max-rounds`), round 0 included.
    pub max_rounds: u32,
}

impl StartOptions {
    /// A migration at `start_s`, with replay's defaults.
    pub fn new(start_s: f64) -> Self {
        StartOptions { start_s, migration_speed: None, looped: false, max_rounds: replay::DEFAULT_MAX_ROUNDS }
    }

    /// The replay the parameters are fitted to, at `speed` bytes/s.
    pub fn replay_options(&self, speed: f64) -> ReplayOptions {
        let mut o = ReplayOptions::new(speed);
        o.start_s = self.start_s;
        o.precopy.looped = self.looped;
        o.precopy.max_rounds = self.max_rounds;
        o.precopy.max_downtime = crate::units::HumanDuration(std::time::Duration::from_secs_f64(MAX_DOWNTIME_S));
        o.precopy.zero_pages = ZeroPages::Skip;
        o
    }
}

/// `min(rate × d, cap)`: SimGrid's dirtied bytes in a round of `d` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CappedLine {
    /// Bytes per second.
    pub rate: f64,
    /// Bytes; `None`: no cap within the points.
    pub cap: Option<f64>,
}

impl CappedLine {
    /// The line at `d` seconds.
    pub fn at(&self, d: f64) -> f64 {
        let y = self.rate * d;
        self.cap.map_or(y, |c| y.min(c))
    }

    /// The least-squares fit to `points` (seconds, bytes). For each split of the points, by
    /// length, into a line through the origin and a capped rest, the line is fitted to the
    /// shorter ones and the cap is the mean of the longer ones; the split with the smallest
    /// squared error wins. A cap counts only where every capped point falls short of the line
    /// by more than `resolution_s` of its dirtying: otherwise the line alone is kept.
    pub fn fit(points: &[(f64, f64)], resolution_s: f64) -> CappedLine {
        let mut p = points.to_vec();
        p.sort_by(|a, b| a.0.total_cmp(&b.0));
        let through_origin = |pts: &[(f64, f64)]| {
            let sxx: f64 = pts.iter().map(|q| q.0 * q.0).sum();
            if sxx > 0.0 {
                pts.iter().map(|q| q.0 * q.1).sum::<f64>() / sxx
            } else {
                0.0
            }
        };
        let sse = |l: &CappedLine| p.iter().map(|&(d, y)| (l.at(d) - y).powi(2)).sum::<f64>();
        let mut best = CappedLine { rate: through_origin(&p), cap: None };
        let mut best_sse = sse(&best);
        for k in (0..p.len()).rev() {
            let (line, capped) = p.split_at(k);
            let cap = capped.iter().map(|q| q.1).sum::<f64>() / capped.len() as f64;
            let rate = match line {
                // Every point capped: the smallest rate that reaches the cap at all of them.
                [] if capped[0].0 > 0.0 => cap / capped[0].0,
                [] => continue,
                _ => through_origin(line),
            };
            if !line.is_empty() && !capped.iter().all(|&(d, y)| rate * d - y > rate * resolution_s) {
                continue;
            }
            let candidate = CappedLine { rate, cap: Some(cap) };
            let e = sse(&candidate);
            if e < best_sse {
                (best, best_sse) = (candidate, e);
            }
        }
        best
    }

    /// `Σ |line(d) − y| / Σ y` over `points`: how far the line is from them, as a fraction of
    /// the bytes (0 when they have none).
    pub fn error(&self, points: &[(f64, f64)]) -> f64 {
        self.error_beyond(points, 0.0)
    }

    /// The same, counting only what each point misses by beyond `slack_s` of the line's
    /// dirtying (`rate × slack_s` bytes): what a point's own resolution cannot explain.
    pub fn error_beyond(&self, points: &[(f64, f64)], slack_s: f64) -> f64 {
        let total: f64 = points.iter().map(|q| q.1).sum();
        let slack = self.rate * slack_s;
        if total > 0.0 {
            points.iter().map(|&(d, y)| ((self.at(d) - y).abs() - slack).max(0.0)).sum::<f64>() / total
        } else {
            0.0
        }
    }
}

/// One replay round as the fit sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FitPoint {
    /// Replay's round.
    pub round: u32,
    /// Its length (s).
    pub duration_s: f64,
    /// The distinct bytes dirtied during it: what the next round (or stop-and-copy) sends.
    pub dirtied_bytes: u64,
    /// What the fitted line gives for that length.
    pub fitted_bytes: f64,
}

/// How well SimGrid's model fits this migration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fit {
    /// No error below: SimGrid's model with these parameters reproduces replay's migration.
    pub valid: bool,
    /// Why the fit is invalid, each saying what to do.
    pub errors: Vec<String>,
    /// `Σ |fitted − dirtied| / Σ dirtied` over the rounds.
    pub curve_error: f64,
    /// The same, each round counting only what it misses by beyond one interval's dirtying at
    /// the fitted rate (the resolution of a round's page set); what the fit is judged by.
    pub curve_error_beyond_resolution: f64,
    /// The line fitted, bytes per second.
    pub fitted_rate_bytes_per_s: f64,
    /// True when the working set is the fitted cap; false when no round reached a cap and it
    /// is every page dirtied while the migration ran.
    pub working_set_from_rounds: bool,
    /// Every replay round, with the line's value.
    pub points: Vec<FitPoint>,
}

/// Replay's migration, the one fitted to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplayFigures {
    /// `replay`'s `total_time_s`.
    pub total_time_s: f64,
    /// `replay`'s `transferred_bytes`.
    pub transferred_bytes: u64,
    /// `replay`'s `rounds` (round 0 included).
    pub rounds: u32,
    /// `replay`'s `downtime_s`.
    pub downtime_s: f64,
    /// `replay`'s `converged`.
    pub converged: bool,
    /// `replay`'s `stop_reason`.
    pub stop_reason: replay::StopReason,
    /// `replay`'s `max_rounds`.
    pub max_rounds: u32,
}

/// SimGrid's model against replay, in percent of replay's figures; `None` unless both
/// converged (a migration stopped at a round limit has no total time to compare).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Difference {
    /// `100 × (model / replay − 1)` of the total time.
    pub total_time_pct: Option<f64>,
    /// The same of the bytes transferred.
    pub transferred_bytes_pct: Option<f64>,
    /// The model's rounds minus replay's.
    pub rounds: Option<i64>,
}

/// SimGrid's parameters for one migration (`schemas/analysis.md`, *simgrid --start*).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StartParams {
    /// SimGrid's `ramsize` for this migration: the bytes of round 0 (pages holding data at the
    /// start, plus 9 bytes per zero page). Not the guest's RAM, which is `guest_ram_bytes`.
    pub round0_bytes: u64,
    /// SimGrid's dirty page intensity: a fraction of the migration speed per core of load.
    pub dp_intensity: f64,
    /// SimGrid's working set memory, bytes.
    pub working_set_memory_bytes: u64,
    /// SimGrid's migration speed (and the replay's bandwidth), bytes per second.
    pub migration_speed_bytes_per_s: f64,
    /// The load to run the VM at in SimGrid: mean cores busy while the migration ran.
    pub cpu_util: f64,
    /// The guest's vCPUs.
    pub vcpus: u32,
    /// Trace time at which the migration starts (s).
    pub start_s: f64,
    /// SimGrid's maximum downtime, fixed (s).
    pub max_downtime_s: f64,
    /// `dp_intensity × migration_speed × cpu_util`: what SimGrid's VM dirties per second.
    pub dirty_rate_bytes_per_s: f64,
    /// Pages holding data at the start, which round 0 sends in full.
    pub round0_nonzero_pages: u64,
    /// The guest's RAM (the manifest's `ramsize_bytes`), for reference only.
    pub guest_ram_bytes: u64,
    /// Intervals whose end fell within the migration, over which `cpu_util` is the mean.
    pub migration_intervals: u64,
    /// How well the model fits.
    pub fit: Fit,
    /// The replay fitted to.
    pub replay: ReplayFigures,
    /// SimGrid's rounds with these parameters ([`super::model`]).
    pub model: ModelMigration,
    /// `model` against `replay`.
    pub difference: Difference,
    /// The trace's id.
    pub trace_id: String,
    /// Anything a modeller should know about these numbers.
    pub notes: Vec<String>,
}

/// Fits SimGrid's parameters to the migration starting at `opts.start_s`: replays it, then
/// [`fit_to_replay`].
pub fn fit_start(trace: &Trace, opts: &StartOptions) -> Result<StartParams> {
    let speed = opts.migration_speed.unwrap_or(trace.manifest.migration_speed_bytes_per_s);
    crate::units::check_speed(speed).map_err(|e| bad("--migration-speed", e.to_string()))?;
    let r = replay::replay(trace, &opts.replay_options(speed))?;
    fit_to_replay(trace, opts, &r)
}

/// What the VM did while the migration ran: the intervals whose end falls within
/// `(start, start + length]`, counted once per pass of the trace with `looped`.
struct Stretch {
    cpu_s: f64,
    duration_s: f64,
    intervals: u64,
    distinct_pages: u64,
}

fn stretch(trace: &Trace, start: f64, length: f64, looped: bool) -> Result<Stretch> {
    let space = PageSpace::new(&trace.manifest.slots);
    let mut end_s = f64::INFINITY;
    if looped {
        for row in trace.rates_stream()? {
            end_s = row?.t_end_s;
        }
    }
    let mut st = Stretch { cpu_s: 0.0, duration_s: 0.0, intervals: 0, distinct_pages: 0 };
    let mut pages_seen = PageBits::new(space.total_pages);
    for_each_interval(trace, |row, pages| {
        let t = row.t_end_s;
        // Passes p ≥ 0 with t + p × end in (start, start + length].
        let first = if t > start { 0.0 } else { 1.0 };
        let last = if looped {
            ((start + length - t) / end_s).floor()
        } else if t <= start + length {
            0.0
        } else {
            return Ok(ControlFlow::Break(()));
        };
        let n = (last - first + 1.0).max(0.0);
        if n > 0.0 {
            st.cpu_s += n * row.cpu_util * row.duration_s;
            st.duration_s += n * row.duration_s;
            st.intervals += n as u64;
            pages_seen.extend(pages);
        }
        Ok(ControlFlow::Continue(()))
    })?;
    st.distinct_pages = pages_seen.count();
    Ok(st)
}

fn pct(model: f64, replay: f64) -> f64 {
    if replay > 0.0 {
        100.0 * (model / replay - 1.0)
    } else {
        0.0
    }
}

fn mib(bytes: f64) -> f64 {
    bytes / MIB as f64
}

/// Fits SimGrid's parameters to `r`, a replay of `trace` with `opts.replay_options` (which
/// the dataset's index has computed already).
pub fn fit_to_replay(trace: &Trace, opts: &StartOptions, r: &ReplayResult) -> Result<StartParams> {
    let m = &trace.manifest;
    let speed = r.bandwidth_bytes_per_s;
    if r.zero_pages != ZeroPages::Skip || r.max_downtime_s != MAX_DOWNTIME_S || r.start_s != opts.start_s {
        return Err(bad(
            "--start",
            "the replay to fit must be the one StartOptions::replay_options describes (--zero-pages skip, --max-downtime 30ms, the same --start)",
        ));
    }
    let Some(round0) = r.per_round.first() else {
        return Err(bad("--start", "the replay to fit has no round 0"));
    };
    let dirtied: Vec<u64> = r.per_round[1..].iter().map(|x| x.bytes).chain([r.stop_and_copy.bytes]).collect();
    let points: Vec<(f64, f64)> = r.per_round.iter().zip(&dirtied).map(|(x, &b)| (x.duration_s, b as f64)).collect();
    let line = CappedLine::fit(&points, CAP_RESOLUTION_INTERVALS * m.interval_s);
    let curve_error = line.error(&points);
    let beyond = line.error_beyond(&points, m.interval_s);
    let st = stretch(trace, opts.start_s, r.total_time_s.max(m.interval_s), opts.looped)?;
    let threshold = speed * MAX_DOWNTIME_S;
    let longest = points.iter().map(|p| p.0).fold(0.0, f64::max);
    let most_dirtied = dirtied.iter().copied().max().unwrap_or(0) as f64;

    let mut notes = r.notes.clone();
    let mut errors = Vec::new();
    let mut rate = line.rate;
    let mut cap = match line.cap {
        Some(c) => c,
        None => {
            notes.push(
                "no round reached a cap: working_set_memory_bytes is every page dirtied while the migration ran, \
                 which binds no round of it"
                    .into(),
            );
            ((st.distinct_pages * m.page_size) as f64).max(rate * longest).max(most_dirtied)
        }
    };
    if beyond > CURVE_TOLERANCE {
        let worst = points
            .iter()
            .zip(&r.per_round)
            .max_by(|a, b| (line.at(a.0 .0) - a.0 .1).abs().total_cmp(&(line.at(b.0 .0) - b.0 .1).abs()))
            .map(|((d, y), x)| {
                format!(
                    "round {} dirtied {:.2} MiB in {:.3} s where the line gives {:.2} MiB",
                    x.round,
                    mib(*y),
                    d,
                    mib(line.at(*d))
                )
            })
            .unwrap_or_default();
        errors.push(format!(
            "the bytes dirtied in replay's rounds follow no straight line up to a cap: the best one misses them by \
             {:.1} % beyond a round's resolution of one interval (more than {:.0} %; {worst}). SimGrid's model cannot \
             express this workload at this migration speed; use replay's figures, or a --start where the workload \
             is steadier",
            100.0 * beyond,
            100.0 * CURVE_TOLERANCE
        ));
    }
    if !r.converged {
        // SimGrid converges unless no round is shorter than the one before: a dirty rate of at
        // least the migration speed, from a first round above the threshold, up to a cap above it.
        let floor = NON_CONVERGING_MARGIN * speed * (threshold / round0.bytes as f64).max(1.0);
        rate = rate.max(floor);
        cap = cap.max(most_dirtied);
        errors.push(format!(
            "replay stopped at its round limit ({} rounds) without converging: SimGrid's stage 2 has no round limit, \
             so no parameters reproduce that stop. The parameters are set so that SimGrid does not converge either \
             (a dirty rate of {:.2} MiB/s, at least the migration speed); a lower dirty rate, a higher migration \
             speed or post-copy would be needed to migrate this VM",
            r.rounds,
            mib(rate)
        ));
    }
    let mut load = if st.duration_s > 0.0 { st.cpu_s / st.duration_s } else { 0.0 };
    if load <= 0.0 && rate > 0.0 {
        errors.push(
            "the vCPUs used no CPU time while the migration ran, yet pages were dirtied: SimGrid dirties memory only \
             in proportion to CPU work, so cpu_util is set to 1 core to make it dirty at the fitted rate; it is not \
             the VM's load"
                .into(),
        );
        load = 1.0;
    }
    let dp_intensity = if rate > 0.0 { rate / (speed * load) } else { 0.0 };
    let vm = VmModel {
        ramsize_bytes: round0.bytes,
        dp_intensity,
        working_set_memory_bytes: cap.ceil() as u64,
        migration_speed_bytes_per_s: speed,
        load,
    };
    let model = vm.migrate(MAX_STAGE2_ROUNDS)?;
    match (r.converged, model.converged) {
        (true, true) => {
            let diff = model.total_time_s / r.total_time_s - 1.0;
            if diff.abs() > REPRODUCTION_TOLERANCE {
                errors.push(format!(
                    "SimGrid's model with these parameters takes {:.3} s and sends {:.2} MiB in {} rounds, replay {:.3} s \
                     and {:.2} MiB in {} rounds ({:+.1} %, more than {:.0} %): use replay's figures for this migration",
                    model.total_time_s,
                    mib(model.transferred_bytes as f64),
                    model.rounds,
                    r.total_time_s,
                    mib(r.transferred_bytes as f64),
                    r.rounds,
                    100.0 * diff,
                    100.0 * REPRODUCTION_TOLERANCE
                ));
            }
        }
        (true, false) => errors.push(format!(
            "SimGrid's model with these parameters does not converge within {MAX_STAGE2_ROUNDS} stage-2 rounds, \
             where replay converges after {} rounds: use replay's figures for this migration",
            r.rounds
        )),
        (false, true) => errors.push(format!(
            "SimGrid's model with these parameters converges after {} rounds where replay does not: \
             do not use them",
            model.rounds
        )),
        (false, false) => {}
    }
    let both = r.converged && model.converged;
    let fit = Fit {
        valid: errors.is_empty(),
        errors,
        curve_error,
        curve_error_beyond_resolution: beyond,
        fitted_rate_bytes_per_s: line.rate,
        working_set_from_rounds: line.cap.is_some(),
        points: points
            .iter()
            .zip(&r.per_round)
            .zip(&dirtied)
            .map(|(((d, _), x), &b)| FitPoint {
                round: x.round,
                duration_s: *d,
                dirtied_bytes: b,
                fitted_bytes: line.at(*d),
            })
            .collect(),
    };
    Ok(StartParams {
        round0_bytes: round0.bytes,
        dp_intensity,
        working_set_memory_bytes: vm.working_set_memory_bytes,
        migration_speed_bytes_per_s: speed,
        cpu_util: load,
        vcpus: m.vcpus,
        start_s: opts.start_s,
        max_downtime_s: MAX_DOWNTIME_S,
        dirty_rate_bytes_per_s: dp_intensity * speed * load,
        round0_nonzero_pages: round0.pages,
        guest_ram_bytes: m.ramsize_bytes,
        migration_intervals: st.intervals,
        fit,
        replay: ReplayFigures {
            total_time_s: r.total_time_s,
            transferred_bytes: r.transferred_bytes,
            rounds: r.rounds,
            downtime_s: r.downtime_s,
            converged: r.converged,
            stop_reason: r.stop_reason,
            max_rounds: r.max_rounds,
        },
        difference: Difference {
            total_time_pct: both.then(|| pct(model.total_time_s, r.total_time_s)),
            transferred_bytes_pct: both.then(|| pct(model.transferred_bytes as f64, r.transferred_bytes as f64)),
            rounds: both.then_some(model.rounds as i64 - r.rounds as i64),
        },
        model,
        trace_id: m.trace_id.clone(),
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: f64 = 1048576.0;

    #[test]
    fn a_line_through_the_origin_gets_no_cap() {
        // Sequential writes: every round dirties 32 MiB/s × its length, give or take a page.
        let pts: Vec<(f64, f64)> =
            [3.5, 1.75, 0.875, 0.44, 0.22].iter().map(|&d| (d, 32.0 * MB * d + 4096.0)).collect();
        let l = CappedLine::fit(&pts, 0.1);
        assert_eq!(l.cap, None);
        assert!((l.rate / (32.0 * MB) - 1.0).abs() < 1e-3, "{}", l.rate / MB);
        assert!(l.error(&pts) < 1e-3);
    }

    #[test]
    fn rounds_that_fall_short_of_the_line_are_capped() {
        // 30 MiB/s up to 20 MiB: the longest round is capped.
        let pts = [(1.0, 20.0 * MB), (0.5, 15.0 * MB), (0.25, 7.5 * MB), (0.1, 3.0 * MB)];
        let l = CappedLine::fit(&pts, 0.04);
        assert_eq!(l.cap, Some(20.0 * MB));
        assert!((l.rate / MB - 30.0).abs() < 1e-9);
        assert_eq!(l.error(&pts), 0.0);
        // The same shortfall within the resolution (0.4 s of dirtying = 12 MiB > the 10 MiB
        // shortfall) is noise, not a cap.
        let l = CappedLine::fit(&pts, 0.4);
        assert_eq!(l.cap, None);
    }

    #[test]
    fn rounds_at_the_cap_throughout_give_a_rate_that_reaches_it() {
        // A small working set rewritten faster than it is sent: every round finds all of it.
        let pts = [(0.28, 16.0 * MB), (0.25, 16.0 * MB), (0.25, 16.0 * MB), (0.25, 16.0 * MB)];
        let l = CappedLine::fit(&pts, 0.04);
        assert_eq!(l.cap, Some(16.0 * MB));
        assert!(l.at(0.25) >= 16.0 * MB - 1.0);
        assert_eq!(l.error(&pts), 0.0);
    }

    #[test]
    fn a_convex_curve_is_no_capped_line() {
        // Bursts: short rounds find nothing, long ones a lot.
        let pts = [(0.1, 0.0), (0.2, 0.0), (0.5, 1.0 * MB), (1.0, 10.0 * MB), (2.0, 40.0 * MB)];
        let l = CappedLine::fit(&pts, 0.04);
        assert!(l.error(&pts) > CURVE_TOLERANCE, "{l:?}: {}", l.error(&pts));
    }

    #[test]
    fn misses_within_a_rounds_resolution_do_not_count() {
        // 32 MiB/s, but a 40 ms round held no interval end of a 100 ms trace.
        let pts = [(1.0, 32.0 * MB), (0.5, 16.0 * MB), (0.04, 0.0)];
        let l = CappedLine::fit(&pts, 0.2);
        assert!(l.error(&pts) > 0.02, "{}", l.error(&pts));
        assert_eq!(l.error_beyond(&pts, 0.1), 0.0);
    }

    #[test]
    fn no_dirtying_fits_exactly() {
        let pts = [(2.0, 0.0), (0.01, 0.0)];
        let l = CappedLine::fit(&pts, 0.04);
        assert_eq!((l.rate, l.error(&pts)), (0.0, 0.0));
    }
}
