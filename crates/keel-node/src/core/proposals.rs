//! Proposals and reads: batching the records that arrive together into one
//! entry, the acknowledgement rule, and linearizable reads.
//!
//! The acknowledgement rule: a proposal waits for the entry at its index.
//! When that entry is applied with the term it was proposed in, the
//! proposal succeeded (its records were applied, their responses go back).
//! If the entry applied at its index has another term, or an entry of a
//! later term is applied first (terms never decrease along the log, so its
//! entry can no longer commit), it was replaced: definitely not applied. A
//! snapshot installed over its index leaves the outcome unknown here.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use keel_raft::{BatchBuilder, Entry, Index, Role, Storage, Term};

use super::{Answer, GroupCore, Token};
use crate::error::GroupError;
use crate::state_machine::StateMachine;

/// A proposal gathered into the entry being built.
struct Pending {
    token: Token,
    position: u32,
    count: u32,
}

/// A proposal waiting for its entry.
pub(crate) struct Waiter {
    index: Index,
    term: Term,
    token: Token,
    /// Records `position .. position + count` of a data entry; `None` for a
    /// control entry (its answer is `Answer::Done`).
    records: Option<(u32, u32)>,
}

pub(crate) struct Proposals<R> {
    builder: BatchBuilder,
    pending: Vec<Pending>,
    waiters: VecDeque<Waiter>,
    /// Responses of the entry being applied, while a waiter wants them.
    responses: Vec<R>,
}

impl<R> Proposals<R> {
    pub(crate) fn new() -> Self {
        Proposals {
            builder: BatchBuilder::new(),
            pending: Vec::new(),
            waiters: VecDeque::new(),
            responses: Vec::new(),
        }
    }

    pub(crate) fn take_all(&mut self) -> Vec<Token> {
        self.builder = BatchBuilder::new();
        let mut t: Vec<Token> = self.pending.drain(..).map(|p| p.token).collect();
        t.extend(self.waiters.drain(..).map(|w| w.token));
        t
    }

    /// Whether the entry at `index` has a waiter that wants its responses.
    pub(crate) fn wants_responses(&self, index: Index, term: Term) -> bool {
        self.waiters
            .front()
            .is_some_and(|w| w.index == index && w.term == term && w.records.is_some())
    }

    pub(crate) fn push_response(&mut self, r: R) {
        self.responses.push(r);
    }
}

/// Linearizable reads: waiting for the leader's confirmation, then for this
/// node to serve up to the confirmed index.
#[derive(Default)]
pub(crate) struct Reads {
    next_ctx: u64,
    /// ctx -> (token, tick asked).
    pub(crate) waiting: BTreeMap<u64, (Token, u64)>,
    /// (read index, token), waiting for `served` to reach the index.
    confirmed: Vec<(Index, Token)>,
}

impl Reads {
    pub(crate) fn next_ctx(&mut self) -> u64 {
        self.next_ctx += 1;
        self.next_ctx
    }

    pub(crate) fn confirmed(&mut self, ctx: u64, index: Index) {
        if let Some((token, _)) = self.waiting.remove(&ctx) {
            self.confirmed.push((index, token));
        }
    }

    /// Tokens whose confirmation is older than `limit` ticks.
    pub(crate) fn expire(&mut self, now: u64, limit: u64) -> Vec<Token> {
        let old: Vec<u64> = self
            .waiting
            .iter()
            .filter(|(_, (_, since))| now.saturating_sub(*since) > limit)
            .map(|(ctx, _)| *ctx)
            .collect();
        old.into_iter()
            .filter_map(|ctx| self.waiting.remove(&ctx).map(|(t, _)| t))
            .collect()
    }

    /// Tokens of confirmed reads now served.
    pub(crate) fn ready(&mut self, served: Index) -> Vec<Token> {
        if self.confirmed.is_empty() {
            return Vec::new();
        }
        let mut ready = Vec::new();
        self.confirmed.retain(|(index, token)| {
            if *index <= served {
                ready.push(*token);
                false
            } else {
                true
            }
        });
        ready
    }

    pub(crate) fn take_all(&mut self) -> Vec<Token> {
        let mut t: Vec<Token> = std::mem::take(&mut self.waiting)
            .into_values()
            .map(|(t, _)| t)
            .collect();
        t.extend(self.confirmed.drain(..).map(|(_, t)| t));
        t
    }
}

impl<S: Storage, M: StateMachine> GroupCore<S, M> {
    /// Proposes records; answered with one response per record once they
    /// are applied. Records proposed before the next `poll` share an entry.
    /// `bytes` is the records' total length.
    pub fn propose(&mut self, token: Token, records: &[Bytes]) {
        if let Err(e) = self.refuse_proposal() {
            self.stats.refused += 1;
            self.out.done.push((token, Err(e)));
            return;
        }
        if records.is_empty() {
            self.out.done.push((
                token,
                Err(GroupError::Invalid(
                    "a proposal needs at least one record".into(),
                )),
            ));
            return;
        }
        let add: usize = records
            .iter()
            .map(|r| r.len() + keel_format::RECORD_PREFIX_LEN)
            .sum();
        let p = &mut self.proposals;
        if !p.builder.is_empty() && p.builder.encoded_len() + add > self.settings.max_entry_bytes {
            self.flush_proposals(self.now_ms);
        }
        let p = &mut self.proposals;
        let position = p.builder.record_count();
        for r in records {
            p.builder.push(r);
        }
        self.stats.proposed_records += records.len() as u64;
        p.pending.push(Pending {
            token,
            position,
            count: records.len() as u32,
        });
    }

