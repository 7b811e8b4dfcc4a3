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
//! waker), and so does a client request. A request goes first to the
//! member that led the group when it went to sleep (every replica's stored
//! vote names it): started there, the group leads again at once, with no
//! election. If that member does not answer, the node the request reaches
//! starts the group and asks for an election (one for all the requests
//! that woke it together). After a restart a node runs none of its groups
//! until something needs them; there it first gives a running leader a
//! moment to make itself known, and only then asks for an election.
//!
//! A follower that missed the request to sleep keeps running, elects itself
//! (waking the others with its vote requests), and later puts the group to
//! sleep as its leader: the scheme heals itself.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;
use woof_consensus::raft::{Raft, WatchReceiver};
use woof_consensus::store::GroupId;
use woof_consensus::topic::TopicId;
use woof_consensus::topic::directory::DIRECTORY;
use woof_overlay::PeerId;

use super::Groups;
use super::control::{Control, ControlReply};
use super::status::{Metrics, peers, voters};

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

/// What the idle check reads of a group's metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LeaderView {
    pub leader: Option<u64>,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    /// On a leader, the highest index each follower matches.
    pub matched: Option<Vec<Option<u64>>>,
}

impl LeaderView {
    pub fn of(m: &Metrics) -> Self {
        Self {
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|l| l.index),
            matched: m
                .replication
                .as_ref()
                .map(|r| r.values().map(|l| l.map(|l| l.index)).collect()),
        }
    }
}

/// Whether `me` leads a group that may sleep: it served no client for
/// [`SLEEP_AFTER`] (as of `now`), applied all it logged, every voter's log
/// matches its own (so nobody needs anything from a leader), and none of
/// its topic's handlers is behind (they run only while it is awake).
pub(super) fn is_idle_leader(
    view: &LeaderView,
    me: u64,
    last_used: Option<Instant>,
    now: Instant,
    handlers_behind: bool,
) -> bool {
    if handlers_behind {
        return false;
    }
    if last_used.is_some_and(|t| now.saturating_duration_since(t) < SLEEP_AFTER) {
        return false;
    }
    if view.leader != Some(me) {
        return false;
    }
    let last = view.last_log_index;
    if view.last_applied != last {
        return false;
    }
    view.matched
        .as_ref()
        .is_none_or(|r| r.iter().all(|matched| *matched == last))
}

/// Whether a follower asked to sleep by its leader may: it does not lead,
/// and it applied every entry it holds. The leader saw every voter's log
/// match its own, but a follower learns that its last entries committed
/// only from the leader's next message; asleep, it would not apply them,
/// and its replica would read short until the group next wakes. One that
/// may not keeps running, elects itself, and puts the group to sleep
/// as its leader once all applied (see the module doc).
pub(super) fn follower_may_sleep(view: &LeaderView, me: u64) -> bool {
    view.leader != Some(me) && view.last_applied == view.last_log_index
}

