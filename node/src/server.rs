//! Running a node: open the store, load the topics, serve gRPC until stopped.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::TryStreamExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::Server;
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};
use woof_consensus::store::RocksStore;
use woof_consensus::{SystemClock, Topics};
use woof_overlay::{Overlay, OverlayConfig};
use woof_proto::MESSAGE_BYTES_MAX;
use woof_proto::v1::woof_server::WoofServer;

use crate::api::{ClusterTopics, TopicApi};
use crate::cluster::Cluster;
use crate::config::NodeConfig;
use crate::devices::gateway::Gateway;
use crate::error::{Error, Result};
use crate::groups::Groups;
use crate::grpc::Service;
use crate::grpc::health::Health;
use crate::shutdown::Shutdown;

/// Requests one client connection may have in flight at once.
const REQUESTS_PER_CONNECTION_MAX: usize = 1024;

/// How long a stopping server lets requests under way finish and clients
/// read what their streams still hold, before it cuts their connections.
pub const DRAIN_MAX: Duration = Duration::from_secs(5);

/// The most bytes of request headers (metadata) a client may send: a token
/// is at most 4 KiB ([`crate::auth::TOKEN_BYTES_MAX`]).
const HEADER_LIST_BYTES_MAX: u32 = 64 * 1024;

/// How long a stopping node still takes requests after its health turned
/// NOT_SERVING, so that those watching it hear it before the port closes.
const NOT_SERVING_GRACE: Duration = Duration::from_millis(100);

/// How long [`Node::stop`], once every task it started has ended, waits for
/// the last other references to the store to go. Two kinds end just after
/// the tasks that started them, and cannot be awaited: a store call on the
/// blocking pool whose future was dropped (a client went away, a
/// subscription was stopped), which cannot be cancelled; and openraft's
/// state machine worker and replication tasks, which `Raft::shutdown` does
/// not join (they end once the core that fed them is gone). They take
/// milliseconds; a reference held past this is a bug, and stop says so.
const STORE_RELEASE_WAIT: Duration = Duration::from_secs(2);

/// Binds `addr`, if given (`--metrics-listen`, `--http-listen`).
async fn bind_optional(
    addr: Option<SocketAddr>,
) -> Result<(Option<TcpListener>, Option<SocketAddr>)> {
    let Some(addr) = addr else {
        return Ok((None, None));
    };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Listen { addr, source })?;
    let bound = listener.local_addr().map_err(|source| Error::Io {
        context: format!("reading the address bound for {addr}"),
        source,
    })?;
    Ok((Some(listener), Some(bound)))
}

/// Opens the node's storage in `config.data_dir` and loads its topics.
pub async fn open_topics(config: &NodeConfig) -> Result<(Topics, Arc<RocksStore>)> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| Error::Io {
        context: format!("cannot create data directory {}", config.data_dir.display()),
        source,
    })?;
    let dir = config.data_dir.join("db");
    let store = tokio::task::spawn_blocking(move || RocksStore::open(&dir))
        .await
        .map_err(|e| Error::Internal(format!("opening storage failed: {e}")))??;
    let store = Arc::new(store);
    let topics = Topics::open(store.clone(), Arc::new(SystemClock)).await?;
    Ok((topics, store))
}

