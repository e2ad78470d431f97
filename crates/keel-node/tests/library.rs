//! keel-node as a library, in one process: nodes on loopback ports with
//! their own data directories, each hosting group 0 with a small state
//! machine that records what it applies. Elections and re-elections,
//! linearizable reads, snapshots and compaction, a node joining through a
//! chunked snapshot transfer and its promotion, restarts from snapshot and
//! log, control commands, the role and membership watches, and two starts
//! that used to go wrong: a joined node restarted before anything reached
//! it, and a refused start on an empty data directory.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_node::node::prepare_join;
use keel_node::{
    Command, CoreSettings, Group, GroupError, GroupOptions, Index, JoinTicket, LogOptions,
    MemberInfo, Node, NodeConfig, NodeId, Role, SnapshotMeta, SnapshotPolicy, SnapshotWriter,
    StateMachine,
};
use tokio::sync::watch;
use tokio::time::{sleep, timeout};

// ---------------------------------------------------------------- the state machine

/// Control commands as applied: (index, body).
type Controls = Vec<(Index, Vec<u8>)>;

/// Records every record and control command it applies, and checks the
/// contract as it goes (dense offsets, indexes that never go back).
#[derive(Debug, Default, Clone)]
struct Recorder {
    /// Record data by offset (position = offset).
    records: Vec<Vec<u8>>,
    /// Control commands.
    controls: Controls,
    last_index: Index,
    /// How many times it was restored from a snapshot (not replicated).
    restores: u32,
    /// Contract violations seen.
    violations: Vec<String>,
}

impl Recorder {
    /// The replicated part of the state, for comparisons across nodes.
    fn state(&self) -> (Vec<Vec<u8>>, Controls) {
        (self.records.clone(), self.controls.clone())
    }

    fn check_index(&mut self, index: Index, what: &str) {
        if index < self.last_index {
            let v = format!("{what} at index {index} after index {}", self.last_index);
            self.violations.push(v);
        }
        self.last_index = index;
    }
}

impl StateMachine for Recorder {
    type Response = u64;

    fn apply(&mut self, cmd: Command<'_>) -> u64 {
        self.check_index(cmd.index, "a record");
        if cmd.offset != self.records.len() as u64 {
            let v = format!(
                "record at offset {} applied after {} records",
                cmd.offset,
                self.records.len()
            );
            self.violations.push(v);
        }
        self.records.push(cmd.data.to_vec());
        cmd.offset
    }

    fn apply_control(&mut self, index: Index, body: &Bytes) {
        self.check_index(index, "a control command");
        self.controls.push((index, body.to_vec()));
    }

    fn snapshot(&mut self) -> SnapshotWriter {
        let (records, controls) = self.state();
        Box::new(move |w: &mut dyn Write| {
            w.write_all(&(records.len() as u32).to_le_bytes())?;
            for r in &records {
                w.write_all(&(r.len() as u32).to_le_bytes())?;
                w.write_all(r)?;
            }
            w.write_all(&(controls.len() as u32).to_le_bytes())?;
            for (i, c) in &controls {
                w.write_all(&i.to_le_bytes())?;
                w.write_all(&(c.len() as u32).to_le_bytes())?;
                w.write_all(c)?;
            }
            Ok(())
        })
    }

    fn restore(&mut self, meta: &SnapshotMeta, data: &mut dyn Read) -> std::io::Result<()> {
        fn u32_(d: &mut dyn Read) -> std::io::Result<u32> {
            let mut b = [0u8; 4];
            d.read_exact(&mut b)?;
            Ok(u32::from_le_bytes(b))
        }
        fn bytes_(d: &mut dyn Read) -> std::io::Result<Vec<u8>> {
            let mut b = vec![0u8; u32_(d)? as usize];
            d.read_exact(&mut b)?;
            Ok(b)
        }
        let records = (0..u32_(data)?)
            .map(|_| bytes_(data))
            .collect::<std::io::Result<Vec<_>>>()?;
        let mut controls = Vec::new();
        for _ in 0..u32_(data)? {
            let mut i = [0u8; 8];
            data.read_exact(&mut i)?;
            controls.push((u64::from_le_bytes(i), bytes_(data)?));
        }
        if records.len() as u64 != meta.next_offset {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "snapshot {} holds {} records, its description says {}",
                    meta.index,
                    records.len(),
                    meta.next_offset
                ),
            ));
        }
        self.records = records;
        self.controls = controls;
        self.last_index = meta.index;
        self.restores += 1;
        Ok(())
    }
}

