//! Root filesystems in the initramfs: a directory and the same tree as .tar, .tar.gz and
//! .tar.zst read back entry by entry; the cache key; the `initramfs` command; bad input.
//! No KVM needed, except for the one `record` refusal that a too-large archive gets.

mod common;

use common::*;
use dirtytrace::guest::linux::initramfs::{self, ArchiveEntry, Contents, Inputs};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

fn inputs(dir: &Path, rootfs: Option<&Path>) -> Inputs {
    Inputs {
        busybox: fake_busybox(),
        script: write(dir, "w.sh", "#!/bin/sh\necho hi\n"),
        contents: Contents { rootfs: rootfs.map(Path::to_path_buf), ..Default::default() },
        disk: None,
    }
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").unwrap().uid() == 0
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A small tree with everything a rootfs holds: modes, symlinks, a hard link, a FIFO, a device
/// node and a socket, plus a merged-/usr `bin -> usr/bin` and its own `sh`.
fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::fs::create_dir_all(root.join("etc/private")).unwrap();
    std::fs::create_dir_all(root.join("dev")).unwrap();
    std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
    std::fs::write(root.join("usr/bin/sh"), "#!fake dash\n").unwrap();
    chmod(&root.join("usr/bin/sh"), 0o755);
    std::fs::write(root.join("etc/motd"), "hello from the rootfs\n").unwrap();
    chmod(&root.join("etc/motd"), 0o640);
    chmod(&root.join("etc/private"), 0o700);
    std::fs::write(root.join("etc/private/secret"), "s3cret").unwrap();
    chmod(&root.join("etc/private/secret"), 0o600);
    std::os::unix::fs::symlink("/etc/motd", root.join("etc/motd.link")).unwrap();
    std::fs::write(root.join("usr/bin/tool"), vec![7u8; 10_000]).unwrap();
    chmod(&root.join("usr/bin/tool"), 0o4755);
    std::fs::hard_link(root.join("usr/bin/tool"), root.join("usr/bin/tool2")).unwrap();
    nix::unistd::mkfifo(&root.join("etc/fifo"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let null = root.join("dev/null");
    let made = nix::sys::stat::mknod(
        &null,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    );
    assert!(made.is_ok() || !is_root(), "mknod as root: {made:?}");
    let _sock = std::os::unix::net::UnixListener::bind(root.join("etc/sock")).unwrap();
}

fn get<'a>(entries: &'a [ArchiveEntry], name: &str) -> &'a ArchiveEntry {
    let found: Vec<&ArchiveEntry> = entries.iter().filter(|e| e.name == name).collect();
    assert_eq!(
        found.len(),
        1,
        "{name} should be there once: {:?}",
        entries.iter().map(|e| &e.name).collect::<Vec<_>>()
    );
    found[0]
}

fn absent(entries: &[ArchiveEntry], name: &str) {
    assert!(!entries.iter().any(|e| e.name == name), "{name} should not be in the archive");
}

