//! The crash simulation used by the real-process fault tests (feature
//! `fault-injection`): sync records beside each segment, and the cut that
//! loses whatever the last completed fdatasync did not cover.
//! Run with `cargo test -p keel-log --features fault-injection --test sync_record`.
#![cfg(feature = "fault-injection")]

mod common;

use std::io::IoSlice;
use std::path::Path;

use common::*;
use keel_log::sync_record::{SyncRecordFs, cut_to_synced, read_synced_len};
use keel_log::{Fs, LogOptions, OpenMode};

fn opts(skip: bool) -> LogOptions {
    LogOptions {
        segment_bytes: 1024,
        cache_bytes: 0,
        fs: SyncRecordFs::new_arc(skip),
        ..LogOptions::default()
    }
}

/// What a kill -9 leaves: the files as they are (the page cache survives a
/// process), taken while the store still runs.
fn crash_image(dir: &Path, tag: &str) -> TempDir {
    let img = TempDir::new_in(None, tag).unwrap();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, img.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    img
}

#[test]
fn acknowledged_appends_survive_the_cut() {
    let dir = TempDir::new_in(None, "syncrec-ok").unwrap();
    let (store, _) = open(dir.path(), &opts(false));
    let mut g = Gen::new();
    let mut all = Vec::new();
    for _ in 0..10 {
        let batch = g.take(7);
        all.extend(batch.clone());
        append_wait(&store, batch);
    }
    let img = crash_image(dir.path(), "syncrec-ok-img");
    std::mem::forget(store);
    cut_to_synced(img.path()).unwrap();
    let (reopened, _) = open(img.path(), &opts(false));
    let got = read_all(&reopened);
    assert_eq!(got.len(), all.len(), "a synced entry was lost by the cut");
    for (a, b) in got.iter().zip(&all) {
        assert_eq!(a.as_bytes(), b.as_bytes());
    }
}

#[test]
fn bytes_written_after_the_last_sync_are_cut() {
    let dir = TempDir::new_in(None, "syncrec-cut").unwrap();
    let fs = SyncRecordFs::default();
    let seg = dir.path().join(keel_log::segment_file_name(1));
    let f = fs.open(&seg, OpenMode::Create).unwrap();
    let mut g = Gen::new();
    let a = g.next(2);
    let b = g.next(3);
    f.write_at(&[IoSlice::new(a.as_bytes())], 0).unwrap();
    f.sync_data().unwrap();
    assert_eq!(read_synced_len(&seg).unwrap(), Some(a.len() as u64));
    // Zeros written ahead (preallocation) do not count as data, then an
    // unsynced append lands inside that already-written region.
    let zeros = vec![0u8; 8192];
    f.write_at(&[IoSlice::new(&zeros)], a.len() as u64).unwrap();
    f.sync_data().unwrap();
    assert_eq!(read_synced_len(&seg).unwrap(), Some(a.len() as u64));
    f.write_at(&[IoSlice::new(b.as_bytes())], a.len() as u64)
        .unwrap();
    drop(f);
    let cut = cut_to_synced(dir.path()).unwrap();
    assert_eq!(cut.len(), 1);
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), a.len() as u64);
    let (store, _) = open(dir.path(), &opts(false));
    assert_eq!(store.last_index(), 1, "the unsynced entry survived the cut");
}

#[test]
fn the_skip_switch_loses_acknowledged_appends() {
    let dir = TempDir::new_in(None, "syncrec-skip").unwrap();
    // One segment: a sealed segment that was never synced would be cut to
    // nothing, which open rightly refuses as a hole in the log.
    let one_segment = LogOptions {
        segment_bytes: 1 << 20,
        ..opts(true)
    };
    let (store, _) = open(dir.path(), &one_segment);
    let mut g = Gen::new();
    for _ in 0..5 {
        append_wait(&store, g.take(5));
    }
    assert_eq!(store.last_index(), 25);
    let img = crash_image(dir.path(), "syncrec-skip-img");
    std::mem::forget(store);
    cut_to_synced(img.path()).unwrap();
    let (reopened, _) = open(img.path(), &opts(false));
    assert!(
        reopened.last_index() < 25,
        "skipping fdatasync lost nothing: the crash simulation is blind"
    );
}
