//! Repair: a topic whose replica sits on a node silent for longer than the
//! repair delay gets a new replica, chosen by the topic's own placement rule,
//! through a Raft membership change led by the topic's leader.
//!
//! Each node repairs the groups it leads. A sleeping group with a lost
//! replica is woken by its first live member (in peer id order), so that it
//! gets a leader to repair it. A node that comes back after its replica was
//! replaced is told to remove its copy (while the leader that replaced it
//! runs; a copy left behind by a leader that restarted stays on disk, unused).

use std::collections::HashSet;
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

impl ClusterTopics {
    /// Repairs the groups this node leads until `shutdown` is requested.
    /// A repair under way is dropped then: the membership change it asked
    /// for is the group's to finish or abandon (Raft keeps it safe either
    /// way), and the next leader repairs whatever is still missing.
    pub async fn maintain(self, repair_after: Duration, shutdown: Shutdown) {
        let mut removed: HashSet<(GroupId, PeerId)> = HashSet::new();
        let repairing = async {
            loop {
                tokio::time::sleep(CHECK_EVERY).await;
                if let Err(e) = self.repair_once(repair_after, &mut removed).await {
                    tracing::warn!("repair: {e}");
                }
            }
        };
        tokio::select! {
            _ = shutdown.requested() => {}
            _ = repairing => {}
        }
    }

    async fn repair_once(
        &self,
        repair_after: Duration,
        removed: &mut HashSet<(GroupId, PeerId)>,
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
        for (group, voters) in self.groups.asleep_groups() {
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
            self.groups.remove(group, &[peer]).await;
            removed.remove(&(group, peer));
        }
        Ok(())
    }
}
