//! Guests: ways to fill memory, set the vCPUs' entry state and answer exits.
//! The VMM, the sampler and the trace writer do not know which kind is running.

pub mod linux;
pub mod probe;
pub mod synthetic;

use crate::events::GuestLog;
use crate::trace::PageRange;
use crate::vmm::{Bus, Vm, VmSpec};
use std::sync::Arc;

/// A way to fill a VM's memory, set its vCPUs' entry state and answer its exits.
pub trait Guest {
    /// The VM it needs: RAM ranges, vCPUs, irqchip.
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
    /// What the QEMU engine boots for this guest; `None`: the guest runs only under the own
    /// VMM; an error: this guest, as configured, cannot run under QEMU.
    fn qemu_boot(&mut self) -> anyhow::Result<Option<crate::qemu::QemuBoot>> {
        Ok(None)
    }
}

/// Pages in `ranges` holding anything but zeroes.
pub fn nonzero_pages(vm: &Vm, ranges: &[(u64, u64)]) -> Vec<PageRange> {
    use crate::units::PAGE_SIZE;
    use vm_memory::{Bytes, GuestAddress};
    const CHUNK: u64 = 2 << 20;
    let mut out: Vec<PageRange> = Vec::new();
    let mut buf = vec![0u8; CHUNK as usize];
    for &(start, len) in ranges {
        let (first, last) = (start / PAGE_SIZE, (start + len).div_ceil(PAGE_SIZE));
        let mut page = first;
        while page < last {
            let n = (last - page).min(CHUNK / PAGE_SIZE);
            let chunk = &mut buf[..(n * PAGE_SIZE) as usize];
            if vm.memory.read_slice(chunk, GuestAddress(page * PAGE_SIZE)).is_ok() {
                for (i, p) in chunk.chunks_exact(PAGE_SIZE as usize).enumerate() {
                    if p.iter().any(|&b| b != 0) {
                        let p = page + i as u64;
                        match out.last_mut() {
                            Some(r) if r.first + r.count == p => r.count += 1,
                            _ => out.push(PageRange { first: p, count: 1 }),
                        }
                    }
                }
            }
            page += n;
        }
    }
    out
}
