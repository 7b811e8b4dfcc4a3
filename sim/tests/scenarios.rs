//! Scripted runs on the simulated cluster: one situation set up on purpose,
//! for a bug the sweeps once found, so that it stays fixed whatever the
//! random runs do later.

use std::sync::Arc;
use std::time::Duration;

use woof_consensus::raft::{Command, CommandResult};
use woof_node::error::Error;
use woof_node::groups::{Read, ReadReply};
use woof_sim::history::Recorder;
use woof_sim::node::{Cluster, TopicPlan};
use woof_sim::rng::SimRng;

/// Appends `payload` to `plan`'s topic at node `at`; the seq it got.
async fn append(cluster: &Cluster, plan: &TopicPlan, at: u64, payload: &str) -> u64 {
    let groups = cluster.groups(at).expect("the node is up");
    let command = Command::Append {
        payloads: vec![bytes::Bytes::from(payload.as_bytes().to_vec())],
        producer: None,
        time_ms: 0,
        cause: None,
        handler: None,
    };
    match groups
        .write(plan.group, &cluster.members(plan), command)
        .await
        .expect("the append is acknowledged")
    {
        CommandResult::Appended(o) => o.first_seq,
        other => panic!("appending gave {other:?}"),
    }
}

/// Waits until a replica other than `old` says it leads `plan`'s group.
async fn new_leader(cluster: &Cluster, plan: &TopicPlan, old: u64) -> u64 {
    for _ in 0..200 {
        for id in plan.replicas.iter().filter(|id| **id != old) {
            let leads = cluster.groups(*id).is_some_and(|g| {
                g.replicas()
                    .iter()
                    .any(|r| r.group == plan.group.0 && r.is_leader)
            });
            if leads {
                return *id;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no other replica took over within 10 s");
}

/// `nodes` simulated nodes up, with their name directory and one topic of
/// 3 replicas (seeded by `seed`).
async fn one_topic_cluster(seed: u64, nodes: u64, repair_after: Duration) -> Cluster {
    let root = SimRng::new(seed);
    let mut cluster = Cluster::new(
        Arc::new(Recorder::new(false)),
        root.fork("net"),
        nodes,
        1,
        3,
        &mut root.fork("placement"),
        None,
        repair_after,
    )
    .unwrap();
    for id in cluster.ids() {
        cluster.start(id).await.unwrap();
    }
    cluster.bootstrap_directory().await.unwrap();
    cluster.create_topics(1_000).await.unwrap();
    cluster
}

/// A leader cut off from the others does not know it was replaced: asked
/// for an element the new leader committed, it must not answer "out of
/// range" (it did, before reads past what a leader holds were confirmed by
/// a quorum; the sweeps found it as a `linear` violation).
#[test]
fn sim_a_leader_cut_off_never_says_an_acknowledged_element_is_missing() {
    let rt = woof_sim::runtime(7).unwrap();
    rt.block_on(async {
        let cluster = one_topic_cluster(7, 3, Duration::from_secs(60)).await;
        let plan = cluster.plans[0].clone();
        let old = cluster.leader(&plan).expect("a leader after creation");
        assert_eq!(append(&cluster, &plan, old, "before").await, 1);

        // Cut the leader off both ways; the others elect a new one.
        let links: Vec<(u64, u64)> = cluster
            .ids()
            .into_iter()
            .filter(|id| *id != old)
            .flat_map(|id| [(id, old), (old, id)])
            .collect();
        cluster.net.block(&links);
        let new = new_leader(&cluster, &plan, old).await;
        assert_eq!(append(&cluster, &plan, new, "after").await, 2);

        // The old leader's node, asked for #2 as a node asks the leader it knows.
        let groups = cluster.groups(old).expect("the old leader's node is up");
        let members = cluster.members(&plan);
        let asked = groups.read(plan.group, &members, &plan.name, Read::Get { seq: 2 });
        match tokio::time::timeout(Duration::from_secs(5), asked).await {
            Ok(Err(Error::Log(woof_consensus::Error::OutOfRange { .. }))) => {
                panic!("a cut-off node said an acknowledged element is out of range")
            }
            // Right: no quorum confirms it leads, and nobody else is reachable.
            Err(_) | Ok(Err(_)) => {}
            Ok(Ok(ReadReply::Elements(e))) => panic!("a cut-off node returned {e:?}"),
            Ok(Ok(other)) => panic!("a cut-off node answered {other:?}"),
        }
        // Healed, the same node finds it.
        cluster.net.heal();
        let found = groups
            .read(plan.group, &members, &plan.name, Read::Get { seq: 2 })
            .await
            .and_then(ReadReply::into_elements)
            .expect("found once healed");
        assert_eq!(&found[0].payload[..], b"after");
        cluster.stop().await;
    });
}

/// Repair, set up on purpose: a replica's node is lost for longer than
/// the repair time; the topic's leader replaces it by another node (its
/// placement's choice), the new voter holds what was acknowledged before,
/// and the topic takes appends at full strength.
#[test]
fn sim_a_replica_lost_past_the_repair_time_is_replaced_and_keeps_the_acks() {
    let rt = woof_sim::runtime(11).unwrap();
    rt.block_on(async {
        let cluster = one_topic_cluster(11, 5, Duration::from_secs(3)).await;
        let plan = cluster.plans[0].clone();
        let leader = cluster.leader(&plan).expect("a leader after creation");
        let before = append(&cluster, &plan, leader, "before").await;
        let lost = *plan
            .replicas
            .iter()
            .find(|id| **id != leader)
            .expect("a follower");
        cluster.crash(lost, &mut SimRng::new(1)).await;

        let mut voters = cluster.voters(&plan);
        for _ in 0..100 {
            if !voters.contains(&lost) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            voters = cluster.voters(&plan);
        }
        assert!(
            !voters.contains(&lost),
            "n{lost}'s replica was not replaced within 20 s: {voters:?}"
        );
        assert_eq!(voters.len(), 3, "back to three voters: {voters:?}");
        let new = *voters
            .iter()
            .find(|id| !plan.replicas.contains(id))
            .expect("a new voter");
        let leader = cluster.leader(&plan).expect("a leader after the repair");
        let after = append(&cluster, &plan, leader, "after").await;
        assert_eq!(after, before + 1);
        for _ in 0..100 {
            let last = cluster
                .topics(new)
                .and_then(|t| t.latest(&plan.name).ok())
                .map_or(0, |r| r.last);
            if last >= after {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let topics = cluster.topics(new).expect("the new voter is up");
        let held = topics.get(&plan.name, before).await.expect("held");
        assert_eq!(
            &held.payload[..],
            b"before",
            "n{new} holds the acked element"
        );
        cluster.stop().await;
    });
}

/// Two repair bugs the sweeps found, pinned to the seeds that showed them
/// (full-size runs; a seed's path changes with the code, so these guard
/// the fixes only until the next change of the run's shape):
/// - seed 3: a leader crashed in the middle of a replacement, leaving the
///   group joint (old and new voters); the next leader never finished the
///   change and a joint group was never repaired again: four voters at the
///   end, one of them lost for good (`repair`);
/// - seed 4: a node whose replica had been replaced while it was away was
///   chosen again by a later repair; when it came back, the first leader
///   removed its copy, a voter's by then: voters that held nothing, and
///   acknowledged appends held by one replica (`lost_ack`, `progress`).
#[test]
fn sim_repairs_finish_half_done_changes_and_keep_voters_chosen_again() {
    for seed in [3, 4] {
        let outcome = woof_sim::run(&woof_sim::Config {
            seed,
            ..woof_sim::Config::default()
        })
        .unwrap();
        assert!(
            outcome.ok(),
            "seed {seed}: {:#?}\nlast events:\n{}",
            outcome.violations,
            outcome.recent.join("\n")
        );
    }
}

/// A deleted topic's group stays gone: no node starts it again (a wake
/// that a peer's message began while the group was being removed once did,
/// from nothing: a member that never led and never said "no such group",
/// so appends to the deleted topic found no leader instead of no topic;
/// seen in CI), and a write from any node learns the group is gone.
#[test]
fn sim_a_deleted_topic_group_is_never_started_again() {
    let rt = woof_sim::runtime(11).unwrap();
    rt.block_on(async {
        let cluster = one_topic_cluster(11, 3, Duration::from_secs(60)).await;
        let plan = cluster.plans[0].clone();
        let at = cluster.leader(&plan).expect("a leader after creation");
        assert_eq!(append(&cluster, &plan, at, "before").await, 1);
        let deleter = cluster.ids().into_iter().find(|id| *id != at).unwrap();
        cluster
            .api(deleter)
            .expect("the node is up")
            .delete(&plan.name)
            .await
            .expect("deleted");

        let members = cluster.members(&plan);
        for id in cluster.ids() {
            let groups = cluster.groups(id).expect("the node is up");
            match groups.start(plan.group).await {
                Err(Error::Log(woof_consensus::Error::GroupWithoutTopic)) => {}
                Err(e) => panic!("node {id}: starting the deleted group failed oddly: {e}"),
                Ok(_) => panic!("node {id} started the deleted topic's group again"),
            }
            assert!(
                !groups.replicas().iter().any(|r| r.group == plan.group.0),
                "node {id} still runs the deleted group"
            );
            let command = Command::Append {
                payloads: vec![bytes::Bytes::from_static(b"after")],
                producer: None,
                time_ms: 0,
                cause: None,
                handler: None,
            };
            match groups.write(plan.group, &members, command).await {
                Err(Error::Log(woof_consensus::Error::GroupWithoutTopic)) => {}
                other => panic!("node {id}: a write to the deleted group gave {other:?}"),
            }
        }
        cluster.stop().await;
    });
}
