//! Failures at the I/O boundary, injected with `FaultFs`: a failed fsync or
//! write fails the store for good; a full disk fails only the writes that
//! hit it, leaves no partial record, and the store works again once space
//! is freed; short writes are completed.

mod common;

use std::time::Duration;

use common::*;
use keel_log::testing::{FaultFs, WriteFault};
use keel_log::{HardState, LogError, LogOptions, LogStore};

fn fault_opts(fs: &FaultFs, segment_bytes: u64) -> LogOptions {
    LogOptions {
        segment_bytes,
        cache_bytes: 0,
        fs: fs.as_fs(),
        ..LogOptions::default()
    }
}

fn wait(c: keel_log::Completion) -> Result<keel_log::Durable, LogError> {
    c.wait_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("completion did not resolve in 30 s"))
}

#[test]
fn a_failed_fsync_fails_the_store_for_good() {
    let dir = TempDir::new("keel-log").unwrap();
    let fs = FaultFs::new();
    let (s, _) = LogStore::open(dir.path(), fault_opts(&fs, 1 << 20)).unwrap();
    let mut g = Gen::new();
    let good = g.take(5);
    append_wait(&s, good.clone());
    fs.fail_sync_after(0);
    let err = wait(s.append(g.take(2))).unwrap_err();
    assert!(matches!(err, LogError::Failed { .. }), "{err}");
    assert!(err.to_string().contains("fsync"), "{err}");
    assert_eq!(
        s.durable_index(),
        5,
        "nothing after the failed fsync is durable"
    );
    // The fault is gone, but the store does not retry and carry on.
    fs.clear();
    let err = wait(s.append(g.take(1))).unwrap_err();
    assert!(matches!(err, LogError::Failed { .. }), "{err}");
    assert!(matches!(
        s.truncate_suffix(2).wait(),
        Err(LogError::Failed { .. })
    ));
    assert!(matches!(s.purge_prefix(3), Err(LogError::Failed { .. })));
    assert!(matches!(s.reset(9, 1, 9), Err(LogError::Failed { .. })));
    assert!(matches!(
        s.save_hard_state(HardState { term: 1, vote: 1 }),
        Err(LogError::Failed { .. })
    ));
    assert!(s.failure().is_some());
    // Reads continue.
    assert_eq!(s.read(1, 6, usize::MAX).unwrap(), good);
    drop(s);
    // A restart recovers from what is on disk: the last segment (the only
    // one written to) is read past the page cache, which may hold pages
    // whose fsync failed as if they were written.
    let before = fs.cache_drops().len();
    let (s, _) = LogStore::open(dir.path(), fault_opts(&fs, 1 << 20)).unwrap();
    assert!(s.last_index() >= 5);
    assert_eq!(s.read(1, 6, usize::MAX).unwrap(), good);
    assert_eq!(fs.cache_drops()[before..], [keel_log::segment_file_name(1)]);
}

#[test]
fn recovery_drops_the_cache_of_the_last_segment_only() {
    let dir = TempDir::new("keel-log").unwrap();
    let fs = FaultFs::new();
    let (s, _) = LogStore::open(dir.path(), fault_opts(&fs, 2048)).unwrap();
    let mut g = Gen::new();
    append_wait(&s, g.take(40));
    let last = s.last_index();
    drop(s);
    let before = fs.cache_drops().len();
    let (s, _) = LogStore::open(dir.path(), fault_opts(&fs, 2048)).unwrap();
    assert_eq!(s.last_index(), last);
    let drops = fs.cache_drops()[before..].to_vec();
    assert_eq!(drops.len(), 1, "{drops:?}");
    let mut segs: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".log"))
        .collect();
    segs.sort();
    assert!(segs.len() > 2, "{segs:?}");
    assert_eq!(&drops[0], segs.last().unwrap());
}

#[test]
fn a_failed_write_fails_the_store() {
    let dir = TempDir::new("keel-log").unwrap();
    let fs = FaultFs::new();
    fs.only_files_ending_with(Some(".log"));
    let (s, _) = LogStore::open(dir.path(), fault_opts(&fs, 1 << 20)).unwrap();
    let mut g = Gen::new();
    append_wait(&s, g.take(3));
    fs.fail_writes_after(10, WriteFault::Io);
    let err = wait(s.append(g.take(2))).unwrap_err();
    assert!(matches!(err, LogError::Failed { .. }), "{err}");
    fs.clear();
    assert!(matches!(
        wait(s.append(g.take(1))),
        Err(LogError::Failed { .. })
    ));
    assert_eq!(s.durable_index(), 3);
}

