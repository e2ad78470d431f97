//! Real-process test harness: spawns `keel server` processes on free
//! loopback ports with their own data directories, and runs CLI commands.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use keel_client::{Client, ClientOptions};

pub const KEEL: &str = env!("CARGO_BIN_EXE_keel");

/// Ports nobody listens on right now, below the kernel's ephemeral range
/// (so that no outgoing connection of this or another test can take one
/// between now and the server's bind), each handed out once per process.
pub fn free_ports(n: usize) -> Vec<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768)
        .clamp(12_000, 65_000);
    let (first, span) = (10_000u32, low - 10_000);
    let _ = NEXT.compare_exchange(
        0,
        // Processes running at once start at different places.
        1 + (std::process::id().wrapping_mul(7919)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos())
            % span,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    let mut out = Vec::with_capacity(n);
    for _ in 0..span {
        if out.len() == n {
            break;
        }
        let port = (first + NEXT.fetch_add(1, Ordering::SeqCst) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            out.push(port);
        }
    }
    assert_eq!(out.len(), n, "no free ports below {low}");
    out
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p = std::env::temp_dir().join(format!("keel-it-{tag}-{}-{nanos}", std::process::id()));
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

pub struct Node {
    pub id: u64,
    pub dir: PathBuf,
    pub client_addr: String,
    pub peer_addr: String,
    pub metrics_addr: String,
    /// `--peers` (omitted when empty).
    pub peers: String,
    /// `--join` endpoints (omitted when `None`).
    pub join: Option<String>,
    pub extra: Vec<String>,
    pub child: Option<Child>,
    starts: u32,
}

impl Node {
    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            "server".to_string(),
            "--id".into(),
            self.id.to_string(),
            "--data-dir".into(),
            self.dir.display().to_string(),
            "--client-addr".into(),
            self.client_addr.clone(),
            "--peer-addr".into(),
            self.peer_addr.clone(),
            "--metrics-addr".into(),
            self.metrics_addr.clone(),
            "--tick-ms".into(),
            "30".into(),
        ];
        if !self.peers.is_empty() {
            a.extend(["--peers".to_string(), self.peers.clone()]);
        }
        if let Some(j) = &self.join {
            a.extend(["--join".to_string(), j.clone()]);
        }
        a.extend(self.extra.iter().cloned());
        a
    }

    /// Runs `keel server` with this node's settings and waits for it to
    /// exit (a start that must be refused). `None` when it still ran after
    /// `within` (it is killed then). Returns the exit code and stderr.
    pub fn run_to_exit(&mut self, within: Duration) -> (Option<i32>, String) {
        assert!(self.child.is_none(), "node {} already runs", self.id);
        std::fs::create_dir_all(&self.dir).unwrap();
        self.starts += 1;
        let path = self.dir.with_extension(format!("log{}", self.starts));
        let log = std::fs::File::create(&path).expect("log file");
        let mut child = Command::new(KEEL)
            .args(self.args())
            .env("KEEL_LOG_LEVEL", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn keel server");
        let deadline = Instant::now() + within;
        let code = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (code, std::fs::read_to_string(&path).unwrap_or_default())
    }

    /// Removes the node's data directory (the node must be stopped).
    pub fn wipe(&mut self) {
        assert!(self.child.is_none(), "node {} still runs", self.id);
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("wiping {}: {e}", self.dir.display()),
        }
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "node {} already runs", self.id);
        std::fs::create_dir_all(&self.dir).unwrap();
        self.starts += 1;
        let log = std::fs::File::create(self.dir.with_extension(format!("log{}", self.starts)))
            .expect("log file");
        let child = Command::new(KEEL)
            .args(self.args())
            .env("KEEL_LOG_LEVEL", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn keel server");
        self.child = Some(child);
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.with_extension(format!("log{}", self.starts)))
            .unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    pub root: TempDir,
}

impl Cluster {
    pub fn new(n: usize, tag: &str, extra: &[&str]) -> Cluster {
        let root = TempDir::new(tag);
        let ports = free_ports(3 * n);
        let peers = (0..n)
            .map(|i| format!("{}=127.0.0.1:{}", i + 1, ports[3 * i + 1]))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = (0..n)
            .map(|i| Node {
                id: i as u64 + 1,
                dir: root.0.join(format!("node{}", i + 1)),
                client_addr: format!("127.0.0.1:{}", ports[3 * i]),
                peer_addr: format!("127.0.0.1:{}", ports[3 * i + 1]),
                metrics_addr: format!("127.0.0.1:{}", ports[3 * i + 2]),
                peers: peers.clone(),
                join: None,
                extra: extra.iter().map(|s| s.to_string()).collect(),
                child: None,
                starts: 0,
            })
            .collect();
        Cluster { nodes, root }
    }

