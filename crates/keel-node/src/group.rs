//! [`Group`]: what an application holds of a raft group its node hosts.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_log::{LogError, LogStore};
use keel_raft::{GroupId, Membership, NodeId, SoftState};
use tokio::sync::{mpsc, oneshot, watch};

use crate::core::{ChangeRequest, CoreStatus, MemberChange};
use crate::error::GroupError;
use crate::mark::Watermark;
use crate::member_info::MemberInfo;
use crate::runtime::Input;
use crate::state_machine::StateMachine;
use crate::transport::Directory;

/// A group's state with what the node knows of its members.
#[derive(Debug, Clone)]
pub struct GroupStatus {
    /// The group core's view.
    pub core: CoreStatus,
    /// Client addresses of members, as announced or configured.
    pub client_addrs: Vec<(NodeId, String)>,
    /// Peers that refused this node's connection, and why.
    pub refusals: Vec<(NodeId, String)>,
}

/// A handle on a raft group hosted by this node (cheap to clone). Requests
/// go to the group's task; they fail with [`GroupError::Stopped`] once the
/// node stops.
pub struct Group<M: StateMachine> {
    pub(crate) id: GroupId,
    pub(crate) tx: mpsc::UnboundedSender<Input<M>>,
    pub(crate) served: watch::Receiver<Watermark>,
    pub(crate) role: watch::Receiver<SoftState>,
    pub(crate) membership: watch::Receiver<Membership>,
    /// Weak: a handle that outlives the node must not keep its store open
    /// (a node restarted in the same process could not open it again).
    pub(crate) log: Weak<LogStore>,
    pub(crate) directory: Arc<Directory>,
}

impl<M: StateMachine> Clone for Group<M> {
    fn clone(&self) -> Self {
        Group {
            id: self.id,
            tx: self.tx.clone(),
            served: self.served.clone(),
            role: self.role.clone(),
            membership: self.membership.clone(),
            log: self.log.clone(),
            directory: self.directory.clone(),
        }
    }
}

