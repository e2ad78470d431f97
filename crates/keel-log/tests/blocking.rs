//! The blocking write path (`append_and_wait`, `begin_append` +
//! `AppendTicket::wait`): the caller performs the group commit itself when
//! alone, callers arriving during a group commit join the next one (led by
//! the first of them), and everything stays in one order with the
//! asynchronous path, truncations, purge and reset, failures and ENOSPC.

mod common;

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use common::*;
use keel_format::Batch;
use keel_log::testing::{FaultFs, WriteFault};
use keel_log::{Durable, LogError, LogOptions, LogStore};

const LONG: Duration = Duration::from_secs(30);

fn fault_opts(fs: &FaultFs) -> LogOptions {
    LogOptions {
        segment_bytes: 1 << 20,
        cache_bytes: 0,
        fs: fs.as_fs(),
        ..LogOptions::default()
    }
}

/// Records the name of the thread each durable callback runs on.
fn record_callback_threads(s: &LogStore) -> Arc<Mutex<Vec<String>>> {
    let names = Arc::new(Mutex::new(Vec::new()));
    let n = names.clone();
    s.set_durable_callback(move |_| {
        let t = std::thread::current();
        n.lock()
            .unwrap()
            .push(t.name().unwrap_or("unnamed").to_owned());
    });
    names
}

/// Polls until `cond` holds; panics after 30 s.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + LONG;
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn bytes(entries: &[Batch]) -> u64 {
    entries.iter().map(|b| b.len() as u64).sum()
}

#[test]
fn an_uncontended_caller_commits_on_its_own_thread() {
    let dir = TempDir::new("keel-log").unwrap();
    let opts = small_opts();
    let (s, _) = open(dir.path(), &opts);
    let threads = record_callback_threads(&s);
    let me = std::thread::current().name().unwrap().to_owned();
    let mut g = Gen::new();
    let mut all = Vec::new();
    for k in 0..30 {
        let e = g.take(1 + k % 3);
        all.extend(e.clone());
        let d = s.append_and_wait(e).unwrap();
        assert_eq!(d.index, s.last_index());
        assert_eq!(s.durable_index(), d.index, "durable when it returns");
    }
    assert!(segment_files(dir.path()).len() > 3, "small segments roll");
    {
        let seen = threads.lock().unwrap();
        assert_eq!(seen.len(), 30, "one group commit per call");
        assert!(
            seen.iter().all(|t| *t == me),
            "an uncontended caller performs the write itself: {seen:?}"
        );
    }
    // The asynchronous path still goes through the writer thread.
    threads.lock().unwrap().clear();
    let e = g.take(2);
    all.extend(e.clone());
    append_wait(&s, e);
    // (The callback runs just after the completion resolves.)
    eventually("callback after the async append", || {
        !threads.lock().unwrap().is_empty()
    });
    assert_eq!(*threads.lock().unwrap(), vec!["keel-log-writer".to_owned()]);
    // A barrier on the blocking path.
    assert_eq!(s.append_and_wait(Vec::new()).unwrap().index, s.last_index());
    assert_eq!(read_all(&s), all);
    drop(s);
    let (s, rep) = open(dir.path(), &opts);
    assert!(rep.torn_tail.is_none());
    assert_eq!(read_all(&s), all);
}

