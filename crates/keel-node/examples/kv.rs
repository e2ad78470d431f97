//! A replicated key-value store on keel-node: a state machine over a
//! `BTreeMap<String, String>`, one raft group, and a line protocol for
//! clients. Each process is one node; of three, any two keep serving.
//!
//! ```text
//! PUT key value  ->  OK <offset>           once committed on a majority
//! DEL key        ->  OK <offset>
//! GET key        ->  VALUE <value> | NONE  linearizable, on any node
//! (a follower)   ->  REDIRECT <host:port>  the leader's client address
//! (a failure)    ->  ERR <why>
//! ```
//!
//! Build it, then start three nodes, one terminal each:
//!
//! ```text
//! cargo build -p keel-node --example kv
//! P=1=127.0.0.1:7101,2=127.0.0.1:7201,3=127.0.0.1:7301
//! target/debug/examples/kv --id 1 --data-dir /tmp/kv1 --peer 127.0.0.1:7101 --listen 127.0.0.1:7100 --peers $P
//! target/debug/examples/kv --id 2 --data-dir /tmp/kv2 --peer 127.0.0.1:7201 --listen 127.0.0.1:7200 --peers $P
//! target/debug/examples/kv --id 3 --data-dir /tmp/kv3 --peer 127.0.0.1:7301 --listen 127.0.0.1:7300 --peers $P
//! ```
//!
//! and talk to any of them: `nc 127.0.0.1 7100`, `PUT greeting hello`,
//! `GET greeting`. Kill the leader (`kill -9`): the other two elect a new
//! one within a second or two. Start it again with the same command: it
//! restores its latest snapshot, replays its log and catches up from the
//! leader (from a snapshot, if the leader compacted what it missed). The
//! first start bootstraps the cluster from `--peers`; later starts read
//! the configuration from the data directory.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use keel_node::{
    Command, CoreSettings, Group, GroupError, GroupOptions, LogOptions, Node, NodeConfig,
    SnapshotMeta, SnapshotPolicy, SnapshotWriter, StateMachine,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// The replicated state. Commands travel through the log as text:
/// `P key value` or `D key` (keys have no spaces).
#[derive(Default)]
struct Kv {
    map: BTreeMap<String, String>,
}

impl StateMachine for Kv {
    /// The command's offset in the log.
    type Response = u64;

    fn apply(&mut self, cmd: Command<'_>) -> u64 {
        // Deterministic: every node applies the same commands in the same
        // order. Only `handle` below proposes, so every command is valid.
        let text = String::from_utf8_lossy(cmd.data);
        match text.splitn(3, ' ').collect::<Vec<_>>()[..] {
            ["P", key, value] => drop(self.map.insert(key.into(), value.into())),
            ["D", key] => drop(self.map.remove(key)),
            _ => {}
        }
        cmd.offset
    }

    fn snapshot(&mut self) -> SnapshotWriter {
        // The writer runs on another thread while the group goes on
        // applying: it gets its own copy. One `key value` line per entry
        // (keys have no spaces, values no line breaks).
        let map = self.map.clone();
        Box::new(move |w: &mut dyn Write| map.iter().try_for_each(|(k, v)| writeln!(w, "{k} {v}")))
    }

    fn restore(&mut self, _meta: &SnapshotMeta, data: &mut dyn Read) -> io::Result<()> {
        let mut text = String::new();
        data.read_to_string(&mut text)?;
        self.map.clear();
        for line in text.lines() {
            let bad = || io::Error::new(io::ErrorKind::InvalidData, "not a kv snapshot");
            let (k, v) = line.split_once(' ').ok_or_else(bad)?;
            self.map.insert(k.into(), v.into());
        }
        Ok(())
    }
}

/// Answers one client request (one line).
async fn handle(group: &Group<Kv>, line: &str) -> String {
    let ok = |offset| format!("OK {offset}");
    let reply = match line.splitn(3, ' ').collect::<Vec<_>>()[..] {
        ["PUT", key, value] => group
            .propose(format!("P {key} {value}").into())
            .await
            .map(ok),
        ["DEL", key] => group.propose(format!("D {key}").into()).await.map(ok),
        ["GET", key] => {
            let key = key.to_string();
            let value = group.read(move |kv| kv.map.get(&key).cloned()).await;
            value.map(|v| v.map_or("NONE".into(), |v| format!("VALUE {v}")))
        }
        _ => Ok("ERR usage: PUT key value | DEL key | GET key".into()),
    };
    match reply {
        Ok(reply) => reply,
        // The leader announced its client address to its peers.
        Err(GroupError::NotLeader { leader }) => match group.client_addr(leader) {
            Some(addr) => format!("REDIRECT {addr}"),
            None => "ERR no leader right now; retry shortly".into(),
        },
        Err(e) => format!("ERR {e}"),
    }
}

async fn serve(socket: TcpStream, group: Group<Kv>) {
    let (r, mut w) = socket.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let reply = handle(&group, line.trim_end()).await;
        if w.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
            break;
        }
    }
}

const USAGE: &str =
    "usage: kv --id N --data-dir DIR --peer HOST:PORT --listen HOST:PORT --peers 1=HOST:PORT,2=...";

/// The value given to `--name` on the command line.
fn flag(name: &str) -> Result<String, String> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| *a == format!("--{name}"));
    at.and_then(|i| args.get(i + 1))
        .cloned()
        .ok_or(format!("missing --{name}\n{USAGE}"))
}

/// `--peers 1=HOST:PORT,2=HOST:PORT,...`: the founding members.
fn peers() -> Result<BTreeMap<u64, String>, String> {
    let list = flag("peers")?;
    list.split(',')
        .map(|p| {
            let bad = || format!("--peers: `{p}` is not ID=HOST:PORT");
            let (id, addr) = p.split_once('=').ok_or_else(bad)?;
            Ok((id.parse().map_err(|_| bad())?, addr.to_string()))
        })
        .collect()
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let id = flag("id")?.parse().map_err(|_| "--id: not a number")?;
    let listen = flag("listen")?;
    let clients = TcpListener::bind(&listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let node = Node::start(NodeConfig {
        client_addr: listen.clone(), // announced to peers: redirects name it
        peers: Some(peers()?),       // read when bootstrapping only
        ..NodeConfig::new(id, flag("data-dir")?, flag("peer")?)
    })
    .await?;
    // Snapshot every 50 entries and compact the log behind it (keeping 20
    // entries; compaction drops whole segments, so they are small here): a
    // node that falls behind catches up from a snapshot.
    let options = GroupOptions {
        settings: CoreSettings {
            snapshot: SnapshotPolicy {
                entries: 50,
                ..Default::default()
            },
            ..Default::default()
        },
        log: LogOptions {
            segment_bytes: 16 << 10,
            ..Default::default()
        },
        raft: Some(Box::new(|raft| raft.compaction_keep_entries = 20)),
    };
    let group = node.open_group(0, Kv::default(), options).await?;
    println!("kv node {id} serving clients on {listen}");
    let accept = async {
        loop {
            match clients.accept().await {
                Ok((socket, _)) => drop(tokio::spawn(serve(socket, group.clone()))),
                Err(e) => eprintln!("kv: accepting a client: {e}"),
            }
        }
    };
    tokio::select! {
        _ = accept => {}
        _ = tokio::signal::ctrl_c() => println!("stopping"),
    }
    node.shutdown().await;
    Ok(())
}

#[tokio::main]
async fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    if let Err(e) = run().await {
        eprintln!("kv: {e}");
        std::process::exit(1);
    }
}
