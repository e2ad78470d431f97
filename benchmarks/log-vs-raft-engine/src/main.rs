//! keel-log and tikv/raft-engine 0.4.2 side by side, in one run, on the same
//! disk, with the same workload:
//!
//! - synced appends: W writer threads (1, 16, 64), each appending one entry
//!   of one R-byte record (256 B, 1 KiB, 4 KiB) and waiting until it is
//!   durable before the next. keel-log: one store (one raft group) shared by
//!   the writers, as a node uses it. raft-engine: one engine, one region per
//!   writer, each append a `LogBatch` written with `sync = true`, as TiKV
//!   uses it.
//! - large writes: 1 MiB appends (64 entries of 16 KiB), synced, from one
//!   and from four writers, against the raw disk: 1 MiB writes with an
//!   fdatasync after each, and with one fdatasync at the end.
//! - sequential read of everything the single-writer large test wrote.
//!
//! cargo run --release --manifest-path benchmarks/log-vs-raft-engine/Cargo.toml -- [--dir DIR] [--secs N] [--large-mib N] [--rounds N]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_format::{Batch, BatchBuilder, EntryKind};
use keel_log::testing::TempDir;
use keel_log::{LogOptions, LogStore};
use protobuf::well_known_types::BytesValue;
use raft_engine::{Config, Engine, LogBatch, MessageExt, ReadableSize};

#[derive(Clone)]
struct Entry;

/// raft-engine wants protobuf entries; a `BytesValue` whose first 8 bytes
/// are the index carries the same payload.
impl MessageExt for Entry {
    type Entry = BytesValue;
    fn index(e: &BytesValue) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&e.value[..8]);
        u64::from_le_bytes(a)
    }
}

struct Args {
    dir: PathBuf,
    secs: f64,
    large_mib: usize,
    /// Runs per point, alternating the stores; the best of each is kept
    /// (the machine is shared, interference only ever slows a run down).
    rounds: usize,
}

