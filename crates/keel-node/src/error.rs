//! Errors of the node library, by layer: [`StartError`] for what stops a
//! node or a group from starting, [`GroupError`] for what a group answers
//! a request with.

use std::path::PathBuf;

use keel_raft::{Index, NodeId};
use thiserror::Error;

/// Why a node or a group could not start. Each says what to do.
#[derive(Debug, Error)]
pub enum StartError {
    /// A setting is wrong or contradicts the data directory.
    #[error("{0}")]
    Config(String),
    /// Another process holds the data directory.
    #[error(
        "data directory {} is in use by another keel server{holder}; stop that server or choose another --data-dir",
        dir.display()
    )]
    DataDirLocked {
        /// The directory.
        dir: PathBuf,
        /// " (pid N)" when known.
        holder: String,
    },
    /// The data directory could not be used.
    #[error("cannot use data directory {}: {source}", dir.display())]
    DataDir {
        /// The directory.
        dir: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The node's identity file is unusable.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    /// A listener could not bind.
    #[error("cannot listen on {addr} ({what}): {source}; is another process using that port?")]
    Listen {
        /// What the listener is for.
        what: &'static str,
        /// The address.
        addr: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A group's log store could not be opened.
    #[error("cannot open the log of group {group}: {source}")]
    Log {
        /// The group.
        group: u64,
        /// The store's error.
        #[source]
        source: keel_log::LogError,
    },
    /// A group's snapshot, mark or state could not be loaded.
    #[error("cannot start group {group}: {reason}")]
    Group {
        /// The group.
        group: u64,
        /// What went wrong and what to do.
        reason: String,
    },
    /// The consensus core refused its start state.
    #[error("cannot start raft group {group}: {source}")]
    Raft {
        /// The group.
        group: u64,
        /// The core's error.
        #[source]
        source: keel_raft::Error,
    },
}

/// The answer of a raft group to a request it could not carry out.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GroupError {
    /// Refused before anything was proposed: safe to retry at the leader.
    #[error("this node is not the leader")]
    NotLeader {
        /// The leader, when known (0 otherwise).
        leader: NodeId,
    },
    /// The entry was replaced by a new leader's: definitely not applied.
    #[error("leadership changed before the proposal committed; it was not applied, retry")]
    LostLeadership,
    /// Temporarily refused (leadership transfer, back-pressure): retry.
    #[error("{0}")]
    Busy(String),
    /// The group's storage failed; the node must be restarted.
    #[error("the log store failed ({0}); this node refuses writes until it is restarted")]
    StoreFailed(String),
    /// The leader's disk is full: refused before anything was proposed.
    #[error(
        "the disk of the leader is full ({0}); nothing was appended. Free space on that node: it resumes by itself"
    )]
    DiskFull(String),
    /// The request is invalid.
    #[error("{0}")]
    Invalid(String),
    /// Another membership change is under way.
    #[error("{0}")]
    ChangeInProgress(String),
    /// A learner to promote is too far behind.
    #[error(
        "node {id} is {behind} entries behind the leader (it holds up to index {matched} of {last}); it stays a learner: check that it runs and can reach the leader, then promote it once it has caught up (keel members promote {id})"
    )]
    Lagging {
        /// The learner.
        id: NodeId,
        /// Entries it is behind.
        behind: u64,
        /// The index it holds.
        matched: Index,
        /// The leader's last index.
        last: Index,
    },
    /// The outcome is unknown: leadership moved while it was under way.
    #[error("{0}")]
    Ambiguous(String),
    /// No answer within the request's deadline.
    #[error("{0}")]
    TimedOut(String),
    /// The group is stopping.
    #[error("the raft group is stopping")]
    Stopped,
}
