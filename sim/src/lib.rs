//! `woof-sim`: woof's consensus and topic code, many nodes in one process,
//! over a simulated network, disk and clock, with faults, and checkers that
//! know what must always hold (issue 4; the design is in docs/adr/0005).
//!
//! One run is one seed: a single-threaded tokio runtime with a paused clock
//! (it jumps to the next timer whenever every task waits) and seeded random
//! numbers (tokio's, openraft's and the simulator's own), so that the same
//! seed takes the same path and gives the same history hash.
//!
//! Layout:
//! - `rng.rs`: the seeded random numbers, one stream per purpose;
//! - `history.rs`: the run's events, their hash, the last ones for reports.
//! - `store.rs`: the simulated disk ([`store::SimStore`]): woof's storage
//!   traits in memory, with crashes that lose what was not synced.

#[cfg(not(tokio_unstable))]
compile_error!(
    "woof-sim needs tokio's unstable API to seed the runtime (`--cfg tokio_unstable`, set in .cargo/config.toml); a RUSTFLAGS variable overrides that file"
);

pub mod history;
pub mod rng;
pub mod store;

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
