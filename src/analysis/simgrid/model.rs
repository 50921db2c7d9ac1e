//! SimGrid's precopy arithmetic, in Rust: what SimGrid 3.32 computes for a VM with given
//! live-migration parameters, so that a fit can be checked without SimGrid.
//!
//! It mirrors `MigrationTx::operator()` (`src/plugins/vm/VmLiveMigration.cpp`) as
//! `examples/simgrid/migrate.cpp` runs it: hosts of [`HOST_SPEED`], one link of the migration
//! speed with no latency (CM02, no cross-traffic, so a transfer of `b` bytes takes exactly
//! `b / speed` s), and a VM bounded to `load × HOST_SPEED` flop/s that is always busy:
//!
//! 1. Stage 1 sends `ramsize` bytes. Bandwidth = ramsize / its duration; threshold =
//!    ⌊bandwidth × [`MAX_DOWNTIME_S`]⌋ bytes.
//! 2. The bytes dirtied in a round are ⌊flops × dp_rate⌋, at most the working set, where flops =
//!    `load × HOST_SPEED × duration` and dp_rate = `speed × dp_intensity / HOST_SPEED`.
//! 3. Stage 2 sends them while threshold < remaining, measuring the bandwidth (and so the
//!    threshold) again after each round. SimGrid has no round limit: `migrate.cpp` stops after
//!    [`MAX_STAGE2_ROUNDS`] and reports that the migration did not converge, as this does.
//! 4. Stage 3 suspends the VM and sends the rest: the downtime.

use serde::Serialize;

/// SimGrid's maximum downtime (s): fixed at 30 ms, with no setter since 3.19.
pub const MAX_DOWNTIME_S: f64 = 0.03;
/// The speed of `migrate.cpp`'s hosts, flop/s. It cancels out of the model except in its
/// rounding, which is why the model uses the same value.
pub const HOST_SPEED: f64 = 1e9;
/// Stage-2 rounds simulated before a migration is reported as not converging (`migrate.cpp`'s
/// `--max-rounds` default). SimGrid would go on until its 10⁷ s timeout.
pub const MAX_STAGE2_ROUNDS: u32 = 1000;

/// Parameters SimGrid's model cannot run with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// A parameter outside its range; `key` is its JSON key.
    #[error("{key} = {value}: {need}")]
    Parameter {
        /// The JSON key (`round0_bytes`, `migration_speed_bytes_per_s`, …).
        key: &'static str,
        /// Its value.
        value: f64,
        /// What it must be.
        need: &'static str,
    },
}

/// A VM as SimGrid's live-migration plugin sees it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct VmModel {
    /// SimGrid's `ramsize`: the bytes stage 1 sends.
    pub ramsize_bytes: u64,
    /// SimGrid's dirty page intensity: a fraction of the migration speed per core of load.
    pub dp_intensity: f64,
    /// SimGrid's working set memory: the most a round can find dirtied, bytes.
    pub working_set_memory_bytes: u64,
    /// SimGrid's migration speed, which is also the link's bandwidth here, bytes/s.
    pub migration_speed_bytes_per_s: f64,
    /// The cores the VM keeps busy.
    pub load: f64,
}

/// One transfer of the migration.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ModelRound {
    /// 1, 2 or 3: SimGrid's stage.
    pub stage: u8,
    /// Seconds since the migration started.
    pub start_s: f64,
    /// `bytes / migration speed`.
    pub duration_s: f64,
    /// Bytes sent.
    pub bytes: u64,
}

/// What SimGrid's model computes for a VM.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelMigration {
    /// From the start of stage 1 to the end of stage 3; without convergence, to the start of
    /// the stage-2 round past the limit, where the simulation stops.
    pub total_time_s: f64,
    /// Stage 3's duration (0 without convergence: it never runs).
    pub downtime_s: f64,
    /// Stage 1 plus the stage-2 rounds run (stage 3 not counted, as `replay` counts rounds).
    pub rounds: u32,
    /// All bytes sent.
    pub transferred_bytes: u64,
    /// Stage 3 ran: the remaining bytes fell to the threshold.
    pub converged: bool,
    /// `converged`, or `round_limit` after [`MAX_STAGE2_ROUNDS`] stage-2 rounds.
    pub stop_reason: String,
    /// The last threshold SimGrid measured, bytes.
    pub threshold_bytes: u64,
    /// Every transfer, stage 3 included.
    pub per_round: Vec<ModelRound>,
}

impl VmModel {
    fn check(&self) -> Result<(), ModelError> {
        let bad = |key, value, need| Err(ModelError::Parameter { key, value, need });
        if self.ramsize_bytes == 0 {
            return bad("round0_bytes", 0.0, "must be more than 0 bytes: stage 1 measures the bandwidth with it");
        }
        if !(self.migration_speed_bytes_per_s.is_finite() && self.migration_speed_bytes_per_s > 0.0) {
            return bad("migration_speed_bytes_per_s", self.migration_speed_bytes_per_s, "must be more than 0 bytes/s");
        }
        if !(self.dp_intensity.is_finite() && self.dp_intensity >= 0.0) {
            return bad("dp_intensity", self.dp_intensity, "must be 0 or more");
        }
        if !(self.load.is_finite() && self.load >= 0.0) {
            return bad("cpu_util", self.load, "must be 0 cores or more");
        }
        Ok(())
    }

