//! `woof demo`: start a small cluster of embedded nodes (an edge node and two
//! cloud nodes, joined through the libp2p overlay with a cluster key) in a
//! temporary directory and walk through what woof does, printing each step.
//! Every step goes through the real gRPC API, as a user's client would.
//!
//! The demo is a list of steps over a shared [`Demo`]; later parts of woof
//! (handlers, devices) add their own steps.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::StreamExt;

use woof_proto::v1;

use std::collections::BTreeMap;

use woof_overlay::{ClusterKey, LinkPort, Multiaddr, NodeInfo, Tier, Timing};

use crate::cli::connect;
use crate::config::{ClusterConfig, NodeConfig};
use crate::error::{Error, Result};
use crate::server::Node;

const TOPIC: &str = "farm/north/soil-moisture";
/// Where the `threshold` handler writes its alerts.
const ALERTS: &str = "farm/north/alerts";
/// Where the `forward` handler copies every reading.
const ARCHIVE: &str = "farm/north/archive";
const READINGS: u64 = 12;

/// What the steps share.
struct Demo {
    dir: tempfile::TempDir,
    key: ClusterKey,
    /// The edge node the sensor talks to.
    node: Option<Node>,
    /// The two cloud nodes.
    others: Vec<Node>,
    client: crate::cli::Client,
    /// Where the edge node serves the dashboard (the same address after
    /// its restart).
    dashboard: Option<SocketAddr>,
}

/// Runs the whole demo and cleans up after it.
pub async fn run() -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("woof-demo-")
        .tempdir()
        .map_err(|source| Error::Io {
            context: "creating a temporary directory".into(),
            source,
        })?;
    let key = ClusterKey::generate();
    // A port for the dashboard that the edge node takes again when it
    // restarts.
    let dashboard = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .ok();
    let node = start_node(&dir, "edge", Tier::Edge, &key, vec![], dashboard).await?;
    let join = overlay_addr(&node);
    let mut others = Vec::new();
    for name in ["cloud-1", "cloud-2"] {
        others.push(start_node(&dir, name, Tier::Cloud, &key, join.clone(), None).await?);
    }
    let client = connect(&node.url()).await?;
    let mut demo = Demo {
        dir,
        key,
        node: Some(node),
        others,
        client,
        dashboard,
    };
    let result = steps(&mut demo).await;
    if let Some(node) = demo.node.take() {
        node.stop().await?;
    }
    for node in demo.others.drain(..) {
        node.stop().await?;
    }
    println!("\ncleaned up {}", demo.dir.path().display());
    result
}

/// Starts node `name` of the demo cluster, in its own directory (serving
/// the dashboard on `http`, if given).
async fn start_node(
    dir: &tempfile::TempDir,
    name: &str,
    tier: Tier,
    key: &ClusterKey,
    join: Vec<Multiaddr>,
    http: Option<SocketAddr>,
) -> Result<Node> {
    let mut config = node_config(dir, name, tier, &[], key, join)?;
    config.http_listen = http;
    Node::start(&config).await
}

/// [`start_node`], with attributes beyond its name.
async fn start_node_with(
    dir: &tempfile::TempDir,
    name: &str,
    tier: Tier,
    attrs: &[&str],
    key: &ClusterKey,
    join: Vec<Multiaddr>,
) -> Result<Node> {
    Node::start(&node_config(dir, name, tier, attrs, key, join)?).await
}

/// A demo node's settings.
fn node_config(
    dir: &tempfile::TempDir,
    name: &str,
    tier: Tier,
    attrs: &[&str],
    key: &ClusterKey,
    join: Vec<Multiaddr>,
) -> Result<NodeConfig> {
    let mut config = NodeConfig::standalone(
        dir.path().join(name),
        "127.0.0.1:0".parse().expect("valid address"),
    );
    config.info = NodeInfo::new(tier).with_attr(&format!("name={name}"))?;
    for attr in attrs {
        config.info = config.info.with_attr(attr)?;
    }
    config.cluster = Some(ClusterConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("valid multiaddr")],
        join,
        key: *key,
        timing: Timing::default(),
        join_timeout: Some(Duration::from_secs(10)),
        repair_after: crate::config::REPAIR_AFTER_DEFAULT,
        link_port: LinkPort::Any,
        balance_leaders: true,
    });
    // Every demo node is also a bridge gateway for microcontrollers.
    let any = "127.0.0.1:0".parse().expect("valid address");
    config.bridge_listen = vec![
        crate::devices::transport::Transport::Udp(any),
        crate::devices::transport::Transport::Tcp(any),
    ];
    Ok(config)
}

/// A node's overlay address, as another node would `--join` it.
fn overlay_addr(node: &Node) -> Vec<Multiaddr> {
    node.overlay()
        .map(|o| o.listen_addrs().to_vec())
        .unwrap_or_default()
}

fn heading(text: &str) {
    println!("\n== {text}");
}

