//! The raft state machine: state, the `step` dispatch by role, `tick`, and
//! role transitions. The other modules add the behaviour of each concern
//! (`election`, `replication`, `read`, `transfer`) and the output contract
//! (`ready`).

use std::collections::{BTreeMap, VecDeque};

use keel_format::{Batch, BatchBuilder, EntryKind, MAX_BATCH_LEN};

use crate::config::Config;
use crate::error::{Error, StorageError};
use crate::log::RaftLog;
use crate::message::{Message, MessageBody};
use crate::progress::{Progress, ProgressState};
use crate::quorum::Membership;
use crate::read::ReadQueue;
use crate::rng::Rng;
use crate::storage::Storage;
use crate::transfer::Transfer;
use crate::types::{HardState, Index, NONE, NodeId, Role, SoftState, Term};

/// What a node starts from: its durable hard state, the membership to use
/// when neither the log nor a snapshot holds a configuration (the
/// bootstrap configuration; empty for a node that waits to be added), and
/// the index its state machine had applied (its snapshot's index).
#[derive(Debug, Clone, Default)]
pub struct InitialState {
    pub hard_state: HardState,
    pub membership: Membership,
    pub applied: Index,
}

/// Where an accepted proposal landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proposed {
    pub index: Index,
    pub term: Term,
    /// User offset of the first record; the records take
    /// `base_offset .. base_offset + record_count`.
    pub base_offset: u64,
    pub record_count: u32,
}

/// A snapshot of a follower's progress, as the leader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerStatus {
    pub id: NodeId,
    pub matched: Index,
    pub next: Index,
    pub state: ProgressState,
    pub recent_active: bool,
    pub inflight_msgs: usize,
    pub inflight_bytes: u64,
}

/// Observable state, for drivers, metrics and the simulator's checkers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub term: Term,
    pub vote: NodeId,
    pub role: Role,
    pub leader: NodeId,
    pub commit: Index,
    pub applied: Index,
    pub persisted: Index,
    pub first_index: Index,
    pub last_index: Index,
    pub last_term: Term,
    pub next_offset: u64,
    pub transfer_target: Option<NodeId>,
    /// Followers' progress (leader only).
    pub peers: Vec<PeerStatus>,
}

/// One member of one raft group. Sans-IO: feed it `tick`, `step`,
/// `propose`, `read_index`, `transfer_leader` and `on_persisted`; take its
/// output with `ready`.
pub struct Raft<S: Storage> {
    pub(crate) cfg: Config,
    pub(crate) term: Term,
    pub(crate) vote: NodeId,
    pub(crate) role: Role,
    pub(crate) leader: NodeId,
    pub(crate) log: RaftLog<S>,
    /// The configuration in force (see `membership.rs`).
    pub(crate) membership: Membership,
    /// In force before the first configuration entry of the log: the
    /// snapshot's, or the bootstrap one.
    pub(crate) base_membership: Membership,
    /// Configuration entries in the log, (index, configuration), in order.
    pub(crate) conf_history: Vec<(Index, Membership)>,
    /// `conf_history` holds every configuration entry at or after this
    /// index (a restart loads only the last two).
    pub(crate) conf_known_from: Index,
    pub(crate) waiting_change: Option<crate::membership::WaitingChange>,
    pub(crate) conf_events: Vec<crate::membership::ConfChangeEvent>,
    /// A snapshot arriving in chunks (follower).
    pub(crate) incoming_snapshot: Option<crate::snapshot_transfer::Incoming>,
    /// Follower: the highest index the current leader has shown this node
    /// holds (the end of an append it accepted in this term, or a snapshot
    /// it installed). A heartbeat commits no further (or, when the log's
    /// last entry is of the current term, no further than that entry): a
    /// commit index alone proves nothing about the entries below it. Reset
    /// with the term.
    pub(crate) leader_shown: Index,
    /// Chunks received, for the driver to stage (follower).
    pub(crate) snapshot_chunks: Vec<crate::snapshot::SnapshotChunk>,
    /// A received snapshot the driver must install (follower).
    pub(crate) pending_install: Option<crate::snapshot::SnapshotMeta>,
    pub(crate) progress: BTreeMap<NodeId, Progress>,
    pub(crate) votes: BTreeMap<NodeId, bool>,
    pub(crate) election_elapsed: u32,
    pub(crate) heartbeat_elapsed: u32,
    pub(crate) randomized_timeout: u32,
    /// Ticks since this instance started; a local clock for timers.
    pub(crate) ticks: u64,
    pub(crate) rng: Rng,
    pub(crate) transfer: Option<Transfer>,
    /// Per preferred node: (no hand-over before this tick, failures so far).
    pub(crate) preferred_backoff: BTreeMap<NodeId, (u64, u32)>,
    /// The term of the election this node is running because a leader
    /// handed over to it, if any.
    pub(crate) transfer_campaign: Option<Term>,
    /// Target side of transfers: ignore TimeoutNow before this tick (after
    /// failed transfer elections, exponentially), so a target that cannot win
    /// does not depose leader after leader.
    pub(crate) transfer_backoff: (u64, u32),
    /// Entries this leader proposed that are not yet committed: (index, bytes).
    pub(crate) uncommitted: VecDeque<(Index, u64)>,
    pub(crate) uncommitted_bytes: u64,
    /// Latest proposal timestamp seen (raft has no clock of its own; no-ops
    /// reuse it).
    pub(crate) last_timestamp: u64,
    pub(crate) reads: ReadQueue,
    /// Something changed that may let the leader send appends.
    pub(crate) needs_flush: bool,
    // Output, drained by `ready`.
    pub(crate) outbox: Vec<Message>,
    /// Messages held until the persist id they name is reported durable.
    pub(crate) gated: VecDeque<(u64, Message)>,
    pub(crate) next_persist_id: u64,
    pub(crate) persisted_id: u64,
    pub(crate) last_hard_state: HardState,
    pub(crate) last_soft_state: SoftState,
}

