//! The initramfs dirtytrace builds around a workload script: optionally a root filesystem
//! (`--rootfs`, a directory or a tarball) and Debian packages (`--package`), then busybox, an
//! `/init` that mounts proc, sys and dev and runs the script, the marker commands, and `--file`
//! extras on top. It is a gzip-compressed newc cpio. Entries are streamed from their sources
//! into the compressor one at a time; only the compressed archive is held in memory. Archives
//! are cached by a key that covers every input (see [`build_with`]).

use super::rootfs;
use crate::units::PAGE_SIZE;
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub use super::console::MARKER_PREFIX;

/// The largest workload script accepted.
pub const MAX_SCRIPT_BYTES: u64 = 16 << 20;
/// The largest busybox accepted (a static busybox is about 2 MB).
pub const MAX_BUSYBOX_BYTES: u64 = 256 << 20;
/// The largest file the archive holds: newc cpio stores sizes in 32 bits.
pub const MAX_FILE_BYTES: u64 = u32::MAX as u64;

/// Bumped whenever what goes into the archive changes, so cached archives are rebuilt.
const LAYOUT_VERSION: &str = "3";

/// Guest RAM that the kernel and a small workload need besides the archive and its unpacked
/// files, which both sit in RAM while the kernel unpacks.
pub const ROOM_TO_RUN: u64 = 96 << 20;

/// dirtytrace's `/init`.
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
# Under --clock guest (dirtytrace.end=idle), idle: the recorder ends the trace at a guest-time
# boundary after the marker and stops QEMU itself.
grep -qw dirtytrace.end=idle /proc/cmdline && while :; do sleep 3600; done
# With reboot=k this writes 0xFE to port 0x64, which ends the recording.
reboot -f
"#;

/// dirtytrace's `/init` for `--disk`: loads the disk's modules, finds the image's root
/// filesystem, puts the initramfs's tree (`--rootfs`, `--package`, `--file`) and the workload
/// into it, and runs the workload chrooted there. Why it cannot is a `guest_error` marker.
pub const DISK_INIT: &str = r#"#!/bin/busybox sh
# dirtytrace's /init for --disk: run the workload chrooted in the disk image's root filesystem.
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
. /dt/config
fail() { dt-mark guest_error "$*"; sync; reboot -f; }
for m in $DT_MODULES; do insmod /dt/modules/$m 2>/dev/null; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
[ -b /dev/vda ] || fail "the guest sees no disk (/dev/vda): its kernel has no virtio-blk driver"
r=/newroot
mkdir -p $r
candidates=$DT_ROOT
[ -n "$candidates" ] || candidates=$(awk '$4 ~ /^vda/ { print "/dev/" $4 }' /proc/partitions | sort -V)
looked=""
found=""
for dev in $candidates; do
  [ -b "$dev" ] || { looked="$looked $dev:no-such-device"; continue; }
  fs=""
  for t in ext4 xfs btrfs; do
    if mount -t $t "$dev" $r 2>/dev/null; then fs=$t; break; fi
  done
  if [ -z "$fs" ]; then looked="$looked $dev:no-ext4-xfs-or-btrfs"; continue; fi
  if chroot $r /bin/sh -c 'exit 0' 2>/dev/null; then found=$dev; break; fi
  if [ -e $r/bin/sh ] || [ -L $r/bin/sh ]; then
    looked="$looked $dev:$fs-whose-/bin/sh-does-not-run"
  else
    looked="$looked $dev:$fs-without-/bin/sh"
  fi
  umount $r
done
[ -n "$found" ] || fail "no root filesystem with /bin/sh on the disk (looked at:$looked)"
dt-mark disk_root "$found $fs"
if [ -n "$DT_PACKAGES_OS" ]; then
  os=$(chroot $r /bin/sh -c '[ -r /etc/os-release ] && . /etc/os-release; echo "$ID $VERSION_ID"')
  [ "$os" = "$DT_PACKAGES_OS" ] || fail "--package: the image runs '$os' but the packages were resolved on the host for '$DT_PACKAGES_OS'; they can break in another distribution: install them in the image instead"
fi
# tar, not cp: it goes through the image's directory symlinks (a merged /usr's lib -> usr/lib)
# and replaces files, as the initramfs's layers do.
(cd /dt/tree && tar -cf - .) | (cd $r && tar -xf -) || fail "cannot copy --rootfs, --package and --file contents into the image's root (is it full?)"
mkdir -p $r/.dirtytrace/bin $r/proc $r/sys $r/dev $r/tmp
cp /workload.sh $r/.dirtytrace/workload.sh && cp /bin/dt-mark /bin/dt-phase $r/.dirtytrace/bin/ || fail "cannot put the workload into the image's root (is it full?)"
mount -t proc proc $r/proc
mount -t sysfs sysfs $r/sys
mount -o bind /dev $r/dev
mount -t tmpfs tmpfs $r/tmp
dt-mark workload_start
PATH=/.dirtytrace/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
  chroot $r /bin/sh -c 'cd /root 2>/dev/null || cd /; exec /bin/sh /.dirtytrace/workload.sh'
status=$?
dt-mark workload_end "$status"
sync
grep -qw dirtytrace.end=idle /proc/cmdline && while :; do sleep 3600; done
reboot -f
"#;

