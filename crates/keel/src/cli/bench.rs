//! `keel bench`: a closed-loop load generator. N clients each send one
//! record (or, with `--target etcd`, one etcd put of the same size to a
//! distinct key), wait for the acknowledgement, and send the next, for a
//! duration after a warm-up. Prints records/s, MB/s and the latency
//! percentiles. The same loop drives keel and etcd, so the figures compare.
//!
//! For scripts that measure around an event (a node joining, say):
//! `--stop-file` ends the measurement when a file appears, and
//! `--latency-log` writes every measured operation's send time and latency,
//! so that any part of the window can be cut out afterwards
//! (`benchmarks/catch-up.sh` does both).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use keel_client::{Client, ClientOptions};
use keel_proto::etcd::{PutRequest, PutResponse};
use serde_json::json;
use tonic::transport::{Channel, Endpoint};

use super::output::Output;
use super::parse_duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    Keel,
    /// etcd v3 over gRPC (`etcdserverpb.KV/Put`), e.g. at 127.0.0.1:2379.
    Etcd,
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// What to load.
    #[arg(long, value_enum, default_value_t = Target::Keel)]
    pub target: Target,
    /// Endpoints (keel: any members, the client finds the leader; etcd:
    /// client URLs' HOST:PORT, connections spread over them).
    #[arg(long, env = "KEEL_ENDPOINTS", value_delimiter = ',', default_value = keel_client::DEFAULT_ENDPOINT)]
    pub endpoints: Vec<String>,
    /// Concurrent clients, each waiting for its acknowledgement.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Payload bytes per record (etcd: value bytes per put).
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// How long to measure, e.g. `10s`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Load before measuring starts.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Client connections shared by the clients (HTTP/2 multiplexes).
    #[arg(long, default_value_t = 1)]
    pub conns: usize,
    /// keel only: how long the client's batcher lingers for more appends.
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    pub linger: Duration,
    /// Threads of the load generator. One keeps it off the cores the
    /// servers under test need on the same machine (and it is the cheapest
    /// way to drive many clients: no cross-thread wake-ups).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// keel only: append requests in flight per connection.
    #[arg(long, default_value_t = 4)]
    pub max_in_flight: usize,
    /// `text` or `json` (one object).
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Show the progress bar even when stderr is not a terminal.
    #[arg(long)]
    pub progress: bool,
    /// End the measurement as soon as this file exists (checked every
    /// 10 ms); `--duration` is then the longest it runs. The figures cover
    /// the time measured until then.
    #[arg(long, value_name = "PATH")]
    pub stop_file: Option<PathBuf>,
    /// After the run, write one line per operation acknowledged in the
    /// measured window: when it was sent, in microseconds since the Unix
    /// epoch, and its latency in microseconds (`1767225600123456 812`).
    #[arg(long, value_name = "PATH")]
    pub latency_log: Option<PathBuf>,
}

enum Conn {
    Keel(Client),
    Etcd(EtcdKv),
}

/// A minimal etcd KV client: the one unary call, over tonic's codec.
#[derive(Clone)]
struct EtcdKv {
    inner: tonic::client::Grpc<Channel>,
}

impl EtcdKv {
    async fn put(&mut self, req: PutRequest) -> Result<PutResponse, tonic::Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("etcd connection: {e}")))?;
        let codec = tonic_prost::ProstCodec::default();
        let path = tonic::codegen::http::uri::PathAndQuery::from_static("/etcdserverpb.KV/Put");
        self.inner
            .unary(tonic::Request::new(req), path, codec)
            .await
            .map(|r| r.into_inner())
    }
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

