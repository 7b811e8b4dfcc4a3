//! The clients: each appends to random topics with its own producer id and
//! increasing producer sequences, at a node (the one that last answered for
//! the topic, else any), through that node's `ClusterTopics` (which finds
//! the topic through its replica, its cache or the DHT, and whose group
//! layer forwards the append to the topic's leader), retrying the same
//! producer sequence after any error that leaves the outcome unknown, with
//! a bounded backoff. Client 0 is a client without a producer id (the node
//! gives its appends an identity of its own, which the node's retries keep):
//! it never retries, since a retry of its own would be a new append; its
//! appends must still appear at most once. Clients read a topic's latest range and gets elements the
//! same way (`ClusterTopics::latest` and `get`: a replica that holds an
//! element answers from its copy, else the leader, which confirms with a
//! quorum that it leads). Subscribers follow topics through
//! `ClusterTopics::subscribe` at a replica (its own copy) or at any other
//! node (a remote follow at the leader), from the start, the earliest or
//! the latest element, and resume elsewhere when theirs goes down. An admin
//! creates, deletes and re-creates extra topics from random nodes during
//! the faults.
//! After the faults, a probe appends to every topic (the progress checker).
//! Clients' calls and answers cross the simulated network (delays, drops: a
//! lost answer leaves the outcome unknown). Every request and answer is
//! recorded (for the checkers) and is an event in the history.
//!
//! A sampler reads every running replica's stored elements once a second,
//! so that the agreement checker sees replicas as they were during the run,
//! not only at its end.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use woof_consensus::raft::Command;
use woof_consensus::store::Store;
use woof_consensus::topic::Producer;
use woof_consensus::{Clock, Start};
use woof_node::api::Following;

use crate::config::Broken;
use crate::node::{Cluster, TopicPlan};
use crate::rng::SimRng;

/// One client request's longest wait for an answer.
/// The client that appends without a producer id.
const ANONYMOUS_CLIENT: usize = 0;
const REQUEST_MS_MAX: u64 = 2_000;
/// How long a client keeps retrying one append before it gives up on it
/// (its outcome then stays unknown).
const APPEND_MS_MAX: u64 = 10_000;
/// The most attempts of one append.
const ATTEMPTS_MAX: u32 = 40;
/// Backoff between attempts: from this, doubling, up to [`BACKOFF_MS_MAX`].
const BACKOFF_MS_MIN: u64 = 10;
const BACKOFF_MS_MAX: u64 = 320;
/// A subscriber follows one topic this long (range, ms).
const FOLLOW_MS: (u64, u64) = (500, 8_000);
/// A subscriber resumes one topic at most this often.
const RESUMES_MAX: u32 = 10;
/// Elements one subscription takes at most, and per call.
const SUBSCRIBED_ELEMENTS_MAX: usize = 100_000;
const SUBSCRIBE_BATCH_MAX: usize = 64;
/// Elements the sampler reads per replica and topic each round.
const SAMPLE_ELEMENTS_MAX: usize = 2_000;
/// Samples one run keeps at most (the sampler stops there).
const SAMPLES_MAX: usize = 2_000_000;

/// How an append ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendResult {
    /// Committed at `first_seq..first_seq + count` (`duplicate`: a retry the
    /// topic recognised, nothing written again).
    Acked {
        first_seq: u64,
        count: u64,
        duplicate: bool,
    },
    /// Refused, certainly not appended.
    Refused(String),
    /// The client gave up; the append may or may not have been committed.
    Unknown(String),
}

/// One append as a client issued it (all attempts together).
#[derive(Debug, Clone)]
pub struct Append {
    pub op: u64,
    pub client: usize,
    pub topic: usize,
    pub producer: String,
    pub producer_seq: u64,
    pub payloads: Vec<Vec<u8>>,
    pub invoked_ms: u64,
    pub done_ms: u64,
    pub attempts: u32,
    pub result: AppendResult,
}

/// A replica's element as seen by the sampler.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at_ms: u64,
    pub node: u64,
    pub topic: usize,
    pub seq: u64,
    pub payload: Vec<u8>,
}

/// How a read ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadResult {
    /// The range the leader held (`last` 0: empty): a read of the latest range.
    Range { first: u64, last: u64 },
    /// The element asked for: a get.
    Element { seq: u64, payload: Vec<u8> },
    /// A get of an element the topic does not hold (out of range).
    Missing { seq: u64 },
    /// No answer (no leader, a timeout, a node down): not a read at all.
    Failed(String),
}

