#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use keel_format::{Batch, BatchBuilder, EntryKind};
use keel_log::{LogOptions, LogStore, RecoveryReport};

pub use keel_log::testing::TempDir;

/// A deterministic entry: `records` records whose bytes depend on index,
/// term and a salt, so a wrong entry never compares equal.
pub fn entry(index: u64, term: u64, base_offset: u64, records: u32, salt: u8) -> Batch {
    if records == 0 {
        return Batch::control(EntryKind::Noop, &[salt], term, index, base_offset, index);
    }
    let mut b = BatchBuilder::new();
    for r in 0..records {
        let len = 8
            + ((index as usize)
                .wrapping_mul(7)
                .wrapping_add(r as usize * 13 + salt as usize)
                % 40);
        let fill = (index as u8).wrapping_mul(31) ^ (term as u8) ^ salt ^ (r as u8);
        b.push(&vec![fill; len]);
    }
    b.seal(
        EntryKind::Data,
        term,
        index,
        base_offset,
        index.wrapping_mul(1000),
    )
}

/// Builds consecutive entries continuing a log.
#[derive(Debug, Clone, Copy)]
pub struct Gen {
    pub next_index: u64,
    pub next_offset: u64,
    pub term: u64,
    pub salt: u8,
}

impl Gen {
    pub fn new() -> Self {
        Gen {
            next_index: 1,
            next_offset: 0,
            term: 1,
            salt: 0,
        }
    }

    pub fn after(store: &LogStore) -> Self {
        Gen {
            next_index: store.last_index() + 1,
            next_offset: store.next_offset(),
            term: store.term(store.last_index()).unwrap().unwrap_or(0).max(1),
            salt: 0,
        }
    }

    pub fn next(&mut self, records: u32) -> Batch {
        let b = entry(
            self.next_index,
            self.term,
            self.next_offset,
            records,
            self.salt,
        );
        self.next_index += 1;
        self.next_offset += records as u64;
        b
    }

    pub fn take(&mut self, n: usize) -> Vec<Batch> {
        (0..n).map(|i| self.next(1 + (i % 3) as u32)).collect()
    }
}

pub fn small_opts() -> LogOptions {
    LogOptions {
        segment_bytes: 1024,
        cache_bytes: 0,
        ..LogOptions::default()
    }
}

pub fn open(dir: &Path, opts: &LogOptions) -> (LogStore, RecoveryReport) {
    LogStore::open(dir, opts.clone()).unwrap_or_else(|e| panic!("open failed: {e}"))
}

pub fn append_wait(store: &LogStore, entries: Vec<Batch>) -> keel_log::Durable {
    store
        .append(entries)
        .wait_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("append did not complete in 30 s"))
        .unwrap_or_else(|e| panic!("append failed: {e}"))
}

pub fn read_all(store: &LogStore) -> Vec<Batch> {
    let lo = store.first_index();
    let hi = store.last_index() + 1;
    let mut out = Vec::new();
    let mut i = lo;
    while i < hi {
        let part = store
            .read(i, hi, 1 << 20)
            .unwrap_or_else(|e| panic!("read {i}..{hi}: {e}"));
        assert!(!part.is_empty());
        i += part.len() as u64;
        out.extend(part);
    }
    out
}

pub fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}
