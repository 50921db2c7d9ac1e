//! The harvest seam: what the sampler asks of a running guest, whichever engine runs it.
//!
//! - [`crate::vmm`]: dirtytrace's own VMM under KVM; a harvest is `KVM_GET_DIRTY_LOG`.
//! - [`crate::qemu`]: `qemu-system-x86_64 -accel tcg` with dirtytrace's plugin, which
//!   write-protects guest RAM with userfaultfd; a harvest is `PAGEMAP_SCAN` on QEMU's pagemap.
//!
//! Both hand the sampler the same thing, one bitmap per RAM slot in KVM's layout (bit `i % 64`
//! of word `i / 64` is the slot's page `i`), so the sampler, the accounting, the journal and the
//! trace format are one for both.

use crate::vmm::{VcpuOutcome, VmmError};

/// Which engine runs the guest (`record --engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineChoice {
    /// `kvm` where dirtytrace's own VMM can run the guest (the synthetic guest on a usable
    /// /dev/kvm; a Linux guest where KVM runs kernel code natively), else `qemu`.
    #[default]
    Auto,
    /// dirtytrace's own VMM under KVM.
    Kvm,
    /// QEMU's TCG emulator with dirtytrace's plugin (Linux guests; no VT-x or AMD-V needed).
    Qemu,
}

impl EngineChoice {
    /// The flag's value as written.
    pub fn as_str(self) -> &'static str {
        match self {
            EngineChoice::Auto => "auto",
            EngineChoice::Kvm => "kvm",
            EngineChoice::Qemu => "qemu",
        }
    }
}

/// Which clock cuts the intervals (`record --clock`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockChoice {
    /// The host's CLOCK_MONOTONIC: intervals of wall time.
    #[default]
    Host,
    /// The guest's own clock under QEMU's instruction counter (QEMU engine, QEMU 7.2, Linux
    /// guests, one vCPU): one instruction per nanosecond plus idle time, cut at the first
    /// instruction at or after each deadline, the same in every replay. The interval must divide
    /// a second or be whole seconds; the trace ends on the first whole guest second after the
    /// workload (the guest idles until then), and --duration is rounded up to a whole interval.
    Guest,
}

impl ClockChoice {
    /// The flag's value as written.
    pub fn as_str(self) -> &'static str {
        match self {
            ClockChoice::Host => "host",
            ClockChoice::Guest => "guest",
        }
    }
}

/// Why a harvest, or another request of the sampler's, failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// dirtytrace's own VMM failed.
    #[error(transparent)]
    Vmm(#[from] VmmError),
    /// The QEMU engine failed.
    #[error(transparent)]
    Qemu(#[from] crate::qemu::QemuError),
    /// Under the guest clock, the guest executed nothing for too long.
    #[error("the guest executed no instruction for {}s of wall time: {hint}", .waited.as_secs())]
    Stalled {
        /// How long it was watched.
        waited: std::time::Duration,
        /// What may be wrong.
        hint: String,
    },
}

/// A cut at a guest-time deadline (`record --clock guest`): the vCPU waits at the first
/// instruction at or after `deadline_ns` of guest time until [`RunningGuest::release_cut`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestCut {
    /// The deadline, in nanoseconds of guest time.
    pub deadline_ns: u64,
    /// The guest time at the instruction where the vCPU waits (past the deadline after idle
    /// time, which passes in jumps).
    pub guest_ns: u64,
    /// Instructions the guest executed before that instruction.
    pub instructions: u64,
}

/// A trace on the guest clock that ends with its workload ends on a whole number of these
/// (a guest second), or of its interval where that is longer: see [`end_after_marker`].
pub const END_GRANULE_NS: u64 = 1_000_000_000;

/// Why an interval does not suit the guest clock.
pub fn check_guest_interval(interval_ns: u64) -> Result<(), String> {
    if interval_ns > 0 && (END_GRANULE_NS.is_multiple_of(interval_ns) || interval_ns.is_multiple_of(END_GRANULE_NS)) {
        return Ok(());
    }
    Err(format!(
        "{} under --clock guest: the interval must divide a second (1ms, 10ms, 100ms, 250ms, ...) or be a whole \
         number of seconds, so that the trace ends on a whole guest second after the workload, whatever the \
         interval of a retrace",
        crate::units::HumanDuration(std::time::Duration::from_nanos(interval_ns))
    ))
}

/// The guest time where a trace on the guest clock ends, at `interval_ns`, when the cut at
/// `deadline_ns` is the first to see the workload's end marker: the first multiple of a whole
/// second (or of the interval, if longer) at or after that cut. For every interval that divides
/// a second this is the same instant, the first whole guest second after the marker, so a
/// retrace at any such interval ends where the recording did.
pub fn end_after_marker(deadline_ns: u64, interval_ns: u64) -> u64 {
    let granule = interval_ns.max(END_GRANULE_NS);
    deadline_ns.div_ceil(granule).saturating_mul(granule)
}

