//! The store's API against its contract: appends, reads, terms, offsets,
//! rolling, reopen, truncation, purge, reset, hard state, concurrency.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use keel_log::{HardState, LogError, LogOptions, LogStore};

#[test]
fn append_read_reopen_with_many_segments() {
    let dir = TempDir::new("keel-log").unwrap();
    let opts = small_opts();
    let mut g = Gen::new();
    let mut all = Vec::new();
    {
        let (s, rep) = open(dir.path(), &opts);
        assert_eq!(rep.last_index, 0);
        assert_eq!(
            (s.first_index(), s.last_index(), s.next_offset()),
            (1, 0, 0)
        );
        for _ in 0..40 {
            let batch = g.take(3);
            all.extend(batch.clone());
            let d = append_wait(&s, batch);
            assert_eq!(d.index, s.last_index());
        }
        assert_eq!(s.durable_index(), 120);
        assert_eq!(read_all(&s), all);
    }
    assert!(
        segment_files(dir.path()).len() > 5,
        "small segments must roll"
    );
    let (s, rep) = open(dir.path(), &opts);
    assert_eq!(rep.last_index, 120);
    assert!(rep.torn_tail.is_none());
    assert_eq!(
        rep.scanned.len(),
        1,
        "only the last segment is scanned: {:?}",
        rep.scanned
    );
    assert_eq!(read_all(&s), all);
    assert_eq!(s.next_offset(), g.next_offset);
    assert_eq!(s.durable_index(), 120);
    // Offsets: every record maps back to its entry.
    for b in &all {
        for o in b.base_offset()..b.end_offset() {
            assert_eq!(s.index_of_offset(o), Some(b.index()), "offset {o}");
        }
    }
    assert_eq!(s.index_of_offset(g.next_offset), None);
}

#[test]
fn missing_index_files_are_rebuilt_by_scanning() {
    let dir = TempDir::new("keel-log").unwrap();
    let opts = small_opts();
    let mut g = Gen::new();
    let all = {
        let (s, _) = open(dir.path(), &opts);
        append_wait(&s, g.take(60));
        read_all(&s)
    };
    let mut removed = 0;
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|e| e == "idx") {
            std::fs::remove_file(p).unwrap();
            removed += 1;
        }
    }
    assert!(removed > 2);
    let (s, rep) = open(dir.path(), &opts);
    assert_eq!(rep.rebuilt_indexes.len(), removed);
    assert_eq!(read_all(&s), all);
    drop(s);
    let (_, rep) = open(dir.path(), &opts);
    assert_eq!(rep.scanned.len(), 1);
}

#[test]
fn read_limits_and_ranges() {
    let dir = TempDir::new("keel-log").unwrap();
    let (s, _) = open(dir.path(), &small_opts());
    let mut g = Gen::new();
    append_wait(&s, g.take(20));
    let one = s.read(5, 21, 1).unwrap();
    assert_eq!(one.len(), 1, "at least one entry even past max_bytes");
    assert_eq!(one[0].index(), 5);
    let some = s.read(5, 21, 300).unwrap();
    assert!(!some.is_empty() && some.len() < 16);
    assert!(some.iter().map(|b| b.len()).sum::<usize>() <= 300 || some.len() == 1);
    assert!(s.read(5, 5, 100).unwrap().is_empty());
    assert!(matches!(
        s.read(5, 22, 100),
        Err(LogError::Unavailable { .. })
    ));
    assert!(matches!(s.read(0, 3, 100), Err(LogError::Compacted { .. })));
}

#[test]
fn read_from_offset_skips_control_entries() {
    let dir = TempDir::new("keel-log").unwrap();
    let (s, _) = open(dir.path(), &small_opts());
    let mut g = Gen::new();
    let a = g.next(3); // offsets 0..3, index 1
    let n = g.next(0); // no-op, index 2
    let b = g.next(2); // offsets 3..5, index 3
    append_wait(&s, vec![a.clone(), n, b.clone()]);
    assert_eq!(
        s.read_from_offset(0, 1 << 20).unwrap(),
        vec![a.clone(), b.clone()]
    );
    assert_eq!(
        s.read_from_offset(2, 1 << 20).unwrap(),
        vec![a.clone(), b.clone()]
    );
    assert_eq!(s.read_from_offset(3, 1 << 20).unwrap(), vec![b.clone()]);
    assert_eq!(s.read_from_offset(4, 1).unwrap(), vec![b]);
    assert!(s.read_from_offset(5, 1 << 20).unwrap().is_empty());
    assert_eq!(s.index_of_offset(3), Some(3));
}

