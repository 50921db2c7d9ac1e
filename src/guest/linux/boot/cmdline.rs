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

/// The kernel command line under the QEMU engine's `pc` machine (which has PCI and a full i8042);
/// on the guest clock, with [`IDLE_AT_END_ARG`].
pub fn qemu_cmdline(extra: Option<&str>, guest_clock: bool) -> String {
    join_args(if guest_clock { &[COMMON_ARGS, IDLE_AT_END_ARG] } else { &[COMMON_ARGS] }, extra)
}

/// Tells dirtytrace's `/init` to idle after the workload's end marker instead of rebooting
/// (`record --clock guest`): the recorder then ends the trace at a guest-time boundary and stops
/// QEMU itself, so that the end falls at the same instruction in every replay.
pub const IDLE_AT_END_ARG: &str = "dirtytrace.end=idle";

fn join_args(base: &[&str], extra: Option<&str>) -> String {
    let mut c = base.join(" ");
    if let Some(e) = extra.filter(|e| !e.trim().is_empty()) {
        c.push(' ');
        c.push_str(e.trim());
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::linux::initramfs::{DISK_INIT, INIT};

    #[test]
    fn the_guest_clock_tells_init_to_idle_after_the_workload() {
        assert!(qemu_cmdline(None, true).ends_with(&format!("rdinit=/init {IDLE_AT_END_ARG}")));
        assert!(!qemu_cmdline(Some("quiet"), false).contains(IDLE_AT_END_ARG));
        // Both inits look for that very argument before they would reboot.
        for init in [INIT, DISK_INIT] {
            let idle = init.find(&format!("grep -qw {IDLE_AT_END_ARG} /proc/cmdline")).expect("init checks the arg");
            assert!(idle > init.find("dt-mark workload_end").unwrap() && idle < init.rfind("reboot -f").unwrap());
        }
    }
}
