//! keel-log benchmark: synced appends from 1/16/64 writer threads with 256 B,
//! 1 KiB and 4 KiB records (each writer appends one entry of one record and
//! waits for its completion before the next), large batched writes against
//! the disk's raw sequential bandwidth, and sequential reads.
//!
//! Writers wait on the blocking path (`begin_append` under the lock that
//! hands out indexes, `AppendTicket::wait` outside it); `--async` makes them
//! use `append` and wait on the completion instead.
//!
//! cargo run --release -p keel-log --example log_bench -- [--dir DIR] [--secs N] [--large-mib N] [--async]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_format::{Batch, BatchBuilder, EntryKind};
use keel_log::testing::TempDir;
use keel_log::{LogOptions, LogStore};

struct Args {
    dir: Option<PathBuf>,
    secs: f64,
    large_mib: usize,
    blocking: bool,
}

fn args() -> Args {
    let mut a = Args {
        dir: None,
        secs: 2.0,
        large_mib: 256,
        blocking: true,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        if v[i] == "--async" {
            a.blocking = false;
            i += 1;
            continue;
        }
        match v[i].as_str() {
            "--dir" => a.dir = v.get(i + 1).map(PathBuf::from),
            "--secs" => a.secs = v.get(i + 1).and_then(|s| s.parse().ok()).unwrap_or(a.secs),
            "--large-mib" => {
                a.large_mib = v
                    .get(i + 1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(a.large_mib)
            }
            other => {
                eprintln!("unknown argument {other}");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    a
}

/// Next index and offset of the shared log.
struct Next {
    index: u64,
    offset: u64,
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

struct Point {
    ops: u64,
    bytes: u64,
    secs: f64,
    p50_us: u32,
    p99_us: u32,
}

fn synced_appends(base: &Path, writers: usize, size: usize, secs: f64, blocking: bool) -> Point {
    let dir = TempDir::new_in(Some(base), "keel-bench").unwrap();
    let (store, _) = LogStore::open(dir.path(), LogOptions::default()).unwrap();
    let store = Arc::new(store);
    let next = Arc::new(Mutex::new(Next {
        index: 1,
        offset: 0,
    }));
    let payload: Arc<Vec<u8>> = Arc::new((0..size).map(|i| i as u8).collect());
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let handles: Vec<_> = (0..writers)
        .map(|_| {
            let (store, next, payload) = (store.clone(), next.clone(), payload.clone());
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(100_000);
                let mut bytes = 0u64;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let mut n = next.lock().unwrap();
                    let b = BatchBuilder::single(&payload).seal(
                        EntryKind::Data,
                        1,
                        n.index,
                        n.offset,
                        0,
                    );
                    n.index += 1;
                    n.offset += 1;
                    bytes += b.len() as u64;
                    if blocking {
                        let ticket = store.begin_append(vec![b]).unwrap();
                        drop(n);
                        ticket.wait().unwrap();
                    } else {
                        let c = store.append(vec![b]);
                        drop(n);
                        c.wait().unwrap();
                    }
                    lat.push(t.elapsed().as_micros() as u32);
                }
                (lat, bytes)
            })
        })
        .collect();
    let mut lat = Vec::new();
    let mut bytes = 0;
    for h in handles {
        let (l, b) = h.join().unwrap();
        lat.extend(l);
        bytes += b;
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    Point {
        ops: lat.len() as u64,
        bytes,
        secs,
        p50_us: percentile(&lat, 0.5),
        p99_us: percentile(&lat, 0.99),
    }
}

/// Raw disk: `mib` MiB in 1 MiB writes, fdatasync after each (the same
/// sync pattern as the store's large appends) and once at the end.
fn raw_disk(base: &Path, mib: usize, sync_each: bool) -> f64 {
    let dir = TempDir::new_in(Some(base), "keel-bench-raw").unwrap();
    let path = dir.path().join("raw");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    for _ in 0..mib {
        f.write_all(&chunk).unwrap();
        if sync_each {
            f.sync_data().unwrap();
        }
    }
    f.sync_data().unwrap();
    (mib as f64) / t.elapsed().as_secs_f64()
}

/// Large batched writes: appends of 64 entries x 16 KiB (1 MiB), each
/// waited for. Returns (MiB/s, store) for the read test.
fn large_writes(base: &Path, mib: usize, blocking: bool) -> (f64, TempDir) {
    let dir = TempDir::new_in(Some(base), "keel-bench-large").unwrap();
    let (store, _) = LogStore::open(dir.path(), LogOptions::default()).unwrap();
    let payload = vec![0xa5u8; 16 << 10];
    let mut index = 1;
    let mut bytes = 0u64;
    // Encoded before the clock starts: the leader encodes an entry once,
    // outside the store; this measures the store's write path.
    let appends: Vec<Vec<Batch>> = (0..mib)
        .map(|_| {
            (0..64)
                .map(|_| {
                    let b = BatchBuilder::single(&payload).seal(
                        EntryKind::Data,
                        1,
                        index,
                        index - 1,
                        0,
                    );
                    index += 1;
                    bytes += b.len() as u64;
                    b
                })
                .collect()
        })
        .collect();
    let t = Instant::now();
    for batch in appends {
        if blocking {
            store.append_and_wait(batch).unwrap();
        } else {
            store.append(batch).wait().unwrap();
        }
    }
    let mibs = bytes as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64();
    drop(store);
    (mibs, dir)
}

/// Sequential read of the whole log through `read`, 4 MiB at a time, on a
/// freshly opened store (empty cache: every batch comes from the files and
/// is CRC-checked).
fn sequential_read(dir: &Path) -> f64 {
    let (store, _) = LogStore::open(dir, LogOptions::default()).unwrap();
    let last = store.last_index();
    let t = Instant::now();
    let mut i = store.first_index();
    let mut bytes = 0u64;
    while i <= last {
        let v = store.read(i, last + 1, 4 << 20).unwrap();
        i += v.len() as u64;
        bytes += v.iter().map(|b| b.len() as u64).sum::<u64>();
    }
    bytes as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let a = args();
    let base = a.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base).unwrap();
    println!(
        "keel-log benchmark ({} path), data under {}",
        if a.blocking { "blocking" } else { "async" },
        base.display()
    );
    println!("synced appends: each writer appends one entry of one record and waits for it");
    println!(
        "{:>7} {:>7} {:>12} {:>9} {:>9} {:>9}",
        "writers", "record", "appends/s", "MB/s", "p50 us", "p99 us"
    );
    for &size in &[256usize, 1024, 4096] {
        for &w in &[1usize, 16, 64] {
            let p = synced_appends(&base, w, size, a.secs, a.blocking);
            println!(
                "{:>7} {:>7} {:>12.0} {:>9.1} {:>9} {:>9}",
                w,
                size,
                p.ops as f64 / p.secs,
                p.bytes as f64 / 1e6 / p.secs,
                p.p50_us,
                p.p99_us
            );
        }
    }
    let raw_each = raw_disk(&base, a.large_mib, true);
    let raw_end = raw_disk(&base, a.large_mib, false);
    let (large, dir) = large_writes(&base, a.large_mib, a.blocking);
    println!(
        "large writes: keel-log {large:.0} MiB/s (1 MiB appends, each synced); raw disk {raw_each:.0} MiB/s (1 MiB writes, each fdatasynced), {raw_end:.0} MiB/s (one fdatasync at the end); keel/raw {:.0}% and {:.0}%",
        100.0 * large / raw_each,
        100.0 * large / raw_end
    );
    let read = sequential_read(dir.path());
    println!(
        "sequential read: {read:.0} MiB/s ({} MiB, CRC-checked, page cache warm)",
        a.large_mib
    );
}
