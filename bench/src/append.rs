//! `append`: synced appends, on one standalone node (`--replication 1`) and
//! on a topic replicated by a 3-node cluster (`--replication 3`, clients at
//! the topic's leader, plus one client through a follower), for each element
//! size (`--size`, 64 B and 1 KiB by default). Latency (p50, p99, p99.9) for
//! one client, throughput for 16 and 64 clients and for batches of 1,000,
//! and the throughput over time of the 64-client and batch cases. Single
//! appends are a unary call each, and for 1 and 64 clients and the
//! many-topics case also each client's on one `AppendStream` (ADR 40). With 3
//! replicas also many topics at once, and one client beside a flood of
//! 8 MiB batches on another topic (issue 16). With
//! `--peer nats` (replication 3), the same cases then run on a 3-server NATS
//! JetStream cluster, with its default sync and with a sync on every write,
//! and the report adds woof/JetStream ratios.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use woof_proto::v1;

use crate::nats;
use crate::nodes::{self, Cluster, Standalone};
use crate::report::{self, Pace, Report, probe_machine};

/// How long one measured request may take before the run fails.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn run(
    woof: &Path,
    quick: bool,
    sizes: &[usize],
    replications: &[u32],
    peer: bool,
    only: Option<&str>,
) -> anyhow::Result<Report> {
    let secs = if quick { 2 } else { 20 };
    if peer && !replications.contains(&3) {
        bail!("--peer compares against a replicated topic: use it with --replication 3");
    }
    if let Some(r) = replications.iter().find(|r| **r != 1 && **r != 3) {
        bail!("--replication {r}: 1 (one standalone node) or 3 (a 3-node cluster)");
    }
    if let Some(s) = sizes.iter().find(|s| !(1..=SIZE_MAX).contains(*s)) {
        bail!("--size {s}: 1 to {SIZE_MAX} bytes");
    }
    if sizes.is_empty() || replications.is_empty() {
        bail!("--size and --replication need at least one value each");
    }
    let mut report = None;
    for replication in replications {
        report::settle_disk();
        if *replication == 1 {
            let node = Standalone::start(woof)?;
            let report = report.get_or_insert(Report::new(probe_machine(node.dir.path())?));
            for size in sizes {
                cases(
                    report,
                    &Target::Standalone(&node.node.url),
                    secs,
                    *size,
                    only,
                )
                .await?;
            }
        } else {
            let cluster = Cluster::start(woof, 3).await?;
            let report = report.get_or_insert(Report::new(probe_machine(cluster.dir.path())?));
            let target = Target::Cluster(&cluster);
            for size in sizes {
                if let Err(e) = cases(report, &target, secs, *size, only).await {
                    return Err(cluster.explain(e));
                }
            }
            // The peer gets the machine to itself, as woof had.
        }
    }
    let mut report = report.context("no case ran")?;
    if peer {
        report::settle_disk();
        for size in sizes {
            peer_cases(&mut report, secs, *size, only).await?;
        }
    }
    Ok(report)
}

/// The largest element `--size` accepts (a batch of 1,000 stays under the
/// 64 MiB request limit).
const SIZE_MAX: usize = 64 * 1024;
/// The plots over time: one for the 64-client cases, one for batches.
const OVER_TIME_64: &str = "Throughput over time: 64 clients, synced appends";
const OVER_TIME_BATCH: &str = "Throughput over time: batches of 1000";

