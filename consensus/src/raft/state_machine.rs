//! openraft's state machine for one topic: applies [`Command`]s through the
//! topic [`Machine`] into the node's [`Store`], and snapshots the topic.
//!
//! Everything one `apply` call changes (elements, producer windows, the
//! last applied log id and membership) goes to the store in one atomic
//! batch, so a crash can never leave elements without the log position that
//! produced them (a replay would append them twice).
//!
//! With [`TopicStateMachine::publishing_to`], every apply also shows the new
//! range to the node's [`Topics`], which serves reads and subscriptions.
//!
//! Snapshots never sit whole in memory ([`super::snapshot`]). Building one
//! copies no element (ADR 36): the kept file holds the header and the
//! producer windows, read from the store as it was when openraft asked for
//! the snapshot ([`Store::read_fixed`]), on another thread, while the group
//! goes on applying, and refers to the store for the elements up to the
//! header's last seq, which no apply changes. Only when the snapshot is
//! read (openraft sends it to a follower) is a full copy made, page by
//! page, from the store ([`materialize`]). A build ends kept only if
//! nothing newer was kept meanwhile (an install of a leader's snapshot).
//!
//! Installing one checks the received file through, keeps it, then writes
//! its elements in bounded batches: the first batch (synced)
//! marks the install as under way ([`INSTALLING`]), the last (synced) writes
//! the topic's metadata and the applied state and clears the mark. A crash
//! in between leaves the mark, and [`TopicStateMachine::open`] finishes the
//! install from the kept file before anything else. When the snapshot only
//! extends what this replica holds (the same topic, no element past the
//! snapshot's last), the replica's elements stay in place while it
//! installs: they are the same history's, so readers see no gap.
//!
//! With [`TopicStateMachine::with_upkeep`], it also counts the bytes it
//! applies and asks its group for a snapshot and a purge when they make one
//! due ([`super::log_bytes`]): openraft's own policy counts entries only.

use std::io::{BufReader, BufWriter, Seek, SeekFrom};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::TryStreamExt;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{OptionalSend, RaftSnapshotBuilder};
use openraft_legacy::network_v1::SnapshotReceiverFactory;
use serde_bytes::ByteBuf;

use super::log_bytes::{Ask, Due, LogBytes};
use super::log_store::{DurableApplied, io_err};
use super::snapshot::{
    Header, PRODUCERS_MAX, Record, SnapshotData, SnapshotLimits, SnapshotReader, SnapshotWriter,
};
use super::{
    Command, CommandResult, Entry, EntryPayload, LogId, SnapshotMeta, StoredMembership, TypeConfig,
    blocking, quick_unless_large, start_blocking, storage_inline,
};
use crate::bugs::{self, Bug};
use crate::codec::{decode, encode};
use crate::error::Error;
use crate::local::Topics;
use crate::store::{
    Fixed, GroupId, Op, Paced, RaftLogStore, SnapshotFile, Started, Store, WriteBatch,
};
use crate::topic::appender::{self, Windows};
use crate::topic::directory::{DIRECTORY, Directory, NameCommand, NameRecord};
use crate::topic::handlers::{HandlerCommand, Handlers};
use crate::topic::{Machine, PRODUCER_WINDOW, Producer, TopicId, TopicMeta};

/// The value name under which the applied state is kept (see
/// [`applied_voters`]).
pub const APPLIED: &str = "applied";
/// The value name that, while not empty, says a snapshot install is under
/// way: its first batches are written, its last is not.
const INSTALLING: &str = "installing";
/// The raft value that holds the topic's handlers ([`Handlers`]).
const HANDLERS: &str = "handlers";
/// The raft value that holds how far each handler got (written far more
/// often than the handlers themselves).
const HANDLERS_DONE: &str = "handlers-done";
/// The buffer between a snapshot file and its encoding, either way.
const SNAPSHOT_IO_BYTES: usize = 64 * 1024;
/// Directory records read at once when a replica rebuilds the directory.
const DIRECTORY_PAGE: usize = 1024;
/// The most bytes of directory records read at once.
const SNAPSHOT_PAGE_BYTES: usize = 4 * 1024 * 1024;

type Membership = StoredMembership;
/// A snapshot as openraft hands it over.
type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;

/// The last applied log id and membership, stored with the data.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Applied {
    last_applied: Option<LogId>,
    membership: Membership,
}

/// The last log id `group`'s state machine applied, as stored (durable
/// only after `RaftLogStore::persist_applied`).
pub fn applied_log_id(raft: &dyn RaftLogStore, group: GroupId) -> Result<Option<LogId>, Error> {
    Ok(match raft.value(group, APPLIED)? {
        Some(bytes) => decode::<Applied>(&bytes)?.last_applied,
        None => None,
    })
}

/// One topic's state machine.
pub struct TopicStateMachine {
    store: Arc<dyn Store>,
    group: GroupId,
    machine: Option<Machine>,
    /// Producer windows as of the last applied append (read from `store`
    /// once per producer, then kept across applies).
    windows: Windows,
    /// The handlers bound to the topic, as applied.
    handlers: Arc<Handlers>,
    /// The name directory, in the [`DIRECTORY`] group only: what its
    /// topic's records say.
    directory: Option<Directory>,
    applied: Applied,
    /// Where snapshots are kept (the same database as `store`).
    raft: Arc<dyn RaftLogStore>,
    /// The group's kept snapshot, shared with the builders handed out.
    kept: Arc<Mutex<Kept>>,
    /// Where readers learn of what was applied.
    readers: Option<Topics>,
    limits: SnapshotLimits,
    /// The log's bytes, and where to ask for a snapshot or a purge because
    /// of them (none: never asks). Shared with the builders handed out: a
    /// build kept after the last apply asks for its purge itself.
    upkeep: Option<Arc<Mutex<Upkeep>>>,
    /// Where a snapshot's build says up to which log index what was
    /// applied is durable (it flushes the store), for the log store's
    /// purge.
    durable: DurableApplied,
}

