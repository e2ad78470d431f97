//! One simulated node: a raft instance, a disk that only keeps what was
//! reported persisted (plus, at a crash, a random prefix of the writes in
//! flight), and the application state (the log of user records).

use std::collections::{BTreeMap, VecDeque};

use keel_raft::{
    Config, Entry, EntryKind, HardState, Index, InitialState, MemStorage, Membership, NodeId, Raft,
    Rng, Term,
};

/// A write handed to the disk and not yet reported durable.
#[derive(Debug, Clone)]
pub struct InflightWrite {
    pub persist_id: u64,
    pub hard_state: Option<HardState>,
    pub entries: Vec<Entry>,
}

/// What survives a crash: the durable log and hard state.
#[derive(Debug, Clone, Default)]
pub struct Disk {
    pub log: MemStorage,
    pub hard_state: HardState,
    pub inflight: VecDeque<InflightWrite>,
}

impl Disk {
    fn apply(&mut self, w: &InflightWrite) {
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
/// of every prefix so reads can be checked cheaply.
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

impl App {
    pub fn hash_of_prefix(&self, n: usize) -> u64 {
        if n == 0 { 0 } else { self.prefix_hash[n - 1] }
    }

    /// Applies one committed entry; returns an error if its offsets do not
    /// continue the log.
    pub fn apply(&mut self, e: &Entry) -> Result<(), String> {
        if e.index() != self.applied + 1 {
            return Err(format!(
                "applied index {} after {}",
                e.index(),
                self.applied
            ));
        }
        self.applied = e.index();
        if e.base_offset() != self.values.len() as u64 {
            return Err(format!(
                "entry {} starts at offset {} but the log has {} records",
                e.index(),
                e.base_offset(),
                self.values.len()
            ));
        }
        if e.kind() == EntryKind::Data {
            for r in e.records() {
                let v = decode_value(&r).ok_or_else(|| {
                    format!("entry {} holds a record that is not a value", e.index())
                })?;
                let h = mix(self.hash_of_prefix(self.values.len()), v);
                self.values.push(v);
                self.prefix_hash.push(h);
            }
        }
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
    /// Paused (SIGSTOP): input waits in `inbox` until resumed.
    pub paused: bool,
    pub raft: Raft<MemStorage>,
    pub disk: Disk,
    pub app: App,
    /// Chain hash of the written log: chain[i] covers entries 1..=i.
    pub chain: Vec<u64>,
    /// Proposals awaiting their entry's fate: index -> (term, op).
    pub proposals: BTreeMap<Index, (Term, PendingOp)>,
    /// Indexes of the proposals that were pending when the faults healed;
    /// liveness requires each to be resolved.
    pub pending_at_heal: std::collections::BTreeSet<Index>,
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
    pub fn new(id: NodeId, cfg: Config, membership: Membership, disk: Disk, seed: u64) -> SimNode {
        let init = InitialState {
            hard_state: disk.hard_state,
            membership,
            applied: 0,
        };
        let raft =
            Raft::new(cfg, disk.log.clone(), init, seed).expect("simulator configuration is valid");
        let mut n = SimNode {
            id,
            up: true,
            incarnation: 0,
            paused: false,
            raft,
            disk,
            app: App::default(),
            chain: vec![0],
            proposals: BTreeMap::new(),
            pending_at_heal: Default::default(),
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
}
