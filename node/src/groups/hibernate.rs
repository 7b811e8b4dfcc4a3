//! Idle groups sleep, so that thousands of quiet topics cost a node nothing
//! (after TiKV's hibernate regions).
//!
//! A group runs (an openraft instance with its timers and tasks) only while
//! it is used. Its leader watches it: once it has served no client for
//! [`SLEEP_AFTER`] and every voter's log matches its own, it asks the
//! followers to stop running the group ([`Control::Sleep`]), then stops it
//! itself. Nothing is lost: the log, vote and topic stay in storage, and
//! the topic stays readable from every replica.
//!
//! Any Raft message for a sleeping group starts it again (the router's
//! waker), and so does a client request: the node that gets one starts the
//! group and, as nobody leads a group that went to sleep, asks for an
//! election at once. After a restart a node runs none of its groups until
//! something needs them; there it first gives a running leader a moment to
//! make itself known, and only then asks for an election.
//!
//! A follower that missed the request to sleep keeps running, elects itself
//! (waking the others with its vote requests), and later puts the group to
//! sleep as its leader: the scheme heals itself.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use futures::StreamExt;

use openraft::Raft;
use woof_consensus::TopicInfo;
use woof_consensus::raft::TypeConfig;
use woof_consensus::store::GroupId;
use woof_overlay::PeerId;

use super::control::{Control, ControlReply, ReplicaStatus};
use super::{Groups, peers, voters};
use crate::error::Result;

/// A group that served no client for this long may sleep.
pub const SLEEP_AFTER: Duration = Duration::from_secs(3);
/// How often the leader side looks for idle groups.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long a follower may take to answer a request to sleep.
const SLEEP_TIMEOUT: Duration = Duration::from_secs(2);
/// The most groups one request puts to sleep (and one round of the
/// supervisor looks at).
pub(super) const SLEEP_GROUPS_MAX: usize = 1024;
/// Groups stopped at once.
const STOPS_AT_ONCE: usize = 64;
/// After a restart, how long a woken group waits to hear of a running leader
/// before it asks for an election.
const LEADER_NOTICE: Duration = Duration::from_millis(300);
/// How long a woken group waits for an election to give it a leader.
const ELECTION_WAIT: Duration = Duration::from_secs(2);

/// A group this node holds but does not run.
#[derive(Debug, Clone)]
pub(super) struct Asleep {
    /// The voters' peer ids, as last applied.
    pub members: Vec<String>,
    pub applied_index: u64,
    /// Put to sleep by its leader (so nobody leads it), rather than found
    /// in storage at start (when a leader may be running elsewhere).
    pub clean: bool,
}

impl Asleep {
    pub fn status(&self, group: u64, info: TopicInfo) -> ReplicaStatus {
        ReplicaStatus {
            group,
            meta: info.meta,
            first_seq: info.range.first,
            last_seq: info.range.last,
            members: self.members.clone(),
            leader: None,
            is_leader: false,
            applied_index: self.applied_index,
            term: 0,
            progress: Vec::new(),
        }
    }
}

