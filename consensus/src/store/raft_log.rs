//! Durable Raft state per group: the log and a few small named values (the
//! vote, the committed and last purged log ids). Entries are opaque bytes;
//! this layer knows nothing of openraft, so the simulator's in-memory store
//! and RocksDB can both carry it and pass the same conformance suite.

use super::SnapshotFile;
use crate::error::Result;

/// A Raft group's number in this node's storage (one group per topic).
/// On the wire and on disk it is its number alone (`serde(transparent)`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct GroupId(pub u64);

/// Raft groups use ids from here up; local topics (numbered from 1 by a
/// counter) stay below, so the two never share a topic's keys and a node
/// never mistakes a group's topic for one of its local topics.
pub const GROUP_ID_MIN: u64 = 1 << 62;

/// The most entries one `read_log` returns, whatever the caller asks.
pub const READ_ENTRIES_MAX: usize = 10_000;

/// Told an outcome of an [`RaftLogStore::append_log_then`], perhaps on
/// another thread: once its entries read back, and once they are synced.
pub type AppendDone = Box<dyn FnOnce(Result<()>) + Send>;

/// Where Raft groups keep their logs. Shared between threads; every method
/// may do I/O and is called from blocking contexts.
pub trait RaftLogStore: Send + Sync + 'static {
    /// How much longer than usual a synced write takes now. A real disk
    /// simply takes that long inside its calls (zero); the simulator's slow
    /// disk names a delay, which [`super::wait_for_disk`] spends on the
    /// runtime's clock before the log's writes.
    fn sync_delay(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    /// Writes `entries` (index, bytes) of `group`, replacing any entry at the
    /// same index. Synced before it returns.
    fn append_log(&self, group: GroupId, entries: &[(u64, Vec<u8>)]) -> Result<()>;

    /// [`append_log`](Self::append_log) for a caller that must not block:
    /// `written` is told once the entries read back (before they are
    /// synced: a leader replicates them meanwhile), then `done` once they
    /// are synced; on a failure both are told it. Per group, appends are
    /// written and synced in the order they were handed over. A store may
    /// return at once and sync the appends of many groups together
    /// (RocksDB's does, on a writer thread of its own); by default the
    /// entries are written and synced in place, before this returns.
    fn append_log_then(
        &self,
        group: GroupId,
        entries: Vec<(u64, Vec<u8>)>,
        written: AppendDone,
        done: AppendDone,
    ) {
        let outcome = self.append_log(group, &entries);
        written(outcome.clone());
        done(outcome);
    }

    /// [`append_log_then`](Self::append_log_then) for a caller that would
    /// wait for the sync anyway (a follower answers its leader only once
    /// the entries are synced) and may be held while it is made. A store
    /// whose writer has nothing else to do then syncs in place before this
    /// returns, sparing the hand-over to the writer's thread and back; by
    /// default, as `append_log_then`.
    fn append_log_then_may_wait(
        &self,
        group: GroupId,
        entries: Vec<(u64, Vec<u8>)>,
        written: AppendDone,
        done: AppendDone,
    ) {
        self.append_log_then(group, entries, written, done)
    }

    /// [`append_log`](Self::append_log) without waiting for the disk: the
    /// entries are read back at once and are durable after the next synced
    /// call (a crash before it may lose them). Only the simulator's
    /// deliberate bug `LeaderCountsItselfUnsynced` counts such entries as
    /// flushed.
    fn append_log_unsynced(&self, group: GroupId, entries: &[(u64, Vec<u8>)]) -> Result<()>;

    /// Entries of `group` with `from <= index < to`, in order, at most
    /// `limit` (and at most [`READ_ENTRIES_MAX`]).
    fn read_log(
        &self,
        group: GroupId,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>>;

    /// The entry with the highest index, if any.
    fn last_log(&self, group: GroupId) -> Result<Option<(u64, Vec<u8>)>>;

    /// Removes the entries with `index >= from` (a conflicting suffix).
    /// Synced before it returns.
    fn truncate_log(&self, group: GroupId, from: u64) -> Result<()>;

    /// Removes the entries with `index <= upto` (compacted into a snapshot).
    /// Need not be synced: purging again after a crash is harmless. Call
    /// [`persist_applied`](Self::persist_applied) first.
    fn purge_log(&self, group: GroupId, upto: u64) -> Result<()>;

    /// Makes every [`Store::write_applied`](super::Store::write_applied) so
    /// far durable. Slow (a RocksDB flush): for rare moments such as a log
    /// purge.
    fn persist_applied(&self) -> Result<()> {
        Ok(())
    }

    /// Stores a small named value of `group` (at most a few KiB). Synced.
    fn put_value(&self, group: GroupId, name: &str, value: &[u8]) -> Result<()>;

    /// [`put_value`](Self::put_value) without waiting for the disk: read
    /// back at once, durable after the next synced call (a crash before it
    /// may lose it, and leave the value before).
    fn put_value_unsynced(&self, group: GroupId, name: &str, value: &[u8]) -> Result<()>;

    /// Reads a named value of `group`.
    fn value(&self, group: GroupId, name: &str) -> Result<Option<Vec<u8>>>;

    /// Removes everything `group` stored: log, values and kept snapshot.
    /// Synced.
    fn delete_group(&self, group: GroupId) -> Result<()>;

    /// A new, empty snapshot file, nobody's yet (it goes away unless
    /// [`snapshot_keep`](Self::snapshot_keep) keeps it).
    fn snapshot_create(&self) -> Result<SnapshotFile>;

    /// Makes `file`, as written, `group`'s one kept snapshot, in place of
    /// the one it had (whose readers still read the old one). Synced.
    /// `file` must come from this store's
    /// [`snapshot_create`](Self::snapshot_create).
    fn snapshot_keep(&self, group: GroupId, file: SnapshotFile) -> Result<()>;

    /// `group`'s kept snapshot, to read from its start, if it has one.
    fn snapshot_open(&self, group: GroupId) -> Result<Option<SnapshotFile>>;

    /// Every group that holds at least one named value, in order: the groups
    /// a node restarts with (a group stores a value as soon as it starts).
    fn groups(&self) -> Result<Vec<GroupId>>;
}