/// One read: of a topic's latest range, or a get of one element.
#[derive(Debug, Clone)]
pub struct Read {
    pub op: u64,
    pub client: usize,
    pub topic: usize,
    pub invoked_ms: u64,
    pub done_ms: u64,
    pub result: ReadResult,
}

/// One subscription: what was asked, where it started and what it got.
#[derive(Debug, Clone)]
pub struct Subscribed {
    pub op: u64,
    pub subscriber: usize,
    pub topic: usize,
    pub node: u64,
    pub start: Start,
    /// The seq the subscription said it would deliver first.
    pub from: u64,
    /// What it delivered, in order: (seq, payload).
    pub got: Vec<(u64, Vec<u8>)>,
    /// Why it ended.
    pub ended: String,
}

/// How the topics fared after the faults stopped (the progress checker).
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// When the network was healed and every node was up again.
    pub healed_ms: u64,
    /// Each topic's probe append (also in `Record::appends`).
    pub probes: Vec<Probe>,
    /// Topics whose replicas did not all hold the same elements within
    /// the catch-up time: (topic, each replica's last seq).
    pub lagging: Vec<(usize, Vec<Option<u64>>)>,
    /// The node lost for good after the heal, if one was.
    pub lost: Option<u64>,
    /// The nodes up at the end.
    pub up: Vec<u64>,
}

/// A topic's probe after the faults: when it was acknowledged, if it was.
#[derive(Debug, Clone)]
pub struct Probe {
    pub topic: usize,
    pub acked_ms: Option<u64>,
    pub attempts: u32,
    pub result: AppendResult,
}

/// What the clients, subscribers, probes and the sampler saw.
#[derive(Debug, Default)]
pub struct Record {
    pub appends: Vec<Append>,
    pub samples: Vec<Sample>,
    pub reads: Vec<Read>,
    pub subscriptions: Vec<Subscribed>,
    pub progress: Progress,
    /// The admin's creates and deletes of extra topics.
    pub admin: Vec<crate::admin::AdminOp>,
    /// Names created from several nodes at once (`--concurrent-creates`).
    pub races: Vec<crate::admin::Race>,
    /// Nodes made voters before they held the log.
    pub late_joins: Vec<crate::joins::LateJoin>,
    next_op: u64,
}

impl Record {
    fn next_op(&mut self) -> u64 {
        self.next_op += 1;
        self.next_op
    }
}

pub type Shared = Arc<Mutex<Record>>;

pub(crate) fn lock(r: &Shared) -> std::sync::MutexGuard<'_, Record> {
    r.lock().unwrap_or_else(|e| e.into_inner())
}

/// Client `client`'s work until `until_ms` of simulated time.
pub async fn client(
    cluster: Arc<Cluster>,
    record: Shared,
    client: usize,
    mut rng: SimRng,
    until_ms: u64,
    broken: Option<Broken>,
) {
    let producer = format!("c{client}");
    let mut producer_seqs: BTreeMap<usize, u64> = BTreeMap::new();
    // The node that last answered for each topic.
    let mut gateways: BTreeMap<usize, u64> = BTreeMap::new();
    let mut last_topic = 0;
    // The highest seq of each topic this client had acknowledged.
    let mut acked_last: BTreeMap<usize, u64> = BTreeMap::new();
    while cluster.rec.now_ms() < until_ms {
        tokio::time::sleep(Duration::from_millis(rng.range(5, 60))).await;
        let mut topic = rng.range(0, cluster.plans.len() as u64) as usize;
        if rng.chance(0.2) {
            // Often the topic it appended to last: a read that must see it.
            if rng.chance(0.5) {
                topic = last_topic;
            }
            if rng.chance(0.5) {
                read_latest(&cluster, &record, client, topic, &mut rng).await;
            } else {
                // Up to one past the last element it knows acknowledged.
                let known = acked_last.get(&topic).copied().unwrap_or(0);
                let seq = rng.range(1, known + 2);
                get(&cluster, &record, client, topic, seq, &mut rng).await;
            }
            continue;
        }
        last_topic = topic;
        let pseq = producer_seqs.entry(topic).or_insert(0);
        *pseq += 1;
        let count = rng.range(1, 4);
        let payloads: Vec<Vec<u8>> = (0..count)
            .map(|k| format!("c{client}/t{topic}/p{pseq}/{k}").into_bytes())
            .collect();
        let (used, outcome) = append(
            &cluster,
            &record,
            Request {
                client,
                topic,
                producer: &producer,
                pseq: *pseq,
                payloads,
            },
            &mut gateways,
            &mut rng,
            broken,
        )
        .await;
        *pseq = used;
        if let AppendResult::Acked {
            first_seq, count, ..
        } = outcome
        {
            let last = acked_last.entry(topic).or_insert(0);
            *last = (*last).max(first_seq + count.saturating_sub(1));
        }
    }
}