#[test]
fn callers_arriving_during_a_commit_join_the_next_group_led_by_the_first() {
    let dir = TempDir::new("keel-log").unwrap();
    let fs = FaultFs::new();
    fs.only_files_ending_with(Some(".log"));
    let (s, _) = LogStore::open(dir.path(), fault_opts(&fs)).unwrap();
    let threads = record_callback_threads(&s);
    let mut g = Gen::new();
    let first = g.take(1);
    let joiners: Vec<Vec<Batch>> = (0..3).map(|_| g.take(2)).collect();
    let syncs_before = fs.syncs();
    fs.hold_syncs();
    std::thread::scope(|sc| {
        let leader = std::thread::Builder::new()
            .name("leader".into())
            .spawn_scoped(sc, || s.append_and_wait(first.clone()))
            .unwrap();
        assert!(fs.wait_for_held_syncs(1, LONG), "the leader syncs");
        // The order is fixed here; the waits run on their own threads.
        let tickets: Vec<_> = joiners
            .iter()
            .map(|e| s.begin_append(e.clone()).unwrap())
            .collect();
        let mut hs = Vec::new();
        for (k, t) in tickets.into_iter().enumerate() {
            hs.push(
                std::thread::Builder::new()
                    .name(format!("joiner-{k}"))
                    .spawn_scoped(sc, move || t.wait())
                    .unwrap(),
            );
            // Joiner k waits before joiner k + 1 starts.
            eventually("joiner waiting", || s.waiting_writers() == k + 1);
        }
        fs.release_syncs();
        assert_eq!(leader.join().unwrap().unwrap().index, 1);
        for (k, h) in hs.into_iter().enumerate() {
            let d = h.join().unwrap().unwrap();
            assert_eq!(d.index, 1 + 2 * (k as u64 + 1));
        }
    });
    assert_eq!(
        fs.syncs() - syncs_before,
        2,
        "the three joiners shared one fdatasync"
    );
    assert_eq!(
        *threads.lock().unwrap(),
        vec!["leader".to_owned(), "joiner-0".to_owned()],
        "the first joiner led the second group"
    );
    assert_eq!(s.durable_index(), 7);
    let mut all = first;
    all.extend(joiners.into_iter().flatten());
    assert_eq!(read_all(&s), all);
}

/// A waker that records, in the order completions fire, the index its
/// completion was for.
struct Recorder {
    index: u64,
    fired: Arc<Mutex<Vec<u64>>>,
}

impl Wake for Recorder {
    fn wake(self: Arc<Self>) {
        self.fired.lock().unwrap().push(self.index);
    }
}

#[test]
fn blocking_and_async_appends_interleave_in_one_order() {
    let dir = TempDir::new("keel-log").unwrap();
    let opts = LogOptions {
        segment_bytes: 8 << 10,
        cache_bytes: 2 << 10,
        ..LogOptions::default()
    };
    let (s, _) = open(dir.path(), &opts);
    let durable = Arc::new(AtomicU64::new(0));
    let d2 = durable.clone();
    s.set_durable_callback(move |i| {
        let prev = d2.swap(i, Ordering::SeqCst);
        assert!(i >= prev, "durable index went back from {prev} to {i}");
    });
    let ids = Mutex::new(Gen::new());
    // Indexes of asynchronous appends, and the order their completions
    // fired in.
    let async_sent = Mutex::new(BTreeSet::new());
    let fired = Arc::new(Mutex::new(Vec::new()));
    let threads = 6;
    let per_thread = 150;
    std::thread::scope(|sc| {
        for t in 0..threads {
            let (s, ids, async_sent, fired) = (&s, &ids, &async_sent, &fired);
            sc.spawn(move || {
                for k in 0..per_thread {
                    let mut g = ids.lock().unwrap();
                    let e = vec![g.next(1 + (k % 2) as u32)];
                    let index = e[0].index();
                    if (t + k) % 3 == 0 {
                        let mut c = s.append(e);
                        async_sent.lock().unwrap().insert(index);
                        // Register the recording waker while no later write
                        // can have been submitted (we hold the id lock).
                        let waker = Waker::from(Arc::new(Recorder {
                            index,
                            fired: fired.clone(),
                        }));
                        let mut cx = Context::from_waker(&waker);
                        let ready = Pin::new(&mut c).poll(&mut cx);
                        if ready.is_ready() {
                            // Already complete: record it before any later
                            // write can be submitted.
                            fired.lock().unwrap().push(index);
                        }
                        drop(g);
                        match ready {
                            Poll::Ready(r) => assert_eq!(r.unwrap().index, index),
                            Poll::Pending => {
                                assert_eq!(c.wait().unwrap().index, index);
                                assert!(s.durable_index() >= index);
                            }
                        }
                    } else {
                        let ticket = s.begin_append(e).unwrap();
                        drop(g);
                        let d = ticket.wait().unwrap();
                        assert_eq!(d.index, index);
                        assert!(s.durable_index() >= index);
                        // Every asynchronous append submitted before this
                        // one has completed.
                        let sent = async_sent.lock().unwrap();
                        let fired = fired.lock().unwrap();
                        let fired: BTreeSet<u64> = fired.iter().copied().collect();
                        for i in sent.range(..index) {
                            assert!(
                                fired.contains(i),
                                "blocking append {index} returned before async append {i} completed"
                            );
                        }
                    }
                }
            });
        }
    });
    // The last wakers may still be running on the thread that completed
    // them.
    let sent = async_sent.lock().unwrap().len();
    eventually("every async completion fired", || {
        fired.lock().unwrap().len() >= sent
    });
    let fired = fired.lock().unwrap().clone();
    assert_eq!(fired.len(), sent);
    assert!(
        fired.windows(2).all(|w| w[0] < w[1]),
        "async completions fired out of order"
    );
    let n = (threads * per_thread) as u64;
    assert_eq!(s.last_index(), n);
    assert_eq!(s.durable_index(), n);
    assert_eq!(durable.load(Ordering::SeqCst), n);
    let all = read_all(&s);
    drop(s);
    let (s, _) = open(dir.path(), &opts);
    assert_eq!(read_all(&s), all);
}

