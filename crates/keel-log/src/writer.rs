//! Performing a round of the group commit: every file mutation, in
//! submission order, executed by whoever holds the write turn (see
//! `group_commit`).
//!
//! A round takes what is queued, writes the batches with vectored writes
//! straight from the callers' buffers (no copy), performs truncations,
//! rolls, purges and resets at their place in the order, then issues one
//! `fdatasync` for the round and completes the round's operations in order.
//! Truncations and segment deletions are made durable (file length synced,
//! directory fsynced) within the round, so no write that follows a
//! truncation can complete before the truncation is durable.
//!
//! Failure model: a failed fsync, or a failed write other than ENOSPC, puts
//! the store into the failed state (every later write is refused; nothing is
//! retried). ENOSPC undoes the failing operation's bytes (the file is cut
//! back to where that operation began), syncs what came before it, fails
//! that operation and everything queued behind it with `NoSpace`, and
//! rebuilds the in-memory index from the files; the store stays usable.

use std::io::{self, IoSlice};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use keel_format::Batch;
use tracing::{error, warn};

use crate::completion::{Completer, Durable};
use crate::error::{LogError, is_no_space};
use crate::fs::{FsFile, OpenMode, write_all_at};
use crate::mem_index::{RollPlan, TruncatePlan};
use crate::meta::{self, Floor};
use crate::recovery;
use crate::segment::{index_name, segment_name};
use crate::store::Shared;

/// One queued operation.
pub(crate) struct Op {
    pub seq: u64,
    pub kind: OpKind,
    /// Bytes of entries it writes (for back-pressure and batching).
    pub bytes: usize,
    /// The log's last entry once this operation is done.
    pub result: Durable,
    pub done: Option<Completer>,
    /// A caller is blocked on this operation and can lead a round.
    pub leads: bool,
}

pub(crate) enum OpKind {
    Append {
        truncate: Option<TruncatePlan>,
        batches: Vec<Batch>,
        rolls: Vec<RollPlan>,
        /// Where the first batch goes: (segment sid, segment first index,
        /// byte position). ENOSPC cuts back to here.
        start: (u64, u64, u64),
    },
    Truncate(TruncatePlan),
    Purge {
        floor: Floor,
        remove: Vec<u64>,
    },
    Reset {
        floor: Floor,
        remove: Vec<u64>,
        sid: u64,
    },
    /// Completes when everything before it is durable.
    Barrier,
}

/// The segment the writer appends to.
pub(crate) struct Active {
    pub sid: u64,
    pub first: u64,
    pub file: Arc<dyn FsFile>,
    /// Bytes of data.
    pub len: u64,
    /// The file's size: data plus preallocated (zero) space after it.
    pub cap: u64,
    /// Blocks up to here hold written bytes (data, or zeros written ahead
    /// of it): writes below it overwrite allocated blocks, so their
    /// fdatasync has no allocation to commit. At least `len`.
    pub written: u64,
}

/// The active segment is extended ahead of the data in steps of this size,
/// so that most fdatasyncs do not have to persist a new file size (about a
/// third cheaper on ext4). Recovery cuts the zero tail; sealing and closing
/// trim it.
const PREALLOCATE: u64 = 8 << 20;

/// Writes up to this size get zeros written ahead of them (see `prepare`).
const SMALL_WRITE: u64 = 16 << 10;

/// How much zero filling a small write that needs it does at once: small
/// steps spread its cost over many rounds (1 MiB at once stalled one round
/// in every few hundred by a millisecond or two, which showed in the p99
/// of concurrent writers).
const ZERO_AHEAD: u64 = 64 << 10;

/// The unit of the zero filling (the page size of common systems).
const PAGE: u64 = 4096;

struct Failure {
    error: LogError,
    no_space: bool,
}

impl Failure {
    fn io(op: &'static str, path: PathBuf, e: io::Error) -> Self {
        let no_space = is_no_space(&e);
        Failure {
            error: LogError::io(op, path, e),
            no_space,
        }
    }

    /// Failed fsyncs are never treated as a full disk: their data is lost.
    fn fatal(op: &'static str, path: PathBuf, e: io::Error) -> Self {
        Failure {
            error: LogError::io(op, path, e),
            no_space: false,
        }
    }

