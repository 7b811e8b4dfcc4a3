//! A simulated disk: woof's [`Store`] and [`RaftLogStore`] in memory, with a
//! crash model.
//!
//! RocksDB applies every trait call as one atomic batch. All but one kind go
//! through one write-ahead log, so a crash keeps every synced call and a
//! prefix of the unsynced ones issued after the last sync (never a later
//! one without an earlier one). What a state machine applied
//! (`write_applied`) skips that log: it is durable only once the memtables
//! are flushed, which makes every call before it durable too. `SimStore`
//! keeps what its process sees (`current`) apart from what is on the
//! platter (`durable`):
//! - synced calls (`Store::write`, `append_log`, `truncate_log`,
//!   `put_value`, `delete_group`, `snapshot_keep`) are durable when they
//!   return, and make every logged call before them durable too;
//! - `append_log_then` writes at once, unsynced, and is told `written`;
//!   the disk's syncer syncs later, in order, after the disk's delay
//!   (`slow_until`), and tells `done`: as RocksDB's log writer, so a
//!   leader's own entries may still be unsynced when its followers have
//!   theirs;
//! - `append_log_then_may_wait` (a follower's append) is synced in place,
//!   before it returns, while nothing waits for the syncer and the disk is
//!   not slow (ADR 45); else as `append_log_then`;
//! - logged unsynced calls (`write_unsynced`, `trim`, `purge_log`,
//!   `append_log_unsynced`, `put_value_unsynced`) wait for the next synced
//!   one;
//! - applied calls (`write_applied`) wait for a flush: the next
//!   `persist_applied`, or one the disk makes on its own after
//!   [`FLUSH_AFTER_CALLS`] calls;
//! - [`SimStore::crash`] keeps what the last flush held, then the calls
//!   since: all of them up to a random point (a flush the disk may have
//!   made then), and after it the logged ones up to the last sync and a
//!   random prefix of those after it. It poisons the store: every later
//!   call is `Err(Storage)`, so the dead incarnation's leftover tasks can
//!   do nothing;
//! - [`SimStore::reopen`] is the restarted process's fresh view of the
//!   durable state;
//! - [`SimStore::tear_next_sync`] crashes during the next synced call: it
//!   survives whole or not at all (as a prefix of the log), and its caller
//!   never sees `Ok`;
//! - [`SimStore::fail_next_write`] makes the next write fail with nothing
//!   applied (openraft then stops the group on that node: a storage error
//!   is fatal to it).

use std::io::Cursor;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use woof_consensus::Error;
use woof_consensus::raft::state_machine::{APPLIED, applied_voters};
use woof_consensus::store::{
    AppendDone, Fixed, GroupId, MemStore, Op, RaftLogStore, SnapshotFile, Store, WriteBatch,
};
use woof_consensus::topic::{Element, ProducerWindow, TopicId, TopicMeta};

use crate::rng::SimRng;

type Result<T> = std::result::Result<T, Error>;

/// One mutating call, as the disk's log would hold it.
#[derive(Debug, Clone)]
enum DiskOp {
    Write(WriteBatch),
    Unsynced(WriteBatch),
    /// What a state machine applied: off the write-ahead log.
    Applied(WriteBatch),
    Trim(TopicId, u64),
    AppendLog(GroupId, Vec<(u64, Vec<u8>)>),
    AppendLogUnsynced(GroupId, Vec<(u64, Vec<u8>)>),
    TruncateLog(GroupId, u64),
    PurgeLog(GroupId, u64),
    PutValue(GroupId, String, Vec<u8>),
    PutValueUnsynced(GroupId, String, Vec<u8>),
    DeleteGroup(GroupId),
    /// A group's snapshot made its kept one: like a file synced and
    /// renamed into place, durable when the call returns.
    KeepSnapshot(GroupId, Vec<u8>),
    /// The syncer's sync of the log: changes nothing, makes every logged
    /// call before it durable.
    Sync,
}

