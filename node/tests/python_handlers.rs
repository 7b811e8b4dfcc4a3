//! Python handlers on a cluster of real `woof` processes on loopback: each
//! runs in a sandboxed worker process the node starts from its own binary;
//! its outputs are written once, in order, across a SIGKILL of the node
//! that runs it, even mid-element.

mod common;

use std::time::{Duration, Instant};

use common::*;
use woof_proto::v1;

fn cli(args: &[&str]) -> (bool, String) {
    let out = woof(args);
    let text = if out.status.success() {
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    (out.status.success(), text)
}

/// Deploys `source` as handler `name` of `topic` through the CLI.
fn deploy(
    dir: &std::path::Path,
    url: &str,
    topic: &str,
    name: &str,
    source: &str,
) -> (bool, String) {
    let file = dir.join(format!("{name}.py"));
    std::fs::write(&file, source).unwrap();
    let file = file.to_string_lossy().into_owned();
    cli(&[
        "--server", url, "handler", "deploy", topic, name, "--python", &file,
    ])
}

/// The last sequence number of `topic`, asked again while a read fails
/// (as it may while a new leader takes over after a kill).
async fn last_seq_surely(c: &mut Client, topic: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = c
            .latest(v1::LatestRequest {
                topic: topic.into(),
            })
            .await;
        match answer {
            Ok(r) => return r.into_inner().last_seq,
            Err(e) => assert!(Instant::now() < deadline, "{topic}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `topic` holds `count` elements, then a little longer (so a
/// handler that would write too much has the time to), and returns them.
async fn settle(c: &mut Client, topic: &str, count: u64) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if last_seq_surely(c, topic).await >= count {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{topic} reaches {count} elements"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    scan_all(c, topic, 1)
        .await
        .iter()
        .map(|e| String::from_utf8(e.payload.to_vec()).unwrap())
        .collect()
}

/// The node that leads `topic`, where its handlers run.
async fn leader_index(c: &mut Client, nodes: &[NodeProcess], topic: &str) -> usize {
    let leader = describe(c, topic).await.leader;
    nodes
        .iter()
        .position(|n| peer_id(&n.url) == leader)
        .expect("the leader is one of the nodes")
}

const DOUBLE: &str = "import json\n\ndef handle(ctx, seq, payload):\n    ctx.append('out', json.dumps(2 * json.loads(payload)))\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_handler_doubles_500_numbers_once_across_a_kill_of_its_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(dir.path(), 3);
    let url0 = nodes[0].url.clone();
    let mut c = connect(&url0).await;
    create_replicated(&mut c, "in", 3, "").await;
    create_replicated(&mut c, "out", 3, "").await;

    // Source that cannot load is refused at deploy, with where and why.
    let (ok, said) = deploy(
        dir.path(),
        &url0,
        "in",
        "double",
        "import json\n\ndef handle(ctx, seq, payload)\n    pass\n",
    );
    assert!(!ok && said.contains("line 3"), "{said}");
    let (ok, said) = deploy(dir.path(), &url0, "in", "double", "import os\n");
    assert!(!ok && said.contains("not allowed"), "{said}");
    let (ok, said) = deploy(dir.path(), &url0, "in", "double", "x = 1\n");
    assert!(!ok && said.contains("handle"), "{said}");

    let (ok, said) = deploy(dir.path(), &url0, "in", "double", DOUBLE);
    assert!(ok, "{said}");
    assert!(said.contains("deployed handler in/double python"), "{said}");

    // Half the numbers, then the node that runs the handler (the topic's
    // leader, so both at once) is killed; the rest go through another node.
    let victim = leader_index(&mut c, &nodes, "in").await;
    let mut c = connect(&nodes[(victim + 1) % 3].url.clone()).await;
    for i in 1..=250u64 {
        append_retrying(&mut c, "in", "test", i, &i.to_string()).await;
    }
    nodes[victim].kill_hard();
    for i in 251..=500u64 {
        append_retrying(&mut c, "in", "test", i, &i.to_string()).await;
    }
    let got = settle(&mut c, "out", 500).await;
    let want: Vec<String> = (1..=500u64).map(|i| (2 * i).to_string()).collect();
    assert_eq!(got.len(), 500, "exactly 500 outputs");
    assert_eq!(got, want, "every number doubled once, in order");
}

/// 100 outputs per element, and the handler's node killed while it is in
/// the middle of them: each output is written once. The 120 elements come
/// in one batch, so the runner appends their 12,000 outputs in entries of
/// 1,024, whose edges fall inside elements; the kill comes after some
/// entries and before the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_killed_in_the_middle_of_its_100_outputs_writes_each_once() {
    const ELEMENTS: u64 = 120;
    const PER: u64 = 100;
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(dir.path(), 3);
    let url0 = nodes[0].url.clone();
    let mut c = connect(&url0).await;
    create_replicated(&mut c, "in", 3, "").await;
    create_replicated(&mut c, "out", 3, "").await;
    let fan = "def handle(ctx, seq, payload):\n    for i in range(100):\n        ctx.append('out', f'{seq}.{i}')\n";
    let (ok, said) = deploy(dir.path(), &url0, "in", "fan", fan);
    assert!(ok, "{said}");

    let victim = leader_index(&mut c, &nodes, "in").await;
    let mut c = connect(&nodes[(victim + 1) % 3].url.clone()).await;
    c.append_batch(v1::AppendBatchRequest {
        topic: "in".into(),
        payloads: (0..ELEMENTS).map(|_| "x".into()).collect(),
        producer: None,
        handler: String::new(),
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let written = latest(&mut c, "out").await.last_seq;
        if written >= 2 * 1024 {
            break;
        }
        assert!(Instant::now() < deadline, "outputs are written ({written})");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    nodes[victim].kill_hard();
    let written_at_kill = last_seq_surely(&mut c, "out").await;
    assert!(
        written_at_kill < ELEMENTS * PER,
        "killed before the last outputs ({written_at_kill} written)"
    );

    let got = settle(&mut c, "out", ELEMENTS * PER).await;
    let want: Vec<String> = (1..=ELEMENTS)
        .flat_map(|seq| (0..PER).map(move |i| format!("{seq}.{i}")))
        .collect();
    assert_eq!(
        got.len() as u64,
        ELEMENTS * PER,
        "every output once (killed at {written_at_kill})"
    );
    assert_eq!(got, want, "every output once, in order");
}

/// `woof handler logs` shows each invocation with what it logged and how
/// it ended; a handler that raises, and one that never returns, are each
/// parked with their error while another handler on the same node keeps
/// running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_show_each_invocation_and_hostile_handlers_park_alone() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_cluster(dir.path(), 1);
    let url = nodes[0].url.clone();
    let mut c = connect(&url).await;
    for topic in ["a", "b", "c", "out"] {
        create_replicated(&mut c, topic, 1, "").await;
    }
    let noisy = "def handle(ctx, seq, payload):\n    print('got', payload.decode())\n    if payload == b'bad':\n        raise ValueError('bad reading')\n    ctx.append('out', payload)\n";
    assert!(deploy(dir.path(), &url, "a", "noisy", noisy).0);
    let spin = "def handle(ctx, seq, payload):\n    while True:\n        pass\n";
    let file = dir.path().join("spin.py");
    std::fs::write(&file, spin).unwrap();
    let (ok, said) = cli(&[
        "--server",
        &url,
        "handler",
        "deploy",
        "b",
        "spin",
        "--python",
        file.to_str().unwrap(),
        "--time-budget-ms",
        "300",
    ]);
    assert!(ok && said.contains("time_budget=300ms"), "{said}");
    let (ok, said) = cli(&[
        "--server",
        &url,
        "handler",
        "deploy",
        "b",
        "hog",
        "--python",
        file.to_str().unwrap(),
        "--memory-mib",
        "5000",
    ]);
    assert!(!ok && said.contains("at most 1024"), "{said}");
    assert!(deploy(dir.path(), &url, "c", "good", DOUBLE).0);

    for (i, p) in ["1", "2", "bad"].iter().enumerate() {
        append_retrying(&mut c, "a", "t", i as u64 + 1, p).await;
    }
    append_retrying(&mut c, "b", "t", 1, "x").await;
    // While `spin` overruns, `good` keeps up with one element every 20 ms.
    let started = Instant::now();
    for i in 1..=100u64 {
        append_retrying(&mut c, "c", "t", i, &i.to_string()).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let doubled = settle(&mut c, "out", 102).await;
    let kept_up = started.elapsed();
    assert_eq!(doubled.len(), 102, "{doubled:?}");

    let describe = |topic: &str, name: &str| -> serde_json::Value {
        let (ok, out) = cli(&[
            "--server", &url, "--json", "handler", "describe", topic, name,
        ]);
        assert!(ok, "{out}");
        let mut lines = out.lines();
        let mut h: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
        let counts: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
        h["counts"] = counts;
        h
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let (noisy, spin) = loop {
        let (n, s) = (describe("a", "noisy"), describe("b", "spin"));
        if n["parked_at"] != 0 && s["parked_at"] != 0 {
            break (n, s);
        }
        assert!(Instant::now() < deadline, "both parked: {n} {s}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(noisy["parked_at"], 3, "{noisy}");
    assert!(
        noisy["parked_error"]
            .as_str()
            .unwrap()
            .contains("ValueError: bad reading")
    );
    assert_eq!(
        noisy["counts"]["runs"], 7,
        "2 ok, 5 attempts at `bad`: {noisy}"
    );
    assert_eq!(noisy["counts"]["errors"], 5, "{noisy}");
    assert!(
        spin["parked_error"]
            .as_str()
            .unwrap()
            .contains("time budget of 300 ms"),
        "{spin}"
    );
    assert_eq!(spin["counts"]["timeouts"], 5, "{spin}");
    // The other handler was not held up by the one spinning.
    let good = describe("c", "good");
    assert_eq!(good["done"], 100, "{good}");
    assert!(
        kept_up < Duration::from_secs(8),
        "100 elements at 50/s took {kept_up:?} to be doubled"
    );

    let (ok, logs) = cli(&["--server", &url, "handler", "logs", "a", "noisy"]);
    assert!(ok, "{logs}");
    assert!(
        logs.contains("seq=1") && logs.contains("    | got 1"),
        "{logs}"
    );
    assert!(logs.contains("seq=3") && logs.contains("error"), "{logs}");
    assert!(logs.contains("ValueError: bad reading"), "{logs}");
    let (ok, json) = cli(&["--server", &url, "--json", "handler", "logs", "b", "spin"]);
    assert!(ok, "{json}");
    let outcomes: Vec<String> = json
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["outcome"].to_string())
        .collect();
    assert_eq!(outcomes.len(), 5, "{json}");
    assert!(outcomes.iter().all(|o| o == "\"timeout\""), "{json}");
    let (ok, said) = cli(&["--server", &url, "handler", "logs", "a", "nope"]);
    assert!(!ok && said.contains("no handler"), "{said}");
}
