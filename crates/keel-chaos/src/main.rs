//! `keel-chaos`: the fault-test runner's command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use keel_chaos::nemesis::Kind;
use keel_chaos::{Bug, Error, Options};

const AFTER_HELP: &str = "\
What it does:
  Starts N `keel server` processes, each in its own network namespace
  (keelchaos-n1 ... on a bridge kcbr0, addresses 10.213.0.1 ...; spare
  slots for the membership nemesis after them, not started), runs
  clients that append unique values and read, and cycles through the
  nemeses until --duration has passed. Each phase: --quiet of calm, the
  fault, --hold, the heal, then the time until an append is acknowledged
  again (must be within --recovery-bound). Then everything is healed, every
  node's log is read and the history is checked: every acknowledged append
  present exactly once at its offset, the same record at every offset on
  every node, acknowledged appends in real-time order, no read of a value
  never appended or at the wrong offset, no stale read.

Nemeses (--nemeses, comma separated, or `all`):
  partition-halves        random halves, both directions cut
  partition-leader        the leader cut off from everyone
  partition-ring          each node hears a different majority
                          (one-way ring on 3 nodes)
  partition-bridge        two sides that only one node hears both of
  partition-oneway        one node's packets dropped, it still hears others
  kill-one                kill -9 one node (the leader half the time)
  kill-minority           kill -9 a minority
  kill-all                kill -9 every node at once
  pause-leader            SIGSTOP the leader, SIGCONT at the heal
  pause-follower          SIGSTOP a follower
  lose-unsynced-minority  kill -9 a minority, cut every segment back to its
                          last completed fdatasync (a power loss)
  lose-unsynced-all       the same on every node at once
  membership              run-time membership changes until the hold ends:
                          a spare node joins (`keel server --join`) and is
                          promoted or stays a learner, `members add` as a
                          voter, promote, demote, remove (the leader a third
                          of the time), replace one or two voters in one
                          joint change; voters stay within --nodes ..=
                          --nodes + 2; half the time another enabled
                          nemesis runs meanwhile. After it (and at the end)
                          the runner follows the committed configuration:
                          nodes that left are stopped (their directories
                          are wiped before they ever join again)

The faults act on the current members; the final check compares the
members of the final configuration (removed nodes are not compared; their
acknowledged appends must still be in the log).

Requirements:
  A keel binary built with the test-only feature, which records what each
  fdatasync made durable:
      cargo build --release -p keel --features fault-injection
      cp target/release/keel target/release/keel-fault
  Root, iproute2 and nftables for partitions (apt-get install -y nftables);
  --no-network-faults runs every node on 127.0.0.1 without partitions.

Output: progress on stderr; the summary table on stdout and in
<work-dir>/summary.md; the history in <work-dir>/history.jsonl (one
operation per line: invocation and completion times in microseconds,
outcome ok / fail / unknown); the membership changes in
<work-dir>/membership.jsonl (action, outcome ok / failed / unknown, the
answer); server logs in <work-dir>/n<i>.log.
Exit status: 0 if the checker found nothing, 1 if it found violations,
2 if the run could not be set up.

