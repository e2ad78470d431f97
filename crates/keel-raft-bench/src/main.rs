//! In-process benchmark of the consensus core.
//!
//! Three keel-raft nodes run in one process, each on its own OS thread with
//! a single-threaded tokio runtime (as separate processes would), owning its
//! raft instance and an inbox. Storage is in memory and "persists" at once;
//! the network is a channel send. Proposers are tasks on the leader's
//! runtime (where a server's request handlers would run) that each propose,
//! await the commit (applied on the leader), and propose again. This has the shape of
//! openraft's `benchmarks/minimal` (empty requests by default), so the
//! figures compare.
//!
//! Two modes: `entry` makes every proposal its own raft entry, as openraft
//! does; `coalesce` turns the proposals that reach the leader together into
//! one entry holding one record each, which is how keel's server batches
//! appends (each proposal still gets its own offset and its own
//! acknowledgement after commit).
//!
//! Prints proposals/s and the latency p50/p99/p999 per mode and proposer
//! count.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use clap::Parser;
use keel_raft::{
    BatchBuilder, Config, HardState, InitialState, MemStorage, Membership, Message, NodeId, Raft,
    Role, Storage,
};
use tokio::sync::{mpsc, oneshot};

/// Benchmark the consensus core in one process (no disk, no network).
#[derive(Parser, Debug)]
#[command(name = "keel-raft-bench")]
struct Args {
    /// Comma-separated proposer counts to run, one after another.
    #[arg(long, default_value = "1,64,1024", value_delimiter = ',')]
    clients: Vec<usize>,
    /// Seconds to measure each point (after a 0.3 s warm-up).
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Bytes of payload per proposal (openraft's minimal bench sends empty
    /// requests).
    #[arg(long, default_value_t = 0)]
    size: usize,
    /// Cluster members.
    #[arg(long, default_value_t = 3)]
    members: u64,
    /// `entry`: every proposal is its own raft entry. `coalesce`: proposals
    /// that reach the leader together share one entry, one record each.
    /// `both`: run each.
    #[arg(long, value_enum, default_value_t = Mode::Both)]
    mode: Mode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    Entry,
    Coalesce,
    Both,
}

enum Input {
    Msg(Message),
    Propose(Vec<u8>, oneshot::Sender<Instant>),
    Tick,
    Campaign,
    Status(oneshot::Sender<(Role, u64)>),
    Stop,
}

type Inbox = mpsc::UnboundedSender<Input>;

/// Keeps memory bounded: entries this far behind the applied index go.
const KEEP_ENTRIES: u64 = 50_000;

/// One node's loop: take everything queued, feed it to raft, then carry out
/// the Readies.
async fn run_node(
    mut raft: Raft<MemStorage>,
    mut rx: mpsc::UnboundedReceiver<Input>,
    peers: Vec<Inbox>,
    coalesce: bool,
) {
    let mut waiting: VecDeque<(u64, oneshot::Sender<Instant>)> = VecDeque::new();
    let mut inputs = Vec::with_capacity(1024);
    let mut records = BatchBuilder::new();
    let mut senders = Vec::new();
    loop {
        if rx.recv_many(&mut inputs, 4096).await == 0 {
            return;
        }
        for input in inputs.drain(..) {
            match input {
                Input::Msg(m) => {
                    let _ = raft.step(m);
                }
                Input::Propose(data, done) if coalesce => {
                    records.push(&data);
                    senders.push(done);
                }
                Input::Propose(data, done) => match raft.propose(BatchBuilder::single(&data), 0) {
                    Ok(p) => waiting.push_back((p.index, done)),
                    Err(_) => drop(done),
                },
                Input::Tick => raft.tick(),
                Input::Campaign => raft.start_election(),
                Input::Status(tx) => {
                    let _ = tx.send((raft.role(), raft.status().commit));
                }
                Input::Stop => return,
            }
        }
        if !senders.is_empty() {
            // Record i of the entry takes offset base_offset + i.
            if let Ok(p) = raft.propose(std::mem::take(&mut records), 0) {
                waiting.extend(senders.drain(..).map(|s| (p.index, s)));
            }
            senders.clear();
        }
        while raft.has_ready() {
            let rd = raft.ready().expect("in-memory storage does not fail");
            if let Some(id) = rd.persist_id {
                raft.storage_mut().append_owned(rd.entries);
                raft.on_persisted(id).expect("id was just issued");
            }
            for m in rd.messages {
                let _ = peers[(m.to - 1) as usize].send(Input::Msg(m));
            }
            if let Some(last) = rd.committed.last() {
                let applied = last.index();
                let now = Instant::now();
                while waiting.front().is_some_and(|(i, _)| *i <= applied) {
                    let (_, done) = waiting.pop_front().expect("front checked");
                    let _ = done.send(now);
                }
                let first = raft.storage().first_index();
                if applied > first + 2 * KEEP_ENTRIES {
                    let _ = raft.storage_mut().compact(applied - KEEP_ENTRIES);
                }
            }
        }
    }
}

struct Cluster {
    inboxes: Vec<Inbox>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Node 1's runtime, where the proposers run (next to the leader).
    leader_rt: tokio::runtime::Handle,
}

impl Cluster {
    /// Starts one OS thread per node, each with its own single-threaded
    /// runtime, and has node 1 campaign.
    fn start(members: u64, coalesce: bool) -> Cluster {
        let (txs, rxs): (Vec<Inbox>, Vec<_>) =
            (0..members).map(|_| mpsc::unbounded_channel()).unzip();
        let mut threads = Vec::new();
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        for (i, rx) in rxs.into_iter().enumerate() {
            let handle_tx = handle_tx.clone();
            let id = i as NodeId + 1;
            let peers = txs.clone();
            let me = txs[i].clone();
            threads.push(std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                let mut cfg = Config::new(id, 1);
                cfg.max_inflight_msgs = 512;
                cfg.max_msg_bytes = 4 << 20;
                let init = InitialState {
                    hard_state: HardState::default(),
                    membership: Membership::new(1..=members, []),
                    applied: 0,
                };
                let raft = Raft::new(cfg, MemStorage::new(), init, id).expect("valid config");
                if id == 1 {
                    let _ = handle_tx.send(rt.handle().clone());
                }
                rt.block_on(async move {
                    // Ticks every 100 ms: no election fires during a run.
                    tokio::spawn(async move {
                        let mut iv = tokio::time::interval(Duration::from_millis(100));
                        loop {
                            iv.tick().await;
                            if me.send(Input::Tick).is_err() {
                                return;
                            }
                        }
                    });
                    run_node(raft, rx, peers, coalesce).await;
                });
            }));
        }
        let _ = txs[0].send(Input::Campaign);
        let leader_rt = handle_rx.recv().expect("node 1 starts");
        Cluster {
            inboxes: txs,
            threads,
            leader_rt,
        }
    }

    async fn wait_for_leader(&self) {
        loop {
            let (tx, rx) = oneshot::channel();
            let _ = self.inboxes[0].send(Input::Status(tx));
            if let Ok((Role::Leader, commit)) = rx.await
                && commit >= 1
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn stop(self) {
        for tx in &self.inboxes {
            let _ = tx.send(Input::Stop);
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

struct Figures {
    ops: u64,
    lat_us: Vec<u32>,
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize] as f64
}

async fn measure(
    leader: Inbox,
    rt: tokio::runtime::Handle,
    clients: usize,
    secs: f64,
    size: usize,
) -> Figures {
    let measure_from = Instant::now() + Duration::from_millis(300);
    let end = measure_from + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let leader = leader.clone();
        tasks.push(rt.spawn(async move {
            let payload = vec![7u8; size];
            let mut lat = Vec::new();
            let mut ops = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let (tx, rx) = oneshot::channel();
                if leader.send(Input::Propose(payload.clone(), tx)).is_err() {
                    break;
                }
                let Ok(done) = rx.await else { break };
                if t0 >= measure_from && done <= end {
                    ops += 1;
                    lat.push(done.duration_since(t0).as_micros().min(u32::MAX as u128) as u32);
                }
            }
            (ops, lat)
        }));
    }
    let mut f = Figures {
        ops: 0,
        lat_us: Vec::new(),
    };
    for t in tasks {
        let (o, l) = t.await.expect("proposer task");
        f.ops += o;
        f.lat_us.extend(l);
    }
    f.lat_us.sort_unstable();
    f
}

fn main() {
    let args = Args::parse();
    if args.members == 0 || args.clients.contains(&0) || args.secs <= 0.0 {
        eprintln!("error: --members, --clients and --secs must be positive");
        std::process::exit(2);
    }
    // The measuring task runs here; proposers run on the leader's runtime.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    println!(
        "keel-raft in-process: {} nodes (a thread each), in-memory storage, no network, {} B payload, {:.1} s per point",
        args.members, args.size, args.secs
    );
    println!(
        "{:>9} {:>8} {:>14} {:>10} {:>10} {:>10}",
        "mode", "clients", "proposals/s", "p50 us", "p99 us", "p999 us"
    );
    let modes: &[(&str, bool)] = match args.mode {
        Mode::Entry => &[("entry", false)],
        Mode::Coalesce => &[("coalesce", true)],
        Mode::Both => &[("entry", false), ("coalesce", true)],
    };
    for &(name, coalesce) in modes {
        for &clients in &args.clients {
            let cluster = Cluster::start(args.members, coalesce);
            let f = rt.block_on(async {
                cluster.wait_for_leader().await;
                measure(
                    cluster.inboxes[0].clone(),
                    cluster.leader_rt.clone(),
                    clients,
                    args.secs,
                    args.size,
                )
                .await
            });
            cluster.stop();
            println!(
                "{:>9} {:>8} {:>14.0} {:>10.0} {:>10.0} {:>10.0}",
                name,
                clients,
                f.ops as f64 / args.secs,
                pct(&f.lat_us, 0.50),
                pct(&f.lat_us, 0.99),
                pct(&f.lat_us, 0.999)
            );
        }
    }
}