/// Reads topic `topic`'s latest range as a node serves it: the client asks
/// a node picked at random (a client may be connected to any node), whose
/// `ClusterTopics` asks the topic's leader, which confirms with a quorum
/// that it leads before it answers from what it applied.
async fn read_latest(
    cluster: &Cluster,
    record: &Shared,
    client: usize,
    topic: usize,
    rng: &mut SimRng,
) {
    let plan = &cluster.plans[topic];
    let (read, node) = start_read(cluster, record, client, topic, rng);
    let result = match cluster.api(node) {
        None => ReadResult::Failed(format!("n{node} down")),
        Some(api) => {
            let at_node = tokio::time::timeout(
                Duration::from_millis(REQUEST_MS_MAX),
                api.latest(&plan.name),
            );
            match cluster
                .net
                .client_call(&format!("c{client}"), node, REQUEST_MS_MAX, at_node)
                .await
            {
                Some(Ok(Ok(range))) => ReadResult::Range {
                    first: range.first,
                    last: range.last,
                },
                Some(Ok(Err(e))) => ReadResult::Failed(format!("n{node}: {e}")),
                None | Some(Err(_)) => {
                    ReadResult::Failed(format!("n{node}: no answer in {REQUEST_MS_MAX} ms"))
                }
            }
        }
    };
    finish_read(
        cluster,
        record,
        Read { result, ..read },
        format!("latest t{topic} at n{node}"),
    );
}

/// Starts a read of `topic` by `client`: its op and call time (the result
/// to fill in), and the node it asks, picked at random among those up (a
/// client may be connected to any node).
fn start_read(
    cluster: &Cluster,
    record: &Shared,
    client: usize,
    topic: usize,
    rng: &mut SimRng,
) -> (Read, u64) {
    let read = Read {
        op: lock(record).next_op(),
        client,
        topic,
        invoked_ms: cluster.rec.now_ms(),
        done_ms: 0,
        result: ReadResult::Failed("not answered".into()),
    };
    let node = *rng
        .pick(&cluster.up_ids())
        .expect("a majority is always up");
    (read, node)
}

/// Records `read`, which ends now, and notes it in the history as `what`.
fn finish_read(cluster: &Cluster, record: &Shared, mut read: Read, what: String) {
    read.done_ms = cluster.rec.now_ms();
    let answer = match &read.result {
        ReadResult::Element { payload, .. } => String::from_utf8_lossy(payload).into_owned(),
        other => format!("{other:?}"),
    };
    cluster.rec.event(format_args!(
        "c{} read#{} {what}: {answer}",
        read.client, read.op
    ));
    lock(record).reads.push(read);
}

/// Gets element `seq` of topic `topic` as a node serves it: the client asks
/// a node picked at random, whose `ClusterTopics::get` answers from its own
/// replica if that holds the element (elements never change), else asks
/// the leader.
async fn get(
    cluster: &Cluster,
    record: &Shared,
    client: usize,
    topic: usize,
    seq: u64,
    rng: &mut SimRng,
) {
    let plan = &cluster.plans[topic];
    let (read, node) = start_read(cluster, record, client, topic, rng);
    let result = match cluster.api(node) {
        Some(api) => {
            let at_node = tokio::time::timeout(
                Duration::from_millis(REQUEST_MS_MAX),
                api.get(&plan.name, seq),
            );
            match cluster
                .net
                .client_call(&format!("c{client}"), node, REQUEST_MS_MAX, at_node)
                .await
            {
                Some(Ok(Ok(e))) if e.seq == seq => ReadResult::Element {
                    seq,
                    payload: e.payload.to_vec(),
                },
                Some(Ok(Ok(e))) => {
                    ReadResult::Failed(format!("asked for seq {seq}, got {}", e.seq))
                }
                Some(Ok(Err(woof_node::error::Error::Log(
                    woof_consensus::Error::OutOfRange { .. },
                )))) => ReadResult::Missing { seq },
                Some(Ok(Err(e))) => ReadResult::Failed(format!("n{node}: {e}")),
                None | Some(Err(_)) => {
                    ReadResult::Failed(format!("n{node}: no answer in {REQUEST_MS_MAX} ms"))
                }
            }
        }
        None => ReadResult::Failed(format!("n{node} down")),
    };
    finish_read(
        cluster,
        record,
        Read { result, ..read },
        format!("get t{topic} #{seq} at n{node}"),
    );
}

