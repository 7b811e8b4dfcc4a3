//! What TLS and capability tokens cost: a token check in this process
//! (uncached: signature and Datalog; cached: the lookups a repeated token
//! costs), and synced appends of 64 B to one standalone node with neither,
//! tokens, TLS, and both, from 1 and from 64 clients: the four nodes run
//! side by side and the cases take turns over [`ROUNDS`] rounds.

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use woof_node::auth::{Authority, Op, Revoked, Scope, token};
use woof_node::cli::{Bearer, ClientOptions};
use woof_proto::v1;

use crate::nodes::{NodeProcess, call, node_dir};
use crate::report::{Report, median, probe_machine};

/// How long one append case runs per client count.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(woof: &Path, quick: bool) -> anyhow::Result<Report> {
    let secs = if quick { 1 } else { 4 };
    let dir = node_dir()?;
    let mut report = Report::new(probe_machine(dir.path())?);
    verification(&mut report)?;

    let pki = dir.path().join("pki");
    woof_node::auth::tls::make_certs(&pki, &["node-1".into()], &[])?;
    let root_file = dir.path().join("root.key");
    token::keygen_to(&root_file)?;
    let root = token::load_private(&root_file)?;
    let grant = token::create(
        &root,
        &token::Grant {
            topics: vec!["bench/**".into()],
            ops: vec![Op::Append, Op::Admin],
            expires_in: Duration::from_secs(3600),
        },
    )?;
    // All four nodes run at once, and the cases take turns, round after
    // round, each round in another order: on this machine the same case
    // moves by 10 to 30 % from one minute to the next (the disk), more than
    // what is measured, so a case run after the others would be judged by
    // when it ran. Each round gives a ratio to plain; the median is kept.
    let mut cases = Vec::new();
    for (case, tls, tokens) in CASES {
        let data = dir.path().join(case);
        let mut args: Vec<OsString> = vec![
            "--grpc-listen".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            data.join("data").into(),
        ];
        if tls {
            args.extend([
                "--tls-cert".into(),
                pki.join("node-1.pem").into(),
                "--tls-key".into(),
                pki.join("node-1.key").into(),
            ]);
        }
        if tokens {
            args.extend([
                "--require-token".into(),
                "--token-root".into(),
                token::pub_path(&root_file).into(),
            ]);
        }
        std::fs::create_dir_all(&data)?;
        let node = NodeProcess::start(woof, &args, &data.join("node.log"))?;
        let options = ClientOptions {
            tls: tls
                .then(|| woof_node::auth::tls::ClientTls::load(&pki.join("ca.pem")))
                .transpose()?,
            bearer: if tokens {
                Bearer::token(&grant)?
            } else {
                Bearer::default()
            },
        };
        let mut admin = woof_node::cli::connect_with(&node.url, &options).await?;
        call(
            "creating bench/t",
            admin.create_topic(v1::CreateTopicRequest {
                name: "bench/t".into(),
                ..Default::default()
            }),
        )
        .await?;
        cases.push((case, node, options));
    }
    for clients in [1usize, 64] {
        // rates[case][round]
        let mut rates = vec![Vec::new(); cases.len()];
        let mut latencies: Vec<Histogram<u64>> = (0..cases.len())
            .map(|_| Histogram::new(3))
            .collect::<Result<_, _>>()?;
        for round in 0..ROUNDS {
            for turn in 0..cases.len() {
                let i = (turn + round) % cases.len();
                let (_, node, options) = &cases[i];
                crate::report::settle_disk();
                let (count, h) = appends(&node.url, options, clients, secs).await?;
                rates[i].push(count as f64 / secs as f64);
                latencies[i].add(&h)?;
            }
        }
        for (i, (case, _, _)) in cases.iter().enumerate() {
            let name = format!("{case}, {clients} client(s)");
            report.row(&name, "throughput", median(&rates[i]), "appends/s");
            report.latencies(&name, "", &latencies[i]);
            if i == 0 {
                continue;
            }
            let ratios: Vec<f64> = rates[i]
                .iter()
                .zip(&rates[0])
                .map(|(r, plain)| r / plain)
                .collect();
            let name = format!("{case} / plain, {clients} client(s)");
            report.row(&name, "throughput, median of rounds", median(&ratios), "x");
            let (low, high) = ratios
                .iter()
                .fold((f64::MAX, f64::MIN), |(l, h), r| (l.min(*r), h.max(*r)));
            report.row(&name, "throughput, lowest round", low, "x");
            report.row(&name, "throughput, highest round", high, "x");
        }
    }
    Ok(report)
}

