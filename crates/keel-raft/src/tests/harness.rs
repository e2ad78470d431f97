//! An in-process network of raft nodes for scenario tests: deterministic,
//! synchronous delivery, per-link cuts, and persistence that is immediate
//! unless a node is set to hold it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::*;

pub struct Node {
    pub raft: Raft<MemStorage>,
    pub hard_state: HardState,
    pub applied: Vec<Entry>,
    /// The state machine: every record applied (or restored), in order.
    pub app: Vec<Vec<u8>>,
    /// Snapshot chunks received so far.
    pub staged: Vec<u8>,
    pub installs: usize,
    /// The bootstrap configuration this node was created with.
    pub boot: Membership,
    pub conf_events: Vec<ConfChangeEvent>,
    pub reads: Vec<ReadState>,
    pub failed_reads: Vec<u64>,
    /// Persistence held back: (persist id, entries, hard state) not yet
    /// written. Only used when `hold_persist` is on.
    pub hold_persist: bool,
    pub held: VecDeque<(u64, Vec<Entry>, Option<HardState>)>,
    pub soft_states: Vec<SoftState>,
}

impl Node {
    pub fn status(&self) -> Status {
        self.raft.status()
    }
}

pub struct Net {
    pub nodes: BTreeMap<NodeId, Node>,
    pub queue: VecDeque<Message>,
    /// Links that drop everything (from, to).
    pub cut: BTreeSet<(NodeId, NodeId)>,
    /// Every message delivered, for assertions.
    pub log: Vec<Message>,
    pub step_errors: Vec<(NodeId, Error)>,
    pub now: u64,
    /// Drops every message for which this returns true.
    pub drop_if: Option<fn(&Message) -> bool>,
    /// Delivers every message twice.
    pub duplicate: bool,
}

pub fn cfg(id: NodeId) -> Config {
    let mut c = Config::new(id, 1);
    c.election_tick = 10;
    c.heartbeat_tick = 1;
    c
}

impl Net {
    pub fn new(n: u64) -> Net {
        Self::with(n, |_| {})
    }

    pub fn with(n: u64, tweak: impl Fn(&mut Config)) -> Net {
        let voters: Vec<NodeId> = (1..=n).collect();
        Self::with_members(&voters, &[], tweak)
    }

    pub fn with_members(
        voters: &[NodeId],
        learners: &[NodeId],
        tweak: impl Fn(&mut Config),
    ) -> Net {
        let mut nodes = BTreeMap::new();
        for &id in voters.iter().chain(learners) {
            let mut c = cfg(id);
            tweak(&mut c);
            let init = InitialState {
                hard_state: HardState::default(),
                membership: Membership::new(voters.iter().copied(), learners.iter().copied()),
                applied: 0,
            };
            let boot = init.membership.clone();
            let raft = Raft::new(c, MemStorage::new(), init, id * 7919).unwrap();
            let mut node = Node::wrap(raft, HardState::default());
            node.boot = boot;
            nodes.insert(id, node);
        }
        Net {
            nodes,
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            log: Vec::new(),
            step_errors: Vec::new(),
            now: 1_000,
            drop_if: None,
            duplicate: false,
        }
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[&id]
    }

    pub fn raft(&mut self, id: NodeId) -> &mut Raft<MemStorage> {
        &mut self.nodes.get_mut(&id).unwrap().raft
    }

