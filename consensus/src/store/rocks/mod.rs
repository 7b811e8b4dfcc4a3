//! The RocksDB [`Store`]: one database per node, one column family per kind of
//! record, keys big-endian so that RocksDB's byte order is numeric order.
//!
//! | column family | key | value |
//! |---|---|---|
//! | `topics` | topic id | `TopicMeta` |
//! | `elements` | topic id, seq | an element (`codec::element`) |
//! | `producers` | topic id, producer id | `codec::window` |
//! | `effects` | topic id, `codec::meta::source_hash`, cause seq, seq | empty |
//! | `meta` | `next_topic_id` | u64 |
//! | `raft_log` | group id, index | entry bytes |
//! | `raft_values` | group id, name | value bytes |
//!
//! A group's kept snapshot is a file beside the database's, in
//! `snapshots/` ([`SnapshotDir`]). The groups' synced log appends go
//! through one writer thread ([`log_writer`]), which syncs those that
//! arrive together once.

mod log_writer;

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, ReadOptions,
};

use super::raft_log::{AppendDone, GroupId, READ_ENTRIES_MAX, RaftLogStore};
use super::snapshot_file::SnapshotDir;
use super::{Op, SnapshotFile, Store, WriteBatch};
use crate::codec;
use crate::error::{Error, Result};
use crate::topic::{Element, ProducerWindow, TopicId, TopicMeta};

const CF_TOPICS: &str = "topics";
const CF_ELEMENTS: &str = "elements";
const CF_PRODUCERS: &str = "producers";
const CF_EFFECTS: &str = "effects";
const CF_META: &str = "meta";
const CF_RAFT_LOG: &str = "raft_log";
const CF_RAFT_VALUES: &str = "raft_values";
const KEY_NEXT_TOPIC_ID: &[u8] = b"next_topic_id";
const CFS: [&str; 7] = [
    CF_TOPICS,
    CF_ELEMENTS,
    CF_PRODUCERS,
    CF_EFFECTS,
    CF_META,
    CF_RAFT_LOG,
    CF_RAFT_VALUES,
];

/// A node's RocksDB database.
pub struct RocksStore {
    /// First, so that it is dropped (its thread joined, its handle on the
    /// database let go) before the database closes.
    log_writer: log_writer::LogWriter,
    db: Arc<DB>,
    snapshots: SnapshotDir,
    /// The first write that failed: after it the node cannot promise
    /// durability, and says so (its gRPC health turns NOT_SERVING).
    failure: Arc<OnceLock<String>>,
}

fn storage(context: &str) -> impl FnOnce(rocksdb::Error) -> Error + '_ {
    move |e| Error::Storage(format!("{context}: {e}"))
}

/// `result` of a write, the first failure remembered in `failure`.
fn written(
    failure: &OnceLock<String>,
    result: Result<(), rocksdb::Error>,
    context: &str,
) -> Result<()> {
    result.map_err(|e| {
        let e = storage(context)(e);
        if failure.set(e.to_string()).is_ok() {
            tracing::error!("{e}: this node's storage failed");
        }
        e
    })
}

/// Puts `group`'s log `entries` (index, bytes) into `wb`; `cf` is the
/// `raft_log` column family.
fn put_log(
    wb: &mut rocksdb::WriteBatch,
    cf: &ColumnFamily,
    group: GroupId,
    entries: &[(u64, Vec<u8>)],
) {
    for (index, bytes) in entries {
        wb.put_cf(cf, element_key(TopicId(group.0), *index), bytes);
    }
}

