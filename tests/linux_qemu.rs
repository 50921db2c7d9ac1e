//! The guest side of Linux workloads, end to end under QEMU's TCG emulator: the kit's bzImage
//! boots the archive `dirtytrace initramfs` writes, `/init` runs the script, and the console is
//! parsed by the recorder's own parser (`guest::linux::console`), so these tests check the real
//! marker protocol, phases and exit status. They stand in for `record` until a host with VT-x
//! or AMD-V runs the whole path (this project's machines emulate guest kernel code; see README).
//! They need Debian's `qemu-system-x86` (`.ci/run` installs it) and fail without it.

mod common;

use common::*;
use dirtytrace::events::GuestLog;
use dirtytrace::guest::linux::console::ConsoleParser;
use dirtytrace::guest::linux::kit;
use dirtytrace::trace::GuestEvent;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const QEMU: &str = "qemu-system-x86_64";

struct Run {
    console: String,
    events: Vec<GuestEvent>,
    status: Option<i32>,
}

impl Run {
    fn kinds(&self) -> Vec<(String, String)> {
        self.events.iter().map(|e| (e.kind.clone(), e.name.clone())).collect()
    }
    fn phases(&self) -> Vec<String> {
        self.events.iter().filter(|e| e.kind == "phase").map(|e| e.name.clone()).collect()
    }
}

fn bzimage() -> PathBuf {
    let p = kit::kit_dir().join("bzImage");
    assert!(p.exists(), "{} is missing: run `dirtytrace kit fetch` (.ci/run does)", p.display());
    p
}