#[test]
fn an_async_write_submitted_earlier_completes_before_a_blocking_one_returns() {
    let dir = TempDir::new("keel-log").unwrap();
    let (s, _) = open(dir.path(), &small_opts());
    let mut g = Gen::new();
    for _ in 0..50 {
        let c = s.append(g.take(2));
        let t = s.truncate_suffix(g.next_index - 1);
        g.next_index -= 1;
        g.next_offset = s.next_offset();
        let d = s.append_and_wait(g.take(1)).unwrap();
        assert!(c.is_ready() && t.is_ready(), "earlier completions first");
        assert_eq!(c.wait().unwrap().index, d.index);
        assert_eq!(t.wait().unwrap().index, d.index - 1);
    }
    // And the other way round: a ticket waited after a later async append.
    let t = s.begin_append(g.take(1)).unwrap();
    let c = s.append(g.take(1));
    let dt = t.wait().unwrap();
    assert_eq!(c.wait().unwrap().index, dt.index + 1);
}

#[test]
fn blocking_writes_serialise_with_truncation_purge_and_reset() {
    let dir = TempDir::new("keel-log").unwrap();
    let opts = small_opts();
    let (s, _) = open(dir.path(), &opts);
    let mut g = Gen::new();
    let first = g.take(20);
    s.append_and_wait(first.clone()).unwrap();
    // An unwaited truncation, then a blocking append over the cut.
    let cut = s.truncate_suffix(15);
    let mut h = Gen {
        next_index: 15,
        next_offset: first[13].end_offset(),
        term: 2,
        salt: 7,
    };
    let second = h.take(10);
    let d = s.append_and_wait(second.clone()).unwrap();
    assert!(cut.is_ready());
    assert_eq!(d, Durable { index: 24, term: 2 });
    // A blocking append that overwrites a suffix itself.
    let mut k = Gen {
        next_index: 20,
        next_offset: second[4].end_offset(),
        term: 3,
        salt: 9,
    };
    let third = k.take(6);
    let d = s.append_and_wait(third.clone()).unwrap();
    assert_eq!(d, Durable { index: 25, term: 3 });
    assert_eq!(s.durable_index(), 25);
    let mut expect: Vec<Batch> = first[..14].to_vec();
    expect.extend_from_slice(&second[..5]);
    expect.extend_from_slice(&third);
    assert_eq!(read_all(&s), expect);
    // Purge and reset take the blocking path too.
    s.purge_prefix(10).unwrap();
    let kept_from = s.first_index();
    assert!(kept_from > 1);
    assert_eq!(read_all(&s), expect[(kept_from - 1) as usize..].to_vec());
    s.reset(40, 5, 1000).unwrap();
    let mut r = Gen {
        next_index: 41,
        next_offset: 1000,
        term: 5,
        salt: 3,
    };
    let after = r.take(4);
    assert_eq!(s.append_and_wait(after.clone()).unwrap().index, 44);
    drop(s);
    let (s, rep) = open(dir.path(), &opts);
    assert!(rep.torn_tail.is_none());
    assert_eq!(s.first_index(), 41);
    assert_eq!(read_all(&s), after);
}

