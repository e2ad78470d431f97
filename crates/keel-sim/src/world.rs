//! The simulated world: nodes, network, clients and the nemesis, driven by
//! one event queue and one seeded RNG. Same seed, same run.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

use keel_raft::{
    BatchBuilder, Config, Error, Membership, Message, MessageBody, NONE, NodeId, ReadMode, Rng,
    Role,
};

use crate::history::{History, OpKind, Outcome};
use crate::invariants::Invariants;
use crate::node::{Disk, PendingOp, SimNode, encode_value};
use crate::options::{Bug, FaultMix, SimOptions};
use keel_raft::{ConfChangeOp, LaggingLearner, StateMachine, Storage};

/// A message body without its payloads, for traces.
fn short(b: &MessageBody) -> String {
    match b {
        MessageBody::Append(a) => format!(
            "prev ({}, {}) commit {} entries {}",
            a.prev_index,
            a.prev_term,
            a.commit,
            a.entries.len()
        ),
        MessageBody::Snapshot(c) => format!(
            "snapshot {} offset {} len {} done {}",
            c.meta.index,
            c.offset,
            c.data.len(),
            c.done
        ),
        other => format!("{other:?}"),
    }
}

/// Microseconds of simulated time per raft tick.
pub const TICK_US: u64 = 10_000;
const CLIENT_TIMEOUT_US: u64 = 1_000_000;
/// A run that needs more events than this is stuck in a message storm.
const EVENT_BUDGET: u64 = 20_000_000;

#[derive(Debug, Clone)]
enum Req {
    Append(u64),
    Read,
}

#[derive(Debug, Clone)]
enum Reply {
    Appended(u64),
    Failed,
    NotLeader(NodeId),
    Busy,
    Read { n: u64, hash: u64 },
    ReadFailed,
}

#[derive(Debug, Clone)]
enum Event {
    Tick(NodeId),
    Deliver(Message),
    PersistDone {
        node: NodeId,
        incarnation: u64,
        persist_id: u64,
    },
    Request {
        node: NodeId,
        op: PendingOp,
        req: Req,
    },
    Reply {
        op: PendingOp,
        reply: Reply,
    },
    ClientNext(usize),
    ClientTimeout(PendingOp),
    Nemesis,
    Restart(NodeId),
    Resume(NodeId),
    /// Crash this node if it still leads this term (churn).
    CrashLeader(NodeId, u64),
    /// The node snapshots its state machine and compacts its log.
    Snapshot(NodeId),
    Heal,
}

struct Scheduled {
    at: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// Where the Figure 8 nemesis is in its cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fig8 {
    /// Let the cluster run normally.
    Calm,
    /// Leader `l1` is cut off alone (taking entries it cannot commit);
    /// waiting for the others to elect a new leader.
    AwaitSecond { l1: NodeId },
    /// The second leader `l2` was cut off right after its election; `l1`
    /// is back with the rest, its own-term appends mostly lost.
    Return { l1: NodeId, l2: NodeId },
}

struct Client {
    target: NodeId,
    current: Option<usize>,
    next_value: u64,
    ok_after_heal: bool,
}

#[derive(Default)]
struct Network {
    cut: BTreeSet<(NodeId, NodeId)>,
    loss: f64,
    dup: f64,
    slow: f64,
    /// Often drop appends that carry entries of the sender's own term: new
    /// leaders' no-ops tend to be lost while older entries get through (the
    /// shape of Raft's Figure 8).
    drop_own_term: bool,
}

/// Figures from one run.
#[derive(Debug, Default, Clone)]
pub struct RunStats {
    pub events: u64,
    pub messages: u64,
    pub crashes: u64,
    pub leader_changes: u64,
    pub sim_ms: u64,
    pub recovery_ms: u64,
    pub counts: crate::history::Counts,
    pub log_len: usize,
}

pub struct World {
    opts: SimOptions,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    nodes: Vec<SimNode>,
    /// Nodes that exist: the first `opts.nodes` start as voters, the rest
    /// wait to be added (membership churn).
    pool: u64,
    net: Network,
    clients: Vec<Client>,
    pub history: History,
    pub inv: Invariants,
    healed_at: Option<u64>,
    fig8: Fig8,
    /// The last messages delivered, for livelock reports.
    recent: std::collections::VecDeque<String>,
    stats: RunStats,
    cfg_template: Config,
}

