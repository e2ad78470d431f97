//! keel-client: the Rust client of keel.
//!
//! Give it any endpoints (client API addresses of any members). It finds the
//! leader and follows it (not-leader answers carry the leader's address),
//! retries what is safe to retry, batches concurrent appends, and offers
//! async `append`, `append_many`, `read` and `tail`.
//!
//! What is retried: an append refused before it was proposed (not leader, no
//! leader yet, transfer in progress, back-pressure), an append whose entry
//! was replaced by a new leader's (the server says ABORTED: definitely not
//! appended), and any call whose connection was refused. Reads and status
//! calls are retried on any transport error. An append whose connection
//! broke after it was sent, or that timed out on the server, is *not*
//! retried: its outcome is unknown, and the error says so
//! ([`ClientError::Ambiguous`]).
//!
//! Batching: appends from concurrent callers that queue while earlier
//! batches are in flight go in one request (up to `max_batch_bytes`,
//! optionally lingering `linger`); each caller still gets its own offsets
//! and its own acknowledgement after commit.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_proto::v1::keel_client::KeelClient;
use keel_proto::v1::*;
use thiserror::Error;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

pub use keel_proto::v1::{
    JoinRequest, JoinResponse, Member, MemberChange, MembersResponse, Record, StatusResponse,
    member_change,
};
/// gRPC status codes, as carried by [`ClientError::Rpc`].
pub use tonic::Code;

/// The default endpoint: a single local node.
pub const DEFAULT_ENDPOINT: &str = "127.0.0.1:7070";
const MAX_MESSAGE: usize = 64 << 20;

#[derive(Debug, Clone, Error)]
pub enum ClientError {
    /// No endpoint answered, or no leader emerged, before the deadline.
    #[error("{0}")]
    Unavailable(String),
    /// The append may or may not have been committed.
    #[error("outcome unknown: {0}")]
    Ambiguous(String),
    /// The server refused the request (not retryable).
    #[error("{message}")]
    Rpc { code: Code, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl ClientError {
    /// The gRPC code behind the error, if the server sent one.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Rpc { code, .. } => Some(*code),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub endpoints: Vec<String>,
    /// Overall deadline of one call, retries included.
    pub timeout: Duration,
    /// How long one attempt at one node may go unanswered. A node that is
    /// paused (SIGSTOP, a long stall) or cut off keeps its connection open
    /// and answers nothing; after this long the client turns to the other
    /// endpoints. A read is retried there; an append that went unanswered
    /// fails as ambiguous (it may still commit), and the client's next
    /// calls go to the other endpoints. Default 2 s, well above a commit
    /// under load.
    pub attempt_timeout: Duration,
    pub connect_timeout: Duration,
    /// How long a batch waits for more appends before it is sent (0: send
    /// what is queued at once).
    pub linger: Duration,
    pub max_batch_bytes: usize,
    pub max_batch_records: usize,
    /// Append requests in flight at once; appends that arrive meanwhile
    /// queue and go in the next batch.
    pub max_in_flight: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            endpoints: vec![DEFAULT_ENDPOINT.to_string()],
            timeout: Duration::from_secs(15),
            attempt_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            linger: Duration::ZERO,
            max_batch_bytes: 1 << 20,
            max_batch_records: 4096,
            max_in_flight: 4,
        }
    }
}

struct State {
    endpoints: Vec<String>,
    /// Where requests go: the known leader, or an endpoint to try.
    target: String,
    next: usize,
    channels: HashMap<String, Channel>,
    /// Nodes that left an attempt unanswered, until when to pass them by
    /// when choosing where to turn next.
    suspect: HashMap<String, Instant>,
}

struct Core {
    opts: ClientOptions,
    state: Mutex<State>,
}

struct AppendJob {
    records: Vec<Bytes>,
    bytes: usize,
    reply: oneshot::Sender<Result<u64, ClientError>>,
}

/// A keel client. Cheap to clone; clones share connections and batching.
#[derive(Clone)]
pub struct Client {
    core: Arc<Core>,
    batch_tx: mpsc::UnboundedSender<AppendJob>,
}

