//! The Linux guest: a real kernel and an initramfs built around the user's workload script.
//! It shares the recording path with the synthetic guest; only memory contents, vCPU entry
//! state and the devices on its bus differ.

pub mod acpi;
pub mod boot;
pub mod console;
pub mod disk_check;
pub mod initramfs;
pub mod kit;
pub mod packages;
pub mod rootfs;

use crate::events::GuestLog;
use crate::guest::Guest;
use crate::vmm::{kvm_err, Bus, ExitAction, Vm, VmSpec};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::PoisonError;
use std::sync::{Arc, Mutex};
use vm_superio::Serial;
use vmm_sys_util::eventfd::EventFd;

/// The 16550 UART's first I/O port (COM1).
pub const SERIAL_PORT: u16 = 0x3F8;
/// The UART's interrupt line.
pub const SERIAL_IRQ: u32 = 4;
/// The i8042 controller's command port.
pub const I8042_COMMAND: u16 = 0x64;
/// The i8042 command that resets the machine (`reboot=k`).
pub const I8042_RESET: u8 = 0xFE;

/// The kernel a Linux guest boots, and how: flags of `record` and keys of a grid's `[record]`
/// (schemas/linux-guest.md).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct BootInputs {
    /// The kernel, a bzImage or an ELF vmlinux (default: $DIRTYTRACE_KERNEL, then the kit).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Extra kernel command-line arguments.
    #[arg(long, value_name = "EXTRA")]
    pub cmdline: Option<String>,
    /// Boot the kit's bzImage even when its vmlinux (PVH entry) is available.
    #[arg(long)]
    pub bzimage: bool,
    /// Boot the kit's kernel even where `doctor` finds guest kernel code emulated.
    #[arg(long)]
    pub allow_emulated_kernel: bool,
}

/// What a Linux guest is built from besides its script: `record` takes both parts as flags, a
/// grid's `[record]` as keys, and `initramfs` the initramfs part.
#[derive(Debug, Clone, Default, PartialEq, Serialize, clap::Args)]
pub struct LinuxInputs {
    /// The kernel and how it boots.
    #[command(flatten)]
    #[serde(flatten)]
    pub boot: BootInputs,
    /// What the initramfs holds.
    #[command(flatten)]
    #[serde(flatten)]
    pub initramfs: initramfs::Contents,
    /// A disk image to run the workload in.
    #[command(flatten)]
    #[serde(flatten)]
    pub disk: crate::disk::DiskInputs,
}

impl LinuxInputs {
    /// The same inputs with relative host paths taken from `dir` (a grid's directory).
    pub fn relative_to(&self, dir: &Path) -> LinuxInputs {
        let boot = BootInputs { kernel: self.boot.kernel.as_ref().map(|k| dir.join(k)), ..self.boot.clone() };
        let disk = crate::disk::DiskInputs { disk: self.disk.disk.as_ref().map(|d| dir.join(d)), ..self.disk.clone() };
        LinuxInputs { boot, initramfs: self.initramfs.relative_to(dir), disk }
    }
}

/// How to build a Linux guest.
pub struct LinuxOptions {
    /// The workload script.
    pub script: PathBuf,
    /// The kernel, its command line and what the initramfs holds.
    pub inputs: LinuxInputs,
    /// Guest RAM.
    pub mem: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Also stream the console to stderr.
    pub console: bool,
    /// The KVM device, for the kernel-mode probe.
    pub kvm_device: PathBuf,
    /// Whether the guest will run under KVM, so that the host's KVM must run kernel code
    /// natively (false under the QEMU engine, which emulates the guest itself).
    pub under_kvm: bool,
    /// Whether intervals are cut in guest time (`--clock guest`): the guest then idles after its
    /// workload rather than rebooting ([`boot::IDLE_AT_END_ARG`]).
    pub guest_clock: bool,
    /// Where the `--disk` overlay's (unlinked) file is made: the trace's parent directory.
    pub scratch_dir: PathBuf,
}

