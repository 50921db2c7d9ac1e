//! dirtytrace: record how fast a VM dirties its memory, and turn that into datasets that
//! live-migration simulators use.
//!
//! Data flows one way: workload → [`guest`] → engine ([`vmm`], or [`qemu`], behind
//! [`engine`]) → [`sampler`] → [`accounting`] →
//! [`trace`] (format: writer, journal, reader) → [`analysis`]. [`record`] wires the recording
//! half together; [`dataset`] records parameter grids into indexed datasets of traces.
//! `docs/DESIGN.md` draws the picture and lists the non-goals.

#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

pub mod accounting;
pub mod analysis;
pub mod bench;
pub mod clock;
pub mod cpus;
pub mod dataset;
pub mod disk;
pub mod doctor;
pub mod engine;
pub mod errors;
pub mod events;
pub mod execution;
pub mod guest;
pub mod options;
pub mod pagestats;
pub mod qemu;
pub mod record;
pub mod report;
pub mod sampler;
/// The trace format, its own crate so that a reader of traces need not build the recorder.
pub use dirtytrace_trace as trace;
pub use dirtytrace_trace::{files, stats, units};
pub mod vmm;
