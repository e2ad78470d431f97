//! The driver of one raft group: one tokio task owns the `Raft` instance and
//! carries out its Readies against the group's keel-log store and the peer
//! transport. The contract it follows is the module doc of
//! `keel_raft::ready`.
//!
//! One loop iteration:
//! 1. take every queued input at once (`recv_many`): peer messages (`step`),
//!    ticks, reads (`read_index`), transfers, persistence notices
//!    (`on_persisted`), and client appends;
//! 2. coalesce all the client appends that arrived together into one entry
//!    (bounded by `max_entry_bytes`) and `propose` it once: record `i` of
//!    the entry takes offset `base_offset + i`;
//! 3. while `has_ready()`: save the hard state if it changed (fsynced, off
//!    the async workers, before the entries are submitted), submit the
//!    entries to the store (non-blocking; the completion joins the group's
//!    queue of writes in flight), send the messages, apply the committed
//!    entries and serve the reads.
//!
//! The loop waits on its inbox and, at the same time, on the oldest write in
//! flight: when it completes (the store's writer thread wakes this task
//! directly), that persist id and every later one already complete are
//! reported with `on_persisted`, in order.
//!
//! Invariants:
//! - The log is the state machine: applying an entry only moves the
//!   committed watermark (a `watch` readers wait on) and acknowledges the
//!   appends waiting for that entry. Readers never see past the watermark,
//!   although the store also holds uncommitted entries.
//! - An append is acknowledged only once its entry is applied, i.e.
//!   committed (fsynced on a quorum) and durable here. If the entry applied
//!   at its index has another term, or an entry of a higher term was applied
//!   first, it was replaced: the client is told it was not appended.
//! - Persist ids reach `on_persisted` in order: writes in flight complete
//!   in submission order (keel-log's guarantee) and are taken from the
//!   front of the queue only.
//! - A failed store (a write or fsync error) stops the group: it steps no
//!   more messages, ticks no more, refuses writes and acknowledges nothing.
//! - A full disk does not: keel-log refuses the write that found no space
//!   and every write queued behind it, leaving nothing of them visible. The
//!   driver keeps every write in flight (its persist id, hard state and
//!   entries), so it takes that write and all later ones, in order, into a
//!   `deferred` queue, stops submitting (new Readies join the queue), refuses
//!   new appends with `DiskFull`, and tries the queue again every
//!   `DISK_FULL_RETRY`. Nothing of them is reported persisted meanwhile, so
//!   the persistence gate holds this node's acknowledgements and votes, and
//!   raft keeps the entries in memory (its unstable part). Writing the same
//!   writes again in their order gives the log they would have given (an
//!   append replaces the suffix from its first index).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use keel_log::{Completion, LogError, LogStore};
use keel_raft::{
    BatchBuilder, Config, Entry, GroupId, InitialState, Membership, Message, NONE, NodeId, Raft,
    Role, SoftState,
};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::error::{GroupError, StartError};
use crate::metrics::GroupMetrics;
use crate::node::storage::LogStorage;
use crate::node::transport::Transport;

/// The committed watermark of a group, as applied on this node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Committed {
    /// Last applied raft index.
    pub index: u64,
    /// Records below this offset are committed.
    pub end_offset: u64,
}

/// A group's view of itself, for the Status call.
#[derive(Debug, Clone)]
pub struct GroupStatus {
    pub raft: keel_raft::Status,
    pub voters: Vec<NodeId>,
    pub failed: Option<String>,
    /// Why writes wait, while the disk is full.
    pub disk_full: Option<String>,
}

pub type Reply<T> = oneshot::Sender<Result<T, GroupError>>;

pub enum Input {
    Peer(Message),
    Tick,
    /// Records to append; the reply is the offset of the first.
    Append {
        records: Vec<Bytes>,
        bytes: usize,
        reply: Reply<u64>,
        start: Instant,
    },
    /// A linearizable read: answered once this node has applied up to the
    /// leader's commit index at the time of the request.
    Read {
        reply: Reply<()>,
    },
    Transfer {
        to: NodeId,
        reply: Reply<()>,
    },
    Status {
        reply: oneshot::Sender<GroupStatus>,
    },
    Stop,
}

