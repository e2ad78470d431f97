//! Prometheus metrics: counters, gauges and fixed-bucket histograms kept in
//! atomics (no lock on the hot path), rendered in the text exposition format
//! by a tiny HTTP responder (`GET /metrics`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Upper bounds of the latency buckets, in seconds.
const BOUNDS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0,
];

type Counter = fn(&GroupMetrics) -> &AtomicU64;
type Hist = fn(&GroupMetrics) -> &Histogram;

/// A latency histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    /// Counts one observation.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = BOUNDS.iter().position(|b| s <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cum = 0;
        for (i, b) in BOUNDS.iter().enumerate() {
            cum += self.buckets[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cum}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// The metrics of one raft group on this node.
#[derive(Debug, Default)]
pub struct GroupMetrics {
    /// The group.
    pub group: u64,
    /// Proposal requests received.
    pub append_requests: AtomicU64,
    /// Records proposed.
    pub append_records: AtomicU64,
    /// Bytes of records proposed.
    pub append_bytes: AtomicU64,
    /// Proposals refused.
    pub append_errors: AtomicU64,
    /// From the request reaching the group to its acknowledgement.
    pub append_latency: Histogram,
    /// Entries proposed.
    pub proposals: AtomicU64,
    /// From proposing an entry to applying it (leader).
    pub commit_latency: Histogram,
    /// Entries applied.
    pub applied_entries: AtomicU64,
    /// Records applied.
    pub applied_records: AtomicU64,
    /// From submitting a write to the store to its fdatasync completing.
    pub fsync_latency: Histogram,
    /// The current term.
    pub term: AtomicU64,
    /// 0 follower, 1 pre-candidate, 2 candidate, 3 leader.
    pub role: AtomicU64,
    /// The known leader (0: none).
    pub leader: AtomicU64,
    /// Leader changes seen.
    pub leader_changes: AtomicU64,
    /// The commit index.
    pub commit_index: AtomicU64,
    /// The index served (applied and marked).
    pub applied_index: AtomicU64,
    /// Reads asked for.
    pub reads: AtomicU64,
    /// 1 while the group's store is refusing writes for want of space.
    pub disk_full: AtomicU64,
    /// Leader only: entries each follower is behind.
    pub follower_lag: Mutex<BTreeMap<u64, u64>>,
}

/// Counters of the peer transport.
#[derive(Debug, Default)]
pub struct TransportMetrics {
    /// Frames written.
    pub frames_sent: AtomicU64,
    /// Bytes written.
    pub bytes_sent: AtomicU64,
    /// Write calls.
    pub writes: AtomicU64,
    /// Frames read.
    pub frames_received: AtomicU64,
    /// Bytes read.
    pub bytes_received: AtomicU64,
    /// Connections closed for bad input.
    pub bad_frames: AtomicU64,
    /// Outbound connections made.
    pub connects: AtomicU64,
}

/// Every metric of a node.
#[derive(Debug, Default)]
pub struct Registry {
    /// This node.
    pub node_id: u64,
    /// Every group's metrics.
    pub groups: Mutex<Vec<Arc<GroupMetrics>>>,
    /// The transport's counters.
    pub transport: TransportMetrics,
}

impl Registry {
    /// An empty registry for node `node_id`.
    pub fn new(node_id: u64) -> Arc<Self> {
        Arc::new(Registry {
            node_id,
            ..Default::default()
        })
    }

    /// Registers (and returns) the metrics of a group.
    pub fn group(&self, group: u64) -> Arc<GroupMetrics> {
        let g = Arc::new(GroupMetrics {
            group,
            ..Default::default()
        });
        self.groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(g.clone());
        g
    }

    /// Renders everything in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let groups = self
            .groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let node = self.node_id;
        let counters: [(&str, &str, Counter); 15] = [
            ("keel_append_requests_total", "counter", |g| {
                &g.append_requests
            }),
            ("keel_append_records_total", "counter", |g| {
                &g.append_records
            }),
            ("keel_append_bytes_total", "counter", |g| &g.append_bytes),
            ("keel_append_errors_total", "counter", |g| &g.append_errors),
            ("keel_proposals_total", "counter", |g| &g.proposals),
            ("keel_applied_entries_total", "counter", |g| {
                &g.applied_entries
            }),
            ("keel_applied_records_total", "counter", |g| {
                &g.applied_records
            }),
            ("keel_leader_changes_total", "counter", |g| {
                &g.leader_changes
            }),
            ("keel_reads_total", "counter", |g| &g.reads),
            ("keel_term", "gauge", |g| &g.term),
            ("keel_role", "gauge", |g| &g.role),
            ("keel_leader_id", "gauge", |g| &g.leader),
            ("keel_disk_full", "gauge", |g| &g.disk_full),
            ("keel_commit_index", "gauge", |g| &g.commit_index),
            ("keel_applied_index", "gauge", |g| &g.applied_index),
        ];
        for (name, kind, get) in counters {
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for g in &groups {
                let _ = writeln!(
                    out,
                    "{name}{{node=\"{node}\",group=\"{}\"}} {}",
                    g.group,
                    get(g).load(Relaxed)
                );
            }
        }
        let hists: [(&str, Hist); 3] = [
            ("keel_append_latency_seconds", |g| &g.append_latency),
            ("keel_commit_latency_seconds", |g| &g.commit_latency),
            ("keel_fsync_latency_seconds", |g| &g.fsync_latency),
        ];
        for (name, get) in hists {
            let _ = writeln!(out, "# TYPE {name} histogram");
            for g in &groups {
                get(g).render(
                    &mut out,
                    name,
                    &format!("node=\"{node}\",group=\"{}\"", g.group),
                );
            }
        }
        let _ = writeln!(out, "# TYPE keel_follower_lag_entries gauge");
        for g in &groups {
            let lag = g.follower_lag.lock().unwrap_or_else(|p| p.into_inner());
            for (peer, l) in lag.iter() {
                let _ = writeln!(
                    out,
                    "keel_follower_lag_entries{{node=\"{node}\",group=\"{}\",peer=\"{peer}\"}} {l}",
                    g.group
                );
            }
        }
        let t = &self.transport;
        for (name, v) in [
            ("keel_peer_frames_sent_total", &t.frames_sent),
            ("keel_peer_bytes_sent_total", &t.bytes_sent),
            ("keel_peer_writes_total", &t.writes),
            ("keel_peer_frames_received_total", &t.frames_received),
            ("keel_peer_bytes_received_total", &t.bytes_received),
            ("keel_peer_bad_frames_total", &t.bad_frames),
            ("keel_peer_connects_total", &t.connects),
        ] {
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name}{{node=\"{node}\"}} {}", v.load(Relaxed));
        }
        out
    }
}

/// Metrics connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 64;

/// Serves `GET /metrics` (anything else: 404) until the task is dropped.
/// At most [`MAX_CONNECTIONS`] at once; when accepting fails (out of file
/// descriptors: EMFILE) it waits 50 ms before trying again instead of
/// spinning, and says so at most every 10 s.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut last_warning: Option<std::time::Instant> = None;
    loop {
        let mut sock = match listener.accept().await {
            Ok((sock, _)) => sock,
            Err(e) => {
                if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    tracing::warn!(error = %e, "accepting a metrics connection failed; trying again every 50 ms");
                    last_warning = Some(std::time::Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue; // too many at once: closed (dropped) unanswered
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut buf = vec![0u8; 2048];
            let mut n = 0;
            // Read the request head (bounded), then answer and close.
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while n < buf.len() {
                    match sock.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k,
                    }
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            })
            .await;
            if read.is_err() {
                return;
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = if path == "/metrics" || path.starts_with("/metrics?") {
                ("200 OK", registry.render())
            } else {
                ("404 Not Found", "try GET /metrics\n".to_string())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}
