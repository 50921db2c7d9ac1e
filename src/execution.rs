//! A recorded execution, kept in a trace by `record --clock guest --keep-execution`, and
//! `dirtytrace retrace`, which replays it and records it again at another interval.
//!
//! `TRACE/execution/` holds QEMU's record/replay log (`replay.bin`), the initramfs the guest
//! booted, and `execution.json`, which says what a replay needs: QEMU's version, its
//! `-icount`, the kernel (by path: it is large, and the kit's), the kernel command line, guest
//! RAM, vCPUs, and the sha256 of the log, the initramfs and the kernel. A retrace checks all of
//! it before it starts QEMU, and refuses naming what differs.

use crate::events::GuestLog;
use crate::guest::Guest;
use crate::qemu::{QemuBoot, QemuKernel};
use crate::vmm::{Bus, Vm, VmSpec};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The directory of a trace that keeps its execution.
pub const DIR: &str = "execution";
/// QEMU's record/replay log in [`DIR`].
pub const LOG: &str = "replay.bin";
/// The initramfs in [`DIR`].
pub const INITRAMFS: &str = "initramfs";
/// What a replay needs, in [`DIR`].
pub const INFO: &str = "execution.json";
/// How long a replay may go without a single guest instruction before it is given up.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest `execution.json` read.
const MAX_INFO_BYTES: u64 = 1 << 20;

/// `execution.json`: what a replay of the execution needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutionInfo {
    /// QEMU's version, as `--version` says it.
    pub qemu_version: String,
    /// QEMU's `-icount`, without the log's path.
    pub icount: String,
    /// The kernel command line.
    pub cmdline: String,
    /// Guest RAM in bytes.
    pub mem: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// The kernel QEMU booted.
    pub kernel: PathBuf,
    /// sha256 of the kernel.
    pub kernel_sha256: String,
    /// sha256 of [`INITRAMFS`].
    pub initramfs_sha256: String,
    /// sha256 of [`LOG`], once the recording ended.
    pub log_sha256: Option<String>,
    /// Bytes of [`LOG`], once the recording ended.
    pub log_bytes: Option<u64>,
    /// Guest seconds the execution lasted, once the recording ended.
    pub guest_s: Option<f64>,
    /// Where the recording's trace ended, in nanoseconds of guest time (the end of its last
    /// interval), once it ended: a retrace must end there or before, where the log reaches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_ns: Option<u64>,
    /// The trace that recorded it.
    pub trace_id: String,
}

/// Why a trace's execution cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ExecutionError {
    /// The trace keeps no execution.
    #[error(
        "{0} keeps no execution to replay (no {DIR}/{INFO}): only a trace recorded with `record --clock guest \
         --keep-execution` can be retraced"
    )]
    Missing(PathBuf),
    /// A file of the execution cannot be read.
    #[error("{path}: {source}: the trace's execution is incomplete and cannot be replayed")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// `execution.json` does not parse.
    #[error("{path}: {msg}: the trace's execution cannot be replayed")]
    Info {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A file is not the one recorded.
    #[error(
        "{path} is not the file that was recorded (sha256 {found}, recorded {expected}): it is damaged or truncated, \
         and a replay of it would not be the same execution"
    )]
    Changed {
        /// The file.
        path: PathBuf,
        /// Its sha256 now.
        found: String,
        /// Its sha256 when recorded.
        expected: String,
    },
    /// The recording did not end cleanly, so its log has no recorded length.
    #[error(
        "{0}: the recording of this execution did not end cleanly (no log length in {INFO}), so its log may be \
         truncated: record it again"
    )]
    Unfinished(PathBuf),
    /// The recording stopped before its workload's end or its `--duration`.
    #[error(
        "{trace}: its recording ended early ({reason}), so its execution log stops at a point no replay can end \
         on: only a recording that ran to its workload's end or its --duration can be retraced; record it again"
    )]
    EndedEarly {
        /// The trace.
        trace: PathBuf,
        /// How it ended.
        reason: String,
    },
    /// The retrace would end past where the log reaches.
    #[error(
        "{trace}: its execution was recorded up to {recorded_s} s of guest time, and a retrace at --interval \
         {interval} would end later ({why}), where the log does not reach: retrace at an interval that divides \
         {recorded_s} s and a second"
    )]
    Beyond {
        /// The trace.
        trace: PathBuf,
        /// The retrace's interval.
        interval: crate::units::HumanDuration,
        /// Where the recording ended, in guest seconds.
        recorded_s: f64,
        /// Where the retrace would end.
        why: String,
    },
    /// This host's QEMU is another version.
    #[error(
        "the execution was recorded with QEMU {recorded}; this host has QEMU {found}: a replay needs the same QEMU \
         (install {recorded}, or name it with DIRTYTRACE_QEMU=PATH)"
    )]
    QemuVersion {
        /// The version recorded.
        recorded: String,
        /// This host's.
        found: String,
    },
}

