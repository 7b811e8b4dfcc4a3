//! Which write-ahead log a group's log append goes to (ADR 31).
//!
//! A node's Raft logs are written through two RocksDB databases, each with
//! its own write-ahead log and writer thread: the main one, and a bulk one
//! for appends of [`BULK_BYTES_MIN`] or more. A small append then never
//! waits while megabytes of another group's append are written and synced
//! (measured: single appends beside a flood of 8 MiB batches waited a
//! median 10 ms, up to 124 ms, in one shared queue).
//!
//! Per group, appends must stay in order across the lanes: a group's append
//! goes to the lane that still has one of its appends in flight, whatever
//! its size; only a group with nothing in flight changes lanes. And an
//! index is in at most one lane: an append first removes the indexes it
//! writes from the other lane, if they are there (`RocksStore`'s
//! `clear_other_lane`).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use crate::store::GroupId;

/// Appends of at least this many bytes go to the bulk lane.
pub(super) const BULK_BYTES_MIN: usize = 256 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lane {
    Main,
    Bulk,
}

/// The lanes' bookkeeping: which groups have appends in flight where, and
/// which groups may hold entries in the bulk lane.
#[derive(Default)]
pub(super) struct Lanes {
    /// Groups with appends handed to a writer and not yet done: their lane
    /// and how many. Only groups with something in flight are here.
    in_flight: Mutex<HashMap<GroupId, (Lane, usize)>>,
    /// Groups that may hold entries in the bulk lane (all that ever wrote
    /// one, those found there at open): the others' reads skip it.
    in_bulk: Mutex<HashSet<GroupId>>,
}

impl Lanes {
    /// Bookkeeping for a store whose bulk lane holds entries of `groups`.
    pub(super) fn new(groups: impl IntoIterator<Item = GroupId>) -> Self {
        Self {
            in_flight: Mutex::default(),
            in_bulk: Mutex::new(groups.into_iter().collect()),
        }
    }

    /// The lane for an append of `bytes` of `group` written in place (not
    /// counted in flight).
    pub(super) fn choose(&self, group: GroupId, bytes: usize) -> Lane {
        let in_flight = self.in_flight.lock().expect("lanes lock");
        let lane = in_flight
            .get(&group)
            .map_or_else(|| by_size(bytes), |(lane, _)| *lane);
        drop(in_flight);
        self.note(group, lane);
        lane
    }

    /// The lane for an append of `bytes` of `group` handed to a writer,
    /// counted in flight until [`leave`](Self::leave).
    pub(super) fn enter(&self, group: GroupId, bytes: usize) -> Lane {
        let mut in_flight = self.in_flight.lock().expect("lanes lock");
        let (lane, count) = in_flight.entry(group).or_insert((by_size(bytes), 0));
        *count += 1;
        let lane = *lane;
        drop(in_flight);
        self.note(group, lane);
        lane
    }

    /// One append of `group` handed to a writer is done.
    pub(super) fn leave(&self, group: GroupId) {
        let mut in_flight = self.in_flight.lock().expect("lanes lock");
        if let Some((_, count)) = in_flight.get_mut(&group) {
            *count -= 1;
            if *count == 0 {
                in_flight.remove(&group);
            }
        }
    }

    /// Whether `group` has appends in flight.
    #[cfg(test)]
    pub(super) fn busy(&self, group: GroupId) -> bool {
        self.in_flight
            .lock()
            .expect("lanes lock")
            .contains_key(&group)
    }

    /// Whether `group` may hold entries in the bulk lane.
    pub(super) fn in_bulk(&self, group: GroupId) -> bool {
        self.in_bulk.lock().expect("lanes lock").contains(&group)
    }

    /// `group`'s bulk entries are all gone (the group was deleted).
    pub(super) fn forget(&self, group: GroupId) {
        self.in_bulk.lock().expect("lanes lock").remove(&group);
    }

    fn note(&self, group: GroupId, lane: Lane) {
        if lane == Lane::Bulk {
            self.in_bulk.lock().expect("lanes lock").insert(group);
        }
    }
}

fn by_size(bytes: usize) -> Lane {
    if bytes >= BULK_BYTES_MIN {
        Lane::Bulk
    } else {
        Lane::Main
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_stays_in_its_lane_while_it_has_appends_in_flight() {
        let lanes = Lanes::new([]);
        let g = GroupId(1);
        assert_eq!(lanes.enter(g, BULK_BYTES_MIN), Lane::Bulk);
        assert!(lanes.in_bulk(g));
        // Small, but its large one is still in flight.
        assert_eq!(lanes.enter(g, 10), Lane::Bulk);
        assert_eq!(lanes.choose(g, 10), Lane::Bulk);
        lanes.leave(g);
        assert_eq!(lanes.enter(g, 10), Lane::Bulk);
        lanes.leave(g);
        lanes.leave(g);
        // Nothing in flight: by size again.
        assert_eq!(lanes.enter(g, 10), Lane::Main);
        assert_eq!(lanes.enter(g, BULK_BYTES_MIN), Lane::Main);
        lanes.leave(g);
        lanes.leave(g);
        assert_eq!(lanes.choose(g, BULK_BYTES_MIN - 1), Lane::Main);
        // Another group is not held by this one.
        assert_eq!(lanes.enter(g, BULK_BYTES_MIN), Lane::Bulk);
        assert_eq!(lanes.enter(GroupId(2), 10), Lane::Main);
        assert!(!lanes.in_bulk(GroupId(2)));
        lanes.forget(g);
        assert!(!lanes.in_bulk(g));
    }
}