/// The cases, plain first (the others are compared with it): name, TLS,
/// tokens.
const CASES: [(&str, bool, bool); 4] = [
    ("plain", false, false),
    ("tokens", false, true),
    ("tls", true, false),
    ("tls+tokens", true, true),
];
/// Rounds of the four cases.
const ROUNDS: usize = 5;

/// The cost of one token check, uncached and cached.
fn verification(report: &mut Report) -> anyhow::Result<()> {
    let root = biscuit_auth::KeyPair::new();
    let made = token::create(
        &root,
        &token::Grant {
            topics: vec!["farm/**".into()],
            ops: vec![Op::Read, Op::Append],
            expires_in: Duration::from_secs(3600),
        },
    )?;
    let narrowed = token::attenuate(
        &made,
        &token::Narrowing {
            topics: Some(vec!["farm/north/**".into()]),
            ..Default::default()
        },
    )?;
    let mut metadata = tonic::metadata::MetadataMap::new();
    for (case, t) in [("token", &made), ("attenuated token", &narrowed)] {
        metadata.insert("authorization", format!("Bearer {t}").parse()?);
        // Uncached: a fresh authority each time (signature, Datalog).
        let n = 2000u32;
        let start = Instant::now();
        for _ in 0..n {
            let authority = Authority::new(root.public(), Revoked::default());
            authority
                .check(&metadata, Op::Append, Scope::Topic("farm/north/x"))
                .context("an uncached check")?;
        }
        let uncached = start.elapsed() / n;
        // Cached: one authority, the same token and topic.
        let authority = Authority::new(root.public(), Revoked::default());
        let n = 200_000u32;
        let start = Instant::now();
        for _ in 0..n {
            authority
                .check(&metadata, Op::Append, Scope::Topic("farm/north/x"))
                .context("a cached check")?;
        }
        let cached = start.elapsed() / n;
        report.row(
            format!("{case} check, uncached"),
            "time per check",
            uncached.as_nanos() as f64 / 1000.0,
            "µs",
        );
        report.row(
            format!("{case} check, cached"),
            "time per check",
            cached.as_nanos() as f64 / 1000.0,
            "µs",
        );
    }
    Ok(())
}

/// `clients` loops appending 64 B for `secs` seconds.
async fn appends(
    url: &str,
    options: &ClientOptions,
    clients: usize,
    secs: u64,
) -> anyhow::Result<(u64, Histogram<u64>)> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let mut c = woof_node::cli::connect_with(url, options).await?;
        tasks.spawn(async move {
            let mut h = Histogram::<u64>::new(3)?;
            let mut count = 0u64;
            let payload = bytes::Bytes::from(vec![7u8; 64]);
            while Instant::now() < deadline {
                let t = Instant::now();
                let request = c.append(v1::AppendRequest {
                    topic: "bench/t".into(),
                    payload: payload.clone(),
                    ..Default::default()
                });
                tokio::time::timeout(REQUEST_TIMEOUT, request)
                    .await
                    .context("an append took too long")?
                    .context("append")?;
                h.record(t.elapsed().as_nanos() as u64)?;
                count += 1;
            }
            anyhow::Ok((count, h))
        });
    }
    crate::report::gather(tasks).await
}
