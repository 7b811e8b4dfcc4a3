//! Names claimed through consensus: before a node creates a topic it claims
//! the name in the cluster's directory group
//! ([`woof_consensus::topic::directory`]), so that of several nodes creating
//! one name at once exactly one goes on (ADR 0009).
//!
//! The directory is a Raft group like a topic's, found the same way (its DHT
//! record is `_woof/directory`'s). The cluster's first node, the one started
//! without `--join`, makes it ([`ClusterTopics::bootstrap_directory`]);
//! repair then grows it to three voters and replaces lost ones, as for any
//! topic.
//!
//! A claim is pending until its creator confirms it (the topic is
//! created); a create that fails releases it, and one that cannot confirm
//! removes what it created. A pending claim is never taken over by another
//! create, whatever the clocks say (the simulator jumps them by minutes):
//! only its claimant resolves it, and a claimant that restarted resolves
//! the claims its earlier run left pending ([`ClusterTopics::resolve_left_claims`]).
//! A confirmed claim whose group no member holds any more (a delete that
//! stopped before it released the name) is taken over by the next create.

use std::collections::HashMap;

use woof_consensus::raft::{Command, CommandResult};
use woof_consensus::store::GroupId;
use woof_consensus::topic::directory::{Claim, DIRECTORY, DIRECTORY_NAME, NameAnswer, NameCommand};
use woof_consensus::topic::{HISTORY_MAX, Placement, TopicConfig, TopicId, TopicMeta, TopicName};
use woof_overlay::{Liveness, PeerId};

use super::{
    ClusterTopics, DIRECTORY_MISS_MS, DIRECTORY_MISSES_MAX, Location, REPLICATION_DEFAULT,
};
use crate::groups::ReplicaStatus;

/// The most nodes asked for their copy of a topic the DHT lost.
const LOCATE_ASKS_MAX: usize = 16;
use crate::error::{Error, Result};

impl ClusterTopics {
    /// Makes the cluster's name directory on `members` (this node first),
    /// unless this node made one before (it may have been moved to other
    /// nodes since: a second would split the cluster's names). Called by a
    /// cluster's first node.
    pub async fn bootstrap_directory(&self, members: &[PeerId]) -> Result<()> {
        if self.groups.local_members(DIRECTORY).is_some()
            || self.groups.directory_made_here().await?
        {
            return Ok(());
        }
        let name = directory_name();
        let meta = TopicMeta {
            id: TopicId(DIRECTORY.0),
            name: name.clone(),
            config: TopicConfig {
                history: HISTORY_MAX,
                ..TopicConfig::default()
            },
            created_at_ms: self.clock.now_ms(),
            placement: Placement {
                replication: REPLICATION_DEFAULT as u32,
                constraint: None,
            },
        };
        self.groups.create(DIRECTORY, members).await?;
        match self
            .groups
            .write(DIRECTORY, members, Command::Create(meta))
            .await?
        {
            CommandResult::Created => {}
            other => {
                return Err(Error::Internal(format!(
                    "creating the name directory gave {other:?}"
                )));
            }
        }
        // Marked once made: a crash before leaves nothing (this is a new
        // cluster's first node, nobody else holds a directory yet) or the
        // group, which the check above finds.
        self.groups.mark_directory_made().await?;
        tracing::info!(members = members.len(), "name directory made");
        self.publish_directory(members).await;
        Ok(())
    }

    /// Publishes where the directory is (its voters `members`). Best effort:
    /// a node alone has no DHT peers to store the record yet, and the
    /// directory's leader publishes it again on every repair round.
    pub(super) async fn publish_directory(&self, members: &[PeerId]) {
        let location = Location {
            group: DIRECTORY.0,
            members: members.iter().map(ToString::to_string).collect(),
            deleted: false,
        };
        if let Err(e) = self.publish(&directory_name(), location).await {
            tracing::debug!("publishing the name directory's record: {e}");
        }
    }

