//! The raft log as the core sees it: the durable part read through
//! [`Storage`], and a window of recent entries kept in memory: every entry
//! not yet reported durable, and the durable ones not yet applied (while
//! the window holds at most [`RETAIN_BYTES`]), so that committed entries are
//! handed out for applying by moving them out of the window rather than by
//! reading storage back.
//!
//! Invariants (checked in debug builds, relied on everywhere):
//! - `mem` holds exactly the entries `mem_first ..= last_index()`, with
//!   `applied < mem_first <= persisted + 1`: everything unpersisted is in
//!   memory, nothing applied is; everything at or below `persisted` is
//!   readable from storage (the window's copies of those are the same
//!   entries).
//! - `mem_bytes` is the byte size of the window's entries.
//! - `handed_out <= last_index()`: entries above it have not yet been given
//!   to the driver to persist.
//! - `applied <= committed`, and `applied <= persisted` (a node applies only
//!   what it holds durably).
//! - terms never decrease along the log, so searches by term are binary.

use std::collections::VecDeque;

use crate::Entry;
use crate::error::StorageError;
use crate::storage::Storage;
use crate::types::{Index, Term};

/// Past this many bytes in the window, its oldest durable entries are left
/// to storage (applying reads them back). Small in unit tests, so that
/// they take both paths.
const RETAIN_BYTES: u64 = if cfg!(test) { 1 << 10 } else { 64 << 20 };

pub(crate) struct RaftLog<S> {
    pub(crate) storage: S,
    /// The entries `mem_first ..= last_index()`.
    mem: VecDeque<Entry>,
    mem_first: Index,
    /// Bytes of the entries of `mem`.
    mem_bytes: u64,
    persisted: Index,
    handed_out: Index,
    /// (persist id, last index after that write), oldest first.
    pending: VecDeque<(u64, Index)>,
    pub(crate) committed: Index,
    pub(crate) applied: Index,
    /// The user offset the next data record will take.
    next_offset: u64,
    last_term: Term,
    /// The entry the log starts after (a snapshot's index and term), known
    /// here even before the driver has reset its storage to it.
    snapshot_point: (Index, Term),
}

impl<S: Storage> RaftLog<S> {
    /// Opens the log over what storage holds. Everything in storage is taken
    /// as durable: the driver restores from what survived.
    pub(crate) fn new(storage: S, applied: Index) -> Result<Self, StorageError> {
        let last = storage.last_index();
        let first = storage.first_index();
        let last_term = storage.term(last)?;
        let next_offset = if last >= first {
            storage
                .entries(last, last + 1, u64::MAX)?
                .first()
                .map(|e| e.end_offset())
                .unwrap_or(0)
        } else {
            storage.snapshot().map(|s| s.next_offset).unwrap_or(0)
        };
        let snapshot_index = first - 1;
        let committed = applied.max(snapshot_index).min(last);
        let snapshot_point = (snapshot_index, storage.term(snapshot_index)?);
        Ok(RaftLog {
            storage,
            mem: VecDeque::new(),
            mem_first: last + 1,
            mem_bytes: 0,
            persisted: last,
            handed_out: last,
            pending: VecDeque::new(),
            committed,
            applied: committed,
            next_offset,
            last_term,
            snapshot_point,
        })
    }

    /// A snapshot was installed: the log is now empty right after it. Writes
    /// still in flight vouch for nothing any more.
    pub(crate) fn reset_to_snapshot(&mut self, index: Index, term: Term, next_offset: u64) {
        self.mem.clear();
        self.mem_first = index + 1;
        self.mem_bytes = 0;
        self.pending.clear();
        self.persisted = index;
        self.handed_out = index;
        self.committed = index;
        self.applied = index;
        self.last_term = term;
        self.next_offset = next_offset;
        self.snapshot_point = (index, term);
    }

    pub(crate) fn first_index(&self) -> Index {
        self.storage.first_index().max(self.snapshot_point.0 + 1)
    }

    pub(crate) fn last_index(&self) -> Index {
        self.mem_first + self.mem.len() as Index - 1
    }

    pub(crate) fn last_term(&self) -> Term {
        self.last_term
    }

    pub(crate) fn persisted(&self) -> Index {
        self.persisted
    }

    pub(crate) fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// Whether a persistence notification is outstanding or entries await
    /// being handed out.
    pub(crate) fn has_unhanded(&self) -> bool {
        self.handed_out < self.last_index()
    }

    pub(crate) fn last_pending_id(&self) -> Option<u64> {
        self.pending.back().map(|p| p.0)
    }

