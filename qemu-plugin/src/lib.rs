//! dirtytrace's QEMU plugin: it makes guest RAM write-tracked, and does nothing else.
//!
//! At the first vCPU's creation (before the guest runs) it finds guest RAM in
//! `/proc/self/maps` (the `memory-backend-memfd` mapping of the size dirtytrace named), creates
//! a userfaultfd with asynchronous write-protection, registers the range and write-protects
//! it. From then on every first write to a page takes one fault that the kernel resolves by
//! itself, marking the page written; dirtytrace reads and re-arms those marks from outside
//! with `PAGEMAP_SCAN` on `/proc/QEMU/pagemap`. The plugin registers no translation or memory
//! callbacks, so the guest's code runs as fast as untracked TCG, apart from those faults.
//!
//! Arguments (`-plugin FILE,fd=N,size=BYTES,id=NAME`):
//! - `fd`: a pipe inherited from dirtytrace; the plugin writes one line to it and closes it:
//!   `ok START LEN MODE` (the host range, hex and decimal, and `user` or `all` for which
//!   faults the userfaultfd sees) or `error WHY`;
//! - `size`: guest RAM in bytes, the mapping's exact length;
//! - `id`: the memory backend's id, which newer QEMUs use as the memfd's name.
//!
//! - `cut`, `cutfd`, `ackfd` (all three or none): cut intervals in guest time (`record --clock
//!   guest`). QEMU runs with `-icount shift=0`, so guest time is QEMU's virtual clock: one
//!   nanosecond per instruction, plus the jumps of idle time. The plugin then calls back before
//!   every translation block, reads the exact guest time at its first instruction (see
//!   [`ffi::guest_time`]), and where the next deadline falls inside the block, before each of its
//!   instructions too (every instruction has a callback; outside such blocks it returns at
//!   once); at the first instruction at or after each multiple of `cut` nanoseconds writes the deadline, the
//!   guest time and the instruction count (three little-endian u64) to `cutfd` and waits for
//!   one byte on `ackfd`: dirtytrace harvests while the vCPU waits. The instruction where a
//!   deadline falls is the same in every replay of a recorded execution, whatever translation
//!   blocks QEMU made, so the cut is too. Once `ackfd` closes, it cuts no more.
//!
//! With `cut`, the report line gains a fifth field, the address (hex) in QEMU's memory of two
//! u64, the guest time and the instruction count at the latest block's start (or, in a block
//! where a deadline falls, the latest instruction), which dirtytrace reads for the final, partial
//! interval.
//!
//! It never write-protects a mapping that is not exactly one guest-RAM memfd of that size,
//! and on any failure it says why and ends QEMU, so that no run goes on untracked.

#![deny(clippy::undocumented_unsafe_blocks)]

mod ffi;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// What dirtytrace told the plugin.
#[derive(Debug)]
struct Config {
    report_fd: i32,
    ram_size: u64,
    backend_id: Option<String>,
    cut: Option<CutConfig>,
}

/// Guest-time cuts: every `interval_ns` of guest time, a message on `cut_fd`, then a wait for
/// one byte on `ack_fd`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct CutConfig {
    interval_ns: u64,
    cut_fd: i32,
    ack_fd: i32,
}

/// The next deadline in guest nanoseconds; `u64::MAX` once cutting has stopped.
static NEXT_CUT: AtomicU64 = AtomicU64::new(0);
/// The guest time and the instruction count at the latest block start or armed instruction (their address is
/// reported to dirtytrace, which reads them at the end).
static GUEST_NOW: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
/// Whether a deadline may fall inside the block running now: only then do the instruction
/// callbacks read the guest time (set by each block's callback, before its instructions run).
static BLOCK_ARMED: AtomicBool = AtomicBool::new(false);
/// Serialises cuts (there is one vCPU; this only keeps the slow path sound).
static CUTTING: Mutex<()> = Mutex::new(());

static CONFIG: OnceLock<Config> = OnceLock::new();
static ARMED: AtomicBool = AtomicBool::new(false);

/// Exit status of QEMU when the plugin cannot track guest RAM.
pub(crate) const SETUP_FAILED: i32 = 70;

