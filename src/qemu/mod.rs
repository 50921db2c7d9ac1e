//! The QEMU engine: a Linux guest under `qemu-system-x86_64 -accel tcg`, for hosts where
//! dirtytrace's own VMM cannot run guest kernel code (no VT-x or AMD-V).
//!
//! - Guest RAM is one `memory-backend-memfd`, split like the own VMM's slots (up to 3 GiB
//!   at 0, the rest from 4 GiB: `max-ram-below-4g=3G`), so bitmaps are in guest-physical
//!   page numbers with one slot per RAM range, as under KVM.
//! - dirtytrace's plugin ([`plugin`]) write-protects that RAM with userfaultfd (async) at
//!   the first vCPU's creation, before the guest's first instruction, and reports where it is.
//! - A harvest is `PAGEMAP_SCAN` on `/proc/QEMU/pagemap` ([`pagemap`]), which returns the
//!   written pages and write-protects them again in one call, on the sampler's own deadlines.
//! - The serial console is QEMU's stdout, parsed by the Linux guest's marker parser; QMP on an
//!   unnamed socket pair ([`qmp`]) continues, pauses (`--exact-cut`) and ends the guest. A guest
//!   power-off or reboot pauses QEMU (`-action shutdown=pause`), so the last interval is
//!   harvested before QEMU quits.
//! - QEMU dies with the thread that started it (`PR_SET_PDEATHSIG`), and with the recorder.
//! - A guest with a [`StartGate`] (the synthetic guest) boots through the firmware first and
//!   waits for dirtytrace: the pages written until then are harvested and discarded, so that
//!   the first bitmap begins at its workload's first instruction.

pub mod clock;
pub mod pagemap;
pub mod plugin;
pub mod qmp;

use crate::events::GuestLog;
use crate::guest::linux::console::ConsoleParser;
use crate::trace::PageRange;
use crate::units::{GIB, PAGE_SIZE};
use crate::vmm::{GuestFault, Slot, VcpuOutcome};
use std::collections::VecDeque;
use std::io::{BufRead, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The QEMU binary, found on PATH (or named by `DIRTYTRACE_QEMU`).
pub const QEMU_BINARY: &str = "qemu-system-x86_64";
/// The memory backend's id on QEMU's command line.
const RAM_BACKEND_ID: &str = "dirtytrace-ram";
/// The id of the monitor's character device, on the socket pair QEMU inherits.
const QMP_CHARDEV_ID: &str = "dirtytrace-qmp";
/// Guest RAM below 4 GiB at most, as the own VMM lays it out.
pub const LOW_RAM_END: u64 = 3 * GIB;
/// Where RAM above the low part starts.
pub const HIGH_RAM_START: u64 = 4 * GIB;
/// How long QEMU may take from start to the plugin's report.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Lines of QEMU's stderr kept for error messages.
const STDERR_LINES: usize = 20;

/// Why the QEMU engine cannot run, or stopped working.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// QEMU is not installed.
    #[error(
        "{binary} was not found: install QEMU (`apt-get install qemu-system-x86` on Debian or Ubuntu, \
         `dnf install qemu-system-x86` on Fedora), name it with DIRTYTRACE_QEMU=PATH, or record with --engine kvm"
    )]
    Missing {
        /// What was looked for.
        binary: String,
    },
    /// `qemu-system-x86_64 --version` failed or said something unexpected.
    #[error("{binary} --version: {msg}")]
    Version {
        /// The binary.
        binary: String,
        /// What went wrong.
        msg: String,
    },
    /// The host kernel lacks what the engine tracks writes with.
    #[error(
        "this host kernel ({kernel}) cannot track QEMU's writes: PAGEMAP_SCAN failed ({source}). The QEMU engine needs \
         Linux 6.7 or later with userfaultfd write-protection (CONFIG_USERFAULTFD, CONFIG_PTE_MARKER_UFFD_WP)"
    )]
    NoPagemapScan {
        /// `uname -sr`.
        kernel: String,
        /// What the probe got.
        source: std::io::Error,
    },
    /// The guest needs something the engine does not do.
    #[error("{0}")]
    Unsupported(String),
    /// A file QEMU needs could not be prepared, or QEMU could not be started.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// QEMU or the plugin failed before the guest ran.
    #[error("QEMU did not start the guest: {msg}{}", stderr_tail(stderr))]
    Startup {
        /// What went wrong.
        msg: String,
        /// QEMU's last stderr lines.
        stderr: Vec<String>,
    },
    /// Another process holds the disk image (QEMU's image locking).
    #[error(
        "--disk {}: another process uses the image (QEMU could not take its lock): stop the VM that runs it, \
         or record a copy of the image{}",
        image.display(),
        stderr_tail(stderr)
    )]
    DiskInUse {
        /// The image.
        image: PathBuf,
        /// QEMU's last stderr lines.
        stderr: Vec<String>,
    },
    /// QMP refused or did not answer.
    #[error("QEMU's monitor (QMP): {0}")]
    Qmp(String),
    /// A harvest failed.
    #[error("harvesting QEMU's written pages (PAGEMAP_SCAN on /proc/{pid}/pagemap): {source}")]
    Scan {
        /// QEMU's pid.
        pid: u32,
        /// What the kernel said.
        source: std::io::Error,
    },
}

