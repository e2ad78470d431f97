//! Membership changes: joint consensus, learners, removing the leader,
//! configurations that take effect on append and roll back on truncation.

use super::harness::*;
use crate::*;

fn voters(net: &Net, id: NodeId) -> Vec<NodeId> {
    net.node(id)
        .raft
        .membership()
        .voters
        .iter()
        .copied()
        .collect()
}

fn change(net: &mut Net, leader: NodeId, ops: &[ConfChangeOp]) -> Result<ConfChangeStatus, Error> {
    let r = net
        .raft(leader)
        .propose_conf_change(ops, LaggingLearner::Refuse, 0);
    net.settle();
    r
}

#[test]
fn add_a_learner_replicate_to_it_then_promote_it() {
    let mut net = Net::new(3);
    assert!(net.elect(1));
    for i in 0..5u8 {
        net.propose(1, &[i]).unwrap();
    }
    net.add_node(4, |_| {});
    change(&mut net, 1, &[ConfChangeOp::AddLearner(4)]).unwrap();
    net.tick_all(3);
    assert!(net.node(4).raft.membership().is_learner(4));
    assert_eq!(net.applied_data(4).len(), 5, "the learner receives the log");
    // Promotion goes through a joint configuration and ends in the final one.
    change(&mut net, 1, &[ConfChangeOp::AddVoter(4)]).unwrap();
    net.tick_all(3);
    for id in 1..=4 {
        assert_eq!(voters(&net, id), vec![1, 2, 3, 4], "node {id}");
        assert!(
            !net.node(id).raft.membership().is_joint(),
            "node {id} left the joint phase"
        );
    }
    let configs = net
        .node(1)
        .raft
        .storage()
        .all()
        .iter()
        .filter(|e| e.kind() == EntryKind::Config)
        .count();
    assert_eq!(configs, 3, "learner entry, joint entry, final entry");
    // Four voters: a quorum is three. Nodes 2 and 3 alone cannot elect...
    net.isolate(1);
    net.isolate(4);
    net.tick_all(60);
    assert!(
        net.leaders().iter().all(|l| *l == 1),
        "two of four voters elected a leader"
    );
    // ...but with node 4's vote they can.
    net.heal();
    net.isolate(1);
    net.tick_all(60);
    let l = net.leaders();
    assert!(
        l.iter().any(|l| [2, 3, 4].contains(l)),
        "node 4's vote should make a quorum: {l:?}"
    );
}

#[test]
fn a_learner_never_counts_toward_commit_nor_votes() {
    let mut net = Net::with_members(&[1, 2, 3], &[4], |_| {});
    assert!(net.elect(1));
    let commit = net.node(1).raft.status().commit;
    net.isolate(2);
    net.isolate(3);
    net.cut
        .retain(|(a, b)| !((*a == 1 && *b == 4) || (*a == 4 && *b == 1)));
    net.propose(1, b"x").unwrap();
    assert_eq!(
        net.node(4).raft.status().last_index,
        net.node(1).raft.status().last_index
    );
    assert_eq!(
        net.node(1).raft.status().commit,
        commit,
        "leader + learner is no quorum of 3 voters"
    );
    // A candidate does not ask a learner for its vote, and a vote from a
    // learner counts for nothing.
    let mut net = Net::with_members(&[1, 2, 3], &[4], no_pre_vote);
    net.isolate(1);
    net.isolate(3);
    net.raft(2).start_election();
    net.settle();
    assert!(
        !net.log
            .iter()
            .any(|m| m.to == 4 && matches!(m.body, MessageBody::Vote(_)))
    );
    let t = net.node(2).raft.term();
    net.deliver(msg(
        4,
        2,
        t,
        MessageBody::VoteResponse {
            pre: false,
            granted: true,
        },
    ));
    assert_eq!(
        net.node(2).raft.role(),
        Role::Candidate,
        "the learner's vote is not counted"
    );
}