/// What a rootfs must look like in the archive, whatever it came from.
fn check_tree(entries: &[ArchiveEntry], notes: &[String]) {
    assert_eq!(get(entries, "bin").mode, 0o120777);
    assert_eq!(get(entries, "bin").data, b"usr/bin");
    assert_eq!(get(entries, "usr/bin/sh").data, b"#!fake dash\n", "the rootfs's own sh is kept");
    // Ours go on top, through the rootfs's bin -> usr/bin; no second sh.
    assert_eq!(get(entries, "bin/busybox").data, std::fs::read("/bin/true").unwrap());
    absent(entries, "bin/sh");
    assert_eq!(get(entries, "init").data, initramfs::INIT.as_bytes());
    assert_eq!(get(entries, "bin/dt-phase").data, initramfs::DT_PHASE.as_bytes());
    assert_eq!(get(entries, "workload.sh").data, b"#!/bin/sh\necho hi\n");
    let motd = get(entries, "etc/motd");
    assert_eq!((motd.mode, motd.data.as_slice()), (0o100640, &b"hello from the rootfs\n"[..]));
    assert_eq!(get(entries, "etc/private").mode, 0o040700);
    assert_eq!(get(entries, "etc/private/secret").mode, 0o100600);
    assert_eq!(get(entries, "etc/motd.link").data, b"/etc/motd");
    assert_eq!(get(entries, "etc/fifo").mode, 0o010644);
    // The hard link: one copy of the data, both names on one inode.
    let (t1, t2) = (get(entries, "usr/bin/tool"), get(entries, "usr/bin/tool2"));
    assert_eq!((t1.mode, t1.data.len(), t1.nlink), (0o104755, 10_000, 2));
    assert_eq!((t2.mode, t2.data.len(), t2.nlink, t2.ino), (0o104755, 0, 2, t1.ino));
    assert_eq!(entries.iter().filter(|e| e.ino == t1.ino).count(), 2, "inode numbers are unique otherwise");
    // The device node and the socket are left out, with a note; dirtytrace's own console stays.
    absent(entries, "dev/null");
    absent(entries, "etc/sock");
    assert_eq!(get(entries, "dev/console").mode, 0o020600);
    let skipped: Vec<&String> = notes.iter().filter(|n| n.contains("device nodes and sockets")).collect();
    assert_eq!(skipped.len(), 1, "{notes:?}");
    assert!(skipped[0].contains("dev/null"), "{notes:?}");
    // Directories come before what they hold.
    let pos = |n: &str| entries.iter().position(|e| e.name == n).unwrap();
    assert!(pos("etc") < pos("etc/private") && pos("etc/private") < pos("etc/private/secret"));
}

#[test]
fn directory_and_tarballs_give_the_same_tree() {
    let dir = Scratch::new("rootfs-same");
    let root = dir.join("root");
    make_tree(&root);
    let built = initramfs::build_with(&inputs(&dir, Some(&root)), None, &mut |_| {}).unwrap();
    let from_dir = initramfs::read_entries(&built.bytes).unwrap();
    check_tree(&from_dir, &built.notes);
    assert!(built.notes[0].starts_with("skipped 2 device nodes and sockets"), "{:?}", built.notes);
    assert_eq!(built.entries as usize, from_dir.len());
    assert!(built.min_mem() > built.unpacked_bytes + built.bytes.len() as u64);

    // The same tree through GNU tar (sockets are ignored by tar itself).
    let tar = dir.join("root.tar");
    let st = Command::new("tar").arg("-C").arg(&root).args(["--sort=name", "-cf"]).arg(&tar).arg(".").status().unwrap();
    assert!(st.success());
    let raw = std::fs::read(&tar).unwrap();
    let gz = dir.join("root.tar.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut enc, &raw).unwrap();
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    let zst = dir.join("root.tar.zst");
    std::fs::write(&zst, zstd::encode_all(&raw[..], 3).unwrap()).unwrap();
    for archive in [&tar, &gz, &zst] {
        let built = initramfs::build_with(&inputs(&dir, Some(archive)), None, &mut |_| {}).unwrap();
        let entries = initramfs::read_entries(&built.bytes).unwrap();
        check_tree(&entries, &built.notes);
        // Names, modes, owners, mtimes and data agree with the directory's archive, in order.
        let view = |v: &[ArchiveEntry]| -> Vec<(String, u32, u32, u32, u32, Vec<u8>)> {
            v.iter().map(|e| (e.name.clone(), e.mode, e.uid, e.gid, e.mtime, e.data.clone())).collect()
        };
        assert_eq!(view(&entries), view(&from_dir), "{}", archive.display());
    }
}

/// A file GNU tar stored sparse (`--sparse`, entry type `S`) is packed whole: its holes as
/// zeroes, its data where it was.
#[test]
fn a_sparse_file_in_a_tarball_is_packed_whole() {
    let dir = Scratch::new("rootfs-gnu-sparse");
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let mut want = vec![0u8; 1 << 20];
    want[300_000..300_005].copy_from_slice(b"first");
    want.extend_from_slice(b"last");
    let f = std::fs::File::create(root.join("holes")).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"first", 300_000).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"last", 1 << 20).unwrap();
    drop(f);
    let tar = dir.join("root.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["--sparse", "--format=gnu", "-cf"])
        .arg(&tar)
        .arg("holes")
        .status()
        .unwrap();
    assert!(st.success());
    // GNU tar wrote it as a sparse entry (type 'S' at byte 156 of its header).
    assert_eq!(std::fs::read(&tar).unwrap()[156], b'S');
    let built = initramfs::build_with(&inputs(&dir, Some(&tar)), None, &mut |_| {}).unwrap();
    assert!(!built.notes.iter().any(|n| n.contains("holes")), "{:?}", built.notes);
    let entries = initramfs::read_entries(&built.bytes).unwrap();
    assert!(get(&entries, "holes").data == want, "the sparse file's content differs");
}

