//! Tests of the group core on one node over in-memory storage: the
//! acknowledgement path, the mark and what is served, a full disk, and a
//! restart. Clusters under faults are keel-sim's job (it drives this same
//! core).

use std::io::Read;

use bytes::Bytes;
use keel_raft::{Config, HardState, MemStorage, Membership, SnapshotMeta};

use super::*;
use crate::state_machine::{Command, SnapshotWriter};

/// Sums the u64 records it applies; responds with the running total.
#[derive(Default, Clone)]
struct Sum {
    total: u64,
    applied: u64,
}

impl StateMachine for Sum {
    type Response = u64;
    fn apply(&mut self, cmd: Command<'_>) -> u64 {
        let v = u64::from_le_bytes(cmd.data[..8].try_into().unwrap());
        self.total += v;
        self.applied += 1;
        self.total
    }
    fn snapshot(&mut self) -> SnapshotWriter {
        let t = self.total;
        Box::new(move |w| w.write_all(&t.to_le_bytes()))
    }
    fn restore(&mut self, _meta: &SnapshotMeta, data: &mut dyn Read) -> std::io::Result<()> {
        let mut b = [0u8; 8];
        data.read_exact(&mut b)?;
        self.total = u64::from_le_bytes(b);
        Ok(())
    }
}

fn rec(v: u64) -> Bytes {
    Bytes::copy_from_slice(&v.to_le_bytes())
}

/// A single-voter group over a MemStorage holding the bootstrap entry.
fn single(storage: MemStorage, mark: Watermark) -> GroupCore<MemStorage, Sum> {
    let mut st = storage;
    if st.last_index() == 0 {
        st.append(&[keel_raft::bootstrap_entry(&Membership::new([1], []))]);
    }
    let start = StartState {
        hard_state: HardState { term: 1, vote: 0 },
        snapshot: None,
        mark,
    };
    GroupCore::new(
        Config::new(1, 7),
        CoreSettings::default(),
        st,
        Sum::default(),
        start,
        42,
    )
    .unwrap()
}

/// Carries out outputs like a driver whose disk completes every write at
/// once, until nothing is left; returns every answer.
fn settle(core: &mut GroupCore<MemStorage, Sum>) -> Vec<(Token, Result<Answer<u64>, GroupError>)> {
    let mut done = Vec::new();
    for _ in 0..100 {
        let out = core.poll(1000);
        if out.is_empty() {
            return done;
        }
        for w in out.writes {
            core.storage_mut().append(&w.entries);
            core.write_done(w.id, WriteOutcome::Done);
        }
        if let Some(m) = out.mark {
            core.mark_done(m, true);
        }
        done.extend(out.done);
    }
    panic!("the core never settled");
}

#[test]
fn proposals_that_arrive_together_share_an_entry_and_get_their_own_responses() {
    let mut core = single(MemStorage::new(), Watermark::default());
    settle(&mut core);
    assert_eq!(core.raft().role(), keel_raft::Role::Leader);
    let before = core.raft().storage().last_index();
    core.propose(1, &[rec(5), rec(6)]);
    core.propose(2, &[rec(10)]);
    let done = settle(&mut core);
    assert_eq!(core.raft().storage().last_index(), before + 1, "one entry");
    let mut answers: Vec<_> = done
        .into_iter()
        .map(|(t, r)| match r {
            Ok(Answer::Applied(v)) => (t, v),
            other => panic!("token {t}: {other:?}"),
        })
        .collect();
    answers.sort();
    assert_eq!(answers, vec![(1, vec![5, 11]), (2, vec![21])]);
}

#[test]
fn what_is_served_waits_for_the_durable_mark() {
    let mut core = single(MemStorage::new(), Watermark::default());
    settle(&mut core);
    core.propose(1, &[rec(1)]);
    // Carry out the write, but not the mark.
    let mut mark = None;
    for _ in 0..10 {
        let out = core.poll(1000);
        for w in out.writes {
            core.storage_mut().append(&w.entries);
            core.write_done(w.id, WriteOutcome::Done);
        }
        mark = mark.or(out.mark);
    }
    let applied = core.status().applied;
    assert!(applied.end_offset == 1, "applied {applied:?}");
    assert!(core.served().end_offset < 1, "served before the mark");
    core.read(9);
    let out = core.poll(1000);
    assert!(
        !out.done.iter().any(|(t, _)| *t == 9),
        "a linearizable read waits for the mark"
    );
    let m = mark.expect("a mark write was asked for");
    core.mark_done(m, true);
    assert_eq!(core.served().end_offset, 1);
    let done = settle(&mut core);
    assert!(
        matches!(done.as_slice(), [(9, Ok(Answer::ReadReady))]),
        "{done:?}"
    );
}

#[test]
fn a_full_disk_refuses_proposals_and_resumes_once_writes_go_through() {
    let mut core = single(MemStorage::new(), Watermark::default());
    settle(&mut core);
    core.propose(1, &[rec(1)]);
    let out = core.poll(1000);
    let w = out.writes.into_iter().next().expect("a write");
    core.write_done(w.id, WriteOutcome::NoSpace("no space".into()));
    core.propose(2, &[rec(2)]);
    let out = core.poll(1000);
    assert!(matches!(
        out.done.as_slice(),
        [(2, Err(GroupError::DiskFull(_)))]
    ));
    assert!(
        out.writes.is_empty(),
        "nothing goes out while the disk is full"
    );
    for _ in 0..CoreSettings::default().disk_full_retry_ticks {
        core.tick();
    }
    let done = settle(&mut core);
    assert!(
        done.iter()
            .any(|(t, r)| *t == 1 && matches!(r, Ok(Answer::Applied(v)) if v == &vec![1])),
        "the deferred write went through and was acknowledged: {done:?}"
    );
    assert!(core.status().disk_full.is_none());
}

#[test]
fn a_restart_replays_the_log_up_to_the_mark_and_serves_it_at_once() {
    let mut core = single(MemStorage::new(), Watermark::default());
    settle(&mut core);
    for i in 0..5 {
        core.propose(i, &[rec(i + 1)]);
        settle(&mut core);
    }
    let served = core.served();
    assert_eq!(served.end_offset, 5);
    let storage = core.raft().storage().clone();
    let again = single(storage, served);
    assert_eq!(again.served(), served);
    assert_eq!(again.state_machine().total, 15);
    assert_eq!(again.state_machine().applied, 5);
}

#[test]
fn a_preferred_leader_must_be_a_voter_and_is_replicated_as_a_command() {
    let mut core = single(MemStorage::new(), Watermark::default());
    settle(&mut core);
    core.set_preferred_leader(1, Some(9), 1000);
    let out = core.poll(1000);
    assert!(matches!(
        out.done.as_slice(),
        [(1, Err(GroupError::Invalid(_)))]
    ));
    core.set_preferred_leader(2, Some(1), 1000);
    let done = settle(&mut core);
    assert!(
        matches!(done.as_slice(), [(2, Ok(Answer::Done))]),
        "{done:?}"
    );
    assert_eq!(core.status().preferred_leader, Some(1));
    assert_eq!(core.raft().preferred_leaders(), &[1]);
}
