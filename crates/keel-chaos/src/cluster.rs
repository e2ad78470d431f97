//! The keel server processes: start, kill -9, SIGSTOP/SIGCONT, and the
//! crash that loses un-fsynced writes (after kill -9, each segment is cut
//! back to the length its last completed fdatasync made durable, as the
//! server's sync record says: see keel-log's `sync_record`).
//!
//! Slots: the founding nodes `1..=founding` (started with `--peers`), then
//! spare slots the membership nemesis adds at run time. A slot is a
//! [`Role::Member`] while its data directory is (or is becoming) the
//! cluster's member of that id, and [`Role::Spare`] otherwise: never
//! started, or stopped after it left the configuration. A spare's data
//! directory is stale (a removed member's identity) or empty; it is wiped
//! before the slot starts again, always with `--join`, so a removed node
//! never comes back with its old data.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use keel_client::{Client, ClientOptions};

use crate::Error;
use crate::net::Net;

/// What the runner takes a slot to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// In the configuration, or on its way in (started with `--join`):
    /// runs with its own data directory, restarted after faults.
    Member,
    /// Not a member: not running; its directory is wiped before it starts.
    Spare,
}

/// How a slot's server is started.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Start {
    /// A founding member: `--peers` (bootstraps an empty directory).
    Peers,
    /// `--join` through these client addresses (ignored by the server once
    /// the directory holds the cluster).
    Join(String),
}

pub struct Node {
    pub id: usize,
    pub data_dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    paused: bool,
    pub role: Role,
    /// Seen in a committed configuration since it last started afresh
    /// (founding members from the start). An unconfirmed joiner that exits
    /// was refused or gave up; a confirmed member that exits crashed.
    pub confirmed: bool,
    start: Start,
    /// Times this slot started with a fresh directory (`--join`).
    pub incarnations: u32,
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    /// The founding member count (`--nodes`).
    pub founding: usize,
    /// The voters of the last committed configuration the runner read
    /// (the founding nodes at first).
    pub voters: Vec<usize>,
    bin: PathBuf,
    peers: String,
    /// Extra environment for every server (the fault switches).
    env: Vec<(String, String)>,
    tick_ms: u64,
}

/// What a lost-writes crash cut, for the record.
#[derive(Debug, Clone)]
pub struct Cut {
    pub file: PathBuf,
    /// The file's length before the cut (data plus preallocated zeros).
    pub from: u64,
    pub to: u64,
    /// Bytes of data (up to the last non-zero byte) the cut removed.
    pub data_bytes: u64,
}

