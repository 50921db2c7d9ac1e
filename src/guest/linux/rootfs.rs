//! `--rootfs`: a root filesystem for the guest, from a directory or a tarball (`.tar`,
//! `.tar.gz`, `.tar.zst`, told apart by their first bytes), streamed entry by entry into the
//! initramfs. Symlinks, modes, owners, mtimes and hard links are kept; FIFOs too. Device nodes
//! and sockets are skipped with a note (the guest's devtmpfs provides `/dev`). A tarball entry
//! whose name is absolute or climbs out with `..` is refused.

use super::initramfs::{check_name, shorten, ArchiveWriter, Owner, ENTRY_OVERHEAD, MAX_FILE_BYTES, S_IFIFO};
use crate::units::PAGE_SIZE;
use anyhow::{anyhow, bail, Context};
use sha2::Digest;
use std::collections::{HashMap, HashSet};
use std::fs::Metadata;
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Files changed less than this long before a build may still change within the same
/// timestamp tick; such a build is not cached.
const RACY_NS: i128 = 2_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    Tar(Compression),
}

/// A `--rootfs`: a directory or a tarball.
#[derive(Debug, Clone)]
pub struct Rootfs {
    /// Where it is.
    pub path: PathBuf,
    kind: Kind,
}

/// A digest of a rootfs's metadata, the part of the cache key that stands for it.
pub struct Fingerprint {
    /// SHA-256 over every entry's path, inode, device, size, mode, owner, mtime and ctime.
    pub digest: Vec<u8>,
    /// Something in it changed within the last two seconds: do not cache what is built from it.
    pub recently_changed: bool,
}

fn now_ns() -> i128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128)
}

fn ctime_ns(m: &Metadata) -> i128 {
    m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128
}

fn hash_meta(h: &mut sha2::Sha256, rel: &str, m: &Metadata) {
    h.update(rel.as_bytes());
    h.update([0]);
    for v in [
        m.mode() as u64,
        m.uid() as u64,
        m.gid() as u64,
        m.size(),
        m.mtime() as u64,
        m.mtime_nsec() as u64,
        m.ctime() as u64,
        m.ctime_nsec() as u64,
        m.ino(),
        m.dev(),
        m.nlink(),
        m.rdev(),
    ] {
        h.update(v.to_le_bytes());
    }
}

fn owner(m: &Metadata) -> Owner {
    Owner { uid: m.uid(), gid: m.gid(), mtime: m.mtime().clamp(0, u32::MAX as i64) as u32 }
}

type Visit<'a> = dyn FnMut(&str, &Path, &Metadata) -> anyhow::Result<()> + 'a;