/// `/bin/dt-mark`.
pub const DT_MARK: &str = r#"#!/bin/sh
# dt-mark KIND [VALUE]: a marker line the VMM timestamps (see schemas/linux-guest.md).
echo "DIRTYTRACE:$1:$2" > /dev/ttyS0
"#;

/// `/bin/dt-phase`.
pub const DT_PHASE: &str = r#"#!/bin/sh
# dt-phase NAME: every interval that ends from now on belongs to phase NAME.
echo "DIRTYTRACE:phase:$*" > /dev/ttyS0
"#;

/// A file to put into the archive.
#[derive(Debug, Clone)]
pub struct Extra {
    /// The file on the host.
    pub host: PathBuf,
    /// Its absolute path in the guest.
    pub guest: String,
}

/// Parses `HOST_PATH:GUEST_PATH`.
pub fn parse_extra(s: &str) -> anyhow::Result<Extra> {
    let (host, guest) = s.split_once(':').context("--file takes HOST_PATH:GUEST_PATH")?;
    if !guest.starts_with('/') || guest.len() < 2 || guest.split('/').any(|c| c == "..") {
        bail!("--file {s}: the guest path must be absolute, like /usr/bin/bench");
    }
    check_name(guest.trim_start_matches('/'))
        .map_err(|e| anyhow::anyhow!("--file {host}:/{e}; choose a shorter one"))?;
    Ok(Extra { host: PathBuf::from(host), guest: guest.to_string() })
}

/// File-type bits of a mode.
pub const S_IFMT: u32 = 0o170000;
/// Directory.
pub const S_IFDIR: u32 = 0o040000;
/// Regular file.
pub const S_IFREG: u32 = 0o100000;
/// Symbolic link.
pub const S_IFLNK: u32 = 0o120000;
/// Character device.
pub const S_IFCHR: u32 = 0o020000;
/// FIFO.
pub const S_IFIFO: u32 = 0o010000;
const DIR: u32 = 0o040755;
const EXEC: u32 = 0o100755;

/// Ownership and time of an entry, as its source had them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Owner {
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: u32,
}

/// The cpio stream being written: names seen so far (to create missing parents once and to
/// let later entries see earlier symlinks), inode numbers, and what the tree will need in RAM.
pub struct ArchiveWriter<W: Write> {
    out: W,
    next_ino: u32,
    /// Every name written, with its mode.
    names: HashMap<String, u32>,
    /// Symlink name → target, to resolve paths through them.
    symlinks: HashMap<String, String>,
    /// [`fnv`] hashes of the symlinks' names, so that resolving a path looks up a prefix as a
    /// string only when it may be one.
    symlink_hashes: HashSet<u64>,
    /// What the tree takes in guest RAM once unpacked, so far.
    pub unpacked_bytes: u64,
    /// Entries written so far.
    pub entries: u64,
    /// What was left out, and why.
    pub notes: Vec<String>,
    /// Put before every name in the archive: the tree being written lands under it.
    prefix: String,
    /// The bookkeeping of the other trees, by prefix ([`ArchiveWriter::set_root`]).
    other_roots: HashMap<String, TreeNames>,
}

/// What an [`ArchiveWriter`] knows of the names of one tree.
#[derive(Default)]
struct TreeNames {
    names: HashMap<String, u32>,
    symlinks: HashMap<String, String>,
    symlink_hashes: HashSet<u64>,
}

/// Each entry costs the guest about this much besides its data (inode, dentry).
pub const ENTRY_OVERHEAD: u64 = 1024;

/// The longest entry name: the kernel refuses a cpio name of PATH_MAX (4096) bytes or more,
/// counting its NUL, when it unpacks the archive.
pub const MAX_NAME_BYTES: usize = 4095;
/// The longest name of one component (NAME_MAX): no Linux file system creates a longer one.
pub const MAX_COMPONENT_BYTES: usize = 255;
/// The most path components an entry name may have. A real root filesystem goes a few dozen levels
/// deep; this only stops names built to exhaust whatever reads them.
pub const MAX_DEPTH: usize = 1024;

/// `name` cut to a readable length for messages: its start and its end.
pub fn shorten(name: &str) -> String {
    if name.len() <= 120 {
        return name.to_string();
    }
    let head = name.char_indices().take_while(|(i, _)| *i < 80).last().map_or(0, |(i, c)| i + c.len_utf8());
    let tail = name.char_indices().find(|(i, _)| *i >= name.len() - 30).map_or(name.len(), |(i, _)| i);
    format!("{}…{}", &name[..head], &name[tail..])
}