#[test]
fn promoting_a_lagging_learner_is_refused_or_waits() {
    let mut net = Net::with_members(&[1, 2, 3], &[4], |c| c.learner_max_lag = 2);
    assert!(net.elect(1));
    net.isolate(4);
    for i in 0..10u8 {
        net.propose(1, &[i]).unwrap();
    }
    let e = change(&mut net, 1, &[ConfChangeOp::AddVoter(4)]).unwrap_err();
    assert!(matches!(e, Error::LearnerLagging { id: 4, .. }), "{e}");
    let st = net
        .raft(1)
        .propose_conf_change(&[ConfChangeOp::AddVoter(4)], LaggingLearner::Wait, 0)
        .unwrap();
    assert_eq!(st, ConfChangeStatus::Waiting);
    assert!(matches!(
        net.raft(1)
            .propose_conf_change(&[ConfChangeOp::Remove(2)], LaggingLearner::Refuse, 0),
        Err(Error::ConfChangeInProgress(_))
    ));
    net.heal();
    net.tick_all(5);
    assert!(matches!(
        net.node(1).conf_events[..],
        [ConfChangeEvent::Proposed(_)]
    ));
    assert_eq!(voters(&net, 1), vec![1, 2, 3, 4]);

    // A learner that never catches up: the waiting change is dropped.
    let mut net = Net::with_members(&[1, 2, 3], &[4], |c| {
        c.learner_max_lag = 2;
        c.conf_change_wait_ticks = 20;
    });
    assert!(net.elect(1));
    net.isolate(4);
    for i in 0..10u8 {
        net.propose(1, &[i]).unwrap();
    }
    net.raft(1)
        .propose_conf_change(&[ConfChangeOp::AddVoter(4)], LaggingLearner::Wait, 0)
        .unwrap();
    net.tick_all(25);
    assert_eq!(net.node(1).conf_events, vec![ConfChangeEvent::Dropped]);
    assert_eq!(voters(&net, 1), vec![1, 2, 3]);
}

