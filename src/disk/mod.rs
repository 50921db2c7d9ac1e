//! A VM disk image that a Linux workload runs in (`record --disk`): what the host can tell of
//! it before boot (format, backing files, partitions, filesystems), and the copy-on-write
//! overlay that takes the guest's writes, so that the image itself is never written.
//!
//! Under the QEMU engine the image is a read-only backing node below a qcow2 overlay that
//! dirtytrace writes itself ([`qcow2::overlay`]) into an unlinked file: nothing is left behind,
//! whatever happens to QEMU or the recorder.

pub mod layout;
pub mod qcow2;

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// An image's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// Sector for sector.
    Raw,
    /// QEMU's copy-on-write format.
    Qcow2,
}

impl DiskFormat {
    /// QEMU's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

/// The disk a Linux workload runs in: flags of `record` and keys of a grid's `[record]`
/// (schemas/linux-guest.md).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct DiskInputs {
    /// A VM disk image (raw or qcow2): the workload runs chrooted in its root filesystem, on a
    /// copy-on-write overlay; the image is never written (QEMU engine only).
    #[arg(long, value_name = "IMAGE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk: Option<PathBuf>,
    /// The image's format [default: read from its header].
    #[arg(long, value_name = "FORMAT", requires = "disk")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_format: Option<DiskFormat>,
    /// The root filesystem's device in the guest, like /dev/vda2 [default: the first ext4, xfs
    /// or btrfs filesystem that holds /bin/sh].
    #[arg(long, value_name = "DEVICE", requires = "disk")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_root: Option<String>,
}

/// The deepest chain of backing files followed.
pub const MAX_BACKING_DEPTH: usize = 16;

/// What is wrong with a disk image.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The image does not exist.
    #[error("--disk {}: no such file", path.display())]
    Missing {
        /// The image.
        path: PathBuf,
    },
    /// The image is not a file (or a block device).
    #[error("--disk {}: {what}, not a disk image (give a raw or qcow2 image file)", path.display())]
    NotAnImage {
        /// The image.
        path: PathBuf,
        /// What it is.
        what: String,
    },
    /// The image cannot be read.
    #[error("--disk {}: cannot read it ({source}); dirtytrace needs read access only", path.display())]
    Read {
        /// The image.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The image is damaged.
    #[error("--disk {}: not a usable qcow2 image: {why}", path.display())]
    Corrupt {
        /// The image.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A backing file is missing or unusable.
    #[error("--disk {}: its backing file {} {why}", path.display(), backing.display())]
    Backing {
        /// The image naming it.
        path: PathBuf,
        /// The backing file.
        backing: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// `--disk-format raw` on a qcow2 file: the guest would see qcow2's tables, not a disk.
    #[error(
        "--disk {}: the file is a qcow2 image (its header says so), but --disk-format raw was given: the guest \
         would see qcow2's own tables instead of the disk; give --disk-format qcow2, or leave it out",
        path.display()
    )]
    Qcow2AsRaw {
        /// The image.
        path: PathBuf,
    },
    /// Encrypted qcow2.
    #[error("--disk {}: the image is encrypted, which dirtytrace does not open", path.display())]
    Encrypted {
        /// The image.
        path: PathBuf,
    },
    /// The image's path is not UTF-8, which QEMU's JSON options cannot carry.
    #[error(
        "--disk {}: its path is not UTF-8, which QEMU's -blockdev options cannot name; give it through a \
         symlink with a UTF-8 name (`ln -s`)",
        path.display()
    )]
    NotUtf8 {
        /// The image.
        path: PathBuf,
    },
    /// The image is empty.
    #[error("--disk {}: the image is empty", path.display())]
    Empty {
        /// The image.
        path: PathBuf,
    },
    /// No Linux filesystem.
    #[error(
        "--disk {}: no ext4, xfs or btrfs filesystem was found on it (looked at: {looked}); the workload runs in \
         the image's Linux root filesystem",
        path.display()
    )]
    NoFilesystem {
        /// The image.
        path: PathBuf,
        /// What was found where.
        looked: String,
    },
    /// The overlay could not be made.
    #[error("cannot make the disk's copy-on-write overlay in {}: {source}", dir.display())]
    Overlay {
        /// Where.
        dir: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
}

/// Reads an image as the guest sees its disk.
pub enum Reader {
    /// A raw image.
    Raw {
        /// The image.
        path: PathBuf,
        /// The file.
        file: std::fs::File,
        /// Its length.
        len: u64,
    },
    /// A qcow2 image and its backing chain.
    Qcow2 {
        /// The image.
        image: Box<qcow2::Image>,
        /// What it is backed by.
        backing: Option<Box<Reader>>,
    },
}

impl Reader {
    /// The guest disk's size.
    pub fn size(&self) -> u64 {
        match self {
            Reader::Raw { len, .. } => *len,
            Reader::Qcow2 { image, .. } => image.header.size,
        }
    }