/// Refuses an entry name beyond [`MAX_NAME_BYTES`], [`MAX_DEPTH`] or [`MAX_COMPONENT_BYTES`],
/// naming it (shortened) and saying which limit it passes.
pub fn check_name(name: &str) -> Result<(), String> {
    let depth = name.split('/').filter(|c| !c.is_empty()).count();
    let why = if name.len() > MAX_NAME_BYTES {
        format!("its name is {} bytes, more than the {MAX_NAME_BYTES} the kernel unpacks (PATH_MAX)", name.len())
    } else if depth > MAX_DEPTH {
        format!("it has {depth} path components, more than the {MAX_DEPTH} dirtytrace packs")
    } else if let Some(c) = name.split('/').find(|c| c.len() > MAX_COMPONENT_BYTES) {
        format!(
            "its component {} is {} bytes, more than the {MAX_COMPONENT_BYTES} a Linux file name can be (NAME_MAX)",
            shorten(c),
            c.len()
        )
    } else {
        return Ok(());
    };
    Err(format!("{} is too long for the initramfs: {why}", shorten(name)))
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a, extended by `bytes` from `hash`: a path's hash is extended one component at a time.
fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= b as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

fn io_err(msg: String) -> std::io::Error {
    std::io::Error::other(msg)
}

impl<W: Write> ArchiveWriter<W> {
    /// An empty archive writing to `out`.
    pub fn new(out: W) -> Self {
        ArchiveWriter {
            out,
            next_ino: 1,
            names: HashMap::new(),
            symlinks: HashMap::new(),
            symlink_hashes: HashSet::new(),
            unpacked_bytes: 0,
            entries: 0,
            notes: Vec::new(),
            prefix: String::new(),
            other_roots: HashMap::new(),
        }
    }

    /// Writes what follows as a tree of its own under `prefix` (`""`: the archive's root), whose
    /// names and symlinks resolve within it, as if it were a root filesystem: `--disk` copies
    /// such a tree into the image's root. The directories of `prefix` must have been written in
    /// the archive's root first.
    pub fn set_root(&mut self, prefix: &str) {
        let now = TreeNames {
            names: std::mem::take(&mut self.names),
            symlinks: std::mem::take(&mut self.symlinks),
            symlink_hashes: std::mem::take(&mut self.symlink_hashes),
        };
        self.other_roots.insert(std::mem::replace(&mut self.prefix, prefix.to_string()), now);
        let next = self.other_roots.remove(prefix).unwrap_or_default();
        (self.names, self.symlinks, self.symlink_hashes) = (next.names, next.symlinks, next.symlink_hashes);
    }

    /// A fresh inode number, for entries that share one (hard links).
    pub fn new_ino(&mut self) -> u32 {
        self.next_ino += 1;
        self.next_ino - 1
    }

    /// Where `name` leads once the symlinks written so far are followed (within the archive).
    /// Linear in the length of the name and the targets followed: each prefix is looked up by
    /// a hash extended one component at a time, and as a string only when that hash is a
    /// symlink's.
    pub fn resolve(&self, name: &str) -> String {
        let mut here = String::with_capacity(name.len());
        let mut hash = FNV_OFFSET;
        // (length of `here`, its hash) before each component, to go back on `..`.
        let mut stack: Vec<(usize, u64)> = Vec::new();
        let mut todo: Vec<&str> = name.split('/').rev().collect();
        let mut hops = 0;
        while let Some(part) = todo.pop() {
            match part {
                "" | "." => continue,
                ".." => {
                    if let Some((len, h)) = stack.pop() {
                        here.truncate(len);
                        hash = h;
                    }
                    continue;
                }
                _ => {}
            }
            stack.push((here.len(), hash));
            if !here.is_empty() {
                here.push('/');
                hash = fnv(hash, b"/");
            }
            here.push_str(part);
            hash = fnv(hash, part.as_bytes());
            if !self.symlink_hashes.contains(&hash) {
                continue;
            }
            if let Some(target) = self.symlinks.get(&here) {
                hops += 1;
                if hops > 40 {
                    break;
                }
                if let Some((len, h)) = stack.pop() {
                    here.truncate(len);
                    hash = h;
                }
                if target.starts_with('/') {
                    stack.clear();
                    here.clear();
                    hash = FNV_OFFSET;
                }
                todo.extend(target.split('/').rev());
            }
        }
        here
    }

    /// `name` with its parent directory resolved through the symlinks written so far: where
    /// an entry of that name lands in the guest.
    pub fn resolve_parent(&self, name: &str) -> String {
        match name.rsplit_once('/') {
            Some((parent, base)) => {
                let p = self.resolve(parent);
                if p.is_empty() {
                    base.to_string()
                } else {
                    format!("{p}/{base}")
                }
            }
            None => name.to_string(),
        }
    }

    /// Whether an entry lands at `name` already (a symlink counts as itself, not its target).
    pub fn exists(&self, name: &str) -> bool {
        self.names.contains_key(&self.resolve_parent(name))
    }

    #[allow(clippy::too_many_arguments)]
    fn header(
        &mut self,
        name: &str,
        mode: u32,
        owner: Owner,
        ino: u32,
        nlink: u32,
        rdev: (u32, u32),
        size: u64,
    ) -> std::io::Result<cpio::newc::Writer<&mut W>> {
        let size32 = u32::try_from(size)
            .map_err(|_| io_err(format!("{name} is {size} bytes; the initramfs format (newc cpio) stops at 4 GiB")))?;
        self.entries += 1;
        self.unpacked_bytes += size.div_ceil(PAGE_SIZE) * PAGE_SIZE + ENTRY_OVERHEAD;
        self.names.insert(self.resolve_parent(name), mode);
        let full = format!("{}{name}", self.prefix);
        Ok(cpio::NewcBuilder::new(&full)
            .ino(ino)
            .mode(mode)
            .uid(owner.uid)
            .gid(owner.gid)
            .mtime(owner.mtime)
            .nlink(nlink)
            .rdev_major(rdev.0)
            .rdev_minor(rdev.1)
            .write(&mut self.out, size32))
    }

    /// Creates the parents of `name` that are not there yet (as 0755 directories). Parents are
    /// always written before what they hold, so the search goes up from the nearest parent and
    /// stops at the first one there: an entry whose parent exists costs one lookup.
    pub fn ensure_parents(&mut self, name: &str) -> std::io::Result<()> {
        check_name(name).map_err(io_err)?;
        let ends: Vec<usize> = name.match_indices('/').map(|(i, _)| i).collect();
        let mut present = ends.len();
        while present > 0 && !self.exists(&name[..ends[present - 1]]) {
            present -= 1;
        }
        for &end in &ends[present..] {
            self.dir(&name[..end], DIR, Owner::default())?;
        }
        Ok(())
    }

    /// A directory; skipped when the name is already there (a directory, or a symlink to one).
    pub fn dir(&mut self, name: &str, mode: u32, owner: Owner) -> std::io::Result<()> {
        if self.exists(name) {
            return Ok(());
        }
        self.ensure_parents(name)?;
        let ino = self.new_ino();
        self.header(name, S_IFDIR | (mode & 0o7777), owner, ino, 2, (0, 0), 0)?.finish()?;
        Ok(())
    }

    /// A regular file of exactly `size` bytes read from `data`; `link` = `(ino, nlink)` for the
    /// first name of a hard-linked file.
    pub fn file(
        &mut self,
        name: &str,
        mode: u32,
        owner: Owner,
        size: u64,
        data: &mut dyn Read,
        link: Option<(u32, u32)>,
    ) -> std::io::Result<()> {
        self.ensure_parents(name)?;
        let (ino, nlink) = match link {
            Some(l) => l,
            None => (self.new_ino(), 1),
        };
        let mut w = self.header(name, S_IFREG | (mode & 0o7777), owner, ino, nlink, (0, 0), size)?;
        let copied = std::io::copy(&mut data.take(size), &mut w)?;
        if copied != size {
            return Err(io_err(format!(
                "{name} ended after {copied} of its {size} bytes (was it changed while packing?)"
            )));
        }
        w.finish()?;
        Ok(())
    }

    /// A regular file from memory.
    pub fn bytes(&mut self, name: &str, mode: u32, data: &[u8]) -> std::io::Result<()> {
        self.file(name, mode, Owner::default(), data.len() as u64, &mut &data[..], None)
    }

    /// A later name of a hard-linked file whose first name was written with `ino`.
    pub fn hard_link(&mut self, name: &str, mode: u32, owner: Owner, ino: u32, nlink: u32) -> std::io::Result<()> {
        self.ensure_parents(name)?;
        self.header(name, S_IFREG | (mode & 0o7777), owner, ino, nlink.max(2), (0, 0), 0)?.finish()?;
        Ok(())
    }

    /// Adds a symbolic link `name` → `target`.
    pub fn symlink(&mut self, name: &str, target: &str, owner: Owner) -> std::io::Result<()> {
        self.ensure_parents(name)?;
        let ino = self.new_ino();
        let mut w = self.header(name, S_IFLNK | 0o777, owner, ino, 1, (0, 0), target.len() as u64)?;
        w.write_all(target.as_bytes())?;
        w.finish()?;
        let at = self.resolve_parent(name);
        self.symlink_hashes.insert(fnv(FNV_OFFSET, at.as_bytes()));
        self.symlinks.insert(at, target.to_string());
        Ok(())
    }

    /// A device node or FIFO.
    pub fn node(&mut self, name: &str, mode: u32, owner: Owner, rdev: (u32, u32)) -> std::io::Result<()> {
        self.ensure_parents(name)?;
        let ino = self.new_ino();
        self.header(name, mode, owner, ino, 1, rdev, 0)?.finish()?;
        Ok(())
    }

    /// Writes the trailer and returns the output.
    pub fn finish(mut self) -> std::io::Result<(W, u64, u64, Vec<String>)> {
        cpio::newc::trailer(&mut self.out)?;
        Ok((self.out, self.unpacked_bytes, self.entries, self.notes))
    }
}

/// What the user packs into an initramfs besides the workload script: flags of `initramfs`
/// and `record`, and keys of a grid's `[record]` (schemas/linux-guest.md).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct Contents {
    /// Copy a host file into the initramfs (repeatable).
    #[arg(long = "file", value_name = "HOST_PATH:GUEST_PATH")]
    pub files: Vec<String>,
    /// A root filesystem (directory, .tar, .tar.gz or .tar.zst) under dirtytrace's files.
    #[arg(long, value_name = "PATH")]
    pub rootfs: Option<PathBuf>,
    /// A Debian package and its runtime dependencies, from the host's apt (repeatable).
    #[arg(long = "package", value_name = "NAME")]
    pub packages: Vec<String>,
    /// A statically linked busybox for the archive's /init (default: $DIRTYTRACE_BUSYBOX, then
    /// the kit's).
    #[arg(long, value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub busybox: Option<PathBuf>,
}

