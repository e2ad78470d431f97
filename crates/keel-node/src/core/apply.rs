//! Applying committed entries, the applied mark and what may be served,
//! snapshots (taking them, installing received ones).
//!
//! What is served (stale reads, tails, status) never passes the durable
//! applied mark, so a node that restarts serves at least what it served
//! before: at start it re-applies its log up to the mark. Acknowledgements
//! of proposals do not wait for the mark (the entry is committed: durable
//! on a quorum); linearizable reads do.

use keel_raft::{Entry, EntryKind, Index, SnapshotMeta, Storage};

use super::{GroupCore, SnapshotJob};
use crate::command::CommandBody;
use crate::mark::Watermark;
use crate::state_machine::{Command, StateMachine};

impl<S: Storage, M: StateMachine> GroupCore<S, M> {
    /// Applies one committed entry handed out by raft, then answers the
    /// proposals it decides.
    pub(crate) fn apply_committed(&mut self, e: &Entry) -> Result<(), String> {
        self.apply_entry(e)?;
        self.settle_waiters(e);
        self.membership_applied(e);
        if self.settings.record_applied {
            self.out.applied.push(e.clone());
        }
        Ok(())
    }

    /// Applies one entry to the state machine and the core's own state
    /// (shared by start-up replay and normal application).
    pub(crate) fn apply_entry(&mut self, e: &Entry) -> Result<(), String> {
        if e.index() != self.applied.index + 1 {
            return Err(format!(
                "entry {} applied after {}: the log has a gap",
                e.index(),
                self.applied.index
            ));
        }
        match e.kind() {
            EntryKind::Data => {
                let collect = self.proposals.wants_responses(e.index(), e.term());
                let mut n = 0u64;
                for (offset, data) in (e.base_offset()..).zip(e.records()) {
                    let r = self.sm.apply(Command {
                        index: e.index(),
                        offset,
                        data: &data,
                    });
                    if collect {
                        self.proposals.push_response(r);
                    }
                    n += 1;
                }
                self.stats.applied_records += n;
            }
            EntryKind::Command => match CommandBody::decode(e.body())
                .map_err(|why| format!("command entry {}: {why}", e.index()))?
            {
                CommandBody::PreferredLeader(id) => {
                    self.preferred = id;
                    self.raft.set_preferred_leaders(id.into_iter().collect());
                }
                CommandBody::StateMachine(body) => self.sm.apply_control(e.index(), &body),
            },
            EntryKind::Config => {
                let m = keel_raft::decode_membership(&e.body())
                    .map_err(|why| format!("configuration entry {}: {why}", e.index()))?;
                let in_latest = self.raft.membership().is_member(self.id);
                self.members
                    .set_applied(m, self.id, in_latest, &mut self.out.events);
            }
            EntryKind::Noop | EntryKind::SnapshotMarker => {}
        }
        self.applied = Watermark {
            index: e.index(),
            end_offset: e.end_offset(),
        };
        self.stats.applied_entries += 1;
        self.since_snapshot.0 += 1;
        self.since_snapshot.1 += e.len() as u64;
        Ok(())
    }

    /// Asks for a mark write when the applied index passed the mark and no
    /// write is in flight (one at a time: every write carries the latest).
    pub(crate) fn maybe_mark(&mut self) {
        if self.failed.is_some()
            || self.mark_in_flight.is_some()
            || self.writes.installs_in_flight > 0
            || self.applied.index <= self.mark.index
        {
            return;
        }
        self.mark_in_flight = Some(self.applied);
        self.out.mark = Some(self.applied);
    }

    /// The mark write asked for is durable: everything up to it may be
    /// served. `ok = false`: the write failed (the storage failed).
    pub fn mark_done(&mut self, w: Watermark, ok: bool) {
        self.mark_in_flight = None;
        if !ok {
            self.fail(format!(
                "writing the applied mark at index {} failed",
                w.index
            ));
            return;
        }
        if w.index > self.mark.index {
            self.mark = w;
        }
        if self.mark.index > self.served.index {
            self.served = self.mark;
            self.out.served = Some(self.served);
        }
    }

