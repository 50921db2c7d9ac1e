//! What the host can read of a guest disk without mounting it: its partition table (MBR or
//! GPT) and the filesystem each partition holds, from the filesystems' magic numbers.

use super::{DiskError, Reader};
use serde::Serialize;

const SECTOR: u64 = 512;
/// GPT partition entries looked at, at most (GPT's usual 128).
const MAX_GPT_ENTRIES: u32 = 256;
/// Logical partitions followed in an MBR's extended partition, at most.
const MAX_LOGICAL: u32 = 64;

/// The filesystems a root may be on: what the kit's kernel mounts (ext4 built in, xfs and
/// btrfs as modules).
pub const ROOT_FILESYSTEMS: &[&str] = &["ext4", "ext3", "ext2", "xfs", "btrfs"];

/// A partition, or the whole disk when it has no partition table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Volume {
    /// The device the guest sees it as: `/dev/vda` or `/dev/vdaN`.
    pub device: String,
    /// Where it starts on the disk, in bytes.
    pub start: u64,
    /// Its size in bytes.
    pub size: u64,
    /// The filesystem its magic number says, if one is known.
    pub filesystem: Option<String>,
}

/// The disk's partition table and volumes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Layout {
    /// `gpt`, `mbr` or `none`.
    pub table: String,
    /// The volumes, in the guest's device order.
    pub volumes: Vec<Volume>,
}

impl Layout {
    /// The volumes whose filesystem can be a root.
    pub fn root_candidates(&self) -> impl Iterator<Item = &Volume> {
        self.volumes.iter().filter(|v| v.filesystem.as_deref().is_some_and(|f| ROOT_FILESYSTEMS.contains(&f)))
    }

