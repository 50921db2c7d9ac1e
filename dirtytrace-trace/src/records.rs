//! The records a trace is made of. The journal, the Parquet tables, the writer and the reader
//! all speak these types; nothing here knows how a trace was recorded.

use crate::units::PAGE_SIZE;
use serde::{Deserialize, Serialize};

/// One row of `rates.parquet`: one harvest interval (`schemas/rates.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntervalRow {
    /// 0, 1, 2, … (a recovered trace may lack the intervals of a damaged journal region).
    pub interval: u64,
    /// When the previous harvest began, in seconds since the recording started.
    pub t_start_s: f64,
    /// When this interval's harvest began, in seconds since the recording started.
    pub t_end_s: f64,
    /// `t_end_s - t_start_s`.
    pub duration_s: f64,
    /// A last interval cut short by the end of the recording.
    pub partial: bool,
    /// Distinct pages dirtied in the interval.
    pub dirty_pages: u64,
    /// `dirty_pages × page_size`.
    pub dirty_bytes: u64,
    /// `dirty_bytes / duration_s`.
    pub dirty_rate_bytes_per_s: f64,
    /// Pages dirtied for the first time in the trace.
    pub new_pages: u64,
    /// Distinct pages dirtied from the start up to this interval.
    pub distinct_pages_total: u64,
    /// Distinct bytes dirtied by the intervals ending within the last working-set window.
    pub working_set_memory_bytes: u64,
    /// vCPU CPU time over the interval's length, summed over vCPUs (1.0 = one core).
    pub cpu_util: f64,
    /// The same, per vCPU.
    pub cpu_util_per_vcpu: Vec<f64>,
    /// The guest's phase at the interval's end.
    pub phase: String,
    /// The manifest's `trace_id`.
    pub trace_id: String,
    /// SimGrid's `ramsize`: guest RAM in bytes.
    pub ramsize_bytes: u64,
    /// SimGrid's migration speed, bytes per second.
    pub migration_speed_bytes_per_s: f64,
    /// SimGrid's dirty-page intensity; `None` where the vCPUs did no work.
    pub dp_intensity: Option<f64>,
    /// How long after its deadline the harvest began, in seconds.
    pub harvest_lateness_s: f64,
    /// Time inside `KVM_GET_DIRTY_LOG`, all slots, in seconds.
    pub harvest_ioctl_s: f64,
    /// Per vCPU, the guest's progress word read just before the harvest.
    pub guest_progress_before: Vec<u64>,
    /// Per vCPU, the guest's progress word read just after the harvest.
    pub guest_progress_after: Vec<u64>,
}

/// How a slot's bitmap is stored (`schemas/bitmaps.md`, `encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encoding {
    /// zstd of the raw bitmap: little-endian u64 words, KVM's layout.
    Zstd,
    /// zstd of the dirty pages' slot-relative numbers as unsigned LEB128 varints: the first
    /// page, then each page's distance from the one before (format version 2).
    VarintGaps,
}

impl Encoding {
    /// Every encoding, in journal-code order.
    pub const ALL: [Encoding; 2] = [Encoding::Zstd, Encoding::VarintGaps];

    /// The name in `bitmaps.parquet`'s `encoding` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Zstd => "zstd",
            Encoding::VarintGaps => "varint-gaps",
        }
    }

    /// The encoding a column value names, if this dirtytrace knows it.
    pub fn parse(s: &str) -> Option<Encoding> {
        Encoding::ALL.into_iter().find(|e| e.as_str() == s)
    }

    /// The byte that stands for it in the journal.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The encoding a journal byte stands for, if this dirtytrace knows it.
    pub fn from_code(c: u8) -> Option<Encoding> {
        Encoding::ALL.into_iter().find(|e| e.code() == c)
    }

    /// The first `format_version` that has it.
    pub fn since_version(self) -> u32 {
        match self {
            Encoding::Zstd => 1,
            Encoding::VarintGaps => 2,
        }
    }
}

/// One slot's compressed bitmap for one interval: a row of `bitmaps.parquet`, without the
/// interval number.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotBlob {
    /// The memory slot (`manifest.json` `slots`).
    pub slot: u32,
    /// Guest page number of the slot's first page.
    pub first_page: u64,
    /// Pages in the slot.
    pub num_pages: u64,
    /// How `data` is stored.
    pub encoding: Encoding,
    /// Length of `data` once decompressed: for `zstd` the raw bitmap's,
    /// `ceil(num_pages / 64) × 8`; for `varint-gaps` the gap stream's, never more than that.
    pub raw_bytes: u64,
    /// Set bits in the bitmap.
    pub dirty_pages: u64,
    /// The encoded bitmap.
    pub data: Vec<u8>,
}

/// A range of guest memory that has a bitmap of its own (a KVM memory slot when recording).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemorySlot {
    /// The slot's number.
    pub slot: u32,
    /// Guest-physical address of its first byte.
    pub guest_phys_addr: u64,
    /// Its length in bytes.
    pub size_bytes: u64,
}

impl MemorySlot {
    /// Guest page number of the slot's first page.
    pub fn first_page(&self) -> u64 {
        self.guest_phys_addr / PAGE_SIZE
    }

    /// Pages in the slot.
    pub fn num_pages(&self) -> u64 {
        self.size_bytes / PAGE_SIZE
    }

    /// Bytes of the slot's raw bitmap: one bit per page, in whole u64 words.
    pub fn bitmap_bytes(&self) -> u64 {
        self.num_pages().div_ceil(64) * 8
    }
}

/// `count` pages from guest page number `first`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRange {
    /// The first page's number.
    pub first: u64,
    /// How many pages.
    pub count: u64,
}

/// One line of `guest_log.jsonl`: something the guest reported while it ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestEvent {
    /// Seconds since the recording started.
    pub t_s: f64,
    /// The vCPU that reported it, where known.
    pub vcpu: Option<u32>,
    /// `phase`, `workload_start`, `workload_end`, `done`, `panic` or `note`.
    pub kind: String,
    /// The phase's name, or what the event is.
    pub name: String,
    /// Details that depend on the kind.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
}

/// The scheduling policy the sampler thread ran under (`manifest.json` `sampler.policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedPolicy {
    /// SCHED_FIFO: real-time priority.
    Fifo,
    /// SCHED_OTHER: normal scheduling.
    Other,
}

impl std::fmt::Display for SchedPolicy {
    /// The policy as `manifest.json` writes it (`fifo`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        super::write_serde_name(f, self)
    }
}

/// How the sampler thread was scheduled (`manifest.json` `sampler`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerScheduling {
    /// What `--realtime` asked for: `auto`, `on` or `off`.
    pub requested: String,
    /// What the sampler thread got.
    pub policy: SchedPolicy,
    /// Its SCHED_FIFO priority; 0 under `other`.
    pub priority: u32,
    /// The most it woke before each deadline to spin on the clock, in µs (0: never).
    pub spin_us: u64,
    /// The CPU it and the trace writer were kept on, away from the vCPUs (a real-time sampler
    /// where there were more CPUs than vCPUs); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u32>,
}
