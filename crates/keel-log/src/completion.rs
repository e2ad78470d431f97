//! A runtime-agnostic oneshot: whoever performs the group commit (the writer
//! thread, or a caller of `append_and_wait` leading a write group) resolves
//! it when a write is durable; the submitter blocks on it (`wait`) or awaits
//! it (`Future`).
//!
//! The same slot carries the leadership handover of the blocking path: the
//! thread that ends a group commit may hand the next one to a blocked
//! caller (`Completer::hand_lead`), which wakes up in
//! `Completion::wait_or_lead` to perform it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::error::LogError;

/// Everything up to and including `index` (whose entry has `term`) is on
/// disk and fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durable {
    pub index: u64,
    pub term: u64,
}

type Outcome = Result<Durable, LogError>;

#[derive(Debug, Default)]
struct Slot {
    result: Option<Outcome>,
    waker: Option<Waker>,
    done: bool,
    /// The waiter must perform the next group commit (blocking path only).
    lead: bool,
    /// Threads asleep on the condvar: a completion notifies only if one is
    /// (std's condvar makes a futex syscall on every notify).
    sleepers: u32,
}

#[derive(Debug, Default)]
struct Shared {
    slot: Mutex<Slot>,
    cv: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sleep<'a>(&self, mut slot: MutexGuard<'a, Slot>) -> MutexGuard<'a, Slot> {
        slot.sleepers += 1;
        let mut slot = self.cv.wait(slot).unwrap_or_else(|p| p.into_inner());
        slot.sleepers -= 1;
        slot
    }
}

/// What a blocked caller of the blocking path is woken for.
pub(crate) enum Turn {
    /// Its write is done (or failed).
    Done(Outcome),
    /// It leads the next group commit.
    Lead,
}

/// Resolves when the write it was returned for is durable (or failed).
/// Completions resolve in the order their writes were submitted.
#[derive(Debug)]
#[must_use = "a Completion tells when the write is durable; wait for it or drop it knowingly"]
pub struct Completion {
    shared: Arc<Shared>,
}

/// The writer's end.
#[derive(Debug)]
pub(crate) struct Completer {
    shared: Option<Arc<Shared>>,
}

pub(crate) fn pair() -> (Completer, Completion) {
    let shared = Arc::new(Shared::default());
    (
        Completer {
            shared: Some(shared.clone()),
        },
        Completion { shared },
    )
}

impl Completion {
    /// A completion that is already resolved.
    pub(crate) fn ready(outcome: Outcome) -> Self {
        let (tx, rx) = pair();
        tx.complete(outcome);
        rx
    }

    /// Blocks the calling thread until the write is durable.
    pub fn wait(self) -> Outcome {
        let mut slot = self.shared.lock();
        loop {
            if let Some(r) = slot.result.take() {
                return r;
            }
            if slot.done {
                return Err(LogError::Closed);
            }
            slot = self.shared.sleep(slot);
        }
    }

    /// Blocks until the write is done or this waiter is handed the lead of
    /// the next group commit (the flag is consumed).
    pub(crate) fn wait_or_lead(&self) -> Turn {
        let mut slot = self.shared.lock();
        loop {
            if let Some(r) = slot.result.take() {
                return Turn::Done(r);
            }
            if slot.done {
                return Turn::Done(Err(LogError::Closed));
            }
            if slot.lead {
                slot.lead = false;
                return Turn::Lead;
            }
            slot = self.shared.sleep(slot);
        }
    }

    /// Like `wait`, giving up after `timeout` (returns the completion back).
    pub fn wait_timeout(self, timeout: Duration) -> Result<Outcome, Completion> {
        let deadline = std::time::Instant::now() + timeout;
        let mut slot = self.shared.lock();
        loop {
            if let Some(r) = slot.result.take() {
                return Ok(r);
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                drop(slot);
                return Err(self);
            }
            slot.sleepers += 1;
            slot = self
                .shared
                .cv
                .wait_timeout(slot, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            slot.sleepers -= 1;
        }
    }

    /// True once the outcome is known (and not yet taken).
    pub fn is_ready(&self) -> bool {
        self.shared.lock().result.is_some()
    }
}

impl Future for Completion {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let mut slot = self.shared.lock();
        if let Some(r) = slot.result.take() {
            return Poll::Ready(r);
        }
        if slot.done {
            return Poll::Ready(Err(LogError::Closed));
        }
        match &slot.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Completer {
    pub fn complete(mut self, outcome: Outcome) {
        if let Some(shared) = self.shared.take() {
            let (waker, sleeping) = {
                let mut slot = shared.lock();
                slot.result = Some(outcome);
                slot.done = true;
                (slot.waker.take(), slot.sleepers > 0)
            };
            if sleeping {
                shared.cv.notify_all();
            }
            if let Some(w) = waker {
                w.wake();
            }
        }
    }

    /// Asks the (blocked) waiter to perform the next group commit.
    pub fn hand_lead(&self) {
        if let Some(shared) = &self.shared {
            let sleeping = {
                let mut slot = shared.lock();
                slot.lead = true;
                slot.sleepers > 0
            };
            if sleeping {
                shared.cv.notify_all();
            }
        }
    }
}

impl Drop for Completer {
    fn drop(&mut self) {
        if self.shared.is_some() {
            let this = Completer {
                shared: self.shared.take(),
            };
            this.complete(Err(LogError::Closed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Wake;

    struct Flag(std::sync::atomic::AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn wait_across_threads() {
        let (tx, rx) = pair();
        let t = std::thread::spawn(move || rx.wait());
        std::thread::sleep(Duration::from_millis(10));
        tx.complete(Ok(Durable { index: 5, term: 1 }));
        assert_eq!(t.join().unwrap().unwrap().index, 5);
    }

    #[test]
    fn future_is_woken() {
        let (tx, mut rx) = pair();
        let flag = Arc::new(Flag(Default::default()));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut rx).poll(&mut cx).is_pending());
        tx.complete(Ok(Durable { index: 1, term: 1 }));
        assert!(flag.0.load(std::sync::atomic::Ordering::SeqCst));
        assert!(matches!(
            Pin::new(&mut rx).poll(&mut cx),
            Poll::Ready(Ok(_))
        ));
    }

    #[test]
    fn dropped_completer_reports_closed() {
        let (tx, rx) = pair();
        drop(tx);
        assert!(matches!(rx.wait(), Err(LogError::Closed)));
    }
}
