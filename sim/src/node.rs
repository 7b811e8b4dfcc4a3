//! The simulated cluster: N nodes, each a [`SimStore`], a [`Topics`] with a
//! simulated clock, the node's own group layer ([`Groups`]: the Raft
//! groups it holds, forwarding to leaders, group commit, sleeping groups) on
//! the simulated network, and the node's own cluster topic API
//! ([`ClusterTopics`]: create and delete through the DHT, lookups, the
//! local-or-leader read choice, remote follow, and repair, which each node
//! runs as `woof node` does) on the simulated DHT and member view; and T
//! topics, each created through a node's `ClusterTopics` (from different
//! nodes), which places it on R nodes by woof's placement (the nodes'
//! identities drawn with the seed).
//!
//! A node crashes as a machine losing power: its disk keeps what was synced
//! (and a prefix of the rest) and refuses every later call, the network
//! forgets it, and its groups and topics are shut down (they can do nothing
//! any more). A restart is a new incarnation on the disk's durable state: a
//! fresh store view, `Topics` and `Groups`, which knows every group the disk
//! holds and starts each when it is needed, as `woof node` does.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;
use woof_consensus::store::GroupId;
use woof_consensus::topic::handlers::{Code, From, HandlerSpec};
use woof_consensus::topic::{TopicConfig, TopicId};
use woof_consensus::{Clock, Topics};
use woof_node::api::{ClusterTopics, TopicView};
use woof_node::groups::Groups;
use woof_overlay::{Keypair, NodeInfo, PeerId, Tier};

use crate::Error;
use crate::config::{Broken, Rates};
use crate::history::Recorder;
use crate::joins::Joins;
use crate::net::SimNet;
use crate::rng::SimRng;
use crate::store::SimStore;

/// The handler every run binds to its first topic, and where it writes.
pub const HANDLER: &str = "copy";
pub const HANDLED_OUT: &str = "sim/handled";

/// How long shutting a group or a node's topics down may take.
const SHUTDOWN_MS_MAX: u64 = 2_000;
/// The wall-clock time a run starts at (2026-01-01): only stamped on
/// elements, never decided on.
const EPOCH_MS: u64 = 1_767_225_600_000;

/// A node's wall clock: the simulated time plus the node's own offset.
pub struct SimClock {
    start: tokio::time::Instant,
    offset_ms: AtomicI64,
}

impl SimClock {
    fn new(start: tokio::time::Instant) -> Self {
        Self {
            start,
            offset_ms: AtomicI64::new(0),
        }
    }

    /// Moves this node's clock by `ms` (a clock jump).
    pub fn jump(&self, ms: i64) {
        self.offset_ms.fetch_add(ms, Ordering::Relaxed);
    }
}

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        let now = EPOCH_MS + self.start.elapsed().as_millis() as u64;
        now.saturating_add_signed(self.offset_ms.load(Ordering::Relaxed))
    }
}

/// One topic of the run and where its replicas live.
#[derive(Debug, Clone)]
pub struct TopicPlan {
    pub index: usize,
    /// Its group, as its creation chose it (0 until it is created).
    pub group: GroupId,
    pub name: String,
    /// Node ids, in the order placement chose them when it was created
    /// (repair may replace some: [`Cluster::voters`] says where it lives
    /// now).
    pub replicas: Vec<u64>,
    /// The replica constraint placement honoured, if any.
    pub constraint: Option<String>,
}

/// The constraint every third topic is placed by (when the cluster has the
/// nodes for it): one replica at the edge, two in the cloud.
const EDGE_AND_CLOUD: &str = "tier=edge:1,tier=cloud:2";

/// A node's peer id and what it advertises.
type Identity = (PeerId, NodeInfo);

/// The nodes' identities, drawn from the seed, and what they advertise:
/// the first third at the edge, the rest in the cloud; and the topics,
/// named and given their constraint (every third one, when the cluster has
/// the nodes for it, one replica at the edge and two in the cloud), to be
/// placed when they are created.
fn draw_nodes(
    nodes: u64,
    topics: usize,
    replication: usize,
    rng: &mut SimRng,
) -> Result<(Vec<Identity>, Vec<TopicPlan>), Error> {
    let edge_nodes = nodes.div_ceil(3);
    let peers = (1..=nodes)
        .map(|id| {
            let mut secret = [0u8; 32];
            for chunk in secret.chunks_mut(8) {
                chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
            }
            let key = Keypair::ed25519_from_bytes(secret)
                .map_err(|e| Error::Setup(format!("node {id}'s identity: {e}")))?;
            let tier = if id <= edge_nodes {
                Tier::Edge
            } else {
                Tier::Cloud
            };
            Ok((key.public().to_peer_id(), NodeInfo::new(tier)))
        })
        .collect::<Result<_, Error>>()?;
    let mixed = replication == 3 && edge_nodes >= 1 && nodes - edge_nodes >= 2;
    let plans = (0..topics)
        .map(|index| TopicPlan {
            index,
            group: GroupId(0),
            name: format!("sim/t{index}"),
            replicas: Vec::new(),
            constraint: (mixed && index % 3 == 2).then(|| EDGE_AND_CLOUD.to_string()),
        })
        .collect();
    Ok((peers, plans))
}

