//! The client side of the group layer: this node's requests to groups,
//! wherever they run. Whom to ask is decided by [`LeaderSearch`]; this file
//! sends, waits, gives up on silent peers and keeps the hints for next time.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use woof_consensus::raft::WatchReceiver;

use woof_consensus::bugs::{self, Bug};
use woof_consensus::codec::{decode, encode_after};
use woof_consensus::raft::{Command, CommandResult};
use woof_consensus::store::{GroupId, blocking};
use woof_overlay::PeerId;

use super::control::{Control, ControlReply, Read, ReadReply, ReplicaStatus};
use super::lanes::{EPOCH_MAX, Lanes};
use super::route::{LeaderSearch, Next, Outcome};
use super::status::leader_of;
use super::{Groups, Net, TAG_CONTROL, node_id};
use crate::error::{Error, Result};

/// How long one control request may take before the next member is tried.
pub(super) const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a request waiting on a peer checks whether the overlay now
/// suspects it.
const SUSPECT_POLL: Duration = Duration::from_millis(200);
/// Where node-wide values are kept among the groups' values: an id below
/// every group's (see `GROUP_ID_MIN`), which [`Groups::load_all`] passes over.
pub(super) const NODE_VALUES: GroupId = GroupId(0);
/// The value of [`NODE_VALUES`] that holds the last lane epoch.
const LANE_EPOCH: &str = "lane-epoch";
/// The value of [`NODE_VALUES`] set once this node made a name directory.
const DIRECTORY_MADE: &str = "directory-made";
/// Leader hints kept; past this the oldest are forgotten (they are only
/// where a search starts).
const LEADER_HINTS_MAX: usize = 65_536;

/// Where this node's requests go: the leader each group last answered
/// from, and the peers the overlay suspects.
#[derive(Default)]
pub(super) struct Routes {
    leaders: Mutex<HashMap<GroupId, PeerId>>,
    suspects: Mutex<HashSet<PeerId>>,
}

impl Routes {
    fn leaders(&self) -> std::sync::MutexGuard<'_, HashMap<GroupId, PeerId>> {
        self.leaders.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn leader(&self, group: GroupId) -> Option<PeerId> {
        self.leaders().get(&group).copied()
    }

    fn answered(&self, group: GroupId, peer: PeerId) {
        let mut leaders = self.leaders();
        if leaders.len() >= LEADER_HINTS_MAX && !leaders.contains_key(&group) {
            leaders.clear();
        }
        leaders.insert(group, peer);
    }

    /// Forgets `group`'s leader (if it is `peer`, when given).
    fn forget(&self, group: GroupId, peer: Option<PeerId>) {
        let mut leaders = self.leaders();
        if peer.is_none() || leaders.get(&group) == peer.as_ref() {
            leaders.remove(&group);
        }
    }

    fn suspected(&self, peer: &PeerId) -> bool {
        self.suspects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(peer)
    }

    /// The node ids of the peers the overlay suspects (or that said they
    /// leave), as last refreshed.
    pub(super) fn suspected_ids(&self) -> HashSet<u64> {
        self.suspects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(super::node_id)
            .collect()
    }

    fn set_suspects(&self, suspects: HashSet<PeerId>) {
        *self.suspects.lock().unwrap_or_else(|e| e.into_inner()) = suspects;
    }
}

/// How long a refresh of the suspected peers waits for the overlay.
const SUSPECTS_WITHIN: Duration = Duration::from_millis(500);

/// Sends `payload` (a tag, then the message) to `peer`.
pub(super) async fn request(
    net: &dyn Net,
    peer: PeerId,
    payload: Vec<u8>,
) -> woof_consensus::Result<Vec<u8>> {
    net.request(peer, payload)
        .await
        .map_err(woof_consensus::Error::Network)
}

