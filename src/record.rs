//! `dirtytrace record`: guest → VM → sampler → trace writer, wired together.

use crate::events::GuestLog;
use crate::guest::{self, linux, synthetic, Guest};
use crate::sampler::{self, EndReason, SamplerConfig};
use crate::trace::{self, Manifest, TraceStatus, TraceWriter, WriterOptions, WriterProgress};
use crate::vmm::{self, VcpuOutcome, Vm};
use anyhow::{bail, Context};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

pub const MIN_INTERVAL: Duration = Duration::from_millis(1);
/// zstd level of the bitmaps: level 1 compresses sparse bitmaps as well as 3, faster.
pub const ZSTD_LEVEL: i32 = 1;

pub struct RecordOptions {
    /// A `.toml` synthetic workload spec; `None` runs the built-in default.
    pub workload: Option<PathBuf>,
    pub interval: Duration,
    pub duration: Option<Duration>,
    pub mem: Option<u64>,
    pub vcpus: Option<u32>,
    pub migration_speed: f64,
    pub output: PathBuf,
    pub kvm_device: PathBuf,
    pub zstd_level: i32,
    /// Run without dirty logging (bitmaps stay empty): the baseline of the slowdown benchmark.
    pub untracked: bool,
    pub linux: LinuxRecordOptions,
    /// Pause the vCPUs around each harvest for an exact cut (costs guest time).
    pub exact_cut: bool,
}

impl RecordOptions {
    pub fn new(output: PathBuf) -> Self {
        RecordOptions {
            workload: None,
            interval: Duration::from_millis(100),
            duration: None,
            mem: None,
            vcpus: None,
            migration_speed: 125_000_000.0,
            output,
            kvm_device: vmm::kvm_device_path(),
            zstd_level: ZSTD_LEVEL,
            untracked: false,
            linux: LinuxRecordOptions::default(),
            exact_cut: false,
        }
    }
}

/// How a recording went, as `record` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct RecordSummary {
    pub trace_dir: PathBuf,
    pub trace_id: String,
    pub status: TraceStatus,
    pub end_reason: String,
    pub error: Option<String>,
    pub intervals: u64,
    pub duration_s: f64,
    pub ramsize_bytes: u64,
    pub mean_dirty_rate_bytes_per_s: f64,
    pub max_dirty_rate_bytes_per_s: f64,
    pub distinct_pages: u64,
    pub mean_cpu_util: f64,
    pub harvest_lateness_p50_s: f64,
    pub harvest_lateness_p99_s: f64,
    pub harvest_lateness_max_s: f64,
    pub harvest_ioctl_p50_s: f64,
    pub missed_deadlines: u64,
    pub mean_interval_s: f64,
    /// The guest's own exit status, where it reported one.
    pub guest_exit_status: Option<i32>,
    /// Where the recorder's time went, per interval (not kept in the trace).
    pub cost: Option<HarvestCost>,
    /// Seconds from the start of `record` to the guest's first instruction (guest build,
    /// initramfs included).
    pub setup_s: Option<f64>,
}

/// Mean seconds per interval spent inside KVM and in the recorder's own work.
#[derive(Debug, Clone, Serialize)]
pub struct HarvestCost {
    pub ioctl_mean_s: f64,
    pub sampler_own_mean_s: f64,
    pub compress_mean_s: f64,
    pub persist_mean_s: f64,
    /// Taking the vCPUs out of the guest, per harvest (`--exact-cut` only).
    pub pause_mean_s: f64,
    /// (sampler own + compress + persist) / ioctl.
    pub own_over_ioctl: f64,
}

impl HarvestCost {
    pub fn from_stats(s: &trace::WriterStats) -> Self {
        let mean = |v: &[u64]| if v.is_empty() { 0.0 } else { v.iter().sum::<u64>() as f64 / v.len() as f64 / 1e9 };
        let (ioctl, own, compress, persist) =
            (mean(&s.ioctl_ns), mean(&s.sampler_own_ns), mean(&s.compress_ns), mean(&s.persist_ns));
        HarvestCost {
            ioctl_mean_s: ioctl,
            sampler_own_mean_s: own,
            compress_mean_s: compress,
            persist_mean_s: persist,
            pause_mean_s: mean(&s.pause_ns),
            own_over_ioctl: if ioctl > 0.0 { (own + compress + persist) / ioctl } else { 0.0 },
        }
    }
}

