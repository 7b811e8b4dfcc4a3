//! The simulated cluster: N nodes, each a [`SimStore`], a [`Topics`] with a
//! simulated clock, and the node's own group layer ([`Groups`]: the Raft
//! groups it holds, forwarding to leaders, group commit, sleeping groups) on
//! the simulated network; and T topics, each a Raft group on R nodes chosen
//! by woof's placement (the nodes' identities drawn with the seed).
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
use woof_consensus::raft::Command;
use woof_consensus::store::{GROUP_ID_MIN, GroupId};
use woof_consensus::topic::{Placement, TopicConfig, TopicId, TopicMeta, TopicName};
use woof_consensus::{Clock, Topics};
use woof_node::groups::Groups;
use woof_node::placement::{self, Candidate, Constraint};
use woof_overlay::{Keypair, PeerId, Tier};

use crate::Error;
use crate::config::{Broken, Rates};
use crate::history::Recorder;
use crate::net::SimNet;
use crate::rng::SimRng;
use crate::store::SimStore;

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
    pub group: GroupId,
    pub name: String,
    /// Node ids, in the order placement chose them.
    pub replicas: Vec<u64>,
    /// The replica constraint placement honoured, if any.
    pub constraint: Option<String>,
}

/// The constraint every third topic is placed by (when the cluster has the
/// nodes for it): one replica at the edge, two in the cloud.
const EDGE_AND_CLOUD: &str = "tier=edge:1,tier=cloud:2";

/// Places `topics` topics of `replication` replicas on the nodes, with
/// woof's placement (`woof_node::placement::place`): each node has a libp2p
/// identity drawn from the seed and a tier (the first third at the edge,
/// the rest in the cloud); a topic goes to the nodes nearest its name in
/// Kademlia distance, or, every third topic, to one edge and two cloud
/// nodes.
fn place_topics(
    nodes: u64,
    topics: usize,
    replication: usize,
    rng: &mut SimRng,
) -> Result<(Vec<PeerId>, Vec<TopicPlan>), Error> {
    let edge_nodes = nodes.div_ceil(3);
    let candidates: Vec<Candidate> = (1..=nodes)
        .map(|id| {
            let mut secret = [0u8; 32];
            for chunk in secret.chunks_mut(8) {
                chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
            }
            let key = Keypair::ed25519_from_bytes(secret)
                .map_err(|e| Error::Setup(format!("node {id}'s identity: {e}")))?;
            Ok(Candidate {
                peer: key.public().to_peer_id(),
                tier: if id <= edge_nodes {
                    Tier::Edge
                } else {
                    Tier::Cloud
                },
                attrs: BTreeMap::new(),
                alive: true,
            })
        })
        .collect::<Result<_, Error>>()?;
    let id_of = |peer: &PeerId| {
        candidates
            .iter()
            .position(|c| c.peer == *peer)
            .map(|i| i as u64 + 1)
    };
    let mixed = replication == 3 && edge_nodes >= 1 && nodes - edge_nodes >= 2;
    let plans = (0..topics)
        .map(|index| {
            let name = format!("sim/t{index}");
            let constraint = (mixed && index % 3 == 2).then_some(EDGE_AND_CLOUD);
            let parsed = constraint
                .map(str::parse::<Constraint>)
                .transpose()
                .map_err(|e| Error::Setup(format!("{EDGE_AND_CLOUD}: {e}")))?;
            let peers = placement::place(&name, replication, parsed.as_ref(), &candidates)
                .map_err(|e| Error::Setup(format!("placing {name}: {e}")))?;
            let replicas = peers
                .iter()
                .map(|p| id_of(p).ok_or(Error::Setup(format!("{name} placed on a stranger"))))
                .collect::<Result<_, Error>>()?;
            Ok(TopicPlan {
                index,
                group: GroupId(GROUP_ID_MIN + 1 + index as u64),
                name,
                replicas,
                constraint: constraint.map(str::to_string),
            })
        })
        .collect::<Result<_, Error>>()?;
    Ok((candidates.into_iter().map(|c| c.peer).collect(), plans))
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
    serve: tokio::task::JoinHandle<()>,
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
    nodes: Mutex<BTreeMap<u64, Node>>,
    /// Node 1's disk stores payloads reversed ([`Broken::DivergentReplica`]).
    corrupt_node_1: bool,
}