/// Guest RAM of `disk check`'s probe boot.
pub const PROBE_MEM: u64 = 256 << 20;

/// The flag that names a disk image.
pub const DISK_FLAG: &str = "--disk";

/// A `--disk` image checked on the host, and what was found on it.
#[derive(Debug)]
pub struct CheckedDisk {
    /// The image, and how QEMU opens it.
    pub image: crate::disk::CheckedImage,
    /// Its partitions and filesystems.
    pub layout: crate::disk::layout::Layout,
}

/// Checks a `--disk` image before boot: a readable raw or qcow2 file whose backing files
/// exist, with an ext4, xfs or btrfs filesystem somewhere (or the `--disk-root` asked for).
pub fn check_disk(inputs: &crate::disk::DiskInputs) -> anyhow::Result<Option<CheckedDisk>> {
    let Some(path) = &inputs.disk else { return Ok(None) };
    let (reader, image) = crate::disk::open(path, inputs.disk_format)?;
    if let (None, crate::disk::DiskFormat::Raw) = (inputs.disk_format, image.format) {
        // Fine: raw is what a file without qcow2's magic is.
    }
    let layout = crate::disk::layout::read(&reader)?;
    match &inputs.disk_root {
        Some(root) => {
            let n = root.strip_prefix("/dev/vda").filter(|n| {
                n.is_empty() || (n.bytes().all(|b| b.is_ascii_digit()) && n.parse::<u32>().is_ok_and(|n| n > 0))
            });
            if n.is_none() {
                anyhow::bail!("--disk-root {root}: the guest's disk is /dev/vda; name it or one of its partitions, like /dev/vda2");
            }
            if !layout.volumes.iter().any(|v| &v.device == root) {
                anyhow::bail!("--disk-root {root}: {} has no such partition ({})", path.display(), layout.describe());
            }
        }
        None if layout.root_candidates().next().is_none() => {
            return Err(crate::disk::DiskError::NoFilesystem { path: path.clone(), looked: layout.describe() }.into())
        }
        None => {}
    }
    Ok(Some(CheckedDisk { image, layout }))
}

/// The flag that boots the kit's kernel on a host that emulates guest kernel code.
pub const ALLOW_EMULATED_FLAG: &str = "--allow-emulated-kernel";

/// Refuses the kit's kernel (and warns about a kernel of the user's own) when the probe says
/// this host's KVM emulates guest kernel code. A probe that cannot run says nothing: `record`
/// then reports the KVM problem itself.
fn check_host(opts: &LinuxOptions, kit_kernel: bool) -> anyhow::Result<()> {
    let Ok(probe) = crate::guest::probe::cached(&opts.kvm_device) else { return Ok(()) };
    if probe.kernel_native() {
        return Ok(());
    }
    let why = format!(
        "this host's KVM emulates guest kernel code ({:.1} M instructions/s measured; no VT-x/AMD-V), so a Linux \
         kernel runs for minutes and then stops at an instruction the emulator lacks",
        probe.kernel_mode.instructions_per_s / 1e6
    );
    if kit_kernel && !opts.inputs.boot.allow_emulated_kernel {
        anyhow::bail!(
            "{why}: no Linux workload can run under --engine kvm here. Record it with --engine qemu (or auto, the \
             default), see `dirtytrace doctor`, or pass {ALLOW_EMULATED_FLAG} to boot the kit's kernel anyway"
        );
    }
    eprintln!(
        "warning: {why}; going on{}",
        if kit_kernel { " (--allow-emulated-kernel)" } else { " with your kernel" }
    );
    Ok(())
}

/// A Linux guest, kernel read and initramfs built, ready to load.
pub struct LinuxGuest {
    opts: LinuxOptions,
    /// The `--file`s, parsed.
    extras: Vec<initramfs::Extra>,
    kit: kit::Kit,
    kernel: Vec<u8>,
    initramfs: initramfs::Initramfs,
    initramfs_build_s: f64,
    cmdline: String,
    boot: Option<boot::BootInfo>,
    disk: Option<CheckedDisk>,
}

