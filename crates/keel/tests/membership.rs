//! Run-time membership with real `keel server` processes on loopback (real
//! fsync): restarts that must follow the cluster in the log, growing and
//! shrinking under appends, replacing nodes, removing the leader, learners,
//! crashes during a joint change, wiped data directories, the preferred
//! leader, and what a node shows and serves across restarts.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use keel_client::{Client, ClientError, ClientOptions, Code, Record, StatusResponse};
use serde_json::Value;
use tokio::runtime::Runtime;

fn rt() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// A client of one node only (stale reads and status served by that node).
fn one(addr: &str, timeout: Duration) -> Client {
    Client::new(ClientOptions {
        endpoints: vec![addr.to_string()],
        timeout,
        attempt_timeout: timeout,
        connect_timeout: Duration::from_millis(500),
        ..Default::default()
    })
    .expect("client")
}

fn status(rt: &Runtime, addr: &str) -> Result<StatusResponse, String> {
    rt.block_on(one(addr, SECS(2)).status_of(addr))
        .map_err(|e| format!("status of {addr}: {e}"))
}

/// Everything `addr` serves, with stale reads (that node alone).
fn served_log(rt: &Runtime, addr: &str) -> Result<Vec<Record>, String> {
    match rt.block_on(one(addr, SECS(5)).read(0, u64::MAX, true)) {
        Ok(v) => Ok(v),
        Err(ClientError::Rpc {
            code: Code::OutOfRange,
            message,
        }) if message.contains("past the end") => Ok(Vec::new()),
        Err(e) => Err(format!("stale read of {addr}: {e}")),
    }
}

/// The leader that a majority of the running nodes among `ids` follow, and
/// that says it leads.
fn wait_leader_among(rt: &Runtime, c: &Cluster, ids: &[u64], within: Duration) -> u64 {
    try_leader_among(rt, c, ids, within).unwrap_or_else(|e| panic!("{e}\n{}", c.logs()))
}