impl DiskOp {
    fn synced(&self) -> bool {
        !matches!(
            self,
            DiskOp::Unsynced(_)
                | DiskOp::Applied(_)
                | DiskOp::Trim(..)
                | DiskOp::PurgeLog(..)
                | DiskOp::AppendLogUnsynced(..)
                | DiskOp::PutValueUnsynced(..)
        )
    }

    /// Whether the write-ahead log holds it.
    fn logged(&self) -> bool {
        !matches!(self, DiskOp::Applied(_))
    }

    fn apply(&self, to: &MemStore) -> Result<()> {
        match self {
            DiskOp::Write(b) | DiskOp::Unsynced(b) | DiskOp::Applied(b) => to.write(b),
            DiskOp::Trim(topic, below) => to.trim(*topic, *below),
            DiskOp::AppendLog(g, entries) | DiskOp::AppendLogUnsynced(g, entries) => {
                to.append_log(*g, entries)
            }
            DiskOp::TruncateLog(g, from) => to.truncate_log(*g, *from),
            DiskOp::PurgeLog(g, upto) => to.purge_log(*g, *upto),
            DiskOp::PutValue(g, name, value) | DiskOp::PutValueUnsynced(g, name, value) => {
                to.put_value(*g, name, value)
            }
            DiskOp::DeleteGroup(g) => to.delete_group(*g),
            DiskOp::KeepSnapshot(g, bytes) => {
                to.snapshot_keep(*g, SnapshotFile::Memory(Cursor::new(bytes.clone())))
            }
            DiskOp::Sync => Ok(()),
        }
    }
}

/// What a crash kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crash {
    /// Calls since the last sync when the disk went down.
    pub pending: usize,
    /// How many of them (the first ones) survived, as far as they are
    /// logged (an applied one among them only if a flush kept it).
    pub kept: usize,
    /// Calls since the last flush, and how many of them (the first ones)
    /// a flush kept whole.
    pub since_flush: usize,
    pub flushed: usize,
    /// The crash happened during a synced call (the last of `pending`).
    pub torn: bool,
}

/// After this many calls since the last flush, the disk flushes on its own
/// (as RocksDB does when a memtable fills up).
pub const FLUSH_AFTER_CALLS: usize = 4096;

#[derive(Default)]
struct Disk {
    current: MemStore,
    /// What the last flush held, plus the logged calls since, up to the
    /// last sync: what a crash keeps at the least.
    durable: MemStore,
    /// What the last flush held.
    flushed: MemStore,
    /// Every call since the last flush, in order.
    since_flush: Vec<DiskOp>,
    /// How many of `since_flush` the last sync covers.
    synced: usize,
    poisoned: bool,
    fail_next_write: bool,
    /// Writes failed on purpose so far.
    failed_writes: u64,
    /// Crash during the next synced call, drawing from this seed.
    tear_next_sync: Option<u64>,
    /// Set by a crash; read by whoever reaps the node.
    crashed: Option<Crash>,
    /// Store every element's payload reversed (a deliberate bug).
    corrupt: bool,
}

impl Disk {
    fn crash(&mut self, rng: &mut SimRng, torn: bool) -> Crash {
        let calls = std::mem::take(&mut self.since_flush);
        let (n, synced) = (calls.len(), self.synced);
        let logged = rng.range(synced as u64, n as u64 + 1) as usize;
        let flushed = rng.range(0, n as u64 + 1) as usize;
        let kept = self.flushed.clone();
        for (i, op) in calls.iter().enumerate() {
            if i < flushed || (op.logged() && i < logged) {
                op.apply(&kept).expect("an in-memory store never fails");
            }
        }
        self.durable = kept;
        self.poisoned = true;
        self.tear_next_sync = None;
        let crash = Crash {
            pending: n - synced,
            kept: logged.max(flushed) - synced,
            since_flush: n,
            flushed,
            torn,
        };
        self.crashed = Some(crash);
        crash
    }

    /// Everything so far is on the platter.
    fn flush(&mut self) {
        self.flushed = self.current.clone();
        self.durable = self.current.clone();
        self.since_flush.clear();
        self.synced = 0;
    }
}

