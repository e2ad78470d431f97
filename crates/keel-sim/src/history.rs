//! The client history and its linearizability check.
//!
//! The object is a log: `append(v)` returns the offset `v` took; `read()`
//! returns how many records the log holds and a hash of them. Because
//! offsets are assigned by the log and every value is unique, the final
//! committed log fixes where every append took effect; a read that saw `n`
//! records took effect between the appends at offsets `n - 1` and `n`. A
//! history is then linearizable exactly when (1) the log holds each value at
//! most once, every acknowledged append at the offset it was told, no
//! failed append, and nothing never appended; (2) every read saw a prefix of
//! the final log; and (3) these positions respect real time: no operation
//! that completed before another was invoked sits after it. (3) is checked
//! in O(n log n) by sorting on position and sweeping suffix minima of
//! completion times; operations whose outcome is unknown complete at
//! infinity.

use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Append(u64),
    Read,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Pending,
    /// Appended at this offset.
    Appended(u64),
    /// Read `n` records whose prefix hash is `hash`.
    Read {
        n: u64,
        hash: u64,
    },
    /// Definitely had no effect.
    Failed,
    /// May or may not have taken effect.
    Unknown,
}

#[derive(Debug, Clone)]
pub struct Op {
    pub client: usize,
    pub kind: OpKind,
    pub invoke: u64,
    pub complete: u64,
    pub outcome: Outcome,
}

#[derive(Debug, Default)]
pub struct History {
    pub ops: Vec<Op>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub appends_ok: u64,
    pub appends_failed: u64,
    pub appends_unknown: u64,
    pub reads_ok: u64,
    pub reads_failed: u64,
}

impl History {
    pub fn invoke(&mut self, client: usize, kind: OpKind, now: u64) -> usize {
        self.ops.push(Op {
            client,
            kind,
            invoke: now,
            complete: u64::MAX,
            outcome: Outcome::Pending,
        });
        self.ops.len() - 1
    }

