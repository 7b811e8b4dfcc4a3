//! Replicated topics across real `woof` processes on loopback: every topic
//! a Raft group on the nodes placement picks, reachable from any node.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use tonic::Code;
use woof_proto::v1;

const TOPIC: &str = "farm/replicated";

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

    // 1,000 appends, from three clients at once, each through its own node:
    // two a call at a time, the third all on one stream, sent at once.
    let mut tasks = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let payloads = (0..334)
                .take_while(|j| i * 334 + j < 1000)
                .map(|j| format!("n{i}-{j}"));
            let mut seqs = Vec::new();
            if i < 2 {
                for p in payloads {
                    seqs.push(append(&mut c, TOPIC, p).await);
                }
                return seqs;
            }
            let requests: Vec<_> = payloads
                .map(|p| v1::AppendRequest {
                    topic: TOPIC.into(),
                    payload: p.into_bytes().into(),
                    ..Default::default()
                })
                .collect();
            let sent = requests.len();
            for outcome in append_streamed(&mut c, requests).await {
                match outcome {
                    v1::append_stream_response::Outcome::Appended(a) => seqs.push(a.seq),
                    other => panic!("a streamed append got {other:?}"),
                }
            }
            assert_eq!(seqs.len(), sent, "an answer for each");
            assert!(seqs.is_sorted(), "a stream's appends keep its order");
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
    let held = stop_and_compare(&mut nodes, dir.path(), TOPIC);
    assert_eq!(held.len(), 1001);
    assert_eq!(held.iter().map(|(s, _)| *s).max(), Some(1001));
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
            handler: Default::default(),
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
                handler: Default::default(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
    }
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
        writers.push(tokio::spawn(writer(client, TOPIC, w, stop.clone())));
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
    let held = stop_and_compare(&mut nodes, dir.path(), TOPIC);
    assert_log_holds(&held, &acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_topics_sleep_and_wake_when_used_even_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(dir.path(), 3);
    let mut c = connect(&nodes[0].url).await;
    let names: Vec<String> = (0..20).map(|i| format!("quiet/{i}")).collect();
    for name in &names {
        create_replicated(&mut c, name, 3, "").await;
        assert_eq!(append(&mut c, name, "first").await, 1);
    }
    // Idle for longer than the sleep delay: no topic has a running leader.
    let leaders = |url: &str| -> Vec<String> {
        cluster_status(url)
            .1
            .iter()
            .map(|t| t["leader"].as_str().unwrap().to_string())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let led = leaders(&nodes[1].url);
        assert_eq!(led.len(), 20, "every topic is still listed while asleep");
        if led.iter().all(String::is_empty) {
            break;
        }
        assert!(Instant::now() < deadline, "still awake: {led:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Sleeping topics are still read from every node.
    for n in &nodes {
        let mut r = connect(&n.url).await;
        assert_eq!(
            get(&mut r, &names[3], 1).await.unwrap().payload,
            &b"first"[..]
        );
    }
    // A write wakes a topic quickly, through any node.
    let mut other = connect(&nodes[2].url).await;
    let started = Instant::now();
    assert_eq!(append(&mut other, &names[0], "second").await, 2);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // A node restarted while its topics sleep serves and wakes them too.
    let join = overlay_addr(&nodes[0].url);
    nodes[2].kill_hard();
    nodes[2].restart(&["--join", &join]);
    let mut again = connect(&nodes[2].url).await;
    for name in &names[1..5] {
        assert_eq!(append(&mut again, name, "after restart").await, 2);
        let all = scan_all(&mut again, name, 1).await;
        let payloads: Vec<&[u8]> = all.iter().map(|e| &e.payload[..]).collect();
        assert_eq!(payloads, [&b"first"[..], b"after restart"]);
    }
    // What the killed node's groups applied was in memory only (ADR 25)
    // and died with it; it applied their logs again when it started, so
    // its copies of the topics nobody touched since, asleep, hold them.
    drop((c, other, again));
    for n in nodes.iter_mut() {
        n.stop();
    }
    for name in &names[5..] {
        assert_eq!(
            stored(&dir.path().join("n2"), name),
            [(1, b"first".to_vec())],
            "{name} on the restarted node"
        );
    }
}

/// Ten rounds of one name created through all three nodes at the same
/// instant: exactly one create of each name succeeds (the others are told
/// it exists), every node then lists each name once, and an append through
/// any node reaches that one topic. Before names were claimed in the
/// directory group, all three creates succeeded in 10 of 10 rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_of_one_name_make_one_topic() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_cluster(dir.path(), 3);
    let mut clients = Vec::new();
    for n in &nodes {
        clients.push(connect(&n.url).await);
    }
    const ROUNDS: usize = 10;
    for round in 0..ROUNDS {
        let name = format!("race/r{round}");
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(clients.len()));
        let mut tasks = Vec::new();
        for c in &clients {
            let (mut c, name, barrier) = (c.clone(), name.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                c.create_topic(v1::CreateTopicRequest {
                    name,
                    replication: 3,
                    ..Default::default()
                })
                .await
                .map(|_| ())
                .map_err(|s| s.code())
            }));
        }
        let mut outcomes = Vec::new();
        for t in tasks {
            outcomes.push(t.await.unwrap());
        }
        let won = outcomes.iter().filter(|o| o.is_ok()).count();
        assert_eq!(won, 1, "round {round}: {outcomes:?}");
        for o in &outcomes {
            assert!(
                matches!(o, Ok(()) | Err(Code::AlreadyExists)),
                "round {round}: {outcomes:?}"
            );
        }
    }
    for c in &mut clients {
        let listed = c
            .list_topics(v1::ListTopicsRequest {})
            .await
            .unwrap()
            .into_inner()
            .topics;
        let names: Vec<&str> = listed.iter().map(|t| t.name.as_str()).collect();
        for round in 0..ROUNDS {
            let name = format!("race/r{round}");
            let count = names.iter().filter(|n| **n == name).count();
            assert_eq!(count, 1, "{name} listed {count} times: {names:?}");
        }
        assert!(
            !names.iter().any(|n| n.starts_with("_woof/")),
            "woof's own topics are not listed: {names:?}"
        );
    }
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(
            append(c, "race/r0", format!("through n{i}")).await,
            i as u64 + 1
        );
    }
}
