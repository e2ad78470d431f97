//! keel-log and tikv/raft-engine 0.4.2 side by side, in one run, on the same
//! disk, with the same workload:
//!
//! - synced appends: W writer threads (1, 16, 64), each appending one entry
//!   of one R-byte record (256 B, 1 KiB, 4 KiB) and waiting until it is
//!   durable before the next. keel-log: one store (one raft group) shared by
//!   the writers, as a node uses it; each writer takes the next index under
//!   a lock and queues its entry (`begin_append`), then waits outside the
//!   lock on the blocking path (`AppendTicket::wait`, the analogue of
//!   raft-engine's synchronous write; `--keel-path async` uses `append` and
//!   waits on the completion instead). raft-engine: one engine, one region
//!   per writer, each append a `LogBatch` written with `sync = true`, as TiKV
//!   uses it.
//! - large writes: 1 MiB appends (64 entries of 16 KiB; `--append-mib N`
//!   for N MiB), synced, from one
//!   and from four writers, against the raw disk: writes of that size with an
//!   fdatasync after each, and with one fdatasync at the end.
//! - sequential read of everything the single-writer large test wrote.
//!
//! Every point runs the two stores alternately `--rounds` times, its runs
//! spread over the whole benchmark, and reports each one's median (the
//! disk is shared and noisy), with the range, the ratio of the medians, and
//! the median of the per-round ratios ("paired": the two runs of a round
//! are back to back, so their ratio cancels most of the interference of
//! that minute). Large writes compare with the raw disk the same two ways.
//!
//! `--samples FILE` appends every round's figures to FILE; `--report FILE`
//! prints the same tables over every round of every run recorded there
//! (on a disk shared with bursts of other work, many runs pooled say more
//! than any one).
//!
//! cargo run --release --manifest-path benchmarks/log-vs-raft-engine/Cargo.toml -- [--dir DIR] [--secs N] [--large-mib N] [--append-mib N] [--rounds N] [--keel-path blocking|async] [--only-small|--only-large] [--writers 1,16,64] [--sizes 256,1024,4096] [--only keel|raft-engine] [--samples FILE] [--report FILE]

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
    /// Size of one large append (and of one raw-disk write), in MiB.
    append_mib: usize,
    /// Runs per point, alternating the stores; each one's median is
    /// reported (the machine is shared and noisy).
    rounds: usize,
    /// keel-log's synchronous writers wait on the blocking path
    /// (`AppendTicket::wait`) rather than on an asynchronous completion.
    blocking: bool,
    small: bool,
    large: bool,
    /// Only these writer counts / record sizes (default: all).
    writers: Vec<usize>,
    sizes: Vec<usize>,
    /// Run only one of the stores (for profiling).
    only: Option<String>,
    /// Append every round's figures to this file.
    samples: Option<PathBuf>,
    /// Print the tables over every round recorded in this file, run
    /// nothing.
    report: Option<PathBuf>,
}

