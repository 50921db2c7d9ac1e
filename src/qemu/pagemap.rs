//! `PAGEMAP_SCAN` (Linux 6.7+) on another process's `/proc/PID/pagemap`: which pages of a
//! range were written since they were last write-protected, write-protecting them again in
//! the same call. The range must be registered with a userfaultfd in asynchronous
//! write-protect mode (dirtytrace's QEMU plugin does that inside QEMU).
//!
//! The constants and structs are the kernel's (include/uapi/linux/fs.h), written here because
//! the build host's headers may be older than the kernel dirtytrace runs on.

use std::fs::File;
use std::os::fd::AsRawFd;

/// `PAGE_IS_WRITTEN`: written since write-protected (or never protected).
const PAGE_IS_WRITTEN: u64 = 1 << 1;
/// `PAGE_IS_PRESENT`: backed by a page in memory.
const PAGE_IS_PRESENT: u64 = 1 << 3;
/// `PM_SCAN_WP_MATCHING`: write-protect the pages reported.
const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// `PM_SCAN_CHECK_WPASYNC`: fail rather than report a page without async write-protection.
const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;
/// `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: libc::c_ulong = 0xC060_6610;

/// How many regions one call may return; a harvest with more calls again from where the
/// kernel stopped.
const REGIONS_PER_CALL: usize = 4096;

/// `struct page_region`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// `struct pm_scan_arg`.
#[repr(C)]
#[derive(Debug, Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// Another process's pagemap, open for scanning.
#[derive(Debug)]
pub struct Pagemap {
    file: File,
    regions: std::sync::Mutex<Vec<PageRegion>>,
}

impl Pagemap {
    /// Opens `/proc/PID/pagemap`.
    pub fn open(pid: u32) -> std::io::Result<Pagemap> {
        let file = File::open(format!("/proc/{pid}/pagemap"))?;
        Ok(Pagemap { file, regions: std::sync::Mutex::new(vec![PageRegion::default(); REGIONS_PER_CALL]) })
    }

    /// Calls `f(first_byte, end_byte)` for every run of pages in `[start, start + len)` written
    /// since the last call, and write-protects them again.
    pub fn take_written(&self, start: u64, len: u64, f: impl FnMut(u64, u64)) -> std::io::Result<()> {
        self.scan(start, len, PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC, PAGE_IS_WRITTEN, f)
    }

    /// Calls `f(first_byte, end_byte)` for every run of pages in the range that memory backs,
    /// changing nothing.
    pub fn present(&self, start: u64, len: u64, f: impl FnMut(u64, u64)) -> std::io::Result<()> {
        self.scan(start, len, 0, PAGE_IS_PRESENT, f)
    }

    fn scan(
        &self,
        start: u64,
        len: u64,
        flags: u64,
        category: u64,
        mut f: impl FnMut(u64, u64),
    ) -> std::io::Result<()> {
        let end = start + len;
        let mut regions = self.regions.lock().unwrap_or_else(|e| e.into_inner());
        let mut from = start;
        while from < end {
            let mut arg = PmScanArg {
                size: std::mem::size_of::<PmScanArg>() as u64,
                flags,
                start: from,
                end,
                vec: regions.as_mut_ptr() as u64,
                vec_len: regions.len() as u64,
                category_mask: category,
                return_mask: category,
                ..PmScanArg::default()
            };
            // SAFETY: PAGEMAP_SCAN reads and writes one pm_scan_arg, alive for the call, and
            // writes at most `vec_len` page_regions into `regions`, which holds that many.
            let n = unsafe { libc::ioctl(self.file.as_raw_fd(), PAGEMAP_SCAN, &mut arg as *mut PmScanArg) };
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            for r in &regions[..(n as usize).min(regions.len())] {
                f(r.start, r.end);
            }
            if arg.walk_end <= from {
                break;
            }
            from = arg.walk_end;
        }
        Ok(())
    }
}
