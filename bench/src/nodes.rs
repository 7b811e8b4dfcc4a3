//! Starting `woof node start` processes on loopback: one standalone node, or
//! a cluster of N nodes sharing a fresh cluster key, each in its own data
//! directory under one temporary directory (removed at the end). A
//! cluster's nodes can instead run each in a network namespace of a
//! [`Net`], so that one can be cut off. Every node writes its log (stderr)
//! next to its data directory; when a workload fails,
//! [`Cluster::log_tails`] shows the end of each.
//!
//! Also the gRPC helpers the workloads share: every call is bounded by a
//! timeout and fails with a message naming what was asked of which node.

use std::ffi::OsString;
use std::fmt::Display;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use tonic::transport::{Channel, Endpoint};
use woof_proto::v1::{self, woof_client::WoofClient};

use crate::netns::Net;

pub type Client = WoofClient<Channel>;

/// How long any one administrative RPC may take.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a node may take to print its gRPC address after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the nodes of a cluster may take to see each other alive.
const ALIVE_TIMEOUT: Duration = Duration::from_secs(30);
/// Big enough for ClusterStatus with tens of thousands of topics.
const MESSAGE_BYTES_MAX: usize = 256 << 20;

/// Keep the nodes' directories (data and logs) after the run (`--keep`).
pub static KEEP: AtomicBool = AtomicBool::new(false);

/// A temporary directory for nodes, kept if [`KEEP`] says so.
pub fn node_dir() -> anyhow::Result<tempfile::TempDir> {
    let mut dir = tempfile::tempdir()?;
    if KEEP.load(Ordering::Relaxed) {
        dir.disable_cleanup(true);
        eprintln!("nodes' data and logs in {} (kept)", dir.path().display());
    }
    Ok(dir)
}

/// A `woof node start` process; killed (SIGKILL) when dropped.
pub struct NodeProcess {
    child: Child,
    pub url: String,
}

impl NodeProcess {
    /// Starts `woof node start ARGS`, its stderr appended to `log`, and waits
    /// until it prints the URL it serves gRPC on.
    pub fn start(woof: &Path, args: &[OsString], log: &Path) -> anyhow::Result<Self> {
        Self::start_command(Command::new(woof), args, log)
    }

    /// As [`NodeProcess::start`], with `woof` the program `command` runs (or
    /// ends by exec'ing, as `ip netns exec NS woof` does: its pid must be
    /// the node's, for signals).
    pub fn start_command(
        mut command: Command,
        args: &[OsString],
        log: &Path,
    ) -> anyhow::Result<Self> {
        let program = format!("{command:?}");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut child = command
            .args(["node", "start"])
            .args(args)
            .env_remove("WOOF_SERVER")
            .env_remove("WOOF_CLUSTER_KEY")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {program}"))?;
        let stdout = child.stdout.take().context("no stdout")?;
        // A thread reads the first line, then drains the pipe so that the
        // node never writes into a closed pipe.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            for _ in lines {}
        });
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(Some(Ok(line))) => line,
            outcome => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the node did not start within {START_TIMEOUT:?} ({outcome:?}); {}",
                    tail(log, 10)
                );
            }
        };
        let Some(url) = line
            .trim()
            .rsplit(' ')
            .next()
            .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
        else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the node did not start: {line:?}; {}", tail(log, 10));
        };
        Ok(Self {
            url: url.to_string(),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to flush or clean up. Returns once it is gone.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().context("SIGKILL")?;
        self.child.wait().context("waiting for the killed node")?;
        Ok(())
    }

    /// Waits until the process exits (after a SIGTERM).
    pub async fn exited(&mut self) -> anyhow::Result<()> {
        exited(&mut self.child).await
    }
}

