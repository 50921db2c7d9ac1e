//! dirtytrace: record how fast a VM dirties its memory, and turn that into datasets that
//! live-migration simulators use.
//!
//! Data flows one way: [`guest`] → [`vmm`] → [`sampler`] → [`trace`] → [`analysis`].

pub mod analysis;
pub mod bench;
pub mod clock;
pub mod doctor;
pub mod events;
pub mod guest;
pub mod pagestats;
pub mod record;
pub mod report;
pub mod sampler;
pub mod trace;
pub mod units;
pub mod vmm;
