//! Watches every membership a group applies, on whichever node first
//! applies it (its leader, as a rule), and notes each node it makes a
//! voter that did not hold the group's log then: a repair must let a new
//! replica catch up before it counts as a voter (the repair checker reports
//! what is noted here).
//!
//! A disk tells [`Joins::applied`] of each membership applied on it
//! ([`SimStore::watch`]). The first node to apply a membership is the
//! moment it committed: a new voter must then hold the log up to about
//! where the change began. woof adds it as a learner and waits until it
//! holds the log up to that learner entry, then proposes the change; a few
//! client batches may come between, hence [`JOIN_SLACK`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use woof_consensus::raft::state_machine::peek;
use woof_consensus::store::GroupId;

use crate::history::Recorder;
use crate::store::SimStore;

/// Log entries a new voter may lack when the membership that makes it one
/// commits.
pub const JOIN_SLACK: u64 = 8;

/// A node made a voter of a group before it held the group's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LateJoin {
    pub at_ms: u64,
    pub group: u64,
    pub node: u64,
    /// The log index of the membership that made it a voter.
    pub membership_at: u64,
    /// The highest log index its copy held then.
    pub held: u64,
}

/// See the module documentation.
pub struct Joins {
    rec: Arc<Recorder>,
    /// Node of each peer id, as text (how memberships name voters).
    nodes: HashMap<String, u64>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Each node's disk now (weak: the disks hold this through their
    /// watchers).
    stores: BTreeMap<u64, Weak<SimStore>>,
    /// Each group's newest membership applied anywhere: its log index and
    /// voters.
    groups: HashMap<GroupId, (u64, BTreeSet<String>)>,
    late: Vec<LateJoin>,
}

/// Late joins noted at most.
const LATE_MAX: usize = 100;

impl Joins {
    /// Watches the nodes whose peer ids are `nodes` (keyed by the peer
    /// id's text), each once its disk is [`attach`](Self::attach)ed.
    pub fn new(rec: Arc<Recorder>, nodes: HashMap<String, u64>) -> Self {
        Self {
            rec,
            nodes,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `store` node `node`'s disk (at its start, and again at each
    /// restart: a restarted process has a new view of the disk).
    pub fn attach(self: &Arc<Self>, node: u64, store: &Arc<SimStore>) {
        self.state().stores.insert(node, Arc::downgrade(store));
        let joins = self.clone();
        store.watch(Box::new(move |group, at, voters| {
            joins.applied(group, at, voters)
        }));
    }

    /// Group `group` applied the membership at log index `at` with
    /// `voters`.
    fn applied(&self, group: GroupId, at: u64, voters: Vec<String>) {
        let voters: BTreeSet<String> = voters.into_iter().collect();
        let new: Vec<String> = {
            let mut state = self.state();
            let newer = state.groups.get(&group).is_none_or(|(seen, _)| at > *seen);
            if !newer {
                return;
            }
            let before = state.groups.insert(group, (at, voters.clone()));
            // A group's first membership (its creation) adds nobody.
            let Some((_, before)) = before else {
                return;
            };
            voters.difference(&before).cloned().collect()
        };
        for voter in new {
            let Some(node) = self.nodes.get(&voter).copied() else {
                continue;
            };
            let Some(store) = self.state().stores.get(&node).and_then(Weak::upgrade) else {
                continue;
            };
            // A crashed disk answers nothing: not judged.
            let Ok(copy) = peek(&*store, &*store, group) else {
                continue;
            };
            if copy.last_log_index + JOIN_SLACK < at {
                let mut state = self.state();
                if state.late.len() < LATE_MAX {
                    state.late.push(LateJoin {
                        at_ms: self.rec.now_ms(),
                        group: group.0,
                        node,
                        membership_at: at,
                        held: copy.last_log_index,
                    });
                }
            }
        }
    }

    /// The late joins noted so far.
    pub fn late(&self) -> Vec<LateJoin> {
        self.state().late.clone()
    }
}
