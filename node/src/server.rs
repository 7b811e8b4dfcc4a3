//! Running a node: open the store, load the topics, serve gRPC until stopped.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use woof_consensus::store::RocksStore;
use woof_consensus::{SystemClock, Topics};
use woof_overlay::{Overlay, OverlayConfig};
use woof_proto::MESSAGE_BYTES_MAX;
use woof_proto::v1::woof_server::WoofServer;

use crate::cluster::Cluster;
use crate::config::NodeConfig;
use crate::error::{Error, Result};
use crate::groups::Groups;
use crate::grpc::Service;
use crate::topics::{ClusterTopics, TopicApi};

/// Requests one client connection may have in flight at once.
const REQUESTS_PER_CONNECTION_MAX: usize = 1024;

/// How long opening the storage waits for an earlier node of this process
/// to release the directory's lock.
const LOCK_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens the node's storage in `config.data_dir` and loads its topics.
pub async fn open_topics(config: &NodeConfig) -> Result<(Topics, Arc<RocksStore>)> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| Error::Io {
        context: format!("cannot create data directory {}", config.data_dir.display()),
        source,
    })?;
    let dir = config.data_dir.join("db");
    // A node stopped in this process a moment ago (the demo, tests) may
    // still be letting go of the directory's lock: wait for that, briefly.
    let deadline = tokio::time::Instant::now() + LOCK_WAIT_MAX;
    let store = loop {
        let dir = dir.clone();
        let opened = tokio::task::spawn_blocking(move || RocksStore::open(&dir))
            .await
            .map_err(|e| Error::Internal(format!("opening storage failed: {e}")))?;
        match opened {
            Err(e)
                if e.to_string().contains("lock hold by current process")
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            other => break other?,
        }
    };
    let store = Arc::new(store);
    let topics = Topics::open(store.clone(), Arc::new(SystemClock)).await?;
    Ok((topics, store))
}

/// Serves `topics` on `listener` until `shutdown` resolves; then stops the
/// topics (queued appends fail as UNAVAILABLE, subscriptions end) and returns
/// once every request has finished.
pub async fn run(
    listener: TcpListener,
    topics: TopicApi,
    cluster: Cluster,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let service = WoofServer::new(Service::new(topics.clone(), cluster))
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX);
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let stopping = async {
        shutdown.await;
        tracing::info!("shutting down");
        topics.shutdown().await;
    };
    Server::builder()
        .concurrency_limit_per_connection(REQUESTS_PER_CONNECTION_MAX)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, stopping)
        .await?;
    Ok(())
}

/// A node running in this process: for `woof node start`, the demo and tests.
pub struct Node {
    grpc_addr: SocketAddr,
    info: woof_overlay::NodeInfo,
    overlay: Option<Overlay>,
    groups: Option<Groups>,
    /// Serves peer requests for the groups; ends after the overlay does.
    groups_task: Option<JoinHandle<()>>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<()>>,
}

impl Node {
    /// Binds the gRPC address, opens storage and starts serving.
    pub async fn start(config: &NodeConfig) -> Result<Self> {
        let listener = TcpListener::bind(config.grpc_listen)
            .await
            .map_err(|source| Error::Listen {
                addr: config.grpc_listen,
                source,
            })?;
        let grpc_addr = listener.local_addr().map_err(|source| Error::Io {
            context: "reading the bound address".into(),
            source,
        })?;
        let (topics, store) = open_topics(config).await?;
        let mut info = config.info.clone();
        info.grpc_addr = Some(format!("http://{grpc_addr}"));
        let (api, overlay, groups, groups_task) = match &config.cluster {
            Some(cluster) => {
                let mut overlay = start_overlay(config, cluster, info.clone()).await?;
                let inbound = std::mem::replace(&mut overlay.inbound, mpsc::channel(1).1);
                let (groups, task) = Groups::new(
                    store,
                    topics.clone(),
                    Arc::new(overlay.client.clone()),
                    inbound,
                );
                let held = groups.load_all().await?;
                tracing::info!(groups = held, "raft groups loaded (each runs when used)");
                let api = ClusterTopics::new(
                    topics,
                    groups.clone(),
                    Arc::new(overlay.client.clone()),
                    info.clone(),
                );
                tokio::spawn(api.clone().maintain(cluster.repair_after));
                (
                    TopicApi::Cluster(Box::new(api)),
                    Some(overlay),
                    Some(groups),
                    Some(task),
                )
            }
            None => (TopicApi::Local(topics), None, None, None),
        };
        let cluster = Cluster::new(info.clone(), overlay.as_ref().map(|o| o.client.clone()));
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(listener, api, cluster, async {
            let _ = stopped.await;
        }));
        tracing::info!(%grpc_addr, data_dir = %config.data_dir.display(), "node serving");
        Ok(Self {
            grpc_addr,
            info,
            overlay,
            groups,
            groups_task,
            stop: Some(stop),
            task,
        })
    }

    /// Where clients reach the node.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// `http://ADDR`, as clients want it.
    pub fn url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// This node's overlay, if it is in a cluster.
    pub fn overlay(&self) -> Option<&woof_overlay::Client> {
        self.overlay.as_ref().map(|o| &o.client)
    }

    /// What this node advertises.
    pub fn info(&self) -> &woof_overlay::NodeInfo {
        &self.info
    }

    /// This node's Raft groups, if it is in a cluster.
    pub fn groups(&self) -> Option<&Groups> {
        self.groups.as_ref()
    }

    /// Stops the node and waits until its storage is closed.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = self.wait().await;
        if let Some(groups) = self.groups.take() {
            groups.shutdown().await;
        }
        if let Some(overlay) = self.overlay.take() {
            overlay.shutdown().await;
        }
        if let Some(task) = self.groups_task.take() {
            let _ = task.await;
        }
        result
    }

    /// Waits until the node stops (it stops by itself only on a fatal error).
    pub async fn wait(&mut self) -> Result<()> {
        match (&mut self.task).await {
            Ok(result) => result,
            Err(e) => Err(Error::Internal(format!("node task failed: {e}"))),
        }
    }

    /// Asks the node to stop without waiting.
    pub fn request_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Starts the overlay with the node's identity from its data directory.
async fn start_overlay(
    config: &NodeConfig,
    cluster: &crate::config::ClusterConfig,
    info: woof_overlay::NodeInfo,
) -> Result<Overlay> {
    let keypair = woof_overlay::identity::load_or_create(&config.data_dir.join("node.key"))?;
    let overlay = woof_overlay::start(OverlayConfig {
        keypair,
        cluster_key: Some(cluster.key),
        listen: cluster.listen.clone(),
        join: cluster.join.clone(),
        info,
        timing: cluster.timing,
        join_timeout: cluster.join_timeout,
    })
    .await?;
    tracing::info!(
        peer_id = %overlay.client.peer_id(),
        addrs = ?overlay.client.listen_addrs(),
        key = %cluster.key.fingerprint(),
        "overlay up"
    );
    Ok(overlay)
}
