//! `--realtime`: the sampler thread's scheduling, as the manifest records it. These tests run
//! as root (as CI does); `setpriv` takes CAP_SYS_NICE away to show the unprivileged case. No
//! timings are asserted here: `bench --only deadline` measures what the policy buys.

mod common;

use common::*;
use dirtytrace::trace::{SamplerScheduling, SchedPolicy, Trace};
use std::path::Path;
use std::process::Command;

const SPEC: &str = "mem = \"64MiB\"\n[[phase]]\nduration = \"0.3s\"\nworking_set = \"4MiB\"\nrate = \"8MiB/s\"\n";

/// Records the spec with `args`, optionally without CAP_SYS_NICE; returns (exit code, stderr).
fn record(out: &Path, args: &[&str], without_sys_nice: bool) -> (i32, String) {
    let spec = write(out.parent().unwrap(), "spec.toml", SPEC);
    let mut cmd = if without_sys_nice {
        let mut c = Command::new("setpriv");
        c.args(["--bounding-set", "-sys_nice", "--inh-caps", "-sys_nice"]).arg(bin());
        c
    } else {
        Command::new(bin())
    };
    cmd.args(["record", "--workload", spec.to_str().unwrap(), "--output"]).arg(out).args(args);
    if !args.contains(&"--interval") {
        cmd.args(["--interval", "20ms"]);
    }
    let o = cmd.output().expect("runs (setpriv is util-linux's)");
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn scheduling(out: &Path) -> SamplerScheduling {
    Trace::open(out).unwrap().manifest.sampler.expect("the manifest records the sampler's scheduling")
}

fn sched(requested: &str, policy: SchedPolicy, priority: u32) -> SamplerScheduling {
    // A real-time sampler gets the last CPU to itself (with the writer) when the guest's one
    // vCPU leaves one over.
    let cpu = (policy == SchedPolicy::Fifo).then(|| dirtytrace::cpus::plan(1).map(|p| p.housekeeping as u32)).flatten();
    SamplerScheduling { requested: requested.into(), policy, priority, spin_us: 0, cpu }
}

#[test]
fn auto_gives_the_sampler_fifo_where_permitted() {
    let _g = kvm_lock();
    let dir = Scratch::new("rt-auto");
    let out = dir.join("t");
    let (code, stderr) = record(&out, &[], false);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("normal priority"), "{stderr}");
    assert_eq!(scheduling(&out), sched("auto", SchedPolicy::Fifo, dirtytrace::sampler::REALTIME_PRIORITY as u32));
    assert_eq!(scheduling(&out).cpu, Some(dirtytrace::cpus::allowed().len() as u32 - 1), "this host has 2 CPUs");
}

#[test]
fn off_keeps_normal_scheduling() {
    let _g = kvm_lock();
    let dir = Scratch::new("rt-off");
    let out = dir.join("t");
    let (code, stderr) = record(&out, &["--realtime", "off"], false);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(scheduling(&out), sched("off", SchedPolicy::Other, 0));
}

#[test]
fn auto_without_permission_says_so_and_goes_on() {
    let _g = kvm_lock();
    let dir = Scratch::new("rt-auto-noperm");
    let out = dir.join("t");
    let (code, stderr) = record(&out, &[], true);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stderr.matches("note: the sampler runs at normal priority").count(), 1, "{stderr}");
    assert!(stderr.contains("CAP_SYS_NICE"), "{stderr}");
    assert_eq!(scheduling(&out), sched("auto", SchedPolicy::Other, 0));
}

#[test]
fn on_without_permission_is_an_error_that_leaves_nothing() {
    let _g = kvm_lock();
    let dir = Scratch::new("rt-on-noperm");
    let out = dir.join("t");
    let (code, stderr) = record(&out, &["--realtime", "on"], true);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("--realtime on") && stderr.contains("CAP_SYS_NICE"), "{stderr}");
    assert!(!out.exists(), "a refused recording left {}", out.display());
    // With permission, `on` is granted.
    let (code, stderr) = record(&out, &["--realtime", "on"], false);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(scheduling(&out), sched("on", SchedPolicy::Fifo, dirtytrace::sampler::REALTIME_PRIORITY as u32));
}

#[test]
fn the_spin_before_each_deadline_is_recorded_and_bounded() {
    let _g = kvm_lock();
    let dir = Scratch::new("rt-spin");
    let spin_us = |name: &str, args: &[&str]| {
        let out = dir.join(name);
        let (code, stderr) = record(&out, args, false);
        assert_eq!(code, 0, "{stderr}");
        scheduling(&out).spin_us
    };
    assert_eq!(spin_us("default-1ms", &["--interval", "1ms"]), 50, "the default at 2 ms and less");
    assert_eq!(spin_us("default-20ms", &[]), 0, "no spin by default at longer intervals");
    assert_eq!(spin_us("off-1ms", &["--interval", "1ms", "--spin", "0s"]), 0);
    assert_eq!(spin_us("capped-1ms", &["--interval", "1ms", "--spin", "1ms"]), 50, "a twentieth of the interval");
    assert_eq!(spin_us("asked-20ms", &["--interval", "20ms", "--spin", "200us"]), 200);
    assert_eq!(spin_us("normal-priority", &["--interval", "1ms", "--realtime", "off"]), 50, "spins at any priority");
}

/// A real-time recorder stopped (SIGSTOP) and continued behaves as one at normal priority:
/// the deadlines it slept through are skipped, not harvested in a burst, and the trace is
/// complete and exact.
#[test]
fn a_stopped_realtime_recorder_skips_what_it_slept_through_and_stays_exact() {
    use nix::sys::signal::{kill, Signal};
    let _g = kvm_lock();
    let (child, out) = start_long_recording("rt-sigstop");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    while !out.join("journal.dtj").exists() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    kill(pid, Signal::SIGSTOP).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(600));
    kill(pid, Signal::SIGCONT).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    kill(pid, Signal::SIGINT).unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130), "{}", String::from_utf8_lossy(&output.stderr));
    let trace = Trace::open(&out).unwrap();
    assert_eq!(scheduling(&out).policy, SchedPolicy::Fifo);
    // Stopped for 600 ms at 50 ms: about 11 deadlines passed while the process slept (at
    // least 8 however the stop falls between them and however late the signals land).
    assert!(trace.manifest.timing.skipped_deadlines >= 8, "{:?}", trace.manifest.timing);
    let rows = trace.rates().unwrap();
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r.interval, i as u64);
    }
    // The sampler's own count is the manifest's, and the rows' deadlines (what a recovered
    // trace counts from) say the same.
    let counts = trace.manifest.timing.sampler_counts.expect("the sampler's counts");
    assert_eq!(
        (counts.harvests, counts.skipped_deadlines),
        (rows.len() as u64, trace.manifest.timing.skipped_deadlines)
    );
    let from_rows = dirtytrace::trace::timing_of(&rows, trace.manifest.interval_s, None);
    assert_eq!(from_rows.skipped_deadlines, counts.skipped_deadlines);
    for c in dirtytrace::guest::synthetic::verify::verify(&trace).unwrap() {
        assert_eq!((c.missing, c.missing_cumulative, c.unexpected), (0, 0, 0), "{c:?}");
    }
}
