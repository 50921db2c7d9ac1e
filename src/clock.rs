//! CLOCK_MONOTONIC, read and slept on directly so that deadlines are absolute.

/// Nanoseconds on CLOCK_MONOTONIC.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn to_timespec(ns: u64) -> libc::timespec {
    libc::timespec { tv_sec: (ns / 1_000_000_000) as libc::time_t, tv_nsec: (ns % 1_000_000_000) as libc::c_long }
}

/// Sleeps until CLOCK_MONOTONIC reaches `deadline_ns`. Returns false if a signal cut it short.
pub fn sleep_until(deadline_ns: u64) -> bool {
    let ts = to_timespec(deadline_ns);
    // SAFETY: clock_nanosleep reads the timespec and writes nothing with TIMER_ABSTIME.
    let rc = unsafe { libc::clock_nanosleep(libc::CLOCK_MONOTONIC, libc::TIMER_ABSTIME, &ts, std::ptr::null_mut()) };
    rc == 0
}

/// CPU time consumed by a thread, through its CPU-time clock.
pub fn thread_cpu_ns(clock: libc::clockid_t) -> Option<u64> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the timespec; a stale clock id gives an error, not UB.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// The CPU-time clock of the calling thread.
pub fn current_thread_cpu_clock() -> libc::clockid_t {
    let mut id: libc::clockid_t = 0;
    // SAFETY: pthread_self is always valid for the calling thread; the call writes only `id`.
    unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut id) };
    id
}

/// CPU time the calling thread has used, in nanoseconds.
pub fn this_thread_cpu_ns() -> u64 {
    thread_cpu_ns(libc::CLOCK_THREAD_CPUTIME_ID).unwrap_or(0)
}