fn element_key(topic: TopicId, seq: u64) -> [u8; 16] {
    let mut k = [0; 16];
    k[..8].copy_from_slice(&topic.0.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The effect index's key of element `seq` of `topic`, made by the handler
/// whose [`codec::meta::source_hash`] is `source` from its element
/// `cause_seq`.
fn effect_key(topic: TopicId, source: u64, cause_seq: u64, seq: u64) -> [u8; 32] {
    let mut k = [0; 32];
    k[..8].copy_from_slice(&topic.0.to_be_bytes());
    k[8..16].copy_from_slice(&source.to_be_bytes());
    k[16..24].copy_from_slice(&cause_seq.to_be_bytes());
    k[24..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn producer_key(topic: TopicId, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + id.len());
    k.extend_from_slice(&topic.0.to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

fn be_u64(bytes: &[u8], what: &str) -> Result<u64> {
    bytes
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| Error::Corrupt(format!("{what}: {} bytes, not 8", bytes.len())))
}

impl RocksStore {
    /// Opens (or creates) the database in `dir`. Fails clearly if another
    /// process holds it.
    pub fn open(dir: &Path) -> Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.increase_parallelism(2);
        opts.set_keep_log_file_num(4);
        // Bound the write-ahead log: past this, memtables are flushed.
        opts.set_max_total_wal_size(256 * 1024 * 1024);
        // What the state machines apply skips the write-ahead log
        // (`write_applied`): flushing every column family at one point
        // keeps such writes consistent with the rest across a crash.
        opts.set_atomic_flush(true);
        // Writes fill the write-ahead log's buffer; the log writer (and a
        // synced write) writes it out and syncs it. RocksDB then syncs
        // outside its write queue, so a write that does not wait for the
        // disk (a state machine's apply) never waits behind a sync.
        opts.set_manual_wal_flush(true);
        let cfs = CFS.map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(|e| {
            Error::Storage(format!(
                "cannot open the database in {}: {e}",
                dir.display()
            ))
        })?;
        let snapshots = SnapshotDir::open(dir.join("snapshots"))?;
        let (db, failure) = (Arc::new(db), Arc::new(OnceLock::new()));
        Ok(Self {
            log_writer: log_writer::LogWriter::start(db.clone(), failure.clone())?,
            db,
            snapshots,
            failure,
        })
    }

    /// Why the first failed write failed, if one did.
    pub fn failure(&self) -> Option<&str> {
        self.failure.get().map(String::as_str)
    }

    fn written(&self, result: Result<(), rocksdb::Error>, context: &str) -> Result<()> {
        written(&self.failure, result, context)
    }

    /// Writes `wb` without a sync, then the write-ahead log's buffer out
    /// to its file (`manual_wal_flush`, ADR 26): it survives the process
    /// being killed, not the machine, as an unsynced write in RocksDB
    /// without a manual flush does.
    fn write_unsynced_wb(&self, wb: rocksdb::WriteBatch, context: &str) -> Result<()> {
        self.written(self.db.write(wb), context)?;
        self.written(self.db.flush_wal(false), context)
    }

    fn write_synced(&self, wb: rocksdb::WriteBatch, context: &str) -> Result<()> {
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(true);
        self.written(self.db.write_opt(wb, &wo), context)
    }

    /// A RocksDB batch doing what `batch` says.
    fn batch(&self, batch: &WriteBatch) -> Result<rocksdb::WriteBatch> {
        let mut wb = rocksdb::WriteBatch::default();
        for op in batch.ops() {
            match op {
                Op::PutTopic(meta) => {
                    wb.put_cf(
                        self.cf(CF_TOPICS),
                        meta.id.0.to_be_bytes(),
                        codec::encode(meta)?,
                    );
                }
                Op::DeleteTopic(id) => {
                    let next = TopicId(id.0 + 1);
                    wb.delete_cf(self.cf(CF_TOPICS), id.0.to_be_bytes());
                    wb.delete_range_cf(
                        self.cf(CF_ELEMENTS),
                        element_key(*id, 0),
                        element_key(next, 0),
                    );
                    wb.delete_range_cf(
                        self.cf(CF_PRODUCERS),
                        id.0.to_be_bytes(),
                        next.0.to_be_bytes(),
                    );
                    wb.delete_range_cf(
                        self.cf(CF_EFFECTS),
                        id.0.to_be_bytes(),
                        next.0.to_be_bytes(),
                    );
                }
                Op::PutNextTopicId(n) => {
                    wb.put_cf(self.cf(CF_META), KEY_NEXT_TOPIC_ID, n.to_be_bytes());
                }
                Op::PutElement(topic, e) => {
                    wb.put_cf(
                        self.cf(CF_ELEMENTS),
                        element_key(*topic, e.seq),
                        codec::element::encode(e),
                    );
                    if let Some(c) = &e.cause {
                        let source = codec::meta::source_hash(&c.topic, &c.handler);
                        let key = effect_key(*topic, source, c.seq, e.seq);
                        wb.put_cf(self.cf(CF_EFFECTS), key, []);
                    }
                }
                Op::PutProducer(topic, id, w) => {
                    wb.put_cf(
                        self.cf(CF_PRODUCERS),
                        producer_key(*topic, id),
                        codec::window::encode(w),
                    );
                }
                Op::PutRaftValue(group, name, value) => {
                    wb.put_cf(self.cf(CF_RAFT_VALUES), value_key(*group, name), value);
                }
            }
        }
        Ok(wb)
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column families are created at open")
    }
}

impl Store for RocksStore {
    fn write(&self, batch: &WriteBatch) -> Result<()> {
        self.write_synced(self.batch(batch)?, "write")
    }

    fn write_unsynced(&self, batch: &WriteBatch) -> Result<()> {
        self.write_unsynced_wb(self.batch(batch)?, "write")
    }

    fn write_applied(&self, batch: &WriteBatch) -> Result<()> {
        let mut wo = rocksdb::WriteOptions::default();
        wo.disable_wal(true);
        self.written(self.db.write_opt(self.batch(batch)?, &wo), "write applied")
    }

    fn topics(&self) -> Result<Vec<TopicMeta>> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_TOPICS), IteratorMode::Start) {
            let (_, value) = item.map_err(storage("list topics"))?;
            out.push(codec::decode(&value)?);
        }
        Ok(out)
    }

    fn topic(&self, id: TopicId) -> Result<Option<TopicMeta>> {
        self.db
            .get_cf(self.cf(CF_TOPICS), id.0.to_be_bytes())
            .map_err(storage("read topic"))?
            .map(|value| codec::decode(&value))
            .transpose()
    }

    fn next_topic_id(&self) -> Result<u64> {
        match self
            .db
            .get_cf(self.cf(CF_META), KEY_NEXT_TOPIC_ID)
            .map_err(storage("read next topic id"))?
        {
            Some(v) => be_u64(&v, "next topic id"),
            None => Ok(1),
        }
    }

    fn last_seq(&self, topic: TopicId) -> Result<u64> {
        let mut it = self.db.raw_iterator_cf(self.cf(CF_ELEMENTS));
        it.seek_for_prev(element_key(topic, u64::MAX));
        let found = match it.key() {
            Some(key) if key.len() == 16 && key[..8] == topic.0.to_be_bytes() => {
                be_u64(&key[8..], "element key")?
            }
            _ => 0,
        };
        it.status().map_err(storage("find last element"))?;
        Ok(found)
    }

    fn get(&self, topic: TopicId, seq: u64) -> Result<Option<Element>> {
        self.db
            .get_pinned_cf(self.cf(CF_ELEMENTS), element_key(topic, seq))
            .map_err(storage("read element"))?
            .map(|v| codec::element::decode(seq, &v))
            .transpose()
    }

    fn scan(
        &self,
        topic: TopicId,
        from: u64,
        limit: usize,
        bytes_max: usize,
    ) -> Result<Vec<Element>> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(element_key(TopicId(topic.0 + 1), 0));
        let start = element_key(topic, from);
        let iter = self.db.iterator_cf_opt(
            self.cf(CF_ELEMENTS),
            ro,
            IteratorMode::From(&start, Direction::Forward),
        );
        let mut out = Vec::new();
        let mut bytes = 0;
        for item in iter {
            if out.len() >= limit {
                break;
            }
            let (key, value) = item.map_err(storage("scan elements"))?;
            let seq = be_u64(&key[8..], "element key")?;
            let e = codec::element::decode(seq, &value)?;
            if !out.is_empty() && bytes + e.payload.len() > bytes_max {
                break;
            }
            bytes += e.payload.len();
            out.push(e);
        }
        Ok(out)
    }

    fn producer(&self, topic: TopicId, id: &str) -> Result<Option<ProducerWindow>> {
        self.db
            .get_pinned_cf(self.cf(CF_PRODUCERS), producer_key(topic, id))
            .map_err(storage("read producer"))?
            .map(|v| codec::window::decode(&v))
            .transpose()
    }

    fn producers(&self, topic: TopicId, limit: usize) -> Result<Vec<(String, ProducerWindow)>> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound((topic.0 + 1).to_be_bytes());
        let start = topic.0.to_be_bytes();
        let iter = self.db.iterator_cf_opt(
            self.cf(CF_PRODUCERS),
            ro,
            IteratorMode::From(&start, Direction::Forward),
        );
        let mut out = Vec::new();
        for item in iter.take(limit) {
            let (key, value) = item.map_err(storage("list producers"))?;
            let id = String::from_utf8(key[8..].to_vec())
                .map_err(|_| Error::Corrupt("producer id is not UTF-8".into()))?;
            out.push((id, codec::window::decode(&value)?));
        }
        Ok(out)
    }

    fn effects(
        &self,
        topic: TopicId,
        cause_topic: &str,
        handler: &str,
        cause_seq: u64,
        limit: usize,
    ) -> Result<Vec<Element>> {
        let source = codec::meta::source_hash(cause_topic, handler);
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(effect_key(topic, source, cause_seq, u64::MAX));
        let start = effect_key(topic, source, cause_seq, 0);
        let iter = self.db.iterator_cf_opt(
            self.cf(CF_EFFECTS),
            ro,
            IteratorMode::From(&start, Direction::Forward),
        );
        let mut out = Vec::new();
        for item in iter {
            if out.len() >= limit {
                break;
            }
            let (key, _) = item.map_err(storage("read effects"))?;
            let seq = be_u64(&key[24..], "effect key")?;
            if let Some(e) = self.get(topic, seq)?
                && super::caused_by(&e, cause_topic, handler, cause_seq)
            {
                out.push(e);
            }
        }
        Ok(out)
    }

    fn trim(&self, topic: TopicId, below_seq: u64) -> Result<()> {
        let mut wb = rocksdb::WriteBatch::default();
        wb.delete_range_cf(
            self.cf(CF_ELEMENTS),
            element_key(topic, 0),
            element_key(topic, below_seq),
        );
        // The index entries of the trimmed elements. One handler's outputs
        // come in the order of their causes, so under each handler's prefix
        // they are the first entries: delete until one that is not trimmed,
        // then skip to the next handler's prefix.
        let mut it = self.db.raw_iterator_cf(self.cf(CF_EFFECTS));
        it.seek(effect_key(topic, 0, 0, 0));
        while let Some(key) = it.key() {
            if key.len() != 32 || key[..8] != topic.0.to_be_bytes() {
                break;
            }
            let source = be_u64(&key[8..16], "effect key")?;
            if be_u64(&key[24..], "effect key")? < below_seq {
                wb.delete_cf(self.cf(CF_EFFECTS), key);
                it.next();
                continue;
            }
            match source.checked_add(1) {
                Some(next) => it.seek(effect_key(topic, next, 0, 0)),
                None => break,
            }
        }
        it.status().map_err(storage("trim effects"))?;
        self.write_unsynced_wb(wb, "trim")
    }
}

