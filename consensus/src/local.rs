//! [`Topics`]: the node's topics, driven by tokio.
//!
//! Each topic has one writer task. Appends queue on a bounded channel; the
//! writer takes everything queued (a group, bounded in count and bytes), lets
//! the [`Machine`] decide it, writes the group as one synced batch, and only
//! then answers the appenders and publishes the new range to readers. So one
//! sync serves many concurrent appends, and nothing is visible or
//! acknowledged before it is on disk.
//!
//! Readers never wait for the writer: they read the published range from a
//! `watch` channel and the elements from the store. Trimming is a separate
//! task per topic that deletes what fell out of the history, behind the
//! appends, so it never delays them.
//!
//! A topic kept by a Raft group has no writer here: its group's state
//! machine writes the store and calls [`Topics::publish_replica`] after each
//! apply, so the same reads and subscriptions serve it (see `crate::raft`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::batch::{self, Limits};
use crate::bugs::{self, Bug};
use crate::error::{Error, Result};
use crate::store::{GROUP_ID_MIN, Op, Store, WriteBatch, blocking, quick};
use crate::topic::appender::{self, Windows};
use crate::topic::handlers::Handlers;
use crate::topic::machine::{check_payloads, check_readable};
use crate::topic::{
    AppendOutcome, Element, Machine, Producer, Range, TopicConfig, TopicId, TopicMeta, TopicName,
};

/// The most topics one node holds.
pub const TOPICS_MAX: usize = 100_000;
/// The most elements one scan returns.
pub const SCAN_LIMIT_MAX: u32 = 10_000;
/// The most payload bytes one scan or one subscription batch returns.
pub const READ_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Appends waiting for one topic's writer; past this, appenders wait.
const QUEUE_DEPTH: usize = 4096;
/// The most appends (and payload bytes) decided and synced together.
const GROUP: Limits = Limits {
    items_max: 1024,
    bytes_max: 16 * 1024 * 1024,
};
/// Payload bytes queued in all topics together; past this, appenders wait.
const QUEUED_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Deleting fewer trimmed elements than this at a time is not worth a range delete.
const TRIM_STEP_MAX: u64 = 1024;

/// Where time comes from. Only drivers read it; the simulator passes its own.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The machine's wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// A topic's description: its metadata and the range it holds now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub meta: TopicMeta,
    pub range: Range,
}

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// At this sequence number.
    Seq(u64),
    /// At the oldest element still held.
    Earliest,
    /// After the last committed element.
    Latest,
}

impl Start {
    /// The first sequence number a subscription starting here reads from
    /// `topic`, which holds `range`; a number it no longer (or not yet)
    /// holds is an error, except the next one to be appended.
    pub fn first_seq(self, topic: &str, range: Range) -> Result<u64> {
        Ok(match self {
            Start::Latest => range.last + 1,
            Start::Earliest => range.first.max(1),
            Start::Seq(seq) => {
                if seq != range.last + 1 {
                    check_readable(topic, range, seq)?;
                }
                seq
            }
        })
    }
}

/// What readers see of a topic: its range, and whether it still exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Published {
    range: Range,
    state: TopicState,
    /// When `range` was published (a handler's dispatch is timed from it).
    at: std::time::Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TopicState {
    Open,
    Deleted,
    Closed,
}

enum Command {
    Append {
        payloads: Vec<Bytes>,
        producer: Option<Producer>,
        /// Held until the append is answered, bounding queued bytes.
        _permit: tokio::sync::OwnedSemaphorePermit,
        reply: oneshot::Sender<Result<AppendOutcome>>,
    },
    Delete {
        reply: oneshot::Sender<Result<()>>,
    },
}

impl Command {
    fn bytes(&self) -> usize {
        match self {
            Command::Append { payloads, .. } => payloads.iter().map(Bytes::len).sum(),
            Command::Delete { .. } => 0,
        }
    }

    fn refuse(self, err: Error) {
        match self {
            Command::Append { reply, .. } => drop(reply.send(Err(err))),
            Command::Delete { reply } => drop(reply.send(Err(err))),
        }
    }
}