/// Where the topics live.
enum Target<'a> {
    Standalone(&'a str),
    Cluster(&'a Cluster),
}

impl Target<'_> {
    /// Creates `topic` and returns the URL its clients use: the node's, or
    /// the URL of the topic's leader and its index.
    async fn topic(
        &self,
        topic: &str,
        payload: &bytes::Bytes,
    ) -> anyhow::Result<(String, Option<usize>)> {
        match self {
            Target::Standalone(url) => {
                nodes::create(url, topic, 0).await?;
                Ok((url.to_string(), None))
            }
            Target::Cluster(cluster) => {
                let leader = cluster.awake_topic(topic, payload.clone()).await?;
                Ok((cluster.url(leader).to_string(), Some(leader)))
            }
        }
    }

    /// What the cluster's nodes and the clients have used so far; `None`
    /// for a standalone node (not measured).
    fn usage(&self) -> anyhow::Result<Option<Usage>> {
        match self {
            Target::Standalone(_) => Ok(None),
            Target::Cluster(cluster) => Usage::now(&cluster.running_pids()).map(Some),
        }
    }

    fn prefix(&self) -> &'static str {
        match self {
            Target::Standalone(_) => "1 replica (one node), ",
            Target::Cluster(_) => "3 replicas, ",
        }
    }

    fn at(&self) -> &'static str {
        match self {
            Target::Standalone(_) => "",
            Target::Cluster(_) => " at the leader",
        }
    }

    /// Notes it in the report if the topic's leader moved during a case.
    async fn check_leader(
        &self,
        report: &mut Report,
        topic: &str,
        was: Option<usize>,
    ) -> anyhow::Result<()> {
        if let (Target::Cluster(cluster), Some(was)) = (self, was) {
            let now = cluster.leader(was, topic).await?;
            if now != was {
                report.notes.push(format!(
                    "{topic}: the leader moved from node {was} to node {now} during the case"
                ));
            }
        }
        Ok(())
    }
}

