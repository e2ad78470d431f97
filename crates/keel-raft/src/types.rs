//! Identifiers and the small value types shared by every module.

/// A node in the cluster. `0` is reserved for "none".
pub type NodeId = u64;
/// A raft group hosted by a node (multi-raft: one group per log/partition).
pub type GroupId = u64;
/// A raft term.
pub type Term = u64;
/// A raft log index. Entries start at 1; 0 means "before the log".
pub type Index = u64;

/// "No node": no vote cast, no leader known.
pub const NONE: NodeId = 0;

/// The first term no cluster reaches: one election per nanosecond would
/// take 292 years to get here. A message that claims this term or a later
/// one is forged or corrupt and is refused, so a term never wraps (a term
/// that wrapped to 0 would leave a cluster leaderless for good: every node
/// would have persisted the larger one). A hard state at or past it is
/// refused at start.
pub const MAX_TERM: Term = 1 << 63;

/// What must be durable before a node may speak in a term: the term itself and
/// the vote it cast in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct HardState {
    pub term: Term,
    /// The node voted for in `term`, or [`NONE`].
    pub vote: NodeId,
}

/// The role a node plays in its current term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Follower,
    /// Running a pre-vote round (thesis §9.6); its term has not moved.
    PreCandidate,
    Candidate,
    Leader,
}

/// Volatile state the driver may want to observe when it changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoftState {
    pub role: Role,
    /// The leader this node follows (itself when leading), or [`NONE`].
    pub leader: NodeId,
    pub term: Term,
}