    pub fn complete(&mut self, op: usize, outcome: Outcome, now: u64) -> bool {
        let o = &mut self.ops[op];
        if o.outcome != Outcome::Pending {
            return false;
        }
        o.outcome = outcome;
        o.complete = if outcome == Outcome::Unknown {
            u64::MAX
        } else {
            now
        };
        true
    }

    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for o in &self.ops {
            match (o.kind, o.outcome) {
                (OpKind::Append(_), Outcome::Appended(_)) => c.appends_ok += 1,
                (OpKind::Append(_), Outcome::Failed) => c.appends_failed += 1,
                (OpKind::Append(_), _) => c.appends_unknown += 1,
                (OpKind::Read, Outcome::Read { .. }) => c.reads_ok += 1,
                (OpKind::Read, _) => c.reads_failed += 1,
            }
        }
        c
    }

    /// Checks the history against the final committed log (values by
    /// offset). `prefix_hash(n)` is the hash of the first `n` values.
    pub fn check(&self, log: &[u64], prefix_hash: impl Fn(usize) -> u64) -> Result<(), String> {
        // (1) where each value sits.
        let mut at: HashMap<u64, u64> = HashMap::with_capacity(log.len());
        for (offset, v) in log.iter().enumerate() {
            if at.insert(*v, offset as u64).is_some() {
                return Err(format!(
                    "value {v:#x} appears twice in the log (second at offset {offset})"
                ));
            }
        }
        let mut invoked: HashMap<u64, usize> = HashMap::new();
        for (i, o) in self.ops.iter().enumerate() {
            if let OpKind::Append(v) = o.kind {
                invoked.insert(v, i);
            }
        }
        for (offset, v) in log.iter().enumerate() {
            if !invoked.contains_key(v) {
                return Err(format!(
                    "offset {offset} holds {v:#x}, which no client appended"
                ));
            }
        }
        // Positions: append at offset o -> 2o+1; read of n records -> 2n.
        let mut placed: Vec<(u64, u64, u64, usize)> = Vec::new(); // (pos, invoke, complete, op)
        for (i, o) in self.ops.iter().enumerate() {
            match (o.kind, o.outcome) {
                (OpKind::Append(v), Outcome::Appended(off)) => match at.get(&v) {
                    Some(&real) if real == off => {
                        placed.push((2 * off + 1, o.invoke, o.complete, i))
                    }
                    Some(&real) => {
                        return Err(format!(
                            "append of {v:#x} was acknowledged at offset {off} but sits at offset {real}"
                        ));
                    }
                    None => {
                        return Err(format!(
                            "acknowledged append of {v:#x} (offset {off}) is lost"
                        ));
                    }
                },
                (OpKind::Append(v), Outcome::Failed) => {
                    if let Some(off) = at.get(&v) {
                        return Err(format!(
                            "append of {v:#x} failed, yet the log holds it at offset {off}"
                        ));
                    }
                }
                (OpKind::Append(v), _) => {
                    if let Some(&off) = at.get(&v) {
                        placed.push((2 * off + 1, o.invoke, u64::MAX, i));
                    }
                }
                (OpKind::Read, Outcome::Read { n, hash }) => {
                    if n as usize > log.len() {
                        return Err(format!(
                            "a read saw {n} records but the log holds only {}",
                            log.len()
                        ));
                    }
                    if prefix_hash(n as usize) != hash {
                        return Err(format!(
                            "a read of {n} records saw contents that differ from the log's"
                        ));
                    }
                    placed.push((2 * n, o.invoke, o.complete, i));
                }
                (OpKind::Read, _) => {}
            }
        }
        // (3) real-time order.
        placed.sort_unstable_by_key(|p| p.0);
        let mut suffix_min = u64::MAX;
        let mut suffix_op = usize::MAX;
        let mut i = placed.len();
        while i > 0 {
            // The group of operations at one position.
            let pos = placed[i - 1].0;
            let mut j = i;
            while j > 0 && placed[j - 1].0 == pos {
                j -= 1;
            }
            for p in &placed[j..i] {
                if suffix_min < p.1 {
                    let later = &self.ops[suffix_op];
                    let this = &self.ops[p.3];
                    return Err(format!(
                        "not linearizable: {:?} by client {} completed at {}us, before {:?} by client {} was invoked at {}us, yet it takes effect after it",
                        later.kind,
                        later.client,
                        later.complete,
                        this.kind,
                        this.client,
                        this.invoke
                    ));
                }
            }
            for p in &placed[j..i] {
                if p.2 < suffix_min {
                    suffix_min = p.2;
                    suffix_op = p.3;
                }
            }
            i = j;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::mix;

    fn hashes(log: &[u64]) -> impl Fn(usize) -> u64 + '_ {
        move |n| log[..n].iter().fold(0, |h, v| mix(h, *v))
    }

    fn op(kind: OpKind, invoke: u64, complete: u64, outcome: Outcome) -> Op {
        Op {
            client: 0,
            kind,
            invoke,
            complete,
            outcome,
        }
    }

    #[test]
    fn a_correct_history_passes() {
        let log = vec![10, 11, 12];
        let h = hashes(&log);
        let hist = History {
            ops: vec![
                op(OpKind::Append(10), 0, 5, Outcome::Appended(0)),
                op(OpKind::Append(11), 1, 6, Outcome::Appended(1)),
                op(OpKind::Read, 7, 8, Outcome::Read { n: 2, hash: h(2) }),
                op(OpKind::Append(12), 2, u64::MAX, Outcome::Unknown),
                op(OpKind::Append(13), 3, 4, Outcome::Failed),
                op(OpKind::Read, 9, 10, Outcome::Read { n: 3, hash: h(3) }),
            ],
        };
        hist.check(&log, &h).unwrap();
    }

    #[test]
    fn each_kind_of_anomaly_is_caught() {
        let log = vec![10, 11];
        let h = hashes(&log);
        let cases: Vec<(Vec<Op>, &str)> = vec![
            (
                vec![
                    op(OpKind::Append(10), 0, 1, Outcome::Appended(0)),
                    op(OpKind::Append(11), 0, 1, Outcome::Appended(0)),
                ],
                "sits at offset",
            ),
            (
                vec![
                    op(OpKind::Append(10), 0, 1, Outcome::Appended(0)),
                    op(OpKind::Append(11), 0, 1, Outcome::Unknown),
                    op(OpKind::Append(99), 0, 1, Outcome::Appended(5)),
                ],
                "lost",
            ),
            (
                vec![
                    op(OpKind::Append(10), 0, 1, Outcome::Failed),
                    op(OpKind::Append(11), 0, 1, Outcome::Unknown),
                ],
                "failed, yet",
            ),
            (
                vec![op(OpKind::Append(10), 0, 1, Outcome::Unknown)],
                "no client appended",
            ),
            // 11 completed before 10 was invoked, yet 10 sits at a lower offset.
            (
                vec![
                    op(OpKind::Append(11), 0, 1, Outcome::Appended(1)),
                    op(OpKind::Append(10), 2, 3, Outcome::Appended(0)),
                ],
                "not linearizable",
            ),
            // A read that completed before an append it saw was invoked.
            (
                vec![
                    op(OpKind::Read, 0, 1, Outcome::Read { n: 1, hash: h(1) }),
                    op(OpKind::Append(10), 2, 3, Outcome::Appended(0)),
                    op(OpKind::Append(11), 2, 3, Outcome::Appended(1)),
                ],
                "not linearizable",
            ),
            // A stale read: the append of 11 completed before it began.
            (
                vec![
                    op(OpKind::Append(10), 0, 1, Outcome::Appended(0)),
                    op(OpKind::Append(11), 0, 2, Outcome::Appended(1)),
                    op(OpKind::Read, 3, 4, Outcome::Read { n: 1, hash: h(1) }),
                ],
                "not linearizable",
            ),
            // Reads going back in time.
            (
                vec![
                    op(OpKind::Append(10), 0, 1, Outcome::Appended(0)),
                    op(OpKind::Append(11), 0, 1, Outcome::Appended(1)),
                    op(OpKind::Read, 2, 3, Outcome::Read { n: 2, hash: h(2) }),
                    op(OpKind::Read, 4, 5, Outcome::Read { n: 1, hash: h(1) }),
                ],
                "not linearizable",
            ),
            (
                vec![
                    op(OpKind::Append(10), 0, 1, Outcome::Appended(0)),
                    op(OpKind::Append(11), 0, 1, Outcome::Appended(1)),
                    op(OpKind::Read, 2, 3, Outcome::Read { n: 2, hash: 7 }),
                ],
                "contents",
            ),
            (
                vec![
                    op(OpKind::Append(10), 0, 1, Outcome::Appended(0)),
                    op(OpKind::Append(11), 0, 1, Outcome::Appended(1)),
                    op(OpKind::Read, 2, 3, Outcome::Read { n: 3, hash: 0 }),
                ],
                "holds only",
            ),
        ];
        for (i, (ops, want)) in cases.into_iter().enumerate() {
            let err = History { ops }.check(&log, &h).unwrap_err();
            assert!(err.contains(want), "case {i}: {err}");
        }
        assert!(
            History::default()
                .check(&[5, 5], &h)
                .unwrap_err()
                .contains("twice")
        );
    }
}
