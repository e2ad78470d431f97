//! The client commands of the `keel` binary: append, get, tail, status,
//! transfer-leader, members; and `bench` and `local`.

pub mod bench;
pub mod local;
pub mod members;
pub mod output;

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use keel_client::{Client, ClientError, ClientOptions};
use serde_json::json;

use output::Output;

/// Options every client command takes.
#[derive(clap::Args, Debug, Clone)]
pub struct ClientOpts {
    /// Client API addresses of any cluster members (the client finds the
    /// leader).
    #[arg(
        long,
        env = "KEEL_ENDPOINTS",
        value_delimiter = ',',
        default_value = keel_client::DEFAULT_ENDPOINT,
        value_name = "HOST:PORT,..."
    )]
    pub endpoints: Vec<String>,
    /// `text`, or `json`: one JSON object per line.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Give up after this long (retries included), e.g. `500ms`, `10s`.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub timeout: Duration,
}

impl ClientOpts {
    pub fn client(&self) -> Result<Client, ClientError> {
        Client::new(ClientOptions {
            endpoints: self.endpoints.clone(),
            timeout: self.timeout,
            ..Default::default()
        })
    }
}

/// Parses `250ms`, `10s`, `2m` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 500ms, 10s or 2m"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (use ms, s or m)")),
    };
    if !(0.0..=1e9).contains(&secs) {
        return Err(format!("`{s}` is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[derive(clap::Args, Debug)]
#[command(group = clap::ArgGroup::new("source").required(true).args(["data", "file"]))]
pub struct AppendArgs {
    /// The record to append (UTF-8 text).
    #[arg(short, long)]
    pub data: Option<String>,
    /// Append each line of FILE as one record (`-` reads stdin).
    #[arg(short, long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Append the record this many times (with -d).
    #[arg(long, default_value_t = 1, requires = "data")]
    pub count: u64,
    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(clap::Args, Debug)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["index", "from"]))]
pub struct GetArgs {
    /// Offset of the record to print.
    #[arg(short, long, value_name = "OFFSET")]
    pub index: Option<u64>,
    /// First offset of a range.
    #[arg(long, value_name = "OFFSET")]
    pub from: Option<u64>,
    /// End of the range (exclusive); default: the end of the log.
    #[arg(long, value_name = "OFFSET", requires = "from")]
    pub to: Option<u64>,
    /// Read this node's committed records without confirming with the
    /// leader (may be stale).
    #[arg(long)]
    pub stale: bool,
    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(clap::Args, Debug)]
pub struct TailArgs {
    /// Offset to start at.
    #[arg(long, default_value_t = 0, value_name = "OFFSET")]
    pub from: u64,
    /// Keep following new records until interrupted.
    #[arg(long)]
    pub follow: bool,
    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(clap::Args, Debug)]
pub struct TransferArgs {
    /// Node id to hand leadership to.
    #[arg(long, value_name = "ID")]
    pub to: u64,
    #[command(flatten)]
    pub client: ClientOpts,
}

/// An error for the one line on stderr.
pub type CliResult = Result<(), String>;

pub(crate) fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

pub(crate) fn stdout() -> std::io::BufWriter<std::io::StdoutLock<'static>> {
    std::io::BufWriter::new(std::io::stdout().lock())
}

fn print_offsets(out: &mut impl Write, mode: Output, first: u64, n: u64) -> CliResult {
    for o in first..first + n {
        let s = match mode {
            Output::Json => json!({ "offset": o }).to_string(),
            Output::Text => o.to_string(),
        };
        output::line(out, &s).map_err(err)?;
    }
    Ok(())
}

