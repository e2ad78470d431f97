//! The history checker, run after healing.
//!
//! Inputs: the client history and every node's committed log (read after
//! the cluster converged). The log is append-only with dense offsets and
//! every appended value is unique, so linearizability reduces to checks
//! against the final log (the same argument as keel-sim's `history.rs`):
//!
//! 1. Every node holds the same record at every offset (divergent offsets),
//!    and every node holds the whole log (none lags after healing).
//! 2. Every value in the log was appended by some client (no phantoms).
//! 3. Every acknowledged append is in the log exactly once (lost,
//!    duplicated), at the offset it was acknowledged with.
//! 4. No append that definitely failed is in the log.
//! 5. Real-time order: an append acknowledged before another was invoked
//!    has the lower offset.
//! 6. Reads: every record a read returned is the record the final log
//!    holds at that offset, at offsets `from, from+1, ...` with no gap; the
//!    append of each value returned was invoked before the read returned;
//!    and a read that stopped at `e < to` was not invoked after an append
//!    at an offset in `[e, to)` was acknowledged (a linearizable read
//!    sees every acknowledged append before its invocation).
//! 7. After every heal, the cluster acknowledged an append again within
//!    the bound.

use std::collections::HashMap;

use serde::Serialize;

use crate::history::{Call, Op, Outcome};

/// One nemesis phase of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub nemesis: String,
    pub description: String,
    pub start_us: u64,
    pub end_us: u64,
    /// Time from the heal to the first acknowledged append; `None` if the
    /// bound passed first.
    pub recovery_ms: Option<u64>,
}

/// Counts per nemesis (or in total).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Row {
    pub nemesis: String,
    pub phases: usize,
    pub ops: u64,
    pub acknowledged: u64,
    pub failed: u64,
    pub unknown: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub divergent: u64,
    pub bad_reads: u64,
    pub misordered: u64,
    pub longest_unavailable_ms: u64,
    pub max_recovery_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub rows: Vec<Row>,
    pub total: Row,
    /// Human-readable descriptions (the first 100).
    pub violations: Vec<String>,
    pub violation_count: u64,
    pub log_len: u64,
    pub ok: bool,
}

/// A node's committed log as read after healing, or why it could not be.
pub type NodeLog = (usize, Result<Vec<(u64, String)>, String>);

struct Acc {
    rows: Vec<Row>,
    by_name: HashMap<String, usize>,
    phase_row: Vec<usize>,
    violations: Vec<String>,
    count: u64,
}

impl Acc {
    fn violation(&mut self, s: String) {
        self.count += 1;
        if self.violations.len() < 100 {
            self.violations.push(s);
        }
    }

    fn row(&mut self, phase: usize) -> &mut Row {
        let i = self
            .phase_row
            .get(phase)
            .or(self.phase_row.last())
            .copied()
            .unwrap_or(0);
        &mut self.rows[i]
    }
}

