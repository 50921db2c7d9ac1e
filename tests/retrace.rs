//! Reproducible traces under the QEMU engine (issue 20): `record --clock guest
//! --keep-execution` keeps QEMU's record/replay log of a Linux guest's execution, and
//! `dirtytrace retrace` replays it and records it again. They need Debian's QEMU 7.2 and the kit
//! (`.ci/run` installs both) and fail without them.

mod common;

use common::*;
use dirtytrace::trace::{EndReason, IntervalRow, Trace, TraceStatus};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The longest one recording or replay of a hello-sized workload may take here (it takes about a
/// minute on a loaded two-core machine).
const LIMIT: Duration = Duration::from_secs(600);

fn hello() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/linux/hello.sh")
}

fn run(args: &[&str]) -> std::process::Output {
    output_within(Command::new(bin()).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()), LIMIT)
}

fn ok(args: &[&str]) {
    let o = run(args);
    assert!(o.status.success(), "dirtytrace {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
}

fn fails(args: &[&str]) -> String {
    let o = run(args);
    assert!(!o.status.success(), "dirtytrace {args:?} should have failed");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every interval's row and dirty pages.
fn intervals(dir: &Path) -> Vec<(IntervalRow, Vec<u64>)> {
    let t = Trace::open(dir).unwrap();
    t.intervals().unwrap().map(|i| i.map(|(row, b)| (row, b.pages())).unwrap()).collect()
}

/// What a replay must reproduce of a row: everything but the trace's id and host timings.
fn guest_side(r: &IntervalRow) -> String {
    let mut r = r.clone();
    r.trace_id.clear();
    r.harvest_ioctl_s = 0.0;
    format!("{r:?}")
}

fn events(dir: &Path) -> Vec<(String, String)> {
    Trace::open(dir).unwrap().guest_log().unwrap().into_iter().map(|e| (e.kind, e.name)).collect()
}

#[test]
fn one_execution_retraced_gives_the_same_pages_at_any_interval() {
    let _g = kvm_lock();
    let dir = Scratch::new("retrace");
    let (t100, again, t10) = (dir.join("t100"), dir.join("t100-again"), dir.join("t10"));
    let s = |p: &Path| p.to_str().unwrap().to_string();
    // hello.sh's phases, then a busy shell loop: the guest idles after it from about 4.2 s, and
    // its last instruction before the whole second comes before an idle jump over it (the case
    // where QEMU's log held no instruction after the last cut until the recorder let the guest
    // settle).
    let workload = dir.join("busy.sh");
    std::fs::write(
        &workload,
        "#!/bin/sh\ndt-phase fill\ndd if=/dev/zero of=/tmp/blob bs=1M count=64 2>/dev/null\ndt-phase loop\ni=0\n\
         while [ $i -lt 200000 ]; do i=$((i+1)); done\necho \"workload done\"\n",
    )
    .unwrap();
    ok(&["record", "--workload", &s(&workload), "--engine", "qemu", "--clock", "guest", "--keep-execution"]
        .into_iter()
        .chain(["--mem", "512MiB", "--interval", "100ms", "-o", &s(&t100)])
        .collect::<Vec<_>>());
    ok(&["retrace", &s(&t100), "-o", &s(&again)]);
    ok(&["retrace", &s(&t100), "--interval", "10ms", "-o", &s(&t10)]);

    let (a, b, fine) = (intervals(&t100), intervals(&again), intervals(&t10));
    assert!(a.len() >= 40, "the workload lasts over 4 s of guest time: {} intervals", a.len());
    // The recording ends on the first whole guest second after the workload's end marker, at a
    // cut like every other: no partial interval, and the end is where the recording stopped.
    let end_s = a.last().unwrap().0.t_end_s;
    assert_eq!(end_s, end_s.round(), "the trace ends on a whole guest second: {end_s}");
    assert_eq!(a.len() as f64, end_s * 10.0);
    let recorded = Trace::open(&t100).unwrap().manifest;
    assert_eq!(recorded.end_reason, Some(EndReason::WorkloadDone));
    assert_eq!(recorded.status, TraceStatus::Complete);
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t100.join("execution/execution.json")).unwrap()).unwrap();
    assert_eq!(info["end_ns"], serde_json::json!(end_s as u64 * 1_000_000_000));
    // Every interval, the last included: the same row and the same pages, bit for bit, cut at
    // exact multiples of the interval in guest time.
    assert_eq!(a.len(), b.len());
    for (k, ((ra, pa), (rb, pb))) in a.iter().zip(&b).enumerate() {
        assert!(!ra.partial && !rb.partial, "interval {k} is whole");
        assert_eq!(guest_side(ra), guest_side(rb), "interval {k}'s row");
        assert_eq!(pa, pb, "interval {k}'s pages");
        assert_eq!(ra.t_end_s, ((k as u64 + 1) * 100_000_000) as f64 / 1e9, "interval {k} ends on its deadline");
    }
    // Ten 10 ms intervals hold exactly the pages of the 100 ms interval they make up, in every
    // window, the last included: the 10 ms retrace ends where the recording did.
    assert_eq!(fine.len(), 10 * a.len());
    assert!(fine.iter().all(|(r, _)| !r.partial));
    assert_eq!(fine.last().unwrap().0.t_end_s, end_s);
    for (k, (row, pages)) in a.iter().enumerate() {
        let mut union: Vec<u64> = fine[10 * k..10 * k + 10].iter().flat_map(|(_, p)| p.iter().copied()).collect();
        union.sort_unstable();
        union.dedup();
        assert_eq!(&union, pages, "100 ms window {k}");
        assert_eq!(fine[10 * k + 9].0.phase, row.phase, "window {k}'s phase");
    }
    for t in [&again, &t10] {
        let m = Trace::open(t).unwrap().manifest;
        assert_eq!((m.end_reason, m.status), (recorded.end_reason, recorded.status), "{}", t.display());
    }
    // An interval whose end the log may not reach, or that does not fit a second: refused
    // before QEMU starts, saying why.
    let e = fails(&["retrace", &s(&t100), "--interval", "300ms", "-o", &s(&dir.join("t300"))]);
    assert!(e.contains("--interval 300ms under --clock guest: the interval must divide a second"), "{e}");
    // A whole number of seconds that does not divide the recording's end (2 s for a 3 s trace).
    let k = (2..).find(|k| !(end_s as u64).is_multiple_of(*k)).unwrap();
    let e = fails(&["retrace", &s(&t100), "--interval", &format!("{k}s"), "-o", &s(&dir.join("tk"))]);
    let want = format!("recorded up to {end_s} s of guest time, and a retrace at --interval {k}s would end later");
    assert!(e.contains(&want), "{e}");
    assert!(!dir.join("t300").exists() && !dir.join("tk").exists());
    // The console and the phases are the same in every retrace.
    let console = std::fs::read(t100.join("console.log")).unwrap();
    assert!(String::from_utf8_lossy(&console).contains("workload done"));
    for other in [&again, &t10] {
        assert_eq!(std::fs::read(other.join("console.log")).unwrap(), console, "{}", other.display());
        assert_eq!(events(other), events(&t100), "{}", other.display());
    }
    let m = Trace::open(&t10).unwrap().manifest;
    let clock = m.guest_clock.expect("a retrace runs on the guest clock");
    assert_eq!(clock.retraced_from.as_deref(), Some(recorded.trace_id.as_str()));
    assert_eq!(clock.instructions_per_s, 1e9);

    // A log damaged after the recording: refused before QEMU starts, naming the file.
    let damaged = dir.join("damaged");
    let cp = Command::new("cp").args(["-a", &s(&t100), &s(&damaged)]).status().unwrap();
    assert!(cp.success());
    let log = damaged.join("execution/replay.bin");
    let bytes = std::fs::read(&log).unwrap();
    std::fs::write(&log, &bytes[..bytes.len() / 2]).unwrap();
    let out = dir.join("from-damaged");
    let e = fails(&["retrace", &s(&damaged), "-o", &s(&out)]);
    assert!(e.contains(&format!("{} is not the file that was recorded", log.display())), "{e}");
    assert!(!out.exists(), "nothing made for a refused retrace");
    // A log that was truncated before it was hashed: QEMU runs out of it, and the retrace fails
    // naming it, without hanging (output_within bounds it).
    let info_path = damaged.join("execution/execution.json");
    let mut info: serde_json::Value = serde_json::from_slice(&std::fs::read(&info_path).unwrap()).unwrap();
    info["log_sha256"] = dirtytrace::guest::linux::kit::sha256_hex(&bytes[..bytes.len() / 2]).into();
    std::fs::write(&info_path, serde_json::to_vec(&info).unwrap()).unwrap();
    let e = fails(&["retrace", &s(&damaged), "-o", &s(&out)]);
    assert!(e.contains(&format!("replaying {} failed", log.display())), "{e}");
    assert!(e.contains("error reading the replay data"), "QEMU's own words: {e}");
    // Another QEMU: refused naming both versions.
    info["qemu_version"] = "6.2.0".into();
    std::fs::write(&info_path, serde_json::to_vec(&info).unwrap()).unwrap();
    let e = fails(&["retrace", &s(&damaged), "-o", &s(&dir.join("other-qemu"))]);
    assert!(e.contains("recorded with QEMU 6.2.0; this host has QEMU 7.2"), "{e}");
}