/// Linux-guest settings of `record`, used when the workload is a `.sh` script.
#[derive(Debug, Clone, Default)]
pub struct LinuxRecordOptions {
    pub kernel: Option<PathBuf>,
    /// `HOST_PATH:GUEST_PATH` extras for the initramfs.
    pub files: Vec<String>,
    pub cmdline: Option<String>,
    pub console: bool,
    pub force_bzimage: bool,
    /// `--rootfs`: a directory or tarball packed into the initramfs.
    pub rootfs: Option<PathBuf>,
    /// `--package`: Debian packages (and dependencies) packed into the initramfs.
    pub packages: Vec<String>,
    /// `--allow-emulated-kernel`: boot the kit's kernel on a host that emulates kernel code.
    pub allow_emulated_kernel: bool,
}

pub const LINUX_DEFAULT_MEM: u64 = 2 << 30;

pub fn load_guest(opts: &RecordOptions) -> anyhow::Result<Box<dyn Guest>> {
    let (text, _source) = match &opts.workload {
        None => (synthetic::spec::DEFAULT_SPEC.to_string(), "built-in default".to_string()),
        Some(p) => {
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            if ext == "sh" {
                if !p.is_file() {
                    bail!("workload script {} does not exist", p.display());
                }
                let files =
                    opts.linux.files.iter().map(|f| linux::initramfs::parse_extra(f)).collect::<Result<_, _>>()?;
                let guest = linux::LinuxGuest::new(linux::LinuxOptions {
                    script: p.clone(),
                    kernel: opts.linux.kernel.clone(),
                    files,
                    mem: opts.mem.unwrap_or(LINUX_DEFAULT_MEM),
                    vcpus: opts.vcpus.unwrap_or(1),
                    cmdline_extra: opts.linux.cmdline.clone(),
                    console: opts.linux.console,
                    force_bzimage: opts.linux.force_bzimage,
                    rootfs: opts.linux.rootfs.clone(),
                    packages: opts.linux.packages.clone(),
                    kvm_device: opts.kvm_device.clone(),
                    allow_emulated_kernel: opts.linux.allow_emulated_kernel,
                })?;
                return Ok(Box::new(guest));
            }
            if ext != "toml" {
                bail!("{}: a workload is a synthetic spec (.toml) or a Linux workload script (.sh)", p.display());
            }
            let text = std::fs::read_to_string(p).with_context(|| format!("cannot read workload {}", p.display()))?;
            (text, p.display().to_string())
        }
    };
    let spec = synthetic::spec::WorkloadSpec::parse(&text, opts.mem, opts.vcpus).map_err(|e| match &opts.workload {
        Some(p) => anyhow::anyhow!("{}: {e}", p.display()),
        None => anyhow::anyhow!("built-in spec: {e}"),
    })?;
    Ok(Box::new(synthetic::SyntheticGuest::new(spec, text)?))
}