/// Subscriber `index`'s work until `until_ms`: follows a random topic from
/// a random replica for a while, from the first element, the earliest or
/// the latest; when its replica goes down, it resumes at another from the
/// next element it expects.
pub async fn subscriber(
    cluster: Arc<Cluster>,
    record: Shared,
    index: usize,
    mut rng: SimRng,
    until_ms: u64,
) {
    while cluster.rec.now_ms() < until_ms {
        tokio::time::sleep(Duration::from_millis(rng.range(10, 200))).await;
        let topic = rng.range(0, cluster.plans.len() as u64) as usize;
        let mut start = match rng.range(0, 5) {
            0 => Start::Earliest,
            1 => Start::Latest,
            _ => Start::Seq(1),
        };
        let follow_until =
            (cluster.rec.now_ms() + rng.range(FOLLOW_MS.0, FOLLOW_MS.1)).min(until_ms);
        let mut resumes = 0;
        while cluster.rec.now_ms() < follow_until && resumes < RESUMES_MAX {
            // A replica (which serves it from its own copy) or any node
            // (which follows it at the leader, step by step).
            let candidates = if rng.chance(0.5) {
                cluster.voters(&cluster.plans[topic])
            } else {
                cluster.ids()
            };
            let node = *rng.pick(&candidates).expect("nodes");
            match follow(&cluster, &record, index, topic, node, start, follow_until).await {
                Some(next) => {
                    resumes += 1;
                    start = Start::Seq(next);
                    tokio::time::sleep(Duration::from_millis(rng.range(10, 100))).await;
                }
                None => break,
            }
        }
    }
}

/// Subscribes to `plan`'s topic at `node` from `start`, as the node serves a
/// subscription (`ClusterTopics::subscribe`: its own replica, or a remote
/// follow at the leader).
async fn open_feed(
    cluster: &Cluster,
    plan: &TopicPlan,
    node: u64,
    start: Start,
) -> Result<Following, String> {
    let Some(api) = cluster.api(node) else {
        return Err(format!("n{node} down"));
    };
    api.subscribe(&plan.name, start)
        .await
        .map_err(|e| e.to_string())
}

/// The next batch of a subscription, as (seq, payload).
async fn next_batch(feed: &mut Following) -> Result<Vec<(u64, Vec<u8>)>, String> {
    let batch = feed
        .next_batch(SUBSCRIBE_BATCH_MAX)
        .await
        .map_err(|e| e.to_string())?;
    Ok(batch
        .into_iter()
        .map(|e| (e.seq, e.payload.to_vec()))
        .collect())
}

/// Follows `topic` at `node` from `start` until `until_ms` or until the
/// subscription ends. Returns the seq to resume from if it ended early
/// (or could not start), `None` if it ran its time.
async fn follow(
    cluster: &Cluster,
    record: &Shared,
    subscriber: usize,
    topic: usize,
    node: u64,
    start: Start,
    until_ms: u64,
) -> Option<u64> {
    let plan = &cluster.plans[topic];
    let resume = match start {
        Start::Seq(s) => s,
        _ => 1,
    };
    let deadline = tokio::time::Instant::now()
        + Duration::from_millis(until_ms.saturating_sub(cluster.rec.now_ms()));
    let opened = tokio::time::timeout_at(deadline, open_feed(cluster, plan, node, start)).await;
    let mut feed = match opened {
        Ok(Ok(feed)) => feed,
        Ok(Err(e)) => {
            cluster.rec.event(format_args!(
                "s{subscriber} cannot follow t{topic} at n{node} from {start:?}: {e}"
            ));
            return Some(resume);
        }
        Err(_) => return None,
    };
    let op = lock(record).next_op();
    let from = feed.next_seq();
    cluster.rec.event(format_args!(
        "s{subscriber} sub#{op} follows t{topic} at n{node} from {start:?}: seq {from}{}",
        if matches!(feed, Following::Remote(_)) {
            " (at the leader)"
        } else {
            ""
        }
    ));
    let mut got: Vec<(u64, Vec<u8>)> = Vec::new();
    let (ended, resume) = loop {
        if got.len() >= SUBSCRIBED_ELEMENTS_MAX {
            break ("enough elements".to_string(), None);
        }
        match tokio::time::timeout_at(deadline, next_batch(&mut feed)).await {
            Err(_) => break ("time up".to_string(), None),
            Ok(Err(e)) => break (e, Some(feed.next_seq())),
            Ok(Ok(batch)) => got.extend(batch),
        }
    };
    cluster.rec.event(format_args!(
        "s{subscriber} sub#{op} ends after {} elements: {ended}",
        got.len()
    ));
    lock(record).subscriptions.push(Subscribed {
        op,
        subscriber,
        topic,
        node,
        start,
        from,
        got,
        ended,
    });
    resume
}

