//! The client API (gRPC, `crates/keel-proto/proto/keel.proto`): Append,
//! Read, Tail, Status, TransferLeader, and membership: Members,
//! ChangeMembers, SetPreferredLeader, Join. Maps group answers to status
//! codes: not leader → FAILED_PRECONDITION with the leader's address in the
//! message and in the `keel-leader` metadata; replaced entry → ABORTED; no
//! quorum in time → UNAVAILABLE; past the end → OUT_OF_RANGE; too large or
//! malformed → INVALID_ARGUMENT; another membership change under way →
//! ALREADY_EXISTS; a learner that did not catch up, or a membership change
//! whose outcome is unknown → DEADLINE_EXCEEDED.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_node::core::CoreStatus;
use keel_node::member_info::info_of;
use keel_node::runtime::role_name;
use keel_node::transport::Directory;
use keel_node::{ChangeRequest, Group, GroupError, MemberChange as NodeChange, MemberInfo, Node};
use keel_proto::v1::keel_server::{Keel, KeelServer};
use keel_proto::v1::*;
use keel_raft::{Membership, NONE, NodeId, Role};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use crate::config::ServerConfig;
use crate::log_service::LogService;

/// Largest gRPC message accepted or sent (a request of many records).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// Largest Append request, its records counted with
/// [`RECORD_FRAMING_BYTES`] each (raised to fit one record of
/// `--max-record-bytes` when that is larger).
pub const MAX_REQUEST_BYTES: usize = 16 << 20;
/// What each record of a request counts for besides its payload: its
/// framing on the wire and in the log, so that many empty records are not
/// free.
pub const RECORD_FRAMING_BYTES: usize = 16;
const DEFAULT_MAX_RECORDS: usize = 10_000;
/// A tail stream reads this much of the log at a time (whole entries)...
const TAIL_READ_BYTES: usize = 4 << 20;
/// ... and sends it in responses of about this much...
const TAIL_MESSAGE_BYTES: usize = 1 << 20;
/// ... with at most this many responses waiting for the client.
const TAIL_MESSAGES: usize = 8;
const DEFAULT_MAX_BYTES: usize = 4 << 20;
/// How long a membership change may take when the request does not say.
const DEFAULT_CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

/// The gRPC service of one node.
#[derive(Clone)]
pub struct Api {
    node_id: NodeId,
    cluster_id: u64,
    cluster_name: String,
    client_addr: String,
    group: Group<LogService>,
    directory: Arc<Directory>,
    max_record_bytes: usize,
    /// Largest Append request (records counted with their framing).
    max_request_bytes: usize,
    timeout: Duration,
    stop: watch::Receiver<bool>,
    /// Appends and reads being served (`--max-requests`).
    requests: Arc<Semaphore>,
    /// Tail streams open (`--max-streams`).
    streams: Arc<Semaphore>,
    limits: (usize, usize),
}

impl Api {
    /// The service of `node`, serving its default log.
    pub fn new(
        cfg: &ServerConfig,
        node: &Node,
        group: Group<LogService>,
        stop: watch::Receiver<bool>,
    ) -> Api {
        Api {
            node_id: node.id(),
            cluster_id: node.cluster_id(),
            cluster_name: node.cluster_name().unwrap_or("").to_string(),
            client_addr: cfg.client_addr.clone(),
            group,
            directory: node.directory().clone(),
            max_record_bytes: cfg.max_record_bytes,
            max_request_bytes: MAX_REQUEST_BYTES.max(cfg.max_record_bytes + RECORD_FRAMING_BYTES),
            timeout: cfg.request_timeout,
            stop,
            requests: Arc::new(Semaphore::new(cfg.max_requests)),
            streams: Arc::new(Semaphore::new(cfg.max_streams)),
            limits: (cfg.max_requests, cfg.max_streams),
        }
    }

