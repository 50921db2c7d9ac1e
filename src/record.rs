//! `dirtytrace record`: a [`Recorder`] is built from [`RecordOptions`] (the guest loaded, the
//! VM created, the output directory and manifest written), then [`Recorder::run`] wires the
//! guest's VM, the sampler, the per-interval accounting and the trace writer together.

use crate::accounting::IntervalAccounting;
use crate::engine::{ClockChoice, EngineChoice, RunningGuest};
use crate::events::GuestLog;
use crate::guest::{self, linux, synthetic, Guest};
use crate::qemu::clock::ExecutionLog;
use crate::sampler::{self, Harvest, SamplerConfig};
use crate::trace::{
    self, DeadlineCounts, EndReason, EngineInfo, GuestClockInfo, IntervalRow, Manifest, MemorySlot, SamplerScheduling,
    SchedPolicy, TraceStatus, TraceWriter,
};
use crate::units::{HumanDuration, HumanRate, HumanSize};
use crate::vmm::{self, Bus, DirtyTracking, VcpuOutcome, Vm};
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// The shortest harvest interval.
pub const MIN_INTERVAL: Duration = Duration::from_millis(1);
/// The longest harvest interval: longer ones would say little about a dirty rate.
pub const MAX_INTERVAL: Duration = Duration::from_secs(trace::limits::MAX_INTERVAL_S as u64);
/// The longest recording `--duration` allows.
pub const MAX_RECORD_DURATION: Duration = Duration::from_secs(366 * 86_400);
/// `--interval`'s and `--migration-speed`'s defaults, which `generate` shares.
pub use crate::guest::synthetic::spec::{DEFAULT_INTERVAL, DEFAULT_MIGRATION_SPEED_BYTES_PER_S};
/// The most bitmap data harvested but not yet written that the recorder holds in memory.
pub const MAX_QUEUED_BITMAP_BYTES: u64 = 256 * crate::units::MIB;
/// A Linux guest's RAM when neither `--mem` nor the workload says.
pub const LINUX_DEFAULT_MEM: u64 = 2 * crate::units::GIB;

/// The options of `record` that a grid's `[record]` takes too: each field is a flag of
/// `record` and a key of `[record]` (with `_` for `-`), and [`RecordSettings::check`] is their
/// one validator. A run's settings go into its dataset's fingerprint as serde writes them, so
/// a field added here changes every fingerprint unless it is skipped at its default
/// (`#[serde(skip_serializing_if = ...)]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct RecordSettings {
    /// Time between harvests of the dirty log (1ms to 1h).
    #[arg(long, default_value_t = HumanDuration(DEFAULT_INTERVAL))]
    pub interval: HumanDuration,
    /// Stop after this long, even if the workload goes on.
    #[arg(long)]
    pub duration: Option<HumanDuration>,
    /// Migration speed for the SimGrid columns (bytes/s or bits/s).
    #[arg(long, default_value_t = HumanRate(DEFAULT_MIGRATION_SPEED_BYTES_PER_S), value_parser = crate::units::parse_speed)]
    pub migration_speed: HumanRate,
    /// Guest RAM, overriding the workload's `mem`.
    #[arg(long)]
    pub mem: Option<HumanSize>,
    /// Number of vCPUs, overriding the workload's `vcpus`.
    #[arg(long, allow_hyphen_values = true, value_parser = parse_vcpus)]
    pub vcpus: Option<u32>,
    /// Hold every vCPU outside the guest around each harvest: an exact cut between intervals,
    /// at the cost of a short pause of the guest per harvest (see `bench --only cut`).
    #[arg(long)]
    pub exact_cut: bool,
    /// What runs the guest: kvm, dirtytrace's own VMM; qemu, QEMU's TCG emulator with
    /// dirtytrace's plugin (Linux guests; no VT-x/AMD-V needed, guest code runs slower); auto
    /// picks kvm wherever the own VMM can run the guest, else qemu (see `dirtytrace doctor`).
    #[arg(long, value_enum, default_value_t = EngineChoice::Auto)]
    #[serde(skip_serializing_if = "is_auto")]
    pub engine: EngineChoice,
    /// Which clock cuts the intervals: host, wall time; guest, the guest's own clock under
    /// QEMU's instruction counter (QEMU 7.2 engine, Linux guests, one vCPU): one instruction
    /// per nanosecond plus idle time, cut at the same instructions in every replay.
    #[arg(long, value_enum, default_value_t = ClockChoice::Host)]
    #[serde(skip_serializing_if = "is_host_clock")]
    pub clock: ClockChoice,
}

fn is_host_clock(c: &ClockChoice) -> bool {
    *c == ClockChoice::Host
}

/// `--vcpus`: a whole number of at least 1 (the workload's own limit is checked with it); a
/// negative count is refused as a value (clap names the flag), not taken for another flag.
fn parse_vcpus(s: &str) -> Result<u32, String> {
    match s.trim().parse::<i128>() {
        Ok(n) if (1..=u32::MAX as i128).contains(&n) => Ok(n as u32),
        _ => Err("must be a whole number of vCPUs, at least 1".into()),
    }
}

fn is_auto(e: &EngineChoice) -> bool {
    *e == EngineChoice::Auto
}

impl Default for RecordSettings {
    fn default() -> Self {
        crate::options::defaults()
    }
}

