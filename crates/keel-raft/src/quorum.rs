//! Membership and quorum arithmetic. Written for joint consensus from the
//! start: while a configuration change is in its joint phase, commit and
//! election need a majority of both the outgoing and the incoming voters.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use crate::types::{Index, NodeId};

/// A configuration of a raft group: who votes (in one or, while a change
/// is in its joint phase, two sets), who only learns, and what the hosting
/// layer knows about each member.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    /// Voters of the (incoming) configuration.
    pub voters: BTreeSet<NodeId>,
    /// Voters of the outgoing configuration while joint; empty otherwise.
    pub outgoing: BTreeSet<NodeId>,
    /// Receive the log, never vote, never count toward commit.
    pub learners: BTreeSet<NodeId>,
    /// Per-member opaque info, owned by the layer that hosts the group
    /// (keel-node keeps addresses and the data-directory incarnation
    /// there). Only members have info; at most
    /// [`MAX_INFO_BYTES`](crate::MAX_INFO_BYTES) each. Quorum arithmetic
    /// ignores it.
    pub info: BTreeMap<NodeId, Bytes>,
}

/// Where an election stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoteResult {
    Won,
    Lost,
    Pending,
}

impl Membership {
    /// A configuration that is not joint, without member info.
    pub fn new(
        voters: impl IntoIterator<Item = NodeId>,
        learners: impl IntoIterator<Item = NodeId>,
    ) -> Self {
        Membership {
            voters: voters.into_iter().collect(),
            outgoing: BTreeSet::new(),
            learners: learners.into_iter().collect(),
            info: BTreeMap::new(),
        }
    }

    /// In the joint phase of a change (two voter sets in force).
    pub fn is_joint(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// A learner and not a voter of either half.
    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.contains(&id) && !self.is_voter(id)
    }

    /// A voter of either half.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.outgoing.contains(&id)
    }

    /// A voter of either half or a learner.
    pub fn is_member(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.learners.contains(&id)
    }

    /// Every voter of either half, each once.
    pub fn all_voters(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().copied().chain(
            self.outgoing
                .iter()
                .copied()
                .filter(|id| !self.voters.contains(id)),
        )
    }

    /// Every member: voters of either half and learners.
    pub fn all_members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.all_voters().chain(
            self.learners
                .iter()
                .copied()
                .filter(|id| !self.is_voter(*id)),
        )
    }

    /// The highest index a quorum has matched.
    pub fn committed_index(&self, matched: impl Fn(NodeId) -> Index) -> Index {
        let a = majority_index(&self.voters, &matched);
        if self.outgoing.is_empty() {
            a
        } else {
            a.min(majority_index(&self.outgoing, &matched))
        }
    }

    /// The outcome of an election given each voter's answer (`None`: no
    /// answer yet).
    pub fn vote_result(&self, vote: impl Fn(NodeId) -> Option<bool>) -> VoteResult {
        let a = majority_vote(&self.voters, &vote);
        if self.outgoing.is_empty() {
            return a;
        }
        match (a, majority_vote(&self.outgoing, &vote)) {
            (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
            (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
            _ => VoteResult::Pending,
        }
    }

    /// Whether the nodes for which `yes` holds form a quorum.
    pub fn is_quorum(&self, yes: impl Fn(NodeId) -> bool) -> bool {
        self.vote_result(|id| Some(yes(id))) == VoteResult::Won
    }
}

fn majority_index(voters: &BTreeSet<NodeId>, matched: &impl Fn(NodeId) -> Index) -> Index {
    let n = voters.len();
    if n == 0 {
        return Index::MAX; // an empty half agrees to anything
    }
    let mut small = [0 as Index; 16];
    let mut big;
    let vals: &mut [Index] = if n <= small.len() {
        for (slot, id) in small.iter_mut().zip(voters.iter()) {
            *slot = matched(*id);
        }
        &mut small[..n]
    } else {
        big = voters.iter().map(|id| matched(*id)).collect::<Vec<_>>();
        &mut big[..]
    };
    vals.sort_unstable_by(|a, b| b.cmp(a));
    vals[n / 2]
}

fn majority_vote(voters: &BTreeSet<NodeId>, vote: &impl Fn(NodeId) -> Option<bool>) -> VoteResult {
    if voters.is_empty() {
        return VoteResult::Won;
    }
    let (mut yes, mut missing) = (0, 0);
    for id in voters {
        match vote(*id) {
            Some(true) => yes += 1,
            None => missing += 1,
            Some(false) => {}
        }
    }
    let q = voters.len() / 2 + 1;
    if yes >= q {
        VoteResult::Won
    } else if yes + missing >= q {
        VoteResult::Pending
    } else {
        VoteResult::Lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majority_index_of_three_and_four() {
        let m = Membership::new([1, 2, 3], []);
        let idx = |id| [0, 10, 8, 5][id as usize];
        assert_eq!(m.committed_index(idx), 8);
        let m = Membership::new([1, 2, 3, 4], []);
        let idx = |id| [0, 10, 8, 5, 3][id as usize];
        assert_eq!(m.committed_index(idx), 5);
    }

    #[test]
    fn joint_needs_both_majorities() {
        let mut m = Membership::new([1, 2, 3], []);
        m.outgoing = [3, 4, 5].into_iter().collect();
        let idx = |id| [0, 9, 9, 2, 1, 1][id as usize];
        assert_eq!(
            m.committed_index(idx),
            1,
            "outgoing half only has 1 on a majority"
        );
        let vote = |id| match id {
            1 | 2 => Some(true),
            _ => None,
        };
        assert_eq!(m.vote_result(vote), VoteResult::Pending);
        let vote = |id| match id {
            1 | 2 | 4 | 5 => Some(true),
            _ => None,
        };
        assert_eq!(m.vote_result(vote), VoteResult::Won);
        let vote = |id| match id {
            4 | 5 => Some(false),
            _ => Some(true),
        };
        assert_eq!(m.vote_result(vote), VoteResult::Lost);
        assert_eq!(m.all_voters().collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    }
}
