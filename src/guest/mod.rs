//! Guests: ways to fill memory, set the vCPUs' entry state and answer exits.
//! The VMM, the sampler and the trace writer do not know which kind is running.

pub mod linux;
pub mod synthetic;

use crate::events::GuestLog;
use crate::trace::PageRange;
use crate::vmm::{Bus, Vm, VmSpec};
use std::sync::Arc;

pub trait Guest {
    /// `synthetic` or `linux`.
    fn kind(&self) -> &'static str;
    fn vm_spec(&self) -> VmSpec;
    /// Loads memory and sets every vCPU's state; returns the bus that answers its exits.
    fn prepare(&mut self, vm: &mut Vm, log: Arc<GuestLog>) -> anyhow::Result<Arc<dyn Bus>>;
    /// The guest's configuration, for the manifest.
    fn describe(&self) -> serde_json::Value;
    /// The phase name intervals carry before the guest marks one.
    fn initial_phase(&self) -> String;
    /// Guest-physical addresses of u64 progress words the sampler reads around each harvest.
    fn progress_words(&self) -> Vec<u64> {
        Vec::new()
    }
    /// Pages the guest itself may dirty besides its workload.
    fn own_pages(&self) -> Vec<u64> {
        Vec::new()
    }
    /// How long the workload runs, where the guest knows.
    fn expected_duration(&self) -> Option<std::time::Duration> {
        None
    }
    /// Guest-physical byte ranges the VMM filled before the start; scanned for non-zero pages.
    fn loaded_ranges(&self) -> Vec<(u64, u64)>;
}

/// Pages in `ranges` holding anything but zeroes.
pub fn nonzero_pages(vm: &Vm, ranges: &[(u64, u64)]) -> Vec<PageRange> {
    use vm_memory::{Bytes, GuestAddress};
    let mut out: Vec<PageRange> = Vec::new();
    let mut page = vec![0u8; 4096];
    for &(start, len) in ranges {
        let first = start / 4096;
        let last = (start + len).div_ceil(4096);
        for p in first..last {
            if vm.memory.read_slice(&mut page, GuestAddress(p * 4096)).is_err() || page.iter().all(|&b| b == 0) {
                continue;
            }
            match out.last_mut() {
                Some(r) if r.first + r.count == p => r.count += 1,
                _ => out.push(PageRange { first: p, count: 1 }),
            }
        }
    }
    out
}
