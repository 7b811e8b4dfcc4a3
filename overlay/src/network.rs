//! The libp2p swarm and the task that owns it.
//!
//! [`start`] builds the swarm (TCP, optionally the cluster key's private
//! network, noise, yamux; Kademlia, Identify and a request-response protocol),
//! listens, joins, and spawns the event loop. The rest of the node talks to
//! the loop through a [`Client`]: commands on a bounded channel, each with a
//! oneshot for its answer. Requests from peers that are not the overlay's own
//! (Raft, forwarded client calls) come out of [`Overlay::inbound`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::kad::store::{MemoryStore, MemoryStoreConfig};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, Transport, identify, kad, noise, tcp, yamux,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::info::NodeInfo;
use crate::key::ClusterKey;
use crate::link::{LinkPort, Links, PeerAddrs};
use crate::members::{Member, Members, Timing};

/// Identify's protocol version: nodes of other systems are not members.
const PROTOCOL_VERSION: &str = "/woof/1.0.0";
const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/woof/kad/1.0.0");
const RPC_PROTOCOL: StreamProtocol = StreamProtocol::new("/woof/rpc/1.0.0");
/// Commands waiting for the event loop.
const COMMAND_QUEUE: usize = 256;
/// Requests from peers waiting for the node to take them.
const INBOUND_QUEUE: usize = 1024;
/// The largest request or response between nodes.
const MESSAGE_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// Records one node keeps for the DHT.
const RECORDS_MAX: usize = 100_000;
/// The largest record value.
const RECORD_BYTES_MAX: usize = 64 * 1024;
/// How long a request to a peer may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a leaving node waits for its peers to hear that it leaves.
const LEAVE_WAIT: Duration = Duration::from_millis(500);
/// The first wait before dialling the join (or rejoin) addresses again; it
/// doubles up to [`JOIN_RETRY_MAX`], as NATS routes and Consul's
/// `retry_join` do.
const JOIN_RETRY_FIRST: Duration = Duration::from_millis(100);
const JOIN_RETRY_MAX: Duration = Duration::from_secs(5);
/// How long one round of join dials may take before the next: a connection
/// that opens but never identifies itself does not hold up the join.
const JOIN_ROUND_MAX: Duration = Duration::from_secs(10);

/// How to start a node's overlay.
#[derive(Debug, Clone)]
pub struct OverlayConfig {
    pub keypair: Keypair,
    /// Without it the node can only meet other nodes without a key.
    pub cluster_key: Option<ClusterKey>,
    /// Addresses to listen on, such as `/ip4/127.0.0.1/tcp/7800`.
    pub listen: Vec<Multiaddr>,
    /// Nodes to join through, with or without a `/p2p/` peer id.
    pub join: Vec<Multiaddr>,
    pub info: NodeInfo,
    pub timing: Timing,
    /// How long to keep trying the `join` addresses before giving up;
    /// `None` tries until one answers (nodes started together come up in
    /// any order).
    pub join_timeout: Option<Duration>,
    /// Nodes met in an earlier run (kept in the data directory by the node):
    /// dialled at start, and again with backoff whenever this node is
    /// connected to no node of the cluster, without holding up the start.
    pub rejoin: Vec<Multiaddr>,
    /// Where to take links from peers on connections of their own.
    pub link_port: LinkPort,
}

