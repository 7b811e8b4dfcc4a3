//! A group's life on this node: found in storage (asleep), started when a
//! message or a client needs it, put to sleep when idle (see
//! [`super::hibernate`]), removed with its topic, and stopped with the node.
//! Each change goes through [`super::slots`], holding the group's gate.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use woof_consensus::raft::group;
use woof_consensus::raft::network::Transport;
use woof_consensus::raft::state_machine::peek;
use woof_consensus::raft::{Raft, WatchReceiver};
use woof_consensus::store::{GROUP_ID_MIN, GroupId, Op, Store, WriteBatch, blocking};
use woof_consensus::topic::{Range, TopicId, first_seq};
use woof_overlay::PeerId;

use super::control::ControlReply;
use super::slots::Asleep;
use super::status::{voters, voters_settled_at};
use super::{Groups, Member, node_id};
use crate::error::{Error, Result};

/// After a restart, how long a woken group waits to hear of a running leader
/// before it asks for an election.
const LEADER_NOTICE: Duration = Duration::from_millis(300);
/// How long a woken group waits for an election to give it a leader.
const ELECTION_WAIT: Duration = Duration::from_secs(2);

/// A request's claim on asking for `group`'s election: at most one at a
/// time per group on this node, let go when the request is done waiting
/// (or is dropped).
struct Electing {
    set: Arc<super::Elections>,
    group: GroupId,
}

impl Electing {
    /// The claim, unless another request holds it.
    fn ask(set: &Arc<super::Elections>, group: GroupId) -> Option<Self> {
        let mut held = set.lock().unwrap_or_else(|e| e.into_inner());
        held.insert(group).then(|| Self {
            set: set.clone(),
            group,
        })
    }
}

impl Drop for Electing {
    fn drop(&mut self) {
        let mut held = self.set.lock().unwrap_or_else(|e| e.into_inner());
        held.remove(&self.group);
    }
}
/// How long [`Groups::hand_over_leadership`] waits for other nodes to take
/// over: an election with the lease waived takes a round trip and a log
/// write; past this the group is left to an ordinary election.
const HAND_OVER_WAIT: Duration = Duration::from_secs(1);
/// How long [`Groups::shutdown`] waits for the layer's tasks to end.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

