//! The sampler owns time: it sleeps to absolute CLOCK_MONOTONIC deadlines, harvests the
//! dirty log of every slot through the engine seam ([`crate::engine::RunningGuest`]), and hands the raw words to the writer. Nothing else happens on
//! this path, so compression and I/O never delay a deadline.

use crate::clock;
use crate::engine::{EngineError, GuestCut, RunningGuest};
use crate::events::GuestLog;
use crate::trace::{EndReason, GuestEvent};
use crate::vmm::VcpuOutcome;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::time::Duration;

/// The longest the sampler sleeps before looking at stop conditions again.
const POLL_NS: u64 = 20_000_000;

/// The sampler's SCHED_FIFO priority: above every normal thread, below the kernel's own
/// real-time threads (which run at 50 and 99).
pub const REALTIME_PRIORITY: u8 = 10;

/// Why the sampler could not have real-time priority.
#[derive(Debug, thiserror::Error)]
pub enum RealtimeError {
    /// The process may not use SCHED_FIFO.
    #[error(
        "no permission for real-time scheduling (SCHED_FIFO needs root, CAP_SYS_NICE, or an RLIMIT_RTPRIO of at \
         least {REALTIME_PRIORITY}: `setcap cap_sys_nice+ep $(which dirtytrace)` or `ulimit -r {REALTIME_PRIORITY}`)"
    )]
    Permission,
    /// The scheduler refused for another reason.
    #[error("cannot set SCHED_FIFO: {0:?}")]
    Other(thread_priority::Error),
}

/// Puts the calling thread under SCHED_FIFO at [`REALTIME_PRIORITY`].
pub fn make_current_thread_realtime() -> Result<(), RealtimeError> {
    use thread_priority::unix::{
        set_thread_priority_and_policy, thread_native_id, RealtimeThreadSchedulePolicy, ThreadSchedulePolicy,
    };
    let value = thread_priority::ThreadPriorityValue::try_from(REALTIME_PRIORITY).expect("10 is a valid priority");
    let policy = ThreadSchedulePolicy::Realtime(RealtimeThreadSchedulePolicy::Fifo);
    match set_thread_priority_and_policy(
        thread_native_id(),
        thread_priority::ThreadPriority::Crossplatform(value),
        policy,
    ) {
        Ok(()) => Ok(()),
        Err(thread_priority::Error::OS(e)) if e == libc::EPERM => Err(RealtimeError::Permission),
        Err(e) => Err(RealtimeError::Other(e)),
    }
}

/// Whether [`make_current_thread_realtime`] would succeed, tried on a thread of its own so
/// that no other thread's scheduling changes.
pub fn probe_realtime() -> Result<(), RealtimeError> {
    std::thread::spawn(make_current_thread_realtime).join().unwrap_or(Err(RealtimeError::Permission))
}

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
    /// The most the sampler wakes before each deadline to watch the clock instead (zero:
    /// never); bounded to a twentieth of the interval, so the spin costs under 5 % of a core.
    pub spin: Duration,
    /// Harvest at the engine's guest-time cuts ([`RunningGuest::wait_cut`]) rather than on
    /// host deadlines: times are then guest time, and a vCPU's "CPU time" is the instructions
    /// it executed (one per nanosecond of guest time).
    pub guest_clock: bool,
    /// Under the guest clock: give up once the guest has executed nothing for this long, with
    /// this hint (a replay, whose log may be damaged).
    pub stall: Option<(Duration, String)>,
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
    /// CPU time the sampler thread used, all of it.
    pub cpu_ns: u64,
}

struct State {
    index: u64,
    last_t_ns: u64,
    last_cpu: Vec<u64>,
}

/// Where a harvest falls.
#[derive(Debug, Clone, Copy)]
enum At {
    /// A host deadline (CLOCK_MONOTONIC).
    Deadline(u64),
    /// A guest-time cut, the vCPU waiting.
    Cut(GuestCut),
    /// The end of the recording: a final, partial interval.
    End,
}

