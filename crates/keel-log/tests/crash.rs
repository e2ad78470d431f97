//! Crash and corruption: cut files at every byte, flip bits, delete
//! segments, feed hostile bytes. After reopening, only whole valid records
//! remain, everything durable before the damage is still there, and damage
//! that is not a torn tail is an error naming the file — never wrong data,
//! never a panic.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use keel_format::Batch;
use keel_log::{LogError, LogOptions, LogStore, check};

/// Copies the store's files (not the lock) into a fresh directory.
fn copy_dir(from: &Path) -> TempDir {
    let to = TempDir::new("keel-log-copy").unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap();
        if name == "LOCK" {
            continue;
        }
        std::fs::copy(&p, to.path().join(name)).unwrap();
    }
    to
}

fn try_read_all(store: &LogStore) -> Result<Vec<Batch>, LogError> {
    let lo = store.first_index();
    let hi = store.last_index() + 1;
    let mut out = Vec::new();
    let mut i = lo;
    while i < hi {
        let part = store.read(i, hi, 1 << 20)?;
        i += part.len() as u64;
        out.extend(part);
    }
    Ok(out)
}

/// Builds a log with several segments; returns its entries and, for the
/// last segment, the file length after each entry (durable boundaries).
fn build(dir: &Path, opts: &LogOptions, n: usize) -> (Vec<Batch>, PathBuf, Vec<u64>) {
    let (s, _) = open(dir, opts);
    let mut g = Gen::new();
    let mut all = Vec::new();
    for i in 0..n {
        let e = g.next(1 + (i % 4) as u32);
        append_wait(&s, vec![e.clone()]);
        all.push(e);
    }
    drop(s);
    let last = segment_files(dir).pop().unwrap();
    let first_in_last: u64 = last.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    let mut ends = vec![0];
    let mut pos = 0;
    for e in &all[(first_in_last - 1) as usize..] {
        pos += e.len() as u64;
        ends.push(pos);
    }
    (all, last, ends)
}

fn error_names(err: &LogError, file: &Path) -> bool {
    let name = file.file_name().unwrap().to_str().unwrap();
    err.to_string().contains(name)
}

#[test]
fn cutting_the_last_segment_at_every_byte_keeps_every_whole_record() {
    let dir = TempDir::new("keel-log").unwrap();
    let opts = LogOptions {
        segment_bytes: 2048,
        ..small_opts()
    };
    let (all, last, ends) = build(dir.path(), &opts, 40);
    let full = *ends.last().unwrap();
    let entries_before_last = all.len() - (ends.len() - 1);
    assert!(
        entries_before_last > 0,
        "the log must span several segments"
    );
    // Every byte within the last few records (and all of a small segment).
    let from = ends[ends.len().saturating_sub(5)];
    for cut in from..=full {
        let copy = copy_dir(dir.path());
        let seg = copy.path().join(last.file_name().unwrap());
        std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let whole = ends.iter().filter(|&&e| e <= cut).count() - 1;
        let boundary = ends.contains(&cut);
        let report = check(copy.path()).unwrap();
        assert!(report.is_clean(), "cut {cut}: {report}");
        assert_eq!(report.torn_tail.is_some(), !boundary, "cut {cut}: {report}");
        let (s, rep) = LogStore::open(copy.path(), opts.clone())
            .unwrap_or_else(|e| panic!("cut at {cut}: open failed: {e}"));
        assert_eq!(rep.torn_tail.is_some(), !boundary, "cut {cut}");
        if let Some(t) = &rep.torn_tail {
            assert_eq!(t.offset, ends[whole]);
            assert_eq!(t.bytes, cut - ends[whole]);
        }
        let expect = &all[..entries_before_last + whole];
        assert_eq!(s.last_index(), expect.len() as u64, "cut {cut}");
        assert_eq!(try_read_all(&s).unwrap(), expect, "cut {cut}");
        // The repaired store takes new appends where the cut left it.
        let mut g = Gen::after(&s);
        let new = g.next(2);
        append_wait(&s, vec![new.clone()]);
        drop(s);
        let (s, rep) = LogStore::open(copy.path(), opts.clone()).unwrap();
        assert!(
            rep.torn_tail.is_none(),
            "cut {cut}: the repair was not durable"
        );
        let mut want = expect.to_vec();
        want.push(new);
        assert_eq!(try_read_all(&s).unwrap(), want, "cut {cut}");
    }
}

