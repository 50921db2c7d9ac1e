//! Guest time under the QEMU engine (`record --clock guest`): QEMU runs under its instruction
//! counter (`-icount shift=0,sleep=off`), so the guest's clock is one nanosecond per
//! instruction plus the idle time QEMU jumps over, and dirtytrace's plugin stops the vCPU at the
//! first instruction at or after each deadline of guest time while the sampler harvests. With
//! an execution log (`rr=record` or `rr=replay`), QEMU records or replays everything the guest
//! was given, so a replay cuts at the same instructions and harvests the same pages.
//!
//! The plugin reads QEMU 7.2's instruction counter through that version's internal layout:
//! guest time works with QEMU 7.2 only, and is refused under any other.

use super::QemuError;
use crate::engine::GuestCut;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// `-icount shift`: 2^0 ns of guest time per instruction.
pub const ICOUNT_SHIFT: u32 = 0;
/// Instructions per second of guest time at [`ICOUNT_SHIFT`].
pub const INSTRUCTIONS_PER_GUEST_S: f64 = 1e9;
/// The QEMU (major, minor) whose internals the plugin's guest clock reads.
pub const SUPPORTED_QEMU: (u32, u32) = (7, 2);
/// QEMU's record/replay log of one execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecutionLog {
    /// Record the execution into this file (`rr=record`).
    Record(PathBuf),
    /// Replay the execution recorded in this file (`rr=replay`).
    Replay(PathBuf),
}

/// Guest-time cuts: every `interval_ns` of guest time, optionally recording or replaying the
/// execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestClock {
    /// Guest time between cuts, in nanoseconds.
    pub interval_ns: u64,
    /// QEMU's record/replay log, if any.
    pub log: Option<ExecutionLog>,
}

impl GuestClock {
    /// QEMU's `-icount` value.
    pub fn icount(&self) -> String {
        let mut s = format!("shift={ICOUNT_SHIFT},sleep=off");
        match &self.log {
            None => {}
            Some(ExecutionLog::Record(p)) => s += &format!(",rr=record,rrfile={}", p.display()),
            Some(ExecutionLog::Replay(p)) => s += &format!(",rr=replay,rrfile={}", p.display()),
        }
        s
    }

    /// The arguments QEMU gets for it: the instruction counter, and a real-time clock that
    /// follows the guest's (`-rtc clock=vm`).
    pub fn qemu_args(&self) -> Vec<String> {
        vec!["-icount".into(), self.icount(), "-rtc".into(), "clock=vm".into()]
    }
}

/// Refuses a QEMU whose internals the plugin's guest clock does not know.
pub fn check_version(major: u32, minor: u32, version: &str) -> Result<(), QemuError> {
    if (major, minor) == SUPPORTED_QEMU {
        return Ok(());
    }
    Err(QemuError::Unsupported(format!(
        "--clock guest needs QEMU {}.{} (dirtytrace's plugin reads that version's instruction counter); this is QEMU \
         {version}: record with --clock host, or install QEMU 7.2 (Debian 12's qemu-system-x86)",
        SUPPORTED_QEMU.0, SUPPORTED_QEMU.1
    )))
}

/// The two pipes between the plugin and the sampler: the plugin writes each cut, then waits for
/// one byte back.
#[derive(Debug)]
pub struct CutPipes {
    cuts: File,
    acks: Mutex<Option<File>>,
    /// The plugin's ends, until QEMU has them.
    child: Option<(OwnedFd, OwnedFd)>,
}

impl CutPipes {
    /// Makes both pipes, closed on exec unless the child is told to keep its ends.
    pub fn new() -> std::io::Result<CutPipes> {
        let flags = nix::fcntl::OFlag::O_CLOEXEC;
        let (cut_read, cut_write) = nix::unistd::pipe2(flags).map_err(std::io::Error::from)?;
        let (ack_read, ack_write) = nix::unistd::pipe2(flags).map_err(std::io::Error::from)?;
        Ok(CutPipes {
            cuts: File::from(cut_read),
            acks: Mutex::new(Some(File::from(ack_write))),
            child: Some((cut_write, ack_read)),
        })
    }

