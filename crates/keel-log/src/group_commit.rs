//! The write turn: who performs the rounds of the group commit.
//!
//! Two kinds of threads take the turn:
//! - the store's writer thread, for operations submitted asynchronously
//!   (`append`, `truncate_suffix`, `flush`): their submitters never block on
//!   I/O;
//! - a caller of the blocking path (`append_and_wait`, `AppendTicket::wait`,
//!   `purge_prefix`, `reset`): when no round is in progress it *leads* one
//!   itself, on its own thread (no hand-off to the writer thread and back),
//!   taking along everything queued so far, from either path. Callers that
//!   arrive while a round is in progress queue up; when that round ends,
//!   the first of them is handed the turn and leads the next round for all
//!   of them (a leader/follower write group, the idea of raft-engine's write
//!   barrier).
//!
//! The turn is a flag in the queue (`busy`). Whoever ends a round passes it
//! on: to the first blocked caller in the queue if there is one, else to the
//! writer thread if anything is queued, else to nobody. So rounds never
//! overlap, and completions fire in submission order across both paths (a
//! round completes its operations, in order, before the turn moves on).
//!
//! Who is responsible for a queued operation: while the turn is held, its
//! holder (it takes everything before passing the turn on). When the turn is
//! free, an asynchronous submission gives it to the writer thread at once; a
//! blocking submission leaves it free, because its caller takes it in
//! `wait`. Two places make sure a blocking write whose caller does not reach
//! `wait` still happens: dropping an unwaited ticket, and a submitter
//! waiting for queue room (back-pressure), give the turn to the writer
//! thread.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::completion::{Completion, Durable, Turn};
use crate::error::{LogError, Result};
use crate::store::{LogStore, Shared};
use crate::writer::{Op, Writer};

/// How long the writer thread spins for new work before it sleeps.
const SPIN: std::time::Duration = std::time::Duration::from_micros(30);

#[derive(Default)]
pub(crate) struct Queue {
    /// In submission (sequence) order.
    pub ops: VecDeque<Op>,
    pub bytes: usize,
    /// The write turn is taken: a round is in progress, or the turn was
    /// handed to a thread that is about to perform one.
    pub busy: bool,
    /// The turn is the writer thread's (implies `busy`).
    pub writer_turn: bool,
    /// The writer thread is asleep on `queue_cv`: notify it when giving it
    /// the turn, or when it gathers writes for a round.
    pub idle: bool,
    pub shutdown: bool,
}

impl Queue {
    /// Whether the operation `seq` is still waiting in the queue (ops leave
    /// only from the front, or all at once after ENOSPC).
    pub fn holds(&self, seq: u64) -> bool {
        self.ops.front().is_some_and(|o| o.seq <= seq)
            && self.ops.back().is_some_and(|o| o.seq >= seq)
    }

    /// Marks the queued operation `seq` as having (or no longer having) a
    /// blocked caller that can lead.
    pub fn set_leads(&mut self, seq: u64, leads: bool) {
        if let Ok(k) = self.ops.binary_search_by_key(&seq, |o| o.seq) {
            self.ops[k].leads = leads;
        }
    }
}

/// Gives the write turn to the writer thread.
pub(crate) fn give_writer_turn(sh: &Shared, q: &mut Queue) {
    q.busy = true;
    q.writer_turn = true;
    sh.writer_wanted.store(true, Ordering::Release);
    if q.idle {
        q.idle = false;
        sh.queue_cv.notify_one();
    }
}

/// Passes the write turn on after a round (called by its holder): to the
/// first blocked caller in the queue, else to the writer thread if anything
/// is queued, else to nobody.
pub(crate) fn pass_turn(sh: &Shared, q: &mut Queue) {
    q.writer_turn = false;
    if q.ops.is_empty() {
        q.busy = false;
        return;
    }
    if let Some(op) = q.ops.iter_mut().find(|o| o.leads) {
        // It leads the next round; it cannot be handed the turn twice.
        op.leads = false;
        if let Some(done) = &op.done {
            done.hand_lead();
        }
        q.busy = true;
        return;
    }
    give_writer_turn(sh, q);
}

/// Takes a round's worth of operations from the front of the queue (at
/// least one if any is queued, then up to `max_batch_bytes`).
pub(crate) fn take_round(sh: &Shared, q: &mut Queue) -> Vec<Op> {
    let mut ops = Vec::with_capacity(q.ops.len());
    let mut bytes = 0;
    while let Some(op) = q.ops.front() {
        if !ops.is_empty() && bytes + op.bytes > sh.opts.max_batch_bytes {
            break;
        }
        bytes += op.bytes;
        ops.extend(q.ops.pop_front());
    }
    q.bytes -= bytes;
    ops
}

/// Held by the thread performing rounds: if it unwinds (a panic in a round,
/// e.g. in the durable callback), the store is failed (its state is
/// unknown) and the turn passed on, so that waiting callers get an error
/// instead of waiting forever.
struct UnwindGuard<'a> {
    sh: &'a Shared,
}

impl Drop for UnwindGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.sh.set_failed(LogError::io(
                "group commit",
                &self.sh.dir,
                std::io::Error::other("a thread panicked while performing a group commit"),
            ));
            pass_turn(self.sh, &mut self.sh.lock_queue());
        }
    }
}

