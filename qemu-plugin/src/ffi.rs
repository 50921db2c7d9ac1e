//! Everything unsafe of the plugin: QEMU's plugin entry points, the userfaultfd calls, and
//! the reads of QEMU 7.2's instruction counter behind guest-time cuts.
//! The constants are the kernel's (include/uapi/linux/userfaultfd.h, Linux 6.7+), written
//! here because the build host's headers may be older than the kernel the plugin runs on.

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_long, c_uint, c_ulong, c_void, CStr};
use std::sync::OnceLock;

/// The plugin API version QEMU checks before calling anything. 1 is QEMU 7.2's and 8.0–8.1's;
/// dirtytrace sets `DIRTYTRACE_QEMU_PLUGIN_API` for QEMUs that need another (see
/// [`choose_api_version`]). Nothing of the API that this plugin uses differs between them.
#[no_mangle]
#[used]
pub static mut qemu_plugin_version: c_int = 1;

/// Runs when QEMU loads the plugin, before QEMU reads `qemu_plugin_version`.
#[used]
#[link_section = ".init_array"]
static CHOOSE_API_VERSION: extern "C" fn() = choose_api_version;

extern "C" fn choose_api_version() {
    if let Some(v) = std::env::var("DIRTYTRACE_QEMU_PLUGIN_API").ok().and_then(|v| v.parse::<c_int>().ok()) {
        // SAFETY: QEMU reads this after dlopen returns; this constructor runs inside dlopen,
        // on QEMU's only thread at that point, so nothing reads or writes it concurrently.
        unsafe { qemu_plugin_version = v };
    }
}

extern "C" {
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    fn syscall(number: c_long, ...) -> c_long;
    fn ioctl(fd: c_int, request: c_ulong, ...) -> c_int;
    fn read(fd: c_int, buf: *mut c_void, count: usize) -> isize;
    fn write(fd: c_int, buf: *const c_void, count: usize) -> isize;
}

/// A symbol of the QEMU process, or `None`.
fn symbol(name: &CStr) -> Option<*mut c_void> {
    // SAFETY: RTLD_DEFAULT (null) searches the process's global symbols; the name is a
    // NUL-terminated string.
    let p = unsafe { dlsym(std::ptr::null_mut(), name.as_ptr()) };
    (!p.is_null()).then_some(p)
}

/// QEMU's entry point: parses the arguments and asks to be called at each vCPU's creation.
///
/// # Safety
/// QEMU passes `argc` valid NUL-terminated strings in `argv`.
#[no_mangle]
pub unsafe extern "C" fn qemu_plugin_install(
    id: u64,
    _info: *const c_void,
    argc: c_int,
    argv: *const *const c_char,
) -> c_int {
    let args: Vec<String> = (0..argc.max(0) as usize)
        .map(|i| {
            // SAFETY: QEMU guarantees argv holds argc valid C strings for this call.
            unsafe { CStr::from_ptr(*argv.add(i)) }.to_string_lossy().into_owned()
        })
        .collect();
    let _ = PLUGIN_ID.set(id);
    match super::parse_args(&args).and_then(super::install) {
        Ok(()) => {
            // Looked up at run time rather than linked, so that the plugin (and its tests)
            // link without QEMU.
            let Some(register) = symbol(c"qemu_plugin_register_vcpu_init_cb") else {
                eprintln!("dirtytrace plugin: this QEMU exports no qemu_plugin_register_vcpu_init_cb");
                return -1;
            };
            // SAFETY: the symbol is QEMU's `void qemu_plugin_register_vcpu_init_cb(
            // qemu_plugin_id_t, qemu_plugin_vcpu_simple_cb_t)`, the same in every API version.
            let register: RegisterVcpuInit = unsafe { std::mem::transmute(register) };
            register(id, vcpu_init);
            0
        }
        Err(e) => {
            eprintln!("dirtytrace plugin: {e}");
            -1
        }
    }
}

type RegisterVcpuInit = extern "C" fn(id: u64, cb: extern "C" fn(id: u64, vcpu_index: u32));

/// The id QEMU gave this plugin.
static PLUGIN_ID: OnceLock<u64> = OnceLock::new();