impl Contents {
    /// The `--file`s, parsed.
    pub fn extras(&self) -> anyhow::Result<Vec<Extra>> {
        self.files.iter().map(|f| parse_extra(f)).collect()
    }

    /// The checks `record` and `initramfs` both make before anything is read, hashed or
    /// packed, for a guest of `mem` bytes: every `--file` is a regular file no larger than
    /// `mem` or the newc limit; the rootfs's names are within the limits; and the files of the
    /// rootfs and the `--file`s, summed from the directory walk or the tar headers, leave
    /// [`ROOM_TO_RUN`] in `mem` (the archive itself needs room too, so this is a floor; the
    /// built archive is checked again with [`Initramfs::check_fits`]). Returns the `--file`s.
    pub fn check(&self, mem: u64) -> anyhow::Result<Vec<Extra>> {
        let extras = self.extras()?;
        let mut floor = 0u64;
        for x in &extras {
            // A regular file that fits the guest: never a FIFO or a device, never read without end.
            let flag = || format!("--file {}:{}", x.host.display(), x.guest);
            let size = match crate::files::check_regular(&x.host, mem.min(MAX_FILE_BYTES), "file for the guest") {
                Ok(size) => size,
                Err(crate::files::FileError::TooLarge { size, .. }) => bail!(
                    "{}: {} is {size} bytes, more than {}; give a smaller file{}",
                    flag(),
                    x.host.display(),
                    if mem <= MAX_FILE_BYTES {
                        format!("the guest's --mem of {} MiB", mem >> 20)
                    } else {
                        "the 4 GiB the initramfs format (newc cpio) holds per file".to_string()
                    },
                    if mem <= MAX_FILE_BYTES { " or a larger --mem" } else { "" }
                ),
                Err(e) => return Err(anyhow::Error::new(e).context(flag())),
            };
            floor = floor.saturating_add(size.div_ceil(PAGE_SIZE) * PAGE_SIZE + ENTRY_OVERHEAD);
        }
        if let Some(r) = &self.rootfs {
            floor = floor.saturating_add(rootfs::Rootfs::open(r)?.unpacked_floor()?);
        }
        let need = floor.saturating_add(ROOM_TO_RUN);
        if need > mem {
            let mut what: Vec<String> = self.rootfs.iter().map(|r| format!("--rootfs {}", r.display())).collect();
            what.extend(self.files.iter().map(|f| format!("--file {f}")));
            bail!(
                "the initramfs from {} is too large for --mem {} MiB: its files alone take {:.1} MiB unpacked, which \
                 sit in guest RAM with the archive while the kernel unpacks it, plus {} MiB to run; pass --mem {}MiB \
                 or more, or pack less",
                what.join(" "),
                mem >> 20,
                floor as f64 / (1 << 20) as f64,
                ROOM_TO_RUN >> 20,
                need.div_ceil(1 << 20)
            );
        }
        Ok(extras)
    }

