//! Issue 7's defects, one test each, reproducing the original input: no panic, hang, lost
//! interval or deleted user file.

mod common;

use common::*;
use dirtytrace::guest::synthetic::verify::verify;
use dirtytrace::trace::{Trace, TraceStatus};
use std::path::Path;
use std::time::Duration;

/// Defect 1: `bench --work-dir DIR` deleted DIR and everything in it.
#[test]
fn bench_removes_only_what_it_created() {
    let _g = kvm_lock();
    let dir = Scratch::new("bench-workdir");
    let precious = write(&dir, "precious.txt", "keep me");
    std::fs::create_dir(dir.join("sub")).unwrap();
    write(&dir.join("sub"), "also.txt", "keep me too");
    let small_bench = |work_dir: &Path| {
        cli(&[
            "bench",
            "--only",
            "compression",
            "--mem",
            "64MiB",
            "--seconds",
            "0.5",
            "--work-dir",
            work_dir.to_str().unwrap(),
        ])
    };
    let Run { code, stderr, .. } = small_bench(&dir);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");
    assert_eq!(std::fs::read_to_string(dir.join("sub/also.txt")).unwrap(), "keep me too");
    let mut left: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    assert_eq!(left, ["precious.txt", "sub"], "the bench left its own files behind, or removed the user's");
    // A work dir the bench had to create is removed again, since it made it.
    let fresh = dir.join("made-by-bench");
    let Run { code, stderr, .. } = small_bench(&fresh);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!fresh.exists());
}

/// Defect 12: `bench --only bogus` exited 0 having done nothing.
#[test]
fn bench_refuses_an_unknown_step() {
    let Run { code, stderr, .. } = cli(&["bench", "--only", "bogus"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("bogus") && stderr.contains("compression"), "{stderr}");
}

/// Defect 2: `recover` on a trace still being recorded deleted the live journal.
#[test]
fn recover_refuses_a_trace_that_is_being_recorded() {
    let _g = kvm_lock();
    let (child, out) = start_long_recording("recover-live");
    std::thread::sleep(Duration::from_millis(1500));
    let Run { code, stderr, .. } = cli(&["recover", out.to_str().unwrap()]);
    assert_ne!(code, Some(0), "recover ran on a live recording");
    assert!(stderr.contains("is being recorded right now"), "{stderr}");
    assert!(out.join("journal.dtj").exists(), "recover touched the live journal");
    std::thread::sleep(Duration::from_millis(1000));
    signal(&child, nix::sys::signal::Signal::SIGINT);
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130), "{}", String::from_utf8_lossy(&output.stderr));
    let trace = Trace::open(&out).unwrap();
    assert_eq!(trace.manifest.status, TraceStatus::Interrupted);
    let rows = trace.rates().unwrap();
    // About 2.5 s at 50 ms: every interval survived the attempted recover.
    assert!((45..=60).contains(&rows.len()), "{} intervals", rows.len());
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r.interval, i as u64);
    }
    for c in verify(&trace).unwrap() {
        assert_eq!((c.missing, c.missing_cumulative, c.unexpected), (0, 0, 0), "{c:?}");
    }
    // Once finalised, there is nothing to recover, and recover says so without touching it.
    let Run { code, stderr, .. } = cli(&["recover", out.to_str().unwrap()]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("already finalised"), "{stderr}");
    assert_eq!(Trace::open(&out).unwrap().rates().unwrap().len(), rows.len());
}

/// Defect 12: a closed terminal (SIGHUP) left the trace unfinalised.
#[test]
fn sighup_finalises_the_trace_like_sigterm() {
    let _g = kvm_lock();
    let (child, out) = start_long_recording("sighup");
    std::thread::sleep(Duration::from_millis(1000));
    signal(&child, nix::sys::signal::Signal::SIGHUP);
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130), "{}", String::from_utf8_lossy(&output.stderr));
    let trace = Trace::open(&out).unwrap();
    assert_eq!(trace.manifest.status, TraceStatus::Interrupted);
    assert!(trace.rates().unwrap().len() >= 15);
}

/// Defect 6: durations and rates that overflow are refused before anything is recorded, with
/// the flag or key named; none becomes infinity or wraps.
#[test]
fn overflowing_durations_and_rates_are_refused() {
    let dir = Scratch::new("overflow");
    let out = dir.join("out");
    let o = out.to_str().unwrap();
    assert_fails(
        &["record", "--interval", "36028797018963968s", "--output", o],
        &[],
        &["--interval", "longest"],
        &[&out],
    );
    assert_fails(&["record", "--interval", "18446744073.7105s", "--output", o], &[], &["--interval"], &[&out]);
    assert_fails(&["record", "--interval", "2h", "--output", o], &[], &["--interval", "at most 1h"], &[&out]);
    assert_fails(&["record", "--duration", "18446744074.2s", "--output", o], &[], &["--duration"], &[&out]);
    assert_fails(&["record", "--duration", "400days", "--output", o], &[], &["--duration"], &[&out]);
    assert_fails(&["record", "--spin", "1e30s", "--output", o], &[], &["--spin", "longest"], &[&out]);
    assert_fails(&["record", "--spin=-5us", "--output", o], &[], &["--spin", "negative"], &[&out]);
    assert_fails(&["record", "--spin", "nan", "--output", o], &[], &["--spin"], &[&out]);
    assert_fails(
        &["record", "--migration-speed", "1e305TB/s", "--output", o],
        &[],
        &["--migration-speed", "1 PB/s"],
        &[&out],
    );
    let spec =
        write(&dir, "huge-rate.toml", "[[phase]]\nduration = \"1s\"\nworking_set = \"1MiB\"\nrate = \"1e305TB/s\"\n");
    assert_fails(
        &["record", "--workload", spec.to_str().unwrap(), "--output", o],
        &[],
        &["phase[0].rate", "1 PB/s"],
        &[&out],
    );
    let spec =
        write(&dir, "huge-duration.toml", "[[phase]]\nduration = \"1e30s\"\nworking_set = \"1MiB\"\nrate = \"0\"\n");
    assert_fails(
        &["record", "--workload", spec.to_str().unwrap(), "--output", o],
        &[],
        &["phase[0].duration"],
        &[&out],
    );
}