    fn path(&self) -> PathBuf {
        match &self.error {
            LogError::Io { path, .. } => path.clone(),
            _ => PathBuf::new(),
        }
    }
}

/// Batches waiting to be written contiguously at the end of the active file.
struct Run<'a> {
    start: u64,
    len: u64,
    iov: Vec<IoSlice<'a>>,
    /// (operation, byte position where its bytes start).
    op_starts: Vec<(usize, u64)>,
}

impl<'a> Run<'a> {
    fn new() -> Self {
        Run {
            start: 0,
            len: 0,
            iov: Vec::new(),
            op_starts: Vec::new(),
        }
    }

    fn push(&mut self, op: usize, b: &'a Batch, at: u64) {
        if self.iov.is_empty() {
            self.start = at;
            self.len = 0;
        }
        if self.op_starts.last().is_none_or(|&(o, _)| o != op) {
            self.op_starts.push((op, self.start + self.len));
        }
        self.iov.push(IoSlice::new(b.as_bytes()));
        self.len += b.len() as u64;
    }
}

pub(crate) struct Writer {
    sh: Arc<Shared>,
    active: Active,
    active_dirty: bool,
    dir_dirty: bool,
    /// Segment files created this round, by operation (undone on ENOSPC).
    created: Vec<(usize, u64)>,
    /// The operation being executed.
    cur_op: usize,
    /// New segment files to hand to readers at the end of the round.
    published: Vec<(u64, Arc<dyn FsFile>)>,
}

impl Writer {
    pub fn new(sh: Arc<Shared>, active: Active) -> Self {
        Writer {
            sh,
            active,
            active_dirty: false,
            dir_dirty: false,
            created: Vec::new(),
            cur_op: 0,
            published: Vec::new(),
        }
    }

    /// Clean shutdown: leave the active segment without its zero tail.
    pub fn trim_on_close(&mut self) {
        if self.sh.failure().is_none() && self.active.cap > self.active.len {
            let trimmed = self
                .active
                .file
                .set_len(self.active.len)
                .and_then(|()| self.active.file.sync_data());
            if let Err(e) = trimmed {
                warn!(error = %e, "could not trim the active segment on close; open will");
            }
        }
    }

    /// Makes room for a write of `len` bytes at `start` such that its
    /// fdatasync has as little besides the data to persist as possible.
    ///
    /// Small writes are the common case of a synced log, and a write into a
    /// block the file system has not allocated yet makes its fdatasync
    /// persist the allocation too. So ahead of small writes the file is
    /// filled with zeros, `ZERO_AHEAD` at a time (one allocation per 64 KiB
    /// instead of one per block; measured on this ext4: 4 KiB appends sync
    /// ≈50 % more often, 256 B ones ≈15 %). The zeros are written one page
    /// per call: a larger write makes the page cache use large folios, and
    /// then every small append dirties, and fdatasync walks, a whole large
    /// folio (which cost more than the allocation saved). Ahead of large
    /// writes, which would pay for the zeros with as many bytes again, the
    /// file is only extended (`set_len`, in `PREALLOCATE` steps), which
    /// spares fdatasync the file size update. Either way the space after
    /// the data reads as zeros, which recovery cuts as an unwritten tail.
    fn prepare(&mut self, start: u64, len: u64) -> io::Result<()> {
        let end = start + len;
        if len <= SMALL_WRITE && end > self.active.written {
            let from = self.active.written;
            let to = end.max((from + ZERO_AHEAD).min(self.sh.opts.segment_bytes));
            let zeros = [0u8; PAGE as usize];
            let mut at = from;
            while at < to {
                let n = (PAGE - at % PAGE).min(to - at) as usize;
                write_all_at(&*self.active.file, &mut [IoSlice::new(&zeros[..n])], at)
                    .map_err(|p| p.error)?;
                at += n as u64;
            }
            self.active.written = to;
            self.active.cap = self.active.cap.max(to);
            return Ok(());
        }
        if end <= self.active.cap {
            return Ok(());
        }
        let target = (self.active.cap + PREALLOCATE)
            .min(self.sh.opts.segment_bytes)
            .max(end);
        self.active.file.set_len(target)?;
        self.active.cap = target;
        Ok(())
    }

