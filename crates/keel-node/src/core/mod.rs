//! The group core: every decision a group's driver makes, as deterministic,
//! sans-IO code. The tokio runtime of this crate drives it against keel-log
//! and the peer transport; keel-sim drives the very same code against a
//! simulated disk and network.
//!
//! The core owns the [`Raft`] instance and the [`StateMachine`]. Its inputs
//! are method calls (`tick`, `step`, `propose`, `read`, `transfer`,
//! `change`, `admit`, `write_done`, `mark_done`, `snapshot_done`,
//! `restore`); its output is one [`Output`] per [`GroupCore::poll`]. It
//! decides: how proposals that arrive together are batched into one entry;
//! when a proposal is acknowledged (its entry applied with the term it was
//! proposed in), aborted (another entry took its index, or an entry of a
//! later term was applied first) or left ambiguous (an installed snapshot
//! covers it); when a read may be served; how a membership change proceeds
//! (new voters join as learners, catch up, then are promoted); what a
//! full disk does (writes wait, proposals are refused); when the applied
//! mark is written and what may be served; when to snapshot and compact.
//!
//! What the driver must do with an [`Output`], in this order:
//! 1. `chunks`: stage them (offset 0 starts a new snapshot).
//! 2. `install`: call [`GroupCore::restore`] with the staged data, make it
//!    the group's snapshot and reset the log to start after it (durably)
//!    before the next call into the core.
//! 3. `writes`: persist each in order (hard state fsynced before its
//!    entries; entries may complete in the background) and report every
//!    one with [`GroupCore::write_done`], in order. After reporting
//!    `NoSpace` for a write, forget every write in flight: the core emits
//!    them again.
//! 4. `messages`: send.
//! 5. `done`: answer the requests; `Answer::ReadReady` means "run the read's
//!    query against [`GroupCore::state_machine`] now".
//! 6. `mark`, `snapshot`, `compact`: carry out (in the background) and
//!    report with `mark_done` and `snapshot_done`.
//! 7. `served`, `events`: publish.

mod apply;
mod membership;
mod proposals;
mod writes;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use bytes::Bytes;
use keel_raft::{
    Config, Entry, GroupId, HardState, Index, InitialState, Membership, Message, NONE, NodeId,
    Raft, Role, SnapshotChunk, SnapshotMeta, SoftState, Status, Storage,
};

use crate::error::GroupError;
use crate::mark::Watermark;
use crate::member_info::MemberInfo;
use crate::state_machine::{SnapshotWriter, StateMachine};

pub use membership::{ChangeRequest, MemberChange};

/// Identifies a request to the core; chosen by the driver.
pub type Token = u64;

/// When a group snapshots its state machine, and whether it then compacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// Snapshot after this many entries applied since the last snapshot
    /// (0: never by count).
    pub entries: u64,
    /// Snapshot after this many bytes of entries applied since the last
    /// snapshot (0: never by size).
    pub bytes: u64,
    /// Purge the log behind a snapshot (keeping
    /// `Config::compaction_keep_entries`). The log store removes whole
    /// segments only (`LogOptions::segment_bytes`, 64 MiB by default), so a
    /// small state machine with the default segment size compacts rarely. A state machine whose state is
    /// the log itself (the log service) keeps its log and snapshots only to
    /// restart faster.
    pub compact: bool,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        SnapshotPolicy {
            entries: 100_000,
            bytes: 256 << 20,
            compact: true,
        }
    }
}

/// Settings of a group core besides raft's own.
#[derive(Debug, Clone)]
pub struct CoreSettings {
    /// Proposals that arrive together are batched into one entry up to
    /// this size (a single larger proposal still goes alone).
    pub max_entry_bytes: usize,
    /// Snapshots and compaction.
    pub snapshot: SnapshotPolicy,
    /// Writes refused for want of space are tried again this often.
    pub disk_full_retry_ticks: u64,
    /// Keep every applied entry in `Output::applied` (for checkers).
    pub record_applied: bool,
}

impl Default for CoreSettings {
    fn default() -> Self {
        CoreSettings {
            max_entry_bytes: 4 << 20,
            snapshot: SnapshotPolicy::default(),
            disk_full_retry_ticks: 10,
            record_applied: false,
        }
    }
}