#[test]
fn cutting_a_sealed_segment_is_corruption_not_a_torn_tail() {
    let dir = TempDir::new("keel-log").unwrap();
    let opts = small_opts();
    build(dir.path(), &opts, 30);
    let segs = segment_files(dir.path());
    assert!(segs.len() >= 3);
    let victim = &segs[1];
    let len = std::fs::metadata(victim).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(victim)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let err = LogStore::open(dir.path(), opts).unwrap_err();
    assert!(matches!(err, LogError::Corrupt { .. }), "{err}");
    assert!(error_names(&err, victim), "{err}");
    let report = check(dir.path()).unwrap();
    assert!(!report.is_clean());
    assert!(
        report.problems.iter().any(|p| &p.file == victim),
        "{report}"
    );
}

#[test]
fn random_bit_flips_are_errors_or_torn_tails_never_wrong_data() {
    let dir = TempDir::new("keel-log").unwrap();
    let opts = LogOptions {
        segment_bytes: 1500,
        ..small_opts()
    };
    let (all, _, _) = build(dir.path(), &opts, 30);
    {
        let (s, _) = open(dir.path(), &opts);
        s.save_hard_state(keel_log::HardState { term: 3, vote: 1 })
            .unwrap();
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap() != "LOCK")
        .collect();
    files.sort();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let (mut errors, mut torn, mut clean) = (0, 0, 0);
    for _ in 0..300 {
        let f = &files[(next() % files.len() as u64) as usize];
        let len = std::fs::metadata(f).unwrap().len();
        if len == 0 {
            continue;
        }
        let at = next() % len;
        let bit = next() % 8;
        let copy = copy_dir(dir.path());
        let target = copy.path().join(f.file_name().unwrap());
        let mut bytes = std::fs::read(&target).unwrap();
        bytes[at as usize] ^= 1 << bit;
        std::fs::write(&target, &bytes).unwrap();
        let is_index = f.extension().is_some_and(|e| e == "idx");
        match LogStore::open(copy.path(), opts.clone()) {
            Err(e) => {
                errors += 1;
                assert!(
                    matches!(
                        e,
                        LogError::Corrupt { .. } | LogError::MissingSegment { .. }
                    ),
                    "flip in {f:?} at {at}: unexpected error {e}"
                );
                assert!(
                    error_names(&e, &target) || matches!(e, LogError::MissingSegment { .. }),
                    "flip in {f:?}: error does not name the file: {e}"
                );
                let report = check(copy.path()).unwrap();
                assert!(
                    !report.is_clean(),
                    "check missed a flip that open refused: {e}"
                );
            }
            Ok((s, rep)) => {
                // Either the flip hit an index file (rebuilt), the torn
                // tail (cut), or a sealed segment's data that open did not
                // read because its index file vouched for it: then reading
                // it must fail, naming the file.
                if rep.torn_tail.is_some() {
                    torn += 1;
                } else {
                    clean += 1;
                }
                match try_read_all(&s) {
                    Ok(got) => {
                        assert!(got.len() <= all.len());
                        assert_eq!(&got[..], &all[..got.len()], "flip in {f:?} at {at}");
                        if rep.torn_tail.is_none() {
                            assert_eq!(got.len(), all.len(), "flip in {f:?} at {at} lost data");
                            assert!(is_index, "flip in {f:?} at {at} went unnoticed");
                        }
                    }
                    Err(e) => {
                        assert!(matches!(e, LogError::Corrupt { .. }), "{e}");
                        assert!(error_names(&e, &target), "{e}");
                        let report = check(copy.path()).unwrap();
                        assert!(!report.is_clean());
                    }
                }
            }
        }
    }
    eprintln!("bit flips: {errors} refused, {torn} torn tails cut, {clean} opened clean");
    assert!(
        errors > 0 && clean + torn > 0,
        "errors {errors}, torn {torn}, clean {clean}"
    );
}