/// The position after the last non-zero byte in `[lo, hi)` of `f`, or `lo`.
fn last_data_end(f: &std::fs::File, lo: u64, hi: u64) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 64 << 10];
    let mut end = hi;
    while end > lo {
        let start = end.saturating_sub(buf.len() as u64).max(lo);
        let want = (end - start) as usize;
        f.read_exact_at(&mut buf[..want], start)?;
        if let Some(i) = buf[..want].iter().rposition(|&b| b != 0) {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(lo)
}

impl Cluster {
    /// Slots for every node of `net`: `1..=founding` are the founding
    /// members, the rest spares.
    pub fn new(
        net: &Net,
        founding: usize,
        bin: &Path,
        work: &Path,
        env: Vec<(String, String)>,
        tick_ms: u64,
    ) -> Result<Cluster, Error> {
        let n = net.nodes();
        let founding = founding.min(n);
        let peers = (1..=founding)
            .map(|i| format!("{i}={}", net.peer_addr(i)))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Vec::new();
        for id in 1..=n {
            let data_dir = work.join(format!("n{id}"));
            std::fs::create_dir_all(&data_dir)
                .map_err(|e| Error::Setup(format!("cannot create {}: {e}", data_dir.display())))?;
            let founder = id <= founding;
            nodes.push(Node {
                id,
                log_path: work.join(format!("n{id}.log")),
                data_dir,
                child: None,
                paused: false,
                role: if founder { Role::Member } else { Role::Spare },
                confirmed: founder,
                start: if founder {
                    Start::Peers
                } else {
                    Start::Join(String::new())
                },
                incarnations: 0,
            });
        }
        Ok(Cluster {
            nodes,
            founding,
            voters: (1..=founding).collect(),
            bin: bin.to_path_buf(),
            peers,
            env,
            tick_ms,
        })
    }

    /// The slots the runner takes for members (running or down by a fault).
    pub fn member_ids(&self) -> Vec<usize> {
        self.nodes
            .iter()
            .filter(|n| n.role == Role::Member)
            .map(|n| n.id)
            .collect()
    }

    pub fn role(&self, id: usize) -> Role {
        self.nodes[id - 1].role
    }

    /// Starts spare slot `id` afresh: wipes its data directory and starts
    /// it with `--join` through `endpoints` (client addresses of members).
    pub fn start_joining(
        &mut self,
        net: &Net,
        id: usize,
        endpoints: &[String],
    ) -> Result<(), Error> {
        if endpoints.is_empty() {
            return Err(Error::Fault(format!(
                "node {id} cannot join: no member to ask"
            )));
        }
        self.kill(id);
        let node = &mut self.nodes[id - 1];
        let _ = std::fs::remove_dir_all(&node.data_dir);
        std::fs::create_dir_all(&node.data_dir)
            .map_err(|e| Error::Setup(format!("cannot create {}: {e}", node.data_dir.display())))?;
        node.start = Start::Join(endpoints.join(","));
        node.role = Role::Member;
        node.confirmed = false;
        node.incarnations += 1;
        let note = format!(
            "\n=== keel-chaos: node {id}: data directory wiped; starting with --join {} (fresh start #{})\n\n",
            endpoints.join(","),
            node.incarnations
        );
        let _ = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, note.as_bytes()));
        self.start(net, id)
    }

    /// Stops slot `id` (SIGTERM, or kill -9 if `kill`) and makes it a
    /// spare: it left the configuration (or never got in).
    pub fn retire(&mut self, id: usize, kill: bool) {
        if kill {
            self.kill(id);
        } else {
            self.terminate(id);
        }
        let node = &mut self.nodes[id - 1];
        node.role = Role::Spare;
        node.confirmed = false;
        let note = format!("\n=== keel-chaos: node {id} stopped: no longer a member\n\n");
        let _ = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, note.as_bytes()));
    }

    /// SIGTERM one node and wait for it (SIGKILL after 5 s).
    pub fn terminate(&mut self, id: usize) {
        self.resume(id);
        self.signal(id, libc::SIGTERM);
        let node = &mut self.nodes[id - 1];
        if let Some(mut c) = node.child.take() {
            for _ in 0..100 {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        node.paused = false;
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn is_running(&self, id: usize) -> bool {
        self.nodes[id - 1].child.is_some()
    }

    pub fn is_paused(&self, id: usize) -> bool {
        self.nodes[id - 1].paused
    }

    pub fn start(&mut self, net: &Net, id: usize) -> Result<(), Error> {
        let node = &mut self.nodes[id - 1];
        if node.child.is_some() {
            return Ok(());
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .map_err(|e| Error::Setup(format!("cannot open {}: {e}", node.log_path.display())))?;
        let mut cmd = net.command(id, &self.bin);
        cmd.args(["server", "--id", &id.to_string(), "--data-dir"])
            .arg(&node.data_dir)
            .args(["--client-addr", &net.client_addr(id)])
            .args(["--peer-addr", &net.peer_addr(id)])
            .args(["--metrics-addr", "off"]);
        match &node.start {
            Start::Peers => {
                cmd.args(["--peers", &self.peers])
                    .args(["--cluster-name", "keelchaos"]);
            }
            Start::Join(endpoints) => {
                cmd.args(["--join", endpoints]);
            }
        }
        cmd.args(["--tick-ms", &self.tick_ms.to_string()])
            .args(["--request-timeout-ms", "2000"])
            .env("KEEL_LOG_LEVEL", "info")
            .env("KEEL_FAULT_SYNC_RECORD", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .map_err(|e| Error::Setup(format!("cannot start {}: {e}", self.bin.display())))?;
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    fn signal(&self, id: usize, sig: i32) {
        if let Some(c) = &self.nodes[id - 1].child {
            // SAFETY: kill(2) on our own child's pid (not yet reaped, so
            // the pid cannot have been reused).
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    /// kill -9, and reap the process.
    pub fn kill(&mut self, id: usize) {
        self.signal(id, libc::SIGKILL);
        let node = &mut self.nodes[id - 1];
        if let Some(mut c) = node.child.take() {
            let _ = c.wait();
        }
        node.paused = false;
    }

    pub fn pause(&mut self, id: usize) {
        if self.is_running(id) {
            self.signal(id, libc::SIGSTOP);
            self.nodes[id - 1].paused = true;
        }
    }

    pub fn resume(&mut self, id: usize) {
        if self.nodes[id - 1].paused {
            self.signal(id, libc::SIGCONT);
            self.nodes[id - 1].paused = false;
        }
    }

    /// After kill -9: cuts every segment of the node's stores back to its
    /// last completed fdatasync. The node must be dead.
    pub fn lose_unsynced(&mut self, id: usize) -> Result<Vec<Cut>, Error> {
        if self.is_running(id) {
            return Err(Error::Fault(format!(
                "node {id} still runs; kill it before cutting its files"
            )));
        }
        let mut cuts = Vec::new();
        for dir in store_dirs(&self.nodes[id - 1].data_dir) {
            cut_dir(&dir, &mut cuts)
                .map_err(|e| Error::Fault(format!("cutting {}: {e}", dir.display())))?;
        }
        Ok(cuts)
    }

    /// Bytes of data past the sync record in the node's last segment of
    /// each group: what a crash right now would lose. (Read while the node
    /// is stopped or dead, so it cannot change underneath.)
    pub fn unsynced_bytes(&self, id: usize) -> u64 {
        let mut total = 0;
        for dir in store_dirs(&self.nodes[id - 1].data_dir) {
            let mut segs: Vec<PathBuf> = std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .collect();
            segs.sort();
            let Some(last) = segs.pop() else { continue };
            let mut side = last.clone().into_os_string();
            side.push(".synced");
            let Some(synced) = std::fs::read_to_string(&side)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
            else {
                continue;
            };
            if let Ok(f) = std::fs::File::open(&last)
                && let Ok(len) = f.metadata().map(|m| m.len())
                && len > synced
                && let Ok(end) = last_data_end(&f, synced, len)
            {
                total += end - synced;
            }
        }
        total
    }

    /// Whether any node's store keeps sync records (`.synced` beside its
    /// segments), i.e. the server was built with `fault-injection`.
    pub fn has_sync_records(&self) -> bool {
        self.nodes.iter().any(|n| {
            store_dirs(&n.data_dir)
                .iter()
                .filter_map(|d| std::fs::read_dir(d).ok())
                .flatten()
                .flatten()
                .any(|f| f.file_name().to_string_lossy().ends_with(".log.synced"))
        })
    }

    /// Whether a process exited on its own (a crash the nemesis did not
    /// cause); returns its status text.
    pub fn exited(&mut self, id: usize) -> Option<String> {
        let node = &mut self.nodes[id - 1];
        let c = node.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(st)) => {
                node.child = None;
                Some(st.to_string())
            }
            _ => None,
        }
    }

    pub fn log_path(&self, id: usize) -> &Path {
        &self.nodes[id - 1].log_path
    }

    /// SIGTERM every node and wait (then SIGKILL stragglers).
    pub fn stop_all(&mut self) {
        for id in 1..=self.len() {
            self.resume(id);
            self.signal(id, libc::SIGTERM);
        }
        for node in &mut self.nodes {
            if let Some(mut c) = node.child.take() {
                for _ in 0..100 {
                    if let Ok(Some(_)) = c.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for id in 1..=self.len() {
            self.resume(id);
            self.kill(id);
        }
    }
}

/// The keel-log stores of a node's groups: `<data-dir>/groups/<g>/log/`
/// (keel-node's layout; `groups/<g>/` itself in servers before it).
fn store_dirs(data_dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(data_dir.join("groups"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|g| {
            let log = g.path().join("log");
            if log.is_dir() { log } else { g.path() }
        })
        .collect()
}

/// Cuts each `<first-index>.log` in `dir` to the length in its
/// `.log.synced` sidecar (written by the server's sync record).
fn cut_dir(dir: &Path, cuts: &mut Vec<Cut>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let path = e?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(stem) = name.strip_suffix(".log") else {
            continue;
        };
        if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let mut side = path.clone().into_os_string();
        side.push(".synced");
        let synced = match std::fs::read_to_string(&side) {
            Ok(s) => match s.trim().parse::<u64>() {
                Ok(v) => v,
                Err(_) => {
                    return Err(std::io::Error::other(format!(
                        "{} is not a length: is the server built with --features fault-injection?",
                        PathBuf::from(side).display()
                    )));
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(std::io::Error::other(format!(
                    "no sync record beside {}: the server must be built with \
                     --features fault-injection (KEEL_FAULT_SYNC_RECORD)",
                    path.display()
                )));
            }
            Err(e) => return Err(e),
        };
        let f = OpenOptions::new().read(true).write(true).open(&path)?;
        let len = f.metadata()?.len();
        if len > synced {
            let data_bytes = last_data_end(&f, synced, len)? - synced;
            f.set_len(synced)?;
            f.sync_all()?;
            cuts.push(Cut {
                file: path,
                from: len,
                to: synced,
                data_bytes,
            });
        }
    }
    Ok(())
}

/// A client that talks to one node only (status, stale reads).
pub fn node_client(addr: &str, timeout: Duration) -> Result<Client, Error> {
    Client::new(ClientOptions {
        endpoints: vec![addr.to_string()],
        timeout,
        connect_timeout: Duration::from_millis(500),
        ..ClientOptions::default()
    })
    .map_err(|e| Error::Setup(format!("client for {addr}: {e}")))
}