/// The cases, one after the other on topics of their own. A case that fails
/// (a request over [`REQUEST_TIMEOUT`]) is reported as a failed check and
/// the others still run.
async fn cases(
    report: &mut Report,
    target: &Target<'_>,
    secs: u64,
    size: usize,
    only: Option<&str>,
) -> anyhow::Result<()> {
    let payload = bytes::Bytes::from(vec![b'x'; size]);
    let (pre, at) = (target.prefix(), target.at());

    // One client, one append at a time: a call each, then on a stream.
    for way in [Way::Calls, Way::Stream] {
        let case = format!("{pre}1 client{at}, {size} B, {}", way.name());
        let outcome = async {
            if !wanted(only, &case) {
                return Ok(());
            }
            let topic = format!("bench/one-{size}{}", way.suffix());
            let (url, leader) = target.topic(&topic, &payload).await?;
            let before = target.usage()?;
            let (n, h) = one_client(&url, &topic, &payload, secs, way).await?;
            let used = match (target, before) {
                (Target::Cluster(cluster), Some(before)) => {
                    Some(Usage::since(&cluster.running_pids(), &before)?)
                }
                _ => None,
            };
            target.check_leader(report, &topic, leader).await?;
            report.latencies(&case, "", &h);
            report.row(&case, "throughput", n as f64 / secs as f64, "appends/s");
            if let Some(used) = used {
                used.report(report, &case, n);
            }
            anyhow::Ok(())
        }
        .await;
        failed(report, &case, outcome);
    }

    // Many clients, each on its own connection, one append at a time each;
    // 64 clients also each on a stream.
    for (clients, way) in [(16usize, Way::Calls), (64, Way::Calls), (64, Way::Stream)] {
        let case = format!("{pre}{clients} clients{at}, {size} B, {}", way.name());
        let outcome = async {
            if !wanted(only, &case) {
                return Ok(());
            }
            let topic = format!("bench/c{clients}-{size}{}", way.suffix());
            let (url, leader) = target.topic(&topic, &payload).await?;
            let pace = Pace::new(secs);
            let (count, hist) = concurrent(&url, &topic, clients, secs, &pace, |topic| {
                way.request(v1::AppendRequest {
                    topic,
                    payload: payload.clone(),
                    producer: None,
                    handler: Default::default(),
                })
            })
            .await?;
            target.check_leader(report, &topic, leader).await?;
            report.row(&case, "throughput", count as f64 / secs as f64, "appends/s");
            report.latencies(&case, "", &hist);
            if clients == 64 {
                let line = format!("woof, {}{size} B{}", target.prefix(), way.suffix());
                report.over_time(OVER_TIME_64, "appends/s", pace.series(line));
            }
            anyhow::Ok(())
        }
        .await;
        failed(report, &case, outcome);
    }

    // Batches: 4 clients, 1,000 elements per AppendBatch.
    let case = format!("{pre}4 clients{at}, AppendBatch of 1000 x {size} B");
    let outcome = async {
        if !wanted(only, &case) {
            return Ok(());
        }
        let topic = format!("bench/batch-{size}");
        let (url, leader) = target.topic(&topic, &payload).await?;
        let batch: Vec<bytes::Bytes> = vec![payload.clone(); 1000];
        let pace = Pace::new(secs);
        let (count, hist) = concurrent(&url, &topic, 4, secs, &pace, |topic| {
            Request::Batch(v1::AppendBatchRequest {
                topic,
                payloads: batch.clone(),
                producer: None,
                handler: String::new(),
            })
        })
        .await?;
        target.check_leader(report, &topic, leader).await?;
        report.row(
            &case,
            "throughput",
            count as f64 / secs as f64,
            "elements/s",
        );
        report.latencies(&case, "batch", &hist);
        let line = format!("woof, {}{size} B", target.prefix());
        report.over_time(OVER_TIME_BATCH, "elements/s", pace.series(line));
        anyhow::Ok(())
    }
    .await;
    failed(report, &case, outcome);

    // Many topics with few clients each (issue 16): does a node's disk
    // serve its groups' syncs together?
    for way in [Way::Calls, Way::Stream] {
        let Target::Cluster(cluster) = target else {
            break;
        };
        let case = format!("{}{}", many_case(pre, "topics", size), way.tail());
        let outcome = async {
            if !wanted(only, &case) {
                return Ok(());
            }
            let prefix = format!("bench/many-{size}{}", way.suffix());
            let pace = Pace::new(secs);
            let many = many_topics(cluster, &prefix, secs, &payload, &pace, way).await?;
            report.row(
                &case,
                "throughput",
                many.count as f64 / secs as f64,
                "appends/s",
            );
            report.latencies(&case, "", &many.hist);
            many.usage.report(report, &case, many.count);
            // How the topics' leaderships were spread over the nodes: a
            // figure to read the throughput by (a node leading more of
            // them syncs more groups' entries at once).
            let mut led = vec![0usize; cluster.size()];
            for &l in &many.leaders {
                led[l] += 1;
            }
            report.row(
                &case,
                "topics led by the busiest node",
                led.iter().copied().max().unwrap_or(0) as f64,
                "topics",
            );
            anyhow::Ok(())
        }
        .await;
        failed(report, &case, outcome);
    }

    // One client beside a flood (issue 16, "no stalls"): another topic on
    // the same nodes takes 8 MiB batches from several requests at once.
    if let Target::Cluster(_) = target {
        let case = format!("{pre}1 client{at}, {size} B, beside a flood of 8 MiB batches");
        let outcome = async {
            if !wanted(only, &case) {
                return Ok(());
            }
            let topic = format!("bench/calm-{size}");
            let (url, leader) = target.topic(&topic, &payload).await?;
            let flooded = format!("bench/flood-{size}");
            let (flood_url, flood_leader) = target.topic(&flooded, &payload).await?;
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flood = tokio::spawn(flood(flood_url, flooded.clone(), stop.clone()));
            // The flood fills its queues first.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let calm = one_client(&url, &topic, &payload, secs, Way::Calls).await;
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let flooded_bytes = flood.await??;
            let (_, h) = calm?;
            target.check_leader(report, &topic, leader).await?;
            target.check_leader(report, &flooded, flood_leader).await?;
            report.latencies(&case, "", &h);
            let secs = flooded_bytes.elapsed.as_secs_f64();
            report.row(
                &case,
                "flood throughput",
                flooded_bytes.bytes as f64 / secs / (1 << 20) as f64,
                "MiB/s",
            );
            report.row(
                &case,
                "flood pushed back",
                flooded_bytes.refused as f64 / secs,
                "refusals/s",
            );
            // Whether the two topics' leaders share a node (and its cores'
            // share of the work): a figure to read the latencies by.
            report.row(
                &case,
                "leaders on one node",
                f64::from(u8::from(leader == flood_leader)),
                "yes = 1",
            );
            let batches = &flooded_bytes.batches;
            for (what, micros) in [
                ("flood batch p50", batches.value_at_quantile(0.5)),
                ("flood batch p99", batches.value_at_quantile(0.99)),
                ("flood batch longest", batches.max()),
            ] {
                report.row(&case, what, micros as f64 / 1000.0, "ms");
            }
            anyhow::Ok(())
        }
        .await;
        failed(report, &case, outcome);
    }

    // One client through a node that is not the leader: every append is
    // forwarded to the leader.
    if let Target::Cluster(cluster) = target {
        let case = format!("{pre}1 client via a follower, {size} B, synced append");
        let outcome = async {
            if !wanted(only, &case) {
                return Ok(());
            }
            let topic = format!("bench/follower-{size}");
            let (_, leader) = target.topic(&topic, &payload).await?;
            let leader = leader.context("a cluster topic has a leader")?;
            let follower = (leader + 1) % cluster.nodes.len();
            let (_, h) =
                one_client(cluster.url(follower), &topic, &payload, secs, Way::Calls).await?;
            target.check_leader(report, &topic, Some(leader)).await?;
            report.latencies(&case, "", &h);
            anyhow::Ok(())
        }
        .await;
        failed(report, &case, outcome);
    }
    Ok(())
}

