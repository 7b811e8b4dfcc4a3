//! `woof-sim`: woof's consensus, topic, group and cluster topic code, many nodes in one process,
//! over a simulated network, disk and clock, with faults, and checkers that
//! know what must always hold (issue 4; the design is in docs/adr/0005).
//!
//! One run is one seed: a single-threaded tokio runtime with a paused clock
//! (it jumps to the next timer whenever every task waits) and seeded random
//! numbers (tokio's, openraft's and the simulator's own), so that the same
//! seed takes the same path and gives the same history hash.
//!
//! A run ([`run`]): N nodes start; T topics are created, fault-free, each
//! through another node's `ClusterTopics` (which places it on R nodes with
//! woof's placement engine and publishes its DHT record); then for the
//! simulated time asked, clients append and read and subscribers follow
//! topics through the nodes' `ClusterTopics`, an admin creates, deletes and
//! re-creates extra topics, and every node runs repair, while the network
//! and the nemesis inject faults; then the faults stop, the network heals,
//! every node comes back but one, lost for good (when the cluster can spare
//! it), a probe appends to every topic, repair replaces the lost node's
//! replicas, the groups catch up, and the checkers look at what was
//! recorded and what every voter holds.
//!
//! Layout:
//! - `config.rs`: a run's [`Config`], the fault kinds and their rates
//!   (`--faults`), the per-kind counts, the deliberate bugs ([`Broken`])
//!   that show the checkers bite (some in woof's code: ADR 0006);
//! - `rng.rs`: the seeded random numbers, one stream per purpose;
//! - `history.rs`: the run's events, their hash, the last ones for reports,
//!   and the [`history::Recorder`] every part records through;
//! - `store.rs`: the simulated disk ([`store::SimStore`]): woof's storage
//!   traits in memory, with crashes that lose what was not synced, and slow
//!   spells;
//! - `net.rs`: the simulated network ([`net::SimNet`]): the group layer's
//!   `Net` with drops, delays, duplicates, reordering, partitions, clients'
//!   calls to nodes, and the DHT and member view `ClusterTopics` is built
//!   on (`woof_node::api::Overlay`);
//! - `node.rs`: the cluster: nodes (disk, topics, group layer, cluster
//!   topic API with its repair loop, clock), the topics' creation, crash
//!   and restart;
//! - `admin.rs`: creates and deletes of extra topics during the faults,
//!   and one name created from several nodes at once (names are claimed in
//!   the directory group, which `node.rs` makes on n1..n3);
//! - `nemesis.rs`: partitions, crashes, torn writes, failing writes, clock
//!   jumps and slow disks over time, and the heal at the end;
//! - `workload.rs`: the clients (producer appends with retries,
//!   linearizable reads), the subscribers, the probes after the heal, and
//!   the sampler of replicas' contents;
//! - `check/`: the checkers, one promise per file;
//! - `main.rs`: the `woof-sim` command line (one seed, a sweep, a replay).
//!
//! Tests (`tests/`): the disk's crash model, determinism (in one process and
//! across processes), CI's fixed sweeps with every fault, and each
//! deliberate bug caught by its checker.
//!
//! Each node runs woof's own group layer (`woof_node::groups::Groups`:
//! forwarding to leaders, group commit, sleeping groups) over the
//! simulated network (`woof_node::groups::Net`), and woof's own cluster
//! topic API (`woof_node::api::ClusterTopics`: create and delete across
//! the DHT, lookups and their cache, the local-or-leader read choice,
//! remote follow, and repair through `maintain`) over a simulated DHT and
//! member view (`woof_node::api::Overlay`). Not simulated: libp2p
//! itself (Kademlia's routing, Identify, the heartbeats behind the member
//! view) and gRPC.

// openraft 0.10's futures are deep: laying out the admin calls that await
// them passes the default limit of 128.
#![recursion_limit = "256"]

#[cfg(not(tokio_unstable))]
compile_error!(
    "woof-sim needs tokio's unstable API to seed the runtime (`--cfg tokio_unstable`, set in .cargo/config.toml); a RUSTFLAGS variable overrides that file"
);

pub mod admin;
pub mod check;
pub mod config;
pub mod history;
pub mod joins;
pub mod nemesis;
pub mod net;
pub mod node;
pub mod rng;
pub mod store;
pub mod workload;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub use config::{Broken, Config, Counts, Fault, Rates};
use history::Recorder;
use node::Cluster;
use rng::SimRng;
use woof_consensus::store::Store;