/// Where a group starts from: what its storage holds besides the log.
#[derive(Debug, Clone, Default)]
pub struct StartState {
    /// The durable term and vote.
    pub hard_state: HardState,
    /// The snapshot the state machine was restored from (None: the state
    /// machine is empty, as of index 0).
    pub snapshot: Option<SnapshotMeta>,
    /// The durable applied mark.
    pub mark: Watermark,
}

/// A write for the driver to persist, in order.
#[derive(Debug, Clone)]
pub struct Write {
    /// Report with [`GroupCore::write_done`].
    pub id: u64,
    /// The snapshot this write installs (already restored and made durable
    /// by the driver when it handled `Output::install`).
    pub install: Option<SnapshotMeta>,
    /// Save (fsynced) before the entries.
    pub hard_state: Option<HardState>,
    /// Append, replacing the log from the first one's index.
    pub entries: Vec<Entry>,
}

/// How a write ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Durable.
    Done,
    /// Refused for want of space; nothing of it (or of any later write)
    /// is in the log.
    NoSpace(String),
    /// The storage failed; the group stops.
    Failed(String),
}

/// A snapshot to write: its description and the state machine's writer.
pub struct SnapshotJob {
    /// The snapshot's description (`size` is 0 until written).
    pub meta: SnapshotMeta,
    /// Writes the state machine's data.
    pub writer: SnapshotWriter,
}

impl std::fmt::Debug for SnapshotJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotJob")
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

/// A successful answer to a request.
#[derive(Debug)]
pub enum Answer<R> {
    /// A proposal applied: one response per record proposed.
    Applied(Vec<R>),
    /// A read may run its query now.
    ReadReady,
    /// Done (transfer, control command, preferred leader).
    Done,
    /// A membership change finished (or a node was admitted): the
    /// configuration now in force.
    Membership(Membership),
}

/// An answer to the request a token stands for.
pub type Done<R> = (Token, Result<Answer<R>, GroupError>);

/// Something the driver may want to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Role, leader or term changed.
    Role(SoftState),
    /// The configuration in force changed (it takes effect when appended).
    Membership(Membership),
    /// The last committed (applied) configuration changed. A node leaves
    /// the peer directory only when a committed configuration drops it: a
    /// leader being removed needs its followers until its removal commits.
    Committed(Membership),
    /// A committed configuration no longer names this node.
    Removed,
}

/// The output of one [`GroupCore::poll`]; see the module doc for what to
/// do with it and in which order.
#[derive(Debug)]
pub struct Output<R> {
    /// Snapshot chunks to stage, in order.
    pub chunks: Vec<SnapshotChunk>,
    /// A received snapshot to install before the next call into the core.
    pub install: Option<SnapshotMeta>,
    /// Writes to persist, in order.
    pub writes: Vec<Write>,
    /// Messages to send.
    pub messages: Vec<Message>,
    /// Answers to requests.
    pub done: Vec<Done<R>>,
    /// Write the applied mark.
    pub mark: Option<Watermark>,
    /// Write a snapshot.
    pub snapshot: Option<SnapshotJob>,
    /// Purge the log up to and including this index.
    pub compact: Option<Index>,
    /// Readers may see up to here.
    pub served: Option<Watermark>,
    /// Role, membership and removal events.
    pub events: Vec<Event>,
    /// Every entry applied (only with `CoreSettings::record_applied`).
    pub applied: Vec<Entry>,
}

impl<R> Default for Output<R> {
    fn default() -> Self {
        Output {
            chunks: Vec::new(),
            install: None,
            writes: Vec::new(),
            messages: Vec::new(),
            done: Vec::new(),
            mark: None,
            snapshot: None,
            compact: None,
            served: None,
            events: Vec::new(),
            applied: Vec::new(),
        }
    }
}

impl<R> Output<R> {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
            && self.install.is_none()
            && self.writes.is_empty()
            && self.messages.is_empty()
            && self.done.is_empty()
            && self.mark.is_none()
            && self.snapshot.is_none()
            && self.compact.is_none()
            && self.served.is_none()
            && self.events.is_empty()
            && self.applied.is_empty()
    }
}

/// Counters of what the core did (for metrics; they decide nothing).
#[derive(Debug, Clone, Copy, Default)]
pub struct CoreStats {
    /// Entries proposed for data.
    pub proposals: u64,
    /// Records proposed.
    pub proposed_records: u64,
    /// Proposals refused.
    pub refused: u64,
    /// Entries applied.
    pub applied_entries: u64,
    /// Records applied.
    pub applied_records: u64,
    /// Leader changes seen.
    pub leader_changes: u64,
}

