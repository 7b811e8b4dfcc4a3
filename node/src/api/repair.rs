//! Repair: a topic whose replica sits on a node silent for longer than the
//! repair delay gets a new replica, chosen by the topic's own placement rule,
//! through a Raft membership change led by the topic's leader. A group with
//! fewer voters than its placement asks for (the name directory, made on
//! the cluster's first node alone) gets more as nodes join. What to do
//! about a group is decided by [`plan`], a plain function.
//!
//! Each node repairs the groups it leads. A sleeping group with a lost
//! replica is woken by its first live member (in peer id order), so that it
//! gets a leader to repair it. A node that comes back after its replica was
//! replaced is told to remove its copy by the leader that replaced it, if
//! that leader still runs; otherwise the node finds out itself, by asking
//! the other copies (see [`left_behind`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;
use woof_consensus::raft::WatchReceiver;

use woof_consensus::store::GroupId;
use woof_consensus::topic::directory::DIRECTORY;
use woof_consensus::topic::{TopicId, TopicMeta};
use woof_overlay::PeerId;

use super::{ClusterTopics, Location};
use crate::groups::ReplicaStatus;
use crate::placement::{self, Constraint};
use crate::shutdown::Shutdown;

/// How often a node looks for lost replicas.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// A node heard from within this long counts as back.
const BACK_WITHIN_MS: u64 = 3_000;
/// Sleeping copies checked per round for having been left behind.
const LEFT_BEHIND_CHECKS: usize = 2;
/// Every this many rounds, a leader publishes its topics' DHT records again:
/// the nodes that held a record may all have restarted since (a DHT's
/// records live in memory), and a topic no lookup finds is lost to every
/// node that holds no replica of it (found by the simulator, with a
/// handler whose output topic was not found after the faults).
const REPUBLISH_ROUNDS: u64 = 15;
/// How long finishing a membership change left half-way may take.
const FINISH_TIMEOUT: Duration = Duration::from_secs(5);

impl ClusterTopics {
    /// Repairs the groups this node leads until `shutdown` is requested or
    /// the groups shut down.
    /// A repair under way is dropped then: the membership change it asked
    /// for is the group's to finish or abandon (Raft keeps it safe either
    /// way), and the next leader repairs whatever is still missing.
    pub async fn maintain(self, repair_after: Duration, shutdown: Shutdown) {
        // Replicas replaced while their node was away, and the log index
        // of the membership that replaced each.
        let mut removed: BTreeMap<(GroupId, PeerId), u64> = BTreeMap::new();
        let mut claims_resolved = false;
        let mut checked = 0;
        let mut round: u64 = 0;
        let repairing = async {
            loop {
                tokio::time::sleep(CHECK_EVERY).await;
                round += 1;
                // Bounded too: the directory may be down (its own repair
                // runs below, in this same loop).
                if !claims_resolved {
                    match tokio::time::timeout(CHECK_EVERY, self.resolve_left_claims()).await {
                        Ok(Ok(())) => claims_resolved = true,
                        Ok(Err(e)) => tracing::debug!("resolving the claims left pending: {e}"),
                        Err(_) => tracing::debug!("resolving the claims left pending: timed out"),
                    }
                }
                let republish = round.is_multiple_of(REPUBLISH_ROUNDS);
                if let Err(e) = self
                    .repair_once(repair_after, &mut removed, republish)
                    .await
                {
                    tracing::warn!("repair: {e}");
                }
                // Bounded: a check waits on peers that may be down, and
                // must not hold up the next repair round.
                checked =
                    match tokio::time::timeout(CHECK_EVERY, self.drop_left_behind(checked)).await {
                        Ok(next) => next,
                        Err(_) => checked + LEFT_BEHIND_CHECKS,
                    };
            }
        };
        let mut groups_stopped = self.groups.stopping();
        tokio::select! {
            _ = shutdown.requested() => {}
            _ = groups_stopped.wait_for(|s| *s) => {}
            _ = repairing => {}
        }
    }