fn stderr_tail(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!("\nQEMU's last messages:\n  {}", lines.join("\n  "))
    }
}

/// The QEMU binary to run.
pub fn binary() -> PathBuf {
    std::env::var_os("DIRTYTRACE_QEMU").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(QEMU_BINARY))
}

/// QEMU's version, from `--version`: `(major, minor, text)`.
pub fn version(binary: &Path) -> Result<(u32, u32, String), QemuError> {
    let name = binary.display().to_string();
    let out = match Command::new(binary).arg("--version").stdin(Stdio::null()).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(QemuError::Missing { binary: name }),
        Err(e) => return Err(QemuError::Version { binary: name, msg: e.to_string() }),
    };
    let text = String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").trim().to_string();
    let number = text.split_whitespace().skip_while(|w| *w != "version").nth(1).unwrap_or("");
    let mut parts = number.split('.').map(|p| p.parse::<u32>());
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) if out.status.success() => Ok((major, minor, number.to_string())),
        _ => Err(QemuError::Version { binary: name, msg: format!("unexpected answer `{text}`") }),
    }
}

/// Checks that this host kernel has `PAGEMAP_SCAN`, on this process's own pagemap (the
/// feature, not the version number).
pub fn probe_pagemap_scan() -> Result<(), QemuError> {
    let probe = pagemap::Pagemap::open(std::process::id()).and_then(|p| {
        let here = &probe_pagemap_scan as *const _ as u64 & !(PAGE_SIZE - 1);
        p.present(here, PAGE_SIZE, |_, _| {})
    });
    probe.map_err(|source| QemuError::NoPagemapScan { kernel: crate::record::host_kernel(), source })
}

/// What QEMU's `-kernel` loads.
#[derive(Debug, Clone)]
pub enum QemuKernel {
    /// A bzImage or an ELF vmlinux with a PVH note, on disk.
    File(PathBuf),
    /// An ELF image with a PVH note, made in memory and handed to QEMU as a memfd.
    Image(Vec<u8>),
}

/// A guest that boots through the firmware, then says `ready` on the console (its
/// [`GuestMarkers`](crate::guest::linux::console::GuestMarkers)) and spins until dirtytrace
/// writes `go_value` at `go_addr`. QEMU pauses it once ready; the pages written until then are
/// harvested and discarded, and guest RAM is checked against `expect`; the write of the go word
/// (a page of the guest's own) is the first thing the first bitmap holds.
#[derive(Debug, Clone)]
pub struct StartGate {
    /// Guest-physical address of the u64 the guest spins on.
    pub go_addr: u64,
    /// What starts it.
    pub go_value: u64,
    /// `(guest-physical address, bytes)` guest RAM must hold once the guest is ready.
    pub expect: Vec<(u64, Vec<u8>)>,
}

/// What a guest gives the QEMU engine to boot.
#[derive(Debug, Clone)]
pub struct QemuBoot {
    /// What `-kernel` loads; `None` boots nothing (the engine's probe).
    pub kernel: Option<QemuKernel>,
    /// The initramfs, as bytes; empty: none.
    pub initramfs: Vec<u8>,
    /// The kernel command line; empty: none.
    pub cmdline: String,
    /// Guest RAM in bytes.
    pub mem: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Also copy the console to stderr.
    pub echo_console: bool,
    /// Start the guest's workload only when dirtytrace says so.
    pub gate: Option<StartGate>,
    /// The guest's own console markers.
    pub markers: Option<Arc<dyn crate::guest::linux::console::GuestMarkers>>,
    /// A disk image, attached as a virtio-blk disk behind a copy-on-write overlay.
    pub disk: Option<QemuDisk>,
}

/// A disk image and the overlay that takes the guest's writes.
#[derive(Debug, Clone)]
pub struct QemuDisk {
    /// The image, opened read-only.
    pub image: crate::disk::CheckedImage,
    /// An unlinked file holding an empty qcow2 overlay of the image.
    pub overlay: Arc<std::fs::File>,
}

/// Whether the QEMU engine works here, tried for real: QEMU starts stopped with 16 MiB of RAM
/// and the plugin, which must write-protect it with QEMU's own credentials. Returns QEMU's
/// version and the userfaultfd's mode.
pub fn probe() -> Result<(String, String), QemuError> {
    let boot = QemuBoot {
        kernel: None,
        initramfs: Vec::new(),
        cmdline: String::new(),
        mem: 16 * crate::units::MIB,
        vcpus: 1,
        echo_console: false,
        gate: None,
        markers: None,
        disk: None,
    };
    let vm = QemuVm::start(&boot, Arc::new(GuestLog::new("probe")))?;
    Ok((vm.version.clone(), vm.uffd_mode.clone()))
}

