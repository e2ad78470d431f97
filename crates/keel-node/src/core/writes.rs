//! Writes in flight, and what a full disk does.
//!
//! Every write handed to the driver is kept whole (hard state and entries)
//! until it is reported durable. When the driver reports one refused for
//! want of space (the store leaves nothing of it, nor of anything queued
//! behind it), that write and every later one move, in order, into a
//! `deferred` queue; new writes join the queue instead of going out; the
//! group goes on stepping and ticking, but nothing deferred is reported
//! persisted, so raft's persistence gate holds this node's acknowledgements
//! and votes and keeps the entries in memory. Proposals are refused with
//! `DiskFull`. Every `disk_full_retry_ticks` the queue is handed out again
//! in order (an append replaces the log from its first index, so replaying
//! the writes in order gives the log they would have given), except those
//! queued ahead of a snapshot install: the install was made durable when
//! it was handed out and replaced the log they append to, so they are
//! dropped (their latest hard state goes with the install's write). Once
//! space is freed the group resumes by itself.

use std::collections::VecDeque;

use keel_raft::{Raft, Storage};

use super::{GroupCore, Write, WriteOutcome};
use crate::state_machine::StateMachine;

pub(crate) struct DiskFull {
    pub(crate) why: String,
    retry_at: u64,
    /// The tick the disk was first found full (kept across retries).
    since: u64,
    /// Retries that found no space again since it was last logged.
    quiet_retries: u64,
}

/// A retry handed out; the first write reported durable ends the episode.
struct Retrying {
    since: u64,
    quiet_retries: u64,
}

/// Retries that fail silently between two "still full" warnings.
const RETRIES_PER_WARNING: u64 = 30;

#[derive(Default)]
pub(crate) struct Writes {
    /// Handed to the driver, not yet reported: persist-id order.
    in_flight: VecDeque<Write>,
    /// Waiting for disk space, persist-id order (only while `disk_full`).
    deferred: VecDeque<Write>,
    pub(crate) disk_full: Option<DiskFull>,
    /// The deferred writes were handed out again and none is back yet.
    retrying: Option<Retrying>,
    /// The highest write reported durable and not yet told to raft.
    done_upto: Option<u64>,
    /// Writes that install a snapshot, handed out or deferred, not yet
    /// reported durable (several can be: a count, not a flag, so the
    /// first one's completion does not release the mark for the next).
    pub(crate) installs_in_flight: usize,
}

impl Writes {
    /// A new write from a Ready: out to the driver, or deferred.
    pub(crate) fn push(&mut self, w: Write, out: &mut Vec<Write>) {
        if w.install.is_some() {
            self.installs_in_flight += 1;
        }
        if self.disk_full.is_some() {
            self.deferred.push_back(w);
        } else {
            self.in_flight.push_back(w.clone());
            out.push(w);
        }
    }

    /// The driver made a snapshot install durable (and reset the log to
    /// it) when it was handed out, before the waiting writes queued ahead
    /// of the install's write: their entries would now land on the reset
    /// log. Drops them, keeping the latest hard state among them for the
    /// install's write (raft learns they are durable with it: ids are
    /// reported cumulatively).
    fn drop_superseded(&mut self) {
        let Some(pos) = self.deferred.iter().rposition(|w| w.install.is_some()) else {
            return;
        };
        let mut hard_state = None;
        for w in self.deferred.drain(..pos) {
            hard_state = w.hard_state.or(hard_state);
            if w.install.is_some() {
                self.installs_in_flight -= 1;
            }
        }
        let install = &mut self.deferred[0];
        install.hard_state = install.hard_state.or(hard_state);
    }

    /// Tells raft about writes reported durable since the last call.
    pub(crate) fn report_persisted<S: Storage>(
        &mut self,
        raft: &mut Raft<S>,
        failed: &mut Option<String>,
    ) {
        if let Some(id) = self.done_upto.take()
            && failed.is_none()
            && let Err(e) = raft.on_persisted(id)
        {
            tracing::error!(group = raft.config().group, error = %e, "persistence notice refused");
        }
    }
}

