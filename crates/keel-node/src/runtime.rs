//! The tokio driver of one group: one task owns the [`GroupCore`] and
//! carries out its outputs against the group's keel-log store, snapshot
//! store, applied mark and the peer transport. It decides nothing: the
//! core does (see `core`'s module doc for the output contract this follows).
//!
//! One loop iteration: take every queued input at once (`recv_many`) or
//! the completion of the oldest write in flight (the store's writer thread
//! wakes the task directly); feed them to the core; `poll` it and carry out
//! the output; repeat while the core has more. Hard state is saved
//! (fsynced, on the blocking pool, awaited) before the entries of its write
//! are submitted; entries are submitted without waiting (keel-log completes
//! writes in submission order), so the leader's disk write overlaps
//! replication. Mark writes, snapshots and compaction run on the blocking
//! pool and report back through the inbox.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use keel_log::{Completion, LogError};
use keel_raft::{Index, Membership, Message, NodeId, Role, SoftState};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::core::{
    Answer, ChangeRequest, CoreStatus, Done, Event, GroupCore, Output, Token, Write, WriteOutcome,
};
use crate::error::GroupError;
use crate::mark::{MarkFile, Watermark};
use crate::member_info::MemberInfo;
use crate::metrics::GroupMetrics;
use crate::snapshot_store::NewSnapshot;
use crate::state_machine::StateMachine;
use crate::storage::GroupStorage;
use crate::transport::Transport;

/// A reply channel.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, GroupError>>;
/// A query to run against the state machine (or to fail).
pub(crate) type Query<M> = Box<dyn FnOnce(Result<&M, GroupError>) + Send>;

/// What reaches a group's task.
pub(crate) enum Input<M: StateMachine> {
    Peer(Message),
    Observe(NodeId, MemberInfo),
    Tick,
    Propose {
        records: Vec<Bytes>,
        reply: Reply<Vec<M::Response>>,
        start: Instant,
    },
    Control {
        payload: Bytes,
        reply: Reply<()>,
    },
    Read {
        query: Query<M>,
    },
    ReadLocal {
        query: Query<M>,
    },
    Transfer {
        to: NodeId,
        reply: Reply<()>,
    },
    Preferred {
        leader: Option<NodeId>,
        reply: Reply<()>,
    },
    Change {
        req: ChangeRequest,
        timeout: Duration,
        reply: Reply<Membership>,
    },
    Admit {
        id: NodeId,
        info: MemberInfo,
        timeout: Duration,
        reply: Reply<Membership>,
    },
    Status {
        reply: oneshot::Sender<CoreStatus>,
    },
    Snapshot {
        reply: Reply<bool>,
    },
    MarkDone(Watermark, bool),
    SnapshotDone(Index, Result<(), String>),
    Stop,
}

/// A request waiting for the core's answer.
pub(crate) enum Waiting<M: StateMachine> {
    Propose {
        reply: Reply<Vec<M::Response>>,
        start: Instant,
    },
    Unit(Reply<()>),
    Membership(Reply<Membership>),
    Read(Query<M>),
}

/// A write handed to the store and not yet reported.
struct InFlight {
    id: u64,
    completion: Option<Completion>,
    submitted: Instant,
}

/// The task's state besides the core.
pub(crate) struct Driver<M: StateMachine> {
    pub(crate) core: GroupCore<GroupStorage, M>,
    pub(crate) storage: GroupStorage,
    pub(crate) transport: Arc<Transport>,
    pub(crate) metrics: Arc<GroupMetrics>,
    pub(crate) mark: Arc<Mutex<MarkFile>>,
    pub(crate) tx: mpsc::UnboundedSender<Input<M>>,
    pub(crate) served_tx: watch::Sender<Watermark>,
    pub(crate) role_tx: watch::Sender<SoftState>,
    pub(crate) membership_tx: watch::Sender<Membership>,
    pub(crate) tick: Duration,
    pub(crate) waiting: HashMap<Token, Waiting<M>>,
    pub(crate) next_token: Token,
    in_flight: VecDeque<InFlight>,
    /// The latest and the last committed configuration (the directory
    /// holds the members of both).
    latest: Membership,
    committed: Membership,
}

