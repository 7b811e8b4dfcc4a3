//! Scripted runs on the simulated cluster: one situation set up on purpose,
//! for a bug the sweeps once found, so that it stays fixed whatever the
//! random runs do later.

use std::sync::Arc;
use std::time::Duration;

use serde_bytes::ByteBuf;
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
        payloads: vec![ByteBuf::from(payload.as_bytes().to_vec())],
        producer: None,
        time_ms: 0,
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

/// A leader cut off from the others does not know it was replaced: asked
/// for an element the new leader committed, it must not answer "out of
/// range" (it did, before reads past what a leader holds were confirmed by
/// a quorum; the sweeps found it as a `linear` violation).
#[test]
fn sim_a_leader_cut_off_never_says_an_acknowledged_element_is_missing() {
    let rt = woof_sim::runtime(7).unwrap();
    rt.block_on(async {
        let rec = Arc::new(Recorder::new(false));
        let root = SimRng::new(7);
        let cluster = Cluster::new(
            rec,
            root.fork("net"),
            3,
            1,
            3,
            &mut root.fork("placement"),
            None,
        )
        .unwrap();
        for id in cluster.ids() {
            cluster.start(id).await.unwrap();
        }
        let plan = cluster.plans[0].clone();
        cluster.create_topic(&plan, 1_000).await.unwrap();
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