/// A file stored sparse in the PAX format is refused, naming it and the formats that work: the
/// tar reader would have packed its sparse map under a made-up name instead of the file.
#[test]
fn a_pax_sparse_file_in_a_tarball_is_refused() {
    let dir = Scratch::new("rootfs-pax-sparse");
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let f = std::fs::File::create(root.join("holes")).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"last", 10 << 20).unwrap();
    drop(f);
    for (name, compress) in [("pax.tar", false), ("pax.tar.gz", true)] {
        let tar = dir.join(name);
        let mut cmd = Command::new("tar");
        cmd.arg("-C").arg(&root).args(["--sparse", "--format=pax"]);
        if compress {
            cmd.arg("-z");
        }
        assert!(cmd.arg("-cf").arg(&tar).arg("holes").status().unwrap().success());
        let e = initramfs::build_with(&inputs(&dir, Some(&tar)), None, &mut |_| {}).err().unwrap().to_string();
        assert!(e.contains(": holes is a sparse file in the PAX format") && e.contains("--format=gnu"), "{e}");
    }
}

#[test]
fn the_cache_key_follows_content_and_never_goes_stale() {
    let dir = Scratch::new("rootfs-cache");
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("data")).unwrap();
    let file = root.join("data/file");
    std::fs::write(&file, "version 1").unwrap();
    let cache = dir.join("cache");
    let inp = inputs(&dir, Some(&root));
    // Just written: such a tree could still change within its timestamps' tick, so not cached.
    let first = initramfs::build_with(&inp, Some(&cache), &mut |_| {}).unwrap();
    assert!(!first.cached);
    assert!(!initramfs::build_with(&inp, Some(&cache), &mut |_| {}).unwrap().cached);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let stored = initramfs::build_with(&inp, Some(&cache), &mut |_| {}).unwrap();
    assert!(!stored.cached);
    let again = initramfs::build_with(&inp, Some(&cache), &mut |_| {}).unwrap();
    assert!(again.cached);
    assert_eq!(again.bytes, stored.bytes);
    assert_eq!((again.unpacked_bytes, again.entries), (stored.unpacked_bytes, stored.entries));
    // Same size, same mtime, other content: the ctime gives it away.
    let m = std::fs::metadata(&file).unwrap();
    std::fs::write(&file, "version 2").unwrap();
    std::fs::File::options().write(true).open(&file).unwrap().set_modified(m.modified().unwrap()).unwrap();
    let n = std::fs::metadata(&file).unwrap();
    assert_eq!((n.len(), n.mtime(), n.mtime_nsec()), (m.len(), m.mtime(), m.mtime_nsec()));
    let changed = initramfs::build_with(&inp, Some(&cache), &mut |_| {}).unwrap();
    assert!(!changed.cached);
    assert_eq!(get(&initramfs::read_entries(&changed.bytes).unwrap(), "data/file").data, b"version 2");
    // A changed script or --file changes the key too.
    let mut other = inp.clone();
    other.script = write(&dir, "w2.sh", "#!/bin/sh\necho other\n");
    assert!(!initramfs::build_with(&other, Some(&cache), &mut |_| {}).unwrap().cached);
}