pub fn check(
    ops: &[Op],
    logs: &[NodeLog],
    phases: &[Phase],
    recovery_bound_ms: u64,
    extra_violations: Vec<String>,
) -> Report {
    let mut acc = Acc {
        rows: Vec::new(),
        by_name: HashMap::new(),
        phase_row: Vec::new(),
        violations: Vec::new(),
        count: 0,
    };
    for p in phases {
        let i = match acc.by_name.get(&p.nemesis) {
            Some(&i) => i,
            None => {
                acc.rows.push(Row {
                    nemesis: p.nemesis.clone(),
                    ..Row::default()
                });
                acc.by_name.insert(p.nemesis.clone(), acc.rows.len() - 1);
                acc.rows.len() - 1
            }
        };
        acc.phase_row.push(i);
        acc.rows[i].phases += 1;
    }
    if acc.rows.is_empty() {
        acc.rows.push(Row {
            nemesis: "none".into(),
            ..Row::default()
        });
    }
    for v in extra_violations {
        acc.violation(v);
    }

    // 1. The reference log (the longest) and agreement of every node.
    let mut reference: Vec<String> = Vec::new();
    for (id, log) in logs {
        match log {
            Err(e) => acc.violation(format!(
                "node {id}: its log could not be read after healing: {e}"
            )),
            Ok(recs) => {
                for (i, (off, _)) in recs.iter().enumerate() {
                    if *off != i as u64 {
                        acc.violation(format!(
                            "node {id}: record {i} of its log has offset {off} (offsets must be dense)"
                        ));
                        break;
                    }
                }
                if recs.len() > reference.len() {
                    reference = recs.iter().map(|(_, v)| v.clone()).collect();
                }
            }
        }
    }
    let appends: HashMap<&str, &Op> = ops
        .iter()
        .filter_map(|o| o.append_value().map(|v| (v, o)))
        .collect();
    let phase_of_value = |v: &str| appends.get(v).map(|o| o.phase).unwrap_or(usize::MAX);
    for (id, log) in logs {
        let Ok(recs) = log else { continue };
        if recs.len() < reference.len() {
            acc.violation(format!(
                "node {id} holds {} records after healing, another node {}",
                recs.len(),
                reference.len()
            ));
        }
    }
    for (o, want) in reference.iter().enumerate() {
        let mut differs = Vec::new();
        for (id, log) in logs {
            if let Ok(recs) = log
                && let Some((_, v)) = recs.get(o)
                && v != want
            {
                differs.push(format!("node {id} has {v:?}"));
            }
        }
        if !differs.is_empty() {
            acc.row(phase_of_value(want)).divergent += 1;
            acc.violation(format!(
                "offset {o}: nodes disagree: the longest log has {want:?}, {}",
                differs.join(", ")
            ));
        }
    }

    // 2-4. Values: phantoms, lost, duplicated, wrong offset, failed.
    let mut positions: HashMap<&str, Vec<u64>> = HashMap::new();
    for (o, v) in reference.iter().enumerate() {
        positions.entry(v.as_str()).or_default().push(o as u64);
    }
    for (v, pos) in &positions {
        match appends.get(v) {
            None => acc.violation(format!(
                "offset {}: value {v:?} was never appended by any client",
                pos[0]
            )),
            Some(op) if pos.len() > 1 => {
                acc.row(op.phase).duplicated += pos.len() as u64 - 1;
                acc.violation(format!(
                    "value {v:?} is in the log {} times, at {pos:?}",
                    pos.len()
                ));
            }
            _ => {}
        }
    }
    // Acknowledgement times per offset, for the read checks.
    let mut acked_at: Vec<u64> = vec![u64::MAX; reference.len()];
    for op in ops {
        acc.row(op.phase).ops += 1;
        match op.outcome {
            Outcome::Ok => {}
            Outcome::Fail => acc.row(op.phase).failed += 1,
            Outcome::Unknown => acc.row(op.phase).unknown += 1,
        }
        let Call::Append { value, offset } = &op.call else {
            continue;
        };
        let pos = positions.get(value.as_str());
        match op.outcome {
            Outcome::Ok => {
                acc.row(op.phase).acknowledged += 1;
                match (pos, offset) {
                    (None, _) => {
                        acc.row(op.phase).lost += 1;
                        acc.violation(format!(
                            "acknowledged append {value:?} (offset {offset:?}, acked at {} ms) is lost",
                            op.complete_us / 1000
                        ));
                    }
                    (Some(p), Some(off)) if !p.contains(off) => acc.violation(format!(
                        "append {value:?} was acknowledged at offset {off} but is at {p:?}"
                    )),
                    (Some(_), Some(off)) => {
                        if let Some(t) = acked_at.get_mut(*off as usize) {
                            *t = (*t).min(op.complete_us);
                        }
                    }
                    _ => {}
                }
            }
            Outcome::Fail => {
                if let Some(p) = pos {
                    acc.violation(format!(
                        "append {value:?} failed definitely ({}) but is in the log at {p:?}",
                        op.error.as_deref().unwrap_or("?")
                    ));
                }
            }
            Outcome::Unknown => {}
        }
    }

    // 5. Real-time order of acknowledged appends.
    let mut acked: Vec<(&Op, u64)> = ops
        .iter()
        .filter(|o| o.outcome == Outcome::Ok)
        .filter_map(|o| match &o.call {
            Call::Append {
                offset: Some(off), ..
            } => Some((o, *off)),
            _ => None,
        })
        .collect();
    let mut by_complete = acked.clone();
    by_complete.sort_by_key(|(o, _)| o.complete_us);
    acked.sort_by_key(|(o, _)| o.invoke_us);
    let mut i = 0;
    let mut max_before: Option<(u64, &Op)> = None;
    for (b, off) in &acked {
        while i < by_complete.len() && by_complete[i].0.complete_us < b.invoke_us {
            let (a, aoff) = by_complete[i];
            if max_before.is_none_or(|(m, _)| aoff > m) {
                max_before = Some((aoff, a));
            }
            i += 1;
        }
        if let Some((m, a)) = max_before
            && m >= *off
        {
            acc.row(b.phase).misordered += 1;
            acc.violation(format!(
                "{:?} was acknowledged at offset {m} before {:?} was invoked, which got the lower offset {off}",
                a.append_value().unwrap_or("?"),
                b.append_value().unwrap_or("?")
            ));
        }
    }

    // 6. Reads.
    for op in ops {
        let Call::Read { from, to, records } = &op.call else {
            continue;
        };
        if op.outcome != Outcome::Ok {
            continue;
        }
        let mut bad = Vec::new();
        for (k, (off, v)) in records.iter().enumerate() {
            if *off != from + k as u64 {
                bad.push(format!(
                    "record {k} has offset {off}, expected {}",
                    from + k as u64
                ));
                break;
            }
            match reference.get(*off as usize) {
                Some(r) if r == v => {}
                Some(r) => bad.push(format!("offset {off} read {v:?}, the log holds {r:?}")),
                None => bad.push(format!(
                    "offset {off} read {v:?}, past the end of the final log"
                )),
            }
            if let Some(a) = appends.get(v.as_str())
                && a.invoke_us > op.complete_us
            {
                bad.push(format!("read {v:?} before its append was invoked"));
            }
        }
        let end = from + records.len() as u64;
        if end < *to {
            let hi = (*to).min(reference.len() as u64);
            for o in end..hi {
                let t = acked_at[o as usize];
                if t < op.invoke_us {
                    bad.push(format!(
                        "returned up to offset {end} but offset {o} was acknowledged {} ms before the read began",
                        (op.invoke_us - t) / 1000
                    ));
                    break;
                }
            }
        }
        if !bad.is_empty() {
            acc.row(op.phase).bad_reads += 1;
            acc.violation(format!(
                "read [{from}, {to}) by {} at {} ms: {}",
                op.client,
                op.invoke_us / 1000,
                bad.join("; ")
            ));
        }
    }

    // 7. Availability per phase and recovery after each heal.
    let mut ack_times: Vec<u64> = acked.iter().map(|(o, _)| o.complete_us).collect();
    ack_times.sort_unstable();
    for (pi, p) in phases.iter().enumerate() {
        let lo = ack_times.partition_point(|&t| t < p.start_us);
        let hi = ack_times.partition_point(|&t| t <= p.end_us);
        let mut prev = p.start_us;
        let mut longest = 0;
        for &t in &ack_times[lo..hi] {
            longest = longest.max(t - prev);
            prev = t;
        }
        longest = longest.max(p.end_us.saturating_sub(prev));
        let row = acc.row(pi);
        row.longest_unavailable_ms = row.longest_unavailable_ms.max(longest / 1000);
        match p.recovery_ms {
            Some(ms) => row.max_recovery_ms = Some(row.max_recovery_ms.unwrap_or(0).max(ms)),
            None => {
                acc.violation(format!(
                    "phase {pi} ({}: {}): no append was acknowledged within {recovery_bound_ms} ms of the heal",
                    p.nemesis, p.description
                ));
            }
        }
    }

    let mut total = Row {
        nemesis: "total".into(),
        ..Row::default()
    };
    for r in &acc.rows {
        total.phases += r.phases;
        total.ops += r.ops;
        total.acknowledged += r.acknowledged;
        total.failed += r.failed;
        total.unknown += r.unknown;
        total.lost += r.lost;
        total.duplicated += r.duplicated;
        total.divergent += r.divergent;
        total.bad_reads += r.bad_reads;
        total.misordered += r.misordered;
        total.longest_unavailable_ms = total.longest_unavailable_ms.max(r.longest_unavailable_ms);
        if let Some(m) = r.max_recovery_ms {
            total.max_recovery_ms = Some(total.max_recovery_ms.unwrap_or(0).max(m));
        }
    }
    Report {
        rows: acc.rows,
        total,
        ok: acc.count == 0,
        violations: acc.violations,
        violation_count: acc.count,
        log_len: reference.len() as u64,
    }
}

