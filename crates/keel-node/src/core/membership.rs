//! Membership changes as an operator or an application asks for them, and
//! the member info a leader learns from its peers.
//!
//! A change that makes a new node a voter goes in steps: the node joins as a
//! learner (with its info: addresses, incarnation); once that configuration
//! is applied, the core waits for every learner to promote to catch up
//! (within raft's `learner_max_lag`), then proposes the voter change in one
//! joint change (promotions, demotions and removals together, so a majority
//! can be replaced at once). The request is answered when the final,
//! non-joint configuration is applied, or with an error: a learner that did
//! not catch up by the deadline (how far behind it is), leadership lost
//! (the outcome may be unknown), another change under way.
//!
//! Member info: peers announce their incarnation and addresses in the
//! handshake; the driver reports them with [`GroupCore::observe`]. A leader
//! with no change under way records what it learned (an unknown
//! incarnation, an address that moved) with one info-only change. An
//! operator's request that arrives meanwhile waits for it instead of being
//! refused.

use std::collections::{BTreeMap, VecDeque};

use keel_raft::{
    ConfChange, ConfChangeOp, ConfChangeStatus, Entry, EntryKind, Index, LaggingLearner,
    Membership, NodeId, Role, Storage, Term,
};

use super::{Answer, Event, GroupCore, Token};
use crate::error::GroupError;
use crate::member_info::{MemberInfo, info_of};
use crate::state_machine::StateMachine;

/// One change to a group's membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberChange {
    /// Add a node as a learner (it receives the log, never votes).
    AddLearner {
        /// The node.
        id: NodeId,
        /// Its addresses (and incarnation, when known).
        info: MemberInfo,
    },
    /// Make a node a voter: a new node joins as a learner first, catches up,
    /// then is promoted. `info` is required for a node that is not a
    /// member yet.
    AddVoter {
        /// The node.
        id: NodeId,
        /// Its addresses, for a new node (or to update a member's).
        info: Option<MemberInfo>,
    },
    /// Make a learner a voter (once it has caught up).
    Promote(NodeId),
    /// Make a voter a learner.
    Demote(NodeId),
    /// Remove a member (voter or learner). Removing the leader works: it
    /// leads until the new configuration commits, then steps down.
    Remove(NodeId),
}

/// A membership change request: every change in it takes effect together
/// (one joint change for the voters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRequest {
    /// The changes.
    pub changes: Vec<MemberChange>,
    /// Wait (until the deadline) for learners to promote to catch up,
    /// instead of refusing at once when one is behind.
    pub wait_for_catch_up: bool,
}

enum Stage {
    /// New learners being added; then `rest` (may be empty).
    AddingLearners {
        index: Index,
        term: Term,
        rest: ConfChange,
    },
    /// Waiting for the learners `rest` promotes to catch up.
    CatchingUp { rest: ConfChange },
    /// The change's first entry is at (index, term); done when a non-joint
    /// configuration at or after it is applied.
    Proposed {
        index: Index,
        term: Term,
        seen: bool,
    },
}

struct InFlight {
    /// `None`: the core's own info update.
    token: Option<Token>,
    deadline: u64,
    wait: bool,
    stage: Stage,
}

enum Request {
    Change(ChangeRequest),
    Admit { id: NodeId, info: MemberInfo },
}

struct Held {
    token: Token,
    deadline: u64,
    request: Request,
}

#[derive(Default)]
pub(crate) struct Members {
    /// The last configuration applied (committed) on this node.
    pub(crate) applied: Membership,
    /// The last configuration published as an event.
    pub(crate) published: Membership,
    pub(crate) removed: bool,
    /// What peers announced about themselves (and this node about itself).
    pub(crate) observed: BTreeMap<NodeId, MemberInfo>,
    learn_due: bool,
    change: Option<InFlight>,
    held: VecDeque<Held>,
}