fn sha256_file(path: &Path) -> Result<String, ExecutionError> {
    use sha2::Digest;
    use std::io::Read;
    let read = |source| ExecutionError::Read { path: path.to_path_buf(), source };
    let mut f = std::fs::File::open(path).map_err(read)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(read)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(crate::units::hex(&h.finalize()))
}

/// The execution being recorded into a trace directory: made before QEMU starts (QEMU writes
/// its log there as it runs), completed by [`Keeper::finish`].
#[derive(Debug)]
pub struct Keeper {
    dir: PathBuf,
    info: ExecutionInfo,
}

impl Keeper {
    /// Makes `trace/execution/` with the initramfs `boot` boots, and says where QEMU writes its
    /// log. `trace` must exist and hold nothing of its own yet.
    pub fn create(trace: &Path, boot: &QemuBoot, qemu_version: &str, icount: &str) -> anyhow::Result<Keeper> {
        let dir = trace.join(DIR);
        std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let Some(QemuKernel::File(kernel)) = &boot.kernel else {
            anyhow::bail!("--keep-execution needs a guest that boots a kernel file")
        };
        let kernel = std::path::absolute(kernel).with_context(|| format!("{}", kernel.display()))?;
        let kernel_sha256 = sha256_file(&kernel)?;
        let p = dir.join(INITRAMFS);
        std::fs::write(&p, &boot.initramfs).with_context(|| format!("cannot write {}", p.display()))?;
        let info = ExecutionInfo {
            qemu_version: qemu_version.into(),
            icount: icount.into(),
            cmdline: boot.cmdline.clone(),
            mem: boot.mem,
            vcpus: boot.vcpus,
            kernel,
            kernel_sha256,
            initramfs_sha256: crate::guest::linux::kit::sha256_hex(&boot.initramfs),
            log_sha256: None,
            log_bytes: None,
            guest_s: None,
            end_ns: None,
            trace_id: String::new(),
        };
        let k = Keeper { dir, info };
        k.store()?;
        Ok(k)
    }

    /// Where QEMU writes its log.
    pub fn log(&self) -> PathBuf {
        self.dir.join(LOG)
    }

    fn store(&self) -> anyhow::Result<()> {
        let p = self.dir.join(INFO);
        let mut text = serde_json::to_string_pretty(&self.info)?;
        text.push('\n');
        std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))
    }

    /// Once QEMU has quit: the log's length and hash, and where (in guest nanoseconds) the
    /// trace ended.
    pub fn finish(mut self, trace_id: &str, end_ns: u64) -> anyhow::Result<()> {
        let log = self.log();
        let bytes = std::fs::metadata(&log).with_context(|| format!("cannot read {}", log.display()))?.len();
        self.info.log_sha256 = Some(sha256_file(&log)?);
        self.info.log_bytes = Some(bytes);
        self.info.guest_s = Some(end_ns as f64 / 1e9);
        self.info.end_ns = Some(end_ns);
        self.info.trace_id = trace_id.into();
        self.store()
    }
}

/// A trace's execution, checked file by file against what was recorded, against this host's
/// QEMU, ready to replay.
#[derive(Debug, Clone)]
pub struct Execution {
    /// What was recorded.
    pub info: ExecutionInfo,
    /// The log.
    pub log: PathBuf,
    /// What QEMU boots.
    pub boot: QemuBoot,
}