/// After the last cut of a trace on the guest clock, the guest runs on until this much guest
/// time has passed, or until idle time has jumped, before QEMU stops: QEMU's record/replay log
/// writes the instructions executed only at its next event (a timer, an idle jump), so without
/// one after the last cut a replay would stop short of it. The guest's timer tick (250 Hz) is
/// such an event, well within this margin.
pub const END_SETTLE_NS: u64 = 50_000_000;

/// Whether the guest, last seen at `now` (guest time, instructions), has gone far enough past
/// `cut` for QEMU's log to hold the cut's instruction: [`END_SETTLE_NS`] of guest time, or an
/// idle jump (guest time advancing more than the instructions executed).
pub fn settled_after(cut: &GuestCut, now: (u64, u64)) -> bool {
    let (elapsed, executed) = (now.0.saturating_sub(cut.guest_ns), now.1.saturating_sub(cut.instructions));
    elapsed >= END_SETTLE_NS || elapsed > executed
}

/// A guest whose vCPUs run, as the sampler sees it. Implemented by [`crate::vmm::RunningVm`]
/// and [`crate::qemu::RunningQemu`].
pub trait RunningGuest: Send {
    /// The pages every RAM slot had written since the last harvest, one bitmap per slot in
    /// KVM's layout; tracking starts over for the next harvest.
    fn harvest_all(&self) -> Result<Vec<Vec<u64>>, EngineError>;
    /// Reads a u64 the guest publishes at a guest-physical address (progress counters).
    fn read_u64(&self, gpa: u64) -> u64;
    /// CPU time each vCPU has used so far, in nanoseconds.
    fn vcpu_cpu_ns(&self) -> Vec<u64>;
    /// True once the guest has ended on its own (done, or powered off).
    fn all_finished(&self) -> bool;
    /// True once the guest or its engine asked the recording to stop (a fault, a crash).
    fn stop_requested(&self) -> bool;
    /// Holds every vCPU outside the guest, for an exact cut.
    fn pause(&self);
    /// Lets the vCPUs held by [`RunningGuest::pause`] run again.
    fn resume(&self);
    /// The next guest-time cut, waiting at most `timeout`; `None` if there was none by then, or
    /// the engine keeps no guest clock (the default).
    fn wait_cut(&self, _timeout: std::time::Duration) -> Result<Option<GuestCut>, EngineError> {
        Ok(None)
    }
    /// Lets the vCPU waiting at a cut run on.
    fn release_cut(&self) {}
    /// No more guest-time cuts: the vCPU runs on without waiting at deadlines.
    fn end_cuts(&self) {}
    /// True once the guest has said that its workload ended (a Linux guest's `workload_end`
    /// marker), whether or not it has stopped since. At a guest-time cut, true exactly when the
    /// marker came before the cut's instruction.
    fn workload_ended(&self) -> bool {
        false
    }
    /// The guest time and instruction count at the latest instruction, where the engine keeps
    /// a guest clock.
    fn guest_clock_now(&self) -> Option<(u64, u64)> {
        None
    }
    /// Stops the guest for good and says how each vCPU ended. The guest's memory stays
    /// readable for one more harvest.
    fn stop(&mut self) -> Vec<VcpuOutcome>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_ends_on_the_first_whole_second_after_the_marker_at_every_interval_that_divides_one() {
        // The marker written at guest time 2.345 s: the 100 ms cut at 2.4 s and the 10 ms cut
        // at 2.35 s see it first; both traces end at 3 s.
        assert_eq!(end_after_marker(2_400_000_000, 100_000_000), 3_000_000_000);
        assert_eq!(end_after_marker(2_350_000_000, 10_000_000), 3_000_000_000);
        assert_eq!(end_after_marker(3_000_000_000, 1_000_000_000), 3_000_000_000, "a cut on a whole second");
        assert_eq!(end_after_marker(4_000_000_000, 2_000_000_000), 4_000_000_000, "longer intervals end on their own");
        assert!(check_guest_interval(1_000_000).is_ok() && check_guest_interval(250_000_000).is_ok());
        assert!(check_guest_interval(3_000_000_000).is_ok());
        let e = check_guest_interval(300_000_000).unwrap_err();
        assert!(e.starts_with("300ms under --clock guest") && e.contains("divide a second"), "{e}");
        assert!(check_guest_interval(1_500_000_000).is_err());
    }

    #[test]
    fn the_guest_settles_after_a_margin_or_an_idle_jump() {
        let cut = GuestCut { deadline_ns: 3_000_000_000, guest_ns: 3_000_000_010, instructions: 2_000_000_000 };
        assert!(!settled_after(&cut, (3_000_000_010, 2_000_000_000)), "still at the cut");
        assert!(!settled_after(&cut, (3_000_001_010, 2_000_001_000)), "busy for 1 µs");
        assert!(settled_after(&cut, (3_050_000_010, 2_050_000_000)), "busy for the whole margin");
        assert!(settled_after(&cut, (3_000_002_010, 2_000_001_000)), "idle time jumped");
    }
}
