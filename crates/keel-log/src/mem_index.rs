//! The in-memory index of the whole log: for every entry its segment, byte
//! position and user offset (8 bytes per entry), and the terms as runs, so
//! that `term(i)`, lookups by index and by offset never touch the disk.
//!
//! It is the *logical* log: it changes when an operation is submitted, in
//! submission order, before the group commit has performed it. Because
//! rounds perform operations in the same order, the index after operation
//! `n` is exactly what the disk holds once `n` is done.

use std::collections::VecDeque;
use std::sync::Arc;

use keel_format::Batch;

use crate::fs::FsFile;
use crate::meta::Floor;
use crate::seg_index::SegFacts;

/// One segment as the index knows it.
#[derive(Debug)]
pub(crate) struct SegMeta {
    /// Unique per segment incarnation (a name can be reused after a
    /// truncation); the writer publishes file handles by it.
    pub sid: u64,
    pub first_index: u64,
    pub base_offset: u64,
    pub pos: Vec<u32>,
    pub off: Vec<u32>,
    pub end_pos: u64,
    pub end_offset: u64,
    /// Set once the writer has created the file.
    pub file: Option<Arc<dyn FsFile>>,
}

impl SegMeta {
    pub fn empty(sid: u64, first_index: u64, base_offset: u64) -> Self {
        SegMeta {
            sid,
            first_index,
            base_offset,
            pos: Vec::new(),
            off: Vec::new(),
            end_pos: 0,
            end_offset: base_offset,
            file: None,
        }
    }

    pub fn len(&self) -> usize {
        self.pos.len()
    }

    /// Index after the last entry.
    pub fn end_index(&self) -> u64 {
        self.first_index + self.pos.len() as u64
    }

    /// Byte range of entry `k`.
    pub fn span(&self, k: usize) -> (u64, u64) {
        let start = self.pos[k] as u64;
        let end = self.pos.get(k + 1).map_or(self.end_pos, |&p| p as u64);
        (start, end)
    }

    /// User offsets `[base, end)` of entry `k`.
    pub fn offsets(&self, k: usize) -> (u64, u64) {
        let base = self.base_offset + self.off[k] as u64;
        let end = self
            .off
            .get(k + 1)
            .map_or(self.end_offset, |&o| self.base_offset + o as u64);
        (base, end)
    }
}

/// What the writer must do to the files for a truncation.
#[derive(Debug, Clone)]
pub(crate) struct TruncatePlan {
    /// Segments to delete, highest first.
    pub remove: Vec<u64>,
    /// The segment that becomes (or stays) active, and its new length.
    pub cut_first: u64,
    pub cut_sid: u64,
    pub cut_pos: u64,
    /// The cut segment was sealed: its index file goes first.
    pub cut_was_sealed: bool,
}

/// What the writer must do to seal the active segment and start another.
#[derive(Debug)]
pub(crate) struct RollPlan {
    /// Position in the append's entries where the new segment starts.
    pub at: usize,
    pub sealed: SegFacts,
    pub new_first: u64,
    pub new_sid: u64,
}

#[derive(Debug)]
pub(crate) struct LogIndex {
    pub floor: Floor,
    /// Never empty; the back is the active segment.
    pub segs: VecDeque<SegMeta>,
    /// `(first index, term)` at each term change, over the entries.
    pub terms: Vec<(u64, u64)>,
    pub last_index: u64,
}

impl LogIndex {
    pub fn first_index(&self) -> u64 {
        self.floor.index + 1
    }

    pub fn active(&self) -> &SegMeta {
        self.segs
            .back()
            .expect("the index always has an active segment")
    }

    fn active_mut(&mut self) -> &mut SegMeta {
        self.segs
            .back_mut()
            .expect("the index always has an active segment")
    }

    pub fn next_offset(&self) -> u64 {
        self.active().end_offset
    }

    pub fn first_offset(&self) -> u64 {
        self.segs
            .front()
            .map_or(self.floor.offset, |s| s.base_offset)
    }

    pub fn term(&self, index: u64) -> Option<u64> {
        if index == self.floor.index {
            return Some(self.floor.term);
        }
        if index < self.floor.index || index > self.last_index {
            return None;
        }
        let k = self.terms.partition_point(|&(i, _)| i <= index);
        k.checked_sub(1).map(|k| self.terms[k].1)
    }

    pub fn last_term(&self) -> u64 {
        self.term(self.last_index).unwrap_or(0)
    }