impl Groups {
    pub(super) fn asleep_mut(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, Asleep>> {
        self.asleep.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn activity_mut(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, Instant>> {
        self.activity.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes that `group` served a client now.
    pub(super) fn touch(&self, group: GroupId) {
        self.activity_mut().insert(group.0, Instant::now());
    }

    /// The running group, started first if it sleeps here; `None` if this
    /// node holds no such group.
    pub(super) async fn wake(&self, group: GroupId) -> Result<Option<Raft<TypeConfig>>> {
        if let Some(raft) = self.router.get(group) {
            return Ok(Some(raft));
        }
        let store = self.store.clone();
        let member = woof_consensus::store::blocking(move || store.value(group, "member")).await?;
        if member.is_none() {
            return Ok(None);
        }
        tracing::debug!(group = group.0, "waking group");
        Ok(Some(self.start(group).await?))
    }

    /// The group, running and with a leader if one can be had, to serve a
    /// client; else the reply that says why not.
    pub(super) async fn serving(
        &self,
        group: GroupId,
    ) -> std::result::Result<Raft<TypeConfig>, ControlReply> {
        let slept_cleanly = self.asleep_mut().get(&group.0).map(|a| a.clean);
        let raft = match self.wake(group).await {
            Ok(Some(raft)) => raft,
            Ok(None) => return Err(ControlReply::NoGroup),
            Err(e) => return Err(ControlReply::Failed(e.to_string())),
        };
        self.touch(group);
        let has_leader = |raft: &Raft<TypeConfig>| raft.metrics().borrow().current_leader.is_some();
        if !has_leader(&raft) {
            if slept_cleanly != Some(true) {
                let _ = raft
                    .wait(Some(LEADER_NOTICE))
                    .metrics(|m| m.current_leader.is_some(), "a leader")
                    .await;
            }
            if !has_leader(&raft) {
                let _ = raft.trigger().elect().await;
                let _ = raft
                    .wait(Some(ELECTION_WAIT))
                    .metrics(|m| m.current_leader.is_some(), "a leader")
                    .await;
            }
        }
        Ok(raft)
    }

    /// Whether this node leads `group`, which is idle and fully replicated.
    fn idle_leader(&self, group: GroupId, raft: &Raft<TypeConfig>) -> bool {
        if self.recently_used(group) {
            return false;
        }
        let m = raft.metrics().borrow().clone();
        if m.current_leader != Some(self.node_id) {
            return false;
        }
        let last = m.last_log_index;
        if m.last_applied.map(|l| l.index) != last {
            return false;
        }
        m.replication
            .as_ref()
            .is_none_or(|r| r.values().all(|matched| matched.map(|l| l.index) == last))
    }

    /// Puts `idle` groups, which this node leads, to sleep on every member:
    /// one request per follower for all of them, and all stopped here at
    /// once, so that sleeping keeps pace with however many groups go idle.
    async fn hibernate(&self, idle: Vec<(GroupId, Raft<TypeConfig>)>) {
        let me = self.peer_id();
        // In peer order: the simulator repeats a run only if this does.
        let mut by_peer: BTreeMap<PeerId, Vec<u64>> = BTreeMap::new();
        for (group, raft) in &idle {
            // Quiet first: a heartbeat reaching a follower that already
            // slept would wake it without a leader, and it would stand.
            raft.runtime_config().heartbeat(false);
            for peer in peers(&voters(&raft.metrics().borrow())) {
                if peer != me {
                    by_peer.entry(peer).or_default().push(group.0);
                }
            }
        }
        // A follower that does not answer heals later (see the module doc).
        futures::future::join_all(by_peer.into_iter().map(|(peer, groups)| async move {
            let count = groups.len();
            if let Err(e) = self
                .control(peer, Control::Sleep { groups }, SLEEP_TIMEOUT)
                .await
            {
                tracing::debug!(%peer, count, "asking to sleep: {e}");
            }
        }))
        .await;
        futures::stream::iter(idle)
            .for_each_concurrent(STOPS_AT_ONCE, |(group, raft)| async move {
                let _starting = self.start_lock(group).await;
                if self.recently_used(group) {
                    raft.runtime_config().heartbeat(true);
                    return;
                }
                self.stop_sleeping(group, raft).await;
            })
            .await;
    }

    /// Whether `group` served a client within [`SLEEP_AFTER`].
    fn recently_used(&self, group: GroupId) -> bool {
        self.activity_mut()
            .get(&group.0)
            .is_some_and(|t| t.elapsed() < SLEEP_AFTER)
    }

    /// Stops running `group` here and records it as asleep. The caller holds
    /// the group's start lock.
    async fn stop_sleeping(&self, group: GroupId, raft: Raft<TypeConfig>) {
        let m = raft.metrics().borrow().clone();
        self.router.remove(group);
        let _ = raft.shutdown().await;
        self.activity_mut().remove(&group.0);
        self.proposers_mut().remove(&group.0);
        self.asleep_mut().insert(
            group.0,
            Asleep {
                members: voters(&m),
                applied_index: m.last_applied.map_or(0, |l| l.index),
                clean: true,
            },
        );
        tracing::debug!(group = group.0, "group asleep");
    }

    /// A follower's side of [`Control::Sleep`]: stops each of `groups`
    /// that runs here and does not think itself the leader.
    pub(super) async fn sleep_followers(&self, groups: Vec<u64>) -> ControlReply {
        if groups.len() > SLEEP_GROUPS_MAX {
            return ControlReply::Failed(format!(
                "{} groups to put to sleep; at most {SLEEP_GROUPS_MAX} at once",
                groups.len()
            ));
        }
        futures::stream::iter(groups)
            .for_each_concurrent(STOPS_AT_ONCE, |group| async move {
                let group = GroupId(group);
                let _starting = self.start_lock(group).await;
                let Some(raft) = self.router.get(group) else {
                    return;
                };
                if raft.metrics().borrow().current_leader == Some(self.node_id) {
                    return;
                }
                self.stop_sleeping(group, raft).await;
            })
            .await;
        ControlReply::Asleep
    }
}

/// Puts idle groups this node leads to sleep, until the groups shut down.
pub(super) async fn supervise(groups: Groups) {
    let mut stop = groups.stop.subscribe();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
        groups.refresh_suspects().await;
        let idle: Vec<_> = groups
            .router
            .list()
            .into_iter()
            .filter(|(group, raft)| groups.idle_leader(*group, raft))
            .take(SLEEP_GROUPS_MAX)
            .collect();
        if !idle.is_empty() {
            groups.hibernate(idle).await;
        }
    }
}
