//! keel-raft: the consensus core of keel.
//!
//! Sans-IO and deterministic: no tokio, no files, no sockets, no wall clock,
//! no OS randomness. Time is [`Raft::tick`]; randomness comes from the seed
//! given to [`Raft::new`]. The driver feeds input and carries out the
//! [`Ready`] batches the core produces (see [`ready`](crate::ready) for the
//! contract). Everything about safety is tested here, in simulation.
//!
//! Entries are [`keel_format::Batch`]es: data entries carry records that take
//! dense user offsets; control entries (no-op, configuration, and commands
//! of the hosting layer, see [`Raft::propose_command`]) take none.

pub mod codec;
mod conf_change;
mod config;
mod election;
mod error;
mod knobs;
mod log;
mod membership;
mod message;
mod progress;
mod quorum;
mod raft;
mod read;
pub mod ready;
mod replication;
mod rng;
mod snapshot;
mod snapshot_transfer;
mod storage;
mod transfer;
mod types;

#[cfg(test)]
mod tests;

pub use conf_change::{ConfChange, ConfChangeOp, LaggingLearner, MAX_INFO_BYTES, MAX_MEMBERS};
pub use config::{Config, ReadMode};
pub use error::{Error, StorageError};
#[cfg(feature = "fault-injection")]
pub use knobs::Knobs;
pub use membership::{
    ConfChangeEvent, ConfChangeStatus, bootstrap_entry, decode_membership, encode_membership,
};
pub use message::{Append, AppendResponse, Message, MessageBody, RejectHint, VoteRequest};
pub use progress::{Progress, ProgressState};
pub use quorum::{Membership, VoteResult};
pub use raft::{InitialState, PeerStatus, Proposed, Raft, Status};
pub use read::ReadState;
pub use ready::Ready;
pub use rng::Rng;
pub use snapshot::{SnapshotChunk, SnapshotMeta, StateMachine};
pub use storage::{MemStorage, Storage};
pub use types::{GroupId, HardState, Index, MAX_TERM, NONE, NodeId, Role, SoftState, Term};

/// A raft log entry: one encoded batch (see `keel-format`).
pub type Entry = keel_format::Batch;
pub use keel_format::{BatchBuilder, EntryKind};