    /// Segment and entry position of `index` (which must be in the log).
    pub fn locate(&self, index: u64) -> Option<(usize, usize)> {
        if index <= self.floor.index || index > self.last_index {
            return None;
        }
        let s = self
            .segs
            .partition_point(|s| s.first_index <= index)
            .checked_sub(1)?;
        let k = (index - self.segs[s].first_index) as usize;
        (k < self.segs[s].len()).then_some((s, k))
    }

    /// Offset after entry `index` (the floor's offset for the floor).
    pub fn end_offset_of(&self, index: u64) -> Option<u64> {
        if index == self.floor.index {
            return Some(self.floor.offset);
        }
        let (s, k) = self.locate(index)?;
        Some(self.segs[s].offsets(k).1)
    }

    /// Raft index of the entry holding user offset `offset`.
    pub fn index_of_offset(&self, offset: u64) -> Option<u64> {
        let s = self
            .segs
            .partition_point(|s| s.base_offset <= offset)
            .checked_sub(1)?;
        let seg = &self.segs[s];
        if offset >= seg.end_offset || seg.len() == 0 {
            return None;
        }
        let delta = offset - seg.base_offset;
        let k = seg
            .off
            .partition_point(|&o| o as u64 <= delta)
            .checked_sub(1)?;
        let (base, end) = seg.offsets(k);
        (base <= offset && offset < end).then(|| seg.first_index + k as u64)
    }

    /// Adds one entry at the end, rolling to a new segment first if the
    /// active one would grow past `segment_bytes`. Returns the sealed facts
    /// when it rolled.
    pub fn push(
        &mut self,
        b: &Batch,
        segment_bytes: u64,
        new_sid: &mut u64,
    ) -> Option<(SegFacts, u64, u64)> {
        let len = b.len() as u64;
        let mut rolled = None;
        let active = self.active();
        if active.len() > 0 && active.end_pos + len > segment_bytes {
            let facts = self.facts_of(self.segs.len() - 1);
            let sid = *new_sid;
            *new_sid += 1;
            let base = self.active().end_offset;
            self.segs.push_back(SegMeta::empty(sid, b.index(), base));
            rolled = Some((facts, b.index(), sid));
        }
        let a = self.active_mut();
        a.pos.push(a.end_pos as u32);
        a.off.push((b.base_offset() - a.base_offset) as u32);
        a.end_pos += len;
        a.end_offset = b.end_offset();
        if self.terms.last().is_none_or(|&(_, t)| t != b.term()) {
            self.terms.push((b.index(), b.term()));
        }
        self.last_index = b.index();
        rolled
    }

    /// The facts of segment `s` for its index file.
    pub fn facts_of(&self, s: usize) -> SegFacts {
        let seg = &self.segs[s];
        let end = seg.end_index();
        let lo = self
            .terms
            .partition_point(|&(i, _)| i <= seg.first_index)
            .saturating_sub(1);
        let hi = self.terms.partition_point(|&(i, _)| i < end);
        let mut terms: Vec<(u64, u64)> = self.terms[lo..hi.max(lo)].to_vec();
        if let Some(first) = terms.first_mut() {
            first.0 = seg.first_index;
        }
        SegFacts {
            first_index: seg.first_index,
            data_len: seg.end_pos,
            base_offset: seg.base_offset,
            end_offset: seg.end_offset,
            terms,
            pos: seg.pos.clone(),
            off: seg.off.clone(),
        }
    }

    /// Removes entries `from..`; `from` must be in `first_index..=last_index`.
    pub fn truncate(&mut self, from: u64) -> TruncatePlan {
        debug_assert!(from > self.floor.index && from <= self.last_index);
        let s = self
            .segs
            .partition_point(|s| s.first_index <= from)
            .saturating_sub(1);
        let old_active = self.segs.len() - 1;
        let remove: Vec<u64> = self
            .segs
            .drain(s + 1..)
            .rev()
            .map(|x| x.first_index)
            .collect();
        let seg = &mut self.segs[s];
        let k = (from - seg.first_index) as usize;
        let (cut_pos, _) = seg.span(k);
        let (cut_offset, _) = seg.offsets(k);
        seg.pos.truncate(k);
        seg.off.truncate(k);
        seg.end_pos = cut_pos;
        seg.end_offset = cut_offset;
        while self.terms.last().is_some_and(|&(i, _)| i >= from) {
            self.terms.pop();
        }
        self.last_index = from - 1;
        TruncatePlan {
            remove,
            cut_first: seg.first_index,
            cut_sid: seg.sid,
            cut_pos,
            cut_was_sealed: s != old_active,
        }
    }

