//! The parts of qcow2 dirtytrace needs: read an image's header and mapping to check it before
//! boot and to look into it, and write an empty overlay whose backing file is the user's image.
//! (QEMU's `docs/interop/qcow2.txt` is the format's description.)

use super::DiskError;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The first four bytes of every qcow2 image.
pub const MAGIC: [u8; 4] = *b"QFI\xfb";
/// An L1 or L2 entry's offset bits.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// An L2 entry's "compressed cluster" flag.
const COMPRESSED: u64 = 1 << 62;
/// An L2 entry's "reads as zeroes" flag (version 3).
const ZERO: u64 = 1;
/// The most L2 tables read to check an image (512 MiB of guest disk each at 64 KiB clusters).
const MAX_L2_TABLES_CHECKED: u64 = 4096;
/// The header extension naming the backing file's format.
const EXT_BACKING_FORMAT: u32 = 0xE279_2ACA;
/// The overlay's clusters: 64 KiB, QEMU's default.
const OVERLAY_CLUSTER_BITS: u32 = 16;
/// The largest L1 table QEMU opens (`QCOW_MAX_L1_SIZE`, 32 MiB): more is a lie, not a disk.
const MAX_L1_BYTES: u64 = 32 << 20;
/// Incompatible feature bits: dirty (0), corrupt (1), external data file (2), compression
/// type (3), extended L2 entries (4).
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 = (1 << 5) - 1;

/// An image's header, as far as dirtytrace reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// The guest disk's size in bytes.
    pub size: u64,
    /// Where the L1 table is, and its entries.
    pub l1_offset: u64,
    /// Entries of the L1 table.
    pub l1_size: u32,
    /// The backing file as the header names it.
    pub backing: Option<String>,
    /// Encryption method; 0 is none.
    pub crypt_method: u32,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// A qcow2 image opened read-only: its header and its length on disk.
pub struct Image {
    file: std::fs::File,
    /// 0: deflate; 1: zstd (version 3's compression type).
    compression: u8,
    /// The L1 table, read once.
    l1: Vec<u64>,
    path: PathBuf,
    len: u64,
    /// The header.
    pub header: Header,
}