    /// Cuts the preallocated space off the active segment (before sealing).
    fn trim(&mut self) -> Result<(), Failure> {
        if self.active.cap > self.active.len {
            self.active
                .file
                .set_len(self.active.len)
                .map_err(|e| Failure::fatal("truncate", self.seg_path(self.active.first), e))?;
            self.active.cap = self.active.len;
            self.active.written = self.active.len;
            self.active_dirty = true;
        }
        Ok(())
    }

    fn seg_path(&self, first: u64) -> PathBuf {
        self.sh.dir.join(segment_name(first))
    }

    fn idx_path(&self, first: u64) -> PathBuf {
        self.sh.dir.join(index_name(first))
    }

    /// Performs one round: executes `ops`, syncs, completes them in order.
    /// Called only by the holder of the write turn.
    pub fn round(&mut self, ops: Vec<Op>) {
        if let Some(cause) = self.sh.failure() {
            self.finish_failed(ops, cause);
            return;
        }
        let outcome = self.execute(&ops);
        match outcome {
            Ok(()) => self.finish_ok(ops),
            Err((k, f)) if f.no_space => self.on_no_space(ops, k, f),
            Err((_, f)) => {
                let cause = self.sh.set_failed(f.error);
                self.finish_failed(ops, cause);
            }
        }
    }

    /// Performs the round's operations and syncs them. On error returns the
    /// operation that failed.
    fn execute(&mut self, ops: &[Op]) -> Result<(), (usize, Failure)> {
        let mut run = Run::new();
        self.created.clear();
        for (i, op) in ops.iter().enumerate() {
            self.cur_op = i;
            match &op.kind {
                OpKind::Append {
                    truncate,
                    batches,
                    rolls,
                    start,
                } => {
                    if let Some(plan) = truncate {
                        self.flush(&mut run)?;
                        self.truncate(plan).map_err(|f| (i, f))?;
                    }
                    if start.0 != self.active.sid || start.2 != self.active.len + run.len {
                        let f = Failure {
                            error: LogError::corrupt(
                                self.seg_path(self.active.first),
                                self.active.len,
                                format!(
                                    "internal error: write planned at segment sid {} byte {}, writer is at sid {} byte {}",
                                    start.0,
                                    start.2,
                                    self.active.sid,
                                    self.active.len + run.len
                                ),
                            ),
                            no_space: false,
                        };
                        return Err((i, f));
                    }
                    let mut rolls = rolls.iter().peekable();
                    for (k, b) in batches.iter().enumerate() {
                        if let Some(roll) = rolls.next_if(|r| r.at == k) {
                            self.flush(&mut run)?;
                            self.roll(roll).map_err(|f| (i, f))?;
                        }
                        let at = if run.iov.is_empty() {
                            self.active.len
                        } else {
                            run.start
                        };
                        run.push(i, b, at);
                    }
                }
                OpKind::Truncate(plan) => {
                    self.flush(&mut run)?;
                    self.truncate(plan).map_err(|f| (i, f))?;
                }
                OpKind::Purge { floor, remove } => {
                    self.flush(&mut run)?;
                    self.purge(*floor, remove).map_err(|f| (i, f))?;
                }
                OpKind::Reset { floor, remove, sid } => {
                    self.flush(&mut run)?;
                    self.reset(*floor, remove, *sid).map_err(|f| (i, f))?;
                }
                OpKind::Barrier => {}
            }
        }
        self.flush(&mut run)?;
        let last = ops.len().saturating_sub(1);
        self.sync().map_err(|f| (last, f))
    }

    fn flush(&mut self, run: &mut Run<'_>) -> Result<(), (usize, Failure)> {
        if run.iov.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.prepare(run.start, run.len) {
            let op = run.op_starts.first().map_or(0, |&(op, _)| op);
            run.iov.clear();
            run.op_starts.clear();
            run.len = 0;
            return Err((
                op,
                Failure::io("extend", self.seg_path(self.active.first), e),
            ));
        }
        let res = write_all_at(&*self.active.file, &mut run.iov, run.start);
        self.active_dirty = true;
        let out = match res {
            Ok(()) => {
                self.active.len = run.start + run.len;
                self.active.written = self.active.written.max(self.active.len);
                Ok(())
            }
            Err(p) => {
                let at = run.start + p.written;
                let op = run
                    .op_starts
                    .iter()
                    .rev()
                    .find(|&&(_, pos)| pos <= at)
                    .map_or(0, |&(op, _)| op);
                Err((
                    op,
                    Failure::io("write", self.seg_path(self.active.first), p.error),
                ))
            }
        };
        run.iov.clear();
        run.op_starts.clear();
        run.len = 0;
        out
    }