impl Report {
    /// The summary as a Markdown table, then the violations.
    pub fn to_markdown(&self) -> String {
        let mut s = String::from(
            "| nemesis | phases | ops | acknowledged | failed | unknown | lost | duplicated | divergent offsets | bad reads | misordered | longest unavailability | max recovery after heal |\n\
             | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        );
        for r in self.rows.iter().chain([&self.total]) {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} ms | {} |\n",
                r.nemesis,
                r.phases,
                r.ops,
                r.acknowledged,
                r.failed,
                r.unknown,
                r.lost,
                r.duplicated,
                r.divergent,
                r.bad_reads,
                r.misordered,
                r.longest_unavailable_ms,
                r.max_recovery_ms
                    .map(|m| format!("{m} ms"))
                    .unwrap_or_else(|| "-".into()),
            ));
        }
        s.push_str(&format!("\nfinal log: {} records\n", self.log_len));
        if self.ok {
            s.push_str("result: PASS (no violations)\n");
        } else {
            s.push_str(&format!(
                "result: FAIL ({} violations)\n",
                self.violation_count
            ));
            for v in self.violations.iter().take(20) {
                s.push_str(&format!("- {v}\n"));
            }
            if self.violation_count > 20 {
                s.push_str(&format!(
                    "- ... and {} more (the first 100 are in --summary-json)\n",
                    self.violation_count - 20
                ));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(id: u64, v: &str, t0: u64, t1: u64, outcome: Outcome, off: Option<u64>) -> Op {
        Op {
            id,
            client: "w0".into(),
            phase: 0,
            invoke_us: t0,
            complete_us: t1,
            outcome,
            call: Call::Append {
                value: v.into(),
                offset: off,
            },
            error: None,
        }
    }

    fn read(id: u64, from: u64, to: u64, t0: u64, t1: u64, recs: &[(u64, &str)]) -> Op {
        Op {
            id,
            client: "w1".into(),
            phase: 0,
            invoke_us: t0,
            complete_us: t1,
            outcome: Outcome::Ok,
            call: Call::Read {
                from,
                to,
                records: recs.iter().map(|(o, v)| (*o, v.to_string())).collect(),
            },
            error: None,
        }
    }

    fn log(vals: &[&str]) -> Result<Vec<(u64, String)>, String> {
        Ok(vals
            .iter()
            .enumerate()
            .map(|(i, v)| (i as u64, v.to_string()))
            .collect())
    }

    fn phase() -> Vec<Phase> {
        vec![Phase {
            nemesis: "test".into(),
            description: String::new(),
            start_us: 0,
            end_us: 100,
            recovery_ms: Some(1),
        }]
    }

    fn run(ops: &[Op], logs: &[NodeLog]) -> Report {
        check(ops, logs, &phase(), 1000, Vec::new())
    }

    #[test]
    fn a_clean_history_passes() {
        let ops = vec![
            append(1, "a", 0, 10, Outcome::Ok, Some(0)),
            append(2, "b", 11, 20, Outcome::Ok, Some(1)),
            append(3, "c", 21, 30, Outcome::Unknown, None),
            read(4, 0, 5, 25, 31, &[(0, "a"), (1, "b")]),
        ];
        let r = run(&ops, &[(1, log(&["a", "b"])), (2, log(&["a", "b"]))]);
        assert!(r.ok, "{:?}", r.violations);
    }

    #[test]
    fn lost_duplicated_divergent_and_phantoms_are_reported() {
        let ops = vec![
            append(1, "a", 0, 10, Outcome::Ok, Some(0)),
            append(2, "b", 11, 20, Outcome::Ok, Some(1)),
            append(3, "c", 21, 30, Outcome::Ok, Some(2)),
            append(4, "d", 21, 30, Outcome::Fail, None),
        ];
        let r = run(
            &ops,
            &[
                (1, log(&["a", "b", "b", "d", "x"])),
                (2, log(&["a", "z", "b", "d", "x"])),
            ],
        );
        assert!(!r.ok);
        assert_eq!(r.total.lost, 1, "c is lost");
        assert_eq!(r.total.duplicated, 1, "b twice");
        assert_eq!(r.total.divergent, 1, "offset 1");
        let text = r.violations.join("\n");
        assert!(text.contains("never appended"), "{text}");
        assert!(text.contains("failed definitely"), "{text}");
    }

    #[test]
    fn real_time_order_and_stale_reads_are_caught() {
        // b acknowledged (at 20) before c was invoked (at 25), yet c got the
        // lower offset.
        let ops = vec![
            append(1, "a", 0, 10, Outcome::Ok, Some(0)),
            append(2, "b", 11, 20, Outcome::Ok, Some(2)),
            append(3, "c", 25, 30, Outcome::Ok, Some(1)),
            // Invoked after a and c were acknowledged, sees only a.
            read(4, 0, 3, 40, 50, &[(0, "a")]),
            // Reads a value that is not at that offset.
            read(5, 1, 2, 40, 50, &[(1, "b")]),
        ];
        let r = run(&ops, &[(1, log(&["a", "c", "b"]))]);
        assert_eq!(r.total.misordered, 1);
        assert_eq!(r.total.bad_reads, 2);
    }

    #[test]
    fn a_lagging_node_and_no_recovery_are_violations() {
        let ops = vec![append(1, "a", 0, 10, Outcome::Ok, Some(0))];
        let mut ph = phase();
        ph[0].recovery_ms = None;
        let r = check(
            &ops,
            &[(1, log(&["a"])), (2, log(&[]))],
            &ph,
            1000,
            Vec::new(),
        );
        assert_eq!(r.violation_count, 2, "{:?}", r.violations);
    }
}
