//! Prometheus metrics: what a node counts, and `GET /metrics` on
//! `--metrics-listen` (OpenMetrics text, with the `prometheus-client` crate).
//!
//! Layout:
//! - this file: [`Metrics`], the node's metrics, cheap to clone. Some are
//!   counted as things happen ([`Metrics::appended`], the request layer,
//!   handler invocations through [`HandlerMetrics`]); the rest are read at
//!   each scrape from the parts that already keep them ([`Sources`]: the
//!   Raft groups, the overlay's member view, the bridge gateway's counts,
//!   `/proc/self`).
//! - [`http`]: the HTTP server for scrapes, and the tower layer on the gRPC
//!   server that times appends and reads and counts refused requests.
//! - [`process`]: CPU and memory from `/proc/self`.
//!
//! Every name starts with `woof_`. Label values are bounded: at most
//! [`TOPIC_LABELS_MAX`] topics (and as many handlers) get their own series,
//! the rest share `other`, so a node with 10,000 topics scrapes in
//! milliseconds. The hot path takes no global lock: a topic's counters are
//! found in one of [`SHARDS`] read-locked maps and cached from its first
//! append on.

pub mod http;
pub mod process;

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::devices::gateway::Counts;
use crate::groups::Groups;
use crate::handlers::journal::Outcome;

/// Topics with series of their own; later ones count under `other`.
pub const TOPIC_LABELS_MAX: usize = 1000;
/// (topic, handler) pairs with series of their own; later ones, `other`.
pub const HANDLER_LABELS_MAX: usize = 1000;
/// The label value the topics and handlers past the bound share.
pub const OTHER: &str = "other";
/// Shards of the topic-counter cache (each behind its own lock).
pub const SHARDS: usize = 16;
/// How long a scrape waits for the overlay's member view.
const MEMBERS_WAIT: Duration = Duration::from_secs(1);

/// Latency buckets, 100 µs to about 13 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0001, 2.0, 18)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabel {
    topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandlerLabel {
    topic: String,
    handler: String,
}

