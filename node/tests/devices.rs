//! Microcontrollers through the bridge gateway, end to end: real nodes on
//! loopback, devices running the `no_std` core over UDP.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use woof_mcu_bridge::session::{Config, Event, Session};
use woof_mcu_bridge::wire::{self, Topic};
use woof_node::devices::simulator::{self, SimConfig, SimReport};
use woof_node::devices::transport::Transport;

fn sim(gateways: Vec<SocketAddr>, id: &str, key: [u8; 16], topic: &str) -> SimConfig {
    SimConfig {
        gateways: gateways.into_iter().map(Transport::Udp).collect(),
        id: id.into(),
        key,
        topic: topic.into(),
        rate: 20.0,
        count: 100,
        loss: 0.0,
        seed: 7,
        drain: Duration::from_secs(90),
        follow: None,
        expect_deliveries: 0,
        offload: None,
        reading: simulator::default_reading,
    }
}

/// The readings of `device` in `topic`, as (element seq, reading number).
async fn readings(client: &mut Client, topic: &str, device: &str) -> Vec<(u64, u64)> {
    scan_all(client, topic, 1)
        .await
        .into_iter()
        .filter_map(|e| {
            let v: serde_json::Value = serde_json::from_slice(&e.payload).ok()?;
            (v["device"] == device).then(|| (e.seq, v["n"].as_u64().unwrap()))
        })
        .collect()
}

/// Every reading the device saw acknowledged is in the topic once, at the
/// sequence number its ack named; no reading is there twice; and the
/// device's readings are in its order.
fn assert_once_in_order(report: &SimReport, held: &[(u64, u64)]) {
    let mut seen = BTreeMap::new();
    for &(seq, n) in held {
        assert!(
            seen.insert(n, seq).is_none(),
            "reading {n} written twice: {held:?}"
        );
    }
    for (n, seq) in &report.acked {
        assert_eq!(
            seen.get(n),
            Some(seq),
            "acknowledged reading {n} not at {seq}"
        );
    }
    assert!(
        held.windows(2).all(|w| w[0].1 < w[1].1),
        "readings out of the device's order: {held:?}"
    );
}