impl Groups {
    /// Puts `idle` groups, which this node leads, to sleep on every member:
    /// one request per follower for all of them, and all stopped here at
    /// once, so that sleeping keeps pace with however many groups go idle.
    async fn hibernate(&self, idle: Vec<(GroupId, Raft)>) {
        let me = self.peer_id();
        // In peer order: the simulator repeats a run only if this does.
        let mut by_peer: BTreeMap<PeerId, Vec<GroupId>> = BTreeMap::new();
        for (group, raft) in &idle {
            // Quiet first: a heartbeat reaching a follower that already
            // slept would wake it without a leader, and it would stand.
            raft.runtime_config().heartbeat(false);
            for peer in peers(&voters(&raft.metrics().borrow_watched())) {
                if peer != me {
                    by_peer.entry(peer).or_default().push(*group);
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
                let gate = self.slots.gate(group);
                let _gate = gate.lock().await;
                if self.recently_used(group) {
                    raft.runtime_config().heartbeat(true);
                    return;
                }
                self.stop_sleeping(group).await;
            })
            .await;
    }

    /// Whether `group` served a client within [`SLEEP_AFTER`].
    fn recently_used(&self, group: GroupId) -> bool {
        self.slots
            .last_used(group)
            .is_some_and(|t| t.elapsed() < SLEEP_AFTER)
    }

    /// A follower's side of [`Control::Sleep`]: stops each of `groups`
    /// that runs here and [may sleep](follower_may_sleep).
    pub(super) async fn sleep_followers(&self, groups: Vec<GroupId>) -> ControlReply {
        if groups.len() > SLEEP_GROUPS_MAX {
            return ControlReply::Failed(format!(
                "{} groups to put to sleep; at most {SLEEP_GROUPS_MAX} at once",
                groups.len()
            ));
        }
        futures::stream::iter(groups)
            .for_each_concurrent(STOPS_AT_ONCE, |group| async move {
                if self.running(group).is_none() {
                    // Not held here, or asleep already (and a gate taken for
                    // a group not held would leave a slot behind).
                    return;
                }
                let gate = self.slots.gate(group);
                let _gate = gate.lock().await;
                let Some(raft) = self.running(group) else {
                    return;
                };
                if !follower_may_sleep(
                    &LeaderView::of(&raft.metrics().borrow_watched()),
                    self.node_id,
                ) {
                    return;
                }
                self.stop_sleeping(group).await;
            })
            .await;
        ControlReply::Asleep
    }
}

/// Puts idle groups this node leads to sleep, until the groups shut down.
pub(super) async fn supervise(groups: Groups) {
    let mut stop = groups.stop.subscribe();
    while super::wait_unless_stopped(&mut stop, CHECK_EVERY).await {
        groups.refresh_suspects().await;
        let now = Instant::now();
        let behind = groups.topics.handlers_behind();
        let idle: Vec<(GroupId, Raft)> = groups
            .slots
            .all_running()
            .into_iter()
            // The name directory stays awake: its leader publishes where
            // it is and grows it to full strength (repair).
            .filter(|(group, _)| *group != DIRECTORY)
            .filter(|(group, r)| {
                let view = LeaderView::of(&r.handle.raft.metrics().borrow_watched());
                let handlers_behind = behind.contains(&TopicId(group.0));
                is_idle_leader(
                    &view,
                    groups.node_id,
                    Some(r.last_used),
                    now,
                    handlers_behind,
                )
            })
            .take(SLEEP_GROUPS_MAX)
            .map(|(g, r)| (g, r.handle.raft))
            .collect();
        if !idle.is_empty() {
            groups.hibernate(idle).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: u64 = 7;

    fn caught_up() -> LeaderView {
        LeaderView {
            leader: Some(ME),
            last_log_index: Some(12),
            last_applied: Some(12),
            matched: Some(vec![Some(12), Some(12)]),
        }
    }

    #[test]
    fn a_follower_sleeps_only_once_it_applied_all_it_holds() {
        let follower = LeaderView {
            leader: Some(ME + 1),
            matched: None,
            ..caught_up()
        };
        assert!(follower_may_sleep(&follower, ME));
        let behind = LeaderView {
            last_applied: Some(11),
            ..follower.clone()
        };
        assert!(!follower_may_sleep(&behind, ME));
        // It thinks itself the leader: asleep, nobody would lead.
        assert!(!follower_may_sleep(&caught_up(), ME));
        // Knowing no leader is no reason to stay up.
        let leaderless = LeaderView {
            leader: None,
            ..follower
        };
        assert!(follower_may_sleep(&leaderless, ME));
    }

    #[tokio::test]
    async fn a_caught_up_leader_unused_for_long_enough_is_idle() {
        let now = Instant::now() + SLEEP_AFTER * 2;
        assert!(is_idle_leader(
            &caught_up(),
            ME,
            Some(now - SLEEP_AFTER),
            now,
            false
        ));
        assert!(is_idle_leader(&caught_up(), ME, None, now, false));
        // A handler still behind keeps it up.
        assert!(!is_idle_leader(&caught_up(), ME, None, now, true));
    }

    #[tokio::test]
    async fn a_recently_used_group_is_not_idle() {
        let now = Instant::now() + SLEEP_AFTER * 2;
        let just_before = now - SLEEP_AFTER + Duration::from_millis(1);
        assert!(!is_idle_leader(
            &caught_up(),
            ME,
            Some(just_before),
            now,
            false
        ));
    }

    #[tokio::test]
    async fn only_the_leader_decides() {
        let now = Instant::now() + SLEEP_AFTER * 2;
        let follower = LeaderView {
            leader: Some(ME + 1),
            ..caught_up()
        };
        assert!(!is_idle_leader(&follower, ME, None, now, false));
        let leaderless = LeaderView {
            leader: None,
            ..caught_up()
        };
        assert!(!is_idle_leader(&leaderless, ME, None, now, false));
    }

    #[tokio::test]
    async fn not_idle_while_anything_is_unapplied_or_unreplicated() {
        let now = Instant::now() + SLEEP_AFTER * 2;
        let unapplied = LeaderView {
            last_applied: Some(11),
            ..caught_up()
        };
        assert!(!is_idle_leader(&unapplied, ME, None, now, false));
        let behind = LeaderView {
            matched: Some(vec![Some(12), Some(11)]),
            ..caught_up()
        };
        assert!(!is_idle_leader(&behind, ME, None, now, false));
        let unknown = LeaderView {
            matched: Some(vec![Some(12), None]),
            ..caught_up()
        };
        assert!(!is_idle_leader(&unknown, ME, None, now, false));
        let alone = LeaderView {
            matched: None,
            ..caught_up()
        };
        assert!(
            is_idle_leader(&alone, ME, None, now, false),
            "a single-voter group"
        );
    }
}
