//! `keel members`: the configuration of the default log, and changes to it
//! while the cluster runs.

use std::io::Write;
use std::time::Duration;

use keel_client::{MemberChange, MembersResponse, member_change::Kind};
use serde_json::json;

use super::output::{self, Output};
use super::{CliResult, ClientOpts, err, parse_duration, stdout};

#[derive(clap::Args, Debug)]
pub struct MembersArgs {
    #[command(subcommand)]
    pub cmd: MembersCmd,
}

#[derive(clap::Subcommand, Debug)]
pub enum MembersCmd {
    /// The configuration: every member, voter or learner, its addresses,
    /// whether the configuration is joint, the preferred leader.
    List(ListArgs),
    /// Adds a node. As a voter (the default) it joins as a learner, catches
    /// up, then is promoted; refused with how far behind it is if it does
    /// not catch up in time. Start the node with `keel server --id ID
    /// --join ENDPOINTS` (before or after).
    Add(AddArgs),
    /// Makes learners voters once they have caught up (one joint change).
    Promote(IdsArgs),
    /// Makes voters learners.
    Demote(IdsArgs),
    /// Removes members. Removing the leader works: it leads until the new
    /// configuration commits, then steps down. A removed node is refused by
    /// the cluster if it comes back with its old data.
    Remove(IdsArgs),
    /// Several changes in one joint change, e.g. replacing a majority:
    /// `--promote 4 --promote 5 --remove 1 --remove 2`.
    Change(ChangeArgs),
    /// Sets the default log's preferred leader (`none` clears it): the
    /// leader hands over to it whenever it is caught up and responsive.
    Prefer(PreferArgs),
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub client: ClientOpts,
}

/// How long a change may take (learners catching up included), and
/// whether to wait for them.
#[derive(clap::Args, Debug, Clone)]
pub struct ChangeOpts {
    /// How long the change may take, learners catching up included.
    #[arg(long = "change-timeout", default_value = "60s", value_parser = parse_duration)]
    pub change_timeout: Duration,
    /// Refuse at once when a learner to promote is behind, instead of
    /// waiting for it to catch up.
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(clap::Args, Debug)]
pub struct AddArgs {
    /// The new node's id.
    pub id: u64,
    /// Its peer address (`HOST:PORT`, its --peer-addr).
    pub peer_addr: String,
    /// Add it as a learner only (it receives the log, never votes).
    #[arg(long)]
    pub learner: bool,
    #[command(flatten)]
    pub change: ChangeOpts,
    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(clap::Args, Debug)]
pub struct IdsArgs {
    /// Node ids.
    #[arg(required = true)]
    pub ids: Vec<u64>,
    #[command(flatten)]
    pub change: ChangeOpts,
    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(clap::Args, Debug)]
pub struct ChangeArgs {
    /// Add a learner: `ID=PEER_ADDR`.
    #[arg(long, value_name = "ID=HOST:PORT")]
    pub add_learner: Vec<String>,
    /// Add a voter (learner first, then promoted): `ID=PEER_ADDR`.
    #[arg(long, value_name = "ID=HOST:PORT")]
    pub add_voter: Vec<String>,
    /// Promote a learner.
    #[arg(long, value_name = "ID")]
    pub promote: Vec<u64>,
    /// Demote a voter.
    #[arg(long, value_name = "ID")]
    pub demote: Vec<u64>,
    /// Remove a member.
    #[arg(long, value_name = "ID")]
    pub remove: Vec<u64>,
    #[command(flatten)]
    pub change: ChangeOpts,
    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(clap::Args, Debug)]
pub struct PreferArgs {
    /// The node id, or `none`.
    pub id: String,
    #[command(flatten)]
    pub client: ClientOpts,
}