    fn sync(&mut self) -> Result<(), Failure> {
        if self.active_dirty {
            self.active
                .file
                .sync_data()
                .map_err(|e| Failure::fatal("fsync", self.seg_path(self.active.first), e))?;
            self.active_dirty = false;
        }
        if self.dir_dirty {
            self.sync_dir()?;
        }
        Ok(())
    }

    fn sync_dir(&mut self) -> Result<(), Failure> {
        self.sh
            .fs
            .sync_dir(&self.sh.dir)
            .map_err(|e| Failure::fatal("fsync", self.sh.dir.clone(), e))?;
        self.dir_dirty = false;
        Ok(())
    }

    fn remove(&mut self, path: PathBuf) -> Result<(), Failure> {
        match self.sh.fs.remove(&path) {
            Ok(()) => {
                self.dir_dirty = true;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Failure::fatal("remove", path, e)),
        }
    }

    /// Seals the active segment and starts the next one. Order matters for
    /// recovery: the sealed data is synced, the new file exists durably, and
    /// only then is the index file written (an index file on the last
    /// segment means its successor went missing).
    fn roll(&mut self, roll: &RollPlan) -> Result<(), Failure> {
        self.trim()?;
        self.sync()?;
        let path = self.seg_path(roll.new_first);
        let file = self
            .sh
            .fs
            .open(&path, OpenMode::Create)
            .map_err(|e| Failure::io("create", path.clone(), e))?;
        self.created.push((self.cur_op, roll.new_first));
        self.dir_dirty = true;
        self.sync_dir()?;
        let idx = self.idx_path(roll.sealed.first_index);
        if let Err(e) = recovery::write_index(&*self.sh.fs, &idx, &roll.sealed) {
            warn!(file = %idx.display(), error = %e, "could not write a segment index file; the next open scans the segment");
            let _ = self.sh.fs.remove(&idx);
        }
        self.published.push((roll.new_sid, file.clone()));
        self.active = Active {
            sid: roll.new_sid,
            first: roll.new_first,
            file,
            len: 0,
            cap: 0,
            written: 0,
        };
        Ok(())
    }

    /// Deletes later segments and cuts the remaining one, durably and in an
    /// order that leaves a valid log at every crash point.
    fn truncate(&mut self, plan: &TruncatePlan) -> Result<(), Failure> {
        // Index files first: at no crash point may the last remaining
        // segment carry one (that would mean its successor went missing).
        if plan.cut_was_sealed {
            self.remove(self.idx_path(plan.cut_first))?;
        }
        for &first in &plan.remove {
            self.remove(self.idx_path(first))?;
        }
        if self.dir_dirty {
            self.sync_dir()?;
        }
        for &first in &plan.remove {
            // Highest first, each durable before the next, so that a crash
            // leaves a contiguous prefix.
            self.remove(self.seg_path(first))?;
            self.sync_dir()?;
        }
        let file = if plan.cut_sid == self.active.sid {
            self.active.file.clone()
        } else {
            let path = self.seg_path(plan.cut_first);
            self.sh
                .fs
                .open(&path, OpenMode::ReadWrite)
                .map_err(|e| Failure::fatal("open", path, e))?
        };
        file.set_len(plan.cut_pos)
            .map_err(|e| Failure::fatal("truncate", self.seg_path(plan.cut_first), e))?;
        self.active = Active {
            sid: plan.cut_sid,
            first: plan.cut_first,
            file,
            len: plan.cut_pos,
            cap: plan.cut_pos,
            written: plan.cut_pos,
        };
        self.active_dirty = true;
        Ok(())
    }

