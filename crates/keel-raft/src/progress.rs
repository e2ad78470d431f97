//! What a leader knows of each follower: how far it matches, where to send
//! next, and the window of appends in flight (bounded in messages and bytes).

use std::collections::VecDeque;

use crate::types::Index;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressState {
    /// Unknown match: one append at a time until one is accepted.
    Probe,
    /// Known match: appends are pipelined up to the in-flight window.
    Replicate,
    /// The follower needs a snapshot (entries it lacks were compacted).
    Snapshot,
}

/// Appends in flight to one follower: (last index carried, bytes).
#[derive(Debug, Clone, Default)]
pub(crate) struct Inflights {
    window: VecDeque<(Index, u64)>,
    bytes: u64,
}

impl Inflights {
    pub(crate) fn add(&mut self, last: Index, bytes: u64) {
        self.window.push_back((last, bytes));
        self.bytes += bytes;
    }
    /// Frees every append whose last index is at or below `index`.
    pub(crate) fn free_to(&mut self, index: Index) {
        while let Some(&(last, bytes)) = self.window.front() {
            if last > index {
                break;
            }
            self.window.pop_front();
            self.bytes -= bytes;
        }
    }
    pub(crate) fn free_first(&mut self) {
        if let Some((_, bytes)) = self.window.pop_front() {
            self.bytes -= bytes;
        }
    }
    pub(crate) fn full(&self, max_msgs: usize, max_bytes: u64) -> bool {
        self.window.len() >= max_msgs || self.bytes >= max_bytes
    }
    pub(crate) fn count(&self) -> usize {
        self.window.len()
    }
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }
    pub(crate) fn reset(&mut self) {
        self.window.clear();
        self.bytes = 0;
    }
}

#[derive(Debug, Clone)]
pub struct Progress {
    /// Highest index known to match the leader's log (for the leader itself:
    /// its persisted index).
    pub matched: Index,
    /// Next index to send.
    pub next: Index,
    pub state: ProgressState,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    /// Tick of the last message from this follower.
    pub(crate) last_heard: u64,
    pub(crate) probe_sent: bool,
    /// Send an append even with nothing new (to detect a lost one).
    pub(crate) empty_due: bool,
    pub(crate) inflights: Inflights,
    /// Highest commit index sent in an append.
    pub(crate) commit_sent: Index,
    /// Highest read round this follower acknowledged.
    pub(crate) read_seq_acked: u64,
    /// Tick since when a preferred node has been caught up and responsive.
    pub(crate) caught_up_since: Option<u64>,
    /// The snapshot being sent (Snapshot state).
    pub(crate) snapshot: Option<SnapshotSend>,
}

/// A snapshot transfer to one follower: one chunk in flight at a time.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotSend {
    pub(crate) meta: crate::snapshot::SnapshotMeta,
    /// Where the next chunk starts (what the follower has acknowledged).
    pub(crate) next: u64,
    /// The end offset of the chunk in flight: only a response saying
    /// exactly this advances the transfer at once.
    pub(crate) in_flight: Option<u64>,
    /// Another offset the follower asked for (a rewind, or a duplicate's
    /// stale answer); acted on at the next heartbeat, never at once, so
    /// duplicated responses cannot multiply chunks.
    pub(crate) hint: Option<u64>,
}

impl Progress {
    pub(crate) fn new(next: Index) -> Self {
        Progress {
            matched: 0,
            next,
            state: ProgressState::Probe,
            recent_active: false,
            last_heard: 0,
            probe_sent: false,
            empty_due: false,
            inflights: Inflights::default(),
            commit_sent: 0,
            read_seq_acked: 0,
            caught_up_since: None,
            snapshot: None,
        }
    }

    pub(crate) fn become_probe(&mut self) {
        self.snapshot = None;
        self.state = ProgressState::Probe;
        self.next = self.matched + 1;
        self.probe_sent = false;
        self.inflights.reset();
    }

    pub(crate) fn become_replicate(&mut self) {
        self.snapshot = None;
        self.state = ProgressState::Replicate;
        self.next = self.matched + 1;
        self.probe_sent = false;
        self.inflights.reset();
    }

    /// An acceptance up to `index` arrived. Returns whether it was news.
    pub(crate) fn maybe_update(&mut self, index: Index) -> bool {
        let updated = index > self.matched;
        if updated {
            self.matched = index;
            self.probe_sent = false;
        }
        self.next = self.next.max(index + 1);
        updated
    }

    /// A rejection of the append after `rejected` arrived, with the index the
    /// follower's hint points to. Returns false if the rejection is stale.
    pub(crate) fn maybe_decrease(&mut self, rejected: Index, hint_next: Index) -> bool {
        match self.state {
            ProgressState::Replicate => {
                if rejected <= self.matched {
                    return false;
                }
                self.become_probe();
                self.next = hint_next.clamp(self.matched + 1, rejected.max(self.matched + 1));
                true
            }
            _ => {
                if rejected.checked_add(1) != Some(self.next) {
                    return false;
                }
                let next = hint_next.clamp(self.matched + 1, rejected.max(self.matched + 1));
                if next == self.next {
                    // The follower refuses even what it acknowledged (it lost
                    // durable data): retrying at once would spin, and every
                    // duplicated rejection would fork another loop. Stay
                    // paused; the next heartbeat response re-probes.
                    return false;
                }
                self.next = next;
                self.probe_sent = false;
                true
            }
        }
    }

    pub(crate) fn is_paused(&self, max_msgs: usize, max_bytes: u64) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.full(max_msgs, max_bytes),
            ProgressState::Snapshot => true,
        }
    }

    /// Records an append carrying entries up to `last` (`bytes` of them).
    pub(crate) fn sent(&mut self, last: Index, bytes: u64, had_entries: bool) {
        match self.state {
            ProgressState::Replicate => {
                if had_entries {
                    self.next = last + 1;
                    self.inflights.add(last, bytes);
                }
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflight_window_counts_messages_and_bytes() {
        let mut w = Inflights::default();
        w.add(5, 100);
        w.add(9, 300);
        assert!(w.full(2, 10_000));
        assert!(!w.full(3, 10_000));
        assert!(w.full(3, 400));
        w.free_to(5);
        assert_eq!((w.count(), w.bytes()), (1, 300));
        w.free_first();
        assert_eq!((w.count(), w.bytes()), (0, 0));
    }

    #[test]
    fn stale_rejections_are_ignored() {
        let mut p = Progress::new(10);
        p.maybe_update(9);
        p.become_replicate();
        p.sent(15, 10, true);
        assert!(
            !p.maybe_decrease(8, 5),
            "rejection at or below match is stale"
        );
        assert!(p.maybe_decrease(12, 11));
        assert_eq!((p.state, p.next), (ProgressState::Probe, 11));
        assert!(
            !p.maybe_decrease(12, 11),
            "probe ignores rejections of other appends"
        );
        assert!(p.maybe_decrease(10, 3));
        assert_eq!(p.next, 10, "never below match + 1");
        p.probe_sent = true;
        assert!(
            !p.maybe_decrease(9, 3),
            "a rejection that cannot move next must not re-probe at once"
        );
        assert!(p.probe_sent);
    }
}
