//! The rules of the Raft paper (§5), one test each, in the spirit of etcd's
//! raft_paper_test.go and raft-rs's test_raft_paper.rs. Pre-vote and
//! check-quorum are off here: these are the paper's rules alone.

use super::harness::*;
use crate::*;

fn append_body(
    prev_index: Index,
    prev_term: Term,
    commit: Index,
    entries: Vec<Entry>,
) -> MessageBody {
    MessageBody::Append(Append {
        prev_index,
        prev_term,
        commit,
        entries,
    })
}

// §5.1: if one server's current term is smaller than the other's, it updates
// its term and, as candidate or leader, reverts to follower.
#[test]
fn every_role_adopts_a_higher_term_and_follows() {
    for role in [Role::Follower, Role::Candidate, Role::Leader] {
        let mut r = raft_with_log(1, 3, &[], 0, no_pre_vote);
        match role {
            Role::Follower => {}
            Role::Candidate => {
                r.start_election();
                drain(&mut r);
            }
            Role::Leader => make_leader(&mut r),
            Role::PreCandidate => unreachable!(),
        }
        assert_eq!(r.role(), role);
        r.step(msg(2, 1, 5, append_body(0, 0, 0, vec![]))).unwrap();
        assert_eq!(r.role(), Role::Follower, "from {role:?}");
        assert_eq!(r.term(), 5);
        assert_eq!(r.leader(), 2);
    }
}

// §5.1: a request with a stale term is rejected: nothing changes, and the
// stale leader is told the newer term (so it steps down).
#[test]
fn stale_term_messages_are_rejected() {
    let mut r = raft_with_log(1, 3, &[1, 2], 2, no_pre_vote);
    r.step(msg(2, 1, 1, append_body(2, 2, 2, vec![]))).unwrap();
    assert_eq!(r.term(), 2);
    assert_eq!(
        r.status().commit,
        0,
        "a stale leader's commit must not be taken"
    );
    let out = drain(&mut r);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].term, 2, "the answer carries the newer term");
    assert!(matches!(out[0].body, MessageBody::AppendResponse(_)));
    // A stale vote request gets no answer and changes nothing.
    let v = VoteRequest {
        pre: false,
        last_index: 9,
        last_term: 1,
        transfer: false,
    };
    r.step(msg(3, 1, 1, MessageBody::Vote(v))).unwrap();
    assert!(drain(&mut r).is_empty());
    assert_eq!(r.status().vote, NONE);
}

// §5.2: servers start as followers.
#[test]
fn nodes_start_as_followers() {
    let r = raft_with_log(1, 3, &[], 0, |_| {});
    assert_eq!(r.role(), Role::Follower);
    assert_eq!(r.leader(), NONE);
}

// §5.2: a leader sends heartbeats to all followers every heartbeat interval.
#[test]
fn leader_sends_heartbeats_every_interval() {
    let mut r = raft_with_log(1, 3, &[], 0, no_pre_vote);
    make_leader(&mut r);
    drain(&mut r);
    r.tick();
    let hb: Vec<_> = drain(&mut r)
        .into_iter()
        .filter(|m| matches!(m.body, MessageBody::Heartbeat { .. }))
        .map(|m| m.to)
        .collect();
    assert_eq!(hb, vec![2, 3]);
}

// §5.2: a follower that hears nothing for an election timeout becomes a
// candidate: term + 1, votes for itself, asks everyone for votes.
#[test]
fn follower_times_out_into_candidacy() {
    let mut r = raft_with_log(1, 3, &[], 1, no_pre_vote);
    for _ in 0..20 {
        r.tick();
    }
    assert_eq!(r.role(), Role::Candidate);
    assert_eq!(r.term(), 2);
    assert_eq!(r.status().vote, 1);
    let mut votes: Vec<_> = drain(&mut r)
        .into_iter()
        .filter(|m| matches!(m.body, MessageBody::Vote(VoteRequest { pre: false, .. })))
        .map(|m| (m.to, m.term))
        .collect();
    votes.sort();
    assert_eq!(votes, vec![(2, 2), (3, 2)]);
}

