//! Repair across real `woof` processes: a replica whose node stays dead past
//! the repair delay is replaced through a Raft membership change, the new
//! replica catches up, and the node that comes back drops its stale copy.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use woof_consensus::store::{RocksStore, Store};

const TOPIC: &str = "farm/repaired";

/// Whether a stopped node's store still holds a replica of `topic`.
fn holds(dir: &std::path::Path, topic: &str) -> bool {
    let store = RocksStore::open(&dir.join("db")).unwrap();
    store
        .topics()
        .unwrap()
        .iter()
        .any(|m| m.name.as_str() == topic)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_on_a_dead_node_is_replaced_and_the_topic_is_healthy_again() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let extra = ["--repair-after", "3"];
    let first = start_node(&dir.path().join("n0"), &key, &extra);
    let join = overlay_addr(&first.url);
    let mut nodes = vec![first];
    for i in 1..4 {
        let mut args = extra.to_vec();
        args.extend(["--join", join.as_str()]);
        nodes.push(start_node(&dir.path().join(format!("n{i}")), &key, &args));
    }
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    wait_alive(&urls.iter().map(String::as_str).collect::<Vec<_>>(), 4);
    let peers: Vec<String> = urls.iter().map(|u| peer_id(u)).collect();

    let mut admin = connect(&urls[0]).await;
    create_replicated(&mut admin, TOPIC, 3, "").await;
    for i in 1..=50 {
        assert_eq!(append(&mut admin, TOPIC, format!("before-{i}")).await, i);
    }
    let info = describe(&mut admin, TOPIC).await;
    let replicas: BTreeSet<String> = info.replicas.iter().cloned().collect();
    let spare = peers.iter().position(|p| !replicas.contains(p)).unwrap();
    // The victim: the leader's node, the hardest case.
    let victim = peers.iter().position(|p| *p == info.leader).unwrap();
    nodes[victim].kill_hard();
    let killed = Instant::now();
    let alive: Vec<usize> = (0..4).filter(|i| *i != victim).collect();
    let mut client = connect(&urls[alive[0]]).await;
    // Appends go on through the two survivors meanwhile.
    for i in 51..=60 {
        let mut tries = 0;
        let seq = loop {
            match client
                .append(woof_proto::v1::AppendRequest {
                    topic: TOPIC.into(),
                    payload: format!("during-{i}").into_bytes().into(),
                    producer: Some(woof_proto::v1::Producer {
                        id: "p".into(),
                        seq: i,
                    }),
                    handler: Default::default(),
                })
                .await
            {
                Ok(r) => break r.into_inner().seq,
                Err(e) => {
                    tries += 1;
                    assert!(tries < 100, "{e:?}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        assert_eq!(seq, i);
    }

    // Past the repair delay, the spare node holds the third replica and the
    // topic is back at three healthy ones.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let info = describe(&mut client, TOPIC).await;
        let now: BTreeSet<String> = info.replicas.iter().cloned().collect();
        let matched = info.progress.iter().map(|p| p.matched_index).min();
        if now.contains(&peers[spare])
            && !now.contains(&peers[victim])
            && now.len() == 3
            && info.progress.len() == 3
            && matched == info.progress.iter().map(|p| p.matched_index).max()
        {
            break;
        }
        assert!(Instant::now() < deadline, "not repaired: {info:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The delay counts from the last heartbeat heard from the victim, up
    // to one overlay heartbeat (1 s) before the kill.
    assert!(
        killed.elapsed() > Duration::from_secs(2),
        "repaired before the delay: {:?} after the kill",
        killed.elapsed()
    );
    // Every node, the new replica included, says so.
    for i in &alive {
        let (_, topics) = cluster_status(&urls[*i]);
        let listed: BTreeSet<String> = topics[0]["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_string())
            .collect();
        assert!(listed.contains(&peers[spare]), "{topics:?}");
    }
    assert_eq!(append(&mut client, TOPIC, "after").await, 61);

    // The dead node comes back: its stale copy is removed.
    nodes[victim].restart(&["--join", &overlay_addr(&urls[alive[0]])]);
    tokio::time::sleep(Duration::from_secs(8)).await;
    wait_replicated(&mut client, TOPIC, 3).await;
    drop((admin, client));
    for n in &mut nodes {
        n.stop();
    }
    assert!(
        !holds(&dir.path().join(format!("n{victim}")), TOPIC),
        "the replaced replica kept its copy"
    );
    // The new replica caught up with everything, like the two others.
    let held: Vec<_> = replicas
        .iter()
        .filter(|p| **p != peers[victim])
        .chain(std::iter::once(&peers[spare]))
        .map(|p| {
            let i = peers.iter().position(|q| q == p).unwrap();
            stored(&dir.path().join(format!("n{i}")), TOPIC)
        })
        .collect();
    assert_eq!(held[0].len(), 61);
    assert_eq!(held[0], held[1]);
    assert_eq!(held[0], held[2]);
}

/// A new cluster's name directory, made on its first node alone, grows to
/// three voters as soon as three nodes are up: until then, losing the first
/// node loses every name (the demo once stopped a node the directory had
/// just grown onto while it still had two voters, and it never recovered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_clusters_name_directory_grows_to_three_voters() {
    use woof_consensus::topic::directory::DIRECTORY;
    let dir = tempfile::tempdir().unwrap();
    let key = woof_overlay::ClusterKey::generate();
    let first = start_clustered(&dir.path().join("a"), key, vec![]).await;
    let join = first.overlay().unwrap().listen_addrs().to_vec();
    let b = start_clustered(&dir.path().join("b"), key, join.clone()).await;
    let c = start_clustered(&dir.path().join("c"), key, join).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let voters = first
            .groups()
            .unwrap()
            .local_members(DIRECTORY)
            .unwrap_or_default();
        if voters.len() == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the directory still has {} voters after 20 s",
            voters.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for n in [c, b, first] {
        n.stop().await.unwrap();
    }
}