/// The group's kept snapshot. Its lock is held while the file is replaced
/// or opened, and through a whole install: a snapshot built meanwhile (off
/// the apply path) is kept only if it is newer than what is kept then.
#[derive(Default)]
struct Kept {
    /// What the kept snapshot holds, once this process built or installed
    /// it (`None` while an install replaces it, or not yet known).
    meta: Option<SnapshotMeta>,
    /// Whether the kept file refers to the store for its elements (one
    /// built here), rather than holding them (one installed): from which
    /// seq on the store must keep them for it (the topic's first at the
    /// snapshot's position; 0 without a topic).
    refers: Option<u64>,
    /// The same for the snapshot being built, until it is kept or not.
    building: Option<u64>,
}

/// Locks `m`; a panic while it was held leaves plain values behind.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A group's log counted in bytes, and the way to its upkeep task.
struct Upkeep {
    bytes: LogBytes,
    asks: tokio::sync::mpsc::Sender<Ask>,
}

impl TopicStateMachine {
    /// Loads the state machine of `group` (the topic with the same id).
    /// `store` and `raft` are the node's one database seen through its two
    /// traits: the applied state is written through `store`, in the same
    /// batch as the data, and read back through `raft`.
    pub async fn open(
        store: Arc<dyn Store>,
        raft: Arc<dyn RaftLogStore>,
        group: GroupId,
    ) -> Result<Self, Error> {
        let (s, r) = (store.clone(), raft.clone());
        let (machine, directory, applied, resumed, handlers) = blocking(move || {
            // The kept snapshot is then the one just installed.
            let resumed = installing(&*r, group)?;
            if resumed {
                install_kept(&*s, &*r, group, None, SnapshotLimits::default())?;
            }
            let topic = TopicId(group.0);
            let machine = match s.topic(topic)? {
                Some(meta) => Some(Machine::new(meta, s.last_seq(topic)?)),
                None => None,
            };
            let applied = r
                .value(group, APPLIED)?
                .map(|b| decode::<Applied>(&b))
                .transpose()?
                .unwrap_or_default();
            let directory = load_directory(&*s, group)?;
            let handlers = load_handlers(&*r, group)?;
            Ok((machine, directory, applied, resumed, handlers))
        })
        .await?;
        Ok(Self {
            store,
            group,
            machine,
            windows: Windows::default(),
            handlers: Arc::new(handlers),
            directory,
            kept: Arc::new(Mutex::new(Kept {
                meta: resumed.then(|| snapshot_meta(&applied)),
                refers: None,
                building: None,
            })),
            applied,
            raft,
            readers: None,
            limits: SnapshotLimits::default(),
            upkeep: None,
            durable: DurableApplied::default(),
        })
    }

    /// Shares `durable` with the group's log store.
    pub fn sharing_durable(mut self, durable: DurableApplied) -> Self {
        self.durable = durable;
        self
    }

    /// Counts the log's bytes in `bytes`, and sends what that asks for
    /// (a snapshot, a purge) to `asks`.
    pub fn with_upkeep(mut self, bytes: LogBytes, asks: tokio::sync::mpsc::Sender<Ask>) -> Self {
        self.upkeep = Some(Arc::new(Mutex::new(Upkeep { bytes, asks })));
        self
    }

    /// Asks for a snapshot if what was applied since the last makes one due.
    async fn ask_for_snapshot_if_due(&mut self) {
        let (raft, group) = (self.raft.clone(), self.group);
        let Some(upkeep) = self.upkeep.clone() else {
            return;
        };
        let due = lock(&upkeep).bytes.due();
        if due == Due::NeedSize {
            let size = blocking(move || kept_snapshot_bytes(&*raft, group)).await;
            lock(&upkeep).bytes.snapshot_size(size.unwrap_or_else(|e| {
                tracing::warn!(group = group.0, "reading the kept snapshot's size: {e}");
                0
            }));
        }
        let mut upkeep = lock(&upkeep);
        if upkeep.bytes.due() == Due::Yes && upkeep.asks.try_send(Ask::Snapshot).is_ok() {
            upkeep.bytes.asked();
        }
    }

