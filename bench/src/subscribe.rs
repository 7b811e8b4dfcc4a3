//! `subscribe`: how soon an append reaches subscribers, on a 3-node cluster
//! with a topic replicated 3 times.
//!
//! One appender at the topic's leader appends at a steady rate; each
//! payload carries the time it was sent (nanoseconds since the run began, on
//! this process's monotonic clock, which the subscribers share). Cases:
//! - one subscriber on the leader's node, and one on a follower's node
//!   (served by that node's replica, after it applies the commit);
//! - fan-out: [`FAN_OUT`] subscribers spread over the three nodes.
//!
//! With `--peer nats`, the same cases then run on NATS JetStream (see
//! `nats.rs`), and the report adds woof/JetStream latency ratios.
//!
//! Latency is from the append being sent to a subscriber receiving the
//! element. Every subscriber must see every element of the case, in order,
//! with no gap and no duplicate; anything else is a failed check.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use tokio::task::JoinHandle;
use woof_proto::v1;

use crate::nats;
use crate::nodes::{self, Cluster};
use crate::report::{Report, probe_machine};

/// Subscribers in the fan-out case.
pub const FAN_OUT: usize = 100;
/// The appender's rate.
const APPENDS_PER_SEC: u64 = 200;
/// How long a subscriber may wait for its next element before the case fails.
const STALL: Duration = Duration::from_secs(10);

/// The one-subscriber cases.
const CASES: [&str; 2] = [
    "1 subscriber on the leader's node",
    "1 subscriber on a follower's node",
];

fn fan_out_case() -> String {
    format!("{FAN_OUT} subscribers over 3 nodes")
}

/// What one subscriber saw: each element's latency from its append (in
/// nanoseconds), and what was wrong (a gap, a stall, an error).
pub struct Seen {
    pub latencies: Vec<u64>,
    pub problems: Vec<String>,
    /// Errors the client recovered from (JetStream's failed pulls).
    pub transient_errors: u64,
}

pub async fn run(woof: &Path, quick: bool, peer: bool) -> anyhow::Result<Report> {
    let secs = if quick { 5 } else { 20 };
    let cluster = Cluster::start(woof, 3).await?;
    let mut report = Report::new(probe_machine(cluster.dir.path())?);
    if let Err(e) = cases(&cluster, &mut report, secs).await {
        return Err(cluster.explain(e));
    }
    // The peer gets the machine to itself, as woof had.
    drop(cluster);
    if peer {
        peer_cases(&mut report, secs).await?;
    }
    Ok(report)
}

async fn cases(cluster: &Cluster, report: &mut Report, secs: u64) -> anyhow::Result<()> {
    let epoch = Instant::now();
    let topic = "bench/subscribe";
    let leader = cluster
        .awake_topic(topic, bytes::Bytes::from_static(b"wake"))
        .await?;
    let follower = (leader + 1) % cluster.nodes.len();
    for (case, at) in [(CASES[0], vec![leader]), (CASES[1], vec![follower])] {
        measure(cluster, report, epoch, topic, leader, &at, secs, case).await?;
    }
    let spread: Vec<usize> = (0..FAN_OUT).map(|i| i % cluster.nodes.len()).collect();
    let case = fan_out_case();
    measure(cluster, report, epoch, topic, leader, &spread, secs, &case).await
}

/// One case: subscribers on the nodes `at` (one per entry) from the next
/// element on, then `secs` of appends at the leader.
#[allow(clippy::too_many_arguments)]
async fn measure(
    cluster: &Cluster,
    report: &mut Report,
    epoch: Instant,
    topic: &str,
    leader: usize,
    at: &[usize],
    secs: u64,
    case: &str,
) -> anyhow::Result<()> {
    let leader_url = cluster.url(leader);
    let mut appender = nodes::connect(leader_url).await?;
    let latest = nodes::call(
        format!("{leader_url}: latest of {topic}"),
        appender.latest(v1::LatestRequest {
            topic: topic.into(),
        }),
    )
    .await?;
    let from = latest.last_seq + 1;
    let count = secs * APPENDS_PER_SEC;
    let mut subscribers = Vec::with_capacity(at.len());
    for &node in at {
        subscribers.push(subscriber(cluster.url(node), topic, from, count, epoch).await?);
    }
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / APPENDS_PER_SEC));
    for i in 0..count {
        tick.tick().await;
        let sent = epoch.elapsed().as_nanos() as u64;
        let appended = nodes::call(
            format!("{leader_url}: append {i} to {topic}"),
            appender.append(v1::AppendRequest {
                topic: topic.into(),
                payload: bytes::Bytes::copy_from_slice(&sent.to_le_bytes()),
                producer: None,
                handler: Default::default(),
            }),
        )
        .await?;
        if appended.seq != from + i {
            bail!("append {i} got #{}, expected #{}", appended.seq, from + i);
        }
    }
    let mut seen = Vec::new();
    for s in subscribers {
        seen.push(s.await.context("a subscriber task failed")?);
    }
    summarize(report, case, seen)
}