/// Why a setting of [`RecordSettings`] was refused. The message follows the setting's name:
/// `--interval` on the command line, `record.interval` or `axes.interval` in a grid.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SettingError {
    /// The interval is shorter than [`MIN_INTERVAL`].
    #[error("must be at least 1ms, got {0:?}")]
    IntervalTooShort(Duration),
    /// The interval is longer than [`MAX_INTERVAL`].
    #[error("must be at most 1h, got {0:?}")]
    IntervalTooLong(Duration),
    /// The duration is zero.
    #[error("must be longer than 0")]
    ZeroDuration,
    /// The duration is longer than [`MAX_RECORD_DURATION`].
    #[error("must be at most 366 days, got {0:?}")]
    DurationTooLong(Duration),
    /// The migration speed is outside [`crate::units::check_speed`]'s range.
    #[error("{0}")]
    MigrationSpeed(crate::units::ParseError),
    /// The interval does not suit the guest clock ([`crate::engine::check_guest_interval`]).
    #[error("{0}")]
    GuestClockInterval(String),
    /// --clock guest records Linux guests (.sh workloads) only: the synthetic guest paces itself with the host's TSC and is started by a write of dirtytrace's into its memory, which no replay reproduces
    #[error(
        "--clock guest records Linux guests (.sh workloads) only: the synthetic guest paces itself with the \
         host's TSC and is started by a write of dirtytrace's into its memory, which no replay reproduces"
    )]
    GuestClockSynthetic,
}

impl SettingError {
    /// The setting's field in [`RecordSettings`], which is also its grid key.
    pub fn key(&self) -> &'static str {
        match self {
            SettingError::IntervalTooShort(_) | SettingError::IntervalTooLong(_) => "interval",
            SettingError::ZeroDuration | SettingError::DurationTooLong(_) => "duration",
            SettingError::MigrationSpeed(_) => "migration_speed",
            SettingError::GuestClockInterval(_) => "interval",
            SettingError::GuestClockSynthetic => "clock",
        }
    }

    /// The setting's flag: `--migration-speed`.
    pub fn flag(&self) -> String {
        format!("--{}", self.key().replace('_', "-"))
    }
}

/// Checks an interval as `--interval` takes it.
pub fn check_interval(interval: Duration) -> Result<(), SettingError> {
    if interval < MIN_INTERVAL {
        return Err(SettingError::IntervalTooShort(interval));
    }
    if interval > MAX_INTERVAL {
        return Err(SettingError::IntervalTooLong(interval));
    }
    Ok(())
}

/// Checks a recording's length as `--duration` takes it.
pub fn check_duration(duration: Duration) -> Result<(), SettingError> {
    if duration.is_zero() {
        return Err(SettingError::ZeroDuration);
    }
    if duration > MAX_RECORD_DURATION {
        return Err(SettingError::DurationTooLong(duration));
    }
    Ok(())
}

/// Checks a migration speed (bytes per second) as `--migration-speed` takes it.
pub fn check_migration_speed(bytes_per_s: f64) -> Result<(), SettingError> {
    crate::units::check_speed(bytes_per_s).map(|_| ()).map_err(SettingError::MigrationSpeed)
}

impl RecordSettings {
    /// The one validator of the settings, for `record` and grids alike. The guest checks `mem`
    /// and `vcpus` against its workload.
    pub fn check(&self) -> Result<(), SettingError> {
        check_interval(self.interval.0)?;
        if self.clock == ClockChoice::Guest {
            crate::engine::check_guest_interval(u64::try_from(self.interval.0.as_nanos()).unwrap_or(u64::MAX))
                .map_err(SettingError::GuestClockInterval)?;
        }
        if let Some(d) = self.duration {
            check_duration(d.0)?;
        }
        check_migration_speed(self.migration_speed.0)
    }

    /// The settings against the kind of workload: `linux` for a `.sh` script.
    pub fn check_workload(&self, linux: bool) -> Result<(), SettingError> {
        if self.clock == ClockChoice::Guest && !linux {
            return Err(SettingError::GuestClockSynthetic);
        }
        Ok(())
    }
}

/// Everything `record` is told.
#[derive(Debug, Clone)]
pub struct RecordOptions {
    /// A `.toml` synthetic workload spec or a `.sh` Linux workload; `None` runs the built-in
    /// synthetic default.
    pub workload: Option<PathBuf>,
    /// What grids set too: the interval, the duration, guest RAM and vCPUs, ...
    pub settings: RecordSettings,
    /// The trace directory to create.
    pub output: PathBuf,
    /// The KVM device.
    pub kvm_device: PathBuf,
    /// zstd level of the bitmaps.
    pub zstd_level: i32,
    /// How writes are tracked (off only to measure what tracking costs).
    pub dirty_tracking: DirtyTracking,
    /// The kernel and the initramfs of `.sh` workloads.
    pub linux: linux::LinuxInputs,
    /// Stream a Linux guest's console to stderr too.
    pub console: bool,
    /// Whether the sampler thread runs at real-time priority.
    pub realtime: RealtimeMode,
    /// The most the sampler wakes before each deadline to spin on the clock; `None`: the
    /// default ([`default_spin`]).
    pub spin: Option<Duration>,
    /// Lock the recorder's own memory (not the guest's) with `mlockall(MCL_CURRENT)` before
    /// the guest's memory exists.
    pub lock_memory: bool,
    /// Keep QEMU's record/replay log of the execution in the trace (`--clock guest` only), so
    /// that `dirtytrace retrace` can record it again.
    pub keep_execution: bool,
    /// Replay a kept execution instead of running a workload (`dirtytrace retrace`).
    pub replay: Option<Replay>,
}

/// A kept execution to replay, and the trace it came from.
#[derive(Debug, Clone)]
pub struct Replay {
    /// The execution, checked.
    pub execution: crate::execution::Execution,
    /// The recording's `guest` in its manifest.
    pub described: serde_json::Value,
    /// The recording's trace id.
    pub trace_id: String,
}