    /// Drops whole segments whose entries are all `<= up_to` (never the
    /// active one). Returns the removed segments' first indexes, lowest
    /// first, and moves the floor to just before the first kept entry.
    pub fn purge(&mut self, up_to: u64) -> Vec<u64> {
        let mut removed = Vec::new();
        while self.segs.len() > 1 && self.segs[1].first_index - 1 <= up_to {
            let seg = self.segs.pop_front().expect("len > 1");
            removed.push(seg.first_index);
        }
        if let Some(front) = self.segs.front()
            && !removed.is_empty()
        {
            let index = front.first_index - 1;
            let term = self.term(index).unwrap_or(0);
            self.floor = Floor {
                index,
                term,
                offset: front.base_offset,
            };
            let keep_from = self.terms.partition_point(|&(i, _)| i <= front.first_index);
            self.terms.drain(..keep_from.saturating_sub(1));
        }
        removed
    }

    /// Empties the log and puts its start after `floor`.
    pub fn reset(&mut self, floor: Floor, sid: u64) -> Vec<u64> {
        let removed: Vec<u64> = self.segs.drain(..).rev().map(|s| s.first_index).collect();
        self.floor = floor;
        self.terms.clear();
        self.last_index = floor.index;
        self.segs
            .push_back(SegMeta::empty(sid, floor.index + 1, floor.offset));
        removed
    }

    /// Sets the file handle of the segment incarnation `sid`, if it is still
    /// in the log.
    pub fn publish_file(&mut self, sid: u64, file: &Arc<dyn FsFile>) {
        if let Some(s) = self.segs.iter_mut().rev().find(|s| s.sid == sid) {
            s.file = Some(file.clone());
        }
    }

    pub fn entries(&self) -> u64 {
        self.last_index - self.floor.index
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_format::{BatchBuilder, EntryKind};

    fn batch(index: u64, term: u64, base: u64, records: usize) -> Batch {
        let mut b = BatchBuilder::new();
        for _ in 0..records {
            b.push(&[7u8; 20]);
        }
        if records == 0 {
            Batch::control(EntryKind::Noop, b"", term, index, base, 0)
        } else {
            b.seal(EntryKind::Data, term, index, base, 0)
        }
    }

    fn index() -> LogIndex {
        let mut segs = VecDeque::new();
        segs.push_back(SegMeta::empty(0, 1, 0));
        LogIndex {
            floor: Floor::default(),
            segs,
            terms: Vec::new(),
            last_index: 0,
        }
    }

    #[test]
    fn push_rolls_and_lookups_work() {
        let mut ix = index();
        let mut sid = 1;
        let mut off = 0;
        let mut rolls = 0;
        for i in 1..=20u64 {
            let recs = (i % 3) as usize;
            let b = batch(i, 1 + i / 7, off, recs);
            off += recs as u64;
            if ix.push(&b, 200, &mut sid).is_some() {
                rolls += 1;
            }
        }
        assert!(rolls > 3);
        assert_eq!(ix.last_index, 20);
        assert_eq!(ix.term(6), Some(1));
        assert_eq!(ix.term(7), Some(2));
        assert_eq!(ix.term(20), Some(3));
        assert_eq!(ix.term(21), None);
        assert_eq!(ix.term(0), Some(0));
        assert_eq!(ix.next_offset(), off);
        // offset 0 is in entry 1 (1 record), 1..3 in entry 2.
        assert_eq!(ix.index_of_offset(0), Some(1));
        assert_eq!(ix.index_of_offset(1), Some(2));
        assert_eq!(ix.index_of_offset(2), Some(2));
        assert_eq!(ix.index_of_offset(3), Some(4));
        assert_eq!(ix.index_of_offset(off), None);
        for i in 1..=20 {
            let (s, k) = ix.locate(i).unwrap();
            assert_eq!(ix.segs[s].first_index + k as u64, i);
        }
        let plan = ix.truncate(9);
        assert_eq!(ix.last_index, 8);
        assert!(!plan.remove.is_empty());
        assert!(plan.remove.windows(2).all(|w| w[0] > w[1]));
        assert_eq!(ix.term(8), Some(2));
        assert_eq!(ix.term(9), None);
        let removed = ix.purge(5);
        assert!(!removed.is_empty());
        assert!(ix.first_index() <= 6);
        assert_eq!(ix.term(ix.floor.index), Some(ix.floor.term));
    }
}