impl Cluster {
    /// Places `topics` topics on `replication` of `nodes` nodes each (see
    /// [`place_topics`]), on a network drawn from `net_rng`.
    pub fn new(
        rec: Arc<Recorder>,
        net_rng: SimRng,
        nodes: u64,
        topics: usize,
        replication: usize,
        rng: &mut SimRng,
        broken: Option<Broken>,
    ) -> Result<Self, Error> {
        let corrupt_node_1 = broken == Some(Broken::DivergentReplica);
        let start = tokio::time::Instant::now();
        let (peers, plans) = place_topics(nodes, topics, replication, rng)?;
        for p in &plans {
            rec.event(format_args!(
                "{} placed on {:?} ({})",
                p.name,
                p.replicas,
                p.constraint.as_deref().unwrap_or("nearest by name")
            ));
        }
        let net = SimNet::new(rec.clone(), net_rng, Rates::none(), peers);
        let nodes = (1..=nodes)
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
        Ok(Self {
            rec,
            net,
            plans,
            nodes: Mutex::new(nodes),
            corrupt_node_1,
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

    /// The peer ids of a topic's replicas, as its group knows its members.
    pub fn members(&self, plan: &TopicPlan) -> Vec<PeerId> {
        plan.replicas
            .iter()
            .filter_map(|id| self.net.peer(*id))
            .collect()
    }

    /// The node that leads topic `plan`'s group, as a running replica that
    /// is up says of itself.
    pub fn leader(&self, plan: &TopicPlan) -> Option<u64> {
        plan.replicas.iter().copied().find(|id| {
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
        let topics = Topics::open(store.clone(), clock).await?;
        let (inbox, inbound) = mpsc::channel(INBOUND_DEPTH);
        let (groups, serve) = Groups::new(
            store.clone(),
            topics.clone(),
            self.net.link(id, incarnation),
            inbound,
        );
        let held = groups
            .load_all()
            .await
            .map_err(|e| Error::Setup(format!("node {id} loading its groups: {e}")))?;
        self.net.attach(id, incarnation, inbox);
        self.rec.event(format_args!(
            "node n{id} up (incarnation {incarnation}, {held} groups)"
        ));
        let mut nodes = self.nodes();
        let n = nodes.get_mut(&id).expect("the node exists");
        n.up = Some(Up {
            topics,
            groups,
            serve,
        });
        Ok(())
    }

    /// Creates topic `plan` as a node does: its group started on every
    /// replica (the first initializes it), then the topic created through
    /// its leader. Fault-free setup.
    pub async fn create_topic(&self, plan: &TopicPlan, history: u64) -> Result<(), Error> {
        let first = plan.replicas[0];
        let groups = self
            .groups(first)
            .ok_or(Error::Setup(format!("node {first} down")))?;
        let members = self.members(plan);
        groups
            .create(plan.group, &members)
            .await
            .map_err(|e| Error::Setup(format!("creating {}'s group: {e}", plan.name)))?;
        let meta = TopicMeta {
            id: plan.topic_id(),
            name: TopicName::new(&plan.name)?,
            config: TopicConfig {
                history,
                ..TopicConfig::default()
            },
            created_at_ms: EPOCH_MS,
            placement: Placement {
                replication: plan.replicas.len() as u32,
                constraint: plan.constraint.clone(),
            },
        };
        let r = groups
            .write(plan.group, &members, Command::Create(meta))
            .await
            .map_err(|e| Error::Setup(format!("creating {}: {e}", plan.name)))?;
        self.rec.event(format_args!(
            "topic {} created on {:?}: {r:?}",
            plan.name, plan.replicas
        ));
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
            "node n{id} down: kept {} of {} unsynced writes{}",
            crash.kept,
            crash.pending,
            if crash.torn { " (torn sync)" } else { "" }
        ));
        if let Some(up) = up {
            stop(up).await;
        }
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
    let _ = tokio::time::timeout(wait, up.groups.shutdown()).await;
    let _ = tokio::time::timeout(wait, up.topics.shutdown()).await;
    if tokio::time::timeout(wait, up.serve).await.is_err() {
        tracing::debug!("a serving loop outlived its node");
    }
}
