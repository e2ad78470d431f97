//! Snapshots, and the state machine interface library users implement.
//!
//! A snapshot is the application's state as of an applied index, together
//! with the configuration in force at that index and the user offset that
//! follows it. Log compaction then drops the prefix up to (some entries
//! behind) that index. A follower that needs entries before the leader's log
//! start is sent the snapshot in chunks: one chunk in flight, resumable from
//! the offset the follower reports (a lost chunk costs one heartbeat), and
//! abandoned when the leader's term ends. A node restarts from its snapshot
//! plus the log after it.

use bytes::Bytes;

use crate::Entry;
use crate::quorum::Membership;
use crate::types::{Index, Term};

/// Describes a snapshot. `size` is the length of its data in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SnapshotMeta {
    /// The last index the snapshot covers.
    pub index: Index,
    /// The term of the entry at `index`.
    pub term: Term,
    /// The configuration in force at `index`.
    pub membership: Membership,
    /// The user offset the first record after `index` takes.
    pub next_offset: u64,
    pub size: u64,
}

/// One piece of a snapshot on its way to a follower.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotChunk {
    pub meta: SnapshotMeta,
    /// Byte offset of `data` within the snapshot.
    pub offset: u64,
    pub data: Bytes,
    /// This chunk ends the snapshot.
    pub done: bool,
}

/// The application state a raft log drives: what users of keel as a library
/// implement (the role of DLedger's StateMachine). keel-raft never calls it
/// (it does no I/O); drivers do, in this order and under this contract:
///
/// - `apply` receives every committed entry exactly once, in index order,
///   from `Ready::committed`. Data entries carry records at user offsets
///   `base_offset ..`; control entries (no-op, configuration, command) carry none and
///   may be ignored, but must still advance the applied index.
/// - `snapshot` captures the state as of the last applied entry. The driver
///   pairs it with [`Raft::snapshot_meta`](crate::Raft::snapshot_meta) for
///   that index, stores both durably, and may then compact the log up to
///   [`Raft::compaction_point`](crate::Raft::compaction_point), which keeps
///   `compaction_keep_entries` behind the snapshot for followers that lag a
///   little (they then need no snapshot).
/// - `restore` replaces the whole state with a snapshot: at start-up from
///   the stored snapshot, or when a follower is sent one
///   (`Ready::install_snapshot`). After it, `applied()` is the snapshot's
///   index and application resumes after it.
/// - Every method is deterministic in its input: two nodes that apply the
///   same entries (or restore the same snapshot and apply the same suffix)
///   hold the same state. The simulator checks exactly this.
pub trait StateMachine {
    type Error: std::error::Error;

    fn apply(&mut self, entry: &Entry) -> Result<(), Self::Error>;

    /// Index of the last entry applied (or restored).
    fn applied(&self) -> Index;

    fn snapshot(&mut self) -> Result<Bytes, Self::Error>;

    fn restore(&mut self, meta: &SnapshotMeta, data: Bytes) -> Result<(), Self::Error>;
}
