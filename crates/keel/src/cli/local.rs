//! `keel local --nodes N`: a throw-away cluster on localhost, each node its
//! own `keel server` process with its own data directory and ports, stopped
//! (SIGTERM, then SIGKILL after 5 s) on Ctrl-C.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use keel_client::{Client, ClientOptions};
use tokio::process::{Child, Command};

#[derive(clap::Args, Debug)]
pub struct LocalArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Node i listens on BASE+10*(i-1) (client), +1 (peer), +2 (metrics).
    #[arg(long, default_value_t = 7070)]
    pub base_port: u16,
    /// Keep the nodes' data here (default: a fresh temporary directory,
    /// removed on exit).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Keep the temporary data directory on exit.
    #[arg(long)]
    pub keep: bool,
}

struct Proc {
    id: u64,
    child: Child,
}

pub async fn run(a: LocalArgs) -> Result<(), String> {
    if a.nodes == 0 || a.nodes > 9 {
        return Err("--nodes must be between 1 and 9".into());
    }
    let last_port = a.base_port as u64 + 10 * (a.nodes - 1) + 2;
    if last_port > u16::MAX as u64 {
        return Err("--base-port is too high for that many nodes".into());
    }
    let temp = a.data_dir.is_none();
    let root = match &a.data_dir {
        Some(d) => d.clone(),
        None => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            std::env::temp_dir().join(format!("keel-local-{}-{nanos:08x}", std::process::id()))
        }
    };
    std::fs::create_dir_all(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the keel binary: {e}"))?;
    let port = |i: u64, k: u64| a.base_port as u64 + 10 * (i - 1) + k;
    let peers = (1..=a.nodes)
        .map(|i| format!("{i}=127.0.0.1:{}", port(i, 1)))
        .collect::<Vec<_>>()
        .join(",");
    let endpoints = (1..=a.nodes)
        .map(|i| format!("127.0.0.1:{}", port(i, 0)))
        .collect::<Vec<_>>()
        .join(",");
    println!(
        "keel local: {} nodes, data in {}{}",
        a.nodes,
        root.display(),
        if temp && !a.keep {
            " (removed on exit)"
        } else {
            ""
        }
    );
    let mut procs = Vec::new();
    for i in 1..=a.nodes {
        let log_path = root.join(format!("node{i}.log"));
        let log = std::fs::File::create(&log_path)
            .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        let child = Command::new(&exe)
            .arg("server")
            .args(["--id", &i.to_string()])
            .arg("--data-dir")
            .arg(root.join(format!("node{i}")))
            .args(["--client-addr", &format!("127.0.0.1:{}", port(i, 0))])
            .args(["--peer-addr", &format!("127.0.0.1:{}", port(i, 1))])
            .args(["--metrics-addr", &format!("127.0.0.1:{}", port(i, 2))])
            .args(["--peers", &peers])
            .env_remove("KEEL_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start node {i}: {e}"))?;
        println!(
            "  node {i}: client 127.0.0.1:{}  peer 127.0.0.1:{}  metrics http://127.0.0.1:{}/metrics  log {}",
            port(i, 0),
            port(i, 1),
            port(i, 2),
            log_path.display()
        );
        procs.push(Proc { id: i, child });
    }
    println!("endpoints: {endpoints}");
    println!("  export KEEL_ENDPOINTS={endpoints}");
    println!("  keel append -d \"Hello World\"; keel get -i 0; keel status");
    println!("Ctrl-C stops the cluster.");

    let client = Client::new(ClientOptions {
        endpoints: endpoints.split(',').map(String::from).collect(),
        timeout: Duration::from_secs(15),
        ..Default::default()
    })
    .map_err(|e| e.to_string())?;
    let mut result = Ok(());
    let find_leader = async {
        for _ in 0..100 {
            if let Ok(s) = client.status().await
                && s.leader_id != 0
            {
                return Some(s.leader_id);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    };
    tokio::select! {
        l = find_leader => match l {
            Some(l) => println!("leader: node {l}"),
            None => println!("no leader after 10 s; see the logs"),
        },
        _ = crate_shutdown() => return stop(procs, &root, temp && !a.keep).await,
    }
    // Run until interrupted. A node that exits by itself (killed to watch a
    // failover, say) is reported; the others keep running.
    let mut gone = Vec::new();
    loop {
        tokio::select! {
            _ = crate_shutdown() => break,
            (id, status) = wait_any(&mut procs, &gone) => {
                eprintln!(
                    "node {id} exited ({status}); the others keep running (its log: {})",
                    root.join(format!("node{id}.log")).display()
                );
                gone.push(id);
                if gone.len() == procs.len() {
                    result = Err("every node has exited".to_string());
                    break;
                }
            }
        }
    }
    let stopped = stop(procs, &root, temp && !a.keep && result.is_ok()).await;
    result.and(stopped)
}

async fn crate_shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn wait_any(procs: &mut [Proc], gone: &[u64]) -> (u64, String) {
    loop {
        for p in procs.iter_mut().filter(|p| !gone.contains(&p.id)) {
            if let Ok(Some(st)) = p.child.try_wait() {
                return (p.id, st.to_string());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn stop(mut procs: Vec<Proc>, root: &std::path::Path, remove: bool) -> Result<(), String> {
    println!("stopping {} nodes", procs.len());
    for p in &procs {
        if let Some(pid) = p.child.id() {
            // SIGTERM: a clean stop (the node closes its stores).
            // SAFETY: kill(2) on a child we spawned and have not reaped.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
    }
    for p in &mut procs {
        match tokio::time::timeout(Duration::from_secs(5), p.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!("node {} did not stop within 5 s; killing it", p.id);
                let _ = p.child.kill().await;
            }
        }
    }
    if remove {
        std::fs::remove_dir_all(root)
            .map_err(|e| format!("cannot remove {}: {e}", root.display()))?;
    }
    Ok(())
}
