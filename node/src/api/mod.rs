//! The topic API a node serves, whatever it is part of: a standalone node
//! keeps its topics itself ([`woof_consensus::Topics`]); a node in a
//! cluster serves every topic of the cluster ([`ClusterTopics`]), each kept
//! by a Raft group on the nodes its placement chose.
//!
//! On a cluster node, a topic is found by its DHT record (`woof/topic/NAME`:
//! its group and replicas), cached, or known locally when this node holds a
//! replica. Writes go to the group's leader (forwarded over the overlay, so
//! clients may talk to any node); reads are served by a local replica when
//! it already holds what was asked, else by the leader; a subscription
//! follows a local replica, or the leader from a node that holds none.
//!
//! What it needs of the overlay (DHT records, the member view) it takes as
//! [`Overlay`] (`overlay.rs`), which `woof_overlay::Client` implements and
//! the simulator implements over its simulated network; its clock and the
//! random numbers of new group ids are passed in too
//! ([`ClusterTopics::with_time`]), so that `woof-sim` runs this code, repair
//! (`repair.rs`) included, seed for seed.
//!
//! A create first claims its name in the cluster's name directory, a Raft
//! group of its own (`names.rs`, ADR 9), so that of several nodes creating
//! one name at once exactly one succeeds.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use woof_consensus::bugs::{self, Bug};
use woof_consensus::codec::{decode, encode};
use woof_consensus::raft::{Command, CommandResult};
use woof_consensus::store::{GROUP_ID_MIN, GroupId};
use woof_consensus::topic::directory::{DIRECTORY, RESERVED_PREFIX};
use woof_consensus::topic::handlers::{From, Handler, HandlerSpec, Handlers};
use woof_consensus::topic::{
    AppendOutcome, Cause, Element, Placement, Producer, Range, TopicConfig, TopicId, TopicMeta,
    TopicName,
};
use woof_consensus::{Clock, Start, Subscription, SystemClock, TopicInfo, Topics};
use woof_overlay::{Liveness, NodeInfo, PeerId};

use crate::error::{Error, Result};
use crate::groups::{Groups, Read, ReadReply, ReplicaStatus};
use crate::placement::{self, Candidate, Constraint};

mod devices;
mod handlers;
mod names;
mod overlay;
mod repair;
mod trace;

pub use trace::{Effect, Step, Trace};

pub use overlay::Overlay;

/// A topic's replication when the request leaves it at 0, in a cluster.
pub const REPLICATION_DEFAULT: usize = 3;
/// Elements a subscription on a node without a replica fetches per step.
const FOLLOW_BATCH: u32 = 256;
/// How long one such step waits at the leader for new elements.
const FOLLOW_WAIT_MS: u64 = 2_000;
/// Topic locations cached by one node; past this the cache starts over.
const LOCATIONS_CACHED_MAX: usize = 100_000;
/// How long the directory's "no such topic" is believed (see
/// `ClusterTopics::directory_misses`).
const DIRECTORY_MISS_MS: u64 = 1_000;
/// The most names whose directory misses are remembered.
const DIRECTORY_MISSES_MAX: usize = 10_000;

/// A topic as the API describes it: its metadata and range, and on a
/// cluster node where its replicas are.
#[derive(Debug, Clone)]
pub struct TopicView {
    pub info: TopicInfo,
    /// Peer ids of its replicas (empty on a standalone node).
    pub replicas: Vec<String>,
    pub leader: Option<String>,
    /// The last log index its leader applied (0 on a standalone node).
    pub commit_index: u64,
    /// Each replica's matched log index, as the leader knows it.
    pub progress: Vec<(String, u64)>,
}

impl TopicView {
    fn local(info: TopicInfo) -> Self {
        Self {
            info,
            replicas: Vec::new(),
            leader: None,
            commit_index: 0,
            progress: Vec::new(),
        }
    }

    fn replicated(status: ReplicaStatus) -> Self {
        Self {
            info: TopicInfo {
                meta: status.meta,
                range: Range {
                    first: status.first_seq,
                    last: status.last_seq,
                },
            },
            replicas: status.members,
            leader: status.leader,
            commit_index: status.applied_index,
            progress: status.progress,
        }
    }
}

/// The topics a node serves.
#[derive(Clone)]
pub enum TopicApi {
    /// A standalone node's own topics.
    Local(Topics),
    /// Every topic of the cluster.
    Cluster(Box<ClusterTopics>),
}

