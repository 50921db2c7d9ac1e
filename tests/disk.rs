//! `record --disk IMAGE` and `disk check IMAGE`: a Linux workload runs chrooted in a VM disk
//! image's root filesystem under the QEMU engine, the image is never written, and what the
//! disk device writes into guest RAM is in the trace. The images are built from the kit's
//! busybox with `mkfs.ext4 -d`, `sfdisk` and `qemu-img` (`.ci/run` installs e2fsprogs, fdisk
//! and qemu-utils); these tests fail, rather than skip, without them.

mod common;

use common::*;
use dirtytrace::guest::linux::kit;
use dirtytrace::trace::Trace;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn run(cmd: &mut Command) {
    let o = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (.ci/run installs it)"));
    assert!(o.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&o.stderr));
}

/// A root tree: the kit's busybox as `/bin/sh` (unless `with_sh` is false) and a few applets,
/// an `/etc/os-release` saying `dttest 1`, and `files`.
fn tree(dir: &Path, name: &str, with_sh: bool, files: &[(&str, Vec<u8>)]) -> PathBuf {
    let t = dir.join(name);
    for d in ["bin", "etc", "root", "data"] {
        std::fs::create_dir_all(t.join(d)).unwrap();
    }
    std::fs::copy(kit::kit_dir().join("busybox"), t.join("bin/busybox")).expect("the kit: run `dirtytrace kit fetch`");
    let applets = ["cat", "dd", "echo", "sync", "sleep", "ls", "sha256sum", "head", "wc"];
    for a in applets.iter().chain(with_sh.then_some(&"sh")) {
        std::os::unix::fs::symlink("busybox", t.join("bin").join(a)).unwrap();
    }
    std::fs::write(t.join("etc/os-release"), "ID=dttest\nVERSION_ID=1\n").unwrap();
    for (path, data) in files {
        std::fs::write(t.join(path), data).unwrap();
    }
    t
}

/// An ext4 filesystem image of `mib` MiB holding `tree`.
fn ext4(tree: &Path, img: &Path, mib: u64) {
    std::fs::File::create(img).unwrap().set_len(mib * MIB).unwrap();
    run(Command::new("mkfs.ext4").args(["-q", "-F", "-d"]).arg(tree).arg(img));
}

/// A GPT disk: partition 1 (16 MiB) empty, partition 2 an ext4 filesystem holding `tree`.
fn gpt(dir: &Path, tree: &Path) -> PathBuf {
    let (img, part) = (dir.join("gpt.img"), dir.join("part2.img"));
    std::fs::File::create(&img).unwrap().set_len(162 * MIB).unwrap();
    let mut sfdisk = Command::new("sfdisk")
        .arg("--quiet")
        .arg(&img)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("sfdisk (package fdisk; .ci/run installs it)");
    use std::io::Write;
    sfdisk.stdin.take().unwrap().write_all(b"label: gpt\nstart=2048, size=30720\nstart=32768, size=262144\n").unwrap();
    assert!(sfdisk.wait().unwrap().success());
    ext4(tree, &part, 128);
    run(Command::new("dd").arg(format!("if={}", part.display())).arg(format!("of={}", img.display())).args([
        "bs=1M",
        "seek=16",
        "conv=notrunc",
        "status=none",
    ]));
    std::fs::remove_file(&part).unwrap();
    img
}

fn qcow2_of(raw: &Path, out: &Path) {
    run(Command::new("qemu-img").args(["convert", "-O", "qcow2"]).arg(raw).arg(out));
}

