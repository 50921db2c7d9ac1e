//! Linux guest setup: time from `record` to the guest's first instruction.

use super::{BenchOptions, BenchReport};
use crate::record::{self, RecordOptions};
use crate::trace::Trace;
use crate::units::{HumanDuration, HumanSize};
use serde::Serialize;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// One row of the Linux setup table.
#[derive(Debug, Serialize)]
pub struct LinuxSetupRow {
    /// Whether the initramfs came from the cache.
    pub initramfs_cached: bool,
    /// From the start of `record` to the guest's first instruction, initramfs build included.
    pub setup_s: f64,
    /// The initramfs's size.
    pub initramfs_bytes: u64,
    /// When the kernel's `Linux version` banner reached the console, from the first instruction.
    pub banner_s: Option<f64>,
}

/// Time to the Linux guest's first instruction, with the initramfs built cold and cached.
pub fn linux_setup(opts: &BenchOptions, report: &mut BenchReport) -> anyhow::Result<()> {
    let script = opts.work_dir.join("linux-bench.sh");
    // A script no earlier run has seen, so the first build misses the initramfs cache; the
    // one archive this adds to the cache is removed at the end.
    std::fs::write(&script, format!("#!/bin/sh\n# bench {}\ndt-phase bench\nsleep 1\n", crate::clock::now_ns()))?;
    let mut cached_archive = None;
    for (i, seconds) in [8.0, 1.0].into_iter().enumerate() {
        let dir = opts.work_dir.join(format!("linux-{i}"));
        let mut ro = RecordOptions::new(dir.clone());
        ro.workload = Some(script.clone());
        ro.settings.mem = Some(HumanSize(512 << 20));
        ro.settings.duration = Some(HumanDuration(Duration::from_secs_f64(seconds)));
        ro.linux.boot.allow_emulated_kernel = true;
        let summary = record::record(&ro, Arc::new(AtomicBool::new(false)), None)?;
        let trace = Trace::open(&dir)?;
        let g = &trace.manifest.guest;
        let banner = trace.guest_log()?.iter().find(|e| e.name == "kernel banner").map(|e| e.t_s);
        cached_archive = g["initramfs_sha256"].as_str().map(|sha| format!("{sha}.cpio.gz"));
        report.linux_setup.push(LinuxSetupRow {
            initramfs_cached: g["initramfs_cached"].as_bool().unwrap_or(false),
            setup_s: summary.setup_s.unwrap_or(0.0),
            initramfs_bytes: g["initramfs_bytes"].as_u64().unwrap_or(0),
            banner_s: banner,
        });
    }
    if let Some(name) = cached_archive {
        let _ = std::fs::remove_file(crate::guest::linux::kit::cache_dir().join("initramfs").join(name));
    }
    Ok(())
}
