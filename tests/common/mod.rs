//! Helpers shared by the integration tests. Tests that run guests take [`kvm_lock`], so that
//! recordings never compete with each other for the two CPUs of a CI machine.
#![allow(dead_code)]

use dirtytrace::record::{self, RecordOptions, RecordSummary};
use dirtytrace::trace::Trace;
use dirtytrace::units::HumanDuration;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

static KVM: Mutex<()> = Mutex::new(());

/// Held while a test runs guests: a process-wide mutex plus an flock, so that test binaries
/// and concurrent `cargo test` runs of this target directory never record at the same time on
/// a two-CPU machine. The lock file stays in cargo's temporary directory, shared by every run.
pub struct KvmLock {
    _guard: MutexGuard<'static, ()>,
    _file: std::fs::File,
}

pub fn kvm_lock() -> KvmLock {
    let guard = KVM.lock().unwrap_or_else(|e| e.into_inner());
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(Path::new(env!("CARGO_TARGET_TMPDIR")).join("dirtytrace-kvm-tests.lock"))
        .unwrap();
    file.lock().expect("lock the KVM test lock file");
    KvmLock { _guard: guard, _file: file }
}

/// A fresh directory under cargo's temporary directory (`target/tmp`, a compile-time
/// variable: `env!`, never `std::env::var`) for this test, removed when dropped unless the test
/// is failing (then it is kept, and named, to look at) or `DIRTYTRACE_KEEP_TEST_DIRS` is set.
/// A passing test that leaves something it cannot remove fails. Every file a test writes goes
/// into one of these, so that a test run leaves nothing behind.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "{name}-{}-{}",
            std::process::id(),
            dirtytrace::clock::now_ns()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("DIRTYTRACE_KEEP_TEST_DIRS").is_some() {
            eprintln!("kept {}", self.0.display());
        } else if let Err(e) = std::fs::remove_dir_all(&self.0) {
            if self.0.exists() {
                panic!("the test left {} behind: {e}", self.0.display());
            }
        }
    }
}

/// A path inside a [`Scratch`] that it holds: what a helper returns for a test to use, the
/// directory removed when the test drops it.
pub struct InScratch {
    path: PathBuf,
    _dir: Scratch,
}

impl InScratch {
    pub fn new(dir: Scratch, path: PathBuf) -> InScratch {
        InScratch { path, _dir: dir }
    }
}

impl std::ops::Deref for InScratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for InScratch {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

/// Records `spec` (TOML text) into a fresh directory, returned with the trace: the trace is
/// there while the directory is held.
pub fn record_spec(
    name: &str,
    spec: &str,
    interval: Duration,
    duration: Option<Duration>,
) -> (RecordSummary, Trace, Scratch) {
    let dir = Scratch::new(name);
    let spec_path = dir.join("spec.toml");
    std::fs::write(&spec_path, spec).unwrap();
    let out = dir.join("trace");
    let mut opts = RecordOptions::new(out.clone());
    opts.workload = Some(spec_path);
    opts.settings.interval = HumanDuration(interval);
    opts.settings.duration = duration.map(HumanDuration);
    let summary = record::record(&opts, Arc::new(AtomicBool::new(false)), None)
        .unwrap_or_else(|e| panic!("recording {name} failed: {e:#}"));
    (summary, Trace::open(&out).unwrap(), dir)
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dirtytrace"))
}

/// Runs `cmd` to its end, as [`Command::output`] does (reading only the pipes asked for), but
/// kills it and fails the test once it has run for `limit`: a hang fails the test instead of
/// hanging the suite.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut bytes);
            }
            bytes
        })
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = wait_within(&mut child, limit, &format!("{cmd:?}"));
    Output { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() }
}

/// Waits for `child`; kills it and fails the test once it has run for `limit`.
pub fn wait_within(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} hung: still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What a run of the CLI gave: its exit code (`None`: killed by a signal), stdout and stderr.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Exit code 0.
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs `cmd ARGS` with `env` set and stdin closed, killing it and failing the test after two
/// minutes: the one way the tests run a command.
pub fn run_command(mut cmd: Command, args: &[&str], env: &[(&str, &str)]) -> Run {
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = output_within(&mut cmd, Duration::from_secs(120));
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    Run { code: out.status.code(), stdout: text(out.stdout), stderr: text(out.stderr) }
}