/// The producer id of the probes appended after the faults.
pub const PROBE: &str = "probe";

/// After the faults (at `healed_ms`): appends one probe to every topic at
/// once, as client `client`, for the progress checker.
pub async fn probe(cluster: &Cluster, record: &Shared, client: usize, healed_ms: u64) {
    futures::future::join_all(cluster.plans.iter().map(|plan| async move {
        let mut gateways = BTreeMap::new();
        let mut rng = SimRng::new(0x5052_4f42 ^ plan.index as u64);
        append(
            cluster,
            record,
            Request {
                client,
                topic: plan.index,
                producer: PROBE,
                pseq: 1,
                payloads: vec![format!("probe/t{}", plan.index).into_bytes()],
            },
            &mut gateways,
            &mut rng,
            None,
        )
        .await
    }))
    .await;
    let mut r = lock(record);
    let probes = r
        .appends
        .iter()
        .filter(|a| a.producer == PROBE)
        .map(|a| Probe {
            topic: a.topic,
            acked_ms: matches!(a.result, AppendResult::Acked { .. }).then_some(a.done_ms),
            attempts: a.attempts,
            result: a.result.clone(),
        })
        .collect();
    r.progress.healed_ms = healed_ms;
    r.progress.probes = probes;
}

/// One append a client makes.
struct Request<'a> {
    client: usize,
    topic: usize,
    producer: &'a str,
    pseq: u64,
    payloads: Vec<Vec<u8>>,
}

