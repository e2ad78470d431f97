//! The membership nemesis: nodes join, are promoted, demoted, removed and
//! replaced while the other faults run.
//!
//! A membership phase runs changes back to back until the hold has passed
//! (at least one), each chosen from the configuration the leader holds at
//! that moment ([`choose`]): start a spare slot with `keel server --join`
//! and promote it once admitted (or leave it a learner), `members add` a
//! spare as a voter before it runs, promote a learner, demote or remove a
//! voter (the leader a third of the time), remove a learner, or replace
//! one or two voters in one joint change. The voter count stays within
//! `--nodes ..= --nodes + 2`, never below the founding size; learners at
//! most two. Half the phases also inject another enabled nemesis (a
//! partition, kill -9, a pause, a lost-writes crash) at a random moment of
//! the first half of the hold, held until the hold ends, so changes run
//! into faults.
//!
//! Every change may fail or end unknown (another change in progress, a
//! learner that did not catch up, leadership lost, a deadline): each is
//! recorded with its outcome ([`Record`]) and the runner never relies on
//! one. Instead, after each membership phase (and at the end) it
//! reconciles with the truth ([`reconcile`]): the configuration the leader
//! holds once it is known committed ([`committed_config`]). A running node
//! that is not in it is stopped and becomes a spare (its directory is
//! wiped before it ever starts again, so a removed node only comes back
//! through remove-then-join with a fresh directory); a spare slot that is
//! in it (a join that was admitted after the runner gave up on it) is
//! removed; a member that is down is started.
//!
//! A successful change is checked against its answer (a promoted node is a
//! voter in the configuration the leader answers with, a removed one
//! absent); a mismatch is a violation.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_client::{
    Client, ClientError, ClientOptions, Code, MemberChange, StatusResponse,
    member_change::Kind as ChangeKind,
};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::Error;
use crate::cluster::{Cluster, Role, node_client};
use crate::nemesis::{self, Kind, Undo};
use crate::net::Net;
use crate::rng::Rng;
use crate::workload::Shared;

/// A configuration as a leader holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Config {
    /// The node that answered as leader.
    pub leader: usize,
    pub term: u64,
    pub voters: BTreeSet<usize>,
    /// Voters of the old half of a joint configuration only.
    pub outgoing: BTreeSet<usize>,
    pub learners: BTreeSet<usize>,
    pub joint: bool,
}

impl Config {
    fn from_status(s: &StatusResponse) -> Config {
        let mut c = Config {
            leader: s.node_id as usize,
            term: s.term,
            joint: s.joint,
            ..Config::default()
        };
        for m in &s.members {
            let id = m.id as usize;
            match m.suffrage.as_str() {
                "voter" => c.voters.insert(id),
                "outgoing voter" => c.outgoing.insert(id),
                _ => c.learners.insert(id),
            };
        }
        c
    }

    /// Voters (both halves when joint) and learners.
    pub fn members(&self) -> BTreeSet<usize> {
        self.voters
            .iter()
            .chain(&self.outgoing)
            .chain(&self.learners)
            .copied()
            .collect()
    }

    pub fn describe(&self) -> String {
        format!(
            "voters {:?}, learners {:?}{}",
            self.voters,
            self.learners,
            if self.joint {
                format!(" (joint, outgoing {:?})", self.outgoing)
            } else {
                String::new()
            }
        )
    }
}

/// Every slot's status, asked in parallel (a paused or dead node costs at
/// most `each`).
async fn statuses(addrs: &[(usize, String)], each: Duration) -> Vec<(usize, StatusResponse)> {
    let mut set = tokio::task::JoinSet::new();
    for (id, addr) in addrs.iter().cloned() {
        set.spawn(async move {
            let c = node_client(&addr, each).ok()?;
            match tokio::time::timeout(each, c.status_of(&addr)).await {
                Ok(Ok(s)) => Some((id, s)),
                _ => None,
            }
        });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Ok(Some(x)) = r {
            out.push(x);
        }
    }
    out
}

/// The node that says it leads with the highest term, and its status.
pub async fn leader_status(addrs: &[(usize, String)]) -> Option<(usize, StatusResponse)> {
    statuses(addrs, Duration::from_secs(1))
        .await
        .into_iter()
        .filter(|(_, s)| s.role == "leader")
        .max_by_key(|(_, s)| s.term)
}

/// The configuration the leader holds now, if a leader answers.
pub async fn leader_config(addrs: &[(usize, String)]) -> Option<Config> {
    leader_status(addrs)
        .await
        .map(|(_, s)| Config::from_status(&s))
}