/// Whether the sampler thread runs at real-time priority (`--realtime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RealtimeMode {
    /// SCHED_FIFO where permitted (root, CAP_SYS_NICE or RLIMIT_RTPRIO), else normal priority.
    #[default]
    Auto,
    /// SCHED_FIFO, or an error naming the missing permission.
    On,
    /// Normal scheduling.
    Off,
}

impl RealtimeMode {
    /// The flag's value as written.
    pub fn as_str(self) -> &'static str {
        match self {
            RealtimeMode::Auto => "auto",
            RealtimeMode::On => "on",
            RealtimeMode::Off => "off",
        }
    }
}

/// `--spin`'s default and bound: the sampler's spin policy, kept with the sampler.
pub use crate::sampler::{default_spin, DEFAULT_SPIN, SPIN_INTERVALS_UP_TO};

impl RecordOptions {
    /// The defaults, recording into `output`.
    pub fn new(output: PathBuf) -> Self {
        RecordOptions {
            workload: None,
            settings: RecordSettings::default(),
            output,
            kvm_device: vmm::kvm_device_path(),
            zstd_level: trace::ZSTD_LEVEL,
            dirty_tracking: DirtyTracking::Bitmap,
            linux: linux::LinuxInputs::default(),
            console: false,
            realtime: RealtimeMode::Auto,
            spin: None,
            lock_memory: false,
            keep_execution: false,
            replay: None,
        }
    }
}

/// How a recording went, as `record` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct RecordSummary {
    /// The trace directory.
    pub trace_dir: PathBuf,
    /// The manifest's `trace_id`.
    pub trace_id: String,
    /// Where the trace stands.
    pub status: TraceStatus,
    /// Why the recording ended.
    pub end_reason: Option<EndReason>,
    /// The guest fault or error that ended it.
    pub error: Option<String>,
    /// Rows recorded.
    pub intervals: u64,
    /// Seconds recorded.
    pub duration_s: f64,
    /// Guest RAM in bytes.
    pub ramsize_bytes: u64,
    /// Bytes dirtied over seconds recorded.
    pub mean_dirty_rate_bytes_per_s: f64,
    /// The highest rate of a full interval.
    pub max_dirty_rate_bytes_per_s: f64,
    /// Distinct pages dirtied in the whole recording.
    pub distinct_pages: u64,
    /// Mean cores the vCPUs kept busy.
    pub mean_cpu_util: f64,
    /// Harvest lateness, median (s).
    pub harvest_lateness_p50_s: f64,
    /// Harvest lateness, 99th percentile (s).
    pub harvest_lateness_p99_s: f64,
    /// Harvest lateness, maximum (s).
    pub harvest_lateness_max_s: f64,
    /// Time in the harvest call (`KVM_GET_DIRTY_LOG`, or `PAGEMAP_SCAN` under QEMU), median (s).
    pub harvest_ioctl_p50_s: f64,
    /// The engine that ran the guest (`kvm` or `qemu`; `kvm` for traces that do not say).
    pub engine: String,
    /// Why that engine ran (`--engine NAME`, or what `auto` found).
    pub engine_reason: Option<String>,
    /// Harvests that began more than a tenth of the interval late.
    pub missed_deadlines: u64,
    /// Mean length of a full interval (s).
    pub mean_interval_s: f64,
    /// The guest's own exit status, where it reported one.
    pub guest_exit_status: Option<i32>,
    /// Where the recorder's time went, per interval (not kept in the trace).
    pub cost: Option<HarvestCost>,
    /// Seconds from the start of `record` to the guest's first instruction (guest build,
    /// initramfs included).
    pub setup_s: Option<f64>,
    /// How the sampler thread was scheduled.
    pub sampler: Option<SamplerScheduling>,
    /// The sampler thread's CPU time over the recording's length (not kept in the trace).
    pub sampler_cpu_share: Option<f64>,
}

impl RecordSummary {
    /// The summary of the finished trace in `dir`.
    pub fn of_trace(dir: &Path, guest_exit_status: Option<i32>) -> anyhow::Result<RecordSummary> {
        let t = trace::Trace::open(dir)?;
        let rows = t.rates()?;
        let m = &t.manifest;
        let duration_s = rows.last().map_or(0.0, |r| r.t_end_s);
        let total_bytes: u64 = rows.iter().map(|r| r.dirty_bytes).sum();
        let cpu_time: f64 = rows.iter().map(|r| r.cpu_util * r.duration_s).sum();
        let per_second = |x: f64| if duration_s > 0.0 { x / duration_s } else { 0.0 };
        Ok(RecordSummary {
            trace_dir: dir.to_path_buf(),
            trace_id: m.trace_id.clone(),
            status: m.status,
            end_reason: m.end_reason,
            error: m.error.clone(),
            intervals: rows.len() as u64,
            duration_s,
            ramsize_bytes: m.ramsize_bytes,
            mean_dirty_rate_bytes_per_s: per_second(total_bytes as f64),
            max_dirty_rate_bytes_per_s: rows
                .iter()
                .filter(|r| !r.partial)
                .map(|r| r.dirty_rate_bytes_per_s)
                .fold(0.0, f64::max),
            distinct_pages: rows.last().map_or(0, |r| r.distinct_pages_total),
            mean_cpu_util: per_second(cpu_time),
            harvest_lateness_p50_s: m.timing.lateness_p50_s,
            harvest_lateness_p99_s: m.timing.lateness_p99_s,
            harvest_lateness_max_s: m.timing.lateness_max_s,
            harvest_ioctl_p50_s: m.timing.ioctl_p50_s,
            engine: m.engine.as_ref().map_or("kvm", |e| e.name.as_str()).to_string(),
            engine_reason: m.engine.as_ref().map(|e| e.reason.clone()),
            missed_deadlines: m.timing.missed_deadlines,
            mean_interval_s: m.timing.mean_interval_s,
            guest_exit_status,
            cost: None,
            setup_s: None,
            sampler: m.sampler.clone(),
            sampler_cpu_share: None,
        })
    }
}

