//! Replicated topics across real `woof` processes on loopback: every topic
//! a Raft group on the nodes placement picks, reachable from any node.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use tonic::Code;
use woof_consensus::store::{RocksStore, Store};
use woof_proto::v1;

const TOPIC: &str = "farm/replicated";

async fn create_replicated(client: &mut Client, name: &str, replication: u32, replicas: &str) {
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

async fn describe(client: &mut Client, name: &str) -> v1::TopicInfo {
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
fn stored(dir: &Path, topic: &str) -> Vec<(u64, Vec<u8>)> {
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

/// Waits until the topic's leader reports every replica matching its log.
async fn wait_replicated(client: &mut Client, name: &str, replicas: usize) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_hold_the_same_thousand_elements_appended_through_all_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(dir.path(), 3);
    let mut clients = Vec::new();
    for n in &nodes {
        clients.push(connect(&n.url).await);
    }
    create_replicated(&mut clients[1], TOPIC, 3, "").await;
    // Every node knows it now, with the same three replicas: all the nodes.
    let peers: BTreeSet<String> = nodes.iter().map(|n| peer_id(&n.url)).collect();
    for c in &mut clients {
        let info = describe(c, TOPIC).await;
        assert_eq!(info.replication, 3);
        assert_eq!(
            info.replicas.iter().cloned().collect::<BTreeSet<_>>(),
            peers
        );
        assert!(peers.contains(&info.leader), "{info:?}");
    }

    // 1,000 appends, from three clients at once, each through its own node.
    let mut tasks = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for j in 0..334 {
                if i * 334 + j >= 1000 {
                    break;
                }
                seqs.push(append(&mut c, TOPIC, format!("n{i}-{j}")).await);
            }
            seqs
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.extend(t.await.unwrap());
    }
    seqs.sort();
    assert_eq!(seqs, (1..=1000).collect::<Vec<_>>(), "dense, each once");

    // Every node answers the same 1,000 elements in the same order.
    let first = scan_all(&mut clients[0], TOPIC, 1).await;
    assert_eq!(first.len(), 1000);
    for c in &mut clients[1..] {
        assert_eq!(scan_all(c, TOPIC, 1).await, first);
        assert_eq!(latest(c, TOPIC).await.last_seq, 1000);
    }
    // A subscriber on any node replays them, then sees a live one.
    let mut stream = subscribe(
        &mut clients[2],
        TOPIC,
        v1::subscribe_request::Start::FromSeq(990),
    )
    .await;
    for seq in 990..=1000 {
        assert_eq!(next_element(&mut stream).await.seq, seq);
    }
    assert_eq!(append(&mut clients[0], TOPIC, "live").await, 1001);
    assert_eq!(next_element(&mut stream).await.payload, &b"live"[..]);

    // cluster status agrees on every node: one topic, same replicas and leader.
    let view = |url: &str| {
        let (_, topics) = cluster_status(url);
        assert_eq!(topics.len(), 1, "{topics:?}");
        (
            topics[0]["name"].clone(),
            topics[0]["replicas"].clone(),
            topics[0]["leader"].clone(),
        )
    };
    let a = view(&nodes[0].url);
    for n in &nodes[1..] {
        assert_eq!(view(&n.url), a);
    }

    // Stopped, each node's own store holds exactly the same elements.
    wait_replicated(&mut clients[0], TOPIC, 3).await;
    drop(stream);
    for n in &mut nodes {
        n.stop();
    }
    let held: Vec<_> = (0..3)
        .map(|i| stored(&dir.path().join(format!("n{i}")), TOPIC))
        .collect();
    assert_eq!(held[0].len(), 1001);
    assert_eq!(held[0], held[1]);
    assert_eq!(held[0], held[2]);
}

async fn connect(url: &str) -> Client {
    woof_node::cli::connect(url).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_topic_requests_in_a_cluster_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_cluster(dir.path(), 3);
    let mut c = connect(&nodes[0].url).await;
    let refuse = |replication: u32, replicas: &'static str| v1::CreateTopicRequest {
        name: "bad/one".into(),
        replication,
        replicas: replicas.into(),
        ..Default::default()
    };
    let cases = [
        (
            refuse(4, ""),
            Code::InvalidArgument,
            "replication must be 1, 3 or 5",
        ),
        (refuse(5, ""), Code::InvalidArgument, "live"),
        (
            refuse(1, "tier=device"),
            Code::InvalidArgument,
            "tier=device",
        ),
        (refuse(3, "zone=mars"), Code::InvalidArgument, "zone=mars"),
        (
            refuse(3, "tier=edge:1"),
            Code::InvalidArgument,
            "asks for 1",
        ),
        (refuse(3, "nonsense"), Code::InvalidArgument, "key=value"),
    ];
    for (request, code, words) in cases {
        let err = c.create_topic(request.clone()).await.unwrap_err();
        assert_eq!(err.code(), code, "{request:?}: {err:?}");
        assert!(err.message().contains(words), "{request:?}: {err:?}");
    }
    // Nothing was created anywhere; the name is still free.
    for n in &nodes {
        let (_, topics) = cluster_status(&n.url);
        assert!(topics.is_empty(), "{topics:?}");
        let err = connect(&n.url)
            .await
            .describe_topic(v1::DescribeTopicRequest {
                name: "bad/one".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
    }
    create_replicated(&mut c, "bad/one", 3, "tier=edge").await;
    let dup = c
        .create_topic(v1::CreateTopicRequest {
            name: "bad/one".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists, "{dup:?}");
    // Appends to an unknown topic, and oversized ones, are refused from any node.
    let mut other = connect(&nodes[2].url).await;
    let err = other
        .append(v1::AppendRequest {
            topic: "no/such".into(),
            payload: b"x".to_vec().into(),
            producer: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    // Deleted from another node, it is gone everywhere.
    other
        .delete_topic(v1::DeleteTopicRequest {
            name: "bad/one".into(),
        })
        .await
        .unwrap();
    for n in &nodes {
        let err = connect(&n.url)
            .await
            .append(v1::AppendRequest {
                topic: "bad/one".into(),
                payload: b"x".to_vec().into(),
                producer: None,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
    }
}

/// Appends `w{writer}-{i}` as producer `w{writer}` until told to stop,
/// retrying each one (safe: the producer makes retries idempotent) until it
/// is acknowledged. Returns (payload, seq, when acknowledged) for each.
async fn writer(
    mut client: Client,
    writer: usize,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<(String, u64, Instant)> {
    let mut acked = Vec::new();
    for i in 1u64.. {
        if *stop.borrow() {
            break;
        }
        let payload = format!("w{writer}-{i}");
        let mut tries = 0;
        loop {
            let r = client
                .append(v1::AppendRequest {
                    topic: TOPIC.into(),
                    payload: payload.clone().into_bytes().into(),
                    producer: Some(v1::Producer {
                        id: format!("w{writer}"),
                        seq: i,
                    }),
                })
                .await;
            match r {
                Ok(r) => {
                    acked.push((payload, r.into_inner().seq, Instant::now()));
                    break;
                }
                Err(e) => {
                    tries += 1;
                    assert!(tries < 300, "append {payload} kept failing: {e:?}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_mid_stream_loses_no_acknowledged_append() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(dir.path(), 3);
    let mut admin = connect(&nodes[0].url).await;
    create_replicated(&mut admin, TOPIC, 3, "").await;
    let leader = describe(&mut admin, TOPIC).await.leader;
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let li = urls.iter().position(|u| peer_id(u) == leader).unwrap();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != li).collect();

    // Four writers, through the two nodes that will survive.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut writers = Vec::new();
    for w in 0..4 {
        let client = connect(&urls[survivors[w % 2]]).await;
        writers.push(tokio::spawn(writer(client, w, stop.clone())));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nodes[li].kill_hard();
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop_tx.send_replace(true);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    let before = acked.iter().filter(|(_, _, t)| *t < killed).count();
    let first_after = acked
        .iter()
        .filter(|(_, _, t)| *t > killed)
        .map(|(_, _, t)| *t - killed)
        .min()
        .expect("appends resumed after the kill");
    assert!(before > 20, "only {before} appends before the kill");
    assert!(
        first_after < Duration::from_secs(4),
        "appends resumed only after {first_after:?}"
    );

    // The killed node comes back and catches up.
    let join = overlay_addr(&urls[survivors[0]]);
    nodes[li].restart(&["--join", &join]);
    wait_replicated(&mut connect(&urls[survivors[0]]).await, TOPIC, 3).await;
    drop(admin);
    for n in &mut nodes {
        n.stop();
    }
    let held: Vec<_> = (0..3)
        .map(|i| stored(&dir.path().join(format!("n{i}")), TOPIC))
        .collect();
    assert_eq!(held[0], held[1], "replicas differ");
    assert_eq!(held[0], held[2], "replicas differ");
    let seqs: Vec<u64> = held[0].iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "dense");
    let payloads: BTreeSet<&[u8]> = held[0].iter().map(|(_, p)| p.as_slice()).collect();
    assert_eq!(payloads.len(), held[0].len(), "an element appended twice");
    for (payload, seq, _) in &acked {
        let at = held[0].get(*seq as usize - 1).map(|(_, p)| p.as_slice());
        assert_eq!(
            at,
            Some(payload.as_bytes()),
            "acknowledged {payload} at #{seq}"
        );
    }
}