pub async fn run(a: MembersArgs) -> CliResult {
    match a.cmd {
        MembersCmd::List(a) => {
            let r = a
                .client
                .client()
                .map_err(err)?
                .members()
                .await
                .map_err(err)?;
            print(&r, a.client.output)
        }
        MembersCmd::Add(a) => {
            let kind = if a.learner {
                Kind::AddLearner
            } else {
                Kind::AddVoter
            };
            let changes = vec![change(kind, a.id, a.peer_addr)];
            apply(&a.client, &a.change, changes).await
        }
        MembersCmd::Promote(a) => apply(&a.client, &a.change, ids(Kind::Promote, &a.ids)).await,
        MembersCmd::Demote(a) => apply(&a.client, &a.change, ids(Kind::Demote, &a.ids)).await,
        MembersCmd::Remove(a) => apply(&a.client, &a.change, ids(Kind::Remove, &a.ids)).await,
        MembersCmd::Change(a) => {
            let mut changes = Vec::new();
            for (kind, list) in [
                (Kind::AddLearner, &a.add_learner),
                (Kind::AddVoter, &a.add_voter),
            ] {
                for s in list {
                    let (id, addr) = s
                        .split_once('=')
                        .ok_or_else(|| format!("`{s}` is not ID=HOST:PORT"))?;
                    let id: u64 = id
                        .trim()
                        .parse()
                        .map_err(|_| format!("`{id}` in `{s}` is not a node id"))?;
                    changes.push(change(kind, id, addr.trim().to_string()));
                }
            }
            changes.extend(ids(Kind::Promote, &a.promote));
            changes.extend(ids(Kind::Demote, &a.demote));
            changes.extend(ids(Kind::Remove, &a.remove));
            if changes.is_empty() {
                return Err(
                    "no change given: use --add-learner, --add-voter, --promote, --demote or --remove"
                        .into(),
                );
            }
            apply(&a.client, &a.change, changes).await
        }
        MembersCmd::Prefer(a) => {
            let id = match a.id.trim() {
                "none" | "0" => None,
                s => Some(
                    s.parse::<u64>()
                        .map_err(|_| format!("`{s}` is not a node id (or `none`)"))?,
                ),
            };
            let r = a
                .client
                .client()
                .map_err(err)?
                .set_preferred_leader(id)
                .await
                .map_err(err)?;
            print(&r, a.client.output)
        }
    }
}

fn change(kind: Kind, id: u64, peer_addr: String) -> MemberChange {
    MemberChange {
        kind: kind as i32,
        id,
        peer_addr,
    }
}

fn ids(kind: Kind, ids: &[u64]) -> Vec<MemberChange> {
    ids.iter()
        .map(|id| change(kind, *id, String::new()))
        .collect()
}

async fn apply(c: &ClientOpts, o: &ChangeOpts, changes: Vec<MemberChange>) -> CliResult {
    let client = c.client().map_err(err)?;
    let r = client
        .change_members(changes, o.change_timeout, o.no_wait)
        .await
        .map_err(err)?;
    print(&r, c.output)
}

fn print(r: &MembersResponse, mode: Output) -> CliResult {
    let mut out = stdout();
    match mode {
        Output::Json => {
            let members: Vec<_> = r
                .members
                .iter()
                .map(|m| {
                    json!({
                        "id": m.id, "suffrage": m.suffrage, "peer_addr": m.peer_addr,
                        "client_addr": m.client_addr, "incarnation": m.incarnation,
                        "role": m.role, "match_index": m.match_index, "lag": m.lag,
                        "reachable": m.reachable,
                    })
                })
                .collect();
            let v = json!({
                "members": members, "joint": r.joint,
                "preferred_leader": (r.preferred_leader != 0).then_some(r.preferred_leader),
                "leader": (r.leader_id != 0).then_some(r.leader_id),
            });
            output::line(&mut out, &v.to_string()).map_err(err)?;
        }
        Output::Text => {
            let pref = match r.preferred_leader {
                0 => "none".to_string(),
                p => p.to_string(),
            };
            let leader = match r.leader_id {
                0 => "none known".to_string(),
                l => l.to_string(),
            };
            output::line(
                &mut out,
                &format!(
                    "configuration{}; leader {leader}; preferred leader {pref}",
                    if r.joint {
                        " (joint: a voter change is half done)"
                    } else {
                        ""
                    }
                ),
            )
            .map_err(err)?;
            output::line(
                &mut out,
                &format!(
                    "{:<4} {:<15} {:<22} {:<22} {:<10} {:>8}",
                    "ID", "MEMBER", "PEER", "CLIENT", "ROLE", "LAG"
                ),
            )
            .map_err(err)?;
            for m in &r.members {
                let lag = if r.node_id == r.leader_id {
                    m.lag.to_string()
                } else {
                    "-".into()
                };
                output::line(
                    &mut out,
                    &format!(
                        "{:<4} {:<15} {:<22} {:<22} {:<10} {:>8}",
                        m.id,
                        m.suffrage,
                        m.peer_addr,
                        if m.client_addr.is_empty() {
                            "?"
                        } else {
                            &m.client_addr
                        },
                        if m.role.is_empty() { "-" } else { &m.role },
                        lag
                    ),
                )
                .map_err(err)?;
            }
        }
    }
    out.flush().map_err(err)
}
