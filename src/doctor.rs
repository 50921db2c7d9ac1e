//! `dirtytrace doctor`: what will work on this host, in well under two seconds and without
//! side effects (it writes no file). KVM: the device, its permissions, the API version and the
//! capabilities dirtytrace uses. The kernel-mode probe ([`crate::guest::probe`]) with the CPU's
//! vmx/svm flags: whether guest kernel code, and so a Linux guest, runs natively. Extras: the
//! guest kernel kit, the font `plot` needs, SimGrid. The QEMU engine, tried for real (QEMU
//! started stopped with the plugin, then killed), and which engine `record --engine auto` picks.

use crate::guest::linux::kit;
use crate::guest::probe::{self, ProbeResult};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A KVM capability dirtytrace uses, and what this host's KVM says of it.
#[derive(Debug, Clone, Serialize)]
pub struct Capability {
    /// The capability (`KVM_CAP_…`).
    pub name: &'static str,
    /// `KVM_CHECK_EXTENSION`'s answer (0: absent).
    pub value: i32,
    /// What needs it: `all`, `linux`, or `info` (reported, not used by default).
    pub needed_by: &'static str,
}

/// What `/dev/kvm` is here.
#[derive(Debug, Clone, Serialize)]
pub struct KvmReport {
    /// The device path.
    pub device: PathBuf,
    /// It exists.
    pub present: bool,
    /// It opens for reading and writing.
    pub read_write: bool,
    /// Why it cannot be used, when it cannot.
    pub error: Option<String>,
    /// `KVM_GET_API_VERSION`, when it opened.
    pub api_version: Option<i32>,
    /// The capabilities dirtytrace uses.
    pub capabilities: Vec<Capability>,
}

/// What `record --engine auto` picks here.
#[derive(Debug, Clone, Serialize)]
pub struct AutoEngine {
    /// For the synthetic guest.
    pub synthetic: &'static str,
    /// For a Linux guest (a .sh workload).
    pub linux: &'static str,
}

/// Whether something works here, and why (not).
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// It works.
    pub ok: bool,
    /// Why, or why not, in one line.
    pub why: String,
}

/// Everything `doctor` found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The KVM device.
    pub kvm: KvmReport,
    /// The host CPU's flags: `hypervisor` (we are a VM), `vmx` (VT-x), `svm` (AMD-V).
    pub cpu_hypervisor: bool,
    /// The CPU has VT-x.
    pub cpu_vmx: bool,
    /// The CPU has AMD-V.
    pub cpu_svm: bool,
    /// The kernel-mode probe's timings, when it ran.
    pub probe: Option<ProbeResult>,
    /// Why the probe could not run.
    pub probe_error: Option<String>,
    /// Whether the synthetic guest can be recorded.
    pub synthetic_guest: Verdict,
    /// Whether Linux guests can run their workloads.
    pub linux_guests: Verdict,
    /// `kernel-package version, busybox version`, or why there is no kit.
    pub kit: Verdict,
    /// Whether `plot` has a font.
    pub plot_font: Verdict,
    /// Whether SimGrid is there for `examples/simgrid`.
    pub simgrid: Verdict,
    /// Whether the QEMU engine (`record --engine qemu`) works here: QEMU, its plugin and the
    /// host kernel's write tracking, tried for real.
    pub qemu: Verdict,
    /// Whether `record --disk` works here: the QEMU engine, and the kit's disk modules.
    pub disk_images: Verdict,
    /// What `record --engine auto` picks for each kind of guest: `kvm`, `qemu` or `none`.
    pub auto_engine: AutoEngine,
    /// How long `doctor` took (s).
    pub elapsed_s: f64,
}

