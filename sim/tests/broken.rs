//! The checkers bite: with a deliberate bug switched on, the simulator
//! reports it, by the checker meant for it, within a few seeds. Ten of the
//! bugs are in woof's own code (`woof_consensus::bugs`, compiled in for the
//! simulator only), three in the simulator's client or disk.

use woof_sim::check::Violation;
use woof_sim::{Broken, Config};

/// The first seed below `seeds` whose run the checker `checker` fails.
fn caught_by(broken: Broken, checker: &str, seeds: u64) -> Option<u64> {
    caught_in(broken, checker, seeds, 4, 10_000)
}

/// As [`caught_by`], with `clients` clients for `sim_time_ms`.
fn caught_in(
    broken: Broken,
    checker: &str,
    seeds: u64,
    clients: usize,
    sim_time_ms: u64,
) -> Option<u64> {
    first_caught(
        broken,
        seeds,
        |c| {
            c.clients = clients;
            c.sim_time_ms = sim_time_ms;
        },
        |v| v.checker == checker,
    )
}

/// The first seed below `seeds` whose run with `broken` (five nodes, four
/// topics of three replicas, four clients, 10 simulated seconds, then as
/// `tune` changes it) reports a violation that `caught` picks.
fn first_caught(
    broken: Broken,
    seeds: u64,
    tune: impl Fn(&mut Config),
    caught: impl Fn(&Violation) -> bool,
) -> Option<u64> {
    (0..seeds).find(|seed| {
        let mut config = Config {
            seed: *seed,
            nodes: 5,
            topics: 4,
            replication: 3,
            clients: 4,
            sim_time_ms: 10_000,
            broken: Some(broken),
            ..Config::default()
        };
        tune(&mut config);
        let outcome = woof_sim::run(&config).unwrap();
        outcome.violations.iter().any(&caught)
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
fn sim_broken_a_state_machine_that_forgets_producers_appends_twice() {
    assert!(
        caught_by(Broken::IgnoreProducerWindow, "dense", 10).is_some(),
        "a topic that ignores producer windows went unnoticed"
    );
}

#[test]
fn sim_broken_a_replica_that_stores_other_payloads_disagrees() {
    assert!(
        caught_by(Broken::DivergentReplica, "agreement", 3).is_some(),
        "a divergent replica went unnoticed"
    );
}

#[test]
fn sim_broken_subscriptions_that_deliver_twice_are_caught() {
    assert!(
        caught_by(Broken::SubscriberRedelivers, "subscribers", 3).is_some(),
        "a subscription that delivers an element twice went unnoticed"
    );
}

#[test]
fn sim_broken_restarted_groups_nobody_reaches_make_no_progress() {
    assert!(
        caught_by(Broken::RestartedGroupUnreachable, "progress", 5).is_some(),
        "groups that stop after a restart went unnoticed"
    );
}

#[test]
fn sim_broken_reads_answered_without_confirming_leadership_are_stale() {
    assert!(
        // Seed 15 since names are claimed in the directory (the runs
        // changed); 20 seeds is what issue 13 allows a deliberate bug.
        caught_by(Broken::StaleRead, "linear", 20).is_some(),
        "stale reads went unnoticed"
    );
}

/// Names created from two or three nodes at the same instant (every run
/// does that): a create that skips claiming the name makes several topics
/// of one name.
#[test]
fn sim_broken_creates_that_skip_the_name_claim_make_two_topics() {
    assert!(
        caught_by(Broken::CreateSkipsClaim, "one_name", 20).is_some(),
        "creates that skip the name claim went unnoticed"
    );
}

/// Client 0 appends without a producer id: a node that retries such an
/// append after a leader change, without the identity it gave it, appends
/// it twice.
#[test]
fn sim_broken_forwarded_retries_without_their_identity_append_twice() {
    assert!(
        caught_by(Broken::ForwardedRetryWithoutIdentity, "dense", 20).is_some(),
        "forwarded retries without their identity went unnoticed"
    );
}

/// Every run loses a node for good at the end, so every topic it held is
/// repaired: a repair that makes the new replica a voter before it caught
/// up is seen when the membership commits.
#[test]
fn sim_broken_repairs_that_skip_the_catch_up_count_a_voter_that_holds_nothing() {
    assert!(
        caught_by(Broken::RepairSkipsCatchUp, "repair", 20).is_some(),
        "repairs that skip the catch-up went unnoticed"
    );
}

/// Every run binds a handler to its first topic: one that records its
/// progress before the outputs it covers are committed skips them when it
/// stops in between (a crash, a partition, a leader change).
#[test]
fn sim_broken_handlers_that_record_progress_before_their_outputs_lose_outputs() {
    assert!(
        caught_by(Broken::HandlerProgressFirst, "handled", 20).is_some(),
        "progress recorded before the outputs went unnoticed"
    );
}

/// A leader that reports its own log write flushed before it is synced
/// commits an entry with one follower alone; when the leader loses power
/// and the follower without the entry wins the next election, an
/// acknowledged append is gone. Since the leader sends entries before its
/// own write is synced (openraft 0.10, ADR 28), the first sign is often
/// openraft's own assertion: a replica told to replace an entry it knows
/// committed, which panics its group (the `panic` checker), or the lost
/// ack itself. The window is a leader's crash between its acknowledgement
/// and its next sync, so this run crashes a node about once a simulated
/// second (default: 0.15), on three nodes (every crash hits every group)
/// with eight clients. When this test was written (5 nodes, 4 clients) it
/// caught the bug at seeds 0, 1, 2, 6, 13 and 15 of the first 16. Since
/// leaderships spread over the nodes (ADR 42) the same runs caught it at
/// 37 of 40 (2 of 16 with the balance switched off); this run catches it
/// at seeds 4, 5 and 19 of 40, and the same runs without the bug found
/// nothing in 16 seeds. Why the rate fell is not established.
#[test]
fn sim_broken_leaders_that_count_themselves_before_their_sync_lose_acks() {
    let mut faults = woof_sim::Rates::all();
    faults.set(woof_sim::Fault::Crash, 1.0);
    let caught = first_caught(
        Broken::LeaderCountsItselfUnsynced,
        40,
        |c| {
            c.faults = faults;
            c.nodes = 3;
            c.clients = 8;
        },
        |v| v.checker == "lost_ack" || v.what.contains("committed"),
    );
    assert!(
        caught.is_some(),
        "leaders counting an unsynced write went unnoticed"
    );
}

/// A snapshot's copy is made when it is sent (ADR 36). One that takes the
/// topic as the store holds it then, past the snapshot's log position,
/// gives the follower that installs it elements that the entries after
/// the snapshot append again, under other seqs: the replicas disagree.
/// Groups snapshot every 10 entries here, so that followers behind a
/// purge (after a crash or a partition) are sent snapshots.
#[test]
fn sim_broken_snapshot_copies_past_their_point_append_twice() {
    let caught = first_caught(
        Broken::SnapshotCopiesPastItsPoint,
        20,
        |c| c.snapshot_every = Some(10),
        |v| v.checker == "agreement" || v.checker == "dense",
    );
    assert!(
        caught.is_some(),
        "snapshot copies past their point went unnoticed"
    );
}