impl World {
    pub fn new(opts: SimOptions, seed: u64) -> World {
        let mut rng = Rng::new(seed ^ 0x005E_ED0F_4EE1);
        let n = opts.nodes as u64;
        let churn = matches!(opts.faults, FaultMix::Membership | FaultMix::Mixed);
        let pool = if churn { 7.max(n) } else { n };
        let boot = Membership::new(1..=n, []);
        // Vary the configuration by seed, within what is safe to vary.
        let mut tmpl = Config::new(1, 1);
        tmpl.election_tick = 10;
        tmpl.heartbeat_tick = 1;
        tmpl.max_inflight_msgs = [4, 64, 256][rng.range(0, 3) as usize];
        tmpl.max_msg_bytes = [64, 4096, 1 << 20][rng.range(0, 3) as usize];
        if opts.faults == FaultMix::Figure8 {
            // One entry per append, so old entries and a new no-op travel
            // (and get lost) separately.
            tmpl.max_msg_bytes = 64;
        }
        tmpl.max_inflight_bytes = [512, 1 << 20][rng.range(0, 2) as usize];
        tmpl.pre_vote = rng.chance(0.8);
        tmpl.check_quorum = rng.chance(0.8);
        // Lease reads assume bounded clock drift; pauses break that, so they
        // are only used where nodes are never paused.
        if tmpl.check_quorum
            && matches!(
                opts.faults,
                FaultMix::None | FaultMix::Lossy | FaultMix::Partition
            )
            && rng.chance(0.3)
        {
            tmpl.read_mode = ReadMode::Lease;
        }
        if rng.chance(0.3) {
            tmpl.preferred_leaders = vec![rng.range(1, n + 1)];
            tmpl.preferred_settle_ticks = 20;
        }
        // Snapshots in most churn seeds and half the others; without them a
        // restarted node rebuilds its configuration from the log alone.
        let snapshots = rng.chance(if churn { 0.7 } else { 0.5 });
        tmpl.compaction_keep_entries = [0, 5, 50][rng.range(0, 3) as usize];
        tmpl.snapshot_chunk_bytes = [64, 1024, 1 << 20][rng.range(0, 3) as usize];
        tmpl.learner_max_lag = [0, 16, 1000][rng.range(0, 3) as usize];
        match opts.bug {
            Some(Bug::CommitOldTerm) => tmpl.knobs.commit_old_term = true,
            Some(Bug::VoteWithoutLogCheck) => tmpl.knobs.vote_without_log_check = true,
            Some(Bug::AckBeforePersist) => tmpl.knobs.ack_before_persist = true,
            Some(Bug::ApplyConfAtCommit) => tmpl.knobs.apply_conf_at_commit = true,
            Some(Bug::SkipJoint) => tmpl.knobs.skip_joint = true,
            None => {}
        }
        let nodes = (1..=pool)
            .map(|id| {
                let mut c = tmpl.clone();
                c.id = id;
                let b = if id <= n {
                    boot.clone()
                } else {
                    Membership::default()
                };
                SimNode::new(id, c, b, Disk::default(), rng.next_u64(), &[0])
            })
            .collect();
        let clients = (0..opts.clients)
            .map(|i| Client {
                target: rng.range(1, n + 1),
                current: None,
                next_value: ((i as u64 + 1) << 40) | 1,
                ok_after_heal: false,
            })
            .collect();
        let mut w = World {
            opts,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            pool,
            net: Network::default(),
            clients,
            history: History::default(),
            inv: Invariants::new(),
            healed_at: None,
            fig8: Fig8::Calm,
            recent: std::collections::VecDeque::new(),
            stats: RunStats::default(),
            cfg_template: tmpl,
        };
        for id in 1..=pool {
            let phase = w.rng.range(0, TICK_US);
            w.schedule(phase, Event::Tick(id));
            if snapshots {
                let at = w.rng.range(100_000, 2_000_000);
                w.schedule(at, Event::Snapshot(id));
            }
        }
        for c in 0..w.clients.len() {
            let at = w.rng.range(0, 50_000);
            w.schedule(at, Event::ClientNext(c));
        }
        if w.opts.faults != FaultMix::None {
            w.schedule(300_000, Event::Nemesis);
        }
        let heal_at = w.opts.fault_ms * 1000;
        w.schedule(heal_at, Event::Heal);
        w
    }

