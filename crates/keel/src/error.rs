//! Errors of the node, by layer: `StartError` for what stops a node from
//! starting (the binary prints it and exits), `GroupError` for what a raft
//! group answers a client request with (the API maps it to a gRPC status).

use std::path::PathBuf;

use keel_raft::NodeId;
use thiserror::Error;

/// Why a node could not start. Each says what to do.
#[derive(Debug, Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(
        "data directory {} is in use by another keel server{holder}; stop that server or choose another --data-dir",
        dir.display()
    )]
    DataDirLocked { dir: PathBuf, holder: String },
    #[error(
        "data directory {} belongs to {what} {found}, not {expected}; point --data-dir at this node's own directory (or an empty one)",
        dir.display()
    )]
    DataDirMismatch {
        dir: PathBuf,
        what: &'static str,
        found: String,
        expected: String,
    },
    #[error("cannot use data directory {}: {source}", dir.display())]
    DataDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {reason}; fix or remove that file", file.display())]
    BadMeta { file: PathBuf, reason: String },
    #[error("cannot listen on {addr} ({what}): {source}; is another process using that port?")]
    Listen {
        what: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the log of group {group}: {source}")]
    Log {
        group: u64,
        #[source]
        source: keel_log::LogError,
    },
    #[error("cannot start raft group {group}: {source}")]
    Raft {
        group: u64,
        #[source]
        source: keel_raft::Error,
    },
}

/// The answer of a raft group to a request it could not carry out.
#[derive(Debug, Clone, Error)]
pub enum GroupError {
    /// Refused before anything was proposed: safe to retry at the leader.
    #[error("this node is not the leader")]
    NotLeader { leader: NodeId },
    /// The entry was replaced by a new leader's: definitely not appended.
    #[error("leadership changed before the append committed; it was not appended, retry")]
    LostLeadership,
    /// Temporarily refused (leadership transfer, back-pressure): retry.
    #[error("{0}")]
    Busy(String),
    #[error("the log store failed ({0}); this node refuses writes until it is restarted")]
    StoreFailed(String),
    /// The leader's disk is full: refused before anything was proposed.
    #[error(
        "the disk of the leader is full ({0}); nothing was appended. Free space on that node: it resumes by itself"
    )]
    DiskFull(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the raft group is stopping")]
    Stopped,
}
