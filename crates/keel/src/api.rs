//! The client API (gRPC, `crates/keel-proto/proto/keel.proto`): Append,
//! Read, Tail, Status, TransferLeader. Maps group answers to status codes:
//! not leader → FAILED_PRECONDITION with the leader's address in the message
//! and in the `keel-leader` metadata; replaced entry → ABORTED; no quorum in
//! time → UNAVAILABLE; past the end → OUT_OF_RANGE; too large or malformed →
//! INVALID_ARGUMENT.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_proto::v1::keel_server::{Keel, KeelServer};
use keel_proto::v1::*;
use keel_raft::{NONE, NodeId, Role};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use crate::config::ServerConfig;
use crate::error::GroupError;
use crate::node::Groups;
use crate::node::group::{GroupHandle, Input, role_str};
use crate::node::transport::AddrBook;

/// Largest gRPC message accepted or sent (a request of many records).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// Largest total payload of one Append request.
pub const MAX_REQUEST_BYTES: usize = 16 << 20;
const DEFAULT_MAX_RECORDS: usize = 10_000;
const DEFAULT_MAX_BYTES: usize = 4 << 20;

#[derive(Clone)]
pub struct Api {
    node_id: NodeId,
    cluster_id: String,
    client_addr: String,
    peers: Arc<std::collections::BTreeMap<u64, String>>,
    groups: Arc<Groups>,
    addrs: Arc<AddrBook>,
    max_record_bytes: usize,
    timeout: Duration,
    stop: watch::Receiver<bool>,
}

impl Api {
    pub fn new(
        cfg: &ServerConfig,
        groups: Arc<Groups>,
        addrs: Arc<AddrBook>,
        stop: watch::Receiver<bool>,
    ) -> Api {
        Api {
            node_id: cfg.id,
            cluster_id: format!("{:016x}", cfg.cluster_id),
            client_addr: cfg.client_addr.clone(),
            peers: Arc::new(cfg.peers.clone()),
            groups,
            addrs,
            max_record_bytes: cfg.max_record_bytes,
            timeout: cfg.request_timeout,
            stop,
        }
    }