    async fn repair_once(
        &self,
        repair_after: Duration,
        removed: &mut BTreeMap<(GroupId, PeerId), u64>,
        republish: bool,
    ) -> crate::Result<()> {
        let members = self.overlay.members().await?;
        let silent_ms = |peer: &PeerId| {
            members
                .iter()
                .find(|m| m.peer == *peer)
                .map(|m| m.silent_ms)
        };
        let lost =
            |peer: &PeerId| silent_ms(peer).is_some_and(|s| s >= repair_after.as_millis() as u64);
        let me = self.overlay.peer_id();
        self.finish_changes().await;

        let metas: HashMap<TopicId, TopicMeta> = self
            .topics
            .list()
            .into_iter()
            .map(|t| (t.meta.id, t.meta))
            .collect();
        for (group, raft, voters) in self.groups.led_groups() {
            if group == DIRECTORY {
                self.publish_directory(&voters).await;
            }
            let Some(meta) = metas.get(&TopicId(group.0)) else {
                continue;
            };
            if republish {
                let location = Location {
                    group: group.0,
                    members: voters.iter().map(ToString::to_string).collect(),
                    deleted: false,
                };
                if let Err(e) = self.publish(&meta.name, location).await {
                    tracing::debug!(topic = %meta.name, "publishing where it is again: {e}");
                }
            }
            let replication = meta.placement.replication as usize;
            let dead = match plan(&voters, me, replication, lost) {
                Plan::Nothing => continue,
                Plan::Replace(dead) => Some(dead),
                Plan::Grow => None,
            };
            let constraint = match &meta.placement.constraint {
                Some(c) => Some(c.parse::<Constraint>()?),
                None => None,
            };
            let keep: Vec<PeerId> = voters
                .iter()
                .copied()
                .filter(|v| Some(*v) != dead)
                .collect();
            let candidates = self.candidates().await?;
            let new = match placement::replacement(
                meta.name.as_str(),
                constraint.as_ref(),
                &keep,
                &candidates,
            ) {
                Ok(new) => new,
                // Too few nodes yet to grow: not worth a warning.
                Err(e) if dead.is_none() => {
                    tracing::debug!(topic = %meta.name, "cannot add a replica yet: {e}");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(topic = %meta.name, ?dead, "cannot replace a lost replica: {e}");
                    continue;
                }
            };
            tracing::info!(topic = %meta.name, ?dead, %new, "replacing a lost replica");
            // One group's failed change must not stop the others' repair,
            // nor the waking of sleeping groups below.
            let changed_at = match self
                .groups
                .replace_voter(group, &raft, &voters, dead, new)
                .await
            {
                Ok(at) => at,
                Err(e) => {
                    // Growing a group (nothing lost) is tried again next round:
                    // not worth a warning (the demo printed one when the node it
                    // chose was being stopped).
                    if dead.is_some() {
                        tracing::warn!(topic = %meta.name, %new, "replacing a replica: {e}");
                    } else {
                        tracing::info!(topic = %meta.name, %new, "adding a replica (tried again next round): {e}");
                    }
                    continue;
                }
            };
            let members: Vec<String> = keep
                .iter()
                .chain(std::iter::once(&new))
                .map(ToString::to_string)
                .collect();
            let location = Location {
                group: group.0,
                members,
                deleted: false,
            };
            if let Err(e) = self.publish(&meta.name, location).await {
                tracing::warn!(topic = %meta.name, "publishing the new replicas: {e}");
            }
            if let Some(dead) = dead {
                removed.insert((group, dead), changed_at);
            }
            tracing::info!(topic = %meta.name, %new, "replica replaced");
        }

        // Sleeping groups with a lost replica: the first live member wakes
        // them, so that their leader repairs them.
        // In group order, whatever order the group layer keeps them in (a
        // run of the simulator must repeat itself).
        let mut asleep = self.groups.asleep_groups();
        asleep.sort_by_key(|(group, _)| *group);
        for (group, voters) in asleep {
            // The name directory never sleeps for long: found asleep after
            // a restart, it is woken (so that it gets a leader, which
            // publishes where it is).
            if group == DIRECTORY {
                self.groups.wake_to_lead(group).await;
                continue;
            }
            if !voters.iter().any(&lost) {
                continue;
            }
            let first_live = voters.iter().filter(|v| **v == me || !lost(v)).min();
            if first_live == Some(&me) {
                self.groups.wake_to_lead(group).await;
            }
        }

        // Replicas replaced while their node was away: remove them once it is back.
        let back: Vec<(GroupId, PeerId, u64)> = removed
            .iter()
            .filter(|((_, peer), _)| silent_ms(peer).is_some_and(|s| s < BACK_WITHIN_MS))
            .map(|((group, peer), at)| (*group, *peer, *at))
            .collect();
        for (group, peer, changed_at) in back {
            removed.remove(&(group, peer));
            // A later repair may have chosen the same node again: its copy
            // is a voter's then (the simulator found voters emptied so).
            let voter_again = self
                .groups
                .local_members(group)
                .is_some_and(|members| members.contains(&peer));
            if voter_again {
                continue;
            }
            // Only if its copy holds nothing from the change on: a repair
            // elsewhere (another leader's) may be making it a replica again
            // right now, its copy a learner catching up, which this view of
            // the members does not show yet. Removed unconditionally, that
            // copy was emptied after it had caught up, and then made a
            // voter (the simulator's seed 319).
            if let Err(e) = self
                .groups
                .remove_left_behind_at(peer, group, changed_at)
                .await
            {
                tracing::warn!(group = group.0, %peer, "removing a replaced copy: {e}");
            }
        }
        Ok(())
    }