/// Runs `dirtytrace ARGS`.
pub fn cli(args: &[&str]) -> Run {
    cli_env(args, &[])
}

/// Runs `dirtytrace ARGS` with `env` set.
pub fn cli_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    run_command(Command::new(bin()), args, env)
}

/// Runs `dirtytrace ARGS`, which must succeed, and parses its stdout as JSON.
pub fn cli_json(args: &[&str]) -> serde_json::Value {
    let r = cli(args);
    assert!(r.ok(), "dirtytrace {args:?} failed: {}", r.stderr);
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("dirtytrace {args:?}: not JSON ({e}): {}", r.stdout))
}

/// Runs `dirtytrace ARGS` with `env` set, and checks that it fails saying why
/// ([`assert_failed`]) and leaves none of `leaves_no` behind.
pub fn assert_fails(args: &[&str], env: &[(&str, &str)], needles: &[&str], leaves_no: &[&Path]) -> Run {
    let run = cli_env(args, env);
    assert_failed(&run, args, needles);
    for p in leaves_no {
        assert!(!p.exists(), "{args:?} left {} behind", p.display());
    }
    run
}

/// A failure that says why: a non-zero exit (not a signal, a panic's 101 or an abort's 134),
/// nothing of a panic or an allocation failure in stderr, `error` first, and every needle in it.
pub fn assert_failed(run: &Run, args: &[&str], needles: &[&str]) {
    let e = &run.stderr;
    assert!(run.code.is_some(), "{args:?} was killed by a signal:\n{e}");
    assert_ne!(run.code, Some(0), "{args:?} succeeded:\n{e}");
    assert_ne!(run.code, Some(101), "{args:?} panicked:\n{e}");
    assert_ne!(run.code, Some(134), "{args:?} aborted:\n{e}");
    for bad in ["panicked", "memory allocation", "capacity overflow", "RUST_BACKTRACE"] {
        assert!(!e.contains(bad), "{args:?}: stderr has {bad:?}:\n{e}");
    }
    assert!(e.starts_with("error"), "{args:?}: stderr does not start with the error:\n{e}");
    for n in needles {
        assert!(e.contains(n), "{args:?}: the error lacks {n:?}:\n{e}");
    }
}

/// [`assert_failed`], with the error on one line.
pub fn assert_refused(run: &Run, args: &[&str], needles: &[&str]) {
    assert_failed(run, args, needles);
    let lines: Vec<&str> = run.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{args:?}: the error is not one line:\n{}", run.stderr);
    assert!(lines[0].starts_with("error: "), "{args:?}: {}", run.stderr);
}

/// Sends `sig` to `child`.
pub fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
}

/// Copies the tree `from` into `to` (made if need be), over what `to` holds.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Any ELF will do as the initramfs's busybox when the guest never reaches userspace.
pub fn fake_busybox() -> PathBuf {
    PathBuf::from("/bin/true")
}

