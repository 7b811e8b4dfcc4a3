//! What this node's replicas report: their topic, range, voters, leader and
//! each voter's progress, read off a running group's metrics or a sleeping
//! group's last known state.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use woof_consensus::TopicInfo;
use woof_consensus::raft::{Raft, WatchReceiver};
use woof_consensus::store::GroupId;
use woof_consensus::topic::TopicId;
use woof_overlay::PeerId;

use super::Groups;
use super::control::ReplicaStatus;
use super::slots::Asleep;

pub(super) type Metrics = woof_consensus::raft::Metrics;

impl Groups {
    /// The groups as a metrics scrape reports them: asleep and awake, this
    /// node's role in the awake ones, their highest term, and how far
    /// followers lag in those it leads.
    pub fn census(&self) -> crate::metrics::RaftCensus {
        let (asleep, _) = self.slots.census();
        let mut c = crate::metrics::RaftCensus {
            asleep: asleep as u64,
            ..Default::default()
        };
        for (_, running) in self.slots.all_running() {
            let m = running.handle.raft.metrics();
            let m = m.borrow_watched();
            c.awake += 1;
            c.term_max = c.term_max.max(m.current_term);
            match m.state {
                openraft::ServerState::Leader => c.leading += 1,
                openraft::ServerState::Candidate => c.candidate += 1,
                openraft::ServerState::Learner => c.learner += 1,
                _ => c.following += 1,
            }
            if m.current_leader != Some(self.node_id) {
                continue;
            }
            let last = m.last_log_index.unwrap_or(0);
            for (node, matched) in m.replication.iter().flatten() {
                if *node == self.node_id {
                    continue;
                }
                let lag = last.saturating_sub(matched.map_or(0, |l| l.index));
                c.lag_max = c.lag_max.max(lag);
                c.lag_sum = c.lag_sum.saturating_add(lag);
                c.followers_behind += u64::from(lag > 0);
            }
        }
        c
    }

    /// This node's replicas, as its groups see them.
    pub fn replicas(&self) -> Vec<ReplicaStatus> {
        let mut topics: HashMap<TopicId, TopicInfo> = self
            .topics
            .list()
            .into_iter()
            .map(|info| (info.meta.id, info))
            .collect();
        // A group whose topic is not created here yet (or deleted) has
        // nothing readers could use.
        let mut out: Vec<ReplicaStatus> = self
            .slots
            .all_running()
            .into_iter()
            .filter_map(|(group, running)| {
                let info = topics.remove(&TopicId(group.0))?;
                Some(of_running(group, &running.handle.raft, info, self.node_id))
            })
            .collect();
        for (group, asleep) in self.slots.all_asleep() {
            if let Some(info) = topics.remove(&TopicId(group.0)) {
                out.push(of_asleep(group, &asleep, info));
            }
        }
        out
    }

    /// Whether this node leads `group` now.
    pub fn leads(&self, group: GroupId) -> bool {
        self.running(group).is_some_and(|raft| {
            raft.metrics().borrow_watched().current_leader == Some(self.node_id)
        })
    }

    /// This node's replica of `group`, if it holds one whose topic exists.
    pub fn replica(&self, group: GroupId) -> Option<ReplicaStatus> {
        let info = self.topic_of(group)?;
        match self.slots.state(group)? {
            super::slots::State::Running(r) => {
                Some(of_running(group, &r.handle.raft, info, self.node_id))
            }
            super::slots::State::Asleep(a) => Some(of_asleep(group, &a, info)),
            _ => None,
        }
    }

    /// One running replica's status.
    pub(super) fn replica_status(&self, group: GroupId, raft: &Raft) -> Option<ReplicaStatus> {
        Some(of_running(group, raft, self.topic_of(group)?, self.node_id))
    }

    /// The topic of `group` as held here, if created.
    fn topic_of(&self, group: GroupId) -> Option<TopicInfo> {
        self.topics.info_by_id(TopicId(group.0))
    }

