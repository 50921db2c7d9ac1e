//! vCPU threads: run, dispatch exits to the bus, report how they ended.

use super::{Bus, SharedU64, VmmError};
use crate::clock;
use kvm_ioctls::{VcpuExit, VcpuFd};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::PoisonError;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// What the bus wants after an exit.
#[derive(Debug, Clone, PartialEq)]
pub enum ExitAction {
    /// Run the guest on.
    Continue,
    /// Leave the vCPU off the CPU for this long, then resume it.
    Sleep(Duration),
    /// This vCPU has finished its work.
    Done,
    /// The guest asked to end the whole VM (power-off, reboot), with an exit status.
    PowerOff(i32),
    /// The guest failed in a way only its bus can tell (a kernel panic, say).
    Fail(String),
}

/// A vCPU stopped by something the guest did: the exit, its registers and the bytes at rip.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GuestFault {
    /// The vCPU.
    pub vcpu: u32,
    /// The exit reason, as people read it.
    pub reason: String,
    /// General-purpose and control registers.
    pub registers: String,
    /// The 16 bytes at rip, hex.
    pub instruction_bytes: String,
}

impl fmt::Display for GuestFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "vCPU {} stopped: {}", self.vcpu, self.reason)?;
        writeln!(f, "  registers: {}", self.registers)?;
        write!(f, "  instruction bytes at rip: {}", self.instruction_bytes)
    }
}

/// How a vCPU thread ended.
#[derive(Debug, Clone)]
pub enum VcpuOutcome {
    /// The guest said it was done (synthetic guest).
    Done,
    /// The VMM stopped it.
    Stopped,
    /// The guest powered off, with this status.
    PowerOff(i32),
    /// The guest's workload ended with this status, and the recorder stopped the guest at a
    /// guest-time boundary after it (`--clock guest`: the guest idles rather than powering off).
    Ended(i32),
    /// The guest faulted.
    Fault(GuestFault),
}

/// What the VMM asks of every vCPU thread: stop for good, or park for an exact cut.
#[derive(Default)]
pub(super) struct Control {
    pub stop: AtomicBool,
    pause: AtomicBool,
    parked: Mutex<usize>,
    cv: Condvar,
}

impl Control {
    /// Parks the calling vCPU thread while a pause is asked for.
    fn park_if_asked(&self) {
        if !self.pause.load(Ordering::Acquire) {
            return;
        }
        let mut n = self.parked.lock().unwrap_or_else(PoisonError::into_inner);
        *n += 1;
        self.cv.notify_all();
        while self.pause.load(Ordering::Acquire) && !self.stop.load(Ordering::Acquire) {
            n = self.cv.wait(n).unwrap_or_else(PoisonError::into_inner);
        }
        *n -= 1;
    }

    /// Asks every thread to park and waits until all running ones have; `kick` pushes a
    /// thread out of KVM_RUN (a signal can land just before it enters, so it is repeated).
    pub fn pause(&self, running: impl Fn() -> usize, kick: impl Fn()) {
        self.pause.store(true, Ordering::Release);
        let mut n = self.parked.lock().unwrap_or_else(PoisonError::into_inner);
        while *n < running() {
            kick();
            n = self.cv.wait_timeout(n, Duration::from_micros(50)).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    pub fn resume(&self) {
        self.pause.store(false, Ordering::Release);
        let _n = self.parked.lock().unwrap_or_else(PoisonError::into_inner);
        self.cv.notify_all();
    }

    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
        let _n = self.parked.lock().unwrap_or_else(PoisonError::into_inner);
        self.cv.notify_all();
    }
}

pub(super) struct VcpuThread {
    handle: JoinHandle<VcpuOutcome>,
    cpu_clock: Arc<Mutex<Option<nix::time::ClockId>>>,
    final_cpu_ns: Arc<SharedU64>,
    finished: Arc<AtomicBool>,
}

fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

pub(super) fn install_kick_handler() -> Result<(), VmmError> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick).map_err(VmmError::KickHandler)
}

