//! Leadership transfer and preferred leaders.

use super::harness::*;
use crate::*;

#[test]
fn transfer_to_an_up_to_date_follower() {
    let mut net = Net::new(3);
    assert!(net.elect(1));
    net.propose(1, b"a").unwrap();
    let term = net.node(1).raft.term();
    net.raft(1).transfer_leader(2).unwrap();
    net.settle();
    assert_eq!(net.leaders(), vec![2]);
    assert_eq!(net.node(2).raft.term(), term + 1);
    assert!(
        net.log
            .iter()
            .any(|m| m.body == MessageBody::TimeoutNow && m.to == 2)
    );
    net.propose(2, b"b").unwrap();
    assert_eq!(net.applied_data(3), vec![b"a".to_vec(), b"b".to_vec()]);
}

#[test]
fn transfer_to_a_lagging_follower_catches_it_up_first() {
    let mut net = Net::new(3);
    assert!(net.elect(1));
    net.isolate(3);
    for i in 0..20u8 {
        net.propose(1, &[i]).unwrap();
    }
    net.heal();
    net.raft(1).transfer_leader(3).unwrap();
    assert_eq!(
        net.propose(1, b"x"),
        Err(Error::TransferInProgress(3)),
        "proposals wait during a transfer"
    );
    net.settle();
    net.tick_all(3);
    assert_eq!(net.leaders(), vec![3]);
    assert_eq!(net.applied_data(3).len(), 20);
    // TimeoutNow went only after node 3 held the whole log.
    let first_timeout = net
        .log
        .iter()
        .position(|m| m.body == MessageBody::TimeoutNow)
        .unwrap();
    let caught_up_ack = net.log.iter().position(|m| {
        m.from == 3
            && matches!(
                m.body,
                MessageBody::AppendResponse(AppendResponse {
                    index: 21,
                    reject: None
                })
            )
    });
    assert!(caught_up_ack.is_some_and(|a| a < first_timeout));
}

#[test]
fn a_transfer_that_cannot_finish_times_out_and_proposals_resume() {
    let mut net = Net::new(3);
    assert!(net.elect(1));
    net.isolate(3);
    net.cut.remove(&(1, 2));
    net.cut.remove(&(2, 1));
    net.raft(1).transfer_leader(3).unwrap();
    assert_eq!(net.node(1).raft.status().transfer_target, Some(3));
    net.tick_all(9);
    assert!(net.propose(1, b"x").is_err());
    net.tick_all(2);
    assert_eq!(net.node(1).raft.status().transfer_target, None);
    assert_eq!(net.leaders(), vec![1]);
    assert!(net.propose(1, b"x").is_ok());
}

#[test]
fn transfer_argument_errors() {
    let mut net = Net::with_members(&[1, 2, 3], &[4], |_| {});
    assert!(net.elect(1));
    assert_eq!(net.raft(1).transfer_leader(4), Err(Error::NotAVoter(4)));
    assert_eq!(net.raft(1).transfer_leader(9), Err(Error::NotAVoter(9)));
    assert_eq!(net.raft(1).transfer_leader(1), Ok(()));
    assert_eq!(
        net.raft(2).transfer_leader(3),
        Err(Error::NotLeader { leader: 1 })
    );
}

#[test]
fn a_leader_hands_over_to_the_preferred_node_once_it_settles() {
    let mut net = Net::with(3, |c| {
        c.preferred_leaders = vec![3];
        c.preferred_settle_ticks = 20;
    });
    assert!(net.elect(1));
    net.propose(1, b"a").unwrap();
    net.tick_all(10);
    assert_eq!(net.leaders(), vec![1], "not before the settle time");
    net.tick_all(20);
    assert_eq!(net.leaders(), vec![3]);
    // And it stays there.
    let term = net.node(3).raft.term();
    net.tick_all(200);
    assert_eq!(net.leaders(), vec![3]);
    assert_eq!(net.node(3).raft.term(), term);
}