    /// Builds and installs snapshots within `limits`.
    pub fn with_snapshot_limits(mut self, limits: SnapshotLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Publishes every applied change to `topics` (and what is applied now).
    pub fn publishing_to(mut self, topics: Topics) -> Self {
        self.readers = Some(topics);
        self.publish(false);
        self
    }

    /// Shows readers the topic as applied; `existed` says whether there was
    /// a topic before, which is gone if there is none now.
    fn publish(&self, existed: bool) {
        let Some(readers) = &self.readers else { return };
        let keep_from = {
            let kept = lock(&self.kept);
            kept.refers.into_iter().chain(kept.building).min()
        };
        match &self.machine {
            Some(m) => readers.publish_replica(m.meta(), m.range(), &self.handlers, keep_from),
            None if existed => readers.retire_replica(self.topic()),
            None => {}
        }
    }

    /// The handlers bound to the topic, as this replica has applied them.
    pub fn handlers(&self) -> &Handlers {
        &self.handlers
    }

    /// The topic as this replica has applied it (`None` before creation).
    pub fn machine(&self) -> Option<&Machine> {
        self.machine.as_ref()
    }

    fn topic(&self) -> TopicId {
        TopicId(self.group.0)
    }

    /// Starts building a snapshot of the current state: returns once the
    /// store's state is fixed for it ([`Store::read_fixed`]), so that
    /// applies go on while its producer windows are written into a new
    /// file, which is then kept as the group's snapshot (if nothing newer
    /// is kept by then) and opened to be read.
    async fn start_build(&mut self) -> Result<Builder, Error> {
        let header = Header {
            applied: ByteBuf::from(encode(&self.applied)?),
            meta: self.machine.as_ref().map(|m| m.meta().clone()),
            last_seq: self.machine.as_ref().map_or(0, Machine::last_seq),
            handlers: (*self.handlers).clone(),
        };
        let meta = snapshot_meta(&self.applied);
        // The store keeps the elements this snapshot will be copied from
        // until it is replaced (the trimmer stops below them).
        lock(&self.kept).building = Some(self.machine.as_ref().map_or(0, |m| m.range().first));
        let (store, raft, group, kept) = (
            self.store.clone(),
            self.raft.clone(),
            self.group,
            self.kept.clone(),
        );
        let for_copy = raft.clone();
        let (durable, index) = (
            self.durable.clone(),
            meta.last_log_id.as_ref().map_or(0, |l| l.index),
        );
        let made_from = self.source();
        let copy = move |mut fixed_tx: Option<tokio::sync::oneshot::Sender<()>>| {
            let mut written = None;
            store.read_fixed(&mut |view| {
                if let Some(tx) = fixed_tx.take() {
                    let _ = tx.send(());
                }
                written = Some(write_referring(view, &*for_copy, group, &header)?);
                Ok(())
            })?;
            // What was applied up to the snapshot is made durable here, off
            // the group's tasks, so that the purge that follows need not.
            for_copy.persist_applied()?;
            durable.reached(index);
            written.ok_or_else(|| Error::Storage("the store read nothing fixed".into()))
        };
        let snapshot = meta.clone();
        let upkeep = self.upkeep.clone();
        let keep = move |file: Result<SnapshotFile, Error>| match file {
            Ok(file) => keep_built(&*raft, group, &kept, upkeep.as_deref(), &snapshot, file),
            Err(e) => {
                lock(&kept).building = None;
                Err(e)
            }
        };
        let work = if storage_inline() {
            // The simulator: the copy now (from the fixed view), the keep
            // when openraft's build task gets to it, after whatever the
            // node did meanwhile (applies, an install).
            let file = copy(None);
            Started::Later(Box::new(move || keep(file)))
        } else {
            let (fixed_tx, fixed) = tokio::sync::oneshot::channel();
            let work = start_blocking(move || keep(copy(Some(fixed_tx))));
            // An error instead: the work failed first, and says why below.
            let _ = fixed.await;
            work
        };
        Ok(Builder {
            meta,
            work,
            source: Some(made_from),
        })
    }

    /// Where this group's snapshots find their elements.
    fn source(&self) -> Source {
        Source {
            store: self.store.clone(),
            raft: self.raft.clone(),
            group: self.group,
            limits: self.limits,
            kept: self.kept.clone(),
        }
    }
}

/// Writes a snapshot file of `group`'s topic from `view` that refers to the
/// store for its elements: `header` and the producer windows.
fn write_referring(
    view: &dyn Fixed,
    raft: &dyn RaftLogStore,
    group: GroupId,
    header: &Header,
) -> Result<SnapshotFile, Error> {
    let topic = TopicId(group.0);
    let file = raft.snapshot_create()?;
    let mut out = SnapshotWriter::referring(
        BufWriter::with_capacity(SNAPSHOT_IO_BYTES, Paced::new(file)),
        header,
    )?;
    if header.meta.is_some() {
        for (id, window) in view.producers(topic, PRODUCERS_MAX as usize)? {
            out.producer(&id, &window)?;
        }
    }
    finished(out)
}

/// The file `out` wrote, flushed.
fn finished(out: SnapshotWriter<BufWriter<Paced>>) -> Result<SnapshotFile, Error> {
    Ok(out
        .finish()?
        .into_inner()
        .map_err(|e| Error::Storage(format!("writing a snapshot: {}", e.error())))?
        .into_file())
}

/// Where a snapshot that refers to the store finds its elements, and where
/// a copy made with them is kept.
#[derive(Clone)]
struct Source {
    store: Arc<dyn Store>,
    raft: Arc<dyn RaftLogStore>,
    group: GroupId,
    limits: SnapshotLimits,
    kept: Arc<Mutex<Kept>>,
}

impl Source {
    /// Snapshot data that is a full copy of `referring`, the snapshot
    /// `meta` names (made when first read: [`SnapshotData::pending`]).
    fn pending(self, meta: SnapshotMeta, referring: SnapshotFile) -> SnapshotData {
        SnapshotData::pending(Box::new(move || {
            let copy = materialize(&self, referring)?;
            self.keep_copy(&meta, copy)
        }))
    }