/// Reads and checks `trace`'s execution.
pub fn load(trace: &Path) -> Result<Execution, ExecutionError> {
    let dir = trace.join(DIR);
    let info_path = dir.join(INFO);
    if !info_path.exists() {
        return Err(ExecutionError::Missing(trace.to_path_buf()));
    }
    let bytes = crate::files::read_regular(&info_path, MAX_INFO_BYTES, "execution description")
        .map_err(|e| ExecutionError::Info { path: info_path.clone(), msg: format!("{e:#}") })?;
    let info: ExecutionInfo = serde_json::from_slice(&bytes)
        .map_err(|e| ExecutionError::Info { path: info_path.clone(), msg: e.to_string() })?;
    let log = dir.join(LOG);
    let (Some(log_sha256), Some(_)) = (&info.log_sha256, info.log_bytes) else {
        return Err(ExecutionError::Unfinished(info_path));
    };
    for (path, expected) in [
        (info.kernel.clone(), &info.kernel_sha256),
        (dir.join(INITRAMFS), &info.initramfs_sha256),
        (log.clone(), log_sha256),
    ] {
        let found = sha256_file(&path)?;
        if &found != expected {
            return Err(ExecutionError::Changed { path, found, expected: expected.clone() });
        }
    }
    let binary = crate::qemu::binary();
    let found = crate::qemu::version(&binary).map(|v| v.2).unwrap_or_else(|e| format!("none ({e})"));
    if found != info.qemu_version {
        return Err(ExecutionError::QemuVersion { recorded: info.qemu_version.clone(), found });
    }
    let initramfs = std::fs::read(dir.join(INITRAMFS))
        .map_err(|source| ExecutionError::Read { path: dir.join(INITRAMFS), source })?;
    let boot = QemuBoot {
        kernel: Some(QemuKernel::File(info.kernel.clone())),
        initramfs,
        cmdline: info.cmdline.clone(),
        mem: info.mem,
        vcpus: info.vcpus,
        echo_console: false,
        gate: None,
        markers: None,
        // `--keep-execution` refuses a disk.
        disk: None,
    };
    Ok(Execution { info, log, boot })
}

/// The guest of a replay: what the recording booted, described as the recording described it.
pub struct ReplayGuest {
    /// What QEMU boots.
    pub boot: QemuBoot,
    /// The recording's `guest` in its manifest.
    pub described: serde_json::Value,
}

impl Guest for ReplayGuest {
    fn vm_spec(&self) -> VmSpec {
        VmSpec {
            ram: crate::qemu::slots(self.boot.mem).iter().map(|(s, _)| (s.guest_phys_addr, s.size_bytes)).collect(),
            vcpus: self.boot.vcpus,
            irqchip: true,
            dirty_tracking: Default::default(),
        }
    }

    fn prepare(&mut self, _vm: &mut Vm, _log: Arc<GuestLog>) -> anyhow::Result<Arc<dyn Bus>> {
        anyhow::bail!("a recorded execution replays under QEMU only")
    }

    fn describe(&self) -> serde_json::Value {
        self.described.clone()
    }

    fn initial_phase(&self) -> String {
        "boot".into()
    }

    fn loaded_ranges(&self) -> Vec<(u64, u64)> {
        Vec::new()
    }

    fn qemu_boot(&mut self) -> anyhow::Result<Option<QemuBoot>> {
        Ok(Some(self.boot.clone()))
    }
}

/// What `dirtytrace retrace` changes; the rest is the recording's.
#[derive(Debug, Clone, Default)]
pub struct Retrace {
    /// Guest time between harvests; default: the recording's.
    pub interval: Option<Duration>,
    /// The migration speed of the SimGrid columns; default: the recording's.
    pub migration_speed_bytes_per_s: Option<f64>,
    /// Stream the console to stderr as well.
    pub console: bool,
}

