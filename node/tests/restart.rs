//! Structured shutdown: a node stopped in this process has stopped
//! everything it started, so its store is closed when `stop` returns and
//! the next node opens it at once, however busy the last one was.

mod common;

use std::time::{Duration, Instant};

use common::*;
use woof_consensus::store::{RocksStore, Store};
use woof_node::server::Node;
use woof_overlay::ClusterKey;
use woof_proto::v1::{self, subscribe_request::Start};

const RESTARTS: usize = 20;
const TOPICS: [&str; 3] = ["restart/a", "restart/b", "restart/c"];

/// Appends to `topic` at `url` until an append fails (the node stops);
/// returns what was acknowledged, as (seq, payload).
async fn append_until_stopped(
    url: String,
    topic: &'static str,
    tag: String,
) -> Vec<(u64, Vec<u8>)> {
    let mut acked = Vec::new();
    let Ok(mut c) = woof_node::cli::connect(&url).await else {
        return acked;
    };
    for i in 0u64.. {
        let payload = format!("{tag}-{i}").into_bytes();
        let r = c
            .append(v1::AppendRequest {
                topic: topic.into(),
                payload: payload.clone().into(),
                producer: None,
                handler: Default::default(),
            })
            .await;
        match r {
            Ok(r) => acked.push((r.into_inner().seq, payload)),
            Err(_) => break,
        }
    }
    acked
}

/// Reads a stream until it ends or fails; returns the sequence numbers.
async fn read_until_stopped(mut stream: tonic::Streaming<v1::SubscribeResponse>) -> Vec<u64> {
    let mut seqs = Vec::new();
    while let Ok(Some(r)) = stream.message().await {
        seqs.push(r.element.unwrap().seq);
    }
    seqs
}

/// A topic's name and its elements, as (seq, payload).
type Held = (String, Vec<(u64, Vec<u8>)>);

/// Opens a stopped node's store directly: it must not be held by anyone.
/// Returns each topic's elements.
fn open_released(data_dir: &std::path::Path, round: usize) -> Vec<Held> {
    let store = RocksStore::open(&data_dir.join("db")).unwrap_or_else(|e| {
        panic!("round {round}: the store is still held after stop returned: {e}")
    });
    let held = store
        .topics()
        .unwrap()
        .into_iter()
        .map(|m| {
            let elements = store
                .scan(m.id, 1, 1_000_000, usize::MAX)
                .unwrap()
                .into_iter()
                .map(|e| (e.seq, e.payload.to_vec()))
                .collect();
            (m.name.to_string(), elements)
        })
        .collect();
    drop(store);
    held
}