    /// The bytes dirtied during a round of `duration_s`: SimGrid's `get_updated_size`.
    fn dirtied(&self, duration_s: f64) -> u64 {
        let flops = self.load * HOST_SPEED * duration_s;
        let dp_rate = self.migration_speed_bytes_per_s * self.dp_intensity / HOST_SPEED;
        // SimGrid casts to sg_size_t, which truncates.
        ((flops * dp_rate) as u64).min(self.working_set_memory_bytes)
    }

    /// Runs SimGrid's three stages, stopping after `max_stage2_rounds` stage-2 rounds.
    pub fn migrate(&self, max_stage2_rounds: u32) -> Result<ModelMigration, ModelError> {
        self.check()?;
        let speed = self.migration_speed_bytes_per_s;
        let mut per_round = Vec::new();
        let mut t = 0.0;
        let mut send = |stage: u8, bytes: u64, t: &mut f64| {
            let duration_s = bytes as f64 / speed;
            per_round.push(ModelRound { stage, start_s: *t, duration_s, bytes });
            *t += duration_s;
            duration_s
        };
        // Stage 1.
        let d = send(1, self.ramsize_bytes, &mut t);
        let mut threshold = (self.ramsize_bytes as f64 / d * MAX_DOWNTIME_S) as u64;
        let mut remaining = self.dirtied(d);
        let mut stage2 = 0u32;
        let mut converged = true;
        while threshold < remaining {
            if stage2 == max_stage2_rounds {
                converged = false;
                break;
            }
            let d = send(2, remaining, &mut t);
            threshold = (remaining as f64 / d * MAX_DOWNTIME_S) as u64;
            remaining = self.dirtied(d);
            stage2 += 1;
        }
        let downtime_s = if converged { send(3, remaining, &mut t) } else { 0.0 };
        Ok(ModelMigration {
            total_time_s: t,
            downtime_s,
            rounds: 1 + stage2,
            transferred_bytes: per_round.iter().map(|r| r.bytes).sum(),
            converged,
            stop_reason: if converged { "converged" } else { "round_limit" }.into(),
            threshold_bytes: threshold,
            per_round,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: f64 = 1048576.0;

    fn vm(intensity: f64, ws: u64) -> VmModel {
        VmModel {
            ramsize_bytes: 1 << 30,
            dp_intensity: intensity,
            working_set_memory_bytes: ws,
            migration_speed_bytes_per_s: 100.0 * MIB,
            load: 1.0,
        }
    }

    #[test]
    fn the_hand_computed_cases_of_the_simgrid_notes() {
        // 1 GiB at 100 MiB/s, nothing dirtied: stage 1 only, then an empty stage 3.
        let m = vm(0.0, 0).migrate(MAX_STAGE2_ROUNDS).unwrap();
        assert_eq!((m.total_time_s, m.rounds, m.transferred_bytes, m.converged), (10.24, 1, 1 << 30, true));
        // Intensity 0.3, 500 MiB working set: rounds of 30 % of the one before; what SimGrid
        // itself sent in these rounds (examples/simgrid/migrate.cpp, SimGrid 3.32).
        let m = vm(0.3, 500 << 20).migrate(MAX_STAGE2_ROUNDS).unwrap();
        let bytes: Vec<u64> = m.per_round.iter().map(|r| r.bytes).collect();
        assert_eq!(bytes, [1 << 30, 322122547, 96636764, 28991029, 8697308, 2609192]);
        assert_eq!(m.per_round.iter().map(|r| r.stage).collect::<Vec<_>>(), [1, 2, 2, 2, 2, 3]);
        assert!((m.total_time_s - 14.617907).abs() < 1e-6, "{}", m.total_time_s);
        assert_eq!((m.rounds, m.converged, m.threshold_bytes), (5, true, 3145728));
    }

    #[test]
    fn the_working_set_caps_every_round() {
        // Dirtying at the migration speed would never shrink; a 50 MiB cap makes each round
        // 0.5 s, and 50 MiB > the 3 MiB threshold: it never converges.
        let m = vm(1.0, 50 << 20).migrate(20).unwrap();
        assert!(!m.converged);
        assert_eq!((m.rounds, m.stop_reason.as_str(), m.downtime_s), (21, "round_limit", 0.0));
        assert!(m.per_round[1..].iter().all(|r| r.bytes == 50 << 20 && r.stage == 2));
        assert!((m.total_time_s - (10.24 + 20.0 * 0.5)).abs() < 1e-9);
        // A cap below the threshold converges at once.
        let m = vm(1.0, 1 << 20).migrate(20).unwrap();
        assert!(m.converged);
        assert_eq!((m.rounds, m.transferred_bytes), (1, (1 << 30) + (1 << 20)));
    }

    #[test]
    fn load_scales_the_dirtying() {
        let mut half = vm(0.6, 500 << 20);
        half.load = 0.5;
        let a = half.migrate(MAX_STAGE2_ROUNDS).unwrap();
        let b = vm(0.3, 500 << 20).migrate(MAX_STAGE2_ROUNDS).unwrap();
        assert_eq!(a.transferred_bytes, b.transferred_bytes);
    }

    #[test]
    fn parameters_out_of_range_are_named() {
        let mut v = vm(0.3, 0);
        v.ramsize_bytes = 0;
        assert!(v.migrate(1).unwrap_err().to_string().starts_with("round0_bytes"));
        let mut v = vm(0.3, 0);
        v.migration_speed_bytes_per_s = f64::NAN;
        assert!(v.migrate(1).unwrap_err().to_string().starts_with("migration_speed_bytes_per_s"));
        assert!(vm(-1.0, 0).migrate(1).unwrap_err().to_string().starts_with("dp_intensity"));
    }
}
