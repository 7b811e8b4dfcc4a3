//! openraft's log storage for one group, over a [`RaftLogStore`].

use std::collections::VecDeque;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

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

/// One group's log on node `node`. Cheap to clone: clones share the store
/// and the recent entries.
#[derive(Clone)]
pub struct LogStore {
    store: Arc<dyn RaftLogStore>,
    group: GroupId,
    node: u64,
    /// Purges only what the group's state machine applied (see `purge`).
    purge_applied_only: bool,
    recent: Arc<Mutex<Recent>>,
    /// The log index up to which what the state machine applied is known
    /// to be durable (a flush made since: [`DurableApplied`]); a purge
    /// up to it needs no flush of its own.
    durable: DurableApplied,
}

/// The log index up to which a group's applied state is known durable,
/// shared by its state machine (which flushes as it builds a snapshot, off
/// the group's tasks) and its log store (whose purge would flush
/// otherwise, and openraft awaits a purge in the group's core task: the
/// group would replicate and commit nothing meanwhile). Only in memory: 0
/// after a start.
#[derive(Debug, Clone, Default)]
pub struct DurableApplied(Arc<std::sync::atomic::AtomicU64>);

impl DurableApplied {
    /// Everything applied up to `index` is durable.
    pub fn reached(&self, index: u64) {
        self.0.fetch_max(index, std::sync::atomic::Ordering::AcqRel);
    }

    fn covers(&self, index: u64) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire) >= index
    }
}

/// The most entries, and payload bytes, [`Recent`] keeps for one group.
const RECENT_ENTRIES_MAX: usize = 1024;
const RECENT_BYTES_MAX: usize = 4 << 20;

/// The entries this group appended last, as openraft handed them over, in
/// index order up to the log's last: openraft reads each entry back at once
/// (for every follower's replication, and on every replica to apply it), and
/// from here it needs neither a read from storage nor decoding, and its
/// payloads are shared, not copied. Always what the storage holds at those
/// indexes: an append replaces what it overwrites, a truncation or a purge
/// removes what it removes. Bounded by [`RECENT_ENTRIES_MAX`] and
/// [`RECENT_BYTES_MAX`] (the oldest go first; a larger entry is not kept);
/// a group that sleeps drops it with its log store. Older entries are read
/// from storage as before.
#[derive(Default)]
struct Recent {
    entries: VecDeque<Entry>,
    bytes: usize,
}

impl Recent {
    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    fn first(&self) -> Option<u64> {
        self.entries.front().map(|e| e.log_id.index)
    }

    /// Removes the entries with `index >= from`.
    fn truncate(&mut self, from: u64) {
        while self.entries.back().is_some_and(|e| e.log_id.index >= from) {
            let e = self.entries.pop_back().expect("a last entry");
            self.bytes -= entry_bytes(&e);
        }
    }

    /// Removes the entries with `index <= upto`.
    fn purge(&mut self, upto: u64) {
        while self.entries.front().is_some_and(|e| e.log_id.index <= upto) {
            let e = self.entries.pop_front().expect("a first entry");
            self.bytes -= entry_bytes(&e);
        }
    }

    /// Records `appended` (consecutive indexes), now in storage in place of
    /// whatever it held from their first index on.
    fn append(&mut self, appended: Vec<Entry>) {
        let Some(first) = appended.first().map(|e| e.log_id.index) else {
            return;
        };
        self.truncate(first);
        if self
            .entries
            .back()
            .is_some_and(|e| e.log_id.index + 1 != first)
        {
            // Not the next: what lies between is only in storage.
            self.clear();
        }
        for e in appended {
            let size = entry_bytes(&e);
            if size > RECENT_BYTES_MAX {
                // Kept only in storage; so is all before it.
                self.clear();
                continue;
            }
            self.bytes += size;
            self.entries.push_back(e);
        }
        while self.entries.len() > RECENT_ENTRIES_MAX || self.bytes > RECENT_BYTES_MAX {
            let e = self.entries.pop_front().expect("an entry over the bound");
            self.bytes -= entry_bytes(&e);
        }
    }

    /// The kept entries with `from <= index < to`, if `from` is kept. The
    /// kept entries end with the log's last, so none past them exists.
    fn read(&self, from: u64, to: u64) -> Option<Vec<Entry>> {
        let first = self.first()?;
        let skip = usize::try_from(from.checked_sub(first)?).ok()?;
        if skip >= self.entries.len() {
            return None;
        }
        Some(
            self.entries
                .iter()
                .skip(skip)
                .take_while(|e| e.log_id.index < to)
                .cloned()
                .collect(),
        )
    }
}