#[test]
fn a_partitioned_preferred_node_causes_no_flapping() {
    let mut net = Net::with(3, |c| {
        c.preferred_leaders = vec![3];
        c.preferred_settle_ticks = 20;
    });
    assert!(net.elect(1));
    net.isolate(3);
    let mut changes = 0;
    let mut leader = 1;
    for _ in 0..1000 {
        net.tick_all(1);
        let l = net.leaders();
        if l.len() == 1 && l[0] != leader {
            changes += 1;
            leader = l[0];
        }
    }
    assert_eq!(
        changes, 0,
        "leadership moved while the preferred node was away"
    );
    assert_eq!(net.node(1).raft.term(), net.node(2).raft.term());
    net.heal();
    net.tick_all(60);
    assert_eq!(
        net.leaders(),
        vec![3],
        "handed over once the preferred node is back and settled"
    );
}

#[test]
fn a_preferred_node_that_cannot_win_is_backed_off() {
    // Node 3 receives the log and acknowledges it, but every vote request it
    // sends is lost, so each election it is handed fails (and, being a real
    // election, deposes the leader). Hand-overs must back off, across leader
    // changes, instead of repeating every settle time.
    let mut net = Net::with(3, |c| {
        c.preferred_leaders = vec![3];
        c.preferred_settle_ticks = 10;
    });
    assert!(net.elect(1));
    net.drop_if = Some(|m| m.from == 3 && matches!(m.body, MessageBody::Vote(_)));
    let mut timeout_nows = 0;
    let mut terms = std::collections::BTreeSet::new();
    for _ in 0..1500 {
        let before = net.log.len();
        net.tick_all(1);
        timeout_nows += net.log[before..]
            .iter()
            .filter(|m| m.body == MessageBody::TimeoutNow)
            .count();
        for id in net.leaders() {
            terms.insert(net.node(id).raft.term());
        }
    }
    assert!(
        timeout_nows >= 2,
        "the scenario must exercise failed hand-overs ({timeout_nows})"
    );
    assert!(
        terms.len() <= 8,
        "{} leader terms in 1500 ticks: flapping",
        terms.len()
    );
    assert_eq!(net.leaders().len(), 1);
    assert_ne!(net.leaders(), vec![3]);
}

#[test]
fn set_preferred_leaders_at_run_time_hands_over_to_the_newly_preferred_voter() {
    let mut net = Net::with(3, |c| c.preferred_settle_ticks = 20);
    assert!(net.elect(1));
    net.propose(1, b"a").unwrap();
    net.tick_all(60);
    assert_eq!(net.leaders(), vec![1], "nobody is preferred yet");
    // The hosting layer applies the setting on every node.
    for id in 1..=3 {
        net.raft(id).set_preferred_leaders(vec![3]);
        assert_eq!(net.node(id).raft.preferred_leaders(), &[3]);
    }
    net.tick_all(10);
    assert_eq!(net.leaders(), vec![1], "not before the settle time");
    net.tick_all(20);
    assert_eq!(net.leaders(), vec![3]);
    // Preferring another node moves leadership again, after it settles.
    for id in 1..=3 {
        net.raft(id).set_preferred_leaders(vec![2, 3]);
    }
    net.tick_all(10);
    assert_eq!(net.leaders(), vec![3]);
    net.tick_all(20);
    assert_eq!(net.leaders(), vec![2]);
    net.propose(2, b"b").unwrap();
    assert_eq!(net.applied_data(3), vec![b"a".to_vec(), b"b".to_vec()]);
    // No preference: leadership stays where it is.
    let term = net.node(2).raft.term();
    for id in 1..=3 {
        net.raft(id).set_preferred_leaders(Vec::new());
    }
    net.tick_all(200);
    assert_eq!(net.leaders(), vec![2]);
    assert_eq!(net.node(2).raft.term(), term);
}

#[test]
fn a_node_preferred_again_must_settle_again() {
    // Node 3 is preferred, then not (while it stays caught up), then
    // preferred again: the leader must not hand over at once on the strength
    // of a "caught up since" from before.
    let mut net = Net::with(3, |c| {
        c.preferred_leaders = vec![3];
        c.preferred_settle_ticks = 20;
    });
    assert!(net.elect(1));
    net.tick_all(15);
    net.raft(1).set_preferred_leaders(vec![]);
    net.tick_all(30);
    net.raft(1).set_preferred_leaders(vec![3]);
    net.tick_all(5);
    assert_eq!(net.leaders(), vec![1], "handed over without settling again");
    net.tick_all(20);
    assert_eq!(net.leaders(), vec![3]);
}
