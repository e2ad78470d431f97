//! The explicit repair: a directory open refuses is cut at its first bad
//! point, everything cut is kept in `repair-<n>/`, the result opens with
//! exactly the valid prefix; a clean directory is left untouched; repair
//! is idempotent; it refuses what it cannot fix.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use keel_format::Batch;
use keel_log::fs::Fs;
use keel_log::{HardState, LogError, LogOptions, RealFs, check, repair};

/// Every file in the directory tree (relative path → bytes).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_path_buf();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// A log of `n` entries in several segments (index files on the sealed
/// ones), closed cleanly.
fn build(dir: &Path, opts: &LogOptions, n: usize) -> Vec<Batch> {
    let (s, _) = open(dir, opts);
    let mut g = Gen::new();
    for _ in 0..n / 5 {
        s.append_and_wait(g.take(5)).unwrap();
    }
    s.save_hard_state(HardState { term: 1, vote: 2 }).unwrap();
    let all = read_all(&s);
    assert_eq!(all.len(), n);
    all
}

fn first_index_of(seg: &Path) -> u64 {
    seg.file_stem().unwrap().to_str().unwrap().parse().unwrap()
}

/// Byte position of entry `index` in its segment file.
fn position(all: &[Batch], seg_first: u64, index: u64) -> u64 {
    all[(seg_first - 1) as usize..(index - 1) as usize]
        .iter()
        .map(|b| b.len() as u64)
        .sum()
}

fn flip(path: &Path, at: u64) {
    let mut b = std::fs::read(path).unwrap();
    b[at as usize] ^= 0x40;
    std::fs::write(path, b).unwrap();
}

#[test]
fn mid_log_corruption_in_the_last_segment_is_cut_by_open_with_a_copy() {
    let dir = TempDir::new("keel-log").unwrap();
    let opts = LogOptions {
        segment_bytes: 4096,
        ..small_opts()
    };
    let all = build(dir.path(), &opts, 60);
    let segs = segment_files(dir.path());
    let last = segs.last().unwrap().clone();
    let first = first_index_of(&last);
    let last_index = all.len() as u64;
    assert!(
        last_index - first >= 4,
        "the last segment holds several entries"
    );
    // A later page persisted, an earlier one did not: entry first + 1 is
    // garbage, valid entries follow it. Nothing from there on was
    // acknowledged (the writer acknowledges in order, after fdatasync), so
    // it is the torn tail: check calls the directory clean, repair leaves
    // it to open, and open cuts it, keeping the bytes.
    let bad = first + 1;
    let cut = position(&all, first, bad);
    flip(&last, cut + 20);
    let original = std::fs::read(&last).unwrap();
    let report = check(dir.path()).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.torn_tail.as_ref().unwrap().offset, cut);
    let r = repair(dir.path()).unwrap();
    assert!(!r.repaired(), "{r}");
    assert_eq!(
        std::fs::read(&last).unwrap(),
        original,
        "repair changed nothing"
    );

    let (s, rep) = open(dir.path(), &opts);
    let t = rep.torn_tail.expect("a torn tail");
    assert_eq!((t.file.clone(), t.offset), (last.clone(), cut));
    let copy = t.copy.expect("the bytes cut are kept");
    assert_eq!(copy.parent().unwrap(), dir.path().join("torn-1"));
    assert_eq!(std::fs::read(&copy).unwrap(), original[cut as usize..]);
    assert_eq!(read_all(&s), all[..(bad - 1) as usize].to_vec());
    assert_eq!(s.hard_state(), HardState { term: 1, vote: 2 });
    drop(s);
    assert!(check(dir.path()).unwrap().is_clean());
    let (_, rep) = open(dir.path(), &opts);
    assert!(rep.torn_tail.is_none());
}

#[allow(non_snake_case)]
fn LogStore_open_err(dir: &Path, opts: &LogOptions) -> LogError {
    keel_log::LogStore::open(dir, opts.clone())
        .map(|_| ())
        .expect_err("open must refuse the directory")
}