impl Rootfs {
    /// Checks that `path` is a directory or a tar archive dirtytrace reads.
    pub fn open(path: &Path) -> anyhow::Result<Rootfs> {
        let p = path.display();
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => anyhow!("--rootfs {p}: no such file or directory"),
            _ => anyhow!("--rootfs {p}: cannot read it: {e}"),
        })?;
        let not_archive = || anyhow!("--rootfs {p}: neither a directory nor a tar archive (.tar, .tar.gz or .tar.zst)");
        if meta.is_dir() {
            std::fs::read_dir(path).with_context(|| format!("--rootfs {p}: cannot read the directory"))?;
            return Ok(Rootfs { path: path.to_path_buf(), kind: Kind::Dir });
        }
        if !meta.is_file() {
            return Err(not_archive());
        }
        let mut head = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(512).read_to_end(&mut head))
            .with_context(|| format!("--rootfs {p}: cannot read it"))?;
        let kind = match head.as_slice() {
            [0x1F, 0x8B, ..] => Kind::Tar(Compression::Gzip),
            [0x28, 0xB5, 0x2F, 0xFD, ..] => Kind::Tar(Compression::Zstd),
            h if h.get(257..262) == Some(b"ustar") => Kind::Tar(Compression::None),
            _ => return Err(not_archive()),
        };
        Ok(Rootfs { path: path.to_path_buf(), kind })
    }

    /// Whether it is a directory (else a tarball).
    pub fn is_dir(&self) -> bool {
        self.kind == Kind::Dir
    }

    /// The metadata of every entry of a directory (path, mode, owner, size, mtime, ctime, inode,
    /// device, link count), or of the tarball file itself. Contents are not read: any write to
    /// a file changes its ctime, which cannot be set back.
    pub fn fingerprint(&self) -> anyhow::Result<Fingerprint> {
        let start = now_ns();
        let mut h = sha2::Sha256::default();
        let canonical = std::fs::canonicalize(&self.path).unwrap_or_else(|_| self.path.clone());
        h.update(canonical.as_os_str().as_encoded_bytes());
        h.update([0, self.is_dir() as u8]);
        let mut newest = 0i128;
        let top = std::fs::metadata(&self.path).with_context(|| format!("--rootfs {}", self.path.display()))?;
        hash_meta(&mut h, "", &top);
        newest = newest.max(ctime_ns(&top));
        if self.is_dir() {
            self.walk(&mut |rel, _, m| {
                hash_meta(&mut h, rel, m);
                newest = newest.max(ctime_ns(m));
                Ok(())
            })?;
        }
        Ok(Fingerprint { digest: h.finalize().to_vec(), recently_changed: newest >= start - RACY_NS })
    }

    /// Visits every entry below the root, parents before children, names sorted.
    fn walk(&self, visit: &mut Visit<'_>) -> anyhow::Result<()> {
        self.walk_dir(&self.path, "", visit)
    }

    fn walk_dir(&self, dir: &Path, rel: &str, visit: &mut Visit<'_>) -> anyhow::Result<()> {
        let root = self.path.display();
        let mut names = std::fs::read_dir(dir)
            .and_then(|rd| rd.map(|e| e.map(|e| e.file_name())).collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("--rootfs {root}: cannot read directory {}", dir.display()))?;
        names.sort();
        for n in names {
            let path = dir.join(&n);
            let name = n.to_str().ok_or_else(|| {
                anyhow!(
                    "--rootfs {root}: {} has a name that is not UTF-8, which the initramfs cannot hold",
                    path.display()
                )
            })?;
            let child = if rel.is_empty() { name.to_string() } else { format!("{rel}/{name}") };
            check_name(&child).map_err(|e| anyhow!("--rootfs {root}: {e}; move it or leave it out of the rootfs"))?;
            let m = std::fs::symlink_metadata(&path)
                .with_context(|| format!("--rootfs {root}: cannot read {}", path.display()))?;
            visit(&child, &path, &m)?;
            if m.is_dir() {
                self.walk_dir(&path, &child, visit)?;
            }
        }
        Ok(())
    }

    /// What the rootfs takes in guest RAM once unpacked, at least: file data in whole pages
    /// (a hard-linked file's once) and [`ENTRY_OVERHEAD`] per entry, from the directory walk or
    /// the tar headers, without reading any file's data. Names are checked on the way, and a
    /// file over the newc limit is refused, named.
    pub fn unpacked_floor(&self) -> anyhow::Result<u64> {
        let root = self.path.display().to_string();
        let too_big = |name: &str, size: u64| {
            anyhow!(
                "--rootfs {root}: {name} is {size} bytes; the initramfs format (newc cpio) stops at 4 GiB: leave it \
                 out of the rootfs"
            )
        };
        let mut total = 0u64;
        let mut add = |name: &str, size: u64| {
            if size > MAX_FILE_BYTES {
                return Err(too_big(name, size));
            }
            total = total.saturating_add(size.div_ceil(PAGE_SIZE) * PAGE_SIZE + ENTRY_OVERHEAD);
            Ok(())
        };
        match self.kind {
            Kind::Dir => {
                let mut seen = HashSet::new();
                self.walk(&mut |rel, _, m| {
                    let first = !m.is_file() || m.nlink() < 2 || seen.insert((m.dev(), m.ino()));
                    add(rel, if m.is_file() && first { m.size() } else { 0 })
                })?;
            }
            Kind::Tar(c) => {
                let bad = || format!("--rootfs {root}: not a valid tar archive");
                let mut visit = |raw: &[u8], kind: tar::EntryType, size: u64| -> anyhow::Result<()> {
                    let Some(name) = self.entry_name(raw)? else { return Ok(()) };
                    let data = matches!(
                        kind,
                        tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse
                    );
                    add(&name, if data { size } else { 0 })
                };
                if c == Compression::None {
                    // Seeks over the data: a tarball of huge files is sized from its headers alone.
                    let f =
                        std::fs::File::open(&self.path).with_context(|| format!("--rootfs {root}: cannot read it"))?;
                    let mut ar = tar::Archive::new(f);
                    for e in ar.entries_with_seek().with_context(bad)? {
                        let mut e = e.with_context(bad)?;
                        refuse_pax_sparse(&mut e, &root)?;
                        visit(&e.path_bytes(), e.header().entry_type(), e.size())?;
                    }
                } else {
                    let mut ar = tar::Archive::new(self.reader(c)?);
                    for e in ar.entries().with_context(bad)? {
                        let mut e = e.with_context(bad)?;
                        refuse_pax_sparse(&mut e, &root)?;
                        visit(&e.path_bytes(), e.header().entry_type(), e.size())?;
                    }
                }
            }
        }
        Ok(total)
    }

    /// Streams every entry into the archive.
    pub fn pack<W: Write>(&self, a: &mut ArchiveWriter<W>) -> anyhow::Result<()> {
        let skipped = match self.kind {
            Kind::Dir => self.pack_dir(a)?,
            Kind::Tar(c) => self.pack_tar(a, c)?,
        };
        if !skipped.is_empty() {
            let shown: Vec<&str> = skipped.iter().take(5).map(String::as_str).collect();
            a.notes.push(format!(
                "skipped {} device nodes and sockets from {} (the guest's devtmpfs provides /dev): {}{}",
                skipped.len(),
                self.path.display(),
                shown.join(", "),
                if skipped.len() > shown.len() { ", ..." } else { "" }
            ));
        }
        Ok(())
    }

    fn pack_dir<W: Write>(&self, a: &mut ArchiveWriter<W>) -> anyhow::Result<Vec<String>> {
        let root = self.path.display().to_string();
        let mut links: HashMap<(u64, u64), u32> = HashMap::new();
        let mut skipped = Vec::new();
        self.walk(&mut |rel, path, m| {
            let cannot = || format!("--rootfs {root}: cannot read {}", path.display());
            let ft = m.file_type();
            if ft.is_dir() {
                a.dir(rel, m.mode(), owner(m))?;
            } else if ft.is_symlink() {
                let target = std::fs::read_link(path).with_context(cannot)?;
                let target = target.to_str().ok_or_else(|| {
                    anyhow!("--rootfs {root}: the symlink {} points to a name that is not UTF-8", path.display())
                })?;
                a.symlink(rel, target, owner(m))?;
            } else if ft.is_file() {
                let nlink = m.nlink().min(u32::MAX as u64) as u32;
                if nlink > 1 {
                    if let Some(&ino) = links.get(&(m.dev(), m.ino())) {
                        a.hard_link(rel, m.mode(), owner(m), ino, nlink)?;
                        return Ok(());
                    }
                }
                let f = std::fs::File::open(path).with_context(cannot)?;
                let same = |n: &Metadata| {
                    (n.size(), n.mtime(), n.mtime_nsec(), ctime_ns(n))
                        == (m.size(), m.mtime(), m.mtime_nsec(), ctime_ns(m))
                };
                let changed =
                    || anyhow!("--rootfs {root}: {} changed while it was being packed; try again", path.display());
                if !same(&f.metadata().with_context(cannot)?) {
                    return Err(changed());
                }
                let link = (nlink > 1).then(|| {
                    let ino = a.new_ino();
                    links.insert((m.dev(), m.ino()), ino);
                    (ino, nlink)
                });
                a.file(rel, m.mode(), owner(m), m.size(), &mut BufReader::with_capacity(1 << 17, &f), link)
                    .with_context(cannot)?;
                if !same(&f.metadata().with_context(cannot)?) {
                    return Err(changed());
                }
            } else if ft.is_fifo() {
                a.node(rel, S_IFIFO | (m.mode() & 0o7777), owner(m), (0, 0))?;
            } else {
                skipped.push(rel.to_string());
            }
            Ok(())
        })?;
        Ok(skipped)
    }

    fn reader(&self, c: Compression) -> anyhow::Result<Box<dyn Read>> {
        let f = std::fs::File::open(&self.path)
            .with_context(|| format!("--rootfs {}: cannot read it", self.path.display()))?;
        let f = BufReader::with_capacity(1 << 20, f);
        Ok(match c {
            Compression::None => Box::new(f),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(f)),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::with_buffer(f)
                    .with_context(|| format!("--rootfs {}: cannot start zstd", self.path.display()))?,
            ),
        })
    }

    /// An entry's name inside the root: `./` and empty components dropped; absolute names and
    /// `..` refused. `None` for the root itself.
    fn entry_name(&self, raw: &[u8]) -> anyhow::Result<Option<String>> {
        let root = self.path.display();
        let s = std::str::from_utf8(raw).map_err(|_| {
            anyhow!("--rootfs {root}: entry {} has a name that is not UTF-8", shorten(&String::from_utf8_lossy(raw)))
        })?;
        if s.starts_with('/') {
            bail!(
                "--rootfs {root}: entry {} is an absolute path; refusing an archive whose entries escape its root",
                shorten(s)
            );
        }
        let mut parts = Vec::new();
        for c in s.split('/') {
            match c {
                "" | "." => {}
                ".." => bail!(
                    "--rootfs {root}: entry {} climbs out of the root with `..`; refusing the archive",
                    shorten(s)
                ),
                c => parts.push(c),
            }
        }
        let name = parts.join("/");
        check_name(&name).map_err(|e| anyhow!("--rootfs {root}: entry {e}; refusing the archive"))?;
        Ok((!parts.is_empty()).then_some(name))
    }

    fn pack_tar<W: Write>(&self, a: &mut ArchiveWriter<W>, c: Compression) -> anyhow::Result<Vec<String>> {
        let root = self.path.display().to_string();
        let bad = || format!("--rootfs {root}: not a valid tar archive");
        // First pass: refuse escaping names before anything is written, and learn which files
        // are hard-link targets (their first entry must say so).
        let mut targets = HashSet::new();
        let mut ar = tar::Archive::new(self.reader(c)?);
        for e in ar.entries().with_context(bad)? {
            let e = e.with_context(bad)?;
            let name = self.entry_name(&e.path_bytes())?;
            if e.header().entry_type() == tar::EntryType::Link {
                let target = e.link_name_bytes().map(|t| self.entry_name(&t)).transpose()?.flatten();
                if let (Some(t), Some(_)) = (target, name) {
                    targets.insert(t);
                }
            }
        }
        let mut inos: HashMap<String, (u32, u32)> = HashMap::new();
        let mut skipped = Vec::new();
        let mut ar = tar::Archive::new(self.reader(c)?);
        for e in ar.entries().with_context(bad)? {
            let mut e = e.with_context(bad)?;
            refuse_pax_sparse(&mut e, &root)?;
            let Some(name) = self.entry_name(&e.path_bytes())? else { continue };
            let h = e.header();
            let mode = h.mode().with_context(bad)? & 0o7777;
            let o = Owner {
                uid: h.uid().with_context(bad)?.min(u32::MAX as u64) as u32,
                gid: h.gid().with_context(bad)?.min(u32::MAX as u64) as u32,
                mtime: h.mtime().with_context(bad)?.min(u32::MAX as u64) as u32,
            };
            let link_name = e.link_name_bytes().map(|b| b.into_owned());
            match h.entry_type() {
                tar::EntryType::Directory => a.dir(&name, mode, o)?,
                // A GNU sparse file reads as its full length, its holes as zeroes.
                tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                    let link = targets.contains(&name).then(|| {
                        let l = (a.new_ino(), 2);
                        inos.insert(name.clone(), l);
                        l
                    });
                    let size = e.size();
                    a.file(&name, mode, o, size, &mut e, link).with_context(|| format!("--rootfs {root}: {name}"))?;
                }
                tar::EntryType::Symlink => {
                    let t = link_name.unwrap_or_default();
                    let t = std::str::from_utf8(&t).map_err(|_| {
                        anyhow!("--rootfs {root}: the symlink {name} points to a name that is not UTF-8")
                    })?;
                    a.symlink(&name, t, o)?;
                }
                tar::EntryType::Link => {
                    let target = link_name.map(|t| self.entry_name(&t)).transpose()?.flatten().unwrap_or_default();
                    match inos.get(&target) {
                        Some(&(ino, nlink)) => a.hard_link(&name, mode, o, ino, nlink)?,
                        None => a.notes.push(format!(
                            "skipped hard link {name} in {root}: its target {target} is not a file earlier in the archive"
                        )),
                    }
                }
                tar::EntryType::Char | tar::EntryType::Block => skipped.push(name),
                tar::EntryType::Fifo => a.node(&name, S_IFIFO | mode, o, (0, 0))?,
                tar::EntryType::XGlobalHeader
                | tar::EntryType::XHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink => {}
                other => a.notes.push(format!("skipped {name} in {root}: unsupported tar entry type {other:?}")),
            }
        }
        Ok(skipped)
    }
}

