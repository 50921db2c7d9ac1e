//! `[replay]`: the migrations `index` replays every trace with.

use super::read::Ctx;
use super::GridError;
use crate::analysis::replay::{Precopy, ReplayOptions};
use crate::analysis::AnalysisError;
use crate::options::keys_of;
use crate::units::HumanDuration;
use serde::{Deserialize, Serialize};

/// `[replay]`: the migrations the index replays every trace with, one per bandwidth.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplaySettings {
    /// Bandwidths, bytes per second; empty: no replay.
    pub bandwidths: Vec<f64>,
    /// How each migration runs, as `replay`'s flags say.
    #[serde(flatten)]
    pub precopy: Precopy,
    /// `--start` (s), of the replays and the SimGrid fits. Left out of `dataset.json` at its
    /// default of 0, so that a dataset written before it existed keeps its file and its rows.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_s: f64,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

impl ReplaySettings {
    /// The options `dirtytrace replay` would be given for one bandwidth.
    pub fn options(&self, bandwidth: f64) -> ReplayOptions {
        ReplayOptions { precopy: self.precopy, start_s: self.start_s, ..ReplayOptions::new(bandwidth) }
    }
}

pub(super) fn parse_replay(cx: &Ctx, mut table: toml::Table) -> Result<ReplaySettings, GridError> {
    let mut bandwidths = Vec::new();
    if let Some(b) = table.remove("bandwidths") {
        let toml::Value::Array(b) = b else {
            return Err(cx.key("replay.bandwidths", "must be a list of rates, such as [\"1Gbit/s\"]"));
        };
        if b.is_empty() {
            return Err(cx.key("replay.bandwidths", "is empty: give at least one bandwidth, or remove [replay]"));
        }
        for v in &b {
            bandwidths.push(cx.speed("replay.bandwidths", v)?);
        }
        let mut sorted = bandwidths.clone();
        sorted.sort_by(f64::total_cmp);
        if sorted.windows(2).any(|w| w[0] == w[1]) {
            return Err(cx.key("replay.bandwidths", "lists a bandwidth twice"));
        }
    }
    let start_s = match table.remove("start") {
        Some(v) => cx.value::<HumanDuration>("replay.start", &v)?.0.as_secs_f64(),
        None => 0.0,
    };
    let precopy: Precopy = cx.take("replay", &mut table)?;
    cx.refuse_rest("replay", &table, &[&["bandwidths"], keys_of::<Precopy>()].concat())?;
    precopy.check().map_err(|e| match e {
        AnalysisError::BadArgument { flag, msg } => {
            cx.key(format!("replay.{}", flag.trim_start_matches("--").replace('-', "_")), msg)
        }
        e => cx.key("replay", e.to_string()),
    })?;
    Ok(ReplaySettings { bandwidths, precopy, start_s })
}