/// A node's metrics; cheap to clone (shared).
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    append_seconds: Histogram,
    read_seconds: Histogram,
    topics: TopicCounters,
    rejected: Family<CodeLabel, Counter>,
    subscribers: Gauge,
    handlers: HandlerMetrics,
    sources: Arc<Sources>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let append_seconds = Histogram::new(latency_buckets());
        let read_seconds = Histogram::new(latency_buckets());
        let topics = TopicCounters::new();
        let rejected = Family::<CodeLabel, Counter>::default();
        let subscribers = Gauge::default();
        let handlers = HandlerMetrics::default();
        let sources = Arc::new(Sources::default());
        let mut r = Registry::with_prefix("woof");
        r.register_with_unit(
            "append_latency",
            "Time to answer an Append or AppendBatch request that succeeded (committed)",
            Unit::Seconds,
            append_seconds.clone(),
        );
        r.register_with_unit(
            "read_latency",
            "Time to answer a Get, Latest or Scan request that succeeded",
            Unit::Seconds,
            read_seconds.clone(),
        );
        r.register(
            "topic_appends",
            "Elements appended through gRPC, per topic (the first 1000 topics; the rest under topic=\"other\")",
            topics.appends.clone(),
        );
        r.register_with_unit(
            "topic_appended",
            "Payload bytes appended through gRPC, per topic (bounded as woof_topic_appends)",
            Unit::Bytes,
            topics.bytes.clone(),
        );
        r.register(
            "requests_rejected",
            "gRPC requests answered with an error status, by code",
            rejected.clone(),
        );
        r.register(
            "subscribers",
            "Subscriptions this node serves now",
            subscribers.clone(),
        );
        r.register(
            "handler_invocations",
            "Handler invocations run by this node, per topic and handler (bounded to 1000 pairs, then \"other\")",
            handlers.invocations.clone(),
        );
        r.register(
            "handler_errors",
            "Handler invocations that raised or failed, per topic and handler",
            handlers.errors.clone(),
        );
        r.register(
            "handler_timeouts",
            "Handler invocations that overran their time budget, per topic and handler",
            handlers.timeouts.clone(),
        );
        r.register_with_unit(
            "handler_dispatch_latency",
            "Time from an element's commit to its handler's start, on this node",
            Unit::Seconds,
            handlers.dispatch_seconds.clone(),
        );
        r.register_collector(Box::new(SourcesCollector(sources.clone())));
        Self {
            inner: Arc::new(Inner {
                registry: r,
                append_seconds,
                read_seconds,
                topics,
                rejected,
                subscribers,
                handlers,
                sources,
            }),
        }
    }

    /// Counts `count` elements of `bytes` payload bytes appended to `topic`.
    pub fn appended(&self, topic: &str, count: u64, bytes: u64) {
        let h = self.inner.topics.handles(topic);
        h.appends.inc_by(count);
        h.bytes.inc_by(bytes);
    }

    /// A subscription began; it counts until the guard is dropped.
    pub fn subscribed(&self) -> SubscriberGuard {
        self.inner.subscribers.inc();
        SubscriberGuard(self.inner.subscribers.clone())
    }

    /// What handler invocations are counted into (see the journal).
    pub fn handlers(&self) -> &HandlerMetrics {
        &self.inner.handlers
    }

    /// Reads this node's groups at each scrape (cluster nodes).
    pub fn watch_groups(&self, groups: Groups) {
        *lock(&self.inner.sources.groups) = Some(groups);
    }

    /// Reads the overlay's member view at each scrape (cluster nodes).
    pub fn watch_overlay(&self, overlay: woof_overlay::Client) {
        *lock(&self.inner.sources.overlay) = Some(overlay);
    }

    /// Reads a bridge gateway's counts at each scrape.
    pub fn watch_gateway(&self, counts: Arc<Counts>) {
        *lock(&self.inner.sources.gateway) = Some(counts);
    }

    /// Lets go of the groups and overlay (they hold the store): a stopping
    /// node calls it before it closes its store.
    pub fn unwatch(&self) {
        lock(&self.inner.sources.groups).take();
        lock(&self.inner.sources.overlay).take();
    }

    /// The text a scrape gets (OpenMetrics).
    pub async fn render(&self) -> String {
        let overlay = lock(&self.inner.sources.overlay).clone();
        if let Some(overlay) = overlay {
            let members = tokio::time::timeout(MEMBERS_WAIT, overlay.members()).await;
            let mut by_state = [0u64; 3];
            if let Ok(Ok(members)) = members {
                for m in members {
                    by_state[match m.liveness {
                        woof_overlay::Liveness::Alive => 0,
                        woof_overlay::Liveness::Suspected => 1,
                        woof_overlay::Liveness::Gone => 2,
                    }] += 1;
                }
                *lock(&self.inner.sources.peers) = Some(by_state);
            }
        }
        let mut out = String::with_capacity(32 << 10);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry) {
            tracing::warn!("encoding the metrics failed: {e}");
        }
        out
    }

    fn observe(&self, kind: Timed, elapsed: Duration) {
        match kind {
            Timed::Append => &self.inner.append_seconds,
            Timed::Read => &self.inner.read_seconds,
        }
        .observe(elapsed.as_secs_f64());
    }

    /// One request of an append stream answered: committed after
    /// `elapsed` (`Ok`), or refused with a gRPC code (`Err`), counted as
    /// a unary call's answer is.
    pub fn stream_answered(&self, answer: Result<Duration, i32>) {
        match answer {
            Ok(elapsed) => self.observe(Timed::Append, elapsed),
            Err(code) => self.rejected(code),
        }
    }

    fn rejected(&self, code: i32) {
        self.inner
            .rejected
            .get_or_create(&CodeLabel {
                code: code_name(code).to_string(),
            })
            .inc();
    }
}

/// Which latency a request counts into.
#[derive(Debug, Clone, Copy)]
enum Timed {
    Append,
    Read,
}

/// Counts a subscription while it lives.
pub struct SubscriberGuard(Gauge);

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The canonical name of a gRPC status code.
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

/// One topic's counters.
#[derive(Clone, Debug)]
struct TopicHandles {
    appends: Counter,
    bytes: Counter,
}

