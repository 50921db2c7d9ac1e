//! A small VMM: KVM fds, guest memory with dirty logging, vCPU threads, and exit dispatch.
//! It knows nothing about which guest runs; guests fill memory, set vCPU state and answer
//! exits through a [`Bus`].

mod vcpu;
pub mod x86;

pub use vcpu::{ExitAction, GuestFault, VcpuOutcome};

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::units::PAGE_SIZE;

/// The device file, overridable for tests and unusual hosts.
pub fn kvm_device_path() -> PathBuf {
    std::env::var_os("DIRTYTRACE_KVM_DEVICE").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/dev/kvm"))
}

/// Why the VMM could not open KVM, build the VM or run it.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The KVM device does not exist.
    #[error("{path} does not exist: this host has no KVM. Enable virtualisation in the firmware (or nested virtualisation in the cloud VM) and load the kvm module")]
    NoKvm {
        /// The device path.
        path: PathBuf,
    },
    /// The KVM device may not be opened by this user.
    #[error("permission denied opening {path}: run as root, or add yourself to its group (`sudo usermod -aG kvm $USER`, then log in again)")]
    KvmPermission {
        /// The device path.
        path: PathBuf,
    },
    /// Opening the KVM device failed otherwise.
    #[error("cannot use {path}: {source}")]
    KvmOpen {
        /// The device path.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The device is not KVM, or a KVM of another API.
    #[error("cannot use {path}: it is not a KVM device (KVM_GET_API_VERSION returned {version}, expected 12)")]
    ApiVersion {
        /// The device path.
        path: PathBuf,
        /// What `KVM_GET_API_VERSION` returned.
        version: i32,
    },
    /// A KVM ioctl failed.
    #[error("{what}: {source}")]
    Kvm {
        /// The ioctl.
        what: &'static str,
        /// What KVM said.
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be mapped.
    #[error("cannot allocate {bytes} bytes of guest memory: {msg}")]
    Memory {
        /// How much was asked for.
        bytes: u64,
        /// What vm-memory said.
        msg: String,
    },
    /// The device path cannot be passed to the kernel.
    #[error("{} is not a usable device path (it holds a NUL byte)", path.display())]
    BadDevicePath {
        /// The device path.
        path: PathBuf,
    },
    /// vm-memory has no host mapping for a region it made.
    #[error("cannot find the host address of guest memory at {gpa:#x}")]
    HostAddress {
        /// The region's guest-physical address.
        gpa: u64,
    },
    /// The signal that kicks vCPUs out of `KVM_RUN` could not be set up.
    #[error("cannot install the vCPU kick signal handler: {0}")]
    KickHandler(vmm_sys_util::errno::Error),
    /// A vCPU thread could not be spawned.
    #[error("cannot start a vCPU thread: {0}")]
    VcpuThread(std::io::Error),
}

/// Wraps a failed ioctl's error with the ioctl's name.
pub fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Kvm { what, source }
}

/// Opens KVM with an error that tells people what to do.
pub fn open_kvm(path: &Path) -> Result<Kvm, VmmError> {
    let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| VmmError::BadDevicePath { path: path.into() })?;
    let kvm = Kvm::new_with_path(&cpath).map_err(|e| match e.errno() {
        libc::ENOENT => VmmError::NoKvm { path: path.into() },
        libc::EACCES | libc::EPERM => VmmError::KvmPermission { path: path.into() },
        _ => VmmError::KvmOpen { path: path.into(), source: std::io::Error::from_raw_os_error(e.errno()) },
    })?;
    if kvm.get_api_version() != 12 {
        return Err(VmmError::ApiVersion { path: path.into(), version: kvm.get_api_version() });
    }
    Ok(kvm)
}

/// One KVM memory slot, logged for dirty pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// KVM's slot number.
    pub slot: u32,
    /// Guest-physical address of its first byte.
    pub guest_phys_addr: u64,
    /// Its length in bytes.
    pub size_bytes: u64,
}

impl Slot {
    /// Guest page number of its first page.
    pub fn first_page(&self) -> u64 {
        self.guest_phys_addr / PAGE_SIZE
    }
    /// Pages in it.
    pub fn num_pages(&self) -> u64 {
        self.size_bytes / PAGE_SIZE
    }
}

/// How the VM's writes to memory are tracked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DirtyTracking {
    /// Not at all: harvests are empty. Only to measure what tracking costs.
    Off,
    /// KVM's dirty bitmap (`KVM_MEM_LOG_DIRTY_PAGES`, `KVM_GET_DIRTY_LOG`).
    #[default]
    Bitmap,
}

/// What a guest asks of the VMM before its vCPUs exist.
pub struct VmSpec {
    /// Guest-physical RAM ranges `(start, size)`, sorted, page-aligned.
    pub ram: Vec<(u64, u64)>,
    /// vCPUs to create.
    pub vcpus: u32,
    /// In-kernel LAPIC/IOAPIC/PIC and PIT, as a Linux guest needs.
    pub irqchip: bool,
    /// How writes are tracked.
    pub dirty_tracking: DirtyTracking,
}

