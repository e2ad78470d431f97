//! Concurrent clients: each worker appends unique values (`w<worker>-<n>`)
//! and reads single offsets and ranges (linearizable reads), recording
//! every operation. Each worker has its own `keel-client` (its own
//! connections and leader discovery) over the members' client addresses.
//! When the membership nemesis changes who the members are, the runner
//! publishes the new list ([`Shared::set_endpoints`]) and each worker makes
//! a new client over it before its next operation; meanwhile the client
//! turns away from a removed or stopped node by itself (it refuses
//! connections, or answers that it knows no leader).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_client::{Client, ClientError, ClientOptions};
use tokio::time::timeout;

use crate::history::{Call, Op, Outcome};
use crate::rng::Rng;

/// State shared by the workers and the nemesis.
pub struct Shared {
    pub start: Instant,
    pub stop: AtomicBool,
    pub phase: AtomicUsize,
    /// Highest offset acknowledged so far (+1), to aim reads.
    pub acked_end: AtomicU64,
    pub next_id: AtomicU64,
    /// The client addresses of the members, and a generation that changes
    /// with them.
    endpoints: Mutex<(u64, Vec<String>)>,
}

impl Shared {
    pub fn new(endpoints: Vec<String>) -> Arc<Shared> {
        Arc::new(Shared {
            start: Instant::now(),
            stop: AtomicBool::new(false),
            phase: AtomicUsize::new(0),
            acked_end: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
            endpoints: Mutex::new((0, endpoints)),
        })
    }

    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// The members' client addresses and their generation.
    pub fn endpoints(&self) -> (u64, Vec<String>) {
        self.endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Publishes a new member list (a no-op when it did not change).
    pub fn set_endpoints(&self, list: Vec<String>) {
        let mut e = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        if e.1 != list && !list.is_empty() {
            e.0 += 1;
            e.1 = list;
        }
    }
}

/// How long one operation may take before it is recorded as unknown (the
/// client's own deadline is shorter).
pub const OP_TIMEOUT: Duration = Duration::from_secs(8);

pub fn client_for(endpoints: &[String]) -> Result<Client, crate::Error> {
    Client::new(ClientOptions {
        endpoints: endpoints.to_vec(),
        timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_millis(500),
        max_in_flight: 1,
        ..ClientOptions::default()
    })
    .map_err(|e| crate::Error::Setup(format!("client: {e}")))
}

/// Outcome of an append error: only refusals the client and server promise
/// happened before proposing (or a replaced entry) count as failed.
pub fn classify(e: &ClientError) -> Outcome {
    use keel_client::Code;
    match e {
        ClientError::Ambiguous(_) => Outcome::Unknown,
        ClientError::Unavailable(_) | ClientError::Invalid(_) => Outcome::Fail,
        ClientError::Rpc { code, .. } => match code {
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Internal
            | Code::Cancelled => Outcome::Unknown,
            _ => Outcome::Fail,
        },
    }
}

/// One append, recorded.
pub async fn append(sh: &Shared, client: &Client, who: &str, value: String) -> Op {
    let id = sh.next_id.fetch_add(1, Ordering::Relaxed);
    let phase = sh.phase.load(Ordering::Relaxed);
    let invoke_us = sh.now_us();
    let r = timeout(
        OP_TIMEOUT,
        client.append(Bytes::from(value.clone().into_bytes())),
    )
    .await;
    let complete_us = sh.now_us();
    let (outcome, offset, error) = match r {
        Ok(Ok(off)) => {
            sh.acked_end.fetch_max(off + 1, Ordering::Relaxed);
            (Outcome::Ok, Some(off), None)
        }
        Ok(Err(e)) => (classify(&e), None, Some(e.to_string())),
        Err(_) => (Outcome::Unknown, None, Some("timed out".to_string())),
    };
    Op {
        id,
        client: who.to_string(),
        phase,
        invoke_us,
        complete_us,
        outcome,
        call: Call::Append { value, offset },
        error,
    }
}

async fn read(sh: &Shared, client: &Client, who: &str, from: u64, to: u64) -> Op {
    let id = sh.next_id.fetch_add(1, Ordering::Relaxed);
    let phase = sh.phase.load(Ordering::Relaxed);
    let invoke_us = sh.now_us();
    let r = timeout(OP_TIMEOUT, client.read(from, to, false)).await;
    let complete_us = sh.now_us();
    let (outcome, records, error) = match r {
        Ok(Ok(recs)) => (
            Outcome::Ok,
            recs.into_iter()
                .map(|r| (r.offset, String::from_utf8_lossy(&r.data).into_owned()))
                .collect(),
            None,
        ),
        // Past the end of the log: a read that returned nothing.
        Ok(Err(ClientError::Rpc {
            code: keel_client::Code::OutOfRange,
            ..
        })) => (Outcome::Ok, Vec::new(), None),
        Ok(Err(e)) => (Outcome::Fail, Vec::new(), Some(e.to_string())),
        Err(_) => (Outcome::Unknown, Vec::new(), Some("timed out".to_string())),
    };
    Op {
        id,
        client: who.to_string(),
        phase,
        invoke_us,
        complete_us,
        outcome,
        call: Call::Read { from, to, records },
        error,
    }
}

/// A worker: runs until `stop`, returns its operations.
pub async fn worker(sh: Arc<Shared>, w: usize, seed: u64) -> Vec<Op> {
    let mut rng = Rng::new(seed ^ (w as u64).wrapping_mul(0x51_7cc1_b727_220a));
    let mut ops = Vec::new();
    let who = format!("w{w}");
    let (mut generation, endpoints) = sh.endpoints();
    let mut client = match client_for(&endpoints) {
        Ok(c) => c,
        Err(_) => return ops,
    };
    let mut n = 0u64;
    while !sh.stop.load(Ordering::Relaxed) {
        let (g, endpoints) = sh.endpoints();
        if g != generation
            && let Ok(c) = client_for(&endpoints)
        {
            generation = g;
            client = c;
        }
        let hi = sh.acked_end.load(Ordering::Relaxed) + 2;
        let op = match rng.below(10) {
            0..=5 => {
                n += 1;
                append(&sh, &client, &who, format!("{who}-{n}")).await
            }
            6..=7 => {
                let o = rng.below(hi);
                read(&sh, &client, &who, o, o + 1).await
            }
            _ => {
                let a = rng.below(hi);
                let len = 1 + rng.below(40);
                read(&sh, &client, &who, a, a + len).await
            }
        };
        let failed = op.outcome != Outcome::Ok;
        ops.push(op);
        // A short pause; longer after a failure so a dead cluster is not
        // hammered.
        let pause = if failed { 50 } else { 1 + rng.below(3) };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    ops
}