pub async fn run(a: BenchArgs) -> Result<(), String> {
    if a.clients == 0 || a.conns == 0 || a.threads == 0 || a.duration.is_zero() {
        return Err("--clients, --conns, --threads and --duration must be positive".into());
    }
    let mut conns = Vec::new();
    for i in 0..a.conns {
        conns.push(Arc::new(match a.target {
            Target::Keel => Conn::Keel(
                Client::new(ClientOptions {
                    endpoints: a.endpoints.clone(),
                    timeout: Duration::from_secs(10),
                    linger: a.linger,
                    max_in_flight: a.max_in_flight,
                    ..Default::default()
                })
                .map_err(|e| e.to_string())?,
            ),
            Target::Etcd => {
                let ep = &a.endpoints[i % a.endpoints.len()];
                let ch = Endpoint::from_shared(format!("http://{ep}"))
                    .map_err(|e| format!("endpoint {ep}: {e}"))?
                    .tcp_nodelay(true)
                    .initial_stream_window_size(Some(8 << 20))
                    .initial_connection_window_size(Some(32 << 20))
                    .connect()
                    .await
                    .map_err(|e| format!("cannot connect to etcd at {ep}: {e}"))?;
                Conn::Etcd(EtcdKv {
                    inner: tonic::client::Grpc::new(ch),
                })
            }
        }));
    }
    // One operation first: fail fast on a wrong endpoint.
    let payload = Bytes::from(vec![b'k'; a.size]);
    run_one(&conns[0], &payload, u64::MAX, 0)
        .await
        .map_err(|e| format!("the first operation failed: {e}"))?;

    if let Some(f) = &a.stop_file
        && f.exists()
    {
        return Err(format!("--stop-file {} exists already", f.display()));
    }
    let start = Instant::now();
    // The wall clock at `start`, for the latency log.
    let start_unix_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    let measure_from = start + a.warmup;
    let end = measure_from + a.duration;
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // Set once the stop file appeared: when, in µs after `start`.
    let stopped_at = Arc::new(AtomicU64::new(u64::MAX));
    let watcher = a.stop_file.clone().map(|f| {
        let (stop, stopped_at) = (stop.clone(), stopped_at.clone());
        tokio::spawn(async move {
            while Instant::now() < end {
                if f.exists() {
                    stopped_at.store(start.elapsed().as_micros() as u64, Relaxed);
                    stop.store(true, Relaxed);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    });
    let mut tasks = Vec::new();
    for c in 0..a.clients {
        let conn = conns[c % conns.len()].clone();
        let payload = payload.clone();
        let done = done.clone();
        let errors = errors.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            // (latency µs, sent µs after `start`)
            let mut lat: Vec<(u32, u64)> = Vec::with_capacity(1 << 16);
            let mut i = 0u64;
            let mut last_err = None;
            while !stop.load(Relaxed) {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                i += 1;
                match run_one(&conn, &payload, c as u64, i).await {
                    Ok(()) => {
                        let t1 = Instant::now();
                        if t0 >= measure_from && t1 <= end && !stop.load(Relaxed) {
                            lat.push((
                                t1.duration_since(t0).as_micros().min(u32::MAX as u128) as u32,
                                t0.duration_since(start).as_micros() as u64,
                            ));
                            done.fetch_add(1, Relaxed);
                        }
                    }
                    Err(e) => {
                        errors.fetch_add(1, Relaxed);
                        last_err = Some(e);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (lat, last_err)
        }));
    }
    let show = a.progress || std::io::stderr().is_terminal();
    let progress = {
        let done = done.clone();
        let total = a.warmup + a.duration;
        tokio::spawn(async move {
            if !show {
                return;
            }
            let mut last = (Instant::now(), 0u64);
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let now = Instant::now();
                let el = now.duration_since(start);
                let d = done.load(Relaxed);
                let rate = (d - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
                last = (now, d);
                let frac = (el.as_secs_f64() / total.as_secs_f64()).min(1.0);
                let w = 30;
                let filled = (frac * w as f64) as usize;
                let phase = if now < measure_from {
                    "warm-up"
                } else {
                    "measure"
                };
                eprint!(
                    "\r[{}{}] {:>5.1}/{:.0}s {phase} {:>9.0} rec/s ",
                    "=".repeat(filled),
                    " ".repeat(w - filled),
                    el.as_secs_f64(),
                    total.as_secs_f64(),
                    rate
                );
                let _ = std::io::stderr().flush();
                if frac >= 1.0 {
                    eprintln!();
                    return;
                }
            }
        })
    };
    let mut ops = Vec::new();
    let mut last_err = None;
    for t in tasks {
        let (l, e) = t.await.map_err(|e| format!("a client task failed: {e}"))?;
        ops.extend(l);
        if e.is_some() {
            last_err = e;
        }
    }
    stop.store(true, Relaxed);
    progress.abort();
    if let Some(w) = watcher {
        w.abort();
    }
    if show {
        eprintln!();
    }
    // What was measured: the whole --duration, or until the stop file.
    let secs = match stopped_at.load(Relaxed) {
        u64::MAX => a.duration.as_secs_f64(),
        us => (Duration::from_micros(us).saturating_sub(a.warmup))
            .min(a.duration)
            .as_secs_f64(),
    };
    if let Some(path) = &a.latency_log {
        ops.sort_unstable_by_key(|&(_, sent)| sent);
        let f = std::fs::File::create(path)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        let mut w = std::io::BufWriter::new(f);
        for &(l, sent) in &ops {
            writeln!(w, "{} {l}", start_unix_us + sent)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        w.flush()
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    let mut lat: Vec<u32> = ops.into_iter().map(|(l, _)| l).collect();
    lat.sort_unstable();
    let n = lat.len() as u64;
    let rps = n as f64 / secs;
    let mbps = rps * a.size as f64 / 1e6;
    let errs = errors.load(Relaxed);
    let target = match a.target {
        Target::Keel => "keel",
        Target::Etcd => "etcd",
    };
    let (p50, p99, p999) = (pct(&lat, 0.5), pct(&lat, 0.99), pct(&lat, 0.999));
    let max = lat.last().copied().unwrap_or(0) as f64 / 1000.0;
    let durability = match a.target {
        Target::Keel => "durable: acknowledged after fdatasync on a quorum",
        Target::Etcd => "etcd defaults (fsync on a quorum)",
    };
    match a.output {
        Output::Json => println!(
            "{}",
            json!({
                "target": target, "endpoints": a.endpoints, "clients": a.clients,
                "conns": a.conns, "size": a.size, "duration_s": secs,
                "records": n, "records_per_s": rps, "mb_per_s": mbps,
                "p50_ms": p50, "p99_ms": p99, "p999_ms": p999, "max_ms": max,
                "errors": errs, "durability": durability,
                "last_error": last_err,
            })
        ),
        Output::Text => {
            println!(
                "{target}: {} clients, {} B records, {:.1} s ({durability})",
                a.clients, a.size, secs
            );
            println!(
                "  {rps:.0} records/s  {mbps:.1} MB/s  latency ms p50 {p50:.2}  p99 {p99:.2}  p999 {p999:.2}  max {max:.2}  ({n} acknowledged, {errs} errors)"
            );
            if let Some(e) = last_err {
                println!("  last error: {e}");
            }
        }
    }
    if n == 0 {
        return Err("no operation completed".into());
    }
    Ok(())
}

async fn run_one(conn: &Conn, payload: &Bytes, client: u64, i: u64) -> Result<(), String> {
    match conn {
        Conn::Keel(c) => c
            .append(payload.clone())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Conn::Etcd(kv) => {
            let mut kv = kv.clone();
            kv.put(PutRequest {
                key: Bytes::from(format!("bench/{client:04}/{i:012}")),
                value: payload.clone(),
                ..Default::default()
            })
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
        }
    }
}