pub async fn append(a: AppendArgs) -> CliResult {
    let client = a.client.client().map_err(err)?;
    let mode = a.client.output;
    let mut out = stdout();
    const CHUNK: usize = 1000;
    if let Some(d) = &a.data {
        let rec = Bytes::from(d.clone().into_bytes());
        let mut left = a.count;
        while left > 0 {
            let n = left.min(CHUNK as u64);
            let first = client
                .append_direct(vec![rec.clone(); n as usize])
                .await
                .map_err(err)?;
            print_offsets(&mut out, mode, first, n)?;
            left -= n;
        }
    } else if let Some(path) = &a.file {
        let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
            Box::new(std::io::BufReader::new(std::io::stdin()))
        } else {
            Box::new(std::io::BufReader::new(
                std::fs::File::open(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
            ))
        };
        let mut batch = Vec::with_capacity(CHUNK);
        let mut lines = reader.split(b'\n');
        loop {
            let next = lines.next();
            let done = next.is_none();
            if let Some(l) = next {
                let mut l = l.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                if l.last() == Some(&b'\r') {
                    l.pop();
                }
                batch.push(Bytes::from(l));
            }
            if batch.len() >= CHUNK || (done && !batch.is_empty()) {
                let n = batch.len() as u64;
                let first = client
                    .append_direct(std::mem::take(&mut batch))
                    .await
                    .map_err(err)?;
                print_offsets(&mut out, mode, first, n)?;
            }
            if done {
                break;
            }
        }
    }
    out.flush().map_err(err)
}

pub async fn get(a: GetArgs) -> CliResult {
    let client = a.client.client().map_err(err)?;
    let mut out = stdout();
    let (start, end) = match (a.index, a.from) {
        (Some(i), _) => (i, i.saturating_add(1)),
        (None, Some(f)) => (f, a.to.unwrap_or(u64::MAX)),
        (None, None) => return Err("give an offset with -i or a range with --from".into()),
    };
    if end <= start {
        return Err(format!(
            "empty range: --to {end} is not after --from {start}"
        ));
    }
    let recs = client.read(start, end, a.stale).await.map_err(err)?;
    for r in &recs {
        output::record(&mut out, a.client.output, r.offset, &r.data).map_err(err)?;
    }
    out.flush().map_err(err)
}

pub async fn tail(a: TailArgs) -> CliResult {
    let client = a.client.client().map_err(err)?;
    let mut t = client.tail(a.from, a.follow);
    let mut out = std::io::stdout();
    while let Some(r) = t.next().await {
        let r = r.map_err(err)?;
        let mut lock = out.lock();
        output::record(&mut lock, a.client.output, r.offset, &r.data).map_err(err)?;
        lock.flush().map_err(err)?;
    }
    let _ = out.flush();
    Ok(())
}

