//! The messages raft peers exchange. Every message names its group so that
//! one connection between two nodes can carry every raft group (multi-raft).

use crate::Entry;
use crate::snapshot::SnapshotChunk;
use crate::types::{GroupId, Index, NodeId, Term};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub group: GroupId,
    pub from: NodeId,
    pub to: NodeId,
    /// The sender's term (for a pre-vote request: the term it would run in;
    /// for a granted pre-vote response: the term of the request).
    pub term: Term,
    pub body: MessageBody,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageBody {
    /// Leader → follower: entries after `prev_index`, and the leader's commit.
    Append(Append),
    /// Follower → leader.
    AppendResponse(AppendResponse),
    /// Leader → follower: keep-alive carrying a commit index (never above the
    /// follower's known match) and the current read round.
    Heartbeat {
        commit: Index,
        read_seq: u64,
    },
    HeartbeatResponse {
        read_seq: u64,
    },
    /// Candidate or pre-candidate → voter.
    Vote(VoteRequest),
    VoteResponse {
        pre: bool,
        granted: bool,
    },
    /// Leader → transfer target: campaign now, skipping pre-vote.
    TimeoutNow,
    /// Follower → leader: confirm leadership for a read and tell the index.
    ReadIndex {
        ctx: u64,
    },
    /// Leader → follower: `index` to read at, or `None` if refused.
    ReadIndexResponse {
        ctx: u64,
        index: Option<Index>,
    },
    /// Leader → follower: a piece of a snapshot.
    Snapshot(SnapshotChunk),
    /// Follower → leader: for the snapshot at `index`, the bytes received so
    /// far (where to resume), or `installed`.
    SnapshotResponse {
        index: Index,
        next_offset: u64,
        installed: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Append {
    pub prev_index: Index,
    pub prev_term: Term,
    pub commit: Index,
    pub entries: Vec<Entry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendResponse {
    /// Accepted: the last index now known to match the leader. Rejected: the
    /// `prev_index` of the rejected append.
    pub index: Index,
    pub reject: Option<RejectHint>,
}

/// Fast backtracking (Raft thesis §5.3): the follower says where the leader
/// should resume instead of letting it step back one entry at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectHint {
    /// The follower's log is shorter than `prev_index`; it ends here.
    LogEnds { last_index: Index },
    /// The follower has `term` at `prev_index`; its entries of that term
    /// (past its commit index) start at `first_index`.
    Conflict { term: Term, first_index: Index },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VoteRequest {
    pub pre: bool,
    pub last_index: Index,
    pub last_term: Term,
    /// Part of a leadership transfer: voters disregard leader stickiness.
    pub transfer: bool,
}

impl MessageBody {
    /// A short name for logs and statistics.
    pub fn kind(&self) -> &'static str {
        match self {
            MessageBody::Append(_) => "append",
            MessageBody::AppendResponse(_) => "append-response",
            MessageBody::Heartbeat { .. } => "heartbeat",
            MessageBody::HeartbeatResponse { .. } => "heartbeat-response",
            MessageBody::Vote(v) if v.pre => "pre-vote",
            MessageBody::Vote(_) => "vote",
            MessageBody::VoteResponse { pre: true, .. } => "pre-vote-response",
            MessageBody::VoteResponse { .. } => "vote-response",
            MessageBody::TimeoutNow => "timeout-now",
            MessageBody::ReadIndex { .. } => "read-index",
            MessageBody::ReadIndexResponse { .. } => "read-index-response",
            MessageBody::Snapshot(_) => "snapshot",
            MessageBody::SnapshotResponse { .. } => "snapshot-response",
        }
    }

    /// Whether the message reveals state that must be durable first: a vote
    /// request (new term and self-vote), a vote grant, or an append
    /// acknowledgement (entries).
    pub(crate) fn needs_durable_state(&self) -> bool {
        matches!(
            self,
            MessageBody::Vote(VoteRequest { pre: false, .. })
                | MessageBody::VoteResponse { pre: false, .. }
                | MessageBody::AppendResponse(_)
                | MessageBody::SnapshotResponse {
                    installed: true,
                    ..
                }
        )
    }

    /// Bytes of entries carried (flow control).
    pub fn entry_bytes(&self) -> u64 {
        match self {
            MessageBody::Append(a) => a.entries.iter().map(|e| e.len() as u64).sum(),
            MessageBody::Snapshot(c) => c.data.len() as u64,
            _ => 0,
        }
    }
}