impl TopicApi {
    /// What the handlers running on this node did (a cluster node's only).
    pub fn journal(&self) -> Option<&crate::handlers::journal::Journal> {
        match self {
            TopicApi::Local(_) => None,
            TopicApi::Cluster(api) => Some(api.journal()),
        }
    }

    pub async fn create(
        &self,
        name: &str,
        config: TopicConfig,
        replication: u32,
        constraint: &str,
    ) -> Result<TopicView> {
        match self {
            TopicApi::Local(t) => {
                if replication > 1 || !constraint.is_empty() {
                    return Err(Error::Usage(
                        "this node is not in a cluster: its topics have one replica and no \
                         constraint (start it with --listen and --cluster-key to replicate)"
                            .into(),
                    ));
                }
                Ok(TopicView::local(t.create(name, config).await?))
            }
            TopicApi::Cluster(c) => c.create(name, config, replication, constraint).await,
        }
    }

    pub async fn describe(&self, name: &str) -> Result<TopicView> {
        match self {
            TopicApi::Local(t) => Ok(TopicView::local(t.describe(name)?)),
            TopicApi::Cluster(c) => c.describe(name).await,
        }
    }

    pub async fn list(&self) -> Result<Vec<TopicView>> {
        match self {
            TopicApi::Local(t) => Ok(t.list().into_iter().map(TopicView::local).collect()),
            // woof's own topics (the device registry) are not the user's.
            TopicApi::Cluster(c) => Ok(c
                .list()
                .await?
                .into_iter()
                .filter(|v| !v.info.meta.name.as_str().starts_with(RESERVED_PREFIX))
                .collect()),
        }
    }

    pub async fn delete(&self, name: &str) -> Result<()> {
        user_topic(name, true)?;
        match self {
            TopicApi::Local(t) => Ok(t.delete(name).await?),
            TopicApi::Cluster(c) => c.delete(name).await,
        }
    }

    pub async fn append(
        &self,
        name: &str,
        payloads: Vec<Bytes>,
        producer: Option<Producer>,
    ) -> Result<AppendOutcome> {
        user_topic(name, true)?;
        match self {
            TopicApi::Local(t) => Ok(t.append(name, payloads, producer).await?),
            TopicApi::Cluster(c) => c.append(name, payloads, producer).await,
        }
    }

    /// [`append`](Self::append), naming handler `handler` (one deployed on
    /// demand) to run for these elements alone.
    pub async fn append_for(
        &self,
        name: &str,
        payloads: Vec<Bytes>,
        producer: Option<Producer>,
        handler: String,
    ) -> Result<AppendOutcome> {
        user_topic(name, true)?;
        self.cluster()?
            .append_for(name, payloads, producer, Some(handler))
            .await
    }

    pub async fn get(&self, name: &str, seq: u64) -> Result<Element> {
        user_topic(name, false)?;
        match self {
            TopicApi::Local(t) => Ok(t.get(name, seq).await?),
            TopicApi::Cluster(c) => c.get(name, seq).await,
        }
    }

    pub async fn latest(&self, name: &str) -> Result<Range> {
        user_topic(name, false)?;
        match self {
            TopicApi::Local(t) => Ok(t.latest(name)?),
            TopicApi::Cluster(c) => c.latest(name).await,
        }
    }

    pub async fn scan(&self, name: &str, from: u64, limit: u32) -> Result<Vec<Element>> {
        user_topic(name, false)?;
        match self {
            TopicApi::Local(t) => Ok(t.scan(name, from, limit).await?),
            TopicApi::Cluster(c) => c.scan(name, from, limit).await,
        }
    }

    pub async fn subscribe(&self, name: &str, start: Start) -> Result<Following> {
        user_topic(name, false)?;
        match self {
            TopicApi::Local(t) => Ok(Following::Local(t.subscribe(name, start)?)),
            TopicApi::Cluster(c) => c.subscribe(name, start).await,
        }
    }

    /// The cluster's topics, for what only a cluster does (handlers,
    /// devices).
    pub fn cluster(&self) -> Result<&ClusterTopics> {
        match self {
            TopicApi::Cluster(c) => Ok(c),
            TopicApi::Local(_) => Err(Error::Usage(
                "handlers and devices need cluster nodes: this node is standalone (start it \
                 with --listen and --cluster-key, or try `woof demo`)"
                    .into(),
            )),
        }
    }

