//! The checkers bite: with a deliberate bug switched on, the simulator
//! reports it, by the checker meant for it, within a few seeds.

use woof_sim::{Broken, Config};

/// The first seed below `seeds` whose run the checker `checker` fails.
fn caught_by(broken: Broken, checker: &str, seeds: u64) -> Option<u64> {
    (0..seeds).find(|seed| {
        let outcome = woof_sim::run(&Config {
            seed: *seed,
            nodes: 5,
            topics: 4,
            replication: 3,
            clients: 4,
            sim_time_ms: 10_000,
            broken: Some(broken),
            ..Config::default()
        })
        .unwrap();
        outcome.violations.iter().any(|v| v.checker == checker)
    })
}

#[test]
fn sim_broken_acknowledging_before_the_commit_loses_acks() {
    assert!(
        caught_by(Broken::AckBeforeCommit, "lost_ack", 3).is_some(),
        "acks before commit went unnoticed"
    );
}

#[test]
fn sim_broken_retrying_with_a_new_producer_seq_appends_twice() {
    assert!(
        caught_by(Broken::RetryWithNewSeq, "dense", 10).is_some(),
        "retries that the topic cannot recognise went unnoticed"
    );
}

#[test]
fn sim_broken_a_replica_that_stores_other_payloads_disagrees() {
    assert!(
        caught_by(Broken::DivergentReplica, "agreement", 3).is_some(),
        "a divergent replica went unnoticed"
    );
}
