//! `record --engine qemu`: real Linux programs, and the synthetic guest checked page for page,
//! under QEMU's TCG, their writes tracked by dirtytrace's plugin (userfaultfd, async
//! write-protect) and harvested with `PAGEMAP_SCAN`.
//! These need Debian's `qemu-system-x86` and the kit (`.ci/run` installs both), and a host
//! kernel with `PAGEMAP_SCAN` (Linux 6.7+); they fail, rather than skip, without them.

mod common;

use common::*;
use dirtytrace::engine::EngineChoice;
use dirtytrace::record::RecordOptions;
use dirtytrace::trace::{EndReason, Trace, TraceStatus};
use dirtytrace::units::HumanDuration;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/linux").join(name).to_str().unwrap().to_string()
}

fn record(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.arg("record").args(["--engine", "qemu"]).args(args).stdin(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// The QEMU processes whose parent is `pid`.
fn qemu_children(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        // pid (comm) state ppid ...
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else { continue };
        let f: Vec<&str> = after.split_whitespace().collect();
        if stat.contains("(qemu-system-x86") && f.get(1) == Some(&pid.to_string().as_str()) && f[0] != "Z" {
            found.push(p);
        }
    }
    found
}

/// True while `pid` runs (a zombie counts as gone: it runs no more code).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rfind(')').and_then(|i| s.get(i + 2..i + 3)) != Some("Z"))
        .unwrap_or(false)
}

/// A recorder started by a test, killed (with its QEMU, through the parent-death signal) if
/// the test fails before it ends.
struct Recorder(Option<std::process::Child>);