/// How long a process may take to stop after a SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits until `child` exits, at most [`STOP_TIMEOUT`] (then SIGKILLs it
/// and fails).
pub async fn exited(child: &mut Child) -> anyhow::Result<()> {
    let until = Instant::now() + STOP_TIMEOUT;
    while child.try_wait().context("waiting for a process")?.is_none() {
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            bail!("it did not stop within {STOP_TIMEOUT:?} of a SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last `lines` lines of a node's log, for error messages.
pub fn tail(log: &Path, lines: usize) -> String {
    match std::fs::read_to_string(log) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            let from = all.len().saturating_sub(lines);
            format!(
                "last lines of {}:\n{}",
                log.display(),
                strip_ansi(&all[from..].join("\n"))
            )
        }
        Err(e) => format!("no log at {}: {e}", log.display()),
    }
}

/// One node without a cluster (no overlay), in a temporary directory.
pub struct Standalone {
    pub node: NodeProcess,
    pub dir: tempfile::TempDir,
}

impl Standalone {
    pub fn start(woof: &Path) -> anyhow::Result<Self> {
        let dir = node_dir()?;
        let args: Vec<OsString> = vec![
            "--grpc-listen".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            dir.path().join("data").into(),
        ];
        let node = NodeProcess::start(woof, &args, &dir.path().join("node.log"))?;
        Ok(Self { node, dir })
    }
}

/// One node of a [`Cluster`]: its process while it runs, and what stays
/// across restarts (peer id, data directory, log).
pub struct Member {
    pub process: Option<NodeProcess>,
    /// Its gRPC URL (of the last start, if it is down now).
    pub url: String,
    pub peer_id: String,
    data: PathBuf,
    log: PathBuf,
}

impl Member {
    pub fn alive(&self) -> bool {
        self.process.is_some()
    }
}

/// `n` clustered nodes, joined through the first: on loopback, or each in
/// its own network namespace of a [`Net`].
pub struct Cluster {
    woof: PathBuf,
    pub dir: tempfile::TempDir,
    key: PathBuf,
    pub nodes: Vec<Member>,
    /// Node `i` runs on host `i` of it, when there is one. Dropped after
    /// the nodes (field order), so no node outlives its namespace.
    net: Option<Arc<Net>>,
}

impl Cluster {
    /// Starts `n` nodes on loopback with a new cluster key, the others
    /// joining through the first, and waits until every node sees all `n`
    /// alive.
    pub async fn start(woof: &Path, n: usize) -> anyhow::Result<Self> {
        Self::start_on(woof, n, None).await
    }

    /// As [`Cluster::start`]; with a `net`, node `i` runs in host `i`'s
    /// namespace and listens on its address, the bench reaching it through
    /// the bridge.
    pub async fn start_on(woof: &Path, n: usize, net: Option<Arc<Net>>) -> anyhow::Result<Self> {
        Self::start_with(woof, n, net, |_| Vec::new()).await
    }

    /// As [`Cluster::start_on`], node `i` also given the flags `extra(i)`.
    pub async fn start_with(
        woof: &Path,
        n: usize,
        net: Option<Arc<Net>>,
        extra: impl Fn(usize) -> Vec<OsString>,
    ) -> anyhow::Result<Self> {
        if let Some(net) = &net
            && net.hosts() < n
        {
            bail!("{n} nodes on a network of {} hosts", net.hosts());
        }
        let dir = node_dir()?;
        let out = Command::new(woof)
            .args(["cluster", "keygen"])
            .output()
            .context("woof cluster keygen")?;
        if !out.status.success() {
            bail!(
                "woof cluster keygen: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let key = dir.path().join("cluster.key");
        std::fs::write(&key, &out.stdout)?;
        let mut cluster = Self {
            woof: woof.to_path_buf(),
            dir,
            key,
            nodes: Vec::new(),
            net,
        };
        let mut join = None;
        for i in 0..n {
            let data = cluster.dir.path().join(format!("n{i}"));
            let log = cluster.dir.path().join(format!("n{i}.log"));
            let process = cluster
                .spawn(i, &data, &log, join.as_deref(), extra(i))
                .await?;
            let url = process.url.clone();
            let (peer_id, overlay) = whoami(&url).await?;
            join.get_or_insert(overlay);
            cluster.nodes.push(Member {
                process: Some(process),
                url,
                peer_id,
                data,
                log,
            });
        }
        cluster.wait_alive().await?;
        Ok(cluster)
    }

    /// Starts node `i` (on host `i` of the net, if any).
    async fn spawn(
        &self,
        i: usize,
        data: &Path,
        log: &Path,
        join: Option<&str>,
        extra: Vec<OsString>,
    ) -> anyhow::Result<NodeProcess> {
        let (host, command) = match &self.net {
            Some(net) => (net.addr(i), net.command(i, &self.woof)),
            None => ("127.0.0.1".to_string(), Command::new(&self.woof)),
        };
        let mut args: Vec<OsString> = vec![
            "--data-dir".into(),
            data.into(),
            "--grpc-listen".into(),
            format!("{host}:0").into(),
            "--listen".into(),
            format!("/ip4/{host}/tcp/0").into(),
            "--cluster-key".into(),
            self.key.clone().into(),
        ];
        if let Some(join) = join {
            args.extend(["--join".into(), join.into()]);
        }
        args.extend(extra);
        let log = log.to_path_buf();
        // Waiting for the node's first line blocks: not on the runtime.
        tokio::task::spawn_blocking(move || NodeProcess::start_command(command, &args, &log))
            .await?
    }

    /// The network the nodes run on, if they are in namespaces.
    pub fn net(&self) -> Option<&Net> {
        self.net.as_deref()
    }

    pub fn url(&self, i: usize) -> &str {
        &self.nodes[i].url
    }

    /// How many nodes the cluster has.
    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// Which node has this peer id.
    pub fn index_of(&self, peer: &str) -> Option<usize> {
        self.nodes.iter().position(|m| m.peer_id == peer)
    }

    /// Waits until every running node sees every running node alive.
    pub async fn wait_alive(&self) -> anyhow::Result<()> {
        let want = self.nodes.iter().filter(|m| m.alive()).count();
        let deadline = Instant::now() + ALIVE_TIMEOUT;
        for m in self.nodes.iter().filter(|m| m.alive()) {
            loop {
                let status = status(&m.url).await?;
                let alive = status.nodes.iter().filter(|n| n.state == "alive").count();
                if alive == want {
                    break;
                }
                if Instant::now() > deadline {
                    let states: Vec<String> = status
                        .nodes
                        .iter()
                        .map(|n| format!("{} {}", n.peer_id, n.state))
                        .collect();
                    bail!(
                        "{}: {alive} of {want} nodes alive after {ALIVE_TIMEOUT:?}: {states:?}",
                        m.url
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    /// SIGKILLs node `i`.
    pub fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        let mut process = self.nodes[i]
            .process
            .take()
            .with_context(|| format!("node {i} is not running"))?;
        process.kill()
    }

    /// Creates `topic` with 3 replicas through node 0 and appends `first`
    /// to it, so that its group is awake and its leader known; returns the
    /// leader's index.
    pub async fn awake_topic(&self, topic: &str, first: bytes::Bytes) -> anyhow::Result<usize> {
        let url = self.url(0);
        create(url, topic, 3).await?;
        call(
            format!("{url}: first append to {topic}"),
            connect(url).await?.append(v1::AppendRequest {
                topic: topic.into(),
                payload: first,
                producer: None,
                handler: Default::default(),
            }),
        )
        .await?;
        self.leader(0, topic).await
    }

    /// Waits until node `i`'s process exits (it was sent a SIGTERM).
    pub async fn reap(&mut self, i: usize) -> anyhow::Result<()> {
        let mut process = self.nodes[i]
            .process
            .take()
            .with_context(|| format!("node {i} is not running"))?;
        process
            .exited()
            .await
            .with_context(|| format!("node {i} stopping"))
    }

    /// Sends `signal` (`STOP` or `CONT`) to node `i`'s process.
    pub fn signal(&self, i: usize, signal: &str) -> anyhow::Result<()> {
        let pid = self.nodes[i]
            .process
            .as_ref()
            .with_context(|| format!("node {i} is not running"))?
            .pid();
        self::signal(pid, signal)
    }

    /// Starts node `i` again on its data directory, joining through node
    /// `via`, and waits until the running nodes all see each other.
    pub async fn restart(&mut self, i: usize, via: usize) -> anyhow::Result<()> {
        if self.nodes[i].alive() {
            bail!("node {i} is running");
        }
        let (_, join) = whoami(self.url(via)).await?;
        let m = &self.nodes[i];
        // Without the extra flags of its first start (no workload restarts a
        // node that had any).
        let process = self
            .spawn(i, &m.data, &m.log, Some(&join), Vec::new())
            .await?;
        let (peer, _) = whoami(&process.url).await?;
        if peer != m.peer_id {
            bail!(
                "node {i} came back as {peer}, not {}: a new identity",
                m.peer_id
            );
        }
        let m = &mut self.nodes[i];
        m.url = process.url.clone();
        m.process = Some(process);
        self.wait_alive().await
    }

    /// The process id of each running node.
    pub fn pids(&self) -> Vec<Option<u32>> {
        self.nodes
            .iter()
            .map(|m| m.process.as_ref().map(NodeProcess::pid))
            .collect()
    }

    /// The process ids of the nodes running now.
    pub fn running_pids(&self) -> Vec<u32> {
        self.pids().into_iter().flatten().collect()
    }

    /// The node leading `topic`, asking through node `via`: retried (for
    /// 15 s) while the answer names no leader or fails (an election, or a
    /// group that just woke up).
    pub async fn leader(&self, via: usize, topic: &str) -> anyhow::Result<usize> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let last = match describe(self.url(via), topic).await {
                Ok(info) => match self.index_of(&info.leader) {
                    Some(i) => return Ok(i),
                    None => format!("{info:?}"),
                },
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() > deadline {
                bail!("{topic}: no known leader after 15 s; last answer: {last}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The end of every node's log.
    pub fn log_tails(&self, lines: usize) -> String {
        self.nodes
            .iter()
            .map(|m| tail(&m.log, lines))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Adds the end of each node's log to a workload's error (the logs are
    /// removed with the cluster's directory).
    pub fn explain(&self, e: anyhow::Error) -> anyhow::Error {
        anyhow!("{e:#}\n\nnode logs:\n{}", self.log_tails(15))
    }
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 if that fails), asked
/// once.
pub fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // After "pid (comm) ": state is field 3; utime and stime are 14 and 15.
    let rest = stat
        .rsplit_once(')')
        .with_context(|| format!("{path}: {stat:?}"))?
        .1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> anyhow::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("{path}: no field {n} in {stat:?}"))
    };
    Ok(field(14)? + field(15)?)
}

/// The voluntary context switches of process `pid`'s threads, summed
/// (`/proc/PID/task/*/status`; a thread that has ended no longer counts).
pub fn thread_sleeps(pid: u32) -> anyhow::Result<u64> {
    let dir = format!("/proc/{pid}/task");
    let mut sleeps = 0;
    for task in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let path = task?.path().join("status");
        // A thread may end between the listing and the read.
        let Ok(status) = std::fs::read_to_string(&path) else {
            continue;
        };
        sleeps += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .with_context(|| format!("{}: no voluntary_ctxt_switches", path.display()))?;
    }
    Ok(sleeps)
}

/// Sends `signal` (`STOP`, `CONT`) to the process `pid`, with `kill`.
pub fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -{signal} {pid} failed ({status})");
    }
    Ok(())
}

/// A client of the node at `url`.
pub async fn connect(url: &str) -> anyhow::Result<Client> {
    let channel = Endpoint::from_shared(url.to_string())?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))?;
    Ok(WoofClient::new(channel)
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX))
}

/// Awaits an RPC for at most [`RPC_TIMEOUT`]; errors name `what`.
pub async fn call<T>(
    what: impl Display,
    rpc: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(RPC_TIMEOUT, rpc).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(anyhow!("{what}: {:?}: {}", s.code(), s.message())),
        Err(_) => bail!("{what}: no answer within {RPC_TIMEOUT:?}"),
    }
}

/// A CreateTopic request: the default element size, a history of a million
/// elements (more than any run appends), `replication` replicas (0: the
/// node's default).
pub fn create_request(name: &str, replication: u32) -> v1::CreateTopicRequest {
    v1::CreateTopicRequest {
        name: name.into(),
        config: Some(v1::TopicConfig {
            element_max_bytes: 0,
            history: 1_000_000,
        }),
        replication,
        replicas: String::new(),
    }
}

pub async fn create(url: &str, name: &str, replication: u32) -> anyhow::Result<()> {
    call(
        format!("{url}: create {name}"),
        connect(url)
            .await?
            .create_topic(create_request(name, replication)),
    )
    .await?;
    Ok(())
}

pub async fn describe(url: &str, name: &str) -> anyhow::Result<v1::TopicInfo> {
    call(
        format!("{url}: describe {name}"),
        connect(url)
            .await?
            .describe_topic(v1::DescribeTopicRequest { name: name.into() }),
    )
    .await?
    .topic
    .with_context(|| format!("{url}: describe {name} answered no topic"))
}

pub async fn status(url: &str) -> anyhow::Result<v1::ClusterStatusResponse> {
    call(
        format!("{url}: cluster status"),
        connect(url)
            .await?
            .cluster_status(v1::ClusterStatusRequest {}),
    )
    .await
}

/// The peer id of the node at `url` and its overlay address (without the
/// `/p2p/...` suffix), from its ClusterStatus.
pub async fn whoami(url: &str) -> anyhow::Result<(String, String)> {
    let status = status(url).await?;
    let me = status
        .nodes
        .iter()
        .find(|n| n.local)
        .with_context(|| format!("{url}: cluster status has no local node"))?;
    let addr = me
        .addrs
        .first()
        .with_context(|| format!("{url}: the node has no overlay address: {me:?}"))?;
    let addr = addr.split("/p2p/").next().unwrap_or(addr).to_string();
    Ok((me.peer_id.clone(), addr))
}

/// Every element of `topic` at `url`, by scans of 1,000.
pub async fn scan_all(url: &str, topic: &str) -> anyhow::Result<Vec<v1::Element>> {
    let mut c = connect(url).await?;
    let mut out = Vec::new();
    let mut next = 1;
    loop {
        let r = call(
            format!("{url}: scan {topic} from {next}"),
            c.scan(v1::ScanRequest {
                topic: topic.into(),
                from_seq: next,
                limit: 1000,
            }),
        )
        .await?;
        if r.elements.is_empty() {
            return Ok(out);
        }
        if r.next_seq <= next {
            bail!(
                "{url}: scan {topic} from {next} answered next_seq {}",
                r.next_seq
            );
        }
        next = r.next_seq;
        out.extend(r.elements);
    }
}

/// Text without the terminal colour codes (`ESC [ ... m`) node logs carry.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
