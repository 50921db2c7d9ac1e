//! Ctrl-C and SIGKILL in the middle of a recording keep every harvested interval.

mod common;

use common::*;
use dirtytrace::guest::synthetic::verify::verify;
use dirtytrace::trace::{Trace, TraceError, TraceStatus};
use std::process::Command;
use std::time::Duration;

fn assert_all_exact(trace: &Trace) {
    for c in verify(trace).unwrap() {
        assert_eq!((c.missing, c.missing_cumulative, c.unexpected), (0, 0, 0), "{c:?}");
    }
}

#[test]
fn sigint_leaves_a_complete_trace() {
    let _g = kvm_lock();
    let (child, out) = start_long_recording("sigint");
    std::thread::sleep(Duration::from_millis(1500));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130), "{}", String::from_utf8_lossy(&output.stderr));
    let trace = Trace::open(&out).unwrap();
    assert_eq!(trace.manifest.status, TraceStatus::Interrupted);
    let rows = trace.rates().unwrap();
    assert!((20..=40).contains(&rows.len()), "{} intervals in ~1.5 s at 50 ms", rows.len());
    assert!(rows.last().unwrap().partial);
    assert_eq!(trace.bitmaps().unwrap().count(), rows.len());
    assert_all_exact(&trace);
}

#[test]
fn sigkill_then_recover_keeps_every_interval() {
    let _g = kvm_lock();
    let (mut child, out) = start_long_recording("sigkill");
    std::thread::sleep(Duration::from_millis(2500));
    child.kill().unwrap();
    child.wait().unwrap();
    match Trace::open(&out) {
        Err(e @ TraceError::NotFinalised(_)) => assert!(e.to_string().contains("dirtytrace recover")),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a killed trace opened as if finished"),
    }
    let status = Command::new(bin()).args(["recover", out.to_str().unwrap()]).status().unwrap();
    assert!(status.success());
    let trace = Trace::open(&out).unwrap();
    assert_eq!(trace.manifest.status, TraceStatus::Recovered);
    let rows = trace.rates().unwrap();
    // Every interval harvested up to a second before the kill: (2.5 s - 1 s) / 50 ms.
    assert!(rows.len() >= 30, "only {} intervals survived", rows.len());
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r.interval, i as u64);
    }
    assert_eq!(trace.bitmaps().unwrap().count(), rows.len());
    assert_eq!(trace.bitmap(rows.len() as u64 / 2).unwrap().interval, rows.len() as u64 / 2);
    assert_all_exact(&trace);
}
