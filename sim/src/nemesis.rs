//! The nemesis: every [`TICK_MS`] of simulated time it may start a
//! partition (a split of the nodes in two, a one-way cut, or a node
//! isolated: often the leader of some topic), crash a node, arm a torn
//! write (a crash during the node's next synced write), make a node's next
//! write fail (the node is restarted a little later, as a supervisor
//! would), make a node's wall clock jump, or make a node's disk slow; it heals partitions and
//! restarts crashed nodes after a random while. At most a minority of the
//! nodes is down (or about to be) at once. Per-message faults (drop,
//! delay, duplicate, reorder) are the network's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Fault, Rates};
use crate::node::Cluster;
use crate::rng::SimRng;
use crate::workload::leader_of;

/// How often the nemesis acts.
pub const TICK_MS: u64 = 100;
/// A partition lasts this long (range, ms).
const PARTITION_MS: (u64, u64) = (300, 3_000);
/// A crashed node stays down this long (range, ms).
const DOWN_MS: (u64, u64) = (200, 3_000);
/// One crash in [`LONG_DOWN_ONE_IN`] keeps the node down this long (range,
/// ms): long enough for its groups to purge the log it needs, so that it
/// catches up from a snapshot.
const LONG_DOWN_MS: (u64, u64) = (5_000, 20_000);
const LONG_DOWN_ONE_IN: u64 = 10;

/// How long a crashed node stays down.
fn downtime(rng: &mut SimRng) -> u64 {
    if rng.range(0, LONG_DOWN_ONE_IN) == 0 {
        rng.range(LONG_DOWN_MS.0, LONG_DOWN_MS.1)
    } else {
        rng.range(DOWN_MS.0, DOWN_MS.1)
    }
}
/// An armed torn write or write failure that no write set off within this
/// long is disarmed.
const ARMED_MS_MAX: u64 = 1_000;
/// A node whose write failed runs on (its group stopped) this long before
/// it is restarted (range, ms).
const SICK_MS: (u64, u64) = (100, 2_000);
/// A disk is slow this long (range, ms).
const SLOW_MS: (u64, u64) = (1_000, 5_000);
/// The largest clock jump, either way.
const CLOCK_JUMP_MS_MAX: u64 = 600_000;

