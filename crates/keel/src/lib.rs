//! keel: the node (server), the command line and the load generator.
//!
//! - `node`: a process hosting raft groups: data directory, group drivers,
//!   peer transport;
//! - `api`: the gRPC client API;
//! - `config`: server settings (flags, `KEEL_*`, TOML);
//! - `metrics`: Prometheus metrics and their HTTP endpoint;
//! - `cli`: the client commands, `bench` and `local`.

pub mod api;
pub mod cli;
pub mod config;
pub mod error;
pub mod metrics;
pub mod node;