impl Members {
    pub(crate) fn publish(&mut self, m: &Membership, events: &mut Vec<Event>) {
        if *m != self.published {
            self.published = m.clone();
            self.learn_due = true;
            events.push(Event::Membership(m.clone()));
        }
    }

    /// A configuration was applied. `in_latest`: this node is a member of
    /// the latest configuration in its log (a node catching up applies old
    /// configurations that leave it out before the one that adds it back).
    pub(crate) fn set_applied(
        &mut self,
        m: Membership,
        me: NodeId,
        in_latest: bool,
        events: &mut Vec<Event>,
    ) {
        let was = self.applied.is_member(me);
        if was && !m.is_member(me) && !in_latest && !self.removed {
            self.removed = true;
            events.push(Event::Removed);
        } else if m.is_member(me) {
            self.removed = false;
        }
        if m != self.applied {
            events.push(Event::Committed(m.clone()));
        }
        self.applied = m;
    }

    /// At start: a node whose applied configuration no longer names it.
    pub(crate) fn was_member_removed(&self, me: NodeId) -> bool {
        !self.applied.voters.is_empty() && !self.applied.is_member(me)
    }

    pub(crate) fn take_all(&mut self) -> Vec<Token> {
        let mut t: Vec<Token> = self
            .change
            .take()
            .and_then(|c| c.token)
            .into_iter()
            .collect();
        t.extend(self.held.drain(..).map(|h| h.token));
        t
    }
}

impl<S: Storage, M: StateMachine> GroupCore<S, M> {
    /// Asks for a membership change (leader only). `deadline_ticks` bounds
    /// the whole request, catching up included.
    pub fn change(&mut self, token: Token, req: ChangeRequest, deadline_ticks: u64) {
        self.request(token, Request::Change(req), deadline_ticks);
    }

    /// Admits a node that asks to join with an empty data directory: adds it
    /// as a learner with `info` (or records its info if it was added without
    /// one). Refused for a voter, and for a member known with another
    /// incarnation: an empty directory must not take the place of one that
    /// acknowledged entries.
    pub fn admit(&mut self, token: Token, id: NodeId, info: MemberInfo, deadline_ticks: u64) {
        self.request(token, Request::Admit { id, info }, deadline_ticks);
    }

    /// A peer announced its info (its handshake); the driver also reports
    /// this node's own at start.
    pub fn observe(&mut self, id: NodeId, info: MemberInfo) {
        if self.members.observed.get(&id) != Some(&info) {
            self.members.observed.insert(id, info);
            self.members.learn_due = true;
        }
    }

    fn request(&mut self, token: Token, request: Request, deadline_ticks: u64) {
        if let Some(f) = &self.failed {
            let err = GroupError::StoreFailed(f.clone());
            self.out.done.push((token, Err(err)));
            return;
        }
        if self.raft.role() != Role::Leader {
            let leader = self.raft.leader();
            self.out
                .done
                .push((token, Err(GroupError::NotLeader { leader })));
            return;
        }
        let deadline = self.ticks + deadline_ticks.max(1);
        if let Request::Admit { id, info } = &request {
            // A node added (as a learner, or on its way to voter) before it
            // was started asks to join while that change waits for it to
            // catch up: answer at once when nothing needs proposing (its
            // incarnation is recorded later, from its handshake).
            let m = self.raft.membership();
            if !m.is_joint()
                && let Ok(None) = plan_admit(m, *id, learnable(m, *id, info))
            {
                let m = m.clone();
                self.out.done.push((token, Ok(Answer::Membership(m))));
                return;
            }
        }
        match &self.members.change {
            Some(c) if c.token.is_none() => {
                // Our own info update: it commits within a round trip.
                self.members.held.push_back(Held {
                    token,
                    deadline,
                    request,
                });
            }
            Some(_) => self.out.done.push((
                token,
                Err(GroupError::ChangeInProgress(
                    "another membership change is in progress; retry once it completes (keel members list shows the configuration)".into(),
                )),
            )),
            None => self.start_request(token, request, deadline),
        }
    }

