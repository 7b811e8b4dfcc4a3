//! One state per group: the groups this node holds, each in exactly one
//! [`State`], with every legal change of state in this file.
//!
//! ```text
//!            load / stop_sleeping            begin_start
//!   (none) ----------------------> Asleep -----------------> Starting
//!     |                              ^                        |    |
//!     |        begin_start           |  failed (had slept)    |    | started
//!     +------------------------------|------------------------+    v
//!                                    +------------------------- Running
//!   any state --begin_leave--> Leaving --finish_leave--> (none)
//! ```
//!
//! A group that failed to start and was not held before leaves no slot, and
//! a removed group's slot goes with it, so the table holds exactly the
//! groups this node stores (bounded by them). Each slot carries a gate: the
//! lifecycle holds it across a change that awaits (starting a group,
//! putting it to sleep, removing it), so that two changes of one group never
//! interleave; the table's own lock is never held across an await.
//!
//! Generic over the handle of a running group so that the transitions are
//! tested without starting Raft.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::time::Instant;
use woof_consensus::store::GroupId;

/// A group this node holds but does not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Asleep {
    /// The voters' peer ids, as last applied.
    pub members: Vec<String>,
    /// The log index of the membership `members` come from, if it is
    /// committed (0 if not known to be).
    pub members_at: u64,
    pub applied_index: u64,
    /// The highest log index held (applied or not).
    pub last_log_index: u64,
    /// Put to sleep by its leader (so nobody leads it), rather than found
    /// in storage at start (when a leader may be running elsewhere).
    pub clean: bool,
}

/// A group running here.
#[derive(Debug, Clone)]
pub(super) struct Running<H> {
    pub handle: H,
    /// When it last served a client here (idle groups sleep).
    pub last_used: Instant,
}

/// Where one group is in its life on this node.
#[derive(Debug, Clone)]
pub(super) enum State<H> {
    Asleep(Asleep),
    /// Being started; what it was before, to go back to if that fails.
    Starting {
        was: Option<Asleep>,
    },
    Running(Running<H>),
    /// Being removed: stopped and its storage deleted.
    Leaving,
}

struct Slot<H> {
    state: State<H>,
    gate: Arc<tokio::sync::Mutex<()>>,
}

/// An illegal change of state: a bug in the lifecycle, reported rather than
/// acted on.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Illegal(pub &'static str);

/// The groups this node holds, by id.
pub(super) struct Slots<H> {
    map: Mutex<HashMap<GroupId, Slot<H>>>,
}

impl<H> Default for Slots<H> {
    fn default() -> Self {
        Self {
            map: Mutex::default(),
        }
    }
}