    pub async fn deploy_handler(
        &self,
        topic: &str,
        spec: HandlerSpec,
        from: From,
    ) -> Result<Handler> {
        // A handler on woof's own topics could copy them out.
        user_topic(topic, true)?;
        self.cluster()?.deploy_handler(topic, spec, from).await
    }

    pub async fn update_handler(&self, topic: &str, spec: HandlerSpec) -> Result<Handler> {
        user_topic(topic, true)?;
        self.cluster()?.update_handler(topic, spec).await
    }

    pub async fn remove_handler(&self, topic: &str, name: &str) -> Result<()> {
        self.cluster()?.remove_handler(topic, name).await
    }

    pub async fn resume_handler(&self, topic: &str, name: &str) -> Result<Handler> {
        self.cluster()?.resume_handler(topic, name).await
    }

    /// The handlers bound to `topic`, and its last sequence number.
    pub async fn handlers(&self, topic: &str) -> Result<(Handlers, u64)> {
        self.cluster()?.handlers(topic).await
    }

    /// Element `seq` of `topic`, its causes and its effects.
    pub async fn trace(&self, topic: &str, seq: u64) -> Result<Trace> {
        user_topic(topic, false)?;
        self.cluster()?.trace(topic, seq).await
    }

    /// Stops serving: queued appends fail, subscriptions end.
    pub async fn shutdown(&self) {
        match self {
            TopicApi::Local(t) => t.shutdown().await,
            TopicApi::Cluster(c) => c.topics.shutdown().await,
        }
    }
}

/// Refuses what clients and handlers may not do to woof's own topics:
/// write any of them, or read the device registry (it holds the devices'
/// keys).
pub(crate) fn user_topic(name: &str, write: bool) -> Result<()> {
    let own = name.starts_with(RESERVED_PREFIX);
    if own && (write || name == crate::devices::registry::DEVICES_TOPIC) {
        return Err(Error::Log(woof_consensus::Error::InvalidName {
            name: name.to_string(),
            reason: format!("topics under {RESERVED_PREFIX} are woof's own"),
        }));
    }
    Ok(())
}

/// A subscription: to a local topic or replica, or to a leader elsewhere.
pub enum Following {
    Local(Subscription),
    Remote(Box<RemoteFollow>),
}

impl Following {
    /// The seq of the next element it will deliver.
    pub fn next_seq(&self) -> u64 {
        match self {
            Following::Local(s) => s.next_seq(),
            Following::Remote(r) => r.next,
        }
    }

    /// The next elements in order, at most `max`; waits for them. Errors
    /// end the subscription (see [`Subscription::next_batch`]).
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<Element>> {
        match self {
            Following::Local(s) => Ok(s.next_batch(max).await?),
            Following::Remote(r) => r.next_batch(max).await,
        }
    }

    /// When the last batch's elements were committed here, if this node
    /// holds a replica (else they came from the leader: unknown).
    pub fn published_at(&self) -> Option<std::time::Instant> {
        match self {
            Following::Local(s) => Some(s.published_at()),
            Following::Remote(_) => None,
        }
    }
}

/// Follows a topic this node holds no replica of, step by step at its leader.
pub struct RemoteFollow {
    api: ClusterTopics,
    name: TopicName,
    next: u64,
}

impl RemoteFollow {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Element>> {
        loop {
            let (group, members) = self.api.locate(&self.name).await?;
            let read = Read::Follow {
                from: self.next,
                max: (max as u32).clamp(1, FOLLOW_BATCH),
                wait_ms: FOLLOW_WAIT_MS,
            };
            let elements = self
                .api
                .groups
                .read(group, &members, self.name.as_str(), read)
                .await?
                .into_elements()?;
            if let Some(last) = elements.last() {
                self.next = last.seq + 1;
                return Ok(elements);
            }
        }
    }
}

/// Where a topic lives: the DHT record of its name.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Location {
    group: u64,
    /// Peer ids of its replicas.
    members: Vec<String>,
    /// A deleted topic's record stays, marked, until the name is reused.
    deleted: bool,
}

impl Location {
    fn peers(&self) -> Result<Vec<PeerId>> {
        self.members
            .iter()
            .map(|m| {
                m.parse()
                    .map_err(|_| Error::Internal(format!("bad peer id {m:?} in a topic record")))
            })
            .collect()
    }
}

fn record_key(name: &TopicName) -> Vec<u8> {
    format!("woof/topic/{name}").into_bytes()
}