/// The guest-physical RAM slots of a `mem`-byte guest, with each one's offset in QEMU's RAM.
pub fn slots(mem: u64) -> Vec<(Slot, u64)> {
    let low = mem.min(LOW_RAM_END);
    let mut s = vec![(Slot { slot: 0, guest_phys_addr: 0, size_bytes: low }, 0)];
    if mem > LOW_RAM_END {
        s.push((Slot { slot: 1, guest_phys_addr: HIGH_RAM_START, size_bytes: mem - LOW_RAM_END }, LOW_RAM_END));
    }
    s
}

/// A QEMU process that dies with us: killed (and reaped) when dropped.
struct Process {
    child: Mutex<Child>,
    pid: u32,
}

impl Process {
    fn exited(&self) -> Option<std::process::ExitStatus> {
        self.child.lock().unwrap_or_else(|e| e.into_inner()).try_wait().ok().flatten()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if child.try_wait().ok().flatten().is_none() {
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

/// What the console reader has seen.
#[derive(Default)]
struct Console {
    parser: ConsoleParser,
    closed: bool,
}

/// A QEMU started stopped (`-S`) with guest RAM write-protected: the guest has not run an
/// instruction yet.
pub struct QemuVm {
    process: Process,
    qmp: qmp::Qmp,
    pagemap: pagemap::Pagemap,
    mem_file: std::fs::File,
    ram_host_start: u64,
    /// The RAM slots, as the trace describes them.
    pub slots: Vec<Slot>,
    slot_offsets: Vec<u64>,
    vcpu_threads: Vec<u32>,
    vcpus: u32,
    console: Arc<Mutex<Console>>,
    stderr: Arc<Mutex<VecDeque<String>>>,
    /// QEMU's version, as `--version` says it.
    pub version: String,
    /// Which faults the userfaultfd sees: `user` (`UFFD_USER_MODE_ONLY`) or `all`.
    pub uffd_mode: String,
    gate: Option<StartGate>,
    /// Guest-time cuts (`--clock guest`): the pipes to the plugin, and where in QEMU's memory
    /// the plugin keeps the latest guest time and instruction count.
    cuts: Option<(clock::CutPipes, u64)>,
    /// QEMU's stdout (the console), read only under the console's lock.
    console_pipe: Option<Arc<std::fs::File>>,
    /// QEMU's arguments, as it was started (fds named as `/proc/self/fd/N`).
    pub args: Vec<String>,
}

impl QemuVm {
    /// Starts QEMU stopped, with the plugin, and waits for it to report guest RAM.
    pub fn start(boot: &QemuBoot, log: Arc<GuestLog>) -> Result<QemuVm, QemuError> {
        QemuVm::start_clocked(boot, None, log)
    }

    /// [`QemuVm::start`], with guest-time cuts if `guest_clock` says so.
    pub fn start_clocked(
        boot: &QemuBoot,
        guest_clock: Option<&clock::GuestClock>,
        log: Arc<GuestLog>,
    ) -> Result<QemuVm, QemuError> {
        let binary = binary();
        let (major, minor, version) = version(&binary)?;
        if guest_clock.is_some() {
            clock::check_version(major, minor, &version)?;
        }
        probe_pagemap_scan()?;
        if !boot.mem.is_multiple_of(PAGE_SIZE) || boot.mem == 0 {
            return Err(QemuError::Unsupported("--mem must be a whole number of 4 KiB pages".into()));
        }
        let io = |what: &str| {
            let what = what.to_string();
            move |source| QemuError::Io { what, source }
        };
        let (qmp_ours, qmp_qemus) = UnixStream::pair().map_err(io("cannot make the socket pair of QEMU's monitor"))?;
        let plugin = plugin::memfd().map_err(io("cannot prepare the QEMU plugin"))?;
        let initrd =
            memfd(c"dirtytrace-initramfs", &boot.initramfs).map_err(io("cannot prepare the initramfs for QEMU"))?;
        let image = match &boot.kernel {
            Some(QemuKernel::Image(bytes)) => {
                Some(memfd(c"dirtytrace-kernel", bytes).map_err(io("cannot prepare the boot image for QEMU"))?)
            }
            _ => None,
        };
        let (report_read, report_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| QemuError::Io { what: "pipe".into(), source: e.into() })?;
        let mut inherit = vec![plugin.as_raw_fd(), initrd.as_raw_fd(), report_write.as_raw_fd(), qmp_qemus.as_raw_fd()];
        inherit.extend(image.as_ref().map(|i| i.as_raw_fd()));
        inherit.extend(boot.disk.as_ref().map(|d| d.overlay.as_raw_fd()));
        let mut cuts = match guest_clock {
            Some(_) => Some(clock::CutPipes::new().map_err(io("cannot make the pipes of the guest clock"))?),
            None => None,
        };
        inherit.extend(cuts.as_ref().map_or(Vec::new(), |c| c.child_fds()));

        let mut cmd = Command::new(&binary);
        cmd.args(["-name", "dirtytrace,debug-threads=on", "-accel", "tcg", "-nodefaults", "-no-user-config"])
            .args(["-display", "none", "-S"])
            .arg("-machine")
            .arg(format!("pc,memory-backend={RAM_BACKEND_ID},max-ram-below-4g={LOW_RAM_END}"))
            .arg("-object")
            .arg(format!("memory-backend-memfd,id={RAM_BACKEND_ID},size={}", boot.mem))
            .arg("-m")
            .arg(format!("{}B", boot.mem))
            .arg("-smp")
            .arg(boot.vcpus.to_string())
            .args(["-action", "reboot=shutdown,shutdown=pause", "-serial", "stdio"])
            .arg("-chardev")
            .arg(format!("socket,id={QMP_CHARDEV_ID},fd={}", qmp_qemus.as_raw_fd()))
            .arg("-mon")
            .arg(format!("chardev={QMP_CHARDEV_ID},mode=control"));
        if let Some(kernel) = &boot.kernel {
            cmd.arg("-kernel");
            match (kernel, &image) {
                (QemuKernel::File(path), _) => cmd.arg(path),
                (QemuKernel::Image(_), Some(fd)) => cmd.arg(format!("/proc/self/fd/{}", fd.as_raw_fd())),
                (QemuKernel::Image(_), None) => unreachable!("an image has its memfd"),
            };
            if !boot.initramfs.is_empty() {
                cmd.arg("-initrd").arg(format!("/proc/self/fd/{}", initrd.as_raw_fd()));
            }
            if !boot.cmdline.is_empty() {
                cmd.arg("-append").arg(&boot.cmdline);
            }
        }
        if let Some(disk) = &boot.disk {
            for node in crate::disk::blockdev_args(&disk.image, disk.overlay.as_raw_fd()) {
                cmd.arg("-blockdev").arg(node);
            }
            cmd.arg("-device").arg(format!("virtio-blk-pci,drive={}", crate::disk::OVERLAY_NODE));
        }
        if let Some(c) = guest_clock {
            cmd.args(c.qemu_args());
        }
        cmd.arg("-plugin")
            .arg(format!(
                "/proc/self/fd/{},fd={},size={},id={RAM_BACKEND_ID}{}",
                plugin.as_raw_fd(),
                report_write.as_raw_fd(),
                boot.mem,
                match (guest_clock, &cuts) {
                    (Some(c), Some(p)) => p.plugin_args(c.interval_ns),
                    _ => String::new(),
                }
            ))
            .env("DIRTYTRACE_QEMU_PLUGIN_API", plugin::api_version(major, minor).to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the closure runs in the child between fork and exec and calls only
        // async-signal-safe functions (fcntl, prctl, getppid, kill) on fds this process owns.
        unsafe {
            cmd.pre_exec(move || {
                for &fd in &inherit {
                    nix::fcntl::fcntl(
                        std::os::fd::BorrowedFd::borrow_raw(fd),
                        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
                    )?;
                }
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
                Ok(())
            })
        };
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(QemuError::Missing { binary: binary.display().to_string() })
            }
            Err(source) => return Err(QemuError::Io { what: format!("cannot start {}", binary.display()), source }),
        };
        drop(report_write);
        // Only QEMU may hold its end, so that its death closes the connection.
        drop(qmp_qemus);
        if let Some(c) = cuts.as_mut() {
            c.started();
        }
        let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let pid = child.id();
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(pipe) = child.stderr.take() {
            let keep = stderr.clone();
            let _ = std::thread::Builder::new().name("qemu-stderr".into()).spawn(move || {
                for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut k = keep.lock().unwrap_or_else(|e| e.into_inner());
                    if k.len() == STDERR_LINES {
                        k.pop_front();
                    }
                    k.push_back(line);
                }
            });
        }
        let console = Arc::new(Mutex::new(Console::default()));
        console.lock().unwrap_or_else(|e| e.into_inner()).parser.markers = boot.markers.clone();
        let console_pipe = child.stdout.take().map(|pipe| Arc::new(std::fs::File::from(OwnedFd::from(pipe))));
        if let Some(pipe) = console_pipe.clone() {
            let (console, echo) = (console.clone(), boot.echo_console);
            let _ = std::thread::Builder::new()
                .name("qemu-console".into())
                .spawn(move || read_console(&pipe, &log, &console, echo));
        }
        let process = Process { child: Mutex::new(child), pid };
        let tail = |s: &Arc<Mutex<VecDeque<String>>>| {
            // Give the stderr reader a moment to catch QEMU's last words.
            std::thread::sleep(Duration::from_millis(100));
            s.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect::<Vec<_>>()
        };
        let report = read_report(report_read, STARTUP_TIMEOUT);
        let (ram_host_start, uffd_mode, clock_addr) = match parse_report(&report, boot.mem) {
            Ok(r) => r,
            Err(msg) => {
                drop(process);
                return Err(startup_failure(msg, tail(&stderr), boot));
            }
        };
        let qmp = match qmp::Qmp::over(qmp_ours) {
            Ok(q) => q,
            Err(msg) => {
                drop(process);
                return Err(startup_failure(msg, tail(&stderr), boot));
            }
        };
        let pagemap = pagemap::Pagemap::open(pid).map_err(|source| QemuError::Scan { pid, source })?;
        // Written only to start a gated guest.
        let mem_file = std::fs::OpenOptions::new()
            .read(true)
            .write(boot.gate.is_some())
            .open(format!("/proc/{pid}/mem"))
            .map_err(|source| QemuError::Io { what: format!("cannot open /proc/{pid}/mem"), source })?;
        let vcpu_threads = vcpu_threads(pid);
        let (slots, slot_offsets) = slots(boot.mem).into_iter().unzip();
        let vm = QemuVm {
            process,
            qmp,
            pagemap,
            mem_file,
            ram_host_start,
            slots,
            slot_offsets,
            vcpu_threads,
            vcpus: boot.vcpus,
            console,
            stderr,
            version,
            uffd_mode,
            gate: boot.gate.clone(),
            cuts: match (cuts, clock_addr) {
                (Some(c), Some(addr)) => Some((c, addr)),
                (None, _) => None,
                (Some(_), None) => {
                    return Err(QemuError::Startup {
                        msg: "dirtytrace's plugin did not say where it keeps the guest time".into(),
                        stderr: Vec::new(),
                    })
                }
            },
            console_pipe,
            args,
        };
        if let Some(gate) = &boot.gate {
            vm.run_to_gate(gate)?;
        }
        Ok(vm)
    }

    fn startup_error(&self, msg: String) -> QemuError {
        // Give the stderr reader a moment to catch QEMU's last words.
        std::thread::sleep(Duration::from_millis(100));
        QemuError::Startup {
            msg,
            stderr: self.stderr.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect(),
        }
    }

    /// Runs a gated guest's firmware and boot code until it says it is ready, pauses it,
    /// discards the pages written so far, and checks guest RAM against what the guest expects.
    fn run_to_gate(&self, gate: &StartGate) -> Result<(), QemuError> {
        self.qmp.execute("cont").map_err(QemuError::Qmp)?;
        let t0 = std::time::Instant::now();
        loop {
            let (ready, closed, failure) = {
                let c = self.console.lock().unwrap_or_else(|e| e.into_inner());
                (c.parser.ready, c.closed, c.parser.failure.clone())
            };
            if ready {
                break;
            }
            let why = if let Some(f) = failure {
                Some(format!("the guest's boot code failed: {f}"))
            } else if let Some(st) = self.process.exited() {
                Some(format!("QEMU exited ({st}) before the guest's boot code was ready"))
            } else if closed || self.qmp.events.shutdown.load(Ordering::Acquire) {
                Some("the guest reset or shut down before its boot code was ready".to_string())
            } else if t0.elapsed() > STARTUP_TIMEOUT {
                Some(format!("the guest's boot code did not say it was ready within {STARTUP_TIMEOUT:?}"))
            } else {
                None
            };
            if let Some(why) = why {
                return Err(self.startup_error(why));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        self.qmp.execute("stop").map_err(QemuError::Qmp)?;
        // The firmware's, the loader's and the boot code's writes: not the guest's workload.
        self.harvest()?;
        let mut got = Vec::new();
        for (gpa, want) in &gate.expect {
            got.resize(want.len(), 0);
            self.read_guest(*gpa, &mut got)
                .map_err(|source| QemuError::Io { what: format!("reading guest RAM at {gpa:#x}"), source })?;
            if let Some(i) = got.iter().zip(want).position(|(g, w)| g != w) {
                return Err(self.startup_error(format!(
                    "guest RAM at {:#x} does not hold the boot image's data when the guest is ready (something \
                     before it, the firmware perhaps, overwrote it)",
                    gpa + i as u64
                )));
            }
        }
        Ok(())
    }

    /// Where guest-physical `[gpa, gpa + len)` is in QEMU's memory, if it is RAM of one slot.
    fn host_addr(&self, gpa: u64, len: u64) -> Option<u64> {
        self.slots.iter().zip(&self.slot_offsets).find_map(|(s, off)| {
            (gpa >= s.guest_phys_addr && gpa + len <= s.guest_phys_addr + s.size_bytes)
                .then(|| self.ram_host_start + off + (gpa - s.guest_phys_addr))
        })
    }

    fn read_guest(&self, gpa: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let host = self.host_addr(gpa, buf.len() as u64).ok_or_else(|| std::io::Error::other("not guest RAM"))?;
        self.mem_file.read_exact_at(buf, host)
    }

    /// The pages every slot had written since the last harvest, one bitmap per slot in KVM's
    /// layout; they are write-protected again.
    fn harvest(&self) -> Result<Vec<Vec<u64>>, QemuError> {
        let mut out = Vec::with_capacity(self.slots.len());
        for (slot, offset) in self.slots.iter().zip(&self.slot_offsets) {
            let mut words = vec![0u64; slot.num_pages().div_ceil(64) as usize];
            let host = self.ram_host_start + offset;
            let scanned = self.pagemap.take_written(host, slot.size_bytes, |s, e| {
                for page in (s - host) / PAGE_SIZE..(e - host).div_ceil(PAGE_SIZE) {
                    if let Some(w) = words.get_mut((page / 64) as usize) {
                        *w |= 1 << (page % 64);
                    }
                }
            });
            match scanned {
                Ok(()) => out.push(words),
                // QEMU is gone, and with it the pages written since the last harvest: the
                // interval is kept empty and the crash is reported by `stop`.
                Err(_) if self.process.exited().is_some() => out.push(words),
                Err(source) => return Err(QemuError::Scan { pid: self.process.pid, source }),
            }
        }
        Ok(out)
    }

    /// Pages of guest RAM holding anything but zeroes now (before the guest's first
    /// instruction: what QEMU itself put there). Only pages memory backs are read.
    pub fn nonzero_pages(&self) -> Vec<PageRange> {
        let mut out: Vec<PageRange> = Vec::new();
        let mut page = vec![0u8; PAGE_SIZE as usize];
        for (slot, offset) in self.slots.iter().zip(&self.slot_offsets) {
            let host = self.ram_host_start + offset;
            let mut present = Vec::new();
            if self.pagemap.present(host, slot.size_bytes, |s, e| present.push((s, e))).is_err() {
                continue;
            }
            for (s, e) in present {
                for addr in (s..e).step_by(PAGE_SIZE as usize) {
                    if self.mem_file.read_exact_at(&mut page, addr).is_ok() && page.iter().any(|&b| b != 0) {
                        let p = slot.first_page() + (addr - host) / PAGE_SIZE;
                        match out.last_mut() {
                            Some(r) if r.first + r.count == p => r.count += 1,
                            _ => out.push(PageRange { first: p, count: 1 }),
                        }
                    }
                }
            }
        }
        out
    }

    /// Lets the guest run: a gated guest gets its go word first.
    pub fn start_guest(self) -> Result<RunningQemu, QemuError> {
        if let Some(gate) = &self.gate {
            let host = self.host_addr(gate.go_addr, 8).ok_or_else(|| {
                QemuError::Unsupported(format!("the guest's go word at {:#x} is not in guest RAM", gate.go_addr))
            })?;
            self.mem_file.write_all_at(&gate.go_value.to_le_bytes(), host).map_err(|source| QemuError::Io {
                what: format!("starting the guest: writing its go word through /proc/{}/mem", self.process.pid),
                source,
            })?;
        }
        self.qmp.execute("cont").map_err(QemuError::Qmp)?;
        let last_cpu = Mutex::new(vec![0; self.vcpus as usize]);
        Ok(RunningQemu { vm: self, stopped_by_us: false, last_cpu })
    }
}

/// Why QEMU did not start: its disk image locked by another process, or what it said.
fn startup_failure(msg: String, stderr: Vec<String>, boot: &QemuBoot) -> QemuError {
    match &boot.disk {
        Some(disk) if stderr.iter().any(|l| l.contains("lock") && l.contains("Failed to get")) => {
            QemuError::DiskInUse { image: disk.image.path.clone(), stderr }
        }
        _ => QemuError::Startup { msg, stderr },
    }
}

fn memfd(name: &std::ffi::CStr, bytes: &[u8]) -> std::io::Result<OwnedFd> {
    use std::io::Write;
    let fd =
        nix::sys::memfd::memfd_create(name, nix::sys::memfd::MFdFlags::MFD_CLOEXEC).map_err(std::io::Error::from)?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    Ok(OwnedFd::from(file))
}

/// The plugin's one line, or what stood in for it.
fn read_report(pipe: OwnedFd, timeout: Duration) -> Result<String, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::fs::File::from(pipe).take(4096).read_to_string(&mut text);
        let _ = tx.send(text);
    });
    match rx.recv_timeout(timeout) {
        Ok(t) if t.trim().is_empty() => Err("QEMU exited before dirtytrace's plugin reported guest RAM".into()),
        Ok(t) => Ok(t.trim().to_string()),
        Err(_) => Err(format!("dirtytrace's plugin did not report guest RAM within {timeout:?}")),
    }
}