#[derive(Debug, Clone)]
pub struct GroupConfig {
    pub group: GroupId,
    pub node_id: NodeId,
    pub voters: Vec<NodeId>,
    pub tick: Duration,
    pub election_tick: u32,
    /// Appends that arrive together are coalesced into one entry up to this
    /// size (a single larger request still goes alone).
    pub max_entry_bytes: usize,
}

/// What the rest of the node holds of a group.
#[derive(Clone)]
pub struct GroupHandle {
    pub id: GroupId,
    pub tx: mpsc::UnboundedSender<Input>,
    pub committed: watch::Receiver<Committed>,
    pub store: Arc<LogStore>,
}

impl GroupHandle {
    pub async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Input) -> Result<T, GroupError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).map_err(|_| GroupError::Stopped)?;
        rx.await.map_err(|_| GroupError::Stopped)?
    }

    pub async fn status(&self) -> Result<GroupStatus, GroupError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Input::Status { reply: tx })
            .map_err(|_| GroupError::Stopped)?;
        rx.await.map_err(|_| GroupError::Stopped)
    }

    /// Committed records from `start` (inclusive) to `end` (exclusive),
    /// at most `max_records` and about `max_bytes` of payload (at least one
    /// record if there is one). Returns the records and the committed end.
    pub fn read_committed(
        &self,
        start: u64,
        end: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<(Vec<(u64, Bytes)>, u64), keel_log::LogError> {
        let committed = self.committed.borrow().end_offset;
        let end = end.min(committed);
        let mut out = Vec::new();
        if start >= end {
            return Ok((out, committed));
        }
        let mut next = start;
        let mut bytes = 0usize;
        'outer: while next < end {
            let batches = self.store.read_from_offset(next, max_bytes.max(1))?;
            if batches.is_empty() {
                break;
            }
            for b in batches {
                for (off, r) in (b.base_offset()..).zip(b.records()) {
                    if off >= end || out.len() >= max_records {
                        break 'outer;
                    }
                    if off >= next {
                        if !out.is_empty() && bytes + r.len() > max_bytes {
                            break 'outer;
                        }
                        bytes += r.len();
                        out.push((off, r));
                    }
                }
                next = next.max(b.end_offset());
            }
        }
        Ok((out, committed))
    }
}

struct Waiter {
    index: u64,
    term: u64,
    offset: u64,
    reply: Reply<u64>,
    start: Instant,
    proposed: Instant,
}

/// A write submitted to the store and not yet reported persisted: kept
/// whole so that it can be written again if the disk was full.
struct InFlight {
    id: u64,
    /// `None`: nothing to wait for (a Ready with only a hard state, saved
    /// before).
    completion: Option<Completion>,
    submitted: Instant,
    entries: Vec<Entry>,
}

/// A write waiting for disk space, in persist-id order.
struct Deferred {
    id: u64,
    /// Still to be saved (it found no space either).
    hard_state: Option<keel_log::HardState>,
    entries: Vec<Entry>,
}

/// How often writes refused for want of space are tried again.
const DISK_FULL_RETRY: Duration = Duration::from_millis(500);

/// While the disk is full.
struct DiskFull {
    /// The error, for clients and the status.
    why: String,
    since: Instant,
    retry_at: Instant,
    /// Refusals since the last log line (logged every few seconds).
    last_log: Instant,
}

struct Pending {
    reply: Reply<u64>,
    position: u64,
    start: Instant,
}

struct Driver {
    cfg: GroupConfig,
    raft: Raft<LogStorage>,
    store: Arc<LogStore>,
    transport: Arc<Transport>,
    metrics: Arc<GroupMetrics>,
    /// Writes in flight, in persist-id order.
    persisting: VecDeque<InFlight>,
    /// Writes waiting for disk space (only while `disk_full`).
    deferred: VecDeque<Deferred>,
    disk_full: Option<DiskFull>,
    committed_tx: watch::Sender<Committed>,
    committed: Committed,
    // The proposal being built from the appends of this iteration.
    builder: BatchBuilder,
    pending: Vec<Pending>,
    waiters: VecDeque<Waiter>,
    next_ctx: u64,
    reads: HashMap<u64, Reply<()>>,
    /// Confirmed reads waiting for this node to apply up to their index.
    confirmed_reads: Vec<(u64, Reply<()>)>,
    transfers: Vec<(NodeId, Reply<()>)>,
    failed: Option<String>,
    soft: SoftState,
}

