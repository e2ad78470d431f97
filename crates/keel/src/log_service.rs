//! The log service's state machine: keel's default log, one of the state
//! machines the node library hosts, through its public API only.
//!
//! The log *is* the state: every committed record stays readable at its
//! offset, straight from the group's log store. What the state machine
//! holds beside it is tiny (the offsets), and so is its snapshot, which
//! only spares a restart re-reading the log; the log is never compacted
//! behind it (truncation and retention, which will let the log start
//! later, come with named logs).

use std::io::{Read, Write};

use bytes::Bytes;
use keel_node::{Command, CoreSettings, SnapshotPolicy, SnapshotWriter, StateMachine};
use keel_raft::SnapshotMeta;

/// The default log's state: where it starts and where it ends.
#[derive(Debug, Default, Clone)]
pub struct LogService {
    /// The first offset the log still holds (0: nothing was truncated).
    pub first_offset: u64,
    /// The offset the next record will take.
    pub next_offset: u64,
}

/// ```text
/// Log service snapshot, 24 bytes, little-endian
///   0   8  magic "KEELLOGS"
///   8   8  first retained offset
///  16   8  next offset
/// ```
const MAGIC: &[u8; 8] = b"KEELLOGS";

impl StateMachine for LogService {
    /// The record's offset.
    type Response = u64;

    fn apply(&mut self, cmd: Command<'_>) -> u64 {
        self.next_offset = cmd.offset + 1;
        cmd.offset
    }

    fn apply_control(&mut self, _index: keel_raft::Index, _body: &Bytes) {}

    fn snapshot(&mut self) -> SnapshotWriter {
        let (first, next) = (self.first_offset, self.next_offset);
        Box::new(move |w: &mut dyn Write| {
            w.write_all(MAGIC)?;
            w.write_all(&first.to_le_bytes())?;
            w.write_all(&next.to_le_bytes())
        })
    }

    fn restore(&mut self, meta: &SnapshotMeta, data: &mut dyn Read) -> std::io::Result<()> {
        let mut b = [0u8; 24];
        data.read_exact(&mut b)?;
        let bad = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, why);
        if &b[..8] != MAGIC {
            return Err(bad("not a log service snapshot (bad magic)".into()));
        }
        let first = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
        let next = u64::from_le_bytes(b[16..24].try_into().expect("8 bytes"));
        if next != meta.next_offset || first > next {
            return Err(bad(format!(
                "log service snapshot says offsets {first}..{next}, its description says the next is {}",
                meta.next_offset
            )));
        }
        self.first_offset = first;
        self.next_offset = next;
        Ok(())
    }
}

/// How the default log runs in the node library: snapshots (tiny) bound
/// the log a restart re-applies; the log itself is kept.
pub fn settings() -> CoreSettings {
    CoreSettings {
        snapshot: SnapshotPolicy {
            entries: 100_000,
            bytes: 256 << 20,
            compact: false,
        },
        ..CoreSettings::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_snapshot_round_trips_and_a_foreign_one_is_refused() {
        let mut s = LogService {
            first_offset: 0,
            next_offset: 42,
        };
        let mut buf = Vec::new();
        (s.snapshot())(&mut buf).unwrap();
        let meta = SnapshotMeta {
            next_offset: 42,
            ..Default::default()
        };
        let mut t = LogService::default();
        t.restore(&meta, &mut &buf[..]).unwrap();
        assert_eq!(t.next_offset, 42);
        let wrong = SnapshotMeta {
            next_offset: 7,
            ..Default::default()
        };
        assert!(t.restore(&wrong, &mut &buf[..]).is_err());
        assert!(
            t.restore(&meta, &mut &b"garbage garbage garbage!"[..])
                .is_err()
        );
    }
}
