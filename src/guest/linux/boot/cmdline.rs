//! The kernel command line, for the own VMM's machine and for QEMU's.

/// The kernel command line dirtytrace passes, plus the user's extra.
pub fn cmdline(extra: Option<&str>) -> String {
    join_args(&[COMMON_ARGS, OWN_MACHINE_ARGS], extra)
}

/// Kernel arguments for every machine dirtytrace boots.
const COMMON_ARGS: &str = "console=ttyS0 reboot=k panic=1 nokaslr tsc=reliable no_timer_check rdinit=/init";
/// Kernel arguments for the own VMM's machine alone: early serial output, no PCI bus and a
/// minimal i8042.
const OWN_MACHINE_ARGS: &str = "earlyprintk=serial,ttyS0 pci=off i8042.noaux i8042.nomux i8042.dumbkbd";

/// The kernel command line under the QEMU engine's `pc` machine (which has PCI and a full i8042).
pub fn qemu_cmdline(extra: Option<&str>) -> String {
    join_args(&[COMMON_ARGS], extra)
}

fn join_args(base: &[&str], extra: Option<&str>) -> String {
    let mut c = base.join(" ");
    if let Some(e) = extra.filter(|e| !e.trim().is_empty()) {
        c.push(' ');
        c.push_str(e.trim());
    }
    c
}
