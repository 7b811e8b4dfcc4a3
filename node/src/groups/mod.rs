//! Raft groups on this node, talking to their peers over the overlay.
//!
//! Node-to-node messages travel as overlay requests with a one-byte tag in
//! front: [`TAG_RAFT_BATCH`] carries Raft messages for the consensus crate's
//! router, which hands each to its group (coalesced per peer, see
//! [`transport`]); [`TAG_CONTROL`] carries a [`Control`] message (start a
//! group, write or read through its leader, list, sleep, remove),
//! CBOR-encoded like the Raft traffic.
//!
//! Layout: this file (the groups of a node, routing to leaders),
//! [`control`] (the control messages), [`transport`] (Raft traffic),
//! [`hibernate`] (idle groups sleep), [`membership`] (replacing a replica),
//! [`net`] (what the groups need of the overlay, as a trait the simulator
//! implements too).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use openraft::{BasicNode, Raft};
use serde_bytes::ByteBuf;
use tokio::sync::{Semaphore, mpsc};
use woof_consensus::raft::group::{self, Timing};
use woof_consensus::raft::network::{Router, Transport};
use woof_consensus::raft::state_machine::peek;
use woof_consensus::raft::{Command, CommandResult, TypeConfig, decode, encode};
use woof_consensus::store::{GROUP_ID_MIN, GroupId, GroupStore, Op, WriteBatch, blocking};
use woof_consensus::topic::{Element, Range, TopicId, first_seq};
use woof_consensus::{Start, TopicInfo, Topics};
use woof_overlay::{Inbound, PeerId};

use crate::error::{Error, Result};

mod control;
mod hibernate;
mod membership;
mod net;
mod propose;
mod transport;

use control::{Control, ControlReply};
pub use control::{Read, ReadReply, ReplicaStatus};
use hibernate::Asleep;
pub use net::Net;

/// Raft messages for the consensus router (see [`transport`]).
const TAG_RAFT_BATCH: u8 = 3;
/// A [`Control`] message.
const TAG_CONTROL: u8 = 2;
/// How many times a request follows a leader hint or tries another member.
const WRITE_ATTEMPTS: usize = 40;
/// How long one control request may take before the next member is tried.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);
/// The most elements one follow step returns.
const FOLLOW_ELEMENTS_MAX: u32 = 1024;
/// The longest one follow step waits.
const FOLLOW_WAIT_MAX_MS: u64 = 10_000;
/// How often a request waiting on a peer checks whether the overlay now
/// suspects it.
const SUSPECT_POLL: Duration = Duration::from_millis(200);
/// The pause between write attempts while a group elects a leader.
const WRITE_BACKOFF: Duration = Duration::from_millis(100);

/// Peer requests handled at once; past this they wait in the overlay's queue.
const INBOUND_CONCURRENCY: usize = 256;

/// The Raft node id of a peer: the low 64 bits of its peer id, the same on
/// every node.
pub fn node_id(peer: &PeerId) -> u64 {
    let bytes = peer.to_bytes();
    let mut id = [0u8; 8];
    id.copy_from_slice(&bytes[bytes.len() - 8..]);
    u64::from_be_bytes(id)
}

/// Sends a tagged message to `peer`.
async fn request(
    net: &dyn Net,
    peer: PeerId,
    tag: u8,
    message: &[u8],
) -> woof_consensus::Result<Vec<u8>> {
    let mut framed = Vec::with_capacity(message.len() + 1);
    framed.push(tag);
    framed.extend_from_slice(message);
    net.request(peer, framed)
        .await
        .map_err(woof_consensus::Error::Network)
}