/// A non-joint configuration known to be committed: read from the leader,
/// then the same leader, still leading in the same term, reported a commit
/// index at or past its last index as of that read. (A configuration takes
/// effect when appended, so the one in force at that index is the one
/// read; once committed it can never be rolled back.) Retries until
/// `within` passes.
pub async fn committed_config(
    addrs: &[(usize, String)],
    within: Duration,
) -> Result<Config, String> {
    let deadline = Instant::now() + within;
    let mut last_seen = String::from("no node said it leads");
    while Instant::now() < deadline {
        let Some((id, s)) = leader_status(addrs).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let cfg = Config::from_status(&s);
        if cfg.joint {
            last_seen = format!("node {id} leads a joint configuration: {}", cfg.describe());
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let addr = addrs
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, a)| a.clone())
            .unwrap_or_default();
        let Ok(c) = node_client(&addr, Duration::from_secs(1)) else {
            continue;
        };
        let (term, last) = (s.term, s.last_index);
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until && Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(1), c.status_of(&addr)).await {
                Ok(Ok(t)) if t.role == "leader" && t.term == term => {
                    if t.commit_index >= last {
                        return Ok(cfg);
                    }
                    last_seen = format!(
                        "node {id} leads term {term}, commit {} of {last}",
                        t.commit_index
                    );
                }
                _ => break, // leadership moved: read again
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Err(format!(
        "no committed configuration could be read within {within:?} ({last_seen})"
    ))
}

/// Limits on the configurations the nemesis makes.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub min_voters: usize,
    pub max_voters: usize,
    pub max_learners: usize,
}

impl Bounds {
    /// `founding ..= founding + 2` voters, at most two learners.
    pub fn for_cluster(founding: usize, slots: usize) -> Bounds {
        Bounds {
            min_voters: founding,
            max_voters: (founding + 2).min(slots),
            max_learners: 2,
        }
    }
}

/// One membership change the nemesis makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start spare `id` with `--join` (the cluster admits it as a
    /// learner), then promote it if `promote`.
    Join {
        id: usize,
        promote: bool,
    },
    /// `members add id PEER` (a voter: learner, catch up, promote) while
    /// the node is not running yet; it starts with `--join` 200 ms later.
    AddVoter {
        id: usize,
    },
    Promote {
        id: usize,
    },
    Demote {
        id: usize,
    },
    /// Remove a voter or a learner.
    Remove {
        id: usize,
    },
    /// One joint change: learners promoted and spares added as voters,
    /// as many voters removed.
    Replace {
        promote: Vec<usize>,
        add: Vec<usize>,
        remove: Vec<usize>,
    },
}

impl Action {
    pub fn describe(&self) -> String {
        match self {
            Action::Join { id, promote: true } => format!("join {id} and promote it"),
            Action::Join { id, promote: false } => format!("join {id} as a learner"),
            Action::AddVoter { id } => format!("members add {id} (voter) before it runs"),
            Action::Promote { id } => format!("promote learner {id}"),
            Action::Demote { id } => format!("demote voter {id}"),
            Action::Remove { id } => format!("remove {id}"),
            Action::Replace {
                promote,
                add,
                remove,
            } => {
                let mut s = String::from("replace voters");
                for r in remove {
                    let _ = write!(s, " {r}");
                }
                s.push_str(" by");
                for p in promote {
                    let _ = write!(s, " {p} (learner)");
                }
                for a in add {
                    let _ = write!(s, " {a} (added)");
                }
                s.push_str(" in one change");
                s
            }
        }
    }

    /// The configuration if the action succeeds.
    pub fn apply(&self, cfg: &Config) -> Config {
        let mut c = cfg.clone();
        match self {
            Action::Join { id, promote } => {
                if *promote {
                    c.voters.insert(*id);
                } else {
                    c.learners.insert(*id);
                }
            }
            Action::AddVoter { id } => {
                c.voters.insert(*id);
            }
            Action::Promote { id } => {
                c.learners.remove(id);
                c.voters.insert(*id);
            }
            Action::Demote { id } => {
                c.voters.remove(id);
                c.learners.insert(*id);
            }
            Action::Remove { id } => {
                c.voters.remove(id);
                c.learners.remove(id);
            }
            Action::Replace {
                promote,
                add,
                remove,
            } => {
                for id in remove {
                    c.voters.remove(id);
                }
                for id in promote.iter().chain(add) {
                    c.learners.remove(id);
                    c.voters.insert(*id);
                }
            }
        }
        c
    }
}

fn pick<T: Copy>(rng: &mut Rng, from: &[T]) -> T {
    from[rng.below(from.len() as u64) as usize]
}

