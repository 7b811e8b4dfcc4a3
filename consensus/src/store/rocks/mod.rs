//! The RocksDB [`Store`]: a node's state in one database, one column family
//! per kind of record, keys big-endian so that RocksDB's byte order is
//! numeric order.
//!
//! | column family | key | value |
//! |---|---|---|
//! | `topics` | topic id | `TopicMeta` |
//! | `elements` | topic id, seq | an element (`codec::element`) |
//! | `producers` | topic id, producer id | `codec::window` |
//! | `effects` | topic id, `codec::meta::source_hash`, cause seq, seq | empty |
//! | `meta` | `next_topic_id` | u64 |
//! | `raft_values` | group id, name | value bytes |
//!
//! The Raft logs are in two databases of their own, each with one column
//! family, `raft_log` (key: group id, index; value: the entry's bytes), and
//! its own write-ahead log: `log/` for small appends and `bulk/` for large
//! ones, so that a small append's sync never waits for a large one's bytes
//! ([`lanes`], ADR 31). The groups' synced log appends go through each
//! lane's writer thread ([`log_writer`]), which syncs those that arrive
//! together once. The lanes' write-ahead log files are reused
//! (`recycle_log_file_num`), and `log/` starts on a file filled at open
//! ([`prime_wal`], ADR 39): a sync then writes over blocks the file
//! already has, and the file system need not commit its metadata too.
//! A group's kept snapshot is a file beside the databases, in `snapshots/`
//! ([`SnapshotDir`]).

mod lanes;
mod log_writer;

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use lanes::{Lane, Lanes};

use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, ReadOptions,
};

use super::raft_log::{AppendDone, GroupId, READ_ENTRIES_MAX, RaftLogStore};
use super::snapshot_file::SnapshotDir;
use super::{Fixed, Op, SnapshotFile, Store, WriteBatch};
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
const CFS: [&str; 6] = [
    CF_TOPICS,
    CF_ELEMENTS,
    CF_PRODUCERS,
    CF_EFFECTS,
    CF_META,
    CF_RAFT_VALUES,
];

/// The small appends' lane: its memtable's size, and how much of its
/// first write-ahead log file is filled at open (the two alike, so that
/// a file is reused about when it would be full).
const LOG_LANE_BYTES: usize = 32 << 20;
/// The bulk lane's memtable: entries are mostly purged before it fills,
/// so they are seldom written a second time, to a table file.
const BULK_LANE_BYTES: usize = 128 << 20;
/// How many write-ahead log files a lane keeps for reuse.
const WAL_FILES_REUSED: usize = 2;

/// A node's RocksDB database.
pub struct RocksStore {
    /// First, so that they are dropped (their threads joined, their
    /// handles on the databases let go) before the databases close.
    log_writer: log_writer::LogWriter,
    bulk_writer: log_writer::LogWriter,
    /// Topics, elements, producer windows, effects, Raft values.
    db: Arc<DB>,
    /// The main lane's database: small Raft log appends.
    log: Arc<DB>,
    /// The bulk lane's database: large Raft log appends (ADR 31).
    bulk: Arc<DB>,
    lanes: Arc<Lanes>,
    snapshots: SnapshotDir,
    /// The first write that failed: after it the node cannot promise
    /// durability, and says so (its gRPC health turns NOT_SERVING).
    failure: Arc<OnceLock<String>>,
    /// Groups whose deletion failed part way while this process ran (their
    /// [`DELETING`] mark stays): a value saved for one (a group is made
    /// again by saving its vote first) finishes the deletion first, so
    /// that the next open does not delete the group made again.
    unfinished: Mutex<HashSet<GroupId>>,
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

/// Where a column family's memtable inserts start (ADR 43).
#[derive(Clone, Copy)]
enum Hint {
    /// From the group's last insert (the keys' first 8 bytes): a group's
    /// log entries and elements come in key order.
    PerGroup,
    /// From the last insert of the same key (up to 64 bytes): a group's
    /// few values (its commit point, what it applied) and a topic's
    /// producer windows are each written anew every round, in turns, so
    /// the group's last insert is another key's place.
    PerKey,
}

/// `cf` with a memtable insert position remembered by `hint` (ADR 43): the
/// groups' appends and applies come interleaved, so an insert starts from
/// a nearby one instead of walking down the whole skiplist. RocksDB uses
/// the hint for a write that reaches the memtable alone (not for writers
/// it inserts in parallel). The `rocksdb` crate has no setter for it;
/// RocksDB's option string sets it, on a copy of `cf` it returns.
fn hinted(mut cf: Options, hint: Hint) -> Result<Options> {
    let extractor = match hint {
        Hint::PerGroup => "rocksdb.FixedPrefix.8",
        Hint::PerKey => "rocksdb.CappedPrefix.64",
    };
    cf.get_options_from_string(format!(
        "memtable_insert_with_hint_prefix_extractor={extractor}"
    ))
    .map_err(storage("cannot set the memtable's insert hints"))
}

/// Opens (or creates) a lane's database in `dir`: a `raft_log` column
/// family only, with memtables of `memtable_bytes`, its write-ahead log
/// flushed by hand (ADR 26) and its files reused once obsolete.
fn open_lane(dir: &Path, memtable_bytes: usize) -> Result<DB> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_keep_log_file_num(4);
    opts.set_manual_wal_flush(true);
    // A reused file is written over, not appended to: a sync then leaves
    // the file's size and blocks as they were (ADR 39). RocksDB tells a
    // reused file's stale records from new ones by their log number.
    opts.set_recycle_log_file_num(WAL_FILES_REUSED);
    let mut cf = Options::default();
    cf.set_write_buffer_size(memtable_bytes);
    let cfs = [ColumnFamilyDescriptor::new(
        CF_RAFT_LOG,
        hinted(cf, Hint::PerGroup)?,
    )];
    DB::open_cf_descriptors(&opts, dir, cfs).map_err(|e| {
        Error::Storage(format!(
            "cannot open the database in {}: {e}",
            dir.display()
        ))
    })
}

/// Makes `db`'s write-ahead log a file of at least `bytes` already
/// written and synced, to be written over (ADR 39): fills the log that
/// RocksDB opened with, then switches logs twice (each switch is a
/// memtable flush, here of one tombstone), the second switch reusing the
/// filled file. What a file system must commit to sync an append past a
/// file's end (its new size and blocks) is so paid once, here.
fn prime_wal(db: &DB, bytes: usize) -> Result<()> {
    const CHUNK: usize = 1 << 20;
    let fill = || -> Result<(), rocksdb::Error> {
        let cf = log_cf(db);
        let filler = vec![0u8; CHUNK];
        for _ in 0..bytes.div_ceil(CHUNK) {
            let mut wb = rocksdb::WriteBatch::default();
            // In the write-ahead log only: recovery skips it.
            wb.put_log_data(&filler);
            db.write(wb)?;
        }
        db.flush_wal(true)?;
        let mut fo = rocksdb::FlushOptions::default();
        fo.set_wait(true);
        for _ in 0..2 {
            let mut wb = rocksdb::WriteBatch::default();
            // A flush switches logs only with something in the memtable.
            wb.delete_cf(cf, b"wal filler");
            db.write(wb)?;
            db.flush_cf_opt(cf, &fo)?;
        }
        Ok(())
    };
    fill().map_err(storage("fill the raft log's file"))
}