#[test]
fn invalid_appends_are_rejected_and_change_nothing() {
    let dir = TempDir::new("keel-log").unwrap();
    let (s, _) = open(dir.path(), &small_opts());
    let mut g = Gen::new();
    append_wait(&s, g.take(5));
    let before = read_all(&s);
    let err = |v| s.append(v).wait().unwrap_err();
    // Gap after the last index.
    assert!(matches!(
        err(vec![entry(7, 1, g.next_offset, 1, 0)]),
        LogError::InvalidAppend { .. }
    ));
    // Not contiguous.
    let e6 = entry(6, 1, g.next_offset, 1, 0);
    let e8 = entry(8, 1, g.next_offset + 1, 1, 0);
    assert!(matches!(
        err(vec![e6.clone(), e8]),
        LogError::InvalidAppend { .. }
    ));
    // Term below the previous entry's.
    let mut h = g;
    h.term = 3;
    append_wait(&s, vec![h.next(1)]);
    let low = entry(7, 2, h.next_offset, 1, 0);
    assert!(matches!(err(vec![low]), LogError::InvalidAppend { .. }));
    // Offsets not dense.
    let gap = entry(7, 3, h.next_offset + 5, 1, 0);
    assert!(matches!(err(vec![gap]), LogError::InvalidAppend { .. }));
    // A replacement of entry 3 whose term is below entry 2's is refused too.
    assert_eq!(s.last_index(), 6);
    assert_eq!(&read_all(&s)[..5], &before[..]);
    // Before the start of the log.
    s.reset(10, 4, 100).unwrap();
    assert!(matches!(
        err(vec![entry(10, 4, 99, 1, 0)]),
        LogError::Compacted { .. }
    ));
}

#[test]
fn appending_over_the_suffix_truncates_it() {
    let dir = TempDir::new("keel-log").unwrap();
    let opts = small_opts();
    let mut g = Gen::new();
    let (s, _) = open(dir.path(), &opts);
    append_wait(&s, g.take(50));
    // A follower receives a conflicting entry 20 from term 2.
    let keep = s.read(1, 20, usize::MAX).unwrap();
    let mut f = Gen {
        next_index: 20,
        next_offset: keep.last().unwrap().end_offset(),
        term: 2,
        salt: 9,
    };
    let new = f.take(4);
    let d = append_wait(&s, new.clone());
    assert_eq!(d.index, 23);
    assert_eq!(s.last_index(), 23);
    assert_eq!(s.term(20).unwrap(), Some(2));
    assert_eq!(s.durable_index(), 23);
    let mut expect = keep.clone();
    expect.extend(new);
    assert_eq!(read_all(&s), expect);
    drop(s);
    let (s, rep) = open(dir.path(), &opts);
    assert!(rep.torn_tail.is_none());
    assert_eq!(read_all(&s), expect);
    // Standalone truncation.
    let d = s.truncate_suffix(10).wait().unwrap();
    assert_eq!(d.index, 9);
    assert_eq!(s.last_index(), 9);
    drop(s);
    let (s, _) = open(dir.path(), &opts);
    assert_eq!(read_all(&s), expect[..9].to_vec());
    // Truncate everything.
    s.truncate_suffix(1).wait().unwrap();
    assert_eq!(
        (s.first_index(), s.last_index(), s.next_offset()),
        (1, 0, 0)
    );
    drop(s);
    let (s, _) = open(dir.path(), &opts);
    assert_eq!(s.last_index(), 0);
    append_wait(&s, Gen::new().take(3));
    assert_eq!(s.last_index(), 3);
}

#[test]
fn purge_removes_whole_segments_and_survives_reopen() {
    let dir = TempDir::new("keel-log").unwrap();
    let opts = small_opts();
    let (s, _) = open(dir.path(), &opts);
    let mut g = Gen::new();
    append_wait(&s, g.take(80));
    let all = read_all(&s);
    let files = segment_files(dir.path()).len();
    s.purge_prefix(40).unwrap();
    let first = s.first_index();
    assert!(first > 1 && first <= 41, "first {first}");
    assert!(segment_files(dir.path()).len() < files);
    assert_eq!(s.term(first - 1).unwrap(), Some(1));
    assert!(matches!(
        s.read(first - 1, first, 10),
        Err(LogError::Compacted { .. })
    ));
    assert!(matches!(s.term(first - 2), Err(LogError::Compacted { .. })));
    assert_eq!(read_all(&s), all[(first - 1) as usize..].to_vec());
    assert!(matches!(
        s.read_from_offset(0, 10),
        Err(LogError::OffsetCompacted { .. })
    ));
    // Purging everything keeps the active segment.
    s.purge_prefix(1000).unwrap();
    assert_eq!(s.last_index(), 80);
    drop(s);
    let (s, _) = open(dir.path(), &opts);
    assert_eq!(s.last_index(), 80);
    let first = s.first_index();
    assert_eq!(read_all(&s), all[(first - 1) as usize..].to_vec());
    assert_eq!(s.term(first - 1).unwrap(), Some(1));
    append_wait(&s, g.take(3));
}