#[test]
fn a_learner_that_acknowledged_nothing_is_lagging_however_short_the_log() {
    // The default lag bound (128) is far above this log's length: only
    // "never heard from" can tell that the learner does not run.
    let mut net = Net::with_members(&[1], &[2], |_| {});
    net.isolate(2);
    assert!(net.elect(1));
    net.propose(1, b"x").unwrap();
    let e = change(&mut net, 1, &[ConfChangeOp::AddVoter(2)]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::LearnerLagging {
                id: 2,
                matched: 0,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(voters(&net, 1), vec![1]);
    // Once it has acknowledged the log it is promoted.
    net.heal();
    net.tick_all(3);
    change(&mut net, 1, &[ConfChangeOp::AddVoter(2)]).unwrap();
    net.tick_all(3);
    assert_eq!(voters(&net, 1), vec![1, 2]);
}

#[test]
fn remove_a_follower() {
    let mut net = Net::new(3);
    assert!(net.elect(1));
    change(&mut net, 1, &[ConfChangeOp::Remove(3)]).unwrap();
    net.tick_all(3);
    assert_eq!(voters(&net, 1), vec![1, 2]);
    // Two voters: node 2 alone cannot commit with node 1, nor 1 without 2.
    net.isolate(3);
    net.propose(1, b"after").unwrap();
    assert_eq!(net.applied_data(2), vec![b"after".to_vec()]);
    assert!(
        net.node(1).raft.status().peers.iter().all(|p| p.id != 3),
        "no progress kept for a removed node"
    );
}

#[test]
fn removing_the_leader_it_leads_until_the_change_commits_then_steps_down() {
    let mut net = Net::new(3);
    assert!(net.elect(1));
    net.propose(1, b"a").unwrap();
    change(&mut net, 1, &[ConfChangeOp::Remove(1)]).unwrap();
    // The change committed (joint, then final) and node 1 stepped down.
    assert_ne!(net.node(1).raft.role(), Role::Leader);
    assert_eq!(voters(&net, 2), vec![2, 3]);
    net.tick_all(40);
    let l = net.leaders();
    assert_eq!(l.len(), 1);
    assert!(l[0] == 2 || l[0] == 3);
    net.propose(l[0], b"b").unwrap();
    assert_eq!(net.applied_data(2), vec![b"a".to_vec(), b"b".to_vec()]);
    // The removed node does not campaign.
    let term = net.node(l[0]).raft.term();
    net.tick_all(100);
    assert_eq!(net.node(l[0]).raft.term(), term);
    assert_eq!(net.node(1).raft.role(), Role::Follower);
}

#[test]
fn the_removed_leader_keeps_leading_while_the_new_configuration_is_uncommitted() {
    let mut net = Net::new(3);
    assert!(net.elect(1));
    // Followers cannot acknowledge: nothing of the change commits.
    net.cut_oneway(2, 1);
    net.cut_oneway(3, 1);
    net.raft(1)
        .propose_conf_change(&[ConfChangeOp::Remove(1)], LaggingLearner::Refuse, 0)
        .unwrap();
    net.settle();
    assert_eq!(net.node(1).raft.role(), Role::Leader);
    assert!(
        net.node(1).raft.membership().is_joint(),
        "joint in force on append, before commit"
    );
    net.heal();
    net.tick_all(2);
    assert_ne!(net.node(1).raft.role(), Role::Leader);
}

#[test]
fn replace_a_majority_in_one_joint_change() {
    let mut net = Net::new(3);
    assert!(net.elect(1));
    for id in [4, 5] {
        net.add_node(id, |_| {});
    }
    net.propose(1, b"before").unwrap();
    // {1,2,3} -> {3,4,5}: joint needs a majority of both.
    let r = change(
        &mut net,
        1,
        &[
            ConfChangeOp::AddVoter(4),
            ConfChangeOp::AddVoter(5),
            ConfChangeOp::Remove(1),
            ConfChangeOp::Remove(2),
        ],
    );
    assert!(matches!(r, Ok(ConfChangeStatus::Proposed(_))));
    net.tick_all(50);
    for id in [3, 4, 5] {
        assert_eq!(voters(&net, id), vec![3, 4, 5], "node {id}");
    }
    let l = net.leaders();
    assert_eq!(l.len(), 1);
    assert!([3, 4, 5].contains(&l[0]));
    net.propose(l[0], b"after").unwrap();
    assert_eq!(
        net.applied_data(5),
        vec![b"before".to_vec(), b"after".to_vec()]
    );
}

#[test]
fn a_joint_configuration_needs_both_majorities_to_commit() {
    let mut net = Net::new(3);
    assert!(net.elect(1));
    for id in [4, 5] {
        net.add_node(id, |_| {});
    }
    // New voters 4 and 5 cannot hear anything: the joint entry reaches the
    // old majority only and must not commit.
    net.isolate(4);
    net.isolate(5);
    net.raft(1)
        .propose_conf_change(
            &[
                ConfChangeOp::AddVoter(4),
                ConfChangeOp::AddVoter(5),
                ConfChangeOp::Remove(2),
            ],
            LaggingLearner::Refuse,
            0,
        )
        .unwrap();
    net.settle();
    let st = net.node(1).raft.status();
    assert!(net.node(1).raft.membership().is_joint());
    assert!(
        st.commit < st.last_index,
        "the incoming majority {{1,3,4,5}}... needs 4 or 5"
    );
    net.heal();
    net.tick_all(5);
    assert!(!net.node(1).raft.membership().is_joint());
}

#[test]
fn a_second_change_is_refused_until_the_first_completes() {
    let mut net = Net::new(3);
    assert!(net.elect(1));
    net.cut_oneway(2, 1);
    net.cut_oneway(3, 1);
    net.raft(1)
        .propose_conf_change(&[ConfChangeOp::AddLearner(9)], LaggingLearner::Refuse, 0)
        .unwrap();
    let e = net
        .raft(1)
        .propose_conf_change(&[ConfChangeOp::AddLearner(8)], LaggingLearner::Refuse, 0)
        .unwrap_err();
    assert!(matches!(e, Error::ConfChangeInProgress(_)));
    assert!(e.to_string().contains("retry"));
    net.heal();
    net.tick_all(3);
    net.raft(1)
        .propose_conf_change(&[ConfChangeOp::AddLearner(8)], LaggingLearner::Refuse, 0)
        .unwrap();
    assert!(matches!(
        net.raft(1).propose_conf_change(
            &[
                ConfChangeOp::Remove(1),
                ConfChangeOp::Remove(2),
                ConfChangeOp::Remove(3)
            ],
            LaggingLearner::Refuse,
            0
        ),
        Err(Error::ConfChangeInProgress(_)) | Err(Error::InvalidConfChange(_))
    ));
}

#[test]
fn a_configuration_takes_effect_on_append_and_rolls_back_when_truncated() {
    // Follower 2 receives a joint configuration from leader 1 (term 1) that
    // is never committed; a term-2 leader overwrites it.
    let mut r = raft_with_log(2, 3, &[1], 1, |_| {});
    let joint = {
        let mut m = Membership::new([1, 2, 4], []);
        m.outgoing = [1, 2, 3].into_iter().collect();
        m
    };
    let e = crate::membership::conf_entry(&joint, 1, 2, 1);
    r.step(msg(
        1,
        2,
        1,
        MessageBody::Append(Append {
            prev_index: 1,
            prev_term: 1,
            commit: 1,
            entries: vec![e],
        }),
    ))
    .unwrap();
    drain(&mut r);
    assert_eq!(r.membership(), &joint, "in force as soon as appended");
    let over = entry(2, 2, 1, b"x");
    r.step(msg(
        3,
        2,
        2,
        MessageBody::Append(Append {
            prev_index: 1,
            prev_term: 1,
            commit: 1,
            entries: vec![over],
        }),
    ))
    .unwrap();
    drain(&mut r);
    assert_eq!(
        r.membership(),
        &Membership::new([1, 2, 3], []),
        "rolled back with its entry"
    );
}

#[test]
fn a_configuration_entry_that_does_not_decode_is_refused_untouched() {
    let mut r = raft_with_log(2, 3, &[1], 1, |_| {});
    let bad = keel_format::Batch::control(EntryKind::Config, b"\x01\x00garbage", 1, 2, 1, 0);
    let before = r.status();
    let e = r.step(msg(
        1,
        2,
        1,
        MessageBody::Append(Append {
            prev_index: 1,
            prev_term: 1,
            commit: 1,
            entries: vec![bad],
        }),
    ));
    assert!(matches!(e, Err(Error::InvalidMessage { .. })));
    assert_eq!(r.status().last_index, before.last_index);
}

#[test]
fn a_removed_node_does_not_disrupt_the_cluster() {
    let mut net = Net::new(3);
    assert!(net.elect(1));
    // Node 3 is cut off and misses its own removal.
    net.isolate(3);
    change(&mut net, 1, &[ConfChangeOp::Remove(3)]).unwrap();
    net.tick_all(5);
    assert_eq!(voters(&net, 1), vec![1, 2]);
    net.tick_all(100); // node 3 times out again and again (pre-vote)
    net.heal();
    let term = net.node(1).raft.term();
    net.tick_all(100);
    assert_eq!(net.leaders(), vec![1]);
    assert_eq!(
        net.node(1).raft.term(),
        term,
        "the removed node's elections must not raise the term"
    );
}

#[test]
fn a_removed_node_does_not_disrupt_even_without_pre_vote_or_check_quorum() {
    // Found by the simulator: a removed node that missed its removal kept
    // raising its term and deposed every new leader before the new voters
    // could finish catching up. Leader stickiness must not hinge on
    // check-quorum.
    let mut net = Net::with(3, no_pre_vote);
    assert!(net.elect(1));
    // Node 3 gets the joint configuration (it still votes in it) but
    // misses everything after: it believes it is a voter.
    net.drop_if = Some(|m| m.to == 3 && matches!(&m.body, MessageBody::Append(a) if a.commit >= 3));
    change(&mut net, 1, &[ConfChangeOp::Remove(3)]).unwrap();
    net.tick_all(5);
    net.drop_if = None;
    assert_eq!(voters(&net, 1), vec![1, 2]);
    assert!(
        net.node(3).raft.membership().is_voter(3),
        "node 3 must not know it was removed"
    );
    let term = net.node(1).raft.term();
    net.tick_all(200);
    assert_eq!(
        net.leaders(),
        vec![1],
        "the removed node deposed the leader"
    );
    assert_eq!(net.node(1).raft.term(), term);
}

#[test]
fn a_restarted_node_recovers_its_configuration_from_the_log() {
    let mut net = Net::new(3);
    assert!(net.elect(1));
    net.add_node(4, |_| {});
    change(&mut net, 1, &[ConfChangeOp::AddLearner(4)]).unwrap();
    change(&mut net, 1, &[ConfChangeOp::AddVoter(4)]).unwrap();
    net.tick_all(3);
    net.restart(2);
    assert_eq!(voters(&net, 2), vec![1, 2, 3, 4]);
    net.restart(4);
    assert_eq!(
        voters(&net, 4),
        vec![1, 2, 3, 4],
        "a node added later has no bootstrap configuration"
    );
}

/// With the test-only knob that applies configurations at commit, a node
/// that restarts (its commit index is not durable) falls back to an older
/// configuration; two removed nodes then form a majority of the first one,
/// elect a leader and commit entries the real group never had.
#[cfg(feature = "fault-injection")]
#[test]
fn applying_configurations_at_commit_lets_removed_nodes_commit_a_divergent_log() {
    for knob in [false, true] {
        let mut net = Net::with(3, |c| c.knobs.apply_conf_at_commit = knob);
        assert!(net.elect(1));
        net.propose(1, b"a").unwrap();
        change(&mut net, 1, &[ConfChangeOp::Remove(3)]).unwrap();
        net.tick_all(3);
        change(&mut net, 1, &[ConfChangeOp::Remove(2)]).unwrap();
        net.tick_all(3);
        assert_eq!(voters(&net, 1), vec![1]);
        net.restart(2);
        net.restart(3);
        net.isolate(1);
        // Node 1, alone in its configuration, keeps committing.
        for i in 0..5u8 {
            net.propose(1, &[i]).unwrap();
        }
        net.tick_all(60);
        let led = |id: NodeId| {
            net.node(id)
                .soft_states
                .iter()
                .any(|s| s.role == Role::Leader)
        };
        let diverged = [2u64, 3].iter().any(|id| {
            let other = net.node(*id).raft.status().commit;
            let mine = net.node(1).raft.status().commit;
            let upto = other.min(mine) as usize;
            let a: Vec<_> = net
                .node(1)
                .raft
                .storage()
                .all()
                .iter()
                .take(upto)
                .cloned()
                .collect();
            let b: Vec<_> = net
                .node(*id)
                .raft
                .storage()
                .all()
                .iter()
                .take(upto)
                .cloned()
                .collect();
            a != b
        });
        if knob {
            assert!(
                led(2) || led(3),
                "removed nodes should have elected a leader"
            );
            assert!(diverged, "and committed entries that differ from node 1's");
        } else {
            assert!(!led(2) && !led(3), "a removed node led");
            assert!(!diverged);
        }
    }
}

// ------------------------------------------------------------ member info

fn info(pairs: &[(NodeId, &str)]) -> std::collections::BTreeMap<NodeId, bytes::Bytes> {
    pairs
        .iter()
        .map(|(id, s)| (*id, bytes::Bytes::copy_from_slice(s.as_bytes())))
        .collect()
}

/// A change that sets the given info (and runs `ops`).
fn set_info(ops: &[ConfChangeOp], pairs: &[(NodeId, &str)]) -> ConfChange {
    ConfChange {
        ops: ops.to_vec(),
        info: info(pairs)
            .into_iter()
            .map(|(id, b)| (id, Some(b)))
            .collect(),
        lagging: LaggingLearner::Refuse,
    }
}

fn propose_change(
    net: &mut Net,
    leader: NodeId,
    c: &ConfChange,
) -> Result<ConfChangeStatus, Error> {
    let r = net.raft(leader).propose_change(c, 0);
    net.settle();
    r
}

/// The configurations in a node's log, in order.
fn configs(net: &Net, id: NodeId) -> Vec<Membership> {
    net.node(id)
        .raft
        .storage()
        .all()
        .iter()
        .filter(|e| e.kind() == EntryKind::Config)
        .map(|e| decode_membership(&e.body()).unwrap())
        .collect()
}

#[test]
fn an_info_only_change_commits_as_one_non_joint_entry_seen_by_every_node() {
    let mut net = Net::with_members(&[1, 2, 3], &[4], |_| {});
    assert!(net.elect(1));
    let before = configs(&net, 1).len();
    let c = set_info(&[], &[(1, "10.0.0.1:7000"), (2, "10.0.0.2:7000"), (4, "l")]);
    let st = propose_change(&mut net, 1, &c).unwrap();
    let ConfChangeStatus::Proposed(p) = st else {
        panic!("not proposed: {st:?}");
    };
    assert_eq!(p.record_count, 0);
    net.tick_all(3);
    let logged = configs(&net, 1);
    assert_eq!(logged.len(), before + 1, "one entry: {logged:?}");
    assert!(!logged[before].is_joint());
    let want = info(&[(1, "10.0.0.1:7000"), (2, "10.0.0.2:7000"), (4, "l")]);
    for id in 1..=4 {
        let st = net.node(id).raft.status();
        assert!(st.commit >= p.index, "node {id} committed the change");
        let m = net.node(id).raft.membership();
        assert_eq!(m.info, want, "node {id}");
        assert_eq!(m.voters, [1, 2, 3].into(), "node {id}");
        assert_eq!(m.learners, [4].into(), "node {id}");
    }
    // Changing one member's info and clearing another's is again one entry.
    let mut c = set_info(&[], &[(2, "10.0.0.22:7000")]);
    c.info.insert(4, None);
    propose_change(&mut net, 1, &c).unwrap();
    net.tick_all(3);
    assert_eq!(configs(&net, 1).len(), before + 2);
    for id in 1..=4 {
        assert_eq!(
            net.node(id).raft.membership().info,
            info(&[(1, "10.0.0.1:7000"), (2, "10.0.0.22:7000")]),
            "node {id}"
        );
    }
    // The group still works.
    net.propose(1, b"after").unwrap();
    assert_eq!(net.applied_data(3), vec![b"after".to_vec()]);
}

#[test]
fn info_travels_through_a_joint_change_and_a_removed_members_info_is_gone() {
    let mut net = Net::new(3);
    assert!(net.elect(1));
    propose_change(&mut net, 1, &set_info(&[], &[(1, "a"), (2, "b"), (3, "c")])).unwrap();
    net.tick_all(3);
    for id in [4, 5] {
        net.add_node(id, |_| {});
    }
    // {1,2,3} -> {3,4,5}, naming the new voters and renaming node 3.
    let c = set_info(
        &[
            ConfChangeOp::AddVoter(4),
            ConfChangeOp::AddVoter(5),
            ConfChangeOp::Remove(1),
            ConfChangeOp::Remove(2),
        ],
        &[(3, "c2"), (4, "d"), (5, "e")],
    );
    assert!(matches!(
        propose_change(&mut net, 1, &c),
        Ok(ConfChangeStatus::Proposed(_))
    ));
    net.tick_all(50);
    let logged = configs(&net, 3);
    let n = logged.len();
    let (joint, last) = (&logged[n - 2], &logged[n - 1]);
    assert!(joint.is_joint());
    assert_eq!(
        joint.info,
        info(&[(1, "a"), (2, "b"), (3, "c2"), (4, "d"), (5, "e")]),
        "outgoing voters keep their info while they still vote"
    );
    assert!(!last.is_joint());
    assert_eq!(last.voters, [3, 4, 5].into());
    let want = info(&[(3, "c2"), (4, "d"), (5, "e")]);
    assert_eq!(last.info, want, "the removed members' info is gone");
    for id in [3, 4, 5] {
        assert_eq!(net.node(id).raft.membership().info, want, "node {id}");
        assert!(!net.node(id).raft.membership().is_joint());
    }
    let l = net.leaders();
    assert_eq!(l.len(), 1);
    assert!([3, 4, 5].contains(&l[0]));
    // Removing a learner drops its info in one entry.
    let l = l[0];
    propose_change(
        &mut net,
        l,
        &set_info(&[ConfChangeOp::AddLearner(6)], &[(6, "f")]),
    )
    .unwrap();
    net.tick_all(3);
    assert_eq!(net.node(l).raft.membership().info[&6], "f");
    change(&mut net, l, &[ConfChangeOp::Remove(6)]).unwrap();
    net.tick_all(3);
    assert_eq!(net.node(l).raft.membership().info, want);
}

#[test]
fn info_for_a_non_member_and_a_change_that_alters_nothing_are_refused() {
    let mut net = Net::new(3);
    assert!(net.elect(1));
    propose_change(&mut net, 1, &set_info(&[], &[(1, "a")])).unwrap();
    net.tick_all(3);
    let last = net.node(1).raft.status().last_index;
    let e = propose_change(&mut net, 1, &set_info(&[], &[(9, "x")])).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidConfChange(why) if why.contains("node 9") && why.contains("not a member")),
        "{e}"
    );
    // Nor for a node the same change removes.
    let e = propose_change(
        &mut net,
        1,
        &set_info(&[ConfChangeOp::Remove(3)], &[(3, "x")]),
    )
    .unwrap_err();
    assert!(matches!(e, Error::InvalidConfChange(_)), "{e}");
    // A change that alters nothing: no ops and no info, the same info
    // again, clearing info nobody has, adding a voter that is one.
    let mut clear_absent = ConfChange::default();
    clear_absent.info.insert(2, None);
    for c in [
        ConfChange::default(),
        set_info(&[], &[(1, "a")]),
        clear_absent,
        set_info(&[ConfChangeOp::AddVoter(2)], &[]),
    ] {
        let e = propose_change(&mut net, 1, &c).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidConfChange(why) if why.contains("as it is")),
            "{c:?}: {e}"
        );
    }
    assert_eq!(
        net.node(1).raft.status().last_index,
        last,
        "nothing was appended"
    );
    // Info too large for the entry.
    let mut big = ConfChange::default();
    big.info
        .insert(2, Some(bytes::Bytes::from(vec![0; MAX_INFO_BYTES + 1])));
    assert!(matches!(
        propose_change(&mut net, 1, &big),
        Err(Error::InvalidConfChange(_))
    ));
}