    /// Reads `buf` from guest-disk byte `at`; past the end reads as zeroes.
    pub fn read(&self, buf: &mut [u8], at: u64) -> Result<(), DiskError> {
        match self {
            Reader::Raw { file, path, len } => {
                buf.fill(0);
                if at >= *len {
                    return Ok(());
                }
                qcow2::read_at_most(file, buf, at)
                    .map(|_| ())
                    .map_err(|source| DiskError::Read { path: path.clone(), source })
            }
            Reader::Qcow2 { image, backing } => image.read_guest(buf, at, backing.as_deref()),
        }
    }
}

/// An image checked on the host: how QEMU is to open it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckedImage {
    /// The image, absolute.
    pub path: PathBuf,
    /// Its format.
    pub format: DiskFormat,
    /// The guest disk's size in bytes.
    pub size: u64,
    /// Its backing files, nearest first.
    pub backing_chain: Vec<PathBuf>,
}

/// The format a file's header says: qcow2's magic, else raw.
pub fn detect_format(path: &Path) -> Result<DiskFormat, DiskError> {
    let f = std::fs::File::open(path).map_err(|source| DiskError::Read { path: path.to_path_buf(), source })?;
    let mut head = [0u8; 4];
    let n =
        qcow2::read_at_most(&f, &mut head, 0).map_err(|source| DiskError::Read { path: path.to_path_buf(), source })?;
    Ok(if n == 4 && head == qcow2::MAGIC { DiskFormat::Qcow2 } else { DiskFormat::Raw })
}

fn check_file(path: &Path) -> Result<(), DiskError> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(DiskError::Missing { path: path.into() }),
        Err(source) => return Err(DiskError::Read { path: path.into(), source }),
    };
    // A regular file or a block device: anything else has no disk to read.
    let t = meta.file_type();
    if !t.is_file() && !t.is_block_device() {
        let what = format!("a {}", crate::files::kind_of(t));
        return Err(DiskError::NotAnImage { path: path.into(), what });
    }
    // Readable by this user (QEMU runs as the recorder's user).
    std::fs::File::open(path).map_err(|source| DiskError::Read { path: path.into(), source })?;
    Ok(())
}

/// Opens an image (and its backing chain) for reading, checking it as QEMU will need it.
pub fn open(path: &Path, format: Option<DiskFormat>) -> Result<(Reader, CheckedImage), DiskError> {
    check_file(path)?;
    let abs = std::path::absolute(path).map_err(|source| DiskError::Read { path: path.into(), source })?;
    if abs.to_str().is_none() {
        return Err(DiskError::NotUtf8 { path: path.into() });
    }
    let detected = detect_format(path)?;
    if (format, detected) == (Some(DiskFormat::Raw), DiskFormat::Qcow2) {
        return Err(DiskError::Qcow2AsRaw { path: path.into() });
    }
    let format = format.unwrap_or(detected);
    let mut chain = Vec::new();
    let reader = open_chain(&abs, format, &mut chain, 0, &abs)?;
    if reader.size() == 0 {
        return Err(DiskError::Empty { path: path.into() });
    }
    let size = reader.size();
    Ok((reader, CheckedImage { path: abs, format, size, backing_chain: chain }))
}

fn open_chain(
    path: &Path,
    format: DiskFormat,
    chain: &mut Vec<PathBuf>,
    depth: usize,
    top: &Path,
) -> Result<Reader, DiskError> {
    match format {
        DiskFormat::Raw => {
            let file = std::fs::File::open(path).map_err(|source| DiskError::Read { path: path.into(), source })?;
            let len = block_or_file_len(&file).map_err(|source| DiskError::Read { path: path.into(), source })?;
            Ok(Reader::Raw { path: path.into(), file, len })
        }
        DiskFormat::Qcow2 => {
            let image = qcow2::Image::open(path)?;
            if image.header.crypt_method != 0 {
                return Err(DiskError::Encrypted { path: path.into() });
            }
            let backing = match image.backing_path() {
                None => None,
                Some(b) => {
                    let fail = |why: String| DiskError::Backing { path: path.into(), backing: b.clone(), why };
                    let same = |p: &Path| {
                        use std::os::unix::fs::MetadataExt;
                        let (a, c) = (std::fs::metadata(p), std::fs::metadata(&b));
                        matches!((a, c), (Ok(a), Ok(c)) if (a.dev(), a.ino()) == (c.dev(), c.ino()))
                    };
                    if same(top) || chain.iter().any(|p| same(p)) {
                        return Err(fail(
                            "is already in its backing chain: a loop, which QEMU cannot open either; \
                             rebase the image (`qemu-img rebase -u -b FILE`) onto its real base"
                                .into(),
                        ));
                    }
                    if depth >= MAX_BACKING_DEPTH {
                        return Err(fail(format!("is more than {MAX_BACKING_DEPTH} backing files deep")));
                    }
                    match check_file(&b) {
                        Ok(()) => {}
                        Err(DiskError::Missing { .. }) => {
                            return Err(fail("does not exist; the image needs it (see `qemu-img info`)".into()))
                        }
                        Err(e) => return Err(fail(format!("is unusable: {e}"))),
                    }
                    chain.push(b.clone());
                    let f = detect_format(&b)?;
                    Some(Box::new(open_chain(&b, f, chain, depth + 1, top)?))
                }
            };
            Ok(Reader::Qcow2 { image: Box::new(image), backing })
        }
    }
}