/// A voter to remove or demote: the leader a third of the time (when
/// `leader` is a voter), else another voter.
fn pick_voter(rng: &mut Rng, cfg: &Config) -> usize {
    let voters: Vec<usize> = cfg.voters.iter().copied().collect();
    if cfg.voters.contains(&cfg.leader) && rng.below(3) == 0 {
        return cfg.leader;
    }
    let others: Vec<usize> = voters
        .iter()
        .copied()
        .filter(|&v| v != cfg.leader)
        .collect();
    if others.is_empty() {
        pick(rng, &voters)
    } else {
        pick(rng, &others)
    }
}

/// Chooses a change that keeps the configuration within `b`, given the
/// spare slots (not members, not running). `None` when none fits (a joint
/// configuration, or nothing to do within the bounds).
pub fn choose(cfg: &Config, spares: &[usize], b: &Bounds, rng: &mut Rng) -> Option<Action> {
    if cfg.joint || cfg.voters.is_empty() {
        return None;
    }
    let nv = cfg.voters.len();
    let learners: Vec<usize> = cfg.learners.iter().copied().collect();
    let spares: Vec<usize> = spares
        .iter()
        .copied()
        .filter(|s| !cfg.members().contains(s))
        .collect();
    #[derive(Clone, Copy)]
    enum C {
        JoinPromote,
        JoinLearner,
        AddVoter,
        Promote,
        RemoveVoter,
        Demote,
        RemoveLearner,
        Replace,
    }
    let mut cands = Vec::new();
    if nv < b.max_voters {
        if !spares.is_empty() {
            cands.extend([C::JoinPromote, C::JoinPromote, C::AddVoter, C::AddVoter]);
        }
        if !learners.is_empty() {
            cands.extend([C::Promote, C::Promote]);
        }
    }
    if !spares.is_empty() && learners.len() < b.max_learners {
        cands.push(C::JoinLearner);
    }
    if nv > b.min_voters && nv > 1 {
        cands.extend([C::RemoveVoter, C::RemoveVoter, C::Demote]);
    }
    if !learners.is_empty() {
        cands.push(C::RemoveLearner);
    }
    if nv >= 2 && learners.len() + spares.len() >= 1 {
        cands.extend([C::Replace, C::Replace, C::Replace]);
    }
    if cands.is_empty() {
        return None;
    }
    let a = match pick(rng, &cands) {
        C::JoinPromote => Action::Join {
            id: pick(rng, &spares),
            promote: true,
        },
        C::JoinLearner => Action::Join {
            id: pick(rng, &spares),
            promote: false,
        },
        C::AddVoter => Action::AddVoter {
            id: pick(rng, &spares),
        },
        C::Promote => Action::Promote {
            id: pick(rng, &learners),
        },
        C::RemoveVoter => Action::Remove {
            id: pick_voter(rng, cfg),
        },
        C::Demote => Action::Demote {
            id: pick_voter(rng, cfg),
        },
        C::RemoveLearner => Action::Remove {
            id: pick(rng, &learners),
        },
        C::Replace => {
            // One voter, or two (a majority of three) when there are two
            // to take their places; at least one old voter stays.
            let sources = learners.len() + spares.len();
            let k = if sources >= 2 && nv >= 3 && rng.below(2) == 0 {
                2
            } else {
                1
            };
            let mut remove = Vec::new();
            let mut left = cfg.clone();
            for _ in 0..k {
                let v = pick_voter(rng, &left);
                left.voters.remove(&v);
                remove.push(v);
            }
            remove.sort_unstable();
            let mut pool: Vec<(bool, usize)> = learners
                .iter()
                .map(|&l| (true, l))
                .chain(spares.iter().map(|&s| (false, s)))
                .collect();
            rng.shuffle(&mut pool);
            let (mut promote, mut add) = (Vec::new(), Vec::new());
            for (learner, id) in pool.into_iter().take(k) {
                if learner {
                    promote.push(id);
                } else {
                    add.push(id);
                }
            }
            promote.sort_unstable();
            add.sort_unstable();
            Action::Replace {
                promote,
                add,
                remove,
            }
        }
    };
    let after = a.apply(cfg);
    let fits = after.voters.len() >= b.min_voters.min(nv)
        && after.voters.len() <= b.max_voters.max(nv)
        && after.learners.len() <= b.max_learners.max(cfg.learners.len());
    fits.then_some(a)
}