impl Groups {
    /// Starts `group` on every one of `members` (this node included, if it
    /// is one) and makes them its voters. Starting a group twice is
    /// harmless. If a member cannot start it, those that did remove it again.
    pub async fn create(&self, group: GroupId, members: &[PeerId]) -> Result<()> {
        let names: Vec<String> = members.iter().map(ToString::to_string).collect();
        // The member that leads the fewest of the groups running here (the
        // first among equals) initializes and so leads at first (see
        // `balance`), once every member runs the group.
        let led = self.leaderships();
        let first = members
            .iter()
            .enumerate()
            .min_by_key(|(i, p)| (led.get(&node_id(p)).copied().unwrap_or(0), *i))
            .map_or(0, |(i, _)| i);
        let mut started = Vec::new();
        let order = (0..members.len()).filter(|i| *i != first).chain([first]);
        for i in order {
            let peer = &members[i];
            let control = Control::StartGroup {
                group,
                members: names.clone(),
                initialize: i == first,
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
            tracing::debug!(group = group.0, %peer, "removing a copy of the group");
            let control = Control::RemoveGroup { group };
            if let Err(e) = self.control(*peer, control, CONTROL_TIMEOUT).await {
                tracing::warn!(group = group.0, %peer, "removing group: {e}");
            }
        }
        self.routes.forget(group, None);
    }

    /// Removes `peer`'s copy of `group` if a repair left it behind: the
    /// membership committed at log index `evidence_at` replaced `peer`, and
    /// its copy holds nothing from there on. A copy that does (a later
    /// repair chose `peer` again and it is catching up, or is a voter
    /// again) stays. Whether it was removed.
    pub async fn remove_left_behind_at(
        &self,
        peer: PeerId,
        group: GroupId,
        evidence_at: u64,
    ) -> Result<bool> {
        let control = Control::RemoveLeftBehind { group, evidence_at };
        match self.control(peer, control, CONTROL_TIMEOUT).await? {
            ControlReply::Removed => {
                self.routes.forget(group, Some(peer));
                Ok(true)
            }
            ControlReply::Kept => Ok(false),
            ControlReply::Failed(why) => Err(Error::Internal(format!(
                "removing {peer}'s copy of group {}: {why}",
                group.0
            ))),
            other => Err(unexpected(other)),
        }
    }

    /// Writes `command` through `group`, whose voters are `members`: on this
    /// node if it leads, else at the leader. See [`Groups::at_leader`].
    /// An append that names no producer is given one of this node's
    /// [`lanes`](super::lanes) first, kept through every retry, so that it
    /// is applied once whatever leader changes happen meanwhile.
    pub async fn write(
        &self,
        group: GroupId,
        members: &[PeerId],
        command: Command,
    ) -> Result<CommandResult> {
        let (command, lane) = match command {
            Command::Append {
                payloads,
                producer: None,
                time_ms,
                cause,
                handler,
            } => {
                let lane = self.lanes().await?.take().await;
                let producer = Some((lane.id.clone(), lane.seq));
                let command = Command::Append {
                    payloads,
                    producer,
                    time_ms,
                    cause,
                    handler,
                };
                (command, Some(lane))
            }
            other => (other, None),
        };
        let attempts = std::sync::atomic::AtomicUsize::new(0);
        let reply = self
            .at_leader(group, members, CONTROL_TIMEOUT, || {
                let retry = attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed) > 0;
                let command = match &command {
                    Command::Append {
                        payloads,
                        time_ms,
                        cause,
                        handler,
                        ..
                    } if retry
                        && lane.is_some()
                        && bugs::on(Bug::ForwardedRetryWithoutIdentity) =>
                    {
                        Command::Append {
                            payloads: payloads.clone(),
                            producer: None,
                            time_ms: *time_ms,
                            cause: cause.clone(),
                            handler: handler.clone(),
                        }
                    }
                    command => command.clone(),
                };
                Control::Write { group, command }
            })
            .await?;
        match reply {
            // The client named no producer: to it, a retry of this node's
            // that found the append committed is just the append.
            ControlReply::Written(CommandResult::Appended(mut outcome)) if lane.is_some() => {
                outcome.duplicate = false;
                Ok(CommandResult::Appended(outcome))
            }
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
                group,
                topic: topic.to_string(),
                read: read.clone(),
            })
            .await?;
        match reply {
            ControlReply::Read(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// Whether this node's store ever made a name directory (a restarted
    /// first node must not make a second one once its copy was moved away).
    pub async fn directory_made_here(&self) -> Result<bool> {
        let store = self.store.clone();
        Ok(blocking(move || store.value(NODE_VALUES, DIRECTORY_MADE))
            .await?
            .is_some())
    }

    /// Records that this node made a name directory (synced).
    pub async fn mark_directory_made(&self) -> Result<()> {
        let store = self.store.clone();
        blocking(move || store.put_value(NODE_VALUES, DIRECTORY_MADE, &[1])).await?;
        Ok(())
    }

    /// This node's lanes, in a new epoch the first time (persisted before
    /// any lane is used, so that sequences keep growing across restarts).
    async fn lanes(&self) -> Result<Arc<Lanes>> {
        let lanes = self
            .lanes
            .get_or_try_init(|| async {
                let store = self.store.clone();
                let epoch = blocking(move || {
                    let last = match store.value(NODE_VALUES, LANE_EPOCH)? {
                        Some(b) => u64::from_be_bytes(b.as_slice().try_into().map_err(|_| {
                            woof_consensus::Error::Corrupt(format!(
                                "lane epoch of {} bytes",
                                b.len()
                            ))
                        })?),
                        None => 0,
                    };
                    let epoch = last + 1;
                    if epoch > EPOCH_MAX {
                        return Err(woof_consensus::Error::Corrupt(format!(
                            "lane epoch {epoch} is past {EPOCH_MAX}"
                        )));
                    }
                    store.put_value(NODE_VALUES, LANE_EPOCH, &epoch.to_be_bytes())?;
                    Ok(epoch)
                })
                .await?;
                Ok::<_, Error>(Arc::new(Lanes::new(&self.client.peer_id(), epoch)))
            })
            .await?;
        Ok(lanes.clone())
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

    /// `peer`'s replica of `group`, if it holds one.
    pub async fn replica_at(&self, peer: PeerId, group: GroupId) -> Result<Option<ReplicaStatus>> {
        match self
            .control(peer, Control::Replica { group }, CONTROL_TIMEOUT)
            .await?
        {
            ControlReply::Replicas(r) => Ok(r.into_iter().find(|r| r.group == group.0)),
            other => Err(unexpected(other)),
        }
    }

    /// Sends what `control` makes to the leader of `group`, as
    /// [`LeaderSearch`] directs. A member the overlay suspects (silent for
    /// seconds: dead, paused or cut off) is passed over without asking, and
    /// one that stops answering is given up on as soon as there is reason
    /// to. A refusal ends it as an error.
    async fn at_leader(
        &self,
        group: GroupId,
        members: &[PeerId],
        timeout: Duration,
        control: impl Fn() -> Control,
    ) -> Result<ControlReply> {
        let hint = self
            .routes
            .leader(group)
            .or_else(|| self.slept_leader(group, members));
        let Some(mut search) = LeaderSearch::new(members, self.local_leader(group), hint) else {
            return Err(Error::Usage(format!("group {} has no members", group.0)));
        };
        loop {
            let target = search.target();
            let answer = if self.routes.suspected(&target) {
                Err(Error::Log(woof_consensus::Error::Network(
                    "suspected by the overlay (silent for seconds)".into(),
                )))
            } else {
                tokio::select! {
                    answer = self.control(target, control(), timeout) => answer,
                    why = self.gave_up_on(group, target) => {
                        Err(Error::Log(woof_consensus::Error::Network(why)))
                    }
                }
            };
            let outcome = match answer {
                Ok(ControlReply::NotLeader(hint)) => {
                    Outcome::NotLeader(hint.as_deref().and_then(super::status::peer))
                }
                Ok(ControlReply::Refused(e)) => return Err(Error::Log(e)),
                Ok(ControlReply::NoGroup) => Outcome::NoGroup,
                Ok(ControlReply::Failed(why)) => Outcome::Failed(why),
                Ok(reply) => {
                    self.routes.answered(group, target);
                    return Ok(reply);
                }
                Err(e) => {
                    self.routes.forget(group, Some(target));
                    Outcome::Failed(e.to_string())
                }
            };
            tracing::debug!(group = group.0, %target, ?outcome, "no answer from the leader asked");
            match search.next(outcome, self.local_leader(group)) {
                Next::Ask { pause, .. } => {
                    if !pause.is_zero()
                        && let Some(leader) = self.leader_within(group, target, pause).await
                    {
                        search.follow_local(leader);
                    }
                }
                Next::Gone => {
                    self.routes.forget(group, None);
                    return Err(Error::Log(woof_consensus::Error::GroupWithoutTopic));
                }
                Next::GiveUp(last) => {
                    self.routes.forget(group, None);
                    return Err(Error::Log(woof_consensus::Error::Network(format!(
                        "no leader for group {} after {} attempts; last: {last}",
                        group.0,
                        super::route::ATTEMPTS
                    ))));
                }
            }
        }
    }

    /// Resolves once `target` is no longer worth waiting for: this node's
    /// replica of `group` knows another leader, or the overlay suspects it.
    async fn gave_up_on(&self, group: GroupId, target: PeerId) -> String {
        if target == self.client.peer_id() {
            return std::future::pending().await;
        }
        // The server metrics: they change with the leader, not with every
        // append this replica takes meanwhile.
        let mut metrics = self.running(group).map(|raft| raft.server_metrics());
        loop {
            if let Some(rx) = &metrics {
                let leader = rx.borrow_watched().current_leader;
                if leader.is_some_and(|l| l != node_id(&target)) {
                    return "the group elected another leader".into();
                }
            }
            if self.routes.suspected(&target) {
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

    /// Waits `pause`, or less if this node's replica of `group` names a
    /// leader other than `failed` meanwhile (returned): after a leader
    /// handed its group over, the forward to it fails and the next leader
    /// is known here a few milliseconds later. Or, if `failed` is this
    /// node and it leads, less if a quorum acknowledges it meanwhile
    /// (this node returned).
    async fn leader_within(
        &self,
        group: GroupId,
        failed: PeerId,
        pause: Duration,
    ) -> Option<PeerId> {
        let Some(mut metrics) = self.running(group).map(|raft| raft.metrics()) else {
            tokio::time::sleep(pause).await;
            return None;
        };
        // A leader just elected refuses writes (naming no leader) until a
        // quorum has acknowledged it: openraft 0.10's lease, a round trip
        // after the election. When this node was the one that refused and
        // it leads, it is asked again once a quorum acknowledges it anew.
        let me = self.client.peer_id();
        let acked = metrics.borrow_watched().last_quorum_acked;
        let news = async {
            loop {
                let (leader, acked_now) = {
                    let m = metrics.borrow_watched();
                    (leader_of(&m), m.last_quorum_acked)
                };
                if leader.is_some_and(|l| l != failed) {
                    return leader;
                }
                if failed == me && leader == Some(me) && acked_now != acked {
                    return leader;
                }
                if metrics.changed().await.is_err() {
                    return std::future::pending().await;
                }
            }
        };
        tokio::time::timeout(pause, news).await.ok().flatten()
    }

    /// The leader this node's running replica of `group` knows, if any.
    fn local_leader(&self, group: GroupId) -> Option<PeerId> {
        leader_of(&self.running(group)?.metrics().borrow_watched())
    }

    /// If `group` sleeps here, the member that led it when it went to
    /// sleep: asked first, it wakes the group and leads again at once. (A
    /// request that woke the group here instead asked for an election, which
    /// the old leader, woken by it and leading again, refused until its
    /// lease ran out: a flood of batches waited 2-3 s for its first, and the
    /// election could end on either node.)
    fn slept_leader(&self, group: GroupId, members: &[PeerId]) -> Option<PeerId> {
        if self.running(group).is_some() {
            return None;
        }
        let id = woof_consensus::raft::log_store::stored_leader(&*self.store, group)
            .inspect_err(|e| {
                tracing::warn!(group = group.0, "reading the stored vote: {e}");
            })
            .ok()
            .flatten()?;
        members.iter().find(|p| node_id(p) == id).copied()
    }

    /// Refreshes the peers the overlay suspects; keeps the last ones if the
    /// overlay does not answer within [`SUSPECTS_WITHIN`] (a stopping
    /// node's hand-over waits for this).
    pub(super) async fn refresh_suspects(&self) {
        let Ok(Ok(silent)) =
            tokio::time::timeout(SUSPECTS_WITHIN, self.client.silent_peers()).await
        else {
            return;
        };
        self.routes.set_suspects(silent.into_iter().collect());
    }

    /// Sends a control message to `peer`, or handles it here if `peer` is us.
    pub(super) async fn control(
        &self,
        peer: PeerId,
        control: Control,
        timeout: Duration,
    ) -> Result<ControlReply> {
        if peer == self.client.peer_id() {
            return Ok(self.handle_control(control).await);
        }
        let message = encode_after(vec![TAG_CONTROL], &control)?;
        let sent = request(&*self.client, peer, message);
        match tokio::time::timeout(timeout, sent).await {
            Ok(answer) => Ok(decode(&answer?)?),
            Err(_) => Err(Error::Log(woof_consensus::Error::Network(format!(
                "{peer} did not answer within {} ms",
                timeout.as_millis()
            )))),
        }
    }
}

/// A reply that does not fit the request (a bug, or a peer of another version).
fn unexpected(reply: ControlReply) -> Error {
    Error::Internal(format!("unexpected peer reply {reply:?}"))
}