const CAPS: [(&str, u32, &str); 12] = [
    ("KVM_CAP_USER_MEMORY", kvm_bindings::KVM_CAP_USER_MEMORY, "all"),
    ("KVM_CAP_NR_MEMSLOTS", kvm_bindings::KVM_CAP_NR_MEMSLOTS, "all"),
    ("KVM_CAP_GET_TSC_KHZ", kvm_bindings::KVM_CAP_GET_TSC_KHZ, "all"),
    ("KVM_CAP_IMMEDIATE_EXIT", kvm_bindings::KVM_CAP_IMMEDIATE_EXIT, "info"),
    ("KVM_CAP_IRQCHIP", kvm_bindings::KVM_CAP_IRQCHIP, "linux"),
    ("KVM_CAP_PIT2", kvm_bindings::KVM_CAP_PIT2, "linux"),
    ("KVM_CAP_IRQFD", kvm_bindings::KVM_CAP_IRQFD, "linux"),
    ("KVM_CAP_EXT_CPUID", kvm_bindings::KVM_CAP_EXT_CPUID, "linux"),
    ("KVM_CAP_SET_TSS_ADDR", kvm_bindings::KVM_CAP_SET_TSS_ADDR, "linux"),
    ("KVM_CAP_TSC_DEADLINE_TIMER", kvm_bindings::KVM_CAP_TSC_DEADLINE_TIMER, "info"),
    ("KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2", kvm_bindings::KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, "info"),
    ("KVM_CAP_DIRTY_LOG_RING", kvm_bindings::KVM_CAP_DIRTY_LOG_RING, "info"),
];

fn kvm_report(device: &Path) -> KvmReport {
    let present = device.exists();
    let read_write = std::fs::OpenOptions::new().read(true).write(true).open(device).is_ok();
    let mut r = KvmReport {
        device: device.to_path_buf(),
        present,
        read_write,
        error: None,
        api_version: None,
        capabilities: Vec::new(),
    };
    match crate::vmm::open_kvm(device) {
        Ok(kvm) => {
            r.api_version = Some(kvm.get_api_version());
            for (name, cap, needed_by) in CAPS {
                r.capabilities.push(Capability {
                    name,
                    value: kvm.check_extension_raw(cap as libc::c_ulong),
                    needed_by,
                });
            }
        }
        Err(e) => r.error = Some(e.to_string()),
    }
    r
}

fn cpu_flags() -> (bool, bool, bool) {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags: Vec<&str> =
        info.lines().find(|l| l.starts_with("flags")).map(|l| l.split_whitespace().collect()).unwrap_or_default();
    let has = |f: &str| flags.contains(&f);
    (has("hypervisor"), has("vmx"), has("svm"))
}

fn verdict(ok: bool, why: impl Into<String>) -> Verdict {
    Verdict { ok, why: why.into() }
}

/// The first line a command prints, if it runs and succeeds.
fn first_line(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).lines().next().map(|l| l.trim().to_string())
}

/// The kit as `record` finds it ([`kit::locate`]: `DIRTYTRACE_KERNEL`, `DIRTYTRACE_BUSYBOX`,
/// the kit's vmlinux, then its bzImage), so that `doctor` and `record` cannot disagree.
fn kit_verdict() -> Verdict {
    match kit::locate(None, None, false) {
        Ok(k) => {
            let versions = k.info.as_ref().map_or(String::new(), |i| {
                format!(" ({} {}, {} {})", i.kernel_package, i.kernel_version, i.busybox_package, i.busybox_version)
            });
            verdict(true, format!("kernel {}, busybox {}{versions}", k.kernel.display(), k.busybox.display()))
        }
        Err(e) => verdict(false, crate::errors::causes(e.as_ref())),
    }
}

/// The font `plot` would load ([`crate::analysis::plot::load_font`]).
fn font_verdict() -> Verdict {
    match crate::analysis::plot::load_font() {
        Ok(p) => verdict(true, p.display().to_string()),
        Err(e) => verdict(false, format!("{e} (needed by `plot`)")),
    }
}

fn simgrid_verdict() -> Verdict {
    match first_line("pkg-config", &["--modversion", "simgrid"]) {
        Some(v) => verdict(true, format!("SimGrid {v} (pkg-config)")),
        None => verdict(false, "not found by pkg-config: `apt-get install libsimgrid-dev` (for examples/simgrid)"),
    }
}

