//! The node: one process hosting raft groups (multi-raft: groups by id, one
//! keel-log store each under `<data-dir>/groups/<id>/`), the peer transport
//! shared by every group, the client API and the metrics endpoint.

pub mod datadir;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod frame;
pub mod group;
pub mod storage;
pub mod transport;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use keel_log::{LogOptions, LogStore};
use keel_raft::GroupId;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::api::Api;
use crate::config::ServerConfig;
use crate::error::StartError;
use crate::metrics::Registry;
use datadir::DataDir;
use group::{GroupConfig, GroupHandle};
use transport::{AddrBook, PeerContext, Router, Transport};

/// The groups this node hosts. Only the default log (group 0) exists today;
/// nothing below assumes a single group.
pub struct Groups {
    pub map: HashMap<GroupId, GroupHandle>,
}

async fn bind(addr: &str, what: &'static str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen {
            what,
            addr: addr.to_string(),
            source,
        })
}

/// Runs a node until `shutdown` resolves, then stops it cleanly.
pub async fn run(cfg: ServerConfig, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    let dir = DataDir::open(&cfg.data_dir, cfg.id, cfg.cluster_id)?;
    let client_l = bind(&cfg.client_addr, "client API").await?;
    let peer_l = bind(&cfg.peer_addr, "peer transport").await?;
    let metrics_l = match &cfg.metrics_addr {
        Some(a) => Some(bind(a, "metrics").await?),
        None => None,
    };
    let registry = Registry::new(cfg.id);
    let addrs = Arc::new(AddrBook::default());
    addrs.set(cfg.id, cfg.client_addr.clone());
    let router = Arc::new(Router::default());
    let ctx = Arc::new(PeerContext {
        cluster: cfg.cluster_id,
        me: cfg.id,
        client_addr: cfg.client_addr.clone(),
        peers: cfg.peers.clone(),
        addrs: addrs.clone(),
        router: router.clone(),
        metrics: registry.clone(),
        inbound: Default::default(),
    });
    let transport = Transport::start(ctx.clone());

    let mut map = HashMap::new();
    let mut tasks = Vec::new();
    for group in [keel_proto::DEFAULT_LOG] {
        let gdir = dir.group_dir(group);
        let opts = log_options();
        let (store, report) = tokio::task::spawn_blocking(move || LogStore::open(&gdir, opts))
            .await
            .map_err(|e| StartError::Config(format!("log open task failed: {e}")))?
            .map_err(|source| StartError::Log { group, source })?;
        if let Some(t) = &report.torn_tail {
            warn!(group, file = %t.file.display(), bytes = t.bytes, "cut a torn tail left by a crash");
        }
        let store = Arc::new(store);
        let gcfg = GroupConfig {
            group,
            node_id: cfg.id,
            voters: cfg.peers.keys().copied().collect(),
            tick: cfg.tick,
            election_tick: cfg.election_ticks,
            max_entry_bytes: 4 << 20,
        };
        let (handle, task) = group::start(gcfg, store, transport.clone(), registry.group(group))?;
        router.add(group, handle.tx.clone());
        map.insert(group, handle);
        tasks.push(task);
    }
    let groups = Arc::new(Groups { map });

    let peer_task = tokio::spawn(transport::accept_loop(peer_l, ctx.clone()));
    let metrics_task = metrics_l.map(|l| tokio::spawn(crate::metrics::serve(l, registry.clone())));
    let (stop_tx, stop_rx) = watch::channel(false);
    let api = Api::new(&cfg, groups.clone(), addrs.clone(), stop_rx.clone());

    info!(
        node = cfg.id,
        cluster = %format!("{:016x}", cfg.cluster_id),
        client = %cfg.client_addr,
        peer = %cfg.peer_addr,
        metrics = %cfg.metrics_addr.as_deref().map(|a| format!("http://{a}/metrics")).unwrap_or_else(|| "off".into()),
        data_dir = %cfg.data_dir.display(),
        members = cfg.peers.len(),
        worker_threads = cfg.worker_threads,
        "keel node listening"
    );

    serve_api(api, client_l, shutdown, stop_tx, stop_rx).await;
    peer_task.abort();
    if let Some(t) = metrics_task {
        t.abort();
    }
    for h in groups.map.values() {
        let _ = h.tx.send(group::Input::Stop);
    }
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    // The stores close (their writers finish what is queued) when the last
    // handle goes; only then is the data directory released.
    drop(groups);
    drop(transport);
    tokio::time::sleep(Duration::from_millis(20)).await;
    info!("stopped");
    drop(dir);
    Ok(())
}

/// The store settings. With the `fault-injection` feature, environment
/// switches may replace the filesystem layer (see `fault`).
fn log_options() -> LogOptions {
    #[allow(unused_mut)]
    let mut opts = LogOptions::default();
    #[cfg(feature = "fault-injection")]
    fault::apply_to_log(&mut opts);
    opts
}

async fn serve_api(
    api: Api,
    client_l: TcpListener,
    shutdown: impl Future<Output = ()>,
    stop_tx: watch::Sender<bool>,
    stop_rx: watch::Receiver<bool>,
) {
    // The builder's tcp_nodelay applies only to listeners it binds itself;
    // without it, small responses wait for delayed ACKs (40 ms).
    let incoming = tonic::transport::server::TcpIncoming::from(client_l).with_nodelay(Some(true));
    let mut stop_wait = stop_rx.clone();
    let server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(32 << 20))
        .add_service(api.into_service())
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop_wait.wait_for(|s| *s).await;
        });
    let mut server = std::pin::pin!(server);
    tokio::select! {
        r = &mut server => {
            if let Err(e) = r {
                warn!(error = %e, "client API server stopped");
            }
        }
        _ = shutdown => {
            info!("stopping");
            let _ = stop_tx.send(true);
            // Streams (tails) end on the stop signal; give calls a moment.
            if tokio::time::timeout(Duration::from_secs(3), &mut server).await.is_err() {
                warn!("client calls still open after 3 s; closing them");
            }
        }
    }
    let _ = stop_tx.send(true);
}