/// Runs until `until_ms`, then heals every partition and restarts every
/// node (faults off from then on).
pub async fn run(cluster: Arc<Cluster>, rates: Rates, mut rng: SimRng, until_ms: u64) {
    let rec = cluster.rec.clone();
    let ids = cluster.ids();
    let down_max = (ids.len() - 1) / 2;
    // Active partitions: their links, and when they heal.
    let mut partitions: Vec<(u64, Vec<(u64, u64)>)> = Vec::new();
    // Crashed nodes and when they restart.
    let mut down: BTreeMap<u64, u64> = BTreeMap::new();
    // Nodes with an armed torn write, and since when.
    let mut armed: BTreeMap<u64, u64> = BTreeMap::new();
    // Nodes whose next write fails: since when, and failures before.
    let mut failing: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    // Nodes whose write failed, and when they are restarted.
    let mut sick: BTreeMap<u64, u64> = BTreeMap::new();
    let per_tick = |f: Fault| rates.get(f) * TICK_MS as f64 / 1000.0;
    while rec.now_ms() < until_ms {
        tokio::time::sleep(Duration::from_millis(TICK_MS)).await;
        let now = rec.now_ms();

        // Heal what is due.
        partitions.retain(|(heal_at, links)| {
            if *heal_at <= now {
                cluster.net.unblock(links);
                rec.event(format_args!("partition healed: {links:?}"));
                false
            } else {
                true
            }
        });
        let due: Vec<u64> = down
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            down.remove(&id);
            if let Err(e) = cluster.restart(id).await {
                rec.event(format_args!("node n{id} failed to restart: {e}"));
            }
        }

        // Torn writes that went off: the node is dead; reap it.
        for id in armed.keys().copied().collect::<Vec<_>>() {
            let store = cluster.store(id);
            if store.as_ref().and_then(|s| s.crashed()).is_some() {
                armed.remove(&id);
                rec.fault(
                    Fault::Torn,
                    format_args!("n{id} crashed during a synced write"),
                );
                cluster.crash(id, &mut rng).await;
                down.insert(id, now + downtime(&mut rng));
            } else if now - armed[&id] > ARMED_MS_MAX {
                armed.remove(&id);
                if let Some(s) = store {
                    s.disarm();
                }
                rec.event(format_args!("n{id}: torn write disarmed (no synced write)"));
            }
        }

        // Failed writes: the node runs on until its restart.
        for (id, (since, before)) in std::mem::take(&mut failing) {
            let store = cluster.store(id);
            let failed = store.as_ref().map_or(before, |s| s.failed_writes());
            if failed > before {
                rec.fault(Fault::DiskFail, format_args!("n{id}: a write failed"));
                sick.insert(id, now + rng.range(SICK_MS.0, SICK_MS.1));
            } else if now - since > ARMED_MS_MAX {
                if let Some(s) = store {
                    s.cancel_failure();
                }
                rec.event(format_args!("n{id}: write failure disarmed (no write)"));
            } else {
                failing.insert(id, (since, before));
            }
        }
        let due: Vec<u64> = sick
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            sick.remove(&id);
            rec.event(format_args!("n{id} is restarted after its failed write"));
            cluster.crash(id, &mut rng).await;
            down.insert(id, now + downtime(&mut rng));
        }

        if rng.chance(per_tick(Fault::Clock)) {
            let up = cluster.up_ids();
            if let Some(id) = rng.pick(&up).copied()
                && let Some(clock) = cluster.clock(id)
            {
                let ms = rng.range(1, CLOCK_JUMP_MS_MAX) as i64;
                let ms = if rng.chance(0.5) { -ms } else { ms };
                clock.jump(ms);
                rec.fault(Fault::Clock, format_args!("n{id}'s clock jumps {ms:+} ms"));
            }
        }

        if rng.chance(per_tick(Fault::Slow)) {
            let up = cluster.up_ids();
            if let Some(id) = rng.pick(&up).copied()
                && let Some(store) = cluster.store(id)
            {
                let ms = rng.range(SLOW_MS.0, SLOW_MS.1);
                store.slow_until(
                    tokio::time::Instant::now() + Duration::from_millis(ms),
                    rng.next_u64(),
                );
                rec.fault(
                    Fault::Slow,
                    format_args!("n{id}'s disk is slow for {ms} ms"),
                );
            }
        }

        if rng.chance(per_tick(Fault::Partition)) {
            let (what, links) = partition(&cluster, &ids, &mut rng).await;
            if !links.is_empty() {
                rec.fault(Fault::Partition, format_args!("{what}"));
                cluster.net.block(&links);
                partitions.push((now + rng.range(PARTITION_MS.0, PARTITION_MS.1), links));
            }
        }

        // Nodes down, or about to be: at most a minority.
        let troubled: Vec<u64> = down
            .keys()
            .chain(armed.keys())
            .chain(failing.keys())
            .chain(sick.keys())
            .copied()
            .collect();
        let calm: Vec<u64> = cluster
            .up_ids()
            .into_iter()
            .filter(|id| !troubled.contains(id))
            .collect();
        if troubled.len() < down_max {
            let kind = [Fault::Crash, Fault::Torn, Fault::DiskFail, Fault::Leave]
                .into_iter()
                .find(|f| rng.chance(per_tick(*f)));
            let node = rng.pick(&calm).copied();
            if let (Some(kind), Some(id)) = (kind, node) {
                let Some(store) = cluster.store(id) else {
                    continue;
                };
                match kind {
                    Fault::Crash => {
                        rec.fault(Fault::Crash, format_args!("n{id} loses power"));
                        cluster.crash(id, &mut rng).await;
                        down.insert(id, now + downtime(&mut rng));
                    }
                    Fault::Leave => {
                        rec.fault(Fault::Leave, format_args!("n{id} is stopped on purpose"));
                        cluster.leave(id, &mut rng).await;
                        down.insert(id, now + downtime(&mut rng));
                    }
                    Fault::Torn => {
                        rec.event(format_args!(
                            "n{id}: a crash is armed for its next synced write"
                        ));
                        store.tear_next_sync(rng.next_u64());
                        armed.insert(id, now);
                    }
                    _ => {
                        rec.event(format_args!("n{id}: its next write will fail"));
                        failing.insert(id, (now, store.failed_writes()));
                        store.fail_next_write();
                    }
                }
            }
        }
    }

    // The end of the faults: heal everything, bring every node back.
    cluster.net.set_rates(Rates::none());
    cluster.net.heal();
    for id in &ids {
        if let Some(s) = cluster.store(*id) {
            s.slow_until(tokio::time::Instant::now(), 0);
        }
    }
    for id in armed.keys() {
        if let Some(s) = cluster.store(*id) {
            s.disarm();
        }
    }
    for id in failing.keys().chain(sick.keys()) {
        if let Some(s) = cluster.store(*id) {
            s.cancel_failure();
        }
    }
    for id in sick.keys().chain(failing.keys()) {
        // A write may have failed: restart the node as its supervisor would.
        if cluster.store(*id).is_some_and(|s| s.failed_writes() > 0) {
            cluster.crash(*id, &mut rng).await;
        }
    }
    for id in ids {
        if cluster.store(id).and_then(|s| s.crashed()).is_some() && cluster.is_up(id) {
            // A torn write went off after the last tick.
            rec.fault(
                Fault::Torn,
                format_args!("n{id} crashed during a synced write"),
            );
            cluster.crash(id, &mut rng).await;
        }
        if !cluster.is_up(id)
            && let Err(e) = cluster.restart(id).await
        {
            rec.event(format_args!("node n{id} failed to restart: {e}"));
        }
    }
    rec.event("faults over: network healed, every node up");
}

/// Draws a partition: what it is, and the links it cuts.
async fn partition(cluster: &Cluster, ids: &[u64], rng: &mut SimRng) -> (String, Vec<(u64, u64)>) {
    let mut links = Vec::new();
    match rng.range(0, 3) {
        0 => {
            // Split in two.
            let side: Vec<u64> = ids.iter().copied().filter(|_| rng.chance(0.5)).collect();
            for a in ids {
                for b in ids {
                    if side.contains(a) != side.contains(b) {
                        links.push((*a, *b));
                    }
                }
            }
            (format!("split {side:?} from the rest"), links)
        }
        1 => {
            // One way.
            let a = *rng.pick(ids).expect("nodes");
            let b = *rng.pick(ids).expect("nodes");
            if a != b {
                links.push((a, b));
            }
            (format!("one way: n{a} cannot reach n{b}"), links)
        }
        _ => {
            // Isolate a node: the leader of some topic, or any.
            let topic = rng.range(0, cluster.plans.len() as u64) as usize;
            let (who, id) = match leader_of(cluster, topic) {
                Some(l) if rng.chance(0.7) => (format!("leader of t{topic}"), l),
                _ => ("node".to_string(), *rng.pick(ids).expect("nodes")),
            };
            for b in ids {
                if *b != id {
                    links.push((id, *b));
                    links.push((*b, id));
                }
            }
            (format!("isolate {who} n{id}"), links)
        }
    }
}