fn qemu_verdict() -> Verdict {
    match crate::qemu::probe() {
        Ok((version, mode)) => verdict(
            true,
            format!(
                "QEMU {version}: the plugin write-protected guest RAM ({}), PAGEMAP_SCAN works",
                if mode == "user" { "user-mode userfaultfd, no privilege needed" } else { "userfaultfd" }
            ),
        ),
        Err(e) => verdict(false, e.to_string()),
    }
}

/// `record --disk` needs the QEMU engine and the kit's disk modules.
fn disk_verdict(qemu: &Verdict) -> Verdict {
    let modules = kit::locate(None, None, false).map_err(|e| format!("{e:#}")).and_then(|k| {
        if !k.kernel.starts_with(kit::kit_dir()) {
            return Ok("the kernel is not the kit's: its disk drivers must be built in".to_string());
        }
        kit::disk_modules(&k).map(|m| format!("the kit has its {} disk modules", m.len())).map_err(|e| format!("{e:#}"))
    });
    match (qemu.ok, modules) {
        (true, Ok(m)) => verdict(true, format!("the QEMU engine works and {m}")),
        (false, _) => verdict(false, "it needs the QEMU engine, which does not work here (above)"),
        (true, Err(e)) => verdict(false, e),
    }
}

/// Looks at the host. Writes nothing.
pub fn run(device: &Path) -> Report {
    let t0 = std::time::Instant::now();
    let kvm = kvm_report(device);
    let (cpu_hypervisor, cpu_vmx, cpu_svm) = cpu_flags();
    let (probe, probe_error) = if kvm.error.is_none() {
        match probe::run(device) {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(crate::errors::causes(e.as_ref()))),
        }
    } else {
        (None, None)
    };
    let missing = |need: &str| -> Vec<&str> {
        kvm.capabilities.iter().filter(|c| c.needed_by == need && c.value <= 0).map(|c| c.name).collect()
    };
    let synthetic_guest = if let Some(e) = &kvm.error {
        verdict(false, e.clone())
    } else if !missing("all").is_empty() {
        verdict(false, format!("KVM lacks {}", missing("all").join(", ")))
    } else {
        match &probe {
            Some(p) if p.user_mode.seconds.is_some() => verdict(
                true,
                format!(
                    "guest user mode (CPL3) runs {}",
                    if p.user_mode.native { "natively" } else { "slowly (emulated?)" }
                ),
            ),
            Some(_) => verdict(false, "the probe's user-mode loop did not finish in time"),
            None => verdict(false, probe_error.clone().unwrap_or_else(|| "the probe did not run".into())),
        }
    };
    let linux_guests = if !synthetic_guest.ok {
        verdict(false, "KVM is not usable (see above)")
    } else if !missing("linux").is_empty() {
        verdict(false, format!("KVM lacks {}", missing("linux").join(", ")))
    } else {
        match &probe {
            Some(p) if p.kernel_native() => {
                verdict(true, format!("guest kernel code runs natively ({})", mips(p.kernel_mode.instructions_per_s)))
            }
            Some(p) => verdict(
                false,
                format!(
                    "this host's KVM emulates guest kernel code ({}{}): kernels run for minutes and stop at \
                     instructions its emulator lacks. Under the own VMM only the synthetic guest runs here; Linux \
                     workloads run under --engine qemu",
                    mips(p.kernel_mode.instructions_per_s),
                    if cpu_vmx || cpu_svm { "" } else { ", and the CPU shows no vmx/svm" }
                ),
            ),
            None => verdict(false, "the probe did not run"),
        }
    };
    let qemu = qemu_verdict();
    let disk_images = disk_verdict(&qemu);
    let auto_engine = AutoEngine {
        // As `record` decides: the own VMM wherever KVM opens, else QEMU.
        synthetic: match (kvm.error.is_none(), qemu.ok) {
            (true, _) => "kvm",
            (false, true) => "qemu",
            (false, false) => "none",
        },
        linux: match (linux_guests.ok, qemu.ok) {
            (true, _) => "kvm",
            (false, true) => "qemu",
            (false, false) => "none",
        },
    };
    Report {
        kvm,
        cpu_hypervisor,
        cpu_vmx,
        cpu_svm,
        probe,
        probe_error,
        synthetic_guest,
        linux_guests,
        kit: kit_verdict(),
        plot_font: font_verdict(),
        simgrid: simgrid_verdict(),
        qemu,
        disk_images,
        auto_engine,
        elapsed_s: t0.elapsed().as_secs_f64(),
    }
}