/// Serves `topics` on `listener` until `shutdown` resolves (and the
/// dashboard on `dashboard`, if given), with gRPC health
/// (SERVING until then, or until a write to `store` fails) and server
/// reflection beside it; then turns NOT_SERVING, stops the
/// topics (queued appends fail as UNAVAILABLE, subscriptions end) and returns
/// once every request has finished and every subscription task has ended.
/// Connections still open [`DRAIN_MAX`] after the signal (a client that
/// stopped reading its stream) are cut.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    listener: TcpListener,
    topics: TopicApi,
    cluster: Cluster,
    store: Weak<RocksStore>,
    metrics: crate::metrics::Metrics,
    security: &crate::config::Security,
    auth: Option<Arc<crate::auth::Authority>>,
    dashboard: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    // The subscription tasks: they end on this signal, and are awaited
    // before returning.
    let streams = Shutdown::new();
    let (health, health_service) = Health::new();
    let reflection = crate::grpc::health::reflection()?;
    health.serving().await;
    streams.spawn(health.clone().watch_storage(store, streams.clone()));
    let service = Arc::new(
        Service::new(topics.clone(), cluster, streams.clone())
            .with_metrics(metrics.clone())
            .with_auth(auth)
            .with_client_tls(security.client_tls.clone()),
    );
    if let Some(listener) = dashboard {
        // Its connections hold the service: they are tasks on `streams`,
        // which end with the subscriptions.
        streams.spawn(crate::dashboard::serve(
            listener,
            security.https.clone(),
            service.clone(),
            streams.clone(),
        ));
    }
    let service = WoofServer::from_arc(service)
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX);
    let cut = CancellationToken::new();
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .map_ok({
            let cut = cut.clone();
            move |socket| Severable::new(socket, cut.clone())
        });
    let stopping = async {
        shutdown.await;
        // Before the port closes: a load balancer watching the health
        // sends no new requests here.
        health.not_serving("the node is stopping").await;
        tokio::time::sleep(NOT_SERVING_GRACE).await;
        tracing::info!("shutting down");
        // Streams end, so that the connections that carry them can close.
        streams.request();
        topics.shutdown().await;
    };
    let mut builder = Server::builder();
    if let Some(tls) = &security.tls {
        builder = builder
            .tls_config(tls.clone())
            .map_err(|e| Error::Tls(crate::auth::tls::chain(&e)))?;
    }
    let serving = builder
        .http2_max_header_list_size(HEADER_LIST_BYTES_MAX)
        .concurrency_limit_per_connection(REQUESTS_PER_CONNECTION_MAX)
        .trace_fn(crate::grpc::request_span)
        .layer(crate::metrics::http::RequestLayer(metrics))
        .add_service(service)
        .add_service(health_service)
        .add_service(reflection)
        .serve_with_incoming_shutdown(incoming, stopping);
    // Each connection holds the service, and so the store: the server
    // waits for them all to close, and those that do not close in time are
    // cut.
    let cutting = async {
        streams.requested().await;
        tokio::time::sleep(DRAIN_MAX).await;
        tracing::warn!("cutting the client connections still open");
        cut.cancel();
        std::future::pending::<()>().await;
    };
    let served = tokio::select! {
        served = serving => served,
        () = cutting => unreachable!("cutting never ends"),
    };
    // Also when the server failed without being asked to stop: nothing it
    // started outlives it.
    streams.stop().await;
    topics.shutdown().await;
    served?;
    Ok(())
}

