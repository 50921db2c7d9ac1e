//! `manifest.json`: what was recorded, how, and how the recording went.

use super::records::{MemorySlot, PageRange, SamplerScheduling};
use super::FORMAT_VERSION;
use crate::units::PAGE_SIZE;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;
use std::time::Duration;

/// Where a trace stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceStatus {
    /// The recorder is running, or was killed: `dirtytrace recover` finalises it.
    Recording,
    /// The workload ended, or `--duration` passed.
    Complete,
    /// Ctrl-C, SIGTERM or SIGHUP ended the recording.
    Interrupted,
    /// The guest faulted; `error` says how.
    GuestFault,
    /// Finalised by `dirtytrace recover` after the recorder died.
    Recovered,
}

impl fmt::Display for TraceStatus {
    /// The status as `manifest.json` writes it (`guest_fault`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        super::write_serde_name(f, self)
    }
}

/// Why a recording ended (`manifest.json` `end_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// Every vCPU said it was done.
    WorkloadDone,
    /// `--duration` passed.
    Duration,
    /// Ctrl-C, SIGTERM or SIGHUP.
    Interrupted,
    /// The guest powered off or reset.
    GuestPowerOff,
    /// A vCPU faulted.
    GuestFault,
    /// The trace writer stopped taking harvests.
    WriterFailed,
    /// The recorder died before it could say; the trace was finalised from its journal.
    RecoveredFromJournal,
}

impl fmt::Display for EndReason {
    /// The reason as `manifest.json` writes it (`guest_power_off`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        super::write_serde_name(f, self)
    }
}

/// A harvest is on time when it begins within this fraction of the interval after its
/// deadline ([`HarvestTiming::on_time_tolerance_s`]).
pub const ON_TIME_FRACTION: f64 = 0.1;

/// The sampler's own count of its harvests and deadlines, exact where the rows can only
/// suggest them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadlineCounts {
    /// Harvests the sampler took, the final partial one included.
    pub harvests: u64,
    /// Deadlines it passed over because it was more than an interval behind.
    pub skipped_deadlines: u64,
}

/// Harvest timing, derived from the rows so that a recovered trace gets the same figures, but
/// for `skipped_deadlines`, which is the sampler's own count where there is one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HarvestTiming {
    /// Harvests (rows).
    pub intervals: u64,
    /// Lateness of a harvest: how long after its deadline it began, in seconds (nearest-rank
    /// percentiles over full intervals).
    pub lateness_p50_s: f64,
    /// The 99th percentile of the lateness.
    pub lateness_p99_s: f64,
    /// The largest lateness.
    pub lateness_max_s: f64,
    /// Time inside `KVM_GET_DIRTY_LOG` per harvest, in seconds.
    pub ioctl_p50_s: f64,
    /// The 99th percentile of the ioctl time.
    pub ioctl_p99_s: f64,
    /// The longest ioctl.
    pub ioctl_max_s: f64,
    /// Harvests that began later than `on_time_tolerance_s` after their deadline.
    pub missed_deadlines: u64,
    /// [`ON_TIME_FRACTION`] of the interval.
    pub on_time_tolerance_s: f64,
    /// Deadlines passed over entirely because the sampler was more than an interval behind:
    /// `sampler_counts`' when there are some, else counted from the rows' deadlines.
    pub skipped_deadlines: u64,
    /// Mean of `t_end_s - t_start_s` over full intervals.
    pub mean_interval_s: f64,
    /// The sampler's own counts, set by the recorder before the trace is finalised; absent when
    /// the recorder died before it could say (a recovered trace) and in traces of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampler_counts: Option<DeadlineCounts>,
}

impl HarvestTiming {
    /// How late a harvest may begin after its deadline and be on time, at `interval_s`.
    pub fn on_time_tolerance_s(interval_s: f64) -> f64 {
        interval_s * ON_TIME_FRACTION
    }
}

/// How a trace was made: the engine that ran the guest and how it tracked writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineInfo {
    /// `kvm` (dirtytrace's own VMM) or `qemu`.
    pub name: String,
    /// Why this engine ran: `--engine NAME` given, or what `auto` found.
    pub reason: String,
    /// What executed guest code: `kvm` or `tcg` (QEMU's emulator).
    pub accelerator: String,
    /// How writes were tracked: `kvm_dirty_log`, or `userfaultfd_wp_async` (harvested with
    /// `PAGEMAP_SCAN`).
    pub tracking: String,
    /// QEMU's version, under the QEMU engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu_version: Option<String>,
    /// Which faults QEMU's userfaultfd saw (`user`: `UFFD_USER_MODE_ONLY`; `all`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uffd_mode: Option<String>,
}

/// How time was kept under `record --clock guest` (`manifest.json` `guest_clock`): intervals
/// and times are in seconds of the guest's own clock, QEMU's virtual clock under its
/// instruction counter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestClockInfo {
    /// Instructions per second of guest time while the guest runs (`-icount shift=N`:
    /// 10^9 / 2^N); idle time passes without instructions.
    pub instructions_per_s: f64,
    /// QEMU's `-icount shift`.
    pub icount_shift: u32,
    /// The directory in the trace that keeps the execution (`--keep-execution`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution: Option<String>,
    /// The trace whose execution this trace replayed (`dirtytrace retrace`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retraced_from: Option<String>,
}

