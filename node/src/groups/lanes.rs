//! Producer identities that this node gives the appends it forwards on a
//! client's behalf when the client named no producer, so that the node's
//! own retries (after a timeout, a lost answer, a leader change) are
//! recognised by the topic's producer window and never applied twice.
//!
//! A topic accepts a producer's sequences only in increasing order, so one
//! identity must never have two appends in flight: the node keeps a pool of
//! [`LANES_MAX`] lanes, each an identity (`~<node id>/<lane>`: the node's
//! Raft node id in hex, unique in a cluster as Raft needs it, and 20
//! bytes rather than the 53 of a peer id in every entry) with at most one
//! append under way. An append takes a free lane (waiting for one when all
//! are busy), keeps it through all its retries, and gives it back. A lane's
//! sequence is `epoch << 40 | counter`, where the epoch grows by one each
//! time the node starts (persisted), so sequences keep increasing across
//! restarts whatever the clock does; a topic holds at most [`LANES_MAX`]
//! producer windows per node for them.

use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use woof_consensus::topic::NODE_PRODUCER_PREFIX;
use woof_overlay::PeerId;

/// Appends without a producer id that one node forwards at once; more wait.
pub(super) const LANES_MAX: usize = 64;
/// The bits of a lane's sequence that count appends within one epoch.
const COUNTER_BITS: u32 = 40;
/// The highest epoch a sequence can carry.
pub(super) const EPOCH_MAX: u64 = (1 << (64 - COUNTER_BITS)) - 1;

/// A lane taken by one append: its producer identity for every attempt.
pub(super) struct Lane {
    pub id: String,
    pub seq: u64,
    index: usize,
    lanes: Arc<Lanes>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Lane {
    fn drop(&mut self) {
        self.lanes.free(self.index);
    }
}

/// The pool of lanes of one node.
pub(super) struct Lanes {
    prefix: String,
    epoch: u64,
    /// Each lane's appends so far in this epoch, and whether it is free.
    state: Mutex<Vec<(u64, bool)>>,
    permits: Arc<Semaphore>,
}

impl Lanes {
    /// The lanes of node `peer` in its `epoch`th start (at most
    /// [`EPOCH_MAX`]).
    pub fn new(peer: &PeerId, epoch: u64) -> Self {
        Self {
            prefix: format!("{NODE_PRODUCER_PREFIX}{:016x}", super::node_id(peer)),
            epoch: epoch.min(EPOCH_MAX),
            state: Mutex::new(vec![(0, true); LANES_MAX]),
            permits: Arc::new(Semaphore::new(LANES_MAX)),
        }
    }

    /// A free lane, with its next sequence; waits while all are busy.
    pub async fn take(self: &Arc<Self>) -> Lane {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the lanes' semaphore is never closed");
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let index = state
            .iter()
            .position(|(_, free)| *free)
            .expect("a permit means a free lane");
        let (count, free) = &mut state[index];
        *free = false;
        *count += 1;
        Lane {
            id: format!("{}/{index}", self.prefix),
            seq: (self.epoch << COUNTER_BITS) | (*count & ((1 << COUNTER_BITS) - 1)),
            index,
            lanes: self.clone(),
            _permit: permit,
        }
    }

    fn free(&self, index: usize) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state[index].1 = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lane_is_never_shared_and_its_sequences_increase() {
        let lanes = Arc::new(Lanes::new(&PeerId::random(), 3));
        let a = lanes.take().await;
        let b = lanes.take().await;
        assert_ne!(a.id, b.id, "two appends in flight never share an identity");
        assert_eq!(a.seq, (3 << COUNTER_BITS) | 1);
        let (a_id, a_seq) = (a.id.clone(), a.seq);
        drop(a);
        let again = lanes.take().await;
        assert_eq!(again.id, a_id, "the freed lane is taken again");
        assert!(again.seq > a_seq);
    }

    #[tokio::test]
    async fn a_later_epoch_continues_above_every_earlier_sequence() {
        let peer = PeerId::random();
        let before = Arc::new(Lanes::new(&peer, 1));
        let mut last = 0;
        for _ in 0..1000 {
            last = before.take().await.seq;
        }
        let after = Arc::new(Lanes::new(&peer, 2));
        let first = after.take().await;
        assert!(first.seq > last);
        // The node's Raft node id, as short as it stays unique.
        let node = format!("~{:016x}/", super::super::node_id(&peer));
        assert!(first.id.starts_with(&node), "{} is {node}N", first.id);
        assert_eq!(first.id.len(), node.len() + 1);
    }

    #[tokio::test]
    async fn takers_wait_while_every_lane_is_busy() {
        let lanes = Arc::new(Lanes::new(&PeerId::random(), 1));
        let mut held = Vec::new();
        for _ in 0..LANES_MAX {
            held.push(lanes.take().await);
        }
        let waiting = tokio::spawn({
            let lanes = lanes.clone();
            async move { lanes.take().await.id.clone() }
        });
        let short = std::time::Duration::from_millis(50);
        assert!(
            tokio::time::timeout(short, lanes.take()).await.is_err(),
            "no lane is free"
        );
        assert!(!waiting.is_finished());
        let freed = held.pop().unwrap().id.clone();
        assert_eq!(waiting.await.unwrap(), freed);
    }
}