impl LinuxGuest {
    /// Finds the kernel and builds the initramfs: everything that can fail before a VM exists.
    pub fn new(opts: LinuxOptions) -> anyhow::Result<Self> {
        let extras = opts.inputs.initramfs.extras()?;
        if opts.vcpus == 0 || opts.vcpus > 254 {
            anyhow::bail!("--vcpus must be between 1 and 254, got {}", opts.vcpus);
        }
        if !opts.mem.is_multiple_of(crate::units::PAGE_SIZE) {
            anyhow::bail!("--mem must be a whole number of 4 KiB pages");
        }
        // The image first: what is wrong with it is the user's to fix, whatever the kit.
        let disk = check_disk(&opts.inputs.disk)?;
        let kit = kit::locate(
            opts.inputs.boot.kernel.as_deref(),
            opts.inputs.initramfs.busybox.as_deref(),
            opts.inputs.boot.bzimage,
        )?;
        let kernel = read_kernel(&kit.kernel, opts.mem).with_context(|| {
            if opts.inputs.boot.kernel.is_some() {
                "--kernel"
            } else {
                "the guest kernel"
            }
        })?;
        boot::check_kernel(&kernel, &kit.kernel.display().to_string())?;
        // The same checks as `initramfs`, before anything is hashed or packed.
        opts.inputs.initramfs.check(opts.mem)?;
        if opts.under_kvm {
            if opts.inputs.disk.disk.is_some() {
                anyhow::bail!(
                    "{DISK_FLAG} needs the QEMU engine (the own VMM has no block device): record with --engine qemu"
                );
            }
            check_host(&opts, kit.kernel.starts_with(kit::kit_dir()))?;
        }
        let disk_guest = match &disk {
            None => None,
            Some(_) => Some(initramfs::DiskGuest {
                // The kit's modules fit the kit's kernel only; another kernel needs its drivers built in.
                modules: if kit.kernel.starts_with(kit::kit_dir()) { kit::disk_modules(&kit)? } else { Vec::new() },
                root: opts.inputs.disk.disk_root.clone(),
            }),
        };
        let t = crate::clock::now_ns();
        let cache = kit::cache_dir().join("initramfs");
        let inputs = initramfs::Inputs {
            busybox: kit.busybox.clone(),
            script: opts.script.clone(),
            contents: opts.inputs.initramfs.clone(),
            disk: disk_guest,
        };
        let initramfs = initramfs::build_with(&inputs, Some(&cache), &mut |m| eprintln!("initramfs: {m}"))?;
        let initramfs_build_s = (crate::clock::now_ns() - t) as f64 / 1e9;
        for note in &initramfs.notes {
            eprintln!("initramfs: {note}");
        }
        initramfs.check_fits(opts.mem, &initramfs::describe_inputs(&inputs))?;
        if inputs.contents.rootfs.is_some() || !inputs.contents.packages.is_empty() {
            eprintln!("initramfs: {}", initramfs.summary());
        }
        let extra = opts.inputs.boot.cmdline.as_deref();
        let cmdline = if opts.under_kvm { boot::cmdline(extra) } else { boot::qemu_cmdline(extra, opts.guest_clock) };
        Ok(LinuxGuest { opts, extras, kit, kernel, initramfs, initramfs_build_s, cmdline, boot: None, disk })
    }
}

/// Reads a kernel that can fit in `mem` bytes of guest RAM. Its first page is looked at
/// before the rest is read, so a large file that is not a kernel is refused at once.
fn read_kernel(path: &std::path::Path, mem: u64) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let name = path.display().to_string();
    let size = crate::files::check_regular(path, u64::MAX, "kernel")?;
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot read kernel {name}"))?;
    let mut head = Vec::with_capacity(4096);
    (&mut file).take(4096).read_to_end(&mut head).with_context(|| format!("cannot read kernel {name}"))?;
    if !boot::is_elf(&head) && !boot::is_bzimage(&head) {
        boot::check_kernel(&head, &name)?;
    }
    if size > mem {
        anyhow::bail!(
            "kernel {name} is {size} bytes, more than the guest's {mem} bytes of memory: give more with --mem"
        );
    }
    let mut kernel = head;
    file.take(size).read_to_end(&mut kernel).with_context(|| format!("cannot read kernel {name}"))?;
    Ok(kernel)
}