/// The options that record `trace`'s execution again into `output`: its guest, RAM, vCPUs
/// and `--duration` as recorded, at the interval and migration speed `changes` says.
pub fn retrace_options(
    trace: &Path,
    changes: &Retrace,
    output: PathBuf,
) -> anyhow::Result<crate::record::RecordOptions> {
    use crate::engine::{ClockChoice, EngineChoice};
    use crate::units::{HumanDuration, HumanRate, HumanSize};
    let manifest = crate::trace::Manifest::load(trace)?;
    if manifest.guest_clock.as_ref().and_then(|c| c.execution.as_ref()).is_none() {
        return Err(ExecutionError::Missing(trace.to_path_buf()).into());
    }
    let mut execution = load(trace)?;
    execution.boot.echo_console = changes.console;
    let interval = changes.interval.unwrap_or(Duration::from_secs_f64(manifest.interval_s));
    let duration = manifest.duration_limit_s.map(Duration::from_secs_f64);
    check_end(trace, &manifest, &execution.info, interval, duration)?;
    let mut opts = crate::record::RecordOptions::new(output);
    let s = &mut opts.settings;
    s.interval = HumanDuration(interval);
    s.duration = duration.map(HumanDuration);
    s.migration_speed = HumanRate(changes.migration_speed_bytes_per_s.unwrap_or(manifest.migration_speed_bytes_per_s));
    s.mem = Some(HumanSize(execution.info.mem));
    s.vcpus = Some(execution.info.vcpus);
    s.engine = EngineChoice::Qemu;
    s.clock = ClockChoice::Guest;
    opts.console = changes.console;
    opts.replay = Some(crate::record::Replay {
        execution,
        described: manifest.guest.clone(),
        trace_id: manifest.trace_id.clone(),
    });
    Ok(opts)
}

/// Refuses a retrace at `interval` that would not end where the recorded log reaches: a recording
/// that ended early (Ctrl-C, a fault), or an interval whose end rule lands past the recording's
/// end. A recording that ended with its workload ended on the first whole guest second (or
/// multiple of its interval, if longer) after the workload's end marker; a retrace at an interval
/// `I` ends on the first multiple of `max(I, 1 s)` after it, which the log reaches if the
/// recording's end is such a multiple. Under `--duration D`, a trace ends on the first multiple
/// of its interval at or after `D`.
fn check_end(
    trace: &Path,
    manifest: &crate::trace::Manifest,
    info: &ExecutionInfo,
    interval: Duration,
    duration: Option<Duration>,
) -> anyhow::Result<()> {
    use crate::trace::EndReason;
    let interval_ns = u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX);
    crate::engine::check_guest_interval(interval_ns).map_err(|e| anyhow::anyhow!("--interval {e}"))?;
    let reason = manifest.end_reason;
    if !matches!(reason, Some(EndReason::WorkloadDone | EndReason::Duration | EndReason::GuestPowerOff)) {
        let reason = reason.map_or_else(|| format!("{:?}", manifest.status), |r| r.to_string());
        return Err(ExecutionError::EndedEarly { trace: trace.to_path_buf(), reason }.into());
    }
    // Recorded before the end rule (no `end_ns`): its guest rebooted at the end, and the last,
    // partial interval is not reproduced.
    let Some(recorded) = info.end_ns else { return Ok(()) };
    let beyond = |why: String| ExecutionError::Beyond {
        trace: trace.to_path_buf(),
        interval: crate::units::HumanDuration(interval),
        recorded_s: recorded as f64 / 1e9,
        why,
    };
    match (reason, duration) {
        (Some(EndReason::Duration), Some(d)) => {
            let d = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
            let end = d.div_ceil(interval_ns).saturating_mul(interval_ns);
            if end > recorded {
                return Err(beyond(format!(
                    "at {} s, the first multiple of the interval after --duration",
                    end as f64 / 1e9
                ))
                .into());
            }
        }
        (Some(EndReason::WorkloadDone), _) => {
            let granule = interval_ns.max(crate::engine::END_GRANULE_NS);
            if !recorded.is_multiple_of(granule) {
                return Err(beyond(format!(
                    "on the first multiple of {} after the workload's end",
                    crate::units::HumanDuration(Duration::from_nanos(granule))
                ))
                .into());
            }
        }
        _ => {}
    }
    Ok(())
}

/// A retrace whose replay QEMU gave up (a log that ends early, or does not match): an error
/// that names the log.
pub fn check_replayed(summary: &crate::record::RecordSummary, log: &Path) -> anyhow::Result<()> {
    if summary.status == crate::trace::TraceStatus::GuestFault {
        anyhow::bail!(
            "replaying {} failed: {}\nthe execution log is damaged or truncated, or this host replays it differently; \
             the {} intervals replayed are in {}",
            log.display(),
            summary.error.as_deref().unwrap_or("the replay stopped"),
            summary.intervals,
            summary.trace_dir.display()
        );
    }
    Ok(())
}
