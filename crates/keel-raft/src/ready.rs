//! The output contract.
//!
//! The driver loops: feed input (`tick`, `step`, `propose`, ...), then, while
//! `has_ready()`, take a [`Ready`] and act on it:
//!
//! 1. persist, in this order and in Ready order, with fdatasync:
//!    `snapshot_chunks` (stage them; offset 0 starts a new snapshot),
//!    `install_snapshot` (restore the state machine from the staged data,
//!    make it the node's snapshot, and reset the log to start right after
//!    its index), `hard_state`, and `entries` (the first entry's index may
//!    be at or below the last one written: truncate from there first);
//!    the log must reflect them before the next call into the core;
//! 2. send `messages` at once, in any order (they never depend on anything
//!    unpersisted: see below);
//! 3. apply `committed` entries in order;
//! 4. serve `read_states` once applied up to their index; fail `failed_reads`;
//! 5. when the writes of step 1 are durable, call
//!    [`Raft::on_persisted`] with `persist_id`. Persistence may run in the
//!    background and several Readies may be in flight; notifications must
//!    come in order.
//!
//! Persistence discipline: a message that reveals state which must survive a
//! crash — a vote request (new term, own vote), a vote grant, an append
//! acknowledgement (entries) — is held inside the core until the Ready that
//! carried that state is reported persisted, and only then appears in
//! `messages`. The leader's own appends to followers are not held: its disk
//! write runs in parallel with replication, and its entries count toward
//! commit only once reported persisted.

use crate::error::Error;
use crate::membership::ConfChangeEvent;
use crate::message::{Message, MessageBody};
use crate::read::ReadState;
use crate::snapshot::{SnapshotChunk, SnapshotMeta};
use crate::storage::Storage;
use crate::types::{HardState, NodeId, Role, SoftState, Term};
use crate::{Entry, Raft};

#[derive(Debug, Default)]
pub struct Ready {
    /// Role, leader or term changed.
    pub soft_state: Option<SoftState>,
    /// Persist before `persist_id` is acknowledged.
    pub hard_state: Option<HardState>,
    /// Persist (truncating from the first one's index) before `persist_id`
    /// is acknowledged.
    pub entries: Vec<Entry>,
    /// Report with [`Raft::on_persisted`] once `hard_state` and `entries`
    /// are durable. `None` when there is nothing to persist.
    pub persist_id: Option<u64>,
    /// Send now.
    pub messages: Vec<Message>,
    /// Committed entries to apply, in order.
    pub committed: Vec<Entry>,
    pub read_states: Vec<ReadState>,
    /// Contexts of local reads that could not be confirmed (leadership
    /// lost or no leader): retry them.
    pub failed_reads: Vec<u64>,
    /// Pieces of a snapshot being received, in order, to stage.
    pub snapshot_chunks: Vec<SnapshotChunk>,
    /// Install this staged snapshot before `persist_id` is acknowledged.
    pub install_snapshot: Option<SnapshotMeta>,
    /// Outcomes of configuration changes that waited for learners.
    pub conf_change_events: Vec<ConfChangeEvent>,
}

impl Ready {
    pub fn is_empty(&self) -> bool {
        self.soft_state.is_none()
            && self.hard_state.is_none()
            && self.entries.is_empty()
            && self.messages.is_empty()
            && self.committed.is_empty()
            && self.read_states.is_empty()
            && self.failed_reads.is_empty()
            && self.snapshot_chunks.is_empty()
            && self.install_snapshot.is_none()
            && self.conf_change_events.is_empty()
    }
}

impl<S: Storage> Raft<S> {
    pub(crate) fn send(&mut self, to: NodeId, body: MessageBody) {
        let term = self.term;
        self.send_with_term(to, term, body);
    }

    pub(crate) fn send_with_term(&mut self, to: NodeId, term: Term, body: MessageBody) {
        let gate = if body.needs_durable_state() && !self.knob(|k| k.ack_before_persist) {
            if self.hard_state() != self.last_hard_state
                || self.log.has_unhanded()
                || self.pending_install.is_some()
            {
                Some(self.next_persist_id)
            } else {
                self.log
                    .last_pending_id()
                    .filter(|id| *id > self.persisted_id)
            }
        } else {
            None
        };
        let m = Message {
            group: self.cfg.group,
            from: self.cfg.id,
            to,
            term,
            body,
        };
        match gate {
            Some(id) => self.gated.push_back((id, m)),
            None => self.outbox.push(m),
        }
    }

    /// Whether `ready()` would return anything.
    pub fn has_ready(&self) -> bool {
        self.soft_state() != self.last_soft_state
            || self.hard_state() != self.last_hard_state
            || self.log.has_unhanded()
            || !self.outbox.is_empty()
            || self.log.has_committed_to_apply()
            || self.reads.has_output()
            || !self.snapshot_chunks.is_empty()
            || self.pending_install.is_some()
            || !self.conf_events.is_empty()
            || (self.role == Role::Leader && (self.needs_flush || self.reads.round_needed()))
    }

    /// Takes everything the driver has to do now. See the module docs.
    pub fn ready(&mut self) -> Result<Ready, Error> {
        if self.role == Role::Leader {
            if self.needs_flush {
                self.flush_appends();
            }
            if self.reads.round_needed() {
                self.broadcast_heartbeat();
            }
        }
        let mut rd = Ready::default();
        let ss = self.soft_state();
        if ss != self.last_soft_state {
            rd.soft_state = Some(ss);
            self.last_soft_state = ss;
        }
        let hs = self.hard_state();
        if hs != self.last_hard_state {
            rd.hard_state = Some(hs);
            self.last_hard_state = hs;
        }
        rd.entries = self.log.take_unhanded();
        rd.snapshot_chunks = std::mem::take(&mut self.snapshot_chunks);
        rd.install_snapshot = self.pending_install.take();
        rd.conf_change_events = std::mem::take(&mut self.conf_events);
        if rd.hard_state.is_some() || !rd.entries.is_empty() || rd.install_snapshot.is_some() {
            let id = self.next_persist_id;
            self.next_persist_id += 1;
            self.log.record_persist(id);
            rd.persist_id = Some(id);
        }
        rd.messages = std::mem::take(&mut self.outbox);
        rd.committed = self.log.take_committed(self.cfg.max_apply_bytes)?;
        rd.read_states = std::mem::take(&mut self.reads.confirmed);
        rd.failed_reads = std::mem::take(&mut self.reads.failed);
        #[cfg(debug_assertions)]
        self.log.check_invariants();
        Ok(rd)
    }

    /// Storage reports the writes of every Ready up to `persist_id` durable.
    pub fn on_persisted(&mut self, persist_id: u64) -> Result<(), Error> {
        if persist_id >= self.next_persist_id {
            return Err(Error::UnknownPersist {
                got: persist_id,
                issued: self.next_persist_id - 1,
            });
        }
        if persist_id <= self.persisted_id {
            return Ok(());
        }
        self.persisted_id = persist_id;
        let persisted = self.log.on_persisted(persist_id);
        while self.gated.front().is_some_and(|(id, _)| *id <= persist_id) {
            let (_, m) = self.gated.pop_front().expect("front checked");
            self.outbox.push(m);
        }
        if self.role == Role::Leader {
            let me = self.cfg.id;
            if let Some(p) = self.progress.get_mut(&me) {
                p.matched = p.matched.max(persisted);
            }
            self.maybe_commit();
        }
        Ok(())
    }
}
