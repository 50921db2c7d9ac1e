//! The initramfs dirtytrace builds around a workload script: busybox, an `/init` that mounts
//! proc, sys and dev and runs the script, the marker commands, and `--file` extras. It is a
//! gzip-compressed newc cpio built in memory and cached by content.

use anyhow::{bail, Context};
use std::io::Write;
use std::path::{Path, PathBuf};

pub use super::console::MARKER_PREFIX;

/// Bumped whenever what goes into the archive changes, so cached archives are rebuilt.
const LAYOUT_VERSION: &str = "1";

pub const INIT: &str = r#"#!/bin/busybox sh
# dirtytrace's /init: mount the basics, run the workload, report its status, reboot.
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
cd /root
dt-mark workload_start
/bin/sh /workload.sh
status=$?
dt-mark workload_end "$status"
sync
# With reboot=k this writes 0xFE to port 0x64, which ends the recording.
reboot -f
"#;

pub const DT_MARK: &str = r#"#!/bin/sh
# dt-mark KIND [VALUE]: a marker line the VMM timestamps (see schemas/linux-guest.md).
echo "DIRTYTRACE:$1:$2" > /dev/ttyS0
"#;

pub const DT_PHASE: &str = r#"#!/bin/sh
# dt-phase NAME: every interval that ends from now on belongs to phase NAME.
echo "DIRTYTRACE:phase:$*" > /dev/ttyS0
"#;

/// A file to put into the archive.
#[derive(Debug, Clone)]
pub struct Extra {
    pub host: PathBuf,
    pub guest: String,
}

/// Parses `HOST_PATH:GUEST_PATH`.
pub fn parse_extra(s: &str) -> anyhow::Result<Extra> {
    let (host, guest) = s.split_once(':').context("--file takes HOST_PATH:GUEST_PATH")?;
    if !guest.starts_with('/') || guest.len() < 2 || guest.split('/').any(|c| c == "..") {
        bail!("--file {s}: the guest path must be absolute, like /usr/bin/bench");
    }
    Ok(Extra { host: PathBuf::from(host), guest: guest.to_string() })
}

struct Entry {
    name: String,
    mode: u32,
    data: Vec<u8>,
    rdev: Option<(u32, u32)>,
}

const DIR: u32 = 0o040755;
const EXEC: u32 = 0o100755;
const LINK: u32 = 0o120777;

/// The archive's entries, in order: directories before what they hold.
fn entries(busybox: &[u8], script: &[u8], extras: &[(String, u32, Vec<u8>)]) -> Vec<Entry> {
    let mut v = Vec::new();
    let dir = |v: &mut Vec<Entry>, n: &str| v.push(Entry { name: n.into(), mode: DIR, data: vec![], rdev: None });
    for d in ["bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "root", "etc", "run", "mnt"] {
        dir(&mut v, d);
    }
    v.push(Entry { name: "dev/console".into(), mode: 0o020600, data: vec![], rdev: Some((5, 1)) });
    v.push(Entry { name: "bin/busybox".into(), mode: EXEC, data: busybox.to_vec(), rdev: None });
    v.push(Entry { name: "bin/sh".into(), mode: LINK, data: b"busybox".to_vec(), rdev: None });
    v.push(Entry { name: "init".into(), mode: EXEC, data: INIT.as_bytes().to_vec(), rdev: None });
    v.push(Entry { name: "bin/dt-mark".into(), mode: EXEC, data: DT_MARK.as_bytes().to_vec(), rdev: None });
    v.push(Entry { name: "bin/dt-phase".into(), mode: EXEC, data: DT_PHASE.as_bytes().to_vec(), rdev: None });
    v.push(Entry { name: "workload.sh".into(), mode: EXEC, data: script.to_vec(), rdev: None });
    let mut made: Vec<String> = v.iter().filter(|e| e.mode == DIR).map(|e| e.name.clone()).collect();
    for (guest, mode, data) in extras {
        let rel = guest.trim_start_matches('/');
        let mut parent = String::new();
        for part in rel.split('/').collect::<Vec<_>>().split_last().map(|x| x.1).unwrap_or(&[]) {
            parent = if parent.is_empty() { part.to_string() } else { format!("{parent}/{part}") };
            if !made.contains(&parent) {
                dir(&mut v, &parent);
                made.push(parent.clone());
            }
        }
        v.push(Entry { name: rel.into(), mode: *mode, data: data.clone(), rdev: None });
    }
    v
}