/// Mean seconds per interval spent inside KVM and in the recorder's own work.
#[derive(Debug, Clone, Serialize)]
pub struct HarvestCost {
    /// Inside the harvest call, `KVM_GET_DIRTY_LOG` or `PAGEMAP_SCAN` (thread CPU time).
    pub ioctl_mean_s: f64,
    /// The sampler's work around the ioctl: progress words, CPU clocks, hand-off.
    pub sampler_own_mean_s: f64,
    /// Per-interval accounting: counting, statistics and zstd compression of the bitmaps.
    pub compress_mean_s: f64,
    /// Appending to the journal and logs.
    pub persist_mean_s: f64,
    /// Taking the vCPUs out of the guest, per harvest (`--exact-cut` only; wall time).
    pub pause_mean_s: f64,
    /// (sampler own + compress + persist) / ioctl.
    pub own_over_ioctl: f64,
}

/// Where the recorder's CPU time goes, per interval, in nanoseconds of thread CPU time (so
/// that time the machine gives to other threads is not counted as ours).
#[derive(Debug, Clone, Default)]
struct CostLog {
    /// Running sums in ns, and how many values each holds: the means are all that is reported,
    /// and a log of every interval would grow with the recording (40 bytes an interval).
    ioctl_ns: CostSum,
    sampler_own_ns: CostSum,
    compress_ns: CostSum,
    persist_ns: CostSum,
    pause_ns: CostSum,
}

#[derive(Debug, Default, Clone, Copy)]
struct CostSum {
    total_ns: u128,
    count: u64,
}

impl CostSum {
    fn push(&mut self, ns: u64) {
        self.total_ns += ns as u128;
        self.count += 1;
    }
    fn mean_s(self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.total_ns as f64 / self.count as f64 / 1e9
        }
    }
}

impl CostLog {
    fn mean(&self) -> HarvestCost {
        let (ioctl, own, compress, persist) =
            (self.ioctl_ns.mean_s(), self.sampler_own_ns.mean_s(), self.compress_ns.mean_s(), self.persist_ns.mean_s());
        HarvestCost {
            ioctl_mean_s: ioctl,
            sampler_own_mean_s: own,
            compress_mean_s: compress,
            persist_mean_s: persist,
            pause_mean_s: self.pause_ns.mean_s(),
            own_over_ioctl: if ioctl > 0.0 { (own + compress + persist) / ioctl } else { 0.0 },
        }
    }
}

/// The engine that runs the guest, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    Kvm,
    Qemu,
}

fn is_linux_workload(opts: &RecordOptions) -> bool {
    opts.workload.as_deref().and_then(|p| p.extension()).is_some_and(|e| e == "sh")
}

/// Resolves `--engine`: `auto` takes the own VMM wherever it can run the guest.
fn choose_engine(opts: &RecordOptions) -> anyhow::Result<(Engine, String)> {
    let linux = is_linux_workload(opts);
    if opts.linux.disk.disk.is_some() && !linux {
        bail!("{} runs a Linux workload script (.sh) in the image; give one with --workload", linux::DISK_FLAG);
    }
    if opts.replay.is_some() {
        return Ok((Engine::Qemu, "a replay of an execution recorded under QEMU".into()));
    }
    if opts.settings.clock == ClockChoice::Guest {
        return match opts.settings.engine {
            EngineChoice::Kvm => bail!(
                "--clock guest needs the QEMU engine: the own VMM under KVM keeps no guest clock it could cut at \
                 (record with --engine qemu, or --clock host)"
            ),
            EngineChoice::Qemu => Ok((Engine::Qemu, "--engine qemu".into())),
            EngineChoice::Auto => Ok((Engine::Qemu, "auto: --clock guest runs under QEMU's TCG".into())),
        };
    }
    Ok(match opts.settings.engine {
        EngineChoice::Kvm if opts.linux.disk.disk.is_some() => bail!(
            "{} needs the QEMU engine (the own VMM has no block device): record with --engine qemu, or leave \
             --engine at auto",
            linux::DISK_FLAG
        ),
        EngineChoice::Kvm => (Engine::Kvm, "--engine kvm".into()),
        EngineChoice::Qemu => (Engine::Qemu, "--engine qemu".into()),
        // The synthetic guest runs at CPL3, natively on any usable KVM.
        EngineChoice::Auto if !linux => match vmm::open_kvm(&opts.kvm_device) {
            Ok(_) => (Engine::Kvm, "auto: the synthetic guest runs under the own VMM on this host's KVM".into()),
            Err(e) => (
                Engine::Qemu,
                format!("auto: KVM is not usable here ({e}), so the synthetic guest runs under QEMU's TCG"),
            ),
        },
        EngineChoice::Auto if opts.linux.disk.disk.is_some() => {
            (Engine::Qemu, format!("auto: {} needs the QEMU engine's virtio-blk disk", linux::DISK_FLAG))
        }
        EngineChoice::Auto if opts.linux.boot.allow_emulated_kernel => {
            (Engine::Kvm, format!("auto: {} asks for the own VMM", linux::ALLOW_EMULATED_FLAG))
        }
        EngineChoice::Auto => match crate::guest::probe::cached(&opts.kvm_device) {
            Ok(p) if p.kernel_native() => (Engine::Kvm, "auto: this host's KVM runs guest kernel code natively".into()),
            Ok(p) => (
                Engine::Qemu,
                format!(
                    "auto: this host's KVM emulates guest kernel code ({:.1} M instructions/s; no VT-x or AMD-V), so \
                     the Linux guest runs under QEMU's TCG",
                    p.kernel_mode.instructions_per_s / 1e6
                ),
            ),
            Err(e) => {
                let why = crate::errors::causes((*e).as_ref());
                (Engine::Qemu, format!("auto: KVM cannot run the guest here ({why}), so it runs under QEMU's TCG"))
            }
        },
    })
}