/// The simulator's errors: a run that could not be set up (a violation of
/// woof's promises is not an error but part of the [`Outcome`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad configuration: {0}")]
    Config(String),
    #[error("setting up the simulated cluster: {0}")]
    Setup(String),
    #[error(transparent)]
    Consensus(#[from] woof_consensus::Error),
    #[error("building the runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

/// What one run did and found.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub seed: u64,
    /// The history's hash: the same seed (and config) gives the same hash.
    pub hash: u64,
    pub events: u64,
    /// Simulated time of the whole run (setup, faults, heal, catch-up).
    pub sim_ms: u64,
    pub faults: Counts,
    pub appends: u64,
    pub acked: u64,
    /// Appends whose outcome the client never learned.
    pub unknown: u64,
    /// Reads (of a latest range, or gets) that were answered.
    pub reads: u64,
    /// Elements delivered to subscribers.
    pub delivered: u64,
    /// Leaderships handed over by nodes stopped on purpose (`leave`).
    pub handed_over: u64,
    /// Whether every topic's replicas held the same elements before the
    /// final check (the progress checker insists on it).
    pub settled: bool,
    pub violations: Vec<check::Violation>,
    /// The last events, for a failure report.
    pub recent: Vec<String>,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Topics keep this many elements: more than a run appends, so that
/// nothing is trimmed and the checkers see every element.
pub(crate) const HISTORY: u64 = 1_000_000;
/// How long, past the repair time, the replicas on the node lost at the end
/// may take to be replaced.
const REPAIR_MS_MAX: u64 = 30_000;
/// How long the groups get to catch up after the faults, at most.
const SETTLE_MS_MAX: u64 = 30_000;

/// Builds the runtime one run of `seed` happens on: one thread, a paused
/// clock, tokio's random numbers seeded; storage work runs in place and
/// openraft's random numbers are seeded on this thread.
pub fn runtime(seed: u64) -> std::io::Result<tokio::runtime::Runtime> {
    woof_consensus::store::run_storage_inline(true);
    woof_consensus::raft::runtime::seed_thread_rng(Some(seed ^ 0x5241_4654));
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .rng_seed(tokio::runtime::RngSeed::from_bytes(&seed.to_le_bytes()))
        .build()
}

thread_local! {
    /// Panics on this thread since the run began (a run's tasks, storage
    /// included, all run on its thread).
    static PANICS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Records every panic on the thread it happens on (then reports it as
/// before): a node must never panic, and openraft's own assertions (in
/// debug builds) are the first to see a log that went wrong.
fn record_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let what = format!("{info}");
            PANICS.with(|p| p.borrow_mut().push(what));
            report(info);
        }));
    });
}

/// Runs one seed on the calling thread.
pub fn run(config: &Config) -> Result<Outcome, Error> {
    config.validate()?;
    record_panics();
    PANICS.with(|p| p.borrow_mut().clear());
    let rt = runtime(config.seed)?;
    woof_consensus::bugs::set(config.broken.and_then(Broken::in_woof));
    let outcome = rt.block_on(simulate(config.clone()));
    // Tasks still waiting (zombies of crashed incarnations) are dropped.
    drop(rt);
    woof_consensus::bugs::set(None);
    outcome
}

fn joined<T>(r: Result<T, tokio::task::JoinError>) -> Result<T, Error> {
    r.map_err(|e| Error::Setup(format!("a simulation task failed: {e}")))
}