/// Whether filling `bytes` of a write-ahead log in `dir` leaves room: the
/// process may write a file twice that large (`RLIMIT_FSIZE`), and the
/// file system has at least eight times that free. On a nearly full disk
/// a node must start, not fail on a fill it can do without.
fn room_to_prime(dir: &Path, bytes: usize) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let bytes = bytes as u128;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_FSIZE, &mut limit) } != 0 {
        return false;
    }
    if limit.rlim_cur != libc::RLIM_INFINITY && u128::from(limit.rlim_cur) < 2 * bytes {
        return false;
    }
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statvfs is plain data, for which all zeroes is a value.
    let mut fs: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string; statvfs writes only `fs`.
    if unsafe { libc::statvfs(path.as_ptr(), &mut fs) } != 0 {
        return false;
    }
    u128::from(fs.f_bavail) * u128::from(fs.f_frsize) >= 8 * bytes
}

/// Moves the Raft log entries that an earlier version kept in the main
/// database's `raft_log` column family into the log lane, synced, then
/// drops that column family. A crash in between leaves them in both,
/// and the next open copies them again (nothing else writes before).
fn move_old_log(db: &mut DB, log: &DB) -> Result<()> {
    const BATCH_BYTES: usize = 4 << 20;
    let Some(old) = db.cf_handle(CF_RAFT_LOG) else {
        return Ok(());
    };
    let (mut wb, mut bytes, mut moved) = (rocksdb::WriteBatch::default(), 0, 0u64);
    for item in db.iterator_cf(old, IteratorMode::Start) {
        let (key, value) = item.map_err(storage("read the old raft log"))?;
        wb.put_cf(log_cf(log), &key, &value);
        bytes += key.len() + value.len();
        moved += 1;
        if bytes >= BATCH_BYTES {
            log.write(std::mem::take(&mut wb))
                .map_err(storage("move the old raft log"))?;
            bytes = 0;
        }
    }
    log.write(wb).map_err(storage("move the old raft log"))?;
    log.flush_wal(true)
        .map_err(storage("move the old raft log"))?;
    db.drop_cf(CF_RAFT_LOG)
        .map_err(storage("drop the old raft log"))?;
    tracing::info!("moved {moved} raft log entries into the log lane's database");
    Ok(())
}

/// `db`'s `raft_log` column family.
fn log_cf(db: &DB) -> &ColumnFamily {
    db.cf_handle(CF_RAFT_LOG)
        .expect("column families are created at open")
}

/// Every group with entries in `db`'s `raft_log`, one seek per group.
fn log_groups(db: &DB) -> Result<Vec<GroupId>> {
    let mut groups = Vec::new();
    let mut it = db.raw_iterator_cf(log_cf(db));
    it.seek_to_first();
    while let Some(key) = it.key() {
        let group = be_u64(key.get(..8).unwrap_or_default(), "raft log key")?;
        groups.push(GroupId(group));
        match group.checked_add(1) {
            Some(next) => it.seek(element_key(TopicId(next), 0)),
            None => break,
        }
    }
    it.status().map_err(storage("list raft logs"))?;
    Ok(groups)
}

/// `group`'s entries in `db` with `from <= index < to`, at most `limit`.
fn read_log_in(
    db: &DB,
    group: GroupId,
    from: u64,
    to: u64,
    limit: usize,
) -> Result<Vec<(u64, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut ro = ReadOptions::default();
    ro.set_iterate_upper_bound(element_key(TopicId(group.0), to));
    let start = element_key(TopicId(group.0), from);
    let iter = db.iterator_cf_opt(
        log_cf(db),
        ro,
        IteratorMode::From(&start, Direction::Forward),
    );
    for item in iter.take(limit) {
        let (key, value) = item.map_err(storage("read raft log"))?;
        out.push((be_u64(&key[8..], "raft log key")?, value.into_vec()));
    }
    Ok(out)
}

