//! The guest's serial console protocol: marker lines (`DIRTYTRACE:KIND:VALUE`), the kernel's
//! panic line and its banner. The VMM's UART sink and the QEMU end-to-end tests both feed the
//! console through [`ConsoleParser`], so that the tests check the recorder's own protocol.

use crate::events::GuestLog;

/// Marker lines the guest writes to its serial port; the VMM timestamps each as it arrives.
pub const MARKER_PREFIX: &str = "DIRTYTRACE:";
/// The marker kind `/init` sends when it cannot run the workload; its value says why.
pub const GUEST_ERROR: &str = "guest_error";

/// Longest line kept for parsing; the rest of a longer line is still logged, not parsed.
pub const MAX_LINE: usize = 4096;

/// What one console line means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marker {
    /// `DIRTYTRACE:phase:NAME` (from `dt-phase NAME`).
    Phase(String),
    /// `DIRTYTRACE:workload_start:` (from `/init`, before the script).
    WorkloadStart,
    /// `DIRTYTRACE:workload_end:STATUS` (from `/init`, after the script).
    WorkloadEnd(Option<i32>),
    /// `DIRTYTRACE:guest_error:WHY` (from `/init`, when it cannot run the workload).
    GuestError(String),
    /// Any other `DIRTYTRACE:KIND:VALUE` (from `dt-mark KIND VALUE`).
    Other {
        /// `KIND`.
        kind: String,
        /// `VALUE`.
        value: String,
    },
    /// A line holding `Kernel panic - not syncing`.
    Panic(String),
    /// A line holding `Linux version`.
    Banner(String),
}

impl Marker {
    /// Parses one line (without its `\n`; a trailing `\r` is ignored).
    pub fn parse(line: &str) -> Option<Marker> {
        let text = line.trim_end_matches('\r');
        if let Some(marker) = text.strip_prefix(MARKER_PREFIX) {
            let (kind, value) = marker.split_once(':').unwrap_or((marker, ""));
            return Some(match kind {
                "phase" => Marker::Phase(value.trim().to_string()),
                "workload_start" => Marker::WorkloadStart,
                "workload_end" => Marker::WorkloadEnd(value.trim().parse().ok()),
                GUEST_ERROR => Marker::GuestError(value.trim().to_string()),
                other => Marker::Other { kind: other.to_string(), value: value.to_string() },
            });
        }
        if text.contains("Kernel panic - not syncing") {
            Some(Marker::Panic(text.to_string()))
        } else if text.contains("Linux version") {
            Some(Marker::Banner(text.to_string()))
        } else {
            None
        }
    }
}

/// What a guest's own marker did ([`GuestMarkers::apply`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkerEffect {
    /// Not one of the guest's own kinds: the parser applies it as usual.
    NotMine,
    /// Logged.
    Logged,
    /// The guest waits to be started ([`ConsoleParser::ready`]).
    Ready,
    /// The guest's workload is done ([`ConsoleParser::done`]).
    Done,
    /// The guest cannot go on; the marker's value says why ([`ConsoleParser::failure`]).
    Failed,
}

/// The marker kinds of a guest's own console protocol (the synthetic guest under QEMU), tried
/// before the Linux guest's on every `DIRTYTRACE:KIND:VALUE` line of another kind.
pub trait GuestMarkers: Send + Sync + std::fmt::Debug {
    /// Applies one marker to `log`, or says it is not the guest's.
    fn apply(&self, kind: &str, value: &str, log: &GuestLog) -> MarkerEffect;
}

/// Splits console bytes into lines and turns their markers into [`GuestLog`] events.
#[derive(Debug, Default)]
pub struct ConsoleParser {
    line: Vec<u8>,
    /// The workload's exit status, from its `workload_end` marker.
    pub status: Option<i32>,
    /// The first kernel panic line.
    pub panic: Option<String>,
    /// The guest's own markers, if it has any.
    pub markers: Option<std::sync::Arc<dyn GuestMarkers>>,
    /// The guest said it waits to be started.
    pub ready: bool,
    /// The guest said its workload is done.
    pub done: bool,
    /// The guest said it cannot go on, and why.
    pub failure: Option<String>,
}