    /// Keeps `copy`, a full copy of the snapshot `meta` names, in place of
    /// the kept one if that is still the one it copies (so the next
    /// follower that needs it is sent the same file, not another copy);
    /// returns it open at its start either way.
    fn keep_copy(&self, meta: &SnapshotMeta, copy: SnapshotFile) -> Result<SnapshotFile, Error> {
        let mut kept = lock(&self.kept);
        let same = kept
            .meta
            .as_ref()
            .is_some_and(|k| k.last_log_id == meta.last_log_id);
        if !(kept.refers.is_some() && same) {
            return Ok(copy);
        }
        let file = keep_and_open(&*self.raft, self.group, copy)?;
        kept.refers = None;
        Ok(file)
    }
}

/// Copies the snapshot `referring` (one built here, which refers to the
/// store for its elements) into a new file that holds them, as a follower
/// installs it, and returns that file at its start (not kept: removed when
/// dropped). The elements up to the header's last seq are read from the
/// store as it is now: applies never change them, and a trim since the
/// build only removes a prefix, as it would have on every replica; what is
/// read must be one run of seqs ending at the last one.
fn materialize(source: &Source, referring: SnapshotFile) -> Result<SnapshotFile, Error> {
    let mut reader =
        SnapshotReader::referring(BufReader::with_capacity(SNAPSHOT_IO_BYTES, referring))?;
    let mut header = reader.header().clone();
    let topic = TopicId(source.group.0);
    if bugs::on(Bug::SnapshotCopiesPastItsPoint) && header.meta.is_some() {
        header.last_seq = source.store.last_seq(topic)?;
    }
    let limits = source.limits;
    let file = source.raft.snapshot_create()?;
    let mut out = SnapshotWriter::new(
        BufWriter::with_capacity(SNAPSHOT_IO_BYTES, Paced::new(file)),
        &header,
    )?;
    source.store.read_fixed(&mut |view| {
        let (mut next, mut previous) = (1, None::<u64>);
        while header.last_seq > 0 && next <= header.last_seq {
            let page = view.scan(
                topic,
                next,
                limits.batch_elements_max,
                limits.batch_bytes_max,
            )?;
            let Some(last) = page.last() else { break };
            next = last.seq + 1;
            for e in page.iter().filter(|e| e.seq <= header.last_seq) {
                if let Some(p) = previous
                    && e.seq != p + 1
                {
                    return Err(Error::Corrupt(format!(
                        "topic {}: element {} follows {p} in the store",
                        topic.0, e.seq
                    )));
                }
                previous = Some(e.seq);
                out.element(e)?;
            }
        }
        Ok(())
    })?;
    while let Some(record) = reader.next_record()? {
        match record {
            Record::Producer(id, window) => out.producer(&id, &window)?,
            Record::Element(e) => {
                return Err(Error::Corrupt(format!(
                    "element {} in a snapshot that refers to its store",
                    e.seq
                )));
            }
        }
    }
    let mut file = finished(out)?;
    file_bytes(&mut file)?;
    Ok(file)
}

/// Keeps `file`, a snapshot of the state `meta` names, as `group`'s
/// snapshot unless a newer one is kept already (one installed while it was
/// built); returns it open at its start, with its size.
fn keep_built(
    raft: &dyn RaftLogStore,
    group: GroupId,
    kept: &Mutex<Kept>,
    upkeep: Option<&Mutex<Upkeep>>,
    meta: &SnapshotMeta,
    mut file: SnapshotFile,
) -> Result<(SnapshotFile, u64), Error> {
    let mut kept = lock(kept);
    let from = kept.building.take();
    if kept
        .meta
        .as_ref()
        .is_some_and(|k| k.last_log_id >= meta.last_log_id)
    {
        // Not kept: its part file goes when openraft drops it.
        let bytes = file_bytes(&mut file)?;
        return Ok((file, bytes));
    }
    kept.meta = None;
    let mut file = keep_and_open(raft, group, file)?;
    let bytes = file_bytes(&mut file)?;
    kept.refers = Some(from.unwrap_or(0));
    kept.meta = Some(meta.clone());
    drop(kept);
    // Counted now, not at the next apply: after the last append of a burst
    // there may be none for a long time, and the log would wait unpurged.
    if let Some(upkeep) = upkeep {
        let mut upkeep = lock(upkeep);
        let index = meta.last_log_id.map_or(0, |l| l.index);
        if let Some(upto) = upkeep.bytes.built(index, bytes) {
            // Dropped if the task has asks waiting: the next snapshot
            // purges as far.
            let _ = upkeep.asks.try_send(Ask::PurgeUpTo(upto));
        }
        // What was applied while it was built may make the next one due
        // already (openraft ignored the asks made meanwhile).
        if upkeep.bytes.due() == Due::Yes && upkeep.asks.try_send(Ask::Snapshot).is_ok() {
            upkeep.bytes.asked();
        }
    }
    Ok((file, bytes))
}

/// Keeps `file` as `group`'s snapshot and opens it again, at its start.
fn keep_and_open(
    raft: &dyn RaftLogStore,
    group: GroupId,
    file: SnapshotFile,
) -> Result<SnapshotFile, Error> {
    raft.snapshot_keep(group, file)?;
    raft.snapshot_open(group)?
        .ok_or_else(|| Error::Storage("the snapshot just kept is gone".into()))
}

/// What a snapshot of `group` in the state `applied` is called.
fn snapshot_meta(applied: &Applied) -> SnapshotMeta {
    SnapshotMeta {
        last_log_id: applied.last_applied,
        last_membership: applied.membership.clone(),
    }
}

/// The size of `file`, which is left at its start.
fn file_bytes(file: &mut SnapshotFile) -> Result<u64, Error> {
    let at_end = file.seek(SeekFrom::End(0));
    let rewound = file.seek(SeekFrom::Start(0));
    match (at_end, rewound) {
        (Ok(bytes), Ok(_)) => Ok(bytes),
        (Err(e), _) | (_, Err(e)) => Err(Error::Storage(format!("reading a snapshot: {e}"))),
    }
}

/// The size of `group`'s kept snapshot (0: it has none).
fn kept_snapshot_bytes(raft: &dyn RaftLogStore, group: GroupId) -> Result<u64, Error> {
    match raft.snapshot_open(group)? {
        Some(mut file) => file_bytes(&mut file),
        None => Ok(0),
    }
}

/// Whether an install of a snapshot into `group` was interrupted.
fn installing(raft: &dyn RaftLogStore, group: GroupId) -> Result<bool, Error> {
    Ok(raft
        .value(group, INSTALLING)?
        .is_some_and(|v| !v.is_empty()))
}

/// Reads `file` through, checking all of it, and rewinds it.
fn verify(file: &mut SnapshotFile) -> Result<(), Error> {
    let rewind = |file: &mut SnapshotFile| {
        file.seek(SeekFrom::Start(0))
            .map_err(|e| Error::Storage(format!("reading a snapshot: {e}")))
    };
    rewind(file)?;
    let mut reader = SnapshotReader::new(BufReader::with_capacity(SNAPSHOT_IO_BYTES, &mut *file))?;
    while reader.next_record()?.is_some() {}
    rewind(file)?;
    Ok(())
}

/// What an install left the state machine with.
struct Installed {
    meta: Option<TopicMeta>,
    last_seq: u64,
    applied: Applied,
    handlers: Handlers,
}

/// Installs `group`'s kept snapshot into the store, in batches of at most
/// `limits` (see the module documentation). `expect` is the last log id the
/// snapshot was announced with, if known.
fn install_kept(
    store: &dyn Store,
    raft: &dyn RaftLogStore,
    group: GroupId,
    expect: Option<Option<LogId>>,
    limits: SnapshotLimits,
) -> Result<Installed, Error> {
    let file = raft
        .snapshot_open(group)?
        .ok_or_else(|| Error::Corrupt(format!("group {}: no kept snapshot to install", group.0)))?;
    let mut reader = SnapshotReader::new(BufReader::with_capacity(SNAPSHOT_IO_BYTES, file))?;
    let header = reader.header().clone();
    let applied: Applied = decode(&header.applied)?;
    if let Some(expect) = expect
        && expect != applied.last_applied
    {
        return Err(Error::Corrupt(format!(
            "a snapshot announced at {expect:?} holds the state at {:?}",
            applied.last_applied
        )));
    }
    let topic = TopicId(group.0);
    if let Some(m) = &header.meta
        && m.id != topic
    {
        return Err(Error::Corrupt(format!(
            "a snapshot of topic {} sent to group {}",
            m.id.0, group.0
        )));
    }
    // The replica's elements may stay only if the snapshot extends them.
    let extends = match (&header.meta, store.topic(topic)?) {
        (Some(new), Some(old)) => *new == old && store.last_seq(topic)? <= header.last_seq,
        _ => false,
    };
    let mut batch = WriteBatch::default();
    if !extends {
        batch.push(Op::DeleteTopic(topic));
    }
    batch.push(Op::PutRaftValue(
        group,
        INSTALLING.into(),
        encode(&applied.last_applied)?,
    ));
    store.write(&batch)?;
    let mut batch = WriteBatch::default();
    let (mut bytes, mut count) = (0, 0);
    while let Some(record) = reader.next_record()? {
        let size = match &record {
            Record::Element(e) => e.payload.len(),
            Record::Producer(id, _) => id.len() + 24 * PRODUCER_WINDOW,
        };
        if count > 0
            && (bytes + size > limits.batch_bytes_max || count >= limits.batch_elements_max)
        {
            // Unsynced: the last batch is synced, and makes these durable.
            store.write_unsynced(&std::mem::take(&mut batch))?;
            (bytes, count) = (0, 0);
        }
        match record {
            Record::Element(e) => batch.put_element(topic, e),
            Record::Producer(id, window) => batch.put_producer(topic, &id, &window),
        }
        bytes += size;
        count += 1;
    }
    if let Some(m) = &header.meta {
        batch.push(Op::PutTopic(m.clone()));
    }
    put_handlers(&mut batch, group, &header.handlers, true)?;
    batch.push(Op::PutRaftValue(group, APPLIED.into(), encode(&applied)?));
    batch.push(Op::PutRaftValue(group, INSTALLING.into(), Vec::new()));
    store.write(&batch)?;
    Ok(Installed {
        meta: header.meta,
        last_seq: header.last_seq,
        applied,
        handlers: header.handlers,
    })
}

/// What a stopped group's storage says about its topic, without starting it.
#[derive(Debug, Clone)]
pub struct Peek {
    /// `None` before the topic's creation was applied here.
    pub meta: Option<TopicMeta>,
    pub last_seq: u64,
    /// The voters' addresses (`BasicNode::addr`), as last applied.
    pub voters: Vec<String>,
    /// The log index of the membership `voters` come from (0: none yet).
    pub voters_at: u64,
    pub applied_index: u64,
    /// The highest log index held (applied or not).
    pub last_log_index: u64,
    /// The handlers bound to the topic, as last applied.
    pub handlers: Handlers,
}

/// The voters (`BasicNode::addr`) of the membership an [`APPLIED`] value
/// holds, with that membership's log index (0: none yet): for a simulator
/// that watches memberships as they are applied.
pub fn applied_voters(bytes: &[u8]) -> Result<(u64, Vec<String>), Error> {
    Ok(voters_of(&decode::<Applied>(bytes)?.membership))
}

/// A membership's log index (0: none) and its voters' addresses.
fn voters_of(stored: &Membership) -> (u64, Vec<String>) {
    let membership = stored.membership();
    (
        stored.log_id().map_or(0, |l| l.index),
        membership
            .voter_ids()
            .filter_map(|id| membership.get_node(&id).map(|n| n.addr.clone()))
            .collect(),
    )
}

/// Reads what `group` applied, from storage (blocking).
pub fn peek(store: &dyn Store, raft: &dyn RaftLogStore, group: GroupId) -> Result<Peek, Error> {
    let topic = TopicId(group.0);
    let meta = store.topic(topic)?;
    let last_seq = match &meta {
        Some(_) => store.last_seq(topic)?,
        None => 0,
    };
    let applied = raft
        .value(group, APPLIED)?
        .map(|b| decode::<Applied>(&b))
        .transpose()?
        .unwrap_or_default();
    let (voters_at, voters) = voters_of(&applied.membership);
    let applied_index = applied.last_applied.map_or(0, |l| l.index);
    let last_log_index = raft
        .last_log(group)?
        .map_or(applied_index, |(index, _)| index.max(applied_index));
    Ok(Peek {
        meta,
        last_seq,
        voters,
        voters_at,
        applied_index,
        last_log_index,
        handlers: load_handlers(raft, group)?,
    })
}

/// A snapshot being built: started when openraft asked for a builder, at
/// one log position's state, and finished off the apply path.
pub struct Builder {
    meta: SnapshotMeta,
    work: Started<(SnapshotFile, u64)>,
    /// Where the built snapshot's elements are (`None`: the build failed
    /// before it began).
    source: Option<Source>,
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, std::io::Error> {
        let work = std::mem::replace(
            &mut self.work,
            Started::Done(Err(Error::InvalidArgument("a builder builds once".into()))),
        );
        let (file, _) = work.finish().await.map_err(io_err)?;
        let source = self
            .source
            .take()
            .ok_or_else(|| io_err(Error::InvalidArgument("a builder builds once".into())))?;
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: source.pending(self.meta.clone(), file),
        })
    }
}

