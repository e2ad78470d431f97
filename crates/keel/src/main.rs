//! The `keel` binary: `keel server` runs a node; the other commands are
//! clients of a running cluster (`append`, `get`, `tail`, `status`,
//! `transfer-leader`), a load generator (`bench`) and a throw-away local
//! cluster (`local`).

use clap::{Parser, Subcommand};
use keel::cli::{self, bench, local};
use keel::config::{ServerArgs, ServerConfig};

const AFTER_HELP: &str = "\
Ports (defaults of `keel server` with no flags: node 1 of a single-node cluster,
data in ./keel-data):
  127.0.0.1:7070  client API (gRPC, crates/keel-proto/proto/keel.proto)
  127.0.0.1:7071  peer transport (raft between nodes)
  127.0.0.1:7072  Prometheus metrics (GET /metrics)
Client commands default to --endpoints 127.0.0.1:7070 (or KEEL_ENDPOINTS).

Quick start:
  keel server &
  keel append -d \"Hello World\"      # prints 0, the offset of the record
  keel get -i 0                      # prints Hello World";

#[derive(Parser, Debug)]
#[command(
    name = "keel",
    version,
    about = "keel: a Raft-replicated, durable, strongly consistent commit log",
    after_help = AFTER_HELP
)]
struct Cli {
    /// Log level or filter (`info`, `debug`, `keel=debug,warn`); overrides
    /// RUST_LOG.
    #[arg(long, global = true, env = "KEEL_LOG_LEVEL", value_name = "FILTER")]
    log_level: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a node. With no flags: node 1 of a single-node cluster, data in
    /// ./keel-data, client API on 127.0.0.1:7070.
    Server(ServerArgs),
    /// Append records; prints each record's offset once it is committed.
    Append(cli::AppendArgs),
    /// Print records: one offset (-i) or a range (--from, --to).
    Get(cli::GetArgs),
    /// Print records from an offset on; with --follow, keep following.
    Tail(cli::TailArgs),
    /// A table of the members: role, term, commit, lag.
    Status(cli::StatusArgs),
    /// Hand leadership to another node.
    TransferLeader(cli::TransferArgs),
    /// The configuration, and changes to it while the cluster runs: list,
    /// add, promote, demote, remove, change, prefer.
    Members(cli::members::MembersArgs),
    /// Run a throw-away cluster on localhost, each node its own process;
    /// Ctrl-C stops it.
    Local(local::LocalArgs),
    /// Load generator: N clients each appending and waiting for the ack;
    /// also drives etcd (--target etcd) for comparisons.
    Bench(bench::BenchArgs),
}

fn init_logging(filter: Option<&str>, default: &str) {
    use tracing_subscriber::EnvFilter;
    let f = match filter {
        Some(f) => EnvFilter::try_new(f).unwrap_or_else(|e| {
            eprintln!("error: --log-level `{f}`: {e}");
            std::process::exit(2);
        }),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)),
    };
    tracing_subscriber::fmt()
        .with_env_filter(f)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// A runtime of `threads` workers; one means a current-thread runtime (no
/// cross-thread wake-ups, no work stealing).
fn runtime(threads: usize) -> tokio::runtime::Runtime {
    let r = if threads > 1 {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    r.unwrap_or_else(|e| {
        eprintln!("error: cannot start the async runtime: {e}");
        std::process::exit(1);
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn main() {
    let cli = Cli::parse();
    let result: Result<(), String> = match cli.cmd {
        Cmd::Server(args) => {
            let cfg = match ServerConfig::resolve(&args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    std::process::exit(2);
                }
            };
            let level = cli.log_level.clone().or(cfg.log_level.clone());
            init_logging(level.as_deref(), "info");
            runtime(cfg.worker_threads)
                .block_on(keel::server::run(cfg, shutdown_signal()))
                .map_err(|e| e.to_string())
        }
        Cmd::Local(args) => {
            init_logging(cli.log_level.as_deref(), "warn");
            runtime(2).block_on(local::run(args))
        }
        Cmd::Bench(args) => {
            init_logging(cli.log_level.as_deref(), "warn");
            runtime(args.threads.max(1)).block_on(bench::run(args))
        }
        cmd => {
            init_logging(cli.log_level.as_deref(), "warn");
            runtime(1).block_on(async move {
                match cmd {
                    Cmd::Append(a) => cli::append(a).await,
                    Cmd::Get(a) => cli::get(a).await,
                    Cmd::Tail(a) => cli::tail(a).await,
                    Cmd::Status(a) => cli::status(a).await,
                    Cmd::TransferLeader(a) => cli::transfer_leader(a).await,
                    Cmd::Members(a) => cli::members::run(a).await,
                    _ => unreachable!("handled above"),
                }
            })
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
