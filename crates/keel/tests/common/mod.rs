//! Real-process test harness: spawns `keel server` processes on free
//! loopback ports with their own data directories, and runs CLI commands.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use keel_client::{Client, ClientOptions};

pub const KEEL: &str = env!("CARGO_BIN_EXE_keel");

/// Ports nobody listens on right now (bound to 0, then released).
pub fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    ls.iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
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
    pub peers: String,
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
            "--peers".into(),
            self.peers.clone(),
            "--tick-ms".into(),
            "30".into(),
        ];
        a.extend(self.extra.iter().cloned());
        a
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
                extra: extra.iter().map(|s| s.to_string()).collect(),
                child: None,
                starts: 0,
            })
            .collect();
        Cluster { nodes, root }
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
        &mut self.nodes[(id - 1) as usize]
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