    fn start_request(&mut self, token: Token, request: Request, deadline: u64) {
        let m = self.raft.membership().clone();
        if m.is_joint() {
            self.out.done.push((
                token,
                Err(GroupError::ChangeInProgress(
                    "the configuration is joint: a membership change is being completed; retry shortly".into(),
                )),
            ));
            return;
        }
        let planned = match request {
            Request::Change(req) => {
                plan(&m, &req).map(|o| o.map(|(s1, rest)| (s1, rest, req.wait_for_catch_up)))
            }
            Request::Admit { id, info } => {
                plan_admit(&m, id, info).map(|o| o.map(|(s1, rest)| (s1, rest, false)))
            }
        };
        let (stage1, rest, wait) = match planned {
            Ok(Some(p)) => p,
            Ok(None) => {
                self.out.done.push((token, Ok(Answer::Membership(m))));
                return;
            }
            Err(e) => {
                self.out.done.push((token, Err(e)));
                return;
            }
        };
        let stage = if stage1.ops.is_empty() && stage1.info.is_empty() {
            Stage::CatchingUp { rest }
        } else {
            match self.raft.propose_change(&stage1, self.now_ms) {
                Ok(ConfChangeStatus::Proposed(p)) => Stage::AddingLearners {
                    index: p.index,
                    term: p.term,
                    rest,
                },
                Ok(ConfChangeStatus::Waiting) => unreachable_waiting(),
                Err(e) => {
                    let err = self.map_raft_error(e);
                    self.out.done.push((token, Err(err)));
                    return;
                }
            }
        };
        self.members.change = Some(InFlight {
            token: Some(token),
            deadline,
            wait,
            stage,
        });
        // A CatchingUp stage may be proposable at once.
        self.advance_change();
    }

    /// Proposes the voter change once its learners have caught up.
    fn advance_change(&mut self) {
        let (rest, wait) = match &self.members.change {
            Some(InFlight {
                stage: Stage::CatchingUp { rest },
                wait,
                ..
            }) => (rest.clone(), *wait),
            _ => return,
        };
        if rest.ops.is_empty() && rest.info.is_empty() {
            let m = self.raft.membership().clone();
            self.finish_change(Ok(Answer::Membership(m)));
            return;
        }
        if let Some(e) = self.lagging_learner(&rest) {
            if !wait {
                self.finish_change(Err(e));
            }
            return;
        }
        match self.raft.propose_change(&rest, self.now_ms) {
            Ok(ConfChangeStatus::Proposed(p)) => {
                if let Some(c) = &mut self.members.change {
                    c.stage = Stage::Proposed {
                        index: p.index,
                        term: p.term,
                        seen: false,
                    };
                }
            }
            Ok(ConfChangeStatus::Waiting) => unreachable_waiting(),
            Err(keel_raft::Error::LearnerLagging { .. }) if wait => {}
            Err(e) => {
                let err = self.map_raft_error(e);
                self.finish_change(Err(err));
            }
        }
    }

    /// A learner that `change` promotes and that is further behind than
    /// raft allows, as the error to give.
    fn lagging_learner(&self, change: &ConfChange) -> Option<GroupError> {
        let st = self.raft.status();
        let max_lag = self.raft.config().learner_max_lag;
        change.ops.iter().find_map(|op| match op {
            ConfChangeOp::AddVoter(id) if self.raft.membership().is_learner(*id) => {
                let matched = st
                    .peers
                    .iter()
                    .find(|p| p.id == *id)
                    .map_or(0, |p| p.matched);
                // matched 0: it acknowledged nothing yet (see raft's check).
                (matched == 0 || matched + max_lag < st.last_index).then(|| GroupError::Lagging {
                    id: *id,
                    behind: st.last_index - matched,
                    matched,
                    last: st.last_index,
                })
            }
            _ => None,
        })
    }