impl Recorder {
    fn start(script: &Path, out: &Path) -> Recorder {
        let child = Command::new(bin())
            .args(["record", "--engine", "qemu", "--mem", "256MiB", "--workload", script.to_str().unwrap(), "--output"])
            .arg(out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Recorder(Some(child))
    }
    /// A recorder that has journalled a few intervals, and the pid of its QEMU.
    fn running(script: &Path, out: &Path) -> (Recorder, u32) {
        let r = Recorder::start(script, out);
        wait_for("a few intervals", Duration::from_secs(60), || {
            std::fs::metadata(out.join("journal.dtj")).is_ok_and(|m| m.len() > 4096)
        });
        // Found now, not at start: `--version` runs a short-lived QEMU first.
        let qemu = qemu_children(r.0.as_ref().unwrap().id());
        assert_eq!(qemu.len(), 1, "{qemu:?}");
        (r, qemu[0])
    }
    fn take(&mut self) -> std::process::Child {
        self.0.take().unwrap()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The distinct pages the intervals of `phase` wrote.
fn pages_of_phase(trace: &Trace, phase: &str) -> BTreeSet<u64> {
    let rows = trace.rates().unwrap();
    let mut pages = BTreeSet::new();
    for r in rows.iter().filter(|r| r.phase == phase) {
        pages.extend(trace.bitmap(r.interval).unwrap().pages());
    }
    pages
}

/// stress-ng from `--package`, end to end: a complete trace with its phases and exit status
/// 0, the stress phase's writes covering stress-ng's 64 MiB, and the offline tools reading it.
#[test]
fn stress_ng_records_end_to_end_under_qemu() {
    let _g = kvm_lock();
    let dir = Scratch::new("qemu-stress");
    let out = dir.join("trace");
    let o = record(
        &[
            "--workload",
            &example("stress-ng.sh"),
            "--package",
            "stress-ng",
            "--mem",
            "1GiB",
            "--json",
            "--output",
            out.to_str().unwrap(),
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["status"], "complete");
    assert_eq!(summary["end_reason"], "guest_power_off");
    assert_eq!(summary["guest_exit_status"], 0);

    let trace = Trace::open(&out).unwrap();
    let engine = trace.manifest.engine.clone().unwrap();
    assert_eq!((engine.name.as_str(), engine.accelerator.as_str()), ("qemu", "tcg"));
    assert_eq!(engine.tracking, "userfaultfd_wp_async");
    assert_eq!(trace.manifest.ramsize_bytes, 1 << 30);
    let rows = trace.rates().unwrap();
    let phases: Vec<&str> = rows.iter().map(|r| r.phase.as_str()).collect();
    let mut order: Vec<&str> = phases.clone();
    order.dedup();
    assert_eq!(order.first(), Some(&"boot"), "{order:?}");
    for p in ["stress", "quiet"] {
        assert!(order.contains(&p), "phase {p} missing: {order:?}");
    }
    let stress = pages_of_phase(&trace, "stress");
    assert!(
        stress.len() as u64 * 4096 >= 64 << 20,
        "the stress phase wrote {} distinct pages, fewer than stress-ng's 64 MiB",
        stress.len()
    );
    let console = std::fs::read_to_string(out.join("console.log")).unwrap();
    assert!(console.contains("DIRTYTRACE:workload_end:0"), "{console}");
    assert!(!trace.manifest.initial_nonzero_pages.is_empty(), "QEMU loads the kernel before the first instruction");

    for tool in [vec!["summarize"], vec!["replay", "--bandwidth", "1Gbit/s"], vec!["simgrid"]] {
        let o = Command::new(bin()).args(&tool).arg(&out).output().unwrap();
        assert!(o.status.success(), "{tool:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
}

/// A workload that writes a known amount: every one of its pages is in the trace, in the
/// phase that wrote them.
#[test]
fn a_known_write_is_seen_in_its_phase() {
    let _g = kvm_lock();
    let dir = Scratch::new("qemu-known");
    let script = write(
        &dir,
        "w.sh",
        "#!/bin/sh\ndt-phase quiet\nsleep 1\ndt-phase write\ndd if=/dev/zero of=/tmp/blob bs=1M count=48 || exit 9\n\
         sync\ndt-phase settle\nsleep 1\n",
    );
    let out = dir.join("trace");
    let o =
        record(&["--workload", script.to_str().unwrap(), "--mem", "512MiB", "--output", out.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let trace = Trace::open(&out).unwrap();
    // The write's pages show up by the interval the next phase begins in (the phase of an
    // interval is the one active at its end).
    let written: BTreeSet<u64> =
        pages_of_phase(&trace, "write").union(&pages_of_phase(&trace, "settle")).copied().collect();
    assert!(written.len() as u64 * 4096 >= 48 << 20, "{} pages for a 48 MiB write", written.len());
    let quiet = pages_of_phase(&trace, "quiet");
    assert!((quiet.len() as u64) * 4096 < 16 << 20, "a sleeping guest wrote {} pages", quiet.len());
}

/// QEMU killed mid-run: the trace is finalised with every harvested interval, exit code 3,
/// and the error says QEMU died.
#[test]
fn qemu_killed_mid_run_keeps_the_trace() {
    let _g = kvm_lock();
    let dir = Scratch::new("qemu-killed");
    let script = write(&dir, "w.sh", "#!/bin/sh\ndt-phase wait\nsleep 60\n");
    let out = dir.join("trace");
    let (mut child, qemu) = Recorder::running(&script, &out);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(qemu as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let o = child.take().wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{stderr}");
    let trace = Trace::open(&out).unwrap();
    assert_eq!(trace.manifest.status, TraceStatus::GuestFault);
    let error = trace.manifest.error.clone().unwrap_or_default();
    assert!(error.contains("QEMU exited"), "{error}");
    assert!(trace.manifest.intervals > 0);
    assert_eq!(trace.rates().unwrap().len() as u64, trace.manifest.intervals);
}

/// The recorder SIGKILLed: its QEMU is gone within a second, and `recover` finalises the trace.
#[test]
fn a_killed_recorder_takes_qemu_with_it() {
    let _g = kvm_lock();
    let dir = Scratch::new("qemu-recorder-killed");
    let script = write(&dir, "w.sh", "#!/bin/sh\nsleep 60\n");
    let out = dir.join("trace");
    let (mut child, qemu) = Recorder::running(&script, &out);
    let mut child = child.take();
    child.kill().unwrap();
    child.wait().unwrap();
    let t = Instant::now();
    wait_for("QEMU to die with its recorder", Duration::from_secs(1), || !running(qemu));
    eprintln!("QEMU gone {:?} after its recorder", t.elapsed());
    let o = Command::new(bin()).arg("recover").arg(&out).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let trace = Trace::open(&out).unwrap();
    assert_eq!(trace.manifest.status, TraceStatus::Recovered);
    assert!(trace.manifest.intervals > 0);
}

/// QEMU's monitor is an unnamed socket pair: its command line names no socket file, and a
/// recorder killed while its QEMU starts leaves nothing in `$TMPDIR`.
#[test]
fn a_recorder_killed_while_qemu_starts_leaves_no_file() {
    let _g = kvm_lock();
    let dir = Scratch::new("qemu-killed-at-start");
    let tmp = dir.join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let script = write(&dir, "w.sh", "true\n");
    let mut child = Command::new(bin())
        .args(["record", "--engine", "qemu", "--mem", "256MiB", "--workload", script.to_str().unwrap(), "--output"])
        .arg(dir.join("trace"))
        .env("TMPDIR", &tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let recorder = child.id();
    // The guest's QEMU, not the short-lived `--version` one: it is started stopped (`-S`).
    let mut qemu = None;
    wait_for("the guest's QEMU", Duration::from_secs(60), || {
        qemu = qemu_children(recorder).into_iter().find(|&p| {
            std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == b"-S"))
        });
        qemu.is_some()
    });
    let qemu = qemu.unwrap();
    let cmdline = std::fs::read(format!("/proc/{qemu}/cmdline")).unwrap();
    let args: Vec<String> = cmdline.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    assert!(!args.iter().any(|a| a.contains("unix:") || a.contains(tmp.to_str().unwrap())), "{args:?}");
    child.kill().unwrap();
    child.wait().unwrap();
    wait_for("QEMU to die with its recorder", Duration::from_secs(5), || !running(qemu));
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "left in $TMPDIR: {left:?}");
}

/// No QEMU on PATH: the error names the package, and nothing is left behind.
#[test]
fn missing_qemu_names_the_package() {
    let dir = Scratch::new("qemu-missing");
    let script = write(&dir, "w.sh", "true\n");
    let out = dir.join("trace");
    let o = record(
        &["--workload", script.to_str().unwrap(), "--output", out.to_str().unwrap()],
        &[("PATH", dir.to_str().unwrap())],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("qemu-system-x86_64 was not found") && stderr.contains("qemu-system-x86"), "{stderr}");
    assert!(!out.exists());
}

/// The plugin cannot find guest RAM (here: a QEMU wrapper lies about its size): QEMU is
/// stopped, the error names the cause, no output directory is made and no QEMU is left.
#[test]
fn a_plugin_that_cannot_track_stops_qemu_with_the_cause() {
    let _g = kvm_lock();
    let dir = Scratch::new("qemu-plugin-fails");
    let wrapper = write(
        &dir,
        "qemu-wrapper",
        "#!/bin/sh\nfor a in \"$@\"; do shift; set -- \"$@\" \"$(echo \"$a\" | sed 's/,size=[0-9]*,/,size=8192,/')\"; done\n\
         exec qemu-system-x86_64 \"$@\"\n",
    );
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let script = write(&dir, "w.sh", "true\n");
    let out = dir.join("trace");
    let me = std::process::id();
    let o = record(
        &["--workload", script.to_str().unwrap(), "--mem", "256MiB", "--output", out.to_str().unwrap()],
        &[("DIRTYTRACE_QEMU", wrapper.to_str().unwrap())],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("dirtytrace's plugin cannot track guest RAM")
            && stderr.contains("no memory-backend-memfd mapping of 8192 bytes"),
        "{stderr}"
    );
    assert!(!out.exists());
    assert!(qemu_children(me).is_empty());
}

/// Two vCPUs (QEMU's multi-threaded TCG) and `--exact-cut` (QMP stop and cont around each
/// harvest): both vCPUs' CPU time is read, the cut is recorded, and the workload completes.
#[test]
fn two_vcpus_with_an_exact_cut() {
    let _g = kvm_lock();
    let dir = Scratch::new("qemu-smp");
    let out = dir.join("trace");
    let o = record(
        &[
            "--workload",
            &example("hello.sh"),
            "--vcpus",
            "2",
            "--exact-cut",
            "--mem",
            "512MiB",
            "--output",
            out.to_str().unwrap(),
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("engine") && stderr.contains("qemu (--engine qemu)"), "{stderr}");
    assert!(stderr.contains("PAGEMAP_SCAN, p50"), "{stderr}");
    let trace = Trace::open(&out).unwrap();
    assert_eq!(trace.manifest.vcpus, 2);
    assert!(trace.manifest.exact_cut);
    let rows = trace.rates().unwrap();
    assert!(rows.iter().all(|r| r.cpu_util_per_vcpu.len() == 2));
    let busy = |v: usize| rows.iter().map(|r| r.cpu_util_per_vcpu[v] * r.duration_s).sum::<f64>();
    assert!(busy(0) > 0.1 && busy(1) > 0.1, "both vCPU threads ran: {} and {} s", busy(0), busy(1));
    let console = std::fs::read_to_string(out.join("console.log")).unwrap();
    assert!(console.contains("workload done"), "{console}");
    let fill = pages_of_phase(&trace, "fill").union(&pages_of_phase(&trace, "idle")).count() as u64;
    assert!(fill * 4096 >= 64 << 20, "hello.sh's dd writes 64 MiB: {fill} pages");
}

/// A grid takes `engine` like any record option: its runs are recorded under QEMU and the
/// index says which engine made each trace.
#[test]
fn a_grid_records_under_qemu_and_the_index_says_so() {
    let _g = kvm_lock();
    let dir = Scratch::new("qemu-grid");
    write(&dir, "w.sh", "#!/bin/sh\ndt-phase work\ndd if=/dev/zero of=/tmp/x bs=1M count=8 2>/dev/null\n");
    let grid = write(
        &dir,
        "grid.toml",
        "workload = \"w.sh\"\n[record]\nmem = \"256MiB\"\nengine = \"qemu\"\n[axes]\ninterval = [\"50ms\", \"100ms\"]\n",
    );
    let out = dir.join("ds");
    let o = Command::new(bin())
        .args(["sweep", grid.to_str().unwrap(), "--output", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new("python3")
        .args(["-c", "import pyarrow.parquet as pq,sys; t=pq.read_table(sys.argv[1]); print(sorted(set(t.column('engine').to_pylist())), t.num_rows)"])
        .arg(out.join("index.parquet"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "['qemu'] 2", "{}", String::from_utf8_lossy(&o.stderr));
}

/// A one-phase synthetic spec (as `tests/record_synthetic.rs` records under the own VMM).
fn synthetic_spec(pattern: &str, ws: &str, rate: &str, secs: f64) -> String {
    format!(
        "mem = \"1GiB\"\nseed = 7\n[[phase]]\nname = \"{pattern}\"\nduration = \"{secs}s\"\nworking_set = \"{ws}\"\nrate = \"{rate}\"\npattern = \"{pattern}\"\nhot_fraction = 0.1\nhot_share = 0.9\n"
    )
}

/// Every interval of a synthetic trace against the guest's ground truth: nothing missing,
/// nothing unexpected, and no page of the guest's own but the control page (which the first
/// interval holds: dirtytrace's go word starts the guest there).
fn assert_exact(name: &str, trace: &Trace, min_intervals: usize) {
    let checks = assert_trace_exact(name, trace, min_intervals);
    assert_eq!(checks[0].own_pages, 1, "{name}: the first interval holds the go word's page");
    let recorded: u64 = checks.iter().map(|c| c.recorded_pages).sum();
    eprintln!("{name}: {} intervals, {recorded} pages recorded: exact", checks.len());
}

/// The synthetic guest under `--engine qemu` at 10 ms and 100 ms, each pattern: every bitmap
/// checked page for page against the ground truth, as under the own VMM; the guest ends by
/// itself (`workload_done`) and leaves no QEMU behind.
#[test]
fn synthetic_guest_is_exact_under_qemu_at_10ms_and_100ms() {
    let _g = kvm_lock();
    for pattern in ["sequential", "random", "hotcold"] {
        for (interval_ms, secs) in [(10u64, 0.6), (100, 1.5)] {
            let name = format!("qemu-exact-{pattern}-{interval_ms}ms");
            let dir = Scratch::new(&name);
            let spec = write(&dir, "spec.toml", &synthetic_spec(pattern, "64MiB", "40MiB/s", secs));
            let mut opts = RecordOptions::new(dir.join("trace"));
            opts.workload = Some(spec);
            opts.settings.interval = HumanDuration(Duration::from_millis(interval_ms));
            opts.settings.engine = EngineChoice::Qemu;
            let t = Instant::now();
            let summary = dirtytrace::record::record(&opts, Arc::new(AtomicBool::new(false)), None)
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
            eprintln!("{name}: recorded in {:?}", t.elapsed());
            assert_eq!(summary.status, TraceStatus::Complete, "{name}: {summary:?}");
            assert_eq!(summary.end_reason, Some(EndReason::WorkloadDone), "{name}");
            assert_eq!(summary.engine, "qemu");
            let trace = Trace::open(dir.join("trace")).unwrap();
            assert_eq!(trace.manifest.guest["tsc_source"], "host_measured");
            assert!(!trace.manifest.initial_nonzero_pages.is_empty(), "the boot image and the firmware's data");
            // Every deadline is a harvest unless the sampler skipped it (a loaded host).
            let skipped = trace.manifest.timing.skipped_deadlines as usize;
            assert_exact(&name, &trace, (secs * 1000.0 / interval_ms as f64) as usize - skipped);
        }
    }
    assert!(qemu_children(std::process::id()).is_empty(), "a QEMU was left running");
}

/// With no usable /dev/kvm, `record` with no workload (README's first command) runs the
/// built-in spec under QEMU, says why, and records it exactly: three phases, the last idle.
#[test]
fn auto_without_kvm_records_the_built_in_spec_under_qemu() {
    let _g = kvm_lock();
    let dir = Scratch::new("qemu-auto");
    let out = dir.join("trace");
    let o = output_within(
        Command::new(bin())
            .args(["record", "--json", "--output", out.to_str().unwrap()])
            .env("DIRTYTRACE_KVM_DEVICE", "/nonexistent")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        Duration::from_secs(120),
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["engine"], "qemu");
    let reason = summary["engine_reason"].as_str().unwrap();
    assert!(reason.starts_with("auto: KVM is not usable here") && reason.contains("/nonexistent"), "{reason}");
    assert_eq!(summary["end_reason"], "workload_done");
    let trace = Trace::open(&out).unwrap();
    let phases: Vec<String> =
        trace.guest_log().unwrap().into_iter().filter(|e| e.kind == "phase").map(|e| e.name).collect();
    assert_eq!(phases, ["sequential", "hotcold", "idle"]);
    assert_exact("qemu-auto", &trace, 85);
    // The idle phase sleeps (its idle `syscall` halts the vCPU until QEMU's PIT wakes it), so
    // its vCPU is mostly off the CPU, as under the own VMM.
    let rows = trace.rates().unwrap();
    let idle: Vec<f64> = rows.iter().filter(|r| r.phase == "idle" && !r.partial).map(|r| r.cpu_util).collect();
    let mean = idle.iter().sum::<f64>() / idle.len() as f64;
    assert!(idle.len() >= 25 && mean < 0.25, "the idle phase kept its vCPU busy: {mean} over {} intervals", idle.len());
    eprintln!("qemu-auto: idle phase cpu_util {mean:.3}");
}

/// Phases, a `cpu` below 1 (the vCPU idles between its writes: an idle `syscall` whose stack is
/// the control page) and an idle phase, at 10 ms: still exact.
#[test]
fn synthetic_phases_with_idle_time_are_exact_under_qemu() {
    let _g = kvm_lock();
    let dir = Scratch::new("qemu-exact-phases");
    let spec = write(
        &dir,
        "spec.toml",
        "mem = \"512MiB\"\nseed = 3\n\
         [[phase]]\nname = \"a\"\nduration = \"0.5s\"\nworking_set = \"32MiB\"\nrate = \"40MiB/s\"\npattern = \"random\"\ncpu = 0.5\n\
         [[phase]]\nname = \"rest\"\nduration = \"0.3s\"\nworking_set = \"0\"\nrate = \"0\"\ncpu = 0\n\
         [[phase]]\nname = \"c\"\nduration = \"0.4s\"\nworking_set = \"8MiB\"\nrate = \"80MiB/s\"\npattern = \"sequential\"\ncpu = 0.3\n",
    );
    let mut opts = RecordOptions::new(dir.join("trace"));
    opts.workload = Some(spec);
    opts.settings.interval = HumanDuration(Duration::from_millis(10));
    opts.settings.engine = EngineChoice::Qemu;
    let summary = dirtytrace::record::record(&opts, Arc::new(AtomicBool::new(false)), None).unwrap();
    assert_eq!(summary.end_reason, Some(EndReason::WorkloadDone));
    let trace = Trace::open(dir.join("trace")).unwrap();
    assert_exact("qemu-exact-phases", &trace, 115);
    let counts = dirtytrace::guest::synthetic::final_counts_from_log(&trace.guest_log().unwrap(), 1, 3);
    assert!(counts[0].iter().all(Option::is_some), "every phase's final count is logged: {counts:?}");
}

/// What the QEMU engine cannot run of a synthetic spec is refused before QEMU starts, with
/// what to do instead, and nothing is left behind.
#[test]
fn synthetic_specs_qemu_cannot_run_are_refused_first() {
    let dir = Scratch::new("qemu-synthetic-refused");
    for (args, want) in [
        (["--vcpus", "2"], "runs on one vCPU (its PVH boot starts only the first), not 2"),
        (["--mem", "4GiB"], "at most 3 GiB of RAM"),
    ] {
        let out = dir.join("trace");
        let o = record(&[args[0], args[1], "--output", out.to_str().unwrap()], &[]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(want) && stderr.contains("--engine kvm"), "{stderr}");
        assert!(!out.exists());
    }
    assert!(qemu_children(std::process::id()).is_empty());
}

/// An unprivileged user records under QEMU: user `nobody`, with no capabilities and
/// `vm.unprivileged_userfaultfd` as the host has it (0 here), gets a page-exact trace, because
/// the plugin's userfaultfd is made with `UFFD_USER_MODE_ONLY`.
#[test]
fn an_unprivileged_user_records_under_qemu() {
    let _g = kvm_lock();
    let dir = Scratch::new("qemu-nobody");
    std::fs::set_permissions(&*dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let spec = write(&dir, "spec.toml", &synthetic_spec("random", "64MiB", "50MiB/s", 1.0));
    std::fs::set_permissions(&spec, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = dir.join("trace");
    let o = output_within(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
            .arg(bin())
            .args(["record", "--engine", "qemu", "--workload", spec.to_str().unwrap(), "--output"])
            .arg(&out)
            .env("HOME", &*dir)
            .env("DIRTYTRACE_CACHE", dir.join("cache"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        Duration::from_secs(120),
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    let trace = Trace::open(&out).unwrap();
    assert_eq!(trace.manifest.engine.as_ref().unwrap().uffd_mode.as_deref(), Some("user"));
    assert_exact("qemu-nobody", &trace, 10);
}