// ---------------------------------------------------------------- the harness

const WAIT: Duration = Duration::from_secs(20);

/// A temporary directory removed on drop (kept when the test fails).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p = std::env::temp_dir().join(format!(
            "keel-node-lib-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn free_addrs(n: usize) -> Vec<String> {
    let ls: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    ls.iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect()
}

type Options = fn() -> GroupOptions;

fn default_options() -> GroupOptions {
    GroupOptions::default()
}

/// Snapshots every 5 entries and compacts behind them, keeping 2 entries;
/// small log segments (compaction drops whole segments) and small
/// snapshot chunks.
fn snapshotting() -> GroupOptions {
    GroupOptions {
        settings: CoreSettings {
            snapshot: SnapshotPolicy {
                entries: 5,
                bytes: 0,
                compact: true,
            },
            ..Default::default()
        },
        log: LogOptions {
            segment_bytes: 4 << 10,
            ..Default::default()
        },
        raft: Some(Box::new(|c| {
            c.compaction_keep_entries = 2;
            c.snapshot_chunk_bytes = 4 << 10;
        })),
    }
}

const CHUNK: u64 = 4 << 10;

struct Member {
    node: Node,
    group: Group<Recorder>,
}

/// Nodes 1..=n bootstrapped together; more may join.
struct Cluster {
    root: TempDir,
    options: Options,
    peers: BTreeMap<NodeId, String>,
    live: BTreeMap<NodeId, Member>,
}

impl Cluster {
    async fn new(tag: &str, n: u64, options: Options) -> Cluster {
        // RUST_LOG=info shows what the nodes do.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let addrs = free_addrs(n as usize);
        let mut c = Cluster {
            root: TempDir::new(tag),
            options,
            peers: (1..=n).zip(addrs).collect(),
            live: BTreeMap::new(),
        };
        for id in 1..=n {
            c.start(id).await;
        }
        c
    }

    fn dir(&self, id: NodeId) -> PathBuf {
        self.root.0.join(format!("n{id}"))
    }

    fn config(&self, id: NodeId, peer_addr: &str) -> NodeConfig {
        NodeConfig {
            client_addr: format!("client-of-{id}"),
            tick: Duration::from_millis(20),
            election_ticks: 10,
            ..NodeConfig::new(id, self.dir(id), peer_addr)
        }
    }

    /// Starts (or restarts) a founding member.
    async fn start(&mut self, id: NodeId) {
        let cfg = NodeConfig {
            peers: Some(self.peers.clone()),
            ..self.config(id, &self.peers[&id])
        };
        self.start_with(cfg).await;
    }

    async fn start_with(&mut self, cfg: NodeConfig) {
        let id = cfg.id;
        let node = Node::start(cfg).await.expect("start the node");
        let group = node
            .open_group(0, Recorder::default(), (self.options)())
            .await
            .expect("open group 0");
        self.live.insert(id, Member { node, group });
    }

    async fn stop(&mut self, id: NodeId) {
        let m = self.live.remove(&id).expect("a live node");
        m.node.shutdown().await;
    }

    fn group(&self, id: NodeId) -> &Group<Recorder> {
        &self.live[&id].group
    }

    /// The live node that leads, with the highest term, once there is one.
    async fn leader(&self) -> NodeId {
        let deadline = Instant::now() + WAIT;
        loop {
            let leading = self
                .live
                .iter()
                .map(|(id, m)| (*id, *m.group.role().borrow()))
                .filter(|(_, s)| s.role == Role::Leader)
                .max_by_key(|(_, s)| s.term);
            if let Some((id, _)) = leading {
                return id;
            }
            assert!(Instant::now() < deadline, "no leader within {WAIT:?}");
            sleep(Duration::from_millis(10)).await;
        }
    }

