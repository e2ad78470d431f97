//! One simulated node: keel-node's `GroupCore` (the production driver of a
//! raft group) over an in-memory log, a disk that only keeps what was
//! reported persisted (plus, at a crash, a random prefix of the writes in
//! flight), and the application state (the log of user records), which
//! implements keel-node's `StateMachine`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::Read;

use bytes::Bytes;
use keel_node::core::{CoreSettings, GroupCore, SnapshotJob, StartState, Token};
use keel_node::{Command, MemberChange, MemberInfo, SnapshotWriter, StateMachine, Watermark};
use keel_raft::{
    Config, Entry, HardState, Index, MemStorage, Membership, NodeId, Rng, SnapshotMeta, Storage,
    Term,
};

/// A write handed to the disk and not yet reported durable.
#[derive(Debug, Clone)]
pub struct InflightWrite {
    pub id: u64,
    pub install: Option<(SnapshotMeta, Bytes)>,
    pub hard_state: Option<HardState>,
    pub entries: Vec<Entry>,
}

/// What survives a crash: the durable log (with its snapshot), the hard
/// state and the applied mark.
#[derive(Debug, Clone, Default)]
pub struct Disk {
    pub log: MemStorage,
    pub hard_state: HardState,
    pub mark: Watermark,
    pub inflight: VecDeque<InflightWrite>,
}

impl Disk {
    /// A founding member's disk: the bootstrap entry and term 1, as the
    /// server writes them when it bootstraps a cluster.
    pub fn bootstrap(m: &Membership) -> Disk {
        let mut d = Disk::default();
        d.log.append(&[keel_raft::bootstrap_entry(m)]);
        d.hard_state = HardState { term: 1, vote: 0 };
        d
    }

    /// Makes a received snapshot the disk's and resets the log to it.
    pub fn install(&mut self, meta: &SnapshotMeta, data: &Bytes) {
        // A snapshot taken after the install was handed out, and written
        // before it completed, stays the latest.
        let newer = self
            .log
            .snapshot_data()
            .filter(|(m, _)| m.index > meta.index)
            .cloned();
        self.log.reset_to_snapshot(meta.clone(), data.clone());
        if let Some((m, d)) = newer {
            self.log.set_snapshot(m, d);
        }
    }

    fn apply(&mut self, w: &InflightWrite) {
        if let Some((meta, data)) = &w.install {
            self.install(meta, data);
        }
        if let Some(hs) = w.hard_state {
            self.hard_state = hs;
        }
        self.log.append(&w.entries);
    }

    /// Completes every in-flight write up to `id`; returns their ids, in
    /// order.
    pub fn complete(&mut self, id: u64) -> Vec<u64> {
        let mut done = Vec::new();
        while self.inflight.front().is_some_and(|w| w.id <= id) {
            let w = self.inflight.pop_front().expect("front checked");
            self.apply(&w);
            done.push(w.id);
        }
        done
    }

    /// The disk is full: the oldest write in flight (and every later one)
    /// is refused, nothing of them reaches the log. The installs among
    /// them were made durable when they were handed out (as the server
    /// does); here they become so now. Returns the refused write's id.
    pub fn refuse(&mut self) -> Option<u64> {
        let front = self.inflight.front()?.id;
        for w in self.inflight.drain(..).collect::<Vec<_>>() {
            if let Some((meta, data)) = &w.install {
                self.install(meta, data);
            }
        }
        Some(front)
    }

    /// A crash: a random prefix of the in-flight writes reached the platter
    /// (the core was never told), the rest is gone.
    pub fn crash(&mut self, rng: &mut Rng) {
        let n = self.inflight.len();
        let survive = if n == 0 {
            0
        } else {
            rng.range(0, n as u64 + 1) as usize
        };
        let writes: Vec<InflightWrite> = self.inflight.drain(..).collect();
        for w in &writes[..survive] {
            self.apply(w);
        }
    }
}

/// The application: the user records in offset order, with a running hash
/// of every prefix so reads and whole states can be compared cheaply.
#[derive(Debug, Clone, Default)]
pub struct App {
    pub values: Vec<u64>,
    pub prefix_hash: Vec<u64>,
    /// The index of the last record applied (or of the snapshot restored).
    pub applied: Index,
    /// The first contract breach seen (`apply` cannot return an error).
    pub error: Option<String>,
}

pub fn mix(h: u64, v: u64) -> u64 {
    let mut z = h ^ v.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z ^ (z >> 29)
}

impl App {
    pub fn hash_of_prefix(&self, n: usize) -> u64 {
        if n == 0 { 0 } else { self.prefix_hash[n - 1] }
    }