/// Locks the round-performing state (only the holder of the write turn
/// does, so the lock is never contended).
pub(crate) fn lock_writer(w: &Mutex<Writer>) -> MutexGuard<'_, Writer> {
    w.lock().unwrap_or_else(|p| p.into_inner())
}

/// The writer thread: performs rounds whenever it is given the turn, until
/// the store shuts down with nothing left to do.
pub(crate) fn writer_thread(sh: Arc<Shared>, writer: Arc<Mutex<Writer>>) {
    while let Some(ops) = writer_take(&sh) {
        let guard = UnwindGuard { sh: &sh };
        lock_writer(&writer).round(ops);
        std::mem::forget(guard);
        pass_turn(&sh, &mut sh.lock_queue());
    }
    lock_writer(&writer).trim_on_close();
}

/// Waits for the writer thread's turn and takes a round's worth.
fn writer_take(sh: &Shared) -> Option<Vec<Op>> {
    // An asynchronous submitter that just got its completion usually submits
    // again within microseconds: spin briefly before paying for a sleep and
    // a wake-up. Bounded, so an idle store costs nothing.
    if !sh.writer_wanted.load(Ordering::Acquire) {
        let t = std::time::Instant::now();
        'spin: while t.elapsed() < SPIN {
            for _ in 0..64 {
                std::hint::spin_loop();
                if sh.writer_wanted.load(Ordering::Acquire) {
                    break 'spin;
                }
            }
        }
    }
    let mut q = sh.lock_queue();
    while !q.writer_turn {
        if q.shutdown && !q.busy {
            if q.ops.is_empty() {
                return None;
            }
            // Left behind by a ticket that was never waited for nor
            // dropped (leaked): perform it before closing.
            q.busy = true;
            break;
        }
        q.idle = true;
        q = sh.queue_cv.wait(q).unwrap_or_else(|p| p.into_inner());
    }
    let wait = sh.opts.max_batch_wait;
    if !wait.is_zero() {
        let deadline = std::time::Instant::now() + wait;
        while q.bytes < sh.opts.max_batch_bytes && !q.shutdown {
            let now = std::time::Instant::now();
            if now >= deadline {
                break;
            }
            q.idle = true;
            q = sh
                .queue_cv
                .wait_timeout(q, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
    q.idle = false;
    q.writer_turn = false;
    sh.writer_wanted.store(false, Ordering::Release);
    Some(take_round(sh, &mut q))
}

/// A write queued by [`LogStore::begin_append`], waiting on the blocking
/// path: [`AppendTicket::wait`] performs the group commit on the calling
/// thread, or joins the one in progress. Its place in the log was fixed when
/// it was queued.
#[must_use = "wait() makes the write durable; dropping the ticket leaves it to the writer thread"]
pub struct AppendTicket<'a> {
    pub(crate) store: &'a LogStore,
    pub(crate) seq: u64,
    /// `None` once waited for.
    pub(crate) done: Option<Completion>,
}

impl std::fmt::Debug for AppendTicket<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppendTicket")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl AppendTicket<'_> {
    /// Blocks until the write (and everything submitted before it) is
    /// durable, performing the group commit on this thread when no other
    /// is in progress (see [`LogStore::append_and_wait`]).
    pub fn wait(mut self) -> Result<Durable> {
        let done = self
            .done
            .take()
            .expect("a ticket is waited for at most once: wait takes it by value");
        self.store.wait_blocking(self.seq, done)
    }
}

impl Drop for AppendTicket<'_> {
    fn drop(&mut self) {
        if self.done.is_none() {
            return;
        }
        // Never waited for: nobody would perform the write if no round is
        // in progress (the caller was to lead it). Give it to the writer
        // thread. (It was never marked as able to lead, so the turn cannot
        // have been handed to it.)
        let sh = &self.store.shared;
        let mut q = sh.lock_queue();
        if !q.busy && q.holds(self.seq) {
            give_writer_turn(sh, &mut q);
        }
    }
}

impl LogStore {
    /// Waits on the blocking path for the queued operation `seq`: leads a
    /// round if nobody holds the write turn, else joins the next group and
    /// leads it if handed the turn.
    fn wait_blocking(&self, seq: u64, done: Completion) -> Result<Durable> {
        let sh = &self.shared;
        let lead = {
            let mut q = sh.lock_queue();
            if !q.holds(seq) {
                // Already taken by a round in progress.
                false
            } else if !q.busy {
                q.busy = true;
                true
            } else {
                q.set_leads(seq, true);
                false
            }
        };
        if lead {
            self.lead_rounds(seq);
        }
        loop {
            match done.wait_or_lead() {
                Turn::Done(r) => return r,
                Turn::Lead => self.lead_rounds(seq),
            }
        }
    }

    /// Performs rounds on the calling thread (which holds the write turn)
    /// until the operation `seq` is done, then passes the turn on.
    fn lead_rounds(&self, seq: u64) {
        let sh = &self.shared;
        let guard = UnwindGuard { sh };
        let mut w = lock_writer(&self.core);
        let mut q = sh.lock_queue();
        loop {
            let ops = take_round(sh, &mut q);
            drop(q);
            let last = ops.last().map(|o| o.seq);
            if !ops.is_empty() {
                w.round(ops);
            }
            q = sh.lock_queue();
            // An empty queue without our operation: ENOSPC failed it along
            // with everything queued.
            if last.is_none_or(|l| l >= seq) {
                break;
            }
        }
        drop(w);
        std::mem::forget(guard);
        pass_turn(sh, &mut q);
    }
}
