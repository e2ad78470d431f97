//! The peer transport: persistent TCP connections between nodes.
//!
//! Every node listens on its peer address. For each member of any group it
//! hosts it keeps one outbound connection, dialed on first use with
//! exponential back-off, over which it sends length-prefixed frames (see
//! `frame`): first a handshake, then raft messages of every group. A
//! writer task takes everything queued for that peer at once, encodes it
//! into one buffer and writes it with one call (batching; TCP_NODELAY so
//! nothing waits). Inbound connections only receive: each frame is decoded
//! (`keel_raft::codec::decode` checks every entry's CRC) and routed by
//! group to that group's inbox.
//!
//! Who may talk to whom comes from the [`Directory`]: the members of every
//! hosted group's configuration, with the info the configuration holds
//! (peer address, incarnation). A handshake from a node that is not a
//! member, from another cluster, or from a member whose data directory is
//! not the one the configuration knows (its incarnation differs: it was
//! wiped or replaced) is refused with a reason; so is a reply from such a
//! node. Every handshake's announced info is passed to the groups
//! (`Router::observe`), whose leaders record what the configuration does
//! not know yet. The handshake authenticates nothing cryptographically.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use keel_raft::{GroupId, Membership, Message, NodeId, codec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::frame::{self, FrameError, Hello, HelloReply, RefuseCode};
use crate::member_info::{MemberInfo, info_of};
use crate::metrics::Registry;

/// Who the members are and how to reach them, merged over every group this
/// node hosts, and which data directories were removed.
///
/// A node accepts a handshake from a member (whose incarnation, once
/// known, must match), refuses one from a data directory a committed
/// configuration of a hosted group removed (the node id with the
/// incarnation it had then: a node re-added after a wipe has a new one),
/// and accepts one from a node it does not know yet: a node that lags (or
/// joins) does not yet hold the configuration that added the current
/// leader, and must still hear it. Addresses come from the configurations,
/// else from what a peer announced in its handshake. A joining node's
/// ticket (the configuration as of its admission) overrides the older
/// configurations it replays while catching up, until a committed
/// configuration names it.
#[derive(Debug, Default)]
pub struct Directory {
    inner: RwLock<DirInner>,
}

#[derive(Debug, Default)]
struct DirInner {
    /// Per group: the members of its latest and last committed
    /// configurations, and their info.
    groups: HashMap<GroupId, BTreeMap<NodeId, MemberInfo>>,
    /// Per group: the members of the last committed configuration seen.
    committed: HashMap<GroupId, BTreeMap<NodeId, MemberInfo>>,
    /// Per group: a joining node's ticket, until a committed configuration
    /// of the group names this node.
    seeds: HashMap<GroupId, BTreeMap<NodeId, MemberInfo>>,
    /// The merge over groups and seeds (seeds win; then an entry with a
    /// known incarnation).
    members: HashMap<NodeId, MemberInfo>,
    /// Data directories (node id, incarnation) a committed configuration
    /// dropped, since this process started.
    removed: BTreeSet<(NodeId, u64)>,
    /// Client addresses as announced in handshakes (fresher than the
    /// configuration's).
    announced: HashMap<NodeId, String>,
    /// Peer addresses as announced in handshakes.
    announced_peer: HashMap<NodeId, String>,
    /// Peers that refused this node, and why (for status).
    refusals: BTreeMap<NodeId, String>,
}

impl Directory {
    /// Sets the members of `group`: those of its latest configuration and
    /// of its last committed one (a member being removed stays reachable
    /// until its removal commits, so a leader removing itself still gets
    /// the acknowledgements that commit it; a member being added is
    /// reachable at once). The latest configuration's info wins. A data
    /// directory the committed configuration dropped since the last call
    /// (with a known incarnation) is removed.
    pub fn set_group(&self, group: GroupId, latest: &Membership, committed: &Membership) {
        let mut d = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let now: BTreeMap<NodeId, MemberInfo> = committed
            .all_members()
            .map(|id| (id, info_of(committed, id)))
            .collect();
        let mut members = now.clone();
        for id in latest.all_members() {
            members.insert(id, info_of(latest, id));
        }
        if let Some(before) = d.committed.get(&group) {
            let gone: Vec<(NodeId, u64)> = before
                .iter()
                .filter(|(id, info)| !now.contains_key(id) && info.incarnation != 0)
                .map(|(id, info)| (*id, info.incarnation))
                .collect();
            d.removed.extend(gone);
        }
        if !now.is_empty() {
            d.committed.insert(group, now);
        }
        d.groups.insert(group, members);
        d.merge();
    }