fn cpio(entries: &[Entry]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    for (ino, e) in entries.iter().enumerate() {
        let mut b = cpio::NewcBuilder::new(&e.name).ino(ino as u32 + 1).mode(e.mode).nlink(1).uid(0).gid(0);
        if let Some((major, minor)) = e.rdev {
            b = b.rdev_major(major).rdev_minor(minor);
        }
        if e.mode == DIR {
            b = b.nlink(2);
        }
        let mut w = b.write(&mut out, e.data.len() as u32);
        w.write_all(&e.data)?;
        w.finish()?;
    }
    cpio::newc::trailer(&mut out)?;
    Ok(out)
}

/// A built archive.
pub struct Initramfs {
    pub bytes: Vec<u8>,
    pub sha256: String,
    pub cached: bool,
}

/// Builds (or takes from the cache) the gzip-compressed archive.
pub fn build(busybox: &Path, script: &Path, extras: &[Extra], cache: Option<&Path>) -> anyhow::Result<Initramfs> {
    let bb = std::fs::read(busybox).with_context(|| format!("cannot read busybox {}", busybox.display()))?;
    if !bb.starts_with(b"\x7fELF") {
        bail!("{} is not an ELF executable; the initramfs needs a statically linked busybox", busybox.display());
    }
    let script_bytes = std::fs::read(script).with_context(|| format!("cannot read workload {}", script.display()))?;
    let mut files = Vec::new();
    for x in extras {
        let data = std::fs::read(&x.host)
            .with_context(|| format!("--file {}:{}: cannot read {}", x.host.display(), x.guest, x.host.display()))?;
        use std::os::unix::fs::PermissionsExt;
        let perm = std::fs::metadata(&x.host)?.permissions().mode() & 0o7777;
        files.push((x.guest.clone(), 0o100000 | perm, data));
    }
    let mut key = sha2::Sha256::default();
    use sha2::Digest;
    key.update(LAYOUT_VERSION);
    for part in [&bb, &script_bytes] {
        key.update((part.len() as u64).to_le_bytes());
        key.update(part);
    }
    for (g, m, d) in &files {
        key.update(g.as_bytes());
        key.update(m.to_le_bytes());
        key.update((d.len() as u64).to_le_bytes());
        key.update(d);
    }
    let sha: String = key.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let cached_path = cache.map(|c| c.join(format!("{sha}.cpio.gz")));
    if let Some(bytes) = cached_path.as_ref().and_then(|p| std::fs::read(p).ok()) {
        return Ok(Initramfs { bytes, sha256: sha, cached: true });
    }
    let archive = cpio(&entries(&bb, &script_bytes, &files))?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&archive)?;
    let bytes = gz.finish()?;
    if let (Some(p), Some(dir)) = (&cached_path, cache) {
        // A cache that cannot be written only costs time next run.
        if std::fs::create_dir_all(dir).is_ok() {
            let tmp = p.with_extension("tmp");
            if std::fs::write(&tmp, &bytes).is_ok() {
                let _ = std::fs::rename(&tmp, p);
            }
        }
    }
    Ok(Initramfs { bytes, sha256: sha, cached: false })
}

/// Reads an archive back: `(name, mode, contents)` per entry, for tests and inspection.
pub fn read_back(gz: &[u8]) -> anyhow::Result<Vec<(String, u32, Vec<u8>)>> {
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gz), &mut raw)?;
    let mut out = Vec::new();
    let mut cursor = std::io::Cursor::new(raw);
    loop {
        let mut r = cpio::NewcReader::new(cursor)?;
        if r.entry().is_trailer() {
            break;
        }
        let (name, mode) = (r.entry().name().to_string(), r.entry().mode());
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut r, &mut data)?;
        out.push((name, mode, data));
        cursor = r.finish()?;
    }
    Ok(out)
}
