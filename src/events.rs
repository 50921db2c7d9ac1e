//! What a guest reports while it runs: phase marks, its start and end, a panic, notes.
//! The guest's bus writes here; the sampler reads the current phase and hands new events on
//! as the trace's [`GuestEvent`]s (kinds `phase`, `workload_start`, `workload_end`, `done`,
//! `panic`, `note`).

use crate::trace::GuestEvent;
use std::sync::Mutex;
use std::sync::PoisonError;

#[derive(Default)]
struct Inner {
    pending: Vec<GuestEvent>,
    console: Vec<u8>,
    phase: String,
}

/// The guest's log while it runs, shared by its bus (which writes) and the sampler (which
/// reads the phase and takes new events at each harvest).
pub struct GuestLog {
    t0_ns: std::sync::atomic::AtomicU64,
    inner: Mutex<Inner>,
}

impl GuestLog {
    /// A log whose phase is `initial_phase` until the guest marks another.
    pub fn new(initial_phase: &str) -> Self {
        GuestLog {
            t0_ns: std::sync::atomic::AtomicU64::new(crate::clock::now_ns()),
            inner: Mutex::new(Inner { phase: crate::trace::sanitize_name(initial_phase), ..Default::default() }),
        }
    }

    /// Sets time zero of the recording to now.
    pub fn start_clock(&self) -> u64 {
        let now = crate::clock::now_ns();
        self.t0_ns.store(now, std::sync::atomic::Ordering::Release);
        now
    }

    /// Time zero of the recording, on CLOCK_MONOTONIC.
    pub fn t0_ns(&self) -> u64 {
        self.t0_ns.load(std::sync::atomic::Ordering::Acquire)
    }

    fn push(&self, inner: &mut Inner, vcpu: Option<u32>, kind: &str, name: &str, detail: serde_json::Value) {
        let t_s = crate::clock::now_ns().saturating_sub(self.t0_ns()) as f64 / 1e9;
        inner.pending.push(GuestEvent { t_s, vcpu, kind: kind.into(), name: name.into(), detail });
    }

    /// Marks the start of a phase; intervals ending after this carry its name. A name the
    /// trace could not hold (too long, control characters) is made into one it can
    /// ([`crate::trace::sanitize_name`]), so that no interval is refused when it is finalised.
    pub fn mark_phase(&self, vcpu: Option<u32>, name: &str, detail: serde_json::Value) {
        let name = crate::trace::sanitize_name(name);
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.phase = name.clone();
        self.push(&mut inner, vcpu, "phase", &name, detail);
    }

    /// Logs an event of `kind`.
    pub fn record(&self, vcpu: Option<u32>, kind: &str, name: &str, detail: serde_json::Value) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        self.push(&mut inner, vcpu, kind, name, detail);
    }

    /// The current phase.
    pub fn phase(&self) -> String {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).phase.clone()
    }

    /// Bytes the guest wrote to its console.
    pub fn append_console(&self, bytes: &[u8]) {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).console.extend_from_slice(bytes);
    }

    /// The events and console bytes since the last call.
    pub fn take(&self) -> (Vec<GuestEvent>, Vec<u8>) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        (std::mem::take(&mut inner.pending), std::mem::take(&mut inner.console))
    }
}