impl Groups {
    /// Makes every group this node's store holds known, without running
    /// them: their topics are served to readers, and each group starts when
    /// a message or a client needs it (a node with thousands of quiet topics
    /// runs none of their groups).
    pub(super) async fn load_all(&self) -> Result<usize> {
        let store = self.store.clone();
        let groups = blocking(move || store.groups()).await?;
        // A crash takes back what the state machines applied since the
        // store's last flush (`Store::write_applied`): apply their logs'
        // committed entries again first, or a replica whose group sleeps
        // would serve readers less than its log holds.
        let mut caught_up = 0;
        for group in groups.into_iter().filter(|g| g.0 >= GROUP_ID_MIN) {
            match group::catch_up(self.store.clone(), group).await {
                Ok(n) => caught_up += n,
                // The group applies them when it runs.
                Err(e) => tracing::warn!(group = group.0, "applying a log again: {e}"),
            }
        }
        if caught_up > 0 {
            tracing::info!(entries = caught_up, "applied again what a crash took back");
        }
        let store = self.store.clone();
        let peeks = blocking(move || {
            let mut peeks = Vec::new();
            // Node-wide values sit below every group id: no group.
            let groups: Vec<GroupId> = store
                .groups()?
                .into_iter()
                .filter(|g| g.0 >= GROUP_ID_MIN)
                .collect();
            remove_orphans(&*store, &groups)?;
            for group in groups {
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
                self.topics
                    .publish_replica(meta, range, &Arc::new(peek.handlers.clone()), None);
            }
            self.slots.load(
                group,
                Asleep {
                    members: peek.voters,
                    members_at: peek.voters_at,
                    applied_index: peek.applied_index,
                    last_log_index: peek.last_log_index,
                    clean: false,
                },
            );
        }
        Ok(count)
    }

    /// Starts (or restarts from storage) a group on this node; one this
    /// node no longer holds is [`GroupWithoutTopic`](woof_consensus::Error::GroupWithoutTopic).
    pub async fn start(&self, group: GroupId) -> Result<Raft> {
        self.start_held(group)
            .await?
            .ok_or(Error::Log(woof_consensus::Error::GroupWithoutTopic))
    }

    /// [`start`](Self::start), or `None` if this node does not hold `group`
    /// (never did, or removed it). Checked under the group's gate: a wake
    /// that a peer's message began while the group was being removed must
    /// not start it again from nothing, as a member that never answers
    /// "no such group" (seen in CI: appends to a deleted topic found no
    /// leader instead of no topic).
    async fn start_held(&self, group: GroupId) -> Result<Option<Raft>> {
        if let Some(raft) = self.running(group) {
            return Ok(Some(raft));
        }
        let gate = self.slots.gate(group);
        let _gate = gate.lock().await;
        if let Some(raft) = self.running(group) {
            return Ok(Some(raft));
        }
        let store = self.store.clone();
        if blocking(move || store.value(group, "member"))
            .await?
            .is_none()
        {
            return Ok(None);
        }
        if self.stopped() {
            self.slots.start_failed(group);
            return Err(Error::Log(woof_consensus::Error::Closed));
        }
        // Put to sleep by this process: a leader then leads again at once.
        let slept_cleanly = matches!(
            self.slots.state(group),
            Some(super::slots::State::Asleep(a)) if a.clean
        );
        self.slots
            .begin_start(group)
            .map_err(|e| Error::Internal(format!("group {}: cannot {}", group.0, e.0)))?;
        let started = group::start(
            self.node_id,
            group,
            self.store.clone(),
            self.transport.clone() as std::sync::Arc<dyn Transport>,
            &self.router,
            self.timing,
            Some(&self.topics),
            slept_cleanly,
        )
        .await;
        let raft = match started {
            Ok(raft) => raft,
            Err(e) => {
                self.slots.start_failed(group);
                return Err(e.into());
            }
        };
        if self.stopped() {
            // Shut down meanwhile (a peer's request woke the group): a group
            // started now would outlive the node and hold its storage.
            self.router.remove(group);
            let _ = raft.shutdown().await;
            self.slots.start_failed(group);
            return Err(Error::Log(woof_consensus::Error::Closed));
        }
        let member = Member {
            raft: raft.clone(),
            proposer: Default::default(),
        };
        if let Err(e) = self
            .slots
            .started(group, member, tokio::time::Instant::now())
        {
            // Only a shutdown draining the table meanwhile gets here.
            self.router.remove(group);
            let _ = raft.shutdown().await;
            return Err(Error::Internal(format!(
                "group {}: cannot {}",
                group.0, e.0
            )));
        }
        self.spawn(
            "leader-changes",
            count_leader_changes(
                raft.server_metrics(),
                self.counters.clone(),
                self.stopping(),
            ),
        );
        Ok(Some(raft))
    }

    /// The running group, started first if it sleeps here; `None` if this
    /// node holds no such group.
    pub(super) async fn wake(&self, group: GroupId) -> Result<Option<Raft>> {
        if let Some(raft) = self.running(group) {
            return Ok(Some(raft));
        }
        let store = self.store.clone();
        let member = blocking(move || store.value(group, "member")).await?;
        if member.is_none() {
            return Ok(None);
        }
        tracing::debug!(group = group.0, "waking group");
        self.start_held(group).await
    }

    /// The group, running and with a leader if one can be had, to serve a
    /// client; else the reply that says why not.
    pub(super) async fn serving(&self, group: GroupId) -> std::result::Result<Raft, ControlReply> {
        let slept_cleanly = match self.slots.state(group) {
            Some(super::slots::State::Asleep(a)) => Some(a.clean),
            _ => None,
        };
        let raft = match self.wake(group).await {
            Ok(Some(raft)) => raft,
            Ok(None) => return Err(ControlReply::NoGroup),
            Err(e) => return Err(ControlReply::Failed(e.to_string())),
        };
        self.touch(group);
        let has_leader = |raft: &Raft| raft.metrics().borrow_watched().current_leader.is_some();
        if !has_leader(&raft) {
            if slept_cleanly != Some(true) {
                let _ = raft
                    .wait(Some(LEADER_NOTICE))
                    .metrics(|m| m.current_leader.is_some(), "a leader")
                    .await;
            }
            // One election at a time: the requests that came together
            // (a burst woke the group) would each start one, every one
            // with a higher term than the one before it, and none would
            // finish while the next began (a flood of batches woke a group
            // and waited 2.8-3.8 s for it in half the runs, and sometimes
            // another node won, to which the burst was then forwarded).
            // Not while this node campaigns already (openraft's own timer),
            // nor while another request here waits for the election it
            // asked for (asking is fire-and-forget: the state changes later).
            let campaigning =
                raft.metrics().borrow_watched().state == openraft::ServerState::Candidate;
            let asked = (!has_leader(&raft) && !campaigning)
                .then(|| Electing::ask(&self.electing, group))
                .flatten();
            if asked.is_some() {
                let _ = raft.trigger().elect(false).await;
            }
            if !has_leader(&raft) {
                let _ = raft
                    .wait(Some(ELECTION_WAIT))
                    .metrics(|m| m.current_leader.is_some(), "a leader")
                    .await;
            }
        }
        Ok(raft)
    }

    /// Notes that `group` served a client now.
    pub(super) fn touch(&self, group: GroupId) {
        self.slots.touch(group, tokio::time::Instant::now());
    }

    /// Runs `group` here as one of `members`, initializing it if asked.
    pub(super) async fn join(
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
                    let _ = raft.trigger().elect(false).await;
                }
                Err(e) => tracing::debug!(group = group.0, "initialize: {e}"),
            }
        }
        ControlReply::Started
    }

    /// Stops running `group` here and records it as asleep. The caller holds
    /// the group's gate.
    pub(super) async fn stop_sleeping(&self, group: GroupId) {
        let Some(raft) = self.running(group) else {
            return;
        };
        let m = raft.metrics().borrow_watched().clone();
        let asleep = Asleep {
            members: voters(&m),
            members_at: voters_settled_at(&m),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            last_log_index: m.last_log_index.unwrap_or(0),
            clean: true,
        };
        if self.slots.sleep(group, asleep).is_err() {
            return;
        }
        self.router.remove(group);
        let _ = raft.shutdown().await;
        tracing::debug!(group = group.0, "group asleep");
    }

    /// Removes this node's copy of `group`, left behind by a repair: a
    /// membership committed at log index `evidence_at` leaves this node
    /// out. Only while the copy believes this node a voter and holds
    /// nothing from that index on (it is stopped first, so nothing more
    /// arrives while that is checked): see `api::repair::left_behind`.
    /// Whether it did.
    pub async fn remove_left_behind(&self, group: GroupId, evidence_at: u64) -> Result<bool> {
        let gate = self.slots.gate(group);
        let _gate = gate.lock().await;
        self.stop_sleeping(group).await;
        let me = self.peer_id().to_string();
        match self.slots.state(group) {
            Some(super::slots::State::Asleep(a))
                if a.last_log_index < evidence_at && a.members.contains(&me) => {}
            _ => return Ok(false),
        }
        self.remove_gated(group).await?;
        Ok(true)
    }

    /// Stops `group` here and removes its log, state and topic data.
    pub(super) async fn remove_local(&self, group: GroupId) -> Result<()> {
        let gate = self.slots.gate(group);
        let _gate = gate.lock().await;
        self.remove_gated(group).await
    }

    /// [`remove_local`](Self::remove_local), for a caller that holds the
    /// group's gate.
    async fn remove_gated(&self, group: GroupId) -> Result<()> {
        if let Some(member) = self.slots.begin_leave(group) {
            self.router.remove(group);
            let _ = member.raft.shutdown().await;
        }
        self.topics.retire_replica(TopicId(group.0));
        let store = self.store.clone();
        // The group's Raft state goes first: a crash between the two writes
        // leaves topic data without a group, which the next start deletes
        // (see `load_all`). The other order left a group whose log said
        // its topic was created and applied while the topic was gone: a
        // later repair that chose this node again made it a voter that
        // never held the topic (the simulator found it, seed 1000).
        let removed = blocking(move || {
            store.delete_group(group)?;
            let mut batch = WriteBatch::default();
            batch.push(Op::DeleteTopic(TopicId(group.0)));
            store.write(&batch)
        })
        .await;
        self.slots.finish_leave(group);
        removed?;
        Ok(())
    }

    /// Hands the leadership of every group this node leads to another of
    /// its voters, all at once, waiting at most [`HAND_OVER_WAIT`]: a node
    /// stopped on purpose (a restart, an upgrade) leaves no group without a
    /// leader for the lease and an election (about a second), as a crash
    /// does. Returns how many groups went to another leader and how many
    /// this node led.
    pub async fn hand_over_leadership(&self) -> (usize, usize) {
        // Not to a node that just said it leaves (two stopped at once).
        self.refresh_suspects().await;
        let gone = self.routes.suspected_ids();
        let leading: Vec<Raft> = self
            .slots
            .all_running()
            .into_iter()
            .map(|(_, running)| running.handle.raft)
            .filter(|raft| raft.metrics().borrow_watched().state == openraft::ServerState::Leader)
            .collect();
        let handed = futures::future::join_all(
            leading
                .iter()
                .map(|raft| group::hand_over(raft, HAND_OVER_WAIT, &gone)),
        )
        .await;
        let done = handed.iter().filter(|h| h.is_some()).count();
        if !leading.is_empty() {
            tracing::info!(
                led = leading.len(),
                handed_over = done,
                "leadership handed over before stopping"
            );
        }
        (done, leading.len())
    }

    /// Stops every group and every task the layer spawned, and returns once
    /// they all ended (the peer-request server returned by [`Groups::new`]
    /// ends when the overlay closes its inbound queue). An error names the
    /// kinds of the tasks still running after [`SHUTDOWN_WAIT`] (a bug).
    pub async fn shutdown(&self) -> Result<()> {
        self.stop.send_replace(true);
        // The waker holds these groups: let go of it (and of the store).
        self.router.set_waker(None);
        self.transport.close();
        for member in self.slots.drain() {
            let _ = member.raft.shutdown().await;
        }
        // Groups a wake was starting when the table was drained.
        for raft in self.router.drain() {
            let _ = raft.shutdown().await;
        }
        self.tasks.close();
        if tokio::time::timeout(SHUTDOWN_WAIT, self.tasks.wait())
            .await
            .is_err()
        {
            return Err(Error::Internal(format!(
                "group tasks still running {} s after the groups' shutdown: {:?}",
                SHUTDOWN_WAIT.as_secs(),
                self.tasks.running()
            )));
        }
        Ok(())
    }
}