/// Told of each membership a group applies on a disk: the group, the
/// membership's log index and its voters (see [`SimStore::watch`]).
pub type Watcher = Box<dyn Fn(GroupId, u64, Vec<String>) + Send + Sync>;

/// A node's disk. See the module documentation.
#[derive(Default)]
pub struct SimStore {
    disk: Arc<Mutex<Disk>>,
    /// The way to the disk's syncer (started at the first handed-over
    /// append; see `append_log_then`).
    syncer: Mutex<Option<tokio::sync::mpsc::Sender<Unsynced>>>,
    /// Appends handed to the syncer and not yet told they are synced.
    handed: Arc<AtomicUsize>,
    /// A slow spell: until when, and the numbers that draw each delay.
    slow: Mutex<Option<(tokio::time::Instant, SimRng)>>,
    watcher: Mutex<Option<Watcher>>,
}

/// How much longer a synced write of a slow disk takes (range, ms).
const SLOW_SYNC_MS: (u64, u64) = (20, 400);

/// An append written but not yet synced: how long its sync takes, and who
/// to tell then.
type Unsynced = (std::time::Duration, AppendDone);

/// Appends waiting for the syncer, at most; past it an append is synced in
/// place.
const UNSYNCED_MAX: usize = 1024;

/// The disk's syncer: syncs what was handed over, in order, all that waits
/// at once (after the longest delay among it), as RocksDB's log writer.
async fn sync_in_order(
    disk: Arc<Mutex<Disk>>,
    handed: Arc<AtomicUsize>,
    mut waiting: tokio::sync::mpsc::Receiver<Unsynced>,
) {
    let mut batch = Vec::new();
    while let Some((mut delay, done)) = waiting.recv().await {
        batch.push(done);
        while let Ok((d, done)) = waiting.try_recv() {
            delay = delay.max(d);
            batch.push(done);
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let outcome = mutate(&disk, DiskOp::Sync);
        let told = batch.len();
        for done in batch.drain(..) {
            done(outcome.clone());
        }
        handed.fetch_sub(told, Ordering::AcqRel);
    }
}

/// Applies `op` to `disk` as the module documentation says.
fn mutate(disk: &Mutex<Disk>, op: DiskOp) -> Result<()> {
    let mut d = disk.lock().unwrap_or_else(|e| e.into_inner());
    if d.poisoned {
        return Err(poisoned());
    }
    let op = if d.corrupt { corrupted(op) } else { op };
    if d.fail_next_write && !matches!(op, DiskOp::Sync) {
        d.fail_next_write = false;
        d.failed_writes += 1;
        return Err(Error::Storage("simulated write failure".into()));
    }
    if op.synced()
        && let Some(seed) = d.tear_next_sync
    {
        d.since_flush.push(op);
        d.crash(&mut SimRng::new(seed), true);
        return Err(poisoned());
    }
    op.apply(&d.current)?;
    let synced = op.synced();
    d.since_flush.push(op);
    if synced {
        let d = &mut *d;
        for p in &d.since_flush[d.synced..] {
            if p.logged() {
                p.apply(&d.durable)?;
            }
        }
        d.synced = d.since_flush.len();
    }
    if d.since_flush.len() >= FLUSH_AFTER_CALLS {
        d.flush();
    }
    Ok(())
}

/// `op` with its elements' payloads reversed.
fn corrupted(op: DiskOp) -> DiskOp {
    let flip = |b: &WriteBatch| {
        let mut out = WriteBatch::default();
        for op in b.ops() {
            out.push(match op {
                Op::PutElement(topic, e) => {
                    let mut payload = e.payload.to_vec();
                    payload.reverse();
                    Op::PutElement(
                        *topic,
                        Element {
                            payload: payload.into(),
                            ..e.clone()
                        },
                    )
                }
                other => other.clone(),
            });
        }
        out
    };
    match op {
        DiskOp::Write(b) => DiskOp::Write(flip(&b)),
        DiskOp::Unsynced(b) => DiskOp::Unsynced(flip(&b)),
        DiskOp::Applied(b) => DiskOp::Applied(flip(&b)),
        other => other,
    }
}

fn poisoned() -> Error {
    Error::Storage("the simulated disk crashed".into())
}

impl SimStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the disk is in a slow spell now (drawing no delay).
    fn slow_now(&self) -> bool {
        let slow = self.slow.lock().unwrap_or_else(|e| e.into_inner());
        slow.as_ref()
            .is_some_and(|(until, _)| tokio::time::Instant::now() < *until)
    }

    /// Calls `watcher` with each membership a group applies on this disk
    /// from now on (a state machine writes what it applied with each
    /// batch of entries it applies, unsynced).
    pub fn watch(&self, watcher: Watcher) {
        *self.watcher.lock().unwrap_or_else(|e| e.into_inner()) = Some(watcher);
    }

    fn tell_watcher(&self, batch: &WriteBatch) {
        let watcher = self.watcher.lock().unwrap_or_else(|e| e.into_inner());
        let Some(watcher) = watcher.as_ref() else {
            return;
        };
        for op in batch.ops() {
            if let Op::PutRaftValue(group, name, value) = op
                && name == APPLIED
                && let Ok((at, voters)) = applied_voters(value)
            {
                watcher(*group, at, voters);
            }
        }
    }

    fn disk(&self) -> MutexGuard<'_, Disk> {
        self.disk.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs a read against what the process sees.
    fn read<T>(&self, f: impl FnOnce(&MemStore) -> Result<T>) -> Result<T> {
        let d = self.disk();
        if d.poisoned {
            return Err(poisoned());
        }
        f(&d.current)
    }

    fn mutate(&self, op: DiskOp) -> Result<()> {
        mutate(&self.disk, op)
    }

    /// Power loss: keeps what the module documentation says; every later
    /// call fails.
    pub fn crash(&self, rng: &mut SimRng) -> Crash {
        let mut d = self.disk();
        if let Some(c) = d.crashed {
            return c;
        }
        d.crash(rng, false)
    }

    /// Arms a crash in the middle of the next synced call (`seed` decides
    /// whether that call survives).
    pub fn tear_next_sync(&self, seed: u64) {
        self.disk().tear_next_sync = Some(seed);
    }

    /// Takes back an armed [`tear_next_sync`](Self::tear_next_sync) that
    /// has not gone off.
    pub fn disarm(&self) {
        self.disk().tear_next_sync = None;
    }

    /// Makes the next write (synced or not) fail, with nothing applied.
    pub fn fail_next_write(&self) {
        self.disk().fail_next_write = true;
    }

    /// From now on, stores every element's payload reversed: a replica
    /// that disagrees with the others (to show the agreement checker bites).
    pub fn corrupt_elements(&self) {
        self.disk().corrupt = true;
    }

    /// Makes every synced log write take 20 to 400 ms longer until `until`
    /// (`seed` draws the delays).
    pub fn slow_until(&self, until: tokio::time::Instant, seed: u64) {
        *self.slow.lock().unwrap_or_else(|e| e.into_inner()) = Some((until, SimRng::new(seed)));
    }

    /// Takes back an armed [`fail_next_write`](Self::fail_next_write).
    pub fn cancel_failure(&self) {
        self.disk().fail_next_write = false;
    }

    /// How many writes [`fail_next_write`](Self::fail_next_write) failed.
    pub fn failed_writes(&self) -> u64 {
        self.disk().failed_writes
    }

    /// The crash this disk went through, if any.
    pub fn crashed(&self) -> Option<Crash> {
        self.disk().crashed
    }

    /// A restarted process's view: the durable state, nothing pending. Call
    /// after [`crash`](Self::crash); the crashed store stays poisoned.
    pub fn reopen(&self) -> SimStore {
        let d = self.disk();
        let durable = d.durable.clone();
        SimStore {
            disk: Arc::new(Mutex::new(Disk {
                current: durable.clone(),
                flushed: durable.clone(),
                durable,
                ..Disk::default()
            })),
            syncer: Mutex::default(),
            handed: Arc::default(),
            slow: Mutex::default(),
            watcher: Mutex::default(),
        }
    }

    /// What a crash now would keep at the least (the durable state), for
    /// checkers; works on a poisoned store too.
    pub fn durable(&self) -> MemStore {
        self.disk().durable.clone()
    }
}