    /// The same contents with relative host paths taken from `dir` (a grid's directory).
    pub fn relative_to(&self, dir: &Path) -> Contents {
        let files = self
            .files
            .iter()
            .map(|f| match f.split_once(':') {
                Some((host, guest)) => format!("{}:{guest}", dir.join(host).display()),
                None => f.clone(),
            })
            .collect();
        Contents {
            files,
            rootfs: self.rootfs.as_ref().map(|r| dir.join(r)),
            packages: self.packages.clone(),
            busybox: self.busybox.as_ref().map(|b| dir.join(b)),
        }
    }
}

/// Everything an archive is built from.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// A statically linked busybox.
    pub busybox: PathBuf,
    /// The workload script.
    pub script: PathBuf,
    /// Packed around them: a rootfs and packages first, `--file` extras on top.
    pub contents: Contents,
    /// The workload runs in a disk image's root filesystem, not in the archive's.
    pub disk: Option<DiskGuest>,
}

/// What the archive of a `--disk` guest holds besides the usual: the kernel modules the disk
/// needs, and how to find its root. The contents go under `dt/tree/`, which `/init` copies
/// into the image's root (on its overlay).
#[derive(Debug, Clone, Default)]
pub struct DiskGuest {
    /// Kernel modules as `(file name, path)`, in load order.
    pub modules: Vec<(String, PathBuf)>,
    /// `--disk-root`.
    pub root: Option<String>,
}

/// Where a `--disk` archive keeps the tree copied into the image's root.
pub const DISK_TREE: &str = "dt/tree/";

/// The host's `ID VERSION_ID` from /etc/os-release: what `--package`s were resolved for.
pub fn host_os() -> String {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(|v| v.trim().trim_matches('"').to_string())
            .unwrap_or_default()
    };
    format!("{} {}", field("ID"), field("VERSION_ID"))
}

/// A shell word in single quotes.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

impl DiskGuest {
    /// `/dt/config`, which the disk `/init` sources.
    fn config(&self, packages: bool) -> String {
        let modules: Vec<&str> = self.modules.iter().map(|(n, _)| n.as_str()).collect();
        format!(
            "DT_MODULES={}\nDT_ROOT={}\nDT_PACKAGES_OS={}\n",
            shell_quote(&modules.join(" ")),
            shell_quote(self.root.as_deref().unwrap_or("")),
            shell_quote(if packages { host_os() } else { String::new() }.as_str())
        )
    }
}