    pub(crate) fn term(&self, index: Index) -> Result<Term, StorageError> {
        if index >= self.mem_first {
            return match self.mem.get((index - self.mem_first) as usize) {
                Some(e) => Ok(e.term()),
                None => Err(StorageError::Unavailable(index)),
            };
        }
        if index == 0 {
            return Ok(0);
        }
        if index == self.snapshot_point.0 {
            return Ok(self.snapshot_point.1);
        }
        self.storage.term(index)
    }

    pub(crate) fn match_term(&self, index: Index, term: Term) -> bool {
        self.term(index).map(|t| t == term).unwrap_or(false)
    }

    /// Raft §5.4.1: a candidate's log is at least as up to date as ours.
    pub(crate) fn is_up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        last_term > self.last_term
            || (last_term == self.last_term && last_index >= self.last_index())
    }

    /// Entries `lo..hi`, at most `max_bytes` (at least one).
    pub(crate) fn slice(
        &self,
        lo: Index,
        hi: Index,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        if lo >= hi {
            return Ok(Vec::new());
        }
        if hi > self.last_index() + 1 {
            return Err(StorageError::Unavailable(hi - 1));
        }
        let mut out = Vec::new();
        let mut used = 0u64;
        if lo < self.mem_first {
            let stable_hi = hi.min(self.mem_first);
            out = self.storage.entries(lo, stable_hi, max_bytes)?;
            if (out.len() as u64) < stable_hi - lo {
                return Ok(out); // the byte budget ran out in storage
            }
            used = out.iter().map(|e| e.len() as u64).sum();
            if hi <= self.mem_first {
                return Ok(out);
            }
        }
        let from = (lo.max(self.mem_first) - self.mem_first) as usize;
        let to = (hi - self.mem_first) as usize;
        out.reserve(to - from);
        for e in self.mem.range(from..to) {
            if !out.is_empty() && used + e.len() as u64 > max_bytes {
                break;
            }
            used += e.len() as u64;
            out.push(e.clone());
        }
        Ok(out)
    }

    /// Appends an entry the leader just created.
    pub(crate) fn append_new(&mut self, entry: Entry) {
        debug_assert_eq!(entry.index(), self.last_index() + 1);
        self.last_term = entry.term();
        self.next_offset = entry.end_offset();
        self.mem_bytes += entry.len() as u64;
        self.mem.push_back(entry);
    }

    /// Follower side of AppendEntries once `prev` matched: skips entries we
    /// already hold, truncates at the first conflict and appends the rest.
    /// Returns the first index that was (re)written, if any.
    ///
    /// Refuses (changing nothing) entries whose user offsets do not continue
    /// the log where they attach: a leader's entries always do (offsets
    /// follow from the log), so such a message is forged or corrupt, and
    /// storing it would fail the store.
    pub(crate) fn append_from_leader(
        &mut self,
        mut entries: Vec<Entry>,
    ) -> Result<Option<Index>, String> {
        let Some(pos) = entries
            .iter()
            .position(|e| !self.match_term(e.index(), e.term()))
        else {
            return Ok(None);
        };
        let first = entries[pos].index();
        if let Some(expect) = self.end_offset_at(first - 1)
            && entries[pos].base_offset() != expect
        {
            return Err(format!(
                "entry {first} starts at offset {} where this log continues at offset {expect}",
                entries[pos].base_offset()
            ));
        }
        self.truncate_from(first);
        debug_assert_eq!(first, self.last_index() + 1);
        // Contiguous and in term order (`check_incoming`): append in bulk.
        let last = entries.last().expect("pos is within entries");
        self.last_term = last.term();
        self.next_offset = last.end_offset();
        self.mem_bytes += entries[pos..].iter().map(|e| e.len() as u64).sum::<u64>();
        self.mem.extend(entries.drain(pos..));
        Ok(Some(first))
    }

    /// The user offset after entry `index`, when it can be told cheaply and
    /// surely (the last entry, the snapshot point, an entry in the log);
    /// `None` otherwise.
    fn end_offset_at(&self, index: Index) -> Option<u64> {
        if index == self.last_index() {
            return Some(self.next_offset);
        }
        if index == 0 {
            return Some(0);
        }
        if index < self.first_index() {
            return match self.storage.snapshot() {
                Some(s) if s.index == index => Some(s.next_offset),
                _ => None,
            };
        }
        self.slice(index, index + 1, u64::MAX)
            .ok()?
            .first()
            .map(|e| e.end_offset())
    }

    /// Drops every entry at or after `index` (never committed ones).
    fn truncate_from(&mut self, index: Index) {
        debug_assert!(index > self.committed, "truncating committed entry {index}");
        // Writes still in flight made entries from `index` on durable, but
        // they are no longer ours: their completion may vouch only for the
        // prefix before the cut.
        for p in self.pending.iter_mut() {
            p.1 = p.1.min(index - 1);
        }
        self.persisted = self.persisted.min(index - 1);
        let keep = index.saturating_sub(self.mem_first) as usize;
        self.mem_bytes -= self
            .mem
            .range(keep.min(self.mem.len())..)
            .map(|e| e.len() as u64)
            .sum::<u64>();
        if index <= self.mem_first {
            self.mem.clear();
            self.mem_first = index;
        } else {
            self.mem.truncate(keep);
        }
        self.handed_out = self.handed_out.min(index - 1);
        // The caller appends at least one entry right away, which resets
        // `last_term` and `next_offset`; keep them right meanwhile anyway.
        self.last_term = self.term(index - 1).unwrap_or(0);
    }

    /// Entries not yet handed to the driver, marking them handed out.
    pub(crate) fn take_unhanded(&mut self) -> Vec<Entry> {
        let last = self.last_index();
        if self.handed_out >= last {
            return Vec::new();
        }
        let from = (self.handed_out + 1 - self.mem_first) as usize;
        let out: Vec<Entry> = self.mem.range(from..).cloned().collect();
        self.handed_out = last;
        out
    }

    /// Remembers that persist id `id` covers the log as it is now.
    pub(crate) fn record_persist(&mut self, id: u64) {
        self.pending.push_back((id, self.last_index()));
    }

    /// Storage reports every write up to persist id `id` durable. Returns the
    /// new persisted index.
    pub(crate) fn on_persisted(&mut self, id: u64) -> Index {
        let mut upto = None;
        while let Some(&(pid, last)) = self.pending.front() {
            if pid > id {
                break;
            }
            self.pending.pop_front();
            upto = Some(last);
        }
        if let Some(last) = upto {
            debug_assert!(last >= self.persisted, "persisted index moved back");
            if last > self.persisted {
                self.persisted = last;
                // Past the budget, the oldest durable entries are left to
                // storage (applying reads them back).
                while self.mem_bytes > RETAIN_BYTES && self.mem_first <= self.persisted {
                    let e = self.mem.pop_front().expect("durable entries are in mem");
                    self.mem_bytes -= e.len() as u64;
                    self.mem_first += 1;
                }
            }
        }
        self.persisted
    }

    pub(crate) fn commit_to(&mut self, index: Index) -> bool {
        let index = index.min(self.last_index());
        if index > self.committed {
            self.committed = index;
            true
        } else {
            false
        }
    }

    /// Committed entries that are durable here and not yet handed out for
    /// applying, at most `max_bytes` (at least one); marks them applied.
    pub(crate) fn take_committed(&mut self, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        let hi = self.committed.min(self.persisted);
        if self.applied >= hi {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let mut used = 0u64;
        if self.applied + 1 < self.mem_first {
            // Left to storage (after a restart, or past the window's budget).
            let stable_hi = (hi + 1).min(self.mem_first);
            out = self.slice(self.applied + 1, stable_hi, max_bytes)?;
            self.applied += out.len() as Index;
            if self.applied + 1 < stable_hi {
                return Ok(out); // the byte budget ran out
            }
            if self.applied >= hi {
                return Ok(out);
            }
            used = out.iter().map(|e| e.len() as u64).sum();
        }
        // The rest leaves the window: moved, not copied.
        debug_assert_eq!(self.applied + 1, self.mem_first);
        let avail = (hi - self.applied) as usize;
        debug_assert!(avail <= self.mem.len(), "durable entries are in mem");
        let (mut n, from_storage) = (0, out.len());
        let mut moved = 0u64;
        for e in self.mem.range(..avail) {
            let len = e.len() as u64;
            if n + from_storage > 0 && used + moved + len > max_bytes {
                break;
            }
            moved += len;
            n += 1;
        }
        self.mem_bytes -= moved;
        self.mem_first += n as Index;
        self.applied += n as Index;
        if out.is_empty() {
            out = self.mem.drain(..n).collect();
        } else {
            out.extend(self.mem.drain(..n));
        }
        Ok(out)
    }

    pub(crate) fn has_committed_to_apply(&self) -> bool {
        self.applied < self.committed.min(self.persisted)
    }

    /// First index `>= lo` whose term is at least `term` (terms never
    /// decrease along the log), searching `lo..=hi`.
    pub(crate) fn first_with_term_at_least(&self, term: Term, lo: Index, hi: Index) -> Index {
        let (mut lo, mut hi) = (lo, hi);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.term(mid) {
                Ok(t) if t >= term => hi = mid,
                Ok(_) => lo = mid + 1,
                Err(_) => lo = mid + 1,
            }
        }
        lo
    }

    /// Last index in `lo..=hi` whose term is at most `term`, if any.
    pub(crate) fn last_with_term_at_most(&self, term: Term, lo: Index, hi: Index) -> Option<Index> {
        let first_above = self.first_with_term_at_least(term + 1, lo, hi + 1);
        if first_above > lo {
            Some(first_above - 1)
        } else {
            None
        }
    }

    /// Validates entries a leader sent: contiguous after `prev_index`, terms
    /// not decreasing and not above the message's term.
    pub(crate) fn check_incoming(
        prev_index: Index,
        prev_term: Term,
        msg_term: Term,
        entries: &[Entry],
    ) -> Result<(), String> {
        let mut term = prev_term;
        let mut offset: Option<u64> = None;
        for (i, e) in entries.iter().enumerate() {
            let expect = prev_index
                .checked_add(i as u64 + 1)
                .ok_or_else(|| "entry indexes overflow".to_string())?;
            if e.index() != expect {
                return Err(format!(
                    "entry index {} where {} was expected",
                    e.index(),
                    expect
                ));
            }
            if e.term() < term || e.term() > msg_term {
                return Err(format!(
                    "entry {} has term {} out of order",
                    e.index(),
                    e.term()
                ));
            }
            if let Some(o) = offset
                && e.base_offset() != o
            {
                return Err(format!(
                    "entry {} starts at offset {} where {} was expected",
                    e.index(),
                    e.base_offset(),
                    o
                ));
            }
            offset = Some(e.end_offset());
            term = e.term();
        }
        Ok(())
    }

    #[cfg(debug_assertions)]
    pub(crate) fn check_invariants(&self) {
        debug_assert!(self.handed_out <= self.last_index());
        debug_assert!(self.applied <= self.committed);
        debug_assert!(self.applied <= self.persisted);
        debug_assert!(self.committed <= self.last_index());
        debug_assert!(self.applied < self.mem_first);
        debug_assert!(self.mem_first <= self.persisted + 1);
        if let Some(e) = self.mem.front() {
            debug_assert_eq!(e.index(), self.mem_first);
        }
        debug_assert_eq!(
            self.mem_bytes,
            self.mem.iter().map(|e| e.len() as u64).sum::<u64>()
        );
    }
}