    /// Starts a snapshot when the policy says so and none is in flight.
    pub(crate) fn maybe_snapshot(&mut self) {
        let p = self.settings.snapshot;
        if self.failed.is_some()
            || self.snapshot_in_flight.is_some()
            || self.writes.installs_in_flight > 0
            || self.applied.index <= self.snapshot_index
        {
            return;
        }
        let (entries, bytes) = self.since_snapshot;
        let due = (p.entries > 0 && entries >= p.entries) || (p.bytes > 0 && bytes >= p.bytes);
        if !due {
            return;
        }
        self.take_snapshot();
    }

    /// Snapshots the state machine at the applied index now (also on
    /// request: `Group::snapshot`). Returns false if one is in flight,
    /// nothing was applied since the last, or this leader is sending a
    /// snapshot to a follower.
    pub fn take_snapshot(&mut self) -> bool {
        if self.snapshot_in_flight.is_some() || self.applied.index <= self.snapshot_index {
            return false;
        }
        // A new snapshot replaces the one a follower is being sent, and the
        // transfer starts over: a leader holds off while a follower that is
        // alive (it answered within two election timeouts) is receiving
        // one, so snapshots taken more often than a transfer takes cannot
        // starve it. A follower that stopped answering does not hold the
        // log back.
        if self.raft.role() == keel_raft::Role::Leader {
            let window = 2 * self.raft.config().election_tick as u64;
            let now = self.ticks;
            if self
                .receiving_snapshot
                .values()
                .any(|seen| now.saturating_sub(*seen) <= window)
            {
                return false;
            }
        }
        let index = self.applied.index;
        let meta = match self.raft.snapshot_meta(index) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(group = self.group, index, error = %e, "cannot describe a snapshot here; trying later");
                self.since_snapshot = (0, 0);
                return false;
            }
        };
        let writer = self.sm.snapshot();
        self.snapshot_in_flight = Some(index);
        self.since_snapshot = (0, 0);
        self.out.snapshot = Some(SnapshotJob { meta, writer });
        true
    }

    /// The snapshot asked for was written (and the storage now offers it to
    /// followers), or failed to be. On success the log may be compacted.
    pub fn snapshot_done(&mut self, index: Index, result: Result<(), String>) {
        if self.snapshot_in_flight == Some(index) {
            self.snapshot_in_flight = None;
        }
        match result {
            Ok(()) => {
                if index > self.snapshot_index {
                    self.snapshot_index = index;
                }
                if self.settings.snapshot.compact {
                    let upto = self.raft.compaction_point(index);
                    if upto >= self.raft.storage().first_index() {
                        self.out.compact = Some(upto);
                    }
                }
            }
            Err(why) => {
                tracing::warn!(group = self.group, index, error = %why, "taking a snapshot failed; the log is kept and a snapshot is tried again later");
            }
        }
    }

    /// Installs a received snapshot into the state machine.
    pub(crate) fn restore_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        data: &mut dyn std::io::Read,
    ) -> Result<(), String> {
        if let Err(e) = self.sm.restore(meta, data) {
            let why = format!(
                "restoring the snapshot at index {} from the leader failed: {e}",
                meta.index
            );
            self.fail(why.clone());
            return Err(why);
        }
        self.applied = Watermark {
            index: meta.index,
            end_offset: meta.next_offset,
        };
        self.snapshot_index = meta.index;
        self.since_snapshot = (0, 0);
        self.waiters_covered_by_snapshot(meta.index);
        let in_latest = self.raft.membership().is_member(self.id);
        self.members.set_applied(
            meta.membership.clone(),
            self.id,
            in_latest,
            &mut self.out.events,
        );
        Ok(())
    }
}