fn args() -> Args {
    let mut a = Args {
        dir: std::env::temp_dir(),
        secs: 2.0,
        large_mib: 256,
        rounds: 3,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let val = v.get(i + 1).cloned().unwrap_or_default();
        match v[i].as_str() {
            "--dir" => a.dir = PathBuf::from(val),
            "--secs" => a.secs = val.parse().expect("--secs N"),
            "--large-mib" => a.large_mib = val.parse().expect("--large-mib N"),
            "--rounds" => a.rounds = val.parse().expect("--rounds N"),
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    a
}

fn payload(size: usize, salt: u64) -> Vec<u8> {
    // Not compressible, so that neither store gains from compression.
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ salt;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[derive(Default, Clone, Copy)]
struct Point {
    ops_per_s: f64,
    mb_per_s: f64,
    p50_us: u32,
    p99_us: u32,
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Runs `writers` threads calling `op(writer, seq)` (which returns the
/// bytes it appended) until `secs` have passed.
fn drive<F>(writers: usize, secs: f64, op: F) -> Point
where
    F: Fn(usize, u64) -> u64 + Send + Sync + 'static,
{
    let op = Arc::new(op);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let hs: Vec<_> = (0..writers)
        .map(|w| {
            let op = op.clone();
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(1 << 16);
                let mut bytes = 0;
                let mut seq = 0;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    bytes += op(w, seq);
                    seq += 1;
                    lat.push(t.elapsed().as_micros() as u32);
                }
                (lat, bytes)
            })
        })
        .collect();
    let mut lat = Vec::new();
    let mut bytes = 0;
    for h in hs {
        let (l, b) = h.join().expect("writer thread");
        lat.extend(l);
        bytes += b;
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    Point {
        ops_per_s: lat.len() as f64 / secs,
        mb_per_s: bytes as f64 / 1e6 / secs,
        p50_us: percentile(&lat, 0.5),
        p99_us: percentile(&lat, 0.99),
    }
}

fn keel_synced(base: &Path, writers: usize, size: usize, secs: f64) -> Point {
    let dir = TempDir::new_in(Some(base), "keel").unwrap();
    let (store, _) = LogStore::open(dir.path(), LogOptions::default()).unwrap();
    let store = Arc::new(store);
    let next = Arc::new(Mutex::new((1u64, 0u64)));
    let data = Arc::new(payload(size, 1));
    drive(writers, secs, move |_, _| {
        // Raft orders a group's entries: index and offset are handed out
        // under a lock, then the writers wait concurrently.
        let c = {
            let mut n = next.lock().unwrap();
            let b = BatchBuilder::single(&data).seal(EntryKind::Data, 1, n.0, n.1, 0);
            n.0 += 1;
            n.1 += 1;
            store.append(vec![b])
        };
        c.wait().unwrap();
        size as u64
    })
}

fn raft_engine_config(dir: &Path) -> Config {
    Config {
        dir: dir.to_str().unwrap().to_owned(),
        // Payloads are incompressible; keep raft-engine from trying.
        batch_compression_threshold: ReadableSize(0),
        ..Config::default()
    }
}

fn raft_engine_synced(base: &Path, writers: usize, size: usize, secs: f64) -> Point {
    let dir = TempDir::new_in(Some(base), "raft-engine").unwrap();
    let engine = Arc::new(Engine::open(raft_engine_config(dir.path())).unwrap());
    let data = Arc::new(payload(size, 1));
    drive(writers, secs, move |w, seq| {
        let mut value = Vec::with_capacity(8 + data.len());
        value.extend_from_slice(&(seq + 1).to_le_bytes());
        value.extend_from_slice(&data);
        let e = BytesValue {
            value,
            ..Default::default()
        };
        let mut batch = LogBatch::default();
        batch.add_entries::<Entry>(w as u64 + 1, &[e]).unwrap();
        engine.write(&mut batch, true).unwrap();
        size as u64
    })
}

fn raw_disk(base: &Path, mib: usize, sync_each: bool) -> f64 {
    let dir = TempDir::new_in(Some(base), "raw").unwrap();
    let mut f = std::fs::File::create(dir.path().join("raw")).unwrap();
    let chunk = payload(1 << 20, 7);
    let t = Instant::now();
    for _ in 0..mib {
        f.write_all(&chunk).unwrap();
        if sync_each {
            f.sync_data().unwrap();
        }
    }
    f.sync_data().unwrap();
    mib as f64 / t.elapsed().as_secs_f64()
}

/// 1 MiB appends (64 x 16 KiB entries), encoded before the clock starts,
/// from `writers` threads; returns MiB/s and the directory.
fn keel_large(base: &Path, mib: usize, writers: usize) -> (f64, TempDir) {
    let dir = TempDir::new_in(Some(base), "keel-large").unwrap();
    let (store, _) = LogStore::open(dir.path(), LogOptions::default()).unwrap();
    let data = payload(16 << 10, 3);
    let mut index = 1u64;
    let appends: Vec<Vec<Batch>> = (0..mib)
        .map(|_| {
            (0..64)
                .map(|_| {
                    let b =
                        BatchBuilder::single(&data).seal(EntryKind::Data, 1, index, index - 1, 0);
                    index += 1;
                    b
                })
                .collect()
        })
        .collect();
    let bytes: u64 = appends.iter().flatten().map(|b| b.len() as u64).sum();
    let queue = Mutex::new(appends.into_iter());
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..writers {
            s.spawn(|| {
                loop {
                    let c = {
                        let mut q = queue.lock().unwrap();
                        match q.next() {
                            Some(a) => store.append(a),
                            None => break,
                        }
                    };
                    c.wait().unwrap();
                }
            });
        }
    });
    let mibs = bytes as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64();
    drop(store);
    (mibs, dir)
}

fn raft_engine_large(base: &Path, mib: usize, writers: usize) -> (f64, TempDir, Engine) {
    let dir = TempDir::new_in(Some(base), "raft-engine-large").unwrap();
    let engine = Engine::open(raft_engine_config(dir.path())).unwrap();
    let data = payload(16 << 10, 3);
    // One region per writer (raft-engine needs each region's indexes in
    // order); the appends are dealt round-robin.
    let mut per_writer: Vec<Vec<LogBatch>> = (0..writers).map(|_| Vec::new()).collect();
    let mut index = vec![1u64; writers];
    for m in 0..mib {
        let w = m % writers;
        let entries: Vec<BytesValue> = (0..64)
            .map(|_| {
                let mut value = index[w].to_le_bytes().to_vec();
                value.extend_from_slice(&data);
                index[w] += 1;
                BytesValue {
                    value,
                    ..Default::default()
                }
            })
            .collect();
        let mut b = LogBatch::default();
        b.add_entries::<Entry>(w as u64 + 1, &entries).unwrap();
        per_writer[w].push(b);
    }
    let bytes = mib as u64 * 64 * (16 << 10);
    let t = Instant::now();
    std::thread::scope(|s| {
        for batches in per_writer {
            let engine = &engine;
            s.spawn(move || {
                for mut b in batches {
                    engine.write(&mut b, true).unwrap();
                }
            });
        }
    });
    let mibs = bytes as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64();
    (mibs, dir, engine)
}

fn keel_read(dir: &Path) -> f64 {
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

fn raft_engine_read(engine: &Engine) -> f64 {
    let first = engine.first_index(1).unwrap();
    let last = engine.last_index(1).unwrap();
    let t = Instant::now();
    let mut i = first;
    let mut bytes = 0u64;
    let mut out = Vec::new();
    while i <= last {
        out.clear();
        let n = engine
            .fetch_entries_to::<Entry>(1, i, last + 1, Some(4 << 20), &mut out)
            .unwrap();
        i += n as u64;
        bytes += out.iter().map(|e| e.value.len() as u64).sum::<u64>();
    }
    bytes as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let a = args();
    std::fs::create_dir_all(&a.dir).unwrap();
    println!(
        "keel-log vs raft-engine 0.4.2, data under {}, {} s per run, best of {} alternating runs per point, every append synced",
        a.dir.display(),
        a.secs,
        a.rounds
    );
    println!(
        "{:>7} {:>6} | {:>10} {:>7} {:>6} {:>6} | {:>10} {:>7} {:>6} {:>6} | {:>6}",
        "writers",
        "record",
        "keel/s",
        "MB/s",
        "p50us",
        "p99us",
        "r-e/s",
        "MB/s",
        "p50us",
        "p99us",
        "ratio"
    );
    for &size in &[256usize, 1024, 4096] {
        for &w in &[1usize, 16, 64] {
            let (mut k, mut r) = (Point::default(), Point::default());
            for _ in 0..a.rounds {
                let kk = keel_synced(&a.dir, w, size, a.secs);
                if kk.ops_per_s > k.ops_per_s {
                    k = kk;
                }
                let rr = raft_engine_synced(&a.dir, w, size, a.secs);
                if rr.ops_per_s > r.ops_per_s {
                    r = rr;
                }
            }
            println!(
                "{:>7} {:>6} | {:>10.0} {:>7.1} {:>6} {:>6} | {:>10.0} {:>7.1} {:>6} {:>6} | {:>6.2}",
                w,
                size,
                k.ops_per_s,
                k.mb_per_s,
                k.p50_us,
                k.p99_us,
                r.ops_per_s,
                r.mb_per_s,
                r.p50_us,
                r.p99_us,
                k.ops_per_s / r.ops_per_s
            );
        }
    }
    let best = |f: &dyn Fn() -> f64| (0..a.rounds).map(|_| f()).fold(0.0, f64::max);
    let raw_each = best(&|| raw_disk(&a.dir, a.large_mib, true));
    let raw_end = best(&|| raw_disk(&a.dir, a.large_mib, false));
    println!(
        "raw disk: {raw_each:.0} MiB/s (1 MiB writes, fdatasync after each), {raw_end:.0} MiB/s (one fdatasync at the end)"
    );
    let mut read_dirs = None;
    for &w in &[1usize, 4] {
        let (mut k, mut r) = (0.0f64, 0.0f64);
        for _ in 1..a.rounds {
            k = k.max(keel_large(&a.dir, a.large_mib, w).0);
            r = r.max(raft_engine_large(&a.dir, a.large_mib, w).0);
        }
        let (kl, kdir) = keel_large(&a.dir, a.large_mib, w);
        let (rl, rdir, engine) = raft_engine_large(&a.dir, a.large_mib, w);
        let (k, r) = (k.max(kl), r.max(rl));
        println!(
            "large writes, {w} writer(s) of 1 MiB appends: keel-log {k:.0} MiB/s ({:.0}% of raw each-synced, {:.0}% of raw end-synced), raft-engine {r:.0} MiB/s, ratio {:.2}",
            100.0 * k / raw_each,
            100.0 * k / raw_end,
            k / r
        );
        if w == 1 {
            read_dirs = Some((kdir, rdir, engine));
        }
    }
    if let Some((kdir, _rdir, engine)) = read_dirs {
        let k = keel_read(kdir.path());
        let r = raft_engine_read(&engine);
        println!(
            "sequential read of {} MiB (page cache warm): keel-log {k:.0} MiB/s, raft-engine {r:.0} MiB/s, ratio {:.2}",
            a.large_mib,
            k / r
        );
    }
}
