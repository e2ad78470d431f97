//! The simulated world: nodes, network, clients and the nemesis, driven by
//! one event queue and one seeded RNG. Same seed, same run.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

use bytes::Bytes;
use keel_node::core::{Answer, Event as CoreEvent, Output, Token, WriteOutcome};
use keel_node::{ChangeRequest, CoreSettings, GroupError, MemberChange, SnapshotPolicy, Watermark};
use keel_raft::{
    Config, Membership, Message, MessageBody, NONE, NodeId, ReadMode, Rng, Role, Storage,
};

use crate::history::{History, OpKind, Outcome};
use crate::invariants::Invariants;
use crate::node::{Disk, InflightWrite, PendingOp, Request, SimNode, encode_value, member_info};
use crate::options::{Bug, FaultMix, SimOptions};

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
    /// The outcome of an append is unknown (ambiguous, or timed out).
    Unknown,
    NotLeader(NodeId),
    Busy,
    Read {
        n: u64,
        hash: u64,
    },
    ReadFailed,
}

#[derive(Debug, Clone)]
enum Event {
    Tick(NodeId),
    /// Boxed: events move around the queue's heap, most are small.
    Deliver(Box<Message>),
    PersistDone {
        node: NodeId,
        incarnation: u64,
        id: u64,
    },
    /// The applied mark write in flight is durable.
    MarkDone {
        node: NodeId,
        incarnation: u64,
        mark: Watermark,
    },
    /// The snapshot being written is done.
    SnapshotDone {
        node: NodeId,
        incarnation: u64,
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
    /// The node is asked to snapshot now (besides the core's policy).
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
    /// Membership changes answered with success, with an error.
    pub changes_ok: u64,
    pub changes_failed: u64,
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
    settings: CoreSettings,
    /// Tokens of requests to the cores, from one counter.
    next_token: Token,
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
        // Snapshots in most churn seeds and half the others (by the core's
        // policy, every few entries, and now and then on request); without
        // them a restarted node rebuilds its configuration from the log
        // alone.
        let snapshots = rng.chance(if churn { 0.7 } else { 0.5 });
        tmpl.compaction_keep_entries = [0, 5, 50][rng.range(0, 3) as usize];
        tmpl.snapshot_chunk_bytes = [64, 1024, 1 << 20][rng.range(0, 3) as usize];
        // Every few entries, whatever the chunk size: a leader holds off its
        // policy snapshots while a follower is sent one (a new snapshot
        // would restart the transfer), so even a transfer of many small
        // chunks finishes.
        let entries = rng.range(5, 200);
        let settings = CoreSettings {
            max_entry_bytes: [64, 4 << 20][rng.range(0, 2) as usize],
            snapshot: SnapshotPolicy {
                entries: if snapshots { entries } else { 0 },
                bytes: 0,
                compact: true,
            },
            disk_full_retry_ticks: 10,
            record_applied: true,
        };
        tmpl.learner_max_lag = [0, 16, 1000][rng.range(0, 3) as usize];
        match opts.bug {
            Some(Bug::CommitOldTerm) => tmpl.knobs.commit_old_term = true,
            Some(Bug::VoteWithoutLogCheck) => tmpl.knobs.vote_without_log_check = true,
            Some(Bug::AckBeforePersist) => tmpl.knobs.ack_before_persist = true,
            Some(Bug::ApplyConfAtCommit) => tmpl.knobs.apply_conf_at_commit = true,
            Some(Bug::SkipJoint) => tmpl.knobs.skip_joint = true,
            None => {}
        }
        // Founding members hold the bootstrap entry, as the server writes it;
        // the others start empty, as a joining node does.
        let nodes: Vec<SimNode> = (1..=pool)
            .map(|id| {
                let mut c = tmpl.clone();
                c.id = id;
                let disk = if id <= n {
                    Disk::bootstrap(&boot)
                } else {
                    Disk::default()
                };
                SimNode::new(id, c, settings.clone(), disk, rng.next_u64(), &[0])
                    .expect("a fresh node starts")
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
            settings,
            next_token: 0,
        };
        for id in 1..=pool {
            let idx = id as usize - 1;
            let all = w.nodes[idx].core.raft().storage().all().to_vec();
            let triples: Vec<_> = all
                .iter()
                .map(|e| (e.index(), e.term(), w.nodes[idx].chain[e.index() as usize]))
                .collect();
            w.inv.on_written(id, &triples);
        }
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
            .filter(|n| n.up && n.core.raft().role() == Role::Leader)
            .map(|n| n.id)
            .collect();
        let waiting: Vec<usize> = (0..self.clients.len())
            .filter(|c| !self.clients[*c].ok_after_heal)
            .collect();
        let unresolved: usize = self.nodes.iter().map(|n| n.pending_at_heal.len()).sum();
        if self.opts.trace {
            for n in &self.nodes {
                let st = n.core.status();
                eprintln!(
                    "node {} pending {:?}: role {:?} term {} commit {} persisted {} applied {:?} served {:?} last {} failed {:?} voters {:?} inflight {}",
                    n.id,
                    n.pending_at_heal,
                    st.raft.role,
                    st.raft.term,
                    st.raft.commit,
                    st.raft.persisted,
                    st.applied,
                    st.served,
                    st.raft.last_index,
                    st.failed,
                    st.membership.voters,
                    n.disk.inflight.len(),
                );
            }
        }
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
        let members = self.nodes[l as usize - 1].core.raft().membership();
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
            Event::Deliver(m) => self.on_deliver(*m),
            Event::PersistDone {
                node,
                incarnation,
                id,
            } => self.on_persist_done(node, incarnation, id),
            Event::MarkDone {
                node,
                incarnation,
                mark,
            } => self.on_mark_done(node, incarnation, mark),
            Event::SnapshotDone { node, incarnation } => self.on_snapshot_done(node, incarnation),
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
                    && n.core.raft().role() == Role::Leader
                    && n.core.raft().term() == term
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
            self.node(id).core.tick();
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
        if self.deferred(to, &Event::Deliver(Box::new(m.clone()))) {
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
        // The first message from a peer in this life stands for its
        // handshake, which announces its member info.
        let from = m.from;
        let node = self.node(to);
        if node.observed.insert(from) {
            node.core.observe(from, member_info(from));
        }
        // Errors are refusals of bad input; the core stays consistent.
        let _ = node.core.step(m);
        self.process(to);
    }

    fn on_persist_done(&mut self, node: NodeId, incarnation: u64, id: u64) {
        let n = &self.nodes[node as usize - 1];
        if !n.up || n.incarnation != incarnation {
            return;
        }
        if self.deferred(
            node,
            &Event::PersistDone {
                node,
                incarnation,
                id,
            },
        ) {
            return;
        }
        let now = self.now;
        let n = self.node(node);
        if now < n.disk_full_until {
            if n.disk.inflight.front().is_some_and(|w| w.id <= id)
                && let Some(refused) = n.disk.refuse()
            {
                // What raft reads is what the store holds.
                *n.core.storage_mut() = n.disk.log.clone();
                n.no_space = true;
                n.core.write_done(
                    refused,
                    WriteOutcome::NoSpace("no space left on the simulated disk".into()),
                );
                self.trace(|| format!("node {node}: no space for write {refused}"));
            }
        } else {
            for done in n.disk.complete(id) {
                n.core.write_done(done, WriteOutcome::Done);
            }
        }
        self.process(node);
    }

    fn on_mark_done(&mut self, node: NodeId, incarnation: u64, mark: Watermark) {
        let n = &self.nodes[node as usize - 1];
        if !n.up || n.incarnation != incarnation {
            return;
        }
        if self.deferred(
            node,
            &Event::MarkDone {
                node,
                incarnation,
                mark,
            },
        ) {
            return;
        }
        let n = self.node(node);
        n.mark_in_flight = None;
        if mark.index < n.disk.mark.index {
            // The mark file refuses to go back; the server's group stops.
            let what = format!(
                "node {node} asked to lower its applied mark from {} to {}",
                n.disk.mark.index, mark.index
            );
            self.inv.violation.get_or_insert(what);
            return;
        }
        n.disk.mark = mark;
        n.core.mark_done(mark, true);
        self.trace(|| {
            format!(
                "node {node} mark {} (offset {}) durable",
                mark.index, mark.end_offset
            )
        });
        self.process(node);
    }

    fn on_snapshot_done(&mut self, node: NodeId, incarnation: u64) {
        let n = &self.nodes[node as usize - 1];
        if !n.up || n.incarnation != incarnation {
            return;
        }
        if self.deferred(node, &Event::SnapshotDone { node, incarnation }) {
            return;
        }
        let now = self.now;
        let n = self.node(node);
        let Some(job) = n.snapshot_job.take() else {
            return;
        };
        let index = job.meta.index;
        let r = if now < n.disk_full_until {
            Err("no space left on the simulated disk".into())
        } else {
            n.write_snapshot(job)
        };
        let what = format!("node {node} snapshot at {index}: {r:?}");
        n.core.snapshot_done(index, r);
        self.trace(|| what);
        self.process(node);
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
            self.schedule(delay, Event::Deliver(Box::new(m.clone())));
        }
    }

    fn reply(&mut self, op: PendingOp, reply: Reply) {
        let delay = self.rng.range(100, 1_000);
        self.schedule(delay, Event::Reply { op, reply });
    }

    /// Polls node `id`'s core and carries out its output, as the server's
    /// runtime does, until there is nothing left; checks invariants as it
    /// goes.
    fn process(&mut self, id: NodeId) {
        let idx = id as usize - 1;
        for _ in 0..10_000 {
            if !self.nodes[idx].up {
                return;
            }
            let now_ms = self.now / 1000;
            let out = self.nodes[idx].core.poll(now_ms);
            if out.is_empty() {
                self.after_output(id);
                return;
            }
            self.execute(id, out);
            if self.inv.violation.is_some() {
                return;
            }
        }
        self.inv
            .violation
            .get_or_insert(format!("node {id}: the core never ran out of output"));
    }

    /// Carries out one output, following the core's contract (see
    /// `keel_node::core`).
    fn execute(&mut self, id: NodeId, out: Output<u64>) {
        let idx = id as usize - 1;
        let Output {
            chunks,
            install,
            writes,
            messages,
            done,
            mark,
            snapshot,
            compact,
            served,
            events,
            applied,
        } = out;
        for ev in &events {
            match ev {
                CoreEvent::Role(ss) if ss.role == Role::Leader => {
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
                CoreEvent::Role(_) => {}
                CoreEvent::Membership(m) => {
                    self.trace(|| {
                        format!(
                            "node {id} configuration: voters {:?} outgoing {:?} learners {:?}",
                            m.voters, m.outgoing, m.learners
                        )
                    });
                }
                CoreEvent::Removed => self.trace(|| format!("node {id} was removed")),
                CoreEvent::Committed(_) => {}
            }
        }
        // Every entry applied, in order, then the state they left.
        for e in &applied {
            self.inv.on_apply(id, e);
        }
        if !applied.is_empty() {
            self.check_app(id, "applying");
        }
        let node = &mut self.nodes[idx];
        for c in chunks {
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
        if let Some(meta) = install {
            if let Some(w) = writes
                .iter()
                .take_while(|w| w.install.is_none())
                .find(|w| !w.entries.is_empty())
            {
                let what = format!(
                    "node {id}: write {} (entries from {}) comes before the install at {} in one output: resetting the log first loses it",
                    w.id,
                    w.entries[0].index(),
                    meta.index
                );
                self.inv.violation.get_or_insert(what);
                return;
            }
            let data = Bytes::from(std::mem::take(&mut node.staged));
            if let Err(e) = node.core.restore(&meta, &mut data.as_ref()) {
                self.inv
                    .violation
                    .get_or_insert(format!("node {id} could not restore a snapshot: {e}"));
                return;
            }
            node.core
                .storage_mut()
                .reset_to_snapshot(meta.clone(), data.clone());
            let chain = self.inv.committed_chain();
            if meta.index as usize >= chain.len() {
                let what = format!(
                    "node {id} installed a snapshot at {} beyond the committed log ({})",
                    meta.index,
                    chain.len() - 1
                );
                self.inv.violation.get_or_insert(what);
                return;
            }
            node.chain = chain[..=meta.index as usize].to_vec();
            let n = &self.nodes[idx];
            self.inv.on_install(id, &meta, n.app());
            self.trace(|| format!("node {id} installs a snapshot at {}", meta.index));
            let node = &mut self.nodes[idx];
            node.last_install = Some(meta.index);
            if writes
                .iter()
                .any(|w| w.install.as_ref().is_some_and(|m| m.index == meta.index))
            {
                node.install_pending = Some((meta, data));
            } else {
                // Its write waits (the disk is full): the snapshot and the
                // log reset are durable now, as the server makes them.
                node.disk.install(&meta, &data);
                node.install_pending = None;
            }
        }
        for w in writes {
            let node = &mut self.nodes[idx];
            if let Some(first) = w.entries.first() {
                // An append replaces the log from its first entry on: that
                // entry must follow an entry the log holds (or the snapshot).
                let log = node.core.raft().storage();
                let (start, last) = (log.first_index(), log.last_index());
                if first.index() < start || first.index() > last + 1 {
                    let what = format!(
                        "node {id}: write {} appends entries {}..={} to a log holding {start}..={last}",
                        w.id,
                        first.index(),
                        w.entries.last().map_or(0, |e| e.index())
                    );
                    self.inv.violation.get_or_insert(what);
                    return;
                }
            }
            let install = match &w.install {
                None => None,
                Some(m) => match node.install_pending.take() {
                    Some((meta, data)) if meta.index == m.index => Some((meta, data)),
                    other => {
                        node.install_pending = other;
                        if node.last_install != Some(m.index) {
                            let what = format!(
                                "node {id}: write {} installs snapshot {} that was not handed out for installation first",
                                w.id, m.index
                            );
                            self.inv.violation.get_or_insert(what);
                            return;
                        }
                        // Handed out again after a refusal for space: the
                        // install is durable already.
                        None
                    }
                },
            };
            node.core.storage_mut().append(&w.entries);
            let written = node.extend_chain(&w.entries);
            node.disk.inflight.push_back(InflightWrite {
                id: w.id,
                install,
                hard_state: w.hard_state,
                entries: w.entries,
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
            self.schedule(
                done - self.now,
                Event::PersistDone {
                    node: id,
                    incarnation,
                    id: w.id,
                },
            );
        }
        for m in messages {
            self.send(m);
        }
        for (token, r) in done {
            self.on_done(id, token, r);
        }
        let incarnation = self.nodes[idx].incarnation;
        if let Some(w) = mark {
            if self.nodes[idx].mark_in_flight.is_some() {
                self.inv.violation.get_or_insert(format!(
                    "node {id} asked for a mark write while one is in flight"
                ));
                return;
            }
            self.nodes[idx].mark_in_flight = Some(w);
            let latency = if self.nodes[idx].disk_slow {
                self.rng.range(5_000, 60_000)
            } else {
                self.rng.range(50, 3_000)
            };
            self.schedule(
                latency,
                Event::MarkDone {
                    node: id,
                    incarnation,
                    mark: w,
                },
            );
        }
        if let Some(job) = snapshot {
            if self.nodes[idx].snapshot_job.is_some() {
                self.inv.violation.get_or_insert(format!(
                    "node {id} asked for a snapshot while one is being written"
                ));
                return;
            }
            self.trace(|| format!("node {id} snapshots at {}", job.meta.index));
            self.nodes[idx].snapshot_job = Some(job);
            let latency = self.rng.range(1_000, 100_000);
            self.schedule(
                latency,
                Event::SnapshotDone {
                    node: id,
                    incarnation,
                },
            );
        }
        if let Some(upto) = compact {
            let node = &mut self.nodes[idx];
            if let Err(e) = node.core.storage_mut().compact(upto) {
                let what = format!("node {id} was asked to compact up to {upto}: {e}");
                self.inv.violation.get_or_insert(what);
                return;
            }
            // The disk may not hold that far yet (writes in flight): the
            // next compaction takes it.
            let _ = node.disk.log.compact(upto);
            self.trace(|| format!("node {id} compacts up to {upto}"));
        }
        if let Some(w) = served {
            self.check_served(id, w);
        }
    }

    /// A node's state machine must hold a prefix of the committed log, and
    /// have kept its contract.
    fn check_app(&mut self, id: NodeId, what: &str) {
        let n = &self.nodes[id as usize - 1];
        if let Some(e) = &n.app().error {
            let what = format!("node {id}: {e}");
            self.inv.violation.get_or_insert(what);
            return;
        }
        self.inv.check_state(id, n.app(), what);
    }

    /// What a node serves never goes back (across restarts too) and never
    /// passes the committed log.
    fn check_served(&mut self, id: NodeId, w: Watermark) {
        let idx = id as usize - 1;
        let before = self.nodes[idx].served;
        if w.index < before.index || w.end_offset < before.end_offset {
            let what = format!(
                "node {id} serves less than it did: index {} offset {} after index {} offset {}",
                w.index, w.end_offset, before.index, before.end_offset
            );
            self.inv.violation.get_or_insert(what);
            return;
        }
        if w.index > self.inv.committed_index() || w.end_offset > self.inv.log.len() as u64 {
            let what = format!(
                "node {id} serves up to index {} offset {}, past the committed log (index {}, {} records)",
                w.index,
                w.end_offset,
                self.inv.committed_index(),
                self.inv.log.len()
            );
            self.inv.violation.get_or_insert(what);
            return;
        }
        self.nodes[idx].served = w;
    }

    /// After the core has nothing more to do: monotonicity within this
    /// life, the committed chain, what is served.
    fn after_output(&mut self, id: NodeId) {
        let idx = id as usize - 1;
        let st = self.nodes[idx].core.raft().status();
        let node = &self.nodes[idx];
        if st.term < node.last_term || st.commit < node.last_commit {
            let what = format!(
                "node {id}: term or commit moved back ({} -> {}, {} -> {})",
                node.last_term, st.term, node.last_commit, st.commit
            );
            self.inv.violation.get_or_insert(what);
        }
        // While writes wait for disk space, raft's log holds entries the
        // core has not handed out (nor the chain recorded): only what is
        // durable is checked until they are.
        let deferring = node.no_space && node.core.status().disk_full.is_some();
        let commit = if deferring {
            st.commit.min(st.persisted)
        } else {
            st.commit
        };
        if commit > node.last_commit {
            self.inv.on_commit(node, st.term, commit);
        }
        let node = &mut self.nodes[idx];
        node.last_term = st.term;
        node.last_commit = node.last_commit.max(commit);
        node.no_space &= deferring;
        let served = node.core.served();
        if served != node.served {
            self.check_served(id, served);
        }
    }

    /// A request's answer from node `id`'s core.
    fn on_done(&mut self, id: NodeId, token: Token, r: Result<Answer<u64>, GroupError>) {
        let node = self.node(id);
        let Some(req) = node.requests.remove(&token) else {
            let what = format!("node {id} answered token {token}, which is not waiting: {r:?}");
            self.inv.violation.get_or_insert(what);
            return;
        };
        node.pending_at_heal.remove(&token);
        match req {
            Request::Append(op) => {
                let reply = match r {
                    Ok(Answer::Applied(v)) if v.len() == 1 => Reply::Appended(v[0]),
                    Err(GroupError::NotLeader { leader }) => Reply::NotLeader(leader),
                    Err(GroupError::LostLeadership) => Reply::Failed,
                    Err(GroupError::Ambiguous(_) | GroupError::TimedOut(_)) => Reply::Unknown,
                    Err(GroupError::Busy(_) | GroupError::DiskFull(_)) => Reply::Busy,
                    other => {
                        let what = format!("node {id} answered an append with {other:?}");
                        self.inv.violation.get_or_insert(what);
                        return;
                    }
                };
                self.reply(op, reply);
            }
            Request::Read(op) => {
                let reply = match r {
                    Ok(Answer::ReadReady) => {
                        let app = node.app();
                        let n = app.values.len();
                        Reply::Read {
                            n: n as u64,
                            hash: app.hash_of_prefix(n),
                        }
                    }
                    Err(GroupError::NotLeader { leader }) => Reply::NotLeader(leader),
                    Err(GroupError::Busy(_)) => Reply::Busy,
                    Err(
                        GroupError::TimedOut(_)
                        | GroupError::Ambiguous(_)
                        | GroupError::LostLeadership,
                    ) => Reply::ReadFailed,
                    other => {
                        let what = format!("node {id} answered a read with {other:?}");
                        self.inv.violation.get_or_insert(what);
                        return;
                    }
                };
                self.reply(op, reply);
            }
            Request::Change(changes) => {
                match &r {
                    Ok(Answer::Membership(m)) => {
                        self.stats.changes_ok += 1;
                        // A change answered done is in force.
                        let missing = changes.iter().find(|c| match c {
                            MemberChange::AddLearner { id, .. } => !m.is_member(*id),
                            MemberChange::AddVoter { id, .. } | MemberChange::Promote(id) => {
                                !m.is_voter(*id)
                            }
                            MemberChange::Demote(id) => m.is_voter(*id) || !m.is_learner(*id),
                            MemberChange::Remove(id) => m.is_member(*id),
                        });
                        if m.is_joint() || missing.is_some() {
                            let what = format!(
                                "node {id} answered the membership change {changes:?} done with a configuration that does not hold it ({missing:?}): {m:?}"
                            );
                            self.inv.violation.get_or_insert(what);
                            return;
                        }
                    }
                    Ok(other) => {
                        let what = format!("node {id} answered a membership change with {other:?}");
                        self.inv.violation.get_or_insert(what);
                        return;
                    }
                    Err(_) => self.stats.changes_failed += 1,
                }
                self.trace(|| format!("node {id}: membership change {changes:?}: {r:?}"));
            }
            Request::Command => {
                if let Ok(a) = &r
                    && !matches!(a, Answer::Done)
                {
                    let what = format!("node {id} answered a command with {a:?}");
                    self.inv.violation.get_or_insert(what);
                    return;
                }
                self.trace(|| format!("node {id}: command: {r:?}"));
            }
            Request::Transfer(to) => {
                self.trace(|| format!("node {id}: transfer to {to}: {r:?}"));
            }
        }
    }

    fn token(&mut self) -> Token {
        self.next_token += 1;
        self.next_token
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
        let token = self.token();
        let node = self.node(id);
        match req {
            Req::Append(v) => {
                node.requests.insert(token, Request::Append(op));
                node.core
                    .propose(token, &[Bytes::copy_from_slice(&encode_value(v))]);
            }
            Req::Read => {
                node.requests.insert(token, Request::Read(op));
                node.core.read(token);
            }
        }
        // Often leave the poll to the node's next event, so that proposals
        // arriving together share an entry.
        if self.rng.chance(0.5) {
            self.process(id);
        }
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
            Reply::Unknown => Outcome::Unknown,
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
        // A mark or snapshot write may have reached the disk without the
        // core being told.
        if let Some(w) = node.mark_in_flight.take()
            && rng.chance(0.5)
            && w.index >= node.disk.mark.index
        {
            node.disk.mark = w;
        }
        if let Some(job) = node.snapshot_job.take()
            && rng.chance(0.5)
        {
            let _ = node.write_snapshot(job);
        }
        node.requests.clear();
        node.staged.clear();
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
        let served = self.nodes[idx].served;
        let seed = self.rng.next_u64();
        let settings = self.settings.clone();
        let mut node = match SimNode::new(id, cfg, settings, disk, seed, self.inv.committed_chain())
        {
            Ok(n) => n,
            Err(e) => {
                self.inv.violation.get_or_insert(e);
                return;
            }
        };
        node.incarnation = incarnation;
        node.served = served;
        self.nodes[idx] = node;
        // The restarted node's chain must agree with what others hold.
        let n = &self.nodes[idx];
        let triples: Vec<_> = n
            .core
            .raft()
            .storage()
            .all()
            .iter()
            .map(|e| (e.index(), e.term(), n.chain[e.index() as usize]))
            .collect();
        self.inv.on_written(id, &triples);
        self.check_app(id, "a restart");
        let now = self.nodes[idx].core.served();
        self.trace(|| {
            format!(
                "node {id} restarted (serves index {} offset {}; served {} {} before)",
                now.index, now.end_offset, served.index, served.end_offset
            )
        });
        self.check_served(id, now);
        self.process(id);
    }

    fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter(|n| n.up && n.core.raft().role() == Role::Leader)
            .max_by_key(|n| n.core.raft().term())
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
                _ => self.leader_request(),
            },
        }
        let next = if mix == FaultMix::Leaders || mix == FaultMix::Figure8 {
            self.rng.range(30_000, 400_000)
        } else {
            self.rng.range(100_000, 1_500_000)
        };
        self.schedule(next, Event::Nemesis);
    }

    /// A leadership transfer, a preferred leader (set or cleared) or a
    /// control command, asked of the current leader's core.
    fn leader_request(&mut self) {
        let Some(l) = self.leader() else { return };
        let token = self.token();
        let now_ms = self.now / 1000;
        match self.rng.range(0, 4) {
            0 | 1 => {
                let to = self.random_node();
                let node = self.node(l);
                node.requests.insert(token, Request::Transfer(to));
                node.core.transfer(token, to);
                self.trace(|| format!("transfer {l} -> {to}"));
            }
            2 => {
                let to = if self.rng.chance(0.7) {
                    Some(self.random_node())
                } else {
                    None
                };
                let node = self.node(l);
                node.requests.insert(token, Request::Command);
                node.core.set_preferred_leader(token, to, now_ms);
                self.trace(|| format!("preferred leader on {l}: {to:?}"));
            }
            _ => {
                let node = self.node(l);
                node.requests.insert(token, Request::Command);
                node.core
                    .propose_control(token, Bytes::from_static(b"sim"), now_ms);
                self.trace(|| format!("control command on {l}"));
            }
        }
        self.process(l);
    }

    /// A membership change asked of the current leader's core, keeping 3
    /// to 7 voters.
    fn membership_change(&mut self) {
        let Some(l) = self.leader() else {
            self.trace(|| "membership change: no leader".into());
            return;
        };
        let m = self.nodes[l as usize - 1].core.raft().membership().clone();
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
        let mut changes = Vec::new();
        match self.rng.range(0, 6) {
            0 if !outside.is_empty() => {
                let id = pick(&mut self.rng, &outside);
                changes.push(MemberChange::AddLearner {
                    id,
                    info: member_info(id),
                });
            }
            1 if !learners.is_empty() && voters.len() < 7 => {
                changes.push(MemberChange::Promote(pick(&mut self.rng, &learners)))
            }
            2 if voters.len() > 3 => {
                let v = if self.rng.chance(0.5) {
                    l
                } else {
                    pick(&mut self.rng, &voters)
                };
                changes.push(MemberChange::Remove(v));
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
                    changes.push(MemberChange::AddVoter {
                        id: fresh[i],
                        info: Some(member_info(fresh[i])),
                    });
                    changes.push(MemberChange::Remove(pick(&mut self.rng, &voters)));
                }
            }
            4 if voters.len() > 3 => {
                changes.push(MemberChange::Demote(pick(&mut self.rng, &voters)))
            }
            5 if !learners.is_empty() => {
                changes.push(MemberChange::Remove(pick(&mut self.rng, &learners)))
            }
            _ => return,
        }
        let req = ChangeRequest {
            changes,
            wait_for_catch_up: self.rng.chance(0.5),
        };
        let deadline = self.rng.range(50, 1_000);
        let token = self.token();
        let what = format!(
            "{:?} (wait {}, {deadline} ticks)",
            req.changes, req.wait_for_catch_up
        );
        self.trace(|| format!("membership change on {l}: {what}"));
        let node = self.node(l);
        node.requests
            .insert(token, Request::Change(req.changes.clone()));
        node.core.change(token, req, deadline);
        self.process(l);
    }

    /// Crash and restart the nodes that are not voters of the leader's
    /// configuration (removed ones still run): they come back knowing only
    /// what they persisted.
    fn crash_outsiders(&mut self) {
        let Some(l) = self.leader() else { return };
        let m = self.nodes[l as usize - 1].core.raft().membership().clone();
        for id in 1..=self.pool {
            if !m.is_voter(id) && self.rng.chance(0.7) {
                let after = self.rng.range(10_000, 300_000);
                self.crash(id, after);
            }
        }
    }

    /// The node is asked to snapshot now (the core may decline: one in
    /// flight, nothing applied since the last).
    fn take_snapshot(&mut self, id: NodeId) {
        let next = self.rng.range(200_000, 2_000_000);
        self.schedule(next, Event::Snapshot(id));
        let node = &mut self.nodes[id as usize - 1];
        if !node.up || node.paused {
            return;
        }
        let taken = node.core.take_snapshot();
        self.trace(|| format!("node {id} asked to snapshot: {taken}"));
        self.process(id);
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
                let k = self.rng.range(1, n.max(2)) as usize;
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
                let id = self.random_node();
                if self.rng.chance(0.35) {
                    // The disk fills up for a while: writes are refused and
                    // wait, proposals there are refused.
                    let for_us = self.rng.range(20_000, 1_000_000);
                    self.node(id).disk_full_until = self.now + for_us;
                    self.trace(|| format!("disk of node {id} full for {} ms", for_us / 1000));
                } else {
                    // A disk turns slow (or fast again): more is in flight
                    // at the moment of the next crash.
                    let slow = self.rng.chance(0.6);
                    self.node(id).disk_slow = slow;
                    self.trace(|| format!("disk of node {id} slow: {slow}"));
                }
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
            self.node(id).disk_full_until = 0;
            self.restart(id);
            let node = self.node(id);
            node.pending_at_heal = node
                .requests
                .iter()
                .filter(|(_, r)| matches!(r, Request::Append(_)))
                .map(|(t, _)| *t)
                .collect();
        }
    }
}