/// Decides one command into `batch`.
fn apply_command(
    store: &dyn Store,
    machine: &mut Option<Machine>,
    directory: &mut Option<Directory>,
    handlers: &mut Arc<Handlers>,
    windows: &mut Windows,
    batch: &mut WriteBatch,
    command: Command,
) -> Result<CommandResult, Error> {
    Ok(match command {
        Command::Batch(commands) => {
            let mut results = Vec::with_capacity(commands.len());
            for command in commands {
                results.push(match command {
                    Command::Batch(_) => CommandResult::Refused(Error::InvalidArgument(
                        "a batch inside a batch".into(),
                    )),
                    command => {
                        apply_command(store, machine, directory, handlers, windows, batch, command)?
                    }
                });
            }
            CommandResult::Batch(results)
        }
        Command::Create(meta) => {
            if machine.is_none() {
                batch.push(Op::PutTopic(meta.clone()));
                *machine = Some(Machine::new(meta, 0));
            }
            CommandResult::Created
        }
        Command::Name(command) => {
            let (Some(m), Some(directory)) = (machine.as_mut(), directory.as_mut()) else {
                return Ok(CommandResult::Refused(Error::InvalidArgument(
                    "names are claimed in the directory group only".into(),
                )));
            };
            match directory.decide(&command) {
                Err(e) => CommandResult::Refused(e),
                Ok((record, answer)) => {
                    if let Some(record) = record {
                        let payload = bytes::Bytes::from(encode(&record)?);
                        // Stamped with the claimant's clock: the directory
                        // keeps no time of its own (a confirm or release
                        // carries none).
                        let at_ms = match &command {
                            NameCommand::Claim { at_ms, .. } => *at_ms,
                            _ => 0,
                        };
                        if let Err(e) = m.append(batch, vec![payload], None, at_ms) {
                            return Ok(CommandResult::Refused(e));
                        }
                        directory.apply(&record);
                    }
                    CommandResult::Name(answer)
                }
            }
        }
        Command::Delete => match machine.take() {
            Some(m) => {
                batch.push(Op::DeleteTopic(m.meta().id));
                windows.clear();
                if !handlers.is_empty() {
                    *handlers = Arc::default();
                    put_handlers(batch, GroupId(m.meta().id.0), handlers, true)?;
                }
                CommandResult::Deleted
            }
            None => CommandResult::Deleted,
        },
        Command::Handler(command) => {
            let Some(m) = machine.as_ref() else {
                return Ok(CommandResult::Refused(Error::GroupWithoutTopic));
            };
            // Progress alone is stored apart from the specs; new output
            // topics are kept with them.
            let specs_change = match &command {
                HandlerCommand::Progress { outputs, .. } => !outputs.is_empty(),
                _ => true,
            };
            let range = m.range();
            let mut changed = (**handlers).clone();
            match changed.decide(command, range.first, range.last) {
                Err(e) => CommandResult::Refused(e),
                Ok(answer) => {
                    *handlers = Arc::new(changed);
                    put_handlers(batch, GroupId(m.meta().id.0), handlers, specs_change)?;
                    CommandResult::Handler(answer)
                }
            }
        }
        Command::Append {
            payloads,
            producer,
            time_ms,
            cause,
            handler,
        } => {
            let Some(m) = machine.as_mut() else {
                return Ok(CommandResult::Refused(Error::GroupWithoutTopic));
            };
            // A handler named at the append must be one that runs on demand.
            if let Some(name) = &handler
                && let Err(e) = handlers.check_on_demand(name)
            {
                return Ok(CommandResult::Refused(e));
            }
            let tags = crate::topic::Tags {
                cause: cause.as_ref(),
                handler: handler.as_deref(),
            };
            let answer = producer
                .map(|(id, seq)| Producer::new(id, seq))
                .transpose()
                .and_then(|p| {
                    appender::append(
                        store,
                        m,
                        windows,
                        batch,
                        payloads,
                        p.as_ref(),
                        time_ms,
                        tags,
                    )
                });
            match answer {
                Ok(outcome) => CommandResult::Appended(outcome),
                Err(e) => CommandResult::Refused(e),
            }
        }
    })
}

