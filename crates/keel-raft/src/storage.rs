//! The read side of the log the raft core runs on.
//!
//! The core never writes storage itself: it hands entries and hard state to
//! the driver in a [`Ready`](crate::Ready) and learns, through
//! [`Raft::on_persisted`](crate::Raft::on_persisted), when they are durable.
//! It reads entries it no longer holds in memory through this trait.
//!
//! To ensure correctness an implementation must:
//! - make every entry of a Ready readable before the driver reports that
//!   Ready persisted, and apply writes in the order the Readies were issued;
//! - treat a Ready whose first entry has index `i <= last_index()` as
//!   "truncate everything from `i`, then append";
//! - answer `term(first_index() - 1)` (the entry a snapshot replaced, or 0).

use bytes::Bytes;
use keel_format::EntryKind;

use crate::Entry;
use crate::error::StorageError;
use crate::snapshot::SnapshotMeta;
use crate::types::{Index, Term};

pub trait Storage {
    /// The latest snapshot: what a follower that needs compacted entries is
    /// sent. `None` when there is none (then the log must start at 1).
    fn snapshot(&self) -> Option<SnapshotMeta> {
        None
    }

    /// Up to `max_len` bytes of the data of the snapshot at `index`, from
    /// `offset`. `Err(SnapshotGone)` if that snapshot was replaced.
    fn snapshot_chunk(
        &self,
        index: Index,
        offset: u64,
        max_len: usize,
    ) -> Result<Bytes, StorageError> {
        let _ = (offset, max_len);
        Err(StorageError::SnapshotGone(index))
    }

    /// The last configuration entries of the log (at most two, in index
    /// order). The default scans backwards from the end; a store that
    /// indexes entry kinds should answer directly.
    fn last_config_entries(&self) -> Result<Vec<Entry>, StorageError> {
        let mut found = Vec::new();
        let first = self.first_index();
        let mut hi = self.last_index() + 1;
        while hi > first && found.len() < 2 {
            let lo = hi.saturating_sub(256).max(first);
            let chunk = self.entries(lo, hi, u64::MAX)?;
            for e in chunk.iter().rev() {
                if e.kind() == EntryKind::Config && found.len() < 2 {
                    found.push(e.clone());
                }
            }
            hi = lo;
        }
        found.reverse();
        Ok(found)
    }

    /// Index of the first entry held (entries before it are in a snapshot).
    fn first_index(&self) -> Index;
    /// Index of the last entry held (`first_index() - 1` when empty).
    fn last_index(&self) -> Index;
    /// Term of the entry at `index`, for `first_index() - 1 ..= last_index()`.
    fn term(&self, index: Index) -> Result<Term, StorageError>;
    /// Entries in `lo..hi`, stopping once `max_bytes` would be exceeded but
    /// always at least one when `lo < hi`.
    fn entries(&self, lo: Index, hi: Index, max_bytes: u64) -> Result<Vec<Entry>, StorageError>;
}

/// Entries (and a snapshot) kept in memory: for tests, the simulator and
/// benchmarks.
#[derive(Debug, Clone, Default)]
pub struct MemStorage {
    /// Index and term of the entry before `entries[0]`.
    base_index: Index,
    base_term: Term,
    entries: Vec<Entry>,
    snapshot: Option<(SnapshotMeta, Bytes)>,
}

impl MemStorage {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies a Ready's entries: truncate from the first one, then append.
    pub fn append(&mut self, entries: &[Entry]) {
        self.truncate_for(entries.first());
        self.entries.extend_from_slice(entries);
    }

    /// Like [`append`](Self::append), taking the entries (no clones).
    pub fn append_owned(&mut self, entries: Vec<Entry>) {
        self.truncate_for(entries.first());
        self.entries.extend(entries);
    }

    fn truncate_for(&mut self, first: Option<&Entry>) {
        let Some(first) = first else { return };
        let keep = first.index().saturating_sub(self.base_index + 1) as usize;
        self.entries.truncate(keep.min(self.entries.len()));
        debug_assert_eq!(
            self.base_index + self.entries.len() as u64 + 1,
            first.index()
        );
    }

    /// Drops entries up to and including `index` (they are in a snapshot).
    pub fn compact(&mut self, index: Index) -> Result<(), StorageError> {
        if index <= self.base_index {
            return Ok(());
        }
        let term = self.term(index)?;
        let drop = (index - self.base_index) as usize;
        self.entries.drain(..drop.min(self.entries.len()));
        self.base_index = index;
        self.base_term = term;
        Ok(())
    }

    /// Every entry held, in order.
    pub fn all(&self) -> &[Entry] {
        &self.entries
    }

    /// Keeps `data` as the latest snapshot (it must cover an index at or
    /// past the current one).
    pub fn set_snapshot(&mut self, meta: SnapshotMeta, data: Bytes) {
        debug_assert_eq!(meta.size, data.len() as u64);
        self.snapshot = Some((meta, data));
    }

    /// A snapshot was installed: the log becomes empty right after it.
    pub fn reset_to_snapshot(&mut self, meta: SnapshotMeta, data: Bytes) {
        self.entries.clear();
        self.base_index = meta.index;
        self.base_term = meta.term;
        self.set_snapshot(meta, data);
    }

    pub fn snapshot_data(&self) -> Option<&(SnapshotMeta, Bytes)> {
        self.snapshot.as_ref()
    }
}

impl Storage for MemStorage {
    fn snapshot(&self) -> Option<SnapshotMeta> {
        self.snapshot.as_ref().map(|(m, _)| m.clone())
    }
    fn snapshot_chunk(
        &self,
        index: Index,
        offset: u64,
        max_len: usize,
    ) -> Result<Bytes, StorageError> {
        match &self.snapshot {
            Some((m, data)) if m.index == index => {
                let start = (offset as usize).min(data.len());
                let end = start.saturating_add(max_len).min(data.len());
                Ok(data.slice(start..end))
            }
            _ => Err(StorageError::SnapshotGone(index)),
        }
    }
    fn first_index(&self) -> Index {
        self.base_index + 1
    }
    fn last_index(&self) -> Index {
        self.base_index + self.entries.len() as u64
    }
    fn term(&self, index: Index) -> Result<Term, StorageError> {
        if index == self.base_index {
            return Ok(self.base_term);
        }
        if index < self.base_index {
            return Err(StorageError::Compacted(index));
        }
        self.entries
            .get((index - self.base_index - 1) as usize)
            .map(|e| e.term())
            .ok_or(StorageError::Unavailable(index))
    }
    fn entries(&self, lo: Index, hi: Index, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        if lo <= self.base_index {
            return Err(StorageError::Compacted(lo));
        }
        if hi > self.last_index() + 1 {
            return Err(StorageError::Unavailable(hi - 1));
        }
        let start = (lo - self.base_index - 1) as usize;
        let end = (hi - self.base_index - 1) as usize;
        Ok(take_within(&self.entries[start..end], max_bytes))
    }
}

/// Clones a prefix of `entries` that fits in `max_bytes`, at least one entry.
pub(crate) fn take_within(entries: &[Entry], max_bytes: u64) -> Vec<Entry> {
    let mut total = 0u64;
    let mut n = 0;
    for e in entries {
        total += e.len() as u64;
        if n > 0 && total > max_bytes {
            break;
        }
        n += 1;
    }
    entries[..n].to_vec()
}