/// Where QEMU 7.2 keeps its instruction counter: offsets into its `TimersState timers_state`
/// and `CPUState`, read from the disassembly of Debian's 7.2 build (`icount_get`,
/// `icount_get_raw_locked`). They belong to that version: dirtytrace starts guest-time cuts
/// only under QEMU 7.2, and the first instruction checks them against each other.
mod qemu72 {
    /// `timers_state.icount_time_shift` (i16).
    pub const TS_SHIFT: usize = 0x1a;
    /// `timers_state.qemu_icount_bias` (i64): the idle time warped over, in ns.
    pub const TS_BIAS: usize = 0x28;
    /// `timers_state.qemu_icount` (i64): instructions accounted at the last budget's end.
    pub const TS_ICOUNT: usize = 0x40;
    /// `CPUState.running` (bool).
    pub const CPU_RUNNING: usize = 0xbc;
    /// `CPUState.icount_budget` (i64).
    pub const CPU_BUDGET: usize = 0xe0;
    /// `CPUState.icount_extra` (i64).
    pub const CPU_EXTRA: usize = 0xe8;
    /// `CPUState.neg.icount_decr.u16.low` (u16).
    pub const CPU_DECR_LOW: usize = 0x13a0;
}

/// QEMU's `timers_state`, found at installation.
static TIMERS_STATE: OnceLock<usize> = OnceLock::new();

thread_local! {
    /// This vCPU thread's `CPUState`.
    static CPU: Cell<usize> = const { Cell::new(0) };
    /// Whether this thread checked the offsets yet.
    static CHECKED: Cell<bool> = const { Cell::new(false) };
}

type TbTransCb = extern "C" fn(id: u64, tb: *mut c_void);
type InsnExecCb = extern "C" fn(vcpu_index: c_uint, udata: *mut c_void);
/// The plugin API calls the block and instruction callbacks need (`qemu-plugin.h`, API 1 and 2).
struct TbApi {
    n_insns: extern "C" fn(tb: *const c_void) -> usize,
    get_insn: extern "C" fn(tb: *const c_void, idx: usize) -> *mut c_void,
    register_insn_exec: extern "C" fn(insn: *mut c_void, cb: InsnExecCb, flags: c_int, udata: *mut c_void),
    register_tb_exec: extern "C" fn(tb: *mut c_void, cb: InsnExecCb, flags: c_int, udata: *mut c_void),
}
static TB_API: OnceLock<TbApi> = OnceLock::new();

/// Asks QEMU for a callback before every translation block and every guest instruction
/// (guest-time cuts).
pub fn instrument_instructions() -> Result<(), String> {
    let need = |name: &CStr| symbol(name).ok_or_else(|| format!("this QEMU exports no {}", name.to_string_lossy()));
    let timers = need(c"timers_state")?;
    need(c"current_cpu")?;
    let register_trans = need(c"qemu_plugin_register_vcpu_tb_trans_cb")?;
    // SAFETY: these are QEMU's plugin API functions of these signatures (qemu-plugin.h:
    // qemu_plugin_tb_n_insns, qemu_plugin_tb_get_insn, qemu_plugin_register_vcpu_insn_exec_cb,
    // qemu_plugin_register_vcpu_tb_exec_cb), the same in API 1 and 2.
    let api = unsafe {
        TbApi {
            n_insns: std::mem::transmute::<*mut c_void, extern "C" fn(*const c_void) -> usize>(need(
                c"qemu_plugin_tb_n_insns",
            )?),
            get_insn: std::mem::transmute::<*mut c_void, extern "C" fn(*const c_void, usize) -> *mut c_void>(need(
                c"qemu_plugin_tb_get_insn",
            )?),
            register_insn_exec: std::mem::transmute::<
                *mut c_void,
                extern "C" fn(*mut c_void, InsnExecCb, c_int, *mut c_void),
            >(need(c"qemu_plugin_register_vcpu_insn_exec_cb")?),
            register_tb_exec: std::mem::transmute::<
                *mut c_void,
                extern "C" fn(*mut c_void, InsnExecCb, c_int, *mut c_void),
            >(need(c"qemu_plugin_register_vcpu_tb_exec_cb")?),
        }
    };
    let _ = TIMERS_STATE.set(timers as usize);
    let _ = TB_API.set(api);
    // SAFETY: as above: `void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t,
    // qemu_plugin_vcpu_tb_trans_cb_t)`.
    let register: extern "C" fn(u64, TbTransCb) = unsafe { std::mem::transmute(register_trans) };
    register(*PLUGIN_ID.get().ok_or("no plugin id")?, tb_trans);
    Ok(())
}