#[test]
fn corruption_in_a_sealed_segment_removes_every_later_segment_and_index() {
    let dir = TempDir::new("keel-log").unwrap();
    let opts = LogOptions {
        segment_bytes: 2048,
        ..small_opts()
    };
    let all = build(dir.path(), &opts, 100);
    let segs = segment_files(dir.path());
    assert!(segs.len() >= 5, "{segs:?}");
    let victim = segs[2].clone();
    let first = first_index_of(&victim);
    let bad = first + 2;
    flip(&victim, position(&all, first, bad) + 30);
    // Its index file vouches for it, so open does not read it; without the
    // index file open scans it and refuses.
    let idx = victim.with_extension("idx");
    assert!(idx.exists());
    let idx_bytes = std::fs::read(&idx).unwrap();
    std::fs::remove_file(&idx).unwrap();
    let err = LogStore_open_err(dir.path(), &opts);
    assert!(matches!(err, LogError::Corrupt { .. }), "{err}");
    std::fs::write(&idx, &idx_bytes).unwrap();
    let before = snapshot(dir.path());

    let r = repair(dir.path()).unwrap();
    println!("{r}");
    assert_eq!(r.first_lost_index, bad);
    assert_eq!(r.last_lost_index, Some(all.len() as u64));
    assert_eq!(r.truncated.as_ref().unwrap().file, victim);
    // Removed: the victim's index file (it becomes the last segment), then
    // the later index files, then the later segments highest first.
    let removed: Vec<PathBuf> = r.removed.iter().map(|f| f.file.clone()).collect();
    let mut expect = vec![idx.clone()];
    for s in segs[3..].iter().rev() {
        let i = s.with_extension("idx");
        if before.contains_key(i.strip_prefix(dir.path()).unwrap()) {
            expect.push(i);
        }
    }
    expect.extend(segs[3..].iter().rev().cloned());
    assert_eq!(removed, expect);
    // Each moved file is byte for byte the original.
    for f in &r.removed {
        let rel = f.file.strip_prefix(dir.path()).unwrap();
        assert_eq!(std::fs::read(&f.backup).unwrap(), before[rel]);
        assert!(!f.file.exists());
        assert_eq!(f.bytes, before[rel].len() as u64);
    }
    let t = r.truncated.as_ref().unwrap();
    assert_eq!(
        std::fs::read(&t.backup).unwrap(),
        before[victim.strip_prefix(dir.path()).unwrap()]
    );
    assert_eq!(segment_files(dir.path()), segs[..3].to_vec());
    let (s, _) = open(dir.path(), &opts);
    assert_eq!(read_all(&s), all[..(bad - 1) as usize].to_vec());
    // The repaired log takes appends again.
    let mut g = Gen::after(&s);
    let more = g.take(7);
    s.append_and_wait(more.clone()).unwrap();
    let mut expect_all = all[..(bad - 1) as usize].to_vec();
    expect_all.extend(more);
    assert_eq!(read_all(&s), expect_all);
}

#[test]
fn a_missing_segment_cuts_the_log_before_the_gap() {
    let dir = TempDir::new("keel-log").unwrap();
    let opts = LogOptions {
        segment_bytes: 2048,
        ..small_opts()
    };
    let all = build(dir.path(), &opts, 100);
    let segs = segment_files(dir.path());
    assert!(segs.len() >= 5);
    let gone = first_index_of(&segs[2]);
    std::fs::remove_file(&segs[2]).unwrap();
    std::fs::remove_file(segs[2].with_extension("idx")).unwrap();
    let err = LogStore_open_err(dir.path(), &opts);
    assert!(matches!(err, LogError::MissingSegment { .. }), "{err}");

    let r = repair(dir.path()).unwrap();
    println!("{r}");
    assert!(r.truncated.is_none(), "no segment is cut inside");
    assert_eq!(r.first_lost_index, gone);
    assert_eq!(r.last_kept_index, gone - 1);
    assert_eq!(r.entries_lost(), Some(all.len() as u64 - gone + 1));
    assert!(
        r.removed
            .iter()
            .any(|f| f.file == segs[1].with_extension("idx")),
        "the new last segment's index file goes"
    );
    let (s, _) = open(dir.path(), &opts);
    assert_eq!(read_all(&s), all[..(gone - 1) as usize].to_vec());
}

#[test]
fn a_sealed_last_segment_loses_only_its_index_file() {
    // The successor of a sealed segment disappeared with everything after
    // it: nothing in the files is bad, but open refuses (entries are
    // missing). Repair removes the index file; how much was lost is
    // unknown.
    let dir = TempDir::new("keel-log").unwrap();
    let opts = LogOptions {
        segment_bytes: 2048,
        ..small_opts()
    };
    let all = build(dir.path(), &opts, 100);
    let segs = segment_files(dir.path());
    for s in &segs[3..] {
        std::fs::remove_file(s).unwrap();
        let _ = std::fs::remove_file(s.with_extension("idx"));
    }
    let kept_to = first_index_of(&segs[3]) - 1;
    assert!(matches!(
        LogStore_open_err(dir.path(), &opts),
        LogError::MissingSegment { .. }
    ));
    let r = repair(dir.path()).unwrap();
    println!("{r}");
    assert!(r.truncated.is_none());
    assert_eq!(r.removed.len(), 1);
    assert_eq!(r.removed[0].file, segs[2].with_extension("idx"));
    assert_eq!(r.first_lost_index, kept_to + 1);
    assert_eq!(r.entries_lost(), None, "unknown");
    assert!(r.to_string().contains("unknown"), "{r}");
    let (s, _) = open(dir.path(), &opts);
    assert_eq!(read_all(&s), all[..kept_to as usize].to_vec());
}

