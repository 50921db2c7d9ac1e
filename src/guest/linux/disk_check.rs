//! `dirtytrace disk check IMAGE`: what `record --disk` will find in an image. The host reads
//! the format, the backing files, the partition table and the filesystems' magic numbers; a
//! short probe boot under QEMU, with the kernel and initramfs `record` would use, finds the
//! root filesystem as `record` does, runs its `/bin/sh` and reads its `/etc/os-release`.

use super::console::MARKER_PREFIX;
use crate::disk::DiskInputs;
use crate::engine::RunningGuest;
use crate::guest::Guest;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long the probe boot may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(120);

/// The probe's workload, run chrooted in the root filesystem `/init` found.
const PROBE_SCRIPT: &str = r#"#!/bin/sh
[ -r /etc/os-release ] && . /etc/os-release
echo "DIRTYTRACE:probe_os:${PRETTY_NAME:-${ID:-no /etc/os-release} ${VERSION_ID}}"
"#;

/// What the probe boot found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProbeResult {
    /// `DEVICE FILESYSTEM` of the root `/init` chose.
    pub root: Option<String>,
    /// The image's `PRETTY_NAME`.
    pub os: Option<String>,
    /// Why `/init` could not run a workload there.
    pub error: Option<String>,
}

fn marker<'a>(console: &'a str, kind: &str) -> Option<&'a str> {
    let prefix = format!("{MARKER_PREFIX}{kind}:");
    console.lines().find_map(|l| l.trim_end_matches('\r').strip_prefix(&prefix)).map(str::trim)
}

/// Boots the image under QEMU with a probe script, as `record --disk` would.
pub fn probe_boot(inputs: &DiskInputs, progress: &mut dyn FnMut(&str)) -> anyhow::Result<ProbeResult> {
    let dir =
        std::env::temp_dir().join(format!("dirtytrace-disk-check-{}-{}", std::process::id(), crate::clock::now_ns()));
    std::fs::create_dir(&dir)?;
    struct Cleanup<'a>(&'a Path);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(self.0.join("probe.sh"));
            let _ = std::fs::remove_dir(self.0);
        }
    }
    let _cleanup = Cleanup(&dir);
    let script = dir.join("probe.sh");
    std::fs::write(&script, PROBE_SCRIPT)?;
    let mut guest = super::LinuxGuest::new(super::LinuxOptions {
        script,
        inputs: super::LinuxInputs { disk: inputs.clone(), ..Default::default() },
        mem: super::PROBE_MEM,
        vcpus: 1,
        console: false,
        kvm_device: "/dev/kvm".into(),
        under_kvm: false,
        guest_clock: false,
        scratch_dir: dir.clone(),
    })?;
    let boot = guest.qemu_boot()?.expect("a Linux guest boots under QEMU");
    let log = std::sync::Arc::new(crate::events::GuestLog::new("boot"));
    progress("booting the image under QEMU");
    let vm = crate::qemu::QemuVm::start(&boot, log.clone())?;
    let mut running = vm.start_guest()?;
    let t0 = Instant::now();
    while !running.all_finished() && !running.stop_requested() && t0.elapsed() < PROBE_TIMEOUT {
        // The written pages are of no interest: harvesting keeps the tracking cheap.
        let _ = running.harvest_all();
        std::thread::sleep(Duration::from_millis(50));
    }
    let timed_out = !running.all_finished() && !running.stop_requested();
    running.stop();
    drop(running);
    let console = String::from_utf8_lossy(&log.take().1).into_owned();
    let mut r = ProbeResult {
        root: marker(&console, "disk_root").map(str::to_string),
        os: marker(&console, "probe_os").map(str::to_string),
        error: marker(&console, super::console::GUEST_ERROR).map(str::to_string),
    };
    if r.root.is_none() && r.error.is_none() {
        r.error = Some(if timed_out {
            format!("the probe boot did not finish within {PROBE_TIMEOUT:?}")
        } else {
            "the probe boot ended before /init reported (see `record --console`)".into()
        });
    }
    Ok(r)
}

/// `dirtytrace disk check`: prints what it found and returns whether `record --disk` will work.
pub fn run(inputs: &DiskInputs, boot: bool, out: &mut dyn std::io::Write) -> anyhow::Result<bool> {
    let checked = super::check_disk(inputs);
    let path = inputs.disk.as_deref().unwrap_or(Path::new(""));
    let disk = match checked {
        Ok(Some(d)) => d,
        Ok(None) => anyhow::bail!("no image given"),
        Err(e) => {
            writeln!(out, "Image        {}", path.display())?;
            writeln!(out, "Verdict      record --disk will not work: {e:#}")?;
            return Ok(false);
        }
    };
    let chain: Vec<String> = disk.image.backing_chain.iter().map(|p| p.display().to_string()).collect();
    writeln!(
        out,
        "Image        {} ({}, {:.1} MiB guest disk; backing files: {})",
        disk.image.path.display(),
        disk.image.format.as_str(),
        disk.image.size as f64 / (1 << 20) as f64,
        if chain.is_empty() { "none".to_string() } else { chain.join(" <- ") }
    )?;
    writeln!(out, "Partitions   {}", disk.layout.describe())?;
    if !boot {
        writeln!(
            out,
            "Verdict      the host finds a Linux filesystem; boot the probe (without --no-boot) to know more"
        )?;
        return Ok(true);
    }
    let probe = probe_boot(inputs, &mut |m| eprintln!("disk check: {m}"))?;
    if let Some(root) = &probe.root {
        writeln!(out, "Root         {root}, /bin/sh runs")?;
    }
    if let Some(os) = &probe.os {
        writeln!(out, "System       {os}")?;
    }
    match &probe.error {
        None => writeln!(out, "Verdict      record --disk will work with this image")?,
        Some(e) => writeln!(out, "Verdict      record --disk will not work: {e}")?,
    }
    Ok(probe.error.is_none())
}