/// A request from a peer for the node above the overlay. Answer through
/// `reply`; dropping it answers with a refusal.
#[derive(Debug)]
pub struct Inbound {
    pub peer: PeerId,
    pub payload: Vec<u8>,
    pub reply: oneshot::Sender<Vec<u8>>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
enum Request {
    Heartbeat(NodeInfo),
    /// Bytes, not a list of numbers: half the size in CBOR, and fast.
    App(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The sender is stopping (a planned stop): take it for gone now.
    Leaving,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
enum Response {
    Heartbeat(NodeInfo),
    App(#[serde(with = "serde_bytes")] Vec<u8>),
    Refused(String),
    /// `Leaving` was heard.
    Left,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    kad: kad::Behaviour<MemoryStore>,
    identify: identify::Behaviour,
    rpc: request_response::cbor::Behaviour<Request, Response>,
    link: libp2p_stream::Behaviour,
}

enum Command {
    Members(oneshot::Sender<Vec<Member>>),
    Request {
        peer: PeerId,
        payload: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>>>,
    },
    PutRecord {
        key: Vec<u8>,
        value: Vec<u8>,
        reply: oneshot::Sender<Result<()>>,
    },
    GetRecord {
        key: Vec<u8>,
        reply: oneshot::Sender<Result<Option<Vec<u8>>>>,
    },
    /// Tell every peer this node leaves; answered once they all heard it
    /// (or failed to). From then on the node sends no heartbeats.
    Leave(oneshot::Sender<()>),
    Shutdown,
}

/// A handle on the overlay; cheap to clone.
#[derive(Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    links: Links,
    peer_id: PeerId,
    listen_addrs: Vec<Multiaddr>,
}

impl Client {
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The addresses this node listens on, with its `/p2p/` id appended.
    pub fn listen_addrs(&self) -> &[Multiaddr] {
        &self.listen_addrs
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)
    }

    /// Every other node heard from, with its state.
    pub async fn members(&self) -> Result<Vec<Member>> {
        self.call(Command::Members).await
    }

    /// Sends `payload` to `peer` and waits for its answer.
    pub async fn request(&self, peer: PeerId, payload: Vec<u8>) -> Result<Vec<u8>> {
        self.call(|reply| Command::Request {
            peer,
            payload,
            reply,
        })
        .await?
    }

    /// Sends `payload` to `peer` on the link between the two (see
    /// [`crate::link`]), not through the event loop, and waits for its
    /// answer, which comes out of the peer's [`Overlay::link_inbound`].
    pub async fn link_request(&self, peer: PeerId, payload: Vec<u8>) -> Result<Vec<u8>> {
        self.links.request(peer, payload, REQUEST_TIMEOUT).await
    }

    /// [`link_request`](Self::link_request) of `head` followed by `body`,
    /// sent without copying `body` to join them.
    pub async fn link_request_parts(
        &self,
        peer: PeerId,
        head: Vec<u8>,
        body: Vec<u8>,
    ) -> Result<Vec<u8>> {
        self.links
            .request_parts(peer, head, body, REQUEST_TIMEOUT)
            .await
    }

    #[cfg(test)]
    pub(crate) fn links(&self) -> &Links {
        &self.links
    }

    /// Outbound links opened so far on connections of their own (ADR 34)
    /// rather than over libp2p.
    pub fn links_opened_direct(&self) -> u64 {
        self.links.opened_direct()
    }

    /// Stores a record in the DHT, on the nodes closest to its key.
    pub async fn put_record(&self, key: Vec<u8>, value: Vec<u8>) -> Result<()> {
        self.call(|reply| Command::PutRecord { key, value, reply })
            .await?
    }

    /// Looks a record up in the DHT.
    pub async fn get_record(&self, key: Vec<u8>) -> Result<Option<Vec<u8>>> {
        self.call(|reply| Command::GetRecord { key, reply }).await?
    }
}

/// A running overlay.
pub struct Overlay {
    pub client: Client,
    /// Requests from peers for the node above.
    pub inbound: mpsc::Receiver<Inbound>,
    /// Requests from peers that came on their links
    /// ([`Client::link_request`]), answered the same way.
    pub link_inbound: mpsc::Receiver<Inbound>,
    task: JoinHandle<()>,
    /// Turns true to stop the links.
    stop: watch::Sender<bool>,
}

impl Overlay {
    /// Tells every connected peer that this node leaves, so that they take
    /// it for gone at once rather than after seconds of silence (handlers
    /// placed on it move, requests stop being routed to it). Waits at most
    /// half a second for them to hear it. From then on the node sends no
    /// heartbeats and answers none, so it stays gone to them until it
    /// starts again. Requests and links still work: call it last before
    /// [`Overlay::shutdown`], on a planned stop only (a crash says nothing).
    pub async fn leave(&self) {
        let heard = self.client.call(Command::Leave);
        if tokio::time::timeout(LEAVE_WAIT, heard).await.is_err() {
            tracing::debug!("not every peer heard that this node leaves");
        }
    }

