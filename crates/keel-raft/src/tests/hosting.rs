//! What a hosting layer (keel-node) builds on: command entries and the
//! bootstrap entry of a new cluster.

use super::harness::*;
use crate::*;

#[test]
fn a_command_commits_is_applied_by_every_node_and_takes_no_offsets() {
    let mut net = Net::new(3);
    assert!(net.elect(1));
    let a = net.propose(1, b"a").unwrap();
    assert_eq!(a.base_offset, 0);
    let cmd = net
        .raft(1)
        .propose_command(b"\x01set preferred", 7)
        .unwrap();
    net.settle();
    assert_eq!(cmd.index, a.index + 1);
    assert_eq!((cmd.base_offset, cmd.record_count), (1, 0));
    let b = net.propose(1, b"b").unwrap();
    assert_eq!(b.base_offset, 1, "the command took no offset");
    net.tick_all(2);
    for id in 1..=3 {
        let node = net.node(id);
        assert!(node.raft.status().commit >= b.index, "node {id}");
        let applied: Vec<&Entry> = node
            .applied
            .iter()
            .filter(|e| e.kind() == EntryKind::Command)
            .collect();
        assert_eq!(applied.len(), 1, "node {id} applied the command once");
        let e = applied[0];
        assert_eq!(e.index(), cmd.index);
        assert_eq!(&e.body()[..], b"\x01set preferred");
        assert_eq!((e.base_offset(), e.end_offset()), (1, 1));
        assert_eq!(e.timestamp(), 7);
        assert_eq!(net.applied_data(id), vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(node.raft.status().next_offset, 2);
    }
}

#[test]
fn a_command_is_refused_like_a_proposal() {
    let mut net = Net::with(3, |c| c.max_uncommitted_bytes = 100);
    assert!(net.elect(1));
    assert_eq!(
        net.raft(2).propose_command(b"x", 0),
        Err(Error::NotLeader { leader: 1 })
    );
    // Back-pressure: followers cannot acknowledge, so nothing commits.
    net.isolate(2);
    net.isolate(3);
    net.raft(1).propose_command(&[0; 60], 0).unwrap();
    assert!(matches!(
        net.raft(1).propose_command(&[0; 60], 0),
        Err(Error::Backpressure { .. })
    ));
    net.heal();
    net.tick_all(3);
    net.raft(1).propose_command(b"", 0).unwrap();
    net.settle();
    net.raft(1).transfer_leader(2).unwrap();
    net.isolate(2);
    assert_eq!(
        net.raft(1).propose_command(b"x", 0),
        Err(Error::TransferInProgress(2))
    );
}

#[test]
fn founders_that_write_the_bootstrap_entry_elect_a_leader_at_term_two_and_commit() {
    let mut boot = Membership::new([1, 2], []);
    for (id, addr) in [(1, "h1:7000"), (2, "h2:7000")] {
        boot.info
            .insert(id, bytes::Bytes::copy_from_slice(addr.as_bytes()));
    }
    let entry = bootstrap_entry(&boot);
    assert_eq!(
        entry.as_bytes(),
        bootstrap_entry(&boot.clone()).as_bytes(),
        "byte-identical across calls"
    );
    assert_eq!(
        (entry.kind(), entry.index(), entry.term()),
        (EntryKind::Config, 1, 1)
    );
    assert_eq!((entry.base_offset(), entry.timestamp()), (0, 0));
    assert_eq!(decode_membership(&entry.body()).unwrap(), boot);
    assert_eq!(&entry.body()[..], &encode_membership(&boot)[..]);

    let mut net = Net::with_members(&[], &[], |_| {});
    for id in [1, 2] {
        // What every founder writes before its raft starts.
        let mut storage = MemStorage::new();
        storage.append(&[bootstrap_entry(&boot)]);
        let hs = HardState {
            term: 1,
            vote: NONE,
        };
        let init = InitialState {
            hard_state: hs,
            membership: Membership::default(),
            applied: 0,
        };
        let raft = Raft::new(cfg(id), storage, init, id * 7919).unwrap();
        assert_eq!(raft.membership(), &boot, "node {id} reads it from its log");
        net.nodes.insert(id, Node::wrap(raft, hs));
    }
    net.tick_all(50);
    let l = net.leaders();
    assert_eq!(l.len(), 1, "{l:?}");
    let term = net.node(l[0]).raft.term();
    assert!(term >= 2, "first election at term {term}");
    let p = net.propose(l[0], b"first").unwrap();
    assert_eq!(p.base_offset, 0);
    net.tick_all(2);
    for id in [1, 2] {
        let node = net.node(id);
        assert_eq!(net.applied_data(id), vec![b"first".to_vec()], "node {id}");
        assert_eq!(node.applied[0].as_bytes(), entry.as_bytes(), "node {id}");
        assert_eq!(node.raft.membership(), &boot);
        assert!(node.hard_state.term >= 2);
    }
}
