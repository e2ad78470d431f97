//! Membership changes: the operations a caller asks for, the configuration
//! they lead to, and the encoding of a configuration in a `Config` entry.
//!
//! Changes of the voter set go through joint consensus (Raft thesis §4.3):
//! the leader appends C_old,new (incoming voters = new, outgoing voters =
//! old); while it is in force, commit and election need a majority of both.
//! Once it commits, the leader appends C_new. A configuration takes effect
//! on every node when appended to its log, not when committed, and is rolled
//! back if its entry is truncated. Changes that only touch learners or
//! member info need no joint phase. One change at a time: a second is
//! refused until the first (both entries) has committed.
//!
//! Member info (opaque bytes per member, owned by the hosting layer) travels
//! with the configuration: a change sets or clears it, removing a member
//! drops it. A voter being removed keeps its info through the joint phase
//! (it still votes there, so the hosting layer must still reach it); the
//! entry that ends the joint phase drops it.
//!
//! ```text
//! Config entry body, integers little-endian
//!   u8  version           2 (written); 1 is still read (it ends before the
//!                         member info, which is then empty)
//!   u8  flags             bit 0 = joint (outgoing voters present)
//!   u32 n, then n x u64   incoming voters, strictly increasing, none 0,
//!                         at least one
//!   u32 n, then n x u64   outgoing voters (n = 0 unless joint)
//!   u32 n, then n x u64   learners (may overlap outgoing: demotions; never
//!                         incoming voters)
//!   version 2 only:
//!   u32 n (<= MAX_MEMBERS), then n x member info:
//!       u64 id            strictly increasing, each a member (voter of
//!                         either half or learner)
//!       u32 len           <= MAX_INFO_BYTES (4096)
//!       len bytes         the info, opaque
//! ```
//!
//! Nothing may follow. Every set's count is bounded by `MAX_MEMBERS`.

use std::collections::{BTreeMap, BTreeSet};

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

/// A membership change, for [`Raft::propose_change`](crate::Raft::propose_change).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfChange {
    /// Voter and learner changes, applied in order.
    pub ops: Vec<ConfChangeOp>,
    /// Member info to set (`Some`) or clear (`None`) in the configuration
    /// the ops lead to. Setting info for a node that is not a member of
    /// that configuration is refused; clearing it is a no-op. Removing a
    /// member drops its info without asking.
    pub info: BTreeMap<NodeId, Option<Bytes>>,
    /// What to do if a learner to promote is behind.
    pub lagging: LaggingLearner,
}

const VERSION: u8 = 2;
/// More members than any sane cluster; bounds decoding.
pub const MAX_MEMBERS: usize = 1024;
/// The largest member info, in bytes.
pub const MAX_INFO_BYTES: usize = 4096;

