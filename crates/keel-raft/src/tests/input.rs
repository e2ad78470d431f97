//! Input from outside never panics and never corrupts state: wrong groups,
//! stale or future terms, indexes past the log, entries that do not connect,
//! and random message storms.

use proptest::prelude::*;

use super::harness::*;
use crate::*;

fn heartbeat(from: NodeId, to: NodeId, term: Term, commit: Index) -> Message {
    msg(
        from,
        to,
        term,
        MessageBody::Heartbeat {
            commit,
            read_seq: 0,
        },
    )
}

#[test]
fn a_message_claiming_a_term_past_the_limit_is_refused_and_changes_nothing() {
    let mut r = raft_with_log(2, 3, &[1, 1], 1, |_| {});
    for term in [u64::MAX, MAX_TERM] {
        let got = r.step(heartbeat(1, 2, term, 2));
        assert!(
            matches!(&got, Err(Error::InvalidMessage { from: 1, reason }) if reason.contains("beyond any a cluster reaches")),
            "term {term}: {got:?}"
        );
        assert_eq!(r.term(), 1, "a refused term is not adopted");
        assert!(!r.has_ready(), "nothing to persist or send");
    }
    // The largest term a cluster can hold is still accepted.
    r.step(heartbeat(1, 2, MAX_TERM - 1, 0)).unwrap();
    assert_eq!(r.term(), MAX_TERM - 1);
}

#[test]
fn a_saved_term_past_the_limit_is_refused_at_start() {
    let init = InitialState {
        hard_state: HardState {
            term: MAX_TERM,
            vote: NONE,
        },
        membership: Membership::new([1, 2, 3], []),
        applied: 0,
    };
    let got = Raft::new(cfg(1), MemStorage::new(), init, 1);
    let Err(e) = got else {
        panic!("a raft started at term {MAX_TERM}");
    };
    assert!(e.to_string().contains("restore this node's data"), "{e}");
}

#[test]
fn a_heartbeat_commits_only_what_the_leader_has_shown_this_follower_holds() {
    // Node 2 holds three entries of term 1, none known committed; node 1
    // leads term 2 and has shown node 2 nothing yet.
    let mut r = raft_with_log(2, 3, &[1, 1, 1], 2, |_| {});
    r.step(heartbeat(1, 2, 2, 3)).unwrap();
    drain(&mut r);
    assert_eq!(
        r.status().commit,
        0,
        "a commit index alone commits nothing (a forged heartbeat would commit a stale suffix)"
    );
    // The leader shows that index 1 matches (an empty append).
    r.step(msg(
        1,
        2,
        2,
        MessageBody::Append(Append {
            prev_index: 1,
            prev_term: 1,
            commit: 0,
            entries: vec![],
        }),
    ))
    .unwrap();
    drain(&mut r);
    r.step(heartbeat(1, 2, 2, 3)).unwrap();
    drain(&mut r);
    assert_eq!(r.status().commit, 1, "up to what was shown, no further");
    // An entry of term 2 at index 2 replaces the stale suffix; from then on
    // the log ends in the leader's term and heartbeats commit up to it.
    r.step(msg(
        1,
        2,
        2,
        MessageBody::Append(Append {
            prev_index: 1,
            prev_term: 1,
            commit: 0,
            entries: vec![entry(2, 2, 1, b"x")],
        }),
    ))
    .unwrap();
    drain(&mut r);
    r.step(heartbeat(1, 2, 2, 3)).unwrap();
    drain(&mut r);
    assert_eq!(r.status().commit, 2);
}

#[test]
fn a_restarted_follower_whose_log_ends_in_the_current_term_commits_from_heartbeats() {
    // After a restart nothing was shown in memory, but entries of the
    // current term can only have come from its leader.
    let mut r = raft_with_log(2, 3, &[1, 2, 2], 2, |_| {});
    r.step(heartbeat(1, 2, 2, 3)).unwrap();
    drain(&mut r);
    assert_eq!(r.status().commit, 3);
}