/// Checks a workload script the way `record` does before it builds anything: a regular file
/// of at most [`MAX_SCRIPT_BYTES`], named `.sh` (a `.toml` is a synthetic spec, which needs no
/// initramfs).
pub fn check_script(script: &Path) -> anyhow::Result<()> {
    crate::files::check_regular(script, MAX_SCRIPT_BYTES, "workload script").context("--workload")?;
    match script.extension().and_then(|e| e.to_str()) {
        Some("sh") => Ok(()),
        Some("toml") => bail!(
            "--workload {}: a .toml workload is a synthetic spec, which runs without a kernel or an initramfs; \
             record it with `dirtytrace record --workload {}`, or give a Linux workload script (.sh)",
            script.display(),
            script.display()
        ),
        _ => bail!("--workload {}: an initramfs runs a Linux workload script, named .sh", script.display()),
    }
}

impl Inputs {
    /// What `initramfs` checks before building for a guest of `mem` bytes, as `record` does:
    /// the script ([`check_script`]) and the contents ([`Contents::check`]).
    pub fn check(&self, mem: u64) -> anyhow::Result<Vec<Extra>> {
        check_script(&self.script)?;
        self.contents.check(mem)
    }
}

/// A built archive.
pub struct Initramfs {
    /// The gzip-compressed newc cpio.
    pub bytes: Vec<u8>,
    /// The cache key: SHA-256 over every input (see [`build_with`]).
    pub sha256: String,
    /// It came from the cache.
    pub cached: bool,
    /// What the files take in guest RAM once unpacked (data in whole pages, plus 1 KiB per entry).
    pub unpacked_bytes: u64,
    /// Entries in it.
    pub entries: u64,
    /// What was left out, and why (device nodes, sockets, ...).
    pub notes: Vec<String>,
    /// The Debian packages the archive holds, as `name_version_arch`.
    pub packages: Vec<String>,
}

impl Initramfs {
    /// The smallest `--mem` that holds the archive, its unpacked files and [`ROOM_TO_RUN`].
    pub fn min_mem(&self) -> u64 {
        (self.bytes.len() as u64 + self.unpacked_bytes + ROOM_TO_RUN).div_ceil(1 << 20) << 20
    }

    /// One line: size, unpacked size, entries, whether it came from the cache, the --mem it needs.
    pub fn summary(&self) -> String {
        format!(
            "{:.1} MiB ({:.1} MiB unpacked, {} entries{}), needs --mem {}MiB or more",
            self.bytes.len() as f64 / (1 << 20) as f64,
            self.unpacked_bytes as f64 / (1 << 20) as f64,
            self.entries,
            if self.cached { ", cached" } else { "" },
            self.min_mem() >> 20
        )
    }

    /// Fails with what to do when the archive does not fit in `mem` bytes of guest RAM.
    pub fn check_fits(&self, mem: u64, what: &str) -> anyhow::Result<()> {
        if mem < self.min_mem() {
            bail!(
                "the initramfs from {what} is too large for --mem {} MiB: {:.1} MiB compressed and {:.1} MiB unpacked \
                 both sit in guest RAM while the kernel unpacks it, plus {} MiB to run; pass --mem {}MiB or more, \
                 or pack less",
                mem >> 20,
                self.bytes.len() as f64 / (1 << 20) as f64,
                self.unpacked_bytes as f64 / (1 << 20) as f64,
                ROOM_TO_RUN >> 20,
                self.min_mem() >> 20
            );
        }
        Ok(())
    }
}

/// What an archive is built from, for messages: `--rootfs P`, `--package N`, or the script.
pub fn describe_inputs(inputs: &Inputs) -> String {
    let mut parts = Vec::new();
    if let Some(r) = &inputs.contents.rootfs {
        parts.push(format!("--rootfs {}", r.display()));
    }
    for p in &inputs.contents.packages {
        parts.push(format!("--package {p}"));
    }
    if parts.is_empty() {
        parts.push(inputs.script.display().to_string());
    }
    parts.join(" ")
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CacheMeta {
    unpacked_bytes: u64,
    entries: u64,
    notes: Vec<String>,
    packages: Vec<String>,
}

/// Builds (or takes from the cache) the archive for busybox, a script and `--file` extras
/// (`HOST_PATH:GUEST_PATH`).
pub fn build(busybox: &Path, script: &Path, files: &[String], cache: Option<&Path>) -> anyhow::Result<Initramfs> {
    let inputs = Inputs {
        busybox: busybox.to_path_buf(),
        script: script.to_path_buf(),
        contents: Contents { files: files.to_vec(), ..Default::default() },
        disk: None,
    };
    build_with(&inputs, cache, &mut |_| {})
}

fn hash_file(path: &Path, key: &mut sha2::Sha256) -> std::io::Result<u64> {
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        key.update(&buf[..k]);
        n += k as u64;
    }
    key.update(n.to_le_bytes());
    Ok(n)
}