    /// The configuration a joining node was given for `group` (as of its
    /// admission): its members are reachable, and their info overrides the
    /// older configurations the node replays, until a committed
    /// configuration of the group names this node ([`clear_seed`]).
    ///
    /// [`clear_seed`]: Directory::clear_seed
    pub fn set_seed(&self, group: GroupId, m: &Membership) {
        let mut d = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let members = m.all_members().map(|id| (id, info_of(m, id))).collect();
        d.seeds.insert(group, members);
        d.merge();
    }

    /// Whether this node still holds a joining node's seed for `group`
    /// (it is catching up to its own admission).
    pub fn has_seed(&self, group: GroupId) -> bool {
        let d = self.inner.read().unwrap_or_else(|p| p.into_inner());
        d.seeds.contains_key(&group)
    }

    /// Drops a joining node's seed for `group`.
    pub fn clear_seed(&self, group: GroupId) {
        let mut d = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if d.seeds.remove(&group).is_some() {
            d.merge();
        }
    }

    /// Forgets a group (no longer hosted).
    pub fn remove_group(&self, group: GroupId) {
        let mut d = self.inner.write().unwrap_or_else(|p| p.into_inner());
        d.groups.remove(&group);
        d.committed.remove(&group);
        d.seeds.remove(&group);
        d.merge();
    }

    /// The member's info, if it is a member of any hosted group (or of a
    /// joining node's seed).
    pub fn member(&self, id: NodeId) -> Option<MemberInfo> {
        let d = self.inner.read().unwrap_or_else(|p| p.into_inner());
        d.members.get(&id).cloned()
    }

    /// Whether a committed configuration removed node `id` running on the
    /// data directory `incarnation`.
    pub fn is_removed(&self, id: NodeId, incarnation: u64) -> bool {
        let d = self.inner.read().unwrap_or_else(|p| p.into_inner());
        d.removed.contains(&(id, incarnation))
    }

    /// Where to dial `id`, and the incarnation to expect (0: unknown); none
    /// without a known address.
    pub fn address(&self, id: NodeId) -> Option<(String, u64)> {
        let d = self.inner.read().unwrap_or_else(|p| p.into_inner());
        match d.members.get(&id) {
            Some(m) if !m.peer_addr.is_empty() => Some((m.peer_addr.clone(), m.incarnation)),
            m => d
                .announced_peer
                .get(&id)
                .filter(|a| !a.is_empty())
                .map(|a| (a.clone(), m.map_or(0, |m| m.incarnation))),
        }
    }

    /// Every member of any hosted group.
    pub fn members(&self) -> Vec<NodeId> {
        let d = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<NodeId> = d.members.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// The client address of `id`: as it announced it, else as the
    /// configuration holds it.
    pub fn client_addr(&self, id: NodeId) -> Option<String> {
        let d = self.inner.read().unwrap_or_else(|p| p.into_inner());
        d.announced
            .get(&id)
            .cloned()
            .or_else(|| d.members.get(&id).map(|m| m.client_addr.clone()))
            .filter(|a| !a.is_empty())
    }

    /// Notes a client address announced by `id`.
    pub fn announce(&self, id: NodeId, client_addr: &str) {
        if client_addr.is_empty() {
            return;
        }
        let mut d = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if d.announced.get(&id).map(String::as_str) != Some(client_addr) {
            d.announced.insert(id, client_addr.to_string());
        }
    }

    /// Notes a peer address announced by `id` (used to dial a node no
    /// configuration held here names yet).
    pub fn announce_peer(&self, id: NodeId, peer_addr: &str) {
        if peer_addr.is_empty() {
            return;
        }
        let mut d = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if d.announced_peer.get(&id).map(String::as_str) != Some(peer_addr) {
            d.announced_peer.insert(id, peer_addr.to_string());
        }
    }

    /// Peers that refused this node's handshake, with their reasons.
    pub fn refusals(&self) -> BTreeMap<NodeId, String> {
        let d = self.inner.read().unwrap_or_else(|p| p.into_inner());
        d.refusals.clone()
    }

    fn set_refusal(&self, id: NodeId, why: Option<String>) {
        let mut d = self.inner.write().unwrap_or_else(|p| p.into_inner());
        match why {
            Some(w) => d.refusals.insert(id, w),
            None => d.refusals.remove(&id),
        };
    }
}

impl DirInner {
    fn merge(&mut self) {
        let mut members: HashMap<NodeId, MemberInfo> = HashMap::new();
        for g in self.groups.values() {
            for (id, info) in g {
                match members.get(id) {
                    Some(have) if have.incarnation != 0 || info.incarnation == 0 => {}
                    _ => {
                        members.insert(*id, info.clone());
                    }
                }
            }
        }
        for g in self.seeds.values() {
            for (id, info) in g {
                members.insert(*id, info.clone());
            }
        }
        // A data directory a configuration names again (re-added as it
        // was) is no longer removed.
        self.removed
            .retain(|(id, inc)| members.get(id).is_none_or(|m| m.incarnation != *inc));
        self.members = members;
    }
}

type Inbox = Box<dyn Fn(Message) + Send + Sync>;
type Observer = Box<dyn Fn(NodeId, MemberInfo) + Send + Sync>;

/// Group inboxes by group id.
#[derive(Default)]
pub struct Router {
    groups: RwLock<HashMap<GroupId, (Inbox, Observer)>>,
}

impl Router {
    /// Routes messages of `group` to `inbox`, and peers' announcements to
    /// `observe`.
    pub fn add(
        &self,
        group: GroupId,
        inbox: impl Fn(Message) + Send + Sync + 'static,
        observe: impl Fn(NodeId, MemberInfo) + Send + Sync + 'static,
    ) {
        self.groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(group, (Box::new(inbox), Box::new(observe)));
    }