fn try_leader_among(
    rt: &Runtime,
    c: &Cluster,
    ids: &[u64],
    within: Duration,
) -> Result<u64, String> {
    let deadline = Instant::now() + within;
    loop {
        let mut follow: HashMap<u64, usize> = HashMap::new();
        let mut leading = BTreeSet::new();
        for id in ids {
            let n = c.get(*id);
            if !n.running() {
                continue;
            }
            if let Ok(s) = status(rt, &n.client_addr) {
                if s.leader_id != 0 {
                    *follow.entry(s.leader_id).or_default() += 1;
                }
                if s.role == "leader" {
                    leading.insert(s.node_id);
                }
            }
        }
        if let Some((l, _)) = follow
            .iter()
            .find(|(l, v)| **v * 2 > ids.len() && leading.contains(l))
        {
            return Ok(*l);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no leader among {ids:?} within {within:?} (followed: {follow:?}, leading: {leading:?})"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `keel members list` through the CLI (JSON).
fn members(ep: &str) -> Result<Value, String> {
    keel_json(&["members", "list", "--endpoints", ep])
}

/// Member ids of a `keel members` answer with this suffrage.
fn ids_with(v: &Value, suffrage: &str) -> Vec<u64> {
    v["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter(|m| m["suffrage"] == suffrage)
        .map(|m| m["id"].as_u64().unwrap())
        .collect()
}

fn member(v: &Value, id: u64) -> Option<&Value> {
    v["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["id"] == id)
}

/// The voters and learners a status response shows.
fn config_of(s: &StatusResponse) -> (Vec<u64>, Vec<u64>) {
    let v = s
        .members
        .iter()
        .filter(|m| m.suffrage != "learner")
        .map(|m| m.id)
        .collect();
    let l = s
        .members
        .iter()
        .filter(|m| m.suffrage == "learner")
        .map(|m| m.id)
        .collect();
    (v, l)
}

/// Appenders that run until stopped and remember every acknowledged
/// offset.
struct Writer {
    acked: Arc<Mutex<BTreeMap<u64, String>>>,
    errors: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    pause: Arc<AtomicBool>,
    busy: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    client: Client,
}

impl Writer {
    fn start(rt: &Runtime, endpoints: Vec<String>, tag: &str, tasks: usize) -> Writer {
        let _e = rt.enter();
        let client = Client::new(ClientOptions {
            endpoints,
            timeout: SECS(10),
            ..Default::default()
        })
        .unwrap();
        let acked: Arc<Mutex<BTreeMap<u64, String>>> = Default::default();
        let errors = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let pause = Arc::new(AtomicBool::new(false));
        let busy = Arc::new(AtomicUsize::new(0));
        let tasks = (0..tasks)
            .map(|t| {
                let (client, acked, errors, stop, pause, busy) = (
                    client.clone(),
                    acked.clone(),
                    errors.clone(),
                    stop.clone(),
                    pause.clone(),
                    busy.clone(),
                );
                let tag = tag.to_string();
                rt.spawn(async move {
                    let mut i = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        busy.fetch_add(1, Ordering::SeqCst);
                        if pause.load(Ordering::SeqCst) {
                            busy.fetch_sub(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                        let v = format!("{tag}-{t}-{i}");
                        i += 1;
                        match client.append(v.clone()).await {
                            Ok(off) => {
                                let old = acked.lock().unwrap().insert(off, v.clone());
                                assert!(
                                    old.is_none(),
                                    "offset {off} acknowledged twice ({old:?}, {v})"
                                );
                            }
                            Err(_) => {
                                errors.fetch_add(1, Ordering::SeqCst);
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                        busy.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        Writer {
            acked,
            errors,
            stop,
            pause,
            busy,
            tasks,
            client,
        }
    }

    fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    fn snapshot(&self) -> BTreeMap<u64, String> {
        self.acked.lock().unwrap().clone()
    }

    /// Waits until `n` more appends were acknowledged.
    fn wait_more(&self, n: usize, within: Duration, c: &Cluster) {
        let target = self.count() + n;
        let deadline = Instant::now() + within;
        while self.count() < target {
            assert!(
                Instant::now() < deadline,
                "appends stalled: {} of {target} acknowledged within {within:?} ({} errors)\n{}",
                self.count(),
                self.errors.load(Ordering::SeqCst),
                c.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops issuing appends and waits for those in flight.
    fn pause(&self) {
        self.pause.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + SECS(15);
        while self.busy.load(Ordering::SeqCst) > 0 {
            assert!(Instant::now() < deadline, "appends still in flight");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn resume(&self) {
        self.pause.store(false, Ordering::SeqCst);
    }

    /// Stops, then appends one fence record (retrying until acknowledged):
    /// every node that serves the fence serves every earlier commit.
    fn stop(self, rt: &Runtime) -> (BTreeMap<u64, String>, u64) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            rt.block_on(t).expect("writer task");
        }
        let deadline = Instant::now() + SECS(20);
        let fence = loop {
            match rt.block_on(self.client.append("fence")) {
                Ok(off) => break off,
                Err(e) => {
                    assert!(Instant::now() < deadline, "the fence append failed: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        let acked = self.acked.lock().unwrap().clone();
        (acked, fence)
    }
}

/// Every node in `ids` serves (stale reads) the same records at the same
/// offsets up to `end` (exclusive), every acknowledged record at its
/// offset, and no value twice.
fn check_logs(rt: &Runtime, c: &Cluster, ids: &[u64], acked: &BTreeMap<u64, String>, end: u64) {
    let mut reference: Option<(u64, Vec<Record>)> = None;
    for id in ids {
        let addr = c.get(*id).client_addr.clone();
        let deadline = Instant::now() + SECS(20);
        let recs = loop {
            let r = served_log(rt, &addr);
            match &r {
                Ok(v) if v.len() as u64 >= end => break r.unwrap(),
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "node {id} serves {:?} records, not {end}\n{}",
                r.map(|v| v.len()),
                c.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        for (i, r) in recs.iter().enumerate() {
            assert_eq!(r.offset, i as u64, "node {id}: offsets are dense");
        }
        let recs: Vec<Record> = recs.into_iter().take(end as usize).collect();
        for (off, v) in acked {
            assert!(
                *off < end,
                "acknowledged offset {off} at or past the end {end}"
            );
            assert_eq!(
                String::from_utf8_lossy(&recs[*off as usize].data),
                v.as_str(),
                "node {id}: offset {off} holds another record than acknowledged"
            );
        }
        let mut seen: HashMap<&[u8], u64> = HashMap::new();
        for r in &recs {
            if let Some(o) = seen.insert(&r.data[..], r.offset) {
                panic!(
                    "node {id}: {:?} is at offsets {o} and {}",
                    String::from_utf8_lossy(&r.data),
                    r.offset
                );
            }
        }
        match &reference {
            None => reference = Some((*id, recs)),
            Some((rid, rrecs)) => {
                for (a, b) in rrecs.iter().zip(&recs) {
                    assert_eq!(
                        a.data, b.data,
                        "nodes {rid} and {id} differ at offset {}",
                        a.offset
                    );
                }
            }
        }
    }
}

/// Adds `id` as a voter with `keel members add` before it runs, then starts
/// it with `--join`; returns the change's answer.
fn add_then_join(c: &mut Cluster, id: u64, ep: &str) -> Value {
    let peer = c.get(id).peer_addr.clone();
    let child = keel_spawn(&[
        "members",
        "add",
        &id.to_string(),
        &peer,
        "--change-timeout",
        "30s",
        "--output",
        "json",
        "--endpoints",
        ep,
    ]);
    std::thread::sleep(Duration::from_millis(200));
    c.node(id).start();
    let o = child.wait_with_output().unwrap();
    json_of(&["members", "add"], &o)
        .unwrap_or_else(|e| panic!("keel members add {id}: {e}\n{}", c.logs()))
}

/// Waits until `ids` were admitted as learners: the configuration (as `ep`
/// answers) lists them, and each says it is a learner following a leader
/// (it runs once its join was answered, after the admission committed).
fn wait_admitted(rt: &Runtime, c: &Cluster, ids: &[u64], ep: &str) {
    try_wait_for(&format!("nodes {ids:?} to be admitted"), SECS(20), || {
        let m = members(ep)?;
        for id in ids {
            match member(&m, *id) {
                Some(x) if x["suffrage"] == "learner" => {}
                other => return Err(format!("node {id} in the configuration: {other:?}")),
            }
            let s = status(rt, &c.get(*id).client_addr)?;
            if s.role != "learner" || s.leader_id == 0 {
                return Err(format!("node {id}: role {} leader {}", s.role, s.leader_id));
            }
        }
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
}

/// Starts `id` with `--join` (it is admitted as a learner), then promotes it
/// with `keel members promote`; returns the change's answer.
fn join_then_promote(rt: &Runtime, c: &mut Cluster, id: u64, ep: &str) -> Value {
    c.node(id).start();
    wait_admitted(rt, c, &[id], ep);
    keel_json(&[
        "members",
        "promote",
        &id.to_string(),
        "--change-timeout",
        "30s",
        "--endpoints",
        ep,
    ])
    .unwrap_or_else(|e| panic!("keel members promote {id}: {e}\n{}", c.logs()))
}

fn remove(c: &Cluster, ids: &[u64], ep: &str) -> Value {
    let mut args = vec!["members".to_string(), "remove".to_string()];
    args.extend(ids.iter().map(|i| i.to_string()));
    // A removal commits within a round trip or two: far less than this.
    args.extend(["--change-timeout", "20s", "--endpoints", ep].map(String::from));
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    keel_json(&a).unwrap_or_else(|e| panic!("keel members remove {ids:?}: {e}\n{}", c.logs()))
}

fn try_wait_for<T>(
    what: &str,
    within: Duration,
    mut f: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + within;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!(
                    "timed out after {within:?} waiting for {what}: {e}"
                ));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn term_of(rt: &Runtime, c: &Cluster, id: u64) -> u64 {
    status(rt, &c.get(id).client_addr).unwrap().term
}

/// Handshakes with `node` as peer `from`; returns its answer.
fn handshake(
    node: &Node,
    cluster: u64,
    from: u64,
    incarnation: u64,
) -> keel_node::frame::HelloReply {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(&node.peer_addr).unwrap();
    s.set_read_timeout(Some(SECS(5))).unwrap();
    let hello = keel_node::frame::encode_hello(&keel_node::frame::Hello {
        cluster,
        from,
        to: node.id,
        incarnation,
        client_addr: "127.0.0.1:1".into(),
        peer_addr: "127.0.0.1:2".into(),
    });
    s.write_all(&hello).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    keel_node::frame::decode_reply(bytes::Bytes::from(body)).unwrap()
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a child this test spawned and has not reaped.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill failed");
}

// ---------------------------------------------------------------- scenarios

#[test]
fn a_member_restarted_without_peers_follows_its_cluster_and_contradicting_flags_are_refused() {
    let rt = rt();
    let _e = rt.enter();
    let mut c = Cluster::new(3, "restart", &["--cluster-name", "demo"]);
    for n in &mut c.nodes {
        n.start();
    }
    wait_leader_among(&rt, &c, &[1, 2, 3], SECS(15));
    let client = c.client();
    let mut acked = BTreeMap::new();
    // An append in flight at a node that dies has an unknown outcome: it
    // is not counted, and the next try carries another value.
    let mut append = |v: String| {
        for attempt in 0..5 {
            let v = format!("{v}-{attempt}");
            match rt.block_on(client.append(v.clone())) {
                Ok(off) => {
                    assert!(acked.insert(off, v).is_none());
                    return;
                }
                Err(e) if attempt < 4 => eprintln!("append {v}: {e}"),
                Err(e) => panic!("append {v}: {e}"),
            }
        }
    };
    for i in 0..20 {
        append(format!("before-{i}"));
    }
    c.node(1).kill();
    for i in 0..50 {
        append(format!("while-down-{i}"));
    }
    let cluster_id = status(&rt, &c.get(2).client_addr).unwrap().cluster_id;

    // The operator restarts node 1 with the same name but no --peers.
    c.node(1).peers.clear();
    c.node(1).start();
    let a1 = c.get(1).client_addr.clone();
    let st = try_wait_for("node 1 to catch up with the cluster", SECS(15), || {
        let s = status(&rt, &a1)?;
        if s.leader_id != 0 && s.end_offset >= 70 {
            Ok(s)
        } else {
            Err(format!(
                "leader {} end {} role {}",
                s.leader_id, s.end_offset, s.role
            ))
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert_eq!(st.cluster_id, cluster_id, "node 1 is in the same cluster");
    assert_eq!(config_of(&st), (vec![1, 2, 3], vec![]), "{st:?}");
    assert!(!st.joint);
    assert!(
        !c.get(1).log().contains("bootstrapping"),
        "node 1 bootstrapped again:\n{}",
        c.get(1).log()
    );
    for i in 0..20 {
        append(format!("after-{i}"));
    }
    // Through node 1 alone: it redirects to the real leader.
    let via1 = one(&a1, SECS(10));
    let off = rt.block_on(via1.append("through-node-1")).unwrap();
    acked.insert(off, "through-node-1".into());
    let end = acked.keys().last().unwrap() + 1;
    check_logs(&rt, &c, &[1, 2, 3], &acked, end);

    // Flags that contradict the data directory are refused, saying which.
    c.node(1).kill();
    let own = format!("1={}", c.get(1).peer_addr);
    c.node(1).peers = own.clone();
    let (code, err) = c.node(1).run_to_exit(SECS(10));
    assert!(matches!(code, Some(c) if c != 0), "exit {code:?}: {err}");
    assert!(
        err.contains(&format!("--peers {own} contradicts")) && err.contains("bootstrapped with"),
        "{err}"
    );
    c.node(1).peers.clear();
    c.node(1).extra = vec!["--cluster-name".into(), "other".into()];
    let (code, err) = c.node(1).run_to_exit(SECS(10));
    assert!(matches!(code, Some(c) if c != 0), "exit {code:?}: {err}");
    assert!(
        err.contains("--cluster-name other contradicts") && err.contains("`demo`"),
        "{err}"
    );
    // Its data was left alone: started properly it serves everything.
    c.node(1).extra = vec!["--cluster-name".into(), "demo".into()];
    c.node(1).start();
    check_logs(&rt, &c, &[1], &acked, end);
}

#[test]
fn a_cluster_grows_from_one_to_five_and_shrinks_back_to_one_under_appends() {
    let rt = rt();
    let _e = rt.enter();
    let mut c = Cluster::with_joiners(1, 5, "grow", &[]);
    // The first node bootstraps alone: no --peers at all.
    c.node(1).peers.clear();
    c.node(1).start();
    assert_eq!(wait_leader_among(&rt, &c, &[1], SECS(10)), 1);
    let all: Vec<String> = c.nodes.iter().map(|n| n.client_addr.clone()).collect();
    let ep = c.endpoints();
    let w = Writer::start(&rt, all, "grow", 2);
    w.wait_more(30, SECS(10), &c);

    // 1 -> 3: node 2 added as a voter before it runs, node 3 joins first.
    let r = add_then_join(&mut c, 2, &ep);
    assert_eq!(ids_with(&r, "voter"), vec![1, 2], "{r}");
    w.wait_more(30, SECS(10), &c);
    let r = join_then_promote(&rt, &mut c, 3, &ep);
    assert_eq!(ids_with(&r, "voter"), vec![1, 2, 3], "{r}");
    w.wait_more(30, SECS(10), &c);
    // 3 -> 5, the other way round each.
    let r = join_then_promote(&rt, &mut c, 4, &ep);
    assert_eq!(ids_with(&r, "voter"), vec![1, 2, 3, 4], "{r}");
    let r = add_then_join(&mut c, 5, &ep);
    assert_eq!(ids_with(&r, "voter"), vec![1, 2, 3, 4, 5], "{r}");
    assert!(ids_with(&r, "learner").is_empty(), "{r}");
    w.wait_more(30, SECS(10), &c);

    // 5 -> 3, the leader first.
    let mut live: Vec<u64> = vec![1, 2, 3, 4, 5];
    let leader = wait_leader_among(&rt, &c, &live, SECS(10));
    let r = remove(&c, &[leader], &ep);
    assert!(member(&r, leader).is_none(), "{r}");
    live.retain(|i| *i != leader);
    c.node(leader).kill();
    w.wait_more(30, SECS(10), &c);
    let other = *live.iter().find(|i| **i != leader).unwrap();
    remove(&c, &[other], &ep);
    live.retain(|i| *i != other);
    c.node(other).kill();
    w.wait_more(30, SECS(10), &c);
    let m = members(&ep).unwrap();
    assert_eq!(ids_with(&m, "voter"), live, "{m}");
    assert!(!m["joint"].as_bool().unwrap(), "{m}");
    let acked = w.snapshot();
    let end = acked.keys().last().unwrap() + 1;
    check_logs(&rt, &c, &live, &acked, end);

    // 3 -> 1, the leader among those removed again.
    let leader = wait_leader_among(&rt, &c, &live, SECS(10));
    let gone: Vec<u64> = vec![leader, *live.iter().find(|i| **i != leader).unwrap()];
    remove(&c, &gone, &ep);
    for g in &gone {
        c.node(*g).kill();
    }
    live.retain(|i| !gone.contains(i));
    assert_eq!(live.len(), 1);
    w.wait_more(30, SECS(10), &c);
    let (acked, fence) = w.stop(&rt);
    let m = members(&ep).unwrap();
    assert_eq!(ids_with(&m, "voter"), live, "{m}");
    assert_eq!(m["members"].as_array().unwrap().len(), 1, "{m}");
    assert_eq!(m["leader"], live[0], "{m}");
    check_logs(&rt, &c, &live, &acked, fence + 1);
}

#[test]
fn replacing_every_node_one_at_a_time_loses_no_acknowledged_record() {
    let rt = rt();
    let _e = rt.enter();
    let mut c = Cluster::with_joiners(3, 6, "replace", &[]);
    for id in 1..=3 {
        c.node(id).start();
    }
    wait_leader_among(&rt, &c, &[1, 2, 3], SECS(15));
    let all: Vec<String> = c.nodes.iter().map(|n| n.client_addr.clone()).collect();
    let ep = c.endpoints();
    let w = Writer::start(&rt, all, "replace", 2);
    w.wait_more(30, SECS(10), &c);
    for (new, old) in [(4, 1), (5, 2), (6, 3)] {
        let r = if new == 5 {
            add_then_join(&mut c, new, &ep)
        } else {
            join_then_promote(&rt, &mut c, new, &ep)
        };
        assert!(ids_with(&r, "voter").contains(&new), "{r}");
        w.wait_more(20, SECS(10), &c);
        let r = remove(&c, &[old], &ep);
        assert!(member(&r, old).is_none(), "{r}");
        assert_eq!(ids_with(&r, "voter").len(), 3, "{r}");
        c.node(old).kill();
        w.wait_more(20, SECS(10), &c);
    }
    let (acked, fence) = w.stop(&rt);
    let m = members(&ep).unwrap();
    assert_eq!(ids_with(&m, "voter"), vec![4, 5, 6], "{m}");
    assert!(ids_with(&m, "learner").is_empty(), "{m}");
    check_logs(&rt, &c, &[4, 5, 6], &acked, fence + 1);
}

#[test]
fn a_removed_leader_steps_down_stops_campaigning_and_is_refused_when_it_returns() {
    let rt = rt();
    let _e = rt.enter();
    let mut c = Cluster::start(3, "rmleader");
    let leader = wait_leader_among(&rt, &c, &[1, 2, 3], SECS(15));
    let ep = c.endpoints();
    let w = Writer::start(
        &rt,
        c.nodes.iter().map(|n| n.client_addr.clone()).collect(),
        "rm",
        2,
    );
    w.wait_more(30, SECS(10), &c);
    let r = remove(&c, &[leader], &ep);
    assert!(member(&r, leader).is_none(), "{r}");
    let rest: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
    assert_eq!(ids_with(&r, "voter"), rest, "{r}");
    let new_leader = wait_leader_among(&rt, &c, &rest, SECS(10));
    assert_ne!(new_leader, leader);
    w.wait_more(30, SECS(10), &c);

    // The removed node says so and stops campaigning.
    let la = c.get(leader).client_addr.clone();
    let s = try_wait_for("the old leader to report its removal", SECS(10), || {
        let s = status(&rt, &la)?;
        if s.removed {
            Ok(s)
        } else {
            Err(format!("{s:?}"))
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert_eq!(s.role, "removed");
    let o = keel(&["status", "--endpoints", &la]);
    assert!(
        stdout(&o).contains("removed"),
        "{}{}",
        stdout(&o),
        stderr(&o)
    );
    let before: Vec<u64> = (1..=3).map(|id| term_of(&rt, &c, id)).collect();
    std::thread::sleep(Duration::from_millis(1500)); // 50 ticks, 5 election timeouts
    let after: Vec<u64> = (1..=3).map(|id| term_of(&rt, &c, id)).collect();
    assert_eq!(before, after, "terms moved after the removal\n{}", c.logs());
    assert_eq!(wait_leader_among(&rt, &c, &rest, SECS(5)), new_leader);
    assert_ne!(status(&rt, &la).unwrap().role, "leader");

    // Restarted with its old data, it takes no part and is refused.
    c.node(leader).kill();
    let terms: Vec<u64> = rest.iter().map(|id| term_of(&rt, &c, *id)).collect();
    c.node(leader).start();
    let s = try_wait_for("the restarted node to answer", SECS(10), || {
        status(&rt, &la)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert!(s.removed && s.role == "removed", "{s:?}");
    assert!(
        s.refusals.iter().all(|r| r.contains("not a member")),
        "{:?}",
        s.refusals
    );
    let alone = one(&la, SECS(2));
    let e = rt.block_on(alone.append("to-the-removed")).unwrap_err();
    assert!(!e.to_string().is_empty());
    assert!(rt.block_on(alone.read(0, 1, false)).is_err());
    // The members refuse a connection from it (its own identity, from its
    // data directory).
    let ident = std::fs::read_to_string(c.get(leader).dir.join("node.toml")).unwrap();
    let hex = |key: &str| {
        let line = ident
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("{key} in {ident}"));
        u64::from_str_radix(line.split('"').nth(1).unwrap(), 16).unwrap()
    };
    let (cluster, incarnation) = (hex("cluster_id"), hex("incarnation"));
    for id in &rest {
        match handshake(c.get(*id), cluster, leader, incarnation) {
            keel_node::frame::HelloReply::Refused { code, reason } => {
                assert_eq!(code, keel_node::frame::RefuseCode::NotMember, "{reason}");
                assert!(reason.contains("not a member"), "{reason}");
            }
            r => panic!("node {id} accepted the removed node: {r:?}"),
        }
    }
    let rows = keel_status_json(&c.endpoints_of(&rest)).unwrap();
    let ids: Vec<u64> = rows.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, rest, "{rows:?}");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(wait_leader_among(&rt, &c, &rest, SECS(5)), new_leader);
    let after: Vec<u64> = rest.iter().map(|id| term_of(&rt, &c, *id)).collect();
    assert_eq!(terms, after, "the returning node disturbed the cluster");
    let s = status(&rt, &la).unwrap();
    assert!(
        s.removed && s.leader_id == 0 && s.role == "removed",
        "{s:?}"
    );
    let (acked, fence) = w.stop(&rt);
    assert!(acked.values().all(|v| v != "to-the-removed"));
    check_logs(&rt, &c, &rest, &acked, fence + 1);
}

#[test]
fn demoting_the_leader_while_every_node_serves_reads_elects_another_within_seconds() {
    // The demoted leader steps down once the change commits and, a learner
    // now, never campaigns. The followers forward linearizable reads to the
    // node they followed; its answer (it does not lead) once counted as
    // word from a live leader, so while reads kept coming no follower's
    // election timer ran out: no leader for as long as the load lasted
    // (found by keel-chaos's membership nemesis).
    let rt = rt();
    let _e = rt.enter();
    let c = Cluster::start(3, "demote");
    let leader = wait_leader_among(&rt, &c, &[1, 2, 3], SECS(15));
    let all: Vec<String> = c.nodes.iter().map(|n| n.client_addr.clone()).collect();
    let w = Writer::start(&rt, all.clone(), "demote", 2);
    w.wait_more(30, SECS(10), &c);
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = all
        .iter()
        .map(|a| {
            let (a, stop) = (a.clone(), stop.clone());
            rt.spawn(async move {
                // One node only: a follower serves the read itself (through
                // the leader's read index), so it keeps asking the node it
                // follows.
                let c = one(&a, SECS(1));
                while !stop.load(Ordering::SeqCst) {
                    let _ = c.read(0, 1, false).await;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let r = keel_json(&[
        "members",
        "demote",
        &leader.to_string(),
        "--change-timeout",
        "20s",
        "--endpoints",
        &c.endpoints(),
    ])
    .unwrap_or_else(|e| panic!("keel members demote {leader}: {e}\n{}", c.logs()));
    assert_eq!(ids_with(&r, "learner"), vec![leader], "{r}");
    let rest: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
    // A few election timeouts (10 ticks of 30 ms each), not the load's
    // length.
    let new_leader = try_leader_among(&rt, &c, &rest, SECS(5))
        .unwrap_or_else(|e| panic!("after demoting leader {leader}: {e}\n{}", c.logs()));
    assert_ne!(new_leader, leader);
    w.wait_more(30, SECS(10), &c);
    stop.store(true, Ordering::SeqCst);
    for t in readers {
        rt.block_on(t).expect("reader task");
    }
    let (acked, fence) = w.stop(&rt);
    let s = status(&rt, &c.get(leader).client_addr).unwrap();
    assert_eq!(s.role, "learner", "{s:?}");
    check_logs(&rt, &c, &[1, 2, 3], &acked, fence + 1);
}

#[test]
fn learners_serve_stale_reads_and_never_campaign() {
    let rt = rt();
    let _e = rt.enter();
    let mut c = Cluster::with_joiners(1, 3, "learners", &[]);
    c.node(1).start();
    wait_leader_among(&rt, &c, &[1], SECS(10));
    c.node(2).start();
    c.node(3).start();
    let ep = c.endpoints_of(&[1]);
    wait_admitted(&rt, &c, &[2, 3], &ep);
    let o = keel(&[
        "append",
        "-d",
        "learned",
        "--count",
        "30",
        "--endpoints",
        &ep,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for id in [2, 3] {
        let a = c.get(id).client_addr.clone();
        let out = try_wait_for("a learner to serve the records", SECS(10), || {
            let o = keel(&["get", "--stale", "--from", "0", "--endpoints", &a]);
            let s = stdout(&o);
            if o.status.success() && s.lines().count() == 30 {
                Ok(s)
            } else {
                Err(s + &stderr(&o))
            }
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
        assert!(out.lines().all(|l| l == "learned"), "{out}");
        let s = status(&rt, &a).unwrap();
        assert_eq!(s.role, "learner");
        assert_eq!(config_of(&s), (vec![1], vec![2, 3]));
    }

    // The only voter dies: the learners never elect anyone.
    let terms: Vec<u64> = [2, 3]
        .iter()
        .map(|id| status(&rt, &c.get(*id).client_addr).unwrap().term)
        .collect();
    c.node(1).kill();
    let until = Instant::now() + Duration::from_millis(2000); // ~6 election timeouts
    while Instant::now() < until {
        for (k, id) in [2u64, 3].iter().enumerate() {
            let s = status(&rt, &c.get(*id).client_addr).unwrap();
            assert_eq!(s.role, "learner", "node {id}: {s:?}");
            assert!(s.leader_id == 0 || s.leader_id == 1, "node {id}: {s:?}");
            assert_eq!(s.term, terms[k], "node {id} campaigned: {s:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for id in [2, 3] {
        let a = c.get(id).client_addr.clone();
        let o = keel(&["get", "--stale", "-i", "29", "--endpoints", &a]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(stdout(&o), "learned\n");
        let o = keel(&["append", "-d", "x", "--timeout", "1s", "--endpoints", &a]);
        assert!(!o.status.success(), "a learner alone committed an append");
    }
}

#[test]
fn killing_the_leader_in_the_middle_of_a_joint_change_leaves_one_consistent_configuration() {
    let rt = rt();
    let _e = rt.enter();
    let mut c = Cluster::with_joiners(3, 5, "joint", &[]);
    for id in 1..=3 {
        c.node(id).start();
    }
    wait_leader_among(&rt, &c, &[1, 2, 3], SECS(15));
    let ep = c.endpoints();
    c.node(4).start();
    c.node(5).start();
    wait_admitted(&rt, &c, &[4, 5], &ep);
    let w = Writer::start(
        &rt,
        c.nodes.iter().map(|n| n.client_addr.clone()).collect(),
        "joint",
        2,
    );
    w.wait_more(50, SECS(10), &c);

    // Hold the change in its joint configuration: the new voters 4 and 5
    // are paused once caught up, so C_new {3,4,5} has no majority.
    w.pause();
    let leader = wait_leader_among(&rt, &c, &[1, 2, 3], SECS(10));
    let la = c.get(leader).client_addr.clone();
    try_wait_for("4 and 5 to catch up", SECS(10), || {
        let m = members(&la)?;
        let lag: Vec<_> = [4, 5]
            .iter()
            .map(|i| member(&m, *i).unwrap()["lag"].clone())
            .collect();
        if lag.iter().all(|l| l == 0) {
            Ok(())
        } else {
            Err(m.to_string())
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let (p4, p5) = (c.get(4).pid(), c.get(5).pid());
    signal(p4, libc::SIGSTOP);
    signal(p5, libc::SIGSTOP);
    let change = keel_spawn(&[
        "members",
        "change",
        "--promote",
        "4",
        "--promote",
        "5",
        "--remove",
        "1",
        "--remove",
        "2",
        "--change-timeout",
        "20s",
        "--output",
        "json",
        "--endpoints",
        &la,
    ]);
    w.resume();
    let joint = try_wait_for(
        "the leader to enter the joint configuration",
        SECS(10),
        || {
            let s = status(&rt, &la)?;
            if s.joint {
                Ok(s)
            } else {
                Err(format!("{s:?}"))
            }
        },
    );
    if let Err(e) = joint {
        signal(p4, libc::SIGCONT);
        signal(p5, libc::SIGCONT);
        panic!("{e}\n{}", c.logs());
    }
    // kill -9 the leader mid-change, let 4 and 5 run again, restart it.
    c.node(leader).kill();
    signal(p4, libc::SIGCONT);
    signal(p5, libc::SIGCONT);
    std::thread::sleep(Duration::from_millis(300));
    c.node(leader).start();
    let o = change.wait_with_output().unwrap();
    eprintln!(
        "the change command: exit {:?}: {}{}",
        o.status.code(),
        stdout(&o),
        stderr(&o)
    );

    // One non-joint configuration, the same on every member.
    let settled = try_wait_for("a settled configuration", SECS(20), || {
        let mut seen = BTreeSet::new();
        let s = status(&rt, &c.get(3).client_addr)?;
        if s.joint || s.leader_id == 0 {
            return Err(format!("node 3: {s:?}"));
        }
        let (voters, learners) = config_of(&s);
        for id in voters.iter().chain(&learners) {
            let s = status(&rt, &c.get(*id).client_addr)?;
            if s.joint {
                return Err(format!("node {id} still joint: {s:?}"));
            }
            seen.insert(config_of(&s));
        }
        if seen.len() == 1 {
            Ok((voters, learners))
        } else {
            Err(format!("members disagree: {seen:?}"))
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    eprintln!(
        "settled on voters {:?}, learners {:?}",
        settled.0, settled.1
    );
    assert!(
        settled == (vec![3, 4, 5], vec![]) || settled == (vec![1, 2, 3], vec![4, 5]),
        "{settled:?}"
    );
    if o.status.success() {
        assert_eq!(
            settled.0,
            vec![3, 4, 5],
            "the change succeeded but did not stick"
        );
    }
    w.wait_more(30, SECS(15), &c);
    let (acked, fence) = w.stop(&rt);
    let voters = settled.0.clone();
    let mut everyone = voters.clone();
    everyone.extend(&settled.1);
    check_logs(&rt, &c, &everyone, &acked, fence + 1);
}

#[test]
fn a_wiped_node_is_refused_until_it_is_removed_and_joins_again() {
    let rt = rt();
    let _e = rt.enter();
    let mut c = Cluster::start(3, "wiped");
    wait_leader_among(&rt, &c, &[1, 2, 3], SECS(15));
    let ep12 = c.endpoints_of(&[1, 2]);
    // The cluster learns every member's incarnation from the handshakes.
    try_wait_for("incarnations recorded", SECS(10), || {
        let m = members(&ep12)?;
        if m["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["incarnation"] != "")
        {
            Ok(())
        } else {
            Err(m.to_string())
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let lines: String = (0..20).map(|i| format!("before-wipe-{i}\n")).collect();
    let o = keel_in(
        &c.root.0,
        &["append", "-f", "-", "--endpoints", &ep12],
        Some(&lines),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let old_inc = member(&members(&ep12).unwrap(), 3).unwrap()["incarnation"].clone();

    // (a) Wiped and started with its original --peers.
    c.node(3).kill();
    c.node(3).wipe();
    c.node(3).start();
    let a3 = c.get(3).client_addr.clone();
    let s = try_wait_for("the wiped node to be refused", SECS(10), || {
        let s = status(&rt, &a3)?;
        if s.refusals.len() == 2 {
            Ok(s)
        } else {
            Err(format!("{s:?}"))
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert!(
        s.refusals
            .iter()
            .all(|r| r.contains("incarnation") && r.contains("wiped")),
        "{:?}",
        s.refusals
    );
    let o = keel(&["status", "--endpoints", &a3]);
    assert!(stdout(&o).contains("refused"), "{}", stdout(&o));
    let until = Instant::now() + Duration::from_millis(1500);
    let mut n = 0;
    while Instant::now() < until {
        assert_ne!(status(&rt, &a3).unwrap().role, "leader");
        let o = keel(&["append", "-d", &format!("during-{n}"), "--endpoints", &ep12]);
        assert!(o.status.success(), "{}", stderr(&o));
        n += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    let m = members(&ep12).unwrap();
    assert_eq!(member(&m, 3).unwrap()["incarnation"], old_inc, "{m}");

    // (b) Wiped and started with --join: it is a voter, so it is refused.
    c.node(3).kill();
    c.node(3).wipe();
    c.node(3).peers.clear();
    c.node(3).join = Some(ep12.clone());
    let (code, err) = c.node(3).run_to_exit(SECS(20));
    assert!(matches!(code, Some(c) if c != 0), "exit {code:?}: {err}");
    assert!(
        err.contains("node 3 is a voter") && err.contains("keel members remove 3"),
        "{err}"
    );

    // Removed, then joining again works, and it catches up.
    remove(&c, &[3], &ep12);
    c.node(3).wipe();
    let r = join_then_promote(&rt, &mut c, 3, &ep12);
    assert_eq!(ids_with(&r, "voter"), vec![1, 2, 3], "{r}");
    let new_inc = member(&members(&ep12).unwrap(), 3).unwrap()["incarnation"].clone();
    assert_ne!(new_inc, old_inc);
    let o = keel(&["append", "-d", "after-rejoin", "--endpoints", &ep12]);
    assert!(o.status.success(), "{}", stderr(&o));
    let end: u64 = stdout(&o).trim().parse().unwrap();
    check_logs(&rt, &c, &[1, 2, 3], &BTreeMap::new(), end + 1);
}

#[test]
fn a_majority_is_replaced_in_one_change_and_a_second_change_meanwhile_is_refused() {
    let rt = rt();
    let _e = rt.enter();
    let mut c = Cluster::with_joiners(3, 6, "majority", &[]);
    for id in 1..=5 {
        c.node(id).start();
    }
    wait_leader_among(&rt, &c, &[1, 2, 3], SECS(15));
    let ep = c.endpoints();
    wait_admitted(&rt, &c, &[4, 5], &ep);

    // Node 6 is added as a learner but never runs. Promoting it waits for it
    // to catch up, although the log is far shorter than the lag bound (128
    // entries): a learner that acknowledged nothing is behind. A second
    // change meanwhile is refused.
    keel_json(&[
        "members",
        "add",
        "6",
        &c.get(6).peer_addr.clone(),
        "--learner",
        "--endpoints",
        &ep,
    ])
    .unwrap();
    let leader = wait_leader_among(&rt, &c, &[1, 2, 3], SECS(10));
    let last = status(&rt, &c.get(leader).client_addr).unwrap().last_index;
    assert!(last < 100, "last index {last}");
    let t0 = Instant::now();
    let first = keel_spawn(&[
        "members",
        "promote",
        "6",
        "--change-timeout",
        "5s",
        "--output",
        "json",
        "--endpoints",
        &ep,
    ]);
    std::thread::sleep(Duration::from_millis(500));
    let second = keel_json(&[
        "members",
        "change",
        "--add-learner",
        "7=127.0.0.1:9",
        "--endpoints",
        &ep,
    ]);
    let e = second.expect_err("a second change while one is in progress");
    assert!(e.contains("in progress"), "{e}");
    let o = first.wait_with_output().unwrap();
    let took = t0.elapsed();
    assert!(
        !o.status.success(),
        "promoting a learner that never ran succeeded: {}",
        stdout(&o)
    );
    let err = stderr(&o);
    assert!(
        err.contains("node 6 is")
            && err.contains("entries behind")
            && err.contains("stays a learner"),
        "{err}"
    );
    assert!(
        took >= Duration::from_secs(4) && took < SECS(12),
        "took {took:?}"
    );
    let m = members(&ep).unwrap();
    assert_eq!(ids_with(&m, "voter"), vec![1, 2, 3], "{m}");
    assert_eq!(ids_with(&m, "learner"), vec![4, 5, 6], "{m}");
    assert!(member(&m, 7).is_none(), "{m}");
    remove(&c, &[6], &ep);

    // Replace a majority (1 and 2 by 4 and 5) in one joint change, under
    // appends.
    let w = Writer::start(
        &rt,
        c.nodes.iter().map(|n| n.client_addr.clone()).collect(),
        "maj",
        2,
    );
    w.wait_more(30, SECS(10), &c);
    let r = keel_json(&[
        "members",
        "change",
        "--promote",
        "4",
        "--promote",
        "5",
        "--remove",
        "1",
        "--remove",
        "2",
        "--change-timeout",
        "20s",
        "--endpoints",
        &ep,
    ])
    .unwrap_or_else(|e| panic!("the change: {e}\n{}", c.logs()));
    assert_eq!(ids_with(&r, "voter"), vec![3, 4, 5], "{r}");
    assert!(ids_with(&r, "learner").is_empty(), "{r}");
    assert!(member(&r, 1).is_none() && member(&r, 2).is_none(), "{r}");
    assert_eq!(r["joint"], false, "{r}");
    c.node(1).kill();
    c.node(2).kill();
    w.wait_more(30, SECS(10), &c);
    let (acked, fence) = w.stop(&rt);
    let m = members(&c.endpoints_of(&[3, 4, 5])).unwrap();
    assert_eq!(ids_with(&m, "voter"), vec![3, 4, 5], "{m}");
    check_logs(&rt, &c, &[3, 4, 5], &acked, fence + 1);
}

#[test]
fn the_preferred_leader_is_set_at_bootstrap_changed_at_run_time_and_survives_restarts() {
    let rt = rt();
    let _e = rt.enter();
    let mut c = Cluster::new(3, "prefer", &["--preferred-leader", "3"]);
    for n in &mut c.nodes {
        n.start();
    }
    let ep = c.endpoints();
    try_wait_for("node 3, preferred at bootstrap, to lead", SECS(15), || {
        let l = try_leader_among(&rt, &c, &[1, 2, 3], SECS(1))?;
        let m = members(&ep)?;
        if l == 3 && m["preferred_leader"] == 3 {
            Ok(())
        } else {
            Err(format!("leader {l}: {m}"))
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));

    let r = keel_json(&["members", "prefer", "2", "--endpoints", &ep]).unwrap();
    assert_eq!(r["preferred_leader"], 2, "{r}");
    let t0 = Instant::now();
    try_wait_for("node 2 to lead", SECS(5), || {
        let l = try_leader_among(&rt, &c, &[1, 2, 3], SECS(1))?;
        if l == 2 {
            Ok(())
        } else {
            Err(format!("leader {l}"))
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    eprintln!("node 2 led {:?} after the preference", t0.elapsed());
    let m = members(&ep).unwrap();
    assert_eq!(
        (m["leader"].clone(), m["preferred_leader"].clone()),
        (2.into(), 2.into()),
        "{m}"
    );
    let rows = keel_status_json(&ep).unwrap();
    assert!(rows.iter().all(|r| r["preferred_leader"] == 2), "{rows:?}");
    assert_eq!(
        rows.iter()
            .filter(|r| r["role"] == "leader")
            .map(|r| r["id"].clone())
            .collect::<Vec<_>>(),
        vec![Value::from(2)]
    );

    // Every node restarts (the bootstrap flag is still given: the
    // replicated preference wins).
    for id in 1..=3 {
        c.node(id).kill();
    }
    for id in 1..=3 {
        c.node(id).start();
    }
    try_wait_for("node 2 to lead again after the restart", SECS(15), || {
        let l = try_leader_among(&rt, &c, &[1, 2, 3], SECS(1))?;
        if l == 2 {
            Ok(())
        } else {
            Err(format!("leader {l}"))
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    for id in 1..=3 {
        let s = status(&rt, &c.get(id).client_addr).unwrap();
        assert_eq!(s.preferred_leader, 2, "node {id}: {s:?}");
    }
    let r = keel_json(&["members", "prefer", "none", "--endpoints", &ep]).unwrap();
    assert_eq!(r["preferred_leader"], Value::Null, "{r}");
}

#[test]
fn every_node_shows_the_configuration_and_it_survives_restarts() {
    let rt = rt();
    let _e = rt.enter();
    let mut c = Cluster::with_joiners(3, 4, "status", &[]);
    for id in 1..=4 {
        c.node(id).start();
    }
    let addrs: BTreeMap<u64, String> = c
        .nodes
        .iter()
        .map(|n| (n.id, n.client_addr.clone()))
        .collect();
    // The full configuration as one node shows it: voters 1-3, learner 4,
    // every client address, every incarnation, not joint.
    let full = |s: &StatusResponse| -> Result<(), String> {
        if config_of(s) != (vec![1, 2, 3], vec![4]) || s.joint {
            return Err(format!(
                "node {}: {:?} joint {}",
                s.node_id,
                config_of(s),
                s.joint
            ));
        }
        for m in &s.members {
            if m.client_addr != addrs[&m.id] || m.incarnation.is_empty() {
                return Err(format!("node {} shows {m:?}", s.node_id));
            }
        }
        Ok(())
    };
    try_wait_for(
        "every node to show the full configuration",
        SECS(20),
        || {
            for a in addrs.values() {
                full(&status(&rt, a)?)?;
            }
            Ok(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let o = keel(&["status", "--endpoints", &addrs[&4]]);
    let text = stdout(&o);
    assert!(text.starts_with("voters 1,2,3; learners 4;"), "{text}");
    let rows = keel_status_json(&addrs[&4]).unwrap();
    assert_eq!(rows.len(), 4, "{rows:?}");
    for r in &rows {
        let id = r["id"].as_u64().unwrap();
        assert_eq!(r["client_addr"], addrs[&id].as_str());
        assert_eq!(r["suffrage"], if id == 4 { "learner" } else { "voter" });
        assert_eq!(r["joint"], false);
    }

    // Every node down; node 2 alone, which cannot hear any leader.
    for id in 1..=4 {
        c.node(id).kill();
    }
    c.node(2).start();
    let s = try_wait_for("node 2 to answer", SECS(10), || status(&rt, &addrs[&2])).unwrap();
    assert_eq!(s.leader_id, 0, "{s:?}");
    full(&s).unwrap();
    for id in [1, 3, 4] {
        c.node(id).start();
    }
    wait_leader_among(&rt, &c, &[1, 2, 3], SECS(15));

    // Two of the three voters restart: each shows the configuration at once.
    let leader = wait_leader_among(&rt, &c, &[1, 2, 3], SECS(10));
    let twice: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
    for id in &twice {
        c.node(*id).kill();
    }
    for id in &twice {
        c.node(*id).start();
    }
    for id in &twice {
        let s = try_wait_for("a restarted node to answer", SECS(10), || {
            status(&rt, &addrs[id])
        })
        .unwrap();
        eprintln!(
            "node {id} right after its restart: leader {} role {}",
            s.leader_id, s.role
        );
        full(&s).unwrap();
    }
    wait_leader_among(&rt, &c, &[1, 2, 3], SECS(10));
}

#[test]
fn a_restarted_node_never_serves_less_than_it_served_before() {
    let rt = rt();
    let _e = rt.enter();
    let mut c = Cluster::start(3, "served");
    let leader = wait_leader_among(&rt, &c, &[1, 2, 3], SECS(15));
    let f = (1..=3).find(|i| *i != leader).unwrap();
    let fa = c.get(f).client_addr.clone();
    let w = Writer::start(
        &rt,
        c.nodes.iter().map(|n| n.client_addr.clone()).collect(),
        "srv",
        2,
    );
    w.wait_more(100, SECS(10), &c);
    // Under appends: what the follower serves right before kill -9.
    let before = status(&rt, &fa).unwrap().served_offset;
    let last = served_log(&rt, &fa).unwrap();
    c.node(f).kill();
    assert!(before > 0);
    assert!(last.len() as u64 >= before);
    let (acked, _) = w.stop(&rt);
    // Nobody to hear a leader from.
    for id in 1..=3 {
        c.node(id).kill();
    }
    c.node(f).start();
    let s = try_wait_for("the follower to answer", SECS(10), || status(&rt, &fa)).unwrap();
    assert_eq!(s.leader_id, 0, "{s:?}");
    assert!(
        s.served_offset >= before && s.end_offset >= before,
        "node {f} served {before} before its restart, {} after",
        s.served_offset
    );
    let now = served_log(&rt, &fa).unwrap();
    assert!(now.len() as u64 >= before);
    for (a, b) in last.iter().zip(&now).take(before as usize) {
        assert_eq!((a.offset, &a.data), (b.offset, &b.data));
    }
    for (off, v) in acked.range(..before) {
        assert_eq!(
            String::from_utf8_lossy(&now[*off as usize].data),
            v.as_str()
        );
    }
    let o = keel(&[
        "get",
        "--stale",
        "-i",
        &(before - 1).to_string(),
        "--endpoints",
        &fa,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));

    // Again, killed at once after it served more.
    for id in (1..=3).filter(|i| *i != f) {
        c.node(id).start();
    }
    wait_leader_among(&rt, &c, &[1, 2, 3], SECS(15));
    let w = Writer::start(
        &rt,
        c.nodes.iter().map(|n| n.client_addr.clone()).collect(),
        "srv2",
        2,
    );
    w.wait_more(100, SECS(10), &c);
    let before2 = status(&rt, &fa).unwrap().served_offset;
    c.node(f).kill();
    let _ = w.stop(&rt);
    for id in 1..=3 {
        c.node(id).kill();
    }
    c.node(f).start();
    let s = try_wait_for("the follower to answer", SECS(10), || status(&rt, &fa)).unwrap();
    assert!(before2 > before);
    assert!(
        s.served_offset >= before2,
        "node {f} served {before2} before its restart, {} after",
        s.served_offset
    );
}

#[test]
fn a_fresh_node_catches_up_through_a_history_that_removed_and_readded_the_leader() {
    // The log a joining node replays holds configurations older than its
    // admission: one where an earlier node with its id was a voter, and
    // one that removed the node that leads now (it came back since, with a
    // new data directory). Neither may stop it from following the leader.
    let rt = rt();
    let _e = rt.enter();
    let mut c = Cluster::with_joiners(3, 4, "stale-join", &[]);
    for id in 1..=3 {
        c.node(id).start();
    }
    wait_leader_among(&rt, &c, &[1, 2, 3], SECS(15));
    let ep23 = c.endpoints_of(&[2, 3]);
    let root = c.root.0.clone();
    // Each step appends more than one append message carries (4 MiB), so
    // the joining node receives the history in several batches and applies
    // each old configuration while the newer ones are not in its log yet.
    let pad = "x".repeat(64 << 10);
    let append = |tag: &str, ep: &str| {
        let lines: String = (0..80).map(|i| format!("{tag}-{i}-{pad}\n")).collect();
        let o = keel_in(
            &root,
            &["append", "-f", "-", "--endpoints", ep],
            Some(&lines),
        );
        assert!(o.status.success(), "{}", stderr(&o));
    };
    append("first", &ep23);
    // Node 4, first data directory: joins and becomes a voter, then leaves.
    join_then_promote(&rt, &mut c, 4, &ep23);
    append("with-4", &ep23);
    remove(&c, &[4], &ep23);
    c.node(4).kill();
    c.node(4).wipe();
    // Node 1 leaves and comes back on a new data directory, and leads.
    remove(&c, &[1], &ep23);
    c.node(1).kill();
    c.node(1).wipe();
    c.node(1).peers.clear();
    c.node(1).join = Some(ep23.clone());
    append("without-1", &ep23);
    join_then_promote(&rt, &mut c, 1, &ep23);
    let o = keel(&["transfer-leader", "--to", "1", "--endpoints", &ep23]);
    assert!(o.status.success(), "{}", stderr(&o));
    append("led-by-1", &c.endpoints_of(&[1, 2, 3]));
    // Node 4 again, fresh: it must catch up and follow node 1, also when
    // it restarts half way (it then knows only the old configurations it
    // holds, and its join ticket).
    let leader_end = status(&rt, &c.get(1).client_addr).unwrap().end_offset;
    c.node(4).start();
    let a4 = c.get(4).client_addr.clone();
    let _ = try_wait_for("node 4 to have part of the log", SECS(20), || {
        let s = status(&rt, &a4)?;
        if s.end_offset > 0 {
            Ok(s)
        } else {
            Err(format!("{s:?}"))
        }
    });
    c.node(4).kill();
    c.node(4).start();
    wait_admitted(&rt, &c, &[4], &ep23);
    let s = try_wait_for("the fresh node 4 to catch up", SECS(20), || {
        let s = status(&rt, &a4)?;
        if s.end_offset >= leader_end && s.leader_id == 1 && !s.removed {
            Ok(s)
        } else {
            Err(format!("{s:?}"))
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert!(s.refusals.is_empty(), "{:?}", s.refusals);
    assert_eq!(s.role, "learner");
    let o = keel_json(&["members", "promote", "4", "--endpoints", &ep23])
        .unwrap_or_else(|e| panic!("promote 4: {e}\n{}", c.logs()));
    assert_eq!(ids_with(&o, "voter"), vec![1, 2, 3, 4], "{o}");
    check_logs(&rt, &c, &[1, 2, 3, 4], &BTreeMap::new(), leader_end);
}
