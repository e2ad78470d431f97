//! The peer transport: persistent TCP connections between nodes.
//!
//! Every node listens on its peer address. For each other node it keeps one
//! outbound connection, dialed with exponential back-off, over which it sends
//! length-prefixed frames (see `frame`): first a handshake, then raft
//! messages of every group. A writer task takes everything queued for that
//! peer at once, encodes it into one buffer and writes it with one call
//! (batching; TCP_NODELAY so nothing waits). Inbound connections only
//! receive: each frame is decoded (`keel_raft::codec::decode` checks every
//! entry's CRC) and routed by group to that group's inbox. A bad frame, a
//! message that claims another sender or recipient, or a handshake from
//! another cluster closes that connection with a logged error.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use keel_raft::{GroupId, Message, NodeId, codec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::metrics::Registry;
use crate::node::frame::{self, FrameError, Hello, HelloReply};
use crate::node::group::Input;

/// Client API addresses of the members, as each announced it.
#[derive(Debug, Default)]
pub struct AddrBook {
    addrs: RwLock<HashMap<NodeId, String>>,
}

impl AddrBook {
    pub fn set(&self, id: NodeId, addr: String) {
        let mut m = self.addrs.write().unwrap_or_else(|p| p.into_inner());
        if m.get(&id) != Some(&addr) {
            m.insert(id, addr);
        }
    }

    pub fn get(&self, id: NodeId) -> Option<String> {
        self.addrs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }
}

/// Group inboxes by group id.
#[derive(Default)]
pub struct Router {
    groups: RwLock<HashMap<GroupId, mpsc::UnboundedSender<Input>>>,
}

impl Router {
    pub fn add(&self, group: GroupId, tx: mpsc::UnboundedSender<Input>) {
        self.groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(group, tx);
    }

    fn route(&self, m: Message) {
        let groups = self.groups.read().unwrap_or_else(|p| p.into_inner());
        match groups.get(&m.group) {
            Some(tx) => {
                let _ = tx.send(Input::Peer(m));
            }
            None => debug!(
                group = m.group,
                from = m.from,
                "message for a group this node does not host"
            ),
        }
    }
}

/// What both directions of the transport need to know.
pub struct PeerContext {
    pub cluster: u64,
    pub me: NodeId,
    pub client_addr: String,
    /// Peer addresses of every member, this node included.
    pub peers: BTreeMap<NodeId, String>,
    pub addrs: Arc<AddrBook>,
    pub router: Arc<Router>,
    pub metrics: Arc<Registry>,
    /// The live inbound connection of each peer, by a token that ends it.
    /// A peer dials anew only once its previous connection failed on its
    /// side, so a new handshake from it retires the old connection here,
    /// which a partition may have left open with no FIN ever to come.
    pub inbound: std::sync::Mutex<HashMap<NodeId, tokio::sync::oneshot::Sender<()>>>,
}

/// The sending side: one queue per peer, drained by that peer's writer.
pub struct Transport {
    me: NodeId,
    queues: HashMap<NodeId, mpsc::UnboundedSender<Message>>,
}

impl Transport {
    /// Starts one outbound connection task per other member.
    pub fn start(ctx: Arc<PeerContext>) -> Arc<Transport> {
        let mut queues = HashMap::new();
        for (id, addr) in &ctx.peers {
            if *id == ctx.me {
                continue;
            }
            let (tx, rx) = mpsc::unbounded_channel();
            queues.insert(*id, tx);
            tokio::spawn(outbound(ctx.clone(), *id, addr.clone(), rx));
        }
        Arc::new(Transport { me: ctx.me, queues })
    }

    pub fn send(&self, m: Message) {
        match self.queues.get(&m.to) {
            Some(q) => {
                let _ = q.send(m);
            }
            None => warn!(
                from = self.me,
                to = m.to,
                "raft addressed a node that is not in --peers; message dropped"
            ),
        }
    }
}