    /// A place among the requests served at once, or RESOURCE_EXHAUSTED
    /// (a passing condition: clients retry).
    fn request_slot(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.requests.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "node {} is serving {} requests at once, its limit (--max-requests); retry shortly",
                self.node_id, self.limits.0
            ))
        })
    }

    /// As a tonic service.
    pub fn into_service(self) -> KeelServer<Api> {
        // A request within the counted limit is within this on the wire
        // (protobuf frames a record in at most 6 bytes); larger ones are
        // refused before they are decoded.
        let decode_limit = self.max_request_bytes + (64 << 10);
        KeelServer::new(self)
            .max_decoding_message_size(decode_limit)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn check_log(&self, log: u64) -> Result<(), Status> {
        if log == keel_proto::DEFAULT_LOG {
            return Ok(());
        }
        Err(Status::not_found(format!(
            "log {log} does not exist on this node (it hosts log {})",
            keel_proto::DEFAULT_LOG
        )))
    }

    fn not_leader(&self, leader: NodeId) -> Status {
        if leader == NONE || leader == self.node_id {
            return Status::failed_precondition(format!(
                "node {} is not the leader and knows no leader (an election is under way, or too few nodes are reachable to elect one); nothing was done",
                self.node_id
            ));
        }
        let addr = self.directory.client_addr(leader);
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
            GroupError::ChangeInProgress(m) => Status::already_exists(m),
            GroupError::Lagging { .. } => Status::deadline_exceeded(e.to_string()),
            GroupError::Ambiguous(m) | GroupError::TimedOut(m) => Status::deadline_exceeded(m),
        }
    }

    fn timeout_status(&self, what: &str) -> Status {
        Status::unavailable(format!(
            "no quorum: the {what} did not complete within {} ms on node {} (too few nodes reachable?)",
            self.timeout.as_millis(),
            self.node_id
        ))
    }

    /// The members of a configuration, with what this node knows of them.
    fn members_of(&self, st: &CoreStatus) -> Vec<Member> {
        let r = &st.raft;
        let m = &st.membership;
        m.all_members()
            .map(|id| {
                let info = info_of(m, id);
                let p = r.peers.iter().find(|p| p.id == id);
                let role = if id == self.node_id {
                    if st.removed {
                        "removed".to_string()
                    } else {
                        role_name(r.role).to_string()
                    }
                } else if id == r.leader {
                    "leader".to_string()
                } else if r.role == Role::Leader {
                    "follower".to_string()
                } else {
                    String::new()
                };
                let (match_index, lag, reachable) = if id == self.node_id {
                    (r.persisted, r.last_index.saturating_sub(r.persisted), true)
                } else if let Some(p) = p {
                    (
                        p.matched,
                        r.last_index.saturating_sub(p.matched),
                        p.recent_active,
                    )
                } else {
                    (0, 0, id == r.leader)
                };
                Member {
                    id,
                    peer_addr: info.peer_addr.clone(),
                    client_addr: self.directory.client_addr(id).unwrap_or_default(),
                    role,
                    match_index,
                    lag,
                    reachable,
                    suffrage: suffrage(m, id).to_string(),
                    incarnation: if info.incarnation == 0 {
                        String::new()
                    } else {
                        format!("{:016x}", info.incarnation)
                    },
                }
            })
            .collect()
    }

    async fn members_response(&self) -> Result<MembersResponse, Status> {
        let st = self.group.status().await.map_err(|e| self.status_of(e))?;
        Ok(MembersResponse {
            members: self.members_of(&st.core),
            joint: st.core.membership.is_joint(),
            preferred_leader: st.core.preferred_leader.unwrap_or(NONE),
            leader_id: st.core.raft.leader,
            node_id: self.node_id,
        })
    }
}

