//! Which CPUs the recorder's own threads and the guest's vCPUs run on. A real-time sampler
//! wakes on the CPU it last ran on, which is often a vCPU's: each wake-up would then preempt
//! the guest, and under shadow paging a preempted vCPU is slow to resume. So where the process
//! may use more CPUs than the guest has vCPUs, the sampler and the trace writer share one CPU
//! (the housekeeping CPU) and the vCPUs get the others.

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// A split of the CPUs this process may use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuPlan {
    /// The CPU of the sampler and the trace writer.
    pub housekeeping: usize,
    /// The CPUs of the vCPU threads.
    pub guest: Vec<usize>,
}

/// The CPUs the calling thread may run on (its affinity, which `taskset` or a batch system
/// may have narrowed).
pub fn allowed() -> Vec<usize> {
    match sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count()).filter(|&c| set.is_set(c).unwrap_or(false)).collect(),
        Err(_) => Vec::new(),
    }
}

/// The split for a guest of `vcpus` vCPUs: the last allowed CPU for housekeeping, the rest for
/// the guest; `None` when there are no more CPUs than vCPUs (the guest keeps them all).
pub fn plan(vcpus: usize) -> Option<CpuPlan> {
    let cpus = allowed();
    let (&housekeeping, guest) = cpus.split_last()?;
    (guest.len() >= vcpus.max(1)).then(|| CpuPlan { housekeeping, guest: guest.to_vec() })
}

/// Restricts the calling thread to `cpus`.
pub fn pin_current_thread(cpus: &[usize]) -> nix::Result<()> {
    let mut set = CpuSet::new();
    for &c in cpus {
        set.set(c)?;
    }
    sched_setaffinity(Pid::from_raw(0), &set)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_plan_splits_the_allowed_cpus() {
        let cpus = super::allowed();
        assert!(!cpus.is_empty());
        match super::plan(1) {
            Some(p) => {
                assert_eq!(p.housekeeping, *cpus.last().unwrap());
                assert_eq!(p.guest, cpus[..cpus.len() - 1]);
            }
            None => assert_eq!(cpus.len(), 1),
        }
        assert_eq!(super::plan(cpus.len()), None, "as many vCPUs as CPUs: no split");
    }
}
