//! A group's storage as the consensus core reads it: the keel-log store for
//! entries, and the snapshot store for the latest snapshot (what a
//! follower behind the log start is sent).
//!
//! The driver writes both itself (appends, hard state, snapshots, resets);
//! the core only reads through this. keel-log makes appended entries
//! readable as soon as `append` returns, before they are durable, which is
//! what the [`Storage`] contract asks for.

use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use keel_log::{LogError, LogStore};
use keel_raft::{Entry, Index, SnapshotMeta, Storage, StorageError, Term};

use crate::snapshot_store::{SnapshotInfo, SnapshotStore};

/// The core's read view of a group's log and snapshots.
#[derive(Clone)]
pub struct GroupStorage {
    /// The log.
    pub log: Arc<LogStore>,
    /// The snapshot files.
    pub snapshots: Arc<Mutex<SnapshotStore>>,
    latest: Arc<RwLock<Option<SnapshotMeta>>>,
}

impl std::fmt::Debug for GroupStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupStorage")
            .field("dir", &self.log.dir())
            .finish_non_exhaustive()
    }
}

fn map_err(e: LogError) -> StorageError {
    match e {
        LogError::Compacted { index, .. } => StorageError::Compacted(index),
        LogError::Unavailable { index, .. } => StorageError::Unavailable(index),
        other => StorageError::Failed(other.to_string()),
    }
}

/// The description raft uses of a stored snapshot.
pub fn meta_of(info: &SnapshotInfo) -> Result<SnapshotMeta, String> {
    let membership = keel_raft::decode_membership(&info.membership).map_err(|why| {
        format!(
            "the configuration in snapshot {} does not decode: {why}",
            info.index
        )
    })?;
    Ok(SnapshotMeta {
        index: info.index,
        term: info.term,
        membership,
        next_offset: info.next_offset,
        size: info.size,
    })
}

impl GroupStorage {
    /// Over an open log and snapshot store.
    pub fn new(log: Arc<LogStore>, snapshots: SnapshotStore) -> Result<GroupStorage, String> {
        let latest = snapshots.latest().map(meta_of).transpose()?;
        Ok(GroupStorage {
            log,
            snapshots: Arc::new(Mutex::new(snapshots)),
            latest: Arc::new(RwLock::new(latest)),
        })
    }

    /// Makes `info` the snapshot offered to followers.
    pub fn set_latest(&self, info: &SnapshotInfo) -> Result<(), String> {
        let meta = meta_of(info)?;
        *self.latest.write().unwrap_or_else(|p| p.into_inner()) = Some(meta);
        Ok(())
    }
}

impl Storage for GroupStorage {
    fn snapshot(&self) -> Option<SnapshotMeta> {
        self.latest
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn snapshot_chunk(
        &self,
        index: Index,
        offset: u64,
        max_len: usize,
    ) -> Result<Bytes, StorageError> {
        let snaps = self.snapshots.lock().unwrap_or_else(|p| p.into_inner());
        match snaps.read_chunk(index, offset, max_len) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StorageError::SnapshotGone(index))
            }
            Err(e) => Err(StorageError::Failed(format!(
                "reading snapshot {index} at offset {offset}: {e}"
            ))),
        }
    }

    fn first_index(&self) -> Index {
        self.log.first_index()
    }

    fn last_index(&self) -> Index {
        self.log.last_index()
    }

    fn term(&self, index: Index) -> Result<Term, StorageError> {
        match self.log.term(index) {
            Ok(Some(t)) => Ok(t),
            Ok(None) => Err(StorageError::Unavailable(index)),
            Err(e) => Err(map_err(e)),
        }
    }

    fn entries(&self, lo: Index, hi: Index, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        let max = usize::try_from(max_bytes).unwrap_or(usize::MAX);
        self.log.read(lo, hi, max).map_err(map_err)
    }
}
