//! `scale`: what many quiet topics cost a cluster.
//!
//! A 3-node cluster; for each target count (ascending), topics with 3
//! replicas are created up to that count, concurrently through all three
//! nodes (`--creators`, by default [`CREATORS_PER_NODE`], per node), then one element is appended
//! to each new topic. Once every topic's group has gone to sleep (no topic
//! in ClusterStatus names a leader; at most [`SLEEP_WAIT`] after the last
//! append), each node process's CPU (utime + stime from /proc/PID/stat, in %
//! of one core) and resident memory (VmRSS from /proc/PID/status) are
//! sampled every second for [`MEASURE`]. The idle cluster without topics is
//! measured first, as the baseline. Each node serves `/metrics`; once the
//! topics sleep, [`SCRAPES`] scrapes of each are timed.
//!
//! Then, for each cluster size in `--nodes` (3 to 9 by default), a fresh
//! cluster of that many nodes gets [`SPREAD_TOPICS`] topics with 3 replicas
//! (their leaders spread over the nodes) and [`CLIENTS_PER_TOPIC`] clients
//! per topic append synced elements at each topic's leader: the throughput
//! of the whole cluster, and its latency, as nodes are added.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use tonic::Code;
use woof_proto::v1;

use crate::append;
use crate::nodes::{self, Cluster};
use crate::report::{Pace, Report, probe_machine};

/// Concurrent creators (and appenders) per node, by default.
pub const CREATORS_PER_NODE: usize = 8;
/// How long resource use is sampled (`--quick`: a third of it).
pub const MEASURE: Duration = Duration::from_secs(10);
/// How long after the last append the groups may take to go to sleep.
pub const SLEEP_WAIT: Duration = Duration::from_secs(15);
/// Attempts per create or append (each bounded by the RPC timeout).
const ATTEMPTS: usize = 3;

fn name(i: usize) -> String {
    format!("scale/{i:06}")
}

/// Topics the throughput-by-nodes cases append to (a multiple of 3 and 9,
/// so that leaders can spread evenly), and clients per topic.
const SPREAD_TOPICS: usize = append::MANY_TOPICS;
const CLIENTS_PER_TOPIC: usize = append::MANY_CLIENTS;
/// The largest cluster `--nodes` accepts.
const NODES_MAX: usize = 16;

/// What `scale` measures: the topic counts to reach on 3 nodes, the
/// creators per node, the cluster sizes for throughput, and for how long.
pub struct Plan {
    pub topics: Vec<usize>,
    pub creators: usize,
    pub nodes: Vec<usize>,
    pub secs: u64,
    /// How long resource use is sampled once topics sleep.
    pub measure: Duration,
}

pub async fn run(woof: &Path, mut plan: Plan) -> anyhow::Result<Report> {
    plan.topics.sort_unstable();
    plan.topics.dedup();
    if plan.creators == 0 {
        bail!("--creators must be at least 1");
    }
    if let Some(n) = plan.nodes.iter().find(|n| !(3..=NODES_MAX).contains(*n)) {
        bail!("--nodes {n}: clusters of 3 to {NODES_MAX} nodes");
    }
    let mut report = None;
    if !plan.topics.is_empty() {
        // Each node serves /metrics, to time a scrape with many topics.
        let ports = (0..3)
            .map(|_| free_port())
            .collect::<std::io::Result<Vec<_>>>()?;
        let cluster = Cluster::start_with(woof, 3, None, |i| {
            vec![
                "--metrics-listen".into(),
                format!("127.0.0.1:{}", ports[i]).into(),
            ]
        })
        .await?;
        let scrape: Vec<std::net::SocketAddr> = ports
            .iter()
            .map(|p| std::net::SocketAddr::from(([127, 0, 0, 1], *p)))
            .collect();
        let report = report.get_or_insert(Report::new(probe_machine(cluster.dir.path())?));
        if let Err(e) = measure(&cluster, report, &plan, &scrape).await {
            return Err(cluster.explain(e));
        }
    }
    for &n in &plan.nodes {
        eprintln!("{n} nodes: {SPREAD_TOPICS} topics, {CLIENTS_PER_TOPIC} clients each");
        let cluster = Cluster::start(woof, n).await?;
        let report = report.get_or_insert(Report::new(probe_machine(cluster.dir.path())?));
        if let Err(e) = spread(&cluster, report, plan.secs).await {
            return Err(cluster.explain(e));
        }
    }
    report.context("nothing to measure: --topics and --nodes are both empty")
}