impl Store for SimStore {
    fn write(&self, batch: &WriteBatch) -> Result<()> {
        self.mutate(DiskOp::Write(batch.clone()))
    }

    fn write_unsynced(&self, batch: &WriteBatch) -> Result<()> {
        self.mutate(DiskOp::Unsynced(batch.clone()))?;
        self.tell_watcher(batch);
        Ok(())
    }

    fn write_applied(&self, batch: &WriteBatch) -> Result<()> {
        self.mutate(DiskOp::Applied(batch.clone()))?;
        self.tell_watcher(batch);
        Ok(())
    }

    fn topics(&self) -> Result<Vec<TopicMeta>> {
        self.read(|s| s.topics())
    }

    fn topic(&self, id: TopicId) -> Result<Option<TopicMeta>> {
        self.read(|s| s.topic(id))
    }

    fn next_topic_id(&self) -> Result<u64> {
        self.read(|s| s.next_topic_id())
    }

    fn last_seq(&self, topic: TopicId) -> Result<u64> {
        self.read(|s| s.last_seq(topic))
    }

    fn get(&self, topic: TopicId, seq: u64) -> Result<Option<Element>> {
        self.read(|s| s.get(topic, seq))
    }

    fn scan(
        &self,
        topic: TopicId,
        from: u64,
        limit: usize,
        bytes_max: usize,
    ) -> Result<Vec<Element>> {
        self.read(|s| s.scan(topic, from, limit, bytes_max))
    }