/// This node's Raft groups.
#[derive(Clone)]
pub struct Groups {
    node_id: u64,
    store: Arc<dyn GroupStore>,
    /// Where the groups publish what they apply; reads are served from it.
    topics: Topics,
    router: Router,
    transport: Arc<transport::OverlayTransport>,
    client: Arc<dyn Net>,
    /// The leader each group last answered from, tried first next time.
    leaders: Arc<Mutex<HashMap<u64, PeerId>>>,
    /// Each group's proposer on this node (see [`propose`]).
    proposers: Arc<Mutex<HashMap<u64, Arc<Mutex<propose::Proposer>>>>>,
    /// Peers the overlay suspects or has given up on, refreshed every second.
    suspects: Arc<Mutex<std::collections::HashSet<PeerId>>>,
    /// Groups this node holds but does not run (see [`hibernate`]).
    asleep: Arc<Mutex<HashMap<u64, Asleep>>>,
    /// When each running group last served a client here.
    activity: Arc<Mutex<HashMap<u64, tokio::time::Instant>>>,
    /// One lock per group, held while it starts or goes to sleep, so that
    /// a group is never started twice (groups start in parallel).
    starting: Arc<Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>>,
    /// Ends the hibernation supervisor.
    stop: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Groups {
    /// Groups over the overlay `client`, storing into `store` and
    /// publishing to `topics`. The returned task serves `inbound` peer
    /// requests until the overlay closes it; await it after shutting the
    /// overlay down, so that nothing holds the store any more.
    pub fn new(
        store: Arc<dyn GroupStore>,
        topics: Topics,
        client: Arc<dyn Net>,
        inbound: mpsc::Receiver<Inbound>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let router = Router::default();
        let groups = Self {
            node_id: node_id(&client.peer_id()),
            store,
            topics,
            router,
            transport: Arc::new(transport::OverlayTransport::new(client.clone())),
            client,
            leaders: Arc::default(),
            suspects: Arc::default(),
            proposers: Arc::default(),
            asleep: Arc::default(),
            activity: Arc::default(),
            starting: Arc::default(),
            stop: Arc::new(tokio::sync::watch::Sender::new(false)),
        };
        let waking = groups.clone();
        groups.router.set_waker(Some(Arc::new(move |group| {
            // Its own task: a wake completes even if the message that
            // caused it is answered (or dropped) before.
            let groups = waking.clone();
            tokio::spawn(async move { groups.wake(group).await.ok().flatten() })
                .map(|woken| woken.ok().flatten())
                .boxed()
        })));
        tokio::spawn(hibernate::supervise(groups.clone()));
        let task = tokio::spawn(serve(inbound, groups.clone()));
        (groups, task)
    }

    /// Holds `group`'s start lock.
    async fn start_lock(&self, group: GroupId) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .starting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(group.0)
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    /// This node's id in every group.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.client.peer_id()
    }

    /// The store the groups write into.
    pub fn store(&self) -> &Arc<dyn GroupStore> {
        &self.store
    }

    /// Makes every group this node's store holds known, without running
    /// them: their topics are served to readers, and each group starts when
    /// a message or a client needs it (a node with thousands of quiet topics
    /// runs none of their groups).
    pub async fn load_all(&self) -> Result<usize> {
        let store = self.store.clone();
        let peeks = blocking(move || {
            let mut peeks = Vec::new();
            for group in store.groups()? {
                peeks.push((group, peek(&*store, &*store, group)?));
            }
            Ok(peeks)
        })
        .await?;
        let count = peeks.len();
        for (group, peek) in peeks {
            if let Some(meta) = &peek.meta {
                let range = Range {
                    first: first_seq(peek.last_seq, meta.config.history),
                    last: peek.last_seq,
                };
                self.topics.publish_replica(meta, range);
            }
            self.asleep_mut().insert(
                group.0,
                Asleep {
                    members: peek.voters,
                    applied_index: peek.applied_index,
                    clean: false,
                },
            );
        }
        Ok(count)
    }