    fn finish_change(&mut self, result: Result<Answer<M::Response>, GroupError>) {
        if let Some(c) = self.members.change.take()
            && let Some(token) = c.token
        {
            self.out.done.push((token, result));
        }
    }

    /// After each applied entry: move the change in flight along.
    pub(crate) fn membership_applied(&mut self, e: &Entry) {
        enum Next {
            Nothing,
            NotApplied,
            CatchUp,
            Finished,
        }
        let applied_joint = self.members.applied.is_joint();
        let Some(c) = &mut self.members.change else {
            return;
        };
        let (ei, et) = (e.index(), e.term());
        let next = match &mut c.stage {
            Stage::AddingLearners { index, term, .. } => {
                if ei == *index && et == *term {
                    Next::CatchUp
                } else if ei == *index || (ei < *index && et > *term) {
                    Next::NotApplied
                } else {
                    Next::Nothing
                }
            }
            Stage::Proposed { index, term, seen } => {
                if (ei == *index && et != *term) || (ei < *index && et > *term) {
                    Next::NotApplied
                } else {
                    if ei == *index {
                        *seen = true;
                    }
                    if *seen && e.kind() == EntryKind::Config && !applied_joint {
                        Next::Finished
                    } else {
                        Next::Nothing
                    }
                }
            }
            Stage::CatchingUp { .. } => Next::Nothing,
        };
        match next {
            Next::Nothing => {}
            Next::NotApplied => self.finish_change(Err(not_applied())),
            Next::Finished => {
                let m = self.members.applied.clone();
                self.finish_change(Ok(Answer::Membership(m)));
            }
            Next::CatchUp => {
                if let Some(c) = &mut self.members.change
                    && let Stage::AddingLearners { rest, .. } = &mut c.stage
                {
                    let rest = std::mem::take(rest);
                    c.stage = Stage::CatchingUp { rest };
                }
            }
        }
    }

    /// Every tick: deadlines of the change in flight and of held requests.
    pub(crate) fn membership_tick(&mut self) {
        let now = self.ticks;
        if let Some(c) = &self.members.change
            && now >= c.deadline
        {
            let err = match &c.stage {
                Stage::CatchingUp { rest } => self.lagging_learner(rest).unwrap_or_else(|| {
                    GroupError::TimedOut("the membership change did not finish in time".into())
                }),
                _ => GroupError::Ambiguous(
                    "the membership change did not finish in time; it may still complete: check the configuration (keel members list)".into(),
                ),
            };
            self.finish_change(Err(err));
        }
        let mut keep = VecDeque::new();
        for h in std::mem::take(&mut self.members.held) {
            if now >= h.deadline {
                self.out.done.push((
                    h.token,
                    Err(GroupError::TimedOut(
                        "another membership change did not finish in time; retry".into(),
                    )),
                ));
            } else {
                keep.push_back(h);
            }
        }
        self.members.held = keep;
    }

    /// At every poll: propose what is due (a caught-up promotion, a held
    /// request, learned member info).
    pub(crate) fn membership_poll(&mut self) {
        if self.failed.is_some() || self.raft.role() != Role::Leader {
            return;
        }
        if self.members.change.is_some() {
            self.advance_change();
            return;
        }
        if let Some(h) = self.members.held.pop_front() {
            self.start_request(h.token, h.request, h.deadline);
            return;
        }
        if self.members.learn_due {
            self.members.learn_due = false;
            self.learn_infos();
        }
    }