/// Loads the workload `opts` names: a synthetic spec, a Linux script, or the built-in default.
fn load_guest(opts: &RecordOptions, engine: Engine) -> anyhow::Result<Box<dyn Guest>> {
    if let Some(r) = &opts.replay {
        return Ok(Box::new(crate::execution::ReplayGuest {
            boot: r.execution.boot.clone(),
            described: r.described.clone(),
        }));
    }
    let text = match &opts.workload {
        None => synthetic::spec::DEFAULT_SPEC.to_string(),
        Some(p) => match p.extension().and_then(|e| e.to_str()).unwrap_or("") {
            "sh" => {
                linux::initramfs::check_script(p)?;
                let guest = linux::LinuxGuest::new(linux::LinuxOptions {
                    script: p.clone(),
                    inputs: opts.linux.clone(),
                    mem: opts.settings.mem.map_or(LINUX_DEFAULT_MEM, |m| m.0),
                    vcpus: opts.settings.vcpus.unwrap_or(1),
                    console: opts.console,
                    kvm_device: opts.kvm_device.clone(),
                    under_kvm: engine == Engine::Kvm,
                    guest_clock: opts.settings.clock == ClockChoice::Guest,
                    scratch_dir: existing_parent(&opts.output),
                })?;
                return Ok(Box::new(guest));
            }
            "toml" => {
                let bytes = crate::files::read_regular(p, synthetic::spec::MAX_SPEC_BYTES, "workload spec")
                    .with_context(|| "--workload".to_string())?;
                String::from_utf8(bytes).with_context(|| format!("--workload {}: not UTF-8 text", p.display()))?
            }
            _ => bail!("{}: a workload is a synthetic spec (.toml) or a Linux workload script (.sh)", p.display()),
        },
    };
    let (mem, vcpus) = (opts.settings.mem.map(|m| m.0), opts.settings.vcpus);
    let spec = synthetic::spec::WorkloadSpec::parse(&text, mem, vcpus).map_err(|e| match &opts.workload {
        Some(p) => anyhow::anyhow!("{}: {e}", p.display()),
        None => anyhow::anyhow!("built-in spec: {e}"),
    })?;
    Ok(Box::new(synthetic::SyntheticGuest::new(spec, text)?))
}

/// The nearest existing directory above `path` (where the trace will be made).
fn existing_parent(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    abs.ancestors().skip(1).find(|p| p.is_dir()).map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The host's kernel, as `uname -sr` says it.
pub fn host_kernel() -> String {
    host_info().0
}

fn host_info() -> (String, String) {
    match nix::sys::utsname::uname() {
        Ok(u) => (
            format!("{} {}", u.sysname().to_string_lossy(), u.release().to_string_lossy()),
            u.nodename().to_string_lossy().into_owned(),
        ),
        Err(_) => ("unknown".into(), "unknown".into()),
    }
}

fn new_trace_id() -> String {
    let mut b = [0u8; 16];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b)).is_err() {
        b[..8].copy_from_slice(&crate::clock::now_ns().to_le_bytes());
    }
    crate::units::hex(&b)
}