#[test]
fn a_waiting_change_keeps_its_info() {
    let mut net = Net::with_members(&[1, 2, 3], &[4], |c| c.learner_max_lag = 2);
    assert!(net.elect(1));
    net.isolate(4);
    for i in 0..10u8 {
        net.propose(1, &[i]).unwrap();
    }
    let mut c = set_info(&[ConfChangeOp::AddVoter(4)], &[(4, "d")]);
    c.lagging = LaggingLearner::Wait;
    assert_eq!(
        propose_change(&mut net, 1, &c).unwrap(),
        ConfChangeStatus::Waiting
    );
    net.heal();
    net.tick_all(5);
    assert!(matches!(
        net.node(1).conf_events[..],
        [ConfChangeEvent::Proposed(_)]
    ));
    for id in 1..=4 {
        let m = net.node(id).raft.membership();
        assert_eq!(m.voters, [1, 2, 3, 4].into(), "node {id}");
        assert_eq!(m.info, info(&[(4, "d")]), "node {id}");
    }
}

#[test]
fn a_restarted_node_recovers_member_info_from_its_last_configuration_entries() {
    let mut net = Net::new(3);
    assert!(net.elect(1));
    propose_change(&mut net, 1, &set_info(&[], &[(1, "a"), (2, "b"), (3, "c")])).unwrap();
    net.tick_all(3);
    net.add_node(4, |_| {});
    propose_change(
        &mut net,
        1,
        &set_info(&[ConfChangeOp::AddLearner(4)], &[(4, "d")]),
    )
    .unwrap();
    net.tick_all(3);
    propose_change(
        &mut net,
        1,
        &set_info(&[ConfChangeOp::AddVoter(4)], &[(2, "b2")]),
    )
    .unwrap();
    net.tick_all(3);
    net.propose(1, b"x").unwrap();
    let want = net.node(1).raft.membership().clone();
    assert_eq!(want.info, info(&[(1, "a"), (2, "b2"), (3, "c"), (4, "d")]));
    assert_eq!(want.voters, [1, 2, 3, 4].into());
    for id in [2, 4] {
        net.restart(id);
        assert_eq!(net.node(id).raft.membership(), &want, "node {id}");
    }
    // And the restarted nodes go on with it.
    net.tick_all(3);
    net.propose(1, b"y").unwrap();
    assert_eq!(net.node(4).raft.membership(), &want);
}

