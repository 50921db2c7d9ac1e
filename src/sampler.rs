//! The sampler owns time: it sleeps to absolute CLOCK_MONOTONIC deadlines, harvests the
//! dirty log of every slot, and hands the raw words to the writer. Nothing else happens on
//! this path, so compression and I/O never delay a deadline.

use crate::clock;
use crate::events::GuestLog;
use crate::trace::GuestEvent;
use crate::vmm::{RunningVm, VcpuOutcome, VmmError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::time::Duration;

/// The longest the sampler sleeps before looking at stop conditions again.
const POLL_NS: u64 = 20_000_000;

/// What the sampler needs to know.
pub struct SamplerConfig {
    /// Time between harvests.
    pub interval: Duration,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Guest-physical addresses of u64 progress words, read just before and after each harvest.
    pub progress_words: Vec<u64>,
    /// Hold every vCPU outside the guest around each harvest, so the cut is exact.
    pub exact_cut: bool,
}

/// One interval's harvest, as it leaves the sampler: the raw material of one trace row.
#[derive(Debug, Clone, Default)]
pub struct Harvest {
    /// The interval's number.
    pub index: u64,
    /// When the previous harvest began, in nanoseconds since the recording started.
    pub t_start_ns: u64,
    /// When this harvest began, in nanoseconds since the recording started.
    pub t_end_ns: u64,
    /// How late the harvest started after its deadline (0 for a final, early harvest).
    pub lateness_ns: u64,
    /// Time spent inside KVM_GET_DIRTY_LOG, all slots.
    pub ioctl_ns: u64,
    /// How long taking the vCPUs out of the guest took (exact cut only).
    pub pause_ns: u64,
    /// CPU time of the sampler thread inside the ioctl.
    pub ioctl_cpu_ns: u64,
    /// CPU time of the sampler thread on this harvest, all of it.
    pub sampler_cpu_ns: u64,
    /// Raw bitmap words per slot, KVM's layout.
    pub bitmaps: Vec<Vec<u64>>,
    /// CPU time each vCPU used in the interval.
    pub vcpu_cpu_ns: Vec<u64>,
    /// The guest's progress words, read just before the harvest.
    pub progress_before: Vec<u64>,
    /// The guest's progress words, read just after the harvest.
    pub progress_after: Vec<u64>,
    /// The guest's phase at the harvest.
    pub phase: String,
    /// What the guest reported since the last harvest.
    pub events: Vec<GuestEvent>,
    /// Console output since the last harvest.
    pub console: Vec<u8>,
    /// The interval was cut short by the end of the recording.
    pub partial: bool,
}

impl Harvest {
    /// A harvest of interval `index` over `[t_start_ns, t_end_ns]` with these bitmaps, one per
    /// slot; everything else starts empty.
    pub fn new(index: u64, t_start_ns: u64, t_end_ns: u64, bitmaps: Vec<Vec<u64>>) -> Harvest {
        Harvest { index, t_start_ns, t_end_ns, bitmaps, ..Harvest::default() }
    }
}

/// Why the sampler stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
}

impl EndReason {
    /// The name in `manifest.json`'s `end_reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::WorkloadDone => "workload_done",
            EndReason::Duration => "duration",
            EndReason::Interrupted => "interrupted",
            EndReason::GuestPowerOff => "guest_power_off",
            EndReason::GuestFault => "guest_fault",
            EndReason::WriterFailed => "writer_failed",
        }
    }
}

/// How the sampler's run went.
pub struct SamplerResult {
    /// Why it stopped.
    pub end: EndReason,
    /// How each vCPU ended.
    pub outcomes: Vec<VcpuOutcome>,
    /// Harvests taken.
    pub intervals: u64,
    /// Deadlines passed over because the sampler was more than an interval behind.
    pub skipped_deadlines: u64,
    /// Nanoseconds from the start to the last harvest.
    pub elapsed_ns: u64,
}

struct State {
    index: u64,
    last_t_ns: u64,
    last_cpu: Vec<u64>,
}