#[test]
fn a_deleted_segment_is_an_error_never_a_gap() {
    let opts = small_opts();
    let dir = TempDir::new("keel-log").unwrap();
    build(dir.path(), &opts, 40);
    let segs = segment_files(dir.path());
    assert!(segs.len() >= 4);

    // Middle segment.
    let copy = copy_dir(dir.path());
    std::fs::remove_file(copy.path().join(segs[2].file_name().unwrap())).unwrap();
    let err = LogStore::open(copy.path(), opts.clone()).unwrap_err();
    assert!(matches!(err, LogError::MissingSegment { .. }), "{err}");
    assert!(error_names(&err, &segs[2]), "{err}");
    assert!(!check(copy.path()).unwrap().is_clean());

    // First segment.
    let copy = copy_dir(dir.path());
    std::fs::remove_file(copy.path().join(segs[0].file_name().unwrap())).unwrap();
    let err = LogStore::open(copy.path(), opts.clone()).unwrap_err();
    assert!(matches!(err, LogError::MissingSegment { .. }), "{err}");
    assert!(error_names(&err, &segs[0]), "{err}");

    // Last segment: the one before it was sealed, so it is missed.
    let copy = copy_dir(dir.path());
    let last = segs.last().unwrap();
    std::fs::remove_file(copy.path().join(last.file_name().unwrap())).unwrap();
    let err = LogStore::open(copy.path(), opts.clone()).unwrap_err();
    assert!(matches!(err, LogError::MissingSegment { .. }), "{err}");
    assert!(error_names(&err, last), "{err}");
    let report = check(copy.path()).unwrap();
    assert!(!report.is_clean(), "{report}");
}

#[test]
fn interrupted_truncation_and_purge_leave_a_valid_log() {
    let opts = small_opts();
    let dir = TempDir::new("keel-log").unwrap();
    let (all, _, _) = build(dir.path(), &opts, 40);
    let segs = segment_files(dir.path());
    // A truncation into segment 1 removes index files first, then segments
    // from the highest: a crash after removing the last two segments.
    let copy = copy_dir(dir.path());
    for s in &segs[1..] {
        let _ = std::fs::remove_file(
            copy.path()
                .join(s.with_extension("idx").file_name().unwrap()),
        );
    }
    for s in &segs[segs.len() - 2..] {
        std::fs::remove_file(copy.path().join(s.file_name().unwrap())).unwrap();
    }
    let (s, _) = LogStore::open(copy.path(), opts.clone()).unwrap();
    let got = try_read_all(&s).unwrap();
    assert!(got.len() < all.len());
    assert_eq!(&got[..], &all[..got.len()]);
    drop(s);

    // An interrupted purge: log.meta moved the floor, segments remain.
    let dir = TempDir::new("keel-log").unwrap();
    build(dir.path(), &opts, 40);
    let copy = copy_dir(dir.path());
    let (s, _) = open(dir.path(), &opts);
    s.purge_prefix(20).unwrap();
    let first = s.first_index();
    drop(s);
    std::fs::copy(dir.path().join("log.meta"), copy.path().join("log.meta")).unwrap();
    let (s, rep) = LogStore::open(copy.path(), opts.clone()).unwrap();
    assert_eq!(s.first_index(), first);
    assert!(!rep.removed.is_empty());
    assert_eq!(
        segment_files(copy.path()).len(),
        segment_files(dir.path()).len()
    );
}