impl TopicPlan {
    pub fn topic_id(&self) -> TopicId {
        TopicId(self.group.0)
    }
}

/// Peer requests a node queues before its serving loop takes them (the
/// overlay's inbound queue in a real node).
const INBOUND_DEPTH: usize = 1024;

/// A running incarnation of a node: its topics and its group layer (the
/// node's own `Groups`: forwarding to leaders, group commit, sleeping
/// groups), serving peer requests from its inbound queue.
struct Up {
    topics: Topics,
    groups: Groups,
    api: ClusterTopics,
    serve: tokio::task::JoinHandle<()>,
    /// The node's repair loop (`ClusterTopics::maintain`).
    maintain: tokio::task::JoinHandle<()>,
    /// Stops the node's handler supervisor and its runners.
    handling: woof_node::shutdown::Shutdown,
}

struct Node {
    incarnation: u64,
    store: Arc<SimStore>,
    clock: Arc<SimClock>,
    up: Option<Up>,
}

/// Every node of a run.
pub struct Cluster {
    pub rec: Arc<Recorder>,
    pub net: Arc<SimNet>,
    pub plans: Vec<TopicPlan>,
    /// Replicas per topic.
    pub replication: usize,
    /// How long a replica's node may be silent before repair replaces it.
    pub repair_after: Duration,
    /// The random numbers the nodes' `ClusterTopics` draw group ids from.
    ids: Arc<Mutex<SimRng>>,
    /// Voters made before they held the log, as the nodes' disks tell.
    pub joins: Arc<Joins>,
    nodes: Mutex<BTreeMap<u64, Node>>,
    /// Node 1's disk stores payloads reversed ([`Broken::DivergentReplica`]).
    corrupt_node_1: bool,
    /// Every group's timing (the node's unless `--snapshot-every`).
    pub group_timing: woof_consensus::raft::group::Timing,
    /// Leaderships that nodes stopped on purpose handed to another node.
    pub handed_over: std::sync::atomic::AtomicU64,
}