impl Image {
    /// Opens and checks `path`: the header is whole and sane, and the L1 and L2 tables and
    /// every data cluster they point to lie within the file (so a truncated image is refused).
    pub fn open(path: &Path) -> Result<Image, DiskError> {
        let bad = |why: String| DiskError::Corrupt { path: path.to_path_buf(), why };
        let file = std::fs::File::open(path).map_err(|source| DiskError::Read { path: path.to_path_buf(), source })?;
        let len = file.metadata().map_err(|source| DiskError::Read { path: path.to_path_buf(), source })?.len();
        let mut h = vec![0u8; 104];
        let got =
            read_at_most(&file, &mut h, 0).map_err(|source| DiskError::Read { path: path.to_path_buf(), source })?;
        if got < 72 || h[..4] != MAGIC {
            return Err(bad(format!("it is {len} bytes, too short for a qcow2 header, or lacks qcow2's magic")));
        }
        let version = be32(&h, 4);
        if version != 2 && version != 3 {
            return Err(bad(format!("qcow2 version {version}; QEMU writes versions 2 and 3")));
        }
        let (backing_offset, backing_len) = (be64(&h, 8), be32(&h, 16) as u64);
        let cluster_bits = be32(&h, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(bad(format!("cluster_bits {cluster_bits} is outside qcow2's 9..=21")));
        }
        let header = Header {
            version,
            cluster_bits,
            size: be64(&h, 24),
            crypt_method: be32(&h, 32),
            l1_size: be32(&h, 36),
            l1_offset: be64(&h, 40),
            backing: None,
        };
        let mut image = Image { file, path: path.to_path_buf(), len, header, compression: 0, l1: Vec::new() };
        let cluster = 1u64 << cluster_bits;
        let l2_entries = cluster / 8;
        let needed_l1 = image.header.size.div_ceil(cluster * l2_entries);
        if (image.header.l1_size as u64) < needed_l1 {
            return Err(bad(format!(
                "its L1 table has {} entries, fewer than its {}-byte disk needs",
                image.header.l1_size, image.header.size
            )));
        }
        if image.header.l1_size as u64 * 8 > MAX_L1_BYTES {
            return Err(bad(format!(
                "its L1 table has {} entries, more than QEMU opens ({} MiB of table)",
                image.header.l1_size,
                MAX_L1_BYTES >> 20
            )));
        }
        let l1_end = image.header.l1_offset.saturating_add(image.header.l1_size as u64 * 8);
        if l1_end > len {
            return Err(bad(format!(
                "its L1 table ends at byte {l1_end}, past the file's end ({len} bytes): truncated"
            )));
        }
        let refcounts_end = be64(&h, 48).saturating_add(be32(&h, 56) as u64 * cluster);
        if refcounts_end > len {
            return Err(bad(format!(
                "its refcount table ends at byte {refcounts_end}, past the file's end ({len} bytes): truncated"
            )));
        }
        if version >= 3 {
            let incompatible = be64(&h, 72);
            let convert = "convert it with `qemu-img convert -O qcow2 IMAGE NEW.qcow2` and give NEW.qcow2";
            if incompatible & !INCOMPAT_KNOWN != 0 {
                return Err(bad(format!(
                    "it has incompatible features unknown to QEMU 7.2 (bits {:#x}); {convert}",
                    incompatible & !INCOMPAT_KNOWN
                )));
            }
            if incompatible & INCOMPAT_DATA_FILE != 0 {
                return Err(bad(format!(
                    "its data is in an external data file, which dirtytrace does not open; {convert}"
                )));
            }
            if incompatible & INCOMPAT_EXTENDED_L2 != 0 {
                return Err(bad(format!(
                    "it has extended L2 entries (subclusters), which dirtytrace does not read; {convert}"
                )));
            }
            let refcount_order = be32(&h, 96);
            if refcount_order > 6 {
                return Err(bad(format!("refcount_order {refcount_order} is outside qcow2's 0..=6")));
            }
            if be32(&h, 100) > 104 {
                let mut t = [0u8; 1];
                image.read_exact(&mut t, 104)?;
                if t[0] > 1 {
                    return Err(bad(format!(
                        "compression type {} is neither deflate (0) nor zstd (1); {convert}",
                        t[0]
                    )));
                }
                image.compression = t[0];
            }
        }
        if backing_len > 0 {
            if backing_len > 1023 || backing_offset.saturating_add(backing_len) > len {
                return Err(bad("its backing file name lies outside the file".into()));
            }
            let mut name = vec![0u8; backing_len as usize];
            image.read_exact(&mut name, backing_offset)?;
            let name = String::from_utf8(name).map_err(|_| bad("its backing file name is not UTF-8".into()))?;
            if has_protocol(&name) {
                return Err(bad(format!(
                    "its backing file name {name:?} has a protocol prefix, which QEMU would open as that protocol \
                     (a network or json: source), not as a file; rebase it onto a file with `qemu-img rebase -u -b FILE`"
                )));
            }
            if name.contains('\0') {
                return Err(bad(format!("its backing file name {name:?} holds a NUL byte")));
            }
            image.header.backing = Some(name);
        }
        image.l1 = image.read_l1()?;
        image.check_tables()?;
        Ok(image)
    }

    fn read_exact(&self, buf: &mut [u8], at: u64) -> Result<(), DiskError> {
        self.file.read_exact_at(buf, at).map_err(|source| DiskError::Read { path: self.path.clone(), source })
    }

    fn corrupt(&self, why: String) -> DiskError {
        DiskError::Corrupt { path: self.path.clone(), why }
    }