    /// Records, with one info-only change, what peers announced that the
    /// configuration does not hold yet.
    fn learn_infos(&mut self) {
        let m = self.raft.membership();
        if m.is_joint() {
            self.members.learn_due = true;
            return;
        }
        let mut change = ConfChange::default();
        for id in m.all_members() {
            let Some(seen) = self.members.observed.get(&id) else {
                continue;
            };
            let known = info_of(m, id);
            if known.incarnation != 0 && known.incarnation != seen.incarnation {
                continue; // refused at the handshake; nothing to learn
            }
            if let Some(next) = known.learn(seen) {
                change.info.insert(id, Some(next.encode()));
            }
        }
        if change.info.is_empty() {
            return;
        }
        match self.raft.propose_change(&change, self.now_ms) {
            Ok(ConfChangeStatus::Proposed(p)) => {
                self.members.change = Some(InFlight {
                    token: None,
                    deadline: self.ticks + 10 * self.raft.config().election_tick as u64,
                    wait: false,
                    stage: Stage::Proposed {
                        index: p.index,
                        term: p.term,
                        seen: false,
                    },
                });
            }
            Ok(ConfChangeStatus::Waiting) => unreachable_waiting(),
            Err(_) => self.members.learn_due = true,
        }
    }

    /// This node stopped leading: changes that had not reached the log yet
    /// cannot go on here.
    pub(crate) fn on_leadership_lost(&mut self) {
        let leader = self.raft.leader();
        if let Some(c) = &self.members.change {
            match c.stage {
                Stage::Proposed { .. } => {} // decided by what is applied
                Stage::AddingLearners { .. } | Stage::CatchingUp { .. } => {
                    self.finish_change(Err(GroupError::Ambiguous(
                        "leadership moved during the membership change; new nodes may have been added as learners: check the configuration (keel members list) and retry".into(),
                    )));
                }
            }
        }
        for h in std::mem::take(&mut self.members.held) {
            self.out
                .done
                .push((h.token, Err(GroupError::NotLeader { leader })));
        }
        self.members.learn_due = true;
    }
}

fn unreachable_waiting<T>() -> T {
    // The core proposes with LaggingLearner::Refuse only; raft answers
    // Waiting only to LaggingLearner::Wait.
    unreachable!("raft held a change proposed with LaggingLearner::Refuse")
}

fn not_applied() -> GroupError {
    GroupError::Ambiguous(
        "leadership changed and the membership change was not applied; nothing changed, retry"
            .into(),
    )
}

type Plan = Option<(ConfChange, ConfChange)>;

#[cfg(test)]
pub(crate) fn plan_for_tests(m: &Membership, req: &ChangeRequest) -> Result<Plan, GroupError> {
    plan(m, req)
}

/// Splits a request into the learners to add first and the rest (the
/// voter change). `Ok(None)`: nothing to do.
fn plan(m: &Membership, req: &ChangeRequest) -> Result<Plan, GroupError> {
    let mut first = ConfChange::default();
    let mut rest = ConfChange {
        lagging: LaggingLearner::Refuse,
        ..Default::default()
    };
    let invalid = |s: String| Err(GroupError::Invalid(s));
    for c in &req.changes {
        match c {
            MemberChange::AddLearner { id, info } => {
                if m.is_voter(*id) {
                    return invalid(format!(
                        "node {id} is a voter; to make it a learner, demote it"
                    ));
                }
                if m.is_learner(*id) {
                    if let Some(next) = updated(m, *id, info) {
                        rest.info.insert(*id, Some(next.encode()));
                    }
                } else {
                    first.ops.push(ConfChangeOp::AddLearner(*id));
                    first.info.insert(*id, Some(info.encode()));
                }
            }
            MemberChange::AddVoter { id, info } => {
                if let Some(info) = info
                    && m.is_member(*id)
                    && let Some(next) = updated(m, *id, info)
                {
                    rest.info.insert(*id, Some(next.encode()));
                }
                if m.is_voter(*id) {
                    continue;
                }
                if !m.is_member(*id) {
                    let Some(info) = info else {
                        return invalid(format!(
                            "node {id} is not a member; give its peer address to add it"
                        ));
                    };
                    first.ops.push(ConfChangeOp::AddLearner(*id));
                    first.info.insert(*id, Some(info.encode()));
                }
                rest.ops.push(ConfChangeOp::AddVoter(*id));
            }
            MemberChange::Promote(id) => {
                if m.is_voter(*id) {
                    return invalid(format!("node {id} is already a voter"));
                }
                if !m.is_member(*id) {
                    return invalid(format!(
                        "node {id} is not a member; add it first (keel members add {id} PEER_ADDR)"
                    ));
                }
                rest.ops.push(ConfChangeOp::AddVoter(*id));
            }
            MemberChange::Demote(id) => {
                if !m.is_voter(*id) {
                    return invalid(format!("node {id} is not a voter"));
                }
                rest.ops.push(ConfChangeOp::AddLearner(*id));
            }
            MemberChange::Remove(id) => {
                if !m.is_member(*id) {
                    return invalid(format!(
                        "node {id} is not a member (members: {})",
                        list(m.all_members())
                    ));
                }
                rest.ops.push(ConfChangeOp::Remove(*id));
            }
        }
    }
    if first.ops.is_empty() && first.info.is_empty() && rest.ops.is_empty() && rest.info.is_empty()
    {
        return Ok(None);
    }
    Ok(Some((first, rest)))
}