    fn refuse_proposal(&self) -> Result<(), GroupError> {
        if let Some(f) = &self.failed {
            return Err(GroupError::StoreFailed(f.clone()));
        }
        if self.raft.role() != Role::Leader {
            return Err(GroupError::NotLeader {
                leader: self.raft.leader(),
            });
        }
        if let Some(d) = &self.writes.disk_full {
            return Err(GroupError::DiskFull(d.why.clone()));
        }
        Ok(())
    }

    /// Proposes the records gathered so far as one entry. `now_ms` stamps
    /// the entry (0: keep the last stamp).
    pub(crate) fn flush_proposals(&mut self, now_ms: u64) {
        if self.proposals.pending.is_empty() {
            return;
        }
        let records = std::mem::take(&mut self.proposals.builder);
        match self.raft.propose(records, now_ms) {
            Ok(p) => {
                self.stats.proposals += 1;
                let Proposals {
                    pending, waiters, ..
                } = &mut self.proposals;
                for w in pending.drain(..) {
                    waiters.push_back(Waiter {
                        index: p.index,
                        term: p.term,
                        token: w.token,
                        records: Some((w.position, w.count)),
                    });
                }
            }
            Err(e) => {
                let err = self.map_raft_error(e);
                let pending = std::mem::take(&mut self.proposals.pending);
                self.stats.refused += pending.len() as u64;
                for w in pending {
                    self.out.done.push((w.token, Err(err.clone())));
                }
            }
        }
    }

    /// Proposes a command entry (no offsets); answered `Answer::Done` once
    /// applied.
    pub(crate) fn propose_command(&mut self, token: Token, body: Bytes, now_ms: u64) {
        if let Err(e) = self.refuse_proposal() {
            self.out.done.push((token, Err(e)));
            return;
        }
        // Keep log order equal to request order.
        self.flush_proposals(now_ms);
        match self.raft.propose_command(&body, now_ms) {
            Ok(p) => self.proposals.waiters.push_back(Waiter {
                index: p.index,
                term: p.term,
                token,
                records: None,
            }),
            Err(e) => {
                let err = self.map_raft_error(e);
                self.out.done.push((token, Err(err)));
            }
        }
    }

    /// Answers the waiters the application of `e` decides (its responses,
    /// if any were collected, are in `proposals.responses`).
    pub(crate) fn settle_waiters(&mut self, e: &Entry) {
        let (index, term) = (e.index(), e.term());
        let mut responses = std::mem::take(&mut self.proposals.responses);
        while let Some(w) = self.proposals.waiters.front() {
            let doomed = w.term < term;
            if w.index > index && !doomed {
                break;
            }
            let w = self.proposals.waiters.pop_front().expect("front checked");
            if w.index == index && w.term == term {
                let answer = match w.records {
                    None => Answer::Done,
                    Some((pos, count)) => {
                        let _ = pos;
                        let count = count as usize;
                        if count > responses.len() {
                            // Only when the entry held fewer records than
                            // proposed: impossible for an entry this node
                            // sealed; answer rather than panic.
                            self.out.done.push((
                                w.token,
                                Err(GroupError::Invalid(format!(
                                    "entry {index} holds {} records, fewer than proposed",
                                    responses.len()
                                ))),
                            ));
                            continue;
                        }
                        Answer::Applied(responses.drain(..count).collect())
                    }
                };
                self.out.done.push((w.token, Ok(answer)));
            } else {
                self.out
                    .done
                    .push((w.token, Err(GroupError::LostLeadership)));
            }
        }
        responses.clear();
        self.proposals.responses = responses;
    }

    /// A snapshot was installed over `index`: proposals up to it have an
    /// outcome this node cannot know.
    pub(crate) fn waiters_covered_by_snapshot(&mut self, index: Index) {
        while self
            .proposals
            .waiters
            .front()
            .is_some_and(|w| w.index <= index)
        {
            let w = self.proposals.waiters.pop_front().expect("front checked");
            self.out.done.push((
                w.token,
                Err(GroupError::Ambiguous(
                    "a snapshot from the leader replaced this node's log before the proposal's outcome was known here; it may or may not have been applied"
                        .into(),
                )),
            ));
        }
    }

    /// Confirmed reads now served are ready.
    pub(crate) fn serve_reads(&mut self) {
        for token in self.reads.ready(self.served.index) {
            self.out.done.push((token, Ok(Answer::ReadReady)));
        }
    }
}