    /// Proposes through whichever node leads, retrying refusals; returns
    /// the record's offset.
    async fn propose(&self, data: impl Into<Bytes>) -> u64 {
        let data = data.into();
        let deadline = Instant::now() + WAIT;
        loop {
            let leader = self.leader().await;
            match self.group(leader).propose(data.clone()).await {
                Ok(offset) => return offset,
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "proposal refused for {WAIT:?}: {e}"
                ),
            }
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// A node's state, through a linearizable read (retried while the
    /// group elects).
    async fn read(&self, id: NodeId) -> Recorder {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.group(id).read(|r| r.clone()).await {
                Ok(r) => {
                    assert!(r.violations.is_empty(), "node {id}: {:?}", r.violations);
                    return r;
                }
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "node {id} could not read for {WAIT:?}: {e}"
                ),
            }
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every live node holds the same state as `id`.
    async fn assert_same_everywhere(&self, id: NodeId) -> Recorder {
        let want = self.read(id).await;
        for other in self.live.keys() {
            let got = self.read(*other).await;
            assert_eq!(
                got.state(),
                want.state(),
                "node {other} differs from node {id}"
            );
        }
        want
    }
}

/// Waits until the watched value satisfies `f`; returns it.
async fn wait_watch<T: Clone>(
    rx: &mut watch::Receiver<T>,
    what: &str,
    f: impl FnMut(&T) -> bool,
) -> T {
    timeout(WAIT, rx.wait_for(f))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap_or_else(|_| panic!("the group stopped while waiting for {what}"))
        .clone()
}

fn payload(i: usize, len: usize) -> Vec<u8> {
    let mut v = format!("record {i} ").into_bytes();
    v.resize(len, b'a' + (i % 26) as u8);
    v
}

fn snap_files(dir: &Path) -> Vec<(String, u64)> {
    std::fs::read_dir(dir.join("groups/0/snapshot"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    (name, e.metadata().map(|m| m.len()).unwrap_or(0))
                })
                .filter(|(n, _)| n.ends_with(".snap"))
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------- (a)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_serve_reads_and_elect_a_new_leader_when_the_leader_stops() {
    let mut c = Cluster::new("elect", 3, default_options).await;
    for i in 0..20 {
        assert_eq!(c.propose(payload(i, 16)).await, i as u64, "dense offsets");
    }
    let leader = c.leader().await;
    let follower = *c.live.keys().find(|id| **id != leader).unwrap();
    match c.group(follower).propose(Bytes::from_static(b"x")).await {
        Err(GroupError::NotLeader { leader: l }) => assert_eq!(l, leader),
        other => panic!("a follower accepted a proposal: {other:?}"),
    }
    // Linearizable reads on every node, followers included, see all 20.
    for id in 1..=3 {
        assert_eq!(c.read(id).await.records.len(), 20, "node {id}");
    }
    let term = c.group(leader).role().borrow().term;

    // The leader stops (its handles answer Stopped); the other two elect
    // one of them and go on.
    let stopped = c.group(leader).clone();
    c.stop(leader).await;
    assert_eq!(
        stopped.propose(Bytes::from_static(b"x")).await,
        Err(GroupError::Stopped)
    );
    drop(stopped); // a handle keeps the group's log store open
    let next = c.leader().await;
    assert_ne!(next, leader);
    assert!(c.group(next).role().borrow().term > term);
    for i in 20..30 {
        assert_eq!(c.propose(payload(i, 16)).await, i as u64);
    }
    c.assert_same_everywhere(next).await;

    // The old leader restarts from its data directory, in this process, and
    // catches up (its peers must drop the connections the stopped node
    // accepted and dial the new one).
    c.start(leader).await;
    let all = c.assert_same_everywhere(next).await;
    assert_eq!(all.records.len(), 30);
    for (i, r) in all.records.iter().enumerate() {
        assert_eq!(*r, payload(i, 16));
    }
}

// ---------------------------------------------------------------- (b)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_catches_up_from_a_chunked_snapshot_of_a_compacted_log_then_becomes_a_voter()
{
    let mut c = Cluster::new("join", 3, snapshotting).await;
    for i in 0..300 {
        c.propose(payload(i, 200)).await;
    }
    // The leader snapshotted and compacted: its log no longer starts at 1,
    // so a new node cannot get everything from the log.
    let leader = c.leader().await;
    let deadline = Instant::now() + WAIT;
    let first = loop {
        let st = c.group(leader).status().await.unwrap();
        if st.core.raft.first_index > 1 && st.core.snapshot_index > 0 {
            break st.core.raft.first_index;
        }
        assert!(
            Instant::now() < deadline,
            "the leader never compacted its log"
        );
        sleep(Duration::from_millis(20)).await;
    };
    assert!(c.group(leader).first_offset() > 0);

    // Node 4 joins with an empty data directory: the cluster admits it as
    // a learner, and it starts with the ticket.
    let addr4 = free_addrs(1).remove(0);
    let incarnation = prepare_join(&c.dir(4), 4).expect("prepare the join");
    let info = MemberInfo {
        incarnation,
        peer_addr: addr4.clone(),
        client_addr: "client-of-4".into(),
    };
    let mut admitted = None;
    let deadline = Instant::now() + WAIT;
    while admitted.is_none() {
        let l = c.leader().await;
        match c.group(l).admit(4, info.clone(), WAIT).await {
            Ok(m) => admitted = Some((l, m)),
            Err(e) => assert!(Instant::now() < deadline, "admit refused: {e}"),
        }
    }
    let (l, membership) = admitted.unwrap();
    assert!(
        membership.is_learner(4),
        "admitted as a learner: {membership:?}"
    );
    let ticket = JoinTicket {
        cluster_id: c.live[&l].node.cluster_id(),
        cluster_name: c.live[&l].node.cluster_name().map(String::from),
        group: 0,
        membership,
    };
    let cfg = NodeConfig {
        join: Some(ticket),
        ..c.config(4, &addr4)
    };
    c.start_with(cfg).await;

    // It catches up: the same state as the others, from a snapshot that
    // took several chunks to send.
    let leader = c.leader().await;
    let want = c.read(leader).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let got = c.group(4).read_local(|r| r.clone()).await.unwrap();
        if got.records.len() >= want.records.len() {
            assert_eq!(got.records[..want.records.len()], want.records[..]);
            assert!(
                got.restores >= 1,
                "node 4 was never restored from a snapshot"
            );
            break;
        }
        assert!(Instant::now() < deadline, "node 4 did not catch up");
        sleep(Duration::from_millis(20)).await;
    }
    let st4 = c.group(4).status().await.unwrap();
    assert!(
        st4.core.snapshot_index >= first - 1,
        "node 4 holds snapshot {} but the leader's log started at {first}",
        st4.core.snapshot_index
    );
    assert!(
        st4.core.raft.first_index > 1,
        "node 4's log starts after the snapshot"
    );
    let biggest = snap_files(&c.dir(4)).iter().map(|(_, len)| *len).max();
    assert!(
        biggest.is_some_and(|len| len > 4 * CHUNK),
        "the snapshot node 4 received is small ({biggest:?} bytes): was it chunked?"
    );
    assert!(st4.core.membership.is_learner(4));

    // Promoted: a voter that takes part like the others.
    let mut m4 = c.group(4).membership();
    let deadline = Instant::now() + WAIT;
    loop {
        let l = c.leader().await;
        match c.group(l).add_voter(4, None, WAIT).await {
            Ok(m) => {
                assert!(m.is_voter(4), "{m:?}");
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "promotion refused: {e}"),
        }
        sleep(Duration::from_millis(20)).await;
    }
    wait_watch(&mut m4, "node 4 to see itself a voter", |m| m.is_voter(4)).await;
    for i in 300..320 {
        c.propose(payload(i, 200)).await;
    }
    let all = c.assert_same_everywhere(4).await;
    assert_eq!(all.records.len(), 320);
    for (i, r) in all.records.iter().enumerate() {
        assert_eq!(*r, payload(i, 200), "record {i}");
    }
    // The leader learned node 4's client address from its handshake.
    let leader = c.leader().await;
    assert_eq!(
        c.group(leader).client_addr(4).as_deref(),
        Some("client-of-4")
    );

    // Node 4 restarts from its own data directory (no ticket: the
    // configuration is in its snapshot and log) and can lead.
    c.stop(4).await;
    c.start_with(c.config(4, &addr4)).await;
    let got = c.group(4).read_local(|r| r.clone()).await.unwrap();
    assert_eq!(got.records.len(), 320, "node 4 restarted with its state");
    let deadline = Instant::now() + WAIT;
    while c.leader().await != 4 {
        let l = c.leader().await;
        if let Err(e) = c.group(l).transfer_leader(4).await {
            assert!(Instant::now() < deadline, "node 4 never took over: {e}");
        }
    }
    assert_eq!(c.propose(payload(320, 200)).await, 320);
    c.assert_same_everywhere(4).await;
}

// ---------------------------------------------------------------- (c)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_restarted_from_snapshot_and_log_keep_their_state_and_serve_no_less() {
    let mut c = Cluster::new("restart", 3, snapshotting).await;
    for i in 0..43 {
        c.propose(payload(i, 32)).await;
        if i == 20 {
            let l = c.leader().await;
            c.group(l)
                .propose_control(Bytes::from_static(b"halfway"))
                .await
                .expect("a control command");
        }
    }
    // More records until every node serves entries past its latest
    // snapshot: a restart must restore the snapshot, then replay the log.
    let mut n = 43;
    let deadline = Instant::now() + WAIT;
    loop {
        sleep(Duration::from_millis(200)).await; // snapshots under way end
        let mut past = true;
        for m in c.live.values() {
            let st = m.group.status().await.unwrap();
            let served = m.group.served().borrow().index;
            past &= st.core.snapshot_index > 0 && served > st.core.snapshot_index;
        }
        if past {
            break;
        }
        assert!(Instant::now() < deadline, "no node served past a snapshot");
        c.propose(payload(n, 32)).await;
        n += 1;
    }
    let leader = c.leader().await;
    let want = c.assert_same_everywhere(leader).await;
    assert_eq!(want.records.len(), n);
    assert_eq!(want.controls.len(), 1);