/// "voter", "learner" or "outgoing voter".
fn suffrage(m: &Membership, id: NodeId) -> &'static str {
    if m.voters.contains(&id) {
        "voter"
    } else if m.outgoing.contains(&id) {
        "outgoing voter"
    } else {
        "learner"
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
        let _slot = self.request_slot()?;
        let req = request.into_inner();
        self.check_log(req.log)?;
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
            bytes += r.len() + RECORD_FRAMING_BYTES;
        }
        if bytes > self.max_request_bytes {
            let mut st = Status::resource_exhausted(format!(
                "the request's {} records count {bytes} bytes with their framing ({RECORD_FRAMING_BYTES} bytes each); at most {} per append: split it",
                req.records.len(),
                self.max_request_bytes
            ));
            st.metadata_mut().insert(
                keel_proto::REFUSED_KEY,
                tonic::metadata::MetadataValue::from_static("request"),
            );
            return Err(st);
        }
        let count = req.records.len() as u32;
        match tokio::time::timeout(self.timeout, self.group.propose_many(req.records)).await {
            Err(_) => Err(Status::unavailable(format!(
                "no quorum: the append was not committed within {} ms on node {}; its outcome is unknown (it may still commit)",
                self.timeout.as_millis(),
                self.node_id
            ))),
            Ok(Err(e)) => Err(self.status_of(e)),
            Ok(Ok(offsets)) => Ok(Response::new(AppendResponse {
                first_offset: offsets.first().copied().unwrap_or(0),
                count,
            })),
        }
    }

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadResponse>, Status> {
        let _slot = self.request_slot()?;
        let req = request.into_inner();
        self.check_log(req.log)?;
        if req.end_offset != 0 && req.end_offset <= req.start_offset {
            return Err(Status::invalid_argument(format!(
                "empty range: end_offset {} is not after start_offset {}",
                req.start_offset, req.end_offset
            )));
        }
        if !req.stale {
            match tokio::time::timeout(self.timeout, self.group.read(|_| ())).await {
                Err(_) => return Err(self.timeout_status("linearizable read")),
                Ok(Err(e)) => return Err(self.status_of(e)),
                Ok(Ok(())) => {}
            }
        }
        let end = self.group.served().borrow().end_offset;
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
        let (records, end) = self
            .group
            .read_records(req.start_offset, stop, max_records, max_bytes)
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
        self.check_log(req.log)?;
        let slot = self.streams.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "node {} has {} tail streams open, its limit (--max-streams); close one or retry later",
                self.node_id, self.limits.1
            ))
        })?;
        let g = self.group.clone();
        let (tx, rx) = mpsc::channel(TAIL_MESSAGES);
        let mut stop = self.stop.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut served = g.served();
            let mut next = req.start_offset;
            // Records read (whole entries) and not yet sent: a stream holds
            // at most one read of TAIL_READ_BYTES (plus the rest of its last
            // entry) besides its channel of TAIL_MESSAGES responses.
            let mut pending: std::collections::VecDeque<(u64, bytes::Bytes)> =
                std::collections::VecDeque::new();
            loop {
                if pending.is_empty() {
                    let end = served.borrow_and_update().end_offset;
                    if next < end {
                        match g.read_entries(next, u64::MAX, TAIL_READ_BYTES) {
                            Ok((recs, _)) => pending.extend(recs),
                            Err(e) => {
                                let _ = tx.send(Err(read_error(e))).await;
                                return;
                            }
                        }
                    }
                }
                if !pending.is_empty() {
                    let mut recs = Vec::new();
                    let mut bytes = 0usize;
                    while let Some((_, r)) = pending.front() {
                        if !recs.is_empty()
                            && (bytes + r.len() > TAIL_MESSAGE_BYTES
                                || recs.len() >= DEFAULT_MAX_RECORDS)
                        {
                            break;
                        }
                        bytes += r.len();
                        recs.push(pending.pop_front().expect("front checked"));
                    }
                    next = recs.last().map(|(o, _)| o + 1).unwrap_or(next);
                    let msg = TailResponse {
                        records: to_records(recs),
                    };
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                    continue;
                }
                if req.no_follow {
                    return;
                }
                tokio::select! {
                    r = served.changed() => if r.is_err() { return },
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
        self.check_log(req.log)?;
        let st = self.group.status().await.map_err(|e| self.status_of(e))?;
        let c = &st.core;
        let r = &c.raft;
        let leader = r.leader;
        let mut role = if c.removed {
            "removed".to_string()
        } else if !c.membership.is_member(self.node_id) {
            "not a member".to_string()
        } else if c.membership.is_learner(self.node_id) {
            "learner".to_string()
        } else {
            role_name(r.role).to_string()
        };
        if let Some(f) = &c.failed {
            role = format!("failed ({f})");
        } else if let Some(f) = &c.disk_full {
            role = format!("{role} (disk full: {f})");
        }
        Ok(Response::new(StatusResponse {
            node_id: self.node_id,
            cluster_id: format!("{:016x}", self.cluster_id),
            role,
            term: r.term,
            leader_id: leader,
            leader_addr: if leader == NONE {
                String::new()
            } else {
                self.directory.client_addr(leader).unwrap_or_default()
            },
            commit_index: r.commit,
            applied_index: c.applied.index,
            last_index: r.last_index,
            end_offset: c.served.end_offset,
            members: self.members_of(c),
            client_addr: self.client_addr.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            unsafe_no_fsync: false,
            joint: c.membership.is_joint(),
            preferred_leader: c.preferred_leader.unwrap_or(NONE),
            snapshot_index: c.snapshot_index,
            first_index: r.first_index,
            first_offset: self.group.first_offset(),
            removed: c.removed,
            refusals: st
                .refusals
                .iter()
                .map(|(id, why)| format!("node {id}: {why}"))
                .collect(),
            served_offset: c.served.end_offset,
        }))
    }

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        let req = request.into_inner();
        self.check_log(req.log)?;
        let to = req.to;
        let members = self.group.membership().borrow().clone();
        if !members.is_voter(to) {
            return Err(Status::invalid_argument(format!(
                "node {to} is not a voter; voters are {}",
                members
                    .all_voters()
                    .map(|k| k.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        match tokio::time::timeout(self.timeout, self.group.transfer_leader(to)).await {
            Err(_) => Err(Status::unavailable(format!(
                "node {to} did not take over within {} ms; the transfer was abandoned",
                self.timeout.as_millis()
            ))),
            Ok(Err(e)) => Err(self.status_of(e)),
            Ok(Ok(())) => Ok(Response::new(TransferLeaderResponse { leader_id: to })),
        }
    }

    async fn members(
        &self,
        request: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        self.check_log(request.into_inner().log)?;
        Ok(Response::new(self.members_response().await?))
    }

    async fn change_members(
        &self,
        request: Request<ChangeMembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        let req = request.into_inner();
        self.check_log(req.log)?;
        if req.changes.is_empty() {
            return Err(Status::invalid_argument(
                "a membership change needs at least one change",
            ));
        }
        let mut changes = Vec::with_capacity(req.changes.len());
        for c in &req.changes {
            if c.id == NONE {
                return Err(Status::invalid_argument(
                    "node id 0 is reserved; ids start at 1",
                ));
            }
            let info = |what: &str| -> Result<MemberInfo, Status> {
                crate::config::check_addr(&c.peer_addr).map_err(|e| {
                    Status::invalid_argument(format!("{what} node {}: peer address: {e}", c.id))
                })?;
                Ok(MemberInfo {
                    incarnation: 0,
                    peer_addr: c.peer_addr.clone(),
                    client_addr: String::new(),
                })
            };
            let kind = member_change::Kind::try_from(c.kind).map_err(|_| {
                Status::invalid_argument(format!("unknown membership change kind {}", c.kind))
            })?;
            changes.push(match kind {
                member_change::Kind::AddLearner => NodeChange::AddLearner {
                    id: c.id,
                    info: info("adding")?,
                },
                member_change::Kind::AddVoter => NodeChange::AddVoter {
                    id: c.id,
                    info: if c.peer_addr.is_empty() {
                        None
                    } else {
                        Some(info("adding")?)
                    },
                },
                member_change::Kind::Promote => NodeChange::Promote(c.id),
                member_change::Kind::Demote => NodeChange::Demote(c.id),
                member_change::Kind::Remove => NodeChange::Remove(c.id),
            });
        }
        let timeout = match req.timeout_ms {
            0 => DEFAULT_CHANGE_TIMEOUT,
            n => Duration::from_millis(n as u64),
        };
        let change = ChangeRequest {
            changes,
            wait_for_catch_up: !req.no_wait,
        };
        let started = Instant::now();
        match tokio::time::timeout(
            timeout + Duration::from_secs(1),
            self.group.change_members(change, timeout),
        )
        .await
        {
            Err(_) => Err(Status::deadline_exceeded(format!(
                "the membership change did not finish within {:?}; it may still complete: check keel members list",
                started.elapsed()
            ))),
            Ok(Err(e)) => Err(self.status_of(e)),
            Ok(Ok(_)) => Ok(Response::new(self.members_response().await?)),
        }
    }

    async fn set_preferred_leader(
        &self,
        request: Request<SetPreferredLeaderRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        let req = request.into_inner();
        self.check_log(req.log)?;
        let id = (req.id != NONE).then_some(req.id);
        match tokio::time::timeout(self.timeout, self.group.set_preferred_leader(id)).await {
            Err(_) => Err(self.timeout_status("preferred-leader change")),
            Ok(Err(e)) => Err(self.status_of(e)),
            Ok(Ok(())) => Ok(Response::new(self.members_response().await?)),
        }
    }

    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let req = request.into_inner();
        if req.node_id == NONE {
            return Err(Status::invalid_argument(
                "node id 0 is reserved; ids start at 1",
            ));
        }
        if req.incarnation == 0 {
            return Err(Status::invalid_argument(
                "a joining node must present its data directory's incarnation",
            ));
        }
        crate::config::check_addr(&req.peer_addr)
            .map_err(|e| Status::invalid_argument(format!("peer address: {e}")))?;
        let info = MemberInfo {
            incarnation: req.incarnation,
            peer_addr: req.peer_addr,
            client_addr: req.client_addr,
        };
        let timeout = Duration::from_secs(30);
        match tokio::time::timeout(
            timeout + Duration::from_secs(1),
            self.group.admit(req.node_id, info, timeout),
        )
        .await
        {
            Err(_) => Err(self.timeout_status("join")),
            Ok(Err(e)) => Err(self.status_of(e)),
            Ok(Ok(m)) => Ok(Response::new(JoinResponse {
                cluster_id: self.cluster_id,
                cluster_name: self.cluster_name.clone(),
                log: keel_proto::DEFAULT_LOG,
                configuration: keel_raft::encode_membership(&m),
            })),
        }
    }
}
