//! The state machine a raft group drives: what users of keel as a library
//! implement (the role of DLedger's StateMachine), and what keel's own
//! services (the log service, the coordination store) implement.

use std::io::{Read, Write};

use bytes::Bytes;
use keel_raft::{Index, SnapshotMeta};

/// One committed command: a record of a data entry.
#[derive(Debug, Clone, Copy)]
pub struct Command<'a> {
    /// Raft index of the entry that carries it.
    pub index: Index,
    /// Its user offset: dense per group, starting at 0, never reused.
    pub offset: u64,
    /// The bytes that were proposed.
    pub data: &'a Bytes,
}

/// A job that writes a snapshot of a state machine's state: returned by
/// [`StateMachine::snapshot`] and run off the group's task (on a blocking
/// thread), so it must own (or share) what it writes.
pub type SnapshotWriter = Box<dyn FnOnce(&mut dyn Write) -> std::io::Result<()> + Send>;

/// The application state a raft group drives.
///
/// The contract, which keel keeps and implementations must keep too:
///
/// - **Order and exactly once.** [`apply`](Self::apply) receives every
///   committed record once, in log order (index, then offset), on every
///   node that hosts the group. After a restart the node restores its
///   latest snapshot and applies the log again from there, so `apply` sees
///   records after the snapshot a second time *in a new state machine
///   value*: a state machine built from `restore` plus the records after
///   it must equal the one that applied them all.
/// - **Deterministic.** Two state machines that applied the same records
///   (or restored the same snapshot and applied the same records since)
///   hold the same state and return the same responses. No clocks, no
///   randomness, no I/O whose result can differ between nodes.
/// - **Responses.** Only the node that proposed a record delivers its
///   response to the proposer; other nodes compute and drop it.
/// - **Snapshots.** [`snapshot`](Self::snapshot) captures the state as of
///   the last applied record and returns a job that writes it; the job runs
///   on another thread while the group goes on applying, so it must own a
///   copy (or an immutable shared view) of what it writes.
///   [`restore`](Self::restore) replaces the whole state with a snapshot's:
///   at start-up, and when a leader sends a snapshot to a node that is too
///   far behind. Both run rarely; `restore` runs on the group's task.
/// - **Queries** ([`Group::read`](crate::Group::read)) run on the group's
///   task with `&self`: keep them short.
/// - **Errors.** `apply` has no error: a command that is invalid for the
///   application is answered with an error *response*, deterministically.
///   Panicking stops the process.
pub trait StateMachine: Send + 'static {
    /// What a proposer gets back for each record it proposed.
    type Response: Send + 'static;

    /// Applies one committed record.
    fn apply(&mut self, cmd: Command<'_>) -> Self::Response;

    /// Applies a committed control command addressed to the state machine
    /// ([`Group::propose_control`](crate::Group::propose_control)). Control
    /// commands take no user offsets. The default ignores them.
    fn apply_control(&mut self, index: Index, body: &Bytes) {
        let _ = (index, body);
    }

    /// Captures the state as of the last applied record.
    fn snapshot(&mut self) -> SnapshotWriter;

    /// Replaces the state with the snapshot's data (written by a
    /// [`SnapshotWriter`] of this state machine type). `meta.index` is the
    /// last index it covers; application resumes after it.
    fn restore(&mut self, meta: &SnapshotMeta, data: &mut dyn Read) -> std::io::Result<()>;
}