/// A default output directory name: `trace-YYYYMMDD-HHMMSS` (UTC).
pub fn default_output_dir() -> PathBuf {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    PathBuf::from(format!("trace-{y:04}{m:02}{d:02}-{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60))
}

/// What the recorder tells whoever shows progress, after each interval.
pub type Progress = Box<dyn FnMut(&IntervalRow) + Send>;

/// A guest ready to run under one of the engines, its first instruction not yet run.
enum PreparedEngine {
    /// dirtytrace's own VMM: the VM with its memory loaded and vCPUs set, and its devices.
    Kvm { vm: Vm, bus: Arc<dyn Bus> },
    /// QEMU, started stopped with guest RAM write-protected.
    Qemu(Box<crate::qemu::QemuVm>),
}

/// A recording ready to start: guest loaded, VM created and prepared, trace directory and
/// manifest written. Nothing runs until [`Recorder::run`].
pub struct Recorder {
    notes: Vec<String>,
    realtime: bool,
    /// Where the recorder's threads and the vCPUs run (a real-time sampler only).
    cpu_plan: Option<crate::cpus::CpuPlan>,
    guest: Box<dyn Guest>,
    engine: PreparedEngine,
    log: Arc<GuestLog>,
    writer: TraceWriter,
    accounting: IntervalAccounting,
    sampler: SamplerConfig,
    t_begin_ns: u64,
    /// The execution being kept in the trace (`--keep-execution`).
    keeper: Option<crate::execution::Keeper>,
}

impl TryFrom<RecordOptions> for Recorder {
    type Error = anyhow::Error;

    /// Checks the options and builds everything that can fail before the guest runs. The
    /// output directory is made last, so an error leaves nothing behind.
    fn try_from(opts: RecordOptions) -> anyhow::Result<Recorder> {
        let t_begin_ns = crate::clock::now_ns();
        opts.settings.check().map_err(|e| anyhow::anyhow!("{} {e}", e.flag()))?;
        let (interval, duration) = (opts.settings.interval.0, opts.settings.duration.map(|d| d.0));
        let mut notes = Vec::new();
        let realtime = match (opts.realtime, sampler::probe_realtime()) {
            (RealtimeMode::Off, _) => false,
            (_, Ok(())) => true,
            (RealtimeMode::On, Err(e)) => bail!("--realtime on: {e}"),
            (RealtimeMode::Auto, Err(e)) => {
                notes.push(format!("the sampler runs at normal priority: {e}"));
                false
            }
        };
        if opts.lock_memory {
            // Before the guest's memory exists, and only what is mapped now: never the guest's.
            nix::sys::mman::mlockall(nix::sys::mman::MlockAllFlags::MCL_CURRENT)
                .context("mlockall(MCL_CURRENT) of the recorder's own memory")?;
        }
        let guest_clock = opts.settings.clock == ClockChoice::Guest || opts.replay.is_some();
        if opts.keep_execution && !guest_clock {
            bail!(
                "--keep-execution needs --clock guest: only an execution under QEMU's instruction counter can be \
                 recorded and replayed"
            );
        }
        if opts.replay.is_none() {
            opts.settings.check_workload(is_linux_workload(&opts))?;
        }
        if opts.keep_execution && opts.linux.disk.disk.is_some() {
            bail!(
                "--keep-execution with --disk: QEMU's record/replay would need the disk's reads logged too \
                 (blkreplay), which dirtytrace does not set up; record the disk with --clock guest alone, or \
                 leave out --disk"
            );
        }
        if guest_clock {
            crate::engine::check_guest_interval(u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX))
                .map_err(|e| anyhow::anyhow!("--interval {e}"))?;
        }
        if guest_clock && opts.settings.exact_cut {
            bail!("--exact-cut and --clock guest: a guest-time cut is exact already (the vCPU waits at it)");
        }
        let (engine, engine_reason) = choose_engine(&opts)?;
        let mut guest = load_guest(&opts, engine)?;
        let mut keeper: Option<(crate::execution::Keeper, OutputGuard)> = None;
        let log = Arc::new(GuestLog::new(&guest.initial_phase()));
        let (prepared, slots, vcpus, engine_info) = match engine {
            Engine::Kvm => {
                let kvm = vmm::open_kvm(&opts.kvm_device)?;
                let mut spec = guest.vm_spec();
                spec.dirty_tracking = opts.dirty_tracking;
                let mut vm = Vm::create(kvm, &spec)?;
                let bus = guest.prepare(&mut vm, log.clone())?;
                let (slots, vcpus) = (vm.slots.clone(), vm.vcpus.len() as u32);
                let info = EngineInfo {
                    name: "kvm".into(),
                    reason: engine_reason,
                    accelerator: "kvm".into(),
                    tracking: "kvm_dirty_log".into(),
                    qemu_version: None,
                    uffd_mode: None,
                };
                (PreparedEngine::Kvm { vm, bus }, slots, vcpus, info)
            }
            Engine::Qemu => {
                let Some(boot) = guest.qemu_boot()? else {
                    bail!("this guest does not run under the QEMU engine; record it with --engine kvm")
                };
                if opts.dirty_tracking == DirtyTracking::Off {
                    bail!("the QEMU engine always tracks writes");
                }
                let clock = if guest_clock {
                    if boot.vcpus != 1 {
                        bail!(
                            "--clock guest needs one vCPU, not {}: QEMU's record/replay and the guest clock follow \
                             one vCPU's instructions",
                            boot.vcpus
                        );
                    }
                    let interval_ns = u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX);
                    let mut c = crate::qemu::clock::GuestClock { interval_ns, log: None };
                    match &opts.replay {
                        Some(r) => c.log = Some(ExecutionLog::Replay(r.execution.log.clone())),
                        None if opts.keep_execution => {
                            let (_, _, version) = crate::qemu::version(&crate::qemu::binary())?;
                            let guard = OutputGuard::create(&opts.output)?;
                            let k = crate::execution::Keeper::create(&opts.output, &boot, &version, &c.icount())?;
                            c.log = Some(ExecutionLog::Record(k.log()));
                            keeper = Some((k, guard));
                        }
                        None => {}
                    }
                    Some(c)
                } else {
                    None
                };
                let vm = crate::qemu::QemuVm::start_clocked(&boot, clock.as_ref(), log.clone())?;
                let info = EngineInfo {
                    name: "qemu".into(),
                    reason: engine_reason,
                    accelerator: "tcg".into(),
                    tracking: "userfaultfd_wp_async".into(),
                    qemu_version: Some(vm.version.clone()),
                    uffd_mode: Some(vm.uffd_mode.clone()),
                };
                let slots = vm.slots.clone();
                (PreparedEngine::Qemu(Box::new(vm)), slots, boot.vcpus, info)
            }
        };
        let slots = slots
            .iter()
            .map(|s| MemorySlot { slot: s.slot, guest_phys_addr: s.guest_phys_addr, size_bytes: s.size_bytes })
            .collect();
        let mut manifest = Manifest::new(new_trace_id(), interval, slots, vcpus, opts.settings.migration_speed.0);
        (manifest.host_kernel, manifest.host_name) = host_info();
        manifest.duration_limit_s = duration.map(|d| d.as_secs_f64());
        manifest.exact_cut = opts.settings.exact_cut;
        let spin = sampler::spin_for(opts.spin, interval);
        let cpu_plan = if realtime { crate::cpus::plan(vcpus as usize) } else { None };
        manifest.sampler = Some(SamplerScheduling {
            requested: opts.realtime.as_str().into(),
            policy: if realtime { SchedPolicy::Fifo } else { SchedPolicy::Other },
            priority: if realtime { sampler::REALTIME_PRIORITY as u32 } else { 0 },
            spin_us: spin.as_micros() as u64,
            cpu: cpu_plan.as_ref().map(|p| p.housekeeping as u32),
        });
        manifest.guest = guest.describe();
        manifest.guest_own_pages = guest.own_pages();
        manifest.initial_nonzero_pages = match &prepared {
            PreparedEngine::Kvm { vm, .. } => guest::nonzero_pages(vm, &guest.loaded_ranges()),
            PreparedEngine::Qemu(vm) => vm.nonzero_pages(),
        };
        manifest.engine = Some(engine_info);
        if guest_clock {
            manifest.guest_clock = Some(GuestClockInfo {
                instructions_per_s: crate::qemu::clock::INSTRUCTIONS_PER_GUEST_S,
                icount_shift: crate::qemu::clock::ICOUNT_SHIFT,
                execution: if keeper.is_some() { Some(crate::execution::DIR.into()) } else { None },
                retraced_from: opts.replay.as_ref().map(|r| r.trace_id.clone()),
            });
        }
        // The same checks a reader makes, before anything is recorded.
        trace::check_manifest(&manifest).context("the trace's manifest would be invalid")?;

        if keeper.is_none() {
            trace::prepare_dir(&opts.output)?;
        }
        let writer = TraceWriter::create(&opts.output, manifest)?;
        let accounting = IntervalAccounting::new(writer.manifest(), opts.zstd_level).context("zstd")?;
        let sampler = SamplerConfig {
            interval,
            duration,
            progress_words: guest.progress_words(),
            exact_cut: opts.settings.exact_cut,
            spin,
            guest_clock,
            stall: opts.replay.as_ref().map(|r| {
                (
                    crate::execution::STALL_TIMEOUT,
                    format!(
                        "the execution log {} may be damaged, or this host replays it differently",
                        r.execution.log.display()
                    ),
                )
            }),
        };
        // The trace exists: what the recorder made is the trace's from now on.
        let keeper = keeper.map(|(k, guard)| {
            guard.keep();
            k
        });
        Ok(Recorder {
            notes,
            realtime,
            cpu_plan,
            guest,
            engine: prepared,
            log,
            writer,
            accounting,
            sampler,
            t_begin_ns,
            keeper,
        })
    }
}