impl<H: Clone> Slots<H> {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<GroupId, Slot<H>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The gate of `group`'s slot, held across a change. A group with no
    /// slot gets one, as Starting from nothing: the caller is about to start
    /// or remove it, and [`Slots::start_failed`] or [`Slots::finish_leave`]
    /// takes it away again if that does not happen.
    pub fn gate(&self, group: GroupId) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.map();
        match map.get(&group) {
            Some(slot) => slot.gate.clone(),
            None => {
                let gate = Arc::new(tokio::sync::Mutex::new(()));
                map.insert(
                    group,
                    Slot {
                        state: State::Starting { was: None },
                        gate: gate.clone(),
                    },
                );
                gate
            }
        }
    }

    /// A copy of `group`'s state.
    pub fn state(&self, group: GroupId) -> Option<State<H>> {
        self.map().get(&group).map(|s| s.state.clone())
    }

    /// The handle of `group` if it runs here.
    pub fn running(&self, group: GroupId) -> Option<H> {
        match &self.map().get(&group)?.state {
            State::Running(r) => Some(r.handle.clone()),
            _ => None,
        }
    }

    /// Every running group, in id order (the simulator repeats a run only
    /// if the node iterates in a fixed order).
    pub fn all_running(&self) -> Vec<(GroupId, Running<H>)> {
        let mut out: Vec<_> = self
            .map()
            .iter()
            .filter_map(|(g, s)| match &s.state {
                State::Running(r) => Some((*g, r.clone())),
                _ => None,
            })
            .collect();
        out.sort_by_key(|(g, _)| *g);
        out
    }

    /// Every sleeping group, in id order.
    pub fn all_asleep(&self) -> Vec<(GroupId, Asleep)> {
        let mut out: Vec<_> = self
            .map()
            .iter()
            .filter_map(|(g, s)| match &s.state {
                State::Asleep(a) => Some((*g, a.clone())),
                _ => None,
            })
            .collect();
        out.sort_by_key(|(g, _)| *g);
        out
    }

    /// How many groups this node holds.
    /// How many groups are asleep and how many running.
    pub fn census(&self) -> (usize, usize) {
        let map = self.map();
        let asleep = map
            .values()
            .filter(|s| matches!(s.state, State::Asleep(_)))
            .count();
        let running = map
            .values()
            .filter(|s| matches!(s.state, State::Running(_)))
            .count();
        (asleep, running)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// A group found in storage at start: asleep until something needs it.
    /// A group already known keeps its state.
    pub fn load(&self, group: GroupId, asleep: Asleep) {
        self.map().entry(group).or_insert_with(|| Slot {
            state: State::Asleep(asleep),
            gate: Arc::default(),
        });
    }

    /// Asleep (or unknown, with its gate just made) -> Starting.
    pub fn begin_start(&self, group: GroupId) -> Result<(), Illegal> {
        let mut map = self.map();
        let slot = map.entry(group).or_insert_with(|| Slot {
            state: State::Starting { was: None },
            gate: Arc::default(),
        });
        slot.state = match &slot.state {
            State::Asleep(a) => State::Starting {
                was: Some(a.clone()),
            },
            State::Starting { was } => State::Starting { was: was.clone() },
            State::Running(_) => return Err(Illegal("start a running group")),
            State::Leaving => return Err(Illegal("start a group being removed")),
        };
        Ok(())
    }

    /// Starting -> Running.
    pub fn started(&self, group: GroupId, handle: H, now: Instant) -> Result<(), Illegal> {
        let mut map = self.map();
        let Some(slot) = map.get_mut(&group) else {
            return Err(Illegal("finish starting a group with no slot"));
        };
        let State::Starting { .. } = slot.state else {
            return Err(Illegal("finish starting a group that was not starting"));
        };
        slot.state = State::Running(Running {
            handle,
            last_used: now,
        });
        Ok(())
    }

    /// Starting -> what it was (asleep, or no slot at all).
    pub fn start_failed(&self, group: GroupId) {
        let mut map = self.map();
        if let Some(slot) = map.get_mut(&group)
            && let State::Starting { was } = &slot.state
        {
            match was {
                Some(a) => slot.state = State::Asleep(a.clone()),
                None => {
                    map.remove(&group);
                }
            }
        }
    }

    /// Running -> Asleep; gives back the handle to stop.
    pub fn sleep(&self, group: GroupId, asleep: Asleep) -> Result<H, Illegal> {
        let mut map = self.map();
        let Some(slot) = map.get_mut(&group) else {
            return Err(Illegal("put to sleep a group with no slot"));
        };
        let State::Running(running) = &slot.state else {
            return Err(Illegal("put to sleep a group that does not run"));
        };
        let handle = running.handle.clone();
        slot.state = State::Asleep(asleep);
        Ok(handle)
    }

    /// Any state -> Leaving; gives back the handle to stop, if it ran.
    pub fn begin_leave(&self, group: GroupId) -> Option<H> {
        let mut map = self.map();
        let slot = map.get_mut(&group)?;
        let previous = std::mem::replace(&mut slot.state, State::Leaving);
        match previous {
            State::Running(r) => Some(r.handle),
            _ => None,
        }
    }

    /// Leaving -> (none).
    pub fn finish_leave(&self, group: GroupId) {
        let mut map = self.map();
        if matches!(map.get(&group).map(|s| &s.state), Some(State::Leaving)) {
            map.remove(&group);
        }
    }

    /// Notes that a running `group` served a client at `now`.
    pub fn touch(&self, group: GroupId, now: Instant) {
        if let Some(Slot {
            state: State::Running(r),
            ..
        }) = self.map().get_mut(&group)
        {
            r.last_used = now;
        }
    }

    /// When a running `group` last served a client.
    pub fn last_used(&self, group: GroupId) -> Option<Instant> {
        match &self.map().get(&group)?.state {
            State::Running(r) => Some(r.last_used),
            _ => None,
        }
    }

    /// Empties the table (the node is stopping; nothing starts again) and
    /// gives back the handles of the groups that ran, to stop them.
    pub fn drain(&self) -> Vec<H> {
        let mut map = self.map();
        let mut running: Vec<_> = map
            .drain()
            .filter_map(|(g, s)| match s.state {
                State::Running(r) => Some((g, r.handle)),
                _ => None,
            })
            .collect();
        running.sort_by_key(|(g, _)| *g);
        running.into_iter().map(|(_, h)| h).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asleep(applied: u64) -> Asleep {
        Asleep {
            members: vec!["a".into()],
            members_at: 1,
            applied_index: applied,
            last_log_index: applied,
            clean: true,
        }
    }

    #[tokio::test]
    async fn a_group_starts_runs_sleeps_and_starts_again() {
        let slots: Slots<u32> = Slots::default();
        let g = GroupId(1 << 20);
        let now = Instant::now();
        slots.load(g, asleep(4));
        assert!(matches!(slots.state(g), Some(State::Asleep(_))));
        slots.begin_start(g).unwrap();
        assert!(matches!(
            slots.state(g),
            Some(State::Starting { was: Some(_) })
        ));
        assert_eq!(slots.running(g), None);
        slots.started(g, 7, now).unwrap();
        assert_eq!(slots.running(g), Some(7));
        assert_eq!(slots.all_running().len(), 1);
        assert_eq!(slots.sleep(g, asleep(9)), Ok(7));
        assert_eq!(slots.all_asleep(), vec![(g, asleep(9))]);
        slots.begin_start(g).unwrap();
        slots.started(g, 8, now).unwrap();
        assert_eq!(slots.running(g), Some(8));
    }

    #[tokio::test]
    async fn a_failed_start_goes_back_and_leaves_no_slot_for_a_new_group() {
        let slots: Slots<u32> = Slots::default();
        let held = GroupId(1 << 20);
        let new = GroupId((1 << 20) + 1);
        slots.load(held, asleep(3));
        slots.begin_start(held).unwrap();
        slots.start_failed(held);
        assert_eq!(slots.all_asleep(), vec![(held, asleep(3))]);
        let _gate = slots.gate(new);
        slots.begin_start(new).unwrap();
        slots.start_failed(new);
        assert!(slots.state(new).is_none());
        assert_eq!(
            slots.len(),
            1,
            "no slot left behind for the failed new group"
        );
    }

    #[tokio::test]
    async fn illegal_changes_are_refused() {
        let slots: Slots<u32> = Slots::default();
        let g = GroupId(1 << 20);
        let now = Instant::now();
        assert!(slots.started(g, 1, now).is_err(), "never started");
        assert!(slots.sleep(g, asleep(0)).is_err(), "no slot");
        slots.load(g, asleep(0));
        assert!(slots.started(g, 1, now).is_err(), "asleep, not starting");
        assert!(slots.sleep(g, asleep(0)).is_err(), "asleep already");
        slots.begin_start(g).unwrap();
        slots.started(g, 1, now).unwrap();
        assert!(slots.begin_start(g).is_err(), "running already");
        assert_eq!(slots.begin_leave(g), Some(1));
        assert!(slots.begin_start(g).is_err(), "being removed");
        assert!(slots.started(g, 2, now).is_err(), "being removed");
    }

    #[tokio::test]
    async fn a_removed_group_leaves_nothing_behind() {
        let slots: Slots<u32> = Slots::default();
        let g = GroupId(1 << 20);
        slots.load(g, asleep(1));
        let gate = slots.gate(g);
        let _held = gate.lock().await;
        assert_eq!(slots.begin_leave(g), None, "it did not run");
        slots.finish_leave(g);
        assert_eq!(slots.len(), 0);
        assert_eq!(slots.begin_leave(g), None);
    }

    #[tokio::test]
    async fn loading_keeps_a_known_state_and_touch_only_moves_running_groups() {
        let slots: Slots<u32> = Slots::default();
        let g = GroupId(1 << 20);
        let t0 = Instant::now();
        slots.begin_start(g).unwrap();
        slots.started(g, 5, t0).unwrap();
        slots.load(g, asleep(0));
        assert_eq!(
            slots.running(g),
            Some(5),
            "load does not stop a running group"
        );
        let t1 = t0 + std::time::Duration::from_secs(1);
        slots.touch(g, t1);
        assert_eq!(slots.last_used(g), Some(t1));
        assert_eq!(slots.drain(), vec![5]);
        assert_eq!(slots.running(g), None);
        assert_eq!(slots.len(), 0);
    }
}