impl LinuxGuest {
    /// The kernel's SHA-256, from kit.json when the kernel is the kit's (hashing 50 MB costs
    /// more than the rest of the VM's setup).
    fn kernel_sha256(&self) -> String {
        let dir = kit::kit_dir();
        let known = self.kit.info.as_ref().and_then(|i| {
            if self.kit.kernel == dir.join("vmlinux") {
                Some(i.vmlinux_sha256.clone())
            } else if self.kit.kernel == dir.join("bzImage") {
                Some(i.bzimage_sha256.clone())
            } else {
                None
            }
        });
        known.unwrap_or_else(|| kit::sha256_hex(&self.kernel))
    }
}

impl Guest for LinuxGuest {
    fn vm_spec(&self) -> VmSpec {
        VmSpec {
            ram: boot::ram_ranges(self.opts.mem),
            vcpus: self.opts.vcpus,
            irqchip: true,
            dirty_tracking: Default::default(),
        }
    }

    fn prepare(&mut self, vm: &mut Vm, log: Arc<GuestLog>) -> anyhow::Result<Arc<dyn Bus>> {
        let name = self.kit.kernel.display().to_string();
        let info = boot::load(
            &vm.memory,
            self.opts.mem,
            self.opts.vcpus,
            &self.kernel,
            &name,
            &self.initramfs.bytes,
            &self.cmdline,
        )?;
        for (i, fd) in vm.vcpus.iter().enumerate() {
            boot::setup_vcpu(&vm.kvm, fd, i as u32, self.opts.vcpus, &info)
                .with_context(|| format!("setting up vCPU {i}"))?;
        }
        let irq = EventFd::new(libc::EFD_NONBLOCK).context("eventfd for the serial interrupt")?;
        vm.fd.register_irqfd(&irq, SERIAL_IRQ).map_err(kvm_err("KVM_IRQFD"))?;
        self.boot = Some(info);
        let sink = ConsoleSink { log: log.clone(), echo: self.opts.console, parser: console::ConsoleParser::new() };
        Ok(Arc::new(LinuxBus { serial: Mutex::new(Serial::new(IrqTrigger(irq), sink)) }))
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "linux",
            "kernel": self.kit.kernel,
            "kernel_sha256": self.kernel_sha256(),
            "busybox": self.kit.busybox,
            "kit": self.kit.info,
            "boot": self.boot,
            "cmdline": self.cmdline,
            "workload_script": std::fs::read_to_string(&self.opts.script).unwrap_or_default(),
            "workload_path": self.opts.script,
            "files": self.extras.iter().map(|f| format!("{}:{}", f.host.display(), f.guest)).collect::<Vec<_>>(),
            "rootfs": self.opts.inputs.initramfs.rootfs,
            "packages": self.initramfs.packages,
            "initramfs_bytes": self.initramfs.bytes.len(),
            "initramfs_unpacked_bytes": self.initramfs.unpacked_bytes,
            "initramfs_entries": self.initramfs.entries,
            "initramfs_sha256": self.initramfs.sha256,
            "initramfs_cached": self.initramfs.cached,
            "initramfs_build_s": self.initramfs_build_s,
            "disk": self.disk.as_ref().map(|d| serde_json::json!({
                "image": d.image.path,
                "format": d.image.format,
                "size_bytes": d.image.size,
                "backing_chain": d.image.backing_chain,
                "partition_table": d.layout.table,
                "volumes": d.layout.volumes,
                "root": self.opts.inputs.disk.disk_root,
            })),
        })
    }

    fn initial_phase(&self) -> String {
        "boot".into()
    }

    fn qemu_boot(&mut self) -> anyhow::Result<Option<crate::qemu::QemuBoot>> {
        let disk = match &self.disk {
            None => None,
            Some(d) => Some(crate::qemu::QemuDisk {
                overlay: Arc::new(crate::disk::overlay_file(&d.image, &self.opts.scratch_dir)?),
                image: d.image.clone(),
            }),
        };
        Ok(Some(crate::qemu::QemuBoot {
            disk,
            kernel: Some(crate::qemu::QemuKernel::File(self.kit.kernel.clone())),
            initramfs: self.initramfs.bytes.clone(),
            cmdline: self.cmdline.clone(),
            mem: self.opts.mem,
            vcpus: self.opts.vcpus,
            echo_console: self.opts.console,
            gate: None,
            markers: None,
        }))
    }

    fn loaded_ranges(&self) -> Vec<(u64, u64)> {
        let mut r = vec![(0, boot::HIMEM_START)];
        if let Some(b) = &self.boot {
            r.push((b.kernel_start, b.kernel_end - b.kernel_start));
            r.push((b.initrd_addr, b.initrd_size));
        }
        r
    }
}