impl<M: StateMachine> Driver<M> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        core: GroupCore<GroupStorage, M>,
        storage: GroupStorage,
        transport: Arc<Transport>,
        metrics: Arc<GroupMetrics>,
        mark: MarkFile,
        tx: mpsc::UnboundedSender<Input<M>>,
        served_tx: watch::Sender<Watermark>,
        role_tx: watch::Sender<SoftState>,
        membership_tx: watch::Sender<Membership>,
        tick: Duration,
    ) -> Self {
        let core_latest = core.raft().membership().clone();
        let core_committed = core.committed_membership().clone();
        Driver {
            core,
            storage,
            transport,
            metrics,
            mark: Arc::new(Mutex::new(mark)),
            tx,
            served_tx,
            role_tx,
            membership_tx,
            tick,
            waiting: HashMap::new(),
            next_token: 1,
            in_flight: VecDeque::new(),
            latest: core_latest,
            committed: core_committed,
        }
    }

    fn token(&mut self, w: Waiting<M>) -> Token {
        let t = self.next_token;
        self.next_token += 1;
        self.waiting.insert(t, w);
        t
    }

    fn ticks_for(&self, d: Duration) -> u64 {
        (d.as_millis() / self.tick.as_millis().max(1)).max(1) as u64
    }

    /// Runs until `Stop` or every sender is gone.
    pub(crate) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Input<M>>) {
        let mut inputs = Vec::with_capacity(1024);
        let group = self.core.group();
        // Whatever the start replayed: publish it.
        self.served_tx.send_replace(self.core.served());
        self.membership_tx
            .send_replace(self.core.raft().membership().clone());
        self.step_output().await;
        loop {
            tokio::select! {
                biased;
                outcome = oldest_done(&mut self.in_flight), if !self.in_flight.is_empty() => {
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
            }
            let mut stop = false;
            for input in inputs.drain(..) {
                if matches!(input, Input::Stop) {
                    stop = true;
                } else {
                    self.handle(input);
                }
            }
            self.step_output().await;
            if stop {
                break;
            }
        }
        self.core.fail_all(GroupError::Stopped);
        let out = self.core.poll(now_ms());
        self.answer(out.done);
        for (_, w) in self.waiting.drain() {
            fail_waiting(w, GroupError::Stopped);
        }
        debug!(group, "raft group stopped");
    }

    fn handle(&mut self, input: Input<M>) {
        let c = &mut self.core;
        match input {
            Input::Peer(m) => {
                let (from, kind) = (m.from, m.body.kind());
                if let Err(e) = c.step(m) {
                    warn!(group = c.group(), from, kind, error = %e, "refused a peer message");
                }
            }
            Input::Observe(id, info) => c.observe(id, info),
            Input::Tick => {
                c.tick();
                self.update_lag();
            }
            Input::Propose {
                records,
                reply,
                start,
            } => {
                self.metrics.append_requests.fetch_add(1, Relaxed);
                self.metrics
                    .append_records
                    .fetch_add(records.len() as u64, Relaxed);
                let bytes: usize = records.iter().map(Bytes::len).sum();
                self.metrics.append_bytes.fetch_add(bytes as u64, Relaxed);
                let t = self.token(Waiting::Propose { reply, start });
                self.core.propose(t, &records);
            }
            Input::Control { payload, reply } => {
                let t = self.token(Waiting::Unit(reply));
                self.core.propose_control(t, payload, now_ms());
            }
            Input::Read { query } => {
                self.metrics.reads.fetch_add(1, Relaxed);
                let t = self.token(Waiting::Read(query));
                self.core.read(t);
            }
            Input::ReadLocal { query } => {
                self.metrics.reads.fetch_add(1, Relaxed);
                query(Ok(self.core.state_machine()));
            }
            Input::Transfer { to, reply } => {
                let t = self.token(Waiting::Unit(reply));
                self.core.transfer(t, to);
            }
            Input::Preferred { leader, reply } => {
                let t = self.token(Waiting::Unit(reply));
                self.core.set_preferred_leader(t, leader, now_ms());
            }
            Input::Change {
                req,
                timeout,
                reply,
            } => {
                let ticks = self.ticks_for(timeout);
                let t = self.token(Waiting::Membership(reply));
                self.core.change(t, req, ticks);
            }
            Input::Admit {
                id,
                info,
                timeout,
                reply,
            } => {
                let ticks = self.ticks_for(timeout);
                let t = self.token(Waiting::Membership(reply));
                self.core.admit(t, id, info, ticks);
            }
            Input::Status { reply } => {
                let _ = reply.send(self.core.status());
            }
            Input::Snapshot { reply } => {
                let _ = reply.send(Ok(self.core.take_snapshot()));
            }
            Input::MarkDone(w, ok) => self.core.mark_done(w, ok),
            Input::SnapshotDone(index, r) => self.core.snapshot_done(index, r),
            Input::Stop => {}
        }
    }

    /// Polls the core and carries out its output until it has no more.
    async fn step_output(&mut self) {
        loop {
            let out = self.core.poll(now_ms());
            if out.is_empty() {
                break;
            }
            self.execute(out).await;
        }
        let s = self.core.stats();
        let m = &self.metrics;
        m.proposals.store(s.proposals, Relaxed);
        m.applied_entries.store(s.applied_entries, Relaxed);
        m.applied_records.store(s.applied_records, Relaxed);
        m.leader_changes.store(s.leader_changes, Relaxed);
        m.append_errors.store(s.refused, Relaxed);
    }

    async fn execute(&mut self, out: Output<M::Response>) {
        let group = self.core.group();
        for c in &out.chunks {
            let r = self
                .storage
                .snapshots
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .stage(c.offset, &c.data);
            if let Err(e) = r {
                self.core.write_failed(format!(
                    "staging a snapshot chunk at offset {}: {e}",
                    c.offset
                ));
                return;
            }
        }
        if let Some(meta) = &out.install
            && let Err(why) = self.install(meta).await
        {
            self.core.write_failed(why);
            return;
        }
        for w in out.writes {
            if !self.submit(w).await {
                break;
            }
        }
        self.transport.send_all(out.messages);
        self.answer(out.done);
        if let Some(w) = out.mark {
            let mark = self.mark.clone();
            let tx = self.tx.clone();
            tokio::task::spawn_blocking(move || {
                let r = mark.lock().unwrap_or_else(|p| p.into_inner()).write(w);
                if let Err(e) = &r {
                    error!(group, error = %e, "writing the applied mark failed");
                }
                let _ = tx.send(Input::MarkDone(w, r.is_ok()));
            });
        }
        if let Some(job) = out.snapshot {
            let storage = self.storage.clone();
            let tx = self.tx.clone();
            tokio::task::spawn_blocking(move || {
                let index = job.meta.index;
                let r = write_snapshot(&storage, job);
                match &r {
                    Ok(()) => info!(group, index, "snapshot taken"),
                    Err(e) => warn!(group, index, error = %e, "taking a snapshot failed"),
                }
                let _ = tx.send(Input::SnapshotDone(index, r));
            });
        }
        if let Some(upto) = out.compact {
            let log = self.storage.log.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = log.purge_prefix(upto) {
                    warn!(group, upto, error = %e, "compacting the log failed");
                } else {
                    debug!(group, upto, "compacted the log");
                }
            });
        }
        if let Some(w) = out.served {
            self.metrics.applied_index.store(w.index, Relaxed);
            self.served_tx.send_replace(w);
        }
        for e in out.events {
            match e {
                Event::Role(ss) => self.on_role(ss),
                Event::Membership(m) => {
                    self.latest = m.clone();
                    self.transport.context().directory.set_group(
                        group,
                        &self.latest,
                        &self.committed,
                    );
                    info!(group, voters = ?m.voters, outgoing = ?m.outgoing, learners = ?m.learners, "configuration changed");
                    self.membership_tx.send_replace(m);
                }
                Event::Committed(m) => {
                    let ctx = self.transport.context();
                    if m.is_member(ctx.me)
                        && crate::member_info::info_of(&m, ctx.me).incarnation == ctx.incarnation
                    {
                        // Caught up past its admission (a configuration
                        // naming this very data directory, not an earlier
                        // node with this id): the group's own
                        // configurations say who the peers are from now on.
                        ctx.directory.clear_seed(group);
                    }
                    self.committed = m;
                    self.transport.context().directory.set_group(
                        group,
                        &self.latest,
                        &self.committed,
                    );
                    self.transport.prune();
                }
                Event::Removed => {
                    if self.transport.context().directory.has_seed(group) {
                        debug!(
                            group,
                            "applied an old configuration without this node while catching up to its admission"
                        );
                    } else {
                        warn!(
                            group,
                            "this node was removed from the group: it stops campaigning and serves only what it holds"
                        );
                    }
                }
            }
        }
        self.metrics
            .commit_index
            .store(self.core.raft().status().commit, Relaxed);
    }

    /// Installs a received snapshot: the state machine from the staged
    /// data, the snapshot file, then the log reset to start after it.
    async fn install(&mut self, meta: &keel_raft::SnapshotMeta) -> Result<(), String> {
        let group = self.core.group();
        let snaps = self.storage.snapshots.clone();
        {
            let s = snaps.lock().unwrap_or_else(|p| p.into_inner());
            let mut reader = s
                .staged_reader()
                .map_err(|e| format!("opening the staged snapshot: {e}"))?;
            self.core.restore(meta, &mut reader)?;
        }
        let m2 = meta.clone();
        let storage = self.storage.clone();
        let info = tokio::task::spawn_blocking(move || -> Result<_, String> {
            let info = snaps
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .commit_staged(NewSnapshot {
                    index: m2.index,
                    term: m2.term,
                    next_offset: m2.next_offset,
                    membership: keel_raft::encode_membership(&m2.membership),
                })
                .map_err(|e| format!("saving the received snapshot: {e}"))?;
            storage
                .log
                .reset(m2.index, m2.term, m2.next_offset)
                .map_err(|e| format!("resetting the log to the snapshot: {e}"))?;
            Ok(info)
        })
        .await
        .map_err(|e| format!("the install task failed: {e}"))??;
        self.storage.set_latest(&info)?;
        info!(
            group,
            index = meta.index,
            bytes = info.size,
            "installed a snapshot from the leader"
        );
        Ok(())
    }

    /// Persists one write: hard state (awaited), then entries (in the
    /// background). Returns false when the remaining writes of this output
    /// must not be submitted (no space, or a failure).
    async fn submit(&mut self, w: Write) -> bool {
        if let Some(hs) = w.hard_state {
            let log = self.storage.log.clone();
            let hs = keel_log::HardState {
                term: hs.term,
                vote: hs.vote,
            };
            let r = match tokio::task::spawn_blocking(move || log.save_hard_state(hs)).await {
                Ok(r) => r,
                Err(e) => Err(LogError::Io {
                    op: "save the hard state",
                    path: self.storage.log.dir().to_path_buf(),
                    source: Arc::new(std::io::Error::other(e.to_string())),
                }),
            };
            match r {
                Ok(()) => {}
                Err(LogError::NoSpace { path }) => {
                    // Nothing earlier is pending behind this write's place
                    // in the order: report it (and forget the rest).
                    self.flush_completed();
                    self.core
                        .write_done(w.id, WriteOutcome::NoSpace(no_space(&path)));
                    self.in_flight.clear();
                    return false;
                }
                Err(e) => {
                    self.core
                        .write_done(w.id, WriteOutcome::Failed(e.to_string()));
                    return false;
                }
            }
        }
        let completion = if w.entries.is_empty() {
            None
        } else {
            Some(self.storage.log.append(w.entries))
        };
        self.in_flight.push_back(InFlight {
            id: w.id,
            completion,
            submitted: Instant::now(),
        });
        true
    }

    /// Reports the writes at the front that are already complete.
    fn flush_completed(&mut self) {
        while let Some(front) = self.in_flight.front_mut() {
            let outcome = match front.completion.take() {
                None => Ok(()),
                Some(c) => match c.wait_timeout(Duration::ZERO) {
                    Ok(o) => o.map(|_| ()),
                    Err(c) => {
                        front.completion = Some(c);
                        return;
                    }
                },
            };
            if !self.report_front(outcome) {
                return;
            }
        }
    }

    /// The oldest write completed: report it and every later one already
    /// complete.
    fn on_written(&mut self, outcome: Result<(), LogError>) {
        if let Some(f) = self.in_flight.front_mut() {
            f.completion = None;
        }
        if self.report_front(outcome) {
            self.flush_completed();
        }
    }

    /// Reports the front write; false when the queue was dropped.
    fn report_front(&mut self, outcome: Result<(), LogError>) -> bool {
        let Some(w) = self.in_flight.pop_front() else {
            return false;
        };
        match outcome {
            Ok(()) => {
                self.metrics.fsync_latency.observe(w.submitted.elapsed());
                self.metrics.disk_full.store(0, Relaxed);
                self.core.write_done(w.id, WriteOutcome::Done);
                true
            }
            Err(LogError::NoSpace { path }) => {
                self.core
                    .write_done(w.id, WriteOutcome::NoSpace(no_space(&path)));
                self.in_flight.clear();
                self.metrics.disk_full.store(1, Relaxed);
                false
            }
            Err(e) => {
                self.core
                    .write_done(w.id, WriteOutcome::Failed(e.to_string()));
                self.in_flight.clear();
                false
            }
        }
    }

    fn answer(&mut self, done: Vec<Done<M::Response>>) {
        for (t, r) in done {
            let Some(w) = self.waiting.remove(&t) else {
                continue;
            };
            match (w, r) {
                (Waiting::Propose { reply, start }, Ok(Answer::Applied(v))) => {
                    self.metrics.append_latency.observe(start.elapsed());
                    let _ = reply.send(Ok(v));
                }
                (Waiting::Unit(reply), Ok(_)) => {
                    let _ = reply.send(Ok(()));
                }
                (Waiting::Membership(reply), Ok(Answer::Membership(m))) => {
                    let _ = reply.send(Ok(m));
                }
                (Waiting::Read(q), Ok(Answer::ReadReady)) => q(Ok(self.core.state_machine())),
                (w, Ok(_)) => fail_waiting(
                    w,
                    GroupError::Invalid("the group answered a request of another kind".into()),
                ),
                (w, Err(e)) => fail_waiting(w, e),
            }
        }
    }

    fn on_role(&mut self, ss: SoftState) {
        let group = self.core.group();
        let old = *self.role_tx.borrow();
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
        if ss.role != old.role || ss.leader != old.leader {
            info!(
                group,
                role = role_name(ss.role),
                term = ss.term,
                leader = ss.leader,
                "role changed"
            );
        }
        if ss.role != Role::Leader {
            self.metrics
                .follower_lag
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
        }
        self.role_tx.send_replace(ss);
    }

    fn update_lag(&self) {
        if self.core.raft().role() != Role::Leader {
            return;
        }
        let st = self.core.raft().status();
        let mut lag = self
            .metrics
            .follower_lag
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        lag.clear();
        for p in &st.peers {
            lag.insert(p.id, st.last_index.saturating_sub(p.matched));
        }
    }
}