// §5.2: a candidate wins with votes from a majority, loses with a majority
// against, and otherwise stays a candidate.
#[test]
fn election_outcome_follows_the_majority() {
    // (cluster size, granted by peers 2.., refused by peers) -> role
    let cases: &[(u64, &[NodeId], &[NodeId], Role)] = &[
        (1, &[], &[], Role::Leader),
        (3, &[2], &[], Role::Leader),
        (3, &[2, 3], &[], Role::Leader),
        (3, &[], &[], Role::Candidate),
        (5, &[2, 3], &[], Role::Leader),
        (5, &[2], &[], Role::Candidate),
        (5, &[], &[2, 3, 4], Role::Follower),
        (5, &[2], &[3, 4], Role::Candidate),
        (5, &[2], &[3, 4, 5], Role::Follower),
    ];
    for (n, yes, no, want) in cases {
        let mut r = raft_with_log(1, *n, &[], 0, no_pre_vote);
        r.start_election();
        drain(&mut r);
        for id in *yes {
            r.step(msg(
                *id,
                1,
                1,
                MessageBody::VoteResponse {
                    pre: false,
                    granted: true,
                },
            ))
            .unwrap();
        }
        for id in *no {
            r.step(msg(
                *id,
                1,
                1,
                MessageBody::VoteResponse {
                    pre: false,
                    granted: false,
                },
            ))
            .unwrap();
        }
        assert_eq!(r.role(), *want, "n={n} yes={yes:?} no={no:?}");
    }
}

