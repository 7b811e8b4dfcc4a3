//! Handlers on a cluster of real `woof` processes on loopback: a native
//! handler bound to a topic runs once for every committed element, in
//! order, across a SIGKILL of the node that runs it; bad deploys are
//! refused with their reason.

mod common;

use std::time::{Duration, Instant};

use common::*;

async fn append_surely(client: &mut Client, topic: &str, seq: u64, payload: String) {
    append_retrying(client, topic, "test", seq, &payload).await;
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn cli_ok(args: &[&str]) -> String {
    let out = woof(args);
    assert!(
        out.status.success(),
        "woof {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cli_refused(args: &[&str]) -> String {
    let out = woof(args);
    assert!(!out.status.success(), "woof {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_handler_forwards_every_element_once_across_a_kill_of_its_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(dir.path(), 3);
    let url0 = nodes[0].url.clone();
    let mut c = connect(&url0).await;
    create_replicated(&mut c, "in", 3, "").await;
    create_replicated(&mut c, "out", 3, "").await;

    // Bad deploys say why.
    let deploy = |name: &str, extra: &[&str]| {
        let mut args = vec!["--server", &url0, "handler", "deploy", "in", name];
        args.extend_from_slice(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let bad = deploy("fwd", &["--native", "nope"]);
    assert!(cli_refused(&strs(&bad)).contains("no native handler \"nope\""));
    let bad = deploy("fwd", &["--native", "forward"]);
    assert!(cli_refused(&strs(&bad)).contains("\"to\""));
    let bad = deploy(
        "fwd",
        &[
            "--native",
            "forward",
            "--config",
            r#"{"to":"out"}"#,
            "--placement",
            "tier(device)",
        ],
    );
    assert!(cli_refused(&strs(&bad)).contains("no live node matches"));
    let bad = deploy(
        "Bad Name",
        &["--native", "forward", "--config", r#"{"to":"out"}"#],
    );
    assert!(cli_refused(&strs(&bad)).contains("handler name"));

    let good = deploy(
        "fwd",
        &["--native", "forward", "--config", r#"{"to":"out"}"#],
    );
    let said = cli_ok(&strs(&good));
    assert!(
        said.contains("deployed handler in/fwd native:forward"),
        "{said}"
    );
    assert!(cli_refused(&strs(&good)).contains("already bound"));

    // Half the elements, then the node that runs the handler (the topic's
    // leader) is killed; the rest go through another node.
    let leader = describe(&mut c, "in").await.leader;
    let victim = nodes
        .iter()
        .position(|n| peer_id(&n.url) == leader)
        .expect("the leader is one of the nodes");
    let survivor = nodes[(victim + 1) % 3].url.clone();
    let mut c = connect(&survivor).await;
    for i in 1..=250u64 {
        append_surely(&mut c, "in", i, format!("e{i}")).await;
    }
    nodes[victim].kill_hard();
    for i in 251..=500u64 {
        append_surely(&mut c, "in", i, format!("e{i}")).await;
    }

    // Every element forwarded, once, in order.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let last = latest(&mut c, "out").await.last_seq;
        if last >= 500 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Longer than a runner needs to write anything it still would.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let out = scan_all(&mut c, "out", 1).await;
    let got: Vec<String> = out
        .iter()
        .map(|e| String::from_utf8(e.payload.to_vec()).unwrap())
        .collect();
    let want: Vec<String> = (1..=500).map(|i| format!("e{i}")).collect();
    assert_eq!(got.len(), 500, "outputs: {:?}...", &got[..got.len().min(5)]);
    assert_eq!(got, want, "every element once, in order");

    // Its progress is the group's: the list shows it done, from any node.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = cli_ok(&["--server", &survivor, "--json", "handler", "list", "in"]);
        let h: serde_json::Value = serde_json::from_str(listed.trim()).unwrap();
        if h["done"] == 500 {
            assert_eq!(h["lag"], 0);
            // It moved with the leadership, off the killed node.
            let runs_on = h["runs_on"].as_str().unwrap();
            assert!(
                !runs_on.is_empty() && runs_on != leader,
                "runs on {runs_on}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "progress recorded: {h}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let removed = cli_ok(&["--server", &survivor, "handler", "rm", "in", "fwd"]);
    assert!(removed.contains("removed handler in/fwd"));
    let listed = cli_ok(&["--server", &survivor, "handler", "list", "in"]);
    assert!(listed.trim().is_empty(), "{listed}");
}

/// A handler whose output is refused (its target topic does not exist) is
/// parked, with why, on the element it failed on; resumed once the topic
/// exists, it goes on from there and every element is forwarded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_handler_is_parked_with_its_reason_and_resumes_where_it_failed() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_cluster(dir.path(), 1);
    let url = nodes[0].url.clone();
    let mut c = connect(&url).await;
    create_replicated(&mut c, "src", 1, "").await;
    for i in 1..=5u64 {
        append_surely(&mut c, "src", i, format!("e{i}")).await;
    }
    cli_ok(&[
        "--server",
        &url,
        "handler",
        "deploy",
        "src",
        "fwd",
        "--native",
        "forward",
        "--config",
        r#"{"to":"missing"}"#,
        "--from",
        "earliest",
    ]);
    let listed = |url: &str| -> serde_json::Value {
        let out = cli_ok(&[
            "--server", url, "--json", "handler", "describe", "src", "fwd",
        ]);
        // The handler, then its counts on the node that runs it.
        serde_json::from_str(out.lines().next().unwrap()).unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let parked = loop {
        let h = listed(&url);
        if h["parked_at"] != 0 {
            break h;
        }
        assert!(Instant::now() < deadline, "parked within 20 s: {h}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(parked["parked_at"], 1, "{parked}");
    assert!(
        parked["parked_error"].as_str().unwrap().contains("missing"),
        "{parked}"
    );
    assert_eq!(parked["done"], 0);
    assert_eq!(parked["runs_on"], "", "a parked handler runs nowhere");
    let text = cli_ok(&["--server", &url, "handler", "list", "src"]);
    assert!(text.contains("PARKED at #1"), "{text}");

    // Parked means parked: more appends, nothing runs.
    append_surely(&mut c, "src", 6, "e6".into()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(listed(&url)["done"], 0);

    create_replicated(&mut c, "missing", 1, "").await;
    let resumed = cli_ok(&["--server", &url, "handler", "resume", "src", "fwd"]);
    assert!(resumed.contains("resumed handler src/fwd"), "{resumed}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while listed(&url)["done"] != 6 {
        assert!(Instant::now() < deadline, "caught up after the resume");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = scan_all(&mut c, "missing", 1).await;
    let got: Vec<String> = out
        .iter()
        .map(|e| String::from_utf8(e.payload.to_vec()).unwrap())
        .collect();
    assert_eq!(got, (1..=6).map(|i| format!("e{i}")).collect::<Vec<_>>());
}
