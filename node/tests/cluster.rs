//! Nodes forming a cluster: real `woof` processes on loopback, joined
//! through the overlay with a cluster key, seen through `woof cluster status`.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn nodes_started_together_form_a_cluster_whichever_comes_up_first() {
    // As systemd or a scheduler starts them: two nodes join a first one
    // that comes up 2 s after them.
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let first = format!("/ip4/127.0.0.1/tcp/{}", free_tcp_port());
    let joining: Vec<_> = ["b", "c"]
        .into_iter()
        .map(|name| {
            let (data, key, first) = (dir.path().join(name), key.clone(), first.clone());
            std::thread::spawn(move || start_node(&data, &key, &["--join", &first]))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let a = NodeProcess::start(&[
        "--data-dir",
        dir.path().join("a").to_str().unwrap(),
        "--grpc-listen",
        "127.0.0.1:0",
        "--listen",
        &first,
        "--cluster-key",
        key.to_str().unwrap(),
    ]);
    let joined: Vec<NodeProcess> = joining.into_iter().map(|t| t.join().unwrap()).collect();
    let urls = [
        a.url.as_str(),
        joined[0].url.as_str(),
        joined[1].url.as_str(),
    ];
    wait_alive(&urls, 3);
    // The joining nodes said whom they waited for.
    let log = std::fs::read_to_string(&joined[0].log).unwrap();
    assert!(
        log.contains(&format!("waiting for a node of the cluster at {first}")),
        "{log}"
    );
    // A topic on all three works, written through a joined node.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = connect(&joined[1].url).await;
        create_replicated(&mut client, "started/together", 3, "").await;
        assert_eq!(append(&mut client, "started/together", "one").await, 1);
        let info = describe(&mut connect(&a.url).await, "started/together").await;
        assert_eq!(info.replicas.len(), 3, "{info:?}");
        let got = get(&mut connect(&a.url).await, "started/together", 1)
            .await
            .unwrap();
        assert_eq!(&got.payload[..], b"one");
    });
}

#[test]
fn a_restarted_node_rejoins_through_the_nodes_it_knew() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(dir.path(), 3);
    let key = dir.path().join("cluster.key");
    let data = dir.path().join("n2");
    let peer = peer_id(&nodes[2].url);
    // It keeps the others' addresses in its data directory (every 2 s).
    let known = data.join("peers");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&known).map_or(0, |t| t.matches("/p2p/").count()) < 2 {
        assert!(
            Instant::now() < deadline,
            "no known peers saved in {known:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    nodes[2].kill_hard();
    // Started again without --join, on another port.
    let again = start_node(&data, &key, &[]);
    assert_eq!(peer_id(&again.url), peer);
    wait_alive(&[nodes[0].url.as_str(), again.url.as_str()], 3);
    let seen = status(&nodes[0].url);
    assert!(
        seen.iter()
            .any(|n| n["peer_id"] == peer.as_str() && n["state"] == "alive"),
        "{seen:#?}"
    );
    let log = std::fs::read_to_string(&again.log).unwrap();
    assert!(
        !log.contains("name directory made"),
        "it made a directory of its own: {log}"
    );
    // It serves a replicated topic, and the cluster's names are its names.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = connect(&again.url).await;
        create_replicated(&mut client, "rejoined/topic", 3, "").await;
        assert_eq!(append(&mut client, "rejoined/topic", "back").await, 1);
        let got = get(&mut connect(&nodes[0].url).await, "rejoined/topic", 1)
            .await
            .unwrap();
        assert_eq!(&got.payload[..], b"back");
        let err = connect(&nodes[1].url)
            .await
            .create_topic(woof_proto::v1::CreateTopicRequest {
                name: "rejoined/topic".into(),
                replication: 3,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err}");
    });
}

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
                "--join-timeout",
                "1s",
            ],
            "could not join the cluster: no node of this cluster answered within 1 s",
        ),
        (
            vec![
                listen[0],
                listen[1],
                "--cluster-key",
                key,
                "--join",
                &silent,
                "--join-timeout",
                "soon",
            ],
            "join timeout",
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
        let started = Instant::now();
        let out = woof(&args);
        assert!(!out.status.success(), "{args:?} started");
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{args:?} took {:?} to fail",
            started.elapsed()
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("error: ") && last.contains(expect),
            "{args:?}: {stderr}"
        );
    }
}

