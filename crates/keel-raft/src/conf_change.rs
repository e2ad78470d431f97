//! Membership changes: the operations a caller asks for, the configuration
//! they lead to, and the encoding of a configuration in a `Config` entry.
//!
//! Changes of the voter set go through joint consensus (Raft thesis §4.3):
//! the leader appends C_old,new (incoming voters = new, outgoing voters =
//! old); while it is in force, commit and election need a majority of both.
//! Once it commits, the leader appends C_new. A configuration takes effect
//! on every node when appended to its log, not when committed, and is rolled
//! back if its entry is truncated. Changes that only touch learners need no
//! joint phase. One change at a time: a second is refused until the first
//! (both entries) has committed.
//!
//! ```text
//! Config entry body, integers little-endian
//!   u8  version (1)
//!   u8  flags: bit 0 = joint (outgoing voters present)
//!   u32 n, then n x u64   incoming voters, strictly increasing, none 0
//!   u32 n, then n x u64   outgoing voters (n = 0 unless joint)
//!   u32 n, then n x u64   learners (may overlap outgoing: demotions)
//! ```

use std::collections::BTreeSet;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::quorum::Membership;
use crate::types::{NONE, NodeId};

/// One requested change. Several go into one call and one joint change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfChangeOp {
    /// Make the node a voter (a learner is promoted).
    AddVoter(NodeId),
    /// Make the node a learner (a voter is demoted).
    AddLearner(NodeId),
    /// Remove the node (voter or learner).
    Remove(NodeId),
}

/// What to do when a change would promote a learner that is behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LaggingLearner {
    /// Refuse the change with [`Error::LearnerLagging`](crate::Error::LearnerLagging).
    #[default]
    Refuse,
    /// Hold the change and propose it once every learner to promote has
    /// caught up (dropped if that takes more than `conf_change_wait_ticks`
    /// or leadership is lost; both reported in `Ready::conf_change_events`).
    Wait,
}

const VERSION: u8 = 1;
/// More members than any sane cluster; bounds decoding.
pub const MAX_MEMBERS: usize = 1024;

/// The configuration `ops` lead to from `current` (which must not be
/// joint): (voters, learners).
pub fn target(
    current: &Membership,
    ops: &[ConfChangeOp],
) -> Result<(BTreeSet<NodeId>, BTreeSet<NodeId>), String> {
    if current.is_joint() {
        return Err("the configuration is joint; a change is in progress".into());
    }
    let mut voters = current.voters.clone();
    let mut learners: BTreeSet<NodeId> = current
        .learners
        .iter()
        .copied()
        .filter(|l| !voters.contains(l))
        .collect();
    for op in ops {
        match *op {
            ConfChangeOp::AddVoter(id)
            | ConfChangeOp::AddLearner(id)
            | ConfChangeOp::Remove(id)
                if id == NONE =>
            {
                return Err("node id 0 is reserved".into());
            }
            ConfChangeOp::AddVoter(id) => {
                learners.remove(&id);
                voters.insert(id);
            }
            ConfChangeOp::AddLearner(id) => {
                voters.remove(&id);
                learners.insert(id);
            }
            ConfChangeOp::Remove(id) => {
                voters.remove(&id);
                learners.remove(&id);
            }
        }
    }
    if voters.is_empty() {
        return Err("the change would leave no voters".into());
    }
    if voters.len() + learners.len() > MAX_MEMBERS {
        return Err(format!("more than {MAX_MEMBERS} members"));
    }
    if voters == current.voters && learners == current.learners {
        return Err("the change leaves the configuration as it is".into());
    }
    Ok((voters, learners))
}

/// The first configuration to append for a change to (voters, learners):
/// joint when the voter set changes, final otherwise.
pub fn first_step(
    current: &Membership,
    voters: BTreeSet<NodeId>,
    learners: BTreeSet<NodeId>,
) -> Membership {
    let outgoing = if voters == current.voters {
        BTreeSet::new()
    } else {
        current.voters.clone()
    };
    Membership {
        voters,
        outgoing,
        learners,
    }
}

/// The configuration that ends a joint phase.
pub fn leave_joint(joint: &Membership) -> Membership {
    Membership {
        voters: joint.voters.clone(),
        outgoing: BTreeSet::new(),
        learners: joint.learners.clone(),
    }
}

pub fn encode(m: &Membership) -> Bytes {
    let mut b =
        BytesMut::with_capacity(14 + 8 * (m.voters.len() + m.outgoing.len() + m.learners.len()));
    b.put_u8(VERSION);
    b.put_u8(u8::from(m.is_joint()));
    for set in [&m.voters, &m.outgoing, &m.learners] {
        b.put_u32_le(set.len() as u32);
        for id in set.iter() {
            b.put_u64_le(*id);
        }
    }
    b.freeze()
}

