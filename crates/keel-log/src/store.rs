//! `LogStore`: the public face. Submitting threads plan every operation
//! under one mutex (validation, the in-memory index, the cache, the queue
//! order); whoever holds the write turn performs them (the writer thread, or
//! a caller of the blocking path leading a write group; see `writer`);
//! readers plan under the mutex and read files outside it.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use bytes::{Bytes, BytesMut};
use keel_format::Batch;
use tracing::error;

use crate::cache::Cache;
use crate::completion::{Completion, Durable, pair};
use crate::error::{LogError, Result, is_no_space};
use crate::fs::{Fs, FsFile, read_full_at};
use crate::group_commit::{AppendTicket, Queue, give_writer_turn, writer_thread};
use crate::mem_index::{LogIndex, RollPlan};
use crate::meta::{self, Floor, HardState};
use crate::options::LogOptions;
use crate::recovery::{self, RecoveryReport};
use crate::segment::segment_name;
use crate::writer::{Active, Op, OpKind, Writer};

type DurableCallback = Arc<dyn Fn(u64) + Send + Sync>;

pub(crate) struct State {
    pub index: LogIndex,
    pub cache: Cache,
    pub next_seq: u64,
    /// Every operation with a sequence number up to this one is written.
    pub written_seq: u64,
    pub pending_bytes: usize,
    pub room_waiters: usize,
    /// Truncating operations not yet completed: (seq, highest index that
    /// survives them). The durable index never exceeds any of them.
    pub trunc_caps: VecDeque<(u64, u64)>,
    pub next_sid: u64,
    pub hard_state: HardState,
    pub failed: Option<Arc<LogError>>,
    pub closed: bool,
}

pub(crate) struct Shared {
    pub dir: PathBuf,
    pub fs: Arc<dyn Fs>,
    pub opts: LogOptions,
    state: Mutex<State>,
    /// Back-pressure: appenders wait here (with `state`) for queue room.
    pub room: Condvar,
    queue: Mutex<Queue>,
    pub queue_cv: Condvar,
    pub durable: AtomicU64,
    /// Mirrors `queue.writer_turn`, for the writer thread's brief spin
    /// before it sleeps.
    pub writer_wanted: AtomicBool,
    failed: AtomicBool,
    /// Bumped under `state` by anything that moves or removes entries on
    /// disk (truncate, purge, reset, rebuild); readers that read files
    /// outside the lock retry if it moved.
    epoch: AtomicU64,
    on_durable: Mutex<Option<DurableCallback>>,
    hard_state_lock: Mutex<()>,
}

impl Shared {
    pub fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn lock_queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn failure(&self) -> Option<Arc<LogError>> {
        if !self.failed.load(Ordering::Acquire) {
            return None;
        }
        self.lock_state().failed.clone()
    }

    /// Enters the failed state (once; later causes are ignored).
    pub fn set_failed(&self, cause: LogError) -> Arc<LogError> {
        let mut st = self.lock_state();
        if let Some(c) = &st.failed {
            return c.clone();
        }
        error!(error = %cause, "log store failed; refusing further writes");
        let c = Arc::new(cause);
        st.failed = Some(c.clone());
        self.failed.store(true, Ordering::Release);
        c
    }

    pub fn bump_epoch(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    pub fn notify_durable(&self, index: u64) {
        let cb = self
            .on_durable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(cb) = cb {
            cb(index);
        }
    }
}

/// A durable, segmented log of raft entries in one directory.
///
/// `Send + Sync`: share it behind an `Arc`; readers may run on any thread
/// while others append.
pub struct LogStore {
    pub(crate) shared: Arc<Shared>,
    /// The state that performs rounds, used by whoever holds the write
    /// turn: the writer thread or a leading caller of the blocking path.
    pub(crate) core: Arc<Mutex<Writer>>,
    writer: Option<JoinHandle<()>>,
    _lock: Box<dyn Send + Sync>,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("dir", &self.shared.dir)
            .field("first_index", &self.first_index())
            .field("last_index", &self.last_index())
            .field("durable_index", &self.durable_index())
            .finish()
    }
}

/// One piece of a read plan.
enum Part {
    Cached(Batch),
    Disk {
        file: Arc<dyn FsFile>,
        seg_first: u64,
        start: u64,
        end: u64,
        first: u64,
        count: u64,
    },
}