/// Per-topic counters, found without a global lock and bounded in topics.
#[derive(Debug)]
struct TopicCounters {
    appends: Family<TopicLabel, Counter>,
    bytes: Family<TopicLabel, Counter>,
    shards: Vec<RwLock<HashMap<Box<str>, TopicHandles>>>,
    hasher: RandomState,
    /// Topics given series of their own so far (at most
    /// [`TOPIC_LABELS_MAX`]).
    labelled: AtomicUsize,
    other: TopicHandles,
}

impl TopicCounters {
    fn new() -> Self {
        let appends = Family::<TopicLabel, Counter>::default();
        let bytes = Family::<TopicLabel, Counter>::default();
        let other = TopicLabel {
            topic: OTHER.to_string(),
        };
        let other = TopicHandles {
            appends: appends.get_or_create(&other).clone(),
            bytes: bytes.get_or_create(&other).clone(),
        };
        Self {
            appends,
            bytes,
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: RandomState::new(),
            labelled: AtomicUsize::new(0),
            other,
        }
    }

    fn handles(&self, topic: &str) -> TopicHandles {
        let shard = &self.shards[self.hasher.hash_one(topic) as usize % SHARDS];
        if let Some(h) = shard.read().unwrap_or_else(|e| e.into_inner()).get(topic) {
            return h.clone();
        }
        if self.labelled.load(Ordering::Relaxed) >= TOPIC_LABELS_MAX || topic == OTHER {
            return self.other.clone();
        }
        let mut map = shard.write().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = map.get(topic) {
            return h.clone();
        }
        if self.labelled.fetch_add(1, Ordering::Relaxed) >= TOPIC_LABELS_MAX {
            self.labelled.fetch_sub(1, Ordering::Relaxed);
            return self.other.clone();
        }
        let label = TopicLabel {
            topic: topic.to_string(),
        };
        let h = TopicHandles {
            appends: self.appends.get_or_create(&label).clone(),
            bytes: self.bytes.get_or_create(&label).clone(),
        };
        map.insert(topic.into(), h.clone());
        h
    }
}

/// What handler invocations count into; the journal records each.
#[derive(Clone, Debug)]
pub struct HandlerMetrics {
    invocations: Family<HandlerLabel, Counter>,
    errors: Family<HandlerLabel, Counter>,
    timeouts: Family<HandlerLabel, Counter>,
    dispatch_seconds: Histogram,
    /// The pairs with series of their own (at most [`HANDLER_LABELS_MAX`]).
    named: Arc<Mutex<HashSet<(String, String)>>>,
}

impl Default for HandlerMetrics {
    fn default() -> Self {
        Self {
            invocations: Family::default(),
            errors: Family::default(),
            timeouts: Family::default(),
            dispatch_seconds: Histogram::new(latency_buckets()),
            named: Arc::default(),
        }
    }
}

impl HandlerMetrics {
    /// The series one invocation of `handler` on an element of `topic`
    /// counts into, resolved once (when it starts running here), so that
    /// counting an invocation takes no lock and no allocation.
    pub fn handles(&self, topic: &str, handler: &str) -> HandlerHandles {
        let label = {
            let mut named = lock(&self.named);
            let key = (topic.to_string(), handler.to_string());
            if named.contains(&key) || named.len() < HANDLER_LABELS_MAX {
                named.insert(key.clone());
                HandlerLabel {
                    topic: key.0,
                    handler: key.1,
                }
            } else {
                HandlerLabel {
                    topic: OTHER.into(),
                    handler: OTHER.into(),
                }
            }
        };
        HandlerHandles {
            invocations: self.invocations.get_or_create(&label).clone(),
            errors: self.errors.get_or_create(&label).clone(),
            timeouts: self.timeouts.get_or_create(&label).clone(),
            dispatch_seconds: self.dispatch_seconds.clone(),
        }
    }
}

/// One handler's series (see [`HandlerMetrics::handles`]).
#[derive(Clone, Debug)]
pub struct HandlerHandles {
    invocations: Counter,
    errors: Counter,
    timeouts: Counter,
    dispatch_seconds: Histogram,
}