/// `group`'s entry with the highest index in `db`.
fn last_log_in(db: &DB, group: GroupId) -> Result<Option<(u64, Vec<u8>)>> {
    let mut it = db.raw_iterator_cf(log_cf(db));
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

/// Whether `db` holds an entry of `group` with `from <= index <= to`.
fn holds_any(db: &DB, group: GroupId, from: u64, to: u64) -> Result<bool> {
    let mut it = db.raw_iterator_cf(log_cf(db));
    it.seek(element_key(TopicId(group.0), from));
    let found = it.key().is_some_and(|key| {
        key.len() == 16
            && key[..8] == group.0.to_be_bytes()
            && key[8..]
                .try_into()
                .map(u64::from_be_bytes)
                .unwrap_or(u64::MAX)
                <= to
    });
    it.status().map_err(storage("read raft log"))?;
    Ok(found)
}

/// Deletes `group`'s entries with `from <= index <= to` (`to` may be
/// `u64::MAX`) in `wb`, for `db`'s `raft_log`.
fn delete_log_range(wb: &mut rocksdb::WriteBatch, db: &DB, group: GroupId, from: u64, to: u64) {
    let end = match to.checked_add(1) {
        Some(next) => element_key(TopicId(group.0), next),
        None => element_key(TopicId(group.0 + 1), 0),
    };
    wb.delete_range_cf(log_cf(db), element_key(TopicId(group.0), from), end);
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
        // An earlier version kept the main lane's log here: opened to be
        // moved (`move_old_log`).
        let old_log = DB::list_cf(&opts, dir).is_ok_and(|cfs| cfs.iter().any(|c| c == CF_RAFT_LOG));
        let cfs = CFS
            .iter()
            .chain(old_log.then_some(&CF_RAFT_LOG))
            .map(|name| {
                let hint = if *name == CF_RAFT_VALUES || *name == CF_PRODUCERS {
                    Hint::PerKey
                } else {
                    Hint::PerGroup
                };
                Ok(ColumnFamilyDescriptor::new(
                    *name,
                    hinted(Options::default(), hint)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(|e| {
            Error::Storage(format!(
                "cannot open the database in {}: {e}",
                dir.display()
            ))
        })?;
        let log_dir = dir.join("log");
        let log = open_lane(&log_dir, LOG_LANE_BYTES)?;
        if room_to_prime(&log_dir, LOG_LANE_BYTES) {
            prime_wal(&log, LOG_LANE_BYTES)?;
        } else {
            tracing::warn!(
                "not filling the raft log's first file ({} MiB): the disk or the \
                 process's file size limit leaves too little room; syncs cost more \
                 until its files are reused",
                LOG_LANE_BYTES >> 20
            );
        }
        move_old_log(&mut db, &log)?;
        let bulk = open_lane(&dir.join("bulk"), BULK_LANE_BYTES)?;
        let snapshots = SnapshotDir::open(dir.join("snapshots"))?;
        let (db, log, bulk) = (Arc::new(db), Arc::new(log), Arc::new(bulk));
        let failure = Arc::new(OnceLock::new());
        let lanes = Arc::new(Lanes::new(log_groups(&bulk)?));
        let store = Self {
            log_writer: log_writer::LogWriter::start(
                "woof-log-writer",
                log.clone(),
                failure.clone(),
            )?,
            bulk_writer: log_writer::LogWriter::start(
                "woof-bulk-writer",
                bulk.clone(),
                failure.clone(),
            )?,
            db,
            log,
            bulk,
            lanes,
            snapshots,
            failure,
            unfinished: Mutex::default(),
        };
        let finished = store.finish_deletions()?;
        if finished > 0 {
            tracing::info!(
                groups = finished,
                "finished deleting groups a crash had cut short"
            );
        }
        Ok(store)
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
        self.write_unsynced_in(&self.db, wb, context)
    }

    /// [`write_unsynced_wb`](Self::write_unsynced_wb) to `db` (either lane's).
    fn write_unsynced_in(&self, db: &DB, wb: rocksdb::WriteBatch, context: &str) -> Result<()> {
        self.written(db.write(wb), context)?;
        self.written(db.flush_wal(false), context)
    }

    fn write_synced(&self, wb: rocksdb::WriteBatch, context: &str) -> Result<()> {
        self.write_synced_in(&self.db, wb, context)
    }

    fn write_synced_in(&self, db: &DB, wb: rocksdb::WriteBatch, context: &str) -> Result<()> {
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(true);
        self.written(db.write_opt(wb, &wo), context)
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

/// A [`RocksStore`] read through a snapshot of its database.
struct AsOf<'a> {
    store: &'a RocksStore,
    snapshot: rocksdb::SnapshotWithThreadMode<'a, DB>,
}

impl Fixed for AsOf<'_> {
    fn scan(
        &self,
        topic: TopicId,
        from: u64,
        limit: usize,
        bytes_max: usize,
    ) -> Result<Vec<Element>> {
        self.store
            .scan_as_of(Some(&self.snapshot), topic, from, limit, bytes_max)
    }

    fn producers(&self, topic: TopicId, limit: usize) -> Result<Vec<(String, ProducerWindow)>> {
        self.store
            .producers_as_of(Some(&self.snapshot), topic, limit)
    }
}

impl RocksStore {
    /// Read options that read through `snapshot`, if any.
    fn read_options(snapshot: Option<&rocksdb::SnapshotWithThreadMode<'_, DB>>) -> ReadOptions {
        let mut ro = ReadOptions::default();
        if let Some(snapshot) = snapshot {
            ro.set_snapshot(snapshot);
            // A copy read once: it should not push what readers use out
            // of the block cache.
            ro.fill_cache(false);
        }
        ro
    }

    /// [`Store::scan`], through `snapshot` if given.
    fn scan_as_of(
        &self,
        snapshot: Option<&rocksdb::SnapshotWithThreadMode<'_, DB>>,
        topic: TopicId,
        from: u64,
        limit: usize,
        bytes_max: usize,
    ) -> Result<Vec<Element>> {
        let mut ro = Self::read_options(snapshot);
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

    /// [`Store::producers`], through `snapshot` if given.
    fn producers_as_of(
        &self,
        snapshot: Option<&rocksdb::SnapshotWithThreadMode<'_, DB>>,
        topic: TopicId,
        limit: usize,
    ) -> Result<Vec<(String, ProducerWindow)>> {
        let mut ro = Self::read_options(snapshot);
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
        self.scan_as_of(None, topic, from, limit, bytes_max)
    }

    fn producer(&self, topic: TopicId, id: &str) -> Result<Option<ProducerWindow>> {
        self.db
            .get_pinned_cf(self.cf(CF_PRODUCERS), producer_key(topic, id))
            .map_err(storage("read producer"))?
            .map(|v| codec::window::decode(&v))
            .transpose()
    }

    fn producers(&self, topic: TopicId, limit: usize) -> Result<Vec<(String, ProducerWindow)>> {
        self.producers_as_of(None, topic, limit)
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

    /// A RocksDB snapshot: reads through it see the database as it was
    /// when it was taken, and it holds back only what compactions may drop
    /// meanwhile.
    fn read_fixed(&self, f: &mut dyn FnMut(&dyn Fixed) -> Result<()>) -> Result<()> {
        let snapshot = self.db.snapshot();
        f(&AsOf {
            store: self,
            snapshot,
        })
    }
}

/// The value that marks a group being deleted ([`RaftLogStore::delete_group`]);
/// no caller's value has this name.
const DELETING: &str = "\u{0}deleting";

fn value_key(group: GroupId, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + name.len());
    k.extend_from_slice(&group.0.to_be_bytes());
    k.extend_from_slice(name.as_bytes());
    k
}

impl RocksStore {
    /// Removes what `group` stored: each lane's log, then its kept
    /// snapshot, then its values (with the [`DELETING`] mark, if any), each
    /// synced. Again from the start after a crash part way.
    fn erase_group(&self, group: GroupId) -> Result<()> {
        for db in self.lanes_of(group) {
            let mut wb = rocksdb::WriteBatch::default();
            delete_log_range(&mut wb, db, group, 0, u64::MAX);
            self.write_synced_in(db, wb, "delete raft group")?;
        }
        self.lanes.forget(group);
        self.snapshots.remove(group)?;
        let next = group.0 + 1;
        let mut wb = rocksdb::WriteBatch::default();
        wb.delete_range_cf(
            self.cf(CF_RAFT_VALUES),
            group.0.to_be_bytes(),
            next.to_be_bytes(),
        );
        self.write_synced(wb, "delete raft group")
    }

    /// Finishes deleting the groups whose deletion a crash cut short (they
    /// still hold the [`DELETING`] mark). Returns how many.
    fn finish_deletions(&self) -> Result<usize> {
        let mut finished = 0;
        for group in self.groups()? {
            if self.value(group, DELETING)?.is_some() {
                self.erase_group(group)?;
                finished += 1;
            }
        }
        Ok(finished)
    }

    /// Finishes deleting `group` if its deletion failed part way in this
    /// process (see [`RocksStore::unfinished`]).
    fn finish_unfinished(&self, group: GroupId) -> Result<()> {
        let mut unfinished = self.unfinished.lock().unwrap_or_else(|e| e.into_inner());
        if unfinished.contains(&group) {
            self.erase_group(group)?;
            unfinished.remove(&group);
        }
        Ok(())
    }

    /// The database of `lane`.
    fn lane(&self, lane: Lane) -> &DB {
        match lane {
            Lane::Main => &self.log,
            Lane::Bulk => &self.bulk,
        }
    }

    /// Whether the bulk lane may hold entries of `group` (if not, reads
    /// skip it).
    fn bulk_of(&self, group: GroupId) -> Option<&DB> {
        self.lanes.in_bulk(group).then_some(&*self.bulk)
    }

    /// The lanes' databases that may hold entries of `group`.
    fn lanes_of(&self, group: GroupId) -> impl Iterator<Item = &DB> {
        self.bulk_of(group).into_iter().chain([&*self.log])
    }

    /// Removes the indexes of `entries` from the lane other than `lane`, if
    /// that lane holds any of them (an index is in one lane only). Synced:
    /// the append that replaces them may be acknowledged before anything
    /// else syncs the other lane. Only an append over entries that were not
    /// truncated first does this (Raft truncates a conflicting suffix
    /// before it writes over it).
    fn clear_other_lane(
        &self,
        lane: Lane,
        group: GroupId,
        entries: &[(u64, Vec<u8>)],
    ) -> Result<()> {
        let (Some((first, _)), Some((last, _))) = (entries.first(), entries.last()) else {
            return Ok(());
        };
        let other = match lane {
            Lane::Main => match self.bulk_of(group) {
                Some(bulk) => bulk,
                None => return Ok(()),
            },
            Lane::Bulk => &self.log,
        };
        if !holds_any(other, group, *first, *last)? {
            return Ok(());
        }
        let mut wb = rocksdb::WriteBatch::default();
        delete_log_range(&mut wb, other, group, *first, *last);
        self.write_synced_in(other, wb, "replace raft log entries")
    }

    /// `entries` of `group` as a batch for `lane`'s database.
    fn log_batch(
        &self,
        lane: Lane,
        group: GroupId,
        entries: &[(u64, Vec<u8>)],
    ) -> rocksdb::WriteBatch {
        let mut wb = rocksdb::WriteBatch::default();
        put_log(&mut wb, log_cf(self.lane(lane)), group, entries);
        wb
    }
}

/// A main-lane log append of at most this many bytes is written by its
/// caller, which hands only its sync to the log writer: a memtable insert
/// and a copy into the write-ahead log's buffer take microseconds, less
/// than waking the writer's thread and being woken by it, and a leader
/// replicates what it appended only once the append is written.
const IN_PLACE_BYTES_MAX: usize = super::QUICK_BYTES_MAX;

/// How a log append written in place went.
enum InPlace {
    Written,
    Failed(Error),
    /// RocksDB would have held the write back (a write stall): the log
    /// writer's thread waits it out instead of the caller.
    WouldStall,
}

impl RocksStore {
    /// [`RaftLogStore::append_log_then`], and with `may_wait` its
    /// `append_log_then_may_wait`: a small append to the main lane is
    /// written here (ADR 38), and synced here too if `may_wait` and the
    /// writer is idle (ADR 45).
    fn append_log_with(
        &self,
        group: GroupId,
        entries: Vec<(u64, Vec<u8>)>,
        written: AppendDone,
        done: AppendDone,
        may_wait: bool,
    ) {
        let bytes = log_bytes(&entries);
        let lane = self.lanes.enter(group, bytes);
        let lanes = self.lanes.clone();
        // Out of the lane once its caller knows the outcome: the group's
        // next append may then go to the other lane.
        let done: AppendDone = Box::new(move |outcome| {
            done(outcome);
            lanes.leave(group);
        });
        if let Err(e) = self.clear_other_lane(lane, group, &entries) {
            written(Err(e.clone()));
            done(Err(e));
            return;
        }
        let writer = match lane {
            Lane::Main => &self.log_writer,
            Lane::Bulk => &self.bulk_writer,
        };
        if lane == Lane::Main && bytes <= IN_PLACE_BYTES_MAX {
            match self.write_in_place(group, &entries) {
                InPlace::Written => {
                    written(Ok(()));
                    // Synced here: a follower's append with the writer idle
                    // (held so until told), or one the writer's full queue
                    // gives back.
                    let claim = may_wait.then(|| writer.claim_idle()).flatten();
                    let done = match claim {
                        Some(_) => done,
                        None => match writer.submit_sync(group, done) {
                            Ok(()) => return,
                            Err(done) => done,
                        },
                    };
                    done(self.written(self.log.flush_wal(true), "sync raft log"));
                    drop(claim);
                    return;
                }
                InPlace::Failed(e) => {
                    written(Err(e.clone()));
                    done(Err(e));
                    return;
                }
                InPlace::WouldStall => {}
            }
        }
        if let Err(append) = writer.submit(group, entries, written, done) {
            let outcome = self.write_synced_in(
                self.lane(lane),
                self.log_batch(lane, group, &append.entries),
                "append raft log",
            );
            if let Some(written) = append.written {
                written(outcome.clone());
            }
            (append.done)(outcome);
        }
    }

    /// Writes `group`'s `entries` to the lane their size chooses, by the
    /// caller, synced or not ([`RaftLogStore::append_log`] and
    /// `append_log_unsynced`).
    fn append_log_here(
        &self,
        group: GroupId,
        entries: &[(u64, Vec<u8>)],
        synced: bool,
    ) -> Result<()> {
        let lane = self.lanes.choose(group, log_bytes(entries));
        self.clear_other_lane(lane, group, entries)?;
        let (db, batch) = (self.lane(lane), self.log_batch(lane, group, entries));
        match synced {
            true => self.write_synced_in(db, batch, "append raft log"),
            false => self.write_unsynced_in(db, batch, "append raft log"),
        }
    }

    /// Writes `group`'s `entries` to the main lane without a sync, unless
    /// RocksDB would hold the write back.
    fn write_in_place(&self, group: GroupId, entries: &[(u64, Vec<u8>)]) -> InPlace {
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_no_slowdown(true);
        match self
            .log
            .write_opt(self.log_batch(Lane::Main, group, entries), &wo)
        {
            Ok(()) => InPlace::Written,
            Err(e) if e.kind() == rocksdb::ErrorKind::Incomplete => InPlace::WouldStall,
            Err(e) => InPlace::Failed(
                self.written(Err(e), "append raft log")
                    .expect_err("a failed write"),
            ),
        }
    }
}

/// About how many bytes `entries` take in a write.
fn log_bytes(entries: &[(u64, Vec<u8>)]) -> usize {
    entries.iter().map(|(_, e)| e.len() + 16).sum()
}

impl RaftLogStore for RocksStore {
    fn append_log(&self, group: GroupId, entries: &[(u64, Vec<u8>)]) -> Result<()> {
        self.append_log_here(group, entries, true)
    }

    /// Through the lane's log writer, synced together with what other
    /// groups append to that lane meanwhile; in place if its queue is full.
    /// A small append to the main lane is written here, in place, and only
    /// its sync is handed to the writer ([`IN_PLACE_BYTES_MAX`]).
    fn append_log_then(
        &self,
        group: GroupId,
        entries: Vec<(u64, Vec<u8>)>,
        written: AppendDone,
        done: AppendDone,
    ) {
        self.append_log_with(group, entries, written, done, false)
    }

    fn append_log_then_may_wait(
        &self,
        group: GroupId,
        entries: Vec<(u64, Vec<u8>)>,
        written: AppendDone,
        done: AppendDone,
    ) {
        self.append_log_with(group, entries, written, done, true)
    }

    fn append_log_unsynced(&self, group: GroupId, entries: &[(u64, Vec<u8>)]) -> Result<()> {
        self.append_log_here(group, entries, false)
    }

    /// Both lanes' entries, merged in index order (an index is in one).
    fn read_log(
        &self,
        group: GroupId,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>> {
        if from >= to {
            return Ok(Vec::new());
        }
        let limit = limit.min(READ_ENTRIES_MAX);
        let main = read_log_in(&self.log, group, from, to, limit)?;
        let Some(bulk) = self.bulk_of(group) else {
            return Ok(main);
        };
        let bulk = read_log_in(bulk, group, from, to, limit)?;
        if bulk.is_empty() {
            return Ok(main);
        }
        let mut out = Vec::with_capacity((main.len() + bulk.len()).min(limit));
        let (mut main, mut bulk) = (main.into_iter().peekable(), bulk.into_iter().peekable());
        while out.len() < limit {
            let next = match (main.peek(), bulk.peek()) {
                (Some((m, _)), Some((b, _))) if m <= b => main.next(),
                (Some(_), Some(_)) | (None, Some(_)) => bulk.next(),
                (Some(_), None) => main.next(),
                (None, None) => None,
            };
            let Some(entry) = next else { break };
            out.push(entry);
        }
        Ok(out)
    }

    fn last_log(&self, group: GroupId) -> Result<Option<(u64, Vec<u8>)>> {
        let main = last_log_in(&self.log, group)?;
        let Some(bulk) = self.bulk_of(group) else {
            return Ok(main);
        };
        Ok(match (main, last_log_in(bulk, group)?) {
            (Some(m), Some(b)) => Some(if m.0 >= b.0 { m } else { b }),
            (m, b) => m.or(b),
        })
    }

    /// In both lanes, each synced.
    fn truncate_log(&self, group: GroupId, from: u64) -> Result<()> {
        for db in self.lanes_of(group) {
            let mut wb = rocksdb::WriteBatch::default();
            delete_log_range(&mut wb, db, group, from, u64::MAX);
            self.write_synced_in(db, wb, "truncate raft log")?;
        }
        Ok(())
    }

    fn purge_log(&self, group: GroupId, upto: u64) -> Result<()> {
        for db in self.lanes_of(group) {
            let mut wb = rocksdb::WriteBatch::default();
            delete_log_range(&mut wb, db, group, 0, upto);
            self.write_unsynced_in(db, wb, "purge raft log")?;
        }
        Ok(())
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
        self.finish_unfinished(group)?;
        let mut wb = rocksdb::WriteBatch::default();
        wb.put_cf(self.cf(CF_RAFT_VALUES), value_key(group, name), value);
        self.write_synced(wb, "save raft value")
    }

    fn put_value_unsynced(&self, group: GroupId, name: &str, value: &[u8]) -> Result<()> {
        self.finish_unfinished(group)?;
        let mut wb = rocksdb::WriteBatch::default();
        wb.put_cf(self.cf(CF_RAFT_VALUES), value_key(group, name), value);
        // Left in the write-ahead log's buffer (`manual_wal_flush`), not
        // written out to its file: the next write to this database that
        // flushes or syncs (a synced value, a topic's metadata), a full
        // buffer, or closing the store (RocksDB closes the file, writing
        // its buffer out) takes it out, in order. Until then a killed
        // process loses it as a crashed machine would, which the contract
        // allows: its one caller is a group's commit index, which may go
        // back and is learnt again from the leader. Written out, it cost a
        // `write()` per commit on every replica.
        self.written(self.db.write(wb), "save raft value")
    }

    fn value(&self, group: GroupId, name: &str) -> Result<Option<Vec<u8>>> {
        self.db
            .get_cf(self.cf(CF_RAFT_VALUES), value_key(group, name))
            .map_err(storage("read raft value"))
    }

    /// The group's log, its values and its snapshot are in different
    /// databases and files, so they cannot go in one write. Marked first
    /// ([`DELETING`], synced): a crash part way then leaves a group that
    /// the next open finishes deleting ([`RocksStore::open`]), never values
    /// without a log (a replica loaded with nothing behind its applied
    /// state) nor a log or snapshot that a group made again later with the
    /// same id would find.
    fn delete_group(&self, group: GroupId) -> Result<()> {
        let mut wb = rocksdb::WriteBatch::default();
        wb.put_cf(self.cf(CF_RAFT_VALUES), value_key(group, DELETING), []);
        self.write_synced(wb, "delete raft group")?;
        // Not under the lock: other groups' values do not wait for these
        // syncs. (Nothing else writes this group meanwhile: the caller
        // holds it.)
        let erased = self.erase_group(group);
        let mut unfinished = self.unfinished.lock().unwrap_or_else(|e| e.into_inner());
        match erased {
            Ok(()) => unfinished.remove(&group),
            Err(_) => unfinished.insert(group),
        };
        erased
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

    /// The insert hints are set where ADR 43 says, as RocksDB records the
    /// options it opened with (its `OPTIONS-*` file): per group for the
    /// elements and the log lanes, per key for the groups' values.
    #[test]
    fn memtable_inserts_are_hinted_per_group_and_values_and_producers_per_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path()).unwrap();
        let hint_of = |db_dir: &Path, cf: &str| -> Option<String> {
            let newest = std::fs::read_dir(db_dir)
                .unwrap()
                .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                .filter(|n| n.starts_with("OPTIONS-"))
                .max_by_key(|n| n[8..].parse::<u64>().unwrap_or(0))
                .expect("an OPTIONS file");
            let text = std::fs::read_to_string(db_dir.join(newest)).unwrap();
            let section = text
                .split("[CFOptions \"")
                .find(|s| s.starts_with(&format!("{cf}\"")))?;
            section
                .lines()
                .find_map(|l| {
                    l.trim()
                        .strip_prefix("memtable_insert_with_hint_prefix_extractor=")
                })
                .map(str::to_string)
        };
        let hint = |cf| hint_of(dir.path(), cf);
        assert_eq!(hint(CF_ELEMENTS).as_deref(), Some("rocksdb.FixedPrefix.8"));
        for cf in [CF_RAFT_VALUES, CF_PRODUCERS] {
            assert_eq!(hint(cf).as_deref(), Some("rocksdb.CappedPrefix.64"), "{cf}");
        }
        assert_eq!(
            hint_of(&dir.path().join("log"), CF_RAFT_LOG).as_deref(),
            Some("rocksdb.FixedPrefix.8")
        );
        drop(store);
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
        copy_files(&from.join("bulk"), &to.join("bulk"));
        crashed_copy_without_bulk(from, to)
    }

    /// The same, but the bulk lane's files lost.
    fn crashed_copy_without_bulk(from: &Path, to: &Path) -> RocksStore {
        copy_files(from, to);
        copy_files(&from.join("log"), &to.join("log"));
        RocksStore::open(to).unwrap()
    }

    fn copy_files(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() && entry.file_name() != "LOCK" {
                std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
            }
        }
    }

    /// Hands `entries` of `group` to `store`'s writers and waits until they
    /// are synced and out of their lane.
    fn append_and_wait(store: &RocksStore, group: GroupId, entries: Vec<(u64, Vec<u8>)>) {
        let (tx, rx) = std::sync::mpsc::channel();
        store.append_log_then(
            group,
            entries,
            Box::new(|_| {}),
            Box::new(move |outcome| tx.send(outcome).unwrap()),
        );
        rx.recv().unwrap().unwrap();
        wait_out_of_lane(store, group);
    }

    /// Waits until `group` has no append in flight (the writer leaves the
    /// lane just after telling the outcome).
    fn wait_out_of_lane(store: &RocksStore, group: GroupId) {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while store.lanes.busy(group) {
            assert!(std::time::Instant::now() < until, "still in its lane");
            std::thread::yield_now();
        }
    }

    /// A small append to the main lane is written by its caller: it reads
    /// back once `append_log_then` returns, told so on the caller's thread,
    /// and the writer's thread only syncs it. A larger one is written by
    /// the writer's thread. Acknowledged, both survive a crash.
    #[test]
    fn small_appends_are_written_in_place_and_synced_by_the_writer() {
        let (dir, copy) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let g = GroupId(5);
        let store = RocksStore::open(dir.path()).unwrap();
        let entry = |i: u64, len: usize| (i, vec![i as u8; len]);
        let mut want = Vec::new();
        for (i, len, in_place) in [
            (1, 100, true),
            (2, IN_PLACE_BYTES_MAX - 16, true),
            (3, IN_PLACE_BYTES_MAX + 1, false),
            (4, 10, true),
        ] {
            let written_on = Arc::new(std::sync::Mutex::new(None));
            let (tx, rx) = std::sync::mpsc::channel();
            let on = written_on.clone();
            store.append_log_then(
                g,
                vec![entry(i, len)],
                Box::new(move |outcome| {
                    outcome.unwrap();
                    *on.lock().unwrap() = Some(std::thread::current().id());
                }),
                Box::new(move |outcome| tx.send(outcome).unwrap()),
            );
            let here = *written_on.lock().unwrap() == Some(std::thread::current().id());
            assert_eq!(here, in_place, "append {i} of {len} bytes written in place");
            if in_place {
                assert!(
                    store.read_log(g, i, i + 1, 1).unwrap() == vec![entry(i, len)],
                    "append {i} reads back at once"
                );
            }
            rx.recv().unwrap().unwrap();
            wait_out_of_lane(&store, g);
            want.push(entry(i, len));
        }
        let crashed = crashed_copy(dir.path(), copy.path());
        assert!(
            crashed.read_log(g, 1, 5, 10).unwrap() == want,
            "acknowledged appends survive a crash"
        );
    }

    /// A caller that may wait (a follower) has its small append synced in
    /// place while the writer is idle: told before the call returns, on its
    /// own thread, and durable. While the writer has work, or another
    /// caller syncs in place, the sync goes to the writer; and a group's
    /// append handed to the writer is told before its next one.
    #[test]
    fn a_waiting_callers_append_is_synced_in_place_while_the_writer_is_idle() {
        let (dir, copy) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let g = GroupId(6);
        let store = Arc::new(RocksStore::open(dir.path()).unwrap());
        let entry = |i: u64, len: usize| (i, vec![i as u8; len]);
        let told = Arc::new(std::sync::Mutex::new(Vec::new()));
        let tell = |i: u64| -> AppendDone {
            let told = told.clone();
            Box::new(move |outcome| {
                outcome.unwrap();
                told.lock().unwrap().push((i, std::thread::current().id()));
            })
        };
        let here = std::thread::current().id();

        // Idle: synced in place.
        store.append_log_then_may_wait(g, vec![entry(1, 100)], Box::new(|_| {}), tell(1));
        assert_eq!(*told.lock().unwrap(), [(1, here)], "told before returning");
        wait_out_of_lane(&store, g);

        // Another caller syncing in place: this one's sync goes to the writer.
        let claim = store.log_writer.claim_idle().expect("the writer is idle");
        store.append_log_then_may_wait(g, vec![entry(2, 100)], Box::new(|_| {}), tell(2));
        assert!(
            store.log_writer.claim_idle().is_none(),
            "claimed while one syncs in place"
        );
        drop(claim);
        wait_out_of_lane(&store, g);
        let second = told.lock().unwrap()[1];
        assert_eq!(second.0, 2);
        assert_ne!(second.1, here, "synced by the writer's thread");

        // A group's append at the writer (too large to write in place),
        // then its next, handed over once the first is written: told in
        // that order, the second not synced in place ahead of the first.
        let (s, next) = (store.clone(), tell(4));
        store.append_log_then(
            g,
            vec![entry(3, IN_PLACE_BYTES_MAX + 1)],
            Box::new(move |outcome| {
                outcome.unwrap();
                s.append_log_then_may_wait(g, vec![entry(4, 100)], Box::new(|_| {}), next);
            }),
            tell(3),
        );
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while told.lock().unwrap().len() < 4 {
            assert!(std::time::Instant::now() < until, "not told within 10 s");
            std::thread::yield_now();
        }
        wait_out_of_lane(&store, g);
        let order: Vec<u64> = told.lock().unwrap().iter().map(|t| t.0).collect();
        assert_eq!(order, [1, 2, 3, 4], "told in the order handed over");
        assert!(
            store.log_writer.claim_idle().is_some(),
            "the writer is idle again once all are told"
        );

        let crashed = crashed_copy(dir.path(), copy.path());
        assert!(
            crashed.read_log(g, 1, 5, 10).unwrap()
                == vec![
                    entry(1, 100),
                    entry(2, 100),
                    entry(3, IN_PLACE_BYTES_MAX + 1),
                    entry(4, 100)
                ],
            "acknowledged appends survive a crash"
        );
    }

    /// Large appends go to the bulk lane's own log (lose its files and
    /// they are gone, the small ones not), are as durable as small ones
    /// once acknowledged, and read back in order with them. A small append
    /// handed over while its group's large one is in flight follows it
    /// into the bulk lane; once nothing is in flight, small ones go to the
    /// main lane again.
    #[test]
    fn large_appends_have_a_log_of_their_own() {
        let (dir, copy1, copy2) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let (g, other) = (GroupId(3), GroupId(4));
        let large = |i: u64| (i, vec![i as u8; lanes::BULK_BYTES_MIN]);
        let small = |i: u64| (i, format!("small-{i}").into_bytes());
        let store = Arc::new(RocksStore::open(dir.path()).unwrap());
        append_and_wait(&store, g, vec![small(1)]);
        append_and_wait(&store, g, vec![large(2)]);
        append_and_wait(&store, g, vec![small(3)]);
        append_and_wait(&store, other, vec![small(1)]);
        // 5 is handed over when 4 is written, before 4 is synced, as a
        // group's Raft does.
        let (tx, rx) = std::sync::mpsc::channel();
        let (s, tx4) = (store.clone(), tx.clone());
        store.append_log_then(
            g,
            vec![large(4)],
            Box::new(move |outcome| {
                outcome.unwrap();
                s.append_log_then(
                    g,
                    vec![small(5)],
                    Box::new(|_| {}),
                    Box::new(move |outcome| tx.send((5, outcome)).unwrap()),
                );
            }),
            Box::new(move |outcome| tx4.send((4, outcome)).unwrap()),
        );
        let mut done: Vec<u64> = (0..2)
            .map(|_| {
                let (i, outcome) = rx.recv().unwrap();
                outcome.unwrap();
                i
            })
            .collect();
        done.sort_unstable();
        assert_eq!(done, [4, 5]);
        wait_out_of_lane(&store, g);
        append_and_wait(&store, g, vec![small(6)]);
        let want = vec![small(1), large(2), small(3), large(4), small(5), small(6)];
        assert!(store.read_log(g, 1, 7, 100).unwrap() == want);

        let crashed = crashed_copy(dir.path(), copy1.path());
        assert!(
            crashed.read_log(g, 1, 7, 100).unwrap() == want,
            "an acknowledged large append survives a crash"
        );
        assert_eq!(crashed.last_log(g).unwrap(), Some(small(6)));
        assert_eq!(crashed.read_log(g, 2, 6, 2).unwrap().len(), 2);

        let without = crashed_copy_without_bulk(dir.path(), copy2.path());
        let indexes: Vec<u64> = without
            .read_log(g, 1, 7, 100)
            .unwrap()
            .into_iter()
            .map(|(i, _)| i)
            .collect();
        assert_eq!(
            indexes,
            [1, 3, 6],
            "the large ones, and 5 behind 4, are in the bulk lane only"
        );
        assert_eq!(without.last_log(other).unwrap(), Some(small(1)));
    }

    /// An append over entries that were not truncated first replaces them
    /// in whichever lane they were, and truncation, purging and deleting a
    /// group reach both lanes, also after a reopen.
    #[test]
    fn both_lanes_are_replaced_truncated_and_purged() {
        let dir = tempfile::tempdir().unwrap();
        let g = GroupId(9);
        let large = |i: u64| (i, vec![i as u8; lanes::BULK_BYTES_MIN]);
        let small = |i: u64| (i, format!("small-{i}").into_bytes());
        {
            let store = RocksStore::open(dir.path()).unwrap();
            store.append_log(g, &[small(1), small(2)]).unwrap();
            store.append_log(g, &[large(3)]).unwrap();
            store.append_log(g, &[small(4)]).unwrap();
            // Large over small 2, small over large 3.
            store.append_log(g, &[large(2)]).unwrap();
            store.append_log(g, &[small(3)]).unwrap();
            assert!(
                store.read_log(g, 0, 10, 10).unwrap()
                    == vec![small(1), large(2), small(3), small(4)]
            );
        }
        let store = RocksStore::open(dir.path()).unwrap();
        assert!(
            store.read_log(g, 0, 10, 10).unwrap() == vec![small(1), large(2), small(3), small(4)],
            "after a reopen, each index once"
        );
        store.append_log(g, &[large(5)]).unwrap();
        store.truncate_log(g, 5).unwrap();
        assert_eq!(store.last_log(g).unwrap(), Some(small(4)));
        store.purge_log(g, 2).unwrap();
        assert!(store.read_log(g, 0, 10, 10).unwrap() == vec![small(3), small(4)]);
        store.append_log(g, &[large(5)]).unwrap();
        store.put_value(g, "vote", b"v").unwrap();
        store.delete_group(g).unwrap();
        assert_eq!(store.last_log(g).unwrap(), None);
        assert!(store.read_log(g, 0, 10, 10).unwrap().is_empty());
    }

    /// Puts into `store` a group `g` with entries in both lanes, a vote and
    /// a kept snapshot.
    fn a_group_in_every_part(store: &RocksStore, g: GroupId) {
        use std::io::Write;
        let large = vec![7; lanes::BULK_BYTES_MIN];
        store
            .append_log(g, &[(1, b"small".to_vec()), (2, large)])
            .unwrap();
        store.put_value(g, "vote", b"v").unwrap();
        let mut f = store.snapshot_create().unwrap();
        f.write_all(b"snapshot").unwrap();
        store.snapshot_keep(g, f).unwrap();
    }

    /// Whether `store` holds nothing of `g`: no log in either lane, no
    /// values, no snapshot, and is not listed.
    fn holds_nothing_of(store: &RocksStore, g: GroupId) -> bool {
        store.last_log(g).unwrap().is_none()
            && store.read_log(g, 0, 10, 10).unwrap().is_empty()
            && log_groups(&store.bulk).unwrap().iter().all(|x| *x != g)
            && store.value(g, "vote").unwrap().is_none()
            && store.value(g, DELETING).unwrap().is_none()
            && store.snapshot_open(g).unwrap().is_none()
            && !store.groups().unwrap().contains(&g)
    }

    /// A deletion cut short by a crash (its mark written, nothing else
    /// yet) is finished by the next open, which leaves other groups be; the
    /// group made again with the same id then starts from nothing.
    #[test]
    fn a_deletion_cut_short_by_a_crash_is_finished_at_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let (g, other) = (GroupId(9), GroupId(10));
        {
            let store = RocksStore::open(dir.path()).unwrap();
            a_group_in_every_part(&store, g);
            a_group_in_every_part(&store, other);
            // What `delete_group` writes first; then the crash.
            let mut wb = rocksdb::WriteBatch::default();
            wb.put_cf(store.cf(CF_RAFT_VALUES), value_key(g, DELETING), []);
            store.write_synced(wb, "test").unwrap();
        }
        let store = RocksStore::open(dir.path()).unwrap();
        assert!(holds_nothing_of(&store, g), "the deletion was finished");
        assert_eq!(store.groups().unwrap(), [other]);
        assert_eq!(store.read_log(other, 0, 10, 10).unwrap().len(), 2);
        assert!(store.snapshot_open(other).unwrap().is_some());
        store.put_value(g, "vote", b"again").unwrap();
        drop(store);
        let store = RocksStore::open(dir.path()).unwrap();
        assert_eq!(
            store.value(g, "vote").unwrap().as_deref(),
            Some(&b"again"[..])
        );
        assert_eq!(store.last_log(g).unwrap(), None);
    }

    /// A deletion that failed part way while the node ran is finished when
    /// the group is made again (its vote saved), not at the next open: the
    /// group made again survives it.
    #[test]
    fn a_group_made_again_after_a_failed_deletion_is_kept_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let g = GroupId(9);
        {
            let store = RocksStore::open(dir.path()).unwrap();
            a_group_in_every_part(&store, g);
            // `delete_group` with its erasing failed: marked, all else kept.
            let mut wb = rocksdb::WriteBatch::default();
            wb.put_cf(store.cf(CF_RAFT_VALUES), value_key(g, DELETING), []);
            store.write_synced(wb, "test").unwrap();
            store.unfinished.lock().unwrap().insert(g);
            store.put_value(g, "vote", b"again").unwrap();
            assert_eq!(store.read_log(g, 0, 10, 10).unwrap(), vec![]);
            assert!(store.snapshot_open(g).unwrap().is_none());
        }
        let store = RocksStore::open(dir.path()).unwrap();
        assert_eq!(store.groups().unwrap(), [g]);
        assert_eq!(
            store.value(g, "vote").unwrap().as_deref(),
            Some(&b"again"[..])
        );
        store.delete_group(g).unwrap();
        assert!(holds_nothing_of(&store, g));
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

    /// A commit index saved unsynced stays in the write-ahead log's buffer
    /// (no `write()` a commit): a crash may lose it, reading it back does
    /// not, and closing the store writes it out.
    #[test]
    fn an_unsynced_value_waits_in_the_buffer_until_the_store_closes() {
        let (dir, copy) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let group = GroupId(5);
        let store = RocksStore::open(dir.path()).unwrap();
        store.put_value(group, "committed", b"1").unwrap();
        let before = wal_files(dir.path());
        for i in 2..=50u8 {
            store.put_value_unsynced(group, "committed", &[i]).unwrap();
        }
        assert_eq!(wal_files(dir.path()), before, "a value was written out");
        assert_eq!(store.value(group, "committed").unwrap().unwrap(), [50]);
        let crashed = crashed_copy(dir.path(), copy.path());
        assert_eq!(crashed.value(group, "committed").unwrap().unwrap(), b"1");
        drop(crashed);
        drop(store);
        let reopened = RocksStore::open(dir.path()).unwrap();
        assert_eq!(reopened.value(group, "committed").unwrap().unwrap(), [50]);
    }

    /// The sizes of the write-ahead log files in `dir`, by name.
    fn wal_files(dir: &Path) -> std::collections::BTreeMap<String, u64> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
            .map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                (name, e.metadata().unwrap().len())
            })
            .collect()
    }

    /// The log lane starts on a filled write-ahead log file and writes
    /// over it: synced appends leave every file's size as it was (a sync
    /// that extends a file must also commit its new size), and they read
    /// back after a crash, the reused file's stale records told apart.
    #[test]
    fn the_log_lane_writes_over_a_filled_file() {
        let (dir, copy) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let g = GroupId(9);
        let store = RocksStore::open(dir.path()).unwrap();
        let before = wal_files(&dir.path().join("log"));
        assert!(
            before.values().any(|&n| n >= LOG_LANE_BYTES as u64),
            "no filled file: {before:?}"
        );
        let entry = |i: u64| (i, vec![i as u8; 4000]);
        for i in 1..=200 {
            append_and_wait(&store, g, vec![entry(i)]);
        }
        let after = wal_files(&dir.path().join("log"));
        assert_eq!(before, after, "a file grew or was made");
        let crashed = crashed_copy(dir.path(), copy.path());
        let read = crashed.read_log(g, 1, 1000, 1000).unwrap();
        assert_eq!(read, (1..=200).map(entry).collect::<Vec<_>>());
        drop(crashed);
        // And on the next open, the log left by the crash is read again.
        let reopened = RocksStore::open(copy.path()).unwrap();
        assert_eq!(reopened.last_log(g).unwrap(), Some(entry(200)));
    }

    /// A store that an earlier version wrote, with the main lane's log in
    /// the main database, opens with every entry in the log lane, and
    /// without the old column family.
    #[test]
    fn a_log_kept_by_an_earlier_version_is_moved_to_the_log_lane() {
        let dir = tempfile::tempdir().unwrap();
        let g = GroupId(4);
        let entries: Vec<_> = (1..=3u64).map(|i| (i, vec![i as u8; 10])).collect();
        {
            let mut opts = Options::default();
            opts.create_if_missing(true);
            opts.create_missing_column_families(true);
            let cfs = CFS.iter().chain([&CF_RAFT_LOG]);
            let db = DB::open_cf(&opts, dir.path(), cfs).unwrap();
            let mut wb = rocksdb::WriteBatch::default();
            put_log(&mut wb, db.cf_handle(CF_RAFT_LOG).unwrap(), g, &entries);
            let values = db.cf_handle(CF_RAFT_VALUES).unwrap();
            wb.put_cf(values, value_key(g, "vote"), b"v");
            db.write(wb).unwrap();
        }
        let store = RocksStore::open(dir.path()).unwrap();
        assert_eq!(store.read_log(g, 1, 10, 10).unwrap(), entries);
        assert_eq!(store.value(g, "vote").unwrap().unwrap(), b"v");
        drop(store);
        let cfs = DB::list_cf(&Options::default(), dir.path()).unwrap();
        assert!(!cfs.iter().any(|c| c == CF_RAFT_LOG), "{cfs:?}");
        let store = RocksStore::open(dir.path()).unwrap();
        assert_eq!(store.read_log(g, 1, 10, 10).unwrap(), entries);
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