/// Requests the flood keeps going at once, and each one's batch.
const FLOOD_REQUESTS: usize = 4;
const FLOOD_PAYLOADS: usize = 8;
const FLOOD_PAYLOAD_BYTES: usize = 1 << 20;

/// What a flood got in.
struct Flooded {
    bytes: u64,
    refused: u64,
    elapsed: Duration,
    /// How long each accepted batch took, in microseconds: a group that
    /// stalls (behind a snapshot, a sync) shows here.
    batches: Histogram<u64>,
}

/// Appends batches of [`FLOOD_PAYLOADS`] x [`FLOOD_PAYLOAD_BYTES`] to
/// `topic` from [`FLOOD_REQUESTS`] requests at once until `stop`; a refusal
/// (RESOURCE_EXHAUSTED) is counted and retried after a short pause, as a
/// client would.
async fn flood(
    url: String,
    topic: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<Flooded> {
    let started = Instant::now();
    let payloads = vec![bytes::Bytes::from(vec![b'f'; FLOOD_PAYLOAD_BYTES]); FLOOD_PAYLOADS];
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..FLOOD_REQUESTS {
        let mut c = nodes::connect(&url).await?;
        let request = v1::AppendBatchRequest {
            topic: topic.clone(),
            payloads: payloads.clone(),
            producer: None,
            handler: String::new(),
        };
        let stop = stop.clone();
        let what = format!("{url}: flooding {topic}");
        tasks.spawn(async move {
            let (mut bytes, mut refused) = (0u64, 0u64);
            let mut batches = Histogram::<u64>::new(3)?;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let at = Instant::now();
                let sent = tokio::time::timeout(REQUEST_TIMEOUT, c.append_batch(request.clone()))
                    .await
                    .with_context(|| format!("{what}: a batch took over {REQUEST_TIMEOUT:?}"))?;
                match sent {
                    Ok(r) => {
                        bytes += r.into_inner().count * FLOOD_PAYLOAD_BYTES as u64;
                        batches.record(at.elapsed().as_micros() as u64)?;
                    }
                    Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                        refused += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(s) => return Err(anyhow::Error::new(s).context(what)),
                }
            }
            anyhow::Ok((bytes, refused, batches))
        });
    }
    let mut out = Flooded {
        bytes: 0,
        refused: 0,
        elapsed: Duration::ZERO,
        batches: Histogram::<u64>::new(3)?,
    };
    while let Some(done) = tasks.join_next().await {
        let (bytes, refused, batches) = done??;
        out.bytes += bytes;
        out.refused += refused;
        out.batches.add(&batches)?;
    }
    out.elapsed = started.elapsed();
    Ok(out)
}