#[test]
fn hostile_segment_bytes_are_errors_or_torn_tails_without_huge_allocations() {
    let opts = small_opts();
    let dir = TempDir::new("keel-log").unwrap();
    let (all, last, ends) = build(dir.path(), &opts, 12);
    let tail_start = *ends.last().unwrap();
    let mut header = all.last().unwrap().as_bytes()[..48].to_vec();

    // A header claiming 4 GiB at the tail: torn tail, nothing allocated.
    let copy = copy_dir(dir.path());
    header[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
    append_bytes(&copy.path().join(last.file_name().unwrap()), &header);
    let (s, rep) = LogStore::open(copy.path(), opts.clone()).unwrap();
    assert_eq!(rep.torn_tail.unwrap().offset, tail_start);
    assert_eq!(s.last_index(), all.len() as u64);
    drop(s);

    // A header claiming 60 MiB (a legal size) with the file ending: torn.
    let copy = copy_dir(dir.path());
    header[0..4].copy_from_slice(&(60u32 << 20).to_le_bytes());
    append_bytes(&copy.path().join(last.file_name().unwrap()), &header);
    let (_, rep) = LogStore::open(copy.path(), opts.clone()).unwrap();
    assert!(rep.torn_tail.is_some());

    // Zeros after the last record (preallocated space never written): cut,
    // and not reported as a torn write.
    let copy = copy_dir(dir.path());
    let seg = copy.path().join(last.file_name().unwrap());
    append_bytes(&seg, &[0u8; 4096]);
    assert!(check(copy.path()).unwrap().is_clean());
    let (s, rep) = LogStore::open(copy.path(), opts.clone()).unwrap();
    assert!(rep.torn_tail.is_none());
    assert_eq!(rep.zero_tail_bytes, 4096);
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), tail_start);
    assert_eq!(try_read_all(&s).unwrap(), all);
    drop(s);

    // A partial record followed by zeros is a torn write.
    let copy = copy_dir(dir.path());
    let seg = copy.path().join(last.file_name().unwrap());
    append_bytes(&seg, &all[0].as_bytes()[..30]);
    append_bytes(&seg, &[0u8; 100]);
    let (_, rep) = LogStore::open(copy.path(), opts.clone()).unwrap();
    assert_eq!(rep.torn_tail.unwrap().bytes, 130);

    // A torn batch whose payload embeds a valid batch (a client can put one
    // in a record): the torn tail all the same, not corruption.
    let copy = copy_dir(dir.path());
    let seg = copy.path().join(last.file_name().unwrap());
    header[0..4].copy_from_slice(&(60u32 << 10).to_le_bytes());
    append_bytes(&seg, &header);
    append_bytes(&seg, all[0].as_bytes());
    let (s, rep) = LogStore::open(copy.path(), opts.clone()).unwrap();
    assert_eq!(rep.torn_tail.unwrap().offset, tail_start);
    assert_eq!(try_read_all(&s).unwrap(), all);
    drop(s);

    // A wrong CRC on a record of the last segment followed by valid records
    // (a power loss kept a later page of the interrupted write, not an
    // earlier one): nothing from there on was acknowledged, so it is cut at
    // the exact byte, and the bytes cut are kept in a copy.
    let copy = copy_dir(dir.path());
    let seg = copy.path().join(last.file_name().unwrap());
    let mut bytes = std::fs::read(&seg).unwrap();
    if ends.len() > 2 {
        bytes[ends[0] as usize + 4] ^= 0xff;
        std::fs::write(&seg, &bytes).unwrap();
        let (s, rep) = LogStore::open(copy.path(), opts.clone()).unwrap();
        let t = rep.torn_tail.expect("a torn tail");
        assert_eq!(t.file, seg);
        assert_eq!(t.offset, ends[0]);
        let kept = std::fs::read(t.copy.as_ref().expect("a copy")).unwrap();
        assert_eq!(kept, bytes[ends[0] as usize..]);
        let got = try_read_all(&s).unwrap();
        assert!(got.len() < all.len());
        assert_eq!(&got[..], &all[..got.len()]);
        drop(s);
        // Opened again: nothing more to cut, the copy stays.
        let (_, rep) = LogStore::open(copy.path(), opts.clone()).unwrap();
        assert!(rep.torn_tail.is_none());
        assert!(t.copy.unwrap().exists());
    }

    // Valid records with terms going down: a typed error, not a torn tail.
    let dir2 = TempDir::new("keel-log").unwrap();
    std::fs::write(dir2.path().join(keel_log::segment_file_name(1)), {
        let mut v = entry(1, 5, 0, 1, 0).as_bytes().to_vec();
        v.extend_from_slice(entry(2, 4, 1, 1, 0).as_bytes());
        v
    })
    .unwrap();
    let err = LogStore::open(dir2.path(), opts.clone()).unwrap_err();
    assert!(matches!(err, LogError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("term"), "{err}");

    // Pure garbage in a segment file.
    let dir3 = TempDir::new("keel-log").unwrap();
    let garbage: Vec<u8> = (0..10_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(dir3.path().join(keel_log::segment_file_name(1)), &garbage).unwrap();
    match LogStore::open(dir3.path(), opts.clone()) {
        Ok((s, rep)) => {
            assert_eq!(s.last_index(), 0);
            assert!(rep.torn_tail.is_some());
        }
        Err(e) => assert!(matches!(e, LogError::Corrupt { .. }), "{e}"),
    }

    // A corrupt hard state names its file.
    let dir4 = TempDir::new("keel-log").unwrap();
    std::fs::write(
        dir4.path().join("hardstate"),
        b"not a hard state at all, no",
    )
    .unwrap();
    let err = LogStore::open(dir4.path(), opts).unwrap_err();
    assert!(err.to_string().contains("hardstate"), "{err}");
}

fn append_bytes(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

#[test]
fn check_reports_a_healthy_directory_and_its_numbers() {
    let opts = small_opts();
    let dir = TempDir::new("keel-log").unwrap();
    let (all, _, _) = build(dir.path(), &opts, 25);
    let r = check(dir.path()).unwrap();
    assert!(r.is_clean(), "{r}");
    assert_eq!(r.entries, 25);
    assert_eq!((r.first_index, r.last_index), (1, 25));
    assert_eq!(r.next_offset, all.last().unwrap().end_offset());
    assert!(r.torn_tail.is_none());
    assert!(
        r.segments
            .iter()
            .rev()
            .skip(1)
            .all(|s| s.index_file == keel_log::IndexFileStatus::Valid)
    );
    let text = r.to_string();
    assert!(text.contains("OK: no problems found"), "{text}");
    assert!(text.contains("25 entries"), "{text}");
}

#[test]
fn a_copy_taken_while_open_has_every_durable_entry() {
    // Like a crash: the files as they are while the store runs, with the
    // active segment's preallocated space after the data.
    let opts = LogOptions {
        segment_bytes: 64 << 10,
        ..small_opts()
    };
    let dir = TempDir::new("keel-log").unwrap();
    let (s, _) = open(dir.path(), &opts);
    let mut g = Gen::new();
    append_wait(&s, g.take(30));
    let all = read_all(&s);
    let copy = copy_dir(dir.path());
    drop(s);
    let (s, rep) = LogStore::open(copy.path(), opts).unwrap();
    assert!(rep.torn_tail.is_none());
    assert!(
        rep.zero_tail_bytes > 0,
        "the active segment was preallocated"
    );
    assert_eq!(try_read_all(&s).unwrap(), all);
}

#[test]
fn indexes_near_the_top_of_u64_are_refused_not_overflowed() {
    let opts = small_opts();
    let dir = TempDir::new("keel-log").unwrap();
    let top = u64::MAX;
    std::fs::write(
        dir.path().join(keel_log::segment_file_name(top)),
        entry(top, 1, 0, 1, 0).as_bytes(),
    )
    .unwrap();
    let err = LogStore::open(dir.path(), opts.clone()).unwrap_err();
    assert!(matches!(err, LogError::Corrupt { .. }), "{err}");
    assert!(!check(dir.path()).unwrap().is_clean());
    let (s, _) = open(TempDir::new("keel-log").unwrap().path(), &opts);
    assert!(s.reset(u64::MAX, 1, 0).is_err());
}

mod hostile {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]
        /// Valid batches with arbitrary bytes spliced in, as two segments
        /// and an index file: open and check return (Ok or a typed error),
        /// never panic, and an Ok store reads back only valid entries.
        #[test]
        fn arbitrary_files_never_panic(
            garbage in proptest::collection::vec(any::<u8>(), 0..300),
            at in 0usize..2000,
            idx_garbage in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let dir = TempDir::new("keel-log-hostile").unwrap();
            let mut g = Gen::new();
            let mut seg1 = Vec::new();
            for b in g.take(8) { seg1.extend_from_slice(b.as_bytes()); }
            let second = g.next_index;
            let mut seg2 = Vec::new();
            for b in g.take(8) { seg2.extend_from_slice(b.as_bytes()); }
            let cut = at.min(seg2.len());
            let mut hostile = seg2[..cut].to_vec();
            hostile.extend_from_slice(&garbage);
            hostile.extend_from_slice(&seg2[cut..]);
            std::fs::write(dir.path().join(keel_log::segment_file_name(1)), &seg1).unwrap();
            std::fs::write(dir.path().join(keel_log::index_file_name(1)), &idx_garbage).unwrap();
            std::fs::write(dir.path().join(keel_log::segment_file_name(second)), &hostile).unwrap();
            let _ = check(dir.path()).unwrap().to_string();
            if let Ok((s, _)) = LogStore::open(dir.path(), small_opts()) {
                let got = try_read_all(&s).unwrap();
                for (k, b) in got.iter().enumerate() {
                    prop_assert_eq!(b.index(), 1 + k as u64);
                }
            }
        }
    }
}