impl<M: StateMachine> Group<M> {
    /// The group's id.
    pub fn id(&self) -> GroupId {
        self.id
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, GroupError>>) -> Input<M>,
    ) -> Result<T, GroupError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).map_err(|_| GroupError::Stopped)?;
        rx.await.map_err(|_| GroupError::Stopped)?
    }

    /// Proposes one command; returns the state machine's response once it
    /// is committed (fsynced on a quorum) and applied here. Leader only
    /// (`NotLeader` names the leader). `LostLeadership`: definitely not
    /// applied. Give up waiting with a timeout of your own: the outcome is
    /// then unknown.
    pub async fn propose(&self, cmd: Bytes) -> Result<M::Response, GroupError> {
        let mut v = self.propose_many(vec![cmd]).await?;
        v.pop()
            .ok_or_else(|| GroupError::Invalid("no response for the proposed command".into()))
    }

    /// Proposes several commands together (one entry); one response each,
    /// in order. All or none are applied.
    pub async fn propose_many(&self, cmds: Vec<Bytes>) -> Result<Vec<M::Response>, GroupError> {
        let start = Instant::now();
        self.call(|reply| Input::Propose {
            records: cmds,
            reply,
            start,
        })
        .await
    }

    /// Proposes a control command for [`StateMachine::apply_control`] (takes
    /// no user offsets); returns once applied here.
    pub async fn propose_control(&self, payload: Bytes) -> Result<(), GroupError> {
        self.call(|reply| Input::Control { payload, reply }).await
    }

    /// A linearizable read: confirms with the leader (ReadIndex) that this
    /// node holds everything committed before the call, waits until it
    /// serves that far, then runs `query` against the state machine (on the
    /// group's task: keep it short). Works on followers too.
    pub async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&M) -> T + Send + 'static,
    ) -> Result<T, GroupError> {
        let (tx, rx) = oneshot::channel();
        let q = Box::new(move |sm: Result<&M, GroupError>| {
            let _ = tx.send(sm.map(query));
        });
        self.tx
            .send(Input::Read { query: q })
            .map_err(|_| GroupError::Stopped)?;
        rx.await.map_err(|_| GroupError::Stopped)?
    }

    /// Runs `query` against the state machine as it is here now: possibly
    /// stale, and possibly ahead of what [`served`](Self::served) says (it
    /// includes entries applied whose mark is not yet durable).
    pub async fn read_local<T: Send + 'static>(
        &self,
        query: impl FnOnce(&M) -> T + Send + 'static,
    ) -> Result<T, GroupError> {
        let (tx, rx) = oneshot::channel();
        let q = Box::new(move |sm: Result<&M, GroupError>| {
            let _ = tx.send(sm.map(query));
        });
        self.tx
            .send(Input::ReadLocal { query: q })
            .map_err(|_| GroupError::Stopped)?;
        rx.await.map_err(|_| GroupError::Stopped)?
    }

    /// Changes the membership (leader only); returns the configuration in
    /// force once the change is final. `timeout` bounds the whole request,
    /// new learners catching up included.
    pub async fn change_members(
        &self,
        req: ChangeRequest,
        timeout: Duration,
    ) -> Result<Membership, GroupError> {
        self.call(|reply| Input::Change {
            req,
            timeout,
            reply,
        })
        .await
    }

    /// Adds a learner.
    pub async fn add_learner(
        &self,
        id: NodeId,
        info: MemberInfo,
        timeout: Duration,
    ) -> Result<Membership, GroupError> {
        let req = ChangeRequest {
            changes: vec![MemberChange::AddLearner { id, info }],
            wait_for_catch_up: false,
        };
        self.change_members(req, timeout).await
    }

    /// Adds a voter: a new node joins as a learner, catches up, then is
    /// promoted; refused with how far behind it is if it does not catch up
    /// within `timeout`.
    pub async fn add_voter(
        &self,
        id: NodeId,
        info: Option<MemberInfo>,
        timeout: Duration,
    ) -> Result<Membership, GroupError> {
        let req = ChangeRequest {
            changes: vec![MemberChange::AddVoter { id, info }],
            wait_for_catch_up: true,
        };
        self.change_members(req, timeout).await
    }

    /// Removes a member.
    pub async fn remove(&self, id: NodeId, timeout: Duration) -> Result<Membership, GroupError> {
        let req = ChangeRequest {
            changes: vec![MemberChange::Remove(id)],
            wait_for_catch_up: false,
        };
        self.change_members(req, timeout).await
    }

    /// Admits a node that asks to join with an empty data directory (see
    /// [`GroupCore::admit`](crate::core::GroupCore::admit)); returns the
    /// configuration it joins.
    pub async fn admit(
        &self,
        id: NodeId,
        info: MemberInfo,
        timeout: Duration,
    ) -> Result<Membership, GroupError> {
        self.call(|reply| Input::Admit {
            id,
            info,
            timeout,
            reply,
        })
        .await
    }

    /// Hands leadership to `to`; returns once it leads.
    pub async fn transfer_leader(&self, to: NodeId) -> Result<(), GroupError> {
        self.call(|reply| Input::Transfer { to, reply }).await
    }

    /// Sets (or clears) the group's preferred leader, replicated: the
    /// leader hands over to it whenever it is caught up and responsive.
    pub async fn set_preferred_leader(&self, leader: Option<NodeId>) -> Result<(), GroupError> {
        self.call(|reply| Input::Preferred { leader, reply }).await
    }

    /// Snapshots the state machine now (normally the group's snapshot
    /// policy decides). Returns false when nothing was applied since the
    /// last snapshot or one is being taken.
    pub async fn snapshot(&self) -> Result<bool, GroupError> {
        self.call(|reply| Input::Snapshot { reply }).await
    }

    /// The group's state.
    pub async fn status(&self) -> Result<GroupStatus, GroupError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Input::Status { reply: tx })
            .map_err(|_| GroupError::Stopped)?;
        let core = rx.await.map_err(|_| GroupError::Stopped)?;
        let client_addrs = core
            .membership
            .all_members()
            .filter_map(|id| self.directory.client_addr(id).map(|a| (id, a)))
            .collect();
        let refusals = self.directory.refusals().into_iter().collect();
        Ok(GroupStatus {
            core,
            client_addrs,
            refusals,
        })
    }

    /// Role, leader and term, as they change.
    pub fn role(&self) -> watch::Receiver<SoftState> {
        self.role.clone()
    }

    /// The configuration in force, as it changes.
    pub fn membership(&self) -> watch::Receiver<Membership> {
        self.membership.clone()
    }

    /// What readers may see (committed, applied, and recorded durably), as
    /// it grows.
    pub fn served(&self) -> watch::Receiver<Watermark> {
        self.served.clone()
    }

    /// The client address of a member, as it announced it (or as the
    /// configuration holds it).
    pub fn client_addr(&self, id: NodeId) -> Option<String> {
        self.directory.client_addr(id)
    }

    /// Records of the log from offset `start` (inclusive) to `end`
    /// (exclusive), at most `max_records` and about `max_bytes` of payload
    /// (at least one record if there is one), never past what is served.
    /// Returns the records and the served end offset.
    pub fn read_records(
        &self,
        start: u64,
        end: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<(Vec<(u64, Bytes)>, u64), LogError> {
        self.read_log(start, end, max_records, max_bytes, false)
    }

    /// Like [`read_records`](Self::read_records), but whole entries: every
    /// record (below `end`) of each entry it reads, stopping after the
    /// entry that reaches `max_bytes`. For a reader that hands records out
    /// in smaller pieces (a tail stream): the records share the entry's
    /// buffer, and an entry larger than a piece is read once, not once per
    /// piece.
    pub fn read_entries(
        &self,
        start: u64,
        end: u64,
        max_bytes: usize,
    ) -> Result<(Vec<(u64, Bytes)>, u64), LogError> {
        self.read_log(start, end, usize::MAX, max_bytes, true)
    }

    fn read_log(
        &self,
        start: u64,
        end: u64,
        max_records: usize,
        max_bytes: usize,
        whole: bool,
    ) -> Result<(Vec<(u64, Bytes)>, u64), LogError> {
        let log = self.log.upgrade().ok_or(LogError::Closed)?;
        let served = self.served.borrow().end_offset;
        let end = end.min(served);
        let mut out = Vec::new();
        if start >= end {
            return Ok((out, served));
        }
        let mut next = start;
        let mut bytes = 0usize;
        'outer: while next < end {
            let batches = log.read_from_offset(next, max_bytes.max(1))?;
            if batches.is_empty() {
                break;
            }
            for b in batches {
                for (off, r) in (b.base_offset()..).zip(b.records()) {
                    if off >= end || out.len() >= max_records {
                        break 'outer;
                    }
                    if off >= next {
                        if !whole && !out.is_empty() && bytes + r.len() > max_bytes {
                            break 'outer;
                        }
                        bytes += r.len();
                        out.push((off, r));
                    }
                }
                next = next.max(b.end_offset());
                if whole && bytes >= max_bytes {
                    break 'outer;
                }
            }
        }
        Ok((out, served))
    }

    /// The first user offset the log still holds on this node (0 once the
    /// node stopped).
    pub fn first_offset(&self) -> u64 {
        self.log.upgrade().map_or(0, |l| l.first_offset())
    }

    /// Stops the group's task (the node's shutdown does it for every group).
    pub(crate) fn stop(&self) {
        let _ = self.tx.send(Input::Stop);
    }
}
