//! The faults: what each nemesis does when injected, and how it is undone.
//!
//! Every fault acts on the nodes the runner takes for members at the time
//! (`Cluster::member_ids`; the founding nodes until the membership nemesis
//! changes the configuration): partitions split them, kill-minority kills
//! a minority of the voters, kill-all kills every member. The membership
//! nemesis itself lives in `membership.rs`.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::Error;
use crate::cluster::{Cluster, Role, node_client};
use crate::net::{Cut, Net};
use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    PartitionHalves,
    PartitionLeader,
    PartitionRing,
    PartitionBridge,
    PartitionOneWay,
    KillOne,
    KillMinority,
    KillAll,
    PauseLeader,
    PauseFollower,
    LoseUnsyncedMinority,
    LoseUnsyncedAll,
    Membership,
}

impl Kind {
    pub const ALL: [Kind; 13] = [
        Kind::PartitionHalves,
        Kind::KillOne,
        Kind::PauseLeader,
        Kind::PartitionLeader,
        Kind::LoseUnsyncedMinority,
        Kind::PartitionRing,
        Kind::Membership,
        Kind::KillMinority,
        Kind::PauseFollower,
        Kind::PartitionBridge,
        Kind::KillAll,
        Kind::PartitionOneWay,
        Kind::LoseUnsyncedAll,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::PartitionHalves => "partition-halves",
            Kind::PartitionLeader => "partition-leader",
            Kind::PartitionRing => "partition-ring",
            Kind::PartitionBridge => "partition-bridge",
            Kind::PartitionOneWay => "partition-oneway",
            Kind::KillOne => "kill-one",
            Kind::KillMinority => "kill-minority",
            Kind::KillAll => "kill-all",
            Kind::PauseLeader => "pause-leader",
            Kind::PauseFollower => "pause-follower",
            Kind::LoseUnsyncedMinority => "lose-unsynced-minority",
            Kind::LoseUnsyncedAll => "lose-unsynced-all",
            Kind::Membership => "membership",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }

    pub fn needs_partitions(self) -> bool {
        matches!(
            self,
            Kind::PartitionHalves
                | Kind::PartitionLeader
                | Kind::PartitionRing
                | Kind::PartitionBridge
                | Kind::PartitionOneWay
        )
    }
}

/// How to undo an injected fault.
pub enum Undo {
    Heal,
    Restart(Vec<usize>),
    Resume(Vec<usize>),
}

/// The leader as the running members see it (the answer with the highest
/// term), if any answers within a second.
pub async fn find_leader(cl: &Cluster, net: &Net) -> Option<usize> {
    let mut best: Option<(u64, usize)> = None;
    for id in cl.member_ids() {
        if !cl.is_running(id) || cl.is_paused(id) {
            continue;
        }
        let Ok(c) = node_client(&net.client_addr(id), Duration::from_millis(700)) else {
            continue;
        };
        if let Ok(Ok(st)) =
            tokio::time::timeout(Duration::from_secs(1), c.status_of(&net.client_addr(id))).await
            && st.leader_id != 0
            && best.is_none_or(|(t, _)| st.term > t)
        {
            best = Some((st.term, st.leader_id as usize));
        }
    }
    best.map(|(_, l)| l)
}

fn both_ways(a: &[usize], b: &[usize], cuts: &mut BTreeSet<Cut>) {
    for &x in a {
        for &y in b {
            cuts.insert((x, y));
            cuts.insert((y, x));
        }
    }
}

fn shuffled(n: usize, rng: &mut Rng) -> Vec<usize> {
    let mut v: Vec<usize> = (1..=n).collect();
    rng.shuffle(&mut v);
    v
}