/// A file stored sparse in the PAX format (`tar --sparse --format=pax`, `GNU.sparse.*` keys) is
/// an entry of its sparse map and data under a made-up name, which the tar reader would pack as
/// is: refused, naming the ways to write the archive that dirtytrace unpacks.
fn refuse_pax_sparse<R: Read>(e: &mut tar::Entry<R>, root: &str) -> anyhow::Result<()> {
    let bad = || format!("--rootfs {root}: not a valid tar archive");
    let Some(pax) = e.pax_extensions().with_context(bad)? else { return Ok(()) };
    let (mut sparse, mut name) = (false, None);
    for ext in pax {
        let ext = ext.with_context(bad)?;
        sparse |= ext.key_bytes().starts_with(b"GNU.sparse.");
        if ext.key_bytes() == b"GNU.sparse.name" {
            name = Some(String::from_utf8_lossy(ext.value_bytes()).into_owned());
        }
    }
    if sparse {
        let name = name.unwrap_or_else(|| String::from_utf8_lossy(&e.path_bytes()).into_owned());
        bail!(
            "--rootfs {root}: {name} is a sparse file in the PAX format (tar --sparse --format=pax), which \
             dirtytrace does not unpack; make the tarball with --format=gnu, or without --sparse"
        );
    }
    Ok(())
}
