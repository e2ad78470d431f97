//! Configuration changes on a running group: proposing them, the
//! configuration history that lets an appended configuration take effect at
//! once and roll back if truncated, leaving the joint phase, and the steps a
//! leader takes when the membership changes under it.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use keel_format::{Batch, EntryKind};

use crate::conf_change::{self, ConfChange, ConfChangeOp, LaggingLearner};
use crate::error::Error;
use crate::progress::Progress;
use crate::quorum::Membership;
use crate::storage::Storage;
use crate::types::{Index, NONE, NodeId, Role};
use crate::{Proposed, Raft};

/// What became of a [`Raft::propose_change`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfChangeStatus {
    /// The (first) configuration entry was appended.
    Proposed(Proposed),
    /// Held until the learners to promote catch up; the outcome arrives as
    /// a [`ConfChangeEvent`] in a later Ready.
    Waiting,
}

/// The fate of a change that waited for learners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfChangeEvent {
    /// Proposed: its (first) configuration entry was appended here.
    Proposed(Proposed),
    /// Not proposed: the learners did not catch up in time, or leadership
    /// was lost.
    Dropped,
}

/// A change held until its learners catch up.
#[derive(Debug, Clone)]
pub(crate) struct WaitingChange {
    /// The configuration it leads to (voters, learners, info).
    target: Membership,
    since: u64,
    timestamp: u64,
}

impl<S: Storage> Raft<S> {
    /// Proposes a membership change (leader only): voters, learners and
    /// member info. Voter changes go through a joint configuration; the
    /// final configuration follows automatically once the joint one
    /// commits. A change of learners or info alone is one configuration
    /// entry. Refused while another change is in progress or a transfer is
    /// pending, and when it would alter nothing
    /// ([`Error::InvalidConfChange`]), as is info for a node that is not a
    /// member of the configuration the change leads to.
    pub fn propose_change(
        &mut self,
        change: &ConfChange,
        timestamp: u64,
    ) -> Result<ConfChangeStatus, Error> {
        if self.role != Role::Leader {
            return Err(Error::NotLeader {
                leader: self.leader,
            });
        }
        if let Some(t) = &self.transfer {
            return Err(Error::TransferInProgress(t.target));
        }
        if let Some(index) = self.conf_change_pending() {
            return Err(Error::ConfChangeInProgress(index));
        }
        let target =
            conf_change::target(&self.membership, change).map_err(Error::InvalidConfChange)?;
        if let Some((id, matched)) = self.lagging_promotion(&target.voters) {
            return match change.lagging {
                LaggingLearner::Refuse => Err(Error::LearnerLagging {
                    id,
                    matched,
                    last: self.log.last_index(),
                }),
                LaggingLearner::Wait => {
                    self.waiting_change = Some(WaitingChange {
                        target,
                        since: self.ticks,
                        timestamp,
                    });
                    Ok(ConfChangeStatus::Waiting)
                }
            };
        }
        Ok(ConfChangeStatus::Proposed(
            self.start_change(target, timestamp),
        ))
    }

    /// Proposes a change of voters and learners that leaves member info
    /// alone (but for removed members, whose info goes with them): a
    /// shorthand for [`propose_change`](Self::propose_change).
    pub fn propose_conf_change(
        &mut self,
        ops: &[ConfChangeOp],
        lagging: LaggingLearner,
        timestamp: u64,
    ) -> Result<ConfChangeStatus, Error> {
        let change = ConfChange {
            ops: ops.to_vec(),
            info: BTreeMap::new(),
            lagging,
        };
        self.propose_change(&change, timestamp)
    }

    /// The index of an uncommitted configuration entry, or a placeholder if
    /// a change is waiting, when a change is in progress.
    fn conf_change_pending(&self) -> Option<Index> {
        if self.waiting_change.is_some() {
            return Some(self.log.last_index());
        }
        let (index, m) = self.conf_history.last()?;
        (*index > self.log.committed || m.is_joint()).then_some(*index)
    }