/// `dirtytrace initramfs` with `args`, into a fresh file.
fn archive(dir: &Path, script: &Path, args: &[&str]) -> PathBuf {
    let out = dir.join("initramfs.cpio.gz");
    let o = Command::new(bin())
        .env_remove("DIRTYTRACE_BUSYBOX")
        .args(["initramfs", "--workload", script.to_str().unwrap(), "-o", out.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "dirtytrace initramfs failed: {}", String::from_utf8_lossy(&o.stderr));
    out
}

/// Boots the kit's bzImage with `initrd` under TCG; kills QEMU after `timeout`.
fn boot(initrd: &Path, mem_mib: u32, timeout: Duration) -> Run {
    let _g = kvm_lock(); // one heavy emulator at a time on two cores
    let mut child = match Command::new(QEMU)
        .args(["-accel", "tcg", "-m", &mem_mib.to_string(), "-nodefaults", "-display", "none", "-no-reboot"])
        .args(["-serial", "stdio", "-kernel"])
        .arg(bzimage())
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 reboot=k panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!("cannot run {QEMU} ({e}): install Debian's qemu-system-x86 (.ci/run does)"),
    };
    let t = Instant::now();
    let mut stdout = child.stdout.take().unwrap();
    // The console is parsed as it arrives, so that events carry their times, as in `record`.
    let log = std::sync::Arc::new(GuestLog::new("boot"));
    let log2 = log.clone();
    let reader = std::thread::spawn(move || {
        let (mut all, mut buf, mut parser) = (Vec::new(), [0u8; 4096], ConsoleParser::new());
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            parser.feed(&buf[..n], &log2);
            all.extend_from_slice(&buf[..n]);
        }
        (all, parser)
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let (out, _) = reader.join().unwrap();
            panic!("QEMU did not finish within {timeout:?}; console:\n{}", String::from_utf8_lossy(&out));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = t.elapsed();
    let (out, parser) = reader.join().unwrap();
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    let console = String::from_utf8_lossy(&out).into_owned();
    assert!(status.success(), "QEMU failed ({status}): {err}\nconsole:\n{console}");
    assert_eq!(parser.panic, None, "console:\n{console}");
    eprintln!("QEMU run took {:.1} s", took.as_secs_f64());
    Run { console, events: log.take().0, status: parser.status }
}

fn lines(console: &str) -> Vec<&str> {
    console.lines().map(|l| l.trim_end_matches('\r')).collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[test]
fn hello_marks_its_phases_prints_and_exits_0() {
    let dir = Scratch::new("qemu-hello");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/linux/hello.sh");
    let run = boot(&archive(&dir, &script, &[]), 1024, Duration::from_secs(120));
    assert_eq!(run.status, Some(0), "{}", run.console);
    assert_eq!(
        run.kinds(),
        pairs(&[
            ("workload_start", "workload_start"),
            ("phase", "workload"),
            ("phase", "fill"),
            ("phase", "idle"),
            ("workload_end", "workload_end"),
            ("phase", "shutdown"),
        ]),
        "{}",
        run.console
    );
    assert_eq!(run.events[4].detail["status"], 0);
    let l = lines(&run.console);
    let at = |s: &str| l.iter().position(|x| *x == s).unwrap_or_else(|| panic!("no line {s:?} in:\n{}", run.console));
    assert!(at("DIRTYTRACE:phase:idle") < at("workload done") && at("workload done") < at("DIRTYTRACE:workload_end:0"));
    // `sleep 1` is the idle phase.
    let t = |name: &str| run.events.iter().find(|e| e.name == name).unwrap().t_s;
    assert!(t("shutdown") - t("idle") >= 1.0, "idle lasted {} s", t("shutdown") - t("idle"));
}

#[test]
fn a_script_that_exits_3_gives_status_3() {
    let dir = Scratch::new("qemu-exit3");
    let script = write(&dir, "exit3.sh", "#!/bin/sh\ndt-phase only\necho about to fail\nexit 3\n");
    let run = boot(&archive(&dir, &script, &[]), 512, Duration::from_secs(120));
    assert_eq!(run.status, Some(3), "{}", run.console);
    assert_eq!(run.phases(), ["workload", "only", "shutdown"]);
    assert!(lines(&run.console).contains(&"about to fail"));
    assert!(lines(&run.console).contains(&"DIRTYTRACE:workload_end:3"));
}

/// stress-ng from `--package` (apt's resolver brings its 40-odd shared libraries), dirtying
/// 64 MiB for 3 s between two phases.
#[test]
fn stress_ng_from_a_package_runs_between_two_phases() {
    let dir = Scratch::new("qemu-stress");
    let script = write(
        &dir,
        "stress.sh",
        "#!/bin/sh\ndt-phase stress\nstress-ng --vm 1 --vm-bytes 64M --timeout 3s\ns=$?\ndt-phase cooldown\necho \"stress-ng status $s\"\nexit $s\n",
    );
    let initrd = archive(&dir, &script, &["--package", "stress-ng"]);
    let entries = dirtytrace::guest::linux::initramfs::read_entries(&std::fs::read(&initrd).unwrap()).unwrap();
    assert!(entries.iter().any(|e| e.name == "usr/bin/stress-ng" && e.mode & 0o111 != 0));
    let run = boot(&initrd, 1024, Duration::from_secs(240));
    assert_eq!(run.status, Some(0), "{}", run.console);
    assert_eq!(run.phases(), ["workload", "stress", "cooldown", "shutdown"], "{}", run.console);
    let l = lines(&run.console);
    assert!(l.contains(&"stress-ng status 0"), "{}", run.console);
    assert!(l.iter().any(|x| x.contains("successful run completed")), "{}", run.console);
    let t = |name: &str| run.events.iter().find(|e| e.name == name).unwrap().t_s;
    assert!(t("cooldown") - t("stress") >= 3.0, "--timeout 3s: {} s", t("cooldown") - t("stress"));
}

/// A `--rootfs` directory made here: a dynamically linked host program (`ls`) and exactly the
/// libraries `ldd` lists, at the same paths.
#[test]
fn a_host_program_with_its_ldd_libraries_runs_from_a_rootfs_directory() {
    let dir = Scratch::new("qemu-rootfs");
    let root = dir.join("root");
    let program = Path::new("/usr/bin/ls");
    let ldd = Command::new("ldd").arg(program).output().expect("ldd");
    assert!(ldd.status.success());
    let mut files = vec![program.to_path_buf()];
    for l in String::from_utf8_lossy(&ldd.stdout).lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or `/lib64/ld-linux-x86-64.so.2 (0x...)`
        let path = l.split("=>").last().unwrap().split_whitespace().next().unwrap_or("");
        if path.starts_with('/') {
            files.push(PathBuf::from(path));
        }
    }
    assert!(files.len() >= 3, "ls links libc and the loader at least: {files:?}");
    for f in &files {
        let to = root.join(f.strip_prefix("/").unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(f, &to).unwrap();
    }
    std::fs::create_dir_all(root.join("srv/data")).unwrap();
    for name in ["alpha", "beta", "gamma"] {
        std::fs::write(root.join("srv/data").join(name), name).unwrap();
    }
    let version = Command::new(program).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&version.stdout).lines().next().unwrap().to_string();
    let script = write(
        &dir,
        "ls.sh",
        "#!/bin/sh\ndt-phase list\n/usr/bin/ls --version | head -n 1\n/usr/bin/ls -1 /srv/data\necho \"ls status $?\"\n",
    );
    let run = boot(&archive(&dir, &script, &["--rootfs", root.to_str().unwrap()]), 512, Duration::from_secs(120));
    assert_eq!(run.status, Some(0), "{}", run.console);
    assert_eq!(run.phases(), ["workload", "list", "shutdown"]);
    let l = lines(&run.console);
    let start = l.iter().position(|x| *x == "DIRTYTRACE:phase:list").expect("phase line");
    assert_eq!(l[start + 1..start + 6], [version.as_str(), "alpha", "beta", "gamma", "ls status 0"], "{}", run.console);
}