impl<S: Storage, M: StateMachine> GroupCore<S, M> {
    /// Reports how the write `id` ended. Writes must be reported in the
    /// order they were handed out.
    pub fn write_done(&mut self, id: u64, outcome: WriteOutcome) {
        if self.failed.is_some() {
            return;
        }
        match outcome {
            WriteOutcome::Done => {
                let w = &mut self.writes;
                match w.in_flight.front() {
                    Some(f) if f.id == id => {
                        let f = w.in_flight.pop_front().expect("front checked");
                        if f.install.is_some() {
                            w.installs_in_flight -= 1;
                        }
                        w.done_upto = Some(id);
                        if let Some(r) = w.retrying.take() {
                            tracing::info!(
                                group = self.group,
                                waited_ticks = self.ticks - r.since,
                                "disk space is available again: the writes that waited are durable"
                            );
                        }
                    }
                    // A write the driver forgot after a refusal for space,
                    // completed anyway: it is deferred and comes again.
                    _ if w.deferred.iter().any(|d| d.id == id) => {}
                    _ => self.fail(format!(
                        "the driver reported write {id} done out of order (expected {:?})",
                        self.writes.in_flight.front().map(|f| f.id)
                    )),
                }
            }
            WriteOutcome::NoSpace(why) => {
                let w = &mut self.writes;
                if !w.in_flight.iter().any(|f| f.id == id) {
                    return; // already deferred with an earlier refusal
                }
                let mut taken: VecDeque<Write> = w.in_flight.drain(..).collect();
                taken.append(&mut w.deferred);
                w.deferred = taken;
                self.enter_disk_full(why);
            }
            WriteOutcome::Failed(why) => self.fail(why),
        }
    }

    fn enter_disk_full(&mut self, why: String) {
        let retry_at = self.ticks + self.settings.disk_full_retry_ticks;
        match &mut self.writes.disk_full {
            Some(d) => {
                d.why = why;
                d.retry_at = retry_at;
            }
            None => {
                let writes = self.writes.deferred.len();
                let (since, quiet_retries) = match self.writes.retrying.take() {
                    Some(r) if r.quiet_retries + 1 >= RETRIES_PER_WARNING => {
                        tracing::warn!(group = self.group, error = %why, writes, waited_ticks = self.ticks - r.since, "the disk is still full; this node's writes wait for space");
                        (r.since, 0)
                    }
                    Some(r) => (r.since, r.quiet_retries + 1),
                    None => {
                        tracing::warn!(group = self.group, error = %why, writes, "the disk is full: this node's writes wait (nothing lost, nothing acknowledged meanwhile) and proposals are refused; free space and it resumes by itself");
                        (self.ticks, 0)
                    }
                };
                self.writes.disk_full = Some(DiskFull {
                    why,
                    retry_at,
                    since,
                    quiet_retries,
                });
            }
        }
    }

    /// Every tick: hand the deferred writes out again when it is time.
    pub(crate) fn writes_tick(&mut self) {
        let Some(d) = &self.writes.disk_full else {
            return;
        };
        if self.ticks < d.retry_at {
            return;
        }
        let w = &mut self.writes;
        w.drop_superseded();
        let writes: Vec<Write> = w.deferred.drain(..).collect();
        if let Some(d) = w.disk_full.take() {
            w.retrying = Some(Retrying {
                since: d.since,
                quiet_retries: d.quiet_retries,
            });
        }
        for wr in writes {
            w.in_flight.push_back(wr.clone());
            self.out.writes.push(wr);
        }
        tracing::debug!(
            group = self.group,
            "trying the writes that waited for disk space again"
        );
    }
}

impl<S: Storage, M: StateMachine> GroupCore<S, M> {
    /// The driver could not carry out a write the core asked for (staging
    /// or installing a snapshot): the group stops.
    pub fn write_failed(&mut self, why: String) {
        self.fail(why);
    }
}