    /// Stops routing to `group`.
    pub fn remove(&self, group: GroupId) {
        self.groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&group);
    }

    fn route(&self, m: Message) {
        let groups = self.groups.read().unwrap_or_else(|p| p.into_inner());
        match groups.get(&m.group) {
            Some((inbox, _)) => inbox(m),
            None => debug!(
                group = m.group,
                from = m.from,
                "message for a group this node does not host"
            ),
        }
    }

    /// Passes a peer's announced info to every group.
    pub fn observe(&self, id: NodeId, info: &MemberInfo) {
        let groups = self.groups.read().unwrap_or_else(|p| p.into_inner());
        for (_, obs) in groups.values() {
            obs(id, info.clone());
        }
    }
}

/// What both directions of the transport need to know.
pub struct PeerContext {
    /// The cluster id every peer must present.
    pub cluster: u64,
    /// This node.
    pub me: NodeId,
    /// This node's data-directory incarnation.
    pub incarnation: u64,
    /// This node's client API address (announced).
    pub client_addr: String,
    /// This node's peer address (announced).
    pub peer_addr: String,
    /// The members and their addresses.
    pub directory: Arc<Directory>,
    /// Where inbound messages go.
    pub router: Arc<Router>,
    /// Counters.
    pub metrics: Arc<Registry>,
    /// The live inbound connection of each peer, by a token that ends it.
    /// A peer dials anew only once its previous connection failed on its
    /// side, so a new handshake from it retires the old connection here,
    /// which a partition may have left open with no FIN ever to come.
    pub inbound: Mutex<HashMap<NodeId, tokio::sync::oneshot::Sender<()>>>,
}

impl PeerContext {
    /// What this node announces about itself.
    pub fn my_info(&self) -> MemberInfo {
        MemberInfo {
            incarnation: self.incarnation,
            peer_addr: self.peer_addr.clone(),
            client_addr: self.client_addr.clone(),
        }
    }
}

/// The sending side: one queue per peer, drained by that peer's writer
/// task, created on first use.
pub struct Transport {
    ctx: Arc<PeerContext>,
    queues: RwLock<HashMap<NodeId, mpsc::UnboundedSender<Message>>>,
}

impl Transport {
    /// A transport with no connections yet.
    pub fn new(ctx: Arc<PeerContext>) -> Arc<Transport> {
        Arc::new(Transport {
            ctx,
            queues: RwLock::new(HashMap::new()),
        })
    }

    /// The context (directory, router, identity).
    pub fn context(&self) -> &Arc<PeerContext> {
        &self.ctx
    }

    /// Sends messages (each to its recipient). Messages to a node that is
    /// not a member of any hosted group are dropped: raft resends.
    pub fn send_all(self: &Arc<Self>, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        let mut missing = Vec::new();
        {
            let queues = self.queues.read().unwrap_or_else(|p| p.into_inner());
            for m in msgs {
                match queues.get(&m.to) {
                    Some(q) if !q.is_closed() => {
                        let _ = q.send(m);
                    }
                    _ => missing.push(m),
                }
            }
        }
        for m in missing {
            let to = m.to;
            if let Some(q) = self.queue(to) {
                let _ = q.send(m);
            } else {
                debug!(
                    from = self.ctx.me,
                    to, "no address known for this node; message dropped"
                );
            }
        }
    }