impl Cluster {
    /// `nodes` nodes (see [`draw_nodes`]) on a network drawn from
    /// `net_rng`, and the plans of `topics` topics of `replication`
    /// replicas each, to be created with [`create_topics`](Self::create_topics).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        rec: Arc<Recorder>,
        net_rng: SimRng,
        nodes: u64,
        topics: usize,
        replication: usize,
        rng: &mut SimRng,
        broken: Option<Broken>,
        repair_after: Duration,
    ) -> Result<Self, Error> {
        let corrupt_node_1 = broken == Some(Broken::DivergentReplica);
        let start = tokio::time::Instant::now();
        let (peers, plans) = draw_nodes(nodes, topics, replication, rng)?;
        let ids = Arc::new(Mutex::new(rng.fork("group ids")));
        let net = SimNet::new(rec.clone(), net_rng, Rates::none(), peers);
        let nodes: BTreeMap<u64, Node> = (1..=nodes)
            .map(|id| {
                (
                    id,
                    Node {
                        incarnation: 0,
                        store: Arc::new(SimStore::new()),
                        clock: Arc::new(SimClock::new(start)),
                        up: None,
                    },
                )
            })
            .collect();
        let joins = Arc::new(Joins::new(
            rec.clone(),
            nodes
                .keys()
                .filter_map(|id| Some((net.peer(*id)?.to_string(), *id)))
                .collect(),
        ));
        for (id, node) in &nodes {
            joins.attach(*id, &node.store);
        }
        Ok(Self {
            joins,
            rec,
            net,
            plans,
            replication,
            repair_after,
            ids,
            nodes: Mutex::new(nodes),
            corrupt_node_1,
            handed_over: Default::default(),
            group_timing: Default::default(),
        })
    }

    fn nodes(&self) -> MutexGuard<'_, BTreeMap<u64, Node>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes().keys().copied().collect()
    }

    pub fn is_up(&self, id: u64) -> bool {
        self.nodes().get(&id).is_some_and(|n| n.up.is_some())
    }

    pub fn up_ids(&self) -> Vec<u64> {
        self.nodes()
            .iter()
            .filter(|(_, n)| n.up.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Node `id`'s group layer, if it is up.
    pub fn groups(&self, id: u64) -> Option<Groups> {
        Some(self.nodes().get(&id)?.up.as_ref()?.groups.clone())
    }

    pub fn topics(&self, id: u64) -> Option<Topics> {
        Some(self.nodes().get(&id)?.up.as_ref()?.topics.clone())
    }

    /// Node `id`'s cluster topic API, if it is up.
    pub fn api(&self, id: u64) -> Option<ClusterTopics> {
        Some(self.nodes().get(&id)?.up.as_ref()?.api.clone())
    }

    /// The disk of node `id`'s current incarnation.
    pub fn store(&self, id: u64) -> Option<Arc<SimStore>> {
        self.nodes().get(&id).map(|n| n.store.clone())
    }

    pub fn incarnation(&self, id: u64) -> Option<u64> {
        self.nodes().get(&id).map(|n| n.incarnation)
    }

    pub fn clock(&self, id: u64) -> Option<Arc<SimClock>> {
        self.nodes().get(&id).map(|n| n.clock.clone())
    }

    /// The voters of topic `plan`'s group now, as the replica on an up node
    /// that knows the newest committed membership says (a leader first);
    /// the replicas it was created on if no node holds one.
    pub fn voters(&self, plan: &TopicPlan) -> Vec<u64> {
        let mut best: Option<(bool, u64, u64, Vec<String>)> = None;
        for id in self.up_ids() {
            let Some(groups) = self.groups(id) else {
                continue;
            };
            for r in groups.replicas() {
                if r.group != plan.group.0 {
                    continue;
                }
                // The newest committed membership, not the highest term: a
                // sleeping copy says term 0, and a copy left behind by a
                // repair may run elections with ever higher terms.
                let rank = (r.is_leader, r.members_at, r.applied_index);
                if best.as_ref().is_none_or(|b| rank > (b.0, b.1, b.2)) {
                    best = Some((rank.0, rank.1, rank.2, r.members));
                }
            }
        }
        match best {
            Some((_, _, _, members)) => members
                .iter()
                .filter_map(|m| m.parse::<PeerId>().ok())
                .filter_map(|p| self.net.node_of(&p))
                .collect(),
            None => plan.replicas.clone(),
        }
    }

    /// The peer ids of topic `plan`'s voters now (see [`voters`](Self::voters)).
    pub fn members(&self, plan: &TopicPlan) -> Vec<PeerId> {
        self.voters(plan)
            .iter()
            .filter_map(|id| self.net.peer(*id))
            .collect()
    }

    /// The node that leads topic `plan`'s group, as a running replica that
    /// is up says of itself.
    pub fn leader(&self, plan: &TopicPlan) -> Option<u64> {
        self.up_ids().into_iter().find(|id| {
            self.groups(*id).is_some_and(|g| {
                g.replicas()
                    .iter()
                    .any(|r| r.group == plan.group.0 && r.is_leader)
            })
        })
    }

    /// Starts node `id`'s current incarnation on its disk: its topics and
    /// its group layer, which knows every group the disk holds (they start
    /// when a message or a client needs them).
    pub async fn start(&self, id: u64) -> Result<(), Error> {
        let (incarnation, store, clock) = {
            let nodes = self.nodes();
            let n = nodes
                .get(&id)
                .ok_or(Error::Setup(format!("no node {id}")))?;
            (n.incarnation, n.store.clone(), n.clock.clone())
        };
        if id == 1 && self.corrupt_node_1 {
            store.corrupt_elements();
        }
        let topics = Topics::open(store.clone(), clock.clone()).await?;
        // On the network before its groups are loaded, as a real node's
        // overlay is: peers' messages wait until `Groups::open` serves them.
        let (inbox, inbound) = mpsc::channel(INBOUND_DEPTH);
        self.net.attach(id, incarnation, inbox);
        let opened = Groups::open(
            store.clone(),
            topics.clone(),
            self.net.link(id, incarnation),
            vec![inbound],
            self.group_timing,
        )
        .await;
        let (groups, held, serve) = opened.map_err(|e| {
            self.net.detach(id);
            Error::Setup(format!("node {id} loading its groups: {e}"))
        })?;
        let info = self
            .net
            .info(id)
            .ok_or(Error::Setup(format!("no node {id}")))?;
        let ids = self.ids.clone();
        let api = ClusterTopics::new(
            topics.clone(),
            groups.clone(),
            self.net.dht(id, incarnation),
            info,
        )
        .with_time(
            clock,
            Arc::new(move || ids.lock().unwrap_or_else(|e| e.into_inner()).next_u64()),
        );
        // Repair ends when the groups shut down (a crash, or the end of the run).
        let maintain = tokio::spawn(
            api.clone()
                .maintain(self.repair_after, woof_node::shutdown::Shutdown::new()),
        );
        // Handlers run as on `woof node`: a supervisor places those of the
        // topics this node leads and runs them (native ones only here).
        let handling = woof_node::shutdown::Shutdown::new();
        woof_node::handlers::Supervisor::spawn(api.clone(), groups.clone(), handling.clone());
        self.rec.event(format_args!(
            "node n{id} up (incarnation {incarnation}, {held} groups)"
        ));
        let mut nodes = self.nodes();
        let n = nodes.get_mut(&id).expect("the node exists");
        n.up = Some(Up {
            topics,
            groups,
            api,
            serve,
            handling,
            maintain,
        });
        Ok(())
    }

    /// Makes the cluster's name directory on its first three nodes, from
    /// the first (as the first node of a real cluster makes it on itself).
    pub async fn bootstrap_directory(&self) -> Result<(), Error> {
        let members: Vec<PeerId> = self
            .ids()
            .into_iter()
            .take(3)
            .filter_map(|id| self.net.peer(id))
            .collect();
        let api = self
            .api(self.ids().first().copied().unwrap_or(1))
            .ok_or(Error::Setup("the first node is down".into()))?;
        api.bootstrap_directory(&members)
            .await
            .map_err(|e| Error::Setup(format!("making the name directory: {e}")))?;
        self.rec.event(format_args!(
            "name directory made on n1..n{}",
            members.len()
        ));
        Ok(())
    }

    /// Creates topic `name` through node `node`'s `ClusterTopics`, with
    /// `replication` replicas honouring `constraint`, keeping `history`
    /// elements.
    pub async fn create(
        &self,
        node: u64,
        name: &str,
        replication: usize,
        constraint: Option<&str>,
        history: u64,
    ) -> woof_node::Result<TopicView> {
        let api = self
            .api(node)
            .ok_or_else(|| woof_node::Error::Internal(format!("n{node} down")))?;
        let config = TopicConfig {
            history,
            ..TopicConfig::default()
        };
        api.create(name, config, replication as u32, constraint.unwrap_or(""))
            .await
    }

    /// Binds a native `forward` handler to the first topic, copying every
    /// element from the first on to [`HANDLED_OUT`] (made here too), so
    /// that the run shows whether each committed element gives its output
    /// once, in order, through the faults (`check::handled`).
    pub async fn bind_handler(&self, history: u64) -> Result<(), Error> {
        let Some(plan) = self.plans.first() else {
            return Ok(());
        };
        let node = self.ids()[0];
        self.create(node, HANDLED_OUT, self.replication, None, history)
            .await
            .map_err(|e| Error::Setup(format!("creating {HANDLED_OUT}: {e}")))?;
        let api = self
            .api(node)
            .ok_or_else(|| Error::Setup(format!("n{node} down")))?;
        let spec = HandlerSpec {
            name: HANDLER.into(),
            code: Code::Native("forward".into()),
            placement: String::new(),
            config: format!(r#"{{"to": "{HANDLED_OUT}"}}"#),
            time_budget_ms: 0,
            memory_mib: 0,
            on_demand: false,
            per_node: false,
        };
        api.deploy_handler(&plan.name, spec, From::Earliest)
            .await
            .map_err(|e| Error::Setup(format!("binding a handler to {}: {e}", plan.name)))?;
        self.rec.event(format_args!(
            "handler {HANDLER} bound to {}, writing to {HANDLED_OUT}",
            plan.name
        ));
        Ok(())
    }

    /// Creates every planned topic, fault-free, each through another node
    /// (topic i through node i mod N + 1), all at once, and notes the
    /// group and replicas each got.
    pub async fn create_topics(&mut self, history: u64) -> Result<(), Error> {
        let ids = self.ids();
        let this = &*self;
        let created = futures::future::join_all(this.plans.iter().map(|p| {
            let node = ids[p.index % ids.len()];
            async move {
                let view = this
                    .create(
                        node,
                        &p.name,
                        this.replication,
                        p.constraint.as_deref(),
                        history,
                    )
                    .await
                    .map_err(|e| Error::Setup(format!("creating {} at n{node}: {e}", p.name)))?;
                Ok::<_, Error>((node, view))
            }
        }))
        .await;
        for (plan, created) in self.plans.iter_mut().zip(created) {
            let (node, view) = created?;
            plan.group = GroupId(view.info.meta.id.0);
            plan.replicas = view
                .replicas
                .iter()
                .map(|r| {
                    r.parse::<PeerId>()
                        .ok()
                        .and_then(|p| self.net.node_of(&p))
                        .ok_or_else(|| Error::Setup(format!("{} placed on a stranger", plan.name)))
                })
                .collect::<Result<_, Error>>()?;
            self.rec.event(format_args!(
                "topic {} created at n{node}: group {}, on {:?} ({})",
                plan.name,
                plan.group.0,
                plan.replicas,
                plan.constraint.as_deref().unwrap_or("nearest by name")
            ));
        }
        Ok(())
    }

    /// Reaps node `id` after its disk crashed (or crashes it now, with
    /// `rng`): it leaves the network, its groups and topics stop.
    pub async fn crash(&self, id: u64, rng: &mut SimRng) {
        let (up, store) = {
            let mut nodes = self.nodes();
            let Some(n) = nodes.get_mut(&id) else { return };
            (n.up.take(), n.store.clone())
        };
        let crash = store.crash(rng);
        self.net.detach(id);
        self.rec.event(format_args!(
            "node n{id} down: kept {} of {} unsynced writes, {} of {} since the last flush whole{}",
            crash.kept,
            crash.pending,
            crash.flushed,
            crash.since_flush,
            if crash.torn { " (torn sync)" } else { "" }
        ));
        if let Some(up) = up {
            stop(up).await;
        }
    }

    /// Stops node `id` on purpose: while still on the network it hands the
    /// leadership of its groups over (as `Node::stop` does); then it goes
    /// down as [`crash`](Self::crash) takes it (its disk keeping only what
    /// a crash would: a harder case than a clean stop, which keeps more).
    pub async fn leave(&self, id: u64, rng: &mut SimRng) {
        let groups = {
            let nodes = self.nodes();
            nodes
                .get(&id)
                .and_then(|n| n.up.as_ref().map(|up| up.groups.clone()))
        };
        if let Some(groups) = groups {
            let (handed, led) = groups.hand_over_leadership().await;
            self.handed_over
                .fetch_add(handed as u64, std::sync::atomic::Ordering::Relaxed);
            self.rec.event(format_args!(
                "node n{id} handed over {handed} of the {led} groups it led"
            ));
        }
        self.crash(id, rng).await;
    }

    /// Restarts node `id` on what its disk kept.
    pub async fn restart(&self, id: u64) -> Result<(), Error> {
        {
            let mut nodes = self.nodes();
            let Some(n) = nodes.get_mut(&id) else {
                return Err(Error::Setup(format!("no node {id}")));
            };
            if n.up.is_some() {
                return Ok(());
            }
            n.store = Arc::new(n.store.reopen());
            self.joins.attach(id, &n.store);
            n.incarnation += 1;
        }
        self.start(id).await
    }

    /// Stops every node (the end of a run), without crashing disks.
    pub async fn stop(&self) {
        let ids = self.ids();
        for id in &ids {
            self.net.detach(*id);
        }
        let ups: Vec<Up> = {
            let mut nodes = self.nodes();
            nodes.values_mut().filter_map(|n| n.up.take()).collect()
        };
        for up in ups {
            stop(up).await;
        }
    }
}

/// Stops a node's incarnation: its groups, its topics, its serving loop
/// (which ends once the network let go of its inbound queue).
async fn stop(up: Up) {
    let wait = Duration::from_millis(SHUTDOWN_MS_MAX);
    if tokio::time::timeout(wait, up.handling.stop())
        .await
        .is_err()
    {
        tracing::debug!("a handler runner outlived its node");
    }
    let _ = tokio::time::timeout(wait, up.groups.shutdown()).await;
    // The repair loop ends when the groups stop.
    if tokio::time::timeout(wait, up.maintain).await.is_err() {
        tracing::debug!("a repair loop outlived its node");
    }
    let _ = tokio::time::timeout(wait, up.topics.shutdown()).await;
    if tokio::time::timeout(wait, up.serve).await.is_err() {
        tracing::debug!("a serving loop outlived its node");
    }
}
