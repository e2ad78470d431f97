//! keel-sim: a deterministic simulator of keel-node's group core (the
//! production driver of a raft group) over keel-raft.
//!
//! Several nodes run in one thread, each a `GroupCore` that this crate only
//! drives, following the core's output contract. One seeded RNG decides
//! message delays, losses, duplications and reorderings, partitions,
//! crashes that lose whatever was not reported persisted, slow and full
//! disks, pauses, membership changes, leadership transfers and client
//! operations. Invariants are checked after every event ([`invariants`]
//! and the driver's own), the client history is checked for
//! linearizability at the end ([`history`]), and after the faults heal the
//! cluster must elect a leader and complete every client's next append
//! within a bound.

pub mod history;
pub mod invariants;
pub mod node;
pub mod options;
pub mod world;

pub use options::{Bug, FaultMix, SimOptions};
pub use world::{RunStats, World};

/// Runs one seed. `Err` carries the first violation found.
pub fn run_seed(opts: &SimOptions, seed: u64) -> Result<RunStats, String> {
    World::new(opts.clone(), seed).run()
}
