//! `manifest.json`: what was recorded, how, and how the recording went.

use super::FORMAT_VERSION;
use crate::vmm::Slot;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceStatus {
    /// The recorder is running, or was killed: `dirtytrace recover` finalises it.
    Recording,
    Complete,
    Interrupted,
    GuestFault,
    /// Finalised by `dirtytrace recover` after the recorder died.
    Recovered,
}

/// `count` pages from guest page number `first`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRange {
    pub first: u64,
    pub count: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HarvestTiming {
    pub intervals: u64,
    /// Lateness of a harvest: how long after its deadline it started, in seconds.
    pub lateness_p50_s: f64,
    pub lateness_p99_s: f64,
    pub lateness_max_s: f64,
    /// Time inside KVM_GET_DIRTY_LOG per harvest, in seconds.
    pub ioctl_p50_s: f64,
    pub ioctl_p99_s: f64,
    pub ioctl_max_s: f64,
    /// Harvests that started later than `on_time_tolerance_s` after their deadline.
    pub missed_deadlines: u64,
    pub on_time_tolerance_s: f64,
    /// Deadlines passed over entirely because the sampler was more than an interval behind.
    pub skipped_deadlines: u64,
    /// Mean of `t_end_s - t_start_s` over full intervals.
    pub mean_interval_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub trace_id: String,
    pub status: TraceStatus,
    pub end_reason: Option<String>,
    /// A guest fault or other error that ended the recording.
    pub error: Option<String>,
    pub tool: String,
    pub tool_version: String,
    pub host_kernel: String,
    pub host_name: String,
    /// Wall-clock start, seconds since the Unix epoch.
    pub start_unix_s: f64,
    pub interval_s: f64,
    pub duration_limit_s: Option<f64>,
    pub page_size: u64,
    pub ramsize_bytes: u64,
    pub vcpus: u32,
    pub migration_speed_bytes_per_s: f64,
    /// The window of `working_set_memory_bytes`: one full-RAM precopy round at the migration speed.
    pub working_set_window_s: f64,
    pub slots: Vec<Slot>,
    /// Whether the vCPUs were held outside the guest around each harvest (`--exact-cut`).
    #[serde(default)]
    pub exact_cut: bool,
    /// The guest kind (`synthetic` or `linux`) and its configuration, including the workload.
    pub guest: serde_json::Value,
    /// Pages the guest itself may dirty besides its workload (synthetic guest: the control page).
    pub guest_own_pages: Vec<u64>,
    /// Pages holding non-zero data when recording began (what the VMM loaded).
    pub initial_nonzero_pages: Vec<PageRange>,
    pub timing: HarvestTiming,
    /// Interval rows and bytes of bitmaps, filled in when the trace is finalised.
    pub intervals: u64,
}

impl Manifest {
    pub fn total_pages(&self) -> u64 {
        self.slots.iter().map(|s| s.num_pages()).sum()
    }

    pub fn load(dir: &Path) -> Result<Manifest, String> {
        let path = dir.join(super::MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let m: Manifest =
            serde_json::from_str(&text).map_err(|e| format!("{} is not a valid manifest: {e}", path.display()))?;
        if m.format_version != FORMAT_VERSION {
            return Err(format!(
                "{} has format_version {}, this dirtytrace reads {FORMAT_VERSION}",
                path.display(),
                m.format_version
            ));
        }
        Ok(m)
    }

    /// Writes the manifest atomically (temporary file, then rename).
    pub fn store(&self, dir: &Path) -> std::io::Result<()> {
        let tmp = dir.join(".manifest.json.tmp");
        let mut text = serde_json::to_string_pretty(self).expect("manifest serialises");
        text.push('\n');
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, dir.join(super::MANIFEST))
    }
}
