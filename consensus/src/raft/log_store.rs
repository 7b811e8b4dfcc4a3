//! openraft's log storage for one group, over a [`RaftLogStore`].

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader};

use super::{Entry, LogId, TypeConfig, Vote, blocking, quick, state_machine};
use crate::bugs::{self, Bug};
use crate::codec::{decode, encode};
use crate::error::Error;
use crate::store::{GroupId, RaftLogStore, wait_for_disk};

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";
/// How long a purge waits for the state machine to apply what it purges
/// (a snapshot being installed), and how often it looks.
const PURGE_WAITS_FOR_APPLY: std::time::Duration = std::time::Duration::from_secs(30);
const PURGE_POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// One group's log on node `node`. Cheap to clone: clones share the store.
#[derive(Clone)]
pub struct LogStore {
    store: Arc<dyn RaftLogStore>,
    group: GroupId,
    node: u64,
    /// Purges only what the group's state machine applied (see `purge`).
    purge_applied_only: bool,
}

impl LogStore {
    pub fn new(store: Arc<dyn RaftLogStore>, group: GroupId, node: u64) -> Self {
        Self {
            store,
            group,
            node,
            purge_applied_only: true,
        }
    }

    /// Purges all it is asked to, whatever the state machine applied: for
    /// openraft's storage suite, which purges logs it never applies.
    pub fn purging_as_asked(mut self) -> Self {
        self.purge_applied_only = false;
        self
    }

    async fn value<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        name: &'static str,
    ) -> Result<Option<T>, Error> {
        quick(|| {
            self.store
                .value(self.group, name)?
                .map(|b| decode(&b))
                .transpose()
        })
    }

    async fn put_value<T: serde::Serialize>(
        &self,
        name: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        let bytes = encode(value)?;
        wait_for_disk(&*self.store).await;
        let (store, group) = (self.store.clone(), self.group);
        blocking(move || store.put_value(group, name, &bytes)).await
    }
}

/// The node that led `group` when it last knew a leader: the leader of
/// its stored vote, if that vote is committed (granted by a quorum). A
/// sleeping group's replicas know it without running the group, and that
/// node takes its leadership up again as soon as the group starts there
/// (openraft's `Engine::startup`).
pub fn stored_leader(store: &dyn RaftLogStore, group: GroupId) -> Result<Option<u64>, Error> {
    let Some(bytes) = store.value(group, VOTE)? else {
        return Ok(None);
    };
    let vote: Vote = decode(&bytes)?;
    Ok(vote.is_committed().then_some(vote.leader_id().node_id))
}

