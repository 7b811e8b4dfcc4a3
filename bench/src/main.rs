//! `woof-bench`: starts real `woof` nodes on loopback and measures them.
//!
//! Layout:
//! - `main.rs`: the command line and the dispatch to a workload;
//! - `nodes.rs`: starting `woof node start` processes (one standalone node,
//!   or an N-node cluster with a fresh cluster key; kill and restart a
//!   node) and the bounded gRPC helpers the workloads share;
//! - `report.rs`: the machine probe (cores, memory, disk sync latency) and
//!   the report: the exact command, rows of figures, notes and failed checks,
//!   printed as a Markdown table and written as JSON with `--json FILE`;
//! - one module per workload: `append.rs` (synced appends on one node and
//!   on a 3-replica topic, 64 B and 1 KiB), `failover.rs` (the leader
//!   SIGKILLed, stopped (SIGTERM), SIGSTOPped and cut off under a steady client; nothing
//!   acknowledged lost), `scale.rs` (the CPU and memory of thousands of
//!   sleeping topics; throughput as nodes go from 3 to 9), `floor.rs` (one Raft group's
//!   replicas in this process, without a network: the floor under `append`),
//!   `subscribe.rs` (append-to-delivery latency on the leader's node, on a
//!   follower's, and fanned out to 100 subscribers), `devices.rs`
//!   (simulated microcontrollers through one bridge gateway), `security.rs`
//!   (a token check, and appends with tokens, TLS, both and neither);
//! - `plot.rs`: SVG plots of a report (`--plots DIR`: latency by
//!   percentile, figures over time);
//! - `nats.rs`: NATS JetStream as the peer (`append`, `subscribe` and
//!   `failover` with `--peer nats`);
//! - `netns.rs`: network namespaces on one bridge (one per node, as root),
//!   so that `failover` can cut a node off by taking its link down.
//!
//! `woof-bench all --out DIR` runs every workload in turn and writes each
//! report (Markdown, JSON, plots) to DIR.
//!
//! Every wait and retry is bounded and fails with a message naming what was
//! waited for; a failing workload shows the end of each node's log, and
//! `--keep` keeps the nodes' directories (data and full logs; set WOOF_LOG
//! for more detail, as for `woof node start`). A workload whose checks fail
//! still prints its report, then exits with an error. The peers side by
//! side: JetStream for `append`, `subscribe` and `failover`.

