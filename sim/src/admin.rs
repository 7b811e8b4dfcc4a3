//! Topic administration during the faults, through the nodes' own
//! `ClusterTopics` (create and delete across the DHT):
//! - an admin creates, deletes and re-creates a few extra topics
//!   (`sim/x0`, ...) from random nodes, which exercises creation, deletion,
//!   tombstones and stale records under every fault (what was decided is
//!   recorded; the group-level checkers do not follow these topics);
//! - with `--concurrent-creates`, races: a new name created from two or
//!   three nodes at the same instant, and at the end what every node says
//!   the name's group is (the `one_name` checker).
//!
//! Calls cross the simulated network like any client's.

use std::time::Duration;

use crate::node::Cluster;
use crate::rng::SimRng;
use crate::workload::{Shared, lock};

/// One admin call's longest wait (a create starts a group on every replica).
const ADMIN_MS_MAX: u64 = 10_000;
/// How many races one run holds at most.
const RACES_MAX: usize = 5;

/// An admin's create or delete of an extra topic, and how it ended.
#[derive(Debug, Clone)]
pub struct AdminOp {
    pub at_ms: u64,
    pub node: u64,
    pub name: String,
    pub create: bool,
    /// The group created (a create that succeeded), or why it failed.
    pub result: Result<u64, String>,
}

/// One race: the same new name created from several nodes at once.
#[derive(Debug, Clone, Default)]
pub struct Race {
    pub name: String,
    /// Each create: (node, the group it created or why it failed).
    pub creates: Vec<(u64, Result<u64, String>)>,
    /// After the faults: what each node that is up says the name's group
    /// is (`None`: it found no topic of that name).
    pub seen: Vec<(u64, Option<u64>)>,
}

/// Asks node `node` to create (or delete) `name`, as a client would.
async fn call(cluster: &Cluster, node: u64, name: &str, create: bool) -> Result<u64, String> {
    let Some(api) = cluster.api(node) else {
        return Err(format!("n{node} down"));
    };
    let work = async {
        if create {
            cluster
                .create(node, name, cluster.replication, None, crate::HISTORY)
                .await
                .map(|view| view.info.meta.id.0)
        } else {
            api.delete(name).await.map(|()| 0)
        }
    };
    let work = tokio::time::timeout(Duration::from_millis(ADMIN_MS_MAX), work);
    match cluster
        .net
        .client_call("admin", node, ADMIN_MS_MAX, work)
        .await
    {
        Some(Ok(Ok(group))) => Ok(group),
        Some(Ok(Err(e))) => Err(e.to_string()),
        None | Some(Err(_)) => Err(format!("no answer in {ADMIN_MS_MAX} ms")),
    }
}

/// Creates, deletes and re-creates `extra` extra topics from random nodes
/// until `until_ms`.
pub async fn admin(
    cluster: std::sync::Arc<Cluster>,
    record: Shared,
    extra: usize,
    mut rng: SimRng,
    until_ms: u64,
) {
    if extra == 0 {
        return;
    }
    // Whether each extra topic was last created (else deleted, or never).
    let mut exists = vec![false; extra];
    while cluster.rec.now_ms() < until_ms {
        tokio::time::sleep(Duration::from_millis(rng.range(500, 3_000))).await;
        let k = rng.range(0, extra as u64) as usize;
        let name = format!("sim/x{k}");
        let Some(node) = rng.pick(&cluster.up_ids()).copied() else {
            continue;
        };
        let create = !exists[k];
        let at_ms = cluster.rec.now_ms();
        let result = call(&cluster, node, &name, create).await;
        cluster.rec.event(format_args!(
            "admin {} {name} at n{node}: {result:?}",
            if create { "create" } else { "delete" }
        ));
        // A create that failed because the name is taken, or a delete
        // because it is not found, still tells where the name stands.
        match (&result, create) {
            (Ok(_), _) => exists[k] = create,
            (Err(e), true) if e.contains("already exists") => exists[k] = true,
            (Err(e), false) if e.contains("not found") => exists[k] = false,
            _ => {}
        }
        lock(&record).admin.push(AdminOp {
            at_ms,
            node,
            name,
            create,
            result,
        });
    }
}

/// Until `until_ms`, every few seconds: creates a new name from two or
/// three nodes at the same instant, and records each create's outcome.
pub async fn races(
    cluster: std::sync::Arc<Cluster>,
    record: Shared,
    mut rng: SimRng,
    until_ms: u64,
) {
    for r in 0..RACES_MAX {
        tokio::time::sleep(Duration::from_millis(rng.range(1_000, 5_000))).await;
        if cluster.rec.now_ms() >= until_ms {
            return;
        }
        let name = format!("sim/race{r}");
        let mut up = cluster.up_ids();
        let racers = rng.range(2, 4) as usize;
        let mut nodes = Vec::new();
        while nodes.len() < racers && !up.is_empty() {
            let i = rng.range(0, up.len() as u64) as usize;
            nodes.push(up.remove(i));
        }
        cluster
            .rec
            .event(format_args!("race {name}: created at once from {nodes:?}"));
        let creates = futures::future::join_all(
            nodes
                .iter()
                .map(|n| async { (*n, call(&cluster, *n, &name, true).await) }),
        )
        .await;
        cluster.rec.event(format_args!("race {name}: {creates:?}"));
        lock(&record).races.push(Race {
            name,
            creates,
            seen: Vec::new(),
        });
    }
}

/// After the faults: asks every node that is up which group each raced
/// name has (`ClusterTopics::describe`: found through the node's replica,
/// cache or the DHT, described by the group's leader).
pub async fn survey(cluster: &Cluster, record: &Shared) {
    let names: Vec<String> = lock(record).races.iter().map(|r| r.name.clone()).collect();
    for (i, name) in names.iter().enumerate() {
        let mut seen = Vec::new();
        for node in cluster.up_ids() {
            let Some(api) = cluster.api(node) else {
                continue;
            };
            let described =
                tokio::time::timeout(Duration::from_millis(ADMIN_MS_MAX), api.describe(name)).await;
            let group = match described {
                Ok(Ok(view)) => Some(view.info.meta.id.0),
                _ => None,
            };
            seen.push((node, group));
        }
        cluster
            .rec
            .event(format_args!("race {name}: nodes see groups {seen:?}"));
        if let Some(race) = lock(record).races.get_mut(i) {
            race.seen = seen;
        }
    }
}