async fn steps(d: &mut Demo) -> Result<()> {
    heading("a cluster: one edge node, two cloud nodes, joined with a cluster key");
    println!("  data in {}", d.dir.path().display());
    let deadline = Instant::now() + Duration::from_secs(15);
    let nodes = loop {
        let nodes = d
            .client
            .cluster_status(v1::ClusterStatusRequest {})
            .await?
            .into_inner()
            .nodes;
        if nodes.iter().filter(|n| n.state == "alive").count() == 3 || Instant::now() > deadline {
            break nodes;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for n in &nodes {
        println!(
            "  {} {:<5} {:<6} gRPC {:<22} {}",
            if n.local { "*" } else { " " },
            n.tier,
            n.state,
            n.grpc_addr.trim_start_matches("http://"),
            n.peer_id
        );
    }
    println!("  (* is the edge node the sensor talks to)");
    if let Some(addr) = d.dashboard {
        println!(
            "  watch it live while the demo runs: http://{addr}/ (the dashboard, served by *)"
        );
    }
    // The cluster's name directory starts on the first node and grows to
    // three voters through repair; the demo stops nodes later, so it waits.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let directory = d
            .node
            .as_ref()
            .and_then(|n| n.groups())
            .and_then(|g| g.local_members(woof_consensus::topic::directory::DIRECTORY));
        if directory.is_some_and(|m| m.len() >= 3) {
            break;
        }
        if Instant::now() > deadline {
            return Err(Error::Internal(
                "the name directory did not grow to three nodes within 30 s".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    heading("a topic");
    let created = d
        .client
        .create_topic(v1::CreateTopicRequest {
            name: TOPIC.into(),
            config: Some(v1::TopicConfig {
                element_max_bytes: 256,
                history: 1000,
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    let t = created.topic.unwrap_or_default();
    println!(
        "created {} (elements up to {} bytes, newest {} kept), replicated {} times: \
         a Raft group on nodes picked by Kademlia distance",
        t.name,
        t.config.unwrap_or_default().element_max_bytes,
        t.config.unwrap_or_default().history,
        t.replication
    );

    heading("a subscriber follows the topic from the start");
    let mut stream = d
        .client
        .subscribe(v1::SubscribeRequest {
            topic: TOPIC.into(),
            start: Some(v1::subscribe_request::Start::FromSeq(1)),
        })
        .await?
        .into_inner();
    let follower = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(Ok(r)) = stream.next().await {
            let e = r.element.unwrap_or_default();
            println!(
                "    subscriber got #{:<3} {}",
                e.seq,
                String::from_utf8_lossy(&e.payload)
            );
            seen.push(e.seq);
            if seen.len() as u64 == READINGS {
                break;
            }
        }
        seen
    });

    heading(
        "a sensor appends readings (each acknowledged once a majority of replicas synced it to disk)",
    );
    let mut latencies = Vec::new();
    for i in 1..=READINGS {
        let reading = format!(
            "{{\"probe\":\"north-7\",\"moisture_pct\":{:.1}}}",
            31.0 + (i as f64 * 0.7).sin() * 4.0
        );
        let started = Instant::now();
        let r = d
            .client
            .append(v1::AppendRequest {
                topic: TOPIC.into(),
                payload: reading.clone().into(),
                producer: Some(v1::Producer {
                    id: "probe-north-7".into(),
                    seq: i,
                }),
                handler: Default::default(),
            })
            .await?
            .into_inner();
        latencies.push(started.elapsed());
        println!("  appended #{:<3} {reading}", r.seq);
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    latencies.sort();
    println!(
        "  append latency: median {:.2} ms, worst {:.2} ms",
        latencies[latencies.len() / 2].as_secs_f64() * 1e3,
        latencies[latencies.len() - 1].as_secs_f64() * 1e3
    );
    let seen = tokio::time::timeout(Duration::from_secs(10), follower)
        .await
        .map_err(|_| Error::Internal("the subscriber did not see every reading".into()))?
        .map_err(|e| Error::Internal(format!("subscriber task: {e}")))?;
    let expected: Vec<u64> = (1..=READINGS).collect();
    println!(
        "  the subscriber saw {} readings, in order, no gap, no duplicate: {}",
        seen.len(),
        seen == expected
    );

    heading("the sensor's radio drops an ack, so it sends reading 12 again");
    let retry = d
        .client
        .append(v1::AppendRequest {
            topic: TOPIC.into(),
            payload: "resent".into(),
            producer: Some(v1::Producer {
                id: "probe-north-7".into(),
                seq: READINGS,
            }),
            handler: Default::default(),
        })
        .await?
        .into_inner();
    println!(
        "  the node answers #{} again (duplicate: {}); nothing new is written",
        retry.seq, retry.duplicate
    );

    heading("reads");
    let latest = d
        .client
        .latest(v1::LatestRequest {
            topic: TOPIC.into(),
        })
        .await?
        .into_inner();
    println!("  latest: #{}", latest.last_seq);
    let scan = d
        .client
        .scan(v1::ScanRequest {
            topic: TOPIC.into(),
            from_seq: 5,
            limit: 3,
        })
        .await?
        .into_inner();
    for e in scan.elements {
        println!(
            "  scan from 5: #{} {}",
            e.seq,
            String::from_utf8_lossy(&e.payload)
        );
    }

    handlers(d).await?;

    heading("history: a topic that keeps only its 5 newest elements");
    d.client
        .create_topic(v1::CreateTopicRequest {
            name: "farm/north/gate-events".into(),
            config: Some(v1::TopicConfig {
                element_max_bytes: 64,
                history: 5,
            }),
            ..Default::default()
        })
        .await?;
    let batch = d
        .client
        .append_batch(v1::AppendBatchRequest {
            topic: "farm/north/gate-events".into(),
            payloads: (1..=20)
                .map(|i| format!("gate opened #{i}").into())
                .collect(),
            producer: None,
            handler: String::new(),
        })
        .await?
        .into_inner();
    println!(
        "  appended a batch of {} in one sync: #{}..#{}",
        batch.count,
        batch.first_seq,
        batch.first_seq + batch.count - 1
    );
    // A producer's appends on one stream, all sent before any answer.
    let requests: Vec<_> = (21..=30)
        .map(|i| v1::AppendRequest {
            topic: "farm/north/gate-events".into(),
            payload: format!("gate opened #{i}").into(),
            ..Default::default()
        })
        .collect();
    let mut answers = d
        .client
        .append_stream(tokio_stream::iter(requests))
        .await?
        .into_inner();
    let mut seqs = Vec::new();
    while let Some(answer) = answers.message().await? {
        match answer.outcome {
            Some(v1::append_stream_response::Outcome::Appended(a)) => seqs.push(a.seq),
            other => return Err(Error::Internal(format!("a streamed append got {other:?}"))),
        }
    }
    println!(
        "  then {} more on one stream, sent at once, answered in order: {}",
        seqs.len(),
        seqs.iter()
            .map(|s| format!("#{s}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let l = d
        .client
        .latest(v1::LatestRequest {
            topic: "farm/north/gate-events".into(),
        })
        .await?
        .into_inner();
    println!("  it now holds #{}..#{}", l.first_seq, l.last_seq);
    let old = d
        .client
        .get(v1::GetRequest {
            topic: "farm/north/gate-events".into(),
            seq: 3,
        })
        .await;
    println!("  get #3: {}", refusal(old)?);

    heading("bad input gets a clear error, and the node keeps serving");
    for (what, name) in [
        ("an upper-case name", "Farm/North"),
        ("a '..' segment", "farm/../x"),
    ] {
        let err = d
            .client
            .create_topic(v1::CreateTopicRequest {
                name: name.into(),
                config: None,
                ..Default::default()
            })
            .await;
        println!("  {what}: {}", refusal(err)?);
    }
    let err = d
        .client
        .append(v1::AppendRequest {
            topic: TOPIC.into(),
            payload: vec![0u8; 1000].into(),
            producer: None,
            handler: Default::default(),
        })
        .await;
    println!("  a 1000-byte reading: {}", refusal(err)?);

    heading("durability: stop the node, start it again on the same directory");
    if let Some(node) = d.node.take() {
        node.stop().await?;
    }
    let join = d.others.first().map(overlay_addr).unwrap_or_default();
    let node = start_node(&d.dir, "edge", Tier::Edge, &d.key, join, d.dashboard).await?;
    d.client = connect(&node.url()).await?;
    d.node = Some(node);
    let l = d
        .client
        .latest(v1::LatestRequest {
            topic: TOPIC.into(),
        })
        .await?
        .into_inner();
    let next = d
        .client
        .append(v1::AppendRequest {
            topic: TOPIC.into(),
            payload: "{\"probe\":\"north-7\",\"moisture_pct\":30.1}".into(),
            producer: None,
            handler: Default::default(),
        })
        .await?
        .into_inner();
    println!(
        "  after the restart {TOPIC} still holds #1..#{}; the next append is #{}",
        l.last_seq, next.seq
    );
    edge_python(d).await?;
    devices(d).await?;
    failover(d).await?;
    println!("\ncoming next in woof: faster replicated appends.");
    Ok(())
}

/// A motor's vibration, 5 readings a second.
const VIBRATION: &str = "mill/motor-3/vibration";
/// What the Python handler on the edge makes of it.
const SMOOTHED: &str = "mill/motor-3/smoothed";
const MOTOR_ALERTS: &str = "mill/motor-3/alerts";
const VIBRATION_READINGS: u64 = 30;

/// The root mean square of the last 4 readings (read back from the topic,
/// so that whichever node runs it computes the same).
const SMOOTH_PY: &str = r##"import json, math

def handle(ctx, seq, payload):
    window = ctx.scan(ctx.topic, max(1, seq - 3), 4)
    values = [json.loads(p)["mm_s"] for s, p in window if s <= seq]
    rms = math.sqrt(sum(v * v for v in values) / len(values))
    ctx.log(f"#{seq}: rms of {len(values)} readings = {rms:.2f} mm/s")
    ctx.append(ctx.config["to"], json.dumps(
        {"reading": seq, "magnitude": round(rms, 2), "node": ctx.node}))
"##;

/// Two edge nodes join at a mill; a Python handler placed on them smooths a
/// motor's vibration, a native one placed in the cloud alerts on it; the
/// edge node running the Python handler is stopped halfway, and the
/// handler moves to the other one without losing or doubling a result.
async fn edge_python(d: &mut Demo) -> Result<()> {
    heading("Python on the edge, an alarm in the cloud: placement, and a handler's node stopped");
    let join = d.others.first().map(overlay_addr).unwrap_or_default();
    let mut edges = Vec::new();
    for name in ["edge-a", "edge-b"] {
        let node = start_node_with(
            &d.dir,
            name,
            Tier::Edge,
            &["site=mill"],
            &d.key,
            join.clone(),
        );
        edges.push(node.await?);
    }
    let mut c = d.client.clone();
    let deadline = Instant::now() + Duration::from_secs(15);
    while node_names(&mut c)
        .await?
        .values()
        .filter(|n| n.starts_with("edge-"))
        .count()
        < 2
    {
        if Instant::now() > deadline {
            return Err(Error::Internal("the edge nodes did not join".into()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("  edge-a and edge-b joined, at the mill (site=mill)");
    for topic in [VIBRATION, SMOOTHED, MOTOR_ALERTS] {
        c.create_topic(v1::CreateTopicRequest {
            name: topic.into(),
            replication: 3,
            ..Default::default()
        })
        .await?;
    }
    let deploy =
        |topic: &str, name: &str, code, placement: &str, config: String| v1::DeployHandlerRequest {
            handler: Some(v1::Handler {
                topic: topic.into(),
                name: name.into(),
                code: Some(code),
                placement: placement.into(),
                config,
                ..Default::default()
            }),
            ..Default::default()
        };
    let names = node_names(&mut c).await?;
    let name_of = |peer: &str| names.get(peer).cloned().unwrap_or_else(|| "none".into());
    for request in [
        deploy(
            VIBRATION,
            "smooth",
            v1::handler::Code::Python(SMOOTH_PY.into()),
            "tier(edge) & attr(site=mill)",
            format!(r#"{{"to": "{SMOOTHED}"}}"#),
        ),
        // NanoLambda's detector keeps 32 readings; 8 here, for a short demo.
        deploy(
            SMOOTHED,
            "worn-bearing",
            v1::handler::Code::Native("vibration".into()),
            "tier(cloud)",
            format!(r#"{{"to": "{MOTOR_ALERTS}", "history": 8, "limit": 6.0}}"#),
        ),
    ] {
        let h = c
            .deploy_handler(request)
            .await?
            .into_inner()
            .handler
            .unwrap_or_default();
        let kind = match &h.code {
            Some(v1::handler::Code::Python(_)) => "Python".to_string(),
            Some(v1::handler::Code::Native(n)) => format!("native {n}"),
            None => String::new(),
        };
        println!(
            "  deployed {} on {} ({kind}), placement {}: runs on {}",
            h.name,
            h.topic,
            h.placement,
            name_of(&h.runs_on)
        );
    }

    // The sensor: a simulated microcontroller (the bridge's no_std core)
    // sending 5 readings a second through the gateway of the first node.
    let added = c
        .add_device(v1::AddDeviceRequest {
            id: "motor-3".into(),
            topics: vec![VIBRATION.into()],
            ..Default::default()
        })
        .await?
        .into_inner();
    let Some(gateway) = d.node.as_ref().and_then(|n| n.gateway()?.udp_addr()) else {
        return Err(Error::Internal("the first node has no gateway".into()));
    };
    let sensor = crate::devices::simulator::SimConfig {
        gateways: vec![crate::devices::transport::Transport::Udp(gateway)],
        id: "motor-3".into(),
        key: crate::devices::registry::parse_key(&added.key)?,
        topic: VIBRATION.into(),
        rate: 5.0,
        count: VIBRATION_READINGS,
        loss: 0.0,
        seed: 3,
        drain: Duration::from_secs(60),
        follow: None,
        expect_deliveries: 0,
        offload: None,
        reading: motor_reading,
    };
    println!(
        "  motor-3's vibration sensor, a simulated microcontroller, sends {VIBRATION_READINGS} \
         readings at 5/s through {}'s gateway (udp://{gateway})",
        d.node.as_ref().map(label).unwrap_or_default()
    );
    let sensor = tokio::spawn(crate::devices::simulator::run(sensor));
    let runs_on = |h: &v1::ListHandlersResponse| {
        h.handlers
            .first()
            .map(|h| h.runs_on.clone())
            .unwrap_or_default()
    };
    // Halfway, the node where smooth runs is stopped.
    let deadline = Instant::now() + Duration::from_secs(30);
    let stopped;
    loop {
        let i = c
            .latest(v1::LatestRequest {
                topic: VIBRATION.into(),
            })
            .await
            .map(|r| r.into_inner().last_seq)
            .unwrap_or(0);
        if Instant::now() > deadline {
            return Err(Error::Internal(format!(
                "the sensor's readings did not arrive ({i} of {VIBRATION_READINGS})"
            )));
        }
        if i >= VIBRATION_READINGS / 2 {
            let listed = c
                .list_handlers(v1::ListHandlersRequest {
                    topic: VIBRATION.into(),
                })
                .await?
                .into_inner();
            let peer = runs_on(&listed);
            let Some(at) = edges
                .iter()
                .position(|n| n.overlay().map(|o| o.peer_id().to_string()) == Some(peer.clone()))
            else {
                return Err(Error::Internal(format!(
                    "smooth runs on {peer}, not an edge node"
                )));
            };
            let node = edges.remove(at);
            println!(
                "  {} readings in; stopping {}, where smooth runs ...",
                i,
                label(&node)
            );
            stopped = Some(label(&node));
            node.stop().await?;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let report = sensor
        .await
        .map_err(|e| Error::Internal(format!("sensor task: {e}")))??;
    if report.acked.len() as u64 != VIBRATION_READINGS {
        return Err(Error::Internal(format!(
            "the sensor's readings were not all acknowledged: {report}"
        )));
    }
    println!(
        "  the sensor's {} readings acknowledged after commit (send to ack p50 {:.1} ms)",
        report.acked.len(),
        {
            let mut us = report.ack_us.clone();
            us.sort_unstable();
            f64::from(us.get(us.len() / 2).copied().unwrap_or(0)) / 1000.0
        }
    );
    let handlers = handlers_caught_up(&mut c, VIBRATION, Duration::from_secs(20)).await?;
    let now_on = handlers
        .first()
        .map(|h| name_of(&h.runs_on))
        .unwrap_or_default();
    let smoothed: Vec<serde_json::Value> = scan_all(&mut c, SMOOTHED)
        .await?
        .into_iter()
        .filter_map(|(_, p)| serde_json::from_slice(&p).ok())
        .collect();
    let order: Vec<u64> = smoothed
        .iter()
        .filter_map(|v| v["reading"].as_u64())
        .collect();
    let mut by_node: BTreeMap<String, usize> = BTreeMap::new();
    for v in &smoothed {
        *by_node
            .entry(name_of(v["node"].as_str().unwrap_or("")))
            .or_default() += 1;
    }
    let by_node: Vec<String> = by_node.iter().map(|(n, k)| format!("{k} on {n}")).collect();
    println!(
        "  smooth moved from {} to {now_on}; {SMOOTHED} holds {} results for {VIBRATION_READINGS} \
         readings ({}), in order, none twice: {}",
        stopped.clone().unwrap_or_default(),
        smoothed.len(),
        by_node.join(", "),
        order == (1..=VIBRATION_READINGS).collect::<Vec<_>>()
    );
    handlers_caught_up(&mut c, SMOOTHED, Duration::from_secs(10)).await?;
    let alerts = scan_all(&mut c, MOTOR_ALERTS).await?;
    for (seq, alert) in &alerts {
        println!(
            "  {MOTOR_ALERTS} #{seq}: {}",
            String::from_utf8_lossy(alert)
        );
    }
    if let Some((seq, _)) = alerts.first() {
        println!("  `woof trace {MOTOR_ALERTS} {seq}`: the alert, back to its reading");
        let t = c
            .trace(v1::TraceRequest {
                topic: MOTOR_ALERTS.into(),
                seq: *seq,
            })
            .await?
            .into_inner();
        for step in t.element.iter().chain(&t.upstream) {
            let e = step.element.clone().unwrap_or_default();
            let how = match &e.cause {
                Some(cause) => format!(
                    "made by {} from {}/{} on {}",
                    cause.handler,
                    cause.topic,
                    cause.seq,
                    name_of(&cause.node)
                ),
                None => "appended by motor-3's sensor".to_string(),
            };
            println!("    {}/{} {how}", step.topic, e.seq);
        }
    }
    let logs = c
        .handler_logs(v1::HandlerLogsRequest {
            topic: VIBRATION.into(),
            name: "smooth".into(),
            limit: 2,
            ..Default::default()
        })
        .await?
        .into_inner();
    println!(
        "  `woof handler logs {VIBRATION} smooth` ({}: {} runs, {} errors):",
        name_of(&logs.node),
        logs.runs,
        logs.errors
    );
    for i in &logs.invocations {
        println!(
            "    #{} seq={} {} in {} us, dispatched {} us after its commit",
            i.id, i.seq, i.outcome, i.duration_us, i.dispatch_us
        );
        for line in &i.logs {
            println!("      | {line}");
        }
    }
    // Back on its directory, so that the mill's topics keep a majority of
    // their replicas when the next part stops edge-b.
    if let Some(name) = stopped {
        let node = start_node_with(
            &d.dir,
            &name,
            Tier::Edge,
            &["site=mill"],
            &d.key,
            join.clone(),
        )
        .await?;
        println!("  {name} starts again on its directory and rejoins");
        edges.push(node);
    }
    d.others.append(&mut edges);
    Ok(())
}

/// Reading `n` (from 0) of motor-3's sensor: a healthy motor, then a
/// bearing wearing out.
fn motor_reading(_id: &str, n: u64) -> String {
    let i = n + 1;
    let mm_s = if i <= 18 {
        2.0 + (i % 3) as f64 * 0.4
    } else {
        2.0 + (i - 18) as f64 * 0.9
    };
    format!(r#"{{"motor": 3, "mm_s": {mm_s:.1}}}"#)
}

/// A microcontroller's topic, and how many readings it sends.
const PROBE_TOPIC: &str = "farm/north/probe-7";
/// The topic it follows: commands for it.
const PROBE_COMMANDS: &str = "cmd/probe-7";
const PROBE_READINGS: u64 = 60;

/// A simulated microcontroller (the bridge's `no_std` core, eight requests
/// of 128 bytes) registers, appends over a link that loses 10% of its
/// frames, and its gateway node is stopped midway: it moves to another
/// gateway, and its readings are in the topic once each, in its order.
async fn devices(d: &mut Demo) -> Result<()> {
    heading(
        "a microcontroller: bridge protocol over lossy UDP then TCP, durable acks, a gateway stopped",
    );
    let mut c = d.client.clone();
    for topic in [PROBE_TOPIC, PROBE_COMMANDS] {
        c.create_topic(v1::CreateTopicRequest {
            name: topic.into(),
            replication: 3,
            ..Default::default()
        })
        .await?;
    }
    for command in [
        "{\"valve\":\"open\"}",
        "{\"interval_s\":5}",
        "{\"valve\":\"closed\"}",
    ] {
        c.append(v1::AppendRequest {
            topic: PROBE_COMMANDS.into(),
            payload: command.into(),
            ..Default::default()
        })
        .await?;
    }
    let added = c
        .add_device(v1::AddDeviceRequest {
            id: "probe-7".into(),
            topics: vec!["farm/north/*".into()],
            subscribe: vec![PROBE_COMMANDS.into()],
            key: String::new(),
            fleet: 0,
        })
        .await?
        .into_inner();
    println!(
        "  `woof device add probe-7 --topics 'farm/north/*' --subscribe {PROBE_COMMANDS}`: key {}… \
         (shown once)",
        &added.key[..8]
    );
    // The mill's edge node (last to join) is the device's first gateway.
    let Some(mill) = d.others.pop() else {
        return Err(Error::Internal("no mill node".into()));
    };
    // Over UDP to the mill's node, over TCP to the next.
    use crate::devices::transport::Transport;
    let (Some(first), Some(second)) = (
        mill.gateway()
            .and_then(|g| g.udp_addr())
            .map(Transport::Udp),
        d.node
            .as_ref()
            .and_then(|n| n.gateway()?.tcp_addr())
            .map(Transport::Tcp),
    ) else {
        return Err(Error::Internal("the demo nodes have no gateways".into()));
    };
    let config = crate::devices::simulator::SimConfig {
        gateways: vec![first.clone(), second.clone()],
        id: "probe-7".into(),
        key: crate::devices::registry::parse_key(&added.key)?,
        topic: PROBE_TOPIC.into(),
        rate: 20.0,
        count: PROBE_READINGS,
        loss: 0.1,
        seed: 42,
        drain: Duration::from_secs(60),
        follow: Some(PROBE_COMMANDS.into()),
        expect_deliveries: 3,
        offload: None,
        reading: crate::devices::simulator::default_reading,
    };
    println!(
        "  probe-7 follows {PROBE_COMMANDS} and sends {PROBE_READINGS} readings at 20/s to {} \
         ({first}; then {second}), losing 10% of frames each way",
        label(&mill)
    );
    let run = tokio::spawn(crate::devices::simulator::run(config));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    println!("  stopping {}, its gateway ...", label(&mill));
    mill.stop().await?;
    let report = run
        .await
        .map_err(|e| Error::Internal(format!("device task: {e}")))??;
    for line in report.to_string().lines() {
        println!("  {line}");
    }
    for (seq, command) in &report.delivered {
        println!(
            "    probe-7 got {PROBE_COMMANDS} #{seq}: {}",
            String::from_utf8_lossy(command)
        );
    }
    let held = scan_all(&mut c, PROBE_TOPIC).await?;
    let numbers: Vec<u64> = held
        .iter()
        .filter_map(|(_, p)| serde_json::from_slice::<serde_json::Value>(p).ok()?["n"].as_u64())
        .collect();
    let in_order = numbers.windows(2).all(|w| w[0] < w[1]);
    let acked_held = report.acked.iter().all(|(n, seq)| {
        held.iter()
            .any(|(s, p)| s == seq && p.ends_with(format!(":{n}}}").as_bytes()))
    });
    println!(
        "  {PROBE_TOPIC} holds {} readings: every acknowledged one once{}, in the device's order{}",
        held.len(),
        if acked_held { "" } else { " (NOT!)" },
        if in_order { "" } else { " (NOT!)" }
    );
    let commands_in_order = report.delivered.iter().map(|(s, _)| *s).eq(1..=3);
    if !(acked_held && in_order && report.acked.len() as u64 == PROBE_READINGS && commands_in_order)
    {
        return Err(Error::Internal(format!(
            "the device's readings are not all acknowledged once, in order: {report}"
        )));
    }
    Ok(())
}

/// Two native handlers on the readings: `threshold` alerts when moisture
/// rises above 34% (and again when it is back below 32%), `forward` copies
/// every reading to an archive. Both start with the first reading.
async fn handlers(d: &mut Demo) -> Result<()> {
    heading("handlers: code that runs once for every committed reading, on the topic's leader");
    for topic in [ALERTS, ARCHIVE] {
        d.client
            .create_topic(v1::CreateTopicRequest {
                name: topic.into(),
                ..Default::default()
            })
            .await?;
    }
    let deploy = |name: &str, native: &str, config: String| v1::DeployHandlerRequest {
        handler: Some(v1::Handler {
            topic: TOPIC.into(),
            name: name.into(),
            code: Some(v1::handler::Code::Native(native.into())),
            config,
            ..Default::default()
        }),
        from_earliest: true,
        ..Default::default()
    };
    for request in [
        deploy(
            "dry-alarm",
            "threshold",
            format!(r#"{{"to": "{ALERTS}", "field": "moisture_pct", "above": 34, "below": 32}}"#),
        ),
        deploy("archive", "forward", format!(r#"{{"to": "{ARCHIVE}"}}"#)),
    ] {
        let h = d
            .client
            .deploy_handler(request)
            .await?
            .into_inner()
            .handler
            .unwrap_or_default();
        println!(
            "  deployed {} (native {}), from #{}: {}",
            h.name,
            match &h.code {
                Some(v1::handler::Code::Native(n)) => n.as_str(),
                _ => "?",
            },
            h.takes_over_at,
            h.config
        );
    }
    let handlers = handlers_caught_up(&mut d.client, TOPIC, Duration::from_secs(10)).await?;
    for h in &handlers {
        println!("  {}: done #{}, lag {}", h.name, h.done, h.lag);
    }
    for (seq, alert) in scan_all(&mut d.client, ALERTS).await? {
        println!("  {ALERTS} #{seq}: {}", String::from_utf8_lossy(&alert));
    }
    let archived = scan_all(&mut d.client, ARCHIVE).await?.len();
    println!("  {ARCHIVE} holds {archived} copies of the readings");
    Ok(())
}

/// While a sensor keeps appending through another node, the topic's leader
/// is restarted on purpose (it hands its groups over first), then the next
/// leader goes down as in a crash (the others elect a leader after its
/// lease): a new leader takes over each time, nothing acknowledged is
/// lost.
async fn failover(d: &mut Demo) -> Result<()> {
    heading(
        "failover: the topic's leader restarts on purpose, then another goes down, while the sensor keeps appending",
    );
    let mut nodes: Vec<Node> = d.node.take().into_iter().collect();
    nodes.append(&mut d.others);
    let names = node_names(&mut d.client).await?;
    let name_of = |peer: &str| names.get(peer).cloned().unwrap_or_else(|| peer.to_string());
    let info = describe(&mut d.client, TOPIC).await?;
    let replicas: Vec<String> = info.replicas.iter().map(|p| name_of(p)).collect();
    println!(
        "  {TOPIC}: replicas {}; leader {}",
        replicas.join(", "),
        name_of(&info.leader)
    );
    let peer_of = |n: &Node| {
        n.overlay()
            .map(|o| o.peer_id().to_string())
            .unwrap_or_default()
    };
    let leader_at = |nodes: &[Node], leader: &str| {
        nodes
            .iter()
            .position(|n| peer_of(n) == leader)
            .ok_or_else(|| Error::Internal("the leader is not a demo node".into()))
    };
    let leader = leader_at(&nodes, &info.leader)?;
    let via = (leader + 1) % nodes.len();
    println!("  the sensor now talks to {}", label(&nodes[via]));
    // After a failure it moves on to the next node.
    let urls: Vec<String> = (0..nodes.len())
        .map(|i| nodes[(via + i) % nodes.len()].url())
        .collect();
    // Asks who leads until the crash (it is not the node restarted).
    let mut ask = connect(&nodes[via].url()).await?;
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let sensor = tokio::spawn(sensor(urls, stopping));
    tokio::time::sleep(Duration::from_millis(600)).await;

    // A planned restart (an upgrade): the node hands its groups over first.
    let restarted = nodes.remove(leader);
    let (name, tier) = (label(&restarted), restarted.info().tier);
    println!(
        "  restarting the leader's node ({name}) on purpose: it hands its groups over first ..."
    );
    let planned = Instant::now();
    restarted.stop().await?;
    let handed_to = describe(&mut ask, TOPIC).await?.leader;
    let join = nodes.first().map(overlay_addr).unwrap_or_default();
    let http = if name == "edge" { d.dashboard } else { None };
    nodes.push(start_node(&d.dir, &name, tier, &d.key, join, http).await?);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // A crash: the new leader's node goes down without a word.
    let leader = leader_at(&nodes, &describe(&mut ask, TOPIC).await?.leader)?;
    let crashed = nodes.remove(leader);
    println!(
        "  {name} is back; now {}, the leader, goes down as in a crash (no hand-over) ...",
        label(&crashed)
    );
    let down = Instant::now();
    crashed.stop_abruptly().await?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.send_replace(true);
    let acked = sensor
        .await
        .map_err(|e| Error::Internal(format!("sensor task: {e}")))??;
    let (Some(first), Some(last)) = (acked.first(), acked.last()) else {
        return Err(Error::Internal("the sensor got no acknowledgement".into()));
    };
    if last.1 < down {
        return Err(Error::Internal(
            "no append succeeded after the crash".into(),
        ));
    }
    // The longest wait between two acknowledgements from `from` to `to`
    // (the first ones after `from` may still come from the old leader, on
    // its way down), and the sequence number that ended it.
    let longest = |from: Instant, to: Instant| {
        acked
            .windows(2)
            .filter(|w| w[1].1 > from && w[1].1 < to)
            .map(|w| (w[1].1 - w[0].1, w[1].0))
            .max()
            .unwrap_or_default()
    };
    let (planned_gap, _) = longest(planned, down);
    let (gap, resumed) = longest(down, Instant::now());
    let now = describe(&mut connect(&nodes[0].url()).await?, TOPIC).await?;
    println!(
        "  the planned restart: {} took over; appends waited at most {:.2} s",
        name_of(&handed_to),
        planned_gap.as_secs_f64()
    );
    println!(
        "  the crash: {} took over after an election; appends waited at most {:.2} s \
         (until #{resumed}); the sensor went on from #{} to #{}",
        name_of(&now.leader),
        gap.as_secs_f64(),
        first.0,
        last.0
    );
    // Each survivor answers the same elements; none of the acknowledged is missing.
    for n in &nodes {
        let mut c = connect(&n.url()).await?;
        let held = scan_seqs(&mut c).await?;
        let missing = acked.iter().filter(|a| !held.contains(&a.0)).count();
        println!(
            "  {:<8} holds #1..#{} ({} elements), acknowledged but missing: {missing}",
            label(n),
            held.last().copied().unwrap_or(0),
            held.len()
        );
    }
    // The handlers ran on the old leader; they moved with the leadership.
    let mut c = connect(&nodes[0].url()).await?;
    let handlers = handlers_caught_up(&mut c, TOPIC, Duration::from_secs(15)).await?;
    let readings: Vec<Vec<u8>> = scan_all(&mut c, TOPIC)
        .await?
        .into_iter()
        .map(|e| e.1)
        .collect();
    let archived: Vec<Vec<u8>> = scan_all(&mut c, ARCHIVE)
        .await?
        .into_iter()
        .map(|e| e.1)
        .collect();
    if let Some(h) = handlers.iter().find(|h| h.name == "archive") {
        println!(
            "  handler archive moved to the new leader and is done with #{} (lag {}); \
             {ARCHIVE} holds {} copies of {} readings, in order, none twice: {}",
            h.done,
            h.lag,
            archived.len(),
            readings.len(),
            archived == readings
        );
    }
    d.others = nodes;
    Ok(())
}

/// Appends a reading every 50 ms with a producer id, retrying each until it
/// is acknowledged (safe: a retry never appends twice), through the first
/// of `urls` that answers (after a failure, the next one, as a client with
/// a list of servers does); returns each acknowledged sequence number and
/// when it was acknowledged.
async fn sensor(
    urls: Vec<String>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Vec<(u64, Instant)>> {
    let mut acked = Vec::new();
    let mut seq = 0;
    let mut at = 0;
    let mut client: Option<crate::cli::Client> = None;
    while !*stop.borrow() {
        seq += 1;
        let mut tries = 0;
        loop {
            let answer = match client.as_mut() {
                Some(c) => c
                    .append(v1::AppendRequest {
                        topic: TOPIC.into(),
                        payload: format!("{{\"probe\":\"north-9\",\"n\":{seq}}}").into(),
                        producer: Some(v1::Producer {
                            id: "probe-north-9".into(),
                            seq,
                        }),
                        handler: Default::default(),
                    })
                    .await
                    .map_err(Error::from),
                None => match connect(&urls[at % urls.len()]).await {
                    Ok(c) => {
                        client = Some(c);
                        continue;
                    }
                    Err(e) => Err(e),
                },
            };
            match answer {
                Ok(r) => {
                    acked.push((r.into_inner().seq, Instant::now()));
                    break;
                }
                Err(e) if tries < 100 => {
                    tries += 1;
                    tracing::debug!("sensor retries: {e}");
                    // The next node, in case this one is gone.
                    client = None;
                    at += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(acked)
}

/// Peer id -> the demo name of each node, from cluster status.
async fn node_names(client: &mut crate::cli::Client) -> Result<BTreeMap<String, String>> {
    let nodes = client
        .cluster_status(v1::ClusterStatusRequest {})
        .await?
        .into_inner()
        .nodes;
    Ok(nodes
        .into_iter()
        .map(|n| {
            let name = n.attrs.get("name").cloned().unwrap_or_default();
            (n.peer_id, name)
        })
        .collect())
}

async fn describe(client: &mut crate::cli::Client, name: &str) -> Result<v1::TopicInfo> {
    Ok(client
        .describe_topic(v1::DescribeTopicRequest { name: name.into() })
        .await?
        .into_inner()
        .topic
        .unwrap_or_default())
}

/// Every sequence number the demo topic holds, by scans.
async fn scan_seqs(client: &mut crate::cli::Client) -> Result<Vec<u64>> {
    Ok(scan_all(client, TOPIC)
        .await?
        .into_iter()
        .map(|e| e.0)
        .collect())
}

/// Every element of `topic`: (seq, payload).
async fn scan_all(client: &mut crate::cli::Client, topic: &str) -> Result<Vec<(u64, Vec<u8>)>> {
    let mut all = Vec::new();
    let mut next = 1;
    loop {
        let r = client
            .scan(v1::ScanRequest {
                topic: topic.into(),
                from_seq: next,
                limit: 1000,
            })
            .await?
            .into_inner();
        if r.elements.is_empty() {
            return Ok(all);
        }
        all.extend(r.elements.into_iter().map(|e| (e.seq, e.payload.to_vec())));
        next = r.next_seq;
    }
}

/// Waits (up to `within`) until every handler of `topic` has finished every
/// element; returns them as they then stand.
async fn handlers_caught_up(
    client: &mut crate::cli::Client,
    topic: &str,
    within: Duration,
) -> Result<Vec<v1::Handler>> {
    let deadline = Instant::now() + within;
    loop {
        let handlers = client
            .list_handlers(v1::ListHandlersRequest {
                topic: topic.into(),
            })
            .await?
            .into_inner()
            .handlers;
        if handlers.iter().all(|h| h.lag == 0) || Instant::now() > deadline {
            return Ok(handlers);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The error a request that should fail gave, as the CLI would print it.
fn refusal<T>(answer: std::result::Result<T, tonic::Status>) -> Result<Error> {
    match answer {
        Err(status) => Ok(Error::Rpc(status)),
        Ok(_) => Err(Error::Internal(
            "the node accepted a request it should have refused".into(),
        )),
    }
}

/// A demo node's name (its `name` attribute).
fn label(node: &Node) -> String {
    node.info().attrs.get("name").cloned().unwrap_or_default()
}
