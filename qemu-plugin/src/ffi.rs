//! Everything unsafe of the plugin: QEMU's plugin entry points, and the userfaultfd calls.
//! The constants are the kernel's (include/uapi/linux/userfaultfd.h, Linux 6.7+), written
//! here because the build host's headers may be older than the kernel the plugin runs on.

use std::ffi::{c_char, c_int, c_long, c_ulong, c_void, CStr};

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
    match super::parse_args(&args) {
        Ok(cfg) => {
            let _ = super::CONFIG.set(cfg);
            // Looked up at run time rather than linked, so that the plugin (and its tests)
            // link without QEMU.
            // SAFETY: RTLD_DEFAULT (null) searches the process's global symbols; the name is
            // a NUL-terminated literal.
            let register = unsafe { dlsym(std::ptr::null_mut(), c"qemu_plugin_register_vcpu_init_cb".as_ptr()) };
            if register.is_null() {
                eprintln!("dirtytrace plugin: this QEMU exports no qemu_plugin_register_vcpu_init_cb");
                return -1;
            }
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