fn mips(ips: f64) -> String {
    format!("{:.1} M instructions/s", ips / 1e6)
}

fn yes(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "no"
    }
}

/// The report as text.
pub fn render(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let k = &r.kvm;
    let _ = writeln!(s, "KVM");
    let _ = writeln!(
        s,
        "  {:<22} {}",
        k.device.display(),
        match (k.present, k.read_write) {
            (false, _) => "missing",
            (true, true) => "present, read-write",
            (true, false) => "present, not read-write for this user",
        }
    );
    if let Some(e) = &k.error {
        let _ = writeln!(s, "  {:<22} {e}", "error");
    }
    if let Some(v) = k.api_version {
        let _ = writeln!(s, "  {:<22} {v}", "API version");
    }
    for c in &k.capabilities {
        let need = match c.needed_by {
            "all" => "needed",
            "linux" => "needed by Linux guests",
            _ => "reported only",
        };
        let _ = writeln!(s, "  {:<34} {:>8}  ({need})", c.name, c.value);
    }
    let _ = writeln!(s, "Kernel-mode probe");
    let _ = writeln!(
        s,
        "  {:<22} hypervisor {}, vmx {}, svm {}",
        "CPU flags",
        yes(r.cpu_hypervisor),
        yes(r.cpu_vmx),
        yes(r.cpu_svm)
    );
    match (&r.probe, &r.probe_error) {
        (Some(p), _) => {
            for (name, t) in [("guest kernel (CPL0)", &p.kernel_mode), ("guest user (CPL3)", &p.user_mode)] {
                let took = match t.seconds {
                    Some(sec) => format!("{:.3} ms", sec * 1e3),
                    None => format!("unfinished after {} ms", probe::DEADLINE.as_millis()),
                };
                let _ = writeln!(
                    s,
                    "  {:<22} {}: {} ({} loop iterations in {took}, fastest of {})",
                    name,
                    if t.native { "native" } else { "emulated" },
                    mips(t.instructions_per_s),
                    t.iterations,
                    probe::REPEATS
                );
            }
            let _ = writeln!(s, "  {:<22} {:.0} ms, TSC {} kHz", "probe took", p.elapsed_s * 1e3, p.tsc_khz);
        }
        (None, Some(e)) => {
            let _ = writeln!(s, "  {:<22} failed: {e}", "probe");
        }
        (None, None) => {
            let _ = writeln!(s, "  {:<22} not run (no usable KVM)", "probe");
        }
    }
    let _ = writeln!(s, "Verdict");
    let _ = writeln!(s, "  Synthetic guest: {} ({})", yes(r.synthetic_guest.ok), r.synthetic_guest.why);
    let _ = writeln!(s, "  Linux guests: {} ({})", yes(r.linux_guests.ok), r.linux_guests.why);
    let _ = writeln!(s, "  QEMU engine: {} ({})", yes(r.qemu.ok), r.qemu.why);
    let _ = writeln!(s, "  Disk images (--disk): {} ({})", yes(r.disk_images.ok), r.disk_images.why);
    let _ = writeln!(
        s,
        "  --engine auto picks: {} for the synthetic guest, {} for Linux guests",
        r.auto_engine.synthetic, r.auto_engine.linux
    );
    let _ = writeln!(s, "Extras");
    for (name, v) in [("kit", &r.kit), ("plot font", &r.plot_font), ("SimGrid", &r.simgrid)] {
        let _ = writeln!(s, "  {:<22} {}", name, v.why);
    }
    let _ = writeln!(s, "(doctor took {:.0} ms)", r.elapsed_s * 1e3);
    s
}