/// Normalizes `host:port` (or a URL) to `host:port`.
fn norm(addr: &str) -> String {
    let a = addr.trim();
    let a = a
        .strip_prefix("http://")
        .or_else(|| a.strip_prefix("https://"))
        .unwrap_or(a);
    a.trim_end_matches('/').to_string()
}

fn is_refused(st: &Status) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(st);
    while let Some(e) = src {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
            )
        {
            return true;
        }
        src = e.source();
    }
    let m = st.message();
    m.contains("Connection refused") || m.contains("tcp connect error")
}

impl Client {
    /// Creates a client; connects lazily on the first call. Must be called
    /// inside a tokio runtime (it spawns the batching task).
    pub fn new(opts: ClientOptions) -> Result<Client, ClientError> {
        let endpoints: Vec<String> = opts
            .endpoints
            .iter()
            .map(|e| norm(e))
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(ClientError::Invalid("no endpoints given".into()));
        }
        for e in &endpoints {
            let ok = e
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok {
                return Err(ClientError::Invalid(format!(
                    "endpoint `{e}` is not HOST:PORT"
                )));
            }
        }
        let core = Arc::new(Core {
            state: Mutex::new(State {
                target: endpoints[0].clone(),
                endpoints,
                next: 0,
                channels: HashMap::new(),
                suspect: HashMap::new(),
            }),
            opts: opts.clone(),
        });
        let (batch_tx, batch_rx) = mpsc::unbounded_channel();
        tokio::spawn(batcher(core.clone(), batch_rx));
        Ok(Client { core, batch_tx })
    }

    /// A client of the given endpoints with default options.
    pub fn connect_to(endpoints: &[&str]) -> Result<Client, ClientError> {
        Client::new(ClientOptions {
            endpoints: endpoints.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
    }

    /// Appends one record; returns its offset once it is committed.
    pub async fn append(&self, data: impl Into<Bytes>) -> Result<u64, ClientError> {
        self.append_many(vec![data.into()]).await
    }

    /// Appends records that take consecutive offsets; returns the first
    /// one's once all are committed.
    pub async fn append_many(&self, records: Vec<Bytes>) -> Result<u64, ClientError> {
        if records.is_empty() {
            return Err(ClientError::Invalid(
                "an append needs at least one record".into(),
            ));
        }
        let bytes = records.iter().map(|r| r.len()).sum();
        let (tx, rx) = oneshot::channel();
        self.batch_tx
            .send(AppendJob {
                records,
                bytes,
                reply: tx,
            })
            .map_err(|_| ClientError::Unavailable("the client is shut down".into()))?;
        rx.await
            .map_err(|_| ClientError::Unavailable("the client is shut down".into()))?
    }

    /// Appends records in one request, bypassing the batcher.
    pub async fn append_direct(&self, records: Vec<Bytes>) -> Result<u64, ClientError> {
        self.core.append_raw(records).await
    }

    /// Committed records in `[start, end)`: linearizable unless `stale`.
    /// Stops early at the end of the log. `OUT_OF_RANGE` if `start` is past
    /// the end.
    pub async fn read(
        &self,
        start: u64,
        end: u64,
        stale: bool,
    ) -> Result<Vec<Record>, ClientError> {
        let mut out = Vec::new();
        let mut next = start;
        while next < end {
            let req = ReadRequest {
                log: 0,
                start_offset: next,
                end_offset: end,
                max_records: 0,
                max_bytes: 0,
                stale,
            };
            let resp = match self
                .core
                .call(true, move |mut c| async move {
                    c.read(req).await.map(|r| r.into_inner())
                })
                .await
            {
                Ok(r) => r,
                Err(ClientError::Rpc {
                    code: Code::OutOfRange,
                    ..
                }) if !out.is_empty() => break,
                Err(e) => return Err(e),
            };
            if resp.records.is_empty() {
                break;
            }
            next = resp.next_offset;
            out.extend(resp.records);
            if next >= resp.end_offset {
                break;
            }
        }
        Ok(out)
    }

    /// The record at `offset` (linearizable).
    pub async fn get(&self, offset: u64) -> Result<Bytes, ClientError> {
        let end = offset
            .checked_add(1)
            .ok_or_else(|| ClientError::Invalid(format!("offset {offset} is out of range")))?;
        let mut v = self.read(offset, end, false).await?;
        v.pop().map(|r| r.data).ok_or_else(|| ClientError::Rpc {
            code: Code::OutOfRange,
            message: format!("offset {offset} is past the end of the log"),
        })
    }

    /// Follows the log from `start`: committed records, then new commits as
    /// they come (or, with `follow == false`, until caught up). Reconnects
    /// (to any endpoint) from the next offset if a node goes away.
    pub fn tail(&self, start: u64, follow: bool) -> Tail {
        let (tx, rx) = mpsc::channel(64);
        let core = self.core.clone();
        tokio::spawn(async move {
            let mut next = start;
            let mut failures = 0u32;
            loop {
                let req = TailRequest {
                    log: 0,
                    start_offset: next,
                    no_follow: !follow,
                };
                let stream = core
                    .call(true, move |mut c| async move {
                        c.tail(req).await.map(|r| r.into_inner())
                    })
                    .await;
                let mut stream = match stream {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                loop {
                    match stream.message().await {
                        Ok(Some(m)) => {
                            failures = 0;
                            for r in m.records {
                                next = r.offset + 1;
                                if tx.send(Ok(r)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Ok(None) => {
                            if !follow {
                                return;
                            }
                            break;
                        }
                        Err(st) => {
                            if st.code() != Code::Unavailable && st.code() != Code::Unknown {
                                let _ = tx.send(Err(rpc(st))).await;
                                return;
                            }
                            break;
                        }
                    }
                }
                failures += 1;
                if failures > 50 {
                    let _ = tx
                        .send(Err(ClientError::Unavailable(
                            "the tail kept failing; giving up".into(),
                        )))
                        .await;
                    return;
                }
                core.rotate();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Tail { rx }
    }

    /// The status of whichever endpoint answers first (the leader if known).
    pub async fn status(&self) -> Result<StatusResponse, ClientError> {
        self.core
            .call(true, |mut c| async move {
                c.status(StatusRequest { log: 0 })
                    .await
                    .map(|r| r.into_inner())
            })
            .await
    }

    /// The status of one node, by its client address (no retries elsewhere).
    pub async fn status_of(&self, addr: &str) -> Result<StatusResponse, ClientError> {
        let ch = self.core.channel(&norm(addr)).await?;
        let mut c = KeelClient::new(ch);
        let fut = c.status(StatusRequest { log: 0 });
        match tokio::time::timeout(self.core.opts.timeout, fut).await {
            Err(_) => Err(ClientError::Unavailable(format!("{addr} did not answer"))),
            Ok(Err(st)) => Err(rpc(st)),
            Ok(Ok(r)) => Ok(r.into_inner()),
        }
    }

    /// Hands leadership to node `to`; returns once it leads.
    pub async fn transfer_leader(&self, to: u64) -> Result<u64, ClientError> {
        self.core
            .call(true, move |mut c| async move {
                c.transfer_leader(TransferLeaderRequest { log: 0, to })
                    .await
                    .map(|r| r.into_inner().leader_id)
            })
            .await
    }

    /// The configuration of the default log, as the leader (or whichever
    /// node answers) sees it.
    pub async fn members(&self) -> Result<MembersResponse, ClientError> {
        self.core
            .call(true, |mut c| async move {
                c.members(MembersRequest { log: 0 })
                    .await
                    .map(|r| r.into_inner())
            })
            .await
    }

    /// Changes the membership of the default log; every change takes effect
    /// together. Waits up to `timeout` (learners catching up included);
    /// with `no_wait`, a learner that is behind is refused at once. Not
    /// retried once sent: an unanswered change may still complete.
    pub async fn change_members(
        &self,
        changes: Vec<MemberChange>,
        timeout: Duration,
        no_wait: bool,
    ) -> Result<MembersResponse, ClientError> {
        let req = ChangeMembersRequest {
            log: 0,
            changes,
            timeout_ms: timeout.as_millis().min(u32::MAX as u128) as u32,
            no_wait,
        };
        self.core
            .call_with(
                false,
                timeout + self.core.opts.attempt_timeout,
                move |mut c| {
                    let req = req.clone();
                    async move { c.change_members(req).await.map(|r| r.into_inner()) }
                },
            )
            .await
    }

    /// Sets (`Some`) or clears (`None`) the default log's preferred leader.
    pub async fn set_preferred_leader(
        &self,
        id: Option<u64>,
    ) -> Result<MembersResponse, ClientError> {
        let req = SetPreferredLeaderRequest {
            log: 0,
            id: id.unwrap_or(0),
        };
        self.core
            .call(true, move |mut c| async move {
                c.set_preferred_leader(req).await.map(|r| r.into_inner())
            })
            .await
    }

    /// Asks the cluster to admit this node (see the `Join` call).
    pub async fn join(&self, req: JoinRequest) -> Result<JoinResponse, ClientError> {
        self.core
            .call_with(true, Duration::from_secs(10), move |mut c| {
                let req = req.clone();
                async move { c.join(req).await.map(|r| r.into_inner()) }
            })
            .await
    }

    /// The endpoint requests currently go to (the leader, once found).
    pub fn target(&self) -> String {
        self.core.lock().target.clone()
    }
}

/// A stream of committed records (see [`Client::tail`]).
pub struct Tail {
    rx: mpsc::Receiver<Result<Record, ClientError>>,
}

impl Tail {
    /// The next record; `None` when the tail ended.
    pub async fn next(&mut self) -> Option<Result<Record, ClientError>> {
        self.rx.recv().await
    }

    /// As a `Stream`.
    pub fn into_stream(
        self,
    ) -> tokio_stream::wrappers::ReceiverStream<Result<Record, ClientError>> {
        tokio_stream::wrappers::ReceiverStream::new(self.rx)
    }
}

fn rpc(st: Status) -> ClientError {
    ClientError::Rpc {
        code: st.code(),
        message: st.message().to_string(),
    }
}

impl Core {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Turns to the next endpoint, passing by the suspect ones (unless all
    /// are).
    fn rotate(&self) {
        let mut st = self.lock();
        let now = Instant::now();
        st.suspect.retain(|_, until| *until > now);
        for _ in 0..st.endpoints.len() {
            st.next = (st.next + 1) % st.endpoints.len();
            if !st.suspect.contains_key(&st.endpoints[st.next]) {
                break;
            }
        }
        st.target = st.endpoints[st.next].clone();
    }

    fn follow(&self, leader: &str) {
        let leader = norm(leader);
        let mut st = self.lock();
        if !st.endpoints.contains(&leader) {
            st.endpoints.push(leader.clone());
        }
        st.target = leader;
    }

    /// Stops sending to `addr` if it is still the target (another call may
    /// have moved on already).
    fn move_on_from(&self, addr: &str) {
        let until = Instant::now() + 2 * self.opts.attempt_timeout;
        let moved = {
            let mut st = self.lock();
            st.suspect.insert(addr.to_string(), until);
            st.target != addr
        };
        if !moved {
            self.rotate();
        }
    }

    fn forget(&self, addr: &str) {
        self.lock().channels.remove(addr);
    }

    async fn channel(&self, addr: &str) -> Result<Channel, ClientError> {
        if let Some(c) = self.lock().channels.get(addr) {
            return Ok(c.clone());
        }
        let ep = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| ClientError::Invalid(format!("endpoint `{addr}`: {e}")))?
            .connect_timeout(self.opts.connect_timeout)
            .tcp_nodelay(true)
            // Batches of many records exceed HTTP/2's default 64 KiB
            // windows; waiting for window updates would stall them.
            .initial_stream_window_size(Some(8 << 20))
            .initial_connection_window_size(Some(32 << 20))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_while_idle(false);
        let ch = ep.connect().await.map_err(|e| {
            ClientError::Unavailable(format!("cannot connect to {addr}: {}", source_text(&e)))
        })?;
        self.lock().channels.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    /// Runs `f` against the leader, following redirects and retrying what
    /// is safe: everything if `idempotent`, otherwise only failures that
    /// prove the request was not carried out.
    async fn call<T, F, Fut>(&self, idempotent: bool, f: F) -> Result<T, ClientError>
    where
        F: Fn(KeelClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call_with(idempotent, self.opts.attempt_timeout, f)
            .await
    }

    /// [`call`](Self::call) with its own bound on one attempt (for requests
    /// that legitimately take long, like a membership change that waits for
    /// a learner), and a deadline at least that long.
    async fn call_with<T, F, Fut>(
        &self,
        idempotent: bool,
        attempt_timeout: Duration,
        f: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(KeelClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + self.opts.timeout.max(attempt_timeout);
        let mut backoff = Duration::from_millis(10);
        // What a server last answered, and the last connection failure:
        // when giving up, the answer says more than a node that is down.
        let mut said: Option<String> = None;
        let mut conn_err: Option<String> = None;
        let mut attempts = 0usize;
        let mut unreachable = 0usize;
        loop {
            if attempts > 0 {
                if Instant::now() >= deadline {
                    let why = match (&said, &conn_err) {
                        (Some(s), Some(c)) => format!("{s} (also: {c})"),
                        (Some(s), None) => s.clone(),
                        (None, Some(c)) => c.clone(),
                        (None, None) => "no answer".to_string(),
                    };
                    return Err(ClientError::Unavailable(format!(
                        "gave up after {:?} ({attempts} attempts): {why}",
                        self.opts.timeout
                    )));
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
            attempts += 1;
            let addr = self.lock().target.clone();
            let ch = match self.channel(&addr).await {
                Ok(c) => c,
                Err(ClientError::Invalid(m)) => return Err(ClientError::Invalid(m)),
                Err(e) => {
                    let msg = e.to_string();
                    unreachable += 1;
                    let n = self.lock().endpoints.len();
                    if unreachable >= (2 * n).max(4) {
                        return Err(ClientError::Unavailable(format!(
                            "cannot reach any endpoint ({}): {msg}",
                            self.lock().endpoints.join(", ")
                        )));
                    }
                    conn_err = Some(msg);
                    self.rotate();
                    continue;
                }
            };
            unreachable = 0;
            let c = KeelClient::new(ch)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE);
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = left
                .min(attempt_timeout.max(Duration::from_millis(1)))
                .max(Duration::from_millis(1));
            let st = match tokio::time::timeout(wait, f(c)).await {
                Ok(Ok(v)) => {
                    self.lock().suspect.remove(&addr);
                    return Ok(v);
                }
                Ok(Err(st)) => st,
                Err(_) => {
                    // Paused, stalled or cut off: later calls try the
                    // other endpoints (which name the leader they follow).
                    self.move_on_from(&addr);
                    if !idempotent {
                        return Err(ClientError::Ambiguous(format!(
                            "{addr} did not answer within {wait:?}; the request may still take effect"
                        )));
                    }
                    said = Some(format!("{addr} did not answer within {wait:?}"));
                    continue;
                }
            };
            match st.code() {
                Code::FailedPrecondition => {
                    said = Some(st.message().to_string());
                    match st
                        .metadata()
                        .get(keel_proto::LEADER_ADDR_KEY)
                        .and_then(|v| v.to_str().ok())
                    {
                        Some(l) if norm(l) != addr => {
                            self.follow(l);
                            backoff = Duration::from_millis(1);
                        }
                        _ => self.rotate(),
                    }
                }
                // Refused for what it carries: sending it again cannot help.
                Code::ResourceExhausted if st.metadata().get(keel_proto::REFUSED_KEY).is_some() => {
                    return Err(rpc(st));
                }
                Code::Aborted | Code::ResourceExhausted => said = Some(st.message().to_string()),
                Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal
                    if is_refused(&st) || st.message().contains("transport") =>
                {
                    self.forget(&addr);
                    conn_err = Some(format!("{addr}: {}", st.message()));
                    if !idempotent && !is_refused(&st) {
                        return Err(ClientError::Ambiguous(format!(
                            "the connection to {addr} failed after the request was sent; it may still take effect ({})",
                            st.message()
                        )));
                    }
                    self.rotate();
                }
                Code::Unavailable => {
                    said = Some(st.message().to_string());
                    if !idempotent {
                        return Err(ClientError::Ambiguous(st.message().to_string()));
                    }
                    self.rotate();
                }
                _ => return Err(rpc(st)),
            }
        }
    }

    async fn append_raw(&self, records: Vec<Bytes>) -> Result<u64, ClientError> {
        let req = AppendRequest { log: 0, records };
        self.call(false, move |mut c| {
            let req = req.clone();
            async move { c.append(req).await.map(|r| r.into_inner().first_offset) }
        })
        .await
    }
}

fn source_text(e: &dyn std::error::Error) -> String {
    // Error chains repeat themselves ("transport error: tcp connect error:
    // tcp connect error: ..."): keep each distinct message once.
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut src = e.source();
    while let Some(x) = src {
        let t = x.to_string();
        if !parts.iter().any(|p| p == &t || p.ends_with(&t)) {
            parts.push(t);
        }
        src = x.source();
    }
    parts.join(": ")
}

/// Codes with which the server refuses an append request as a whole,
/// for what it carries (nothing of it was appended).
fn refuses_request(code: Code) -> bool {
    matches!(code, Code::InvalidArgument | Code::ResourceExhausted)
}

/// Gathers queued appends into batches and sends each as one request, at
/// most `max_in_flight` at a time.
async fn batcher(core: Arc<Core>, mut rx: mpsc::UnboundedReceiver<AppendJob>) {
    let limit = Arc::new(Semaphore::new(core.opts.max_in_flight.max(1)));
    let mut carry: Option<AppendJob> = None;
    loop {
        let first = match carry.take() {
            Some(j) => j,
            None => match rx.recv().await {
                Some(j) => j,
                None => return,
            },
        };
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = first.bytes;
        let mut count = first.records.len();
        let mut jobs = vec![first];
        let linger_until = Instant::now() + core.opts.linger;
        loop {
            if bytes >= core.opts.max_batch_bytes || count >= core.opts.max_batch_records {
                break;
            }
            let j = match rx.try_recv() {
                Ok(j) => j,
                Err(_) if core.opts.linger.is_zero() => break,
                Err(_) => {
                    let left = linger_until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    match tokio::time::timeout(left, rx.recv()).await {
                        Ok(Some(j)) => j,
                        _ => break,
                    }
                }
            };
            if bytes + j.bytes > core.opts.max_batch_bytes && !jobs.is_empty() {
                carry = Some(j);
                break;
            }
            bytes += j.bytes;
            count += j.records.len();
            jobs.push(j);
        }
        let core = core.clone();
        tokio::spawn(async move {
            let mut records = Vec::with_capacity(count);
            let mut sizes = Vec::with_capacity(jobs.len());
            for j in &jobs {
                sizes.push(j.records.len() as u64);
                records.extend(j.records.iter().cloned());
            }
            let result = core.append_raw(records).await;
            if jobs.len() > 1
                && matches!(result, Err(ClientError::Rpc { code, .. }) if refuses_request(code))
            {
                // The server refuses a request whole, so one caller's bad
                // record (too large, say) appended none of the batch: send
                // each caller's records alone, in order, so that only the
                // bad one fails.
                for j in jobs {
                    let r = core.append_raw(j.records).await;
                    let _ = j.reply.send(r);
                }
                drop(permit);
                return;
            }
            drop(permit);
            let mut at = 0u64;
            for (j, n) in jobs.into_iter().zip(sizes) {
                let _ = j.reply.send(result.clone().map(|first| first + at));
                at += n;
            }
        });
    }
}
