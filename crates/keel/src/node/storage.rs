//! `LogStorage`: the raft core's read view of a group's keel-log store.
//!
//! The driver writes the store itself (hard state, appends); the core only
//! reads entries it no longer holds in memory through this. keel-log makes
//! appended entries readable as soon as `append` returns, before they are
//! durable, which is what the `Storage` contract asks for.

use std::sync::Arc;

use keel_log::{LogError, LogStore};
use keel_raft::{Entry, Index, Storage, StorageError, Term};

#[derive(Debug, Clone)]
pub struct LogStorage(pub Arc<LogStore>);

fn map_err(e: LogError) -> StorageError {
    match e {
        LogError::Compacted { index, .. } => StorageError::Compacted(index),
        LogError::Unavailable { index, .. } => StorageError::Unavailable(index),
        other => StorageError::Failed(other.to_string()),
    }
}

impl Storage for LogStorage {
    fn first_index(&self) -> Index {
        self.0.first_index()
    }

    fn last_index(&self) -> Index {
        self.0.last_index()
    }

    fn term(&self, index: Index) -> Result<Term, StorageError> {
        match self.0.term(index) {
            Ok(Some(t)) => Ok(t),
            Ok(None) => Err(StorageError::Unavailable(index)),
            Err(e) => Err(map_err(e)),
        }
    }

    fn entries(&self, lo: Index, hi: Index, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        let max = usize::try_from(max_bytes).unwrap_or(usize::MAX);
        self.0.read(lo, hi, max).map_err(map_err)
    }
}
