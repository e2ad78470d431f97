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

/// A follower of a three-voter group (node 2), over a MemStorage holding the
/// bootstrap entry.
fn follower() -> GroupCore<MemStorage, Sum> {
    let mut st = MemStorage::new();
    st.append(&[keel_raft::bootstrap_entry(&Membership::new([1, 2, 3], []))]);
    let start = StartState {
        hard_state: HardState { term: 1, vote: 0 },
        snapshot: None,
        mark: Watermark::default(),
    };
    GroupCore::new(
        Config::new(2, 7),
        CoreSettings::default(),
        st,
        Sum::default(),
        start,
        42,
    )
    .unwrap()
}

/// The whole snapshot (one chunk) at `index` of a Sum whose total is
/// `total`, from leader 1 in term 2.
fn snapshot_from_leader(index: u64, total: u64) -> keel_raft::Message {
    let data = Bytes::copy_from_slice(&total.to_le_bytes());
    keel_raft::Message {
        group: 7,
        from: 1,
        to: 2,
        term: 2,
        body: keel_raft::MessageBody::Snapshot(keel_raft::SnapshotChunk {
            meta: SnapshotMeta {
                index,
                term: 2,
                membership: Membership::new([1, 2, 3], []),
                next_offset: index,
                size: data.len() as u64,
            },
            offset: 0,
            data,
            done: true,
        }),
    }
}

/// Carries out an output holding an install as a driver whose disk makes
/// the install durable with its write: restores, resets the log, and
/// returns the install's write (not yet reported).
fn install_and_keep_write(core: &mut GroupCore<MemStorage, Sum>) -> Write {
    let out = core.poll(1000);
    let meta = out.install.expect("a snapshot to install");
    let chunk: Vec<u8> = out.chunks.iter().flat_map(|c| c.data.to_vec()).collect();
    core.restore(&meta, &mut chunk.as_slice()).unwrap();
    core.storage_mut()
        .reset_to_snapshot(meta.clone(), Bytes::from(chunk));
    assert!(
        out.mark.is_none(),
        "no mark while the install is not durable"
    );
    let w = out
        .writes
        .into_iter()
        .find(|w| w.install.as_ref().is_some_and(|m| m.index == meta.index))
        .expect("the install's write");
    for e in &w.entries {
        core.storage_mut().append(std::slice::from_ref(e));
    }
    w
}

#[test]
fn no_mark_passes_an_install_whose_write_is_still_in_flight() {
    // Two snapshots installed back to back; the first one's write completes
    // while the second's is in flight. The mark (what a restart serves at
    // once) must wait for the second: a crash now leaves the first on disk.
    let mut core = follower();
    settle(&mut core);
    core.step(snapshot_from_leader(10, 5)).unwrap();
    let first = install_and_keep_write(&mut core);
    core.step(snapshot_from_leader(20, 9)).unwrap();
    let second = install_and_keep_write(&mut core);
    assert_eq!(core.status().applied.index, 20);
    core.write_done(first.id, WriteOutcome::Done);
    let out = core.poll(1000);
    assert!(
        out.mark.is_none_or(|m| m.index <= 10),
        "a mark past the install still in flight: {:?}",
        out.mark
    );
    core.write_done(second.id, WriteOutcome::Done);
    let out = core.poll(1000);
    assert_eq!(out.mark.map(|m| m.index), Some(20));
}

#[test]
fn writes_that_waited_for_space_do_not_append_below_a_snapshot_installed_meanwhile() {
    let mut core = follower();
    settle(&mut core);
    // The leader of term 2 appends its no-op: that write is refused for
    // want of space and waits.
    let noop = keel_format::Batch::control(keel_format::EntryKind::Noop, &[], 2, 2, 0, 0);
    core.step(keel_raft::Message {
        group: 7,
        from: 1,
        to: 2,
        term: 2,
        body: keel_raft::MessageBody::Append(keel_raft::Append {
            prev_index: 1,
            prev_term: 1,
            commit: 1,
            entries: vec![noop],
        }),
    })
    .unwrap();
    let out = core.poll(1000);
    let w = out
        .writes
        .into_iter()
        .find(|w| !w.entries.is_empty())
        .expect("the no-op's write");
    core.write_done(w.id, WriteOutcome::NoSpace("no space".into()));
    // Meanwhile the leader sends a snapshot at 20: it is installed (the
    // driver resets the log to it at once), its write waits too.
    core.step(snapshot_from_leader(20, 9)).unwrap();
    let out = core.poll(1000);
    let meta = out.install.expect("a snapshot to install");
    let chunk: Vec<u8> = out.chunks.iter().flat_map(|c| c.data.to_vec()).collect();
    core.restore(&meta, &mut chunk.as_slice()).unwrap();
    core.storage_mut()
        .reset_to_snapshot(meta, Bytes::from(chunk));
    assert!(out.writes.is_empty(), "writes wait for space");
    for _ in 0..CoreSettings::default().disk_full_retry_ticks {
        core.tick();
    }
    let out = core.poll(1000);
    assert!(!out.writes.is_empty(), "the writes are tried again");
    for w in &out.writes {
        for e in &w.entries {
            assert!(
                e.index() > 20,
                "write {} appends entry {} to a log the snapshot at 20 replaced",
                w.id,
                e.index()
            );
        }
    }
    assert!(
        out.writes
            .iter()
            .any(|w| w.hard_state.is_some_and(|h| h.term == 2)),
        "the term learned before the install is still made durable: {:?}",
        out.writes
    );
}

#[test]
fn restating_a_members_address_keeps_its_recorded_incarnation() {
    let mut m = Membership::new([1], [2]);
    let recorded = MemberInfo {
        incarnation: 77,
        peer_addr: "a:1".into(),
        client_addr: "a:0".into(),
    };
    m.info.insert(2, recorded.encode());
    let given = MemberInfo {
        incarnation: 0,
        peer_addr: "b:1".into(),
        client_addr: String::new(),
    };
    let req = ChangeRequest {
        changes: vec![MemberChange::AddVoter {
            id: 2,
            info: Some(given),
        }],
        wait_for_catch_up: true,
    };
    let (_, rest) = membership::plan_for_tests(&m, &req).unwrap().unwrap();
    let info = MemberInfo::decode(rest.info[&2].as_ref().unwrap()).unwrap();
    assert_eq!(info.incarnation, 77, "the incarnation must survive");
    assert_eq!(info.peer_addr, "b:1");
    assert_eq!(info.client_addr, "a:0");
}