pub fn decode(mut body: &[u8]) -> Result<Membership, String> {
    if body.len() < 2 {
        return Err("configuration entry too short".into());
    }
    let version = body.get_u8();
    if version != VERSION {
        return Err(format!(
            "configuration entry version {version} (expected 1)"
        ));
    }
    let flags = body.get_u8();
    if flags & !1 != 0 {
        return Err(format!("configuration entry flags {flags:#x}"));
    }
    let mut sets = Vec::with_capacity(3);
    for name in ["voters", "outgoing voters", "learners"] {
        if body.len() < 4 {
            return Err(format!("configuration entry cut short before its {name}"));
        }
        let n = body.get_u32_le() as usize;
        if n > MAX_MEMBERS || n * 8 > body.len() {
            return Err(format!("configuration entry claims {n} {name}"));
        }
        let mut set = BTreeSet::new();
        let mut prev = NONE;
        for _ in 0..n {
            let id = body.get_u64_le();
            if id <= prev {
                return Err(format!(
                    "configuration entry {name} not strictly increasing or holding 0"
                ));
            }
            prev = id;
            set.insert(id);
        }
        sets.push(set);
    }
    if !body.is_empty() {
        return Err("trailing bytes after the configuration".into());
    }
    let learners = sets.pop().expect("three sets");
    let outgoing = sets.pop().expect("three sets");
    let voters = sets.pop().expect("three sets");
    if voters.is_empty() {
        return Err("configuration without voters".into());
    }
    let joint_flag = flags & 1 == 1;
    if joint_flag == outgoing.is_empty() {
        return Err("configuration joint flag disagrees with its outgoing voters".into());
    }
    if learners.iter().any(|l| voters.contains(l)) {
        return Err("a node is both an incoming voter and a learner".into());
    }
    Ok(Membership {
        voters,
        outgoing,
        learners,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(v: &[u64], l: &[u64]) -> Membership {
        Membership::new(v.iter().copied(), l.iter().copied())
    }

    #[test]
    fn targets_follow_the_operations_in_order() {
        let cur = m(&[1, 2, 3], &[4]);
        let (v, l) = target(&cur, &[ConfChangeOp::AddVoter(4), ConfChangeOp::Remove(1)]).unwrap();
        assert_eq!((v, l), ([2, 3, 4].into(), [].into()));
        let (v, l) = target(&cur, &[ConfChangeOp::AddLearner(3)]).unwrap();
        assert_eq!((v, l), ([1, 2].into(), [3, 4].into()));
        assert!(
            target(
                &cur,
                &[
                    ConfChangeOp::Remove(1),
                    ConfChangeOp::Remove(2),
                    ConfChangeOp::Remove(3)
                ]
            )
            .is_err()
        );
        assert!(target(&cur, &[ConfChangeOp::AddVoter(0)]).is_err());
        assert!(
            target(&cur, &[ConfChangeOp::AddVoter(2)]).is_err(),
            "no-op change"
        );
    }

    #[test]
    fn voter_changes_go_joint_learner_changes_do_not() {
        let cur = m(&[1, 2, 3], &[]);
        let j = first_step(&cur, [4, 5, 6].into(), [].into());
        assert!(j.is_joint());
        assert_eq!(j.outgoing, [1, 2, 3].into());
        assert_eq!(leave_joint(&j), m(&[4, 5, 6], &[]));
        let s = first_step(&cur, [1, 2, 3].into(), [7].into());
        assert!(!s.is_joint());
    }

    #[test]
    fn encoding_round_trips_and_rejects_garbage() {
        let mut j = m(&[4, 5, 6], &[3]);
        j.outgoing = [1, 2, 3].into();
        for x in [m(&[1], &[]), m(&[1, 2, 3], &[9, 10]), j] {
            assert_eq!(decode(&encode(&x)).unwrap(), x);
        }
        let good = encode(&m(&[1, 2], &[3])).to_vec();
        for cut in 0..good.len() {
            assert!(decode(&good[..cut]).is_err(), "cut {cut}");
        }
        let mut huge = good.clone();
        huge[2..6].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&huge).is_err());
        let mut unsorted = encode(&m(&[1, 2], &[])).to_vec();
        unsorted.swap(6, 14);
        assert!(decode(&unsorted).is_err());
        let mut flag = good.clone();
        flag[1] = 1;
        assert!(decode(&flag).is_err(), "joint flag without outgoing voters");
    }
}
