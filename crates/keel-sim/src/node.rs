//! One simulated node: a raft instance, a disk that only keeps what was
//! reported persisted (plus, at a crash, a random prefix of the writes in
//! flight), and the application state (the log of user records), which
//! implements keel-raft's `StateMachine`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use keel_raft::{
    Config, Entry, EntryKind, HardState, Index, InitialState, MemStorage, Membership, NodeId, Raft,
    Rng, SnapshotMeta, StateMachine, Storage, Term,
};

/// A write handed to the disk and not yet reported durable.
#[derive(Debug, Clone)]
pub struct InflightWrite {
    pub persist_id: u64,
    pub install: Option<(SnapshotMeta, Bytes)>,
    pub hard_state: Option<HardState>,
    pub entries: Vec<Entry>,
}

/// What survives a crash: the durable log (with its snapshot) and the hard
/// state.
#[derive(Debug, Clone, Default)]
pub struct Disk {
    pub log: MemStorage,
    pub hard_state: HardState,
    pub inflight: VecDeque<InflightWrite>,
}

impl Disk {
    fn apply(&mut self, w: &InflightWrite) {
        if let Some((meta, data)) = &w.install {
            self.log.reset_to_snapshot(meta.clone(), data.clone());
        }
        if let Some(hs) = w.hard_state {
            self.hard_state = hs;
        }
        self.log.append(&w.entries);
    }

    /// Completes every in-flight write up to `persist_id`.
    pub fn complete(&mut self, persist_id: u64) {
        while self
            .inflight
            .front()
            .is_some_and(|w| w.persist_id <= persist_id)
        {
            let w = self.inflight.pop_front().expect("front checked");
            self.apply(&w);
        }
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
    pub applied: Index,
}

pub fn mix(h: u64, v: u64) -> u64 {
    let mut z = h ^ v.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z ^ (z >> 29)
}

#[derive(Debug)]
pub struct AppError(pub String);

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AppError {}

impl App {
    pub fn hash_of_prefix(&self, n: usize) -> u64 {
        if n == 0 { 0 } else { self.prefix_hash[n - 1] }
    }

    fn push(&mut self, v: u64) {
        let h = mix(self.hash_of_prefix(self.values.len()), v);
        self.values.push(v);
        self.prefix_hash.push(h);
    }
}

impl StateMachine for App {
    type Error = AppError;

    fn apply(&mut self, e: &Entry) -> Result<(), AppError> {
        if e.index() != self.applied + 1 {
            return Err(AppError(format!(
                "applied index {} after {}",
                e.index(),
                self.applied
            )));
        }
        self.applied = e.index();
        if e.base_offset() != self.values.len() as u64 {
            return Err(AppError(format!(
                "entry {} starts at offset {} but the log has {} records",
                e.index(),
                e.base_offset(),
                self.values.len()
            )));
        }
        if e.kind() == EntryKind::Data {
            for r in e.records() {
                let v = decode_value(&r).ok_or_else(|| {
                    AppError(format!(
                        "entry {} holds a record that is not a value",
                        e.index()
                    ))
                })?;
                self.push(v);
            }
        }
        Ok(())
    }

    fn applied(&self) -> Index {
        self.applied
    }

    fn snapshot(&mut self) -> Result<Bytes, AppError> {
        let mut out = Vec::with_capacity(self.values.len() * 8);
        for v in &self.values {
            out.extend_from_slice(&v.to_le_bytes());
        }
        Ok(Bytes::from(out))
    }

    fn restore(&mut self, meta: &SnapshotMeta, data: Bytes) -> Result<(), AppError> {
        if !data.len().is_multiple_of(8) || (data.len() / 8) as u64 != meta.next_offset {
            return Err(AppError(format!(
                "snapshot of {} bytes does not hold the {} records its description says",
                data.len(),
                meta.next_offset
            )));
        }
        *self = App::default();
        for c in data.chunks_exact(8) {
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

/// A client operation a node is working on.
#[derive(Debug, Clone, Copy)]
pub struct PendingOp {
    pub client: usize,
    pub op: usize,
}

pub struct SimNode {
    pub id: NodeId,
    pub up: bool,
    /// Bumped at every restart: events of an earlier life are ignored.
    pub incarnation: u64,
    /// Paused (SIGSTOP): input waits until resumed.
    pub paused: bool,
    pub raft: Raft<MemStorage>,
    pub disk: Disk,
    pub app: App,
    /// Snapshot chunks received and not yet installed (volatile).
    pub staged: Vec<u8>,
    /// The configuration this node was created with (empty for a node that
    /// waits to be added).
    pub boot: Membership,
    /// Chain hash of the written log: chain[i] covers entries 1..=i.
    pub chain: Vec<u64>,
    /// Proposals awaiting their entry's fate: index -> (term, op).
    pub proposals: BTreeMap<Index, (Term, PendingOp)>,
    /// Indexes of the proposals that were pending when the faults healed;
    /// liveness requires each to be resolved.
    pub pending_at_heal: BTreeSet<Index>,
    /// Reads by ctx, then confirmed reads waiting for apply.
    pub reads: BTreeMap<u64, PendingOp>,
    pub confirmed_reads: Vec<(Index, PendingOp)>,
    pub disk_busy_until: u64,
    /// Syncs take tens of milliseconds (a slow or busy disk).
    pub disk_slow: bool,
    pub last_commit: Index,
    pub last_term: Term,
}

impl SimNode {
    /// Starts a node over what its disk holds: the state machine from the
    /// durable snapshot, the log after it. `committed_chain` is the global
    /// committed chain, which covers the snapshot's index.
    pub fn new(
        id: NodeId,
        cfg: Config,
        boot: Membership,
        disk: Disk,
        seed: u64,
        committed_chain: &[u64],
    ) -> SimNode {
        let mut app = App::default();
        let mut applied = 0;
        if let Some((meta, data)) = disk.log.snapshot_data() {
            app.restore(meta, data.clone())
                .expect("the simulator's own snapshot restores");
            applied = meta.index;
        }
        let init = InitialState {
            hard_state: disk.hard_state,
            membership: boot.clone(),
            applied,
        };
        let raft =
            Raft::new(cfg, disk.log.clone(), init, seed).expect("simulator configuration is valid");
        let base = raft.storage().first_index() - 1;
        let chain = committed_chain[..=(base as usize).min(committed_chain.len() - 1)].to_vec();
        let mut n = SimNode {
            id,
            up: true,
            incarnation: 0,
            paused: false,
            raft,
            disk,
            app,
            staged: Vec::new(),
            boot,
            chain,
            proposals: BTreeMap::new(),
            pending_at_heal: BTreeSet::new(),
            reads: BTreeMap::new(),
            confirmed_reads: Vec::new(),
            disk_busy_until: 0,
            disk_slow: false,
            last_commit: 0,
            last_term: 0,
        };
        let all = n.raft.storage().all().to_vec();
        n.extend_chain(&all);
        n
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
}
