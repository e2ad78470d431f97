//! Linearizable reads with ReadIndex (Raft thesis §6.4).
//!
//! The leader records its commit index for the read, confirms it is still
//! leader with a heartbeat round acknowledged by a quorum, and releases the
//! read at that index; the driver serves it once it has applied that far.
//! A new leader first waits for the no-op of its term to commit (before that
//! its commit index may be behind). Followers forward reads to the leader.
//! Reads that arrive together share one round. An optional lease mode skips
//! the round while a quorum acknowledged the leader recently; it is safe
//! only while clocks drift by less than `lease_margin_ticks`.

use std::collections::VecDeque;

use crate::Raft;
use crate::config::ReadMode;
use crate::error::Error;
use crate::message::MessageBody;
use crate::storage::Storage;
use crate::types::{Index, NONE, NodeId, Role};

/// A read confirmed linearizable: serve it once applied index >= `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadState {
    pub ctx: u64,
    pub index: Index,
}

#[derive(Debug, Clone, Copy)]
struct PendingRead {
    ctx: u64,
    from: NodeId,
    index: Index,
    seq: u64,
}

#[derive(Debug, Default)]
pub(crate) struct ReadQueue {
    next_seq: u64,
    round_needed: bool,
    /// Waiting for a round to be acknowledged, in seq order.
    pending: VecDeque<PendingRead>,
    /// Arrived before this leader's no-op committed.
    waiting_noop: Vec<(u64, NodeId)>,
    /// When each recent round was sent (seq, tick), for leases.
    sent: VecDeque<(u64, u64)>,
    /// Local reads confirmed / refused, drained by `ready`.
    pub(crate) confirmed: Vec<ReadState>,
    pub(crate) failed: Vec<u64>,
}

impl ReadQueue {
    /// Starts a heartbeat round; returns its sequence number.
    pub(crate) fn start_round(&mut self, tick: u64) -> u64 {
        self.next_seq += 1;
        self.round_needed = false;
        self.sent.push_back((self.next_seq, tick));
        if self.sent.len() > 256 {
            self.sent.pop_front();
        }
        self.next_seq
    }

    pub(crate) fn round_needed(&self) -> bool {
        self.round_needed
    }

    fn sent_tick(&self, seq: u64) -> Option<u64> {
        self.sent
            .binary_search_by_key(&seq, |(s, _)| *s)
            .ok()
            .map(|i| self.sent[i].1)
    }

    pub(crate) fn deliver_local(&mut self, ctx: u64, index: Option<Index>) {
        match index {
            Some(index) => self.confirmed.push(ReadState { ctx, index }),
            None => self.failed.push(ctx),
        }
    }

    /// Drops every pending read (leadership lost); returns the remote ones
    /// so their nodes can be told.
    pub(crate) fn fail_all(&mut self, me: NodeId) -> Vec<(u64, NodeId)> {
        let mut remote = Vec::new();
        let all = self
            .pending
            .drain(..)
            .map(|p| (p.ctx, p.from))
            .chain(self.waiting_noop.drain(..))
            .collect::<Vec<_>>();
        for (ctx, from) in all {
            if from == me {
                self.failed.push(ctx);
            } else {
                remote.push((ctx, from));
            }
        }
        self.round_needed = false;
        self.sent.clear();
        remote
    }

    pub(crate) fn has_output(&self) -> bool {
        !self.confirmed.is_empty() || !self.failed.is_empty()
    }
}

impl<S: Storage> Raft<S> {
    /// Asks for a linearizable read. The answer comes back in a later
    /// [`Ready`](crate::Ready): `read_states` (serve at that index once
    /// applied) or `failed_reads` (retry, perhaps elsewhere). `ctx` is the
    /// caller's id for the request.
    pub fn read_index(&mut self, ctx: u64) -> Result<(), Error> {
        match self.role {
            Role::Leader => {
                self.leader_read(ctx, self.cfg.id);
                Ok(())
            }
            Role::Follower if self.leader != NONE => {
                let leader = self.leader;
                self.send(leader, MessageBody::ReadIndex { ctx });
                Ok(())
            }
            _ => Err(Error::NotLeader {
                leader: self.leader,
            }),
        }
    }

    fn committed_in_term(&self) -> bool {
        self.log
            .term(self.log.committed)
            .map(|t| t == self.term)
            .unwrap_or(false)
    }

    pub(crate) fn leader_read(&mut self, ctx: u64, from: NodeId) {
        if !self.committed_in_term() {
            self.reads.waiting_noop.push((ctx, from));
            return;
        }
        let index = self.log.committed;
        let me = self.cfg.id;
        let alone = self.membership.all_voters().all(|id| id == me);
        if alone || (self.cfg.read_mode == ReadMode::Lease && self.lease_valid()) {
            self.deliver_read(ctx, from, index);
            return;
        }
        let seq = self.reads.next_seq + 1;
        self.reads.pending.push_back(PendingRead {
            ctx,
            from,
            index,
            seq,
        });
        self.reads.round_needed = true;
    }

    fn deliver_read(&mut self, ctx: u64, from: NodeId, index: Index) {
        if from == self.cfg.id {
            self.reads.deliver_local(ctx, Some(index));
        } else {
            self.send(
                from,
                MessageBody::ReadIndexResponse {
                    ctx,
                    index: Some(index),
                },
            );
        }
    }

    /// Releases the reads whose round a quorum has acknowledged.
    pub(crate) fn confirm_reads(&mut self) {
        if self.reads.pending.is_empty() {
            return;
        }
        let me = self.cfg.id;
        let progress = &self.progress;
        let acked = self.membership.committed_index(|id| {
            if id == me {
                u64::MAX
            } else {
                progress.get(&id).map(|p| p.read_seq_acked).unwrap_or(0)
            }
        });
        while let Some(p) = self.reads.pending.front().copied() {
            if p.seq > acked {
                break;
            }
            self.reads.pending.pop_front();
            self.deliver_read(p.ctx, p.from, p.index);
        }
    }

    /// Called when the commit index moves: reads that waited for this
    /// leader's first commit can proceed.
    pub(crate) fn on_commit_advanced(&mut self) {
        if self.reads.waiting_noop.is_empty() || !self.committed_in_term() {
            return;
        }
        for (ctx, from) in std::mem::take(&mut self.reads.waiting_noop) {
            self.leader_read(ctx, from);
        }
    }

    /// Lease: a quorum acknowledged a round sent at tick `t` and no new
    /// leader can be elected before `t + election_tick` (followers ignore
    /// votes that long after hearing us), minus the drift margin.
    fn lease_valid(&self) -> bool {
        let me = self.cfg.id;
        let now = self.ticks;
        let since = self.membership.committed_index(|id| {
            if id == me {
                now
            } else {
                self.progress
                    .get(&id)
                    .and_then(|p| self.reads.sent_tick(p.read_seq_acked))
                    .unwrap_or(0)
            }
        });
        let lease = (self.cfg.election_tick - self.cfg.lease_margin_ticks) as u64;
        since > 0 && now < since + lease && self.transfer.is_none()
    }

    /// Fails pending reads when leadership ends.
    pub(crate) fn fail_reads(&mut self) {
        for (ctx, to) in self.reads.fail_all(self.cfg.id) {
            self.send(to, MessageBody::ReadIndexResponse { ctx, index: None });
        }
    }
}
