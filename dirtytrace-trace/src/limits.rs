//! What a reader accepts, so that a lying size field can never make it allocate or loop
//! without bound. `schemas/trace.md` (*Limits*) documents these values.

use crate::units::{GIB, MIB};

/// The largest guest a trace may describe: 1 TiB. Readers keep a few bytes of state per page,
/// so this bounds their memory.
pub const MAX_GUEST_BYTES: u64 = 1024 * GIB;
/// Memory slots per trace.
pub const MAX_SLOTS: usize = 64;
/// vCPUs per trace.
pub const MAX_VCPUS: u32 = 1024;
/// `manifest.json`'s size.
pub const MAX_MANIFEST_BYTES: u64 = 64 * MIB;
/// `guest_log.jsonl`'s size, and one line of it.
pub const MAX_GUEST_LOG_BYTES: u64 = 256 * MIB;
/// One line of `guest_log.jsonl`.
pub const MAX_GUEST_LOG_LINE: usize = MIB as usize;
/// A phase name or a `trace_id`.
pub const MAX_NAME_BYTES: usize = 4096;
/// One journal frame's payload: a row and one compressed bitmap per slot.
pub const MAX_FRAME_BYTES: u64 = 256 * MIB;
/// The longest harvest interval a trace may claim, in seconds.
pub const MAX_INTERVAL_S: f64 = 3600.0;
/// The highest migration speed, in bytes per second (as `units::MAX_RATE_BYTES_PER_S`).
pub const MAX_SPEED_BYTES_PER_S: f64 = crate::units::MAX_RATE_BYTES_PER_S;
/// The latest time a trace may hold, in seconds since its start: ten years, the longest
/// workload a spec may describe (`record --duration` stops sooner: at most 366 days,
/// `record::MAX_RECORD_DURATION`).
pub const MAX_TRACE_S: f64 = crate::units::MAX_DURATION.as_secs_f64();
/// The shortest interval a trace may hold, in seconds: one tick of the nanosecond clock the
/// recorder reads.
pub const MIN_INTERVAL_LENGTH_S: f64 = 1e-9;
