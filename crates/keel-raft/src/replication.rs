//! Log replication: the leader's pipelined appends under a flow-control
//! window, the follower's acceptance rules, fast backtracking, heartbeats,
//! and commitment by a quorum of persisted match indexes (only entries of
//! the current term commit directly: the Figure 8 rule).

use crate::Raft;
use crate::error::{Error, StorageError};
use crate::log::RaftLog;
use crate::message::{Append, AppendResponse, MessageBody, RejectHint};
use crate::progress::ProgressState;
use crate::storage::Storage;
use crate::types::{Index, NodeId, Role, Term};

impl<S: Storage> Raft<S> {
    // ------------------------------------------------------------- leader

    /// Sends every follower what it can take now: new entries within the
    /// in-flight window (several messages when pipelining), or an empty
    /// append when only the commit index moved or a probe is due.
    pub(crate) fn flush_appends(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        self.needs_flush = false;
        let me = self.cfg.id;
        let peers: Vec<NodeId> = self
            .progress
            .keys()
            .copied()
            .filter(|id| *id != me)
            .collect();
        for id in peers {
            self.send_appends_to(id);
        }
    }

    fn send_appends_to(&mut self, to: NodeId) {
        let last = self.log.last_index();
        let committed = self.log.committed;
        let (max_msgs, max_bytes, max_msg) = (
            self.cfg.max_inflight_msgs,
            self.cfg.max_inflight_bytes,
            self.cfg.max_msg_bytes,
        );
        loop {
            let Some(pr) = self.progress.get(&to) else {
                return;
            };
            if pr.state == ProgressState::Snapshot {
                self.send_snapshot_chunk(to);
                return;
            }
            if pr.is_paused(max_msgs, max_bytes) {
                return;
            }
            if pr.next < self.log.first_index() {
                // What the follower needs was compacted into a snapshot.
                if self.start_snapshot(to) {
                    self.send_snapshot_chunk(to);
                }
                return;
            }
            let has_entries = pr.next <= last;
            let probe_due = pr.state == ProgressState::Probe;
            let commit_due = pr.commit_sent < committed;
            if !has_entries && !probe_due && !commit_due && !pr.empty_due {
                return;
            }
            let next = pr.next;
            let prev_index = next - 1;
            let prev_term = match self.log.term(prev_index) {
                Ok(t) => t,
                Err(StorageError::Compacted(_)) => {
                    if self.start_snapshot(to) {
                        self.send_snapshot_chunk(to);
                    }
                    return;
                }
                Err(_) => return,
            };
            let entries = if has_entries {
                match self.log.slice(next, last + 1, max_msg) {
                    Ok(e) => e,
                    Err(_) => return,
                }
            } else {
                Vec::new()
            };
            let bytes: u64 = entries.iter().map(|e| e.len() as u64).sum();
            let sent_last = prev_index + entries.len() as Index;
            let had_entries = !entries.is_empty();
            let pr = self.progress.get_mut(&to).expect("checked above");
            pr.sent(sent_last, bytes, had_entries);
            pr.commit_sent = committed;
            pr.empty_due = false;
            self.send(
                to,
                MessageBody::Append(Append {
                    prev_index,
                    prev_term,
                    commit: committed,
                    entries,
                }),
            );
            let pr = &self.progress[&to];
            if pr.state != ProgressState::Replicate || pr.next > last {
                return;
            }
        }
    }

    pub(crate) fn broadcast_heartbeat(&mut self) {
        let read_seq = self.reads.start_round(self.ticks);
        let me = self.cfg.id;
        let committed = self.log.committed;
        let targets: Vec<(NodeId, Index)> = self
            .progress
            .iter()
            .filter(|(id, _)| **id != me)
            .map(|(id, p)| (*id, p.matched.min(committed)))
            .collect();
        for (id, commit) in targets {
            self.send(id, MessageBody::Heartbeat { commit, read_seq });
        }
    }

    pub(crate) fn handle_append_response(
        &mut self,
        from: NodeId,
        r: AppendResponse,
    ) -> Result<(), Error> {
        let last = self.log.last_index();
        if r.index > last && r.reject.is_none() {
            return Err(Error::InvalidMessage {
                from,
                reason: format!(
                    "acknowledges index {} beyond the leader's last index {}",
                    r.index, last
                ),
            });
        }
        let Some(pr) = self.progress.get(&from) else {
            return Ok(()); // not a member (any more)
        };
        if let Some(hint) = r.reject {
            let hint_next = self.hint_next(pr.matched, r.index, hint);
            let pr = self.progress.get_mut(&from).expect("present");
            if pr.maybe_decrease(r.index, hint_next) {
                self.needs_flush = true;
            }
            return Ok(());
        }
        let pr = self.progress.get_mut(&from).expect("present");
        if pr.maybe_update(r.index) {
            if pr.state == ProgressState::Probe {
                pr.become_replicate();
            } else {
                pr.inflights.free_to(r.index);
            }
            self.needs_flush = true;
            self.maybe_commit();
            self.maybe_send_timeout_now(from);
        } else if pr.state == ProgressState::Replicate {
            pr.inflights.free_to(r.index);
        }
        Ok(())
    }

    /// Where to resume after a rejection, from the follower's hint.
    fn hint_next(&self, matched: Index, rejected: Index, hint: RejectHint) -> Index {
        match hint {
            RejectHint::LogEnds { last_index } => last_index.saturating_add(1),
            RejectHint::Conflict { term, first_index } => {
                let lo = matched.max(self.log.first_index());
                let hi = rejected.min(self.log.last_index());
                match self.log.last_with_term_at_most(term, lo, hi) {
                    // We hold `term` up to j and the follower holds it from
                    // first_index past j: both agree up to j.
                    Some(j) if j >= first_index && self.log.match_term(j, term) => j + 1,
                    _ => first_index,
                }
            }
        }
    }

