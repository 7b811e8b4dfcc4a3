//! A real Prometheus server (Debian's `prometheus`) scrapes a 3-node
//! cluster every second; the test kills a topic's leader and asks
//! Prometheus's HTTP API for woof's append latency histogram and for a
//! leader-change count that went up.
//!
//! `./dev` installs `prometheus` when it is missing; without it this test
//! fails and says so.

mod common;

use common::free_tcp_port;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where Debian puts it; else the first on `PATH`.
fn prometheus_bin() -> PathBuf {
    let debian = PathBuf::from("/usr/bin/prometheus");
    if debian.exists() {
        return debian;
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("prometheus"))
                .find(|p| p.exists())
        })
        .unwrap_or_else(|| {
            panic!(
                "this test needs the Prometheus server (/usr/bin/prometheus): install it with \
                 `apt-get install -y prometheus` (./dev does so when it is missing)"
            )
        })
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET path`: (status code, body).
async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    common::http::get(addr, path)
        .await
        .map(|a| (a.status, a.body))
}

/// An instant query: each series' labels and value.
async fn query(prom: SocketAddr, q: &str) -> Vec<(HashMap<String, String>, f64)> {
    let (code, body) = http_get(prom, &format!("/api/v1/query?query={}", encode(q)))
        .await
        .unwrap_or_else(|e| panic!("querying Prometheus failed: {e}"));
    assert_eq!(code, 200, "query {q}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "success", "{body}");
    v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let labels = r["metric"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect();
            let value = r["value"][1].as_str().unwrap().parse().unwrap();
            (labels, value)
        })
        .collect()
}

/// Polls `q` until `ok` holds for its result, for at most `within`.
async fn wait_query(
    prom: SocketAddr,
    q: &str,
    within: Duration,
    ok: impl Fn(&[(HashMap<String, String>, f64)]) -> bool,
) -> Vec<(HashMap<String, String>, f64)> {
    let deadline = Instant::now() + within;
    loop {
        let r = query(prom, q).await;
        if ok(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{q} never held within {within:?}: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Leader changes Prometheus last scraped, per instance.
async fn leader_changes(prom: SocketAddr) -> HashMap<String, f64> {
    query(prom, "woof_raft_leader_changes_total")
        .await
        .into_iter()
        .map(|(l, v)| (l["instance"].clone(), v))
        .collect()
}

fn write_config(path: &Path, targets: &[String]) {
    let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
    std::fs::write(
        path,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: woof\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        ),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_cluster_through_a_failover() {
    let prometheus = prometheus_bin();
    let dir = tempfile::tempdir().unwrap();
    let key = common::keygen(dir.path());
    let metrics: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_tcp_port()))
        .collect();
    let first = common::start_node(
        &dir.path().join("n0"),
        &key,
        &["--metrics-listen", &metrics[0]],
    );
    let join = common::overlay_addr(&first.url);
    let mut nodes = vec![first];
    for (i, m) in metrics.iter().enumerate().skip(1) {
        nodes.push(common::start_node(
            &dir.path().join(format!("n{i}")),
            &key,
            &["--join", &join, "--metrics-listen", m],
        ));
    }
    let urls: Vec<&str> = nodes.iter().map(|n| n.url.as_str()).collect();
    common::wait_alive(&urls, 3);
    let peers: Vec<String> = nodes.iter().map(|n| common::peer_id(&n.url)).collect();

    let prom_addr: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let config = dir.path().join("prometheus.yml");
    write_config(&config, &metrics);
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let _prom = tokio::process::Command::new(&prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={prom_addr}"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", prometheus.display()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(http_get(prom_addr, "/-/ready").await, Ok((200, _))) {
        assert!(
            Instant::now() < deadline,
            "Prometheus not ready within 30 s; its log: {}",
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let topic = "plant/line-1/temp";
    let mut client = common::connect(&nodes[0].url).await;
    common::create_replicated(&mut client, topic, 3, "").await;
    for seq in 1..=20 {
        common::append_retrying(&mut client, topic, "probe", seq, &format!("{seq}")).await;
    }
    // Every node is up for Prometheus, and node 0's appends are in.
    wait_query(
        prom_addr,
        "count(up{job=\"woof\"} == 1)",
        Duration::from_secs(30),
        |r| r.first().is_some_and(|(_, v)| *v == 3.0),
    )
    .await;
    wait_query(
        prom_addr,
        "sum(woof_append_latency_seconds_count)",
        Duration::from_secs(30),
        |r| r.first().is_some_and(|(_, v)| *v >= 20.0),
    )
    .await;
    // The p99 of every append so far, from the histogram's buckets.
    let p99 = wait_query(
        prom_addr,
        "histogram_quantile(0.99, sum(woof_append_latency_seconds_bucket) by (le))",
        Duration::from_secs(30),
        |r| r.first().is_some_and(|(_, v)| v.is_finite()),
    )
    .await[0]
        .1;
    assert!(p99 > 0.0 && p99 < 10.0, "p99 append latency {p99} s");
    let appended = query(
        prom_addr,
        &format!("sum(woof_topic_appends_total{{topic=\"{topic}\"}})"),
    )
    .await;
    assert_eq!(appended.first().map(|(_, v)| *v), Some(20.0));

    // Kill the topic's leader; append through a survivor so the group
    // elects another.
    let leader = common::describe(&mut client, topic).await.leader;
    let dead = peers
        .iter()
        .position(|p| *p == leader)
        .unwrap_or_else(|| panic!("the leader {leader:?} is none of {peers:?}"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = leader_changes(prom_addr).await;
    assert_eq!(before.len(), 3, "{before:?}");
    nodes[dead].kill_hard();
    let survivor = (dead + 1) % 3;
    let mut client = common::connect(&nodes[survivor].url).await;
    for seq in 21..=25 {
        common::append_retrying(&mut client, topic, "probe", seq, &format!("{seq}")).await;
    }
    let survivors: Vec<&String> = (0..3).filter(|i| *i != dead).map(|i| &metrics[i]).collect();
    let mut after = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !survivors.iter().any(|s| after.get(*s) > before.get(*s)) {
        assert!(
            Instant::now() < deadline,
            "no survivor's leader changes went up within 30 s: before {before:?}, after {after:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        after = leader_changes(prom_addr).await;
    }
    // Prometheus sees the dead node down.
    wait_query(
        prom_addr,
        &format!("up{{instance=\"{}\"}}", metrics[dead]),
        Duration::from_secs(30),
        |r| r.first().is_some_and(|(_, v)| *v == 0.0),
    )
    .await;
    eprintln!(
        "p99 append latency {:.1} ms; leader changes before {before:?}, after {after:?}",
        p99 * 1000.0
    );
}