    /// The fds QEMU inherits.
    pub fn child_fds(&self) -> Vec<RawFd> {
        self.child.as_ref().map_or(Vec::new(), |(c, a)| vec![c.as_raw_fd(), a.as_raw_fd()])
    }

    /// The plugin's arguments for cuts every `interval_ns` of guest time.
    pub fn plugin_args(&self, interval_ns: u64) -> String {
        match &self.child {
            Some((c, a)) => format!(",cut={interval_ns},cutfd={},ackfd={}", c.as_raw_fd(), a.as_raw_fd()),
            None => String::new(),
        }
    }

    /// Closes the plugin's ends here, once QEMU has them.
    pub fn started(&mut self) {
        self.child = None;
    }

    /// The next cut, waiting at most `timeout`.
    pub fn wait(&self, timeout: Duration) -> std::io::Result<Option<GuestCut>> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.cuts.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let mut msg = [0u8; 24];
        match (&self.cuts).read_exact(&mut msg) {
            Ok(()) => {}
            // QEMU is gone: no more cuts.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let word = |i: usize| u64::from_le_bytes(msg[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        Ok(Some(GuestCut { deadline_ns: word(0), guest_ns: word(1), instructions: word(2) }))
    }

    /// Lets the vCPU waiting at a cut run on.
    pub fn release(&self) {
        if let Some(acks) = self.acks.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            let _ = acks.write_all(&[1]);
        }
    }

    /// No more cuts: the plugin runs on without waiting (it sees the pipe's end).
    pub fn close(&self) {
        self.acks.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_icount_argument_says_what_to_do_with_the_log() {
        let c = GuestClock { interval_ns: 1, log: None };
        assert_eq!(c.icount(), "shift=0,sleep=off");
        let c = GuestClock { interval_ns: 1, log: Some(ExecutionLog::Record("/t/x.rr".into())) };
        assert_eq!(c.icount(), "shift=0,sleep=off,rr=record,rrfile=/t/x.rr");
        let c = GuestClock { interval_ns: 1, log: Some(ExecutionLog::Replay("/t/x.rr".into())) };
        assert_eq!(c.qemu_args(), ["-icount", "shift=0,sleep=off,rr=replay,rrfile=/t/x.rr", "-rtc", "clock=vm"]);
        assert!(check_version(7, 2, "7.2.22").is_ok());
        let e = check_version(8, 2, "8.2.2").unwrap_err().to_string();
        assert!(e.contains("QEMU 8.2.2") && e.contains("--clock host"), "{e}");
    }

    #[test]
    fn a_cut_travels_as_three_words_and_waits_for_its_release() {
        let mut p = CutPipes::new().unwrap();
        let (c, a) = p.child.take().unwrap();
        let mut plugin_side = File::from(c);
        let msg: Vec<u8> = [100u64, 130, 90].iter().flat_map(|w| w.to_le_bytes()).collect();
        plugin_side.write_all(&msg).unwrap();
        let cut = p.wait(Duration::from_secs(5)).unwrap().unwrap();
        assert_eq!(cut, GuestCut { deadline_ns: 100, guest_ns: 130, instructions: 90 });
        assert_eq!(p.wait(Duration::from_millis(1)).unwrap(), None, "nothing more yet");
        p.release();
        let mut b = [0u8; 1];
        let mut ack = File::from(a);
        ack.read_exact(&mut b).unwrap();
        p.close();
        assert_eq!(ack.read(&mut b).unwrap(), 0, "closed: the plugin sees the end");
        drop(plugin_side);
        assert_eq!(p.wait(Duration::from_secs(5)).unwrap(), None, "QEMU gone: no cut");
    }
}