/// openraft's storage traits speak `std::io::Error`; woof's error is its
/// source, and openraft says which read or write failed.
pub(super) fn io_err(e: Error) -> std::io::Error {
    std::io::Error::other(e)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, std::io::Error> {
        let from = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        // Replication reads what was just appended: the memtable answers.
        quick(|| {
            self.store
                .read_log(self.group, from, to, usize::MAX)?
                .iter()
                .map(|(_, bytes)| decode(bytes))
                .collect()
        })
        .map_err(io_err)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, std::io::Error> {
        self.value(VOTE).await.map_err(io_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, std::io::Error> {
        let last_purged: Option<LogId> = self.value(LAST_PURGED).await.map_err(io_err)?;
        let (store, group) = (self.store.clone(), self.group);
        let last: Option<Entry> = blocking(move || {
            store
                .last_log(group)?
                .map(|(_, bytes)| decode(&bytes))
                .transpose()
        })
        .await
        .map_err(io_err)?;
        Ok(LogState {
            last_purged_log_id: last_purged,
            // Entries a crash left below the purge point do not count.
            last_log_id: std::cmp::max(last.map(|e| e.log_id), last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), std::io::Error> {
        self.put_value(VOTE, vote).await.map_err(io_err)
    }

    /// Not synced: openraft awaits it between a commit and applying it,
    /// and synced it was one more sync in a row on every commit (`floor`
    /// 25 % slower). A crash may lose the newest, which only delays
    /// applying what was committed until the group commits again; but a
    /// leader that takes up its leadership again at once (openraft's
    /// `Engine::startup`; since ADR 28 only after this process put the
    /// group to sleep, not after a crash) would confirm reads against an
    /// older committed log id, so [`confirm_leader`](super::group::confirm_leader)
    /// also waits for everything the leader holds (the simulator's seed 24
    /// found a read without appends the leader had acknowledged, under
    /// openraft 0.9, when it did not). Written in place: handing it to the blocking pool cost more
    /// than the write (18 topics x 4 clients +20 % without the hand-over).
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), std::io::Error> {
        let bytes = encode(&committed).map_err(io_err)?;
        quick(|| self.store.put_value_unsynced(self.group, COMMITTED, &bytes)).map_err(io_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, std::io::Error> {
        Ok(self
            .value::<Option<LogId>>(COMMITTED)
            .await
            .map_err(io_err)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), std::io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut own = true;
        let encoded = entries
            .into_iter()
            .map(|e| {
                own &= e.log_id.leader_id.node_id == self.node;
                Ok((e.log_id.index, encode(&e)?))
            })
            .collect::<Result<Vec<_>, Error>>()
            .map_err(io_err)?;
        let (store, group) = (self.store.clone(), self.group);
        if own && bugs::on(Bug::LeaderCountsItselfUnsynced) {
            return match blocking(move || store.append_log_unsynced(group, &encoded)).await {
                Ok(()) => {
                    callback.io_completed(Ok(()));
                    Ok(())
                }
                Err(e) => Err(io_err(e)),
            };
        }
        // Returns once the entries read back (the leader replicates them
        // meanwhile: openraft 0.10 reads them for its followers as soon as
        // this returns); `callback` is told once they are synced, and only
        // then does this replica count in the quorum for them. RocksDB's
        // log writer syncs them together with the other groups' appends
        // that come meanwhile, on its own thread; no task waits for it.
        let (tx, rx) = tokio::sync::oneshot::channel();
        store.append_log_then(
            group,
            encoded,
            Box::new(move |outcome| {
                let _ = tx.send(outcome);
            }),
            Box::new(move |outcome: Result<(), Error>| {
                callback.io_completed(outcome.map_err(io_err));
            }),
        );
        rx.await
            .unwrap_or_else(|_| Err(Error::Storage("the log writer stopped".into())))
            .map_err(io_err)
    }

    async fn truncate_after(&mut self, last: Option<LogId>) -> Result<(), std::io::Error> {
        let from = last.map_or(0, |l| l.index + 1);
        let (store, group) = (self.store.clone(), self.group);
        blocking(move || store.truncate_log(group, from))
            .await
            .map_err(io_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), std::io::Error> {
        // Already purged: nothing to wait for.
        let purged: Option<LogId> = self.value(LAST_PURGED).await.map_err(io_err)?;
        if purged.is_some_and(|p| p.index >= log_id.index) {
            return Ok(());
        }
        // Never past what the state machine applied. openraft 0.9 purges a
        // follower's log as soon as it hands a leader's snapshot to the
        // state machine, before the install is done: an install that fails,
        // or a crash before it ends, would leave the replica behind a
        // purged log, unable to start again (openraft then finds its purge
        // point past its snapshot, and panics; seen in the simulator). So
        // the purge waits for the install (the state machine's own task
        // runs it meanwhile); if it never ends, the purge fails, which
        // stops the group with nothing purged. (Purging only what was
        // applied instead left holes below the snapshot that the next
        // start could not read.) Read before the flush below, so that the
        // flush covers it.
        if self.purge_applied_only {
            let deadline = tokio::time::Instant::now() + PURGE_WAITS_FOR_APPLY;
            loop {
                let (store, group) = (self.store.clone(), self.group);
                let applied = blocking(move || state_machine::applied_log_id(&*store, group))
                    .await
                    .map_err(io_err)?;
                if applied.is_some_and(|a| a.index >= log_id.index) {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(io_err(Error::Storage(format!(
                        "purging the log of group {} up to {}: its state machine applied \
                         only {:?} within {PURGE_WAITS_FOR_APPLY:?}",
                        self.group.0,
                        log_id.index,
                        applied.map(|a| a.index)
                    ))));
                }
                tokio::time::sleep(PURGE_POLL).await;
            }
        }
        // What the state machine applied from these entries may still be
        // only in memory (`Store::write_applied`): once they are gone, a
        // crash could not apply them again.
        if !bugs::on(Bug::PurgeBeforePersist) {
            let store = self.store.clone();
            blocking(move || store.persist_applied())
                .await
                .map_err(io_err)?;
        }
        // Record the purge point first: a crash in between leaves entries
        // that are below it, which readers never ask for.
        self.put_value(LAST_PURGED, &log_id).await.map_err(io_err)?;
        let (store, group) = (self.store.clone(), self.group);
        blocking(move || store.purge_log(group, log_id.index))
            .await
            .map_err(io_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    #[test]
    fn the_stored_leader_is_the_one_a_quorum_granted() {
        let store = MemStore::new();
        let group = GroupId(9);
        assert_eq!(stored_leader(&store, group).unwrap(), None, "no vote yet");
        let put = |vote: Vote| {
            store
                .put_value(group, VOTE, &encode(&vote).unwrap())
                .unwrap()
        };
        put(Vote::new(3, 5));
        assert_eq!(
            stored_leader(&store, group).unwrap(),
            None,
            "a vote only asked for names no leader"
        );
        put(Vote::new_committed(3, 5));
        assert_eq!(stored_leader(&store, group).unwrap(), Some(5));
        store.put_value(group, VOTE, b"not a vote").unwrap();
        assert!(
            stored_leader(&store, group).is_err(),
            "bad bytes are an error"
        );
    }
}