fn block_or_file_len(file: &std::fs::File) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = file;
    let len = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(0))?;
    Ok(len)
}

/// An unlinked file in `dir` holding an empty qcow2 overlay of `image`: QEMU opens it through
/// `/proc/self/fd/N`, and it vanishes with the last descriptor, whatever kills whom.
pub fn overlay_file(image: &CheckedImage, dir: &Path) -> Result<std::fs::File, DiskError> {
    use std::io::Write;
    let fail = |source| DiskError::Overlay { dir: dir.to_path_buf(), source };
    let mut f = unlinked_file(dir).map_err(fail)?;
    let backing = image.path.to_string_lossy();
    f.write_all(&qcow2::overlay(image.size, &backing, image.format.as_str())).map_err(fail)?;
    Ok(f)
}

/// A new file in `dir` with no name (`O_TMPFILE`), or one unlinked at once where the
/// filesystem lacks `O_TMPFILE`.
fn unlinked_file(dir: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.read(true).write(true).mode(0o600);
    match o.clone().custom_flags(libc::O_TMPFILE).open(dir) {
        Ok(f) => Ok(f),
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) || e.raw_os_error() == Some(libc::EISDIR) => {
            let name = dir.join(format!(".dirtytrace-overlay-{}-{}", std::process::id(), crate::clock::now_ns()));
            let f = o.create_new(true).open(&name)?;
            std::fs::remove_file(&name)?;
            Ok(f)
        }
        Err(e) => Err(e),
    }
}

/// QEMU's `-blockdev` options (JSON) for the image, read-only, and the overlay on top: the
/// overlay node is the one the disk device uses.
pub fn blockdev_args(image: &CheckedImage, overlay_fd: i32) -> Vec<String> {
    let base = serde_json::json!({
        "driver": image.format.as_str(),
        "node-name": "dt-image",
        "read-only": true,
        "file": { "driver": "file", "filename": image.path.to_string_lossy(), "read-only": true },
    });
    let top = serde_json::json!({
        "driver": "qcow2",
        "node-name": OVERLAY_NODE,
        "file": { "driver": "file", "filename": format!("/proc/self/fd/{overlay_fd}") },
        "backing": "dt-image",
    });
    vec![base.to_string(), top.to_string()]
}

/// The block node the guest's disk device uses.
pub const OVERLAY_NODE: &str = "dt-disk";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_is_read_from_the_header() {
        let dir = std::env::temp_dir().join(format!("dt-disk-fmt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (raw, q) = (dir.join("a.img"), dir.join("b.qcow2"));
        std::fs::write(&raw, vec![0u8; 4096]).unwrap();
        std::fs::write(&q, qcow2::overlay(1 << 20, "x", "raw")).unwrap();
        assert_eq!(detect_format(&raw).unwrap(), DiskFormat::Raw);
        assert_eq!(detect_format(&q).unwrap(), DiskFormat::Qcow2);
        let e = open(&q, None).err().unwrap().to_string();
        assert!(
            e.contains(&format!("backing file {}", dir.join("x").display())) && e.contains("does not exist"),
            "{e}"
        );
        let e = open(&q, Some(DiskFormat::Raw)).err().unwrap().to_string();
        assert!(e.contains("is a qcow2 image") && e.contains("--disk-format qcow2"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_backing_loop_and_a_non_utf8_path_are_refused() {
        use std::os::unix::ffi::OsStrExt;
        let dir = std::env::temp_dir().join(format!("dt-disk-loop-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.qcow2"), qcow2::overlay(1 << 20, "b.qcow2", "qcow2")).unwrap();
        std::fs::write(dir.join("b.qcow2"), qcow2::overlay(1 << 20, "a.qcow2", "qcow2")).unwrap();
        std::fs::write(dir.join("s.qcow2"), qcow2::overlay(1 << 20, "s.qcow2", "qcow2")).unwrap();
        for (img, backing) in [("a.qcow2", "a.qcow2"), ("s.qcow2", "s.qcow2")] {
            let e = open(&dir.join(img), None).err().unwrap().to_string();
            assert!(
                e.contains(&format!(
                    "backing file {} is already in its backing chain: a loop",
                    dir.join(backing).display()
                )),
                "{e}"
            );
        }
        let odd = dir.join(std::ffi::OsStr::from_bytes(b"odd\xff.img"));
        std::fs::write(&odd, vec![0u8; 4096]).unwrap();
        let e = open(&odd, None).err().unwrap().to_string();
        assert!(e.contains("its path is not UTF-8") && e.contains("ln -s"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
