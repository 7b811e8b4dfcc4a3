//! Storage for topics and their Raft groups: traits that know nothing of any
//! engine ([`Store`] for topic data, [`RaftLogStore`] for Raft logs), a
//! RocksDB implementation for nodes, an in-memory one for tests and the
//! simulator, and the conformance suite both must pass. A group's snapshot
//! is kept beside its log ([`SnapshotFile`]): a file next to the RocksDB
//! files, a buffer in the in-memory store.

pub mod conformance;
mod memory;
pub mod raft_log;
mod rocks;
mod snapshot_file;

pub use memory::{MemStore, TopicsCopy};
pub use raft_log::{AppendDone, GROUP_ID_MIN, GroupId, RaftLogStore};
pub use rocks::RocksStore;
pub use snapshot_file::{Paced, PartPath, SnapshotFile};

use crate::error::Result;
use crate::topic::{Element, ProducerWindow, TopicId, TopicMeta};

/// One write in a [`WriteBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Creates or replaces a topic's metadata.
    PutTopic(TopicMeta),
    /// Removes a topic's metadata, elements and producer windows.
    DeleteTopic(TopicId),
    /// Records the next topic id to hand out.
    PutNextTopicId(u64),
    PutElement(TopicId, Element),
    PutProducer(TopicId, String, ProducerWindow),
    /// A Raft group's named value, written atomically with the state it
    /// describes (the state machine's last applied log id).
    PutRaftValue(GroupId, String, Vec<u8>),
}

/// Writes applied together: all or none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<Op>,
}

impl WriteBatch {
    pub fn push(&mut self, op: Op) {
        self.ops.push(op);
    }

    pub fn put_element(&mut self, topic: TopicId, element: Element) {
        self.ops.push(Op::PutElement(topic, element));
    }

    pub fn put_producer(&mut self, topic: TopicId, id: &str, window: &ProducerWindow) {
        self.ops
            .push(Op::PutProducer(topic, id.to_string(), window.clone()));
    }

    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// What a node keeps on disk. Implementations are shared between threads and
/// called from blocking contexts: every method may do I/O.
pub trait Store: Send + Sync + 'static {
    /// Applies `batch` atomically. When it returns `Ok`, the batch is synced:
    /// it survives a crash of the process or the machine.
    fn write(&self, batch: &WriteBatch) -> Result<()>;

    /// Applies `batch` atomically without waiting for the disk: a crash may
    /// lose it (whole), until the next synced write, which makes it durable
    /// too. For state that can be rebuilt, such as a Raft state machine's
    /// (its synced log replays it).
    fn write_unsynced(&self, batch: &WriteBatch) -> Result<()> {
        self.write(batch)
    }

    /// Applies what a Raft state machine applied (`batch`, atomically),
    /// and keeps it off the write-ahead log: the log entries it came from
    /// are there already. A crash may lose any of these writes since the
    /// last `persist_applied` (it keeps a prefix of
    /// them, perhaps none), while the synced writes issued after them
    /// survive; openraft then applies those entries again. So before a
    /// group's log is purged, [`RaftLogStore::persist_applied`] must have
    /// returned.
    fn write_applied(&self, batch: &WriteBatch) -> Result<()> {
        self.write_unsynced(batch)
    }

    /// Every topic's metadata, in no particular order.
    fn topics(&self) -> Result<Vec<TopicMeta>>;

    /// One topic's metadata.
    fn topic(&self, id: TopicId) -> Result<Option<TopicMeta>>;

    /// The next topic id to hand out (1 on a new store).
    fn next_topic_id(&self) -> Result<u64>;

    /// The highest sequence number stored for `topic`, 0 if none.
    fn last_seq(&self, topic: TopicId) -> Result<u64>;

    /// One element, if stored.
    fn get(&self, topic: TopicId, seq: u64) -> Result<Option<Element>>;

    /// Stored elements from `from` upwards, in order, stopping after `limit`
    /// elements or once their payloads pass `bytes_max` (at least one element
    /// is returned if any is stored at or after `from`).
    fn scan(
        &self,
        topic: TopicId,
        from: u64,
        limit: usize,
        bytes_max: usize,
    ) -> Result<Vec<Element>>;

    /// A producer's window, if the producer ever appended to `topic`.
    fn producer(&self, topic: TopicId, id: &str) -> Result<Option<ProducerWindow>>;

    /// Every producer window of `topic` (for snapshots), at most `limit`.
    fn producers(&self, topic: TopicId, limit: usize) -> Result<Vec<(String, ProducerWindow)>>;

    /// Up to `limit` elements of `topic` that handler `handler` of topic
    /// `cause_topic` appended when it ran on element `cause_seq`, in order:
    /// the effect index of [`Element::cause`].
    fn effects(
        &self,
        topic: TopicId,
        cause_topic: &str,
        handler: &str,
        cause_seq: u64,
        limit: usize,
    ) -> Result<Vec<Element>>;

    /// Removes `topic`'s elements below `below_seq` (and their effect
    /// index entries). Need not be synced: a trim lost in a crash is simply
    /// done again.
    fn trim(&self, topic: TopicId, below_seq: u64) -> Result<()>;