/// Makes one append, with retries; returns the last producer sequence used
/// and how it ended.
/// Each attempt goes to a node (the one that last answered for the topic,
/// else one picked at random), whose group layer forwards it to the
/// topic's leader, where it is committed with whatever else queued there
/// (group commit), as `woof node` does for a gRPC append.
async fn append(
    cluster: &Cluster,
    record: &Shared,
    request: Request<'_>,
    gateways: &mut BTreeMap<usize, u64>,
    rng: &mut SimRng,
    broken: Option<Broken>,
) -> (u64, AppendResult) {
    let Request {
        client,
        topic,
        producer,
        mut pseq,
        payloads,
    } = request;
    let plan = &cluster.plans[topic];
    let op = lock(record).next_op();
    let invoked_ms = cluster.rec.now_ms();
    cluster.rec.event(format_args!(
        "c{client} append#{op} t{topic} {producer}:{pseq} x{}",
        payloads.len()
    ));
    let mut backoff = BACKOFF_MS_MIN;
    let mut attempts = 0;
    let mut last_error = String::from("no attempt");
    let result = loop {
        if attempts >= ATTEMPTS_MAX || cluster.rec.now_ms() - invoked_ms > APPEND_MS_MAX {
            break AppendResult::Unknown(last_error);
        }
        attempts += 1;
        let node = match gateways.get(&topic) {
            Some(n) => *n,
            None => *rng
                .pick(&cluster.up_ids())
                .expect("a majority is always up"),
        };
        let Some(api) = cluster.api(node) else {
            last_error = format!("n{node} down");
            gateways.remove(&topic);
            tokio::time::sleep(Duration::from_millis(backoff)).await;
            backoff = (backoff * 2).min(BACKOFF_MS_MAX);
            continue;
        };
        if broken == Some(Broken::AckBeforeCommit)
            && let Some(leader) = cluster.leader(plan)
            && let (Some(topics), Some(groups), Some(clock)) = (
                cluster.topics(leader),
                cluster.groups(leader),
                cluster.clock(leader),
            )
        {
            let first_seq = topics.latest(&plan.name).map_or(1, |r| r.last + 1);
            let command = Command::Append {
                payloads: payloads
                    .iter()
                    .map(|p| bytes::Bytes::from(p.clone()))
                    .collect(),
                producer: Some((producer.to_string(), pseq)),
                time_ms: clock.now_ms(),
                cause: None,
                handler: None,
            };
            let group = plan.group;
            let members = groups.local_members(group).unwrap_or_default();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    Duration::from_millis(REQUEST_MS_MAX),
                    groups.write(group, &members, command),
                )
                .await;
            });
            break AppendResult::Acked {
                first_seq,
                count: payloads.len() as u64,
                duplicate: false,
            };
        }
        let anonymous = client == ANONYMOUS_CLIENT;
        let producer_seq = (!anonymous).then(|| Producer {
            id: producer.to_string(),
            seq: pseq,
        });
        let batch: Vec<Bytes> = payloads.iter().map(|p| Bytes::from(p.clone())).collect();
        let at_node = tokio::time::timeout(
            Duration::from_millis(REQUEST_MS_MAX),
            api.append(&plan.name, batch, producer_seq),
        );
        let answer = cluster
            .net
            .client_call(&format!("c{client}"), node, REQUEST_MS_MAX, at_node)
            .await;
        match answer {
            Some(Ok(Ok(o))) => {
                gateways.insert(topic, node);
                break AppendResult::Acked {
                    first_seq: o.first_seq,
                    count: o.count,
                    duplicate: o.duplicate,
                };
            }
            Some(Ok(Err(e))) if refused(&e) => break AppendResult::Refused(e.to_string()),
            Some(Ok(Err(e))) if anonymous => break AppendResult::Unknown(format!("n{node}: {e}")),
            None | Some(Err(_)) if anonymous => {
                break AppendResult::Unknown(format!("n{node}: no answer in {REQUEST_MS_MAX} ms"));
            }
            Some(Ok(Err(e))) => {
                // No leader reached, a leader lost mid-way, the topic not
                // found from there: the outcome is unknown; try again, at
                // another node.
                last_error = format!("n{node}: {e}");
                gateways.remove(&topic);
                if broken == Some(Broken::RetryWithNewSeq) {
                    pseq += 1;
                }
            }
            None | Some(Err(_)) => {
                last_error = format!("n{node}: no answer in {REQUEST_MS_MAX} ms");
                gateways.remove(&topic);
                if broken == Some(Broken::RetryWithNewSeq) {
                    pseq += 1;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(backoff)).await;
        backoff = (backoff * 2).min(BACKOFF_MS_MAX);
    };
    let done_ms = cluster.rec.now_ms();
    cluster.rec.event(format_args!(
        "c{client} append#{op} done after {attempts} attempts: {result:?}"
    ));
    lock(record).appends.push(Append {
        op,
        client,
        topic,
        producer: producer.to_string(),
        producer_seq: pseq,
        payloads,
        invoked_ms,
        done_ms,
        attempts,
        result: result.clone(),
    });
    (pseq, result)
}

/// Whether an append's error says that the topic refused it (nothing
/// written), rather than that its outcome is unknown.
fn refused(e: &woof_node::Error) -> bool {
    use woof_consensus::Error as E;
    matches!(
        e,
        woof_node::Error::Log(E::InvalidArgument(_) | E::ProducerSeq { .. } | E::LimitReached(_))
    )
}