    fn producer(&self, topic: TopicId, id: &str) -> Result<Option<ProducerWindow>> {
        self.read(|s| s.producer(topic, id))
    }

    fn producers(&self, topic: TopicId, limit: usize) -> Result<Vec<(String, ProducerWindow)>> {
        self.read(|s| s.producers(topic, limit))
    }

    fn effects(
        &self,
        topic: TopicId,
        cause_topic: &str,
        handler: &str,
        cause_seq: u64,
        limit: usize,
    ) -> Result<Vec<Element>> {
        self.read(|s| s.effects(topic, cause_topic, handler, cause_seq, limit))
    }

    fn trim(&self, topic: TopicId, below_seq: u64) -> Result<()> {
        self.mutate(DiskOp::Trim(topic, below_seq))
    }

    /// A copy of what the process sees now, read with the disk unlocked.
    fn read_fixed(&self, f: &mut dyn FnMut(&dyn Fixed) -> Result<()>) -> Result<()> {
        let copy = self.read(|s| Ok(s.topics_copy()))?;
        f(&copy)
    }
}

impl RaftLogStore for SimStore {
    fn sync_delay(&self) -> std::time::Duration {
        let mut slow = self.slow.lock().unwrap_or_else(|e| e.into_inner());
        match slow.as_mut() {
            Some((until, rng)) if tokio::time::Instant::now() < *until => {
                std::time::Duration::from_millis(rng.range(SLOW_SYNC_MS.0, SLOW_SYNC_MS.1))
            }
            Some(_) => {
                *slow = None;
                std::time::Duration::ZERO
            }
            None => std::time::Duration::ZERO,
        }
    }

    fn append_log(&self, group: GroupId, entries: &[(u64, Vec<u8>)]) -> Result<()> {
        self.mutate(DiskOp::AppendLog(group, entries.to_vec()))
    }

    fn append_log_unsynced(&self, group: GroupId, entries: &[(u64, Vec<u8>)]) -> Result<()> {
        self.mutate(DiskOp::AppendLogUnsynced(group, entries.to_vec()))
    }