async fn simulate(config: Config) -> Result<Outcome, Error> {
    let root = SimRng::new(config.seed);
    let rec = Arc::new(Recorder::new(config.trace));
    // Tracing changes what is printed, never the run: it stays out of the hash.
    let recorded = Config {
        trace: false,
        ..config.clone()
    };
    rec.event(format_args!("run {recorded:?}"));
    let mut cluster = Cluster::new(
        rec.clone(),
        root.fork("net"),
        config.nodes,
        config.topics,
        config.replication,
        &mut root.fork("placement"),
        config.broken,
        Duration::from_millis(config.repair_after_ms),
    )?;
    if let Some(every) = config.snapshot_every {
        cluster.group_timing.snapshot_every = every;
        cluster.group_timing.log_kept = every / 5;
    }
    if let Some(bytes) = config.snapshot_bytes {
        cluster.group_timing.snapshot_log_bytes = bytes;
        cluster.group_timing.log_kept_bytes = bytes / 5;
    }
    for id in cluster.ids() {
        cluster.start(id).await?;
    }
    cluster.bootstrap_directory().await?;
    cluster.create_topics(HISTORY).await?;
    cluster.bind_handler(HISTORY).await?;
    let cluster = Arc::new(cluster);
    for id in cluster.ids() {
        if let Some(peer) = cluster.net.peer(id) {
            rec.note(|| {
                format!(
                    "n{id} is {peer}, Raft node {}",
                    woof_node::groups::node_id(&peer)
                )
            });
        }
    }
    rec.event("setup done; faults on");

    let net = cluster.net.clone();
    net.set_rates(config.faults);
    let until = rec.now_ms() + config.sim_time_ms;
    let record = workload::Shared::default();
    let nemesis = tokio::spawn(nemesis::run(
        cluster.clone(),
        config.faults,
        root.fork("nemesis"),
        until,
    ));
    let sampler = tokio::spawn(workload::sampler(cluster.clone(), record.clone(), until));
    let admin = tokio::spawn(admin::admin(
        cluster.clone(),
        record.clone(),
        config.extra_topics,
        root.fork("admin"),
        until,
    ));
    let races = config.concurrent_creates.then(|| {
        tokio::spawn(admin::races(
            cluster.clone(),
            record.clone(),
            root.fork("races"),
            until,
        ))
    });
    let clients: Vec<_> = (0..config.clients)
        .map(|c| {
            tokio::spawn(workload::client(
                cluster.clone(),
                record.clone(),
                c,
                root.fork(&format!("client/{c}")),
                until,
                config.broken,
            ))
        })
        .collect();
    let subscribers: Vec<_> = (0..config.clients.div_ceil(2))
        .map(|s| {
            tokio::spawn(workload::subscriber(
                cluster.clone(),
                record.clone(),
                s,
                root.fork(&format!("subscriber/{s}")),
                until,
            ))
        })
        .collect();
    for task in clients.into_iter().chain(subscribers) {
        joined(task.await)?;
    }
    joined(sampler.await)?;
    joined(admin.await)?;
    if let Some(races) = races {
        joined(races.await)?;
    }
    joined(nemesis.await)?;

    // The faults are over, every node is back, but one (when the cluster
    // has a node to spare) is lost for good: every topic must take an
    // append, its replicas on the lost node be replaced (the repair
    // checker), and its replicas catch up, within bounded time (the
    // progress checker).
    let lost = lose_one(&cluster).await;
    workload::probe(&cluster, &record, config.clients, rec.now_ms()).await;
    if let Some(lost) = lost {
        wait_repaired(&cluster, lost).await;
    }
    let lagging = settle(&cluster).await;
    let settled = lagging.is_empty();
    let handled = workload::handled(&cluster, SETTLE_MS_MAX).await;
    admin::survey(&cluster, &record).await;
    let voters: BTreeMap<usize, Vec<u64>> = cluster
        .plans
        .iter()
        .map(|p| (p.index, cluster.voters(p)))
        .collect();
    {
        let mut r = workload::lock(&record);
        r.progress.lagging = lagging;
        r.progress.lost = lost;
        r.progress.up = cluster.up_ids();
        r.late_joins = cluster.joins.late();
    }
    note_views(&cluster);
    let finals = final_contents(&cluster, &voters);
    cluster.stop().await;
    rec.event("run over");

    let record = std::mem::take(&mut *workload::lock(&record));
    let mut violations = check::all(&check::Observed {
        plans: &cluster.plans,
        record: &record,
        voters,
        replication: config.replication,
        finals,
        handled,
    });
    let panics = PANICS.with(|p| std::mem::take(&mut *p.borrow_mut()));
    violations.extend(
        panics
            .into_iter()
            .take(check::REPORTED_MAX)
            .map(|what| check::Violation {
                checker: "panic",
                what,
            }),
    );
    for v in &violations {
        rec.event(format_args!("VIOLATION {v}"));
    }
    let count = |f: fn(&workload::AppendResult) -> bool| {
        record.appends.iter().filter(|a| f(&a.result)).count() as u64
    };
    Ok(Outcome {
        seed: config.seed,
        hash: rec.hash(),
        events: rec.len(),
        sim_ms: rec.now_ms(),
        faults: rec.faults(),
        appends: record.appends.len() as u64,
        acked: count(|r| matches!(r, workload::AppendResult::Acked { .. })),
        unknown: count(|r| matches!(r, workload::AppendResult::Unknown(_))),
        reads: record
            .reads
            .iter()
            .filter(|r| !matches!(r.result, workload::ReadResult::Failed(_)))
            .count() as u64,
        delivered: record
            .subscriptions
            .iter()
            .map(|s| s.got.len() as u64)
            .sum(),
        handed_over: cluster
            .handed_over
            .load(std::sync::atomic::Ordering::Relaxed),
        settled,
        violations,
        recent: rec.recent(),
    })
}