impl HandlerHandles {
    /// Counts one invocation.
    pub fn record(&self, outcome: Outcome, dispatch: Duration) {
        self.invocations.inc();
        match outcome {
            Outcome::Ok => {}
            Outcome::Error => {
                self.errors.inc();
            }
            Outcome::Timeout => {
                self.timeouts.inc();
            }
        }
        self.dispatch_seconds.observe(dispatch.as_secs_f64());
    }
}

/// What the groups count for the metrics (see [`Groups::census`]).
#[derive(Debug, Default)]
pub struct RaftCounters {
    /// Times a group here got a leader in a term newer than the last it
    /// saw one in: elections, including those that wake a group.
    pub leader_changes: AtomicU64,
    /// Leaderships this node handed to another to spread them over the
    /// nodes (see `groups::balance`).
    pub leader_moves: AtomicU64,
    /// Snapshots this node began to send to a peer...
    pub snapshot_sends: AtomicU64,
    /// ...and their bytes.
    pub snapshot_bytes: AtomicU64,
}

/// The groups of this node, as a scrape reports them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RaftCensus {
    pub asleep: u64,
    pub awake: u64,
    /// Awake groups by this node's role: leader, follower, candidate or
    /// learner.
    pub leading: u64,
    pub following: u64,
    pub candidate: u64,
    pub learner: u64,
    /// The highest current term among the awake groups.
    pub term_max: u64,
    /// Over the groups this node leads: each follower's lag behind the
    /// leader's log, in entries, the largest and the sum, and how many
    /// followers lag at all.
    pub lag_max: u64,
    pub lag_sum: u64,
    pub followers_behind: u64,
}

/// What is read at each scrape.
#[derive(Default)]
struct Sources {
    groups: Mutex<Option<Groups>>,
    overlay: Mutex<Option<woof_overlay::Client>>,
    gateway: Mutex<Option<Arc<Counts>>>,
    /// Peers by state (alive, suspected, gone) as of the last scrape.
    peers: Mutex<Option<[u64; 3]>>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sources")
    }
}

#[derive(Debug)]
struct SourcesCollector(Arc<Sources>);

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

