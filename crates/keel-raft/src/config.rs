//! Configuration of one raft group member.

use crate::error::Error;
use crate::types::{GroupId, NONE, NodeId};

/// How a leader confirms it may serve a linearizable read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadMode {
    /// ReadIndex: a heartbeat round confirms leadership before every read
    /// batch. Safe under any clock behaviour. The default.
    #[default]
    Safe,
    /// Lease read: serve without a round while a quorum acknowledged the
    /// leader within the last `election_tick - lease_margin_ticks` ticks.
    /// Safe only if tick rates across nodes drift by less than the margin;
    /// requires `check_quorum`.
    Lease,
}

/// Settings of one member of one raft group. Times are counted in ticks: the
/// driver calls `tick()` at a fixed interval of its choosing.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's id; never 0.
    pub id: NodeId,
    /// The raft group this instance belongs to; every message names it.
    pub group: GroupId,
    /// A follower that hears nothing from a leader for a randomized
    /// `election_tick ..< 2 * election_tick` ticks starts an election.
    pub election_tick: u32,
    /// A leader sends heartbeats every `heartbeat_tick` ticks.
    pub heartbeat_tick: u32,
    /// Run a pre-vote round before raising the term (thesis §9.6).
    pub pre_vote: bool,
    /// A leader steps down when it has not heard from a quorum within an
    /// election timeout. (Independently of this, a node that heard a leader
    /// within an election timeout ignores vote requests: leader stickiness.)
    pub check_quorum: bool,
    /// Upper bound on the bytes of entries in one Append message (one entry
    /// larger than this is still sent alone).
    pub max_msg_bytes: u64,
    /// Appends in flight to one follower, in messages.
    pub max_inflight_msgs: usize,
    /// Appends in flight to one follower, in bytes of entries.
    pub max_inflight_bytes: u64,
    /// A leader refuses proposals while more than this many bytes are
    /// proposed but not committed (0 = no limit).
    pub max_uncommitted_bytes: u64,
    /// Bytes of committed entries handed out for applying in one Ready.
    pub max_apply_bytes: u64,
    /// Preferred leaders, most preferred first. A leader hands over to a more
    /// preferred voter once that voter has been caught up and responsive for
    /// `preferred_settle_ticks`.
    pub preferred_leaders: Vec<NodeId>,
    /// How long a preferred node must stay caught up and responsive before a
    /// leader hands over to it (damps flapping). Default `2 * election_tick`.
    pub preferred_settle_ticks: u32,
    /// A preferred node counts as caught up when it is at most this many
    /// entries behind the leader's last index.
    pub preferred_max_lag: u64,
    pub read_mode: ReadMode,
    /// Bytes of snapshot data per chunk sent to a follower.
    pub snapshot_chunk_bytes: usize,
    /// Entries kept in the log behind a snapshot when compacting, so that a
    /// follower a little behind catches up from the log instead of needing
    /// the whole snapshot. See [`Raft::compaction_point`](crate::Raft::compaction_point).
    pub compaction_keep_entries: u64,
    /// A learner counts as caught up (may be promoted) when it is at most
    /// this many entries behind the leader's last index.
    pub learner_max_lag: u64,
    /// How long a change waiting for learners to catch up
    /// ([`LaggingLearner::Wait`](crate::LaggingLearner::Wait)) may wait.
    pub conf_change_wait_ticks: u32,
    /// Safety margin, in ticks, subtracted from the lease (lease reads only).
    pub lease_margin_ticks: u32,
    /// Test-only switches that break rules on purpose.
    #[cfg(feature = "fault-injection")]
    pub knobs: crate::knobs::Knobs,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            id: NONE,
            group: 0,
            election_tick: 10,
            heartbeat_tick: 1,
            pre_vote: true,
            check_quorum: true,
            max_msg_bytes: 1 << 20,
            max_inflight_msgs: 256,
            max_inflight_bytes: 32 << 20,
            max_uncommitted_bytes: 256 << 20,
            max_apply_bytes: 16 << 20,
            preferred_leaders: Vec::new(),
            preferred_settle_ticks: 20,
            preferred_max_lag: 128,
            read_mode: ReadMode::Safe,
            snapshot_chunk_bytes: 1 << 20,
            compaction_keep_entries: 1024,
            learner_max_lag: 128,
            conf_change_wait_ticks: 200,
            lease_margin_ticks: 2,
            #[cfg(feature = "fault-injection")]
            knobs: Default::default(),
        }
    }
}

impl Config {
    /// A default configuration for node `id` of group `group`.
    pub fn new(id: NodeId, group: GroupId) -> Self {
        Config {
            id,
            group,
            ..Default::default()
        }
    }

    /// Checks the settings make sense together.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |s: &str| Err(Error::Config(s.to_string()));
        if self.id == NONE {
            return bad("node id 0 is reserved; pick an id >= 1");
        }
        if self.heartbeat_tick == 0 {
            return bad("heartbeat_tick must be at least 1");
        }
        if self.election_tick <= self.heartbeat_tick {
            return bad("election_tick must be greater than heartbeat_tick");
        }
        if self.max_inflight_msgs == 0 || self.max_inflight_bytes == 0 {
            return bad("max_inflight_msgs and max_inflight_bytes must be at least 1");
        }
        if self.max_msg_bytes == 0 {
            return bad("max_msg_bytes must be at least 1");
        }
        if self.snapshot_chunk_bytes == 0 || self.snapshot_chunk_bytes > keel_format::MAX_BATCH_LEN
        {
            return bad("snapshot_chunk_bytes must be between 1 and 64 MiB");
        }
        if self.read_mode == ReadMode::Lease && !self.check_quorum {
            return bad("lease reads need check_quorum (the lease is the check-quorum window)");
        }
        if self.read_mode == ReadMode::Lease && self.lease_margin_ticks >= self.election_tick {
            return bad("lease_margin_ticks must be smaller than election_tick");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_rejects_nonsense() {
        assert!(Config::new(1, 0).validate().is_ok());
        assert!(Config::new(0, 0).validate().is_err());
        let mut c = Config::new(1, 0);
        c.election_tick = 1;
        assert!(c.validate().is_err());
        let mut c = Config::new(1, 0);
        c.read_mode = ReadMode::Lease;
        c.check_quorum = false;
        assert!(c.validate().is_err());
        let mut c = Config::new(1, 0);
        c.max_inflight_msgs = 0;
        assert!(c.validate().is_err());
    }
}
