//! Sending a snapshot to a follower that needs compacted entries, and
//! receiving and installing one.
//!
//! Leader: a follower whose `next` falls before the log start enters the
//! Snapshot state; the leader sends the latest snapshot one chunk at a time
//! (`snapshot_chunk_bytes`), each chunk from the offset the follower last
//! acknowledged, so a lost chunk is resent from there after the next
//! heartbeat response. If the snapshot is replaced meanwhile, the transfer
//! starts over with the new one. A term change ends the transfer (progress
//! is dropped with leadership).
//!
//! Follower: chunks are handed to the driver in order
//! (`Ready::snapshot_chunks`; offset 0 means "start a new snapshot"); a
//! chunk out of order gets the expected offset back. With the last chunk
//! the log is reset to the snapshot point at once and the driver is asked
//! to install it (`Ready::install_snapshot`, under a persist id); the
//! acknowledgement leaves only once that install is reported durable. A
//! snapshot at or below the commit index is acknowledged without installing.

use crate::Raft;
use crate::error::{Error, StorageError};
use crate::message::MessageBody;
use crate::progress::{ProgressState, SnapshotSend};
use crate::snapshot::{SnapshotChunk, SnapshotMeta};
use crate::storage::Storage;
use crate::types::{Index, NodeId};

/// A snapshot arriving in chunks.
#[derive(Debug, Clone)]
pub(crate) struct Incoming {
    meta: SnapshotMeta,
    next: u64,
}

impl<S: Storage> Raft<S> {
    /// Describes a snapshot of the state at `index`, for the driver to store
    /// beside the state machine's data (it fills in `size`). `index` must be
    /// applied and still in the log (or be the log's snapshot point).
    pub fn snapshot_meta(&self, index: Index) -> Result<SnapshotMeta, Error> {
        if index > self.log.applied {
            return Err(Error::Storage(StorageError::Unavailable(index)));
        }
        let term = self.log.term(index)?;
        let next_offset = if index + 1 == self.log.first_index() {
            match self.log.storage.snapshot() {
                Some(s) if s.index == index => s.next_offset,
                _ if index == 0 => 0,
                _ => return Err(Error::Storage(StorageError::Compacted(index))),
            }
        } else {
            self.log
                .slice(index, index + 1, u64::MAX)?
                .first()
                .map(|e| e.end_offset())
                .ok_or(Error::Storage(StorageError::Unavailable(index)))?
        };
        let membership = self.membership_at(index)?;
        if membership.voters.is_empty() {
            return Err(Error::InvalidConfChange(format!(
                "no configuration with voters is known at index {index}; a snapshot there would be unusable"
            )));
        }
        Ok(SnapshotMeta {
            index,
            term,
            membership,
            next_offset,
            size: 0,
        })
    }

    /// Up to which index the driver may purge its log once it holds a
    /// snapshot at `snapshot_index`: `compaction_keep_entries` behind it.
    pub fn compaction_point(&self, snapshot_index: Index) -> Index {
        snapshot_index.saturating_sub(self.cfg.compaction_keep_entries)
    }

    /// Leader: puts `to` into the Snapshot state with the latest snapshot.
    /// Returns false when there is no snapshot to send.
    pub(crate) fn start_snapshot(&mut self, to: NodeId) -> bool {
        let Some(meta) = self.log.storage.snapshot() else {
            return false;
        };
        let Some(pr) = self.progress.get_mut(&to) else {
            return false;
        };
        pr.state = ProgressState::Snapshot;
        pr.inflights.reset();
        pr.snapshot = Some(SnapshotSend {
            meta,
            next: 0,
            in_flight: None,
            hint: None,
        });
        true
    }

    /// Leader: sends the next chunk to `to` unless one is in flight.
    pub(crate) fn send_snapshot_chunk(&mut self, to: NodeId) {
        let max = self.cfg.snapshot_chunk_bytes;
        let Some(pr) = self.progress.get_mut(&to) else {
            return;
        };
        let Some(send) = &mut pr.snapshot else { return };
        if send.in_flight.is_some() {
            return;
        }
        let chunk = match self
            .log
            .storage
            .snapshot_chunk(send.meta.index, send.next, max)
        {
            Ok(data) => data,
            Err(_) => {
                // Replaced by a newer snapshot: start over with that one.
                if !self.start_snapshot(to) {
                    return;
                }
                let Some(send) = self.progress.get_mut(&to).and_then(|p| p.snapshot.as_mut())
                else {
                    return;
                };
                match self.log.storage.snapshot_chunk(send.meta.index, 0, max) {
                    Ok(data) => data,
                    Err(_) => return,
                }
            }
        };
        let pr = self.progress.get_mut(&to).expect("present");
        let send = pr.snapshot.as_mut().expect("present");
        send.in_flight = Some(send.next + chunk.len() as u64);
        let msg = SnapshotChunk {
            meta: send.meta.clone(),
            offset: send.next,
            done: send.next + chunk.len() as u64 >= send.meta.size,
            data: chunk,
        };
        self.send(to, MessageBody::Snapshot(msg));
    }