/// `ok START LEN MODE [CLOCK]` from the plugin: guest RAM's host address, the userfaultfd's mode,
/// and where the plugin keeps the guest time (guest-time cuts only).
fn parse_report(report: &Result<String, String>, mem: u64) -> Result<(u64, String, Option<u64>), String> {
    let line = report.as_ref().map_err(String::clone)?;
    if let Some(why) = line.strip_prefix("error ") {
        return Err(format!("dirtytrace's plugin cannot track guest RAM: {why}"));
    }
    let f: Vec<&str> = line.split_whitespace().collect();
    let hex = |h: &str| u64::from_str_radix(h, 16).map_err(|_| format!("the plugin said `{line}`"));
    match f.as_slice() {
        ["ok", start, len, mode, rest @ ..] if rest.len() <= 1 => {
            if len.parse::<u64>().ok() != Some(mem) {
                return Err(format!("the plugin tracks {len} bytes, not the guest's {mem}"));
            }
            let clock = rest.first().map(|c| hex(c)).transpose()?;
            Ok((hex(start)?, mode.to_string(), clock))
        }
        _ => Err(format!("the plugin said `{line}`")),
    }
}

/// The thread ids of QEMU's vCPU threads (`CPU N/TCG`, named by `-name debug-threads=on`),
/// in vCPU order.
fn vcpu_threads(pid: u32) -> Vec<u32> {
    let mut found: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for e in dir.flatten() {
            let Some(tid) = e.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else { continue };
            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            if let Some(n) = comm.trim().strip_prefix("CPU ").and_then(|r| r.split('/').next()) {
                if let Ok(n) = n.parse::<u32>() {
                    found.push((n, tid));
                }
            }
        }
    }
    found.sort();
    found.into_iter().map(|(_, tid)| tid).collect()
}

