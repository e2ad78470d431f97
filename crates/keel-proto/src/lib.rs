//! keel's client API: the gRPC service in `proto/keel.proto`, compiled at
//! build time by protox (no system `protoc`). Clients in other languages are
//! generated from that file.
//!
//! Also holds the one etcd message `keel bench --target etcd` needs
//! (`etcdserverpb.KV/Put`), so that keel and etcd are measured by the same
//! load generator.

pub mod codec;

#[allow(clippy::all)]
pub mod v1 {
    tonic::include_proto!("keel.v1");
}

#[allow(clippy::all)]
pub mod etcd {
    tonic::include_proto!("etcdserverpb");
}

pub use v1::*;

/// Metadata key carrying the leader's client address on a not-leader error.
pub const LEADER_ADDR_KEY: &str = "keel-leader";
/// Metadata key carrying the leader's node id on a not-leader error.
pub const LEADER_ID_KEY: &str = "keel-leader-id";
/// Metadata key on a RESOURCE_EXHAUSTED status that refuses a request for
/// what it carries (too many records, too many bytes): sending it again
/// cannot succeed; split it. Without the key, RESOURCE_EXHAUSTED is a
/// passing condition (back-pressure, a full disk) worth retrying.
pub const REFUSED_KEY: &str = "keel-refused";
/// The default log (raft group).
pub const DEFAULT_LOG: u64 = 0;
