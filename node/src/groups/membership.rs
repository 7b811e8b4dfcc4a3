//! Changing who holds a group: a lost voter replaced by a new node, through
//! Raft (the new node joins as a learner, catches up from a snapshot and
//! the log, then one joint-consensus change swaps the voters).

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::{BasicNode, Raft};
use woof_consensus::raft::TypeConfig;
use woof_consensus::store::GroupId;
use woof_overlay::PeerId;

use super::client::CONTROL_TIMEOUT;
use super::control::{Control, ControlReply};
use super::status::{peers, voters};
use super::{Groups, node_id};
use crate::error::{Error, Result};

/// How long a new replica may take to catch up before the change is given up.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);

impl Groups {
    /// The running groups this node leads, with their voters.
    pub fn led_groups(&self) -> Vec<(GroupId, Raft<TypeConfig>, Vec<PeerId>)> {
        self.slots
            .all_running()
            .into_iter()
            .filter_map(|(group, running)| {
                let raft = running.handle.raft;
                let m = raft.metrics().borrow().clone();
                if m.current_leader != Some(self.node_id) {
                    return None;
                }
                // In the middle of a change: let it finish first.
                if m.membership_config.membership().get_joint_config().len() > 1 {
                    return None;
                }
                Some((group, raft, peers(&voters(&m))))
            })
            .collect()
    }

    /// The groups sleeping here, with their voters.
    pub fn asleep_groups(&self) -> Vec<(GroupId, Vec<PeerId>)> {
        self.slots
            .all_asleep()
            .into_iter()
            .map(|(group, a)| (group, peers(&a.members)))
            .collect()
    }

    /// Wakes a sleeping group here so that it gets a leader (which may then
    /// repair it). Whether it now runs.
    pub async fn wake_to_lead(&self, group: GroupId) -> bool {
        self.serving(group).await.is_ok()
    }

    /// Replaces `lost` among the voters of `group` (led here) by `new`, or
    /// adds `new` to them when nothing is lost.
    pub async fn replace_voter(
        &self,
        group: GroupId,
        raft: &Raft<TypeConfig>,
        voters: &[PeerId],
        lost: Option<PeerId>,
        new: PeerId,
    ) -> Result<()> {
        let next: Vec<PeerId> = voters
            .iter()
            .copied()
            .filter(|v| Some(*v) != lost)
            .chain(std::iter::once(new))
            .collect();
        let start = Control::StartGroup {
            group,
            members: next.iter().map(ToString::to_string).collect(),
            initialize: false,
        };
        match self.control(new, start, CONTROL_TIMEOUT).await? {
            ControlReply::Started => {}
            other => {
                return Err(Error::Internal(format!(
                    "starting the group on {new}: {other:?}"
                )));
            }
        }
        let failed = |what: &str, e: String| {
            Error::Log(woof_consensus::Error::Network(format!(
                "{what} for group {}: {e}",
                group.0
            )))
        };
        let added = tokio::time::timeout(
            CATCH_UP_TIMEOUT,
            raft.add_learner(node_id(&new), BasicNode::new(new.to_string()), true),
        )
        .await
        .map_err(|_| failed("the new replica did not catch up", "timed out".into()))?;
        added.map_err(|e| failed("adding a learner", e.to_string()))?;
        let voters: BTreeSet<u64> = next.iter().map(node_id).collect();
        raft.change_membership(voters, false)
            .await
            .map_err(|e| failed("changing the voters", e.to_string()))?;
        self.touch(group);
        Ok(())
    }
}