/// A group's state, for status calls.
#[derive(Debug, Clone)]
pub struct CoreStatus {
    /// The consensus core's view.
    pub raft: Status,
    /// The configuration in force (the last appended).
    pub membership: Membership,
    /// The preferred leader, if set.
    pub preferred_leader: Option<NodeId>,
    /// Why the group stopped, if its storage failed.
    pub failed: Option<String>,
    /// Why writes wait, while the disk is full.
    pub disk_full: Option<String>,
    /// A committed configuration no longer names this node.
    pub removed: bool,
    /// The latest snapshot's index (0: none).
    pub snapshot_index: Index,
    /// What readers may see.
    pub served: Watermark,
    /// What the state machine has applied.
    pub applied: Watermark,
}

/// The deterministic driver of one raft group; see the module doc.
pub struct GroupCore<S: Storage, M: StateMachine> {
    pub(crate) raft: Raft<S>,
    pub(crate) sm: M,
    pub(crate) settings: CoreSettings,
    pub(crate) id: NodeId,
    pub(crate) group: GroupId,
    pub(crate) ticks: u64,
    /// The wall clock as of the last poll, for entry timestamps.
    pub(crate) now_ms: u64,
    pub(crate) soft: SoftState,
    pub(crate) failed: Option<String>,
    pub(crate) proposals: proposals::Proposals<M::Response>,
    pub(crate) reads: proposals::Reads,
    pub(crate) transfers: Vec<(NodeId, Token, u64)>,
    pub(crate) members: membership::Members,
    pub(crate) preferred: Option<NodeId>,
    pub(crate) writes: writes::Writes,
    pub(crate) applied: Watermark,
    pub(crate) mark: Watermark,
    pub(crate) mark_in_flight: Option<Watermark>,
    pub(crate) served: Watermark,
    pub(crate) snapshot_index: Index,
    pub(crate) snapshot_in_flight: Option<Index>,
    /// Leader: followers being sent a snapshot, and the tick each was last
    /// seen active.
    pub(crate) receiving_snapshot: BTreeMap<NodeId, u64>,
    pub(crate) since_snapshot: (u64, u64),
    pub(crate) out: Output<M::Response>,
    pub(crate) stats: CoreStats,
}

impl<S: Storage, M: StateMachine> GroupCore<S, M> {
    /// Starts a group over `storage`. `sm` must already hold the state of
    /// `start.snapshot` (restored by the driver) or be empty when there is
    /// none. The core re-applies the log from the snapshot up to the
    /// durable mark (those entries are known committed) before anything
    /// else, so the state machine and what is served never go back across a
    /// restart. The configuration comes from the log and the snapshot only.
    pub fn new(
        raft_cfg: Config,
        settings: CoreSettings,
        storage: S,
        sm: M,
        start: StartState,
        seed: u64,
    ) -> Result<Self, String> {
        let (id, group) = (raft_cfg.id, raft_cfg.group);
        let snap = start
            .snapshot
            .as_ref()
            .map(|s| Watermark {
                index: s.index,
                end_offset: s.next_offset,
            })
            .unwrap_or_default();
        let mut mark = start.mark;
        if mark.index < snap.index {
            mark = snap;
        }
        if mark.index > storage.last_index() {
            tracing::warn!(
                group,
                mark = mark.index,
                last = storage.last_index(),
                "the applied mark is past the end of the log (was the log repaired?); serving only what the log holds"
            );
            mark.index = storage.last_index().max(snap.index);
        }
        let init = InitialState {
            hard_state: start.hard_state,
            membership: Membership::default(),
            applied: mark.index,
        };
        let mut core = GroupCore {
            raft: Raft::new(raft_cfg, storage, init, seed)
                .map_err(|e| format!("raft refused the start state: {e}"))?,
            sm,
            settings,
            id,
            group,
            ticks: 0,
            now_ms: 0,
            soft: SoftState {
                role: Role::Follower,
                leader: NONE,
                term: start.hard_state.term,
            },
            failed: None,
            proposals: proposals::Proposals::new(),
            reads: proposals::Reads::default(),
            transfers: Vec::new(),
            members: membership::Members::default(),
            preferred: None,
            writes: writes::Writes::default(),
            applied: snap,
            mark: snap,
            mark_in_flight: None,
            served: snap,
            snapshot_index: snap.index,
            snapshot_in_flight: None,
            receiving_snapshot: BTreeMap::new(),
            since_snapshot: (0, 0),
            out: Output::default(),
            stats: CoreStats::default(),
        };
        if let Some(s) = &start.snapshot {
            core.members.applied = s.membership.clone();
        }
        core.replay(snap.index, mark.index)?;
        core.mark = core.applied;
        core.served = core.applied;
        core.members.published = core.raft.membership().clone();
        core.members.removed = core.members.was_member_removed(id);
        let m = core.raft.membership();
        if m.voters.len() == 1 && m.voters.contains(&id) && !m.is_joint() {
            // A single-voter group needs no election timeout to pass.
            core.raft.start_election();
        }
        Ok(core)
    }