/// Every topic of a cluster, served from this node.
#[derive(Clone)]
pub struct ClusterTopics {
    /// This node's replicas, as readers see them.
    topics: Topics,
    groups: Groups,
    overlay: Arc<dyn Overlay>,
    info: NodeInfo,
    clock: Arc<dyn Clock>,
    /// Where new group ids get their randomness (seeded in the simulator).
    random: Random,
    /// This run of the node, as its name claims record it (`names.rs`).
    incarnation: u64,
    /// Where topics were last found.
    locations: Arc<Mutex<HashMap<TopicName, Location>>>,
    /// Names the directory lately said no topic has, and when (ms): the
    /// DHT is still asked first each time, the directory at most once per
    /// [`DIRECTORY_MISS_MS`] per name (`names.rs`).
    directory_misses: Arc<Mutex<HashMap<TopicName, u64>>>,
    /// Serialises creating and deleting each name through this node.
    admin: Arc<Mutex<HashMap<TopicName, Arc<tokio::sync::Mutex<()>>>>>,
    /// How this node runs Python handlers (and checks them at deploy).
    python: crate::handlers::code::Python,
    /// What the handlers running here did, recently.
    journal: crate::handlers::journal::Journal,
}

/// A source of random numbers, passed in so that a simulation can seed it.
pub type Random = Arc<dyn Fn() -> u64 + Send + Sync>;

impl ClusterTopics {
    /// The topics of the cluster `overlay` reaches, served from this node
    /// (described by `info`), on the wall clock and the process's own
    /// random numbers.
    pub fn new(topics: Topics, groups: Groups, overlay: Arc<dyn Overlay>, info: NodeInfo) -> Self {
        let random: Random = Arc::new(|| {
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        });
        Self {
            topics,
            groups,
            overlay,
            info,
            clock: Arc::new(SystemClock),
            incarnation: random(),
            random,
            locations: Arc::default(),
            directory_misses: Arc::default(),
            admin: Arc::default(),
            python: crate::handlers::code::Python::this_binary(),
            journal: Default::default(),
        }
    }

    /// Runs Python handlers with `program` instead of this binary.
    pub fn with_python_worker(mut self, program: std::path::PathBuf) -> Self {
        self.python.program = program;
        self
    }

    /// Counts the handlers' invocations into `metrics` too.
    pub fn with_metrics(mut self, metrics: &crate::metrics::Metrics) -> Self {
        self.journal = crate::handlers::journal::Journal::with_metrics(metrics.handlers().clone());
        self
    }

    /// This node's name in the cluster (its peer id).
    pub(crate) fn me(&self) -> String {
        self.overlay.peer_id().to_string()
    }

    /// The time now, in ms since the Unix epoch, on this node's clock (the
    /// simulator's, under the simulator).
    pub(crate) fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    pub(crate) fn python(&self) -> &crate::handlers::code::Python {
        &self.python
    }

    pub fn journal(&self) -> &crate::handlers::journal::Journal {
        &self.journal
    }

    /// The same on another clock and source of random numbers (the
    /// simulator's).
    pub fn with_time(mut self, clock: Arc<dyn Clock>, random: Random) -> Self {
        self.clock = clock;
        self.incarnation = random();
        self.random = random;
        self
    }

