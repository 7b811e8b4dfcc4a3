//! One thread per database (per lane, ADR 31) that writes the synced Raft
//! log appends of all the node's groups (ADR 0024). Appends that arrive while a write is being
//! synced go into the next write together: N groups appending at once cost
//! one sync, not N, and no caller holds a thread of its own while it waits
//! (it hands the entries over and is told the outcome).
//!
//! Each append is told twice: once its batch is written (its entries read
//! back, so a leader may replicate them), then once the batch is synced.
//! Per group, appends stay in order: the writer takes them in the order
//! they came, and a group hands them over in log order. A small append is
//! written by its caller (`RocksStore::append_log_then`), which hands over
//! only its sync ([`LogWriter::submit_sync`]); a follower's, while the
//! writer is idle, is synced by its caller too ([`LogWriter::claim_idle`],
//! ADR 45).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::thread::JoinHandle;

use rocksdb::DB;

use super::{log_bytes, log_cf, put_log, written};
use crate::error::{Error, Result};
use crate::store::GroupId;
use crate::store::raft_log::AppendDone;

/// Appends waiting for the writer, at most. A group hands over its next
/// append once the previous one is written (openraft 0.10 goes on before
/// the sync), so a busy group has a few waiting; this is only reached with
/// thousands of groups appending at once; past it a caller writes in place
/// ([`LogWriter::submit`]).
const QUEUED_MAX: usize = 4096;
/// One write takes the appends waiting, in order, while they hold at most
/// this many bytes together (but always at least one): a small append is
/// not held behind megabytes of others (RocksDB's own write groups stop at
/// 1 MiB too).
const WRITE_BYTES_MAX: usize = 1 << 20;
/// And at most this many appends.
const WRITE_APPENDS_MAX: usize = 1024;

/// A group's entries waiting to be written, and who to tell.
pub(super) struct Append {
    group: GroupId,
    pub(super) entries: Vec<(u64, Vec<u8>)>,
    bytes: usize,
    /// Told once written (taken then).
    pub(super) written: Option<AppendDone>,
    pub(super) done: AppendDone,
}

/// The writer thread and the way to it. Dropping it lets the thread finish
/// what it holds and joins it.
pub(super) struct LogWriter {
    queue: Option<mpsc::SyncSender<Append>>,
    thread: Option<JoinHandle<()>>,
    /// Appends handed over and not yet told their outcome, and syncs
    /// made in place meanwhile ([`LogWriter::claim_idle`]).
    pending: Arc<AtomicUsize>,
}

/// The writer claimed while idle: its holder syncs in place, and appends
/// handed over meanwhile go to the writer as usual. Let go when dropped.
pub(super) struct IdleClaim(Arc<AtomicUsize>);

impl Drop for IdleClaim {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl LogWriter {
    /// Starts the writer of `db`, a thread called `name`; a failed write
    /// is recorded in `failure` as the store's own writes are.
    pub(super) fn start(name: &str, db: Arc<DB>, failure: Arc<OnceLock<String>>) -> Result<Self> {
        let (queue, waiting) = mpsc::sync_channel(QUEUED_MAX);
        let pending = Arc::new(AtomicUsize::new(0));
        let told = pending.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(&db, &failure, &waiting, &told))
            .map_err(|e| Error::Storage(format!("cannot start the log writer: {e}")))?;
        Ok(Self {
            queue: Some(queue),
            thread: Some(thread),
            pending,
        })
    }