/// Synced appends to [`SPREAD_TOPICS`] topics at once, at their leaders.
async fn spread(cluster: &Cluster, report: &mut Report, secs: u64) -> anyhow::Result<()> {
    let n = cluster.nodes.len();
    let payload = bytes::Bytes::from_static(&[b'x'; 64]);
    let pace = Pace::new(secs);
    let append::ManyTopics {
        count,
        hist,
        leaders: mut leading,
        ..
    } = append::many_topics(cluster, "spread", secs, &payload, &pace, append::Way::Calls).await?;
    leading.sort_unstable();
    leading.dedup();
    let clients = SPREAD_TOPICS * CLIENTS_PER_TOPIC;
    let case = format!(
        "{n} nodes, {SPREAD_TOPICS} topics x 3 replicas, {clients} clients at the leaders, 64 B"
    );
    report.row(&case, "throughput", count as f64 / secs as f64, "appends/s");
    report.latencies(&case, "", &hist);
    report.row(&case, "nodes leading a topic", leading.len() as f64, "");
    report.over_time(
        "Throughput over time as nodes are added",
        "appends/s",
        pace.series(format!("{n} nodes")),
    );
    Ok(())
}

async fn measure(
    cluster: &Cluster,
    report: &mut Report,
    plan: &Plan,
    scrape: &[std::net::SocketAddr],
) -> anyhow::Result<()> {
    let (tick, per_node, window) = (nodes::clock_ticks(), plan.creators, plan.measure);
    eprintln!("measuring the idle cluster for {window:?}");
    usage(cluster, report, "no topics (idle cluster)", tick, window).await?;
    let mut created = 0;
    for &target in &plan.topics {
        let names: Arc<Vec<String>> = Arc::new((created..target).map(name).collect());
        let n = names.len();
        let creators = per_node * cluster.nodes.len();

        eprintln!("creating {n} topics ({created} exist)");
        let started = Instant::now();
        let h = concurrently(cluster, names.clone(), Op::Create, per_node).await?;
        let secs = started.elapsed().as_secs_f64();
        let case = format!(
            "create topics {}..{target} (replication 3), {creators} creators over 3 nodes",
            created + 1
        );
        report.row(&case, "creation rate", n as f64 / secs, "topics/s");
        report.latency(&case, "p50", &h, 0.5);
        report.latency(&case, "p99", &h, 0.99);

        eprintln!("appending one element to each of the {n} new topics");
        let started = Instant::now();
        let h = concurrently(cluster, names.clone(), Op::Append, per_node).await?;
        let appended = Instant::now();
        let case = format!("first append to each new topic, {creators} appenders over 3 nodes");
        report.row(
            &case,
            "rate",
            n as f64 / (appended - started).as_secs_f64(),
            "appends/s",
        );
        report.latency(&case, "p50", &h, 0.5);
        report.latency(&case, "p99", &h, 0.99);
        created = target;

        eprintln!("waiting for the {target} topics' groups to sleep");
        let (listed, awake) = wait_asleep(cluster, appended).await?;
        let case = format!(
            "{target} topics, {:.0} s after the last append",
            appended.elapsed().as_secs_f64()
        );
        report.row(&case, "groups with a leader (awake)", awake as f64, "");
        if listed != target {
            report.failures.push(format!(
                "ClusterStatus lists {listed} topics, {target} were created"
            ));
        }
        if awake > 0 {
            report.notes.push(format!(
                "{awake} of {target} topics still had a leader {SLEEP_WAIT:?} after the last append; measured anyway"
            ));
        }
        eprintln!("measuring {target} sleeping topics for {window:?}");
        let what = format!("{target} sleeping topics");
        usage(cluster, report, &what, tick, window).await?;
        scrapes(report, &what, scrape).await?;
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Op {
    Create,
    Append,
}

/// Does `op` for every name, `per_node` clients per node, each taking the
/// next name; returns the latencies.
async fn concurrently(
    cluster: &Cluster,
    names: Arc<Vec<String>>,
    op: Op,
    per_node: usize,
) -> anyhow::Result<Histogram<u64>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for worker in 0..per_node * cluster.nodes.len() {
        let url = cluster.url(worker % cluster.nodes.len()).to_string();
        let mut c = nodes::connect(&url).await?;
        let (names, next) = (names.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3)?;
            let tenth = (names.len() / 10).max(1);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(name) = names.get(i) else { break };
                if i > 0 && i % tenth == 0 {
                    eprintln!("  {i}/{}", names.len());
                }
                let t = Instant::now();
                for attempt in 1..=ATTEMPTS {
                    let what = format!(
                        "{url}: {} {name} (attempt {attempt})",
                        match op {
                            Op::Create => "create",
                            Op::Append => "append to",
                        }
                    );
                    let outcome = match op {
                        Op::Create => {
                            nodes::call(&what, c.create_topic(nodes::create_request(name, 3)))
                                .await
                                .map(drop)
                        }
                        Op::Append => nodes::call(
                            &what,
                            c.append(v1::AppendRequest {
                                topic: name.clone(),
                                payload: b"scale".to_vec().into(),
                                // A retry is not appended twice.
                                producer: Some(v1::Producer {
                                    id: "bench-scale".into(),
                                    seq: 1,
                                }),
                                handler: Default::default(),
                            }),
                        )
                        .await
                        .map(drop),
                    };
                    match outcome {
                        Ok(()) => break,
                        // An earlier attempt created it after all.
                        Err(e) if attempt > 1 && matches!(op, Op::Create) && already_exists(&e) => {
                            break;
                        }
                        Err(e) if attempt == ATTEMPTS => return Err(e),
                        Err(e) => eprintln!("  {e:#}; again"),
                    }
                }
                h.record(t.elapsed().as_nanos() as u64)?;
            }
            anyhow::Ok(h)
        }));
    }
    let mut all = Histogram::<u64>::new(3)?;
    for t in tasks {
        all.add(t.await??)?;
    }
    Ok(all)
}

