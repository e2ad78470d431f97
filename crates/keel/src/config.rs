//! Server settings: flags, `KEEL_*` environment variables and a TOML file
//! (`--config`), in that order of precedence, over the defaults.
//!
//! Defaults: node 1 of a single-node cluster, data in `./keel-data`, the
//! client API on 127.0.0.1:7070, the peer transport on 127.0.0.1:7071 and
//! Prometheus metrics on 127.0.0.1:7072.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::error::StartError;

pub const DEFAULT_CLIENT_ADDR: &str = "127.0.0.1:7070";
pub const DEFAULT_PEER_ADDR: &str = "127.0.0.1:7071";
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:7072";
pub const DEFAULT_DATA_DIR: &str = "keel-data";
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1 << 20;

/// Flags of `keel server` (each also read from its `KEEL_*` variable).
#[derive(clap::Args, Debug, Default, Clone)]
pub struct ServerArgs {
    /// TOML file with any of the settings below (keys as the flags, with
    /// underscores: `data_dir`, `client_addr`, `peers = "1=h:p,2=h:p"` or a
    /// `[peers]` table). Flags and KEEL_* variables override it.
    #[arg(long, env = "KEEL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This node's id (>= 1). [default: 1]
    #[arg(long, env = "KEEL_ID")]
    pub id: Option<u64>,
    /// Where this node keeps its data. [default: ./keel-data]
    #[arg(long, env = "KEEL_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Client API (gRPC) address to listen on and to announce to peers (so
    /// that followers can send clients to the leader). [default: 127.0.0.1:7070]
    #[arg(long, env = "KEEL_CLIENT_ADDR", value_name = "HOST:PORT")]
    pub client_addr: Option<String>,
    /// Peer transport address to listen on. [default: this node's entry in
    /// --peers, else 127.0.0.1:7071]
    #[arg(long, env = "KEEL_PEER_ADDR", value_name = "HOST:PORT")]
    pub peer_addr: Option<String>,
    /// Prometheus metrics address (`GET /metrics`); `off` disables it.
    /// [default: 127.0.0.1:7072]
    #[arg(long, env = "KEEL_METRICS_ADDR", value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
    /// Bootstraps a NEW cluster with these founding members (peer
    /// addresses, this node included): `1=HOST:PORT,2=HOST:PORT,3=HOST:PORT`.
    /// Used only on an empty data directory; a node with data uses the
    /// configuration in its log (change it with `keel members`), and
    /// refuses a --peers other than the one it was created with.
    /// [default: this node alone]
    #[arg(long, env = "KEEL_PEERS", value_name = "ID=HOST:PORT,...")]
    pub peers: Option<String>,
    /// Joins an EXISTING cluster through any of its members' client
    /// addresses: on an empty data directory, asks to be admitted (as a
    /// learner), then catches up; `keel members promote ID` makes it a
    /// voter. Ignored once the node has data.
    #[arg(
        long,
        env = "KEEL_JOIN",
        value_name = "HOST:PORT,...",
        conflicts_with = "peers"
    )]
    pub join: Option<String>,
    /// Names the cluster (at bootstrap, part of the cluster id that peers
    /// check). A node with data refuses a name other than its cluster's.
    #[arg(long, env = "KEEL_CLUSTER_NAME")]
    pub cluster_name: Option<String>,
    /// The node that should lead the default log when it is caught up
    /// (DLedger's preferredLeaderId). Sets the log's replicated preference
    /// if it has none; `keel members prefer` changes it later.
    #[arg(long, env = "KEEL_PREFERRED_LEADER", value_name = "ID")]
    pub preferred_leader: Option<u64>,
    /// Largest record accepted, in bytes. [default: 1048576]
    #[arg(long, env = "KEEL_MAX_RECORD_BYTES")]
    pub max_record_bytes: Option<usize>,
    /// Client requests (appends, reads) served at once; more are answered
    /// RESOURCE_EXHAUSTED at once (a client retries). [default: 4096]
    #[arg(long, env = "KEEL_MAX_REQUESTS", value_name = "N")]
    pub max_requests: Option<usize>,
    /// Tail streams open at once; more are answered RESOURCE_EXHAUSTED.
    /// [default: 1024]
    #[arg(long, env = "KEEL_MAX_STREAMS", value_name = "N")]
    pub max_streams: Option<usize>,
    /// How long a request may wait for a quorum before it fails with
    /// UNAVAILABLE, in milliseconds. [default: 5000]
    #[arg(long, env = "KEEL_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// Raft tick, in milliseconds (heartbeat interval). [default: 50]
    #[arg(long, env = "KEEL_TICK_MS")]
    pub tick_ms: Option<u64>,
    /// Election timeout in ticks (randomized up to twice this). [default: 10]
    #[arg(long, env = "KEEL_ELECTION_TICKS")]
    pub election_ticks: Option<u32>,
    /// Threads that run the client API, the peer transport and the raft
    /// groups (each group's log store has its own writer thread besides).
    /// 0 picks one per two cores, at least one; with one, everything runs on
    /// a single thread, which saves the cross-thread wake-ups that cost
    /// most on small machines. [default: 0]
    #[arg(long, env = "KEEL_WORKER_THREADS", value_name = "N")]
    pub worker_threads: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PeersSpec {
    List(String),
    Table(BTreeMap<String, String>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    id: Option<u64>,
    data_dir: Option<PathBuf>,
    client_addr: Option<String>,
    peer_addr: Option<String>,
    metrics_addr: Option<String>,
    peers: Option<PeersSpec>,
    join: Option<String>,
    cluster_name: Option<String>,
    preferred_leader: Option<u64>,
    max_record_bytes: Option<usize>,
    max_requests: Option<usize>,
    max_streams: Option<usize>,
    request_timeout_ms: Option<u64>,
    tick_ms: Option<u64>,
    election_ticks: Option<u32>,
    worker_threads: Option<usize>,
    log_level: Option<String>,
}

/// The settings a node runs with, resolved and checked.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub id: u64,
    pub data_dir: PathBuf,
    pub client_addr: String,
    pub peer_addr: String,
    pub metrics_addr: Option<String>,
    /// Founding members, for a bootstrap (None: this node alone).
    pub peers: Option<BTreeMap<u64, String>>,
    /// Client addresses of a cluster to join.
    pub join: Option<Vec<String>>,
    pub cluster_name: Option<String>,
    pub preferred_leader: Option<u64>,
    pub max_record_bytes: usize,
    /// Client requests served at once.
    pub max_requests: usize,
    /// Tail streams open at once.
    pub max_streams: usize,
    pub request_timeout: Duration,
    pub tick: Duration,
    pub election_ticks: u32,
    /// Async worker threads (resolved: at least 1).
    pub worker_threads: usize,
    /// `log_level` from the file, if any (the binary decides).
    pub log_level: Option<String>,
}