    /// Re-applies committed entries `from+1 ..= to` at start.
    fn replay(&mut self, from: Index, to: Index) -> Result<(), String> {
        let mut next = from + 1;
        while next <= to {
            let batch = self
                .raft
                .storage()
                .entries(next, to + 1, 16 << 20)
                .map_err(|e| format!("cannot read entry {next} to re-apply it: {e}"))?;
            if batch.is_empty() {
                return Err(format!("entry {next} is missing from the log"));
            }
            for e in batch {
                next = e.index() + 1;
                self.apply_entry(&e)?;
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------ accessors

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The group's id.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// The consensus core (read-only).
    pub fn raft(&self) -> &Raft<S> {
        &self.raft
    }

    /// The storage, for the driver's writes (which must follow the
    /// [`Storage`] contract).
    pub fn storage_mut(&mut self) -> &mut S {
        self.raft.storage_mut()
    }

    /// The last configuration applied (committed) on this node.
    pub fn committed_membership(&self) -> &Membership {
        &self.members.applied
    }

    /// The state machine, for queries.
    pub fn state_machine(&self) -> &M {
        &self.sm
    }

    /// What readers may see.
    pub fn served(&self) -> Watermark {
        self.served
    }

    /// Counters, for metrics.
    pub fn stats(&self) -> CoreStats {
        self.stats
    }

    /// The group's state.
    pub fn status(&self) -> CoreStatus {
        CoreStatus {
            raft: self.raft.status(),
            membership: self.raft.membership().clone(),
            preferred_leader: self.preferred,
            failed: self.failed.clone(),
            disk_full: self.writes.disk_full.as_ref().map(|d| d.why.clone()),
            removed: self.members.removed,
            snapshot_index: self.snapshot_index,
            served: self.served,
            applied: self.applied,
        }
    }

    /// Whether the storage failed (the group takes no part any more).
    pub fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    // --------------------------------------------------------------- inputs

    /// Advances time by one tick.
    pub fn tick(&mut self) {
        self.ticks += 1;
        if self.failed.is_some() {
            return;
        }
        self.raft.tick();
        self.track_snapshot_transfers();
        self.expire_requests();
        self.writes_tick();
        self.membership_tick();
    }

    /// Feeds a message from a peer. An error means it was refused (and
    /// changed nothing).
    pub fn step(&mut self, m: Message) -> Result<(), keel_raft::Error> {
        if self.failed.is_some() {
            return Ok(());
        }
        self.raft.step(m)
    }

    /// Asks for a linearizable read: answered with `Answer::ReadReady` once
    /// this node serves everything committed before the request.
    pub fn read(&mut self, token: Token) {
        if let Some(f) = &self.failed {
            let err = GroupError::StoreFailed(f.clone());
            self.out.done.push((token, Err(err)));
            return;
        }
        let ctx = self.reads.next_ctx();
        match self.raft.read_index(ctx) {
            Ok(()) => self
                .reads
                .waiting
                .insert(ctx, (token, self.ticks))
                .map_or((), drop),
            Err(e) => {
                let err = self.map_raft_error(e);
                self.out.done.push((token, Err(err)));
            }
        }
    }

    /// Hands leadership to `to`; answered once it leads, or with an error
    /// when the transfer is refused or abandoned.
    pub fn transfer(&mut self, token: Token, to: NodeId) {
        if self.raft.leader() == to && to != NONE {
            self.out.done.push((token, Ok(Answer::Done)));
            return;
        }
        match self.raft.transfer_leader(to) {
            Ok(()) => self.transfers.push((to, token, self.ticks)),
            Err(e) => {
                let err = self.map_raft_error(e);
                self.out.done.push((token, Err(err)));
            }
        }
    }

    /// Sets (or clears) the group's preferred leader: replicated, so every
    /// node (and every later leader) knows it. Leader only.
    pub fn set_preferred_leader(&mut self, token: Token, leader: Option<NodeId>, now_ms: u64) {
        if let Some(id) = leader
            && !self.raft.membership().is_voter(id)
        {
            let err = GroupError::Invalid(format!(
                "node {id} is not a voter of group {}; only a voter can lead",
                self.group
            ));
            self.out.done.push((token, Err(err)));
            return;
        }
        let body = crate::command::CommandBody::PreferredLeader(leader).encode();
        self.propose_command(token, body, now_ms);
    }

    /// Proposes a control command for the state machine
    /// (`StateMachine::apply_control`); answered `Answer::Done` once applied.
    pub fn propose_control(&mut self, token: Token, payload: Bytes, now_ms: u64) {
        let body = crate::command::CommandBody::StateMachine(payload).encode();
        self.propose_command(token, body, now_ms);
    }

    /// Restores the state machine from a received snapshot (the driver
    /// calls it when `Output::install` says so, with the staged data).
    pub fn restore(
        &mut self,
        meta: &SnapshotMeta,
        data: &mut dyn std::io::Read,
    ) -> Result<(), String> {
        self.restore_snapshot(meta, data)
    }

    // --------------------------------------------------------------- output

    /// Processes everything pending and returns what the driver must do.
    pub fn poll(&mut self, now_ms: u64) -> Output<M::Response> {
        self.now_ms = self.now_ms.max(now_ms);
        self.flush_proposals(self.now_ms);
        self.membership_poll();
        self.writes
            .report_persisted(&mut self.raft, &mut self.failed);
        if self.failed.is_none() {
            self.drain_ready();
        }
        self.after_ready();
        std::mem::take(&mut self.out)
    }

    fn drain_ready(&mut self) {
        while self.failed.is_none() && self.raft.has_ready() {
            let rd = match self.raft.ready() {
                Ok(rd) => rd,
                Err(e) => {
                    self.fail(format!("raft could not read its log: {e}"));
                    return;
                }
            };
            if let Some(ss) = rd.soft_state {
                self.on_soft_state(ss);
            }
            self.out.chunks.extend(rd.snapshot_chunks);
            let install = rd.install_snapshot.clone();
            if let Some(id) = rd.persist_id {
                self.writes.push(
                    Write {
                        id,
                        install: install.clone(),
                        hard_state: rd.hard_state,
                        entries: rd.entries,
                    },
                    &mut self.out.writes,
                );
            }
            self.out.messages.extend(rd.messages);
            for e in &rd.committed {
                if let Err(why) = self.apply_committed(e) {
                    self.fail(why);
                    return;
                }
            }
            for rs in rd.read_states {
                self.reads.confirmed(rs.ctx, rs.index);
            }
            for ctx in rd.failed_reads {
                if let Some((token, _)) = self.reads.waiting.remove(&ctx) {
                    let leader = self.raft.leader();
                    self.out
                        .done
                        .push((token, Err(GroupError::NotLeader { leader })));
                }
            }
            if install.is_some() {
                // The driver restores the state machine before anything
                // later is applied.
                self.out.install = install;
                return;
            }
        }
    }

    fn after_ready(&mut self) {
        self.members
            .publish(self.raft.membership(), &mut self.out.events);
        self.serve_reads();
        self.maybe_mark();
        self.maybe_snapshot();
        self.check_transfers();
    }

    fn on_soft_state(&mut self, ss: SoftState) {
        let old = self.soft;
        self.soft = ss;
        if ss.leader != old.leader && ss.leader != NONE {
            self.stats.leader_changes += 1;
        }
        self.out.events.push(Event::Role(ss));
        if old.role == Role::Leader && ss.role != Role::Leader {
            self.on_leadership_lost();
        }
    }

    fn check_transfers(&mut self) {
        if self.transfers.is_empty() {
            return;
        }
        let leader = self.raft.leader();
        let leading = self.raft.role() == Role::Leader;
        let target = self.raft.status().transfer_target;
        let mut keep = Vec::new();
        for (to, token, since) in std::mem::take(&mut self.transfers) {
            if leader == to {
                self.out.done.push((token, Ok(Answer::Done)));
            } else if leading && target != Some(to) {
                self.out.done.push((
                    token,
                    Err(GroupError::TimedOut(format!(
                        "node {to} did not take over; the transfer was abandoned (is it caught up and reachable?)"
                    ))),
                ));
            } else {
                keep.push((to, token, since));
            }
        }
        self.transfers = keep;
    }

    /// Leader, every tick: notes which followers are being sent a snapshot
    /// and are alive (see `take_snapshot`).
    fn track_snapshot_transfers(&mut self) {
        if self.raft.role() != Role::Leader {
            self.receiving_snapshot.clear();
            return;
        }
        let st = self.raft.status();
        let now = self.ticks;
        self.receiving_snapshot.retain(|id, _| {
            st.peers
                .iter()
                .any(|p| p.id == *id && p.state == keel_raft::ProgressState::Snapshot)
        });
        for p in &st.peers {
            if p.state == keel_raft::ProgressState::Snapshot && p.recent_active {
                self.receiving_snapshot.insert(p.id, now);
            }
        }
    }

    /// Fails requests that waited too long for an answer that may never
    /// come (a read forwarded to a leader that lost it, a transfer whose
    /// leader was deposed).
    fn expire_requests(&mut self) {
        let limit = 4 * self.raft.config().election_tick as u64;
        let now = self.ticks;
        for token in self.reads.expire(now, limit) {
            self.out.done.push((
                token,
                Err(GroupError::TimedOut(
                    "the leader did not confirm the read in time (it moved, or is unreachable); retry"
                        .into(),
                )),
            ));
        }
        let mut keep = Vec::new();
        for (to, token, since) in std::mem::take(&mut self.transfers) {
            if now.saturating_sub(since) > limit {
                self.out.done.push((
                    token,
                    Err(GroupError::TimedOut(format!(
                        "node {to} did not take over in time; the transfer was abandoned"
                    ))),
                ));
            } else {
                keep.push((to, token, since));
            }
        }
        self.transfers = keep;
    }

    pub(crate) fn map_raft_error(&self, e: keel_raft::Error) -> GroupError {
        match e {
            keel_raft::Error::NotLeader { leader } => GroupError::NotLeader { leader },
            keel_raft::Error::TransferInProgress(t) => GroupError::Busy(format!(
                "leadership is being transferred to node {t}; nothing was done, retry shortly"
            )),
            keel_raft::Error::Backpressure { .. } => {
                GroupError::Busy(format!("{e}; nothing was appended"))
            }
            keel_raft::Error::ConfChangeInProgress(i) => GroupError::ChangeInProgress(format!(
                "a membership change is in progress (configuration entry {i} is not final yet); retry once it completes"
            )),
            keel_raft::Error::LearnerLagging { id, matched, last } => GroupError::Lagging {
                id,
                behind: last.saturating_sub(matched),
                matched,
                last,
            },
            other => GroupError::Invalid(other.to_string()),
        }
    }

    /// The storage failed: take no further part, fail everything waiting.
    pub(crate) fn fail(&mut self, why: String) {
        if self.failed.is_some() {
            return;
        }
        tracing::error!(
            group = self.group,
            error = %why,
            "the group's storage failed: this node stops taking part in the group and refuses writes; restart it to recover from the files"
        );
        self.failed = Some(why.clone());
        self.fail_all(GroupError::StoreFailed(why));
    }

    /// Answers every waiting request with `err` (the group stops or failed).
    pub fn fail_all(&mut self, err: GroupError) {
        let mut tokens: Vec<Token> = Vec::new();
        tokens.extend(self.proposals.take_all());
        tokens.extend(self.reads.take_all());
        tokens.extend(self.transfers.drain(..).map(|(_, t, _)| t));
        tokens.extend(self.members.take_all());
        for t in tokens {
            self.out.done.push((t, Err(err.clone())));
        }
    }

    /// Snapshot of the observed member infos (for status).
    pub fn observed_infos(&self) -> &BTreeMap<NodeId, MemberInfo> {
        &self.members.observed
    }
}
