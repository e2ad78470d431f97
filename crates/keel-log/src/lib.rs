//! keel-log: the durable log store under every keel node.
//!
//! One [`LogStore`] per directory (one directory per raft group). Entries
//! are keel-format batches, stored byte for byte as the leader encoded them
//! in segment files named by their first index, with an index file per
//! sealed segment, an atomically replaced hard state and a small metadata
//! file for the log's start. Appends from many threads share one
//! `fdatasync` (group commit) and complete in submission order, whether
//! submitted asynchronously ([`LogStore::append`], performed by the store's
//! writer thread) or on the blocking path ([`LogStore::append_and_wait`],
//! performed by the calling thread when it is alone); reads by
//! raft index and by user offset run concurrently with the writer, recent
//! entries from memory. Open cuts a torn tail and refuses anything else
//! that is wrong; [`check`] verifies a directory offline, and [`repair`]
//! cuts a damaged log at its first bad point (an operator's decision: it
//! may discard acknowledged entries). A failed write or
//! fsync puts the store into a failed state that refuses later writes.
//!
//! Map of the crate:
//! - `store`: [`LogStore`], planning of writes, reads
//! - `group_commit`: the write turn (writer thread, leading callers of the
//!   blocking path), `AppendTicket`
//! - `writer`: performing a round of the group commit, failure handling
//! - `mem_index`: the in-memory index (positions, offsets, term runs)
//! - `cache`: recent entries in memory
//! - `segment`: segment file format, naming, scanning
//! - `seg_index`: the sealed-segment index file format
//! - `meta`: hard state and log-start files, atomic replace
//! - `recovery`: open-time recovery rules
//! - `check`: offline verification
//! - `repair`: the explicit repair (cut at the first bad point, with a backup)
//! - `completion`: the runtime-agnostic completion (blocking and `Future`)
//! - `fs`: the filesystem layer; `testing`: fault injection and temp dirs
//! - `sync_record` (feature `fault-injection`): sync records beside each
//!   segment, for crash simulation by the real-process fault tests

mod cache;
mod check;
mod completion;
mod error;
pub mod fs;
mod group_commit;
mod mem_index;
mod meta;
mod options;
mod recovery;
mod repair;
mod seg_index;
mod segment;
mod store;
#[cfg(feature = "fault-injection")]
pub mod sync_record;
pub mod testing;
mod writer;

pub use check::{CheckReport, IndexFileStatus, Problem, SegmentSummary, check, check_with};
pub use completion::{Completion, Durable};
pub use error::{LogError, Result};
pub use fs::{Fs, FsFile, OpenMode, RealFs};
pub use group_commit::AppendTicket;
pub use meta::HardState;
pub use options::LogOptions;
pub use recovery::{RecoveryReport, TornTail};
pub use repair::{RemovedFile, RepairReport, TruncatedFile, repair, repair_with};
pub use store::LogStore;

/// Raft indexes (and floors) at or above this are refused as corrupt, so
/// that index arithmetic never overflows on hostile input.
pub const MAX_INDEX: u64 = 1 << 62;

/// File name of the segment starting at `first_index` (for tools and tests).
pub fn segment_file_name(first_index: u64) -> String {
    segment::segment_name(first_index)
}

/// File name of the index file of the segment starting at `first_index`.
pub fn index_file_name(first_index: u64) -> String {
    segment::index_name(first_index)
}