/// A base port for `cluster up` whose gRPC, dashboard and overlay ports
/// for `nodes` nodes are free.
fn free_base_port(nodes: u16) -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        if port < 60_000
            && (0..nodes).all(|i| {
                [0, 50, 100].iter().all(|offset| {
                    std::net::TcpListener::bind(("127.0.0.1", port + offset + i)).is_ok()
                })
            })
        {
            return port;
        }
    }
}

#[test]
fn cluster_up_and_down_run_a_local_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let cluster_dir = dir.path().join("c");
    let cluster_dir = cluster_dir.to_str().unwrap();
    let base = free_base_port(3);
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
    let dashboard = format!("http://127.0.0.1:{}/", base + 50);
    assert!(
        stdout.contains(&format!("watch it at:   {dashboard}")),
        "{stdout}"
    );
    let page = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(common::http::get(
            format!("127.0.0.1:{}", base + 50).parse().unwrap(),
            "/",
        ))
        .unwrap();
    assert!(
        page.status == 200 && page.body.contains("woof dashboard"),
        "{page:?}"
    );
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

/// `cluster up --secure`: the nodes serve TLS and require tokens; what it
/// prints (the CA, the admin token) is all a client needs, the dashboard
/// is HTTPS and takes the token, and nothing works without them.
#[test]
fn cluster_up_secure_serves_tls_and_requires_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let cluster_dir = dir.path().join("c");
    let base = free_base_port(3);
    let base_port = base.to_string();
    let up_secure = || {
        woof(&[
            "cluster",
            "up",
            "--secure",
            "--dir",
            cluster_dir.to_str().unwrap(),
            "--base-port",
            &base_port,
        ])
    };
    let up = up_secure();
    let stdout = String::from_utf8_lossy(&up.stdout).into_owned();
    let down = || woof(&["cluster", "down", "--dir", cluster_dir.to_str().unwrap()]);
    if !up.status.success() {
        down();
        panic!("{stdout}{}", String::from_utf8_lossy(&up.stderr));
    }
    let url = format!("https://127.0.0.1:{base}");
    let ca = cluster_dir.join("pki/ca.pem");
    let token = std::fs::read_to_string(cluster_dir.join("admin.token")).unwrap();
    let token = token.trim();
    assert!(
        stdout.contains(&format!("export WOOF_SERVER={url}")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("export WOOF_CA={}", ca.display())),
        "{stdout}"
    );
    let dashboard = format!("https://127.0.0.1:{}/#token={token}", base + 50);
    assert!(stdout.contains(&dashboard), "{stdout}");

    let run = |args: &[&str], with_token: bool| {
        let mut command = std::process::Command::new(common::woof_bin());
        command
            .args(args)
            .env("WOOF_SERVER", &url)
            .env("WOOF_CA", &ca)
            .env_remove("WOOF_TOKEN");
        if with_token {
            command.env("WOOF_TOKEN", token);
        }
        let out = command.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, _, err) = run(&["topic", "create", "lab/secure"], false);
    assert!(!ok && err.contains("UNAUTHENTICATED"), "{err}");
    let (ok, _, err) = run(&["topic", "create", "lab/secure"], true);
    assert!(ok, "{err}");
    let (ok, out, err) = run(&["append", "lab/secure", "hello"], true);
    assert!(ok && out == "1", "{out} {err}");
    let (ok, out, err) = run(&["get", "lab/secure", "1"], true);
    assert!(ok && out == "hello", "{out} {err}");
    let (ok, out, err) = run(&["cluster", "status"], true);
    assert!(ok && out.matches("alive").count() >= 3, "{out} {err}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let http: std::net::SocketAddr = format!("127.0.0.1:{}", base + 50).parse().unwrap();
    let with = rt
        .block_on(common::http::https_get(
            http,
            &ca,
            &format!("/api/view?token={token}"),
        ))
        .unwrap();
    assert_eq!(with.status, 200, "{with:?}");
    assert!(with.body.contains("lab/secure"), "{}", with.body);
    let without = rt
        .block_on(common::http::https_get(http, &ca, "/api/view"))
        .unwrap();
    assert_eq!(without.status, 401, "{without:?}");

    assert!(down().status.success());
    // Up again on the same directory: the same root key, so a token made
    // from it before still works.
    let again = up_secure();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert!(
            again.status.success(),
            "{}",
            String::from_utf8_lossy(&again.stderr)
        );
        let (ok, out, err) = run(&["get", "lab/secure", "1"], true);
        assert!(ok && out == "hello", "{out} {err}");
    }));
    assert!(down().status.success());
    result.unwrap();
}