/// About how many bytes `entry` holds (its payloads, for the bound).
fn entry_bytes(entry: &Entry) -> usize {
    match &entry.payload {
        super::EntryPayload::Normal(command) => command.approx_bytes(),
        _ => 256,
    }
}

impl LogStore {
    pub fn new(store: Arc<dyn RaftLogStore>, group: GroupId, node: u64) -> Self {
        Self {
            store,
            group,
            node,
            purge_applied_only: true,
            recent: Arc::default(),
            durable: DurableApplied::default(),
        }
    }

    /// Shares `durable` with the group's state machine.
    pub fn sharing_durable(mut self, durable: DurableApplied) -> Self {
        self.durable = durable;
        self
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
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
        // Replication and the state machine read what was just appended:
        // it is kept, or else the memtable answers. What is older than the
        // kept entries comes from storage, the rest from them. Storage is
        // read off the async threads: what the kept entries miss is old
        // (a follower catching up, a restart) or large (an entry of 4 MiB
        // and more is not kept), and decoding megabytes in place would
        // hold up every task queued behind it on that thread.
        let (kept, stored_to) = {
            let recent = self.recent();
            match recent.first() {
                Some(first) if first <= from => (recent.read(from, to), from),
                Some(first) if first < to => (recent.read(first, to), first),
                _ => (None, to),
            }
        };
        let mut entries: Vec<Entry> = if from < stored_to {
            let (store, group) = (self.store.clone(), self.group);
            blocking(move || {
                store
                    .read_log(group, from, stored_to, usize::MAX)?
                    .iter()
                    .map(|(_, bytes)| decode(bytes))
                    .collect()
            })
            .await
            .map_err(io_err)?
        } else {
            Vec::new()
        };
        entries.extend(kept.into_iter().flatten());
        Ok(entries)
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
        let entries: Vec<Entry> = entries.into_iter().collect();
        let own = entries
            .iter()
            .all(|e| e.log_id.leader_id.node_id == self.node);
        let encoded = entries
            .iter()
            .map(|e| Ok((e.log_id.index, encode(e)?)))
            .collect::<Result<Vec<_>, Error>>()
            .map_err(io_err)?;
        let (store, group) = (self.store.clone(), self.group);
        if own && bugs::on(Bug::LeaderCountsItselfUnsynced) {
            return match blocking(move || store.append_log_unsynced(group, &encoded)).await {
                Ok(()) => {
                    self.recent().append(entries);
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
        let written: crate::store::raft_log::AppendDone = Box::new(move |outcome| {
            let _ = tx.send(outcome);
        });
        let done: crate::store::raft_log::AppendDone =
            Box::new(move |outcome: Result<(), Error>| {
                callback.io_completed(outcome.map_err(io_err));
            });
        // A follower answers its leader only once the entries are synced,
        // so it may wait for the sync here (ADR 45); a leader must not: it
        // replicates the entries while they sync.
        if own {
            store.append_log_then(group, encoded, written, done);
        } else {
            store.append_log_then_may_wait(group, encoded, written, done);
        }
        let written = rx
            .await
            .unwrap_or_else(|_| Err(Error::Storage("the log writer stopped".into())));
        match written {
            Ok(()) => {
                self.recent().append(entries);
                Ok(())
            }
            Err(e) => {
                // What storage holds from here on is unknown.
                let first = entries.first().map_or(u64::MAX, |e| e.log_id.index);
                self.recent().truncate(first);
                Err(io_err(e))
            }
        }
    }

    async fn truncate_after(&mut self, last: Option<LogId>) -> Result<(), std::io::Error> {
        let from = last.map_or(0, |l| l.index + 1);
        self.recent().truncate(from);
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
        // crash could not apply them again. A snapshot's build flushed it
        // already, as a rule: a purge follows the snapshot that holds it.
        if !self.durable.covers(log_id.index) && !bugs::on(Bug::PurgeBeforePersist) {
            let store = self.store.clone();
            blocking(move || store.persist_applied())
                .await
                .map_err(io_err)?;
        }
        // Record the purge point first: a crash in between leaves entries
        // that are below it, which readers never ask for.
        self.put_value(LAST_PURGED, &log_id).await.map_err(io_err)?;
        self.recent().purge(log_id.index);
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

    fn entry(index: u64, term: u64, payload: &[u8]) -> Entry {
        Entry {
            log_id: crate::raft::log_id(term, 1, index),
            payload: crate::raft::EntryPayload::Normal(crate::raft::Command::Append {
                payloads: vec![bytes::Bytes::copy_from_slice(payload)],
                producer: None,
                time_ms: 0,
                cause: None,
                handler: None,
            }),
        }
    }

    async fn append(log: &mut LogStore, entries: Vec<Entry>) {
        log.append(entries, IOFlushed::noop()).await.unwrap();
    }

    /// What a log store that keeps nothing reads: storage's answer.
    async fn stored(store: &Arc<MemStore>, from: u64, to: u64) -> Vec<Entry> {
        let mut fresh = LogStore::new(store.clone(), GroupId(7), 1);
        fresh.try_get_log_entries(from..to).await.unwrap()
    }

    #[tokio::test]
    async fn kept_entries_answer_as_storage_would_through_appends_truncations_and_purges() {
        let store = Arc::new(MemStore::new());
        // No state machine here applies what the purge below removes.
        let mut log = LogStore::new(store.clone(), GroupId(7), 1).purging_as_asked();
        append(&mut log, (1..=5).map(|i| entry(i, 1, b"a")).collect()).await;
        append(&mut log, (6..=8).map(|i| entry(i, 1, b"b")).collect()).await;
        for (from, to) in [(1, 9), (3, 6), (6, 20), (8, 9), (9, 12), (0, 4)] {
            assert_eq!(
                log.try_get_log_entries(from..to).await.unwrap(),
                stored(&store, from, to).await,
                "{from}..{to}"
            );
        }
        // A new leader's entries replace a conflicting suffix.
        log.truncate_after(Some(crate::raft::log_id(1, 1, 5)))
            .await
            .unwrap();
        assert_eq!(log.try_get_log_entries(1..20).await.unwrap().len(), 5);
        append(&mut log, (6..=7).map(|i| entry(i, 2, b"c")).collect()).await;
        let read = log.try_get_log_entries(1..20).await.unwrap();
        assert_eq!(read, stored(&store, 1, 20).await);
        assert_eq!(read.len(), 7);
        assert_eq!(read[6], entry(7, 2, b"c"));
        // An append over a suffix without a truncation first.
        append(&mut log, vec![entry(7, 3, b"d")]).await;
        assert_eq!(
            log.recent().first(),
            Some(1),
            "what comes before stays kept"
        );
        assert_eq!(
            log.try_get_log_entries(1..20).await.unwrap(),
            stored(&store, 1, 20).await
        );
        log.purge(crate::raft::log_id(1, 1, 3)).await.unwrap();
        assert_eq!(
            log.try_get_log_entries(1..20).await.unwrap(),
            stored(&store, 1, 20).await
        );
        assert_eq!(log.try_get_log_entries(4..20).await.unwrap().len(), 4);
    }

    #[tokio::test]
    async fn what_was_just_appended_is_read_without_storage_and_older_entries_from_it() {
        let store = Arc::new(MemStore::new());
        let mut log = LogStore::new(store.clone(), GroupId(7), 1);
        append(&mut log, (1..=3).map(|i| entry(i, 1, b"x")).collect()).await;
        // Bytes under entry 2 that no log store could decode: a read that
        // goes to storage fails, one answered from memory does not.
        store
            .append_log(GroupId(7), &[(2, b"not an entry".to_vec())])
            .unwrap();
        let mut fresh = LogStore::new(store.clone(), GroupId(7), 1);
        assert!(fresh.try_get_log_entries(2..3).await.is_err());
        assert_eq!(
            log.try_get_log_entries(1..4).await.unwrap(),
            (1..=3).map(|i| entry(i, 1, b"x")).collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn the_kept_entries_are_bounded_and_the_rest_is_read_from_storage() {
        let store = Arc::new(MemStore::new());
        let mut log = LogStore::new(store.clone(), GroupId(7), 1);
        let count = RECENT_ENTRIES_MAX as u64 + 10;
        append(&mut log, (1..=count).map(|i| entry(i, 1, b"y")).collect()).await;
        assert_eq!(log.recent().entries.len(), RECENT_ENTRIES_MAX);
        assert_eq!(log.recent().first(), Some(11));
        let all = log.try_get_log_entries(1..count + 1).await.unwrap();
        assert_eq!(all, stored(&store, 1, count + 1).await);
        assert_eq!(all.len() as u64, count);
        // An entry over the bytes bound is not kept, nor anything before it.
        let big = vec![0u8; RECENT_BYTES_MAX + 1];
        append(&mut log, vec![entry(count + 1, 1, &big)]).await;
        assert!(log.recent().entries.is_empty());
        assert_eq!(log.recent().bytes, 0);
        append(&mut log, vec![entry(count + 2, 1, b"z")]).await;
        assert_eq!(log.recent().first(), Some(count + 2));
        let tail = log.try_get_log_entries(count..count + 3).await.unwrap();
        assert_eq!(tail, stored(&store, count, count + 3).await);
        assert_eq!(tail.len(), 3);
        let kept: usize = log.recent().entries.iter().map(entry_bytes).sum();
        assert_eq!(log.recent().bytes, kept);
    }
}