    /// Looks at up to [`LEFT_BEHIND_CHECKS`] of the leaderless copies held
    /// here (asleep, or running and calling elections nobody answers), from
    /// the `from`th on (the next call goes on where this one stopped), for
    /// copies whose node was replaced while it was away and whose removal
    /// never came (the leader that replaced it restarted, or the removal
    /// was lost). Such a copy believes it is a voter: it would serve its
    /// stale range to readers here, and its elections raise its term, so
    /// that a repair which later picks this node again sees its leader
    /// deposed by the copy's higher term, round after round (the
    /// simulator's seeds 30 and 125). The copy's own voters and the
    /// topic's published replicas are asked for their copies, and
    /// [`left_behind`] judges by what they say.
    async fn drop_left_behind(&self, from: usize) -> usize {
        let me = self.overlay.peer_id();
        // Only the groups looked at are described: a node holds thousands.
        let leaderless = self.groups.leaderless();
        if leaderless.is_empty() {
            return 0;
        }
        let from = from % leaderless.len();
        let looked_at: Vec<ReplicaStatus> = leaderless
            .iter()
            .cycle()
            .skip(from)
            .take(LEFT_BEHIND_CHECKS.min(leaderless.len()))
            .filter_map(|group| self.groups.replica(*group))
            .filter(|r| !r.is_leader && r.leader.is_none())
            .collect();
        for r in &looked_at {
            let mut peers: BTreeSet<PeerId> =
                r.members.iter().filter_map(|m| m.parse().ok()).collect();
            if let Ok(location) = self.lookup(&r.meta.name).await
                && location.group == r.group
                && let Ok(published) = location.peers()
            {
                peers.extend(published);
            }
            peers.remove(&me);
            // Only peers heard from lately are asked (a silent one would
            // take the whole round).
            let Ok(members) = self.overlay.members().await else {
                continue;
            };
            let mut others = Vec::new();
            for peer in peers.into_iter().filter(|p| {
                members
                    .iter()
                    .any(|m| m.peer == *p && m.silent_ms < BACK_WITHIN_MS)
            }) {
                if let Ok(Some(copy)) = self.groups.replica_at(peer, GroupId(r.group)).await {
                    others.push(copy);
                }
            }
            let Some(evidence_at) =
                left_behind(&me.to_string(), &r.members, r.last_log_index, &others)
            else {
                continue;
            };
            match self
                .groups
                .remove_left_behind(GroupId(r.group), evidence_at)
                .await
            {
                Ok(true) => tracing::info!(
                    topic = %r.meta.name,
                    evidence_at,
                    "removed a copy left behind by a repair"
                ),
                Ok(false) => {}
                Err(e) => tracing::warn!(topic = %r.meta.name, "removing a copy left behind: {e}"),
            }
        }
        from + LEFT_BEHIND_CHECKS
    }

