//! keel as a library: a node that hosts raft groups, each driving its own
//! state machine, over durable storage and a peer transport.
//!
//! Work in progress; the design is in `docs/node-library.md`.

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
pub use mark::Watermark;
pub use member_info::MemberInfo;
pub use node::{GroupOptions, JoinTicket, Node, NodeConfig};
pub use state_machine::{Command, SnapshotWriter, StateMachine};