/// The cuts of a partition nemesis, and a description.
pub fn partition(
    kind: Kind,
    n: usize,
    leader: Option<usize>,
    rng: &mut Rng,
) -> (BTreeSet<Cut>, String) {
    let mut cuts = BTreeSet::new();
    let order = shuffled(n, rng);
    let desc = match kind {
        Kind::PartitionHalves => {
            let (a, b) = order.split_at(n / 2);
            both_ways(a, b, &mut cuts);
            format!("{a:?} | {b:?}")
        }
        Kind::PartitionLeader => {
            let l = leader.unwrap_or(order[0]);
            let rest: Vec<usize> = (1..=n).filter(|&i| i != l).collect();
            both_ways(&[l], &rest, &mut cuts);
            format!(
                "leader {l} isolated{}",
                if leader.is_none() {
                    " (no leader known: a random node)"
                } else {
                    ""
                }
            )
        }
        Kind::PartitionRing => {
            // Node order[i] hears its ring neighbours only. With 3 nodes a
            // symmetric ring is no cut at all, so the ring is one-way there:
            // each node hears only its predecessor.
            if n <= 3 {
                for i in 0..n {
                    let a = order[i];
                    let b = order[(i + 1) % n];
                    cuts.insert((b, a));
                }
                format!("one-way ring {order:?}")
            } else {
                let majority = n / 2 + 1;
                let k = (majority - 1).div_ceil(2);
                for i in 0..n {
                    for j in 0..n {
                        let d = (i + n - j) % n;
                        let d = d.min(n - d);
                        if i != j && d > k {
                            cuts.insert((order[i], order[j]));
                        }
                    }
                }
                format!("ring {order:?}, each node hears {k} on each side")
            }
        }
        Kind::PartitionBridge => {
            let bridge = order[0];
            let rest = &order[1..];
            let (a, b) = rest.split_at(rest.len() / 2);
            both_ways(a, b, &mut cuts);
            format!("{a:?} | {b:?}, bridged by {bridge}")
        }
        Kind::PartitionOneWay => {
            let x = match leader {
                Some(l) if rng.below(2) == 0 => l,
                _ => order[0],
            };
            for y in (1..=n).filter(|&y| y != x) {
                cuts.insert((x, y));
            }
            format!("node {x} cannot send (it still hears the others)")
        }
        _ => String::new(),
    };
    (cuts, desc)
}

/// A partition of the nodes `ids` (the current members): the shapes of
/// [`partition`] over positions `1..=ids.len()`, mapped to the ids.
pub fn partition_of(
    kind: Kind,
    ids: &[usize],
    leader: Option<usize>,
    rng: &mut Rng,
) -> (BTreeSet<Cut>, String) {
    let pos = |id: usize| ids.iter().position(|&x| x == id).map(|p| p + 1);
    let (cuts, desc) = partition(kind, ids.len(), leader.and_then(pos), rng);
    if ids.iter().enumerate().all(|(i, &id)| id == i + 1) {
        return (cuts, desc);
    }
    let cuts = cuts
        .into_iter()
        .map(|(a, b)| (ids[a - 1], ids[b - 1]))
        .collect();
    (cuts, format!("{desc} (positions in members {ids:?})"))
}

/// Injects a fault on the current members; returns how to undo it and
/// what was done.
pub async fn inject(
    kind: Kind,
    cl: &mut Cluster,
    net: &Net,
    rng: &mut Rng,
) -> Result<(Undo, String), Error> {
    let ids = cl.member_ids();
    let n = ids.len();
    if n == 0 {
        return Err(Error::Fault("no members to inject a fault on".into()));
    }
    let leader = find_leader(cl, net).await;
    // A minority of the voters (as of the last configuration read), so a
    // quorum survives; learners are never counted.
    let voters: Vec<usize> = {
        let v: Vec<usize> = cl
            .voters
            .iter()
            .copied()
            .filter(|v| ids.contains(v))
            .collect();
        if v.is_empty() { ids.clone() } else { v }
    };
    let minority = (voters.len() - 1) / 2;
    let random = |rng: &mut Rng, from: &[usize]| from[rng.below(from.len() as u64) as usize];
    let pick_one = |rng: &mut Rng| match leader {
        Some(l) if rng.below(2) == 0 => l,
        _ => random(rng, &ids),
    };
    match kind {
        k if k.needs_partitions() => {
            let (cuts, desc) = partition_of(k, &ids, leader, rng);
            net.apply(&cuts)?;
            Ok((Undo::Heal, desc))
        }
        Kind::KillOne => {
            let x = pick_one(rng);
            cl.kill(x);
            Ok((Undo::Restart(vec![x]), format!("kill -9 node {x}")))
        }
        Kind::KillMinority | Kind::LoseUnsyncedMinority => {
            let mut order = voters.clone();
            rng.shuffle(&mut order);
            // Half the time the leader is among the victims.
            if let Some(l) = leader
                && order.contains(&l)
                && rng.below(2) == 0
            {
                order.retain(|&i| i != l);
                order.insert(0, l);
            }
            let victims: Vec<usize> = order[..minority].to_vec();
            kill_and_maybe_cut(cl, &victims, kind == Kind::LoseUnsyncedMinority, rng).await
        }
        Kind::KillAll | Kind::LoseUnsyncedAll => {
            kill_and_maybe_cut(cl, &ids, kind == Kind::LoseUnsyncedAll, rng).await
        }
        Kind::PauseLeader => {
            let x = leader.unwrap_or_else(|| random(rng, &ids));
            cl.pause(x);
            Ok((Undo::Resume(vec![x]), format!("SIGSTOP leader {x}")))
        }
        Kind::PauseFollower => {
            let mut followers: Vec<usize> =
                ids.iter().copied().filter(|&i| Some(i) != leader).collect();
            if followers.is_empty() {
                followers = ids.clone();
            }
            let x = random(rng, &followers);
            cl.pause(x);
            Ok((Undo::Resume(vec![x]), format!("SIGSTOP follower {x}")))
        }
        _ => Err(Error::Fault(format!("nemesis {} not handled", kind.name()))),
    }
}