    pub fn into_service(self) -> KeelServer<Api> {
        KeelServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn group(&self, log: u64) -> Result<&GroupHandle, Status> {
        self.groups.map.get(&log).ok_or_else(|| {
            Status::not_found(format!(
                "log {log} does not exist on this node (it hosts log {})",
                self.groups
                    .map
                    .keys()
                    .map(|k| k.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }

    fn not_leader(&self, leader: NodeId) -> Status {
        if leader == NONE || leader == self.node_id {
            return Status::failed_precondition(format!(
                "node {} is not the leader and knows no leader (an election is under way, or too few nodes are reachable to elect one); nothing was done",
                self.node_id
            ));
        }
        let addr = self.addrs.get(leader);
        let mut st = Status::failed_precondition(match &addr {
            Some(a) => format!(
                "node {} is not the leader; the leader is node {leader} at {a}",
                self.node_id
            ),
            None => format!(
                "node {} is not the leader; the leader is node {leader} (its client address is not known yet)",
                self.node_id
            ),
        });
        if let Some(a) = addr
            && let Ok(v) = MetadataValue::try_from(a.as_str())
        {
            st.metadata_mut().insert(keel_proto::LEADER_ADDR_KEY, v);
        }
        if let Ok(v) = MetadataValue::try_from(leader.to_string().as_str()) {
            st.metadata_mut().insert(keel_proto::LEADER_ID_KEY, v);
        }
        st
    }

    fn status_of(&self, e: GroupError) -> Status {
        match e {
            GroupError::NotLeader { leader } => self.not_leader(leader),
            GroupError::LostLeadership => Status::aborted(e.to_string()),
            GroupError::Busy(m) => Status::resource_exhausted(m),
            GroupError::DiskFull(_) => {
                Status::resource_exhausted(format!("node {}: {e}", self.node_id))
            }
            GroupError::StoreFailed(_) | GroupError::Stopped => {
                Status::unavailable(format!("node {}: {e}", self.node_id))
            }
            GroupError::Invalid(m) => Status::invalid_argument(m),
        }
    }

    fn timeout_status(&self, what: &str) -> Status {
        Status::unavailable(format!(
            "no quorum: the {what} did not complete within {} ms on node {} (too few nodes reachable?)",
            self.timeout.as_millis(),
            self.node_id
        ))
    }
}

async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

fn to_records(v: Vec<(u64, bytes::Bytes)>) -> Vec<Record> {
    v.into_iter()
        .map(|(offset, data)| Record { offset, data })
        .collect()
}

fn read_error(e: keel_log::LogError) -> Status {
    match e {
        keel_log::LogError::OffsetCompacted { .. } => Status::out_of_range(e.to_string()),
        other => Status::internal(format!("reading the log failed: {other}")),
    }
}

#[tonic::async_trait]
impl Keel for Api {
    async fn append(
        &self,
        request: Request<AppendRequest>,
    ) -> Result<Response<AppendResponse>, Status> {
        let start = Instant::now();
        let req = request.into_inner();
        let g = self.group(req.log)?;
        if req.records.is_empty() {
            return Err(Status::invalid_argument(
                "an append needs at least one record",
            ));
        }
        let mut bytes = 0usize;
        for (i, r) in req.records.iter().enumerate() {
            if r.len() > self.max_record_bytes {
                return Err(Status::invalid_argument(format!(
                    "record {i} is {} bytes; the largest record this cluster accepts is {} bytes (--max-record-bytes)",
                    r.len(),
                    self.max_record_bytes
                )));
            }
            bytes += r.len();
        }
        if bytes > MAX_REQUEST_BYTES {
            return Err(Status::invalid_argument(format!(
                "the request carries {bytes} bytes of records; at most {MAX_REQUEST_BYTES} per append, split it"
            )));
        }
        let count = req.records.len() as u32;
        let records = req.records;
        let call = g.call(|reply| Input::Append {
            records,
            bytes,
            reply,
            start,
        });
        match tokio::time::timeout(self.timeout, call).await {
            Err(_) => Err(Status::unavailable(format!(
                "no quorum: the append was not committed within {} ms on node {}; its outcome is unknown (it may still commit)",
                self.timeout.as_millis(),
                self.node_id
            ))),
            Ok(Err(e)) => Err(self.status_of(e)),
            Ok(Ok(first_offset)) => Ok(Response::new(AppendResponse {
                first_offset,
                count,
            })),
        }
    }

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadResponse>, Status> {
        let req = request.into_inner();
        let g = self.group(req.log)?;
        if req.end_offset != 0 && req.end_offset <= req.start_offset {
            return Err(Status::invalid_argument(format!(
                "empty range: end_offset {} is not after start_offset {}",
                req.end_offset, req.start_offset
            )));
        }
        if !req.stale {
            match tokio::time::timeout(self.timeout, g.call(|reply| Input::Read { reply })).await {
                Err(_) => return Err(self.timeout_status("linearizable read")),
                Ok(Err(e)) => return Err(self.status_of(e)),
                Ok(Ok(())) => {}
            }
        }
        let end = g.committed.borrow().end_offset;
        if req.start_offset >= end {
            return Err(Status::out_of_range(format!(
                "offset {} is past the end of the log: the next offset is {end}",
                req.start_offset
            )));
        }
        let max_records = match req.max_records {
            0 => DEFAULT_MAX_RECORDS,
            n => (n as usize).min(100_000),
        };
        let max_bytes = match req.max_bytes {
            0 => DEFAULT_MAX_BYTES,
            n => (n as usize).min(MAX_MESSAGE_BYTES / 2),
        };
        let stop = if req.end_offset == 0 {
            u64::MAX
        } else {
            req.end_offset
        };
        let (records, end) = g
            .read_committed(req.start_offset, stop, max_records, max_bytes)
            .map_err(read_error)?;
        let next_offset = records
            .last()
            .map(|(o, _)| o + 1)
            .unwrap_or(req.start_offset);
        Ok(Response::new(ReadResponse {
            records: to_records(records),
            next_offset,
            end_offset: end,
        }))
    }

    type TailStream = ReceiverStream<Result<TailResponse, Status>>;

    async fn tail(
        &self,
        request: Request<TailRequest>,
    ) -> Result<Response<Self::TailStream>, Status> {
        let req = request.into_inner();
        let g = self.group(req.log)?.clone();
        let (tx, rx) = mpsc::channel(8);
        let mut stop = self.stop.clone();
        tokio::spawn(async move {
            let mut committed = g.committed.clone();
            let mut next = req.start_offset;
            loop {
                let end = committed.borrow_and_update().end_offset;
                if next < end {
                    match g.read_committed(next, u64::MAX, DEFAULT_MAX_RECORDS, 1 << 20) {
                        Ok((recs, _)) if !recs.is_empty() => {
                            next = recs.last().map(|(o, _)| o + 1).unwrap_or(next);
                            let msg = TailResponse {
                                records: to_records(recs),
                            };
                            if tx.send(Ok(msg)).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            let _ = tx.send(Err(read_error(e))).await;
                            return;
                        }
                    }
                }
                if req.no_follow {
                    return;
                }
                tokio::select! {
                    r = committed.changed() => if r.is_err() { return },
                    _ = tx.closed() => return,
                    _ = stopped(&mut stop) => {
                        let _ = tx.send(Err(Status::unavailable("the node is stopping"))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let req = request.into_inner();
        let g = self.group(req.log)?;
        let st = g.status().await.map_err(|e| self.status_of(e))?;
        let r = &st.raft;
        let leader = r.leader;
        let members = self
            .peers
            .iter()
            .map(|(id, peer_addr)| {
                let p = r.peers.iter().find(|p| p.id == *id);
                let role = if *id == self.node_id {
                    role_str(r.role).to_string()
                } else if *id == leader {
                    "leader".to_string()
                } else if r.role == Role::Leader {
                    "follower".to_string()
                } else {
                    "voter".to_string()
                };
                let (match_index, lag, reachable) = if *id == self.node_id {
                    (r.persisted, r.last_index.saturating_sub(r.persisted), true)
                } else if let Some(p) = p {
                    (
                        p.matched,
                        r.last_index.saturating_sub(p.matched),
                        p.recent_active,
                    )
                } else {
                    (0, 0, *id == leader)
                };
                Member {
                    id: *id,
                    peer_addr: peer_addr.clone(),
                    client_addr: self.addrs.get(*id).unwrap_or_default(),
                    role,
                    match_index,
                    lag,
                    reachable,
                }
            })
            .collect();
        let mut role = role_str(r.role).to_string();
        if let Some(f) = &st.failed {
            role = format!("failed ({f})");
        } else if let Some(f) = &st.disk_full {
            role = format!("{role} (disk full: {f})");
        }
        Ok(Response::new(StatusResponse {
            node_id: self.node_id,
            cluster_id: self.cluster_id.clone(),
            role,
            term: r.term,
            leader_id: leader,
            leader_addr: if leader == NONE {
                String::new()
            } else {
                self.addrs.get(leader).unwrap_or_default()
            },
            commit_index: r.commit,
            applied_index: r.applied,
            last_index: r.last_index,
            end_offset: g.committed.borrow().end_offset,
            members,
            client_addr: self.client_addr.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            unsafe_no_fsync: false,
        }))
    }

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        let req = request.into_inner();
        let g = self.group(req.log)?;
        if !self.peers.contains_key(&req.to) {
            return Err(Status::invalid_argument(format!(
                "node {} is not a member; members are {}",
                req.to,
                self.peers
                    .keys()
                    .map(|k| k.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let to = req.to;
        match tokio::time::timeout(self.timeout, g.call(|reply| Input::Transfer { to, reply }))
            .await
        {
            Err(_) => Err(Status::unavailable(format!(
                "node {to} did not take over within {} ms; the transfer was abandoned",
                self.timeout.as_millis()
            ))),
            Ok(Err(e)) => Err(self.status_of(e)),
            Ok(Ok(())) => Ok(Response::new(TransferLeaderResponse { leader_id: to })),
        }
    }
}