/// `manifest.json`, field by field (`schemas/trace.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// 32 hex digits, random per recording.
    pub trace_id: String,
    /// Where the trace stands.
    pub status: TraceStatus,
    /// Why the recording ended.
    pub end_reason: Option<EndReason>,
    /// A guest fault or other error that ended the recording.
    pub error: Option<String>,
    /// `dirtytrace`.
    pub tool: String,
    /// The version of the tool that wrote the trace.
    pub tool_version: String,
    /// The host's kernel, from `uname`.
    pub host_kernel: String,
    /// The host's name, from `uname`.
    pub host_name: String,
    /// Wall-clock start, seconds since the Unix epoch.
    pub start_unix_s: f64,
    /// The requested harvest interval, in seconds.
    pub interval_s: f64,
    /// `--duration`, if given, in seconds.
    pub duration_limit_s: Option<f64>,
    /// Bytes per page: 4096.
    pub page_size: u64,
    /// Guest RAM, all slots, in bytes.
    pub ramsize_bytes: u64,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// The migration speed of the SimGrid columns, bytes per second.
    pub migration_speed_bytes_per_s: f64,
    /// The window of `working_set_memory_bytes`: one full-RAM precopy round at the migration speed.
    pub working_set_window_s: f64,
    /// The memory slots; each bitmap row covers one.
    pub slots: Vec<MemorySlot>,
    /// Whether the vCPUs were held outside the guest around each harvest (`--exact-cut`).
    #[serde(default)]
    pub exact_cut: bool,
    /// How the sampler thread was scheduled; absent in traces of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampler: Option<SamplerScheduling>,
    /// Which engine ran the guest and how it tracked writes; absent in traces of older versions
    /// (which were all recorded by dirtytrace's own VMM under KVM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineInfo>,
    /// The guest clock, under `record --clock guest`; absent when intervals are host time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_clock: Option<GuestClockInfo>,
    /// The guest kind (`synthetic` or `linux`) and its configuration, including the workload.
    pub guest: serde_json::Value,
    /// Pages the guest itself may dirty besides its workload (synthetic guest: the control page).
    pub guest_own_pages: Vec<u64>,
    /// Pages holding non-zero data when recording began (what the VMM loaded).
    pub initial_nonzero_pages: Vec<PageRange>,
    /// Harvest timing, filled in when the trace is finalised.
    pub timing: HarvestTiming,
    /// Rows of `rates.parquet`, filled in when the trace is finalised.
    pub intervals: u64,
}

impl Manifest {
    /// The manifest of a recording about to start (status `recording`). The caller adds what
    /// it knows of the host and the guest; the writer fills in `timing` and `intervals`.
    pub fn new(
        trace_id: String,
        interval: Duration,
        slots: Vec<MemorySlot>,
        vcpus: u32,
        migration_speed_bytes_per_s: f64,
    ) -> Manifest {
        let ramsize_bytes = slots.iter().map(|s| s.size_bytes).sum();
        Manifest {
            format_version: FORMAT_VERSION,
            trace_id,
            status: TraceStatus::Recording,
            end_reason: None,
            error: None,
            tool: "dirtytrace".into(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            host_kernel: "unknown".into(),
            host_name: "unknown".into(),
            start_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            interval_s: interval.as_secs_f64(),
            duration_limit_s: None,
            page_size: PAGE_SIZE,
            ramsize_bytes,
            vcpus,
            migration_speed_bytes_per_s,
            working_set_window_s: ramsize_bytes as f64 / migration_speed_bytes_per_s,
            slots,
            exact_cut: false,
            sampler: None,
            engine: None,
            guest_clock: None,
            guest: serde_json::Value::Null,
            guest_own_pages: Vec::new(),
            initial_nonzero_pages: Vec::new(),
            timing: HarvestTiming::default(),
            intervals: 0,
        }
    }

    /// Pages in all slots.
    pub fn total_pages(&self) -> u64 {
        self.slots.iter().map(|s| s.num_pages()).sum()
    }

    /// Reads and checks `dir/manifest.json`.
    pub fn load(dir: &Path) -> Result<Manifest, super::TraceError> {
        use super::TraceError;
        let path = dir.join(super::MANIFEST);
        let bytes = crate::files::read_regular(&path, super::limits::MAX_MANIFEST_BYTES, "manifest")?;
        #[derive(Deserialize)]
        struct Version {
            format_version: u32,
        }
        // The version first, so a newer trace gets that error rather than a field's.
        if let Ok(v) = serde_json::from_slice::<Version>(&bytes) {
            if !super::READABLE_VERSIONS.contains(&v.format_version) {
                return Err(TraceError::FormatVersion { path, found: v.format_version });
            }
        }
        let m: Manifest = serde_json::from_slice(&bytes)
            .map_err(|source| TraceError::ManifestSyntax { path: path.clone(), source })?;
        super::validate::check_manifest(&m).map_err(|invalid| TraceError::Invalid { path, invalid })?;
        Ok(m)
    }

    /// Writes the manifest atomically (temporary file, then rename).
    pub fn store(&self, dir: &Path) -> std::io::Result<()> {
        let tmp = dir.join(super::MANIFEST_TMP);
        let mut text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        text.push('\n');
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, dir.join(super::MANIFEST))
    }
}