#[test]
fn the_followers_of_a_demoted_leader_elect_another_while_reads_keep_coming() {
    // A leader that demotes itself leads until the change commits, then
    // steps down within its term and, a learner now, never campaigns. Its
    // followers forward clients' reads to it and it answers that it does
    // not lead: that answer must not count as word from a live leader, or
    // their election timers never run out while reads keep coming (seen
    // with real processes: no leader for a minute, until the old leader's
    // process died).
    let mut net = Net::new(3);
    assert!(net.elect(1));
    net.propose(1, b"a").unwrap();
    change(&mut net, 1, &[ConfChangeOp::AddLearner(1)]).unwrap();
    assert_eq!(voters(&net, 2), vec![2, 3]);
    assert!(net.node(1).raft.membership().is_learner(1));
    assert_ne!(net.node(1).raft.role(), Role::Leader);
    let mut ctx = 0;
    for _ in 0..100 {
        for id in [2, 3] {
            ctx += 1;
            // Forwarded while the node still follows node 1; refused
            // (no leader known) once it learned node 1 does not lead.
            let _ = net.raft(id).read_index(ctx);
        }
        net.tick_all(1);
        if !net.leaders().is_empty() {
            break;
        }
    }
    let l = net.leaders();
    assert_eq!(l.len(), 1, "no leader elected while reads kept coming");
    assert!(l[0] == 2 || l[0] == 3, "leader {l:?}");
    net.propose(l[0], b"b").unwrap();
    assert_eq!(net.applied_data(3), vec![b"a".to_vec(), b"b".to_vec()]);
    assert_eq!(
        net.node(1).raft.role(),
        Role::Follower,
        "the learner never campaigns"
    );
}