#[test]
fn initramfs_command_writes_what_record_would_boot() {
    let dir = Scratch::new("initramfs-cmd");
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("opt")).unwrap();
    std::fs::write(root.join("opt/data"), "payload").unwrap();
    let extra = write(&dir, "extra.bin", "EXTRA");
    let script = write(&dir, "w.sh", "#!/bin/sh\necho hi\n");
    let cache = dir.join("cache");
    let out = dir.join("a.cpio.gz");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let file_arg = format!("{}:/usr/bin/extra", s(&extra));
    let bb = s(&fake_busybox());
    let args = [
        "initramfs",
        "--workload",
        &s(&script),
        "--rootfs",
        &s(&root),
        "--file",
        &file_arg,
        "-o",
        &s(&out),
        "--busybox",
        &bb,
    ];
    let Run { code, stderr, .. } = cli_env(&args, &[("DIRTYTRACE_CACHE", &s(&cache))]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains(&format!("wrote {}", out.display())) && stderr.contains("MiB unpacked"), "{stderr}");
    let written = std::fs::read(&out).unwrap();
    // The library, with record's inputs and cache, gives the very same bytes.
    let inp = Inputs {
        busybox: fake_busybox(),
        script: script.clone(),
        contents: Contents { files: vec![file_arg.clone()], rootfs: Some(root.clone()), ..Default::default() },
        disk: None,
    };
    let lib = initramfs::build_with(&inp, None, &mut |_| {}).unwrap();
    assert_eq!(lib.bytes, written);
    let entries = initramfs::read_entries(&written).unwrap();
    assert_eq!(get(&entries, "opt/data").data, b"payload");
    assert_eq!(get(&entries, "usr/bin/extra").data, b"EXTRA");
    // It never overwrites a file.
    let Run { code, stderr, .. } = cli_env(&args, &[("DIRTYTRACE_CACHE", &s(&cache))]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("already exists"), "{stderr}");
    assert_eq!(std::fs::read(&out).unwrap(), written);
}

/// A tarball whose one entry is called `name` (written raw: tar writers refuse such names).
fn evil_tar(path: &Path, name: &str) {
    let mut h = tar::Header::new_ustar();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_size(4);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    let mut data = h.as_bytes().to_vec();
    data.extend_from_slice(b"evil");
    data.resize(data.len() + 508 + 1024, 0);
    std::fs::write(path, data).unwrap();
}

#[test]
fn bad_rootfs_input_is_named_and_leaves_nothing() {
    let dir = Scratch::new("rootfs-bad");
    let script = write(&dir, "w.sh", "true\n");
    let out = dir.join("out.cpio.gz");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let bb = s(&fake_busybox());
    let attempt = |rootfs: &Path| {
        cli(&["initramfs", "--workload", &s(&script), "--rootfs", &s(rootfs), "-o", &s(&out), "--busybox", &bb])
    };
    let missing = dir.join("no-such-root");
    let Run { code, stderr: e, .. } = attempt(&missing);
    assert_eq!(code, Some(1));
    assert!(e.contains(&format!("--rootfs {}: no such file or directory", missing.display())), "{e}");
    let text = write(&dir, "notes.txt", "just text, no tar header here");
    let Run { stderr: e, .. } = attempt(&text);
    assert!(e.contains(&format!("--rootfs {}: neither a directory nor a tar archive", text.display())), "{e}");
    for (file, name, says) in [
        ("dotdot.tar", "../etc/passwd", "climbs out of the root"),
        ("deep.tar", "usr/../../x", "climbs out of the root"),
        ("abs.tar", "/etc/passwd", "is an absolute path"),
    ] {
        let t = dir.join(file);
        evil_tar(&t, name);
        let Run { code, stderr: e, .. } = attempt(&t);
        assert_eq!(code, Some(1));
        assert!(e.contains(&format!("--rootfs {}: entry {name} {says}", t.display())), "{e}");
        assert!(e.contains("refusing"), "{e}");
    }
    // An entry this user cannot read (root reads everything, so the check runs as nobody).
    let root = dir.join("unreadable-root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/shadow"), "x").unwrap();
    chmod(&root.join("etc/shadow"), 0o000);
    let free = dir.join("free");
    std::fs::create_dir_all(&free).unwrap();
    chmod(&free, 0o777);
    for p in [dir.to_path_buf(), root.join("etc")] {
        chmod(&p, 0o755);
    }
    let out2 = free.join("out.cpio.gz");
    let args = ["initramfs", "--workload", &s(&script), "--rootfs", &s(&root), "-o", &s(&out2)];
    let mut c = if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]).arg(bin());
        c
    } else {
        Command::new(bin())
    };
    let o = c
        .args(args)
        .env("DIRTYTRACE_BUSYBOX", fake_busybox())
        .env("DIRTYTRACE_CACHE", free.join("cache"))
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains(&format!("--rootfs {}: cannot read {}", root.display(), root.join("etc/shadow").display())),
        "{e}"
    );
    assert!(e.contains("Permission denied"), "{e}");
    assert!(!out.exists() && !out2.exists(), "bad input leaves no archive");
}