/// Each new translation block: a callback before the block, told its length, and one before
/// each of its instructions, told the block's length and the instruction's place in it. The
/// block's callback says whether a deadline may fall inside the block; the instructions'
/// return at once unless it does.
extern "C" fn tb_trans(_id: u64, tb: *mut c_void) {
    let Some(api) = TB_API.get() else { return };
    let n = (api.n_insns)(tb);
    // QEMU_PLUGIN_CB_NO_REGS = 0. QEMU emits the block's callback before its instructions'.
    (api.register_tb_exec)(tb, tb_exec, 0, n as *mut c_void);
    for i in 0..n {
        let insn = (api.get_insn)(tb, i);
        (api.register_insn_exec)(insn, insn_exec, 0, ((n << 32) | i) as *mut c_void);
    }
}

extern "C" fn tb_exec(_vcpu: c_uint, udata: *mut c_void) {
    let n = udata as usize as i64;
    let (guest_ns, icount) = guest_time(n, 0);
    super::on_block(guest_ns, icount, n as u64);
}

extern "C" fn insn_exec(_vcpu: c_uint, udata: *mut c_void) {
    if !super::block_armed() {
        return;
    }
    let (n, i) = ((udata as usize >> 32) as i64, (udata as usize & 0xffff_ffff) as i64);
    let (guest_ns, icount) = guest_time(n, i);
    super::on_instruction(guest_ns, icount);
}

/// The guest time and the instruction count before instruction `i` of a block of `n`, exactly
/// as QEMU's `icount_get` would count them there: the instructions accounted
/// (`qemu_icount`) plus those of the current budget spent (the block's start took all `n`
/// from `icount_decr`, before the block's callback and its instructions' run), in ns at shift 0,
/// plus the idle time warped over (`qemu_icount_bias`).
fn guest_time(n: i64, i: i64) -> (u64, u64) {
    use qemu72::*;
    let ts = *TIMERS_STATE.get().expect("set before any callback");
    let cpu = CPU.with(|c| {
        if c.get() == 0 {
            // `current_cpu` is thread-local: dlsym gives this thread's instance.
            let p = symbol(c"current_cpu").expect("checked at installation") as *const usize;
            // SAFETY: `CPUState *current_cpu` of this (vCPU) thread, set while it runs.
            c.set(unsafe { *p });
        }
        c.get()
    });
    let at = |base: usize, off: usize| (base + off) as *const u8;
    // SAFETY: `ts` is QEMU's `timers_state` and `cpu` this thread's CPUState, both alive for
    // QEMU's life; the offsets are QEMU 7.2's (checked below on the first call). The fields
    // read here are written by this vCPU thread only, or (the bias) only while it is idle.
    let (shift, bias, accounted, running, budget, extra, low) = unsafe {
        (
            (at(ts, TS_SHIFT) as *const i16).read_volatile(),
            (at(ts, TS_BIAS) as *const i64).read_volatile(),
            (at(ts, TS_ICOUNT) as *const i64).read_volatile(),
            at(cpu, CPU_RUNNING).read_volatile(),
            (at(cpu, CPU_BUDGET) as *const i64).read_volatile(),
            (at(cpu, CPU_EXTRA) as *const i64).read_volatile(),
            (at(cpu, CPU_DECR_LOW) as *const u16).read_volatile(),
        )
    };
    let spent = budget - extra - i64::from(low);
    let icount = accounted + spent - n + i;
    if !CHECKED.with(|c| c.replace(true)) {
        let ok = shift == 0 && running == 1 && (0..=budget).contains(&spent) && bias >= 0 && icount >= 0;
        if !ok {
            eprintln!(
                "dirtytrace plugin: this QEMU's instruction counter is not where QEMU 7.2 keeps it (shift {shift},                  running {running}, budget {budget}, spent {spent}, bias {bias}): --clock guest works with QEMU 7.2                  only"
            );
            std::process::exit(super::SETUP_FAILED);
        }
    }
    ((bias + icount) as u64, icount as u64)
}

/// Writes all of `buf` to `fd`; false if it cannot.
pub fn write_all(fd: c_int, mut buf: &[u8]) -> bool {
    while !buf.is_empty() {
        // SAFETY: writes from a live slice of that length.
        let n = unsafe { write(fd, buf.as_ptr() as *const c_void, buf.len()) };
        if n <= 0 {
            if n < 0 && last_error().raw_os_error() == Some(4) {
                continue;
            }
            return false;
        }
        buf = &buf[n as usize..];
    }
    true
}

/// Waits for one byte on `fd`; false at its end or on an error.
pub fn read_byte(fd: c_int) -> bool {
    let mut b = 0u8;
    loop {
        // SAFETY: reads one byte into a live local.
        let n = unsafe { read(fd, &mut b as *mut u8 as *mut c_void, 1) };
        match n {
            1 => return true,
            n if n < 0 && last_error().raw_os_error() == Some(4) => continue,
            _ => return false,
        }
    }
}