/// A trace directory made early, before QEMU starts, for the execution QEMU records into it:
/// removed again (what the recorder put there, and the directory if it made it) unless the
/// recording gets as far as its trace.
struct OutputGuard {
    dir: PathBuf,
    made: bool,
    keep: bool,
}

impl OutputGuard {
    fn create(dir: &Path) -> anyhow::Result<OutputGuard> {
        let made = !dir.exists();
        trace::prepare_dir(dir)?;
        Ok(OutputGuard { dir: dir.to_path_buf(), made, keep: false })
    }

    fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for OutputGuard {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(self.dir.join(crate::execution::DIR));
            if self.made {
                let _ = std::fs::remove_dir(&self.dir);
            }
        }
    }
}

impl Recorder {
    /// How long the recording will last, where known: the workload's length or `--duration`,
    /// whichever is shorter.
    pub fn expected_duration(&self) -> Option<Duration> {
        match (self.guest.expected_duration(), self.sampler.duration) {
            (Some(e), Some(d)) => Some(e.min(d)),
            (e, d) => e.or(d),
        }
    }

    /// The trace directory.
    pub fn output(&self) -> &Path {
        self.writer.dir()
    }

    /// What the user should know before the recording starts (one line each).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Runs the guest and records it. `interrupt` set (by Ctrl-C) ends the recording early
    /// with a complete trace.
    pub fn run(self, interrupt: Arc<AtomicBool>, mut progress: Option<Progress>) -> anyhow::Result<RecordSummary> {
        let Recorder {
            engine, log, writer, mut accounting, sampler: cfg, t_begin_ns, realtime, cpu_plan, keeper, ..
        } = self;
        let housekeeping = cpu_plan.as_ref().map(|p| [p.housekeeping]);
        // Bounded, so that a writer that falls behind cannot fill memory with bitmaps: the
        // sampler then waits, and the intervals get longer (the skipped deadlines are counted)
        // instead of being lost.
        let bitmap_bytes: u64 = accounting.bitmap_bytes().max(1);
        let capacity = (MAX_QUEUED_BITMAP_BYTES / bitmap_bytes).clamp(4, 4096) as usize;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Harvest>(capacity);
        // The writer thread does everything but the harvest itself, so that accounting and
        // I/O never delay a deadline.
        let writer_thread = std::thread::Builder::new().name("trace-writer".into()).spawn(move || {
            if let Some(cpu) = housekeeping {
                let _ = crate::cpus::pin_current_thread(&cpu);
            }
            let mut writer = writer;
            let mut cost = CostLog::default();
            for h in rx {
                let cpu_begin = crate::clock::this_thread_cpu_ns();
                cost.ioctl_ns.push(h.ioctl_cpu_ns);
                cost.pause_ns.push(h.pause_ns);
                cost.sampler_own_ns.push(h.sampler_cpu_ns.saturating_sub(h.ioctl_cpu_ns));
                let done = accounting.account(h).map_err(anyhow::Error::from).and_then(|i| {
                    let cpu_persist = crate::clock::this_thread_cpu_ns();
                    cost.compress_ns.push(cpu_persist - cpu_begin);
                    writer.append(&i.row, &i.blobs, &i.events, &i.console)?;
                    cost.persist_ns.push(crate::clock::this_thread_cpu_ns() - cpu_persist);
                    Ok(i.row)
                });
                match done {
                    Ok(row) => {
                        if let Some(p) = progress.as_mut() {
                            p(&row);
                        }
                    }
                    Err(e) => return (writer, cost, Some(e)),
                }
            }
            (writer, cost, None)
        })?;
        let running: Box<dyn RunningGuest> = match engine {
            PreparedEngine::Kvm { vm, bus } => {
                vm.clear_dirty_log()?;
                log.start_clock();
                Box::new(vm.start(bus, cpu_plan.as_ref().map(|p| p.guest.as_slice()))?)
            }
            // A Linux guest: the pages written since the plugin write-protected RAM (QEMU's
            // own reset-time writes) stay in the first interval: they are writes, and nothing
            // before them is lost. The synthetic guest waits at its gate, its boot's writes
            // discarded: starting it writes its go word, and its program's first instruction
            // follows.
            PreparedEngine::Qemu(vm) => {
                log.start_clock();
                Box::new(vm.start_guest()?)
            }
        };
        let setup_s = (crate::clock::now_ns() - t_begin_ns) as f64 / 1e9;
        // The sampler gets a thread of its own, so that real-time priority is its alone: the
        // vCPU and writer threads exist already, and finalising runs on this thread.
        let sampled = std::thread::scope(|scope| {
            let sampler_thread = std::thread::Builder::new().name("sampler".into()).spawn_scoped(scope, || {
                if let Some(cpu) = housekeeping {
                    let _ = crate::cpus::pin_current_thread(&cpu);
                }
                let got_realtime = realtime && sampler::make_current_thread_realtime().is_ok();
                (sampler::run(running, &cfg, &log, &tx, &interrupt), got_realtime)
            });
            sampler_thread.map(|t| t.join())
        });
        drop(tx);
        let (result, got_realtime) = match sampled {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => bail!("the sampler panicked"),
            Err(e) => bail!("cannot start the sampler thread: {e}"),
        };
        let (writer, cost, write_error) =
            writer_thread.join().map_err(|_| anyhow::anyhow!("the trace writer panicked"))?;
        let result = result?;

        let fault = result.outcomes.iter().find_map(|o| match o {
            VcpuOutcome::Fault(f) => Some(f.to_string()),
            _ => None,
        });
        let exit_status = result.outcomes.iter().find_map(|o| match o {
            VcpuOutcome::PowerOff(s) | VcpuOutcome::Ended(s) => Some(*s),
            _ => None,
        });
        let status = match result.end {
            EndReason::Interrupted => TraceStatus::Interrupted,
            EndReason::GuestFault if fault.is_some() => TraceStatus::GuestFault,
            _ => TraceStatus::Complete,
        };
        let mut writer = writer;
        if let Some(s) = writer.manifest_mut().sampler.as_mut().filter(|_| realtime && !got_realtime) {
            (s.policy, s.priority) = (SchedPolicy::Other, 0);
        }
        writer.manifest_mut().timing.sampler_counts =
            Some(DeadlineCounts { harvests: result.intervals, skipped_deadlines: result.skipped_deadlines });
        let dir = writer.dir().to_path_buf();
        let write_error = write_error.map(|e| crate::errors::causes(e.as_ref()));
        let error = write_error.clone().or_else(|| fault.clone());
        let finalized = writer.finish(status, result.end, error).map_err(|e| {
            anyhow::anyhow!(
                "{e}\nthe intervals recorded so far are in {}'s journal: free the problem, then run `dirtytrace recover {}`",
                dir.display(),
                dir.display()
            )
        })?;
        if let Some(e) = write_error {
            bail!(
                "writing the trace failed: {e}\n{} intervals were kept in {}",
                finalized.manifest.intervals,
                dir.display()
            );
        }
        // QEMU has quit (the sampler dropped it): its log is complete.
        if let Some(k) = keeper {
            k.finish(&finalized.manifest.trace_id, result.elapsed_ns)?;
        }
        let mut summary = RecordSummary::of_trace(&dir, exit_status)?;
        summary.cost = Some(cost.mean());
        summary.setup_s = Some(setup_s);
        summary.sampler_cpu_share =
            Some(if result.elapsed_ns > 0 { result.cpu_ns as f64 / result.elapsed_ns as f64 } else { 0.0 });
        Ok(summary)
    }
}

