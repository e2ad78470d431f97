//! A runtime-agnostic oneshot: the writer thread resolves it when a write is
//! durable; the submitter blocks on it (`wait`) or awaits it (`Future`).

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
            slot = self.shared.cv.wait(slot).unwrap_or_else(|p| p.into_inner());
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
            slot = self
                .shared
                .cv
                .wait_timeout(slot, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
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
            let waker = {
                let mut slot = shared.lock();
                slot.result = Some(outcome);
                slot.done = true;
                slot.waker.take()
            };
            shared.cv.notify_all();
            if let Some(w) = waker {
                w.wake();
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
