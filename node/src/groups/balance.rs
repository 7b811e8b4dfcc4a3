//! Leaderships spread over the nodes (after TiKV's balance-leader and
//! Kafka's leader rebalancing).
//!
//! A topic's leader does most of its work: it answers the clients, orders
//! and sends the entries, runs the topic's handlers. Elections put the
//! leaderships wherever they happen to land: after a restart the node that
//! came back leads nothing, and two busy topics led by one node share its
//! cores while another node idles (single appends beside a flood of 8 MiB
//! batches: p99 59-77 ms with both leaders on one node, 30 ms apart).
//!
//! Every [`BALANCE_EVERY`], each node compares, for each other node, the
//! groups that both hold: how many of them it leads and how many the other
//! leads. Where it leads at least two more, it hands one of those it leads
//! and that clients use to the other (openraft's leader transfer, as a
//! node stopping on purpose does), at most [`MOVES_MAX`] a round. Both
//! nodes of a pair count the same groups, so they agree on which of them
//! leads too many, and a move never makes the pair's difference change
//! sign: leaderships do not swing back and forth. A group is moved only to
//! a voter that answered its leader lately and that the overlay does not
//! suspect (a node that said it leaves answered moments ago), and only
//! while such others are a majority ([`group::successors`]): nothing moves
//! while a replica is down. Quiet groups are counted but not moved: they
//! go to sleep, and cost nothing.
//!
//! New groups start balanced too: [`Groups::create`] has the member that
//! leads the fewest groups stand first.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;
use woof_consensus::raft::WatchReceiver;
use woof_consensus::raft::group;
use woof_consensus::store::GroupId;

use super::Groups;
use super::hibernate::SLEEP_AFTER;

/// How often a node looks at how the leaderships of its groups are spread.
const BALANCE_EVERY: Duration = Duration::from_secs(2);
/// The most leaderships a node hands away in one round.
const MOVES_MAX: usize = 8;
/// How long a move waits for the other node to lead.
const MOVE_WAIT: Duration = Duration::from_secs(1);

/// What the balance reads of one group running here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct View {
    pub group: GroupId,
    pub leader: Option<u64>,
    pub voters: Vec<u64>,
    /// If this node leads the group and may hand it over now: the voters
    /// that could take it, best first; else empty.
    pub successors: Vec<u64>,
}

/// The leaderships `me` should hand over, as (group, to whom), at most
/// `most`, judged over the groups `views` (those running on `me`).
pub(super) fn moves(me: u64, views: &[View], most: usize) -> Vec<(GroupId, u64)> {
    // For each other node: the shared groups `me` leads, and those it leads.
    let mut mine: BTreeMap<u64, i64> = BTreeMap::new();
    let mut theirs: BTreeMap<u64, i64> = BTreeMap::new();
    for v in views.iter().filter(|v| v.voters.contains(&me)) {
        match v.leader {
            Some(l) if l == me => {
                for other in v.voters.iter().filter(|o| **o != me) {
                    *mine.entry(*other).or_default() += 1;
                }
            }
            Some(l) if v.voters.contains(&l) => *theirs.entry(l).or_default() += 1,
            _ => {}
        }
    }
    let gap = |mine: &BTreeMap<u64, i64>, theirs: &BTreeMap<u64, i64>, to: u64| {
        mine.get(&to).copied().unwrap_or(0) - theirs.get(&to).copied().unwrap_or(0)
    };
    let mut moved: BTreeSet<GroupId> = BTreeSet::new();
    let mut out = Vec::new();
    while out.len() < most {
        // The widest gap; among equals, the group's best successor, then
        // the lowest group id (the same choice on every run).
        let mut best: Option<(i64, &View, u64)> = None;
        for v in views {
            if v.leader != Some(me) || moved.contains(&v.group) {
                continue;
            }
            for to in &v.successors {
                let g = gap(&mine, &theirs, *to);
                if g >= 2 && best.is_none_or(|(b, _, _)| g > b) {
                    best = Some((g, v, *to));
                }
            }
        }
        let Some((_, v, to)) = best else {
            break;
        };
        for other in v.voters.iter().filter(|o| **o != me) {
            *mine.entry(*other).or_default() -= 1;
        }
        *theirs.entry(to).or_default() += 1;
        moved.insert(v.group);
        out.push((v.group, to));
    }
    out
}

/// Spreads the leaderships of this node's groups, until the groups shut
/// down.
pub(super) async fn supervise(groups: Groups) {
    let mut stop = groups.stop.subscribe();
    while super::wait_unless_stopped(&mut stop, BALANCE_EVERY).await {
        if groups.balancing.load(Ordering::Relaxed) {
            groups.balance().await;
        }
    }
}