fn sha256(path: &Path) -> String {
    use sha2::Digest;
    dirtytrace::units::hex(&sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

fn record(dir: &Path, script: &str, disk: &Path, extra: &[&str]) -> (Output, PathBuf) {
    let w = write(dir, "w.sh", script);
    let out = dir.join("trace");
    let _ = std::fs::remove_dir_all(&out);
    let o = output_within(
        Command::new(bin())
            .args(["record", "--mem", "512MiB", "--workload", w.to_str().unwrap(), "--disk"])
            .arg(disk)
            .arg("--output")
            .arg(&out)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        Duration::from_secs(240),
    );
    (o, out)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The distinct pages the intervals of `phase` wrote.
fn pages_of_phase(trace: &Trace, phase: &str) -> BTreeSet<u64> {
    let mut pages = BTreeSet::new();
    for r in trace.rates().unwrap().iter().filter(|r| r.phase == phase) {
        pages.extend(trace.bitmap(r.interval).unwrap().pages());
    }
    pages
}

/// Names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// 64 MiB that compress poorly, made the same every time.
fn blob(len: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..len / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect()
}

/// The workload runs in the image (its files, its os-release), a file it writes reads back,
/// the 64 MiB file it reads in phase `read` is at least 16,384 written pages of that phase
/// (the page cache filled by the disk device's writes into guest RAM; the phase lasts a
/// second longer than the read, as an interval belongs to the phase it ends in), and the image's SHA-256
/// is what it was. Nothing is left beside the trace: the overlay was never a named file.
#[test]
fn a_workload_runs_in_the_image_which_is_never_written() {
    let _g = kvm_lock();
    let dir = Scratch::new("disk-plain");
    let t = tree(&dir, "tree", true, &[("data/blob", blob(64 << 20))]);
    let img = dir.join("plain.img");
    ext4(&t, &img, 160);
    std::fs::remove_dir_all(&t).unwrap();
    let before = sha256(&img);
    let script = "#!/bin/sh\ncat /etc/os-release\ndt-phase read\ncat /data/blob > /dev/null\nsleep 1\ndt-phase write\n\
                  echo written-in-guest > /root/new.txt\ndd if=/dev/zero of=/data/blob bs=1M count=4 conv=notrunc \
                  2>/dev/null\nsync\ncat /root/new.txt\n";
    let (o, out) = record(&dir, script, &img, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(sha256(&img), before, "the image was written");
    let trace = Trace::open(&out).unwrap();
    let console = String::from_utf8_lossy(&std::fs::read(out.join("console.log")).unwrap()).into_owned();
    assert!(console.contains("ID=dttest") && console.contains("written-in-guest"), "{console}");
    assert!(console.contains("DIRTYTRACE:disk_root:/dev/vda ext4"), "{console}");
    let read = pages_of_phase(&trace, "read").len() as u64;
    eprintln!("phase read: {read} distinct pages written (the file is {} pages)", (64 << 20) / 4096);
    assert!(read >= (64 << 20) / 4096, "phase read wrote {read} pages, fewer than the 64 MiB file read");
    let disk = &trace.manifest.guest["disk"];
    assert_eq!(disk["format"], "raw");
    assert_eq!(disk["size_bytes"], 160 * MIB);
    assert_eq!(disk["partition_table"], "none");
    assert_eq!(trace.manifest.engine.as_ref().unwrap().name, "qemu");
    assert_eq!(listing(&dir), ["plain.img", "trace", "w.sh"]);
}

/// A qcow2 of a GPT disk whose root is partition 2: `disk check` reads the layout on the host
/// and the probe boot finds the root and its system; `record` puts `--rootfs` and `--file`
/// into the image's tree (on the overlay) and the qcow2 stays as it was.
#[test]
fn a_gpt_qcow2_image_with_its_root_on_partition_2() {
    let _g = kvm_lock();
    let dir = Scratch::new("disk-gpt");
    let t = tree(&dir, "tree", true, &[]);
    let raw = gpt(&dir, &t);
    std::fs::remove_dir_all(&t).unwrap();
    let img = dir.join("gpt.qcow2");
    qcow2_of(&raw, &img);
    std::fs::remove_file(&raw).unwrap();
    let before = sha256(&img);

    let o = output_within(
        Command::new(bin()).args(["disk", "check"]).arg(&img).stdout(Stdio::piped()).stderr(Stdio::piped()),
        Duration::from_secs(180),
    );
    let report = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{report}{}", stderr(&o));
    assert!(report.contains("(qcow2, 162.0 MiB guest disk; backing files: none)"), "{report}");
    assert!(report.contains("gpt partition table; /dev/vda1 no known filesystem, /dev/vda2 ext4"), "{report}");
    assert!(report.contains("Root         /dev/vda2 ext4, /bin/sh runs"), "{report}");
    assert!(report.contains("System       dttest 1"), "{report}");
    assert!(report.contains("record --disk will work with this image"), "{report}");

    let extra_root = dir.join("extra");
    std::fs::create_dir_all(extra_root.join("opt")).unwrap();
    std::fs::write(extra_root.join("opt/from-rootfs"), "rootfs-file\n").unwrap();
    let file = write(&dir, "note.txt", "file-flag\n");
    let script = "#!/bin/sh\ncat /opt/from-rootfs /etc/note.txt\n";
    let rootfs = extra_root.to_str().unwrap().to_string();
    let file_arg = format!("{}:/etc/note.txt", file.display());
    let (o, out) = record(&dir, script, &img, &["--rootfs", &rootfs, "--file", &file_arg, "--disk-root", "/dev/vda2"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let console = String::from_utf8_lossy(&std::fs::read(out.join("console.log")).unwrap()).into_owned();
    assert!(console.contains("rootfs-file\r\nfile-flag") || console.contains("rootfs-file\nfile-flag"), "{console}");
    assert!(console.contains("DIRTYTRACE:disk_root:/dev/vda2 ext4"), "{console}");
    assert_eq!(sha256(&img), before, "the image was written");
    let trace = Trace::open(&out).unwrap();
    assert_eq!(trace.manifest.guest["disk"]["format"], "qcow2");
    assert_eq!(trace.manifest.guest["disk"]["partition_table"], "gpt");
}

fn refused(dir: &Path, disk: &Path, args: &[&str]) -> String {
    let w = write(dir, "w.sh", "#!/bin/sh\ntrue\n");
    let out = dir.join("trace");
    let t = Instant::now();
    let o = output_within(
        Command::new(bin())
            .args(["record", "--workload", w.to_str().unwrap(), "--disk"])
            .arg(disk)
            .arg("--output")
            .arg(&out)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        Duration::from_secs(60),
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(!out.exists(), "a refused recording left {}", out.display());
    assert!(t.elapsed() < Duration::from_secs(20), "refused only after {:?}: booted?", t.elapsed());
    stderr(&o).trim().to_string()
}

/// Images that cannot work are refused before boot, each with what is wrong and the path.
#[test]
fn unusable_images_are_refused_before_boot() {
    let dir = Scratch::new("disk-bad");
    let missing = dir.join("missing.img");
    assert_eq!(refused(&dir, &missing, &[]), format!("error: --disk {}: no such file", missing.display()));
    let e = refused(&dir, &dir, &[]);
    assert!(e.ends_with("a directory, not a disk image (give a raw or qcow2 image file)"), "{e}");
    let e = refused(&dir, Path::new("/dev/zero"), &[]);
    assert!(e.contains("--disk /dev/zero: a character device, not a disk image"), "{e}");
    let fifo = dir.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    assert!(refused(&dir, &fifo, &[]).contains("a FIFO, not a disk image"));
    std::fs::remove_file(&fifo).unwrap();

    let zeros = dir.join("zeros.img");
    std::fs::File::create(&zeros).unwrap().set_len(64 * MIB).unwrap();
    assert_eq!(
        refused(&dir, &zeros, &[]),
        format!(
            "error: --disk {}: no ext4, xfs or btrfs filesystem was found on it (looked at: no partition table; \
             /dev/vda no known filesystem); the workload runs in the image's Linux root filesystem",
            zeros.display()
        )
    );
    let empty = dir.join("empty.img");
    std::fs::write(&empty, b"").unwrap();
    assert_eq!(refused(&dir, &empty, &[]), format!("error: --disk {}: the image is empty", empty.display()));

    let t = tree(&dir, "tree", true, &[]);
    let raw = dir.join("fs.img");
    ext4(&t, &raw, 32);
    let q = dir.join("fs.qcow2");
    qcow2_of(&raw, &q);
    let len = std::fs::metadata(&q).unwrap().len();
    let cut = dir.join("cut.qcow2");
    std::fs::write(&cut, &std::fs::read(&q).unwrap()[..(len / 2) as usize]).unwrap();
    let e = refused(&dir, &cut, &[]);
    assert!(
        e.contains(&format!("--disk {}: not a usable qcow2 image:", cut.display())) && e.ends_with("truncated"),
        "{e}"
    );

    let base = dir.join("base.img");
    std::fs::copy(&raw, &base).unwrap();
    let over = dir.join("over.qcow2");
    run(Command::new("qemu-img").args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"]).arg(&base).arg(&over));
    std::fs::remove_file(&base).unwrap();
    assert_eq!(
        refused(&dir, &over, &[]),
        format!(
            "error: --disk {}: its backing file {} does not exist; the image needs it (see `qemu-img info`)",
            over.display(),
            base.display()
        )
    );
    let e = refused(&dir, &raw, &["--clock", "guest", "--keep-execution"]);
    assert!(e.contains("--keep-execution with --disk: QEMU's record/replay would need the disk's reads logged"), "{e}");
    let e = refused(&dir, &raw, &["--engine", "kvm"]);
    assert!(
        e.contains("--disk needs the QEMU engine (the own VMM has no block device): record with --engine qemu"),
        "{e}"
    );
    let e = refused(&dir, &raw, &["--disk-root", "/dev/sda1"]);
    assert!(e.contains("--disk-root /dev/sda1: the guest's disk is /dev/vda"), "{e}");
    let e = refused(&dir, &raw, &["--disk-root", "/dev/vda+1"]);
    assert!(e.contains("--disk-root /dev/vda+1: the guest's disk is /dev/vda"), "{e}");
    let e = refused(&dir, &raw, &["--disk-root", "/dev/vda1; reboot"]);
    assert!(e.contains("--disk-root /dev/vda1; reboot: the guest's disk is /dev/vda"), "{e}");
    // A path QEMU's JSON options cannot carry is refused, not a panic.
    let odd = dir.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"odd\xff.img"));
    std::fs::copy(&raw, &odd).unwrap();
    let e = refused(&dir, &odd, &[]);
    assert!(e.contains("its path is not UTF-8, which QEMU's -blockdev options cannot name"), "{e}");
    std::fs::remove_file(&odd).unwrap();
    let e = refused(&dir, &raw, &["--disk-root", "/dev/vda3"]);
    assert!(e.contains("has no such partition (no partition table; /dev/vda ext4)"), "{e}");
}

/// A root filesystem without `/bin/sh` is found, and the guest says why it cannot run there.
#[test]
fn a_root_without_a_shell_is_reported_by_the_guest() {
    let _g = kvm_lock();
    let dir = Scratch::new("disk-nosh");
    let t = tree(&dir, "tree", false, &[]);
    let img = dir.join("nosh.img");
    ext4(&t, &img, 32);
    std::fs::remove_dir_all(&t).unwrap();
    let (o, _out) = record(&dir, "#!/bin/sh\ntrue\n", &img, &[]);
    let e = stderr(&o);
    assert_ne!(o.status.code(), Some(0), "{e}");
    assert!(
        e.contains(
            "the guest could not run the workload: no root filesystem with /bin/sh on the disk (looked at: \
                    /dev/vda:ext4-without-/bin/sh)"
        ),
        "{e}"
    );
    let check = Command::new(bin()).args(["disk", "check"]).arg(&img).output().unwrap();
    assert_eq!(check.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&check.stdout).contains("will not work: no root filesystem with /bin/sh"));

    // A /bin/sh that is there but does not run (it exits 1; a symlink loop is the same) is
    // named as such, not as missing.
    let t = tree(&dir, "tree", false, &[]);
    std::fs::write(t.join("bin/sh"), "#!/bin/busybox false\n").unwrap();
    std::fs::set_permissions(t.join("bin/sh"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let img = dir.join("shfalse.img");
    ext4(&t, &img, 32);
    std::fs::remove_dir_all(&t).unwrap();
    let (o, _out) = record(&dir, "#!/bin/sh\ntrue\n", &img, &[]);
    let e = stderr(&o);
    assert!(e.contains("(looked at: /dev/vda:ext4-whose-/bin/sh-does-not-run)"), "{e}");
}

/// Interrupted (SIGINT) or killed (SIGKILL) mid-run, with the workload writing to its disk,
/// the image is unchanged, QEMU is gone, and nothing but the trace is left.
#[test]
fn the_image_is_unchanged_after_sigint_and_sigkill() {
    let _g = kvm_lock();
    let dir = Scratch::new("disk-kill");
    let t = tree(&dir, "tree", true, &[]);
    let img = dir.join("k.img");
    ext4(&t, &img, 64);
    std::fs::remove_dir_all(&t).unwrap();
    let before = sha256(&img);
    let w = write(
        &dir,
        "w.sh",
        "#!/bin/sh\nwhile true; do dd if=/dev/zero of=/root/f bs=1M count=8 2>/dev/null; sync; done\n",
    );
    for signal in [nix::sys::signal::Signal::SIGINT, nix::sys::signal::Signal::SIGKILL] {
        let out = dir.join("trace");
        let mut child = Command::new(bin())
            .args(["record", "--mem", "256MiB", "--workload", w.to_str().unwrap(), "--disk"])
            .arg(&img)
            .arg("--output")
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        // Until the workload runs: its writes go through the overlay.
        while !std::fs::read(out.join("console.log"))
            .map(|c| String::from_utf8_lossy(&c).contains("workload_start"))
            .unwrap_or(false)
            && !std::fs::read(out.join("journal.dtj")).is_ok_and(|j| j.len() > 200_000)
        {
            assert!(t0.elapsed() < Duration::from_secs(120), "the workload did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_secs(2));
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
        let status = wait_within(&mut child, Duration::from_secs(60), "the recorder");
        if signal == nix::sys::signal::Signal::SIGINT {
            assert_eq!(status.code(), Some(130));
        }
        // QEMU dies with the recorder (parent-death signal); give it a moment.
        let t1 = Instant::now();
        while qemu_running_on(&img) {
            assert!(t1.elapsed() < Duration::from_secs(10), "QEMU outlived the recorder ({signal})");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(sha256(&img), before, "the image was written ({signal})");
        assert_eq!(listing(&dir), ["k.img", "trace", "w.sh"], "({signal})");
        std::fs::remove_dir_all(&out).unwrap();
    }
}

/// Whether a QEMU process has `img` open.
fn qemu_running_on(img: &Path) -> bool {
    let img = img.canonicalize().unwrap();
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        comm.starts_with("qemu-system")
            && std::fs::read_dir(e.path().join("fd"))
                .map(|fds| fds.flatten().any(|f| std::fs::read_link(f.path()).is_ok_and(|l| l == img)))
                .unwrap_or(false)
    })
}

/// An image another QEMU has open for writing is refused with a message that says so.
#[test]
fn an_image_in_use_by_another_vm_is_refused() {
    let _g = kvm_lock();
    let dir = Scratch::new("disk-locked");
    let t = tree(&dir, "tree", true, &[]);
    let img = dir.join("busy.img");
    ext4(&t, &img, 32);
    std::fs::remove_dir_all(&t).unwrap();
    let mut other = Command::new("qemu-system-x86_64")
        .args(["-S", "-display", "none", "-nodefaults", "-accel", "tcg", "-drive"])
        .arg(format!("file={},format=raw,if=virtio", img.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _kill = Kill(&mut other);
    let t0 = Instant::now();
    while !qemu_running_on(&img) {
        assert!(t0.elapsed() < Duration::from_secs(30), "the other QEMU did not open the image");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (o, out) = record(&dir, "#!/bin/sh\ntrue\n", &img, &[]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains(&format!(
            "--disk {}: another process uses the image (QEMU could not take its lock): stop the VM that runs it, or \
             record a copy of the image",
            img.display()
        )),
        "{e}"
    );
    assert!(!out.exists());
}

/// `--package` resolves packages for the host's distribution: an image of another one is
/// refused by the guest, naming both.
#[test]
fn packages_for_another_distribution_are_refused() {
    let _g = kvm_lock();
    let dir = Scratch::new("disk-pkg");
    let t = tree(&dir, "tree", true, &[]);
    let img = dir.join("other.img");
    ext4(&t, &img, 32);
    std::fs::remove_dir_all(&t).unwrap();
    let (o, _) = record(&dir, "#!/bin/sh\ntrue\n", &img, &["--package", "stress-ng"]);
    let e = stderr(&o);
    assert_ne!(o.status.code(), Some(0), "{e}");
    let host = dirtytrace::guest::linux::initramfs::host_os();
    assert!(
        e.contains(&format!(
            "--package: the image runs 'dttest 1' but the packages were resolved on the host for '{host}'"
        )),
        "{e}"
    );
}

/// A minimal Debian bookworm with python3, made by `mmdebstrap` from the host's apt sources
/// into an ext4 image, and kept in dirtytrace's cache by what it is made of (the command and
/// the candidate versions of its packages), as the package cache is: built once per change.
fn debian_image(dir: &Path) -> PathBuf {
    use sha2::Digest;
    let args = ["--variant=minbase", "--include=python3-minimal", "bookworm"];
    let policy = Command::new("apt-cache")
        .args(["policy", "python3-minimal", "base-files", "libc6"])
        .output()
        .expect("apt-cache (a Debian host; .ci/run runs there)");
    let mut key = sha2::Sha256::new();
    key.update(args.join(" "));
    key.update(&policy.stdout);
    let name = format!("debian-python3-{}.img", &dirtytrace::units::hex(&key.finalize())[..16]);
    let cache = dirtytrace::guest::linux::kit::cache_dir().join("test-images");
    let img = cache.join(&name);
    if img.exists() {
        return img;
    }
    std::fs::create_dir_all(&cache).unwrap();
    let tar = dir.join("debian.tar");
    run(Command::new("mmdebstrap").arg("--quiet").args(args).arg(&tar));
    let root = dir.join("debian");
    std::fs::create_dir_all(&root).unwrap();
    run(Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(&root).arg("--numeric-owner"));
    std::fs::remove_file(&tar).unwrap();
    let tmp = cache.join(format!("{name}.tmp{}", std::process::id()));
    ext4(&root, &tmp, 1024);
    std::fs::remove_dir_all(&root).unwrap();
    std::fs::rename(&tmp, &img).unwrap();
    img
}

/// One real distribution: Debian's own python3, in a Debian image, runs the workload; the
/// 32 MiB it fills in phase `fill` are in that phase's written pages; `--package stress-ng`
/// from the host's apt runs there too.
#[test]
fn debian_s_own_python_runs_the_workload() {
    let dir = Scratch::new("disk-debian");
    let img = debian_image(&dir);
    let _g = kvm_lock();
    let before = sha256(&img);
    let script = "#!/bin/sh\n. /etc/os-release\necho \"system: $PRETTY_NAME\"\npython3 --version\ndt-phase fill\n\
                  python3 -c 'b = bytearray(32 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\nprint(\"filled\", \
                  len(b))'\nsleep 1\ndt-phase done\nstress-ng --version\n";
    // A package from the host's apt goes into the image's tree (the same distribution).
    let (o, out) = record(&dir, script, &img, &["--package", "stress-ng"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let console = String::from_utf8_lossy(&std::fs::read(out.join("console.log")).unwrap()).into_owned();
    assert!(console.contains("system: Debian GNU/Linux 12 (bookworm)"), "{console}");
    assert!(console.contains("Python 3.11") && console.contains("filled 33554432"), "{console}");
    assert!(console.contains("stress-ng, version 0."), "{console}");
    let trace = Trace::open(&out).unwrap();
    let fill = pages_of_phase(&trace, "fill").len() as u64;
    assert!(fill >= (32 << 20) / 4096, "phase fill wrote {fill} pages, fewer than python's 32 MiB");
    assert_eq!(sha256(&img), before, "the image was written");
}

/// An image the user cannot read is refused before boot, as user `nobody` finds.
#[test]
fn an_image_the_user_cannot_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = Scratch::new("disk-unreadable");
    std::fs::set_permissions(&*dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let img = dir.join("private.img");
    std::fs::File::create(&img).unwrap().set_len(MIB).unwrap();
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o600)).unwrap();
    let w = write(&dir, "w.sh", "#!/bin/sh\ntrue\n");
    std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = output_within(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
            .arg(bin())
            .args(["record", "--workload", w.to_str().unwrap(), "--disk"])
            .arg(&img)
            .arg("--output")
            .arg(dir.join("trace"))
            .env("HOME", &*dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        Duration::from_secs(60),
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o).trim(),
        format!(
            "error: --disk {}: cannot read it (Permission denied (os error 13)); dirtytrace needs read access only",
            img.display()
        )
    );
}