    /// The voters of `group`, if this node holds it.
    pub fn local_members(&self, group: GroupId) -> Option<Vec<PeerId>> {
        let members = match self.slots.state(group)? {
            super::slots::State::Running(r) => {
                peers(&voters(&r.handle.raft.metrics().borrow_watched()))
            }
            super::slots::State::Asleep(a) => peers(&a.members),
            _ => return None,
        };
        (!members.is_empty()).then_some(members)
    }
}

/// The voters' peer ids (`BasicNode::addr`), as a group's metrics say.
pub(super) fn voters(metrics: &Metrics) -> Vec<String> {
    let membership = metrics.membership_config.membership();
    membership
        .voter_ids()
        .filter_map(|id| membership.get_node(&id).map(|n| n.addr.clone()))
        .collect()
}

/// The log index of the membership [`voters`] reads, if it is applied
/// (so committed); 0 if not yet.
pub(super) fn voters_settled_at(metrics: &Metrics) -> u64 {
    let applied = metrics.last_applied.map_or(0, |l| l.index);
    match metrics.membership_config.log_id() {
        Some(l) if l.index <= applied => l.index,
        _ => 0,
    }
}

/// Peer ids from their text; ones that do not parse are left out.
pub(super) fn peers(names: &[String]) -> Vec<PeerId> {
    names.iter().filter_map(|m| peer(m)).collect()
}

/// Parsed peer ids a node remembers before it forgets them all.
const PEERS_PARSED_MAX: usize = 1024;

/// A peer id from its text (a voter's `BasicNode::addr`), parsed once per
/// process: every request reads its group's voters and leader this way, and
/// parsing base58 each time cost 1.5% of a busy node's CPU.
pub(super) fn peer(text: &str) -> Option<PeerId> {
    static PARSED: LazyLock<Mutex<HashMap<String, PeerId>>> = LazyLock::new(Default::default);
    let mut parsed = PARSED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = parsed.get(text) {
        return Some(*p);
    }
    let p: PeerId = text.parse().ok()?;
    if parsed.len() >= PEERS_PARSED_MAX {
        parsed.clear();
    }
    parsed.insert(text.to_string(), p);
    Some(p)
}

/// The peer id of `group`'s leader, as `metrics` say.
pub(super) fn leader_of(metrics: &Metrics) -> Option<PeerId> {
    let leader = metrics.current_leader?;
    metrics
        .membership_config
        .membership()
        .get_node(&leader)
        .and_then(|n| peer(&n.addr))
}

/// A running replica's status, from its group's metrics.
fn of_running(group: GroupId, raft: &Raft, info: TopicInfo, me: u64) -> ReplicaStatus {
    let metrics = raft.metrics().borrow_watched().clone();
    let membership = metrics.membership_config.membership();
    let addr = |id: u64| membership.get_node(&id).map(|n| n.addr.clone());
    ReplicaStatus {
        group: group.0,
        meta: info.meta,
        first_seq: info.range.first,
        last_seq: info.range.last,
        members: voters(&metrics),
        learners: membership.learner_ids().filter_map(&addr).collect(),
        leader: metrics.current_leader.and_then(addr),
        is_leader: metrics.current_leader == Some(me),
        applied_index: metrics.last_applied.map_or(0, |l| l.index),
        members_at: voters_settled_at(&metrics),
        last_log_index: metrics.last_log_index.unwrap_or(0),
        term: metrics.current_term,
        progress: membership
            .voter_ids()
            .filter_map(|id| {
                let matched = if id == me {
                    metrics.last_log_index
                } else {
                    metrics.replication.as_ref()?.get(&id)?.map(|l| l.index)
                };
                Some((addr(id)?, matched.unwrap_or(0)))
            })
            .collect(),
    }
}

/// A sleeping replica's status: nobody leads it, and it is as it was.
fn of_asleep(group: GroupId, asleep: &Asleep, info: TopicInfo) -> ReplicaStatus {
    ReplicaStatus {
        group: group.0,
        meta: info.meta,
        first_seq: info.range.first,
        last_seq: info.range.last,
        members: asleep.members.clone(),
        learners: Vec::new(),
        leader: None,
        is_leader: false,
        applied_index: asleep.applied_index,
        members_at: asleep.members_at,
        last_log_index: asleep.last_log_index,
        term: 0,
        progress: Vec::new(),
    }
}