/// A member's info as an operator restates it: the addresses given replace
/// the recorded ones, but a recorded incarnation stays (an operator does not
/// know it, and forgetting it would let a wiped directory in). `None` when
/// nothing changes.
fn updated(m: &Membership, id: NodeId, given: &MemberInfo) -> Option<MemberInfo> {
    let known = info_of(m, id);
    let next = MemberInfo {
        incarnation: if given.incarnation != 0 {
            given.incarnation
        } else {
            known.incarnation
        },
        peer_addr: if given.peer_addr.is_empty() {
            known.peer_addr.clone()
        } else {
            given.peer_addr.clone()
        },
        client_addr: if given.client_addr.is_empty() {
            known.client_addr.clone()
        } else {
            given.client_addr.clone()
        },
    };
    (next != known).then_some(next)
}

/// What an admission must record: a learner's info with an unknown
/// incarnation is left as it is (the leader learns it from the node's
/// handshake), so admitting a learner the operator added needs no change.
fn learnable(m: &Membership, id: NodeId, info: &MemberInfo) -> MemberInfo {
    let known = info_of(m, id);
    if m.is_learner(id) && known.incarnation == 0 && known.peer_addr == info.peer_addr {
        known
    } else {
        info.clone()
    }
}

fn plan_admit(m: &Membership, id: NodeId, info: MemberInfo) -> Result<Plan, GroupError> {
    let known = info_of(m, id);
    if m.is_voter(id) {
        if known.incarnation != 0 && known.incarnation == info.incarnation {
            return Ok(None);
        }
        return Err(GroupError::Invalid(format!(
            "node {id} is a voter of this cluster; a node with an empty data directory cannot take its place (was its data lost?). Remove it first (keel members remove {id}), then start it again with --join"
        )));
    }
    if m.is_learner(id) {
        if known.incarnation != 0 && known.incarnation != info.incarnation {
            return Err(GroupError::Invalid(format!(
                "node {id} was added with another data directory (incarnation {:016x}, this one is {:016x}); remove it (keel members remove {id}) and join again",
                known.incarnation, info.incarnation
            )));
        }
        if known == info {
            return Ok(None);
        }
        let mut rest = ConfChange::default();
        rest.info.insert(id, Some(info.encode()));
        return Ok(Some((ConfChange::default(), rest)));
    }
    let mut first = ConfChange::default();
    first.ops.push(ConfChangeOp::AddLearner(id));
    first.info.insert(id, Some(info.encode()));
    Ok(Some((first, ConfChange::default())))
}

fn list(ids: impl Iterator<Item = NodeId>) -> String {
    ids.map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}
