//! CI's fixed sweeps, with every fault kind on: every seed passes every
//! checker, and every kind of fault was injected somewhere (a sweep that
//! injected nothing would prove nothing). A small sweep, and ten seeds at
//! the size issue 4 asks for (the long sweep is `woof-sim --seeds 0..200`;
//! docs/TESTING.md).

use woof_sim::{Config, Counts, Fault, Outcome, Rates};

/// Runs `seed` on 5 nodes with 3 replicas per topic and every fault for
/// `sim_time_ms`, and asserts that every checker passed and the replicas
/// caught up.
fn passing_run(seed: u64, topics: usize, clients: usize, sim_time_ms: u64) -> Outcome {
    let outcome = woof_sim::run(&Config {
        seed,
        nodes: 5,
        topics,
        replication: 3,
        clients,
        sim_time_ms,
        faults: Rates::all(),
        ..Config::default()
    })
    .unwrap();
    assert!(
        outcome.ok(),
        "seed {seed}: {:#?}\nlast events:\n{}",
        outcome.violations,
        outcome.recent.join("\n")
    );
    assert!(outcome.settled, "seed {seed}: replicas did not catch up");
    outcome
}

#[test]
fn sim_small_sweep_with_all_faults_passes() {
    let mut total = Counts::default();
    let (mut acked, mut reads, mut delivered) = (0, 0, 0);
    for seed in 0..5 {
        let outcome = passing_run(seed, 4, 4, 10_000);
        total.merge(&outcome.faults);
        acked += outcome.acked;
        reads += outcome.reads;
        delivered += outcome.delivered;
    }
    for f in Fault::ALL
        .into_iter()
        .filter(|f| Rates::all().get(*f) > 0.0)
    {
        assert!(total.get(f) > 0, "no {} fault injected: {total}", f.name());
    }
    // The checkers had something to check.
    assert!(acked > 100, "only {acked} appends acknowledged");
    assert!(reads > 50, "only {reads} reads answered");
    assert!(
        delivered > 100,
        "only {delivered} elements delivered to subscribers"
    );
}

/// The size issue 4 asks sweeps to run at: 5 nodes, 20 topics of 3
/// replicas, 8 clients, every fault on, 30 s of faults per seed.
#[test]
fn sim_a_full_size_sweep_passes() {
    let mut total = Counts::default();
    for seed in 1000..1010 {
        let outcome = passing_run(seed, 20, 8, 30_000);
        assert!(
            outcome.acked > 200 && outcome.reads > 50 && outcome.delivered > 200,
            "seed {seed}: too little checked: {outcome:?}"
        );
        total.merge(&outcome.faults);
    }
    for f in Fault::ALL
        .into_iter()
        .filter(|f| Rates::all().get(*f) > 0.0)
    {
        assert!(total.get(f) > 0, "no {} fault injected: {total}", f.name());
    }
}

/// Groups that snapshot every 50 entries (a node's do every 10,000, which
/// no run of seconds reaches): runs that purge logs, flush what the state
/// machines applied, and install snapshots on replicas that fell behind.
/// Found an openraft 0.9 purge that ran ahead of a snapshot install (ADR
/// 25).
#[test]
fn sim_a_sweep_whose_groups_snapshot_passes() {
    for seed in 2000..2008 {
        settled_run(&Config {
            seed,
            snapshot_every: Some(50),
            ..Config::default()
        });
    }
}

/// Runs `config`, and asserts that every checker passed and the replicas
/// caught up.
fn settled_run(config: &Config) -> Outcome {
    let outcome = woof_sim::run(config).unwrap();
    assert!(
        outcome.ok() && outcome.settled,
        "seed {}: {:#?}\nlast events:\n{}",
        config.seed,
        outcome.violations,
        outcome.recent.join("\n")
    );
    outcome
}

/// Nodes also stopped on purpose (`leave`, not in `all`): each hands the
/// leadership of its groups over while still on the network (openraft's
/// leader transfer over the simulated network, ADR 35), then goes down.
#[test]
fn sim_a_sweep_with_planned_stops_passes() {
    let (mut left, mut handed) = (0, 0);
    for seed in 3000..3004 {
        let outcome = settled_run(&Config {
            seed,
            faults: Rates::parse("all,leave=0.3").unwrap(),
            ..Config::default()
        });
        left += outcome.faults.get(Fault::Leave);
        handed += outcome.handed_over;
    }
    assert!(left > 0, "no node was stopped on purpose");
    assert!(
        handed > 0,
        "{left} nodes stopped on purpose handed nothing over"
    );
}