    /// Finishes the membership changes left half-way in the groups led
    /// here: a replacement is a joint configuration (old and new voters)
    /// and then the new voters alone, and a leader that crashed or lost its
    /// majority between the two leaves the group joint; the next leader
    /// does not finish it by itself, and a joint group is never repaired
    /// (the simulator found groups left with four voters, one of them lost
    /// for good). Each goes on to its new voters.
    async fn finish_changes(&self) {
        for group in self.groups.leading() {
            let Ok(raft) = self.groups.start(group).await else {
                continue;
            };
            let joint = raft
                .metrics()
                .borrow_watched()
                .membership_config
                .membership()
                .get_joint_config()
                .clone();
            let (true, Some(next)) = (joint.len() > 1, joint.last().cloned()) else {
                continue;
            };
            tracing::info!(
                group = group.0,
                ?next,
                "finishing a membership change left half-way"
            );
            match tokio::time::timeout(FINISH_TIMEOUT, raft.change_membership(next, false)).await {
                Ok(Ok(_)) => tracing::info!(group = group.0, "membership change finished"),
                Ok(Err(e)) => tracing::warn!(group = group.0, "finishing a membership change: {e}"),
                Err(_) => {
                    tracing::warn!(group = group.0, "finishing a membership change timed out")
                }
            }
        }
    }
}

/// What repair does about a group this node leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    Nothing,
    /// A voter is lost: replace it.
    Replace(PeerId),
    /// Fewer voters than the placement asks for, none lost: add one.
    Grow,
}

/// Decides what repair does about a group led by `me` whose voters are
/// `voters`, which its placement wants `replication` of; `lost` says which
/// peers were silent past the repair time. A lost voter comes first (the
/// first in `voters`' order); this node never counts itself lost.
pub fn plan(
    voters: &[PeerId],
    me: PeerId,
    replication: usize,
    lost: impl Fn(&PeerId) -> bool,
) -> Plan {
    if let Some(dead) = voters.iter().find(|v| **v != me && lost(v)) {
        return Plan::Replace(*dead);
    }
    if voters.len() < replication {
        return Plan::Grow;
    }
    Plan::Nothing
}