/// Records a trace: [`Recorder::try_from`], then [`Recorder::run`].
pub fn record(
    opts: &RecordOptions,
    interrupt: Arc<AtomicBool>,
    progress: Option<Progress>,
) -> anyhow::Result<RecordSummary> {
    Recorder::try_from(opts.clone())?.run(interrupt, progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The library and grids default as `record`'s flags do, and a refused setting is named
    /// as its flag and its grid key.
    #[test]
    fn settings_default_as_the_flags_and_are_checked_once() {
        let s = RecordSettings::default();
        assert_eq!((s.interval.0, s.migration_speed.0), (DEFAULT_INTERVAL, DEFAULT_MIGRATION_SPEED_BYTES_PER_S));
        assert_eq!((s.duration, s.mem, s.vcpus, s.exact_cut), (None, None, None, false));
        assert_eq!((s.engine, s.clock), (EngineChoice::Auto, ClockChoice::Host));
        assert_eq!(
            crate::options::keys_of::<RecordSettings>(),
            ["interval", "duration", "migration_speed", "mem", "vcpus", "exact_cut", "engine", "clock"]
        );
        assert_eq!(s.check(), Ok(()));
        let slow = RecordSettings { migration_speed: HumanRate(0.0), ..s.clone() };
        let e = slow.check().unwrap_err();
        assert_eq!((e.flag().as_str(), e.key()), ("--migration-speed", "migration_speed"));
        let long = RecordSettings { interval: HumanDuration(Duration::from_secs(7200)), ..s };
        assert_eq!(long.check().unwrap_err().to_string(), "must be at most 1h, got 7200s");
    }
}