// §5.2: each server votes for at most one candidate in a term, first come.
#[test]
fn follower_votes_once_per_term() {
    let mut r = raft_with_log(1, 3, &[], 1, no_pre_vote);
    let req = |last_index| {
        MessageBody::Vote(VoteRequest {
            pre: false,
            last_index,
            last_term: 0,
            transfer: false,
        })
    };
    r.step(msg(2, 1, 2, req(0))).unwrap();
    r.step(msg(3, 1, 2, req(0))).unwrap();
    r.step(msg(2, 1, 2, req(0))).unwrap(); // a repeat from the one we chose
    let grants: Vec<_> = drain(&mut r)
        .into_iter()
        .map(|m| match m.body {
            MessageBody::VoteResponse { granted, .. } => (m.to, granted),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(grants, vec![(2, true), (3, false), (2, true)]);
    assert_eq!(r.status().vote, 2);
}

// §5.2: a candidate that hears an append from a leader of its term steps
// down.
#[test]
fn candidate_steps_down_for_a_leader_of_its_term() {
    let mut r = raft_with_log(1, 3, &[], 0, no_pre_vote);
    r.start_election();
    drain(&mut r);
    assert_eq!((r.role(), r.term()), (Role::Candidate, 1));
    r.step(msg(2, 1, 1, append_body(0, 0, 0, vec![]))).unwrap();
    assert_eq!((r.role(), r.term(), r.leader()), (Role::Follower, 1, 2));
}

// §5.2: election timeouts are randomized within [et, 2et).
#[test]
fn election_timeouts_are_randomized_within_bounds() {
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..200 {
        let mut c = cfg(1);
        no_pre_vote(&mut c);
        let init = InitialState {
            membership: Membership::new([1, 2, 3], []),
            ..Default::default()
        };
        let mut r = Raft::new(c, MemStorage::new(), init, seed).unwrap();
        let mut ticks = 0;
        while r.role() == Role::Follower {
            r.tick();
            ticks += 1;
            assert!(ticks < 20, "no election after 2 * election_tick");
        }
        assert!(ticks >= 10);
        seen.insert(ticks);
    }
    assert!(seen.len() >= 8, "timeouts barely vary: {seen:?}");
}

// §5.3: the leader appends a proposal and sends it to every follower with the
// right previous index/term and its commit.
#[test]
fn leader_replicates_a_proposal_to_every_follower() {
    let mut r = raft_with_log(1, 3, &[], 0, no_pre_vote);
    make_leader(&mut r);
    // Followers accept the no-op.
    for id in [2, 3] {
        let resp = MessageBody::AppendResponse(AppendResponse {
            index: 1,
            reject: None,
        });
        r.step(msg(id, 1, 1, resp)).unwrap();
    }
    drain(&mut r);
    assert_eq!(r.status().commit, 1);
    let p = r.propose(BatchBuilder::single(b"x"), 5).unwrap();
    assert_eq!((p.index, p.term, p.base_offset), (2, 1, 0));
    let apps: Vec<_> = drain(&mut r)
        .into_iter()
        .filter_map(|m| match m.body {
            MessageBody::Append(a) => {
                Some((m.to, a.prev_index, a.prev_term, a.commit, a.entries.len()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(apps, vec![(2, 1, 1, 1, 1), (3, 1, 1, 1, 1)]);
}

// §5.3: an entry is committed once the leader replicated it on a majority;
// the leader then applies it.
#[test]
fn commit_needs_a_majority_of_acknowledgements() {
    // (cluster size, peers that acknowledge) -> committed?
    let cases: &[(u64, &[NodeId], bool)] = &[
        (1, &[], true),
        (3, &[], false),
        (3, &[2], true),
        (5, &[2], false),
        (5, &[2, 3], true),
        (5, &[2, 3, 4, 5], true),
    ];
    for (n, acks, want) in cases {
        let mut r = raft_with_log(1, *n, &[], 0, no_pre_vote);
        r.start_election();
        drain(&mut r);
        for id in 2..=(*n / 2 + 1) {
            r.step(msg(
                id,
                1,
                1,
                MessageBody::VoteResponse {
                    pre: false,
                    granted: true,
                },
            ))
            .unwrap();
        }
        drain(&mut r);
        assert_eq!(r.role(), Role::Leader);
        for id in *acks {
            r.step(msg(
                *id,
                1,
                1,
                MessageBody::AppendResponse(AppendResponse {
                    index: 1,
                    reject: None,
                }),
            ))
            .unwrap();
        }
        drain(&mut r);
        assert_eq!(r.status().commit == 1, *want, "n={n} acks={acks:?}");
    }
}

// §5.3: committing an entry commits all preceding entries, including those
// created by previous leaders.
#[test]
fn committing_the_noop_commits_earlier_terms() {
    let mut r = raft_with_log(1, 3, &[1, 1, 2], 2, no_pre_vote);
    make_leader(&mut r);
    assert_eq!(r.term(), 3);
    drain(&mut r);
    r.step(msg(
        2,
        1,
        3,
        MessageBody::AppendResponse(AppendResponse {
            index: 4,
            reject: None,
        }),
    ))
    .unwrap();
    let mut applied = Vec::new();
    while r.has_ready() {
        let rd = r.ready().unwrap();
        r.storage_mut().append(&rd.entries);
        if let Some(id) = rd.persist_id {
            r.on_persisted(id).unwrap();
        }
        applied.extend(rd.committed.iter().map(|e| (e.index(), e.term())));
    }
    assert_eq!(applied, vec![(1, 1), (2, 1), (3, 2), (4, 3)]);
}

// §5.3: followers learn the commit index from appends and apply up to it
// (never past what they hold from this leader).
#[test]
fn follower_commits_what_the_leader_committed() {
    let mut r = raft_with_log(1, 3, &[], 1, no_pre_vote);
    let e = ents(&[1, 1, 1]);
    r.step(msg(2, 1, 1, append_body(0, 0, 2, e.clone())))
        .unwrap();
    drain(&mut r);
    assert_eq!(r.status().commit, 2);
    // A commit index beyond what the message vouches for is clamped to the
    // last entry the append matched.
    r.step(msg(2, 1, 1, append_body(3, 1, 99, vec![]))).unwrap();
    assert_eq!(
        r.status().commit,
        3,
        "only entries up to prev_index are vouched for"
    );
}

// §5.3: a follower rejects an append whose previous index/term it lacks.
#[test]
fn follower_rejects_append_that_does_not_connect() {
    let cases: &[(Index, Term, bool)] = &[
        (0, 0, true),
        (2, 2, true),
        (3, 3, false),
        (2, 1, false),
        (5, 2, false),
    ];
    for (prev_index, prev_term, ok) in cases {
        let mut r = raft_with_log(1, 3, &[1, 2], 2, no_pre_vote);
        r.step(msg(
            2,
            1,
            2,
            append_body(*prev_index, *prev_term, 0, vec![]),
        ))
        .unwrap();
        let resp = drain(&mut r)
            .into_iter()
            .find_map(|m| match m.body {
                MessageBody::AppendResponse(a) => Some(a),
                _ => None,
            })
            .unwrap();
        assert_eq!(
            resp.reject.is_none(),
            *ok,
            "prev=({prev_index},{prev_term})"
        );
    }
}

// §5.3: a conflicting entry and everything after it are deleted, then the
// leader's entries appended.
#[test]
fn follower_replaces_a_conflicting_suffix() {
    let mut r = raft_with_log(1, 3, &[1, 2, 2, 2], 2, no_pre_vote);
    let new = vec![
        BatchBuilder::single(b"n3").seal(EntryKind::Data, 3, 3, 2, 0),
        BatchBuilder::single(b"n4").seal(EntryKind::Data, 3, 4, 3, 0),
    ];
    r.step(msg(2, 1, 3, append_body(2, 2, 0, new.clone())))
        .unwrap();
    drain(&mut r);
    let log: Vec<_> = r
        .storage()
        .all()
        .iter()
        .map(|e| (e.index(), e.term()))
        .collect();
    assert_eq!(log, vec![(1, 1), (2, 2), (3, 3), (4, 3)]);
    assert_eq!(r.storage().all()[2], new[0]);
}

// §5.3, Figure 7: a new leader brings followers with missing, extra and
// conflicting entries into line with its log.
#[test]
fn leader_repairs_every_kind_of_follower_log() {
    let leader_log: &[Term] = &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
    let followers: &[&[Term]] = &[
        &[1, 1, 1, 4, 4, 5, 5, 6, 6],          // (a) missing one
        &[1, 1, 1, 4],                         // (b) missing many
        &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],    // (c) one extra
        &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7], // (d) extra of a later term
        &[1, 1, 1, 4, 4, 4, 4],                // (e) missing and conflicting
        &[1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],    // (f) conflicting over many terms
    ];
    for (i, f) in followers.iter().enumerate() {
        let mut net = Net::with(3, no_pre_vote);
        net.nodes.get_mut(&1).unwrap().raft = raft_with_log(1, 3, leader_log, 7, no_pre_vote);
        net.nodes.get_mut(&2).unwrap().raft = raft_with_log(2, 3, f, 7, no_pre_vote);
        net.nodes.get_mut(&3).unwrap().raft = raft_with_log(3, 3, leader_log, 7, no_pre_vote);
        // Node 3 elects node 1 (term 8) while node 2 is away.
        net.isolate(2);
        assert!(net.elect(1), "case {i}");
        net.heal();
        net.tick_all(3);
        assert_eq!(net.leaders(), vec![1], "case {i}");
        let want: Vec<_> = net
            .node(1)
            .raft
            .storage()
            .all()
            .iter()
            .map(|e| (e.index(), e.term()))
            .collect();
        let got: Vec<_> = net
            .node(2)
            .raft
            .storage()
            .all()
            .iter()
            .map(|e| (e.index(), e.term()))
            .collect();
        assert_eq!(got, want, "case {i}: follower not repaired");
        assert_eq!(
            net.node(2).raft.storage().all(),
            net.node(1).raft.storage().all(),
            "case {i}: bytes differ"
        );
    }
}

// §5.4.1: a vote request carries the candidate's last log index and term.
#[test]
fn vote_requests_carry_last_index_and_term() {
    let mut r = raft_with_log(1, 3, &[1, 1, 2], 2, no_pre_vote);
    r.start_election();
    let reqs: Vec<_> = drain(&mut r)
        .into_iter()
        .filter_map(|m| match m.body {
            MessageBody::Vote(v) => Some((m.term, v.last_index, v.last_term)),
            _ => None,
        })
        .collect();
    assert_eq!(reqs, vec![(3, 3, 2), (3, 3, 2)]);
}

// §5.4.1: a voter denies its vote if its own log is more up to date.
#[test]
fn voter_denies_candidates_with_older_logs() {
    // voter log [1,1] (last term 1, index 2)
    let cases: &[(Index, Term, bool)] = &[
        (2, 1, true),  // same
        (3, 1, true),  // longer, same term
        (1, 1, false), // shorter, same term
        (1, 2, true),  // higher last term
        (5, 0, false), // lower last term
    ];
    for (li, lt, want) in cases {
        let mut r = raft_with_log(1, 3, &[1, 1], 1, no_pre_vote);
        r.step(msg(
            2,
            1,
            3,
            MessageBody::Vote(VoteRequest {
                pre: false,
                last_index: *li,
                last_term: *lt,
                transfer: false,
            }),
        ))
        .unwrap();
        let granted = drain(&mut r)
            .into_iter()
            .find_map(|m| match m.body {
                MessageBody::VoteResponse { granted, .. } => Some(granted),
                _ => None,
            })
            .unwrap();
        assert_eq!(granted, *want, "candidate last=({li},{lt})");
    }
}

// §5.4.2, Figure 8: a leader never commits an entry of an earlier term by
// counting replicas; it commits it only by committing one of its own after.
#[test]
fn figure_8_old_term_entries_are_not_committed_by_counting() {
    // Leader (term 4) holds [1, 2] where entry 2 (term 2) is replicated on a
    // majority, and nothing of term 4 is replicated yet.
    let mut r = raft_with_log(1, 5, &[1, 2], 3, no_pre_vote);
    r.start_election();
    drain(&mut r);
    for id in [2, 3] {
        r.step(msg(
            id,
            1,
            4,
            MessageBody::VoteResponse {
                pre: false,
                granted: true,
            },
        ))
        .unwrap();
    }
    drain(&mut r);
    assert_eq!((r.role(), r.term()), (Role::Leader, 4));
    // Peers 2 and 3 acknowledge entry 2 only (as if the append carrying the
    // no-op had not reached them yet): with the leader, a majority holds 2.
    for id in [2, 3] {
        r.step(msg(
            id,
            1,
            4,
            MessageBody::AppendResponse(AppendResponse {
                index: 2,
                reject: None,
            }),
        ))
        .unwrap();
    }
    drain(&mut r);
    assert_eq!(
        r.status().commit,
        0,
        "entry 2 is of term 2: replicas must not commit it"
    );
    // Once the no-op (index 3, term 4) is on a majority, 1..=3 commit.
    for id in [2, 3] {
        r.step(msg(
            id,
            1,
            4,
            MessageBody::AppendResponse(AppendResponse {
                index: 3,
                reject: None,
            }),
        ))
        .unwrap();
    }
    drain(&mut r);
    assert_eq!(r.status().commit, 3);
}