/// Whether this node's copy of a group, which believes the group's voters
/// are `voters` and holds log entries up to index `held`, was left behind
/// by a repair, judged by `others`, other nodes' copies of the group: the
/// log index of a committed membership that leaves `me` out and is newer
/// than anything the copy holds, if one of them knows such a membership.
///
/// Only a copy that believes itself a voter is judged: a node being added
/// again holds a copy with no membership yet, or one that names it a
/// learner, and its log lacks the entry that adds it until it catches up
/// (the simulator's seed 669 saw such a learner remove its own new copy).
/// Then a majority of that newer membership holds everything committed
/// before it (its entry committed on one), and this node is not needed for
/// anything committed since: a later membership that made it a voter again
/// would be in the copy's log (it is not, as it holds nothing that new),
/// and as a learner its copy counts for nothing. An older membership
/// proves nothing: the node may have been taken back since.
///
/// Nor is a copy judged while another copy names this node a learner: a
/// repair is adding it back, and its leader may already have sent entries
/// to the old copy and counted them held (removed then, the copy's log
/// went backwards under that leader, which openraft forbids: the
/// simulator's seed 67 saw the leader's Raft task panic).
pub(super) fn left_behind(
    me: &str,
    voters: &[String],
    held: u64,
    others: &[ReplicaStatus],
) -> Option<u64> {
    if !voters.iter().any(|v| v == me) || others.iter().any(|r| r.learners.iter().any(|l| l == me))
    {
        return None;
    }
    others
        .iter()
        .filter(|r| r.members_at > held && !r.members.is_empty())
        .filter(|r| !r.members.iter().any(|m| m == me))
        .map(|r| r.members_at)
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use woof_consensus::store::GROUP_ID_MIN;

    fn peers(n: usize) -> Vec<PeerId> {
        (0..n).map(|_| PeerId::random()).collect()
    }

    #[test]
    fn a_full_group_with_every_voter_heard_needs_nothing() {
        let v = peers(3);
        assert_eq!(plan(&v, v[0], 3, |_| false), Plan::Nothing);
        // More voters than asked (a replacement under way) is not shrunk.
        let v = peers(4);
        assert_eq!(plan(&v, v[0], 3, |_| false), Plan::Nothing);
    }

    #[test]
    fn a_lost_voter_is_replaced_before_a_small_group_grows() {
        let v = peers(2);
        let dead = v[1];
        assert_eq!(plan(&v, v[0], 3, |p| *p == dead), Plan::Replace(dead));
        let v = peers(3);
        let dead = v[2];
        assert_eq!(plan(&v, v[0], 3, |p| *p == dead), Plan::Replace(dead));
    }

    #[test]
    fn the_leader_never_replaces_itself() {
        let v = peers(3);
        assert_eq!(plan(&v, v[0], 3, |p| *p == v[0]), Plan::Nothing);
    }

    #[test]
    fn a_group_smaller_than_its_placement_grows() {
        let v = peers(1);
        assert_eq!(plan(&v, v[0], 3, |_| false), Plan::Grow);
    }

    /// Another node's copy of a group whose voters are `members`, known
    /// committed at log index `members_at` (0: not known).
    fn copy(members: &[&str], members_at: u64) -> ReplicaStatus {
        ReplicaStatus {
            group: GROUP_ID_MIN + 1,
            meta: TopicMeta {
                id: TopicId(GROUP_ID_MIN + 1),
                name: woof_consensus::topic::TopicName::new("t").unwrap(),
                config: Default::default(),
                created_at_ms: 1,
                placement: Default::default(),
            },
            first_seq: 1,
            last_seq: 0,
            members: members.iter().map(|m| m.to_string()).collect(),
            learners: Vec::new(),
            leader: None,
            is_leader: false,
            applied_index: members_at,
            members_at,
            last_log_index: members_at,
            term: 1,
            progress: Vec::new(),
        }
    }

    /// This node's copy's voters: it believes itself one.
    fn mine() -> Vec<String> {
        vec!["a".into(), "b".into(), "c".into()]
    }

    #[test]
    fn a_copy_that_does_not_believe_itself_a_voter_is_never_left_behind() {
        let others = [copy(&["b", "c", "d"], 40)];
        // A new copy with no membership yet, and a learner's.
        assert_eq!(left_behind("a", &[], 0, &others), None);
        assert_eq!(
            left_behind("a", &["b".into(), "c".into()], 10, &others),
            None
        );
    }

    #[test]
    fn a_copy_is_left_behind_by_a_newer_committed_membership_without_it() {
        let others = [copy(&["b", "c", "d"], 40), copy(&["b", "c", "d"], 55)];
        assert_eq!(left_behind("a", &mine(), 30, &others), Some(55));
    }

    #[test]
    fn a_copy_being_added_back_as_a_learner_is_not_left_behind() {
        let mut leader = copy(&["b", "c", "d"], 56);
        leader.learners = vec!["a".into()];
        let others = [copy(&["b", "c", "d"], 55), leader];
        assert_eq!(left_behind("a", &mine(), 31, &others), None);
        assert_eq!(left_behind("a", &mine(), 31, &others[..1]), Some(55));
    }

    #[test]
    fn a_membership_that_keeps_the_copy_proves_nothing() {
        assert_eq!(
            left_behind("a", &mine(), 30, &[copy(&["a", "b", "c"], 55)]),
            None
        );
    }

    #[test]
    fn a_membership_no_newer_than_the_copy_proves_nothing() {
        // The node may have been taken back after index 40: its copy
        // holds up to 50, so it could hold that later membership.
        assert_eq!(
            left_behind("a", &mine(), 50, &[copy(&["b", "c", "d"], 40)]),
            None
        );
        assert_eq!(
            left_behind("a", &mine(), 40, &[copy(&["b", "c", "d"], 40)]),
            None
        );
    }

    #[test]
    fn a_membership_not_known_committed_proves_nothing() {
        assert_eq!(
            left_behind("a", &mine(), 0, &[copy(&["b", "c", "d"], 0)]),
            None
        );
        assert_eq!(left_behind("a", &mine(), 3, &[copy(&[], 9)]), None);
        assert_eq!(left_behind("a", &mine(), 3, &[]), None);
    }
}