#[test]
fn bad_package_input_is_named() {
    let dir = Scratch::new("packages-bad");
    let script = write(&dir, "w.sh", "true\n");
    let out = dir.join("out.cpio.gz");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let bb = s(&fake_busybox());
    let args = [
        "initramfs",
        "--workload",
        &s(&script),
        "--package",
        "dirtytrace-no-such-package",
        "-o",
        &s(&out),
        "--busybox",
        &bb,
    ];
    let Run { code, stderr: e, .. } = cli_env(&args, &[("DIRTYTRACE_CACHE", &s(&dir.join("cache")))]);
    assert_eq!(code, Some(1));
    // apt's own message, after the package's name.
    assert!(e.contains("--package dirtytrace-no-such-package: apt-get cannot resolve it: E: Unable to locate package dirtytrace-no-such-package"), "{e}");
    // A host without apt: the error points to --rootfs.
    let o = Command::new(bin())
        .args(args)
        .env("PATH", dir.join("no-bin"))
        .env("DIRTYTRACE_CACHE", dir.join("cache"))
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        e.contains("--package dirtytrace-no-such-package: this host has no `apt-get`") && e.contains("--rootfs"),
        "{e}"
    );
    assert!(!out.exists());
}

/// A minimal x86-64 ELF that is never run: the archive is refused before any VM exists.
fn never_booted_kernel(dir: &Path) -> PathBuf {
    let mut elf = vec![0u8; 4096];
    elf[..20].copy_from_slice(&[0x7F, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 62, 0]);
    let p = dir.join("kernel.elf");
    std::fs::write(&p, elf).unwrap();
    p
}

#[test]
fn an_archive_too_large_for_mem_is_refused_before_booting() {
    let dir = Scratch::new("rootfs-big");
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("big"), vec![0u8; 40 << 20]).unwrap();
    let script = write(&dir, "w.sh", "true\n");
    let kernel = never_booted_kernel(&dir);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let trace = dir.join("trace");
    let bb = s(&fake_busybox());
    let args = ["record", "--workload", &s(&script), "--kernel", &s(&kernel), "--mem", "128MiB", "--rootfs", &s(&root)];
    let trace_arg = s(&trace);
    let args = [&args[..], &["--busybox", &bb, "--output", &trace_arg]].concat();
    let Run { code, stderr: e, .. } = cli_env(&args, &[("DIRTYTRACE_CACHE", &s(&dir.join("cache")))]);
    assert_eq!(code, Some(1), "{e}");
    assert!(
        e.contains(&format!("the initramfs from --rootfs {} is too large for --mem 128 MiB", root.display())),
        "{e}"
    );
    assert!(e.contains("pass --mem 137MiB or more"), "{e}");
    assert!(!trace.exists(), "no output directory");
}

/// A tarball holding one file `d/d/…/d/f`, `depth` directories deep.
fn deep_tar(path: &Path, depth: usize) -> String {
    let name = format!("{}f", "d/".repeat(depth));
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut h = tar::Header::new_gnu();
    h.set_size(4);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, &name, &b"deep"[..]).unwrap();
    b.into_inner().unwrap();
    name
}