fn value_key(group: GroupId, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + name.len());
    k.extend_from_slice(&group.0.to_be_bytes());
    k.extend_from_slice(name.as_bytes());
    k
}

impl RocksStore {
    fn log_batch(&self, group: GroupId, entries: &[(u64, Vec<u8>)]) -> rocksdb::WriteBatch {
        let mut wb = rocksdb::WriteBatch::default();
        put_log(&mut wb, self.cf(CF_RAFT_LOG), group, entries);
        wb
    }
}

impl RaftLogStore for RocksStore {
    fn append_log(&self, group: GroupId, entries: &[(u64, Vec<u8>)]) -> Result<()> {
        self.write_synced(self.log_batch(group, entries), "append raft log")
    }

    /// Through the log writer, synced together with what other groups
    /// append meanwhile; in place if its queue is full.
    fn append_log_then(
        &self,
        group: GroupId,
        entries: Vec<(u64, Vec<u8>)>,
        written: AppendDone,
        done: AppendDone,
    ) {
        if let Err(append) = self.log_writer.submit(group, entries, written, done) {
            let outcome = self.append_log(group, &append.entries);
            if let Some(written) = append.written {
                written(outcome.clone());
            }
            (append.done)(outcome);
        }
    }

    fn append_log_unsynced(&self, group: GroupId, entries: &[(u64, Vec<u8>)]) -> Result<()> {
        self.write_unsynced_wb(self.log_batch(group, entries), "append raft log")
    }