impl TopicStateMachine {
    /// Applies committed `entries`, in log order, and says what each gave
    /// (openraft's `apply` hands these to the clients waiting for them).
    pub async fn apply_entries(
        &mut self,
        entries: Vec<Entry>,
    ) -> Result<Vec<CommandResult>, std::io::Error> {
        let store = self.store.clone();
        let group = self.group;
        let mut machine = self.machine.clone();
        // Taken, not copied: the directory holds every name of the
        // cluster, and a copy per apply made each create cost as much as
        // all the names before it. A failed apply reads it again below.
        let mut directory = self.directory.take();
        let mut handlers = self.handlers.clone();
        let mut applied = self.applied.clone();
        self.windows.bound();
        // Taken: a failed apply leaves none behind (they may hold appends
        // never written), and they are read again from the store.
        let mut windows = std::mem::take(&mut self.windows);
        // Each entry's bytes: counted by the upkeep, and their sum decides
        // where the apply runs.
        let sizes: Vec<(u64, u64)> = entries
            .iter()
            .map(|e| match &e.payload {
                EntryPayload::Normal(command) => (e.log_id.index, command.approx_bytes() as u64),
                _ => (e.log_id.index, 0),
            })
            .collect();
        let bytes = sizes.iter().map(|&(_, b)| b as usize).sum();
        // Unsynced writes and reads of recent state: done in place unless
        // they copy much.
        let outcome = quick_unless_large(bytes, move || {
            let mut batch = WriteBatch::default();
            let mut results = Vec::with_capacity(entries.len());
            for entry in entries {
                // Openraft applies each entry once, in log order: anything
                // else would apply an append twice or skip one.
                assert!(
                    applied
                        .last_applied
                        .is_none_or(|l| l.index < entry.log_id.index),
                    "group {}: applying log index {} after {:?}",
                    group.0,
                    entry.log_id.index,
                    applied.last_applied
                );
                applied.last_applied = Some(entry.log_id);
                results.push(match entry.payload {
                    EntryPayload::Blank => CommandResult::None,
                    EntryPayload::Membership(m) => {
                        applied.membership = StoredMembership::new(Some(entry.log_id), m);
                        CommandResult::None
                    }
                    EntryPayload::Normal(command) => apply_command(
                        &*store,
                        &mut machine,
                        &mut directory,
                        &mut handlers,
                        &mut windows,
                        &mut batch,
                        command,
                    )?,
                });
            }
            batch.push(Op::PutRaftValue(group, APPLIED.into(), encode(&applied)?));
            // Off the write-ahead log: the log these entries come from is
            // synced, and a crash that loses this batch makes openraft apply
            // them again. The log is purged only after `persist_applied`.
            store.write_applied(&batch)?;
            Ok((machine, windows, directory, handlers, applied, results))
        })
        .await;
        let (machine, windows, directory, handlers, applied, results) = match outcome {
            Ok(done) => done,
            Err(e) => {
                // The state stays as it was applied before these entries:
                // what the store holds.
                let (store, group) = (self.store.clone(), self.group);
                match blocking(move || load_directory(&*store, group)).await {
                    Ok(directory) => self.directory = directory,
                    Err(reload) => {
                        tracing::error!(
                            group = group.0,
                            "reading the name directory again: {reload}"
                        )
                    }
                }
                return Err(io_err(e));
            }
        };
        let existed = self.machine.is_some();
        self.machine = machine;
        self.windows = windows;
        self.handlers = handlers;
        self.directory = directory;
        self.applied = applied;
        self.publish(existed);
        if let Some(upkeep) = &self.upkeep {
            let mut upkeep = lock(upkeep);
            for (index, bytes) in sizes {
                upkeep.bytes.applied(index, bytes);
            }
        }
        if self.upkeep.is_some() {
            self.ask_for_snapshot_if_due().await;
        }
        Ok(results)
    }
}