    // Every node stops (snapshots and logs on disk, no entries lost) and
    // starts again on the same data directory.
    let mut before = BTreeMap::new();
    for (id, m) in &c.live {
        let served = *m.group.served().borrow();
        let state = m.group.read_local(|r| r.clone()).await.unwrap();
        before.insert(*id, (served, state));
    }
    for id in 1..=3 {
        c.stop(id).await;
    }
    for id in 1..=3 {
        c.start(id).await;
        let g = c.group(id);
        // Before any peer is heard from: restored from its snapshot, the
        // log replayed up to the applied mark.
        let (served, state) = &before[&id];
        let now = *g.served().borrow();
        assert!(
            now.index >= served.index && now.end_offset >= served.end_offset,
            "node {id} serves {now:?} after a restart, {served:?} before"
        );
        let got = g.read_local(|r| r.clone()).await.unwrap();
        let n = served.end_offset as usize;
        assert!(got.records.len() >= n, "node {id} lost records");
        assert_eq!(got.records[..n], state.records[..n], "node {id}");
        assert!(got.restores >= 1, "node {id} did not restore a snapshot");
        assert!(got.violations.is_empty(), "{:?}", got.violations);
        let st = g.status().await.unwrap();
        assert!(st.core.snapshot_index > 0);
    }
    // The cluster goes on where it was.
    assert_eq!(c.propose(payload(n, 32)).await, n as u64);
    let leader = c.leader().await;
    let after = c.assert_same_everywhere(leader).await;
    assert_eq!(after.records[..n], want.records[..]);
    assert_eq!(after.controls, want.controls);
}

