//! `woof-bench`: starts real `woof` nodes on loopback and measures them.
//!
//! Layout: this file holds the command line, the node launcher, the machine
//! probe (disk sync latency) and the workloads. Each workload prints a
//! Markdown table and can write its figures as JSON (`--json FILE`).
//!
//! Today: `append`, on one node. The cluster, subscribe, failover and scale
//! workloads, and the peers side by side, come with their issues.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use tonic::transport::{Channel, Endpoint};
use woof_proto::v1::{self, woof_client::WoofClient};

#[derive(Parser)]
#[command(name = "woof-bench", about = "measure woof on real nodes")]
struct Cli {
    /// The `woof` binary to run; by default the one next to this binary.
    #[arg(long, global = true)]
    woof: Option<PathBuf>,
    /// Also write the figures as JSON to this file.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Subcommand)]
enum Workload {
    /// Synced appends to one node: latency for one client, throughput for
    /// many clients and for batches.
    Append {
        /// Shorter runs (under a minute in all).
        #[arg(long)]
        quick: bool,
        /// Payload size in bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let woof = match cli.woof {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("the bench binary has no directory")?
            .join("woof"),
    };
    if !woof.exists() {
        bail!(
            "no woof binary at {} (build it with `cargo build --workspace --all-targets`, or pass --woof)",
            woof.display()
        );
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let report = match cli.workload {
        Workload::Append { quick, size } => runtime.block_on(append(&woof, quick, size))?,
    };
    println!("{}", report.markdown());
    if let Some(path) = cli.json {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
        println!("figures written to {}", path.display());
    }
    Ok(())
}

/// One measured figure.
#[derive(serde::Serialize)]
struct Row {
    case: String,
    metric: String,
    value: f64,
    unit: &'static str,
}

#[derive(serde::Serialize)]
struct Report {
    command: String,
    machine: Machine,
    rows: Vec<Row>,
}

impl Report {
    fn markdown(&self) -> String {
        let mut s = format!(
            "command: `{}`\nmachine: {} cores, {:.1} GiB memory, disk sync (4 KiB write + fdatasync) p50 {:.3} ms\n\n",
            self.command, self.machine.cores, self.machine.memory_gib, self.machine.sync_p50_ms
        );
        s.push_str("| case | metric | value |\n|---|---|---|\n");
        for r in &self.rows {
            s.push_str(&format!(
                "| {} | {} | {:.3} {} |\n",
                r.case, r.metric, r.value, r.unit
            ));
        }
        s
    }
}

#[derive(serde::Serialize)]
struct Machine {
    cores: usize,
    memory_gib: f64,
    sync_p50_ms: f64,
}

/// The machine, and what one synced write costs on its disk.
fn probe_machine(dir: &std::path::Path) -> anyhow::Result<Machine> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let mut file = std::fs::File::create(dir.join("sync-probe"))?;
    let mut h = Histogram::<u64>::new(3)?;
    for _ in 0..200 {
        let t = Instant::now();
        file.write_all(&[0u8; 4096])?;
        file.sync_data()?;
        h.record(t.elapsed().as_nanos() as u64)?;
    }
    Ok(Machine {
        cores,
        memory_gib,
        sync_p50_ms: h.value_at_quantile(0.5) as f64 / 1e6,
    })
}

/// A `woof node start` process in a temporary directory; killed on drop.
struct NodeProcess {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl NodeProcess {
    fn start(woof: &std::path::Path) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut child = Command::new(woof)
            .args([
                "node",
                "start",
                "--grpc-listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", woof.display()))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("no stdout")?).read_line(&mut line)?;
        let url = line
            .trim()
            .rsplit(' ')
            .next()
            .filter(|u| u.starts_with("http://"))
            .with_context(|| format!("the node did not start: {line:?}"))?
            .to_string();
        Ok(Self {
            child,
            url,
            _dir: dir,
        })
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn client(url: &str) -> anyhow::Result<WoofClient<Channel>> {
    let channel = Endpoint::from_shared(url.to_string())?
        .tcp_nodelay(true)
        .connect()
        .await?;
    Ok(WoofClient::new(channel))
}

async fn create(url: &str, name: &str) -> anyhow::Result<()> {
    client(url)
        .await?
        .create_topic(v1::CreateTopicRequest {
            name: name.into(),
            config: Some(v1::TopicConfig {
                element_max_bytes: 0,
                history: 1_000_000,
            }),
            ..Default::default()
        })
        .await?;
    Ok(())
}

async fn append(woof: &std::path::Path, quick: bool, size: usize) -> anyhow::Result<Report> {
    let node = NodeProcess::start(woof)?;
    let machine = probe_machine(node._dir.path())?;
    let payload = bytes::Bytes::from(vec![b'x'; size]);
    let mut rows = Vec::new();
    let secs = if quick { 5 } else { 20 };

    // One client, one append at a time.
    create(&node.url, "bench/one").await?;
    let mut c = client(&node.url).await?;
    let mut h = Histogram::<u64>::new(3)?;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut n = 0u64;
    while Instant::now() < deadline {
        let t = Instant::now();
        c.append(v1::AppendRequest {
            topic: "bench/one".into(),
            payload: payload.clone(),
            producer: None,
        })
        .await?;
        h.record(t.elapsed().as_nanos() as u64)?;
        n += 1;
    }
    let case = format!("1 client, {size} B, synced append");
    for (q, name) in [(0.5, "p50"), (0.99, "p99"), (0.999, "p99.9")] {
        rows.push(Row {
            case: case.clone(),
            metric: format!("latency {name}"),
            value: h.value_at_quantile(q) as f64 / 1e6,
            unit: "ms",
        });
    }
    rows.push(Row {
        case,
        metric: "throughput".into(),
        value: n as f64 / secs as f64,
        unit: "appends/s",
    });

    // Many clients, each on its own connection, one append at a time each.
    for clients in [16usize, 64] {
        let topic = format!("bench/c{clients}");
        create(&node.url, &topic).await?;
        let (count, hist) = concurrent(&node.url, &topic, clients, secs, |topic| {
            Request::One(v1::AppendRequest {
                topic,
                payload: payload.clone(),
                producer: None,
            })
        })
        .await?;
        let case = format!("{clients} clients, {size} B, synced append");
        rows.push(Row {
            case: case.clone(),
            metric: "throughput".into(),
            value: count as f64 / secs as f64,
            unit: "appends/s",
        });
        rows.push(Row {
            case,
            metric: "latency p99".into(),
            value: hist.value_at_quantile(0.99) as f64 / 1e6,
            unit: "ms",
        });
    }

    // Batches: 4 clients, 1,000 elements per AppendBatch.
    create(&node.url, "bench/batch").await?;
    let batch: Vec<bytes::Bytes> = vec![payload.clone(); 1000];
    let (count, hist) = concurrent(&node.url, "bench/batch", 4, secs, |topic| {
        Request::Batch(v1::AppendBatchRequest {
            topic,
            payloads: batch.clone(),
            producer: None,
        })
    })
    .await?;
    let case = format!("4 clients, AppendBatch of 1000 x {size} B");
    rows.push(Row {
        case: case.clone(),
        metric: "throughput".into(),
        value: count as f64 / secs as f64,
        unit: "elements/s",
    });
    rows.push(Row {
        case,
        metric: "batch latency p50".into(),
        value: hist.value_at_quantile(0.5) as f64 / 1e6,
        unit: "ms",
    });

    Ok(Report {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine,
        rows,
    })
}

enum Request {
    One(v1::AppendRequest),
    Batch(v1::AppendBatchRequest),
}

/// Runs `clients` loops for `secs` seconds; returns elements appended and a
/// latency histogram of the requests.
async fn concurrent(
    url: &str,
    topic: &str,
    clients: usize,
    secs: u64,
    make: impl Fn(String) -> Request,
) -> anyhow::Result<(u64, Histogram<u64>)> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut c = client(url).await?;
        let request = make(topic.to_string());
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3)?;
            let mut count = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                count += match &request {
                    Request::One(r) => {
                        c.append(r.clone()).await?;
                        1
                    }
                    Request::Batch(r) => c.append_batch(r.clone()).await?.into_inner().count,
                };
                h.record(t.elapsed().as_nanos() as u64)?;
            }
            anyhow::Ok((count, h))
        }));
    }
    let mut total = 0;
    let mut hist = Histogram::<u64>::new(3)?;
    for t in tasks {
        let (count, h) = t.await??;
        total += count;
        hist.add(h)?;
    }
    Ok((total, hist))
}
