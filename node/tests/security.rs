//! Capability tokens and TLS on the client API, against real `woof node
//! start` processes on loopback, through the real CLI and a gRPC client.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{NodeProcess, append_streamed, free_tcp_port, keygen, root_key, token, woof};
use tonic::Code;
use woof_node::cli::{Bearer, ClientOptions, connect_with};
use woof_proto::v1;

/// Runs the CLI at `url` with `token` (if any); (success, stdout, stderr).
fn cli(url: &str, token: Option<&str>, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["--server", url];
    if let Some(t) = token {
        all.extend(["--token", t]);
    }
    all.extend_from_slice(args);
    let out = woof(&all);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

fn attenuate(token: &str, args: &[&str]) -> String {
    let mut all = vec!["token", "attenuate", token];
    all.extend_from_slice(args);
    let out = woof(&all);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn token_id(token: &str) -> String {
    let out = woof(&["token", "inspect", token]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines()
        .find_map(|l| l.strip_prefix("id 0: "))
        .expect("an id line")
        .to_string()
}

async fn client(url: &str, token: Option<&str>) -> woof_node::cli::Client {
    let options = ClientOptions {
        tls: None,
        bearer: match token {
            Some(t) => Bearer::token(t).unwrap(),
            None => Bearer::default(),
        },
    };
    connect_with(url, &options).await.unwrap()
}

async fn latest(url: &str, token: Option<&str>, topic: &str) -> Result<u64, tonic::Status> {
    client(url, token)
        .await
        .latest(v1::LatestRequest {
            topic: topic.into(),
        })
        .await
        .map(|r| r.into_inner().last_seq)
}

/// One node requiring tokens: each refusal has the right code and says
/// what was missing; an honest client is served through a burst of bad
/// tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_requiring_tokens_checks_every_request() {
    let dir = tempfile::tempdir().unwrap();
    let (root, public) = root_key(dir.path());
    let metrics = format!("127.0.0.1:{}", free_tcp_port());
    let node = NodeProcess::start(&[
        "--data-dir",
        dir.path().join("n").to_str().unwrap(),
        "--grpc-listen",
        "127.0.0.1:0",
        "--metrics-listen",
        &metrics,
        "--require-token",
        "--token-root",
        public.to_str().unwrap(),
    ]);
    let url = node.url.as_str();
    let admin = token(&root, "**", "admin,read,append,subscribe", "1h");
    for t in ["farm/north/x", "farm/south/x"] {
        let (ok, _, err) = cli(url, Some(&admin), &["topic", "create", t]);
        assert!(ok, "{err}");
        let (ok, out, err) = cli(url, Some(&admin), &["append", t, "hello"]);
        assert!(ok && out == "1", "{out} {err}");
    }

    // No token.
    let (ok, _, err) = cli(url, None, &["latest", "farm/north/x"]);
    assert!(!ok && err.contains("UNAUTHENTICATED"), "{err}");
    let refused = latest(url, None, "farm/north/x").await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

    // Read-only: reads, cannot append; the refusal names what is missing.
    let reader = token(&root, "farm/**", "read", "1h");
    let (ok, out, err) = cli(url, Some(&reader), &["latest", "farm/south/x"]);
    assert!(ok && out.starts_with('1'), "{out} {err}");
    let (ok, _, err) = cli(url, Some(&reader), &["append", "farm/north/x", "no"]);
    assert!(!ok, "a read-only token appended");
    assert!(
        err.contains("PERMISSION_DENIED") && err.contains("append") && err.contains("farm/north/x"),
        "{err}"
    );
    // Nor delete (admin).
    let (ok, _, err) = cli(url, Some(&reader), &["topic", "delete", "farm/north/x"]);
    assert!(
        !ok && err.contains("PERMISSION_DENIED") && err.contains("admin"),
        "{err}"
    );

    // Attenuated offline to farm/north/**: reads there, not farm/south/x,
    // and lists only what it may read.
    let north = attenuate(&reader, &["--topics", "farm/north/**"]);
    let (ok, out, err) = cli(url, Some(&north), &["get", "farm/north/x", "1"]);
    assert!(ok && out == "hello", "{out} {err}");
    let (ok, _, err) = cli(url, Some(&north), &["get", "farm/south/x", "1"]);
    assert!(!ok, "the farm/north/** token read farm/south/x");
    assert!(
        err.contains("PERMISSION_DENIED") && err.contains("farm/south/x"),
        "{err}"
    );
    let (ok, out, err) = cli(url, Some(&north), &["--json", "topic", "list"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("farm/north/x") && !out.contains("farm/south/x"),
        "{out}"
    );
    // An attenuation cannot widen: asking for append on top of read-only.
    let wider = attenuate(&reader, &["--ops", "read,append"]);
    let (ok, _, err) = cli(url, Some(&wider), &["append", "farm/north/x", "no"]);
    assert!(!ok && err.contains("PERMISSION_DENIED"), "{err}");

    // Cluster-wide operations need admin on **.
    let farm_admin = token(&root, "farm/**", "admin", "1h");
    let (ok, _, err) = cli(
        url,
        Some(&farm_admin),
        &["token", "revoke", &"ab".repeat(64)],
    );
    assert!(
        !ok && err.contains("PERMISSION_DENIED") && err.contains("**"),
        "{err}"
    );

    // Malformed, foreign, oversized.
    for bad in ["not a token", "AAAA", "Eg=="] {
        let refused = latest(url, Some(bad), "farm/north/x").await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{bad}: {refused:?}");
    }
    let other_dir = tempfile::tempdir().unwrap();
    let (other_root, _) = root_key(other_dir.path());
    let foreign = token(&other_root, "**", "read", "1h");
    let refused = latest(url, Some(&foreign), "farm/north/x")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(refused.message().contains("root key"), "{refused:?}");
    let huge = "A".repeat(5000);
    let refused = latest(url, Some(&huge), "farm/north/x").await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(refused.message().contains("4096"), "{refused:?}");

    // A burst of 10,000 bad-token requests, from 16 connections, while an
    // honest client appends: every bad one is refused, every honest one
    // served.
    let mut burst = Vec::new();
    for worker in 0..16u32 {
        let url = url.to_string();
        burst.push(tokio::spawn(async move {
            let mut refused = 0;
            let mut c = client(&url, None).await;
            for i in 0..625u32 {
                // Each different, so no cache answers for it.
                let garbage = format!("En{worker:04}{i:06}AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
                let mut request = tonic::Request::new(v1::LatestRequest {
                    topic: "farm/north/x".into(),
                });
                request.metadata_mut().insert(
                    "authorization",
                    format!("Bearer {garbage}").parse().unwrap(),
                );
                match c.latest(request).await {
                    Err(s) if s.code() == Code::Unauthenticated => refused += 1,
                    other => panic!("a garbage token got {other:?}"),
                }
            }
            refused
        }));
    }
    let writer = token(&root, "farm/north/**", "append", "1h");
    let mut honest = client(url, Some(&writer)).await;
    let mut served = 0;
    for i in 0..100 {
        honest
            .append(v1::AppendRequest {
                topic: "farm/north/x".into(),
                payload: format!("during the burst {i}").into_bytes().into(),
                ..Default::default()
            })
            .await
            .expect("an honest append during the burst");
        served += 1;
    }
    let mut refused = 0;
    for b in burst {
        refused += b.await.unwrap();
    }
    assert_eq!(refused, 10_000);
    assert_eq!(served, 100);
    assert_eq!(
        latest(url, Some(&admin), "farm/north/x").await.unwrap(),
        101
    );

    // An append stream: its token is verified when it opens, then checked
    // against each request's topic.
    let to = |topic: &str| v1::AppendRequest {
        topic: topic.into(),
        payload: "streamed".into(),
        ..Default::default()
    };
    let refused = client(url, None)
        .await
        .append_stream(tokio_stream::iter(vec![to("farm/north/x")]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let requests = vec![to("farm/north/x"), to("farm/south/x"), to("farm/north/x")];
    let outcomes: Vec<_> = append_streamed(&mut client(url, Some(&writer)).await, requests)
        .await
        .into_iter()
        .map(|outcome| match outcome {
            v1::append_stream_response::Outcome::Appended(a) => Ok(a.seq),
            v1::append_stream_response::Outcome::Error(e) => Err((Code::from(e.code), e.message)),
        })
        .collect();
    assert_eq!(outcomes.len(), 3, "{outcomes:?}");
    assert_eq!(outcomes[0], Ok(102));
    assert!(
        matches!(&outcomes[1], Err((Code::PermissionDenied, m)) if m.contains("farm/south/x")),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[2], Ok(103));
    assert_eq!(latest(url, Some(&admin), "farm/south/x").await.unwrap(), 1);

    // Each refusal is counted.
    let text = scrape(&metrics).await;
    let counted: f64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("woof_requests_rejected_total{code=\"UNAUTHENTICATED\"} ")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no UNAUTHENTICATED count in:\n{text}"));
    assert!(counted >= 10_000.0, "{counted} refusals counted");
}

/// `GET /metrics` at `addr`: the body.
async fn scrape(addr: &str) -> String {
    common::http::get(addr.parse().unwrap(), "/metrics")
        .await
        .expect("a scrape answers within 10 s")
        .body
}

/// Three nodes requiring tokens: an expired token and a revoked one (and a
/// token made from it) are refused on every node within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_revoked_tokens_are_refused_on_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let (root, public) = root_key(dir.path());
    let key = keygen(dir.path());
    let overlay: Vec<u16> = (0..3).map(|_| free_tcp_port()).collect();
    let mut nodes = Vec::new();
    for (i, port) in overlay.iter().enumerate() {
        let data = dir.path().join(format!("n{i}"));
        let listen = format!("/ip4/127.0.0.1/tcp/{port}");
        let join = format!("/ip4/127.0.0.1/tcp/{}", overlay[0]);
        let mut args = vec![
            "--data-dir",
            data.to_str().unwrap(),
            "--grpc-listen",
            "127.0.0.1:0",
            "--listen",
            &listen,
            "--cluster-key",
            key.to_str().unwrap(),
            "--require-token",
            "--token-root",
            public.to_str().unwrap(),
        ];
        if i > 0 {
            args.extend(["--join", &join]);
        }
        nodes.push(NodeProcess::start(&args));
    }
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let admin = token(&root, "**", "admin,read", "1h");
    // Every node sees the three alive (cluster status with the token).
    let deadline = Instant::now() + Duration::from_secs(60);
    for url in &urls {
        loop {
            let (ok, out, err) = cli(url, Some(&admin), &["--json", "cluster", "status"]);
            if ok && out.matches("\"alive\"").count() >= 3 {
                break;
            }
            assert!(Instant::now() < deadline, "{url}: not 3 alive: {out} {err}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let (ok, _, err) = cli(&urls[0], Some(&admin), &["topic", "create", "farm/x"]);
    assert!(ok, "{err}");

    let reader = token(&root, "**", "read", "1h");
    let derived = attenuate(&reader, &["--topics", "farm/**"]);
    let short = token(&root, "**", "read", "4s");
    let made = Instant::now();
    for url in &urls {
        for t in [&reader, &derived, &short] {
            latest(url, Some(t), "farm/x")
                .await
                .unwrap_or_else(|e| panic!("{url}: a good token refused: {e:?}"));
        }
    }

    // Revoke the reader through one node.
    let id = token_id(&reader);
    let (ok, out, err) = cli(&urls[1], Some(&admin), &["token", "revoke", &id]);
    assert!(ok && out.contains("revoked"), "{out} {err}");
    // A read-only token may not revoke.
    let (ok, _, err) = cli(&urls[1], Some(&short), &["token", "revoke", &id]);
    assert!(!ok && err.contains("PERMISSION_DENIED"), "{err}");

    // Every node refuses it, and the token made from it, within 10 s; the
    // admin token still works everywhere.
    let deadline = Instant::now() + Duration::from_secs(10);
    for url in &urls {
        for t in [&reader, &derived] {
            loop {
                match latest(url, Some(t), "farm/x").await {
                    Err(s) if s.code() == Code::Unauthenticated => {
                        assert!(s.message().contains("revoked"), "{s:?}");
                        break;
                    }
                    other => assert!(
                        Instant::now() < deadline,
                        "{url}: a revoked token still gets {other:?}"
                    ),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        latest(url, Some(&admin), "farm/x").await.unwrap();
    }

    // The short token expires: refused on every node once it has, within
    // a few seconds.
    tokio::time::sleep((made + Duration::from_secs(5)).saturating_duration_since(Instant::now()))
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    for url in &urls {
        loop {
            match latest(url, Some(&short), "farm/x").await {
                Err(s) if s.code() == Code::Unauthenticated => {
                    assert!(s.message().contains("expired"), "{s:?}");
                    break;
                }
                other => assert!(
                    Instant::now() < deadline,
                    "{url}: an expired token still gets {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// `woof cluster certs` into `dir`.
fn certs(dir: &Path, nodes: &str) {
    let out = woof(&[
        "cluster",
        "certs",
        "--dir",
        dir.to_str().unwrap(),
        "--nodes",
        nodes,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A node serving TLS: the CLI with the right CA works; with another CA it
/// says the certificate is not trusted; plaintext to the TLS port says to
/// use https; the dashboard is HTTPS with the same certificate (plain HTTP
/// to it gets no answer); bad certificate files stop the node with a clear
/// error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_the_client_api() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    certs(&pki, "1");
    let http: std::net::SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let http_listen = http.to_string();
    let node = NodeProcess::start(&[
        "--http-listen",
        &http_listen,
        "--data-dir",
        dir.path().join("n").to_str().unwrap(),
        "--grpc-listen",
        "127.0.0.1:0",
        "--tls-cert",
        pki.join("node-1.pem").to_str().unwrap(),
        "--tls-key",
        pki.join("node-1.key").to_str().unwrap(),
    ]);
    assert!(node.url.starts_with("https://127.0.0.1:"), "{}", node.url);
    let url = node.url.as_str();
    let ca = pki.join("ca.pem");
    let ca = ca.to_str().unwrap();

    let (ok, _, err) = cli(url, None, &["--ca", ca, "topic", "create", "lab/t"]);
    assert!(ok, "{err}");
    let (ok, out, err) = cli(url, None, &["--ca", ca, "append", "lab/t", "over tls"]);
    assert!(ok && out == "1", "{out} {err}");
    let (ok, out, err) = cli(url, None, &["--ca", ca, "get", "lab/t", "1"]);
    assert!(ok && out == "over tls", "{out} {err}");

    // Another CA.
    let other = dir.path().join("other");
    certs(&other, "1");
    let (ok, _, err) = cli(
        url,
        None,
        &[
            "--ca",
            other.join("ca.pem").to_str().unwrap(),
            "latest",
            "lab/t",
        ],
    );
    assert!(!ok, "a foreign CA was trusted");
    assert!(err.contains("not trusted by the CA"), "{err}");

    // No CA for https.
    let (ok, _, err) = cli(url, None, &["latest", "lab/t"]);
    assert!(!ok && err.contains("--ca"), "{err}");

    // Plaintext to the TLS port.
    let plain = url.replace("https://", "http://");
    let (ok, _, err) = cli(&plain, None, &["latest", "lab/t"]);
    assert!(!ok, "plaintext was served on the TLS port");
    assert!(err.contains("TLS") && err.contains("https://"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // The dashboard: HTTPS by the node's certificate, and its views work.
    let page = common::http::https_get(http, &pki.join("ca.pem"), "/")
        .await
        .expect("the dashboard over HTTPS");
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.body.contains("<html"), "{}", page.body);
    let view = common::http::https_get(http, &pki.join("ca.pem"), "/api/view")
        .await
        .unwrap();
    assert_eq!(view.status, 200, "{view:?}");
    let view: serde_json::Value = serde_json::from_str(&view.body).unwrap();
    assert!(
        view.to_string().contains("lab/t"),
        "the view lacks the topic: {view}"
    );
    // A client that does not trust the node's CA is refused.
    let foreign = common::http::https_get(http, &other.join("ca.pem"), "/").await;
    assert!(foreign.is_err(), "a foreign CA was trusted: {foreign:?}");
    // Plain HTTP to the dashboard: no page, and the node goes on.
    let plain = common::http::get(http, "/").await;
    assert!(
        plain.as_ref().map_or(true, |a| a.status == 0),
        "plain HTTP was served on the HTTPS port: {plain:?}"
    );
    let again = common::http::https_get(http, &pki.join("ca.pem"), "/")
        .await
        .unwrap();
    assert_eq!(again.status, 200);

    // Bad certificate and key files: exit 1 with a clear error.
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nnot base64 !!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    for (cert, key, says) in [
        (garbage.clone(), pki.join("node-1.key"), "--tls-cert"),
        (pki.join("node-1.pem"), pki.join("missing.key"), "--tls-key"),
        (
            pki.join("node-1.pem"),
            other.join("node-1.key"),
            "--tls-cert",
        ),
    ] {
        let out = std::process::Command::new(common::woof_bin())
            .args([
                "node",
                "start",
                "--data-dir",
                dir.path().join("bad").to_str().unwrap(),
                "--grpc-listen",
                "127.0.0.1:0",
                "--tls-cert",
                cert.to_str().unwrap(),
                "--tls-key",
                key.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("TLS") && err.contains(says), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// A node listening beyond loopback without TLS says so at start.
#[test]
fn a_plaintext_node_beyond_loopback_warns() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(&[
        "--data-dir",
        dir.path().join("n").to_str().unwrap(),
        "--grpc-listen",
        "0.0.0.0:0",
    ]);
    let log = std::fs::read_to_string(&node.log).unwrap();
    assert!(log.contains("WITHOUT TLS"), "{log}");
    assert!(log.contains("WITHOUT --require-token"), "{log}");
    let quiet = NodeProcess::start_in(&dir.path().join("m"));
    let log = std::fs::read_to_string(&quiet.log).unwrap();
    assert!(!log.contains("WITHOUT TLS"), "{log}");
}

/// Three nodes with TLS and tokens: a request one node forwards to another
/// (a handler's records, kept on the node that runs it) goes over TLS,
/// trusting the CA in the node's own chain, and carries the client's token;
/// a token without read on the topic is refused before any forwarding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_request_crosses_tls_with_the_callers_token() {
    let dir = tempfile::tempdir().unwrap();
    let (root, public) = root_key(dir.path());
    let key = keygen(dir.path());
    let pki = dir.path().join("pki");
    certs(&pki, "3");
    let ca = pki.join("ca.pem");
    let ca = ca.to_str().unwrap();
    let overlay: Vec<u16> = (0..3).map(|_| free_tcp_port()).collect();
    let mut nodes = Vec::new();
    for (i, port) in overlay.iter().enumerate() {
        let data = dir.path().join(format!("n{i}"));
        let listen = format!("/ip4/127.0.0.1/tcp/{port}");
        let join = format!("/ip4/127.0.0.1/tcp/{}", overlay[0]);
        let cert = pki.join(format!("node-{}.pem", i + 1));
        let tls_key = pki.join(format!("node-{}.key", i + 1));
        let mut args = vec![
            "--data-dir",
            data.to_str().unwrap(),
            "--grpc-listen",
            "127.0.0.1:0",
            "--listen",
            &listen,
            "--cluster-key",
            key.to_str().unwrap(),
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            tls_key.to_str().unwrap(),
            "--require-token",
            "--token-root",
            public.to_str().unwrap(),
        ];
        if i > 0 {
            args.extend(["--join", &join]);
        }
        nodes.push(NodeProcess::start(&args));
    }
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let admin = token(&root, "**", "admin,read,append,deploy", "1h");
    let run = |url: &str, t: &str, args: &[&str]| {
        let mut all = vec!["--ca", ca];
        all.extend_from_slice(args);
        cli(url, Some(t), &all)
    };
    // Each node's peer id, once all three see each other.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut peers = Vec::new();
    for url in &urls {
        loop {
            let (ok, out, err) = run(url, &admin, &["--json", "cluster", "status"]);
            if ok && out.matches("\"alive\"").count() >= 3 {
                let me = out
                    .lines()
                    .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                    .find(|v| v["local"] == true)
                    .expect("the node itself");
                peers.push(me["peer_id"].as_str().unwrap().to_string());
                break;
            }
            assert!(Instant::now() < deadline, "{url}: not 3 alive: {out} {err}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    for t in ["in", "out"] {
        let (ok, _, err) = run(&urls[0], &admin, &["topic", "create", t]);
        assert!(ok, "{err}");
    }
    // A handler pinned to the third node; its records stay there.
    let placement = format!("node({})", peers[2]);
    let (ok, _, err) = run(
        &urls[0],
        &admin,
        &[
            "handler",
            "deploy",
            "in",
            "fwd",
            "--native",
            "forward",
            "--config",
            r#"{"to":"out"}"#,
            "--placement",
            &placement,
        ],
    );
    assert!(ok, "{err}");
    for i in 0..3 {
        let (ok, _, err) = run(&urls[0], &admin, &["append", "in", &format!("e{i}")]);
        assert!(ok, "{err}");
    }
    // Asked through the first node, the records come from the third.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out, err) = run(
            &urls[0],
            &admin,
            &["--json", "handler", "logs", "in", "fwd"],
        );
        let from_third = out
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["node"] == peers[2].as_str())
            .count();
        if ok && from_third >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no records from the third node through the first: {out} {err}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A token that may not read `in` gets no records, from any node.
    let other = token(&root, "out", "read", "1h");
    let (ok, _, err) = run(&urls[0], &other, &["handler", "logs", "in", "fwd"]);
    assert!(!ok && err.contains("PERMISSION_DENIED"), "{err}");
}