    /// A learner that the change would promote but that is behind. One that
    /// has acknowledged nothing (matched 0: never reached, or not heard
    /// from since this leader took over) is behind however short the log
    /// is: promoting a node that may not even run can cost the quorum.
    fn lagging_promotion(&self, voters: &BTreeSet<NodeId>) -> Option<(NodeId, Index)> {
        let last = self.log.last_index();
        voters
            .iter()
            .filter(|id| self.membership.is_learner(**id))
            .map(|id| (*id, self.progress.get(id).map(|p| p.matched).unwrap_or(0)))
            .find(|(_, matched)| *matched == 0 || matched + self.cfg.learner_max_lag < last)
    }

    fn start_change(&mut self, target: Membership, timestamp: u64) -> Proposed {
        let next = if self.knob(|k| k.skip_joint) {
            target
        } else {
            conf_change::first_step(&self.membership, target)
        };
        self.append_config(next, timestamp)
    }

    fn append_config(&mut self, m: Membership, timestamp: u64) -> Proposed {
        let index = self.log.last_index() + 1;
        let body = conf_change::encode(&m);
        let entry = Batch::control(
            EntryKind::Config,
            &body,
            self.term,
            index,
            self.log.next_offset(),
            timestamp,
        );
        self.append_entry(entry);
        self.conf_history.push((index, m));
        self.refresh_membership();
        Proposed {
            index,
            term: self.term,
            base_offset: self.log.next_offset(),
            record_count: 0,
        }
    }

    /// Leader, every tick: propose a waiting change once its learners have
    /// caught up, or drop it when it waited too long.
    pub(crate) fn tick_waiting_change(&mut self) {
        let Some(w) = &self.waiting_change else {
            return;
        };
        if self.lagging_promotion(&w.target.voters).is_none() {
            let w = self.waiting_change.take().expect("checked");
            let p = self.start_change(w.target, w.timestamp);
            self.conf_events.push(ConfChangeEvent::Proposed(p));
        } else if self.ticks - w.since >= self.cfg.conf_change_wait_ticks as u64 {
            self.waiting_change = None;
            self.conf_events.push(ConfChangeEvent::Dropped);
        }
    }

    pub(crate) fn drop_waiting_change(&mut self) {
        if self.waiting_change.take().is_some() {
            self.conf_events.push(ConfChangeEvent::Dropped);
        }
    }

    /// Notes the configuration entries among `entries`, which were just
    /// written from index `first` on (everything from `first` on was
    /// replaced). Returns an error, before anything changes, if one does not
    /// decode.
    pub(crate) fn decode_configs(
        entries: &[crate::Entry],
    ) -> Result<Vec<(Index, Membership)>, String> {
        entries
            .iter()
            .filter(|e| e.kind() == EntryKind::Config)
            .map(|e| conf_change::decode(&e.body()).map(|m| (e.index(), m)))
            .collect()
    }

    /// The log was rewritten from `first` on with `configs` among the new
    /// entries: roll back configurations cut away, take on the new ones.
    pub(crate) fn configs_rewritten(&mut self, first: Index, configs: Vec<(Index, Membership)>) {
        self.conf_history.retain(|(i, _)| *i < first);
        self.conf_history
            .extend(configs.into_iter().filter(|(i, _)| *i >= first));
        self.refresh_membership();
    }

    /// The configuration in force: the last one appended (or, with the
    /// test-only knob, the last one committed).
    pub(crate) fn effective_membership(&self) -> Membership {
        let at_commit = self.knob(|k| k.apply_conf_at_commit);
        let committed = self.log.committed;
        self.conf_history
            .iter()
            .rev()
            .find(|(i, _)| !at_commit || *i <= committed)
            .map(|(_, m)| m.clone())
            .unwrap_or_else(|| self.base_membership.clone())
    }

    /// The configuration in force at `index` (for snapshots).
    ///
    /// `conf_history` is complete from `conf_known_from` on (a restart loads
    /// only the last configuration entries); below that, the log is scanned
    /// back from `index`.
    pub(crate) fn membership_at(&self, index: Index) -> Result<Membership, Error> {
        if let Some((_, m)) = self.conf_history.iter().rev().find(|(i, _)| *i <= index) {
            return Ok(m.clone());
        }
        if index >= self.conf_known_from {
            return Ok(self.base_membership.clone());
        }
        let first = self.log.first_index();
        let mut hi = index + 1;
        while hi > first {
            let lo = hi.saturating_sub(256).max(first);
            for e in self.log.slice(lo, hi, u64::MAX)?.iter().rev() {
                if e.kind() == EntryKind::Config {
                    return conf_change::decode(&e.body()).map_err(|why| {
                        Error::Storage(crate::error::StorageError::Failed(format!(
                            "configuration entry {} is corrupt: {why}",
                            e.index()
                        )))
                    });
                }
            }
            hi = lo;
        }
        Ok(self.base_membership.clone())
    }

