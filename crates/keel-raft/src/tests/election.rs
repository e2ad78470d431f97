//! Pre-vote, check-quorum, leader stickiness, dueling candidates.

use super::harness::*;
use crate::*;

fn terms(net: &Net) -> Vec<Term> {
    net.nodes.values().map(|n| n.raft.term()).collect()
}

#[test]
fn pre_vote_keeps_a_rejoining_node_from_raising_the_term() {
    let mut net = Net::new(3);
    assert!(net.elect(1));
    let term = net.node(1).raft.term();
    net.isolate(3);
    net.tick_all(100); // node 3 times out again and again, alone
    assert_eq!(
        net.node(3).raft.term(),
        term,
        "pre-vote failed, so the term must not move"
    );
    assert_eq!(net.node(3).raft.role(), Role::PreCandidate);
    net.heal();
    net.tick_all(30);
    assert_eq!(
        net.leaders(),
        vec![1],
        "the healthy leader must not be deposed"
    );
    assert_eq!(terms(&net), vec![term; 3]);
}

#[test]
fn without_pre_vote_a_rejoining_node_disrupts_the_leader() {
    // The contrast that shows the previous test can fail.
    let mut net = Net::with(3, no_pre_vote);
    assert!(net.elect(1));
    let term = net.node(1).raft.term();
    net.isolate(3);
    net.tick_all(100);
    assert!(net.node(3).raft.term() > term);
    net.heal();
    net.tick_all(30);
    assert!(
        net.node(1).raft.term() > term,
        "the rejoining node's term deposes the leader"
    );
}

#[test]
fn pre_vote_changes_neither_term_nor_vote_of_voters() {
    let mut r = raft_with_log(1, 3, &[1], 1, |_| {});
    r.step(msg(
        2,
        1,
        2,
        MessageBody::Vote(VoteRequest {
            pre: true,
            last_index: 5,
            last_term: 1,
            transfer: false,
        }),
    ))
    .unwrap();
    let out = drain(&mut r);
    assert_eq!(r.term(), 1);
    assert_eq!(r.status().vote, NONE);
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].term, 2,
        "a granted pre-vote answers in the proposed term"
    );
    assert_eq!(
        out[0].body,
        MessageBody::VoteResponse {
            pre: true,
            granted: true
        }
    );
}

#[test]
fn check_quorum_makes_an_isolated_leader_step_down() {
    let mut net = Net::new(3);
    assert!(net.elect(1));
    net.isolate(1);
    net.tick_all(20);
    assert_eq!(
        net.node(1).raft.role(),
        Role::Follower,
        "cut off from a quorum, it must stop leading"
    );
    net.tick_all(60);
    let others: Vec<_> = net.leaders();
    assert_eq!(others.len(), 1);
    assert_ne!(others[0], 1);
    // Without check-quorum the old leader would still believe it leads.
    let mut net = Net::with(3, |c| c.check_quorum = false);
    assert!(net.elect(1));
    net.isolate(1);
    net.tick_all(25);
    assert_eq!(net.node(1).raft.role(), Role::Leader);
}

#[test]
fn followers_that_hear_a_leader_ignore_vote_requests() {
    let mut net = Net::new(3);
    assert!(net.elect(1));
    let term = net.node(1).raft.term();
    // Node 3 asks for votes at a higher term (as if its pre-vote succeeded).
    let req = VoteRequest {
        pre: false,
        last_index: 100,
        last_term: term,
        transfer: false,
    };
    net.deliver(msg(3, 2, term + 1, MessageBody::Vote(req)));
    net.settle();
    assert_eq!(
        net.node(2).raft.term(),
        term,
        "a sticky follower neither bumps its term nor answers"
    );
    assert_eq!(net.leaders(), vec![1]);
    // A transfer's vote request is honoured even so.
    net.deliver(msg(
        3,
        2,
        term + 1,
        MessageBody::Vote(VoteRequest {
            transfer: true,
            ..req
        }),
    ));
    assert_eq!(net.node(2).raft.term(), term + 1);
}

#[test]
fn dueling_candidates_end_with_one_leader_and_one_log() {
    let mut net = Net::with(3, no_pre_vote);
    // Both start at once; node 3 sees node 1's request first.
    net.raft(1).start_election();
    net.raft(2).start_election();
    net.settle();
    assert_eq!(net.leaders(), vec![1]);
    assert_eq!(net.node(2).raft.role(), Role::Follower);
    // Now cut 1 from 3 and let 3 campaign repeatedly: it may raise terms,
    // but there is never more than one leader in a term, and logs converge.
    net.cut.insert((1, 3));
    net.cut.insert((3, 1));
    let mut leaders_by_term = std::collections::BTreeMap::new();
    for _ in 0..200 {
        net.tick_all(1);
        for id in net.leaders() {
            let t = net.node(id).raft.term();
            let prev = leaders_by_term.insert(t, id);
            assert!(
                prev.is_none() || prev == Some(id),
                "two leaders in term {t}"
            );
        }
    }
    net.heal();
    net.tick_all(50);
    assert_eq!(net.leaders().len(), 1);
    let l = net.leaders()[0];
    net.propose(l, b"after").unwrap();
    net.tick_all(3);
    let logs: Vec<_> = net
        .nodes
        .values()
        .map(|n| n.raft.storage().all().to_vec())
        .collect();
    assert!(
        logs.windows(2).all(|w| w[0] == w[1]),
        "logs differ after healing"
    );
}

#[test]
fn a_stale_leader_learns_of_a_newer_term_and_steps_down() {
    // Node 3 raised its term while cut off (pre-vote off for it), and its log
    // is behind, so it cannot win. The leader must still learn of the term.
    let mut net = Net::with(3, |c| c.pre_vote = c.id != 3);
    assert!(net.elect(1));
    net.propose(1, b"a").unwrap();
    net.isolate(3);
    net.propose(1, b"b").unwrap();
    for _ in 0..25 {
        net.tick(3);
        net.settle();
    }
    let high = net.node(3).raft.term();
    assert!(high > net.node(1).raft.term());
    net.heal();
    net.tick_all(60);
    let l = net.leaders();
    assert_eq!(l.len(), 1);
    assert_ne!(l[0], 3, "node 3's log is behind; it cannot win");
    assert!(net.node(l[0]).raft.term() >= high);
}

#[test]
fn a_single_voter_elects_itself_and_commits_alone() {
    let mut net = Net::new(1);
    net.tick_all(25);
    assert_eq!(net.leaders(), vec![1]);
    let p = net.propose(1, b"solo").unwrap();
    assert_eq!(p.base_offset, 0);
    assert_eq!(net.applied_data(1), vec![b"solo".to_vec()]);
}

#[test]
fn learners_never_campaign_or_vote_toward_commit() {
    let mut net = Net::with_members(&[1, 2, 3], &[4], |_| {});
    for _ in 0..100 {
        net.tick(4);
        net.settle();
    }
    assert_eq!(net.node(4).raft.role(), Role::Follower);
    assert_eq!(net.node(4).raft.term(), 0);
    assert!(net.elect(1));
    net.isolate(2);
    net.cut.retain(|l| *l != (2, 4) && *l != (4, 2));
    net.isolate(3);
    net.cut.remove(&(1, 4));
    net.cut.remove(&(4, 1));
    let before = net.node(1).status().commit;
    net.propose(1, b"x").unwrap();
    assert_eq!(
        net.node(4).raft.status().last_index,
        net.node(1).status().last_index,
        "the learner gets the log"
    );
    assert_eq!(
        net.node(1).status().commit,
        before,
        "leader + learner is not a quorum"
    );
}
