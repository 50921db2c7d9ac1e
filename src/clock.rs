//! CLOCK_MONOTONIC, read and slept on directly so that deadlines are absolute.

use nix::sys::time::TimeSpec;
use nix::time::{clock_gettime, clock_nanosleep, ClockId, ClockNanosleepFlags};

fn ns(ts: TimeSpec) -> u64 {
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// Nanoseconds on CLOCK_MONOTONIC.
pub fn now_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC).map(ns).unwrap_or(0)
}

/// Sleeps until CLOCK_MONOTONIC reaches `deadline_ns`. Returns false if a signal cut it short.
pub fn sleep_until(deadline_ns: u64) -> bool {
    let ts = TimeSpec::new((deadline_ns / 1_000_000_000) as _, (deadline_ns % 1_000_000_000) as _);
    clock_nanosleep(ClockId::CLOCK_MONOTONIC, ClockNanosleepFlags::TIMER_ABSTIME, &ts).is_ok()
}

/// A thread's CPU-time clock, as glibc's `pthread_getcpuclockid` makes it from a thread id:
/// the kernel's `MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)`.
pub fn thread_cpu_clock(tid: i32) -> ClockId {
    ClockId::from_raw(((!(tid as libc::clockid_t)) << 3) | 6)
}

/// The CPU-time clock of the calling thread, usable from other threads.
pub fn current_thread_cpu_clock() -> ClockId {
    thread_cpu_clock(nix::unistd::gettid().as_raw())
}

/// CPU time a thread has used, through its CPU-time clock; `None` once the thread is gone.
pub fn thread_cpu_ns(clock: ClockId) -> Option<u64> {
    clock_gettime(clock).ok().map(ns)
}

/// CPU time the calling thread has used, in nanoseconds.
pub fn this_thread_cpu_ns() -> u64 {
    thread_cpu_ns(ClockId::CLOCK_THREAD_CPUTIME_ID).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn thread_clock_matches_the_thread_s_own() {
        let clock = super::current_thread_cpu_clock();
        // Spin on CPU time, not wall time, so a busy machine cannot shorten the spin.
        let start = super::this_thread_cpu_ns();
        while super::this_thread_cpu_ns() - start < 20_000_000 {}
        let (a, own, b) =
            (super::thread_cpu_ns(clock).unwrap(), super::this_thread_cpu_ns(), super::thread_cpu_ns(clock).unwrap());
        assert!(a <= own && own <= b, "{a} {own} {b}");
        assert!(a >= start + 20_000_000, "{a} {start}");
    }
}