/// Whether the host's CPU has VT-x or AMD-V, so that KVM runs guest kernels in hardware rather
/// than emulating them.
pub fn hardware_virtualisation() -> bool {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpuinfo.lines().filter(|l| l.starts_with("flags")).any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// Generates the synthetic trace of `spec` at `interval` into `dir`, without KVM: the base
/// trace the tests of the tools downstream of the recorder read, damage or analyse.
pub fn generate_trace(dir: &Path, spec: &str, interval: Duration) -> dirtytrace::trace::Manifest {
    let opts = dirtytrace::guest::synthetic::generate::GenerateOptions { interval, ..Default::default() };
    dirtytrace::guest::synthetic::generate::generate(dir, spec, &opts).unwrap()
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A 60 s synthetic workload (random writes at 50 MiB/s over 64 MiB), to interrupt.
pub const LONG_SPEC: &str = "mem = \"512MiB\"\nseed = 5\n[[phase]]\nname = \"a\"\nduration = \"60s\"\nworking_set = \"64MiB\"\nrate = \"50MiB/s\"\npattern = \"random\"\n";

/// Starts `dirtytrace record` of [`LONG_SPEC`] at 50 ms in the background; returns the child
/// and its trace directory.
pub fn start_long_recording(name: &str) -> (std::process::Child, InScratch) {
    let dir = Scratch::new(name);
    let spec = write(&dir, "long.toml", LONG_SPEC);
    let out = dir.join("trace");
    let child = std::process::Command::new(bin())
        .args(["record", "--interval", "50ms", "--workload", spec.to_str().unwrap(), "--output", out.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    (child, InScratch::new(dir, out))
}

/// `trace`'s journal as the recorder would have written it: the file magic, then one frame per
/// interval re-encoded from its bitmaps; with where each frame starts and how long it is.
pub fn journal_of(trace: &Trace) -> (Vec<u8>, Vec<(usize, usize)>) {
    use dirtytrace::trace::{journal, BitmapEncoder, ZSTD_LEVEL};
    let mut enc = BitmapEncoder::new(ZSTD_LEVEL).unwrap();
    let mut bytes = journal::FILE_MAGIC.to_vec();
    let mut frames = Vec::new();
    for item in trace.intervals().unwrap() {
        let (row, bm) = item.unwrap();
        let blobs: Vec<_> = bm
            .slots
            .iter()
            .zip(&trace.manifest.slots)
            .map(|(s, slot)| enc.encode(slot, &s.words, s.dirty_pages).unwrap())
            .collect();
        let frame = journal::encode_frame(&row, &blobs).unwrap();
        frames.push((bytes.len(), frame.len()));
        bytes.extend_from_slice(&frame);
    }
    (bytes, frames)
}

/// Rewrites the journal frame at `at` (of `len` bytes) with `edit` applied to its payload and
/// a checksum that holds. The frame layout is spelt out here, apart from the writer's, so that
/// tests can make frames the writer never would.
pub fn rewrite_frame(j: &mut Vec<u8>, at: usize, len: usize, edit: impl FnOnce(&mut Vec<u8>)) {
    let mut payload = j[at + 12..at + len].to_vec();
    edit(&mut payload);
    let mut frame = b"DTJF".to_vec();
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    frame.extend_from_slice(&payload);
    j.splice(at..at + len, frame);
}

/// A whole Parquet table, as one batch.
pub fn read_table(path: &Path) -> arrow::record_batch::RecordBatch {
    let f = std::fs::File::open(path).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f).unwrap().build().unwrap();
    let batches: Vec<_> = reader.map(|b| b.unwrap()).collect();
    arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap()
}

/// Writes `b` as the Parquet table at `path`.
pub fn write_table(path: &Path, b: &arrow::record_batch::RecordBatch) {
    let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), b.schema(), None).unwrap();
    w.write(b).unwrap();
    w.close().unwrap();
}

/// Checks every interval of a synthetic trace against the guest's ground truth: nothing
/// missing, nothing unexpected, at most the control page of the guest's own, at least
/// `min_intervals` intervals and something checkable. Returns the checks.
pub fn assert_trace_exact(
    name: &str,
    trace: &Trace,
    min_intervals: usize,
) -> Vec<dirtytrace::guest::synthetic::verify::IntervalCheck> {
    let checks = dirtytrace::guest::synthetic::verify::verify(trace).unwrap();
    assert!(checks.len() >= min_intervals, "{name}: {} intervals, expected at least {min_intervals}", checks.len());
    let mut certain = 0;
    for c in &checks {
        assert_eq!(c.missing, 0, "{name}: interval {} lacks pages it certainly wrote: {c:?}", c.interval);
        assert_eq!(
            c.missing_cumulative, 0,
            "{name}: interval {}: written pages in no bitmap so far: {c:?}",
            c.interval
        );
        assert_eq!(c.unexpected, 0, "{name}: interval {} has pages the guest did not write: {c:?}", c.interval);
        assert!(c.own_pages <= 1, "{name}: more own pages than the control page: {c:?}");
        certain += c.certain_pages;
    }
    assert!(certain > 0, "{name}: the guest wrote nothing checkable");
    checks
}

/// `numbers` as LEB128 varints, as a `varint-gaps` bitmap stores its gaps (schemas/bitmaps.md).
pub fn varints(numbers: &[u64]) -> Vec<u8> {
    let mut out = Vec::new();
    for &n in numbers {
        let mut v = n;
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    out
}