    /// Holds the lock of `name` (creating and deleting it).
    async fn name_lock(&self, name: &TopicName) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.admin.lock().unwrap_or_else(|e| e.into_inner());
            if locks.len() >= LOCATIONS_CACHED_MAX {
                // Only locks nobody holds or waits for go.
                locks.retain(|_, l| Arc::strong_count(l) > 1);
            }
            locks.entry(name.clone()).or_default().clone()
        };
        lock.lock_owned().await
    }

    fn locations(&self) -> std::sync::MutexGuard<'_, HashMap<TopicName, Location>> {
        self.locations.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The group and replicas of `name`: from this node's replica, the
    /// cache, or the DHT.
    async fn locate(&self, name: &TopicName) -> Result<(GroupId, Vec<PeerId>)> {
        if let Some(id) = self.topics.replica_id(name)
            && let Some(members) = self.groups.local_members(GroupId(id.0))
        {
            return Ok((GroupId(id.0), members));
        }
        let cached = self.locations().get(name).cloned();
        let location = match cached {
            Some(l) => l,
            None => self.lookup(name).await?,
        };
        Ok((GroupId(location.group), location.peers()?))
    }

    /// Asks the DHT where `name` lives (or, when the DHT lost its record,
    /// the name directory and the copies: ADR 20), and caches the answer.
    async fn lookup(&self, name: &TopicName) -> Result<Location> {
        let not_found = || Error::Log(woof_consensus::Error::TopicNotFound(name.to_string()));
        let location: Location = match self.overlay.get_record(record_key(name)).await {
            Ok(Some(bytes)) => decode(&bytes)?,
            // The directory itself is found through the DHT alone.
            Ok(None) if *name == names::directory_name() => return Err(not_found()),
            Err(e) if *name == names::directory_name() => return Err(e.into()),
            // Lost, or out of reach: the directory knows.
            found => match Box::pin(self.locate_by_directory(name)).await {
                Ok(Some(location)) => location,
                Ok(None) => return Err(not_found()),
                // Out of reach, not missing: the directory may name it (a
                // handler's output would be parked on a "not found" here).
                Err(e) => {
                    tracing::debug!(topic = %name, "the directory could not locate it: {e}");
                    return Err(match found {
                        Err(dht) => dht.into(),
                        Ok(_) => e,
                    });
                }
            },
        };
        if location.deleted {
            return Err(not_found());
        }
        let mut locations = self.locations();
        if locations.len() >= LOCATIONS_CACHED_MAX {
            locations.clear();
        }
        locations.insert(name.clone(), location.clone());
        Ok(location)
    }

    /// Publishes where `name` lives (or that it is gone).
    async fn publish(&self, name: &TopicName, location: Location) -> Result<()> {
        {
            let mut locations = self.locations();
            if location.deleted {
                locations.remove(name);
            } else {
                locations.insert(name.clone(), location.clone());
            }
        }
        self.overlay
            .put_record(record_key(name), encode(&location)?)
            .await?;
        Ok(())
    }

    /// This node and the live members, as placement sees them.
    pub(crate) async fn candidates(&self) -> Result<Vec<Candidate>> {
        let mut candidates = vec![Candidate {
            peer: self.overlay.peer_id(),
            tier: self.info.tier,
            attrs: self.info.attrs.clone(),
            capabilities: self.info.capabilities.iter().cloned().collect(),
            alive: true,
        }];
        for m in self.overlay.members().await? {
            candidates.push(Candidate {
                peer: m.peer,
                tier: m.info.tier,
                attrs: m.info.attrs,
                capabilities: m.info.capabilities.into_iter().collect(),
                alive: m.liveness == Liveness::Alive,
            });
        }
        Ok(candidates)
    }

    /// Creates a topic on the replicas placement picks. Nothing is left
    /// behind if any step fails.
    pub async fn create(
        &self,
        name: &str,
        config: TopicConfig,
        replication: u32,
        constraint: &str,
    ) -> Result<TopicView> {
        let name = TopicName::new(name)?;
        if name.as_str().starts_with(RESERVED_PREFIX) {
            return Err(Error::Log(woof_consensus::Error::InvalidName {
                name: name.to_string(),
                reason: format!("names under {RESERVED_PREFIX} are woof's own"),
            }));
        }
        config.validate()?;
        let replication = match replication {
            0 => REPLICATION_DEFAULT,
            r => r as usize,
        };
        let constraint = match constraint.trim() {
            "" => None,
            c => Some(c.parse::<Constraint>()?),
        };
        self.create_named(name, config, replication, constraint)
            .await
    }

    /// [`create`](Self::create) with its arguments checked, for any name
    /// (woof's own under `_woof/` included).
    pub(crate) async fn create_named(
        &self,
        name: TopicName,
        config: TopicConfig,
        replication: usize,
        constraint: Option<Constraint>,
    ) -> Result<TopicView> {
        let _admin = self.name_lock(&name).await;
        match self.locate(&name).await {
            Ok(_) => {
                return Err(Error::Log(woof_consensus::Error::TopicExists(
                    name.to_string(),
                )));
            }
            Err(Error::Log(woof_consensus::Error::TopicNotFound(_))) => {}
            Err(e) => return Err(e),
        }
        let members = placement::place(
            name.as_str(),
            replication,
            constraint.as_ref(),
            &self.candidates().await?,
        )?;
        let now = self.clock.now_ms();
        let group = new_group_id(&name, &self.overlay.peer_id(), now, (self.random)());
        let meta = TopicMeta {
            id: TopicId(group.0),
            name: name.clone(),
            config,
            created_at_ms: now,
            placement: Placement {
                replication: replication as u32,
                constraint: constraint.as_ref().map(ToString::to_string),
            },
        };
        if !bugs::on(Bug::CreateSkipsClaim)
            && let Err(e) = self.claim(&name, group, &members).await
        {
            // A claim whose answer was lost may still have been made: this
            // group's id is new, so releasing it frees nobody else's.
            if !matches!(e, Error::Log(woof_consensus::Error::TopicExists(_))) {
                self.release(&name, group).await;
            }
            return Err(e);
        }
        if let Err(e) = self.groups.create(group, &members).await {
            self.release(&name, group).await;
            return Err(e);
        }
        let created = self
            .groups
            .write(group, &members, Command::Create(meta.clone()))
            .await;
        if !matches!(created, Ok(CommandResult::Created)) {
            self.groups.remove(group, &members).await;
            self.release(&name, group).await;
            return Err(match created {
                Err(e) => e,
                Ok(other) => Error::Internal(format!("creating the topic gave {other:?}")),
            });
        }
        if !bugs::on(Bug::CreateSkipsClaim) {
            match self.confirm(&name, group).await {
                Ok(true) => {}
                // The name went to another group meanwhile (only possible
                // when this claim was released: it is not this create's).
                Ok(false) => {
                    self.groups.remove(group, &members).await;
                    return Err(Error::Log(woof_consensus::Error::TopicExists(
                        name.to_string(),
                    )));
                }
                // Undone, so that the answer is a plain failure: a topic
                // nobody may know of is never left behind.
                Err(e) => {
                    self.groups.remove(group, &members).await;
                    self.release(&name, group).await;
                    return Err(e);
                }
            }
        }
        let location = Location {
            group: group.0,
            members: members.iter().map(ToString::to_string).collect(),
            deleted: false,
        };
        if let Err(e) = self.publish(&name, location.clone()).await {
            // The topic works; nodes that hold no replica find it once the
            // record spreads (or through this node's cache).
            tracing::warn!(topic = %name, "publishing the topic's record: {e}");
        }
        tracing::info!(topic = %name, group = group.0, replicas = ?location.members, "topic created");
        Ok(TopicView {
            info: TopicInfo {
                meta,
                range: Range::default(),
            },
            replicas: location.members,
            leader: None,
            commit_index: 0,
            progress: Vec::new(),
        })
    }

    /// Deletes a topic on all its replicas.
    pub async fn delete(&self, name: &str) -> Result<()> {
        let name = TopicName::new(name)?;
        let _admin = self.name_lock(&name).await;
        let (group, members) = self.locate(&name).await?;
        match self.write(&name, group, &members, Command::Delete).await? {
            CommandResult::Deleted => {}
            other => return Err(Error::Internal(format!("deleting gave {other:?}"))),
        }
        let tombstone = Location {
            group: group.0,
            members: Vec::new(),
            deleted: true,
        };
        if let Err(e) = self.publish(&name, tombstone).await {
            tracing::warn!(topic = %name, "publishing the topic's removal: {e}");
        }
        self.groups.remove(group, &members).await;
        self.release(&name, group).await;
        tracing::info!(topic = %name, "topic deleted");
        Ok(())
    }

    /// Writes through the topic's group, naming the topic in its refusals.
    /// A group that no member holds any more means the topic is gone.
    async fn write(
        &self,
        name: &TopicName,
        group: GroupId,
        members: &[PeerId],
        command: Command,
    ) -> Result<CommandResult> {
        match self.groups.write(group, members, command).await {
            Ok(CommandResult::Refused(e)) => Err(Error::Log(named(e, name))),
            Ok(r) => Ok(r),
            Err(e) => Err(self.forget_if_gone(name, e)),
        }
    }

    /// After a failure at the topic's group, forgets the cached location so
    /// that the next request looks the topic up again.
    fn forget_if_gone(&self, name: &TopicName, e: Error) -> Error {
        self.locations().remove(name);
        match e {
            Error::Log(e) => Error::Log(named(e, name)),
            e => e,
        }
    }

    pub async fn append(
        &self,
        name: &str,
        payloads: Vec<Bytes>,
        producer: Option<Producer>,
    ) -> Result<AppendOutcome> {
        self.append_for(name, payloads, producer, None).await
    }

    /// Appends, naming `handler` (if any) to run for these elements alone.
    pub async fn append_for(
        &self,
        name: &str,
        payloads: Vec<Bytes>,
        producer: Option<Producer>,
        handler: Option<String>,
    ) -> Result<AppendOutcome> {
        let name = TopicName::new(name)?;
        let (group, members) = self.locate(&name).await?;
        let command = Command::Append {
            payloads,
            producer: producer.map(|p| (p.id, p.seq)),
            time_ms: self.clock.now_ms(),
            cause: None,
            handler,
        };
        match self.write(&name, group, &members, command).await? {
            CommandResult::Appended(outcome) => Ok(outcome),
            other => Err(Error::Internal(format!("appending gave {other:?}"))),
        }
    }

    /// Reads at the topic's leader.
    async fn read(&self, name: &TopicName, read: Read) -> Result<ReadReply> {
        let (group, members) = self.locate(name).await?;
        self.groups
            .read(group, &members, name.as_str(), read)
            .await
            .map_err(|e| self.forget_if_gone(name, e))
    }

    /// What this node's replica of `name` has applied, if it holds one.
    fn local_range(&self, name: &TopicName) -> Option<Range> {
        self.topics.replica_id(name)?;
        self.topics.latest(name.as_str()).ok()
    }

    /// Appends each payload under its own producer key, in order, in one
    /// log entry: one result for each (a key already written is refused
    /// with [`woof_consensus::Error::ProducerSeq`] or answered as a
    /// duplicate, and the others are still appended).
    /// Each keeps its cause, if it has one.
    pub async fn append_keyed(
        &self,
        name: &str,
        keyed: Vec<(Producer, Bytes, Option<Cause>)>,
    ) -> Result<Vec<Result<AppendOutcome>>> {
        // Handlers' outputs: never to woof's own topics.
        user_topic(name, true)?;
        let name = TopicName::new(name)?;
        let (group, members) = self.locate(&name).await?;
        let time_ms = self.clock.now_ms();
        let count = keyed.len();
        let command = Command::Batch(
            keyed
                .into_iter()
                .map(|(p, payload, cause)| Command::Append {
                    payloads: vec![payload],
                    producer: Some((p.id, p.seq)),
                    time_ms,
                    cause,
                    handler: None,
                })
                .collect(),
        );
        match self.write(&name, group, &members, command).await? {
            CommandResult::Batch(results) if results.len() == count => Ok(results
                .into_iter()
                .map(|r| match r {
                    CommandResult::Appended(outcome) => Ok(outcome),
                    CommandResult::Refused(e) => Err(Error::Log(named(e, &name))),
                    other => Err(Error::Internal(format!("appending gave {other:?}"))),
                })
                .collect()),
            other => Err(Error::Internal(format!("keyed appends gave {other:?}"))),
        }
    }

    pub async fn get(&self, name: &str, seq: u64) -> Result<Element> {
        let name = TopicName::new(name)?;
        // Elements never change: a replica that holds one may answer.
        if let Some(range) = self.local_range(&name)
            && seq >= range.first.max(1)
            && seq <= range.last
        {
            return Ok(self.topics.get(name.as_str(), seq).await?);
        }
        let mut elements = self.read(&name, Read::Get { seq }).await?.into_elements()?;
        elements
            .pop()
            .ok_or_else(|| Error::Internal("the leader returned no element".into()))
    }

    pub async fn scan(&self, name: &str, from: u64, limit: u32) -> Result<Vec<Element>> {
        let name = TopicName::new(name)?;
        if let Some(range) = self.local_range(&name)
            && from >= range.first.max(1)
            && from.saturating_add(u64::from(limit)) <= range.last + 1
        {
            return Ok(self.topics.scan(name.as_str(), from, limit).await?);
        }
        self.read(&name, Read::Scan { from, limit })
            .await?
            .into_elements()
    }

    /// Up to `limit` elements of `name` that handler `handler` of
    /// `cause_topic` appended when it ran on element `cause_seq`, as the
    /// topic's leader has them.
    pub async fn effects(
        &self,
        name: &str,
        cause_topic: &str,
        handler: &str,
        cause_seq: u64,
        limit: u32,
    ) -> Result<Vec<Element>> {
        let name = TopicName::new(name)?;
        let read = Read::Effects {
            cause_topic: cause_topic.to_string(),
            handler: handler.to_string(),
            cause_seq,
            limit,
        };
        self.read(&name, read).await?.into_elements()
    }

    /// The range the leader holds, confirmed by a quorum.
    pub async fn latest(&self, name: &str) -> Result<Range> {
        let name = TopicName::new(name)?;
        match self.read(&name, Read::Latest).await? {
            ReadReply::Range { first, last } => Ok(Range { first, last }),
            other => Err(Error::Internal(format!("expected a range, got {other:?}"))),
        }
    }

    pub async fn describe(&self, name: &str) -> Result<TopicView> {
        let name = TopicName::new(name)?;
        match self.read(&name, Read::Describe).await? {
            ReadReply::Status(status) => Ok(TopicView::replicated(*status)),
            other => Err(Error::Internal(format!("expected a status, got {other:?}"))),
        }
    }

    /// Every topic of the cluster, as its leader (or its most advanced
    /// reachable replica) reports it, in name order. Asks every live node.
    pub async fn list(&self) -> Result<Vec<TopicView>> {
        let mut peers = vec![self.overlay.peer_id()];
        for m in self.overlay.members().await? {
            if m.liveness != Liveness::Gone {
                peers.push(m.peer);
            }
        }
        let answers = futures::future::join_all(peers.iter().map(|p| self.groups.replicas_at(*p)));
        let mut best: HashMap<u64, ReplicaStatus> = HashMap::new();
        for (peer, answer) in peers.iter().zip(answers.await) {
            let replicas = match answer {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(%peer, "listing replicas: {e}");
                    continue;
                }
            };
            // The name directory is woof's, not a user's topic.
            for r in replicas.into_iter().filter(|r| r.group != DIRECTORY.0) {
                let better = match best.get(&r.group) {
                    None => true,
                    Some(b) => (r.is_leader, r.applied_index) > (b.is_leader, b.applied_index),
                };
                if better {
                    best.insert(r.group, r);
                }
            }
        }
        let mut views: Vec<TopicView> = best.into_values().map(TopicView::replicated).collect();
        views.sort_by(|a, b| a.info.meta.name.cmp(&b.info.meta.name));
        Ok(views)
    }

    /// Follows a topic from `start`: from this node's replica if it holds
    /// one that reached `start`, else from the leader (a replica catching
    /// up after a restart may not have yet what a handler or a subscriber
    /// already read elsewhere).
    pub async fn subscribe(&self, name: &str, start: Start) -> Result<Following> {
        let topic = TopicName::new(name)?;
        if self.topics.replica_id(&topic).is_some() {
            let behind = match start {
                Start::Seq(seq) => self
                    .topics
                    .latest(name)
                    .is_ok_and(|held| seq > held.last.saturating_add(1)),
                Start::Earliest | Start::Latest => false,
            };
            if !behind {
                return Ok(Following::Local(self.topics.subscribe(name, start)?));
            }
        }
        let range = self.latest(name).await?;
        let next = start.first_seq(name, range)?;
        Ok(Following::Remote(Box::new(RemoteFollow {
            api: self.clone(),
            name: topic,
            next,
        })))
    }
}

