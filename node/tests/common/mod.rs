//! Helpers shared by the node's end-to-end tests: nodes in this process or as
//! real `woof` processes, always on loopback, each in its own temporary dir.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tonic::transport::Channel;
use woof_node::config::NodeConfig;
use woof_node::server::Node;
use woof_proto::v1::{self, woof_client::WoofClient};

pub type Client = WoofClient<Channel>;

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

pub fn config(dir: &Path) -> NodeConfig {
    NodeConfig::standalone(dir.to_path_buf(), "127.0.0.1:0".parse().unwrap())
}

pub fn woof_bin() -> &'static str {
    env!("CARGO_BIN_EXE_woof")
}

/// A `woof node start` process. Killed (SIGKILL) when dropped.
pub struct NodeProcess {
    pub child: Child,
    pub url: String,
}

impl NodeProcess {
    /// Starts `woof node start` with `args` and waits for it to serve.
    pub fn start(args: &[&str]) -> Self {
        let mut child = Command::new(woof_bin())
            .args(["node", "start"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
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
            .filter(|u| u.starts_with("http://"))
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .to_string();
        Self { child, url }
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

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
        })
        .await
        .unwrap()
        .into_inner()
        .seq
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