pub(super) fn spawn(
    index: u32,
    mut fd: VcpuFd,
    bus: Arc<dyn Bus>,
    memory: GuestMemoryMmap,
    control: Arc<Control>,
    cpus: Option<Vec<usize>>,
) -> Result<VcpuThread, VmmError> {
    let cpu_clock = Arc::new(Mutex::new(None));
    let final_cpu_ns = Arc::new(SharedU64::default());
    let finished = Arc::new(AtomicBool::new(false));
    let (c, f, d) = (cpu_clock.clone(), final_cpu_ns.clone(), finished.clone());
    let handle = std::thread::Builder::new()
        .name(format!("vcpu{index}"))
        .spawn(move || {
            if let Some(cpus) = &cpus {
                // Best effort: a vCPU that cannot be pinned still runs.
                let _ = crate::cpus::pin_current_thread(cpus);
            }
            *c.lock().unwrap_or_else(PoisonError::into_inner) = Some(clock::current_thread_cpu_clock());
            let outcome = run_loop(index, &mut fd, &*bus, &memory, &control);
            // A stopping guest stops the whole VM: the sampler notices `stop`.
            if !matches!(outcome, VcpuOutcome::Done | VcpuOutcome::Stopped) {
                control.request_stop();
            }
            let clock_id = c.lock().unwrap_or_else(PoisonError::into_inner).take();
            f.set(clock_id.and_then(clock::thread_cpu_ns).unwrap_or(0));
            d.store(true, Ordering::Release);
            outcome
        })
        .map_err(VmmError::VcpuThread)?;
    Ok(VcpuThread { handle, cpu_clock, final_cpu_ns, finished })
}

impl VcpuThread {
    pub fn cpu_ns(&self) -> u64 {
        let live = self.cpu_clock.lock().unwrap_or_else(PoisonError::into_inner).and_then(clock::thread_cpu_ns);
        live.unwrap_or_else(|| self.final_cpu_ns.get())
    }

    pub fn finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    pub fn kick(&self) {
        if !self.finished() {
            use vmm_sys_util::signal::Killable;
            let _ = self.handle.kill(kick_signal());
        }
    }

    /// Kicks the thread out of KVM_RUN until it notices `stop`, then joins it.
    pub fn join(self) -> (VcpuOutcome, u64) {
        while !self.finished() {
            self.kick();
            std::thread::sleep(Duration::from_millis(1));
        }
        let cpu = self.final_cpu_ns.get();
        let outcome = self.handle.join().unwrap_or_else(|_| {
            VcpuOutcome::Fault(GuestFault {
                vcpu: u32::MAX,
                reason: "vCPU thread panicked".into(),
                registers: String::new(),
                instruction_bytes: String::new(),
            })
        });
        (outcome, cpu)
    }
}

fn run_loop(index: u32, fd: &mut VcpuFd, bus: &dyn Bus, memory: &GuestMemoryMmap, control: &Control) -> VcpuOutcome {
    loop {
        control.park_if_asked();
        if control.stop.load(Ordering::Acquire) {
            return VcpuOutcome::Stopped;
        }
        let action = match fd.run() {
            Ok(VcpuExit::IoOut(port, data)) => bus.io_out(index, port, data),
            Ok(VcpuExit::IoIn(port, data)) => bus.io_in(index, port, data),
            Ok(VcpuExit::MmioWrite(addr, data)) => bus.mmio_write(index, addr, data),
            Ok(VcpuExit::MmioRead(addr, data)) => bus.mmio_read(index, addr, data),
            Ok(VcpuExit::Hlt) => {
                return fault(index, fd, memory, "the guest halted (KVM_EXIT_HLT) with nothing to wake it".into())
            }
            Ok(VcpuExit::Shutdown) => {
                return fault(
                    index,
                    fd,
                    memory,
                    "triple fault (KVM_EXIT_SHUTDOWN): the guest hit an exception it could not handle".into(),
                )
            }
            Ok(VcpuExit::InternalError) => {
                let internal = describe_internal_error(fd);
                return fault(index, fd, memory, format!("KVM_EXIT_INTERNAL_ERROR: {internal}"));
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                return fault(
                    index,
                    fd,
                    memory,
                    format!("KVM_EXIT_FAIL_ENTRY: hardware entry failure reason {reason:#x} on host CPU {cpu}"),
                )
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                return match kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN | kvm_bindings::KVM_SYSTEM_EVENT_RESET => {
                        VcpuOutcome::PowerOff(0)
                    }
                    _ => fault(index, fd, memory, format!("KVM_EXIT_SYSTEM_EVENT of type {kind}")),
                }
            }
            Ok(VcpuExit::Intr) => ExitAction::Continue,
            Ok(other) => {
                let what = format!("unexpected exit {other:?}");
                return fault(index, fd, memory, what);
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => ExitAction::Continue,
            Err(e) => return fault(index, fd, memory, format!("KVM_RUN failed: {e}")),
        };
        match action {
            ExitAction::Continue => {}
            ExitAction::Sleep(d) => {
                // A kick interrupts this sleep, so stopping stays prompt.
                clock::sleep_until(clock::now_ns() + d.as_nanos() as u64);
            }
            ExitAction::Done => return VcpuOutcome::Done,
            ExitAction::PowerOff(status) => return VcpuOutcome::PowerOff(status),
            ExitAction::Fail(reason) => return fault(index, fd, memory, reason),
        }
    }
}