impl Groups {
    /// Turns the balance's moves on or off (`balance_leaders` in a node's
    /// config; on by default). Off, this node hands no leadership over to
    /// even them out; new groups still start led by the member that leads
    /// fewest ([`Groups::create`]), and other nodes still balance.
    pub fn balance_leaders(&self, on: bool) {
        self.balancing.store(on, Ordering::Relaxed);
    }

    /// One round of the balance (run every [`BALANCE_EVERY`]; callable at
    /// once, as tests do): hands over the leaderships [`moves`]
    /// picks, all at once. Returns how many went to the node chosen.
    pub async fn balance(&self) -> usize {
        // A node that said it leaves (a planned stop, ADR 41) still looks
        // alive to a group for three heartbeats after its last answer: a
        // move to it would hold the group's writes for `MOVE_WAIT` and end
        // in an election. The overlay knows it is gone.
        self.refresh_suspects().await;
        let gone = self.routes.suspected_ids();
        let now = Instant::now();
        let heartbeat = self.timing.heartbeat_ms;
        let running = self.slots.all_running();
        let views: Vec<View> = running
            .iter()
            .map(|(group, r)| {
                let metrics = r.handle.raft.metrics();
                let m = metrics.borrow_watched();
                let in_use = now.saturating_duration_since(r.last_used) < SLEEP_AFTER;
                let mut successors = if in_use {
                    group::successors(&m, heartbeat, &gone)
                } else {
                    Vec::new()
                };
                successors.sort_by_key(|(id, matched)| (std::cmp::Reverse(*matched), *id));
                View {
                    group: *group,
                    leader: m.current_leader,
                    voters: m.membership_config.membership().voter_ids().collect(),
                    successors: successors.into_iter().map(|(id, _)| id).collect(),
                }
            })
            .collect();
        let moves = moves(self.node_id, &views, MOVES_MAX);
        if moves.is_empty() {
            return 0;
        }
        let rafts: BTreeMap<GroupId, _> = running
            .into_iter()
            .map(|(g, r)| (g, r.handle.raft))
            .collect();
        let done = futures::future::join_all(moves.iter().map(|(g, to)| {
            let raft = rafts.get(g).cloned();
            async move {
                let raft = raft?;
                let term = raft.metrics().borrow_watched().vote.leader_id().term;
                let mut led = group::transfer(&raft, *to, MOVE_WAIT).await;
                tracing::info!(
                    group = g.0,
                    to,
                    ?led,
                    "leadership handed over to balance the nodes"
                );
                if led.is_none() && self.leads(*g) {
                    // openraft's leader takes no writes while a transfer is
                    // pending, and `to` did not stand (it stopped, or its
                    // log did not catch up in time): stand again, to lead
                    // without a transfer pending.
                    tracing::warn!(
                        group = g.0,
                        to,
                        "the transfer did not happen; standing again"
                    );
                    let _ = raft.trigger().elect(false).await;
                }
                if led.is_none() {
                    // `to` may stand late all the same (its log caught up
                    // after the wait): the move is what the next term's
                    // leader is, once one is known.
                    led = group::leader_after(&raft, term, MOVE_WAIT).await;
                    tracing::info!(group = g.0, to, ?led, "led after a late transfer");
                }
                (led == Some(*to)).then_some(())
            }
        }))
        .await
        .into_iter()
        .flatten()
        .count();
        self.counters
            .leader_moves
            .fetch_add(done as u64, std::sync::atomic::Ordering::Relaxed);
        done
    }