/// Deletes the data of group topics whose group is gone: a crash in the
/// middle of [`Groups::remove_local`] leaves them.
fn remove_orphans(store: &dyn Store, groups: &[GroupId]) -> woof_consensus::Result<()> {
    let held: BTreeSet<u64> = groups.iter().map(|g| g.0).collect();
    let mut batch = WriteBatch::default();
    for meta in store.topics()? {
        if meta.id.0 >= GROUP_ID_MIN && !held.contains(&meta.id.0) {
            tracing::info!(topic = %meta.name, "removing a topic copy whose group was removed");
            batch.push(Op::DeleteTopic(meta.id));
        }
    }
    if !batch.is_empty() {
        store.write(&batch)?;
    }
    Ok(())
}

/// Counts, for the metrics, each time the group behind `metrics` gets a
/// leader in a newer term than the last one it had a leader in; ends when
/// the group stops (its metrics close) or the groups shut down. It watches
/// the group's server metrics, which change with its vote and leader, not
/// with every append.
async fn count_leader_changes(
    mut metrics: woof_consensus::raft::ServerMetricsReceiver,
    counters: std::sync::Arc<crate::metrics::RaftCounters>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut led_term = 0;
    loop {
        {
            let m = metrics.borrow_and_update();
            let term = m.vote.leader_id().term;
            if m.current_leader.is_some() && term > led_term {
                led_term = term;
                counters
                    .leader_changes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use woof_consensus::store::{MemStore, RaftLogStore};
    use woof_consensus::topic::{TopicConfig, TopicMeta, TopicName};

    use super::*;

    #[test]
    fn one_request_at_a_time_asks_for_a_groups_election() {
        let set = Arc::default();
        let first = Electing::ask(&set, GroupId(7)).expect("nobody asked yet");
        assert!(Electing::ask(&set, GroupId(7)).is_none(), "asked twice");
        let other = Electing::ask(&set, GroupId(8));
        assert!(other.is_some(), "another group is not held back");
        drop(first);
        assert!(
            Electing::ask(&set, GroupId(7)).is_some(),
            "the claim is let go when its request is done"
        );
    }

    fn meta(id: u64, name: &str) -> TopicMeta {
        TopicMeta {
            id: TopicId(id),
            name: TopicName::new(name).unwrap(),
            config: TopicConfig::default(),
            created_at_ms: 1,
            placement: Default::default(),
        }
    }

    #[test]
    fn orphaned_group_topics_are_removed_and_nothing_else() {
        let store = MemStore::new();
        let (held, orphan, standalone) = (GROUP_ID_MIN + 7, GROUP_ID_MIN + 9, 3);
        let mut batch = WriteBatch::default();
        for m in [
            meta(held, "held"),
            meta(orphan, "orphan"),
            meta(standalone, "alone"),
        ] {
            batch.push(Op::PutTopic(m));
        }
        store.write(&batch).unwrap();
        store.put_value(GroupId(held), "vote", b"v").unwrap();

        let groups: Vec<GroupId> = store
            .groups()
            .unwrap()
            .into_iter()
            .filter(|g| g.0 >= GROUP_ID_MIN)
            .collect();
        remove_orphans(&store, &groups).unwrap();

        let mut left: Vec<u64> = store.topics().unwrap().iter().map(|m| m.id.0).collect();
        left.sort();
        assert_eq!(left, vec![standalone, held]);
    }
}