fn parse_args(args: &[String]) -> Result<Config, String> {
    let (mut fd, mut size, mut id) = (None, None, None);
    let (mut cut, mut cut_fd, mut ack_fd) = (None, None, None);
    let num = |k: &str, v: &str| v.parse::<u64>().map_err(|_| format!("{k}={v}: not a whole number"));
    for a in args {
        let (k, v) = a.split_once('=').ok_or_else(|| format!("argument `{a}` is not key=value"))?;
        match k {
            "fd" => fd = Some(v.parse::<i32>().map_err(|_| format!("fd={v}: not a file descriptor"))?),
            "size" => size = Some(v.parse::<u64>().map_err(|_| format!("size={v}: not a byte count"))?),
            "id" => id = Some(v.to_string()),
            "cut" => cut = Some(num(k, v)?),
            "cutfd" => cut_fd = Some(num(k, v)? as i32),
            "ackfd" => ack_fd = Some(num(k, v)? as i32),
            _ => return Err(format!("unknown argument `{k}` (known: fd, size, id, cut, cutfd, ackfd)")),
        }
    }
    let cut = match (cut, cut_fd, ack_fd) {
        (None, None, None) => None,
        (Some(interval_ns), Some(cut_fd), Some(ack_fd)) if interval_ns > 0 => {
            Some(CutConfig { interval_ns, cut_fd, ack_fd })
        }
        _ => return Err("cut=NS (greater than 0), cutfd=N and ackfd=N go together".into()),
    };
    match (fd, size) {
        (Some(report_fd), Some(ram_size)) if ram_size > 0 => Ok(Config { report_fd, ram_size, backend_id: id, cut }),
        _ => Err("needs fd=N and size=BYTES (greater than 0)".into()),
    }
}

/// The one mapping of guest RAM: a memfd backend's mapping of exactly `size` bytes.
fn find_guest_ram(maps: &str, size: u64, id: Option<&str>) -> Result<(u64, u64), String> {
    let mut found = Vec::new();
    let mut memfds = Vec::new();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(_perms), Some(_off), Some(_dev), Some(_inode)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let path: String = f.collect::<Vec<_>>().join(" ");
        let Some(name) = path.strip_prefix("/memfd:") else { continue };
        let name = name.trim_end_matches(" (deleted)");
        let Some((a, b)) = range.split_once('-') else { continue };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else { continue };
        memfds.push(format!("{name} ({} bytes)", end - start));
        let ours = name == "memory-backend-memfd" || Some(name) == id;
        if ours && end - start == size {
            found.push((start, end - start));
        }
    }
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(format!(
            "no memory-backend-memfd mapping of {size} bytes in /proc/self/maps (memfd mappings seen: {})",
            if memfds.is_empty() { "none".to_string() } else { memfds.join(", ") }
        )),
        many => Err(format!("{} mappings of guest RAM's size and name: cannot tell which is guest RAM", many.len())),
    }
}

/// Finds guest RAM and write-protects it; the line to report.
fn arm(cfg: &Config) -> String {
    let maps = match std::fs::read_to_string("/proc/self/maps") {
        Ok(m) => m,
        Err(e) => return format!("error cannot read /proc/self/maps: {e}"),
    };
    let (start, len) = match find_guest_ram(&maps, cfg.ram_size, cfg.backend_id.as_deref()) {
        Ok(r) => r,
        Err(e) => return format!("error {e}"),
    };
    match ffi::write_protect_async(start, len) {
        Ok(mode) if cfg.cut.is_some() => format!("ok {start:x} {len} {mode} {:x}", GUEST_NOW.as_ptr() as usize),
        Ok(mode) => format!("ok {start:x} {len} {mode}"),
        Err(e) => format!("error {e}"),
    }
}

/// At installation: with guest-time cuts, asks for a callback before every block and instruction.
fn install(cfg: Config) -> Result<(), String> {
    let cut = cfg.cut;
    CONFIG.set(cfg).map_err(|_| "installed twice".to_string())?;
    if let Some(cut) = cut {
        // The first interval ends at `cut` ns of guest time, and holds what QEMU wrote
        // before the guest's first instruction too.
        NEXT_CUT.store(cut.interval_ns, Ordering::Relaxed);
        ffi::instrument_instructions()?;
    }
    Ok(())
}

/// Before every translation block (guest-time cuts only): the guest time and the instruction
/// count at its first instruction, and its length. The guest time advances one nanosecond per
/// instruction within a block (idle time passes between blocks, never inside one), so the
/// block's last instruction is at `guest_ns + n - 1`: only if that reaches the next deadline
/// may one of its instructions be the cut, and only then are its instruction callbacks armed.
/// A deadline passed already (idle time jumped over it) is cut at the block's first
/// instruction, as before every instruction.
fn on_block(guest_ns: u64, icount: u64, n: u64) {
    GUEST_NOW[0].store(guest_ns, Ordering::Relaxed);
    GUEST_NOW[1].store(icount, Ordering::Relaxed);
    // One instruction of margin: arming too often costs time, never exactness.
    BLOCK_ARMED.store(guest_ns.saturating_add(n) >= NEXT_CUT.load(Ordering::Relaxed), Ordering::Relaxed);
}

/// Whether the running block's instruction callbacks must look at the guest time.
fn block_armed() -> bool {
    BLOCK_ARMED.load(Ordering::Relaxed)
}

