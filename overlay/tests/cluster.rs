//! Real overlays on loopback: joining, the live view, the cluster key,
//! requests between nodes and DHT records.

use std::time::Duration;

use woof_overlay::members::Timing;
use woof_overlay::{
    ClusterKey, Error, LinkPort, Liveness, Multiaddr, NodeInfo, Overlay, OverlayConfig, Tier, start,
};

fn config(key: Option<ClusterKey>, info: NodeInfo, join: Vec<Multiaddr>) -> OverlayConfig {
    OverlayConfig {
        keypair: libp2p::identity::Keypair::generate_ed25519(),
        cluster_key: key,
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        join,
        info,
        timing: Timing {
            heartbeat_ms: 200,
            suspect_after_ms: 800,
            gone_after_ms: 2_000,
        },
        join_timeout: Some(Duration::from_secs(5)),
        rejoin: Vec::new(),
        link_port: LinkPort::Any,
    }
}

/// The first listen address without its `/p2p/` suffix, as a user would type it.
fn plain_addr(o: &Overlay) -> Multiaddr {
    let mut addr = o.client.listen_addrs()[0].clone();
    addr.pop();
    addr
}

/// Waits until `check` holds for `o`'s member list, or fails after 15 s.
async fn eventually(o: &Overlay, what: &str, check: impl Fn(&[woof_overlay::Member]) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let members = o.client.members().await.unwrap();
        if check(&members) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within 15 s; members: {members:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether this CPU has AES and carry-less multiplication (as the overlay
/// must advertise), asked of the CPU here rather than of the overlay.
fn cpu_has_aes() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("aes")
        && std::arch::is_x86_feature_detected!("pclmulqdq");
    #[cfg(target_arch = "aarch64")]
    return std::arch::is_aarch64_feature_detected!("aes")
        && std::arch::is_aarch64_feature_detected!("pmull");
    #[allow(unreachable_code)]
    false
}

fn alive(members: &[woof_overlay::Member]) -> usize {
    members
        .iter()
        .filter(|m| m.liveness == Liveness::Alive)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_by_plain_address_and_see_each_other() {
    let key = ClusterKey::generate();
    let a = start(config(Some(key), NodeInfo::new(Tier::Cloud), vec![]))
        .await
        .unwrap();
    let join = vec![plain_addr(&a)];
    let b = start(config(
        Some(key),
        NodeInfo::new(Tier::Edge).with_attr("site=north").unwrap(),
        join.clone(),
    ))
    .await
    .unwrap();
    let c = start(config(Some(key), NodeInfo::new(Tier::Edge), join))
        .await
        .unwrap();
    // B and C joined through A only; they find each other through the DHT.
    for (o, name) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        eventually(o, &format!("{name} sees two alive"), |m| alive(m) == 2).await;
    }
    let from_c = c.client.members().await.unwrap();
    let b_seen = from_c
        .iter()
        .find(|m| m.peer == b.client.peer_id())
        .expect("c knows b");
    assert_eq!(b_seen.info.tier, Tier::Edge);
    assert_eq!(b_seen.info.attrs["site"], "north");
    // What a link to b is opened with: its port, and whether b's CPU has
    // AES in hardware (then links to it are sealed with AES-256-GCM).
    assert!(b_seen.info.link_port.is_some(), "b names its link port");
    assert_eq!(
        b_seen.info.link_aes,
        cpu_has_aes(),
        "b says whether its CPU has AES and carry-less multiplication"
    );

    // A node that stops is suspected, then gone.
    let b_id = b.client.peer_id();
    b.shutdown().await;
    eventually(&a, "b gone", |m| {
        m.iter()
            .any(|m| m.peer == b_id && m.liveness == Liveness::Gone)
    })
    .await;
    assert_eq!(alive(&a.client.members().await.unwrap()), 1);
    a.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_leaves_is_gone_at_once_and_alive_again_when_back() {
    let key = ClusterKey::generate();
    // Silence alone would take 30 s to make a node gone: any "gone" seen
    // below comes from the node saying it leaves.
    let slow = |join| OverlayConfig {
        timing: Timing {
            heartbeat_ms: 200,
            suspect_after_ms: 20_000,
            gone_after_ms: 30_000,
        },
        ..config(Some(key), NodeInfo::new(Tier::Edge), join)
    };
    let a = start(slow(vec![])).await.unwrap();
    let join = vec![plain_addr(&a)];
    let b_config = slow(join.clone());
    let b_keypair = b_config.keypair.clone();
    let b = start(b_config).await.unwrap();
    let c = start(slow(join.clone())).await.unwrap();
    for (o, name) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        eventually(o, &format!("{name} sees two alive"), |m| alive(m) == 2).await;
    }
    let b_id = b.client.peer_id();
    let is_b = |m: &woof_overlay::Member| m.peer == b_id;
    b.leave().await;
    b.shutdown().await;
    for (o, name) in [(&a, "a"), (&c, "c")] {
        let members = o.client.members().await.unwrap();
        let seen = members.iter().find(|m| is_b(m)).expect("b is a member");
        assert_eq!(
            seen.liveness,
            Liveness::Gone,
            "{name} after b left: {seen:#?}"
        );
        assert!(
            seen.silent_ms < 20_000,
            "{name}: gone by silence? {seen:#?}"
        );
    }
    // Back under the same identity: alive again.
    let b = start(OverlayConfig {
        keypair: b_keypair,
        ..slow(join)
    })
    .await
    .unwrap();
    for (o, name) in [(&a, "a"), (&c, "c")] {
        eventually(o, &format!("{name} sees b back"), |m| {
            m.iter().any(|m| is_b(m) && m.liveness == Liveness::Alive)
        })
        .await;
    }
    // A node that stops without leaving (a crash) is still alive to the
    // others until its silence is long enough.
    b.shutdown().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let members = a.client.members().await.unwrap();
    assert!(
        members
            .iter()
            .any(|m| is_b(m) && m.liveness == Liveness::Alive),
        "{members:#?}"
    );
    a.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_cluster_key_cannot_join() {
    let key = ClusterKey::generate();
    let a = start(config(Some(key), NodeInfo::new(Tier::Cloud), vec![]))
        .await
        .unwrap();
    let join = vec![plain_addr(&a)];
    for (name, other) in [
        ("a wrong key", Some(ClusterKey::generate())),
        ("no key", None),
    ] {
        let err = start(config(other, NodeInfo::new(Tier::Edge), join.clone()))
            .await
            .err()
            .unwrap_or_else(|| panic!("{name}: joined"));
        assert!(matches!(err, Error::Join(_)), "{name}: {err}");
    }
    // Give a stray connection time to show up, then check it never did.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(a.client.members().await.unwrap().is_empty());
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_an_address_that_does_not_answer_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let join = vec![format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()];
    let started = std::time::Instant::now();
    let err = start(config(
        Some(ClusterKey::generate()),
        NodeInfo::new(Tier::Edge),
        join,
    ))
    .await
    .err()
    .expect("nothing to join");
    assert!(matches!(err, Error::Join(_)), "{err}");
    assert!(
        err.to_string().contains(&port.to_string()),
        "names the address: {err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_the_node_above_and_records_spread() {
    let key = ClusterKey::generate();
    let a = start(config(Some(key), NodeInfo::new(Tier::Cloud), vec![]))
        .await
        .unwrap();
    let join = vec![plain_addr(&a)];
    let b = start(config(Some(key), NodeInfo::new(Tier::Edge), join.clone()))
        .await
        .unwrap();
    let mut c = start(config(Some(key), NodeInfo::new(Tier::Edge), join))
        .await
        .unwrap();
    eventually(&b, "b sees c", |m| alive(m) == 2).await;

    // C's node answers requests by reversing them.
    let c_id = c.client.peer_id();
    let mut inbound = std::mem::replace(&mut c.inbound, tokio::sync::mpsc::channel(1).1);
    let b_id = b.client.peer_id();
    tokio::spawn(async move {
        while let Some(req) = inbound.recv().await {
            assert_eq!(req.peer, b_id);
            let mut p = req.payload;
            p.reverse();
            let _ = req.reply.send(p);
        }
    });
    let answer = b.client.request(c_id, b"woof".to_vec()).await.unwrap();
    assert_eq!(answer, b"foow");

    // A record put on A is found from B.
    a.client
        .put_record(b"topic/farm/north".to_vec(), b"replicas: x, y, z".to_vec())
        .await
        .unwrap();
    let found = b
        .client
        .get_record(b"topic/farm/north".to_vec())
        .await
        .unwrap();
    assert_eq!(found.as_deref(), Some(&b"replicas: x, y, z"[..]));
    assert_eq!(
        b.client.get_record(b"nothing-here".to_vec()).await.unwrap(),
        None
    );

    // A request to a node that is gone fails, it does not hang.
    a.shutdown().await;
    c.shutdown().await;
    let err = b.client.request(c_id, b"x".to_vec()).await.unwrap_err();
    assert!(matches!(err, Error::Request { .. }), "{err}");
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_answer_each_request_as_soon_as_it_is_ready() {
    let key = ClusterKey::generate();
    let a = start(config(Some(key), NodeInfo::new(Tier::Cloud), vec![]))
        .await
        .unwrap();
    let mut b = start(config(
        Some(key),
        NodeInfo::new(Tier::Edge),
        vec![plain_addr(&a)],
    ))
    .await
    .unwrap();
    eventually(&a, "a sees b", |m| alive(m) == 1).await;

    // B's node answers link requests by reversing them, "slow" after 3 s,
    // and drops "drop" unanswered. Requests on the event loop's path do not
    // come out of the link queue.
    let b_id = b.client.peer_id();
    let a_id = a.client.peer_id();
    let mut links = std::mem::replace(&mut b.link_inbound, tokio::sync::mpsc::channel(1).1);
    tokio::spawn(async move {
        while let Some(req) = links.recv().await {
            assert_eq!(req.peer, a_id);
            tokio::spawn(async move {
                match req.payload.as_slice() {
                    b"slow" => tokio::time::sleep(Duration::from_secs(3)).await,
                    b"drop" => return,
                    _ => {}
                }
                let mut p = req.payload;
                p.reverse();
                let _ = req.reply.send(p);
            });
        }
    });

    let slow = {
        let client = a.client.clone();
        tokio::spawn(async move { client.link_request(b_id, b"slow".to_vec()).await })
    };
    // 500 requests at once, all answered, each with its own answer, while
    // the slow one still waits.
    let started = std::time::Instant::now();
    let answers = futures::future::join_all((0..500u32).map(|i| {
        let client = a.client.clone();
        async move {
            let payload = format!("request {i}").into_bytes();
            let answer = client.link_request(b_id, payload.clone()).await.unwrap();
            let mut expected = payload;
            expected.reverse();
            assert_eq!(answer, expected, "request {i}");
        }
    }))
    .await;
    assert_eq!(answers.len(), 500);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "500 link requests took {:?}: they waited for the slow one",
        started.elapsed()
    );
    assert!(!slow.is_finished(), "the slow request was answered early");
    // The link went on a connection of its own (ADR 34), not over libp2p.
    assert_eq!(a.client.links_opened_direct(), 1);
    assert_eq!(slow.await.unwrap().unwrap(), b"wols");

    // A request the node drops is refused, clearly; the link goes on.
    let err = a
        .client
        .link_request(b_id, b"drop".to_vec())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("dropped"), "{err}");
    assert_eq!(
        a.client.link_request(b_id, b"ab".to_vec()).await.unwrap(),
        b"ba"
    );

    // Too large to send: refused before it leaves.
    let err = a
        .client
        .link_request(b_id, vec![0; 17 * 1024 * 1024])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("at most"), "{err}");

    // A node that is gone fails the link's requests; they do not hang.
    b.shutdown().await;
    let started = std::time::Instant::now();
    let err = a
        .client
        .link_request(b_id, b"x".to_vec())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Request { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(11),
        "{:?}",
        started.elapsed()
    );
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_to_a_node_without_a_link_port_go_over_libp2p() {
    // B takes no links of its own (`link_port = off`): A's link to it goes
    // as a libp2p stream, B's link to A on a connection of its own.
    let key = ClusterKey::generate();
    let mut a = start(config(Some(key), NodeInfo::new(Tier::Cloud), vec![]))
        .await
        .unwrap();
    let mut b_config = config(Some(key), NodeInfo::new(Tier::Edge), vec![plain_addr(&a)]);
    b_config.link_port = LinkPort::Off;
    let mut b = start(b_config).await.unwrap();
    eventually(&a, "a sees b", |m| alive(m) == 1).await;
    eventually(&b, "b sees a", |m| alive(m) == 1).await;
    for node in [&mut a, &mut b] {
        let mut links = std::mem::replace(&mut node.link_inbound, tokio::sync::mpsc::channel(1).1);
        tokio::spawn(async move {
            while let Some(req) = links.recv().await {
                let mut p = req.payload;
                p.reverse();
                let _ = req.reply.send(p);
            }
        });
    }
    let (a_id, b_id) = (a.client.peer_id(), b.client.peer_id());
    assert_eq!(
        a.client.link_request(b_id, b"ab".to_vec()).await.unwrap(),
        b"ba"
    );
    assert_eq!(
        b.client.link_request(a_id, b"cd".to_vec()).await.unwrap(),
        b"dc"
    );
    assert_eq!(a.client.links_opened_direct(), 0, "B advertised no port");
    assert_eq!(b.client.links_opened_direct(), 1, "A's port went unused");
    a.shutdown().await;
    b.shutdown().await;
}