/// Topics (or streams) in the many-topics case, and clients per topic.
pub const MANY_TOPICS: usize = 18;
pub const MANY_CLIENTS: usize = 4;

/// The many-topics case's name: `what` is `topics` or `streams`.
fn many_case(pre: &str, what: &str, size: usize) -> String {
    format!(
        "{pre}{MANY_TOPICS} {what} x {MANY_CLIENTS} clients at their leaders, {size} B, synced append"
    )
}

/// What [`many_topics`] measured.
pub struct ManyTopics {
    /// Appends acknowledged.
    pub count: u64,
    pub hist: Histogram<u64>,
    /// Each topic's leader (its node's index).
    pub leaders: Vec<usize>,
    /// What the nodes and the clients used meanwhile.
    pub usage: Usage,
}

/// The CPU time and thread wake-ups the nodes (woof's, or the peer's
/// servers), and this process (the clients), used over a case.
pub struct Usage {
    /// CPU time the nodes used, all together, in seconds.
    nodes_cpu: f64,
    /// Times the nodes' threads went to sleep (and were woken again).
    nodes_sleeps: u64,
    /// CPU time this process (the clients) used, in seconds.
    bench_cpu: f64,
}

impl Usage {
    /// What the processes `nodes` and this process have used so far.
    pub fn now(nodes: &[u32]) -> anyhow::Result<Self> {
        let mut ticks = 0;
        let mut nodes_sleeps = 0;
        for pid in nodes {
            ticks += nodes::cpu_ticks(*pid)?;
            nodes_sleeps += nodes::thread_sleeps(*pid)?;
        }
        Ok(Self {
            nodes_cpu: ticks as f64 / nodes::clock_ticks(),
            nodes_sleeps,
            bench_cpu: own_cpu_seconds()?,
        })
    }

    /// What was used since `before`.
    pub fn since(nodes: &[u32], before: &Self) -> anyhow::Result<Self> {
        let now = Self::now(nodes)?;
        Ok(Self {
            nodes_cpu: now.nodes_cpu - before.nodes_cpu,
            nodes_sleeps: now.nodes_sleeps.saturating_sub(before.nodes_sleeps),
            bench_cpu: now.bench_cpu - before.bench_cpu,
        })
    }

    /// The nodes' and the clients' CPU time per append, in microseconds
    /// (what bounds a case on a machine whose cores are all busy), and the
    /// nodes' thread wake-ups per append (the hand-offs a round takes
    /// between threads and processes, each costing CPU and a wait for a
    /// core).
    pub fn report(&self, report: &mut Report, case: &str, appends: u64) {
        let per_append = |v: f64| v / appends.max(1) as f64;
        report.row(
            case,
            "nodes' CPU per append",
            per_append(self.nodes_cpu * 1e6),
            "us",
        );
        report.row(
            case,
            "clients' CPU per append",
            per_append(self.bench_cpu * 1e6),
            "us",
        );
        report.row(
            case,
            "nodes' thread wake-ups per append",
            per_append(self.nodes_sleeps as f64),
            "wake-ups",
        );
    }
}

/// This process's CPU time so far (utime + stime), in seconds.
fn own_cpu_seconds() -> anyhow::Result<f64> {
    Ok(nodes::cpu_ticks(std::process::id())? as f64 / nodes::clock_ticks())
}