/// Crashes the node that is lost for good at the end, if the cluster can
/// spare one: the last node (a cloud node), when the others still number
/// the replication factor and keep two cloud nodes for the mixed
/// placement. Returns it.
async fn lose_one(cluster: &Cluster) -> Option<u64> {
    let ids = cluster.ids();
    let n = ids.len() as u64;
    let cloud = n - n.div_ceil(3);
    if n <= cluster.replication as u64 || cloud < 3 {
        return None;
    }
    let lost = *ids.last()?;
    cluster
        .crash(lost, &mut SimRng::new(0x4c4f_5354 ^ lost))
        .await;
    cluster.rec.event(format_args!(
        "n{lost} lost for good: its replicas must be replaced"
    ));
    Some(lost)
}

/// Waits (at most the repair time and [`REPAIR_MS_MAX`]) until no topic's
/// voters include `lost`.
async fn wait_repaired(cluster: &Cluster, lost: u64) {
    let start = cluster.rec.now_ms();
    let max = cluster.repair_after.as_millis() as u64 + REPAIR_MS_MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let waiting = cluster
            .plans
            .iter()
            .filter(|p| cluster.voters(p).contains(&lost))
            .count();
        if waiting == 0 {
            cluster.rec.event(format_args!(
                "every replica on n{lost} replaced after {} ms",
                cluster.rec.now_ms() - start
            ));
            return;
        }
        if cluster.rec.now_ms() - start >= max {
            cluster.rec.event(format_args!(
                "{waiting} topics still have a replica on n{lost} after {max} ms"
            ));
            return;
        }
    }
}

/// Waits (at most [`SETTLE_MS_MAX`]) until every topic's replicas hold the
/// same last seq twice in a row; returns the topics whose replicas did not,
/// with each replica's last seq.
async fn settle(cluster: &Cluster) -> Vec<(usize, Vec<Option<u64>>)> {
    let start = cluster.rec.now_ms();
    let mut stable = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let lagging: Vec<(usize, Vec<Option<u64>>)> = cluster
            .plans
            .iter()
            .filter_map(|p| {
                let lasts: Vec<Option<u64>> = cluster
                    .voters(p)
                    .iter()
                    .map(|n| {
                        cluster
                            .store(*n)
                            .and_then(|s| s.last_seq(p.topic_id()).ok())
                    })
                    .collect();
                let even = lasts.iter().all(|l| l.is_some() && *l == lasts[0]);
                (!even).then_some((p.index, lasts))
            })
            .collect();
        stable = if lagging.is_empty() { stable + 1 } else { 0 };
        if stable >= 2 {
            cluster.rec.event("replicas caught up");
            return lagging;
        }
        if cluster.rec.now_ms() - start >= SETTLE_MS_MAX {
            cluster.rec.event(format_args!(
                "replicas of {} topics did not catch up within {SETTLE_MS_MAX} ms",
                lagging.len()
            ));
            return lagging;
        }
    }
}

/// Prints (with `--replay`) what every up node's replica of each topic
/// says of its group at the end: the first thing to read when a check of
/// voters or contents fails.
fn note_views(cluster: &Cluster) {
    for p in &cluster.plans {
        for id in cluster.up_ids() {
            let Some(groups) = cluster.groups(id) else {
                continue;
            };
            for r in groups
                .replicas()
                .into_iter()
                .filter(|r| r.group == p.group.0)
            {
                cluster.rec.note(|| {
                    let nodes = |peers: &[String]| -> Vec<u64> {
                        peers
                            .iter()
                            .filter_map(|m| m.parse().ok())
                            .filter_map(|m| cluster.net.node_of(&m))
                            .collect()
                    };
                    format!(
                        "t{} at n{id}: voters {:?}, leader {}, term {}, applied {}, seqs {}..={}",
                        p.index,
                        nodes(&r.members),
                        r.is_leader,
                        r.term,
                        r.applied_index,
                        r.first_seq,
                        r.last_seq
                    )
                });
            }
        }
    }
}

/// What each topic's voters hold at the end.
fn final_contents(cluster: &Cluster, voters: &BTreeMap<usize, Vec<u64>>) -> check::Finals {
    let mut finals = check::Finals::new();
    for p in &cluster.plans {
        for n in voters.get(&p.index).into_iter().flatten() {
            let els = cluster
                .store(*n)
                .and_then(|s| s.scan(p.topic_id(), 1, usize::MAX, usize::MAX).ok())
                .unwrap_or_default();
            finals.insert(
                (p.index, *n),
                els.into_iter()
                    .map(|e| (e.seq, e.payload.to_vec()))
                    .collect(),
            );
        }
    }
    finals
}