    fn read_log(
        &self,
        group: GroupId,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        if from >= to {
            return Ok(out);
        }
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(element_key(TopicId(group.0), to));
        let start = element_key(TopicId(group.0), from);
        let iter = self.db.iterator_cf_opt(
            self.cf(CF_RAFT_LOG),
            ro,
            IteratorMode::From(&start, Direction::Forward),
        );
        for item in iter.take(limit.min(READ_ENTRIES_MAX)) {
            let (key, value) = item.map_err(storage("read raft log"))?;
            out.push((be_u64(&key[8..], "raft log key")?, value.into_vec()));
        }
        Ok(out)
    }

    fn last_log(&self, group: GroupId) -> Result<Option<(u64, Vec<u8>)>> {
        let mut it = self.db.raw_iterator_cf(self.cf(CF_RAFT_LOG));
        it.seek_for_prev(element_key(TopicId(group.0), u64::MAX));
        let found = match (it.key(), it.value()) {
            (Some(key), Some(value)) if key.len() == 16 && key[..8] == group.0.to_be_bytes() => {
                Some((be_u64(&key[8..], "raft log key")?, value.to_vec()))
            }
            _ => None,
        };
        it.status().map_err(storage("find last raft entry"))?;
        Ok(found)
    }

    fn truncate_log(&self, group: GroupId, from: u64) -> Result<()> {
        let mut wb = rocksdb::WriteBatch::default();
        wb.delete_range_cf(
            self.cf(CF_RAFT_LOG),
            element_key(TopicId(group.0), from),
            element_key(TopicId(group.0 + 1), 0),
        );
        self.write_synced(wb, "truncate raft log")
    }