#[test]
fn an_append_whose_offsets_do_not_continue_the_log_is_refused_untouched() {
    // Entries 1 and 2 hold offsets 0 and 1: the log continues at offset 2.
    let mut r = raft_with_log(2, 3, &[1, 1], 1, |_| {});
    let append = |term: Term, base: u64| {
        msg(
            1,
            2,
            term,
            MessageBody::Append(Append {
                prev_index: 2,
                prev_term: 1,
                commit: 0,
                entries: vec![entry(1, 3, base, b"x")],
            }),
        )
    };
    let got = r.step(append(1, 7));
    assert!(
        matches!(&got, Err(Error::InvalidMessage { from: 1, reason }) if reason.contains("continues at offset 2")),
        "{got:?}"
    );
    assert_eq!(r.status().last_index, 2, "nothing appended");
    // Replacing a suffix is checked against the entry it attaches to.
    let got = r.step(msg(
        1,
        2,
        2,
        MessageBody::Append(Append {
            prev_index: 1,
            prev_term: 1,
            commit: 0,
            entries: vec![entry(2, 2, 5, b"y")],
        }),
    ));
    assert!(matches!(got, Err(Error::InvalidMessage { .. })), "{got:?}");
    assert_eq!(r.status().last_index, 2);
    assert_eq!(
        r.status().last_term,
        1,
        "the entry it would replace is kept"
    );
    // (The term of the refused message was adopted before its entries
    // were looked at, as for any message of a newer term.)
    r.step(append(2, 2)).unwrap();
    assert_eq!(r.status().last_index, 3);
}

#[test]
fn a_message_for_another_group_is_refused_untouched() {
    let mut r = raft_with_log(1, 3, &[1], 1, |_| {});
    let before = r.status();
    let mut m = msg(
        2,
        1,
        9,
        MessageBody::Heartbeat {
            commit: 1,
            read_seq: 0,
        },
    );
    m.group = 77;
    assert_eq!(
        r.step(m),
        Err(Error::WrongGroup {
            expected: 1,
            got: 77
        })
    );
    assert_eq!(r.status(), before);
}

#[test]
fn misaddressed_messages_are_refused() {
    let mut r = raft_with_log(1, 3, &[1], 1, |_| {});
    let before = r.status();
    for (from, to) in [(0, 1), (1, 1), (2, 3)] {
        let m = msg(
            from,
            to,
            5,
            MessageBody::Heartbeat {
                commit: 1,
                read_seq: 0,
            },
        );
        assert!(matches!(r.step(m), Err(Error::InvalidMessage { .. })));
    }
    assert_eq!(r.status(), before);
}

#[test]
fn entries_that_do_not_connect_are_refused_untouched() {
    let bad: Vec<Vec<Entry>> = vec![
        vec![entry(1, 3, 1, b"gap")],                          // index jumps
        vec![entry(1, 2, 1, b"a"), entry(1, 4, 2, b"b")],      // hole inside
        vec![entry(3, 2, 1, b"future")],                       // term above message
        vec![entry(1, 2, 1, b"a"), entry(0, 3, 2, b"b")],      // term goes back
        vec![entry(1, 2, 1, b"a"), entry(1, 3, 9, b"offset")], // offsets not dense
    ];
    for (i, entries) in bad.into_iter().enumerate() {
        let mut r = raft_with_log(1, 3, &[1], 2, |_| {});
        let before = r.status();
        let m = msg(
            2,
            1,
            2,
            MessageBody::Append(Append {
                prev_index: 1,
                prev_term: 1,
                commit: 0,
                entries,
            }),
        );
        assert!(
            matches!(r.step(m), Err(Error::InvalidMessage { .. })),
            "case {i}"
        );
        let after = r.status();
        assert_eq!(
            (after.last_index, after.commit),
            (before.last_index, before.commit),
            "case {i}"
        );
    }
}

#[test]
fn an_append_far_past_the_log_is_rejected_with_a_hint() {
    let mut r = raft_with_log(1, 3, &[1, 1], 1, |_| {});
    let m = msg(
        2,
        1,
        1,
        MessageBody::Append(Append {
            prev_index: u64::MAX - 1,
            prev_term: 1,
            commit: u64::MAX,
            entries: vec![],
        }),
    );
    r.step(m).unwrap();
    let out = drain(&mut r);
    assert_eq!(
        out[0].body,
        MessageBody::AppendResponse(AppendResponse {
            index: u64::MAX - 1,
            reject: Some(RejectHint::LogEnds { last_index: 2 })
        })
    );
    assert_eq!(r.status().commit, 0);
}

#[test]
fn an_acknowledgement_beyond_the_leaders_log_is_refused() {
    let mut r = raft_with_log(1, 3, &[], 0, |_| {});
    make_leader(&mut r);
    let t = r.term();
    let m = msg(
        2,
        1,
        t,
        MessageBody::AppendResponse(AppendResponse {
            index: 50,
            reject: None,
        }),
    );
    assert!(matches!(r.step(m), Err(Error::InvalidMessage { .. })));
    assert_eq!(r.status().commit, 0);
}

