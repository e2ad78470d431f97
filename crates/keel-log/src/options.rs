use std::sync::Arc;
use std::time::Duration;

use crate::error::LogError;
use crate::fs::{Fs, RealFs};

/// How a store behaves. `LogOptions::default()` is the production setting.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// A segment is sealed and a new one started when the next entry would
    /// take it past this size (a segment always takes at least one entry).
    /// Default 64 MiB; at most 1 GiB.
    pub segment_bytes: u64,
    /// How long the writer thread may wait, after the first queued write,
    /// for more writes to share its fdatasync. Default 0: take what is
    /// queued. A caller of the blocking path leading a group commit never
    /// waits: it takes what is queued.
    pub max_batch_wait: Duration,
    /// A group commit stops gathering writes for one fdatasync at this many
    /// bytes (a single larger write still goes alone). Default 16 MiB.
    pub max_batch_bytes: usize,
    /// Bytes of recent entries kept in memory for reads. Entries not yet
    /// written are kept regardless. Default 32 MiB.
    pub cache_bytes: usize,
    /// `append` blocks while this many bytes are queued for the writer
    /// (back-pressure when the disk is slower than the appenders).
    /// Default 256 MiB.
    pub max_pending_bytes: usize,
    /// The filesystem layer. Default: the real one.
    pub fs: Arc<dyn Fs>,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_bytes: 64 << 20,
            max_batch_wait: Duration::ZERO,
            max_batch_bytes: 16 << 20,
            cache_bytes: 32 << 20,
            max_pending_bytes: 256 << 20,
            fs: Arc::new(RealFs),
        }
    }
}

impl LogOptions {
    pub(crate) fn validate(&self) -> Result<(), LogError> {
        if self.segment_bytes == 0 || self.segment_bytes > 1 << 30 {
            return Err(LogError::InvalidOptions(format!(
                "segment_bytes {} is outside 1 ..= 1 GiB",
                self.segment_bytes
            )));
        }
        if self.max_batch_bytes == 0 {
            return Err(LogError::InvalidOptions(
                "max_batch_bytes must be positive".into(),
            ));
        }
        if self.max_pending_bytes == 0 {
            return Err(LogError::InvalidOptions(
                "max_pending_bytes must be positive".into(),
            ));
        }
        Ok(())
    }
}
