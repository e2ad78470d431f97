//! Safety invariants checked after every event, incrementally:
//!
//! - election safety: at most one leader per term;
//! - log matching: two logs holding an entry of the same index and term are
//!   identical up to it (chain hashes, one per (index, term), must agree);
//! - leader completeness: a new leader holds every committed entry;
//! - committed entries never change: every node's commit index points into
//!   the one committed chain;
//! - state-machine safety: no two nodes apply different entries at one
//!   index; offsets are dense;
//! - monotonicity within a node's life: term, commit and applied never move
//!   back;
//! - every node's state equals the committed log replayed: after each
//!   apply, and after installing a snapshot, its records are exactly a
//!   prefix of the committed log.

use std::collections::HashMap;

use keel_raft::{Entry, EntryKind, Index, NodeId, SnapshotMeta, Term};

use crate::node::{App, SimNode, decode_value};

#[derive(Default)]
pub struct Invariants {
    leaders: HashMap<Term, NodeId>,
    chains: HashMap<(Index, Term), u64>,
    /// committed[i] = chain hash of the committed log up to index i.
    committed: Vec<u64>,
    /// The highest index known committed in each term.
    committed_in_term: std::collections::BTreeMap<Term, Index>,
    /// CRC of the entry applied at each index, by anyone.
    applied: Vec<u32>,
    /// The user records of the committed log, by offset.
    pub log: Vec<u64>,
    /// log_hash[n] = hash of the first n records.
    log_hash: Vec<u64>,
    pub violation: Option<String>,
    pub leader_changes: u64,
}

impl Invariants {
    pub fn new() -> Self {
        Invariants {
            committed: vec![0],
            applied: vec![0],
            log_hash: vec![0],
            ..Default::default()
        }
    }

    fn fail(&mut self, what: String) {
        if self.violation.is_none() {
            self.violation = Some(what);
        }
    }

    pub fn ok(&self) -> bool {
        self.violation.is_none()
    }

    pub fn committed_index(&self) -> Index {
        self.committed.len() as Index - 1
    }

    /// The committed chain: chain hashes of the committed log by index.
    pub fn committed_chain(&self) -> &[u64] {
        &self.committed
    }

    /// A node's state must be the committed log replayed: its records are
    /// a prefix of the committed log's.
    pub fn check_state(&mut self, node: NodeId, app: &App, what: &str) {
        let n = app.values.len();
        if n >= self.log_hash.len() || app.hash_of_prefix(n) != self.log_hash[n] {
            self.fail(format!(
                "node {node}'s state after {what} ({n} records, applied {}) is not the committed log replayed",
                app.applied
            ));
        }
    }

    /// A node installed a snapshot: it must describe a committed point.
    pub fn on_install(&mut self, node: NodeId, meta: &SnapshotMeta, app: &App) {
        if meta.index as usize >= self.committed.len() {
            self.fail(format!(
                "node {node} installed a snapshot at {} beyond the committed log ({})",
                meta.index,
                self.committed.len() - 1
            ));
            return;
        }
        self.check_state(node, app, "a snapshot install");
    }

    pub fn on_leader(&mut self, node: &SimNode, term: Term) {
        self.leader_changes += 1;
        if let Some(other) = self.leaders.insert(term, node.id)
            && other != node.id
        {
            self.fail(format!(
                "election safety: nodes {other} and {} both lead term {term}",
                node.id
            ));
        }
        // Leader completeness: a leader of `term` holds every entry
        // committed in an earlier term. (A stale election can conclude after
        // a later term committed more; that leader cannot commit anything.)
        let c = self
            .committed_in_term
            .range(..term)
            .map(|(_, i)| *i)
            .max()
            .unwrap_or(0) as usize;
        if node.chain.len() <= c || node.chain[c] != self.committed[c] {
            self.fail(format!(
                "leader completeness: node {} leads term {term} without entry {c}, committed in an earlier term (its log ends at {})",
                node.id,
                node.chain.len() - 1
            ));
        }
    }

    pub fn on_written(&mut self, node: NodeId, written: &[(Index, Term, u64)]) {
        for &(index, term, hash) in written {
            match self.chains.insert((index, term), hash) {
                Some(h) if h != hash => {
                    self.fail(format!(
                        "log matching: node {node} holds an entry at index {index} term {term} whose log differs from another node's"
                    ));
                    return;
                }
                _ => {}
            }
        }
    }

    /// `node`, in `term`, now knows entries up to `commit` are committed.
    /// (A node learns commits only from the leader of its own term, or from
    /// its own snapshot at start-up, which is at least as strict.)
    pub fn on_commit(&mut self, node: &SimNode, term: Term, commit: Index) {
        let entry = self.committed_in_term.entry(term).or_insert(0);
        *entry = (*entry).max(commit);
        let c = commit as usize;
        if c >= node.chain.len() {
            self.fail(format!(
                "node {} committed {c} beyond its log ({})",
                node.id,
                node.chain.len() - 1
            ));
            return;
        }
        let known = self.committed.len() - 1;
        let upto = c.min(known);
        if node.chain[upto] != self.committed[upto] {
            self.fail(format!(
                "committed entries changed: node {} disagrees with the committed log at index {upto}",
                node.id
            ));
            return;
        }
        if c > known {
            self.committed.extend_from_slice(&node.chain[known + 1..=c]);
        }
    }

    pub fn on_apply(&mut self, node: NodeId, e: &Entry) {
        let i = e.index() as usize;
        if i < self.applied.len() {
            if self.applied[i] != e.crc() {
                self.fail(format!(
                    "state-machine safety: node {node} applied a different entry at index {i}"
                ));
            }
            return;
        }
        if i != self.applied.len() {
            self.fail(format!("node {node} applied index {i} with a gap"));
            return;
        }
        self.applied.push(e.crc());
        if e.base_offset() != self.log.len() as u64 {
            self.fail(format!(
                "entry {i} starts at offset {} but {} records precede it",
                e.base_offset(),
                self.log.len()
            ));
            return;
        }
        if e.kind() == EntryKind::Data {
            for r in e.records() {
                match decode_value(&r) {
                    Some(v) => {
                        let h = crate::node::mix(*self.log_hash.last().expect("starts with 0"), v);
                        self.log.push(v);
                        self.log_hash.push(h);
                    }
                    None => self.fail(format!("entry {i} holds a malformed record")),
                }
            }
        }
    }
}