#[test]
fn reset_starts_an_empty_log_after_the_snapshot() {
    let dir = TempDir::new("keel-log").unwrap();
    let opts = small_opts();
    let (s, _) = open(dir.path(), &opts);
    append_wait(&s, Gen::new().take(30));
    s.reset(100, 7, 5000).unwrap();
    let check = |s: &LogStore| {
        assert_eq!(s.first_index(), 101);
        assert_eq!(s.last_index(), 100);
        assert_eq!(s.term(100).unwrap(), Some(7));
        assert_eq!(s.next_offset(), 5000);
        assert_eq!(s.durable_index(), 100);
    };
    check(&s);
    drop(s);
    let (s, _) = open(dir.path(), &opts);
    check(&s);
    assert_eq!(segment_files(dir.path()).len(), 1);
    let mut g = Gen {
        next_index: 101,
        next_offset: 5000,
        term: 7,
        salt: 1,
    };
    let e = g.take(5);
    append_wait(&s, e.clone());
    assert_eq!(read_all(&s), e);
    // Reset to a point inside the current log discards it all the same.
    s.reset(103, 7, 5003).unwrap();
    assert_eq!(s.last_index(), 103);
    assert!(s.read(104, 104, 10).unwrap().is_empty());
}

#[test]
fn hard_state_is_saved_and_reloaded() {
    let dir = TempDir::new("keel-log").unwrap();
    let opts = small_opts();
    {
        let (s, rep) = open(dir.path(), &opts);
        assert_eq!(rep.hard_state, HardState::default());
        s.save_hard_state(HardState { term: 5, vote: 2 }).unwrap();
        s.save_hard_state(HardState { term: 6, vote: 0 }).unwrap();
        assert_eq!(s.hard_state(), HardState { term: 6, vote: 0 });
    }
    let (s, rep) = open(dir.path(), &opts);
    assert_eq!(rep.hard_state, HardState { term: 6, vote: 0 });
    assert_eq!(s.hard_state(), HardState { term: 6, vote: 0 });
    assert!(!dir.path().join("hardstate.tmp").exists());
}

#[test]
fn a_second_opener_is_refused() {
    let dir = TempDir::new("keel-log").unwrap();
    let (s, _) = open(dir.path(), &small_opts());
    let err = LogStore::open(dir.path(), small_opts()).unwrap_err();
    assert!(matches!(err, LogError::Locked { .. }), "{err}");
    drop(s);
    let _again = open(dir.path(), &small_opts());
}

#[test]
fn completions_fire_in_order_and_the_callback_sees_durability() {
    let dir = TempDir::new("keel-log").unwrap();
    let (s, _) = open(dir.path(), &LogOptions::default());
    let seen = Arc::new(AtomicU64::new(0));
    let seen2 = seen.clone();
    s.set_durable_callback(move |i| {
        let prev = seen2.swap(i, Ordering::SeqCst);
        assert!(i >= prev, "durable index went back from {prev} to {i}");
    });
    let mut g = Gen::new();
    let comps: Vec<_> = (0..200).map(|_| s.append(vec![g.next(1)])).collect();
    let order = Arc::new(Mutex::new(Vec::new()));
    for c in comps {
        let d = c.wait().unwrap();
        order.lock().unwrap().push(d.index);
    }
    let order = order.lock().unwrap().clone();
    assert_eq!(order, (1..=200).collect::<Vec<_>>());
    assert_eq!(seen.load(Ordering::SeqCst), 200);
    assert_eq!(s.durable_index(), 200);
}