struct Topic {
    meta: TopicMeta,
    /// The writer's queue; `None` for a replica of a Raft group's topic.
    commands: Option<mpsc::Sender<Command>>,
    published: watch::Receiver<Published>,
    /// How a Raft group's state machine publishes to readers.
    replica: Option<Replica>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// The publishing side of a replicated topic.
struct Replica {
    published: watch::Sender<Published>,
    /// The handlers bound to the topic, as its group applied them.
    handlers: watch::Sender<Arc<Handlers>>,
    /// Taken at shutdown, which ends the trimmer.
    trim: Mutex<Option<Trim>>,
}

/// Asks a topic's trimmer to delete what fell out of the history.
struct Trim {
    trim: watch::Sender<u64>,
    /// Elements below this were deleted (or asked to be).
    trimmed_below: u64,
}

impl Trim {
    /// Asks the trimmer to delete below `range.first`, once enough has
    /// fallen out, but never from `keep_from` on.
    fn request(&mut self, range: Range, history: u64, keep_from: Option<u64>) {
        let first = range.first.min(keep_from.unwrap_or(u64::MAX));
        let step = history.min(TRIM_STEP_MAX);
        if first > self.trimmed_below
            && (first - self.trimmed_below >= step || self.trimmed_below == 0)
        {
            self.trimmed_below = first;
            self.trim.send_replace(first);
        }
    }
}

struct Inner {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    registry: RwLock<BTreeMap<TopicName, Arc<Topic>>>,
    /// The replicas that may have handlers bound: every one that has, and
    /// some that had (dropped when [`Topics::handled`] finds them without),
    /// so that a node looking for handlers does not visit every topic.
    with_handlers: Mutex<std::collections::BTreeSet<TopicName>>,
    /// Serialises creating and deleting topics; holds the next topic id.
    admin: tokio::sync::Mutex<u64>,
    queued_bytes: Arc<Semaphore>,
    shutdown: watch::Sender<bool>,
}

/// All topics of a node. Cheap to clone; all clones share the same topics.
#[derive(Clone)]
pub struct Topics {
    inner: Arc<Inner>,
}

impl Topics {
    /// Loads every topic from `store` and starts their writers. Leftovers of
    /// trims that a crash interrupted are deleted in the background.
    pub async fn open(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Result<Self> {
        let loading = store.clone();
        let (next_id, loaded) = blocking(move || {
            let mut loaded = Vec::new();
            // Topics owned by Raft groups are the groups' business.
            for meta in loading
                .topics()?
                .into_iter()
                .filter(|m| m.id.0 < GROUP_ID_MIN)
            {
                let last = loading.last_seq(meta.id)?;
                loaded.push((meta, last));
            }
            Ok((loading.next_topic_id()?, loaded))
        })
        .await?;
        let topics = Self {
            inner: Arc::new(Inner {
                store,
                clock,
                registry: RwLock::new(BTreeMap::new()),
                with_handlers: Mutex::new(Default::default()),
                admin: tokio::sync::Mutex::new(next_id),
                queued_bytes: Arc::new(Semaphore::new(QUEUED_BYTES_MAX)),
                shutdown: watch::Sender::new(false),
            }),
        };
        let count = loaded.len();
        for (meta, last) in loaded {
            topics.start(meta, last);
        }
        tracing::info!(topics = count, "topics loaded");
        Ok(topics)
    }

    /// Starts a topic's writer and trimmer and registers it.
    fn start(&self, meta: TopicMeta, last_seq: u64) -> Arc<Topic> {
        let machine = Machine::new(meta.clone(), last_seq);
        let (published_tx, published) = watch::channel(Published {
            range: machine.range(),
            state: TopicState::Open,
            at: std::time::Instant::now(),
        });
        let (commands, rx) = mpsc::channel(QUEUE_DEPTH);
        let (trim_tx, trim_rx) = watch::channel(0);
        let writer = Writer {
            store: self.inner.store.clone(),
            clock: self.inner.clock.clone(),
            machine,
            windows: Windows::default(),
            published: published_tx,
            trim: Trim {
                trim: trim_tx,
                trimmed_below: 0,
            },
        };
        let shutdown = self.inner.shutdown.subscribe();
        let tasks = vec![
            tokio::spawn(writer.run(rx, shutdown)),
            tokio::spawn(run_trimmer(self.inner.store.clone(), meta.id, trim_rx)),
        ];
        let topic = Arc::new(Topic {
            meta: meta.clone(),
            commands: Some(commands),
            published,
            replica: None,
            tasks: Mutex::new(tasks),
        });
        self.registry_mut().insert(meta.name, topic.clone());
        topic
    }

    /// Shows readers a Raft group's topic as this replica has applied it:
    /// registers it on first sight, else publishes its new range. Called by
    /// the group's state machine after every apply. Elements from
    /// `keep_from` on stay in the store even once they fall out of the
    /// history (readers do not see them): a snapshot that refers to the
    /// store for them may still be sent (ADR 36).
    pub fn publish_replica(
        &self,
        meta: &TopicMeta,
        range: Range,
        handlers: &Arc<Handlers>,
        keep_from: Option<u64>,
    ) {
        let existing = self.registry().get(&meta.name).cloned();
        if let Some(topic) = existing {
            if let (true, Some(replica)) = (topic.meta.id == meta.id, &topic.replica) {
                replica.published.send_modify(|p| {
                    // Only committed entries are applied, and they are never
                    // undone: a range that shrank would unsay an ack.
                    assert!(
                        range.last >= p.range.last && range.first >= p.range.first,
                        "topic {}: published range went from {:?} to {range:?}",
                        meta.name,
                        p.range
                    );
                    p.range = range;
                    p.at = std::time::Instant::now();
                });
                replica.handlers.send_if_modified(|h| {
                    let changed = !Arc::ptr_eq(h, handlers);
                    if changed {
                        *h = handlers.clone();
                    }
                    changed
                });
                self.note_handlers(&meta.name, handlers);
                if let Some(trim) = replica
                    .trim
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_mut()
                {
                    trim.request(range, meta.config.history, keep_from);
                }
                return;
            }
            if topic.replica.is_none() {
                // A local topic of this node (from before it joined a
                // cluster) keeps the name here.
                tracing::warn!(topic = %meta.name, "a local topic hides the replicated one");
                return;
            }
            // Another group's topic of that name (one deleted, whose group
            // has not told us yet): the newer group wins.
            self.retire_replica(topic.meta.id);
        }
        if *self.inner.shutdown.borrow() {
            return;
        }
        let (published_tx, published) = watch::channel(Published {
            range,
            state: TopicState::Open,
            at: std::time::Instant::now(),
        });
        let (trim_tx, trim_rx) = watch::channel(0);
        let mut trim = Trim {
            trim: trim_tx,
            trimmed_below: 0,
        };
        trim.request(range, meta.config.history, keep_from);
        let trimmer = tokio::spawn(run_trimmer(self.inner.store.clone(), meta.id, trim_rx));
        let topic = Arc::new(Topic {
            meta: meta.clone(),
            commands: None,
            published,
            replica: Some(Replica {
                published: published_tx,
                handlers: watch::channel(handlers.clone()).0,
                trim: Mutex::new(Some(trim)),
            }),
            tasks: Mutex::new(vec![trimmer]),
        });
        self.registry_mut().insert(meta.name.clone(), topic);
        self.note_handlers(&meta.name, handlers);
    }

    /// Keeps `name` among the replicas with handlers if it has some. Called
    /// after they are published: [`Topics::handled`] drops a name only
    /// while holding the set and seeing no handlers.
    fn note_handlers(&self, name: &TopicName, handlers: &Handlers) {
        if handlers.is_empty() {
            return;
        }
        let mut set = self.with_handlers();
        if !set.contains(name) {
            set.insert(name.clone());
        }
    }

    fn with_handlers(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<TopicName>> {
        self.inner
            .with_handlers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The replicas here with handlers bound, each with what `pick` takes
    /// from it and its handlers (`None` to leave it out).
    fn visit_handled<T>(
        &self,
        mut pick: impl FnMut(&Topic, &Arc<Handlers>) -> Option<T>,
    ) -> Vec<T> {
        let mut set = self.with_handlers();
        let registry = self.registry();
        let mut picked = Vec::new();
        set.retain(|name| {
            let Some(topic) = registry.get(name) else {
                return false;
            };
            let Some(replica) = &topic.replica else {
                return false;
            };
            let handlers = replica.handlers.borrow().clone();
            if handlers.is_empty() {
                return false;
            }
            picked.extend(pick(topic, &handlers));
            true
        });
        picked
    }

    /// A replicated topic is gone from this node (deleted, or its group
    /// left): its subscribers end with `TopicNotFound`.
    pub fn retire_replica(&self, id: TopicId) {
        let mut registry = self.registry_mut();
        let name = registry
            .iter()
            .find(|(_, t)| t.meta.id == id && t.replica.is_some())
            .map(|(name, _)| name.clone());
        if let Some(topic) = name.and_then(|n| registry.remove(&n))
            && let Some(replica) = &topic.replica
        {
            replica
                .published
                .send_modify(|p| p.state = TopicState::Deleted);
        }
    }

    /// The handlers bound to `name` as this node's replica applied them,
    /// changing as they change; `None` if it holds no replica of `name`.
    pub fn handlers(&self, name: &TopicName) -> Option<watch::Receiver<Arc<Handlers>>> {
        let topic = self.registry().get(name).cloned()?;
        Some(topic.replica.as_ref()?.handlers.subscribe())
    }

    /// The replicas here that have handlers bound, with them: what a node
    /// looks at to run handlers, without touching the other topics' state.
    pub fn handled(&self) -> Vec<(TopicId, TopicName, Arc<Handlers>)> {
        self.visit_handled(|t, handlers| Some((t.meta.id, t.meta.name.clone(), handlers.clone())))
    }

    /// The replicas here whose handlers (those not parked) have not yet
    /// finished every element applied here: their groups must not sleep,
    /// or the handlers would wait for the next client request.
    pub fn handlers_behind(&self) -> std::collections::HashSet<TopicId> {
        self.visit_handled(|t, handlers| {
            let last = t.published.borrow().range.last;
            let behind = handlers.iter().any(|h| h.parked.is_none() && h.done < last);
            behind.then_some(t.meta.id)
        })
        .into_iter()
        .collect()
    }

    /// Whether `name` is a replica of a Raft group's topic here, and its id.
    pub fn replica_id(&self, name: &TopicName) -> Option<TopicId> {
        let registry = self.registry();
        registry
            .get(name)
            .filter(|t| t.replica.is_some())
            .map(|t| t.meta.id)
    }

    fn registry(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<TopicName, Arc<Topic>>> {
        self.inner
            .registry
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn registry_mut(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<TopicName, Arc<Topic>>> {
        self.inner
            .registry
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn lookup(&self, name: &str) -> Result<Arc<Topic>> {
        let name = TopicName::new(name)?;
        let registry = self.registry();
        registry
            .get(&name)
            .cloned()
            .ok_or_else(|| Error::TopicNotFound(name.to_string()))
    }

    /// Creates a topic. The creation is synced before this returns.
    pub async fn create(&self, name: &str, config: TopicConfig) -> Result<TopicInfo> {
        let name = TopicName::new(name)?;
        config.validate()?;
        self.check_open()?;
        let mut next_id = self.inner.admin.lock().await;
        {
            let registry = self
                .inner
                .registry
                .read()
                .unwrap_or_else(|e| e.into_inner());
            if registry.contains_key(&name) {
                return Err(Error::TopicExists(name.to_string()));
            }
            if registry.len() >= TOPICS_MAX {
                return Err(Error::LimitReached(format!(
                    "this node holds {TOPICS_MAX} topics, its maximum"
                )));
            }
        }
        let meta = TopicMeta {
            id: TopicId(*next_id),
            name,
            config,
            created_at_ms: self.inner.clock.now_ms(),
            placement: Default::default(),
        };
        let mut batch = WriteBatch::default();
        batch.push(Op::PutTopic(meta.clone()));
        batch.push(Op::PutNextTopicId(*next_id + 1));
        let store = self.inner.store.clone();
        blocking(move || store.write(&batch)).await?;
        *next_id += 1;
        let topic = self.start(meta, 0);
        tracing::info!(topic = %topic.meta.name, id = topic.meta.id.0, "topic created");
        Ok(info(&topic))
    }

    /// Deletes a topic with all its elements. Appends queued before the delete
    /// are committed first; later ones fail with `TopicNotFound`.
    pub async fn delete(&self, name: &str) -> Result<()> {
        let _admin = self.inner.admin.lock().await;
        let topic = self.lookup(name)?;
        let commands = topic.writer()?.clone();
        self.registry_mut().remove(&topic.meta.name);
        let (reply, answer) = oneshot::channel();
        let result = match commands.send(Command::Delete { reply }).await {
            Ok(()) => answer.await.unwrap_or(Err(Error::Closed)),
            Err(_) => Err(Error::Closed),
        };
        match result {
            Ok(()) => {
                tracing::info!(topic = %topic.meta.name, "topic deleted");
                Ok(())
            }
            Err(e) => {
                // Nothing was deleted: the topic stays.
                self.registry_mut().insert(topic.meta.name.clone(), topic);
                Err(e)
            }
        }
    }

    /// Describes one topic.
    pub fn describe(&self, name: &str) -> Result<TopicInfo> {
        Ok(info(&*self.lookup(name)?))
    }

    /// Every topic, in name order.
    pub fn list(&self) -> Vec<TopicInfo> {
        let registry = self.registry();
        registry.values().map(|t| info(t)).collect()
    }

    /// The topic with id `id`, if this node holds it: one topic's info
    /// without copying every other's.
    pub fn info_by_id(&self, id: TopicId) -> Option<TopicInfo> {
        let registry = self.registry();
        registry.values().find(|t| t.meta.id == id).map(|t| info(t))
    }

    /// Appends `payloads` as consecutive elements, answering once they are
    /// synced. With a producer, a retry returns the original numbers.
    pub async fn append(
        &self,
        name: &str,
        payloads: Vec<Bytes>,
        producer: Option<Producer>,
    ) -> Result<AppendOutcome> {
        let topic = self.lookup(name)?;
        let commands = topic.writer()?;
        check_payloads(topic.meta.config.element_max_bytes, &payloads)?;
        let bytes: usize = payloads.iter().map(|p| p.len() + 32).sum();
        // check_payloads bounds a batch to 8 MiB, well within u32 and the semaphore.
        let permit = self
            .inner
            .queued_bytes
            .clone()
            .acquire_many_owned(bytes as u32)
            .await
            .map_err(|_| Error::Closed)?;
        let (reply, answer) = oneshot::channel();
        let command = Command::Append {
            payloads,
            producer,
            _permit: permit,
            reply,
        };
        if commands.send(command).await.is_err() {
            return Err(self.gone(&topic));
        }
        answer.await.unwrap_or_else(|_| Err(self.gone(&topic)))
    }

    /// Why a topic's writer no longer answers.
    fn gone(&self, topic: &Topic) -> Error {
        match topic.published.borrow().state {
            TopicState::Deleted => Error::TopicNotFound(topic.meta.name.to_string()),
            _ => Error::Closed,
        }
    }

    /// Reads one element.
    pub async fn get(&self, name: &str, seq: u64) -> Result<Element> {
        let topic = self.lookup(name)?;
        let range = topic.published.borrow().range;
        check_readable(topic.meta.name.as_str(), range, seq)?;
        let store = self.inner.store.clone();
        let id = topic.meta.id;
        match blocking(move || store.get(id, seq)).await? {
            Some(e) => Ok(e),
            // Trimmed between the range check and the read.
            None => Err(out_of_range(&topic, seq)),
        }
    }

    /// The range a topic holds now.
    pub fn latest(&self, name: &str) -> Result<Range> {
        Ok(self.lookup(name)?.published.borrow().range)
    }

    /// Reads up to `limit` consecutive elements from `from`. `from` may be one
    /// past the last element, which gives nothing.
    pub async fn scan(&self, name: &str, from: u64, limit: u32) -> Result<Vec<Element>> {
        let topic = self.lookup(name)?;
        if limit == 0 || limit > SCAN_LIMIT_MAX {
            return Err(Error::InvalidArgument(format!(
                "a scan returns 1 to {SCAN_LIMIT_MAX} elements, not {limit}"
            )));
        }
        let range = topic.published.borrow().range;
        if from == range.last + 1 && from > 0 {
            return Ok(Vec::new());
        }
        check_readable(topic.meta.name.as_str(), range, from)?;
        let count = (range.last - from + 1).min(limit as u64) as usize;
        let elements = read(&self.inner.store, &topic, from, count).await?;
        if elements.first().map(|e| e.seq) != Some(from) {
            return Err(out_of_range(&topic, from));
        }
        Ok(elements)
    }

    /// Up to `limit` (at most [`SCAN_LIMIT_MAX`]) elements of topic `name`
    /// that handler `handler` of topic `cause_topic` appended when it ran on
    /// element `cause_seq`, in order (see [`crate::topic::Cause`]).
    pub async fn effects(
        &self,
        name: &str,
        cause_topic: &str,
        handler: &str,
        cause_seq: u64,
        limit: u32,
    ) -> Result<Vec<Element>> {
        let topic = self.lookup(name)?;
        let limit = limit.clamp(1, SCAN_LIMIT_MAX) as usize;
        let first = topic.published.borrow().range.first;
        let (store, id) = (self.inner.store.clone(), topic.meta.id);
        let (cause_topic, handler) = (cause_topic.to_string(), handler.to_string());
        let found =
            blocking(move || store.effects(id, &cause_topic, &handler, cause_seq, limit)).await?;
        // Trimmed from the history, even if the store still holds it.
        Ok(found.into_iter().filter(|e| e.seq >= first).collect())
    }

    /// Follows a topic from `start`: stored elements first, then live ones.
    pub fn subscribe(&self, name: &str, start: Start) -> Result<Subscription> {
        let topic = self.lookup(name)?;
        let mut published = topic.published.clone();
        let Published { range, at, .. } = *published.borrow_and_update();
        let next = start.first_seq(topic.meta.name.as_str(), range)?;
        Ok(Subscription {
            store: self.inner.store.clone(),
            topic,
            published,
            next,
            published_at: at,
        })
    }

    fn check_open(&self) -> Result<()> {
        if *self.inner.shutdown.borrow() {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// Stops every writer (queued appends fail with `Closed`), ends every
    /// subscription, and waits for the tasks to finish.
    pub async fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        let topics: Vec<_> = std::mem::take(&mut *self.registry_mut())
            .into_values()
            .collect();
        for topic in topics {
            if let Some(replica) = &topic.replica {
                replica
                    .published
                    .send_modify(|p| p.state = TopicState::Closed);
                replica
                    .trim
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
            }
            let tasks = std::mem::take(&mut *topic.tasks.lock().unwrap_or_else(|e| e.into_inner()));
            for task in tasks {
                let _ = task.await;
            }
        }
    }
}

impl Topic {
    /// The writer's queue; a replicated topic is written through its group.
    fn writer(&self) -> Result<&mpsc::Sender<Command>> {
        self.commands.as_ref().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "topic {:?} is kept by a Raft group; write through the cluster",
                self.meta.name.as_str()
            ))
        })
    }
}

fn info(topic: &Topic) -> TopicInfo {
    TopicInfo {
        meta: topic.meta.clone(),
        range: topic.published.borrow().range,
    }
}

fn out_of_range(topic: &Topic, seq: u64) -> Error {
    let range = topic.published.borrow().range;
    Error::OutOfRange {
        topic: topic.meta.name.to_string(),
        seq,
        first: range.first,
        last: range.last,
    }
}

async fn read(
    store: &Arc<dyn Store>,
    topic: &Topic,
    from: u64,
    count: usize,
) -> Result<Vec<Element>> {
    let store = store.clone();
    let id = topic.meta.id;
    let mut elements = blocking(move || store.scan(id, from, count, READ_BYTES_MAX)).await?;
    contiguous(&mut elements, from);
    Ok(elements)
}

/// Reads up to `count` elements from `from` where the caller is, without
/// the hand-off to the blocking pool and back (tens of µs, the most of a
/// handler's dispatch): for the newest few elements of a topic, which were
/// written a moment ago and are in RocksDB's memtable.
fn read_tail(store: &dyn Store, topic: &Topic, from: u64, count: usize) -> Result<Vec<Element>> {
    let mut elements = quick(|| store.scan(topic.meta.id, from, count, READ_BYTES_MAX))?;
    contiguous(&mut elements, from);
    Ok(elements)
}

/// How near the newest element a follower's next read must start, and how
/// few it may read, to be read in place ([`read_tail`]).
const TAIL_INLINE: u64 = 64;

/// Keeps only the elements numbered on from `from` without a hole.
fn contiguous(elements: &mut Vec<Element>, from: u64) {
    // Only consecutive elements count; anything after a hole is left for later.
    let contiguous = elements
        .iter()
        .enumerate()
        .take_while(|(i, e)| e.seq == from + *i as u64)
        .count();
    elements.truncate(contiguous);
}

/// A reader following one topic. Holds no elements between calls, so a slow
/// subscriber costs no memory; if it falls behind the history it is told.
pub struct Subscription {
    store: Arc<dyn Store>,
    topic: Arc<Topic>,
    published: watch::Receiver<Published>,
    next: u64,
    /// When the range the last batch came from was published.
    published_at: std::time::Instant,
}

impl Subscription {
    /// When the elements of the last batch were published here (committed
    /// and applied, for a replica): the last of them, at the latest.
    pub fn published_at(&self) -> std::time::Instant {
        self.published_at
    }

    /// The sequence number the next element will have.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// Waits for and returns the next elements, at most `max` of them, in
    /// order. Ends with `TopicNotFound` if the topic is deleted, `Closed` at
    /// shutdown, and `FellBehind` if the next element was trimmed.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<Element>> {
        loop {
            let published = *self.published.borrow_and_update();
            match published.state {
                TopicState::Open => {}
                TopicState::Deleted => {
                    return Err(Error::TopicNotFound(self.topic.meta.name.to_string()));
                }
                TopicState::Closed => return Err(Error::Closed),
            }
            let range = published.range;
            if range.last > 0 && self.next < range.first {
                return Err(self.fell_behind(range.first));
            }
            if self.next <= range.last {
                let behind = range.last - self.next + 1;
                let count = behind.min(max.max(1) as u64) as usize;
                let elements = if behind <= TAIL_INLINE {
                    read_tail(self.store.as_ref(), &self.topic, self.next, count)?
                } else {
                    read(&self.store, &self.topic, self.next, count).await?
                };
                let Some(last) = elements.last() else {
                    let first = self.topic.published.borrow().range.first;
                    return Err(self.fell_behind(first));
                };
                self.next = last.seq + 1;
                self.published_at = published.at;
                return Ok(elements);
            }
            if self.published.changed().await.is_err() {
                return Err(Error::Closed);
            }
            if bugs::on(Bug::SubscriberRedelivers) && self.next > 1 {
                self.next -= 1;
            }
        }
    }

    fn fell_behind(&self, first: u64) -> Error {
        Error::FellBehind {
            topic: self.topic.meta.name.to_string(),
            next: self.next,
            first,
        }
    }
}

/// The one task that writes a topic.
struct Writer {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    machine: Machine,
    /// Producer windows as of the last decided append.
    windows: Windows,
    published: watch::Sender<Published>,
    trim: Trim,
}

/// What deciding one group produced.
struct Group {
    batch: WriteBatch,
    answers: Vec<(
        oneshot::Sender<Result<AppendOutcome>>,
        Result<AppendOutcome>,
    )>,
    delete: Option<oneshot::Sender<Result<()>>>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>, mut shutdown: watch::Receiver<bool>) {
        self.request_trim();
        let mut carry: Option<Command> = None;
        let mut deleted = false;
        while !deleted {
            let first = match carry.take() {
                Some(c) => c,
                None => tokio::select! {
                    c = rx.recv() => match c { Some(c) => c, None => break },
                    _ = shutdown.wait_for(|stop| *stop) => break,
                },
            };
            let (commands, left) = batch::fill(first, || rx.try_recv().ok(), GROUP, Command::bytes);
            carry = left;
            deleted = self.process(commands).await;
        }
        let state = if deleted {
            TopicState::Deleted
        } else {
            TopicState::Closed
        };
        self.published.send_modify(|p| p.state = state);
        rx.close();
        let refusal = || match state {
            TopicState::Deleted => Error::TopicNotFound(self.machine.meta().name.to_string()),
            _ => Error::Closed,
        };
        if let Some(c) = carry {
            c.refuse(refusal());
        }
        while let Ok(c) = rx.try_recv() {
            c.refuse(refusal());
        }
    }

    /// Decides, writes and answers one group. Returns whether the topic was deleted.
    async fn process(&mut self, commands: Vec<Command>) -> bool {
        self.windows.bound();
        let now_ms = self.clock.now_ms();
        // Deciding may read producer windows from the store, so it runs off
        // the async threads together with the write.
        let mut machine = self.machine.clone();
        let mut windows = std::mem::take(&mut self.windows);
        let store = self.store.clone();
        let joined = crate::store::blocking(move || {
            let group = decide(&*store, &mut machine, &mut windows, commands, now_ms);
            let written = if group.batch.is_empty() {
                Ok(())
            } else {
                store.write(&group.batch)
            };
            Ok((machine, windows, group, written))
        })
        .await;
        let (machine, windows, group, written) = match joined {
            Ok(done) => done,
            Err(e) => {
                // The commands' reply senders were dropped with the task, so
                // their callers see `Closed`; the state is as before.
                tracing::error!(topic = %self.machine.meta().name, "writer task failed: {e}");
                return false;
            }
        };
        match written {
            Ok(()) => {
                self.machine = machine;
                self.windows = windows;
                let deleted = group.delete.is_some();
                let range = self.machine.range();
                self.published.send_modify(|p| {
                    p.range = range;
                    p.at = std::time::Instant::now();
                });
                for (reply, answer) in group.answers {
                    let _ = reply.send(answer);
                }
                if let Some(reply) = group.delete {
                    let _ = reply.send(Ok(()));
                }
                self.request_trim();
                deleted
            }
            Err(e) => {
                tracing::error!(topic = %self.machine.meta().name, "write failed: {e}");
                // The windows decided with this group were never written:
                // `self.windows` is empty (taken above) and is read again.
                for (reply, answer) in group.answers {
                    let _ = reply.send(answer.and(Err(e.clone())));
                }
                if let Some(reply) = group.delete {
                    let _ = reply.send(Err(e));
                }
                false
            }
        }
    }

    /// Asks the trimmer to delete what fell out of the history, once enough has.
    fn request_trim(&mut self) {
        self.trim.request(
            self.machine.range(),
            self.machine.meta().config.history,
            None,
        );
    }
}

fn decide(
    store: &dyn Store,
    machine: &mut Machine,
    windows: &mut Windows,
    commands: Vec<Command>,
    now_ms: u64,
) -> Group {
    let mut group = Group {
        batch: WriteBatch::default(),
        answers: Vec::with_capacity(commands.len()),
        delete: None,
    };
    for command in commands {
        match command {
            Command::Append { .. } if group.delete.is_some() => {
                command.refuse(Error::TopicNotFound(machine.meta().name.to_string()));
            }
            Command::Append {
                payloads,
                producer,
                _permit,
                reply,
            } => {
                let answer = appender::append(
                    store,
                    machine,
                    windows,
                    &mut group.batch,
                    payloads,
                    producer.as_ref(),
                    now_ms,
                    Default::default(),
                );
                group.answers.push((reply, answer));
            }
            Command::Delete { reply } => {
                group.batch.push(Op::DeleteTopic(machine.meta().id));
                group.delete = Some(reply);
            }
        }
    }
    group
}

async fn run_trimmer(store: Arc<dyn Store>, topic: TopicId, mut below: watch::Receiver<u64>) {
    while below.changed().await.is_ok() {
        let seq = *below.borrow_and_update();
        let store = store.clone();
        if let Err(e) = blocking(move || store.trim(topic, seq)).await {
            // Harmless for readers (they never look below the history); the
            // next trim covers this range again.
            tracing::warn!(topic = topic.0, "trim below {seq} failed: {e}");
        }
    }
}