/// Dense from 1, and holding every acknowledged append where it was acknowledged.
fn check_log(round: usize, topic: &str, held: &[(u64, Vec<u8>)], acked: &[(u64, Vec<u8>)]) {
    for (i, (seq, _)) in held.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1, "round {round}: {topic} is not dense");
    }
    for (seq, payload) in acked {
        assert_eq!(
            held.get(*seq as usize - 1).map(|(_, p)| p),
            Some(payload),
            "round {round}: {topic} lost acknowledged #{seq}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_node_stops_and_starts_again_twenty_times() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let mut acked: Vec<Vec<(u64, Vec<u8>)>> = vec![Vec::new(); TOPICS.len()];
    let started = Instant::now();
    for round in 0..RESTARTS {
        let node = Node::start(&config).await.unwrap();
        let url = node.url();
        let mut c = connect(&url).await;
        if round == 0 {
            for t in TOPICS {
                create(&mut c, t, 0, 0).await;
            }
        }
        // The data is still there: a subscriber from #1 replays all of it.
        let held_before = acked[0].iter().map(|a| a.0).max().unwrap_or(0);
        let mut replay = subscribe(&mut c, TOPICS[0], Start::FromSeq(1)).await;
        for seq in 1..=held_before {
            assert_eq!(next_element(&mut replay).await.seq, seq, "round {round}");
        }
        let reader = tokio::spawn(read_until_stopped(replay));
        // A subscriber that never reads, and one waiting for what comes next.
        let stalled = subscribe(&mut c, TOPICS[1], Start::FromSeq(1)).await;
        let waiting = subscribe(&mut c, TOPICS[2], Start::Latest(true)).await;
        let base = latest(&mut c, TOPICS[2]).await.last_seq;
        let writers: Vec<_> = (0..TOPICS.len() * 2)
            .map(|w| {
                let t = w % TOPICS.len();
                let tag = format!("{round}-{w}");
                (
                    t,
                    tokio::spawn(append_until_stopped(url.clone(), TOPICS[t], tag)),
                )
            })
            .collect();
        // Busy: stop once the writers got going, while they still append.
        let deadline = Instant::now() + Duration::from_secs(30);
        while latest(&mut c, TOPICS[2]).await.last_seq < base + 20 {
            let ended = writers.iter().filter(|(_, w)| w.is_finished()).count();
            assert!(
                Instant::now() < deadline,
                "round {round}: {TOPICS:?}[2] not 20 appends further within 30 s; \
                 {ended} of {} writers ended (an append failed)",
                writers.len()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        let stopping = Instant::now();
        node.stop()
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let stop_took = stopping.elapsed();
        let held = open_released(dir.path(), round);
        assert!(
            stop_took < Duration::from_secs(3),
            "round {round}: stopping took {stop_took:?}"
        );

        for (t, writer) in writers {
            acked[t].extend(writer.await.unwrap());
        }
        for (t, topic) in TOPICS.iter().enumerate() {
            let (_, log) = held.iter().find(|(n, _)| n == topic).unwrap();
            check_log(round, topic, log, &acked[t]);
        }
        let seen = reader.await.unwrap();
        assert_eq!(
            seen,
            (held_before + 1..held_before + 1 + seen.len() as u64).collect::<Vec<_>>(),
            "round {round}: the subscriber saw a gap"
        );
        drop((stalled, waiting));
    }
    let total: usize = acked.iter().map(Vec::len).sum();
    eprintln!(
        "{RESTARTS} restarts, {total} appends acknowledged, in {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_does_not_hold_the_node_up() {
    let dir = tempfile::tempdir().unwrap();
    let n = Node::start(&config(dir.path())).await.unwrap();
    let mut c = connect(&n.url()).await;
    create(&mut c, "big", 64 * 1024, 0).await;
    // More than a client's flow-control window holds (2 MiB by default).
    for i in 0..64u8 {
        append(&mut c, "big", vec![i; 64 * 1024]).await;
    }
    let stalled = subscribe(&mut c, "big", Start::FromSeq(1)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = Instant::now();
    n.stop().await.unwrap();
    let took = stopping.elapsed();
    open_released(dir.path(), 0);
    assert!(
        took < woof_node::server::DRAIN_MAX + Duration::from_secs(2),
        "stopping took {took:?}"
    );
    drop(stalled);
}

/// One node of three stopped and started again twenty times while writers
/// append through another, and a subscriber follows its replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_with_busy_groups_stops_and_starts_again_twenty_times() {
    const NAMES: [&str; 2] = ["busy/a", "busy/b"];
    logs_if_asked();
    let dir = tempfile::tempdir().unwrap();
    let key = ClusterKey::generate();
    let [a, b, mut c_node] = three_nodes(dir.path(), key).await;
    let join = a.overlay().unwrap().listen_addrs().to_vec();
    let restarted_dir = dir.path().join("c");
    let mut ca = connect(&a.url()).await;
    for name in NAMES {
        create_replicated(&mut ca, name, 3, "").await;
    }
    let writers = Writers::start(&ca, &NAMES);

    let started = Instant::now();
    let mut held_before = 0;
    for round in 0..RESTARTS {
        // The restarted node serves its replica again, and catches up.
        let mut cc = connect(&c_node.url()).await;
        let mut follow = subscribe(&mut cc, NAMES[0], Start::FromSeq(1)).await;
        let target = latest(&mut ca, NAMES[0]).await.last_seq + 5;
        let mut next = 1;
        while next <= target {
            let e = next_element(&mut follow).await;
            assert_eq!(e.seq, next, "round {round}: the follower saw a gap");
            next += 1;
        }

        let stopping = Instant::now();
        c_node
            .stop()
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let stop_took = stopping.elapsed();
        let held = open_released(&restarted_dir, round);
        assert!(
            stop_took < Duration::from_secs(5),
            "round {round}: stopping took {stop_took:?}"
        );
        drop(follow);
        // What it held is still there, dense from 1.
        let (_, log) = held.iter().find(|(n, _)| n == NAMES[0]).unwrap();
        check_log(round, NAMES[0], log, &[]);
        assert!(
            log.len() as u64 >= held_before.max(target),
            "round {round}: holds {} elements, had {held_before}, followed to {target}",
            log.len()
        );
        held_before = log.len() as u64;
        c_node = start_clustered(&restarted_dir, key, join.clone()).await;
    }
    eprintln!(
        "{RESTARTS} restarts of a cluster node in {:?}",
        started.elapsed()
    );

    let acked = writers.stop().await;
    assert!(acked.iter().all(|a| !a.is_empty()));
    // Node a is checked below, and a follower may lag the acknowledgements
    // by a few entries (a leader change under load makes a a follower):
    // wait until every replica holds the leader's log, then a moment for
    // the followers to learn that it is committed.
    for _ in 0..100 {
        let info = describe(&mut ca, NAMES[0]).await;
        let matched: Vec<u64> = info.progress.iter().map(|p| p.matched_index).collect();
        if matched.len() == 3 && matched.iter().all(|m| *m == info.commit_index) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(ca);
    for n in [a, b, c_node] {
        n.stop().await.unwrap();
    }
    let held = stored(&dir.path().join("a"), NAMES[0]);
    assert_log_holds(&held, &acked[0]);
}

/// The first node of a cluster makes the name directory once. Restarted
/// without `--join` after its copy was moved away (here: removed from its
/// store, as repair removes a replaced copy), it does not make a second
/// directory, which would split the cluster's names; a new data directory
/// does make one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_node_makes_the_name_directory_once() {
    use woof_consensus::store::{Op, RaftLogStore, WriteBatch};
    use woof_consensus::topic::TopicId;
    use woof_consensus::topic::directory::DIRECTORY;

    let dir = tempfile::tempdir().unwrap();
    let key = ClusterKey::generate();
    let first = start_clustered(&dir.path().join("a"), key, vec![]).await;
    assert!(
        first.groups().unwrap().local_members(DIRECTORY).is_some(),
        "a new cluster's first node makes the directory"
    );
    first.stop().await.unwrap();

    let store = RocksStore::open(&dir.path().join("a").join("db")).unwrap();
    store.delete_group(DIRECTORY).unwrap();
    let mut batch = WriteBatch::default();
    batch.push(Op::DeleteTopic(TopicId(DIRECTORY.0)));
    store.write(&batch).unwrap();
    drop(store);

    let again = start_clustered(&dir.path().join("a"), key, vec![]).await;
    assert_eq!(
        again.groups().unwrap().local_members(DIRECTORY),
        None,
        "a node that made a directory once made a second"
    );
    again.stop().await.unwrap();
}

/// A [`writer`] on each of a test's topics, all through one client.
struct Writers {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<(String, u64, Instant)>>>,
}

impl Writers {
    fn start(client: &Client, names: &[&'static str]) -> Self {
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let tasks = names
            .iter()
            .enumerate()
            .map(|(i, name)| tokio::spawn(writer(client.clone(), name, i, stopping.clone())))
            .collect();
        Self { stop, tasks }
    }

    /// Stops them; what each had acknowledged, in the order of the names.
    async fn stop(self) -> Vec<Vec<(String, u64, Instant)>> {
        self.stop.send_replace(true);
        let mut acked = Vec::new();
        for task in self.tasks {
            acked.push(task.await.unwrap());
        }
        acked
    }
}

/// Three cluster nodes ([`three_nodes`]) holding `names` (3 replicas
/// each), and a [`Writers`] on them through a client of `a`, which have
/// written for half a second.
async fn busy_cluster(names: &[&'static str]) -> (tempfile::TempDir, [Node; 3], Client, Writers) {
    let dir = tempfile::tempdir().unwrap();
    let nodes = three_nodes(dir.path(), ClusterKey::generate()).await;
    let mut client = connect(&nodes[0].url()).await;
    for name in names {
        create_replicated(&mut client, name, 3, "").await;
    }
    let writers = Writers::start(&client, names);
    tokio::time::sleep(Duration::from_millis(500)).await;
    (dir, nodes, client, writers)
}

/// Stops the [`busy_cluster`]'s writers and the nodes still running, then
/// checks that node `a`'s copy of each topic holds every append
/// acknowledged.
async fn stop_and_check(
    dir: &std::path::Path,
    names: &[&'static str],
    writers: Writers,
    client: Client,
    running: impl IntoIterator<Item = Node>,
) {
    let acked = writers.stop().await;
    drop(client);
    for n in running {
        n.stop().await.unwrap();
    }
    for (name, acked) in names.iter().zip(&acked) {
        assert!(!acked.is_empty(), "{name}: nothing acknowledged");
        assert_log_holds(&stored(&dir.join("a"), name), acked);
    }
}

/// Three cluster nodes in `dir` (`a`, then `b` and `c` joining it), once
/// `a` sees the other two.
async fn three_nodes(dir: &std::path::Path, key: ClusterKey) -> [Node; 3] {
    let first = start_clustered(&dir.join("a"), key, vec![]).await;
    let join = first.overlay().unwrap().listen_addrs().to_vec();
    let mut nodes = vec![first];
    for name in ["b", "c"] {
        nodes.push(start_clustered(&dir.join(name), key, join.clone()).await);
    }
    for _ in 0..100 {
        if nodes[0].overlay().unwrap().members().await.unwrap().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    nodes.try_into().unwrap_or_else(|_| panic!("three nodes"))
}

/// A node stopped on purpose hands the leadership of the groups it leads
/// to another voter before it goes: the others do not wait out its lease
/// and an election (about a second without a leader, as after a crash).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_on_purpose_hands_its_groups_over_first() {
    const NAME: &str = "handed/over";
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::from(three_nodes(dir.path(), ClusterKey::generate()).await);
    let mut ca = connect(&nodes[0].url()).await;
    create_replicated(&mut ca, NAME, 3, "").await;
    assert_eq!(append(&mut ca, NAME, b"before".to_vec()).await, 1);
    let info = describe(&mut ca, NAME).await;
    drop(ca);
    let peer = |n: &Node| n.overlay().unwrap().peer_id().to_string();
    let at = nodes
        .iter()
        .position(|n| peer(n) == info.leader)
        .unwrap_or_else(|| panic!("the leader {} is one of the nodes", info.leader));
    let old = nodes.remove(at);
    let old_peer = peer(&old);
    // The followers know the leader and its term.
    let replica = |n: &Node| {
        n.groups()
            .unwrap()
            .replicas()
            .into_iter()
            .find(|r| r.meta.name.as_str() == NAME)
            .expect("a replica of the topic")
    };
    for n in &nodes {
        assert_eq!(replica(n).leader.as_deref(), Some(old_peer.as_str()));
    }
    let term = replica(&nodes[0]).term;

    old.stop().await.unwrap();

    // At once, with no election timeout waited: both others follow one of
    // them in a newer term.
    let survivors: Vec<String> = nodes.iter().map(peer).collect();
    let new = replica(&nodes[0]).leader;
    for n in &nodes {
        let r = replica(n);
        assert!(
            r.leader.as_ref().is_some_and(|l| survivors.contains(l)),
            "{} follows {:?} just after the leader stopped; expected one of {survivors:?}",
            peer(n),
            r.leader
        );
        assert_eq!(r.leader, new);
        assert!(r.term > term, "term {} after {term}", r.term);
    }
    // And the new leader takes appends, after what the old one acknowledged.
    let mut cs = connect(&nodes[0].url()).await;
    assert_eq!(append(&mut cs, NAME, b"after".to_vec()).await, 2);
    drop(cs);
    for n in nodes {
        n.stop().await.unwrap();
    }
}

/// A node stopped on purpose answered its groups' leaders moments before
/// it left, so to them it still looks alive for three heartbeats. The
/// balance right after the stop hands it nothing: a move to it would hold
/// the group's writes for a second, then end in an election.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balance_hands_nothing_to_a_node_that_just_stopped() {
    const NAMES: [&str; 6] = ["gone/a", "gone/b", "gone/c", "gone/d", "gone/e", "gone/f"];
    let (dir, [a, b, c], ca, writers) = busy_cluster(&NAMES).await;
    let c_peer = c.overlay().unwrap().peer_id().to_string();
    // c hands its leaderships over as it stops: a and b then lead every
    // busy topic, and each at least two more than c, which they would
    // even out with c if it were there.
    c.stop().await.unwrap();
    let started = Instant::now();
    let (by_a, by_b) = tokio::join!(a.groups().unwrap().balance(), b.groups().unwrap().balance());
    let took = started.elapsed();
    assert_eq!((by_a, by_b), (0, 0), "leaderships handed to the stopped c");
    assert!(
        took < Duration::from_millis(500),
        "the balance right after c stopped waited {took:?}: it tried to hand leaderships to c"
    );
    for n in [&a, &b] {
        let led_by_c = n
            .groups()
            .unwrap()
            .replicas()
            .into_iter()
            .filter(|r| r.leader.as_deref() == Some(&*c_peer))
            .count();
        assert_eq!(led_by_c, 0);
    }
    stop_and_check(dir.path(), &NAMES, writers, ca, [a, b]).await;
}

/// Balance rounds run on the other nodes all through a planned stop (they
/// run every two seconds, each node at its own moment): none hands the
/// stopping node a leadership that it would then take down with it. Right
/// after the stop, every busy topic is led by a node still there, with no
/// lease or election waited out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopping_on_purpose_is_handed_nothing_while_it_stops() {
    const NAMES: [&str; 6] = [
        "stopping/a",
        "stopping/b",
        "stopping/c",
        "stopping/d",
        "stopping/e",
        "stopping/f",
    ];
    logs_if_asked();
    let (dir, [a, b, c], ca, writers) = busy_cluster(&NAMES).await;
    let peer = |n: &Node| n.overlay().unwrap().peer_id().to_string();
    let stayed = [peer(&a), peer(&b)];
    // a and b balance over and over while c stops: as soon as c has handed
    // its leaderships over it leads two or more fewer than each of them.
    let (stop_balancing, balancing) = tokio::sync::watch::channel(false);
    let rounds: Vec<_> = [&a, &b]
        .into_iter()
        .map(|n| {
            let groups = n.groups().unwrap().clone();
            let mut balancing = balancing.clone();
            tokio::spawn(async move {
                let mut moved = 0;
                while !*balancing.borrow_and_update() {
                    moved += groups.balance().await;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                moved
            })
        })
        .collect();
    c.stop().await.unwrap();
    let stopped = Instant::now();
    // At once: a lease and an election take hundreds of milliseconds. The
    // leaders are read before the balance rounds are awaited (a round may
    // still wait on a move), and at least once.
    let leaderless = loop {
        let leaderless: Vec<_> = [&a, &b]
            .into_iter()
            .flat_map(|n| n.groups().unwrap().replicas())
            .filter(|r| NAMES.contains(&r.meta.name.as_str()))
            .filter(|r| !r.leader.as_ref().is_some_and(|l| stayed.contains(l)))
            .map(|r| (r.meta.name.to_string(), r.leader))
            .collect();
        if leaderless.is_empty() || stopped.elapsed() >= Duration::from_millis(150) {
            break leaderless;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let looked = stopped.elapsed();
    stop_balancing.send_replace(true);
    let mut moved = 0;
    for round in rounds {
        moved += round.await.unwrap();
    }
    assert!(
        leaderless.is_empty(),
        "{} ms after c stopped (the others moved {moved} leaderships meanwhile), \
         topics led by none of the nodes left: {leaderless:?}",
        looked.as_millis()
    );
    stop_and_check(dir.path(), &NAMES, writers, ca, [a, b]).await;
}

/// A node that starts again behind its topic (its replica catches up from
/// the leader) still follows the topic from a point it does not hold yet:
/// from the leader, until then. (A handler that moves to such a node
/// starts after the last element it finished elsewhere.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_behind_its_topic_follows_it_from_further_on() {
    const NAME: &str = "behind/topic";
    let dir = tempfile::tempdir().unwrap();
    let key = ClusterKey::generate();
    let [a, b, c] = three_nodes(dir.path(), key).await;
    let join = a.overlay().unwrap().listen_addrs().to_vec();
    let mut ca = connect(&a.url()).await;
    create_replicated(&mut ca, NAME, 3, "").await;
    append(&mut ca, NAME, b"0".to_vec()).await;
    c.stop().await.unwrap();
    let mut last = 0;
    for i in 1..=200u32 {
        last = append(&mut ca, NAME, i.to_string().into_bytes()).await;
    }
    let c = start_clustered(&dir.path().join("c"), key, join).await;
    let mut cc = connect(&c.url()).await;
    let mut follow = subscribe(&mut cc, NAME, Start::FromSeq(last + 1)).await;
    let next = append(&mut ca, NAME, b"next".to_vec()).await;
    assert_eq!(next, last + 1);
    let e = next_element(&mut follow).await;
    assert_eq!((e.seq, e.payload.as_ref()), (next, &b"next"[..]));
    drop((follow, cc, ca));
    for n in [a, b, c] {
        n.stop().await.unwrap();
    }
}

/// A node started again leads nothing at first: its peers took its groups
/// over when it stopped. Within seconds it leads its share of the busy
/// topics again (`groups::balance`), and the writers lose nothing on the
/// way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_again_gets_its_share_of_the_leaderships_back() {
    const NAMES: [&str; 6] = [
        "spread/a", "spread/b", "spread/c", "spread/d", "spread/e", "spread/f",
    ];
    logs_if_asked();
    let dir = tempfile::tempdir().unwrap();
    let key = ClusterKey::generate();
    let [a, b, c] = three_nodes(dir.path(), key).await;
    let join = a.overlay().unwrap().listen_addrs().to_vec();
    let mut ca = connect(&a.url()).await;
    for name in NAMES {
        create_replicated(&mut ca, name, 3, "").await;
    }
    let peer = |n: &Node| n.overlay().unwrap().peer_id().to_string();
    // How many of its groups (the topics and the name directory) each node
    // leads, as node `a` sees them; and whether they are spread evenly.
    let led = |n: &Node| {
        let mut led = std::collections::BTreeMap::<String, usize>::new();
        for r in n.groups().unwrap().replicas() {
            *led.entry(r.leader.unwrap_or_default()).or_default() += 1;
        }
        led
    };
    let nodes = [peer(&a), peer(&b), peer(&c)];
    let even = |led: &std::collections::BTreeMap<String, usize>| {
        let counts: Vec<usize> = nodes
            .iter()
            .map(|p| led.get(p).copied().unwrap_or(0))
            .collect();
        let total: usize = led.values().sum();
        counts.iter().sum::<usize>() == total
            && counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1
    };
    // New topics start spread.
    let at_first = led(&a);
    assert_eq!(
        at_first.values().sum::<usize>(),
        NAMES.len() + 1,
        "{at_first:?}"
    );
    assert!(even(&at_first), "created topics' leaders {at_first:?}");
    let writers = Writers::start(&ca, &NAMES);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let moves = |ns: &[&Node]| -> u64 {
        ns.iter()
            .map(|n| {
                let counters = n.groups().unwrap().counters();
                counters
                    .leader_moves
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .sum()
    };
    let moved_before = moves(&[&a, &b]);
    // Stopped on purpose, c hands its groups over to a and b.
    let c_peer = peer(&c);
    let leads_none =
        |led: &std::collections::BTreeMap<String, usize>| led.get(&c_peer).is_none_or(|n| *n == 0);
    // Stops c, then waits until a sees it lead nothing.
    let stop_c = async |c: Node| {
        c.stop().await.unwrap();
        let mut back = led(&a);
        for _ in 0..30 {
            if leads_none(&back) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            back = led(&a);
        }
        assert!(leads_none(&back), "c leads nothing once stopped: {back:?}");
        back
    };
    let back = stop_c(c).await;
    // The busy topics c leads, as a sees them.
    let busy_led_by_c = || -> Vec<String> {
        a.groups()
            .unwrap()
            .replicas()
            .into_iter()
            .filter(|r| {
                NAMES.contains(&r.meta.name.as_str()) && r.leader.as_deref() == Some(&*c_peer)
            })
            .map(|r| r.meta.name.to_string())
            .collect()
    };
    let c = start_clustered(&dir.path().join("c"), key, join.clone()).await;
    assert_eq!(peer(&c), c_peer);
    let started = Instant::now();
    let mut spread = back;
    while started.elapsed() < Duration::from_secs(20) && !even(&spread) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        spread = led(&a);
    }
    assert!(
        even(&spread),
        "20 s after c started again, the groups' leaders are {spread:?}"
    );
    eprintln!(
        "leaderships spread again {:?} after c started",
        started.elapsed()
    );
    // c's busy topics came from a and b's moves (the name directory's
    // group, idle, may sleep and be led by whichever node wakes it).
    let busy = busy_led_by_c();
    let moved = moves(&[&a, &b]) - moved_before;
    assert!(
        !busy.is_empty() && moved >= busy.len() as u64,
        "a and b handed {moved} leaderships to c, which leads {busy:?}"
    );

    // With the balance off on a and b (`balance_leaders = false`), c stopped
    // and started again leads nothing for three of their balance rounds
    // and more, however busy its topics.
    for n in [&a, &b] {
        n.groups().unwrap().balance_leaders(false);
    }
    stop_c(c).await;
    let moved_before = moves(&[&a, &b]);
    let c = start_clustered(&dir.path().join("c"), key, join).await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    let busy = busy_led_by_c();
    assert!(
        busy.is_empty(),
        "with the balance off, c was handed {busy:?}"
    );
    assert_eq!(moves(&[&a, &b]), moved_before);
    let acked = writers.stop().await;
    drop(ca);
    for n in [a, b, c] {
        n.stop().await.unwrap();
    }
    for (name, acked) in NAMES.iter().zip(&acked) {
        assert!(!acked.is_empty(), "{name}: nothing acknowledged");
        assert_log_holds(&stored(&dir.path().join("a"), name), acked);
    }
}
