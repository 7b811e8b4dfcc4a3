//! A Raft group replicated between three real nodes (in this process) over
//! the libp2p overlay: the pieces the cluster issue builds replicated topics
//! from.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use openraft::BasicNode;
use woof_consensus::raft::{Command, CommandResult};
use woof_consensus::raft::{Raft, WatchReceiver};
use woof_consensus::store::{GROUP_ID_MIN, GroupId};
use woof_consensus::topic::{TopicConfig, TopicId, TopicMeta, TopicName};
use woof_node::server::Node;
use woof_overlay::ClusterKey;

const GROUP: GroupId = GroupId(GROUP_ID_MIN + 1);

async fn leader(rafts: &[Raft], not: Option<u64>) -> usize {
    for _ in 0..200 {
        for r in rafts {
            if let Some(l) = r.current_leader().await
                && Some(l) != not
                && let Some(i) = rafts
                    .iter()
                    .position(|r| r.metrics().borrow_watched().id == l)
            {
                return i;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no leader within 10 s");
}

async fn append(raft: &Raft, payload: &str) -> u64 {
    for _ in 0..100 {
        let written = raft
            .client_write(Command::Append {
                payloads: vec![bytes::Bytes::from(payload.as_bytes().to_vec())],
                producer: None,
                time_ms: 1,
                cause: None,
                handler: None,
            })
            .await;
        match written {
            Ok(r) => match r.data {
                CommandResult::Appended(o) => return o.first_seq,
                other => panic!("{other:?}"),
            },
            // Just after an election the new leader may not be ready yet.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("append {payload:?} never succeeded");
}

fn seqs(node: &Node) -> Vec<u64> {
    node.groups()
        .unwrap()
        .store()
        .scan(TopicId(GROUP.0), 1, 10_000, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|e| e.seq)
        .collect()
}

async fn converged(nodes: &[&Node], count: u64) {
    for _ in 0..200 {
        if nodes
            .iter()
            .all(|n| seqs(n) == (1..=count).collect::<Vec<_>>())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lens: Vec<usize> = nodes.iter().map(|n| seqs(n).len()).collect();
    panic!("replicas hold {lens:?} elements, not {count} each");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_replicates_over_the_overlay_and_survives_a_node_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let key = ClusterKey::generate();
    let a = common::start_clustered(&dir.path().join("a"), key, vec![]).await;
    let join = a.overlay().unwrap().listen_addrs().to_vec();
    let b = common::start_clustered(&dir.path().join("b"), key, join.clone()).await;
    let c = common::start_clustered(&dir.path().join("c"), key, join).await;
    let nodes = vec![a, b, c];

    let mut rafts = Vec::new();
    let mut members = BTreeMap::new();
    for n in &nodes {
        let groups = n.groups().unwrap();
        // Marked as this node's first, as joining a group does: a node
        // starts only the groups it holds.
        groups.store().put_value(GROUP, "member", b"").unwrap();
        rafts.push(groups.start(GROUP).await.unwrap());
        members.insert(
            groups.node_id(),
            BasicNode::new(n.overlay().unwrap().peer_id().to_string()),
        );
    }
    rafts[0].initialize(members).await.unwrap();
    let l = leader(&rafts, None).await;
    let meta = TopicMeta {
        id: TopicId(GROUP.0),
        name: TopicName::new("farm/replicated").unwrap(),
        config: TopicConfig::default(),
        created_at_ms: 1,
        placement: Default::default(),
    };
    let created = rafts[l].client_write(Command::Create(meta)).await.unwrap();
    assert_eq!(created.data, CommandResult::Created);
    for i in 1..=100u64 {
        assert_eq!(append(&rafts[l], &format!("e{i}")).await, i);
    }
    let all: Vec<&Node> = nodes.iter().collect();
    converged(&all, 100).await;

    // Stop the leader's node entirely; the other two carry on.
    let old = rafts[l].metrics().borrow_watched().id;
    let mut nodes = nodes;
    let stopped = nodes.remove(l);
    rafts.remove(l);
    stopped.stop().await.unwrap();
    let l2 = leader(&rafts, Some(old)).await;
    assert_eq!(
        append(&rafts[l2], "after").await,
        101,
        "numbering continues"
    );
    for i in 102..=120u64 {
        assert_eq!(append(&rafts[l2], &format!("e{i}")).await, i);
    }
    let survivors: Vec<&Node> = nodes.iter().collect();
    converged(&survivors, 120).await;
    drop(rafts);
    for n in nodes {
        n.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_outside_the_group_creates_it_and_writes_through_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let key = ClusterKey::generate();
    let a = common::start_clustered(&dir.path().join("a"), key, vec![]).await;
    let join = a.overlay().unwrap().listen_addrs().to_vec();
    let mut nodes = vec![a];
    for name in ["b", "c", "d"] {
        nodes.push(common::start_clustered(&dir.path().join(name), key, join.clone()).await);
    }
    // Wait until d knows the others (it talks to them by peer id).
    for _ in 0..100 {
        let alive = nodes[3].overlay().unwrap().members().await.unwrap().len();
        if alive == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let members: Vec<_> = nodes[..3]
        .iter()
        .map(|n| n.overlay().unwrap().peer_id())
        .collect();
    let outsider = nodes[3].groups().unwrap().clone();
    outsider.create(GROUP, &members).await.unwrap();
    let meta = TopicMeta {
        id: TopicId(GROUP.0),
        name: TopicName::new("farm/forwarded").unwrap(),
        config: TopicConfig::default(),
        created_at_ms: 1,
        placement: Default::default(),
    };
    let created = outsider
        .write(GROUP, &members, Command::Create(meta))
        .await
        .unwrap();
    assert_eq!(created, CommandResult::Created);
    let write = |i: u64| Command::Append {
        payloads: vec![bytes::Bytes::from(format!("e{i}").into_bytes())],
        producer: Some(("sensor".into(), i)),
        time_ms: 1,
        cause: None,
        handler: None,
    };
    for i in 1..=30u64 {
        match outsider.write(GROUP, &members, write(i)).await.unwrap() {
            CommandResult::Appended(o) => assert_eq!(o.first_seq, i),
            other => panic!("{other:?}"),
        }
    }
    // A retried write is recognised, wherever it enters.
    match outsider.write(GROUP, &members, write(30)).await.unwrap() {
        CommandResult::Appended(o) => assert!(o.duplicate && o.first_seq == 30),
        other => panic!("{other:?}"),
    }
    let replicas: Vec<&Node> = nodes[..3].iter().collect();
    converged(&replicas, 30).await;
    assert!(seqs(&nodes[3]).is_empty(), "the outsider holds nothing");

    // Stop whichever member leads; writes from the outsider go on.
    let rafts: Vec<Raft> = nodes[..3]
        .iter()
        .map(|n| n.groups().unwrap().start(GROUP))
        .collect::<futures::future::JoinAll<_>>()
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let l = leader(&rafts, None).await;
    drop(rafts);
    let stopped = nodes.remove(l);
    stopped.stop().await.unwrap();
    match outsider.write(GROUP, &members, write(31)).await.unwrap() {
        CommandResult::Appended(o) => assert_eq!(o.first_seq, 31),
        other => panic!("{other:?}"),
    }
    let survivors: Vec<&Node> = nodes[..2].iter().collect();
    converged(&survivors, 31).await;
    // The handle holds the outsider's store; its node closes the store on stop.
    drop(outsider);
    for n in nodes {
        n.stop().await.unwrap();
    }
}
