//! The persistence discipline of the output contract: nothing that reveals
//! unpersisted state leaves before storage reports it durable.

use super::harness::*;
use crate::*;

fn kinds(msgs: &[Message]) -> Vec<&'static str> {
    msgs.iter().map(|m| m.body.kind()).collect()
}

#[test]
fn a_follower_acknowledges_entries_only_after_persisting_them() {
    let mut r = raft_with_log(2, 3, &[], 1, |_| {});
    let e = ents(&[1, 1]);
    r.step(msg(
        1,
        2,
        1,
        MessageBody::Append(Append {
            prev_index: 0,
            prev_term: 0,
            commit: 0,
            entries: e,
        }),
    ))
    .unwrap();
    let rd = r.ready().unwrap();
    assert_eq!(rd.entries.len(), 2);
    assert!(
        rd.messages.is_empty(),
        "the acknowledgement must wait: {:?}",
        kinds(&rd.messages)
    );
    let id = rd.persist_id.unwrap();
    assert!(!r.has_ready() || r.ready().unwrap().messages.is_empty());
    r.storage_mut().append(&rd.entries);
    r.on_persisted(id).unwrap();
    let rd = r.ready().unwrap();
    assert_eq!(kinds(&rd.messages), vec!["append-response"]);
}

#[test]
fn vote_requests_wait_for_the_new_term_and_self_vote() {
    let mut r = raft_with_log(1, 3, &[], 4, no_pre_vote);
    r.start_election();
    let rd = r.ready().unwrap();
    assert_eq!(rd.hard_state, Some(HardState { term: 5, vote: 1 }));
    assert!(
        rd.messages.is_empty(),
        "vote requests went out before term 5 was durable"
    );
    r.on_persisted(rd.persist_id.unwrap()).unwrap();
    let rd = r.ready().unwrap();
    assert_eq!(kinds(&rd.messages), vec!["vote", "vote"]);
}

#[test]
fn pre_vote_requests_need_nothing_durable() {
    let mut r = raft_with_log(1, 3, &[], 4, |_| {});
    r.start_election();
    let rd = r.ready().unwrap();
    assert_eq!(rd.hard_state, None);
    assert_eq!(kinds(&rd.messages), vec!["pre-vote", "pre-vote"]);
}

#[test]
fn a_vote_grant_waits_for_the_vote_to_be_durable() {
    let mut r = raft_with_log(2, 3, &[], 1, no_pre_vote);
    let req = VoteRequest {
        pre: false,
        last_index: 0,
        last_term: 0,
        transfer: false,
    };
    r.step(msg(1, 2, 2, MessageBody::Vote(req))).unwrap();
    let rd = r.ready().unwrap();
    assert_eq!(rd.hard_state, Some(HardState { term: 2, vote: 1 }));
    assert!(rd.messages.is_empty());
    r.on_persisted(rd.persist_id.unwrap()).unwrap();
    let rd = r.ready().unwrap();
    assert_eq!(
        rd.messages[0].body,
        MessageBody::VoteResponse {
            pre: false,
            granted: true
        }
    );
}

#[test]
fn persistence_can_be_pipelined_across_readies() {
    let mut r = raft_with_log(2, 3, &[], 1, |_| {});
    let mut ids = Vec::new();
    for i in 1..=3u64 {
        let e = vec![entry(1, i, i - 1, b"x")];
        r.step(msg(
            1,
            2,
            1,
            MessageBody::Append(Append {
                prev_index: i - 1,
                prev_term: if i == 1 { 0 } else { 1 },
                commit: 0,
                entries: e,
            }),
        ))
        .unwrap();
        let rd = r.ready().unwrap();
        assert!(rd.messages.is_empty());
        r.storage_mut().append(&rd.entries);
        ids.push(rd.persist_id.unwrap());
    }
    r.on_persisted(ids[1]).unwrap();
    let acks: Vec<Index> = r
        .ready()
        .unwrap()
        .messages
        .iter()
        .filter_map(|m| match m.body {
            MessageBody::AppendResponse(a) => Some(a.index),
            _ => None,
        })
        .collect();
    assert_eq!(acks, vec![1, 2], "acks for the first two writes only");
    assert_eq!(r.status().persisted, 2);
    r.on_persisted(ids[2]).unwrap();
    assert_eq!(r.status().persisted, 3);
    assert!(matches!(
        r.on_persisted(99),
        Err(Error::UnknownPersist { .. })
    ));
}

#[test]
fn a_truncation_pending_behind_older_writes_keeps_persisted_honest() {
    let mut r = raft_with_log(2, 3, &[1], 1, |_| {});
    // Term-1 leader sends entries 2..=4; the write is in flight.
    let old: Vec<Entry> = (2..=4).map(|i| entry(1, i, i - 1, b"old")).collect();
    r.step(msg(
        1,
        2,
        1,
        MessageBody::Append(Append {
            prev_index: 1,
            prev_term: 1,
            commit: 0,
            entries: old,
        }),
    ))
    .unwrap();
    let rd1 = r.ready().unwrap();
    // A term-2 leader overwrites from index 3 before that write completes.
    let new: Vec<Entry> = vec![entry(2, 3, 2, b"new")];
    r.step(msg(
        3,
        2,
        2,
        MessageBody::Append(Append {
            prev_index: 2,
            prev_term: 1,
            commit: 0,
            entries: new.clone(),
        }),
    ))
    .unwrap();
    let rd2 = r.ready().unwrap();
    assert_eq!(rd2.entries, new, "the second write starts at the conflict");
    r.storage_mut().append(&rd1.entries);
    r.on_persisted(rd1.persist_id.unwrap()).unwrap();
    assert_eq!(
        r.status().persisted,
        2,
        "entries 3 and 4 of term 1 are no longer ours"
    );
    let rd = r.ready().unwrap();
    assert!(
        rd.messages.iter().all(|m| m.to == 1),
        "only the old leader's ack may go"
    );
    r.storage_mut().append(&rd2.entries);
    r.on_persisted(rd2.persist_id.unwrap()).unwrap();
    assert_eq!(r.status().persisted, 3);
    let log: Vec<_> = r
        .storage()
        .all()
        .iter()
        .map(|e| (e.index(), e.term()))
        .collect();
    assert_eq!(log, vec![(1, 1), (2, 1), (3, 2)]);
}

#[test]
fn a_restarted_voter_remembers_its_vote() {
    let mut net = Net::with(3, no_pre_vote);
    net.isolate(1);
    net.cut.remove(&(1, 2));
    net.cut.remove(&(2, 1));
    net.raft(1).start_election();
    net.settle();
    assert_eq!(net.node(2).hard_state, HardState { term: 1, vote: 1 });
    net.restart(2);
    // Node 3 asks node 2 for its vote in the same term.
    let req = VoteRequest {
        pre: false,
        last_index: 0,
        last_term: 0,
        transfer: false,
    };
    net.deliver(msg(3, 2, 1, MessageBody::Vote(req)));
    let rd = net.raft(2).ready().unwrap();
    let grants: Vec<bool> = rd
        .messages
        .iter()
        .filter_map(|m| match m.body {
            MessageBody::VoteResponse { granted, .. } => Some(granted),
            _ => None,
        })
        .collect();
    assert_eq!(
        grants,
        vec![false],
        "it voted for node 1 in term 1 before the restart"
    );
}