    /// Claims `name` for `group` (whose voters are `members`). Fails with
    /// `TopicExists` when another group holds it.
    pub(super) async fn claim(
        &self,
        name: &TopicName,
        group: GroupId,
        members: &[PeerId],
    ) -> Result<()> {
        let exists = || Error::Log(woof_consensus::Error::TopicExists(name.to_string()));
        let claim = |replace: Option<u64>| NameCommand::Claim {
            name: name.to_string(),
            group: group.0,
            members: members.iter().map(ToString::to_string).collect(),
            at_ms: self.clock.now_ms(),
            claimant: self.overlay.peer_id().to_string(),
            incarnation: self.incarnation,
            replace,
        };
        let held = match self.name_command(claim(None)).await? {
            NameAnswer::Done => return Ok(()),
            NameAnswer::Taken(held) => held,
            other => return Err(Error::Internal(format!("a claim answered {other:?}"))),
        };
        // A pending claim is someone's create under way (or left by a run
        // that its node resolves when it starts again).
        if !held.confirmed || self.claimed_group_lives(name, &held).await? {
            return Err(exists());
        }
        tracing::info!(topic = %name, gone = held.group, "taking over a name whose group is gone");
        match self.name_command(claim(Some(held.group))).await? {
            NameAnswer::Done => Ok(()),
            _ => Err(exists()),
        }
    }

    /// Confirms the claim of `name` by `group`: whether it still held it.
    pub(super) async fn confirm(&self, name: &TopicName, group: GroupId) -> Result<bool> {
        let confirm = NameCommand::Confirm {
            name: name.to_string(),
            group: group.0,
        };
        Ok(self.name_command(confirm).await? == NameAnswer::Done)
    }

    /// Frees `name`, held by `group` (best effort: a name left claimed by a
    /// group that is gone is taken over by its next create).
    pub(super) async fn release(&self, name: &TopicName, group: GroupId) {
        let release = NameCommand::Release {
            name: name.to_string(),
            group: group.0,
        };
        if let Err(e) = self.name_command(release).await {
            tracing::warn!(topic = %name, "releasing the name: {e}");
        }
    }

    /// Whether a member of the group `held` claims still holds its topic.
    /// One that does is a create finished but never confirmed (its creator
    /// stopped): its location is published, so that it can be found.
    async fn claimed_group_lives(&self, name: &TopicName, held: &Claim) -> Result<bool> {
        let mut silent = None;
        for member in &held.members {
            let peer: PeerId = member
                .parse()
                .map_err(|e| Error::Internal(format!("a claim names peer {member:?}: {e}")))?;
            match self.groups.replicas_at(peer).await {
                Ok(replicas) if replicas.iter().any(|r| r.group == held.group) => {
                    let location = Location {
                        group: held.group,
                        members: held.members.clone(),
                        deleted: false,
                    };
                    if let Err(e) = self.publish(name, location).await {
                        tracing::warn!(topic = %name, "publishing a found topic's record: {e}");
                    }
                    return Ok(true);
                }
                Ok(_) => {}
                Err(e) => silent = Some((peer, e)),
            }
        }
        match silent {
            // It may hold the topic: the name stays taken.
            Some((peer, e)) => Err(Error::Log(woof_consensus::Error::Network(format!(
                "{name} is claimed by a group whose member {peer} does not answer: {e}"
            )))),
            None => Ok(false),
        }
    }

    /// Resolves the claims an earlier run of this node left pending (it
    /// stopped in the middle of creating their topics): a topic some member
    /// holds is confirmed and published, the others' groups are removed and
    /// their names released. Nobody else resolves them, so nothing races.
    pub(super) async fn resolve_left_claims(&self) -> Result<()> {
        let mine = NameCommand::Pending {
            claimant: self.overlay.peer_id().to_string(),
        };
        let NameAnswer::Pending(pending) = self.name_command(mine).await? else {
            return Err(Error::Internal("the directory did not list claims".into()));
        };
        for (name, claim) in pending {
            if claim.incarnation == self.incarnation {
                continue;
            }
            let name = TopicName::new(&name)?;
            let group = GroupId(claim.group);
            if self.claimed_group_lives(&name, &claim).await? {
                self.confirm(&name, group).await?;
                tracing::info!(topic = %name, "a create left half-way is finished");
            } else {
                let members: Vec<PeerId> = claim
                    .members
                    .iter()
                    .filter_map(|m| m.parse().ok())
                    .collect();
                self.groups.remove(group, &members).await;
                self.release(&name, group).await;
                tracing::info!(topic = %name, "a create left half-way is undone");
            }
        }
        Ok(())
    }