/// A thread's time on a CPU in nanoseconds (`/proc/PID/task/TID/schedstat`).
fn thread_cpu_ns(pid: u32, tid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Reads the console as it comes. Each read happens under the console's lock, after a poll
/// says there is something: whoever holds the lock and finds the pipe empty knows that all the
/// guest wrote so far has been parsed ([`RunningQemu::drain_console`]).
fn read_console(pipe: &std::fs::File, log: &GuestLog, console: &Mutex<Console>, echo: bool) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::io::Write;
    use std::os::fd::AsFd;
    let mut buf = [0u8; 4096];
    loop {
        let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => break,
        }
        let mut c = console.lock().unwrap_or_else(|e| e.into_inner());
        match (&mut &*pipe).read(&mut buf) {
            Ok(0) => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
            Ok(n) => {
                log.append_console(&buf[..n]);
                if echo {
                    let _ = std::io::stderr().write_all(&buf[..n]);
                }
                c.parser.feed(&buf[..n], log);
            }
        }
    }
    console.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
}

/// A QEMU whose guest runs.
pub struct RunningQemu {
    vm: QemuVm,
    stopped_by_us: bool,
    last_cpu: Mutex<Vec<u64>>,
}

impl RunningQemu {
    fn fault(&self, reason: String) -> VcpuOutcome {
        VcpuOutcome::Fault(GuestFault {
            vcpu: 0,
            reason,
            registers: "not available under the QEMU engine".into(),
            instruction_bytes: "not available under the QEMU engine".into(),
        })
    }