#[test]
fn a_second_leader_in_the_same_term_is_reported() {
    let mut r = raft_with_log(1, 3, &[], 0, |_| {});
    make_leader(&mut r);
    let t = r.term();
    let m = msg(
        2,
        1,
        t,
        MessageBody::Heartbeat {
            commit: 0,
            read_seq: 0,
        },
    );
    assert!(matches!(r.step(m), Err(Error::InvalidMessage { .. })));
    assert_eq!(r.role(), Role::Leader);
}

fn arb_index() -> impl Strategy<Value = Index> + Clone {
    prop_oneof![8 => 0u64..12, 1 => (u64::MAX - 3)..=u64::MAX]
}

fn arb_body() -> impl Strategy<Value = MessageBody> {
    let idx = arb_index();
    let term = 0u64..6;
    prop_oneof![
        (
            idx.clone(),
            term.clone(),
            idx.clone(),
            proptest::collection::vec(term.clone(), 0..4)
        )
            .prop_map(|(prev_index, prev_term, commit, ts)| {
                let mut t = prev_term;
                let entries = ts
                    .iter()
                    .enumerate()
                    .map(|(i, dt)| {
                        t += dt % 2;
                        entry(
                            t,
                            prev_index.wrapping_add(1 + i as u64).max(1),
                            i as u64,
                            b"p",
                        )
                    })
                    .collect();
                MessageBody::Append(Append {
                    prev_index,
                    prev_term,
                    commit,
                    entries,
                })
            }),
        (idx.clone(), any::<bool>(), idx.clone(), term.clone()).prop_map(
            |(index, rej, hint, t)| {
                MessageBody::AppendResponse(AppendResponse {
                    index,
                    reject: rej.then_some(if t % 2 == 0 {
                        RejectHint::LogEnds { last_index: hint }
                    } else {
                        RejectHint::Conflict {
                            term: t,
                            first_index: hint,
                        }
                    }),
                })
            }
        ),
        (idx.clone(), 0u64..5)
            .prop_map(|(commit, read_seq)| MessageBody::Heartbeat { commit, read_seq }),
        (0u64..5).prop_map(|read_seq| MessageBody::HeartbeatResponse { read_seq }),
        (any::<bool>(), idx.clone(), term.clone(), any::<bool>()).prop_map(
            |(pre, last_index, last_term, transfer)| {
                MessageBody::Vote(VoteRequest {
                    pre,
                    last_index,
                    last_term,
                    transfer,
                })
            }
        ),
        (any::<bool>(), any::<bool>())
            .prop_map(|(pre, granted)| MessageBody::VoteResponse { pre, granted }),
        Just(MessageBody::TimeoutNow),
        (0u64..4).prop_map(|ctx| MessageBody::ReadIndex { ctx }),
        (0u64..4, proptest::option::of(idx))
            .prop_map(|(ctx, index)| MessageBody::ReadIndexResponse { ctx, index }),
    ]
}

#[derive(Debug, Clone)]
enum Op {
    Msg(NodeId, Term, MessageBody),
    Tick,
    Propose,
    Read,
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (2u64..4, 0u64..6, arb_body()).prop_map(|(f, t, b)| Op::Msg(f, t, b)),
        2 => Just(Op::Tick),
        1 => Just(Op::Propose),
        1 => Just(Op::Read),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Whatever peers send, the node never panics, its committed prefix never
    /// changes, its term and commit never go back, and the log invariants
    /// (checked inside `ready` in debug builds) hold.
    #[test]
    fn message_storms_never_panic_or_rewrite_committed_entries(ops in proptest::collection::vec(arb_op(), 1..120)) {
        let mut r = raft_with_log(1, 3, &[1, 1, 2], 2, |_| {});
        let mut committed: Vec<Entry> = Vec::new();
        let mut term = r.term();
        let mut commit = r.status().commit;
        for op in ops {
            match op {
                Op::Msg(from, t, body) => { let _ = r.step(msg(from, 1, t, body)); }
                Op::Tick => r.tick(),
                Op::Propose => { let _ = r.propose(BatchBuilder::single(b"c"), 0); }
                Op::Read => { let _ = r.read_index(1); }
            }
            drain(&mut r);
            let st = r.status();
            prop_assert!(st.term >= term);
            prop_assert!(st.commit >= commit);
            term = st.term;
            commit = st.commit;
            let now: Vec<Entry> = r.storage().all().iter().take(st.commit.min(st.persisted) as usize).cloned().collect();
            prop_assert_eq!(&now[..committed.len().min(now.len())], &committed[..committed.len().min(now.len())]);
            if now.len() > committed.len() { committed = now; }
        }
    }
}