    /// Where `name` lives, found without the DHT, whose records live only
    /// in the memory of the nodes nearest their key (all of them may have
    /// restarted since the topic's leader last published, and a sleeping
    /// topic has no leader to publish it). The directory's claim names the
    /// topic's group and first voters; the live nodes holding a copy (those
    /// voters first, then the others, at most [`LOCATE_ASKS_MAX`]) name the
    /// voters now, the copy with the newest committed membership winning.
    /// What is found is published again. `None`: no topic of that name.
    pub(super) async fn locate_by_directory(&self, name: &TopicName) -> Result<Option<Location>> {
        let now = self.clock.now_ms();
        let missed = |misses: &HashMap<TopicName, u64>| {
            misses
                .get(name)
                .is_some_and(|at| now.saturating_sub(*at) < DIRECTORY_MISS_MS)
        };
        if missed(&self.misses()) {
            return Ok(None);
        }
        let get = NameCommand::Get {
            name: name.to_string(),
        };
        let claim = match self.name_command(get).await? {
            NameAnswer::Held(Some(claim)) if claim.confirmed => claim,
            // Being created or deleted: not there yet, or no more.
            NameAnswer::Held(_) => {
                let mut misses = self.misses();
                if misses.len() >= DIRECTORY_MISSES_MAX {
                    misses.retain(|_, at| now.saturating_sub(*at) < DIRECTORY_MISS_MS);
                    if misses.len() >= DIRECTORY_MISSES_MAX {
                        misses.clear();
                    }
                }
                misses.insert(name.clone(), now);
                return Ok(None);
            }
            other => {
                return Err(Error::Internal(format!(
                    "the directory answered a lookup with {other:?}"
                )));
            }
        };
        let me = self.overlay.peer_id();
        let alive: Vec<PeerId> = self
            .overlay
            .members()
            .await?
            .into_iter()
            .filter(|m| m.liveness == Liveness::Alive)
            .map(|m| m.peer)
            .collect();
        let first: Vec<PeerId> = claim
            .members
            .iter()
            .filter_map(|m| m.parse().ok())
            .collect();
        let asked = first
            .iter()
            .filter(|p| alive.contains(p))
            .chain(alive.iter().filter(|p| !first.contains(p)))
            .filter(|p| **p != me)
            .take(LOCATE_ASKS_MAX);
        let mut best: Option<ReplicaStatus> = None;
        for peer in asked {
            if let Ok(Some(copy)) = self.groups.replica_at(*peer, GroupId(claim.group)).await
                && best.as_ref().is_none_or(|b| copy.members_at > b.members_at)
            {
                best = Some(copy);
            }
        }
        let Some(copy) = best else {
            return Err(Error::Log(woof_consensus::Error::Network(format!(
                "{name} is group {} in the directory, but no live node answered with a copy",
                claim.group
            ))));
        };
        let location = Location {
            group: claim.group,
            members: copy.members,
            deleted: false,
        };
        tracing::info!(topic = %name, "found through the directory; published again");
        if let Err(e) = self.publish(name, location.clone()).await {
            tracing::debug!(topic = %name, "publishing where a topic is again: {e}");
        }
        Ok(Some(location))
    }

    fn misses(&self) -> std::sync::MutexGuard<'_, HashMap<TopicName, u64>> {
        self.directory_misses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `command` at the directory's leader.
    async fn name_command(&self, command: NameCommand) -> Result<NameAnswer> {
        let (_, members) = self.locate(&directory_name()).await.map_err(|e| match e {
            Error::Log(woof_consensus::Error::TopicNotFound(_)) => {
                Error::Log(woof_consensus::Error::Network(
                    "the cluster has no name directory yet (the cluster's first node, \
                     started without --join, makes it)"
                        .into(),
                ))
            }
            e => e,
        })?;
        match self
            .groups
            .write(DIRECTORY, &members, Command::Name(command))
            .await?
        {
            CommandResult::Name(answer) => Ok(answer),
            CommandResult::Refused(e) => Err(Error::Log(e)),
            other => Err(Error::Internal(format!("the directory answered {other:?}"))),
        }
    }
}

/// The directory topic's name.
pub fn directory_name() -> TopicName {
    TopicName::new(DIRECTORY_NAME).expect("the directory's name is valid")
}