#[test]
fn tickets_can_be_waited_out_of_order_or_dropped() {
    let dir = TempDir::new("keel-log").unwrap();
    let (s, _) = open(dir.path(), &small_opts());
    let mut g = Gen::new();
    let t1 = s.begin_append(g.take(2)).unwrap();
    let t2 = s.begin_append(g.take(2)).unwrap();
    // Waiting for the later one performs both.
    assert_eq!(t2.wait().unwrap().index, 4);
    assert_eq!(s.durable_index(), 4);
    assert_eq!(t1.wait().unwrap().index, 2);
    // A dropped ticket leaves its write to the writer thread.
    let t3 = s.begin_append(g.take(3)).unwrap();
    drop(t3);
    eventually("dropped ticket's write is performed", || {
        s.durable_index() == 7
    });
    assert_eq!(s.last_index(), 7);
    // Invalid entries are refused before anything is queued.
    let err = s.begin_append(vec![entry(99, 1, 0, 1, 0)]).unwrap_err();
    assert!(matches!(err, LogError::InvalidAppend { .. }), "{err}");
    assert_eq!(s.append_and_wait(g.take(1)).unwrap().index, 8);
}

#[test]
fn unwaited_tickets_cannot_deadlock_back_pressure() {
    let dir = TempDir::new("keel-log").unwrap();
    let opts = LogOptions {
        max_pending_bytes: 200,
        ..LogOptions::default()
    };
    let s = Arc::new(open(dir.path(), &opts).0);
    let mut g = Gen::new();
    let a = g.take(3);
    let b = g.take(3);
    assert!(bytes(&a) > 100 && bytes(&b) > 100);
    let (tx, rx) = std::sync::mpsc::channel();
    let s2 = s.clone();
    // Not scoped: if it deadlocks, the test fails instead of hanging.
    std::thread::spawn(move || {
        // The first ticket is not waited for while the second append needs
        // its room.
        let t = s2.begin_append(a).unwrap();
        let d = s2.append_and_wait(b).unwrap();
        let first = t.wait().unwrap();
        tx.send((first, d)).unwrap();
    });
    let (first, d) = rx
        .recv_timeout(LONG)
        .expect("an unwaited ticket blocked the queue");
    assert_eq!((first.index, d.index), (3, 6));
}

#[test]
fn a_failed_fsync_fails_a_group_with_its_joiners_and_everything_after() {
    let dir = TempDir::new("keel-log").unwrap();
    let fs = FaultFs::new();
    fs.only_files_ending_with(Some(".log"));
    let opts = fault_opts(&fs);
    let (s, _) = LogStore::open(dir.path(), opts.clone()).unwrap();
    let mut g = Gen::new();
    let good = g.take(2);
    s.append_and_wait(good.clone()).unwrap();
    let first = g.take(1);
    fs.hold_syncs();
    let (lead, joined, async_c, late) = std::thread::scope(|sc| {
        let leader = sc.spawn(|| s.append_and_wait(first.clone()));
        assert!(fs.wait_for_held_syncs(1, LONG));
        let t1 = s.begin_append(g.take(2)).unwrap();
        let t2 = s.begin_append(g.take(1)).unwrap();
        let c = s.append(g.take(1));
        let t3 = s.begin_append(g.take(2)).unwrap();
        let hs: Vec<_> = [t1, t2, t3]
            .into_iter()
            .map(|t| sc.spawn(move || t.wait()))
            .collect();
        eventually("joiners waiting", || s.waiting_writers() == 3);
        // The held sync (the leader's group) succeeds; the next one, the
        // joiners' group, fails.
        fs.fail_sync_after(0);
        fs.release_syncs();
        let lead = leader.join().unwrap();
        let joined: Vec<_> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        let late = s.append_and_wait(g.take(1));
        (lead, joined, c.wait(), late)
    });
    assert_eq!(lead.unwrap().index, 3);
    for r in joined {
        assert!(matches!(r, Err(LogError::Failed { .. })), "{r:?}");
    }
    assert!(
        matches!(async_c, Err(LogError::Failed { .. })),
        "{async_c:?}"
    );
    assert!(matches!(late, Err(LogError::Failed { .. })), "{late:?}");
    let err = s.failure().expect("the store failed");
    assert!(err.to_string().contains("fsync"), "{err}");
    assert_eq!(s.durable_index(), 3, "nothing after the failed fsync");
    drop(s);
    fs.clear();
    let (s, _) = LogStore::open(dir.path(), opts).unwrap();
    assert!(s.last_index() >= 3);
    let mut expect = good;
    expect.extend(first);
    assert_eq!(s.read(1, 4, usize::MAX).unwrap(), expect);
}