/// Describes `kvm_run.internal` after KVM_EXIT_INTERNAL_ERROR.
fn describe_internal_error(fd: &mut VcpuFd) -> String {
    let run = fd.get_kvm_run();
    // SAFETY: the exit reason was KVM_EXIT_INTERNAL_ERROR, so `internal` is the active field.
    let internal = unsafe { run.__bindgen_anon_1.internal };
    let what = match internal.suberror {
        kvm_bindings::KVM_INTERNAL_ERROR_EMULATION => {
            "instruction emulation failed (the host's KVM cannot emulate this instruction)"
        }
        kvm_bindings::KVM_INTERNAL_ERROR_SIMUL_EX => "exception while delivering an exception",
        kvm_bindings::KVM_INTERNAL_ERROR_DELIVERY_EV => "event delivery failed",
        _ => "internal error",
    };
    let n = (internal.ndata as usize).min(internal.data.len());
    let data: Vec<String> = internal.data[..n].iter().map(|d| format!("{d:#x}")).collect();
    format!("suberror {} ({what}), data [{}]", internal.suberror, data.join(", "))
}

fn fault(index: u32, fd: &VcpuFd, memory: &GuestMemoryMmap, reason: String) -> VcpuOutcome {
    let (registers, instruction_bytes) = match (fd.get_regs(), fd.get_sregs()) {
        (Ok(r), Ok(s)) => {
            let regs = format!(
                "rip={:#x} rsp={:#x} rflags={:#x} rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x} rbp={:#x} \
                 r8={:#x} r9={:#x} r10={:#x} r11={:#x} r12={:#x} r13={:#x} r14={:#x} r15={:#x} \
                 cs={:#x}(dpl {}) cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
                r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.r8, r.r9, r.r10, r.r11,
                r.r12, r.r13, r.r14, r.r15, s.cs.selector, s.cs.dpl, s.cr0, s.cr2, s.cr3, s.cr4, s.efer
            );
            let linear = if s.cr0 & 1 == 0 { s.cs.base + r.rip } else { r.rip };
            let gpa = if s.cr0 & 0x8000_0000 != 0 {
                fd.translate_gva(linear).ok().filter(|t| t.valid != 0).map(|t| t.physical_address)
            } else {
                Some(linear)
            };
            let bytes = gpa
                .and_then(|gpa| {
                    let mut buf = [0u8; 16];
                    memory.read_slice(&mut buf, GuestAddress(gpa)).ok().map(|_| buf)
                })
                .map(|b| b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" "))
                .unwrap_or_else(|| "(rip is not in guest RAM)".into());
            (regs, bytes)
        }
        (Err(e), _) | (_, Err(e)) => (format!("(could not read registers: {e})"), String::new()),
    };
    VcpuOutcome::Fault(GuestFault { vcpu: index, reason, registers, instruction_bytes })
}