/// Where a topic lives is a DHT record, kept only in the memory of the
/// nodes nearest its key: once every node has restarted nobody holds it,
/// and a topic whose leader has not published it since (a sleeping one
/// never does) was lost to every node without a replica (the simulator
/// found it: seed 12 of the long sweep). Such a node now asks the name
/// directory, then the copies, and publishes the answer again.
#[test]
fn a_topic_is_found_after_every_node_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let listen: Vec<String> = (0..3)
        .map(|_| format!("/ip4/127.0.0.1/tcp/{}", free_tcp_port()))
        .collect();
    let start = |i: usize| {
        let data = dir.path().join(format!("n{i}"));
        let mut args = vec![
            "--data-dir",
            data.to_str().unwrap(),
            "--grpc-listen",
            "127.0.0.1:0",
            "--listen",
            &listen[i],
            "--cluster-key",
            key.to_str().unwrap(),
            "--attr",
        ];
        let site = format!("site=n{i}");
        args.push(site.as_str());
        if i > 0 {
            args.extend(["--join", listen[0].as_str()]);
        }
        NodeProcess::start(&args)
    };
    let mut nodes: Vec<NodeProcess> = (0..3).map(start).collect();
    let urls: Vec<&str> = nodes.iter().map(|n| n.url.as_str()).collect();
    wait_alive(&urls, 3);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = connect(&nodes[0].url).await;
        // Members' attributes come with their first heartbeats.
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Err(e) = client
            .create_topic(woof_proto::v1::CreateTopicRequest {
                name: "found/again".into(),
                replication: 1,
                replicas: "site=n2".into(),
                ..Default::default()
            })
            .await
        {
            assert!(Instant::now() < deadline, "creating found/again: {e}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(append(&mut client, "found/again", "kept").await, 1);
    });
    for node in &mut nodes {
        node.kill_hard();
    }
    let nodes: Vec<NodeProcess> = (0..3).map(start).collect();
    let urls: Vec<&str> = nodes.iter().map(|n| n.url.as_str()).collect();
    wait_alive(&urls, 3);
    // Well before the replica's node would publish it again (every 30 s,
    // and only while its group has a leader).
    let deadline = Instant::now() + Duration::from_secs(20);
    rt.block_on(async {
        for url in &urls[..2] {
            let mut client = connect(url).await;
            loop {
                match get(&mut client, "found/again", 1).await {
                    Ok(e) => {
                        assert_eq!(&e.payload[..], b"kept");
                        break;
                    }
                    Err(status) => assert!(
                        Instant::now() < deadline,
                        "{url}: found/again not found within 20 s of the restart: {status}"
                    ),
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    });
    // Once more, without the replica's node: the DHT has no record and no
    // copy answers, but the directory names the topic, so it is out of
    // reach, never "not found" (a handler appending to it would be parked
    // for good on that answer; the simulator found it: seed 34 of
    // --snapshot-bytes 2000).
    drop(nodes);
    let nodes: Vec<NodeProcess> = (0..2).map(start).collect();
    let urls: Vec<&str> = nodes.iter().map(|n| n.url.as_str()).collect();
    wait_alive(&urls, 2);
    let deadline = Instant::now() + Duration::from_secs(20);
    rt.block_on(async {
        let mut client = connect(urls[0]).await;
        loop {
            let status = get(&mut client, "found/again", 1)
                .await
                .expect_err("found/again's only replica is down");
            assert_ne!(
                status.code(),
                tonic::Code::NotFound,
                "a topic the directory names, out of reach: {status}"
            );
            if status.code() == tonic::Code::Unavailable
                && status.message().contains("no live node answered")
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the directory did not name found/again within 20 s: {status}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
}