    fn push(&mut self, v: u64) {
        let h = mix(self.hash_of_prefix(self.values.len()), v);
        self.values.push(v);
        self.prefix_hash.push(h);
    }

    fn breach(&mut self, what: String) {
        self.error.get_or_insert(what);
    }
}

impl StateMachine for App {
    /// The offset the record took.
    type Response = u64;

    fn apply(&mut self, cmd: Command<'_>) -> u64 {
        if cmd.index < self.applied {
            self.breach(format!(
                "record of entry {} applied after entry {}",
                cmd.index, self.applied
            ));
        }
        self.applied = cmd.index;
        if cmd.offset != self.values.len() as u64 {
            self.breach(format!(
                "entry {} applies a record at offset {} but the log has {} records",
                cmd.index,
                cmd.offset,
                self.values.len()
            ));
        }
        match decode_value(cmd.data) {
            Some(v) => self.push(v),
            None => self.breach(format!(
                "entry {} holds a record that is not a value",
                cmd.index
            )),
        }
        cmd.offset
    }

    fn snapshot(&mut self) -> SnapshotWriter {
        let values = self.values.clone();
        Box::new(move |w| {
            let mut out = Vec::with_capacity(values.len() * 8);
            for v in &values {
                out.extend_from_slice(&v.to_le_bytes());
            }
            w.write_all(&out)
        })
    }

    fn restore(&mut self, meta: &SnapshotMeta, data: &mut dyn Read) -> std::io::Result<()> {
        let mut buf = Vec::new();
        data.read_to_end(&mut buf)?;
        if !buf.len().is_multiple_of(8) || (buf.len() / 8) as u64 != meta.next_offset {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "snapshot of {} bytes does not hold the {} records its description says",
                    buf.len(),
                    meta.next_offset
                ),
            ));
        }
        let error = self.error.take();
        *self = App::default();
        self.error = error;
        for c in buf.chunks_exact(8) {
            self.push(u64::from_le_bytes(c.try_into().expect("chunks of 8")));
        }
        self.applied = meta.index;
        Ok(())
    }
}

pub fn encode_value(v: u64) -> [u8; 8] {
    v.to_le_bytes()
}

pub fn decode_value(b: &[u8]) -> Option<u64> {
    b.try_into().ok().map(u64::from_le_bytes)
}

/// The fixed member info of a simulated node (what its handshake
/// announces).
pub fn member_info(id: NodeId) -> MemberInfo {
    MemberInfo {
        incarnation: id,
        peer_addr: format!("sim:{id}"),
        client_addr: String::new(),
    }
}

/// A client operation a node is working on.
#[derive(Debug, Clone, Copy)]
pub struct PendingOp {
    pub client: usize,
    pub op: usize,
}

/// What a token given to the core stands for.
#[derive(Debug, Clone)]
pub enum Request {
    /// A client's append.
    Append(PendingOp),
    /// A client's read.
    Read(PendingOp),
    /// A membership change.
    Change(Vec<MemberChange>),
    /// A leadership transfer.
    Transfer(NodeId),
    /// A preferred leader or a control command (a command entry).
    Command,
}

pub type Core = GroupCore<MemStorage, App>;

pub struct SimNode {
    pub id: NodeId,
    pub up: bool,
    /// Bumped at every restart: events of an earlier life are ignored.
    pub incarnation: u64,
    /// Paused (SIGSTOP): input waits until resumed.
    pub paused: bool,
    pub core: Core,
    pub disk: Disk,
    /// Snapshot chunks received and not yet installed (volatile).
    pub staged: Vec<u8>,
    /// Chain hash of the written log: chain[i] covers entries 1..=i.
    pub chain: Vec<u64>,
    /// Requests handed to the core and not answered yet, by token.
    pub requests: BTreeMap<Token, Request>,
    /// Appends that were pending when the faults healed; liveness requires
    /// each to be answered.
    pub pending_at_heal: BTreeSet<Token>,
    /// Peers whose handshake this life has seen.
    pub observed: BTreeSet<NodeId>,
    /// The mark write in flight.
    pub mark_in_flight: Option<Watermark>,
    /// The snapshot being written.
    pub snapshot_job: Option<SnapshotJob>,
    pub disk_busy_until: u64,
    /// Syncs take tens of milliseconds (a slow or busy disk).
    pub disk_slow: bool,
    /// Writes are refused for want of space until then (simulated us).
    pub disk_full_until: u64,
    /// A write was refused for want of space and the core may still hold
    /// writes back.
    pub no_space: bool,
    /// The last snapshot handed out for installation in this life, until
    /// its write is handed out.
    pub install_pending: Option<(SnapshotMeta, Bytes)>,
    /// The index of the last snapshot installed in this life.
    pub last_install: Option<Index>,
    pub last_commit: Index,
    pub last_term: Term,
    /// What this node served last, across its lives: never goes back.
    pub served: Watermark,
}

