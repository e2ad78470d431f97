//! ReadIndex: confirmed by a quorum round, at a commit index of this term;
//! forwarded from followers; batched; and the optional lease.

use super::harness::*;
use crate::*;

fn heartbeats(net: &Net) -> usize {
    net.log
        .iter()
        .filter(|m| matches!(m.body, MessageBody::Heartbeat { .. }))
        .count()
}

#[test]
fn a_read_on_the_leader_is_confirmed_by_a_quorum_round() {
    let mut net = Net::new(3);
    assert!(net.elect(1));
    net.propose(1, b"a").unwrap();
    let commit = net.node(1).raft.status().commit;
    net.raft(1).read_index(7).unwrap();
    net.settle();
    assert_eq!(
        net.node(1).reads,
        vec![ReadState {
            ctx: 7,
            index: commit
        }]
    );
}

#[test]
fn an_isolated_leader_cannot_confirm_a_read() {
    let mut net = Net::with(3, |c| c.check_quorum = false);
    assert!(net.elect(1));
    net.isolate(1);
    net.raft(1).read_index(7).unwrap();
    net.tick_all(30);
    assert!(
        net.node(1).reads.is_empty(),
        "a leader cut off from a quorum must not serve reads"
    );
}

#[test]
fn a_new_leader_waits_for_its_noop_before_reading() {
    // A leader (term 2) over entries of term 1: its commit index is from an
    // older term until the no-op commits.
    let mut r = raft_with_log(1, 3, &[1, 1], 1, |_| {});
    make_leader(&mut r);
    drain(&mut r);
    r.read_index(42).unwrap();
    let rd = r.ready().unwrap();
    assert!(rd.read_states.is_empty());
    assert!(
        !rd.messages
            .iter()
            .any(|m| matches!(m.body, MessageBody::Heartbeat { .. })),
        "no round before the no-op commits"
    );
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
    let rd = r.ready().unwrap();
    let seq = rd
        .messages
        .iter()
        .find_map(|m| match m.body {
            MessageBody::Heartbeat { read_seq, .. } => Some(read_seq),
            _ => None,
        })
        .expect("a read round starts once the no-op commits");
    assert!(rd.read_states.is_empty());
    r.step(msg(
        3,
        1,
        t,
        MessageBody::HeartbeatResponse { read_seq: seq },
    ))
    .unwrap();
    let rd = r.ready().unwrap();
    assert_eq!(
        rd.read_states,
        vec![ReadState { ctx: 42, index: 3 }],
        "served at the no-op's index"
    );
}

#[test]
fn followers_forward_reads_to_the_leader() {
    let mut net = Net::new(3);
    assert!(net.elect(1));
    net.propose(1, b"a").unwrap();
    net.propose(1, b"b").unwrap();
    net.raft(3).read_index(9).unwrap();
    net.settle();
    let commit = net.node(1).raft.status().commit;
    assert_eq!(
        net.node(3).reads,
        vec![ReadState {
            ctx: 9,
            index: commit
        }]
    );
    assert!(net.node(1).reads.is_empty());
}

#[test]
fn a_read_without_a_leader_fails_at_once() {
    let mut r = raft_with_log(1, 3, &[], 0, |_| {});
    assert_eq!(r.read_index(1), Err(Error::NotLeader { leader: NONE }));
}

#[test]
fn reads_that_arrive_together_share_one_round() {
    let mut net = Net::new(5);
    assert!(net.elect(1));
    net.log.clear();
    for ctx in 0..100 {
        net.raft(1).read_index(ctx).unwrap();
    }
    net.settle();
    assert_eq!(net.node(1).reads.len(), 100);
    assert_eq!(heartbeats(&net), 4, "one round to the four followers");
}

#[test]
fn reads_fail_when_leadership_is_lost() {
    let mut net = Net::new(3);
    assert!(net.elect(1));
    net.isolate(1);
    net.raft(1).read_index(5).unwrap();
    net.tick_all(25);
    assert_eq!(net.node(1).raft.role(), Role::Follower);
    assert_eq!(net.node(1).failed_reads, vec![5]);
}

#[test]
fn a_forwarded_read_is_refused_by_a_non_leader() {
    let mut net = Net::new(3);
    assert!(net.elect(1));
    // Node 3 thinks node 2 leads (stale); node 2 refuses.
    net.deliver(msg(
        3,
        2,
        net.node(2).raft.term(),
        MessageBody::ReadIndex { ctx: 3 },
    ));
    net.settle();
    assert_eq!(net.node(3).failed_reads, vec![3]);
}

#[test]
fn lease_reads_skip_the_round_only_while_the_lease_holds() {
    let mut net = Net::with(3, |c| c.read_mode = ReadMode::Lease);
    assert!(net.elect(1));
    net.tick_all(2); // heartbeats acknowledged: lease established
    net.log.clear();
    net.raft(1).read_index(1).unwrap();
    net.settle();
    assert_eq!(net.node(1).reads.len(), 1);
    assert_eq!(heartbeats(&net), 0, "served from the lease, no round");
    net.isolate(1);
    for _ in 0..9 {
        net.tick(1);
        net.settle();
    }
    net.raft(1).read_index(2).unwrap();
    net.settle();
    assert_eq!(
        net.node(1).reads.len(),
        1,
        "the lease ran out; the read waits for a quorum"
    );
}