    pub(crate) fn handle_snapshot_response(
        &mut self,
        from: NodeId,
        index: Index,
        next_offset: u64,
        installed: bool,
    ) {
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        if installed {
            // The follower holds everything up to `index` (it installed the
            // snapshot, or had committed that far already).
            if index > self.log.last_index() {
                return;
            }
            pr.maybe_update(index);
            if pr.state == ProgressState::Snapshot {
                pr.become_probe();
            }
            self.needs_flush = true;
            self.maybe_commit();
            return;
        }
        let Some(send) = &mut pr.snapshot else { return };
        if send.meta.index != index {
            return; // about another snapshot
        }
        if send.in_flight == Some(next_offset) {
            // The chunk in flight arrived: send the next one now.
            send.next = next_offset;
            send.in_flight = None;
            send.hint = None;
            self.needs_flush = true;
        } else {
            send.hint = Some(next_offset.min(send.meta.size));
        }
    }

    /// Heartbeat response from a follower in the Snapshot state: a chunk may
    /// have been lost; resend from the last acknowledged offset, or from
    /// where the follower asked to resume.
    pub(crate) fn snapshot_retry(&mut self, from: NodeId) {
        if let Some(send) = self
            .progress
            .get_mut(&from)
            .and_then(|p| p.snapshot.as_mut())
        {
            if let Some(h) = send.hint.take() {
                send.next = h;
            }
            send.in_flight = None;
            self.needs_flush = true;
        }
    }

    pub(crate) fn handle_snapshot_chunk(
        &mut self,
        from: NodeId,
        c: SnapshotChunk,
    ) -> Result<(), Error> {
        let snap_index = c.meta.index;
        let reply = |next_offset: u64, installed: bool| MessageBody::SnapshotResponse {
            index: snap_index,
            next_offset,
            installed,
        };
        if c.meta.index <= self.log.committed {
            self.incoming_snapshot = None;
            self.send(from, reply(c.meta.size, true));
            return Ok(());
        }
        if c.meta.membership.voters.is_empty() || c.offset + c.data.len() as u64 > c.meta.size {
            return Err(Error::InvalidMessage {
                from,
                reason: "snapshot chunk with no voters or past its size".into(),
            });
        }
        let expected = match &self.incoming_snapshot {
            Some(inc) if inc.meta == c.meta => inc.next,
            _ => 0,
        };
        if c.offset != expected {
            let next = expected;
            self.send(from, reply(next, false));
            return Ok(());
        }
        if c.offset == 0 {
            self.incoming_snapshot = Some(Incoming {
                meta: c.meta.clone(),
                next: 0,
            });
        }
        let inc = self.incoming_snapshot.as_mut().expect("set above");
        inc.next += c.data.len() as u64;
        let complete = c.done && inc.next == inc.meta.size;
        let next = inc.next;
        let meta = c.meta.clone();
        self.snapshot_chunks.push(c);
        if complete {
            self.install(meta);
            let index = self.log.committed;
            self.send(
                from,
                MessageBody::SnapshotResponse {
                    index,
                    next_offset: next,
                    installed: true,
                },
            );
        } else {
            self.send(from, reply(next, false));
        }
        Ok(())
    }

    /// Resets the log to the snapshot point and asks the driver to install.
    fn install(&mut self, meta: SnapshotMeta) {
        self.incoming_snapshot = None;
        self.leader_shown = self.leader_shown.max(meta.index);
        self.log
            .reset_to_snapshot(meta.index, meta.term, meta.next_offset);
        self.base_membership = meta.membership.clone();
        self.conf_history.clear();
        self.conf_known_from = 0;
        self.refresh_membership();
        self.pending_install = Some(meta);
    }
}