fn harvest(
    vm: &dyn RunningGuest,
    cfg: &SamplerConfig,
    log: &GuestLog,
    st: &mut State,
    at: At,
) -> Result<Harvest, EngineError> {
    let t0 = log.t0_ns();
    let cpu_begin = clock::this_thread_cpu_ns();
    let t_pause = clock::now_ns();
    // A guest-time cut holds the vCPU already.
    if cfg.exact_cut && !cfg.guest_clock {
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
    if cfg.exact_cut && !cfg.guest_clock {
        vm.resume();
    }
    // Under the guest clock, time is the guest's and a vCPU's work its instructions.
    let guest_now = match at {
        At::Cut(c) => Some((c.deadline_ns, c.instructions)),
        At::End if cfg.guest_clock => vm.guest_clock_now().or(Some((st.last_t_ns, st.last_cpu[0]))),
        _ => None,
    };
    let (t_end_ns, cpu) = match guest_now {
        Some((t, instructions)) => (t, vec![instructions]),
        None => (t_h - t0, vm.vcpu_cpu_ns()),
    };
    let (mut events, console) = log.take();
    if let Some((t, _)) = guest_now {
        // The guest clock is read at cuts only: an event is dated by the cut that saw it.
        for e in &mut events {
            e.t_s = t as f64 / 1e9;
        }
    }
    let h = Harvest {
        index: st.index,
        t_start_ns: st.last_t_ns,
        // Never a zero-length interval, even on a coarse clock.
        t_end_ns: t_end_ns.max(st.last_t_ns + 1),
        lateness_ns: match at {
            At::Deadline(d) => t_h.saturating_sub(d),
            // No instruction ran between the deadline and the cut (idle time jumps): on time.
            At::Cut(_) => 0,
            At::End => 0,
        },
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
        partial: matches!(at, At::End),
    };
    st.index += 1;
    st.last_t_ns = h.t_end_ns;
    st.last_cpu = cpu;
    let mut h = h;
    h.sampler_cpu_ns = clock::this_thread_cpu_ns() - cpu_begin;
    Ok(h)
}

/// The default most the sampler spins before a deadline, at intervals up to
/// [`SPIN_INTERVALS_UP_TO`]: above the tens of µs a nested host's timers fire late.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(50);
/// The longest interval that spins by default: beyond it, a timer's lateness is under a
/// fortieth of the interval and costs no deadline.
pub const SPIN_INTERVALS_UP_TO: Duration = Duration::from_millis(2);

/// The sampler's default spin before a deadline for `interval` (`bench --only deadline`
/// measured it: lateness p50 from about 55 µs to under 10 µs at 1 ms).
pub fn default_spin(interval: Duration) -> Duration {
    if interval <= SPIN_INTERVALS_UP_TO {
        DEFAULT_SPIN
    } else {
        Duration::ZERO
    }
}

/// The spin the sampler allows itself before each deadline at `interval`: at most a twentieth
/// of it, so spinning costs under 5 % of a core.
pub fn bounded_spin(spin: Duration, interval: Duration) -> Duration {
    spin.min(interval / 20)
}

/// The spin the sampler uses at `interval` when `requested` (`--spin`) or, without one, the
/// default: the whole spin policy.
pub fn spin_for(requested: Option<Duration>, interval: Duration) -> Duration {
    bounded_spin(requested.unwrap_or_else(|| default_spin(interval)), interval)
}

/// How long before a deadline the sampler wakes, learnt from how late its wake-ups come: a
/// timer here fires tens of µs late (a nested host's timer), so waking that much early and
/// spinning the rest puts the harvest on the deadline for a spin of a few µs. Never more than
/// `cap`.
#[derive(Debug, Clone, Copy)]
struct WakeAdvance {
    cap_ns: u64,
    advance_ns: u64,
}

impl WakeAdvance {
    fn new(cap_ns: u64) -> Self {
        WakeAdvance { cap_ns, advance_ns: 0 }
    }

    fn ns(&self) -> u64 {
        self.advance_ns
    }

    /// Moves an eighth of the way towards a quarter more than the latest wake-up latency.
    fn observe(&mut self, latency_ns: u64) {
        let target = latency_ns.saturating_add(latency_ns / 4).min(self.cap_ns);
        let step = (target.abs_diff(self.advance_ns) / 8).max(1);
        self.advance_ns = if target >= self.advance_ns {
            (self.advance_ns + step).min(target)
        } else {
            self.advance_ns.saturating_sub(step).max(target)
        };
    }
}

/// The deadline after `deadline`, and how many are passed over: when the harvest ran past
/// the next one, it skips to one at least half an interval ahead rather than harvest in a
/// burst, so the sampler always sleeps between harvests, even at real-time priority.
pub fn next_deadline_after(deadline: u64, now: u64, interval_ns: u64) -> (u64, u64) {
    let next = deadline.saturating_add(interval_ns);
    if now < next {
        return (next, 0);
    }
    let mut behind = (now - next) / interval_ns + 1;
    if next.saturating_add(behind.saturating_mul(interval_ns)) - now < interval_ns / 2 {
        behind += 1;
    }
    (next.saturating_add(behind.saturating_mul(interval_ns)), behind)
}

/// Sleeps to absolute deadlines the way the sampler does: in slices, so a stop is seen
/// promptly, waking early by what the host's timers have been late and spinning the rest.
#[derive(Debug, Clone, Copy)]
pub struct DeadlineSleeper {
    advance: WakeAdvance,
}

impl DeadlineSleeper {
    /// A sleeper that spins at most `spin` before each deadline (zero: never).
    pub fn new(spin: Duration) -> Self {
        DeadlineSleeper { advance: WakeAdvance::new(u64::try_from(spin.as_nanos()).unwrap_or(u64::MAX)) }
    }

    /// Returns at `deadline` (on [`clock::now_ns`]'s clock), or early with what `stop` says
    /// once it says something; `stop` is asked at least every 20 ms.
    pub fn sleep_until<T>(&mut self, deadline: u64, mut stop: impl FnMut() -> Option<T>) -> Option<T> {
        loop {
            if let Some(t) = stop() {
                return Some(t);
            }
            let now = clock::now_ns();
            if now >= deadline {
                return None;
            }
            let wake = deadline - self.advance.ns().min(deadline);
            if now >= wake {
                // The last few µs: watch the clock rather than trust the wake-up.
                while clock::now_ns() < deadline {
                    std::hint::spin_loop();
                }
                return None;
            }
            let until = wake.min(now + POLL_NS);
            clock::sleep_until(until);
            if until == wake {
                self.advance.observe(clock::now_ns().saturating_sub(wake));
            }
        }
    }
}

/// Harvests at every guest-time cut the engine makes, until the workload ends, `duration` of
/// guest time passes, `interrupt` is set or the guest stops. Each cut is one interval, exactly
/// `interval` of guest time long; the vCPU waits at it until the harvest is done.
///
/// Once a cut sees the workload's end marker, the trace ends at the cut of
/// [`crate::engine::end_after_marker`] (the guest idles until then): a boundary that does
/// not depend on how long QEMU takes to stop, so a replay ends at the same instruction. With the
/// reason, the cut the trace ended on, if it did (no partial interval follows).
fn run_on_guest_clock(
    vm: &dyn RunningGuest,
    cfg: &SamplerConfig,
    log: &GuestLog,
    st: &mut State,
    out: &SyncSender<Harvest>,
    interrupt: &AtomicBool,
) -> Result<(EndReason, Option<GuestCut>), EngineError> {
    let interval_ns = u64::try_from(cfg.interval.as_nanos()).unwrap_or(u64::MAX).max(1);
    let end_ns = cfg.duration.map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let mut workload_end_ns: Option<u64> = None;
    let mut progress: Option<((u64, u64), std::time::Instant)> = None;
    let end = loop {
        if interrupt.load(Ordering::Acquire) {
            break EndReason::Interrupted;
        }
        let Some(cut) = vm.wait_cut(Duration::from_nanos(POLL_NS))? else {
            if vm.all_finished() {
                break EndReason::WorkloadDone;
            }
            if vm.stop_requested() {
                break EndReason::GuestFault;
            }
            if let (Some((limit, hint)), Some(now)) = (&cfg.stall, vm.guest_clock_now()) {
                match &progress {
                    Some((seen, since)) if *seen == now => {
                        if since.elapsed() > *limit {
                            return Err(EngineError::Stalled { waited: *limit, hint: hint.clone() });
                        }
                    }
                    _ => progress = Some((now, std::time::Instant::now())),
                }
            }
            continue;
        };
        progress = None;
        // Asked while the vCPU waits at the cut: the console then holds exactly what the guest
        // wrote before the cut's instruction.
        let ended = vm.workload_ended();
        let h = harvest(vm, cfg, log, st, At::Cut(cut));
        vm.release_cut();
        if out.send(h?).is_err() {
            return Ok((EndReason::WriterFailed, Some(cut)));
        }
        if end_ns.is_some_and(|e| cut.deadline_ns >= e) {
            return Ok((EndReason::Duration, Some(cut)));
        }
        if workload_end_ns.is_none() && ended {
            workload_end_ns = Some(crate::engine::end_after_marker(cut.deadline_ns, interval_ns));
        }
        if workload_end_ns.is_some_and(|e| cut.deadline_ns >= e) {
            return Ok((EndReason::WorkloadDone, Some(cut)));
        }
    };
    Ok((end, None))
}

/// After the last cut: stops cutting and lets the guest run on until QEMU's log holds the cut's
/// instruction ([`crate::engine::settled_after`]), for at most [`SETTLE_WALL_LIMIT`] of wall
/// time, or until the guest stops by itself.
fn settle_after(vm: &dyn RunningGuest, cut: &GuestCut) {
    vm.end_cuts();
    let t0 = std::time::Instant::now();
    while t0.elapsed() < SETTLE_WALL_LIMIT && !vm.all_finished() && !vm.stop_requested() {
        if vm.guest_clock_now().is_none_or(|now| crate::engine::settled_after(cut, now)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The longest [`settle_after`] waits.
const SETTLE_WALL_LIMIT: Duration = Duration::from_secs(30);

/// Harvests on every deadline until the workload ends, `duration` passes, `interrupt` is set
/// or the guest stops; then stops the vCPUs and takes a final, partial harvest.
pub fn run(
    mut vm: Box<dyn RunningGuest>,
    cfg: &SamplerConfig,
    log: &GuestLog,
    out: &SyncSender<Harvest>,
    interrupt: &AtomicBool,
) -> Result<SamplerResult, EngineError> {
    let cpu_start = clock::this_thread_cpu_ns();
    let t0 = log.t0_ns();
    // Callers bound both (`record`'s checks); saturate rather than wrap regardless.
    let interval_ns = u64::try_from(cfg.interval.as_nanos()).unwrap_or(u64::MAX).max(1);
    let mut sleeper = DeadlineSleeper::new(bounded_spin(cfg.spin, cfg.interval));
    let end_ns = cfg.duration.map(|d| t0.saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)));
    let last_cpu = if cfg.guest_clock { vec![0] } else { vm.vcpu_cpu_ns() };
    let mut st = State { index: 0, last_t_ns: 0, last_cpu };
    let mut next_deadline = t0.saturating_add(interval_ns);
    let mut skipped = 0u64;
    let mut last_cut = None;
    let (end, ended_on_cut) = if cfg.guest_clock {
        let (end, on) = run_on_guest_clock(vm.as_ref(), cfg, log, &mut st, out, interrupt)?;
        last_cut = on;
        (end, on.is_some())
    } else {
        let end = loop {
            let deadline = end_ns.map_or(next_deadline, |e| next_deadline.min(e));
            let stop = sleeper.sleep_until(deadline, || {
                if interrupt.load(Ordering::Acquire) {
                    Some(EndReason::Interrupted)
                } else if vm.all_finished() {
                    Some(EndReason::WorkloadDone)
                } else if vm.stop_requested() {
                    Some(EndReason::GuestFault)
                } else {
                    None
                }
            });
            if let Some(reason) = stop {
                break reason;
            }
            let h = harvest(vm.as_ref(), cfg, log, &mut st, At::Deadline(deadline))?;
            if out.send(h).is_err() {
                break EndReason::WriterFailed;
            }
            if end_ns.is_some_and(|e| deadline >= e) {
                break EndReason::Duration;
            }
            let (next, passed_over) = next_deadline_after(next_deadline, clock::now_ns(), interval_ns);
            next_deadline = next;
            skipped += passed_over;
        };
        (end, matches!(end, EndReason::Duration | EndReason::WriterFailed))
    };
    if let Some(cut) = &last_cut {
        settle_after(vm.as_ref(), cut);
    }
    let outcomes = vm.stop();
    let end = match end {
        EndReason::GuestFault if outcomes.iter().any(|o| matches!(o, VcpuOutcome::PowerOff(_))) => {
            EndReason::GuestPowerOff
        }
        EndReason::WorkloadDone if outcomes.iter().any(|o| matches!(o, VcpuOutcome::Fault(_))) => EndReason::GuestFault,
        // A trace that ended on its guest-clock cut is done whatever comes after: a replay
        // reaching the end of its log replays the recorder's own `quit` as a shutdown.
        EndReason::WorkloadDone
            if last_cut.is_none() && outcomes.iter().any(|o| matches!(o, VcpuOutcome::PowerOff(_))) =>
        {
            EndReason::GuestPowerOff
        }
        e => e,
    };
    // The final harvest keeps the pages dirtied since the last deadline.
    if !ended_on_cut {
        let h = harvest(vm.as_ref(), cfg, log, &mut st, At::End)?;
        let _ = out.send(h);
    }
    Ok(SamplerResult {
        end,
        outcomes,
        intervals: st.index,
        skipped_deadlines: skipped,
        elapsed_ns: st.last_t_ns,
        cpu_ns: clock::this_thread_cpu_ns() - cpu_start,
    })
}

#[cfg(test)]
mod tests {
    use super::WakeAdvance;

    #[test]
    fn the_wake_advance_learns_the_latency_within_its_cap() {
        let mut a = WakeAdvance::new(50_000);
        for _ in 0..200 {
            a.observe(20_000);
        }
        assert_eq!(a.ns(), 25_000, "a quarter more than a steady 20 µs latency");
        for _ in 0..200 {
            a.observe(1_000_000);
        }
        assert_eq!(a.ns(), 50_000, "never beyond the cap");
        for _ in 0..200 {
            a.observe(0);
        }
        assert_eq!(a.ns(), 0, "back to sleeping to the deadline once wake-ups are prompt");
        let mut off = WakeAdvance::new(0);
        off.observe(1_000_000);
        assert_eq!(off.ns(), 0, "a zero cap never spins");
    }

    #[test]
    fn an_overrun_skips_to_a_deadline_half_an_interval_ahead() {
        use super::next_deadline_after as next;
        assert_eq!(next(1000, 1500, 1000), (2000, 0), "on time");
        assert_eq!(next(1000, 2000, 1000), (3000, 1), "exactly at the next deadline: passed over");
        assert_eq!(next(1000, 2400, 1000), (3000, 1));
        assert_eq!(next(1000, 2600, 1000), (4000, 2), "less than half an interval left: one more");
        assert_eq!(next(1000, 10_000, 1000), (11_000, 9));
        assert_eq!(next(u64::MAX - 10, u64::MAX, 1000).0, u64::MAX, "saturates rather than wraps");
    }
}