/// Builds (or takes from the cache) the archive for `inputs`.
///
/// The cache key is a SHA-256 over: the layout version; busybox's and the script's contents;
/// each `--file`'s guest path, mode and contents; the packages' exact versions; and for a
/// `--rootfs` a fingerprint of its metadata (see [`rootfs::Rootfs::fingerprint`]): path, inode,
/// device, size, mode, owner, mtime and ctime of every entry of a directory, or of the tarball.
/// Any write to a file changes its ctime, which no program can set back. An archive is only
/// stored when no rootfs entry was changed in the last two seconds before the build (a later
/// change within the same clock tick could keep the same ctime) and the fingerprint taken while
/// packing equals the one taken before: so a cached archive never stands for changed content.
pub fn build_with(inputs: &Inputs, cache: Option<&Path>, progress: &mut dyn FnMut(&str)) -> anyhow::Result<Initramfs> {
    let bb = crate::files::read_regular(&inputs.busybox, MAX_BUSYBOX_BYTES, "busybox")
        .with_context(|| format!("cannot read busybox {}", inputs.busybox.display()))?;
    if !bb.starts_with(b"\x7fELF") {
        bail!("{} is not an ELF executable; the initramfs needs a statically linked busybox", inputs.busybox.display());
    }
    let script = crate::files::read_regular(&inputs.script, MAX_SCRIPT_BYTES, "workload script")
        .with_context(|| format!("cannot read workload {}", inputs.script.display()))?;
    let to_copy = inputs.contents.extras()?;
    let rootfs = inputs.contents.rootfs.as_deref().map(rootfs::Rootfs::open).transpose()?;
    let packages = match &inputs.contents.packages {
        p if p.is_empty() => None,
        p => Some(super::packages::prepare(p, progress)?),
    };

    let mut key = sha2::Sha256::default();
    key.update(LAYOUT_VERSION);
    for part in [&bb, &script] {
        key.update((part.len() as u64).to_le_bytes());
        key.update(part);
    }
    let mut extras = Vec::new();
    for x in &to_copy {
        let what = || format!("--file {}:{}: cannot read {}", x.host.display(), x.guest, x.host.display());
        let meta = std::fs::metadata(&x.host).with_context(what)?;
        if !meta.is_file() {
            bail!("--file {}:{}: {} is not a regular file", x.host.display(), x.guest, x.host.display());
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = S_IFREG | (meta.permissions().mode() & 0o7777);
        key.update(x.guest.as_bytes());
        key.update(mode.to_le_bytes());
        hash_file(&x.host, &mut key).with_context(what)?;
        extras.push((x, mode));
    }
    let mut stable = true;
    let mut rootfs_digest = Vec::new();
    if let Some(r) = &rootfs {
        let fp = r.fingerprint()?;
        key.update(b"rootfs");
        key.update(&fp.digest);
        stable = !fp.recently_changed;
        rootfs_digest = fp.digest;
    }
    if let Some(p) = &packages {
        key.update(b"packages");
        for d in &p.debs {
            key.update(d.as_bytes());
            key.update(b"\n");
        }
    }
    let disk_config = inputs.disk.as_ref().map(|d| d.config(packages.is_some()));
    let mut modules = Vec::new();
    if let (Some(d), Some(config)) = (&inputs.disk, &disk_config) {
        key.update(b"disk");
        key.update(DISK_INIT.as_bytes());
        key.update(config.as_bytes());
        for (name, path) in &d.modules {
            let ko = crate::files::read_regular(path, MAX_BUSYBOX_BYTES, "kernel module")
                .with_context(|| format!("cannot read the kit's module {}", path.display()))?;
            key.update(name.as_bytes());
            key.update((ko.len() as u64).to_le_bytes());
            key.update(&ko);
            modules.push((name.clone(), ko));
        }
    }
    let sha = crate::units::hex(&key.finalize());
    let cached_path = cache.map(|c| c.join(format!("{sha}.cpio.gz")));
    let meta_path = cache.map(|c| c.join(format!("{sha}.json")));
    if let (Some(p), Some(m)) = (&cached_path, &meta_path) {
        let meta: Option<CacheMeta> = std::fs::read(m).ok().and_then(|t| serde_json::from_slice(&t).ok());
        if let (Some(meta), Ok(bytes)) = (meta, std::fs::read(p)) {
            return Ok(Initramfs {
                bytes,
                sha256: sha,
                cached: true,
                unpacked_bytes: meta.unpacked_bytes,
                entries: meta.entries,
                notes: meta.notes,
                packages: meta.packages,
            });
        }
    }

    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut a = ArchiveWriter::new(gz);
    if inputs.disk.is_some() {
        a.dir(DISK_TREE.trim_end_matches('/'), DIR, Owner::default())?;
        a.set_root(DISK_TREE);
    }
    if let Some(r) = &rootfs {
        progress(&format!("packing {}", r.path.display()));
        r.pack(&mut a)?;
        // Changed while packing (or since the key was taken): build, but do not cache.
        stable &= rootfs_digest == r.fingerprint()?.digest;
    }
    if let Some(p) = &packages {
        progress(&format!("packing {} packages", p.debs.len()));
        rootfs::Rootfs::open(&p.tree)?.pack(&mut a)?;
    }
    if inputs.disk.is_some() {
        // The `--file`s go into the image's tree too.
        copy_extras(&mut a, &extras)?;
        a.set_root("");
    }
    for d in ["bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "root", "etc", "run", "mnt"] {
        a.dir(d, DIR, Owner::default())?;
    }
    if !a.exists("dev/console") {
        a.node("dev/console", S_IFCHR | 0o600, Owner::default(), (5, 1))?;
    }
    a.bytes("bin/busybox", EXEC, &bb)?;
    if !a.exists("bin/sh") {
        a.symlink("bin/sh", "busybox", Owner::default())?;
    }
    a.bytes("init", EXEC, if inputs.disk.is_some() { DISK_INIT } else { INIT }.as_bytes())?;
    a.bytes("bin/dt-mark", EXEC, DT_MARK.as_bytes())?;
    a.bytes("bin/dt-phase", EXEC, DT_PHASE.as_bytes())?;
    a.bytes("workload.sh", EXEC, &script)?;
    if let Some(config) = &disk_config {
        a.bytes("dt/config", 0o100644, config.as_bytes())?;
        for (name, ko) in &modules {
            a.bytes(&format!("dt/modules/{name}"), 0o100644, ko)?;
        }
    } else {
        copy_extras(&mut a, &extras)?;
    }
    let (gz, unpacked_bytes, entries, notes) = a.finish()?;
    let bytes = gz.finish()?;
    let debs = packages.map(|p| p.debs).unwrap_or_default();
    if let (Some(p), Some(m), Some(dir), true) = (&cached_path, &meta_path, cache, stable) {
        // A cache that cannot be written only costs time next run.
        let meta = CacheMeta { unpacked_bytes, entries, notes: notes.clone(), packages: debs.clone() };
        if std::fs::create_dir_all(dir).is_ok() {
            let tmp = p.with_extension(format!("tmp{}", std::process::id()));
            if std::fs::write(&tmp, &bytes).is_ok() && std::fs::rename(&tmp, p).is_ok() {
                let _ = std::fs::write(m, serde_json::to_vec(&meta).unwrap_or_default());
            }
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok(Initramfs { bytes, sha256: sha, cached: false, unpacked_bytes, entries, notes, packages: debs })
}

/// Writes the `--file`s into the archive's current tree.
fn copy_extras<W: Write>(a: &mut ArchiveWriter<W>, extras: &[(&Extra, u32)]) -> anyhow::Result<()> {
    for (x, mode) in extras {
        let what = || format!("--file {}:{}: cannot read {}", x.host.display(), x.guest, x.host.display());
        let mut f = crate::files::open_regular(&x.host, u64::MAX, "file for the guest").with_context(what)?;
        let size = f.metadata().with_context(what)?.len();
        a.file(x.guest.trim_start_matches('/'), *mode, Owner::default(), size, &mut f, None).with_context(what)?;
    }
    Ok(())
}

/// `dirtytrace initramfs`: builds exactly the archive `record` would boot (same inputs, same
/// cache) and writes it to `output`, which must not exist yet.
///
/// The archive is for a guest of `mem` bytes: the inputs are checked first as `record` checks
/// them ([`Inputs::check`]), and the archive must fit ([`Initramfs::check_fits`]).
pub fn write_archive(
    inputs: &Inputs,
    mem: u64,
    output: &Path,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<Initramfs> {
    if output.symlink_metadata().is_ok() {
        bail!("{} already exists; choose another -o FILE or remove it", output.display());
    }
    inputs.check(mem)?;
    let cache = super::kit::cache_dir().join("initramfs");
    let archive = build_with(inputs, Some(&cache), progress)?;
    archive.check_fits(mem, &describe_inputs(inputs))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(output)
        .with_context(|| format!("cannot create {}", output.display()))?;
    if let Err(e) = f.write_all(&archive.bytes).and_then(|_| f.sync_all()) {
        drop(f);
        let _ = std::fs::remove_file(output);
        bail!("cannot write {}: {e}", output.display());
    }
    Ok(archive)
}

/// One entry of an archive, read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveEntry {
    /// Path in the archive.
    pub name: String,
    /// Type and permission bits.
    pub mode: u32,
    /// Inode number (hard links share one).
    pub ino: u32,
    /// Link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time.
    pub mtime: u32,
    /// Device number (major, minor) of a device node.
    pub rdev: (u32, u32),
    /// Contents (a symlink's target).
    pub data: Vec<u8>,
}

/// Reads an archive back entry by entry, for tests and inspection.
pub fn read_entries(gz: &[u8]) -> anyhow::Result<Vec<ArchiveEntry>> {
    let mut out = Vec::new();
    let mut reader: Box<dyn Read + '_> = Box::new(flate2::read::GzDecoder::new(gz));
    loop {
        let mut r = cpio::NewcReader::new(reader)?;
        if r.entry().is_trailer() {
            break;
        }
        let e = r.entry();
        let mut entry = ArchiveEntry {
            name: e.name().to_string(),
            mode: e.mode(),
            ino: e.ino(),
            nlink: e.nlink(),
            uid: e.uid(),
            gid: e.gid(),
            mtime: e.mtime(),
            rdev: (e.rdev_major(), e.rdev_minor()),
            data: Vec::new(),
        };
        r.read_to_end(&mut entry.data)?;
        out.push(entry);
        reader = r.finish()?;
    }
    Ok(out)
}

/// Reads an archive back: `(name, mode, contents)` per entry, for tests and inspection.
pub fn read_back(gz: &[u8]) -> anyhow::Result<Vec<(String, u32, Vec<u8>)>> {
    Ok(read_entries(gz)?.into_iter().map(|e| (e.name, e.mode, e.data)).collect())
}
