//! Recent entries kept in memory, so that followers catching up and tailing
//! readers are served without a disk read.
//!
//! The cache holds a suffix of the log: entries `lo ..= last_index`. It has
//! a second duty that the byte budget never overrides: an entry the writer
//! has not written yet (its operation's sequence number is above the
//! writer's `written_seq`) is only in memory, so it is never evicted. With a
//! budget of 0 the cache holds exactly the unwritten entries.

use std::collections::VecDeque;

use keel_format::Batch;

#[derive(Debug)]
pub(crate) struct Cache {
    lo: u64,
    items: VecDeque<(Batch, u64)>,
    bytes: usize,
    budget: usize,
}

impl Cache {
    /// An empty cache whose next entry is `next_index`.
    pub fn new(next_index: u64, budget: usize) -> Self {
        Cache {
            lo: next_index,
            items: VecDeque::new(),
            bytes: 0,
            budget,
        }
    }

    pub fn push(&mut self, b: Batch, seq: u64) {
        debug_assert_eq!(b.index(), self.lo + self.items.len() as u64);
        self.bytes += b.len();
        self.items.push_back((b, seq));
    }

    pub fn get(&self, index: u64) -> Option<&Batch> {
        let k = index.checked_sub(self.lo)?;
        self.items.get(usize::try_from(k).ok()?).map(|(b, _)| b)
    }

    /// Drops entries `from..`; the next pushed entry is `from`.
    pub fn truncate(&mut self, from: u64) {
        if from <= self.lo {
            self.clear(from);
            return;
        }
        let keep = (from - self.lo) as usize;
        while self.items.len() > keep {
            if let Some((b, _)) = self.items.pop_back() {
                self.bytes -= b.len();
            }
        }
    }

    /// Drops entries below `first` (a purge).
    pub fn trim_front(&mut self, first: u64) {
        while self.lo < first {
            match self.items.pop_front() {
                Some((b, _)) => {
                    self.bytes -= b.len();
                    self.lo += 1;
                }
                None => {
                    self.lo = first;
                }
            }
        }
    }

    pub fn clear(&mut self, next_index: u64) {
        self.items.clear();
        self.bytes = 0;
        self.lo = next_index;
    }

    /// Evicts the oldest written entries while over budget.
    pub fn evict(&mut self, written_seq: u64) {
        while self.bytes > self.budget {
            match self.items.front() {
                Some((_, seq)) if *seq <= written_seq => {
                    if let Some((b, _)) = self.items.pop_front() {
                        self.bytes -= b.len();
                        self.lo += 1;
                    }
                }
                _ => break,
            }
        }
    }

    pub fn lo(&self) -> u64 {
        self.lo
    }

    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_format::{BatchBuilder, EntryKind};

    fn b(i: u64) -> Batch {
        BatchBuilder::single(&[1u8; 52]).seal(EntryKind::Data, 1, i, i - 1, 0)
    }

    #[test]
    fn unwritten_entries_survive_any_budget() {
        let mut c = Cache::new(1, 0);
        for i in 1..=5 {
            c.push(b(i), i);
        }
        c.evict(2);
        assert_eq!(c.lo(), 3, "written entries 1 and 2 evicted");
        assert!(c.get(2).is_none());
        assert_eq!(c.get(3).unwrap().index(), 3);
        c.evict(5);
        assert_eq!(c.lo(), 6);
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn truncate_and_trim() {
        let mut c = Cache::new(1, 1 << 20);
        for i in 1..=5 {
            c.push(b(i), 0);
        }
        c.truncate(4);
        assert!(c.get(4).is_none());
        assert_eq!(c.get(3).unwrap().index(), 3);
        c.push(b(4), 0);
        c.trim_front(3);
        assert_eq!(c.lo(), 3);
        c.truncate(1);
        assert_eq!(c.lo(), 1);
        assert_eq!(c.bytes(), 0);
    }
}