/// [`MANY_TOPICS`] topics `PREFIX/NN` with 3 replicas, [`MANY_CLIENTS`]
/// clients appending `payload` to each at its leader for `secs`, all at
/// once: appends acknowledged, their latencies, each topic's leader, and
/// the CPU time the nodes and the clients used meanwhile.
pub async fn many_topics(
    cluster: &Cluster,
    prefix: &str,
    secs: u64,
    payload: &bytes::Bytes,
    pace: &Arc<Pace>,
    way: Way,
) -> anyhow::Result<ManyTopics> {
    let mut leaders = Vec::new();
    for t in 0..MANY_TOPICS {
        let topic = format!("{prefix}/{t:02}");
        let leader = cluster.awake_topic(&topic, payload.clone()).await?;
        leaders.push((topic, leader));
    }
    let runs = leaders.iter().map(|(topic, leader)| {
        concurrent(
            cluster.url(*leader),
            topic,
            MANY_CLIENTS,
            secs,
            pace,
            |topic| {
                way.request(v1::AppendRequest {
                    topic,
                    payload: payload.clone(),
                    producer: None,
                    handler: Default::default(),
                })
            },
        )
    });
    let pids = cluster.running_pids();
    let before = Usage::now(&pids)?;
    let (count, hist) = together(runs).await?;
    Ok(ManyTopics {
        count,
        hist,
        leaders: leaders.into_iter().map(|l| l.1).collect(),
        usage: Usage::since(&pids, &before)?,
    })
}

/// Runs `runs` at once: the sum of their counts, their latencies together.
async fn together<F>(runs: impl IntoIterator<Item = F>) -> anyhow::Result<(u64, Histogram<u64>)>
where
    F: std::future::Future<Output = anyhow::Result<(u64, Histogram<u64>)>>,
{
    let mut count = 0;
    let mut hist = Histogram::<u64>::new(3)?;
    for outcome in futures::future::join_all(runs).await {
        let (c, h) = outcome?;
        count += c;
        hist.add(h)?;
    }
    Ok((count, hist))
}

/// The woof cases again on NATS JetStream (default sync, then a sync on
/// every write), then woof/JetStream ratios of the same figures.
async fn peer_cases(
    report: &mut Report,
    secs: u64,
    size: usize,
    only: Option<&str>,
) -> anyhow::Result<()> {
    let payload = bytes::Bytes::from(vec![b'x'; size]);
    let binary = nats::server()?;
    for (sync, label) in [(false, "default sync"), (true, "sync always")] {
        let js = nats::JetStream::start(&binary, sync).await?;
        report.versions.insert("peer".into(), js.version.clone());
        let url = js.leader_url().await?;
        let pre = format!("NATS JetStream {label}, ");

        let case = format!("{pre}1 client at the leader, {size} B, synced append");
        let outcome = async {
            if !wanted(only, &case) {
                return Ok(());
            }
            let subject = format!("bench.one-{size}");
            let (n, h) = nats::one_client(&url, &subject, &payload, secs).await?;
            report.latencies(&case, "", &h);
            report.row(&case, "throughput", n as f64 / secs as f64, "appends/s");
            anyhow::Ok(())
        }
        .await;
        failed(report, &case, outcome);

        for clients in [16usize, 64] {
            let case = format!("{pre}{clients} clients at the leader, {size} B, synced append");
            let subject = format!("bench.c{clients}-{size}");
            let outcome = async {
                if !wanted(only, &case) {
                    return Ok(());
                }
                let (count, h) =
                    nats::concurrent(&url, &subject, clients, 1, &payload, secs).await?;
                report.row(&case, "throughput", count as f64 / secs as f64, "appends/s");
                report.latencies(&case, "", &h);
                anyhow::Ok(())
            }
            .await;
            failed(report, &case, outcome);
        }

        let case = format!("{pre}4 clients at the leader, 1000 publishes in flight x {size} B");
        let outcome = async {
            if !wanted(only, &case) {
                return Ok(());
            }
            let subject = format!("bench.batch-{size}");
            let (count, h) = nats::concurrent(&url, &subject, 4, 1000, &payload, secs).await?;
            report.row(
                &case,
                "throughput",
                count as f64 / secs as f64,
                "elements/s",
            );
            report.latencies(&case, "batch", &h);
            anyhow::Ok(())
        }
        .await;
        failed(report, &case, outcome);

        let case = many_case(&pre, "streams", size);
        let outcome = async {
            if !wanted(only, &case) {
                return Ok(());
            }
            let streams = js.many_streams(MANY_TOPICS).await?;
            let runs = streams.iter().map(|(subject, leader)| {
                nats::concurrent(&js.urls[*leader], subject, MANY_CLIENTS, 1, &payload, secs)
            });
            let servers = js.pids();
            let before = Usage::now(&servers)?;
            let (count, hist) = together(runs).await?;
            let used = Usage::since(&servers, &before)?;
            report.row(&case, "throughput", count as f64 / secs as f64, "appends/s");
            report.latencies(&case, "", &hist);
            used.report(report, &case, count);
            anyhow::Ok(())
        }
        .await;
        failed(report, &case, outcome);
    }
    ratios(report, size);
    Ok(())
}