    fn schedule(&mut self, delay: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at: self.now + delay,
            seq: self.seq,
            event,
        }));
    }

    fn node(&mut self, id: NodeId) -> &mut SimNode {
        &mut self.nodes[id as usize - 1]
    }

    fn trace(&self, what: impl FnOnce() -> String) {
        if self.opts.trace {
            eprintln!("{:>10}us {}", self.now, what());
        }
    }

    /// Runs until the liveness condition holds after healing, a violation is
    /// found, or the time bound passes. Returns the first violation.
    pub fn run(&mut self) -> Result<RunStats, String> {
        let deadline = (self.opts.fault_ms + self.opts.liveness_ms) * 1000;
        while let Some(Reverse(s)) = self.queue.pop() {
            self.now = s.at;
            if self.now > deadline {
                return Err(self.liveness_failure());
            }
            self.stats.events += 1;
            if self.stats.events > EVENT_BUDGET {
                let recent: Vec<&str> = self.recent.iter().map(String::as_str).collect();
                return Err(format!(
                    "livelock: more than {EVENT_BUDGET} events by {} simulated ms ({} messages sent); last delivered: {}",
                    self.now / 1000,
                    self.stats.messages,
                    recent.join(", ")
                ));
            }
            self.handle(s.event);
            if let Some(v) = &self.inv.violation {
                return Err(v.clone());
            }
            if self.live() {
                break;
            }
        }
        self.finish()
    }

    fn liveness_failure(&self) -> String {
        let leaders: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|n| n.up && n.raft.role() == Role::Leader)
            .map(|n| n.id)
            .collect();
        let waiting: Vec<usize> = (0..self.clients.len())
            .filter(|c| !self.clients[*c].ok_after_heal)
            .collect();
        let unresolved: usize = self.nodes.iter().map(|n| n.pending_at_heal.len()).sum();
        format!(
            "liveness: {} ms after healing, leaders {leaders:?}; clients without a new acknowledged append {waiting:?}; {unresolved} proposals pending at healing still unresolved",
            self.opts.liveness_ms
        )
    }

    /// After healing: a leader, every client's new append acknowledged, and
    /// every proposal any node accepted resolved (committed or overwritten).
    fn live(&self) -> bool {
        if self.healed_at.is_none() || !self.clients.iter().all(|c| c.ok_after_heal) {
            return false;
        }
        let Some(l) = self.leader() else { return false };
        // A node removed from the group hears nothing more, so its pending
        // proposals stay unresolved there (their clients time out).
        let members = self.nodes[l as usize - 1].raft.membership();
        self.nodes
            .iter()
            .filter(|n| n.member_of(members))
            .all(|n| n.pending_at_heal.is_empty())
    }

    fn finish(&mut self) -> Result<RunStats, String> {
        // Let every node catch up before the final comparison.
        let log = self.inv.log.clone();
        let mut hashes = Vec::with_capacity(log.len());
        let mut h = 0;
        for v in &log {
            h = crate::node::mix(h, *v);
            hashes.push(h);
        }
        self.history
            .check(&log, |n| if n == 0 { 0 } else { hashes[n - 1] })?;
        self.stats.sim_ms = self.now / 1000;
        self.stats.recovery_ms = self.healed_at.map(|t| (self.now - t) / 1000).unwrap_or(0);
        self.stats.counts = self.history.counts();
        self.stats.leader_changes = self.inv.leader_changes;
        self.stats.log_len = log.len();
        Ok(self.stats.clone())
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Tick(id) => self.on_tick(id),
            Event::Deliver(m) => self.on_deliver(m),
            Event::PersistDone {
                node,
                incarnation,
                persist_id,
            } => self.on_persist_done(node, incarnation, persist_id),
            Event::Request { node, op, req } => self.on_request(node, op, req),
            Event::Reply { op, reply } => self.on_reply(op, reply),
            Event::ClientNext(c) => self.client_next(c),
            Event::ClientTimeout(op) => self.on_client_timeout(op),
            Event::Nemesis => self.nemesis(),
            Event::Restart(id) => self.restart(id),
            Event::Resume(id) => {
                self.node(id).paused = false;
                self.trace(|| format!("node {id} resumed"));
            }
            Event::CrashLeader(id, term) => {
                let n = &self.nodes[id as usize - 1];
                if self.healed_at.is_none()
                    && n.up
                    && n.raft.role() == Role::Leader
                    && n.raft.term() == term
                {
                    let after = self.rng.range(5_000, 300_000);
                    self.crash(id, after);
                }
            }
            Event::Snapshot(id) => self.take_snapshot(id),
            Event::Heal => self.heal(),
        }
    }

    /// Events for a paused node wait until it resumes.
    fn deferred(&mut self, id: NodeId, event: &Event) -> bool {
        let n = &self.nodes[id as usize - 1];
        if n.paused {
            let e = event.clone();
            self.schedule(TICK_US, e);
            return true;
        }
        false
    }

    fn on_tick(&mut self, id: NodeId) {
        let up = self.nodes[id as usize - 1].up;
        if up && !self.nodes[id as usize - 1].paused {
            self.node(id).raft.tick();
            self.process(id);
        }
        self.schedule(TICK_US, Event::Tick(id));
    }

    fn on_deliver(&mut self, m: Message) {
        let to = m.to;
        if self.net.cut.contains(&(m.from, to)) {
            return; // a partition also drops what was in flight
        }
        if !self.nodes[to as usize - 1].up {
            return;
        }
        if self.deferred(to, &Event::Deliver(m.clone())) {
            return;
        }
        if self.stats.events + 12 > EVENT_BUDGET {
            if self.recent.len() == 12 {
                self.recent.pop_front();
            }
            let what = format!("{} {}->{} t{}", m.body.kind(), m.from, m.to, m.term);
            self.recent.push_back(what);
        }
        if self.opts.trace_messages {
            self.trace(|| {
                format!(
                    "deliver {} {}->{} t{}: {:?}",
                    m.body.kind(),
                    m.from,
                    m.to,
                    m.term,
                    short(&m.body)
                )
            });
        }
        // Errors are refusals of bad input; the core stays consistent.
        let _ = self.node(to).raft.step(m);
        self.process(to);
    }

    fn on_persist_done(&mut self, id: NodeId, incarnation: u64, persist_id: u64) {
        let n = &self.nodes[id as usize - 1];
        if !n.up || n.incarnation != incarnation {
            return;
        }
        if self.deferred(
            id,
            &Event::PersistDone {
                node: id,
                incarnation,
                persist_id,
            },
        ) {
            return;
        }
        let node = self.node(id);
        node.disk.complete(persist_id);
        if let Err(e) = node.raft.on_persisted(persist_id) {
            self.inv.violation.get_or_insert(format!("node {id}: {e}"));
        }
        self.process(id);
    }

    fn send(&mut self, m: Message) {
        self.stats.messages += 1;
        // Every message crosses the wire codec, as it would between servers.
        let wire = keel_raft::codec::encode_to_bytes(&m);
        let m = match keel_raft::codec::decode(wire) {
            Ok(back) if back == m => back,
            Ok(_) => {
                self.inv
                    .violation
                    .get_or_insert(format!("codec changed a {} message", m.body.kind()));
                return;
            }
            Err(e) => {
                self.inv.violation.get_or_insert(format!(
                    "codec refused its own {} message: {e}",
                    m.body.kind()
                ));
                return;
            }
        };
        if self.net.cut.contains(&(m.from, m.to)) || self.rng.chance(self.net.loss) {
            return;
        }
        if self.net.drop_own_term
            && let MessageBody::Append(a) = &m.body
            && a.entries.iter().any(|e| e.term() == m.term)
            && self.rng.chance(0.8)
        {
            return;
        }
        let copies = if self.rng.chance(self.net.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let mut delay = self.rng.range(100, 2_000);
            if self.rng.chance(self.net.slow) {
                delay += self.rng.range(5_000, 80_000);
            }
            self.schedule(delay, Event::Deliver(m.clone()));
        }
    }

    fn reply(&mut self, op: PendingOp, reply: Reply) {
        let delay = self.rng.range(100, 1_000);
        self.schedule(delay, Event::Reply { op, reply });
    }

    /// Carries out every Ready of node `id`, checking invariants as it goes.
    fn process(&mut self, id: NodeId) {
        let idx = id as usize - 1;
        loop {
            if !self.nodes[idx].raft.has_ready() {
                break;
            }
            let rd = match self.nodes[idx].raft.ready() {
                Ok(rd) => rd,
                Err(e) => {
                    self.inv
                        .violation
                        .get_or_insert(format!("node {id}: ready failed: {e}"));
                    return;
                }
            };
            if let Some(ss) = rd.soft_state
                && ss.role == Role::Leader
            {
                let n = &self.nodes[idx];
                self.inv.on_leader(n, ss.term);
                self.trace(|| format!("node {id} leads term {}", ss.term));
                self.fig8_on_leader(id);
                if self.opts.faults == FaultMix::Leaders
                    && self.healed_at.is_none()
                    && self.rng.chance(0.3)
                {
                    // Cut a fresh term short, before its no-op spreads.
                    let after = self.rng.range(500, 40_000);
                    self.schedule(after, Event::CrashLeader(id, ss.term));
                }
            }
            let node = &mut self.nodes[idx];
            for c in rd.snapshot_chunks {
                if c.offset == 0 {
                    node.staged.clear();
                }
                if c.offset as usize != node.staged.len() {
                    let what = format!(
                        "node {id} was handed snapshot chunk at {} with {} staged",
                        c.offset,
                        node.staged.len()
                    );
                    self.inv.violation.get_or_insert(what);
                    return;
                }
                node.staged.extend_from_slice(&c.data);
            }
            let mut install = None;
            if let Some(meta) = rd.install_snapshot {
                let data = bytes::Bytes::from(std::mem::take(&mut node.staged));
                if let Err(e) = node.app.restore(&meta, data.clone()) {
                    self.inv.violation.get_or_insert(format!("node {id}: {e}"));
                    return;
                }
                node.raft
                    .storage_mut()
                    .reset_to_snapshot(meta.clone(), data.clone());
                // Proposals this node made up to the snapshot point: their
                // fate is inside the snapshot, unknown here.
                let keep = node.proposals.split_off(&(meta.index + 1));
                node.proposals = keep;
                node.pending_at_heal.retain(|i| *i > meta.index);
                let chain = self.inv.committed_chain();
                node.chain = chain[..=(meta.index as usize).min(chain.len() - 1)].to_vec();
                let app = node.app.clone();
                self.inv.on_install(id, &meta, &app);
                self.trace(|| format!("node {id} installs a snapshot at {}", meta.index));
                install = Some((meta, data));
            }
            if let Some(pid) = rd.persist_id {
                let node = &mut self.nodes[idx];
                node.raft.storage_mut().append(&rd.entries);
                let written = node.extend_chain(&rd.entries);
                node.disk.inflight.push_back(crate::node::InflightWrite {
                    persist_id: pid,
                    install,
                    hard_state: rd.hard_state,
                    entries: rd.entries,
                });
                let incarnation = node.incarnation;
                let start = self.now.max(node.disk_busy_until);
                let latency = if node.disk_slow {
                    self.rng.range(5_000, 60_000)
                } else {
                    self.rng.range(50, 3_000)
                };
                let done = start + latency;
                self.nodes[idx].disk_busy_until = done;
                self.inv.on_written(id, &written);
                let delay = done - self.now;
                self.schedule(
                    delay,
                    Event::PersistDone {
                        node: id,
                        incarnation,
                        persist_id: pid,
                    },
                );
            }
            for m in rd.messages {
                self.send(m);
            }
            for e in &rd.committed {
                self.inv.on_apply(id, e);
                let node = &mut self.nodes[idx];
                if let Err(err) = node.app.apply(e) {
                    self.inv
                        .violation
                        .get_or_insert(format!("node {id}: {err}"));
                    return;
                }
                node.pending_at_heal.remove(&e.index());
                let app = node.app.clone();
                self.inv.check_state(id, &app, "applying");
                let node = &mut self.nodes[idx];
                if let Some((term, op)) = node.proposals.remove(&e.index()) {
                    let reply = if term == e.term() {
                        Reply::Appended(e.base_offset())
                    } else {
                        Reply::Failed
                    };
                    self.reply(op, reply);
                }
            }
            for rs in rd.read_states {
                let node = &mut self.nodes[idx];
                if let Some(op) = node.reads.remove(&rs.ctx) {
                    node.confirmed_reads.push((rs.index, op));
                }
            }
            for ctx in rd.failed_reads {
                if let Some(op) = self.nodes[idx].reads.remove(&ctx) {
                    self.reply(op, Reply::ReadFailed);
                }
            }
        }
        // Serve reads that are applied far enough.
        let node = &mut self.nodes[idx];
        let applied = node.app.applied;
        let n = node.app.values.len();
        let hash = node.app.hash_of_prefix(n);
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut node.confirmed_reads)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        node.confirmed_reads = waiting;
        for (_, op) in ready {
            self.reply(op, Reply::Read { n: n as u64, hash });
        }
        // Monotonicity within this life, and the committed chain.
        let st = self.nodes[idx].raft.status();
        let node = &self.nodes[idx];
        if st.term < node.last_term || st.commit < node.last_commit {
            let what = format!(
                "node {id}: term or commit moved back ({} -> {}, {} -> {})",
                node.last_term, st.term, node.last_commit, st.commit
            );
            self.inv.violation.get_or_insert(what);
        }
        if st.commit > node.last_commit {
            self.inv.on_commit(node, st.term, st.commit);
        }
        let node = &mut self.nodes[idx];
        node.last_term = st.term;
        node.last_commit = st.commit;
    }

    // -------------------------------------------------------------- clients

    fn client_next(&mut self, c: usize) {
        if self.clients[c].current.is_some() {
            return;
        }
        let read = self.rng.chance(0.25);
        let kind = if read {
            OpKind::Read
        } else {
            let v = self.clients[c].next_value;
            self.clients[c].next_value += 1;
            OpKind::Append(v)
        };
        let op = self.history.invoke(c, kind, self.now);
        self.clients[c].current = Some(op);
        let pending = PendingOp { client: c, op };
        self.schedule(CLIENT_TIMEOUT_US, Event::ClientTimeout(pending));
        self.send_request(pending, 0);
    }

    fn send_request(&mut self, op: PendingOp, extra_delay: u64) {
        let target = self.clients[op.client].target;
        let req = match self.history.ops[op.op].kind {
            OpKind::Append(v) => Req::Append(v),
            OpKind::Read => Req::Read,
        };
        let delay = extra_delay + self.rng.range(100, 1_000);
        self.schedule(
            delay,
            Event::Request {
                node: target,
                op,
                req,
            },
        );
    }

    fn on_request(&mut self, id: NodeId, op: PendingOp, req: Req) {
        if !self.nodes[id as usize - 1].up {
            return; // the client times out
        }
        if self.deferred(
            id,
            &Event::Request {
                node: id,
                op,
                req: req.clone(),
            },
        ) {
            return;
        }
        let now_ms = self.now / 1000;
        match req {
            Req::Append(v) => {
                let node = self.node(id);
                match node
                    .raft
                    .propose(BatchBuilder::single(&encode_value(v)), now_ms)
                {
                    Ok(p) => {
                        // An older proposal at this index was cut from this
                        // node's log; its fate is unknown here (the client
                        // times out), so it no longer counts as pending.
                        node.proposals.insert(p.index, (p.term, op));
                        node.pending_at_heal.remove(&p.index);
                    }
                    Err(Error::NotLeader { leader }) => self.reply(op, Reply::NotLeader(leader)),
                    Err(_) => self.reply(op, Reply::Busy),
                }
            }
            Req::Read => {
                let ctx = ((op.client as u64) << 40) | op.op as u64;
                let node = self.node(id);
                match node.raft.read_index(ctx) {
                    Ok(()) => {
                        node.reads.insert(ctx, op);
                    }
                    Err(Error::NotLeader { leader }) => self.reply(op, Reply::NotLeader(leader)),
                    Err(_) => self.reply(op, Reply::Busy),
                }
            }
        }
        self.process(id);
    }

    fn on_reply(&mut self, op: PendingOp, reply: Reply) {
        if self.clients[op.client].current != Some(op.op) {
            return; // timed out already
        }
        let n = self.pool;
        let outcome = match reply {
            Reply::NotLeader(leader) => {
                // Refused before proposing: safe to retry the same value.
                let c = &mut self.clients[op.client];
                c.target = if leader != NONE {
                    leader
                } else {
                    self.rng.range(1, n + 1)
                };
                let backoff = if leader == NONE { 20_000 } else { 0 };
                self.send_request(op, backoff);
                return;
            }
            Reply::Busy => {
                self.send_request(op, 10_000);
                return;
            }
            Reply::Appended(offset) => Outcome::Appended(offset),
            Reply::Failed | Reply::ReadFailed => Outcome::Failed,
            Reply::Read { n, hash } => Outcome::Read { n, hash },
        };
        self.finish_op(op, outcome);
    }

    fn on_client_timeout(&mut self, op: PendingOp) {
        if self.clients[op.client].current != Some(op.op) {
            return;
        }
        let outcome = match self.history.ops[op.op].kind {
            OpKind::Append(_) => Outcome::Unknown,
            OpKind::Read => Outcome::Failed,
        };
        let n = self.pool;
        self.clients[op.client].target = self.rng.range(1, n + 1);
        self.finish_op(op, outcome);
    }

    fn finish_op(&mut self, op: PendingOp, outcome: Outcome) {
        self.history.complete(op.op, outcome, self.now);
        let rec = &self.history.ops[op.op];
        if let (Some(healed), Outcome::Appended(_)) = (self.healed_at, outcome)
            && rec.invoke >= healed
        {
            self.clients[op.client].ok_after_heal = true;
        }
        self.clients[op.client].current = None;
        let think = self.rng.range(0, 5_000);
        self.schedule(think, Event::ClientNext(op.client));
    }

    // -------------------------------------------------------------- faults

    fn crash(&mut self, id: NodeId, restart_after: u64) {
        let idx = id as usize - 1;
        if !self.nodes[idx].up {
            return;
        }
        self.stats.crashes += 1;
        let mut rng = self.rng.fork();
        let node = &mut self.nodes[idx];
        node.up = false;
        node.paused = false;
        node.disk.crash(&mut rng);
        node.proposals.clear();
        node.reads.clear();
        node.confirmed_reads.clear();
        self.trace(|| format!("node {id} crashed"));
        self.schedule(restart_after, Event::Restart(id));
    }

    fn restart(&mut self, id: NodeId) {
        let idx = id as usize - 1;
        if self.nodes[idx].up {
            return;
        }
        let mut cfg = self.cfg_template.clone();
        cfg.id = id;
        let disk = std::mem::take(&mut self.nodes[idx].disk);
        let incarnation = self.nodes[idx].incarnation + 1;
        let seed = self.rng.next_u64();
        let boot = self.nodes[idx].boot.clone();
        let mut node = SimNode::new(id, cfg, boot, disk, seed, self.inv.committed_chain());
        node.incarnation = incarnation;
        self.nodes[idx] = node;
        // The restarted node's chain must agree with what others hold.
        let chain = self.nodes[idx].chain.clone();
        let all = self.nodes[idx].raft.storage().all().to_vec();
        let triples: Vec<_> = all
            .iter()
            .map(|e| (e.index(), e.term(), chain[e.index() as usize]))
            .collect();
        self.inv.on_written(id, &triples);
        let app = self.nodes[idx].app.clone();
        self.inv.check_state(id, &app, "a restart");
        self.trace(|| format!("node {id} restarted"));
        self.process(id);
    }

    fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter(|n| n.up && n.raft.role() == Role::Leader)
            .max_by_key(|n| n.raft.term())
            .map(|n| n.id)
    }

    fn random_node(&mut self) -> NodeId {
        self.rng.range(1, self.pool + 1)
    }

    fn partition(&mut self, groups: &[Vec<NodeId>]) {
        self.net.cut.clear();
        let n = self.pool;
        for a in 1..=n {
            for b in 1..=n {
                let together = groups.iter().any(|g| g.contains(&a) && g.contains(&b));
                if a != b && !together {
                    self.net.cut.insert((a, b));
                }
            }
        }
    }

    fn nemesis(&mut self) {
        if self.healed_at.is_some() {
            return;
        }
        let mix = self.opts.faults;
        let pick = self.rng.range(0, 100);
        match mix {
            FaultMix::None => {}
            FaultMix::Lossy => self.lossy(),
            FaultMix::Partition => self.partition_fault(pick),
            FaultMix::Crash => self.crash_fault(pick),
            FaultMix::Leaders => self.leaders_fault(pick),
            FaultMix::Figure8 => self.fig8_step(),
            FaultMix::Membership => match self.rng.range(0, 7) {
                0..=2 => self.membership_change(),
                3 => self.lossy(),
                4 => self.partition_fault(pick),
                5 => self.crash_outsiders(),
                _ => self.crash_fault(pick),
            },
            FaultMix::Mixed => match self.rng.range(0, 6) {
                0 => self.lossy(),
                1 => self.partition_fault(pick),
                2 => self.crash_fault(pick),
                3 => self.leaders_fault(pick),
                4 => self.membership_change(),
                _ => {
                    if let Some(l) = self.leader() {
                        let to = self.random_node();
                        let _ = self.node(l).raft.transfer_leader(to);
                        self.trace(|| format!("transfer {l} -> {to}"));
                        self.process(l);
                    }
                }
            },
        }
        let next = if mix == FaultMix::Leaders || mix == FaultMix::Figure8 {
            self.rng.range(30_000, 400_000)
        } else {
            self.rng.range(100_000, 1_500_000)
        };
        self.schedule(next, Event::Nemesis);
    }

    /// A membership change on the current leader, keeping 3 to 7 voters.
    fn membership_change(&mut self) {
        let Some(l) = self.leader() else { return };
        let m = self.nodes[l as usize - 1].raft.membership().clone();
        if m.is_joint() {
            return;
        }
        let voters: Vec<NodeId> = m.voters.iter().copied().collect();
        let learners: Vec<NodeId> = m
            .learners
            .iter()
            .copied()
            .filter(|x| !m.voters.contains(x))
            .collect();
        let outside: Vec<NodeId> = (1..=self.pool).filter(|x| !m.is_member(*x)).collect();
        let pick = |rng: &mut Rng, v: &[NodeId]| v[rng.range(0, v.len() as u64) as usize];
        let mut ops = Vec::new();
        match self.rng.range(0, 6) {
            0 if !outside.is_empty() => {
                ops.push(ConfChangeOp::AddLearner(pick(&mut self.rng, &outside)))
            }
            1 if !learners.is_empty() && voters.len() < 7 => {
                ops.push(ConfChangeOp::AddVoter(pick(&mut self.rng, &learners)))
            }
            2 if voters.len() > 3 => {
                let v = if self.rng.chance(0.5) {
                    l
                } else {
                    pick(&mut self.rng, &voters)
                };
                ops.push(ConfChangeOp::Remove(v));
            }
            3 => {
                // Replace one or two voters at once (new ones from the
                // learners or from outside the group).
                let k = self.rng.range(1, 3) as usize;
                let mut fresh: Vec<NodeId> =
                    learners.iter().chain(outside.iter()).copied().collect();
                for i in 0..k.min(voters.len()).min(fresh.len()) {
                    let j = self.rng.range(i as u64, fresh.len() as u64) as usize;
                    fresh.swap(i, j);
                    ops.push(ConfChangeOp::AddVoter(fresh[i]));
                    ops.push(ConfChangeOp::Remove(pick(&mut self.rng, &voters)));
                }
            }
            4 if voters.len() > 3 => {
                ops.push(ConfChangeOp::AddLearner(pick(&mut self.rng, &voters)))
            }
            5 if !learners.is_empty() => {
                ops.push(ConfChangeOp::Remove(pick(&mut self.rng, &learners)))
            }
            _ => return,
        }
        let policy = if self.rng.chance(0.5) {
            LaggingLearner::Wait
        } else {
            LaggingLearner::Refuse
        };
        let now_ms = self.now / 1000;
        let r = self.node(l).raft.propose_conf_change(&ops, policy, now_ms);
        self.trace(|| format!("membership change on {l}: {ops:?} -> {r:?}"));
        self.process(l);
    }

    /// Crash and restart the nodes that are not voters of the leader's
    /// configuration (removed ones still run): they come back knowing only
    /// what they persisted.
    fn crash_outsiders(&mut self) {
        let Some(l) = self.leader() else { return };
        let m = self.nodes[l as usize - 1].raft.membership().clone();
        for id in 1..=self.pool {
            if !m.is_voter(id) && self.rng.chance(0.7) {
                let after = self.rng.range(10_000, 300_000);
                self.crash(id, after);
            }
        }
    }

    /// A node snapshots its state machine at its applied index, keeps the
    /// snapshot durably, and compacts its log (keeping some entries).
    fn take_snapshot(&mut self, id: NodeId) {
        let next = self.rng.range(200_000, 2_000_000);
        self.schedule(next, Event::Snapshot(id));
        let node = &mut self.nodes[id as usize - 1];
        if !node.up || node.paused {
            return;
        }
        let applied = node.app.applied;
        let current = node.raft.storage().snapshot().map(|s| s.index).unwrap_or(0);
        if applied <= current {
            return;
        }
        let Ok(mut meta) = node.raft.snapshot_meta(applied) else {
            return;
        };
        let data = node
            .app
            .snapshot()
            .expect("the simulator's state snapshots");
        meta.size = data.len() as u64;
        let upto = node.raft.compaction_point(applied);
        for log in [node.raft.storage_mut(), &mut node.disk.log] {
            log.set_snapshot(meta.clone(), data.clone());
            if upto > log.first_index() {
                let _ = log.compact(upto);
            }
        }
        self.trace(|| format!("node {id} snapshots at {applied}, compacts to {upto}"));
    }

    fn lossy(&mut self) {
        self.net.loss = [0.0, 0.01, 0.05, 0.2][self.rng.range(0, 4) as usize];
        self.net.dup = [0.0, 0.02, 0.1][self.rng.range(0, 3) as usize];
        self.net.slow = [0.0, 0.05, 0.2][self.rng.range(0, 3) as usize];
        let (l, d, s) = (self.net.loss, self.net.dup, self.net.slow);
        self.trace(|| format!("network loss {l} dup {d} slow {s}"));
    }

    fn partition_fault(&mut self, pick: u64) {
        let n = self.pool;
        let mut ids: Vec<NodeId> = (1..=n).collect();
        match pick {
            0..=24 => {
                self.net.cut.clear();
                self.trace(|| "network healed".into());
            }
            25..=44 => {
                // Random halves.
                for i in (1..ids.len()).rev() {
                    let j = self.rng.range(0, i as u64 + 1) as usize;
                    ids.swap(i, j);
                }
                let k = self.rng.range(1, n) as usize;
                let (a, b) = ids.split_at(k);
                let groups = vec![a.to_vec(), b.to_vec()];
                self.trace(|| format!("partition {groups:?}"));
                self.partition(&groups);
            }
            45..=64 => {
                // The leader alone.
                if let Some(l) = self.leader() {
                    let rest: Vec<NodeId> = ids.iter().copied().filter(|i| *i != l).collect();
                    self.trace(|| format!("isolate leader {l}"));
                    self.partition(&[vec![l], rest]);
                }
            }
            65..=79 => {
                // A one-way cut.
                let a = self.random_node();
                let b = self.random_node();
                if a != b {
                    self.net.cut.insert((a, b));
                    self.trace(|| format!("one-way cut {a} -> {b}"));
                }
            }
            80..=89 => {
                // A bridge: two sides that only one node connects.
                let bridge = self.random_node();
                let others: Vec<NodeId> = ids.iter().copied().filter(|i| *i != bridge).collect();
                let half = others.len() / 2;
                let mut a = others[..half].to_vec();
                let mut b = others[half..].to_vec();
                a.push(bridge);
                b.push(bridge);
                self.trace(|| format!("bridge via {bridge}: {a:?} {b:?}"));
                self.partition(&[a, b]);
            }
            _ => {
                // Majorities ring: each node hears the nodes within r steps
                // around a ring, enough to make a majority with itself, and
                // no two nodes hear the same majority.
                self.net.cut.clear();
                let r = (n / 2).div_ceil(2);
                for a in 1..=n {
                    for b in 1..=n {
                        let d = (a + n - b) % n;
                        if a != b && d.min(n - d) > r {
                            self.net.cut.insert((a, b));
                        }
                    }
                }
                self.trace(|| "majorities ring".into());
            }
        }
    }

    fn crash_fault(&mut self, pick: u64) {
        let n = self.pool;
        match pick {
            0..=34 => {
                let id = self.random_node();
                let after = self.rng.range(20_000, 1_500_000);
                self.crash(id, after);
            }
            35..=54 => {
                if let Some(l) = self.leader() {
                    let after = self.rng.range(20_000, 1_000_000);
                    self.crash(l, after);
                }
            }
            55..=69 => {
                // A minority or a majority at once.
                let k = self.rng.range(1, n / 2 + 2);
                for _ in 0..k {
                    let id = self.random_node();
                    let after = self.rng.range(20_000, 1_000_000);
                    self.crash(id, after);
                }
            }
            70..=77 => {
                // Every node at once.
                for id in 1..=n {
                    let after = self.rng.range(20_000, 500_000);
                    self.crash(id, after);
                }
            }
            78..=87 => {
                // A disk turns slow (or fast again): more is in flight at
                // the moment of the next crash.
                let id = self.random_node();
                let slow = self.rng.chance(0.6);
                self.node(id).disk_slow = slow;
                self.trace(|| format!("disk of node {id} slow: {slow}"));
            }
            _ => {
                // Pause (SIGSTOP) a node, often the leader.
                let id = match self.leader() {
                    Some(l) if self.rng.chance(0.5) => l,
                    _ => self.random_node(),
                };
                let idx = id as usize - 1;
                if self.nodes[idx].up && !self.nodes[idx].paused {
                    self.nodes[idx].paused = true;
                    let after = self.rng.range(50_000, 2_000_000);
                    self.trace(|| format!("pause node {id}"));
                    self.schedule(after, Event::Resume(id));
                }
            }
        }
    }

    /// Leader churn: the leader is crashed, or cut off together with at most
    /// a minority that keeps taking its entries, or the network heals; disks
    /// turn slow and fast.
    fn leaders_fault(&mut self, pick: u64) {
        let n = self.pool;
        match pick {
            0..=29 => {
                if let Some(l) = self.leader() {
                    let after = self.rng.range(10_000, 400_000);
                    self.crash(l, after);
                }
            }
            30..=59 => {
                if let Some(l) = self.leader() {
                    let mut side = vec![l];
                    let extra = self.rng.range(0, (n - 1) / 2 + 1);
                    while (side.len() as u64) < 1 + extra {
                        let id = self.random_node();
                        if !side.contains(&id) {
                            side.push(id);
                        }
                    }
                    let rest: Vec<NodeId> = (1..=n).filter(|i| !side.contains(i)).collect();
                    self.trace(|| format!("cut leader off with {side:?}"));
                    self.partition(&[side, rest]);
                }
            }
            60..=74 => {
                self.net.cut.clear();
                self.net.drop_own_term = false;
                self.trace(|| "network healed".into());
            }
            75..=84 => {
                self.net.drop_own_term = !self.net.drop_own_term;
                let on = self.net.drop_own_term;
                self.trace(|| format!("drop appends of the sender's own term: {on}"));
            }
            _ => {
                let id = self.random_node();
                let slow = self.rng.chance(0.5);
                self.node(id).disk_slow = slow;
                self.trace(|| format!("disk of node {id} slow: {slow}"));
            }
        }
    }

    /// One step of the Figure 8 cycle (see [`Fig8`]).
    fn fig8_step(&mut self) {
        let n = self.pool;
        match self.fig8 {
            Fig8::Calm => {
                if let Some(l1) = self.leader() {
                    let rest: Vec<NodeId> = (1..=n).filter(|i| *i != l1).collect();
                    self.trace(|| format!("figure 8: cut off leader {l1}"));
                    self.partition(&[vec![l1], rest]);
                    self.fig8 = Fig8::AwaitSecond { l1 };
                }
            }
            Fig8::AwaitSecond { .. } => {} // moved on by the next election
            Fig8::Return { l1, l2 } => {
                // Swap: l1 alone, l2 back with the rest.
                let rest: Vec<NodeId> = (1..=n).filter(|i| *i != l1).collect();
                self.trace(|| format!("figure 8: cut off {l1}, {l2} rejoins"));
                self.partition(&[vec![l1], rest]);
                self.net.drop_own_term = false;
                self.fig8 = Fig8::Calm;
                let _ = l2;
            }
        }
    }

    fn fig8_on_leader(&mut self, id: NodeId) {
        if self.opts.faults != FaultMix::Figure8 || self.healed_at.is_some() {
            return;
        }
        if let Fig8::AwaitSecond { l1 } = self.fig8
            && id != l1
        {
            // Cut the new leader off at once: its no-op stays with it.
            let n = self.pool;
            let rest: Vec<NodeId> = (1..=n).filter(|i| *i != id).collect();
            self.trace(|| format!("figure 8: cut off new leader {id}, {l1} returns"));
            self.partition(&[vec![id], rest]);
            self.net.drop_own_term = true;
            self.fig8 = Fig8::Return { l1, l2: id };
        }
    }

    fn heal(&mut self) {
        self.healed_at = Some(self.now);
        self.net = Network::default();
        self.trace(|| "heal: network whole, every node up".into());
        for id in 1..=self.pool {
            self.node(id).paused = false;
            self.node(id).disk_slow = false;
            self.restart(id);
            let node = self.node(id);
            node.pending_at_heal = node.proposals.keys().copied().collect();
        }
    }
}
