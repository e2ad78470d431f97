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
//!
//! ```no_run
//! use std::io::{Read, Write};
//!
//! use keel_node::{Command, GroupOptions, Node, NodeConfig, SnapshotMeta, SnapshotWriter, StateMachine};
//!
//! /// Counts the bytes of every command it applied.
//! #[derive(Default)]
//! struct Counter(u64);
//!
//! impl StateMachine for Counter {
//!     type Response = u64;
//!     fn apply(&mut self, cmd: Command<'_>) -> u64 {
//!         self.0 += cmd.data.len() as u64;
//!         self.0
//!     }
//!     fn snapshot(&mut self) -> SnapshotWriter {
//!         let n = self.0;
//!         Box::new(move |w: &mut dyn Write| w.write_all(&n.to_le_bytes()))
//!     }
//!     fn restore(&mut self, _: &SnapshotMeta, r: &mut dyn Read) -> std::io::Result<()> {
//!         let mut b = [0; 8];
//!         r.read_exact(&mut b)?;
//!         self.0 = u64::from_le_bytes(b);
//!         Ok(())
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // Node 1 of three; the first start bootstraps the cluster from `peers`,
//! // later starts read the configuration from the data directory.
//! let peers = [(1, "10.0.0.1:7071"), (2, "10.0.0.2:7071"), (3, "10.0.0.3:7071")]
//!     .into_iter()
//!     .map(|(id, a)| (id, a.to_string()))
//!     .collect();
//! let node = Node::start(NodeConfig {
//!     peers: Some(peers),
//!     ..NodeConfig::new(1, "/var/lib/counter", "10.0.0.1:7071")
//! })
//! .await?;
//! let group = node.open_group(0, Counter::default(), GroupOptions::default()).await?;
//! let total = group.propose("hello".into()).await?; // committed on a quorum, applied
//! let now = group.read(|c: &Counter| c.0).await?; // linearizable, on any node
//! assert!(now >= total);
//! node.shutdown().await;
//! # Ok(())
//! # }
//! ```

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