/// woof's figure over JetStream's, for each case both measured: below 1,
/// woof is faster (latency) or slower (throughput).
fn ratios(report: &mut Report, size: usize) {
    let single = format!("{size} B, synced append");
    let cases = [
        ("1 client", "latency p50", Way::Calls),
        ("1 client", "latency p99", Way::Calls),
        ("1 client", "latency p50", Way::Stream),
        ("16 clients", "throughput", Way::Calls),
        ("64 clients", "throughput", Way::Calls),
        ("64 clients", "latency p99", Way::Calls),
        ("64 clients", "throughput", Way::Stream),
    ];
    for label in ["default sync", "sync always"] {
        let peer = format!("NATS JetStream {label}");
        for (clients, metric, way) in cases {
            let case = format!("{clients} at the leader, {single}");
            let ours = format!("{clients} at the leader, {size} B, {}", way.name());
            report.ratio(
                format!("woof / {peer}, {ours}"),
                metric,
                &format!("3 replicas, {ours}"),
                &format!("{peer}, {case}"),
            );
        }
        for way in [Way::Calls, Way::Stream] {
            // Throughput, and what bounds it on a machine whose cores are
            // all busy: the CPU each side's servers and clients spend.
            for metric in [
                "throughput",
                "nodes' CPU per append",
                "clients' CPU per append",
            ] {
                report.ratio(
                    format!(
                        "woof / {peer}, {MANY_TOPICS} topics x {MANY_CLIENTS} clients, {size} B, {}",
                        way.name()
                    ),
                    metric,
                    &format!(
                        "{}{}",
                        many_case("3 replicas, ", "topics", size),
                        way.tail()
                    ),
                    &many_case(&format!("{peer}, "), "streams", size),
                );
            }
        }
        report.ratio(
            format!("woof / {peer}, batched, {size} B"),
            "throughput",
            &format!("3 replicas, 4 clients at the leader, AppendBatch of 1000 x {size} B"),
            &format!("{peer}, 4 clients at the leader, 1000 publishes in flight x {size} B"),
        );
    }
}

/// Whether `case` runs: every case, or with `--only TEXT` those whose name
/// contains TEXT.
fn wanted(only: Option<&str>, case: &str) -> bool {
    only.is_none_or(|text| case.contains(text))
}

/// Records a case that failed.
fn failed(report: &mut Report, case: &str, outcome: anyhow::Result<()>) {
    if let Err(e) = outcome {
        eprintln!("{case}: FAILED: {e:#}");
        report.failures.push(format!("{case}: {e:#}"));
    }
}

/// One client appending one element at a time for `secs` seconds: how many,
/// and their latencies.
async fn one_client(
    url: &str,
    topic: &str,
    payload: &bytes::Bytes,
    secs: u64,
    way: Way,
) -> anyhow::Result<(u64, Histogram<u64>)> {
    let pace = Pace::new(secs);
    let request = way.request(v1::AppendRequest {
        topic: topic.into(),
        payload: payload.clone(),
        producer: None,
        handler: Default::default(),
    });
    concurrent(url, topic, 1, secs, &pace, |_| request.clone()).await
}

