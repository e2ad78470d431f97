//! [`Node`]: one process's membership in a keel cluster. It owns the data
//! directory, the peer listener and transport, and the groups it hosts.
//!
//! Start rules (the configuration lives in the log, flags only bootstrap):
//! - **Data present** (`node.toml` names a cluster): start from it. Refused
//!   when the id differs, when a cluster name is given and differs, or when
//!   bootstrap peers are given and differ from those the node was created
//!   with (the configuration now lives in the log). A join ticket is
//!   ignored: a node that joined knows its peers from the ticket it was
//!   first started with (`join.seed`) until its group holds a
//!   configuration.
//! - **Empty, with a join ticket**: record the ticket's cluster (and its
//!   configuration, in `join.seed`) and start with no configuration; the
//!   node votes only once a configuration that names it a voter reaches its
//!   log.
//! - **Empty otherwise**: bootstrap a new cluster from the peers (default:
//!   this node alone): every bootstrap group gets the same first entry
//!   ([`keel_raft::bootstrap_entry`]) and hard state term 1 on every
//!   founding node; the cluster id is derived from the cluster name and the
//!   sorted peer list, so founders given different lists refuse each other.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keel_log::{LogOptions, LogStore};
use keel_raft::{Config, GroupId, HardState, Membership, NodeId, Role, SoftState};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::core::{CoreSettings, GroupCore, StartState};
use crate::error::StartError;
use crate::group::Group;
use crate::identity::{ClusterIdentity, CreatedBy, Identity};
use crate::mark::MarkFile;
use crate::member_info::MemberInfo;
use crate::metrics::Registry;
use crate::runtime::{Driver, Input};
use crate::snapshot_store::SnapshotStore;
use crate::state_machine::StateMachine;
use crate::storage::{GroupStorage, meta_of};
use crate::transport::{Directory, PeerContext, Router, Transport};

/// How a node starts.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id (>= 1), unique in the cluster.
    pub id: NodeId,
    /// Where the node keeps its data.
    pub data_dir: PathBuf,
    /// The peer transport's address: listened on and announced to peers.
    pub peer_addr: String,
    /// The application's client address, announced to peers (for
    /// redirects and status); may be empty.
    pub client_addr: String,
    /// Names the cluster (part of the cluster id at bootstrap).
    pub cluster_name: Option<String>,
    /// The founding members' peer addresses, this node included, for a
    /// bootstrap (`None`: this node alone). With data present it must match
    /// what the node was created with, or be `None`.
    pub peers: Option<BTreeMap<NodeId, String>>,
    /// Join an existing cluster (only used on an empty data directory).
    pub join: Option<JoinTicket>,
    /// The groups a bootstrap creates with the founding members.
    pub bootstrap_groups: Vec<GroupId>,
    /// Raft tick (heartbeat interval).
    pub tick: Duration,
    /// Election timeout in ticks (randomized up to twice this).
    pub election_ticks: u32,
}

impl NodeConfig {
    /// A single node with defaults: ticks of 50 ms, elections after 10.
    pub fn new(id: NodeId, data_dir: impl Into<PathBuf>, peer_addr: impl Into<String>) -> Self {
        NodeConfig {
            id,
            data_dir: data_dir.into(),
            peer_addr: peer_addr.into(),
            client_addr: String::new(),
            cluster_name: None,
            peers: None,
            join: None,
            bootstrap_groups: vec![0],
            tick: Duration::from_millis(50),
            election_ticks: 10,
        }
    }
}

/// What a node needs to join an existing cluster, handed out by the
/// cluster when it admits the node ([`Group::admit`]).
#[derive(Debug, Clone)]
pub struct JoinTicket {
    /// The cluster's id.
    pub cluster_id: u64,
    /// The cluster's name, if it has one.
    pub cluster_name: Option<String>,
    /// The group the node was admitted to.
    pub group: GroupId,
    /// That group's configuration (with the members' addresses).
    pub membership: Membership,
}

/// Adjusts a group's raft settings.
pub type RaftTweak = Box<dyn Fn(&mut Config) + Send + Sync>;

/// How a group runs.
#[derive(Default)]
pub struct GroupOptions {
    /// The group core's settings (batching, snapshots, disk-full retries).
    pub settings: CoreSettings,
    /// The log store's settings.
    pub log: LogOptions,
    /// Adjusts the raft settings (the node fills in ids and timing first).
    pub raft: Option<RaftTweak>,
}