/// A node running in this process: for `woof node start`, the demo and tests.
///
/// Everything it starts is stopped and awaited by [`Node::stop`], which
/// returns once the store is closed: a node can be started again on the same
/// directory, in the same process, right after.
pub struct Node {
    grpc_addr: SocketAddr,
    /// Whether the client API is served over TLS (`https://`).
    tls: bool,
    info: woof_overlay::NodeInfo,
    /// The stop signal, and the tasks started here: the gRPC server and,
    /// in a cluster, repair.
    shutdown: Shutdown,
    /// The gRPC server; `None` once it has ended and was awaited.
    server: Option<JoinHandle<Result<()>>>,
    /// Stopped after the server, in case the server never ran (a failed
    /// start) or failed (the server stops them itself when it ends).
    topics: Option<Topics>,
    overlay: Option<Overlay>,
    groups: Option<Groups>,
    /// Serves peer requests for the groups; ends after the overlay does.
    groups_task: Option<JoinHandle<()>>,
    /// Held so that [`Node::stop`] can tell that nothing else holds the
    /// store any more, and close it itself.
    store: Option<Arc<RocksStore>>,
    /// The bridge gateway, if the node serves devices.
    gateway: Option<Gateway>,
    /// What `/metrics` shows, and where it is served (`--metrics-listen`).
    metrics: crate::metrics::Metrics,
    metrics_addr: Option<SocketAddr>,
    /// Where the dashboard is served, if it is (`--http-listen`).
    http_addr: Option<SocketAddr>,
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
        let (metrics_listener, metrics_addr) = bind_optional(config.metrics_listen).await?;
        let (http_listener, http_addr) = bind_optional(config.http_listen).await?;
        let tls = config.security.tls.is_some();
        if !tls && !grpc_addr.ip().is_loopback() {
            tracing::warn!(
                %grpc_addr,
                "the client API listens beyond loopback WITHOUT TLS: requests and tokens cross \
                 the network unencrypted and the node is not authenticated to its clients \
                 (start it with --tls-cert and --tls-key)"
            );
        }
        if config.security.token_root.is_none() && !grpc_addr.ip().is_loopback() {
            tracing::warn!(
                %grpc_addr,
                "the client API listens beyond loopback WITHOUT --require-token: anyone who \
                 reaches this port may read, write and delete every topic"
            );
        }
        if let Some(addr) = http_addr.filter(|a| !tls && !a.ip().is_loopback()) {
            tracing::warn!(
                %addr,
                "the dashboard listens beyond loopback over plain HTTP: the tokens browsers give \
                 it cross the network unencrypted (start the node with --tls-cert and --tls-key \
                 and it serves HTTPS, or keep it on loopback)"
            );
        }
        let (topics, store) = open_topics(config).await?;
        let mut info = config.info.clone();
        let scheme = if tls { "https" } else { "http" };
        info.grpc_addr = Some(format!("{scheme}://{grpc_addr}"));
        let mut node = Self {
            grpc_addr,
            tls,
            info,
            shutdown: Shutdown::new(),
            server: None,
            topics: Some(topics),
            overlay: None,
            groups: None,
            groups_task: None,
            store: Some(store),
            gateway: None,
            metrics: crate::metrics::Metrics::new(),
            metrics_addr,
            http_addr,
        };
        if let Some(listener) = metrics_listener {
            node.shutdown.spawn(crate::metrics::http::serve(
                listener,
                node.metrics.clone(),
                node.shutdown.clone(),
            ));
            tracing::info!(addr = ?metrics_addr, "serving metrics at /metrics");
        }
        if let Some(addr) = http_addr {
            tracing::info!(%addr, "serving the dashboard at {scheme}://{addr}/");
        }
        if let Err(e) = node.serve(config, listener, http_listener).await {
            // Whatever started stops, and the store is closed again.
            node.shutdown.request();
            if let Err(stop) = node.release().await {
                tracing::warn!("stopping after a failed start: {stop}");
            }
            return Err(e);
        }
        tracing::info!(%grpc_addr, data_dir = %config.data_dir.display(), "node serving");
        Ok(node)
    }

    /// Starts the overlay and the groups (in a cluster), then the server.
    async fn serve(
        &mut self,
        config: &NodeConfig,
        listener: TcpListener,
        dashboard: Option<TcpListener>,
    ) -> Result<()> {
        let (Some(topics), Some(store)) = (self.topics.clone(), self.store.clone()) else {
            return Err(Error::Internal("a node serves once".into()));
        };
        // Health turns NOT_SERVING if a write fails; it holds no reference.
        let store_seen = Arc::downgrade(&store);
        let api = match &config.cluster {
            Some(cluster) => {
                let (mut overlay, rejoined) =
                    start_overlay(config, cluster, self.info.clone()).await?;
                let client = overlay.client.clone();
                let inbound = vec![
                    std::mem::replace(&mut overlay.inbound, mpsc::channel(1).1),
                    std::mem::replace(&mut overlay.link_inbound, mpsc::channel(1).1),
                ];
                self.overlay = Some(overlay);
                let (groups, held, task) = Groups::open(
                    store,
                    topics.clone(),
                    Arc::new(client.clone()),
                    inbound,
                    Default::default(),
                )
                .await?;
                groups.balance_leaders(cluster.balance_leaders);
                self.groups = Some(groups.clone());
                self.groups_task = Some(task);
                self.metrics.watch_groups(groups.clone());
                self.metrics.watch_overlay(client.clone());
                tracing::info!(groups = held, "raft groups loaded (each runs when used)");
                let me = client.peer_id();
                let mut api = ClusterTopics::new(
                    topics,
                    groups.clone(),
                    Arc::new(client.clone()),
                    self.info.clone(),
                );
                if let Some(program) = &config.python_worker {
                    api = api.with_python_worker(program.clone());
                }
                api = api.with_metrics(&self.metrics);
                // The cluster's first node makes its name directory (the
                // others are added to it by repair as they join). A node
                // that knew others is not a first node, with or without
                // --join: a directory of its own would split the cluster's.
                if cluster.join.is_empty() && !rejoined {
                    api.bootstrap_directory(&[me]).await?;
                }
                self.shutdown.spawn(
                    crate::cluster::KnownPeers::in_dir(&config.data_dir)
                        .keep(client.clone(), self.shutdown.clone()),
                );
                self.shutdown.spawn(
                    api.clone()
                        .maintain(cluster.repair_after, self.shutdown.clone()),
                );
                crate::handlers::Supervisor::spawn(api.clone(), groups, self.shutdown.clone());
                if !config.bridge_listen.is_empty() {
                    let gateway =
                        Gateway::start(&config.bridge_listen, api.clone(), self.shutdown.clone())
                            .await?;
                    self.metrics.watch_gateway(gateway.shared_counts());
                    self.gateway = Some(gateway);
                }
                TopicApi::Cluster(Box::new(api))
            }
            None => TopicApi::Local(topics),
        };
        let cluster = Cluster::new(
            self.info.clone(),
            self.overlay.as_ref().map(|o| o.client.clone()),
        );
        let auth = config.security.token_root.map(|root| {
            let revoked = crate::auth::Revoked::default();
            self.shutdown.spawn(crate::auth::revocation::follow(
                api.clone(),
                revoked.clone(),
                self.shutdown.clone(),
            ));
            tracing::info!(root = %root, "every request needs a token signed by this root key");
            Arc::new(crate::auth::Authority::new(root, revoked))
        });
        let shutdown = self.shutdown.clone();
        let metrics = self.metrics.clone();
        let security = config.security.clone();
        self.server = Some(self.shutdown.spawn(async move {
            run(
                listener,
                api,
                cluster,
                store_seen,
                metrics,
                &security,
                auth,
                dashboard,
                async move {
                    shutdown.requested().await;
                },
            )
            .await
        }));
        Ok(())
    }

    /// The bridge gateway, if it serves devices (`--bridge-listen`).
    pub fn gateway(&self) -> Option<&Gateway> {
        self.gateway.as_ref()
    }

    /// Where clients reach the node.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Where `/metrics` is served, if it is (`--metrics-listen`).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Where the dashboard is served, if it is (`--http-listen`).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// `http://ADDR` (`https://` with TLS), as clients want it.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.grpc_addr)
    }

    /// This node's overlay, if it is in a cluster.
    pub fn overlay(&self) -> Option<&woof_overlay::Client> {
        self.overlay.as_ref().map(|o| &o.client)
    }

    /// What this node advertises.
    pub fn info(&self) -> &woof_overlay::NodeInfo {
        &self.info
    }

    /// This node's Raft groups, if it is in a cluster. A clone taken from
    /// here holds the store: drop it before [`Node::stop`].
    pub fn groups(&self) -> Option<&Groups> {
        self.groups.as_ref()
    }

    /// Stops the node: the other nodes are told it leaves (at most half a
    /// second), the groups this node leads go to other voters (at most a
    /// second), the server stops taking requests and lets those under way
    /// finish (forwarded to the new leaders), subscriptions end, then
    /// repair stops, and the groups and the overlay stop, each
    /// awaited. Returns once the store is closed, or an error if something
    /// still holds it (a task that outlived the node: a bug).
    pub async fn stop(self) -> Result<()> {
        self.stop_as(Leaving::HandingOver).await
    }

    /// Stops the node as [`Node::stop`] does, but hands no leadership
    /// over: it leads its groups to the end, so to its peers it is simply
    /// gone, as after a crash, and they wait out its lease and elect
    /// another leader (the demo's failover).
    pub async fn stop_abruptly(self) -> Result<()> {
        self.stop_as(Leaving::Abruptly).await
    }

    async fn stop_as(mut self, leaving: Leaving) -> Result<()> {
        self.shutdown.request();
        let handing_over = leaving == Leaving::HandingOver;
        // First its peers take it for gone, not after seconds of silence:
        // the handlers placed here move at once, and their balance hands it
        // no leadership from now on (ADR 41): one it took while it stops
        // would go down with it, and wait out a lease and an election.
        if let (true, Some(overlay)) = (handing_over, &self.overlay) {
            overlay.leave().await;
        }
        // Then, while the server drains: the groups go on under their next
        // leaders, and what this node still serves is forwarded to them.
        if let (true, Some(groups)) = (handing_over, &self.groups) {
            groups.hand_over_leadership().await;
        }
        let served = self.wait().await;
        // A move a peer's balance started before it heard that this node
        // leaves may have landed since: hand that over too (at once if this
        // node leads nothing).
        if let (true, Some(groups)) = (handing_over, &self.groups) {
            groups.hand_over_leadership().await;
        }
        let released = self.release().await;
        served.and(released)
    }

    /// After the server ended: stops the rest in order, and closes the store.
    async fn release(&mut self) -> Result<()> {
        self.shutdown.stop().await;
        // The metrics read the groups, which hold the store.
        self.metrics.unwatch();
        if let Some(topics) = self.topics.take() {
            topics.shutdown().await;
        }
        let mut result = Ok(());
        if let Some(groups) = self.groups.take() {
            result = groups.shutdown().await;
        }
        if let Some(overlay) = self.overlay.take() {
            // Its event loop and links end, and with them the inbound
            // channels.
            overlay.shutdown().await;
        }
        if let Some(task) = self.groups_task.take()
            && let Err(e) = task.await
            && result.is_ok()
        {
            result = Err(Error::Internal(format!(
                "the groups' peer task failed: {e}"
            )));
        }
        result.and(self.close_store().await)
    }

    /// Closes the store once this node holds its last reference.
    async fn close_store(&mut self) -> Result<()> {
        let Some(mut store) = self.store.take() else {
            return Ok(());
        };
        let deadline = tokio::time::Instant::now() + STORE_RELEASE_WAIT;
        loop {
            match Arc::try_unwrap(store) {
                Ok(store) => {
                    // Closing flushes and joins RocksDB's threads: not on a
                    // runtime thread.
                    return tokio::task::spawn_blocking(move || drop(store))
                        .await
                        .map_err(|e| Error::Internal(format!("closing the store failed: {e}")));
                }
                Err(held) if tokio::time::Instant::now() >= deadline => {
                    return Err(Error::Internal(format!(
                        "the store is still held {} times after the node stopped \
                         (a task outlived it)",
                        Arc::strong_count(&held) - 1
                    )));
                }
                Err(held) => {
                    store = held;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }

    /// Waits until the node's server stops (by itself only on a fatal
    /// error; [`Node::stop`] still has to be called then). Cancel-safe.
    pub async fn wait(&mut self) -> Result<()> {
        let Some(server) = self.server.as_mut() else {
            return Ok(());
        };
        let ended = server.await;
        self.server = None;
        match ended {
            Ok(result) => result,
            Err(e) => Err(Error::Internal(format!("node task failed: {e}"))),
        }
    }

    /// Asks the node to stop without waiting.
    pub fn request_stop(&mut self) {
        self.shutdown.request();
    }
}

/// Whether a stopping node hands the leadership of its groups over.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Leaving {
    HandingOver,
    Abruptly,
}

impl Drop for Node {
    /// A node dropped without [`Node::stop`] (a test that failed) still
    /// stops serving; only `stop` waits for it and closes the store.
    fn drop(&mut self) {
        self.shutdown.request();
    }
}

/// Starts the overlay with the node's identity from its data directory,
/// joining through `--join` and the nodes it knew in its last run (see
/// [`crate::cluster::KnownPeers`]). Returns it and whether it knew any.
async fn start_overlay(
    config: &NodeConfig,
    cluster: &crate::config::ClusterConfig,
    info: woof_overlay::NodeInfo,
) -> Result<(Overlay, bool)> {
    let keypair = woof_overlay::identity::load_or_create(&config.data_dir.join("node.key"))?;
    let me = keypair.public().to_peer_id();
    let known = crate::cluster::KnownPeers::in_dir(&config.data_dir).load(Some(me))?;
    let rejoined = !known.is_empty();
    // With --join the start waits for any of these to answer; without, the
    // node starts at once and dials the ones it knew in the background.
    let (join, rejoin) = if cluster.join.is_empty() {
        (Vec::new(), known)
    } else {
        let mut join = cluster.join.clone();
        join.extend(known.into_iter().filter(|a| !cluster.join.contains(a)));
        (join, Vec::new())
    };
    let overlay = woof_overlay::start(OverlayConfig {
        keypair,
        cluster_key: Some(cluster.key),
        listen: cluster.listen.clone(),
        join,
        info,
        timing: cluster.timing,
        join_timeout: cluster.join_timeout,
        rejoin,
        link_port: cluster.link_port,
    })
    .await?;
    tracing::info!(
        peer_id = %overlay.client.peer_id(),
        addrs = ?overlay.client.listen_addrs(),
        key = %cluster.key.fingerprint(),
        "overlay up"
    );
    Ok((overlay, rejoined))
}

/// A client connection that fails every read and write once `cut` is
/// cancelled: how a stopping server closes a connection that does not
/// close by itself (the server's own tasks own the socket).
struct Severable {
    socket: TcpStream,
    cut: Pin<Box<WaitForCancellationFutureOwned>>,
    severed: bool,
}

impl Severable {
    fn new(socket: TcpStream, cut: CancellationToken) -> Self {
        Self {
            socket,
            cut: Box::pin(cut.cancelled_owned()),
            severed: false,
        }
    }

    /// An error once cut; else registers to be woken when it is.
    fn check(&mut self, cx: &mut Context<'_>) -> std::io::Result<()> {
        if !self.severed && self.cut.as_mut().poll(cx).is_ready() {
            self.severed = true;
        }
        if self.severed {
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the node is stopping",
            ))
        } else {
            Ok(())
        }
    }
}

impl AsyncRead for Severable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.socket).poll_read(cx, buf)
    }
}

impl AsyncWrite for Severable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.socket).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.socket).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.socket).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.socket).poll_shutdown(cx)
    }
}

impl Connected for Severable {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.socket.connect_info()
    }
}
