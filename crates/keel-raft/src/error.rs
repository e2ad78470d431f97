use thiserror::Error;

use crate::types::{GroupId, Index, NodeId};

/// Why the storage under the raft core could not answer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StorageError {
    /// The entry was compacted into a snapshot; the follower needs the snapshot.
    #[error("entry {0} was compacted into a snapshot")]
    Compacted(Index),
    /// The entry is past the end of the stored log.
    #[error("entry {0} is past the end of the log")]
    Unavailable(Index),
    /// The snapshot at this index is no longer held (a newer one replaced it).
    #[error("snapshot at index {0} is gone")]
    SnapshotGone(Index),
    /// The store failed (I/O error, corruption). The node cannot go on.
    #[error("storage failed: {0}")]
    Failed(String),
}

/// Errors of the consensus core. None of them is a panic: input from outside
/// (messages, proposals, notifications) that is wrong gets one of these and
/// leaves the state untouched.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    #[error("invalid raft configuration: {0}")]
    Config(String),
    #[error("message for raft group {got} delivered to group {expected}")]
    WrongGroup { expected: GroupId, got: GroupId },
    #[error("this node is not the leader{}", leader_hint(*.leader))]
    NotLeader { leader: NodeId },
    #[error("leadership transfer to node {0} is in progress; retry once it completes")]
    TransferInProgress(NodeId),
    #[error(
        "{bytes} bytes are proposed but not yet committed (limit {limit}); retry when the cluster catches up"
    )]
    Backpressure { bytes: u64, limit: u64 },
    #[error("a proposal needs at least one record")]
    EmptyProposal,
    #[error("entry of {size} bytes exceeds the maximum message size {limit}")]
    TooLarge { size: u64, limit: u64 },
    #[error("node {0} is not a voter of this group")]
    NotAVoter(NodeId),
    #[error("invalid message from node {from}: {reason}")]
    InvalidMessage { from: NodeId, reason: String },
    #[error(
        "a configuration change is in progress (entry {0} not yet committed); retry once it completes"
    )]
    ConfChangeInProgress(Index),
    #[error("invalid configuration change: {0}")]
    InvalidConfChange(String),
    #[error(
        "learner {id} is behind ({matched} of {last}); retry once it catches up, or ask to wait"
    )]
    LearnerLagging {
        id: NodeId,
        matched: Index,
        last: Index,
    },
    #[error("persistence notification {got} is ahead of the last issued ({issued})")]
    UnknownPersist { got: u64, issued: u64 },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

fn leader_hint(leader: NodeId) -> String {
    if leader == crate::types::NONE {
        "; no leader is known yet, retry shortly".to_string()
    } else {
        format!("; node {leader} is")
    }
}