/// Parses `1=host:port,2=host:port`.
pub fn parse_peers(s: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| format!("peer `{part}` is not ID=HOST:PORT"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("peer id `{id}` is not a number"))?;
        check_addr(addr.trim()).map_err(|e| format!("peer {id}: {e}"))?;
        if id == 0 {
            return Err("peer id 0 is reserved; ids start at 1".into());
        }
        if out.insert(id, addr.trim().to_string()).is_some() {
            return Err(format!("peer {id} is listed twice"));
        }
    }
    if out.is_empty() {
        return Err("the peer list is empty".into());
    }
    Ok(out)
}

const MAX_WORKER_THREADS: usize = 1024;

/// One worker thread per two cores, at least one.
pub fn default_worker_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() / 2)
        .unwrap_or(1)
        .max(1)
}

/// Checks `HOST:PORT` shape (the name is resolved when used).
pub fn check_addr(addr: &str) -> Result<(), String> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("address `{addr}` is not HOST:PORT"));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("address `{addr}` is not HOST:PORT"));
    }
    Ok(())
}

impl ServerConfig {
    pub fn resolve(args: &ServerArgs) -> Result<ServerConfig, StartError> {
        let bad = |s: String| StartError::Config(s);
        let file: FileConfig = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| bad(format!("cannot read config file {}: {e}", path.display())))?;
                toml::from_str(&text)
                    .map_err(|e| bad(format!("config file {}: {e}", path.display())))?
            }
            None => FileConfig::default(),
        };
        let id = args.id.or(file.id).unwrap_or(1);
        if id == 0 {
            return Err(bad("node id 0 is reserved; ids start at 1".into()));
        }
        let peers = match (&args.peers, file.peers) {
            (Some(s), _) => Some(parse_peers(s).map_err(|e| bad(format!("--peers: {e}")))?),
            (None, Some(PeersSpec::List(s))) => {
                Some(parse_peers(&s).map_err(|e| bad(format!("peers: {e}")))?)
            }
            (None, Some(PeersSpec::Table(t))) => {
                let s = t
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",");
                Some(parse_peers(&s).map_err(|e| bad(format!("[peers]: {e}")))?)
            }
            (None, None) => None,
        };
        let peer_addr = args
            .peer_addr
            .clone()
            .or(file.peer_addr)
            .or_else(|| peers.as_ref().and_then(|p| p.get(&id).cloned()))
            .unwrap_or_else(|| DEFAULT_PEER_ADDR.to_string());
        check_addr(&peer_addr).map_err(|e| bad(format!("--peer-addr: {e}")))?;
        if let Some(peers) = &peers
            && !peers.contains_key(&id)
        {
            return Err(bad(format!(
                "node {id} is not in --peers ({}); list every founding member, this node included",
                peers
                    .keys()
                    .map(|k| k.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let join = match args.join.clone().or(file.join) {
            None => None,
            Some(s) => {
                let list: Vec<String> = s
                    .split(',')
                    .map(|e| e.trim().to_string())
                    .filter(|e| !e.is_empty())
                    .collect();
                if list.is_empty() {
                    return Err(bad("--join needs at least one HOST:PORT".into()));
                }
                for e in &list {
                    check_addr(e).map_err(|e| bad(format!("--join: {e}")))?;
                }
                Some(list)
            }
        };
        if join.is_some() && peers.is_some() {
            return Err(bad(
                "--join joins an existing cluster and --peers bootstraps a new one; give one of them"
                    .into(),
            ));
        }
        let client_addr = args
            .client_addr
            .clone()
            .or(file.client_addr)
            .unwrap_or_else(|| DEFAULT_CLIENT_ADDR.to_string());
        check_addr(&client_addr).map_err(|e| bad(format!("--client-addr: {e}")))?;
        let metrics_addr = match args
            .metrics_addr
            .clone()
            .or(file.metrics_addr)
            .unwrap_or_else(|| DEFAULT_METRICS_ADDR.to_string())
        {
            s if s == "off" || s.is_empty() => None,
            s => {
                check_addr(&s).map_err(|e| bad(format!("--metrics-addr: {e}")))?;
                Some(s)
            }
        };
        let cluster_name = args.cluster_name.clone().or(file.cluster_name);
        let preferred_leader = args.preferred_leader.or(file.preferred_leader);
        if preferred_leader == Some(0) {
            return Err(bad("--preferred-leader 0 is not a node id".into()));
        }
        let max_record_bytes = args
            .max_record_bytes
            .or(file.max_record_bytes)
            .unwrap_or(DEFAULT_MAX_RECORD_BYTES);
        if max_record_bytes == 0 || max_record_bytes > 32 << 20 {
            return Err(bad(format!(
                "max_record_bytes {max_record_bytes} is outside 1 ..= 33554432"
            )));
        }
        let max_requests = args.max_requests.or(file.max_requests).unwrap_or(4096);
        let max_streams = args.max_streams.or(file.max_streams).unwrap_or(1024);
        for (name, v) in [("max_requests", max_requests), ("max_streams", max_streams)] {
            if v == 0 || v > 1 << 20 {
                return Err(bad(format!("{name} {v} is outside 1 ..= 1048576")));
            }
        }
        let tick_ms = args.tick_ms.or(file.tick_ms).unwrap_or(50);
        let election_ticks = args.election_ticks.or(file.election_ticks).unwrap_or(10);
        if tick_ms == 0 || election_ticks < 2 {
            return Err(bad("tick_ms must be >= 1 and election_ticks >= 2".into()));
        }
        let worker_threads = match args.worker_threads.or(file.worker_threads).unwrap_or(0) {
            0 => default_worker_threads(),
            n if n > MAX_WORKER_THREADS => {
                return Err(bad(format!(
                    "worker_threads {n} is more than {MAX_WORKER_THREADS}"
                )));
            }
            n => n,
        };
        let timeout_ms = args
            .request_timeout_ms
            .or(file.request_timeout_ms)
            .unwrap_or(5000);
        Ok(ServerConfig {
            id,
            data_dir: args
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            client_addr,
            peer_addr,
            metrics_addr,
            peers,
            join,
            cluster_name,
            preferred_leader,
            max_record_bytes,
            max_requests,
            max_streams,
            request_timeout: Duration::from_millis(timeout_ms.max(1)),
            tick: Duration::from_millis(tick_ms),
            election_ticks,
            worker_threads,
            log_level: file.log_level,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_a_single_node() {
        let c = ServerConfig::resolve(&ServerArgs::default()).unwrap();
        assert_eq!(c.id, 1);
        assert_eq!(c.client_addr, DEFAULT_CLIENT_ADDR);
        assert_eq!(c.peer_addr, DEFAULT_PEER_ADDR);
        assert!(c.peers.is_none(), "no flags: bootstrap this node alone");
        assert!(c.join.is_none());
        assert_eq!(c.data_dir, PathBuf::from("keel-data"));
        assert_eq!(c.worker_threads, default_worker_threads());
        assert!(c.worker_threads >= 1);
    }

    #[test]
    fn worker_threads_are_checked() {
        let with = |n| ServerArgs {
            worker_threads: Some(n),
            ..Default::default()
        };
        assert_eq!(ServerConfig::resolve(&with(3)).unwrap().worker_threads, 3);
        assert_eq!(
            ServerConfig::resolve(&with(0)).unwrap().worker_threads,
            default_worker_threads()
        );
        assert!(ServerConfig::resolve(&with(100_000)).is_err());
    }

    #[test]
    fn peers_are_checked() {
        assert!(parse_peers("1=a:1,2=b:2").is_ok());
        assert!(parse_peers("1=a:1,1=b:2").is_err());
        assert!(parse_peers("x=a:1").is_err());
        assert!(parse_peers("1=a").is_err());
        assert!(parse_peers("0=a:1").is_err());
        let args = ServerArgs {
            id: Some(4),
            peers: Some("1=a:1,2=b:2".into()),
            ..Default::default()
        };
        assert!(ServerConfig::resolve(&args).is_err());
        let both = ServerArgs {
            peers: Some("1=a:1".into()),
            join: Some("a:7070".into()),
            ..Default::default()
        };
        let e = ServerConfig::resolve(&both).unwrap_err().to_string();
        assert!(e.contains("give one of them"), "{e}");
        let join = ServerArgs {
            id: Some(4),
            join: Some("a:7070, b:7070".into()),
            ..Default::default()
        };
        assert_eq!(
            ServerConfig::resolve(&join).unwrap().join.unwrap(),
            vec!["a:7070".to_string(), "b:7070".to_string()]
        );
    }

    #[test]
    fn the_file_is_read_and_flags_win() {
        let dir = std::env::temp_dir().join(format!("keel-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("k.toml");
        std::fs::write(
            &f,
            "id = 2\nclient_addr = \"127.0.0.1:9000\"\n[peers]\n1 = \"h:1\"\n2 = \"h:2\"\n",
        )
        .unwrap();
        let args = ServerArgs {
            config: Some(f.clone()),
            client_addr: Some("127.0.0.1:9001".into()),
            ..Default::default()
        };
        let c = ServerConfig::resolve(&args).unwrap();
        assert_eq!(c.id, 2);
        assert_eq!(c.peer_addr, "h:2");
        assert_eq!(c.client_addr, "127.0.0.1:9001");
        std::fs::write(&f, "bogus = 1\n").unwrap();
        assert!(ServerConfig::resolve(&args).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