mod append;
mod devices;
mod failover;
mod floor;
mod handlers;
mod nats;
mod netns;
mod nodes;
mod plot;
mod report;
mod scale;
mod security;
mod subscribe;

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "woof-bench", about = "measure woof on real nodes")]
struct Cli {
    /// The `woof` binary to run; by default the one next to this binary.
    #[arg(long, global = true)]
    woof: Option<PathBuf>,
    /// Also write the figures as JSON to this file.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// Also draw the report's plots as SVG files in this directory: the
    /// latency distributions (by percentile, one line per case) in
    /// `latency.svg`, and each figure over time (throughput over time, a
    /// failover timeline) in a file named after it.
    #[arg(long, global = true)]
    plots: Option<PathBuf>,
    /// Keep the nodes' data directories and logs after the run.
    #[arg(long, global = true)]
    keep: bool,
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Peer {
    Nats,
}

#[derive(Subcommand)]
enum Workload {
    /// Synced appends: latency for one client, throughput for many clients
    /// and for batches; on one node, and on a topic replicated by 3 nodes.
    Append {
        /// 2 s per case instead of 20 s (under a minute in all).
        #[arg(long)]
        quick: bool,
        /// Element sizes in bytes, each measured in turn.
        #[arg(long, value_delimiter = ',', default_value = "64,1024")]
        size: Vec<usize>,
        /// 1: one standalone node. 3: a 3-node cluster, topics with 3
        /// replicas, clients at each topic's leader (and one case through a
        /// follower). Each given is measured in turn.
        #[arg(long, value_delimiter = ',', default_value = "1,3")]
        replication: Vec<u32>,
        /// Also run the same cases on a peer, side by side, with ratios
        /// (needs replication 3). `nats`: a 3-server NATS JetStream
        /// cluster, installed from PyPI if missing.
        #[arg(long, value_enum)]
        peer: Option<Peer>,
        /// Only the cases whose name contains this text (as the report
        /// names them: "18 topics", "beside a flood", "via a follower").
        #[arg(long)]
        only: Option<String>,
    },
    /// A 3-node cluster, a client appending through a follower, the leader
    /// SIGKILLed, stopped (SIGTERM), SIGSTOPped, or cut off (link down, in network namespaces,
    /// as root), trial after trial: how long appends stop, the longest
    /// append, and a check that no acknowledged append is lost.
    Failover {
        /// Trials per fault [default: 10].
        #[arg(long)]
        trials: Option<usize>,
        /// 3 trials (unless --trials says otherwise).
        #[arg(long)]
        quick: bool,
        /// Also run the same trials on a peer, side by side, with ratios.
        #[arg(long, value_enum)]
        peer: Option<Peer>,
    },
    /// A 3-replica topic, appends at its leader: the time from an append to
    /// its delivery to a subscriber on the leader's node, on a follower's
    /// node, and to 100 subscribers over the three nodes.
    Subscribe {
        /// 5 s per case instead of 20 s.
        #[arg(long)]
        quick: bool,
        /// Also run the same cases on a peer, side by side, with ratios.
        #[arg(long, value_enum)]
        peer: Option<Peer>,
    },
    /// A native `forward` handler on a 3-node cluster, its topics with 1
    /// and 3 replicas: the time from an append to its copy reaching a
    /// subscriber, and handler invocations a second over a burst.
    Handlers {
        /// 3 s and 2,000 elements per case instead of 20 s and 20,000.
        #[arg(long)]
        quick: bool,
    },
    /// Simulated microcontrollers through one bridge gateway of a 3-node
    /// cluster: readings acknowledged a second as the fleet grows, and the
    /// device-side time from send to durable ack.
    Devices {
        /// 5 s per case and the two smallest fleets only.
        #[arg(long)]
        quick: bool,
    },
    /// One topic's Raft group on RocksDB, its replicas in this process and
    /// no network between them: what a replicated append costs below the
    /// network, to read `append` against.
    Floor {
        /// Replicas of the group: 1, 3 or 5.
        #[arg(long, default_value_t = 3)]
        replicas: u64,
        /// Appends to time.
        #[arg(long, default_value_t = 3000)]
        appends: usize,
    },
    /// Many topics with 3 replicas on a 3-node cluster: how fast they are
    /// created, and the CPU and memory of each node once they all sleep;
    /// then the throughput of clusters of 3 to 9 nodes.
    Scale {
        /// Topic counts to reach, one after the other [default:
        /// 1000,10000]; `--topics 0` skips them.
        #[arg(long, value_delimiter = ',')]
        topics: Option<Vec<usize>>,
        /// Cluster sizes whose throughput is measured [default: 3,5,7,9];
        /// `--nodes 0` skips them.
        #[arg(long, value_delimiter = ',')]
        nodes: Option<Vec<usize>>,
        /// 1,000 topics, 3 and 9 nodes, shorter samples (unless --topics or
        /// --nodes say otherwise).
        #[arg(long)]
        quick: bool,
        /// Concurrent creators per node.
        #[arg(long, default_value_t = scale::CREATORS_PER_NODE)]
        creators: usize,
    },
    /// The cost of capability tokens and TLS: one token check (uncached and
    /// cached), and synced appends to nodes with neither, tokens, TLS and
    /// both, from 1 and 64 clients, the cases taking turns over 5 rounds
    /// (the median ratio to plain is reported; about 3 minutes).
    Security {
        /// 1 s per case and round instead of 4 s.
        #[arg(long)]
        quick: bool,
    },
    /// Every workload in turn (floor, append, subscribe, failover, scale),
    /// with their default settings; each report goes to OUT as NAME.md and
    /// NAME.json, its plots to OUT/NAME/. A workload that fails is reported
    /// and the others still run.
    All {
        /// Each workload's --quick form.
        #[arg(long)]
        quick: bool,
        /// Also run the peer side by side where a workload can.
        #[arg(long, value_enum)]
        peer: Option<Peer>,
        /// The directory the reports and plots go to.
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let woof = match cli.woof {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("the bench binary has no directory")?
            .join("woof"),
    };
    if !woof.exists() {
        bail!(
            "no woof binary at {} (build it with `cargo build --workspace --all-targets`, or pass --woof)",
            woof.display()
        );
    }
    nodes::KEEP.store(cli.keep, std::sync::atomic::Ordering::Relaxed);
    let runtime = tokio::runtime::Runtime::new()?;
    if let Workload::All { quick, peer, out } = cli.workload {
        return all(&runtime, &woof, quick, peer, &out);
    }
    let report = run(&runtime, &woof, cli.workload)?;
    println!("{}", report.markdown());
    if let Some(path) = cli.json {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
        println!("figures written to {}", path.display());
    }
    if let Some(dir) = cli.plots {
        for path in plot::write_all(&report, &dir)? {
            println!("plot written to {}", path.display());
        }
    }
    if !report.failures.is_empty() {
        bail!(
            "checks failed (rerun with --keep to keep the nodes' logs):\n{}",
            report.failures.join("\n")
        );
    }
    Ok(())
}

/// Runs one workload and returns its report.
fn run(
    runtime: &tokio::runtime::Runtime,
    woof: &std::path::Path,
    workload: Workload,
) -> anyhow::Result<report::Report> {
    let woof = woof.to_path_buf();
    Ok(match workload {
        Workload::Append {
            quick,
            size,
            replication,
            peer,
            only,
        } => runtime.block_on(append::run(
            &woof,
            quick,
            &size,
            &replication,
            matches!(peer, Some(Peer::Nats)),
            only.as_deref(),
        ))?,
        Workload::Failover {
            trials,
            quick,
            peer,
        } => {
            let trials = trials.unwrap_or(if quick { 3 } else { 10 });
            runtime.block_on(failover::run(
                &woof,
                trials,
                matches!(peer, Some(Peer::Nats)),
            ))?
        }
        Workload::Subscribe { quick, peer } => runtime.block_on(subscribe::run(
            &woof,
            quick,
            matches!(peer, Some(Peer::Nats)),
        ))?,
        Workload::Handlers { quick } => runtime.block_on(handlers::run(&woof, quick))?,
        Workload::Security { quick } => runtime.block_on(security::run(&woof, quick))?,
        Workload::Devices { quick } => runtime.block_on(devices::run(&woof, quick))?,
        Workload::Floor { replicas, appends } => runtime.block_on(floor::run(replicas, appends))?,
        Workload::Scale {
            topics,
            nodes,
            quick,
            creators,
        } => {
            let (topics_default, nodes_default, secs, measure) = if quick {
                (vec![1000], vec![3, 9], 3, scale::MEASURE / 3)
            } else {
                (vec![1000, 10_000], vec![3, 5, 7, 9], 10, scale::MEASURE)
            };
            // 0 stands for "none".
            let given = |v: Option<Vec<usize>>, default| -> Vec<usize> {
                v.unwrap_or(default)
                    .into_iter()
                    .filter(|n| *n > 0)
                    .collect()
            };
            let plan = scale::Plan {
                topics: given(topics, topics_default),
                nodes: given(nodes, nodes_default),
                creators,
                secs,
                measure,
            };
            runtime.block_on(scale::run(&woof, plan))?
        }
        Workload::All { .. } => bail!("`all` runs the other workloads; it is not one of them"),
    })
}

/// `all`: every workload in turn, each report written to `out`.
fn all(
    runtime: &tokio::runtime::Runtime,
    woof: &std::path::Path,
    quick: bool,
    peer: Option<Peer>,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let with_peer = |args: &str| match peer {
        Some(Peer::Nats) => format!("{args} --peer nats"),
        None => args.to_string(),
    };
    let q = if quick { " --quick" } else { "" };
    let workloads = [
        (
            "floor",
            Workload::Floor {
                replicas: 3,
                appends: if quick { 1000 } else { 3000 },
            },
            format!("floor --appends {}", if quick { 1000 } else { 3000 }),
        ),
        (
            "append",
            Workload::Append {
                quick,
                size: vec![64, 1024],
                replication: vec![1, 3],
                peer,
                only: None,
            },
            with_peer(&format!("append{q}")),
        ),
        (
            "subscribe",
            Workload::Subscribe { quick, peer },
            with_peer(&format!("subscribe{q}")),
        ),
        (
            "failover",
            Workload::Failover {
                trials: None,
                quick,
                peer,
            },
            with_peer(&format!("failover{q}")),
        ),
        (
            "scale",
            Workload::Scale {
                topics: None,
                nodes: None,
                quick,
                creators: scale::CREATORS_PER_NODE,
            },
            format!("scale{q}"),
        ),
    ];
    let mut failed = Vec::new();
    for (name, workload, args) in workloads {
        eprintln!("== {name}: woof-bench {args}");
        report::settle_disk();
        let started = std::time::Instant::now();
        let mut report = match run(runtime, woof, workload) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{name}: FAILED: {e:#}");
                failed.push(format!("{name}: {e:#}"));
                continue;
            }
        };
        report.command = format!("woof-bench {args}");
        let took = started.elapsed().as_secs_f64();
        let markdown = format!("{}\n\n(ran for {took:.0} s)\n", report.markdown());
        std::fs::write(out.join(format!("{name}.md")), &markdown)?;
        std::fs::write(
            out.join(format!("{name}.json")),
            serde_json::to_string_pretty(&report)?,
        )?;
        plot::write_all(&report, &out.join(name))?;
        println!("{markdown}");
        failed.extend(report.failures.iter().map(|f| format!("{name}: {f}")));
    }
    println!("reports written to {}", out.display());
    if !failed.is_empty() {
        bail!("checks failed:\n{}", failed.join("\n"));
    }
    Ok(())
}
