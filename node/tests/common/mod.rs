//! Helpers shared by the node's end-to-end tests: nodes in this process or as
//! real `woof` processes, always on loopback, each in its own temporary dir.
#![allow(dead_code)]

pub mod http;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use woof_consensus::store::{RocksStore, Store};
use woof_node::config::{ClusterConfig, NodeConfig};
use woof_node::server::Node;
use woof_overlay::{ClusterKey, Multiaddr, Timing};
use woof_proto::v1;

pub type Client = woof_node::cli::Client;

/// A node in this process, with its directory.
pub struct TestNode {
    pub node: Node,
    pub dir: tempfile::TempDir,
}

impl TestNode {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::start(&config(dir.path())).await.unwrap();
        Self { node, dir }
    }

    pub async fn client(&self) -> Client {
        woof_node::cli::connect(&self.node.url()).await.unwrap()
    }
}

/// Logs of the nodes in this test process, to stderr, when `WOOF_LOG` names
/// what to show (as for `woof node`); nothing otherwise. For chasing a
/// failure: `WOOF_LOG=info,woof_overlay=debug cargo test ... -- --nocapture`.
pub fn logs_if_asked() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("WOOF_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
    }
}

pub fn config(dir: &Path) -> NodeConfig {
    let mut config = NodeConfig::standalone(dir.to_path_buf(), "127.0.0.1:0".parse().unwrap());
    // This test process is not `woof`: Python handlers run in the binary.
    config.python_worker = Some(woof_bin().into());
    config
}

pub fn woof_bin() -> &'static str {
    env!("CARGO_BIN_EXE_woof")
}

/// Numbers the node logs of one test process.
static LOGS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A `woof node start` process. Killed (SIGKILL) when dropped.
pub struct NodeProcess {
    pub child: Child,
    pub url: String,
    /// What it was started with, to start it again.
    pub args: Vec<String>,
    /// Its standard error (the log), shown when it fails.
    pub log: std::path::PathBuf,
}