/// A gauge with one label, one series per `(value, number)`.
fn gauges(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    series: &[(&str, u64)],
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (value, n) in series {
        let labels = [(label, *value)];
        ConstGauge::new(*n as i64).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for SourcesCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let groups = lock(&self.0.groups).clone();
        if let Some(groups) = groups {
            let c = groups.census();
            gauges(
                &mut enc,
                "raft_groups",
                "Raft groups (topics) this node holds, asleep (hibernated) or awake",
                "state",
                &[("asleep", c.asleep), ("awake", c.awake)],
            )?;
            gauges(
                &mut enc,
                "raft_groups_awake_by_role",
                "Awake Raft groups by this node's role in them",
                "role",
                &[
                    ("leader", c.leading),
                    ("follower", c.following),
                    ("candidate", c.candidate),
                    ("learner", c.learner),
                ],
            )?;
            gauge(
                &mut enc,
                "raft_term_max",
                "The highest current Raft term among this node's awake groups",
                c.term_max as i64,
            )?;
            gauge(
                &mut enc,
                "raft_follower_lag_entries_max",
                "Over the groups this node leads: the largest lag of a follower behind the leader's log, in entries",
                c.lag_max as i64,
            )?;
            gauge(
                &mut enc,
                "raft_follower_lag_entries_sum",
                "Over the groups this node leads: the followers' lags summed, in entries",
                c.lag_sum as i64,
            )?;
            gauge(
                &mut enc,
                "raft_followers_behind",
                "Over the groups this node leads: followers whose log lags the leader's",
                c.followers_behind as i64,
            )?;
            let rc = groups.counters();
            counter(
                &mut enc,
                "raft_leader_changes",
                "Times a group on this node got a leader in a newer term (elections, waking from sleep included)",
                rc.leader_changes.load(Ordering::Relaxed),
            )?;
            counter(
                &mut enc,
                "raft_leaderships_balanced",
                "Leaderships this node handed to another node to spread them over the nodes",
                rc.leader_moves.load(Ordering::Relaxed),
            )?;
            counter(
                &mut enc,
                "raft_snapshot_sends",
                "Snapshots this node began to send to a lagging or new replica",
                rc.snapshot_sends.load(Ordering::Relaxed),
            )?;
            counter(
                &mut enc,
                "raft_snapshot_sent_bytes",
                "Snapshot bytes this node sent",
                rc.snapshot_bytes.load(Ordering::Relaxed),
            )?;
        }
        if let Some(p) = *lock(&self.0.peers) {
            gauges(
                &mut enc,
                "overlay_peers",
                "Other nodes in this node's overlay member view, by state",
                "state",
                &[("alive", p[0]), ("suspected", p[1]), ("gone", p[2])],
            )?;
        }
        let gateway = lock(&self.0.gateway).clone();
        if let Some(g) = gateway {
            let get = Counts::get;
            counter(
                &mut enc,
                "gateway_frames_in",
                "Bridge frames received from devices",
                get(&g.frames),
            )?;
            counter(
                &mut enc,
                "gateway_frames_out",
                "Bridge frames sent to devices",
                get(&g.sent),
            )?;
            counter(
                &mut enc,
                "gateway_frames_bad",
                "Bridge frames dropped: malformed, forged, replayed, from unknown devices, or over the rate",
                get(&g.dropped),
            )?;
            counter(
                &mut enc,
                "gateway_frames_rate_limited",
                "Bridge frames dropped for exceeding a rate limit",
                get(&g.rate_limited),
            )?;
            counter(
                &mut enc,
                "gateway_appends",
                "Device readings the gateway appended",
                get(&g.appends),
            )?;
            gauge(
                &mut enc,
                "gateway_devices_connected",
                "Devices with a session at this gateway",
                get(&g.devices) as i64,
            )?;
        }
        if let Some(p) = process::Process::read() {
            let c = ConstCounter::new(p.cpu_seconds);
            c.encode(enc.encode_descriptor(
                "process_cpu",
                "User and system CPU time of the node process",
                Some(&Unit::Seconds),
                c.metric_type(),
            )?)?;
            let g = ConstGauge::new(p.resident_bytes as i64);
            g.encode(enc.encode_descriptor(
                "process_resident_memory",
                "Resident memory of the node process",
                Some(&Unit::Bytes),
                g.metric_type(),
            )?)?;
            let g = ConstGauge::new(p.virtual_bytes as i64);
            g.encode(enc.encode_descriptor(
                "process_virtual_memory",
                "Virtual memory of the node process",
                Some(&Unit::Bytes),
                g.metric_type(),
            )?)?;
            gauge(
                &mut enc,
                "process_threads",
                "Threads of the node process",
                p.threads as i64,
            )?;
            gauge(
                &mut enc,
                "process_open_fds",
                "Open file descriptors of the node process",
                p.open_fds as i64,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn topics_past_the_bound_count_as_other() {
        let m = Metrics::new();
        for i in 0..TOPIC_LABELS_MAX + 50 {
            m.appended(&format!("t/{i}"), 1, 10);
        }
        m.appended("t/0", 2, 5);
        let text = m.render().await;
        assert!(
            text.contains("woof_topic_appends_total{topic=\"t/0\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("woof_topic_appended_bytes_total{topic=\"t/0\"} 15\n"));
        assert!(text.contains("woof_topic_appends_total{topic=\"other\"} 50\n"));
        let series = text
            .lines()
            .filter(|l| l.starts_with("woof_topic_appends_total{"))
            .count();
        assert_eq!(series, TOPIC_LABELS_MAX + 1);
        assert!(text.contains("# HELP woof_append_latency_seconds "));
        assert!(text.contains("woof_process_resident_memory_bytes "));
    }

    #[test]
    fn handlers_past_the_bound_count_as_other() {
        let h = HandlerMetrics::default();
        for i in 0..HANDLER_LABELS_MAX + 3 {
            h.handles("t", &format!("h{i}"))
                .record(Outcome::Timeout, Duration::ZERO);
        }
        let other = HandlerLabel {
            topic: OTHER.into(),
            handler: OTHER.into(),
        };
        assert_eq!(h.timeouts.get_or_create(&other).get(), 3);
        assert_eq!(lock(&h.named).len(), HANDLER_LABELS_MAX);
    }
}
