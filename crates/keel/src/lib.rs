//! keel: the server (the log service on the node library), the command
//! line and the load generator.
//!
//! - `server`: runs a node hosting the default log; joins a cluster;
//! - `log_service`: the default log's state machine;
//! - `api`: the gRPC client API;
//! - `config`: server settings (flags, `KEEL_*`, TOML);
//! - `cli`: the client commands, `bench` and `local`.

pub mod api;
pub mod cli;
pub mod config;
pub mod error;
pub mod log_service;
pub mod server;