    pub(crate) fn refresh_membership(&mut self) {
        let m = self.effective_membership();
        if m == self.membership {
            return;
        }
        self.membership = m;
        match self.role {
            Role::Leader => self.sync_progress(),
            Role::Candidate | Role::PreCandidate if !self.promotable() => {
                let term = self.term;
                self.become_follower(term, NONE);
            }
            _ => {}
        }
    }

    /// Leader: keep a progress entry for exactly the members.
    fn sync_progress(&mut self) {
        let next = self.log.last_index() + 1;
        let now = self.ticks;
        let members: BTreeSet<NodeId> = self.membership.all_members().collect();
        self.progress.retain(|id, _| members.contains(id));
        for id in members {
            self.progress.entry(id).or_insert_with(|| {
                let mut p = Progress::new(next);
                p.recent_active = true;
                p.last_heard = now;
                p
            });
        }
        if let Some(me) = self.progress.get_mut(&self.cfg.id) {
            me.matched = self.log.persisted();
        }
        self.needs_flush = true;
    }

    /// After the commit index moved: finish a joint phase, step down if
    /// this leader was removed, and (test knob) apply committed configs.
    pub(crate) fn after_commit(&mut self) {
        if self.knob(|k| k.apply_conf_at_commit) {
            self.refresh_membership();
        }
        if self.role != Role::Leader {
            return;
        }
        let Some((index, m)) = self.conf_history.last() else {
            return;
        };
        if *index > self.log.committed {
            return;
        }
        if m.is_joint() {
            let last = conf_change::leave_joint(m);
            let ts = self.last_timestamp;
            self.append_config(last, ts);
        } else if !m.is_voter(self.cfg.id) {
            // Removed (or demoted): we led until the new configuration
            // committed; now the remaining voters elect a leader.
            let term = self.term;
            self.become_follower(term, NONE);
        }
    }
}

/// The first entry of a brand-new cluster: a configuration entry holding
/// `m` at index 1, term 1, base offset 0, timestamp 0. Deterministic: equal
/// memberships give byte-identical entries.
///
/// Bootstrapping: every founding node writes exactly this entry at index 1,
/// and hard state term 1 (vote 0), durably, before its [`Raft`] starts
/// (with an empty [`InitialState::membership`](crate::InitialState): the
/// configuration comes from the log). The founders' logs then agree at
/// index 1, as if a leader of term 1 had replicated it; the entry commits
/// with the first leader's no-op, and the first election is at term 2. A
/// node that joins later starts with an empty log (and an empty
/// configuration) instead and receives the entry, or a snapshot, from the
/// leader.
///
/// `m` must be a configuration a log may hold: at least one voter, not
/// joint, info only for members and at most
/// [`MAX_INFO_BYTES`](crate::MAX_INFO_BYTES) each (`decode_membership`
/// of `encode_membership(m)` checks it). Otherwise [`Raft::new`] refuses the
/// log.
pub fn bootstrap_entry(m: &Membership) -> crate::Entry {
    Batch::control(EntryKind::Config, &conf_change::encode(m), 1, 1, 0, 0)
}

/// Encodes a configuration as a configuration entry body (the layout is in
/// `conf_change.rs`; version 2), for a hosting layer that stores one, in a
/// snapshot file for instance.
pub fn encode_membership(m: &Membership) -> Bytes {
    conf_change::encode(m)
}

/// Decodes a configuration entry body (version 1 or 2). Never panics;
/// anything malformed is refused with a message.
pub fn decode_membership(body: &[u8]) -> Result<Membership, String> {
    conf_change::decode(body)
}

#[cfg(test)]
pub(crate) fn conf_entry(
    m: &Membership,
    term: u64,
    index: Index,
    next_offset: u64,
) -> crate::Entry {
    Batch::control(
        EntryKind::Config,
        &conf_change::encode(m),
        term,
        index,
        next_offset,
        0,
    )
}
