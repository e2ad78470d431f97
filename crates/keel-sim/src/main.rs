//! Command line of the simulator: run many seeds, or replay one.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use keel_sim::{Bug, FaultMix, SimOptions, run_seed};

/// Deterministic simulation of keel clusters (keel-node's group core over
/// keel-raft) under faults.
///
/// Each seed builds a cluster, runs clients against it while a nemesis
/// injects the chosen faults, checks safety invariants after every event,
/// then heals everything and requires the cluster to recover within a bound;
/// finally the client history is checked for linearizability. A failing
/// seed prints the one command that replays it.
///
/// Examples:
///   keel-sim --seeds 500                      # 500 seeds, every fault mix, 3 and 5 nodes
///   keel-sim --seeds 200 --faults crash --nodes 5
///   keel-sim --seed 42 --nodes 3 --faults mixed --trace   # replay one seed
#[derive(Parser, Debug)]
#[command(name = "keel-sim", version)]
struct Args {
    /// Number of seeds to run (seeds start at --start-seed).
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// First seed of the range.
    #[arg(long, default_value_t = 1)]
    start_seed: u64,
    /// Run exactly this seed (replay).
    #[arg(long)]
    seed: Option<u64>,
    /// Cluster size; by default alternates between 3 and 5 per seed.
    #[arg(long)]
    nodes: Option<usize>,
    /// Fault mix; by default cycles through every mix per seed.
    #[arg(long, value_enum)]
    faults: Option<FaultMix>,
    /// Simulated milliseconds of faults per seed.
    #[arg(long, default_value_t = 10_000)]
    fault_ms: u64,
    /// Simulated milliseconds allowed for recovery after healing.
    #[arg(long, default_value_t = 10_000)]
    liveness_ms: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Break a safety rule on purpose (the checkers must catch it).
    #[arg(long, value_enum)]
    bug: Option<Bug>,
    /// Print every event of the run (use with --seed).
    #[arg(long)]
    trace: bool,
    /// With --trace, also print every message delivered.
    #[arg(long)]
    trace_messages: bool,
    /// Print one line per seed.
    #[arg(long, short)]
    verbose: bool,
}

fn options_for(args: &Args, seed: u64) -> SimOptions {
    SimOptions {
        nodes: args
            .nodes
            .unwrap_or(if seed.is_multiple_of(2) { 5 } else { 3 }),
        faults: args
            .faults
            .unwrap_or(FaultMix::ALL[(seed / 2 % FaultMix::ALL.len() as u64) as usize]),
        fault_ms: args.fault_ms,
        liveness_ms: args.liveness_ms,
        clients: args.clients,
        bug: args.bug,
        trace: args.trace,
        trace_messages: args.trace_messages,
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(n) = args.nodes
        && !(1..=9).contains(&n)
    {
        eprintln!("error: --nodes must be between 1 and 9 (got {n})");
        return ExitCode::from(2);
    }
    if args.clients == 0 {
        eprintln!("error: --clients must be at least 1");
        return ExitCode::from(2);
    }
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => (args.start_seed..args.start_seed + args.seeds).collect(),
    };
    let started = Instant::now();
    let (mut passed, mut failed) = (0u64, 0u64);
    for seed in seeds {
        let opts = options_for(&args, seed);
        let t = Instant::now();
        match run_seed(&opts, seed) {
            Ok(stats) => {
                passed += 1;
                if args.verbose || args.seed.is_some() {
                    println!(
                        "seed {seed} ok: {} nodes, {} faults, {} sim ms ({} to recover), {} events, {} messages, {} crashes, {} leader changes, {} records; appends ok/failed/unknown {}/{}/{}, reads ok/failed {}/{}; {:.0} ms",
                        opts.nodes,
                        opts.faults,
                        stats.sim_ms,
                        stats.recovery_ms,
                        stats.events,
                        stats.messages,
                        stats.crashes,
                        stats.leader_changes,
                        stats.log_len,
                        stats.counts.appends_ok,
                        stats.counts.appends_failed,
                        stats.counts.appends_unknown,
                        stats.counts.reads_ok,
                        stats.counts.reads_failed,
                        t.elapsed().as_secs_f64() * 1000.0
                    );
                }
            }
            Err(violation) => {
                failed += 1;
                println!(
                    "seed {seed} FAILED ({} nodes, {} faults): {violation}",
                    opts.nodes, opts.faults
                );
                println!("  replay: {}", opts.replay_command(seed));
            }
        }
    }
    eprintln!("({:.1} s)", started.elapsed().as_secs_f64());
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