    /// How many of the groups running here each node leads, as far as
    /// this node knows (by node id).
    pub(super) fn leaderships(&self) -> BTreeMap<u64, usize> {
        let mut led = BTreeMap::new();
        for (_, r) in self.slots.all_running() {
            if let Some(l) = r.handle.raft.metrics().borrow_watched().current_leader {
                *led.entry(l).or_default() += 1;
            }
        }
        led
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: u64 = 1;
    const B: u64 = 2;
    const C: u64 = 3;

    fn view(group: u64, leader: u64, voters: &[u64], successors: &[u64]) -> View {
        View {
            group: GroupId(group),
            leader: Some(leader),
            voters: voters.to_vec(),
            successors: successors.to_vec(),
        }
    }

    /// `led` groups of A, B, C each, every group on all three, those A
    /// leads in use with both others able to take over.
    fn cluster(led: [u64; 3]) -> Vec<View> {
        let mut views = Vec::new();
        let mut id = 100;
        for (leader, n) in [A, B, C].into_iter().zip(led) {
            for _ in 0..n {
                let successors: &[u64] = if leader == A { &[B, C] } else { &[] };
                views.push(view(id, leader, &[A, B, C], successors));
                id += 1;
            }
        }
        views
    }

    fn to_each(moves: &[(GroupId, u64)]) -> BTreeMap<u64, usize> {
        let mut n = BTreeMap::new();
        for (_, to) in moves {
            *n.entry(*to).or_default() += 1;
        }
        n
    }

    #[test]
    fn a_node_leading_everything_hands_two_thirds_over_evenly() {
        let moves = moves(A, &cluster([18, 0, 0]), 100);
        assert_eq!(to_each(&moves), BTreeMap::from([(B, 6), (C, 6)]));
        let groups: BTreeSet<GroupId> = moves.iter().map(|(g, _)| *g).collect();
        assert_eq!(groups.len(), 12, "each group moves once: {moves:?}");
    }

    #[test]
    fn a_round_moves_at_most_so_many() {
        assert_eq!(moves(A, &cluster([18, 0, 0]), 4).len(), 4);
    }

    #[test]
    fn a_spread_within_one_stays() {
        assert!(moves(A, &cluster([6, 6, 6]), 10).is_empty());
        assert!(moves(A, &cluster([7, 6, 6]), 10).is_empty());
        assert!(moves(A, &cluster([7, 7, 6]), 10).is_empty());
        assert_eq!(moves(A, &cluster([7, 6, 5]), 10), vec![(GroupId(100), C)]);
    }

    #[test]
    fn two_busy_groups_on_one_node_go_apart() {
        // The flood and the single appends, both led by A.
        assert_eq!(moves(A, &cluster([2, 0, 0]), 10).len(), 1);
        assert!(moves(A, &cluster([1, 1, 0]), 10).is_empty());
    }

    #[test]
    fn only_to_a_successor_and_only_groups_in_use() {
        let mut views = cluster([4, 0, 0]);
        // C is down: no group names it a successor.
        for v in &mut views {
            v.successors.retain(|s| *s != C);
        }
        let got = moves(A, &views, 10);
        assert_eq!(to_each(&got), BTreeMap::from([(B, 2)]));
        // Quiet groups (no successors) count but stay.
        let mut quiet = cluster([4, 0, 0]);
        for v in quiet.iter_mut().skip(1) {
            v.successors.clear();
        }
        assert_eq!(moves(A, &quiet, 10), vec![(GroupId(100), B)]);
    }

    #[test]
    fn nodes_compare_only_the_groups_they_share() {
        // A and B share two groups, both led by A; A also leads two groups
        // with C, and C leads four other groups with A.
        let mut views = vec![
            view(1, A, &[A, B, D], &[B, D]),
            view(2, A, &[A, B, D], &[B, D]),
            view(3, A, &[A, C, D], &[C, D]),
            view(4, A, &[A, C, D], &[C, D]),
        ];
        for g in 5..9 {
            views.push(view(g, C, &[A, C, E], &[]));
        }
        let got = moves(A, &views, 10);
        // To B (2 to 0) or D (4 to 0), never to C (2 to 4).
        assert!(got.iter().all(|(_, to)| *to != C), "{got:?}");
        assert!(!got.is_empty());
        // Once moved, the pairs agree: B's view of the same groups asks
        // nothing back.
        let mut after = views.clone();
        for (g, to) in &got {
            let v = after.iter_mut().find(|v| v.group == *g).unwrap();
            v.leader = Some(*to);
        }
        for node in [B, D] {
            let theirs: Vec<View> = after
                .iter()
                .filter(|v| v.voters.contains(&node))
                .cloned()
                .map(|mut v| {
                    v.successors = if v.leader == Some(node) {
                        v.voters.iter().copied().filter(|o| *o != node).collect()
                    } else {
                        Vec::new()
                    };
                    v
                })
                .collect();
            let back = moves(node, &theirs, 10);
            assert!(
                back.iter().all(|(_, to)| *to != A),
                "{node} gives back to A: {back:?} after {got:?}"
            );
        }
    }

    const D: u64 = 4;
    const E: u64 = 5;

    #[test]
    fn groups_this_node_is_not_a_voter_of_count_for_nothing() {
        let mut views = cluster([0, 0, 0]);
        views.push(view(1, B, &[B, C, D], &[]));
        views.push(view(2, B, &[B, C, D], &[]));
        views.push(view(3, A, &[A, B, C], &[B, C]));
        assert!(moves(A, &views, 10).is_empty());
    }
}