/// What became of a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Done, as the leader answered.
    Ok,
    /// Refused or not done (another change in progress, no leader, a node
    /// that was never admitted).
    Failed,
    /// May or may not have taken effect (a deadline, leadership lost).
    Unknown,
}

/// One change the nemesis made, for the record.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// Milliseconds since the run started.
    pub at_ms: u64,
    pub phase: usize,
    pub action: String,
    pub outcome: Outcome,
    pub detail: String,
    pub took_ms: u64,
}

/// How a change's error is to be read.
pub fn classify(e: &ClientError) -> Outcome {
    match e {
        ClientError::Ambiguous(_) => Outcome::Unknown,
        ClientError::Unavailable(_) | ClientError::Invalid(_) => Outcome::Failed,
        ClientError::Rpc { code, .. } => match code {
            // A deadline: a learner that did not catch up, a change that
            // did not finish, leadership that moved (new learners may have
            // been added).
            Code::DeadlineExceeded
            | Code::Unavailable
            | Code::Unknown
            | Code::Internal
            | Code::Cancelled => Outcome::Unknown,
            // In progress (ALREADY_EXISTS), invalid, no leader.
            _ => Outcome::Failed,
        },
    }
}

/// What the phase's change task asks the runner to do with processes.
pub enum Req {
    /// Wipe spare `id` and start it with `--join` through the members.
    Join {
        id: usize,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Stop `id` (it left the configuration) and make it a spare.
    Retire {
        id: usize,
        kill: bool,
        reply: oneshot::Sender<()>,
    },
    /// The spare slots: not members, not running.
    Spares { reply: oneshot::Sender<Vec<usize>> },
}

/// Client addresses of the members' slots.
pub fn member_endpoints(cl: &Cluster, net: &Net) -> Vec<String> {
    cl.member_ids()
        .into_iter()
        .map(|i| net.client_addr(i))
        .collect()
}

/// Carries out one request of the change task.
pub fn serve(req: Req, cl: &mut Cluster, net: &Net, sh: &Shared) {
    match req {
        Req::Join { id, reply } => {
            let r = if cl.role(id) != Role::Spare {
                Err(format!("slot {id} is not a spare"))
            } else {
                // Every member, running or not (a fault may have them all
                // down for a moment): the joining server retries for a
                // minute until one of them admits it.
                let eps: Vec<String> = cl
                    .member_ids()
                    .into_iter()
                    .filter(|&i| i != id)
                    .map(|i| net.client_addr(i))
                    .collect();
                cl.start_joining(net, id, &eps).map_err(|e| e.to_string())
            };
            sh.set_endpoints(member_endpoints(cl, net));
            let _ = reply.send(r);
        }
        Req::Retire { id, kill, reply } => {
            cl.retire(id, kill);
            sh.set_endpoints(member_endpoints(cl, net));
            let _ = reply.send(());
        }
        Req::Spares { reply } => {
            let s = (1..=cl.len())
                .filter(|&i| cl.role(i) == Role::Spare && !cl.is_running(i))
                .collect();
            let _ = reply.send(s);
        }
    }
}

/// What the change task needs.
#[derive(Clone)]
pub struct Ctx {
    /// Every slot's client address.
    pub addrs: Vec<(usize, String)>,
    /// Every slot's peer address (index `id - 1`).
    pub peers: Vec<String>,
    pub bounds: Bounds,
    pub started: Instant,
    pub phase: usize,
    /// The server-side bound of each change (learners catching up
    /// included).
    pub change_timeout: Duration,
}

fn change(kind: ChangeKind, id: usize, peer: &str) -> MemberChange {
    MemberChange {
        kind: kind as i32,
        id: id as u64,
        peer_addr: peer.to_string(),
    }
}

fn log(ctx: &Ctx, msg: &str) {
    crate::log(msg, ctx.started);
}

/// What the task found wrong (a change acknowledged but not in effect).
pub type Violations = Vec<String>;

struct Task {
    ctx: Ctx,
    tx: mpsc::Sender<Req>,
    rng: Rng,
    records: Vec<Record>,
    violations: Violations,
}

impl Task {
    fn client(&self, endpoints: Vec<String>) -> Option<Client> {
        Client::new(ClientOptions {
            endpoints,
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_millis(500),
            ..ClientOptions::default()
        })
        .ok()
    }

