//! Faults in a cluster of real `woof` processes on loopback: a leader frozen
//! (SIGSTOP) then thawed, many topics spread over five nodes, and nodes
//! without the cluster key.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use tonic::Code;
use woof_proto::v1;

const TOPIC: &str = "farm/replicated";

/// Asks `latest` through `client` until told to stop: (when asked, the
/// last number it answered), for each answer.
async fn reader(
    mut client: Client,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<(Instant, u64)> {
    let mut answers = Vec::new();
    while !*stop.borrow() {
        let asked = Instant::now();
        match client
            .latest(v1::LatestRequest {
                topic: TOPIC.into(),
            })
            .await
        {
            Ok(r) => answers.push((asked, r.into_inner().last_seq)),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_rejoins_without_split_brain() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(dir.path(), 3);
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let peers: Vec<String> = urls.iter().map(|u| peer_id(u)).collect();
    let mut admin = connect(&urls[0]).await;
    create_replicated(&mut admin, TOPIC, 3, "").await;

    // Two writers through each node; those through the node that will be
    // frozen wait while it is, then go on. A reader on every node asks for
    // the latest number.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut writers = Vec::new();
    for w in 0..6 {
        let client = connect(&urls[w % 3]).await;
        writers.push(tokio::spawn(writer(client, TOPIC, w, stop.clone())));
    }
    let mut readers = Vec::new();
    for url in &urls {
        readers.push(tokio::spawn(reader(connect(url).await, stop.clone())));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The leader, frozen well past the election timeout (0.5–1 s): the
    // other two elect a leader and go on taking appends.
    let leader = describe(&mut admin, TOPIC).await.leader;
    let li = peers
        .iter()
        .position(|p| *p == leader)
        .expect("a leader among the nodes");
    nodes[li].pause();
    let paused = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    nodes[li].resume();
    let resumed = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_tx.send_replace(true);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    let mut answers = Vec::new();
    for (i, r) in readers.into_iter().enumerate() {
        answers.extend(r.await.unwrap().into_iter().map(|(t, last)| (i, t, last)));
    }

    // All three catch up; their logs are one log, holding every
    // acknowledged append where it was acknowledged.
    wait_replicated(&mut connect(&urls[(li + 1) % 3]).await, TOPIC, 3).await;
    drop(admin);
    let held = stop_and_compare(&mut nodes, dir.path(), TOPIC);
    assert_log_holds(&held, &acked);
    // No node, the thawed old leader included, answered `latest` with less
    // than an append acknowledged before it was asked.
    for (node, asked, last) in &answers {
        let missed = acked
            .iter()
            .filter(|(_, seq, t)| t < asked && seq > last)
            .max_by_key(|(_, seq, _)| *seq);
        assert!(
            missed.is_none(),
            "n{node} (old leader: n{li}) answered latest = {last} {:?} after the pause, \
             but {missed:?} was acknowledged before",
            asked.saturating_duration_since(paused)
        );
    }
    let thawed_answers = answers
        .iter()
        .filter(|(n, t, _)| *n == li && *t > resumed)
        .count();
    assert!(thawed_answers > 0, "the thawed node answered no latest");

    // Appends went on through the live nodes while the leader was frozen,
    // and through every node after it thawed.
    let before = acked.iter().filter(|(_, _, t)| *t < paused).count();
    let first_after_pause = acked
        .iter()
        .filter(|(_, _, t)| *t > paused)
        .map(|(_, _, t)| *t - paused)
        .min();
    let while_frozen = acked
        .iter()
        .filter(|(_, _, t)| *t > paused && *t < resumed)
        .count();
    let after = acked.iter().filter(|(_, _, t)| *t > resumed).count();
    assert!(before > 20, "only {before} appends before the pause");
    assert!(after > 20, "only {after} appends after the resume");
    for w in [li, li + 3] {
        assert!(
            acked
                .iter()
                .any(|(p, _, t)| p.starts_with(&format!("w{w}-")) && *t > resumed),
            "writer w{w}, through the thawed node, made no progress"
        );
    }
    assert!(
        while_frozen > 0,
        "no append acknowledged in the {:?} the old leader was frozen \
         (the first after the pause came {first_after_pause:?} after it)",
        resumed - paused
    );
}

/// A topic's replicas and leader, as `cluster status` lists it.
fn placement_of(topic: &serde_json::Value) -> (BTreeSet<String>, String) {
    let replicas = topic["replicas"]
        .as_array()
        .unwrap_or_else(|| panic!("no replicas: {topic}"))
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    (replicas, topic["leader"].as_str().unwrap().to_string())
}

/// Every topic `cluster status` at `url` lists: name → (replicas, leader).
fn topics_seen(url: &str) -> BTreeMap<String, (BTreeSet<String>, String)> {
    let (_, topics) = cluster_status(url);
    let mut seen = BTreeMap::new();
    for t in &topics {
        let name = t["name"].as_str().unwrap().to_string();
        assert!(
            seen.insert(name, placement_of(t)).is_none(),
            "{url} lists {} twice",
            t["name"]
        );
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_spread_two_hundred_topics_and_agree_on_status() {
    const TOPICS: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_cluster(dir.path(), 5);
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let peer_ids: Vec<String> = urls.iter().map(|u| peer_id(u)).collect();
    let peers: BTreeSet<String> = peer_ids.iter().cloned().collect();
    assert_eq!(peers.len(), 5);

    // t/i is created through node i % 5; the five nodes create at once.
    let mut creators = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        let mut client = connect(url).await;
        creators.push(tokio::spawn(async move {
            for t in (i..TOPICS).step_by(5) {
                create_replicated(&mut client, &format!("t/{t}"), 3, "").await;
            }
        }));
    }
    let started = Instant::now();
    for c in creators {
        c.await.unwrap();
    }
    eprintln!("{TOPICS} topics created in {:?}", started.elapsed());

    // Every topic on three distinct nodes of the five; every node used.
    let names: BTreeSet<String> = (0..TOPICS).map(|t| format!("t/{t}")).collect();
    let first = topics_seen(&urls[0]);
    assert_eq!(
        first.keys().cloned().collect::<BTreeSet<_>>(),
        names,
        "the topics n0 lists"
    );
    let mut held: BTreeMap<&str, usize> = BTreeMap::new();
    for (name, (replicas, leader)) in &first {
        assert_eq!(replicas.len(), 3, "{name}: {replicas:?}");
        assert!(replicas.is_subset(&peers), "{name}: {replicas:?}");
        // A group idle for a while sleeps, and then nobody leads it.
        assert!(
            leader.is_empty() || replicas.contains(leader),
            "{name}: leader {leader:?}"
        );
        for r in replicas {
            *held.entry(r.as_str()).or_default() += 1;
        }
    }
    assert_eq!(
        held.keys().map(|p| p.to_string()).collect::<BTreeSet<_>>(),
        peers,
        "replicas per node: {held:?}"
    );

    // Every node lists the same topics on the same replicas, always; and
    // the same leader, once no change is under way (an election, or a
    // group going to sleep): each topic must be seen alike by all five in
    // one round of asking them.
    let replicas_only = |seen: &BTreeMap<String, (BTreeSet<String>, String)>| {
        seen.iter()
            .map(|(n, (r, _))| (n.clone(), r.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    let mut unsettled: BTreeSet<String> = names.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let views: Vec<_> = urls.iter().map(|u| topics_seen(u)).collect();
        for (i, v) in views.iter().enumerate() {
            assert_eq!(
                replicas_only(v),
                replicas_only(&first),
                "n{i} and n0 list different topics or replicas"
            );
            for (name, (replicas, leader)) in v {
                assert!(
                    leader.is_empty() || replicas.contains(leader),
                    "n{i}: {name} led by {leader:?}, not one of {replicas:?}"
                );
            }
        }
        unsettled.retain(|name| views.iter().any(|v| v[name].1 != views[0][name].1));
        let Some(example) = unsettled.first() else {
            break;
        };
        assert!(
            Instant::now() < deadline,
            "for {} topics the nodes never named the same leader at once, such as {example}: {:?}",
            unsettled.len(),
            views.iter().map(|v| &v[example].1).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Each node's line counts the topics it leads and holds a replica of,
    // as the topics' lines of the same answer name them.
    let (nodes_listed, topics_listed) = cluster_status(&urls[0]);
    assert_eq!(nodes_listed.len(), 5);
    let mut leads_total = 0;
    for n in &nodes_listed {
        let peer = n["peer_id"].as_str().unwrap();
        let of = |key: &str, holds: &dyn Fn(&serde_json::Value) -> bool| {
            let listed = n[key].as_u64().unwrap_or_else(|| panic!("no {key}: {n}"));
            let counted = topics_listed.iter().filter(|t| holds(t)).count() as u64;
            assert_eq!(listed, counted, "{peer}: {key}");
            listed
        };
        let replicas = of("replicas", &|t| placement_of(t).0.contains(peer));
        assert_eq!(replicas, held[peer] as u64, "{peer}");
        leads_total += of("leads", &|t| placement_of(t).1 == peer);
    }
    let led = topics_listed
        .iter()
        .filter(|t| !placement_of(t).1.is_empty())
        .count() as u64;
    assert_eq!(leads_total, led, "every led topic is counted once");

    // Through nodes that hold no replica: append to a few topics through
    // one, read back through the other.
    for t in [0, 1, 2, 3, 4, 99, 199] {
        let name = format!("t/{t}");
        let (replicas, _) = &first[&name];
        let outside: Vec<usize> = (0..5)
            .filter(|i| !replicas.contains(&peer_ids[*i]))
            .collect();
        assert_eq!(outside.len(), 2, "{name}");
        let payload = format!("through n{} to {name}", outside[0]);
        let mut writer = connect(&urls[outside[0]]).await;
        assert_eq!(
            append(&mut writer, &name, payload.clone()).await,
            1,
            "{name}"
        );
        let mut reader = connect(&urls[outside[1]]).await;
        let got = get(&mut reader, &name, 1).await.unwrap();
        assert_eq!(got.payload, payload.as_bytes(), "{name}");
        let all = scan_all(&mut reader, &name, 1).await;
        assert_eq!(all.len(), 1, "{name}: {all:?}");
        assert_eq!(all[0].payload, payload.as_bytes());
        assert_eq!(latest(&mut reader, &name).await.last_seq, 1, "{name}");
    }
}

/// The peer id a node's data directory gives it.
fn peer_of(data_dir: &Path) -> String {
    let key = data_dir.join("node.key");
    assert!(key.exists(), "{} has no identity", data_dir.display());
    woof_overlay::identity::load_or_create(&key)
        .unwrap()
        .public()
        .to_peer_id()
        .to_string()
}

/// `woof node start` that must fail: its last line on stderr.
fn refused(args: &[&str]) -> String {
    let mut all = vec!["node", "start"];
    all.extend_from_slice(args);
    let out = woof(&all);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} started: {stderr}");
    assert!(
        out.stdout.is_empty(),
        "{args:?} said it serves: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr.lines().last().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_key_cannot_append() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(dir.path(), 3);
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let peers: BTreeSet<String> = urls.iter().map(|u| peer_id(u)).collect();
    let mut clients = Vec::new();
    for url in &urls {
        clients.push(connect(url).await);
    }
    create_replicated(&mut clients[0], TOPIC, 3, "").await;
    let mut expected = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        for j in 0..3 {
            let payload = format!("member n{i} #{j}");
            expected.push((append(c, TOPIC, payload.clone()).await, payload));
        }
    }
    expected.sort();
    assert_eq!(
        expected.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (1..=9).collect::<Vec<_>>()
    );
    let join = overlay_addr(&urls[0]);

    // With another cluster's key: it cannot join, and says so.
    std::fs::create_dir(dir.path().join("other")).unwrap();
    let other_key = keygen(&dir.path().join("other"));
    let intruder = dir.path().join("intruder");
    let grpc = ["--grpc-listen", "127.0.0.1:0"];
    let listen = ["--listen", "/ip4/127.0.0.1/tcp/0"];
    let last = refused(&[
        "--data-dir",
        intruder.to_str().unwrap(),
        grpc[0],
        grpc[1],
        listen[0],
        listen[1],
        "--cluster-key",
        other_key.to_str().unwrap(),
        "--join",
        &join,
    ]);
    assert!(
        last.starts_with("error: could not join the cluster"),
        "{last}"
    );
    let intruder_peer = peer_of(&intruder);

    // Without any key: a node with an overlay address refuses to start,
    // and --join alone asks for --listen.
    let keyless = dir.path().join("keyless");
    let last = refused(&[
        "--data-dir",
        keyless.to_str().unwrap(),
        grpc[0],
        grpc[1],
        listen[0],
        listen[1],
        "--join",
        &join,
    ]);
    assert!(
        last.starts_with("error: a node in a cluster needs the cluster key"),
        "{last}"
    );
    let last = refused(&[
        "--data-dir",
        keyless.to_str().unwrap(),
        grpc[0],
        grpc[1],
        "--join",
        &join,
    ]);
    assert!(
        last.starts_with("error: --join, --join-timeout and --cluster-key need --listen"),
        "{last}"
    );

    // The members never see it: the same three nodes, the same replicas.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for url in &urls {
        let (members, topics) = cluster_status(url);
        let seen: BTreeSet<String> = members
            .iter()
            .map(|m| m["peer_id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(seen, peers, "{url}: {members:#?}");
        assert!(!seen.contains(&intruder_peer));
        assert_eq!(topics.len(), 1, "{topics:?}");
        assert_eq!(topics[0]["name"], TOPIC);
        assert_eq!(placement_of(&topics[0]).0, peers);
    }

    // Its data directory, served standalone, knows no such topic.
    let mut standalone = NodeProcess::start_in(&intruder);
    let mut outside = connect(&standalone.url).await;
    for producer in [None, Some(("intruder", 1))] {
        let err = outside
            .append(v1::AppendRequest {
                topic: TOPIC.into(),
                payload: b"intruder".to_vec().into(),
                producer: producer.map(|(id, seq)| v1::Producer { id: id.into(), seq }),
                handler: Default::default(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
    }
    drop(outside);
    standalone.stop();

    // Nor does a member's own directory served standalone: it holds a
    // replica, but only the group may write to it.
    nodes[2].stop();
    let mut standalone = NodeProcess::start_in(&dir.path().join("n2"));
    let mut outside = connect(&standalone.url).await;
    let err = outside
        .append(v1::AppendRequest {
            topic: TOPIC.into(),
            payload: b"outside the group".to_vec().into(),
            producer: None,
            handler: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    drop(outside);
    standalone.stop();
    let expected: Vec<(u64, Vec<u8>)> = expected
        .into_iter()
        .map(|(s, p)| (s, p.into_bytes()))
        .collect();
    assert_eq!(stored(&dir.path().join("n2"), TOPIC), expected);

    // The topic holds exactly what the members appended (two of three
    // are a quorum).
    for c in &mut clients[..2] {
        let all: Vec<(u64, Vec<u8>)> = scan_all(c, TOPIC, 1)
            .await
            .into_iter()
            .map(|e| (e.seq, e.payload.to_vec()))
            .collect();
        assert_eq!(all, expected);
        assert_eq!(latest(c, TOPIC).await.last_seq, 9);
    }
}