/// Three nodes, two of them gateways; a device appends over a link that
/// loses 10% of the frames each way, and the gateway it speaks to is
/// SIGKILLed midway: it moves to the other, and every acknowledged reading
/// is in the topic once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_survive_loss_and_a_gateway_kill_exactly_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let first = start_node(&dir.path().join("n0"), &key, &[]);
    let join = overlay_addr(&first.url);
    let ports = [free_udp_port(), free_udp_port()];
    let mut gateways = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let bridge = format!("udp://127.0.0.1:{port}");
        gateways.push(start_node(
            &dir.path().join(format!("n{}", i + 1)),
            &key,
            &["--join", &join, "--bridge-listen", &bridge],
        ));
    }
    let urls = [&first.url, &gateways[0].url, &gateways[1].url];
    wait_alive(&urls.map(String::as_str), 3);
    let mut client = connect(&first.url).await;
    create_replicated(&mut client, "farm/north/soil", 3, "").await;
    let device_key = add_device(&first.url, "soil-1", "farm/north/*", &[]);
    // Listed without keys; removed once, refused the second time.
    add_device(&first.url, "soil-2", "farm/**", &[]);
    let out = woof(&["--server", &first.url, "device", "list"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("soil-1") && listed.contains("soil-2"),
        "{listed}"
    );
    assert!(!listed.contains(&woof_node::devices::registry::key_hex(&device_key)));
    assert!(
        woof(&["--server", &first.url, "device", "rm", "soil-2"])
            .status
            .success()
    );
    let out = woof(&["--server", &first.url, "device", "rm", "soil-2"]);
    assert!(!out.status.success(), "a second rm is refused");
    let out = woof(&[
        "--server", &first.url, "device", "add", "none", "--topics", "farm/**", "--fleet", "0",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--fleet"), "{err}");
    // Nobody reads the registry (it holds the keys) or writes woof's topics.
    assert!(get(&mut client, "_woof/devices", 1).await.is_err());
    let out = woof(&["--server", &first.url, "append", "_woof/devices", "x"]);
    assert!(!out.status.success());
    // Nor can a handler be bound to it, to copy its elements out.
    let out = woof(&[
        "--server",
        &first.url,
        "handler",
        "deploy",
        "_woof/devices",
        "leak",
        "--native",
        "forward",
        "--config",
        r#"{"to":"farm/north/soil"}"#,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("woof's own"), "{err}");

    let addrs: Vec<SocketAddr> = ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}").parse().unwrap())
        .collect();
    let mut config = sim(addrs, "soil-1", device_key, "farm/north/soil");
    config.loss = 0.1;
    config.count = 200;
    let run = tokio::spawn(simulator::run(config));
    tokio::time::sleep(Duration::from_secs(4)).await;
    gateways[0].kill_hard();
    let report = run.await.unwrap().unwrap();
    eprintln!("{report}");
    assert!(report.failovers >= 1, "the device never moved: {report}");
    assert!(
        report.lost_up > 0 && report.lost_down > 0,
        "the link lost nothing"
    );
    assert!(report.rejected.is_empty(), "{report:?}");
    assert_eq!(
        report.acked.len() + report.gave_up.len(),
        200,
        "every reading answered or given up: {report}"
    );
    assert!(report.acked.len() >= 195, "{report}");
    let held = readings(&mut client, "farm/north/soil", "soil-1").await;
    assert_once_in_order(&report, &held);
}

/// Hostile input at one in-process gateway: wrong keys, replays, topics
/// outside the registration, garbage, truncated and oversized frames, and a
/// flood from one address; each is dropped or refused and counted, and an
/// honest device's readings still all land. Then a device follows a topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_drops_and_counts_bad_frames_and_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let cluster_key = woof_overlay::ClusterKey::generate();
    let port = free_udp_port();
    let mut config = woof_node::config::NodeConfig::standalone(
        dir.path().into(),
        "127.0.0.1:0".parse().unwrap(),
    );
    config.cluster = Some(woof_node::config::ClusterConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        join: vec![],
        key: cluster_key,
        timing: woof_overlay::Timing::default(),
        join_timeout: Some(Duration::from_secs(10)),
        repair_after: woof_node::config::REPAIR_AFTER_DEFAULT,
        link_port: woof_overlay::LinkPort::Any,
        balance_leaders: true,
    });
    let gateway: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    config.bridge_listen = vec![Transport::Udp(gateway)];
    let node = woof_node::server::Node::start(&config).await.unwrap();
    let url = node.url();
    let mut client = connect(&url).await;
    create_replicated(&mut client, "plant/pump", 1, "").await;
    create_replicated(&mut client, "plant/secret", 1, "").await;
    let key = add_device(&url, "pump-1", "plant/pump", &[]);
    let counts = || {
        let c = node.gateway().unwrap().counts();
        use woof_node::devices::gateway::Counts;
        (
            Counts::get(&c.dropped),
            Counts::get(&c.refused),
            Counts::get(&c.rate_limited),
            Counts::get(&c.duplicates),
        )
    };

    // A wrong key: its hello never verifies, nothing is acknowledged.
    let mut wrong = sim(vec![gateway], "pump-1", [0x55; 16], "plant/pump");
    wrong.count = 1;
    wrong.drain = Duration::from_secs(4);
    let before = counts().0;
    let r = simulator::run(wrong).await.unwrap();
    assert!(r.acked.is_empty(), "{r}");
    assert!(counts().0 > before, "the forged hellos were not counted");

    // A topic outside the registration is refused (FORBIDDEN), not written.
    let mut outside = sim(vec![gateway], "pump-1", key, "plant/secret");
    outside.count = 3;
    let r = simulator::run(outside).await.unwrap();
    assert_eq!(r.rejected.len(), 3, "{r}");
    assert!(
        r.rejected.values().all(|&c| c == wire::code::FORBIDDEN),
        "{r:?}"
    );
    assert_eq!(latest(&mut client, "plant/secret").await.last_seq, 0);

    // Garbage, truncated and oversized frames, and a replayed append, from a
    // raw socket speaking the protocol by hand.
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let before = counts();
    for frame in [
        vec![0xff; 40],
        vec![0x10],
        vec![],
        vec![0x12; wire::FRAME_LEN_MAX + 200],
    ] {
        socket.send_to(&frame, gateway).await.unwrap();
    }
    let mut device = Session::<4, 128>::new(
        &Config {
            device_id: b"pump-1",
            key,
            boot_id: 0xb007,
            caps: 0,
            ping_interval_ms: 30_000,
        },
        0,
        9,
    )
    .unwrap();
    let mut out = [0u8; 1024];
    let mut buf = [0u8; 1100];
    // Hello, and its ack.
    let len = device.poll_transmit(0, &mut out).unwrap().unwrap();
    socket.send_to(&out[..len], gateway).await.unwrap();
    let n = recv(&socket, &mut buf).await;
    assert!(matches!(
        device.handle_input(1, &mut buf[..n]),
        Ok(Some(Event::Connected { .. }))
    ));
    device.append(Topic::Index(0), b"{\"n\":1}", 3).unwrap();
    // The device pings first (proving its new session), then appends.
    let mut append = Vec::new();
    let mut now = 2;
    let topic_seq = loop {
        while let Some(len) = device.poll_transmit(now, &mut out).unwrap() {
            if wire::Frame::new_checked(&out[..len]).unwrap().frame_type()
                == Some(wire::Type::Append)
            {
                append = out[..len].to_vec();
            }
            socket.send_to(&out[..len], gateway).await.unwrap();
        }
        let n = recv(&socket, &mut buf).await;
        now += 1;
        if let Ok(Some(Event::Acked { topic_seq, .. })) = device.handle_input(now, &mut buf[..n]) {
            break topic_seq;
        }
    };
    assert!(!append.is_empty());
    // The same frame again (a replay, or a retransmission): answered again,
    // never written again.
    socket.send_to(&append, gateway).await.unwrap();
    let _ = recv(&socket, &mut buf).await;
    // A forged copy: one bit of the body flipped.
    let mut forged = append.clone();
    forged[3] ^= 1;
    socket.send_to(&forged, gateway).await.unwrap();
    wait_for(|| counts().0 >= before.0 + 5).await;
    let after = counts();
    assert!(
        after.0 >= before.0 + 5,
        "garbage, short, long and forged frames dropped: {after:?}"
    );
    assert_eq!(after.3, before.3 + 1, "the replayed append is a duplicate");
    assert_eq!(latest(&mut client, "plant/pump").await.last_seq, topic_seq);

    // A flood of 100,000 frames from one address while an honest device
    // appends: the flood is rate-limited, the device's readings all land.
    let honest = tokio::spawn(simulator::run(sim(
        vec![gateway],
        "pump-1",
        key,
        "plant/pump",
    )));
    let flood = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..100_000u32 {
        let mut frame = vec![0x12, 0x05];
        frame.extend_from_slice(&i.to_le_bytes());
        frame.extend_from_slice(&[0; 16]);
        let _ = flood.send_to(&frame, gateway).await;
        if i % 1000 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let r = honest.await.unwrap().unwrap();
    assert_eq!(r.acked.len(), 100, "{r}");
    assert!(counts().2 > 0, "the flood was not rate-limited");
    let held = readings(&mut client, "plant/pump", "pump-1").await;
    assert_once_in_order(&r, &held);
    // The node still answers.
    assert!(latest(&mut client, "plant/pump").await.last_seq >= 101);

    // A device that follows a topic gets every element once, in order, over
    // a link that loses 20% of the frames each way (a delivery whose ack is
    // lost is sent again, the same frame); elements appended while it
    // follows come too.
    create_replicated(&mut client, "plant/cmd", 1, "").await;
    for i in 1..=10 {
        common::append(&mut client, "plant/cmd", format!("cmd {i}")).await;
    }
    let valve = add_device(
        &url,
        "valve-1",
        "plant/valve",
        &["--subscribe", "plant/cmd"],
    );
    let mut follow = sim(vec![gateway], "valve-1", valve, "plant/valve");
    follow.count = 0;
    follow.loss = 0.2;
    follow.follow = Some("plant/cmd".into());
    follow.expect_deliveries = 20;
    follow.drain = Duration::from_secs(60);
    let run = tokio::spawn(simulator::run(follow));
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 11..=20 {
        common::append(&mut client, "plant/cmd", format!("cmd {i}")).await;
    }
    let r = run.await.unwrap().unwrap();
    assert_eq!(r.subscribed_from, Some(1), "{r}");
    let got: Vec<(u64, String)> = r
        .delivered
        .iter()
        .map(|(seq, p)| (*seq, String::from_utf8_lossy(p).into_owned()))
        .collect();
    let want: Vec<(u64, String)> = (1..=20).map(|i| (i, format!("cmd {i}"))).collect();
    assert_eq!(got, want, "{r}");
    // Following a topic outside the registration is refused.
    let mut nosy = sim(vec![gateway], "pump-1", key, "plant/pump");
    nosy.count = 0;
    nosy.follow = Some("plant/cmd".into());
    nosy.expect_deliveries = 1;
    nosy.drain = Duration::from_secs(20);
    let r = simulator::run(nosy).await.unwrap();
    assert_eq!(r.subscribe_refused, Some(wire::code::FORBIDDEN), "{r}");
    assert!(r.delivered.is_empty());
    node.stop().await.unwrap();
}

async fn recv(socket: &tokio::net::UdpSocket, buf: &mut [u8]) -> usize {
    tokio::time::timeout(Duration::from_secs(10), socket.recv_from(buf))
        .await
        .expect("no answer from the gateway")
        .unwrap()
        .0
}

async fn wait_for(mut f: impl FnMut() -> bool) {
    for _ in 0..100 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// 200 simulated devices at 5 readings a second for 20 s, through the
/// gateways of a 3-node cluster, over links that lose 10% of the frames each
/// way: every reading a device saw acknowledged is in the topic once, and
/// each device's readings are in its order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_devices_over_lossy_links_each_reading_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let ports = [free_udp_port(), free_udp_port(), free_udp_port()];
    let bridge = |i: usize| format!("udp://127.0.0.1:{}", ports[i]);
    let first = start_node(
        &dir.path().join("n0"),
        &key,
        &["--bridge-listen", &bridge(0)],
    );
    let join = overlay_addr(&first.url);
    let mut nodes = vec![first];
    for i in 1..3 {
        nodes.push(start_node(
            &dir.path().join(format!("n{i}")),
            &key,
            &["--join", &join, "--bridge-listen", &bridge(i)],
        ));
    }
    let urls: Vec<&str> = nodes.iter().map(|n| n.url.as_str()).collect();
    wait_alive(&urls, 3);
    let mut client = connect(&nodes[0].url).await;
    create_replicated(&mut client, "farm/fleet", 3, "").await;
    let fleet_key = add_device(&nodes[0].url, "probe", "farm/**", &["--fleet", "200"]);

    let mut config = sim(
        ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}").parse().unwrap())
            .collect(),
        "probe",
        fleet_key,
        "farm/fleet",
    );
    config.rate = 5.0;
    config.count = 100;
    config.loss = 0.1;
    let report = simulator::run_fleet(config, 200).await.unwrap();
    eprintln!("{report}");
    assert_eq!(report.devices.len(), 200);
    let held = scan_all(&mut client, "farm/fleet", 1).await;
    let mut by_device: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for e in held {
        let v: serde_json::Value = serde_json::from_slice(&e.payload).unwrap();
        by_device
            .entry(v["device"].as_str().unwrap().to_string())
            .or_default()
            .push((e.seq, v["n"].as_u64().unwrap()));
    }
    for (id, r) in &report.devices {
        assert!(r.rejected.is_empty(), "{id}: {r}");
        assert_eq!(r.acked.len() + r.gave_up.len(), 100, "{id}: {r}");
        assert_once_in_order(r, by_device.get(id).map_or(&[][..], Vec::as_slice));
    }
    // Losses cost retransmissions, not readings.
    assert!(report.acked() >= 19_900, "{report}");
}

/// `woof --json device sim` with an offloaded function: the summary.
fn sim_offload(gateway: &str, id: &str, key: &[u8; 16], extra: &[&str]) -> serde_json::Value {
    sim_offload_n(gateway, id, key, 48, extra)
}

/// [`sim_offload`] with `count` invocations.
fn sim_offload_n(
    gateway: &str,
    id: &str,
    key: &[u8; 16],
    count: u32,
    extra: &[&str],
) -> serde_json::Value {
    let count = count.to_string();
    let key = woof_node::devices::registry::key_hex(key);
    let mut args = vec![
        "--json",
        "device",
        "sim",
        "--gateway",
        gateway,
        "--id",
        id,
        "--key",
        &key,
        "--topic",
        "mill/vibration",
        "--rate",
        "20/s",
        "--count",
        &count,
        "--drain",
        "60",
    ];
    args.extend_from_slice(extra);
    let out = woof(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "device sim {extra:?}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(last).unwrap()["offload"].clone()
}

/// A device offloads a function to its gateway or runs it itself, by
/// measured time to result: a native handler and a Python one answer with
/// what the device's own run gives, the chooser takes the gateway when the
/// device is slow and itself when it is fast (re-probing the other side
/// every 16 invocations), and a handler the device may not reach fails
/// without stopping it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offloaded_calls_give_the_local_result_and_the_faster_side_is_chosen() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let port = free_udp_port();
    let gateway = format!("udp://127.0.0.1:{port}");
    let node = start_node(&dir.path().join("n0"), &key, &["--bridge-listen", &gateway]);
    wait_alive(&[&node.url], 1);
    let mut client = connect(&node.url).await;
    create_replicated(&mut client, "mill/vibration", 1, "").await;
    create_replicated(&mut client, "mill/other", 1, "").await;
    let deploy = |topic: &str, name: &str, code: &[&str]| {
        let mut args = vec!["--server", &node.url, "handler", "deploy", topic, name];
        args.extend_from_slice(code);
        let out = woof(&args);
        assert!(
            out.status.success(),
            "deploy {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let stats = r#"{"to":"mill/stats","field":"n","count":8}"#;
    deploy(
        "mill/vibration",
        "stats",
        &["--native", "window", "--config", stats],
    );
    let script = dir.path().join("echo.py");
    std::fs::write(
        &script,
        "def handle(ctx, seq, payload):\n    ctx.append('mill/echo', payload)\n",
    )
    .unwrap();
    deploy(
        "mill/vibration",
        "echo",
        &["--python", script.to_str().unwrap()],
    );
    deploy(
        "mill/other",
        "hidden",
        &["--native", "window", "--config", stats],
    );
    let device_key = add_device(&node.url, "mill-1", "mill/vibration", &[]);

    // A slow device (200 ms a run): the gateway answers sooner, so it takes
    // nearly every call, and each answer is the device's own result.
    let slow = sim_offload(
        &gateway,
        "mill-1",
        &device_key,
        &[
            "--offload",
            "stats",
            "--local",
            "window",
            "--local-config",
            stats,
            "--local-cost-ms",
            "200",
        ],
    );
    eprintln!("slow device: {slow}");
    assert_eq!(slow["mismatched"], 0, "{slow}");
    assert_eq!(slow["failed"], 0, "{slow}");
    let (local, remote) = (
        slow["local"].as_u64().unwrap(),
        slow["remote"].as_u64().unwrap(),
    );
    assert_eq!(local + remote, 48, "{slow}");
    assert!(
        remote >= 40 && local >= 3,
        "offloaded while slower, re-probed: {slow}"
    );

    // A fast device: it keeps its calls, trying the gateway once per 16.
    let fast = sim_offload(
        &gateway,
        "mill-1",
        &device_key,
        &[
            "--offload",
            "stats",
            "--local",
            "window",
            "--local-config",
            stats,
        ],
    );
    eprintln!("fast device: {fast}");
    let (local, remote) = (
        fast["local"].as_u64().unwrap(),
        fast["remote"].as_u64().unwrap(),
    );
    assert!(
        local >= 40 && remote >= 3,
        "kept local while faster: {fast}"
    );
    assert_eq!(fast["mismatched"], 0, "{fast}");

    // A Python handler gives what the device's own `forward` gives. Its
    // worker starts at the first call, which may take longer than a local
    // run: a first few calls warm it, so that the run below measures calls.
    let python = [
        "--offload",
        "echo",
        "--local",
        "forward",
        "--local-config",
        r#"{"to":"mill/echo"}"#,
    ];
    sim_offload_n(&gateway, "mill-1", &device_key, 4, &python);
    let echo = sim_offload(
        &gateway,
        "mill-1",
        &device_key,
        &[
            "--offload",
            "echo",
            "--local",
            "forward",
            "--local-config",
            r#"{"to":"mill/echo"}"#,
            "--local-cost-ms",
            "200",
        ],
    );
    eprintln!("python: {echo}");
    assert_eq!(echo["mismatched"], 0, "{echo}");
    assert!(echo["remote"].as_u64().unwrap() >= 40, "{echo}");

    // A handler of a topic outside the registration is not found: the
    // device counts the failures and runs the function itself.
    let hidden = sim_offload(
        &gateway,
        "mill-1",
        &device_key,
        &[
            "--offload",
            "hidden",
            "--local",
            "window",
            "--local-config",
            stats,
            "--local-cost-ms",
            "5",
        ],
    );
    eprintln!("hidden: {hidden}");
    assert_eq!(hidden["remote"], 0, "{hidden}");
    assert!(hidden["failed"].as_u64().unwrap() >= 3, "{hidden}");
    assert_eq!(
        hidden["local"].as_u64().unwrap() + hidden["failed"].as_u64().unwrap(),
        48,
        "{hidden}"
    );
    // Nothing was appended by the calls: no reading, no handler output.
    assert_eq!(latest(&mut client, "mill/vibration").await.last_seq, 0);
}

/// A device over a TCP connection and one over a serial line (a
/// pseudo-terminal) reach the same gateway: each reading is acknowledged
/// after commit and held once, in order; garbage and an overlong run on a
/// stream are dropped and counted, and the stream keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_serial_links_carry_readings_once_and_drop_garbage() {
    use tokio::io::AsyncWriteExt;
    use woof_mcu_bridge::stream::END;
    use woof_node::devices::transport::{self, Serial};

    let dir = tempfile::tempdir().unwrap();
    // The serial line: a pseudo-terminal, the gateway on its named side.
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty fills both descriptors; the names are not asked for.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    let slave_path = std::fs::read_link(format!("/proc/self/fd/{slave}")).unwrap();
    // SAFETY: both descriptors are ours, open, and owned by one File each.
    let (master, _slave) = unsafe {
        use std::os::fd::FromRawFd;
        (
            std::fs::File::from_raw_fd(master),
            std::fs::File::from_raw_fd(slave),
        )
    };

    let mut config = woof_node::config::NodeConfig::standalone(
        dir.path().into(),
        "127.0.0.1:0".parse().unwrap(),
    );
    config.cluster = Some(woof_node::config::ClusterConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        join: vec![],
        key: woof_overlay::ClusterKey::generate(),
        timing: woof_overlay::Timing::default(),
        join_timeout: Some(Duration::from_secs(10)),
        repair_after: woof_node::config::REPAIR_AFTER_DEFAULT,
        link_port: woof_overlay::LinkPort::Any,
        balance_leaders: true,
    });
    config.bridge_listen = Transport::parse_list(&format!(
        "tcp://127.0.0.1:0,serial://{}?baud=115200",
        slave_path.display()
    ))
    .unwrap();
    let node = woof_node::server::Node::start(&config).await.unwrap();
    let url = node.url();
    let tcp = node.gateway().unwrap().tcp_addr().unwrap();
    let mut client = connect(&url).await;
    create_replicated(&mut client, "line/tcp", 1, "").await;
    create_replicated(&mut client, "line/serial", 1, "").await;
    let key = add_device(&url, "wired-1", "line/*", &[]);
    let dropped = || {
        let c = node.gateway().unwrap().counts();
        woof_node::devices::gateway::Counts::get(&c.dropped)
    };

    // Garbage on a TCP connection of its own: an unframed run longer than
    // any frame, then framed junk. Both dropped, both counted.
    let before = dropped();
    let mut junk = tokio::net::TcpStream::connect(tcp).await.unwrap();
    let mut bytes = vec![0x42; 3 * wire::FRAME_LEN_MAX];
    bytes.extend_from_slice(&[END, 1, 2, 3, END]);
    junk.write_all(&bytes).await.unwrap();
    wait_for(|| dropped() >= before + 2).await;
    assert!(dropped() >= before + 2, "{} dropped", dropped() - before);

    // A simulated device over TCP.
    let mut over_tcp = sim(vec![], "wired-1", key, "line/tcp");
    over_tcp.gateways = vec![Transport::Tcp(tcp)];
    over_tcp.count = 60;
    let report = simulator::run(over_tcp).await.unwrap();
    assert_eq!(report.acked.len(), 60, "{report}");
    assert_once_in_order(&report, &readings(&mut client, "line/tcp", "wired-1").await);

    // The device core over the serial line, driven by hand: 20 readings.
    let (r, w) = tokio::io::split(Serial::from_file(master, 115_200).unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    let mut line = transport::framed(r, w, stop.clone(), Default::default());
    let start = std::time::Instant::now();
    let now = || start.elapsed().as_millis() as u64;
    let mut device = Session::<8, 128>::new(
        &Config {
            device_id: b"wired-1",
            key,
            boot_id: 0x5e7a_1001,
            caps: 0,
            ping_interval_ms: 30_000,
        },
        now(),
        7,
    )
    .unwrap();
    let mut acked = BTreeMap::new();
    let mut next = 0u64;
    let mut out = [0u8; wire::FRAME_LEN_MAX];
    let deadline = start + Duration::from_secs(60);
    while next < 20 || acked.values().any(Option::is_none) {
        assert!(std::time::Instant::now() < deadline, "acked {acked:?}");
        if next < 20 && device.outbox_len() == 0 {
            let reading = format!("{{\"device\":\"wired-1\",\"n\":{next}}}");
            let seq = device
                .append(Topic::Name(b"line/serial"), reading.as_bytes(), 3)
                .unwrap();
            acked.insert(u64::from(seq), None);
            next += 1;
        }
        while let Some(n) = device.poll_transmit(now(), &mut out).unwrap() {
            line.tx.send(out[..n].to_vec()).await.unwrap();
        }
        while let Some(event) = device.poll_event(now()) {
            if let Event::Acked { seq, topic_seq, .. } = event {
                acked.insert(u64::from(seq), Some(topic_seq));
            }
        }
        let wait = device
            .poll_timeout()
            .map_or(100, |t| t.saturating_sub(now()).clamp(1, 100));
        if let Ok(Some(mut frame)) =
            tokio::time::timeout(Duration::from_millis(wait), line.rx.recv()).await
            && let Ok(Some(Event::Acked { seq, topic_seq, .. })) =
                device.handle_input(now(), &mut frame)
        {
            acked.insert(u64::from(seq), Some(topic_seq));
        }
    }
    let held = readings(&mut client, "line/serial", "wired-1").await;
    assert_eq!(
        held.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        (0..20).collect::<Vec<_>>(),
        "each reading over the serial line once, in order"
    );
    let mut topic_seqs: Vec<u64> = acked.values().map(|v| v.unwrap()).collect();
    topic_seqs.sort_unstable();
    assert_eq!(topic_seqs, held.iter().map(|(s, _)| *s).collect::<Vec<_>>());
    stop.cancel();
    node.stop().await.unwrap();
}