    fn append_log_then(
        &self,
        group: GroupId,
        entries: Vec<(u64, Vec<u8>)>,
        written: AppendDone,
        done: AppendDone,
    ) {
        let outcome = self.mutate(DiskOp::AppendLogUnsynced(group, entries));
        written(outcome.clone());
        if outcome.is_err() {
            return done(outcome);
        }
        // Outside a runtime (a test's threads) there is no syncer to run.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return done(self.mutate(DiskOp::Sync));
        };
        let delay = self.sync_delay();
        let mut syncer = self.syncer.lock().unwrap_or_else(|e| e.into_inner());
        let queue = syncer.get_or_insert_with(|| {
            let (queue, waiting) = tokio::sync::mpsc::channel(UNSYNCED_MAX);
            runtime.spawn(sync_in_order(
                self.disk.clone(),
                self.handed.clone(),
                waiting,
            ));
            queue
        });
        self.handed.fetch_add(1, Ordering::AcqRel);
        if let Err(e) = queue.try_send((delay, done)) {
            self.handed.fetch_sub(1, Ordering::AcqRel);
            let (_, done) = e.into_inner();
            done(self.mutate(DiskOp::Sync));
        }
    }

    /// As RocksDB's store (ADR 45): while nothing waits for the syncer, the
    /// caller's append is synced in place, before this returns. Not while
    /// the disk is slow: a sync in place would hold the caller for the
    /// delay, which simulated time cannot do to a call that does not await.
    fn append_log_then_may_wait(
        &self,
        group: GroupId,
        entries: Vec<(u64, Vec<u8>)>,
        written: AppendDone,
        done: AppendDone,
    ) {
        if self.handed.load(Ordering::Acquire) > 0 || self.slow_now() {
            return self.append_log_then(group, entries, written, done);
        }
        let outcome = self.mutate(DiskOp::AppendLogUnsynced(group, entries));
        written(outcome.clone());
        done(outcome.and_then(|()| self.mutate(DiskOp::Sync)));
    }

    fn read_log(
        &self,
        group: GroupId,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>> {
        self.read(|s| s.read_log(group, from, to, limit))
    }

    fn last_log(&self, group: GroupId) -> Result<Option<(u64, Vec<u8>)>> {
        self.read(|s| s.last_log(group))
    }

    fn truncate_log(&self, group: GroupId, from: u64) -> Result<()> {
        self.mutate(DiskOp::TruncateLog(group, from))
    }

    fn purge_log(&self, group: GroupId, upto: u64) -> Result<()> {
        self.mutate(DiskOp::PurgeLog(group, upto))
    }

    fn persist_applied(&self) -> Result<()> {
        let mut d = self.disk();
        if d.poisoned {
            return Err(poisoned());
        }
        d.flush();
        Ok(())
    }

    fn put_value(&self, group: GroupId, name: &str, value: &[u8]) -> Result<()> {
        self.mutate(DiskOp::PutValue(group, name.to_string(), value.to_vec()))
    }

    fn put_value_unsynced(&self, group: GroupId, name: &str, value: &[u8]) -> Result<()> {
        self.mutate(DiskOp::PutValueUnsynced(
            group,
            name.to_string(),
            value.to_vec(),
        ))
    }

    fn value(&self, group: GroupId, name: &str) -> Result<Option<Vec<u8>>> {
        self.read(|s| s.value(group, name))
    }

    fn delete_group(&self, group: GroupId) -> Result<()> {
        self.mutate(DiskOp::DeleteGroup(group))
    }

    fn groups(&self) -> Result<Vec<GroupId>> {
        self.read(|s| s.groups())
    }

    fn snapshot_create(&self) -> Result<SnapshotFile> {
        self.read(|s| s.snapshot_create())
    }

    fn snapshot_keep(&self, group: GroupId, file: SnapshotFile) -> Result<()> {
        self.mutate(DiskOp::KeepSnapshot(group, file.into_bytes()?))
    }

    fn snapshot_open(&self, group: GroupId) -> Result<Option<SnapshotFile>> {
        self.read(|s| s.snapshot_open(group))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use woof_consensus::store::conformance;

    #[test]
    fn conformance() {
        conformance::run_all(SimStore::new);
        conformance::run_raft_log(SimStore::new);
    }
}
