//! The core alone: three nodes in one thread, no runtime, batches of
//! proposals per round. Separates the consensus core's cost from the
//! harness's.
//!
//! Usage: `core_loop [batch] [entries]` (defaults 64 and 2,000,000).
use std::time::Instant;

use keel_raft::*;

fn main() {
    let batch: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    let mut nodes: Vec<Raft<MemStorage>> = (1..=3)
        .map(|id| {
            let init = InitialState {
                membership: Membership::new(1..=3, []),
                ..Default::default()
            };
            let mut c = Config::new(id, 1);
            c.max_inflight_msgs = 512;
            Raft::new(c, MemStorage::new(), init, id).unwrap()
        })
        .collect();
    nodes[0].start_election();
    let mut queue: Vec<Message> = Vec::new();
    let mut applied = 0u64;
    let t = Instant::now();
    // Entries to run; a second argument shortens it (for an instruction
    // count under valgrind, say).
    let total: u64 = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000_000);
    let mut proposed = 0u64;
    while applied < total {
        if nodes[0].role() == Role::Leader && proposed < applied + 1024 {
            for _ in 0..batch {
                nodes[0].propose(BatchBuilder::single(b""), 0).unwrap();
                proposed += 1;
            }
        }
        for (i, n) in nodes.iter_mut().enumerate() {
            while n.has_ready() {
                let rd = n.ready().unwrap();
                if let Some(id) = rd.persist_id {
                    n.storage_mut().append_owned(rd.entries);
                    n.on_persisted(id).unwrap();
                }
                queue.extend(rd.messages);
                if i == 0 {
                    applied += rd
                        .committed
                        .iter()
                        .filter(|e| e.kind() == EntryKind::Data)
                        .count() as u64;
                }
                let first = n.storage().first_index();
                let last = n.status().applied;
                if last > first + 100_000 {
                    n.storage_mut().compact(last - 50_000).unwrap();
                }
            }
        }
        for m in queue.drain(..) {
            let to = m.to as usize - 1;
            nodes[to].step(m).unwrap();
        }
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "batch {batch}: {:.0} entries/s ({:.2} us/entry, all three nodes on one thread)",
        applied as f64 / s,
        s * 1e6 / applied as f64
    );
}