    fn write_floor(&mut self, floor: Floor) -> Result<(), Failure> {
        meta::replace(
            &*self.sh.fs,
            &self.sh.dir,
            meta::META_FILE,
            &meta::encode_floor(floor),
        )
        .map_err(|e| {
            if e.step == "write" || e.step == "create" {
                Failure::io(e.step, e.path, e.error)
            } else {
                Failure::fatal(e.step, e.path, e.error)
            }
        })
    }

    fn purge(&mut self, floor: Floor, remove: &[u64]) -> Result<(), Failure> {
        // The floor first: a crash after it leaves segments below the floor,
        // which open removes.
        self.write_floor(floor)?;
        for &first in remove {
            for path in [self.seg_path(first), self.idx_path(first)] {
                if let Err(f) = self.remove(path) {
                    warn!(error = %f.error, "could not remove a purged segment; open will retry");
                }
            }
        }
        self.sync_dir()
    }

    fn reset(&mut self, floor: Floor, remove: &[u64], sid: u64) -> Result<(), Failure> {
        // Index files first, then segments highest first: a crash leaves a
        // prefix of the old log with no sealed last segment.
        for &first in remove {
            self.remove(self.idx_path(first))?;
        }
        self.sync_dir()?;
        for &first in remove {
            self.remove(self.seg_path(first))?;
            self.sync_dir()?;
        }
        self.write_floor(floor)?;
        let first = floor.index + 1;
        let path = self.seg_path(first);
        let file = self
            .sh
            .fs
            .open(&path, OpenMode::Create)
            .map_err(|e| Failure::io("create", path, e))?;
        self.dir_dirty = true;
        self.sync_dir()?;
        self.published.push((sid, file.clone()));
        self.active = Active {
            sid,
            first,
            file,
            len: 0,
            cap: 0,
            written: 0,
        };
        self.active_dirty = false;
        Ok(())
    }

    fn finish_ok(&mut self, ops: Vec<Op>) {
        let Some(last) = ops.last() else {
            return;
        };
        let bytes: usize = ops.iter().map(|o| o.bytes).sum();
        let durable = {
            let mut st = self.sh.lock_state();
            let st = &mut *st;
            st.written_seq = last.seq;
            for (sid, f) in self.published.drain(..) {
                st.index.publish_file(sid, &f);
            }
            while st.trunc_caps.front().is_some_and(|&(s, _)| s <= last.seq) {
                st.trunc_caps.pop_front();
            }
            let cap = st
                .trunc_caps
                .iter()
                .map(|&(_, c)| c)
                .min()
                .unwrap_or(u64::MAX);
            let durable = last.result.index.min(cap);
            self.sh.durable.store(durable, Ordering::Release);
            st.cache.evict(st.written_seq);
            st.pending_bytes -= bytes;
            if st.room_waiters > 0 {
                self.sh.room.notify_all();
            }
            durable
        };
        // The callback first: whoever a completion wakes may rely on the
        // driver having heard of this durability already.
        self.sh.notify_durable(durable);
        for mut op in ops {
            if let Some(done) = op.done.take() {
                done.complete(Ok(op.result));
            }
        }
    }

    fn finish_failed(&mut self, ops: Vec<Op>, cause: Arc<LogError>) {
        let bytes: usize = ops.iter().map(|o| o.bytes).sum();
        {
            let mut st = self.sh.lock_state();
            // Entries of failed writes stay in the cache (written_seq does
            // not move), so reads never look for them on disk.
            st.pending_bytes -= bytes;
            if st.room_waiters > 0 {
                self.sh.room.notify_all();
            }
        }
        self.published.clear();
        for mut op in ops {
            if let Some(done) = op.done.take() {
                done.complete(Err(LogError::Failed {
                    cause: cause.clone(),
                }));
            }
        }
    }