fn fail_waiting<M: StateMachine>(w: Waiting<M>, e: GroupError) {
    match w {
        Waiting::Propose { reply, .. } => {
            let _ = reply.send(Err(e));
        }
        Waiting::Unit(reply) => {
            let _ = reply.send(Err(e));
        }
        Waiting::Membership(reply) => {
            let _ = reply.send(Err(e));
        }
        Waiting::Read(q) => q(Err(e)),
    }
}

/// Writes a snapshot job into the group's snapshot store and offers it to
/// followers.
fn write_snapshot(storage: &GroupStorage, job: crate::core::SnapshotJob) -> Result<(), String> {
    let index = job.meta.index;
    let mut w = storage
        .snapshots
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .begin(index)
        .map_err(|e| format!("creating the snapshot file: {e}"))?;
    (job.writer)(&mut w).map_err(|e| format!("the state machine's snapshot writer failed: {e}"))?;
    let info = w
        .finish(NewSnapshot {
            index,
            term: job.meta.term,
            next_offset: job.meta.next_offset,
            membership: keel_raft::encode_membership(&job.meta.membership),
        })
        .map_err(|e| format!("finishing the snapshot file: {e}"))?;
    let latest = storage
        .snapshots
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .install(info.clone())
        .map_err(|e| format!("installing the snapshot file: {e}"))?;
    if !latest {
        // A later snapshot arrived from the leader meanwhile; this one was
        // discarded.
        return Err(format!(
            "a later snapshot was installed while snapshot {index} was written; it was discarded"
        ));
    }
    storage.set_latest(&info)
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

/// Milliseconds since the Unix epoch (entry timestamps).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The name of a role, for logs and status.
pub fn role_name(r: Role) -> &'static str {
    match r {
        Role::Follower => "follower",
        Role::PreCandidate => "pre-candidate",
        Role::Candidate => "candidate",
        Role::Leader => "leader",
    }
}

/// Sends a tick into the group's inbox every `every`.
pub(crate) async fn ticker<M: StateMachine>(every: Duration, tx: mpsc::UnboundedSender<Input<M>>) {
    let mut iv = tokio::time::interval(every);
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        iv.tick().await;
        if tx.send(Input::Tick).is_err() {
            return;
        }
    }
}
