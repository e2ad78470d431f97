//! keel-chaos: fault tests with real `keel server` processes.
//!
//! The runner starts N servers (each in its own network namespace, or all
//! on loopback), drives concurrent clients that append unique values and
//! read, and runs a schedule of nemesis phases (partitions, kill -9, pauses,
//! crashes that lose un-fsynced writes, membership changes). Each phase: a
//! quiet second, the fault, a hold, the heal, then a probe append measures
//! how long the cluster takes to acknowledge appends again. At the end
//! everything is healed, the members of the final configuration converge,
//! their logs are read, and the checker (`checker`) judges the history
//! (`history`, written as JSON lines).
//!
//! Map: `net` (namespaces, bridge, nftables; loopback mode), `cluster`
//! (processes, slots, the lost-writes cut), `nemesis` (the faults),
//! `membership` (the membership nemesis and reconciling with the committed
//! configuration), `workload` (the clients), `history`, `checker`, `rng`.

pub mod checker;
pub mod cluster;
pub mod history;
pub mod membership;
pub mod nemesis;
pub mod net;
pub mod rng;
pub mod workload;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use checker::{NodeLog, Phase, Report};
use cluster::{Cluster, node_client};
use history::Outcome;
use nemesis::Kind;
use net::Net;
use workload::Shared;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The runner could not set up (network, binary, directories).
    #[error("{0}")]
    Setup(String),
    /// A fault could not be injected or undone.
    #[error("{0}")]
    Fault(String),
    /// The cluster never became available.
    #[error("{0}")]
    Cluster(String),
}

/// A deliberate server bug, for showing that the checker catches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// Segment fdatasyncs are skipped but reported done.
    SkipFsync,
    /// Raft acknowledgements and votes leave before they are persisted.
    AckBeforePersist,
    /// Old-term entries are committed by counting replicas.
    CommitOldTerm,
}

impl Bug {
    pub fn parse(s: &str) -> Option<Bug> {
        match s {
            "skip-fsync" => Some(Bug::SkipFsync),
            "ack-before-persist" => Some(Bug::AckBeforePersist),
            "commit-old-term" => Some(Bug::CommitOldTerm),
            _ => None,
        }
    }