impl ConsoleParser {
    /// A parser at the start of a line.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds console bytes; every complete line is parsed and applied to `log`.
    pub fn feed(&mut self, bytes: &[u8], log: &GuestLog) {
        for &b in bytes {
            if b == b'\n' {
                let text = String::from_utf8_lossy(&self.line).into_owned();
                self.line.clear();
                if let Some(m) = Marker::parse(&text) {
                    self.apply(m, log);
                }
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
    }

    /// Records one marker as the recorder does: phases, workload start and end, panics, notes.
    pub fn apply(&mut self, marker: Marker, log: &GuestLog) {
        use serde_json::{json, Value};
        match marker {
            Marker::Phase(name) => log.mark_phase(None, &name, Value::Null),
            Marker::WorkloadStart => {
                log.record(None, "workload_start", "workload_start", Value::Null);
                log.mark_phase(None, "workload", Value::Null);
            }
            Marker::WorkloadEnd(status) => {
                self.status = status;
                log.record(None, "workload_end", "workload_end", json!({ "status": status }));
                log.mark_phase(None, "shutdown", Value::Null);
            }
            Marker::Other { kind, value } => {
                match self.markers.as_ref().map_or(MarkerEffect::NotMine, |m| m.apply(&kind, &value, log)) {
                    MarkerEffect::NotMine => log.record(None, "note", &kind, json!({ "value": value })),
                    MarkerEffect::Logged => {}
                    MarkerEffect::Ready => self.ready = true,
                    MarkerEffect::Done => self.done = true,
                    MarkerEffect::Failed => {
                        log.record(None, "note", &kind, json!({ "value": value }));
                        self.failure.get_or_insert(value);
                    }
                }
            }
            Marker::GuestError(why) => {
                log.record(None, GUEST_ERROR, GUEST_ERROR, json!({ "why": why }));
                self.failure.get_or_insert(why);
            }
            Marker::Panic(line) => {
                log.record(None, "panic", "kernel panic", json!({ "line": line }));
                self.panic.get_or_insert(line);
            }
            Marker::Banner(line) => {
                if log.phase() == "boot" {
                    log.record(None, "note", "kernel banner", json!({ "line": line }));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_disk_init_reports_failures_with_the_marker_the_parser_knows() {
        let call = format!("dt-mark {GUEST_ERROR} ");
        assert!(super::super::initramfs::DISK_INIT.contains(&call));
        assert_eq!(
            Marker::parse(&format!("{MARKER_PREFIX}{GUEST_ERROR}:no disk")),
            Some(Marker::GuestError("no disk".into()))
        );
    }

    #[test]
    fn lines_parse_to_markers() {
        assert_eq!(Marker::parse("DIRTYTRACE:phase: fill \r"), Some(Marker::Phase("fill".into())));
        assert_eq!(Marker::parse("DIRTYTRACE:workload_start:"), Some(Marker::WorkloadStart));
        assert_eq!(Marker::parse("DIRTYTRACE:workload_end:3"), Some(Marker::WorkloadEnd(Some(3))));
        assert_eq!(Marker::parse("DIRTYTRACE:workload_end:x"), Some(Marker::WorkloadEnd(None)));
        assert_eq!(
            Marker::parse("DIRTYTRACE:custom:a:b"),
            Some(Marker::Other { kind: "custom".into(), value: "a:b".into() })
        );
        assert_eq!(
            Marker::parse("[ 0.1] Kernel panic - not syncing: x"),
            Some(Marker::Panic("[ 0.1] Kernel panic - not syncing: x".into()))
        );
        assert_eq!(Marker::parse("hello"), None);
        assert_eq!(Marker::parse(" DIRTYTRACE:phase:x"), None, "markers start the line");
    }

    #[test]
    fn feeding_split_bytes_records_events() {
        let log = GuestLog::new("boot");
        let mut p = ConsoleParser::new();
        p.feed(b"Linux version 6.1\nDIRTYTRACE:workload_st", &log);
        p.feed(b"art:\r\nDIRTYTRACE:phase:a\nDIRTYTRACE:workload_end:7\nunterminated", &log);
        assert_eq!(p.status, Some(7));
        let kinds: Vec<(String, String)> = log.take().0.into_iter().map(|e| (e.kind, e.name)).collect();
        let want = [
            ("note", "kernel banner"),
            ("workload_start", "workload_start"),
            ("phase", "workload"),
            ("phase", "a"),
            ("workload_end", "workload_end"),
            ("phase", "shutdown"),
        ];
        assert_eq!(kinds, want.map(|(a, b)| (a.to_string(), b.to_string())));
    }
}