#[test]
fn the_guest_clock_is_refused_where_it_cannot_keep_its_promise() {
    let dir = Scratch::new("retrace-refused");
    let _g = kvm_lock();
    let out = dir.join("t");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let h = s(&hello());
    let cases: [(Vec<&str>, &str); 5] = [
        (vec!["--workload", &h, "--engine", "kvm", "--clock", "guest"], "--clock guest needs the QEMU engine"),
        (vec!["--clock", "guest", "--engine", "qemu"], "--clock guest records Linux guests (.sh workloads) only"),
        (vec!["--workload", &h, "--engine", "qemu", "--keep-execution"], "--keep-execution needs --clock guest"),
        (vec!["--workload", &h, "--clock", "guest", "--exact-cut"], "a guest-time cut is exact already"),
        (
            vec!["--workload", &h, "--clock", "guest", "--vcpus", "2", "--mem", "512MiB"],
            "--clock guest needs one vCPU, not 2",
        ),
    ];
    for (args, want) in cases {
        let o = s(&out);
        let e = fails(&[&["record"], args.as_slice(), &["-o", &o]].concat());
        assert!(e.contains(want), "{args:?}: {e}");
        assert!(!out.exists(), "{args:?} left {}", out.display());
    }
    // A recording interrupted with Ctrl-C keeps a log that ends at no boundary a replay could
    // end on: its retrace is refused, saying so, before QEMU starts.
    let busy = dir.join("busy.sh");
    std::fs::write(&busy, "#!/bin/sh\ndt-phase spin\nwhile :; do :; done\n").unwrap();
    let cut = dir.join("cut");
    let mut child = Command::new(bin())
        .args(["record", "--workload", &s(&busy), "--engine", "qemu", "--clock", "guest", "--keep-execution"])
        .args(["--mem", "512MiB", "--interval", "100ms", "-o", &s(&cut)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the first intervals (the journal's frames) before interrupting.
    let t0 = std::time::Instant::now();
    while std::fs::metadata(cut.join("journal.dtj")).map_or(0, |m| m.len()) < 4096 && t0.elapsed() < LIMIT {
        std::thread::sleep(Duration::from_millis(200));
    }
    signal(&child, nix::sys::signal::Signal::SIGINT);
    assert_eq!(wait_within(&mut child, LIMIT, "the interrupted recording").code(), Some(130));
    assert_eq!(Trace::open(&cut).unwrap().manifest.end_reason, Some(EndReason::Interrupted));
    let e = fails(&["retrace", &s(&cut), "-o", &s(&out)]);
    assert!(e.contains("its recording ended early (interrupted)"), "{e}");
    assert!(!out.exists());

    // A trace without its execution cannot be retraced.
    let plain = dir.join("plain");
    ok(&["record", "--duration", "300ms", "--interval", "100ms", "-o", &s(&plain)]);
    let e = fails(&["retrace", &s(&plain), "-o", &s(&out)]);
    assert!(e.contains("keeps no execution to replay"), "{e}");
    assert!(!out.exists());
}
