use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;

/// Everything that can go wrong in the log store. Every message says what
/// happened and what to do about it. The type is `Clone` because one failed
/// group commit completes many waiters with the same error.
#[derive(Debug, Clone, Error)]
pub enum LogError {
    /// An I/O operation failed. Seen directly only by operations that do not
    /// put the store into the failed state (opening, reading); a failing
    /// write or sync is reported as [`LogError::Failed`].
    #[error(
        "I/O error during {op} on {path}: {source}; check the disk, the permissions and the kernel log"
    )]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },

    /// A write or an fsync failed earlier; the store refuses every later
    /// write. Data acknowledged as durable before the failure is safe; data
    /// after it is in an unknown state on disk. Never retry: restart the
    /// node, which recovers from what is really on disk.
    #[error(
        "the log store failed and refuses writes ({cause}); restart the node so that it recovers from what is on disk"
    )]
    Failed { cause: Arc<LogError> },

    /// The device is full. Nothing of the failed write is visible; appends
    /// work again once space is freed.
    #[error(
        "no space left on the device while writing {path}; free disk space, then retry the append"
    )]
    NoSpace { path: PathBuf },

    /// A file's content is invalid at a known position.
    #[error("{} is corrupt at byte {offset}: {reason}; run `keel check` on the data directory (`keel repair` cuts the log there, discarding what follows)", file.display())]
    Corrupt {
        file: PathBuf,
        offset: u64,
        reason: String,
    },

    /// A segment that must exist is not there: a gap between segments, a
    /// first segment that starts after the log's recorded start, or a
    /// sealed last segment whose successor disappeared.
    #[error("segment {} is missing ({detail}); restore it from a replica or backup, or run `keel check` on the data directory (`keel repair` cuts the log before the gap, discarding what follows)", expected.display())]
    MissingSegment { expected: PathBuf, detail: String },

    /// Another store (in this process or another) holds the directory.
    #[error("data directory {} is locked by another process or another open store; stop it first", dir.display())]
    Locked { dir: PathBuf },

    /// The entries handed to `append` break the log's rules. Nothing was
    /// written.
    #[error("append rejected: {reason}")]
    InvalidAppend { reason: String },

    /// The index was removed by a purge or reset (or precedes the log).
    #[error(
        "raft index {index} is compacted: the log starts at index {first_index}; fetch a snapshot instead"
    )]
    Compacted { index: u64, first_index: u64 },

    /// The requested range runs past the end of the log.
    #[error("raft index {index} is not in the log: the last index is {last_index}")]
    Unavailable { index: u64, last_index: u64 },

    /// The user offset was removed by a purge or reset.
    #[error("offset {offset} is compacted: the log's first offset is {first_offset}")]
    OffsetCompacted { offset: u64, first_offset: u64 },

    /// `repair` cannot make the directory usable by cutting the log: the
    /// hard state or the log start is corrupt (repair never guesses them),
    /// or problems remain after the cut.
    #[error("{} cannot be repaired: {reason}; restore this node's data from a replica instead", path.display())]
    Unrepairable { path: PathBuf, reason: String },

    #[error("invalid log options: {0}")]
    InvalidOptions(String),

    /// The store was closed before the operation completed.
    #[error("the log store is closed")]
    Closed,
}

pub type Result<T, E = LogError> = std::result::Result<T, E>;

impl LogError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        LogError::Io {
            op,
            path: path.into(),
            source: Arc::new(source),
        }
    }

    pub(crate) fn corrupt(
        file: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Self {
        LogError::Corrupt {
            file: file.into(),
            offset,
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid(reason: impl Into<String>) -> Self {
        LogError::InvalidAppend {
            reason: reason.into(),
        }
    }

    /// True for the error that puts the store into the failed state.
    pub fn is_failed(&self) -> bool {
        matches!(self, LogError::Failed { .. })
    }
}

/// True when an I/O error means the device (or the quota) is full.
pub(crate) fn is_no_space(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}
