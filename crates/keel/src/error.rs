//! Errors: the node library's ([`StartError`] for what stops a node from
//! starting, [`GroupError`] for what a group answers a request with); the
//! API maps group errors to gRPC status codes.

pub use keel_node::{GroupError, StartError};