#[test]
fn a_failed_fsync_in_a_group_a_joiner_leads() {
    // Like the above, but the failing group is led by the first joiner
    // itself (the leader's group succeeded): its own result is the error.
    let dir = TempDir::new("keel-log").unwrap();
    let fs = FaultFs::new();
    fs.only_files_ending_with(Some(".log"));
    let (s, _) = LogStore::open(dir.path(), fault_opts(&fs)).unwrap();
    let threads = record_callback_threads(&s);
    let mut g = Gen::new();
    let first = g.take(1);
    fs.hold_syncs();
    std::thread::scope(|sc| {
        let leader = std::thread::Builder::new()
            .name("leader".into())
            .spawn_scoped(sc, || s.append_and_wait(first.clone()))
            .unwrap();
        assert!(fs.wait_for_held_syncs(1, LONG));
        let t1 = s.begin_append(g.take(1)).unwrap();
        let t2 = s.begin_append(g.take(1)).unwrap();
        let j1 = sc.spawn(move || t1.wait());
        eventually("first joiner waiting", || s.waiting_writers() == 1);
        let j2 = sc.spawn(move || t2.wait());
        eventually("second joiner waiting", || s.waiting_writers() == 2);
        fs.fail_sync_after(0);
        fs.release_syncs();
        assert!(leader.join().unwrap().is_ok());
        let r1 = j1.join().unwrap();
        let r2 = j2.join().unwrap();
        assert!(matches!(r1, Err(LogError::Failed { .. })), "{r1:?}");
        assert!(matches!(r2, Err(LogError::Failed { .. })), "{r2:?}");
    });
    assert_eq!(*threads.lock().unwrap(), vec!["leader".to_owned()]);
    assert_eq!(s.durable_index(), 1);
    assert!(s.failure().is_some());
}

#[test]
fn enospc_in_a_group_fails_the_write_that_hit_it_and_those_behind_it() {
    let dir = TempDir::new("keel-log").unwrap();
    let fs = FaultFs::new();
    fs.only_files_ending_with(Some(".log"));
    let opts = fault_opts(&fs);
    let (s, _) = LogStore::open(dir.path(), opts.clone()).unwrap();
    let mut g = Gen::new();
    let first = g.take(2);
    let ok = g.take(2);
    let retry = g;
    let full = g.take(3);
    let behind_async = g.take(1);
    let behind = g.take(1);
    fs.hold_syncs();
    let (r_first, r_ok, r_full, r_async, r_behind) = std::thread::scope(|sc| {
        let leader = sc.spawn(|| s.append_and_wait(first.clone()));
        assert!(fs.wait_for_held_syncs(1, LONG));
        let t_ok = s.begin_append(ok.clone()).unwrap();
        let t_full = s.begin_append(full.clone()).unwrap();
        let c = s.append(behind_async.clone());
        let t_behind = s.begin_append(behind.clone()).unwrap();
        let h_ok = sc.spawn(move || t_ok.wait());
        eventually("joiner waiting", || s.waiting_writers() == 1);
        let h_full = sc.spawn(move || t_full.wait());
        let h_behind = sc.spawn(move || t_behind.wait());
        eventually("joiners waiting", || s.waiting_writers() == 3);
        // The disk fills up 10 bytes into the second joiner's entries.
        fs.fail_writes_after(bytes(&ok) + 10, WriteFault::NoSpace);
        fs.release_syncs();
        (
            leader.join().unwrap(),
            h_ok.join().unwrap(),
            h_full.join().unwrap(),
            c.wait(),
            h_behind.join().unwrap(),
        )
    });
    assert_eq!(r_first.unwrap().index, 2);
    assert_eq!(r_ok.unwrap().index, 4);
    for r in [r_full, r_async, r_behind] {
        assert!(matches!(r, Err(LogError::NoSpace { .. })), "{r:?}");
    }
    assert!(s.failure().is_none(), "ENOSPC does not fail the store");
    assert_eq!(s.last_index(), 4);
    assert_eq!(s.durable_index(), 4);
    let seg = dir.path().join(keel_log::segment_file_name(1));
    assert_eq!(
        std::fs::metadata(&seg).unwrap().len(),
        bytes(&first) + bytes(&ok),
        "the partial write was cut off"
    );
    let mut expect = first;
    expect.extend(ok);
    assert_eq!(read_all(&s), expect);
    // Space is freed: the same entries go in on the blocking path.
    fs.free_space();
    let mut h = retry;
    let again = h.take(3);
    assert_eq!(s.append_and_wait(again.clone()).unwrap().index, 7);
    expect.extend(again);
    assert_eq!(read_all(&s), expect);
    drop(s);
    let (s, rep) = LogStore::open(dir.path(), opts).unwrap();
    assert!(rep.torn_tail.is_none());
    assert_eq!(read_all(&s), expect);
}