    /// `total` nodes: nodes `1..=founders` bootstrap the cluster (their
    /// `--peers` lists the founders), the others start with `--join` (the
    /// founders' client addresses) and no `--peers`; none is started. (Not
    /// the other joiners': a joining node listens on its client address
    /// before it serves it, so a call to it waits for its whole timeout.)
    pub fn with_joiners(founders: usize, total: usize, tag: &str, extra: &[&str]) -> Cluster {
        assert!(founders >= 1 && founders <= total);
        let mut c = Cluster::new(total, tag, extra);
        let peers = c.nodes[..founders]
            .iter()
            .map(|n| format!("{}={}", n.id, n.peer_addr))
            .collect::<Vec<_>>()
            .join(",");
        let addrs: Vec<(u64, String)> = c.nodes[..founders]
            .iter()
            .map(|n| (n.id, n.client_addr.clone()))
            .collect();
        for n in &mut c.nodes {
            if (n.id as usize) <= founders {
                n.peers = peers.clone();
            } else {
                n.peers = String::new();
                n.join = Some(
                    addrs
                        .iter()
                        .filter(|(id, _)| *id != n.id)
                        .map(|(_, a)| a.clone())
                        .collect::<Vec<_>>()
                        .join(","),
                );
            }
        }
        c
    }

    /// The client addresses of the nodes `ids`, comma-separated.
    pub fn endpoints_of(&self, ids: &[u64]) -> String {
        ids.iter()
            .map(|id| self.get(*id).client_addr.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn get(&self, id: u64) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .expect("no such node")
    }

    pub fn start(n: usize, tag: &str) -> Cluster {
        let mut c = Cluster::new(n, tag, &[]);
        for node in &mut c.nodes {
            node.start();
        }
        c
    }

    pub fn endpoints(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.client_addr.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn client(&self) -> Client {
        Client::new(ClientOptions {
            endpoints: self.nodes.iter().map(|n| n.client_addr.clone()).collect(),
            timeout: Duration::from_secs(20),
            ..Default::default()
        })
        .expect("client")
    }

    /// Waits until a live node reports a leader that a quorum follows and
    /// returns the leader's id.
    pub async fn wait_leader(&self, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let mut votes = std::collections::HashMap::new();
            for n in self.nodes.iter().filter(|n| n.child.is_some()) {
                if let Ok(c) = Client::new(ClientOptions {
                    endpoints: vec![n.client_addr.clone()],
                    timeout: Duration::from_millis(500),
                    ..Default::default()
                }) && let Ok(s) = c.status_of(&n.client_addr).await
                    && s.leader_id != 0
                {
                    *votes.entry(s.leader_id).or_insert(0) += 1;
                }
            }
            if let Some((l, _)) = votes.iter().find(|(_, v)| **v * 2 > self.nodes.len()) {
                return *l;
            }
            assert!(
                Instant::now() < deadline,
                "no leader within {within:?}; logs:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn node(&mut self, id: u64) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .expect("no such node")
    }

    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- node {} ---\n{}", n.id, n.log()))
            .collect()
    }
}

/// Runs `keel ARGS` and returns its output.
pub fn keel(args: &[&str]) -> Output {
    Command::new(KEEL)
        .args(args)
        .env_remove("KEEL_ENDPOINTS")
        .stdin(Stdio::null())
        .output()
        .expect("run keel")
}

pub fn keel_in(dir: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut c = Command::new(KEEL)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run keel");
    if let Some(s) = stdin {
        c.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    drop(c.stdin.take());
    c.wait_with_output().expect("keel output")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Starts `keel ARGS` without waiting for it (collect it with
/// `wait_with_output`).
pub fn keel_spawn(args: &[&str]) -> Child {
    Command::new(KEEL)
        .args(args)
        .env_remove("KEEL_ENDPOINTS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run keel")
}

/// Runs `keel ARGS --output json` and parses its one line of output; the
/// error is stderr (with the exit code) when it failed.
pub fn keel_json(args: &[&str]) -> Result<serde_json::Value, String> {
    let mut a = args.to_vec();
    a.extend(["--output", "json"]);
    let o = keel(&a);
    json_of(&a, &o)
}

/// The output of a `keel ... --output json` run: its one JSON line, or its
/// stderr.
pub fn json_of(args: &[&str], o: &Output) -> Result<serde_json::Value, String> {
    if !o.status.success() {
        return Err(format!("exit {:?}: {}", o.status.code(), stderr(o).trim()));
    }
    let out = stdout(o);
    serde_json::from_str(out.trim())
        .map_err(|e| format!("`keel {}` printed no JSON ({e}): {out}", args.join(" ")))
}

/// `keel status --output json`: one object per member.
pub fn keel_status_json(endpoints: &str) -> Result<Vec<serde_json::Value>, String> {
    let o = keel(&["status", "--output", "json", "--endpoints", endpoints]);
    if !o.status.success() {
        return Err(format!("exit {:?}: {}", o.status.code(), stderr(&o).trim()));
    }
    stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).map_err(|e| format!("{e}: {l}")))
        .collect()
}

/// Polls `f` every 50 ms until it returns `Some`, for up to `within`;
/// panics with `what` (and the last `Err`) otherwise.
pub fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + within;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => {
                panic!("timed out after {within:?} waiting for {what}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