#[test]
fn a_clean_directory_or_a_torn_tail_is_left_untouched() {
    let dir = TempDir::new("keel-log").unwrap();
    let opts = small_opts();
    build(dir.path(), &opts, 40);
    let before = snapshot(dir.path());
    let r = repair(dir.path()).unwrap();
    assert!(!r.repaired());
    assert_eq!(r.entries_lost(), Some(0));
    assert!(r.to_string().contains("nothing to repair"), "{r}");
    assert_eq!(snapshot(dir.path()), before, "nothing changed");
    // A torn tail is for open to cut, not for repair.
    let last = segment_files(dir.path()).pop().unwrap();
    append_bytes(&last, &[7u8; 30]);
    let before = snapshot(dir.path());
    let r = repair(dir.path()).unwrap();
    assert!(!r.repaired());
    assert!(r.before.torn_tail.is_some());
    assert_eq!(snapshot(dir.path()), before, "nothing changed");
}

fn append_bytes(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

#[test]
fn repair_is_idempotent_and_numbers_its_backups() {
    let dir = TempDir::new("keel-log").unwrap();
    let opts = LogOptions {
        segment_bytes: 2048,
        ..small_opts()
    };
    let all = build(dir.path(), &opts, 100);
    let segs = segment_files(dir.path());
    let victim = segs[3].clone();
    let first = first_index_of(&victim);
    flip(&victim, position(&all, first, first + 1) + 25);
    std::fs::remove_file(victim.with_extension("idx")).unwrap();
    let r1 = repair(dir.path()).unwrap();
    assert!(r1.repaired());
    let after_first = snapshot(dir.path());
    let r2 = repair(dir.path()).unwrap();
    assert!(!r2.repaired(), "{r2}");
    assert_eq!(
        snapshot(dir.path()),
        after_first,
        "the second run changed nothing"
    );
    // Damage again: the next backup directory is a new one.
    let (s, _) = open(dir.path(), &opts);
    let mut g = Gen::after(&s);
    for _ in 0..10 {
        s.append_and_wait(g.take(3)).unwrap();
    }
    drop(s);
    let segs = segment_files(dir.path());
    let victim = segs[segs.len() - 2].clone();
    std::fs::remove_file(&victim).unwrap();
    let _ = std::fs::remove_file(victim.with_extension("idx"));
    let r3 = repair(dir.path()).unwrap();
    assert_eq!(r3.backup_dir, Some(dir.path().join("repair-2")));
    assert!(dir.path().join("repair-1").is_dir());
    open(dir.path(), &opts);
}

#[test]
fn repair_refuses_a_locked_directory_and_a_corrupt_hard_state() {
    let dir = TempDir::new("keel-log").unwrap();
    let opts = LogOptions {
        segment_bytes: 2048,
        ..small_opts()
    };
    let all = build(dir.path(), &opts, 60);
    let segs = segment_files(dir.path());
    let first = first_index_of(&segs[1]);
    flip(&segs[1], position(&all, first, first + 1) + 25);
    std::fs::remove_file(segs[1].with_extension("idx")).unwrap();
    let before = snapshot(dir.path());
    {
        let _held = RealFs.lock(&dir.path().join("LOCK")).unwrap();
        let err = repair(dir.path()).unwrap_err();
        assert!(matches!(err, LogError::Locked { .. }), "{err}");
    }
    assert_eq!(snapshot(dir.path()), before);
    // A corrupt hard state is never guessed at.
    let hs = dir.path().join("hardstate");
    flip(&hs, 3);
    let before = snapshot(dir.path());
    let err = repair(dir.path()).unwrap_err();
    assert!(matches!(err, LogError::Unrepairable { .. }), "{err}");
    assert!(err.to_string().contains("hardstate"), "{err}");
    assert_eq!(snapshot(dir.path()), before);
}

#[test]
fn a_log_whose_first_segment_is_missing_is_cut_to_empty() {
    let dir = TempDir::new("keel-log").unwrap();
    let opts = LogOptions {
        segment_bytes: 2048,
        ..small_opts()
    };
    let all = build(dir.path(), &opts, 60);
    let segs = segment_files(dir.path());
    std::fs::remove_file(&segs[0]).unwrap();
    let _ = std::fs::remove_file(segs[0].with_extension("idx"));
    let r = repair(dir.path()).unwrap();
    println!("{r}");
    assert_eq!(r.last_kept_index, 0);
    assert_eq!(r.first_lost_index, 1);
    assert_eq!(r.entries_lost(), Some(all.len() as u64));
    assert_eq!(
        segment_files(dir.path()),
        vec![dir.path().join(keel_log::segment_file_name(1))],
        "an empty first segment"
    );
    let (s, _) = open(dir.path(), &opts);
    assert_eq!((s.first_index(), s.last_index()), (1, 0));
    assert_eq!(s.hard_state(), HardState { term: 1, vote: 2 });
}
