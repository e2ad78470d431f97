//! Snapshots: compaction, catching a follower up through a snapshot sent in
//! chunks (with a lost chunk, with a leader change mid-way), and restarting
//! from a snapshot plus the log after it.

use super::harness::*;
use crate::*;

fn chunks(net: &Net) -> usize {
    net.log
        .iter()
        .filter(|m| matches!(m.body, MessageBody::Snapshot(_)))
        .count()
}

/// Leader 1 of 3 with node 3 cut off while `n` records are committed and
/// the leader's log compacted past what node 3 holds.
fn lagging_follower(n: u8, chunk: usize) -> Net {
    let mut net = Net::with(3, |c| c.snapshot_chunk_bytes = chunk);
    assert!(net.elect(1));
    net.isolate(3);
    for i in 0..n {
        net.propose(1, &[i; 10]).unwrap();
    }
    let meta = net.snapshot(1, 2);
    assert!(
        net.node(1).raft.status().first_index > 2,
        "compacted: {meta:?}"
    );
    net
}

#[test]
fn a_lagging_follower_catches_up_through_a_snapshot_in_chunks() {
    let mut net = lagging_follower(40, 64);
    net.heal();
    net.log.clear();
    net.tick_all(10);
    assert_eq!(net.node(3).installs, 1);
    assert!(chunks(&net) > 5, "sent in several chunks: {}", chunks(&net));
    assert_eq!(net.applied_data(3), net.applied_data(1));
    // And it keeps replicating normally afterwards.
    net.propose(1, b"after").unwrap();
    assert_eq!(net.applied_data(3).last().unwrap(), b"after");
    let st = net.node(3).raft.status();
    assert_eq!(st.commit, net.node(1).raft.status().commit);
}

#[test]
fn a_lost_chunk_is_resent_from_where_the_follower_is() {
    let mut net = lagging_follower(40, 64);
    net.heal();
    // Lose every third snapshot chunk for a while.
    net.drop_if = Some(|m| matches!(&m.body, MessageBody::Snapshot(c) if (c.offset / 64) % 3 == 1));
    net.tick_all(3);
    assert_eq!(net.node(3).installs, 0);
    net.drop_if = None;
    net.tick_all(20);
    assert_eq!(net.node(3).installs, 1);
    assert_eq!(net.applied_data(3), net.applied_data(1));
    // No chunk was accepted twice or out of order (the harness asserts
    // order when staging), and the data is whole.
}

#[test]
fn a_leader_change_mid_transfer_abandons_it_and_the_new_leader_catches_up_the_follower() {
    let mut net = lagging_follower(40, 64);
    // Node 2's snapshot is taken at another point, so the new leader's
    // transfer is a different snapshot from the one under way.
    net.propose(1, b"more").unwrap();
    net.snapshot(2, 2);
    net.heal();
    // Only the first few chunks of node 1's transfer get through.
    net.drop_if =
        Some(|m| matches!(&m.body, MessageBody::Snapshot(c) if m.from == 1 && c.offset >= 192));
    net.tick_all(2);
    assert_eq!(net.node(3).installs, 0);
    assert!(!net.node(3).staged.is_empty(), "a transfer is under way");
    net.isolate(1);
    net.tick_all(40);
    let l = net.leaders();
    assert_eq!(l.len(), 1);
    assert_ne!(l[0], 1);
    net.propose(l[0], b"new term").unwrap();
    net.tick_all(10);
    assert_eq!(net.node(3).installs, 1, "installed exactly once");
    assert_eq!(net.applied_data(3), net.applied_data(l[0]));
}

#[test]
fn a_snapshot_ack_waits_for_the_install_to_be_durable() {
    let mut net = lagging_follower(10, 1 << 20);
    net.nodes.get_mut(&3).unwrap().hold_persist = true;
    net.heal();
    net.tick_all(2);
    assert_eq!(net.node(3).installs, 1);
    assert!(
        !net.log.iter().any(|m| matches!(
            m.body,
            MessageBody::SnapshotResponse {
                installed: true,
                ..
            }
        )),
        "acknowledged before the install was persisted"
    );
    net.release_persist(3);
    net.settle();
    assert!(net.log.iter().any(|m| matches!(
        m.body,
        MessageBody::SnapshotResponse {
            installed: true,
            ..
        }
    )));
}

#[test]
fn a_node_restarts_from_its_snapshot_and_the_log_after_it() {
    let mut net = Net::new(3);
    assert!(net.elect(1));
    for i in 0..20u8 {
        net.propose(1, &[i]).unwrap();
    }
    net.snapshot(2, 0);
    for i in 20..25u8 {
        net.propose(1, &[i]).unwrap();
    }
    let before = net.applied_data(2);
    assert_eq!(before.len(), 25);
    net.restart(2);
    let st = net.node(2).raft.status();
    assert!(st.first_index > 1);
    assert_eq!(net.applied_data(2).len(), 20, "restored from the snapshot");
    net.tick_all(3);
    assert_eq!(net.applied_data(2), before, "then the log after it");
    assert_eq!(net.node(2).raft.status().next_offset, 25);
}