impl NodeProcess {
    /// Starts `woof node start` with `args` and waits for it to serve.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with(args, |_| {})
    }

    /// [`NodeProcess::start`], with the command set up further by
    /// `configure` first (limits on the process, say).
    pub fn start_with(args: &[&str], configure: impl FnOnce(&mut Command)) -> Self {
        let log = std::env::temp_dir().join(format!(
            "woof-test-node-{}-{}.log",
            std::process::id(),
            LOGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let mut command = Command::new(woof_bin());
        command
            .args(["node", "start"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap());
        configure(&mut command);
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the node prints its address when it serves");
        let url = line
            .rsplit(' ')
            .next()
            .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .to_string();
        let args = args.iter().map(ToString::to_string).collect();
        Self {
            child,
            url,
            args,
            log,
        }
    }

    /// Starts it again with the same arguments and `extra` (after it was
    /// killed); its first start's extra arguments are not repeated.
    pub fn restart(&mut self, extra: &[&str]) {
        let mut args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        args.extend_from_slice(extra);
        let again = Self::start(&args);
        let _ = self.child.kill();
        let _ = self.child.wait();
        let args = std::mem::take(&mut self.args);
        *self = again;
        self.args = args;
    }

    /// SIGSTOP: the process stays, frozen, its sockets open.
    pub fn pause(&self) {
        signal(&self.child, libc::SIGSTOP);
    }

    /// SIGCONT after [`NodeProcess::pause`].
    pub fn resume(&self) {
        signal(&self.child, libc::SIGCONT);
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(&mut self) {
        signal(&self.child, libc::SIGTERM);
        let status = self.child.wait().unwrap();
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        assert!(
            status.success(),
            "the node exited with {status}; the end of its log:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }

    pub fn start_in(dir: &Path) -> Self {
        Self::start(&[
            "--data-dir",
            dir.to_str().unwrap(),
            "--grpc-listen",
            "127.0.0.1:0",
        ])
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill_hard(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

fn signal(child: &Child, signal: libc::c_int) {
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    assert_eq!(rc, 0, "kill({signal}) failed");
}

/// Runs the `woof` CLI (without the caller's WOOF_* environment).
pub fn woof(args: &[&str]) -> std::process::Output {
    Command::new(woof_bin())
        .args(args)
        .env_remove("WOOF_SERVER")
        .env_remove("WOOF_CLUSTER_KEY")
        .env_remove("WOOF_TOKEN")
        .env_remove("WOOF_CA")
        .output()
        .unwrap()
}

/// `woof --json cluster status` at `url`: the JSON lines of its nodes and
/// of its topics.
pub fn cluster_status(url: &str) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
    let out = woof(&["--server", url, "--json", "cluster", "status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .partition(|v| v.get("peer_id").is_some())
}

/// The nodes `woof cluster status` at `url` reports.
pub fn status(url: &str) -> Vec<serde_json::Value> {
    cluster_status(url).0
}

/// The overlay address of the node at `url`, without its peer id.
pub fn overlay_addr(url: &str) -> String {
    let me = status(url).remove(0);
    assert_eq!(me["local"], true);
    let addr = me["addrs"][0].as_str().unwrap();
    addr.split("/p2p/").next().unwrap().to_string()
}

/// The peer id of the node at `url`.
pub fn peer_id(url: &str) -> String {
    let me = status(url).remove(0);
    me["peer_id"].as_str().unwrap().to_string()
}

/// Writes a new cluster key into `dir` and returns its path.
pub fn keygen(dir: &Path) -> std::path::PathBuf {
    let out = woof(&["cluster", "keygen"]);
    assert!(out.status.success());
    let key = dir.join("cluster.key");
    std::fs::write(&key, &out.stdout).unwrap();
    key
}

/// A clustered `woof` node process with its data in `dir`.
pub fn start_node(dir: &Path, key: &Path, extra: &[&str]) -> NodeProcess {
    let mut args = vec![
        "--data-dir",
        dir.to_str().unwrap(),
        "--grpc-listen",
        "127.0.0.1:0",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--cluster-key",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    NodeProcess::start(&args)
}

/// Waits until every node at `urls` sees `count` nodes alive.
pub fn wait_alive(urls: &[&str], count: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for url in urls {
        loop {
            let nodes = status(url);
            if nodes.iter().filter(|n| n["state"] == "alive").count() == count {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{url}: not {count} alive within 30 s: {nodes:#?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// `n` clustered nodes in `dir`, joined to the first, all seeing each other.
pub fn start_cluster(dir: &Path, n: usize) -> Vec<NodeProcess> {
    let key = keygen(dir);
    let first = start_node(&dir.join("n0"), &key, &[]);
    let join = overlay_addr(&first.url);
    let mut nodes = vec![first];
    for i in 1..n {
        nodes.push(start_node(
            &dir.join(format!("n{i}")),
            &key,
            &["--join", &join],
        ));
    }
    let urls: Vec<&str> = nodes.iter().map(|n| n.url.as_str()).collect();
    wait_alive(&urls, n);
    nodes
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "the log of the node at {}: {}",
                self.url,
                self.log.display()
            );
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

pub async fn create(client: &mut Client, name: &str, element_max_bytes: u32, history: u64) {
    client
        .create_topic(v1::CreateTopicRequest {
            name: name.into(),
            config: Some(v1::TopicConfig {
                element_max_bytes,
                history,
            }),
            ..Default::default()
        })
        .await
        .unwrap();
}

pub async fn append(client: &mut Client, topic: &str, payload: impl Into<Vec<u8>>) -> u64 {
    client
        .append(v1::AppendRequest {
            topic: topic.into(),
            payload: payload.into().into(),
            producer: None,
            handler: Default::default(),
        })
        .await
        .unwrap()
        .into_inner()
        .seq
}

/// Sends `requests` at once on one `AppendStream`: the answers, in order,
/// until the stream ends.
pub async fn append_streamed(
    client: &mut Client,
    requests: Vec<v1::AppendRequest>,
) -> Vec<v1::append_stream_response::Outcome> {
    let mut answers = client
        .append_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut outcomes = Vec::new();
    while let Some(answer) = answers.message().await.unwrap() {
        outcomes.push(answer.outcome.expect("every answer has an outcome"));
    }
    outcomes
}

pub async fn get(client: &mut Client, topic: &str, seq: u64) -> Result<v1::Element, tonic::Status> {
    client
        .get(v1::GetRequest {
            topic: topic.into(),
            seq,
        })
        .await
        .map(|r| r.into_inner().element.unwrap())
}

pub async fn latest(client: &mut Client, topic: &str) -> v1::LatestResponse {
    client
        .latest(v1::LatestRequest {
            topic: topic.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Every element of a topic, by repeated scans.
pub async fn scan_all(client: &mut Client, topic: &str, from: u64) -> Vec<v1::Element> {
    let mut out = Vec::new();
    let mut next = from;
    loop {
        let r = client
            .scan(v1::ScanRequest {
                topic: topic.into(),
                from_seq: next,
                limit: 1000,
            })
            .await
            .unwrap()
            .into_inner();
        if r.elements.is_empty() {
            return out;
        }
        next = r.next_seq;
        out.extend(r.elements);
    }
}

pub async fn subscribe(
    client: &mut Client,
    topic: &str,
    start: v1::subscribe_request::Start,
) -> tonic::Streaming<v1::SubscribeResponse> {
    client
        .subscribe(v1::SubscribeRequest {
            topic: topic.into(),
            start: Some(start),
        })
        .await
        .unwrap()
        .into_inner()
}

/// The next element of a stream, failing the test after 10 s of silence.
pub async fn next_element(stream: &mut tonic::Streaming<v1::SubscribeResponse>) -> v1::Element {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an element within 10 s")
        .expect("no stream error")
        .expect("the stream goes on")
        .element
        .unwrap()
}

pub async fn connect(url: &str) -> Client {
    woof_node::cli::connect(url).await.unwrap()
}

/// Creates a topic with `replication` replicas on nodes matching `replicas`
/// (a constraint; empty for any).
pub async fn create_replicated(client: &mut Client, name: &str, replication: u32, replicas: &str) {
    client
        .create_topic(v1::CreateTopicRequest {
            name: name.into(),
            replication,
            replicas: replicas.into(),
            ..Default::default()
        })
        .await
        .unwrap();
}

pub async fn describe(client: &mut Client, name: &str) -> v1::TopicInfo {
    client
        .describe_topic(v1::DescribeTopicRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner()
        .topic
        .unwrap()
}

/// The elements a node's stopped data directory holds for `topic`: what
/// that replica made durable, read straight from its RocksDB.
pub fn stored(dir: &Path, topic: &str) -> Vec<(u64, Vec<u8>)> {
    let store = RocksStore::open(&dir.join("db")).unwrap();
    let meta = store
        .topics()
        .unwrap()
        .into_iter()
        .find(|m| m.name.as_str() == topic)
        .unwrap_or_else(|| panic!("{} holds no replica of {topic}", dir.display()));
    store
        .scan(meta.id, 1, 1_000_000, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|e| (e.seq, e.payload.to_vec()))
        .collect()
}

/// Stops every node (cleanly) and returns the one log their stores hold for
/// `topic`, failing if any two replicas (data directories `dir/n0`...) differ.
pub fn stop_and_compare(nodes: &mut [NodeProcess], dir: &Path, topic: &str) -> Vec<(u64, Vec<u8>)> {
    for n in nodes.iter_mut() {
        n.stop();
    }
    let held: Vec<_> = (0..nodes.len())
        .map(|i| stored(&dir.join(format!("n{i}")), topic))
        .collect();
    for (i, other) in held.iter().enumerate().skip(1) {
        assert_eq!(&held[0], other, "replicas n0 and n{i} differ");
    }
    held.into_iter().next().unwrap_or_default()
}

/// Waits until the topic's leader reports every replica matching its log.
pub async fn wait_replicated(client: &mut Client, name: &str, replicas: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = describe(client, name).await;
        let last = info.progress.iter().map(|p| p.matched_index).max();
        if info.progress.len() == replicas
            && info.progress.iter().all(|p| Some(p.matched_index) == last)
        {
            // Followers apply what they hold once the next heartbeat says
            // it is committed.
            tokio::time::sleep(Duration::from_millis(500)).await;
            return;
        }
        assert!(Instant::now() < deadline, "not replicated: {info:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Appends `w{writer}-{i}` to `topic` as producer `w{writer}` until told to
/// stop, retrying each one (safe: the producer makes retries idempotent)
/// until it is acknowledged. Returns (payload, seq, when acknowledged) for
/// each.
pub async fn writer(
    mut client: Client,
    topic: &'static str,
    writer: usize,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<(String, u64, Instant)> {
    let mut acked = Vec::new();
    for i in 1u64.. {
        if *stop.borrow() {
            break;
        }
        let payload = format!("w{writer}-{i}");
        let seq = append_retrying(&mut client, topic, &format!("w{writer}"), i, &payload).await;
        acked.push((payload, seq, Instant::now()));
    }
    acked
}

/// Appends `payload` as producer `producer` at `seq`, retrying through
/// errors (a leader change) for up to 15 s: safe, as the producer makes a
/// retry return the first answer. Returns the element's sequence number.
pub async fn append_retrying(
    client: &mut Client,
    topic: &str,
    producer: &str,
    seq: u64,
    payload: &str,
) -> u64 {
    let mut tries = 0;
    loop {
        let r = client
            .append(v1::AppendRequest {
                topic: topic.into(),
                payload: payload.to_string().into_bytes().into(),
                producer: Some(v1::Producer {
                    id: producer.into(),
                    seq,
                }),
                handler: Default::default(),
            })
            .await;
        match r {
            Ok(r) => return r.into_inner().seq,
            Err(e) => {
                tries += 1;
                assert!(tries < 300, "append {payload} kept failing: {e:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Checks a replica's log (from [`stored`]) against what writers were told:
/// numbered densely from 1, no payload twice, every acknowledged payload at
/// the number it was acknowledged with.
pub fn assert_log_holds(held: &[(u64, Vec<u8>)], acked: &[(String, u64, Instant)]) {
    let seqs: Vec<u64> = held.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "dense");
    let payloads: std::collections::BTreeSet<&[u8]> =
        held.iter().map(|(_, p)| p.as_slice()).collect();
    assert_eq!(payloads.len(), held.len(), "an element appended twice");
    for (payload, seq, _) in acked {
        let at = held.get(*seq as usize - 1).map(|(_, p)| p.as_slice());
        assert_eq!(
            at,
            Some(payload.as_bytes()),
            "acknowledged {payload} at #{seq}"
        );
    }
}

/// A node in this process in a cluster of loopback nodes keyed by `key`,
/// joining `join` (none for the first).
pub async fn start_clustered(dir: &std::path::Path, key: ClusterKey, join: Vec<Multiaddr>) -> Node {
    Node::start(&clustered_config(dir, key, join))
        .await
        .unwrap()
}

/// The configuration [`start_clustered`] starts a node with.
pub fn clustered_config(
    dir: &std::path::Path,
    key: ClusterKey,
    join: Vec<Multiaddr>,
) -> NodeConfig {
    let mut config = NodeConfig::standalone(dir.to_path_buf(), "127.0.0.1:0".parse().unwrap());
    config.cluster = Some(ClusterConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        join,
        key,
        timing: Timing::default(),
        join_timeout: Some(Duration::from_secs(10)),
        repair_after: woof_node::config::REPAIR_AFTER_DEFAULT,
        link_port: woof_overlay::LinkPort::Any,
        balance_leaders: true,
    });
    config
}

/// A UDP port free a moment ago, for a gateway to bind.
/// A TCP port on loopback that was free a moment ago.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Registers `id` through the CLI (with `extra` flags); returns its key
/// (a fleet's key with `--fleet N`).
pub fn add_device(url: &str, id: &str, topics: &str, extra: &[&str]) -> [u8; 16] {
    let mut args = vec![
        "--server", url, "--json", "device", "add", id, "--topics", topics,
    ];
    args.extend_from_slice(extra);
    let out = woof(&args);
    assert!(
        out.status.success(),
        "device add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    woof_node::devices::registry::parse_key(v["key"].as_str().unwrap()).unwrap()
}

/// `woof token keygen` into `dir`: (private key, public key file).
pub fn root_key(dir: &Path) -> (PathBuf, PathBuf) {
    let private = dir.join("root.key");
    let out = woof(&["token", "keygen", "--out", private.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = dir.join("root.key.pub");
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(std::fs::read_to_string(&public).unwrap().trim(), printed);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&private).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the private key is for its owner only");
    (private, public)
}

/// `woof token create`: a token for `topics` granting `ops`, expiring after
/// `expires`.
pub fn token(root: &Path, topics: &str, ops: &str, expires: &str) -> String {
    let out = woof(&[
        "token",
        "create",
        "--root-key",
        root.to_str().unwrap(),
        "--topics",
        topics,
        "--ops",
        ops,
        "--expires",
        expires,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