#[test]
fn a_full_disk_fails_the_write_leaves_no_partial_record_and_recovers() {
    let dir = TempDir::new("keel-log").unwrap();
    let fs = FaultFs::new();
    fs.only_files_ending_with(Some(".log"));
    let opts = fault_opts(&fs, 1 << 20);
    let (s, _) = LogStore::open(dir.path(), opts.clone()).unwrap();
    let mut g = Gen::new();
    let good = g.take(4);
    append_wait(&s, good.clone());
    let seg = dir.path().join(keel_log::segment_file_name(1));
    let len_before: u64 = good.iter().map(|b| b.len() as u64).sum();

    // The disk fills up in the middle of the next batch of entries.
    let retry = g;
    fs.fail_writes_after(30, WriteFault::NoSpace);
    let failed = g.take(3);
    let c1 = s.append(failed.clone());
    let err = wait(c1).unwrap_err();
    assert!(matches!(err, LogError::NoSpace { .. }), "{err}");
    assert!(err.to_string().contains("free disk space"), "{err}");
    assert_eq!(
        s.last_index(),
        4,
        "last_index is as before the failed write"
    );
    assert_eq!(s.durable_index(), 4);
    assert_eq!(
        std::fs::metadata(&seg).unwrap().len(),
        len_before,
        "partial record cut"
    );
    assert!(s.failure().is_none(), "ENOSPC does not fail the store");
    assert_eq!(keel_log::check(dir.path()).unwrap().torn_tail, None);

    // Writes queued behind the failing one fail too, still without damage.
    let mut h = retry;
    let a = s.append(h.take(1));
    let b = s.append(h.take(1));
    let ra = wait(a);
    let rb = wait(b);
    assert!(matches!(ra, Err(LogError::NoSpace { .. })), "{ra:?}");
    assert!(
        matches!(rb, Err(LogError::NoSpace { .. })) || rb.is_ok(),
        "{rb:?}"
    );
    assert_eq!(s.last_index(), 4);

    // Space is freed: the same entries go in.
    fs.free_space();
    let mut h = retry;
    let again = h.take(3);
    let d = wait(s.append(again.clone())).unwrap();
    assert_eq!(d.index, 7);
    let mut expect = good.clone();
    expect.extend(again);
    assert_eq!(read_all(&s), expect);
    drop(s);
    let (s, rep) = LogStore::open(dir.path(), opts).unwrap();
    assert!(rep.torn_tail.is_none());
    assert_eq!(read_all(&s), expect);
}

#[test]
fn a_full_disk_during_a_segment_roll_undoes_the_roll() {
    let dir = TempDir::new("keel-log").unwrap();
    let fs = FaultFs::new();
    fs.only_files_ending_with(Some(".log"));
    let opts = fault_opts(&fs, 600);
    let (s, _) = LogStore::open(dir.path(), opts.clone()).unwrap();
    let mut g = Gen::new();
    let good = g.take(6);
    append_wait(&s, good.clone());
    let files_before = segment_files(dir.path());
    let retry = g;
    // A batch large enough to roll at least once, failing after the roll.
    let big = g.take(12);
    let total: u64 = big.iter().map(|b| b.len() as u64).sum();
    fs.fail_writes_after(total - 20, WriteFault::NoSpace);
    let err = wait(s.append(big)).unwrap_err();
    assert!(matches!(err, LogError::NoSpace { .. }), "{err}");
    assert_eq!(s.last_index(), 6);
    assert_eq!(
        segment_files(dir.path()),
        files_before,
        "segments created by the failed write are gone"
    );
    let report = keel_log::check(dir.path()).unwrap();
    assert!(report.is_clean() && report.torn_tail.is_none(), "{report}");
    assert_eq!(report.last_index, 6);
    fs.free_space();
    let mut h = retry;
    let more = h.take(12);
    wait(s.append(more.clone())).unwrap();
    let mut expect = good;
    expect.extend(more);
    assert_eq!(read_all(&s), expect);
    drop(s);
    let (s, rep) = LogStore::open(dir.path(), opts).unwrap();
    assert!(rep.torn_tail.is_none());
    assert_eq!(read_all(&s), expect);
}

#[test]
fn short_writes_are_completed() {
    let dir = TempDir::new("keel-log").unwrap();
    let fs = FaultFs::new();
    fs.short_writes(true);
    let opts = fault_opts(&fs, 2048);
    let (s, _) = LogStore::open(dir.path(), opts.clone()).unwrap();
    let mut g = Gen::new();
    let mut all = Vec::new();
    for _ in 0..20 {
        let e = g.take(3);
        all.extend(e.clone());
        wait(s.append(e)).unwrap();
    }
    s.save_hard_state(HardState { term: 4, vote: 2 }).unwrap();
    let writes = fs.writes();
    drop(s);
    assert!(
        writes > 60,
        "short writes must have been retried ({writes} calls)"
    );
    fs.clear();
    let (s, rep) = LogStore::open(dir.path(), opts).unwrap();
    assert!(rep.torn_tail.is_none());
    assert_eq!(read_all(&s), all);
    assert_eq!(s.hard_state(), HardState { term: 4, vote: 2 });
}

