//! A small sweep with every fault kind on: every seed passes every checker,
//! and every kind of fault was injected somewhere (a sweep that injected
//! nothing would prove nothing); and one run at the size issue 4 asks for.

use woof_sim::{Config, Counts, Fault, Outcome, Rates};

/// Runs `seed` on 5 nodes with 3 replicas per topic and every fault for
/// 10 s, and asserts that every checker passed and the replicas caught up.
fn passing_run(seed: u64, topics: usize, clients: usize) -> Outcome {
    let outcome = woof_sim::run(&Config {
        seed,
        nodes: 5,
        topics,
        replication: 3,
        clients,
        sim_time_ms: 10_000,
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
        let outcome = passing_run(seed, 4, 4);
        total.merge(&outcome.faults);
        acked += outcome.acked;
        reads += outcome.reads;
        delivered += outcome.delivered;
    }
    for f in Fault::ALL {
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
/// replicas, 8 clients, every fault on.
#[test]
fn sim_a_full_size_run_passes() {
    let outcome = passing_run(42, 20, 8);
    assert!(
        outcome.acked > 100,
        "only {} appends acknowledged",
        outcome.acked
    );
}