/// How a case's clients append single elements: a unary call each, or each
/// client's appends as messages of one `AppendStream`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    Calls,
    Stream,
}

impl Way {
    /// The end of a case's name.
    fn name(self) -> String {
        format!("synced append{}", self.tail())
    }

    /// What a case's name says after "synced append".
    fn tail(self) -> &'static str {
        match self {
            Way::Calls => "",
            Way::Stream => " on a stream",
        }
    }

    /// The end of a case's topic.
    fn suffix(self) -> &'static str {
        match self {
            Way::Calls => "",
            Way::Stream => "-stream",
        }
    }

    fn request(self, r: v1::AppendRequest) -> Request {
        match self {
            Way::Calls => Request::One(r),
            Way::Stream => Request::Streamed(r),
        }
    }
}

#[derive(Clone)]
pub enum Request {
    One(v1::AppendRequest),
    Batch(v1::AppendBatchRequest),
    /// One append at a time on the client's own `AppendStream`.
    Streamed(v1::AppendRequest),
}

/// A client's `AppendStream`, used one append at a time.
struct Stream {
    requests: tokio::sync::mpsc::Sender<v1::AppendRequest>,
    answers: tonic::Streaming<v1::AppendStreamResponse>,
}

impl Stream {
    async fn open(c: &mut nodes::Client) -> anyhow::Result<Self> {
        let (requests, rx) = tokio::sync::mpsc::channel(1);
        let answers = c
            .append_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Self { requests, answers })
    }

    /// Appends `r` and waits for its answer.
    async fn append(&mut self, r: v1::AppendRequest) -> anyhow::Result<u64> {
        use v1::append_stream_response::Outcome;
        self.requests
            .send(r)
            .await
            .map_err(|_| anyhow::anyhow!("the append stream was closed"))?;
        match self.answers.message().await?.and_then(|a| a.outcome) {
            Some(Outcome::Appended(a)) => Ok(a.seq),
            Some(Outcome::Error(e)) => bail!("{:?}: {}", tonic::Code::from(e.code), e.message),
            None => bail!("the append stream ended before its answer"),
        }
    }
}

/// Runs `clients` loops for `secs` seconds; returns elements appended and a
/// latency histogram of the requests.
pub async fn concurrent(
    url: &str,
    topic: &str,
    clients: usize,
    secs: u64,
    pace: &Arc<Pace>,
    make: impl Fn(String) -> Request,
) -> anyhow::Result<(u64, Histogram<u64>)> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    // Dropped on an error: the other clients stop too.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let mut c = nodes::connect(url).await?;
        let request = make(topic.to_string());
        let what = format!("{url}: appending to {topic}");
        let pace = pace.clone();
        let mut stream = match request {
            Request::Streamed(_) => Some(Stream::open(&mut c).await.context(what.clone())?),
            _ => None,
        };
        tasks.spawn(async move {
            let mut h = Histogram::<u64>::new(3)?;
            let mut count = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                let done = async {
                    anyhow::Ok(match (&request, &mut stream) {
                        (Request::One(r), _) => {
                            c.append(r.clone()).await?;
                            1
                        }
                        (Request::Batch(r), _) => {
                            c.append_batch(r.clone()).await?.into_inner().count
                        }
                        (Request::Streamed(r), stream) => {
                            let stream = stream.as_mut().context("no append stream")?;
                            stream.append(r.clone()).await?;
                            1
                        }
                    })
                };
                let n = tokio::time::timeout(REQUEST_TIMEOUT, done)
                    .await
                    .with_context(|| format!("{what}: a request took over {REQUEST_TIMEOUT:?}"))?
                    .with_context(|| what.clone())?;
                h.record(t.elapsed().as_nanos() as u64)?;
                pace.record(n);
                count += n;
            }
            anyhow::Ok((count, h))
        });
    }
    report::gather(tasks).await
}