    pub(crate) fn handle_heartbeat_response(
        &mut self,
        from: NodeId,
        read_seq: u64,
    ) -> Result<(), Error> {
        let last = self.log.last_index();
        let Some(pr) = self.progress.get_mut(&from) else {
            return Ok(());
        };
        pr.read_seq_acked = pr.read_seq_acked.max(read_seq);
        pr.probe_sent = false;
        if pr.state == ProgressState::Snapshot {
            self.snapshot_retry(from);
            self.confirm_reads();
            return Ok(());
        }
        if pr.state == ProgressState::Replicate
            && pr
                .inflights
                .full(self.cfg.max_inflight_msgs, self.cfg.max_inflight_bytes)
        {
            pr.inflights.free_first();
        }
        if pr.matched < last {
            // An append may have been lost: an empty one at `next` lets the
            // follower reject it and us back off to where it really is.
            // (Behind in-flight appends on an ordered link it is accepted.)
            pr.empty_due = true;
            self.needs_flush = true;
        }
        self.confirm_reads();
        Ok(())
    }

    /// Commits the highest index a quorum has persisted, if it is of the
    /// current term. Returns whether the commit index moved.
    pub(crate) fn maybe_commit(&mut self) -> bool {
        let progress = &self.progress;
        let me = self.cfg.id;
        let persisted = self.log.persisted();
        let idx = self.membership.committed_index(|id| {
            if id == me {
                persisted
            } else {
                progress.get(&id).map(|p| p.matched).unwrap_or(0)
            }
        });
        if idx <= self.log.committed || idx == Index::MAX {
            return false;
        }
        let current_term = self.log.term(idx).map(|t| t == self.term).unwrap_or(false);
        if !current_term && !self.knob(|k| k.commit_old_term) {
            // Figure 8: an entry of an earlier term is committed only by
            // committing one of ours after it.
            return false;
        }
        self.log.commit_to(idx);
        self.release_uncommitted();
        self.needs_flush = true;
        self.on_commit_advanced();
        self.after_commit();
        true
    }

    // ----------------------------------------------------------- follower

    pub(crate) fn handle_append(
        &mut self,
        from: NodeId,
        term: Term,
        a: Append,
    ) -> Result<(), Error> {
        let committed = self.log.committed;
        if a.prev_index < committed {
            // Everything up to our commit index matches any leader's log.
            self.send(
                from,
                MessageBody::AppendResponse(AppendResponse {
                    index: committed,
                    reject: None,
                }),
            );
            return Ok(());
        }
        RaftLog::<S>::check_incoming(a.prev_index, a.prev_term, term, &a.entries)
            .map_err(|reason| Error::InvalidMessage { from, reason })?;
        if self.log.match_term(a.prev_index, a.prev_term) {
            let last_new = a.prev_index + a.entries.len() as Index;
            let newest = a.entries.iter().map(|e| e.timestamp()).max();
            // Decode configurations first: a bad one refuses the message
            // before anything changes.
            let configs = Self::decode_configs(&a.entries)
                .map_err(|why| Error::InvalidMessage { from, reason: why })?;
            if let Some(first) = self
                .log
                .append_from_leader(a.entries)
                .map_err(|reason| Error::InvalidMessage { from, reason })?
            {
                self.configs_rewritten(first, configs);
            }
            if let Some(ts) = newest {
                self.last_timestamp = self.last_timestamp.max(ts);
            }
            self.leader_shown = self.leader_shown.max(last_new);
            self.follower_commit_to(a.commit.min(last_new));
            self.send(
                from,
                MessageBody::AppendResponse(AppendResponse {
                    index: last_new,
                    reject: None,
                }),
            );
            return Ok(());
        }
        let last = self.log.last_index();
        let hint = if a.prev_index > last {
            RejectHint::LogEnds { last_index: last }
        } else {
            match self.log.term(a.prev_index) {
                Ok(t) => {
                    let lo = (committed + 1).max(self.log.first_index());
                    RejectHint::Conflict {
                        term: t,
                        first_index: self.log.first_with_term_at_least(t, lo, a.prev_index),
                    }
                }
                Err(_) => RejectHint::LogEnds { last_index: last },
            }
        };
        self.send(
            from,
            MessageBody::AppendResponse(AppendResponse {
                index: a.prev_index,
                reject: Some(hint),
            }),
        );
        Ok(())
    }

    fn follower_commit_to(&mut self, index: Index) {
        if self.log.commit_to(index) {
            self.after_commit();
        }
    }

    pub(crate) fn handle_heartbeat(&mut self, from: NodeId, commit: Index, read_seq: u64) {
        // Only as far as we know our log matches this leader's: what it
        // showed us in this term, or up to our last entry when that entry
        // is of this term (only this term's leader makes such entries, so
        // the log up to it is the leader's; this survives a restart). The
        // leader sends min(commit, what we acknowledged), so a real
        // heartbeat never needs more; a forged one commits nothing the
        // leader does not hold.
        let last = self.log.last_index();
        let known = if self.log.last_term() == self.term {
            last.max(self.leader_shown)
        } else {
            self.leader_shown
        };
        self.follower_commit_to(commit.min(known));
        self.send(from, MessageBody::HeartbeatResponse { read_seq });
    }
}