// ---------------------------------------------------------------- (d)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_commands_reach_every_state_machine_in_log_order_and_take_no_offsets() {
    let c = Cluster::new("control", 3, default_options).await;
    assert_eq!(c.propose(&b"one"[..]).await, 0);
    let leader = c.leader().await;
    c.group(leader)
        .propose_control(Bytes::from_static(b"set mode=fast"))
        .await
        .expect("control command applied");
    let follower = *c.live.keys().find(|id| **id != leader).unwrap();
    assert!(matches!(
        c.group(follower)
            .propose_control(Bytes::from_static(b"nope"))
            .await,
        Err(GroupError::NotLeader { .. })
    ));
    assert_eq!(c.propose(&b"two"[..]).await, 1, "controls take no offsets");
    let state = c.assert_same_everywhere(leader).await;
    assert_eq!(state.records, vec![b"one".to_vec(), b"two".to_vec()]);
    assert_eq!(state.controls.len(), 1);
    assert_eq!(state.controls[0].1, b"set mode=fast");
}

// ---------------------------------------------------------------- (e)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_and_membership_watches_follow_leader_changes_and_removals() {
    let mut c = Cluster::new("watch", 3, default_options).await;
    let first = c.leader().await;
    c.propose(&b"x"[..]).await;
    let mut roles: BTreeMap<NodeId, _> =
        c.live.iter().map(|(id, m)| (*id, m.group.role())).collect();
    for (id, rx) in roles.iter_mut() {
        let s = wait_watch(rx, "every node to know the leader", |s| s.leader == first).await;
        assert_eq!(s.role == Role::Leader, *id == first);
        rx.mark_unchanged();
    }

    // A transfer: every node's watch reports the new leader.
    let to = *c.live.keys().find(|id| **id != first).unwrap();
    c.group(first).transfer_leader(to).await.expect("transfer");
    for (id, rx) in roles.iter_mut() {
        assert!(
            timeout(WAIT, rx.changed()).await.is_ok(),
            "node {id}'s role watch did not fire"
        );
        let s = wait_watch(rx, "the new leader", |s| s.leader == to).await;
        assert_eq!(s.role == Role::Leader, *id == to, "node {id}: {s:?}");
    }

    // The leader stops: the others' watches report a third leader.
    let term = c.group(to).role().borrow().term;
    c.stop(to).await;
    roles.remove(&to);
    let mut third = 0;
    for rx in roles.values_mut() {
        let s = wait_watch(rx, "a leader after the stop", |s| {
            s.leader != to && s.leader != 0 && s.term > term
        })
        .await;
        assert!(third == 0 || third == s.leader, "two leaders in view");
        third = s.leader;
    }

    // Removing the stopped node: the membership watches report it.
    let mut ms: Vec<_> = c.live.values().map(|m| m.group.membership()).collect();
    for rx in &mut ms {
        assert!(rx.borrow_and_update().is_voter(to));
    }
    let m = c.group(third).remove(to, WAIT).await.expect("remove");
    assert!(!m.is_member(to));
    for rx in &mut ms {
        let m = wait_watch(rx, "the removal", |m| !m.is_member(to) && !m.is_joint()).await;
        assert_eq!(m.voters.len(), 2);
    }

    // A preferred leader: the leader hands over to it, and the watches
    // report it.
    let other = *c.live.keys().find(|id| **id != third).unwrap();
    c.group(third)
        .set_preferred_leader(Some(other))
        .await
        .expect("set the preferred leader");
    for rx in roles.values_mut() {
        wait_watch(rx, "the preferred leader to lead", |s| s.leader == other).await;
    }
    let st = c.group(other).status().await.unwrap();
    assert_eq!(st.core.preferred_leader, Some(other));
    c.propose(&b"y"[..]).await;
    let s = c.assert_same_everywhere(third).await;
    assert_eq!(s.records, vec![b"x".to_vec(), b"y".to_vec()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_node_restarted_before_it_received_anything_still_catches_up() {
    let mut c = Cluster::new("rejoin", 3, snapshotting).await;
    for i in 0..30 {
        c.propose(payload(i, 200)).await;
    }
    let addr4 = free_addrs(1).remove(0);
    let incarnation = prepare_join(&c.dir(4), 4).expect("prepare the join");
    let info = MemberInfo {
        incarnation,
        peer_addr: addr4.clone(),
        client_addr: String::new(),
    };
    let l = c.leader().await;
    let membership = c.group(l).admit(4, info, WAIT).await.expect("admitted");
    let ticket = JoinTicket {
        cluster_id: c.live[&l].node.cluster_id(),
        cluster_name: None,
        group: 0,
        membership,
    };
    // Started with the ticket, stopped before anything reached it (as a
    // crash during its first snapshot transfer would leave it)...
    let cfg = NodeConfig {
        join: Some(ticket),
        ..c.config(4, &addr4)
    };
    Node::start(cfg)
        .await
        .expect("start node 4")
        .shutdown()
        .await;
    // ...then started again as a node with data: without the ticket.
    c.start_with(c.config(4, &addr4)).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let n = c.group(4).read_local(|r| r.records.len()).await.unwrap();
        if n == 30 {
            break;
        }
        let st = c.group(4).status().await.unwrap();
        assert!(
            Instant::now() < deadline,
            "node 4 is stuck with {n} records; it knows {:?}",
            st.core.membership
        );
        sleep(Duration::from_millis(20)).await;
    }
    c.assert_same_everywhere(l).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_start_leaves_an_empty_data_directory_to_the_right_node() {
    let root = TempDir::new("refused");
    let dir = root.0.join("d");
    let addr = free_addrs(1).remove(0);
    let peers = BTreeMap::from([(1, addr.clone())]);
    // Node 2 is not in the peer list: refused...
    let wrong = NodeConfig {
        peers: Some(peers.clone()),
        ..NodeConfig::new(2, &dir, &addr)
    };
    match Node::start(wrong).await {
        Err(e) => assert!(e.to_string().contains("not in the peer list"), "{e}"),
        Ok(_) => panic!("node 2 started with a peer list without it"),
    }
    // ...and the directory is still free for node 1.
    let right = NodeConfig {
        peers: Some(peers),
        ..NodeConfig::new(1, &dir, &addr)
    };
    let node = Node::start(right).await.expect("node 1 starts on it");
    let group = node
        .open_group(0, Recorder::default(), GroupOptions::default())
        .await
        .expect("open group 0");
    let mut role = group.role();
    wait_watch(&mut role, "the single node to lead", |s| {
        s.role == Role::Leader
    })
    .await;
    assert_eq!(group.propose(Bytes::from_static(b"x")).await, Ok(0));
    drop(group);
    node.shutdown().await;
}