#[test]
fn concurrent_blocking_writers_share_fsyncs() {
    let dir = TempDir::new("keel-log").unwrap();
    let fs = FaultFs::new();
    let opts = LogOptions {
        segment_bytes: 32 << 10,
        cache_bytes: 8 << 10,
        fs: fs.as_fs(),
        ..LogOptions::default()
    };
    let (s, _) = LogStore::open(dir.path(), opts.clone()).unwrap();
    let ids = Mutex::new(Gen::new());
    let syncs_before = fs.syncs();
    let (threads, per_thread) = (16, 60);
    std::thread::scope(|sc| {
        for _ in 0..threads {
            sc.spawn(|| {
                for _ in 0..per_thread {
                    let mut g = ids.lock().unwrap();
                    let t = s.begin_append(vec![g.next(2)]).unwrap();
                    drop(g);
                    let d = t.wait().unwrap();
                    assert!(s.durable_index() >= d.index);
                    // Read back what was just made durable.
                    let got = s.read(d.index, d.index + 1, usize::MAX).unwrap();
                    assert_eq!(got[0].index(), d.index);
                }
            });
        }
    });
    let n = (threads * per_thread) as u64;
    let syncs = fs.syncs() - syncs_before;
    assert!(
        syncs < n,
        "{syncs} fdatasyncs for {n} appends: concurrent writers share them"
    );
    assert_eq!(s.durable_index(), n);
    let all = read_all(&s);
    assert_eq!(all.len() as u64, n);
    drop(s);
    let (s, _) = LogStore::open(dir.path(), opts).unwrap();
    assert_eq!(read_all(&s), all);
}

#[test]
fn a_panic_during_a_group_commit_fails_the_store_instead_of_hanging_it() {
    let dir = TempDir::new("keel-log").unwrap();
    let s = Arc::new(open(dir.path(), &small_opts()).0);
    let g = Arc::new(Mutex::new(Gen::new()));
    s.append_and_wait(g.lock().unwrap().take(1)).unwrap();
    s.set_durable_callback(|_| panic!("callback bug"));
    let (s2, g2) = (s.clone(), g.clone());
    let r = std::thread::spawn(move || {
        let e = g2.lock().unwrap().take(1);
        s2.append_and_wait(e)
    })
    .join();
    assert!(r.is_err(), "the panic reaches the leading caller");
    s.set_durable_callback(|_| {});
    // Not scoped: if the write turn was lost, fail instead of hanging.
    let (tx, rx) = std::sync::mpsc::channel();
    let (s2, g2) = (s.clone(), g.clone());
    std::thread::spawn(move || {
        let e = g2.lock().unwrap().take(1);
        tx.send(s2.append_and_wait(e)).unwrap()
    });
    let r = rx.recv_timeout(LONG).expect("the write turn was lost");
    assert!(matches!(r, Err(LogError::Failed { .. })), "{r:?}");
    let e = g.lock().unwrap().take(1);
    assert!(matches!(s.append(e).wait(), Err(LogError::Failed { .. })));
    assert!(s.failure().unwrap().to_string().contains("panicked"));
}
