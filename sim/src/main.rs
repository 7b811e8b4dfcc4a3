//! The `woof-sim` command line (see the crate documentation of `woof_sim`):
//! runs one seed or a sweep of seeds, prints a line per seed, and on a
//! failure the checker, the violation, the last events and the command that
//! replays the seed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use woof_sim::Outcome;
use woof_sim::config::{self, Config, Counts, Rates};

/// The most seeds run at once.
const JOBS_MAX: usize = 64;

#[derive(Parser, Debug)]
#[command(
    name = "woof-sim",
    about = "Runs woof's consensus code on a simulated network, disk and clock, with faults, and checks its promises"
)]
struct Args {
    /// One seed.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// A sweep: seeds A..B (B excluded).
    #[arg(long)]
    seeds: Option<String>,
    #[arg(long, default_value_t = 5)]
    nodes: u64,
    #[arg(long, default_value_t = 20)]
    topics: usize,
    #[arg(long, default_value_t = 3)]
    replication: usize,
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// How long clients work under faults, in simulated time (30s, 500ms, 2m).
    #[arg(long, default_value = "30s")]
    sim_time: String,
    /// all, none, or kind=rate,... with kinds drop, delay, dup, reorder
    /// (per message), partition, crash, torn, disk-fail, clock, slow, leave
    /// (per simulated second); `all,leave=0.3` adds nodes stopped on
    /// purpose (not in all).
    #[arg(long, default_value = "all")]
    faults: String,
    /// Rerun the seed and print every event.
    #[arg(long, requires = "seed")]
    replay: bool,
    /// Seeds run at once, each on its own thread (at most 64).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// How long a replica's node may be silent before repair replaces it.
    #[arg(long, default_value = "4s")]
    repair_after: String,
    /// Extra topics created, deleted and re-created during the faults.
    #[arg(long, default_value_t = 3)]
    extra_topics: usize,
    /// Also create new names from two or three nodes at once, and check
    /// that at most one create of each succeeds (`false` to leave it out).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    concurrent_creates: bool,
    /// Groups snapshot after this many log entries (a node's: 10,000), and
    /// keep a fifth of that after a purge: runs of seconds then snapshot,
    /// purge and install snapshots.
    #[arg(long)]
    snapshot_every: Option<u64>,
    /// Groups snapshot after this many payload bytes applied (a node's:
    /// 1 GiB), and keep a fifth of that after a purge.
    #[arg(long)]
    snapshot_bytes: Option<u64>,
    /// Print the nodes' log for one seed, filtered as RUST_LOG filters
    /// (info, woof_node=debug, ...).
    #[arg(long, requires = "seed")]
    log: Option<String>,
    /// Switch on a deliberate bug (ack-before-commit, retry-with-new-seq,
    /// divergent-replica, ignore-producer-window, stale-read,
    /// subscriber-redelivers, restarted-group-unreachable,
    /// create-skips-claim, forwarded-retry-without-identity) to see the
    /// checkers catch it.
    #[arg(long, hide = true)]
    broken: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(filter) = &args.log {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::try_new(filter)?)
            .without_time()
            .with_writer(std::io::stderr)
            .init();
    }
    let seeds = match (&args.seed, &args.seeds) {
        (Some(s), _) => *s..*s + 1,
        (None, Some(text)) => config::parse_seeds(text)?,
        (None, None) => 0..1,
    };
    let faults = Rates::parse(&args.faults)?;
    let sim_time_ms = config::parse_duration_ms(&args.sim_time)?;
    let repair_after_ms = config::parse_duration_ms(&args.repair_after)?;
    let broken = args
        .broken
        .as_deref()
        .map(config::Broken::parse)
        .transpose()?;
    let config = |seed| Config {
        seed,
        nodes: args.nodes,
        topics: args.topics,
        replication: args.replication,
        clients: args.clients,
        sim_time_ms,
        faults,
        trace: args.replay,
        broken,
        repair_after_ms,
        extra_topics: args.extra_topics,
        concurrent_creates: args.concurrent_creates,
        snapshot_every: args.snapshot_every,
        snapshot_bytes: args.snapshot_bytes,
    };
    config(seeds.start).validate()?;
    let jobs = args.jobs.clamp(1, JOBS_MAX);
    let mut total = Counts::default();
    let mut failed = Vec::new();
    let (mut sim_ms, mut real_ms) = (0u64, 0u128);
    let sweep_start = Instant::now();
    // Seeds run on `jobs` threads, each run on its own single-threaded
    // runtime; the reports come out in seed order.
    let next = AtomicU64::new(seeds.start);
    let (tx, rx) = mpsc::sync_channel(jobs);
    std::thread::scope(|scope| -> anyhow::Result<()> {
        for _ in 0..jobs {
            let (tx, next, config) = (tx.clone(), &next, &config);
            let end = seeds.end;
            scope.spawn(move || {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end {
                        return;
                    }
                    let started = Instant::now();
                    let outcome = woof_sim::run(&config(seed));
                    if tx.send((seed, outcome, started.elapsed())).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        let mut waiting = BTreeMap::new();
        let mut expected = seeds.start;
        for (seed, outcome, real) in rx {
            waiting.insert(seed, (outcome, real));
            while let Some((outcome, real)) = waiting.remove(&expected) {
                let outcome = outcome.with_context(|| format!("seed {expected}"))?;
                sim_ms += outcome.sim_ms;
                real_ms += real.as_millis();
                total.merge(&outcome.faults);
                report(&args, &outcome, real);
                if !outcome.ok() {
                    failed.push(expected);
                }
                expected += 1;
            }
        }
        Ok(())
    })?;
    let runs = seeds.end - seeds.start;
    let silent: Vec<&str> = faults
        .enabled()
        .filter(|f| total.get(*f) == 0)
        .map(|f| f.name())
        .collect();
    if runs > 1 {
        println!(
            "sweep: {runs} seeds, {} failed, sim={:.1}s real={:.1}s x{:.0} faults {total}",
            failed.len(),
            sim_ms as f64 / 1000.0,
            sweep_start.elapsed().as_secs_f64(),
            sim_ms as f64 / (real_ms as f64).max(1.0),
        );
    }
    if !failed.is_empty() {
        bail!("{} of {runs} seeds failed: {failed:?}", failed.len());
    }
    if !silent.is_empty() && runs == 1 {
        println!(
            "note: enabled fault kinds this seed never injected: {}",
            silent.join(", ")
        );
    } else if !silent.is_empty() {
        bail!(
            "enabled fault kinds were never injected: {} (the runs proved nothing about them)",
            silent.join(", ")
        );
    }
    Ok(())
}

/// Prints one seed's line, and on a failure what failed and how to replay it.
fn report(args: &Args, outcome: &Outcome, real: Duration) {
    let seed = outcome.seed;
    println!(
        "seed={seed} {} hash={:016x} events={} sim={:.1}s real={:.2}s x{:.0} faults {} appends={} acked={} unknown={} reads={} delivered={}{}",
        if outcome.ok() { "ok" } else { "FAILED" },
        outcome.hash,
        outcome.events,
        outcome.sim_ms as f64 / 1000.0,
        real.as_secs_f64(),
        outcome.sim_ms as f64 / real.as_secs_f64().max(1e-3) / 1000.0,
        outcome.faults,
        outcome.appends,
        outcome.acked,
        outcome.unknown,
        outcome.reads,
        outcome.delivered,
        if outcome.settled {
            ""
        } else {
            " (replicas had not caught up)"
        },
    );
    if outcome.ok() {
        return;
    }
    println!("seed {seed} FAILED:");
    for v in &outcome.violations {
        println!("  checker {}: {}", v.checker, v.what);
    }
    println!("  last events:");
    for e in &outcome.recent {
        println!("    {e}");
    }
    println!(
        "  reproduce: woof-sim --seed {seed} --nodes {} --topics {} --replication {} --clients {} --sim-time {} --faults {} --repair-after {} --extra-topics {}{}{} --replay",
        args.nodes,
        args.topics,
        args.replication,
        args.clients,
        args.sim_time,
        args.faults,
        args.repair_after,
        args.extra_topics,
        if args.concurrent_creates {
            ""
        } else {
            " --concurrent-creates false"
        },
        args.broken
            .as_ref()
            .map(|b| format!(" --broken {b}"))
            .unwrap_or_default()
            + &args
                .snapshot_every
                .map(|n| format!(" --snapshot-every {n}"))
                .unwrap_or_default()
            + &args
                .snapshot_bytes
                .map(|n| format!(" --snapshot-bytes {n}"))
                .unwrap_or_default()
    );
}
