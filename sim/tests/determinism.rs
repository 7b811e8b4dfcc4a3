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
        ..Config::default()
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
    // Tracing (--replay) prints the run, and changes nothing in it.
    let traced = woof_sim::run(&Config {
        trace: true,
        ..config(7)
    })
    .unwrap();
    assert_eq!(traced.hash, a.hash, "tracing changed the run");
    let c = woof_sim::run(&config(8)).unwrap();
    assert_ne!(a.hash, c.hash, "seeds 7 and 8 gave the same history");
}

/// The `woof-sim` binary, in another process, gives the hash this process
/// gets for the same seed: nothing of the process (addresses, hash keys,
/// threads) leaks into a run.
#[test]
fn sim_the_binary_repeats_a_seed_across_processes() {
    let run = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_woof-sim"))
            .args([
                "--seed",
                "5",
                "--nodes",
                "5",
                "--topics",
                "4",
                "--replication",
                "3",
                "--clients",
                "3",
                "--sim-time",
                "5s",
                "--faults",
                "all",
            ])
            .output()
            .expect("woof-sim runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "woof-sim failed:\n{stdout}");
        stdout
            .split_whitespace()
            .find_map(|w| w.strip_prefix("hash="))
            .map(|h| u64::from_str_radix(h, 16).expect("a hex hash"))
            .unwrap_or_else(|| panic!("no hash in {stdout}"))
    };
    let here = woof_sim::run(&config(5)).unwrap().hash;
    assert_eq!(run(), here);
    assert_eq!(run(), here);
}
