//! The same seed gives the same run: the same history hash and the same
//! number of events, twice in one process; another seed gives another run.

use woof_sim::{Config, Rates};

fn config(seed: u64) -> Config {
    Config {
        seed,
        nodes: 5,
        topics: 4,
        replication: 3,
        clients: 3,
        sim_time_ms: 5_000,
        faults: Rates::all(),
        trace: false,
    }
}

#[test]
fn sim_same_seed_same_history() {
    let a = woof_sim::run(&config(7)).unwrap();
    let b = woof_sim::run(&config(7)).unwrap();
    assert_eq!(
        (a.hash, a.events, a.sim_ms, a.faults, a.acked),
        (b.hash, b.events, b.sim_ms, b.faults, b.acked),
        "seed 7 ran two different ways"
    );
    assert!(
        a.events > 1_000,
        "a run with so few events ({}) proves little",
        a.events
    );
    let c = woof_sim::run(&config(8)).unwrap();
    assert_ne!(a.hash, c.hash, "seeds 7 and 8 gave the same history");
}
