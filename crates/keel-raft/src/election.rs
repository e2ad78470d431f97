//! Elections: pre-vote (thesis §9.6), real votes, and the vote rules.
//!
//! A pre-candidate asks "would you vote for me in term t+1?" without
//! changing anyone's term. Only with a quorum of yes does it raise its term
//! and run for real, so a node that was cut off and comes back cannot bump
//! the term of, or depose, a healthy leader.

use crate::Raft;
use crate::message::{MessageBody, VoteRequest};
use crate::quorum::VoteResult;
use crate::storage::Storage;
use crate::types::{NONE, NodeId, Role, Term};

impl<S: Storage> Raft<S> {
    /// Makes this node start an election now (with a pre-vote round if
    /// configured), as if its election timer had fired. Ignored on a leader
    /// or a node that is not a voter.
    pub fn start_election(&mut self) {
        if self.role != Role::Leader {
            self.election_elapsed = 0;
            self.campaign(false);
        }
    }

    /// Starts an election: a pre-vote round first unless pre-vote is off or
    /// this is a leadership transfer (the leader asked us to run at once).
    pub(crate) fn campaign(&mut self, transfer: bool) {
        if !self.promotable() {
            return;
        }
        let pre = self.cfg.pre_vote && !transfer;
        if pre {
            self.become_pre_candidate();
        } else {
            self.become_candidate();
        }
        if transfer {
            self.transfer_campaign = Some(self.term);
        }
        let term = if pre {
            self.term.saturating_add(1)
        } else {
            self.term
        };
        let me = self.cfg.id;
        self.votes.insert(me, true);
        if self.tally() == VoteResult::Won {
            // A single-voter group wins on its own vote.
            self.won_round(pre);
            return;
        }
        let req = VoteRequest {
            pre,
            last_index: self.log.last_index(),
            last_term: self.log.last_term(),
            transfer,
        };
        let voters: Vec<NodeId> = self
            .membership
            .all_voters()
            .filter(|id| *id != me)
            .collect();
        for id in voters {
            self.send_with_term(id, term, MessageBody::Vote(req));
        }
    }

    fn tally(&self) -> VoteResult {
        self.membership
            .vote_result(|id| self.votes.get(&id).copied())
    }

    fn won_round(&mut self, pre: bool) {
        if pre {
            self.campaign_after_pre_vote();
        } else {
            self.become_leader();
        }
    }

    fn campaign_after_pre_vote(&mut self) {
        // The pre-vote succeeded: now run for real (not as a transfer).
        self.become_candidate();
        let me = self.cfg.id;
        self.votes.insert(me, true);
        if self.tally() == VoteResult::Won {
            self.become_leader();
            return;
        }
        let req = VoteRequest {
            pre: false,
            last_index: self.log.last_index(),
            last_term: self.log.last_term(),
            transfer: false,
        };
        let voters: Vec<NodeId> = self
            .membership
            .all_voters()
            .filter(|id| *id != me)
            .collect();
        for id in voters {
            self.send(id, MessageBody::Vote(req));
        }
    }

    /// Decides a (pre-)vote request. `term` is the request's term, which for
    /// a pre-vote may be above ours; a real vote at a higher term has already
    /// moved us to that term.
    pub(crate) fn handle_vote_request(&mut self, from: NodeId, term: Term, req: VoteRequest) {
        let can_vote = self.vote == from
            || (self.vote == NONE && self.leader == NONE)
            || (req.pre && term > self.term);
        let log_ok = self.log.is_up_to_date(req.last_index, req.last_term)
            || self.knob(|k| k.vote_without_log_check);
        let granted = can_vote && log_ok;
        if granted && !req.pre {
            self.election_elapsed = 0;
            self.vote = from;
        }
        let reply_term = if granted { term } else { self.term };
        self.send_with_term(
            from,
            reply_term,
            MessageBody::VoteResponse {
                pre: req.pre,
                granted,
            },
        );
    }

    pub(crate) fn handle_vote_response(&mut self, from: NodeId, pre: bool, granted: bool) {
        let expecting_pre = match self.role {
            Role::PreCandidate => true,
            Role::Candidate => false,
            _ => return,
        };
        if pre != expecting_pre {
            return; // a response to an earlier round
        }
        if !self.membership.is_voter(from) {
            return;
        }
        self.votes.entry(from).or_insert(granted);
        match self.tally() {
            VoteResult::Won => self.won_round(pre),
            VoteResult::Lost => {
                let term = self.term;
                self.become_follower(term, NONE);
            }
            VoteResult::Pending => {}
        }
    }
}