    fn env(self) -> (&'static str, &'static str) {
        match self {
            Bug::SkipFsync => ("KEEL_FAULT_SKIP_FSYNC", "1"),
            Bug::AckBeforePersist => ("KEEL_FAULT_ACK_BEFORE_PERSIST", "1"),
            Bug::CommitOldTerm => ("KEEL_FAULT_COMMIT_OLD_TERM", "1"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub keel_bin: PathBuf,
    /// Founding members.
    pub nodes: usize,
    /// Slots beyond the founding members that the membership nemesis
    /// starts with `--join` (each with its own namespace and address).
    pub spare_nodes: usize,
    pub clients: usize,
    pub duration: Duration,
    /// Run the nemesis list this many times instead of until `duration`.
    pub rounds: Option<usize>,
    pub nemeses: Vec<Kind>,
    pub quiet: Duration,
    pub hold: Duration,
    pub recovery_bound: Duration,
    pub seed: u64,
    pub work_dir: PathBuf,
    pub network_faults: bool,
    pub bugs: Vec<Bug>,
    pub tick_ms: u64,
}

/// Everything a run produced.
pub struct Outcomes {
    pub report: Report,
    pub phases: Vec<Phase>,
    pub history_path: PathBuf,
    /// Every membership change the nemesis made, with its outcome.
    pub membership: Vec<membership::Record>,
    /// The configuration the final phase read and compared.
    pub final_config: Option<membership::Config>,
    /// Observations that are not violations (nodes the runner stopped or
    /// removed while reconciling, joins that gave up, ...).
    pub notes: Vec<String>,
}

impl Outcomes {
    /// A few lines about the membership changes and the final
    /// configuration, for the summary (empty without any).
    pub fn membership_summary(&self) -> String {
        let mut s = String::new();
        if !self.membership.is_empty() {
            let count = |o| {
                self.membership
                    .iter()
                    .filter(|r| r.outcome == o && !r.action.starts_with('('))
                    .count()
            };
            s.push_str(&format!(
                "membership changes: {} ok, {} failed, {} unknown\n",
                count(membership::Outcome::Ok),
                count(membership::Outcome::Failed),
                count(membership::Outcome::Unknown)
            ));
        }
        if let Some(c) = &self.final_config
            && (!self.membership.is_empty() || !c.learners.is_empty())
        {
            s.push_str(&format!(
                "final configuration (compared): {}\n",
                c.describe()
            ));
        }
        for n in &self.notes {
            s.push_str(&format!("note: {n}\n"));
        }
        s
    }
}

pub(crate) fn log(msg: &str, start: Instant) {
    eprintln!("[{:>7.1}s] {msg}", start.elapsed().as_secs_f64());
}

/// The last `n` lines of a file (a server log), joined by ` | `.
fn last_lines(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// Members whose process exited by itself: a confirmed member is
/// restarted and reported (a crash the nemesis did not cause); a joining
/// node that was never seen in a committed configuration (its join was
/// refused or gave up) becomes a spare again, noted.
pub(crate) fn check_exits(
    cl: &mut Cluster,
    net: &Net,
    during: &str,
    violations: &mut Vec<String>,
    notes: &mut Vec<String>,
) -> Result<(), Error> {
    for id in cl.member_ids() {
        let Some(st) = cl.exited(id) else { continue };
        if cl.nodes[id - 1].confirmed {
            violations.push(format!(
                "node {id} exited by itself during {during} ({st}); see {}",
                cl.log_path(id).display()
            ));
            cl.start(net, id)?;
        } else {
            notes.push(format!(
                "node {id} exited while joining during {during} ({st}): {}",
                last_lines(cl.log_path(id), 2)
            ));
            cl.retire(id, true);
        }
    }
    Ok(())
}

/// Appends a probe value until one is acknowledged or `bound` passes;
/// returns how long it took.
async fn probe(
    sh: &Arc<Shared>,
    endpoints: &[String],
    tag: &str,
    bound: Duration,
    ops: &mut Vec<history::Op>,
) -> Option<u64> {
    let t0 = Instant::now();
    let client = workload::client_for(endpoints).ok()?;
    let mut k = 0;
    while t0.elapsed() < bound {
        k += 1;
        let op = workload::append(sh, &client, "probe", format!("probe-{tag}-{k}")).await;
        let ok = op.outcome == Outcome::Ok;
        ops.push(op);
        if ok {
            return Some(t0.elapsed().as_millis() as u64);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Reads one node's whole committed log (stale read: served by that node).
async fn read_node_log(addr: &str) -> Result<Vec<(u64, String)>, String> {
    let c = node_client(addr, Duration::from_secs(10)).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    loop {
        let next = out.len() as u64;
        match c.read(next, u64::MAX, true).await {
            Ok(recs) if recs.is_empty() => return Ok(out),
            Ok(recs) => out.extend(
                recs.into_iter()
                    .map(|r| (r.offset, String::from_utf8_lossy(&r.data).into_owned())),
            ),
            Err(e) if e.code() == Some(keel_client::Code::OutOfRange) => return Ok(out),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Waits until every node of `ids` reports the same committed end offset;
/// returns whether they converged.
async fn converge(net: &Net, ids: &[usize], within: Duration) -> bool {
    let t0 = Instant::now();
    let n = ids.len();
    while t0.elapsed() < within {
        let mut ends = Vec::new();
        for &id in ids {
            let addr = net.client_addr(id);
            if let Ok(c) = node_client(&addr, Duration::from_secs(1))
                && let Ok(st) = c.status_of(&addr).await
            {
                ends.push(st.end_offset);
            }
        }
        if ends.len() == n && ends.iter().all(|&e| e == ends[0]) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// Runs the whole schedule and checks the history.
pub async fn run(opts: Options) -> Result<Outcomes, Error> {
    let start = Instant::now();
    if !opts.keel_bin.is_file() {
        return Err(Error::Setup(format!(
            "no keel binary at {}; build one with \
             `cargo build --release -p keel --features fault-injection` and pass --keel-bin",
            opts.keel_bin.display()
        )));
    }
    std::fs::create_dir_all(&opts.work_dir)
        .map_err(|e| Error::Setup(format!("cannot create {}: {e}", opts.work_dir.display())))?;
    for id in 1..=16 {
        let _ = std::fs::remove_dir_all(opts.work_dir.join(format!("n{id}")));
        let _ = std::fs::remove_file(opts.work_dir.join(format!("n{id}.log")));
    }
    let _ = std::fs::remove_file(opts.work_dir.join("membership.jsonl"));
    let slots = opts.nodes + opts.spare_nodes;
    // Declared before the cluster, so dropped after it: processes go
    // first, then the namespaces.
    let net = if opts.network_faults {
        Net::namespaces(slots)?
    } else {
        Net::loopback(slots)?
    };
    let env = opts
        .bugs
        .iter()
        .map(|b| b.env())
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    let mut cl = Cluster::new(
        &net,
        opts.nodes,
        &opts.keel_bin,
        &opts.work_dir,
        env,
        opts.tick_ms,
    )?;
    for id in 1..=opts.nodes {
        cl.start(&net, id)?;
    }
    let endpoints: Vec<String> = (1..=opts.nodes).map(|i| net.client_addr(i)).collect();
    log(
        &format!(
            "started {} nodes: {}{}",
            opts.nodes,
            endpoints.join(", "),
            if opts.spare_nodes > 0 {
                format!(
                    "; spare slots {:?} ({})",
                    (opts.nodes + 1..=slots).collect::<Vec<_>>(),
                    (opts.nodes + 1..=slots)
                        .map(|i| net.client_addr(i))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            } else {
                String::new()
            }
        ),
        start,
    );
    let all_addrs: Vec<(usize, String)> = (1..=slots).map(|i| (i, net.client_addr(i))).collect();
    let peer_addrs: Vec<String> = (1..=slots).map(|i| net.peer_addr(i)).collect();
    let bounds = membership::Bounds::for_cluster(opts.nodes, slots);
    let change_timeout = Duration::from_secs(12);

    let sh = Shared::new(endpoints.clone());
    let mut probe_ops = Vec::new();
    if probe(
        &sh,
        &endpoints,
        "start",
        Duration::from_secs(30),
        &mut probe_ops,
    )
    .await
    .is_none()
    {
        return Err(Error::Cluster(format!(
            "the cluster acknowledged no append within 30 s of starting; see the server logs {}",
            cl.log_path(1).display()
        )));
    }
    if !cl.has_sync_records() {
        return Err(Error::Setup(format!(
            "{} keeps no sync records, so crashes cannot lose un-fsynced writes: \
             it was built without the test-only feature; build it with \
             `cargo build --release -p keel --features fault-injection`",
            opts.keel_bin.display()
        )));
    }
    let mut phases = vec![Phase {
        nemesis: "startup".into(),
        description: "no fault".into(),
        start_us: 0,
        end_us: 0,
        recovery_ms: Some(0),
    }];
    let workers: Vec<_> = (0..opts.clients)
        .map(|w| tokio::spawn(workload::worker(sh.clone(), w, opts.seed)))
        .collect();

    let mut rng = rng::Rng::new(opts.seed);
    let mut extra = Vec::new();
    let mut notes = Vec::new();
    let mut records: Vec<membership::Record> = Vec::new();
    let companions: Vec<Kind> = {
        let mut c: Vec<Kind> = opts
            .nemeses
            .iter()
            .copied()
            .filter(|k| *k != Kind::Membership)
            .collect();
        c.sort();
        c.dedup();
        c
    };
    let mut i = 0usize;
    loop {
        let kind = opts.nemeses[i % opts.nemeses.len()];
        i += 1;
        tokio::time::sleep(opts.quiet).await;
        let now = sh.now_us();
        phases.last_mut().expect("startup phase exists").end_us = now;
        sh.phase.store(phases.len(), Ordering::Relaxed);
        phases.push(Phase {
            nemesis: kind.name().into(),
            description: String::new(),
            start_us: now,
            end_us: now,
            recovery_ms: None,
        });
        let desc = if kind == Kind::Membership {
            log(
                &format!(
                    "membership: changes for {:?}{}",
                    opts.hold,
                    if companions.is_empty() {
                        ""
                    } else {
                        " (half the time with another fault)"
                    }
                ),
                start,
            );
            let ctx = membership::Ctx {
                addrs: all_addrs.clone(),
                peers: peer_addrs.clone(),
                bounds,
                started: start,
                phase: phases.len() - 1,
                change_timeout,
            };
            let out = membership::phase(&mut cl, &net, &sh, &mut rng, ctx, opts.hold, &companions)
                .await?;
            extra.extend(out.violations);
            notes.extend(out.notes);
            records.extend(out.records);
            out.description
        } else {
            let (undo, desc) = nemesis::inject(kind, &mut cl, &net, &mut rng).await?;
            log(&format!("{}: {desc}", kind.name()), start);
            tokio::time::sleep(opts.hold).await;
            check_exits(&mut cl, &net, kind.name(), &mut extra, &mut notes)?;
            nemesis::undo(&undo, &mut cl, &net)?;
            desc
        };
        let (_, eps) = sh.endpoints();
        let rec = probe(
            &sh,
            &eps,
            &format!("p{i}"),
            opts.recovery_bound,
            &mut probe_ops,
        )
        .await;
        log(
            &format!(
                "healed; {}",
                rec.map(|m| format!("appends acknowledged again after {m} ms"))
                    .unwrap_or_else(|| format!(
                        "NO append acknowledged within {:?}",
                        opts.recovery_bound
                    ))
            ),
            start,
        );
        if kind == Kind::Membership {
            match membership::reconcile(
                &mut cl,
                &net,
                &sh,
                &all_addrs,
                Duration::from_secs(30),
                change_timeout,
            )
            .await
            {
                Ok((cfg, n)) => {
                    for x in &n {
                        log(&format!("  reconciled: {x}"), start);
                    }
                    log(&format!("  configuration: {}", cfg.describe()), start);
                    notes.extend(n.into_iter().map(|x| format!("after phase {i}: {x}")));
                }
                Err(e) => {
                    log(&format!("  not reconciled: {e}"), start);
                    notes.push(format!("after phase {i}: not reconciled: {e}"));
                }
            }
        }
        let p = phases.last_mut().expect("phase just pushed");
        p.description = desc;
        p.recovery_ms = rec;
        let done = match opts.rounds {
            Some(r) => i >= r * opts.nemeses.len(),
            None => start.elapsed() >= opts.duration,
        };
        if done {
            break;
        }
    }

    // Final heal: everything running, nothing cut, and appends again.
    tokio::time::sleep(opts.quiet).await;
    let now = sh.now_us();
    phases.last_mut().expect("phases exist").end_us = now;
    sh.stop.store(true, Ordering::Relaxed);
    let mut ops = probe_ops;
    for w in workers {
        if let Ok(v) = w.await {
            ops.extend(v);
        }
    }
    net.apply(&Default::default())?;
    check_exits(&mut cl, &net, "the last phase", &mut extra, &mut notes)?;
    for id in cl.member_ids() {
        cl.resume(id);
        if !cl.is_running(id) {
            cl.start(&net, id)?;
        }
    }
    sh.phase.store(phases.len(), Ordering::Relaxed);
    let t_final = sh.now_us();
    let (_, eps) = sh.endpoints();
    let rec = probe(&sh, &eps, "final", opts.recovery_bound, &mut ops).await;
    phases.push(Phase {
        nemesis: "final".into(),
        description: "all healed".into(),
        start_us: t_final,
        end_us: sh.now_us(),
        recovery_ms: rec,
    });
    // The nodes to compare: the members of the final configuration, as its
    // leader holds it once committed. Removed nodes are not compared (their
    // acknowledgements still count: every acknowledged append must be in
    // the members' log).
    let (final_config, final_ids) = match membership::reconcile(
        &mut cl,
        &net,
        &sh,
        &all_addrs,
        Duration::from_secs(30),
        change_timeout,
    )
    .await
    {
        Ok((cfg, n)) => {
            notes.extend(n.into_iter().map(|x| format!("at the end: {x}")));
            let ids: Vec<usize> = cfg.members().into_iter().collect();
            (Some(cfg), ids)
        }
        Err(e) => {
            extra.push(format!("after the final heal: {e}"));
            (None, cl.member_ids())
        }
    };
    if let Some(c) = &final_config {
        log(&format!("final configuration: {}", c.describe()), start);
    }
    if !converge(&net, &final_ids, Duration::from_secs(30)).await {
        extra.push(format!(
            "the members {final_ids:?} did not agree on the committed end within 30 s of the final heal"
        ));
    }
    let mut logs: Vec<NodeLog> = Vec::new();
    for &id in &final_ids {
        logs.push((id, read_node_log(&net.client_addr(id)).await));
    }
    log(
        &format!(
            "read the logs of nodes {final_ids:?} ({} records on node {}); checking {} operations",
            logs.first()
                .and_then(|l| l.1.as_ref().ok())
                .map(|l| l.len())
                .unwrap_or(0),
            final_ids.first().copied().unwrap_or(0),
            ops.len()
        ),
        start,
    );
    for id in cl.member_ids() {
        if let Some(st) = cl.exited(id) {
            extra.push(format!(
                "node {id} exited by itself ({st}); see {}",
                cl.log_path(id).display()
            ));
        }
    }
    cl.stop_all();
    drop(cl);
    drop(net);

    let report = checker::check(
        &ops,
        &logs,
        &phases,
        opts.recovery_bound.as_millis() as u64,
        extra,
    );
    let history_path = opts.work_dir.join("history.jsonl");
    history::write_jsonl(&history_path, &mut ops)
        .map_err(|e| Error::Setup(format!("cannot write {}: {e}", history_path.display())))?;
    if !records.is_empty() {
        let path = opts.work_dir.join("membership.jsonl");
        let text: String = records
            .iter()
            .filter_map(|r| serde_json::to_string(r).ok())
            .map(|l| l + "\n")
            .collect();
        std::fs::write(&path, text)
            .map_err(|e| Error::Setup(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(Outcomes {
        report,
        phases,
        history_path,
        membership: records,
        final_config,
        notes,
    })
}
