//! keel as a library: a node that hosts raft groups, each driving its own
//! state machine, over durable storage and a peer transport.
//!
//! An application implements [`StateMachine`], starts a [`Node`] on its
//! data directory ([`Node::start`] with a [`NodeConfig`]: bootstraps a new
//! cluster, joins one with a [`JoinTicket`], or restarts from its data),
//! opens a group with [`Node::open_group`] and uses the [`Group`] handle:
//! [`Group::propose`] (answered once committed and applied),
//! [`Group::read`] (linearizable, on any node), membership changes,
//! leadership, status and watches. `examples/kv.rs` is a complete
//! replicated key-value store in about 200 lines; the design is in
//! `docs/node-library.md`.

#![warn(missing_docs)]

pub mod command;
pub mod core;
pub mod error;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod frame;
pub mod group;
pub mod identity;
pub mod mark;
pub mod member_info;
pub mod metrics;
pub mod node;
pub mod runtime;
pub mod snapshot_store;
pub mod state_machine;
pub mod storage;
pub mod transport;

pub use crate::core::{ChangeRequest, CoreSettings, MemberChange, SnapshotPolicy};
pub use error::{GroupError, StartError};
pub use group::{Group, GroupStatus};
// The storage and consensus types an application meets in this crate's
// API, so it needs no direct dependency on keel-log or keel-raft.
pub use keel_log::LogOptions;
pub use keel_raft::{GroupId, Index, Membership, NodeId, Role, SnapshotMeta, SoftState};
pub use mark::Watermark;
pub use member_info::MemberInfo;
pub use node::{GroupOptions, JoinTicket, Node, NodeConfig};
pub use state_machine::{Command, SnapshotWriter, StateMachine};