    fn read_l1(&self) -> Result<Vec<u64>, DiskError> {
        let mut raw = vec![0u8; self.header.l1_size as usize * 8];
        self.read_exact(&mut raw, self.header.l1_offset)?;
        Ok(raw.chunks_exact(8).map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes"))).collect())
    }

    fn check_tables(&self) -> Result<(), DiskError> {
        let cluster = 1u64 << self.header.cluster_bits;
        let mut l2 = vec![0u8; cluster as usize];
        for (i, &e) in self.l1.iter().enumerate().take(MAX_L2_TABLES_CHECKED as usize) {
            let off = e & OFFSET_MASK;
            if off == 0 {
                continue;
            }
            if off.saturating_add(cluster) > self.len {
                return Err(self.corrupt(format!(
                    "L2 table {i} is at byte {off}, past the file's end ({} bytes): truncated",
                    self.len
                )));
            }
            self.read_exact(&mut l2, off)?;
            for c in l2.chunks_exact(8) {
                let e = u64::from_be_bytes(c.try_into().expect("8 bytes"));
                let data = e & OFFSET_MASK;
                if e & COMPRESSED == 0 && data != 0 && data.saturating_add(cluster) > self.len {
                    return Err(self.corrupt(format!(
                        "a data cluster is at byte {data}, past the file's end ({} bytes): truncated",
                        self.len
                    )));
                }
            }
        }
        Ok(())
    }

    /// Where the cluster holding guest-disk byte `at` is.
    fn locate(&self, at: u64, l1: &[u64]) -> Result<Cluster, DiskError> {
        let bits = self.header.cluster_bits;
        let l2_entries = 1u64 << (bits - 3);
        let (l1_index, l2_index) = ((at >> bits) / l2_entries, (at >> bits) % l2_entries);
        let Some(&l1e) = l1.get(l1_index as usize) else { return Ok(Cluster::Zero) };
        if l1e & OFFSET_MASK == 0 {
            return Ok(Cluster::Unallocated);
        }
        let mut e = [0u8; 8];
        self.read_exact(&mut e, (l1e & OFFSET_MASK) + l2_index * 8)?;
        let e = u64::from_be_bytes(e);
        if e & COMPRESSED != 0 {
            // Offset, then the number of extra 512-byte sectors (docs/interop/qcow2.txt).
            let x = 62 - (bits - 8);
            let (offset, sectors) = (e & ((1 << x) - 1), ((e >> x) & ((1 << (bits - 8)) - 1)) + 1);
            let len = (sectors * 512 - (offset & 511)).min(self.len.saturating_sub(offset));
            return Ok(Cluster::Compressed { offset, len });
        }
        if self.header.version >= 3 && e & ZERO != 0 {
            return Ok(Cluster::Zero);
        }
        if e & OFFSET_MASK == 0 {
            return Ok(Cluster::Unallocated);
        }
        Ok(Cluster::At(e & OFFSET_MASK))
    }

    /// Reads guest-disk bytes at `at` into `buf`; what the image does not hold comes from
    /// `backing` (or reads as zeroes without one).
    pub fn read_guest(&self, buf: &mut [u8], at: u64, backing: Option<&super::Reader>) -> Result<(), DiskError> {
        let l1 = &self.l1;
        let cluster = 1u64 << self.header.cluster_bits;
        let mut done = 0;
        while done < buf.len() {
            let pos = at.saturating_add(done as u64);
            let within = pos & (cluster - 1);
            let n = (cluster - within).min((buf.len() - done) as u64) as usize;
            let part = &mut buf[done..done + n];
            if pos >= self.header.size {
                part.fill(0);
            } else {
                match self.locate(pos, l1)? {
                    Cluster::At(off) => self.read_exact(part, off + within)?,
                    Cluster::Zero => part.fill(0),
                    Cluster::Unallocated => match backing {
                        Some(b) => b.read(part, pos)?,
                        None => part.fill(0),
                    },
                    Cluster::Compressed { offset, len } => {
                        let mut packed = vec![0u8; len as usize];
                        self.read_exact(&mut packed, offset)?;
                        let mut plain = Vec::with_capacity(cluster as usize);
                        let unpacked = if self.compression == 1 {
                            zstd::stream::read::Decoder::new(&packed[..]).and_then(|d| {
                                std::io::Read::read_to_end(&mut std::io::Read::take(d, cluster), &mut plain)
                            })
                        } else {
                            std::io::Read::read_to_end(
                                &mut std::io::Read::take(flate2::read::DeflateDecoder::new(&packed[..]), cluster),
                                &mut plain,
                            )
                        };
                        if unpacked.is_err() || (plain.len() as u64) < within + n as u64 {
                            return Err(
                                self.corrupt(format!("its compressed cluster at byte {offset} does not decompress"))
                            );
                        }
                        part.copy_from_slice(&plain[within as usize..within as usize + n]);
                    }
                }
            }
            done += n;
        }
        Ok(())
    }

    /// The backing file's path, taken relative to the image's directory as QEMU takes it.
    pub fn backing_path(&self) -> Option<PathBuf> {
        let b = self.header.backing.as_ref()?;
        Some(match Path::new(b).is_absolute() {
            true => PathBuf::from(b),
            false => self.path.parent().unwrap_or(Path::new(".")).join(b),
        })
    }
}

/// Whether QEMU takes a file name as `PROTOCOL:...` (its `path_has_protocol`): a `:` before
/// any `/`.
fn has_protocol(name: &str) -> bool {
    name.find([':', '/']).is_some_and(|i| name.as_bytes()[i] == b':')
}

/// Where a guest-disk cluster's data is.
enum Cluster {
    /// At this file offset.
    At(u64),
    /// In the backing file.
    Unallocated,
    /// Zeroes.
    Zero,
    /// Compressed, `len` bytes at `offset` at most.
    Compressed { offset: u64, len: u64 },
}

pub(super) fn read_at_most(file: &std::fs::File, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], at + got as u64)? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// An empty qcow2 (version 3) of `size` bytes whose backing file is `backing`, of `format`:
/// every read goes to the backing file until the guest writes. Four parts, a cluster each (the
/// L1 table more if the disk is over 4 TiB): header, L1 table, refcount table, refcount block.
pub fn overlay(size: u64, backing: &str, format: &str) -> Vec<u8> {
    let cluster = 1u64 << OVERLAY_CLUSTER_BITS;
    let l1_size = size.div_ceil(cluster * (cluster / 8));
    let l1_clusters = (l1_size * 8).div_ceil(cluster).max(1);
    let (l1_offset, refcount_table) = (cluster, cluster * (1 + l1_clusters));
    let refcount_block = refcount_table + cluster;
    let clusters = 3 + l1_clusters;
    let mut out = vec![0u8; (clusters * cluster) as usize];
    let mut h = Vec::with_capacity(512);
    h.extend_from_slice(&MAGIC);
    h.extend_from_slice(&3u32.to_be_bytes()); // version
    h.extend_from_slice(&0u64.to_be_bytes()); // backing file offset, set below
    h.extend_from_slice(&(backing.len() as u32).to_be_bytes());
    h.extend_from_slice(&OVERLAY_CLUSTER_BITS.to_be_bytes());
    h.extend_from_slice(&size.to_be_bytes());
    h.extend_from_slice(&0u32.to_be_bytes()); // no encryption
    h.extend_from_slice(&(l1_size as u32).to_be_bytes());
    h.extend_from_slice(&l1_offset.to_be_bytes());
    h.extend_from_slice(&refcount_table.to_be_bytes());
    h.extend_from_slice(&1u32.to_be_bytes()); // refcount table clusters
    h.extend_from_slice(&0u32.to_be_bytes()); // snapshots
    h.extend_from_slice(&0u64.to_be_bytes()); // snapshots offset
    h.extend_from_slice(&0u64.to_be_bytes()); // incompatible features
    h.extend_from_slice(&0u64.to_be_bytes()); // compatible features
    h.extend_from_slice(&0u64.to_be_bytes()); // autoclear features
    h.extend_from_slice(&4u32.to_be_bytes()); // refcount order: 16-bit refcounts
    h.extend_from_slice(&104u32.to_be_bytes()); // header length
                                                // Extensions: the backing file's format, then the end.
    h.extend_from_slice(&EXT_BACKING_FORMAT.to_be_bytes());
    h.extend_from_slice(&(format.len() as u32).to_be_bytes());
    h.extend_from_slice(format.as_bytes());
    h.resize(h.len().next_multiple_of(8), 0);
    h.extend_from_slice(&[0u8; 8]);
    let backing_offset = h.len() as u64;
    h[8..16].copy_from_slice(&backing_offset.to_be_bytes());
    h.extend_from_slice(backing.as_bytes());
    out[..h.len()].copy_from_slice(&h);
    out[refcount_table as usize..refcount_table as usize + 8].copy_from_slice(&refcount_block.to_be_bytes());
    for c in 0..clusters as usize {
        let at = refcount_block as usize + 2 * c;
        out[at..at + 2].copy_from_slice(&1u16.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overlay_reads_back_as_an_empty_image_with_its_backing_file() {
        let dir = std::env::temp_dir().join(format!("dt-qcow2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("o.qcow2");
        let bytes = overlay(3 << 30, "/images/base.img", "raw");
        assert_eq!(bytes.len(), 4 << 16);
        std::fs::write(&p, &bytes).unwrap();
        let img = Image::open(&p).unwrap();
        assert_eq!(img.header.version, 3);
        assert_eq!(img.header.size, 3 << 30);
        assert_eq!(img.header.l1_size, 6);
        assert_eq!(img.header.backing.as_deref(), Some("/images/base.img"));
        let mut buf = [1u8; 600];
        img.read_guest(&mut buf, 65_000, None).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `overlay` with header bytes patched, written to `dir/name`.
    fn patched(dir: &Path, name: &str, patch: &[(usize, &[u8])]) -> PathBuf {
        let mut bytes = overlay(1 << 30, "/base.img", "raw");
        for (at, b) in patch {
            bytes[*at..*at + b.len()].copy_from_slice(b);
        }
        let p = dir.join(name);
        std::fs::write(&p, &bytes).unwrap();
        p
    }

    #[test]
    fn lying_headers_are_refused_in_bounded_memory() {
        let dir = std::env::temp_dir().join(format!("dt-qcow2-lies-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // An L1 table of 2 GiB, in a sparse file long enough to hold it: refused, not read.
        let p = patched(&dir, "l1.qcow2", &[(36, &0x1000_0000u32.to_be_bytes())]);
        std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len((1 << 16) + (0x1000_0000 << 3)).unwrap();
        let e = Image::open(&p).err().unwrap().to_string();
        assert!(e.contains("its L1 table has 268435456 entries, more than QEMU opens (32 MiB of table)"), "{e}");
        // Features that change how the image is read: refused, saying what to do.
        for (bits, what) in [
            (1u64 << 4, "extended L2 entries"),
            (1 << 2, "external data file"),
            (1 << 40, "incompatible features unknown to QEMU 7.2 (bits 0x10000000000)"),
        ] {
            let p = patched(&dir, "f.qcow2", &[(72, &bits.to_be_bytes())]);
            let e = Image::open(&p).err().unwrap().to_string();
            assert!(e.contains(what) && e.contains("qemu-img convert -O qcow2"), "{e}");
        }
        let p = patched(&dir, "c.qcow2", &[(72, &8u64.to_be_bytes()), (100, &112u32.to_be_bytes()), (104, &[7])]);
        let e = Image::open(&p).err().unwrap().to_string();
        assert!(e.contains("compression type 7 is neither deflate (0) nor zstd (1)"), "{e}");
        let p = patched(&dir, "r.qcow2", &[(96, &9u32.to_be_bytes())]);
        let e = Image::open(&p).err().unwrap().to_string();
        assert!(e.contains("refcount_order 9"), "{e}");
        // A backing name QEMU would take as a protocol (json:, nbd://) names no file.
        for name in ["json:{\"driver\":\"file\",\"filename\":\"/etc/shadow\"}", "nbd://127.0.0.1/x"] {
            let p = dir.join("p.qcow2");
            std::fs::write(&p, overlay(1 << 30, name, "raw")).unwrap();
            let e = Image::open(&p).err().unwrap().to_string();
            assert!(e.contains("has a protocol prefix") && e.contains("qemu-img rebase"), "{e}");
        }
        assert!(!has_protocol("/a:b") && !has_protocol("dir/a:b") && !has_protocol("base.img"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn truncated_and_foreign_images_are_refused() {
        let dir = std::env::temp_dir().join(format!("dt-qcow2-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t.qcow2");
        std::fs::write(&p, &overlay(1 << 30, "b", "raw")[..70_000]).unwrap();
        let e = Image::open(&p).err().unwrap().to_string();
        assert!(e.contains("past the file's end") && e.contains("truncated"), "{e}");
        std::fs::write(&p, b"not an image").unwrap();
        let e = Image::open(&p).err().unwrap().to_string();
        assert!(e.contains("lacks qcow2's magic"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