    pub fn isolate(&mut self, id: NodeId) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for other in ids {
            if other != id {
                self.cut.insert((id, other));
                self.cut.insert((other, id));
            }
        }
    }

    pub fn cut_oneway(&mut self, from: NodeId, to: NodeId) {
        self.cut.insert((from, to));
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Runs every node's Ready loop and delivers messages until quiet.
    pub fn settle(&mut self) {
        for _ in 0..100_000 {
            let mut busy = false;
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                busy |= self.process(id);
            }
            if let Some(m) = self.queue.pop_front() {
                busy = true;
                self.deliver(m);
            }
            if !busy {
                return;
            }
        }
        panic!("network did not settle");
    }

    pub fn deliver(&mut self, m: Message) {
        if self.cut.contains(&(m.from, m.to)) || self.drop_if.is_some_and(|f| f(&m)) {
            return;
        }
        let Some(node) = self.nodes.get_mut(&m.to) else {
            return;
        };
        self.log.push(m.clone());
        if let Err(e) = node.raft.step(m) {
            self.step_errors.push((node.raft.id(), e));
        }
    }

    /// Handles one node's Ready, if any. Returns whether there was one.
    pub fn process(&mut self, id: NodeId) -> bool {
        let node = self.nodes.get_mut(&id).unwrap();
        if !node.raft.has_ready() {
            return false;
        }
        let rd = node.raft.ready().unwrap();
        if let Some(ss) = rd.soft_state {
            node.soft_states.push(ss);
        }
        for c in rd.snapshot_chunks {
            if c.offset == 0 {
                node.staged.clear();
            }
            assert_eq!(
                c.offset as usize,
                node.staged.len(),
                "chunks arrive in order"
            );
            node.staged.extend_from_slice(&c.data);
        }
        if let Some(meta) = rd.install_snapshot {
            let data = bytes::Bytes::from(std::mem::take(&mut node.staged));
            node.app = decode_app(&data);
            node.applied.clear();
            node.installs += 1;
            node.raft.storage_mut().reset_to_snapshot(meta, data);
        }
        node.conf_events.extend(rd.conf_change_events);
        if let Some(pid) = rd.persist_id {
            if node.hold_persist {
                node.held.push_back((pid, rd.entries, rd.hard_state));
            } else {
                if let Some(hs) = rd.hard_state {
                    node.hard_state = hs;
                }
                node.raft.storage_mut().append(&rd.entries);
                node.raft.on_persisted(pid).unwrap();
            }
        }
        for e in &rd.committed {
            node.app.extend(e.records().map(|r| r.to_vec()));
        }
        node.applied.extend(rd.committed);
        node.reads.extend(rd.read_states);
        node.failed_reads.extend(rd.failed_reads);
        if self.duplicate {
            self.queue.extend(rd.messages.iter().cloned());
        }
        self.queue.extend(rd.messages);
        true
    }

    /// Writes and acknowledges the persistence `id` held back.
    pub fn release_persist(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).unwrap();
        while let Some((pid, entries, hs)) = node.held.pop_front() {
            if let Some(hs) = hs {
                node.hard_state = hs;
            }
            node.raft.storage_mut().append(&entries);
            node.raft.on_persisted(pid).unwrap();
        }
    }

    pub fn tick(&mut self, id: NodeId) {
        self.raft(id).tick();
    }

    /// Ticks every node `n` times, settling after each.
    pub fn tick_all(&mut self, n: usize) {
        for _ in 0..n {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                self.tick(id);
            }
            self.settle();
        }
    }

    /// Makes `id` campaign and settles; returns whether it leads.
    pub fn elect(&mut self, id: NodeId) -> bool {
        self.raft(id).start_election();
        self.settle();
        self.node(id).raft.role() == Role::Leader
    }

    pub fn propose(&mut self, id: NodeId, data: &[u8]) -> Result<Proposed, Error> {
        self.now += 1;
        let now = self.now;
        let r = self.raft(id).propose(BatchBuilder::single(data), now);
        self.settle();
        r
    }

    pub fn leaders(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.raft.role() == Role::Leader)
            .map(|(id, _)| *id)
            .collect()
    }

    /// The data records in a node's state machine, in offset order.
    pub fn applied_data(&self, id: NodeId) -> Vec<Vec<u8>> {
        self.node(id).app.clone()
    }

    /// Adds a node that is not a member yet (it waits to be added).
    pub fn add_node(&mut self, id: NodeId, tweak: impl Fn(&mut Config)) {
        let mut c = cfg(id);
        tweak(&mut c);
        let raft = Raft::new(c, MemStorage::new(), InitialState::default(), id * 7919).unwrap();
        self.nodes
            .insert(id, Node::wrap(raft, HardState::default()));
    }

    /// Snapshots a node's state machine at its applied index and compacts
    /// its log, keeping `keep` entries behind the snapshot.
    pub fn snapshot(&mut self, id: NodeId, keep: u64) -> SnapshotMeta {
        self.nodes
            .get_mut(&id)
            .unwrap()
            .raft
            .cfg
            .compaction_keep_entries = keep;
        let node = self.nodes.get_mut(&id).unwrap();
        let applied = node.raft.status().applied;
        let mut meta = node.raft.snapshot_meta(applied).unwrap();
        let data = encode_app(&node.app);
        meta.size = data.len() as u64;
        node.raft.storage_mut().set_snapshot(meta.clone(), data);
        let upto = node.raft.compaction_point(applied);
        node.raft.storage_mut().compact(upto).unwrap();
        meta
    }

    /// Restarts a node from what it persisted (storage and hard state).
    pub fn restart(&mut self, id: NodeId) {
        let node = self.nodes.remove(&id).unwrap();
        let c = node.raft.config().clone();
        let membership = node.boot.clone();
        let storage = node.raft.storage().clone();
        let applied = node.raft.storage().snapshot().map(|s| s.index).unwrap_or(0);
        let init = InitialState {
            hard_state: node.hard_state,
            membership,
            applied,
        };
        let raft = Raft::new(c, storage, init, id * 31 + 1).unwrap();
        let mut fresh = Node::wrap(raft, node.hard_state);
        fresh.boot = node.boot.clone();
        // The state machine restarts from the snapshot, if any.
        if let Some((_, data)) = fresh.raft.storage().snapshot_data() {
            fresh.app = decode_app(data);
        }
        self.nodes.insert(id, fresh);
    }
}