pub async fn status(a: StatusArgs) -> CliResult {
    let client = a.client.client().map_err(err)?;
    let first = client.status().await.map_err(err)?;
    // Ask every member for its own view; the leader's view has the lag.
    let mut rows = Vec::new();
    for m in &first.members {
        let st = if m.id == first.node_id {
            Ok(first.clone())
        } else if m.client_addr.is_empty() {
            Err("client address not known yet".to_string())
        } else {
            let c = a.client.clone();
            let probe = ClientOpts {
                endpoints: vec![m.client_addr.clone()],
                timeout: Duration::from_secs(2),
                ..c
            }
            .client()
            .map_err(err)?;
            probe.status_of(&m.client_addr).await.map_err(err)
        };
        rows.push((m.clone(), st));
    }
    // The node asked is not in its own configuration (removed, or a joiner
    // not admitted yet): show its row too, or nothing would say so.
    if !first.members.iter().any(|m| m.id == first.node_id) {
        let me = keel_client::Member {
            id: first.node_id,
            client_addr: first.client_addr.clone(),
            role: first.role.clone(),
            suffrage: "not a member".to_string(),
            ..Default::default()
        };
        rows.push((me, Ok(first.clone())));
    }
    let leader_view = rows
        .iter()
        .filter_map(|(_, s)| s.as_ref().ok())
        .find(|s| s.role == "leader")
        .cloned();
    let mut out = stdout();
    if a.client.output == Output::Text {
        let view = leader_view.as_ref().unwrap_or(&first);
        let list = |f: &dyn Fn(&str) -> bool| {
            let v: Vec<String> = view
                .members
                .iter()
                .filter(|m| f(&m.suffrage))
                .map(|m| m.id.to_string())
                .collect();
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(",")
            }
        };
        output::line(
            &mut out,
            &format!(
                "voters {}{}; learners {}; preferred leader {}; log starts at index {} (offset {}); snapshot at {}",
                list(&|s| s != "learner"),
                if view.joint { " (joint)" } else { "" },
                list(&|s| s == "learner"),
                match view.preferred_leader {
                    0 => "none".to_string(),
                    p => p.to_string(),
                },
                view.first_index,
                view.first_offset,
                match view.snapshot_index {
                    0 => "none".to_string(),
                    i => format!("index {i}"),
                },
            ),
        )
        .map_err(err)?;
        output::line(
            &mut out,
            &format!(
                "{:<4} {:<22} {:<22} {:<8} {:<10} {:>6} {:>6} {:>10} {:>10} {:>10} {:>12} {:>6}",
                "ID",
                "CLIENT",
                "PEER",
                "MEMBER",
                "ROLE",
                "TERM",
                "LEADER",
                "COMMIT",
                "APPLIED",
                "LAST",
                "END OFFSET",
                "LAG"
            ),
        )
        .map_err(err)?;
    }
    for (m, st) in rows {
        let lag = leader_view
            .as_ref()
            .and_then(|l| l.members.iter().find(|x| x.id == m.id))
            .map(|x| x.lag);
        match (a.client.output, st) {
            (Output::Text, Ok(s)) => output::line(
                &mut out,
                &format!(
                    "{:<4} {:<22} {:<22} {:<8} {:<10} {:>6} {:>6} {:>10} {:>10} {:>10} {:>12} {:>6}{}",
                    s.node_id,
                    s.client_addr,
                    m.peer_addr,
                    match m.suffrage.as_str() {
                        "outgoing voter" => "outgoing",
                        "not a member" => "-",
                        s => s,
                    },
                    s.role,
                    s.term,
                    s.leader_id,
                    s.commit_index,
                    s.applied_index,
                    s.last_index,
                    s.end_offset,
                    lag.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
                    if s.refusals.is_empty() {
                        String::new()
                    } else {
                        format!("  refused: {}", s.refusals.join("; "))
                    }
                ),
            ),
            (Output::Text, Err(e)) => output::line(
                &mut out,
                &format!(
                    "{:<4} {:<22} {:<22} unreachable: {e}",
                    m.id,
                    if m.client_addr.is_empty() {
                        "?"
                    } else {
                        &m.client_addr
                    },
                    m.peer_addr
                ),
            ),
            (Output::Json, Ok(s)) => output::line(
                &mut out,
                &json!({
                    "id": s.node_id, "client_addr": s.client_addr, "peer_addr": m.peer_addr,
                    "reachable": true, "role": s.role, "term": s.term, "leader": s.leader_id,
                    "commit_index": s.commit_index, "applied_index": s.applied_index,
                    "last_index": s.last_index, "end_offset": s.end_offset, "lag": lag,
                    "cluster_id": s.cluster_id, "suffrage": m.suffrage, "joint": s.joint,
                    "preferred_leader": (s.preferred_leader != 0).then_some(s.preferred_leader),
                    "snapshot_index": s.snapshot_index, "first_index": s.first_index,
                    "first_offset": s.first_offset, "removed": s.removed,
                    "refusals": s.refusals,
                })
                .to_string(),
            ),
            (Output::Json, Err(e)) => output::line(
                &mut out,
                &json!({
                    "id": m.id, "client_addr": m.client_addr, "peer_addr": m.peer_addr,
                    "reachable": false, "error": e,
                })
                .to_string(),
            ),
        }
        .map_err(err)?;
    }
    out.flush().map_err(err)
}

pub async fn transfer_leader(a: TransferArgs) -> CliResult {
    let client = a.client.client().map_err(err)?;
    let leader = client.transfer_leader(a.to).await.map_err(err)?;
    let mut out = stdout();
    let s = match a.client.output {
        Output::Json => json!({ "leader": leader }).to_string(),
        Output::Text => format!("node {leader} is the leader"),
    };
    output::line(&mut out, &s).map_err(err)?;
    out.flush().map_err(err)
}
