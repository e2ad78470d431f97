//! Leadership transfer (thesis §3.10) and preferred leaders.
//!
//! Transfer: the leader stops taking proposals, catches the target up, then
//! sends it TimeoutNow; the target campaigns at once (no pre-vote, and voters
//! disregard stickiness for it). It is abandoned after an election timeout.
//!
//! Preferred leaders (`Config::preferred_leaders`, replaced at run time by
//! `set_preferred_leaders`): a leader that is not the most preferred
//! available node hands over to a more preferred voter once that voter has
//! been caught up and responsive for `preferred_settle_ticks`. A slow or
//! partitioned preferred node is never caught up and responsive, so it is
//! never chosen. A hand-over that fails backs off exponentially on both
//! sides: the leader waits longer before choosing that node again, and the
//! node itself ignores TimeoutNow for a while after an election it was
//! handed did not make it leader (that side survives leader changes), so
//! leadership does not flap.

use crate::Raft;
use crate::error::Error;
use crate::message::MessageBody;
use crate::storage::Storage;
use crate::types::{NodeId, Role};

#[derive(Debug, Clone)]
pub(crate) struct Transfer {
    pub(crate) target: NodeId,
    pub(crate) elapsed: u32,
    pub(crate) timeout_now_sent: bool,
}

/// Longest back-off before retrying a failed hand-over, as a power of two
/// of the settle time.
pub(crate) const MAX_BACKOFF_EXP: u32 = 6;

impl<S: Storage> Raft<S> {
    /// Hands leadership to `target`. Returns at once; the outcome shows as a
    /// role change (or, after an election timeout, nothing: proposals are
    /// accepted again).
    pub fn transfer_leader(&mut self, target: NodeId) -> Result<(), Error> {
        if self.role != Role::Leader {
            return Err(Error::NotLeader {
                leader: self.leader,
            });
        }
        if target == self.cfg.id {
            self.transfer = None;
            return Ok(());
        }
        if !self.membership.voters.contains(&target) {
            return Err(Error::NotAVoter(target));
        }
        if self.transfer.as_ref().is_some_and(|t| t.target == target) {
            return Ok(());
        }
        self.transfer = Some(Transfer {
            target,
            elapsed: 0,
            timeout_now_sent: false,
        });
        self.needs_flush = true;
        self.maybe_send_timeout_now(target);
        Ok(())
    }

    /// Replaces the preferred leaders (most preferred first) at run time;
    /// `Config::preferred_leaders` is only the starting list. A hosting layer
    /// that replicates the setting calls this on every node when it applies
    /// it (and again after a restart). An unchanged list changes nothing.
    ///
    /// Otherwise every voter's settle time starts over (a node that was
    /// not watched while it was not preferred has no valid "caught up
    /// since"), and the hand-over back-off of nodes no longer preferred is
    /// forgotten. A transfer already under way is left to finish or time out.
    pub fn set_preferred_leaders(&mut self, leaders: Vec<NodeId>) {
        if leaders == self.cfg.preferred_leaders {
            return;
        }
        self.preferred_backoff.retain(|id, _| leaders.contains(id));
        for p in self.progress.values_mut() {
            p.caught_up_since = None;
        }
        self.cfg.preferred_leaders = leaders;
    }

    /// The preferred leaders in force, most preferred first.
    pub fn preferred_leaders(&self) -> &[NodeId] {
        &self.cfg.preferred_leaders
    }

    /// Sends TimeoutNow once the transfer target holds our whole log.
    pub(crate) fn maybe_send_timeout_now(&mut self, from: NodeId) {
        let last = self.log.last_index();
        let Some(t) = &mut self.transfer else { return };
        if t.target != from || t.timeout_now_sent {
            return;
        }
        if self.progress.get(&from).is_some_and(|p| p.matched == last) {
            t.timeout_now_sent = true;
            self.send(from, MessageBody::TimeoutNow);
        }
    }

    pub(crate) fn tick_transfer(&mut self) {
        let Some(t) = &mut self.transfer else { return };
        t.elapsed += 1;
        if t.elapsed < self.cfg.election_tick {
            return;
        }
        let target = t.target;
        self.transfer = None;
        if self.cfg.preferred_leaders.contains(&target) {
            let now = self.ticks;
            let settle = self.cfg.preferred_settle_ticks.max(1) as u64;
            let entry = self.preferred_backoff.entry(target).or_insert((0, 0));
            entry.1 = (entry.1 + 1).min(MAX_BACKOFF_EXP);
            entry.0 = now + (settle << entry.1);
        }
    }

    fn preference_rank(&self, id: NodeId) -> usize {
        self.cfg
            .preferred_leaders
            .iter()
            .position(|p| *p == id)
            .unwrap_or(usize::MAX)
    }

    /// Leader, every tick: hand over to a more preferred node when it is
    /// ready for it.
    pub(crate) fn check_preferred_leader(&mut self) {
        if self.cfg.preferred_leaders.is_empty() || self.transfer.is_some() {
            return;
        }
        let my_rank = self.preference_rank(self.cfg.id);
        let now = self.ticks;
        let last = self.log.last_index();
        let settle = self.cfg.preferred_settle_ticks as u64;
        let responsive_within = (self.cfg.heartbeat_tick as u64) * 3;
        let mut chosen = None;
        for rank in 0..my_rank.min(self.cfg.preferred_leaders.len()) {
            let p = self.cfg.preferred_leaders[rank];
            if !self.membership.voters.contains(&p) {
                continue;
            }
            let Some(pr) = self.progress.get_mut(&p) else {
                continue;
            };
            let caught_up = pr.matched + self.cfg.preferred_max_lag >= last
                && now.saturating_sub(pr.last_heard) <= responsive_within;
            if !caught_up {
                pr.caught_up_since = None;
                continue;
            }
            let since = *pr.caught_up_since.get_or_insert(now);
            let backoff_until = self.preferred_backoff.get(&p).map(|b| b.0).unwrap_or(0);
            if now >= since + settle && now >= backoff_until && chosen.is_none() {
                chosen = Some(p);
            }
        }
        if let Some(p) = chosen {
            let _ = self.transfer_leader(p);
        }
    }
}