    fn purge_log(&self, group: GroupId, upto: u64) -> Result<()> {
        let mut wb = rocksdb::WriteBatch::default();
        let end = match upto.checked_add(1) {
            Some(next) => element_key(TopicId(group.0), next),
            None => element_key(TopicId(group.0 + 1), 0),
        };
        wb.delete_range_cf(self.cf(CF_RAFT_LOG), element_key(TopicId(group.0), 0), end);
        self.write_unsynced_wb(wb, "purge raft log")
    }

    fn persist_applied(&self) -> Result<()> {
        // With `atomic_flush`, every column family's memtable at once: the
        // files on disk then hold one consistent point of all writes.
        let mut fo = rocksdb::FlushOptions::default();
        fo.set_wait(true);
        let cfs: Vec<_> = CFS.iter().map(|name| self.cf(name)).collect();
        self.written(self.db.flush_cfs_opt(&cfs, &fo), "persist applied")
    }

    fn put_value(&self, group: GroupId, name: &str, value: &[u8]) -> Result<()> {
        let mut wb = rocksdb::WriteBatch::default();
        wb.put_cf(self.cf(CF_RAFT_VALUES), value_key(group, name), value);
        self.write_synced(wb, "save raft value")
    }

    fn put_value_unsynced(&self, group: GroupId, name: &str, value: &[u8]) -> Result<()> {
        let mut wb = rocksdb::WriteBatch::default();
        wb.put_cf(self.cf(CF_RAFT_VALUES), value_key(group, name), value);
        self.write_unsynced_wb(wb, "save raft value")
    }