    /// Calls `f` with the store as it is now: what `f` reads through its
    /// [`Fixed`] does not change with writes made meanwhile (a snapshot is
    /// copied out of it while its group goes on applying).
    fn read_fixed(&self, f: &mut dyn FnMut(&dyn Fixed) -> Result<()>) -> Result<()>;
}

/// A store's contents as of one moment (see [`Store::read_fixed`]): what a
/// snapshot of a topic reads.
pub trait Fixed {
    /// As [`Store::scan`].
    fn scan(
        &self,
        topic: TopicId,
        from: u64,
        limit: usize,
        bytes_max: usize,
    ) -> Result<Vec<Element>>;

    /// As [`Store::producers`].
    fn producers(&self, topic: TopicId, limit: usize) -> Result<Vec<(String, ProducerWindow)>>;
}

/// Whether `e` was appended by `handler` of `cause_topic` running on its
/// element `cause_seq` (what an effect index entry claims, checked).
pub(crate) fn caused_by(e: &Element, cause_topic: &str, handler: &str, cause_seq: u64) -> bool {
    e.cause
        .as_ref()
        .is_some_and(|c| c.topic == cause_topic && c.handler == handler && c.seq == cause_seq)
}

thread_local! {
    static INLINE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Makes [`blocking`] storage work started on this thread run in place
/// (`true`) instead of on tokio's blocking pool: the simulator runs every
/// node on one thread, and work finishing on other threads in an order of
/// the OS's choosing would make its runs unrepeatable.
pub fn run_storage_inline(on: bool) {
    INLINE.with(|i| i.set(on));
}

/// A store that holds both topic data and Raft logs, as one node's does:
/// what a group runs on.
pub trait GroupStore: Store + RaftLogStore {}

impl<T: Store + RaftLogStore> GroupStore for T {}

/// Waits out `store`'s [`RaftLogStore::sync_delay`] (nothing for a real store).
pub async fn wait_for_disk(store: &dyn RaftLogStore) {
    let delay = store.sync_delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

/// Runs storage work (which may block on I/O) off the async threads, or in
/// place where [`run_storage_inline`] asked for it.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    if storage_inline() {
        return f();
    }
    tokio::task::spawn_blocking(f).await.map_err(task_failed)?
}

/// Starts storage work as [`blocking`] does, and returns at once: the work
/// goes on whether or not [`Started::finish`] is awaited. Where storage runs
/// in place, it is done before this returns.
pub fn start_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Started<T> {
    if storage_inline() {
        return Started::Done(f());
    }
    Started::Running(tokio::task::spawn_blocking(f))
}

/// Whether storage work runs in place on this thread (see
/// [`run_storage_inline`]).
pub fn storage_inline() -> bool {
    INLINE.with(std::cell::Cell::get)
}

/// Storage work begun by [`start_blocking`], or left for later.
pub enum Started<T> {
    Done(Result<T>),
    Running(tokio::task::JoinHandle<Result<T>>),
    /// Work that runs (in place) when its result is awaited: where storage
    /// runs in place, what need not happen at once is left for later, so
    /// that the simulator interleaves it with what its node does meanwhile.
    Later(Box<dyn FnOnce() -> Result<T> + Send + Sync>),
}

impl<T> Started<T> {
    /// Waits for the work's result.
    pub async fn finish(self) -> Result<T> {
        match self {
            Started::Done(result) => result,
            Started::Running(work) => work.await.map_err(task_failed)?,
            Started::Later(work) => work(),
        }
    }
}

fn task_failed(e: tokio::task::JoinError) -> crate::error::Error {
    crate::error::Error::Storage(format!("storage task failed: {e}"))
}

/// Runs storage work that does not wait on the disk in the common case
/// (reads the memtable or block cache answers, unsynced writes) where it is:
/// handing it to the blocking pool and back costs more than the work.
pub(crate) fn quick<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    f()
}

/// The most bytes of storage work that [`quick_unless_large`] does in
/// place, as a small log append is (ADR 38).
pub(crate) const QUICK_BYTES_MAX: usize = 64 << 10;

/// Storage work on `bytes` of data: in place ([`quick`]) when small, off
/// the async threads ([`blocking`]) when larger: copying megabytes into a
/// memtable takes milliseconds, which would hold up every task queued
/// behind it on that thread (single appends beside a flood of 8 MiB
/// batches).
pub(crate) async fn quick_unless_large<T: Send + 'static>(
    bytes: usize,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    if bytes <= QUICK_BYTES_MAX {
        quick(f)
    } else {
        blocking(f).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn small_work_runs_in_place_and_large_work_off_the_async_threads() {
        let here = std::thread::current().id();
        let on = |bytes| quick_unless_large(bytes, || Ok(std::thread::current().id()));
        assert_eq!(on(QUICK_BYTES_MAX).await.unwrap(), here);
        assert_ne!(on(QUICK_BYTES_MAX + 1).await.unwrap(), here);
    }
}
