//! Pipelining, the flow-control window, batching, fast backtracking, lost
//! appends, and commit bookkeeping.

use super::harness::*;
use crate::*;

fn appends_to(msgs: &[Message], to: NodeId) -> Vec<&Append> {
    msgs.iter()
        .filter(|m| m.to == to)
        .filter_map(|m| match &m.body {
            MessageBody::Append(a) => Some(a),
            _ => None,
        })
        .collect()
}

/// A leader of 3 whose followers have acknowledged the no-op (Replicate).
fn replicating_leader(tweak: impl Fn(&mut Config)) -> Raft<MemStorage> {
    let mut r = raft_with_log(1, 3, &[], 0, tweak);
    make_leader(&mut r);
    drain(&mut r);
    let t = r.term();
    for id in [2, 3] {
        r.step(msg(
            id,
            1,
            t,
            MessageBody::AppendResponse(AppendResponse {
                index: 1,
                reject: None,
            }),
        ))
        .unwrap();
    }
    drain(&mut r);
    r
}

#[test]
fn proposals_between_readies_travel_in_one_append() {
    let mut r = replicating_leader(|_| {});
    for i in 0..50u32 {
        r.propose(BatchBuilder::single(&i.to_le_bytes()), 0)
            .unwrap();
    }
    let out = drain(&mut r);
    let a = appends_to(&out, 2);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].entries.len(), 50);
    let offsets: Vec<u64> = a[0].entries.iter().map(|e| e.base_offset()).collect();
    assert_eq!(
        offsets,
        (0..50).collect::<Vec<_>>(),
        "user offsets are dense from 0"
    );
}

#[test]
fn inflight_window_bounds_messages_and_bytes() {
    let mut r = replicating_leader(|c| {
        c.max_inflight_msgs = 4;
        c.max_inflight_bytes = 1 << 30;
        c.max_msg_bytes = 1;
    });
    for _ in 0..20 {
        r.propose(BatchBuilder::single(&[7u8; 100]), 0).unwrap();
    }
    let out = drain(&mut r);
    let a = appends_to(&out, 2);
    assert_eq!(
        a.len(),
        4,
        "window of 4 messages (one entry each at this message size)"
    );
    assert!(a.iter().all(|a| a.entries.len() == 1));
    // An acknowledgement of the first two frees two slots.
    let t = r.term();
    r.step(msg(
        2,
        1,
        t,
        MessageBody::AppendResponse(AppendResponse {
            index: 3,
            reject: None,
        }),
    ))
    .unwrap();
    let out = drain(&mut r);
    assert_eq!(appends_to(&out, 2).len(), 2);

    let mut r = replicating_leader(|c| {
        c.max_inflight_msgs = 1000;
        c.max_inflight_bytes = 1000;
        c.max_msg_bytes = 1;
    });
    for _ in 0..40 {
        r.propose(BatchBuilder::single(&[7u8; 200]), 0).unwrap();
    }
    let out = drain(&mut r);
    let a = appends_to(&out, 2);
    let bytes: u64 = a
        .iter()
        .flat_map(|a| &a.entries)
        .map(|e| e.len() as u64)
        .sum();
    assert!(bytes < 1000 + 256, "byte window exceeded: {bytes}");
    assert!(
        a.len() >= 3 && a.len() < 40,
        "window in bytes should stop after a few: {}",
        a.len()
    );
}

#[test]
fn a_large_backlog_is_split_by_message_size() {
    let mut r = replicating_leader(|c| c.max_msg_bytes = 1024);
    for _ in 0..30 {
        r.propose(BatchBuilder::single(&[1u8; 200]), 0).unwrap();
    }
    let out = drain(&mut r);
    let a = appends_to(&out, 2);
    assert!(a.len() > 1);
    for m in &a {
        let b: usize = m.entries.iter().map(|e| e.len()).sum();
        assert!(b <= 1024 || m.entries.len() == 1);
    }
    let total: usize = a.iter().map(|m| m.entries.len()).sum();
    assert_eq!(total, 30);
}

#[test]
fn fast_backtracking_needs_few_round_trips() {
    // Follower (f) of Figure 7 holds many conflicting entries; backtracking
    // one index per round trip would take ~10 rejections.
    let leader_log: Vec<Term> = [vec![1; 3], vec![4; 2], vec![5; 2], vec![6; 300]].concat();
    let follower: Vec<Term> = [vec![1; 3], vec![2; 300], vec![3; 300]].concat();
    let mut net = Net::new(3);
    net.nodes.get_mut(&1).unwrap().raft = raft_with_log(1, 3, &leader_log, 7, |_| {});
    net.nodes.get_mut(&2).unwrap().raft = raft_with_log(2, 3, &follower, 7, |_| {});
    net.nodes.get_mut(&3).unwrap().raft = raft_with_log(3, 3, &leader_log, 7, |_| {});
    net.isolate(2);
    assert!(net.elect(1));
    net.heal();
    net.log.clear();
    net.tick_all(5);
    let rejections = net
        .log
        .iter()
        .filter(|m| {
            matches!(
                m.body,
                MessageBody::AppendResponse(AppendResponse {
                    reject: Some(_),
                    ..
                })
            )
        })
        .count();
    assert!(rejections <= 4, "{rejections} rejections");
    assert_eq!(
        net.node(2).raft.storage().all(),
        net.node(1).raft.storage().all()
    );
}