impl SimNode {
    /// Starts a node over what its disk holds, as the server does: the
    /// state machine from the durable snapshot, the log reset to it if it
    /// does not continue it, then the core (which re-applies the log up to
    /// the durable mark). `committed_chain` is the global committed chain,
    /// which covers the snapshot's index.
    pub fn new(
        id: NodeId,
        cfg: Config,
        settings: CoreSettings,
        mut disk: Disk,
        seed: u64,
        committed_chain: &[u64],
    ) -> Result<SimNode, String> {
        let mut app = App::default();
        let mut snapshot = None;
        if let Some((meta, data)) = disk.log.snapshot_data().cloned() {
            app.restore(&meta, &mut data.as_ref())
                .map_err(|e| format!("node {id} cannot restore its own snapshot: {e}"))?;
            let log = &disk.log;
            let continues = log.first_index() <= meta.index + 1
                && log.last_index() >= meta.index
                && log.term(meta.index).ok() == Some(meta.term);
            if !continues {
                disk.log.reset_to_snapshot(meta.clone(), data);
            }
            snapshot = Some(meta);
        }
        let start = StartState {
            hard_state: disk.hard_state,
            snapshot,
            mark: disk.mark,
        };
        let mut core = GroupCore::new(cfg, settings, disk.log.clone(), app, start, seed)
            .map_err(|e| format!("node {id} cannot start: {e}"))?;
        core.observe(id, member_info(id));
        let base = core.raft().storage().first_index() - 1;
        if base as usize >= committed_chain.len() {
            return Err(format!(
                "node {id} restarts from a snapshot at {base}, beyond the committed log ({})",
                committed_chain.len() - 1
            ));
        }
        let chain = committed_chain[..=base as usize].to_vec();
        let mut n = SimNode {
            id,
            up: true,
            incarnation: 0,
            paused: false,
            core,
            disk,
            staged: Vec::new(),
            chain,
            requests: BTreeMap::new(),
            pending_at_heal: BTreeSet::new(),
            observed: BTreeSet::new(),
            mark_in_flight: None,
            snapshot_job: None,
            disk_busy_until: 0,
            disk_slow: false,
            disk_full_until: 0,
            no_space: false,
            install_pending: None,
            last_install: None,
            last_commit: 0,
            last_term: 0,
            served: Watermark::default(),
        };
        let all = n.core.raft().storage().all().to_vec();
        n.extend_chain(&all);
        Ok(n)
    }

    /// Records entries written to the (volatile) log in the chain; returns
    /// the new (index, term, chain hash) triples.
    pub fn extend_chain(&mut self, entries: &[Entry]) -> Vec<(Index, Term, u64)> {
        let mut out = Vec::with_capacity(entries.len());
        if let Some(first) = entries.first() {
            self.chain.truncate(first.index() as usize);
        }
        for e in entries {
            let h = mix(
                *self.chain.last().expect("chain starts with the empty log"),
                e.crc() as u64,
            );
            self.chain.push(h);
            out.push((e.index(), e.term(), h));
        }
        out
    }

    /// Whether the node is a member in the configuration `m`.
    pub fn member_of(&self, m: &Membership) -> bool {
        m.is_member(self.id)
    }

    pub fn app(&self) -> &App {
        self.core.state_machine()
    }

    /// Writes a snapshot job, as the server's runtime does: the data, then
    /// the snapshot made the latest, on disk and in what raft offers
    /// followers, unless a later one was installed meanwhile (then this one
    /// is discarded and the core told so).
    pub fn write_snapshot(&mut self, job: SnapshotJob) -> Result<(), String> {
        let mut meta = job.meta;
        let mut data = Vec::new();
        (job.writer)(&mut data)
            .map_err(|e| format!("the state machine's snapshot writer failed: {e}"))?;
        meta.size = data.len() as u64;
        let data = Bytes::from(data);
        let index = meta.index;
        let later = |s: Option<SnapshotMeta>| s.is_some_and(|s| s.index >= index);
        if later(self.core.raft().storage().snapshot()) {
            return Err(format!(
                "a later snapshot was installed while snapshot {index} was written; it was discarded"
            ));
        }
        if !later(self.disk.log.snapshot()) {
            self.disk.log.set_snapshot(meta.clone(), data.clone());
        }
        self.core.storage_mut().set_snapshot(meta, data);
        Ok(())
    }
}