Examples:
  keel-chaos --duration 90s                      # every nemesis once
  keel-chaos --duration 30m --nodes 5            # a long run
  keel-chaos --nemeses membership,kill-one,partition-leader --rounds 5
                                                 # membership changes among crashes
  keel-chaos --nemeses lose-unsynced-all --bug skip-fsync --duration 20s
                                                 # show the checker failing";

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{s}` has no unit: use ms, s, m or h (e.g. 90s, 30m)"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 90s, 30m)"))?;
    let ms = match unit {
        "ms" => n,
        "s" => n.saturating_mul(1000),
        "m" => n.saturating_mul(60_000),
        "h" => n.saturating_mul(3_600_000),
        _ => return Err(format!("unknown unit `{unit}` in `{s}`: use ms, s, m or h")),
    };
    Ok(Duration::from_millis(ms))
}

fn parse_nemeses(s: &str) -> Result<Vec<Kind>, String> {
    if s == "all" {
        return Ok(Kind::ALL.to_vec());
    }
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        out.push(Kind::parse(part).ok_or_else(|| {
            format!(
                "unknown nemesis `{part}`; one of: all, {}",
                Kind::ALL.map(|k| k.name()).join(", ")
            )
        })?);
    }
    if out.is_empty() {
        return Err("no nemesis given".into());
    }
    Ok(out)
}

fn parse_bug(s: &str) -> Result<Bug, String> {
    Bug::parse(s).ok_or_else(|| {
        format!("unknown bug `{s}`; one of: skip-fsync, ack-before-persist, commit-old-term")
    })
}

fn default_bin() -> PathBuf {
    let dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.to_path_buf()))
        .unwrap_or_default();
    let fault = dir.join("keel-fault");
    if fault.is_file() {
        fault
    } else {
        dir.join("keel")
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "keel-chaos",
    version,
    about = "Fault tests with real keel server processes: partitions, kill -9, pauses and lost \
             un-fsynced writes, then a check of the client history",
    after_help = AFTER_HELP
)]
struct Cli {
    /// The keel binary (built with --features fault-injection). [default:
    /// keel-fault next to this program, else keel]
    #[arg(long, env = "KEEL_CHAOS_KEEL_BIN", value_name = "PATH")]
    keel_bin: Option<PathBuf>,
    /// Cluster size at the start: the founding members (3, 5 or 7).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Slots beyond --nodes that the membership nemesis starts with
    /// `--join` (each its own namespace and address, 0 to 4). [default: 2
    /// with the membership nemesis, else 0]
    #[arg(long, value_name = "N")]
    spare_nodes: Option<usize>,
    /// Concurrent client workers.
    #[arg(long, default_value_t = 6)]
    clients: usize,
    /// How long to keep injecting faults (ms, s, m, h). At least one phase
    /// runs.
    #[arg(long, default_value = "90s", value_parser = parse_duration)]
    duration: Duration,
    /// Instead of --duration: run the nemesis list this many times.
    #[arg(long, value_name = "N")]
    rounds: Option<usize>,
    /// Nemeses to cycle through, comma separated, or `all`.
    #[arg(long, default_value = "all")]
    nemeses: String,
    /// Calm before each fault.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    quiet: Duration,
    /// How long each fault lasts.
    #[arg(long, default_value = "4s", value_parser = parse_duration)]
    hold: Duration,
    /// After a heal, appends must be acknowledged again within this.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    recovery_bound: Duration,
    /// Seeds the nemesis's choices and the clients' operations.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where data directories, server logs, the history and the summary go
    /// (data of an earlier run there is removed). [default: a directory
    /// under the system temp dir]
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Run every node on 127.0.0.1 (no root needed) without partitions.
    #[arg(long)]
    no_network_faults: bool,
    /// Run the servers with a deliberate bug, to see the checker fail:
    /// skip-fsync, ack-before-persist, commit-old-term. Repeatable.
    #[arg(long, value_parser = parse_bug)]
    bug: Vec<Bug>,
    /// Raft tick of the servers, in milliseconds.
    #[arg(long, default_value_t = 30)]
    tick_ms: u64,
    /// Also write the summary (and every phase) as JSON to this file.
    #[arg(long, value_name = "FILE")]
    summary_json: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !(3..=7).contains(&cli.nodes) || cli.nodes % 2 == 0 {
        eprintln!("error: --nodes must be 3, 5 or 7");
        return ExitCode::from(2);
    }
    if cli.clients == 0 || cli.clients > 256 {
        eprintln!("error: --clients must be between 1 and 256");
        return ExitCode::from(2);
    }
    if cli.tick_ms == 0 {
        eprintln!("error: --tick-ms must be at least 1");
        return ExitCode::from(2);
    }
    let nemeses = match parse_nemeses(&cli.nemeses) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: --nemeses: {e}");
            return ExitCode::from(2);
        }
    };
    // `all` without network faults leaves the partitions out; naming one
    // explicitly is an error.
    if cli.no_network_faults
        && cli.nemeses != "all"
        && let Some(k) = nemeses.iter().find(|k| k.needs_partitions())
    {
        eprintln!(
            "error: nemesis {} needs network faults: leave it out, or run without --no-network-faults",
            k.name()
        );
        return ExitCode::from(2);
    }
    let nemeses: Vec<Kind> = nemeses
        .into_iter()
        .filter(|k| !(cli.no_network_faults && k.needs_partitions()))
        .collect();
    let with_membership = nemeses.contains(&Kind::Membership);
    let spare_nodes = cli
        .spare_nodes
        .unwrap_or(if with_membership { 2 } else { 0 });
    if spare_nodes > 4 {
        eprintln!("error: --spare-nodes must be between 0 and 4");
        return ExitCode::from(2);
    }
    let work_dir = cli
        .work_dir
        .unwrap_or_else(|| std::env::temp_dir().join(format!("keelchaos-{}", std::process::id())));
    let opts = Options {
        keel_bin: cli.keel_bin.unwrap_or_else(default_bin),
        nodes: cli.nodes,
        spare_nodes,
        clients: cli.clients,
        duration: cli.duration,
        rounds: cli.rounds.filter(|&r| r > 0),
        nemeses,
        quiet: cli.quiet,
        hold: cli.hold,
        recovery_bound: cli.recovery_bound,
        seed: cli.seed,
        work_dir: work_dir.clone(),
        network_faults: !cli.no_network_faults,
        bugs: cli.bug,
        tick_ms: cli.tick_ms,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = rt.block_on(async {
        tokio::select! {
            r = keel_chaos::run(opts.clone()) => Some(r),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    // Whatever the run left (processes, namespaces) went with its future.
    let outcome = match result {
        None => {
            eprintln!("interrupted: servers stopped and the test network removed");
            return ExitCode::from(130);
        }
        Some(Err(e)) => {
            let code = match e {
                Error::Setup(_) => 2,
                _ => 1,
            };
            eprintln!("error: {e}");
            return ExitCode::from(code);
        }
        Some(Ok(o)) => o,
    };
    let md = format!(
        "keel-chaos: {} nodes{}, {} clients, seed {}, bugs {:?}\n\n{}{}",
        opts.nodes,
        if opts.spare_nodes > 0 {
            format!(" (+{} spare)", opts.spare_nodes)
        } else {
            String::new()
        },
        opts.clients,
        opts.seed,
        opts.bugs,
        outcome.report.to_markdown(),
        outcome.membership_summary()
    );
    println!("{md}");
    let _ = std::fs::write(work_dir.join("summary.md"), &md);
    if let Some(p) = &cli.summary_json {
        let json = serde_json::json!({
            "report": outcome.report,
            "phases": outcome.phases,
            "history": outcome.history_path,
            "membership": outcome.membership,
            "final_config": outcome.final_config,
            "notes": outcome.notes,
        });
        if let Err(e) = std::fs::write(p, json.to_string()) {
            eprintln!("error: cannot write {}: {e}", p.display());
        }
    }
    eprintln!(
        "history: {}; server logs and summary in {}",
        outcome.history_path.display(),
        work_dir.display()
    );
    if outcome.report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