#[test]
fn hard_state_failures() {
    let dir = TempDir::new("keel-log").unwrap();
    let fs = FaultFs::new();
    let (s, _) = LogStore::open(dir.path(), fault_opts(&fs, 1 << 20)).unwrap();
    s.save_hard_state(HardState { term: 2, vote: 1 }).unwrap();
    // Full disk: an error, the old hard state stays, the store works.
    fs.no_space();
    let err = s
        .save_hard_state(HardState { term: 3, vote: 1 })
        .unwrap_err();
    assert!(matches!(err, LogError::NoSpace { .. }), "{err}");
    assert_eq!(s.hard_state(), HardState { term: 2, vote: 1 });
    fs.free_space();
    append_wait(&s, Gen::new().take(2));
    // A failed fsync fails the store.
    fs.fail_sync_after(0);
    let err = s
        .save_hard_state(HardState { term: 4, vote: 1 })
        .unwrap_err();
    assert!(matches!(err, LogError::Failed { .. }), "{err}");
    assert!(matches!(
        wait(s.append(Vec::new())),
        Err(LogError::Failed { .. })
    ));
    drop(s);
    fs.clear();
    let (s, _) = LogStore::open(dir.path(), fault_opts(&fs, 1 << 20)).unwrap();
    assert_eq!(s.hard_state(), HardState { term: 2, vote: 1 });
    assert!(!dir.path().join("hardstate.tmp").exists());
}

#[test]
fn a_full_disk_during_purge_keeps_the_log() {
    let dir = TempDir::new("keel-log").unwrap();
    let fs = FaultFs::new();
    let opts = fault_opts(&fs, 600);
    let (s, _) = LogStore::open(dir.path(), opts.clone()).unwrap();
    let mut g = Gen::new();
    append_wait(&s, g.take(30));
    let all = read_all(&s);
    fs.no_space();
    let err = s.purge_prefix(20).unwrap_err();
    assert!(matches!(err, LogError::NoSpace { .. }), "{err}");
    assert_eq!(s.first_index(), 1);
    assert_eq!(read_all(&s), all);
    fs.free_space();
    s.purge_prefix(20).unwrap();
    assert!(s.first_index() > 1);
    append_wait(&s, g.take(2));
}

#[test]
fn a_full_disk_while_filling_ahead_with_zeros_fails_cleanly() {
    // Small appends get zeros written ahead of them; the disk fills up
    // during that filling, before any of the entry is written.
    let dir = TempDir::new("keel-log").unwrap();
    let fs = FaultFs::new();
    fs.only_files_ending_with(Some(".log"));
    let opts = fault_opts(&fs, 4 << 20);
    let (s, _) = LogStore::open(dir.path(), opts.clone()).unwrap();
    let seg = dir.path().join(keel_log::segment_file_name(1));
    let mut g = Gen::new();
    let retry = g;
    fs.fail_writes_after(10_000, WriteFault::NoSpace);
    let err = s.append_and_wait(g.take(2)).unwrap_err();
    assert!(matches!(err, LogError::NoSpace { .. }), "{err}");
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), 0, "zeros cut back");
    assert_eq!(s.last_index(), 0);
    fs.free_space();
    let mut h = retry;
    let e = h.take(2);
    assert_eq!(s.append_and_wait(e.clone()).unwrap().index, 2);
    // The space after the data was filled with zeros, which a copy taken
    // now (a crash) shows and open cuts.
    let len: u64 = e.iter().map(|b| b.len() as u64).sum();
    assert!(std::fs::metadata(&seg).unwrap().len() > len + 4096);
    let copy = TempDir::new("keel-log-copy").unwrap();
    std::fs::copy(&seg, copy.path().join(keel_log::segment_file_name(1))).unwrap();
    let (c, rep) = LogStore::open(copy.path(), LogOptions::default()).unwrap();
    assert!(rep.torn_tail.is_none());
    assert!(rep.zero_tail_bytes > 4096);
    assert_eq!(read_all(&c), e);
    drop(s);
    assert_eq!(
        std::fs::metadata(&seg).unwrap().len(),
        len,
        "trimmed on close"
    );
}