    /// Starts (or restarts from storage) a group on this node.
    pub async fn start(&self, group: GroupId) -> Result<Raft<TypeConfig>> {
        if let Some(raft) = self.router.get(group) {
            return Ok(raft);
        }
        let _starting = self.start_lock(group).await;
        if let Some(raft) = self.router.get(group) {
            return Ok(raft);
        }
        if self.stopped() {
            return Err(Error::Log(woof_consensus::Error::Closed));
        }
        let raft = group::start(
            self.node_id,
            group,
            self.store.clone(),
            self.transport.clone() as Arc<dyn Transport>,
            &self.router,
            Timing::default(),
            Some(&self.topics),
        )
        .await?;
        if self.stopped() {
            // Shut down meanwhile (a peer's request woke the group): a group
            // started now would outlive the node and hold its storage.
            self.router.remove(group);
            let _ = raft.shutdown().await;
            return Err(Error::Log(woof_consensus::Error::Closed));
        }
        self.asleep_mut().remove(&group.0);
        self.touch(group);
        Ok(raft)
    }

    /// Whether [`Groups::shutdown`] was called.
    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Starts `group` on every one of `members` (this node included, if it
    /// is one) and makes them its voters. Starting a group twice is
    /// harmless. If a member cannot start it, those that did remove it again.
    pub async fn create(&self, group: GroupId, members: &[PeerId]) -> Result<()> {
        let names: Vec<String> = members.iter().map(ToString::to_string).collect();
        // The first member initializes, once every member runs the group.
        let mut started = Vec::new();
        for (i, peer) in members.iter().enumerate().rev() {
            let control = Control::StartGroup {
                group: group.0,
                members: names.clone(),
                initialize: i == 0,
            };
            let failure = match self.control(*peer, control, CONTROL_TIMEOUT).await {
                Ok(ControlReply::Started) => {
                    started.push(*peer);
                    continue;
                }
                Ok(other) => format!("{other:?}"),
                Err(e) => e.to_string(),
            };
            self.remove(group, &started).await;
            return Err(Error::Log(woof_consensus::Error::Network(format!(
                "cannot start the topic's group on {peer}: {failure}"
            ))));
        }
        Ok(())
    }

    /// Stops `group` on `members` and removes what it stored there; best
    /// effort (a member that does not answer keeps its copy).
    pub async fn remove(&self, group: GroupId, members: &[PeerId]) {
        for peer in members {
            let control = Control::RemoveGroup { group: group.0 };
            if let Err(e) = self.control(*peer, control, CONTROL_TIMEOUT).await {
                tracing::warn!(group = group.0, %peer, "removing group: {e}");
            }
        }
        self.leaders_mut().remove(&group.0);
    }

    /// Writes `command` through `group`, whose voters are `members`: on this
    /// node if it leads, else at the leader. See [`Groups::at_leader`].
    pub async fn write(
        &self,
        group: GroupId,
        members: &[PeerId],
        command: Command,
    ) -> Result<CommandResult> {
        let reply = self
            .at_leader(group, members, CONTROL_TIMEOUT, || Control::Write {
                group: group.0,
                command: command.clone(),
            })
            .await?;
        match reply {
            ControlReply::Written(result) => Ok(result),
            other => Err(unexpected(other)),
        }
    }

    /// Reads `topic` (of `group`) at its leader.
    pub async fn read(
        &self,
        group: GroupId,
        members: &[PeerId],
        topic: &str,
        read: Read,
    ) -> Result<ReadReply> {
        let timeout = match &read {
            Read::Follow { wait_ms, .. } => CONTROL_TIMEOUT + Duration::from_millis(*wait_ms),
            _ => CONTROL_TIMEOUT,
        };
        let reply = self
            .at_leader(group, members, timeout, || Control::Read {
                group: group.0,
                topic: topic.to_string(),
                read: read.clone(),
            })
            .await?;
        match reply {
            ControlReply::Read(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// The replicas `peer` holds.
    pub async fn replicas_at(&self, peer: PeerId) -> Result<Vec<ReplicaStatus>> {
        match self
            .control(peer, Control::Replicas, CONTROL_TIMEOUT)
            .await?
        {
            ControlReply::Replicas(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// Sends what `control` makes to the leader of `group`: first to the
    /// leader this node's own replica knows, else the one that answered last
    /// time, then following leader hints, trying each member in turn while
    /// the group elects one. Members the overlay suspects (silent for
    /// seconds: dead, paused or cut off) are passed over without waiting for
    /// them. Bounded in attempts (about four seconds of elections). A
    /// refusal ends it as an error.
    async fn at_leader(
        &self,
        group: GroupId,
        members: &[PeerId],
        timeout: Duration,
        control: impl Fn() -> Control,
    ) -> Result<ControlReply> {
        let Some(&first) = members.first() else {
            return Err(Error::Usage(format!("group {} has no members", group.0)));
        };
        let known = self.leaders_mut().get(&group.0).copied();
        let mut target = self
            .local_leader(group)
            .or(known.filter(|p| members.contains(p)))
            .unwrap_or(first);
        let mut next_member = 0;
        let mut without_group = std::collections::HashSet::new();
        let mut last = String::from("no member answered");
        for attempt in 0..WRITE_ATTEMPTS {
            let answer = if self.suspected(&target) {
                Err(Error::Log(woof_consensus::Error::Network(
                    "suspected by the overlay (silent for seconds)".into(),
                )))
            } else {
                tokio::select! {
                    answer = self.control(target, control(), timeout) => answer,
                    // A frozen or cut-off leader may never answer: give up on
                    // it as soon as there is reason to.
                    why = self.gave_up_on(group, target) => {
                        Err(Error::Log(woof_consensus::Error::Network(why)))
                    }
                }
            };
            match answer {
                Ok(ControlReply::NotLeader(Some(leader))) => {
                    if let Ok(peer) = leader.parse::<PeerId>()
                        && peer != target
                    {
                        last = format!("{target}: not the leader");
                        target = peer;
                        if attempt > 2 {
                            // Hints may chase each other while a term changes.
                            tokio::time::sleep(WRITE_BACKOFF / 4).await;
                        }
                        continue;
                    }
                    last = format!("{target}: not the leader, no leader known");
                }
                Ok(ControlReply::Refused(e)) => return Err(Error::Log(e)),
                Ok(ControlReply::NotLeader(None)) => {
                    last = format!("{target}: not the leader, no leader known");
                }
                Ok(ControlReply::NoGroup) => {
                    without_group.insert(target);
                    if members.iter().all(|m| without_group.contains(m)) {
                        // Deleted (or never created): no member runs it.
                        self.leaders_mut().remove(&group.0);
                        return Err(Error::Log(woof_consensus::Error::TopicNotFound(
                            String::new(),
                        )));
                    }
                    last = format!("{target}: does not hold the group");
                }
                Ok(ControlReply::Failed(why)) => last = format!("{target}: {why}"),
                Ok(reply) => {
                    self.leaders_mut().insert(group.0, target);
                    return Ok(reply);
                }
                Err(e) => {
                    last = format!("{target}: {e}");
                    let mut leaders = self.leaders_mut();
                    if leaders.get(&group.0) == Some(&target) {
                        leaders.remove(&group.0);
                    }
                }
            }
            // No usable hint: after a pause, the leader this node's replica
            // knows now, if that is news, else the next member.
            tokio::time::sleep(WRITE_BACKOFF).await;
            target = match self.local_leader(group).filter(|l| *l != target) {
                Some(leader) => leader,
                None => {
                    next_member = (next_member + 1) % members.len();
                    members[next_member]
                }
            };
        }
        self.leaders_mut().remove(&group.0);
        Err(Error::Log(woof_consensus::Error::Network(format!(
            "no leader for group {} after {WRITE_ATTEMPTS} attempts; last: {last}",
            group.0
        ))))
    }

    /// Resolves once `target` is no longer worth waiting for: this node's
    /// replica of `group` knows another leader, or the overlay suspects it.
    async fn gave_up_on(&self, group: GroupId, target: PeerId) -> String {
        if target == self.client.peer_id() {
            return std::future::pending().await;
        }
        let mut metrics = self.router.get(group).map(|raft| raft.metrics());
        loop {
            if let Some(rx) = &metrics {
                let leader = rx.borrow().current_leader;
                if leader.is_some_and(|l| l != node_id(&target)) {
                    return "the group elected another leader".into();
                }
            }
            if self.suspected(&target) {
                return "suspected by the overlay (silent for seconds)".into();
            }
            let tick = tokio::time::sleep(SUSPECT_POLL);
            match &mut metrics {
                Some(rx) => {
                    tokio::select! {
                        changed = rx.changed() => if changed.is_err() { metrics = None },
                        _ = tick => {}
                    }
                }
                None => tick.await,
            }
        }
    }

    /// The leader this node's running replica of `group` knows, if any.
    fn local_leader(&self, group: GroupId) -> Option<PeerId> {
        let raft = self.router.get(group)?;
        let m = raft.metrics().borrow().clone();
        let leader = m.current_leader?;
        m.membership_config
            .membership()
            .get_node(&leader)?
            .addr
            .parse()
            .ok()
    }

    /// Whether the overlay suspects `peer` (as of the last check).
    fn suspected(&self, peer: &PeerId) -> bool {
        self.suspects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(peer)
    }

    /// Refreshes the peers the overlay suspects.
    async fn refresh_suspects(&self) {
        let Ok(silent) = self.client.silent_peers().await else {
            return;
        };
        let suspects = silent.into_iter().collect();
        *self.suspects.lock().unwrap_or_else(|e| e.into_inner()) = suspects;
    }

    fn leaders_mut(&self) -> std::sync::MutexGuard<'_, HashMap<u64, PeerId>> {
        self.leaders.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends a control message to `peer`, or handles it here if `peer` is us.
    async fn control(
        &self,
        peer: PeerId,
        control: Control,
        timeout: Duration,
    ) -> Result<ControlReply> {
        if peer == self.client.peer_id() {
            return Ok(self.handle_control(control).await);
        }
        let message = encode(&control)?;
        let sent = request(&*self.client, peer, TAG_CONTROL, &message);
        match tokio::time::timeout(timeout, sent).await {
            Ok(answer) => Ok(decode(&answer?)?),
            Err(_) => Err(Error::Log(woof_consensus::Error::Network(format!(
                "{peer} did not answer within {} ms",
                timeout.as_millis()
            )))),
        }
    }

    async fn handle_control(&self, control: Control) -> ControlReply {
        match control {
            Control::StartGroup {
                group,
                members,
                initialize,
            } => {
                self.start_member(GroupId(group), &members, initialize)
                    .await
            }
            Control::Write { group, command } => {
                let raft = match self.serving(GroupId(group)).await {
                    Ok(raft) => raft,
                    Err(reply) => return reply,
                };
                if let Command::Append { .. } = command {
                    return self.propose(GroupId(group), command).await;
                }
                match raft.client_write(command).await {
                    Ok(r) => ControlReply::Written(r.data),
                    Err(e) => match e.forward_to_leader::<BasicNode>() {
                        Some(f) => {
                            ControlReply::NotLeader(f.leader_node.as_ref().map(|n| n.addr.clone()))
                        }
                        None => ControlReply::Failed(e.to_string()),
                    },
                }
            }
            Control::Read { group, topic, read } => {
                if let Read::Follow { .. } = read
                    && self.router.get(GroupId(group)).is_none()
                    && self.asleep_mut().contains_key(&group)
                {
                    // A sleeping group's topic changes only once a write
                    // wakes it: following it needs no leader.
                    return match self.read_local(&topic, read).await {
                        Ok(r) => ControlReply::Read(r),
                        Err(e) => ControlReply::Refused(e),
                    };
                }
                let raft = match self.serving(GroupId(group)).await {
                    Ok(raft) => raft,
                    Err(reply) => return reply,
                };
                if let Some(not_leader) = self
                    .check_leader(&raft, self.must_confirm(&topic, &read))
                    .await
                {
                    return not_leader;
                }
                if let Read::Describe = read {
                    return match self.replica_status(GroupId(group), &raft) {
                        Some(status) => ControlReply::Read(ReadReply::Status(Box::new(status))),
                        None => ControlReply::Refused(woof_consensus::Error::TopicNotFound(topic)),
                    };
                }
                match self.read_local(&topic, read).await {
                    Ok(r) => ControlReply::Read(r),
                    Err(e) => ControlReply::Refused(e),
                }
            }
            Control::Replicas => ControlReply::Replicas(self.replicas()),
            Control::RemoveGroup { group } => match self.remove_local(GroupId(group)).await {
                Ok(()) => ControlReply::Removed,
                Err(e) => ControlReply::Failed(e.to_string()),
            },
            Control::Sleep { groups } => self.sleep_followers(groups).await,
        }
    }

    /// Runs `group` here as one of `members`, initializing it if asked.
    async fn start_member(
        &self,
        group: GroupId,
        members: &[String],
        initialize: bool,
    ) -> ControlReply {
        if group.0 < GROUP_ID_MIN {
            return ControlReply::Failed(format!("{} is not a group id", group.0));
        }
        let mut voters = BTreeMap::new();
        for m in members {
            let Ok(peer) = m.parse::<PeerId>() else {
                return ControlReply::Failed(format!("{m:?} is not a peer id"));
            };
            voters.insert(node_id(&peer), BasicNode::new(m.clone()));
        }
        // Mark the group as this node's before it runs, so that a restart
        // brings it back even if it never voted or stored an entry.
        let store = self.store.clone();
        let marked = blocking(move || store.put_value(group, "member", b"")).await;
        if let Err(e) = marked {
            return ControlReply::Failed(e.to_string());
        }
        let raft = match self.start(group).await {
            Ok(raft) => raft,
            Err(e) => return ControlReply::Failed(e.to_string()),
        };
        if initialize {
            // A second initialize (a retry) is refused by openraft; fine.
            match raft.initialize(voters).await {
                // Stand at once rather than after an election timeout: the
                // others run the group already.
                Ok(()) => {
                    let _ = raft.trigger().elect().await;
                }
                Err(e) => tracing::debug!(group = group.0, "initialize: {e}"),
            }
        }
        ControlReply::Started
    }

    /// `None` if this node leads the group (confirmed by a quorum when
    /// `confirm`), else the answer pointing at the leader.
    async fn check_leader(&self, raft: &Raft<TypeConfig>, confirm: bool) -> Option<ControlReply> {
        if confirm {
            return match group::confirm_leader(raft).await {
                Ok(_) => None,
                Err(e) => Some(match e.forward_to_leader::<BasicNode>() {
                    Some(f) => {
                        ControlReply::NotLeader(f.leader_node.as_ref().map(|n| n.addr.clone()))
                    }
                    None => ControlReply::Failed(e.to_string()),
                }),
            };
        }
        let metrics = raft.metrics().borrow().clone();
        if metrics.current_leader == Some(self.node_id) {
            return None;
        }
        let leader = metrics.current_leader.and_then(|id| {
            metrics
                .membership_config
                .membership()
                .get_node(&id)
                .map(|n| n.addr.clone())
        });
        Some(ControlReply::NotLeader(leader))
    }

    /// Whether answering `read` of `topic` from this node's replica needs a
    /// quorum to confirm first that it leads: a read of the latest range,
    /// and a get or scan that reaches past what the replica holds. Such an
    /// answer ("not there", or fewer elements) would be stale if a newer
    /// leader had committed more (found by the simulator: a leader cut off
    /// from the others answered "out of range" for an element already
    /// acknowledged). Elements it holds never change: those need nothing.
    fn must_confirm(&self, topic: &str, read: &Read) -> bool {
        let holds = |from: u64, to: u64| {
            self.topics
                .latest(topic)
                .is_ok_and(|r| from >= r.first.max(1) && to <= r.last)
        };
        match read {
            Read::Latest => true,
            Read::Get { seq } => !holds(*seq, *seq),
            Read::Scan { from, limit } => !holds(
                *from,
                from.saturating_add(u64::from(*limit)).saturating_sub(1),
            ),
            Read::Follow { .. } | Read::Describe => false,
        }
    }

    /// Serves a read from this node's replica.
    async fn read_local(&self, topic: &str, read: Read) -> woof_consensus::Result<ReadReply> {
        let wire = |elements: Vec<Element>| {
            ReadReply::Elements(
                elements
                    .into_iter()
                    .map(|e| (e.seq, e.append_time_ms, ByteBuf::from(e.payload.to_vec())))
                    .collect(),
            )
        };
        Ok(match read {
            Read::Get { seq } => wire(vec![self.topics.get(topic, seq).await?]),
            Read::Scan { from, limit } => wire(self.topics.scan(topic, from, limit).await?),
            Read::Latest => {
                let range = self.topics.latest(topic)?;
                ReadReply::Range {
                    first: range.first,
                    last: range.last,
                }
            }
            Read::Follow { from, max, wait_ms } => {
                let mut sub = self.topics.subscribe(topic, Start::Seq(from))?;
                let max = max.clamp(1, FOLLOW_ELEMENTS_MAX) as usize;
                let wait = Duration::from_millis(wait_ms.min(FOLLOW_WAIT_MAX_MS));
                match tokio::time::timeout(wait, sub.next_batch(max)).await {
                    Ok(batch) => wire(batch?),
                    Err(_) => ReadReply::Elements(Vec::new()),
                }
            }
            Read::Describe => {
                return Err(woof_consensus::Error::InvalidArgument(
                    "a description is not read from the store".into(),
                ));
            }
        })
    }

    /// This node's replicas, as its groups see them.
    pub fn replicas(&self) -> Vec<ReplicaStatus> {
        let mut topics: HashMap<TopicId, TopicInfo> = self
            .topics
            .list()
            .into_iter()
            .map(|info| (info.meta.id, info))
            .collect();
        let mut out: Vec<ReplicaStatus> = self
            .router
            .list()
            .into_iter()
            // A group whose topic is not created here yet (or deleted) has
            // nothing readers could use.
            .filter_map(|(group, raft)| {
                let info = topics.remove(&TopicId(group.0))?;
                Some(status_of(group, &raft, info, self.node_id))
            })
            .collect();
        for (group, asleep) in self.asleep_mut().iter() {
            if let Some(info) = topics.remove(&TopicId(*group)) {
                out.push(asleep.status(*group, info));
            }
        }
        out
    }

    /// One replica's status.
    fn replica_status(&self, group: GroupId, raft: &Raft<TypeConfig>) -> Option<ReplicaStatus> {
        let info = self
            .topics
            .list()
            .into_iter()
            .find(|i| i.meta.id == TopicId(group.0))?;
        Some(status_of(group, raft, info, self.node_id))
    }

    /// The voters of `group`, if this node runs it.
    pub fn local_members(&self, group: GroupId) -> Option<Vec<PeerId>> {
        let members = match self.router.get(group) {
            Some(raft) => peers(&voters(&raft.metrics().borrow())),
            None => peers(&self.asleep_mut().get(&group.0)?.members),
        };
        (!members.is_empty()).then_some(members)
    }

    /// Stops `group` here and removes its log, state and topic data.
    async fn remove_local(&self, group: GroupId) -> Result<()> {
        if let Some(raft) = self.router.remove(group) {
            let _ = raft.shutdown().await;
        }
        self.asleep_mut().remove(&group.0);
        self.activity_mut().remove(&group.0);
        self.topics.retire_replica(TopicId(group.0));
        let store = self.store.clone();
        blocking(move || {
            let mut batch = WriteBatch::default();
            batch.push(Op::DeleteTopic(TopicId(group.0)));
            store.write(&batch)?;
            store.delete_group(group)
        })
        .await?;
        Ok(())
    }

    /// Stops every group.
    pub async fn shutdown(&self) {
        self.stop.send_replace(true);
        // The waker holds these groups: let go of it (and of the store).
        self.router.set_waker(None);
        self.transport.close();
        self.proposers_mut().clear();
        for raft in self.router.drain() {
            let _ = raft.shutdown().await;
        }
    }
}

type Metrics = openraft::RaftMetrics<u64, BasicNode>;

/// The voters' peer ids (`BasicNode::addr`), as a group's metrics say.
fn voters(metrics: &Metrics) -> Vec<String> {
    let membership = metrics.membership_config.membership();
    membership
        .voter_ids()
        .filter_map(|id| membership.get_node(&id).map(|n| n.addr.clone()))
        .collect()
}

/// Peer ids from their text; ones that do not parse are left out.
fn peers(names: &[String]) -> Vec<PeerId> {
    names.iter().filter_map(|m| m.parse().ok()).collect()
}

/// A replica's status from its group's metrics.
fn status_of(group: GroupId, raft: &Raft<TypeConfig>, info: TopicInfo, me: u64) -> ReplicaStatus {
    let metrics = raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    let addr = |id: u64| membership.get_node(&id).map(|n| n.addr.clone());
    ReplicaStatus {
        group: group.0,
        meta: info.meta,
        first_seq: info.range.first,
        last_seq: info.range.last,
        members: voters(&metrics),
        leader: metrics.current_leader.and_then(addr),
        is_leader: metrics.current_leader == Some(me),
        applied_index: metrics.last_applied.map_or(0, |l| l.index),
        term: metrics.current_term,
        progress: membership
            .voter_ids()
            .filter_map(|id| {
                let matched = if id == me {
                    metrics.last_log_index
                } else {
                    metrics.replication.as_ref()?.get(&id)?.map(|l| l.index)
                };
                Some((addr(id)?, matched.unwrap_or(0)))
            })
            .collect(),
    }
}

/// A reply that does not fit the request (a bug, or a peer of another version).
fn unexpected(reply: ControlReply) -> Error {
    Error::Internal(format!("unexpected peer reply {reply:?}"))
}

/// Answers peer requests; a malformed one is dropped (the peer sees a
/// refusal), never a panic.
async fn serve(mut inbound: mpsc::Receiver<Inbound>, groups: Groups) {
    let limit = Arc::new(Semaphore::new(INBOUND_CONCURRENCY));
    let mut running = tokio::task::JoinSet::new();
    while let Some(request) = inbound.recv().await {
        while running.try_join_next().is_some() {}
        let Ok(permit) = limit.clone().acquire_owned().await else {
            break;
        };
        let groups = groups.clone();
        running.spawn(async move {
            let _permit = permit;
            let answer: std::result::Result<Vec<u8>, Error> = match request.payload.split_first() {
                Some((&TAG_RAFT_BATCH, rest)) => transport::handle_batch(&groups.router, rest)
                    .await
                    .map_err(Error::from),
                Some((&TAG_CONTROL, rest)) => match decode::<Control>(rest) {
                    Ok(control) => {
                        encode(&groups.handle_control(control).await).map_err(Error::from)
                    }
                    Err(e) => Err(e.into()),
                },
                _ => Err(Error::Usage("unknown peer message".into())),
            };
            match answer {
                Ok(bytes) => {
                    let _ = request.reply.send(bytes);
                }
                Err(e) => tracing::debug!(peer = %request.peer, "peer request refused: {e}"),
            }
        });
    }
    // Let the requests under way finish, so that none outlives the node.
    while running.join_next().await.is_some() {}
}