/// Starts the driver of a group over an open store. Returns the handle and
/// the driver task.
pub fn start(
    cfg: GroupConfig,
    store: Arc<LogStore>,
    transport: Arc<Transport>,
    metrics: Arc<GroupMetrics>,
) -> Result<(GroupHandle, tokio::task::JoinHandle<()>), StartError> {
    let hs = store.hard_state();
    let mut rc = Config::new(cfg.node_id, cfg.group);
    rc.election_tick = cfg.election_tick;
    rc.heartbeat_tick = 1;
    rc.max_msg_bytes = 4 << 20;
    rc.max_inflight_msgs = 512;
    rc.max_inflight_bytes = 64 << 20;
    #[cfg(feature = "fault-injection")]
    crate::node::fault::apply_to_raft(&mut rc);
    let init = InitialState {
        hard_state: keel_raft::HardState {
            term: hs.term,
            vote: hs.vote,
        },
        membership: Membership::new(cfg.voters.iter().copied(), []),
        applied: 0,
    };
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ cfg.node_id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut raft = Raft::new(rc, LogStorage(store.clone()), init, seed).map_err(|source| {
        StartError::Raft {
            group: cfg.group,
            source,
        }
    })?;
    if cfg.voters == [cfg.node_id] {
        // A single-node cluster needs no election timeout to pass.
        raft.start_election();
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let (committed_tx, committed_rx) = watch::channel(Committed::default());
    tokio::spawn(ticker(cfg.tick, tx.clone()));
    metrics.term.store(hs.term, Relaxed);
    let soft = SoftState {
        role: Role::Follower,
        leader: NONE,
        term: hs.term,
    };
    let driver = Driver {
        cfg: cfg.clone(),
        raft,
        store: store.clone(),
        transport,
        metrics,
        persisting: VecDeque::new(),
        deferred: VecDeque::new(),
        disk_full: None,
        committed_tx,
        committed: Committed::default(),
        builder: BatchBuilder::new(),
        pending: Vec::new(),
        waiters: VecDeque::new(),
        next_ctx: 1,
        reads: HashMap::new(),
        confirmed_reads: Vec::new(),
        transfers: Vec::new(),
        failed: None,
        soft,
    };
    let task = tokio::spawn(driver.run(rx));
    Ok((
        GroupHandle {
            id: cfg.group,
            tx,
            committed: committed_rx,
            store,
        },
        task,
    ))
}

async fn ticker(every: Duration, tx: mpsc::UnboundedSender<Input>) {
    let mut iv = tokio::time::interval(every);
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        iv.tick().await;
        if tx.send(Input::Tick).is_err() {
            return;
        }
    }
}

/// Waits for the oldest write in flight to complete (it stays at the front
/// of the queue); returns its outcome. Cancel-safe: the completion is
/// polled in place, never taken.
async fn oldest_done(q: &mut VecDeque<InFlight>) -> Result<(), LogError> {
    match q.front_mut() {
        Some(InFlight {
            completion: Some(c),
            ..
        }) => c.await.map(|_| ()),
        Some(_) => Ok(()),
        None => std::future::pending().await,
    }
}

fn no_space(path: &std::path::Path) -> String {
    format!("no space left on device at {}", path.display())
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn map_propose_error(e: keel_raft::Error) -> GroupError {
    match e {
        keel_raft::Error::NotLeader { leader } => GroupError::NotLeader { leader },
        keel_raft::Error::TransferInProgress(t) => GroupError::Busy(format!(
            "leadership is being transferred to node {t}; nothing was appended, retry shortly"
        )),
        keel_raft::Error::Backpressure { .. } => {
            GroupError::Busy(format!("{e}; nothing was appended"))
        }
        other => GroupError::Invalid(other.to_string()),
    }
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Follower => "follower",
        Role::PreCandidate => "pre-candidate",
        Role::Candidate => "candidate",
        Role::Leader => "leader",
    }
}