    /// One line per volume, for messages.
    pub fn describe(&self) -> String {
        let v: Vec<String> = self
            .volumes
            .iter()
            .map(|v| format!("{} {}", v.device, v.filesystem.as_deref().unwrap_or("no known filesystem")))
            .collect();
        let table = if self.table == "none" {
            "no partition table".to_string()
        } else {
            format!("{} partition table", self.table)
        };
        format!("{table}; {}", if v.is_empty() { "no partitions".into() } else { v.join(", ") })
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The filesystem at `start`, from its magic number.
pub fn filesystem_at(disk: &Reader, start: u64) -> Result<Option<String>, DiskError> {
    let mut sb = [0u8; 1024];
    disk.read(&mut sb, start.saturating_add(1024))?;
    if u16::from_le_bytes([sb[56], sb[57]]) == 0xEF53 {
        let (compat, incompat) = (le32(&sb, 92), le32(&sb, 96));
        // extents, 64bit or flex_bg: ext4; a journal: ext3.
        let kind = if incompat & (0x40 | 0x80 | 0x200) != 0 {
            "ext4"
        } else if compat & 0x4 != 0 {
            "ext3"
        } else {
            "ext2"
        };
        return Ok(Some(kind.into()));
    }
    let mut head = [0u8; 4096];
    disk.read(&mut head, start)?;
    if &head[..4] == b"XFSB" {
        return Ok(Some("xfs".into()));
    }
    if &head[4086..4096] == b"SWAPSPACE2" {
        return Ok(Some("swap".into()));
    }
    if &head[82..87] == b"FAT32" || &head[54..57] == b"FAT" {
        return Ok(Some("vfat".into()));
    }
    let mut btrfs = [0u8; 8];
    disk.read(&mut btrfs, start.saturating_add(0x10040))?;
    if &btrfs == b"_BHRfS_M" {
        return Ok(Some("btrfs".into()));
    }
    Ok(None)
}

/// Reads the disk's partition table and looks at each volume's filesystem.
pub fn read(disk: &Reader) -> Result<Layout, DiskError> {
    let mut mbr = [0u8; 512];
    disk.read(&mut mbr, 0)?;
    let has_mbr = mbr[510] == 0x55 && mbr[511] == 0xAA;
    let entries: Vec<&[u8]> = (0..4).map(|i| &mbr[446 + 16 * i..462 + 16 * i]).collect();
    let mut volumes = Vec::new();
    let table;
    if has_mbr && entries.iter().any(|e| e[4] == 0xEE) {
        table = "gpt";
        let mut h = [0u8; 512];
        disk.read(&mut h, SECTOR)?;
        if &h[..8] == b"EFI PART" {
            let (lba, count, size) = (le64(&h, 72), le32(&h, 80).min(MAX_GPT_ENTRIES), le32(&h, 84) as u64);
            // The entries must lie on the disk (a lying LBA is no table, not a wrap-around).
            let entries_at = lba.checked_mul(SECTOR).filter(|&at| at < disk.size());
            if let (true, Some(entries_at)) = ((128..=4096).contains(&size), entries_at) {
                let mut e = vec![0u8; size as usize];
                for i in 0..count as u64 {
                    disk.read(&mut e, entries_at + i * size)?;
                    if e[..16].iter().all(|&b| b == 0) {
                        continue;
                    }
                    let (first, last) = (le64(&e, 32), le64(&e, 40));
                    if last < first {
                        continue;
                    }
                    let (start, end) = (first.saturating_mul(SECTOR), last.saturating_add(1).saturating_mul(SECTOR));
                    volumes.extend(volume(disk, i as u32 + 1, start, end - start)?);
                }
            }
        }
    } else if has_mbr && entries.iter().any(|e| e[4] != 0) && looks_like_partitions(&entries, disk.size()) {
        table = "mbr";
        for (i, e) in entries.iter().enumerate() {
            let (kind, start, count) = (e[4], le32(e, 8) as u64, le32(e, 12) as u64);
            match kind {
                0 => {}
                0x05 | 0x0F | 0x85 => logical(disk, start, &mut volumes)?,
                _ => volumes.extend(volume(disk, i as u32 + 1, start * SECTOR, count * SECTOR)?),
            }
        }
    } else {
        table = "none";
        volumes.push(Volume {
            device: "/dev/vda".into(),
            start: 0,
            size: disk.size(),
            filesystem: filesystem_at(disk, 0)?,
        });
    }
    Ok(Layout { table: table.into(), volumes })
}

/// An MBR whose entries lie on the disk (a filesystem's boot sector can end in 55 AA too).
fn looks_like_partitions(entries: &[&[u8]], size: u64) -> bool {
    entries.iter().filter(|e| e[4] != 0).all(|e| {
        let (start, count) = (le32(e, 8) as u64, le32(e, 12) as u64);
        (e[0] == 0 || e[0] == 0x80) && start > 0 && (start + count) * SECTOR <= size.max(SECTOR)
    })
}

/// Partition `number`, or none where it starts past the disk's end (Linux skips it, "beyond
/// EOD"); one that runs past the end is cut there, as Linux cuts it.
fn volume(disk: &Reader, number: u32, start: u64, size: u64) -> Result<Option<Volume>, DiskError> {
    if start >= disk.size() {
        return Ok(None);
    }
    let size = size.min(disk.size() - start);
    Ok(Some(Volume { device: format!("/dev/vda{number}"), start, size, filesystem: filesystem_at(disk, start)? }))
}

/// The logical partitions of an extended partition starting at sector `base`: numbered from 5.
fn logical(disk: &Reader, base: u64, out: &mut Vec<Volume>) -> Result<(), DiskError> {
    let mut ebr_at = base;
    for n in 5..5 + MAX_LOGICAL {
        let mut ebr = [0u8; 512];
        disk.read(&mut ebr, ebr_at * SECTOR)?;
        if ebr[510] != 0x55 || ebr[511] != 0xAA {
            break;
        }
        let (first, next) = (&ebr[446..462], &ebr[462..478]);
        if first[4] != 0 {
            out.extend(volume(disk, n, (ebr_at + le32(first, 8) as u64) * SECTOR, le32(first, 12) as u64 * SECTOR)?);
        }
        if next[4] == 0 {
            break;
        }
        ebr_at = base + le32(next, 8) as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1 MiB raw disk with a protective MBR and a GPT header whose entries are at `lba`,
    /// the first entry spanning sectors `first..=last`.
    fn gpt(lba: u64, first: u64, last: u64) -> Layout {
        let mut d = vec![0u8; 1 << 20];
        d[446 + 4] = 0xEE;
        d[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
        d[446 + 12..446 + 16].copy_from_slice(&u32::MAX.to_le_bytes());
        (d[510], d[511]) = (0x55, 0xAA);
        d[512..520].copy_from_slice(b"EFI PART");
        d[512 + 72..512 + 80].copy_from_slice(&lba.to_le_bytes());
        d[512 + 80..512 + 84].copy_from_slice(&128u32.to_le_bytes());
        d[512 + 84..512 + 88].copy_from_slice(&128u32.to_le_bytes());
        d[1024..1040].fill(0x11);
        d[1024 + 32..1024 + 40].copy_from_slice(&first.to_le_bytes());
        d[1024 + 40..1024 + 48].copy_from_slice(&last.to_le_bytes());
        let p = std::env::temp_dir().join(format!("dt-layout-{}-{}", std::process::id(), crate::clock::now_ns()));
        std::fs::write(&p, &d).unwrap();
        let file = std::fs::File::open(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        read(&Reader::Raw { path: p, file, len: d.len() as u64 }).unwrap()
    }

    #[test]
    fn partition_tables_that_lie_give_no_partitions_past_the_disk() {
        // Entries at an LBA that overflows when made bytes: no table to read, not a wrap-around.
        assert_eq!(gpt(1 << 62, 34, 100).describe(), "gpt partition table; no partitions");
        // A partition starting past the disk's end is skipped, as Linux skips it; one running
        // past it is cut at the end; an inverted one is none.
        assert_eq!(gpt(2, 1 << 60, u64::MAX).describe(), "gpt partition table; no partitions");
        assert_eq!(gpt(2, 1000, 10).describe(), "gpt partition table; no partitions");
        let l = gpt(2, 1024, 1 << 40);
        assert_eq!((l.volumes.len(), l.volumes[0].start, l.volumes[0].size), (1, 1024 * 512, 1024 * 512));
    }
}