/// The configuration `change` leads to from `current` (which must not be
/// joint): voters, learners and info; never joint. Refused when the change
/// alters nothing.
pub fn target(current: &Membership, change: &ConfChange) -> Result<Membership, String> {
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
    for op in &change.ops {
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
    let member = |id: &NodeId| voters.contains(id) || learners.contains(id);
    // Removed members lose their info.
    let mut info: BTreeMap<NodeId, Bytes> = current
        .info
        .iter()
        .filter(|(id, _)| member(id))
        .map(|(id, b)| (*id, b.clone()))
        .collect();
    for (&id, set) in &change.info {
        match set {
            Some(bytes) => {
                if !member(&id) {
                    return Err(format!(
                        "info for node {id}, which is not a member of the configuration the change leads to"
                    ));
                }
                if bytes.len() > MAX_INFO_BYTES {
                    return Err(format!(
                        "info for node {id} is {} bytes (at most {MAX_INFO_BYTES})",
                        bytes.len()
                    ));
                }
                info.insert(id, bytes.clone());
            }
            None => {
                info.remove(&id);
            }
        }
    }
    if voters == current.voters && learners == current.learners && info == current.info {
        return Err("the change leaves the configuration as it is".into());
    }
    Ok(Membership {
        voters,
        outgoing: BTreeSet::new(),
        learners,
        info,
    })
}

/// The first configuration to append for a change to `target` (from
/// [`target`]): joint when the voter set changes, `target` itself otherwise.
/// In the joint configuration the voters being removed keep their info.
pub fn first_step(current: &Membership, target: Membership) -> Membership {
    if target.voters == current.voters {
        return target;
    }
    let mut joint = target;
    joint.outgoing = current.voters.clone();
    for id in &joint.outgoing {
        let leaving = !joint.voters.contains(id) && !joint.learners.contains(id);
        if leaving && let Some(b) = current.info.get(id) {
            joint.info.insert(*id, b.clone());
        }
    }
    joint
}

/// The configuration that ends a joint phase: the incoming voters and the
/// learners, with their info (the info of outgoing-only voters is dropped).
pub fn leave_joint(joint: &Membership) -> Membership {
    Membership {
        voters: joint.voters.clone(),
        outgoing: BTreeSet::new(),
        learners: joint.learners.clone(),
        info: joint
            .info
            .iter()
            .filter(|(id, _)| joint.voters.contains(id) || joint.learners.contains(id))
            .map(|(id, b)| (*id, b.clone()))
            .collect(),
    }
}

/// Encodes `m` as a Config entry body (version 2, layout above).
pub fn encode(m: &Membership) -> Bytes {
    let ids = m.voters.len() + m.outgoing.len() + m.learners.len();
    let info: usize = m.info.values().map(|b| 12 + b.len()).sum();
    let mut b = BytesMut::with_capacity(18 + 8 * ids + info);
    b.put_u8(VERSION);
    b.put_u8(u8::from(m.is_joint()));
    for set in [&m.voters, &m.outgoing, &m.learners] {
        b.put_u32_le(set.len() as u32);
        for id in set.iter() {
            b.put_u64_le(*id);
        }
    }
    b.put_u32_le(m.info.len() as u32);
    for (id, bytes) in &m.info {
        b.put_u64_le(*id);
        b.put_u32_le(bytes.len() as u32);
        b.put_slice(bytes);
    }
    b.freeze()
}

/// Decodes a Config entry body (version 1 or 2). Refuses, with a message,
/// anything malformed; never panics.
pub fn decode(mut body: &[u8]) -> Result<Membership, String> {
    if body.len() < 2 {
        return Err("configuration entry too short".into());
    }
    let version = body.get_u8();
    if version != 1 && version != 2 {
        return Err(format!(
            "configuration entry version {version} (this build reads 1 and 2)"
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
    let (Some(learners), Some(outgoing), Some(voters)) = (sets.pop(), sets.pop(), sets.pop())
    else {
        return Err("configuration entry without its three member sets".into());
    };
    let is_member =
        |id: NodeId| voters.contains(&id) || outgoing.contains(&id) || learners.contains(&id);
    let mut info = BTreeMap::new();
    if version >= 2 {
        if body.len() < 4 {
            return Err("configuration entry cut short before its member info".into());
        }
        let n = body.get_u32_le() as usize;
        if n > MAX_MEMBERS || n * 12 > body.len() {
            return Err(format!("configuration entry claims info for {n} members"));
        }
        let mut prev = NONE;
        for _ in 0..n {
            if body.len() < 12 {
                return Err("configuration entry member info cut short".into());
            }
            let id = body.get_u64_le();
            let len = body.get_u32_le() as usize;
            if id <= prev {
                return Err(
                    "configuration entry member info not strictly increasing or holding 0".into(),
                );
            }
            prev = id;
            if !is_member(id) {
                return Err(format!(
                    "configuration entry holds info for node {id}, which is not a member"
                ));
            }
            if len > MAX_INFO_BYTES {
                return Err(format!(
                    "configuration entry info of node {id} is {len} bytes (at most {MAX_INFO_BYTES})"
                ));
            }
            if len > body.len() {
                return Err(format!(
                    "configuration entry info of node {id} runs past the entry"
                ));
            }
            info.insert(id, Bytes::copy_from_slice(&body[..len]));
            body.advance(len);
        }
    }
    if !body.is_empty() {
        return Err("trailing bytes after the configuration".into());
    }
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
        info,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(v: &[u64], l: &[u64]) -> Membership {
        Membership::new(v.iter().copied(), l.iter().copied())
    }

    fn ops(ops: &[ConfChangeOp]) -> ConfChange {
        ConfChange {
            ops: ops.to_vec(),
            ..Default::default()
        }
    }

    fn info(pairs: &[(u64, &'static [u8])]) -> BTreeMap<NodeId, Bytes> {
        pairs
            .iter()
            .map(|(id, b)| (*id, Bytes::from_static(b)))
            .collect()
    }

    fn vl(t: Membership) -> (BTreeSet<NodeId>, BTreeSet<NodeId>) {
        (t.voters, t.learners)
    }

    #[test]
    fn targets_follow_the_operations_in_order() {
        let cur = m(&[1, 2, 3], &[4]);
        let t = target(
            &cur,
            &ops(&[ConfChangeOp::AddVoter(4), ConfChangeOp::Remove(1)]),
        )
        .unwrap();
        assert!(!t.is_joint());
        assert_eq!(vl(t), ([2, 3, 4].into(), [].into()));
        let t = target(&cur, &ops(&[ConfChangeOp::AddLearner(3)])).unwrap();
        assert_eq!(vl(t), ([1, 2].into(), [3, 4].into()));
        assert!(
            target(
                &cur,
                &ops(&[
                    ConfChangeOp::Remove(1),
                    ConfChangeOp::Remove(2),
                    ConfChangeOp::Remove(3)
                ])
            )
            .is_err()
        );
        assert!(target(&cur, &ops(&[ConfChangeOp::AddVoter(0)])).is_err());
        assert!(
            target(&cur, &ops(&[ConfChangeOp::AddVoter(2)])).is_err(),
            "no-op change"
        );
    }

    #[test]
    fn info_is_set_cleared_and_dropped_with_its_member() {
        let mut cur = m(&[1, 2, 3], &[4]);
        cur.info = info(&[(1, b"a"), (3, b"c"), (4, b"d")]);
        // Info alone is a change.
        let mut c = ConfChange::default();
        c.info.insert(2, Some(Bytes::from_static(b"b")));
        c.info.insert(3, None);
        let t = target(&cur, &c).unwrap();
        assert_eq!((&t.voters, &t.learners), (&cur.voters, &cur.learners));
        assert_eq!(t.info, info(&[(1, b"a"), (2, b"b"), (4, b"d")]));
        assert_eq!(first_step(&cur, t.clone()), t, "info alone is not joint");
        // Setting what is already there, or clearing what is not, is nothing.
        let mut same = ConfChange::default();
        same.info.insert(1, Some(Bytes::from_static(b"a")));
        same.info.insert(2, None);
        same.info.insert(9, None);
        let e = target(&cur, &same).unwrap_err();
        assert!(e.contains("as it is"), "{e}");
        // Info for a node that is not a member of the target is refused, even
        // for one the same change removes.
        let mut stranger = ConfChange::default();
        stranger.info.insert(9, Some(Bytes::from_static(b"x")));
        let e = target(&cur, &stranger).unwrap_err();
        assert!(e.contains("node 9") && e.contains("not a member"), "{e}");
        let mut removed = ops(&[ConfChangeOp::Remove(4)]);
        removed.info.insert(4, Some(Bytes::from_static(b"x")));
        assert!(target(&cur, &removed).is_err());
        let mut big = ConfChange::default();
        big.info
            .insert(2, Some(Bytes::from(vec![0u8; MAX_INFO_BYTES + 1])));
        assert!(target(&cur, &big).unwrap_err().contains("bytes"));
        big.info
            .insert(2, Some(Bytes::from(vec![0u8; MAX_INFO_BYTES])));
        assert!(target(&cur, &big).is_ok());
        // Removing a learner drops its info at once.
        let t = target(&cur, &ops(&[ConfChangeOp::Remove(4)])).unwrap();
        assert_eq!(t.info, info(&[(1, b"a"), (3, b"c")]));
    }

    #[test]
    fn a_removed_voter_keeps_its_info_through_the_joint_phase_only() {
        let mut cur = m(&[1, 2, 3], &[]);
        cur.info = info(&[(1, b"a"), (2, b"b"), (3, b"c")]);
        let mut c = ops(&[
            ConfChangeOp::AddVoter(4),
            ConfChangeOp::AddVoter(5),
            ConfChangeOp::Remove(1),
            ConfChangeOp::Remove(2),
        ]);
        c.info.insert(4, Some(Bytes::from_static(b"d")));
        c.info.insert(5, Some(Bytes::from_static(b"e")));
        let t = target(&cur, &c).unwrap();
        assert_eq!(t.info, info(&[(3, b"c"), (4, b"d"), (5, b"e")]));
        let joint = first_step(&cur, t);
        assert!(joint.is_joint());
        assert_eq!(
            joint.info,
            info(&[(1, b"a"), (2, b"b"), (3, b"c"), (4, b"d"), (5, b"e")])
        );
        assert_eq!(decode(&encode(&joint)).unwrap(), joint);
        let last = leave_joint(&joint);
        assert_eq!(last.voters, [3, 4, 5].into());
        assert_eq!(last.info, info(&[(3, b"c"), (4, b"d"), (5, b"e")]));
    }

    #[test]
    fn voter_changes_go_joint_learner_changes_do_not() {
        let cur = m(&[1, 2, 3], &[]);
        let j = first_step(&cur, m(&[4, 5, 6], &[]));
        assert!(j.is_joint());
        assert_eq!(j.outgoing, [1, 2, 3].into());
        assert_eq!(leave_joint(&j), m(&[4, 5, 6], &[]));
        let s = first_step(&cur, m(&[1, 2, 3], &[7]));
        assert!(!s.is_joint());
    }

    /// `v2` with its info section cut off and the version byte set to 1.
    fn as_version_1(v2: &[u8]) -> Vec<u8> {
        let mut v1 = v2[..v2.len() - 4].to_vec();
        v1[0] = 1;
        v1
    }

    #[test]
    fn encoding_round_trips_and_rejects_garbage() {
        let mut j = m(&[4, 5, 6], &[3]);
        j.outgoing = [1, 2, 3].into();
        let mut with_info = m(&[1, 2, 3], &[9]);
        with_info.info = info(&[(1, b"one"), (3, b""), (9, b"nine")]);
        let mut joint_info = j.clone();
        joint_info.info = info(&[(1, b"out"), (3, b"both"), (6, b"in")]);
        let mut max = m(&[1], &[]);
        max.info = [(1, Bytes::from(vec![7u8; MAX_INFO_BYTES]))].into();
        for x in [
            m(&[1], &[]),
            m(&[1, 2, 3], &[9, 10]),
            j,
            with_info.clone(),
            joint_info,
            max.clone(),
        ] {
            let body = encode(&x);
            assert_eq!(body[0], 2, "always written as version 2");
            assert_eq!(decode(&body).unwrap(), x);
        }
        // Version 1 (no info) still decodes.
        let plain = m(&[1, 2], &[3]);
        let v1 = as_version_1(&encode(&plain));
        assert_eq!(decode(&v1).unwrap(), plain);
        let mut v3 = encode(&plain).to_vec();
        v3[0] = 3;
        assert!(decode(&v3).unwrap_err().contains("version 3"));

        // Every truncation is refused.
        for good in [
            encode(&m(&[1, 2], &[3])).to_vec(),
            encode(&with_info).to_vec(),
            v1.clone(),
        ] {
            for cut in 0..good.len() {
                assert!(decode(&good[..cut]).is_err(), "cut {cut} of {good:?}");
            }
            let mut longer = good.clone();
            longer.push(0);
            assert!(decode(&longer).is_err(), "trailing byte");
        }

        // Bad counts and lengths.
        let good = encode(&m(&[1, 2], &[3])).to_vec();
        let mut huge = good.clone();
        huge[2..6].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&huge).is_err());
        let info_n = good.len() - 4;
        let mut many = good.clone();
        many[info_n..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&many).unwrap_err().contains("claims info"));
        let mut over = good.clone();
        over[info_n..].copy_from_slice(&((MAX_MEMBERS + 1) as u32).to_le_bytes());
        over.extend(std::iter::repeat_n(0, 12 * (MAX_MEMBERS + 1)));
        assert!(decode(&over).unwrap_err().contains("claims info"));
        // with_info: ..., n = 3, (1, 3, "one"), (3, 0, ""), (9, 4, "nine")
        let wi = encode(&with_info).to_vec();
        let no_info = Membership {
            info: BTreeMap::new(),
            ..with_info.clone()
        };
        let first_len = encode(&no_info).len() + 8;
        let mut past = wi.clone();
        past[first_len..first_len + 4].copy_from_slice(&100u32.to_le_bytes());
        assert!(decode(&past).is_err(), "info running past the entry");
        let mut too_big = encode(&max).to_vec();
        let at = too_big.len() - MAX_INFO_BYTES - 4;
        too_big[at..at + 4].copy_from_slice(&((MAX_INFO_BYTES + 1) as u32).to_le_bytes());
        too_big.push(7);
        assert!(decode(&too_big).unwrap_err().contains("at most 4096"));

        // Info for a node that is not a member.
        let mut stranger = with_info.clone();
        stranger.info.insert(7, Bytes::from_static(b"?"));
        let e = decode(&encode(&stranger)).unwrap_err();
        assert!(e.contains("node 7") && e.contains("not a member"), "{e}");
        // Info ids out of order (or repeated).
        let mut two = m(&[1, 2], &[]);
        two.info = info(&[(1, b"x"), (2, b"y")]);
        let mut unsorted = encode(&two).to_vec();
        let n_at = unsorted.len() - (4 + 2 * 13);
        let first = n_at + 4;
        let second = first + 13;
        unsorted[first..first + 8].copy_from_slice(&2u64.to_le_bytes());
        unsorted[second..second + 8].copy_from_slice(&1u64.to_le_bytes());
        assert!(
            decode(&unsorted)
                .unwrap_err()
                .contains("strictly increasing")
        );
        let mut repeated = encode(&two).to_vec();
        repeated[second..second + 8].copy_from_slice(&1u64.to_le_bytes());
        assert!(decode(&repeated).is_err());

        let mut unsorted = encode(&m(&[1, 2], &[])).to_vec();
        unsorted.swap(6, 14);
        assert!(decode(&unsorted).is_err());
        let mut flag = good.clone();
        flag[1] = 1;
        assert!(decode(&flag).is_err(), "joint flag without outgoing voters");
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = decode(&data);
        }

        #[test]
        fn mutated_bodies_never_panic_and_what_decodes_round_trips(
            pos in proptest::prelude::any::<usize>(),
            byte in proptest::prelude::any::<u8>(),
        ) {
            let mut x = m(&[2, 3, 4], &[5]);
            x.outgoing = [1, 2, 3].into();
            x.info = info(&[(1, b"one"), (4, b"four"), (5, b"")]);
            let mut body = encode(&x).to_vec();
            let p = pos % body.len();
            body[p] = byte;
            if let Ok(back) = decode(&body) {
                proptest::prop_assert_eq!(decode(&encode(&back)), Ok(back));
            }
        }
    }
}