struct IrqTrigger(EventFd);

impl vm_superio::Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Where the UART's output goes: the trace's console log, marker lines, and optionally stderr.
struct ConsoleSink {
    log: Arc<GuestLog>,
    echo: bool,
    parser: console::ConsoleParser,
}

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.log.append_console(buf);
        if self.echo {
            let _ = std::io::stderr().write_all(buf);
        }
        self.parser.feed(buf, &self.log);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct LinuxBus {
    serial: Mutex<Serial<IrqTrigger, vm_superio::serial::NoEvents, ConsoleSink>>,
}

impl Bus for LinuxBus {
    fn io_out(&self, _vcpu: u32, port: u16, data: &[u8]) -> ExitAction {
        match port {
            SERIAL_PORT..=0x3FF => {
                // A string `outs` may hand over several bytes in one exit: each goes to the UART.
                let mut serial = self.serial.lock().unwrap_or_else(PoisonError::into_inner);
                for &byte in data {
                    let _ = serial.write((port - SERIAL_PORT) as u8, byte);
                }
                ExitAction::Continue
            }
            I8042_COMMAND if data.first() == Some(&I8042_RESET) => {
                let serial = self.serial.lock().unwrap_or_else(PoisonError::into_inner);
                let parser = &serial.writer().parser;
                match (parser.status, &parser.panic) {
                    (_, Some(panic)) => ExitAction::Fail(format!("the guest kernel panicked: {panic}")),
                    (Some(status), None) => ExitAction::PowerOff(status),
                    (None, None) => ExitAction::Fail("the guest rebooted before its workload finished".into()),
                }
            }
            _ => ExitAction::Continue,
        }
    }

    fn io_in(&self, _vcpu: u32, port: u16, data: &mut [u8]) -> ExitAction {
        match port {
            SERIAL_PORT..=0x3FF => {
                let mut serial = self.serial.lock().unwrap_or_else(PoisonError::into_inner);
                data.iter_mut().for_each(|b| *b = serial.read((port - SERIAL_PORT) as u8));
            }
            // An i8042 with nothing to say, so probes and reboots do not spin.
            0x60 | I8042_COMMAND => data[0] = 0,
            _ => data.fill(0xFF),
        }
        ExitAction::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A string `outs` can hand the bus several bytes in one exit (KVM batches them on hosts
    /// with VT-x): every one of them reaches the UART, in order.
    #[test]
    fn every_byte_of_a_port_write_reaches_the_uart() {
        let log = Arc::new(GuestLog::new("boot"));
        let sink = ConsoleSink { log: log.clone(), echo: false, parser: console::ConsoleParser::new() };
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let bus = LinuxBus { serial: Mutex::new(Serial::new(IrqTrigger(irq), sink)) };
        assert_eq!(bus.io_out(0, SERIAL_PORT, b"abc"), ExitAction::Continue);
        assert_eq!(bus.io_out(0, SERIAL_PORT, b"d\n"), ExitAction::Continue);
        assert_eq!(log.take().1, b"abcd\n");
    }
}