fn validate(opts: &RecordOptions) -> anyhow::Result<()> {
    if opts.interval < MIN_INTERVAL {
        bail!("--interval must be at least 1ms, got {:?}", opts.interval);
    }
    if opts.duration.is_some_and(|d| d.is_zero()) {
        bail!("--duration must be longer than 0");
    }
    if opts.migration_speed.is_nan() || opts.migration_speed <= 0.0 {
        bail!("--migration-speed must be greater than 0");
    }
    Ok(())
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
    b.iter().map(|x| format!("{x:02x}")).collect()
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

/// Records a trace. `interrupt` set (by Ctrl-C) ends it early with a complete trace.
pub fn record(
    opts: &RecordOptions,
    interrupt: Arc<AtomicBool>,
    progress: Option<WriterProgress>,
) -> anyhow::Result<RecordSummary> {
    let t_begin = crate::clock::now_ns();
    validate(opts)?;
    let mut guest = load_guest(opts)?;
    let kvm = vmm::open_kvm(&opts.kvm_device)?;
    let mut spec = guest.vm_spec();
    spec.dirty_log = !opts.untracked;
    let mut vm = Vm::create(kvm, &spec)?;
    let log = Arc::new(GuestLog::new(&guest.initial_phase()));
    let bus = guest.prepare(&mut vm, log.clone())?;
    let initial_nonzero = guest::nonzero_pages(&vm, &guest.loaded_ranges());
    trace::writer_prepare_dir(&opts.output).map_err(anyhow::Error::msg)?;

    let ramsize = vm.ram_bytes();
    let (host_kernel, host_name) = host_info();
    let manifest = Manifest {
        format_version: trace::FORMAT_VERSION,
        trace_id: new_trace_id(),
        status: TraceStatus::Recording,
        end_reason: None,
        error: None,
        tool: "dirtytrace".into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        host_kernel,
        host_name,
        start_unix_s: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
        interval_s: opts.interval.as_secs_f64(),
        duration_limit_s: opts.duration.map(|d| d.as_secs_f64()),
        page_size: vmm::PAGE_SIZE,
        ramsize_bytes: ramsize,
        vcpus: vm.vcpus.len() as u32,
        migration_speed_bytes_per_s: opts.migration_speed,
        working_set_window_s: ramsize as f64 / opts.migration_speed,
        slots: vm.slots.clone(),
        exact_cut: opts.exact_cut,
        guest: guest.describe(),
        guest_own_pages: guest.own_pages(),
        initial_nonzero_pages: initial_nonzero,
        timing: Default::default(),
        intervals: 0,
    };
    let writer = TraceWriter::create(
        WriterOptions { dir: opts.output.clone(), zstd_level: opts.zstd_level },
        manifest,
        progress,
    )
    .map_err(anyhow::Error::msg)?;

    let cfg = SamplerConfig {
        interval: opts.interval,
        duration: opts.duration,
        progress_words: guest.progress_words(),
        exact_cut: opts.exact_cut,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let writer_thread = std::thread::Builder::new().name("trace-writer".into()).spawn(move || {
        let mut writer = writer;
        for h in rx {
            if let Err(e) = writer.append(h) {
                return (writer, Some(e));
            }
        }
        (writer, None)
    })?;
    vm.clear_dirty_log()?;
    log.start_clock();
    let running = vm.start(bus)?;
    let setup_s = (crate::clock::now_ns() - t_begin) as f64 / 1e9;
    let result = sampler::run(running, &cfg, &log, &tx, &interrupt);
    drop(tx);
    let (writer, write_error) = writer_thread.join().map_err(|_| anyhow::anyhow!("the trace writer panicked"))?;
    let result = result?;

    let fault = result.outcomes.iter().find_map(|o| match o {
        VcpuOutcome::Fault(f) => Some(f.to_string()),
        _ => None,
    });
    let exit_status = result.outcomes.iter().find_map(|o| match o {
        VcpuOutcome::PowerOff(s) => Some(*s),
        _ => None,
    });
    let status = match result.end {
        EndReason::Interrupted => TraceStatus::Interrupted,
        EndReason::GuestFault if fault.is_some() => TraceStatus::GuestFault,
        _ => TraceStatus::Complete,
    };
    let end_name = serde_json::to_value(result.end).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
    let dir = writer.dir().to_path_buf();
    let error = write_error.clone().or_else(|| fault.clone());
    let (manifest, stats) = writer.finish(status, &end_name, error.clone()).map_err(|e| {
        anyhow::anyhow!("{e}\nthe intervals recorded so far are in {}'s journal: free the problem, then run `dirtytrace recover {}`", dir.display(), dir.display())
    })?;
    if let Some(e) = write_error {
        bail!("writing the trace failed: {e}\n{} intervals were kept in {}", manifest.intervals, dir.display());
    }
    let mut summary = summarize_recording(&dir, exit_status)?;
    summary.cost = Some(HarvestCost::from_stats(&stats));
    summary.setup_s = Some(setup_s);
    Ok(summary)
}

/// The summary `record` prints, read back from the finished trace.
pub fn summarize_recording(dir: &Path, guest_exit_status: Option<i32>) -> anyhow::Result<RecordSummary> {
    let t = trace::Trace::open(dir)?;
    let rows = t.rates()?;
    let m = &t.manifest;
    let duration_s = rows.last().map_or(0.0, |r| r.t_end_s);
    let total_bytes: u64 = rows.iter().map(|r| r.dirty_bytes).sum();
    let cpu_time: f64 = rows.iter().map(|r| r.cpu_util * r.duration_s).sum();
    Ok(RecordSummary {
        trace_dir: dir.to_path_buf(),
        trace_id: m.trace_id.clone(),
        status: m.status,
        end_reason: m.end_reason.clone().unwrap_or_default(),
        error: m.error.clone(),
        intervals: rows.len() as u64,
        duration_s,
        ramsize_bytes: m.ramsize_bytes,
        mean_dirty_rate_bytes_per_s: if duration_s > 0.0 { total_bytes as f64 / duration_s } else { 0.0 },
        max_dirty_rate_bytes_per_s: rows
            .iter()
            .filter(|r| !r.partial)
            .map(|r| r.dirty_rate_bytes_per_s)
            .fold(0.0, f64::max),
        distinct_pages: rows.last().map_or(0, |r| r.distinct_pages_total),
        mean_cpu_util: if duration_s > 0.0 { cpu_time / duration_s } else { 0.0 },
        harvest_lateness_p50_s: m.timing.lateness_p50_s,
        harvest_lateness_p99_s: m.timing.lateness_p99_s,
        harvest_lateness_max_s: m.timing.lateness_max_s,
        harvest_ioctl_p50_s: m.timing.ioctl_p50_s,
        missed_deadlines: m.timing.missed_deadlines,
        mean_interval_s: m.timing.mean_interval_s,
        guest_exit_status,
        cost: None,
        setup_s: None,
    })
}