    fn value(&self, group: GroupId, name: &str) -> Result<Option<Vec<u8>>> {
        self.db
            .get_cf(self.cf(CF_RAFT_VALUES), value_key(group, name))
            .map_err(storage("read raft value"))
    }

    fn delete_group(&self, group: GroupId) -> Result<()> {
        let next = group.0 + 1;
        let mut wb = rocksdb::WriteBatch::default();
        wb.delete_range_cf(
            self.cf(CF_RAFT_LOG),
            element_key(TopicId(group.0), 0),
            element_key(TopicId(next), 0),
        );
        wb.delete_range_cf(
            self.cf(CF_RAFT_VALUES),
            group.0.to_be_bytes(),
            next.to_be_bytes(),
        );
        self.write_synced(wb, "delete raft group")?;
        self.snapshots.remove(group)
    }

    fn snapshot_create(&self) -> Result<SnapshotFile> {
        self.snapshots.create()
    }

    fn snapshot_keep(&self, group: GroupId, file: SnapshotFile) -> Result<()> {
        self.snapshots.keep(group, file)
    }

    fn snapshot_open(&self, group: GroupId) -> Result<Option<SnapshotFile>> {
        self.snapshots.open_kept(group)
    }

    fn groups(&self) -> Result<Vec<GroupId>> {
        let cf = self.cf(CF_RAFT_VALUES);
        let mut groups = Vec::new();
        let mut from = 0u64;
        // One seek per group: jump past each group's values.
        loop {
            let start = from.to_be_bytes();
            let mut iter = self
                .db
                .iterator_cf(cf, IteratorMode::From(&start, Direction::Forward));
            let Some(item) = iter.next() else { break };
            let (key, _) = item.map_err(storage("list raft groups"))?;
            let Some(id) = key.get(..8) else {
                return Err(Error::Corrupt(format!(
                    "raft value key {key:?} is too short"
                )));
            };
            let id = u64::from_be_bytes(id.try_into().expect("8 bytes"));
            groups.push(GroupId(id));
            match id.checked_add(1) {
                Some(next) => from = next,
                None => break,
            }
        }
        Ok(groups)
    }
}

#[cfg(test)]
mod tests {
    use super::super::conformance;
    use super::*;