fn args() -> Args {
    let mut a = Args {
        dir: std::env::temp_dir(),
        secs: 2.0,
        large_mib: 256,
        append_mib: 1,
        rounds: 5,
        blocking: true,
        small: true,
        large: true,
        writers: vec![1, 16, 64],
        sizes: vec![256, 1024, 4096],
        only: None,
        samples: None,
        report: None,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let val = v.get(i + 1).cloned().unwrap_or_default();
        let mut step = 2;
        match v[i].as_str() {
            "--dir" => a.dir = PathBuf::from(val),
            "--secs" => a.secs = val.parse().expect("--secs N"),
            "--large-mib" => a.large_mib = val.parse().expect("--large-mib N"),
            "--append-mib" => a.append_mib = val.parse().expect("--append-mib N"),
            "--rounds" => a.rounds = val.parse().expect("--rounds N"),
            "--keel-path" => {
                a.blocking = match val.as_str() {
                    "blocking" => true,
                    "async" => false,
                    _ => panic!("--keel-path blocking|async"),
                }
            }
            "--only-small" => {
                a.large = false;
                step = 1;
            }
            "--only-large" => {
                a.small = false;
                step = 1;
            }
            "--only" => {
                assert!(
                    val == "keel" || val == "raft-engine",
                    "--only keel|raft-engine"
                );
                a.only = Some(val);
            }
            "--samples" => a.samples = Some(PathBuf::from(val)),
            "--report" => a.report = Some(PathBuf::from(val)),
            "--writers" => {
                a.writers = val
                    .split(',')
                    .map(|w| w.parse().expect("--writers 1,16"))
                    .collect()
            }
            "--sizes" => {
                a.sizes = val
                    .split(',')
                    .map(|w| w.parse().expect("--sizes 256,4096"))
                    .collect()
            }
            other => panic!("unknown argument {other}"),
        }
        i += step;
    }
    assert!(a.rounds >= 1, "--rounds must be at least 1");
    assert!(
        a.append_mib >= 1 && a.large_mib.is_multiple_of(a.append_mib),
        "--append-mib must be at least 1 and divide --large-mib"
    );
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

/// The median of a point's runs (by appends/s), and the lowest and highest
/// appends/s seen.
fn median_point(mut runs: Vec<Point>) -> (Point, f64, f64) {
    runs.sort_by(|a, b| a.ops_per_s.total_cmp(&b.ops_per_s));
    let lo = runs[0].ops_per_s;
    let hi = runs[runs.len() - 1].ops_per_s;
    (runs[runs.len() / 2], lo, hi)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
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

fn keel_synced(base: &Path, writers: usize, size: usize, secs: f64, blocking: bool) -> Point {
    let dir = TempDir::new_in(Some(base), "keel").unwrap();
    let (store, _) = LogStore::open(dir.path(), LogOptions::default()).unwrap();
    let store = Arc::new(store);
    let next = Arc::new(Mutex::new((1u64, 0u64)));
    let data = Arc::new(payload(size, 1));
    drive(writers, secs, move |_, _| {
        // Raft orders a group's entries: index and offset are handed out
        // under a lock, then the writers wait concurrently.
        let mut n = next.lock().unwrap();
        let b = BatchBuilder::single(&data).seal(EntryKind::Data, 1, n.0, n.1, 0);
        n.0 += 1;
        n.1 += 1;
        if blocking {
            let t = store.begin_append(vec![b]).unwrap();
            drop(n);
            t.wait().unwrap();
        } else {
            let c = store.append(vec![b]);
            drop(n);
            c.wait().unwrap();
        }
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

fn raw_disk(base: &Path, mib: usize, unit_mib: usize, sync_each: bool) -> f64 {
    let dir = TempDir::new_in(Some(base), "raw").unwrap();
    let mut f = std::fs::File::create(dir.path().join("raw")).unwrap();
    let chunk = payload(unit_mib << 20, 7);
    let t = Instant::now();
    for _ in 0..mib / unit_mib {
        f.write_all(&chunk).unwrap();
        if sync_each {
            f.sync_data().unwrap();
        }
    }
    f.sync_data().unwrap();
    mib as f64 / t.elapsed().as_secs_f64()
}

/// `unit` MiB appends (64 x 16 KiB entries per MiB), encoded before the
/// clock starts, from `writers` threads; returns MiB/s and the directory.
fn keel_large(
    base: &Path,
    mib: usize,
    unit: usize,
    writers: usize,
    blocking: bool,
) -> (f64, TempDir) {
    let dir = TempDir::new_in(Some(base), "keel-large").unwrap();
    let (store, _) = LogStore::open(dir.path(), LogOptions::default()).unwrap();
    let data = payload(16 << 10, 3);
    let mut index = 1u64;
    let appends: Vec<Vec<Batch>> = (0..mib / unit)
        .map(|_| {
            (0..64 * unit)
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
                    let mut q = queue.lock().unwrap();
                    let Some(a) = q.next() else { break };
                    if blocking {
                        let t = store.begin_append(a).unwrap();
                        drop(q);
                        t.wait().unwrap();
                    } else {
                        let c = store.append(a);
                        drop(q);
                        c.wait().unwrap();
                    }
                }
            });
        }
    });
    let mibs = bytes as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64();
    drop(store);
    (mibs, dir)
}

fn raft_engine_large(
    base: &Path,
    mib: usize,
    unit: usize,
    writers: usize,
) -> (f64, TempDir, Engine) {
    let dir = TempDir::new_in(Some(base), "raft-engine-large").unwrap();
    let engine = Engine::open(raft_engine_config(dir.path())).unwrap();
    let data = payload(16 << 10, 3);
    // One region per writer (raft-engine needs each region's indexes in
    // order); the appends are dealt round-robin.
    let mut per_writer: Vec<Vec<LogBatch>> = (0..writers).map(|_| Vec::new()).collect();
    let mut index = vec![1u64; writers];
    for m in 0..mib / unit {
        let w = m % writers;
        let entries: Vec<BytesValue> = (0..64 * unit)
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
    if let Some(path) = &a.report {
        report(path);
        return;
    }
    std::fs::create_dir_all(&a.dir).unwrap();
    println!(
        "keel-log ({} path) vs raft-engine 0.4.2, data under {}, {} s per run, median of {} alternating runs per point, every append synced",
        if a.blocking { "blocking" } else { "async" },
        a.dir.display(),
        a.secs,
        a.rounds
    );
    if a.small {
        small(&a);
    }
    if a.large {
        large(&a);
    }
}

/// Appends a line to the `--samples` file, if one was given.
fn sample(a: &Args, line: String) {
    if let Some(path) = &a.samples {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open the samples file");
        writeln!(f, "{line}").expect("write the samples file");
    }
}

fn small(a: &Args) {
    // Rounds outer, points inner: each point's runs are spread over the
    // whole benchmark, so that a burst of interference (minutes, on this
    // shared disk) does not take out all of one point's runs.
    let points: Vec<(usize, usize)> = a
        .sizes
        .iter()
        .flat_map(|&size| a.writers.iter().map(move |&w| (size, w)))
        .collect();
    let keel = a.only.as_deref() != Some("raft-engine");
    let re = a.only.as_deref() != Some("keel");
    let mut ks: Vec<Vec<Point>> = vec![Vec::new(); points.len()];
    let mut rs: Vec<Vec<Point>> = vec![Vec::new(); points.len()];
    for round in 0..a.rounds {
        for (p, &(size, w)) in points.iter().enumerate() {
            // Alternate which store goes first, so that neither always
            // runs right after the other's files were written.
            let (mut kp, mut rp) = (Point::default(), Point::default());
            if keel && round % 2 == 0 {
                kp = keel_synced(&a.dir, w, size, a.secs, a.blocking);
            }
            if re {
                rp = raft_engine_synced(&a.dir, w, size, a.secs);
            }
            if keel && round % 2 == 1 {
                kp = keel_synced(&a.dir, w, size, a.secs, a.blocking);
            }
            sample(
                a,
                format!(
                    "small,{w},{size},{},{},{},{},{},{},{},{}",
                    kp.ops_per_s,
                    kp.mb_per_s,
                    kp.p50_us,
                    kp.p99_us,
                    rp.ops_per_s,
                    rp.mb_per_s,
                    rp.p50_us,
                    rp.p99_us
                ),
            );
            ks[p].push(kp);
            rs[p].push(rp);
        }
    }
    print_small(&points, ks, rs);
}

/// Prints the synced-appends table: per point, each store's median run,
/// the range, the ratio of the medians and the median of the per-round
/// ratios.
fn print_small(points: &[(usize, usize)], mut ks: Vec<Vec<Point>>, mut rs: Vec<Vec<Point>>) {
    println!(
        "{:>7} {:>6} | {:>10} {:>7} {:>6} {:>6} {:>15} | {:>10} {:>7} {:>6} {:>6} {:>15} | {:>6} {:>6}",
        "writers",
        "record",
        "keel/s",
        "MB/s",
        "p50us",
        "p99us",
        "keel range",
        "r-e/s",
        "MB/s",
        "p50us",
        "p99us",
        "r-e range",
        "ratio",
        "paired"
    );
    for (p, &(size, w)) in points.iter().enumerate() {
        if ks[p].is_empty() {
            continue;
        }
        // The two runs of a round are back to back: their ratio cancels
        // most of whatever slowed that minute down.
        let paired = median(
            ks[p]
                .iter()
                .zip(&rs[p])
                .map(|(k, r)| k.ops_per_s / r.ops_per_s)
                .collect(),
        );
        let (k, klo, khi) = median_point(std::mem::take(&mut ks[p]));
        let (r, rlo, rhi) = median_point(std::mem::take(&mut rs[p]));
        println!(
            "{:>7} {:>6} | {:>10.0} {:>7.1} {:>6} {:>6} {:>15} | {:>10.0} {:>7.1} {:>6} {:>6} {:>15} | {:>6.2} {:>6.2}",
            w,
            size,
            k.ops_per_s,
            k.mb_per_s,
            k.p50_us,
            k.p99_us,
            format!("{klo:.0}-{khi:.0}"),
            r.ops_per_s,
            r.mb_per_s,
            r.p50_us,
            r.p99_us,
            format!("{rlo:.0}-{rhi:.0}"),
            k.ops_per_s / r.ops_per_s,
            paired
        );
    }
}

/// Large-write samples of all rounds: raw disk and both stores.
#[derive(Default)]
struct Large {
    raw_each: Vec<f64>,
    raw_end: Vec<f64>,
    /// Index 0: one writer, 1: four writers.
    keel: [Vec<f64>; 2],
    re: [Vec<f64>; 2],
}

fn large(a: &Args) {
    // Each round measures the raw disk and both stores, alternating, so
    // that the percentages compare figures from the same minutes.
    let mut l = Large::default();
    let mut read_dirs = None;
    for round in 0..a.rounds {
        let each = raw_disk(&a.dir, a.large_mib, a.append_mib, true);
        let end = raw_disk(&a.dir, a.large_mib, a.append_mib, false);
        l.raw_each.push(each);
        l.raw_end.push(end);
        let mut line = format!("large,{each},{end}");
        for (slot, &w) in [1usize, 4].iter().enumerate() {
            let (kl, kdir) = keel_large(&a.dir, a.large_mib, a.append_mib, w, a.blocking);
            let (rl, rdir, engine) = raft_engine_large(&a.dir, a.large_mib, a.append_mib, w);
            l.keel[slot].push(kl);
            l.re[slot].push(rl);
            line.push_str(&format!(",{kl},{rl}"));
            if w == 1 && round + 1 == a.rounds {
                read_dirs = Some((kdir, rdir, engine));
            }
        }
        sample(a, line);
    }
    print_large(&l, Some(a.append_mib));
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

/// `unit`: the size of one append in MiB (`None` from `--report`: the
/// samples file does not record it).
fn print_large(l: &Large, unit: Option<usize>) {
    let unit = unit.map_or_else(|| "large".to_string(), |u| format!("{u} MiB"));
    let fmt_range = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::MAX, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        format!("{lo:.0}-{hi:.0}")
    };
    if l.raw_each.is_empty() {
        return;
    }
    let each = median(l.raw_each.clone());
    let end = median(l.raw_end.clone());
    println!(
        "raw disk: {each:.0} MiB/s ({unit} writes, fdatasync after each; range {}), {end:.0} MiB/s (one fdatasync at the end; range {})",
        fmt_range(&l.raw_each),
        fmt_range(&l.raw_end)
    );
    for (slot, w) in [1usize, 4].into_iter().enumerate() {
        let k = &l.keel[slot];
        let km = median(k.clone());
        let rm = median(l.re[slot].clone());
        let paired = |other: &[f64]| median(k.iter().zip(other).map(|(a, b)| a / b).collect());
        println!(
            "large writes, {w} writer(s) of {unit} appends: keel-log {km:.0} MiB/s (range {}; {:.0}% of raw each-synced, {:.0}% of raw end-synced; paired {:.0}% / {:.0}%), raft-engine {rm:.0} MiB/s (range {}), ratio {:.2}, paired {:.2}",
            fmt_range(k),
            100.0 * km / each,
            100.0 * km / end,
            100.0 * paired(&l.raw_each),
            100.0 * paired(&l.raw_end),
            fmt_range(&l.re[slot]),
            km / rm,
            paired(&l.re[slot])
        );
    }
}

/// `--report FILE`: the tables over every round recorded with `--samples`
/// (any number of runs appended to one file).
fn report(path: &Path) {
    let text = std::fs::read_to_string(path).expect("read the samples file");
    let mut points: Vec<(usize, usize)> = Vec::new();
    let (mut ks, mut rs): (Vec<Vec<Point>>, Vec<Vec<Point>>) = (Vec::new(), Vec::new());
    let mut l = Large::default();
    for line in text.lines() {
        let f: Vec<&str> = line.split(',').collect();
        let num = |i: usize| -> f64 { f[i].parse().expect("a number in the samples file") };
        match f[0] {
            "small" => {
                let key = (num(2) as usize, num(1) as usize);
                let p = match points.iter().position(|&k| k == key) {
                    Some(p) => p,
                    None => {
                        points.push(key);
                        ks.push(Vec::new());
                        rs.push(Vec::new());
                        points.len() - 1
                    }
                };
                let point = |i: usize| Point {
                    ops_per_s: num(i),
                    mb_per_s: num(i + 1),
                    p50_us: num(i + 2) as u32,
                    p99_us: num(i + 3) as u32,
                };
                ks[p].push(point(3));
                rs[p].push(point(7));
            }
            "large" => {
                l.raw_each.push(num(1));
                l.raw_end.push(num(2));
                for slot in 0..2 {
                    l.keel[slot].push(num(3 + 2 * slot));
                    l.re[slot].push(num(4 + 2 * slot));
                }
            }
            _ => {}
        }
    }
    // Sizes, then writers, as the runs print them.
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by_key(|&p| points[p]);
    let points2: Vec<_> = order.iter().map(|&p| points[p]).collect();
    let ks2: Vec<_> = order.iter().map(|&p| std::mem::take(&mut ks[p])).collect();
    let rs2: Vec<_> = order.iter().map(|&p| std::mem::take(&mut rs[p])).collect();
    let rounds = ks2.first().map_or(0, Vec::len);
    println!(
        "keel-log vs raft-engine 0.4.2 over every recorded round in {} ({rounds} rounds per point, {} of large writes)",
        path.display(),
        l.raw_each.len()
    );
    print_small(&points2, ks2, rs2);
    print_large(&l, None);
}