pub(crate) const LOCK_FILE: &str = "LOCK";

impl LogStore {
    /// Opens (creating if needed) the store in `dir`, recovering from
    /// whatever a crash left. Fails if another store holds the directory,
    /// or on corruption anywhere but a torn tail (see [`RecoveryReport`]).
    pub fn open(dir: &Path, opts: LogOptions) -> Result<(LogStore, RecoveryReport)> {
        opts.validate()?;
        let fs = opts.fs.clone();
        fs.create_dir_all(dir)
            .map_err(|e| LogError::io("create directory", dir, e))?;
        let lock = fs.lock(&dir.join(LOCK_FILE)).map_err(|e| {
            if e.kind() == std::io::ErrorKind::WouldBlock {
                LogError::Locked {
                    dir: dir.to_path_buf(),
                }
            } else {
                LogError::io("lock", dir.join(LOCK_FILE), e)
            }
        })?;
        let rec = recovery::recover(&*fs, dir, 0, true)?;
        if let Some(t) = &rec.report.torn_tail {
            tracing::warn!(file = %t.file.display(), offset = t.offset, bytes = t.bytes, "recovered from a torn tail");
        }
        let a = rec.index.active();
        let active = Active {
            sid: a.sid,
            first: a.first_index,
            file: a.file.clone().ok_or_else(|| {
                LogError::io("open", dir, std::io::Error::other("no active segment"))
            })?,
            len: a.end_pos,
            cap: a.end_pos,
            written: a.end_pos,
        };
        let last = rec.index.last_index;
        let state = State {
            cache: Cache::new(last + 1, opts.cache_bytes),
            index: rec.index,
            next_seq: 1,
            written_seq: 0,
            pending_bytes: 0,
            room_waiters: 0,
            trunc_caps: VecDeque::new(),
            next_sid: rec.next_sid,
            hard_state: rec.hard_state,
            failed: None,
            closed: false,
        };
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            fs,
            opts,
            state: Mutex::new(state),
            room: Condvar::new(),
            queue: Mutex::new(Queue::default()),
            queue_cv: Condvar::new(),
            durable: AtomicU64::new(last),
            writer_wanted: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            on_durable: Mutex::new(None),
            hard_state_lock: Mutex::new(()),
        });
        let core = Arc::new(Mutex::new(Writer::new(shared.clone(), active)));
        let (sh, w) = (shared.clone(), core.clone());
        let writer = std::thread::Builder::new()
            .name("keel-log-writer".into())
            .spawn(move || writer_thread(sh, w))
            .map_err(|e| LogError::io("spawn writer thread", dir, e))?;
        Ok((
            LogStore {
                shared,
                core,
                writer: Some(writer),
                _lock: lock,
            },
            rec.report,
        ))
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    // ---- hard state -------------------------------------------------------

    pub fn hard_state(&self) -> HardState {
        self.shared.lock_state().hard_state
    }

    /// Durably replaces the hard state (tmp file, fsync, rename, fsync the
    /// directory) before returning.
    pub fn save_hard_state(&self, hs: HardState) -> Result<()> {
        let sh = &self.shared;
        if let Some(cause) = sh.failure() {
            return Err(LogError::Failed { cause });
        }
        let _g = sh.hard_state_lock.lock().unwrap_or_else(|p| p.into_inner());
        match meta::replace(
            &*sh.fs,
            &sh.dir,
            meta::HARD_STATE_FILE,
            &meta::encode_hard_state(hs),
        ) {
            Ok(()) => {
                sh.lock_state().hard_state = hs;
                Ok(())
            }
            Err(e) if (e.step == "write" || e.step == "create") && is_no_space(&e.error) => {
                Err(LogError::NoSpace { path: e.path })
            }
            Err(e) => {
                let cause = sh.set_failed(LogError::io(e.step, e.path, e.error));
                Err(LogError::Failed { cause })
            }
        }
    }

    // ---- writes -----------------------------------------------------------

    /// Appends entries (raft semantics: entries starting at or before the
    /// last index replace the existing suffix from that index, in order with
    /// every other write). The entries are readable when this returns; the
    /// completion resolves once they (and everything before them) are
    /// fdatasynced. An empty `entries` is a barrier: it resolves when every
    /// earlier write is durable.
    ///
    /// The asynchronous path: it never blocks on I/O (only, under
    /// back-pressure, for queue room); the store's writer thread (or a
    /// leading caller of [`LogStore::append_and_wait`]) performs the write.
    /// For a thread that waits for each append right away,
    /// [`LogStore::append_and_wait`] is cheaper.
    pub fn append(&self, entries: Vec<Batch>) -> Completion {
        match self.submit_append(entries, false) {
            Ok((_, c)) => c,
            Err(e) => Completion::ready(Err(e)),
        }
    }

    /// Appends entries (the same semantics as [`LogStore::append`]) and
    /// blocks until they, and everything submitted before them, are
    /// fdatasynced: the blocking path, the analogue of raft-engine's
    /// `write(batch, sync = true)`.
    ///
    /// The calling thread does the work itself when no group commit is in
    /// progress: it becomes the *leader* of a write group, takes along
    /// every write queued so far (from either path), writes them all, issues
    /// one `fdatasync`, completes the others and returns, with no hand-off
    /// to the writer thread. Callers that arrive while a group commit is in
    /// progress wait, and the first of them leads the next group for all of
    /// them, so concurrent callers still share fsyncs. Ordering, failure
    /// and ENOSPC semantics, the durable index and the durable callback are
    /// exactly those of [`LogStore::append`]; completions of both paths
    /// resolve in submission order. The durable callback may therefore run
    /// on the calling thread.
    ///
    /// Not for async code: it blocks the thread for the duration of a disk
    /// sync (use [`LogStore::append`] and await the completion there).
    pub fn append_and_wait(&self, entries: Vec<Batch>) -> Result<Durable> {
        self.begin_append(entries)?.wait()
    }

    /// The first half of [`LogStore::append_and_wait`]: validates and
    /// queues the entries (their place in the log is fixed and they are
    /// readable when this returns) and returns a ticket whose
    /// [`AppendTicket::wait`] performs or joins the group commit. For callers
    /// that must order their appends under a lock of their own without
    /// holding it across the disk sync. Dropping the ticket without waiting
    /// leaves the write to the writer thread (like dropping a
    /// [`Completion`]).
    pub fn begin_append(&self, entries: Vec<Batch>) -> Result<AppendTicket<'_>> {
        let (seq, done) = self.submit_append(entries, true)?;
        Ok(self.ticket(seq, done))
    }

    fn ticket(&self, seq: u64, done: Completion) -> AppendTicket<'_> {
        AppendTicket {
            store: self,
            seq,
            done: Some(done),
        }
    }

    fn check_open(&self, st: &State) -> Result<()> {
        if let Some(cause) = &st.failed {
            return Err(LogError::Failed {
                cause: cause.clone(),
            });
        }
        if st.closed {
            return Err(LogError::Closed);
        }
        Ok(())
    }

    fn submit_append(&self, entries: Vec<Batch>, blocking: bool) -> Result<(u64, Completion)> {
        let sh = &self.shared;
        let mut guard = sh.lock_state();
        self.check_open(&guard)?;
        if entries.is_empty() {
            let result = Durable {
                index: guard.index.last_index,
                term: guard.index.last_term(),
            };
            return Ok(self.enqueue(&mut guard, OpKind::Barrier, 0, result, blocking));
        }
        let bytes: usize = entries.iter().map(|b| b.len()).sum();
        while guard.pending_bytes > 0 && guard.pending_bytes + bytes > sh.opts.max_pending_bytes {
            {
                // Queued blocking writes whose callers have not started
                // waiting have nobody performing them: let the writer
                // thread, so that room is certain to come.
                let mut q = sh.lock_queue();
                if !q.busy && !q.ops.is_empty() {
                    give_writer_turn(sh, &mut q);
                }
            }
            guard.room_waiters += 1;
            guard = sh.room.wait(guard).unwrap_or_else(|p| p.into_inner());
            guard.room_waiters -= 1;
            self.check_open(&guard)?;
        }
        validate(&guard.index, &entries)?;
        let st = &mut *guard;
        let seq = st.next_seq;
        let first = entries[0].index();
        let truncate = if first <= st.index.last_index {
            let plan = st.index.truncate(first);
            st.cache.truncate(first);
            st.trunc_caps.push_back((seq, first - 1));
            sh.durable.fetch_min(first - 1, Ordering::AcqRel);
            sh.bump_epoch();
            Some(plan)
        } else {
            None
        };
        let a = st.index.active();
        let start = (a.sid, a.first_index, a.end_pos);
        let mut rolls = Vec::new();
        for (k, b) in entries.iter().enumerate() {
            if let Some((sealed, new_first, new_sid)) =
                st.index.push(b, sh.opts.segment_bytes, &mut st.next_sid)
            {
                rolls.push(RollPlan {
                    at: k,
                    sealed,
                    new_first,
                    new_sid,
                });
            }
            st.cache.push(b.clone(), seq);
        }
        st.cache.evict(st.written_seq);
        let result = Durable {
            index: st.index.last_index,
            term: st.index.last_term(),
        };
        let kind = OpKind::Append {
            truncate,
            batches: entries,
            rolls,
            start,
        };
        Ok(self.enqueue(&mut guard, kind, bytes, result, blocking))
    }

    /// Queues an operation; called with the state lock held so that queue
    /// order is planning order. `blocking`: the caller will wait for it on
    /// the blocking path (and lead the round itself if nobody holds the
    /// write turn then); otherwise the writer thread gets the turn if
    /// nobody holds it.
    fn enqueue(
        &self,
        st: &mut State,
        kind: OpKind,
        bytes: usize,
        result: Durable,
        blocking: bool,
    ) -> (u64, Completion) {
        let sh = &self.shared;
        let seq = st.next_seq;
        st.next_seq += 1;
        st.pending_bytes += bytes;
        let (tx, rx) = pair();
        let mut q = sh.lock_queue();
        q.ops.push_back(Op {
            seq,
            kind,
            bytes,
            result,
            done: Some(tx),
            leads: false,
        });
        q.bytes += bytes;
        if !q.busy {
            if !blocking {
                give_writer_turn(sh, &mut q);
            }
        } else if q.writer_turn && q.idle {
            // The writer thread is gathering writes for its round.
            q.idle = false;
            sh.queue_cv.notify_one();
        }
        (seq, rx)
    }

    /// Removes entries `from_index..`. Resolves once the removal is durable.
    /// Truncating past the end is a no-op (a barrier).
    pub fn truncate_suffix(&self, from_index: u64) -> Completion {
        let sh = &self.shared;
        let mut guard = sh.lock_state();
        if let Err(e) = self.check_open(&guard) {
            return Completion::ready(Err(e));
        }
        let st = &mut *guard;
        if from_index <= st.index.floor.index {
            return Completion::ready(Err(LogError::Compacted {
                index: from_index,
                first_index: st.index.first_index(),
            }));
        }
        if from_index > st.index.last_index {
            let result = Durable {
                index: st.index.last_index,
                term: st.index.last_term(),
            };
            return self.enqueue(st, OpKind::Barrier, 0, result, false).1;
        }
        let seq = st.next_seq;
        let plan = st.index.truncate(from_index);
        st.cache.truncate(from_index);
        st.trunc_caps.push_back((seq, from_index - 1));
        sh.durable.fetch_min(from_index - 1, Ordering::AcqRel);
        sh.bump_epoch();
        let result = Durable {
            index: st.index.last_index,
            term: st.index.last_term(),
        };
        self.enqueue(st, OpKind::Truncate(plan), 0, result, false).1
    }

    /// Deletes whole segments whose entries are all `<= up_to_index` (never
    /// the active segment); `first_index()` moves to the first kept entry.
    /// Durable when it returns.
    pub fn purge_prefix(&self, up_to_index: u64) -> Result<()> {
        let sh = &self.shared;
        let done = {
            let mut guard = sh.lock_state();
            self.check_open(&guard)?;
            let st = &mut *guard;
            let removed = st.index.purge(up_to_index);
            if removed.is_empty() {
                return Ok(());
            }
            let first = st.index.first_index();
            st.cache.trim_front(first);
            sh.bump_epoch();
            let result = Durable {
                index: st.index.last_index,
                term: st.index.last_term(),
            };
            let kind = OpKind::Purge {
                floor: st.index.floor,
                remove: removed,
            };
            self.enqueue(st, kind, 0, result, true)
        };
        self.ticket(done.0, done.1).wait().map(|_| ())
    }

    /// Discards the whole log (a snapshot was installed): afterwards the log
    /// is empty, `first_index() == snapshot_index + 1`,
    /// `term(snapshot_index) == Some(snapshot_term)` and `next_offset() ==
    /// next_offset`. Durable when it returns.
    pub fn reset(&self, snapshot_index: u64, snapshot_term: u64, next_offset: u64) -> Result<()> {
        if snapshot_index == 0 && snapshot_term != 0 {
            return Err(LogError::invalid("a snapshot at index 0 must have term 0"));
        }
        if snapshot_index >= crate::MAX_INDEX {
            return Err(LogError::invalid("snapshot index out of range"));
        }
        let sh = &self.shared;
        let done = {
            let mut guard = sh.lock_state();
            self.check_open(&guard)?;
            let st = &mut *guard;
            let seq = st.next_seq;
            let floor = Floor {
                index: snapshot_index,
                term: snapshot_term,
                offset: next_offset,
            };
            let sid = st.next_sid;
            st.next_sid += 1;
            let removed = st.index.reset(floor, sid);
            st.cache.clear(snapshot_index + 1);
            st.trunc_caps.push_back((seq, snapshot_index));
            sh.durable.fetch_min(snapshot_index, Ordering::AcqRel);
            sh.bump_epoch();
            let result = Durable {
                index: snapshot_index,
                term: snapshot_term,
            };
            let kind = OpKind::Reset {
                floor,
                remove: removed,
                sid,
            };
            self.enqueue(st, kind, 0, result, true)
        };
        self.ticket(done.0, done.1).wait().map(|_| ())
    }

    /// A completion that resolves when everything submitted so far is
    /// durable.
    pub fn flush(&self) -> Completion {
        self.append(Vec::new())
    }

    // ---- durability -------------------------------------------------------

    /// The highest index such that it and every entry before it are
    /// durable. It only grows, except that a truncation below it lowers it
    /// to the truncation point when the truncation is submitted.
    pub fn durable_index(&self) -> u64 {
        self.shared.durable.load(Ordering::Acquire)
    }

    /// Registers a function called with the new durable index after each
    /// group commit (so that a driver learns of durability without one
    /// waiter per append). It runs on the thread that performed the group
    /// commit: the writer thread, or a caller of the blocking path leading
    /// it, before the commit's completions fire (a woken waiter finds the
    /// callback already called). Keep it short and non-blocking: it runs on
    /// the write path, before the next group commit can start.
    pub fn set_durable_callback(&self, f: impl Fn(u64) + Send + Sync + 'static) {
        *self
            .shared
            .on_durable
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(f));
    }

    /// Callers blocked in [`LogStore::append_and_wait`] (or
    /// [`AppendTicket::wait`]) whose writes wait for the group commit in
    /// progress to end (a gauge, for metrics and tests).
    pub fn waiting_writers(&self) -> usize {
        self.shared
            .lock_queue()
            .ops
            .iter()
            .filter(|o| o.leads)
            .count()
    }

    /// The error that failed the store, if it failed.
    pub fn failure(&self) -> Option<Arc<LogError>> {
        self.shared.failure()
    }

    // ---- reads ------------------------------------------------------------

    /// First index in the log (`snapshot index + 1` after a reset or purge).
    pub fn first_index(&self) -> u64 {
        self.shared.lock_state().index.first_index()
    }

    /// Last index in the log; `first_index() - 1` when empty.
    pub fn last_index(&self) -> u64 {
        self.shared.lock_state().index.last_index
    }

    /// Term of entry `index`, or of the snapshot point `first_index() - 1`.
    /// `Ok(None)` past the end; `Compacted` below the snapshot point.
    pub fn term(&self, index: u64) -> Result<Option<u64>> {
        let st = self.shared.lock_state();
        if index < st.index.floor.index {
            return Err(LogError::Compacted {
                index,
                first_index: st.index.first_index(),
            });
        }
        Ok(st.index.term(index))
    }

    /// The user offset the next record will take.
    pub fn next_offset(&self) -> u64 {
        self.shared.lock_state().index.next_offset()
    }

    /// The lowest user offset still in the log.
    pub fn first_offset(&self) -> u64 {
        self.shared.lock_state().index.first_offset()
    }

    /// Raft index of the entry holding user offset `offset`.
    pub fn index_of_offset(&self, offset: u64) -> Option<u64> {
        self.shared.lock_state().index.index_of_offset(offset)
    }

    /// Entries `lo..hi`, stopping before `max_bytes` would be exceeded but
    /// returning at least one entry when `lo < hi`.
    pub fn read(&self, lo: u64, hi: u64, max_bytes: usize) -> Result<Vec<Batch>> {
        self.read_inner(Some((lo, hi)), None, max_bytes)
    }

    /// The data batch holding user offset `offset`, and the data batches
    /// after it, up to `max_bytes` (at least one). Control entries are not
    /// returned. Empty when `offset >= next_offset()`.
    pub fn read_from_offset(&self, offset: u64, max_bytes: usize) -> Result<Vec<Batch>> {
        self.read_inner(None, Some(offset), max_bytes)
    }

    fn read_inner(
        &self,
        range: Option<(u64, u64)>,
        offset: Option<u64>,
        max_bytes: usize,
    ) -> Result<Vec<Batch>> {
        const OPTIMISTIC_TRIES: usize = 4;
        for attempt in 0.. {
            let st = self.shared.lock_state();
            let (lo, hi) = match (range, offset) {
                (Some((lo, hi)), _) => {
                    if lo < st.index.first_index() && lo < hi {
                        return Err(LogError::Compacted {
                            index: lo,
                            first_index: st.index.first_index(),
                        });
                    }
                    if hi > st.index.last_index + 1 {
                        return Err(LogError::Unavailable {
                            index: hi - 1,
                            last_index: st.index.last_index,
                        });
                    }
                    (lo, hi)
                }
                (None, Some(off)) => {
                    let first = st.index.first_offset();
                    if off < first {
                        return Err(LogError::OffsetCompacted {
                            offset: off,
                            first_offset: first,
                        });
                    }
                    match st.index.index_of_offset(off) {
                        Some(i) => (i, st.index.last_index + 1),
                        None => return Ok(Vec::new()),
                    }
                }
                (None, None) => return Ok(Vec::new()),
            };
            if lo >= hi {
                return Ok(Vec::new());
            }
            let parts = plan_read(&st, lo, hi, max_bytes, offset.is_some())?;
            let epoch = self.shared.epoch.load(Ordering::Acquire);
            let result = if attempt >= OPTIMISTIC_TRIES {
                // Under heavy truncation churn: read with the lock held.
                let r = self.execute_read(parts, offset.is_some());
                drop(st);
                return r;
            } else {
                drop(st);
                self.execute_read(parts, offset.is_some())
            };
            if self.shared.epoch.load(Ordering::Acquire) == epoch {
                return result;
            }
        }
        unreachable!("the read loop returns from its last attempt")
    }

    fn execute_read(&self, parts: Vec<Part>, data_only: bool) -> Result<Vec<Batch>> {
        let mut out = Vec::with_capacity(parts.len());
        for p in parts {
            match p {
                Part::Cached(b) => out.push(b),
                Part::Disk {
                    file,
                    seg_first,
                    start,
                    end,
                    first,
                    count,
                } => {
                    let path = self.shared.dir.join(segment_name(seg_first));
                    let len = (end - start) as usize;
                    let mut buf = BytesMut::zeroed(len);
                    let got = read_full_at(&*file, &mut buf, start)
                        .map_err(|e| LogError::io("read", &path, e))?;
                    if got != len {
                        return Err(LogError::corrupt(
                            &path,
                            start + got as u64,
                            format!(
                                "file ends {} bytes before the entries the index places there",
                                len - got
                            ),
                        ));
                    }
                    let mut bytes: Bytes = buf.freeze();
                    for k in 0..count {
                        let at = end - bytes.len() as u64;
                        let b = Batch::decode_front(&mut bytes)
                            .map_err(|e| LogError::corrupt(&path, at, e.to_string()))?;
                        if b.index() != first + k {
                            return Err(LogError::corrupt(
                                &path,
                                at,
                                format!(
                                    "found entry {} where entry {} belongs",
                                    b.index(),
                                    first + k
                                ),
                            ));
                        }
                        out.push(b);
                    }
                }
            }
        }
        if data_only {
            out.retain(|b| !b.kind().is_control() && b.record_count() > 0);
        }
        Ok(out)
    }

    /// Stops the writer after it has completed everything queued, and
    /// releases the directory.
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.lock_state().closed = true;
        {
            let mut q = self.shared.lock_queue();
            q.shutdown = true;
            self.shared.queue_cv.notify_all();
        }
        {
            let st = self.shared.lock_state();
            if st.room_waiters > 0 {
                self.shared.room.notify_all();
            }
        }
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl Drop for LogStore {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Checks entries against the log they would extend.
fn validate(ix: &LogIndex, entries: &[Batch]) -> Result<()> {
    let first = entries[0].index();
    if first <= ix.floor.index {
        return Err(LogError::Compacted {
            index: first,
            first_index: ix.first_index(),
        });
    }
    if first > ix.last_index + 1 {
        return Err(LogError::invalid(format!(
            "entry {first} would leave a gap after the last index {}",
            ix.last_index
        )));
    }
    let mut prev_term = ix.term(first - 1).unwrap_or(0);
    let mut next_offset = ix.end_offset_of(first - 1).unwrap_or(0);
    for (k, b) in entries.iter().enumerate() {
        let want = first + k as u64;
        if b.index() != want {
            return Err(LogError::invalid(format!(
                "entries are not contiguous: index {} where {want} was expected",
                b.index()
            )));
        }
        if b.term() < prev_term {
            return Err(LogError::invalid(format!(
                "entry {want} has term {}, below the term {prev_term} of the entry before it",
                b.term()
            )));
        }
        if b.base_offset() != next_offset {
            return Err(LogError::invalid(format!(
                "entry {want} has base offset {}, but offsets are dense and the next one is {next_offset}",
                b.base_offset()
            )));
        }
        prev_term = b.term();
        next_offset = b.end_offset();
    }
    Ok(())
}

/// Decides, under the state lock, where each entry of `lo..hi` comes from.
fn plan_read(st: &State, lo: u64, hi: u64, max_bytes: usize, data_only: bool) -> Result<Vec<Part>> {
    let mut parts = Vec::new();
    let mut total = 0usize;
    let mut i = lo;
    let cache_lo = st.cache.lo();
    'outer: while i < hi {
        if let Some(b) = st.cache.get(i) {
            let counts = !data_only || b.record_count() > 0;
            if counts && total > 0 && total + b.len() > max_bytes {
                break;
            }
            if counts {
                total += b.len();
            }
            parts.push(Part::Cached(b.clone()));
            i += 1;
            continue;
        }
        let Some((s, k)) = st.index.locate(i) else {
            return Err(LogError::Unavailable {
                index: i,
                last_index: st.index.last_index,
            });
        };
        let seg = &st.index.segs[s];
        let Some(file) = seg.file.clone() else {
            return Err(LogError::io(
                "read",
                segment_name(seg.first_index),
                std::io::Error::other("segment file not yet created for a written entry"),
            ));
        };
        let run_end = hi.min(seg.end_index()).min(cache_lo.max(i + 1));
        let start = seg.span(k).0;
        let mut end = start;
        let mut count = 0;
        let mut j = i;
        while j < run_end {
            let kk = (j - seg.first_index) as usize;
            let (a, b) = seg.span(kk);
            let len = (b - a) as usize;
            let counts = !data_only || seg.offsets(kk).1 > seg.offsets(kk).0;
            if counts && total > 0 && total + len > max_bytes {
                if count > 0 {
                    parts.push(Part::Disk {
                        file,
                        seg_first: seg.first_index,
                        start,
                        end,
                        first: i,
                        count,
                    });
                }
                break 'outer;
            }
            if counts {
                total += len;
            }
            end = b;
            count += 1;
            j += 1;
        }
        parts.push(Part::Disk {
            file,
            seg_first: seg.first_index,
            start,
            end,
            first: i,
            count,
        });
        i = j;
    }
    Ok(parts)
}
