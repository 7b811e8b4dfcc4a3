//! Repair: a topic whose replica sits on a node silent for longer than the
//! repair delay gets a new replica, chosen by the topic's own placement rule,
//! through a Raft membership change led by the topic's leader.
//!
//! Each node repairs the groups it leads. A sleeping group with a lost
//! replica is woken by its first live member (in peer id order), so that it
//! gets a leader to repair it. A node that comes back after its replica was
//! replaced is told to remove its copy (while the leader that replaced it
//! runs; a copy left behind by a leader that restarted stays on disk, unused).

use std::collections::BTreeSet;
use std::time::Duration;

use woof_consensus::store::GroupId;
use woof_consensus::topic::TopicId;
use woof_overlay::PeerId;

use super::{ClusterTopics, Location};
use crate::placement::{self, Constraint};
use crate::shutdown::Shutdown;

/// How often a node looks for lost replicas.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// A node heard from within this long counts as back.
const BACK_WITHIN_MS: u64 = 3_000;
/// How long finishing a membership change left half-way may take.
const FINISH_TIMEOUT: Duration = Duration::from_secs(5);

impl ClusterTopics {
    /// Repairs the groups this node leads until `shutdown` is requested or
    /// the groups shut down.
    /// A repair under way is dropped then: the membership change it asked
    /// for is the group's to finish or abandon (Raft keeps it safe either
    /// way), and the next leader repairs whatever is still missing.
    pub async fn maintain(self, repair_after: Duration, shutdown: Shutdown) {
        let mut removed: BTreeSet<(GroupId, PeerId)> = BTreeSet::new();
        let repairing = async {
            loop {
                tokio::time::sleep(CHECK_EVERY).await;
                if let Err(e) = self.repair_once(repair_after, &mut removed).await {
                    tracing::warn!("repair: {e}");
                }
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
        removed: &mut BTreeSet<(GroupId, PeerId)>,
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

        for (group, raft, voters) in self.groups.led_groups() {
            let Some(dead) = voters.iter().find(|v| **v != me && lost(v)).copied() else {
                continue;
            };
            let Some(meta) = self
                .topics
                .list()
                .into_iter()
                .find(|t| t.meta.id == TopicId(group.0))
                .map(|t| t.meta)
            else {
                continue;
            };
            let constraint = match &meta.placement.constraint {
                Some(c) => Some(c.parse::<Constraint>()?),
                None => None,
            };
            let keep: Vec<PeerId> = voters.iter().copied().filter(|v| *v != dead).collect();
            let candidates = self.candidates().await?;
            let new = match placement::replacement(
                meta.name.as_str(),
                constraint.as_ref(),
                &keep,
                &candidates,
            ) {
                Ok(new) => new,
                Err(e) => {
                    tracing::warn!(topic = %meta.name, %dead, "cannot replace a lost replica: {e}");
                    continue;
                }
            };
            tracing::info!(topic = %meta.name, %dead, %new, "replacing a lost replica");
            self.groups
                .replace_voter(group, &raft, &voters, dead, new)
                .await?;
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
            removed.insert((group, dead));
            tracing::info!(topic = %meta.name, %new, "replica replaced");
        }

        // Sleeping groups with a lost replica: the first live member wakes
        // them, so that their leader repairs them.
        // In group order, whatever order the group layer keeps them in (a
        // run of the simulator must repeat itself).
        let mut asleep = self.groups.asleep_groups();
        asleep.sort_by_key(|(group, _)| *group);
        for (group, voters) in asleep {
            if !voters.iter().any(&lost) {
                continue;
            }
            let first_live = voters.iter().filter(|v| **v == me || !lost(v)).min();
            if first_live == Some(&me) {
                self.groups.wake_to_lead(group).await;
            }
        }

        // Replicas replaced while their node was away: remove them once it is back.
        let back: Vec<(GroupId, PeerId)> = removed
            .iter()
            .filter(|(_, peer)| silent_ms(peer).is_some_and(|s| s < BACK_WITHIN_MS))
            .copied()
            .collect();
        for (group, peer) in back {
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
            self.groups.remove(group, &[peer]).await;
        }
        Ok(())
    }

    /// Finishes the membership changes left half-way in the groups led
    /// here: a replacement is a joint configuration (old and new voters)
    /// and then the new voters alone, and a leader that crashed or lost its
    /// majority between the two leaves the group joint; the next leader
    /// does not finish it by itself, and a joint group is never repaired
    /// (the simulator found groups left with four voters, one of them lost
    /// for good). Each goes on to its new voters.
    async fn finish_changes(&self) {
        let mut led: Vec<GroupId> = self
            .groups
            .replicas()
            .into_iter()
            .filter(|r| r.is_leader)
            .map(|r| GroupId(r.group))
            .collect();
        led.sort();
        for group in led {
            let Ok(raft) = self.groups.start(group).await else {
                continue;
            };
            let joint = raft
                .metrics()
                .borrow()
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