/// Before every instruction of an armed block (guest-time cuts only): the guest time there, and
/// the number of instructions executed before it.
fn on_instruction(guest_ns: u64, icount: u64) {
    GUEST_NOW[0].store(guest_ns, Ordering::Relaxed);
    GUEST_NOW[1].store(icount, Ordering::Relaxed);
    if guest_ns < NEXT_CUT.load(Ordering::Relaxed) {
        return;
    }
    let Some(cut) = CONFIG.get().and_then(|c| c.cut) else { return };
    let _one = CUTTING.lock().unwrap_or_else(|e| e.into_inner());
    cut_deadlines(cut, guest_ns, icount);
}

/// Writes one cut and waits for dirtytrace to release it; false once dirtytrace is done with
/// cuts (or gone).
fn send_cut(cut: CutConfig, deadline: u64, guest_ns: u64, icount: u64) -> bool {
    let mut msg = [0u8; 24];
    msg[..8].copy_from_slice(&deadline.to_le_bytes());
    msg[8..16].copy_from_slice(&guest_ns.to_le_bytes());
    msg[16..].copy_from_slice(&icount.to_le_bytes());
    ffi::write_all(cut.cut_fd, &msg) && ffi::read_byte(cut.ack_fd)
}

/// One cut for every deadline passed (idle time jumps over several): one interval each.
fn cut_deadlines(cut: CutConfig, guest_ns: u64, icount: u64) {
    loop {
        let deadline = NEXT_CUT.load(Ordering::Relaxed);
        if guest_ns < deadline {
            break;
        }
        // dirtytrace is done with cuts (or gone): run on without them.
        if !send_cut(cut, deadline, guest_ns, icount) {
            NEXT_CUT.store(u64::MAX, Ordering::Relaxed);
            break;
        }
        NEXT_CUT.store(deadline.saturating_add(cut.interval_ns), Ordering::Relaxed);
    }
}

/// Called once per vCPU as it is created; the first one arms the tracking.
fn on_vcpu_init() {
    if ARMED.swap(true, Ordering::SeqCst) {
        return;
    }
    let Some(cfg) = CONFIG.get() else { return };
    let line = arm(cfg);
    let failed = line.starts_with("error");
    ffi::report(cfg.report_fd, &line);
    if failed {
        eprintln!("dirtytrace plugin: {}", line.trim_start_matches("error "));
        std::process::exit(SETUP_FAILED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0000000-55d0c0100000 r-xp 00000000 00:1f 123 /usr/bin/qemu-system-x86_64
7f0000000000-7f0040000000 rw-s 00000000 00:01 77 /memfd:memory-backend-memfd (deleted)
7f0040000000-7f0040200000 rw-s 00000000 00:01 78 /memfd:pc.bios (deleted)
7f0050000000-7f0050001000 rw-p 00000000 00:00 0
";

    #[test]
    fn guest_ram_is_the_memfd_of_exactly_its_size() {
        assert_eq!(find_guest_ram(MAPS, 1 << 30, None), Ok((0x7f00_0000_0000, 1 << 30)));
        let e = find_guest_ram(MAPS, 2 << 30, None).unwrap_err();
        assert!(e.contains("memory-backend-memfd (1073741824 bytes)"), "{e}");
        assert!(find_guest_ram(MAPS, 0x200000, None).is_err(), "a memfd of another name is never guest RAM");
        assert_eq!(find_guest_ram(MAPS, 0x200000, Some("pc.bios")), Ok((0x7f00_4000_0000, 0x200000)));
    }

    #[test]
    fn arguments_are_key_value_and_both_needed() {
        let a = |v: &[&str]| parse_args(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let c = a(&["fd=5", "size=4096", "id=ram"]).unwrap();
        assert_eq!((c.report_fd, c.ram_size, c.backend_id.as_deref()), (5, 4096, Some("ram")));
        assert!(a(&["fd=5"]).is_err());
        assert!(a(&["fd=5", "size=0"]).is_err());
        assert!(a(&["fd=x", "size=1"]).unwrap_err().contains("fd=x"));
        assert!(a(&["bogus"]).is_err());
        assert_eq!(c.cut, None);
        let c = a(&["fd=5", "size=4096", "cut=1000000", "cutfd=6", "ackfd=7"]).unwrap();
        assert_eq!(c.cut, Some(CutConfig { interval_ns: 1_000_000, cut_fd: 6, ack_fd: 7 }));
        assert!(a(&["fd=5", "size=4096", "cut=1000000", "cutfd=6"]).unwrap_err().contains("go together"));
        assert!(a(&["fd=5", "size=4096", "cut=0", "cutfd=6", "ackfd=7"]).is_err());
    }
}