#[cfg(test)]
mod window_tests {
    use super::*;
    use crate::storage::MemStorage;
    use keel_format::{BatchBuilder, EntryKind};

    fn entry(index: Index) -> Entry {
        BatchBuilder::single(&index.to_le_bytes()).seal(EntryKind::Data, 1, index, index - 1, 0)
    }

    fn check(log: &RaftLog<MemStorage>) {
        #[cfg(debug_assertions)]
        log.check_invariants();
        let _ = log;
    }

    /// Entries applied come out in order whether the window still holds
    /// them or left them to storage past its budget.
    #[test]
    fn committed_entries_come_from_the_window_or_storage() {
        let mut log = RaftLog::new(MemStorage::new(), 0).unwrap();
        for i in 1..=100 {
            log.append_new(entry(i));
        }
        let handed = log.take_unhanded();
        assert_eq!(handed.len(), 100);
        log.record_persist(1);
        log.storage.append_owned(handed);
        assert_eq!(log.on_persisted(1), 100);
        assert!(
            log.mem_first > 1,
            "past the budget, old entries leave the window"
        );
        assert!(log.mem_bytes <= RETAIN_BYTES);
        check(&log);
        log.commit_to(100);
        let mut got = Vec::new();
        while log.has_committed_to_apply() {
            let batch = log.take_committed(300).unwrap();
            assert!(!batch.is_empty());
            got.extend(batch);
            check(&log);
        }
        let indexes: Vec<Index> = got.iter().map(|e| e.index()).collect();
        assert_eq!(indexes, (1..=100).collect::<Vec<_>>());
        assert_eq!(got, log.storage.all());
        assert!(log.mem.is_empty());
        assert_eq!(log.mem_bytes, 0);
    }
}
