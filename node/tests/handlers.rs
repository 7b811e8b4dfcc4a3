//! Handlers on a cluster of real `woof` processes on loopback: a native
//! handler bound to a topic runs once for every committed element, in
//! order, across a SIGKILL of the node that runs it; bad deploys are
//! refused with their reason.

mod common;

use std::time::{Duration, Instant};

use common::*;
use woof_proto::v1;

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

/// A chain of three handlers (Python, then two native ones) across the
/// nodes: `woof trace` of the alert at its end shows every step back to
/// the element a client appended, with the handler and node of each, and
/// the trace of that element shows the same chain as its effects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_follows_a_chain_of_three_handlers_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_cluster(dir.path(), 3);
    let url = nodes[0].url.clone();
    let mut c = connect(&url).await;
    for topic in ["in", "mid", "mid2", "alerts"] {
        create_replicated(&mut c, topic, 3, "").await;
    }
    let double = dir.path().join("double.py");
    std::fs::write(
        &double,
        "import json\n\ndef handle(ctx, seq, payload):\n    \
         ctx.append('mid', json.dumps({'v': 2 * int(payload)}))\n",
    )
    .unwrap();
    let double = double.to_string_lossy().into_owned();
    cli_ok(&[
        "--server", &url, "handler", "deploy", "in", "double", "--python", &double,
    ]);
    // The second runs anywhere but on its topic's leader.
    cli_ok(&[
        "--server",
        &url,
        "handler",
        "deploy",
        "mid",
        "copy",
        "--native",
        "forward",
        "--config",
        r#"{"to":"mid2"}"#,
        "--placement",
        "~leader()",
    ]);
    cli_ok(&[
        "--server",
        &url,
        "handler",
        "deploy",
        "mid2",
        "alarm",
        "--native",
        "threshold",
        "--config",
        r#"{"to":"alerts","field":"v","above":10}"#,
    ]);
    for i in 1..=8u64 {
        append_surely(&mut c, "in", i, i.to_string()).await;
    }
    // 2, 4, ... 16: the alarm goes off once, at 12 (element 6).
    let deadline = Instant::now() + Duration::from_secs(60);
    while latest(&mut c, "alerts").await.last_seq < 1 || latest(&mut c, "mid2").await.last_seq < 8 {
        assert!(Instant::now() < deadline, "the chain produced its alert");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mid_leader = describe(&mut c, "mid").await.leader;
    let peers: Vec<String> = nodes.iter().map(|n| peer_id(&n.url)).collect();

    // Upstream from the alert: three steps, each with its handler and node.
    let traced = cli_ok(&["--server", &url, "--json", "trace", "alerts", "1"]);
    let t: serde_json::Value = serde_json::from_str(traced.trim()).unwrap();
    let cause = &t["element"]["cause"];
    assert_eq!(
        (
            cause["topic"].as_str(),
            cause["seq"].as_u64(),
            cause["handler"].as_str()
        ),
        (Some("mid2"), Some(6), Some("alarm")),
        "{t}"
    );
    let up = t["upstream"].as_array().unwrap();
    let chain: Vec<(String, u64, String)> = up
        .iter()
        .map(|s| {
            (
                s["topic"].as_str().unwrap().to_string(),
                s["seq"].as_u64().unwrap(),
                s["cause"]["handler"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        chain,
        vec![
            ("mid2".to_string(), 6, "copy".to_string()),
            ("mid".to_string(), 6, "double".to_string()),
            ("in".to_string(), 6, String::new()),
        ],
        "{t}"
    );
    assert!(up[2]["cause"].is_null(), "a client appended in/6: {t}");
    assert_eq!(up[2]["payload"], "6");
    for step in [&t["element"], &up[0], &up[1]] {
        let node = step["cause"]["node"].as_str().unwrap();
        assert!(peers.iter().any(|p| p == node), "{node} is a node: {t}");
        assert!(step["cause"]["time_ms"].as_u64().unwrap() > 0);
    }
    assert_ne!(
        up[0]["cause"]["node"].as_str().unwrap(),
        mid_leader,
        "copy ran off mid's leader: {t}"
    );

    // Downstream from the reading: the same chain, each under its cause.
    let traced = cli_ok(&["--server", &url, "--json", "trace", "in", "6"]);
    let t: serde_json::Value = serde_json::from_str(traced.trim()).unwrap();
    let down = t["downstream"].as_array().unwrap();
    let tree: Vec<(String, u64, i64, u64)> = down
        .iter()
        .map(|s| {
            (
                s["topic"].as_str().unwrap().to_string(),
                s["seq"].as_u64().unwrap(),
                s["parent"].as_i64().unwrap(),
                s["depth"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        tree,
        vec![
            ("mid".to_string(), 6, -1, 1),
            ("mid2".to_string(), 6, 0, 2),
            ("alerts".to_string(), 1, 1, 3),
        ],
        "{t}"
    );
    assert!(t["upstream"].as_array().unwrap().is_empty());
    // An element that set off no alert: two effects.
    let traced = cli_ok(&["--server", &url, "--json", "trace", "in", "2"]);
    let t: serde_json::Value = serde_json::from_str(traced.trim()).unwrap();
    assert_eq!(t["downstream"].as_array().unwrap().len(), 2, "{t}");

    // The text form reads as a chain.
    let text = cli_ok(&["--server", &url, "trace", "alerts", "1"]);
    assert!(
        text.contains("made by handler alarm from mid2/6")
            && text.contains("made by handler copy from mid/6")
            && text.contains("made by handler double from in/6")
            && text.contains("appended by a client"),
        "{text}"
    );
    // Bad input is an error, not a crash.
    assert!(cli_refused(&["--server", &url, "trace", "alerts", "99"]).contains("99"));
    assert!(cli_refused(&["--server", &url, "trace", "nope", "1"]).contains("nope"));
}

/// A handler deployed on demand runs only for the elements whose append
/// names it, as CSPOT's put does; an append naming any other handler is
/// refused and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_demand_handler_runs_only_for_appends_that_name_it() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_cluster(dir.path(), 3);
    let url = nodes[0].url.clone();
    let mut c = connect(&url).await;
    create_replicated(&mut c, "in", 3, "").await;
    create_replicated(&mut c, "picked", 3, "").await;
    create_replicated(&mut c, "all", 3, "").await;
    let deploy = |name: &str, to: &str, extra: &[&str]| {
        let config = format!(r#"{{"to":"{to}"}}"#);
        let mut args = vec![
            "--server", &url, "handler", "deploy", "in", name, "--native", "forward", "--config",
            &config,
        ];
        args.extend_from_slice(extra);
        cli_ok(&args)
    };
    let said = deploy("pick", "picked", &["--on-demand"]);
    assert!(said.contains("on_demand"), "{said}");
    deploy("every", "all", &[]);

    let append = |data: &str, handler: Option<&str>| {
        let mut args = vec!["--server", &url, "append", "in", data];
        if let Some(h) = handler {
            args.extend_from_slice(&["--handler", h]);
        }
        woof(&args)
    };
    for (data, handler) in [
        ("a", None),
        ("b", Some("pick")),
        ("c", None),
        ("d", Some("pick")),
        ("e", None),
    ] {
        let out = append(data, handler);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Refused, and nothing written.
    let unknown = append("x", Some("nope"));
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no handler \"nope\""));
    let every = append("y", Some("every"));
    assert!(!every.status.success());
    assert!(String::from_utf8_lossy(&every.stderr).contains("every element already"));
    assert_eq!(latest(&mut c, "in").await.last_seq, 5);
    // A batch may name it too: it runs for each of the batch's elements.
    c.append_batch(v1::AppendBatchRequest {
        topic: "in".into(),
        payloads: vec!["f".into(), "g".into()],
        producer: None,
        handler: "pick".into(),
    })
    .await
    .unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    while latest(&mut c, "all").await.last_seq < 7 {
        assert!(Instant::now() < deadline, "every element forwarded to all");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The on-demand handler has passed every element by now too.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = cli_ok(&["--server", &url, "--json", "handler", "list", "in"]);
        let done: Vec<u64> = listed
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["done"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        if done == [7, 7] {
            break;
        }
        assert!(Instant::now() < deadline, "both handlers done: {listed}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let picked: Vec<String> = scan_all(&mut c, "picked", 1)
        .await
        .iter()
        .map(|e| String::from_utf8(e.payload.to_vec()).unwrap())
        .collect();
    assert_eq!(picked, ["b", "d", "f", "g"]);
    assert_eq!(scan_all(&mut c, "all", 1).await.len(), 7);
}