async fn kill_and_maybe_cut(
    cl: &mut Cluster,
    victims: &[usize],
    lose: bool,
    rng: &mut Rng,
) -> Result<(Undo, String), Error> {
    if lose {
        // Aim for a moment when something is written but not yet synced
        // (between group commits there is nothing to lose): freeze the
        // victims, look, and let them run a little more if nothing is in
        // flight. A frozen process's page cache is what kill -9 leaves.
        for _ in 0..100 {
            for &v in victims {
                cl.pause(v);
            }
            if victims.iter().any(|&v| cl.unsynced_bytes(v) > 0) {
                break;
            }
            for &v in victims {
                cl.resume(v);
            }
            tokio::time::sleep(Duration::from_micros(200 + rng.below(3000))).await;
        }
    }
    // Kill them all first, so that "all at once" is as close to a power
    // loss as processes allow.
    for &v in victims {
        cl.kill(v);
    }
    let mut desc = format!("kill -9 nodes {victims:?}");
    if lose {
        let mut bytes = 0;
        for &v in victims {
            bytes += cl
                .lose_unsynced(v)?
                .iter()
                .map(|c| c.data_bytes)
                .sum::<u64>();
        }
        desc.push_str(&format!(", cut {bytes} bytes of un-fsynced data"));
    }
    Ok((Undo::Restart(victims.to_vec()), desc))
}

/// Undoes a fault. A killed node that meanwhile left the configuration
/// (the membership nemesis retired it) stays down.
pub fn undo(u: &Undo, cl: &mut Cluster, net: &Net) -> Result<(), Error> {
    match u {
        Undo::Heal => net.apply(&BTreeSet::new()),
        Undo::Restart(ids) => {
            for &i in ids {
                if cl.role(i) == Role::Member {
                    cl.start(net, i)?;
                }
            }
            Ok(())
        }
        Undo::Resume(ids) => {
            for &i in ids {
                cl.resume(i);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Who hears whom, given directed cuts.
    fn hears(n: usize, cuts: &BTreeSet<Cut>, who: usize) -> BTreeSet<usize> {
        (1..=n)
            .filter(|&f| f == who || !cuts.contains(&(f, who)))
            .collect()
    }

    #[test]
    fn the_majorities_ring_gives_each_node_a_different_majority() {
        for n in [3usize, 5, 7] {
            let mut rng = Rng::new(n as u64);
            let (cuts, _) = partition(Kind::PartitionRing, n, None, &mut rng);
            let views: BTreeSet<BTreeSet<usize>> = (1..=n).map(|i| hears(n, &cuts, i)).collect();
            assert_eq!(views.len(), n, "two nodes see the same set (n = {n})");
            for v in &views {
                assert!(
                    v.len() > n / 2,
                    "a node hears only a minority (n = {n}): {v:?}"
                );
            }
        }
    }

    #[test]
    fn halves_and_bridge_cut_something_and_leave_a_majority() {
        for n in [3usize, 5] {
            for kind in [
                Kind::PartitionHalves,
                Kind::PartitionBridge,
                Kind::PartitionLeader,
            ] {
                let mut rng = Rng::new(7);
                let (cuts, _) = partition(kind, n, Some(1), &mut rng);
                assert!(!cuts.is_empty(), "{} cut nothing", kind.name());
                let best = (1..=n).map(|i| hears(n, &cuts, i).len()).max().unwrap();
                assert!(best > n / 2, "{} left no node with a majority", kind.name());
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.name()), Some(k));
        }
        assert_eq!(Kind::parse("nonsense"), None);
    }
}
