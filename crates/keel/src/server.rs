//! `keel server`: a node of the node library hosting the default log (the
//! log service), the client API and the metrics endpoint.
//!
//! Start: the client and metrics listeners are bound first (a port in use
//! fails the start at once); a node with an empty data directory and
//! `--join` asks the cluster to admit it and receives the configuration
//! it joins; then the node starts (bootstrapping a new cluster on an empty
//! directory otherwise) and opens the default log. Stop (SIGINT/SIGTERM):
//! the API drains for up to 3 s, tails end, the node stops its groups,
//! closes the stores and releases the data directory.

use std::future::Future;
use std::time::{Duration, Instant};

use keel_client::{Client, ClientError, ClientOptions, Code, JoinRequest};
use keel_node::{GroupOptions, JoinTicket, Node, NodeConfig};
use keel_proto::DEFAULT_LOG;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::api::Api;
use crate::config::ServerConfig;
use crate::error::StartError;
use crate::log_service::{self, LogService};

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
    let client_l = bind(&cfg.client_addr, "client API").await?;
    let metrics_l = match &cfg.metrics_addr {
        Some(a) => Some(bind(a, "metrics").await?),
        None => None,
    };
    let join = match &cfg.join {
        Some(endpoints) if !keel_node::node::has_cluster(&cfg.data_dir)? => {
            Some(join_cluster(&cfg, endpoints).await?)
        }
        _ => None,
    };
    let node = Node::start(NodeConfig {
        id: cfg.id,
        data_dir: cfg.data_dir.clone(),
        peer_addr: cfg.peer_addr.clone(),
        client_addr: cfg.client_addr.clone(),
        cluster_name: cfg.cluster_name.clone(),
        peers: cfg.peers.clone(),
        join,
        bootstrap_groups: vec![DEFAULT_LOG],
        tick: cfg.tick,
        election_ticks: cfg.election_ticks,
    })
    .await?;
    let group = node
        .open_group(
            DEFAULT_LOG,
            LogService::default(),
            GroupOptions {
                settings: log_service::settings(),
                ..Default::default()
            },
        )
        .await?;
    if let Some(p) = cfg.preferred_leader {
        tokio::spawn(prefer_once(group.clone(), p));
    }
    let metrics_task =
        metrics_l.map(|l| tokio::spawn(keel_node::metrics::serve(l, node.metrics().clone())));
    let (stop_tx, stop_rx) = watch::channel(false);
    let api = Api::new(&cfg, &node, group, stop_rx.clone());
    info!(
        node = cfg.id,
        cluster = %format!("{:016x}", node.cluster_id()),
        client = %cfg.client_addr,
        peer = %cfg.peer_addr,
        metrics = %cfg.metrics_addr.as_deref().map(|a| format!("http://{a}/metrics")).unwrap_or_else(|| "off".into()),
        data_dir = %cfg.data_dir.display(),
        worker_threads = cfg.worker_threads,
        "keel node listening"
    );
    serve_api(api, client_l, shutdown, stop_tx, stop_rx).await;
    if let Some(t) = metrics_task {
        t.abort();
    }
    node.shutdown().await;
    info!("stopped");
    Ok(())
}

/// Asks the cluster at `endpoints` to admit this node, retrying while no
/// member answers (the cluster may be electing a leader), for a minute.
async fn join_cluster(cfg: &ServerConfig, endpoints: &[String]) -> Result<JoinTicket, StartError> {
    let incarnation = keel_node::node::prepare_join(&cfg.data_dir, cfg.id)?;
    let client = Client::new(ClientOptions {
        endpoints: endpoints.to_vec(),
        timeout: Duration::from_secs(20),
        ..Default::default()
    })
    .map_err(|e| StartError::Config(format!("--join: {e}")))?;
    let req = JoinRequest {
        node_id: cfg.id,
        peer_addr: cfg.peer_addr.clone(),
        client_addr: cfg.client_addr.clone(),
        incarnation,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    info!(node = cfg.id, endpoints = %endpoints.join(","), "asking the cluster to admit this node");
    loop {
        match client.join(req.clone()).await {
            Ok(r) => {
                let membership = keel_raft::decode_membership(&r.configuration).map_err(|why| {
                    StartError::Config(format!(
                        "the cluster answered the join with a configuration this build cannot read ({why}); is it a newer keel?"
                    ))
                })?;
                info!(node = cfg.id, cluster = %format!("{:016x}", r.cluster_id), "admitted as a learner; catching up");
                return Ok(JoinTicket {
                    cluster_id: r.cluster_id,
                    cluster_name: (!r.cluster_name.is_empty()).then_some(r.cluster_name),
                    group: r.log,
                    membership,
                });
            }
            // Another membership change is under way (another node joining
            // at the same time, an operator's change), or leadership moved
            // during the admission: the join is idempotent, ask again.
            Err(ClientError::Rpc {
                code: Code::AlreadyExists | Code::DeadlineExceeded,
                message,
            }) if Instant::now() < deadline => {
                info!(reason = %message, "the cluster cannot admit this node yet; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(ClientError::Rpc { message, .. }) | Err(ClientError::Invalid(message)) => {
                return Err(StartError::Config(format!(
                    "the cluster refused to admit node {}: {message}",
                    cfg.id
                )));
            }
            Err(e) if Instant::now() < deadline => {
                warn!(error = %e, "no member admitted this node yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                return Err(StartError::Config(format!(
                    "could not join the cluster at {}: {e}",
                    endpoints.join(",")
                )));
            }
        }
    }
}

/// `--preferred-leader`: once this node leads and the log has no preferred
/// leader yet, sets it.
async fn prefer_once(group: keel_node::Group<LogService>, id: u64) {
    let mut role = group.role();
    loop {
        let leading = role.borrow_and_update().role == keel_raft::Role::Leader;
        if leading {
            match group.status().await {
                Ok(s) if s.core.preferred_leader.is_some() => return,
                Ok(_) => match group.set_preferred_leader(Some(id)).await {
                    Ok(()) => {
                        info!(preferred = id, "set the default log's preferred leader");
                        return;
                    }
                    Err(e) => warn!(error = %e, "could not set the preferred leader; retrying"),
                },
                Err(_) => return,
            }
        }
        if role.changed().await.is_err() {
            return;
        }
    }
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
        // Per connection: a client that opens more streams waits for one
        // to end (HTTP/2), besides the node-wide --max-requests and
        // --max-streams, which refuse.
        .max_concurrent_streams(Some(1024))
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