    /// Closes the connections to nodes that are no longer members of any
    /// hosted group (their writer tasks end when their queue closes).
    pub fn prune(&self) {
        let d = &self.ctx.directory;
        let mut queues = self.queues.write().unwrap_or_else(|p| p.into_inner());
        queues.retain(|id, _| d.member(*id).is_some() || d.address(*id).is_some());
    }

    /// The queue to `to`, starting its connection task when needed.
    fn queue(self: &Arc<Self>, to: NodeId) -> Option<mpsc::UnboundedSender<Message>> {
        if to == self.ctx.me {
            return None;
        }
        self.ctx.directory.address(to)?;
        let mut queues = self.queues.write().unwrap_or_else(|p| p.into_inner());
        if let Some(q) = queues.get(&to)
            && !q.is_closed()
        {
            return Some(q.clone());
        }
        let (tx, rx) = mpsc::unbounded_channel();
        queues.insert(to, tx.clone());
        tokio::spawn(outbound(self.ctx.clone(), to, rx));
        Some(tx)
    }
}

/// Keeps a connection to `to` while it is a member, writing what is queued.
async fn outbound(ctx: Arc<PeerContext>, to: NodeId, mut rx: mpsc::UnboundedReceiver<Message>) {
    let mut backoff = Duration::from_millis(50);
    let mut failures = 0u32;
    loop {
        // Whatever queued while disconnected is stale: raft resends.
        while rx.try_recv().is_ok() {}
        let Some((addr, incarnation)) = ctx.directory.address(to) else {
            debug!(peer = to, "no address known: closing the connection task");
            return;
        };
        match dial(&ctx, to, &addr, incarnation).await {
            Ok(stream) => {
                ctx.metrics.transport.connects.fetch_add(1, Relaxed);
                ctx.directory.set_refusal(to, None);
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
                error!(peer = to, addr = %addr, reason = %reason, "peer refused the connection");
                ctx.directory.set_refusal(to, Some(reason));
                // A configuration matter, not a network one: no hurry.
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

/// Bytes encoded ahead of one write to a peer (a message larger than this
/// still goes whole).
const WRITE_CHUNK: usize = 1 << 20;

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

async fn dial(
    ctx: &PeerContext,
    to: NodeId,
    addr: &str,
    expected_incarnation: u64,
) -> Result<TcpStream, DialError> {
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
        incarnation: ctx.incarnation,
        client_addr: ctx.client_addr.clone(),
        peer_addr: ctx.peer_addr.clone(),
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
        HelloReply::Accepted {
            incarnation,
            client_addr,
            peer_addr,
        } => {
            if expected_incarnation != 0 && incarnation != expected_incarnation {
                return Err(DialError::Refused(format!(
                    "node {to} at {addr} runs on another data directory (incarnation {incarnation:016x}) than the cluster knows ({expected_incarnation:016x}): it was wiped or replaced, so it must not take part. Remove it (keel members remove {to}) and add it again"
                )));
            }
            ctx.directory.announce(to, &client_addr);
            ctx.directory.announce_peer(to, &peer_addr);
            ctx.router.observe(
                to,
                &MemberInfo {
                    incarnation,
                    peer_addr,
                    client_addr,
                },
            );
            Ok(s)
        }
        HelloReply::Refused { code, reason } => Err(DialError::Refused(format!(
            "{reason} ({})",
            match code {
                RefuseCode::NotMember => "not a member",
                RefuseCode::Incarnation => "another data directory",
                RefuseCode::OtherCluster => "another cluster",
                RefuseCode::WrongNode => "wrong node",
                RefuseCode::Other => "refused",
            }
        ))),
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
        let frames = msgs.len() as u64;
        let mut bytes = 0u64;
        let mut pending = msgs.drain(..).peekable();
        // Everything queued goes in as few writes as possible, but at most
        // WRITE_CHUNK bytes are encoded ahead of a write: a burst of
        // catch-up appends neither grows the buffer without bound nor holds
        // the thread (which also serves clients) for the whole burst.
        while pending.peek().is_some() {
            out.clear();
            while out.len() < WRITE_CHUNK
                && let Some(msg) = pending.next()
            {
                let len = codec::encoded_len(&msg);
                out.put_u32_le(len as u32);
                codec::encode(&msg, &mut out);
            }
            wr.write_all(&out).await.map_err(|e| e.to_string())?;
            bytes += out.len() as u64;
            m.writes.fetch_add(1, Relaxed);
        }
        m.frames_sent.fetch_add(frames, Relaxed);
        m.bytes_sent.fetch_add(bytes, Relaxed);
        if out.capacity() > 2 * WRITE_CHUNK {
            out = BytesMut::with_capacity(256 * 1024);
        }
    }
}

/// Accepts peer connections until the task is dropped, which also ends
/// every connection it accepted: a node stopped in a process that goes on
/// (an embedding application, a test) must leave no connection behind, or
/// its peers keep writing into it and never dial the node that takes its
/// place.
pub async fn accept_loop(listener: TcpListener, ctx: Arc<PeerContext>) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        match listener.accept().await {
            Ok((sock, remote)) => {
                while conns.try_join_next().is_some() {}
                let ctx = ctx.clone();
                conns.spawn(async move {
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

/// Why `hello` may not connect, if it may not.
fn refusal(ctx: &PeerContext, hello: &Hello) -> Option<(RefuseCode, String)> {
    if hello.cluster != ctx.cluster {
        return Some((
            RefuseCode::OtherCluster,
            format!(
                "node {} is in cluster {:016x}, node {} is in cluster {:016x}: they were created apart (different --peers or --cluster-name, or a data directory of another cluster)",
                hello.from, hello.cluster, ctx.me, ctx.cluster
            ),
        ));
    }
    if hello.to != ctx.me {
        return Some((
            RefuseCode::WrongNode,
            format!(
                "node {} dialed node {} at this address, but this is node {}; check the member addresses",
                hello.from, hello.to, ctx.me
            ),
        ));
    }
    if hello.from == ctx.me {
        return Some((
            RefuseCode::NotMember,
            format!("node {} claims this node's own id", hello.from),
        ));
    }
    if ctx.directory.is_removed(hello.from, hello.incarnation) {
        return Some((
            RefuseCode::NotMember,
            format!(
                "node {} is not a member: it was removed from the cluster (node {} applied the configuration that removed it); to take part again it must be added again (keel members add)",
                hello.from, ctx.me
            ),
        ));
    }
    // A node not known here yet is accepted: this node may lag behind the
    // configuration that added it (a new leader, say).
    let member = ctx.directory.member(hello.from)?;
    if member.incarnation != 0 && member.incarnation != hello.incarnation {
        return Some((
            RefuseCode::Incarnation,
            format!(
                "node {} presents data directory incarnation {:016x}, but the cluster knows node {} as {:016x}: its data was wiped or replaced, and an empty directory must not take the place of one that acknowledged entries. Remove it (keel members remove {}) and add it again",
                hello.from, hello.incarnation, hello.from, member.incarnation, hello.from
            ),
        ));
    }
    None
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
    if let Some((code, reason)) = refusal(ctx, &hello) {
        let _ = sock
            .write_all(&frame::encode_reply(&HelloReply::Refused {
                code,
                reason: reason.clone(),
            }))
            .await;
        return Err(format!("refused handshake: {reason}"));
    }
    sock.write_all(&frame::encode_reply(&HelloReply::Accepted {
        incarnation: ctx.incarnation,
        client_addr: ctx.client_addr.clone(),
        peer_addr: ctx.peer_addr.clone(),
    }))
    .await
    .map_err(|e| e.to_string())?;
    let (from, incarnation) = (hello.from, hello.incarnation);
    ctx.directory.announce(from, &hello.client_addr);
    ctx.directory.announce_peer(from, &hello.peer_addr);
    ctx.router.observe(
        from,
        &MemberInfo {
            incarnation: hello.incarnation,
            peer_addr: hello.peer_addr,
            client_addr: hello.client_addr,
        },
    );
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
        if ctx.directory.is_removed(from, incarnation) {
            return Err(format!(
                "node {from} was removed from the cluster: closing its connection"
            ));
        }
        if msg.from != from || msg.to != ctx.me {
            return Err(format!(
                "node {from} sent a message from {} to {} on its connection to node {}",
                msg.from, msg.to, ctx.me
            ));
        }
        ctx.router.route(msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(incarnation: u64, port: u16) -> MemberInfo {
        MemberInfo {
            incarnation,
            peer_addr: format!("127.0.0.1:{port}"),
            client_addr: String::new(),
        }
    }

    /// A configuration of `voters` and `learners`, with infos.
    fn conf(voters: &[(NodeId, u64)], learners: &[(NodeId, u64)]) -> Membership {
        let mut m = Membership::new(
            voters.iter().map(|(id, _)| *id),
            learners.iter().map(|(id, _)| *id),
        );
        for (id, inc) in voters.iter().chain(learners) {
            m.info.insert(*id, info(*inc, 7000 + *id as u16).encode());
        }
        m
    }

    fn ctx(me: NodeId, incarnation: u64) -> PeerContext {
        PeerContext {
            cluster: 9,
            me,
            incarnation,
            client_addr: String::new(),
            peer_addr: String::new(),
            directory: Arc::new(Directory::default()),
            router: Arc::new(Router::default()),
            metrics: Registry::new(me),
            inbound: Default::default(),
        }
    }

    fn hello(from: NodeId, incarnation: u64, to: NodeId) -> Hello {
        Hello {
            cluster: 9,
            from,
            to,
            incarnation,
            client_addr: String::new(),
            peer_addr: String::new(),
        }
    }

    #[test]
    fn a_removed_data_directory_is_refused_and_the_same_node_on_a_new_one_is_not() {
        let c = ctx(2, 20);
        let d = &c.directory;
        let before = conf(&[(1, 10), (2, 20), (3, 30)], &[]);
        d.set_group(0, &before, &before);
        assert!(refusal(&c, &hello(1, 10, 2)).is_none());
        assert_eq!(
            refusal(&c, &hello(1, 11, 2)).map(|r| r.0),
            Some(RefuseCode::Incarnation),
            "a member on another data directory"
        );
        // Node 1's removal appended, not yet committed: still reachable.
        let after = conf(&[(2, 20), (3, 30)], &[]);
        d.set_group(0, &after, &before);
        assert!(refusal(&c, &hello(1, 10, 2)).is_none());
        // Committed: that data directory is refused; node 1 on a wiped one
        // (joining again) is not.
        d.set_group(0, &after, &after);
        assert_eq!(
            refusal(&c, &hello(1, 10, 2)).map(|r| r.0),
            Some(RefuseCode::NotMember)
        );
        assert!(refusal(&c, &hello(1, 12, 2)).is_none());
        assert!(
            refusal(&c, &hello(7, 70, 2)).is_none(),
            "a node not known yet"
        );
        let mut other = hello(1, 12, 2);
        other.cluster = 8;
        assert_eq!(
            refusal(&c, &other).map(|r| r.0),
            Some(RefuseCode::OtherCluster)
        );
    }

    #[test]
    fn a_joining_node_replaying_old_configurations_still_accepts_the_current_leader() {
        // Node 4 (incarnation 41) joins; its ticket is the configuration as
        // of its admission: node 1 leads on its second data directory (12).
        let c = ctx(4, 41);
        let d = &c.directory;
        d.set_seed(0, &conf(&[(1, 12), (2, 20), (3, 30)], &[(4, 41)]));
        // It replays the history in its log: node 4's earlier data
        // directory (40) was a voter, node 1's first one (10) was removed.
        let history = [
            conf(&[(1, 10), (2, 20), (3, 30)], &[]),
            conf(&[(1, 10), (2, 20), (3, 30), (4, 40)], &[]),
            conf(&[(1, 10), (2, 20), (3, 30)], &[]),
            conf(&[(2, 20), (3, 30)], &[]),
            conf(&[(2, 20), (3, 30)], &[(1, 12)]),
        ];
        let mut committed = Membership::default();
        for latest in &history {
            d.set_group(0, latest, &committed);
            assert!(
                refusal(&c, &hello(1, 12, 4)).is_none(),
                "the current leader refused at {latest:?}"
            );
            committed = latest.clone();
            d.set_group(0, latest, &committed);
            assert!(
                refusal(&c, &hello(1, 12, 4)).is_none(),
                "the current leader refused once {latest:?} committed"
            );
        }
        assert_eq!(d.address(1).map(|a| a.1), Some(12));
        // Its own admission commits: the configurations rule from now on.
        d.clear_seed(0);
        let now = conf(&[(1, 12), (2, 20), (3, 30)], &[(4, 41)]);
        d.set_group(0, &now, &now);
        assert!(refusal(&c, &hello(1, 12, 4)).is_none());
        assert!(
            refusal(&c, &hello(1, 10, 4)).is_some(),
            "node 1's first data directory, removed"
        );
    }
}