    /// Stops the event loop and waits for it to end: the swarm, its
    /// listeners and connections are dropped, and [`Overlay::inbound`]
    /// closes. Clones of the [`Client`] answer [`Error::Closed`] from then on.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        let _ = self.client.commands.send(Command::Shutdown).await;
        if let Err(e) = self.task.await {
            tracing::warn!("the overlay's event loop failed: {e}");
        }
    }
}

fn transport(
    keypair: &Keypair,
    cluster_key: Option<ClusterKey>,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>> {
    let noise = noise::Config::new(keypair).map_err(|e| Error::Join(format!("noise: {e}")))?;
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
    let upgrade_timeout = Duration::from_secs(10);
    Ok(match cluster_key {
        Some(key) => {
            let key = key.network_key();
            tcp.and_then(move |socket, _| crate::psk::handshake(socket, key))
                .upgrade(Version::V1Lazy)
                .authenticate(noise)
                .multiplex(yamux::Config::default())
                .timeout(upgrade_timeout)
                .boxed()
        }
        None => tcp
            .upgrade(Version::V1Lazy)
            .authenticate(noise)
            .multiplex(yamux::Config::default())
            .timeout(upgrade_timeout)
            .boxed(),
    })
}

fn behaviour(keypair: &Keypair) -> Behaviour {
    let peer_id = keypair.public().to_peer_id();
    let store = MemoryStore::with_config(
        peer_id,
        MemoryStoreConfig {
            max_records: RECORDS_MAX,
            max_value_bytes: RECORD_BYTES_MAX,
            ..MemoryStoreConfig::default()
        },
    );
    let mut kad_config = kad::Config::new(KAD_PROTOCOL);
    kad_config.set_query_timeout(Duration::from_secs(10));
    kad_config.set_periodic_bootstrap_interval(Some(Duration::from_secs(30)));
    let mut kad = kad::Behaviour::with_config(peer_id, store, kad_config);
    // On loopback and private networks no address is "confirmed external",
    // so Kademlia would stay a client and never be found; every woof node
    // serves the DHT.
    kad.set_mode(Some(kad::Mode::Server));
    let identify = identify::Behaviour::new(identify::Config::new(
        PROTOCOL_VERSION.into(),
        keypair.public(),
    ));
    let codec_config = request_response::Config::default()
        .with_request_timeout(REQUEST_TIMEOUT)
        .with_max_concurrent_streams(256);
    // The cbor codec bounds message sizes; set them to woof's own bound.
    let codec = request_response::cbor::codec::Codec::default()
        .set_request_size_maximum(MESSAGE_BYTES_MAX)
        .set_response_size_maximum(MESSAGE_BYTES_MAX);
    let rpc = request_response::Behaviour::with_codec(
        codec,
        [(RPC_PROTOCOL, ProtocolSupport::Full)],
        codec_config,
    );
    Behaviour {
        kad,
        identify,
        rpc,
        link: libp2p_stream::Behaviour::new(),
    }
}

/// Builds the swarm, listens, joins through `config.join` and starts the
/// event loop. Fails if a listen address cannot be bound, or if `join` is
/// not empty and none of its addresses answers as a node of this cluster
/// within `join_timeout`.
pub async fn start(config: OverlayConfig) -> Result<Overlay> {
    config.info.validate()?;
    let mut info = config.info.clone();
    // Links take their own connections on a port of the first listen
    // address's IP (ADR 34); without one, they go over libp2p.
    let link_ip = config.listen.iter().find_map(ip_of);
    let link_port = match config.link_port {
        LinkPort::Any => Some(0),
        LinkPort::Fixed(port) => Some(port),
        LinkPort::Off => None,
    };
    let link_listener = match link_ip.zip(link_port) {
        Some((ip, port)) => {
            let bound = match tokio::net::TcpListener::bind((ip, port)).await {
                Ok(listener) => listener.local_addr().map(|a| (listener, a.port())),
                Err(e) => Err(e),
            };
            let (listener, port) = bound.map_err(|e| Error::Address {
                addr: format!("{ip}:{port} (for links)"),
                reason: e.to_string(),
            })?;
            info.link_port = Some(port);
            info.link_aes = crate::direct::hardware_aes();
            Some(listener)
        }
        None => None,
    };
    let keypair = config.keypair.clone();
    let peer_id = keypair.public().to_peer_id();
    let transport = transport(&keypair, config.cluster_key)?;
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair.clone())
        .with_tokio()
        .with_other_transport(|_| transport)
        .map_err(|e| Error::Join(format!("transport: {e}")))?
        .with_behaviour(behaviour)
        .map_err(|e| Error::Join(format!("behaviour: {e}")))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();

    let started = Instant::now();
    let mut state = State {
        members: Members::new(config.timing),
        info,
        started,
        early_bootstraps: 0,
        pending_requests: HashMap::new(),
        pending_put: HashMap::new(),
        pending_get: HashMap::new(),
        answering: FuturesUnordered::new(),
        identified: HashSet::new(),
        inbound: None,
        rejoin: Vec::new(),
        rejoin_at: None,
        rejoin_delay: JOIN_RETRY_FIRST,
        link_addrs: Arc::default(),
        leaving: None,
    };

    // Listen, and learn the actual addresses (port 0 becomes a real port).
    let mut listen_addrs = Vec::new();
    for addr in &config.listen {
        swarm.listen_on(addr.clone()).map_err(|e| Error::Address {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?;
    }
    while listen_addrs.len() < config.listen.len() {
        let event = tokio::time::timeout(Duration::from_secs(10), swarm.select_next_some())
            .await
            .map_err(|_| Error::Address {
                addr: format!("{:?}", config.listen),
                reason: "no listen address came up within 10 s".into(),
            })?;
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                listen_addrs.push(address.with_p2p(peer_id).unwrap_or_else(|a| a));
            }
            SwarmEvent::ListenerError { error, .. }
            | SwarmEvent::ListenerClosed {
                reason: Err(error), ..
            } => {
                return Err(Error::Address {
                    addr: format!("{:?}", config.listen),
                    reason: error.to_string(),
                });
            }
            other => state.handle(&mut swarm, other),
        }
    }

    // Join: dial every address; wait until one answers as a woof node,
    // dialling again with backoff (bounded by `join_timeout`, if any).
    if !config.join.is_empty() {
        join(&mut swarm, &mut state, &config.join, config.join_timeout).await?;
        let _ = swarm.behaviour_mut().kad.bootstrap();
    }
    if !config.rejoin.is_empty() {
        tracing::info!(
            peers = config.rejoin.len(),
            "dialling the nodes known from the last run"
        );
        state.rejoin = config.rejoin.clone();
        state.rejoin_at = Some(Instant::now());
    }

    let (commands, commands_rx) = mpsc::channel(COMMAND_QUEUE);
    let (inbound_tx, inbound) = mpsc::channel(INBOUND_QUEUE);
    state.inbound = Some(inbound_tx);
    let (stop, stopped) = watch::channel(false);
    let (link_tx, link_inbound) = mpsc::channel(INBOUND_QUEUE);
    let links = Links::start(
        swarm.behaviour().link.new_control(),
        link_listener,
        crate::direct::Secrets::new(
            keypair.clone(),
            config.cluster_key.as_ref().map(ClusterKey::secret),
        ),
        state.link_addrs.clone(),
        link_tx,
        MESSAGE_BYTES_MAX as usize,
        stopped,
    )?;
    let task = tokio::spawn(state.run(swarm, commands_rx));
    Ok(Overlay {
        client: Client {
            commands,
            links,
            peer_id,
            listen_addrs,
        },
        inbound,
        link_inbound,
        task,
        stop,
    })
}

/// Dials `addrs` in rounds until a node of this cluster identifies itself,
/// waiting [`JOIN_RETRY_FIRST`] after the first failed round, doubling up to
/// [`JOIN_RETRY_MAX`]. Gives up when `timeout` (from the overlay's start)
/// runs out, or at once when every address of a round answered with a failed
/// handshake: a node with another cluster key, which no retry will change.
async fn join(
    swarm: &mut Swarm<Behaviour>,
    state: &mut State,
    addrs: &[Multiaddr],
    timeout: Option<Duration>,
) -> Result<()> {
    let deadline = timeout.map(|t| state.started + t);
    let waited_for = addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let gave_up = |failures: &[String]| {
        let why = if failures.is_empty() {
            "no answer".to_string()
        } else {
            failures.join("; ")
        };
        Error::Join(format!(
            "no node of this cluster answered within {} at {waited_for} ({why})",
            humane(timeout.unwrap_or_default())
        ))
    };
    let mut delay = JOIN_RETRY_FIRST;
    let mut rounds = 0u32;
    loop {
        rounds = rounds.saturating_add(1);
        let mut failures = Vec::new();
        let mut handshakes = 0;
        let mut dialing = 0;
        for addr in addrs {
            match swarm.dial(addr.clone()) {
                Ok(()) => dialing += 1,
                Err(e) => failures.push(format!("{addr}: {e}")),
            }
        }
        let round_end = Instant::now() + JOIN_ROUND_MAX;
        let round_end = deadline.map_or(round_end, |d| d.min(round_end));
        while state.identified.is_empty() && dialing > 0 {
            let Ok(event) = tokio::time::timeout_at(round_end, swarm.select_next_some()).await
            else {
                failures.push("no answer".into());
                break;
            };
            match &event {
                SwarmEvent::OutgoingConnectionError { error, .. } => {
                    dialing -= 1;
                    let (failure, handshake) = join_failure(error);
                    handshakes += usize::from(handshake);
                    failures.push(failure);
                }
                SwarmEvent::ConnectionClosed {
                    cause, endpoint, ..
                } if endpoint.is_dialer() => {
                    dialing -= 1;
                    failures.push(match cause {
                        Some(cause) => format!("connection closed: {cause}"),
                        None => "connection closed".into(),
                    });
                }
                _ => {}
            }
            state.handle(swarm, event);
        }
        if !state.identified.is_empty() {
            if rounds > 1 {
                tracing::info!(rounds, "joined the cluster");
            }
            return Ok(());
        }
        if handshakes > 0 && handshakes == addrs.len() {
            return Err(Error::Join(failures.join("; ")));
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Err(gave_up(&failures));
        }
        tracing::info!(
            "waiting for a node of the cluster at {waited_for} ({}); trying again in {}",
            failures.join("; "),
            humane(delay)
        );
        // The swarm keeps running while waiting: a node that dials this one
        // (one that joins through it) joins it to the cluster too.
        let wake = deadline.map_or(now + delay, |d| d.min(now + delay));
        while state.identified.is_empty() {
            match tokio::time::timeout_at(wake, swarm.select_next_some()).await {
                Ok(event) => state.handle(swarm, event),
                Err(_) => break,
            }
        }
        if !state.identified.is_empty() {
            return Ok(());
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(gave_up(&failures));
        }
        delay = (delay * 2).min(JOIN_RETRY_MAX);
    }
}

/// `250 ms`, `5 s`: durations as people write them.
fn humane(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// One line per failed address: the address and the innermost cause; and
/// whether the handshake failed (the peer has another cluster key).
fn join_failure(error: &libp2p::swarm::DialError) -> (String, bool) {
    use libp2p::swarm::DialError;
    let mut handshake = false;
    let mut innermost = |e: &dyn std::error::Error| {
        let mut shook = false;
        let mut last = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            shook |= s.to_string().contains("andshake");
            last = s.to_string();
            source = s.source();
        }
        if shook || last.contains("andshake") {
            // A peer with another cluster key garbles the handshake.
            handshake = true;
            format!("{last}: handshake failed (a node with a different cluster key?)")
        } else {
            last
        }
    };
    let line = match error {
        DialError::Transport(errors) => errors
            .iter()
            .map(|(addr, e)| format!("{addr}: {}", innermost(e)))
            .collect::<Vec<_>>()
            .join("; "),
        other => innermost(other),
    };
    (line, handshake)
}

type Answer = BoxFuture<'static, (ResponseChannel<Response>, Response)>;

/// Bootstraps in a node's first seconds, beyond the one at its join.
const EARLY_BOOTSTRAPS: u32 = 5;

/// Everything the event loop keeps besides the swarm.
struct State {
    members: Members,
    info: NodeInfo,
    started: Instant,
    /// Kademlia bootstraps done in the first seconds (see
    /// [`State::heartbeat`]).
    early_bootstraps: u32,
    pending_requests: HashMap<OutboundRequestId, oneshot::Sender<Result<Vec<u8>>>>,
    pending_put: HashMap<kad::QueryId, (Vec<u8>, oneshot::Sender<Result<()>>)>,
    pending_get: HashMap<kad::QueryId, oneshot::Sender<Result<Option<Vec<u8>>>>>,
    /// Inbound requests the node is answering.
    answering: FuturesUnordered<Answer>,
    /// Peers whose Identify said they are woof nodes.
    identified: HashSet<PeerId>,
    inbound: Option<mpsc::Sender<Inbound>>,
    /// Nodes known from an earlier run, dialled whenever no node is
    /// connected (see [`OverlayConfig::rejoin`]).
    rejoin: Vec<Multiaddr>,
    /// When to look again whether they must be dialled; `None` without any.
    rejoin_at: Option<Instant>,
    /// The wait after the next dial, doubling while no node answers.
    rejoin_delay: Duration,
    /// Where peers take links, as their connections and heartbeats tell.
    link_addrs: Arc<PeerAddrs>,
    /// Set once the node leaves ([`Overlay::leave`]): the `Leaving`
    /// requests not answered yet, and whom to tell when they all are.
    leaving: Option<(HashSet<OutboundRequestId>, Option<oneshot::Sender<()>>)>,
}

impl State {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    async fn run(mut self, mut swarm: Swarm<Behaviour>, mut commands: mpsc::Receiver<Command>) {
        let mut heartbeat =
            tokio::time::interval(Duration::from_millis(self.members.timing().heartbeat_ms));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = swarm.select_next_some() => self.handle(&mut swarm, event),
                command = commands.recv() => match command {
                    Some(Command::Shutdown) | None => break,
                    Some(command) => self.command(&mut swarm, command),
                },
                Some((channel, response)) = self.answering.next(), if !self.answering.is_empty() => {
                    let _ = swarm.behaviour_mut().rpc.send_response(channel, response);
                }
                _ = heartbeat.tick() => self.heartbeat(&mut swarm),
                _ = tokio::time::sleep_until(self.rejoin_at.unwrap_or_else(Instant::now)),
                    if self.rejoin_at.is_some() => self.rejoin(&mut swarm),
            }
        }
        tracing::debug!("overlay event loop stopped");
    }

    /// Dials the nodes known from an earlier run if no node of the cluster
    /// is connected, backing off while none answers; looks again after
    /// [`JOIN_RETRY_MAX`] while connected.
    fn rejoin(&mut self, swarm: &mut Swarm<Behaviour>) {
        let now = Instant::now();
        if !self.identified.is_empty() {
            self.rejoin_delay = JOIN_RETRY_FIRST;
            self.rejoin_at = Some(now + JOIN_RETRY_MAX);
            return;
        }
        if self.rejoin_delay == JOIN_RETRY_FIRST {
            tracing::info!(
                peers = ?self.rejoin.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "connected to no node of the cluster; dialling the nodes known from before"
            );
        } else {
            tracing::debug!(retry_in = ?self.rejoin_delay, "dialling the known nodes again");
        }
        for addr in &self.rejoin {
            if let Err(e) = swarm.dial(addr.clone()) {
                tracing::debug!(%addr, "cannot dial: {e}");
            }
        }
        self.rejoin_at = Some(now + self.rejoin_delay);
        self.rejoin_delay = (self.rejoin_delay * 2).min(JOIN_RETRY_MAX);
    }

    fn heartbeat(&mut self, swarm: &mut Swarm<Behaviour>) {
        if self.leaving.is_some() {
            return;
        }
        // A node's one bootstrap at its join can ask its join peer before
        // that peer has added the node that joined just before: the two
        // new nodes would then not find each other until the periodic
        // bootstrap, 30 s later. Bootstrap again 1, 2, 4, 8 and 16 s after
        // the start.
        if self.early_bootstraps < EARLY_BOOTSTRAPS
            && self.started.elapsed() >= Duration::from_secs(1 << self.early_bootstraps)
        {
            self.early_bootstraps += 1;
            let _ = swarm.behaviour_mut().kad.bootstrap();
        }
        let mut peers: HashSet<PeerId> = self
            .members
            .snapshot(self.now_ms())
            .into_iter()
            .map(|m| m.peer)
            .collect();
        for bucket in swarm.behaviour_mut().kad.kbuckets() {
            for entry in bucket.iter() {
                peers.insert(*entry.node.key.preimage());
            }
        }
        peers.extend(self.identified.iter().copied());
        for peer in peers {
            swarm
                .behaviour_mut()
                .rpc
                .send_request(&peer, Request::Heartbeat(self.info.clone()));
        }
    }

    fn command(&mut self, swarm: &mut Swarm<Behaviour>, command: Command) {
        match command {
            Command::Members(reply) => {
                let _ = reply.send(self.members.snapshot(self.now_ms()));
            }
            Command::Request {
                peer,
                payload,
                reply,
            } => {
                let id = swarm
                    .behaviour_mut()
                    .rpc
                    .send_request(&peer, Request::App(payload));
                self.pending_requests.insert(id, reply);
            }
            Command::PutRecord { key, value, reply } => {
                let record = kad::Record::new(key.clone(), value);
                match swarm
                    .behaviour_mut()
                    .kad
                    .put_record(record, kad::Quorum::One)
                {
                    Ok(id) => {
                        self.pending_put.insert(id, (key, reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(record_error(&key, e.to_string())));
                    }
                }
            }
            Command::GetRecord { key, reply } => {
                let id = swarm
                    .behaviour_mut()
                    .kad
                    .get_record(kad::RecordKey::new(&key));
                self.pending_get.insert(id, reply);
            }
            Command::Leave(reply) => {
                let rpc = &mut swarm.behaviour_mut().rpc;
                let waiting: HashSet<OutboundRequestId> = self
                    .identified
                    .iter()
                    .map(|peer| rpc.send_request(peer, Request::Leaving))
                    .collect();
                tracing::debug!(peers = waiting.len(), "telling the peers this node leaves");
                self.leaving = Some((waiting, Some(reply)));
                self.left_heard(None);
            }
            Command::Shutdown => unreachable!("handled by run"),
        }
    }

    fn handle(&mut self, swarm: &mut Swarm<Behaviour>, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                if info.protocol_version != PROTOCOL_VERSION {
                    tracing::debug!(%peer_id, version = %info.protocol_version, "not a woof node");
                    return;
                }
                for addr in info.listen_addrs.into_iter().take(8) {
                    swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer_id, addr.clone());
                    self.members.add_address(&peer_id, addr);
                }
                if self.identified.insert(peer_id) && self.leaving.is_none() {
                    // Introduce ourselves at once rather than at the next tick.
                    swarm
                        .behaviour_mut()
                        .rpc
                        .send_request(&peer_id, Request::Heartbeat(self.info.clone()));
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                if let Some(ip) = ip_of(endpoint.get_remote_address()) {
                    self.link_addrs.note_ip(peer_id, ip);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Rpc(event)) => self.rpc(swarm, event),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => self.kad(swarm, event),
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.identified.remove(&peer_id);
            }
            _ => {}
        }
    }

    fn rpc(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        event: request_response::Event<Request, Response>,
    ) {
        use request_response::{Event, Message};
        let now_ms = self.now_ms();
        match event {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => match request {
                Request::Heartbeat(info) => {
                    if info.validate().is_ok() {
                        self.link_addrs
                            .note_port(peer, info.link_port, info.link_aes);
                        self.members.heard(peer, info, now_ms);
                    }
                    // A leaving node does not tell its peers it is alive.
                    let answer = match self.leaving {
                        Some(_) => Response::Refused("the node is leaving".into()),
                        None => Response::Heartbeat(self.info.clone()),
                    };
                    let _ = swarm.behaviour_mut().rpc.send_response(channel, answer);
                }
                Request::App(payload) => self.forward(swarm, peer, payload, channel),
                Request::Leaving => {
                    tracing::info!(%peer, "a node leaves the cluster");
                    self.members.left(&peer);
                    let _ = swarm
                        .behaviour_mut()
                        .rpc
                        .send_response(channel, Response::Left);
                }
            },
            Event::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => match response {
                Response::Heartbeat(info) => {
                    if info.validate().is_ok() {
                        self.link_addrs
                            .note_port(peer, info.link_port, info.link_aes);
                        self.members.heard(peer, info, now_ms);
                    }
                }
                Response::App(payload) => {
                    if let Some(reply) = self.pending_requests.remove(&request_id) {
                        let _ = reply.send(Ok(payload));
                    }
                }
                Response::Left => self.left_heard(Some(request_id)),
                Response::Refused(reason) => {
                    if let Some(reply) = self.pending_requests.remove(&request_id) {
                        let _ = reply.send(Err(Error::Request {
                            peer: peer.to_string(),
                            reason,
                        }));
                    }
                }
            },
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some(reply) = self.pending_requests.remove(&request_id) {
                    let _ = reply.send(Err(Error::Request {
                        peer: peer.to_string(),
                        reason: error.to_string(),
                    }));
                }
                self.left_heard(Some(request_id));
            }
            Event::InboundFailure { .. } | Event::ResponseSent { .. } => {}
        }
    }

    /// A `Leaving` request was answered (or failed): once none is left,
    /// the node's [`Overlay::leave`] returns.
    fn left_heard(&mut self, request: Option<OutboundRequestId>) {
        let Some((waiting, reply)) = &mut self.leaving else {
            return;
        };
        if let Some(request) = request {
            waiting.remove(&request);
        }
        if waiting.is_empty()
            && let Some(reply) = reply.take()
        {
            let _ = reply.send(());
        }
    }

    /// Hands an application request to the node, and queues its answer.
    fn forward(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        peer: PeerId,
        payload: Vec<u8>,
        channel: ResponseChannel<Response>,
    ) {
        let (reply, answer) = oneshot::channel();
        let refused = |reason: &str| Response::Refused(reason.to_string());
        let Some(inbound) = &self.inbound else {
            let _ = swarm
                .behaviour_mut()
                .rpc
                .send_response(channel, refused("the node is starting"));
            return;
        };
        match inbound.try_send(Inbound {
            peer,
            payload,
            reply,
        }) {
            Ok(()) => self.answering.push(Box::pin(async move {
                let response = match answer.await {
                    Ok(payload) => Response::App(payload),
                    Err(_) => Response::Refused("the node dropped the request".into()),
                };
                (channel, response)
            })),
            Err(_) => {
                let _ = swarm
                    .behaviour_mut()
                    .rpc
                    .send_response(channel, refused("the node is busy; retry"));
            }
        }
    }

    fn kad(&mut self, swarm: &mut Swarm<Behaviour>, event: kad::Event) {
        let kad::Event::OutboundQueryProgressed { id, result, .. } = event else {
            return;
        };
        match result {
            kad::QueryResult::PutRecord(result) => {
                if let Some((key, reply)) = self.pending_put.remove(&id) {
                    let _ = reply.send(
                        result
                            .map(|_| ())
                            .map_err(|e| record_error(&key, e.to_string())),
                    );
                }
            }
            kad::QueryResult::GetRecord(Ok(kad::GetRecordOk::FoundRecord(found))) => {
                if let Some(reply) = self.pending_get.remove(&id) {
                    let _ = reply.send(Ok(Some(found.record.value)));
                    if let Some(mut query) = swarm.behaviour_mut().kad.query_mut(&id) {
                        query.finish();
                    }
                }
            }
            kad::QueryResult::GetRecord(Ok(kad::GetRecordOk::FinishedWithNoAdditionalRecord {
                ..
            })) => {
                if let Some(reply) = self.pending_get.remove(&id) {
                    let _ = reply.send(Ok(None));
                }
            }
            kad::QueryResult::GetRecord(Err(e)) => {
                if let Some(reply) = self.pending_get.remove(&id) {
                    let answer = match e {
                        kad::GetRecordError::NotFound { .. } => Ok(None),
                        other => Err(record_error(other.key().as_ref(), other.to_string())),
                    };
                    let _ = reply.send(answer);
                }
            }
            _ => {}
        }
    }
}

fn record_error(key: &[u8], reason: String) -> Error {
    Error::Record {
        key: String::from_utf8_lossy(key).into_owned(),
        reason,
    }
}

/// The IP address in `addr` (`/ip4/…` or `/ip6/…`), if any.
fn ip_of(addr: &Multiaddr) -> Option<std::net::IpAddr> {
    addr.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::Ip4(ip) => Some(ip.into()),
        libp2p::multiaddr::Protocol::Ip6(ip) => Some(ip.into()),
        _ => None,
    })
}
