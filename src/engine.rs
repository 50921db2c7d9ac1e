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
    /// instruction at or after each deadline, the same in every replay.
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
    /// The guest time and instruction count at the latest instruction, where the engine keeps
    /// a guest clock.
    fn guest_clock_now(&self) -> Option<(u64, u64)> {
        None
    }
    /// Stops the guest for good and says how each vCPU ended. The guest's memory stays
    /// readable for one more harvest.
    fn stop(&mut self) -> Vec<VcpuOutcome>;
}