async fn outbound(
    ctx: Arc<PeerContext>,
    to: NodeId,
    addr: String,
    mut rx: mpsc::UnboundedReceiver<Message>,
) {
    let mut backoff = Duration::from_millis(50);
    let mut failures = 0u32;
    loop {
        // Whatever queued while disconnected is stale: raft resends.
        while rx.try_recv().is_ok() {}
        if rx.is_closed() {
            return;
        }
        match dial(&ctx, to, &addr).await {
            Ok(stream) => {
                ctx.metrics.transport.connects.fetch_add(1, Relaxed);
                info!(peer = to, addr = %addr, "connected to peer");
                backoff = Duration::from_millis(50);
                failures = 0;
                match pump(&ctx, stream, &mut rx).await {
                    Ok(()) => return,
                    Err(e) => {
                        warn!(peer = to, addr = %addr, error = %e, "peer connection lost; reconnecting")
                    }
                }
            }
            Err(DialError::Refused(reason)) => {
                error!(peer = to, addr = %addr, reason = %reason, "peer refused our connection");
                // A configuration error, not a network one: no hurry.
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
            Err(DialError::Other(e)) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(50) {
                    warn!(peer = to, addr = %addr, error = %e, "cannot reach peer; retrying with back-off");
                } else {
                    debug!(peer = to, addr = %addr, error = %e, "cannot reach peer");
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_DIAL_BACKOFF);
    }
}

/// Longest pause between two dials of an unreachable peer. Short, because
/// a partition that heals costs up to one dial timeout plus this before
/// the peers talk again; a dial is one SYN, so redialing is cheap.
const MAX_DIAL_BACKOFF: Duration = Duration::from_millis(250);
/// How long one dial may wait for the peer's SYN-ACK: far above a round
/// trip between members of one cluster (its election timeout is hundreds
/// of milliseconds), under the kernel's first SYN retransmission (1 s), so
/// a dial that went out into a partition is given up soon after it heals.
const DIAL_TIMEOUT: Duration = Duration::from_millis(400);
/// Data written to a peer and not acknowledged for this long closes the
/// connection (TCP_USER_TIMEOUT). Without it a connection whose packets a
/// partition drops stays open, and once the partition heals traffic waits
/// for TCP's retransmission back-off (seconds after a few seconds' cut);
/// with it the writer gives up and redials, and a fresh connection carries
/// traffic as soon as the path is back. Raft resends whatever was lost.
const PEER_USER_TIMEOUT_MS: u32 = 1000;

/// Sets TCP_USER_TIMEOUT on a peer socket (Linux); elsewhere a no-op.
fn set_user_timeout(s: &TcpStream) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let ms: libc::c_uint = PEER_USER_TIMEOUT_MS;
        // SAFETY: setsockopt on a socket this process owns, with a pointer
        // to a live c_uint and its exact size.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_USER_TIMEOUT,
                (&ms as *const libc::c_uint).cast(),
                std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = s;
    Ok(())
}

enum DialError {
    Refused(String),
    Other(String),
}

async fn dial(ctx: &PeerContext, to: NodeId, addr: &str) -> Result<TcpStream, DialError> {
    let other = |e: &dyn std::fmt::Display| DialError::Other(e.to_string());
    let mut s = tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| DialError::Other(format!("no answer to connect within {DIAL_TIMEOUT:?}")))?
        .map_err(|e| other(&e))?;
    s.set_nodelay(true).map_err(|e| other(&e))?;
    set_user_timeout(&s).map_err(|e| other(&format!("TCP_USER_TIMEOUT: {e}")))?;
    let hello = frame::encode_hello(&Hello {
        cluster: ctx.cluster,
        from: ctx.me,
        to,
        client_addr: ctx.client_addr.clone(),
    });
    s.write_all(&hello).await.map_err(|e| other(&e))?;
    let mut buf = BytesMut::new();
    let payload = tokio::time::timeout(
        Duration::from_secs(5),
        frame::read_frame(&mut s, &mut buf, frame::MAX_HELLO_FRAME),
    )
    .await
    .map_err(|_| DialError::Other("no handshake answer within 5 s".into()))?
    .map_err(|e| other(&e))?;
    match frame::decode_reply(payload).map_err(|e| other(&e))? {
        HelloReply::Accepted { client_addr } => {
            ctx.addrs.set(to, client_addr);
            Ok(s)
        }
        HelloReply::Refused { reason } => Err(DialError::Refused(reason)),
    }
}