impl RaftStateMachine<TypeConfig> for TopicStateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Builder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), std::io::Error> {
        Ok((self.applied.last_applied, self.applied.membership.clone()))
    }

    async fn apply<S>(&mut self, entries: S) -> Result<(), std::io::Error>
    where
        S: futures::Stream<Item = Result<EntryResponder<TypeConfig>, std::io::Error>>
            + Unpin
            + OptionalSend,
    {
        // What openraft has ready: a bounded batch of committed entries.
        let (entries, responders): (Vec<_>, Vec<_>) =
            entries.try_collect::<Vec<_>>().await?.into_iter().unzip();
        let results = self.apply_entries(entries).await?;
        for (responder, result) in responders.into_iter().zip(results) {
            if let Some(responder) = responder {
                responder.send(result);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let meta = snapshot_meta(&self.applied);
        self.start_build().await.unwrap_or_else(|e| Builder {
            meta,
            work: Started::Done(Err(e)),
            source: None,
        })
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), std::io::Error> {
        let mut file = snapshot.into_file().await.map_err(io_err)?;
        let (store, raft, group, limits) = (
            self.store.clone(),
            self.raft.clone(),
            self.group,
            self.limits,
        );
        let expect = meta.last_log_id;
        // Checked whole before anything is written: a bad snapshot leaves
        // this replica as it was.
        let (file, bytes) = blocking(move || {
            verify(&mut file)?;
            let bytes = file_bytes(&mut file)?;
            Ok((file, bytes))
        })
        .await
        .map_err(io_err)?;
        let (kept, installing) = (self.kept.clone(), meta.clone());
        let installed = blocking(move || {
            // Held throughout: a snapshot built meanwhile must not replace
            // the file being installed.
            let mut kept = lock(&kept);
            kept.meta = None;
            kept.refers = None;
            raft.snapshot_keep(group, file)?;
            let installed = install_kept(&*store, &*raft, group, Some(expect), limits)?;
            kept.meta = Some(installing);
            Ok(installed)
        })
        .await
        .map_err(io_err)?;
        let existed = self.machine.is_some();
        self.machine = installed.meta.map(|m| Machine::new(m, installed.last_seq));
        self.windows.clear();
        self.handlers = Arc::new(installed.handlers);
        let (store, group) = (self.store.clone(), self.group);
        self.directory = blocking(move || load_directory(&*store, group))
            .await
            .map_err(io_err)?;
        self.applied = installed.applied;
        self.publish(existed);
        if let Some(upkeep) = &self.upkeep {
            lock(upkeep).bytes.installed(bytes);
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, std::io::Error> {
        let (raft, group, kept) = (self.raft.clone(), self.group, self.kept.clone());
        let current = blocking(move || {
            // Opened under the lock: the file is the one `meta` names.
            let kept = lock(&kept);
            let Some(meta) = kept.meta.clone() else {
                return Ok(None);
            };
            let file = raft
                .snapshot_open(group)?
                .ok_or_else(|| Error::Storage("the group's kept snapshot is gone".into()))?;
            Ok(Some((meta, file, kept.refers.is_some())))
        })
        .await
        .map_err(io_err)?;
        let source = self.source();
        // One built here is copied with its elements when openraft reads
        // it (to send it), off this task: openraft awaits this answer in
        // the group's state-machine task, and applies would wait.
        Ok(current.map(|(meta, file, refers)| Snapshot {
            snapshot: if refers {
                source.pending(meta.clone(), file)
            } else {
                SnapshotData::from_file(file)
            },
            meta,
        }))
    }
}

/// Snapshots come from the leader in pieces (openraft's chunked protocol,
/// kept by `openraft-legacy`), written into a new file as they arrive.
impl SnapshotReceiverFactory<TypeConfig> for TopicStateMachine {
    type SnapshotReceiver = SnapshotData;

    async fn begin_receiving_snapshot(&mut self) -> Result<SnapshotData, std::io::Error> {
        let raft = self.raft.clone();
        let file = blocking(move || raft.snapshot_create())
            .await
            .map_err(io_err)?;
        Ok(SnapshotData::from_file(file))
    }
}

/// The handlers of `group`'s topic, as last applied.
fn load_handlers(raft: &dyn RaftLogStore, group: GroupId) -> Result<Handlers, Error> {
    let Some(specs) = raft.value(group, HANDLERS)? else {
        return Ok(Handlers::default());
    };
    let handlers: Handlers = decode(&specs)?;
    Ok(match raft.value(group, HANDLERS_DONE)? {
        Some(done) => handlers.with_done(&decode(&done)?),
        None => handlers,
    })
}

/// Writes `handlers` with the applied batch: their progress always, the
/// specs (which may hold Python source) only when `specs` changed.
fn put_handlers(
    batch: &mut WriteBatch,
    group: GroupId,
    handlers: &Handlers,
    specs: bool,
) -> Result<(), Error> {
    if specs {
        batch.push(Op::PutRaftValue(group, HANDLERS.into(), encode(handlers)?));
    }
    batch.push(Op::PutRaftValue(
        group,
        HANDLERS_DONE.into(),
        encode(&handlers.done())?,
    ));
    Ok(())
}

/// The name directory as the records of its topic say, for the
/// [`DIRECTORY`] group (`None` for every other group).
fn load_directory(store: &dyn Store, group: GroupId) -> Result<Option<Directory>, Error> {
    if group != DIRECTORY {
        return Ok(None);
    }
    let topic = TopicId(group.0);
    let mut directory = Directory::default();
    let last = store.last_seq(topic)?;
    let mut next = 1;
    while next <= last {
        let page = store.scan(topic, next, DIRECTORY_PAGE, SNAPSHOT_PAGE_BYTES)?;
        let Some(end) = page.last().map(|e| e.seq) else {
            break;
        };
        for element in page {
            directory.apply(&decode::<NameRecord>(&element.payload)?);
        }
        next = end + 1;
    }
    Ok(Some(directory))
}
