//! What one simulation run does: cluster size, fault mix, durations, and an
//! optional rule broken on purpose.

use std::fmt;

/// Which faults the nemesis injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FaultMix {
    /// A healthy network with random delays only.
    None,
    /// Message loss, duplication and reordering.
    Lossy,
    /// Symmetric and one-way partitions, isolated leaders, bridges, rings.
    Partition,
    /// Crashes (losing what was not persisted) and restarts, pauses.
    Crash,
    /// Fast leader churn: leaders crashed or cut off with a minority every
    /// few hundred milliseconds, so logs diverge across terms (Figure 8).
    Leaders,
    /// The shape of the Raft paper's Figure 8, steered with random timing: a
    /// leader holding uncommitted entries is cut off, the next leader is cut
    /// off right after its election, the first returns while its no-op is
    /// being lost, then the sides swap.
    Figure8,
    /// Membership churn (3 to 7 voters from a pool of 7 nodes: learners
    /// added and promoted, voters removed, replaced and demoted, the leader
    /// removed) with snapshots and compaction, under partitions, crashes and
    /// message loss.
    Membership,
    /// Everything at once, plus leadership transfers.
    Mixed,
}

impl FaultMix {
    pub const ALL: [FaultMix; 8] = [
        FaultMix::None,
        FaultMix::Lossy,
        FaultMix::Partition,
        FaultMix::Crash,
        FaultMix::Leaders,
        FaultMix::Figure8,
        FaultMix::Membership,
        FaultMix::Mixed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultMix::None => "none",
            FaultMix::Lossy => "lossy",
            FaultMix::Partition => "partition",
            FaultMix::Crash => "crash",
            FaultMix::Leaders => "leaders",
            FaultMix::Figure8 => "figure8",
            FaultMix::Membership => "membership",
            FaultMix::Mixed => "mixed",
        }
    }
}

/// A safety rule broken on purpose (test-only switches in keel-raft).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Bug {
    /// Commit an entry of an earlier term by counting replicas.
    CommitOldTerm,
    /// Grant votes without the log up-to-date check.
    VoteWithoutLogCheck,
    /// Send vote grants and append acknowledgements before persisting.
    AckBeforePersist,
    /// Let configurations take effect at commit instead of on append.
    ApplyConfAtCommit,
    /// Change voters in one step, without the joint configuration.
    SkipJoint,
}

impl Bug {
    pub fn name(self) -> &'static str {
        match self {
            Bug::CommitOldTerm => "commit-old-term",
            Bug::VoteWithoutLogCheck => "vote-without-log-check",
            Bug::AckBeforePersist => "ack-before-persist",
            Bug::ApplyConfAtCommit => "apply-conf-at-commit",
            Bug::SkipJoint => "skip-joint",
        }
    }
}

#[derive(Debug, Clone)]
pub struct SimOptions {
    pub nodes: usize,
    pub faults: FaultMix,
    /// Simulated milliseconds of the fault phase.
    pub fault_ms: u64,
    /// Simulated milliseconds allowed, after healing, for the cluster to
    /// elect a leader and complete every client's new append.
    pub liveness_ms: u64,
    pub clients: usize,
    pub bug: Option<Bug>,
    /// Print the event trace.
    pub trace: bool,
    /// With `trace`, also print every message delivered.
    pub trace_messages: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            nodes: 3,
            faults: FaultMix::Mixed,
            fault_ms: 10_000,
            liveness_ms: 10_000,
            clients: 4,
            bug: None,
            trace: false,
            trace_messages: false,
        }
    }
}

impl SimOptions {
    /// The command line that replays `seed` exactly.
    pub fn replay_command(&self, seed: u64) -> String {
        let mut s = format!(
            "cargo run --release -p keel-sim -- --seed {seed} --nodes {} --faults {} --fault-ms {} --liveness-ms {} --clients {}",
            self.nodes,
            self.faults.name(),
            self.fault_ms,
            self.liveness_ms,
            self.clients
        );
        if let Some(b) = self.bug {
            s.push_str(&format!(" --bug {}", b.name()));
        }
        s
    }
}

impl fmt::Display for FaultMix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