    fn stderr_lines(&self) -> Vec<String> {
        self.vm.stderr.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }

    /// Waits until the console reader has parsed everything QEMU wrote to the console so far:
    /// at a guest-time cut, every line the guest wrote before the cut is then in the log.
    fn drain_console(&self) {
        let Some(pipe) = &self.vm.console_pipe else { return };
        for _ in 0..10_000 {
            let c = self.vm.console.lock().unwrap_or_else(|e| e.into_inner());
            let mut pending: libc::c_int = 0;
            // SAFETY: FIONREAD writes one int, the bytes waiting in the pipe, into `pending`.
            let r = unsafe { libc::ioctl(pipe.as_raw_fd(), libc::FIONREAD, &mut pending) };
            if c.closed || r != 0 || pending == 0 {
                return;
            }
            drop(c);
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}

impl crate::engine::RunningGuest for RunningQemu {
    fn harvest_all(&self) -> Result<Vec<Vec<u64>>, crate::engine::EngineError> {
        Ok(self.vm.harvest()?)
    }

    fn read_u64(&self, gpa: u64) -> u64 {
        let mut b = [0u8; 8];
        match self.vm.read_guest(gpa, &mut b) {
            Ok(()) => u64::from_le_bytes(b),
            Err(_) => 0,
        }
    }

    fn vcpu_cpu_ns(&self) -> Vec<u64> {
        let mut last = self.last_cpu.lock().unwrap_or_else(|e| e.into_inner());
        for (i, &tid) in self.vm.vcpu_threads.iter().enumerate() {
            if let (Some(ns), Some(slot)) = (thread_cpu_ns(self.vm.process.pid, tid), last.get_mut(i)) {
                *slot = ns;
            }
        }
        last.clone()
    }

    fn all_finished(&self) -> bool {
        self.vm.qmp.events.shutdown.load(Ordering::Acquire)
    }

    fn stop_requested(&self) -> bool {
        self.vm.process.exited().is_some()
    }

    fn pause(&self) {
        let _ = self.vm.qmp.execute("stop");
    }

    fn resume(&self) {
        let _ = self.vm.qmp.execute("cont");
    }

    fn wait_cut(&self, timeout: Duration) -> Result<Option<crate::engine::GuestCut>, crate::engine::EngineError> {
        let Some((pipes, _)) = &self.vm.cuts else { return Ok(None) };
        let cut = pipes.wait(timeout).map_err(|source| QemuError::Io {
            what: "reading the guest clock's cuts from dirtytrace's plugin".into(),
            source,
        })?;
        if cut.is_some() {
            self.drain_console();
        }
        Ok(cut)
    }

    fn release_cut(&self) {
        if let Some((pipes, _)) = &self.vm.cuts {
            pipes.release();
        }
    }

    fn end_cuts(&self) {
        if let Some((pipes, _)) = &self.vm.cuts {
            pipes.close();
        }
    }

    fn workload_ended(&self) -> bool {
        self.vm.console.lock().unwrap_or_else(|e| e.into_inner()).parser.status.is_some()
    }

    fn guest_clock_now(&self) -> Option<(u64, u64)> {
        let (_, addr) = self.vm.cuts.as_ref()?;
        let mut b = [0u8; 16];
        self.vm.mem_file.read_exact_at(&mut b, *addr).ok()?;
        let word = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        Some((word(0), word(1)))
    }

    fn stop(&mut self) -> Vec<VcpuOutcome> {
        // A vCPU waiting at a cut would never pause: no more cuts.
        if let Some((pipes, _)) = &self.vm.cuts {
            pipes.close();
        }
        self.drain_console();
        let shutdown = self.vm.qmp.events.shutdown.load(Ordering::Acquire);
        let exited = self.vm.process.exited();
        if exited.is_none() && !shutdown {
            // Paused, not quit: its memory stays for the final harvest.
            self.stopped_by_us = self.vm.qmp.execute("stop").is_ok();
        }
        // The console's last lines (the workload's status) are in before QEMU paused.
        for _ in 0..50 {
            let c = self.vm.console.lock().unwrap_or_else(|e| e.into_inner());
            if c.closed || c.parser.status.is_some() || c.parser.done || !shutdown {
                break;
            }
            drop(c);
            std::thread::sleep(Duration::from_millis(10));
        }
        let (status, panic, done, failure) = {
            let c = self.vm.console.lock().unwrap_or_else(|e| e.into_inner());
            (c.parser.status, c.parser.panic.clone(), c.parser.done, c.parser.failure.clone())
        };
        let first = match (exited, shutdown, status, panic) {
            (_, _, _, Some(panic)) => self.fault(format!("the guest kernel panicked: {panic}")),
            (_, _, None, None) if failure.is_some() => {
                self.fault(format!("the guest could not run the workload: {}", failure.unwrap_or_default()))
            }
            (_, true, Some(s), None) => VcpuOutcome::PowerOff(s),
            // The synthetic guest resets the machine once it is done.
            (_, true, None, None) if done => VcpuOutcome::Done,
            (_, true, None, None) => self.fault("the guest rebooted before its workload finished".into()),
            (Some(st), false, _, None) => {
                self.fault(format!("QEMU exited ({st}) while the guest ran{}", stderr_tail(&self.stderr_lines())))
            }
            // On the guest clock the guest idles after its workload, and the recorder stops it.
            (None, false, Some(s), None) => VcpuOutcome::Ended(s),
            (None, false, _, None) => VcpuOutcome::Stopped,
        };
        let mut outcomes = vec![first];
        outcomes.extend((1..self.vm.vcpus).map(|_| VcpuOutcome::Stopped));
        outcomes
    }
}

impl Drop for RunningQemu {
    fn drop(&mut self) {
        // A vCPU waiting at a cut would keep QEMU from quitting.
        if let Some((pipes, _)) = &self.vm.cuts {
            pipes.close();
        }
        // A clean quit first, so QEMU can tidy up; the process guard kills it otherwise.
        if self.vm.process.exited().is_none() && self.vm.qmp.execute("quit").is_ok() {
            for _ in 0..100 {
                if self.vm.process.exited().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_split_at_3_gib_like_the_own_vmm() {
        let s = slots(512 << 20);
        assert_eq!(s, vec![(Slot { slot: 0, guest_phys_addr: 0, size_bytes: 512 << 20 }, 0)]);
        let s = slots(5 * GIB);
        assert_eq!(s[1], (Slot { slot: 1, guest_phys_addr: 4 * GIB, size_bytes: 2 * GIB }, 3 * GIB));
        let own = crate::guest::linux::boot::ram_ranges(5 * GIB);
        assert_eq!(s.iter().map(|(s, _)| (s.guest_phys_addr, s.size_bytes)).collect::<Vec<_>>(), own);
    }

    #[test]
    fn the_plugin_report_is_checked() {
        assert_eq!(parse_report(&Ok("ok 7f00 4096 user".into()), 4096), Ok((0x7f00, "user".into(), None)));
        assert_eq!(parse_report(&Ok("ok 7f00 4096 user 55aa".into()), 4096), Ok((0x7f00, "user".into(), Some(0x55aa))));
        assert!(parse_report(&Ok("ok 7f00 8192 user".into()), 4096).unwrap_err().contains("8192"));
        let e = parse_report(&Ok("error userfaultfd: EPERM".into()), 4096).unwrap_err();
        assert!(e.contains("cannot track guest RAM: userfaultfd: EPERM"), "{e}");
        assert!(parse_report(&Err("gone".into()), 4096).unwrap_err().contains("gone"));
    }
}
