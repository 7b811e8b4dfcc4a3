//! A flood of large batches beside single appends, on real `woof`
//! processes on loopback. In a test binary of its own: the figures it
//! asserts are about one cluster on the machine, and the tests of another
//! binary's file run at the same time as each other (three clusters on
//! two cores made the flooded group wait over 2 s in CI).

mod common;

use std::time::{Duration, Instant};

use common::*;
use tonic::Code;
use woof_proto::v1;

/// One client floods a topic with batches of 8 MiB (four at a time) while
/// another appends single elements to another topic on the same three
/// nodes: the flood is pushed back (RESOURCE_EXHAUSTED with a retry hint)
/// rather than queued, its group keeps committing, and the single appends
/// never stall. (Before, every 8 MiB entry outlived openraft's 100 ms per
/// AppendEntries on a busy disk and was resent again and again: the flooded
/// group lost its leader and the single appends waited for seconds.)
///
/// The bound here is "no stall", [`STALL`]; the aim of issue 16, a p99 of
/// 50 ms for the single appends, is not reached on one disk shared by the
/// three replicas (80 to 290 ms in this test; docs/BENCHMARKS.md says why).
///
/// Once flaky (about half the runs, flooded batches taking 2-3 s): the
/// topics sat idle for 5 s before the flood, so their groups had gone to
/// sleep, and the flood's first batches woke the group; its election under
/// the flood took 2-3 s and sometimes moved the leader away from the
/// flooders, whose batches were then forwarded. The leader is now checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_large_batches_neither_stalls_its_group_nor_the_next_topic() {
    flood(false).await;
}

/// The same flood, on topics whose groups went to sleep first (idle for
/// longer than `groups::hibernate::SLEEP_AFTER` and its check): the
/// flood's first batches wake the flooded group. They used to wake it on
/// the node they came to, which asked for an election (each request one of
/// its own); the old leader, woken by that, led again at once and refused
/// the votes until its lease ran out. The first batch waited 1.8-3.8 s in
/// about half the runs, and the election could end on either node. Now a
/// request for a sleeping group goes to the node that led it first (its
/// stored vote says which), which wakes it and leads again at once; and
/// requests that wake a group together ask for one election at most.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_that_wakes_a_sleeping_group_gets_it_a_leader_at_once() {
    flood(true).await;
}

/// One cluster at a time: the figures asserted are about one cluster on
/// the machine.
static ONE_CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The flood and the single appends; with `asleep`, their topics' groups
/// sleep before it starts.
async fn flood(asleep: bool) {
    let _one = ONE_CLUSTER.lock().await;
    const BIG: &str = "flood/big";
    const CALM: &str = "flood/calm";
    const PAYLOADS: usize = 8;
    const PAYLOAD_BYTES: usize = 1 << 20;
    const STALL: Duration = Duration::from_millis(1500);
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_cluster(dir.path(), 3);
    // The cluster's own start-up work first: its name directory grows to
    // three replicas by repair, a round every 2 s (a flood started beside
    // it waited over 2 s for its first batch in CI).
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Then the topics, used at once: a group that served nobody for 3 s
    // sleeps (`groups::hibernate`), and one woken by the flood's first
    // batches is a different test (its election under the flood may move
    // the leader away from the flooders, whose batches are then forwarded).
    let mut admin = connect(&nodes[0].url).await;
    create_replicated(&mut admin, BIG, 3, "").await;
    create_replicated(&mut admin, CALM, 3, "").await;
    let leader_url = |leader: String| {
        let n = nodes.iter().find(|n| peer_id(&n.url) == leader).unwrap();
        n.url.clone()
    };
    let big_url = leader_url(describe(&mut admin, BIG).await.leader);
    let calm_url = leader_url(describe(&mut admin, CALM).await.leader);
    let mut calm = connect(&calm_url).await;
    append(&mut calm, CALM, "first").await;
    if asleep {
        // Idle for longer than a group stays awake (3 s) plus the leader's
        // check for idle groups (every 1 s).
        tokio::time::sleep(Duration::from_secs(5)).await;
    }

    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut flooders = Vec::new();
    for _ in 0..4 {
        let mut c = connect(&big_url).await;
        let stop = stop.clone();
        let request = v1::AppendBatchRequest {
            topic: BIG.into(),
            payloads: vec![vec![b'f'; PAYLOAD_BYTES].into(); PAYLOADS],
            producer: None,
            handler: String::new(),
        };
        flooders.push(tokio::spawn(async move {
            // When each batch was acknowledged, and how many were refused.
            let (mut accepted, mut refused) = (Vec::new(), 0u64);
            while !*stop.borrow() {
                match c.append_batch(request.clone()).await {
                    Ok(r) => {
                        assert_eq!(r.into_inner().count, PAYLOADS as u64);
                        accepted.push(Instant::now());
                    }
                    Err(s) => {
                        assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                        assert!(s.message().contains("retry in about"), "{s:?}");
                        refused += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            (accepted, refused)
        }));
    }

    // Single appends beside the flood, once it is under way.
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut latencies = Vec::new();
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        let t = Instant::now();
        append(&mut calm, CALM, "calm").await;
        latencies.push(t.elapsed());
    }
    stop_tx.send_replace(true);
    let (mut accepted, mut refused) = (vec![started], 0);
    for f in flooders {
        let (a, r) = f.await.unwrap();
        accepted.extend(a);
        refused += r;
    }
    accepted.sort();
    assert_eq!(
        describe(&mut admin, BIG).await.leader,
        peer_id(&big_url),
        "the flooded group's leader moved"
    );
    let batches = accepted.len() as u64 - 1;
    let gap = accepted.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    let max = *latencies.last().unwrap();
    eprintln!(
        "flood: {batches} batches taken, {refused} refused, longest wait for one {gap:?}; \
         single appends: {}, p50 {:?}, p99 {p99:?}, max {max:?}",
        latencies.len(),
        latencies[latencies.len() / 2],
    );
    assert!(
        batches >= 8,
        "the flood made little progress: {batches} batches"
    );
    assert!(refused > 0, "the flood was never pushed back");
    assert!(
        gap < STALL,
        "the flooded group committed nothing for {gap:?}"
    );
    assert!(
        latencies.len() > 100,
        "{} single appends in 8 s",
        latencies.len()
    );
    assert!(max < STALL, "a single append waited {max:?}");
    let mut big = connect(&big_url).await;
    assert_eq!(
        latest(&mut big, BIG).await.last_seq,
        batches * PAYLOADS as u64
    );
}