/// Reads what every running replica stores, once a second, until `until_ms`.
pub async fn sampler(cluster: Arc<Cluster>, record: Shared, until_ms: u64) {
    // The next seq to read per (node, topic); reset when a node restarts.
    let mut cursors: BTreeMap<(u64, usize), (u64, u64)> = BTreeMap::new();
    while cluster.rec.now_ms() < until_ms {
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let at_ms = cluster.rec.now_ms();
        let mut samples = Vec::new();
        // Every node that is up: a replica added by repair, or one left
        // behind by it, holds the topic too.
        let up = cluster.up_ids();
        for plan in &cluster.plans {
            for node in &up {
                let Some(store) = cluster.store(*node) else {
                    continue;
                };
                let Some(incarnation) = cluster.incarnation(*node) else {
                    continue;
                };
                let cursor = cursors
                    .entry((*node, plan.index))
                    .or_insert((incarnation, 1));
                if cursor.0 != incarnation {
                    *cursor = (incarnation, 1);
                }
                let Ok(elements) =
                    store.scan(plan.topic_id(), cursor.1, SAMPLE_ELEMENTS_MAX, usize::MAX)
                else {
                    continue;
                };
                for e in elements {
                    cursor.1 = e.seq + 1;
                    samples.push(Sample {
                        at_ms,
                        node: *node,
                        topic: plan.index,
                        seq: e.seq,
                        payload: e.payload.to_vec(),
                    });
                }
            }
        }
        let mut r = lock(&record);
        r.samples.extend(samples);
        if r.samples.len() >= SAMPLES_MAX {
            drop(r);
            cluster
                .rec
                .event(format_args!("sampler stops: {SAMPLES_MAX} samples taken"));
            return;
        }
    }
}

/// The node that leads topic `topic`'s group, if one is up and says so.
pub fn leader_of(cluster: &Cluster, topic: usize) -> Option<u64> {
    cluster.leader(&cluster.plans[topic])
}

/// After the faults: waits (up to `within_ms` of simulated time) until the
/// handler bound to the first topic has finished every element, then reads
/// the topic and the handler's outputs through a live node. `None` when the
/// run has no topic; an error names the read that failed last, and why.
pub async fn handled(
    cluster: &Cluster,
    within_ms: u64,
) -> Option<Result<crate::check::Handled, String>> {
    let plan = cluster.plans.first()?;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(within_ms);
    loop {
        let now_done = async {
            let (id, api) = cluster
                .up_ids()
                .into_iter()
                .find_map(|id| Some((id, cluster.api(id)?)))
                .ok_or("no node is up")?;
            let at = |what: &str, e: &dyn std::fmt::Display| format!("n{id}: {what}: {e}");
            // `handlers` answers from this node's own replica, which may
            // lag (its `last` did, by 39 elements, in seed 188: the outputs,
            // read through the leader, then looked like outputs of nothing);
            // the input's extent is read as the outputs' is.
            let (handlers, _) = api
                .handlers(&plan.name)
                .await
                .map_err(|e| at("handlers", &e))?;
            let last = api
                .latest(&plan.name)
                .await
                .map_err(|e| at("latest of the handled topic", &e))?
                .last;
            let done = handlers
                .iter()
                .find(|h| h.spec.name == crate::node::HANDLER)
                .ok_or_else(|| format!("n{id}: the handler is not bound"))?
                .done;
            let input = scan_all(&api, &plan.name, last)
                .await
                .map_err(|e| at("scanning the handled topic", &e))?;
            let out_last = api
                .latest(crate::node::HANDLED_OUT)
                .await
                .map_err(|e| at("latest of the outputs", &e))?
                .last;
            let output = scan_all(&api, crate::node::HANDLED_OUT, out_last)
                .await
                .map_err(|e| at("scanning the outputs", &e))?;
            Ok::<_, String>(crate::check::Handled {
                input,
                output: output.into_iter().map(|(_, p)| p).collect(),
                done,
            })
        }
        .await;
        let over = tokio::time::Instant::now() >= deadline;
        match now_done {
            Ok(h) if h.done >= h.input.last().map_or(0, |e| e.0) => return Some(Ok(h)),
            Ok(h) if over => return Some(Ok(h)),
            Err(e) if over => return Some(Err(e)),
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Elements 1..=`last` of `topic`, page by page.
async fn scan_all(
    api: &woof_node::api::ClusterTopics,
    topic: &str,
    last: u64,
) -> Result<Vec<(u64, Vec<u8>)>, String> {
    let mut out = Vec::new();
    let mut from = 1;
    while from <= last {
        let limit = (last - from + 1).min(1000) as u32;
        let page = api
            .scan(topic, from, limit)
            .await
            .map_err(|e| format!("from {from}: {e}"))?;
        let next = page
            .last()
            .ok_or_else(|| format!("nothing from {from}, though {last} is the last"))?
            .seq
            + 1;
        out.extend(page.into_iter().map(|e| (e.seq, e.payload.to_vec())));
        from = next;
    }
    Ok(out)
}