/// A created VM, not yet running: guests load memory and set vCPU state on it.
pub struct Vm {
    /// The KVM system fd.
    pub kvm: Kvm,
    /// The VM fd.
    pub fd: Arc<VmFd>,
    /// Guest RAM, mapped in this process.
    pub memory: GuestMemoryMmap,
    /// The memory slots, one per RAM range.
    pub slots: Vec<Slot>,
    /// The vCPU fds, before their threads start.
    pub vcpus: Vec<VcpuFd>,
    dirty_tracking: DirtyTracking,
}

impl Vm {
    /// Creates the VM `spec` asks for: memory, slots with dirty tracking, irqchip, vCPUs.
    pub fn create(kvm: Kvm, spec: &VmSpec) -> Result<Vm, VmmError> {
        let fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        let total: u64 = spec.ram.iter().map(|r| r.1).sum();
        let ranges: Vec<(GuestAddress, usize)> = spec.ram.iter().map(|&(a, s)| (GuestAddress(a), s as usize)).collect();
        let memory =
            GuestMemoryMmap::from_ranges(&ranges).map_err(|e| VmmError::Memory { bytes: total, msg: e.to_string() })?;
        let mut slots = Vec::new();
        for (i, region) in memory.iter().enumerate() {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|_| VmmError::HostAddress { gpa: region.start_addr().0 })?;
            let r = kvm_userspace_memory_region {
                slot: i as u32,
                flags: match spec.dirty_tracking {
                    DirtyTracking::Bitmap => KVM_MEM_LOG_DIRTY_PAGES,
                    DirtyTracking::Off => 0,
                },
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region is a live mmap owned by `memory`, which outlives the VM fd
            // in every use (RunningVm keeps both), and the slot does not overlap another.
            unsafe { fd.set_user_memory_region(r) }.map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
            slots.push(Slot { slot: i as u32, guest_phys_addr: r.guest_phys_addr, size_bytes: r.memory_size });
        }
        if spec.irqchip {
            // Intel's KVM needs three pages for its real-mode TSS; this sits in the MMIO hole.
            fd.set_tss_address(0xFFFB_D000).map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
            fd.create_irq_chip().map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
            let pit = kvm_bindings::kvm_pit_config { flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
            fd.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
        }
        let vcpus = (0..spec.vcpus)
            .map(|i| fd.create_vcpu(i as u64).map_err(kvm_err("KVM_CREATE_VCPU")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Vm { kvm, fd: Arc::new(fd), memory, slots, vcpus, dirty_tracking: spec.dirty_tracking })
    }

    /// Empties the dirty log, so that the first interval holds only what the guest writes.
    /// The VMM's own loading writes are not logged by KVM, but start from a known state.
    pub fn clear_dirty_log(&self) -> Result<(), VmmError> {
        for slot in self.slots.iter().filter(|_| self.dirty_tracking == DirtyTracking::Bitmap) {
            self.fd.get_dirty_log(slot.slot, slot.size_bytes as usize).map_err(kvm_err("KVM_GET_DIRTY_LOG"))?;
        }
        Ok(())
    }

    /// Guest RAM in bytes, all slots.
    pub fn ram_bytes(&self) -> u64 {
        self.slots.iter().map(|s| s.size_bytes).sum()
    }

    /// Starts one thread per vCPU, each restricted to `cpus` when given; exits go to `bus`.
    pub fn start(self, bus: Arc<dyn Bus>, cpus: Option<&[usize]>) -> Result<RunningVm, VmmError> {
        vcpu::install_kick_handler()?;
        let control = Arc::new(vcpu::Control::default());
        let mut threads = Vec::new();
        for (index, fd) in self.vcpus.into_iter().enumerate() {
            let cpus = cpus.map(<[usize]>::to_vec);
            threads.push(vcpu::spawn(index as u32, fd, bus.clone(), self.memory.clone(), control.clone(), cpus)?);
        }
        Ok(RunningVm {
            fd: self.fd,
            memory: self.memory,
            slots: self.slots,
            threads,
            control,
            stopped_cpu_ns: Vec::new(),
            dirty_tracking: self.dirty_tracking,
            _kvm: self.kvm,
        })
    }
}

/// Devices and guest protocols, as seen from exits.
pub trait Bus: Send + Sync {
    /// The guest wrote `data` to I/O port `port`.
    fn io_out(&self, vcpu: u32, port: u16, data: &[u8]) -> ExitAction;
    /// The guest reads `data.len()` bytes from I/O port `port`; nothing there reads as ones.
    fn io_in(&self, _vcpu: u32, _port: u16, data: &mut [u8]) -> ExitAction {
        data.fill(0xFF);
        ExitAction::Continue
    }
    /// The guest wrote `data` to an address no memory backs; ignored unless a device is there.
    fn mmio_write(&self, _vcpu: u32, _addr: u64, _data: &[u8]) -> ExitAction {
        ExitAction::Continue
    }
    /// The guest reads an address no memory backs; it reads as ones unless a device is there.
    fn mmio_read(&self, _vcpu: u32, _addr: u64, data: &mut [u8]) -> ExitAction {
        data.fill(0xFF);
        ExitAction::Continue
    }
}

/// A VM whose vCPUs run, each on its own thread, until [`RunningVm::stop`].
pub struct RunningVm {
    fd: Arc<VmFd>,
    /// Guest RAM, mapped in this process.
    pub memory: GuestMemoryMmap,
    /// The memory slots.
    pub slots: Vec<Slot>,
    threads: Vec<vcpu::VcpuThread>,
    control: Arc<vcpu::Control>,
    /// CPU time of each vCPU thread once [`RunningVm::stop`] has joined them.
    stopped_cpu_ns: Vec<u64>,
    dirty_tracking: DirtyTracking,
    _kvm: Kvm,
}

impl RunningVm {
    /// The pages every slot dirtied since the last harvest, one bitmap per slot in KVM's
    /// layout; the tracking starts over for the next harvest.
    pub fn harvest_all(&self) -> Result<Vec<Vec<u64>>, VmmError> {
        self.slots
            .iter()
            .map(|slot| match self.dirty_tracking {
                DirtyTracking::Off => Ok(vec![0; slot.num_pages().div_ceil(64) as usize]),
                // Returns the bitmap, clears it and write-protects the slot again.
                DirtyTracking::Bitmap => {
                    self.fd.get_dirty_log(slot.slot, slot.size_bytes as usize).map_err(kvm_err("KVM_GET_DIRTY_LOG"))
                }
            })
            .collect()
    }

    /// Reads a u64 the guest publishes (progress counters).
    pub fn read_u64(&self, gpa: u64) -> u64 {
        use vm_memory::Bytes;
        self.memory.load::<u64>(GuestAddress(gpa), std::sync::atomic::Ordering::Acquire).unwrap_or(0)
    }

    /// CPU time each vCPU thread has used so far.
    pub fn vcpu_cpu_ns(&self) -> Vec<u64> {
        if self.threads.is_empty() {
            return self.stopped_cpu_ns.clone();
        }
        self.threads.iter().map(|t| t.cpu_ns()).collect()
    }

    /// True once every vCPU has stopped on its own (done, fault, or guest power-off).
    pub fn all_finished(&self) -> bool {
        !self.threads.is_empty() && self.threads.iter().all(|t| t.finished())
    }

    /// True once a vCPU asked the whole VM to stop (a fault or a power-off).
    pub fn stop_requested(&self) -> bool {
        self.control.stop.load(Ordering::Acquire)
    }

    /// Takes every running vCPU out of the guest and holds it, for an exact cut.
    pub fn pause(&self) {
        let running = || self.threads.iter().filter(|t| !t.finished()).count();
        self.control.pause(running, || self.threads.iter().for_each(|t| t.kick()));
    }

    /// Lets the vCPUs held by [`RunningVm::pause`] run again.
    pub fn resume(&self) {
        self.control.resume();
    }

    /// Stops every vCPU and returns how each ended.
    pub fn stop(&mut self) -> Vec<VcpuOutcome> {
        self.control.request_stop();
        let (outcomes, cpu): (Vec<_>, Vec<_>) = self.threads.drain(..).map(|t| t.join()).unzip();
        self.stopped_cpu_ns = cpu;
        outcomes
    }
}

impl crate::engine::RunningGuest for RunningVm {
    fn harvest_all(&self) -> Result<Vec<Vec<u64>>, crate::engine::EngineError> {
        Ok(RunningVm::harvest_all(self)?)
    }
    fn read_u64(&self, gpa: u64) -> u64 {
        RunningVm::read_u64(self, gpa)
    }
    fn vcpu_cpu_ns(&self) -> Vec<u64> {
        RunningVm::vcpu_cpu_ns(self)
    }
    fn all_finished(&self) -> bool {
        RunningVm::all_finished(self)
    }
    fn stop_requested(&self) -> bool {
        RunningVm::stop_requested(self)
    }
    fn pause(&self) {
        RunningVm::pause(self)
    }
    fn resume(&self) {
        RunningVm::resume(self)
    }
    fn stop(&mut self) -> Vec<VcpuOutcome> {
        RunningVm::stop(self)
    }
}

/// A counter shared between a vCPU thread and the sampler.
#[derive(Default)]
pub(crate) struct SharedU64(AtomicU64);

impl SharedU64 {
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
    pub(crate) fn set(&self, v: u64) {
        self.0.store(v, Ordering::Release)
    }
}