    /// Fresh stores, each in its own directory, kept until the test ends.
    fn fresh(dirs: &std::sync::Mutex<Vec<tempfile::TempDir>>) -> RocksStore {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path()).unwrap();
        dirs.lock().unwrap().push(dir);
        store
    }

    #[test]
    fn conformance() {
        let dirs = std::sync::Mutex::new(Vec::new());
        conformance::run_all(|| fresh(&dirs));
    }

    #[test]
    fn raft_log_conformance() {
        let dirs = std::sync::Mutex::new(Vec::new());
        conformance::run_raft_log(|| fresh(&dirs));
    }

    #[test]
    fn raft_log_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = RocksStore::open(dir.path()).unwrap();
            conformance::fill_raft_log(&store);
        }
        conformance::check_raft_log_filled(&RocksStore::open(dir.path()).unwrap());
    }

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = RocksStore::open(dir.path()).unwrap();
            conformance::fill(&store);
        }
        let store = RocksStore::open(dir.path()).unwrap();
        conformance::check_filled(&store);
    }

    #[test]
    fn kept_snapshots_survive_reopen_and_unkept_ones_do_not() {
        use std::io::{Read, Write};
        let dir = tempfile::tempdir().unwrap();
        {
            let store = RocksStore::open(dir.path()).unwrap();
            let mut kept = store.snapshot_create().unwrap();
            kept.write_all(b"kept").unwrap();
            store.snapshot_keep(GroupId(3), kept).unwrap();
            let mut unkept = store.snapshot_create().unwrap();
            unkept.write_all(b"unkept").unwrap();
            // As a crash would leave it: never dropped.
            std::mem::forget(unkept);
        }
        let store = RocksStore::open(dir.path()).unwrap();
        let mut bytes = Vec::new();
        store
            .snapshot_open(GroupId(3))
            .unwrap()
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        assert_eq!(bytes, b"kept");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["3.snap"]);
    }

    /// A copy of the open database's files, as a crash of the process
    /// would leave them (nothing flushed on the way out), opened.
    fn crashed_copy(from: &Path, to: &Path) -> RocksStore {
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() && entry.file_name() != "LOCK" {
                std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
            }
        }
        RocksStore::open(to).unwrap()
    }

    #[test]
    fn applied_writes_skip_the_wal_until_persisted_and_logged_ones_do_not() {
        let (dir, copy1, copy2) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let (topic, group) = (TopicId(7), GroupId(7));
        let put = |seq: u64| {
            let mut b = WriteBatch::default();
            b.put_element(
                topic,
                Element {
                    seq,
                    payload: bytes::Bytes::from(vec![seq as u8; 16]),
                    append_time_ms: 0,
                    cause: None,
                    handler: None,
                },
            );
            b
        };
        let store = RocksStore::open(dir.path()).unwrap();
        store.append_log(group, &[(1, b"one".to_vec())]).unwrap();
        store.write_unsynced(&put(1)).unwrap();
        store.write_applied(&put(2)).unwrap();
        store.put_value(group, "after", b"synced").unwrap();

        let crashed = crashed_copy(dir.path(), copy1.path());
        assert!(
            crashed.get(topic, 1).unwrap().is_some(),
            "a logged write survives"
        );
        assert_eq!(
            crashed.get(topic, 2).unwrap(),
            None,
            "an applied one is lost"
        );
        assert_eq!(crashed.value(group, "after").unwrap().unwrap(), b"synced");
        assert_eq!(crashed.read_log(group, 1, 2, 10).unwrap().len(), 1);

        store.persist_applied().unwrap();
        store.write_applied(&put(3)).unwrap();
        let crashed = crashed_copy(dir.path(), copy2.path());
        assert_eq!(
            crashed.get(topic, 2).unwrap().unwrap().payload,
            vec![2u8; 16]
        );
        assert_eq!(crashed.get(topic, 3).unwrap(), None);
        assert_eq!(crashed.last_seq(topic).unwrap(), 2);
    }

    /// The write-ahead log is flushed by hand (`set_manual_wal_flush`):
    /// what the log writer acknowledged, and an unsynced write, must still
    /// be in the files a crash leaves, not in the process's buffer.
    #[test]
    fn acknowledged_log_appends_and_unsynced_writes_leave_the_process() {
        let (dir, copy1, copy2) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let group = GroupId(3);
        let store = RocksStore::open(dir.path()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        store.append_log_then(
            group,
            vec![(1, b"one".to_vec()), (2, b"two".to_vec())],
            Box::new(|_| {}),
            Box::new(move |outcome| tx.send(outcome).unwrap()),
        );
        rx.recv().unwrap().unwrap();
        let crashed = crashed_copy(dir.path(), copy1.path());
        assert_eq!(crashed.read_log(group, 1, 3, 10).unwrap().len(), 2);

        let mut b = WriteBatch::default();
        b.push(Op::PutRaftValue(group, "unsynced".into(), b"kept".to_vec()));
        store.write_unsynced(&b).unwrap();
        let crashed = crashed_copy(dir.path(), copy2.path());
        assert_eq!(crashed.value(group, "unsynced").unwrap().unwrap(), b"kept");
    }

    #[test]
    fn second_open_of_same_dir_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let _first = RocksStore::open(dir.path()).unwrap();
        let err = RocksStore::open(dir.path()).err().expect("must fail");
        assert!(matches!(err, Error::Storage(_)), "{err}");
        assert!(err.to_string().contains("cannot open"), "{err}");
    }
}