    fn record(&mut self, action: &str, outcome: Outcome, detail: String, t0: Instant) {
        let r = Record {
            at_ms: self.ctx.started.elapsed().as_millis() as u64,
            phase: self.ctx.phase,
            action: action.to_string(),
            outcome,
            detail,
            took_ms: t0.elapsed().as_millis() as u64,
        };
        log(
            &self.ctx,
            &format!(
                "  membership: {}: {:?}{} ({} ms)",
                r.action,
                r.outcome,
                if r.detail.is_empty() {
                    String::new()
                } else {
                    format!(": {}", r.detail)
                },
                r.took_ms
            ),
        );
        self.records.push(r);
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Req) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Waits until `id` is a member of the leader's configuration.
    async fn wait_admitted(&self, id: usize, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        let mut last = String::from("no leader answered");
        while Instant::now() < deadline {
            if let Some(c) = leader_config(&self.ctx.addrs).await {
                if c.members().contains(&id) {
                    return Ok(());
                }
                last = c.describe();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(format!("not admitted within {within:?} ({last})"))
    }

    /// Sends a change (with the spares in `start` started with `--join`
    /// 200 ms after it was sent) and records what became of it.
    async fn change(
        &mut self,
        what: &str,
        action: &Action,
        changes: Vec<MemberChange>,
        start: &[usize],
        endpoints: Vec<String>,
        t0: Instant,
    ) -> Outcome {
        let Some(client) = self.client(endpoints) else {
            self.record(what, Outcome::Failed, "no client".into(), t0);
            return Outcome::Failed;
        };
        let timeout = self.ctx.change_timeout;
        let call =
            tokio::spawn(async move { client.change_members(changes, timeout, false).await });
        let mut note = String::new();
        if !start.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            for &id in start {
                if let Some(Err(e)) = self.ask(|reply| Req::Join { id, reply }).await {
                    let _ = write!(note, "; starting {id} failed: {e}");
                }
            }
        }
        let r = match call.await {
            Ok(r) => r,
            Err(e) => Err(ClientError::Ambiguous(format!(
                "the change task failed: {e}"
            ))),
        };
        match r {
            Ok(resp) => {
                let mut got = Config {
                    leader: resp.node_id as usize,
                    joint: resp.joint,
                    ..Config::default()
                };
                for m in &resp.members {
                    let id = m.id as usize;
                    match m.suffrage.as_str() {
                        "voter" => got.voters.insert(id),
                        "outgoing voter" => got.outgoing.insert(id),
                        _ => got.learners.insert(id),
                    };
                }
                if let Some(why) = mismatch(action, &got) {
                    self.violations.push(format!(
                        "membership change `{what}` was acknowledged, but the configuration the leader answered with ({}) {why}",
                        got.describe()
                    ));
                }
                self.record(
                    what,
                    Outcome::Ok,
                    format!("now {}{note}", got.describe()),
                    t0,
                );
                Outcome::Ok
            }
            Err(e) => {
                let o = classify(&e);
                self.record(what, o, format!("{e}{note}"), t0);
                o
            }
        }
    }

    async fn retire(&mut self, ids: &[usize]) {
        for &id in ids {
            let kill = self.rng.below(2) == 0;
            let _ = self.ask(|reply| Req::Retire { id, kill, reply }).await;
        }
    }

    /// Carries out one action.
    async fn run(&mut self, a: &Action, cfg: &Config) {
        let t0 = Instant::now();
        let what = a.describe();
        let eps: Vec<String> = cfg
            .members()
            .into_iter()
            .filter_map(|i| self.ctx.addrs.get(i.wrapping_sub(1)))
            .map(|(_, a)| a.clone())
            .collect();
        let peers = self.ctx.peers.clone();
        let peer = |id: usize| peers.get(id.wrapping_sub(1)).cloned().unwrap_or_default();
        match a {
            Action::Join { id, promote } => {
                let id = *id;
                if let Some(Err(e)) = self.ask(|reply| Req::Join { id, reply }).await {
                    self.record(&what, Outcome::Failed, format!("start failed: {e}"), t0);
                    return;
                }
                if let Err(e) = self.wait_admitted(id, Duration::from_secs(15)).await {
                    self.record(&what, Outcome::Unknown, e, t0);
                    return;
                }
                if !promote {
                    self.record(&what, Outcome::Ok, "admitted as a learner".into(), t0);
                    return;
                }
                let changes = vec![change(ChangeKind::Promote, id, "")];
                self.change(&what, a, changes, &[], eps, t0).await;
            }
            Action::AddVoter { id } => {
                let changes = vec![change(ChangeKind::AddVoter, *id, &peer(*id))];
                self.change(&what, a, changes, &[*id], eps, t0).await;
            }
            Action::Promote { id } => {
                let changes = vec![change(ChangeKind::Promote, *id, "")];
                self.change(&what, a, changes, &[], eps, t0).await;
            }
            Action::Demote { id } => {
                let changes = vec![change(ChangeKind::Demote, *id, "")];
                self.change(&what, a, changes, &[], eps, t0).await;
            }
            Action::Remove { id } => {
                let changes = vec![change(ChangeKind::Remove, *id, "")];
                if self.change(&what, a, changes, &[], eps, t0).await == Outcome::Ok {
                    self.retire(&[*id]).await;
                }
            }
            Action::Replace {
                promote,
                add,
                remove,
            } => {
                let mut changes: Vec<MemberChange> = promote
                    .iter()
                    .map(|&p| change(ChangeKind::Promote, p, ""))
                    .collect();
                changes.extend(
                    add.iter()
                        .map(|&s| change(ChangeKind::AddVoter, s, &peer(s))),
                );
                changes.extend(remove.iter().map(|&r| change(ChangeKind::Remove, r, "")));
                if self.change(&what, a, changes, add, eps, t0).await == Outcome::Ok {
                    self.retire(remove).await;
                }
            }
        }
    }
}

/// Why a configuration answered for an acknowledged change does not
/// reflect it, if it does not.
fn mismatch(a: &Action, got: &Config) -> Option<String> {
    let want = a.apply(&Config::default());
    if got.joint {
        return Some("is still joint".into());
    }
    for v in &want.voters {
        if !got.voters.contains(v) {
            return Some(format!("does not have {v} as a voter"));
        }
    }
    for l in &want.learners {
        if !got.learners.contains(l) {
            return Some(format!("does not have {l} as a learner"));
        }
    }
    let gone: Vec<usize> = match a {
        Action::Remove { id } => vec![*id],
        Action::Replace { remove, .. } => remove.clone(),
        _ => Vec::new(),
    };
    for g in gone {
        if got.members().contains(&g) {
            return Some(format!("still has {g}"));
        }
    }
    None
}

/// The change task: changes back to back until `until` (at least one).
async fn changes(
    ctx: Ctx,
    tx: mpsc::Sender<Req>,
    seed: u64,
    until: Instant,
) -> (Vec<Record>, Violations) {
    let mut t = Task {
        ctx,
        tx,
        rng: Rng::new(seed),
        records: Vec::new(),
        violations: Vec::new(),
    };
    let started = Instant::now();
    loop {
        let t0 = Instant::now();
        let cfg = match leader_config(&t.ctx.addrs).await {
            Some(c) if !c.joint => c,
            other => {
                if Instant::now() >= until
                    && (!t.records.is_empty() || t0 > until + Duration::from_secs(10))
                {
                    if t.records.is_empty() {
                        let why = other
                            .map(|c| format!("the configuration stayed joint: {}", c.describe()))
                            .unwrap_or_else(|| "no leader answered".into());
                        t.record("(no change)", Outcome::Failed, why, started);
                    }
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let spares = t
            .ask(|reply| Req::Spares { reply })
            .await
            .unwrap_or_default();
        let Some(a) = choose(&cfg, &spares, &t.ctx.bounds, &mut t.rng) else {
            t.record(
                "(no change)",
                Outcome::Failed,
                format!("none fits the bounds from {}", cfg.describe()),
                t0,
            );
            break;
        };
        t.run(&a, &cfg).await;
        if Instant::now() >= until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    (t.records, t.violations)
}

/// What a membership phase did.
pub struct PhaseOutcome {
    pub description: String,
    pub records: Vec<Record>,
    pub violations: Violations,
    /// Notes for the run's summary (nodes that exited, ...).
    pub notes: Vec<String>,
}

/// Runs a membership phase: changes until `hold` has passed, maybe with a
/// companion fault from `companions` injected in the first half of the
/// hold and undone at its end.
pub async fn phase(
    cl: &mut Cluster,
    net: &Net,
    sh: &Arc<Shared>,
    rng: &mut Rng,
    ctx: Ctx,
    hold: Duration,
    companions: &[Kind],
) -> Result<PhaseOutcome, Error> {
    let t0 = Instant::now();
    let hold_end = tokio::time::Instant::from_std(t0 + hold);
    let companion = if !companions.is_empty() && rng.below(2) == 0 {
        let k = companions[rng.below(companions.len() as u64) as usize];
        let at = Duration::from_millis(rng.below((hold.as_millis() as u64 / 2).max(1)));
        Some((k, tokio::time::Instant::from_std(t0 + at)))
    } else {
        None
    };
    let (tx, mut rx) = mpsc::channel(4);
    let seed = rng.next_u64();
    let mut task = tokio::spawn(changes(ctx.clone(), tx, seed, t0 + hold));
    let mut injected: Option<(Kind, Undo, String)> = None;
    let mut companion_done = companion.is_none();
    let mut held = false;
    let mut violations = Vec::new();
    let mut notes = Vec::new();
    let hard_end = tokio::time::Instant::from_std(t0 + hold + Duration::from_secs(60));
    let result = loop {
        tokio::select! {
            Some(req) = rx.recv() => serve(req, cl, net, sh),
            _ = tokio::time::sleep_until(companion.map(|c| c.1).unwrap_or(hold_end)), if !companion_done => {
                companion_done = true;
                if let Some((k, _)) = companion {
                    let (u, d) = nemesis::inject(k, cl, net, rng).await?;
                    log(&ctx, &format!("  with {}: {d}", k.name()));
                    injected = Some((k, u, d));
                }
            }
            _ = tokio::time::sleep_until(hold_end), if !held && companion_done => {
                held = true;
                crate::check_exits(cl, net, "membership", &mut violations, &mut notes)?;
                if let Some((_, u, _)) = &injected {
                    nemesis::undo(u, cl, net)?;
                }
            }
            r = &mut task, if held => break r.ok(),
            _ = tokio::time::sleep_until(hard_end), if held => {
                task.abort();
                notes.push("a membership change did not return within 60 s of the hold's end; abandoned".into());
                break None;
            }
        }
    };
    // Requests the task sent before it ended.
    while let Ok(req) = rx.try_recv() {
        serve(req, cl, net, sh);
    }
    let (records, v) = result.unwrap_or_default();
    violations.extend(v);
    let mut description = records
        .iter()
        .map(|r| format!("{}: {:?}", r.action, r.outcome))
        .collect::<Vec<_>>()
        .join("; ");
    if let Some((k, _, d)) = &injected {
        let _ = write!(description, "; with {}: {d}", k.name());
    }
    Ok(PhaseOutcome {
        description,
        records,
        violations,
        notes,
    })
}

/// Brings the runner in line with the committed configuration: stops
/// running members that are not in it (they become spares), removes spare
/// slots that are in it, starts members that are down. Returns the
/// configuration and what was done.
pub async fn reconcile(
    cl: &mut Cluster,
    net: &Net,
    sh: &Shared,
    addrs: &[(usize, String)],
    within: Duration,
    change_timeout: Duration,
) -> Result<(Config, Vec<String>), String> {
    let mut notes = Vec::new();
    let deadline = Instant::now() + within;
    for _ in 0..4 {
        let left = deadline.saturating_duration_since(Instant::now());
        let cfg = committed_config(addrs, left.max(Duration::from_secs(1))).await?;
        let members = cfg.members();
        let stray: Vec<usize> = members
            .iter()
            .copied()
            .filter(|&id| id == 0 || id > cl.len() || cl.role(id) == Role::Spare)
            .collect();
        if !stray.is_empty() {
            // Admitted after the runner gave up on them (their process is
            // gone, their directory will be wiped): take them out.
            let eps: Vec<String> = members
                .iter()
                .filter(|i| !stray.contains(i))
                .map(|&i| net.client_addr(i))
                .collect();
            let changes = stray
                .iter()
                .map(|&id| change(ChangeKind::Remove, id, ""))
                .collect();
            let r = match Client::new(ClientOptions {
                endpoints: eps,
                timeout: Duration::from_secs(5),
                connect_timeout: Duration::from_millis(500),
                ..ClientOptions::default()
            }) {
                Ok(c) => c.change_members(changes, change_timeout, false).await,
                Err(e) => Err(e),
            };
            notes.push(format!(
                "nodes {stray:?} are in the configuration but not running as members: removed them: {}",
                match &r {
                    Ok(_) => "ok".to_string(),
                    Err(e) => e.to_string(),
                }
            ));
            continue;
        }
        for id in cl.member_ids() {
            if !members.contains(&id) {
                let kill = id % 2 == 0;
                cl.retire(id, kill);
                notes.push(format!("node {id} is not in the configuration: stopped it"));
            }
        }
        for &id in &members {
            cl.nodes[id - 1].confirmed = true;
            if !cl.is_running(id) {
                cl.start(net, id).map_err(|e| e.to_string())?;
                notes.push(format!("member {id} was down: started it"));
            }
        }
        cl.voters = cfg.voters.iter().copied().collect();
        sh.set_endpoints(member_endpoints(cl, net));
        return Ok((cfg, notes));
    }
    Err(format!(
        "the configuration kept changing while being reconciled ({})",
        notes.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(voters: &[usize], learners: &[usize], leader: usize) -> Config {
        Config {
            leader,
            term: 1,
            voters: voters.iter().copied().collect(),
            learners: learners.iter().copied().collect(),
            ..Config::default()
        }
    }

    #[test]
    fn every_chosen_change_keeps_the_voters_within_bounds_and_some_old_voter() {
        let b = Bounds::for_cluster(3, 5);
        let states = [
            (cfg(&[1, 2, 3], &[], 1), vec![4, 5]),
            (cfg(&[1, 2, 3], &[4], 2), vec![5]),
            (cfg(&[1, 2, 3], &[4, 5], 3), vec![]),
            (cfg(&[1, 2, 3, 4], &[], 4), vec![5]),
            (cfg(&[1, 2, 3, 4, 5], &[], 5), vec![]),
            (cfg(&[3, 4, 5], &[], 4), vec![1, 2]),
            (cfg(&[2, 4, 5, 1], &[3], 1), vec![]),
        ];
        let mut seen = std::collections::HashSet::new();
        for (c, spares) in &states {
            for seed in 0..400 {
                let mut rng = Rng::new(seed);
                let Some(a) = choose(c, spares, &b, &mut rng) else {
                    continue;
                };
                seen.insert(std::mem::discriminant(&a));
                let after = a.apply(c);
                assert!(
                    (3..=5).contains(&after.voters.len()),
                    "{a:?} from {c:?} leaves {after:?}"
                );
                assert!(after.learners.len() <= 2, "{a:?} from {c:?}");
                assert!(
                    after.voters.iter().any(|v| c.voters.contains(v)),
                    "{a:?} replaces every voter of {c:?}"
                );
                // Only spares join; only members leave.
                match &a {
                    Action::Join { id, .. } | Action::AddVoter { id } => {
                        assert!(spares.contains(id), "{a:?}")
                    }
                    Action::Replace {
                        promote,
                        add,
                        remove,
                    } => {
                        assert_eq!(promote.len() + add.len(), remove.len(), "{a:?}");
                        assert!(add.iter().all(|s| spares.contains(s)), "{a:?}");
                        assert!(promote.iter().all(|l| c.learners.contains(l)), "{a:?}");
                        assert!(remove.iter().all(|v| c.voters.contains(v)), "{a:?}");
                    }
                    Action::Promote { id } => assert!(c.learners.contains(id)),
                    Action::Demote { id } => assert!(c.voters.contains(id)),
                    Action::Remove { id } => assert!(c.members().contains(id)),
                }
            }
        }
        assert_eq!(seen.len(), 6, "every kind of change is chosen sometimes");
    }

    #[test]
    fn the_leader_is_sometimes_removed_and_a_joint_configuration_is_left_alone() {
        let b = Bounds::for_cluster(3, 5);
        let c = cfg(&[1, 2, 3, 4, 5], &[], 2);
        let removed_leader = (0..300).any(|seed| {
            let mut rng = Rng::new(seed);
            matches!(
                choose(&c, &[], &b, &mut rng),
                Some(Action::Remove { id: 2 })
            )
        });
        assert!(removed_leader);
        let mut joint = c.clone();
        joint.joint = true;
        assert_eq!(choose(&joint, &[6], &b, &mut Rng::new(1)), None);
    }

    #[test]
    fn errors_of_a_change_are_read_as_failed_or_unknown() {
        let rpc = |code| ClientError::Rpc {
            code,
            message: String::new(),
        };
        assert_eq!(classify(&rpc(Code::AlreadyExists)), Outcome::Failed);
        assert_eq!(classify(&rpc(Code::InvalidArgument)), Outcome::Failed);
        assert_eq!(classify(&rpc(Code::DeadlineExceeded)), Outcome::Unknown);
        assert_eq!(
            classify(&ClientError::Ambiguous(String::new())),
            Outcome::Unknown
        );
    }

    #[test]
    fn an_acknowledged_change_must_show_in_the_answer() {
        let a = Action::Replace {
            promote: vec![4],
            add: vec![5],
            remove: vec![1, 2],
        };
        assert_eq!(mismatch(&a, &cfg(&[3, 4, 5], &[], 3)), None);
        assert!(mismatch(&a, &cfg(&[2, 3, 4, 5], &[], 3)).is_some());
        assert!(mismatch(&a, &cfg(&[1, 2, 3], &[4, 5], 3)).is_some());
        let d = Action::Demote { id: 3 };
        assert_eq!(mismatch(&d, &cfg(&[1, 2], &[3], 1)), None);
        assert!(mismatch(&d, &cfg(&[1, 2, 3], &[], 1)).is_some());
    }
}
