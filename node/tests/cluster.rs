//! Nodes forming a cluster: real `woof` processes on loopback, joined
//! through the overlay with a cluster key, seen through `woof cluster status`.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn three_nodes_join_and_agree_on_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("cluster.key");
    let out = woof(&["cluster", "keygen"]);
    assert!(out.status.success());
    std::fs::write(&key, &out.stdout).unwrap();

    let a = start_node(&dir.path().join("a"), &key, &["--tier", "cloud"]);
    let join = overlay_addr(&a.url);
    let b = start_node(
        &dir.path().join("b"),
        &key,
        &["--tier", "edge", "--attr", "site=north", "--join", &join],
    );
    let c = start_node(
        &dir.path().join("c"),
        &key,
        &["--tier", "edge", "--join", &join],
    );

    let deadline = Instant::now() + Duration::from_secs(20);
    for node in [&a, &b, &c] {
        loop {
            let nodes = status(&node.url);
            let alive = nodes.iter().filter(|n| n["state"] == "alive").count();
            if alive == 3 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not 3 alive within 20 s: {nodes:#?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // Every node reports the same three peer ids, tiers and attributes.
    let view = |url: &str| {
        let mut v: Vec<(String, String, String)> = status(url)
            .iter()
            .map(|n| {
                (
                    n["peer_id"].as_str().unwrap().to_string(),
                    n["tier"].as_str().unwrap().to_string(),
                    n["attrs"].to_string(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let from_a = view(&a.url);
    assert_eq!(from_a, view(&b.url));
    assert_eq!(from_a, view(&c.url));
    assert!(
        from_a
            .iter()
            .any(|(_, tier, attrs)| tier == "edge" && attrs.contains("north"))
    );
    assert_eq!(
        from_a.iter().filter(|(_, tier, _)| tier == "cloud").count(),
        1
    );

    // The text form names every node.
    let text = woof(&["--server", &a.url, "cluster", "status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    for (peer, _, _) in &from_a {
        assert!(text.contains(peer.as_str()), "{text}");
    }

    // A node with another key cannot join: it exits with one clear line, and
    // the cluster never sees it.
    let other_key = dir.path().join("other.key");
    std::fs::write(&other_key, woof(&["cluster", "keygen"]).stdout).unwrap();
    let intruder = dir.path().join("intruder");
    let out = woof(&[
        "node",
        "start",
        "--data-dir",
        intruder.to_str().unwrap(),
        "--grpc-listen",
        "127.0.0.1:0",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--cluster-key",
        other_key.to_str().unwrap(),
        "--join",
        &join,
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: could not join the cluster"),
        "{stderr}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(status(&a.url).len(), 3);
}

#[test]
fn bad_cluster_settings_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let data = data.to_str().unwrap();
    let key = dir.path().join("cluster.key");
    std::fs::write(&key, woof(&["cluster", "keygen"]).stdout).unwrap();
    let key = key.to_str().unwrap();
    let garbage = dir.path().join("garbage.key");
    std::fs::write(&garbage, "not a key").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let silent = format!("/ip4/127.0.0.1/tcp/{port}");
    let base = [
        "node",
        "start",
        "--data-dir",
        data,
        "--grpc-listen",
        "127.0.0.1:0",
    ];
    let listen = ["--listen", "/ip4/127.0.0.1/tcp/0"];
    for (extra, expect) in [
        (vec![listen[0], listen[1]], "needs the cluster key"),
        (
            vec![
                listen[0],
                listen[1],
                "--cluster-key",
                garbage.to_str().unwrap(),
            ],
            "bad cluster key",
        ),
        (
            vec![
                listen[0],
                listen[1],
                "--cluster-key",
                key,
                "--join",
                &silent,
            ],
            "could not join",
        ),
        (
            vec![
                listen[0],
                listen[1],
                "--cluster-key",
                key,
                "--join",
                "127.0.0.1:7800",
            ],
            "not a multiaddr",
        ),
        (
            vec![listen[0], listen[1], "--cluster-key", key, "--tier", "fog"],
            "tier",
        ),
        (vec!["--join", &silent], "need --listen"),
    ] {
        let mut args = base.to_vec();
        args.extend(extra.iter().copied());
        let out = woof(&args);
        assert!(!out.status.success(), "{args:?} started");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("error: ") && last.contains(expect),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn cluster_up_and_down_run_a_local_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let cluster_dir = dir.path().join("c");
    let cluster_dir = cluster_dir.to_str().unwrap();
    // A free block of ports: probe the gRPC and overlay ports of 3 nodes.
    let base = loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        if port < 60_000
            && (0..3).all(|i| {
                std::net::TcpListener::bind(("127.0.0.1", port + i)).is_ok()
                    && std::net::TcpListener::bind(("127.0.0.1", port + 100 + i)).is_ok()
            })
        {
            break port;
        }
    };
    let up = woof(&[
        "cluster",
        "up",
        "--nodes",
        "3",
        "--tiers",
        "edge:1,cloud:2",
        "--dir",
        cluster_dir,
        "--base-port",
        &base.to_string(),
    ]);
    let stdout = String::from_utf8_lossy(&up.stdout).into_owned();
    assert!(
        up.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert!(stdout.contains("cluster up: 3 nodes"), "{stdout}");
    let url = format!("http://127.0.0.1:{base}");
    let nodes = status(&url);
    assert_eq!(nodes.iter().filter(|n| n["state"] == "alive").count(), 3);
    assert_eq!(nodes.iter().filter(|n| n["tier"] == "cloud").count(), 2);
    // A second `up` on the same directory refuses.
    let again = woof(&[
        "cluster",
        "up",
        "--dir",
        cluster_dir,
        "--base-port",
        &base.to_string(),
    ]);
    assert!(!again.status.success());

    let down = woof(&["cluster", "down", "--dir", cluster_dir]);
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    let gone = woof(&["--server", &url, "cluster", "status"]);
    assert!(!gone.status.success(), "the nodes are stopped");
    assert!(
        !woof(&["cluster", "down", "--dir", cluster_dir])
            .status
            .success()
    );
}