    /// Undoes operation `k`'s bytes, syncs what came before it, fails it and
    /// everything queued behind it, and rebuilds the index from the files.
    fn on_no_space(&mut self, mut ops: Vec<Op>, k: usize, f: Failure) {
        let path = f.path();
        warn!(error = %f.error, "device full: failing the write and everything queued behind it");
        if let Err(fatal) = self.undo(k, &ops[k]) {
            let cause = self.sh.set_failed(fatal.error);
            self.finish_failed(ops, cause);
            return;
        }
        let mut later = Vec::new();
        let rebuilt = {
            let mut st = self.sh.lock_state();
            let st = &mut *st;
            {
                let mut q = self.sh.lock_queue();
                later.extend(q.ops.drain(..));
                q.bytes = 0;
            }
            match recovery::recover(&*self.sh.fs, &self.sh.dir, st.next_sid, false) {
                Ok(r) => {
                    st.next_sid = r.next_sid;
                    st.index = r.index;
                    let next = st.index.last_index + 1;
                    st.cache.clear(next);
                    st.written_seq = st.next_seq.saturating_sub(1);
                    st.pending_bytes = 0;
                    st.trunc_caps.clear();
                    self.sh.bump_epoch();
                    self.sh
                        .durable
                        .store(st.index.last_index, Ordering::Release);
                    let a = st.index.active();
                    match &a.file {
                        Some(file) => {
                            self.active = Active {
                                sid: a.sid,
                                first: a.first_index,
                                file: file.clone(),
                                len: a.end_pos,
                                cap: a.end_pos,
                                written: a.end_pos,
                            };
                            Ok(st.index.last_index)
                        }
                        None => Err(LogError::Closed),
                    }
                }
                Err(e) => Err(e),
            }
        };
        self.published.clear();
        self.active_dirty = false;
        self.dir_dirty = false;
        {
            let st = self.sh.lock_state();
            if st.room_waiters > 0 {
                self.sh.room.notify_all();
            }
        }
        match rebuilt {
            Ok(durable) => {
                self.sh.notify_durable(durable);
                let rest = ops.split_off(k);
                for mut op in ops {
                    if let Some(done) = op.done.take() {
                        done.complete(Ok(op.result));
                    }
                }
                for mut op in rest.into_iter().chain(later) {
                    if let Some(done) = op.done.take() {
                        done.complete(Err(LogError::NoSpace { path: path.clone() }));
                    }
                }
            }
            Err(e) => {
                error!(error = %e, "could not rebuild the index after ENOSPC");
                let cause = self.sh.set_failed(e);
                ops.extend(later);
                self.finish_failed(ops, cause);
            }
        }
    }

    /// Removes every byte operation `op` wrote and syncs the earlier ones.
    fn undo(&mut self, k: usize, op: &Op) -> Result<(), Failure> {
        if let OpKind::Append {
            start: (sid, first, pos),
            ..
        } = &op.kind
        {
            // Only operation k can have created files before the failure:
            // every roll flushes what precedes it.
            let created: Vec<u64> = std::mem::take(&mut self.created)
                .into_iter()
                .filter(|&(o, _)| o == k)
                .map(|(_, c)| c)
                .collect();
            if !created.is_empty() {
                // The operation sealed `first` (and maybe some it created);
                // `first` becomes the last segment again, so index files go
                // before the segments.
                self.remove(self.idx_path(*first))?;
                for &c in &created {
                    self.remove(self.idx_path(c))?;
                }
                self.sync_dir()?;
            }
            for &c in created.iter().rev() {
                self.remove(self.seg_path(c))?;
                self.sync_dir()?;
            }
            let path = self.seg_path(*first);
            let file = if *sid == self.active.sid {
                self.active.file.clone()
            } else {
                self.sh
                    .fs
                    .open(&path, OpenMode::ReadWrite)
                    .map_err(|e| Failure::fatal("open", path.clone(), e))?
            };
            file.set_len(*pos)
                .map_err(|e| Failure::fatal("truncate", path.clone(), e))?;
            file.sync_data()
                .map_err(|e| Failure::fatal("fsync", path.clone(), e))?;
            if *sid != self.active.sid {
                self.active = Active {
                    sid: *sid,
                    first: *first,
                    file,
                    len: *pos,
                    cap: *pos,
                    written: *pos,
                };
            } else {
                self.active.len = *pos;
                self.active.cap = *pos;
                self.active.written = *pos;
            }
            self.active_dirty = false;
            Ok(())
        } else {
            // Purge or reset failed writing log.meta: nothing to cut; sync
            // what earlier operations wrote.
            self.sync()
        }
    }
}