    /// Claims the writer if nothing is handed to it and no sync is made in
    /// place: the caller may then sync its own append in place, sparing
    /// the hand-over to the writer's thread and back. None of the caller's
    /// group's appends can then wait at the writer, so its appends are
    /// still told in order.
    pub(super) fn claim_idle(&self) -> Option<IdleClaim> {
        self.pending
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| IdleClaim(self.pending.clone()))
    }

    /// Hands over the sync of an append its caller has written: `done` is
    /// told once the writer's next sync is made. If the queue is full (or
    /// the writer has stopped), `done` comes back for the caller to sync.
    pub(super) fn submit_sync(
        &self,
        group: GroupId,
        done: AppendDone,
    ) -> std::result::Result<(), AppendDone> {
        let append = Append {
            group,
            entries: Vec::new(),
            bytes: 0,
            written: None,
            done,
        };
        self.send(append).map_err(|a| a.done)
    }

    /// Hands `group`'s `entries` to the writer, which calls `written` once
    /// they read back and `done` once they are synced. If its queue is full
    /// (or it has stopped), the append comes back for the caller to write
    /// itself.
    pub(super) fn submit(
        &self,
        group: GroupId,
        entries: Vec<(u64, Vec<u8>)>,
        written: AppendDone,
        done: AppendDone,
    ) -> std::result::Result<(), Append> {
        let bytes = log_bytes(&entries);
        let append = Append {
            group,
            entries,
            bytes,
            written: Some(written),
            done,
        };
        self.send(append)
    }

    /// Queues `append`, or gives it back if the queue is full or closed.
    fn send(&self, append: Append) -> std::result::Result<(), Append> {
        let Some(queue) = &self.queue else {
            return Err(append);
        };
        self.pending.fetch_add(1, Ordering::AcqRel);
        queue.try_send(append).map_err(|e| {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            match e {
                mpsc::TrySendError::Full(a) | mpsc::TrySendError::Disconnected(a) => a,
            }
        })
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.queue.take();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the log writer panicked");
        }
    }
}

/// The writer's loop: takes what waits (within the bounds), writes it all
/// in one batch, tells every caller it is written, syncs it, tells every
/// caller it is synced, again until the queue closes; `pending` counts
/// down what it has told.
fn run(
    db: &DB,
    failure: &OnceLock<String>,
    waiting: &mpsc::Receiver<Append>,
    pending: &AtomicUsize,
) {
    let mut carried: Option<Append> = None;
    let mut taken: Vec<Append> = Vec::new();
    loop {
        let first = match carried.take() {
            Some(append) => append,
            None => match waiting.recv() {
                Ok(append) => append,
                Err(_) => return,
            },
        };
        let mut bytes = first.bytes;
        taken.push(first);
        while taken.len() < WRITE_APPENDS_MAX {
            match waiting.try_recv() {
                Ok(append) if bytes + append.bytes <= WRITE_BYTES_MAX => {
                    bytes += append.bytes;
                    taken.push(append);
                }
                Ok(append) => {
                    carried = Some(append);
                    break;
                }
                Err(_) => break,
            }
        }
        let wrote = write(db, failure, &taken);
        for append in &mut taken {
            if let Some(tell) = append.written.take() {
                tell(wrote.clone());
            }
        }
        let outcome = wrote.and_then(|()| sync(db, failure));
        let told = taken.len();
        for append in taken.drain(..) {
            (append.done)(outcome.clone());
        }
        pending.fetch_sub(told, Ordering::AcqRel);
    }
}

/// Writes `appends` as one batch (read back at once, not yet durable);
/// those handed over only to be synced have nothing to write.
fn write(db: &DB, failure: &OnceLock<String>, appends: &[Append]) -> Result<()> {
    let cf = log_cf(db);
    let mut wb = rocksdb::WriteBatch::default();
    for append in appends {
        put_log(&mut wb, cf, append.group, &append.entries);
    }
    if wb.is_empty() {
        return Ok(());
    }
    written(failure, db.write(wb), "append raft log")
}

/// Writes out and syncs the write-ahead log (manual flush, see
/// `RocksStore::open`), and with it every write before: the sync runs
/// outside RocksDB's write queue, so other writes go on meanwhile.
fn sync(db: &DB, failure: &OnceLock<String>) -> Result<()> {
    written(failure, db.flush_wal(true), "sync raft log")
}