pub fn role_str(r: Role) -> &'static str {
    role_name(r)
}

impl Driver {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Input>) {
        let mut inputs = Vec::with_capacity(1024);
        let mut ticks = 0u64;
        loop {
            tokio::select! {
                biased;
                outcome = oldest_done(&mut self.persisting), if !self.persisting.is_empty() => {
                    self.on_written(outcome);
                    while inputs.len() < 4096 {
                        match rx.try_recv() {
                            Ok(i) => inputs.push(i),
                            Err(_) => break,
                        }
                    }
                }
                n = rx.recv_many(&mut inputs, 4096) => {
                    if n == 0 {
                        break;
                    }
                }
                _ = sleep_until(self.disk_full.as_ref().map(|d| d.retry_at)) => {
                    self.retry_deferred().await;
                }
            }
            let mut stop = false;
            for input in inputs.drain(..) {
                match input {
                    Input::Tick => {
                        ticks += 1;
                        if self.failed.is_none() {
                            self.raft.tick();
                            if ticks.is_multiple_of(10) {
                                self.update_lag();
                            }
                        }
                    }
                    Input::Stop => stop = true,
                    other => self.handle(other),
                }
            }
            self.propose_pending();
            self.drain_ready().await;
            if stop {
                break;
            }
        }
        self.fail_everything(GroupError::Stopped);
        debug!(group = self.cfg.group, "raft group stopped");
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Peer(m) => {
                if self.failed.is_some() {
                    return;
                }
                let (from, kind) = (m.from, m.body.kind());
                if let Err(e) = self.raft.step(m) {
                    warn!(group = self.cfg.group, from, kind, error = %e, "refused a peer message");
                }
            }
            Input::Append {
                records,
                bytes,
                reply,
                start,
            } => self.add_append(records, bytes, reply, start),
            Input::Read { reply } => {
                if let Some(f) = &self.failed {
                    let _ = reply.send(Err(GroupError::StoreFailed(f.clone())));
                    return;
                }
                let ctx = self.next_ctx;
                self.next_ctx += 1;
                match self.raft.read_index(ctx) {
                    Ok(()) => {
                        self.reads.insert(ctx, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(map_propose_error(e)));
                    }
                }
            }
            Input::Transfer { to, reply } => {
                if self.raft.leader() == to && to != NONE {
                    let _ = reply.send(Ok(()));
                    return;
                }
                match self.raft.transfer_leader(to) {
                    Ok(()) => self.transfers.push((to, reply)),
                    Err(e) => {
                        let _ = reply.send(Err(map_propose_error(e)));
                    }
                }
            }
            Input::Status { reply } => {
                let _ = reply.send(GroupStatus {
                    raft: self.raft.status(),
                    voters: self.raft.membership().all_voters().collect(),
                    failed: self.failed.clone(),
                    disk_full: self.disk_full.as_ref().map(|d| d.why.clone()),
                });
            }
            Input::Tick | Input::Stop => {}
        }
    }

    /// The oldest write in flight completed: report it and every later
    /// write already complete (one `on_persisted` with the highest id).
    fn on_written(&mut self, outcome: Result<(), LogError>) {
        let now = Instant::now();
        let mut last = None;
        let mut outcome = outcome;
        loop {
            match outcome {
                Ok(()) => {}
                Err(LogError::NoSpace { path }) => {
                    self.on_no_space(no_space(&path));
                    break;
                }
                Err(e) => {
                    self.fail_store(e.to_string());
                    return;
                }
            }
            let w = self.persisting.pop_front().expect("the front completed");
            self.metrics
                .fsync_latency
                .observe(now.duration_since(w.submitted));
            last = Some(w.id);
            let Some(front) = self.persisting.front_mut() else {
                break;
            };
            outcome = match front.completion.take() {
                None => Ok(()),
                Some(c) => match c.wait_timeout(Duration::ZERO) {
                    Ok(o) => o.map(|_| ()),
                    Err(c) => {
                        front.completion = Some(c);
                        break;
                    }
                },
            };
        }
        if let Some(last) = last
            && let Err(e) = self.raft.on_persisted(last)
        {
            error!(group = self.cfg.group, error = %e, "persistence notice refused");
        }
    }

    /// The store refused the oldest write in flight for want of space, and
    /// with it every later one: keep them all, in order, to write again.
    fn on_no_space(&mut self, why: String) {
        let mut taken: VecDeque<Deferred> = self
            .persisting
            .drain(..)
            .map(|w| Deferred {
                id: w.id,
                hard_state: None,
                entries: w.entries,
            })
            .collect();
        taken.append(&mut self.deferred);
        self.deferred = taken;
        self.enter_disk_full(why);
    }

    fn enter_disk_full(&mut self, why: String) {
        let now = Instant::now();
        match &mut self.disk_full {
            Some(d) => {
                d.retry_at = now + DISK_FULL_RETRY;
                if now.duration_since(d.last_log) >= Duration::from_secs(10) {
                    warn!(group = self.cfg.group, error = %why, waiting_ms = now.duration_since(d.since).as_millis() as u64, writes = self.deferred.len(), "the disk is still full; writes wait for space");
                    d.last_log = now;
                }
                d.why = why;
            }
            None => {
                warn!(group = self.cfg.group, error = %why, writes = self.deferred.len(), "the disk is full: this node's writes wait (nothing lost, nothing acknowledged meanwhile) and appends are refused; free space and it resumes by itself");
                self.metrics.disk_full.store(1, Relaxed);
                self.disk_full = Some(DiskFull {
                    why,
                    since: now,
                    retry_at: now + DISK_FULL_RETRY,
                    last_log: now,
                });
            }
        }
    }

    /// Writes the deferred writes again, in order. A write that again finds
    /// no space comes back through `on_written`.
    async fn retry_deferred(&mut self) {
        if self.failed.is_some() {
            self.disk_full = None;
            return;
        }
        while let Some(mut d) = self.deferred.pop_front() {
            if let Some(hs) = d.hard_state {
                match self.save_hard_state(hs).await {
                    Ok(()) => d.hard_state = None,
                    Err(LogError::NoSpace { path }) => {
                        self.deferred.push_front(d);
                        self.enter_disk_full(no_space(&path));
                        return;
                    }
                    Err(e) => {
                        self.fail_store(e.to_string());
                        return;
                    }
                }
            }
            self.submit(d.id, d.entries);
        }
        if let Some(d) = self.disk_full.take() {
            info!(
                group = self.cfg.group,
                waited_ms = d.since.elapsed().as_millis() as u64,
                "disk space is available again: the waiting writes were submitted"
            );
            self.metrics.disk_full.store(0, Relaxed);
        }
    }

    async fn save_hard_state(&self, hs: keel_log::HardState) -> Result<(), LogError> {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.save_hard_state(hs)).await {
            Ok(r) => r,
            Err(e) => Err(LogError::Io {
                op: "save the hard state",
                path: self.store.dir().to_path_buf(),
                source: Arc::new(std::io::Error::other(e.to_string())),
            }),
        }
    }

    /// Submits a write to the store (non-blocking) and queues it in flight.
    fn submit(&mut self, id: u64, entries: Vec<Entry>) {
        let completion = if entries.is_empty() {
            None
        } else {
            Some(self.store.append(entries.clone()))
        };
        self.persisting.push_back(InFlight {
            id,
            completion,
            submitted: Instant::now(),
            entries,
        });
    }

    fn add_append(&mut self, records: Vec<Bytes>, bytes: usize, reply: Reply<u64>, start: Instant) {
        self.metrics.append_requests.fetch_add(1, Relaxed);
        if let Some(f) = &self.failed {
            let _ = reply.send(Err(GroupError::StoreFailed(f.clone())));
            return;
        }
        if self.raft.role() != Role::Leader {
            let _ = reply.send(Err(GroupError::NotLeader {
                leader: self.raft.leader(),
            }));
            return;
        }
        if let Some(d) = &self.disk_full {
            self.metrics.append_errors.fetch_add(1, Relaxed);
            let _ = reply.send(Err(GroupError::DiskFull(d.why.clone())));
            return;
        }
        let add = bytes + records.len() * keel_format::RECORD_PREFIX_LEN;
        if !self.builder.is_empty() && self.builder.encoded_len() + add > self.cfg.max_entry_bytes {
            self.propose_pending();
        }
        let position = self.builder.record_count() as u64;
        for r in &records {
            self.builder.push(r);
        }
        self.metrics
            .append_records
            .fetch_add(records.len() as u64, Relaxed);
        self.metrics.append_bytes.fetch_add(bytes as u64, Relaxed);
        self.pending.push(Pending {
            reply,
            position,
            start,
        });
    }

    /// Proposes the appends gathered so far as one entry.
    fn propose_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let records = std::mem::take(&mut self.builder);
        let proposed = Instant::now();
        match self.raft.propose(records, now_ms()) {
            Ok(p) => {
                self.metrics.proposals.fetch_add(1, Relaxed);
                for w in self.pending.drain(..) {
                    self.waiters.push_back(Waiter {
                        index: p.index,
                        term: p.term,
                        offset: p.base_offset + w.position,
                        reply: w.reply,
                        start: w.start,
                        proposed,
                    });
                }
            }
            Err(e) => {
                let err = map_propose_error(e);
                for w in self.pending.drain(..) {
                    self.metrics.append_errors.fetch_add(1, Relaxed);
                    let _ = w.reply.send(Err(err.clone()));
                }
            }
        }
    }

    async fn drain_ready(&mut self) {
        while self.failed.is_none() && self.raft.has_ready() {
            let rd = match self.raft.ready() {
                Ok(rd) => rd,
                Err(e) => {
                    self.fail_store(format!("raft could not read its log: {e}"));
                    return;
                }
            };
            if let Some(ss) = rd.soft_state {
                self.on_soft_state(ss);
            }
            if let Some(meta) = &rd.install_snapshot {
                // The server never compacts its log (the log is the state),
                // so no leader should send one. Refuse rather than apply
                // half of it: this node stops acknowledging anything.
                self.fail_store(format!(
                    "a snapshot at index {} arrived, but this server does not install snapshots",
                    meta.index
                ));
                return;
            }
            if let Some(id) = rd.persist_id {
                let mut hard_state = rd.hard_state.map(|hs| keel_log::HardState {
                    term: hs.term,
                    vote: hs.vote,
                });
                if self.disk_full.is_none()
                    && let Some(hs) = hard_state
                {
                    match self.save_hard_state(hs).await {
                        Ok(()) => hard_state = None,
                        Err(LogError::NoSpace { path }) => self.enter_disk_full(no_space(&path)),
                        Err(e) => {
                            self.fail_store(e.to_string());
                            return;
                        }
                    }
                }
                if self.disk_full.is_some() {
                    self.deferred.push_back(Deferred {
                        id,
                        hard_state,
                        entries: rd.entries,
                    });
                } else {
                    self.submit(id, rd.entries);
                }
            }
            for m in rd.messages {
                self.transport.send(m);
            }
            self.apply(rd.committed);
            for rs in rd.read_states {
                if let Some(reply) = self.reads.remove(&rs.ctx) {
                    if rs.index <= self.committed.index {
                        let _ = reply.send(Ok(()));
                    } else {
                        self.confirmed_reads.push((rs.index, reply));
                    }
                }
            }
            for ctx in rd.failed_reads {
                if let Some(reply) = self.reads.remove(&ctx) {
                    let _ = reply.send(Err(GroupError::NotLeader {
                        leader: self.raft.leader(),
                    }));
                }
            }
        }
    }

    fn apply(&mut self, entries: Vec<Entry>) {
        let Some(last) = entries.last() else { return };
        let now = Instant::now();
        let mut records = 0u64;
        for e in &entries {
            records += e.record_count() as u64;
            let mut first_of_entry = true;
            while let Some(w) = self.waiters.front() {
                let doomed = w.term < e.term();
                if w.index > e.index() && !doomed {
                    break;
                }
                let w = self.waiters.pop_front().expect("front checked");
                if w.index == e.index() && w.term == e.term() {
                    if first_of_entry {
                        self.metrics
                            .commit_latency
                            .observe(now.duration_since(w.proposed));
                        first_of_entry = false;
                    }
                    self.metrics
                        .append_latency
                        .observe(now.duration_since(w.start));
                    let _ = w.reply.send(Ok(w.offset));
                } else {
                    self.metrics.append_errors.fetch_add(1, Relaxed);
                    let _ = w.reply.send(Err(GroupError::LostLeadership));
                }
            }
        }
        self.metrics
            .applied_entries
            .fetch_add(entries.len() as u64, Relaxed);
        self.metrics.applied_records.fetch_add(records, Relaxed);
        self.committed = Committed {
            index: last.index(),
            end_offset: last.end_offset(),
        };
        self.metrics.applied_index.store(last.index(), Relaxed);
        self.metrics
            .commit_index
            .store(self.raft.status().commit, Relaxed);
        self.committed_tx.send_replace(self.committed);
        if !self.confirmed_reads.is_empty() {
            let applied = self.committed.index;
            let mut keep = Vec::new();
            for (index, reply) in self.confirmed_reads.drain(..) {
                if index <= applied {
                    let _ = reply.send(Ok(()));
                } else {
                    keep.push((index, reply));
                }
            }
            self.confirmed_reads = keep;
        }
    }

    fn on_soft_state(&mut self, ss: SoftState) {
        let old = self.soft;
        self.soft = ss;
        self.metrics.term.store(ss.term, Relaxed);
        self.metrics.role.store(
            match ss.role {
                Role::Follower => 0,
                Role::PreCandidate => 1,
                Role::Candidate => 2,
                Role::Leader => 3,
            },
            Relaxed,
        );
        self.metrics.leader.store(ss.leader, Relaxed);
        if ss.leader != old.leader && ss.leader != NONE {
            self.metrics.leader_changes.fetch_add(1, Relaxed);
        }
        if ss.role != old.role || ss.leader != old.leader {
            info!(
                group = self.cfg.group,
                role = role_name(ss.role),
                term = ss.term,
                leader = ss.leader,
                "role changed"
            );
        }
        if ss.leader != NONE {
            let mut keep = Vec::new();
            for (to, reply) in std::mem::take(&mut self.transfers) {
                if to == ss.leader {
                    let _ = reply.send(Ok(()));
                } else {
                    keep.push((to, reply));
                }
            }
            self.transfers = keep;
        }
        if ss.role != Role::Leader {
            self.metrics
                .follower_lag
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
        }
    }

    fn update_lag(&self) {
        if self.soft.role != Role::Leader {
            return;
        }
        let st = self.raft.status();
        let mut lag = self
            .metrics
            .follower_lag
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for p in &st.peers {
            lag.insert(p.id, st.last_index.saturating_sub(p.matched));
        }
    }

    fn fail_store(&mut self, msg: String) {
        if self.failed.is_some() {
            return;
        }
        error!(
            group = self.cfg.group,
            error = %msg,
            "the group's log store failed: this node stops taking part in the group and refuses writes; restart it to recover from the files"
        );
        self.failed = Some(msg.clone());
        self.fail_everything(GroupError::StoreFailed(msg));
    }

    fn fail_everything(&mut self, err: GroupError) {
        for w in self.waiters.drain(..) {
            let _ = w.reply.send(Err(err.clone()));
        }
        for w in self.pending.drain(..) {
            let _ = w.reply.send(Err(err.clone()));
        }
        for (_, r) in self.reads.drain() {
            let _ = r.send(Err(err.clone()));
        }
        for (_, r) in self.confirmed_reads.drain(..) {
            let _ = r.send(Err(err.clone()));
        }
        for (_, r) in self.transfers.drain(..) {
            let _ = r.send(Err(err.clone()));
        }
    }
}