#[test]
fn snapshot_meta_describes_the_point_and_refuses_unapplied_indexes() {
    let mut net = Net::with_members(&[1, 2, 3], &[4], |_| {});
    assert!(net.elect(1));
    for i in 0..5u8 {
        net.propose(1, &[i, i]).unwrap();
    }
    let st = net.node(1).raft.status();
    let meta = net.node(1).raft.snapshot_meta(st.applied).unwrap();
    assert_eq!(
        (meta.index, meta.term, meta.next_offset),
        (st.applied, st.term, 5)
    );
    assert_eq!(meta.membership, Membership::new([1, 2, 3], [4]));
    assert!(net.node(1).raft.snapshot_meta(st.applied + 1).is_err());
}

#[test]
fn a_new_node_joins_through_a_snapshot() {
    let mut net = Net::new(3);
    assert!(net.elect(1));
    for i in 0..30u8 {
        net.propose(1, &[i]).unwrap();
    }
    net.snapshot(1, 0);
    net.add_node(4, |_| {});
    net.raft(1)
        .propose_conf_change(&[ConfChangeOp::AddLearner(4)], LaggingLearner::Refuse, 0)
        .unwrap();
    net.settle();
    net.tick_all(5);
    assert_eq!(net.node(4).installs, 1);
    assert_eq!(net.applied_data(4), net.applied_data(1));
    assert!(net.node(4).raft.membership().is_learner(4));
}

#[test]
fn duplicated_responses_do_not_multiply_snapshot_chunks() {
    // Every message arrives twice. Each duplicated response used to make
    // the leader send another chunk, and each extra chunk drew more
    // responses: the transfer forked exponentially (found by the
    // simulator as a message storm).
    let mut net = lagging_follower(60, 64);
    let size = net.node(1).raft.storage().snapshot().unwrap().size;
    let needed = size.div_ceil(64) as usize;
    net.duplicate = true;
    net.heal();
    net.log.clear();
    net.tick_all(10);
    assert_eq!(net.node(3).installs, 1);
    let sent = net
        .log
        .iter()
        .filter(|m| m.from == 1 && matches!(m.body, MessageBody::Snapshot(_)))
        .count();
    // Delivered twice each, plus at most a resend per heartbeat.
    assert!(
        sent <= 2 * needed + 30,
        "{sent} chunk deliveries for {needed} chunks"
    );
}

#[test]
fn after_a_restart_a_snapshot_describes_the_configuration_of_its_own_index() {
    // Found by the simulator: a restart loads only the last two
    // configuration entries, and a snapshot at an index below both fell back
    // to the bootstrap configuration (empty for a node added later), which
    // produced a snapshot no follower could use.
    let mut net = Net::new(3);
    assert!(net.elect(1));
    net.add_node(4, |_| {});
    net.raft(1)
        .propose_conf_change(&[ConfChangeOp::AddLearner(4)], LaggingLearner::Refuse, 0)
        .unwrap();
    net.settle();
    net.tick_all(3);
    let first_change = net.node(4).raft.status().last_index;
    for id in [5, 6] {
        net.propose(1, b"x").unwrap();
        net.raft(1)
            .propose_conf_change(&[ConfChangeOp::AddLearner(id)], LaggingLearner::Refuse, 0)
            .unwrap();
        net.settle();
        net.tick_all(3);
    }
    net.restart(4);
    net.tick_all(3);
    let meta = net.node(4).raft.snapshot_meta(first_change).unwrap();
    assert_eq!(meta.membership, Membership::new([1, 2, 3], [4]));
    let later = net
        .node(4)
        .raft
        .snapshot_meta(net.node(4).raft.status().applied)
        .unwrap();
    assert_eq!(later.membership, Membership::new([1, 2, 3], [4, 5, 6]));
}

#[test]
fn a_snapshot_meta_carries_member_info_and_a_follower_installing_it_has_it() {
    let mut net = Net::new(3);
    assert!(net.elect(1));
    net.isolate(3);
    let mut change = ConfChange::default();
    for (id, s) in [(1, "a"), (2, "b"), (3, "c")] {
        change
            .info
            .insert(id, Some(bytes::Bytes::copy_from_slice(s.as_bytes())));
    }
    let ConfChangeStatus::Proposed(p) = net.raft(1).propose_change(&change, 0).unwrap() else {
        panic!("an info change does not wait");
    };
    net.settle();
    for i in 0..10u8 {
        net.propose(1, &[i]).unwrap();
    }
    let meta = net.snapshot(1, 0);
    let want = net.node(1).raft.membership().clone();
    assert_eq!(want.info.len(), 3);
    assert_eq!(
        meta.membership, want,
        "the snapshot's configuration has the info"
    );
    assert!(
        net.node(1).raft.status().first_index > p.index,
        "the configuration entry is compacted: only the snapshot has it"
    );
    assert!(net.node(3).raft.membership().info.is_empty());
    net.heal();
    net.tick_all(10);
    assert_eq!(net.node(3).installs, 1);
    assert_eq!(net.node(3).raft.membership(), &want);
    assert_eq!(
        net.node(3).raft.storage().snapshot().unwrap().membership,
        want
    );
    // A restart from the installed snapshot keeps it too.
    net.restart(3);
    assert_eq!(net.node(3).raft.membership(), &want);
}