impl<S: Storage> Raft<S> {
    /// Creates (or restarts) a member over `storage`. `seed` feeds the RNG
    /// for election timeouts; give each node its own.
    pub fn new(cfg: Config, storage: S, init: InitialState, seed: u64) -> Result<Self, Error> {
        cfg.validate()?;
        let log = RaftLog::new(storage, init.applied)?;
        let base_membership = match log.storage.snapshot() {
            Some(s) if s.index + 1 >= log.first_index() => s.membership,
            _ => init.membership,
        };
        let conf_history = log
            .storage
            .last_config_entries()?
            .iter()
            .map(|e| {
                crate::conf_change::decode(&e.body())
                    .map(|m| (e.index(), m))
                    .map_err(|why| {
                        StorageError::Failed(format!(
                            "configuration entry {} is corrupt: {why}",
                            e.index()
                        ))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;

        let hs = init.hard_state;
        if hs.term >= crate::types::MAX_TERM {
            return Err(Error::Storage(StorageError::Failed(format!(
                "the saved term {} is beyond any a cluster reaches (the limit is {}): it came from a forged or corrupt message an earlier build accepted; restore this node's data from a replica",
                hs.term,
                crate::types::MAX_TERM
            ))));
        }
        let mut r = Raft {
            term: hs.term,
            vote: hs.vote,
            role: Role::Follower,
            leader: NONE,
            log,
            membership: Membership::default(),
            base_membership,
            conf_known_from: if conf_history.len() >= 2 {
                conf_history[0].0
            } else {
                0
            },
            conf_history,
            waiting_change: None,
            conf_events: Vec::new(),
            incoming_snapshot: None,
            leader_shown: 0,
            snapshot_chunks: Vec::new(),
            pending_install: None,
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_timeout: cfg.election_tick,
            ticks: 0,
            rng: Rng::new(seed),
            transfer: None,
            preferred_backoff: BTreeMap::new(),
            transfer_campaign: None,
            transfer_backoff: (0, 0),
            uncommitted: VecDeque::new(),
            uncommitted_bytes: 0,
            last_timestamp: 0,
            reads: ReadQueue::default(),
            needs_flush: false,
            outbox: Vec::new(),
            gated: VecDeque::new(),
            next_persist_id: 1,
            persisted_id: 0,
            last_hard_state: hs,
            last_soft_state: SoftState {
                role: Role::Follower,
                leader: NONE,
                term: hs.term,
            },
            cfg,
        };
        r.reset_randomized_timeout();
        r.membership = r.effective_membership();
        Ok(r)
    }

    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn storage(&self) -> &S {
        &self.log.storage
    }

    /// Mutable access for the driver's writes. Writes must follow the
    /// contract in [`Storage`].
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.log.storage
    }

    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn leader(&self) -> NodeId {
        self.leader
    }

    pub fn term(&self) -> Term {
        self.term
    }

    pub fn status(&self) -> Status {
        let peers = if self.role == Role::Leader {
            self.progress
                .iter()
                .filter(|(id, _)| **id != self.cfg.id)
                .map(|(id, p)| PeerStatus {
                    id: *id,
                    matched: p.matched,
                    next: p.next,
                    state: p.state,
                    recent_active: p.recent_active,
                    inflight_msgs: p.inflights.count(),
                    inflight_bytes: p.inflights.bytes(),
                })
                .collect()
        } else {
            Vec::new()
        };
        Status {
            id: self.cfg.id,
            term: self.term,
            vote: self.vote,
            role: self.role,
            leader: self.leader,
            commit: self.log.committed,
            applied: self.log.applied,
            persisted: self.log.persisted(),
            first_index: self.log.first_index(),
            last_index: self.log.last_index(),
            last_term: self.log.last_term(),
            next_offset: self.log.next_offset(),
            transfer_target: self.transfer.as_ref().map(|t| t.target),
            peers,
        }
    }

    pub(crate) fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
        }
    }

    pub(crate) fn soft_state(&self) -> SoftState {
        SoftState {
            role: self.role,
            leader: self.leader,
            term: self.term,
        }
    }

    /// Whether this node may become leader: it is a voter.
    pub(crate) fn promotable(&self) -> bool {
        self.membership.is_voter(self.cfg.id)
    }

    #[cfg(feature = "fault-injection")]
    pub(crate) fn knob(&self, f: impl Fn(&crate::knobs::Knobs) -> bool) -> bool {
        f(&self.cfg.knobs)
    }

    #[cfg(not(feature = "fault-injection"))]
    #[inline(always)]
    pub(crate) fn knob(&self, _f: impl Fn(&crate::knobs::Knobs) -> bool) -> bool {
        false
    }

    // ---------------------------------------------------------------- input

    /// Advances the logical clock by one tick.
    pub fn tick(&mut self) {
        self.ticks += 1;
        match self.role {
            Role::Leader => self.tick_leader(),
            _ => self.tick_election(),
        }
    }

    fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.promotable() && self.election_elapsed >= self.randomized_timeout {
            self.election_elapsed = 0;
            self.campaign(false);
        }
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.cfg.election_tick {
            self.election_elapsed = 0;
            if self.cfg.check_quorum {
                let me = self.cfg.id;
                let progress = &self.progress;
                let alive = self
                    .membership
                    .is_quorum(|id| id == me || progress.get(&id).is_some_and(|p| p.recent_active));
                if !alive {
                    // Cut off from a quorum: stop claiming leadership (no
                    // proposals can commit, no reads can be confirmed).
                    self.become_follower(self.term, NONE);
                    return;
                }
                for (id, p) in self.progress.iter_mut() {
                    if *id != me {
                        p.recent_active = false;
                    }
                }
            }
        }
        self.tick_transfer();
        self.tick_waiting_change();
        if self.role != Role::Leader {
            return;
        }
        if self.heartbeat_elapsed >= self.cfg.heartbeat_tick {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
        self.check_preferred_leader();
    }

    /// Feeds a message from a peer. Messages for another group, from a
    /// stranger claiming to be us, or with entries that do not connect are
    /// refused with an error and change nothing.
    pub fn step(&mut self, m: Message) -> Result<(), Error> {
        if m.group != self.cfg.group {
            return Err(Error::WrongGroup {
                expected: self.cfg.group,
                got: m.group,
            });
        }
        if m.from == NONE || m.from == self.cfg.id || m.to != self.cfg.id {
            return Err(Error::InvalidMessage {
                from: m.from,
                reason: format!(
                    "addressed from {} to {}, but this is node {}",
                    m.from, m.to, self.cfg.id
                ),
            });
        }
        if m.term >= crate::types::MAX_TERM {
            return Err(Error::InvalidMessage {
                from: m.from,
                reason: format!(
                    "term {} is beyond any a cluster reaches (the limit is {}): forged or corrupt",
                    m.term,
                    crate::types::MAX_TERM
                ),
            });
        }
        if m.term > self.term {
            match &m.body {
                MessageBody::Vote(v) => {
                    // Thesis §4.2.3: within an election timeout of hearing
                    // a leader, a vote request is no reason to change term.
                    // This keeps a removed node that missed its removal (and
                    // a rejoining one) from deposing leader after leader,
                    // whether or not pre-vote and check-quorum are on.
                    let in_lease =
                        self.leader != NONE && self.election_elapsed < self.cfg.election_tick;
                    if in_lease && !v.transfer {
                        // Leader stickiness: we hear a live leader, so a
                        // disruptive candidate gets no answer and no term bump.
                        return Ok(());
                    }
                    if !v.pre {
                        self.become_follower(m.term, NONE);
                    }
                }
                // A granted pre-vote carries the term the candidate would
                // run in, not a term anyone holds.
                MessageBody::VoteResponse {
                    pre: true,
                    granted: true,
                } => {}
                MessageBody::Append(_)
                | MessageBody::Heartbeat { .. }
                | MessageBody::Snapshot(_) => self.become_follower(m.term, m.from),
                _ => self.become_follower(m.term, NONE),
            }
        } else if m.term < self.term {
            match &m.body {
                MessageBody::Append(_) | MessageBody::Heartbeat { .. } => {
                    // A stale leader (perhaps one that could not hear our
                    // newer term while partitioned): tell it, so it steps
                    // down. With pre-vote on, nobody else would.
                    self.send(
                        m.from,
                        MessageBody::AppendResponse(crate::message::AppendResponse {
                            index: 0,
                            reject: None,
                        }),
                    );
                }
                MessageBody::Vote(v) if v.pre => {
                    self.send(
                        m.from,
                        MessageBody::VoteResponse {
                            pre: true,
                            granted: false,
                        },
                    );
                }
                _ => {}
            }
            return Ok(());
        }

        if let MessageBody::Vote(v) = m.body {
            self.handle_vote_request(m.from, m.term, v);
            return Ok(());
        }
        match self.role {
            Role::Leader => self.step_leader(m),
            Role::Candidate | Role::PreCandidate => self.step_candidate(m),
            Role::Follower => self.step_follower(m),
        }
    }

    fn step_leader(&mut self, m: Message) -> Result<(), Error> {
        if let Some(p) = self.progress.get_mut(&m.from) {
            p.recent_active = true;
            p.last_heard = self.ticks;
        }
        match m.body {
            MessageBody::AppendResponse(r) => self.handle_append_response(m.from, r),
            MessageBody::HeartbeatResponse { read_seq } => {
                self.handle_heartbeat_response(m.from, read_seq)
            }
            MessageBody::SnapshotResponse {
                index,
                next_offset,
                installed,
            } => {
                self.handle_snapshot_response(m.from, index, next_offset, installed);
                Ok(())
            }
            MessageBody::ReadIndex { ctx } => {
                self.leader_read(ctx, m.from);
                Ok(())
            }
            MessageBody::Append(_) | MessageBody::Heartbeat { .. } | MessageBody::Snapshot(_) => {
                Err(Error::InvalidMessage {
                    from: m.from,
                    reason: format!(
                        "node {} claims to lead term {} which this node leads",
                        m.from, m.term
                    ),
                })
            }
            _ => Ok(()),
        }
    }

    fn step_candidate(&mut self, m: Message) -> Result<(), Error> {
        match m.body {
            MessageBody::Append(a) => {
                self.become_follower(m.term, m.from);
                self.handle_append(m.from, m.term, a)
            }
            MessageBody::Heartbeat { commit, read_seq } => {
                self.become_follower(m.term, m.from);
                self.handle_heartbeat(m.from, commit, read_seq);
                Ok(())
            }
            MessageBody::Snapshot(c) => {
                self.become_follower(m.term, m.from);
                self.handle_snapshot_chunk(m.from, c)
            }
            MessageBody::VoteResponse { pre, granted } => {
                self.handle_vote_response(m.from, pre, granted);
                Ok(())
            }
            MessageBody::ReadIndex { ctx } => {
                self.send(m.from, MessageBody::ReadIndexResponse { ctx, index: None });
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn step_follower(&mut self, m: Message) -> Result<(), Error> {
        // A read answered without an index comes from a node that does not
        // lead (it stepped down in this term: demoted, removed, cut off from
        // a quorum). It proves nothing; counting it as the leader's word
        // would keep our election timer from ever running out while clients
        // send reads, with a learner "leader" that never campaigns.
        let not_leading = matches!(m.body, MessageBody::ReadIndexResponse { index: None, .. });
        if m.from == self.leader {
            if not_leading {
                // Stop forwarding reads and redirecting clients to it; the
                // election timer runs on.
                self.leader = NONE;
            } else {
                // Any other message from the current leader proves it alive.
                self.election_elapsed = 0;
            }
        }
        match m.body {
            MessageBody::Append(a) => {
                self.election_elapsed = 0;
                self.leader = m.from;
                self.handle_append(m.from, m.term, a)
            }
            MessageBody::Heartbeat { commit, read_seq } => {
                self.election_elapsed = 0;
                self.leader = m.from;
                self.handle_heartbeat(m.from, commit, read_seq);
                Ok(())
            }
            MessageBody::Snapshot(c) => {
                self.election_elapsed = 0;
                self.leader = m.from;
                self.handle_snapshot_chunk(m.from, c)
            }
            MessageBody::TimeoutNow => {
                if self.promotable() && self.ticks >= self.transfer_backoff.0 {
                    self.campaign(true);
                }
                Ok(())
            }
            MessageBody::ReadIndex { ctx } => {
                self.send(m.from, MessageBody::ReadIndexResponse { ctx, index: None });
                Ok(())
            }
            MessageBody::ReadIndexResponse { ctx, index } => {
                self.reads.deliver_local(ctx, index);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Proposes a batch of records. Only the leader accepts; the entry is
    /// sealed here (term, index, base offset) so its bytes are final.
    pub fn propose(&mut self, records: BatchBuilder, timestamp: u64) -> Result<Proposed, Error> {
        self.check_may_propose()?;
        if records.is_empty() {
            return Err(Error::EmptyProposal);
        }
        self.check_entry_size(records.encoded_len() as u64)?;
        let index = self.log.last_index() + 1;
        let base_offset = self.log.next_offset();
        let record_count = records.record_count();
        let entry = records.seal(EntryKind::Data, self.term, index, base_offset, timestamp);
        self.append_entry(entry);
        Ok(Proposed {
            index,
            term: self.term,
            base_offset,
            record_count,
        })
    }

    /// Proposes a command of the layer that hosts the group: one
    /// [`EntryKind::Command`] control entry with `body` (opaque to raft).
    /// It takes no user offsets (`record_count` 0, `base_offset` the next
    /// offset) and is committed and handed out in `Ready::committed` like
    /// any entry. Leader only; refused like [`propose`](Self::propose)
    /// during a transfer, under back-pressure, or when too large.
    pub fn propose_command(&mut self, body: &[u8], timestamp: u64) -> Result<Proposed, Error> {
        self.check_may_propose()?;
        self.check_entry_size((keel_format::HEADER_LEN + body.len()) as u64)?;
        let index = self.log.last_index() + 1;
        let base_offset = self.log.next_offset();
        let entry = Batch::control(
            EntryKind::Command,
            body,
            self.term,
            index,
            base_offset,
            timestamp,
        );
        self.append_entry(entry);
        Ok(Proposed {
            index,
            term: self.term,
            base_offset,
            record_count: 0,
        })
    }

    /// Refuses proposals on a node that is not the leader or while a
    /// transfer is in progress.
    fn check_may_propose(&self) -> Result<(), Error> {
        if self.role != Role::Leader {
            return Err(Error::NotLeader {
                leader: self.leader,
            });
        }
        if let Some(t) = &self.transfer {
            return Err(Error::TransferInProgress(t.target));
        }
        Ok(())
    }

    /// Refuses a proposed entry of `size` bytes that is too large or that
    /// back-pressure does not let in.
    fn check_entry_size(&self, size: u64) -> Result<(), Error> {
        if size > MAX_BATCH_LEN as u64 {
            return Err(Error::TooLarge {
                size,
                limit: MAX_BATCH_LEN as u64,
            });
        }
        let limit = self.cfg.max_uncommitted_bytes;
        if limit > 0 && self.uncommitted_bytes > 0 && self.uncommitted_bytes + size > limit {
            return Err(Error::Backpressure {
                bytes: self.uncommitted_bytes,
                limit,
            });
        }
        Ok(())
    }

    pub(crate) fn append_entry(&mut self, entry: Batch) {
        let (index, size) = (entry.index(), entry.len() as u64);
        self.last_timestamp = self.last_timestamp.max(entry.timestamp());
        self.log.append_new(entry);
        self.uncommitted.push_back((index, size));
        self.uncommitted_bytes += size;
        self.needs_flush = true;
    }

    // ---------------------------------------------------- role transitions

    pub(crate) fn reset_randomized_timeout(&mut self) {
        let e = self.cfg.election_tick as u64;
        self.randomized_timeout = self.rng.range(e, 2 * e) as u32;
    }

    fn reset(&mut self, term: Term) {
        if self.transfer_campaign.take().is_some() {
            // The election a leader handed us did not make us leader.
            let exp = (self.transfer_backoff.1 + 1).min(crate::transfer::MAX_BACKOFF_EXP);
            self.transfer_backoff = (self.ticks + ((self.cfg.election_tick as u64) << exp), exp);
        }
        if term != self.term {
            self.term = term;
            self.vote = NONE;
        }
        self.leader = NONE;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.reset_randomized_timeout();
        self.votes.clear();
        self.transfer = None;
        self.uncommitted.clear();
        self.uncommitted_bytes = 0;
        self.fail_reads();
        self.drop_waiting_change();
        self.incoming_snapshot = None;
        self.leader_shown = 0;
        self.needs_flush = false;
    }

    pub(crate) fn become_follower(&mut self, term: Term, leader: NodeId) {
        self.reset(term);
        self.role = Role::Follower;
        self.leader = leader;
        self.progress.clear();
    }

    pub(crate) fn become_pre_candidate(&mut self) {
        // Pre-vote leaves the term and the vote alone.
        let term = self.term;
        self.reset(term);
        self.role = Role::PreCandidate;
        self.progress.clear();
    }

    pub(crate) fn become_candidate(&mut self) {
        // Below MAX_TERM (refused from messages and at start), so this
        // cannot overflow in any run that could ever happen.
        self.reset(self.term.saturating_add(1));
        self.vote = self.cfg.id;
        self.role = Role::Candidate;
        self.progress.clear();
    }

    pub(crate) fn become_leader(&mut self) {
        if self.transfer_campaign.take().is_some() {
            self.transfer_backoff = (0, 0);
        }
        let term = self.term;
        self.reset(term);
        self.role = Role::Leader;
        self.leader = self.cfg.id;
        let next = self.log.last_index() + 1;
        let now = self.ticks;
        self.progress = self
            .membership
            .all_members()
            .map(|id| {
                let mut p = Progress::new(next);
                p.last_heard = now;
                p.recent_active = true;
                (id, p)
            })
            .collect();
        if let Some(me) = self.progress.get_mut(&self.cfg.id) {
            me.matched = self.log.persisted();
            me.state = ProgressState::Replicate;
        }
        // Every term opens with a no-op: committing it commits everything
        // before it (Figure 8) and lets reads be served at the commit index.
        let noop = Batch::control(
            EntryKind::Noop,
            &[],
            self.term,
            next,
            self.log.next_offset(),
            self.last_timestamp,
        );
        self.append_entry(noop);
        self.maybe_commit();
    }

    /// Removes from this leader's bookkeeping the entries now committed.
    pub(crate) fn release_uncommitted(&mut self) {
        let committed = self.log.committed;
        while let Some(&(index, size)) = self.uncommitted.front() {
            if index > committed {
                break;
            }
            self.uncommitted.pop_front();
            self.uncommitted_bytes -= size;
        }
    }
}