#[test]
fn a_lost_append_is_resent_after_a_heartbeat() {
    let mut net = Net::new(3);
    assert!(net.elect(1));
    // Drop exactly the appends carrying the next proposal to node 2.
    net.cut_oneway(1, 2);
    net.propose(1, b"lost").unwrap();
    net.cut.clear();
    assert!(net.node(2).raft.status().last_index < net.node(1).raft.status().last_index);
    net.tick_all(3);
    assert_eq!(
        net.node(2).raft.status().last_index,
        net.node(1).raft.status().last_index
    );
    assert_eq!(net.applied_data(2), vec![b"lost".to_vec()]);
}

#[test]
fn heartbeats_never_carry_commit_beyond_the_followers_match() {
    let mut net = Net::new(3);
    assert!(net.elect(1)); // every node acknowledged the no-op (index 1)
    net.isolate(3);
    for i in 0..5u8 {
        net.propose(1, &[i]).unwrap();
    }
    assert_eq!(net.node(1).raft.status().commit, 6);
    net.raft(1).tick();
    let rd = net.raft(1).ready().unwrap();
    let commit_to = |to: NodeId| -> Vec<Index> {
        rd.messages
            .iter()
            .filter(|m| m.to == to)
            .filter_map(|m| match m.body {
                MessageBody::Heartbeat { commit, .. } => Some(commit),
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        commit_to(3),
        vec![1],
        "node 3 matched only the no-op, so it may commit only that"
    );
    assert_eq!(commit_to(2), vec![6]);
}

#[test]
fn any_message_from_the_leader_resets_a_followers_election_timer() {
    let mut r = raft_with_log(2, 3, &[], 1, |_| {});
    r.step(msg(
        1,
        2,
        1,
        MessageBody::Heartbeat {
            commit: 0,
            read_seq: 0,
        },
    ))
    .unwrap();
    drain(&mut r);
    for round in 0..10 {
        for _ in 0..9 {
            r.tick();
        }
        // A read-index reply (not an append or heartbeat) from the leader:
        // a confirmed read, the only answer a leader gives. (An answer
        // without an index comes from a node that does not lead, and does
        // not count: see membership.rs, a demoted leader's followers.)
        r.step(msg(
            1,
            2,
            1,
            MessageBody::ReadIndexResponse {
                ctx: round,
                index: Some(0),
            },
        ))
        .unwrap();
        assert_eq!(r.role(), Role::Follower, "round {round}");
    }
}

#[test]
fn leader_counts_its_own_entries_only_once_persisted() {
    let mut net = Net::new(3);
    assert!(net.elect(1));
    net.nodes.get_mut(&1).unwrap().hold_persist = true;
    net.isolate(3);
    let before = net.node(1).raft.status().commit;
    net.propose(1, b"x").unwrap();
    // Node 2 persisted and acknowledged; the leader has not: 1 of 3.
    assert_eq!(net.node(1).raft.status().commit, before);
    net.release_persist(1);
    net.settle();
    assert_eq!(net.node(1).raft.status().commit, before + 1);

    // With both followers acknowledging, the leader's disk is not needed.
    let mut net = Net::new(3);
    assert!(net.elect(1));
    net.nodes.get_mut(&1).unwrap().hold_persist = true;
    net.propose(1, b"y").unwrap();
    let st = net.node(1).raft.status();
    assert_eq!(
        st.commit, st.last_index,
        "two followers are a quorum of three"
    );
    assert!(
        net.applied_data(1).is_empty(),
        "but a node applies only what it persisted"
    );
    net.release_persist(1);
    net.settle();
    assert_eq!(net.applied_data(1), vec![b"y".to_vec()]);
}

#[test]
fn backpressure_refuses_proposals_past_the_uncommitted_limit() {
    let mut net = Net::with(3, |c| c.max_uncommitted_bytes = 1000);
    assert!(net.elect(1));
    net.isolate(1);
    let mut refused = None;
    for i in 0..100 {
        match net.propose(1, &[0u8; 100]) {
            Ok(_) => {}
            Err(e) => {
                refused = Some((i, e));
                break;
            }
        }
    }
    let (i, e) = refused.expect("the limit must bite");
    assert!(matches!(e, Error::Backpressure { .. }), "{e}");
    assert!((5..=10).contains(&i), "refused after {i}");
    net.heal();
    net.tick_all(3);
    assert!(
        net.propose(1, &[0u8; 100]).is_ok(),
        "accepted again once committed"
    );
}

#[test]
fn followers_and_candidates_refuse_proposals_with_a_hint() {
    let mut net = Net::new(3);
    assert!(net.elect(1));
    let e = net.propose(2, b"x").unwrap_err();
    assert_eq!(e, Error::NotLeader { leader: 1 });
    assert!(e.to_string().contains("node 1"), "{e}");
    assert_eq!(
        net.raft(1).propose(BatchBuilder::new(), 0),
        Err(Error::EmptyProposal)
    );
    net.isolate(3);
    for _ in 0..25 {
        net.tick(3);
        net.settle();
    }
    assert_eq!(net.node(3).raft.role(), Role::PreCandidate);
    let e = net.propose(3, b"x").unwrap_err();
    assert_eq!(e, Error::NotLeader { leader: NONE });
    assert!(e.to_string().contains("no leader"), "{e}");
}