/// Writes everything queued, in one go per wake-up, until the queue closes
/// (Ok) or the connection fails (Err).
async fn pump(
    ctx: &PeerContext,
    stream: TcpStream,
    rx: &mut mpsc::UnboundedReceiver<Message>,
) -> Result<(), String> {
    let (mut rd, mut wr) = stream.into_split();
    let mut msgs = Vec::with_capacity(256);
    let mut out = BytesMut::with_capacity(256 * 1024);
    let mut probe = [0u8; 64];
    let m = &ctx.metrics.transport;
    loop {
        tokio::select! {
            n = rx.recv_many(&mut msgs, 1024) => {
                if n == 0 {
                    return Ok(());
                }
            }
            // The acceptor never writes after the handshake: a read returns
            // only when it closed the connection.
            r = rd.read(&mut probe) => {
                return Err(match r {
                    Ok(0) => "closed by the peer".to_string(),
                    Ok(_) => "the peer sent unexpected bytes".to_string(),
                    Err(e) => e.to_string(),
                });
            }
        }
        out.clear();
        let frames = msgs.len() as u64;
        for msg in msgs.drain(..) {
            let len = codec::encoded_len(&msg);
            out.put_u32_le(len as u32);
            codec::encode(&msg, &mut out);
        }
        wr.write_all(&out).await.map_err(|e| e.to_string())?;
        m.frames_sent.fetch_add(frames, Relaxed);
        m.bytes_sent.fetch_add(out.len() as u64, Relaxed);
        m.writes.fetch_add(1, Relaxed);
        if out.capacity() > 8 << 20 {
            out = BytesMut::with_capacity(256 * 1024);
        }
    }
}

/// Accepts peer connections until the task is dropped.
pub async fn accept_loop(listener: TcpListener, ctx: Arc<PeerContext>) {
    loop {
        match listener.accept().await {
            Ok((sock, remote)) => {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    let remote = remote.to_string();
                    if let Err(e) = inbound(&ctx, sock, &remote).await {
                        ctx.metrics.transport.bad_frames.fetch_add(1, Relaxed);
                        error!(remote = %remote, error = %e, "closed a peer connection");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "accepting a peer connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn inbound(ctx: &PeerContext, mut sock: TcpStream, remote: &str) -> Result<(), String> {
    let _ = sock.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let hello = tokio::time::timeout(
        Duration::from_secs(5),
        frame::read_frame(&mut sock, &mut buf, frame::MAX_HELLO_FRAME),
    )
    .await
    .map_err(|_| "no handshake within 5 s".to_string())?
    .map_err(|e| format!("handshake: {e}"))?;
    let hello = frame::decode_hello(hello).map_err(|e| e.to_string())?;
    let refuse = if hello.cluster != ctx.cluster {
        Some(format!(
            "node {} is in cluster {:016x}, this node ({}) is in cluster {:016x}: the nodes were started with different --peers or --cluster-name",
            hello.from, hello.cluster, ctx.me, ctx.cluster
        ))
    } else if hello.to != ctx.me {
        Some(format!(
            "node {} dialed node {} at this address, but this is node {}; check --peers",
            hello.from, hello.to, ctx.me
        ))
    } else if hello.from == ctx.me || !ctx.peers.contains_key(&hello.from) {
        Some(format!(
            "node {} is not a member of this cluster",
            hello.from
        ))
    } else {
        None
    };
    if let Some(reason) = refuse {
        let _ = sock
            .write_all(&frame::encode_reply(&HelloReply::Refused {
                reason: reason.clone(),
            }))
            .await;
        return Err(format!("refused handshake: {reason}"));
    }
    sock.write_all(&frame::encode_reply(&HelloReply::Accepted {
        client_addr: ctx.client_addr.clone(),
    }))
    .await
    .map_err(|e| e.to_string())?;
    let from = hello.from;
    ctx.addrs.set(from, hello.client_addr);
    debug!(peer = from, remote, "accepted peer connection");
    let (retire, mut retired) = tokio::sync::oneshot::channel();
    // Dropping the old sender ends the old connection's loop.
    drop(
        ctx.inbound
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(from, retire),
    );
    let m = &ctx.metrics.transport;
    loop {
        let read = tokio::select! {
            r = frame::read_frame(&mut sock, &mut buf, frame::MAX_FRAME) => r,
            _ = &mut retired => {
                debug!(peer = from, "the peer connected again: dropping its old connection");
                return Ok(());
            }
        };
        let payload = match read {
            Ok(p) => p,
            Err(FrameError::Closed) => {
                debug!(peer = from, "peer closed its connection");
                return Ok(());
            }
            Err(FrameError::Io(e)) => {
                debug!(peer = from, error = %e, "peer connection failed");
                return Ok(());
            }
            Err(e) => return Err(format!("from node {from}: {e}")),
        };
        m.frames_received.fetch_add(1, Relaxed);
        m.bytes_received
            .fetch_add(payload.len() as u64 + 4, Relaxed);
        let msg = codec::decode(payload).map_err(|e| format!("bad frame from node {from}: {e}"))?;
        if msg.from != from || msg.to != ctx.me {
            return Err(format!(
                "node {from} sent a message from {} to {} on its connection to node {}",
                msg.from, msg.to, ctx.me
            ));
        }
        ctx.router.route(msg);
    }
}