/// The latency rows of a case, and a failed check for any subscriber that
/// did not see everything in order.
pub(crate) fn summarize(report: &mut Report, case: &str, seen: Vec<Seen>) -> anyhow::Result<()> {
    let mut h = Histogram::<u64>::new(3)?;
    let mut problems = Vec::new();
    let transient: u64 = seen.iter().map(|s| s.transient_errors).sum();
    if transient > 0 {
        report.notes.push(format!(
            "{case}: {transient} failed pulls, recovered (pulled again)"
        ));
    }
    for (n, seen) in seen.into_iter().enumerate() {
        for l in seen.latencies {
            h.record(l.max(1))?;
        }
        problems.extend(
            seen.problems
                .into_iter()
                .map(|p| format!("subscriber {n}: {p}")),
        );
    }
    report.curve(case, &h);
    report.latency(case, "append to delivery p50", &h, 0.5);
    report.latency(case, "append to delivery p99", &h, 0.99);
    report.latency(case, "append to delivery max", &h, 1.0);
    report.row(case, "deliveries", h.len() as f64, "elements");
    if let Some(p) = problems.first() {
        report.failures.push(format!(
            "{case}: {} subscriber problems, the first: {p}",
            problems.len()
        ));
    }
    Ok(())
}

/// The same cases on NATS JetStream (default sync, then a sync on every
/// write): a publisher at the stream's leader, subscribers as ephemeral
/// pull consumers on the servers; then woof/JetStream latency ratios.
async fn peer_cases(report: &mut Report, secs: u64) -> anyhow::Result<()> {
    let binary = nats::server()?;
    let count = secs * APPENDS_PER_SEC;
    let subject = "bench.sub";
    for (sync, label) in [(false, "default sync"), (true, "sync always")] {
        let js = nats::JetStream::start(&binary, sync).await?;
        report.versions.insert("peer".into(), js.version.clone());
        let leader_url = js.leader_url().await?;
        let leader = js
            .urls
            .iter()
            .position(|u| *u == leader_url)
            .context("the leader is not one of the servers")?;
        let other = (leader + 1) % js.urls.len();
        let spread: Vec<usize> = (0..FAN_OUT).map(|i| i % js.urls.len()).collect();
        let publisher = async_nats::jetstream::new(async_nats::connect(&leader_url).await?);
        for (case, at) in [
            (CASES[0].to_string(), vec![leader]),
            (CASES[1].to_string(), vec![other]),
            (fan_out_case(), spread),
        ] {
            let case = format!("NATS JetStream {label}, {case}");
            let epoch = Instant::now();
            let mut subscribers = Vec::new();
            for &server in &at {
                subscribers
                    .push(nats::subscriber(&js.urls[server], subject, count, epoch, STALL).await?);
            }
            let mut tick =
                tokio::time::interval(Duration::from_micros(1_000_000 / APPENDS_PER_SEC));
            for _ in 0..count {
                tick.tick().await;
                let sent = epoch.elapsed().as_nanos() as u64;
                let payload = bytes::Bytes::copy_from_slice(&sent.to_le_bytes());
                nats::publish_one(&publisher, subject, payload).await?;
            }
            let mut seen = Vec::new();
            for s in subscribers {
                seen.push(s.await.context("a subscriber task failed")?);
            }
            summarize(report, &case, seen)?;
        }
    }
    for label in ["default sync", "sync always"] {
        let peer = format!("NATS JetStream {label}");
        for case in [CASES[0].to_string(), CASES[1].to_string(), fan_out_case()] {
            for q in ["p50", "p99"] {
                report.ratio(
                    format!("woof / {peer}, {case}"),
                    &format!("latency append to delivery {q}"),
                    &case,
                    &format!("{peer}, {case}"),
                );
            }
        }
    }
    Ok(())
}

/// Subscribes to `topic` at `url` from `from` and collects `count` elements
/// in a task of its own; returns once the subscription is open.
pub(crate) async fn subscriber(
    url: &str,
    topic: &str,
    from: u64,
    count: u64,
    epoch: Instant,
) -> anyhow::Result<JoinHandle<Seen>> {
    let mut client = nodes::connect(url).await?;
    let mut stream = nodes::call(
        format!("{url}: subscribe to {topic} from {from}"),
        client.subscribe(v1::SubscribeRequest {
            topic: topic.into(),
            start: Some(v1::subscribe_request::Start::FromSeq(from)),
        }),
    )
    .await?;
    Ok(tokio::spawn(async move {
        let mut seen = Seen {
            latencies: Vec::with_capacity(count as usize),
            problems: Vec::new(),
            transient_errors: 0,
        };
        let mut next = from;
        while next < from + count {
            let message = match tokio::time::timeout(STALL, stream.message()).await {
                Ok(Ok(Some(m))) => m,
                Ok(Ok(None)) => {
                    seen.problems
                        .push(format!("the stream ended before #{next}"));
                    break;
                }
                Ok(Err(s)) => {
                    seen.problems
                        .push(format!("#{next}: {:?}: {}", s.code(), s.message()));
                    break;
                }
                Err(_) => {
                    seen.problems
                        .push(format!("nothing for {STALL:?} at #{next}"));
                    break;
                }
            };
            let now = epoch.elapsed().as_nanos() as u64;
            let Some(e) = message.element else {
                seen.problems
                    .push(format!("a message without an element at #{next}"));
                break;
            };
            if e.seq != next {
                seen.problems
                    .push(format!("got #{} where #{next} was due", e.seq));
                break;
            }
            match <[u8; 8]>::try_from(e.payload.as_ref()) {
                Ok(sent) => seen
                    .latencies
                    .push(now.saturating_sub(u64::from_le_bytes(sent))),
                Err(_) => seen.problems.push(format!("#{next} is not a timestamp")),
            }
            next += 1;
        }
        seen
    }))
}