extern "C" fn vcpu_init(_id: u64, _vcpu_index: u32) {
    super::on_vcpu_init();
}

/// Writes `line` and a newline to the inherited report pipe, then closes it.
pub fn report(fd: c_int, line: &str) {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    // SAFETY: dirtytrace passes QEMU the write end of a pipe as this fd, for this plugin
    // alone; the plugin takes ownership of it exactly once (the first vCPU's init).
    let mut pipe = unsafe { std::fs::File::from_raw_fd(fd) };
    let _ = pipe.write_all(format!("{line}\n").as_bytes());
}

const SYS_USERFAULTFD: c_long = 323;
const UFFD_USER_MODE_ONLY: c_int = 1;
const O_CLOEXEC: c_int = 0o2000000;
const O_NONBLOCK: c_int = 0o4000;
const UFFD_API: u64 = 0xAA;
const UFFD_FEATURE_WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
const UFFDIO_API: c_ulong = 0xC018_AA3F;
const UFFDIO_REGISTER: c_ulong = 0xC020_AA00;
const UFFDIO_WRITEPROTECT: c_ulong = 0xC018_AA06;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

fn last_error() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Creates a userfaultfd with asynchronous write-protection over `[start, start + len)` and
/// write-protects the range. The fd stays open for QEMU's life: closing it would end the
/// tracking. Returns which faults it sees: `user` (user-mode only, no privilege needed) or
/// `all`.
pub fn write_protect_async(start: u64, len: u64) -> Result<&'static str, String> {
    // SAFETY: userfaultfd(2) takes one int of flags and returns a new fd or -1.
    let mut fd = unsafe { syscall(SYS_USERFAULTFD, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY) };
    let mut mode = "user";
    if fd < 0 && last_error().raw_os_error() == Some(22) {
        // EINVAL: a kernel older than 5.11 has no UFFD_USER_MODE_ONLY; try without.
        // SAFETY: as above.
        fd = unsafe { syscall(SYS_USERFAULTFD, O_CLOEXEC | O_NONBLOCK) };
        mode = "all";
    }
    if fd < 0 {
        let e = last_error();
        return Err(match e.raw_os_error() {
            Some(1) => format!(
                "userfaultfd: {e}: QEMU's user may not use userfaultfd; run as root, give CAP_SYS_PTRACE, allow \
                 `sysctl vm.unprivileged_userfaultfd=1`, or grant access to /dev/userfaultfd"
            ),
            Some(38) => format!("userfaultfd: {e}: this host kernel has no userfaultfd (CONFIG_USERFAULTFD)"),
            _ => format!("userfaultfd: {e}"),
        });
    }
    let fd = fd as c_int;
    let features = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED | UFFD_FEATURE_WP_HUGETLBFS_SHMEM;
    let mut api = UffdioApi { api: UFFD_API, features, ioctls: 0 };
    // SAFETY: UFFDIO_API reads and writes one struct uffdio_api, which `api` is, alive here.
    if unsafe { ioctl(fd, UFFDIO_API, &mut api as *mut UffdioApi) } != 0 {
        return Err(format!(
            "UFFDIO_API with asynchronous write-protect: {}: the host kernel needs UFFD_FEATURE_WP_ASYNC and \
             WP_UNPOPULATED (Linux 6.7 or later, with userfaultfd write-protect support)",
            last_error()
        ));
    }
    let mut reg = UffdioRegister { range: UffdioRange { start, len }, mode: UFFDIO_REGISTER_MODE_WP, ioctls: 0 };
    // SAFETY: UFFDIO_REGISTER reads and writes one struct uffdio_register, alive here; the
    // range is guest RAM's mapping, found in /proc/self/maps.
    if unsafe { ioctl(fd, UFFDIO_REGISTER, &mut reg as *mut UffdioRegister) } != 0 {
        return Err(format!("UFFDIO_REGISTER of guest RAM in write-protect mode: {}", last_error()));
    }
    let mut wp = UffdioWriteprotect { range: UffdioRange { start, len }, mode: UFFDIO_WRITEPROTECT_MODE_WP };
    // SAFETY: UFFDIO_WRITEPROTECT reads and writes one struct uffdio_writeprotect, alive here.
    if unsafe { ioctl(fd, UFFDIO_WRITEPROTECT, &mut wp as *mut UffdioWriteprotect) } != 0 {
        return Err(format!("UFFDIO_WRITEPROTECT of guest RAM: {}", last_error()));
    }
    Ok(mode)
}