/// Puts the topic's name into errors a group raised without it.
fn named(e: woof_consensus::Error, name: &TopicName) -> woof_consensus::Error {
    match e {
        woof_consensus::Error::GroupWithoutTopic => {
            woof_consensus::Error::TopicNotFound(name.to_string())
        }
        e => e,
    }
}

/// A new group id, unique in the cluster: from the name, the creating node,
/// the time and a random number, in `(2^62, 2^63)` (2^62 is the name
/// directory's).
fn new_group_id(name: &TopicName, creator: &PeerId, now_ms: u64, random: u64) -> GroupId {
    // Fixed keys: the randomness is `random`'s alone.
    let mut h = std::hash::DefaultHasher::new();
    name.as_str().hash(&mut h);
    creator.to_bytes().hash(&mut h);
    now_ms.hash(&mut h);
    random.hash(&mut h);
    GroupId(GROUP_ID_MIN | (h.finish() >> 2).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_ids_are_group_ids_and_differ() {
        let name = TopicName::new("a/b").unwrap();
        let peer = PeerId::random();
        let a = new_group_id(&name, &peer, 1, 7);
        let b = new_group_id(&name, &peer, 1, 8);
        assert!(a.0 > DIRECTORY.0 && a.0 < GROUP_ID_MIN << 1, "{a:?}");
        assert_ne!(a, b, "the same name at the same time still gets a new id");
        assert_eq!(a, new_group_id(&name, &peer, 1, 7), "the id is the inputs'");
    }
}
