//! dirtytrace's QEMU plugin (the `qemu-plugin` crate), built by `build.rs` and embedded in the
//! binary. It is handed to QEMU as an anonymous file (a memfd), so nothing is written to disk
//! and the plugin QEMU loads is always the one this recorder was built with.

use std::io::Write;
use std::os::fd::OwnedFd;

/// The plugin's shared object.
pub const PLUGIN_SO: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/dirtytrace_qemu_plugin.so"));

/// The plugin in an anonymous file, closed on exec unless the child is told to keep it.
pub fn memfd() -> std::io::Result<OwnedFd> {
    let fd = nix::sys::memfd::memfd_create(c"dirtytrace-qemu-plugin", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .map_err(std::io::Error::from)?;
    let mut file = std::fs::File::from(fd);
    file.write_all(PLUGIN_SO)?;
    Ok(OwnedFd::from(file))
}

/// The plugin API version to declare to a QEMU of this version (`major`, `minor`): QEMU 9.0
/// and later refuse version 1, and 7.2 refuses anything newer. The calls the plugin makes are
/// the same in every version.
pub fn api_version(major: u32, minor: u32) -> u32 {
    if (major, minor) >= (8, 2) {
        2
    } else {
        1
    }
}