/// Issue 15, defect 2: a deep path took time growing as depth⁴ (0.9 s at 250 levels, more
/// than 120 s at 1000). Now resolving a name is linear in its length, and a name past the
/// kernel's PATH_MAX or dirtytrace's depth cap is refused at once, named.
#[test]
fn deep_paths_in_a_rootfs_pack_fast_or_are_refused_fast() {
    let dir = Scratch::new("rootfs-deep");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    for depth in [200, 1000] {
        let t = dir.join(format!("deep{depth}.tar"));
        let name = deep_tar(&t, depth);
        let start = std::time::Instant::now();
        let built = initramfs::build_with(&inputs(&dir, Some(&t)), None, &mut |_| {}).unwrap();
        let took = start.elapsed();
        assert!(took < std::time::Duration::from_secs(5), "depth {depth} took {took:?}");
        let entries = initramfs::read_entries(&built.bytes).unwrap();
        assert_eq!(get(&entries, &name).data, b"deep");
        assert_eq!(entries.iter().filter(|e| e.mode == 0o040755 && e.name.split('/').all(|c| c == "d")).count(), depth);
    }
    // 3000 levels (a 6 KB name): refused at once by the command, the entry named.
    let t = dir.join("deep3000.tar");
    deep_tar(&t, 3000);
    let script = write(&dir, "w.sh", "true\n");
    let out = dir.join("out.cpio.gz");
    let start = std::time::Instant::now();
    let o = output_within(
        Command::new(bin())
            .args(["initramfs", "--workload", &s(&script), "--rootfs", &s(&t), "-o", &s(&out)])
            .env("DIRTYTRACE_BUSYBOX", fake_busybox())
            .env("DIRTYTRACE_CACHE", dir.join("cache"))
            .stderr(std::process::Stdio::piped()),
        std::time::Duration::from_secs(60),
    );
    let took = start.elapsed();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(took < std::time::Duration::from_secs(5), "refusing took {took:?}");
    assert!(e.contains(&format!("--rootfs {}: entry d/d/d/", t.display())), "{e}");
    assert!(e.contains("d/d/f is too long for the initramfs: its name is 6001 bytes"), "{e}");
    assert!(e.contains("PATH_MAX") && e.contains("refusing the archive"), "{e}");
    assert!(e.len() < 1000, "the name is shortened: {e}");
    assert!(!out.exists());
    // Deeper than the cap within PATH_MAX, in a tarball and in a directory.
    let t = dir.join("deep1100.tar");
    deep_tar(&t, initramfs::MAX_DEPTH + 76);
    let err = initramfs::build_with(&inputs(&dir, Some(&t)), None, &mut |_| {}).err().unwrap();
    assert!(format!("{err:#}").contains("it has 1101 path components, more than the 1024"), "{err:#}");
    let root = dir.join("root");
    let deep = root.join("d/".repeat(initramfs::MAX_DEPTH + 1));
    std::fs::create_dir_all(&deep).unwrap();
    let err = initramfs::build_with(&inputs(&dir, Some(&root)), None, &mut |_| {}).err().unwrap();
    let err = format!("{err:#}");
    assert!(err.contains(&format!("--rootfs {}: d/d/", root.display())), "{err}");
    assert!(err.contains("has 1025 path components, more than the 1024 dirtytrace packs"), "{err}");
}

/// Runs `dirtytrace ARGS` with the fake busybox and a cache in `dir`, failing the test if it
/// runs a minute; returns the exit code, stderr and how long it took.
fn run_timed(dir: &Path, args: &[&str]) -> (Option<i32>, String, std::time::Duration) {
    let start = std::time::Instant::now();
    let o = output_within(
        Command::new(bin())
            .args(args)
            .env("DIRTYTRACE_BUSYBOX", fake_busybox())
            .env("DIRTYTRACE_CACHE", dir.join("cache"))
            .stderr(std::process::Stdio::piped()),
        std::time::Duration::from_secs(60),
    );
    (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned(), start.elapsed())
}