struct HostedGroup {
    id: GroupId,
    stop: Box<dyn Fn() + Send + Sync>,
    task: tokio::task::JoinHandle<()>,
    ticker: tokio::task::JoinHandle<()>,
}

/// A node: data directory, peer transport, hosted groups.
///
/// Stop it with [`Node::shutdown`]: dropping a `Node` without it releases
/// the data directory's lock but leaves its groups' tasks and the peer
/// listener running until the tokio runtime stops.
pub struct Node {
    cfg: NodeConfig,
    identity: Identity,
    cluster_id: u64,
    ctx: Arc<PeerContext>,
    transport: Arc<Transport>,
    registry: Arc<Registry>,
    accept: tokio::task::JoinHandle<()>,
    groups: Mutex<Vec<HostedGroup>>,
    _lock: File,
}

const LOCK: &str = "keel.lock";

/// `1=h:p,2=h:p`, sorted by id: the canonical form of a peer list.
pub fn peers_string(peers: &BTreeMap<NodeId, String>) -> String {
    peers
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// FNV-1a, 64 bits: stable across builds and platforms, for cluster ids.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The id of a cluster bootstrapped with this name and peer list.
pub fn cluster_id_of(name: Option<&str>, peers: &BTreeMap<NodeId, String>) -> u64 {
    fnv1a(
        format!(
            "keel-cluster:{}:{}",
            name.unwrap_or(""),
            peers_string(peers)
        )
        .as_bytes(),
    )
}

/// Creates `dir` and its missing parents, and fsyncs the parent of each
/// directory it created, so that the new entries survive a crash (a group
/// directory whose entry is lost takes its log with it).
pub(crate) fn create_dir_durably(dir: &Path) -> std::io::Result<()> {
    let mut missing = Vec::new();
    let mut p = dir;
    while !p.exists() {
        missing.push(p.to_path_buf());
        match p.parent() {
            Some(q) if !q.as_os_str().is_empty() => p = q,
            _ => break,
        }
    }
    std::fs::create_dir_all(dir)?;
    for m in missing.iter().rev() {
        let parent = match m.parent() {
            Some(q) if !q.as_os_str().is_empty() => q,
            _ => Path::new("."),
        };
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

fn lock_dir(path: &Path) -> Result<File, StartError> {
    let io = |source| StartError::DataDir {
        dir: path.to_path_buf(),
        source,
    };
    create_dir_durably(path).map_err(io)?;
    let mut lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path.join(LOCK))
        .map_err(io)?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = lock.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(StartError::DataDirLocked {
                dir: path.to_path_buf(),
                holder: if pid.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {pid})")
                },
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    lock.set_len(0).map_err(io)?;
    lock.rewind().map_err(io)?;
    let _ = writeln!(lock, "{}", std::process::id());
    Ok(lock)
}

/// Where a group's files live.
fn group_dir(data_dir: &Path, group: GroupId) -> PathBuf {
    data_dir.join("groups").join(group.to_string())
}

/// The identity of a data directory that is about to join a cluster: its
/// node id and incarnation (made and saved now if the directory is new),
/// to present to the cluster. Fails if the directory already belongs to a
/// cluster (then start it normally).
pub fn prepare_join(data_dir: &Path, id: NodeId) -> Result<u64, StartError> {
    let _lock = lock_dir(data_dir)?;
    match Identity::load(data_dir)? {
        Some(ident) if ident.node_id != id => Err(StartError::Config(format!(
            "data directory {} belongs to node {}, not node {id}; point --data-dir at this node's own directory (or an empty one)",
            data_dir.display(),
            ident.node_id
        ))),
        Some(ident) if ident.cluster.is_some() => Err(StartError::Config(format!(
            "data directory {} already belongs to a cluster; start the node without --join",
            data_dir.display()
        ))),
        Some(ident) => Ok(ident.incarnation),
        None => {
            let ident = Identity::fresh(id);
            ident.save(data_dir)?;
            Ok(ident.incarnation)
        }
    }
}

/// Whether a data directory already belongs to a cluster.
pub fn has_cluster(data_dir: &Path) -> Result<bool, StartError> {
    Ok(Identity::load(data_dir)?.is_some_and(|i| i.cluster.is_some()))
}

impl Node {
    /// Opens the data directory (bootstrapping or joining when it is
    /// empty, see the module doc), binds the peer listener and starts the
    /// transport. Groups are opened with [`Node::open_group`].
    pub async fn start(cfg: NodeConfig) -> Result<Node, StartError> {
        let bad = |s: String| StartError::Config(s);
        if cfg.id == 0 {
            return Err(bad("node id 0 is reserved; ids start at 1".into()));
        }
        let lock = lock_dir(&cfg.data_dir)?;
        // A new directory's identity is saved only once the start is known
        // to be valid (below): a refused start must not claim it.
        let mut identity = match Identity::load(&cfg.data_dir)? {
            Some(i) => i,
            None => Identity::fresh(cfg.id),
        };
        if identity.node_id != cfg.id {
            return Err(bad(format!(
                "data directory {} belongs to node {}, not node {}; point --data-dir at this node's own directory (or an empty one)",
                cfg.data_dir.display(),
                identity.node_id,
                cfg.id
            )));
        }
        let mut bootstrap = None;
        let mut seed = None;
        match identity.cluster.clone() {
            Some(c) => {
                check_flags(&cfg, &c)?;
                if c.created_by == CreatedBy::Join {
                    // Until the group holds a configuration of its own
                    // (a restart before the first snapshot or entries
                    // arrived), the ticket's says who the peers are.
                    seed = load_join_seed(&cfg.data_dir);
                }
            }
            None => match &cfg.join {
                Some(t) => {
                    // Before node.toml records the cluster: a node that
                    // restarts must still know its peers.
                    save_join_seed(&cfg.data_dir, t.group, &t.membership)?;
                    identity.cluster = Some(ClusterIdentity {
                        cluster_id: t.cluster_id,
                        cluster_name: t.cluster_name.clone(),
                        created_by: CreatedBy::Join,
                        bootstrap_peers: None,
                    });
                    seed = Some((t.group, t.membership.clone()));
                    info!(
                        node = cfg.id,
                        cluster = %format!("{:016x}", t.cluster_id),
                        "joining the cluster with an empty data directory: this node votes only once it is made a voter"
                    );
                }
                None => {
                    let peers = cfg
                        .peers
                        .clone()
                        .unwrap_or_else(|| BTreeMap::from([(cfg.id, cfg.peer_addr.clone())]));
                    if !peers.contains_key(&cfg.id) {
                        return Err(bad(format!(
                            "node {} is not in the peer list ({}); list every founding member, this node included",
                            cfg.id,
                            peers
                                .keys()
                                .map(|k| k.to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )));
                    }
                    let cluster_id = cluster_id_of(cfg.cluster_name.as_deref(), &peers);
                    let mut m = Membership::new(peers.keys().copied(), []);
                    for (id, addr) in &peers {
                        let info = MemberInfo {
                            incarnation: 0,
                            peer_addr: addr.clone(),
                            client_addr: String::new(),
                        };
                        m.info.insert(*id, info.encode());
                    }
                    keel_raft::decode_membership(&keel_raft::encode_membership(&m))
                        .map_err(|why| bad(format!("the peer list: {why}")))?;
                    identity.cluster = Some(ClusterIdentity {
                        cluster_id,
                        cluster_name: cfg.cluster_name.clone(),
                        created_by: CreatedBy::Bootstrap,
                        bootstrap_peers: Some(peers_string(&peers)),
                    });
                    info!(
                        node = cfg.id,
                        cluster = %format!("{cluster_id:016x}"),
                        members = peers.len(),
                        "bootstrapping a new cluster on an empty data directory"
                    );
                    bootstrap = Some(m);
                }
            },
        }
        if let Some(m) = &bootstrap {
            for g in &cfg.bootstrap_groups {
                bootstrap_group(&cfg.data_dir, *g, m)?;
            }
        }
        identity.save(&cfg.data_dir)?;
        let cluster = identity
            .cluster
            .as_ref()
            .expect("set above: loaded, joined or bootstrapped");
        let cluster_id = cluster.cluster_id;

        let listener =
            TcpListener::bind(&cfg.peer_addr)
                .await
                .map_err(|source| StartError::Listen {
                    what: "peer transport",
                    addr: cfg.peer_addr.clone(),
                    source,
                })?;
        let registry = Registry::new(cfg.id);
        let directory = Arc::new(Directory::default());
        directory.announce(cfg.id, &cfg.client_addr);
        if let Some((g, m)) = &seed {
            directory.set_seed(*g, m);
        }
        let ctx = Arc::new(PeerContext {
            cluster: cluster_id,
            me: cfg.id,
            incarnation: identity.incarnation,
            client_addr: cfg.client_addr.clone(),
            peer_addr: cfg.peer_addr.clone(),
            directory,
            router: Arc::new(Router::default()),
            metrics: registry.clone(),
            inbound: Default::default(),
        });
        let transport = Transport::new(ctx.clone());
        let accept = tokio::spawn(crate::transport::accept_loop(listener, ctx.clone()));
        Ok(Node {
            cfg,
            identity,
            cluster_id,
            ctx,
            transport,
            registry,
            accept,
            groups: Mutex::new(Vec::new()),
            _lock: lock,
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    /// The cluster's id.
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// The cluster's name, if it has one.
    pub fn cluster_name(&self) -> Option<&str> {
        self.identity
            .cluster
            .as_ref()
            .and_then(|c| c.cluster_name.as_deref())
    }

    /// This data directory's incarnation.
    pub fn incarnation(&self) -> u64 {
        self.identity.incarnation
    }

    /// Members and their addresses, over every hosted group.
    pub fn directory(&self) -> &Arc<Directory> {
        &self.ctx.directory
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Opens (or creates) a group's storage, restores its state machine
    /// from the latest snapshot and the log up to the applied mark, and
    /// starts its task.
    pub async fn open_group<M: StateMachine>(
        &self,
        group: GroupId,
        sm: M,
        opts: GroupOptions,
    ) -> Result<Group<M>, StartError> {
        let gerr = |reason: String| StartError::Group { group, reason };
        let dir = group_dir(&self.cfg.data_dir, group);
        #[allow(unused_mut)]
        let mut log_opts = opts.log;
        #[cfg(feature = "fault-injection")]
        crate::fault::apply_to_log(&mut log_opts);
        let (log, snaps, sm, snapshot, mark, mark_file) = tokio::task::spawn_blocking(
            move || -> Result<_, StartError> {
                let gerr = |reason: String| StartError::Group { group, reason };
                create_dir_durably(&dir).map_err(|e| gerr(format!("{}: {e}", dir.display())))?;
                let (log, report) = LogStore::open(&dir.join("log"), log_opts)
                    .map_err(|source| StartError::Log { group, source })?;
                if let Some(t) = &report.torn_tail {
                    warn!(group, file = %t.file.display(), bytes = t.bytes, copy = %t.copy.as_deref().map(|c| c.display().to_string()).unwrap_or_default(), "cut a torn tail left by a crash (the bytes cut are kept in the copy)");
                }
                let snaps = SnapshotStore::open(&dir.join("snapshot"))
                    .map_err(|e| gerr(format!("snapshots: {e}")))?;
                let mut sm = sm;
                let mut snapshot = None;
                if let Some(info) = snaps.latest().cloned() {
                    let meta = meta_of(&info).map_err(gerr)?;
                    let mut data = snaps
                        .open_data()
                        .map_err(|e| gerr(format!("reading snapshot {}: {e}", info.index)))?;
                    sm.restore(&meta, &mut data).map_err(|e| {
                        gerr(format!(
                            "restoring the state machine from snapshot {}: {e}",
                            info.index
                        ))
                    })?;
                    let continues = log.first_index() <= meta.index + 1
                        && log.last_index() >= meta.index
                        && log.term(meta.index).ok().flatten() == Some(meta.term);
                    if !continues {
                        // A crash between saving a received snapshot and
                        // resetting the log to it.
                        log.reset(meta.index, meta.term, meta.next_offset)
                            .map_err(|source| StartError::Log { group, source })?;
                    }
                    snapshot = Some(meta);
                }
                let (mark_file, mark) = MarkFile::open(&dir.join("applied"))
                    .map_err(|e| gerr(format!("the applied mark: {e}")))?;
                Ok((Arc::new(log), snaps, sm, snapshot, mark, mark_file))
            },
        )
        .await
        .map_err(|e| gerr(format!("the open task failed: {e}")))??;
        let hs = log.hard_state();
        let storage = GroupStorage::new(log.clone(), snaps).map_err(gerr)?;
        let mut rc = Config::new(self.cfg.id, group);
        rc.election_tick = self.cfg.election_ticks;
        rc.heartbeat_tick = 1;
        // A follower far behind (a node catching up) is sent at most 8 MiB
        // in flight, in messages of up to 1 MiB: the leader reads and
        // encodes that much at a time on the thread that also serves its
        // clients (a 64 MiB window stalled them for 350-400 ms at the start
        // of a catch-up, and the catch-up was no faster).
        rc.max_msg_bytes = 1 << 20;
        rc.max_inflight_msgs = 512;
        rc.max_inflight_bytes = 8 << 20;
        if let Some(f) = &opts.raft {
            f(&mut rc);
        }
        #[cfg(feature = "fault-injection")]
        crate::fault::apply_to_raft(&mut rc);
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ self.cfg.id.wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ group.rotate_left(17);
        let start = StartState {
            hard_state: HardState {
                term: hs.term,
                vote: hs.vote,
            },
            snapshot,
            mark,
        };
        let mut core =
            GroupCore::new(rc, opts.settings, storage.clone(), sm, start, seed).map_err(gerr)?;
        core.observe(self.cfg.id, self.ctx.my_info());
        let served = core.served();
        let membership = core.raft().membership().clone();
        if membership.is_member(self.cfg.id) || !membership.voters.is_empty() {
            self.ctx
                .directory
                .set_group(group, &membership, core.committed_membership());
        }
        let (tx, rx) = mpsc::unbounded_channel::<Input<M>>();
        let (served_tx, served_rx) = watch::channel(served);
        let (role_tx, role_rx) = watch::channel(SoftState {
            role: Role::Follower,
            leader: keel_raft::NONE,
            term: hs.term,
        });
        let (membership_tx, membership_rx) = watch::channel(membership);
        let metrics = self.registry.group(group);
        let driver = Driver::new(
            core,
            storage,
            self.transport.clone(),
            metrics,
            mark_file,
            tx.clone(),
            served_tx,
            role_tx,
            membership_tx,
            self.cfg.tick,
        );
        let task = tokio::spawn(driver.run(rx));
        let ticker = tokio::spawn(crate::runtime::ticker(self.cfg.tick, tx.clone()));
        let inbox = tx.clone();
        let observer = tx.clone();
        self.ctx.router.add(
            group,
            move |m| {
                let _ = inbox.send(Input::Peer(m));
            },
            move |id, info| {
                let _ = observer.send(Input::Observe(id, info));
            },
        );
        let handle = Group {
            id: group,
            tx,
            served: served_rx,
            role: role_rx,
            membership: membership_rx,
            log: Arc::downgrade(&log),
            directory: self.ctx.directory.clone(),
        };
        let stopper = handle.clone();
        self.groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(HostedGroup {
                id: group,
                stop: Box::new(move || stopper.stop()),
                task,
                ticker,
            });
        Ok(handle)
    }

    /// Stops every group (their stores close once their last handle goes),
    /// the transport and the listener, then releases the data directory.
    pub async fn shutdown(self) {
        let groups: Vec<HostedGroup> =
            std::mem::take(&mut *self.groups.lock().unwrap_or_else(|p| p.into_inner()));
        for g in &groups {
            self.ctx.router.remove(g.id);
            (g.stop)();
        }
        for g in groups {
            g.ticker.abort();
            if tokio::time::timeout(Duration::from_secs(5), g.task)
                .await
                .is_err()
            {
                warn!(group = g.id, "the group did not stop within 5 s");
            }
        }
        // Ends the listener and every inbound connection (peers see them
        // close); awaited, so the port is free when this returns.
        self.accept.abort();
        let _ = self.accept.await;
        drop(self.transport);
        // Let the stores' writers finish what is queued before the lock
        // goes (they close when their last handle drops).
        tokio::time::sleep(Duration::from_millis(20)).await;
        info!(node = self.cfg.id, "node stopped");
    }
}

/// The configuration a join ticket carried, kept for restarts: `u64` group
/// (LE), then the configuration entry body (version 2).
const JOIN_SEED: &str = "join.seed";

/// Saves the ticket's configuration atomically: `join.seed.tmp`, fsync,
/// rename, fsync the directory.
fn save_join_seed(data_dir: &Path, group: GroupId, m: &Membership) -> Result<(), StartError> {
    let tmp = data_dir.join(format!("{JOIN_SEED}.tmp"));
    let io = |source| StartError::DataDir {
        dir: data_dir.to_path_buf(),
        source,
    };
    let mut body = group.to_le_bytes().to_vec();
    body.extend_from_slice(&keel_raft::encode_membership(m));
    let mut f = File::create(&tmp).map_err(io)?;
    f.write_all(&body).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, data_dir.join(JOIN_SEED)).map_err(io)?;
    File::open(data_dir).and_then(|d| d.sync_all()).map_err(io)
}

/// The configuration of the join ticket this directory was started with
/// (`None` when it has none, or an unreadable one: it matters only until
/// the group holds a configuration).
fn load_join_seed(data_dir: &Path) -> Option<(GroupId, Membership)> {
    let path = data_dir.join(JOIN_SEED);
    let body = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            warn!(file = %path.display(), error = %e, "cannot read the join ticket's configuration");
            return None;
        }
    };
    let seed = body.split_first_chunk::<8>().map(|(group, m)| {
        let m = keel_raft::decode_membership(m)?;
        Ok::<_, String>((GroupId::from_le_bytes(*group), m))
    });
    match seed {
        Some(Ok(seed)) => Some(seed),
        Some(Err(why)) => {
            warn!(file = %path.display(), error = %why, "ignoring a damaged join ticket configuration");
            None
        }
        None => {
            warn!(file = %path.display(), "ignoring a truncated join ticket configuration");
            None
        }
    }
}

/// Flags that contradict the data directory are refused.
fn check_flags(cfg: &NodeConfig, c: &ClusterIdentity) -> Result<(), StartError> {
    let bad = |s: String| Err(StartError::Config(s));
    if let Some(name) = &cfg.cluster_name
        && c.cluster_name.as_deref() != Some(name.as_str())
    {
        return bad(format!(
            "--cluster-name {name} contradicts this data directory, which belongs to cluster {} ({:016x}); drop --cluster-name or point --data-dir elsewhere",
            c.cluster_name
                .as_deref()
                .map_or("without a name".to_string(), |n| format!("`{n}`")),
            c.cluster_id
        ));
    }
    if let Some(peers) = &cfg.peers {
        let given = peers_string(peers);
        match (&c.created_by, &c.bootstrap_peers) {
            (CreatedBy::Bootstrap, Some(p)) if *p == given => {}
            (CreatedBy::Bootstrap, p) => {
                return bad(format!(
                    "--peers {given} contradicts this data directory, which was bootstrapped with {}; the configuration now lives in the cluster's log (keel members list shows it): drop --peers, and change members with keel members",
                    p.as_deref().unwrap_or("another list")
                ));
            }
            (CreatedBy::Join, _) => {
                return bad(format!(
                    "--peers {given} contradicts this data directory, which joined an existing cluster; the configuration lives in the cluster's log: drop --peers"
                ));
            }
        }
    }
    if cfg.join.is_some() {
        info!("this data directory already belongs to a cluster; --join is ignored");
    }
    Ok(())
}

/// Writes the bootstrap entry and hard state into a founding group's log
/// (once: a log that already holds it is left alone).
fn bootstrap_group(data_dir: &Path, group: GroupId, m: &Membership) -> Result<(), StartError> {
    let dir = group_dir(data_dir, group);
    create_dir_durably(&dir).map_err(|e| StartError::Group {
        group,
        reason: format!("{}: {e}", dir.display()),
    })?;
    let (log, _) = LogStore::open(&dir.join("log"), LogOptions::default())
        .map_err(|source| StartError::Log { group, source })?;
    if log.last_index() == 0 && log.first_index() == 1 {
        log.save_hard_state(keel_log::HardState { term: 1, vote: 0 })
            .map_err(|source| StartError::Log { group, source })?;
        log.append_and_wait(vec![keel_raft::bootstrap_entry(m)])
            .map_err(|source| StartError::Log { group, source })?;
    }
    log.close();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_are_created_with_their_parents_and_a_file_in_the_way_is_an_error() {
        let base = std::env::temp_dir().join(format!("keel-durable-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let deep = base.join("groups").join("7");
        create_dir_durably(&deep).unwrap();
        assert!(deep.is_dir());
        create_dir_durably(&deep).unwrap(); // already there: fine
        std::fs::write(base.join("file"), b"x").unwrap();
        let err = create_dir_durably(&base.join("file").join("g")).unwrap_err();
        assert!(
            matches!(
                err.kind(),
                std::io::ErrorKind::NotADirectory | std::io::ErrorKind::AlreadyExists
            ),
            "{err}"
        );
        std::fs::remove_dir_all(&base).unwrap();
    }
}