fn harvest(
    vm: &RunningVm,
    cfg: &SamplerConfig,
    log: &GuestLog,
    st: &mut State,
    deadline_ns: Option<u64>,
) -> Result<Harvest, VmmError> {
    let t0 = log.t0_ns();
    let cpu_begin = clock::this_thread_cpu_ns();
    let t_pause = clock::now_ns();
    if cfg.exact_cut {
        vm.pause();
    }
    let pause_ns = clock::now_ns() - t_pause;
    let progress_before: Vec<u64> = cfg.progress_words.iter().map(|&a| vm.read_u64(a)).collect();
    let t_h = clock::now_ns();
    let cpu_ioctl = clock::this_thread_cpu_ns();
    let bitmaps = vm.harvest_all()?;
    let t_after = clock::now_ns();
    let ioctl_cpu_ns = clock::this_thread_cpu_ns() - cpu_ioctl;
    let progress_after: Vec<u64> = cfg.progress_words.iter().map(|&a| vm.read_u64(a)).collect();
    if cfg.exact_cut {
        vm.resume();
    }
    let cpu = vm.vcpu_cpu_ns();
    let (events, console) = log.take();
    let h = Harvest {
        index: st.index,
        t_start_ns: st.last_t_ns,
        // Never a zero-length interval, even on a coarse clock.
        t_end_ns: (t_h - t0).max(st.last_t_ns + 1),
        lateness_ns: deadline_ns.map_or(0, |d| t_h.saturating_sub(d)),
        ioctl_ns: t_after - t_h,
        ioctl_cpu_ns,
        pause_ns,
        sampler_cpu_ns: 0,
        bitmaps,
        vcpu_cpu_ns: cpu.iter().zip(&st.last_cpu).map(|(a, b)| a.saturating_sub(*b)).collect(),
        progress_before,
        progress_after,
        phase: log.phase(),
        events,
        console,
        partial: deadline_ns.is_none(),
    };
    st.index += 1;
    st.last_t_ns = h.t_end_ns;
    st.last_cpu = cpu;
    let mut h = h;
    h.sampler_cpu_ns = clock::this_thread_cpu_ns() - cpu_begin;
    Ok(h)
}

/// Harvests on every deadline until the workload ends, `duration` passes, `interrupt` is set
/// or the guest stops; then stops the vCPUs and takes a final, partial harvest.
pub fn run(
    mut vm: RunningVm,
    cfg: &SamplerConfig,
    log: &GuestLog,
    out: &Sender<Harvest>,
    interrupt: &AtomicBool,
) -> Result<SamplerResult, VmmError> {
    let t0 = log.t0_ns();
    // Callers bound both (`record`'s checks); saturate rather than wrap regardless.
    let interval_ns = u64::try_from(cfg.interval.as_nanos()).unwrap_or(u64::MAX).max(1);
    let end_ns = cfg.duration.map(|d| t0.saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)));
    let mut st = State { index: 0, last_t_ns: 0, last_cpu: vm.vcpu_cpu_ns() };
    let mut next_deadline = t0.saturating_add(interval_ns);
    let mut skipped = 0u64;
    let end = loop {
        let deadline = end_ns.map_or(next_deadline, |e| next_deadline.min(e));
        // Sleep to the deadline in slices, so a finished guest or Ctrl-C is seen promptly.
        let stop = loop {
            if interrupt.load(Ordering::Acquire) {
                break Some(EndReason::Interrupted);
            }
            if vm.all_finished() {
                break Some(EndReason::WorkloadDone);
            }
            if vm.stop_requested() {
                break Some(EndReason::GuestFault);
            }
            let now = clock::now_ns();
            if now >= deadline {
                break None;
            }
            clock::sleep_until(deadline.min(now + POLL_NS));
        };
        if let Some(reason) = stop {
            break reason;
        }
        let h = harvest(&vm, cfg, log, &mut st, Some(deadline))?;
        if out.send(h).is_err() {
            break EndReason::WriterFailed;
        }
        if end_ns.is_some_and(|e| deadline >= e) {
            break EndReason::Duration;
        }
        next_deadline = next_deadline.saturating_add(interval_ns);
        let now = clock::now_ns();
        if now >= next_deadline {
            // Far behind: skip to the next deadline in the future rather than harvest in a burst.
            let behind = (now - next_deadline) / interval_ns + 1;
            skipped += behind;
            next_deadline = next_deadline.saturating_add(behind.saturating_mul(interval_ns));
        }
    };
    let outcomes = vm.stop();
    let end = match end {
        EndReason::GuestFault if outcomes.iter().any(|o| matches!(o, VcpuOutcome::PowerOff(_))) => {
            EndReason::GuestPowerOff
        }
        EndReason::WorkloadDone if outcomes.iter().any(|o| matches!(o, VcpuOutcome::Fault(_))) => EndReason::GuestFault,
        EndReason::WorkloadDone if outcomes.iter().any(|o| matches!(o, VcpuOutcome::PowerOff(_))) => {
            EndReason::GuestPowerOff
        }
        e => e,
    };
    // The final harvest keeps the pages dirtied since the last deadline.
    if !matches!(end, EndReason::Duration | EndReason::WriterFailed) {
        let h = harvest(&vm, cfg, log, &mut st, None)?;
        let _ = out.send(h);
    }
    Ok(SamplerResult { end, outcomes, intervals: st.index, skipped_deadlines: skipped, elapsed_ns: st.last_t_ns })
}