#[test]
fn concurrent_appenders_and_readers() {
    let dir = TempDir::new("keel-log").unwrap();
    let opts = LogOptions {
        segment_bytes: 16 << 10,
        cache_bytes: 4 << 10,
        ..LogOptions::default()
    };
    let (s, _) = open(dir.path(), &opts);
    let s = Arc::new(s);
    // Appends to one log are serialised by the caller (raft); here a mutex
    // hands out indexes, and the threads then wait concurrently.
    let ids = Arc::new(Mutex::new(Gen::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..2 {
        let s = s.clone();
        let stop = stop.clone();
        readers.push(std::thread::spawn(move || {
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let last = s.last_index();
                if last == 0 {
                    continue;
                }
                let lo = 1 + reads % last;
                let got = s.read(lo, last + 1, 64 << 10).unwrap();
                for (k, b) in got.iter().enumerate() {
                    assert_eq!(b.index(), lo + k as u64);
                }
                reads += 1;
            }
            reads
        }));
    }
    let mut writers = Vec::new();
    for _ in 0..8 {
        let s = s.clone();
        let ids = ids.clone();
        writers.push(std::thread::spawn(move || {
            for _ in 0..100 {
                let c = {
                    let mut g = ids.lock().unwrap();
                    s.append(vec![g.next(2)])
                };
                let d = c.wait().unwrap();
                assert!(s.durable_index() >= d.index);
            }
        }));
    }
    for w in writers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    assert_eq!(s.last_index(), 800);
    let all = read_all(&s);
    assert_eq!(all.len(), 800);
    let s = Arc::try_unwrap(s).unwrap();
    drop(s);
    let (s, _) = open(dir.path(), &opts);
    assert_eq!(read_all(&s), all);
}

#[test]
fn completion_is_a_future() {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};
    let dir = TempDir::new("keel-log").unwrap();
    let (s, _) = open(dir.path(), &small_opts());
    let c = s.append(Gen::new().take(2));
    let mut c = pin!(c);
    let mut cx = Context::from_waker(Waker::noop());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Poll::Ready(r) = c.as_mut().poll(&mut cx) {
            assert_eq!(r.unwrap().index, 2);
            break;
        }
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn batch_wait_gathers_writes() {
    let dir = TempDir::new("keel-log").unwrap();
    let opts = LogOptions {
        max_batch_wait: Duration::from_millis(20),
        ..LogOptions::default()
    };
    let (s, _) = open(dir.path(), &opts);
    let mut g = Gen::new();
    let t = std::time::Instant::now();
    let comps: Vec<_> = (0..10).map(|_| s.append(vec![g.next(1)])).collect();
    for c in comps {
        c.wait().unwrap();
    }
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(s.durable_index(), 10);
}

#[test]
fn open_rejects_bad_options() {
    let dir = TempDir::new("keel-log").unwrap();
    let opts = LogOptions {
        segment_bytes: 0,
        ..LogOptions::default()
    };
    assert!(matches!(
        LogStore::open(dir.path(), opts),
        Err(LogError::InvalidOptions(_))
    ));
}

#[test]
fn store_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<LogStore>();
    assert_send_sync::<keel_log::Completion>();
}

#[test]
fn readers_never_see_a_mix_of_old_and_new_entries_across_truncations() {
    // One thread keeps overwriting the suffix with entries of a higher term
    // while readers read from disk and cache; every read must be a
    // contiguous run whose terms never go down, each entry exactly as one
    // of the versions written (checked by its term-dependent salt).
    let dir = TempDir::new("keel-log").unwrap();
    let opts = LogOptions {
        segment_bytes: 2048,
        cache_bytes: 1024,
        ..LogOptions::default()
    };
    let (s, _) = open(dir.path(), &opts);
    let s = Arc::new(s);
    let mut g = Gen::new();
    g.salt = 1; // salt = term, for every version
    append_wait(&s, g.take(40));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (s, stop) = (s.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let last = s.last_index();
                    let lo = 1 + n % last.max(1);
                    match s.read(lo, last + 1, 1 << 20) {
                        Ok(v) => {
                            for (k, b) in v.iter().enumerate() {
                                assert_eq!(b.index(), lo + k as u64);
                                let expect = entry(
                                    b.index(),
                                    b.term(),
                                    b.base_offset(),
                                    b.record_count(),
                                    b.term() as u8,
                                );
                                assert_eq!(
                                    b,
                                    &expect,
                                    "entry {} is not a version that was written",
                                    b.index()
                                );
                            }
                            for w in v.windows(2) {
                                assert!(
                                    w[0].term() <= w[1].term(),
                                    "terms went down inside one read"
                                );
                                assert_eq!(w[0].end_offset(), w[1].base_offset());
                            }
                        }
                        // The range moved under the request: fine, retry.
                        Err(LogError::Unavailable { .. }) => {}
                        Err(e) => panic!("read failed: {e}"),
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    for round in 0..60u64 {
        let term = 2 + round;
        let last = s.last_index();
        let from = last.saturating_sub(5 + round % 7).max(1);
        let prev_end = if from == 1 {
            0
        } else {
            s.read(from - 1, from, 1).unwrap()[0].end_offset()
        };
        let mut g = Gen {
            next_index: from,
            next_offset: prev_end,
            term,
            salt: term as u8,
        };
        let n = 3 + (round % 9) as usize;
        let e: Vec<_> = (0..n).map(|_| g.next(1 + (round % 3) as u32)).collect();
        s.append(e).wait().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
}