fn already_exists(e: &anyhow::Error) -> bool {
    e.to_string()
        .contains(&format!("{:?}", Code::AlreadyExists))
}

/// Waits until no topic in node 0's ClusterStatus names a leader, at most
/// [`SLEEP_WAIT`] after `since`: (topics listed, topics with a leader).
async fn wait_asleep(cluster: &Cluster, since: Instant) -> anyhow::Result<(usize, usize)> {
    loop {
        let status = nodes::status(cluster.url(0)).await?;
        let awake = status
            .topics
            .iter()
            .filter(|t| !t.leader.is_empty())
            .count();
        if awake == 0 || since.elapsed() > SLEEP_WAIT {
            return Ok((status.topics.len(), awake));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Samples every node's CPU time and RSS each second for `window`;
/// reports per node the mean and the highest 1-s CPU, the mean and highest
/// RSS, and the sums over the nodes.
async fn usage(
    cluster: &Cluster,
    report: &mut Report,
    what: &str,
    tick: f64,
    window: Duration,
) -> anyhow::Result<()> {
    let pids: Vec<u32> = cluster
        .pids()
        .into_iter()
        .enumerate()
        .map(|(i, p)| p.with_context(|| format!("node {i} is not running")))
        .collect::<anyhow::Result<_>>()?;
    // Per node: (when, CPU ticks, RSS KiB) each second.
    let mut samples: Vec<Vec<(Instant, u64, u64)>> = vec![Vec::new(); pids.len()];
    let start = Instant::now();
    let steps = window.as_secs().max(1);
    for step in 0..=steps {
        tokio::time::sleep_until((start + Duration::from_secs(step)).into()).await;
        for (i, pid) in pids.iter().enumerate() {
            samples[i].push((Instant::now(), nodes::cpu_ticks(*pid)?, rss_kib(*pid)?));
        }
    }
    let (mut cpu_sum, mut rss_sum) = (0.0, 0.0);
    for (i, s) in samples.iter().enumerate() {
        let percent = |a: &(Instant, u64, u64), b: &(Instant, u64, u64)| {
            (b.1 - a.1) as f64 / tick / (b.0 - a.0).as_secs_f64() * 100.0
        };
        let mean = percent(&s[0], &s[s.len() - 1]);
        let max = s
            .windows(2)
            .map(|w| percent(&w[0], &w[1]))
            .fold(0.0, f64::max);
        let rss: Vec<f64> = s.iter().map(|x| x.2 as f64 / 1024.0).collect();
        let rss_mean = rss.iter().sum::<f64>() / rss.len() as f64;
        let rss_max = rss.iter().copied().fold(0.0, f64::max);
        let case = format!("{what}, node {i}");
        report.row(&case, "CPU mean", mean, "% of a core");
        report.row(&case, "CPU max over 1 s", max, "% of a core");
        report.row(&case, "RSS mean", rss_mean, "MiB");
        report.row(&case, "RSS max", rss_max, "MiB");
        cpu_sum += mean;
        rss_sum += rss_mean;
    }
    let case = format!("{what}, 3 nodes together");
    report.row(&case, "CPU mean", cpu_sum, "% of a core");
    report.row(&case, "RSS mean", rss_sum, "MiB");
    Ok(())
}

/// Scrapes taken of each node's /metrics; the median and the slowest are
/// reported.
const SCRAPES: usize = 5;

/// Times [`SCRAPES`] scrapes of each node's `/metrics`.
async fn scrapes(
    report: &mut Report,
    what: &str,
    nodes: &[std::net::SocketAddr],
) -> anyhow::Result<()> {
    for (i, addr) in nodes.iter().enumerate() {
        let mut times = Vec::new();
        let mut size = 0;
        for _ in 0..SCRAPES {
            let started = Instant::now();
            size = http_get(*addr, "/metrics").await?.len();
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        let case = format!("{what}, node {i}");
        report.row(&case, "/metrics scrape, median", times[SCRAPES / 2], "ms");
        report.row(&case, "/metrics scrape, slowest", times[SCRAPES - 1], "ms");
        report.row(&case, "/metrics size", size as f64 / 1024.0, "KiB");
    }
    Ok(())
}

/// The body of `GET path` over a fresh HTTP/1.1 connection.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut raw))
        .await
        .with_context(|| format!("{addr}{path} took over 30 s"))??;
    let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        bail!("{addr}{path}: no HTTP answer");
    };
    if !raw.starts_with(b"HTTP/1.1 200") {
        bail!("{addr}{path}: {}", String::from_utf8_lossy(&raw[..at]));
    }
    Ok(raw.split_off(at + 4))
}

/// A TCP port free on loopback now.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("{path}: no VmRSS"))
}