impl Node {
    pub fn wrap(raft: Raft<MemStorage>, hard_state: HardState) -> Node {
        Node {
            raft,
            hard_state,
            applied: Vec::new(),
            reads: Vec::new(),
            failed_reads: Vec::new(),
            hold_persist: false,
            app: Vec::new(),
            staged: Vec::new(),
            installs: 0,
            boot: Membership::default(),
            conf_events: Vec::new(),
            held: VecDeque::new(),
            soft_states: Vec::new(),
        }
    }
}

/// A message from `from` to `to` in group 1 at `term`.
pub fn msg(from: NodeId, to: NodeId, term: Term, body: MessageBody) -> Message {
    Message {
        group: 1,
        from,
        to,
        term,
        body,
    }
}

/// A data entry holding one record.
pub fn entry(term: Term, index: Index, base_offset: u64, data: &[u8]) -> Entry {
    BatchBuilder::single(data).seal(EntryKind::Data, term, index, base_offset, 0)
}

/// Entries with the given terms at indexes 1.., one record each.
pub fn ents(terms: &[Term]) -> Vec<Entry> {
    terms
        .iter()
        .enumerate()
        .map(|(i, t)| {
            entry(
                *t,
                i as Index + 1,
                i as u64,
                format!("e{}", i + 1).as_bytes(),
            )
        })
        .collect()
}

/// A lone raft instance (peers `1..=n`) whose durable log holds entries of
/// the given terms and whose durable term is `term`.
pub fn raft_with_log(
    id: NodeId,
    n: u64,
    terms: &[Term],
    term: Term,
    tweak: impl Fn(&mut Config),
) -> Raft<MemStorage> {
    let mut st = MemStorage::new();
    st.append(&ents(terms));
    let mut c = cfg(id);
    tweak(&mut c);
    let init = InitialState {
        hard_state: HardState { term, vote: NONE },
        membership: Membership::new(1..=n, []),
        applied: 0,
    };
    Raft::new(c, st, init, id).unwrap()
}

/// Runs a lone instance's Ready loop with immediate persistence; returns the
/// messages it sent.
pub fn drain(r: &mut Raft<MemStorage>) -> Vec<Message> {
    let mut out = Vec::new();
    while r.has_ready() {
        let rd = r.ready().unwrap();
        r.storage_mut().append(&rd.entries);
        if let Some(id) = rd.persist_id {
            r.on_persisted(id).unwrap();
        }
        out.extend(rd.messages);
    }
    out
}

pub fn no_pre_vote(c: &mut Config) {
    c.pre_vote = false;
    c.check_quorum = false;
}

/// Makes a lone instance leader of a 3-node group: it campaigns and gets a
/// vote from node 2.
pub fn make_leader(r: &mut Raft<MemStorage>) {
    r.start_election();
    let msgs = drain(r);
    let me = r.id();
    for m in msgs {
        if let MessageBody::Vote(v) = m.body {
            let resp = msg(
                m.to,
                me,
                m.term,
                MessageBody::VoteResponse {
                    pre: v.pre,
                    granted: true,
                },
            );
            r.step(resp).unwrap();
            drain(r);
            if r.role() == Role::Leader {
                return;
            }
        }
    }
    if r.role() != Role::Leader {
        // A pre-vote round won: answer the real round.
        let msgs = drain(r);
        let _ = msgs;
        let term = r.term();
        r.step(msg(
            2,
            me,
            term,
            MessageBody::VoteResponse {
                pre: false,
                granted: true,
            },
        ))
        .unwrap();
        drain(r);
    }
    assert_eq!(r.role(), Role::Leader);
}

/// The harness state machine's snapshot: length-prefixed records.
pub fn encode_app(app: &[Vec<u8>]) -> bytes::Bytes {
    let mut out = Vec::new();
    for r in app {
        out.extend_from_slice(&(r.len() as u32).to_le_bytes());
        out.extend_from_slice(r);
    }
    bytes::Bytes::from(out)
}

pub fn decode_app(mut b: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let n = u32::from_le_bytes(b[..4].try_into().unwrap()) as usize;
        out.push(b[4..4 + n].to_vec());
        b = &b[4 + n..];
    }
    out
}
