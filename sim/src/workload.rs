//! The clients: each appends to random topics with its own producer id and
//! increasing producer sequences, through the node it believes leads the
//! topic's group (following "forward to leader", retrying the same producer
//! sequence after any error that leaves the outcome unknown, with a bounded
//! backoff), and reads a topic's latest range from a replica. Every request
//! and answer is recorded (for the checkers) and is an event in the history.
//!
//! A sampler reads every running replica's stored elements once a second,
//! so that the agreement checker sees replicas as they were during the run,
//! not only at its end.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use serde_bytes::ByteBuf;
use woof_consensus::Clock;
use woof_consensus::raft::{Command, CommandResult};
use woof_consensus::store::Store;

use crate::config::Broken;
use crate::node::Cluster;
use crate::rng::SimRng;

/// One client request's longest wait for an answer.
const REQUEST_MS_MAX: u64 = 2_000;
/// How long a client keeps retrying one append before it gives up on it
/// (its outcome then stays unknown).
const APPEND_MS_MAX: u64 = 10_000;
/// The most attempts of one append.
const ATTEMPTS_MAX: u32 = 40;
/// Backoff between attempts: from this, doubling, up to [`BACKOFF_MS_MAX`].
const BACKOFF_MS_MIN: u64 = 10;
const BACKOFF_MS_MAX: u64 = 320;
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

/// What the clients and the sampler saw.
#[derive(Debug, Default)]
pub struct Record {
    pub appends: Vec<Append>,
    pub samples: Vec<Sample>,
    pub reads: u64,
    next_op: u64,
}

impl Record {
    fn next_op(&mut self) -> u64 {
        self.next_op += 1;
        self.next_op
    }
}

pub type Shared = Arc<Mutex<Record>>;

fn lock(r: &Shared) -> std::sync::MutexGuard<'_, Record> {
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
    // Where this client believes each topic's leader is.
    let mut leaders: BTreeMap<usize, u64> = BTreeMap::new();
    while cluster.rec.now_ms() < until_ms {
        tokio::time::sleep(Duration::from_millis(rng.range(5, 60))).await;
        let topic = rng.range(0, cluster.plans.len() as u64) as usize;
        if rng.chance(0.2) {
            read_latest(&cluster, &record, client, topic, &mut rng);
            continue;
        }
        let pseq = producer_seqs.entry(topic).or_insert(0);
        *pseq += 1;
        let count = rng.range(1, 4);
        let payloads: Vec<Vec<u8>> = (0..count)
            .map(|k| format!("c{client}/t{topic}/p{pseq}/{k}").into_bytes())
            .collect();
        *pseq = append(
            &cluster,
            &record,
            Request {
                client,
                topic,
                producer: &producer,
                pseq: *pseq,
                payloads,
            },
            &mut leaders,
            &mut rng,
            broken,
        )
        .await;
    }
}

fn read_latest(cluster: &Cluster, record: &Shared, client: usize, topic: usize, rng: &mut SimRng) {
    let plan = &cluster.plans[topic];
    let Some(node) = rng.pick(&plan.replicas).copied() else {
        return;
    };
    let answer = match cluster.topics(node) {
        None => "node down".to_string(),
        Some(t) => match t.latest(&plan.name) {
            Ok(r) => format!("{}..={}", r.first, r.last),
            Err(e) => format!("error: {e}"),
        },
    };
    lock(record).reads += 1;
    cluster.rec.event(format_args!(
        "c{client} latest t{topic} at n{node}: {answer}"
    ));
}

/// One append a client makes.
struct Request<'a> {
    client: usize,
    topic: usize,
    producer: &'a str,
    pseq: u64,
    payloads: Vec<Vec<u8>>,
}

/// Makes one append, with retries; returns the last producer sequence used.
async fn append(
    cluster: &Cluster,
    record: &Shared,
    request: Request<'_>,
    leaders: &mut BTreeMap<usize, u64>,
    rng: &mut SimRng,
    broken: Option<Broken>,
) -> u64 {
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
        let node = match leaders.get(&topic) {
            Some(n) => *n,
            None => *rng.pick(&plan.replicas).expect("a topic has replicas"),
        };
        let (Some(raft), Some(clock)) = (cluster.raft(node, plan.group), cluster.clock(node))
        else {
            last_error = format!("n{node} down");
            leaders.remove(&topic);
            tokio::time::sleep(Duration::from_millis(backoff)).await;
            backoff = (backoff * 2).min(BACKOFF_MS_MAX);
            continue;
        };
        let command = Command::Append {
            payloads: payloads.iter().map(|p| ByteBuf::from(p.clone())).collect(),
            producer: Some((producer.to_string(), pseq)),
            time_ms: clock.now_ms(),
        };
        if broken == Some(Broken::AckBeforeCommit)
            && raft.current_leader().await == Some(node)
            && let Some(topics) = cluster.topics(node)
        {
            let first_seq = topics.latest(&plan.name).map_or(1, |r| r.last + 1);
            tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    Duration::from_millis(REQUEST_MS_MAX),
                    raft.client_write(command),
                )
                .await;
            });
            break AppendResult::Acked {
                first_seq,
                count: payloads.len() as u64,
                duplicate: false,
            };
        }
        let answer = tokio::time::timeout(
            Duration::from_millis(REQUEST_MS_MAX),
            raft.client_write(command),
        )
        .await;
        match answer {
            Ok(Ok(r)) => match r.data {
                CommandResult::Appended(o) => {
                    leaders.insert(topic, node);
                    break AppendResult::Acked {
                        first_seq: o.first_seq,
                        count: o.count,
                        duplicate: o.duplicate,
                    };
                }
                CommandResult::Refused(e) => break AppendResult::Refused(e.to_string()),
                other => break AppendResult::Refused(format!("unexpected answer {other:?}")),
            },
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                last_error = format!("n{node} is not the leader");
                match f.leader_id.filter(|l| plan.replicas.contains(l)) {
                    Some(l) if l != node => {
                        leaders.insert(topic, l);
                        // Straight to the named leader.
                        continue;
                    }
                    _ => {
                        leaders.remove(&topic);
                    }
                }
            }
            Ok(Err(e)) => {
                last_error = format!("n{node}: {e}");
                leaders.remove(&topic);
                if broken == Some(Broken::RetryWithNewSeq) {
                    pseq += 1;
                }
            }
            Err(_) => {
                last_error = format!("n{node}: no answer in {REQUEST_MS_MAX} ms");
                leaders.remove(&topic);
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
        result,
    });
    pseq
}

/// Reads what every running replica stores, once a second, until `until_ms`.
pub async fn sampler(cluster: Arc<Cluster>, record: Shared, until_ms: u64) {
    // The next seq to read per (node, topic); reset when a node restarts.
    let mut cursors: BTreeMap<(u64, usize), (u64, u64)> = BTreeMap::new();
    while cluster.rec.now_ms() < until_ms {
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let at_ms = cluster.rec.now_ms();
        let mut samples = Vec::new();
        for plan in &cluster.plans {
            for node in &plan.replicas {
                if !cluster.is_up(*node) {
                    continue;
                }
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

/// The leader named by a group's replicas, if any agree on one that is up.
pub async fn leader_of(cluster: &Cluster, topic: usize) -> Option<u64> {
    let plan = &cluster.plans[topic];
    for node in &plan.replicas {
        if let Some(raft) = cluster.raft(*node, plan.group)
            && let Some(l) = raft.current_leader().await
            && cluster.is_up(l)
        {
            return Some(l);
        }
    }
    None
}