/// Issue 15, defect 3: `initramfs --file` hashed a 1 TiB sparse file for about 50 minutes
/// before its size was looked at. It is refused first, as `record` refuses it, flag named.
#[test]
fn a_huge_file_is_refused_before_it_is_read() {
    let dir = Scratch::new("initramfs-hugefile");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let big = dir.join("big");
    std::fs::File::create(&big).unwrap().set_len(1 << 40).unwrap();
    let script = write(&dir, "w.sh", "true\n");
    let out = dir.join("out.cpio.gz");
    let file_arg = format!("{}:/big", s(&big));
    let args = ["initramfs", "--workload", &s(&script), "--file", &file_arg, "-o", &s(&out)];
    let (code, e, took) = run_timed(&dir, &args);
    assert_eq!(code, Some(1), "{e}");
    assert!(took < std::time::Duration::from_secs(5), "took {took:?}");
    assert!(e.contains(&format!("--file {file_arg}: {} is 1099511627776 bytes", big.display())), "{e}");
    assert!(e.contains("more than the guest's --mem of 2048 MiB; give a smaller file or a larger --mem"), "{e}");
    // With a --mem above 4 GiB the newc limit refuses it, still before reading it.
    let (code, e, took) = run_timed(&dir, &[&args[..], &["--mem", "64GiB"]].concat());
    assert_eq!(code, Some(1), "{e}");
    assert!(took < std::time::Duration::from_secs(5), "took {took:?}");
    assert!(e.contains("more than the 4 GiB the initramfs format (newc cpio) holds per file"), "{e}");
    assert!(!out.exists());
}

/// Issue 15, defect 9: ten sparse files of nearly 4 GiB were packed (19.8 s, 254 MB) before
/// "too large for --mem". Their sizes are summed first, by `initramfs` and `record` alike.
#[test]
fn a_rootfs_larger_than_mem_is_refused_before_packing() {
    let dir = Scratch::new("rootfs-sparse");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    for i in 0..10 {
        std::fs::File::create(root.join(format!("f{i}"))).unwrap().set_len(4000 << 20).unwrap();
    }
    let script = write(&dir, "w.sh", "true\n");
    let out = dir.join("out.cpio.gz");
    let (code, e, took) =
        run_timed(&dir, &["initramfs", "--workload", &s(&script), "--rootfs", &s(&root), "-o", &s(&out)]);
    assert_eq!(code, Some(1), "{e}");
    assert!(took < std::time::Duration::from_secs(5), "took {took:?}");
    assert!(e.contains(&format!("the initramfs from --rootfs {} is too large for --mem 2048 MiB", root.display())));
    assert!(
        e.contains("its files alone take 40000.0 MiB unpacked") && e.contains("pass --mem 40097MiB or more"),
        "{e}"
    );
    assert!(!out.exists());
    // record, through the same check, before any VM.
    let kernel = never_booted_kernel(&dir);
    let trace = dir.join("trace");
    let (code, e, took) = run_timed(
        &dir,
        &["record", "--workload", &s(&script), "--kernel", &s(&kernel), "--rootfs", &s(&root), "-o", &s(&trace)],
    );
    assert_eq!(code, Some(1), "{e}");
    assert!(took < std::time::Duration::from_secs(5), "took {took:?}");
    assert!(e.contains("is too large for --mem 2048 MiB: its files alone take 40000.0 MiB"), "{e}");
    assert!(!trace.exists());
}

/// Issue 15, defect 10: `initramfs --workload` said "does not exist" for a directory and for
/// /dev/zero, and packed a .toml as /workload.sh. It checks the script as `record` does.
#[test]
fn initramfs_checks_the_workload_as_record_does() {
    let dir = Scratch::new("initramfs-workload");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let out = dir.join("out.cpio.gz");
    let as_dir = dir.join("dir.sh");
    std::fs::create_dir_all(&as_dir).unwrap();
    let toml = write(&dir, "w.toml", "[phases]\n");
    let zero = PathBuf::from("/dev/zero");
    for (workload, says) in [
        (&as_dir, format!("--workload: {} is not a regular file (a directory)", as_dir.display())),
        (&zero, "--workload: /dev/zero is not a regular file (a character device)".to_string()),
        (&toml, format!("--workload {}: a .toml workload is a synthetic spec", toml.display())),
    ] {
        let (code, e, _) = run_timed(&dir, &["initramfs", "--workload", &s(workload), "-o", &s(&out)]);
        assert_eq!(code, Some(1), "{e}");
        assert!(e.contains(&says), "{e}");
        assert!(!e.contains("does not exist"), "{e}");
        assert!(!out.exists(), "{}", workload.display());
    }
    let (_, e, _) = run_timed(&dir, &["initramfs", "--workload", &s(&toml), "-o", &s(&out)]);
    assert!(e.contains(&format!("record it with `dirtytrace record --workload {}`", toml.display())), "{e}");
}
